#include "engine/placer.h"

#include <sched.h>
#include <sys/mman.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace faultline {
namespace {

// A zero-filled source for hugetlb zero pages (read-only anonymous memory reads as zeros).
const uint8_t* ZeroSource(size_t len) {
  static const uint8_t* zeros = [] {
    void* p = mmap(nullptr, 1u << 30, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return static_cast<const uint8_t*>(p == MAP_FAILED ? nullptr : p);
  }();
  return len <= (1u << 30) ? zeros : nullptr;
}

}  // namespace

absl::Status Placer::Run(Op op, uint64_t first, uint32_t count, const uint8_t* src, bool wake,
                         bool retry_eagain) {
  const size_t ps = region_->page_size();
  const size_t len = size_t{count} * ps;
  uint8_t* dst = region_->page(first);
  size_t off = 0;
  absl::Time eagain_deadline = absl::InfiniteFuture();
  bool skipped = false;
  while (off < len) {
    size_t done = 0;
    absl::Status s;
    counters_->ioctls.fetch_add(1, std::memory_order_relaxed);
    switch (op) {
      case Op::kCopy: s = uffd_->Copy(dst + off, src + off, len - off, wake, &done); break;
      case Op::kZero: s = uffd_->ZeroPage(dst + off, len - off, wake, &done); break;
      case Op::kContinue: s = uffd_->Continue(dst + off, len - off, wake, &done); break;
    }
    off += done - done % ps;
    if (s.ok()) {
      off = len;
      break;
    }
    switch (s.code()) {
      case absl::StatusCode::kAlreadyExists:
        // Somebody mapped this page already: it is present. Skip it, place the rest.
        counters_->eexist.fetch_add(1, std::memory_order_relaxed);
        off += ps;
        skipped = true;
        break;
      case absl::StatusCode::kUnavailable:
        counters_->eagain.fetch_add(1, std::memory_order_relaxed);
        if (!retry_eagain) return s;
        if (eagain_deadline == absl::InfiniteFuture()) {
          eagain_deadline = absl::Now() + absl::Seconds(30);
        } else if (absl::Now() > eagain_deadline) {
          return absl::DeadlineExceededError(absl::StrCat(
              s.message(), " for 30 s: userfaultfd events are not being read"));
        }
        sched_yield();
        break;
      default:
        return s;  // NotFound (unmapped) and real errors
    }
  }
  // A waiter on a page we skipped (EEXIST) is woken by whoever mapped it; wake anyway, it is
  // cheap and a lost wake-up would hang a vCPU.
  if (wake && skipped) return Wake(first, count);
  return absl::OkStatus();
}

absl::Status Placer::PlaceData(uint64_t first, uint32_t count, const uint8_t* src, bool wake,
                               bool retry_eagain) {
  if (region_->places_via_alias()) {
    return Run(Op::kContinue, first, count, nullptr, wake, retry_eagain);
  }
  return Run(Op::kCopy, first, count, src, wake, retry_eagain);
}

absl::Status Placer::PlaceZero(uint64_t first, uint32_t count, bool wake, bool retry_eagain) {
  const size_t ps = region_->page_size();
  if (region_->places_via_alias()) {
    memset(region_->alias() + first * ps, 0, size_t{count} * ps);
    return Run(Op::kContinue, first, count, nullptr, wake, retry_eagain);
  }
  if (region_->kind() == RegionKind::kHugetlb) {
    for (uint32_t i = 0; i < count; ++i) {
      const uint8_t* z = ZeroSource(ps);
      if (!z) return absl::InternalError("no zero source for this page size");
      absl::Status s = Run(Op::kCopy, first + i, 1, z, wake, retry_eagain);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  return Run(Op::kZero, first, count, nullptr, wake, retry_eagain);
}

absl::Status Placer::FillHole(uint64_t page, bool minor, bool retry_eagain) {
  if (minor) return Run(Op::kContinue, page, 1, nullptr, /*wake=*/true, retry_eagain);
  if (region_->kind() == RegionKind::kHugetlb) {
    const uint8_t* z = ZeroSource(region_->page_size());
    if (!z) return absl::InternalError("no zero source for this page size");
    return Run(Op::kCopy, page, 1, z, /*wake=*/true, retry_eagain);
  }
  return Run(Op::kZero, page, 1, nullptr, /*wake=*/true, retry_eagain);
}

absl::Status Placer::Wake(uint64_t first, uint32_t count) {
  counters_->ioctls.fetch_add(1, std::memory_order_relaxed);
  return uffd_->Wake(region_->page(first), size_t{count} * region_->page_size());
}

}  // namespace faultline
