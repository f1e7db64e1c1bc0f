// FaultStats: what the engine measured. Counters are atomics; each fault's latency runs from
// the moment the fault loop read its uffd event to the moment its page was placed and the
// faulting thread woken, recorded overall and per faulting thread (UFFD_FEATURE_THREAD_ID).
#ifndef FAULTLINE_ENGINE_FAULT_STATS_H_
#define FAULTLINE_ENGINE_FAULT_STATS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/latency_histogram.h"

namespace faultline {

struct EngineCounters {
  std::atomic<uint64_t> faults{0};            // uffd page-fault events read
  std::atomic<uint64_t> minor_faults{0};      // of which MINOR
  std::atomic<uint64_t> duplicate_faults{0};  // on a page already requested or being placed
  std::atomic<uint64_t> stale_faults{0};      // on a page already present (woken at once)
  std::atomic<uint64_t> urgent_requests{0};
  std::atomic<uint64_t> bulk_requests{0};
  std::atomic<uint64_t> urgent_pages{0};        // placed from the urgent channel
  std::atomic<uint64_t> bulk_pages{0};          // placed from the bulk channel
  std::atomic<uint64_t> zero_pages{0};          // placed from a zero marker
  std::atomic<uint64_t> duplicate_arrivals{0};  // arrived for a page already placed: dropped
  std::atomic<uint64_t> corrupt_pages{0};       // CRC mismatch: dropped, fetched again
  std::atomic<uint64_t> bytes_received{0};      // page bytes placed (urgent + bulk)
  std::atomic<uint64_t> urgent_bytes{0}, bulk_bytes{0};
  std::atomic<uint64_t> remove_events{0}, unmap_events{0}, discarded_pages{0};
  std::atomic<uint64_t> reconnects{0}, resent_requests{0};
  // Pages a dead engine left kLanded whose CONTINUE found no page to map (it died between
  // marking them landed and its UFFDIO_COPY): fetched again (FaultLoop::ResolveLanded()).
  std::atomic<uint64_t> landed_refetched{0};
};

// How a fault was served, as the fault loop decided it (FaultStats::Classify).
enum class FaultKind : uint8_t {
  kFetched,          // absent: an urgent request fetched it
  kFetchedOverBulk,  // asked for in a bulk batch still under way: fetched urgently anyway
  kJoinedUrgent,     // another fault's urgent request was under way: waited for its answer
  kJoinedPlacing,    // a receive thread was placing it: waited for that placement
  kImmediate,        // present (a stale fault) or a discarded page filled at once
  kRaced,            // placed before the fault loop had classified it
};
inline constexpr int kFaultKinds = 6;
const char* FaultKindName(FaultKind k);

class FaultStats {
 public:
  static uint64_t NowNs();

  // The fault loop read a fault on `key` (a global page number) at `t_ns`.
  void FaultPending(uint64_t key, uint32_t tid, uint64_t t_ns);
  // What the fault loop decided for the pending fault of `tid` on `key` (its latency is
  // recorded under that kind too when it resolves; one already resolved counts as kRaced).
  void Classify(uint64_t key, uint32_t tid, FaultKind kind);
  // The page `key` was placed and woken: completes its pending faults. Cheap when none.
  void Resolved(uint64_t key);
  void ResolvedRange(uint64_t first_key, uint64_t count);
  bool HasPending() const { return pending_count_.load(std::memory_order_acquire) > 0; }
  bool IsPending(uint64_t key);

  LatencyHistogram Overall() const;
  std::map<uint32_t, LatencyHistogram> PerThread() const;
  std::array<LatencyHistogram, kFaultKinds> ByKind() const;

 private:
  struct Pending {
    uint64_t t_ns;
    uint32_t tid;
    FaultKind kind;
  };
  void ResolveLocked(uint64_t key, uint64_t now);

  mutable std::mutex mu_;
  absl::flat_hash_map<uint64_t, std::vector<Pending>> pending_;
  std::atomic<uint64_t> pending_count_{0};
  LatencyHistogram overall_;
  std::map<uint32_t, LatencyHistogram> per_thread_;
  std::array<LatencyHistogram, kFaultKinds> by_kind_;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_FAULT_STATS_H_
