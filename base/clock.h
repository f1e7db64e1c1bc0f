// MonotonicNowNs: CLOCK_MONOTONIC in nanoseconds (the vDSO call, ~20 ns): every latency in
// faultline is a difference of two of these.
#ifndef FAULTLINE_BASE_CLOCK_H_
#define FAULTLINE_BASE_CLOCK_H_

#include <time.h>

#include <cstdint>

namespace faultline {

inline uint64_t MonotonicNowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace faultline

#endif  // FAULTLINE_BASE_CLOCK_H_
