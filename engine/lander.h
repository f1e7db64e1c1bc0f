// Lander: puts a delivered run of checked pages into guest memory — each page exactly once —
// and wakes whoever waits on them. The receiving half of one fault's path:
//
//   Deliver(run)  claim each page (page-state map: only one claimer wins, so a page that
//                 arrives twice, or is being placed by the other channel, is skipped)
//       memfd     write the claimed pages into the page cache with one pwritev() per stretch
//                 (no page faults, no zeroing: the cheapest fill of fresh shmem memory, see
//                 bench/placement_benchmark.cc), mark them landed, map them: UFFDIO_CONTINUE
//       anon, hugetlbfs, guest_memfd, memfd registered MISSING only
//                 UFFDIO_COPY per stretch of data pages, UFFDIO_ZEROPAGE per stretch of zeros
//       then      present; urgent: the placement itself woke the vCPU; bulk: placed with
//                 DONTWAKE, one UFFDIO_WAKE for the whole run; fault latency recorded
//
// Order for memfd, which an engine restart relies on (engine.cc, "Restart"): claim (kPlacing)
// → every byte in the page cache → MarkLanded (kLanded) → CONTINUE → Complete (kPresent). A
// page is never mapped before it is kLanded, and the page cache never holds unchecked bytes.
//
// Thread-safety: called on every receive thread at once; it keeps no state of its own beyond
// counters (the page-state map arbitrates), so no lock is taken.
#ifndef FAULTLINE_ENGINE_LANDER_H_
#define FAULTLINE_ENGINE_LANDER_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "engine/fault_stats.h"
#include "engine/region_table.h"
#include "transport/page_source.h"

namespace faultline {

class Lander {
 public:
  Lander(RegionTable* table, FaultStats* stats, EngineCounters* counters)
      : table_(table), stats_(stats), counters_(counters) {}

  // Places every page of `run` that is still wanted. An error (a placement the kernel refused
  // for real) means the pages of that stretch were handed back (absent); the engine fails.
  absl::Status Deliver(const PageRun& run);

 private:
  // Places run pages [i, j), all claimed by this call.
  absl::Status PlaceStretch(RegionTable::Entry& e, const PageRun& run, uint32_t i, uint32_t j,
                            bool wake);
  // COPY (data pages) and ZEROPAGE (zero pages) of run pages [i, j) into the guest mapping.
  PlaceResult CopyOrZero(RegionTable::Entry& e, const PageRun& run, uint32_t i, uint32_t j,
                         bool wake);
  // memfd: writes run pages [i, j) into the page cache (pwritev, or the alias mapping where the
  // fd takes no writes).
  absl::Status WritePageCache(RegionTable::Entry& e, const PageRun& run, uint32_t i, uint32_t j);

  RegionTable* table_;
  FaultStats* stats_;
  EngineCounters* counters_;
  // Per region: its fd refused pwritev once (EINVAL, EBADF...): write the alias mapping instead.
  std::atomic<bool> no_pwrite_[kMaxEngineRegions] = {};
  // Per region (memfd): COPY was refused (EINVAL: registered without MISSING): place through
  // the page cache (pwritev + CONTINUE) instead.
  std::atomic<bool> no_copy_[kMaxEngineRegions] = {};
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_LANDER_H_
