#include "transport/tcp_page_source.h"

#include <sys/socket.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/crc32c.h"
#include "transport/socket.h"

namespace faultline {

absl::StatusOr<Stream> OpenChannel(const TcpSourceOptions& opts, Channel ch,
                                   std::vector<RegionInfo>* regions) {
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
    return absl::Status(s.code(), absl::StrCat("handshake with ", opts.address, ": ", s.message()));
  }
  if (h.type != FrameType::kWelcome) {
    return absl::InvalidArgumentError(
        absl::StrCat("handshake: expected WELCOME, got ", FrameTypeName(h.type)));
  }
  absl::StatusOr<Welcome> w = DecodeWelcome(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  if (!w.ok()) return w.status();
  *regions = std::move(w->regions);
  stream.SetReadTimeout(absl::ZeroDuration());
  return stream;
}

absl::StatusOr<std::unique_ptr<TcpPageSource>> TcpPageSource::Connect(
    const TcpSourceOptions& opts) {
  std::unique_ptr<TcpPageSource> src(new TcpPageSource());
  src->opts_ = opts;
  std::vector<RegionInfo> bulk_regions;
  absl::StatusOr<Stream> urgent = OpenChannel(opts, Channel::kUrgent, &src->regions_);
  if (!urgent.ok()) return urgent.status();
  absl::StatusOr<Stream> bulk = OpenChannel(opts, Channel::kBulk, &bulk_regions);
  if (!bulk.ok()) return bulk.status();
  if (bulk_regions.size() != src->regions_.size()) {
    return absl::FailedPreconditionError("source announced different regions on its channels");
  }
  int big = 4 << 20;
  setsockopt(bulk->fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
  src->conns_[0].stream = std::move(*urgent);
  src->conns_[1].stream = std::move(*bulk);
  return src;
}

TcpPageSource::~TcpPageSource() { Stop(); }

absl::Status TcpPageSource::Start(PageSink* sink) {
  sink_ = sink;
  for (int ch = 0; ch < 2; ++ch) {
    conns_[ch].rx = std::thread([this, ch] { ReceiveLoop(static_cast<Channel>(ch)); });
  }
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
  return Request(conns_[0], region, page, 1);
}

absl::Status TcpPageSource::RequestBulk(uint32_t region, uint64_t first, uint32_t count) {
  return Request(conns_[1], region, first, count);
}

absl::Status TcpPageSource::Finish() {
  std::string out;
  EncodeDone(&out);
  std::lock_guard<std::mutex> l(conns_[0].write_mu);
  return conns_[0].stream.WriteAll(out.data(), out.size());
}

void TcpPageSource::Stop() {
  stopping_.store(true);
  for (Conn& c : conns_) {
    if (c.stream.valid()) c.stream.ShutdownSocket();
  }
  for (Conn& c : conns_) {
    if (c.rx.joinable()) c.rx.join();
  }
}

absl::Status TcpPageSource::Reconnect(absl::Time deadline) {
  std::lock_guard<std::mutex> g(reconnect_mu_);
  Stop();  // receive threads joined; their cut frames were handed back
  absl::Duration backoff = absl::Milliseconds(20);
  absl::Status last;
  while (true) {
    std::vector<RegionInfo> r0, r1;
    TcpSourceOptions o = opts_;
    o.connect_timeout =
        std::min(opts_.connect_timeout, std::max(absl::Milliseconds(100), deadline - absl::Now()));
    // A fresh TCP connection and, with TLS, a fresh handshake per channel.
    absl::StatusOr<Stream> urgent = OpenChannel(o, Channel::kUrgent, &r0);
    absl::StatusOr<Stream> bulk =
        urgent.ok() ? OpenChannel(o, Channel::kBulk, &r1) : absl::StatusOr<Stream>(urgent.status());
    if (urgent.ok() && bulk.ok()) {
      if (r0.size() != regions_.size() || r1.size() != regions_.size()) {
        return absl::FailedPreconditionError("the source came back with different regions");
      }
      for (size_t i = 0; i < r0.size(); ++i) {
        if (r0[i].size != regions_[i].size || r0[i].page_size != regions_[i].page_size) {
          return absl::FailedPreconditionError(
              absl::StrCat("the source came back with region ", i, " changed"));
        }
      }
      int big = 4 << 20;
      setsockopt(bulk->fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
      for (int ch = 0; ch < 2; ++ch) {
        std::lock_guard<std::mutex> l(conns_[ch].write_mu);
        conns_[ch].stream = std::move(ch == 0 ? *urgent : *bulk);
      }
      stopping_.store(false);
      for (int ch = 0; ch < 2; ++ch) {
        conns_[ch].rx = std::thread([this, ch] { ReceiveLoop(static_cast<Channel>(ch)); });
      }
      reconnects_.fetch_add(1);
      return absl::OkStatus();
    }
    last = urgent.ok() ? bulk.status() : urgent.status();
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

void TcpPageSource::ReceiveLoop(Channel ch) {
  Stream& stream = conns_[static_cast<int>(ch)].stream;
  absl::Status status;
  while (status.ok()) {
    uint8_t hb[kHeaderSize];
    if (opts_.busy_poll && ch == Channel::kUrgent) {
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
      status = ReceivePages(ch, stream, *h);
      if (!status.ok()) sink_->FrameAborted(ch);
      continue;
    }
    std::string payload(h->length, '\0');
    status = stream.ReadAll(payload.data(), payload.size());
    if (!status.ok()) break;
    if (h->type == FrameType::kError) {
      absl::StatusOr<ErrorFrame> e = DecodeError(
          absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
      status = e.ok() ? PeerError(*e) : e.status();
    } else {
      status = absl::InvalidArgumentError(
          absl::StrCat("unexpected ", FrameTypeName(h->type), " frame from the source"));
    }
  }
  if (stopping_.load()) return;
  if (status.code() == absl::StatusCode::kInvalidArgument) {
    // Tell the source why we are hanging up (best effort).
    std::string out;
    EncodeError(status, &out);
    std::lock_guard<std::mutex> l(conns_[static_cast<int>(ch)].write_mu);
    (void)stream.WriteAll(out.data(), out.size());
  }
  sink_->Failed(ch,
                absl::Status(status.code(), absl::StrCat(ch == Channel::kUrgent ? "urgent" : "bulk",
                                                         " channel: ", status.message())));
}

absl::Status TcpPageSource::ReceivePages(Channel ch, Stream& stream, const FrameHeader& h) {
  uint8_t head_buf[kPagesHeadSize];
  if (h.length < kPagesHeadSize) return absl::InvalidArgumentError("malformed PAGES frame: short");
  if (absl::Status s = stream.ReadAll(head_buf, sizeof(head_buf)); !s.ok()) return s;
  absl::StatusOr<PagesHead> head = DecodePagesHead(absl::MakeConstSpan(head_buf));
  if (!head.ok()) return head.status();
  PageRange range{head->region, head->count, head->first};
  if (absl::Status s = CheckRange(range, regions_, kMaxPagesPerFrame); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("PAGES frame out of range: ", s.message()));
  }
  const uint32_t page_size = regions_[head->region].page_size;
  std::vector<uint8_t> desc_buf(size_t{head->count} * kPageDescSize);
  if (absl::Status s = stream.ReadAll(desc_buf.data(), desc_buf.size()); !s.ok()) return s;
  absl::StatusOr<std::vector<PageDesc>> descs =
      DecodePageDescs(desc_buf, head->count, page_size, h.length);
  if (!descs.ok()) return descs.status();
  for (uint32_t i = 0; i < head->count; ++i) {
    const uint64_t page = head->first + i;
    if ((*descs)[i].zero()) {
      sink_->Arrived(ch, head->region, page, i, Arrival::kZero);
      continue;
    }
    uint8_t* dst = sink_->Land(ch, head->region, page, i);
    absl::Status s = stream.ReadAll(dst, page_size);  // straight into place
    if (!s.ok()) {
      sink_->Arrived(ch, head->region, page, i, Arrival::kCorrupt);
      return s;
    }
    bool ok = Crc32c(dst, page_size) == (*descs)[i].crc;
    sink_->Arrived(ch, head->region, page, i, ok ? Arrival::kData : Arrival::kCorrupt);
  }
  sink_->FrameDone(ch, head->region, head->first, head->count);
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
