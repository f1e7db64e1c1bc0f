#include "transport/dirty_rounds.h"

#include <vector>

#include "gtest/gtest.h"

namespace faultline {
namespace {

// A tracker that reports what the test queued.
class ScriptedTracker : public DirtyTracker {
 public:
  absl::Status Collect(bool final, std::vector<PageRange>* out) override {
    finals += final;
    out->insert(out->end(), next.begin(), next.end());
    next.clear();
    return status;
  }
  void Switched() override { ++switched; }
  absl::Status Throttle(uint32_t percent) override {
    throttles.push_back(percent);
    return throttle_status;
  }
  std::vector<PageRange> next;
  absl::Status status, throttle_status;
  int finals = 0, switched = 0;
  std::vector<uint32_t> throttles;  // every Throttle() call
};

std::vector<PageRange> Ranges(const std::vector<DirtyFrame>& frames) {
  std::vector<PageRange> out;
  for (const DirtyFrame& f : frames) out.insert(out.end(), f.ranges.begin(), f.ranges.end());
  return out;
}

bool Same(const std::vector<PageRange>& a, const std::vector<PageRange>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].region != b[i].region || a[i].first != b[i].first || a[i].count != b[i].count) {
      return false;
    }
  }
  return true;
}

const std::vector<RegionInfo> kRegions = {{"a", 100 * 4096, 4096}, {"b", 8 << 20, 2 << 20}};

TEST(DirtyRounds, MergesRunsAndNumbersRounds) {
  ScriptedTracker t;
  DirtyRounds rounds(&t, kRegions);
  t.next = {{0, 3, 10}, {0, 2, 13}, {0, 1, 63}, {0, 1, 64}, {1, 1, 3}};
  absl::StatusOr<std::vector<DirtyFrame>> f = rounds.Sync(false);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->size(), 1u);
  EXPECT_EQ((*f)[0].round, 1u);
  EXPECT_EQ((*f)[0].flags, 0u);
  EXPECT_TRUE(Same(Ranges(*f), {{0, 5, 10}, {0, 2, 63}, {1, 1, 3}}));
  EXPECT_EQ(rounds.unconfirmed_pages(), 8u);
}

TEST(DirtyRounds, AnUnconfirmedRoundIsSentAgain) {
  ScriptedTracker t;
  DirtyRounds rounds(&t, kRegions);
  t.next = {{0, 1, 5}};
  ASSERT_TRUE(rounds.Sync(false).ok());
  // The destination never confirmed round 1 (its engine died): round 2 carries both.
  t.next = {{0, 1, 7}};
  absl::StatusOr<std::vector<DirtyFrame>> f = rounds.Sync(false);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)[0].round, 2u);
  EXPECT_TRUE(Same(Ranges(*f), {{0, 1, 5}, {0, 1, 7}}));
  // A late confirmation of round 1 clears nothing: round 2 went out since.
  rounds.Applied(1);
  EXPECT_EQ(rounds.unconfirmed_pages(), 2u);
  rounds.Applied(2);
  EXPECT_EQ(rounds.unconfirmed_pages(), 0u);
  t.next = {{0, 1, 9}};
  f = rounds.Sync(false);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(Same(Ranges(*f), {{0, 1, 9}}));
}

TEST(DirtyRounds, SwitchedOnceAfterTheFinalRoundIsApplied) {
  ScriptedTracker t;
  DirtyRounds rounds(&t, kRegions);
  t.next = {{0, 4, 0}};
  ASSERT_TRUE(rounds.Sync(true).ok());
  EXPECT_EQ(t.finals, 1);
  EXPECT_EQ(t.switched, 0);
  // The engine died before applying it; its successor asks for the final set again.
  absl::StatusOr<std::vector<DirtyFrame>> f = rounds.Sync(true);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)[0].flags & kDirtyFinal, kDirtyFinal);
  EXPECT_TRUE(Same(Ranges(*f), {{0, 4, 0}}));
  rounds.Applied((*f)[0].round);
  EXPECT_EQ(t.switched, 1);
  EXPECT_TRUE(rounds.switched());
  // After the switch, any request is answered with an empty final round, without asking the
  // tracker: nothing may be dropped at the destination once the guest runs there.
  t.next = {{0, 1, 50}};
  f = rounds.Sync(false);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)[0].flags, kDirtyFinal);
  EXPECT_TRUE(Ranges(*f).empty());
  rounds.Applied(rounds.round());
  EXPECT_EQ(t.switched, 1);
}

TEST(DirtyRounds, LargeSetsSplitIntoFrames) {
  ScriptedTracker t;
  DirtyRounds rounds(&t, {{"a", 20000ull * 4096, 4096}});
  for (uint64_t p = 0; p < 20000; p += 2) t.next.push_back({0, 1, p});  // 10,000 runs
  absl::StatusOr<std::vector<DirtyFrame>> f = rounds.Sync(false);
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(f->size(), 3u);
  EXPECT_EQ((*f)[0].flags, kDirtyMore);
  EXPECT_EQ((*f)[1].flags, kDirtyMore);
  EXPECT_EQ((*f)[2].flags, 0u);
  EXPECT_EQ(Ranges(*f).size(), 10000u);
}

TEST(DirtyRounds, TrackerErrorsAndBadRangesAreReported) {
  ScriptedTracker t;
  DirtyRounds rounds(&t, kRegions);
  t.status = absl::UnavailableError("dirty log gone");
  absl::StatusOr<std::vector<DirtyFrame>> f = rounds.Sync(false);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(f.status().message().find("dirty log gone"), std::string::npos);
  t.status = absl::OkStatus();
  t.next = {{0, 5, 98}};
  EXPECT_EQ(rounds.Sync(false).status().code(), absl::StatusCode::kInternal);
}

TEST(DirtyRounds, ThrottleIsPassedOnWhenItChangesAndLiftedWhenTheDestinationLeaves) {
  ScriptedTracker t;
  DirtyRounds rounds(&t, kRegions);
  ASSERT_TRUE(rounds.Sync(false, 0).ok());
  ASSERT_TRUE(rounds.Sync(false, 20).ok());
  absl::StatusOr<std::vector<DirtyFrame>> f = rounds.Sync(false, 20);  // unchanged: not again
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)[0].flags & kDirtyNoThrottle, 0u);
  ASSERT_TRUE(rounds.Sync(false, 30).ok());
  EXPECT_EQ(t.throttles, (std::vector<uint32_t>{20, 30}));
  rounds.ReleaseThrottle();  // the destination's connection closed
  EXPECT_EQ(t.throttles, (std::vector<uint32_t>{20, 30, 0}));
  rounds.ReleaseThrottle();  // nothing in force: nothing to lift
  EXPECT_EQ(t.throttles.size(), 3u);
  // The final round stops the guest; it is never throttled for it.
  ASSERT_TRUE(rounds.Sync(true, 40).ok());
  EXPECT_EQ(t.throttles.size(), 3u);
}

TEST(DirtyRounds, ASourceThatCannotThrottleSaysSoInEveryAnswerThatAsks) {
  ScriptedTracker t;
  t.throttle_status = absl::UnimplementedError("no throttle here");
  DirtyRounds rounds(&t, kRegions);
  t.next = {{0, 1, 5}};
  absl::StatusOr<std::vector<DirtyFrame>> f = rounds.Sync(false, 20);
  ASSERT_TRUE(f.ok()) << f.status();  // warm-up goes on, unthrottled
  EXPECT_NE((*f)[0].flags & kDirtyNoThrottle, 0u);
  EXPECT_TRUE(Same(Ranges(*f), {{0, 1, 5}}));
  f = rounds.Sync(false, 30);  // asked once only
  ASSERT_TRUE(f.ok());
  EXPECT_NE((*f)[0].flags & kDirtyNoThrottle, 0u);
  EXPECT_EQ(t.throttles, (std::vector<uint32_t>{20}));
  f = rounds.Sync(false, 0);  // not asked: not flagged
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)[0].flags & kDirtyNoThrottle, 0u);
}

}  // namespace
}  // namespace faultline
