#include "base/memory_kind.h"

#include <string>

#include "gtest/gtest.h"

namespace faultline {
namespace {

TEST(MemoryKindTest, NamesRoundTrip) {
  for (MemoryKind k : kAllMemoryKinds) {
    EXPECT_EQ(MemoryKindFromName(MemoryKindName(k)), k) << MemoryKindName(k);
    absl::StatusOr<MemoryKind> p = ParseMemoryKind(MemoryKindName(k));
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(*p, k);
  }
}

TEST(MemoryKindTest, CanonicalNamesAreTheWireStrings) {
  // The hand-off's region table and every report use exactly these: they must not change.
  EXPECT_STREQ(MemoryKindName(MemoryKind::kAnonymous), "anon");
  EXPECT_STREQ(MemoryKindName(MemoryKind::kMemfd), "memfd");
  EXPECT_STREQ(MemoryKindName(MemoryKind::kHugetlb), "hugetlb");
  EXPECT_STREQ(MemoryKindName(MemoryKind::kGuestMemfd), "guest_memfd");
}

TEST(MemoryKindTest, AliasesParseButAreNotNames) {
  const std::pair<const char*, MemoryKind> aliases[] = {{"anonymous", MemoryKind::kAnonymous},
                                                        {"shmem", MemoryKind::kMemfd},
                                                        {"hugetlbfs", MemoryKind::kHugetlb},
                                                        {"gmem", MemoryKind::kGuestMemfd}};
  for (const auto& [alias, kind] : aliases) {
    absl::StatusOr<MemoryKind> p = ParseMemoryKind(alias);
    ASSERT_TRUE(p.ok()) << alias << ": " << p.status();
    EXPECT_EQ(*p, kind) << alias;
    EXPECT_FALSE(MemoryKindFromName(alias).has_value()) << alias;
  }
}

TEST(MemoryKindTest, UnknownIsRefusedNamingTheChoices) {
  for (const char* bad : {"", "pmem", "Memfd", "anon ", "hugetlb2m"}) {
    absl::StatusOr<MemoryKind> p = ParseMemoryKind(bad);
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(p.status().message().find("anon, memfd, hugetlb, guest_memfd"), std::string::npos)
        << p.status();
    EXPECT_FALSE(MemoryKindFromName(bad).has_value()) << bad;
  }
}

TEST(MemoryKindTest, PageSizesAndFds) {
  EXPECT_EQ(MemoryKindPageSize(MemoryKind::kHugetlb), 2u << 20);
  EXPECT_EQ(MemoryKindPageSize(MemoryKind::kAnonymous), 4096u);
  EXPECT_EQ(MemoryKindPageSize(MemoryKind::kMemfd), 4096u);
  EXPECT_EQ(MemoryKindPageSize(MemoryKind::kGuestMemfd), 4096u);
  EXPECT_FALSE(MemoryKindHasFd(MemoryKind::kAnonymous));
  EXPECT_TRUE(MemoryKindHasFd(MemoryKind::kMemfd));
  EXPECT_TRUE(MemoryKindHasFd(MemoryKind::kHugetlb));
  EXPECT_TRUE(MemoryKindHasFd(MemoryKind::kGuestMemfd));
}

}  // namespace
}  // namespace faultline
