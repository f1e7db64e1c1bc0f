#include "qemu-integration/vmm/elf_loader.h"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "qemu-integration/guest/guest_abi.h"

namespace faultline {
namespace {

absl::Status Bad(const std::string& why) {
  return absl::InvalidArgumentError("bad guest ELF: " + why);
}

// Whether [off, off+len) fits in a buffer of `size` bytes.
bool Fits(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

// Looks for the PVH entry note in one PT_NOTE segment.
uint64_t FindPvhEntry(absl::string_view notes) {
  uint64_t off = 0;
  while (off + sizeof(Elf64_Nhdr) <= notes.size()) {
    Elf64_Nhdr h;
    memcpy(&h, notes.data() + off, sizeof(h));
    uint64_t name_off = off + sizeof(h);
    uint64_t desc_off = name_off + ((uint64_t{h.n_namesz} + 3) & ~uint64_t{3});
    uint64_t next = desc_off + ((uint64_t{h.n_descsz} + 3) & ~uint64_t{3});
    if (next > notes.size()) return 0;
    if (h.n_type == FLT_XEN_ELFNOTE_PHYS32_ENTRY && h.n_namesz == 4 &&
        memcmp(notes.data() + name_off, "Xen", 4) == 0) {
      if (h.n_descsz == 4) {
        uint32_t v;
        memcpy(&v, notes.data() + desc_off, 4);
        return v;
      }
      if (h.n_descsz == 8) {
        uint64_t v;
        memcpy(&v, notes.data() + desc_off, 8);
        return v;
      }
    }
    off = next;
  }
  return 0;
}

}  // namespace

absl::StatusOr<ElfImage> LoadElf(absl::string_view elf, uint8_t* ram, uint64_t ram_size) {
  Elf64_Ehdr eh;
  if (elf.size() < sizeof(eh)) return Bad("shorter than an ELF header");
  memcpy(&eh, elf.data(), sizeof(eh));
  if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return Bad("no ELF magic");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB) {
    return Bad("not a little-endian ELF64");
  }
  if (eh.e_machine != EM_X86_64) return Bad("not x86-64");
  if (eh.e_type != ET_EXEC) return Bad("not a static executable (ET_EXEC)");
  if (eh.e_phentsize != sizeof(Elf64_Phdr) ||
      !Fits(eh.e_phoff, uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr), elf.size())) {
    return Bad("program headers out of the file");
  }
  ElfImage img;
  img.entry = eh.e_entry;
  img.load_start = ~uint64_t{0};
  int loads = 0;
  for (int i = 0; i < eh.e_phnum; i++) {
    Elf64_Phdr ph;
    memcpy(&ph, elf.data() + eh.e_phoff + i * sizeof(Elf64_Phdr), sizeof(ph));
    if (ph.p_type == PT_NOTE && Fits(ph.p_offset, ph.p_filesz, elf.size())) {
      uint64_t e = FindPvhEntry(elf.substr(ph.p_offset, ph.p_filesz));
      if (e != 0) img.pvh_entry = e;
    }
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    if (ph.p_filesz > ph.p_memsz) return Bad(absl::StrFormat("segment %d: filesz > memsz", i));
    if (!Fits(ph.p_offset, ph.p_filesz, elf.size())) {
      return Bad(absl::StrFormat("segment %d: data beyond the end of the file", i));
    }
    if (!Fits(ph.p_paddr, ph.p_memsz, ram_size)) {
      return absl::OutOfRangeError(
          absl::StrFormat("guest ELF segment %d [0x%x, 0x%x) does not fit in %u bytes of guest RAM",
                          i, ph.p_paddr, ph.p_paddr + ph.p_memsz, ram_size));
    }
    memcpy(ram + ph.p_paddr, elf.data() + ph.p_offset, ph.p_filesz);
    memset(ram + ph.p_paddr + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
    img.load_start = std::min(img.load_start, uint64_t{ph.p_paddr});
    img.load_end = std::max(img.load_end, uint64_t{ph.p_paddr + ph.p_memsz});
    loads++;
  }
  if (loads == 0) return Bad("no PT_LOAD segment");
  uint64_t entry = img.pvh_entry != 0 ? img.pvh_entry : img.entry;
  if (entry < img.load_start || entry >= img.load_end) {
    return Bad(absl::StrFormat("entry 0x%x outside the loaded image", entry));
  }
  return img;
}

absl::StatusOr<ElfImage> LoadElfFile(const std::string& path, uint8_t* ram, uint64_t ram_size) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError("cannot open guest ELF " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string bytes = ss.str();
  absl::StatusOr<ElfImage> img = LoadElf(bytes, ram, ram_size);
  if (!img.ok()) {
    return absl::Status(img.status().code(), absl::StrCat(img.status().message(), " (", path, ")"));
  }
  return img;
}

}  // namespace faultline
