/* weft — Queue, LifoQueue and PriorityQueue (include/weft/queue.h), after
 * asyncio's queues.py (Python 3.13, with shutdown), for tasks running in
 * parallel.
 *
 * Theory of operation.  One pthread mutex `mu` guards everything: the
 * items, the counters and three waiter queues (getters, putters, joiners;
 * protocol in sched/waitq.h).  It is never held across a suspension.
 *
 * Items stay in the queue until a taker removes them under mu, so an item
 * can be delivered only once and is never lost with a waiter.  As in
 * asyncio, a wake means "an item (or a slot) may be there now": put wakes
 * the first live getter, get wakes the first live putter, and the woken
 * task re-checks under mu.  A get_nowait (or a get that finds an item
 * without waiting) may take the item first — asyncio lets it too — and the
 * woken getter then waits again, at the front so it keeps its turn.
 *
 * Invariants (under mu):
 *   1. While items are queued, every getter still linked is matched by a
 *      getter already woken (granted) that has not yet run: each put
 *      grants one live getter, each taker removes one item.  A woken getter
 *      that is cancelled re-grants the next live getter if an item is left
 *      (asyncio: "We were woken up by put_nowait(), but can't take the
 *      call. Wake up the next in line.").  Putters and free slots mirror
 *      this.
 *   2. A getter skipped as cancelled resumes for that request; if it was
 *      withdrawn (weft_task_uncancel) it re-checks and takes an item, so
 *      invariant 1's "live" caveat cannot strand it.
 *   3. unfinished counts puts not yet matched by task_done; joiners are
 *      all granted when it reaches 0.
 *
 * Storage: FIFO and LIFO share a ring of void * (power-of-two capacity,
 * grown on demand); PRIORITY is a binary min-heap ordered by cmp and then
 * by a put sequence number, so equal items keep their put order.
 */
#include "sched/waitq.h"

#include <string.h>

#include "weft/queue.h"

#define MIN_CAP 16

typedef struct pq_ent {
    void *item;
    uint64_t seq;
} pq_ent_t;

struct weft_queue {
    pthread_mutex_t mu;
    int kind;
    size_t maxsize;
    int (*cmp)(const void *, const void *);
    /* FIFO / LIFO: items[(head + i) & (cap - 1)] for i < count */
    void **items;
    size_t head;
    /* PRIORITY */
    pq_ent_t *heap;
    uint64_t seq;
    size_t count, cap;
    size_t unfinished;
    bool shutdown;
    weft__waitq_t getters, putters, joiners;
};

int weft_queue_new(int kind, size_t maxsize, int (*cmp)(const void *, const void *),
                   weft_queue_t **out)
{
    if (out == NULL)
        return -EINVAL;
    if (kind != WEFT_QUEUE_FIFO && kind != WEFT_QUEUE_LIFO && kind != WEFT_QUEUE_PRIORITY)
        return -EINVAL;
    if (kind == WEFT_QUEUE_PRIORITY && cmp == NULL)
        return -EINVAL;
    weft_queue_t *q = weft__calloc(1, sizeof *q);
    if (q == NULL)
        return -ENOMEM;
    pthread_mutex_init(&q->mu, NULL);
    q->kind = kind;
    q->maxsize = maxsize;
    q->cmp = kind == WEFT_QUEUE_PRIORITY ? cmp : NULL;
    weft__waitq_init(&q->getters);
    weft__waitq_init(&q->putters);
    weft__waitq_init(&q->joiners);
    *out = q;
    return 0;
}

/* ---- storage (under mu) ------------------------------------------------ */

static bool q_full(const weft_queue_t *q)
{
    return q->maxsize > 0 && q->count >= q->maxsize;
}

/* Room for one more item: 0 or -ENOMEM (nothing changed). */
static int store_reserve(weft_queue_t *q)
{
    if (q->count < q->cap)
        return 0;
    size_t ncap = q->cap != 0 ? q->cap * 2 : MIN_CAP;
    if (ncap < q->cap)
        return -ENOMEM;
    if (q->kind == WEFT_QUEUE_PRIORITY) {
        pq_ent_t *h = weft__realloc(q->heap, ncap * sizeof *h);
        if (h == NULL)
            return -ENOMEM;
        q->heap = h;
    } else {
        /* Unwrap the ring into the new array so the items start at 0. */
        void **a = weft__alloc(ncap * sizeof *a);
        if (a == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < q->count; i++)
            a[i] = q->items[(q->head + i) & (q->cap - 1)];
        weft__free(q->items);
        q->items = a;
        q->head = 0;
    }
    q->cap = ncap;
    return 0;
}

static bool pq_before(const weft_queue_t *q, const pq_ent_t *a, const pq_ent_t *b)
{
    int c = q->cmp(a->item, b->item);
    return c < 0 || (c == 0 && a->seq < b->seq);
}

static void pq_push(weft_queue_t *q, void *item)
{
    size_t i = q->count;
    pq_ent_t e = {item, q->seq++};
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pq_before(q, &e, &q->heap[parent]))
            break;
        q->heap[i] = q->heap[parent];
        i = parent;
    }
    q->heap[i] = e;
}

static void *pq_pop(weft_queue_t *q)
{
    void *top = q->heap[0].item;
    size_t n = q->count - 1; /* entries left after the pop */
    pq_ent_t last = q->heap[n];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && pq_before(q, &q->heap[child + 1], &q->heap[child]))
            child++;
        if (!pq_before(q, &q->heap[child], &last))
            break;
        q->heap[i] = q->heap[child];
        i = child;
    }
    if (n > 0)
        q->heap[i] = last;
    return top;
}

static int store_push(weft_queue_t *q, void *item)
{
    int rc = store_reserve(q);
    if (rc != 0)
        return rc;
    if (q->kind == WEFT_QUEUE_PRIORITY)
        pq_push(q, item);
    else
        q->items[(q->head + q->count) & (q->cap - 1)] = item;
    q->count++;
    return 0;
}

static void *store_pop(weft_queue_t *q)
{
    WEFT_ASSERT(q->count > 0);
    void *item;
    switch (q->kind) {
    case WEFT_QUEUE_PRIORITY:
        item = pq_pop(q);
        break;
    case WEFT_QUEUE_LIFO:
        item = q->items[(q->head + q->count - 1) & (q->cap - 1)];
        break;
    default:
        item = q->items[q->head];
        q->head = (q->head + 1) & (q->cap - 1);
        break;
    }
    q->count--;
    return item;
}

/* ---- waking (under mu) --------------------------------------------------- */

/* asyncio's _wakeup_next: the first waiter not cancelled. */
static void wake_next(weft__waitq_t *wq)
{
    weft__waiter_t *w = weft__waitq_first_live(wq);
    if (w != NULL)
        weft__waitq_grant(wq, w, NULL);
}

static int put_locked(weft_queue_t *q, void *item)
{
    int rc = store_push(q, item);
    if (rc != 0)
        return rc;
    q->unfinished++;
    wake_next(&q->getters);
    return 0;
}

static void *get_locked(weft_queue_t *q)
{
    void *item = store_pop(q);
    wake_next(&q->putters);
    return item;
}

/* ---- put / get ------------------------------------------------------------ */

/* The wait shared by put and get: link w (at the back the first time, at
 * the front after a wake that found nothing for it) and park.  Returns 0
 * to re-check, or WEFT_ECANCELED (w unlinked; a wake it had received
 * passed on when `left` says something is still there for the next). */
static int queue_wait(weft_queue_t *q, weft__waitq_t *wq, weft__waiter_t *w,
                      weft__waitq_undo_t *undo, bool *waited)
{
    weft_task_t *t = w->task;
    if (!w->linked) {
        if (!*waited) {
            /* First wait: a request pending on entry is delivered here. */
            if (weft__task_take_cancel(t))
                return WEFT_ECANCELED;
            weft__waitq_enter(&q->mu, wq, w, undo);
            *waited = true;
        } else {
            weft__waitq_push_front(wq, w);
        }
    }
    if (!weft__waitq_park(&q->mu, t))
        return 0;
    if (w->linked) {
        weft__waitq_remove(wq, w);
    } else if (w->granted) {
        bool left = wq == &q->getters ? q->count > 0 : !q_full(q);
        if (left)
            wake_next(wq);
    }
    return WEFT_ECANCELED;
}

int weft_queue_put(weft_queue_t *q, void *item)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return weft__not_in_task("weft_queue_put");
    if (q == NULL)
        return -EINVAL;
    weft__waiter_t w = {.task = t};
    weft__waitq_undo_t undo; /* filled in by weft__waitq_enter */
    bool waited = false;
    int rc;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        if (q->shutdown) {
            rc = WEFT_EQSHUTDOWN;
            break;
        }
        if (!q_full(q)) {
            rc = put_locked(q, item);
            if (rc != 0 && w.granted)
                wake_next(&q->putters); /* the slot we were woken for */
            break;
        }
        rc = queue_wait(q, &q->putters, &w, &undo, &waited);
        if (rc != 0)
            break;
    }
    if (w.linked)
        weft__waitq_remove(&q->putters, &w); /* woken spuriously into a free slot */
    if (waited)
        q->putters.busy--;
    pthread_mutex_unlock(&q->mu);
    if (waited)
        weft__task_park_undo(t, NULL, NULL, NULL);
    return rc;
}

int weft_queue_get(weft_queue_t *q, void **item)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return weft__not_in_task("weft_queue_get");
    if (q == NULL || item == NULL)
        return -EINVAL;
    weft__waiter_t w = {.task = t};
    weft__waitq_undo_t undo; /* filled in by weft__waitq_enter */
    bool waited = false;
    int rc;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        if (q->count > 0) {
            *item = get_locked(q);
            rc = 0;
            break;
        }
        if (q->shutdown) {
            rc = WEFT_EQSHUTDOWN;
            break;
        }
        rc = queue_wait(q, &q->getters, &w, &undo, &waited);
        if (rc != 0)
            break;
    }
    if (w.linked)
        weft__waitq_remove(&q->getters, &w);
    if (waited)
        q->getters.busy--;
    pthread_mutex_unlock(&q->mu);
    if (waited)
        weft__task_park_undo(t, NULL, NULL, NULL);
    return rc;
}

int weft_queue_put_nowait(weft_queue_t *q, void *item)
{
    if (q == NULL)
        return -EINVAL;
    int rc;
    pthread_mutex_lock(&q->mu);
    if (q->shutdown)
        rc = WEFT_EQSHUTDOWN;
    else if (q_full(q))
        rc = WEFT_EQUEUEFULL;
    else
        rc = put_locked(q, item);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int weft_queue_get_nowait(weft_queue_t *q, void **item)
{
    if (q == NULL || item == NULL)
        return -EINVAL;
    int rc = 0;
    pthread_mutex_lock(&q->mu);
    if (q->count > 0)
        *item = get_locked(q);
    else
        rc = q->shutdown ? WEFT_EQSHUTDOWN : WEFT_EQUEUEEMPTY;
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* ---- sizes ------------------------------------------------------------- */

size_t weft_queue_qsize(const weft_queue_t *cq)
{
    if (cq == NULL)
        return 0;
    weft_queue_t *q = (weft_queue_t *)cq;
    pthread_mutex_lock(&q->mu);
    size_t n = q->count;
    pthread_mutex_unlock(&q->mu);
    return n;
}

bool weft_queue_empty(const weft_queue_t *q)
{
    return weft_queue_qsize(q) == 0;
}

bool weft_queue_full(const weft_queue_t *cq)
{
    if (cq == NULL)
        return false;
    weft_queue_t *q = (weft_queue_t *)cq;
    pthread_mutex_lock(&q->mu);
    bool full = q_full(q);
    pthread_mutex_unlock(&q->mu);
    return full;
}

size_t weft_queue_maxsize(const weft_queue_t *q)
{
    return q != NULL ? q->maxsize : 0;
}

/* ---- task_done / join ---------------------------------------------------- */

int weft_queue_task_done(weft_queue_t *q)
{
    if (q == NULL)
        return -EINVAL;
    int rc = 0;
    pthread_mutex_lock(&q->mu);
    if (q->unfinished == 0)
        rc = -EINVAL; /* asyncio: ValueError('task_done() called too many times') */
    else if (--q->unfinished == 0)
        weft__waitq_grant_all(&q->joiners, NULL);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int weft_queue_join(weft_queue_t *q)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return weft__not_in_task("weft_queue_join");
    if (q == NULL)
        return -EINVAL;
    pthread_mutex_lock(&q->mu);
    if (q->unfinished == 0) {
        pthread_mutex_unlock(&q->mu);
        return 0;
    }
    if (weft__task_take_cancel(t)) {
        pthread_mutex_unlock(&q->mu);
        return WEFT_ECANCELED;
    }
    weft__waiter_t w = {.task = t};
    weft__waitq_undo_t undo;
    weft__waitq_enter(&q->mu, &q->joiners, &w, &undo);
    /* asyncio waits on an Event here: a cancellation wins. */
    int rc = weft__waitq_wait_granted(&q->mu, &q->joiners, &w);
    q->joiners.busy--;
    pthread_mutex_unlock(&q->mu);
    weft__task_park_undo(t, NULL, NULL, NULL);
    return rc;
}

/* ---- shutdown and free --------------------------------------------------- */

int weft_queue_shutdown(weft_queue_t *q, bool immediate)
{
    if (q == NULL)
        return -EINVAL;
    pthread_mutex_lock(&q->mu);
    q->shutdown = true;
    if (immediate) {
        while (q->count > 0) {
            (void)store_pop(q);
            if (q->unfinished > 0)
                q->unfinished--;
        }
        if (q->unfinished == 0)
            weft__waitq_grant_all(&q->joiners, NULL);
    }
    /* Every blocked get and put re-checks and sees the shutdown. */
    weft__waitq_grant_all(&q->getters, NULL);
    weft__waitq_grant_all(&q->putters, NULL);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

void weft_queue_free(weft_queue_t *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->mu);
    size_t n = q->getters.busy + q->putters.busy + q->joiners.busy;
    pthread_mutex_unlock(&q->mu);
    if (!weft__free_allowed("weft_queue_free", "queue", q, n))
        return;
    pthread_mutex_destroy(&q->mu);
    weft__free(q->items);
    weft__free(q->heap);
    weft__free(q);
}

size_t weft__queue_nwaiters(weft_queue_t *q, int which)
{
    weft__waitq_t *wq = which == 0 ? &q->getters : which == 1 ? &q->putters : &q->joiners;
    return weft__waitq_len(&q->mu, wq);
}
