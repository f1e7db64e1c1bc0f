#include "cli/setup.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

TEST(SetupTest, ParseSize) {
  EXPECT_EQ(*ParseSize("4096"), 4096u);
  EXPECT_EQ(*ParseSize("512M"), 512ull << 20);
  EXPECT_EQ(*ParseSize("1g"), 1ull << 30);
  EXPECT_EQ(*ParseSize("8K"), 8192u);
  for (const char* bad : {"", "0", "G", "12X", "-1M"}) EXPECT_FALSE(ParseSize(bad).ok()) << bad;
}

TEST(SetupTest, DestinationMatchesTheTable) {
  const std::vector<RegionInfo> table = {{"low", 1u << 20, 4096}, {"high", 2u << 20, 4096}};
  absl::StatusOr<Destination> d = CreateDestination(table, MemoryKind::kMemfd);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->regions.size(), 2u);
  EXPECT_EQ(d->region(0)->name(), "low");
  EXPECT_EQ(d->region(1)->size(), 2u << 20);
  EXPECT_EQ(d->region(1)->kind(), MemoryKind::kMemfd);
  EXPECT_EQ(d->bytes(), 3u << 20);
  EXPECT_EQ(d->region_ptrs().size(), 2u);
  ASSERT_NE(d->engine, nullptr);
  EXPECT_EQ(d->engine->total_pages(), 768u);
}

TEST(SetupTest, OneRegionOfAKind) {
  absl::StatusOr<Destination> d = CreateDestination(MemoryKind::kAnonymous, 1u << 20);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->regions.size(), 1u);
  EXPECT_EQ(d->region()->name(), "ram");
  EXPECT_EQ(d->region()->kind(), MemoryKind::kAnonymous);
  EXPECT_EQ(d->region()->page_size(), 4096u);
  EXPECT_FALSE(CreateDestination(MemoryKind::kAnonymous, 4097).ok());
}

TEST(SetupTest, PatternMemoryHoldsThePattern) {
  absl::StatusOr<std::unique_ptr<PatternMemory>> m = PatternMemory::Create(1u << 20, 4096);
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<uint8_t> want(1u << 20);
  FillPattern(PatternSpec{}, want.data(), want.size());
  EXPECT_EQ((*m)->CountMismatches(want.data()), 0u);
  want[5 * 4096 + 1] ^= 1;
  EXPECT_EQ((*m)->CountMismatches(want.data()), 1u);
  absl::StatusOr<std::vector<SourceRegion>> r = (*m)->Regions("pc.ram");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].info().name, "pc.ram");
  EXPECT_EQ((*r)[0].info().size, 1u << 20);
  EXPECT_EQ(memcmp((*r)[0].base(), (*m)->base(), 1u << 20), 0);
  EXPECT_FALSE(PatternMemory::Create(4097, 4096).ok());
}

TEST(SetupTest, SourceRegionsFromSpecs) {
  const std::string path = absl::StrCat(testing::TempDir(), "/setup-test-ram");
  {
    std::FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::string bytes(64 * 4096, 'x');
    ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
    std::fclose(f);
  }
  absl::StatusOr<std::vector<SourceRegion>> r = SourceRegionsFromSpecs(
      {absl::StrCat("ram=", path), absl::StrCat("part=", path, ":64K:4096:8192")});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].info().name, "ram");
  EXPECT_EQ((*r)[0].info().size, 64u * 4096);  // the whole file
  EXPECT_EQ((*r)[1].info().size, 64u << 10);
  EXPECT_EQ((*r)[1].base()[0], 'x');
  EXPECT_FALSE(SourceRegionFromSpec("no-equals-sign").ok());
  EXPECT_EQ(SourceRegionFromSpec("r=/no/such/file").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(SourceRegionFromSpec(absl::StrCat("r=", path, ":4K:4096:bad")).ok());
  unlink(path.c_str());
}

}  // namespace
}  // namespace faultline
