// A remote 4 KiB fault over loopback TCP through the whole engine: touch → uffd event → urgent
// request → page server → PAGES frame → CRC → placement → wake. No background traffic, so
// this is the fault path's own latency; compare with uffd_roundtrip_benchmark (the local
// limit) in the same run. Also: bulk throughput of a whole migration with no guest. Each also
// over TLS 1.3 (mutual, certificates made at start-up) to show what encryption costs.
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "benchmark/benchmark.h"
#include "engine/engine.h"
#include "tests/testing/hugepages.h"
#include "tests/testing/test_certs.h"
#include "tests/testing/test_dest.h"
#include "tests/testing/test_source.h"
#include "transport/socket.h"
#include "transport/tcp_page_source.h"
#include "transport/tls.h"

namespace faultline {
namespace {

// Mutual TLS between the benchmark's page server and destination (made once).
struct BenchTls {
  std::unique_ptr<TestCa> ca;
  std::shared_ptr<const TlsContext> server, client;
  static const BenchTls& Get() {
    static const BenchTls* t = [] {
      auto* b = new BenchTls();
      auto ca = TestCa::Create("bench");
      if (!ca.ok()) return b;
      b->ca = std::move(*ca);
      auto sf = b->ca->Issue("source"), cf = b->ca->Issue("dest");
      if (!sf.ok() || !cf.ok()) return b;
      auto s = TlsContext::Create(TlsContext::Role::kServer, *sf);
      auto c = TlsContext::Create(TlsContext::Role::kClient, *cf);
      if (s.ok() && c.ok()) {
        b->server = *s;
        b->client = *c;
      }
      return b;
    }();
    return *t;
  }
};

// Runs `d`'s engine and times one read per benchmark iteration, each on a fresh page (at
// `offset` into it), until the iterations or the pages run out; then lets the background pull
// finish the migration. Returns the latencies, sorted.
std::vector<uint64_t> TimeFreshFaults(benchmark::State& state, Dest& d, uint64_t pages,
                                      uint64_t offset) {
  Engine* engine = d.engine.get();
  const GuestRegion* region = d.region.get();
  absl::Status run;
  std::thread runner([&] { run = engine->Run(d.source.get()); });
  std::vector<uint64_t> lat;
  lat.reserve(std::min<uint64_t>(pages, 1 << 18));
  uint64_t page = 0;
  for (auto _ : state) {
    if (page == pages) {
      state.SkipWithError("ran out of fresh pages");
      break;
    }
    const uint64_t t0 = MonotonicNowNs();
    benchmark::DoNotOptimize(*reinterpret_cast<volatile uint64_t*>(region->page(page) + offset));
    lat.push_back(MonotonicNowNs() - t0);
    page += 1;
  }
  engine->StartBackgroundPull();  // finish the migration so everything shuts down cleanly
  runner.join();
  std::sort(lat.begin(), lat.end());
  return lat;
}

// args: kind, busy-poll (engine + urgent socket), TLS
void BM_TcpFault(benchmark::State& state) {
  const auto kind = static_cast<RegionKind>(state.range(0));
  const bool busy = state.range(1) != 0;
  const bool tls = state.range(2) != 0;
  if (tls && !BenchTls::Get().server) {
    state.SkipWithError("TLS certificates could not be made");
    return;
  }
  const uint64_t size = 1ull << 30;
  PatternSpec pattern;
  pattern.zero_percent = 0;  // every fault carries 4 KiB
  auto src = TestSource::Start(size, 4096, pattern, tls ? BenchTls::Get().server : nullptr);
  if (!src.ok()) {
    state.SkipWithError(std::string(src.status().message()).c_str());
    return;
  }
  EngineOptions eo;
  eo.background_pull = false;
  eo.busy_poll = busy;
  TcpSourceOptions to = (*src)->options();
  to.busy_poll = busy;
  if (tls) to.tls = BenchTls::Get().client;
  absl::StatusOr<Dest> d = MakeDest(kind, size, to, eo);
  if (!d.ok()) {
    state.SkipWithError(std::string(d.status().message()).c_str());
    return;
  }
  const std::vector<uint64_t> lat = TimeFreshFaults(state, *d, size / 4096, 0);
  if (!lat.empty()) {
    state.counters["p50_ns"] = static_cast<double>(lat[lat.size() / 2]);
    state.counters["p99_ns"] = static_cast<double>(lat[lat.size() * 99 / 100]);
    state.counters["max_ns"] = static_cast<double>(lat.back());
  }
  LatencyHistogram h = d->engine->fault_stats().Overall();
  state.counters["engine_p50_ns"] = static_cast<double>(h.Percentile(0.5));
  state.SetLabel(std::string(RegionKindName(kind)) + (busy ? "/busy-poll" : "/poll") +
                 (tls ? "/tls" : "/plain"));
}

BENCHMARK(BM_TcpFault)
    ->ArgsProduct({{static_cast<int>(RegionKind::kAnonymous), static_cast<int>(RegionKind::kMemfd)},
                   {0, 1},
                   {0, 1}})
    ->Iterations(20000)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// A remote fault on a 2 MiB hugetlb page: the whole huge page crosses the link per fault (no
// background traffic). What a 2 MiB fault costs before anything competes with it.
void BM_TcpFault2M(benchmark::State& state) {
  constexpr uint64_t kHuge = 2u << 20;
  const uint64_t size = 256ull << 20;
  ScopedHugePages huge(2 * size / kHuge);  // the source's and the destination's
  if (!huge.ok()) {
    state.SkipWithError(("hugetlb unavailable: " + huge.why_not()).c_str());
    return;
  }
  {
    // Touch the pool once, every 4 KiB: on a VM whose host backs memory lazily (these
    // machines: free page reporting), pages fresh from vm.nr_hugepages cost a host fault per
    // 4 KiB at their first write — ~6 ms per 2 MiB page here, five times the fault itself.
    void* m = mmap(nullptr, 2 * size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (m != MAP_FAILED) {
      for (uint64_t off = 0; off < 2 * size; off += 4096) static_cast<uint8_t*>(m)[off] = 1;
      munmap(m, 2 * size);
    }
  }
  PatternSpec pattern;
  pattern.zero_percent = 0;
  auto src = TestSource::Start(size, kHuge, pattern);
  if (!src.ok()) {
    state.SkipWithError(std::string(src.status().message()).c_str());
    return;
  }
  EngineOptions eo;
  eo.background_pull = false;
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kHugetlb, **src, eo);
  if (!d.ok()) {
    state.SkipWithError(std::string(d.status().message()).c_str());
    return;
  }
  const std::vector<uint64_t> lat = TimeFreshFaults(state, *d, size / kHuge, 4096);
  if (!lat.empty()) {
    state.counters["p50_ns"] = static_cast<double>(lat[lat.size() / 2]);
    state.counters["p90_ns"] = static_cast<double>(lat[lat.size() * 9 / 10]);
    state.counters["max_ns"] = static_cast<double>(lat.back());
  }
  state.counters["engine_p50_ns"] =
      static_cast<double>(d->engine->fault_stats().Overall().Percentile(0.5));
}

BENCHMARK(BM_TcpFault2M)->Iterations(100)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Whole-migration throughput with no guest: background pull only. args: batch KiB, TLS.
void BM_BulkThroughput(benchmark::State& state) {
  const uint64_t size = 512ull << 20;
  const uint32_t batch_kib = static_cast<uint32_t>(state.range(0));
  const bool tls = state.range(1) != 0;
  if (tls && !BenchTls::Get().server) {
    state.SkipWithError("TLS certificates could not be made");
    return;
  }
  auto src = TestSource::Start(size, 4096, PatternSpec{}, tls ? BenchTls::Get().server : nullptr);
  if (!src.ok()) {
    state.SkipWithError(std::string(src.status().message()).c_str());
    return;
  }
  for (auto _ : state) {
    EngineOptions eo;
    eo.bulk_batch_bytes = batch_kib << 10;
    eo.finish_source = false;  // the same source serves every iteration
    TcpSourceOptions to = (*src)->options();
    if (tls) to.tls = BenchTls::Get().client;
    absl::StatusOr<Dest> d = MakeDest(RegionKind::kMemfd, size, to, eo);
    if (!d.ok()) {
      state.SkipWithError(std::string(d.status().message()).c_str());
      break;
    }
    absl::Status s = d->engine->Run(d->source.get());
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
  state.SetLabel(tls ? "tls" : "plain");
}
BENCHMARK(BM_BulkThroughput)
    ->ArgsProduct({{256, 1024, 4096}, {0, 1}})
    ->Iterations(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The link itself: 512 MiB through one loopback TCP connection, memcpy-bound on both ends
// (send from memory, receive into a 4 MiB buffer) — what BM_BulkThroughput is compared with.
void BM_LoopbackTcpRaw(benchmark::State& state) {
  const uint64_t total = 512ull << 20;
  auto listen = ListenTcp("127.0.0.1:0");
  if (!listen.ok()) {
    state.SkipWithError("listen failed");
    return;
  }
  const int port = *BoundPort(listen->get());
  std::vector<uint8_t> src(8u << 20, 0x42);
  for (auto _ : state) {
    std::thread sender([&] {
      UniqueFd c(accept(listen->get(), nullptr, nullptr));
      for (uint64_t sent = 0; sent < total; sent += src.size()) {
        if (!WriteAll(c.get(), src.data(), src.size()).ok()) break;
      }
    });
    auto fd = ConnectTcp(absl::StrCat("127.0.0.1:", port), absl::Seconds(5));
    std::vector<uint8_t> buf(4u << 20);
    for (uint64_t got = 0; got < total; got += buf.size()) {
      if (!ReadAll(fd->get(), buf.data(), buf.size()).ok()) break;
    }
    sender.join();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * total));
}
BENCHMARK(BM_LoopbackTcpRaw)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);

// The same through one TLS 1.3 connection (Stream, as the transport uses it): the cost of
// encrypting and decrypting every byte, the ceiling for BM_BulkThroughput over TLS.
void BM_LoopbackTlsRaw(benchmark::State& state) {
  const uint64_t total = 512ull << 20;
  const BenchTls& t = BenchTls::Get();
  auto listen = ListenTcp("127.0.0.1:0");
  if (!t.server || !listen.ok()) {
    state.SkipWithError("TLS or listen unavailable");
    return;
  }
  const int port = *BoundPort(listen->get());
  std::vector<uint8_t> src(8u << 20, 0x42);
  for (auto _ : state) {
    std::thread sender([&] {
      Stream c{UniqueFd(accept(listen->get(), nullptr, nullptr))};
      if (!t.server->Accept(&c, absl::Now() + absl::Seconds(5)).ok()) return;
      for (uint64_t sent = 0; sent < total; sent += src.size()) {
        if (!c.WriteAll(src.data(), src.size()).ok()) break;
      }
    });
    auto fd = ConnectTcp(absl::StrCat("127.0.0.1:", port), absl::Seconds(5));
    Stream s(std::move(*fd));
    absl::Status hs = t.client->Connect(&s, "127.0.0.1", "bench", absl::Now() + absl::Seconds(5));
    std::vector<uint8_t> buf(4u << 20);
    for (uint64_t got = 0; hs.ok() && got < total; got += buf.size()) {
      if (!s.ReadAll(buf.data(), buf.size()).ok()) break;
    }
    sender.join();
    if (!hs.ok()) state.SkipWithError(std::string(hs.message()).c_str());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * total));
}
BENCHMARK(BM_LoopbackTlsRaw)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace faultline

BENCHMARK_MAIN();
