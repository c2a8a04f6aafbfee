/* weft — the per-loop timer heap (private).
 *
 * A 4-ary min-heap of timer handles keyed by (when, seq): earliest deadline
 * first, equal deadlines in scheduling order.  A 4-ary heap is shallower
 * than a binary one and its four children share a cache line of pointers,
 * so sift-down touches fewer lines.
 *
 * Loop thread only, except `dead`, which weft_handle_cancel() bumps from any
 * thread.  Cancellation is lazy: a cancelled entry stays until it reaches
 * the top or a rebuild sweeps it (when more than half of over 100 entries
 * are dead).  `dead` is a heuristic for when to rebuild, not an exact
 * count: a cancel racing with the loop may count an entry that has just
 * left the heap; a rebuild resets it.
 */
#ifndef WEFT_SCHED_TIMER_H
#define WEFT_SCHED_TIMER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "sched/handle.h"

typedef struct weft_timer_heap {
    weft_handle_t **v;
    size_t n;
    size_t cap;
    atomic_size_t dead;
} weft_timer_heap_t;

void weft__timers_init(weft_timer_heap_t *th);
/* Releases the heap's reference on every entry still in it. */
void weft__timers_destroy(weft_timer_heap_t *th);

/* Insert h (the heap takes over the caller's reference).  -ENOMEM. */
int weft__timers_push(weft_timer_heap_t *th, weft_handle_t *h);

/* Drop cancelled entries from the top; returns the earliest live entry or
 * NULL.  Each dropped entry's heap reference is released and counted in
 * *dropped. */
weft_handle_t *weft__timers_peek(weft_timer_heap_t *th, uint64_t *dropped);

/* Remove the top entry (the one weft__timers_peek returned) and hand its
 * reference to the caller. */
weft_handle_t *weft__timers_pop(weft_timer_heap_t *th);

/* Sweep cancelled entries if more than half of over 100 are dead.
 * Returns how many were removed. */
size_t weft__timers_maybe_rebuild(weft_timer_heap_t *th);

/* Remove every entry, calling fn on each (fn takes over the reference). */
void weft__timers_drain(weft_timer_heap_t *th, void (*fn)(weft_handle_t *h, void *arg), void *arg);

#endif /* WEFT_SCHED_TIMER_H */
