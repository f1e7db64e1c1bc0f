#include "cli/handoff_run.h"

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace faultline {
namespace {

nlohmann::json Hist(const LatencyHistogram& h) {
  return {{"count", h.count()},          {"p50_ns", h.Percentile(0.5)},
          {"p90_ns", h.Percentile(0.9)}, {"p99_ns", h.Percentile(0.99)},
          {"max_ns", h.max()}};
}

absl::StatusOr<std::vector<std::unique_ptr<GuestRegion>>> AdoptRegions(HandoffRequest& req) {
  std::vector<std::unique_ptr<GuestRegion>> out;
  const bool minor = true;  // faultline-format VMMs register MISSING|MINOR (see handoff.h)
  for (HandoffRegion& hr : req.regions) {
    absl::StatusOr<RegionKind> kind = ParseRegionKind(hr.kind);
    if (!kind.ok()) return kind.status();
    absl::StatusOr<std::unique_ptr<GuestRegion>> r = GuestRegion::Adopt(
        hr.name, *kind, reinterpret_cast<uint8_t*>(hr.host_addr), hr.length, hr.page_size,
        std::move(hr.fd), hr.offset,
        minor && req.format == HandoffFormat::kFaultline);
    if (!r.ok()) return r.status();
    out.push_back(std::move(*r));
  }
  return out;
}

}  // namespace

nlohmann::json EngineStatsJson(const Engine& e, double seconds) {
  const EngineCounters& c = e.counters();
  nlohmann::json per_thread = nlohmann::json::object();
  for (const auto& [tid, h] : e.fault_stats().PerThread()) per_thread[std::to_string(tid)] = Hist(h);
  return {{"pages", e.total_pages()},
          {"urgent_pages", c.urgent_pages.load()},
          {"bulk_pages", c.bulk_pages.load()},
          {"zero_pages", c.zero_pages.load()},
          {"bytes_received", c.bytes_received.load()},
          {"faults", c.faults.load()},
          {"minor_faults", c.minor_faults.load()},
          {"duplicate_faults", c.duplicate_faults.load()},
          {"urgent_requests", c.urgent_requests.load()},
          {"bulk_requests", c.bulk_requests.load()},
          {"corrupt_pages", c.corrupt_pages.load()},
          {"discarded_pages", c.discarded_pages.load()},
          {"eexist", e.placer_counters().eexist.load()},
          {"seconds", seconds},
          {"fault_latency", Hist(e.fault_stats().Overall())},
          {"fault_latency_per_thread", per_thread},
          {"engine_footprint_bytes", e.footprint_bytes()}};
}

absl::Status RunHandoff(HandoffSession& session, const HandoffRunOptions& opts,
                        nlohmann::json* stats) {
  HandoffRequest& req = session.request();
  auto refuse = [&](const absl::Status& s) {
    (void)session.Ack(s);
    return s;
  };
  absl::StatusOr<std::vector<std::unique_ptr<GuestRegion>>> regions = AdoptRegions(req);
  if (!regions.ok()) return refuse(regions.status());
  std::vector<GuestRegion*> raw;
  for (auto& r : *regions) raw.push_back(r.get());
  Userfaultfd uffd = Userfaultfd::Adopt(std::move(req.uffd), req.uffd_features);
  EngineOptions eo = opts.engine;
  eo.register_ranges = !req.registered;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(raw, std::move(uffd), eo);
  if (!engine.ok()) return refuse(engine.status());
  absl::StatusOr<std::unique_ptr<TcpPageSource>> source = TcpPageSource::Connect(opts.source);
  if (!source.ok()) {
    return refuse(absl::Status(source.status().code(),
                               absl::StrCat("cannot reach the source page server: ",
                                            source.status().message())));
  }
  if (absl::Status s = (*engine)->CheckSourceTable((*source)->regions()); !s.ok()) {
    return refuse(s);
  }
  if (absl::Status s = session.Ack(absl::OkStatus()); !s.ok()) return s;

  const absl::Time t0 = absl::Now();
  std::atomic<bool> running{true};
  std::thread progress([&] {
    while (running.load()) {
      (void)session.SendProgress((*engine)->total_pages() - (*engine)->remaining_pages(),
                                 (*engine)->total_pages());
      absl::SleepFor(opts.progress_every);
    }
  });
  absl::Status run = (*engine)->Run(source->get());
  running.store(false);
  progress.join();
  nlohmann::json st = EngineStatsJson(**engine, absl::ToDoubleSeconds(absl::Now() - t0));
  (void)session.SendComplete(run, st);
  if (stats) *stats = st;
  return run;
}

}  // namespace faultline
