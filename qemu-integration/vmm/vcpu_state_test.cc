#include "qemu-integration/vmm/vcpu_state.h"

#include <cstring>

#include "gtest/gtest.h"
#include "qemu-integration/vmm/kvm_vm.h"

namespace faultline {
namespace {

VcpuState Sample(bool with_lapic) {
  VcpuState s;
  s.regs.rip = 0x100020;
  s.regs.rax = 0x1122334455667788;
  s.regs.rflags = 0x202;
  s.sregs.cr0 = 0x80000011;
  s.sregs.efer = 0x500;
  s.sregs.cs.l = 1;
  s.fpu.fcw = 0x37f;
  s.fpu.mxcsr = 0x1f80;
  s.msrs = {{0x10, 0, 123456789}, {0xc0000080, 0, 0x500}};
  s.events.nmi.pending = 1;
  if (with_lapic) {
    s.lapic.emplace();
    memset(s.lapic->regs, 0xab, sizeof(s.lapic->regs));
  }
  return s;
}

void ExpectSame(const VcpuState& a, const VcpuState& b) {
  EXPECT_EQ(memcmp(&a.regs, &b.regs, sizeof(a.regs)), 0);
  EXPECT_EQ(memcmp(&a.sregs, &b.sregs, sizeof(a.sregs)), 0);
  EXPECT_EQ(memcmp(&a.fpu, &b.fpu, sizeof(a.fpu)), 0);
  EXPECT_EQ(memcmp(&a.events, &b.events, sizeof(a.events)), 0);
  ASSERT_EQ(a.msrs.size(), b.msrs.size());
  for (size_t i = 0; i < a.msrs.size(); i++) {
    EXPECT_EQ(a.msrs[i].index, b.msrs[i].index);
    EXPECT_EQ(a.msrs[i].data, b.msrs[i].data);
  }
  ASSERT_EQ(a.lapic.has_value(), b.lapic.has_value());
  if (a.lapic) {
    EXPECT_EQ(memcmp(&*a.lapic, &*b.lapic, sizeof(*a.lapic)), 0);
  }
}

TEST(VcpuStateTest, SerializeRoundTrip) {
  for (bool lapic : {false, true}) {
    VcpuState s = Sample(lapic);
    absl::StatusOr<VcpuState> back = VcpuState::Deserialize(s.Serialize());
    ASSERT_TRUE(back.ok()) << back.status();
    ExpectSame(s, *back);
    EXPECT_EQ(back->FindMsr(0x10)->data, 123456789u);
    EXPECT_EQ(back->FindMsr(0x11), nullptr);
  }
}

TEST(VcpuStateTest, SeveralVcpusRoundTrip) {
  std::vector<VcpuState> v = {Sample(false), Sample(true)};
  v[1].regs.rip = 0x200000;
  absl::StatusOr<std::vector<VcpuState>> back = DeserializeVcpuStates(SerializeVcpuStates(v));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 2u);
  ExpectSame(v[0], (*back)[0]);
  ExpectSame(v[1], (*back)[1]);
}

TEST(VcpuStateTest, RejectsEveryTruncation) {
  std::string bytes = Sample(true).Serialize();
  for (size_t n = 0; n < bytes.size(); n++) {
    absl::StatusOr<VcpuState> s = VcpuState::Deserialize(bytes.substr(0, n));
    ASSERT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << "length " << n;
  }
  std::string many = SerializeVcpuStates({Sample(false), Sample(false)});
  for (size_t n = 0; n < many.size(); n += 7) {
    EXPECT_FALSE(DeserializeVcpuStates(many.substr(0, n)).ok()) << n;
  }
  EXPECT_FALSE(DeserializeVcpuStates(many + "x").ok());
}

TEST(VcpuStateTest, RejectsGarbage) {
  std::string bytes = Sample(false).Serialize();
  EXPECT_FALSE(VcpuState::Deserialize(std::string(bytes.size(), '\0')).ok());
  EXPECT_FALSE(VcpuState::Deserialize(bytes + "trailing").ok());
  // Any flipped bit is caught (by the checksum at the latest).
  for (size_t i = 0; i < bytes.size(); i += 13) {
    std::string bad = bytes;
    bad[i] ^= 0x10;
    absl::StatusOr<VcpuState> s = VcpuState::Deserialize(bad);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << "byte " << i;
  }
  std::string v2 = bytes;
  v2[8] = 2;  // version
  absl::StatusOr<VcpuState> s = VcpuState::Deserialize(v2);
  EXPECT_NE(s.status().message().find("version 2"), std::string::npos) << s.status();
}

TEST(VcpuStateTest, SaveRestoreOnRealVcpus) {
  std::string why;
  if (!KvmVm::Available(&why)) GTEST_SKIP() << "no KVM here: " << why;
  absl::StatusOr<std::unique_ptr<KvmVm>> a = KvmVm::Create();
  absl::StatusOr<std::unique_ptr<KvmVm>> b = KvmVm::Create();
  ASSERT_TRUE(a.ok() && b.ok());
  absl::StatusOr<std::unique_ptr<KvmVcpu>> va = (*a)->CreateVcpu(0);
  absl::StatusOr<std::unique_ptr<KvmVcpu>> vb = (*b)->CreateVcpu(0);
  ASSERT_TRUE(va.ok() && vb.ok());
  struct kvm_regs r;
  ASSERT_TRUE((*va)->GetRegs(&r).ok());
  r.rip = 0x4242;
  r.rbx = 0xdeadbeef;
  ASSERT_TRUE((*va)->SetRegs(r).ok());

  absl::StatusOr<VcpuState> s = VcpuState::Save(**a, **va);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->msrs.empty());
  EXPECT_FALSE(s->lapic.has_value());  // no irqchip
  absl::StatusOr<VcpuState> wire = VcpuState::Deserialize(s->Serialize());
  ASSERT_TRUE(wire.ok()) << wire.status();
  ASSERT_TRUE(wire->Restore(**vb).ok());
  struct kvm_regs got;
  ASSERT_TRUE((*vb)->GetRegs(&got).ok());
  EXPECT_EQ(got.rip, 0x4242u);
  EXPECT_EQ(got.rbx, 0xdeadbeefu);
  absl::StatusOr<VcpuState> again = VcpuState::Save(**b, **vb);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(memcmp(&again->sregs, &s->sregs, sizeof(s->sregs)), 0);
}

}  // namespace
}  // namespace faultline
