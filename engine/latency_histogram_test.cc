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

// QEMU's postcopy-latency-dist buckets: [2^N µs, 2^(N+1) µs).
TEST(LatencyHistogram, QemuLog2MicrosecondBuckets) {
  EXPECT_EQ(LatencyHistogram::Log2UsBucketOf(0), 0);
  EXPECT_EQ(LatencyHistogram::Log2UsBucketOf(999), 0);   // < 1 µs
  EXPECT_EQ(LatencyHistogram::Log2UsBucketOf(1999), 0);  // 1.999 µs
  EXPECT_EQ(LatencyHistogram::Log2UsBucketOf(2000), 1);
  EXPECT_EQ(LatencyHistogram::Log2UsBucketOf(256000), 8);  // [256 µs, 512 µs)
  EXPECT_EQ(LatencyHistogram::Log2UsBucketOf(511999), 8);
  EXPECT_EQ(LatencyHistogram::Log2UsBucketOf(512000), 9);
  EXPECT_EQ(LatencyHistogram::Log2UsBucketOf(uint64_t{1} << 50), 23);  // open-ended
  LatencyHistogram h, g;
  h.Record(300000);
  h.Record(40000);
  g.Record(300000);
  h.Merge(g);
  EXPECT_EQ(h.log2_us()[8], 2u);
  EXPECT_EQ(h.log2_us()[5], 1u);
}

}  // namespace
}  // namespace faultline
