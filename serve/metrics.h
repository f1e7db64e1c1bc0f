// Prometheus metrics of a host daemon: the text exposition format (version 0.0.4), written here
// (no C++ Prometheus client is packaged), served on /metrics by a small embedded HTTP server
// (libmicrohttpd).
//
// Names follow Prometheus' conventions (base units: seconds, bytes; counters end in _total) and
// KubeVirt's kubevirt_vmi_migration_* family where one exists, so dashboards built for VM
// migration fit: data_total_bytes / data_processed_bytes / data_remaining_bytes,
// start_time_seconds, end_time_seconds. Every per-migration series has the label migration="<id>".
// What post-copy adds and nobody else exposes: fault latency as a histogram (overall and per
// faulting vCPU thread), pages present, bytes by channel, reconnects, engine restarts.
#ifndef FAULTLINE_SERVE_METRICS_H_
#define FAULTLINE_SERVE_METRICS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "serve/migration.h"

struct MHD_Daemon;

namespace faultline {

// Daemon-wide counters (the metrics of no single migration).
struct DaemonCounters {
  uint64_t handoffs_accepted = 0;
  std::map<std::string, uint64_t> handoffs_refused;  // by reason (a short label)
  uint64_t control_requests = 0, control_errors = 0;
  uint64_t migrations_succeeded = 0, migrations_failed = 0;
  double start_time_seconds = 0;
};

// The exposition text for these migrations and counters.
std::string RenderMetrics(const std::vector<MigrationStatus>& migrations,
                          const DaemonCounters& counters);

// Serves GET /metrics (and a one-line / page) on HOST:PORT; anything else gets 404, a method
// other than GET or HEAD 405. The body comes from `render` per request (any thread).
class MetricsServer {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host_port,
                                                              std::function<std::string()> render);
  ~MetricsServer();
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  friend struct MetricsServerAccess;
  std::function<std::string()> render_;
  MHD_Daemon* mhd_ = nullptr;
  int port_ = 0;
};

}  // namespace faultline

#endif  // FAULTLINE_SERVE_METRICS_H_
