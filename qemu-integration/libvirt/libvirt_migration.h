// `faultline migrate`: a post-copy live migration of a libvirt domain through libvirt's C API,
// with faultline as the destination's post-copy pager — or QEMU's own post-copy, for comparison.
//
// In order:
//  1. Opens the source and destination libvirt connections, finds the running domain.
//  2. Pager mode (the default): checks the domain's RAM is shared and fd-backed
//     (domain_xml.h) and that its QEMU has `x-postcopy-external-pager`
//     (query-migrate-capabilities through the monitor passthrough), sets postcopy-ram,
//     x-ignore-shared and the capability on the source through the passthrough, and gives the
//     destination an XML carrying them as -global properties (domain_xml.h says why). QEMU
//     10.2's series also needs return-path and switchover-ack (the pager's ack gates the
//     switch), found by the source QEMU's capabilities. With warm-up (10.2 only) the source
//     QEMU gets its connection to `faultline source --vmm_dirty_socket` (getfd).
//  3. virDomainMigrateToURI3(LIVE | PEER2PEER | POSTCOPY) on its own thread. Meanwhile: job
//     statistics (virDomainGetJobStats) for progress, and virDomainMigrateStartPostCopy after
//     the first pre-copy pass (MIGRATION_ITERATION event) or `postcopy_after`. With the pager
//     the stream holds no guest RAM, so pass one takes milliseconds (and QEMU switches by
//     itself once it has converged); waiting for it lets the destination's ADVISE-time check
//     of the pager fail the migration while the source still runs the guest.
//  4. Lifecycle events of both sides (post-copy started / resumed / failed) and the completed
//     job's statistics (JOB_COMPLETED event) go into the report.
// Nothing is started before every check passes. A migration that fails before post-copy leaves
// the domain running on the source, the capabilities turned back off. A failure during
// post-copy is reported as such: the guest is paused, its memory split between the hosts, and
// faultline's engine keeps it waiting (libvirt's --postcopy-resume is the recovery path).
#ifndef FAULTLINE_QEMU_INTEGRATION_LIBVIRT_LIBVIRT_MIGRATION_H_
#define FAULTLINE_QEMU_INTEGRATION_LIBVIRT_LIBVIRT_MIGRATION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace faultline {

struct LibvirtMigrateOptions {
  std::string domain;
  std::string source_uri = "qemu:///system";
  std::string dest_uri;     // libvirt URI of the destination (peer-to-peer: the source's
                            // libvirtd connects to it)
  std::string migrate_uri;  // QEMU's data connection, e.g. tcp://10.0.0.2:49152; empty: libvirt's
  bool pager = true;        // false: QEMU's own post-copy
  std::string pager_socket = "/run/faultline.sock";  // on the destination host
  // Warm-up (QEMU 10.2 + series only): `faultline source --vmm_dirty_socket` on the source
  // host. Its connection goes to the source QEMU, which reports its guest's writes there from
  // the migration's start; the destination's `faultline serve --warmup` pulls RAM during
  // pre-copy, and QEMU switches to post-copy (when asked) only after the pager's final round.
  std::string warmup_socket;
  absl::Duration postcopy_after = absl::ZeroDuration();  // 0: after pre-copy pass one
  absl::Duration timeout = absl::Minutes(10);            // abort if still pre-copying after this
  uint64_t bandwidth_mib = 0;  // pre-copy bandwidth limit, MiB/s (0: none); post-copy: none
  bool persist_dest = false;
  bool undefine_source = false;
  std::function<void(const std::string&)> log;  // progress and events, one line each
};

struct LibvirtMigrateReport {
  bool pager = false;
  bool warmup = false;
  double seconds = 0;       // measured here: virDomainMigrateToURI3's duration
  double postcopy_at = -1;  // seconds after the start when the source reported post-copy
  // From the completed job (JOB_COMPLETED event); -1 when libvirt did not report it.
  int64_t time_elapsed_ms = -1, downtime_ms = -1, setup_time_ms = -1;
  int64_t data_total = -1, data_processed = -1, memory_total = -1, memory_processed = -1;
  int64_t memory_iteration = -1, postcopy_requests = -1;
  bool dest_pager_capability = false;  // queried on the destination QEMU afterwards
  std::vector<std::string> events;     // "+1.234s source: suspended (post-copy)"
};

absl::StatusOr<LibvirtMigrateReport> MigrateDomain(const LibvirtMigrateOptions& options);

// The report as JSON (for --stats_json).
std::string ReportJson(const LibvirtMigrateReport& report);

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_LIBVIRT_LIBVIRT_MIGRATION_H_
