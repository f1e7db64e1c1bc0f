// RdmaPageSource: the destination's RDMA transport (--transport=rdma). Pages move with
// one-sided RDMA READs from the source's registered memory; the source's CPU only takes part
// in the set-up and in checking bulk pages.
//
//  - control: one TCP (or TLS) connection, the usual authenticated HELLO/WELCOME (token,
//    region table), then RDMA_CONNECT/RDMA_ACCEPT: queue pair numbers and, per region, the
//    remote address, length and rkey (read-only). Later VERIFY/VERIFIED for bulk pages, DONE.
//  - urgent QP: fault requests only, one READ at a time, never behind bulk (its own QP, CQ and
//    thread), into a registered staging page that is then delivered to the engine. Completions
//    busy-polled while the read is outstanding (up to urgent_spin, then the completion
//    channel); idle: the thread sleeps.
//  - bulk QP: background batches, `bulk_depth` READs in flight into a registered staging ring,
//    each with a VERIFY sent at the same time on the control connection. A batch is delivered
//    when its READ has completed and the source's CRC32C list has arrived: a page whose CRC
//    differs is Rejected() (the engine fetches it again), the rest delivered as runs straight
//    from the ring slot, zero pages marked. Completions are event-driven (completion channel).
//
// A failed work completion puts the QP in the error state: the channel fails (a kNetwork
// SourceError), and the engine reconnects (Reconnect(): new QPs, new control connection) and
// asks again — or, without a reconnect deadline, reports the error. Nothing from a failed read
// is ever delivered.
#ifndef FAULTLINE_TRANSPORT_RDMA_PAGE_SOURCE_H_
#define FAULTLINE_TRANSPORT_RDMA_PAGE_SOURCE_H_

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "transport/page_source.h"
#include "transport/rdma_verbs.h"
#include "transport/tcp_page_source.h"

namespace faultline {

struct RdmaSourceOptions {
  TcpSourceOptions control;  // the page server's address, token, TLS
  RdmaDeviceOptions device;
  // Urgent completions: spin this long on the CQ, then wait on the completion channel.
  absl::Duration urgent_spin = absl::Milliseconds(2);
  uint32_t bulk_depth = 4;              // bulk READs in flight
  uint32_t bulk_slot_bytes = 4u << 20;  // staging ring slot: the largest bulk request
  // Tests: the first N urgent READs use a wrong rkey (a failed work completion each).
  int test_fail_urgent_reads = 0;
  // Tests: flip a byte of the first page of every Nth bulk batch after its READ (CRC mismatch).
  int test_corrupt_every_nth_batch = 0;
};

struct RdmaTransportStats {
  std::atomic<uint64_t> urgent_reads{0}, bulk_reads{0}, bulk_bytes{0};
  std::atomic<uint64_t> crc_mismatches{0}, failed_completions{0};
};

class RdmaPageSource : public PageSource {
 public:
  static absl::StatusOr<std::unique_ptr<RdmaPageSource>> Connect(const RdmaSourceOptions& opts);
  ~RdmaPageSource() override;

  const std::vector<RegionInfo>& regions() const override { return regions_; }
  SourceLimits limits() const override;
  absl::Status Start(PageSink* sink) override;
  absl::Status RequestUrgent(uint32_t region, uint64_t page) override;
  absl::Status RequestBulk(uint32_t lane, uint32_t region, uint64_t first, uint32_t count) override;
  absl::Status Finish() override;
  void Stop() override;
  absl::Status Reconnect(absl::Time deadline) override;

  const RdmaTransportStats& stats() const { return stats_; }
  const std::string& device_name() const { return dev_->name(); }
  int reconnects() const { return reconnects_.load(); }

 private:
  struct Inflight {
    PageRange range;
    uint32_t slot = 0;
    bool done = false;
    bool corrupt_test = false;
  };
  RdmaPageSource() = default;
  // Control connection + queue pairs + the source's region keys (Connect and Reconnect).
  absl::Status Setup(const TcpSourceOptions& control);
  void StartThreads();
  void UrgentLoop();
  void BulkLoop();
  void ControlLoop();
  // Waits for the urgent READ `wr_id`; false when stopping. *wc gets its completion.
  bool WaitUrgent(ibv_wc* wc);
  absl::Status BulkStep(std::deque<Inflight>& inflight, std::vector<uint32_t>& free_slots,
                        bool* progressed);
  void DeliverBulk(const Inflight& f, const std::vector<uint32_t>& crcs);
  void Wake();

  RdmaSourceOptions opts_;
  std::vector<RegionInfo> regions_;
  PageSink* sink_ = nullptr;
  std::unique_ptr<RdmaDevice> dev_;
  // Local memory registrations: the staging page and ring.
  uint8_t* urgent_staging_ = nullptr;
  size_t urgent_staging_len_ = 0;
  MrPtr urgent_staging_mr_;
  uint8_t* ring_ = nullptr;
  size_t ring_len_ = 0;
  MrPtr ring_mr_;

  // Per connection (replaced by Reconnect).
  Stream control_;
  std::mutex control_write_mu_;
  std::unique_ptr<RcQp> qps_[2];
  std::vector<RdmaRegionKey> keys_;

  std::thread urgent_thread_, bulk_thread_, control_thread_;
  std::atomic<bool> stopping_{false};
  UniqueFd wake_fd_;  // eventfd: the bulk thread's wake-up (requests, VERIFIED, stop)

  std::mutex mu_;  // guards everything below
  std::condition_variable urgent_cv_;
  std::deque<std::pair<uint32_t, uint64_t>> urgent_queue_;
  std::deque<PageRange> bulk_queue_;
  std::deque<std::pair<PageRange, std::vector<uint32_t>>> verified_;
  absl::Status control_error_;

  std::atomic<int> fail_urgent_left_{0};
  std::atomic<uint64_t> batches_{0};
  std::atomic<int> reconnects_{0};
  std::mutex reconnect_mu_;  // one Reconnect() at a time, and none while Start() runs
  RdmaTransportStats stats_;
};

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_RDMA_PAGE_SOURCE_H_
