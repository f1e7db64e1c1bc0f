#include "engine/page_state.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace faultline {
namespace {

TEST(PageState, FaultThenArrivalThenDone) {
  PageStateMap m(4);
  EXPECT_EQ(m.remaining(), 4u);
  PageState seen;
  EXPECT_TRUE(m.MarkUrgent(1, &seen));
  EXPECT_EQ(seen, PageState::kAbsent);
  EXPECT_FALSE(m.MarkUrgent(1, &seen));  // duplicate fault: no second request
  EXPECT_EQ(seen, PageState::kUrgentRequested);
  PageState prev;
  ASSERT_TRUE(m.Claim(1, &prev));
  EXPECT_EQ(prev, PageState::kUrgentRequested);
  EXPECT_FALSE(m.Claim(1, &prev));  // the other channel's copy is dropped
  EXPECT_TRUE(m.Complete(1));
  EXPECT_EQ(m.Get(1), PageState::kPresent);
  EXPECT_EQ(m.remaining(), 3u);
  EXPECT_FALSE(m.Claim(1, &prev));
  EXPECT_FALSE(m.MarkUrgent(1, &seen));
  EXPECT_EQ(seen, PageState::kPresent);
}

TEST(PageState, FaultUpgradesBulkRequest) {
  PageStateMap m(8);
  uint64_t first;
  EXPECT_EQ(m.ClaimBulkRun(0, 4, &first), 4u);
  EXPECT_EQ(first, 0u);
  PageState seen;
  EXPECT_TRUE(m.MarkUrgent(2, &seen));  // don't wait behind the batch
  EXPECT_EQ(seen, PageState::kBulkRequested);
}

TEST(PageState, BulkRunsSkipNonAbsentPages) {
  PageStateMap m(10);
  PageState seen;
  m.MarkUrgent(3, &seen);
  uint64_t first;
  EXPECT_EQ(m.ClaimBulkRun(0, 100, &first), 3u);  // 0,1,2 then stops at 3
  EXPECT_EQ(first, 0u);
  EXPECT_EQ(m.ClaimBulkRun(3, 100, &first), 6u);  // 4..9
  EXPECT_EQ(first, 4u);
  EXPECT_EQ(m.ClaimBulkRun(0, 100, &first), 0u);
}

TEST(PageState, CorruptLandingGoesBackToAbsent) {
  PageStateMap m(2);
  PageState prev;
  ASSERT_TRUE(m.Claim(0, &prev));
  m.Release(0);
  EXPECT_EQ(m.Get(0), PageState::kAbsent);
  EXPECT_EQ(m.remaining(), 2u);
  uint64_t first;
  EXPECT_EQ(m.ClaimBulkRun(0, 1, &first), 1u);
}

TEST(PageState, WarmUpEvictsOnlyPresentPages) {
  PageStateMap m(4);
  PageState prev;
  ASSERT_TRUE(m.Claim(0, &prev));
  ASSERT_TRUE(m.Complete(0));
  EXPECT_EQ(m.remaining(), 3u);
  EXPECT_FALSE(m.Evict(1));  // absent: nothing to evict
  ASSERT_TRUE(m.Claim(2, &prev));
  EXPECT_FALSE(m.Evict(2));  // being placed: the caller waits for it
  ASSERT_TRUE(m.Evict(0));
  EXPECT_EQ(m.Get(0), PageState::kAbsent);
  EXPECT_EQ(m.remaining(), 4u);  // not done any more
  EXPECT_FALSE(m.Evict(0));
  uint64_t first;
  EXPECT_EQ(m.ClaimBulkRun(0, 1, &first), 1u);  // fetched again
  EXPECT_EQ(first, 0u);
}

TEST(PageState, DiscardCountsOnceAndZeroFillsLater) {
  PageStateMap m(3);
  PageState prev;
  ASSERT_TRUE(m.Claim(0, &prev));
  m.Discard(0);  // removed while being placed
  EXPECT_EQ(m.remaining(), 2u);
  EXPECT_FALSE(m.Complete(0));  // the placer learns it was discarded
  EXPECT_EQ(m.Get(0), PageState::kDiscarded);
  m.Discard(0);
  EXPECT_EQ(m.remaining(), 2u);
  EXPECT_FALSE(m.Claim(0, &prev));  // arrivals for a discarded page are dropped
  ASSERT_TRUE(m.Claim(0, &prev, /*discarded_too=*/true));  // a fault zero-fills it
  EXPECT_TRUE(m.Complete(0));
  EXPECT_EQ(m.Get(0), PageState::kPresent);
  EXPECT_EQ(m.remaining(), 2u);
  ASSERT_TRUE(m.Claim(1, &prev));
  EXPECT_TRUE(m.Complete(1));
  m.Discard(1);  // present then removed: no double count
  EXPECT_EQ(m.remaining(), 1u);
}

TEST(PageState, AliasPagesLandBeforeTheyArePlaced) {
  PageStateMap m(3);
  PageState prev;
  ASSERT_TRUE(m.Claim(0, &prev));
  EXPECT_TRUE(m.MarkLanded(0));
  EXPECT_EQ(m.Get(0), PageState::kLanded);
  EXPECT_FALSE(m.Claim(0, &prev));  // still owned by its placer
  EXPECT_FALSE(m.MarkUrgent(0, &prev));
  EXPECT_EQ(prev, PageState::kLanded);
  EXPECT_TRUE(m.Complete(0));
  EXPECT_EQ(m.Get(0), PageState::kPresent);
  EXPECT_EQ(m.remaining(), 2u);
  ASSERT_TRUE(m.Claim(1, &prev));
  ASSERT_TRUE(m.MarkLanded(1));
  m.Release(1);  // CONTINUE failed: absent again
  EXPECT_EQ(m.Get(1), PageState::kAbsent);
  ASSERT_TRUE(m.Claim(2, &prev));
  ASSERT_TRUE(m.MarkLanded(2));
  m.Discard(2);
  EXPECT_EQ(m.remaining(), 1u);
  EXPECT_FALSE(m.MarkLanded(2));
  EXPECT_FALSE(m.Complete(2));
}

TEST(PageState, AdoptingADeadEnginesMap) {
  // Storage as a state file holds it: one byte per page, whatever the dead engine left.
  const PageState left[] = {
      PageState::kAbsent,    PageState::kBulkRequested,    PageState::kUrgentRequested,
      PageState::kPlacing,   PageState::kLanded,           PageState::kPresent,
      PageState::kDiscarded, PageState::kPlacingDiscarded, PageState::kLanded,
  };
  constexpr uint64_t kPages = sizeof(left) / sizeof(left[0]);
  std::atomic<uint8_t> storage[kPages];
  for (uint64_t p = 0; p < kPages; ++p) storage[p].store(static_cast<uint8_t>(left[p]));
  PageStateMap m(kPages, storage);
  std::vector<uint64_t> landed;
  absl::StatusOr<AdoptedStates> a = m.AdoptAfterRestart(&landed);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->present, 1u);
  EXPECT_EQ(a->discarded, 2u);
  EXPECT_EQ(a->requeued, 2u);
  EXPECT_EQ(a->refetch, 1u);
  EXPECT_EQ(a->landed, 2u);
  EXPECT_EQ(landed, (std::vector<uint64_t>{4, 8}));
  const PageState want[] = {
      PageState::kAbsent,    PageState::kAbsent,    PageState::kAbsent,
      PageState::kAbsent,    PageState::kLanded,    PageState::kPresent,
      PageState::kDiscarded, PageState::kDiscarded, PageState::kLanded,
  };
  for (uint64_t p = 0; p < kPages; ++p) EXPECT_EQ(m.Get(p), want[p]) << "page " << p;
  EXPECT_EQ(m.remaining(), 6u);  // 4 absent + 2 landed
  // The storage is the map: what the adopter writes is what a third engine would find.
  EXPECT_EQ(storage[3].load(), static_cast<uint8_t>(PageState::kAbsent));
  EXPECT_TRUE(m.Complete(4));
  EXPECT_EQ(storage[4].load(), static_cast<uint8_t>(PageState::kPresent));
  EXPECT_EQ(m.remaining(), 5u);
  // A byte that is no state: a corrupt file is refused, not guessed at.
  storage[0].store(200);
  PageStateMap bad(kPages, storage);
  EXPECT_EQ(bad.AdoptAfterRestart(&landed).status().code(), absl::StatusCode::kDataLoss);
}

TEST(PageState, ExactlyOneClaimerWinsUnderContention) {
  constexpr uint64_t kPages = 20000;
  PageStateMap m(kPages);
  std::atomic<uint64_t> wins{0}, requests{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t p = 0; p < kPages; ++p) {
        PageState s;
        if (t % 2 == 0 && m.MarkUrgent(p, &s)) requests.fetch_add(1);
        if (m.Claim(p, &s)) {
          wins.fetch_add(1);
          m.Complete(p);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wins.load(), kPages);
  EXPECT_LE(requests.load(), kPages);
  EXPECT_EQ(m.remaining(), 0u);
}

}  // namespace
}  // namespace faultline
