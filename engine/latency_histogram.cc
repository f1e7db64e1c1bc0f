#include "engine/latency_histogram.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace faultline {

int LatencyHistogram::BucketOf(uint64_t ns) {
  if (ns < (1u << kSubBits)) return static_cast<int>(ns);
  int e = 63 - __builtin_clzll(ns);  // >= kSubBits
  uint64_t sub = (ns >> (e - kSubBits)) & ((1u << kSubBits) - 1);
  return ((e - kSubBits + 1) << kSubBits) + static_cast<int>(sub);
}

uint64_t LatencyHistogram::BucketUpper(int b) {
  if (b < (1 << kSubBits)) return static_cast<uint64_t>(b);
  int e = (b >> kSubBits) + kSubBits - 1;
  uint64_t sub = b & ((1 << kSubBits) - 1);
  uint64_t lower = (uint64_t{1} << e) | (sub << (e - kSubBits));
  return lower + (uint64_t{1} << (e - kSubBits)) - 1;
}

int LatencyHistogram::Log2UsBucketOf(uint64_t ns) {
  const uint64_t us = ns / 1000;
  if (us == 0) return 0;
  const int b = 63 - __builtin_clzll(us);
  return b < kLog2UsBuckets ? b : kLog2UsBuckets - 1;
}

void LatencyHistogram::Record(uint64_t ns) {
  ++buckets_[BucketOf(ns)];
  ++log2_us_[Log2UsBucketOf(ns)];
  ++count_;
  sum_ += ns;
  min_ = std::min(min_, ns);
  max_ = std::max(max_, ns);
}

void LatencyHistogram::Merge(const LatencyHistogram& o) {
  for (int i = 0; i < kBuckets; ++i) buckets_[i] += o.buckets_[i];
  for (int i = 0; i < kLog2UsBuckets; ++i) log2_us_[i] += o.log2_us_[i];
  count_ += o.count_;
  sum_ += o.sum_;
  min_ = std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
}

uint64_t LatencyHistogram::Percentile(double q) const {
  if (count_ == 0) return 0;
  uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(count_ - 1)) + 1;
  uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += buckets_[b];
    if (seen >= rank) return std::clamp(BucketUpper(b), min_, max_);
  }
  return max_;
}

std::string FormatNanos(uint64_t ns) {
  if (ns < 10'000) return absl::StrFormat("%.1fµs", ns / 1e3);
  if (ns < 10'000'000) return absl::StrFormat("%.0fµs", ns / 1e3);
  if (ns < 10'000'000'000ull) return absl::StrFormat("%.1fms", ns / 1e6);
  return absl::StrFormat("%.2fs", ns / 1e9);
}

std::string LatencyHistogram::Summary() const {
  if (count_ == 0) return "no samples";
  return absl::StrFormat("n=%d p50 %s p90 %s p99 %s max %s", count_, FormatNanos(Percentile(0.5)),
                         FormatNanos(Percentile(0.9)), FormatNanos(Percentile(0.99)),
                         FormatNanos(max_));
}

}  // namespace faultline
