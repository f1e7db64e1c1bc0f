#include "engine/latency_histogram.h"

#include "gtest/gtest.h"

namespace faultline {
namespace {

TEST(LatencyHistogram, BucketsBoundValues) {
  for (uint64_t v : {0ull, 1ull, 7ull, 8ull, 9ull, 1000ull, 12345ull, 1ull << 40}) {
    int b = LatencyHistogram::BucketOf(v);
    EXPECT_GE(LatencyHistogram::BucketUpper(b), v) << v;
    if (b > 0) EXPECT_LT(LatencyHistogram::BucketUpper(b - 1), v) << v;
  }
}

TEST(LatencyHistogram, PercentilesWithinBucketError) {
  LatencyHistogram h;
  for (uint64_t i = 1; i <= 1000; ++i) h.Record(i * 1000);  // 1µs .. 1ms
  EXPECT_EQ(h.count(), 1000u);
  EXPECT_EQ(h.min(), 1000u);
  EXPECT_EQ(h.max(), 1000000u);
  uint64_t p50 = h.Percentile(0.5);
  EXPECT_GE(p50, 500000u);
  EXPECT_LE(p50, 500000u * 1125 / 1000);
  EXPECT_EQ(h.Percentile(1.0), 1000000u);
  LatencyHistogram g;
  g.Record(5);
  h.Merge(g);
  EXPECT_EQ(h.min(), 5u);
  EXPECT_EQ(h.count(), 1001u);
}

TEST(LatencyHistogram, EmptyIsZero) {
  LatencyHistogram h;
  EXPECT_EQ(h.Percentile(0.5), 0u);
  EXPECT_EQ(h.Summary(), "no samples");
}

}  // namespace
}  // namespace faultline
