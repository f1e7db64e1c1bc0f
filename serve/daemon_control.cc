// The daemon's control socket: "expect" (register a migration), "status", "cancel",
// "forget" — the request parsing and answers. The rest of Daemon is in daemon.cc.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"
#include "serve/control.h"
#include "serve/daemon.h"

namespace faultline {
namespace {

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == ':')) {
      return false;
    }
  }
  return true;
}

nlohmann::json StatusJson(const MigrationStatus& m) {
  const LatencyHistogram& h = m.fault_latency;
  return {{"id", m.id},
          {"phase", MigrationPhaseName(m.phase)},
          {"error", m.error},
          {"source", m.source},
          {"handoff_socket", m.handoff_socket},
          {"vmm", m.vmm},
          {"vmm_pid", m.vmm_pid},
          {"registered", UnixSeconds(m.registered)},
          {"started", UnixSeconds(m.started)},
          {"ended", UnixSeconds(m.ended)},
          {"pages_total", m.pages_total},
          {"pages_present", m.pages_present},
          {"urgent_pages", m.urgent_pages},
          {"bulk_pages", m.bulk_pages},
          {"zero_pages", m.zero_pages},
          {"urgent_bytes", m.urgent_bytes},
          {"bulk_bytes", m.bulk_bytes},
          {"bytes_per_second", m.bytes_per_second},
          {"faults", m.faults},
          {"fault_latency_p50_us", h.Percentile(0.5) / 1000.0},
          {"fault_latency_p99_us", h.Percentile(0.99) / 1000.0},
          {"fault_latency_max_us", h.max() / 1000.0},
          {"reconnects", m.reconnects},
          {"engine_restarts", m.engine_restarts},
          {"warmup", m.warmup ? nlohmann::json{{"rounds", m.warmup_rounds},
                                               {"last_set_pages", m.warmup_last_set_pages},
                                               {"throttle_percent", m.warmup_throttle},
                                               {"switched", m.warmup_switched}}
                              : nlohmann::json()}};
}
}  // namespace

nlohmann::json Daemon::Expect(const nlohmann::json& r) {
  auto str = [&](const char* k) {
    return r.contains(k) && r[k].is_string() ? r[k].get<std::string>() : std::string();
  };
  const std::string id = str("id");
  if (!ValidId(id)) {
    return ControlError(
        absl::InvalidArgumentError("\"id\": 1..64 characters of letters, digits and -_.:"));
  }
  MigrationSpec spec;
  spec.id = id;
  spec.run.engine = opts_.engine;
  spec.run.bulk_hold_until_running = opts_.bulk_hold_until_running;
  spec.run.state_dir = r.contains("state_dir") && r["state_dir"].is_string()
                           ? r["state_dir"].get<std::string>()
                           : opts_.state_dir;
  spec.run.source.address = str("connect");
  if (spec.run.source.address.empty()) {
    return ControlError(absl::InvalidArgumentError("\"connect\": the source's HOST:PORT"));
  }
  absl::StatusOr<Token> token = ParseToken(str("token"));
  if (!token.ok()) {
    return ControlError(
        absl::InvalidArgumentError(absl::StrCat("\"token\": ", token.status().message())));
  }
  spec.run.source.token = *token;
  if (r.contains("bulk_channels")) {
    if (!r["bulk_channels"].is_number_integer() || r["bulk_channels"].get<int>() < 1 ||
        r["bulk_channels"].get<int>() > static_cast<int>(kMaxBulkLanes)) {
      return ControlError(absl::InvalidArgumentError(
          absl::StrCat("\"bulk_channels\": an integer 1..", kMaxBulkLanes)));
    }
    spec.run.source.bulk_lanes = r["bulk_channels"].get<uint32_t>();
  }
  spec.transport = r.contains("transport") ? str("transport") : "tcp";
  if (spec.transport != "tcp" && spec.transport != "rdma") {
    return ControlError(absl::InvalidArgumentError("\"transport\": tcp or rdma"));
  }
  TlsFiles tls{str("tls_cert"), str("tls_key"), str("tls_ca")};
  absl::StatusOr<std::shared_ptr<const TlsContext>> ctx =
      TlsContext::FromFiles(TlsContext::Role::kClient, tls);
  if (!ctx.ok()) return ControlError(ctx.status());
  spec.run.source.tls = *ctx;
  spec.run.source.tls_server_name = str("tls_server_name");
  // Many migrations share this host's cores: background streams yield to fault answers.
  spec.run.source.bulk_idle = opts_.bulk_idle;
  spec.run.source.bulk_threads = opts_.bulk_threads;
  const bool own_socket = !r.contains("own_socket") || r["own_socket"] == true;
  std::string socket;
  if (absl::Status st = Register(std::move(spec), own_socket, &socket); !st.ok()) {
    return ControlError(st);
  }
  return {{"ok", true}, {"id", id}, {"handoff_socket", socket}};
}

absl::Status Daemon::Register(MigrationSpec spec, bool own_socket, std::string* socket) {
  const std::string id = spec.id;
  if (!ValidId(id)) {
    return absl::InvalidArgumentError("a migration id is 1..64 of letters, digits and -_.:");
  }
  if (own_socket) {
    spec.handoff_socket = absl::StrCat(opts_.socket_dir, "/faultline-", id, ".sock");
    if (spec.handoff_socket.size() >= sizeof(sockaddr_un::sun_path)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the migration's socket path ", spec.handoff_socket, " is too long"));
    }
  }
  std::lock_guard<std::mutex> l(mu_);
  if (migrations_.count(id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("migration '", id, "' is already registered (",
                     MigrationPhaseName(migrations_[id]->Snapshot().phase), "); forget it first"));
  }
  if (own_socket) {
    absl::StatusOr<std::unique_ptr<HandoffServer>> s = HandoffServer::Listen(spec.handoff_socket);
    if (!s.ok()) return s.status();
    OpenToAllowedPeers(spec.handoff_socket);
    listeners_.push_back({std::move(*s), id});
  }
  const std::string path = spec.handoff_socket, source = spec.run.source.address;
  migrations_[id] = std::make_shared<Migration>(std::move(spec));
  Event("registered", id, {{"source", source}, {"handoff_socket", path}});
  uint64_t one = 1;
  (void)!write(stop_fd_.get(), &one, sizeof(one));  // the loop polls the new socket too
  if (socket != nullptr) *socket = path;
  return absl::OkStatus();
}

std::shared_ptr<Migration> Daemon::Find(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = migrations_.find(id);
  return it == migrations_.end() ? nullptr : it->second;
}

nlohmann::json Daemon::Control(const nlohmann::json& r, uid_t peer_uid) {
  {
    std::lock_guard<std::mutex> l(mu_);
    ++counters_.control_requests;
  }
  auto fail = [&](const nlohmann::json& reply) {
    if (reply.value("ok", false) == false) {
      std::lock_guard<std::mutex> l(mu_);
      ++counters_.control_errors;
    }
    return reply;
  };
  if (!r.is_object() || !r.contains("op") || !r["op"].is_string()) {
    return fail(ControlError(absl::InvalidArgumentError("a request is {\"op\": ...}")));
  }
  const std::string op = r["op"];
  const std::string id = r.contains("id") && r["id"].is_string() ? r["id"].get<std::string>() : "";
  if (op == "expect") return fail(Expect(r));
  if (op == "status") {
    nlohmann::json list = nlohmann::json::array();
    for (const MigrationStatus& m : Statuses()) {
      if (id.empty() || m.id == id) list.push_back(StatusJson(m));
    }
    if (!id.empty() && list.empty()) {
      return fail(ControlError(absl::NotFoundError(absl::StrCat("no migration '", id, "'"))));
    }
    return {{"ok", true}, {"migrations", list}};
  }
  if (op == "cancel" || op == "forget") {
    std::shared_ptr<Migration> m;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = migrations_.find(id);
      if (it == migrations_.end()) {
        return fail(ControlError(absl::NotFoundError(absl::StrCat("no migration '", id, "'"))));
      }
      m = it->second;
      if (op == "forget") {
        if (m->Snapshot().phase == MigrationPhase::kRunning) {
          return fail(ControlError(absl::FailedPreconditionError(
              absl::StrCat("migration '", id, "' is running: cancel it first"))));
        }
        migrations_.erase(it);
        listeners_.erase(std::remove_if(listeners_.begin(), listeners_.end(),
                                        [&](const Listener& x) { return x.migration == id; }),
                         listeners_.end());
      }
    }
    if (op == "cancel") {
      m->Cancel();
      Event("cancel_requested", id, {{"by_uid", peer_uid}});
    } else {
      Event("forgotten", id, {{"by_uid", peer_uid}});
    }
    return {{"ok", true}, {"id", id}};
  }
  return fail(ControlError(absl::InvalidArgumentError(
      absl::StrCat("unknown op '", op, "' (expect, status, cancel, forget)"))));
}

void Daemon::OnControl(UniqueFd fd, uid_t uid) {
  absl::StatusOr<nlohmann::json> req = ReadControlRequest(fd.get(), absl::Seconds(5));
  nlohmann::json reply;
  if (!req.ok()) {
    {
      std::lock_guard<std::mutex> l(mu_);
      ++counters_.control_errors;
    }
    reply = ControlError(req.status());
  } else {
    reply = Control(*req, uid);
  }
  (void)WriteControlReply(fd.get(), reply);
}

}  // namespace faultline
