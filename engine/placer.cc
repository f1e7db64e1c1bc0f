#include "engine/placer.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sched.h>
#include <sys/mman.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"

namespace faultline {

const uint8_t* ZeroBytes(size_t len) {
  // Read-only anonymous memory reads as zeros and costs nothing until touched (then one
  // shared zero page per 4 KiB).
  static const uint8_t* zeros = [] {
    void* p =
        mmap(nullptr, 1u << 30, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return static_cast<const uint8_t*>(p == MAP_FAILED ? nullptr : p);
  }();
  return len <= (1u << 30) ? zeros : nullptr;
}

PlaceResult Placer::Run(Op op, uint64_t first, uint32_t count, const uint8_t* src, bool wake,
                        Caller caller) {
  PlaceResult r;
  const size_t ps = region_->page_size();
  const size_t len = size_t{count} * ps;
  uint8_t* dst = region_->page(first);
  size_t off = 0;
  absl::Time eagain_deadline = absl::InfiniteFuture();
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
    if (s.ok()) break;
    switch (s.code()) {
      case absl::StatusCode::kAlreadyExists:  // EEXIST: present; skip the page, place the rest
        counters_->eexist.fetch_add(1, std::memory_order_relaxed);
        r.present.push_back(first + off / ps);
        off += ps;
        break;
      case absl::StatusCode::kUnavailable:  // EAGAIN: a REMOVE/UNMAP event is unread
        counters_->eagain.fetch_add(1, std::memory_order_relaxed);
        if (caller == Caller::kFaultLoop) {
          r.outcome = PlaceOutcome::kRetryAfterEvents;
          return r;
        }
        if (eagain_deadline == absl::InfiniteFuture()) {
          eagain_deadline = absl::Now() + absl::Seconds(30);
        } else if (absl::Now() > eagain_deadline) {
          r.outcome = PlaceOutcome::kFailed;
          r.error = absl::DeadlineExceededError(
              absl::StrCat(s.message(), " for 30 s: userfaultfd events are not being read"));
          return r;
        }
        sched_yield();
        break;
      case absl::StatusCode::kNotFound:  // ENOENT: unmapped under us
        r.outcome = PlaceOutcome::kUnmapped;
        return r;
      default:
        r.outcome = PlaceOutcome::kFailed;
        r.error = s;
        return r;
    }
  }
  // A waiter on a page skipped for EEXIST is woken by whoever mapped it; wake anyway.
  if (wake && !r.present.empty()) (void)Wake(first, count);
  return r;
}

PlaceResult Placer::Copy(uint64_t first, uint32_t count, const uint8_t* src, bool wake, Caller c) {
  return Run(Op::kCopy, first, count, src, wake, c);
}

PlaceResult Placer::Zero(uint64_t first, uint32_t count, bool wake, Caller c) {
  if (region_->kind() != RegionKind::kHugetlb) {
    return Run(Op::kZero, first, count, nullptr, wake, c);
  }
  PlaceResult sum;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* z = ZeroBytes(region_->page_size());
    if (z == nullptr) {
      sum.outcome = PlaceOutcome::kFailed;
      sum.error = absl::InternalError("no zero source for this page size");
      return sum;
    }
    PlaceResult r = Run(Op::kCopy, first + i, 1, z, wake, c);
    sum.present.insert(sum.present.end(), r.present.begin(), r.present.end());
    if (!r.done()) {
      r.present = std::move(sum.present);
      return r;
    }
  }
  return sum;
}

PlaceResult Placer::Continue(uint64_t first, uint32_t count, bool wake, Caller c) {
  return Run(Op::kContinue, first, count, nullptr, wake, c);
}

absl::Status Placer::Drop(uint64_t first, uint64_t count) {
  if (region_->fd() < 0) {
    return absl::UnimplementedError(
        absl::StrCat("region '", region_->name(),
                     "' is anonymous memory: its pages cannot be dropped from "
                     "outside the VMM (warm-up needs memfd, hugetlbfs or guest_memfd RAM)"));
  }
  const uint64_t ps = region_->page_size();
  if (fallocate(region_->fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                static_cast<off_t>(region_->fd_offset() + first * ps),
                static_cast<off_t>(count * ps)) != 0) {
    return ErrnoStatus(absl::StrCat("punch pages [", first, ", +", count, ") out of region '",
                                    region_->name(), "'"));
  }
  return absl::OkStatus();
}

PlaceResult Placer::FillHole(uint64_t page, bool minor, Caller c) {
  if (minor) return Run(Op::kContinue, page, 1, nullptr, /*wake=*/true, c);
  return Zero(page, 1, /*wake=*/true, c);
}

absl::Status Placer::Wake(uint64_t first, uint32_t count) {
  counters_->ioctls.fetch_add(1, std::memory_order_relaxed);
  return uffd_->Wake(region_->page(first), size_t{count} * region_->page_size());
}

}  // namespace faultline
