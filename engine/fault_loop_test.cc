// FaultLoop on a scripted userfaultfd: one decision per fault, and the races postcopy meets —
// a fault on a page already present, a second fault on the same page, a fault during REMOVE
// (EAGAIN), a discarded page faulted again as MISSING or MINOR.
#include "engine/fault_loop.h"

#include <thread>
#include <vector>

#include "engine/testing/fake_uffd.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

struct Requests : UrgentRequester {
  void RequestUrgent(uint32_t region, uint64_t page) override { pages.push_back(page); }
  std::vector<uint64_t> pages;
};

class FaultLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = GuestRegion::Create("ram", RegionKind::kAnonymous, 16 * 4096);
    ASSERT_TRUE(r.ok());
    region_ = std::move(*r);
    auto t = RegionTable::Create({region_.get()}, &uffd_, &placer_counters_);
    ASSERT_TRUE(t.ok());
    table_ = std::move(*t);
    loop_ = std::make_unique<FaultLoop>(&uffd_, table_.get(), &stats_, &counters_, &requests_,
                                        FaultLoop::Options{});
  }
  PageStateMap& state() { return (*table_)[0].state; }
  uint8_t* page(uint64_t p) { return region_->page(p); }

  std::unique_ptr<GuestRegion> region_;
  FakeUffd uffd_;
  PlacerCounters placer_counters_;
  EngineCounters counters_;
  FaultStats stats_;
  std::unique_ptr<RegionTable> table_;
  Requests requests_;
  std::unique_ptr<FaultLoop> loop_;
};

TEST_F(FaultLoopTest, AbsentPageIsRequestedUrgentlyOnce) {
  uffd_.QueueFault(page(3));
  uffd_.QueueFault(page(3), false, 2);  // a second vCPU on the same page
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_EQ(requests_.pages, std::vector<uint64_t>{3});
  EXPECT_EQ(state().Get(3), PageState::kUrgentRequested);
  EXPECT_EQ(counters_.faults.load(), 2u);
  EXPECT_EQ(counters_.duplicate_faults.load(), 1u);
  EXPECT_TRUE(stats_.IsPending(table_->Key(0, 3)));
}

// A page in a bulk batch: the fault does not wait behind the batch.
TEST_F(FaultLoopTest, BulkRequestedPageIsUpgraded) {
  uint64_t first;
  ASSERT_EQ(state().ClaimBulkRun(0, 8, &first), 8u);
  uffd_.QueueFault(page(5));
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_EQ(requests_.pages, std::vector<uint64_t>{5});
  EXPECT_EQ(state().Get(5), PageState::kUrgentRequested);
}

// Being placed by a receive thread: its placement (or run wake) wakes this thread; no request.
TEST_F(FaultLoopTest, PageBeingPlacedIsLeftToItsPlacer) {
  PageState prev;
  ASSERT_TRUE(state().Claim(6, &prev));
  struct uffd_msg m = {};
  m.event = UFFD_EVENT_PAGEFAULT;
  m.arg.pagefault.address = reinterpret_cast<uint64_t>(page(6));
  EXPECT_EQ(loop_->OnFault(m, 1), FaultLoop::Decision::kBeingPlaced);
  EXPECT_TRUE(requests_.pages.empty());
  EXPECT_FALSE(uffd_.WokenAt(page(6)));
}

// Each fault's latency is also kept under how it was served (stats JSON: fault_latency_by_kind).
TEST_F(FaultLoopTest, FaultsAreClassifiedByHowTheyAreServed) {
  uint64_t first;
  ASSERT_EQ(state().ClaimBulkRun(8, 2, &first), 2u);  // pages 8, 9 in a bulk batch
  PageState prev;
  ASSERT_TRUE(state().Claim(10, &prev));  // page 10 being placed
  uffd_.QueueFault(page(3));
  uffd_.QueueFault(page(3), false, 2);  // joins the first fault's request
  uffd_.QueueFault(page(8));
  uffd_.QueueFault(page(10));
  ASSERT_TRUE(loop_->Poll().ok());
  for (uint64_t p : {3, 8, 10}) stats_.Resolved(table_->Key(0, p));
  const auto kinds = stats_.ByKind();
  EXPECT_EQ(kinds[static_cast<int>(FaultKind::kFetched)].count(), 1u);
  EXPECT_EQ(kinds[static_cast<int>(FaultKind::kJoinedUrgent)].count(), 1u);
  EXPECT_EQ(kinds[static_cast<int>(FaultKind::kFetchedOverBulk)].count(), 1u);
  EXPECT_EQ(kinds[static_cast<int>(FaultKind::kJoinedPlacing)].count(), 1u);
  EXPECT_EQ(kinds[static_cast<int>(FaultKind::kRaced)].count(), 0u);
  EXPECT_EQ(stats_.Overall().count(), 4u);
}

// Placed between the fault and the read (a DONTWAKE placement not woken yet): woken now.
TEST_F(FaultLoopTest, PresentPageIsWoken) {
  PageState prev;
  ASSERT_TRUE(state().Claim(2, &prev));
  ASSERT_TRUE(state().Complete(2));
  uffd_.QueueFault(page(2));
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_TRUE(requests_.pages.empty());
  EXPECT_TRUE(uffd_.WokenAt(page(2)));
  EXPECT_EQ(counters_.stale_faults.load(), 1u);
  EXPECT_FALSE(stats_.IsPending(table_->Key(0, 2)));
}

// REMOVE (balloon, MADV_DONTNEED): the pages are discarded. A later MISSING fault gets zeros,
// a MINOR one the page cache as it is — never a fetch from the source.
TEST_F(FaultLoopTest, DiscardedPagesAreFilledNotFetched) {
  uffd_.QueueRemove(page(8), 2 * 4096);
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_EQ(state().Get(8), PageState::kDiscarded);
  EXPECT_EQ(state().Get(9), PageState::kDiscarded);
  EXPECT_EQ(counters_.remove_events.load(), 1u);
  EXPECT_EQ(table_->remaining(), 14u);
  page(8)[0] = 5;
  uffd_.QueueFault(page(8));
  uffd_.QueueFault(page(9), /*minor=*/true);
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_TRUE(requests_.pages.empty());
  EXPECT_EQ(page(8)[0], 0);
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kZeroPage), 1);
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kContinue), 1);
  EXPECT_EQ(state().Get(8), PageState::kPresent);
  EXPECT_EQ(state().Get(9), PageState::kPresent);
  EXPECT_EQ(table_->remaining(), 14u);  // discarded pages were already done
}

// EAGAIN while filling a discarded page: another REMOVE is queued and not yet read. The fault
// is retried after each batch of events (the one that clears it may be in the same batch),
// and never spun on in between.
TEST_F(FaultLoopTest, FaultMeetingEagainIsRetriedAfterTheEvents) {
  uffd_.QueueRemove(page(1), 4096);
  ASSERT_TRUE(loop_->Poll().ok());
  // The first attempt and the retry after its own batch both meet the unread REMOVE.
  uffd_.FailNext(FakeUffd::Op::kZeroPage, absl::UnavailableError("EAGAIN"), 2);
  uffd_.QueueFault(page(1));
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_FALSE(uffd_.mapped(page(1)));
  EXPECT_EQ(state().Get(1), PageState::kDiscarded);  // handed back, not lost
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kZeroPage), 2);
  ASSERT_TRUE(loop_->Poll().ok());  // no new event: no retry
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kZeroPage), 2);
  uffd_.QueueRemove(page(12), 4096);  // the event behind the EAGAIN
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_TRUE(uffd_.mapped(page(1)));
  EXPECT_EQ(state().Get(1), PageState::kPresent);
}

// UNMAP: pages gone for good count as done; a placement there later says ENOENT.
TEST_F(FaultLoopTest, UnmapDiscards) {
  uffd_.QueueUnmap(page(0), 16 * 4096);
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_EQ(table_->remaining(), 0u);
  EXPECT_EQ(counters_.unmap_events.load(), 1u);
}

// After an engine restart: a fault on a page the map calls present may be a page whose REMOVE
// died with the old engine — fill it; a mapped page says EEXIST and is only woken.
TEST_F(FaultLoopTest, AdoptedEngineFillsHolesUnderPresentPages) {
  loop_ = std::make_unique<FaultLoop>(&uffd_, table_.get(), &stats_, &counters_, &requests_,
                                      FaultLoop::Options{absl::Milliseconds(20), false, true});
  PageState prev;
  for (uint64_t p : {4, 5}) {
    ASSERT_TRUE(state().Claim(p, &prev));
    ASSERT_TRUE(state().Complete(p));
  }
  uffd_.MarkMapped(page(5), 4096);
  page(5)[0] = 0x55;
  page(4)[0] = 0x44;  // not mapped: a hole
  uffd_.QueueFault(page(4));
  uffd_.QueueFault(page(5));
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_EQ(page(4)[0], 0);     // zero-filled
  EXPECT_EQ(page(5)[0], 0x55);  // left as it is
  EXPECT_TRUE(uffd_.WokenAt(page(5)));
}

// Pages a dead engine left landed are mapped first, without a fetch.
TEST_F(FaultLoopTest, LandedPagesAreMappedWithoutAFetch) {
  PageState prev;
  ASSERT_TRUE(state().Claim(7, &prev));
  ASSERT_TRUE(state().MarkLanded(7));
  loop_->AddLanded(0, 7);
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kContinue), 1);
  EXPECT_EQ(state().Get(7), PageState::kPresent);
  EXPECT_TRUE(requests_.pages.empty());
}

// A landed page whose COPY the dead engine never ran: CONTINUE finds a hole (-EFAULT), so the
// page is absent again (fetched) and counted once, as fetched again, not as landed.
TEST_F(FaultLoopTest, LandedPageThatIsAHoleIsFetchedAgainAndCountedOnce) {
  PageState prev;
  ASSERT_TRUE(state().Claim(8, &prev));
  ASSERT_TRUE(state().MarkLanded(8));
  loop_->AddLanded(0, 8);
  uffd_.FailNext(FakeUffd::Op::kContinue, absl::InternalError("UFFDIO_CONTINUE: Bad address"));
  ASSERT_TRUE(loop_->Poll().ok());
  EXPECT_EQ(state().Get(8), PageState::kAbsent);
  EXPECT_EQ(counters_.landed_refetched.load(), 1u);
}

TEST_F(FaultLoopTest, RunEndsWithTheStopReason) {
  StopSignal stop;
  int ticks = 0;
  std::thread t([&] {
    absl::SleepFor(absl::Milliseconds(60));
    stop.Stop(absl::AbortedError("enough"));
  });
  absl::Status s = loop_->Run(&stop, [&] { ++ticks; });
  t.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_GE(ticks, 1);
}

}  // namespace
}  // namespace faultline
