/* Entry of the probe guest, for both images.
 * The VMM enters in 64-bit mode with paging on and %rsi pointing at the zero page, exactly as
 * it enters Linux. The code is position independent: the bzImage flavour runs wherever
 * himem_start put it. */
    .section .text.entry, "ax"
    .globl _start
    .code64
_start:
    cli
    lea     stack_top(%rip), %rsp
    mov     %rsi, %rdi              /* probe_main(zero_page) */
    call    probe_main
1:  hlt
    jmp     1b

    .section .bss
    .balign 16
    .space  16384
stack_top:

/* From 32-bit protected mode with paging off: PAE, CR3 = PML4 (an operand for mov to %eax),
 * EFER.LME, then paging on (and PE), which makes the CPU enter long mode (compatibility
 * mode until a far jump to a 64-bit code segment). Clobbers eax, ecx, edx. */
    .macro enter_long_mode pml4
    mov     %cr4, %eax
    or      $0x20, %eax             /* PAE */
    mov     %eax, %cr4
    mov     \pml4, %eax
    mov     %eax, %cr3
    mov     $0xc0000080, %ecx       /* EFER.LME */
    rdmsr
    or      $0x100, %eax
    wrmsr
    mov     %cr0, %eax
    or      $0x80000001, %eax       /* PG, PE */
    mov     %eax, %cr0
    .endm

/* PVH entry (Xen's XEN_ELFNOTE_PHYS32_ENTRY, which QEMU also honours): 32-bit protected mode,
 * paging off, %ebx = physical address of struct hvm_start_info. Only the ELF flavour, linked
 * at its load address, has the note, so absolute addresses are right here. It maps the first
 * 4 GiB with 2 MiB pages, enters long mode and calls pvh_main(start_info). */
    .section .note.pvh, "a", @note
    .balign 4
    .long   4, 4, 18                /* name size, descriptor size, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz  "Xen"
    .long   pvh_start

    .section .text.pvh, "ax"
    .code32
pvh_start:
    cli
    mov     %ebx, %esi
    mov     $pvh_pdpt, %eax
    or      $3, %eax
    mov     %eax, pvh_pml4
    xor     %ecx, %ecx
1:  mov     %ecx, %eax              /* PDPT[i] -> PD i (i < 4) */
    shl     $12, %eax
    add     $pvh_pd, %eax
    or      $3, %eax
    mov     %eax, pvh_pdpt(,%ecx,8)
    inc     %ecx
    cmp     $4, %ecx
    jne     1b
    xor     %ecx, %ecx
2:  mov     %ecx, %eax              /* PD entry i: 2 MiB page at i * 2 MiB */
    shl     $21, %eax
    or      $0x83, %eax
    mov     %eax, pvh_pd(,%ecx,8)
    mov     %ecx, %eax
    shr     $11, %eax
    mov     %eax, pvh_pd+4(,%ecx,8)
    inc     %ecx
    cmp     $2048, %ecx
    jne     2b
    enter_long_mode $pvh_pml4
    lgdt    pvh_gdt_desc
    ljmp    $0x08, $pvh_long

    .code64
pvh_long:
    mov     $0x10, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    lea     stack_top(%rip), %rsp
    mov     %rsi, %rdi
    call    pvh_main
3:  hlt
    jmp     3b

    .section .rodata
    .balign 8
pvh_gdt:
    .quad   0
    .quad   0x00af9a000000ffff      /* 0x08: 64-bit code */
    .quad   0x00cf92000000ffff      /* 0x10: data */
pvh_gdt_desc:
    .word   pvh_gdt_desc - pvh_gdt - 1
    .long   pvh_gdt

    .section .bss
    .balign 4096
pvh_pml4:   .space 4096
pvh_pdpt:   .space 4096
pvh_pd:     .space 4 * 4096

/* The application processors' start-up code. The BSP copies it to AP_TRAMPOLINE (a page below
 * 1 MiB) and fills in the three slots at its end, then sends INIT and SIPI with vector
 * AP_TRAMPOLINE >> 12. Each AP starts here in real mode at CS:IP = (AP_TRAMPOLINE >> 4):0,
 * climbs to long mode on the BSP's page tables, takes a stack and calls ap_main(). */
#define AP_TRAMPOLINE 0x3000
#define A(label) ((label) - ap_trampoline + AP_TRAMPOLINE)   /* a label's address once copied */

    .section .rodata
    .balign 16
    .globl  ap_trampoline, ap_trampoline_end
ap_trampoline:
    .code16
    cli
    mov     %cs, %ax
    mov     %ax, %ds
    lgdtl   ap_gdt_desc - ap_trampoline
    mov     %cr0, %eax
    or      $1, %eax                /* PE */
    mov     %eax, %cr0
    ljmpl   $0x08, $A(ap_protected)

    .code32
ap_protected:
    mov     $0x10, %ax
    mov     %ax, %ds
    mov     %ax, %ss
    enter_long_mode A(ap_cr3)
    ljmpl   $0x18, $A(ap_long)

    .code64
ap_long:
    mov     $0x10, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    mov     $1, %eax                /* stack i+1 of the BSP's array, i = APs before this one */
    lock xadd %eax, A(ap_count)
    inc     %eax
    shl     $12, %rax
    add     A(ap_stacks), %rax
    mov     %rax, %rsp
    call    *A(ap_entry)
2:  cli
    hlt
    jmp     2b

    .balign 8
ap_gdt:
    .quad   0
    .quad   0x00cf9a000000ffff      /* 0x08: 32-bit code */
    .quad   0x00cf92000000ffff      /* 0x10: data */
    .quad   0x00af9a000000ffff      /* 0x18: 64-bit code */
ap_gdt_desc:
    .word   ap_gdt_desc - ap_gdt - 1
    .long   A(ap_gdt)
    .balign 8
    .globl  ap_slots
ap_slots:                           /* filled in by the BSP, see struct ap_slots in probe.c */
ap_cr3:     .quad 0
ap_stacks:  .quad 0
ap_entry:   .quad 0
ap_count:   .long 0
ap_trampoline_end:
