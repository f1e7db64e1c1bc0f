// The receiving half of the engine: the transport's receive threads call these (PageSink).
// Land() claims a page and says where its bytes go; Arrived() places urgent pages at once;
// bulk pages are placed in runs (DONTWAKE) and woken once per run.
//
// Alias kinds (memfd): the bytes are read straight into the page cache through the alias
// mapping, so the order matters for a restart (engine.cc, "Restart"): Claim (kPlacing) →
// bytes complete and CRC-checked (zeros: memset here) → MarkLanded (kLanded) → CONTINUE →
// Complete (kPresent). A page is never CONTINUE'd before it is kLanded.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/engine.h"

namespace faultline {

uint8_t* Engine::Land(Channel ch, uint32_t region, uint64_t page, uint32_t index) {
  Landing& l = landing_[static_cast<int>(ch)];
  RegionCtx& rc = *regions_[region];
  const uint32_t ps = rc.region->page_size();
  l.StartFrameIfNew(region, page, index);
  const bool fits = rc.region->places_via_alias() || (size_t{index} + 1) * ps <= l.staging.size();
  PageState prev;
  if (index >= l.slots.size() || !fits || !rc.state.Claim(page, &prev)) {
    return l.scratch.data();  // already present, being placed by the other channel, or discarded
  }
  l.slots[index] = Landing::kClaimed;
  if (prev == PageState::kUrgentRequested) l.flush_after = index;  // a fault waits on it
  if (rc.region->places_via_alias()) return rc.region->alias() + page * ps;
  return l.staging.data() + size_t{index} * ps;
}

uint8_t* Engine::DirectBase(uint32_t region) {
  if (region >= regions_.size()) return nullptr;
  const GuestRegion* r = regions_[region]->region;
  return r->places_via_alias() ? r->alias() : nullptr;
}

void Engine::Arrived(Channel ch, uint32_t region, uint64_t page, uint32_t index,
                     Arrival what) {
  Landing& l = landing_[static_cast<int>(ch)];
  RegionCtx& rc = *regions_[region];
  if (what == Arrival::kZero) {
    l.StartFrameIfNew(region, page, index);
    PageState prev;
    if (index < l.slots.size() && rc.state.Claim(page, &prev)) {
      l.slots[index] = Landing::kReadyZero;
      if (prev == PageState::kUrgentRequested) l.flush_after = index;
      if (rc.region->places_via_alias()) {
        const uint32_t ps = rc.region->page_size();
        memset(rc.region->alias() + page * ps, 0, ps);
        rc.state.MarkLanded(page);
      }
    } else {
      counters_.duplicate_arrivals.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  } else if (index >= l.slots.size() || l.slots[index] != Landing::kClaimed) {
    counters_.duplicate_arrivals.fetch_add(1, std::memory_order_relaxed);
    return;
  } else if (what == Arrival::kCorrupt) {
    // Nothing from this landing is placed. The page goes back to absent; if a fault waits on
    // it, ask again now, otherwise the background pull fetches it again.
    l.slots[index] = Landing::kNone;
    rc.state.Release(page);
    counters_.corrupt_pages.fetch_add(1, std::memory_order_relaxed);
    PageState seen;
    if (stats_.IsPending(rc.key_base + page) && rc.state.MarkUrgent(page, &seen)) {
      SendUrgent(region, page);
    }
    return;
  } else {
    l.slots[index] = Landing::kReadyData;
    counters_.bytes_received.fetch_add(rc.region->page_size(), std::memory_order_relaxed);
    if (rc.region->places_via_alias()) rc.state.MarkLanded(page);  // CRC checked: complete
  }

  if (ch == Channel::kUrgent) {
    PlaceUrgent(l, index, what == Arrival::kZero);
    return;
  }
  // Bulk: place now what a waiting fault needs; the rest at the end of the frame.
  uint64_t want = flush_key_.load(std::memory_order_acquire);
  if (want != 0 && want - 1 == rc.key_base + page) {
    flush_key_.compare_exchange_strong(want, 0);
    l.flush_after = std::max<int64_t>(l.flush_after, index);
  }
  if (l.flush_after >= static_cast<int64_t>(index)) {
    if (l.flush_after == static_cast<int64_t>(index)) {
      FlushBulk(l, index + 1);
      l.flush_after = -1;
    }
  }
}

absl::Status Engine::PlaceRun(RegionCtx& rc, uint8_t kind, uint64_t first, uint32_t count,
                              const uint8_t* src, bool wake) {
  // Alias kinds: zeros were written at landing (Arrived), so zero pages are CONTINUE'd too.
  if (kind == Landing::kReadyZero && !rc.region->places_via_alias()) {
    return rc.placer.PlaceZero(first, count, wake);
  }
  return rc.placer.PlaceData(first, count, src, wake);
}

void Engine::PlaceUrgent(Landing& l, uint32_t index, bool zero) {
  RegionCtx& rc = *regions_[l.region];
  const uint64_t page = l.first + index;
  absl::Status s = PlaceRun(rc, zero ? Landing::kReadyZero : Landing::kReadyData, page, 1,
                            l.staging.data(), /*wake=*/true);
  l.slots[index] = Landing::kNone;
  if (!s.ok()) {
    HandlePlaceError(rc, page, 1, s);
    return;
  }
  rc.state.Complete(page);
  (zero ? counters_.zero_pages : counters_.urgent_pages).fetch_add(1, std::memory_order_relaxed);
  stats_.Resolved(rc.key_base + page);
  PageDone();
}

void Engine::FlushBulk(Landing& l, uint32_t upto) {
  RegionCtx& rc = *regions_[l.region];
  const uint32_t ps = rc.region->page_size();
  const uint32_t from = l.flushed;
  if (upto <= from) return;
  uint32_t i = from;
  while (i < upto) {
    const uint8_t kind = l.slots[i];
    if (kind != Landing::kReadyData && kind != Landing::kReadyZero) {
      ++i;
      continue;
    }
    uint32_t j = i;
    while (j < upto && l.slots[j] == kind) ++j;
    const uint64_t first = l.first + i;
    const uint32_t n = j - i;
    absl::Status s =
        PlaceRun(rc, kind, first, n, l.staging.data() + size_t{i} * ps, /*wake=*/false);
    if (!s.ok()) {
      HandlePlaceError(rc, first, n, s);
    } else {
      for (uint64_t p = first; p < first + n; ++p) rc.state.Complete(p);
      (kind == Landing::kReadyData ? counters_.bulk_pages : counters_.zero_pages)
          .fetch_add(n, std::memory_order_relaxed);
    }
    for (uint32_t k = i; k < j; ++k) l.slots[k] = Landing::kNone;
    i = j;
  }
  l.flushed = upto;
  // One wake for the whole run: any thread that faulted on these pages meanwhile.
  (void)rc.placer.Wake(l.first + from, upto - from);
  stats_.ResolvedRange(rc.key_base + l.first + from, upto - from);
  PageDone();
}

void Engine::FrameDone(Channel ch, uint32_t region, uint64_t first, uint32_t count) {
  if (ch == Channel::kUrgent) return;
  Landing& l = landing_[1];
  if (l.region == region && l.first == first) FlushBulk(l, count);
  {
    std::lock_guard<std::mutex> g(pull_mu_);
    if (bulk_outstanding_ > 0) --bulk_outstanding_;
  }
  PullMore();
}

void Engine::ReleaseUnplaced(Landing& l) {
  if (regions_.empty()) return;
  RegionCtx& rc = *regions_[l.region];
  for (uint32_t i = 0; i < l.slots.size(); ++i) {
    if (l.slots[i] != Landing::kNone) {
      rc.state.Release(l.first + i);
      l.slots[i] = Landing::kNone;
    }
  }
}

void Engine::FrameAborted(Channel ch) { ReleaseUnplaced(landing_[static_cast<int>(ch)]); }

void Engine::Failed(Channel ch, const absl::Status& why) {
  ReleaseUnplaced(landing_[static_cast<int>(ch)]);
  if (Reconnectable(why)) {
    RequestReconnect(why);
  } else {
    Fail(why);
  }
}

void Engine::HandlePlaceError(RegionCtx& rc, uint64_t first, uint32_t count,
                              const absl::Status& s) {
  if (s.code() == absl::StatusCode::kNotFound) {
    // The range was unmapped under us (UFFD_EVENT_UNMAP): those pages are gone, not missing.
    for (uint64_t p = first; p < first + count; ++p) rc.state.Discard(p);
    PageDone();
    return;
  }
  for (uint64_t p = first; p < first + count; ++p) rc.state.Release(p);
  Fail(absl::Status(s.code(), absl::StrCat("placing pages [", first, ", ", first + count,
                                           ") of region '", rc.region->name(), "': ",
                                           s.message())));
}

}  // namespace faultline
