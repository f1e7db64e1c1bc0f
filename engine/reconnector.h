// Reconnector: survives a network blip. When a connection to the source breaks (a kNetwork
// SourceError: not a protocol error or a refusal), the guest's faulted threads simply keep
// waiting in the kernel — a userfaultfd fault has no timeout, never SIGBUS — the page-state
// map keeps what is present, and this thread reconnects with backoff until a deadline. Then
// every request that was in flight is made again: urgent-requested pages urgently (a fault
// waits on each), bulk-requested pages go back to absent for the background pull. A page that
// arrives twice is placed once (the page-state map's claim), so nothing is lost or doubled.
//
// Thread-safety: Request() from any thread (receive threads); one reconnection at a time, on a
// thread of its own; Join() from the engine's thread.
#ifndef FAULTLINE_ENGINE_RECONNECTOR_H_
#define FAULTLINE_ENGINE_RECONNECTOR_H_

#include <atomic>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/background_pull.h"
#include "engine/fault_stats.h"
#include "engine/region_table.h"
#include "transport/page_source.h"

namespace faultline {

class Reconnector {
 public:
  // `fail` ends the run with an error (called on the reconnect thread when the deadline
  // passes or the source refuses us on the way back).
  Reconnector(RegionTable* table, BackgroundPull* pull, EngineCounters* counters,
              absl::Duration deadline, std::function<void(const absl::Status&)> fail)
      : table_(table),
        pull_(pull),
        counters_(counters),
        deadline_(deadline),
        fail_(std::move(fail)) {}
  ~Reconnector() { Join(); }

  void SetSource(PageSource* source) { source_ = source; }
  // A connection failed with `why` (reconnectable). Starts a reconnection unless one is under
  // way. False when reconnecting is off (deadline zero): the caller fails the run.
  bool Request(const SourceError& why);
  bool reconnecting() {
    std::lock_guard<std::mutex> l(mu_);
    return busy_;
  }
  void Join();

 private:
  void Loop(absl::Status why);
  // One reconnection; false if it failed (the run is failed).
  bool Reconnect(const absl::Status& why);
  // After a successful reconnection: every request in flight is made again.
  void Reissue();

  RegionTable* table_;
  BackgroundPull* pull_;
  EngineCounters* counters_;
  absl::Duration deadline_;
  std::function<void(const absl::Status&)> fail_;
  PageSource* source_ = nullptr;
  std::mutex mu_;
  bool busy_ = false;     // guarded by mu_: a reconnection is under way
  bool pending_ = false;  // guarded by mu_: a connection failed during it: go again
  std::thread thread_;    // guarded by mu_
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_RECONNECTOR_H_
