#include "engine/page_state.h"

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
  }
  return "?";
}

PageStateMap::PageStateMap(uint64_t pages)
    : pages_(pages), state_(new std::atomic<uint8_t>[pages]), remaining_(pages) {
  for (uint64_t i = 0; i < pages; ++i) state_[i].store(0, std::memory_order_relaxed);
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
  if (s == PageState::kPlacingDiscarded) {
    return Cas(p, s, PageState::kPresent);
  }
  return false;  // discarded while being placed
}

void PageStateMap::Release(uint64_t p) {
  PageState s = PageState::kPlacing;
  if (Cas(p, s, PageState::kAbsent)) return;
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
