// RdmaPageSource's bulk channel (READs into the staging ring, each with a VERIFY) and its
// control connection's reader (the VERIFIED checksums the bulk channel delivers by).
#include <poll.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/crc32c.h"
#include "transport/rdma_page_source.h"
#include "transport/socket.h"

namespace faultline {
namespace {

absl::Span<const uint8_t> AsSpan(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace

void RdmaPageSource::ControlLoop() {
  absl::Status s;
  while (s.ok()) {
    FrameHeader h;
    std::string payload;
    s = ReadSmallFrame(control_, &h, &payload);
    if (!s.ok()) break;
    if (h.type == FrameType::kVerified) {
      PageRange r;
      absl::StatusOr<std::vector<uint32_t>> crcs = DecodeVerified(AsSpan(payload), &r);
      if (!crcs.ok()) {
        s = crcs.status();
        break;
      }
      std::lock_guard<std::mutex> l(mu_);
      verified_.emplace_back(r, std::move(*crcs));
    } else if (h.type == FrameType::kError) {
      absl::StatusOr<ErrorFrame> e = DecodeError(AsSpan(payload));
      s = e.ok() ? PeerError(*e) : e.status();
    } else {
      s = absl::InvalidArgumentError(
          absl::StrCat("unexpected ", FrameTypeName(h.type), " frame from the source"));
    }
    Wake();
  }
  if (stopping_.load()) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    control_error_ = absl::Status(s.code(), absl::StrCat("control connection: ", s.message()));
  }
  Wake();
}

void RdmaPageSource::BulkLoop() {
  opts_.control.bulk_threads.ApplyToBulkThread();  // as TCP's bulk receive threads
  std::deque<Inflight> inflight;
  std::vector<uint32_t> free_slots;
  for (uint32_t i = opts_.bulk_depth; i > 0; --i) free_slots.push_back(i - 1);
  RcQp& qp = *qps_[1];
  absl::Status status;
  while (!stopping_.load()) {
    bool progressed = false;
    status = BulkStep(inflight, free_slots, &progressed);
    if (!status.ok()) break;
    if (progressed) continue;
    // Nothing to do until a completion, a request, or a VERIFIED: wait for an event.
    if (absl::Status s = qp.Arm(); !s.ok()) {
      status = s;
      break;
    }
    status = BulkStep(inflight, free_slots, &progressed);  // what came before the arming
    if (!status.ok()) break;
    if (progressed) continue;
    struct pollfd p[2] = {{wake_fd_.get(), POLLIN, 0}, {qp.channel()->fd, POLLIN, 0}};
    poll(p, 2, 100);
    uint64_t v;
    (void)!read(wake_fd_.get(), &v, sizeof(v));
    qp.AckEvents();
  }
  // READs still in flight write only into the ring; no page of theirs was handed to the sink
  // (the engine resets them after a reconnect). Flush them before the ring can be reused.
  if (!inflight.empty()) {
    qp.ToError();
    ibv_wc wc;
    const absl::Time until = absl::Now() + absl::Seconds(2);
    size_t flushed = 0;
    while (flushed < inflight.size() && absl::Now() < until) {
      int n = ibv_poll_cq(qp.cq(), 1, &wc);
      if (n > 0)
        ++flushed;
      else
        usleep(100);
    }
  }
  if (stopping_.load() || status.ok()) return;
  const bool network = status.code() == absl::StatusCode::kUnavailable ||
                       status.code() == absl::StatusCode::kDeadlineExceeded;
  sink_->Failed(SourceError{
      network ? SourceError::Kind::kNetwork
              : (status.code() == absl::StatusCode::kInvalidArgument ? SourceError::Kind::kProtocol
                                                                     : SourceError::Kind::kRefused),
      absl::Status(status.code(), absl::StrCat("bulk channel: ", status.message()))});
}

absl::Status RdmaPageSource::BulkStep(std::deque<Inflight>& inflight,
                                      std::vector<uint32_t>& free_slots, bool* progressed) {
  RcQp& qp = *qps_[1];
  // 1. Post what waits, while a ring slot is free: the READ and its VERIFY together.
  while (!free_slots.empty()) {
    PageRange r;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!control_error_.ok()) return control_error_;
      if (bulk_queue_.empty()) break;
      r = bulk_queue_.front();
      bulk_queue_.pop_front();
    }
    const uint32_t slot = free_slots.back();
    free_slots.pop_back();
    const uint32_t ps = regions_[r.region].page_size;
    const uint32_t len = r.count * ps;
    if (absl::Status s =
            qp.PostRead(slot, ring_ + size_t{slot} * opts_.bulk_slot_bytes, ring_mr_->lkey,
                        keys_[r.region].addr + r.first * ps, keys_[r.region].rkey, len);
        !s.ok()) {
      return s;
    }
    std::string out;
    EncodeVerify(r, &out);
    {
      std::lock_guard<std::mutex> l(control_write_mu_);
      if (absl::Status s = control_.WriteAll(out.data(), out.size()); !s.ok()) {
        return absl::UnavailableError(absl::StrCat("control connection: ", s.message()));
      }
    }
    Inflight f;
    f.range = r;
    f.slot = slot;
    const uint64_t n = batches_.fetch_add(1) + 1;
    f.corrupt_test = opts_.test_corrupt_every_nth_batch > 0 &&
                     n % static_cast<uint64_t>(opts_.test_corrupt_every_nth_batch) == 0;
    inflight.push_back(f);
    stats_.bulk_reads.fetch_add(1, std::memory_order_relaxed);
    *progressed = true;
  }
  // 2. Completions (RC: in posting order).
  ibv_wc wcs[16];
  int n = ibv_poll_cq(qp.cq(), 16, wcs);
  if (n < 0) return absl::InternalError("polling the bulk completion queue failed");
  for (int i = 0; i < n; ++i) {
    *progressed = true;
    if (wcs[i].status != IBV_WC_SUCCESS) {
      stats_.failed_completions.fetch_add(1, std::memory_order_relaxed);
      PageRange r{};
      for (const Inflight& f : inflight) {
        if (f.slot == wcs[i].wr_id) r = f.range;
      }
      return absl::UnavailableError(absl::StrCat("RDMA READ of pages [", r.first, ", ",
                                                 r.first + r.count, ") of region ", r.region,
                                                 " failed: ", WcStatusText(wcs[i])));
    }
    for (Inflight& f : inflight) {
      if (f.slot == wcs[i].wr_id && !f.done) {
        f.done = true;
        break;
      }
    }
  }
  // 3. Deliver, in order, every batch whose READ completed and whose CRCs arrived.
  while (!inflight.empty() && inflight.front().done) {
    std::vector<uint32_t> crcs;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (verified_.empty()) break;
      const PageRange& got = verified_.front().first;
      const PageRange& want = inflight.front().range;
      if (got.region != want.region || got.first != want.first || got.count != want.count) {
        return absl::InvalidArgumentError("VERIFIED answers a different range than was asked");
      }
      crcs = std::move(verified_.front().second);
      verified_.pop_front();
    }
    DeliverBulk(inflight.front(), crcs);
    free_slots.push_back(inflight.front().slot);
    inflight.pop_front();
    *progressed = true;
  }
  return absl::OkStatus();
}

void RdmaPageSource::DeliverBulk(const Inflight& f, const std::vector<uint32_t>& crcs) {
  const PageRange& r = f.range;
  const uint32_t ps = regions_[r.region].page_size;
  uint8_t* slot = ring_ + size_t{f.slot} * opts_.bulk_slot_bytes;
  if (f.corrupt_test) slot[0] ^= 0x01;
  stats_.bulk_bytes.fetch_add(uint64_t{r.count} * ps, std::memory_order_relaxed);
  // The batch's good pages as runs straight from the ring slot; zero pages marked as such.
  thread_local std::vector<uint8_t> zero;
  zero.assign(r.count, 0);
  PageRun run;
  run.region = r.region;
  run.page_size = ps;
  run.urgency = Urgency::kBulk;
  uint32_t start = 0;
  auto flush = [&](uint32_t end) {
    if (end > start) {
      run.first = r.first + start;
      run.count = end - start;
      run.data = slot + size_t{start} * ps;
      run.zero = zero.data() + start;
      sink_->Deliver(run);
    }
  };
  for (uint32_t i = 0; i < r.count; ++i) {
    const uint8_t* src = slot + size_t{i} * ps;
    if (Crc32c(src, ps) != crcs[i]) {
      // The bytes read are not the source's: deliver what precedes, hand this one back.
      stats_.crc_mismatches.fetch_add(1, std::memory_order_relaxed);
      flush(i);
      start = i + 1;
      sink_->Rejected(r.region, r.first + i, Urgency::kBulk);
      continue;
    }
    zero[i] = IsZeroPage(src, ps) ? 1 : 0;
  }
  flush(r.count);
  sink_->BulkDone(0);
}

}  // namespace faultline
