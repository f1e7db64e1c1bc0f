// Migrations whose connections are cut at random points: a proxy between the destination and
// the page server drops connections at seeded random byte offsets in either direction —
// mid-handshake, mid-request, mid-frame, mid-page — while a guest faults. Each run must still
// complete with every page placed exactly once and verified against the source.
//
// FAULTLINE_RANDOM_CUT_RUNS runs (default 5 here; tools/long_suite.sh runs 100), seeds from
// FAULTLINE_SEED on (default: from the clock). Every run prints its seed; one run again:
//   bazel test //tests:random_cut_test --test_env=FAULTLINE_SEED=S \
//       --test_env=FAULTLINE_RANDOM_CUT_RUNS=1
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/flaky_proxy.h"
#include "tests/testing/test_dest.h"
#include "tests/testing/test_source.h"
#include "transport/tcp_page_source.h"
#include "workload/thread_guest.h"

namespace faultline {
namespace {

uint64_t EnvU64(const char* name, uint64_t dflt) {
  const char* v = getenv(name);
  uint64_t n;
  return v && absl::SimpleAtoi(v, &n) ? n : dflt;
}

// One migration under random cuts; false (after gtest failures) when it went wrong.
bool RunOne(uint64_t seed) {
  SCOPED_TRACE(absl::StrCat("seed ", seed, " (rerun: --test_env=FAULTLINE_SEED=", seed,
                            " --test_env=FAULTLINE_RANDOM_CUT_RUNS=1)"));
  std::mt19937_64 rng(seed);
  const RegionKind kind = rng() % 2 ? RegionKind::kMemfd : RegionKind::kAnonymous;
  const uint64_t size = (8 + rng() % 17) << 20;  // 8..24 MiB
  const uint64_t pages = size / 4096;
  const uint64_t max_gap = (512 + rng() % 3585) << 10;  // next cut within 512 KiB..4 MiB
  auto src = TestSource::Start(size, 4096);
  EXPECT_TRUE(src.ok()) << src.status();
  if (!src.ok()) return false;
  FlakyProxy proxy((*src)->options().address);
  proxy.CutRandomly(rng(), 1, max_gap);
  EngineOptions eo;
  eo.reconnect_deadline = absl::Seconds(30);
  eo.bulk_batch_bytes = 64u << (10 + rng() % 5);  // 64 KiB..1 MiB
  eo.bulk_window = 1 + static_cast<uint32_t>(rng() % 4);
  TcpSourceOptions o = (*src)->options();
  o.address = proxy.address();
  absl::StatusOr<Dest> d = MakeDest(kind, size, o, eo);
  EXPECT_TRUE(d.ok()) << d.status();
  if (!d.ok()) return false;
  GuestOptions go;
  go.threads = {AccessPattern::kRandom, AccessPattern::kSequential};
  go.touches_per_thread = 1000 + rng() % 3000;
  go.seed = rng();
  ThreadGuest guest(d->region->base(), size, 4096, go);
  const absl::Time t0 = absl::Now();
  absl::Status run = d->engine->Run(d->source.get());
  EXPECT_TRUE(run.ok()) << run << " (proxy: " << proxy.connections() << " connections, "
                        << proxy.cuts() << " cuts, " << proxy.upstream_failures()
                        << " upstream connects failed)";
  if (!run.ok()) {
    d->engine.reset();  // unregisters: the guest threads get to finish
    return false;
  }
  guest.Join();
  const EngineCounters& c = d->engine->counters();
  const uint64_t placed = c.urgent_pages + c.bulk_pages + c.zero_pages;
  const uint64_t bad = (*src)->CountMismatches(d->region->base());
  EXPECT_EQ(placed, pages) << "a page was placed twice or not at all";
  EXPECT_EQ(bad, 0u);
  std::printf(
      "seed %llu: %s %llu MiB, cut every <=%llu KiB: %d cuts, %llu reconnects, "
      "%llu faults, %.2f s, %llu pages verified, %llu mismatches%s\n",
      static_cast<unsigned long long>(seed), RegionKindName(kind),
      static_cast<unsigned long long>(size >> 20), static_cast<unsigned long long>(max_gap >> 10),
      proxy.cuts(), static_cast<unsigned long long>(c.reconnects.load()),
      static_cast<unsigned long long>(c.faults.load()), absl::ToDoubleSeconds(absl::Now() - t0),
      static_cast<unsigned long long>(pages), static_cast<unsigned long long>(bad),
      placed == pages && bad == 0 ? "" : "  <-- FAILED");
  std::fflush(stdout);
  return placed == pages && bad == 0;
}

TEST(RandomCuts, EveryRunCompletesWithEveryPageVerified) {
  const uint64_t runs = EnvU64("FAULTLINE_RANDOM_CUT_RUNS", 5);
  const uint64_t base = EnvU64("FAULTLINE_SEED", static_cast<uint64_t>(time(nullptr)) * 1000);
  uint64_t ok = 0;
  for (uint64_t i = 0; i < runs; ++i) ok += RunOne(base + i) ? 1 : 0;
  std::printf("random cuts: %llu of %llu runs ok (seeds %llu..%llu)\n",
              static_cast<unsigned long long>(ok), static_cast<unsigned long long>(runs),
              static_cast<unsigned long long>(base),
              static_cast<unsigned long long>(base + runs - 1));
  EXPECT_EQ(ok, runs);
}

}  // namespace
}  // namespace faultline
