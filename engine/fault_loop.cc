#include "engine/fault_loop.h"

#include <poll.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace faultline {

// The whole decision for one fault. Every case names the thread that ends the fault's wait.
FaultLoop::Decision FaultLoop::OnFault(const struct uffd_msg& msg, uint64_t now_ns) {
  uint32_t region;
  uint64_t page;
  if (!table_->Locate(msg.arg.pagefault.address, &region, &page)) return Decision::kNotOurs;
  RegionTable::Entry& e = (*table_)[region];
  const bool minor = msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR;
  const uint64_t key = table_->Key(region, page);
  const uint32_t tid = msg.arg.pagefault.feat.ptid;
  // Recorded before the state is read: a placement completing in between always finds it.
  stats_->FaultPending(key, tid, now_ns);
  PageState seen;
  if (e.state.MarkUrgent(page, &seen)) {
    // Absent, or asked for in a bulk batch (don't wait behind it: the first answer wins).
    // → the urgent receive thread's Lander places it and its placement wakes this vCPU.
    stats_->Classify(
        key, tid, seen == PageState::kAbsent ? FaultKind::kFetched : FaultKind::kFetchedOverBulk);
    requester_->RequestUrgent(region, page);
    return Decision::kRequested;
  }
  switch (seen) {
    case PageState::kUrgentRequested:
      counters_->duplicate_faults.fetch_add(1, std::memory_order_relaxed);
      stats_->Classify(key, tid, FaultKind::kJoinedUrgent);
      return Decision::kAlreadyRequested;  // → woken by the placement already under way
    case PageState::kPlacing:
    case PageState::kPlacingDiscarded:
    case PageState::kLanded:
      counters_->duplicate_faults.fetch_add(1, std::memory_order_relaxed);
      stats_->Classify(key, tid, FaultKind::kJoinedPlacing);
      return Decision::kBeingPlaced;  // → woken by that receive thread's placement or run wake
    case PageState::kPresent: {
      // Placed between the fault and now; a DONTWAKE placement may not have woken it yet.
      counters_->stale_faults.fetch_add(1, std::memory_order_relaxed);
      stats_->Classify(key, tid, FaultKind::kImmediate);
      if (opts_.adopted) {
        // After a restart the map may call present a page a lost REMOVE dropped: fill the
        // hole if there is one; a mapped page says EEXIST and is only woken.
        PlaceResult r = e.placer.FillHole(page, minor, Caller::kFaultLoop);
        if (r.outcome == PlaceOutcome::kRetryAfterEvents) return Decision::kRetry;
        if (!r.done()) (void)e.placer.Wake(page, 1);
      } else {
        (void)e.placer.Wake(page, 1);
      }
      stats_->Resolved(key);
      return Decision::kWoken;
    }
    case PageState::kDiscarded: {
      // The guest dropped the page (REMOVE). MISSING: its content is gone — zeros. MINOR
      // (shmem after MADV_DONTNEED, which only unmaps): the page cache still holds it — map it.
      PageState prev;
      if (!e.state.Claim(page, &prev, /*discarded_too=*/true)) return OnFault(msg, now_ns);
      stats_->Classify(key, tid, FaultKind::kImmediate);
      PlaceResult r = e.placer.FillHole(page, minor, Caller::kFaultLoop);
      if (r.outcome == PlaceOutcome::kRetryAfterEvents) {
        e.state.Release(page);
        return Decision::kRetry;  // another REMOVE is queued: read it, then retry
      }
      if (r.outcome == PlaceOutcome::kUnmapped) {
        e.state.Release(page);
        return Decision::kFilledHole;
      }
      if (r.outcome == PlaceOutcome::kFailed) {
        e.state.Release(page);
        if (error_.ok()) {
          error_ = absl::Status(r.error.code(),
                                absl::StrCat("filling discarded page ", page, " of region '",
                                             e.region->name(), "': ", r.error.message()));
        }
        return Decision::kFilledHole;
      }
      e.state.Complete(page);
      counters_->zero_pages.fetch_add(1, std::memory_order_relaxed);
      stats_->Resolved(table_->Key(region, page));
      return Decision::kFilledHole;
    }
    default: return Decision::kAlreadyRequested;
  }
}

void FaultLoop::OnRemove(uint64_t start, uint64_t end, bool unmap) {
  (unmap ? counters_->unmap_events : counters_->remove_events)
      .fetch_add(1, std::memory_order_relaxed);
  for (size_t i = 0; i < table_->size(); ++i) {
    RegionTable::Entry& e = (*table_)[i];
    const GuestRegion& r = *e.region;
    const uint64_t base = reinterpret_cast<uint64_t>(r.base());
    const uint64_t lo = std::max(start, base), hi = std::min(end, base + r.size());
    if (lo >= hi) continue;
    const uint64_t first = (lo - base) / r.page_size();
    const uint64_t last = (hi - base + r.page_size() - 1) / r.page_size();
    for (uint64_t p = first; p < last; ++p) e.state.Discard(p);
    counters_->discarded_pages.fetch_add(last - first, std::memory_order_relaxed);
  }
}

bool FaultLoop::ResolveLanded() {
  // Pages a dead engine left kLanded: complete in the page cache, maybe mapped. CONTINUE maps
  // them, or says EEXIST where the dead engine already had (and the guest may have written
  // them since): see "Restart" in engine.cc. Either way present, not fetched — except a page
  // whose COPY the dead engine never ran (its CONTINUE finds a hole): fetched again.
  std::vector<std::pair<uint32_t, uint64_t>> again;
  for (const auto& [region, page] : landed_) {
    RegionTable::Entry& e = (*table_)[region];
    PlaceResult r = e.placer.Continue(page, 1, /*wake=*/true, Caller::kFaultLoop);
    if (r.outcome == PlaceOutcome::kRetryAfterEvents) {
      again.emplace_back(region, page);
      continue;
    }
    if (r.outcome == PlaceOutcome::kUnmapped) {
      e.state.Discard(page);
      continue;
    }
    if (r.outcome == PlaceOutcome::kFailed) {
      // No page in the cache (-EFAULT): the dead engine marked it landed before a COPY that
      // never ran. Nothing is mapped, so fetching and placing it again is safe.
      e.state.Release(page);
      counters_->landed_refetched.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    e.state.Complete(page);
    stats_->Resolved(table_->Key(region, page));
  }
  landed_.swap(again);
  return landed_.empty();
}

absl::Status FaultLoop::Poll() {
  if (!landed_.empty()) ResolveLanded();
  struct uffd_msg msgs[64];
  absl::StatusOr<int> n = uffd_->Read(msgs, 64);
  if (!n.ok()) return n.status();
  const uint64_t now = FaultStats::NowNs();
  for (int i = 0; i < *n; ++i) {
    const struct uffd_msg& m = msgs[i];
    switch (m.event) {
      case UFFD_EVENT_PAGEFAULT:
        counters_->faults.fetch_add(1, std::memory_order_relaxed);
        if (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR) {
          counters_->minor_faults.fetch_add(1, std::memory_order_relaxed);
        }
        if (OnFault(m, now) == Decision::kRetry) deferred_.push_back(m);
        break;
      case UFFD_EVENT_REMOVE:
        OnRemove(m.arg.remove.start, m.arg.remove.end, /*unmap=*/false);
        break;
      case UFFD_EVENT_UNMAP: OnRemove(m.arg.remove.start, m.arg.remove.end, /*unmap=*/true); break;
      default: break;  // FORK/REMAP are not requested
    }
  }
  // Faults that met EAGAIN: the events just read may have cleared it.
  if (*n > 0 && !deferred_.empty()) {
    std::vector<struct uffd_msg> again;
    again.swap(deferred_);
    for (const auto& m : again) {
      if (OnFault(m, now) == Decision::kRetry) deferred_.push_back(m);
    }
  }
  return error_;
}

absl::Status FaultLoop::Run(StopSignal* stop, const std::function<void()>& on_tick) {
  uint64_t last_tick = FaultStats::NowNs();
  const uint64_t tick_ns = absl::ToInt64Nanoseconds(opts_.tick);
  while (!stop->stopped()) {
    if (!opts_.busy_poll) {
      struct pollfd p[2] = {{uffd_->fd(), POLLIN, 0}, {stop->fd(), POLLIN, 0}};
      const bool retrying = !deferred_.empty() || !landed_.empty();
      poll(p, 2, retrying ? 1 : static_cast<int>(std::max<uint64_t>(1, tick_ns / 1'000'000)));
      if (p[1].revents) {
        stop->Drain();
        last_tick = 0;  // poked: run the tick work now
      }
    }
    if (absl::Status s = Poll(); !s.ok()) return s;
    const uint64_t now = FaultStats::NowNs();
    if (now - last_tick >= tick_ns) {
      last_tick = now;
      on_tick();
    }
  }
  return stop->reason();
}

}  // namespace faultline
