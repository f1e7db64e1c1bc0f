// Engine CPU per placed page: CPU time (user + system) the destination engine spends per page
// it places, for the two ways pages arrive:
//   urgent  a thread of this process touches fresh pages one at a time (background pull off):
//           each touch is a fault the engine serves (event read, request, receive, CRC32C,
//           placement, wake). The toucher's own CPU (CLOCK_THREAD_CPUTIME_ID, which includes
//           the kernel's fault entry and sleep) is subtracted from the process's
//           (CLOCK_PROCESS_CPUTIME_ID).
//   bulk    a whole region pulled in the background with no guest (1 MiB batches).
// The page server runs in a child process (bench/forked_peer.h), so everything this process
// spends, apart from the toucher, is the engine's: fault loop, receive threads, placement.
//
// Counters: engine_cpu_ns_per_page, and for bulk the user / system split
// (engine_user_ns_per_page, engine_sys_ns_per_page); urgent also p50_ns of the touch.
#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "bench/forked_peer.h"
#include "benchmark/benchmark.h"
#include "engine/engine.h"
#include "tests/testing/test_dest.h"
#include "transport/tcp_page_source.h"

namespace faultline {
namespace {

constexpr uint64_t kPage = 4096;

// args: kind. One iteration = one urgent fault on a fresh page.
void BM_EngineCpuUrgent(benchmark::State& state) {
  const auto kind = static_cast<RegionKind>(state.range(0));
  const uint64_t size = 512ull << 20;
  PatternSpec pattern;
  pattern.zero_percent = 0;  // every fault carries 4 KiB
  auto server = ForkedPeer::Start(ForkedPeer::Kind::kPageServer, size, pattern);
  if (!server.ok()) {
    state.SkipWithError(std::string(server.status().message()).c_str());
    return;
  }
  EngineOptions eo;
  eo.background_pull = false;
  absl::StatusOr<Dest> d = MakeDest(kind, size, (*server)->options(), eo);
  if (!d.ok()) {
    state.SkipWithError(std::string(d.status().message()).c_str());
    return;
  }
  Engine* engine = d->engine.get();
  const GuestRegion* region = d->region.get();
  absl::Status run;
  std::thread runner([&] { run = engine->Run(d->source.get()); });
  const uint64_t pages = size / kPage;
  // The first fault waits for Run() to start serving: outside the measurement.
  benchmark::DoNotOptimize(*reinterpret_cast<volatile uint64_t*>(region->page(0)));
  uint64_t page = 1;
  std::vector<uint64_t> lat;
  lat.reserve(1 << 16);
  const CpuSample c0 = CpuSample::Now();
  for (auto _ : state) {
    if (page == pages) {
      state.SkipWithError("ran out of fresh pages");
      break;
    }
    const uint64_t t0 = MonotonicNowNs();
    benchmark::DoNotOptimize(*reinterpret_cast<volatile uint64_t*>(region->page(page)));
    lat.push_back(MonotonicNowNs() - t0);
    ++page;
  }
  const CpuSample c1 = CpuSample::Now();
  engine->StartBackgroundPull();  // finish the migration so everything shuts down cleanly
  runner.join();
  const double n = static_cast<double>(page - 1);
  if (n > 0) {
    const uint64_t engine_ns = (c1.process_ns - c0.process_ns) - (c1.thread_ns - c0.thread_ns);
    state.counters["engine_cpu_ns_per_page"] = static_cast<double>(engine_ns) / n;
    state.counters["toucher_cpu_ns_per_page"] =
        static_cast<double>(c1.thread_ns - c0.thread_ns) / n;
    std::sort(lat.begin(), lat.end());
    state.counters["p50_ns"] = static_cast<double>(lat[lat.size() / 2]);
  }
  if (!run.ok()) state.SkipWithError(std::string(run.message()).c_str());
  state.SetLabel(std::string(RegionKindName(kind)) + "/urgent");
}
BENCHMARK(BM_EngineCpuUrgent)
    ->Arg(static_cast<int>(RegionKind::kMemfd))
    ->Arg(static_cast<int>(RegionKind::kAnonymous))
    ->Iterations(20000)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// args: kind. One iteration = one whole 512 MiB region pulled in the background.
void BM_EngineCpuBulk(benchmark::State& state) {
  const auto kind = static_cast<RegionKind>(state.range(0));
  const uint64_t size = 512ull << 20;
  auto server = ForkedPeer::Start(ForkedPeer::Kind::kPageServer, size, PatternSpec{});
  if (!server.ok()) {
    state.SkipWithError(std::string(server.status().message()).c_str());
    return;
  }
  uint64_t user = 0, sys = 0, zero = 0;
  for (auto _ : state) {
    EngineOptions eo;
    eo.finish_source = false;
    absl::StatusOr<Dest> d = MakeDest(kind, size, (*server)->options(), eo);
    if (!d.ok()) {
      state.SkipWithError(std::string(d.status().message()).c_str());
      break;
    }
    const CpuSample c0 = CpuSample::Now();
    absl::Status s = d->engine->Run(d->source.get());
    const CpuSample c1 = CpuSample::Now();
    user += c1.user_ns - c0.user_ns;
    sys += c1.sys_ns - c0.sys_ns;
    zero += d->engine->counters().zero_pages.load();
    if (!s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      break;
    }
  }
  const double pages = static_cast<double>(state.iterations()) * static_cast<double>(size / kPage);
  if (pages > 0) {
    state.counters["engine_cpu_ns_per_page"] = static_cast<double>(user + sys) / pages;
    state.counters["engine_user_ns_per_page"] = static_cast<double>(user) / pages;
    state.counters["engine_sys_ns_per_page"] = static_cast<double>(sys) / pages;
    state.counters["zero_page_pct"] = 100.0 * static_cast<double>(zero) / pages;
  }
  state.SetLabel(std::string(RegionKindName(kind)) + "/bulk (25 % zero pages)");
}
BENCHMARK(BM_EngineCpuBulk)
    ->Arg(static_cast<int>(RegionKind::kMemfd))
    ->Arg(static_cast<int>(RegionKind::kAnonymous))
    ->Iterations(3)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace faultline

BENCHMARK_MAIN();
