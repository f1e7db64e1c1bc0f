#include "transport/rdma_page_source.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/crc32c.h"
#include "base/fix.h"
#include "transport/socket.h"

namespace faultline {
namespace {

constexpr uint64_t kUrgentWrId = 1ull << 62;

uint8_t* MapBuffer(size_t len) {
  void* p =
      mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
}

absl::Span<const uint8_t> AsSpan(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace

absl::StatusOr<std::unique_ptr<RdmaPageSource>> RdmaPageSource::Connect(
    const RdmaSourceOptions& opts) {
  std::unique_ptr<RdmaPageSource> src(new RdmaPageSource());
  src->opts_ = opts;
  src->opts_.bulk_depth = std::max(1u, std::min(opts.bulk_depth, 64u));
  src->fail_urgent_left_.store(opts.test_fail_urgent_reads);
  src->wake_fd_ = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  absl::StatusOr<std::unique_ptr<RdmaDevice>> dev = RdmaDevice::Open(opts.device);
  if (!dev.ok()) return dev.status();
  src->dev_ = std::move(*dev);
  if (absl::Status s = src->Setup(opts.control); !s.ok()) return s;
  uint32_t max_ps = 4096;
  for (const RegionInfo& r : src->regions_) max_ps = std::max(max_ps, r.page_size);
  src->opts_.bulk_slot_bytes = std::max(src->opts_.bulk_slot_bytes, max_ps);
  src->urgent_staging_len_ = max_ps;
  src->urgent_staging_ = MapBuffer(max_ps);
  src->ring_len_ = size_t{src->opts_.bulk_depth} * src->opts_.bulk_slot_bytes;
  src->ring_ = MapBuffer(src->ring_len_);
  if (!src->urgent_staging_ || !src->ring_) {
    return absl::ResourceExhaustedError("cannot map the RDMA staging buffers");
  }
  absl::StatusOr<MrPtr> mr = src->dev_->Register(src->urgent_staging_, src->urgent_staging_len_,
                                                 IBV_ACCESS_LOCAL_WRITE, "the urgent staging page");
  if (!mr.ok()) return mr.status();
  src->urgent_staging_mr_ = std::move(*mr);
  mr = src->dev_->Register(src->ring_, src->ring_len_, IBV_ACCESS_LOCAL_WRITE,
                           "the bulk staging ring");
  if (!mr.ok()) return mr.status();
  src->ring_mr_ = std::move(*mr);
  return src;
}

absl::Status RdmaPageSource::Setup(const TcpSourceOptions& control) {
  std::vector<RegionInfo> regions;
  absl::StatusOr<Stream> stream = OpenChannel(control, Channel::kUrgent, &regions);
  if (!stream.ok()) return stream.status();
  if (!regions_.empty()) {
    if (regions.size() != regions_.size()) {
      return absl::FailedPreconditionError("the source came back with different regions");
    }
    for (size_t i = 0; i < regions.size(); ++i) {
      if (regions[i].size != regions_[i].size || regions[i].page_size != regions_[i].page_size) {
        return absl::FailedPreconditionError(
            absl::StrCat("the source came back with region ", i, " changed"));
      }
    }
  }
  std::unique_ptr<RcQp> qps[2];
  RdmaEndpoint local = dev_->LocalEndpoint();
  for (int ch = 0; ch < 2; ++ch) {
    const uint32_t depth = ch == 0 ? 4 : opts_.bulk_depth + 4;
    absl::StatusOr<std::unique_ptr<RcQp>> qp = RcQp::Create(dev_.get(), depth, true);
    if (!qp.ok()) return qp.status();
    qps[ch] = std::move(*qp);
    local.qps[ch] = qps[ch]->info();
  }
  std::string out;
  EncodeRdmaConnect(local, &out);
  stream->SetReadTimeout(control.connect_timeout);
  if (absl::Status s = stream->WriteAll(out.data(), out.size()); !s.ok()) return s;
  FrameHeader h;
  std::string payload;
  if (absl::Status s = ReadSmallFrame(*stream, &h, &payload); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("RDMA set-up with ", control.address, ": ", s.message()));
  }
  if (h.type == FrameType::kError) {
    absl::StatusOr<ErrorFrame> e = DecodeError(AsSpan(payload));
    if (!e.ok()) return e.status();
    absl::Status refused = PeerError(*e);
    // At this step the only precondition a source refuses is RDMA itself (it serves TCP).
    return refused.code() == absl::StatusCode::kFailedPrecondition
               ? WithFix(refused, Fix::kSourceServesRdma)
               : refused;
  }
  if (h.type != FrameType::kRdmaAccept) {
    return absl::InvalidArgumentError(
        absl::StrCat("RDMA set-up: expected RDMA_ACCEPT, got ", FrameTypeName(h.type)));
  }
  absl::StatusOr<RdmaAccept> accept = DecodeRdmaAccept(AsSpan(payload));
  if (!accept.ok()) return accept.status();
  if (accept->regions.size() != regions.size()) {
    return absl::InvalidArgumentError(absl::StrCat("RDMA_ACCEPT names ", accept->regions.size(),
                                                   " regions, WELCOME ", regions.size()));
  }
  for (size_t i = 0; i < regions.size(); ++i) {
    if (accept->regions[i].length != regions[i].size) {
      return absl::InvalidArgumentError(absl::StrCat("RDMA_ACCEPT: region ", i, " is ",
                                                     accept->regions[i].length,
                                                     " bytes, WELCOME says ", regions[i].size));
    }
  }
  for (int ch = 0; ch < 2; ++ch) {
    if (absl::Status s = qps[ch]->Connect(accept->endpoint, accept->endpoint.qps[ch], 0); !s.ok()) {
      return s;
    }
  }
  stream->SetReadTimeout(absl::ZeroDuration());
  // On a reconnect the table was checked equal above; it is read by Request*() meanwhile.
  if (regions_.empty()) regions_ = std::move(regions);
  keys_ = std::move(accept->regions);
  control_ = std::move(*stream);
  qps_[0] = std::move(qps[0]);
  qps_[1] = std::move(qps[1]);
  return absl::OkStatus();
}

RdmaPageSource::~RdmaPageSource() {
  Stop();
  qps_[0].reset();
  qps_[1].reset();
  urgent_staging_mr_.reset();
  ring_mr_.reset();
  if (urgent_staging_) munmap(urgent_staging_, urgent_staging_len_);
  if (ring_) munmap(ring_, ring_len_);
}

SourceLimits RdmaPageSource::limits() const {
  SourceLimits l;
  l.max_request_pages = kMaxPagesPerFrame;
  l.max_request_bytes = opts_.bulk_slot_bytes;
  l.bulk_lanes = 1;
  return l;
}

absl::Status RdmaPageSource::Start(PageSink* sink) {
  sink_ = sink;
  StartThreads();
  return absl::OkStatus();
}

void RdmaPageSource::StartThreads() {
  stopping_.store(false);
  urgent_thread_ = std::thread([this] { UrgentLoop(); });
  bulk_thread_ = std::thread([this] { BulkLoop(); });
  control_thread_ = std::thread([this] { ControlLoop(); });
}

void RdmaPageSource::Wake() {
  uint64_t one = 1;
  (void)!write(wake_fd_.get(), &one, sizeof(one));
}

absl::Status RdmaPageSource::RequestUrgent(uint32_t region, uint64_t page) {
  PageRange r{region, 1, page};
  if (absl::Status s = CheckRange(r, regions_, 1); !s.ok()) return s;
  {
    std::lock_guard<std::mutex> l(mu_);
    urgent_queue_.emplace_back(region, page);
  }
  urgent_cv_.notify_one();
  return absl::OkStatus();
}

absl::Status RdmaPageSource::RequestBulk(uint32_t lane, uint32_t region, uint64_t first,
                                         uint32_t count) {
  if (lane != 0) return absl::InvalidArgumentError(absl::StrCat("no bulk lane ", lane));
  PageRange r{region, count, first};
  if (absl::Status s = CheckRange(r, regions_, kMaxPagesPerFrame); !s.ok()) return s;
  if (uint64_t{count} * regions_[region].page_size > opts_.bulk_slot_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("bulk request of ", uint64_t{count} * regions_[region].page_size,
                     " bytes exceeds the RDMA staging slot (", opts_.bulk_slot_bytes, " bytes)"));
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    bulk_queue_.push_back(r);
  }
  Wake();
  return absl::OkStatus();
}

absl::Status RdmaPageSource::Finish() {
  std::string out;
  EncodeDone(&out);
  std::lock_guard<std::mutex> l(control_write_mu_);
  return control_.WriteAll(out.data(), out.size());
}

void RdmaPageSource::Stop() {
  stopping_.store(true);
  {
    std::lock_guard<std::mutex> l(mu_);  // a waiter checks stopping_ under mu_
  }
  urgent_cv_.notify_all();
  Wake();
  if (control_.valid()) control_.ShutdownSocket();
  for (std::thread* t : {&urgent_thread_, &bulk_thread_, &control_thread_}) {
    if (t->joinable()) t->join();
  }
}

absl::Status RdmaPageSource::Reconnect(absl::Time deadline) {
  std::lock_guard<std::mutex> g(reconnect_mu_);
  Stop();
  {
    // Requests in flight are lost: the engine asks again.
    std::lock_guard<std::mutex> l(mu_);
    urgent_queue_.clear();
    bulk_queue_.clear();
    verified_.clear();
    control_error_ = absl::OkStatus();
  }
  absl::Duration backoff = absl::Milliseconds(20);
  while (true) {
    TcpSourceOptions o = opts_.control;
    o.connect_timeout = std::min(opts_.control.connect_timeout,
                                 std::max(absl::Milliseconds(100), deadline - absl::Now()));
    absl::Status s = Setup(o);
    if (s.ok()) {
      reconnects_.fetch_add(1);
      StartThreads();
      return absl::OkStatus();
    }
    if (s.code() == absl::StatusCode::kPermissionDenied ||
        s.code() == absl::StatusCode::kFailedPrecondition ||
        s.code() == absl::StatusCode::kInvalidArgument) {
      return s;
    }
    if (absl::Now() + backoff > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "source ", opts_.control.address, " unreachable until the deadline: ", s.message()));
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(1));
  }
}

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
