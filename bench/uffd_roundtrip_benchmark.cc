// The local limit: one userfaultfd round trip — a thread touches an absent page, a handler
// thread reads the event, places the page (UFFDIO_COPY, or pwrite + UFFDIO_CONTINUE, or a
// whole 2 MiB UFFDIO_COPY) and the kernel wakes the toucher. No network. Each iteration is one
// fault; p50/p99 are reported as counters (ns). Handler: poll() or busy-polling.
#include <poll.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "benchmark/benchmark.h"
#include "engine/placer.h"
#include "engine/region.h"
#include "engine/uffd.h"

namespace faultline {
namespace {

void ReportPercentiles(benchmark::State& state, std::vector<uint64_t>& ns) {
  if (ns.empty()) return;
  std::sort(ns.begin(), ns.end());
  state.counters["p50_ns"] = static_cast<double>(ns[ns.size() / 2]);
  state.counters["p99_ns"] = static_cast<double>(ns[ns.size() * 99 / 100]);
  state.counters["max_ns"] = static_cast<double>(ns.back());
}

// args: kind, busy (0 poll, 1 spin)
void BM_UffdRoundTrip(benchmark::State& state) {
  const auto kind = static_cast<RegionKind>(state.range(0));
  const bool busy = state.range(1) != 0;
  const uint64_t size = kind == RegionKind::kHugetlb ? (64ull << 20) : (512ull << 20);
  auto region = GuestRegion::Create("bench", kind, size);
  if (!region.ok()) {
    state.SkipWithError(std::string(region.status().message()).c_str());
    return;
  }
  // No REMOVE/UNMAP events: the benchmark resets pages with madvise between batches.
  auto uffd = Userfaultfd::Open(UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_MISSING_SHMEM |
                                UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_MISSING_HUGETLBFS);
  if (!uffd.ok()) {
    state.SkipWithError(std::string(uffd.status().message()).c_str());
    return;
  }
  GuestRegion& r = **region;
  if (!uffd->Register(r.base(), r.size(), true, r.register_minor()).ok()) {
    state.SkipWithError("register failed");
    return;
  }
  PlacerCounters counters;
  Placer placer(&*uffd, &r, &counters);
  std::vector<uint8_t> content(r.page_size(), 0xab);
  std::atomic<bool> stop{false};
  std::thread handler([&] {
    struct uffd_msg m;
    while (!stop.load(std::memory_order_relaxed)) {
      if (!busy) {
        struct pollfd p = {uffd->fd(), POLLIN, 0};
        if (poll(&p, 1, 10) != 1) continue;
      }
      absl::StatusOr<int> n = uffd->Read(&m, 1);
      if (!n.ok() || *n == 0 || m.event != UFFD_EVENT_PAGEFAULT) continue;
      const uint64_t page = (m.arg.pagefault.address - reinterpret_cast<uint64_t>(r.base())) /
                            r.page_size();
      if (r.places_via_alias()) {
        // As the engine places memfd pages: into the page cache (pwrite), then map.
        (void)!pwrite(r.fd(), content.data(), r.page_size(),
                      static_cast<off_t>(page * r.page_size()));
        (void)placer.Continue(page, 1, true, Caller::kOther);
      } else {
        (void)placer.Copy(page, 1, content.data(), true, Caller::kOther);
      }
    }
  });
  std::vector<uint64_t> lat;
  lat.reserve(1 << 16);
  uint64_t page = 0;
  for (auto _ : state) {
    if (page == r.pages()) {
      state.PauseTiming();
      madvise(r.base(), r.size(), MADV_DONTNEED);
      if (r.fd() >= 0) fallocate(r.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, r.size());
      page = 0;
      state.ResumeTiming();
    }
    const uint64_t t0 = MonotonicNowNs();
    benchmark::DoNotOptimize(*reinterpret_cast<volatile uint64_t*>(r.page(page)));
    lat.push_back(MonotonicNowNs() - t0);
    ++page;
  }
  stop.store(true);
  handler.join();
  (void)uffd->Unregister(r.base(), r.size());
  ReportPercentiles(state, lat);
  state.SetLabel(std::string(RegionKindName(kind)) + (busy ? "/busy-poll" : "/poll"));
}

BENCHMARK(BM_UffdRoundTrip)
    ->ArgsProduct({{static_cast<int>(RegionKind::kAnonymous), static_cast<int>(RegionKind::kMemfd)},
                   {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_UffdRoundTrip)
    ->Args({static_cast<int>(RegionKind::kHugetlb), 0})
    ->UseRealTime()
    ->Iterations(24)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace faultline

BENCHMARK_MAIN();
