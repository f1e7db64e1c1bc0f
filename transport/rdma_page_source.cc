// RdmaPageSource (rdma_page_source.h): connecting (control connection, queue pairs, the
// source's region keys), requests, reconnecting. The urgent channel's thread is in
// rdma_page_source_urgent.cc, the bulk and control threads in rdma_page_source_bulk.cc.
#include "transport/rdma_page_source.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/fix.h"
#include "transport/socket.h"

namespace faultline {
namespace {

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
  uint32_t welcome_flags = 0;
  absl::StatusOr<Stream> stream = OpenChannel(control, Channel::kUrgent, &regions, &welcome_flags);
  if (stream.ok() && (welcome_flags & kWelcomeLive)) {
    return absl::FailedPreconditionError(
        "the source serves a running guest's memory (warm-up), which the RDMA transport does "
        "not do: use TCP for warm-up");
  }
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
  // A thread started here may fail at once (a connection already dead) and have Reconnect()
  // called before the next thread exists; it waits for this lock, or it would join only the
  // threads started so far and then assign over a running one (std::terminate).
  std::lock_guard<std::mutex> g(reconnect_mu_);
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

}  // namespace faultline
