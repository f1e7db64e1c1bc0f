#include "engine/state_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

class StateFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = getenv("TEST_TMPDIR");
    path_ = absl::StrCat(tmp ? tmp : "/tmp", "/state-", getpid(), "-",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    unlink(path_.c_str());
  }
  void TearDown() override { unlink(path_.c_str()); }
  bool Exists() const {
    struct stat st;
    return stat(path_.c_str(), &st) == 0;
  }
  std::string path_;
};

TEST_F(StateFileTest, CreatedFreshThenAdoptedByTheNextEngine) {
  {
    auto f = StateFile::Open(path_, "vmm 1", {3, 5000});
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_FALSE((*f)->adopted());
    ASSERT_EQ((*f)->regions(), 2u);
    for (uint64_t p = 0; p < 5000; ++p) EXPECT_EQ((*f)->region_map(1)[p].load(), 0);
    (*f)->region_map(0)[2].store(5);
    (*f)->region_map(1)[4999].store(4);
  }  // the engine goes away (its lock with it); the file stays
  ASSERT_TRUE(Exists());
  auto g = StateFile::Open(path_, "vmm 1", {3, 5000}, StateFile::Mode::kAdoptOnly);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_TRUE((*g)->adopted());
  EXPECT_EQ((*g)->previous_pid(), getpid());
  EXPECT_EQ((*g)->region_map(0)[2].load(), 5);
  EXPECT_EQ((*g)->region_map(1)[4999].load(), 4);
  (*g)->Remove();
  EXPECT_FALSE(Exists());
}

TEST_F(StateFileTest, ALiveEngineKeepsItsStateToItself) {
  auto f = StateFile::Open(path_, "vmm 1", {16});
  ASSERT_TRUE(f.ok()) << f.status();
  // flock() is per open file: a second open, even in this process, must wait its turn.
  auto g = StateFile::Open(path_, "vmm 1", {16});
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(g.status().message(), absl::StrCat("pid ", getpid())))
      << g.status();
  f->reset();
  EXPECT_TRUE(StateFile::Open(path_, "vmm 1", {16}).ok());
}

TEST_F(StateFileTest, AnotherVmmsOrLayoutsStateIsRefused) {
  ASSERT_TRUE(StateFile::Open(path_, "vmm 1 region 0x7f00 4096", {16}).ok());
  auto other_vmm = StateFile::Open(path_, "vmm 2 region 0x7f00 4096", {16});
  EXPECT_EQ(other_vmm.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(other_vmm.status().message(), "another VMM")) << other_vmm.status();
  auto other_size = StateFile::Open(path_, "vmm 1 region 0x7f00 4096", {32});
  EXPECT_EQ(other_size.status().code(), absl::StatusCode::kFailedPrecondition);
  auto other_split = StateFile::Open(path_, "vmm 1 region 0x7f00 4096", {8, 8});
  EXPECT_EQ(other_split.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(StateFile::Open(path_, "vmm 1 region 0x7f00 4096", {16}).ok());
}

TEST_F(StateFileTest, ResumingWithoutAStateFileIsRefused) {
  auto f = StateFile::Open(path_, "vmm 1", {16}, StateFile::Mode::kAdoptOnly);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(f.status().message(), "refusing to resume")) << f.status();
  EXPECT_FALSE(Exists());
}

TEST_F(StateFileTest, ACorruptHeaderIsRefused) {
  ASSERT_TRUE(StateFile::Open(path_, "vmm 1", {16}).ok());
  {
    std::fstream f(path_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(44);  // inside the page table
    f.put('\x7f');
  }
  auto g = StateFile::Open(path_, "vmm 1", {16});
  EXPECT_EQ(g.status().code(), absl::StatusCode::kDataLoss) << g.status();
  {
    std::ofstream f(path_, std::ios::binary | std::ios::trunc);
    f << "not a state file";
  }
  EXPECT_FALSE(StateFile::Open(path_, "vmm 1", {16}).ok());
}

}  // namespace
}  // namespace faultline
