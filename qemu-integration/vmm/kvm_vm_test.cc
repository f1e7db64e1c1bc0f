// KvmVm / KvmVcpu on the real /dev/kvm with hand-assembled real-mode code.
#include "qemu-integration/vmm/kvm_vm.h"

#include <sys/mman.h>

#include <cstring>

#include "engine/region.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

constexpr uint64_t kRamSize = 0x10000;  // 64 KiB at guest-physical 0
constexpr uint64_t kCode = 0x1000;

class KvmVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!KvmVm::Available(&why)) GTEST_SKIP() << "no KVM here: " << why;
    absl::StatusOr<std::unique_ptr<KvmVm>> vm = KvmVm::Create();
    ASSERT_TRUE(vm.ok()) << vm.status();
    vm_ = std::move(*vm);
    void* p = mmap(nullptr, kRamSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    ram_ = static_cast<uint8_t*>(p);
  }
  void TearDown() override {
    if (ram_ != nullptr) munmap(ram_, kRamSize);
  }

  // A vCPU in real mode at 0:kCode running `code`.
  std::unique_ptr<KvmVcpu> RealModeVcpu(const std::vector<uint8_t>& code) {
    memcpy(ram_ + kCode, code.data(), code.size());
    EXPECT_TRUE(vm_->SetUserMemoryRegion(0, 0, kRamSize, ram_).ok());
    absl::StatusOr<std::unique_ptr<KvmVcpu>> v = vm_->CreateVcpu(0);
    EXPECT_TRUE(v.ok()) << v.status();
    if (!v.ok()) return nullptr;
    struct kvm_sregs s;
    EXPECT_TRUE((*v)->GetSregs(&s).ok());
    s.cs.base = 0;
    s.cs.selector = 0;
    s.ds.base = 0;
    s.ds.selector = 0;
    EXPECT_TRUE((*v)->SetSregs(s).ok());
    struct kvm_regs r = {};
    r.rip = kCode;
    r.rflags = 0x2;
    EXPECT_TRUE((*v)->SetRegs(r).ok());
    return std::move(*v);
  }

  std::unique_ptr<KvmVm> vm_;
  uint8_t* ram_ = nullptr;
};

TEST_F(KvmVmTest, PortOutThenHalt) {
  // mov al,'A'; mov dx,0x3f8; out dx,al; hlt
  auto v = RealModeVcpu({0xb0, 'A', 0xba, 0xf8, 0x03, 0xee, 0xf4});
  ASSERT_NE(v, nullptr);
  absl::StatusOr<VcpuExit> e = v->Run();
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->kind, VcpuExit::Kind::kIoOut);
  EXPECT_EQ(e->port, 0x3f8);
  EXPECT_EQ(e->size, 1);
  EXPECT_EQ(e->count, 1u);
  EXPECT_EQ(e->data[0], 'A');
  e = v->Run();
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->kind, VcpuExit::Kind::kHlt);
}

TEST_F(KvmVmTest, ImmediateExitReturnsInterrupted) {
  auto v = RealModeVcpu({0xeb, 0xfe});  // jmp $
  ASSERT_NE(v, nullptr);
  v->SetImmediateExit(true);
  absl::StatusOr<VcpuExit> e = v->Run();
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->kind, VcpuExit::Kind::kInterrupted);
}

TEST_F(KvmVmTest, MmioOutsideRamIsAnErrorWithRegisters) {
  // mov ax,0x2000; mov ds,ax; mov [0],al  -> write to guest-physical 0x20000 (no RAM there)
  auto v = RealModeVcpu({0xb8, 0x00, 0x20, 0x8e, 0xd8, 0xa2, 0x00, 0x00, 0xf4});
  ASSERT_NE(v, nullptr);
  absl::StatusOr<VcpuExit> e = v->Run();
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("KVM_EXIT_MMIO: write of 1 bytes at guest-physical 0x20000"),
            std::string::npos)
      << e.status();
  EXPECT_NE(e.status().message().find("rip="), std::string::npos) << e.status();
}

TEST_F(KvmVmTest, SomeMsrsRoundTrip) {
  ASSERT_TRUE(vm_->SetUserMemoryRegion(0, 0, kRamSize, ram_).ok());
  absl::StatusOr<std::unique_ptr<KvmVcpu>> v = vm_->CreateVcpu(0);
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_FALSE(vm_->migratable_msrs().empty());
  std::vector<struct kvm_msr_entry> msrs;
  ASSERT_TRUE((*v)->GetMsrs(vm_->migratable_msrs(), &msrs).ok());
  EXPECT_TRUE((*v)->SetMsrs(msrs).ok());
  // 0x10 is IA32_TSC: every x86 KVM offers it.
  bool has_tsc = false;
  for (uint32_t i : vm_->migratable_msrs()) has_tsc |= i == 0x10;
  EXPECT_TRUE(has_tsc);
}

TEST_F(KvmVmTest, GuestMemfdMemslot) {
  absl::StatusOr<UniqueFd> gmem = CreateGuestMemfd(vm_->vm_fd(), kRamSize);
  if (!gmem.ok()) GTEST_SKIP() << "guest_memfd unavailable: " << gmem.status();
  void* p = mmap(nullptr, kRamSize, PROT_READ | PROT_WRITE, MAP_SHARED, gmem->get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  absl::Status s = vm_->SetGuestMemfdRegion(0, 0, kRamSize, p, gmem->get(), 0);
  if (absl::IsUnimplemented(s)) GTEST_SKIP() << s;
  EXPECT_TRUE(s.ok()) << s;
  munmap(p, kRamSize);
}

}  // namespace
}  // namespace faultline
