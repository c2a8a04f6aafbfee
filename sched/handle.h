/* weft — callback handles (private).
 *
 * A handle is one scheduled callback: call_soon, call_soon_threadsafe,
 * call_later/call_at, or an fd-readiness callback embedded in an fd
 * registration.  At any moment it sits in at most one of: the loop's inbox
 * (referenced from a slot), its overflow stack, its ready FIFO, its timer
 * heap, its pool of free handles — linked through `next` or referenced
 * from the inbox or the heap array.
 *
 * Concurrency:
 *   | field        | written by                        | read by            |
 *   |--------------|-----------------------------------|--------------------|
 *   | state        | CAS from any thread (cancel), the | any thread         |
 *   |              | loop thread (PENDING -> RUN)      |                    |
 *   | refs         | any thread (atomic)               | any thread         |
 *   | next         | the one queue owner at a time     | that owner         |
 *   | everything   | the creator before publication;   | loop thread        |
 *   |  else        | immutable afterwards              |                    |
 *
 * State machine: PENDING -> RUN (the loop is about to call it) or
 * PENDING -> CANCELLED (cancel, or close dropping it).  Exactly one CAS
 * out of PENDING wins, so a callback runs at most once and never after a
 * successful cancel.
 */
#ifndef WEFT_SCHED_HANDLE_H
#define WEFT_SCHED_HANDLE_H

#include <stdatomic.h>
#include <stdint.h>

#include "weft/loop.h"

enum {
    WEFT__H_PENDING = 0,
    WEFT__H_RUN = 1,
    WEFT__H_CANCELLED = 2,
};

enum {
    WEFT__HK_SOON = 0,  /* call_soon / call_soon_threadsafe */
    WEFT__HK_TIMER = 1, /* call_later / call_at */
    WEFT__HK_FD = 2,    /* embedded in an fd registration; never freed alone */
    WEFT__HK_EMBED = 3, /* embedded in another object (a task): run as fn(arg), never
                           claimed or freed by the loop; on_drop(arg) if dropped */
};

struct weft_handle {
    struct weft_handle *next; /* inbox / ready FIFO link */
    weft_callback_fn fn;
    void *arg;
    weft_loop_t *loop;
    int64_t when; /* deadline for timers, -1 otherwise */
    uint64_t seq; /* timers: tie-break for equal deadlines */
    atomic_uint refs;
    atomic_int state;
    uint8_t kind;
    bool loop_ref; /* handed to a user: holds a reference on loop */
    /* Internal handles whose arg owns resources: called with arg when the
     * handle is dropped without running (loop close), so nothing leaks. */
    void (*on_drop)(void *arg);
};

/* Allocate a PENDING handle with refs = 1 (the queue's reference).
 * NULL on allocation failure. */
weft_handle_t *weft__handle_new(weft_loop_t *loop, uint8_t kind, weft_callback_fn fn, void *arg);

/* Make h (memory the caller owns) a fresh PENDING handle with refs = 1. */
void weft__handle_init(weft_handle_t *h, weft_loop_t *loop, uint8_t kind, weft_callback_fn fn,
                       void *arg);

/* Give the caller a reference too (refs += 1) and pin the loop, for the
 * `out` parameter of call_*. */
void weft__handle_hand_out(weft_handle_t *h);

/* Cancel: true if this call took h out of PENDING (it will never run). */
bool weft__handle_cancel(weft_handle_t *h);

/* Drop one reference; frees on the last. */
void weft__handle_unref(weft_handle_t *h);

/* PENDING -> RUN; false if it was cancelled.  Loop thread. */
static inline bool weft__handle_claim(weft_handle_t *h)
{
    int expected = WEFT__H_PENDING;
    /* acq_rel: the winner of this CAS owns the outcome; pairs with the CAS
     * in weft_handle_cancel(). */
    return atomic_compare_exchange_strong_explicit(&h->state, &expected, WEFT__H_RUN,
                                                   memory_order_acq_rel, memory_order_acquire);
}

/* PENDING -> CANCELLED; false if it already ran or was cancelled. */
static inline bool weft__handle_try_cancel(weft_handle_t *h)
{
    int expected = WEFT__H_PENDING;
    return atomic_compare_exchange_strong_explicit(&h->state, &expected, WEFT__H_CANCELLED,
                                                   memory_order_acq_rel, memory_order_acquire);
}

static inline bool weft__handle_is_cancelled(const weft_handle_t *h)
{
    return atomic_load_explicit(&h->state, memory_order_acquire) == WEFT__H_CANCELLED;
}

#endif /* WEFT_SCHED_HANDLE_H */
