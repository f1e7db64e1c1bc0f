// x86 boot state for the PVH entry ABI.
//
// SetPvhEntryState puts a vCPU in flat 32-bit protected mode at `entry` (CR0 = PE only, CS
// base 0 limit 4 GiB type 0xb D/B=1, DS/ES/FS/GS/SS type 3 D/B=1, TR/LDTR as after reset,
// RFLAGS = 0x2) with %ebx = start_info and, for faultline-guest, %esi = FLT_CPU_MAGIC and
// %edi = cpu. WritePvhStartInfo builds an hvm_start_info (version 1) with a one-entry RAM
// memmap [0, ram_size) at FLT_START_INFO_GPA.
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_X86_BOOT_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_X86_BOOT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace faultline {

class KvmVcpu;

absl::Status SetPvhEntryState(KvmVcpu& vcpu, uint32_t entry, uint32_t start_info, uint32_t cpu);

// Returns the guest-physical address of the start_info.
absl::StatusOr<uint32_t> WritePvhStartInfo(uint8_t* ram, uint64_t ram_size);

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_X86_BOOT_H_
