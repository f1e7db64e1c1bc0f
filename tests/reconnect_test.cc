// Network failures mid post-copy: the destination keeps the guest waiting on its faults,
// reconnects, re-sends what was in flight, and finishes with every page verified — or, when
// the source stays gone past the deadline, ends with a clear error and the guest still
// waiting (not crashed).
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/flaky_proxy.h"
#include "tests/testing/test_dest.h"
#include "tests/testing/test_source.h"
#include "transport/tcp_page_source.h"
#include "workload/thread_guest.h"

namespace faultline {
namespace {

constexpr uint64_t kSize = 32u << 20;

TEST(Reconnect, NetworkBlipsAreSurvivedAndNothingIsLostOrPlacedTwice) {
  auto src = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  FlakyProxy proxy((*src)->options().address);
  proxy.CutEvery(5u << 20);  // cut both connections after every 5 MiB from the source
  EngineOptions eo;
  eo.reconnect_deadline = absl::Seconds(20);
  TcpSourceOptions o = (*src)->options();
  o.address = proxy.address();
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kMemfd, kSize, o, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  GuestOptions go;
  go.touches_per_thread = 3000;
  ThreadGuest guest(d->region->base(), kSize, 4096, go);
  absl::Status run = d->engine->Run(d->source.get());
  ASSERT_TRUE(run.ok()) << run;
  guest.Join();
  const EngineCounters& c = d->engine->counters();
  EXPECT_GE(proxy.cuts(), 3);
  EXPECT_EQ(c.reconnects.load(), static_cast<uint64_t>(d->source->reconnects()));
  EXPECT_GE(c.reconnects.load(), 3u);
  EXPECT_EQ(c.urgent_pages + c.bulk_pages + c.zero_pages, kSize / 4096);  // each page once
  EXPECT_EQ((*src)->CountMismatches(d->region->base()), 0u);
  std::printf("cuts %d, reconnects %llu, re-sent urgent requests %llu\n", proxy.cuts(),
              (unsigned long long)c.reconnects.load(),
              (unsigned long long)c.resent_requests.load());
}

TEST(Reconnect, SlowSourceStillCompletes) {
  auto src = TestSource::Start(8u << 20, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  FlakyProxy proxy((*src)->options().address);
  proxy.SetDelayPerChunkUs(2000);  // ≤ 32 MB/s, and 2 ms more on every urgent page
  TcpSourceOptions o = (*src)->options();
  o.address = proxy.address();
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kMemfd, 8u << 20, o);
  ASSERT_TRUE(d.ok()) << d.status();
  GuestOptions go;
  go.touches_per_thread = 300;
  ThreadGuest guest(d->region->base(), 8u << 20, 4096, go);
  absl::Status run = d->engine->Run(d->source.get());
  ASSERT_TRUE(run.ok()) << run;
  guest.Join();
  EXPECT_GT(guest.SlowTouches().max(), 2'000'000u);  // the guest did feel the slow source
  EXPECT_EQ((*src)->CountMismatches(d->region->base()), 0u);
}

TEST(Reconnect, PageServerRestartResumesFromThePageStateMap) {
  auto src = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  EngineOptions eo;
  eo.background_pull = false;
  eo.reconnect_deadline = absl::Seconds(20);
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kAnonymous, **src, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  Engine* engine = d->engine.get();
  Runner runner(engine, d->source.get());
  uint8_t* base = d->region->base();
  for (uint64_t p = 0; p < 64; ++p) (void)*reinterpret_cast<volatile uint64_t*>(base + p * 4096);
  // (A page is marked present just after the placement that woke its reader.)
  WaitFor([&] { return engine->remaining_pages() == kSize / 4096 - 64; });
  EXPECT_EQ(kSize / 4096 - engine->remaining_pages(), 64u);
  // The source's page server process restarts; its memory (the frozen VM) is still there.
  ASSERT_TRUE((*src)->Restart().ok());
  engine->StartBackgroundPull();
  absl::Status run = runner.Join();
  ASSERT_TRUE(run.ok()) << run;
  EXPECT_GE(engine->counters().reconnects.load(), 1u);
  // Pages present before the restart were not fetched again.
  EXPECT_EQ(engine->counters().urgent_pages + engine->counters().bulk_pages +
                engine->counters().zero_pages,
            kSize / 4096);
  EXPECT_EQ((*src)->CountMismatches(base), 0u);
}

TEST(Reconnect, SourceGonePastTheDeadlineLeavesTheGuestWaitingNotCrashed) {
  auto src = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  FlakyProxy proxy((*src)->options().address);
  EngineOptions eo;
  eo.background_pull = false;
  eo.reconnect_deadline = absl::Milliseconds(800);
  TcpSourceOptions o = (*src)->options();
  o.address = proxy.address();
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kAnonymous, kSize, o, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  Engine* engine = d->engine.get();
  Runner runner(engine, d->source.get());
  uint8_t* base = d->region->base();
  // One page arrives normally.
  uint64_t want;
  memcpy(&want, (*src)->base() + 4096 * 7, 8);
  ASSERT_EQ(*reinterpret_cast<volatile uint64_t*>(base + 4096 * 7), want);
  // The source vanishes; a guest thread then faults on another page.
  proxy.SetDown(true);
  std::atomic<bool> returned{false};
  std::thread vcpu([&] {
    (void)*reinterpret_cast<volatile uint64_t*>(base + 4096 * 1000);
    returned.store(true);
  });
  absl::Status run = runner.Join();
  EXPECT_EQ(run.code(), absl::StatusCode::kDeadlineExceeded) << run;
  EXPECT_NE(run.message().find("could not reconnect"), std::string::npos) << run;
  EXPECT_NE(run.message().find("not crashed"), std::string::npos) << run;
  // The faulted thread is still waiting (no SIGBUS, no zero page), the state is kept.
  usleep(100000);
  EXPECT_FALSE(returned.load());
  EXPECT_EQ(engine->StateOf(0, 7), PageState::kPresent);
  EXPECT_EQ(engine->StateOf(0, 1000), PageState::kUrgentRequested);
  EXPECT_EQ(engine->remaining_pages(), kSize / 4096 - 1);
  // Teardown: releasing the engine unregisters the range, which lets the thread go.
  d->engine.reset();
  vcpu.join();
}

}  // namespace
}  // namespace faultline
