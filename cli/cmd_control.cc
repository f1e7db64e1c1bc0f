// faultline expect | status | cancel | forget: an orchestrator's side of the host daemon's
// control socket (serve/control.h).
//
//   faultline expect --id=vm-17 --connect=SRC:7470 --token=HEX [--tls_ca=...] [--bulk_channels=N]
//       registers a migration; prints the hand-off socket of its own its VMM may use
//   faultline status [--id=vm-17] [--json]     a table (or the daemon's JSON)
//   faultline cancel --id=vm-17                a running migration fails, cancelled
//   faultline forget --id=vm-17                a migration not running is dropped
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/common.h"
#include "serve/control.h"

ABSL_DECLARE_FLAG(std::string, control);
ABSL_FLAG(std::string, id, "",
          "expect, status, cancel, forget: the migration's id. migrate (on the destination "
          "host): show the daemon's progress of that migration.");
ABSL_FLAG(bool, json, false, "status: print the daemon's JSON instead of a table.");
ABSL_FLAG(bool, own_socket, true,
          "expect: give the migration a hand-off socket of its own (its path is printed).");

namespace faultline {
namespace {

int Call(const nlohmann::json& request, nlohmann::json* reply) {
  absl::StatusOr<nlohmann::json> r = ControlCall(absl::GetFlag(FLAGS_control), request);
  if (!r.ok()) {
    return Fail(absl::Status(r.status().code(),
                             absl::StrCat(r.status().message(),
                                          " (is `faultline serve --daemon` running there? "
                                          "--control names its socket)")));
  }
  if (!r->value("ok", false)) {
    std::fprintf(stderr, "faultline: the daemon refused: %s\n",
                 r->value("error", std::string("?")).c_str());
    return 1;
  }
  *reply = *r;
  return 0;
}

std::string Ago(double unix_s) {
  if (unix_s <= 0) return "-";
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  return absl::StrFormat("%.1fs ago", now - unix_s);
}

}  // namespace

int RunExpect() {
  nlohmann::json r = {{"op", "expect"},
                      {"id", absl::GetFlag(FLAGS_id)},
                      {"connect", absl::GetFlag(FLAGS_connect)},
                      {"token", absl::GetFlag(FLAGS_token)},
                      {"bulk_channels", absl::GetFlag(FLAGS_bulk_channels)},
                      {"transport", absl::GetFlag(FLAGS_transport)},
                      {"own_socket", absl::GetFlag(FLAGS_own_socket)}};
  for (const auto& [k, v] :
       {std::pair<const char*, std::string>{"tls_ca", absl::GetFlag(FLAGS_tls_ca)},
        {"tls_cert", absl::GetFlag(FLAGS_tls_cert)},
        {"tls_key", absl::GetFlag(FLAGS_tls_key)},
        {"tls_server_name", absl::GetFlag(FLAGS_tls_server_name)}}) {
    if (!v.empty()) r[k] = v;
  }
  nlohmann::json reply;
  if (int rc = Call(r, &reply); rc != 0) return rc;
  const std::string sock = reply.value("handoff_socket", std::string());
  std::printf("registered %s%s\n", reply.value("id", std::string()).c_str(),
              sock.empty() ? "" : absl::StrCat(": its VMM hands over on ", sock).c_str());
  return 0;
}

int RunStatus() {
  nlohmann::json r = {{"op", "status"}};
  if (!absl::GetFlag(FLAGS_id).empty()) r["id"] = absl::GetFlag(FLAGS_id);
  nlohmann::json reply;
  if (int rc = Call(r, &reply); rc != 0) return rc;
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", reply["migrations"].dump(2).c_str());
    return 0;
  }
  std::printf("%-20s %-9s %15s %10s %9s %9s %5s %-12s %s\n", "MIGRATION", "PHASE", "PAGES",
              "RATE MB/s", "p50 µs", "p99 µs", "RECON", "STARTED", "LAST ERROR");
  for (const nlohmann::json& m : reply["migrations"]) {
    const uint64_t total = m.value("pages_total", 0ull), present = m.value("pages_present", 0ull);
    std::printf("%-20s %-9s %15s %10.1f %9.0f %9.0f %5llu %-12s %s\n",
                m.value("id", std::string()).c_str(), m.value("phase", std::string()).c_str(),
                absl::StrCat(present, "/", total).c_str(), m.value("bytes_per_second", 0.0) / 1e6,
                m.value("fault_latency_p50_us", 0.0), m.value("fault_latency_p99_us", 0.0),
                static_cast<unsigned long long>(m.value("reconnects", 0ull)),
                Ago(m.value("started", 0.0)).c_str(), m.value("error", std::string()).c_str());
  }
  return 0;
}

int RunCancelOrForget(const std::string& op) {
  if (absl::GetFlag(FLAGS_id).empty()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(op, ": --id is required")));
  }
  nlohmann::json reply;
  if (int rc = Call({{"op", op}, {"id", absl::GetFlag(FLAGS_id)}}, &reply); rc != 0) return rc;
  std::printf("%s: %s\n", op.c_str(), absl::GetFlag(FLAGS_id).c_str());
  return 0;
}

}  // namespace faultline
