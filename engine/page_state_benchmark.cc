// Page-state map operations: what one fault and one bulk page cost in the map itself.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>

#include "engine/page_state.h"

namespace faultline {
namespace {

constexpr uint64_t kPages = 1 << 20;  // a 4 GiB guest of 4 KiB pages

// A fault's path through the map: absent → urgent → claimed → present.
void BM_FaultPath(benchmark::State& state) {
  auto map = std::make_unique<PageStateMap>(kPages);
  uint64_t p = 0;
  for (auto _ : state) {
    PageState seen, prev;
    benchmark::DoNotOptimize(map->MarkUrgent(p, &seen));
    benchmark::DoNotOptimize(map->Claim(p, &prev));
    benchmark::DoNotOptimize(map->Complete(p));
    if (++p == kPages) {  // every page present: start a fresh guest
      state.PauseTiming();
      map = std::make_unique<PageStateMap>(kPages);
      p = 0;
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FaultPath);

// The background pull: claim a run of absent pages for one bulk request, then place each.
void BM_BulkRun(benchmark::State& state) {
  const uint32_t run = static_cast<uint32_t>(state.range(0));
  auto map = std::make_unique<PageStateMap>(kPages);
  uint64_t from = 0;
  for (auto _ : state) {
    uint64_t first = 0;
    uint32_t n = map->ClaimBulkRun(from, run, &first);
    if (n == 0) {
      state.PauseTiming();
      map = std::make_unique<PageStateMap>(kPages);
      from = 0;
      state.ResumeTiming();
      continue;
    }
    for (uint32_t i = 0; i < n; ++i) {
      PageState prev;
      map->Claim(first + i, &prev);
      map->Complete(first + i);
    }
    from = first + n;
  }
  state.SetItemsProcessed(state.iterations() * run);
}
BENCHMARK(BM_BulkRun)->Arg(256)->Arg(1024);

// Reading a page's state (the fault loop's first step for a duplicate fault).
void BM_Get(benchmark::State& state) {
  PageStateMap map(kPages);
  uint64_t p = 0, sum = 0;
  for (auto _ : state) {
    sum += static_cast<uint64_t>(map.Get(p));
    p = (p + 4099) & (kPages - 1);
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Get);

}  // namespace
}  // namespace faultline
