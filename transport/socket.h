// Blocking socket helpers: whole reads and writes, TCP connect/listen. Errors name the peer's
// fate ("peer closed the connection") rather than a bare errno. The fd versions are plain TCP;
// the transport's connections are Streams (transport/tls.h): plain TCP or TLS, one code path.
#ifndef FAULTLINE_TRANSPORT_SOCKET_H_
#define FAULTLINE_TRANSPORT_SOCKET_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "transport/protocol.h"
#include "transport/tls.h"

namespace faultline {

absl::Status WriteAll(int fd, const void* data, size_t n);
// Writes every byte of iov[0, n); modifies iov.
absl::Status WritevAll(int fd, struct iovec* iov, int n);
// Reads exactly n bytes. A clean EOF before the first byte and mid-buffer both give
// UnavailableError naming how much was missing.
absl::Status ReadAll(int fd, void* data, size_t n);

// Reads one frame whose payload is at most MaxPayload(type) (never PAGES: those are read
// piecewise by the receiver). ERROR frames are turned into the peer's status.
absl::Status ReadSmallFrame(int fd, FrameHeader* header, std::string* payload);
absl::Status ReadSmallFrame(Stream& stream, FrameHeader* header, std::string* payload);

// "host:port" → connected TCP socket (TCP_NODELAY set).
absl::StatusOr<UniqueFd> ConnectTcp(const std::string& host_port, absl::Duration timeout);
// Listens on "host:port" (port 0 picks one); see BoundPort.
absl::StatusOr<UniqueFd> ListenTcp(const std::string& host_port);
absl::StatusOr<int> BoundPort(int fd);
absl::Status SplitHostPort(const std::string& host_port, std::string* host, int* port);

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_SOCKET_H_
