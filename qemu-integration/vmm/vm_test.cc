// Boots faultline-guest on the real /dev/kvm (an emulating KVM here: a guest run takes
// seconds, so RAM and touch counts are small).
#include "qemu-integration/vmm/vm.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "qemu-integration/vmm/guest_check.h"
#include "qemu-integration/vmm/guest_elf.h"

namespace faultline {
namespace {

constexpr absl::Duration kTimeout = absl::Seconds(50);
constexpr uint64_t kRam = 32ull << 20;

class VmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!KvmVm::Available(&why)) GTEST_SKIP() << "no KVM here: " << why;
    guest_ = FindGuestElf();
    ASSERT_FALSE(guest_.empty()) << "guest ELF not found in runfiles";
  }

  // A VM with the guest loaded and the mailbox written (touches per phase kept small).
  std::unique_ptr<Vm> Boot(RamBacking backing, uint32_t vcpus, WorkloadConfig cfg,
                           uint64_t ram = kRam) {
    VmOptions o;
    o.ram_size = ram;
    o.backing = backing;
    o.vcpus = vcpus;
    absl::StatusOr<std::unique_ptr<Vm>> vm = Vm::Create(o);
    EXPECT_TRUE(vm.ok()) << vm.status();
    if (!vm.ok()) return nullptr;
    absl::StatusOr<ElfImage> img = (*vm)->LoadElf(guest_);
    EXPECT_TRUE(img.ok()) << img.status();
    EXPECT_TRUE((*vm)->WriteMailbox(cfg).ok());
    return std::move(*vm);
  }

  static WorkloadConfig Small(uint64_t seed = 7) {
    WorkloadConfig c;
    c.seed = seed;
    c.touches = 256;
    return c;
  }

  // Runs to the exit port and checks the report and the memory the guest dirtied.
  void RunToCompletion(Vm& vm, const WorkloadConfig& cfg) {
    absl::Time t0 = absl::Now();
    ASSERT_TRUE(vm.Start().ok());
    absl::StatusOr<VmExit> exit = vm.WaitForExit(kTimeout);
    ASSERT_TRUE(exit.ok()) << exit.status();
    printf("guest boot-to-done: %s (%u vCPU, %s)\n", absl::FormatDuration(absl::Now() - t0).c_str(),
           vm.vcpus(), RamBackingName(vm.ram().kind()));
    EXPECT_EQ(exit->reason, VmExit::Reason::kExitPort);
    EXPECT_EQ(exit->code, 0u);
    ExpectReport(vm.Lines(), vm.vcpus(), cfg.touches);
    ExpectDirtyPattern(vm, cfg.seed);
  }

  static void ExpectReport(const std::vector<ConsoleLine>& lines, uint32_t vcpus,
                           uint64_t touches) {
    std::string all;
    for (const ConsoleLine& l : lines) absl::StrAppend(&all, l.text, "\n");
    for (uint32_t c = 0; c < vcpus; c++) {
      std::string cpu = absl::StrCat("FLT cpu=", c, " ");
      for (const char* what : {"boot ram=", "phase=dirty pages=", "phase=seq round=0",
                               "phase=random round=0", "phase=hot round=0", "done bad=0"}) {
        EXPECT_TRUE(absl::StrContains(all, cpu + what)) << cpu << what << " missing in\n" << all;
      }
      EXPECT_TRUE(absl::StrContains(
          all, absl::StrCat(cpu, "phase=seq round=0 touches=", touches, " cycles_min=")))
          << all;
    }
    EXPECT_TRUE(absl::StrContains(all, absl::StrCat("FLT done cpus=", vcpus, " bad=0"))) << all;
    EXPECT_FALSE(absl::StrContains(all, "bad=1")) << all;
  }

  static void ExpectDirtyPattern(Vm& vm, uint64_t seed) {
    struct flt_mailbox m = vm.ReadMailbox();
    EXPECT_EQ(m.data_start % 4096, 0u);
    EXPECT_GT(m.data_start, uint64_t{FLT_IMAGE_BASE});
    EXPECT_EQ(m.data_end, vm.ram().size());
    absl::StatusOr<uint64_t> pages =
        VerifyDirtyPattern(vm.ram().host_base(), vm.ram().size(), seed, m.data_start, m.data_end);
    ASSERT_TRUE(pages.ok()) << pages.status();
    EXPECT_EQ(*pages, (m.data_end - m.data_start) / 4096);
    // Nothing beyond the pattern: the page below the range is the guest's own .bss.
  }

  std::string guest_;
};

TEST(VmCreateTest, RefusesRamReachingTheLocalApic) {
  VmOptions o;
  o.ram_size = 4096ull << 20;  // would map RAM over 0xfee00000
  absl::StatusOr<std::unique_ptr<Vm>> vm = Vm::Create(o);
  ASSERT_FALSE(vm.ok());
  EXPECT_EQ(vm.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(vm.status().message(), "local APIC (0xfee00000)")) << vm.status();
  EXPECT_TRUE(absl::StrContains(vm.status().message(), "at most 4076 MiB")) << vm.status();
}

TEST_F(VmTest, BootsOnAnonymousRam) {
  WorkloadConfig cfg = Small();
  std::unique_ptr<Vm> vm = Boot(RamBacking::kAnonymous, 1, cfg);
  ASSERT_NE(vm, nullptr);
  RunToCompletion(*vm, cfg);
}

TEST_F(VmTest, BootsOnMemfdRamAndASecondMappingSeesTheGuestsWrites) {
  WorkloadConfig cfg = Small(99);
  std::unique_ptr<Vm> vm = Boot(RamBacking::kMemfd, 1, cfg);
  ASSERT_NE(vm, nullptr);
  RunToCompletion(*vm, cfg);
  absl::StatusOr<std::unique_ptr<GuestRam>> alias = GuestRam::MapMemfd(vm->ram().fd(), kRam);
  ASSERT_TRUE(alias.ok()) << alias.status();
  struct flt_mailbox m = vm->ReadMailbox();
  absl::StatusOr<uint64_t> pages =
      VerifyDirtyPattern((*alias)->host_base(), kRam, 99, m.data_start, m.data_end);
  EXPECT_TRUE(pages.ok()) << pages.status();
}

// SMP: every vCPU starts at the PVH entry with its index in %edi; each dirties an interleaved
// share of the pages, waits for the others, then runs all touch phases on its own seed.
TEST_F(VmTest, BootsWithTwoVcpus) {
  WorkloadConfig cfg = Small(3);
  std::unique_ptr<Vm> vm = Boot(RamBacking::kMemfd, 2, cfg);
  ASSERT_NE(vm, nullptr);
  RunToCompletion(*vm, cfg);
  struct flt_mailbox m = vm->ReadMailbox();
  EXPECT_EQ(m.cpu[0].phase, uint32_t{FLT_PHASE_DONE});
  EXPECT_EQ(m.cpu[1].phase, uint32_t{FLT_PHASE_DONE});
  EXPECT_GT(m.cpu[1].heartbeat, 3 * cfg.touches);
}

TEST_F(VmTest, BootsOnGuestMemfdRam) {
  VmOptions o;
  o.ram_size = kRam;
  o.backing = RamBacking::kGuestMemfd;
  absl::StatusOr<std::unique_ptr<Vm>> vm = Vm::Create(o);
  if (!vm.ok()) GTEST_SKIP() << "guest_memfd VM unavailable on this kernel: " << vm.status();
  WorkloadConfig cfg = Small(5);
  ASSERT_TRUE((*vm)->LoadElf(guest_).ok());
  ASSERT_TRUE((*vm)->WriteMailbox(cfg).ok());
  RunToCompletion(**vm, cfg);
}

// What QEMU does: PVH start_info only, no mailbox. The guest then works from 16 MiB up to the
// end of the memmap's RAM with its defaults, as the only CPU.
TEST_F(VmTest, BootsFromPvhStartInfoWithoutMailbox) {
  VmOptions o;
  o.ram_size = kRam;
  absl::StatusOr<std::unique_ptr<Vm>> vm = Vm::Create(o);
  ASSERT_TRUE(vm.ok()) << vm.status();
  ASSERT_TRUE((*vm)->LoadElf(guest_).ok());
  ASSERT_TRUE((*vm)->Start().ok());
  absl::StatusOr<VmExit> exit = (*vm)->WaitForExit(kTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->code, 0u);
  absl::StatusOr<std::string> boot = (*vm)->WaitForLine("FLT cpu=0 boot", absl::Seconds(1));
  ASSERT_TRUE(boot.ok()) << boot.status();
  EXPECT_TRUE(absl::StrContains(*boot, "ram=33554432 data=0x1000000-0x2000000")) << *boot;
  EXPECT_TRUE(absl::StrContains(*boot, "abi=pvh")) << *boot;
  ExpectReport((*vm)->Lines(), 1, FLT_DEFAULT_TOUCHES);
  // The dirty pattern (seed 1) is in guest RAM though the mailbox is not.
  absl::StatusOr<uint64_t> pages =
      VerifyDirtyPattern((*vm)->ram().host_base(), kRam, 1, FLT_PVH_DATA_START, kRam);
  EXPECT_TRUE(pages.ok()) << pages.status();
}

TEST_F(VmTest, PauseStopsTheGuestAndResumeContinues) {
  WorkloadConfig cfg = Small();
  cfg.rounds = 4;
  std::unique_ptr<Vm> vm = Boot(RamBacking::kAnonymous, 2, cfg);
  ASSERT_NE(vm, nullptr);
  ASSERT_TRUE(vm->Start().ok());
  ASSERT_TRUE(vm->WaitForLine("FLT cpu=0 phase=seq", kTimeout).ok());
  EXPECT_EQ(vm->SaveState().status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(vm->Pause().ok());
  struct flt_mailbox before = vm->ReadMailbox();
  absl::SleepFor(absl::Milliseconds(300));
  struct flt_mailbox after = vm->ReadMailbox();
  for (int c = 0; c < 2; c++) EXPECT_EQ(before.cpu[c].heartbeat, after.cpu[c].heartbeat) << c;
  ASSERT_TRUE(vm->SaveState().ok());
  ASSERT_TRUE(vm->Resume().ok());
  absl::StatusOr<VmExit> exit = vm->WaitForExit(kTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->code, 0u);
  EXPECT_GT(vm->ReadMailbox().cpu[0].heartbeat, after.cpu[0].heartbeat);
  ExpectDirtyPattern(*vm, cfg.seed);
}

// Migration of vCPU state: pause the source mid-workload, save and serialise its vCPUs,
// restore them into a second VM over the same memfd (mapped again), run it there.
class MigrationTest : public VmTest, public ::testing::WithParamInterface<uint32_t> {};

TEST_P(MigrationTest, FinishesOnASecondVmSharingTheMemfd) {
  const uint32_t vcpus = GetParam();
  WorkloadConfig cfg = Small(11);
  cfg.rounds = 2;
  cfg.touches = 2048;  // vCPU 0 has 5 phases of these left when it prints its first
  std::unique_ptr<Vm> src = Boot(RamBacking::kMemfd, vcpus, cfg);
  ASSERT_NE(src, nullptr);
  ASSERT_TRUE(src->Start().ok());
  // Mid-workload: the dirty phase is done and touch phases (that verify it) are running.
  ASSERT_TRUE(src->WaitForLine("FLT cpu=0 phase=seq round=0", kTimeout).ok());
  ASSERT_TRUE(src->Pause().ok());
  absl::StatusOr<std::vector<VcpuState>> saved = src->SaveState();
  ASSERT_TRUE(saved.ok()) << saved.status();
  std::string wire = SerializeVcpuStates(*saved);
  struct flt_mailbox at_pause = src->ReadMailbox();
  for (const ConsoleLine& l : src->Lines()) {
    ASSERT_FALSE(absl::StartsWith(l.text, "FLT done")) << "source finished before the pause";
  }

  absl::StatusOr<std::unique_ptr<GuestRam>> ram = GuestRam::MapMemfd(src->ram().fd(), kRam);
  ASSERT_TRUE(ram.ok()) << ram.status();
  absl::StatusOr<std::unique_ptr<Vm>> dst = Vm::CreateWithRam(vcpus, std::move(*ram));
  ASSERT_TRUE(dst.ok()) << dst.status();
  absl::StatusOr<std::vector<VcpuState>> states = DeserializeVcpuStates(wire);
  ASSERT_TRUE(states.ok()) << states.status();
  ASSERT_TRUE((*dst)->RestoreState(*states).ok());
  ASSERT_TRUE((*dst)->Start().ok());
  absl::StatusOr<VmExit> exit = (*dst)->WaitForExit(kTimeout);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_EQ(exit->code, 0u);

  std::string all;
  for (const ConsoleLine& l : (*dst)->Lines()) absl::StrAppend(&all, l.text, "\n");
  EXPECT_TRUE(absl::StrContains(all, absl::StrCat("FLT done cpus=", vcpus, " bad=0"))) << all;
  EXPECT_TRUE(absl::StrContains(all, "phase=hot round=1")) << all;
  EXPECT_FALSE(absl::StrContains(all, "boot ram=")) << "the destination rebooted:\n" << all;
  // Each vCPU did all its work exactly once across the two VMs: its heartbeat (+1 per page
  // dirtied, +1 per touch) ends at its dirty share plus every touch phase's touches. Which
  // vCPU still had work at the pause is up to the host's scheduling (under a single-threaded
  // TCG host the second vCPU may have finished while the first printed its seq line), so the
  // count, not "it moved", is what shows that each restored vCPU went on where it stopped.
  struct flt_mailbox m = (*dst)->ReadMailbox();
  const uint64_t npages = (m.data_end - m.data_start) >> 12;
  uint64_t left_at_pause = 0;
  for (uint32_t c = 0; c < vcpus; c++) {
    const uint64_t total = (npages - c + vcpus - 1) / vcpus + 3 * cfg.rounds * cfg.touches;
    EXPECT_EQ(m.cpu[c].heartbeat, total) << "vCPU " << c;
    EXPECT_LE(at_pause.cpu[c].heartbeat, total) << "vCPU " << c;
    left_at_pause += total - std::min(total, at_pause.cpu[c].heartbeat);
    EXPECT_EQ(m.cpu[c].bad, 0u) << c;
  }
  EXPECT_GT(left_at_pause, 0u) << "every touch was done before the pause";
  printf("%u vCPU(s): %llu touches left for the second VM\n", vcpus,
         static_cast<unsigned long long>(left_at_pause));
  ExpectDirtyPattern(**dst, cfg.seed);
  // The source, still paused, never ran again.
  EXPECT_EQ(src->ReadMailbox().cpu[0].phase, uint32_t{FLT_PHASE_DONE});  // shared RAM
  for (const ConsoleLine& l : src->Lines()) EXPECT_FALSE(absl::StartsWith(l.text, "FLT done"));
}

INSTANTIATE_TEST_SUITE_P(Vcpus, MigrationTest, ::testing::Values(1u, 2u));

TEST_F(VmTest, UnknownPortFailsTheVmWithRegistersAndCode) {
  std::unique_ptr<Vm> vm = Boot(RamBacking::kAnonymous, 1, Small());
  ASSERT_NE(vm, nullptr);
  absl::StatusOr<ElfImage> img = vm->LoadElf(guest_);
  ASSERT_TRUE(img.ok());
  const uint8_t out_0x80[] = {0xe6, 0x80, 0xf4};  // out 0x80, al; hlt
  memcpy(vm->ram().host_base() + img->pvh_entry, out_0x80, sizeof(out_0x80));
  ASSERT_TRUE(vm->Start().ok());
  absl::StatusOr<VmExit> exit = vm->WaitForExit(kTimeout);
  ASSERT_FALSE(exit.ok());
  EXPECT_TRUE(absl::IsUnimplemented(exit.status())) << exit.status();
  EXPECT_TRUE(absl::StrContains(exit.status().message(), "port 0x80")) << exit.status();
  EXPECT_TRUE(absl::StrContains(exit.status().message(), "rip=")) << exit.status();
  EXPECT_TRUE(absl::StrContains(exit.status().message(), "code at rip")) << exit.status();
}

TEST_F(VmTest, RestoreRejectsWrongVcpuCount) {
  std::unique_ptr<Vm> vm = Boot(RamBacking::kAnonymous, 2, Small());
  ASSERT_NE(vm, nullptr);
  absl::StatusOr<std::vector<VcpuState>> s = vm->SaveState();  // before Start: allowed
  ASSERT_TRUE(s.ok()) << s.status();
  s->pop_back();
  EXPECT_EQ(vm->RestoreState(*s).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(VmTest, CreateWithGuestMemfdRamIsRefused) {
  absl::StatusOr<std::unique_ptr<GuestRam>> ram = GuestRam::CreateAnonymous(kRam);
  ASSERT_TRUE(ram.ok());
  std::unique_ptr<GuestRam> fake =
      GuestRam::Adopt(RamBacking::kGuestMemfd, (*ram)->host_base(), kRam, UniqueFd());
  EXPECT_EQ(Vm::CreateWithRam(1, std::move(fake)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace faultline
