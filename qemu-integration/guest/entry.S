// faultline-guest entry: PVH 32-bit protected mode -> 64-bit long mode -> flt_main(cpu, si).
//
// In:  flat 32-bit protected mode, paging off, interrupts off, %ebx = PVH start_info paddr,
//      and from faultline-vmm %esi = FLT_CPU_MAGIC, %edi = vCPU index.
// The identity page tables (2 MiB pages, low 4 GiB) and the GDT are static data in the image,
// so every vCPU can run this code concurrently without writing shared memory.
#include "qemu-integration/guest/guest_abi.h"

#define CR0_PE 0x00000001
#define CR0_PG 0x80000000
#define CR4_PAE 0x00000020
#define MSR_EFER 0xc0000080
#define EFER_LME 0x00000100
#define SEL_CODE64 0x08
#define SEL_DATA 0x10
#define SEL_CODE32 0x18

// The PVH entry note QEMU looks for (its loader reads an 8-byte descriptor, as Linux emits).
  .pushsection .note.Xen, "a", @note
  .balign 4
  .long 4                             // namesz
  .long 8                             // descsz
  .long FLT_XEN_ELFNOTE_PHYS32_ENTRY  // type
  .asciz "Xen"
  .balign 4
  .quad pvh_start32
  .balign 4
  .popsection

  .section .text.entry, "ax"
  .code32
  .globl pvh_start32
pvh_start32:
  cli
  cld
  xorl %ebp, %ebp                     // %ebp = cpu index
  cmpl $FLT_CPU_MAGIC, %esi
  je 2f
  movl $1, flt_boot_plain             // a plain PVH loader (QEMU) started this, the boot CPU
  jmp 1f
2:
  movl %edi, %ebp
  cmpl $FLT_MAX_CPUS, %ebp
  jae park32
1:
  // Stack: the top of this CPU's slot.
  movl %ebp, %eax
  incl %eax
  shll $FLT_STACK_SHIFT, %eax
  addl $flt_stacks, %eax
  movl %eax, %esp

  lgdt gdt_desc
  movl $SEL_DATA, %eax
  movl %eax, %ds
  movl %eax, %es
  movl %eax, %ss
  movl %eax, %fs
  movl %eax, %gs

  movl %cr4, %eax
  orl $CR4_PAE, %eax
  movl %eax, %cr4
  movl $pml4, %eax
  movl %eax, %cr3
  movl $MSR_EFER, %ecx
  rdmsr
  orl $EFER_LME, %eax
  wrmsr
  movl %cr0, %eax
  orl $(CR0_PG | CR0_PE), %eax
  movl %eax, %cr0
  ljmp $SEL_CODE64, $start64

park32:
  hlt
  jmp park32

// Under QEMU the other vCPUs wait for INIT/SIPI: flt_start_aps() copies flt_ap_tramp to
// FLT_AP_TRAMPOLINE_GPA and sends them there. In real mode at CS = that page, it loads the
// image's GDT, enters protected mode and jumps here; each AP takes the next CPU index and
// enters pvh_start32 like a vCPU started by faultline-vmm.
  .globl flt_ap_start32
flt_ap_start32:
  movl $SEL_DATA, %eax
  movl %eax, %ds
  movl %eax, %es
  movl %eax, %ss
  movl $1, %edi
  lock xaddl %edi, flt_ap_next
  movl flt_ap_start_info, %ebx
  movl $FLT_CPU_MAGIC, %esi
  jmp pvh_start32

  .section .rodata.ap_tramp, "a"     // copied to FLT_AP_TRAMPOLINE_GPA, never run in place
  .code16
  .globl flt_ap_tramp
flt_ap_tramp:
  cli
  movw %cs, %ax
  movw %ax, %ds
  lgdtl (ap_gdt_desc - flt_ap_tramp)
  movl %cr0, %eax
  orl $CR0_PE, %eax
  movl %eax, %cr0
  ljmpl $SEL_CODE32, $flt_ap_start32
  .balign 8
ap_gdt_desc:
  .word gdt_end - gdt - 1
  .long gdt
  .globl flt_ap_tramp_end
flt_ap_tramp_end:

  .section .text.entry, "ax"

  .code64
start64:
  movl %ebp, %edi                     // arg 0: cpu index
  movl %ebx, %esi                     // arg 1: PVH start_info paddr (zero-extended)
  call flt_main
  .globl flt_halt_forever
flt_halt_forever:
  cli
  hlt
  jmp flt_halt_forever

  .section .data.boot, "aw"
  .balign 16
gdt:
  .quad 0                             // null
  .quad 0x00af9a000000ffff            // 0x08: 64-bit code
  .quad 0x00cf92000000ffff            // 0x10: flat data
  .quad 0x00cf9a000000ffff            // 0x18: flat 32-bit code
gdt_end:
  .balign 8
gdt_desc:
  .word gdt_end - gdt - 1
  .quad gdt

  // Identity map of the low 4 GiB with 2 MiB pages (present | writable | PS).
  .balign 4096
pml4:
  .quad pdpt + 0x3
  .fill 511, 8, 0
pdpt:
  .quad pd + 0x0003
  .quad pd + 0x1003
  .quad pd + 0x2003
  .quad pd + 0x3003
  .fill 508, 8, 0
pd:
  .set flt_i, 0
  .rept 2048
  .quad (flt_i << 21) | 0x83
  .set flt_i, flt_i + 1
  .endr

  .balign 4
  .globl flt_boot_plain, flt_ap_next, flt_ap_start_info
flt_boot_plain:
  .long 0                             // 1: booted by a plain PVH loader (QEMU)
flt_ap_next:
  .long 1                             // the next AP's CPU index
flt_ap_start_info:
  .long 0                             // the PVH start_info paddr, for the APs

  .section .bss.stacks, "aw", @nobits
  .balign 4096
  .globl flt_stacks
flt_stacks:
  .skip FLT_MAX_CPUS << FLT_STACK_SHIFT

  .section .note.GNU-stack, "", @progbits
