#include "serve/metrics.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "transport/socket.h"

namespace faultline {
namespace {

// Label values: backslash, double quote and newline escaped.
std::string Esc(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string Num(double v) { return absl::StrFormat("%.9g", v); }

class Writer {
 public:
  void Family(const std::string& name, const char* type, const std::string& help) {
    absl::StrAppend(&out_, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  }
  void Sample(const std::string& name, const std::string& labels, double v) {
    absl::StrAppend(&out_, name, labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}", " ",
                    Num(v), "\n");
  }
  // A histogram from the QEMU-compatible log2 µs buckets: le = 2^(N+1) µs in seconds.
  void Histogram(const std::string& name, const std::string& labels, const LatencyHistogram& h) {
    uint64_t cum = 0;
    const std::string sep = labels.empty() ? "" : ",";
    for (int i = 0; i < LatencyHistogram::kLog2UsBuckets - 1; ++i) {
      cum += h.log2_us()[i];
      const double le = static_cast<double>(uint64_t{1} << (i + 1)) * 1e-6;
      absl::StrAppend(&out_, name, "_bucket{", labels, sep, "le=\"", Num(le), "\"} ", cum, "\n");
    }
    absl::StrAppend(&out_, name, "_bucket{", labels, sep, "le=\"+Inf\"} ", h.count(), "\n");
    absl::StrAppend(&out_, name, "_sum", labels.empty() ? "" : "{", labels,
                    labels.empty() ? "" : "}", " ", Num(h.mean() * h.count() * 1e-9), "\n");
    absl::StrAppend(&out_, name, "_count", labels.empty() ? "" : "{", labels,
                    labels.empty() ? "" : "}", " ", h.count(), "\n");
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

}  // namespace

std::string RenderMetrics(const std::vector<MigrationStatus>& ms, const DaemonCounters& d) {
  Writer w;
  auto per = [&](const std::string& name, const char* type, const std::string& help,
                 const std::function<double(const MigrationStatus&)>& f) {
    w.Family(name, type, help);
    for (const MigrationStatus& m : ms) {
      w.Sample(name, absl::StrCat("migration=\"", Esc(m.id), "\""), f(m));
    }
  };
  w.Family("faultline_migration_info", "gauge",
           "A migration the daemon knows: its source and its VMM (value 1).");
  for (const MigrationStatus& m : ms) {
    w.Sample("faultline_migration_info",
             absl::StrCat("migration=\"", Esc(m.id), "\",source=\"", Esc(m.source), "\",vmm=\"",
                          Esc(m.vmm), "\""),
             1);
  }
  w.Family("faultline_migration_phase", "gauge",
           "The migration's phase: 1 for the current one of waiting, running, complete, failed.");
  for (const MigrationStatus& m : ms) {
    for (MigrationPhase p : {MigrationPhase::kWaiting, MigrationPhase::kRunning,
                             MigrationPhase::kComplete, MigrationPhase::kFailed}) {
      w.Sample("faultline_migration_phase",
               absl::StrCat("migration=\"", Esc(m.id), "\",phase=\"", MigrationPhaseName(p), "\""),
               m.phase == p ? 1 : 0);
    }
  }
  per("faultline_migration_start_time_seconds", "gauge",
      "When the VMM handed over (Unix time); 0 while waiting.",
      [](const MigrationStatus& m) { return UnixSeconds(m.started); });
  per("faultline_migration_end_time_seconds", "gauge",
      "When every page was present or the migration failed (Unix time); 0 before.",
      [](const MigrationStatus& m) { return UnixSeconds(m.ended); });
  per("faultline_migration_data_total_bytes", "gauge", "Guest memory the migration carries.",
      [](const MigrationStatus& m) { return static_cast<double>(m.page_bytes); });
  per("faultline_migration_data_processed_bytes", "gauge",
      "Guest memory present on the destination (placed, zero pages included).",
      [](const MigrationStatus& m) {
        return m.pages_total ? static_cast<double>(m.page_bytes) * m.pages_present / m.pages_total
                             : 0.0;
      });
  per("faultline_migration_data_remaining_bytes", "gauge", "Guest memory still to arrive.",
      [](const MigrationStatus& m) {
        return m.pages_total ? static_cast<double>(m.page_bytes) *
                                   (m.pages_total - m.pages_present) / m.pages_total
                             : 0.0;
      });
  per("faultline_migration_memory_pages", "gauge", "Pages of guest memory.",
      [](const MigrationStatus& m) { return static_cast<double>(m.pages_total); });
  per("faultline_migration_present_pages", "gauge", "Pages present on the destination.",
      [](const MigrationStatus& m) { return static_cast<double>(m.pages_present); });
  w.Family("faultline_migration_received_bytes_total", "counter",
           "Page bytes received and placed, by channel (urgent: faults; bulk: background).");
  for (const MigrationStatus& m : ms) {
    w.Sample("faultline_migration_received_bytes_total",
             absl::StrCat("migration=\"", Esc(m.id), "\",channel=\"urgent\""),
             static_cast<double>(m.urgent_bytes));
    w.Sample("faultline_migration_received_bytes_total",
             absl::StrCat("migration=\"", Esc(m.id), "\",channel=\"bulk\""),
             static_cast<double>(m.bulk_bytes));
  }
  per("faultline_migration_memory_transfer_rate_bytes", "gauge",
      "Bytes received per second over the run so far.",
      [](const MigrationStatus& m) { return m.bytes_per_second; });
  per("faultline_migration_faults_total", "counter", "Guest page faults on absent pages.",
      [](const MigrationStatus& m) { return static_cast<double>(m.faults); });
  per("faultline_migration_reconnects_total", "counter",
      "Reconnections to the source after a network failure.",
      [](const MigrationStatus& m) { return static_cast<double>(m.reconnects); });
  per("faultline_migration_engine_restarts_total", "counter",
      "Times this migration was continued by a new engine after the previous one died.",
      [](const MigrationStatus& m) { return static_cast<double>(m.engine_restarts); });
  per("faultline_migration_warmup_rounds", "gauge",
      "Warm-up rounds applied (pages rewritten on the source dropped and fetched again).",
      [](const MigrationStatus& m) { return static_cast<double>(m.warmup_rounds); });
  per("faultline_migration_warmup_last_set_pages", "gauge",
      "Pages in the latest warm-up round's set.",
      [](const MigrationStatus& m) { return static_cast<double>(m.warmup_last_set_pages); });
  per("faultline_migration_warmup_throttle_percent", "gauge",
      "Share of the source guest's vCPU time warm-up has it throttled by (0: full speed).",
      [](const MigrationStatus& m) { return static_cast<double>(m.warmup_throttle); });
  per("faultline_migration_warmup_switched", "gauge",
      "1 once warm-up's final set is dropped here (the guest may run here).",
      [](const MigrationStatus& m) { return m.warmup_switched ? 1.0 : 0.0; });
  w.Family("faultline_migration_fault_latency_seconds", "histogram",
           "From the fault's event read to its page placed and the faulting thread woken. "
           "Buckets are QEMU's postcopy-latency-dist: [2^N, 2^(N+1)) microseconds.");
  for (const MigrationStatus& m : ms) {
    w.Histogram("faultline_migration_fault_latency_seconds",
                absl::StrCat("migration=\"", Esc(m.id), "\""), m.fault_latency);
  }
  w.Family("faultline_migration_thread_fault_latency_seconds", "histogram",
           "Fault latency per faulting thread (a vCPU thread of the VMM), by its thread id.");
  for (const MigrationStatus& m : ms) {
    for (const auto& [tid, h] : m.fault_latency_per_thread) {
      w.Histogram("faultline_migration_thread_fault_latency_seconds",
                  absl::StrCat("migration=\"", Esc(m.id), "\",thread=\"", tid, "\""), h);
    }
  }
  w.Family("faultline_handoffs_accepted_total", "counter", "VMM hand-offs accepted.");
  w.Sample("faultline_handoffs_accepted_total", "", static_cast<double>(d.handoffs_accepted));
  w.Family("faultline_handoffs_refused_total", "counter",
           "Hand-off connections refused, by reason.");
  for (const auto& [reason, n] : d.handoffs_refused) {
    w.Sample("faultline_handoffs_refused_total", absl::StrCat("reason=\"", Esc(reason), "\""),
             static_cast<double>(n));
  }
  w.Family("faultline_control_requests_total", "counter", "Control-socket requests served.");
  w.Sample("faultline_control_requests_total", "", static_cast<double>(d.control_requests));
  w.Family("faultline_control_errors_total", "counter", "Control-socket requests refused.");
  w.Sample("faultline_control_errors_total", "", static_cast<double>(d.control_errors));
  w.Family("faultline_migrations_succeeded_total", "counter", "Migrations that completed.");
  w.Sample("faultline_migrations_succeeded_total", "", static_cast<double>(d.migrations_succeeded));
  w.Family("faultline_migrations_failed_total", "counter", "Migrations that failed.");
  w.Sample("faultline_migrations_failed_total", "", static_cast<double>(d.migrations_failed));
  w.Family("faultline_daemon_start_time_seconds", "gauge", "When the daemon started (Unix time).");
  w.Sample("faultline_daemon_start_time_seconds", "", d.start_time_seconds);
  return w.Take();
}

struct MetricsServerAccess {
  static MHD_Result Handle(void* cls, struct MHD_Connection* c, const char* url, const char* method,
                           const char*, const char*, size_t* upload_size, void**) {
    auto* self = static_cast<MetricsServer*>(cls);
    auto reply = [&](unsigned code, const std::string& body, const char* type) {
      struct MHD_Response* r = MHD_create_response_from_buffer(
          body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
      MHD_add_response_header(r, "Content-Type", type);
      MHD_Result ret = MHD_queue_response(c, code, r);
      MHD_destroy_response(r);
      return ret;
    };
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
      if (upload_size) *upload_size = 0;  // whatever it uploads is dropped
      return reply(405, "method not allowed: GET /metrics\n", "text/plain");
    }
    if (strcmp(url, "/metrics") == 0) {
      return reply(200, self->render_(), "text/plain; version=0.0.4; charset=utf-8");
    }
    if (strcmp(url, "/") == 0) return reply(200, "faultline: metrics at /metrics\n", "text/plain");
    return reply(404, "not found: GET /metrics\n", "text/plain");
  }
};

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& host_port, std::function<std::string()> render) {
  std::string host;
  int port = 0;
  if (absl::Status s = SplitHostPort(host_port, &host, &port); !s.ok()) return s;
  struct sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", host_port, "': expected IPv4:PORT"));
  }
  std::unique_ptr<MetricsServer> m(new MetricsServer());
  m->render_ = std::move(render);
  m->mhd_ = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, static_cast<uint16_t>(port), nullptr,
      nullptr, &MetricsServerAccess::Handle, m.get(), MHD_OPTION_SOCK_ADDR, &addr,
      MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_CONNECTION_LIMIT, 64u,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, static_cast<size_t>(64 * 1024), MHD_OPTION_END);
  if (m->mhd_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", host_port, " (address in use?)"));
  }
  const union MHD_DaemonInfo* info = MHD_get_daemon_info(m->mhd_, MHD_DAEMON_INFO_BIND_PORT);
  m->port_ = info != nullptr ? info->port : port;
  return m;
}

MetricsServer::~MetricsServer() {
  if (mhd_ != nullptr) MHD_stop_daemon(mhd_);
}

}  // namespace faultline
