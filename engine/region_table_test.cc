#include "engine/region_table.h"

#include "engine/testing/fake_uffd.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

TEST(RegionTable, LocatesAddressesAndKeysPages) {
  auto a = GuestRegion::Create("a", RegionKind::kAnonymous, 8 * 4096);
  auto b = GuestRegion::Create("b", RegionKind::kMemfd, 4 * 4096);
  ASSERT_TRUE(a.ok() && b.ok());
  FakeUffd u;
  PlacerCounters c;
  auto t = RegionTable::Create({a->get(), b->get()}, &u, &c);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->total_pages(), 12u);
  EXPECT_EQ((*t)->total_bytes(), 12u * 4096);
  EXPECT_EQ((*t)->remaining(), 12u);
  uint32_t region;
  uint64_t page;
  ASSERT_TRUE((*t)->Locate(reinterpret_cast<uint64_t>((*b)->page(3)) + 17, &region, &page));
  EXPECT_EQ(region, 1u);
  EXPECT_EQ(page, 3u);
  EXPECT_FALSE((*t)->Locate(0x1000, &region, &page));
  const uint64_t key = (*t)->Key(1, 3);
  EXPECT_EQ(RegionTable::RegionOfKey(key), 1u);
  EXPECT_EQ(RegionTable::PageOfKey(key), 3u);
  EXPECT_LT((*t)->Key(0, 7), (*t)->Key(1, 0));
  (**t)[1].state.Discard(0);
  EXPECT_EQ((*t)->remaining(), 11u);
}

TEST(RegionTable, ChecksTheSourceTable) {
  auto a = GuestRegion::Create("a", RegionKind::kAnonymous, 8 * 4096);
  ASSERT_TRUE(a.ok());
  FakeUffd u;
  PlacerCounters c;
  auto t = RegionTable::Create({a->get()}, &u, &c);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE((*t)->CheckSource({{"a", 8 * 4096, 4096}}).ok());
  absl::Status s = (*t)->CheckSource({{"a", 8 * 4096, 2u << 20}});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("region 0 differs"), absl::string_view::npos) << s;
  EXPECT_FALSE((*t)->CheckSource({}).ok());
}

TEST(RegionTable, RefusesNothingAndOverlaps) {
  FakeUffd u;
  PlacerCounters c;
  EXPECT_FALSE(RegionTable::Create({}, &u, &c).ok());
  auto a = GuestRegion::Create("a", RegionKind::kAnonymous, 8 * 4096);
  ASSERT_TRUE(a.ok());
  auto twice = RegionTable::Create({a->get(), a->get()}, &u, &c);
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace faultline
