#include "base/writer_throttle.h"

#include <vector>

#include "gtest/gtest.h"

namespace faultline {
namespace {

// A fake clock: the thread "runs" by advancing it; sleeps are recorded (and pass time).
struct FakeTime {
  uint64_t now = 1'000;
  std::vector<uint64_t> sleeps;
  WriterThrottle Make() {
    return WriterThrottle(
        10'000, [this] { return now; },
        [this](uint64_t ns) {
          sleeps.push_back(ns);
          now += ns;
        });
  }
  // The thread runs `us` microseconds, pacing after each.
  void Run(WriterThrottle& w, int us) {
    for (int i = 0; i < us; ++i) {
      now += 1'000;
      w.Pace();
    }
  }
};

TEST(WriterThrottle, UnthrottledNeverSleeps) {
  FakeTime t;
  WriterThrottle w = t.Make();
  t.Run(w, 100);
  EXPECT_TRUE(t.sleeps.empty());
}

TEST(WriterThrottle, SleepsItsShareAfterEachSlice) {
  FakeTime t;
  WriterThrottle w = t.Make();
  w.Set(50);
  w.Pace();  // the first slice begins
  t.Run(w, 25);
  // 25 us of running in 10 us slices: two sleeps of one slice each (50 %).
  EXPECT_EQ(t.sleeps, (std::vector<uint64_t>{10'000, 10'000}));
  t.sleeps.clear();
  w.Set(75);
  t.Run(w, 10);
  EXPECT_EQ(t.sleeps, (std::vector<uint64_t>{30'000}));  // 3 slices asleep per slice run
  t.sleeps.clear();
  w.Set(0);
  t.Run(w, 30);
  EXPECT_TRUE(t.sleeps.empty());
}

TEST(WriterThrottle, MoreThan99IsTaken99) {
  WriterThrottle w;
  w.Set(250);
  EXPECT_EQ(w.percent(), 99u);
}

}  // namespace
}  // namespace faultline
