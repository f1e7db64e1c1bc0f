#include "qemu-integration/vmm/elf_loader.h"

#include <elf.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "gtest/gtest.h"
#include "qemu-integration/guest/guest_abi.h"
#include "qemu-integration/vmm/guest_elf.h"

namespace faultline {
namespace {

std::string ReadGuest() {
  std::string path = FindGuestElf();
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(ElfLoaderTest, LoadsTheGuestAtOneMegabyteWithItsPvhEntry) {
  std::string elf = ReadGuest();
  ASSERT_FALSE(elf.empty()) << "guest ELF not found";
  std::vector<uint8_t> ram(4 << 20, 0xcc);
  absl::StatusOr<ElfImage> img = LoadElf(elf, ram.data(), ram.size());
  ASSERT_TRUE(img.ok()) << img.status();
  EXPECT_EQ(img->load_start, uint64_t{FLT_IMAGE_BASE});
  EXPECT_GT(img->load_end, img->load_start);
  EXPECT_NE(img->pvh_entry, 0u);
  EXPECT_EQ(img->pvh_entry, img->entry);
  // The PVH note is the first thing in the image; .bss (the end) is zeroed.
  EXPECT_EQ(ram[FLT_IMAGE_BASE - 1], 0xcc);
  EXPECT_EQ(ram[img->load_end - 1], 0);
  EXPECT_EQ(ram[img->load_end], 0xcc);
}

TEST(ElfLoaderTest, RejectsRamTooSmall) {
  std::string elf = ReadGuest();
  ASSERT_FALSE(elf.empty());
  std::vector<uint8_t> ram(1 << 20);
  absl::StatusOr<ElfImage> img = LoadElf(elf, ram.data(), ram.size());
  EXPECT_EQ(img.status().code(), absl::StatusCode::kOutOfRange) << img.status();
}

TEST(ElfLoaderTest, RejectsGarbageAndTruncation) {
  std::vector<uint8_t> ram(4 << 20);
  EXPECT_FALSE(LoadElf("", ram.data(), ram.size()).ok());
  EXPECT_FALSE(LoadElf(std::string(4096, 'x'), ram.data(), ram.size()).ok());
  std::string elf = ReadGuest();
  ASSERT_FALSE(elf.empty());
  for (size_t cut : {size_t{16}, sizeof(Elf64_Ehdr), sizeof(Elf64_Ehdr) + 60, size_t{4200}}) {
    absl::StatusOr<ElfImage> img = LoadElf(elf.substr(0, cut), ram.data(), ram.size());
    EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument) << cut;
  }
  std::string wrong = elf;
  wrong[EI_CLASS] = ELFCLASS32;
  EXPECT_FALSE(LoadElf(wrong, ram.data(), ram.size()).ok());
}

TEST(ElfLoaderTest, MissingFileIsNotFound) {
  std::vector<uint8_t> ram(4 << 20);
  EXPECT_EQ(LoadElfFile("/nonexistent/guest", ram.data(), ram.size()).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace faultline
