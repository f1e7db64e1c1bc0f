// Integration: the engine, the TCP transport and the page server, on real userfaultfd memory
// of every region kind, with real threads faulting. Every migration is verified page by page.
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <thread>

#include "base/memory_kind.h"
#include "cli/setup.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/hugepages.h"
#include "tests/testing/test_dest.h"
#include "tests/testing/test_source.h"
#include "transport/tcp_page_source.h"
#include "workload/thread_guest.h"

namespace faultline {
namespace {

class EveryKind : public ::testing::TestWithParam<RegionKind> {};

TEST_P(EveryKind, AllPagesArriveWhileTheGuestRunsAndMatch) {
  const RegionKind kind = GetParam();
  const uint64_t size = kind == RegionKind::kHugetlb ? (32u << 20) : (48u << 20);
  ScopedHugePages huge(kind == RegionKind::kHugetlb ? 2 * size / (2u << 20) : 0);
  if (!huge.ok()) GTEST_SKIP() << "hugetlb unavailable: " << huge.why_not();
  absl::StatusOr<std::unique_ptr<TestSource>> src =
      TestSource::Start(size, MemoryKindPageSize(kind));
  ASSERT_TRUE(src.ok()) << src.status();
  absl::StatusOr<Dest> d = MakeDest(kind, **src);
  ASSERT_TRUE(d.ok()) << d.status();
  GuestOptions go;
  go.touches_per_thread = 3000;
  ThreadGuest guest(d->region->base(), size, MemoryKindPageSize(kind), go);
  absl::Status s = d->engine->Run(d->source.get());
  ASSERT_TRUE(s.ok()) << s;
  guest.Join();
  const EngineCounters& c = d->engine->counters();
  EXPECT_EQ(d->engine->remaining_pages(), 0u);
  // Each page placed exactly once, by exactly one channel.
  EXPECT_EQ(c.urgent_pages + c.bulk_pages + c.zero_pages, size / MemoryKindPageSize(kind));
  EXPECT_GT(c.faults.load(), 0u);
  if (kind != RegionKind::kHugetlb) {
    EXPECT_GT(c.zero_pages.load(), 0u);  // the pattern's zero pages travel as markers
  }
  EXPECT_EQ((*src)->CountMismatches(d->region->base()), 0u);
  std::printf("%s: urgent %llu bulk %llu zero %llu faults %llu dup %llu, latency %s\n",
              RegionKindName(kind), (unsigned long long)c.urgent_pages.load(),
              (unsigned long long)c.bulk_pages.load(), (unsigned long long)c.zero_pages.load(),
              (unsigned long long)c.faults.load(), (unsigned long long)c.duplicate_faults.load(),
              d->engine->fault_stats().Overall().Summary().c_str());
}

INSTANTIATE_TEST_SUITE_P(Kinds, EveryKind,
                         ::testing::Values(RegionKind::kAnonymous, RegionKind::kMemfd,
                                           RegionKind::kHugetlb),
                         [](const auto& info) { return std::string(RegionKindName(info.param)); });

TEST(Migration, TwoThreadsFaultingOnOnePageSendOneRequest) {
  absl::StatusOr<std::unique_ptr<TestSource>> src = TestSource::Start(8u << 20, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  EngineOptions eo;
  eo.background_pull = false;
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kMemfd, **src, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  Engine* engine = d->engine.get();
  Runner runner(engine, d->source.get());
  const uint64_t page = FirstNonZeroPage(1001);
  std::atomic<int> ready{0};
  uint64_t got[2] = {0, 0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < 2) {
      }
      got[t] = *reinterpret_cast<volatile uint64_t*>(d->region->page(page) + 64);
    });
  }
  for (auto& t : threads) t.join();
  uint64_t want;
  memcpy(&want, (*src)->base() + page * 4096 + 64, 8);
  EXPECT_EQ(got[0], want);
  EXPECT_EQ(got[1], want);
  EXPECT_EQ(engine->counters().urgent_requests.load(), 1u);
  // Counted just after the placement that woke the threads.
  EXPECT_TRUE(WaitFor([&] { return engine->counters().urgent_pages.load() == 1; }));
  // The fault loop counts a fault when it reads it and as a duplicate or stale one when it has
  // decided, a moment later; the second thread may already be running again in between.
  EXPECT_TRUE(WaitFor([&] {
    return engine->counters().faults.load() ==
           1u + engine->counters().duplicate_faults.load() + engine->counters().stale_faults.load();
  })) << "faults "
      << engine->counters().faults.load() << ", duplicate "
      << engine->counters().duplicate_faults.load() << ", stale "
      << engine->counters().stale_faults.load();
  engine->StartBackgroundPull();
  absl::Status run = runner.Join();
  ASSERT_TRUE(run.ok()) << run;
  EXPECT_EQ((*src)->CountMismatches(d->region->base()), 0u);
}

TEST(Migration, FaultsRacingSmallBackgroundBatchesPlaceEachPageOnce) {
  absl::StatusOr<std::unique_ptr<TestSource>> src = TestSource::Start(32u << 20, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  EngineOptions eo;
  eo.bulk_batch_bytes = 64 << 10;
  eo.bulk_window = 8;
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kAnonymous, **src, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  GuestOptions go;
  go.threads = {AccessPattern::kRandom, AccessPattern::kRandom, AccessPattern::kSequential,
                AccessPattern::kHotSet};
  go.touches_per_thread = 5000;
  ThreadGuest guest(d->region->base(), (*src)->size(), 4096, go);
  ASSERT_TRUE(d->engine->Run(d->source.get()).ok());
  guest.Join();
  const EngineCounters& c = d->engine->counters();
  EXPECT_EQ(c.urgent_pages + c.bulk_pages + c.zero_pages, (*src)->size() / 4096);
  EXPECT_EQ((*src)->CountMismatches(d->region->base()), 0u);
  std::printf("duplicate arrivals dropped: %llu, faults %llu\n",
              (unsigned long long)c.duplicate_arrivals.load(), (unsigned long long)c.faults.load());
}

TEST(Migration, RemovedPagesReadZeroAndAreNotRefetched) {
  absl::StatusOr<std::unique_ptr<TestSource>> src = TestSource::Start(8u << 20, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  EngineOptions eo;
  eo.background_pull = false;
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kAnonymous, **src, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  Engine* engine = d->engine.get();
  Runner runner(engine, d->source.get());
  uint8_t* base = d->region->base();
  // Fault in page 10 (arrives from the source), then the guest drops pages 8..15 (a balloon):
  // madvise blocks until the engine has read the REMOVE event.
  volatile uint64_t v = *reinterpret_cast<volatile uint64_t*>(base + 10 * 4096 + 8);
  (void)v;
  ASSERT_EQ(madvise(base + 8 * 4096, 8 * 4096, MADV_DONTNEED), 0);
  // madvise returns once the event is read; the fault loop handles it right after.
  ASSERT_TRUE(WaitFor([&] { return engine->counters().discarded_pages.load() == 8; }));
  EXPECT_EQ(engine->StateOf(0, 10), PageState::kDiscarded);
  EXPECT_EQ(engine->StateOf(0, 12), PageState::kDiscarded);
  // A dropped page reads as zeros (MISSING → zero fill), not the source's content.
  EXPECT_EQ(*reinterpret_cast<volatile uint64_t*>(base + 12 * 4096 + 16), 0u);
  EXPECT_EQ(*reinterpret_cast<volatile uint64_t*>(base + 10 * 4096 + 8), 0u);
  EXPECT_GE(engine->counters().remove_events.load(), 1u);
  engine->StartBackgroundPull();
  absl::Status run = runner.Join();
  ASSERT_TRUE(run.ok()) << run;
  // The other pages match the source; the dropped ones are zero.
  for (uint64_t p = 0; p < (*src)->size() / 4096; ++p) {
    if (p >= 8 && p < 16) {
      for (int i = 0; i < 4096; ++i) ASSERT_EQ(base[p * 4096 + i], 0) << p;
    } else {
      ASSERT_EQ(memcmp(base + p * 4096, (*src)->base() + p * 4096, 4096), 0) << p;
    }
  }
  EXPECT_EQ(engine->counters().discarded_pages.load(), 8u);
}

TEST(Migration, ShmemDontNeedKeepsPageCacheContent) {
  absl::StatusOr<std::unique_ptr<TestSource>> src = TestSource::Start(4u << 20, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  EngineOptions eo;
  eo.background_pull = false;
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kMemfd, **src, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  Engine* engine = d->engine.get();
  Runner runner(engine, d->source.get());
  uint8_t* base = d->region->base();
  const uint64_t page = FirstNonZeroPage(33);
  uint64_t want;
  memcpy(&want, (*src)->base() + page * 4096 + 24, 8);
  EXPECT_EQ(*reinterpret_cast<volatile uint64_t*>(base + page * 4096 + 24), want);
  // MADV_DONTNEED on shared memory only unmaps: the next touch is a MINOR fault and the page
  // keeps its content.
  ASSERT_EQ(madvise(base + page * 4096, 4096, MADV_DONTNEED), 0);
  EXPECT_EQ(*reinterpret_cast<volatile uint64_t*>(base + page * 4096 + 24), want);
  EXPECT_GE(engine->counters().minor_faults.load(), 1u);
  engine->StartBackgroundPull();
  absl::Status run = runner.Join();
  ASSERT_TRUE(run.ok()) << run;
  EXPECT_EQ((*src)->CountMismatches(base), 0u);
}

TEST(Migration, UnmappedRangeIsDroppedAndTheMigrationStillCompletes) {
  absl::StatusOr<std::unique_ptr<TestSource>> src = TestSource::Start(8u << 20, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  EngineOptions eo;
  eo.background_pull = false;
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kAnonymous, **src, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  Engine* engine = d->engine.get();
  Runner runner(engine, d->source.get());
  uint8_t* base = d->region->base();
  const uint64_t page = FirstNonZeroPage(3);
  uint64_t want;
  memcpy(&want, (*src)->base() + page * 4096, 8);
  EXPECT_EQ(*reinterpret_cast<volatile uint64_t*>(base + page * 4096), want);
  // The VMM drops the last 1 MiB of guest memory: it maps something else over it (MAP_FIXED
  // unmaps the old range and raises the same UNMAP event as munmap, and blocks the same way
  // until the engine has read it); those pages are no longer owed. Not munmap and a remap
  // later: in between, another thread's mmap (a thread stack, the allocator's) may take the
  // hole, and the remap would then wipe it — which once corrupted ASan's heap in this test.
  ASSERT_NE(mmap(base + (7u << 20), 1u << 20, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0),
            MAP_FAILED);
  ASSERT_TRUE(WaitFor([&] { return engine->counters().unmap_events.load() == 1; }));
  ASSERT_TRUE(WaitFor([&] { return engine->StateOf(0, 2047) == PageState::kDiscarded; }));
  engine->StartBackgroundPull();
  absl::Status run = runner.Join();
  ASSERT_TRUE(run.ok()) << run;
  EXPECT_EQ(engine->counters().discarded_pages.load(), 256u);
  EXPECT_EQ(memcmp(base, (*src)->base(), 7u << 20), 0);
}

TEST(Migration, RegionTableMismatchIsRefused) {
  absl::StatusOr<std::unique_ptr<TestSource>> src = TestSource::Start(4u << 20, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  // Destination memory of another size than the source serves (4 MiB).
  absl::StatusOr<Destination> d = CreateDestination(MemoryKind::kAnonymous, 8u << 20);
  ASSERT_TRUE(d.ok()) << d.status();
  auto s = TcpPageSource::Connect((*src)->options());
  ASSERT_TRUE(s.ok());
  absl::Status run = d->engine->Run(s->get());
  EXPECT_EQ(run.code(), absl::StatusCode::kFailedPrecondition) << run;
  EXPECT_NE(run.message().find("region 0 differs"), std::string::npos) << run;
}

TEST(Migration, GuestMemfdIsRefusedWithAPointerToKernelSeries) {
  auto r = GuestRegion::Create("ram", RegionKind::kGuestMemfd, 1u << 20);
  if (!r.ok()) GTEST_SKIP() << "guest_memfd cannot be created here: " << r.status();
  r->reset();
  absl::StatusOr<Destination> d = CreateDestination(MemoryKind::kGuestMemfd, 1u << 20);
  if (d.ok()) GTEST_SKIP() << "this kernel supports userfaultfd on guest_memfd";
  EXPECT_EQ(d.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(d.status().message().find("kernel/"), std::string::npos) << d.status();
}

}  // namespace
}  // namespace faultline
