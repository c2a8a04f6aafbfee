/* weft — internal helpers every source file uses: invariant tiers,
 * allocation through one seam, thread identity, the clock, logging.
 *
 * Invariant tiers (STYLE.md):
 *   WEFT_ASSERT(c)  debug builds only (WEFT_ENABLE_ASSERTS); no side effects
 *                   in c — it is compiled but never evaluated otherwise.
 *   WEFT_CHECK(c)   always on, for corruption: prints and aborts.
 *   argument checks return -EINVAL; context checks return -EPERM.
 */
#ifndef WEFT_SCHED_COMMON_H
#define WEFT_SCHED_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "weft/debug.h"
#include "weft/error.h"

#ifdef WEFT_ENABLE_ASSERTS
#define WEFT__ASSERTS_ON 1
#else
#define WEFT__ASSERTS_ON 0
#endif

#define weft__likely(x)   __builtin_expect(!!(x), 1)
#define weft__unlikely(x) __builtin_expect(!!(x), 0)

/* Cache line used to keep hot per-thread state apart (x86-64 and most
 * aarch64 parts; 128 would also cover Apple's, at twice the padding). */
#define WEFT_CACHELINE 64

#define weft__container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

void weft__check_failed(const char *file, int line, const char *expr) __attribute__((noreturn));

#define WEFT_CHECK(c)                                                                              \
    do {                                                                                           \
        if (weft__unlikely(!(c)))                                                                  \
            weft__check_failed(__FILE__, __LINE__, #c);                                            \
    } while (0)

/* The condition stays compiled (so it cannot rot) but is dead code when
 * asserts are off. */
#define WEFT_ASSERT(c)                                                                             \
    do {                                                                                           \
        if (WEFT__ASSERTS_ON && weft__unlikely(!(c)))                                              \
            weft__check_failed(__FILE__, __LINE__, #c);                                            \
    } while (0)

/* ---- allocation (sched/alloc.c) ------------------------------------------
 * Every weft allocation goes through these, so one seam can fail the Nth
 * allocation in tests and one switch selects jemalloc or libc. */
void *weft__alloc(size_t size);
void *weft__calloc(size_t n, size_t size);
void *weft__realloc(void *p, size_t size);
void weft__free(void *p);
/* align: a power of two; freed with weft__free. */
void *weft__alloc_aligned(size_t align, size_t size);
char *weft__strdup(const char *s);

/* Test seam: make the nth allocation from now fail (1 = the next one);
 * 0 disables.  Process-wide; meant for single-threaded tests. */
void weft__alloc_fail_nth(long n);

/* The seam's verdict for an allocation served from a private cache rather
 * than weft__alloc(): true if it is the one to fail.  Caches call it so
 * that tests count the same allocations with caching on or off. */
bool weft__alloc_should_fail(void);

/* ---- intrusive doubly linked lists ---------------------------------------
 * A NULL-terminated list reached from the lvalue `head`, whose nodes link
 * through the fields named `prev` and `next` (so one node can sit on
 * several lists).  The caller holds whatever guards the list; `node` is
 * evaluated more than once. */
#define WEFT__DLIST_PUSH(head, node, prev, next)                                                   \
    do {                                                                                           \
        (node)->prev = NULL;                                                                       \
        (node)->next = (head);                                                                     \
        if ((head) != NULL)                                                                        \
            (head)->prev = (node);                                                                 \
        (head) = (node);                                                                           \
    } while (0)

#define WEFT__DLIST_UNLINK(head, node, prev, next)                                                 \
    do {                                                                                           \
        if ((node)->prev != NULL)                                                                  \
            (node)->prev->next = (node)->next;                                                     \
        else                                                                                       \
            (head) = (node)->next;                                                                 \
        if ((node)->next != NULL)                                                                  \
            (node)->next->prev = (node)->prev;                                                     \
    } while (0)

/* ---- logging (sched/log.c) ---------------------------------------------- */
void weft__log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- thread identity ----------------------------------------------------
 * An address unique to the calling thread, for "am I the loop thread?"
 * checks.  Not inlined, so that a coroutine that migrates between threads
 * never reuses a TLS address computed on another thread (DESIGN.md). */
const void *weft__thread_id(void);

/* ---- thread-local pointers ----------------------------------------------
 * A pointer kept per thread and reached only through a getter and a setter
 * the compiler may not inline, with a compiler barrier in each: a caller
 * that suspends (a task may resume on another thread) must not keep a TLS
 * address computed before the switch (DESIGN.md, TLS across coroutine
 * switches).  `linkage` is `static` or empty.
 *
 *     static _Thread_local weft_loop_t *tls_loop;
 *     WEFT__TLS_GET(, weft_loop_t, weft_get_running_loop, tls_loop)
 *     WEFT__TLS_SET(static, weft_loop_t, set_loop, tls_loop) */
#define WEFT__TLS_GET(linkage, type, getter, var)                                                  \
    __attribute__((noinline)) linkage type *getter(void)                                           \
    {                                                                                              \
        type *v_ = var;                                                                            \
        __asm__ volatile("" ::: "memory");                                                         \
        return v_;                                                                                 \
    }
#define WEFT__TLS_SET(linkage, type, setter, var)                                                  \
    __attribute__((noinline)) linkage void setter(type *v_)                                        \
    {                                                                                              \
        var = v_;                                                                                  \
        __asm__ volatile("" ::: "memory");                                                         \
    }

/* ---- clock ---------------------------------------------------------------- */
static inline int64_t weft__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- spinning ------------------------------------------------------------- */

/* One iteration of a spin-wait: tells the CPU (and a hypervisor that
 * watches for pause loops) that this thread only polls. */
static inline void weft__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield" ::: "memory");
#else
    __asm__ volatile("" ::: "memory");
#endif
}

/* One step of a spin-wait that gives up at `end` (a weft__now_ns() time),
 * counted in *i from 0: pauses, and reads the clock every 16th step.
 * false once the time is up. */
static inline bool weft__spin_step(unsigned *i, int64_t end)
{
    weft__cpu_relax();
    return ++*i % 16 != 0 || weft__now_ns() < end;
}

/* CPUs online, at least 1; read once (sched/worker.c). */
unsigned weft__ncpu(void);

/* The default time to spin before sleeping: 0 with one CPU online, where a
 * spinning thread only delays the thread it waits for (sched/worker.c). */
int64_t weft__spin_ns(void);

/* The longest weft_config.idle_spin_ns. */
#define WEFT__SPIN_MAX_NS (INT64_C(1000000000))

#endif /* WEFT_SCHED_COMMON_H */
