#include "qemu-integration/vmm/x86_boot.h"

#include <linux/kvm.h>

#include <cstring>

#include "absl/status/statusor.h"
#include "qemu-integration/guest/guest_abi.h"
#include "qemu-integration/vmm/kvm_vm.h"

namespace faultline {
namespace {

struct kvm_segment FlatSegment(uint16_t selector, uint8_t type) {
  struct kvm_segment s = {};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = selector;
  s.type = type;
  s.present = 1;
  s.dpl = 0;
  s.db = 1;
  s.s = 1;
  s.l = 0;
  s.g = 1;
  return s;
}

}  // namespace

absl::Status SetPvhEntryState(KvmVcpu& vcpu, uint32_t entry, uint32_t start_info, uint32_t cpu) {
  struct kvm_sregs s;
  absl::Status st = vcpu.GetSregs(&s);
  if (!st.ok()) return st;
  s.cs = FlatSegment(0x10, 0xb);                              // execute/read, accessed
  s.ds = s.es = s.fs = s.gs = s.ss = FlatSegment(0x18, 0x3);  // read/write, accessed
  s.cr0 = 0x1;                                                // PE; paging off
  s.cr3 = 0;
  s.cr4 = 0;
  s.efer = 0;
  st = vcpu.SetSregs(s);
  if (!st.ok()) return st;

  struct kvm_regs r = {};
  r.rip = entry;
  r.rflags = 0x2;
  r.rbx = start_info;
  r.rsi = FLT_CPU_MAGIC;
  r.rdi = cpu;
  return vcpu.SetRegs(r);
}

absl::StatusOr<uint32_t> WritePvhStartInfo(uint8_t* ram, uint64_t ram_size) {
  constexpr uint64_t kMemmapGpa = FLT_START_INFO_GPA + 64;
  if (ram_size < FLT_IMAGE_BASE) {
    return absl::InvalidArgumentError("guest RAM smaller than 1 MiB");
  }
  struct flt_pvh_memmap_entry e = {};
  e.addr = 0;
  e.size = ram_size;
  e.type = FLT_PVH_MEMMAP_RAM;
  struct flt_pvh_start_info si = {};
  si.magic = FLT_PVH_START_MAGIC;
  si.version = 1;
  si.memmap_paddr = kMemmapGpa;
  si.memmap_entries = 1;
  memcpy(ram + FLT_START_INFO_GPA, &si, sizeof(si));
  memcpy(ram + kMemmapGpa, &e, sizeof(e));
  return uint32_t{FLT_START_INFO_GPA};
}

}  // namespace faultline
