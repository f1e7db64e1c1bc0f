// The background pull: keeps `bulk_window` batch requests in flight for pages nobody has
// asked for yet, scanning from the last urgent fault onwards (spatial locality), wrapping
// around the regions until every page has been requested once.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/engine.h"

namespace faultline {

uint32_t Engine::BatchPages(uint32_t region) const {
  const uint32_t ps = regions_[region]->region->page_size();
  uint64_t n = std::max<uint64_t>(1, opts_.bulk_batch_bytes / ps);
  n = std::min<uint64_t>(n, landing_[1].staging.size() / ps);
  n = std::min<uint64_t>(n, kMaxPagesPayload / ps);
  return static_cast<uint32_t>(std::clamp<uint64_t>(n, 1, kMaxPagesPerFrame));
}

void Engine::PullMore() {
  if (failed_.load() || secondary_at_ns_.load() != 0 || source_ == nullptr ||
      !pull_enabled_.load() || reconnecting_.load()) {
    return;
  }
  std::lock_guard<std::mutex> g(pull_mu_);
  while (bulk_outstanding_ < opts_.bulk_window) {
    if (uint64_t hint = pull_hint_.exchange(0, std::memory_order_relaxed); hint != 0) {
      pull_region_ = static_cast<uint32_t>((hint - 1) >> 40);
      pull_page_ = (hint - 1) & ((uint64_t{1} << 40) - 1);
    }
    // Scan from the cursor to the end of its region, the following regions, then wrap.
    uint32_t n = 0;
    uint64_t first = 0;
    const uint32_t start_region = pull_region_;
    for (size_t step = 0; step <= regions_.size() && n == 0; ++step) {
      const uint32_t ri = static_cast<uint32_t>((start_region + step) % regions_.size());
      const uint64_t from = step == 0 ? pull_page_ : 0;
      n = regions_[ri]->state.ClaimBulkRun(from, BatchPages(ri), &first);
      if (n > 0) pull_region_ = ri;
    }
    if (n == 0) {
      pull_idle_ = true;  // every page is requested, placed or discarded
      return;
    }
    pull_idle_ = false;
    counters_.bulk_requests.fetch_add(1, std::memory_order_relaxed);
    if (absl::Status s = source_->RequestBulk(pull_region_, first, n); !s.ok()) {
      for (uint64_t p = first; p < first + n; ++p) {
        PageState seen;
        (void)seen;
        regions_[pull_region_]->state.Claim(p, &seen);
        regions_[pull_region_]->state.Release(p);
      }
      FailSecondary(absl::Status(s.code(), absl::StrCat("bulk request: ", s.message())));
      return;
    }
    ++bulk_outstanding_;
    pull_page_ = first + n;
  }
}

}  // namespace faultline
