// faultline local: a self-contained migration on this machine (cli/local_run.h).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <vector>

#include "absl/flags/flag.h"
#include "cli/common.h"
#include "cli/local_run.h"

namespace faultline {

int RunLocal() {
  absl::StatusOr<uint64_t> size = ParseSize(absl::GetFlag(FLAGS_size));
  if (!size.ok()) return Fail(size.status());
  absl::StatusOr<GuestOptions> guest = GuestOptionsFromFlags();
  if (!guest.ok()) return Fail(guest.status());
  std::vector<MemoryKind> kinds;
  if (absl::GetFlag(FLAGS_kind) == "all") {
    kinds = {MemoryKind::kAnonymous, MemoryKind::kMemfd, MemoryKind::kHugetlb};
  } else {
    absl::StatusOr<MemoryKind> k = ParseMemoryKind(absl::GetFlag(FLAGS_kind));
    if (!k.ok()) return Fail(k.status());
    kinds = {*k};
  }
  std::vector<LocalRunReport> reports;
  bool bad = false;
  for (MemoryKind k : kinds) {
    std::printf("faultline local: %s, %llu MiB, guest threads: %s\n", MemoryKindName(k),
                static_cast<unsigned long long>(*size >> 20),
                absl::GetFlag(FLAGS_guest).empty() ? "none" : absl::GetFlag(FLAGS_guest).c_str());
    std::fflush(stdout);
    LocalRunOptions o;
    o.kind = k;
    o.size = *size;
    o.guest = *guest;
    o.run_guest = !guest->threads.empty();
    absl::StatusOr<BulkThreads> bulk = BulkThreadsFromFlags();
    if (!bulk.ok()) return Fail(bulk.status());
    o.bulk_threads = *bulk;
    absl::StatusOr<EngineOptions> engine_opts = EngineOptionsFromFlags(*bulk);
    if (!engine_opts.ok()) return Fail(engine_opts.status());
    o.engine = *engine_opts;
    const int32_t churn = absl::GetFlag(FLAGS_churn_permille);
    o.churn_permille = churn < 0 ? 100 : static_cast<uint32_t>(std::min(churn, 1000));
    o.transport_busy_poll = absl::GetFlag(FLAGS_busy_poll);
    o.bulk_lanes = static_cast<uint32_t>(absl::GetFlag(FLAGS_bulk_channels));
    if (absl::GetFlag(FLAGS_progress)) o.progress = ProgressBar;
    absl::StatusOr<LocalRunReport> r = RunLocalMigration(o);
    if (!r.ok()) {
      std::fprintf(stderr, "faultline local (%s): error: %s\n", MemoryKindName(k),
                   std::string(r.status().message()).c_str());
      bad = true;
      continue;
    }
    std::printf("%s\n", ReportTable(*r).c_str());
    if (r->mismatches) bad = true;
    reports.push_back(std::move(*r));
  }
  if (!absl::GetFlag(FLAGS_stats_json).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_stats_json)) << ReportJson(reports) << "\n";
  }
  return bad ? 1 : 0;
}

}  // namespace faultline
