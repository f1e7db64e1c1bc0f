#include "transport/protocol.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

absl::Span<const uint8_t> Bytes(const std::string& s, size_t skip = 0) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()) + skip, s.size() - skip);
}

TEST(Protocol, HelloRoundTrip) {
  Hello h;
  h.channel = Channel::kBulk;
  h.token = RandomToken();
  std::string f;
  EncodeHello(h, &f);
  absl::StatusOr<FrameHeader> hdr = DecodeHeader(Bytes(f));
  ASSERT_TRUE(hdr.ok()) << hdr.status();
  EXPECT_EQ(hdr->type, FrameType::kHello);
  EXPECT_EQ(hdr->length, f.size() - kHeaderSize);
  absl::StatusOr<Hello> d = DecodeHello(Bytes(f, kHeaderSize));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->channel, Channel::kBulk);
  EXPECT_TRUE(TokensEqual(d->token, h.token));
}

TEST(Protocol, WrongVersionIsNamed) {
  Hello h;
  h.version = 7;
  std::string f;
  EncodeHello(h, &f);
  absl::StatusOr<Hello> d = DecodeHello(Bytes(f, kHeaderSize));
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(d.status().message().find("version mismatch: peer speaks 7"), std::string::npos)
      << d.status();
}

TEST(Protocol, HeaderRejectsGarbageAndOversize) {
  std::string garbage = "GET / HTTP/1.1\r\n";
  absl::StatusOr<FrameHeader> h = DecodeHeader(Bytes(garbage));
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("bad frame magic"), std::string::npos);

  std::string f;
  EncodeDone(&f);
  f[2] = 99;  // unknown type
  EXPECT_FALSE(DecodeHeader(Bytes(f)).ok());
  f.clear();
  EncodeDone(&f);
  f[3] = 1;  // reserved byte
  EXPECT_FALSE(DecodeHeader(Bytes(f)).ok());

  f.clear();
  EncodeRequest({0, 1, 0}, &f);
  uint32_t huge = 1u << 30;
  memcpy(&f[4], &huge, 4);
  h = DecodeHeader(Bytes(f));
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("oversized REQUEST"), std::string::npos) << h.status();

  EXPECT_FALSE(DecodeHeader(Bytes(std::string(5, '\0'))).ok());  // truncated
}

TEST(Protocol, WelcomeRoundTripAndValidation) {
  Welcome w;
  w.regions = {{"ram", 1ull << 30, 4096}, {"huge", 64ull << 20, 2u << 20}};
  std::string f;
  EncodeWelcome(w, &f);
  absl::StatusOr<Welcome> d = DecodeWelcome(Bytes(f, kHeaderSize));
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->regions.size(), 2u);
  EXPECT_EQ(d->regions[1].name, "huge");
  EXPECT_EQ(d->regions[1].pages(), 32u);

  // Every truncation fails cleanly.
  for (size_t n = kHeaderSize; n < f.size(); ++n) {
    const std::string cut = f.substr(0, n);
    EXPECT_FALSE(DecodeWelcome(Bytes(cut, kHeaderSize)).ok()) << n;
  }
  // Bad page size and size not a multiple of it.
  for (auto bad :
       {RegionInfo{"x", 4096 * 3, 3000}, RegionInfo{"x", 5000, 4096}, RegionInfo{"x", 0, 4096}}) {
    Welcome b;
    b.regions = {bad};
    std::string g;
    EncodeWelcome(b, &g);
    EXPECT_FALSE(DecodeWelcome(Bytes(g, kHeaderSize)).ok());
  }
  Welcome none;
  std::string g;
  EncodeWelcome(none, &g);
  EXPECT_FALSE(DecodeWelcome(Bytes(g, kHeaderSize)).ok());

  // A live source's WELCOME carries its flags; a frozen one's is the version-1 frame as it was.
  EXPECT_EQ(d->flags, 0u);
  Welcome live = w;
  live.flags = kWelcomeLive;
  std::string l;
  EncodeWelcome(live, &l);
  EXPECT_EQ(l.size(), f.size() + 4);
  absl::StatusOr<Welcome> dl = DecodeWelcome(Bytes(l, kHeaderSize));
  ASSERT_TRUE(dl.ok()) << dl.status();
  EXPECT_EQ(dl->flags, kWelcomeLive);
  Welcome odd = w;
  odd.flags = 6;  // unknown flags are refused, not ignored
  std::string o;
  EncodeWelcome(odd, &o);
  EXPECT_FALSE(DecodeWelcome(Bytes(o, kHeaderSize)).ok());
}

TEST(Protocol, RangeChecks) {
  std::vector<RegionInfo> regions = {{"ram", 16 * 4096, 4096}};
  EXPECT_TRUE(CheckRange({0, 16, 0}, regions, 1024).ok());
  EXPECT_TRUE(CheckRange({0, 1, 15}, regions, 1024).ok());
  EXPECT_EQ(CheckRange({0, 2, 15}, regions, 1024).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(CheckRange({0, 1, 16}, regions, 1024).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(CheckRange({1, 1, 0}, regions, 1024).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(CheckRange({0, 0, 0}, regions, 1024).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(CheckRange({0, 1, UINT64_MAX}, regions, 1024).code(),
            absl::StatusCode::kOutOfRange);  // no overflow
}

TEST(Protocol, PagesDescriptorsMustMatchLength) {
  std::vector<PageDesc> descs(3);
  descs[1].flags = kPageZero;
  std::string f;
  EncodePagesPrefix({0, 3, 10}, descs, 4096, &f);
  absl::StatusOr<FrameHeader> h = DecodeHeader(Bytes(f));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->length, kPagesHeadSize + 3 * kPageDescSize + 2 * 4096);
  const std::string head_str = f.substr(kHeaderSize, kPagesHeadSize);
  absl::StatusOr<PagesHead> head = DecodePagesHead(Bytes(head_str));
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->first, 10u);
  const std::string desc_str = f.substr(kHeaderSize + kPagesHeadSize);
  auto desc_bytes = Bytes(desc_str);
  absl::StatusOr<std::vector<PageDesc>> d = DecodePageDescs(desc_bytes, 3, 4096, h->length);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE((*d)[1].zero());
  EXPECT_FALSE(DecodePageDescs(desc_bytes, 3, 4096, h->length + 1).ok());
  EXPECT_FALSE(DecodePageDescs(desc_bytes, 3, 8192, h->length).ok());
  std::string bad_flags = f;
  bad_flags[kHeaderSize + kPagesHeadSize + 4] = 2;
  const std::string bad_desc = bad_flags.substr(kHeaderSize + kPagesHeadSize);
  EXPECT_FALSE(DecodePageDescs(Bytes(bad_desc), 3, 4096, h->length).ok());
  // Count limits.
  std::string zero_count;
  EncodePagesPrefix({0, 0, 0}, {}, 4096, &zero_count);
  const std::string zc = zero_count.substr(kHeaderSize, kPagesHeadSize);
  EXPECT_FALSE(DecodePagesHead(Bytes(zc)).ok());
}

TEST(Protocol, ErrorFrameCarriesCodeAndMessage) {
  std::string f;
  EncodeError(absl::PermissionDeniedError("wrong token"), &f);
  absl::StatusOr<ErrorFrame> e = DecodeError(Bytes(f, kHeaderSize));
  ASSERT_TRUE(e.ok());
  absl::Status s = PeerError(*e);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(s.message().find("wrong token"), std::string::npos);
  const std::string cut = f.substr(0, f.size() - 1);
  EXPECT_FALSE(DecodeError(Bytes(cut, kHeaderSize)).ok());
}

TEST(Protocol, VerifiedRoundTrip) {
  std::string f;
  std::vector<uint32_t> crcs = {1, 2, 3};
  EncodeVerified({2, 3, 40}, crcs, &f);
  PageRange r;
  absl::StatusOr<std::vector<uint32_t>> d = DecodeVerified(Bytes(f, kHeaderSize), &r);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, crcs);
  EXPECT_EQ(r.first, 40u);
  const std::string cut = f.substr(0, f.size() - 2);
  EXPECT_FALSE(DecodeVerified(Bytes(cut, kHeaderSize), &r).ok());
}

TEST(Protocol, DirtyFramesRoundTripAndValidation) {
  std::string f;
  EncodeDirtySync({kDirtyFinal, 0}, &f);
  absl::StatusOr<FrameHeader> h = DecodeHeader(Bytes(f));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->type, FrameType::kDirtySync);
  EXPECT_EQ(h->length, 4u);  // no throttle: the original frame, which older sources read
  absl::StatusOr<DirtySync> sync = DecodeDirtySync(Bytes(f, kHeaderSize));
  ASSERT_TRUE(sync.ok());
  EXPECT_EQ(sync->flags, kDirtyFinal);
  EXPECT_EQ(sync->throttle, 0u);
  std::string bad_flags;
  EncodeDirtySync({8, 0}, &bad_flags);
  EXPECT_FALSE(DecodeDirtySync(Bytes(bad_flags, kHeaderSize)).ok());
  // With a throttle: eight bytes, percent checked.
  std::string throttled;
  EncodeDirtySync({0, 40}, &throttled);
  h = DecodeHeader(Bytes(throttled));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->length, 8u);
  sync = DecodeDirtySync(Bytes(throttled, kHeaderSize));
  ASSERT_TRUE(sync.ok());
  EXPECT_EQ(sync->flags, 0u);
  EXPECT_EQ(sync->throttle, 40u);
  std::string too_much;
  EncodeDirtySync({0, kMaxThrottle + 1}, &too_much);
  absl::Status s = DecodeDirtySync(Bytes(too_much, kHeaderSize)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), ::testing::HasSubstr("throttle 100 %"));
  EXPECT_FALSE(DecodeDirtySync(Bytes(throttled.substr(0, throttled.size() - 2), kHeaderSize)).ok());

  DirtyFrame d;
  d.round = 7;
  d.flags = kDirtyMore;
  d.ranges = {{0, 3, 10}, {1, 1u << 20, 0}};
  f.clear();
  EncodeDirty(d, &f);
  ASSERT_TRUE(DecodeHeader(Bytes(f)).ok());
  absl::StatusOr<DirtyFrame> back = DecodeDirty(Bytes(f, kHeaderSize));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->round, 7u);
  EXPECT_EQ(back->flags, kDirtyMore);
  ASSERT_EQ(back->ranges.size(), 2u);
  EXPECT_EQ(back->ranges[1].count, 1u << 20);
  // A count that does not match the bytes, or a cut frame, is refused.
  std::string cut = f.substr(0, f.size() - 1);
  EXPECT_FALSE(DecodeDirty(Bytes(cut, kHeaderSize)).ok());
  std::string lying = f;
  lying[kHeaderSize + 12] = 3;  // n = 3, two ranges present
  EXPECT_FALSE(DecodeDirty(Bytes(lying, kHeaderSize)).ok());

  f.clear();
  EncodeDirtyApplied(7, &f);
  absl::StatusOr<uint64_t> applied = DecodeDirtyApplied(Bytes(f, kHeaderSize));
  ASSERT_TRUE(applied.ok());
  EXPECT_EQ(*applied, 7u);

  // Ranges may be long (a whole region) but never leave it.
  std::vector<RegionInfo> regions = {{"ram", 16 * 4096, 4096}};
  EXPECT_TRUE(CheckDirtyRange({0, 16, 0}, regions).ok());
  EXPECT_FALSE(CheckDirtyRange({0, 17, 0}, regions).ok());
  EXPECT_FALSE(CheckDirtyRange({0, 1, 16}, regions).ok());
  EXPECT_FALSE(CheckDirtyRange({0, 0, 3}, regions).ok());
  EXPECT_FALSE(CheckDirtyRange({1, 1, 0}, regions).ok());
  EXPECT_FALSE(CheckDirtyRange({0, 2, UINT64_MAX}, regions).ok());
}

TEST(Token, ParseAndCompare) {
  Token t = RandomToken();
  absl::StatusOr<Token> p = ParseToken(TokenToHex(t));
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(TokensEqual(*p, t));
  Token u = t;
  u[31] ^= 1;
  EXPECT_FALSE(TokensEqual(u, t));
  EXPECT_FALSE(ParseToken("abc").ok());
  EXPECT_FALSE(ParseToken(std::string(64, 'g')).ok());
}

}  // namespace
}  // namespace faultline
