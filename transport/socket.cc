#include "transport/socket.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace faultline {

absl::Status WriteAll(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) {
        return absl::UnavailableError("peer closed the connection (write failed)");
      }
      return ErrnoStatus("send");
    }
    p += w;
    n -= w;
  }
  return absl::OkStatus();
}

absl::Status WritevAll(int fd, struct iovec* iov, int n) {
  while (n > 0) {
    struct msghdr msg = {};
    msg.msg_iov = iov;
    msg.msg_iovlen = n > 1024 ? 1024 : n;
    ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) {
        return absl::UnavailableError("peer closed the connection (write failed)");
      }
      return ErrnoStatus("sendmsg");
    }
    size_t left = static_cast<size_t>(w);
    while (n > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --n;
    }
    if (n > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return absl::OkStatus();
}

absl::Status ReadAll(int fd, void* data, size_t n) {
  auto* p = static_cast<uint8_t*>(data);
  size_t want = n;
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, MSG_WAITALL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNRESET) return absl::UnavailableError("peer reset the connection");
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return absl::DeadlineExceededError("peer did not answer in time");
      }
      return ErrnoStatus("recv");
    }
    if (r == 0) {
      return absl::UnavailableError(want == n
                                        ? "peer closed the connection"
                                        : absl::StrCat("peer closed the connection mid-frame (",
                                                       want - n, " of ", want, " bytes read)"));
    }
    p += r;
    n -= r;
  }
  return absl::OkStatus();
}

namespace {

template <typename ReadFn>
absl::Status ReadSmallFrameWith(ReadFn read_all, FrameHeader* header, std::string* payload) {
  uint8_t hb[kHeaderSize];
  if (absl::Status s = read_all(hb, sizeof(hb)); !s.ok()) return s;
  absl::StatusOr<FrameHeader> h = DecodeHeader(absl::MakeConstSpan(hb, sizeof(hb)));
  if (!h.ok()) return h.status();
  if (h->type == FrameType::kPages) {
    return absl::InvalidArgumentError("unexpected PAGES frame on a control exchange");
  }
  payload->resize(h->length);
  if (absl::Status s = read_all(payload->data(), h->length); !s.ok()) return s;
  *header = *h;
  if (h->type == FrameType::kError) {
    absl::StatusOr<ErrorFrame> e = DecodeError(
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload->data()), payload->size()));
    if (!e.ok()) return e.status();
    return PeerError(*e);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ReadSmallFrame(int fd, FrameHeader* header, std::string* payload) {
  return ReadSmallFrameWith([fd](void* p, size_t n) { return ReadAll(fd, p, n); }, header, payload);
}

absl::Status ReadSmallFrame(Stream& stream, FrameHeader* header, std::string* payload) {
  return ReadSmallFrameWith([&stream](void* p, size_t n) { return stream.ReadAll(p, n); }, header,
                            payload);
}

absl::Status SplitHostPort(const std::string& host_port, std::string* host, int* port) {
  size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(host_port.substr(colon + 1), port) ||
      *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("address '", host_port, "' is not of the form HOST:PORT"));
  }
  *host = host_port.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  if (host->empty()) *host = "0.0.0.0";
  return absl::OkStatus();
}

static absl::StatusOr<struct addrinfo*> Resolve(const std::string& host, int port, bool passive) {
  struct addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  struct addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve '", host, "': ", gai_strerror(rc)));
  }
  return res;
}

absl::StatusOr<UniqueFd> ConnectTcp(const std::string& host_port, absl::Duration timeout) {
  std::string host;
  int port;
  if (absl::Status s = SplitHostPort(host_port, &host, &port); !s.ok()) return s;
  absl::StatusOr<struct addrinfo*> res = Resolve(host, port, false);
  if (!res.ok()) return res.status();
  absl::Status last = absl::UnavailableError("no address");
  for (struct addrinfo* ai = *res; ai; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) {
      last = ErrnoStatus("socket");
      continue;
    }
    int rc = ::connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
    if (rc < 0 && errno == EINPROGRESS) {
      struct pollfd p = {fd.get(), POLLOUT, 0};
      int pr = ::poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
      if (pr == 0) {
        last = absl::DeadlineExceededError(absl::StrCat(
            "connect to ", host_port, " timed out after ", absl::FormatDuration(timeout)));
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err ? -1 : 0;
      errno = err;
    }
    if (rc < 0) {
      last = absl::UnavailableError(absl::StrCat("connect to ", host_port, ": ", strerror(errno)));
      continue;
    }
    int flags = 0;
    ioctl(fd.get(), FIONBIO, &flags);
    int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    freeaddrinfo(*res);
    return fd;
  }
  freeaddrinfo(*res);
  return last;
}

absl::StatusOr<UniqueFd> ListenTcp(const std::string& host_port) {
  std::string host;
  int port;
  if (absl::Status s = SplitHostPort(host_port, &host, &port); !s.ok()) return s;
  absl::StatusOr<struct addrinfo*> res = Resolve(host, port, true);
  if (!res.ok()) return res.status();
  absl::Status last = absl::UnavailableError("no address");
  for (struct addrinfo* ai = *res; ai; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0));
    if (!fd.valid()) continue;
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) < 0) {
      last = ErrnoStatus(absl::StrCat("bind ", host_port));
      continue;
    }
    if (::listen(fd.get(), 16) < 0) {
      last = ErrnoStatus("listen");
      continue;
    }
    freeaddrinfo(*res);
    return fd;
  }
  freeaddrinfo(*res);
  return last;
}

absl::StatusOr<int> BoundPort(int fd) {
  struct sockaddr_storage ss = {};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<struct sockaddr*>(&ss), &len) < 0) {
    return ErrnoStatus("getsockname");
  }
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

}  // namespace faultline
