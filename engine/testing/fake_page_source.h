// FakePageSource: an in-process PageSource for unit tests of the engine — the engine's side of
// the transport interface exercised without sockets (tests/ runs the real transports). It
// serves the bytes of memory the test gives it, on threads of its own as a transport does (one
// for urgent requests, one per bulk lane), and can misbehave on demand: reject chosen pages
// once (as a CRC mismatch would), hold bulk answers back, fail a connection with a chosen
// SourceError kind, and succeed or fail a Reconnect().
// Thread-safety: every method, from any thread.
#ifndef FAULTLINE_ENGINE_TESTING_FAKE_PAGE_SOURCE_H_
#define FAULTLINE_ENGINE_TESTING_FAKE_PAGE_SOURCE_H_

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "transport/page_source.h"

namespace faultline {

class FakePageSource : public PageSource {
 public:
  // One region of `mem.size()` bytes in `page_size` pages; `lanes` bulk lanes.
  FakePageSource(std::vector<uint8_t> mem, uint32_t page_size, uint32_t lanes = 1);
  ~FakePageSource() override;

  const std::vector<RegionInfo>& regions() const override { return regions_; }
  SourceLimits limits() const override;
  absl::Status Start(PageSink* sink) override;
  absl::Status RequestUrgent(uint32_t region, uint64_t page) override;
  absl::Status RequestBulk(uint32_t lane, uint32_t region, uint64_t first, uint32_t count) override;
  absl::Status Finish() override;
  void Stop() override;
  absl::Status Reconnect(absl::Time deadline) override;

  // Misbehaviour.
  void RejectOnce(uint64_t page);  // the next delivery of `page` is Rejected() instead
  void HoldBulk(bool hold);        // bulk requests wait (queued) while held
  // Breaks the "connection": Failed(kind) once, then every request fails until Reconnect().
  void Break(SourceError::Kind kind, absl::Status why);
  void SetReconnectResult(absl::Status s);  // what Reconnect() returns (OK by default)

  // Observations.
  std::vector<uint64_t> urgent_requests();
  int bulk_requests();
  int bulk_requests_on(uint32_t lane);
  int reconnects() const { return reconnects_.load(); }
  bool finished() const { return finished_.load(); }
  const uint8_t* mem() const { return mem_.data(); }

 private:
  struct Req {
    uint32_t lane;
    uint64_t first;
    uint32_t count;
  };
  void UrgentLoop();
  void BulkLoop(uint32_t lane);
  void Serve(const Req& r, Urgency u);
  void StartThreads();

  std::vector<uint8_t> mem_;
  uint32_t page_size_;
  uint32_t lanes_;
  std::vector<RegionInfo> regions_;
  PageSink* sink_ = nullptr;
  std::vector<std::thread> threads_;
  std::atomic<int> reconnects_{0};
  std::atomic<bool> finished_{false};

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;                    // guarded by mu_
  bool broken_ = false;                  // guarded by mu_
  bool hold_bulk_ = false;               // guarded by mu_
  absl::Status reconnect_result_;        // guarded by mu_
  std::set<uint64_t> reject_;            // guarded by mu_
  std::deque<uint64_t> urgent_q_;        // guarded by mu_
  std::vector<std::deque<Req>> bulk_q_;  // guarded by mu_
  std::vector<uint64_t> urgent_log_;     // guarded by mu_
  int bulk_count_ = 0;                   // guarded by mu_
  std::map<uint32_t, int> lane_count_;   // guarded by mu_
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_TESTING_FAKE_PAGE_SOURCE_H_
