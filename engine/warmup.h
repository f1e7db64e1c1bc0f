// WarmUp: pre-copy before post-copy. While the guest still runs on the source, the engine
// pulls every page (the background pull, optionally rate-limited), then asks the source in
// rounds which pages were written since they were sent (PageSource::RequestDirty), drops those
// here (evicted: their bytes punched out of the region's file, absent again) and pulls them
// again — until a round's set is small or stops shrinking, or the round limit or the deadline
// is reached (or, with a throttle, until slowing the guest down no longer helps: see
// WarmUpOptions::throttle_max). Then the final round: the source stops the guest, reports the last
// set, this side drops it and confirms, and only then may the guest run here (the source learns it
// from the confirmation; DirtyTracker::Switched). Post-copy then fetches what the final set left
// absent, as usual — or, when that is cheap (WarmUpOptions::final_copy), it is fetched before
// the confirmation, with the guest still stopped: a stop-and-copy of the last set.
//
// Why no stale page survives (tested in tests/warmup_test.cc, page for page):
//  - the source tracks writes from before its first page read (transport/dirty_tracker.h), so a
//    page whose bytes changed after they were read is in some later round's set;
//  - each round's set is applied after any copy of the page still in flight has landed (a page
//    is evicted only when present; requested or being placed, it is waited for), so an old copy
//    can never land after the eviction; a copy requested after the round was collected is
//    fresh, and at worst evicted needlessly and fetched once more;
//  - the final set is collected with the guest stopped for good and applied before the guest
//    runs here; a set that is lost (connection, engine restart) is sent again by the source
//    until it is confirmed (transport/dirty_rounds.h).
//
// Threads: one of its own (Start/Join); Dirty() from the transport's receive thread.
#ifndef FAULTLINE_ENGINE_WARMUP_H_
#define FAULTLINE_ENGINE_WARMUP_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/background_pull.h"
#include "engine/region_table.h"
#include "engine/stop_signal.h"
#include "transport/page_source.h"

namespace faultline {

struct WarmUpOptions {
  bool enabled = false;
  // Rounds before the final one (the first is the pull of every page).
  uint32_t max_rounds = 8;
  // Switch once a round's set is at most this many pages, or is more than `shrink` of the
  // previous round's (the guest writes as fast as we pull: more rounds would not help).
  uint64_t converge_pages = 256;
  double shrink = 0.8;
  // Auto-converge, as QEMU's: when a round's set does not shrink (above), ask the source to
  // slow its guest down instead of switching — `throttle_initial` percent of its vCPU time,
  // `throttle_step` more each round that still does not shrink, up to `throttle_max` (then
  // switch). 0: never (the default; a source that cannot slow its guest ends it too).
  // Rounds that raise the throttle do not count against max_rounds (the ramp would use
  // them up before the throttle is high enough to matter).
  uint32_t throttle_max = 0;
  uint32_t throttle_initial = 20;
  uint32_t throttle_step = 10;
  // From Start(): switch even if the rounds have not converged.
  absl::Duration deadline = absl::Minutes(10);
  // The background pull's rate limit until the switch (bytes/s; 0: none).
  uint64_t rate_bytes_per_s = 0;
  // Stop-and-copy of the final set: once it is dropped, fetch what is absent before the guest
  // may run here (the source keeps it stopped until the confirmation) when, at the rate of
  // the first pull, that takes at most this long — downtime traded for faults after the
  // switch, as QEMU's pre-copy does within its downtime-limit. Else (or zero) post-copy
  // fetches it. The wait is bounded (4x this); what is still absent then is post-copy's.
  absl::Duration final_copy = absl::Milliseconds(20);
  // No answer to a DIRTY_SYNC this long (a connection was replaced meanwhile): ask again.
  absl::Duration answer_timeout = absl::Seconds(3);
};

// One round, as the engine reports it.
struct WarmUpRound {
  uint64_t round = 0;  // the source's number
  bool final = false;
  uint64_t pages = 0;      // in the set
  uint64_t evicted = 0;    // of which were present here (dropped, fetched again)
  uint64_t pulled_ns = 0;  // from the previous set's application to every page present
  uint64_t apply_ns = 0;   // asking, receiving and applying this set
  uint64_t answer_ns = 0;  // of which: from the request to the whole answer
  uint64_t drop_ns = 0;    // of which: dropping the pages here
  // The throttle in force at the source from this round's request on (percent; 0: none, or
  // the source cannot slow its guest — then no_throttle).
  uint32_t throttle = 0;
  bool no_throttle = false;
  // Final round: fetched before the guest ran here (WarmUpOptions::final_copy), how long
  // that took (part of apply_ns).
  bool final_copied = false;
  uint64_t final_copy_ns = 0;
};

class WarmUp {
 public:
  WarmUp(RegionTable* table, BackgroundPull* pull, StopSignal* stop, const WarmUpOptions& o)
      : table_(table), pull_(pull), stop_(stop), opts_(o) {}
  ~WarmUp() { Join(); }

  // Checks that every region's pages can be dropped here (file-backed): warm-up of anonymous
  // memory in another process is refused.
  static absl::Status CheckRegions(const RegionTable& table);

  // Starts the rounds on `source`. `switching` runs (on the warm-up thread) once the final set
  // is applied, just before it is confirmed — from the confirmation on, the guest may run
  // here; `switched` right after the confirmation.
  void Start(PageSource* source, std::function<void()> switching, std::function<void()> switched);
  void Join();
  // PageSink::Dirty, forwarded by the engine.
  void Dirty(DirtySet set);

  bool switched() const { return switched_.load(std::memory_order_acquire); }
  uint64_t switched_at_ns() const { return switched_at_ns_.load(); }
  std::vector<WarmUpRound> rounds() const;

 private:
  void Loop();
  // Until every page is present (true) or the run stops or `until` passes (false).
  bool WaitAllPresent(absl::Time until);
  // One round: ask, wait for the answer (asking again after a silence), apply, confirm.
  absl::Status Round(bool final, uint32_t throttle, WarmUpRound* r);
  // Drops every page of `set` that is present (waits for pages in flight); returns how many.
  absl::StatusOr<uint64_t> Apply(const DirtySet& set);

  RegionTable* table_;
  BackgroundPull* pull_;
  StopSignal* stop_;
  WarmUpOptions opts_;
  PageSource* source_ = nullptr;
  std::function<void()> on_switching_, on_switched_;
  std::thread thread_;
  double pull_bytes_per_ns_ = 0;  // the first pull's rate (warm-up thread only)

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<DirtySet> answers_;     // guarded by mu_
  std::vector<WarmUpRound> rounds_;  // guarded by mu_
  std::atomic<bool> switched_{false};
  std::atomic<uint64_t> switched_at_ns_{0};
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_WARMUP_H_
