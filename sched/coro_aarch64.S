/* weft — coroutine context switch for aarch64 (AAPCS64).
 *
 * void weft__coro_swap(void **save_sp, void **load_sp)
 *     Save the callee-saved registers (x19-x28, the frame pointer x29, the
 *     link register x30, the low halves d8-d15 of v8-v15) and FPCR on the
 *     current stack, store sp in *save_sp, load sp from *load_sp, clear
 *     *load_sp (the resumed context is running: coro.h, invariant 1),
 *     restore the same set and return through the restored x30.
 *
 * void weft__coro_jump(void **load_sp)
 *     The same without saving: the last switch of a finishing coroutine.
 *
 * Saved frame, from the saved sp up (176 bytes, sp stays 16-byte aligned):
 *
 *     +0   x19 x20   +16  x21 x22   +32  x23 x24   +48  x25 x26
 *     +64  x27 x28   +80  x29 x30   +96  d8  d9    +112 d10 d11
 *     +128 d12 d13   +144 d14 d15   +160 FPCR      +168 padding
 *
 * coro.c builds the same frame on a new stack with x30 pointing at
 * weft__coro_trampoline, x19 = the coroutine, x20 = fn, x21 = arg,
 * x29 = 0, and 16 zero bytes above it.  The trampoline calls
 * weft__coro_entry(c, fn, arg); its CFI marks x30 undefined and x29 is 0,
 * so unwinders and frame-pointer walkers stop there.  weft__coro_entry
 * never returns; brk traps if it ever did.
 *
 * Writing FPCR can be slow (it may synchronise the FP unit), so it is
 * written only when the resumed context's value differs, which after the
 * first switches is almost never.
 *
 * All symbols are hidden: only libweft calls them.  The file is compiled in
 * every build, so it assembles to nothing on other targets and when the
 * ucontext fallback is selected.
 */
#if defined(__aarch64__) && !defined(WEFT_CORO_UCONTEXT)

    .text

    .globl  weft__coro_swap
    .hidden weft__coro_swap
    .type   weft__coro_swap, %function
    .p2align 4
weft__coro_swap:
    .cfi_startproc
    sub     sp, sp, #176
    .cfi_def_cfa_offset 176
    stp     x19, x20, [sp, #0]
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    .cfi_offset x29, -96
    .cfi_offset x30, -88
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
    mrs     x9, fpcr
    str     x9, [sp, #160]

    mov     x10, sp
    str     x10, [x0]           /* the suspended context is complete */
    ldr     x10, [x1]
    mov     sp, x10             /* the resumed one has the same layout */
    str     xzr, [x1]

    ldr     x10, [sp, #160]
    cmp     x9, x10
    b.eq    1f
    msr     fpcr, x10
1:
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     d8, d9, [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    add     sp, sp, #176
    .cfi_def_cfa_offset 0
    ret
    .cfi_endproc
    .size   weft__coro_swap, .-weft__coro_swap

    .globl  weft__coro_jump
    .hidden weft__coro_jump
    .type   weft__coro_jump, %function
    .p2align 4
weft__coro_jump:
    .cfi_startproc
    mrs     x9, fpcr
    ldr     x10, [x0]
    mov     sp, x10
    str     xzr, [x0]
    .cfi_def_cfa_offset 176
    .cfi_offset x29, -96
    .cfi_offset x30, -88
    ldr     x10, [sp, #160]
    cmp     x9, x10
    b.eq    1f
    msr     fpcr, x10
1:
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     d8, d9, [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    add     sp, sp, #176
    .cfi_def_cfa_offset 0
    ret
    .cfi_endproc
    .size   weft__coro_jump, .-weft__coro_jump

    .globl  weft__coro_trampoline
    .hidden weft__coro_trampoline
    .type   weft__coro_trampoline, %function
    .p2align 4
weft__coro_trampoline:
    .cfi_startproc
    .cfi_undefined x30          /* the outermost frame of a coroutine */
    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    bl      weft__coro_entry
    brk     #0x3c
    .cfi_endproc
    .size   weft__coro_trampoline, .-weft__coro_trampoline

#endif /* __aarch64__ && !WEFT_CORO_UCONTEXT */

/* No executable stack, on every target (the linker warns otherwise). */
#if defined(__linux__) && defined(__ELF__)
    .section .note.GNU-stack, "", %progbits
#endif
