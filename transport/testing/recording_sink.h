// RecordingSink: a PageSink that keeps what a transport delivers, for transport tests without
// an engine. Each delivered page is recorded (urgency, zero or data) and its bytes copied into
// a buffer per urgency (a page asked for on both connections arrives on both); rejected pages,
// BulkDone() calls and the failure are kept too. Thread-safe: receive threads call it at once.
#ifndef FAULTLINE_TRANSPORT_TESTING_RECORDING_SINK_H_
#define FAULTLINE_TRANSPORT_TESTING_RECORDING_SINK_H_

#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "transport/page_source.h"

namespace faultline {

class RecordingSink : public PageSink {
 public:
  struct Got {
    Urgency urgency;
    uint64_t page;
    bool zero;
  };
  // Room for region 0's first `pages` pages of `page_size` bytes.
  explicit RecordingSink(uint64_t pages, uint32_t page_size = 4096)
      : page_size_(page_size),
        mem_{std::vector<uint8_t>(pages * page_size), std::vector<uint8_t>(pages * page_size)} {}

  void Deliver(const PageRun& run) override {
    std::lock_guard<std::mutex> l(mu_);
    for (uint32_t i = 0; i < run.count; ++i) {
      const uint64_t page = run.first + i;
      got_.push_back({run.urgency, page, run.is_zero(i)});
      std::vector<uint8_t>& m = mem_[run.urgency == Urgency::kUrgent ? 0 : 1];
      if (!run.is_zero(i) && (page + 1) * page_size_ <= m.size()) {
        memcpy(m.data() + page * page_size_, run.data + size_t{i} * page_size_, page_size_);
      }
    }
    ++runs_;
    cv_.notify_all();
  }
  void Rejected(uint32_t, uint64_t page, Urgency) override {
    std::lock_guard<std::mutex> l(mu_);
    rejected_.push_back(page);
    cv_.notify_all();
  }
  void BulkDone(uint32_t lane) override {
    std::lock_guard<std::mutex> l(mu_);
    ++bulk_done_[lane];
    cv_.notify_all();
  }
  void Failed(const SourceError& why) override {
    std::lock_guard<std::mutex> l(mu_);
    failed_ = why;
    cv_.notify_all();
  }

  // Waits (up to 30 s) until `f()` holds, called under the lock.
  template <typename F>
  bool WaitUntil(F f) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, std::chrono::seconds(30), f);
  }
  std::vector<Got> got() {
    std::lock_guard<std::mutex> l(mu_);
    return got_;
  }
  size_t delivered() {
    std::lock_guard<std::mutex> l(mu_);
    return got_.size();
  }
  // The bytes of `page` as delivered on `u` (valid once delivered).
  const uint8_t* bytes(Urgency u, uint64_t page) const {
    return mem_[u == Urgency::kUrgent ? 0 : 1].data() + page * page_size_;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Got> got_;               // guarded by mu_
  std::vector<uint64_t> rejected_;     // guarded by mu_
  std::map<uint32_t, int> bulk_done_;  // guarded by mu_: per lane
  int runs_ = 0;                       // guarded by mu_
  std::optional<SourceError> failed_;  // guarded by mu_

 private:
  const uint32_t page_size_;
  std::vector<uint8_t> mem_[2];  // [0] urgent, [1] bulk
};

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_TESTING_RECORDING_SINK_H_
