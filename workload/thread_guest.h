// ThreadGuest: a stand-in guest made of host threads that read guest memory while it
// arrives — one thread per access pattern — and time every touch. A touch that takes longer
// than a plain memory read was (almost certainly) a post-copy fault seen from the guest.
#ifndef FAULTLINE_WORKLOAD_THREAD_GUEST_H_
#define FAULTLINE_WORKLOAD_THREAD_GUEST_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/latency_histogram.h"

namespace faultline {

enum class AccessPattern { kSequential, kRandom, kHotSet };
const char* AccessPatternName(AccessPattern p);
// "seq,random,hot" → patterns.
absl::StatusOr<std::vector<AccessPattern>> ParsePatterns(const std::string& s);

struct GuestOptions {
  std::vector<AccessPattern> threads = {AccessPattern::kSequential, AccessPattern::kRandom,
                                        AccessPattern::kHotSet};
  uint64_t touches_per_thread = 20000;  // each thread stops after this many touches
  uint32_t hot_percent = 10;            // hot set: 10% of pages take 90% of touches
  uint64_t seed = 7;
  uint64_t slow_touch_ns = 2000;        // a touch slower than this counts as a fault
};

class ThreadGuest {
 public:
  // Starts the threads over [base, base+size); pages of `page_size`.
  ThreadGuest(const uint8_t* base, uint64_t size, uint32_t page_size, const GuestOptions& opts);
  ~ThreadGuest();
  void Stop();  // asks the threads to finish early
  void Join();
  // Touches slower than slow_touch_ns (guest-observed fault latency).
  LatencyHistogram SlowTouches() const;
  uint64_t touches() const { return touches_.load(); }
  // XOR of every word read: keeps the reads from being optimised away.
  uint64_t sink() const { return sink_.load(); }

 private:
  void Run(AccessPattern p, uint64_t seed);
  const uint8_t* base_;
  uint64_t pages_;
  uint32_t page_size_;
  GuestOptions opts_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> touches_{0}, sink_{0};
  mutable std::mutex mu_;
  LatencyHistogram slow_;
  std::vector<std::thread> threads_;
};

}  // namespace faultline

#endif  // FAULTLINE_WORKLOAD_THREAD_GUEST_H_
