// KvmVm / KvmVcpu: a thin RAII layer over /dev/kvm for the reference VMM.
//
// KvmVm owns /dev/kvm and one VM (type 0, no in-kernel irqchip): memslots over plain
// userspace memory or guest_memfd (KVM_SET_USER_MEMORY_REGION2), vCPU creation (each gets
// KVM's supported CPUID with its own APIC id). KvmVcpu owns a vCPU fd and its kvm_run mapping:
// Run() issues one KVM_RUN and decodes the exit. Port I/O, HLT and interruption (a signal, or
// immediate_exit) come back as a VcpuExit; anything else (MMIO, shutdown/triple fault,
// internal emulation error, failed entry, ...) is an error that carries a register dump.
// Not thread-safe: one thread runs a vCPU; state ioctls only while it is not in Run().
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_KVM_VM_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_KVM_VM_H_

#include <linux/kvm.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace faultline {

struct VcpuExit {
  // kMemoryMissing: a guest_memfd page that has not arrived (KVM_MEMORY_EXIT_FLAG_USERFAULT,
  // kernel/ series): the VMM touches [gpa, gpa+length) through its mapping — which a
  // post-copy pager resolves — clears its userfault bits and re-enters.
  enum class Kind { kIoOut, kIoIn, kHlt, kInterrupted, kMemoryMissing };
  Kind kind = Kind::kInterrupted;
  // Port I/O: `count` accesses of `size` bytes at `port`. `data` points into kvm_run (valid
  // until the next Run()); for kIoIn the caller fills it.
  uint16_t port = 0;
  uint8_t size = 0;
  uint32_t count = 0;
  uint8_t* data = nullptr;
  uint64_t gpa = 0, length = 0;  // kMemoryMissing
};

class KvmVcpu {
 public:
  ~KvmVcpu();
  KvmVcpu(const KvmVcpu&) = delete;
  KvmVcpu& operator=(const KvmVcpu&) = delete;

  uint32_t id() const { return id_; }
  int fd() const { return fd_.get(); }

  // One KVM_RUN.
  absl::StatusOr<VcpuExit> Run();
  // kvm_run.immediate_exit: while set, KVM_RUN returns at once (kInterrupted). Set it, then
  // signal the thread in Run(), to kick a vCPU out without losing the race with its entry.
  void SetImmediateExit(bool on);

  absl::Status GetRegs(struct kvm_regs* r) const;
  absl::Status SetRegs(const struct kvm_regs& r);
  absl::Status GetSregs(struct kvm_sregs* s) const;
  absl::Status SetSregs(const struct kvm_sregs& s);
  absl::Status GetFpu(struct kvm_fpu* f) const;
  absl::Status SetFpu(const struct kvm_fpu& f);
  absl::Status GetVcpuEvents(struct kvm_vcpu_events* e) const;
  absl::Status SetVcpuEvents(const struct kvm_vcpu_events& e);
  absl::Status GetLapic(struct kvm_lapic_state* l) const;
  absl::Status SetLapic(const struct kvm_lapic_state& l);
  // Reads/writes every MSR in `indices`/`msrs`; fails naming the first one KVM refuses.
  absl::Status GetMsrs(const std::vector<uint32_t>& indices,
                       std::vector<struct kvm_msr_entry>* out) const;
  absl::Status SetMsrs(const std::vector<struct kvm_msr_entry>& msrs);

  // Registers and segments, one per line, for error messages.
  std::string DumpRegisters() const;

 private:
  friend class KvmVm;
  KvmVcpu(uint32_t id, UniqueFd fd, struct kvm_run* run, size_t run_size)
      : id_(id), fd_(std::move(fd)), run_(run), run_size_(run_size) {}
  absl::Status ExitError(const std::string& what) const;
  absl::Status Ioctl(const char* name, unsigned long request, const void* arg) const;

  uint32_t id_;
  UniqueFd fd_;
  struct kvm_run* run_;
  size_t run_size_;
};

class KvmVm {
 public:
  // Opens /dev/kvm (API version 12) and creates a type-0 VM.
  static absl::StatusOr<std::unique_ptr<KvmVm>> Create();
  // Whether /dev/kvm can be opened here; *why says why not.
  static bool Available(std::string* why = nullptr);

  int kvm_fd() const { return kvm_.get(); }
  int vm_fd() const { return vm_.get(); }
  bool has_irqchip() const { return false; }
  // KVM_CHECK_EXTENSION on the VM.
  int CheckExtension(long cap) const;

  // Maps [gpa, gpa+size) to `host` (anonymous, memfd, any mapping) in `slot`.
  absl::Status SetUserMemoryRegion(uint32_t slot, uint64_t gpa, uint64_t size, void* host);
  // Maps [gpa, gpa+size) to guest_memfd `gmem_fd` at `gmem_offset`, with `host` (its mmap)
  // as userspace_addr: KVM_SET_USER_MEMORY_REGION2 with KVM_MEM_GUEST_MEMFD.
  // KVM Userfault (KVM_MEM_USERFAULT + bitmap; kernel/ series) on the guest_memfd memslot:
  // while on, a vCPU access to a page not present when it was turned on exits
  // (VcpuExit::kMemoryMissing) until ClearUserfault() clears its bit, instead of allocating
  // zeros. Without a guest_memfd memslot yet, only checks that the kernel has it.
  absl::Status SetGuestMemfdExitOnMissing(bool on);
  // Clears the userfault bits of [gpa, gpa+length) (release): the pages are in place.
  // Called from vCPU threads.
  void ClearUserfault(uint64_t gpa, uint64_t length);
  absl::Status SetGuestMemfdRegion(uint32_t slot, uint64_t gpa, uint64_t size, void* host,
                                   int gmem_fd, uint64_t gmem_offset);

  // Creates vCPU `id`, maps its kvm_run, sets CPUID (KVM's supported set, APIC id = id).
  // The first vCPU also probes which MSRs round-trip (before it ever runs).
  absl::StatusOr<std::unique_ptr<KvmVcpu>> CreateVcpu(uint32_t id);

  // MSRs from KVM_GET_MSR_INDEX_LIST that KVM_GET_MSRS reads and KVM_SET_MSRS takes back.
  const std::vector<uint32_t>& migratable_msrs() const { return migratable_msrs_; }

 private:
  KvmVm(UniqueFd kvm, UniqueFd vm) : kvm_(std::move(kvm)), vm_(std::move(vm)) {}
  absl::Status ProbeMsrs(KvmVcpu& vcpu);
  absl::Status SetGuestMemfdRegionFlags(bool userfault);

  UniqueFd kvm_;
  UniqueFd vm_;
  size_t run_size_ = 0;
  std::vector<uint8_t> cpuid_;  // struct kvm_cpuid2 + entries
  std::vector<uint32_t> migratable_msrs_;
  bool msrs_probed_ = false;
  struct GmemSlot {
    uint32_t slot = 0;
    uint64_t gpa = 0, size = 0;
    void* host = nullptr;
    int fd = -1;
    uint64_t offset = 0;
    bool userfault = false;
  } gmem_slot_;
  std::vector<uint64_t> userfault_bitmap_;  // one bit per 4 KiB page of gmem_slot_
};

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_KVM_VM_H_
