/* weft — MPSC inbox.  Theory of operation in inbox.h. */
#include "sched/inbox.h"

#include "sched/common.h"

/* The closed sentinel: an address no handle can have. */
static weft_handle_t closed_sentinel;
#define CLOSED (&closed_sentinel)

void weft__inbox_init(weft_inbox_t *ib)
{
    atomic_init(&ib->head, NULL);
}

int weft__inbox_push(weft_inbox_t *ib, weft_handle_t *h)
{
    weft_handle_t *old = atomic_load_explicit(&ib->head, memory_order_relaxed);
    do {
        if (old == CLOSED)
            return WEFT_ECLOSED;
        h->next = old;
        /* release: publishes h (its fields and h->next) to the consumer;
         * pairs with the acquire exchange in weft__inbox_take().  seq_cst:
         * weft__loop_notify_posted() may skip its exchange on the strength
         * of a seq_cst load after this push (loop.h). */
    } while (!atomic_compare_exchange_weak_explicit(&ib->head, &old, h, memory_order_seq_cst,
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

weft_handle_t *weft__inbox_take(weft_inbox_t *ib)
{
    /* Cheap check first: an empty inbox is the common case on a busy loop,
     * and a load does not take the cache line exclusive. */
    /* seq_cst: the loop's side of weft__loop_notify_posted()'s pairing
     * (loop.h); a plain load on x86. */
    weft_handle_t *cur = atomic_load_explicit(&ib->head, memory_order_seq_cst);
    if (cur == NULL || cur == CLOSED)
        return NULL;
    /* acquire: pairs with the release CAS in weft__inbox_push(). */
    weft_handle_t *list = atomic_exchange_explicit(&ib->head, NULL, memory_order_acquire);
    return reverse(list);
}

weft_handle_t *weft__inbox_close(weft_inbox_t *ib)
{
    weft_handle_t *list = atomic_exchange_explicit(&ib->head, CLOSED, memory_order_acq_rel);
    if (list == CLOSED)
        return NULL;
    return reverse(list);
}

bool weft__inbox_closed(weft_inbox_t *ib)
{
    return atomic_load_explicit(&ib->head, memory_order_acquire) == CLOSED;
}
