#include "transport/tcp_page_source.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/crc32c.h"
#include "base/fix.h"
#include "base/thread_slice.h"
#include "transport/socket.h"

namespace faultline {

absl::StatusOr<Stream> OpenChannel(const TcpSourceOptions& opts, Channel ch,
                                   std::vector<RegionInfo>* regions, uint32_t* welcome_flags) {
  const absl::Time deadline = absl::Now() + opts.connect_timeout;
  absl::StatusOr<UniqueFd> fd = ConnectTcp(opts.address, opts.connect_timeout);
  if (!fd.ok()) return fd.status();
  Stream stream(std::move(*fd));
  if (opts.tls) {
    absl::Status s = opts.tls->Connect(
        &stream, opts.tls_server_name.empty() ? HostOfAddress(opts.address) : opts.tls_server_name,
        opts.address, deadline);
    if (!s.ok()) return s;
  }
  // A source that accepts but never answers (hung, or no longer serving) must not hang us.
  stream.SetReadTimeout(opts.connect_timeout);
  std::string out;
  Hello hello;
  hello.channel = ch;
  hello.token = opts.token;
  EncodeHello(hello, &out);
  if (absl::Status s = stream.WriteAll(out.data(), out.size()); !s.ok()) return s;
  FrameHeader h;
  std::string payload;
  if (absl::Status s = ReadSmallFrame(stream, &h, &payload); !s.ok()) {
    absl::Status e = Reworded(s, absl::StrCat("handshake with ", opts.address, ": ", s.message()));
    // A plain destination refused for a precondition at HELLO: the source requires TLS.
    if (!opts.tls && s.code() == absl::StatusCode::kFailedPrecondition) {
      return WithFix(e, Fix::kDestUsesTls);
    }
    return e;
  }
  if (h.type != FrameType::kWelcome) {
    return absl::InvalidArgumentError(
        absl::StrCat("handshake: expected WELCOME, got ", FrameTypeName(h.type)));
  }
  absl::StatusOr<Welcome> w = DecodeWelcome(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  if (!w.ok()) return w.status();
  *regions = std::move(w->regions);
  if (welcome_flags != nullptr) *welcome_flags = w->flags;
  stream.SetReadTimeout(absl::ZeroDuration());
  return stream;
}

namespace {

// Page bytes are read, and their CRCs taken, this much at a time (ReceivePages): small enough
// to be still in cache for the CRC, large enough not to add receive calls.
constexpr size_t kReceiveSlice = 128 << 10;

// What a broken connection means for the engine (transport/page_source.h).
SourceError Classify(const absl::Status& s, bool peer_error) {
  using K = SourceError::Kind;
  if (peer_error) return {K::kRefused, s};
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded: return {K::kNetwork, s};
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kDataLoss: return {K::kProtocol, s};
    default: return {K::kRefused, s};
  }
}

}  // namespace

absl::Status TcpPageSource::OpenAll(const TcpSourceOptions& opts, std::vector<Stream>* streams,
                                    std::vector<RegionInfo>* regions, uint32_t* welcome_flags) {
  if (opts.bulk_lanes < 1 || opts.bulk_lanes > kMaxBulkLanes) {
    return absl::InvalidArgumentError(
        absl::StrCat("bulk lanes must be 1..", kMaxBulkLanes, ", not ", opts.bulk_lanes));
  }
  streams->clear();
  for (uint32_t i = 0; i <= opts.bulk_lanes; ++i) {
    std::vector<RegionInfo> r;
    absl::StatusOr<Stream> s = OpenChannel(opts, i == 0 ? Channel::kUrgent : Channel::kBulk, &r,
                                           i == 0 ? welcome_flags : nullptr);
    if (!s.ok()) return s.status();
    if (i == 0) {
      *regions = std::move(r);
    } else {
      if (r.size() != regions->size()) {
        return absl::FailedPreconditionError("source announced different regions on its channels");
      }
      int big = 4 << 20;
      setsockopt(s->fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    }
    streams->push_back(std::move(*s));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TcpPageSource>> TcpPageSource::Connect(
    const TcpSourceOptions& opts) {
  std::unique_ptr<TcpPageSource> src(new TcpPageSource());
  src->opts_ = opts;
  std::vector<Stream> streams;
  uint32_t flags = 0;
  if (absl::Status s = OpenAll(opts, &streams, &src->regions_, &flags); !s.ok()) return s;
  src->live_ = flags & kWelcomeLive;
  uint32_t max_ps = 4096;
  for (const RegionInfo& r : src->regions_) max_ps = std::max(max_ps, r.page_size);
  for (size_t i = 0; i < streams.size(); ++i) {
    auto c = std::make_unique<Conn>();
    c->stream = std::move(streams[i]);
    c->urgency = i == 0 ? Urgency::kUrgent : Urgency::kBulk;
    c->lane = i == 0 ? 0 : static_cast<uint32_t>(i - 1);
    // The urgent connection carries one page per frame; a bulk one a chunk at a time.
    c->buf.resize(i == 0 ? max_ps : std::max<size_t>(max_ps, opts.deliver_chunk_bytes));
    c->zero.resize(c->buf.size() / 4096 + 1);
    c->crc.resize(c->zero.size());
    src->conns_.push_back(std::move(c));
  }
  return src;
}

TcpPageSource::~TcpPageSource() { Stop(); }

bool TcpPageSource::Connected() const {
  // Nothing arrives unasked before the first request: a closed or reset connection shows as
  // a hang-up (or as readable: its EOF or an ERROR frame the source sent before closing). TLS
  // may leave a session ticket unread, which reads as "not connected": such a source is
  // connected again, which costs time, never correctness.
  for (const auto& c : conns_) {
    struct pollfd p = {c->stream.fd(), POLLIN | POLLRDHUP, 0};
    if (c->stream.fd() < 0 || ::poll(&p, 1, 0) != 0) return false;
  }
  return true;
}

SourceLimits TcpPageSource::limits() const {
  SourceLimits l;
  l.max_request_pages = kMaxPagesPerFrame;
  l.max_request_bytes = kMaxPagesPayload;
  l.bulk_lanes = static_cast<uint32_t>(conns_.size() - 1);
  return l;
}

void TcpPageSource::StartThreads() {
  stopping_.store(false);
  urgent_closed_.store(false);
  for (auto& c : conns_) {
    Conn* raw = c.get();
    raw->dirty_open = false;  // a round cut by a reconnect is asked for again
    c->rx = std::thread([this, raw] { ReceiveLoop(raw); });
  }
}

absl::Status TcpPageSource::Start(PageSink* sink) {
  // A thread started here may fail at once (a connection already dead) and have Reconnect()
  // called before the next thread exists; it waits for this lock, or it would join only the
  // threads started so far and then assign over a running one (std::terminate).
  std::lock_guard<std::mutex> g(reconnect_mu_);
  sink_ = sink;
  StartThreads();
  return absl::OkStatus();
}

absl::Status TcpPageSource::Request(Conn& c, uint32_t region, uint64_t first, uint32_t count) {
  PageRange r{region, count, first};
  if (absl::Status s = CheckRange(r, regions_, kMaxPagesPerFrame); !s.ok()) return s;
  std::string out;
  EncodeRequest(r, &out);
  std::lock_guard<std::mutex> l(c.write_mu);
  return c.stream.WriteAll(out.data(), out.size());
}

absl::Status TcpPageSource::RequestUrgent(uint32_t region, uint64_t page) {
  return Request(*conns_[0], region, page, 1);
}

absl::Status TcpPageSource::RequestBulk(uint32_t lane, uint32_t region, uint64_t first,
                                        uint32_t count) {
  if (lane + 1 >= conns_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("no bulk lane ", lane));
  }
  return Request(*conns_[1 + lane], region, first, count);
}

absl::Status TcpPageSource::SendControl(const std::string& frame) {
  std::lock_guard<std::mutex> l(conns_[0]->write_mu);
  return conns_[0]->stream.WriteAll(frame.data(), frame.size());
}

absl::Status TcpPageSource::Finish() {
  std::string out;
  EncodeDone(&out);
  finishing_.store(true);
  if (absl::Status s = SendControl(out); !s.ok()) return s;
  // Close only after the source has: it closes the urgent connection once it has read DONE.
  // Closing first, with bytes the source sent still unread here (answers to requests the pull
  // overtook, a warm-up round's frames), resets the connection; a source thread blocked
  // writing such an answer then fails with the reset and never reads the DONE queued behind
  // it — and a source serves until DONE. (Seen: a warm-up migration whose engine was replaced
  // mid-way left its source serving for good.) The receive thread reads on meanwhile, so the
  // source's writes never block; bounded, because a source gone silent must not hold us.
  const absl::Time deadline = absl::Now() + absl::Seconds(2);
  while (!urgent_closed_.load() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
  return absl::OkStatus();
}

absl::Status TcpPageSource::RequestDirty(bool final, uint32_t throttle) {
  std::string out;
  EncodeDirtySync({final ? kDirtyFinal : 0, throttle}, &out);
  return SendControl(out);
}

absl::Status TcpPageSource::ConfirmDirty(uint64_t round) {
  std::string out;
  EncodeDirtyApplied(round, &out);
  return SendControl(out);
}

absl::Status TcpPageSource::ReceiveDirty(Conn& c, absl::Span<const uint8_t> payload) {
  if (c.urgency != Urgency::kUrgent) {
    return absl::InvalidArgumentError("DIRTY frame on a bulk channel");
  }
  absl::StatusOr<DirtyFrame> f = DecodeDirty(payload);
  if (!f.ok()) return f.status();
  if (c.dirty_open && f->round != c.dirty.round) {
    return absl::InvalidArgumentError(
        absl::StrCat("DIRTY frame of round ", f->round, " inside round ", c.dirty.round));
  }
  if (!c.dirty_open) {
    c.dirty = DirtySet();
    c.dirty.round = f->round;
    c.dirty.final = f->flags & kDirtyFinal;
    c.dirty.no_throttle = f->flags & kDirtyNoThrottle;
    c.dirty_open = true;
  }
  for (const PageRange& r : f->ranges) {
    if (absl::Status s = CheckDirtyRange(r, regions_); !s.ok()) return s;
    c.dirty.ranges.push_back({r.region, r.first, r.count});
  }
  if (!(f->flags & kDirtyMore)) {
    c.dirty_open = false;
    sink_->Dirty(std::move(c.dirty));
  }
  return absl::OkStatus();
}

void TcpPageSource::Stop() {
  stopping_.store(true);
  for (auto& c : conns_) {
    if (c->stream.valid()) c->stream.ShutdownSocket();
  }
  for (auto& c : conns_) {
    if (c->rx.joinable()) c->rx.join();
  }
}

absl::Status TcpPageSource::Reconnect(absl::Time deadline) {
  std::lock_guard<std::mutex> g(reconnect_mu_);
  Stop();  // receive threads joined
  absl::Duration backoff = absl::Milliseconds(20);
  absl::Status last;
  while (true) {
    TcpSourceOptions o = opts_;
    o.connect_timeout =
        std::min(opts_.connect_timeout, std::max(absl::Milliseconds(100), deadline - absl::Now()));
    // Fresh TCP connections and, with TLS, fresh handshakes, one per channel.
    std::vector<Stream> streams;
    std::vector<RegionInfo> r;
    uint32_t flags = 0;
    last = OpenAll(o, &streams, &r, &flags);
    if (last.ok() && (flags & kWelcomeLive) != live_) {
      return absl::FailedPreconditionError(
          "the source came back serving memory of a different state (live vs frozen)");
    }
    if (last.ok()) {
      if (r.size() != regions_.size()) {
        return absl::FailedPreconditionError("the source came back with different regions");
      }
      for (size_t i = 0; i < r.size(); ++i) {
        if (r[i].size != regions_[i].size || r[i].page_size != regions_[i].page_size) {
          return absl::FailedPreconditionError(
              absl::StrCat("the source came back with region ", i, " changed"));
        }
      }
      for (size_t i = 0; i < conns_.size(); ++i) {
        std::lock_guard<std::mutex> l(conns_[i]->write_mu);
        conns_[i]->stream = std::move(streams[i]);
      }
      StartThreads();
      reconnects_.fetch_add(1);
      return absl::OkStatus();
    }
    // Authentication and protocol refusals will not heal by retrying.
    if (last.code() == absl::StatusCode::kPermissionDenied ||
        last.code() == absl::StatusCode::kFailedPrecondition ||
        last.code() == absl::StatusCode::kInvalidArgument) {
      return last;
    }
    if (absl::Now() + backoff > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "source ", opts_.address, " unreachable until the deadline: ", last.message()));
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(1));
  }
}

void TcpPageSource::ReceiveLoop(Conn* c) {
  Stream& stream = c->stream;
  pthread_setname_np(pthread_self(),
                     c->urgency == Urgency::kUrgent ? "fl-urgent-rx" : "fl-bulk-rx");
  if (c->urgency == Urgency::kBulk) {
    opts_.bulk_threads.ApplyToBulkThread();  // this thread only
  } else {
    opts_.bulk_threads.ApplyToFaultPathThread();
  }
  if (c->urgency == Urgency::kBulk && opts_.bulk_idle) {
    sched_param none = {};
    (void)sched_setscheduler(0, SCHED_IDLE, &none);  // this thread only (Linux: per task)
  }
  if (c->urgency == Urgency::kUrgent) (void)SetThreadSlice(opts_.urgent_slice);  // < 6.12: as is
  absl::Status status;
  bool peer_error = false;
  while (status.ok()) {
    uint8_t hb[kHeaderSize];
    if (opts_.busy_poll && c->urgency == Urgency::kUrgent) {
      // Spin until the header's first byte is there, then read normally.
      stream.SpinUntilReadable(stopping_);
    }
    status = stream.ReadAll(hb, sizeof(hb));
    if (!status.ok()) break;
    absl::StatusOr<FrameHeader> h = DecodeHeader(absl::MakeConstSpan(hb, sizeof(hb)));
    if (!h.ok()) {
      status = h.status();
      break;
    }
    if (h->type == FrameType::kPages) {
      status = ReceivePages(*c, *h);
      continue;
    }
    std::string payload(h->length, '\0');
    status = stream.ReadAll(payload.data(), payload.size());
    if (!status.ok()) break;
    if (h->type == FrameType::kDirty) {
      status = ReceiveDirty(
          *c,
          absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
    } else if (h->type == FrameType::kError) {
      absl::StatusOr<ErrorFrame> e = DecodeError(
          absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
      status = e.ok() ? PeerError(*e) : e.status();
      peer_error = e.ok();
    } else {
      status = absl::InvalidArgumentError(
          absl::StrCat("unexpected ", FrameTypeName(h->type), " frame from the source"));
    }
  }
  if (c->urgency == Urgency::kUrgent) urgent_closed_.store(true);
  if (stopping_.load() || finishing_.load()) return;  // the end we asked for
  SourceError err = Classify(status, peer_error);
  if (err.kind == SourceError::Kind::kProtocol) {
    // Tell the source why we are hanging up (best effort).
    std::string out;
    EncodeError(status, &out);
    std::lock_guard<std::mutex> l(c->write_mu);
    (void)stream.WriteAll(out.data(), out.size());
  }
  err.status = absl::Status(
      status.code(), absl::StrCat(c->urgency == Urgency::kUrgent ? "urgent" : "bulk", " channel",
                                  c->urgency == Urgency::kUrgent ? "" : absl::StrCat(" ", c->lane),
                                  ": ", status.message()));
  sink_->Failed(err);
}

absl::Status TcpPageSource::ReceivePages(Conn& c, const FrameHeader& h) {
  Stream& stream = c.stream;
  uint8_t head_buf[kPagesHeadSize];
  if (h.length < kPagesHeadSize) return absl::InvalidArgumentError("malformed PAGES frame: short");
  if (absl::Status s = stream.ReadAll(head_buf, sizeof(head_buf)); !s.ok()) return s;
  absl::StatusOr<PagesHead> head = DecodePagesHead(absl::MakeConstSpan(head_buf));
  if (!head.ok()) return head.status();
  PageRange range{head->region, head->count, head->first};
  if (absl::Status s = CheckRange(range, regions_, kMaxPagesPerFrame); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("PAGES frame out of range: ", s.message()));
  }
  const uint32_t ps = regions_[head->region].page_size;
  std::vector<uint8_t> desc_buf(size_t{head->count} * kPageDescSize);
  if (absl::Status s = stream.ReadAll(desc_buf.data(), desc_buf.size()); !s.ok()) return s;
  absl::StatusOr<std::vector<PageDesc>> descs =
      DecodePageDescs(desc_buf, head->count, ps, h.length);
  if (!descs.ok()) return descs.status();
  // A chunk at a time: read its data pages into the buffer (page k of the chunk at k * ps),
  // check them there, deliver the good ones as runs.
  const uint32_t per_chunk = static_cast<uint32_t>(std::max<size_t>(1, c.buf.size() / ps));
  for (uint32_t i = 0; i < head->count; i += per_chunk) {
    const uint32_t n = std::min(per_chunk, head->count - i);
    for (uint32_t k = 0; k < n;) {
      if ((*descs)[i + k].zero()) {
        ++k;
        continue;
      }
      uint32_t m = k;
      while (m < n && !(*descs)[i + m].zero()) ++m;
      // Pages [k, m) of the chunk are data: read a slice at a time, and take the CRC of each
      // slice as soon as it is in (still in cache, while the peer sends the next), so that the
      // check after the last byte costs nothing — for a 2 MiB page that is the fault's latency.
      uint8_t* const base = c.buf.data() + size_t{k} * ps;
      const size_t len = size_t{m - k} * ps;
      for (size_t off = 0; off < len;) {
        const size_t slice = std::min(kReceiveSlice, len - off);
        if (absl::Status s = stream.ReadAll(base + off, slice); !s.ok()) {
          return s;  // nothing of this chunk was delivered; its pages stay requested
        }
        for (size_t at = off; at < off + slice;) {
          const size_t page = at / ps, in = at % ps;
          const size_t take = std::min<size_t>(ps - in, off + slice - at);
          uint32_t& crc = c.crc[k + page];
          crc = Crc32c(base + at, take, in == 0 ? 0 : crc);
          at += take;
        }
        off += slice;
      }
      k = m;
    }
    PageRun run;
    run.region = head->region;
    run.page_size = ps;
    run.urgency = c.urgency;
    run.lane = c.lane;
    uint32_t start = 0;
    auto flush = [&](uint32_t end) {  // delivers chunk pages [start, end)
      if (end > start) {
        run.first = head->first + i + start;
        run.count = end - start;
        run.data = c.buf.data() + size_t{start} * ps;
        run.zero = c.zero.data() + start;
        sink_->Deliver(run);
      }
    };
    for (uint32_t k = 0; k < n; ++k) {
      const PageDesc& d = (*descs)[i + k];
      c.zero[k] = d.zero() ? 1 : 0;
      if (d.zero() || c.crc[k] == d.crc) continue;
      // Corrupted on the way: deliver what precedes it, hand this one back.
      flush(k);
      start = k + 1;
      sink_->Rejected(head->region, head->first + i + k, c.urgency);
    }
    flush(n);
  }
  if (c.urgency == Urgency::kBulk) sink_->BulkDone(c.lane);
  return absl::OkStatus();
}

}  // namespace faultline

namespace faultline {

absl::StatusOr<uint64_t> VerifyAgainstSource(const TcpSourceOptions& opts,
                                             const std::vector<const uint8_t*>& bases,
                                             uint64_t* verified, bool send_done) {
  std::vector<RegionInfo> regions;
  absl::StatusOr<Stream> stream = OpenChannel(opts, Channel::kUrgent, &regions);
  if (!stream.ok()) return stream.status();
  if (regions.size() != bases.size()) {
    return absl::FailedPreconditionError("verify: region count differs from the source's");
  }
  uint64_t bad = 0;
  *verified = 0;
  for (uint32_t ri = 0; ri < regions.size(); ++ri) {
    const RegionInfo& r = regions[ri];
    for (uint64_t first = 0; first < r.pages(); first += kMaxPagesPerFrame) {
      PageRange range{
          ri, static_cast<uint32_t>(std::min<uint64_t>(kMaxPagesPerFrame, r.pages() - first)),
          first};
      std::string out;
      EncodeVerify(range, &out);
      if (absl::Status s = stream->WriteAll(out.data(), out.size()); !s.ok()) return s;
      FrameHeader h;
      std::string payload;
      if (absl::Status s = ReadSmallFrame(*stream, &h, &payload); !s.ok()) return s;
      if (h.type != FrameType::kVerified) {
        return absl::InvalidArgumentError(
            absl::StrCat("verify: expected VERIFIED, got ", FrameTypeName(h.type)));
      }
      PageRange got;
      absl::StatusOr<std::vector<uint32_t>> crcs = DecodeVerified(
          absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()),
          &got);
      if (!crcs.ok()) return crcs.status();
      if (got.region != range.region || got.first != range.first || got.count != range.count) {
        return absl::InvalidArgumentError("verify: VERIFIED answers a different range");
      }
      for (uint32_t i = 0; i < range.count; ++i) {
        const uint8_t* page = bases[ri] + (first + i) * r.page_size;
        if (Crc32c(page, r.page_size) != (*crcs)[i]) ++bad;
        ++*verified;
      }
    }
  }
  if (send_done) {
    std::string out;
    EncodeDone(&out);
    (void)stream->WriteAll(out.data(), out.size());
  }
  return bad;
}

}  // namespace faultline
