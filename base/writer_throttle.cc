#include "base/writer_throttle.h"

#include "absl/time/clock.h"
#include "base/clock.h"

namespace faultline {

WriterThrottle::WriterThrottle(uint64_t slice_ns, std::function<uint64_t()> now_ns,
                               std::function<void(uint64_t)> sleep_ns)
    : slice_ns_(slice_ns), now_ns_(std::move(now_ns)), sleep_ns_(std::move(sleep_ns)) {
  if (!now_ns_) now_ns_ = MonotonicNowNs;
  if (!sleep_ns_) {
    sleep_ns_ = [](uint64_t ns) { absl::SleepFor(absl::Nanoseconds(ns)); };
  }
}

void WriterThrottle::Set(uint32_t percent) {
  percent_.store(ClampThrottle(percent), std::memory_order_relaxed);
}

void WriterThrottle::Pace() {
  const uint32_t p = percent_.load(std::memory_order_relaxed);
  if (p == 0) {
    running_since_ = 0;
    return;
  }
  const uint64_t now = now_ns_();
  if (running_since_ == 0) {  // throttled from now on: the first slice starts here
    running_since_ = now;
    return;
  }
  if (now - running_since_ < slice_ns_) return;
  sleep_ns_(ThrottleSleepNs(slice_ns_, p));
  running_since_ = now_ns_();
}

}  // namespace faultline
