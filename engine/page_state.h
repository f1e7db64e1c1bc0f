// PageStateMap: one byte of state per guest page, shared lock-free by the fault loop and the
// transport's receive threads. Every transition is a compare-and-swap, so exactly one thread
// wins the right to place a page, and a page is placed once.
//
//            fault                       arrival claims              placed + woken
//   kAbsent ───────► kUrgentRequested ────────────────► kPlacing ───────────────► kPresent
//      │ puller          ▲ fault (upgrade: don't wait      │ corrupt / stream broke
//      ▼                 │ behind the bulk batch)          ▼
//   kBulkRequested ──────┘                              back to kAbsent (fetched again)
//
//   Warm-up (engine/warmup.h): a present page the source reports written since it was sent is
//   evicted: its bytes are dropped first, then kPresent ⇒ kAbsent (fetched again).
//
//   REMOVE/UNMAP ⇒ kDiscarded from any state: the guest dropped the page; a later fault on it
//   is resolved with zeros (kPlacingDiscarded ⇒ kPresent), arrivals for it are dropped.
//   A placement already under way (kPlacing) when the REMOVE is read completes in the kernel
//   and keeps its content; Complete() then reports the page discarded (known limitation).
//
//   Alias kinds (memfd registered MINOR: bytes written into the page cache, then CONTINUE)
//   take one more step, kPlacing ⇒ kLanded, once every byte of the page is in the page cache
//   and before the CONTINUE that maps it. It exists for an engine restart (state_file.h):
//   kPlacing there means "maybe half written, never mapped", kLanded "complete, maybe mapped".
// A page is "done" in kPresent or kDiscarded; remaining() counts pages not done.
//
// The map lives in this process's memory, or in a MAP_SHARED state file that outlives the
// engine process (engine/state_file.h); AdoptAfterRestart() turns what a dead engine left there
// into a state this engine can continue from.
#ifndef FAULTLINE_ENGINE_PAGE_STATE_H_
#define FAULTLINE_ENGINE_PAGE_STATE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"

namespace faultline {

enum class PageState : uint8_t {
  kAbsent = 0,
  kBulkRequested,
  kUrgentRequested,
  kPlacing,           // claimed by one placer; not yet done
  kPlacingDiscarded,  // claimed to zero-fill a discarded page (already counted done)
  kPresent,
  kDiscarded,
  kLanded,  // alias kinds: bytes complete in the page cache; CONTINUE issued or about to be
};

const char* PageStateName(PageState s);

// What AdoptAfterRestart() found and did, page counts.
struct AdoptedStates {
  uint64_t present = 0;    // kPresent: placed by the dead engine, kept
  uint64_t discarded = 0;  // kDiscarded / kPlacingDiscarded: kept discarded
  uint64_t requeued = 0;   // requested (urgent or bulk), never claimed: absent again
  uint64_t refetch = 0;    // kPlacing: absent again, fetched and placed anew (see engine.cc)
  uint64_t landed = 0;     // kLanded: to be mapped with UFFDIO_CONTINUE, not fetched
};

class PageStateMap {
 public:
  explicit PageStateMap(uint64_t pages);
  // Over `pages` bytes of caller-owned storage (a state file's mapping), taken as they are;
  // null: owned storage, every page absent.
  PageStateMap(uint64_t pages, std::atomic<uint8_t>* storage);

  uint64_t pages() const { return pages_; }
  PageState Get(uint64_t p) const {
    return static_cast<PageState>(state_[p].load(std::memory_order_acquire));
  }
  uint64_t remaining() const { return remaining_.load(std::memory_order_acquire); }

  // Fault: kAbsent|kBulkRequested → kUrgentRequested. True if the caller must send the
  // urgent request; *seen receives the state found.
  bool MarkUrgent(uint64_t p, PageState* seen);
  // Arrival: kAbsent|kBulkRequested|kUrgentRequested → kPlacing, or a discarded page
  // kDiscarded → kPlacingDiscarded when `discarded_too`. Returns false if not claimable;
  // *prev receives the state found.
  bool Claim(uint64_t p, PageState* prev, bool discarded_too = false);
  // The claimer placed the page: kPlacing|kPlacingDiscarded → kPresent. False if the page was
  // discarded meanwhile (it stays kDiscarded).
  bool Complete(uint64_t p);
  // A bulk request that will not be answered (the connection died, the write failed):
  // kBulkRequested → kAbsent, so the background pull asks again. False in any other state.
  bool Unrequest(uint64_t p);
  // The claimer could not place the page: back to kAbsent (or kDiscarded).
  void Release(uint64_t p);
  // Alias kinds: every byte of the claimed page is in the page cache: kPlacing → kLanded.
  // Must precede the UFFDIO_CONTINUE that maps it. False if the page was discarded meanwhile.
  bool MarkLanded(uint64_t p);
  // kLanded → kPlacing: the claimer will rewrite the page's bytes (an urgent COPY that met a
  // page it did not put there; lander.cc). False if the page was discarded meanwhile.
  bool Unland(uint64_t p);
  // Warm-up, after the caller dropped the page's bytes: kPresent → kAbsent, no longer done
  // (remaining() grows by one). False in any other state.
  bool Evict(uint64_t p);
  // REMOVE/UNMAP: any state → kDiscarded.
  void Discard(uint64_t p);
  // Before any other use of a map a dead engine left behind (no other thread may touch it):
  // kPresent, kDiscarded, kAbsent stay; requested pages and kPlacing become kAbsent;
  // kPlacingDiscarded becomes kDiscarded; kLanded stays and its pages are appended to *landed.
  // Recounts remaining(). DataLoss on a byte that is no state at all (a corrupt file).
  absl::StatusOr<AdoptedStates> AdoptAfterRestart(std::vector<uint64_t>* landed);
  // Background pull: from `from`, skip to the first kAbsent page and turn up to `max`
  // consecutive kAbsent pages into kBulkRequested. Returns the count (0: none at or after
  // `from`); *first receives the run's first page.
  uint32_t ClaimBulkRun(uint64_t from, uint32_t max, uint64_t* first);

  size_t memory_bytes() const { return pages_ * sizeof(state_[0]); }

 private:
  bool Cas(uint64_t p, PageState& expected, PageState to) {
    uint8_t e = static_cast<uint8_t>(expected);
    static_assert(sizeof(std::atomic<uint8_t>) == 1 && std::atomic<uint8_t>::is_always_lock_free,
                  "the map is shared with a file as plain bytes");
    bool ok =
        state_[p].compare_exchange_strong(e, static_cast<uint8_t>(to), std::memory_order_acq_rel);
    expected = static_cast<PageState>(e);
    return ok;
  }
  void CountDone() { remaining_.fetch_sub(1, std::memory_order_acq_rel); }

  uint64_t pages_;
  std::unique_ptr<std::atomic<uint8_t>[]> owned_;
  std::atomic<uint8_t>* state_;  // owned_ or a state file's mapping
  std::atomic<uint64_t> remaining_;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_PAGE_STATE_H_
