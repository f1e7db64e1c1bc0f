// Passing file descriptors over a Unix socket (SCM_RIGHTS), for stream and seqpacket sockets.
#ifndef FAULTLINE_BASE_SCM_RIGHTS_H_
#define FAULTLINE_BASE_SCM_RIGHTS_H_

#include <cstddef>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"

namespace faultline {

// The most fds one message may carry (the kernel's SCM_MAX_FD).
inline constexpr size_t kMaxScmRightsFds = 253;

// Sends `bytes` with `fds` attached (SCM_RIGHTS) in one sendmsg, retrying short writes of the
// remaining bytes without fds; EINTR-safe. MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE.
// The fds are not consumed (the caller still owns them). Errors: InvalidArgument for more than
// kMaxScmRightsFds fds; DeadlineExceeded when the socket would block (SO_SNDTIMEO expired, or a
// non-blocking socket is full); Unavailable when the peer closed (EPIPE, ECONNRESET); otherwise
// as ErrnoStatus("sendmsg").
absl::Status SendWithFds(int sock, absl::string_view bytes, absl::Span<const int> fds);

// One recvmsg into buf (up to len); received fds are appended to *fds (owned); returns bytes
// read (0 = EOF). MSG_CMSG_CLOEXEC, plus `flags` (e.g. MSG_DONTWAIT). EINTR-safe. A truncated
// control message (MSG_CTRUNC: the fd limit was reached, say) is a DataLoss error, and the fds
// that did arrive with it are closed; the bytes it carried are consumed all the same. Errors
// otherwise: DeadlineExceeded when nothing could be read without blocking (SO_RCVTIMEO expired,
// MSG_DONTWAIT), Unavailable on ECONNRESET, else as ErrnoStatus("recvmsg"). On a datagram or
// seqpacket socket, a message longer than len is cut to len (as recvmsg does).
absl::StatusOr<size_t> RecvWithFds(int sock, void* buf, size_t len, std::vector<UniqueFd>* fds,
                                   int flags = 0);

}  // namespace faultline

#endif  // FAULTLINE_BASE_SCM_RIGHTS_H_
