// faultline serve: faultline on the destination host (serve/daemon.h).
//
//   faultline serve --daemon [--control=...] [--metrics_listen=HOST:PORT]
//       Any number of migrations at once: an orchestrator registers each (`faultline expect`),
//       its VMM hands over on the shared socket (naming the migration) or on the migration's
//       own socket. Runs until SIGTERM/SIGINT.
//   faultline serve --connect=HOST:PORT --token=HEX
//       One migration (the first VMM to hand over on --handoff), then exits with its result and
//       prints its report. A malformed or refused hand-off does not end it: it waits on.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "cli/common.h"
#include "cli/handoff_run.h"
#include "serve/daemon.h"

ABSL_FLAG(std::string, state_dir, "/run/faultline",
          "serve: directory of the per-migration page-state files (a tmpfs). If faultline "
          "dies mid-migration, a new `serve` with the same token continues from the file "
          "when the VMM hands the same uffd over again. Empty: keep no state file.");
ABSL_FLAG(absl::Duration, bulk_hold_until_running, absl::Milliseconds(100),
          "serve: a VMM that says when its guest runs here (QEMU's x-postcopy-external-pager "
          "series): no background request until it does, at most this long after its "
          "switch-over began, so the switch-over's own faults have the cores (0: start the "
          "stream at once).");
ABSL_FLAG(bool, daemon, false,
          "serve: serve any number of migrations, registered with `faultline expect` on "
          "--control, until SIGTERM.");
ABSL_FLAG(std::string, control, "/run/faultline/control.sock",
          "serve --daemon, expect, status, cancel, forget: the daemon's control socket.");
ABSL_FLAG(std::string, metrics_listen, "",
          "serve: serve Prometheus metrics on HOST:PORT/metrics (e.g. 127.0.0.1:9470).");
ABSL_FLAG(std::string, allow_uids, "",
          "serve: uids (comma-separated) whose VMMs may hand over, besides root and this "
          "process's own uid.");
ABSL_FLAG(std::string, allow_gids, "",
          "serve: gids (comma-separated) whose members' VMMs may hand over.");
ABSL_FLAG(std::string, event_log, "",
          "serve: where the JSON event lines go: stdout, stderr, none (default: stdout for "
          "--daemon, stderr for one migration).");

namespace faultline {
namespace {

std::atomic<Daemon*> g_daemon{nullptr};

void OnSignal(int) {
  if (Daemon* d = g_daemon.load()) d->Stop();
}

absl::Status ParseIds(const std::string& flag, const std::string& v, std::set<uint32_t>* out) {
  for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipEmpty())) {
    uint32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": '", part, "' is no id"));
    }
    out->insert(id);
  }
  return absl::OkStatus();
}

}  // namespace

int RunServe() {
  DaemonOptions o;
  o.handoff_socket = absl::GetFlag(FLAGS_handoff);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.state_dir = absl::GetFlag(FLAGS_state_dir);
  o.bulk_hold_until_running = absl::GetFlag(FLAGS_bulk_hold_until_running);
  absl::StatusOr<BulkThreads> bulk = BulkThreadsFromFlags();
  if (!bulk.ok()) return Fail(bulk.status());
  o.bulk_threads = *bulk;  // migrations the daemon is told to expect; one: the flags' own
  absl::StatusOr<EngineOptions> engine_opts = EngineOptionsFromFlags(*bulk);
  if (!engine_opts.ok()) return Fail(engine_opts.status());
  o.engine = *engine_opts;
  const bool daemon = absl::GetFlag(FLAGS_daemon);
  o.control_socket = daemon ? absl::GetFlag(FLAGS_control) : "";
  o.exit_when_done = !daemon;
  std::set<uint32_t> uids, gids;
  if (absl::Status s = ParseIds("allow_uids", absl::GetFlag(FLAGS_allow_uids), &uids); !s.ok()) {
    return Fail(s);
  }
  if (absl::Status s = ParseIds("allow_gids", absl::GetFlag(FLAGS_allow_gids), &gids); !s.ok()) {
    return Fail(s);
  }
  o.allow_uids.insert(uids.begin(), uids.end());
  o.allow_gids.insert(gids.begin(), gids.end());
  std::string log = absl::GetFlag(FLAGS_event_log);
  if (log.empty()) log = daemon ? "stdout" : "stderr";
  o.event_log = log == "stdout" ? stdout : log == "stderr" ? stderr : nullptr;
  if (log != "stdout" && log != "stderr" && log != "none") {
    return Fail(absl::InvalidArgumentError("--event_log: stdout, stderr or none"));
  }

  MigrationSpec one;
  if (!daemon) {
    absl::StatusOr<TcpSourceOptions> source = SourceOptionsFromFlags(*bulk);
    if (!source.ok()) return Fail(source.status());
    one.id = "default";
    one.run.source = *source;
    one.run.engine = o.engine;
    one.run.state_dir = o.state_dir;
    one.run.bulk_hold_until_running = o.bulk_hold_until_running;
    one.run.connect = ConnectSource;
    // --transport=rdma connects through ConnectSource at the hand-off, as always.
    one.connect_ahead = absl::GetFlag(FLAGS_transport) == "tcp";
    one.run.log = [](const std::string& line) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    };
  }
  absl::StatusOr<std::unique_ptr<Daemon>> d = Daemon::Start(o);
  if (!d.ok()) return Fail(d.status());
  if (!daemon) {
    if (absl::Status s = (*d)->Register(std::move(one), /*own_socket=*/false); !s.ok()) {
      return Fail(s);
    }
    std::printf("waiting for a VMM on %s\n", o.handoff_socket.c_str());
  } else {
    std::printf("faultline daemon: hand-offs on %s, control on %s%s\n", o.handoff_socket.c_str(),
                o.control_socket.c_str(),
                (*d)->metrics_port()
                    ? absl::StrCat(", metrics on port ", (*d)->metrics_port()).c_str()
                    : "");
  }
  std::fflush(stdout);
  g_daemon.store(d->get());
  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  signal(SIGPIPE, SIG_IGN);
  (*d)->Run();
  g_daemon.store(nullptr);
  if (daemon) return 0;
  std::shared_ptr<Migration> m = (*d)->Find("default");
  MigrationStatus st = m->Snapshot();
  if (st.phase != MigrationPhase::kComplete) {
    return Fail(
        absl::UnknownError(st.error.empty() ? "stopped before a VMM handed over" : st.error));
  }
  std::printf("%s\n", m->Report().dump(2).c_str());
  return 0;
}

}  // namespace faultline
