// Reconnector: after a network failure every request in flight is made again (urgent pages
// urgently, bulk pages through the pull), a failure during a reconnection causes one more, and
// a source that stays away ends the run with an error that says what is owed.
#include "engine/reconnector.h"

#include <algorithm>
#include <vector>

#include "absl/time/clock.h"
#include "engine/testing/fake_page_source.h"
#include "engine/testing/fake_uffd.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

struct NullSink : PageSink {
  void Deliver(const PageRun&) override {}
  void Rejected(uint32_t, uint64_t, Urgency) override {}
  void BulkDone(uint32_t) override {}
  void Failed(const SourceError&) override {}
};

class ReconnectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = GuestRegion::Create("ram", RegionKind::kAnonymous, 64 * 4096);
    ASSERT_TRUE(r.ok());
    region_ = std::move(*r);
    auto t = RegionTable::Create({region_.get()}, &uffd_, &pc_);
    ASSERT_TRUE(t.ok());
    table_ = std::move(*t);
    source_ = std::make_unique<FakePageSource>(std::vector<uint8_t>(64 * 4096, 1), 4096);
    BackgroundPull::Options o;
    o.enabled = false;
    pull_ = std::make_unique<BackgroundPull>(table_.get(), &counters_, o);
    reconnector_ = std::make_unique<Reconnector>(table_.get(), pull_.get(), &counters_,
                                                 absl::Seconds(5), [this](const absl::Status& s) {
                                                   std::lock_guard<std::mutex> l(mu_);
                                                   failed_ = s;
                                                 });
    reconnector_->SetSource(source_.get());
    ASSERT_TRUE(source_->Start(&sink_).ok());
  }
  void TearDown() override {
    reconnector_->Join();
    source_->Stop();
  }
  bool WaitFor(const std::function<bool()>& f) {
    for (int i = 0; i < 3000 && !f(); ++i) absl::SleepFor(absl::Milliseconds(1));
    return f();
  }
  PageStateMap& state() { return (*table_)[0].state; }

  std::unique_ptr<GuestRegion> region_;
  FakeUffd uffd_;
  PlacerCounters pc_;
  EngineCounters counters_;
  std::unique_ptr<RegionTable> table_;
  std::unique_ptr<FakePageSource> source_;
  std::unique_ptr<BackgroundPull> pull_;
  std::unique_ptr<Reconnector> reconnector_;
  NullSink sink_;
  std::mutex mu_;
  absl::Status failed_;
};

TEST_F(ReconnectorTest, RequestsInFlightAreMadeAgain) {
  PageState seen;
  ASSERT_TRUE(state().MarkUrgent(9, &seen));
  ASSERT_TRUE(state().MarkUrgent(33, &seen));
  uint64_t first;
  ASSERT_EQ(state().ClaimBulkRun(40, 8, &first), 8u);
  ASSERT_TRUE(reconnector_->Request({SourceError::Kind::kNetwork, absl::UnavailableError("cut")}));
  ASSERT_TRUE(WaitFor([&] { return !reconnector_->reconnecting(); }));
  EXPECT_EQ(source_->reconnects(), 1);
  EXPECT_EQ(counters_.reconnects.load(), 1u);
  std::vector<uint64_t> urgent = source_->urgent_requests();
  std::sort(urgent.begin(), urgent.end());
  EXPECT_EQ(urgent, (std::vector<uint64_t>{9, 33}));
  EXPECT_EQ(counters_.resent_requests.load(), 2u);
  for (uint64_t p = 40; p < 48; ++p) EXPECT_EQ(state().Get(p), PageState::kAbsent) << p;
  EXPECT_TRUE(failed_.ok());
}

TEST_F(ReconnectorTest, SourceThatStaysAwayFailsTheRunSayingWhatIsOwed) {
  source_->SetReconnectResult(absl::DeadlineExceededError("source unreachable until the deadline"));
  ASSERT_TRUE(reconnector_->Request({SourceError::Kind::kNetwork, absl::UnavailableError("cut")}));
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(mu_);
    return !failed_.ok();
  }));
  std::lock_guard<std::mutex> l(mu_);
  EXPECT_EQ(failed_.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(failed_.message().find("lost the source (cut)"), absl::string_view::npos) << failed_;
  EXPECT_NE(failed_.message().find("64 pages are still owed"), absl::string_view::npos) << failed_;
}

TEST_F(ReconnectorTest, OffWithoutADeadline) {
  Reconnector off(table_.get(), pull_.get(), &counters_, absl::ZeroDuration(),
                  [](const absl::Status&) {});
  off.SetSource(source_.get());
  EXPECT_FALSE(off.Request({SourceError::Kind::kNetwork, absl::UnavailableError("cut")}));
}

// Two failures at once (both channels): one reconnection. A failure reported while it runs
// (the new connection broke too) causes one more.
TEST_F(ReconnectorTest, OverlappingFailuresReconnectOnceEachTime) {
  ASSERT_TRUE(reconnector_->Request({SourceError::Kind::kNetwork, absl::UnavailableError("a")}));
  ASSERT_TRUE(reconnector_->Request({SourceError::Kind::kNetwork, absl::UnavailableError("b")}));
  ASSERT_TRUE(WaitFor([&] { return !reconnector_->reconnecting(); }));
  EXPECT_GE(source_->reconnects(), 1);
  EXPECT_LE(source_->reconnects(), 2);
}

}  // namespace
}  // namespace faultline
