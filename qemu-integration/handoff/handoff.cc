#include "qemu-integration/handoff/handoff.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace faultline {

using json = nlohmann::json;

namespace handoff_internal {

inline constexpr size_t kMaxFdsPerMessage = 253;  // the kernel's SCM_MAX_FD

// Buffers one stream socket and owns every fd that arrives on it (SCM_RIGHTS).
class StreamReader {
 public:
  explicit StreamReader(int fd) : fd_(fd) {}

  // Waits until `deadline` (absl::InfinitePast(): not at all) for bytes, then receives up to
  // `max_bytes` of them. OK: something arrived. DeadlineExceeded: nothing did. Unavailable: the
  // peer closed or reset the connection (eof() turns true).
  absl::Status Fill(absl::Time deadline, size_t max_bytes);

  // faultline framing: moves one whole message's JSON out of the buffer. false: not complete
  // yet. An error: the length prefix is impossible (0 or above kMaxHandoffMessage).
  absl::StatusOr<bool> PopFrame(std::string* payload);

  std::string& buffer() { return buf_; }
  std::vector<UniqueFd>& fds() { return fds_; }
  bool eof() const { return eof_; }
  bool fds_truncated() const { return fds_truncated_; }

 private:
  int fd_;
  std::string buf_;
  std::vector<UniqueFd> fds_;
  bool eof_ = false;
  bool fds_truncated_ = false;
};

}  // namespace handoff_internal

namespace {

using handoff_internal::kMaxFdsPerMessage;
using handoff_internal::StreamReader;

constexpr size_t kPrefix = 4;
constexpr absl::Duration kSendTimeout = absl::Seconds(5);

void PutLe32(uint32_t v, char* p) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t GetLe32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

// Never throws: text that is not UTF-8 (an errno string, a caller's stats) is replaced.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string FrameText(absl::string_view body) {
  std::string out(kPrefix, '\0');
  PutLe32(static_cast<uint32_t>(body.size()), &out[0]);
  out.append(body.data(), body.size());
  return out;
}

absl::StatusOr<std::string> Frame(const json& message) {
  std::string body = Dump(message);
  if (body.size() > kMaxHandoffMessage) {
    return absl::InvalidArgumentError(absl::StrCat("message of ", body.size(),
                                                   " bytes exceeds the ", kMaxHandoffMessage,
                                                   "-byte limit"));
  }
  return FrameText(body);
}

int PollMillis(absl::Duration left) {
  if (left <= absl::ZeroDuration()) return 0;
  int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, 60 * 60 * 1000));
}

// SO_SNDTIMEO bounds blocking sends and, on Unix sockets, connect(). Zero would mean forever.
void SetSendTimeout(int fd, absl::Duration d) {
  d = std::max(d, absl::Milliseconds(1));
  struct timeval tv = absl::ToTimeval(d);
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// Sends `bytes` as one sendmsg (looping only if the kernel takes part of it), with `fds`
// attached to the first byte.
absl::Status SendAll(int fd, absl::string_view bytes, absl::Span<const int> fds) {
  if (fds.size() > kMaxFdsPerMessage) {
    return absl::InvalidArgumentError(
        absl::StrCat(fds.size(), " fds in one message; the kernel allows ", kMaxFdsPerMessage));
  }
  std::vector<uint64_t> control((CMSG_SPACE(sizeof(int) * fds.size()) + 7) / 8);
  size_t sent = 0;
  bool fds_pending = !fds.empty();
  while (sent < bytes.size()) {
    struct iovec iov = {const_cast<char*>(bytes.data() + sent), bytes.size() - sent};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fds_pending) {
      msg.msg_control = control.data();
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        return absl::DeadlineExceededError("timed out sending to the peer (it is not reading)");
      }
      if (err == EPIPE || err == ECONNRESET) {
        return absl::UnavailableError("peer closed the connection (send failed)");
      }
      return ErrnoStatus("sendmsg", err);
    }
    fds_pending = false;
    sent += static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::StatusOr<struct sockaddr_un> UnixAddress(const std::string& path) {
  struct sockaddr_un addr = {};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("Unix socket path '", path, "' is ",
                                                   path.size(), " bytes; it must be 1..",
                                                   sizeof(addr.sun_path) - 1));
  }
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// Connects, retrying while the socket is absent or refuses (faultline not up yet).
absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, absl::Time deadline) {
  absl::StatusOr<struct sockaddr_un> addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  for (;;) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return ErrnoStatus("socket");
    SetSendTimeout(fd.get(), deadline - absl::Now());
    if (::connect(fd.get(), reinterpret_cast<const struct sockaddr*>(&*addr), sizeof(*addr)) ==
        0) {
      return fd;
    }
    int err = errno;
    bool retry = err == ENOENT || err == ECONNREFUSED || err == EAGAIN || err == EINTR;
    if (!retry || absl::Now() >= deadline) {
      return ErrnoStatus(absl::StrCat("connect to ", path), err);
    }
    absl::SleepFor(std::min(absl::Milliseconds(10), deadline - absl::Now()));
  }
}

json StatusMessage(const char* type, const absl::Status& s) {
  json m = {{"type", type}, {"ok", s.ok()}};
  if (!s.ok()) {
    m["error"] = std::string(s.message());
    m["code"] = absl::StatusCodeToString(s.code());
  }
  return m;
}

// An ack/complete with ok:false → a status carrying the peer's error (and code, if named).
absl::Status PeerStatus(const json& m, absl::string_view context) {
  std::string error = "(no error message)";
  auto e = m.find("error");
  if (e != m.end() && e->is_string()) error = e->get<std::string>();
  absl::StatusCode code = absl::StatusCode::kUnknown;
  auto c = m.find("code");
  if (c != m.end() && c->is_string()) {
    const std::string name = c->get<std::string>();
    for (int i = 1; i <= 16; ++i) {
      if (absl::StatusCodeToString(static_cast<absl::StatusCode>(i)) == name) {
        code = static_cast<absl::StatusCode>(i);
      }
    }
  }
  return absl::Status(code, absl::StrCat(context, error));
}

std::string FdTarget(int fd) {
  char link[64];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  char target[256];
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n < 0) return "";
  return std::string(target, static_cast<size_t>(n));
}

// The uffd must be a userfaultfd (when /proc can tell).
absl::Status CheckUserfaultfd(int fd, absl::string_view what) {
  std::string target = FdTarget(fd);
  if (!target.empty() && target != "anon_inode:[userfaultfd]") {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not a userfaultfd (the fd is ", target, ")"));
  }
  return absl::OkStatus();
}

// A memory fd must back the whole region; hugetlb must be on hugetlbfs with that page size.
absl::Status CheckRegionFd(const HandoffRegion& r) {
  std::string where = absl::StrCat("hello: region \"", r.name, "\" (fd index ", r.fd_index, ")");
  struct stat st;
  if (fstat(r.fd.get(), &st) != 0) return ErrnoStatus(absl::StrCat(where, ": fstat"));
  if ((r.kind == "memfd" || r.kind == "hugetlb") && !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": a ", r.kind, " region needs a memfd or file, got ", FdTarget(r.fd.get())));
  }
  if (r.kind == "hugetlb") {
    struct statfs fs;
    if (fstatfs(r.fd.get(), &fs) != 0) return ErrnoStatus(absl::StrCat(where, ": fstatfs"));
    if (static_cast<uint64_t>(fs.f_type) != HUGETLBFS_MAGIC) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": kind hugetlb, but the fd is not "
                                                            "on hugetlbfs"));
    }
    if (static_cast<uint64_t>(fs.f_bsize) != r.page_size) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": page_size ", r.page_size,
                                                     " but the fd's huge pages are ",
                                                     fs.f_bsize, " bytes"));
    }
  }
  if (static_cast<uint64_t>(st.st_size) < r.offset + r.length) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": the fd is ", st.st_size, " bytes, smaller than offset + length = ",
        r.offset + r.length));
  }
  return absl::OkStatus();
}

// Gives the parsed request its fds. Every received fd stays owned by `fds` (closed when it
// goes) or by the request.
absl::Status AttachFds(HandoffRequest* req, std::vector<UniqueFd>* fds) {
  UniqueFd& uffd = (*fds)[req->uffd_index];
  if (absl::Status s =
          CheckUserfaultfd(uffd.get(), absl::StrCat("hello: uffd_fd (index ", req->uffd_index,
                                                    ")"));
      !s.ok()) {
    return s;
  }
  for (HandoffRegion& r : req->regions) {
    if (r.fd_index < 0) continue;
    // Regions may share one fd: each gets its own descriptor.
    int dup = fcntl((*fds)[r.fd_index].get(), F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return ErrnoStatus("fcntl(F_DUPFD_CLOEXEC)");
    r.fd.reset(dup);
    if (absl::Status s = CheckRegionFd(r); !s.ok()) return s;
  }
  req->uffd = std::move(uffd);
  return absl::OkStatus();
}

}  // namespace

namespace handoff_internal {

absl::Status StreamReader::Fill(absl::Time deadline, size_t max_bytes) {
  if (eof_) return absl::UnavailableError("peer closed the connection");
  max_bytes = std::max<size_t>(max_bytes, 1);
  for (;;) {
    struct pollfd p = {fd_, POLLIN, 0};
    int rc = ::poll(&p, 1, PollMillis(deadline - absl::Now()));
    if (rc < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("poll");
    }
    if (rc == 0) {
      if (absl::Now() >= deadline) return absl::DeadlineExceededError("nothing arrived in time");
      continue;
    }
    const size_t old = buf_.size();
    buf_.resize(old + max_bytes);
    alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
    struct iovec iov = {&buf_[old], max_bytes};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t r = ::recvmsg(fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    int err = errno;
    buf_.resize(old + (r > 0 ? static_cast<size_t>(r) : 0));
    if (r >= 0) {
      for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; ++i) {
          int fd;
          memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          fds_.emplace_back(fd);
        }
      }
      if (msg.msg_flags & MSG_CTRUNC) fds_truncated_ = true;
    }
    if (r < 0) {
      if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK) continue;
      if (err == ECONNRESET) {
        eof_ = true;
        return absl::UnavailableError("peer reset the connection");
      }
      return ErrnoStatus("recvmsg", err);
    }
    if (r == 0) {
      eof_ = true;
      return absl::UnavailableError("peer closed the connection");
    }
    return absl::OkStatus();
  }
}

absl::StatusOr<bool> StreamReader::PopFrame(std::string* payload) {
  if (buf_.size() < kPrefix) return false;
  uint32_t n = GetLe32(buf_.data());
  if (n == 0 || n > kMaxHandoffMessage) {
    return absl::InvalidArgumentError(absl::StrCat("message length ", n, " is outside 1..",
                                                   kMaxHandoffMessage));
  }
  if (buf_.size() < kPrefix + n) return false;
  payload->assign(buf_, kPrefix, n);
  buf_.erase(0, kPrefix + n);
  return true;
}

}  // namespace handoff_internal

// ---- HandoffServer ----

absl::StatusOr<std::unique_ptr<HandoffServer>> HandoffServer::Listen(const std::string& path) {
  absl::StatusOr<struct sockaddr_un> addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  const auto* sa = reinterpret_cast<const struct sockaddr*>(&*addr);
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::AlreadyExistsError(
          absl::StrCat("'", path, "' exists and is not a socket; not replacing it"));
    }
    // A socket file: stale (nobody listening) or another live faultline.
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe.valid()) return ErrnoStatus("socket");
    if (::connect(probe.get(), sa, sizeof(*addr)) == 0 || errno == EAGAIN) {
      return absl::AlreadyExistsError(
          absl::StrCat("another process is listening on '", path, "'"));
    }
    if (errno != ECONNREFUSED) return ErrnoStatus(absl::StrCat("probe '", path, "'"));
    if (unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(absl::StrCat("unlink stale socket '", path, "'"));
    }
  } else if (errno != ENOENT) {
    return ErrnoStatus(absl::StrCat("lstat '", path, "'"));
  }

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return ErrnoStatus("socket");
  if (::bind(fd.get(), sa, sizeof(*addr)) != 0) {
    return ErrnoStatus(absl::StrCat("bind '", path, "'"));
  }
  // connect() needs write permission on the file, and nobody can connect before listen(): the
  // mode is right before the socket is reachable.
  if (chmod(path.c_str(), 0600) != 0 || ::listen(fd.get(), 16) != 0 ||
      lstat(path.c_str(), &st) != 0) {
    int err = errno;
    unlink(path.c_str());
    return ErrnoStatus(absl::StrCat("set up '", path, "'"), err);
  }
  return std::unique_ptr<HandoffServer>(
      new HandoffServer(path, std::move(fd), st.st_dev, st.st_ino));
}

HandoffServer::~HandoffServer() {
  fd_.reset();
  struct stat st;
  if (lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
    unlink(path_.c_str());
  }
}

absl::StatusOr<std::unique_ptr<HandoffSession>> HandoffServer::Accept(absl::Duration timeout,
                                                                      uid_t allowed_uid) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    bool silent = false;
    absl::StatusOr<std::unique_ptr<HandoffSession>> s = AcceptOne(deadline, allowed_uid, &silent);
    if (s.ok() || !silent) return s;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("no VMM connected to ", path_, " in time"));
    }
  }
}

absl::StatusOr<std::unique_ptr<HandoffSession>> HandoffServer::AcceptOne(absl::Time deadline,
                                                                         uid_t allowed_uid,
                                                                         bool* silent) {
  UniqueFd conn;
  for (;;) {
    int c = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);  // blocking socket
    if (c >= 0) {
      conn.reset(c);
      break;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return ErrnoStatus("accept");
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("no VMM connected to ", path_, " in time"));
    }
    struct pollfd p = {fd_.get(), POLLIN, 0};
    if (::poll(&p, 1, PollMillis(left)) < 0 && errno != EINTR) return ErrnoStatus("poll");
  }
  SetSendTimeout(conn.get(), kSendTimeout);
  struct ucred cred = {};
  socklen_t len = sizeof(cred);
  if (getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return ErrnoStatus("getsockopt(SO_PEERCRED)");
  }
  std::unique_ptr<HandoffSession> session(new HandoffSession(std::move(conn)));
  if (cred.uid != 0 && cred.uid != allowed_uid) {
    absl::Status refused = absl::PermissionDeniedError(absl::StrCat(
        "VMM pid ", cred.pid, " runs as uid ", cred.uid,
        "; faultline accepts a hand-off only from uid 0 or uid ", allowed_uid));
    // Not a byte of the peer's is read. A Firecracker peer never reads; the ack is harmless.
    if (absl::StatusOr<std::string> f = Frame(StatusMessage("ack", refused)); f.ok()) {
      (void)SendAll(session->fd(), *f, {});
    }
    return refused;
  }
  absl::Status s = session->ReadHello(absl::Now() + hello_timeout_, silent);
  if (!s.ok()) {
    if (session->format() == HandoffFormat::kFaultline && !*silent) (void)session->Ack(s);
    return s;
  }
  session->request_.peer_pid = cred.pid;
  session->request_.peer_uid = cred.uid;
  return session;
}

// ---- HandoffSession ----

HandoffSession::HandoffSession(UniqueFd fd)
    : fd_(std::move(fd)), reader_(std::make_unique<StreamReader>(fd_.get())) {}

HandoffSession::~HandoffSession() = default;

absl::Status HandoffSession::ReadHello(absl::Time deadline, bool* silent) {
  StreamReader& rd = *reader_;
  std::string& buf = rd.buffer();
  *silent = false;
  auto read_error = [](const absl::Status& s, absl::string_view what) {
    if (absl::IsDeadlineExceeded(s)) {
      return absl::DeadlineExceededError(absl::StrCat(what, " did not arrive in time"));
    }
    if (absl::IsUnavailable(s)) {
      return absl::UnavailableError(absl::StrCat("the VMM went away before its ", what,
                                                 " was complete (", s.message(), ")"));
    }
    return s;
  };
  if (absl::Status s = rd.Fill(deadline, kPrefix + kMaxHandoffMessage); !s.ok()) {
    *silent = rd.eof() && buf.empty() && rd.fds().empty();
    return read_error(s, "the hand-off message");
  }
  // '[' opens Firecracker's JSON array. Our length prefix can start with 0x5B too, but then its
  // bytes 2..3 are zero (N <= 64 KiB), which JSON text never contains.
  const bool firecracker =
      buf[0] == '[' && !(buf.size() >= kPrefix && buf[2] == '\0' && buf[3] == '\0');
  HandoffRequest req;
  if (firecracker) {
    format_ = HandoffFormat::kFirecracker;
    // Sent in one sendmsg; should the read come up short, keep reading until the JSON parses.
    while (buf.size() <= kMaxHandoffMessage && !json::accept(buf)) {
      absl::Status s = rd.Fill(deadline, kMaxHandoffMessage + 1 - buf.size());
      if (absl::IsUnavailable(s)) break;  // the peer stopped sending: judge what came
      if (!s.ok()) return read_error(s, "Firecracker's hand-off");
    }
    if (buf.size() > kMaxHandoffMessage) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Firecracker hand-off exceeds the ", kMaxHandoffMessage, "-byte limit"));
    }
    if (rd.fds_truncated()) {
      return absl::InvalidArgumentError("Firecracker hand-off carries too many fds");
    }
    absl::StatusOr<HandoffRequest> parsed = ParseFirecrackerMessage(buf);
    if (!parsed.ok()) return parsed.status();
    req = std::move(*parsed);
    if (rd.fds().size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat("Firecracker hand-off carries ",
                                                     rd.fds().size(),
                                                     " fds; expected exactly 1, the uffd"));
    }
    if (absl::Status s = CheckUserfaultfd(rd.fds()[0].get(), "Firecracker's fd"); !s.ok()) {
      return s;
    }
    req.uffd = std::move(rd.fds()[0]);
    rd.fds().clear();
    buf.clear();
  } else {
    format_ = HandoffFormat::kFaultline;
    while (buf.size() < kPrefix) {
      if (absl::Status s = rd.Fill(deadline, kPrefix - buf.size()); !s.ok()) {
        return read_error(s, "hello");
      }
    }
    const uint32_t n = GetLe32(buf.data());
    if (n == 0) return absl::InvalidArgumentError("empty hello (length 0)");
    if (n > kMaxHandoffMessage) {
      return absl::InvalidArgumentError(absl::StrCat("hello of ", n, " bytes exceeds the ",
                                                     kMaxHandoffMessage, "-byte limit"));
    }
    // Read no further than the hello's last byte: fds belong to the message they came with.
    while (buf.size() < kPrefix + n) {
      if (absl::Status s = rd.Fill(deadline, kPrefix + n - buf.size()); !s.ok()) {
        return read_error(s, "hello");
      }
    }
    if (rd.fds_truncated()) {
      return absl::InvalidArgumentError(
          absl::StrCat("hello carries more than ", kMaxFdsPerMessage, " fds"));
    }
    const std::string payload = buf.substr(kPrefix, n);
    buf.erase(0, kPrefix + n);
    std::vector<UniqueFd> fds = std::move(rd.fds());
    rd.fds().clear();
    absl::StatusOr<HandoffRequest> parsed = ParseFaultlineHello(payload, fds.size());
    if (!parsed.ok()) return parsed.status();
    req = std::move(*parsed);
    if (absl::Status s = AttachFds(&req, &fds); !s.ok()) return s;
  }
  req.format = format_;
  request_ = std::move(req);
  return absl::OkStatus();
}

absl::Status HandoffSession::Send(const json& message) {
  // Caller holds send_mu_.
  if (send_broken_) {
    return absl::FailedPreconditionError("an earlier send to the VMM failed; connection unusable");
  }
  absl::StatusOr<std::string> f = Frame(message);
  if (!f.ok()) return f.status();
  absl::Status s = SendAll(fd_.get(), *f, {});
  if (!s.ok()) send_broken_ = true;  // possibly part-way through a message
  return s;
}

absl::Status HandoffSession::Ack(const absl::Status& result) {
  if (format() == HandoffFormat::kFirecracker) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(send_mu_);
  if (acked_) return absl::FailedPreconditionError("the hand-off was already acknowledged");
  acked_ = true;
  ack_ok_ = result.ok();
  return Send(StatusMessage("ack", result));
}

absl::Status HandoffSession::SendProgress(uint64_t done, uint64_t total) {
  if (format() == HandoffFormat::kFirecracker) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(send_mu_);
  if (!ack_ok_) return absl::FailedPreconditionError("progress before a successful ack");
  return Send(json{{"type", "progress"}, {"done_pages", done}, {"total_pages", total}});
}

absl::Status HandoffSession::SendComplete(const absl::Status& result, const json& stats) {
  if (format() == HandoffFormat::kFirecracker) return absl::OkStatus();
  if (!stats.is_null() && !stats.is_object()) {
    return absl::InvalidArgumentError("complete: stats must be a JSON object");
  }
  std::lock_guard<std::mutex> lock(send_mu_);
  if (!ack_ok_) return absl::FailedPreconditionError("complete before a successful ack");
  json m = StatusMessage("complete", result);
  if (result.ok()) m["stats"] = stats.is_null() ? json::object() : stats;
  return Send(m);
}

bool HandoffSession::PeerClosed() {
  std::lock_guard<std::mutex> lock(read_mu_);
  for (int round = 0; round < 16 && !closed_; ++round) {
    if (format() == HandoffFormat::kFaultline) {
      for (;;) {  // whole messages first: a bye may already be buffered
        std::string payload;
        absl::StatusOr<bool> got = reader_->PopFrame(&payload);
        if (!got.ok()) {
          closed_ = true;  // garbage on the wire: the VMM is not following the protocol
          break;
        }
        if (!*got) break;
        const json m = json::parse(payload, nullptr, /*allow_exceptions=*/false);
        if (m.is_object()) {
          auto t = m.find("type");
          if (t != m.end() && t->is_string() && t->get<std::string>() == "bye") {
            bye_ = true;
            closed_ = true;
          }
        }
      }
    } else {
      reader_->buffer().clear();  // Firecracker sends nothing after its hand-off
    }
    if (closed_) break;
    absl::Status s = reader_->Fill(absl::InfinitePast(), kPrefix + kMaxHandoffMessage);
    reader_->fds().clear();  // nothing after the hello carries fds we want
    if (absl::IsDeadlineExceeded(s)) break;
    if (!s.ok()) closed_ = true;
  }
  return closed_;
}

bool HandoffSession::bye_received() {
  std::lock_guard<std::mutex> lock(read_mu_);
  return bye_;
}

// ---- HandoffClient ----

HandoffClient::HandoffClient(UniqueFd fd)
    : fd_(std::move(fd)), reader_(std::make_unique<StreamReader>(fd_.get())) {}

HandoffClient::~HandoffClient() = default;

namespace {

absl::StatusOr<json> NextMessage(StreamReader& rd, absl::Time deadline) {
  for (;;) {
    std::string payload;
    absl::StatusOr<bool> got = rd.PopFrame(&payload);
    if (!got.ok()) {
      return absl::DataLossError(absl::StrCat("faultline sent a malformed frame: ",
                                              got.status().message()));
    }
    if (*got) {
      json m = json::parse(payload, nullptr, /*allow_exceptions=*/false);
      if (m.is_discarded() || !m.is_object() || !m.contains("type") || !m["type"].is_string()) {
        return absl::DataLossError(
            "faultline sent a message that is not a JSON object with a string \"type\"");
      }
      return m;
    }
    absl::Status s = rd.Fill(deadline, kPrefix + kMaxHandoffMessage);
    rd.fds().clear();  // faultline sends none; close any that come
    if (absl::IsDeadlineExceeded(s)) {
      return absl::DeadlineExceededError("no message from faultline in time");
    }
    if (absl::IsUnavailable(s)) {
      return absl::UnavailableError(
          absl::StrCat("faultline went away (", s.message(),
                       rd.buffer().empty() ? ")" : ", mid-message)"));
    }
    if (!s.ok()) return s;
  }
}

}  // namespace

absl::Status HandoffClient::WaitAck(absl::Time deadline) {
  absl::StatusOr<json> m = NextMessage(*reader_, deadline);
  if (!m.ok()) {
    if (absl::IsDeadlineExceeded(m.status())) {
      return absl::DeadlineExceededError("faultline did not acknowledge the hand-off in time");
    }
    if (absl::IsUnavailable(m.status())) {
      return absl::UnavailableError(absl::StrCat(
          "faultline closed the connection without acknowledging the hand-off: ",
          m.status().message()));
    }
    return m.status();
  }
  if ((*m)["type"] != "ack") {
    return absl::DataLossError(absl::StrCat("expected an ack from faultline, got type \"",
                                            (*m)["type"].get<std::string>(), "\""));
  }
  auto ok = m->find("ok");
  if (ok == m->end() || !ok->is_boolean()) {
    return absl::DataLossError("faultline's ack has no boolean \"ok\"");
  }
  if (!ok->get<bool>()) return PeerStatus(*m, "faultline refused the hand-off: ");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HandoffClient>> HandoffClient::ConnectAndSend(
    const std::string& path, absl::string_view frame, absl::Span<const int> fds,
    absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<UniqueFd> fd = ConnectUnix(path, deadline);
  if (!fd.ok()) return fd.status();
  SetSendTimeout(fd->get(), deadline - absl::Now());
  absl::Status sent = SendAll(fd->get(), frame, fds);
  std::unique_ptr<HandoffClient> client(new HandoffClient(std::move(*fd)));
  if (!sent.ok()) {
    // faultline may have refused early and closed: its ack says why.
    if (absl::IsUnavailable(sent)) {
      absl::Status acked = client->WaitAck(deadline);
      if (!acked.ok() && !absl::IsUnavailable(acked) && !absl::IsDeadlineExceeded(acked)) {
        return acked;
      }
    }
    return sent;
  }
  if (absl::Status s = client->WaitAck(deadline); !s.ok()) return s;
  SetSendTimeout(client->fd(), kSendTimeout);
  return client;
}

absl::StatusOr<std::unique_ptr<HandoffClient>> HandoffClient::Connect(
    const std::string& path, int uffd, uint64_t uffd_features,
    const std::vector<HandoffClientRegion>& regions, absl::Duration timeout,
    const std::string& vmm_name, bool resume) {
  if (uffd < 0) return absl::InvalidArgumentError(absl::StrCat("uffd ", uffd, " is not an fd"));
  std::vector<int> fds = {uffd};
  json table = json::array();
  for (const HandoffClientRegion& r : regions) {
    int index = -1;
    if (r.fd < -1) {
      return absl::InvalidArgumentError(absl::StrCat("region '", r.name, "': fd ", r.fd));
    }
    if (r.fd >= 0) {
      auto it = std::find(fds.begin(), fds.end(), r.fd);
      index = static_cast<int>(it - fds.begin());
      if (it == fds.end()) fds.push_back(r.fd);
    }
    table.push_back(json{{"name", r.name},
                         {"host_addr", r.host_addr},
                         {"length", r.length},
                         {"page_size", r.page_size},
                         {"kind", r.kind},
                         {"fd", index},
                         {"offset", r.offset}});
  }
  json hello = {{"type", "hello"},        {"version", kHandoffVersion},
                {"vmm", vmm_name},        {"uffd_features", uffd_features},
                {"registered", true},     {"uffd_fd", 0},
                {"regions", std::move(table)}};
  if (resume) hello["resume"] = true;
  std::string body = Dump(hello);
  // Keep the length prefix's first byte off '[' (Firecracker's first byte): JSON allows a
  // trailing space.
  if ((body.size() & 0xff) == '[') body.push_back(' ');
  return ConnectAndSend(path, FrameText(body), fds, timeout);
}

absl::StatusOr<std::unique_ptr<HandoffClient>> HandoffClient::ConnectWithHello(
    const std::string& path, absl::string_view hello_json, absl::Span<const int> fds,
    absl::Duration timeout) {
  return ConnectAndSend(path, FrameText(hello_json), fds, timeout);
}

absl::StatusOr<json> HandoffClient::Next(absl::Duration timeout) {
  return NextMessage(*reader_, absl::Now() + timeout);
}

absl::StatusOr<json> HandoffClient::WaitComplete(
    absl::Duration timeout, std::function<void(uint64_t done, uint64_t total)> on_progress) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::StatusOr<json> m = NextMessage(*reader_, deadline);
    if (!m.ok()) return m.status();
    const std::string type = (*m)["type"].get<std::string>();
    if (type == "progress") {
      auto done = m->find("done_pages");
      auto total = m->find("total_pages");
      if (done == m->end() || total == m->end() || !done->is_number_unsigned() ||
          !total->is_number_unsigned()) {
        return absl::DataLossError("faultline's progress lacks unsigned done_pages/total_pages");
      }
      if (on_progress) on_progress(done->get<uint64_t>(), total->get<uint64_t>());
    } else if (type == "complete") {
      auto ok = m->find("ok");
      if (ok == m->end() || !ok->is_boolean()) {
        return absl::DataLossError("faultline's complete has no boolean \"ok\"");
      }
      if (!ok->get<bool>()) return PeerStatus(*m, "faultline reported the migration failed: ");
      auto stats = m->find("stats");
      if (stats != m->end() && stats->is_object()) return *stats;
      return json::object();
    }
    // Anything else (a newer message type) is skipped.
  }
}

absl::Status HandoffClient::Bye() {
  absl::StatusOr<std::string> f = Frame(json{{"type", "bye"}});
  if (!f.ok()) return f.status();
  return SendAll(fd_.get(), *f, {});
}

absl::StatusOr<UniqueFd> SendFirecrackerHandoff(const std::string& path, int uffd,
                                                const std::vector<HandoffClientRegion>& regions) {
  // Field order and values as Firecracker's GuestRegionUffdMapping serialises them
  // (page_size_kib carries bytes there too).
  nlohmann::ordered_json table = nlohmann::ordered_json::array();
  for (const HandoffClientRegion& r : regions) {
    table.push_back(nlohmann::ordered_json{{"base_host_virt_addr", r.host_addr},
                                           {"size", r.length},
                                           {"offset", r.offset},
                                           {"page_size", r.page_size},
                                           {"page_size_kib", r.page_size}});
  }
  const std::string text = table.dump(-1, ' ', false, json::error_handler_t::replace);
  absl::StatusOr<UniqueFd> fd = ConnectUnix(path, absl::Now() + kSendTimeout);
  if (!fd.ok()) return fd.status();
  const int fds[] = {uffd};
  if (absl::Status s = SendAll(fd->get(), text, fds); !s.ok()) return s;
  return std::move(*fd);
}

}  // namespace faultline
