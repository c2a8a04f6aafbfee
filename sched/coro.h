/* weft — stackful coroutine context switch (private).
 *
 * Theory of operation.  A weft_coro_t is a suspended or running execution
 * context.  Suspended, it is nothing but a stack pointer: the switch pushes
 * the callee-saved registers and the FP control words on the suspending
 * context's own stack and stores the stack pointer in `sp`; resuming loads
 * `sp`, pops them and returns.  A new coroutine's stack is prepared so that
 * its first resume "returns" into a trampoline that calls fn(arg).
 *
 * Every thread that switches has a "main" context (weft__coro_thread_init):
 * the thread's own stack, saved like any other when it switches away.
 * Coroutines switch to and from main contexts, and may be resumed by a
 * different thread than the one that suspended them (migration); the
 * switch keeps no thread-local state.
 *
 * Backends: hand-written assembly on x86-64 and aarch64
 * (sched/coro_x86_64.S, sched/coro_aarch64.S); glibc makecontext /
 * swapcontext when WEFT_CORO_UCONTEXT is defined.  Under WEFT_TSAN and
 * WEFT_ASAN every switch is announced to the sanitizer (docs/coroutines.md).
 *
 * Invariants:
 *   1. `sp` is NULL exactly while the context runs (or has exited) and
 *      non-NULL while it is suspended and may be resumed.
 *   2. A context is resumed by one switch at a time: whoever resumes it must
 *      own it (the scheduler hands a suspended task to one thread through
 *      its release/acquire run queues).  Publishing a coroutine so that
 *      another thread may resume it must happen AFTER its switch away has
 *      returned on the other side, i.e. from the context it switched to.
 *   3. The FP control words (x87 control word and MXCSR on x86-64, FPCR on
 *      aarch64) belong to the context: each context gets back on resume the
 *      values it had when it suspended; a new coroutine starts with those of
 *      the thread that called weft__coro_init.
 *
 * | operation                   | who                                       |
 * |-----------------------------|-------------------------------------------|
 * | coro_thread_init/fini       | the thread itself, on its own stack       |
 * | coro_init                   | any thread, on a context not yet started  |
 * | coro_switch(from, to)       | the thread running `from`; owner of `to`  |
 * | coro_exit(self, to)         | the thread running `self`; owner of `to`  |
 * | coro_destroy                | owner, while c is not running             |
 */
#ifndef WEFT_SCHED_CORO_H
#define WEFT_SCHED_CORO_H

#include <stddef.h>

#ifdef WEFT_CORO_UCONTEXT
#include <ucontext.h>
#endif

#include "sched/stack.h"

typedef void (*weft_coro_fn)(void *arg);

typedef struct weft_coro {
    /* Saved stack pointer while suspended; NULL while running.  With
     * ucontext it points at `uc` while suspended. */
    void *sp;
#ifdef WEFT_CORO_UCONTEXT
    weft_coro_fn fn;
    void *arg;
    ucontext_t uc; /* about 1 KiB: only the fallback pays for it */
#endif
#ifdef WEFT_TSAN
    void *tsan_fiber; /* from __tsan_create_fiber, or the thread's own */
    int tsan_owned;   /* 1: ours to destroy (a coroutine, not a main) */
#endif
#ifdef WEFT_ASAN
    const void *asan_bottom;     /* this context's stack: lowest address */
    size_t asan_size;            /* ... and size (mains: learnt on first switch) */
    void *asan_fake_stack;       /* saved across a switch away */
    struct weft_coro *asan_from; /* who switched to us last */
#endif
} weft_coro_t;

/* Capture the calling thread's own context as a main context that
 * coroutines can switch back to.  Call once per thread before its first
 * switch; pair with weft__coro_thread_fini on the same thread when no
 * coroutine will switch to it any more. */
void weft__coro_thread_init(weft_coro_t *self);
void weft__coro_thread_fini(weft_coro_t *self);

/* Prepare c to run fn(arg) on `stack` at its first switch-in.  The stack
 * must outlive c's last switch.  fn must never return; it ends with
 * weft__coro_exit().  Allocates nothing except the sanitizer's fiber object
 * under WEFT_TSAN.  0 or -ENOMEM. */
int weft__coro_init(weft_coro_t *c, const weft_stack_t *stack, weft_coro_fn fn, void *arg);

/* Save the running context into `from` and resume `to`.  Returns when some
 * thread switches back to `from` — possibly another thread than the one
 * that called it: code after the call must not reuse errno or TLS
 * addresses computed before it (DESIGN.md "Coroutines and stacks"). */
void weft__coro_switch(weft_coro_t *from, weft_coro_t *to);

/* The last switch out of a finishing coroutine `self`, to `to`; never
 * returns.  The code running on `to` then calls weft__coro_destroy(self)
 * and may release self's stack. */
__attribute__((noreturn)) void weft__coro_exit(weft_coro_t *self, weft_coro_t *to);

/* Release sanitizer fiber state; never the stack.  c must not be running.
 * A suspended coroutine may be destroyed: its frames are abandoned without
 * unwinding. */
void weft__coro_destroy(weft_coro_t *c);

/* Is c suspended (resumable)?  Meaningful only to c's owner. */
static inline int weft__coro_is_suspended(const weft_coro_t *c)
{
    return c->sp != NULL;
}

#endif /* WEFT_SCHED_CORO_H */
