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
