// RdmaPageSource's urgent channel: one READ at a time into the staging page, completions
// busy-polled while it is outstanding, then the completion channel.
#include <poll.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/thread_slice.h"
#include "transport/rdma_page_source.h"

namespace faultline {
namespace {

constexpr uint64_t kUrgentWrId = 1ull << 62;

}  // namespace

bool RdmaPageSource::WaitUrgent(ibv_wc* wc) {
  RcQp& qp = *qps_[0];
  // Busy-poll while the fault's read is outstanding...
  const absl::Time spin_until = absl::Now() + opts_.urgent_spin;
  int n = 0;
  uint32_t spins = 0;
  while ((n = ibv_poll_cq(qp.cq(), 1, wc)) == 0) {
    if ((++spins & 1023) == 0 && (stopping_.load() || absl::Now() > spin_until)) break;
  }
  // ...then sleep on the completion channel.
  while (n == 0 && !stopping_.load()) {
    if (!qp.Arm().ok()) return false;
    n = ibv_poll_cq(qp.cq(), 1, wc);  // a completion that came before the arming
    if (n != 0) break;
    struct pollfd p = {qp.channel()->fd, POLLIN, 0};
    poll(&p, 1, 20);
    qp.AckEvents();
    n = ibv_poll_cq(qp.cq(), 1, wc);
  }
  return n > 0;
}

void RdmaPageSource::UrgentLoop() {
  (void)SetThreadSlice(opts_.control.urgent_slice);  // as TCP's urgent receive thread
  opts_.control.bulk_threads.ApplyToFaultPathThread();
  while (true) {
    std::pair<uint32_t, uint64_t> req;
    {
      std::unique_lock<std::mutex> l(mu_);
      urgent_cv_.wait(l, [&] { return stopping_.load() || !urgent_queue_.empty(); });
      if (stopping_.load()) return;
      req = urgent_queue_.front();
      urgent_queue_.pop_front();
    }
    const auto [region, page] = req;
    const uint32_t ps = regions_[region].page_size;
    uint32_t rkey = keys_[region].rkey;
    if (fail_urgent_left_.load() > 0 && fail_urgent_left_.fetch_sub(1) > 0) rkey ^= 0x5a;
    stats_.urgent_reads.fetch_add(1, std::memory_order_relaxed);
    absl::Status posted = qps_[0]->PostRead(kUrgentWrId, urgent_staging_, urgent_staging_mr_->lkey,
                                            keys_[region].addr + page * ps, rkey, ps);
    ibv_wc wc{};
    if (posted.ok() && !WaitUrgent(&wc)) {
      // Stopping with the read outstanding: flush it so the NIC writes nothing more into the
      // staging page. Nothing was delivered: the page stays requested.
      qps_[0]->ToError();
      const absl::Time until = absl::Now() + absl::Seconds(2);
      while (ibv_poll_cq(qps_[0]->cq(), 1, &wc) == 0 && absl::Now() < until) usleep(100);
      return;
    }
    if (!posted.ok() || wc.status != IBV_WC_SUCCESS) {
      // Nothing from a failed read is delivered: the page stays requested, and the engine
      // asks again after reconnecting.
      stats_.failed_completions.fetch_add(1, std::memory_order_relaxed);
      if (stopping_.load()) return;
      sink_->Failed(SourceError{
          SourceError::Kind::kNetwork,
          absl::UnavailableError(absl::StrCat(
              "urgent channel: RDMA READ of page ", page, " of region '", regions_[region].name,
              "' failed: ", posted.ok() ? WcStatusText(wc) : std::string(posted.message())))});
      return;
    }
    PageRun run;
    run.region = region;
    run.first = page;
    run.count = 1;
    run.page_size = ps;
    run.data = urgent_staging_;
    run.urgency = Urgency::kUrgent;
    sink_->Deliver(run);
  }
}

}  // namespace faultline
