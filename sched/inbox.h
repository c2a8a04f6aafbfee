/* weft — a loop's inbox: work posted from other threads (private).
 *
 * Theory of operation.  An unbounded multi-producer single-consumer FIFO
 * of (fn, arg) entries, stored in a chain of fixed-size blocks, so that a
 * post writes two words into a slot and allocates nothing (one block per
 * WEFT__IB_CAP posts, recycled by the consumer):
 *   - `tail` counts positions; each block spans WEFT__IB_LAP of them, its
 *     WEFT__IB_CAP slots and one more, the "switching" position.  A
 *     producer claims a slot with a CAS on `tail`; the one that claims a
 *     block's last slot moves `tail` onto the switching position, links a
 *     new block (which it obtained before claiming, so a claim never fails
 *     for want of memory), publishes it in `tail_block`, and steps `tail`
 *     over the switching position.  Producers that see the switching
 *     position wait for that step: it takes a handful of stores.
 *   - a producer writes `arg`, then `fn` (seq_cst; NULL means "claimed,
 *     not written yet"); the consumer reads slots in order and stops at the
 *     first unwritten one, so a producer preempted between its claim and
 *     its write delays the entries behind it, it never loses them (its own
 *     notify, after the write, wakes the consumer).
 *   - the consumer clears each slot as it takes it; after a block's last
 *     slot it moves to the next block (linked before that last slot was
 *     written) and recycles the old one as the `spare` producers take
 *     their next block from.
 *   - close sets WEFT__IB_CLOSED in `tail` with one RMW: every later claim
 *     fails with WEFT_ECLOSED, and the consumer drains exactly the
 *     positions claimed before it, waiting for writes still under way.
 * Invariants:
 *   1. `tail` only grows (apart from the CLOSED bit), so a producer whose
 *      CAS succeeds with position p read the block holding p: the block
 *      changes only when `tail` crosses a switching position, which no
 *      stale CAS can succeed across.  A producer touches a block only
 *      after its CAS succeeded, and its write of `fn` is its last access;
 *      so once the consumer has taken every slot of a block, no producer
 *      will touch it again, and it can be reused at once.
 *   2. Entries from one thread are claimed in its program order, and
 *      positions are taken in order: per-producer FIFO.
 *   3. The spare is handed over by exchange only (one block or none), so
 *      it suffers no ABA.
 *
 * Thread: push from any thread; peek/take/close/destroy from the consumer
 * (the loop thread) only.
 */
#ifndef WEFT_SCHED_INBOX_H
#define WEFT_SCHED_INBOX_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "sched/common.h"
#include "weft/loop.h"

/* Slots per block: a block is one page (8 bytes of link, 255 slots of 16). */
#define WEFT__IB_CAP    255
#define WEFT__IB_LAP    (WEFT__IB_CAP + 1)
#define WEFT__IB_CLOSED ((uint64_t)1 << 63)

typedef struct weft__ib_slot {
    void *arg;
    _Atomic(weft_callback_fn) fn; /* written last; NULL until then */
} weft__ib_slot_t;

typedef struct weft__ib_block {
    _Atomic(struct weft__ib_block *) next;
    weft__ib_slot_t slots[WEFT__IB_CAP];
} weft__ib_block_t;

typedef struct weft_inbox {
    /* Producers' side. */
    alignas(WEFT_CACHELINE) _Atomic(uint64_t) tail; /* position | WEFT__IB_CLOSED */
    _Atomic(weft__ib_block_t *) tail_block;
    _Atomic(weft__ib_block_t *) spare;
    /* Consumer's side, on its own line. */
    alignas(WEFT_CACHELINE) weft__ib_block_t *head_block;
    uint64_t head; /* next position to take */
} weft_inbox_t;

/* 0 or -ENOMEM (the first block). */
int weft__inbox_init(weft_inbox_t *ib);

/* Free every block; only after weft__inbox_close, or on a never-used inbox. */
void weft__inbox_destroy(weft_inbox_t *ib);

/* Append fn(arg).  0, -ENOMEM (a new block was needed and could not be
 * allocated; nothing was queued) or WEFT_ECLOSED.  fn must not be NULL. */
int weft__inbox_push(weft_inbox_t *ib, weft_callback_fn fn, void *arg);

/* The oldest entry not taken yet, or NULL if there is none (or its
 * producer has not finished writing it).  Consumer only.  The load is
 * seq_cst: it is the loop's side of weft__loop_notify_posted() (loop.h). */
static inline weft__ib_slot_t *weft__inbox_peek(weft_inbox_t *ib)
{
    weft__ib_slot_t *s = &ib->head_block->slots[ib->head % WEFT__IB_LAP];
    if (atomic_load_explicit(&s->fn, memory_order_seq_cst) == NULL)
        return NULL;
    return s;
}

/* Take the entry weft__inbox_peek() returned: clears its slot, and moves
 * to the next block after a block's last slot. */
void weft__inbox_take(weft_inbox_t *ib, weft__ib_slot_t *s);

/* Close: later pushes fail with WEFT_ECLOSED.  Calls drop(fn, arg, ctx)
 * on every entry still queued, oldest first, waiting for producers that
 * claimed a slot before the close to finish writing it. */
void weft__inbox_close(weft_inbox_t *ib, void (*drop)(weft_callback_fn fn, void *arg, void *ctx),
                       void *ctx);

/* ---- the overflow stack ---------------------------------------------------
 * Handles posted while the inbox could not get a block (out of memory):
 * posting a handle allocated beforehand must not fail for memory
 * (weft__loop_post_handle), and a handle carries its own link.  Treiber's
 * stack restricted to push and take-all, so no ABA: only the consumer
 * removes, and only everything at once; close exchanges in a sentinel that
 * later pushes fail on.  Only ever used out of memory, where entries in it
 * may run ahead of entries posted before them into the inbox. */
struct weft_handle;
typedef struct weft__hstack {
    _Atomic(struct weft_handle *) head;
} weft__hstack_t;

void weft__hstack_init(weft__hstack_t *st);

/* 0 or WEFT_ECLOSED.  seq_cst, as a push of the notify protocol (loop.h). */
int weft__hstack_push(weft__hstack_t *st, struct weft_handle *h);

/* Everything pushed so far, oldest first (NULL when empty or closed). */
struct weft_handle *weft__hstack_take(weft__hstack_t *st);

/* Close and return what was still there, oldest first. */
struct weft_handle *weft__hstack_close(weft__hstack_t *st);

/* The closed sentinel: an address no handle can have. */
extern struct weft_handle weft__hstack_closed;

/* seq_cst: the loop's side of the notify protocol, as weft__inbox_peek. */
static inline bool weft__hstack_nonempty(weft__hstack_t *st)
{
    struct weft_handle *cur = atomic_load_explicit(&st->head, memory_order_seq_cst);
    return cur != NULL && cur != &weft__hstack_closed;
}

#endif /* WEFT_SCHED_INBOX_H */
