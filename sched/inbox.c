/* weft — MPSC inbox.  Theory of operation in inbox.h. */
#include "sched/inbox.h"

#include "sched/handle.h"

#include <sched.h>

/* calloc: every slot NULL, next NULL. */
static weft__ib_block_t *block_new(void)
{
    return weft__calloc(1, sizeof(weft__ib_block_t));
}

/* One step of waiting for another thread a few stores from done (a block
 * switch, a claimed slot being written), which may have been preempted
 * there: pause, and now and then give the CPU up. */
static void wait_step(unsigned *spins)
{
    if (++*spins % 64 == 0)
        sched_yield();
    weft__cpu_relax();
}

int weft__inbox_init(weft_inbox_t *ib)
{
    weft__ib_block_t *b = block_new();
    if (b == NULL)
        return -ENOMEM;
    atomic_init(&ib->tail, 0);
    atomic_init(&ib->tail_block, b);
    atomic_init(&ib->spare, NULL);
    ib->head_block = b;
    ib->head = 0;
    return 0;
}

void weft__inbox_destroy(weft_inbox_t *ib)
{
    weft__free(atomic_exchange_explicit(&ib->spare, NULL, memory_order_acquire));
    weft__free(ib->head_block);
    ib->head_block = NULL;
}

/* A block for the next lap: the consumer's spare if there is one.
 * acquire: pairs with the consumer's release exchange, so the slots it
 * cleared read as cleared. */
static weft__ib_block_t *next_block_get(weft_inbox_t *ib)
{
    weft__ib_block_t *b = atomic_exchange_explicit(&ib->spare, NULL, memory_order_acquire);
    return b != NULL ? b : block_new();
}

/* A block obtained for a claim that went elsewhere: back as the spare. */
static void next_block_put(weft_inbox_t *ib, weft__ib_block_t *b)
{
    weft__ib_block_t *old = atomic_exchange_explicit(&ib->spare, b, memory_order_acq_rel);
    weft__free(old);
}

int weft__inbox_push(weft_inbox_t *ib, weft_callback_fn fn, void *arg)
{
    weft__ib_block_t *next = NULL;
    unsigned spins = 0;
    /* acquire: pairs with the release step over a switching position, so
     * the tail_block load below sees the block of the new lap. */
    uint64_t t = atomic_load_explicit(&ib->tail, memory_order_acquire);
    for (;;) {
        if (t & WEFT__IB_CLOSED) {
            /* Never back as the spare: close frees the spare, and this
             * block could land there after it did. */
            weft__free(next);
            return WEFT_ECLOSED;
        }
        uint64_t off = t % WEFT__IB_LAP;
        if (off == WEFT__IB_CAP) { /* a block switch is under way */
            wait_step(&spins);
            t = atomic_load_explicit(&ib->tail, memory_order_acquire);
            continue;
        }
        if (off + 1 == WEFT__IB_CAP && next == NULL) {
            next = next_block_get(ib);
            if (next == NULL)
                return -ENOMEM;
        }
        weft__ib_block_t *b = atomic_load_explicit(&ib->tail_block, memory_order_acquire);
        /* relaxed on success is enough for the claim itself: the slot's
         * contents are published by the seq_cst store of fn below. */
        if (!atomic_compare_exchange_weak_explicit(&ib->tail, &t, t + 1, memory_order_acquire,
                                                   memory_order_acquire))
            continue;
        if (off + 1 == WEFT__IB_CAP) {
            /* This claim took b's last slot: link the next block before
             * writing that slot (the consumer moves on only after reading
             * it), publish it, then step over the switching position.  An
             * add, not a store: a close may have set the CLOSED bit
             * meanwhile. */
            atomic_store_explicit(&b->next, next, memory_order_release);
            atomic_store_explicit(&ib->tail_block, next, memory_order_release);
            atomic_fetch_add_explicit(&ib->tail, 1, memory_order_release);
        } else if (next != NULL) {
            next_block_put(ib, next); /* lost the last slot to another producer */
        }
        weft__ib_slot_t *s = &b->slots[off];
        s->arg = arg;
        /* seq_cst: publishes arg (and, for the last slot, b->next) to the
         * consumer's peek, and is the "push" of the notify protocol
         * (loop.h). */
        atomic_store_explicit(&s->fn, fn, memory_order_seq_cst);
        return 0;
    }
}

void weft__inbox_take(weft_inbox_t *ib, weft__ib_slot_t *s)
{
    atomic_store_explicit(&s->fn, NULL, memory_order_relaxed);
    ib->head++;
    if (ib->head % WEFT__IB_LAP != WEFT__IB_CAP)
        return;
    /* That was the block's last slot: its producer linked the next block
     * before writing it, and nobody will touch this block again
     * (inbox.h, invariant 1).  acquire: pairs with the release store of
     * next (already ordered by the slot's seq_cst load; stated for TSan
     * and the reader). */
    weft__ib_block_t *old = ib->head_block;
    ib->head_block = atomic_load_explicit(&old->next, memory_order_acquire);
    ib->head++; /* over the switching position */
    atomic_store_explicit(&old->next, NULL, memory_order_relaxed);
    /* release: the producer that takes it sees its slots cleared. */
    weft__ib_block_t *prev = atomic_exchange_explicit(&ib->spare, old, memory_order_acq_rel);
    weft__free(prev);
}

void weft__inbox_close(weft_inbox_t *ib, void (*drop)(weft_callback_fn fn, void *arg, void *ctx),
                       void *ctx)
{
    uint64_t end = atomic_fetch_or_explicit(&ib->tail, WEFT__IB_CLOSED, memory_order_acq_rel);
    if (end & WEFT__IB_CLOSED)
        return;
    unsigned spins = 0;
    while (ib->head < end) {
        weft__ib_slot_t *s = weft__inbox_peek(ib);
        if (s == NULL) {
            /* Claimed before the close, not written yet: its producer is
             * between two instructions, or preempted there. */
            wait_step(&spins);
            continue;
        }
        weft_callback_fn fn = atomic_load_explicit(&s->fn, memory_order_relaxed);
        void *arg = s->arg;
        weft__inbox_take(ib, s);
        drop(fn, arg, ctx);
    }
}

/* ---- the overflow stack ---------------------------------------------------- */

weft_handle_t weft__hstack_closed;
#define CLOSED (&weft__hstack_closed)

void weft__hstack_init(weft__hstack_t *st)
{
    atomic_init(&st->head, NULL);
}

int weft__hstack_push(weft__hstack_t *st, weft_handle_t *h)
{
    weft_handle_t *old = atomic_load_explicit(&st->head, memory_order_relaxed);
    do {
        if (old == CLOSED)
            return WEFT_ECLOSED;
        h->next = old;
        /* seq_cst: publishes h to the consumer's take, and is a push of
         * the notify protocol (loop.h). */
    } while (!atomic_compare_exchange_weak_explicit(&st->head, &old, h, memory_order_seq_cst,
                                                    memory_order_relaxed));
    return 0;
}

static weft_handle_t *reverse(weft_handle_t *h)
{
    weft_handle_t *out = NULL;
    while (h != NULL) {
        weft_handle_t *next = h->next;
        h->next = out;
        out = h;
        h = next;
    }
    return out;
}

weft_handle_t *weft__hstack_take(weft__hstack_t *st)
{
    if (!weft__hstack_nonempty(st))
        return NULL;
    /* acquire: pairs with the pushes' CAS. */
    return reverse(atomic_exchange_explicit(&st->head, NULL, memory_order_acquire));
}

weft_handle_t *weft__hstack_close(weft__hstack_t *st)
{
    weft_handle_t *list = atomic_exchange_explicit(&st->head, CLOSED, memory_order_acq_rel);
    return list == CLOSED ? NULL : reverse(list);
}
