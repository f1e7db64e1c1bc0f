// faultline-vmm: boots faultline-guest on the reference VMM and reports how it went.
//
//   bazel run //qemu-integration/vmm:faultline-vmm -- --ram=64M --backing=memfd --vcpus=2
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "qemu-integration/vmm/guest_check.h"
#include "qemu-integration/vmm/guest_elf.h"
#include "qemu-integration/vmm/vm.h"

ABSL_FLAG(std::string, ram, "64M", "guest RAM size (K/M/G suffix), at most 4G");
ABSL_FLAG(std::string, backing, "anon", "guest RAM backing: anon, memfd, guest_memfd");
ABSL_FLAG(int, vcpus, 1, "vCPUs (each runs the workload on its own seed)");
ABSL_FLAG(std::string, mode, "all", "phases: comma list of dirty,seq,random,hot, or all");
ABSL_FLAG(uint64_t, touches, 0, "touches per phase and vCPU (0: guest default 4096)");
ABSL_FLAG(uint32_t, rounds, 0, "loops over the touch phases (0: guest default 1)");
ABSL_FLAG(uint64_t, seed, 1, "workload seed");
ABSL_FLAG(uint64_t, slow_cycles, 0, "a touch slower than this is 'slow' (0: guest default)");
ABSL_FLAG(std::string, guest, "", "guest ELF (default: the one built by Bazel)");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(120), "give up after this long");
ABSL_FLAG(bool, verify, true, "check the dirty pattern host-side after the guest is done");

namespace faultline {
namespace {

bool ParseSize(const std::string& s, uint64_t* out) {
  if (s.empty()) return false;
  uint64_t mult = 1;
  std::string digits = s;
  switch (s.back()) {
    case 'k':
    case 'K': mult = 1ull << 10; break;
    case 'm':
    case 'M': mult = 1ull << 20; break;
    case 'g':
    case 'G': mult = 1ull << 30; break;
    default: break;
  }
  if (mult != 1) digits.pop_back();
  uint64_t v;
  if (!absl::SimpleAtoi(digits, &v)) return false;
  *out = v * mult;
  return true;
}

bool ParseMode(const std::string& s, uint32_t* out) {
  *out = 0;
  for (absl::string_view part : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    if (part == "all")
      *out |= FLT_MODE_DEFAULT;
    else if (part == "dirty")
      *out |= FLT_MODE_DIRTY;
    else if (part == "seq")
      *out |= FLT_MODE_SEQ;
    else if (part == "random")
      *out |= FLT_MODE_RANDOM;
    else if (part == "hot")
      *out |= FLT_MODE_HOT;
    else
      return false;
  }
  return *out != 0;
}

int Main() {
  VmOptions opt;
  if (!ParseSize(absl::GetFlag(FLAGS_ram), &opt.ram_size)) {
    fprintf(stderr, "bad --ram=%s\n", absl::GetFlag(FLAGS_ram).c_str());
    return 2;
  }
  absl::StatusOr<RamBacking> backing = ParseRamBacking(absl::GetFlag(FLAGS_backing));
  if (!backing.ok()) {
    fprintf(stderr, "%s\n", backing.status().ToString().c_str());
    return 2;
  }
  opt.backing = *backing;
  opt.vcpus = static_cast<uint32_t>(absl::GetFlag(FLAGS_vcpus));
  WorkloadConfig cfg;
  if (!ParseMode(absl::GetFlag(FLAGS_mode), &cfg.mode)) {
    fprintf(stderr, "bad --mode=%s (dirty,seq,random,hot or all)\n",
            absl::GetFlag(FLAGS_mode).c_str());
    return 2;
  }
  cfg.seed = absl::GetFlag(FLAGS_seed);
  cfg.touches = absl::GetFlag(FLAGS_touches);
  cfg.rounds = absl::GetFlag(FLAGS_rounds);
  cfg.slow_cycles = absl::GetFlag(FLAGS_slow_cycles);
  std::string guest = absl::GetFlag(FLAGS_guest);
  if (guest.empty()) guest = FindGuestElf();
  if (guest.empty()) {
    fprintf(stderr,
            "guest ELF not found: pass --guest or build "
            "//qemu-integration/guest:faultline-guest\n");
    return 2;
  }

  absl::StatusOr<std::unique_ptr<Vm>> vm = Vm::Create(opt);
  if (!vm.ok()) {
    fprintf(stderr, "creating the VM: %s\n", vm.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<ElfImage> img = (*vm)->LoadElf(guest);
  absl::Status s = img.ok() ? (*vm)->WriteMailbox(cfg) : img.status();
  if (!s.ok()) {
    fprintf(stderr, "loading the guest: %s\n", s.ToString().c_str());
    return 1;
  }
  (*vm)->SetLineCallback([](const ConsoleLine& l) {
    printf("%s\n", l.text.c_str());
    fflush(stdout);
  });
  fprintf(stderr, "faultline-vmm: %s, %llu MiB %s RAM, %u vCPU(s), entry 0x%llx\n", guest.c_str(),
          static_cast<unsigned long long>(opt.ram_size >> 20), RamBackingName(opt.backing),
          opt.vcpus, static_cast<unsigned long long>(img->pvh_entry ? img->pvh_entry : img->entry));
  absl::Time t0 = absl::Now();
  s = (*vm)->Start();
  absl::StatusOr<VmExit> exit =
      s.ok() ? (*vm)->WaitForExit(absl::GetFlag(FLAGS_timeout)) : absl::StatusOr<VmExit>(s);
  absl::Duration took = absl::Now() - t0;
  (*vm)->Stop();
  if (!exit.ok()) {
    fprintf(stderr, "faultline-vmm: guest failed after %s: %s\n",
            absl::FormatDuration(took).c_str(), exit.status().ToString().c_str());
    return 1;
  }
  fprintf(stderr, "faultline-vmm: guest %s (code %u) after %s\n",
          exit->reason == VmExit::Reason::kExitPort ? "exited" : "halted", exit->code,
          absl::FormatDuration(took).c_str());
  int rc = exit->code == 0 ? 0 : 1;
  if (absl::GetFlag(FLAGS_verify) && (cfg.mode & FLT_MODE_DIRTY)) {
    struct flt_mailbox m = (*vm)->ReadMailbox();
    absl::StatusOr<uint64_t> pages = VerifyDirtyPattern(
        (*vm)->ram().host_base(), (*vm)->ram().size(), cfg.seed, m.data_start, m.data_end);
    if (pages.ok()) {
      fprintf(stderr, "faultline-vmm: dirty pattern ok in %llu pages\n",
              static_cast<unsigned long long>(*pages));
    } else {
      fprintf(stderr, "faultline-vmm: %s\n", pages.status().ToString().c_str());
      rc = 1;
    }
  }
  return rc;
}

}  // namespace
}  // namespace faultline

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return faultline::Main();
}
