// Migration: one migration a host daemon serves (serve/daemon.h) — registered by an
// orchestrator (`faultline expect`) with its source, token and TLS settings, waiting for its VMM's
// hand-off, then running on threads of its own (cli/handoff_run.h: engine, transport, state
// file) until every page is present or it fails. Everything an operator asks about it —
// `faultline status`, /metrics, the event log — comes from Snapshot().
//
// Thread-safety: every method from any thread. The run owns its engine; Snapshot() reads the
// engine's counters (atomics) and histograms (their own lock) under this object's mutex while
// the run holds the engine alive.
#ifndef FAULTLINE_SERVE_MIGRATION_H_
#define FAULTLINE_SERVE_MIGRATION_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cli/handoff_run.h"
#include "engine/engine.h"
#include "engine/latency_histogram.h"
#include "nlohmann/json.hpp"
#include "qemu-integration/handoff/handoff.h"

namespace faultline {

struct MigrationSpec {
  std::string id;         // 1..64 of [A-Za-z0-9._:-]
  HandoffRunOptions run;  // source (address, token, TLS, lanes), engine options, state dir, log
  std::string transport = "tcp";  // "tcp" or "rdma"
  std::string handoff_socket;     // its own hand-off socket ("" : only the daemon's shared one)
  // Connect to the source when registered rather than when the VMM hands over (TCP only;
  // see Migration::TakeAhead()).
  bool connect_ahead = true;
};

enum class MigrationPhase { kWaiting, kRunning, kComplete, kFailed };
const char* MigrationPhaseName(MigrationPhase p);
// Seconds since the Unix epoch, for status and metrics; 0 for InfinitePast ("not yet").
double UnixSeconds(absl::Time t);

struct MigrationStatus {
  std::string id;
  MigrationPhase phase = MigrationPhase::kWaiting;
  std::string error;   // kFailed: why
  std::string source;  // the page server's address
  std::string handoff_socket;
  std::string vmm;  // as the VMM named itself
  pid_t vmm_pid = 0;
  absl::Time registered, started, ended;                        // InfinitePast when not (yet)
  uint64_t pages_total = 0, pages_present = 0, page_bytes = 0;  // page_bytes: total bytes
  uint64_t urgent_pages = 0, bulk_pages = 0, zero_pages = 0;
  uint64_t urgent_bytes = 0, bulk_bytes = 0;
  uint64_t faults = 0, reconnects = 0, engine_restarts = 0;
  double bytes_per_second = 0;  // over the run so far
  // Warm-up (the source still runs its guest): rounds applied so far, the latest round's set,
  // whether the final round is applied (the guest may run here), and the throttle the
  // source's guest is under (percent of its vCPU time; 0: full speed).
  bool warmup = false, warmup_switched = false;
  uint64_t warmup_rounds = 0, warmup_last_set_pages = 0;
  uint32_t warmup_throttle = 0;
  LatencyHistogram fault_latency;
  std::map<uint32_t, LatencyHistogram> fault_latency_per_thread;  // by faulting thread id
};

class Migration {
 public:
  explicit Migration(MigrationSpec spec);
  ~Migration();  // cancels a run in progress and waits for it

  const std::string& id() const { return spec_.id; }
  const MigrationSpec& spec() const { return spec_; }
  // Starts serving `session` on a thread of its own. FailedPrecondition if it is not waiting
  // (a VMM already handed over — unless the earlier one went away, then this is a resume).
  absl::Status Start(std::unique_ptr<HandoffSession> session,
                     std::function<void(const Migration&)> on_end);
  MigrationStatus Snapshot() const;
  // The final report (cli/handoff_run.h's stats), once finished; null before.
  nlohmann::json Report() const;
  bool finished() const;  // complete or failed
  void Cancel();

 private:
  void Run(std::unique_ptr<HandoffSession> session, std::function<void(const Migration&)> on_end);

  // The source, connected when the migration is registered (TCP only): its connections and
  // their receive buffers cost ~17 ms here (fresh memory is dear on a shadow-paging machine),
  // which a hand-off would otherwise pay before its acknowledgement — while the source VMM
  // waits to switch over. Taken by the first run if still connected and young; else that run
  // connects as it always did.
  std::unique_ptr<PageSource> TakeAhead();

  const MigrationSpec spec_;
  // ahead_ and ahead_at_ are set by ahead_thread_, then read (and ahead_ taken) only by the
  // one who joined it, under ahead_mu_.
  std::mutex ahead_mu_;
  std::thread ahead_thread_;  // connecting; joined by TakeAhead() or the destructor
  absl::StatusOr<std::unique_ptr<PageSource>> ahead_;
  absl::Time ahead_at_;  // when ahead_ connected
  mutable std::mutex mu_;
  MigrationStatus status_;    // guarded by mu_ (counters refreshed from engine_)
  nlohmann::json report_;     // guarded by mu_
  Engine* engine_ = nullptr;  // guarded by mu_: while the run has one
  std::atomic<bool> cancelled_{false};
  std::thread thread_;  // guarded by mu_
};

}  // namespace faultline

#endif  // FAULTLINE_SERVE_MIGRATION_H_
