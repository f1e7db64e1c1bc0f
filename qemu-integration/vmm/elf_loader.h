// Loads a static x86-64 ELF executable (the guest) into guest RAM.
//
// Every PT_LOAD segment is copied to its physical address (p_paddr) and its tail up to
// p_memsz zeroed; segments must lie inside RAM. The PVH entry (a XEN_ELFNOTE_PHYS32_ENTRY
// note, 4- or 8-byte descriptor) is reported when present; it is where a PVH loader starts
// the image in 32-bit protected mode.
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_ELF_LOADER_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_ELF_LOADER_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace faultline {

struct ElfImage {
  uint64_t entry = 0;       // e_entry
  uint64_t pvh_entry = 0;   // from the PVH note; 0 without one
  uint64_t load_start = 0;  // lowest and highest (exclusive) physical byte loaded
  uint64_t load_end = 0;
};

// Parses and loads `elf` into ram[0, ram_size).
absl::StatusOr<ElfImage> LoadElf(absl::string_view elf, uint8_t* ram, uint64_t ram_size);
// Reads the file at `path`, then LoadElf.
absl::StatusOr<ElfImage> LoadElfFile(const std::string& path, uint8_t* ram, uint64_t ram_size);

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_ELF_LOADER_H_
