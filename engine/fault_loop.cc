// The fault loop: reads userfaultfd events and turns each fault into (at most) one urgent
// request. Runs on the thread that called Engine::Run().
#include <poll.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "engine/engine.h"

namespace faultline {

int Engine::RegionOf(uint64_t addr) const {
  for (size_t i = 0; i < regions_.size(); ++i) {
    const GuestRegion& r = *regions_[i]->region;
    auto base = reinterpret_cast<uint64_t>(r.base());
    if (addr >= base && addr - base < r.size()) return static_cast<int>(i);
  }
  return -1;
}

void Engine::SendUrgent(uint32_t region, uint64_t page) {
  counters_.urgent_requests.fetch_add(1, std::memory_order_relaxed);
  // Move the background pull next to this fault: neighbours are likely next.
  pull_hint_.store(regions_[region]->key_base + page + 1, std::memory_order_relaxed);
  if (absl::Status s = source_->RequestUrgent(region, page); !s.ok()) {
    FailSecondary(absl::Status(s.code(), absl::StrCat("urgent request: ", s.message())));
  }
}

bool Engine::HandleFault(const struct uffd_msg& msg, uint64_t now_ns) {
  const uint64_t addr = msg.arg.pagefault.address;
  const int ri = RegionOf(addr);
  if (ri < 0) return true;  // not ours (cannot happen: only our ranges are registered)
  RegionCtx& rc = *regions_[ri];
  const uint64_t page = (addr - reinterpret_cast<uint64_t>(rc.region->base())) /
                        rc.region->page_size();
  const uint64_t key = rc.key_base + page;

  // Record the fault before looking at the page's state, so a placement that completes in
  // between always finds it (and a lookup that finds the page present resolves it here).
  stats_.FaultPending(key, msg.arg.pagefault.feat.ptid, now_ns);

  PageState seen;
  if (rc.state.MarkUrgent(page, &seen)) {
    SendUrgent(ri, page);
    return true;
  }
  switch (seen) {
    case PageState::kUrgentRequested:
      counters_.duplicate_faults.fetch_add(1, std::memory_order_relaxed);
      break;
    case PageState::kPlacing:
    case PageState::kPlacingDiscarded:
    case PageState::kLanded:
      // Being received or placed, maybe inside a bulk frame: ask the bulk receiver to place
      // what it has up to this page now rather than at the end of the frame.
      counters_.duplicate_faults.fetch_add(1, std::memory_order_relaxed);
      flush_key_.store(key + 1, std::memory_order_release);
      break;
    case PageState::kPresent:
      // Placed between the fault and now; the placement's wake may have missed this thread
      // if it placed with DONTWAKE and has not woken yet — waking twice is harmless.
      counters_.stale_faults.fetch_add(1, std::memory_order_relaxed);
      if (adopted_) {
        // After a restart the map may say present for a page a lost REMOVE dropped (see
        // "Restart" in engine.cc): fill the hole if there is one; EEXIST (mapped) just wakes.
        const bool minor = msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR;
        absl::Status s = rc.placer.FillHole(page, minor, /*retry_eagain=*/false);
        if (s.code() == absl::StatusCode::kUnavailable) return false;  // read the REMOVE first
        if (!s.ok()) (void)rc.placer.Wake(page, 1);
      } else {
        (void)rc.placer.Wake(page, 1);
      }
      stats_.Resolved(key);
      break;
    case PageState::kDiscarded: {
      // The guest dropped this page (REMOVE). A MISSING fault means its content is gone:
      // zeros. A MINOR fault (shmem after MADV_DONTNEED, which only unmaps) means the page
      // cache still holds it: map it as it is.
      PageState prev;
      if (!rc.state.Claim(page, &prev, /*discarded_too=*/true)) return HandleFault(msg, now_ns);
      const bool minor = msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR;
      absl::Status s =
          minor ? rc.placer.PlaceData(page, 1, nullptr, /*wake=*/true, /*retry_eagain=*/false)
                : rc.placer.PlaceZero(page, 1, /*wake=*/true, /*retry_eagain=*/false);
      if (s.code() == absl::StatusCode::kUnavailable) {
        rc.state.Release(page);
        return false;  // another REMOVE is queued: read it, then retry this fault
      }
      if (!s.ok()) {
        HandlePlaceError(rc, page, 1, s);
        return true;
      }
      rc.state.Complete(page);
      counters_.zero_pages.fetch_add(1, std::memory_order_relaxed);
      stats_.Resolved(key);
      break;
    }
    default:
      break;
  }
  return true;
}

void Engine::HandleRemove(uint64_t start, uint64_t end, bool unmap) {
  (unmap ? counters_.unmap_events : counters_.remove_events)
      .fetch_add(1, std::memory_order_relaxed);
  for (auto& rc : regions_) {
    const GuestRegion& r = *rc->region;
    const uint64_t base = reinterpret_cast<uint64_t>(r.base());
    const uint64_t lo = std::max(start, base), hi = std::min(end, base + r.size());
    if (lo >= hi) continue;
    const uint64_t first = (lo - base) / r.page_size();
    const uint64_t last = (hi - base + r.page_size() - 1) / r.page_size();
    for (uint64_t p = first; p < last; ++p) rc->state.Discard(p);
    counters_.discarded_pages.fetch_add(last - first, std::memory_order_relaxed);
  }
  PageDone();
}

bool Engine::ResolveLanded() {
  // Pages a dead engine left kLanded: complete in the page cache, maybe mapped. CONTINUE maps
  // them, or says EEXIST when the dead engine already had (and the guest may have written
  // them since): see "Restart" in engine.cc. Either way they are present; none is fetched.
  std::vector<std::pair<uint32_t, uint64_t>> again;
  for (const auto& [ri, page] : landed_) {
    RegionCtx& rc = *regions_[ri];
    absl::Status s = rc.placer.PlaceData(page, 1, nullptr, /*wake=*/true, /*retry_eagain=*/false);
    if (s.code() == absl::StatusCode::kUnavailable) {
      again.emplace_back(ri, page);  // a REMOVE/UNMAP is queued: read it, then try again
      continue;
    }
    if (!s.ok()) {
      HandlePlaceError(rc, page, 1, s);
      continue;
    }
    rc.state.Complete(page);
    stats_.Resolved(rc.key_base + page);
  }
  landed_.swap(again);
  PageDone();
  return landed_.empty();
}

absl::Status Engine::FaultLoop() {
  struct uffd_msg msgs[64];
  std::vector<struct uffd_msg> deferred;
  uint64_t last_tick = FaultStats::NowNs();
  const uint64_t tick_ns = absl::ToInt64Nanoseconds(opts_.tick);
  while (true) {
    if (failed_.load()) {
      std::lock_guard<std::mutex> l(fail_mu_);
      return failure_;
    }
    if (complete_.load()) return absl::OkStatus();
    if (cancelled_.load()) return absl::CancelledError("migration cancelled");
    if (need_reconnect_.exchange(false)) StartReconnect();
    if (reconnected_.exchange(false)) FinishReconnect();
    if (const uint64_t at = secondary_at_ns_.load(); at != 0 &&
        FaultStats::NowNs() - at > 300'000'000ull) {
      std::lock_guard<std::mutex> l(fail_mu_);
      return secondary_failure_;
    }

    if (!landed_.empty()) ResolveLanded();

    if (!opts_.busy_poll) {
      struct pollfd p[2] = {{uffd_.fd(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
      int timeout = deferred.empty() && landed_.empty() ? static_cast<int>(tick_ns / 1'000'000) : 1;
      poll(p, 2, timeout);
      if (p[1].revents) {
        uint64_t v;
        (void)!read(wake_fd_.get(), &v, sizeof(v));
        last_tick = 0;  // woken on purpose (e.g. StartBackgroundPull): run the tick work now
      }
    }
    absl::StatusOr<int> n = uffd_.Read(msgs, 64);
    if (!n.ok()) return n.status();
    const uint64_t now = FaultStats::NowNs();
    for (int i = 0; i < *n; ++i) {
      const struct uffd_msg& m = msgs[i];
      switch (m.event) {
        case UFFD_EVENT_PAGEFAULT:
          counters_.faults.fetch_add(1, std::memory_order_relaxed);
          if (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR) {
            counters_.minor_faults.fetch_add(1, std::memory_order_relaxed);
          }
          if (!HandleFault(m, now)) deferred.push_back(m);
          break;
        case UFFD_EVENT_REMOVE:
          HandleRemove(m.arg.remove.start, m.arg.remove.end, false);
          break;
        case UFFD_EVENT_UNMAP:
          HandleRemove(m.arg.remove.start, m.arg.remove.end, true);
          break;
        default:
          break;  // FORK/REMAP are not requested
      }
    }
    // Faults that met EAGAIN: the events just read may have cleared it.
    if (*n > 0 && !deferred.empty()) {
      std::vector<struct uffd_msg> again;
      again.swap(deferred);
      for (const auto& m : again) {
        if (!HandleFault(m, now)) deferred.push_back(m);
      }
    }
    if (now - last_tick >= tick_ns) {
      last_tick = now;
      if (pull_start_at_ns_ != 0 && now >= pull_start_at_ns_) {
        pull_start_at_ns_ = 0;
        pull_enabled_.store(true);
      }
      PullMore();  // picks up pages released after a failed landing
      PageDone();
    }
  }
}

}  // namespace faultline
