#include "cli/common.h"

#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "base/cpu_list.h"
#include "base/thread_slice.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

class WarmUpFlags : public ::testing::Test {
  absl::FlagSaver saver_;  // every test starts from the defaults
};

TEST_F(WarmUpFlags, TheDefaultsAreTheEngineDefaults) {
  absl::StatusOr<EngineOptions> o = EngineOptionsFromFlags(BulkThreads{});
  ASSERT_TRUE(o.ok()) << o.status();
  const WarmUpOptions d;
  EXPECT_EQ(o->warmup.converge_pages, d.converge_pages);
  EXPECT_EQ(o->warmup.shrink, d.shrink);
  EXPECT_EQ(o->warmup.throttle_max, 0u);
  EXPECT_EQ(o->warmup.throttle_step, d.throttle_step);
}

TEST_F(WarmUpFlags, ConvergenceAndThrottleReachTheEngine) {
  absl::SetFlag(&FLAGS_warmup_converge_pages, 0);
  absl::SetFlag(&FLAGS_warmup_shrink, 0.0);
  absl::SetFlag(&FLAGS_warmup_throttle, 60);
  absl::SetFlag(&FLAGS_warmup_throttle_step, 5);
  absl::StatusOr<EngineOptions> o = EngineOptionsFromFlags(BulkThreads{});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->warmup.converge_pages, 0u);
  EXPECT_EQ(o->warmup.shrink, 0.0);
  EXPECT_EQ(o->warmup.throttle_max, 60u);
  EXPECT_EQ(o->warmup.throttle_step, 5u);
}

// Each bad value is refused naming its flag.
TEST_F(WarmUpFlags, OutOfRangeValuesAreRefusedNamingTheFlag) {
  struct Case {
    void (*set)();
    const char* flag;
  };
  const Case cases[] = {
      {[] { absl::SetFlag(&FLAGS_warmup_throttle, 100); }, "--warmup_throttle=100"},
      {[] { absl::SetFlag(&FLAGS_warmup_throttle, -1); }, "--warmup_throttle=-1"},
      {[] { absl::SetFlag(&FLAGS_warmup_throttle_step, 0); }, "--warmup_throttle_step=0"},
      {[] { absl::SetFlag(&FLAGS_warmup_converge_pages, -5); }, "--warmup_converge_pages=-5"},
      {[] { absl::SetFlag(&FLAGS_warmup_shrink, 1.5); }, "--warmup_shrink=1.5"},
      {[] { absl::SetFlag(&FLAGS_warmup_shrink, -0.1); }, "--warmup_shrink=-0.1"},
  };
  for (const Case& c : cases) {
    absl::FlagSaver saver;
    c.set();
    absl::StatusOr<EngineOptions> o = EngineOptionsFromFlags(BulkThreads{});
    ASSERT_FALSE(o.ok()) << c.flag;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(o.status().message().find(c.flag), std::string::npos) << o.status();
  }
}

class BulkThreadFlags : public ::testing::Test {
  absl::FlagSaver saver_;
};

TEST_F(BulkThreadFlags, TheDefaultsLeaveEveryThreadAsItIs) {
  absl::StatusOr<BulkThreads> b = BulkThreadsFromFlags();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->cpus.empty());
  EXPECT_EQ(b->nice, 0);
}

// One value, read once, reaches the transport's bulk threads and the engine's fault loop.
TEST_F(BulkThreadFlags, ValuesReachBothTheTransportAndTheFaultLoop) {
  const int cpu = AllowedCpus().front();
  absl::SetFlag(&FLAGS_bulk_cpus, std::to_string(cpu));
  absl::SetFlag(&FLAGS_bulk_nice, 5);  // a lower priority needs no privilege
  absl::SetFlag(&FLAGS_token, std::string(64, 'a'));
  absl::StatusOr<BulkThreads> b = BulkThreadsFromFlags();
  ASSERT_TRUE(b.ok()) << b.status();
  absl::StatusOr<TcpSourceOptions> o = SourceOptionsFromFlags(*b);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->bulk_threads.cpus, std::vector<int>{cpu});
  EXPECT_EQ(o->bulk_threads.nice, 5);
  absl::StatusOr<EngineOptions> e = EngineOptionsFromFlags(*b);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->fault_nice, 0);  // the fault path stays above a lowered stream
}

TEST_F(BulkThreadFlags, BadCpuListsAreRefusedNamingTheFlag) {
  for (const char* bad : {"x", "3-1", "1023", "0,,1"}) {
    absl::FlagSaver saver;
    absl::SetFlag(&FLAGS_bulk_cpus, bad);
    absl::StatusOr<BulkThreads> o = BulkThreadsFromFlags();
    ASSERT_FALSE(o.ok()) << bad;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(o.status().message().find(std::string("--bulk_cpus=") + bad), std::string::npos)
        << o.status();
  }
}

TEST_F(BulkThreadFlags, ARaisedPriorityIsSetOrRefusedNamingTheFlagAndTheRemedy) {
  absl::SetFlag(&FLAGS_bulk_nice, -5);
  absl::StatusOr<BulkThreads> b = BulkThreadsFromFlags();
  if (CheckNiceAllowed(-5).ok()) {  // privileged (outside Bazel's sandbox, as root)
    ASSERT_TRUE(b.ok()) << b.status();
    absl::StatusOr<EngineOptions> e = EngineOptionsFromFlags(*b);
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ(e->fault_nice, -5);  // the fault path never ranks below the stream
    return;
  }
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(b.status().message().find("--bulk_nice=-5"), std::string::npos) << b.status();
  EXPECT_NE(b.status().message().find("CAP_SYS_NICE"), std::string::npos) << b.status();
}

// 0 leaves every thread as it is, so it needs no check, even in a process run at a lower
// priority (`nice -n 10 faultline ...`), whose threads could not be given 0 back unprivileged.
TEST_F(BulkThreadFlags, NiceZeroIsAcceptedAtAnyNice) {
  std::thread([] {
    ASSERT_TRUE(SetThreadNice(10).ok());
    absl::StatusOr<BulkThreads> b = BulkThreadsFromFlags();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->nice, 0);
  }).join();
}

TEST_F(BulkThreadFlags, AnOutOfRangeNiceIsRefusedNamingTheFlag) {
  for (int bad : {-21, 20, 100}) {
    absl::FlagSaver saver;
    absl::SetFlag(&FLAGS_bulk_nice, bad);
    absl::StatusOr<BulkThreads> b = BulkThreadsFromFlags();
    ASSERT_FALSE(b.ok()) << bad;
    EXPECT_NE(b.status().message().find(absl::StrCat("--bulk_nice=", bad)), std::string::npos)
        << b.status();
  }
}

}  // namespace
}  // namespace faultline
