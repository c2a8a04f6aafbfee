/* weft — per-worker run queue and the shared inject queue (private).
 *
 * Theory of operation (the shape of Go's runq and Tokio's local queue).
 * A bounded ring of WEFT__RUNQ_CAP task pointers owned by one worker:
 *   - the owner pushes at `tail` and pops at the head (FIFO, as asyncio
 *     promises for ready work);
 *   - a thief claims half of the queued tasks from the head with one CAS,
 *     copies them into its own ring, then releases its claim;
 *   - when the ring is full, the owner moves half of it plus the new task
 *     to the inject queue in one batch.
 *
 * `head` packs two 32-bit indexes: `real`, the next slot the owner pops,
 * and `steal`, where an in-flight thief's claim starts (equal to `real`
 * when no thief is copying).  Indexes grow without bound and wrap modulo
 * 2^32; a slot is index & MASK.
 *
 * Invariants:
 *   1. Only the owner writes `tail` and writes slots; a slot at index i is
 *      written only when i - steal < CAP, so it never overwrites a slot a
 *      thief may still be copying (those lie in [steal, real)).
 *   2. Only one thief at a time: a thief starts only when steal == real.
 *   3. Tasks in [real, tail) are queued; [steal, real) are being copied by
 *      a thief and belong to it.
 *
 * Orders: the owner's tail store is release, pairing with the thieves'
 * acquire load of tail, which makes slot contents visible.  CASes on head
 * are acq_rel.  Slots are relaxed atomics: the ordering comes from head
 * and tail; the atomics only make the owner/thief slot access well-defined
 * for the C model and ThreadSanitizer.
 *
 * The inject queue is a mutex-protected FIFO with an atomic length for a
 * lock-free emptiness check; it is used only for overflow, wakes from
 * foreign threads and the fairness check, never on the hot path.
 *
 * | operation              | who                 |
 * |------------------------|---------------------|
 * | runq_push, runq_pop    | owner only          |
 * | runq_steal_into(src,d) | d's owner, any src  |
 * | runq_len               | any (a snapshot)    |
 * | inject_*               | any thread          |
 */
#ifndef WEFT_SCHED_RUNQ_H
#define WEFT_SCHED_RUNQ_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sched/common.h"

/* 256 slots (DESIGN.md).  Stress builds may shrink it to force the
 * overflow and steal paths; it must stay a power of two. */
#ifndef WEFT__RUNQ_CAP
#define WEFT__RUNQ_CAP 256u
#endif
#define WEFT__RUNQ_MASK (WEFT__RUNQ_CAP - 1u)

_Static_assert((WEFT__RUNQ_CAP & WEFT__RUNQ_MASK) == 0, "runq capacity must be a power of two");

/* Anything scheduled through a run queue begins with this link, which the
 * inject queue uses. */
typedef struct weft_runnable {
    struct weft_runnable *inject_next;
} weft_runnable_t;

typedef struct weft_inject {
    pthread_mutex_t lock;
    weft_runnable_t *head, *tail;
    atomic_size_t len; /* written under lock, read without it as a hint */
} weft_inject_t;

typedef struct weft_runq {
    alignas(WEFT_CACHELINE) _Atomic(uint64_t) head; /* steal << 32 | real */
    alignas(WEFT_CACHELINE) _Atomic(uint32_t) tail;
    alignas(WEFT_CACHELINE) _Atomic(weft_runnable_t *) slots[WEFT__RUNQ_CAP];
} weft_runq_t;

void weft__inject_init(weft_inject_t *q);
void weft__inject_destroy(weft_inject_t *q);
/* Push a `inject_next`-linked batch of n, first to last. */
void weft__inject_push_batch(weft_inject_t *q, weft_runnable_t *first, weft_runnable_t *last,
                             size_t n);
void weft__inject_push(weft_inject_t *q, weft_runnable_t *r);
weft_runnable_t *weft__inject_pop(weft_inject_t *q);
/* Up to max entries (max >= 1) in one lock, as an inject_next-linked chain
 * in FIFO order (the last one's link is NULL); *n gets how many.  NULL
 * when empty. */
weft_runnable_t *weft__inject_pop_batch(weft_inject_t *q, size_t max, size_t *n);
static inline bool weft__inject_empty(weft_inject_t *q)
{
    /* Relaxed: a hint; a caller that needs certainty takes the lock. */
    return atomic_load_explicit(&q->len, memory_order_relaxed) == 0;
}

/* seq_cst emptiness check, for the parking side of the store-buffer
 * pairing in worker.h (the push side stores `len` seq_cst too). */
static inline bool weft__inject_empty_sc(weft_inject_t *q)
{
    return atomic_load_explicit(&q->len, memory_order_seq_cst) == 0;
}

void weft__runq_init(weft_runq_t *q);

/* Owner: push r; if the ring is full, move half of it and r to inject. */
void weft__runq_push(weft_runq_t *q, weft_runnable_t *r, weft_inject_t *overflow);

/* Owner: oldest task, or NULL. */
weft_runnable_t *weft__runq_pop(weft_runq_t *q);

/* dst's owner: steal half of src's tasks into dst; returns one of them to
 * run now (the rest are in dst), or NULL.  dst must be empty. */
weft_runnable_t *weft__runq_steal_into(weft_runq_t *src, weft_runq_t *dst);

/* Any thread: how many tasks are queued (may be stale). */
uint32_t weft__runq_len(weft_runq_t *q);

#endif /* WEFT_SCHED_RUNQ_H */
