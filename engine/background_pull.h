// BackgroundPull: asks for every page no fault asked for, in batches, on its own thread. It
// keeps up to `window` batches' worth of bytes in flight on each bulk lane of the source (so
// scattered single pages — what a warm-up round leaves absent — go many at a time, not four) (the
// lanes are independent connections, each with its own receive thread), claims the next batch from
// a cursor that jumps next to the latest fault (spatial locality: neighbours are likely next), and
// wraps around the regions until every page has been asked for once. Pages that become absent again
// (a rejected page, a reconnect) are picked up after a Kick().
//
// Thread-safety: one thread of its own issues the requests; every public method may be called
// from any thread (a mutex guards the window and the cursor; the hint is an atomic).
#ifndef FAULTLINE_ENGINE_BACKGROUND_PULL_H_
#define FAULTLINE_ENGINE_BACKGROUND_PULL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/fault_stats.h"
#include "engine/region_table.h"
#include "transport/page_source.h"

namespace faultline {

class BackgroundPull {
 public:
  struct Options {
    uint32_t batch_bytes = 1u << 20;  // bytes per request (capped by the source's limits)
    uint32_t window = 4;              // batches' bytes in flight per lane
    bool enabled = true;              // false: nothing is pulled until Enable()
    uint64_t rate_bytes_per_s = 0;    // a limit on the bytes asked for per second; 0: none
    // With several lanes: for this long after a fault only the first lane takes new requests.
    // Every lane's receive thread here and sender at the source wants a core; on a host short
    // of cores they delay the fault's own threads (bench/RESULTS.md: on 2 cores a second lane
    // made the mean fault 2-4x slower and the switch-over's faults with it). 0: never.
    uint64_t solo_after_fault_ns = 0;
    // With several lanes: for this long after the pull begins (Start() if enabled, else
    // Enable()) only the first lane takes requests. A VMM's switch-over — QEMU loading device
    // state, which reads guest RAM through faults — happens then, and every extra lane's
    // threads delayed those faults (bench/RESULTS.md: kvm-tpr-opt's load 3.0 ms with one lane,
    // 9.6 ms with two). 0: none.
    uint64_t solo_at_start_ns = 0;
    // No lane takes a request for this long after the pull begins, or until Release(): the
    // switch-over's faults and the VMM's device-state load have both cores to themselves. For a
    // VMM that says when its guest runs (hand-off "running"), this is the most it may take. 0:
    // none.
    uint64_t hold_at_start_ns = 0;
  };
  BackgroundPull(RegionTable* table, EngineCounters* counters, const Options& opts)
      : table_(table),
        counters_(counters),
        opts_(opts),
        enabled_(opts.enabled),
        rate_(opts.rate_bytes_per_s) {}
  ~BackgroundPull() { Stop(); }

  // Starts the pulling thread on `source` (which must outlive Stop()).
  void Start(PageSource* source);
  void Stop();  // joins; idempotent

  void Enable();
  // Ends the hold at the start (Options::hold_at_start_ns) now, e.g. when the guest runs.
  void Release();
  // Reconnecting: no new request until Resume(), which also forgets the requests in flight
  // (they died with the connection; their pages were made absent again by the caller).
  void Pause();
  void Resume();
  // The latest urgent fault: continue from there.
  void Hint(uint32_t region, uint64_t page) {
    hint_.store(table_->Key(region, page) + 1, std::memory_order_relaxed);
    last_fault_ns_.store(FaultStats::NowNs(), std::memory_order_relaxed);
  }
  // Changes the rate limit (0: none), e.g. lifted when warm-up ends.
  void SetRate(uint64_t bytes_per_s);
  // A batch on `lane` was answered completely: room for the next.
  void BulkDone(uint32_t lane);
  // Pages became absent again: look for them.
  void Kick();

  uint32_t BatchPages(uint32_t region) const;
  uint32_t lanes() const { return static_cast<uint32_t>(outstanding_.size()); }
  // Requests in flight on one lane at most, whatever their size (the source answers them in
  // order; its queue is the socket).
  static constexpr size_t kMaxRequestsPerLane = 256;
  bool idle() const;  // every page has been asked for (or is done)

 private:
  void Loop();
  // How many lanes (from the first) may take a new request now (0 during the hold at the start;
  // then solo_at_start_ns, solo_after_fault_ns); *wait_ns: how long until that may change (when
  // fewer than all).
  size_t ActiveLanes(uint64_t* wait_ns) const;
  // Claims the next batch from the cursor (under mu_). False: nothing absent is left.
  bool ClaimNext(uint32_t* region, uint64_t* first, uint32_t* count);

  RegionTable* table_;
  EngineCounters* counters_;
  Options opts_;
  PageSource* source_ = nullptr;
  SourceLimits limits_;
  std::thread thread_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;        // guarded by mu_
  bool enabled_;             // guarded by mu_
  bool paused_ = false;      // guarded by mu_
  bool idle_ = false;        // guarded by mu_: nothing absent at the last scan
  uint64_t generation_ = 0;  // guarded by mu_: bumped by Resume()
  uint64_t began_ns_ = 0;    // guarded by mu_: when the pull was first enabled (0: not yet)
  bool released_ = false;    // guarded by mu_: Release() ended the hold at the start
  struct Lane {
    std::deque<uint64_t> sizes;  // bytes of each request in flight, oldest first
    uint64_t bytes = 0;
  };
  std::vector<Lane> outstanding_;           // guarded by mu_: per lane
  uint32_t cursor_region_ = 0;              // guarded by mu_
  uint64_t cursor_page_ = 0;                // guarded by mu_
  std::atomic<uint64_t> hint_{0};           // key + 1 of the latest urgent fault
  std::atomic<uint64_t> last_fault_ns_{0};  // when Hint() was last called (0: never)
  uint64_t rate_;                           // guarded by mu_: bytes per second, 0: no limit
  uint64_t next_request_ns_ = 0;            // guarded by mu_: the rate limit's clock
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_BACKGROUND_PULL_H_
