// The contract between faultline-guest and whoever boots it (faultline-vmm or QEMU).
//
// Boot: the ELF carries a PVH note (XEN_ELFNOTE_PHYS32_ENTRY); the entry runs in flat 32-bit
// protected mode with paging off, %ebx = guest-physical address of a PVH hvm_start_info.
// faultline-vmm additionally puts FLT_CPU_MAGIC in %esi and the vCPU index in %edi (each vCPU
// starts at the same entry; no INIT/SIPI). Without that magic the vCPU is CPU 0.
//
// Under a plain PVH loader (QEMU) only the boot CPU enters; when the mailbox asks for more
// CPUs it starts the others itself (INIT + SIPI to all but itself, real-mode trampoline at
// FLT_AP_TRAMPOLINE_GPA), giving them indices 1, 2, ... in arrival order; QEMU needs -smp N.
//
// Mailbox: a struct flt_mailbox at guest-physical FLT_MAILBOX_GPA. The VMM writes the inputs
// before any vCPU runs; the guest writes the outputs. Without FLT_MAILBOX_MAGIC (a QEMU boot)
// the guest uses defaults, takes the RAM size from the PVH memmap and works from 16 MiB up.
//
// Serial (port 0x3f8, one byte per OUT, '\n'-terminated lines, no UART setup needed):
//   FLT cpu=C boot ram=B data=0xS-0xE pages=P mode=0xM touches=N rounds=R cpus=K abi=vmm|pvh
//   FLT cpu=C phase=dirty pages=P cycles=T
//   FLT cpu=C phase=churn passes=N writes=W               (FLT_MODE_CHURN, once stopped)
//   FLT cpu=C phase=seq|random|hot round=R touches=N cycles_min=A cycles_p50=B cycles_p99=C
//       cycles_max=D slow=S bad=X cycles_total=T          (one line; p50/p99 are the upper
//                                                          bounds of log2 buckets)
//   FLT cpu=C hist=seq|random|hot round=R q=I:N,I:N,…       (after each phase line: the touch
//       times in quarter-octave buckets, bucket I = 4*b + q holding [2^b*(1+q/4),
//       2^b*(1+(q+1)/4)) cycles; only non-empty buckets; long lists continue on more lines
//       with the same prefix)
//   FLT cpu=C done bad=X                                  (every CPU)
//   FLT done cpus=K bad=X                                 (CPU 0, after every CPU is done)
// Then CPU 0 writes (bad != 0) to FLT_EXIT_PORT (QEMU: -device isa-debug-exit,iobase=0x501
// exits with status 2*value+1) and every CPU halts.
//
// Churn (FLT_MODE_CHURN, for warm-up): after the dirty phase the CPUs keep rewriting the
// second 64-bit word of every page of a hot block — the first churn_permille/1000 of the data
// range (0: none, an idle guest), CPU c taking pages c, c+K, ... — with a generation counter,
// pass after pass, until the VMM sets churn_stop to 1; each CPU then prints its churn line and
// writes nothing more until churn_stop is 2, then goes on with the touch phases. (A guest
// paused between its check of churn_stop and its next write would otherwise make that write
// after the migration: the source VMM quiesces it with 1, pauses it, then sets 2.) Word 0
// keeps the dirty pattern.
//
// Dirty pattern: the dirty phase writes flt_page_value(seed, gpa >> 12) as the first 64-bit
// word of every page in [data_start, data_end) and nothing else; touch phases only read (and,
// after a dirty phase, count words that differ as "bad").
//
// This header is shared by freestanding C, assembly and C++; everything is little-endian.
#ifndef FAULTLINE_QEMU_INTEGRATION_GUEST_GUEST_ABI_H_
#define FAULTLINE_QEMU_INTEGRATION_GUEST_GUEST_ABI_H_

#define FLT_ABI_VERSION 1
#define FLT_MAILBOX_MAGIC 0x4D544C46u /* "FLTM" */
#define FLT_CPU_MAGIC 0x43544C46u     /* "FLTC", in %esi at entry */
#define FLT_MAILBOX_GPA 0x5000
#define FLT_START_INFO_GPA 0x6000     /* where faultline-vmm builds the PVH start_info */
#define FLT_AP_TRAMPOLINE_GPA 0x70000 /* under QEMU: the other vCPUs' real-mode start page */
#define FLT_LAPIC_GPA 0xfee00000      /* xAPIC registers (INIT/SIPI under QEMU) */
#define FLT_IMAGE_BASE 0x100000       /* the ELF is linked (and loaded) at 1 MiB */
#define FLT_MAX_CPUS 8
#define FLT_STACK_SHIFT 14 /* 16 KiB stack per CPU */
#define FLT_SERIAL_PORT 0x3f8
#define FLT_EXIT_PORT 0x501
#define FLT_MAX_RAM (4ull << 30) /* the guest identity-maps the low 4 GiB */
#define FLT_PVH_DEFAULT_RAM (64ull << 20)
#define FLT_PVH_DATA_START (16ull << 20)

/* mode bits */
#define FLT_MODE_DIRTY 0x1u
#define FLT_MODE_SEQ 0x2u
#define FLT_MODE_RANDOM 0x4u
#define FLT_MODE_HOT 0x8u
#define FLT_MODE_CHURN 0x10u /* not in FLT_MODE_DEFAULT */
#define FLT_MODE_DEFAULT (FLT_MODE_DIRTY | FLT_MODE_SEQ | FLT_MODE_RANDOM | FLT_MODE_HOT)

/* Defaults for mailbox inputs left 0. */
#define FLT_DEFAULT_TOUCHES 4096
#define FLT_DEFAULT_ROUNDS 1
#define FLT_DEFAULT_SLOW_CYCLES 200000

/* flt_cpu_status.phase (CPUs wait for each other to reach DIRTY_DONE and DONE). */
#define FLT_PHASE_BOOT 1
#define FLT_PHASE_DIRTY 2      /* dirtying */
#define FLT_PHASE_DIRTY_DONE 3 /* dirtied its share (or skipped the dirty phase) */
#define FLT_PHASE_CHURN 8      /* rewriting the hot block until churn_stop */
#define FLT_PHASE_SEQ 4
#define FLT_PHASE_RANDOM 5
#define FLT_PHASE_HOT 6
#define FLT_PHASE_DONE 7

/* PVH (xen/include/public/arch-x86/hvm/start_info.h) */
#define FLT_PVH_START_MAGIC 0x336ec578u
#define FLT_PVH_MEMMAP_RAM 1
#define FLT_XEN_ELFNOTE_PHYS32_ENTRY 18

#ifndef __ASSEMBLER__
#include <stddef.h>
#include <stdint.h>

struct flt_cpu_status {
  uint64_t heartbeat; /* +1 per page dirtied / page touched */
  uint32_t phase;     /* FLT_PHASE_* */
  uint32_t round;     /* current touch round */
  uint64_t bad;       /* touches that read a word other than the dirty pattern */
  uint64_t reserved[5];
}; /* 64 bytes */

struct flt_mailbox {
  /* Inputs: VMM -> guest, written before the vCPUs start. */
  uint32_t magic;    /* FLT_MAILBOX_MAGIC */
  uint32_t version;  /* FLT_ABI_VERSION */
  uint64_t ram_size; /* bytes of RAM from guest-physical 0 (<= FLT_MAX_RAM) */
  uint64_t seed;
  uint64_t touches;        /* per touch phase and CPU; 0 = FLT_DEFAULT_TOUCHES */
  uint64_t slow_cycles;    /* a touch slower than this is "slow"; 0 = FLT_DEFAULT_SLOW_CYCLES */
  uint32_t mode;           /* FLT_MODE_* bits; 0 = FLT_MODE_DEFAULT */
  uint32_t rounds;         /* loops over the touch phases; 0 = FLT_DEFAULT_ROUNDS */
  uint32_t num_cpus;       /* vCPUs started (each at the entry, index in %edi); 0 = 1 */
  uint32_t churn_permille; /* FLT_MODE_CHURN: the hot block, of 1000; 0: idle (writes nothing) */
  uint32_t churn_stop;     /* FLT_MODE_CHURN: 1 = stop churning, 2 = go on (set by the VMM) */
  uint32_t reserved_in[1];
  /* Outputs: guest -> VMM. */
  uint64_t data_start; /* the range the workload uses, page-aligned, above the image */
  uint64_t data_end;
  uint64_t reserved_out[6];
  struct flt_cpu_status cpu[FLT_MAX_CPUS];
};

struct flt_pvh_start_info {
  uint32_t magic; /* FLT_PVH_START_MAGIC */
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr; /* version >= 1 */
  uint32_t memmap_entries;
  uint32_t reserved;
};

struct flt_pvh_memmap_entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};

/* The word the dirty phase writes into page `page` (= gpa >> 12): splitmix64. */
static inline uint64_t flt_page_value(uint64_t seed, uint64_t page) {
  uint64_t z = seed + page * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

#ifdef __cplusplus
#define FLT_STATIC_ASSERT static_assert
#else
#define FLT_STATIC_ASSERT _Static_assert
#endif
FLT_STATIC_ASSERT(sizeof(struct flt_cpu_status) == 64, "ABI");
FLT_STATIC_ASSERT(offsetof(struct flt_cpu_status, bad) == 16, "ABI");
FLT_STATIC_ASSERT(offsetof(struct flt_mailbox, mode) == 40, "ABI");
FLT_STATIC_ASSERT(offsetof(struct flt_mailbox, num_cpus) == 48, "ABI");
FLT_STATIC_ASSERT(offsetof(struct flt_mailbox, churn_stop) == 56, "ABI");
FLT_STATIC_ASSERT(offsetof(struct flt_mailbox, data_start) == 64, "ABI");
FLT_STATIC_ASSERT(offsetof(struct flt_mailbox, cpu) == 128, "ABI");
FLT_STATIC_ASSERT(sizeof(struct flt_mailbox) == 128 + 64 * FLT_MAX_CPUS, "ABI");
FLT_STATIC_ASSERT(sizeof(struct flt_pvh_start_info) == 56, "ABI");
FLT_STATIC_ASSERT(sizeof(struct flt_pvh_memmap_entry) == 24, "ABI");
#undef FLT_STATIC_ASSERT
#endif /* __ASSEMBLER__ */

#endif  // FAULTLINE_QEMU_INTEGRATION_GUEST_GUEST_ABI_H_
