// Placer: the placement ioctls of one region, with postcopy's rules for the kernel's races,
// returning what happened as a typed outcome.
//
//   Copy      UFFDIO_COPY from a buffer (anonymous, hugetlbfs, guest_memfd; memfd registered
//             MISSING only): allocates, copies, maps — one ioctl per run
//   Zero      zero pages: UFFDIO_ZEROPAGE; hugetlbfs has none, so a zero huge page is copied
//   Continue  UFFDIO_CONTINUE: maps what the page cache already holds (memfd/guest_memfd
//             registered MINOR, after the bytes were written into the page cache)
//   Wake      UFFDIO_WAKE: wakes every thread waiting on a range placed with wake=false
//   Drop      warm-up: removes pages' bytes from the region's file (fallocate PUNCH_HOLE), which
//             also unmaps them from every process; the next access faults MISSING again.
//             Unlike madvise(MADV_REMOVE) it raises no UFFD_EVENT_REMOVE (that would mark the
//             pages discarded, to be zero-filled). Anonymous memory has no file: Unimplemented.
//
// The kernel's races, as QEMU's migration/postcopy-ram.c meets them:
//   EEXIST  the page is already mapped — someone placed it, or (after an engine restart) the
//           dead engine did. It is present: counted, skipped, the rest of the run placed. Its
//           waiters are woken by whoever mapped it; we wake the run anyway (cheap; a lost
//           wake-up would hang a vCPU for good).
//   EAGAIN  a UFFD_EVENT_REMOVE/UNMAP is queued and unread: the mm is changing under us
//           (mfill_atomic() checks mmap_changing). Only the fault-loop thread reads events, so
//           on that thread we return kRetryAfterEvents (it reads them, then retries); on any
//           other thread we yield and retry until the fault loop has read them (bounded: 30 s,
//           then kFailed — events are not being read).
//   ENOENT  the range is no longer registered or mapped (UFFD_EVENT_UNMAP, the VMM unmapped
//           guest memory): kUnmapped; the caller drops those pages (discarded, not missing).
// Thread-safety: stateless apart from counters (atomics); any thread may call it.
#ifndef FAULTLINE_ENGINE_PLACER_H_
#define FAULTLINE_ENGINE_PLACER_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/region.h"
#include "engine/uffd_ops.h"

namespace faultline {

struct PlacerCounters {
  std::atomic<uint64_t> eexist{0}, eagain{0}, ioctls{0};
};

enum class PlaceOutcome : uint8_t {
  kDone,              // every page of the range is mapped (some maybe by others: EEXIST)
  kRetryAfterEvents,  // EAGAIN on the fault-loop thread: read uffd events, then call again
  kUnmapped,          // ENOENT: the range is gone; nothing more is placed there
  kFailed,            // a real error (in `error`)
};

struct PlaceResult {
  PlaceOutcome outcome = PlaceOutcome::kDone;
  std::vector<uint64_t> present;  // pages the kernel said EEXIST for (COPY, ZEROPAGE, CONTINUE)
  absl::Status error;             // kFailed only
  bool done() const { return outcome == PlaceOutcome::kDone; }
  uint32_t already_present() const { return static_cast<uint32_t>(present.size()); }
};

// Which thread calls: only the fault loop may be told to read events first.
enum class Caller : uint8_t { kFaultLoop, kOther };

class Placer {
 public:
  Placer(UffdOps* uffd, const GuestRegion* region, PlacerCounters* counters)
      : uffd_(uffd), region_(region), counters_(counters) {}

  // Pages [first, first + count) of the region.
  PlaceResult Copy(uint64_t first, uint32_t count, const uint8_t* src, bool wake, Caller c);
  PlaceResult Zero(uint64_t first, uint32_t count, bool wake, Caller c);
  PlaceResult Continue(uint64_t first, uint32_t count, bool wake, Caller c);
  absl::Status Wake(uint64_t first, uint32_t count);
  absl::Status Drop(uint64_t first, uint64_t count);
  // Resolves a fault on `page` the way the guest sees a discarded page, and wakes its waiters:
  // a MINOR fault maps the page cache as it is (CONTINUE), a MISSING one gets zeros (ZEROPAGE;
  // hugetlb: a zero huge page by COPY). Never writes the page cache, so a page that is already
  // mapped is left exactly as it is: the kernel says EEXIST, and its waiters are woken.
  PlaceResult FillHole(uint64_t page, bool minor, Caller c);

  const GuestRegion& region() const { return *region_; }

 private:
  enum class Op { kCopy, kZero, kContinue };
  PlaceResult Run(Op op, uint64_t first, uint32_t count, const uint8_t* src, bool wake, Caller c);

  UffdOps* uffd_;
  const GuestRegion* region_;
  PlacerCounters* counters_;
};

// A read-only run of zeros at least `len` bytes long (up to 1 GiB), or null: the source of
// zero huge pages (hugetlbfs has no UFFDIO_ZEROPAGE) and of zero pages written to a page cache.
const uint8_t* ZeroBytes(size_t len);

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_PLACER_H_
