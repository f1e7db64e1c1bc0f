#include "engine/testing/fake_page_source.h"

#include <algorithm>
#include <cstring>

namespace faultline {
namespace {

bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

}  // namespace

FakePageSource::FakePageSource(std::vector<uint8_t> mem, uint32_t page_size, uint32_t lanes)
    : mem_(std::move(mem)), page_size_(page_size), lanes_(lanes), bulk_q_(lanes) {
  regions_.push_back(RegionInfo{"ram", mem_.size(), page_size});
}

FakePageSource::~FakePageSource() { Stop(); }

SourceLimits FakePageSource::limits() const {
  SourceLimits l;
  l.max_request_pages = 256;
  l.max_request_bytes = 1u << 20;
  l.bulk_lanes = lanes_;
  return l;
}

void FakePageSource::StartThreads() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = false;
  }
  threads_.emplace_back([this] { UrgentLoop(); });
  for (uint32_t i = 0; i < lanes_; ++i) threads_.emplace_back([this, i] { BulkLoop(i); });
}

absl::Status FakePageSource::Start(PageSink* sink) {
  sink_ = sink;
  StartThreads();
  return absl::OkStatus();
}

absl::Status FakePageSource::RequestUrgent(uint32_t region, uint64_t page) {
  std::lock_guard<std::mutex> l(mu_);
  urgent_log_.push_back(page);
  if (broken_) return absl::UnavailableError("fake: connection broken");
  urgent_q_.push_back(page);
  cv_.notify_all();
  return absl::OkStatus();
}

absl::Status FakePageSource::RequestBulk(uint32_t lane, uint32_t region, uint64_t first,
                                         uint32_t count) {
  std::lock_guard<std::mutex> l(mu_);
  ++bulk_count_;
  ++lane_count_[lane];
  if (broken_) return absl::UnavailableError("fake: connection broken");
  if (lane >= lanes_) return absl::InvalidArgumentError("fake: no such lane");
  bulk_q_[lane].push_back({lane, first, count});
  cv_.notify_all();
  return absl::OkStatus();
}

absl::Status FakePageSource::Finish() {
  finished_.store(true);
  return absl::OkStatus();
}

void FakePageSource::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

absl::Status FakePageSource::Reconnect(absl::Time) {
  Stop();
  absl::Status r;
  {
    std::lock_guard<std::mutex> l(mu_);
    r = reconnect_result_;
    if (!r.ok()) return r;
    broken_ = false;
    urgent_q_.clear();
    for (auto& q : bulk_q_) q.clear();
  }
  reconnects_.fetch_add(1);
  StartThreads();
  return absl::OkStatus();
}

void FakePageSource::RejectOnce(uint64_t page) {
  std::lock_guard<std::mutex> l(mu_);
  reject_.insert(page);
}

void FakePageSource::HoldBulk(bool hold) {
  std::lock_guard<std::mutex> l(mu_);
  hold_bulk_ = hold;
  cv_.notify_all();
}

void FakePageSource::Break(SourceError::Kind kind, absl::Status why) {
  {
    std::lock_guard<std::mutex> l(mu_);
    broken_ = true;
    urgent_q_.clear();
    for (auto& q : bulk_q_) q.clear();
  }
  sink_->Failed(SourceError{kind, why});
}

void FakePageSource::SetReconnectResult(absl::Status s) {
  std::lock_guard<std::mutex> l(mu_);
  reconnect_result_ = s;
}

std::vector<uint64_t> FakePageSource::urgent_requests() {
  std::lock_guard<std::mutex> l(mu_);
  return urgent_log_;
}

int FakePageSource::bulk_requests() {
  std::lock_guard<std::mutex> l(mu_);
  return bulk_count_;
}

int FakePageSource::bulk_requests_on(uint32_t lane) {
  std::lock_guard<std::mutex> l(mu_);
  return lane_count_[lane];
}

void FakePageSource::Serve(const Req& r, Urgency u) {
  std::vector<uint8_t> zero(r.count, 0);
  uint32_t start = 0;
  PageRun run;
  run.region = 0;
  run.page_size = page_size_;
  run.urgency = u;
  run.lane = r.lane;
  auto flush = [&](uint32_t end) {
    if (end > start) {
      run.first = r.first + start;
      run.count = end - start;
      run.data = mem_.data() + run.first * page_size_;
      run.zero = zero.data() + start;
      sink_->Deliver(run);
    }
  };
  for (uint32_t i = 0; i < r.count; ++i) {
    const uint64_t page = r.first + i;
    bool reject;
    {
      std::lock_guard<std::mutex> l(mu_);
      reject = reject_.erase(page) > 0;
    }
    if (reject) {
      flush(i);
      start = i + 1;
      sink_->Rejected(0, page, u);
      continue;
    }
    zero[i] = AllZero(mem_.data() + page * page_size_, page_size_) ? 1 : 0;
  }
  flush(r.count);
  if (u == Urgency::kBulk) sink_->BulkDone(r.lane);
}

void FakePageSource::UrgentLoop() {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    cv_.wait(l, [&] { return stop_ || (!broken_ && !urgent_q_.empty()); });
    if (stop_) return;
    const uint64_t page = urgent_q_.front();
    urgent_q_.pop_front();
    l.unlock();
    Serve({0, page, 1}, Urgency::kUrgent);
    l.lock();
  }
}

void FakePageSource::BulkLoop(uint32_t lane) {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    cv_.wait(l, [&] { return stop_ || (!broken_ && !hold_bulk_ && !bulk_q_[lane].empty()); });
    if (stop_) return;
    const Req r = bulk_q_[lane].front();
    bulk_q_[lane].pop_front();
    l.unlock();
    Serve(r, Urgency::kBulk);
    l.lock();
  }
}

}  // namespace faultline
