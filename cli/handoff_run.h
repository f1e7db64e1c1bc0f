// The faultline side of a VMM hand-off: adopt the VMM's userfaultfd and guest memory, connect
// to the source's page server, acknowledge, then serve faults and pull pages until every page
// is present — telling the VMM about progress and completion on the hand-off socket.
#ifndef FAULTLINE_CLI_HANDOFF_RUN_H_
#define FAULTLINE_CLI_HANDOFF_RUN_H_

#include <functional>
#include <string>

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
  // A VMM whose hello says "notify_running" (QEMU's series): no background request until it
  // says "running", at most this long after "listen" — its switch-over (device state that reads
  // guest RAM through faults) then has the host's cores to itself. Zero: the stream starts at
  // "listen" regardless.
  absl::Duration bulk_hold_until_running = absl::Milliseconds(100);
  // Where the page-state map lives while the migration runs (one file per migration, named
  // after a hash of the token; engine/state_file.h). If this engine dies, a new one given the
  // same uffd adopts the file and continues; it is removed when the migration completes.
  // Empty: in memory only (a restart then cannot resume, and a "resume" hello is refused).
  std::string state_dir;
  // Progress notes for an operator (adopting a dead engine's state, ...). May be null.
  std::function<void(const std::string&)> log;
  // Called with the engine once the VMM is acknowledged (before the engine runs: a version 2
  // "start":"listen" hand-off waits for the VMM's "listen" first), and with null before the
  // engine goes away; meanwhile another thread may read its counters or Cancel() it — also
  // while waiting for "listen", which then ends (Cancelled, "complete" ok:false to the VMM).
  // May be null.
  std::function<void(Engine*)> on_engine;
  // Connects the transport (e.g. RDMA, transport/rdma_page_source.h); null: TCP to `source`.
  std::function<absl::StatusOr<std::unique_ptr<PageSource>>(const TcpSourceOptions&)> connect;
};

// Runs one hand-off session to completion. Nothing is acknowledged until the source is
// connected and its regions match the VMM's (and stale pages are dropped), so a VMM never
// resumes a guest that faultline cannot serve. A version 2 "start":"listen" hand-off then
// places nothing until the VMM's "listen"; a bye or a closed connection before it ends the
// run with that error (qemu-integration/handoff/handoff.h), nothing placed. *stats receives the
// final report (also sent to the VMM). With a state_dir, a state file left by a dead engine for the
// same migration and the same VMM is adopted (automatically; a hello with "resume" requires one)
// and the migration continues.
absl::Status RunHandoff(HandoffSession& session, const HandoffRunOptions& opts,
                        nlohmann::json* stats = nullptr);

nlohmann::json EngineStatsJson(const Engine& e, double seconds);

// The state file of the migration with this token under `dir`.
std::string StateFilePath(const std::string& dir, const Token& token);

}  // namespace faultline

#endif  // FAULTLINE_CLI_HANDOFF_RUN_H_
