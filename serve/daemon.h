// Daemon: faultline on a destination host — one process serving any number of migrations at
// once, each with its own source, token, TLS settings, state file and engine threads.
//
//   orchestrator ──control socket──► Daemon: "expect" registers a migration (id, source, token,
//                                    TLS…), "status" reports, "cancel"/"forget" end one
//   VMM ──hand-off socket──────────► Daemon: the hello names the migration (or the VMM connects
//                                    to that migration's own socket); the Migration runs it
//   Prometheus ──HTTP /metrics─────► Daemon (serve/metrics.h)
//   one JSON line per lifecycle event on the event log (stdout): registered, handed_over,
//   refused, reconnected, complete, failed, forgotten.
//
// Whatever one client does — garbage, an oversized or unknown hello, credentials not on the
// allow list, a duplicate id, a source that vanished — is refused or failed for that client or
// migration alone, with a clear error in the event log and the status; the daemon and every
// other migration go on. Connections are read on worker threads with deadlines, so a silent or
// slow client holds nothing up.
//
// Threads: Run()'s loop accepts and routes; a worker per connection in flight (bounded); each
// running migration its own (serve/migration.h); the metrics server its own.
#ifndef FAULTLINE_SERVE_DAEMON_H_
#define FAULTLINE_SERVE_DAEMON_H_

#include <sys/types.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/bulk_threads.h"
#include "base/unique_fd.h"
#include "nlohmann/json.hpp"
#include "qemu-integration/handoff/handoff.h"
#include "serve/metrics.h"
#include "serve/migration.h"

namespace faultline {

struct DaemonOptions {
  std::string handoff_socket = "/run/faultline.sock";  // shared; hellos name their migration
  std::string control_socket = "/run/faultline/control.sock";  // "" : none
  std::string socket_dir;      // per-migration hand-off sockets ("" : beside handoff_socket)
  std::string metrics_listen;  // "HOST:PORT" or "" (no metrics server)
  std::string state_dir = "/run/faultline";
  // Who may hand over (SO_PEERCRED): uid 0, the daemon's own uid, these uids, or a member of
  // these gids. The control socket is mode 0600: its owner (and root) only.
  std::set<uid_t> allow_uids;
  std::set<gid_t> allow_gids;
  absl::Duration hello_timeout = absl::Seconds(5);
  size_t max_pending_connections = 32;  // connections being read at once; more are refused
  FILE* event_log = stdout;             // JSON lines; null: none
  // Defaults for "expect" requests that leave them out.
  EngineOptions engine;
  absl::Duration bulk_hold_until_running = absl::Milliseconds(100);  // HandoffRunOptions'
  // Bulk receive threads of migrations registered with "expect" (many at once) at SCHED_IDLE
  // (TcpSourceOptions::bulk_idle).
  bool bulk_idle = true;
  // CPUs and nice value of their bulk receive threads (TcpSourceOptions::bulk_threads). While
  // bulk_idle is on, SCHED_IDLE decides their share and the nice value does not matter; their
  // fault path's threads take its fault_path_nice() either way.
  BulkThreads bulk_threads;
  // Stop Run() once a migration has finished (`faultline serve` serving one migration).
  bool exit_when_done = false;
};

class Daemon {
 public:
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const DaemonOptions& opts);
  ~Daemon();  // stops, cancelling running migrations

  // Serves until Stop() (from another thread or a signal handler thread).
  void Run();
  void Stop();

  // The control operations, also reachable in-process (tests): each returns the reply object
  // ({"ok":true,...} or {"ok":false,"error":...}).
  nlohmann::json Control(const nlohmann::json& request, uid_t peer_uid);
  // Registers a migration directly (what "expect" does after parsing). With own_socket, the
  // migration gets a hand-off socket of its own; *socket receives its path.
  absl::Status Register(MigrationSpec spec, bool own_socket, std::string* socket = nullptr);
  std::shared_ptr<Migration> Find(const std::string& id) const;
  std::vector<MigrationStatus> Statuses() const;
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }

 private:
  struct Listener {
    std::unique_ptr<HandoffServer> server;
    std::string migration;  // "" for the shared socket
  };
  explicit Daemon(const DaemonOptions& opts);
  void Event(const std::string& type, const std::string& migration, nlohmann::json fields = {});
  void OnHandoff(AcceptedConnection c, std::string migration);  // worker thread
  void OnControl(UniqueFd fd, uid_t uid);                       // worker thread
  bool PeerAllowed(const PeerCredentials& p) const;
  void OpenToAllowedPeers(const std::string& socket) const;
  void Refuse(AcceptedConnection c, const std::string& reason, const absl::Status& why,
              const std::string& migration);
  nlohmann::json Expect(const nlohmann::json& r);
  void Watch();  // Run()'s loop, every 200 ms: reconnect events
  void Spawn(std::function<void()> f);
  void ReapWorkers();

  DaemonOptions opts_;
  UniqueFd control_fd_, stop_fd_;
  std::unique_ptr<MetricsServer> metrics_;
  std::atomic<bool> stop_{false};

  mutable std::mutex mu_;
  std::vector<Listener> listeners_;                               // guarded by mu_
  std::map<std::string, std::shared_ptr<Migration>> migrations_;  // guarded by mu_
  std::map<std::string, uint64_t> last_reconnects_;               // guarded by mu_
  DaemonCounters counters_;                                       // guarded by mu_
  std::vector<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> workers_;  // mu_
  size_t pending_ = 0;  // guarded by mu_
  std::mutex log_mu_;
};

}  // namespace faultline

#endif  // FAULTLINE_SERVE_DAEMON_H_
