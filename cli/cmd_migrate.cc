// faultline migrate: live-migrates a libvirt domain with post-copy through libvirt's API,
// with faultline as the destination QEMU's pager (qemu-integration/libvirt/).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/common.h"
#include "qemu-integration/libvirt/libvirt_migration.h"
#include "serve/control.h"

ABSL_DECLARE_FLAG(std::string, control);
ABSL_DECLARE_FLAG(std::string, id);

ABSL_FLAG(std::string, domain, "", "migrate: the libvirt domain to migrate.");
ABSL_FLAG(std::string, source_uri, "qemu:///system", "migrate: the source's libvirt URI.");
ABSL_FLAG(std::string, dest_uri, "",
          "migrate: the destination's libvirt URI (e.g. qemu+ssh://host2/system); the source's "
          "libvirtd connects to it (peer-to-peer).");
ABSL_FLAG(std::string, migrate_uri, "",
          "migrate: QEMU's data connection, e.g. tcp://10.0.0.2:49152 (default: libvirt's).");
ABSL_FLAG(bool, pager, true,
          "migrate: post-copy through faultline (the x-postcopy-external-pager capability; "
          "`faultline serve --handoff=SOCKET` must be running on the destination). false: "
          "QEMU's own post-copy.");
ABSL_FLAG(std::string, warmup_socket, "",
          "migrate: warm-up — the source host's `faultline source --vmm_dirty_socket` path. The "
          "source QEMU (10.2 with faultline's series) reports its guest's writes there while "
          "`faultline serve --warmup` on the destination pulls RAM during pre-copy; post-copy "
          "then fetches only what changed. Needs a local --source_uri (the connection is passed "
          "through libvirt's socket).");
ABSL_FLAG(absl::Duration, postcopy_after, absl::ZeroDuration(),
          "migrate: request post-copy after this long (0: after the first pre-copy pass; "
          "with the pager that pass is only device state and small blocks).");
ABSL_FLAG(absl::Duration, migrate_timeout, absl::Minutes(10),
          "migrate: abort a migration still pre-copying after this long (the domain stays on "
          "the source; post-copy is never aborted).");
ABSL_FLAG(uint64_t, bandwidth_mib, 0,
          "migrate: limit pre-copy to this many MiB/s (libvirt's --bandwidth; 0: no limit). "
          "Post-copy is never limited.");
ABSL_FLAG(bool, persist_dest, false, "migrate: define the domain persistently on the destination.");
ABSL_FLAG(bool, undefine_source, false, "migrate: undefine the domain on the source afterwards.");

namespace faultline {

int RunMigrate() {
  if (absl::GetFlag(FLAGS_domain).empty()) {
    return Fail(absl::InvalidArgumentError("--domain is required: the domain to migrate"));
  }
  if (absl::GetFlag(FLAGS_dest_uri).empty()) {
    return Fail(absl::InvalidArgumentError(
        "--dest_uri is required: the destination's libvirt, e.g. qemu+ssh://host2/system"));
  }
  LibvirtMigrateOptions o;
  o.domain = absl::GetFlag(FLAGS_domain);
  o.source_uri = absl::GetFlag(FLAGS_source_uri);
  o.dest_uri = absl::GetFlag(FLAGS_dest_uri);
  o.migrate_uri = absl::GetFlag(FLAGS_migrate_uri);
  o.pager = absl::GetFlag(FLAGS_pager);
  o.pager_socket = absl::GetFlag(FLAGS_handoff);
  o.warmup_socket = absl::GetFlag(FLAGS_warmup_socket);
  o.postcopy_after = absl::GetFlag(FLAGS_postcopy_after);
  o.timeout = absl::GetFlag(FLAGS_migrate_timeout);
  o.bandwidth_mib = absl::GetFlag(FLAGS_bandwidth_mib);
  o.persist_dest = absl::GetFlag(FLAGS_persist_dest);
  o.undefine_source = absl::GetFlag(FLAGS_undefine_source);
  o.log = [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
  // With --id (run on the destination host, next to the daemon): a progress bar of the
  // post-copy from the daemon's status of that migration (`faultline expect --id=...`).
  std::atomic<bool> done{false};
  std::thread progress;
  const std::string id = absl::GetFlag(FLAGS_id);
  if (!id.empty() && o.pager && absl::GetFlag(FLAGS_progress)) {
    progress = std::thread([&] {
      bool said = false;
      while (!done.load()) {
        absl::StatusOr<nlohmann::json> st = ControlCall(
            absl::GetFlag(FLAGS_control), {{"op", "status"}, {"id", id}}, absl::Seconds(2));
        if (st.ok() && st->contains("migrations") && !(*st)["migrations"].empty()) {
          const nlohmann::json& m = (*st)["migrations"][0];
          if (m.value("pages_total", 0ull) > 0) {
            ProgressBar(m.value("pages_present", 0ull) * 4096, m.value("pages_total", 0ull) * 4096);
          }
        } else if (!st.ok() && !said) {
          std::printf("(no progress from the daemon at %s: %s)\n",
                      absl::GetFlag(FLAGS_control).c_str(),
                      std::string(st.status().message()).c_str());
          said = true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    });
  }
  absl::StatusOr<LibvirtMigrateReport> r = MigrateDomain(o);
  done.store(true);
  if (progress.joinable()) progress.join();
  if (!r.ok()) return Fail(r.status());
  auto ms = [](int64_t v) { return v < 0 ? std::string("?") : absl::StrCat(v, " ms"); };
  auto mib = [](int64_t v) {
    return v < 0 ? std::string("?") : absl::StrFormat("%.1f MiB", v / 1048576.0);
  };
  std::printf(
      "\nmigrated '%s' (%s): %.2f s (libvirt: %s), downtime %s, post-copy from %.2f s, "
      "stream %s (memory %s, %lld pre-copy passes, %lld post-copy requests)%s\n",
      o.domain.c_str(),
      !r->pager   ? "QEMU's own post-copy"
      : r->warmup ? "warm-up, then post-copy through faultline"
                  : "post-copy through faultline",
      r->seconds, ms(r->time_elapsed_ms).c_str(), ms(r->downtime_ms).c_str(), r->postcopy_at,
      mib(r->data_processed).c_str(), mib(r->memory_processed).c_str(),
      static_cast<long long>(r->memory_iteration), static_cast<long long>(r->postcopy_requests),
      r->pager ? (r->dest_pager_capability ? "; destination QEMU ran with the pager"
                                           : "; WARNING: the destination QEMU does not report "
                                             "the pager capability")
               : "");
  if (!absl::GetFlag(FLAGS_stats_json).empty()) {
    std::ofstream f(absl::GetFlag(FLAGS_stats_json));
    f << ReportJson(*r) << "\n";
    if (!f) return Fail(absl::InternalError("cannot write --stats_json"));
  }
  return r->pager && !r->dest_pager_capability ? 1 : 0;
}

}  // namespace faultline
