// RDMA vs TCP through the whole engine, same machine, same run: the urgent 4 KiB fault
// (touch → uffd → request → page → placement → wake) with no background traffic, and bulk
// throughput of a whole migration with no guest. Both transports serve the same source memory
// (TestSource: a memfd with the test pattern, no zero pages) from one page server, which also
// answers RDMA set-ups.
//
//   bazel run -c opt //bench/rdma:rdma_vs_tcp_benchmark -- [faults] [size_mib]
//
// Needs an RDMA device for the RDMA rows (soft-RoCE: tests/rdma/run_rdma_tests.sh runs this in
// its VM); without one it measures TCP and says why RDMA was skipped.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "base/clock.h"
#include "cli/setup.h"
#include "engine/engine.h"
#include "engine/region.h"
#include "tests/testing/test_source.h"
#include "transport/rdma_page_server.h"
#include "transport/rdma_page_source.h"
#include "transport/rdma_verbs.h"
#include "transport/tcp_page_source.h"

namespace faultline {
namespace {

absl::StatusOr<std::unique_ptr<PageSource>> Connect(bool rdma, const TestSource& src) {
  if (!rdma) {
    auto s = TcpPageSource::Connect(src.options());
    if (!s.ok()) return s.status();
    return std::unique_ptr<PageSource>(std::move(*s));
  }
  RdmaSourceOptions o;
  o.control = src.options();
  auto s = RdmaPageSource::Connect(o);
  if (!s.ok()) return s.status();
  return std::unique_ptr<PageSource>(std::move(*s));
}

struct Result {
  double p50_us = 0, p99_us = 0, max_us = 0, engine_p50_us = 0;
  double mib_s = 0;
};

absl::Status FaultLatency(bool rdma, RegionKind kind, TestSource& src, int faults, Result* r) {
  auto source = Connect(rdma, src);
  if (!source.ok()) return source.status();
  EngineOptions eo;
  eo.background_pull = false;
  eo.finish_source = false;  // the same source serves every row
  absl::StatusOr<Destination> dest = CreateDestination((*source)->regions(), kind, eo);
  if (!dest.ok()) return dest.status();
  GuestRegion* const region = dest->region();
  Engine* const engine = dest->engine.get();
  absl::Status run;
  std::thread runner([&] { run = engine->Run(source->get()); });
  std::vector<uint64_t> lat;
  const uint64_t pages = src.size() / 4096;
  const uint64_t stride = std::max<uint64_t>(1, pages / faults);
  for (int i = 0; i < faults; ++i) {
    const uint64_t page = (i * stride) % pages;
    const uint64_t t0 = MonotonicNowNs();
    (void)*reinterpret_cast<volatile uint64_t*>(region->page(page));
    lat.push_back(MonotonicNowNs() - t0);
  }
  engine->StartBackgroundPull();
  runner.join();
  if (!run.ok()) return run;
  std::sort(lat.begin(), lat.end());
  r->p50_us = lat[lat.size() / 2] / 1000.0;
  r->p99_us = lat[lat.size() * 99 / 100] / 1000.0;
  r->max_us = lat.back() / 1000.0;
  r->engine_p50_us = engine->fault_stats().Overall().Percentile(0.5) / 1000.0;
  if (src.CountMismatches(region->base()) != 0) {
    return absl::DataLossError("pages differ from the source");
  }
  return absl::OkStatus();
}

absl::Status Bulk(bool rdma, TestSource& src, Result* r) {
  auto source = Connect(rdma, src);
  if (!source.ok()) return source.status();
  EngineOptions eo;
  eo.finish_source = false;  // the same source serves every row
  absl::StatusOr<Destination> dest =
      CreateDestination((*source)->regions(), MemoryKind::kMemfd, eo);
  if (!dest.ok()) return dest.status();
  const absl::Time t0 = absl::Now();
  absl::Status run = dest->engine->Run(source->get());
  const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
  if (!run.ok()) return run;
  r->mib_s = src.size() / 1048576.0 / secs;
  if (src.CountMismatches(dest->region()->base()) != 0) {
    return absl::DataLossError("pages differ from the source");
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  const int faults = argc > 1 ? std::atoi(argv[1]) : 300;
  const uint64_t size = (argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 64) << 20;
  PatternSpec pattern;
  pattern.zero_percent = 0;  // every page carries 4 KiB
  auto src = TestSource::Start(size, 4096, pattern);
  if (!src.ok()) {
    std::printf("cannot start the source: %s\n", std::string(src.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<RdmaPageServer> rdma_server;
  const bool have_rdma = !ListRdmaDevices().empty();
  if (have_rdma) {
    auto r = RdmaPageServer::Create(&(*src)->server(), RdmaDeviceOptions{});
    if (!r.ok()) {
      std::printf("RDMA set-up failed: %s\n", std::string(r.status().message()).c_str());
      return 1;
    }
    rdma_server = std::move(*r);
    std::printf("RDMA device: %s\n", rdma_server->device_name().c_str());
  } else {
    std::printf("RDMA rows skipped: %s\n", NoRdmaDeviceMessage().c_str());
  }
  std::printf("%d faults on fresh pages, %llu MiB migrations, pages of 4 KiB, no zero pages\n\n",
              faults, (unsigned long long)(size >> 20));
  std::printf("%-5s %-9s %10s %10s %10s %12s\n", "xport", "kind", "p50 µs", "p99 µs", "max µs",
              "engine p50");
  bool ok = true;
  for (bool rdma : {false, true}) {
    if (rdma && !have_rdma) continue;
    for (RegionKind kind : {RegionKind::kMemfd, RegionKind::kAnonymous}) {
      Result r;
      absl::Status s = FaultLatency(rdma, kind, **src, faults, &r);
      if (!s.ok()) {
        std::printf("%-5s %-9s error: %s\n", rdma ? "rdma" : "tcp", RegionKindName(kind),
                    std::string(s.message()).c_str());
        ok = false;
        continue;
      }
      std::printf("%-5s %-9s %10.1f %10.1f %10.1f %12.1f\n", rdma ? "rdma" : "tcp",
                  RegionKindName(kind), r.p50_us, r.p99_us, r.max_us, r.engine_p50_us);
      std::fflush(stdout);
    }
  }
  std::printf("\n%-5s %12s\n", "xport", "bulk MiB/s");
  for (bool rdma : {false, true}) {
    if (rdma && !have_rdma) continue;
    for (int rep = 0; rep < 2; ++rep) {
      Result r;
      absl::Status s = Bulk(rdma, **src, &r);
      if (!s.ok()) {
        std::printf("%-5s error: %s\n", rdma ? "rdma" : "tcp", std::string(s.message()).c_str());
        ok = false;
        continue;
      }
      std::printf("%-5s %12.1f\n", rdma ? "rdma" : "tcp", r.mib_s);
      std::fflush(stdout);
    }
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace faultline

int main(int argc, char** argv) { return faultline::Main(argc, argv); }
