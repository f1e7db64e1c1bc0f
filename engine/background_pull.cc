#include "engine/background_pull.h"

#include <algorithm>

namespace faultline {

void BackgroundPull::Start(PageSource* source) {
  source_ = source;
  limits_ = source->limits();
  {
    std::lock_guard<std::mutex> l(mu_);
    outstanding_.assign(std::max<uint32_t>(1, limits_.bulk_lanes), Lane());
    stop_ = false;
    if (enabled_ && began_ns_ == 0) began_ns_ = FaultStats::NowNs();
  }
  thread_ = std::thread([this] { Loop(); });
}

void BackgroundPull::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void BackgroundPull::Enable() {
  {
    std::lock_guard<std::mutex> l(mu_);
    enabled_ = true;
    if (began_ns_ == 0) began_ns_ = FaultStats::NowNs();
  }
  cv_.notify_all();
}

void BackgroundPull::Release() {
  {
    std::lock_guard<std::mutex> l(mu_);
    released_ = true;
  }
  cv_.notify_all();
}

void BackgroundPull::Pause() {
  std::lock_guard<std::mutex> l(mu_);
  paused_ = true;
}

void BackgroundPull::Resume() {
  {
    std::lock_guard<std::mutex> l(mu_);
    paused_ = false;
    idle_ = false;
    ++generation_;
    std::fill(outstanding_.begin(), outstanding_.end(), Lane());
  }
  cv_.notify_all();
}

void BackgroundPull::BulkDone(uint32_t lane) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (lane < outstanding_.size() && !outstanding_[lane].sizes.empty()) {
      outstanding_[lane].bytes -= outstanding_[lane].sizes.front();
      outstanding_[lane].sizes.pop_front();
    }
  }
  cv_.notify_all();
}

void BackgroundPull::SetRate(uint64_t bytes_per_s) {
  {
    std::lock_guard<std::mutex> l(mu_);
    rate_ = bytes_per_s;
  }
  cv_.notify_all();
}

void BackgroundPull::Kick() {
  {
    std::lock_guard<std::mutex> l(mu_);
    idle_ = false;
  }
  cv_.notify_all();
}

bool BackgroundPull::idle() const {
  std::lock_guard<std::mutex> l(mu_);
  return idle_;
}

uint32_t BackgroundPull::BatchPages(uint32_t region) const {
  const uint32_t ps = (*table_)[region].region->page_size();
  uint64_t n = std::max<uint64_t>(1, opts_.batch_bytes / ps);
  n = std::min<uint64_t>(n, std::max<uint64_t>(1, limits_.max_request_bytes / ps));
  n = std::min<uint64_t>(n, std::max<uint32_t>(1, limits_.max_request_pages));
  return static_cast<uint32_t>(n);
}

bool BackgroundPull::ClaimNext(uint32_t* region, uint64_t* first, uint32_t* count) {
  if (uint64_t hint = hint_.exchange(0, std::memory_order_relaxed); hint != 0) {
    cursor_region_ = RegionTable::RegionOfKey(hint - 1);
    cursor_page_ = RegionTable::PageOfKey(hint - 1);
  }
  // From the cursor to the end of its region, then the following regions, then wrap around.
  const uint32_t start = cursor_region_;
  const size_t nregions = table_->size();
  for (size_t step = 0; step <= nregions; ++step) {
    const uint32_t ri = static_cast<uint32_t>((start + step) % nregions);
    const uint64_t from = step == 0 ? cursor_page_ : 0;
    uint64_t f = 0;
    const uint32_t n = (*table_)[ri].state.ClaimBulkRun(from, BatchPages(ri), &f);
    if (n > 0) {
      cursor_region_ = ri;
      cursor_page_ = f + n;
      *region = ri;
      *first = f;
      *count = n;
      return true;
    }
  }
  return false;
}

size_t BackgroundPull::ActiveLanes(uint64_t* wait_ns) const {
  const uint64_t now = FaultStats::NowNs();
  if (opts_.hold_at_start_ns != 0 && !released_ && began_ns_ != 0 &&
      now < began_ns_ + opts_.hold_at_start_ns) {
    *wait_ns = began_ns_ + opts_.hold_at_start_ns - now;
    return 0;
  }
  if (outstanding_.size() <= 1) return outstanding_.size();
  uint64_t solo_until = 0;
  if (opts_.solo_at_start_ns != 0 && began_ns_ != 0)
    solo_until = began_ns_ + opts_.solo_at_start_ns;
  const uint64_t last = last_fault_ns_.load(std::memory_order_relaxed);
  if (opts_.solo_after_fault_ns != 0 && last != 0) {
    solo_until = std::max(solo_until, last + opts_.solo_after_fault_ns);
  }
  if (now >= solo_until) return outstanding_.size();
  *wait_ns = solo_until - now;
  return 1;
}

void BackgroundPull::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    // The lane with the fewest bytes in flight among those active now, if it has room. While
    // only the first is active and full, its own completions (BulkDone) wake this loop again.
    // The active lanes are counted once per look, so the lane checked for room is the lane
    // then asked (a fault in between must not turn it into a full one).
    const uint64_t window_bytes = uint64_t{opts_.window} * opts_.batch_bytes;
    size_t active = 0;
    uint64_t wait_ns = 0;
    auto least = [&] {
      return std::min_element(outstanding_.begin(),
                              outstanding_.begin() + static_cast<ptrdiff_t>(active),
                              [](const Lane& a, const Lane& b) { return a.bytes < b.bytes; });
    };
    auto has_room = [&] {
      const Lane& ln = *least();
      return ln.bytes < window_bytes && ln.sizes.size() < kMaxRequestsPerLane;
    };
    while (true) {
      active = ActiveLanes(&wait_ns);
      if (stop_ || (enabled_ && !paused_ && !idle_ && active > 0 && has_room())) break;
      if (active < outstanding_.size()) {
        // Lanes held back (the start, a fault): look again once that has passed, whether or
        // not the first lane's answers come meanwhile.
        cv_.wait_for(l, std::chrono::nanoseconds(wait_ns));
      } else {
        cv_.wait(l);
      }
    }
    if (stop_) return;
    const uint32_t lane = static_cast<uint32_t>(least() - outstanding_.begin());
    uint32_t region = 0, count = 0;
    uint64_t first = 0;
    if (!ClaimNext(&region, &first, &count)) {
      idle_ = true;  // every page is requested, placed or discarded: wait for a Kick()
      continue;
    }
    const uint64_t req_bytes = uint64_t{count} * (*table_)[region].region->page_size();
    outstanding_[lane].sizes.push_back(req_bytes);
    outstanding_[lane].bytes += req_bytes;
    const uint64_t gen = generation_;
    if (rate_ != 0) {
      // A token bucket without a bucket: each request books its bytes' share of time.
      const uint64_t now = FaultStats::NowNs();
      next_request_ns_ =
          std::max(next_request_ns_, now) +
          static_cast<uint64_t>(static_cast<double>(req_bytes) * 1e9 / static_cast<double>(rate_));
      if (next_request_ns_ > now) {
        cv_.wait_for(l, std::chrono::nanoseconds(next_request_ns_ - now),
                     [&] { return stop_ || rate_ == 0; });
      }
    }
    l.unlock();
    counters_->bulk_requests.fetch_add(1, std::memory_order_relaxed);
    absl::Status s = source_->RequestBulk(lane, region, first, count);
    l.lock();
    if (!s.ok()) {
      // The connection is gone (its receive thread reports why, and the engine reconnects or
      // fails). Nothing of this batch will come: its pages go back to absent.
      for (uint64_t p = first; p < first + count; ++p) (*table_)[region].state.Unrequest(p);
      if (gen == generation_) {
        // Ours is the newest entry of the lane (only this thread adds).
        if (!outstanding_[lane].sizes.empty()) {
          outstanding_[lane].bytes -= outstanding_[lane].sizes.back();
          outstanding_[lane].sizes.pop_back();
        }
        // Wait for the reconnection (Resume) rather than spin on a dead connection; try
        // again after a while in case no reconnection comes (the write failed on its own).
        cv_.wait_for(l, std::chrono::seconds(1), [&] { return stop_ || generation_ != gen; });
      }
    }
  }
}

}  // namespace faultline
