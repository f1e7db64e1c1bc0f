#include "qemu-integration/vmm/kvm_vm.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/errno_status.h"
#include "base/kvm_device.h"

// Debian 12's linux/kvm.h is 6.1-era; the guest_memfd memslot UAPI came in 6.8 (Region2 below).
#ifndef KVM_MEM_GUEST_MEMFD
#define KVM_MEM_GUEST_MEMFD (1u << 2)
#endif
#ifndef KVM_CAP_USER_MEMORY2
#define KVM_CAP_USER_MEMORY2 231
#endif
#ifndef KVM_CAP_GUEST_MEMFD
#define KVM_CAP_GUEST_MEMFD 234
#endif
#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39
#endif
// KVM Userfault (James Houghton's posted uAPI, implemented by the series in kernel/patches;
// not in a released kernel). KVM_CAP_USERFAULT is 245 only on the kernel/ series and
// Firecracker's 6.18 kernels; mainline 6.19+ uses 245 for KVM_CAP_ARM_SEA_TO_USER (arm64), so
// the flag itself is what counts: KVM_SET_USER_MEMORY_REGION2 refuses it without support.
#define FLT_KVM_MEM_USERFAULT (1u << 3)
#define FLT_KVM_MEMORY_EXIT_FLAG_USERFAULT (1ULL << 4)
#define FLT_KVM_CAP_USERFAULT 245

namespace faultline {
namespace {

// Debian 12's UAPI spells the variable-length tails of kvm_cpuid2, kvm_msrs and kvm_msr_list
// with __DECLARE_FLEX_ARRAY, which in C++ adds a 1-byte empty struct: the C++ structs are
// larger than the kernel's, the entries sit at the wrong offset and the ioctl numbers (which
// encode sizeof) are wrong. These headers have the C layout.
struct CpuidHeader {  // kvm_cpuid2
  uint32_t nent;
  uint32_t padding;
};
struct MsrsHeader {  // kvm_msrs
  uint32_t nmsrs;
  uint32_t pad;
};
struct MsrListHeader {  // kvm_msr_list
  uint32_t nmsrs;
};
constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);
constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
constexpr unsigned long kGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);

// kvm_userspace_memory_region2 with KVM Userfault's userfault_bitmap (the first pad2 word).
// Our own type: a system header's struct, old or new, has no such field.
struct Region2 {
  uint32_t slot;
  uint32_t flags;
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t guest_memfd_offset;
  uint32_t guest_memfd;
  uint32_t pad1;
  uint64_t userfault_bitmap;
  uint64_t pad2[13];
};
static_assert(sizeof(Region2) == 160, "kvm_userspace_memory_region2 is 160 bytes");
constexpr unsigned long kSetUserMemoryRegion2 = _IOW(KVMIO, 0x49, Region2);

constexpr int kMaxCpuidEntries = 256;
constexpr int kMaxMsrs = 4096;

// A kvm_msrs header followed by n entries.
std::vector<uint8_t> MsrBuffer(size_t n) {
  return std::vector<uint8_t>(sizeof(MsrsHeader) + n * sizeof(struct kvm_msr_entry), 0);
}
struct kvm_msr_entry* MsrEntries(std::vector<uint8_t>& buf) {
  return reinterpret_cast<struct kvm_msr_entry*>(buf.data() + sizeof(MsrsHeader));
}

std::string Segment(const char* name, const struct kvm_segment& s) {
  return absl::StrFormat(
      "%-3s sel=%04x base=%016x limit=%08x type=%x s=%d dpl=%d p=%d db=%d l=%d g=%d%s\n", name,
      s.selector, s.base, s.limit, s.type, s.s, s.dpl, s.present, s.db, s.l, s.g,
      s.unusable ? " unusable" : "");
}

}  // namespace

// ---- KvmVcpu ----

KvmVcpu::~KvmVcpu() {
  if (run_ != nullptr) munmap(run_, run_size_);
}

void KvmVcpu::SetImmediateExit(bool on) {
  // The kernel reads this once when KVM_RUN starts.
  reinterpret_cast<volatile uint8_t*>(&run_->immediate_exit)[0] = on ? 1 : 0;
}

absl::StatusOr<VcpuExit> KvmVcpu::Run() {
  VcpuExit e;
  if (ioctl(fd_.get(), KVM_RUN, 0) < 0) {
    if (errno == EINTR || errno == EAGAIN) return e;  // kicked (signal or immediate_exit)
    const int err = errno;
    if (err == EFAULT && run_->exit_reason == KVM_EXIT_MEMORY_FAULT) {
      // kvm_run.memory_fault {flags, gpa, size} opens the exit union; Debian 12's header
      // predates it.
      const auto* mf = reinterpret_cast<const uint64_t*>(&run_->mmio);
      if (mf[0] & FLT_KVM_MEMORY_EXIT_FLAG_USERFAULT) {
        e.kind = VcpuExit::Kind::kMemoryMissing;
        e.gpa = mf[1];
        e.length = mf[2];
        return e;
      }
      return ExitError(absl::StrFormat("KVM_EXIT_MEMORY_FAULT flags=0x%x gpa=0x%x size=0x%x", mf[0],
                                       mf[1], mf[2]));
    }
    return ErrnoStatus(absl::StrCat("KVM_RUN (vCPU ", id_, ")"), err);
  }
  switch (run_->exit_reason) {
    case KVM_EXIT_INTR: return e;
    case KVM_EXIT_HLT: e.kind = VcpuExit::Kind::kHlt; return e;
    case KVM_EXIT_IO:
      e.kind =
          run_->io.direction == KVM_EXIT_IO_OUT ? VcpuExit::Kind::kIoOut : VcpuExit::Kind::kIoIn;
      e.port = run_->io.port;
      e.size = run_->io.size;
      e.count = run_->io.count;
      e.data = reinterpret_cast<uint8_t*>(run_) + run_->io.data_offset;
      if (run_->io.data_offset + uint64_t{e.size} * e.count > run_size_) {
        return ExitError("KVM_EXIT_IO with data outside kvm_run");
      }
      return e;
    case KVM_EXIT_MMIO:
      return ExitError(absl::StrFormat(
          "KVM_EXIT_MMIO: %s of %u bytes at guest-physical 0x%x "
          "(no device there; outside RAM?)",
          run_->mmio.is_write ? "write" : "read", run_->mmio.len, run_->mmio.phys_addr));
    case KVM_EXIT_SHUTDOWN:
      return ExitError("KVM_EXIT_SHUTDOWN (triple fault: an exception with no usable IDT)");
    case KVM_EXIT_FAIL_ENTRY:
      return ExitError(absl::StrFormat(
          "KVM_EXIT_FAIL_ENTRY: hardware_entry_failure_reason=0x%x cpu=%u (invalid guest "
          "state)",
          run_->fail_entry.hardware_entry_failure_reason, run_->fail_entry.cpu));
    case KVM_EXIT_INTERNAL_ERROR: {
      std::string data;
      for (uint32_t i = 0; i < run_->internal.ndata && i < 16; i++) {
        absl::StrAppendFormat(&data, " %x", run_->internal.data[i]);
      }
      const char* sub = run_->internal.suberror == KVM_INTERNAL_ERROR_EMULATION
                            ? " (emulation failure: an instruction KVM cannot emulate)"
                            : "";
      return ExitError(absl::StrFormat("KVM_EXIT_INTERNAL_ERROR suberror=%u%s data=[%s ]",
                                       run_->internal.suberror, sub, data));
    }
    case KVM_EXIT_SYSTEM_EVENT:
      return ExitError(absl::StrFormat("KVM_EXIT_SYSTEM_EVENT type=%u", run_->system_event.type));
    case KVM_EXIT_UNKNOWN:
      return ExitError(absl::StrFormat("KVM_EXIT_UNKNOWN hardware_exit_reason=0x%x",
                                       run_->hw.hardware_exit_reason));
    default: return ExitError(absl::StrCat("unhandled KVM exit reason ", run_->exit_reason));
  }
}

absl::Status KvmVcpu::ExitError(const std::string& what) const {
  return absl::InternalError(absl::StrCat("vCPU ", id_, ": ", what, "\n", DumpRegisters()));
}

absl::Status KvmVcpu::Ioctl(const char* name, unsigned long request, const void* arg) const {
  if (ioctl(fd_.get(), request, arg) < 0) {
    return ErrnoStatus(absl::StrCat(name, " (vCPU ", id_, ")"));
  }
  return absl::OkStatus();
}

absl::Status KvmVcpu::GetRegs(struct kvm_regs* r) const {
  return Ioctl("KVM_GET_REGS", KVM_GET_REGS, r);
}
absl::Status KvmVcpu::SetRegs(const struct kvm_regs& r) {
  return Ioctl("KVM_SET_REGS", KVM_SET_REGS, &r);
}
absl::Status KvmVcpu::GetSregs(struct kvm_sregs* s) const {
  return Ioctl("KVM_GET_SREGS", KVM_GET_SREGS, s);
}
absl::Status KvmVcpu::SetSregs(const struct kvm_sregs& s) {
  return Ioctl("KVM_SET_SREGS", KVM_SET_SREGS, &s);
}
absl::Status KvmVcpu::GetFpu(struct kvm_fpu* f) const {
  return Ioctl("KVM_GET_FPU", KVM_GET_FPU, f);
}
absl::Status KvmVcpu::SetFpu(const struct kvm_fpu& f) {
  return Ioctl("KVM_SET_FPU", KVM_SET_FPU, &f);
}
absl::Status KvmVcpu::GetVcpuEvents(struct kvm_vcpu_events* e) const {
  return Ioctl("KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS, e);
}
absl::Status KvmVcpu::SetVcpuEvents(const struct kvm_vcpu_events& e) {
  return Ioctl("KVM_SET_VCPU_EVENTS", KVM_SET_VCPU_EVENTS, &e);
}
absl::Status KvmVcpu::GetLapic(struct kvm_lapic_state* l) const {
  return Ioctl("KVM_GET_LAPIC", KVM_GET_LAPIC, l);
}
absl::Status KvmVcpu::SetLapic(const struct kvm_lapic_state& l) {
  return Ioctl("KVM_SET_LAPIC", KVM_SET_LAPIC, &l);
}

absl::Status KvmVcpu::GetMsrs(const std::vector<uint32_t>& indices,
                              std::vector<struct kvm_msr_entry>* out) const {
  std::vector<uint8_t> buf = MsrBuffer(indices.size());
  reinterpret_cast<MsrsHeader*>(buf.data())->nmsrs = static_cast<uint32_t>(indices.size());
  struct kvm_msr_entry* entries = MsrEntries(buf);
  for (size_t i = 0; i < indices.size(); i++) entries[i].index = indices[i];
  int n = ioctl(fd_.get(), kGetMsrs, buf.data());
  if (n < 0) return ErrnoStatus(absl::StrCat("KVM_GET_MSRS (vCPU ", id_, ")"));
  if (static_cast<size_t>(n) != indices.size()) {
    return absl::InternalError(
        absl::StrFormat("KVM_GET_MSRS (vCPU %u): MSR 0x%x unreadable", id_, indices[n]));
  }
  out->assign(entries, entries + n);
  return absl::OkStatus();
}

absl::Status KvmVcpu::SetMsrs(const std::vector<struct kvm_msr_entry>& entries) {
  std::vector<uint8_t> buf = MsrBuffer(entries.size());
  reinterpret_cast<MsrsHeader*>(buf.data())->nmsrs = static_cast<uint32_t>(entries.size());
  std::copy(entries.begin(), entries.end(), MsrEntries(buf));
  int n = ioctl(fd_.get(), kSetMsrs, buf.data());
  if (n < 0) return ErrnoStatus(absl::StrCat("KVM_SET_MSRS (vCPU ", id_, ")"));
  if (static_cast<size_t>(n) != entries.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KVM_SET_MSRS (vCPU %u): MSR 0x%x = 0x%x refused", id_, entries[n].index, entries[n].data));
  }
  return absl::OkStatus();
}

std::string KvmVcpu::DumpRegisters() const {
  struct kvm_regs r;
  struct kvm_sregs s;
  if (ioctl(fd_.get(), KVM_GET_REGS, &r) < 0 || ioctl(fd_.get(), KVM_GET_SREGS, &s) < 0) {
    return absl::StrCat("(registers unavailable: ", strerror(errno), ")\n");
  }
  std::string out = absl::StrFormat(
      "rip=%016x rflags=%08x rsp=%016x rbp=%016x\n"
      "rax=%016x rbx=%016x rcx=%016x rdx=%016x\n"
      "rsi=%016x rdi=%016x r8 =%016x r9 =%016x\n"
      "r10=%016x r11=%016x r12=%016x r13=%016x\n"
      "r14=%016x r15=%016x\n"
      "cr0=%016x cr2=%016x cr3=%016x cr4=%016x efer=%x\n",
      r.rip, r.rflags, r.rsp, r.rbp, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.r8, r.r9, r.r10,
      r.r11, r.r12, r.r13, r.r14, r.r15, s.cr0, s.cr2, s.cr3, s.cr4, s.efer);
  out += Segment("cs", s.cs) + Segment("ds", s.ds) + Segment("ss", s.ss) + Segment("es", s.es);
  absl::StrAppendFormat(&out, "gdt base=%016x limit=%04x  idt base=%016x limit=%04x\n", s.gdt.base,
                        s.gdt.limit, s.idt.base, s.idt.limit);
  return out;
}

// ---- KvmVm ----

bool KvmVm::Available(std::string* why) {
  UniqueFd kvm(OpenKvmDevice());
  if (!kvm.valid()) {
    if (why != nullptr) *why = absl::StrCat("cannot open /dev/kvm: ", strerror(errno));
    return false;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<KvmVm>> KvmVm::Create() {
  UniqueFd kvm(OpenKvmDevice());
  if (!kvm.valid()) return ErrnoStatus("open /dev/kvm");
  int api = ioctl(kvm.get(), KVM_GET_API_VERSION, 0);
  if (api != KVM_API_VERSION) {
    return absl::FailedPreconditionError(
        absl::StrCat("KVM API version ", api, ", want ", KVM_API_VERSION));
  }
  int vm = ioctl(kvm.get(), KVM_CREATE_VM, 0);
  if (vm < 0) return ErrnoStatus("KVM_CREATE_VM");
  std::unique_ptr<KvmVm> v(new KvmVm(std::move(kvm), UniqueFd(vm)));
  int run_size = ioctl(v->kvm_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < static_cast<int>(sizeof(struct kvm_run))) {
    return ErrnoStatus("KVM_GET_VCPU_MMAP_SIZE");
  }
  v->run_size_ = static_cast<size_t>(run_size);
  // The CPUID KVM supports: without it the guest has no long mode (EFER.LME would #GP).
  v->cpuid_.assign(sizeof(CpuidHeader) + kMaxCpuidEntries * sizeof(struct kvm_cpuid_entry2), 0);
  reinterpret_cast<CpuidHeader*>(v->cpuid_.data())->nent = kMaxCpuidEntries;
  if (ioctl(v->kvm_.get(), kGetSupportedCpuid, v->cpuid_.data()) < 0) {
    return ErrnoStatus("KVM_GET_SUPPORTED_CPUID");
  }
  return v;
}

int KvmVm::CheckExtension(long cap) const {
  int r = ioctl(vm_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

absl::Status KvmVm::SetUserMemoryRegion(uint32_t slot, uint64_t gpa, uint64_t size, void* host) {
  struct kvm_userspace_memory_region m = {};
  m.slot = slot;
  m.guest_phys_addr = gpa;
  m.memory_size = size;
  m.userspace_addr = reinterpret_cast<uint64_t>(host);
  if (ioctl(vm_.get(), KVM_SET_USER_MEMORY_REGION, &m) < 0) {
    return ErrnoStatus(
        absl::StrFormat("KVM_SET_USER_MEMORY_REGION slot %u gpa 0x%x size 0x%x", slot, gpa, size));
  }
  return absl::OkStatus();
}

absl::Status KvmVm::SetGuestMemfdExitOnMissing(bool on) {
  if (CheckExtension(FLT_KVM_CAP_USERFAULT) <= 0) {
    return absl::UnimplementedError(
        "this kernel lacks KVM Userfault (KVM_MEM_USERFAULT): a vCPU access to a guest_memfd "
        "page that has not arrived would allocate a zero page instead of exiting; build and "
        "boot the series in kernel/ (kernel/README.md)");
  }
  if (gmem_slot_.size == 0 || gmem_slot_.userfault == on) return absl::OkStatus();
  const uint64_t pages = gmem_slot_.size / 4096;
  if (on) {
    // Mark the pages not in the guest_memfd yet; the ones present (mincore() reports the
    // page cache of a shared file mapping) need no exit.
    userfault_bitmap_.assign((pages + 63) / 64, ~uint64_t{0});
    std::vector<unsigned char> present(pages);
    if (mincore(gmem_slot_.host, gmem_slot_.size, present.data()) == 0) {
      for (uint64_t i = 0; i < pages; i++) {
        if (present[i] & 1) userfault_bitmap_[i / 64] &= ~(uint64_t{1} << (i % 64));
      }
    }
  }
  // KVM_MEM_USERFAULT is the one flag a guest_memfd memslot may change.
  absl::Status s = SetGuestMemfdRegionFlags(on);
  if (s.ok()) gmem_slot_.userfault = on;
  return s;
}

void KvmVm::ClearUserfault(uint64_t gpa, uint64_t length) {
  if (userfault_bitmap_.empty() || gpa < gmem_slot_.gpa) return;
  for (uint64_t off = 0; off < length; off += 4096) {
    const uint64_t i = (gpa - gmem_slot_.gpa + off) / 4096;
    if (i / 64 >= userfault_bitmap_.size()) break;
    // Release: the page is in place before KVM can see its bit clear.
    __atomic_fetch_and(&userfault_bitmap_[i / 64], ~(uint64_t{1} << (i % 64)), __ATOMIC_RELEASE);
  }
}

absl::Status KvmVm::SetGuestMemfdRegion(uint32_t slot, uint64_t gpa, uint64_t size, void* host,
                                        int gmem_fd, uint64_t gmem_offset) {
  if (CheckExtension(KVM_CAP_USER_MEMORY2) <= 0) {
    return absl::UnimplementedError(
        "this kernel lacks KVM_SET_USER_MEMORY_REGION2 (KVM_CAP_USER_MEMORY2, Linux 6.8+): "
        "guest_memfd memslots are unavailable");
  }
  gmem_slot_ = GmemSlot{slot, gpa, size, host, gmem_fd, gmem_offset, false};
  Region2 m = {};
  m.slot = slot;
  m.flags = KVM_MEM_GUEST_MEMFD;
  m.guest_phys_addr = gpa;
  m.memory_size = size;
  m.userspace_addr = reinterpret_cast<uint64_t>(host);
  m.guest_memfd = static_cast<uint32_t>(gmem_fd);
  m.guest_memfd_offset = gmem_offset;
  if (ioctl(vm_.get(), kSetUserMemoryRegion2, &m) < 0) {
    int err = errno;
    std::string hint = CheckExtension(KVM_CAP_GUEST_MEMFD) <= 0
                           ? " (KVM_CAP_GUEST_MEMFD is not offered for this VM type)"
                           : "";
    return ErrnoStatus(
        absl::StrFormat("KVM_SET_USER_MEMORY_REGION2 guest_memfd slot %u gpa 0x%x size 0x%x%s",
                        slot, gpa, size, hint),
        err);
  }
  return absl::OkStatus();
}

absl::Status KvmVm::SetGuestMemfdRegionFlags(bool userfault) {
  Region2 m = {};
  m.slot = gmem_slot_.slot;
  m.flags = KVM_MEM_GUEST_MEMFD | (userfault ? FLT_KVM_MEM_USERFAULT : 0);
  m.guest_phys_addr = gmem_slot_.gpa;
  m.memory_size = gmem_slot_.size;
  m.userspace_addr = reinterpret_cast<uint64_t>(gmem_slot_.host);
  m.guest_memfd = static_cast<uint32_t>(gmem_slot_.fd);
  m.guest_memfd_offset = gmem_slot_.offset;
  m.userfault_bitmap = userfault ? reinterpret_cast<uint64_t>(userfault_bitmap_.data()) : 0;
  if (ioctl(vm_.get(), kSetUserMemoryRegion2, &m) < 0) {
    return ErrnoStatus(absl::StrFormat("KVM_SET_USER_MEMORY_REGION2 slot %u: KVM_MEM_USERFAULT %s",
                                       gmem_slot_.slot, userfault ? "on" : "off"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvmVcpu>> KvmVm::CreateVcpu(uint32_t id) {
  int fd = ioctl(vm_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (fd < 0) return ErrnoStatus(absl::StrCat("KVM_CREATE_VCPU ", id));
  UniqueFd vcpu_fd(fd);
  void* run = mmap(nullptr, run_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (run == MAP_FAILED) return ErrnoStatus(absl::StrCat("mmap kvm_run of vCPU ", id));
  std::unique_ptr<KvmVcpu> v(
      new KvmVcpu(id, std::move(vcpu_fd), static_cast<struct kvm_run*>(run), run_size_));

  std::vector<uint8_t> buf = cpuid_;
  uint32_t nent = reinterpret_cast<CpuidHeader*>(buf.data())->nent;
  auto* entries = reinterpret_cast<struct kvm_cpuid_entry2*>(buf.data() + sizeof(CpuidHeader));
  for (uint32_t i = 0; i < nent; i++) {
    struct kvm_cpuid_entry2& e = entries[i];
    if (e.function == 1) e.ebx = (e.ebx & 0x00ffffff) | (id << 24);  // initial APIC id
    if (e.function == 0xb || e.function == 0x1f) e.edx = id;         // x2APIC id
  }
  if (ioctl(v->fd(), kSetCpuid2, buf.data()) < 0) {
    return ErrnoStatus(absl::StrCat("KVM_SET_CPUID2 (vCPU ", id, ")"));
  }
  if (!msrs_probed_) {
    absl::Status s = ProbeMsrs(*v);
    if (!s.ok()) return s;
    msrs_probed_ = true;
  }
  return v;
}

absl::Status KvmVm::ProbeMsrs(KvmVcpu& vcpu) {
  std::vector<uint8_t> buf(sizeof(MsrListHeader) + kMaxMsrs * sizeof(uint32_t), 0);
  reinterpret_cast<MsrListHeader*>(buf.data())->nmsrs = kMaxMsrs;
  if (ioctl(kvm_.get(), kGetMsrIndexList, buf.data()) < 0) {
    return ErrnoStatus("KVM_GET_MSR_INDEX_LIST");
  }
  uint32_t n = reinterpret_cast<MsrListHeader*>(buf.data())->nmsrs;
  const auto* indices = reinterpret_cast<const uint32_t*>(buf.data() + sizeof(MsrListHeader));
  migratable_msrs_.clear();
  for (uint32_t i = 0; i < n; i++) {
    std::vector<struct kvm_msr_entry> e;
    // On a vCPU that has never run, writing back what was read changes nothing.
    if (vcpu.GetMsrs({indices[i]}, &e).ok() && vcpu.SetMsrs(e).ok()) {
      migratable_msrs_.push_back(indices[i]);
    }
  }
  return absl::OkStatus();
}

}  // namespace faultline
