/* weft — per-worker run queue and inject queue.  Theory in runq.h. */
#include "sched/runq.h"

static inline uint32_t head_real(uint64_t h)
{
    return (uint32_t)h;
}

static inline uint32_t head_steal(uint64_t h)
{
    return (uint32_t)(h >> 32);
}

static inline uint64_t pack(uint32_t steal, uint32_t real)
{
    return ((uint64_t)steal << 32) | real;
}

/* ---- inject queue -------------------------------------------------------- */

void weft__inject_init(weft_inject_t *q)
{
    pthread_mutex_init(&q->lock, NULL);
    q->head = q->tail = NULL;
    atomic_init(&q->len, 0);
}

void weft__inject_destroy(weft_inject_t *q)
{
    WEFT_ASSERT(q->head == NULL);
    pthread_mutex_destroy(&q->lock);
}

void weft__inject_push_batch(weft_inject_t *q, weft_runnable_t *first, weft_runnable_t *last,
                             size_t n)
{
    last->inject_next = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->tail != NULL)
        q->tail->inject_next = first;
    else
        q->head = first;
    q->tail = last;
    /* seq_cst: pairs with weft__inject_empty_sc() of a parking worker
     * (worker.h); the writer holds the lock, so load + store is exact. */
    atomic_store_explicit(&q->len, atomic_load_explicit(&q->len, memory_order_relaxed) + n,
                          memory_order_seq_cst);
    pthread_mutex_unlock(&q->lock);
}

void weft__inject_push(weft_inject_t *q, weft_runnable_t *r)
{
    weft__inject_push_batch(q, r, r, 1);
}

weft_runnable_t *weft__inject_pop(weft_inject_t *q)
{
    if (weft__inject_empty(q))
        return NULL;
    pthread_mutex_lock(&q->lock);
    weft_runnable_t *r = q->head;
    if (r != NULL) {
        q->head = r->inject_next;
        if (q->head == NULL)
            q->tail = NULL;
        atomic_store_explicit(&q->len, atomic_load_explicit(&q->len, memory_order_relaxed) - 1,
                              memory_order_relaxed);
    }
    pthread_mutex_unlock(&q->lock);
    return r;
}

weft_runnable_t *weft__inject_pop_batch(weft_inject_t *q, size_t max, size_t *n)
{
    *n = 0;
    if (weft__inject_empty(q))
        return NULL;
    pthread_mutex_lock(&q->lock);
    weft_runnable_t *first = q->head, *last = NULL;
    size_t got = 0;
    for (weft_runnable_t *r = first; r != NULL && got < max; r = r->inject_next) {
        last = r;
        got++;
    }
    if (got != 0) {
        q->head = last->inject_next;
        if (q->head == NULL)
            q->tail = NULL;
        last->inject_next = NULL;
        atomic_store_explicit(&q->len, atomic_load_explicit(&q->len, memory_order_relaxed) - got,
                              memory_order_relaxed);
    }
    pthread_mutex_unlock(&q->lock);
    *n = got;
    return got != 0 ? first : NULL;
}

/* ---- local ring ---------------------------------------------------------- */

void weft__runq_init(weft_runq_t *q)
{
    atomic_init(&q->head, 0);
    atomic_init(&q->tail, 0);
    for (uint32_t i = 0; i < WEFT__RUNQ_CAP; i++)
        atomic_init(&q->slots[i], NULL);
}

uint32_t weft__runq_len(weft_runq_t *q)
{
    uint64_t h = atomic_load_explicit(&q->head, memory_order_acquire);
    uint32_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
    return t - head_real(h);
}

/* The ring is full and no thief is copying: claim the older half by moving
 * `real` past it, then hand those tasks and r to the inject queue.
 * Returns false if a pop or steal moved head meanwhile (caller retries). */
static bool push_overflow(weft_runq_t *q, weft_runnable_t *r, uint32_t real, uint32_t tail,
                          weft_inject_t *inject)
{
    const uint32_t half = WEFT__RUNQ_CAP / 2;
    WEFT_ASSERT(tail - real == WEFT__RUNQ_CAP);
    uint64_t expected = pack(real, real);
    /* acq_rel: acquire so no thief's claim is missed; release is harmless. */
    if (!atomic_compare_exchange_strong_explicit(&q->head, &expected,
                                                 pack(real + half, real + half),
                                                 memory_order_acq_rel, memory_order_acquire))
        return false;
    /* The claimed slots are ours now: link them in queue order, then r. */
    weft_runnable_t *first =
        atomic_load_explicit(&q->slots[real & WEFT__RUNQ_MASK], memory_order_relaxed);
    weft_runnable_t *prev = first;
    for (uint32_t i = 1; i < half; i++) {
        weft_runnable_t *cur =
            atomic_load_explicit(&q->slots[(real + i) & WEFT__RUNQ_MASK], memory_order_relaxed);
        prev->inject_next = cur;
        prev = cur;
    }
    prev->inject_next = r;
    weft__inject_push_batch(inject, first, r, half + 1);
    return true;
}

void weft__runq_push(weft_runq_t *q, weft_runnable_t *r, weft_inject_t *overflow)
{
    for (;;) {
        /* acquire: see thieves' progress so freed slots can be reused. */
        uint64_t h = atomic_load_explicit(&q->head, memory_order_acquire);
        uint32_t steal = head_steal(h), real = head_real(h);
        /* Relaxed: only the owner writes tail. */
        uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
        if (tail - steal < WEFT__RUNQ_CAP) {
            atomic_store_explicit(&q->slots[tail & WEFT__RUNQ_MASK], r, memory_order_relaxed);
            /* release: publishes the slot before tail moves; pairs with the
             * acquire load of tail in weft__runq_steal_into(). */
            atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
            return;
        }
        if (steal != real) {
            /* A thief is copying and will soon free half the ring; rather
             * than wait for it, send this one task to the shared queue. */
            weft__inject_push(overflow, r);
            return;
        }
        if (push_overflow(q, r, real, tail, overflow))
            return;
        /* head moved under us (a thief claimed): look again. */
    }
}

weft_runnable_t *weft__runq_pop(weft_runq_t *q)
{
    uint64_t h = atomic_load_explicit(&q->head, memory_order_acquire);
    for (;;) {
        uint32_t steal = head_steal(h), real = head_real(h);
        uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
        if (real == tail)
            return NULL;
        uint32_t next_real = real + 1;
        /* With no thief active, steal follows real; otherwise the thief's
         * claim start stays put until it finishes. */
        uint32_t next_steal = steal == real ? next_real : steal;
        if (atomic_compare_exchange_weak_explicit(&q->head, &h, pack(next_steal, next_real),
                                                  memory_order_acq_rel, memory_order_acquire))
            return atomic_load_explicit(&q->slots[real & WEFT__RUNQ_MASK], memory_order_relaxed);
    }
}

weft_runnable_t *weft__runq_steal_into(weft_runq_t *src, weft_runq_t *dst)
{
    uint32_t dst_tail = atomic_load_explicit(&dst->tail, memory_order_relaxed);
    uint64_t dst_head = atomic_load_explicit(&dst->head, memory_order_acquire);
    /* Copy only into free room (dst is normally empty when stealing). */
    if (dst_tail - head_steal(dst_head) > WEFT__RUNQ_CAP / 2)
        return NULL;

    /* Phase 1: claim half of src's queued tasks by moving its `real`
     * forward while leaving `steal` at the claim's start. */
    uint64_t h = atomic_load_explicit(&src->head, memory_order_acquire);
    uint32_t n, real;
    for (;;) {
        uint32_t steal = head_steal(h);
        real = head_real(h);
        if (steal != real)
            return NULL; /* another thief is copying */
        /* acquire: pairs with the owner's release store of tail, so the
         * slots below tail are visible. */
        uint32_t tail = atomic_load_explicit(&src->tail, memory_order_acquire);
        n = tail - real;
        n -= n / 2; /* half, rounded up, so a queue of one can be stolen */
        if (n == 0)
            return NULL;
        if (n > WEFT__RUNQ_CAP / 2)
            n = WEFT__RUNQ_CAP / 2;
        if (atomic_compare_exchange_weak_explicit(&src->head, &h, pack(real, real + n),
                                                  memory_order_acq_rel, memory_order_acquire))
            break;
    }

    /* Phase 2: copy the claimed tasks; the owner cannot overwrite them
     * (invariant 1). */
    for (uint32_t i = 0; i < n; i++) {
        weft_runnable_t *r =
            atomic_load_explicit(&src->slots[(real + i) & WEFT__RUNQ_MASK], memory_order_relaxed);
        atomic_store_explicit(&dst->slots[(dst_tail + i) & WEFT__RUNQ_MASK], r,
                              memory_order_relaxed);
    }

    /* Phase 3: release the claim: steal catches up with real.  The owner
     * may have popped meanwhile (moving real), so retry on failure. */
    h = atomic_load_explicit(&src->head, memory_order_acquire);
    for (;;) {
        uint64_t next = pack(head_real(h), head_real(h));
        if (atomic_compare_exchange_weak_explicit(&src->head, &h, next, memory_order_acq_rel,
                                                  memory_order_acquire))
            break;
    }

    /* Keep the last one to run now; publish the rest in dst. */
    n--;
    weft_runnable_t *ret =
        atomic_load_explicit(&dst->slots[(dst_tail + n) & WEFT__RUNQ_MASK], memory_order_relaxed);
    if (n != 0)
        /* release: publishes the copied slots; pairs with thieves of dst. */
        atomic_store_explicit(&dst->tail, dst_tail + n, memory_order_release);
    return ret;
}
