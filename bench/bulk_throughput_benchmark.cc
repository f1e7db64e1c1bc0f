// Bulk throughput: the engine's background pull of a whole region over loopback TCP, against
// the raw link carrying the same bytes, in the same run and the same iteration loop, so the
// ratio means something on a noisy 2-core machine.
//
// Each iteration does both, one after the other:
//   raw     a child process pread()s the region's bytes (a memfd with the test pattern, no zero
//           pages) 1 MiB at a time into a reused buffer, as the page server reads, and write()s
//           them down one loopback TCP connection; this process read()s them into a reused
//           4 MiB buffer: memcpy-bound on both ends, nothing else — the ceiling
//   raw into fresh memory   the same, but read()s into a fresh memfd mapping of the region's
//           size, so the receiver also pays page-cache allocation as a migration must
//   engine  a child process runs the real page server over the same kind of memfd; this
//           process runs the Engine (no guest, background pull only) until every page of a
//           fresh destination region is present: per page, CRC32C on both ends, page-cache
//           allocation (memfd) and UFFDIO_CONTINUE / UFFDIO_COPY
// Both senders live in their own process, so this process's CPU time is the receiver's alone:
// the counters give the destination's CPU per 4 KiB page for each path.
//
// Arguments: region MiB, kind, batch KiB, bulk lanes (TcpSourceOptions::bulk_lanes: that many
// bulk connections, each with its own receive thread on this side and serving thread on the
// page server's).
// Counters: raw_MBps, raw_fresh_MBps, engine_MBps (10^6 bytes/s, wall clock),
// engine_pct_of_raw, engine_pct_of_raw_fresh, raw_cpu_ns_per_page, raw_fresh_cpu_ns_per_page,
// engine_cpu_ns_per_page (user+sys of this process / pages).
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/unique_fd.h"
#include "bench/forked_peer.h"
#include "benchmark/benchmark.h"
#include "engine/engine.h"
#include "tests/testing/test_dest.h"
#include "transport/socket.h"
#include "transport/tcp_page_source.h"

namespace faultline {
namespace {

constexpr uint64_t kPage = 4096;

// One raw transfer of `size` bytes from the raw sender into `dst` (a `window`-byte buffer reused
// round robin, or the whole region). Returns false if the transfer broke.
bool RawTransfer(const std::string& address, uint64_t size, uint8_t* dst, uint64_t window) {
  auto fd = ConnectTcp(address, absl::Seconds(10));
  if (!fd.ok()) return false;
  for (uint64_t got = 0; got < size;) {
    const uint64_t n = std::min<uint64_t>(4u << 20, size - got);
    if (!ReadAll(fd->get(), dst + (got % window), n).ok()) return false;
    got += n;
  }
  return true;
}

// args: region MiB, kind (RegionKind), batch KiB, bulk lanes
void BM_BulkVsLoopback(benchmark::State& state) {
  const uint64_t size = static_cast<uint64_t>(state.range(0)) << 20;
  const auto kind = static_cast<RegionKind>(state.range(1));
  const uint32_t batch_kib = static_cast<uint32_t>(state.range(2));
  const uint32_t lanes = static_cast<uint32_t>(state.range(3));
  PatternSpec pattern;
  pattern.zero_percent = 0;  // every page crosses the wire as 4 KiB, as in the raw transfer
  auto raw_peer = ForkedPeer::Start(ForkedPeer::Kind::kRawSender, size, pattern);
  auto server = ForkedPeer::Start(ForkedPeer::Kind::kPageServer, size, pattern);
  if (!raw_peer.ok() || !server.ok()) {
    state.SkipWithError("could not start the sending child processes");
    return;
  }
  uint64_t raw_ns = 0, fresh_ns = 0, engine_ns = 0, mismatches = 0;
  uint64_t raw_cpu = 0, fresh_cpu = 0, engine_cpu = 0, source_cpu = 0, raw_send_cpu = 0;
  std::vector<uint8_t> buf(4u << 20);
  for (auto _ : state) {
    // raw, into a reused 4 MiB buffer
    const uint64_t send0 = (*raw_peer)->CpuNs();
    CpuSample c0 = CpuSample::Now();
    uint64_t t0 = MonotonicNowNs();
    if (!RawTransfer((*raw_peer)->address(), size, buf.data(), buf.size())) {
      state.SkipWithError("raw transfer broke");
      break;
    }
    raw_ns += MonotonicNowNs() - t0;
    CpuSample c1 = CpuSample::Now();
    raw_cpu += (c1.user_ns + c1.sys_ns) - (c0.user_ns + c0.sys_ns);
    raw_send_cpu += (*raw_peer)->CpuNs() - send0;

    // raw, into fresh memfd memory of the region's size (mapping made outside the clock)
    UniqueFd mfd(memfd_create("raw-dest", MFD_CLOEXEC));
    void* fresh = MAP_FAILED;
    if (mfd.valid() && ftruncate(mfd.get(), static_cast<off_t>(size)) == 0) {
      fresh = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd.get(), 0);
    }
    if (fresh == MAP_FAILED) {
      state.SkipWithError("memfd for the raw transfer");
      break;
    }
    c0 = CpuSample::Now();
    t0 = MonotonicNowNs();
    const bool ok = RawTransfer((*raw_peer)->address(), size, static_cast<uint8_t*>(fresh), size);
    fresh_ns += MonotonicNowNs() - t0;
    c1 = CpuSample::Now();
    fresh_cpu += (c1.user_ns + c1.sys_ns) - (c0.user_ns + c0.sys_ns);
    munmap(fresh, size);
    mfd.reset();
    if (!ok) {
      state.SkipWithError("raw transfer broke");
      break;
    }

    // engine (region creation, registration and the connection's handshake are set-up, not
    // transfer: outside the clock)
    EngineOptions eo;
    eo.bulk_batch_bytes = batch_kib << 10;
    eo.finish_source = false;  // the same page server serves every iteration
    TcpSourceOptions so = (*server)->options();
    so.bulk_lanes = lanes;
    absl::StatusOr<Dest> d = MakeDest(kind, size, so, eo);
    if (!d.ok()) {
      state.SkipWithError(std::string(d.status().message()).c_str());
      break;
    }
    const uint64_t src0 = (*server)->CpuNs();
    c0 = CpuSample::Now();
    t0 = MonotonicNowNs();
    absl::Status s = d->engine->Run(d->source.get());
    engine_ns += MonotonicNowNs() - t0;
    c1 = CpuSample::Now();
    engine_cpu += (c1.user_ns + c1.sys_ns) - (c0.user_ns + c0.sys_ns);
    source_cpu += (*server)->CpuNs() - src0;
    if (!s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      break;
    }
    // Spot check (a benchmark that moves wrong bytes measures nothing): every 64th page.
    std::vector<uint8_t> want(kPage);
    for (uint64_t p = 0; p < size / kPage; p += 64) {
      FillPatternPage(pattern, p, want.data());
      if (memcmp(d->region->page(p), want.data(), kPage) != 0) ++mismatches;
    }
  }
  const double n = static_cast<double>(state.iterations());
  const double pages = n * static_cast<double>(size / kPage);
  if (raw_ns == 0 || fresh_ns == 0 || engine_ns == 0) return;
  const double raw_bps = n * static_cast<double>(size) * 1e9 / static_cast<double>(raw_ns);
  const double eng_bps = n * static_cast<double>(size) * 1e9 / static_cast<double>(engine_ns);
  const double fresh_bps = n * static_cast<double>(size) * 1e9 / static_cast<double>(fresh_ns);
  state.counters["raw_MBps"] = raw_bps / 1e6;
  state.counters["raw_fresh_MBps"] = fresh_bps / 1e6;
  state.counters["engine_pct_of_raw_fresh"] = 100.0 * eng_bps / fresh_bps;
  state.counters["raw_fresh_cpu_ns_per_page"] = static_cast<double>(fresh_cpu) / pages;
  state.counters["engine_MBps"] = eng_bps / 1e6;
  state.counters["engine_pct_of_raw"] = 100.0 * eng_bps / raw_bps;
  state.counters["raw_cpu_ns_per_page"] = static_cast<double>(raw_cpu) / pages;
  state.counters["engine_cpu_ns_per_page"] = static_cast<double>(engine_cpu) / pages;
  // The sending ends' CPU (the page server: pread, zero check, CRC32C, send; raw: pread and write
  // only).
  state.counters["source_cpu_ns_per_page"] = static_cast<double>(source_cpu) / pages;
  state.counters["raw_send_cpu_ns_per_page"] = static_cast<double>(raw_send_cpu) / pages;
  state.counters["spot_mismatches"] = static_cast<double>(mismatches);
  state.SetBytesProcessed(static_cast<int64_t>(n * 3 * static_cast<double>(size)));
  state.SetLabel(std::string(RegionKindName(kind)) + "/batch " + std::to_string(batch_kib) +
                 " KiB/" + std::to_string(lanes) + " lane" + (lanes > 1 ? "s" : ""));
}
BENCHMARK(BM_BulkVsLoopback)
    ->ArgsProduct({{512},
                   {static_cast<int>(RegionKind::kMemfd), static_cast<int>(RegionKind::kAnonymous)},
                   {1024},
                   {1, 2}})
    ->Args({512, static_cast<int>(RegionKind::kMemfd), 4096, 1})
    ->Iterations(3)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace faultline

BENCHMARK_MAIN();
