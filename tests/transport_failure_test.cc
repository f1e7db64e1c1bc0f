// The destination against a misbehaving source: corrupted pages are fetched again, a broken
// stream ends the run with a clear error and nothing wrong placed.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/fake_source.h"
#include "tests/testing/test_dest.h"
#include "transport/tcp_page_source.h"
#include "workload/pattern.h"
#include "workload/thread_guest.h"

namespace faultline {
namespace {

constexpr uint64_t kSize = 16u << 20;

EngineOptions NoReconnect() {
  EngineOptions eo;
  eo.reconnect_deadline = absl::ZeroDuration();
  return eo;
}

TcpSourceOptions FakeOptions(const FakeSource& fake) {
  TcpSourceOptions o;
  o.address = fake.address();
  o.token = fake.token();
  return o;
}

class FailureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mem_.resize(kSize);
    FillPattern(PatternSpec{}, mem_.data(), kSize);
  }
  // Runs a migration of an anonymous region against `fake`; returns Run()'s status.
  // Reconnection is off here: these sources misbehave on purpose every time.
  absl::Status Migrate(FakeSource& fake, bool with_guest, EngineOptions eo = NoReconnect()) {
    absl::StatusOr<Dest> d = MakeDest(RegionKind::kAnonymous, kSize, FakeOptions(fake), eo);
    if (!d.ok()) return d.status();
    dest_ = std::move(*d);
    std::unique_ptr<ThreadGuest> guest;
    if (with_guest) {
      GuestOptions go;
      go.touches_per_thread = 500;
      guest = std::make_unique<ThreadGuest>(dest_.region->base(), kSize, 4096, go);
    }
    absl::Status st = dest_.engine->Run(dest_.source.get());
    if (!st.ok() && guest) {
      // Faulted guest threads stay blocked (never SIGBUS) while the engine lives; check that,
      // then let them go by tearing the engine down.
      usleep(20000);
      guest->Stop();
      CheckNothingWrongPlaced();
      dest_.engine.reset();
    }
    return st;
  }
  // Every page the engine calls present holds the source's bytes; no page is left mid-placement.
  void CheckNothingWrongPlaced() {
    for (uint64_t p = 0; p < kSize / 4096; ++p) {
      PageState s = dest_.engine->StateOf(0, p);
      ASSERT_NE(s, PageState::kPlacing) << p;
      if (s == PageState::kPresent) {
        ASSERT_EQ(memcmp(dest_.region->base() + p * 4096, mem_.data() + p * 4096, 4096), 0) << p;
      }
    }
  }
  std::vector<uint8_t> mem_;
  Dest dest_;
};

TEST_F(FailureTest, CorruptedBulkPagesAreFetchedAgain) {
  FakeSource fake(mem_.data(), kSize, 4096, FakeSource::Mode::kCorruptFirstPages, 20);
  absl::Status s = Migrate(fake, /*with_guest=*/false);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(dest_.engine->counters().corrupt_pages.load(), 20u);
  EXPECT_EQ(memcmp(dest_.region->base(), mem_.data(), kSize), 0);
}

TEST_F(FailureTest, CorruptedUrgentPageIsRequestedAgainForTheWaitingFault) {
  FakeSource fake(mem_.data(), kSize, 4096, FakeSource::Mode::kCorruptFirstUrgentPages, 3);
  EngineOptions eo = NoReconnect();
  eo.background_pull = false;  // only faults fetch pages: every corrupt copy is a claimed one
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kAnonymous, kSize, FakeOptions(fake), eo);
  ASSERT_TRUE(d.ok()) << d.status();
  Engine* e = d->engine.get();
  Runner runner(e, d->source.get());
  const uint64_t page = FirstNonZeroPage(100);
  uint64_t want;
  memcpy(&want, mem_.data() + page * 4096 + 8, 8);
  // The first three copies sent fail their CRC; the fault waits through them.
  EXPECT_EQ(*reinterpret_cast<volatile uint64_t*>(d->region->page(page) + 8), want);
  EXPECT_EQ(e->counters().corrupt_pages.load(), 3u);
  EXPECT_EQ(e->counters().urgent_requests.load(), 4u);
  e->StartBackgroundPull();
  absl::Status run = runner.Join();
  ASSERT_TRUE(run.ok()) << run;
  EXPECT_EQ(memcmp(d->region->base(), mem_.data(), kSize), 0);
}

TEST_F(FailureTest, BulkAnswersOutOfOrderAreFine) {
  FakeSource fake(mem_.data(), kSize, 4096, FakeSource::Mode::kReorderBulk);
  absl::Status s = Migrate(fake, /*with_guest=*/true);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(memcmp(dest_.region->base(), mem_.data(), kSize), 0);
}

TEST_F(FailureTest, PeerClosingMidFrameEndsWithClearErrorAndNothingWrongPlaced) {
  FakeSource fake(mem_.data(), kSize, 4096, FakeSource::Mode::kCloseMidFrame, 3);
  absl::Status s = Migrate(fake, /*with_guest=*/true);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("peer closed the connection"), std::string::npos) << s;
}

TEST_F(FailureTest, GarbageFromSourceIsRejected) {
  FakeSource fake(mem_.data(), kSize, 4096, FakeSource::Mode::kGarbageAfterWelcome);
  absl::Status s = Migrate(fake, /*with_guest=*/false);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("bad frame magic"), std::string::npos) << s;
  CheckNothingWrongPlaced();
}

TEST_F(FailureTest, OutOfRangePagesFromSourceAreRejected) {
  FakeSource fake(mem_.data(), kSize, 4096, FakeSource::Mode::kOutOfRangePages);
  absl::Status s = Migrate(fake, /*with_guest=*/false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("out of range"), std::string::npos) << s;
  CheckNothingWrongPlaced();
}

TEST_F(FailureTest, RegionTableMismatchIsRefused) {
  FakeSource fake(mem_.data(), kSize, 4096, FakeSource::Mode::kWrongRegionTable);
  absl::Status s = Migrate(fake, /*with_guest=*/false);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

TEST_F(FailureTest, RejectedTokenFailsTheConnect) {
  FakeSource fake(mem_.data(), kSize, 4096, FakeSource::Mode::kRejectToken);
  absl::Status s = Migrate(fake, /*with_guest=*/false);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
}

TEST_F(FailureTest, VanishedSourceIsUnavailable) {
  TcpSourceOptions o;
  o.address = "127.0.0.1:1";  // nothing listens there
  o.token = RandomToken();
  o.connect_timeout = absl::Seconds(2);
  auto s = TcpPageSource::Connect(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
}

}  // namespace
}  // namespace faultline
