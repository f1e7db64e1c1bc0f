#include "base/crc32c.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace faultline {
namespace {

TEST(Crc32c, KnownVectors) {
  // RFC 3720 appendix B.4 test vectors.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff), inc(32);
  for (int i = 0; i < 32; ++i) inc[i] = i;
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8a9136aau);
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62a8ab43u);
  EXPECT_EQ(Crc32c(inc.data(), inc.size()), 0x46dd794eu);
  const std::string s = "123456789";
  EXPECT_EQ(Crc32c(s.data(), s.size()), 0xe3069283u);
}

TEST(Crc32c, IncrementalEqualsWhole) {
  std::vector<uint8_t> buf(4099);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i * 7 + 3);
  uint32_t whole = Crc32c(buf.data(), buf.size());
  uint32_t part = Crc32c(buf.data(), 1001);
  part = Crc32c(buf.data() + 1001, buf.size() - 1001, part);
  EXPECT_EQ(whole, part);
  buf[2000] ^= 1;
  EXPECT_NE(whole, Crc32c(buf.data(), buf.size()));
}

// Bit-at-a-time reference: the definition, nothing shared with the implementation.
uint32_t ReferenceCrc32c(const uint8_t* p, size_t n) {
  uint32_t crc = ~0u;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ ((crc & 1) ? 0x82f63b78u : 0);
  }
  return ~crc;
}

TEST(Crc32c, MatchesReferenceAcrossLaneBoundaries) {
  // Sizes around the 3 x 1360-byte blocks of the three-stream path, a page, and odd offsets.
  std::vector<uint8_t> buf(3 * 4096 + 64);
  uint32_t x = 12345;
  for (auto& b : buf) b = static_cast<uint8_t>((x = x * 1103515245 + 12345) >> 16);
  for (size_t n : {0, 1, 7, 8, 4079, 4080, 4081, 4095, 4096, 4097, 8160, 8192, 12288}) {
    for (size_t off : {0, 1, 3}) {
      EXPECT_EQ(Crc32c(buf.data() + off, n), ReferenceCrc32c(buf.data() + off, n))
          << "n=" << n << " off=" << off;
    }
  }
}

TEST(IsZeroPage, DetectsAnyNonZeroByte) {
  std::vector<uint64_t> page(512, 0);
  EXPECT_TRUE(IsZeroPage(page.data(), 4096));
  for (size_t word : {0, 7, 8, 300, 511}) {
    page[word] = 1;
    EXPECT_FALSE(IsZeroPage(page.data(), 4096)) << word;
    page[word] = 0;
  }
}

}  // namespace
}  // namespace faultline
