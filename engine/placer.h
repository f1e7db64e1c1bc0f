// Placer: puts arrived pages into one region the way its kind requires, and wakes vCPUs.
//   anonymous  UFFDIO_COPY from the landing buffer; zeros by UFFDIO_ZEROPAGE
//   hugetlb    UFFDIO_COPY of whole huge pages; zeros by copying a zero huge page
//              (UFFDIO_ZEROPAGE is not supported on hugetlbfs)
//   memfd,     the bytes are already in the page cache (written through the alias mapping);
//   guest_memfd UFFDIO_CONTINUE maps them; zeros are written to the alias first. (ZEROPAGE is
//              not used: on a page-cache page left by a failed landing it would say EEXIST
//              while the page holds garbage.)
// Kernel races, as QEMU's postcopy handles them:
//   EEXIST: the page is already mapped, so it is present: skip it and carry on with the run.
//   EAGAIN: a REMOVE/UNMAP event is queued: the mm is changing. Off the fault-loop thread we
//           retry (the fault loop reads the event, which clears the condition); on it we
//           return Unavailable so the loop reads events first.
//   ENOENT: the range is no longer registered (UNMAP): NotFound, the caller drops the pages.
#ifndef FAULTLINE_ENGINE_PLACER_H_
#define FAULTLINE_ENGINE_PLACER_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "engine/region.h"
#include "engine/uffd.h"

namespace faultline {

struct PlacerCounters {
  std::atomic<uint64_t> eexist{0}, eagain{0}, ioctls{0};
};

class Placer {
 public:
  Placer(Userfaultfd* uffd, const GuestRegion* region, PlacerCounters* counters)
      : uffd_(uffd), region_(region), counters_(counters) {}

  // Pages [first, first+count). `src` holds their bytes for COPY kinds (ignored for alias
  // kinds, whose bytes are already in the alias). With wake=false the caller must Wake().
  absl::Status PlaceData(uint64_t first, uint32_t count, const uint8_t* src, bool wake,
                         bool retry_eagain = true);
  absl::Status PlaceZero(uint64_t first, uint32_t count, bool wake, bool retry_eagain = true);
  absl::Status Wake(uint64_t first, uint32_t count);
  // Resolves a fault on `page` the way the guest sees a discarded page, and wakes its waiters:
  // a MINOR fault maps the page cache as it is (UFFDIO_CONTINUE), a MISSING one gets zeros
  // (UFFDIO_ZEROPAGE — shmem included, which allocates a zeroed page cache page; hugetlb:
  // a zero huge page by COPY). Never writes through the alias, so a page that is already
  // mapped is left exactly as it is: the kernel says EEXIST, and we only wake.
  absl::Status FillHole(uint64_t page, bool minor, bool retry_eagain);

  const GuestRegion& region() const { return *region_; }

 private:
  enum class Op { kCopy, kZero, kContinue };
  absl::Status Run(Op op, uint64_t first, uint32_t count, const uint8_t* src, bool wake,
                   bool retry_eagain);

  Userfaultfd* uffd_;
  const GuestRegion* region_;
  PlacerCounters* counters_;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_PLACER_H_
