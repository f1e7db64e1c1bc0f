#include "qemu-integration/vmm/guest_ram.h"

#include "gtest/gtest.h"
#include "qemu-integration/vmm/kvm_vm.h"

namespace faultline {
namespace {

TEST(GuestRamTest, AnonymousIsZeroAndWritable) {
  absl::StatusOr<std::unique_ptr<GuestRam>> r = GuestRam::CreateAnonymous(1 << 20);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->kind(), RamBacking::kAnonymous);
  EXPECT_EQ((*r)->fd(), -1);
  EXPECT_EQ((*r)->host_base()[12345], 0);
  (*r)->host_base()[12345] = 7;
}

TEST(GuestRamTest, MemfdMappedTwiceSharesPages) {
  absl::StatusOr<std::unique_ptr<GuestRam>> a = GuestRam::CreateMemfd(1 << 20);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_GE((*a)->fd(), 0);
  absl::StatusOr<std::unique_ptr<GuestRam>> b = GuestRam::MapMemfd((*a)->fd(), 1 << 20);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE((*a)->host_base(), (*b)->host_base());
  (*a)->host_base()[4096 * 3 + 5] = 42;
  EXPECT_EQ((*b)->host_base()[4096 * 3 + 5], 42);
  EXPECT_FALSE(GuestRam::MapMemfd((*a)->fd(), 2 << 20).ok());  // larger than the memfd
}

TEST(GuestRamTest, BadSizesAndNames) {
  EXPECT_FALSE(GuestRam::CreateAnonymous(0).ok());
  EXPECT_FALSE(GuestRam::CreateMemfd(4097).ok());
  EXPECT_EQ(*ParseRamBacking("memfd"), RamBacking::kMemfd);
  EXPECT_EQ(*ParseRamBacking("guest_memfd"), RamBacking::kGuestMemfd);
  EXPECT_FALSE(ParseRamBacking("hugetlb").ok());
  EXPECT_FALSE(ParseRamBacking("pmem").ok());
  EXPECT_STREQ(RamBackingName(RamBacking::kAnonymous), "anon");
}

TEST(GuestRamTest, HugetlbIsRefusedSayingWhy) {
  // RamBacking is a MemoryKind: hugetlb is a value of it, which this VMM cannot back RAM with.
  for (const char* name : {"hugetlb", "hugetlbfs"}) {
    absl::StatusOr<RamBacking> b = ParseRamBacking(name);
    ASSERT_FALSE(b.ok()) << name;
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(b.status().message().find("cannot back guest RAM with hugetlb"), std::string::npos)
        << b.status();
  }
  EXPECT_FALSE(CheckRamBacking(RamBacking::kHugetlb).ok());
  for (RamBacking b : {RamBacking::kAnonymous, RamBacking::kMemfd, RamBacking::kGuestMemfd}) {
    EXPECT_TRUE(CheckRamBacking(b).ok()) << RamBackingName(b);
  }
}

TEST(GuestRamTest, GuestMemfdIsMappable) {
  std::string why;
  if (!KvmVm::Available(&why)) GTEST_SKIP() << "no KVM here: " << why;
  absl::StatusOr<std::unique_ptr<KvmVm>> vm = KvmVm::Create();
  ASSERT_TRUE(vm.ok()) << vm.status();
  absl::StatusOr<std::unique_ptr<GuestRam>> r = GuestRam::CreateGuestMemfd((*vm)->vm_fd(), 1 << 20);
  if (!r.ok()) GTEST_SKIP() << "guest_memfd unavailable: " << r.status();
  EXPECT_EQ((*r)->kind(), RamBacking::kGuestMemfd);
  (*r)->host_base()[100] = 9;
  EXPECT_EQ((*r)->host_base()[100], 9);
}

}  // namespace
}  // namespace faultline
