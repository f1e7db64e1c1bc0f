// `faultline demo`: a real KVM guest migrated with post-copy through faultline, on this
// machine, with every role in its own process and talking over the real interfaces:
//
//   source process   reference VMM runs the guest (RAM on a memfd) until it has dirtied its
//                    memory, pauses it, ships the vCPU state, then serves its RAM read-only
//                    with the page server (TCP loopback)
//   faultline        accepts the destination VMM's hand-off (uffd + memfd over SCM_RIGHTS on
//                    a Unix socket), pulls pages from the source, resolves the vCPU faults
//   destination      (this process) a VMM with empty RAM registered with a userfaultfd:
//                    hands it off, restores the vCPUs and resumes at once; the guest runs its
//                    touch phases while its memory arrives; afterwards every page is checked
//                    against the source's memory.
//
// With warm-up (engine.warmup.enabled) the source serves its RAM while the guest still runs
// (churning a hot block, KVM's dirty log on), faultline pulls it in rounds, and the source
// pauses the guest only at the final round; the destination resumes once that round is applied.
#ifndef FAULTLINE_CLI_DEMO_H_
#define FAULTLINE_CLI_DEMO_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/bulk_threads.h"
#include "base/memory_kind.h"
#include "engine/engine.h"
#include "nlohmann/json.hpp"
#include "transport/tls.h"

namespace faultline {

struct DemoOptions {
  uint64_t ram_size = 1ull << 30;
  MemoryKind dest_backing = MemoryKind::kMemfd;  // destination RAM: memfd, anon, guest_memfd
  uint32_t vcpus = 1;
  uint64_t touches = 4096;  // per touch phase, per vCPU
  // FLT_MODE_CHURN: after dirtying, the guest rewrites this many of every 1000 data pages in
  // a loop until the source pauses it (0: an idle guest that only waits); -1: no churn phase
  // (with warm-up: 0, the guest must keep running while its memory moves).
  int32_t churn_permille = -1;
  uint64_t seed = 42;
  std::string guest_elf;     // empty: find the one Bazel built
  std::string handoff_path;  // empty: a fresh path under /tmp
  EngineOptions engine;
  // The bulk stream's threads on both sides (TcpSourceOptions::bulk_threads,
  // PageServer::SetBulkThreads); the default: as they are.
  BulkThreads bulk_threads;
  std::function<void(uint64_t done_pages, uint64_t total_pages)> progress;
  std::function<void(const std::string& line)> guest_line;  // serial lines, both sides
  // TLS between the page server and faultline (null: plain TCP).
  std::shared_ptr<const TlsContext> server_tls, client_tls;
  std::string tls_server_name;  // empty: 127.0.0.1
  // Engine restart: once this fraction of the pages is present, the faultline process is
  // SIGKILLed while the guest runs, and `restart_binary serve` (a faultline binary; empty:
  // this executable) takes over: the destination VMM hands it the same uffd ("resume") and it
  // continues from the page-state file the first engine kept. 0: no restart. Not with TLS.
  double kill_engine_at = 0;
  std::string restart_binary;
};

struct GuestPhase {
  std::string side;  // "source" / "destination"
  int cpu = 0;
  std::string phase;
  uint64_t touches = 0, cycles_p50 = 0, cycles_p99 = 0, cycles_max = 0, slow = 0, bad = 0;
  uint64_t cycles_total = 0;
};

struct DemoReport {
  uint64_t missing_exits = 0;  // guest_memfd: vCPU exits for pages not yet arrived
  double downtime_ms = 0;      // source pause → destination resume
  double total_seconds = 0;  // migration start (warm-up start, or the pause) → every page present
  double warmup_seconds = 0;    // warm-up start → source pause (0 without warm-up)
  double postcopy_seconds = 0;  // source pause → every page present
  double final_round_ms = 0;    // warm-up: source pause → faultline confirmed the final round
  double guest_seconds = 0;     // destination resume → guest done
  uint64_t tsc_khz = 0;
  nlohmann::json engine;  // faultline's own report (EngineStatsJson)
  std::vector<GuestPhase> phases;
  uint64_t guest_bad = 0;  // words the guest read that were not what it wrote
  uint64_t verified_pages = 0, mismatches = 0;
  uint64_t boot_area_pages = 0, boot_area_changed = 0;  // below the guest's data range
  uint64_t dirty_pattern_pages = 0;  // data pages whose content the guest's pattern predicts
  bool engine_restarted = false;     // kill_engine_at: the engine was killed and replaced
  uint64_t killed_at_pages = 0;      // pages present when it was killed
};

// Whether a real KVM guest can run here; *why says what is missing when not.
bool DemoAvailable(std::string* why);
absl::StatusOr<DemoReport> RunDemo(const DemoOptions& opts);
std::string DemoReportTable(const DemoReport& r);

}  // namespace faultline

#endif  // FAULTLINE_CLI_DEMO_H_
