#include "transport/protocol.h"

#include <sys/random.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "transport/protocol_codec.h"

namespace faultline {

using protocol_internal::Malformed;
using protocol_internal::Put16;
using protocol_internal::Put32;
using protocol_internal::Put64;
using protocol_internal::PutHeader;
using protocol_internal::Reader;

const char* FrameTypeName(FrameType t) {
  switch (t) {
    case FrameType::kHello: return "HELLO";
    case FrameType::kWelcome: return "WELCOME";
    case FrameType::kRequest: return "REQUEST";
    case FrameType::kPages: return "PAGES";
    case FrameType::kVerify: return "VERIFY";
    case FrameType::kVerified: return "VERIFIED";
    case FrameType::kDone: return "DONE";
    case FrameType::kError: return "ERROR";
    case FrameType::kRdmaConnect: return "RDMA_CONNECT";
    case FrameType::kRdmaAccept: return "RDMA_ACCEPT";
    case FrameType::kDirtySync: return "DIRTY_SYNC";
    case FrameType::kDirty: return "DIRTY";
    case FrameType::kDirtyApplied: return "DIRTY_APPLIED";
  }
  return "UNKNOWN";
}

bool TokensEqual(const Token& a, const Token& b) {
  volatile uint8_t diff = 0;
  for (size_t i = 0; i < kTokenSize; ++i) diff = diff | (a[i] ^ b[i]);
  return diff == 0;
}

absl::StatusOr<Token> ParseToken(const std::string& hex) {
  if (hex.size() != 2 * kTokenSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("token must be ", 2 * kTokenSize, " hex digits, got ", hex.size()));
  }
  Token t{};
  for (size_t i = 0; i < kTokenSize; ++i) {
    unsigned v = 0;
    for (int k = 0; k < 2; ++k) {
      char c = hex[2 * i + k];
      unsigned d;
      if (c >= '0' && c <= '9')
        d = c - '0';
      else if (c >= 'a' && c <= 'f')
        d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        d = c - 'A' + 10;
      else
        return absl::InvalidArgumentError("token has a non-hex character");
      v = v * 16 + d;
    }
    t[i] = static_cast<uint8_t>(v);
  }
  return t;
}

std::string TokenToHex(const Token& t) {
  std::string s;
  for (uint8_t b : t) absl::StrAppendFormat(&s, "%02x", b);
  return s;
}

Token RandomToken() {
  Token t{};
  size_t got = 0;
  while (got < t.size()) {
    ssize_t n = getrandom(t.data() + got, t.size() - got, 0);
    if (n > 0) got += n;
  }
  return t;
}

void EncodeHello(const Hello& h, std::string* out) {
  PutHeader(out, FrameType::kHello, 8 + kTokenSize);
  Put32(out, h.version);
  out->push_back(static_cast<char>(h.channel));
  out->append(3, '\0');
  out->append(reinterpret_cast<const char*>(h.token.data()), kTokenSize);
}

void EncodeWelcome(const Welcome& w, std::string* out) {
  std::string p;
  Put32(&p, w.version);
  Put32(&p, static_cast<uint32_t>(w.regions.size()));
  for (const RegionInfo& r : w.regions) {
    Put64(&p, r.size);
    Put32(&p, r.page_size);
    Put16(&p, static_cast<uint16_t>(r.name.size()));
    p.append(r.name);
  }
  if (w.flags != 0) Put32(&p, w.flags);  // absent when zero: the version-1 WELCOME as it was
  PutHeader(out, FrameType::kWelcome, static_cast<uint32_t>(p.size()));
  out->append(p);
}

static void EncodeRange(FrameType t, const PageRange& r, std::string* out) {
  PutHeader(out, t, 16);
  Put32(out, r.region);
  Put32(out, r.count);
  Put64(out, r.first);
}

void EncodeRequest(const PageRange& r, std::string* out) {
  EncodeRange(FrameType::kRequest, r, out);
}
void EncodeVerify(const PageRange& r, std::string* out) { EncodeRange(FrameType::kVerify, r, out); }

void EncodeVerified(const PageRange& r, absl::Span<const uint32_t> crcs, std::string* out) {
  PutHeader(out, FrameType::kVerified, static_cast<uint32_t>(16 + 4 * crcs.size()));
  Put32(out, r.region);
  Put32(out, static_cast<uint32_t>(crcs.size()));
  Put64(out, r.first);
  for (uint32_t c : crcs) Put32(out, c);
}

void EncodeDone(std::string* out) { PutHeader(out, FrameType::kDone, 0); }

void EncodeDirtySync(const DirtySync& d, std::string* out) {
  // Without a throttle the frame is the original four bytes: a source that predates the
  // throttle still understands every request that does not ask for one.
  PutHeader(out, FrameType::kDirtySync, d.throttle == 0 ? 4 : 8);
  Put32(out, d.flags);
  if (d.throttle != 0) Put32(out, d.throttle);
}

void EncodeDirty(const DirtyFrame& d, std::string* out) {
  PutHeader(out, FrameType::kDirty, static_cast<uint32_t>(16 + 16 * d.ranges.size()));
  Put64(out, d.round);
  Put32(out, d.flags);
  Put32(out, static_cast<uint32_t>(d.ranges.size()));
  for (const PageRange& r : d.ranges) {
    Put32(out, r.region);
    Put32(out, r.count);
    Put64(out, r.first);
  }
}

void EncodeDirtyApplied(uint64_t round, std::string* out) {
  PutHeader(out, FrameType::kDirtyApplied, 8);
  Put64(out, round);
}

void EncodeError(const absl::Status& s, std::string* out) {
  std::string msg(s.message().substr(0, kMaxErrorMessage));
  PutHeader(out, FrameType::kError, static_cast<uint32_t>(6 + msg.size()));
  Put32(out, static_cast<uint32_t>(s.code()));
  Put16(out, static_cast<uint16_t>(msg.size()));
  out->append(msg);
}

void EncodePagesPrefix(const PagesHead& head, absl::Span<const PageDesc> descs, uint32_t page_size,
                       std::string* out) {
  uint64_t data = 0;
  for (const PageDesc& d : descs) data += d.zero() ? 0 : page_size;
  PutHeader(out, FrameType::kPages,
            static_cast<uint32_t>(kPagesHeadSize + kPageDescSize * descs.size() + data));
  Put32(out, head.region);
  Put32(out, head.count);
  Put64(out, head.first);
  for (const PageDesc& d : descs) {
    Put32(out, d.crc);
    Put32(out, d.flags);
  }
}

uint64_t MaxPayload(FrameType t) {
  switch (t) {
    case FrameType::kHello: return 8 + kTokenSize;
    case FrameType::kWelcome: return 12 + kMaxRegions * (14 + kMaxRegionName);
    case FrameType::kRequest:
    case FrameType::kVerify: return 16;
    case FrameType::kVerified: return 16 + 4ull * kMaxPagesPerFrame;
    case FrameType::kPages:
      return kPagesHeadSize + kPageDescSize * kMaxPagesPerFrame + kMaxPagesPayload;
    case FrameType::kDone: return 0;
    case FrameType::kError: return 6 + kMaxErrorMessage;
    case FrameType::kRdmaConnect: return kRdmaEndpointSize;
    case FrameType::kRdmaAccept: return kRdmaEndpointSize + 4 + 24ull * kMaxRegions;
    case FrameType::kDirtySync: return 8;
    case FrameType::kDirty: return 16 + 16ull * kMaxDirtyRanges;
    case FrameType::kDirtyApplied: return 8;
  }
  return 0;
}

absl::StatusOr<FrameHeader> DecodeHeader(absl::Span<const uint8_t> in) {
  if (in.size() < kHeaderSize) return Malformed("any", "truncated header");
  uint16_t magic;
  memcpy(&magic, in.data(), 2);
  if (magic != kFrameMagic) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "bad frame magic 0x%04x (expected 0x%04x): not a faultline peer, or the stream is "
        "out of sync",
        magic, kFrameMagic));
  }
  uint8_t type = in[2];
  if (type < static_cast<uint8_t>(FrameType::kHello) ||
      type > static_cast<uint8_t>(FrameType::kDirtyApplied)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown frame type ", type));
  }
  if (in[3] != 0) return Malformed("any", "reserved header byte is not zero");
  FrameHeader h;
  h.type = static_cast<FrameType>(type);
  memcpy(&h.length, in.data() + 4, 4);
  if (h.length > MaxPayload(h.type)) {
    return absl::InvalidArgumentError(absl::StrCat("oversized ", FrameTypeName(h.type), " frame: ",
                                                   h.length, " bytes, limit ", MaxPayload(h.type)));
  }
  return h;
}

absl::StatusOr<Hello> DecodeHello(absl::Span<const uint8_t> payload) {
  Reader r(payload);
  Hello h;
  uint8_t channel;
  uint8_t pad[3];
  if (payload.size() != 8 + kTokenSize || !r.Get(&h.version) || !r.Get(&channel) ||
      !r.Get(pad, 3) || !r.Get(h.token.data(), kTokenSize)) {
    return Malformed("HELLO", absl::StrCat("length ", payload.size()));
  }
  // The version is checked before anything else so a future peer gets the right message.
  if (h.version != kProtocolVersion) {
    return absl::FailedPreconditionError(absl::StrCat("protocol version mismatch: peer speaks ",
                                                      h.version, ", this side ", kProtocolVersion));
  }
  if (channel > 1) return Malformed("HELLO", absl::StrCat("unknown channel ", channel));
  h.channel = static_cast<Channel>(channel);
  return h;
}

absl::StatusOr<Welcome> DecodeWelcome(absl::Span<const uint8_t> payload) {
  Reader r(payload);
  Welcome w;
  uint32_t count;
  if (!r.Get(&w.version) || !r.Get(&count)) return Malformed("WELCOME", "truncated");
  if (w.version != kProtocolVersion) {
    return absl::FailedPreconditionError(absl::StrCat("protocol version mismatch: peer speaks ",
                                                      w.version, ", this side ", kProtocolVersion));
  }
  if (count == 0 || count > kMaxRegions) {
    return Malformed("WELCOME", absl::StrCat("region count ", count));
  }
  for (uint32_t i = 0; i < count; ++i) {
    RegionInfo ri;
    uint16_t len;
    if (!r.Get(&ri.size) || !r.Get(&ri.page_size) || !r.Get(&len)) {
      return Malformed("WELCOME", "truncated region");
    }
    if (len > kMaxRegionName || len > r.left()) return Malformed("WELCOME", "bad name length");
    ri.name.resize(len);
    r.Get(ri.name.data(), len);
    if (ri.page_size < 4096 || (ri.page_size & (ri.page_size - 1)) != 0 ||
        ri.page_size > (1u << 30)) {
      return Malformed("WELCOME", absl::StrCat("page size ", ri.page_size));
    }
    if (ri.size == 0 || ri.size % ri.page_size != 0) {
      return Malformed(
          "WELCOME", absl::StrCat("region size ", ri.size, " is not a multiple of ", ri.page_size));
    }
    w.regions.push_back(std::move(ri));
  }
  if (r.left() == 4) {
    r.Get(&w.flags);
    if (w.flags == 0 || (w.flags & ~kWelcomeLive) != 0) {
      return Malformed("WELCOME", absl::StrCat("flags ", w.flags));
    }
  }
  if (r.left() != 0) return Malformed("WELCOME", "trailing bytes");
  return w;
}

absl::StatusOr<PageRange> DecodeRange(absl::Span<const uint8_t> payload) {
  Reader r(payload);
  PageRange pr;
  if (payload.size() != 16 || !r.Get(&pr.region) || !r.Get(&pr.count) || !r.Get(&pr.first)) {
    return Malformed("REQUEST", absl::StrCat("length ", payload.size()));
  }
  return pr;
}

absl::StatusOr<ErrorFrame> DecodeError(absl::Span<const uint8_t> payload) {
  Reader r(payload);
  ErrorFrame e;
  uint16_t len;
  if (!r.Get(&e.code) || !r.Get(&len) || len != r.left()) return Malformed("ERROR", "length");
  e.message.resize(len);
  r.Get(e.message.data(), len);
  return e;
}

absl::StatusOr<PagesHead> DecodePagesHead(absl::Span<const uint8_t> head16) {
  Reader r(head16);
  PagesHead h;
  if (head16.size() != kPagesHeadSize || !r.Get(&h.region) || !r.Get(&h.count) ||
      !r.Get(&h.first)) {
    return Malformed("PAGES", "truncated head");
  }
  if (h.count == 0 || h.count > kMaxPagesPerFrame) {
    return Malformed("PAGES", absl::StrCat("page count ", h.count));
  }
  return h;
}

absl::StatusOr<std::vector<PageDesc>> DecodePageDescs(absl::Span<const uint8_t> descs,
                                                      uint32_t count, uint32_t page_size,
                                                      uint32_t frame_length) {
  if (descs.size() != uint64_t{count} * kPageDescSize) return Malformed("PAGES", "descriptors");
  Reader r(descs);
  std::vector<PageDesc> out(count);
  uint64_t data_pages = 0;
  for (PageDesc& d : out) {
    r.Get(&d.crc);
    r.Get(&d.flags);
    if (d.flags & ~kPageZero) return Malformed("PAGES", absl::StrCat("flags ", d.flags));
    if (!d.zero()) ++data_pages;
  }
  uint64_t want = kPagesHeadSize + descs.size() + data_pages * page_size;
  if (data_pages * page_size > kMaxPagesPayload || want != frame_length) {
    return Malformed("PAGES",
                     absl::StrCat("frame length ", frame_length, " but descriptors need ", want));
  }
  return out;
}

absl::StatusOr<std::vector<uint32_t>> DecodeVerified(absl::Span<const uint8_t> payload,
                                                     PageRange* range) {
  Reader r(payload);
  if (!r.Get(&range->region) || !r.Get(&range->count) || !r.Get(&range->first) ||
      r.left() != 4ull * range->count || range->count > kMaxPagesPerFrame) {
    return Malformed("VERIFIED", "length");
  }
  std::vector<uint32_t> crcs(range->count);
  for (uint32_t& c : crcs) r.Get(&c);
  return crcs;
}

absl::Status CheckRange(const PageRange& r, absl::Span<const RegionInfo> regions,
                        uint32_t max_count) {
  if (r.region >= regions.size()) {
    return absl::OutOfRangeError(
        absl::StrCat("request for region ", r.region, ": only ", regions.size(), " regions"));
  }
  const RegionInfo& ri = regions[r.region];
  if (r.count == 0 || r.count > max_count) {
    return absl::OutOfRangeError(
        absl::StrCat("request for ", r.count, " pages (1..", max_count, " allowed)"));
  }
  if (r.first >= ri.pages() || ri.pages() - r.first < r.count) {
    return absl::OutOfRangeError(absl::StrCat("request for pages [", r.first, ", ",
                                              r.first + r.count, ") outside region '", ri.name,
                                              "' of ", ri.pages(), " pages"));
  }
  return absl::OkStatus();
}

absl::Status PeerError(const ErrorFrame& e) {
  auto code = static_cast<absl::StatusCode>(e.code);
  if (e.code == 0 || e.code > 16) code = absl::StatusCode::kUnknown;
  return absl::Status(code, absl::StrCat("peer reported: ", e.message));
}

absl::StatusOr<DirtySync> DecodeDirtySync(absl::Span<const uint8_t> payload) {
  Reader r(payload);
  DirtySync d;
  if ((payload.size() != 4 && payload.size() != 8) || !r.Get(&d.flags) ||
      (payload.size() == 8 && !r.Get(&d.throttle))) {
    return Malformed("DIRTY_SYNC", absl::StrCat("length ", payload.size()));
  }
  if (d.flags & ~kDirtyFinal) {
    return Malformed("DIRTY_SYNC", absl::StrCat("unknown flags ", d.flags));
  }
  if (d.throttle > kMaxThrottle) {
    return Malformed("DIRTY_SYNC",
                     absl::StrCat("throttle ", d.throttle, " % (at most ", kMaxThrottle, ")"));
  }
  return d;
}

absl::StatusOr<DirtyFrame> DecodeDirty(absl::Span<const uint8_t> payload) {
  Reader r(payload);
  DirtyFrame d;
  uint32_t n;
  if (!r.Get(&d.round) || !r.Get(&d.flags) || !r.Get(&n)) return Malformed("DIRTY", "truncated");
  if (d.flags & ~(kDirtyFinal | kDirtyMore | kDirtyNoThrottle)) {
    return Malformed("DIRTY", absl::StrCat("unknown flags ", d.flags));
  }
  if (n > kMaxDirtyRanges || r.left() != 16ull * n) {
    return Malformed("DIRTY", absl::StrCat(n, " ranges in ", payload.size(), " bytes"));
  }
  d.ranges.resize(n);
  for (PageRange& pr : d.ranges) {
    r.Get(&pr.region);
    r.Get(&pr.count);
    r.Get(&pr.first);
  }
  return d;
}

absl::StatusOr<uint64_t> DecodeDirtyApplied(absl::Span<const uint8_t> payload) {
  Reader r(payload);
  uint64_t round;
  if (payload.size() != 8 || !r.Get(&round)) {
    return Malformed("DIRTY_APPLIED", absl::StrCat("length ", payload.size()));
  }
  return round;
}

absl::Status CheckDirtyRange(const PageRange& r, absl::Span<const RegionInfo> regions) {
  if (r.region >= regions.size()) {
    return absl::OutOfRangeError(
        absl::StrCat("dirty range in region ", r.region, " of ", regions.size()));
  }
  const uint64_t pages = regions[r.region].pages();
  if (r.count == 0 || r.first >= pages || r.count > pages - r.first) {
    return absl::OutOfRangeError(absl::StrCat("dirty pages [", r.first, ", +", r.count,
                                              ") outside region ", r.region, " (", pages,
                                              " pages)"));
  }
  return absl::OkStatus();
}

}  // namespace faultline
