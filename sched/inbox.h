/* weft — a loop's inbox: work posted from other threads (private).
 *
 * Theory of operation.  A multi-producer single-consumer LIFO stack of
 * handles (Treiber's stack restricted to push + take-all):
 *   - producers push with a CAS on `head`;
 *   - the consumer (the loop thread) takes the whole stack with one
 *     exchange and reverses it, which restores push order;
 *   - close exchanges in a sentinel; a push that finds the sentinel fails
 *     with WEFT_ECLOSED, so no push can slip in after close took the last
 *     batch.
 * Invariants:
 *   1. Only the consumer removes, and only by taking everything, so the
 *      pushers' CAS cannot suffer ABA: a node is never popped and re-pushed
 *      while a pusher holds a stale head.
 *   2. Pushes from one thread are totally ordered by that thread's CASes,
 *      and reversal preserves that order: per-producer FIFO.
 *   3. Once `head` holds the sentinel it never changes again.
 *
 * Thread: push from any thread; take/close from the consumer only.
 */
#ifndef WEFT_SCHED_INBOX_H
#define WEFT_SCHED_INBOX_H

#include <stdatomic.h>

#include "sched/handle.h"

typedef struct weft_inbox {
    _Atomic(weft_handle_t *) head;
} weft_inbox_t;

void weft__inbox_init(weft_inbox_t *ib);

/* 0 or WEFT_ECLOSED.  On success the inbox owns the caller's reference. */
int weft__inbox_push(weft_inbox_t *ib, weft_handle_t *h);

/* Take everything pushed so far, oldest first, as a `next`-linked list
 * (NULL when empty or closed). */
weft_handle_t *weft__inbox_take(weft_inbox_t *ib);

/* Close and return what was still queued, oldest first. */
weft_handle_t *weft__inbox_close(weft_inbox_t *ib);

bool weft__inbox_closed(weft_inbox_t *ib);

#endif /* WEFT_SCHED_INBOX_H */
