#include "base/thread_slice.h"

#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

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

TEST(ThreadNiceTest, SetsTheCallingThreadsNiceOnlyAndKeepsItsSlice) {
  absl::StatusOr<int> before = ThreadNice();
  ASSERT_TRUE(before.ok()) << before.status();
  InThread([] {
    const bool sliced = SetThreadSlice(absl::Microseconds(200)).ok();
    ASSERT_TRUE(SetThreadNice(5).ok());  // a lower priority never needs a privilege
    EXPECT_EQ(*ThreadNice(), 5);
    if (sliced) EXPECT_EQ(*ThreadSlice(), absl::Microseconds(200));
  });
  EXPECT_EQ(*ThreadNice(), *before);
}

TEST(ThreadNiceTest, OutsideTheRangeIsRefused) {
  EXPECT_TRUE(absl::IsOutOfRange(CheckNiceAllowed(-21)));
  EXPECT_TRUE(absl::IsOutOfRange(CheckNiceAllowed(20)));
  EXPECT_TRUE(CheckNiceAllowed(19).ok());
}

TEST(ThreadNiceTest, AHigherPriorityWithThePrivilegeIsSet) {
  if (!CheckNiceAllowed(-5).ok()) GTEST_SKIP() << "not privileged here: " << CheckNiceAllowed(-5);
  InThread([] {
    ASSERT_TRUE(SetThreadNice(-5).ok());
    EXPECT_EQ(*ThreadNice(), -5);
  });
}

// Without CAP_SYS_NICE and with RLIMIT_NICE 0, a higher priority is refused with the reason, and
// the thread keeps its nice value. In a child process: dropping the privilege is for good.
TEST(ThreadNiceTest, AHigherPriorityWithoutThePrivilegeIsRefusedAndChangesNothing) {
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    rlimit none = {0, 0};
    if (setrlimit(RLIMIT_NICE, &none) != 0) _exit(10);
    if (geteuid() == 0 && setuid(65534) != 0) _exit(11);  // nobody: every capability gone
    absl::Status check = CheckNiceAllowed(-5);
    if (!absl::IsPermissionDenied(check)) _exit(12);
    if (check.message().find("CAP_SYS_NICE") == std::string::npos) _exit(13);
    const int before = *ThreadNice();
    if (!absl::IsPermissionDenied(SetThreadNice(before - 1))) _exit(14);
    if (*ThreadNice() != before) _exit(15);
    if (!CheckNiceAllowed(5).ok()) _exit(16);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see the _exit codes above";
}

}  // namespace
}  // namespace faultline
