#include "serve/migration.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "transport/rdma_page_source.h"
#include "transport/tcp_page_source.h"

namespace faultline {

double UnixSeconds(absl::Time t) {
  return t == absl::InfinitePast() ? 0 : absl::ToDoubleSeconds(t - absl::UnixEpoch());
}

const char* MigrationPhaseName(MigrationPhase p) {
  switch (p) {
    case MigrationPhase::kWaiting: return "waiting";
    case MigrationPhase::kRunning: return "running";
    case MigrationPhase::kComplete: return "complete";
    case MigrationPhase::kFailed: return "failed";
  }
  return "?";
}

namespace {

// The engine's counters into a status (the caller holds the migration's lock).
void Refresh(const Engine& e, MigrationStatus* s) {
  const EngineCounters& c = e.counters();
  s->pages_total = e.total_pages();
  s->pages_present = e.total_pages() - e.remaining_pages();
  s->page_bytes = e.total_bytes();
  s->urgent_pages = c.urgent_pages.load();
  s->bulk_pages = c.bulk_pages.load();
  s->zero_pages = c.zero_pages.load();
  s->urgent_bytes = c.urgent_bytes.load();
  s->bulk_bytes = c.bulk_bytes.load();
  s->faults = c.faults.load();
  s->reconnects = c.reconnects.load();
  s->engine_restarts = e.adopted() ? 1 : 0;
  s->fault_latency = e.fault_stats().Overall();
  s->fault_latency_per_thread = e.fault_stats().PerThread();
  if (const WarmUp* w = e.warmup()) {
    const std::vector<WarmUpRound> rounds = w->rounds();
    s->warmup = true;
    s->warmup_switched = w->switched();
    s->warmup_rounds = rounds.size();
    s->warmup_last_set_pages = rounds.empty() ? 0 : rounds.back().pages;
    s->warmup_throttle = rounds.empty() ? 0 : rounds.back().throttle;
  }
  const double secs = absl::ToDoubleSeconds(absl::Now() - s->started);
  if (secs > 0) s->bytes_per_second = (s->urgent_bytes + s->bulk_bytes) / secs;
}

// The run's own way to connect (HandoffRunOptions::connect), else TCP.
absl::StatusOr<std::unique_ptr<PageSource>> ConnectAsConfigured(const HandoffRunOptions& run,
                                                                const TcpSourceOptions& t) {
  if (run.connect) return run.connect(t);
  absl::StatusOr<std::unique_ptr<TcpPageSource>> tcp = TcpPageSource::Connect(t);
  if (!tcp.ok()) return tcp.status();
  return std::unique_ptr<PageSource>(std::move(*tcp));
}

}  // namespace

// A connection made ahead and older than this is not trusted (a middlebox may have dropped it
// silently): the run connects again.
constexpr absl::Duration kAheadMaxAge = absl::Seconds(60);

Migration::Migration(MigrationSpec spec)
    : spec_(std::move(spec)), ahead_(absl::UnavailableError("not connected ahead")) {
  status_.id = spec_.id;
  status_.source = spec_.run.source.address;
  status_.handoff_socket = spec_.handoff_socket;
  status_.registered = absl::Now();
  status_.started = status_.ended = absl::InfinitePast();
  if (spec_.connect_ahead && spec_.transport == "tcp") {
    ahead_thread_ = std::thread([this] {
      ahead_ = ConnectAsConfigured(spec_.run, spec_.run.source);  // read after the join only
      ahead_at_ = absl::Now();
    });
  }
}

std::unique_ptr<PageSource> Migration::TakeAhead() {
  std::lock_guard<std::mutex> l(ahead_mu_);
  if (ahead_thread_.joinable()) ahead_thread_.join();  // bounded by the connect timeout
  if (!ahead_.ok()) return nullptr;                    // e.g. the source was not up yet
  std::unique_ptr<PageSource> s = std::move(*ahead_);
  ahead_ = absl::UnavailableError("taken");
  if (s == nullptr || absl::Now() - ahead_at_ > kAheadMaxAge || !s->Connected()) return nullptr;
  return s;
}

Migration::~Migration() {
  Cancel();
  {
    std::lock_guard<std::mutex> l(ahead_mu_);
    if (ahead_thread_.joinable()) ahead_thread_.join();
  }
  std::thread t;
  {
    std::lock_guard<std::mutex> l(mu_);
    t.swap(thread_);
  }
  if (t.joinable()) t.join();
}

absl::Status Migration::Start(std::unique_ptr<HandoffSession> session,
                              std::function<void(const Migration&)> on_end) {
  std::lock_guard<std::mutex> l(mu_);
  if (status_.phase == MigrationPhase::kRunning) {
    return absl::FailedPreconditionError(absl::StrCat(
        "migration '", spec_.id, "' is already served (VMM pid ", status_.vmm_pid, ")"));
  }
  if (status_.phase == MigrationPhase::kComplete) {
    return absl::FailedPreconditionError(absl::StrCat("migration '", spec_.id, "' is complete"));
  }
  // Waiting, or failed and handed over again (a resume after a broken run).
  if (thread_.joinable()) thread_.join();  // the previous run has ended (its phase says so)
  cancelled_.store(false);
  status_.phase = MigrationPhase::kRunning;
  status_.error.clear();
  status_.vmm = session->request().vmm;
  status_.vmm_pid = session->request().peer_pid;
  status_.started = absl::Now();
  status_.ended = absl::InfinitePast();
  thread_ = std::thread([this, s = std::move(session), on_end = std::move(on_end)]() mutable {
    Run(std::move(s), std::move(on_end));
  });
  return absl::OkStatus();
}

void Migration::Run(std::unique_ptr<HandoffSession> session,
                    std::function<void(const Migration&)> on_end) {
  HandoffRunOptions o = spec_.run;
  o.on_engine = [this](Engine* e) {
    std::lock_guard<std::mutex> l(mu_);
    if (e == nullptr && engine_ != nullptr) Refresh(*engine_, &status_);  // the final figures
    engine_ = e;
    if (e != nullptr && cancelled_.load()) e->Cancel();
  };
  if (spec_.transport == "rdma") {
    o.connect = [](const TcpSourceOptions& t) -> absl::StatusOr<std::unique_ptr<PageSource>> {
      RdmaSourceOptions r;
      r.control = t;
      absl::StatusOr<std::unique_ptr<RdmaPageSource>> s = RdmaPageSource::Connect(r);
      if (!s.ok()) return s.status();
      return std::unique_ptr<PageSource>(std::move(*s));
    };
  }
  if (spec_.transport == "tcp") {
    o.connect = [this](const TcpSourceOptions& t) -> absl::StatusOr<std::unique_ptr<PageSource>> {
      if (std::unique_ptr<PageSource> s = TakeAhead()) return s;
      return ConnectAsConfigured(spec_.run, t);
    };
  }
  nlohmann::json stats;
  absl::Status s = RunHandoff(*session, o, &stats);
  {
    std::lock_guard<std::mutex> l(mu_);
    status_.phase = s.ok() ? MigrationPhase::kComplete : MigrationPhase::kFailed;
    status_.error = s.ok() ? "" : std::string(s.message());
    status_.ended = absl::Now();
    report_ = stats;
  }
  if (on_end) on_end(*this);
}

MigrationStatus Migration::Snapshot() const {
  std::lock_guard<std::mutex> l(mu_);
  MigrationStatus s = status_;
  if (engine_ != nullptr) Refresh(*engine_, &s);
  return s;
}

nlohmann::json Migration::Report() const {
  std::lock_guard<std::mutex> l(mu_);
  return report_;
}

bool Migration::finished() const {
  std::lock_guard<std::mutex> l(mu_);
  return status_.phase == MigrationPhase::kComplete || status_.phase == MigrationPhase::kFailed;
}

void Migration::Cancel() {
  cancelled_.store(true);
  std::lock_guard<std::mutex> l(mu_);
  if (engine_ != nullptr) engine_->Cancel();
}

}  // namespace faultline
