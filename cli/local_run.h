// A self-contained post-copy migration on one machine: a source page server (in a child
// process by default) serving memory filled with a known pattern, and a destination engine
// over real userfaultfd memory of the chosen kind, with a thread guest reading it while it
// arrives. Ends by comparing every destination page with the source, byte for byte.
#ifndef FAULTLINE_CLI_LOCAL_RUN_H_
#define FAULTLINE_CLI_LOCAL_RUN_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/bulk_threads.h"
#include "engine/engine.h"
#include "engine/latency_histogram.h"
#include "engine/region.h"
#include "workload/pattern.h"
#include "workload/thread_guest.h"

namespace faultline {

struct LocalRunOptions {
  MemoryKind kind = MemoryKind::kMemfd;
  uint64_t size = 1ull << 30;
  bool run_guest = true;
  GuestOptions guest;
  EngineOptions engine;
  bool transport_busy_poll = false;
  uint32_t bulk_lanes = 1;  // bulk connections to the page server
  // The bulk stream's threads on both sides (as DemoOptions); the default: as they are.
  BulkThreads bulk_threads;
  PatternSpec pattern;
  bool source_in_child = true;  // false: the page server runs on a thread of this process
  // With engine.warmup.enabled: a writer thread in the source keeps rewriting this many of
  // every 1000 pages (word 1 of each, a generation counter) until the final round stops it;
  // the source tracks its writes (dirty/wp_tracker.h). The guest here starts at the switch.
  uint32_t churn_permille = 100;
  // Called about every 100 ms from a helper thread while pages arrive.
  std::function<void(uint64_t done_bytes, uint64_t total_bytes)> progress;
};

struct LocalRunReport {
  std::string kind;
  uint64_t size = 0, page_size = 0, pages = 0;
  uint64_t urgent_pages = 0, bulk_pages = 0, zero_pages = 0, bytes_received = 0;
  uint64_t faults = 0, minor_faults = 0, duplicate_faults = 0, urgent_requests = 0;
  uint64_t bulk_requests = 0, corrupt_pages = 0, eexist = 0, eagain = 0;
  double seconds = 0;
  LatencyHistogram fault_latency;  // engine: event read → placed and woken
  std::map<uint32_t, LatencyHistogram> per_thread;
  LatencyHistogram guest_latency;  // guest-observed slow touches
  uint64_t guest_touches = 0;
  uint64_t verified_pages = 0, mismatches = 0;
  // Warm-up: rounds (pages in each set; the throttle each asked for), the time before the
  // switch, faults after it.
  std::vector<uint64_t> warmup_rounds;
  std::vector<uint32_t> warmup_throttle;
  double warmup_seconds = 0;
  uint64_t faults_after_switch = 0;
  uint64_t engine_footprint = 0;
  uint64_t peak_rss_kib = 0;
  std::string missing_features;  // userfaultfd features this kernel lacks (empty: none)
};

absl::StatusOr<LocalRunReport> RunLocalMigration(const LocalRunOptions& opts);

std::string ReportTable(const LocalRunReport& r);
std::string ReportJson(const std::vector<LocalRunReport>& reports);

// Peak resident set of this process (VmHWM), KiB.
uint64_t PeakRssKib();

}  // namespace faultline

#endif  // FAULTLINE_CLI_LOCAL_RUN_H_
