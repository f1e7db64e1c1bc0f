// ThreadVmm: a VMM in miniature for tests and benchmarks of the host daemon — guest RAM of a
// kind (memfd registered MISSING|MINOR, or anonymous MISSING) with its own userfaultfd, handed
// over to a faultline daemon (naming a migration), a thread guest reading it while post-copy
// fills it, and at the end every page compared with the source's known pattern
// (workload/pattern.h), as a real VMM's post-copy test would compare with the source.
#ifndef FAULTLINE_TESTS_TESTING_THREAD_VMM_H_
#define FAULTLINE_TESTS_TESTING_THREAD_VMM_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/latency_histogram.h"
#include "engine/region.h"
#include "nlohmann/json.hpp"
#include "workload/pattern.h"
#include "workload/thread_guest.h"

namespace faultline {

struct ThreadVmmOptions {
  std::string socket;     // the daemon's hand-off socket (shared, or the migration's own)
  std::string migration;  // named in the hello ("" : none)
  RegionKind kind = RegionKind::kMemfd;
  uint64_t size = 16u << 20;
  PatternSpec pattern;  // what the source serves
  GuestOptions guest;   // defaults: the three access patterns
  absl::Duration timeout = absl::Seconds(120);
};

struct ThreadVmmResult {
  nlohmann::json stats;  // faultline's "complete" report
  uint64_t verified_pages = 0, mismatches = 0;
  double seconds = 0;              // hand-off to complete
  LatencyHistogram guest_latency;  // the guest's slow touches
};

// Runs one migration end to end; an error if the hand-off was refused, the migration failed,
// or it did not complete in time (the VMM's view: what faultline told it).
absl::StatusOr<ThreadVmmResult> RunThreadVmm(const ThreadVmmOptions& o);

}  // namespace faultline

#endif  // FAULTLINE_TESTS_TESTING_THREAD_VMM_H_
