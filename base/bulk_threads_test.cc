#include "base/bulk_threads.h"

#include <thread>

#include "base/cpu_list.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

// Each case runs in a thread of its own: affinity and nice are per thread.
template <typename F>
void InThread(F f) {
  std::thread(f).join();
}

TEST(BulkThreadsTest, TheFaultPathNeverRanksBelowBulk) {
  EXPECT_EQ((BulkThreads{{}, -5}.fault_path_nice()), -5);
  EXPECT_EQ((BulkThreads{{}, 0}.fault_path_nice()), 0);
  EXPECT_EQ((BulkThreads{{}, 10}.fault_path_nice()), 0);
}

TEST(BulkThreadsTest, ABulkThreadTakesTheCpusAndTheNice) {
  const int cpu = AllowedCpus().back();
  InThread([cpu] {
    BulkThreads{{cpu}, 5}.ApplyToBulkThread();
    EXPECT_EQ(AllowedCpus(), std::vector<int>{cpu});
    EXPECT_EQ(*ThreadNice(), 5);
  });
}

// A fault-path thread runs anywhere, and a lowered stream does not lower it.
TEST(BulkThreadsTest, AFaultPathThreadKeepsItsCpusAndIsNeverLoweredWithTheStream) {
  const std::vector<int> all = AllowedCpus();
  const int cpu = all.back();
  InThread([&all, cpu] {
    const int before = *ThreadNice();
    BulkThreads{{cpu}, 5}.ApplyToFaultPathThread();
    EXPECT_EQ(AllowedCpus(), all);
    EXPECT_EQ(*ThreadNice(), before);
  });
}

TEST(BulkThreadsTest, AFaultPathThreadRisesWithARaisedStream) {
  if (!CheckNiceAllowed(-5).ok()) GTEST_SKIP() << "not privileged here: " << CheckNiceAllowed(-5);
  InThread([] {
    BulkThreads{{}, -5}.ApplyToFaultPathThread();
    EXPECT_EQ(*ThreadNice(), -5);
  });
}

// The default value leaves every thread as it is — here one a caller started at nice 10, which
// an unprivileged process could not give 0 back.
TEST(BulkThreadsTest, TheDefaultChangesNothing) {
  const std::vector<int> all = AllowedCpus();
  InThread([&all] {
    ASSERT_TRUE(SetThreadNice(10).ok());
    BulkThreads{}.ApplyToBulkThread();
    BulkThreads{}.ApplyToFaultPathThread();
    EXPECT_EQ(AllowedCpus(), all);
    EXPECT_EQ(*ThreadNice(), 10);
  });
}

}  // namespace
}  // namespace faultline
