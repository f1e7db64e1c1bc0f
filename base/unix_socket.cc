#include "base/unix_socket.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"

namespace faultline {

void SetSendTimeout(int fd, absl::Duration d) {
  struct timeval tv = {};  // zero: no timeout
  if (d != absl::InfiniteDuration()) tv = absl::ToTimeval(std::max(d, absl::Milliseconds(1)));
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

absl::StatusOr<struct sockaddr_un> UnixAddress(const std::string& path) {
  struct sockaddr_un addr = {};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("Unix socket path '", path, "' is ", path.size(),
                                                   " bytes; it must be 1..",
                                                   sizeof(addr.sun_path) - 1));
  }
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, absl::Time deadline) {
  absl::StatusOr<struct sockaddr_un> addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  for (;;) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return ErrnoStatus("socket");
    SetSendTimeout(fd.get(), deadline - absl::Now());
    if (::connect(fd.get(), reinterpret_cast<const struct sockaddr*>(&*addr), sizeof(*addr)) == 0) {
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

}  // namespace faultline
