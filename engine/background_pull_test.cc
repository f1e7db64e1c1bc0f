// BackgroundPull against an in-process source: the window per lane, the jump to the latest
// fault, pausing for a reconnection, and a request that cannot be sent.
#include "engine/background_pull.h"

#include <vector>

#include "absl/time/clock.h"
#include "engine/testing/fake_page_source.h"
#include "engine/testing/fake_uffd.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

// A sink that only counts, and answers each batch when told to.
class PullTest : public ::testing::Test {
 protected:
  void Make(uint64_t pages, uint32_t lanes, BackgroundPull::Options o = {}) {
    auto r = GuestRegion::Create("ram", RegionKind::kAnonymous, pages * 4096);
    ASSERT_TRUE(r.ok());
    region_ = std::move(*r);
    auto t = RegionTable::Create({region_.get()}, &uffd_, &pc_);
    ASSERT_TRUE(t.ok());
    table_ = std::move(*t);
    source_ = std::make_unique<FakePageSource>(std::vector<uint8_t>(pages * 4096, 1), 4096, lanes);
    pull_ = std::make_unique<BackgroundPull>(table_.get(), &counters_, o);
  }
  bool WaitFor(const std::function<bool()>& f) {
    for (int i = 0; i < 2000; ++i) {
      if (f()) return true;
      absl::SleepFor(absl::Milliseconds(1));
    }
    return f();
  }
  uint64_t CountState(PageState s) {
    uint64_t n = 0;
    for (uint64_t p = 0; p < (*table_)[0].state.pages(); ++p) n += (*table_)[0].state.Get(p) == s;
    return n;
  }

  std::unique_ptr<GuestRegion> region_;
  FakeUffd uffd_;
  PlacerCounters pc_;
  EngineCounters counters_;
  std::unique_ptr<RegionTable> table_;
  std::unique_ptr<FakePageSource> source_;
  std::unique_ptr<BackgroundPull> pull_;
};

TEST_F(PullTest, KeepsTheWindowFullOnEveryLane) {
  BackgroundPull::Options o;
  o.batch_bytes = 16 * 4096;
  o.window = 3;
  Make(1024, 2, o);
  source_->HoldBulk(true);  // no answers: the window fills and stays full
  pull_->Start(source_.get());
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests() == 6; }));
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_EQ(source_->bulk_requests(), 6);  // 3 per lane, no more
  EXPECT_EQ(CountState(PageState::kBulkRequested), 6u * 16);
  // Room on lane 1: exactly one more request.
  pull_->BulkDone(1);
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests() == 7; }));
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(source_->bulk_requests(), 7);
  pull_->Stop();
}

// After a fault only the first lane takes new requests for solo_after_fault_ns; then all do.
TEST_F(PullTest, AFaultLeavesOnlyTheFirstLaneForAWhile) {
  BackgroundPull::Options o;
  o.batch_bytes = 16 * 4096;
  o.window = 2;
  o.solo_after_fault_ns = 300'000'000;  // 300 ms: longer than the checks below take
  Make(1024, 2, o);
  source_->HoldBulk(true);
  pull_->Hint(0, 500);  // a fault just now
  pull_->Start(source_.get());
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests() == 2; }));
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_EQ(source_->bulk_requests_on(0), 2);
  EXPECT_EQ(source_->bulk_requests_on(1), 0) << "lane 1 took a request right after a fault";
  // Lane 0 frees room while the fault is still recent: it takes the request, lane 1 not.
  pull_->BulkDone(0);
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests_on(0) == 3; }));
  EXPECT_EQ(source_->bulk_requests_on(1), 0);
  // Once the quiet time has passed lane 1 fills too, with no answer on lane 0 to wake the pull.
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests_on(1) == 2; }));
  EXPECT_EQ(source_->bulk_requests_on(0), 3);
  pull_->Stop();
}

// For solo_at_start_ns after the pull begins only the first lane takes requests; then all do,
// with no answer needed to wake the pull.
TEST_F(PullTest, OnlyTheFirstLaneAtTheStart) {
  BackgroundPull::Options o;
  o.batch_bytes = 16 * 4096;
  o.window = 2;
  o.enabled = false;
  o.solo_at_start_ns = 300'000'000;
  Make(1024, 2, o);
  source_->HoldBulk(true);
  pull_->Start(source_.get());
  absl::SleepFor(absl::Milliseconds(350));  // not begun yet: the window counts from Enable()
  pull_->Enable();
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests_on(0) == 2; }));
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_EQ(source_->bulk_requests_on(1), 0) << "lane 1 took a request during the start";
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests_on(1) == 2; }));
  EXPECT_EQ(source_->bulk_requests_on(0), 2);
  pull_->Stop();
}

// For hold_at_start_ns after the pull begins no lane takes a request, not even the only one;
// then the pull starts without an answer or a fault to wake it.
TEST_F(PullTest, NothingIsAskedDuringTheHoldAtTheStart) {
  BackgroundPull::Options o;
  o.batch_bytes = 16 * 4096;
  o.window = 2;
  o.hold_at_start_ns = 200'000'000;
  Make(1024, 1, o);
  source_->HoldBulk(true);
  const absl::Time t0 = absl::Now();
  pull_->Start(source_.get());
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(source_->bulk_requests(), 0) << "a request during the hold";
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests() == 2; }));
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(200));
  pull_->Stop();
}

// Release() (the guest runs) ends the hold at once, long before it would have run out.
TEST_F(PullTest, ReleaseEndsTheHoldAtTheStart) {
  BackgroundPull::Options o;
  o.batch_bytes = 16 * 4096;
  o.window = 2;
  o.hold_at_start_ns = 3'600'000'000'000;  // an hour
  Make(1024, 2, o);
  source_->HoldBulk(true);
  pull_->Start(source_.get());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(source_->bulk_requests(), 0);
  pull_->Release();
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests() == 4; }));  // both lanes' windows
  pull_->Stop();
}

TEST_F(PullTest, BatchesRespectTheSourceLimits) {
  BackgroundPull::Options o;
  o.batch_bytes = 64u << 20;  // more than the fake's 1 MiB per request
  Make(1024, 1, o);
  source_->HoldBulk(true);
  pull_->Start(source_.get());  // learns the source's limits
  EXPECT_EQ(pull_->BatchPages(0), 256u);
  pull_->Stop();
}

TEST_F(PullTest, ContinuesNextToTheLatestFault) {
  BackgroundPull::Options o;
  o.batch_bytes = 8 * 4096;
  o.window = 1;
  o.enabled = false;
  Make(1024, 1, o);
  source_->HoldBulk(true);
  pull_->Start(source_.get());
  pull_->Hint(0, 500);
  pull_->Enable();
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests() == 1; }));
  EXPECT_EQ((*table_)[0].state.Get(500), PageState::kBulkRequested);
  EXPECT_EQ((*table_)[0].state.Get(0), PageState::kAbsent);
  pull_->Stop();
}

TEST_F(PullTest, EverythingIsAskedForOnceThenIdle) {
  BackgroundPull::Options o;
  o.batch_bytes = 32 * 4096;
  Make(256, 1, o);
  // A sink that does nothing but free the window.
  struct Sink : PageSink {
    BackgroundPull* pull;
    void Deliver(const PageRun&) override {}
    void Rejected(uint32_t, uint64_t, Urgency) override {}
    void BulkDone(uint32_t lane) override { pull->BulkDone(lane); }
    void Failed(const SourceError&) override {}
  } sink;
  sink.pull = pull_.get();
  ASSERT_TRUE(source_->Start(&sink).ok());
  pull_->Start(source_.get());
  ASSERT_TRUE(WaitFor([&] { return pull_->idle(); }));
  EXPECT_EQ(source_->bulk_requests(), 8);
  EXPECT_EQ(CountState(PageState::kBulkRequested), 256u);
  // A page made absent again is asked for after a Kick().
  ASSERT_TRUE((*table_)[0].state.Unrequest(77));
  pull_->Kick();
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests() == 9; }));
  pull_->Stop();
  source_->Stop();
}

// A request that cannot be written (the connection died): its pages go back to absent, and the
// pull waits for the reconnection instead of spinning.
TEST_F(PullTest, FailedRequestUnrequestsAndWaitsForResume) {
  BackgroundPull::Options o;
  o.batch_bytes = 16 * 4096;
  o.window = 1;
  Make(256, 1, o);
  struct Sink : PageSink {
    void Deliver(const PageRun&) override {}
    void Rejected(uint32_t, uint64_t, Urgency) override {}
    void BulkDone(uint32_t) override {}
    void Failed(const SourceError&) override {}
  } sink;
  ASSERT_TRUE(source_->Start(&sink).ok());
  source_->Break(SourceError::Kind::kNetwork, absl::UnavailableError("cut"));
  pull_->Start(source_.get());
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests() == 1; }));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(source_->bulk_requests(), 1) << "no spinning on a dead connection";
  EXPECT_EQ(CountState(PageState::kBulkRequested), 0u);
  ASSERT_TRUE(source_->Reconnect(absl::InfiniteFuture()).ok());
  pull_->Resume();
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests() == 2; }));
  pull_->Stop();
}

TEST_F(PullTest, PausedPullAsksNothing) {
  Make(256, 1);
  pull_->Pause();
  pull_->Start(source_.get());
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_EQ(source_->bulk_requests(), 0);
  pull_->Resume();
  ASSERT_TRUE(WaitFor([&] { return source_->bulk_requests() > 0; }));
  pull_->Stop();
}

}  // namespace
}  // namespace faultline
