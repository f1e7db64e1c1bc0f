// The destination against a misbehaving source: corrupted pages are fetched again, a broken
// stream ends the run with a clear error and nothing wrong placed. The source is the real
// page server, made to misbehave in one precise way by a FaultInjector (transport/page_server.h).
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/hugepages.h"
#include "tests/testing/test_dest.h"
#include "tests/testing/test_source.h"
#include "transport/page_server.h"
#include "transport/tcp_page_source.h"
#include "workload/thread_guest.h"

namespace faultline {
namespace {

constexpr uint64_t kSize = 16u << 20;

using PagesAction = FaultInjector::PagesAction;

// ---- The ways a source misbehaves ----

// The first `n` data pages sent on `channel` carry a wrong CRC (their bytes are right).
class CorruptFirstPages : public FaultInjector {
 public:
  CorruptFirstPages(Channel channel, int n) : channel_(channel), n_(n) {}
  PagesAction OnPages(Channel ch, const PageRange& range, const RegionInfo& region,
                      std::vector<PageDesc>* descs, std::string* instead) override {
    if (ch != channel_) return PagesAction::kSend;
    for (PageDesc& d : *descs) {
      if (!(d.flags & kPageZero) && corrupted_.fetch_add(1) < n_) d.crc ^= 1;
    }
    return PagesAction::kSend;
  }

 private:
  const Channel channel_;
  const int n_;
  std::atomic<int> corrupted_{0};
};

// After `n` good PAGES frames (either channel), a bulk frame is cut in half and every
// connection closed: the source died mid-frame.
class CloseMidFrame : public FaultInjector {
 public:
  explicit CloseMidFrame(int n) : n_(n) {}
  PagesAction OnPages(Channel ch, const PageRange& range, const RegionInfo& region,
                      std::vector<PageDesc>* descs, std::string* instead) override {
    if (ch == Channel::kBulk && frames_.load() >= n_) return PagesAction::kTruncateAndCloseAll;
    frames_.fetch_add(1);
    return PagesAction::kSend;
  }

 private:
  const int n_;
  std::atomic<int> frames_{0};
};

// The bulk channel sends random bytes where its first PAGES frame should be.
class GarbageAfterWelcome : public FaultInjector {
 public:
  PagesAction OnPages(Channel ch, const PageRange& range, const RegionInfo& region,
                      std::vector<PageDesc>* descs, std::string* instead) override {
    if (ch != Channel::kBulk) return PagesAction::kSend;
    instead->assign(4096, '\x5a');
    return PagesAction::kSendInstead;
  }
};

// The bulk channel answers with a PAGES frame for a page past the region's end.
class OutOfRangePages : public FaultInjector {
 public:
  PagesAction OnPages(Channel ch, const PageRange& range, const RegionInfo& region,
                      std::vector<PageDesc>* descs, std::string* instead) override {
    if (ch != Channel::kBulk) return PagesAction::kSend;
    EncodePagesPrefix({range.region, 1, region.pages() + 5}, {PageDesc{0, kPageZero}},
                      region.page_size, instead);
    return PagesAction::kSendInstead;
  }
};

// WELCOME announces a region of twice the size the source serves.
class WrongRegionTable : public FaultInjector {
 public:
  void OnWelcome(Channel ch, std::vector<RegionInfo>* table) override {
    for (RegionInfo& r : *table) r.size *= 2;
  }
};

// Every HELLO is answered with ERROR(PERMISSION_DENIED).
class RejectToken : public FaultInjector {
 public:
  absl::Status OnHello(Channel ch) override {
    return absl::PermissionDeniedError("authentication failed: wrong migration token");
  }
};

// Bulk requests are answered in pairs, the second one first (a lone one once the line is quiet).
class ReorderBulk : public FaultInjector {
 public:
  PagesAction OnPages(Channel ch, const PageRange& range, const RegionInfo& region,
                      std::vector<PageDesc>* descs, std::string* instead) override {
    return ch == Channel::kBulk ? PagesAction::kSendLater : PagesAction::kSend;
  }
};

EngineOptions NoReconnect() {
  EngineOptions eo;
  eo.reconnect_deadline = absl::ZeroDuration();
  return eo;
}

class FailureTest : public ::testing::Test {
 protected:
  // The real page server over the test pattern, misbehaving as `faults` says.
  void Serve(std::unique_ptr<FaultInjector> faults) {
    faults_ = std::move(faults);
    absl::StatusOr<std::unique_ptr<TestSource>> s =
        TestSource::Start(kSize, 4096, PatternSpec{}, nullptr, faults_.get());
    ASSERT_TRUE(s.ok()) << s.status();
    src_ = std::move(*s);
  }
  // Runs a migration of an anonymous region against a source misbehaving as `faults` says;
  // returns Run()'s status. Reconnection is off here: these sources misbehave on purpose every
  // time.
  absl::Status Migrate(std::unique_ptr<FaultInjector> faults, bool with_guest,
                       EngineOptions eo = NoReconnect()) {
    Serve(std::move(faults));
    if (src_ == nullptr) return absl::InternalError("no source");
    absl::StatusOr<Dest> d = MakeDest(RegionKind::kAnonymous, *src_, eo);
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
        ASSERT_EQ(memcmp(dest_.region->base() + p * 4096, src_->base() + p * 4096, 4096), 0) << p;
      }
    }
  }
  std::unique_ptr<FaultInjector> faults_;  // outlives the page server that calls it
  std::unique_ptr<TestSource> src_;
  Dest dest_;  // destroyed before src_: the engine lets go of its connections first
};

TEST_F(FailureTest, CorruptedBulkPagesAreFetchedAgain) {
  absl::Status s =
      Migrate(std::make_unique<CorruptFirstPages>(Channel::kBulk, 20), /*with_guest=*/false);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(dest_.engine->counters().corrupt_pages.load(), 20u);
  EXPECT_EQ(memcmp(dest_.region->base(), src_->base(), kSize), 0);
}

TEST_F(FailureTest, CorruptedUrgentPageIsRequestedAgainForTheWaitingFault) {
  ASSERT_NO_FATAL_FAILURE(Serve(std::make_unique<CorruptFirstPages>(Channel::kUrgent, 3)));
  EngineOptions eo = NoReconnect();
  eo.background_pull = false;  // only faults fetch pages: every corrupt copy is a claimed one
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kAnonymous, *src_, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  Engine* e = d->engine.get();
  Runner runner(e, d->source.get());
  const uint64_t page = FirstNonZeroPage(100);
  uint64_t want;
  memcpy(&want, src_->base() + page * 4096 + 8, 8);
  // The first three copies sent fail their CRC; the fault waits through them.
  EXPECT_EQ(*reinterpret_cast<volatile uint64_t*>(d->region->page(page) + 8), want);
  EXPECT_EQ(e->counters().corrupt_pages.load(), 3u);
  EXPECT_EQ(e->counters().urgent_requests.load(), 4u);
  e->StartBackgroundPull();
  absl::Status run = runner.Join();
  ASSERT_TRUE(run.ok()) << run;
  EXPECT_EQ(memcmp(d->region->base(), src_->base(), kSize), 0);
}

// A 2 MiB page arrives in many receive slices, its CRC taken slice by slice as they come
// (TcpPageSource::ReceivePages): a copy that fails it is still caught, on either channel.
TEST(HugeFailure, CorruptedHugePagesAreFetchedAgain) {
  constexpr uint64_t kHuge = 2u << 20, kHugeSize = 16u << 20;
  ScopedHugePages huge(2 * kHugeSize / kHuge);
  if (!huge.ok()) GTEST_SKIP() << "hugetlb unavailable: " << huge.why_not();
  for (Channel ch : {Channel::kBulk, Channel::kUrgent}) {
    SCOPED_TRACE(ch == Channel::kBulk ? "bulk" : "urgent");
    CorruptFirstPages faults(ch, 2);
    absl::StatusOr<std::unique_ptr<TestSource>> src =
        TestSource::Start(kHugeSize, kHuge, PatternSpec{}, nullptr, &faults);
    ASSERT_TRUE(src.ok()) << src.status();
    EngineOptions eo = NoReconnect();
    eo.background_pull = ch == Channel::kBulk;
    absl::StatusOr<Dest> d = MakeDest(RegionKind::kHugetlb, **src, eo);
    ASSERT_TRUE(d.ok()) << d.status();
    Engine* e = d->engine.get();
    Runner runner(e, d->source.get());
    if (ch == Channel::kUrgent) {
      // The fault waits through both bad copies and gets the third.
      const uint64_t at = 3 * kHuge + 12345 * 8;
      uint64_t want;
      memcpy(&want, (*src)->base() + at, 8);
      EXPECT_EQ(*reinterpret_cast<volatile uint64_t*>(d->region->base() + at), want);
      EXPECT_EQ(e->counters().urgent_requests.load(), 3u);
      e->StartBackgroundPull();
    }
    absl::Status run = runner.Join();
    ASSERT_TRUE(run.ok()) << run;
    EXPECT_EQ(e->counters().corrupt_pages.load(), 2u);
    EXPECT_EQ((*src)->CountMismatches(d->region->base()), 0u);
  }
}

TEST_F(FailureTest, BulkAnswersOutOfOrderAreFine) {
  absl::Status s = Migrate(std::make_unique<ReorderBulk>(), /*with_guest=*/true);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(memcmp(dest_.region->base(), src_->base(), kSize), 0);
}

TEST_F(FailureTest, PeerClosingMidFrameEndsWithClearErrorAndNothingWrongPlaced) {
  absl::Status s = Migrate(std::make_unique<CloseMidFrame>(3), /*with_guest=*/true);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("peer closed the connection"), std::string::npos) << s;
}

TEST_F(FailureTest, GarbageFromSourceIsRejected) {
  absl::Status s = Migrate(std::make_unique<GarbageAfterWelcome>(), /*with_guest=*/false);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("bad frame magic"), std::string::npos) << s;
  CheckNothingWrongPlaced();
}

TEST_F(FailureTest, OutOfRangePagesFromSourceAreRejected) {
  absl::Status s = Migrate(std::make_unique<OutOfRangePages>(), /*with_guest=*/false);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("out of range"), std::string::npos) << s;
  CheckNothingWrongPlaced();
}

TEST_F(FailureTest, RegionTableMismatchIsRefused) {
  absl::Status s = Migrate(std::make_unique<WrongRegionTable>(), /*with_guest=*/false);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

TEST_F(FailureTest, RejectedTokenFailsTheConnect) {
  absl::Status s = Migrate(std::make_unique<RejectToken>(), /*with_guest=*/false);
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
