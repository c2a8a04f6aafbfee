/* weft — coroutine stacks: guarded mappings, slabs, the per-worker cache.
 * The theory of operation and the invariants are in stack.h. */
#include "sched/stack.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sched/common.h"

#ifdef WEFT_ASAN
#include <sanitizer/asan_interface.h>
#endif

/* Sanitizer builds map and unmap every stack so that reuse is visible to
 * the sanitizer (DESIGN.md); elsewhere stacks are cached and slabbed. */
#if defined(WEFT_ASAN) || defined(WEFT_TSAN)
#define STACK_REUSE 0
#else
#define STACK_REUSE 1
#endif

/* "WEFTSTK!", mixed with the stack's address so that a canary copied from
 * another stack (a stray memcpy of a frame) does not pass. */
#define CANARY_MAGIC 0x5745465453544b21ull

/* A slab holds up to 64 stacks (one uint64_t free mask) but at most
 * 512 MiB of address space, so a slab of 1 GiB stacks is a single stack
 * and strict-overcommit systems (which ignore MAP_NORESERVE) are not asked
 * for 64 GiB at once. */
#define SLAB_MAX_STACKS 64u
#define SLAB_MAX_BYTES  ((size_t)512 * 1024 * 1024)

/* When /proc/sys/vm/max_map_count cannot be read: the kernel default. */
#define DEFAULT_MAX_MAP_COUNT 65530u

struct weft_stack_cache {
    size_t cap; /* most stacks kept */
    size_t n;   /* stacks kept now; v[n - 1] is the hottest */
    weft_stack_t v[];
};

struct weft_stack_slab {
    struct weft_stack_slab *prev, *next; /* on partial_slabs while a slot is free */
    char *mem;                           /* the mapping: nstacks * stack_size bytes */
    size_t stack_size;
    unsigned nstacks;
    uint64_t free_mask; /* bit i set: slot i is free */
};

/* Written once under config_once; pthread_once orders those writes
 * before every later reader. */
static pthread_once_t config_once = PTHREAD_ONCE_INIT;
static size_t page_size;
static size_t default_guard_cap;

/* Relaxed: both only bound how many guard pages exist.  No data is
 * published through them; a racing allocation may see a slightly stale cap
 * or count, which moves one stack between guarded and unguarded and never
 * lets the number of guarded stacks pass the cap (the fetch_add below
 * reserves before it maps). */
static atomic_size_t guard_cap;
static atomic_size_t guarded_live;

static size_t read_max_map_count(void)
{
    int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return DEFAULT_MAX_MAP_COUNT;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return DEFAULT_MAX_MAP_COUNT;
    buf[n] = '\0';
    char *end;
    unsigned long v = strtoul(buf, &end, 10);
    if (end == buf || v == 0)
        return DEFAULT_MAX_MAP_COUNT;
    return (size_t)v;
}

static void config_init(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    page_size = ps > 0 ? (size_t)ps : 4096;
    /* Each guarded stack costs two VMAs (guard + stack).  A quarter of the
     * limit in guarded stacks uses half the map count, leaving the rest
     * for slabs, the allocator, thread stacks and the application. */
    default_guard_cap = read_max_map_count() / 4;
    atomic_store_explicit(&guard_cap, default_guard_cap, memory_order_relaxed);
}

static inline void config(void)
{
    pthread_once(&config_once, config_init);
}

size_t weft__stack_page_size(void)
{
    config();
    return page_size;
}

size_t weft__stack_default_size(void)
{
    return WEFT__STACK_DEFAULT_SIZE;
}

size_t weft__stack_guard_cap(void)
{
    config();
    return atomic_load_explicit(&guard_cap, memory_order_relaxed);
}

size_t weft__stack_set_guard_cap(size_t cap)
{
    config();
    if (cap == SIZE_MAX)
        cap = default_guard_cap;
    return atomic_exchange_explicit(&guard_cap, cap, memory_order_relaxed);
}

size_t weft__stack_guarded_count(void)
{
    return atomic_load_explicit(&guarded_live, memory_order_relaxed);
}

/* ---- canary ------------------------------------------------------------- */

static inline uint64_t canary_for(const void *base)
{
    return CANARY_MAGIC ^ (uint64_t)(uintptr_t)base;
}

static void canary_write(const weft_stack_t *s)
{
    *(volatile uint64_t *)s->base = canary_for(s->base);
}

/* Not instrumented: after an overflow ASan may have poisoned this word as
 * a frame's redzone, and the answer we want is "false", not a report. */
__attribute__((no_sanitize("address"))) bool weft__stack_canary_ok(const weft_stack_t *s)
{
    /* Without a canary the bottom page was never touched; reading it here
     * would fault it in for nothing. */
    if (!(s->flags & WEFT_STACK_CANARY))
        return true;
    return *(const volatile uint64_t *)s->base == canary_for(s->base);
}

/* Arm or disarm the canary of a stack being handed out.  A stack from the
 * cache may carry the flag from its previous owner; it is set or cleared
 * here for the new one (a stale canary value left in memory is harmless:
 * without the flag nobody reads it). */
static void canary_setup(weft_stack_t *s, bool canary)
{
    if (canary) {
        canary_write(s);
        s->flags |= WEFT_STACK_CANARY;
    } else {
        s->flags &= ~WEFT_STACK_CANARY;
    }
}

/* ---- mappings ----------------------------------------------------------- */

static int size_round(size_t size, size_t *out)
{
    if (size == 0)
        size = WEFT__STACK_DEFAULT_SIZE;
    if (size > WEFT__STACK_MAX_SIZE)
        return -EINVAL;
    if (size < WEFT__STACK_MIN_SIZE)
        size = WEFT__STACK_MIN_SIZE;
    *out = (size + page_size - 1) & ~(page_size - 1);
    return 0;
}

/* Read-write, committed only when touched. */
static void *map_pages(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_NOHUGEPAGE
    /* With transparent huge pages set to "always", the first touch of a
     * stack's top page could be served by a 2 MiB page: a million parked
     * coroutines would then cost terabytes instead of 4 GiB.  Advisory;
     * failure (no THP support) is fine. */
    (void)madvise(p, len, MADV_NOHUGEPAGE);
#endif
    return p;
}

static void unmap_pages(void *p, size_t len)
{
    /* munmap fails only for a bad range: a corrupted weft_stack_t. */
    WEFT_CHECK(munmap(p, len) == 0);
}

/* 0: *out is a guarded stack.  1: no guard to be had (over the cap, or the
 * kernel refused the extra mapping); try an unguarded one.  -ENOMEM. */
static int alloc_guarded(size_t size, weft_stack_t *out)
{
    size_t cap = atomic_load_explicit(&guard_cap, memory_order_relaxed);
    /* Reserve first so that racing allocators cannot overshoot the cap. */
    if (atomic_fetch_add_explicit(&guarded_live, 1, memory_order_relaxed) >= cap) {
        atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
        return 1;
    }
    char *m = map_pages(size + page_size);
    if (m == NULL) {
        atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
        return -ENOMEM;
    }
    if (mprotect(m, page_size, PROT_NONE) != 0) {
        /* ENOMEM here means splitting the VMA would pass max_map_count. */
        unmap_pages(m, size + page_size);
        atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
        return 1;
    }
    out->base = m + page_size;
    out->size = size;
    out->flags = WEFT_STACK_GUARDED;
    out->slab = NULL;
    return 0;
}

#if STACK_REUSE

/* Slabs with at least one free slot.  Allocating a new stack is not the hot
 * path (the per-worker cache is), so one mutex is enough. */
static pthread_mutex_t slab_lock = PTHREAD_MUTEX_INITIALIZER;
static struct weft_stack_slab *partial_slabs;

static void slab_list_push(struct weft_stack_slab *s)
{
    s->prev = NULL;
    s->next = partial_slabs;
    if (partial_slabs != NULL)
        partial_slabs->prev = s;
    partial_slabs = s;
}

static void slab_list_remove(struct weft_stack_slab *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        partial_slabs = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

static inline uint64_t slab_full_mask(const struct weft_stack_slab *s)
{
    return s->nstacks == 64 ? ~(uint64_t)0 : ((uint64_t)1 << s->nstacks) - 1;
}

static struct weft_stack_slab *slab_new(size_t size)
{
    struct weft_stack_slab *s = weft__alloc(sizeof *s);
    if (s == NULL)
        return NULL;
    size_t n = SLAB_MAX_BYTES / size;
    if (n > SLAB_MAX_STACKS)
        n = SLAB_MAX_STACKS;
    if (n == 0)
        n = 1;
    s->mem = map_pages(n * size);
    if (s->mem == NULL) {
        weft__free(s);
        return NULL;
    }
    s->prev = s->next = NULL;
    s->stack_size = size;
    s->nstacks = (unsigned)n;
    s->free_mask = slab_full_mask(s);
    return s;
}

static int alloc_unguarded(size_t size, weft_stack_t *out)
{
    struct weft_stack_slab *s;
    pthread_mutex_lock(&slab_lock);
    for (s = partial_slabs; s != NULL; s = s->next)
        if (s->stack_size == size)
            break;
    if (s == NULL) {
        /* Map outside the lock; a racing thread may map a slab too, and
         * both end up on the list. */
        pthread_mutex_unlock(&slab_lock);
        s = slab_new(size);
        if (s == NULL)
            return -ENOMEM;
        pthread_mutex_lock(&slab_lock);
        slab_list_push(s);
    }
    WEFT_ASSERT(s->free_mask != 0);
    unsigned i = (unsigned)__builtin_ctzll(s->free_mask);
    s->free_mask &= ~((uint64_t)1 << i);
    if (s->free_mask == 0)
        slab_list_remove(s);
    pthread_mutex_unlock(&slab_lock);

    out->base = s->mem + (size_t)i * size;
    out->size = size;
    out->flags = WEFT_STACK_SLAB;
    out->slab = s;
    return 0;
}

/* A released stack keeps its top TRIM_KEEP_PAGES pages resident: the next
 * task on it touches them at once, and dropping them costs a TLB shootdown
 * (an IPI to every CPU running one of our threads) per release, which was
 * a third of the time of a million tasks finishing together.  Pages below
 * are given back (MADV_DONTNEED) only when the last owner went deep.
 *
 * "Went deep" is read from the word just under the kept pages: it is
 * still zero if no frame ever reached it (an untouched page reads as
 * zeros; the first read maps the shared zero page, which costs no memory
 * and is not counted in RSS, though mincore calls it resident).  A frame
 * that jumped over that word without writing it (a big local array) is
 * missed: a heuristic, but free, where asking the kernel (mincore) is a
 * syscall per release. */
#define TRIM_KEEP_PAGES 2u

static bool went_deep(const weft_stack_t *s)
{
    size_t keep = (size_t)TRIM_KEEP_PAGES * page_size;
    if (s->size <= keep)
        return false;
    const volatile uint64_t *probe =
        (const volatile uint64_t *)((char *)s->base + s->size - keep - sizeof(uint64_t));
    return *probe != 0;
}

static void trim_deep_pages(const weft_stack_t *s)
{
    if (went_deep(s))
        (void)madvise(s->base, s->size - (size_t)TRIM_KEEP_PAGES * page_size, MADV_DONTNEED);
}

static void slab_release(const weft_stack_t *st)
{
    struct weft_stack_slab *s = st->slab;
    size_t off = (size_t)((char *)st->base - s->mem);
    WEFT_CHECK(off % s->stack_size == 0 && off / s->stack_size < s->nstacks);
    uint64_t bit = (uint64_t)1 << (off / s->stack_size);

    /* Trim deep pages while the slot is still ours: once its bit is set
     * another thread may take it and write to it. */
    trim_deep_pages(st);

    pthread_mutex_lock(&slab_lock);
    WEFT_CHECK((s->free_mask & bit) == 0); /* released twice */
    if (s->free_mask == 0)
        slab_list_push(s);
    s->free_mask |= bit;
    bool empty = s->free_mask == slab_full_mask(s);
    if (empty)
        slab_list_remove(s);
    pthread_mutex_unlock(&slab_lock);

    /* No slot is owned and the slab is off the list: nobody can reach it. */
    if (empty) {
        unmap_pages(s->mem, (size_t)s->nstacks * s->stack_size);
        weft__free(s);
    }
}

#else /* !STACK_REUSE: one mapping per stack */

static int alloc_unguarded(size_t size, weft_stack_t *out)
{
    char *m = map_pages(size);
    if (m == NULL)
        return -ENOMEM;
    out->base = m;
    out->size = size;
    out->flags = 0;
    out->slab = NULL;
    return 0;
}

#endif /* STACK_REUSE */

/* Back to the system: whatever the cache does not keep. */
static void stack_unmap(const weft_stack_t *s)
{
#ifdef WEFT_ASAN
    /* A coroutine that never returned leaves its frames' redzones poisoned;
     * a later mapping at this address must not inherit them. */
    ASAN_UNPOISON_MEMORY_REGION(s->base, s->size);
#endif
    if (s->flags & WEFT_STACK_GUARDED) {
        unmap_pages((char *)s->base - page_size, s->size + page_size);
        atomic_fetch_sub_explicit(&guarded_live, 1, memory_order_relaxed);
        return;
    }
#if STACK_REUSE
    if (s->flags & WEFT_STACK_SLAB) {
        slab_release(s);
        return;
    }
#endif
    unmap_pages(s->base, s->size);
}

/* ---- the depot ---------------------------------------------------------- */

/* Free stacks shared by every thread, between the per-worker caches and
 * the mappings.  A stack that one worker's task took and another worker
 * released (stealing makes that common) used to be unmapped when the
 * releasing worker's cache was full, and the next spawn on the other
 * worker mapped a new one: mmap, mprotect and munmap were more than half
 * the time of a recursive spawn workload (W5).  The depot keeps up to
 * DEPOT_MAX of them, touched pages included, behind one lock; so at most
 * DEPOT_MAX * stack size of address space is held here (4 GiB at the
 * default size, reserved, not committed); in memory, the top pages the
 * tasks touched, since deep ones are trimmed on the way in: at most
 * 2 pages each, 128 MiB for a full depot, and only after a burst that had
 * that many tasks running at once.  fib(24) (W5) keeps about 5000 stacks
 * live at its peak on 2 workers: with a 4096 depot every round mapped
 * about 1000 new ones (mmap, madvise, mprotect, later munmap), and the
 * workload ran at half its speed.  Only callers with a cache use it (the
 * task code); a NULL cache means "no caching at all". */
#define DEPOT_MAX 16384u

#if STACK_REUSE
static pthread_mutex_t depot_lock = PTHREAD_MUTEX_INITIALIZER;
static weft_stack_t depot[DEPOT_MAX];
static unsigned depot_n;
static atomic_bool depot_room_hint = true; /* depot_n < DEPOT_MAX, as of the last change */

/* A hint, read without the lock: depot_put still decides. */
static bool depot_has_room(void)
{
    return atomic_load_explicit(&depot_room_hint, memory_order_relaxed);
}

static bool depot_put(const weft_stack_t *s)
{
    bool kept = false;
    pthread_mutex_lock(&depot_lock);
    if (depot_n < DEPOT_MAX) {
        depot[depot_n++] = *s;
        kept = true;
        atomic_store_explicit(&depot_room_hint, depot_n < DEPOT_MAX, memory_order_relaxed);
    }
    pthread_mutex_unlock(&depot_lock);
    return kept;
}

static bool depot_take(size_t size, weft_stack_t *out)
{
    bool got = false;
    pthread_mutex_lock(&depot_lock);
    for (unsigned i = depot_n; i-- > 0;) {
        if (depot[i].size != size)
            continue;
        *out = depot[i];
        depot[i] = depot[--depot_n];
        atomic_store_explicit(&depot_room_hint, true, memory_order_relaxed);
        got = true;
        break;
    }
    pthread_mutex_unlock(&depot_lock);
    return got;
}

#endif /* STACK_REUSE */

size_t weft__stack_depot_drain(void)
{
    size_t n = 0;
#if STACK_REUSE
    weft_stack_t s;
    bool got = true;
    while (got) {
        pthread_mutex_lock(&depot_lock);
        got = depot_n > 0;
        if (got)
            s = depot[--depot_n];
        atomic_store_explicit(&depot_room_hint, true, memory_order_relaxed);
        pthread_mutex_unlock(&depot_lock);
        if (got) {
            stack_unmap(&s);
            n++;
        }
    }
#endif
    return n;
}

/* ---- public ------------------------------------------------------------- */

int weft__stack_cache_new(size_t max_cached, weft_stack_cache_t **out)
{
    config();
    if (max_cached > (SIZE_MAX - sizeof(weft_stack_cache_t)) / sizeof(weft_stack_t))
        return -ENOMEM;
    weft_stack_cache_t *c =
        weft__alloc(sizeof(weft_stack_cache_t) + max_cached * sizeof(weft_stack_t));
    if (c == NULL)
        return -ENOMEM;
    c->cap = max_cached;
    c->n = 0;
    *out = c;
    return 0;
}

void weft__stack_cache_free(weft_stack_cache_t *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++)
        stack_unmap(&c->v[i]);
    weft__free(c);
}

int weft__stack_alloc(weft_stack_cache_t *c, size_t size, weft_stack_t *out)
{
    return weft__stack_alloc_ex(c, size, true, out);
}

int weft__stack_alloc_ex(weft_stack_cache_t *c, size_t size, bool canary, weft_stack_t *out)
{
    config();
    size_t sz;
    int rc = size_round(size, &sz);
    if (rc != 0)
        return rc;

#if STACK_REUSE
    if (c != NULL) {
        /* Hottest first; sizes are usually all the same, so this stops at
         * the top entry. */
        for (size_t i = c->n; i-- > 0;) {
            if (c->v[i].size != sz)
                continue;
            *out = c->v[i];
            memmove(&c->v[i], &c->v[i + 1], (c->n - i - 1) * sizeof c->v[0]);
            c->n--;
            canary_setup(out, canary);
            return 0;
        }
    }
#else
    (void)c;
#endif

    weft_stack_t s;
#if STACK_REUSE
    if (c != NULL && depot_take(sz, &s)) {
        canary_setup(&s, canary);
        *out = s;
        return 0;
    }
#endif
    rc = alloc_guarded(sz, &s);
    if (rc > 0)
        rc = alloc_unguarded(sz, &s);
    if (rc < 0)
        return rc;
    canary_setup(&s, canary);
    *out = s;
    return 0;
}

void weft__stack_release(weft_stack_cache_t *c, weft_stack_t *s)
{
    if (s->base == NULL)
        return;
#if STACK_REUSE
    /* Kept with its touched pages: the next task on this worker reuses
     * them without a fault.  Cached and depot stacks keep their pages, so
     * trim deep ones first: what free stacks hold stays small.  Only a
     * stack that will be kept is probed: the probe's first read of a page
     * never touched is a (zero-page) fault, half the page faults of a
     * million tasks that end together (W11) when every stack was probed. */
    if (c != NULL && c->n < c->cap) {
        trim_deep_pages(s);
        c->v[c->n++] = *s;
        memset(s, 0, sizeof *s);
        return;
    }
    if (c != NULL && depot_has_room()) {
        trim_deep_pages(s);
        if (depot_put(s)) {
            memset(s, 0, sizeof *s);
            return;
        }
    }
#else
    (void)c;
#endif
    stack_unmap(s);
    memset(s, 0, sizeof *s);
}
