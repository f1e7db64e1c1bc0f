// Unix stream sockets: an address from a path, a bounded connect. Shared by the hand-off
// (qemu-integration/handoff), `faultline migrate`'s warm-up connection (libvirt) and the
// daemon's control socket (serve/control).
#ifndef FAULTLINE_BASE_UNIX_SOCKET_H_
#define FAULTLINE_BASE_UNIX_SOCKET_H_

#include <sys/un.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"

namespace faultline {

// SO_SNDTIMEO bounds blocking sends and, on Unix sockets, connect(). Zero would mean forever,
// so at least 1 ms is set; absl::InfiniteDuration() clears it (sends block as long as needed).
void SetSendTimeout(int fd, absl::Duration d);
// InvalidArgument when the path is empty or longer than sun_path holds.
absl::StatusOr<struct sockaddr_un> UnixAddress(const std::string& path);
// Connects, retrying while the socket is absent or refuses (its listener not up yet) until
// `deadline`; a deadline already past means one attempt. The error names the path. The socket
// keeps the send timeout that bounded connect() (what was left until `deadline`, at least
// 1 ms): callers set their own, or clear it, with SetSendTimeout.
absl::StatusOr<UniqueFd> ConnectUnix(const std::string& path, absl::Time deadline);

}  // namespace faultline

#endif  // FAULTLINE_BASE_UNIX_SOCKET_H_
