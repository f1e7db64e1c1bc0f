// faultline demo: a real KVM guest (the reference VMM) migrated post-copy through faultline
// on this machine, every role in its own process (cli/demo.h).
#include <cstdio>
#include <fstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/common.h"
#include "cli/demo.h"

ABSL_FLAG(int32_t, vcpus, 1, "demo: vCPUs of the guest (1 or 2).");
ABSL_FLAG(std::string, dest_ram, "memfd",
          "demo: destination RAM backing: memfd, anon, or guest_memfd (needs the kernel/ "
          "series: userfaultfd on guest_memfd + vCPU exits for missing pages).");
ABSL_FLAG(int64_t, guest_touches, 4096, "demo: touches per guest phase per vCPU.");
ABSL_FLAG(bool, guest_serial, false, "demo: print the destination guest's serial lines.");
ABSL_FLAG(double, kill_engine_at, 0,
          "demo: SIGKILL the faultline process once this fraction of the pages is present and "
          "let a new `faultline serve` take over the same uffd (engine restart). 0: never.");

namespace faultline {

int RunDemo() {
  std::string why;
  if (!DemoAvailable(&why)) {
    std::printf(
        "faultline demo: no real KVM guest here (%s);\n"
        "running the self-contained migration with the thread guest instead.\n\n",
        why.c_str());
    return RunLocal();
  }
  absl::StatusOr<uint64_t> size = ParseSize(absl::GetFlag(FLAGS_size));
  if (!size.ok()) return Fail(size.status());
  DemoOptions o;
  o.ram_size = *size;
  o.vcpus = static_cast<uint32_t>(absl::GetFlag(FLAGS_vcpus));
  absl::StatusOr<MemoryKind> dest_ram = ParseMemoryKind(absl::GetFlag(FLAGS_dest_ram));
  if (!dest_ram.ok()) {
    return Fail(
        absl::InvalidArgumentError(absl::StrCat("--dest_ram: ", dest_ram.status().message())));
  }
  o.dest_backing = *dest_ram;
  o.touches = static_cast<uint64_t>(absl::GetFlag(FLAGS_guest_touches));
  o.churn_permille = absl::GetFlag(FLAGS_churn_permille);
  if (o.churn_permille > 1000) {
    return Fail(absl::InvalidArgumentError("--churn_permille: expected -1..1000"));
  }
  o.kill_engine_at = absl::GetFlag(FLAGS_kill_engine_at);
  if (!absl::GetFlag(FLAGS_tls_cert).empty() || !absl::GetFlag(FLAGS_tls_key).empty() ||
      !absl::GetFlag(FLAGS_tls_ca).empty()) {
    // Both ends are here: the page server serves --tls_cert; faultline verifies it with
    // --tls_ca and presents the same certificate (the source, given the CA, requires one).
    absl::StatusOr<std::shared_ptr<const TlsContext>> server =
        TlsFromFlags(TlsContext::Role::kServer);
    if (!server.ok()) return Fail(server.status());
    absl::StatusOr<std::shared_ptr<const TlsContext>> client =
        TlsFromFlags(TlsContext::Role::kClient);
    if (!client.ok()) return Fail(client.status());
    o.server_tls = *server;
    o.client_tls = *client;
    o.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  }
  absl::StatusOr<BulkThreads> bulk = BulkThreadsFromFlags();
  if (!bulk.ok()) return Fail(bulk.status());
  o.bulk_threads = *bulk;
  absl::StatusOr<EngineOptions> engine_opts = EngineOptionsFromFlags(*bulk);
  if (!engine_opts.ok()) return Fail(engine_opts.status());
  o.engine = *engine_opts;
  if (absl::GetFlag(FLAGS_progress)) {
    o.progress = [](uint64_t done, uint64_t total) { ProgressBar(done * 4096, total * 4096); };
  }
  if (absl::GetFlag(FLAGS_guest_serial)) {
    o.guest_line = [](const std::string& l) { std::printf("  [dest guest] %s\n", l.c_str()); };
  }
  std::printf(
      "faultline demo: a %llu MiB KVM guest, %u vCPU(s); source VMM → faultline → "
      "destination VMM (%s RAM) over loopback\n",
      static_cast<unsigned long long>(o.ram_size >> 20), o.vcpus, MemoryKindName(o.dest_backing));
  std::printf(
      "  the source guest dirties every page first (emulated KVM here: ~15 s per "
      "GiB)...\n");
  std::fflush(stdout);
  absl::StatusOr<DemoReport> r = RunDemo(o);
  if (!r.ok()) return Fail(r.status());
  std::printf("\n%s", DemoReportTable(*r).c_str());
  if (!absl::GetFlag(FLAGS_stats_json).empty()) {
    nlohmann::json phases = nlohmann::json::array();
    for (const GuestPhase& p : r->phases) {
      phases.push_back({{"cpu", p.cpu},
                        {"phase", p.phase},
                        {"touches", p.touches},
                        {"cycles_p50", p.cycles_p50},
                        {"cycles_p99", p.cycles_p99},
                        {"cycles_max", p.cycles_max},
                        {"cycles_total", p.cycles_total},
                        {"slow", p.slow},
                        {"bad", p.bad}});
    }
    nlohmann::json j = {{"guest_phases", phases},
                        {"tsc_khz", r->tsc_khz},
                        {"downtime_ms", r->downtime_ms},
                        {"missing_exits", r->missing_exits},
                        {"total_seconds", r->total_seconds},
                        {"warmup_seconds", r->warmup_seconds},
                        {"postcopy_seconds", r->postcopy_seconds},
                        {"final_round_ms", r->final_round_ms},
                        {"guest_seconds", r->guest_seconds},
                        {"verified_pages", r->verified_pages},
                        {"mismatches", r->mismatches},
                        {"guest_bad_reads", r->guest_bad},
                        {"engine", r->engine}};
    std::ofstream(absl::GetFlag(FLAGS_stats_json)) << j.dump(2) << "\n";
  }
  return r->mismatches == 0 && r->guest_bad == 0 ? 0 : 1;
}

}  // namespace faultline
