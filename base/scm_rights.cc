#include "base/scm_rights.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace faultline {

absl::Status SendWithFds(int sock, absl::string_view bytes, absl::Span<const int> fds) {
  if (fds.size() > kMaxScmRightsFds) {
    return absl::InvalidArgumentError(
        absl::StrCat(fds.size(), " fds in one message; the kernel allows ", kMaxScmRightsFds));
  }
  const size_t fd_bytes = sizeof(int) * fds.size();
  std::vector<uint64_t> control((CMSG_SPACE(fd_bytes) + 7) / 8);  // cmsghdr-aligned
  size_t sent = 0;
  bool fds_pending = !fds.empty();
  // At least one sendmsg, so an empty seqpacket/datagram message still goes out.
  do {
    struct iovec iov = {const_cast<char*>(bytes.data() + sent), bytes.size() - sent};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fds_pending) {
      msg.msg_control = control.data();
      msg.msg_controllen = CMSG_SPACE(fd_bytes);
      struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(fd_bytes);
      memcpy(CMSG_DATA(c), fds.data(), fd_bytes);
    }
    ssize_t w = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (w < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        return absl::DeadlineExceededError(ErrnoStatus("sendmsg", err).message());
      }
      return ErrnoStatus("sendmsg", err);  // EPIPE, ECONNRESET: Unavailable
    }
    fds_pending = false;  // the fds went with the first byte
    sent += static_cast<size_t>(w);
  } while (sent < bytes.size());
  return absl::OkStatus();
}

absl::StatusOr<size_t> RecvWithFds(int sock, void* buf, size_t len, std::vector<UniqueFd>* fds,
                                   int flags) {
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxScmRightsFds)];
  for (;;) {
    struct iovec iov = {buf, len};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t r = ::recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
    if (r < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        return absl::DeadlineExceededError(ErrnoStatus("recvmsg", err).message());
      }
      return ErrnoStatus("recvmsg", err);  // ECONNRESET: Unavailable
    }
    // Take ownership of every fd first, so none leaks whatever happens next.
    std::vector<UniqueFd> got;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < n; ++i) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        got.emplace_back(fd);
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) {
      return absl::DataLossError(
          absl::StrCat("recvmsg: the control message was truncated (", got.size(),
                       " fds arrived, more were dropped: the fd limit reached?); closed them"));
    }
    for (UniqueFd& fd : got) fds->push_back(std::move(fd));
    return static_cast<size_t>(r);
  }
}

}  // namespace faultline
