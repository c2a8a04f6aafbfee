/* weft — coroutine stacks (private).
 *
 * Theory of operation.  A stack is an anonymous private mapping made with
 * MAP_NORESERVE | MAP_STACK, so only the pages a coroutine touches cost
 * memory.  Stacks grow down: a coroutine starts at base + size and the
 * lowest usable address, `base`, holds a 64-bit canary when the caller asks
 * for one (weft__stack_alloc always does; weft__stack_alloc_ex lets the
 * task code ask only in debug mode, because writing the canary touches the
 * stack's bottom page: a second resident page per stack, which doubles what
 * a parked task costs).  Where a stack comes from:
 *
 *   1. the caller's per-worker cache (LIFO, hottest first): a stack that was
 *      released there keeps its touched pages, so reuse costs no fault;
 *   1b. then the process-wide depot (up to 256 free stacks under one lock,
 *      pages kept too), for callers with a cache: stacks freed on one
 *      worker are reused by another without a syscall;
 *   2. otherwise a fresh mapping with a PROT_NONE guard page below `base`,
 *      while the process-wide count of guarded stacks is under the cap
 *      (each guard splits a VMA, and vm.max_map_count is 65530 by default);
 *   3. past the cap, a slot in a slab: one mapping carved into up to 64
 *      unguarded stacks of one size, so even a million live stacks stay far
 *      below vm.max_map_count.  Slabs live on a process-wide list under a
 *      mutex; a slot going back to its slab keeps its top two pages and
 *      gives back deeper ones (MADV_DONTNEED, only when its last task went
 *      below them: stack.c, went_deep), and a slab whose slots are all free
 *      is unmapped.  Stacks going into a cache or the depot are trimmed
 *      the same way.
 *
 * A release goes to the cache while it has room, then to the depot, else
 * back to where the stack came from (guarded: munmap; slab: trim + free
 * slot).
 *
 * Sanitizer builds (WEFT_ASAN / WEFT_TSAN) bypass the cache and the slabs:
 * every allocation is a fresh mmap and every release a munmap, so reuse is
 * visible to the sanitizer (DESIGN.md, "ThreadSanitizer, ck and
 * allocators").  Guards still follow the cap.
 *
 * Invariants:
 *   1. base and size are page aligned; size >= WEFT__STACK_MIN_SIZE.
 *   2. A guarded stack's mapping is [base - page, base + size) and it is
 *      counted in the guarded-stacks counter from mmap to munmap, including
 *      while it sits in a cache.
 *   3. A slab slot is either free (its bit set in the slab's free mask) or
 *      owned by exactly one weft_stack_t (in use or in a cache).
 *   4. WEFT_STACK_CANARY is set exactly when the allocation that handed the
 *      stack out wrote a canary at base; weft__stack_canary_ok reads base
 *      only then.
 *
 * | operation                              | who                          |
 * |----------------------------------------|------------------------------|
 * | stack_alloc / stack_release (cache)    | the cache's thread only      |
 * | stack_alloc / stack_release (NULL)     | any thread                   |
 * | stack_cache_new / stack_cache_free     | the cache's thread only      |
 * | stack_canary_ok, default/page size     | any thread                   |
 */
#ifndef WEFT_SCHED_STACK_H
#define WEFT_SCHED_STACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* weft_stack_t.flags */
#define WEFT_STACK_GUARDED 0x1u /* a PROT_NONE page lies just below base */
#define WEFT_STACK_SLAB    0x2u /* a slot of a slab mapping (never guarded) */
#define WEFT_STACK_CANARY  0x4u /* a canary was written at base by this allocation */

/* Bounds on a requested size: below the minimum it is raised to it; above
 * the maximum weft__stack_alloc returns -EINVAL. */
#define WEFT__STACK_MIN_SIZE     ((size_t)16 * 1024)
#define WEFT__STACK_MAX_SIZE     ((size_t)1024 * 1024 * 1024)
#define WEFT__STACK_DEFAULT_SIZE ((size_t)256 * 1024)

struct weft_stack_slab;

typedef struct weft_stack {
    void *base;                   /* lowest usable address; the canary, if any, is here */
    struct weft_stack_slab *slab; /* owning slab when WEFT_STACK_SLAB, else NULL */
    uint32_t size;                /* usable bytes: [base, base + size); <= 1 GiB */
    uint32_t flags;               /* WEFT_STACK_* */
} weft_stack_t;
_Static_assert(WEFT__STACK_MAX_SIZE <= UINT32_MAX, "stack sizes fit weft_stack_t.size");

/* Per worker; used by one thread at a time, no locking. */
typedef struct weft_stack_cache weft_stack_cache_t;

/* A cache keeping up to max_cached released stacks (0 is allowed: a cache
 * that keeps nothing).  0 or -ENOMEM. */
int weft__stack_cache_new(size_t max_cached, weft_stack_cache_t **out);

/* Unmaps (or returns to their slabs) every cached stack, then frees c.
 * NULL is a no-op. */
void weft__stack_cache_free(weft_stack_cache_t *c);

/* A stack of at least `size` usable bytes (0 = weft__stack_default_size()),
 * rounded up to whole pages and to at least WEFT__STACK_MIN_SIZE, taken from
 * the cache c when it holds one of that size (c may be NULL).  With `canary`
 * a fresh canary is written at base (touching the bottom page) and
 * WEFT_STACK_CANARY is set in out->flags; without, the bottom page is left
 * untouched and the flag is clear.
 * 0, -EINVAL (size above WEFT__STACK_MAX_SIZE), -ENOMEM; *out is untouched
 * on error. */
int weft__stack_alloc_ex(weft_stack_cache_t *c, size_t size, bool canary, weft_stack_t *out);

/* weft__stack_alloc_ex with a canary. */
int weft__stack_alloc(weft_stack_cache_t *c, size_t size, weft_stack_t *out);

/* Give s back: to the cache c if it has room (c may be NULL), else to the
 * system.  *s is cleared.  Any thread may release to the NULL cache. */
void weft__stack_release(weft_stack_cache_t *c, weft_stack_t *s);

/* Unmap every stack in the depot; returns how many.  For tests and for
 * programs that want the address space back after a burst.  Thread: any. */
size_t weft__stack_depot_drain(void);

/* Is the canary at the stack limit intact?  False means the stack
 * overflowed (or something wrote below its frames).  True for a stack
 * allocated without a canary (there is nothing to check). */
bool weft__stack_canary_ok(const weft_stack_t *s);

size_t weft__stack_default_size(void); /* 256 KiB of address space */
size_t weft__stack_page_size(void);

/* The process-wide cap on guarded stacks: max_map_count / 4, read once
 * from /proc/sys/vm/max_map_count (65530 when unreadable). */
size_t weft__stack_guard_cap(void);

/* Test seam: replace the cap (SIZE_MAX restores the default); returns the
 * previous cap.  Stacks already guarded stay guarded. */
size_t weft__stack_set_guard_cap(size_t cap);

/* How many guarded stacks are mapped now (a snapshot). */
size_t weft__stack_guarded_count(void);

#endif /* WEFT_SCHED_STACK_H */
