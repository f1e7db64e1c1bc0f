// The Engine wiring its parts, on a scripted userfaultfd and an in-process source: whole
// migrations (every page once, every byte right), a fault served ahead of the pull, a rejected
// page fetched again, a network failure survived, a protocol failure reported, pages present
// before the migration dropped. tests/ runs the same on the real kernel and real sockets.
#include "engine/engine.h"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/thread_slice.h"
#include "engine/testing/fake_page_source.h"
#include "engine/testing/fake_uffd.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

constexpr uint64_t kPages = 512;

std::vector<uint8_t> SourceMemory() {
  std::vector<uint8_t> m(kPages * 4096);
  for (uint64_t p = 0; p < kPages; ++p) {
    if (p % 7 == 3) continue;  // zero pages
    for (size_t i = 0; i < 4096; i += 8) memcpy(&m[p * 4096 + i], &p, sizeof(p));
  }
  return m;
}

class EngineTest : public ::testing::TestWithParam<RegionKind> {
 protected:
  // Defined below its tests' helpers (the fault loop's nice value).
  void ExpectFaultLoopNice(int fault_nice, int caller_nice, int during, int after);
  void Make(EngineOptions o = {}) {
    auto r = GuestRegion::Create("ram", GetParam(), kPages * 4096);
    ASSERT_TRUE(r.ok()) << r.status();
    region_ = std::move(*r);
    auto u = std::make_unique<FakeUffd>();
    uffd_ = u.get();
    o.reconnect_deadline = absl::Seconds(5);
    auto e = Engine::Create({region_.get()}, std::move(u), o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    source_ = std::make_unique<FakePageSource>(SourceMemory(), 4096, 2);
  }
  void RunAsync() {
    runner_ = std::thread([this] { result_ = engine_->Run(source_.get()); });
  }
  absl::Status Join() {
    runner_.join();
    return result_;
  }
  void ExpectAllPagesMatch() {
    for (uint64_t p = 0; p < kPages; ++p) {
      ASSERT_EQ(engine_->StateOf(0, p), PageState::kPresent) << p;
      ASSERT_EQ(memcmp(region_->page(p), source_->mem() + p * 4096, 4096), 0) << "page " << p;
    }
  }

  std::unique_ptr<GuestRegion> region_;
  FakeUffd* uffd_ = nullptr;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<FakePageSource> source_;
  std::thread runner_;
  absl::Status result_;
};

TEST_P(EngineTest, EveryPageArrivesOnceAndMatches) {
  Make();
  ASSERT_TRUE(engine_->Run(source_.get()).ok());
  ExpectAllPagesMatch();
  const EngineCounters& c = engine_->counters();
  EXPECT_EQ(c.bulk_pages + c.urgent_pages + c.zero_pages, kPages);
  uint64_t zeros = 0;
  std::vector<uint8_t> zero(4096, 0);
  for (uint64_t p = 0; p < kPages; ++p) {
    zeros += memcmp(source_->mem() + p * 4096, zero.data(), 4096) == 0;
  }
  EXPECT_EQ(c.zero_pages.load(), zeros);
  EXPECT_EQ(engine_->placer_counters().eexist.load(), 0u);
  EXPECT_TRUE(source_->finished());
}

// With the pull held back, a fault is fetched urgently and its vCPU woken by the placement.
TEST_P(EngineTest, FaultIsServedAheadOfThePull) {
  EngineOptions o;
  o.background_pull = false;
  Make(o);
  RunAsync();
  uffd_->QueueFault(region_->page(100));
  // The Lander counts a run after marking its pages present: wait for both (a TSan build in
  // the KVM VM read the counter in between once).
  for (int i = 0; i < 2000 && (engine_->StateOf(0, 100) != PageState::kPresent ||
                               engine_->counters().urgent_pages.load() == 0);
       ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(engine_->StateOf(0, 100), PageState::kPresent);
  EXPECT_TRUE(uffd_->WokenAt(region_->page(100)));
  EXPECT_EQ(source_->urgent_requests(), std::vector<uint64_t>{100});
  EXPECT_EQ(engine_->counters().urgent_pages.load(), 1u);
  engine_->StartBackgroundPull();
  ASSERT_TRUE(Join().ok());
  ExpectAllPagesMatch();
  EXPECT_EQ(engine_->fault_stats().Overall().count(), 1u);
}

TEST_P(EngineTest, RejectedPageIsFetchedAgain) {
  Make();
  source_->RejectOnce(5);
  source_->RejectOnce(300);
  ASSERT_TRUE(engine_->Run(source_.get()).ok());
  ExpectAllPagesMatch();
  EXPECT_EQ(engine_->counters().corrupt_pages.load(), 2u);
}

TEST_P(EngineTest, NetworkFailureIsSurvived) {
  Make();
  source_->HoldBulk(true);
  RunAsync();
  for (int i = 0; i < 2000 && source_->bulk_requests() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  source_->Break(SourceError::Kind::kNetwork, absl::UnavailableError("connection cut"));
  source_->HoldBulk(false);
  ASSERT_TRUE(Join().ok()) << result_;
  ExpectAllPagesMatch();
  EXPECT_EQ(engine_->counters().reconnects.load(), 1u);
}

TEST_P(EngineTest, ProtocolFailureEndsTheRunWithItsReason) {
  Make();
  source_->HoldBulk(true);
  RunAsync();
  for (int i = 0; i < 2000 && source_->bulk_requests() == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  source_->Break(SourceError::Kind::kProtocol,
                 absl::InvalidArgumentError("bulk channel: malformed PAGES frame"));
  absl::Status s = Join();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("malformed PAGES frame"), absl::string_view::npos) << s;
  EXPECT_GT(engine_->remaining_pages(), 0u);
  EXPECT_EQ(engine_->counters().reconnects.load(), 0u);
  EXPECT_FALSE(source_->finished());
}

TEST_P(EngineTest, CancelEndsTheRun) {
  EngineOptions o;
  o.background_pull = false;
  Make(o);
  RunAsync();
  absl::SleepFor(absl::Milliseconds(20));
  engine_->Cancel();
  EXPECT_EQ(Join().code(), absl::StatusCode::kCancelled);
}

TEST_P(EngineTest, TheFaultLoopThreadRunsWithTheFaultSlice) {
  EngineOptions o;
  o.background_pull = false;
  o.fault_slice = absl::Microseconds(250);
  Make(o);
  std::atomic<pid_t> tid{0};
  runner_ = std::thread([this, &tid] {
    tid.store(gettid());
    result_ = engine_->Run(source_.get());
  });
  absl::StatusOr<absl::Duration> slice;
  for (int i = 0; i < 2000; ++i) {  // Run() sets it before its fault loop starts
    if (tid.load() != 0) slice = ThreadSlice(tid.load());
    if (slice.ok() && *slice == o.fault_slice) break;
    absl::SleepFor(absl::Milliseconds(1));
  }
  engine_->Cancel();
  (void)Join();
  bool supported = true;  // probed on a thread of its own: the slice stays with the thread
  std::thread([&] {
    supported = !absl::IsInvalidArgument(SetThreadSlice(absl::Microseconds(250)));
  }).join();
  if (!supported) GTEST_SKIP() << "kernel without custom slices (< 6.12)";
  ASSERT_TRUE(slice.ok()) << slice.status();
  EXPECT_EQ(*slice, o.fault_slice);
}

// Runs the engine until cancelled, on a thread at `caller_nice`: the fault loop thread's nice
// value while it ran (sampled for 50 ms) and that thread's after Run() returned.
struct NiceSeen {
  std::vector<int> during;
  absl::StatusOr<int> after;
};
NiceSeen RunWithFaultNice(Engine* engine, PageSource* source, int caller_nice = 0) {
  NiceSeen seen;
  std::atomic<pid_t> tid{0};
  std::thread runner([&] {
    if (caller_nice != 0) (void)SetThreadNice(caller_nice);  // lower: needs no privilege
    tid.store(gettid());
    (void)engine->Run(source);
    seen.after = ThreadNice();
  });
  while (tid.load() == 0) absl::SleepFor(absl::Milliseconds(1));
  absl::SleepFor(absl::Milliseconds(20));  // Run() sets it before its fault loop starts
  for (int i = 0; i < 50; ++i) {
    if (absl::StatusOr<int> n = ThreadNice(tid.load()); n.ok()) seen.during.push_back(*n);
    absl::SleepFor(absl::Milliseconds(1));
  }
  engine->Cancel();
  runner.join();
  return seen;
}

// Runs an engine with `fault_nice` on a thread at `caller_nice`, and checks the fault loop
// thread's nice value while it ran (`during`) and once Run() returned (`after`).
void EngineTest::ExpectFaultLoopNice(int fault_nice, int caller_nice, int during, int after) {
  EngineOptions o;
  o.background_pull = false;
  o.fault_nice = fault_nice;
  Make(o);
  NiceSeen seen = RunWithFaultNice(engine_.get(), source_.get(), caller_nice);
  ASSERT_FALSE(seen.during.empty());
  for (int n : seen.during) EXPECT_EQ(n, during);
  ASSERT_TRUE(seen.after.ok()) << seen.after.status();
  EXPECT_EQ(*seen.after, after);
}

// A fault_nice below the caller's priority is not taken: the fault loop is never lowered (and
// could not give the caller's back without CAP_SYS_NICE).
TEST_P(EngineTest, TheFaultLoopThreadIsNeverLoweredByTheFaultNice) {
  ExpectFaultLoopNice(/*fault_nice=*/5, /*caller_nice=*/0, /*during=*/0, /*after=*/0);
}

// fault_nice 0 leaves the thread as it is, also a caller at a lower priority (which could not
// be given 0 back unprivileged).
TEST_P(EngineTest, TheFaultLoopThreadKeepsItsCallersNiceWithoutAFaultNice) {
  ExpectFaultLoopNice(/*fault_nice=*/0, /*caller_nice=*/10, /*during=*/10, /*after=*/10);
}

// A higher priority is taken while the fault loop runs where this process may (CAP_SYS_NICE:
// outside Bazel's sandbox, as root) and left alone where it may not; either way the caller's
// own is back after.
TEST_P(EngineTest, TheFaultLoopThreadIsRaisedToTheFaultNiceWhereAllowed) {
  const int during = CheckNiceAllowed(-5).ok() ? -5 : 0;
  ExpectFaultLoopNice(/*fault_nice=*/-5, /*caller_nice=*/0, during, /*after=*/0);
}

// The fault loop's thread is named while it runs (top -H, perf) and gets its name back after.
TEST_P(EngineTest, TheFaultLoopThreadIsNamedWhileItRuns) {
  EngineOptions o;
  o.background_pull = false;
  Make(o);
  std::atomic<pid_t> tid{0};
  std::string after;
  runner_ = std::thread([this, &tid, &after] {
    pthread_setname_np(pthread_self(), "caller");
    tid.store(gettid());
    result_ = engine_->Run(source_.get());
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof(name));
    after = name;
  });
  auto comm = [](pid_t t) {
    std::ifstream f(absl::StrCat("/proc/self/task/", t, "/comm"));
    std::string line;
    std::getline(f, line);
    return line;
  };
  std::string during;
  for (int i = 0; i < 2000 && during != "fl-fault-loop"; ++i) {
    if (tid.load() != 0) during = comm(tid.load());
    absl::SleepFor(absl::Milliseconds(1));
  }
  engine_->Cancel();
  (void)Join();
  EXPECT_EQ(during, "fl-fault-loop");
  EXPECT_EQ(after, "caller");
}

TEST_P(EngineTest, SourceWithOtherRegionsIsRefused) {
  Make();
  FakePageSource other(std::vector<uint8_t>(8 * 4096), 4096);
  absl::Status s = engine_->Run(&other);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("region 0 differs"), absl::string_view::npos) << s;
}

// A page already in a memfd region's file before post-copy starts would be read by the guest
// without a fault: a fresh engine punches it out, and it is fetched like any other.
TEST(EngineStalePages, PagesAlreadyInTheFileAreDropped) {
  auto r = GuestRegion::Create("ram", RegionKind::kMemfd, kPages * 4096);
  ASSERT_TRUE(r.ok());
  std::vector<uint8_t> junk(8 * 4096, 0xee);
  ASSERT_EQ(pwrite((*r)->fd(), junk.data(), junk.size(), 16 * 4096), ssize_t(junk.size()));
  auto e = Engine::Create({r->get()}, std::make_unique<FakeUffd>());
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ((*e)->stale_pages_dropped(), 8u);
  EXPECT_EQ((*r)->page(16)[0], 0) << "punched out";
  FakePageSource source(SourceMemory(), 4096);
  ASSERT_TRUE((*e)->Run(&source).ok());
  EXPECT_EQ(memcmp((*r)->page(16), source.mem() + 16 * 4096, 4096), 0);
}

TEST(EngineStalePages, GuestMemfdPagesAreDroppedToo) {
  // guest_memfd has no SEEK_DATA to find them by: the whole range goes.
  auto r = GuestRegion::Create("ram", RegionKind::kGuestMemfd, kPages * 4096);
  if (!r.ok()) GTEST_SKIP() << "no guest_memfd here (needs /dev/kvm): " << r.status();
  memset((*r)->page(16), 0xee, 8 * 4096);  // the VMM's writes before the hand-off
  auto e = Engine::Create({r->get()}, std::make_unique<FakeUffd>());
  ASSERT_TRUE(e.ok()) << e.status();
  for (uint64_t p = 16; p < 24; ++p) {
    EXPECT_EQ(*reinterpret_cast<volatile uint8_t*>((*r)->page(p)), 0) << "page " << p;
  }
  EXPECT_EQ((*e)->stale_pages_dropped(), 0u) << "not counted: nothing can say how many there were";
}

INSTANTIATE_TEST_SUITE_P(Kinds, EngineTest,
                         ::testing::Values(RegionKind::kAnonymous, RegionKind::kMemfd),
                         [](const auto& i) { return std::string(RegionKindName(i.param)); });

}  // namespace
}  // namespace faultline
