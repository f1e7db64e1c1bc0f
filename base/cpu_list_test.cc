#include "base/cpu_list.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(CpuList, ParsesNumbersRangesAndLists) {
  EXPECT_THAT(*ParseCpuList("0"), ElementsAre(0));
  EXPECT_THAT(*ParseCpuList("0-3,6"), ElementsAre(0, 1, 2, 3, 6));
  EXPECT_THAT(*ParseCpuList("8-9,2,2,1"), ElementsAre(1, 2, 8, 9));  // sorted, once each
  EXPECT_TRUE(ParseCpuList("")->empty());
}

TEST(CpuList, NamesWhatIsWrong) {
  for (const char* bad : {"a", "1-", "-1", "0,,1", "3-1", "1-2-3", "99999", " 1"}) {
    absl::StatusOr<std::vector<int>> r = ParseCpuList(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(r.status().message(), HasSubstr(bad)) << bad;
  }
  EXPECT_THAT(ParseCpuList("3-1").status().message(), HasSubstr("backwards"));
}

TEST(CpuList, FormatsRuns) {
  EXPECT_EQ(FormatCpuList({0, 1, 2, 3, 6}), "0-3,6");
  EXPECT_EQ(FormatCpuList({5}), "5");
  EXPECT_EQ(FormatCpuList({}), "");
  EXPECT_EQ(FormatCpuList(*ParseCpuList("0-2,4-5,7")), "0-2,4-5,7");
}

TEST(CpuList, PinsTheCallingThreadOnly) {
  const std::vector<int> allowed = AllowedCpus();
  ASSERT_FALSE(allowed.empty());
  EXPECT_TRUE(CheckCpusAllowed(allowed).ok());
  std::vector<int> inside;
  std::thread t([&] {
    ASSERT_TRUE(PinCallingThread({allowed.back()}).ok());
    inside = AllowedCpus();
  });
  t.join();
  EXPECT_THAT(inside, ElementsAre(allowed.back()));
  EXPECT_EQ(AllowedCpus(), allowed);  // this thread is as it was
  EXPECT_TRUE(PinCallingThread({}).ok());
  EXPECT_EQ(AllowedCpus(), allowed);
}

TEST(CpuList, ACpuOutsideTheAllowedSetIsNamed) {
  const std::vector<int> allowed = AllowedCpus();
  int outside = 0;
  while (std::binary_search(allowed.begin(), allowed.end(), outside)) ++outside;
  absl::Status s = CheckCpusAllowed({allowed.front(), outside});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("CPU ", outside, " is not one")));
  EXPECT_THAT(s.message(), HasSubstr("allowed: " + FormatCpuList(allowed)));
}

}  // namespace
}  // namespace faultline
