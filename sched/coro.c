/* weft — stackful coroutines: starting, switching, finishing.
 *
 * The theory of operation is in coro.h; the register-level switch is in
 * coro_x86_64.S and coro_aarch64.S (or glibc's swapcontext with
 * WEFT_CORO_UCONTEXT).  This file builds a new coroutine's first frame,
 * runs its entry function, and tells the sanitizers about every switch:
 *
 *   TSan: each coroutine is a TSan fiber (__tsan_create_fiber in init,
 *   __tsan_destroy_fiber in destroy; a main context borrows its thread's
 *   fiber).  __tsan_switch_to_fiber(to, 0) runs immediately before the
 *   stack switch, in the same function, and that function does not return
 *   between the two: TSan's shadow call stack is per fiber, so the
 *   function's own entry is recorded on `from` and its exit, after `from`
 *   is resumed, is popped from `from` as well.  A wrapper that called
 *   __tsan_switch_to_fiber and then returned would pop from the wrong
 *   fiber.  The switch functions are no_sanitize("thread") so that the few
 *   accesses between the two calls are not charged to the wrong fiber.
 *   Flags 0: a switch is a happens-before edge, as it is in the program.
 *
 *   ASan: __sanitizer_start_switch_fiber(&from's fake stack, to's stack)
 *   before, __sanitizer_finish_switch_fiber(fake stack, &prev's bounds)
 *   after.  Each context records who switched to it (`asan_from`), and the
 *   finish call writes the bounds of the stack we came from into that
 *   context: this is how a thread's main context learns its own stack
 *   bounds on its first switch out, before anyone can switch back to it.
 *   A finishing coroutine passes NULL for its fake stack, which frees it.
 */
#include "sched/coro.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "sched/common.h"

#ifdef WEFT_TSAN
#include <sanitizer/tsan_interface.h>
#endif
#ifdef WEFT_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(WEFT_CORO_UCONTEXT) && !defined(__x86_64__) && !defined(__aarch64__)
#error "weft: no assembly context switch for this target; build with -DWEFT_CORO=ucontext"
#endif

/* Called by the trampoline (or the ucontext entry) on a new coroutine's
 * stack.  Not static: the assembly calls it; hidden like everything else
 * outside WEFT_API. */
__attribute__((noreturn, used)) void weft__coro_entry(weft_coro_t *c, weft_coro_fn fn, void *arg);

/* ---- sanitizer hooks ---------------------------------------------------- */

/* Just before the stack switch, on `from`'s stack.  `dying`: from will
 * never run again (weft__coro_exit). */
static inline __attribute__((always_inline)) void san_switch_out(weft_coro_t *from, weft_coro_t *to,
                                                                 int dying)
{
#ifdef WEFT_ASAN
    to->asan_from = from;
    __sanitizer_start_switch_fiber(dying ? NULL : &from->asan_fake_stack, to->asan_bottom,
                                   to->asan_size);
#endif
#ifdef WEFT_TSAN
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
    (void)from;
    (void)to;
    (void)dying;
}

/* First thing after the switch, on self's stack.  fake_stack: what self
 * saved when it switched out (NULL on a coroutine's first entry). */
static inline __attribute__((always_inline)) void san_switched_in(weft_coro_t *self,
                                                                  void *fake_stack)
{
#ifdef WEFT_ASAN
    weft_coro_t *prev = self->asan_from;
    __sanitizer_finish_switch_fiber(fake_stack, &prev->asan_bottom, &prev->asan_size);
#endif
    (void)self;
    (void)fake_stack;
}

static void san_init(weft_coro_t *c, const weft_stack_t *stack)
{
#ifdef WEFT_ASAN
    /* A main context's bounds are unknown (NULL, 0) until its first switch
     * out; a coroutine's are its stack. */
    c->asan_bottom = stack != NULL ? stack->base : NULL;
    c->asan_size = stack != NULL ? stack->size : 0;
    c->asan_fake_stack = NULL;
    c->asan_from = NULL;
#endif
    (void)c;
    (void)stack;
}

/* ---- entry -------------------------------------------------------------- */

void weft__coro_entry(weft_coro_t *c, weft_coro_fn fn, void *arg)
{
    san_switched_in(c, NULL);
    fn(arg);
    weft__check_failed(__FILE__, __LINE__,
                       "a coroutine's entry function returned; it must end with "
                       "weft__coro_exit()");
}

/* ---- backend: glibc ucontext -------------------------------------------- */
#ifdef WEFT_CORO_UCONTEXT

/* makecontext passes int arguments only, so the coroutine pointer travels
 * in two 32-bit halves: no global or thread-local hand-off, which would
 * race when coroutines start on many threads at once. */
static void uc_entry(unsigned int lo, unsigned int hi)
{
    weft_coro_t *c = (weft_coro_t *)(uintptr_t)(((uint64_t)hi << 32) | lo);
    weft__coro_entry(c, c->fn, c->arg);
}

static int backend_init(weft_coro_t *c, const weft_stack_t *stack, weft_coro_fn fn, void *arg)
{
    /* getcontext also captures this thread's FP environment, which the
     * coroutine starts with (coro.h, invariant 3). */
    if (getcontext(&c->uc) != 0)
        return -ENOMEM;
    c->uc.uc_stack.ss_sp = stack->base;
    c->uc.uc_stack.ss_size = stack->size;
    c->uc.uc_link = NULL; /* the entry never returns */
    c->fn = fn;
    c->arg = arg;
    uint64_t p = (uint64_t)(uintptr_t)c;
    makecontext(&c->uc, (void (*)(void))uc_entry, 2, (unsigned int)(p & 0xffffffffu),
                (unsigned int)(p >> 32));
    c->sp = &c->uc;
    return 0;
}

static inline __attribute__((always_inline)) void backend_swap(weft_coro_t *from, weft_coro_t *to)
{
    from->sp = &from->uc;
    to->sp = NULL;
    /* swapcontext fails only for a corrupt context. */
    WEFT_CHECK(swapcontext(&from->uc, &to->uc) == 0);
}

static inline __attribute__((always_inline, noreturn)) void backend_jump(weft_coro_t *to)
{
    to->sp = NULL;
    setcontext(&to->uc);
    weft__check_failed(__FILE__, __LINE__, "setcontext failed");
}

/* ---- backend: assembly -------------------------------------------------- */
#else

void weft__coro_swap(void **save_sp, void **load_sp);
__attribute__((noreturn)) void weft__coro_jump(void **load_sp);
void weft__coro_trampoline(void);

/* The frame weft__coro_swap pops on a coroutine's first resume, followed
 * by 16 zero bytes where the trampoline's caller would be.  Must match the
 * layouts documented in the .S files. */
#if defined(__x86_64__)
struct init_frame {
    uint32_t mxcsr;
    uint16_t fpcw;
    uint16_t pad;
    uint64_t r15, r14, r13, r12, rbx, rbp;
    uint64_t ret;
    uint64_t zero[2];
};
_Static_assert(sizeof(struct init_frame) == 80, "x86-64 initial frame layout");
#elif defined(__aarch64__)
struct init_frame {
    uint64_t x19, x20, x21, x22_x28[7];
    uint64_t x29, x30;
    uint64_t d8_d15[8];
    uint64_t fpcr, pad;
    uint64_t zero[2];
};
_Static_assert(sizeof(struct init_frame) == 192, "aarch64 initial frame layout");
#endif

static int backend_init(weft_coro_t *c, const weft_stack_t *stack, weft_coro_fn fn, void *arg)
{
    struct init_frame f;
    memset(&f, 0, sizeof f);
#if defined(__x86_64__)
    /* The coroutine starts with this thread's FP control words (coro.h,
     * invariant 3). */
    __asm__ volatile("stmxcsr %0" : "=m"(f.mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(f.fpcw));
    f.rbx = (uint64_t)(uintptr_t)c;
    f.r12 = (uint64_t)(uintptr_t)fn;
    f.r13 = (uint64_t)(uintptr_t)arg;
    f.rbp = 0; /* ends frame-pointer chains */
    f.ret = (uint64_t)(uintptr_t)weft__coro_trampoline;
#elif defined(__aarch64__)
    __asm__ volatile("mrs %0, fpcr" : "=r"(f.fpcr));
    f.x19 = (uint64_t)(uintptr_t)c;
    f.x20 = (uint64_t)(uintptr_t)fn;
    f.x21 = (uint64_t)(uintptr_t)arg;
    f.x29 = 0; /* ends frame-pointer chains */
    f.x30 = (uint64_t)(uintptr_t)weft__coro_trampoline;
#endif
    uintptr_t top = ((uintptr_t)stack->base + stack->size) & ~(uintptr_t)15;
    void *sp = (void *)(top - sizeof f);
    memcpy(sp, &f, sizeof f);
    c->sp = sp;
    return 0;
}

static inline __attribute__((always_inline)) void backend_swap(weft_coro_t *from, weft_coro_t *to)
{
    weft__coro_swap(&from->sp, &to->sp);
}

static inline __attribute__((always_inline, noreturn)) void backend_jump(weft_coro_t *to)
{
    weft__coro_jump(&to->sp);
}

#endif /* WEFT_CORO_UCONTEXT */

/* ---- public ------------------------------------------------------------- */

void weft__coro_thread_init(weft_coro_t *self)
{
    memset(self, 0, sizeof *self);
    self->sp = NULL; /* running */
#ifdef WEFT_TSAN
    self->tsan_fiber = __tsan_get_current_fiber();
    self->tsan_owned = 0;
#endif
    san_init(self, NULL);
}

void weft__coro_thread_fini(weft_coro_t *self)
{
    /* Only the running thread's own context can be finished. */
    WEFT_ASSERT(self->sp == NULL);
#ifdef WEFT_TSAN
    self->tsan_fiber = NULL; /* the thread's own fiber: not ours to destroy */
#endif
    (void)self;
}

int weft__coro_init(weft_coro_t *c, const weft_stack_t *stack, weft_coro_fn fn, void *arg)
{
    WEFT_ASSERT(stack != NULL && stack->base != NULL && stack->size >= 4096);
    WEFT_ASSERT(fn != NULL);
    memset(c, 0, sizeof *c);
#ifdef WEFT_TSAN
    c->tsan_fiber = __tsan_create_fiber(0);
    if (c->tsan_fiber == NULL)
        return -ENOMEM;
    __tsan_set_fiber_name(c->tsan_fiber, "weft coroutine");
    c->tsan_owned = 1;
#endif
    san_init(c, stack);
    int rc = backend_init(c, stack, fn, arg);
#ifdef WEFT_TSAN
    if (rc != 0) {
        __tsan_destroy_fiber(c->tsan_fiber);
        c->tsan_fiber = NULL;
        c->tsan_owned = 0;
    }
#endif
    return rc;
}

__attribute__((no_sanitize("thread"))) void weft__coro_switch(weft_coro_t *from, weft_coro_t *to)
{
    WEFT_ASSERT(from != to);
    WEFT_ASSERT(from->sp == NULL); /* from is the running context */
    WEFT_ASSERT(to->sp != NULL);   /* to is suspended: resuming twice is a bug */
    san_switch_out(from, to, 0);
    backend_swap(from, to);
    /* Resumed, perhaps on another thread. */
#ifdef WEFT_ASAN
    san_switched_in(from, from->asan_fake_stack);
#endif
}

__attribute__((no_sanitize("thread"), noreturn)) void weft__coro_exit(weft_coro_t *self,
                                                                      weft_coro_t *to)
{
    WEFT_ASSERT(self != to);
    WEFT_ASSERT(to->sp != NULL);
    san_switch_out(self, to, 1);
    backend_jump(to);
}

void weft__coro_destroy(weft_coro_t *c)
{
#ifdef WEFT_TSAN
    if (c->tsan_owned && c->tsan_fiber != NULL)
        __tsan_destroy_fiber(c->tsan_fiber);
    c->tsan_fiber = NULL;
    c->tsan_owned = 0;
#endif
    c->sp = NULL;
}
