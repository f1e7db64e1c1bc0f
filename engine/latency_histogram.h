// LatencyHistogram: log-linear buckets (8 per power of two, ≤12.5% error) over nanoseconds,
// plus exact count, min, max and sum — and the same latencies in QEMU's own post-copy buckets
// (query-migrate's postcopy-latency-dist, QEMU ≥ 10.1: bucket N counts latencies in
// [2^N µs, 2^(N+1) µs), below 1 µs in bucket 0, the last bucket open-ended), so the two
// distributions compare bucket by bucket. Not thread-safe: callers serialise (see FaultStats).
#ifndef FAULTLINE_ENGINE_LATENCY_HISTOGRAM_H_
#define FAULTLINE_ENGINE_LATENCY_HISTOGRAM_H_

#include <array>
#include <cstdint>
#include <string>

namespace faultline {

class LatencyHistogram {
 public:
  static constexpr int kSubBits = 3;
  static constexpr int kBuckets = (64 - kSubBits + 1) << kSubBits;

  void Record(uint64_t ns);
  void Merge(const LatencyHistogram& o);
  uint64_t count() const { return count_; }
  uint64_t min() const { return count_ ? min_ : 0; }
  uint64_t max() const { return max_; }
  double mean() const { return count_ ? static_cast<double>(sum_) / count_ : 0; }
  // The q-quantile (0..1), as the upper bound of its bucket, clamped to [min, max].
  uint64_t Percentile(double q) const;
  // "p50 12.3µs p90 … p99 … max …"
  std::string Summary() const;

  static int BucketOf(uint64_t ns);
  static uint64_t BucketUpper(int b);

  // QEMU's buckets: [2^N µs, 2^(N+1) µs) for N in [0, kLog2UsBuckets).
  static constexpr int kLog2UsBuckets = 24;
  static int Log2UsBucketOf(uint64_t ns);
  const std::array<uint64_t, kLog2UsBuckets>& log2_us() const { return log2_us_; }

 private:
  std::array<uint64_t, kBuckets> buckets_{};
  std::array<uint64_t, kLog2UsBuckets> log2_us_{};
  uint64_t count_ = 0, min_ = UINT64_MAX, max_ = 0, sum_ = 0;
};

std::string FormatNanos(uint64_t ns);

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_LATENCY_HISTOGRAM_H_
