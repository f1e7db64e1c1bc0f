#include "serve/daemon.h"

#include <grp.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <pwd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"
#include "base/fix.h"
#include "serve/control.h"
#include "transport/tls.h"

namespace faultline {
namespace {

std::string Dirname(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

}  // namespace

Daemon::Daemon(const DaemonOptions& opts) : opts_(opts) {}

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonOptions& opts) {
  // OpenSSL reads its configuration on first use — here the state file's name (a SHA-256) in
  // the first hand-off, ~3 ms the source VMM would wait for. Now, once.
  OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, nullptr);
  std::unique_ptr<Daemon> d(new Daemon(opts));
  if (d->opts_.socket_dir.empty()) d->opts_.socket_dir = Dirname(opts.handoff_socket);
  d->stop_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!d->stop_fd_.valid()) return ErrnoStatus("eventfd");
  absl::StatusOr<std::unique_ptr<HandoffServer>> shared =
      HandoffServer::Listen(opts.handoff_socket);
  if (!shared.ok()) return shared.status();
  d->OpenToAllowedPeers(opts.handoff_socket);
  d->listeners_.push_back({std::move(*shared), ""});
  if (!opts.control_socket.empty()) {
    absl::StatusOr<UniqueFd> control = ListenControl(opts.control_socket);
    if (!control.ok()) return control.status();
    d->control_fd_ = std::move(*control);
  }
  if (!opts.metrics_listen.empty()) {
    Daemon* raw = d.get();
    absl::StatusOr<std::unique_ptr<MetricsServer>> m =
        MetricsServer::Start(opts.metrics_listen, [raw] {
          DaemonCounters c;
          {
            std::lock_guard<std::mutex> l(raw->mu_);
            c = raw->counters_;
          }
          return RenderMetrics(raw->Statuses(), c);
        });
    if (!m.ok()) return m.status();
    d->metrics_ = std::move(*m);
  }
  d->counters_.start_time_seconds = UnixSeconds(absl::Now());
  d->Event("daemon_started", "",
           {{"handoff_socket", opts.handoff_socket},
            {"control_socket", opts.control_socket},
            {"metrics_port", d->metrics_port()}});
  return d;
}

Daemon::~Daemon() {
  Stop();
  std::vector<std::shared_ptr<Migration>> ms;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, m] : migrations_) ms.push_back(m);
  }
  for (auto& m : ms) m->Cancel();
  std::vector<std::thread> ws;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [t, done] : workers_) ws.push_back(std::move(t));
    workers_.clear();
  }
  for (std::thread& t : ws) {
    if (t.joinable()) t.join();
  }
  metrics_.reset();
  std::lock_guard<std::mutex> l(mu_);
  migrations_.clear();  // joins each run (cancelled above)
  listeners_.clear();
  if (control_fd_.valid()) unlink(opts_.control_socket.c_str());
}

void Daemon::Stop() {
  stop_.store(true);
  uint64_t one = 1;
  (void)!write(stop_fd_.get(), &one, sizeof(one));
}

void Daemon::Event(const std::string& type, const std::string& migration, nlohmann::json fields) {
  if (opts_.event_log == nullptr) return;
  nlohmann::json j = {
      {"time", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone())},
      {"event", type}};
  if (!migration.empty()) j["migration"] = migration;
  if (fields.is_object()) {
    for (auto& [k, v] : fields.items()) j[k] = v;
  }
  std::lock_guard<std::mutex> l(log_mu_);
  std::fprintf(opts_.event_log, "%s\n", j.dump().c_str());
  std::fflush(opts_.event_log);
}

void Daemon::OpenToAllowedPeers(const std::string& socket) const {
  // A hand-off socket is created 0600. With an allow list, other users must reach it: the
  // kernel's SO_PEERCRED, checked on every connection, is the gate then.
  if (!opts_.allow_uids.empty() || !opts_.allow_gids.empty()) chmod(socket.c_str(), 0666);
}

bool Daemon::PeerAllowed(const PeerCredentials& p) const {
  if (p.uid == 0 || p.uid == geteuid() || opts_.allow_uids.count(p.uid)) return true;
  if (opts_.allow_gids.empty()) return false;
  if (opts_.allow_gids.count(p.gid)) return true;
  // The supplementary groups of the peer's user (as the group database has them).
  struct passwd pw, *found = nullptr;
  std::vector<char> buf(16384);
  if (getpwuid_r(p.uid, &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return false;
  }
  std::vector<gid_t> groups(256);
  int n = static_cast<int>(groups.size());
  if (getgrouplist(pw.pw_name, p.gid, groups.data(), &n) < 0) return false;
  for (int i = 0; i < n; ++i) {
    if (opts_.allow_gids.count(groups[i])) return true;
  }
  return false;
}

void Daemon::Spawn(std::function<void()> f) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread t([f = std::move(f), done] {
    f();
    done->store(true);
  });
  std::lock_guard<std::mutex> l(mu_);
  workers_.emplace_back(std::move(t), done);
}

void Daemon::ReapWorkers() {
  std::vector<std::thread> finished;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->second->load()) {
        finished.push_back(std::move(it->first));
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (std::thread& t : finished) t.join();
}

void Daemon::Refuse(AcceptedConnection c, const std::string& reason, const absl::Status& why,
                    const std::string& migration) {
  {
    std::lock_guard<std::mutex> l(mu_);
    ++counters_.handoffs_refused[reason];
  }
  Event("refused", migration,
        {{"reason", reason},
         {"error", std::string(why.message())},
         {"peer_pid", c.peer.pid},
         {"peer_uid", c.peer.uid}});
  HandoffSession::Refuse(std::move(c), why);
}

void Daemon::OnHandoff(AcceptedConnection c, std::string migration) {
  bool silent = false;
  const PeerCredentials peer = c.peer;
  absl::StatusOr<std::unique_ptr<HandoffSession>> session =
      HandoffSession::Open(std::move(c), absl::Now() + opts_.hello_timeout, &silent,
                           [this] { return stop_.load(); });  // a VMM that attached may wait
  if (!session.ok()) {
    if (!silent) {
      std::lock_guard<std::mutex> l(mu_);
      ++counters_.handoffs_refused["bad_hello"];
    }
    if (!silent) {
      Event("refused", migration,
            {{"reason", "bad_hello"},
             {"error", std::string(session.status().message())},
             {"peer_pid", peer.pid},
             {"peer_uid", peer.uid}});
    }
    return;  // Open() answered the peer (ack{ok:false}) already
  }
  HandoffRequest& req = (*session)->request();
  std::shared_ptr<Migration> m;
  absl::Status why;
  std::string reason;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!migration.empty() && !req.migration.empty() && req.migration != migration) {
      reason = "wrong_socket";
      why = absl::InvalidArgumentError(absl::StrCat("the hello names migration '", req.migration,
                                                    "' on the socket of migration '", migration,
                                                    "'"));
    } else {
      if (migration.empty()) migration = req.migration;
      if (migration.empty()) {
        // No id (e.g. Firecracker's hand-off): the one migration waiting, if there is one.
        std::vector<std::string> waiting;
        for (auto& [id, mig] : migrations_) {
          if (mig->Snapshot().phase == MigrationPhase::kWaiting) waiting.push_back(id);
        }
        if (waiting.size() == 1) {
          migration = waiting[0];
        } else {
          reason = "no_migration_named";
          why = absl::InvalidArgumentError(absl::StrCat(
              "the hello names no migration and ", waiting.size(),
              " are waiting; name it (\"migration\" in the hello) or use its own socket"));
        }
      }
      if (why.ok()) {
        auto it = migrations_.find(migration);
        if (it == migrations_.end()) {
          reason = "unknown_migration";
          why = absl::NotFoundError(absl::StrCat(
              "no migration '", migration, "' is registered here (register it first: expect)"));
        } else {
          m = it->second;
        }
      }
    }
  }
  if (!why.ok()) {
    {
      std::lock_guard<std::mutex> l(mu_);
      ++counters_.handoffs_refused[reason];
    }
    Event("refused", migration,
          {{"reason", reason}, {"error", std::string(why.message())}, {"peer_pid", peer.pid}});
    (void)(*session)->Ack(why);
    return;
  }
  const std::string vmm = req.vmm;
  absl::Status started = m->Start(std::move(*session), [this](const Migration& done) {
    MigrationStatus st = done.Snapshot();
    {
      std::lock_guard<std::mutex> l(mu_);
      ++(st.phase == MigrationPhase::kComplete ? counters_.migrations_succeeded
                                               : counters_.migrations_failed);
    }
    nlohmann::json f = {{"pages", st.pages_total},
                        {"seconds", absl::ToDoubleSeconds(st.ended - st.started)},
                        {"faults", st.faults},
                        {"reconnects", st.reconnects}};
    if (st.phase == MigrationPhase::kFailed) f["error"] = st.error;
    Event(st.phase == MigrationPhase::kComplete ? "complete" : "failed", st.id, f);
    if (opts_.exit_when_done) Stop();
  });
  if (!started.ok()) {
    // Start() left the session with us only on refusal: it was moved otherwise.
    std::lock_guard<std::mutex> l(mu_);
    ++counters_.handoffs_refused["duplicate_handoff"];
    Event("refused", migration,
          {{"reason", "duplicate_handoff"}, {"error", std::string(started.message())}});
    return;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    ++counters_.handoffs_accepted;
  }
  Event("handed_over", migration, {{"vmm", vmm}, {"vmm_pid", peer.pid}, {"vmm_uid", peer.uid}});
}

std::vector<MigrationStatus> Daemon::Statuses() const {
  std::vector<std::shared_ptr<Migration>> ms;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [id, m] : migrations_) ms.push_back(m);
  }
  std::vector<MigrationStatus> out;
  for (const auto& m : ms) out.push_back(m->Snapshot());
  return out;
}

void Daemon::Watch() {
  for (const MigrationStatus& m : Statuses()) {
    uint64_t prev;
    {
      std::lock_guard<std::mutex> l(mu_);
      prev = last_reconnects_[m.id];
      last_reconnects_[m.id] = m.reconnects;
    }
    if (m.reconnects > prev) Event("reconnected", m.id, {{"reconnects", m.reconnects}});
  }
}

void Daemon::Run() {
  absl::Time last_watch = absl::Now();
  while (!stop_.load()) {
    ReapWorkers();
    std::vector<struct pollfd> p;
    std::vector<std::pair<HandoffServer*, std::string>> servers;
    {
      std::lock_guard<std::mutex> l(mu_);
      for (Listener& x : listeners_) {
        p.push_back({x.server->fd(), POLLIN, 0});
        servers.emplace_back(x.server.get(), x.migration);
      }
    }
    p.push_back({control_fd_.valid() ? control_fd_.get() : -1, POLLIN, 0});
    p.push_back({stop_fd_.get(), POLLIN, 0});
    if (poll(p.data(), p.size(), 200) < 0 && errno != EINTR) break;
    if (p.back().revents) {
      uint64_t v;
      (void)!read(stop_fd_.get(), &v, sizeof(v));
    }
    for (size_t i = 0; i < servers.size(); ++i) {
      if (!(p[i].revents & POLLIN)) continue;
      // The server stays valid: listeners are only dropped by "forget" on this same loop's
      // worker threads after a lock — so accept under the lock.
      absl::StatusOr<AcceptedConnection> c;
      {
        std::lock_guard<std::mutex> l(mu_);
        bool still = false;
        for (Listener& x : listeners_) still |= x.server.get() == servers[i].first;
        if (!still) continue;
        c = servers[i].first->AcceptConnection();
      }
      if (!c.ok()) continue;
      const std::string migration = servers[i].second;
      if (!PeerAllowed(c->peer)) {
        Refuse(std::move(*c), "peer_not_allowed",
               absl::PermissionDeniedError(
                   absl::StrCat("VMM pid ", c->peer.pid, " runs as uid ", c->peer.uid, " gid ",
                                c->peer.gid, ", which may not hand over memory to this faultline")),
               migration);
        continue;
      }
      bool busy;
      {
        std::lock_guard<std::mutex> l(mu_);
        busy = pending_ >= opts_.max_pending_connections;
        if (!busy) ++pending_;
      }
      if (busy) {
        Refuse(std::move(*c), "too_many_pending",
               absl::ResourceExhaustedError("too many hand-offs being read at once; retry"),
               migration);
        continue;
      }
      auto conn = std::make_shared<AcceptedConnection>(std::move(*c));
      Spawn([this, conn, migration] {
        OnHandoff(std::move(*conn), migration);
        std::lock_guard<std::mutex> l(mu_);
        --pending_;
      });
    }
    if (p[servers.size()].revents & POLLIN) {
      uid_t uid = 0;
      absl::StatusOr<UniqueFd> fd = AcceptControl(control_fd_.get(), &uid);
      if (fd.ok()) {
        auto f = std::make_shared<UniqueFd>(std::move(*fd));
        Spawn([this, f, uid] { OnControl(std::move(*f), uid); });
      }
    }
    if (absl::Now() - last_watch > absl::Milliseconds(200)) {
      last_watch = absl::Now();
      Watch();
    }
  }
}

}  // namespace faultline
