// The host daemon's control socket: a Unix stream socket (mode 0600: its owner and root), one
// request per connection — a JSON object on one line — answered by one JSON line:
//   {"op":"expect","id":"vm-17","connect":"src:7470","token":"<64 hex>"[,"tls_ca":PATH,
//    "tls_cert":PATH,"tls_key":PATH,"tls_server_name":NAME,"bulk_channels":N,
//    "transport":"tcp"|"rdma","own_socket":true|false,"state_dir":PATH]}
//        → {"ok":true,"id":"vm-17","handoff_socket":"/run/faultline-vm-17.sock"}
//   {"op":"status"[,"id":"vm-17"]}  → {"ok":true,"migrations":[{...}, ...]}
//   {"op":"cancel","id":"vm-17"}     → {"ok":true,...}   (a running migration fails, cancelled)
//   {"op":"forget","id":"vm-17"}     → {"ok":true,...}   (a migration not running is dropped)
// Errors: {"ok":false,"error":"...","code":"INVALID_ARGUMENT"}. A request over 64 KiB, or not
// complete within 5 s, is refused.
#ifndef FAULTLINE_SERVE_CONTROL_H_
#define FAULTLINE_SERVE_CONTROL_H_

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "nlohmann/json.hpp"

namespace faultline {

inline constexpr size_t kMaxControlRequest = 64 * 1024;

// Server side.
absl::StatusOr<UniqueFd> ListenControl(const std::string& path);
// Accepts one connection (non-blocking listening fd); *uid receives the peer's uid.
absl::StatusOr<UniqueFd> AcceptControl(int listen_fd, uid_t* uid);
absl::StatusOr<nlohmann::json> ReadControlRequest(int fd, absl::Duration timeout);
absl::Status WriteControlReply(int fd, const nlohmann::json& reply);
nlohmann::json ControlError(const absl::Status& s);

// Client side: one request, its reply (a reply with ok:false is returned as it is).
absl::StatusOr<nlohmann::json> ControlCall(const std::string& path, const nlohmann::json& request,
                                           absl::Duration timeout = absl::Seconds(10));

}  // namespace faultline

#endif  // FAULTLINE_SERVE_CONTROL_H_
