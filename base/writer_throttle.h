// WriterThrottle: slows a writing thread down the way QEMU's vCPU throttle (auto-converge)
// does — for every `slice` the thread runs, it sleeps percent / (100 - percent) slices — so
// that warm-up's rounds can catch up with a guest that rewrites its pages faster than they
// move (transport/dirty_tracker.h, Throttle()). For the thread guests faultline runs itself
// (`faultline local`, tests); a VMM throttles its vCPUs on its own.
//
// Thread-safety: Set() and percent() from any thread; Pace() from the throttled thread only
// (it calls it between units of work; one relaxed load when unthrottled).
#ifndef FAULTLINE_BASE_WRITER_THROTTLE_H_
#define FAULTLINE_BASE_WRITER_THROTTLE_H_

#include <atomic>
#include <cstdint>
#include <functional>

namespace faultline {

// The rule every throttle here follows (QEMU's cpu_throttle): a percent above 99 is 99, and at
// `percent` the throttled guest or thread sleeps percent / (100 - percent) slices for every
// slice it runs. VmThrottle (qemu-integration/vmm/vm_throttle.h) pauses a VM by it too.
inline uint32_t ClampThrottle(uint32_t percent) { return percent > 99 ? 99 : percent; }
inline uint64_t ThrottleSleepNs(uint64_t slice_ns, uint32_t percent) {
  const uint32_t p = ClampThrottle(percent);
  return slice_ns * p / (100 - p);
}

class WriterThrottle {
 public:
  // `now_ns` and `sleep_ns` are the monotonic clock and a sleep unless a test swaps them.
  explicit WriterThrottle(uint64_t slice_ns = 10'000'000,
                          std::function<uint64_t()> now_ns = nullptr,
                          std::function<void(uint64_t)> sleep_ns = nullptr);

  // 0 (run free) .. 99; more is taken as 99.
  void Set(uint32_t percent);
  uint32_t percent() const { return percent_.load(std::memory_order_relaxed); }
  // Sleeps if the thread has run a whole slice since it last slept (or was throttled).
  void Pace();

 private:
  const uint64_t slice_ns_;
  std::function<uint64_t()> now_ns_;
  std::function<void(uint64_t)> sleep_ns_;
  std::atomic<uint32_t> percent_{0};
  uint64_t running_since_ = 0;  // throttled thread only; 0: not measuring
};

}  // namespace faultline

#endif  // FAULTLINE_BASE_WRITER_THROTTLE_H_
