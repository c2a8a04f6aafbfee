/* weft — callback handles.  Rules in handle.h. */
#include "sched/handle.h"

#include "sched/common.h"
#include "sched/loop.h"

weft_handle_t *weft__handle_new(weft_loop_t *loop, uint8_t kind, weft_callback_fn fn, void *arg)
{
    weft_handle_t *h = weft__alloc(sizeof *h);
    if (h != NULL)
        weft__handle_init(h, loop, kind, fn, arg);
    return h;
}

void weft__handle_init(weft_handle_t *h, weft_loop_t *loop, uint8_t kind, weft_callback_fn fn,
                       void *arg)
{
    h->next = NULL;
    h->fn = fn;
    h->arg = arg;
    h->loop = loop;
    h->when = -1;
    h->seq = 0;
    atomic_init(&h->refs, 1);
    atomic_init(&h->state, WEFT__H_PENDING);
    h->kind = kind;
    h->loop_ref = false;
    h->on_drop = NULL;
}

void weft__handle_hand_out(weft_handle_t *h)
{
    /* Relaxed: the caller already owns a reference (DESIGN of refcounts:
     * increments need no ordering, the final decrement does). */
    atomic_fetch_add_explicit(&h->refs, 1, memory_order_relaxed);
    /* A handle the user can cancel keeps its loop's memory alive, because
     * weft_handle_cancel() touches the loop's timer heap counter. */
    weft__loop_retain(h->loop);
    h->loop_ref = true;
}

void weft__handle_unref(weft_handle_t *h)
{
    WEFT_ASSERT(h->kind != WEFT__HK_FD);
    /* acq_rel: the last owner must see every other owner's writes before
     * freeing. */
    if (atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (h->loop_ref)
        weft__loop_release(h->loop);
    weft__free(h);
}

bool weft__handle_cancel(weft_handle_t *h)
{
    if (!weft__handle_try_cancel(h))
        return false;
    if (h->kind == WEFT__HK_TIMER) /* relaxed: only a rebuild heuristic (timer.h) */
        atomic_fetch_add_explicit(&h->loop->timers.dead, 1, memory_order_relaxed);
    return true;
}

int weft_handle_cancel(weft_handle_t *h)
{
    if (h == NULL)
        return -EINVAL;
    weft__handle_cancel(h);
    return 0;
}

bool weft_handle_cancelled(const weft_handle_t *h)
{
    return h != NULL && weft__handle_is_cancelled(h);
}

int64_t weft_handle_when(const weft_handle_t *h)
{
    if (h == NULL || h->kind != WEFT__HK_TIMER)
        return -1;
    return h->when;
}

void weft_handle_release(weft_handle_t *h)
{
    if (h != NULL)
        weft__handle_unref(h);
}
