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
  bool placed = false;
  if (e.region->places_via_alias() && run.urgency == Urgency::kUrgent && n == 1 &&
      e.state.MarkLanded(first)) {
    // A fault's page on shmem goes in with UFFDIO_COPY (the kernel allocates, copies and maps
    // it in one step), not pwritev + CONTINUE: a shmem write holds the inode's lock for the
    // whole write, so one page behind a bulk lane's 256 KiB pwritev — whose thread may be
    // preempted holding it — waited milliseconds.
    // kLanded first, for a restart (engine.cc): a dead engine's kLanded page is CONTINUE'd,
    // which says EEXIST if our COPY mapped it (the guest may have written it since: kept) and
    // fails on the hole if the COPY never ran (fetched again).
    // EEXIST from the COPY: the page cache holds a page we did not put there (the engine
    // punched every page out at the start, so the VMM wrote it since, through a mapping we
    // were not given): back to kPlacing, and the source's bytes go in through the cache.
    // One page only: a multi-page COPY that met EEXIST part-way has mapped the rest already,
    // and writing through the cache over a mapped page could undo a guest's write.
    r = CopyOrZero(e, run, i, j, wake);
    placed = !r.done() || r.already_present == 0;
    if (!placed) {
      r = PlaceResult();
      if (!e.state.Unland(first)) return absl::OkStatus();  // discarded meanwhile: not ours
    }
  }
  if (placed) {
    // r says how the COPY went.
  } else if (e.region->places_via_alias()) {
    if (absl::Status s = WritePageCache(e, run, i, j); !s.ok()) {
      for (uint64_t p = first; p < first + n; ++p) e.state.Release(p);
      return s;
    }
    for (uint64_t p = first; p < first + n; ++p) e.state.MarkLanded(p);
    r = e.placer.Continue(first, n, wake, Caller::kOther);
  } else {
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
    sub.already_present += r.already_present;
    r = sub;
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
