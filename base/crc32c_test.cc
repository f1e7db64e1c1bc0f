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
