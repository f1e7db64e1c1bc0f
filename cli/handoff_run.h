// The faultline side of a VMM hand-off: adopt the VMM's userfaultfd and guest memory, connect
// to the source's page server, acknowledge, then serve faults and pull pages until every page
// is present — telling the VMM about progress and completion on the hand-off socket.
#ifndef FAULTLINE_CLI_HANDOFF_RUN_H_
#define FAULTLINE_CLI_HANDOFF_RUN_H_

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "nlohmann/json.hpp"
#include "qemu-integration/handoff/handoff.h"
#include "transport/tcp_page_source.h"

namespace faultline {

struct HandoffRunOptions {
  TcpSourceOptions source;
  EngineOptions engine;
  absl::Duration progress_every = absl::Milliseconds(200);
};

// Runs one hand-off session to completion. Nothing is acknowledged until the source is
// connected and its regions match the VMM's, so a VMM never resumes a guest that faultline
// cannot serve. *stats receives the final report (also sent to the VMM).
absl::Status RunHandoff(HandoffSession& session, const HandoffRunOptions& opts,
                        nlohmann::json* stats = nullptr);

nlohmann::json EngineStatsJson(const Engine& e, double seconds);

}  // namespace faultline

#endif  // FAULTLINE_CLI_HANDOFF_RUN_H_
