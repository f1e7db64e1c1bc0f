// VcpuState: everything faultline's reference VMM moves for one vCPU during migration, and
// its wire form.
//
// Save() reads registers, special registers, FPU, the migratable MSRs (see
// KvmVm::migratable_msrs), vCPU events and, with an in-kernel irqchip, the local APIC. Restore()
// writes them back in the order KVM needs (sregs before MSRs, events last). Both need the vCPU
// out of KVM_RUN (paused).
//
// Wire form (host byte order, x86-64 only), version 1:
//   "FLTVCPU\0" u32 version u32 body_length  body  u32 crc32c(everything before it)
//   body = sections {u32 tag, u32 length, bytes}: regs, sregs, fpu, msrs, events (required,
//   each once, fixed sizes), lapic (optional). msrs = u32 count, u32 0, count x {u32 index,
//   u32 0, u64 value}. Deserialize rejects truncation, bad lengths, duplicates, unknown tags
//   and checksum mismatches with InvalidArgument naming the problem.
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_VCPU_STATE_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_VCPU_STATE_H_

#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace faultline {

class KvmVcpu;
class KvmVm;

struct VcpuState {
  struct kvm_regs regs = {};
  struct kvm_sregs sregs = {};
  struct kvm_fpu fpu = {};
  std::vector<struct kvm_msr_entry> msrs;
  struct kvm_vcpu_events events = {};
  std::optional<struct kvm_lapic_state> lapic;

  static constexpr uint32_t kVersion = 1;
  static constexpr uint32_t kMaxMsrs = 1024;

  static absl::StatusOr<VcpuState> Save(const KvmVm& vm, const KvmVcpu& vcpu);
  absl::Status Restore(KvmVcpu& vcpu) const;

  std::string Serialize() const;
  static absl::StatusOr<VcpuState> Deserialize(absl::string_view bytes);

  // The MSR with `index`, or null.
  const struct kvm_msr_entry* FindMsr(uint32_t index) const;
};

// Several vCPUs: u32 count, then count x {u32 length, VcpuState::Serialize()}.
std::string SerializeVcpuStates(const std::vector<VcpuState>& states);
absl::StatusOr<std::vector<VcpuState>> DeserializeVcpuStates(absl::string_view bytes);

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_VCPU_STATE_H_
