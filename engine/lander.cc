#include "engine/lander.h"

#include <errno.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace faultline {

absl::Status Lander::Deliver(const PageRun& run) {
  RegionTable::Entry& e = (*table_)[run.region];
  const bool urgent = run.urgency == Urgency::kUrgent;
  // Claim: absent / requested → placing. Pages already present, being placed by another
  // receive thread, or discarded by the guest are not ours to place.
  thread_local std::vector<uint8_t> claimed;
  claimed.assign(run.count, 0);
  uint32_t n_claimed = 0;
  for (uint32_t i = 0; i < run.count; ++i) {
    PageState prev;
    if (e.state.Claim(run.first + i, &prev)) {
      claimed[i] = 1;
      ++n_claimed;
    } else {
      counters_->duplicate_arrivals.fetch_add(1, std::memory_order_relaxed);
    }
  }
  absl::Status status;
  // Place each stretch of claimed pages; an urgent page wakes its vCPU with the placement.
  for (uint32_t i = 0; i < run.count && n_claimed > 0;) {
    if (!claimed[i]) {
      ++i;
      continue;
    }
    uint32_t j = i;
    while (j < run.count && claimed[j]) ++j;
    absl::Status s = PlaceStretch(e, run, i, j, /*wake=*/urgent);
    if (!s.ok() && status.ok()) status = s;
    i = j;
  }
  if (!urgent && n_claimed > 0) {
    // One wake for the run: every thread that faulted on one of its pages meanwhile.
    (void)e.placer.Wake(run.first, run.count);
  }
  stats_->ResolvedRange(table_->Key(run.region, run.first), run.count);
  return status;
}

absl::Status Lander::PlaceStretch(RegionTable::Entry& e, const PageRun& run, uint32_t i, uint32_t j,
                                  bool wake) {
  const uint64_t first = run.first + i;
  const uint32_t n = j - i;
  const uint32_t ps = run.page_size;
  PlaceResult r;
  std::atomic<bool>& no_copy = no_copy_[run.region];
  const bool alias = e.region->places_via_alias();
  bool via_cache = alias && no_copy.load(std::memory_order_relaxed);  // decided once per stretch
  if (alias && !via_cache) {
    // memfd: UFFDIO_COPY (ZEROPAGE for zero pages) allocates each page in the page cache,
    // copies and maps it in one step — cheaper than pwritev + CONTINUE (bench/RESULTS.md), and
    // without the inode lock a shmem write holds for the whole write, behind which a fault's
    // page waited milliseconds while a bulk lane's 256 KiB pwritev ran (its thread preempted).
    // kLanded first, for a restart (engine.cc): a dead engine's kLanded page is CONTINUE'd,
    // which says EEXIST where our COPY mapped it (the guest may have written it since: kept)
    // and fails on the hole where the COPY never ran (fetched again).
    for (uint64_t p = first; p < first + n; ++p) e.state.MarkLanded(p);
    r = CopyOrZero(e, run, i, j, wake);
    if (r.outcome == PlaceOutcome::kFailed &&
        r.error.code() == absl::StatusCode::kInvalidArgument) {
      // EINVAL: the VMM registered the range without MISSING (no COPY there); nothing was
      // placed. Through the page cache from now on.
      no_copy.store(true, std::memory_order_relaxed);
      via_cache = true;
      for (uint64_t p = first; p < first + n; ++p) e.state.Unland(p);
    } else {
      // EEXIST: the page cache holds a page we did not put there (the engine punched every
      // page out at its start, so the VMM wrote it since, through a mapping we were not
      // given). The source's bytes go in through the cache, that page alone (the others are
      // mapped now: writing over them could undo a guest's write).
      for (uint64_t p : r.present) {
        if (!r.done()) break;
        if (!e.state.Unland(p)) continue;  // discarded meanwhile: not ours
        const uint32_t k = static_cast<uint32_t>(p - run.first);
        if (absl::Status s = WritePageCache(e, run, k, k + 1); !s.ok()) {
          e.state.Release(p);
          r.outcome = PlaceOutcome::kFailed;
          r.error = s;
          break;
        }
        e.state.MarkLanded(p);
        PlaceResult c = e.placer.Continue(p, 1, wake, Caller::kOther);
        if (!c.done()) r = std::move(c);
      }
    }
  }
  if (via_cache) {
    if (absl::Status s = WritePageCache(e, run, i, j); !s.ok()) {
      for (uint64_t p = first; p < first + n; ++p) e.state.Release(p);
      return s;
    }
    for (uint64_t p = first; p < first + n; ++p) e.state.MarkLanded(p);
    r = e.placer.Continue(first, n, wake, Caller::kOther);
  } else if (!alias) {
    r = CopyOrZero(e, run, i, j, wake);
  }
  switch (r.outcome) {
    case PlaceOutcome::kDone: break;
    case PlaceOutcome::kUnmapped:
      // The VMM unmapped the range (UFFD_EVENT_UNMAP): those pages are gone, not missing.
      for (uint64_t p = first; p < first + n; ++p) e.state.Discard(p);
      return absl::OkStatus();
    case PlaceOutcome::kRetryAfterEvents:  // never for Caller::kOther
    case PlaceOutcome::kFailed:
      for (uint64_t p = first; p < first + n; ++p) e.state.Release(p);
      return absl::Status(r.error.code(),
                          absl::StrCat("placing pages [", first, ", ", first + n, ") of region '",
                                       e.region->name(), "': ", r.error.message()));
  }
  uint32_t zeros = 0;
  for (uint32_t k = i; k < j; ++k) zeros += run.is_zero(k) ? 1 : 0;
  for (uint64_t p = first; p < first + n; ++p) e.state.Complete(p);
  counters_->zero_pages.fetch_add(zeros, std::memory_order_relaxed);
  (run.urgency == Urgency::kUrgent ? counters_->urgent_pages : counters_->bulk_pages)
      .fetch_add(n - zeros, std::memory_order_relaxed);
  counters_->bytes_received.fetch_add(uint64_t{n - zeros} * ps, std::memory_order_relaxed);
  (run.urgency == Urgency::kUrgent ? counters_->urgent_bytes : counters_->bulk_bytes)
      .fetch_add(uint64_t{n - zeros} * ps, std::memory_order_relaxed);
  return absl::OkStatus();
}

PlaceResult Lander::CopyOrZero(RegionTable::Entry& e, const PageRun& run, uint32_t i, uint32_t j,
                               bool wake) {
  // Sub-stretches of data pages (COPY from the run's bytes) and of zero pages (ZEROPAGE).
  PlaceResult r;
  for (uint32_t a = i; a < j && r.done();) {
    const bool zero = run.is_zero(a);
    uint32_t b = a;
    while (b < j && run.is_zero(b) == zero) ++b;
    PlaceResult sub =
        zero ? e.placer.Zero(run.first + a, b - a, wake, Caller::kOther)
             : e.placer.Copy(run.first + a, b - a, run.data + size_t{a} * run.page_size, wake,
                             Caller::kOther);
    sub.present.insert(sub.present.begin(), r.present.begin(), r.present.end());
    r = std::move(sub);
    a = b;
  }
  return r;
}

absl::Status Lander::WritePageCache(RegionTable::Entry& e, const PageRun& run, uint32_t i,
                                    uint32_t j) {
  const GuestRegion& r = *e.region;
  const uint32_t ps = run.page_size;
  const uint8_t* zeros = ZeroBytes(ps);
  std::atomic<bool>& no_pwrite = no_pwrite_[run.region];
  if (!no_pwrite.load(std::memory_order_relaxed) && r.fd() >= 0) {
    // One pwritev per stretch: data pages from the run's buffer, zero pages from a zero page,
    // adjacent pieces merged. IOV_MAX bounds one call.
    thread_local std::vector<struct iovec> iov;
    iov.clear();
    for (uint32_t k = i; k < j; ++k) {
      const uint8_t* src = run.is_zero(k) ? zeros : run.data + size_t{k} * ps;
      if (!iov.empty() && !run.is_zero(k) &&
          static_cast<const uint8_t*>(iov.back().iov_base) + iov.back().iov_len == src) {
        iov.back().iov_len += ps;
      } else {
        iov.push_back({const_cast<uint8_t*>(src), ps});
      }
    }
    off_t off = static_cast<off_t>(r.fd_offset() + (run.first + i) * uint64_t{ps});
    size_t v = 0;
    bool refused = false;
    while (v < iov.size()) {
      const int cnt = static_cast<int>(std::min<size_t>(iov.size() - v, IOV_MAX));
      ssize_t w = pwritev(r.fd(), &iov[v], cnt, off);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        if (errno == EINVAL || errno == EBADF || errno == ESPIPE || errno == ENODEV ||
            errno == EOPNOTSUPP) {
          refused = true;  // e.g. guest_memfd, or an fd opened read-only: use the alias
          break;
        }
        return ErrnoStatus(absl::StrCat("pwritev into region '", r.name(), "'"));
      }
      off += w;
      // A short write: skip what was written, go on with the rest.
      while (w > 0) {
        if (static_cast<size_t>(w) >= iov[v].iov_len) {
          w -= static_cast<ssize_t>(iov[v].iov_len);
          ++v;
        } else {
          iov[v].iov_base = static_cast<uint8_t*>(iov[v].iov_base) + w;
          iov[v].iov_len -= static_cast<size_t>(w);
          w = 0;
        }
      }
    }
    if (!refused) return absl::OkStatus();
    no_pwrite.store(true, std::memory_order_relaxed);
  }
  // Through the alias mapping: page faults allocate and zero each page, then the copy.
  for (uint32_t k = i; k < j; ++k) {
    uint8_t* dst = r.alias() + (run.first + k) * uint64_t{ps};
    if (run.is_zero(k)) {
      memset(dst, 0, ps);
    } else {
      memcpy(dst, run.data + size_t{k} * ps, ps);
    }
  }
  return absl::OkStatus();
}

}  // namespace faultline
