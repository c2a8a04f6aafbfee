/* weft — 4-ary timer heap.  See timer.h for the rules. */
#include "sched/timer.h"

#include "sched/common.h"

/* Rebuild threshold: DESIGN.md "Timers" — more than half of over 100. */
#define REBUILD_MIN_ENTRIES 100

static inline bool before(const weft_handle_t *a, const weft_handle_t *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void sift_up(weft_handle_t **v, size_t i)
{
    weft_handle_t *h = v[i];
    while (i > 0) {
        size_t parent = (i - 1) / 4;
        if (!before(h, v[parent]))
            break;
        v[i] = v[parent];
        i = parent;
    }
    v[i] = h;
}

static void sift_down(weft_handle_t **v, size_t n, size_t i)
{
    weft_handle_t *h = v[i];
    for (;;) {
        size_t first = 4 * i + 1;
        if (first >= n)
            break;
        size_t last = first + 4 < n ? first + 4 : n;
        size_t best = first;
        for (size_t c = first + 1; c < last; c++)
            if (before(v[c], v[best]))
                best = c;
        if (!before(v[best], h))
            break;
        v[i] = v[best];
        i = best;
    }
    v[i] = h;
}

void weft__timers_init(weft_timer_heap_t *th)
{
    th->v = NULL;
    th->n = 0;
    th->cap = 0;
    atomic_init(&th->dead, 0);
}

void weft__timers_destroy(weft_timer_heap_t *th)
{
    for (size_t i = 0; i < th->n; i++)
        weft__handle_unref(th->v[i]);
    weft__free(th->v);
    th->v = NULL;
    th->n = th->cap = 0;
}

int weft__timers_push(weft_timer_heap_t *th, weft_handle_t *h)
{
    if (th->n == th->cap) {
        size_t cap = th->cap ? th->cap * 2 : 64;
        weft_handle_t **v = weft__realloc(th->v, cap * sizeof *v);
        if (v == NULL)
            return -ENOMEM;
        th->v = v;
        th->cap = cap;
    }
    th->v[th->n] = h;
    sift_up(th->v, th->n);
    th->n++;
    return 0;
}

weft_handle_t *weft__timers_pop(weft_timer_heap_t *th)
{
    WEFT_ASSERT(th->n > 0);
    weft_handle_t *top = th->v[0];
    th->n--;
    if (th->n > 0) {
        th->v[0] = th->v[th->n];
        sift_down(th->v, th->n, 0);
    }
    return top;
}

static void dead_dec(weft_timer_heap_t *th)
{
    /* Relaxed: `dead` only steers when to rebuild; no data hangs off it.
     * Saturate at zero (see timer.h on why it is approximate). */
    size_t d = atomic_load_explicit(&th->dead, memory_order_relaxed);
    while (d > 0 && !atomic_compare_exchange_weak_explicit(
                        &th->dead, &d, d - 1, memory_order_relaxed, memory_order_relaxed))
        ;
}

weft_handle_t *weft__timers_peek(weft_timer_heap_t *th, uint64_t *dropped)
{
    while (th->n > 0) {
        weft_handle_t *top = th->v[0];
        if (!weft__handle_is_cancelled(top))
            return top;
        weft__timers_pop(th);
        dead_dec(th);
        weft__handle_unref(top);
        (*dropped)++;
    }
    return NULL;
}

size_t weft__timers_maybe_rebuild(weft_timer_heap_t *th)
{
    size_t dead = atomic_load_explicit(&th->dead, memory_order_relaxed);
    if (th->n <= REBUILD_MIN_ENTRIES || dead * 2 <= th->n)
        return 0;
    size_t kept = 0, removed = 0;
    for (size_t i = 0; i < th->n; i++) {
        weft_handle_t *h = th->v[i];
        if (weft__handle_is_cancelled(h)) {
            weft__handle_unref(h);
            removed++;
        } else {
            th->v[kept++] = h;
        }
    }
    th->n = kept;
    /* Floyd's bottom-up heapify: O(n). */
    if (kept > 1)
        for (size_t i = (kept - 2) / 4 + 1; i-- > 0;)
            sift_down(th->v, kept, i);
    atomic_store_explicit(&th->dead, 0, memory_order_relaxed);
    return removed;
}

void weft__timers_drain(weft_timer_heap_t *th, void (*fn)(weft_handle_t *h, void *arg), void *arg)
{
    size_t n = th->n;
    th->n = 0;
    for (size_t i = 0; i < n; i++)
        fn(th->v[i], arg);
    atomic_store_explicit(&th->dead, 0, memory_order_relaxed);
}
