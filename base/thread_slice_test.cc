#include "base/thread_slice.h"

#include <sched.h>

#include <thread>

#include "gtest/gtest.h"

namespace faultline {
namespace {

// Each case runs in a thread of its own: the slice is per thread, and the test runner's
// thread keeps the default.
template <typename F>
void InThread(F f) {
  std::thread t(f);
  t.join();
}

TEST(ThreadSliceTest, SetsTheCallingThreadsSliceOnly) {
  absl::StatusOr<absl::Duration> before = ThreadSlice();
  ASSERT_TRUE(before.ok()) << before.status();
  InThread([] {
    absl::Status s = SetThreadSlice(absl::Microseconds(200));
    if (absl::IsInvalidArgument(s)) GTEST_SKIP() << "kernel without custom slices (< 6.12): " << s;
    ASSERT_TRUE(s.ok()) << s;
    absl::StatusOr<absl::Duration> now = ThreadSlice();
    ASSERT_TRUE(now.ok()) << now.status();
    EXPECT_EQ(*now, absl::Microseconds(200));
  });
  absl::StatusOr<absl::Duration> after = ThreadSlice();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, *before);
}

TEST(ThreadSliceTest, TheKernelClampsToAtLeastOneTenthOfAMillisecond) {
  InThread([] {
    absl::Status s = SetThreadSlice(absl::Microseconds(1));
    if (absl::IsInvalidArgument(s)) GTEST_SKIP() << "kernel without custom slices (< 6.12): " << s;
    ASSERT_TRUE(s.ok()) << s;
    absl::StatusOr<absl::Duration> now = ThreadSlice();
    ASSERT_TRUE(now.ok());
    EXPECT_EQ(*now, absl::Microseconds(100));
  });
}

TEST(ThreadSliceTest, ClearGivesTheDefaultBack) {
  InThread([] {
    absl::StatusOr<absl::Duration> before = ThreadSlice();
    ASSERT_TRUE(before.ok());
    absl::Status s = SetThreadSlice(absl::Microseconds(200));
    if (absl::IsInvalidArgument(s)) GTEST_SKIP() << "kernel without custom slices (< 6.12): " << s;
    ASSERT_EQ(*ThreadSlice(), absl::Microseconds(200));
    ASSERT_TRUE(ClearThreadSlice().ok());
    EXPECT_EQ(*ThreadSlice(), *before);
  });
}

TEST(ThreadSliceTest, ZeroChangesNothing) {
  InThread([] {
    absl::StatusOr<absl::Duration> before = ThreadSlice();
    ASSERT_TRUE(before.ok());
    EXPECT_TRUE(SetThreadSlice(absl::ZeroDuration()).ok());
    EXPECT_EQ(*ThreadSlice(), *before);
  });
}

TEST(ThreadSliceTest, RefusesAnotherPolicy) {
  InThread([] {
    sched_param none = {};
    ASSERT_EQ(sched_setscheduler(0, SCHED_IDLE, &none), 0);
    absl::Status s = SetThreadSlice(absl::Microseconds(200));
    EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  });
}

}  // namespace
}  // namespace faultline
