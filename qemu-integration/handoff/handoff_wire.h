// Internal to //qemu-integration/handoff: the wire half shared by the server (handoff_server.cc)
// and the client (handoff_client.cc). Framing (u32 LE length + JSON), a buffered reader that
// owns the fds arriving with the bytes, sends with fds, Unix socket addresses, status <-> JSON
// messages, and the checks on received fds. Not a public API: include handoff.h.
#ifndef FAULTLINE_QEMU_INTEGRATION_HANDOFF_HANDOFF_WIRE_H_
#define FAULTLINE_QEMU_INTEGRATION_HANDOFF_HANDOFF_WIRE_H_

#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/scm_rights.h"
#include "base/unique_fd.h"
#include "base/unix_socket.h"
#include "nlohmann/json.hpp"
#include "qemu-integration/handoff/handoff.h"

namespace faultline {
namespace handoff_internal {

inline constexpr size_t kMaxFdsPerMessage = kMaxScmRightsFds;  // the kernel's SCM_MAX_FD
inline constexpr size_t kPrefix = 4;                           // the u32 length
inline constexpr absl::Duration kSendTimeout = absl::Seconds(5);

// ---- framing ----

void PutLe32(uint32_t v, char* p);
uint32_t GetLe32(const char* p);
// Never throws: text that is not UTF-8 (an errno string, a caller's stats) is replaced.
std::string Dump(const nlohmann::json& j);
// The length prefix, then `body` (not checked against kMaxHandoffMessage).
std::string FrameText(absl::string_view body);
// Dump + FrameText; InvalidArgument when the JSON exceeds kMaxHandoffMessage.
absl::StatusOr<std::string> Frame(const nlohmann::json& message);

// Buffers one stream socket and owns every fd that arrives on it (SCM_RIGHTS).
class StreamReader {
 public:
  explicit StreamReader(int fd) : fd_(fd) {}

  // Waits until `deadline` (absl::InfinitePast(): not at all) for bytes, then receives up to
  // `max_bytes` of them. OK: something arrived. DeadlineExceeded: nothing did. Unavailable: the
  // peer closed or reset the connection (eof() turns true). DataLoss: the fds that came with
  // the bytes could not all be received (fds_truncated() turns true; the bytes are lost too).
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

// The next whole message from `rd` — a JSON object with a string "type" — waiting until
// `deadline` (InfiniteFuture: as long as the connection lasts); fds that arrive are closed.
// Errors name `peer`: DataLoss (a malformed frame or message), DeadlineExceeded, Unavailable
// (it went away).
absl::StatusOr<nlohmann::json> NextMessage(StreamReader& rd, absl::Time deadline,
                                           absl::string_view peer);

// ---- sockets ----

// poll()'s timeout for what is left until a deadline: rounded up, capped at an hour.
int PollMillis(absl::Duration left);
// Sends `bytes` as one sendmsg (looping only if the kernel takes part of it), with `fds`
// attached to the first byte. DeadlineExceeded: the peer is not reading; Unavailable: it closed.
absl::Status SendAll(int fd, absl::string_view bytes, absl::Span<const int> fds);
// SetSendTimeout, UnixAddress, ConnectUnix (retrying while faultline is not up yet): shared.
using ::faultline::ConnectUnix;
using ::faultline::SetSendTimeout;
using ::faultline::UnixAddress;

// ---- status <-> JSON ----

// {"type":type,"ok":...} plus "error" and "code" when `s` is not OK.
nlohmann::json StatusMessage(const char* type, const absl::Status& s);
// An ack/complete with ok:false → a status carrying the peer's error (and code, if named).
absl::Status PeerStatus(const nlohmann::json& m, absl::string_view context);

// ---- received fds ----

// What /proc/self/fd/<fd> links to ("" when /proc cannot tell).
std::string FdTarget(int fd);
// The uffd must be a userfaultfd (when /proc can tell).
absl::Status CheckUserfaultfd(int fd, absl::string_view what);
// A memory fd must back the whole region; hugetlb must be on hugetlbfs with that page size.
absl::Status CheckRegionFd(const HandoffRegion& r);

}  // namespace handoff_internal
}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_HANDOFF_HANDOFF_WIRE_H_
