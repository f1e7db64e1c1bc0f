#include "cli/local_run.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"
#include "base/writer_throttle.h"
#include "cli/setup.h"
#include "dirty/wp_tracker.h"
#include "nlohmann/json.hpp"
#include "transport/page_server.h"
#include "transport/socket.h"
#include "transport/tcp_page_source.h"

namespace faultline {

uint64_t PeakRssKib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6));
  }
  return 0;
}

absl::StatusOr<LocalRunReport> RunLocalMigration(const LocalRunOptions& opts) {
  const uint32_t ps = MemoryKindPageSize(opts.kind);
  // Source memory and its page server.
  absl::StatusOr<std::unique_ptr<PatternMemory>> src =
      PatternMemory::Create(opts.size, ps, opts.pattern);
  if (!src.ok()) return src.status();
  absl::StatusOr<UniqueFd> listen = ListenTcp("127.0.0.1:0");
  if (!listen.ok()) return listen.status();
  absl::StatusOr<int> port = BoundPort(listen->get());
  if (!port.ok()) return port.status();
  const Token token = RandomToken();

  // Warm-up: the source's "guest", a writer rewriting a hot block while pages move, and the
  // tracking of its writes. Both live where the page server does.
  const bool warm = opts.engine.warmup.enabled;
  std::atomic<bool> writer_stop{false};
  std::thread writer;
  WriterThrottle throttle;  // warm-up may ask the source to slow its writer down
  auto stop_writer = [&] {
    writer_stop.store(true);
    if (writer.joinable()) writer.join();
  };
  std::unique_ptr<WpDirtyTracker> tracker;
  auto start_live_source = [&]() -> absl::Status {
    if (!warm) return absl::OkStatus();
    absl::StatusOr<std::unique_ptr<WpDirtyTracker>> t =
        WpDirtyTracker::Create({{(*src)->base(), opts.size, ps}}, stop_writer, nullptr,
                               [&](uint32_t percent) { throttle.Set(percent); });
    if (!t.ok()) return t.status();
    tracker = std::move(*t);
    const uint64_t hot = opts.size / ps * opts.churn_permille / 1000;
    writer = std::thread([&, hot] {
      for (uint64_t gen = 1; !writer_stop.load(std::memory_order_relaxed); ++gen) {
        for (uint64_t p = 0; p < hot && !writer_stop.load(std::memory_order_relaxed); ++p) {
          reinterpret_cast<volatile uint64_t*>((*src)->base() + p * ps)[1] = gen;
          if (p % 64 == 0) throttle.Pace();
        }
        if (hot == 0) absl::SleepFor(absl::Milliseconds(1));
      }
    });
    return absl::OkStatus();
  };
  auto make_server = [&]() -> absl::StatusOr<std::unique_ptr<PageServer>> {
    if (absl::Status s = start_live_source(); !s.ok()) return s;
    absl::StatusOr<std::vector<SourceRegion>> regions = (*src)->Regions("ram");
    if (!regions.ok()) return regions.status();
    auto server = std::make_unique<PageServer>(std::move(*regions), token, nullptr, tracker.get());
    server->SetUrgentSlice(opts.engine.fault_slice);  // one knob for the whole fault path
    server->SetBulkThreads(opts.bulk_threads);
    return server;
  };

  pid_t child = -1;
  std::unique_ptr<PageServer> thread_server;
  std::thread server_thread;
  if (opts.source_in_child) {
    child = fork();
    if (child < 0) return ErrnoStatus("fork");
    if (child == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive the destination
      absl::StatusOr<std::unique_ptr<PageServer>> server = make_server();
      if (!server.ok()) {
        std::fprintf(stderr, "faultline: source: %s\n",
                     std::string(server.status().message()).c_str());
        _exit(2);
      }
      absl::Status s = (*server)->Serve(listen->get());
      stop_writer();
      _exit(s.ok() ? 0 : 1);
    }
  } else {
    absl::StatusOr<std::unique_ptr<PageServer>> server = make_server();
    if (!server.ok()) return server.status();
    thread_server = std::move(*server);
    server_thread = std::thread([&] { (void)thread_server->Serve(listen->get()); });
  }
  auto stop_source = [&](bool kill_it) {
    if (child > 0) {
      if (kill_it) kill(child, SIGTERM);
      int st;
      waitpid(child, &st, 0);
      child = -1;
    }
    if (thread_server) {
      if (kill_it) thread_server->Shutdown();
      if (server_thread.joinable()) server_thread.join();
    }
    stop_writer();
  };

  // Destination memory, registered before the guest starts.
  absl::StatusOr<Destination> dest = CreateDestination(opts.kind, opts.size, opts.engine);
  if (!dest.ok()) {
    stop_source(true);
    return dest.status();
  }
  GuestRegion* const dst = dest->region();
  std::unique_ptr<Engine>& engine = dest->engine;
  TcpSourceOptions topts;
  topts.address = absl::StrCat("127.0.0.1:", *port);
  topts.token = token;
  topts.busy_poll = opts.transport_busy_poll;
  topts.urgent_slice = opts.engine.fault_slice;
  topts.bulk_lanes = opts.bulk_lanes;
  topts.bulk_threads = opts.bulk_threads;
  absl::StatusOr<std::unique_ptr<TcpPageSource>> source = TcpPageSource::Connect(topts);
  if (!source.ok()) {
    stop_source(true);
    return source.status();
  }

  const absl::Time t0 = absl::Now();
  std::atomic<bool> running{true};
  std::unique_ptr<ThreadGuest> guest;
  std::thread guest_starter;  // warm-up: the guest runs here only after the switch
  absl::Time switched_at = t0;
  if (opts.run_guest && !warm) {
    guest = std::make_unique<ThreadGuest>(dst->base(), opts.size, ps, opts.guest);
  } else if (opts.run_guest) {
    guest_starter = std::thread([&] {
      // Until the final round is applied (or the run ended: a frozen source needs none).
      while (engine->warmup() != nullptr && !engine->warmup()->switched() && running.load()) {
        absl::SleepFor(absl::Microseconds(200));
      }
      switched_at = absl::Now();
      guest = std::make_unique<ThreadGuest>(dst->base(), opts.size, ps, opts.guest);
    });
  }
  std::thread progress;
  if (opts.progress) {
    progress = std::thread([&] {
      while (running.load()) {
        uint64_t done = (engine->total_pages() - engine->remaining_pages()) * uint64_t{ps};
        opts.progress(done, opts.size);
        absl::SleepFor(absl::Milliseconds(100));
      }
      opts.progress(opts.size - engine->remaining_pages() * uint64_t{ps}, opts.size);
    });
  }
  absl::Status run = engine->Run(source->get());
  const absl::Duration took = absl::Now() - t0;
  running.store(false);
  if (guest_starter.joinable()) guest_starter.join();
  if (progress.joinable()) progress.join();
  if (!run.ok()) {
    // Faulted guest threads stay blocked while the range is registered: unblock them by
    // tearing the engine down (unregister wakes them; they then read zeros — the run has
    // failed anyway and nothing is verified).
    if (guest) guest->Stop();
    engine.reset();
    guest.reset();
    stop_source(true);
    return run;
  }
  if (guest) guest->Join();
  stop_source(false);

  LocalRunReport r;
  const Engine& e = *engine;
  const EngineCounters& c = e.counters();
  r.kind = MemoryKindName(opts.kind);
  r.size = opts.size;
  r.page_size = ps;
  r.pages = e.total_pages();
  r.urgent_pages = c.urgent_pages.load();
  r.bulk_pages = c.bulk_pages.load();
  r.zero_pages = c.zero_pages.load();
  r.bytes_received = c.bytes_received.load();
  r.faults = c.faults.load();
  r.minor_faults = c.minor_faults.load();
  r.duplicate_faults = c.duplicate_faults.load();
  r.urgent_requests = c.urgent_requests.load();
  r.bulk_requests = c.bulk_requests.load();
  r.corrupt_pages = c.corrupt_pages.load();
  r.eexist = e.placer_counters().eexist.load();
  r.eagain = e.placer_counters().eagain.load();
  r.seconds = absl::ToDoubleSeconds(took);
  r.fault_latency = e.fault_stats().Overall();
  r.per_thread = e.fault_stats().PerThread();
  if (guest) {
    r.guest_latency = guest->SlowTouches();
    r.guest_touches = guest->touches();
  }
  r.engine_footprint = e.footprint_bytes();
  if (e.warmup() != nullptr) {
    for (const WarmUpRound& w : e.warmup()->rounds()) {
      r.warmup_rounds.push_back(w.pages);
      r.warmup_throttle.push_back(w.throttle);
    }
    r.warmup_seconds = absl::ToDoubleSeconds(switched_at - t0);
    r.faults_after_switch = c.faults.load() - e.faults_before_switch();
  }
  // Verify: every destination page against the source, byte for byte.
  const uint8_t* a = dst->base();
  const uint8_t* b = (*src)->base();
  for (uint64_t p = 0; p < r.pages; ++p) {
    if (memcmp(a + p * ps, b + p * ps, ps) != 0) ++r.mismatches;
    ++r.verified_pages;
  }
  r.peak_rss_kib = PeakRssKib();
  r.missing_features = dest->missing_features;
  return r;
}

std::string ReportTable(const LocalRunReport& r) {
  std::string s;
  auto row = [&](const std::string& k, const std::string& v) {
    absl::StrAppendFormat(&s, "  %-28s %s\n", k, v);
  };
  row("region kind",
      absl::StrFormat("%s, %d MiB in %d KiB pages", r.kind, r.size >> 20, r.page_size >> 10));
  row("pages urgent / bulk / zero",
      absl::StrFormat("%d / %d / %d", r.urgent_pages, r.bulk_pages, r.zero_pages));
  row("bytes received", absl::StrFormat("%.1f MiB", r.bytes_received / 1048576.0));
  row("total time", absl::StrFormat("%.3f s (%.0f MiB/s of guest memory)", r.seconds,
                                    r.size / 1048576.0 / std::max(r.seconds, 1e-9)));
  row("faults (minor) / duplicate",
      absl::StrFormat("%d (%d) / %d", r.faults, r.minor_faults, r.duplicate_faults));
  row("fault latency (engine)",
      r.fault_latency.count()
          ? absl::StrFormat("p50 %s  p99 %s  max %s", FormatNanos(r.fault_latency.Percentile(0.5)),
                            FormatNanos(r.fault_latency.Percentile(0.99)),
                            FormatNanos(r.fault_latency.max()))
          : "no faults");
  row("fault latency (guest)",
      r.guest_latency.count()
          ? absl::StrFormat("p50 %s  p99 %s  max %s (%d slow touches)",
                            FormatNanos(r.guest_latency.Percentile(0.5)),
                            FormatNanos(r.guest_latency.Percentile(0.99)),
                            FormatNanos(r.guest_latency.max()), r.guest_latency.count())
          : "no slow touches");
  row("engine memory", absl::StrFormat("%.2f MiB state+buffers, peak RSS %.1f MiB",
                                       r.engine_footprint / 1048576.0, r.peak_rss_kib / 1024.0));
  if (!r.missing_features.empty()) {
    row("kernel lacks (uffd)", r.missing_features + " — the engine works without them");
  }
  if (!r.warmup_rounds.empty()) {
    std::string rounds;
    for (size_t i = 0; i < r.warmup_rounds.size(); ++i) {
      absl::StrAppend(&rounds, rounds.empty() ? "" : ", ", r.warmup_rounds[i]);
      // The throttle asked for with the round governs the writes of the next.
      if (i < r.warmup_throttle.size() && r.warmup_throttle[i] > 0) {
        absl::StrAppend(&rounds, " (then ", r.warmup_throttle[i], " % throttle)");
      }
    }
    row("warm-up rounds (pages rewritten)", rounds + " (the last: final)");
    row("warm-up / faults after switch",
        absl::StrFormat("%.3f s / %d", r.warmup_seconds, r.faults_after_switch));
  }
  row("verification",
      absl::StrFormat("verified %d pages, %d mismatches", r.verified_pages, r.mismatches));
  return s;
}

static nlohmann::json HistJson(const LatencyHistogram& h) {
  return {{"count", h.count()},          {"p50_ns", h.Percentile(0.5)},
          {"p90_ns", h.Percentile(0.9)}, {"p99_ns", h.Percentile(0.99)},
          {"max_ns", h.max()},           {"mean_ns", h.mean()}};
}

std::string ReportJson(const std::vector<LocalRunReport>& reports) {
  nlohmann::json runs = nlohmann::json::array();
  for (const LocalRunReport& r : reports) {
    nlohmann::json per_thread = nlohmann::json::object();
    for (const auto& [tid, h] : r.per_thread) per_thread[std::to_string(tid)] = HistJson(h);
    runs.push_back({{"kind", r.kind},
                    {"size_bytes", r.size},
                    {"page_size", r.page_size},
                    {"pages", r.pages},
                    {"urgent_pages", r.urgent_pages},
                    {"bulk_pages", r.bulk_pages},
                    {"zero_pages", r.zero_pages},
                    {"bytes_received", r.bytes_received},
                    {"faults", r.faults},
                    {"minor_faults", r.minor_faults},
                    {"duplicate_faults", r.duplicate_faults},
                    {"urgent_requests", r.urgent_requests},
                    {"bulk_requests", r.bulk_requests},
                    {"corrupt_pages", r.corrupt_pages},
                    {"eexist", r.eexist},
                    {"eagain", r.eagain},
                    {"total_seconds", r.seconds},
                    {"fault_latency", HistJson(r.fault_latency)},
                    {"fault_latency_per_thread", per_thread},
                    {"guest_slow_touches", HistJson(r.guest_latency)},
                    {"guest_touches", r.guest_touches},
                    {"verified_pages", r.verified_pages},
                    {"mismatches", r.mismatches},
                    {"warmup_rounds", r.warmup_rounds},
                    {"warmup_throttle", r.warmup_throttle},
                    {"warmup_seconds", r.warmup_seconds},
                    {"faults_after_switch", r.faults_after_switch},
                    {"engine_footprint_bytes", r.engine_footprint},
                    {"peak_rss_kib", r.peak_rss_kib}});
  }
  return nlohmann::json{{"faultline_local_run", runs}}.dump(2);
}

}  // namespace faultline
