#include "engine/page_state.h"

#include "absl/strings/str_cat.h"

namespace faultline {

const char* PageStateName(PageState s) {
  switch (s) {
    case PageState::kAbsent: return "absent";
    case PageState::kBulkRequested: return "bulk-requested";
    case PageState::kUrgentRequested: return "urgent-requested";
    case PageState::kPlacing: return "placing";
    case PageState::kPlacingDiscarded: return "placing-discarded";
    case PageState::kPresent: return "present";
    case PageState::kDiscarded: return "discarded";
    case PageState::kLanded: return "landed";
  }
  return "?";
}

PageStateMap::PageStateMap(uint64_t pages)
    : pages_(pages),
      owned_(new std::atomic<uint8_t>[pages]),
      state_(owned_.get()),
      remaining_(pages) {
  for (uint64_t i = 0; i < pages; ++i) state_[i].store(0, std::memory_order_relaxed);
}

PageStateMap::PageStateMap(uint64_t pages, std::atomic<uint8_t>* storage)
    : pages_(pages), state_(storage), remaining_(0) {
  if (storage == nullptr) {
    owned_.reset(new std::atomic<uint8_t>[pages]);
    state_ = owned_.get();
    for (uint64_t i = 0; i < pages; ++i) state_[i].store(0, std::memory_order_relaxed);
    remaining_.store(pages);
    return;
  }
  uint64_t n = 0;
  for (uint64_t i = 0; i < pages; ++i) {
    const PageState s = Get(i);
    if (s != PageState::kPresent && s != PageState::kDiscarded &&
        s != PageState::kPlacingDiscarded) {
      ++n;
    }
  }
  remaining_.store(n);
}

absl::StatusOr<AdoptedStates> PageStateMap::AdoptAfterRestart(std::vector<uint64_t>* landed) {
  AdoptedStates a;
  uint64_t remaining = 0;
  for (uint64_t p = 0; p < pages_; ++p) {
    const uint8_t raw = state_[p].load(std::memory_order_acquire);
    PageState to;
    switch (static_cast<PageState>(raw)) {
      case PageState::kAbsent: to = PageState::kAbsent; break;
      case PageState::kBulkRequested:
      case PageState::kUrgentRequested:
        // The request died with the dead engine's connections; nothing was claimed.
        to = PageState::kAbsent;
        ++a.requeued;
        break;
      case PageState::kPlacing:
        // Claimed, bytes maybe partial: fetched again. Why that is safe per kind: engine.cc.
        to = PageState::kAbsent;
        ++a.refetch;
        break;
      case PageState::kLanded:
        to = PageState::kLanded;
        landed->push_back(p);
        ++a.landed;
        break;
      case PageState::kPresent:
        to = PageState::kPresent;
        ++a.present;
        break;
      case PageState::kDiscarded:
      case PageState::kPlacingDiscarded:
        // A discarded page's zero fill (or minor mapping) may or may not have happened; either
        // way the page is the guest's to fault on again, and a fault on it is resolved anew.
        to = PageState::kDiscarded;
        ++a.discarded;
        break;
      default:
        return absl::DataLossError(absl::StrCat("page ", p, " has state byte ", raw,
                                                ", which is no page state: the state file is "
                                                "corrupt"));
    }
    state_[p].store(static_cast<uint8_t>(to), std::memory_order_release);
    if (to != PageState::kPresent && to != PageState::kDiscarded) ++remaining;
  }
  remaining_.store(remaining, std::memory_order_release);
  return a;
}

bool PageStateMap::MarkUrgent(uint64_t p, PageState* seen) {
  PageState s = Get(p);
  while (s == PageState::kAbsent || s == PageState::kBulkRequested) {
    if (Cas(p, s, PageState::kUrgentRequested)) {
      *seen = s;
      return true;
    }
  }
  *seen = s;
  return false;
}

bool PageStateMap::Claim(uint64_t p, PageState* prev, bool discarded_too) {
  PageState s = Get(p);
  while (true) {
    PageState to;
    if (s == PageState::kAbsent || s == PageState::kBulkRequested ||
        s == PageState::kUrgentRequested) {
      to = PageState::kPlacing;
    } else if (discarded_too && s == PageState::kDiscarded) {
      to = PageState::kPlacingDiscarded;
    } else {
      *prev = s;
      return false;
    }
    PageState expected = s;
    if (Cas(p, expected, to)) {
      *prev = s;
      return true;
    }
    s = expected;
  }
}

bool PageStateMap::Complete(uint64_t p) {
  PageState s = PageState::kPlacing;
  if (Cas(p, s, PageState::kPresent)) {
    CountDone();
    return true;
  }
  if (s == PageState::kLanded && Cas(p, s, PageState::kPresent)) {
    CountDone();
    return true;
  }
  if (s == PageState::kPlacingDiscarded) {
    return Cas(p, s, PageState::kPresent);
  }
  return false;  // discarded while being placed
}

bool PageStateMap::Unrequest(uint64_t p) {
  PageState s = PageState::kBulkRequested;
  return Cas(p, s, PageState::kAbsent);
}

bool PageStateMap::Evict(uint64_t p) {
  PageState s = PageState::kPresent;
  if (!Cas(p, s, PageState::kAbsent)) return false;
  remaining_.fetch_add(1, std::memory_order_acq_rel);
  return true;
}

bool PageStateMap::MarkLanded(uint64_t p) {
  PageState s = PageState::kPlacing;
  return Cas(p, s, PageState::kLanded);
}

bool PageStateMap::Unland(uint64_t p) {
  PageState s = PageState::kLanded;
  return Cas(p, s, PageState::kPlacing);
}

void PageStateMap::Release(uint64_t p) {
  PageState s = PageState::kPlacing;
  if (Cas(p, s, PageState::kAbsent)) return;
  if (s == PageState::kLanded && Cas(p, s, PageState::kAbsent)) return;
  if (s == PageState::kPlacingDiscarded) Cas(p, s, PageState::kDiscarded);
}

void PageStateMap::Discard(uint64_t p) {
  PageState s = Get(p);
  while (true) {
    PageState expected = s;
    if (Cas(p, expected, PageState::kDiscarded)) {
      if (s != PageState::kPresent && s != PageState::kDiscarded &&
          s != PageState::kPlacingDiscarded) {
        CountDone();
      }
      return;
    }
    s = expected;
  }
}

uint32_t PageStateMap::ClaimBulkRun(uint64_t from, uint32_t max, uint64_t* first) {
  uint64_t p = from;
  while (p < pages_) {
    while (p < pages_ && Get(p) != PageState::kAbsent) ++p;
    if (p >= pages_) return 0;
    uint32_t n = 0;
    uint64_t start = p;
    while (p < pages_ && n < max) {
      PageState s = PageState::kAbsent;
      if (!Cas(p, s, PageState::kBulkRequested)) break;
      ++n;
      ++p;
    }
    if (n > 0) {
      *first = start;
      return n;
    }
  }
  return 0;
}

}  // namespace faultline
