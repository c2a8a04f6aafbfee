/* weft — coroutine context switch for x86-64 (System V ABI).
 *
 * void weft__coro_swap(void **save_sp, void **load_sp)
 *     Push the callee-saved registers (rbp, rbx, r12-r15) and the FP
 *     control words (MXCSR, x87 control word) on the current stack, store
 *     the stack pointer in *save_sp, load the stack pointer from *load_sp,
 *     clear *load_sp (the resumed context is running: see coro.h,
 *     invariant 1), pop the same set and return into the resumed context.
 *
 * void weft__coro_jump(void **load_sp)
 *     The same without saving: the last switch of a finishing coroutine.
 *
 * Saved frame, from the saved stack pointer up (64 bytes including the
 * return address pushed by the call; the saved sp is 16-byte aligned):
 *
 *     +0   MXCSR (4 bytes), x87 control word (2), padding (2)
 *     +8   r15   +16 r14   +24 r13   +32 r12   +40 rbx   +48 rbp
 *     +56  return address
 *
 * coro.c builds the same frame on a new stack with the return address
 * pointing at weft__coro_trampoline, rbx = the coroutine, r12 = fn,
 * r13 = arg, rbp = 0, and 16 zero bytes above it.  The trampoline calls
 * weft__coro_entry(c, fn, arg) with the ABI's alignment (rsp % 16 == 0 at
 * the call) and a zero rbp, and its CFI marks the return address
 * undefined, so debuggers and unwinders stop there.  weft__coro_entry never
 * returns; ud2 traps if it ever did.
 *
 * All symbols are hidden: only libweft calls them.  The file is compiled in
 * every build, so it assembles to nothing on other targets and when the
 * ucontext fallback is selected.
 */
#if defined(__x86_64__) && !defined(WEFT_CORO_UCONTEXT)

    .text

    .globl  weft__coro_swap
    .hidden weft__coro_swap
    .type   weft__coro_swap, @function
    .p2align 4
weft__coro_swap:
    .cfi_startproc
    pushq   %rbp
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %rbp, 0
    pushq   %rbx
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %rbx, 0
    pushq   %r12
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r12, 0
    pushq   %r13
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r13, 0
    pushq   %r14
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r14, 0
    pushq   %r15
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %r15, 0
    subq    $8, %rsp
    .cfi_adjust_cfa_offset 8
    stmxcsr (%rsp)
    fnstcw  4(%rsp)

    movq    %rsp, (%rdi)        /* the suspended context is complete */
    movq    (%rsi), %rsp        /* the resumed one has the same layout, */
    movq    $0, (%rsi)          /* so the CFI above stays true */

    ldmxcsr (%rsp)
    fldcw   4(%rsp)
    addq    $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq    %r15
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r15
    popq    %r14
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r14
    popq    %r13
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r13
    popq    %r12
    .cfi_adjust_cfa_offset -8
    .cfi_restore %r12
    popq    %rbx
    .cfi_adjust_cfa_offset -8
    .cfi_restore %rbx
    popq    %rbp
    .cfi_adjust_cfa_offset -8
    .cfi_restore %rbp
    ret
    .cfi_endproc
    .size   weft__coro_swap, .-weft__coro_swap

    .globl  weft__coro_jump
    .hidden weft__coro_jump
    .type   weft__coro_jump, @function
    .p2align 4
weft__coro_jump:
    .cfi_startproc
    movq    (%rdi), %rsp
    movq    $0, (%rdi)
    /* From here on the frame is the resumed context's saved frame. */
    .cfi_def_cfa_offset 64
    .cfi_offset %rbp, -16
    .cfi_offset %rbx, -24
    .cfi_offset %r12, -32
    .cfi_offset %r13, -40
    .cfi_offset %r14, -48
    .cfi_offset %r15, -56
    ldmxcsr (%rsp)
    fldcw   4(%rsp)
    addq    $8, %rsp
    .cfi_def_cfa_offset 56
    popq    %r15
    .cfi_def_cfa_offset 48
    popq    %r14
    .cfi_def_cfa_offset 40
    popq    %r13
    .cfi_def_cfa_offset 32
    popq    %r12
    .cfi_def_cfa_offset 24
    popq    %rbx
    .cfi_def_cfa_offset 16
    popq    %rbp
    .cfi_def_cfa_offset 8
    ret
    .cfi_endproc
    .size   weft__coro_jump, .-weft__coro_jump

    .globl  weft__coro_trampoline
    .hidden weft__coro_trampoline
    .type   weft__coro_trampoline, @function
    .p2align 4
weft__coro_trampoline:
    .cfi_startproc
    .cfi_undefined %rip         /* the outermost frame of a coroutine */
    movq    %rbx, %rdi
    movq    %r12, %rsi
    movq    %r13, %rdx
    call    weft__coro_entry
    ud2
    .cfi_endproc
    .size   weft__coro_trampoline, .-weft__coro_trampoline

#endif /* __x86_64__ && !WEFT_CORO_UCONTEXT */

/* No executable stack, on every target (the linker warns otherwise). */
#if defined(__linux__) && defined(__ELF__)
    .section .note.GNU-stack, "", %progbits
#endif
