/* weft — Lock, Event, Condition, Semaphore and Barrier (include/weft/sync.h),
 * after asyncio's locks.py, for tasks running in parallel.
 *
 * Every primitive keeps its waiting tasks in a FIFO waiter queue under its
 * own pthread mutex (sched/waitq.h has the protocol: nodes on the waiters'
 * stacks, grants recorded and woken under the mutex, waiters re-evaluating
 * under the mutex after every wake).  The mutex is never held across a
 * suspension.  Lock order: a condition's mutex, then its lock's mutex
 * (notify moves waiters from one queue to the other); no other two are
 * ever held together.
 *
 * Lock: theory of operation.  `st` holds two bits, HELD and QUEUED.
 *   - Uncontended acquire is one CAS 0 -> HELD, uncontended release one
 *     CAS HELD -> 0; both fail whenever QUEUED is set, so
 *   - every change of st while QUEUED is set, and every change of QUEUED,
 *     happens under mu.
 * Invariants:
 *   1. QUEUED is set whenever q is not empty (it may be set, under mu, a
 *      moment before the first waiter links).
 *   2. A release that finds a live waiter (no cancellation pending) hands
 *      the lock to it: HELD stays set and the waiter is granted; so a lock
 *      with live waiters is free only while a waiter skipped as cancelled
 *      had its request withdrawn, until that waiter re-evaluates (it
 *      resumes for the request) and takes the lock itself.
 *   3. acquire takes a free lock only when no live waiter is queued
 *      (asyncio: "jumping the queue if all are cancelled").
 */
#include "sched/waitq.h"

#include <limits.h>
#include <stdlib.h>

#include "weft/sync.h"

/* ======================================================================= */
/* Lock                                                                     */
/* ======================================================================= */

enum { LOCK_HELD = 1u, LOCK_QUEUED = 2u };

struct weft_lock {
    atomic_uint st;
    pthread_mutex_t mu;
    weft__waitq_t q;
};

int weft_lock_new(weft_lock_t **out)
{
    if (out == NULL)
        return -EINVAL;
    weft_lock_t *lk = weft__calloc(1, sizeof *lk);
    if (lk == NULL)
        return -ENOMEM;
    atomic_init(&lk->st, 0);
    pthread_mutex_init(&lk->mu, NULL);
    weft__waitq_init(&lk->q);
    *out = lk;
    return 0;
}

/* Under mu: QUEUED follows q (invariant 1), HELD as given.  release pairs
 * with the acquire CAS of a fast-path acquire that may follow. */
static void lock_set_state(weft_lock_t *lk, bool held)
{
    unsigned s = (held ? LOCK_HELD : 0u) | (lk->q.head != NULL ? LOCK_QUEUED : 0u);
    atomic_store_explicit(&lk->st, s, memory_order_release);
}

/* Under mu, lock held: pass it to the first live waiter, or free it. */
static void lock_release_locked(weft_lock_t *lk, const weft_task_t *self)
{
    weft__waiter_t *w = weft__waitq_first_live(&lk->q);
    if (w != NULL)
        weft__waitq_grant(&lk->q, w, self);
    lock_set_state(lk, w != NULL);
}

/* Under mu: if the lock is free, give it to the first live waiter
 * (asyncio's _wake_up_first after a cancelled waiter left, and the
 * re-evaluation of invariant 2). */
static void lock_dispatch(weft_lock_t *lk, const weft_task_t *self)
{
    unsigned s = atomic_load_explicit(&lk->st, memory_order_relaxed);
    if (s & LOCK_HELD) {
        lock_set_state(lk, true);
        return;
    }
    lock_release_locked(lk, self);
}

/* Under mu: take the lock if a newcomer may (free, and no live waiter).
 * The CAS only races with the fast paths, which work while QUEUED is
 * clear. */
static bool lock_try_take_locked(weft_lock_t *lk, unsigned *sp)
{
    unsigned s = atomic_load_explicit(&lk->st, memory_order_acquire);
    while (!(s & LOCK_HELD) && weft__waitq_first_live(&lk->q) == NULL) {
        /* acquire: pairs with the release that freed the lock. */
        if (atomic_compare_exchange_weak_explicit(&lk->st, &s, s | LOCK_HELD, memory_order_acquire,
                                                  memory_order_acquire))
            return true;
    }
    *sp = s;
    return false;
}

/* Under mu: take the lock as lock_try_take_locked, or else make sure
 * QUEUED is set, so that the holder's release comes to mu. */
static bool lock_take_or_mark(weft_lock_t *lk)
{
    unsigned s;
    for (;;) {
        if (lock_try_take_locked(lk, &s))
            return true;
        if (s & LOCK_QUEUED)
            return false;
        if (atomic_compare_exchange_weak_explicit(&lk->st, &s, s | LOCK_QUEUED,
                                                  memory_order_relaxed, memory_order_relaxed))
            return false;
    }
}

/* Under mu, w linked in lk->q (and counted in busy): wait until it is
 * granted the lock.  cancellable false (a condition taking its lock back):
 * requests are taken and counted in *cancels while the wait goes on.
 * Returns 0 (held) or WEFT_ECANCELED (not held), with w unlinked and out of
 * busy. */
static int lock_wait_linked(weft_lock_t *lk, weft_task_t *t, weft__waiter_t *w, bool cancellable,
                            int *cancels)
{
    int rc;
    for (;;) {
        /* The lock may be free for us: a waiter skipped by a release while
         * a request was pending resumes here (invariant 2), and so does a
         * condition waiter moved here while it was being cancelled. */
        if (!w->granted)
            lock_dispatch(lk, t);
        if (w->granted) {
            rc = 0;
            break;
        }
        bool cancelled = weft__waitq_park(&lk->mu, t);
        if (cancelled && !cancellable) {
            (*cancels)++;
            cancelled = false;
        }
        if (w->granted) {
            rc = 0;
            if (cancelled) {
                /* Handed the lock and cancelled: the cancellation wins
                 * and the lock goes to the next waiter (asyncio). */
                lock_release_locked(lk, t);
                rc = WEFT_ECANCELED;
            }
            break;
        }
        if (cancelled) {
            weft__waitq_remove(&lk->q, w);
            lock_dispatch(lk, t);
            rc = WEFT_ECANCELED;
            break;
        }
    }
    WEFT_ASSERT(!w->linked);
    lk->q.busy--;
    return rc;
}

/* The waiting part of acquire, after the fast path failed.  Arguments as
 * lock_wait_linked. */
static int lock_acquire_slow(weft_lock_t *lk, weft_task_t *t, bool cancellable, int *cancels)
{
    pthread_mutex_lock(&lk->mu);
    if (lock_take_or_mark(lk)) {
        pthread_mutex_unlock(&lk->mu);
        return 0;
    }
    if (cancellable && weft__task_take_cancel(t)) {
        lock_set_state(lk, atomic_load_explicit(&lk->st, memory_order_relaxed) & LOCK_HELD);
        pthread_mutex_unlock(&lk->mu);
        return WEFT_ECANCELED;
    }
    weft__waiter_t w = {.task = t};
    weft__waitq_undo_t undo;
    weft__waitq_enter(&lk->mu, &lk->q, &w, &undo);
    int rc = lock_wait_linked(lk, t, &w, cancellable, cancels);
    pthread_mutex_unlock(&lk->mu);
    weft__task_park_undo(t, NULL, NULL, NULL);
    return rc;
}

/* Under mu, after waiters were linked into lk->q by someone else (a
 * condition's notify): set QUEUED, so the holder's release comes to mu,
 * and if the lock turns out to be free, hand it out now. */
static void lock_after_requeue(weft_lock_t *lk)
{
    unsigned s = atomic_load_explicit(&lk->st, memory_order_relaxed);
    while (!(s & LOCK_QUEUED)) {
        if (atomic_compare_exchange_weak_explicit(&lk->st, &s, s | LOCK_QUEUED,
                                                  memory_order_relaxed, memory_order_relaxed))
            s |= LOCK_QUEUED;
    }
    /* With QUEUED set st changes only under mu: dispatch may store it. */
    lock_dispatch(lk, NULL);
}

int weft_lock_acquire(weft_lock_t *lk)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return weft__not_in_task("weft_lock_acquire");
    if (lk == NULL)
        return -EINVAL;
    unsigned expected = 0;
    /* acquire: pairs with the release CAS / store that freed the lock. */
    if (atomic_compare_exchange_strong_explicit(&lk->st, &expected, LOCK_HELD, memory_order_acquire,
                                                memory_order_relaxed))
        return 0;
    return lock_acquire_slow(lk, t, true, NULL);
}

int weft_lock_try_acquire(weft_lock_t *lk)
{
    if (lk == NULL)
        return -EINVAL;
    unsigned expected = 0;
    if (atomic_compare_exchange_strong_explicit(&lk->st, &expected, LOCK_HELD, memory_order_acquire,
                                                memory_order_relaxed))
        return 0;
    if (expected == LOCK_HELD)
        return -EBUSY;
    pthread_mutex_lock(&lk->mu);
    unsigned s;
    bool taken = lock_try_take_locked(lk, &s);
    pthread_mutex_unlock(&lk->mu);
    return taken ? 0 : -EBUSY;
}

int weft_lock_release(weft_lock_t *lk)
{
    if (lk == NULL)
        return -EINVAL;
    unsigned expected = LOCK_HELD;
    /* release: publishes the critical section to the next acquirer. */
    if (atomic_compare_exchange_strong_explicit(&lk->st, &expected, 0, memory_order_release,
                                                memory_order_relaxed))
        return 0;
    if (!(expected & LOCK_HELD))
        return WEFT_EINVALSTATE; /* HELD moves under mu once QUEUED is set */
    pthread_mutex_lock(&lk->mu);
    int rc = 0;
    if (atomic_load_explicit(&lk->st, memory_order_relaxed) & LOCK_HELD)
        lock_release_locked(lk, NULL);
    else
        rc = WEFT_EINVALSTATE;
    pthread_mutex_unlock(&lk->mu);
    return rc;
}

bool weft_lock_locked(const weft_lock_t *lk)
{
    if (lk == NULL)
        return false;
    return atomic_load_explicit(&((weft_lock_t *)lk)->st, memory_order_acquire) & LOCK_HELD;
}

void weft_lock_free(weft_lock_t *lk)
{
    if (lk == NULL)
        return;
    pthread_mutex_lock(&lk->mu);
    size_t n = lk->q.busy;
    pthread_mutex_unlock(&lk->mu);
    if (!weft__free_allowed("weft_lock_free", "lock", lk, n))
        return;
    pthread_mutex_destroy(&lk->mu);
    weft__free(lk);
}

size_t weft__lock_nwaiters(weft_lock_t *lk)
{
    return weft__waitq_len(&lk->mu, &lk->q);
}

/* ======================================================================= */
/* Event                                                                    */
/* ======================================================================= */

struct weft_event {
    atomic_bool flag; /* changed under mu; read without it by is_set/wait */
    pthread_mutex_t mu;
    weft__waitq_t q;
};

int weft_event_new(weft_event_t **out)
{
    if (out == NULL)
        return -EINVAL;
    weft_event_t *e = weft__calloc(1, sizeof *e);
    if (e == NULL)
        return -ENOMEM;
    atomic_init(&e->flag, false);
    pthread_mutex_init(&e->mu, NULL);
    weft__waitq_init(&e->q);
    *out = e;
    return 0;
}

int weft_event_set(weft_event_t *e)
{
    if (e == NULL)
        return -EINVAL;
    pthread_mutex_lock(&e->mu);
    if (!atomic_load_explicit(&e->flag, memory_order_relaxed)) {
        /* release: pairs with the acquire load in weft_event_wait. */
        atomic_store_explicit(&e->flag, true, memory_order_release);
        /* Every waiter, cancelled or not: one with a request pending
         * returns WEFT_ECANCELED anyway, one whose request was withdrawn
         * must not miss this set. */
        weft__waitq_grant_all(&e->q, NULL);
    }
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int weft_event_clear(weft_event_t *e)
{
    if (e == NULL)
        return -EINVAL;
    pthread_mutex_lock(&e->mu);
    atomic_store_explicit(&e->flag, false, memory_order_relaxed);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int weft_event_wait(weft_event_t *e)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return weft__not_in_task("weft_event_wait");
    if (e == NULL)
        return -EINVAL;
    if (atomic_load_explicit(&e->flag, memory_order_acquire))
        return 0;
    pthread_mutex_lock(&e->mu);
    if (atomic_load_explicit(&e->flag, memory_order_relaxed)) {
        pthread_mutex_unlock(&e->mu);
        return 0;
    }
    if (weft__task_take_cancel(t)) {
        pthread_mutex_unlock(&e->mu);
        return WEFT_ECANCELED;
    }
    weft__waiter_t w = {.task = t};
    weft__waitq_undo_t undo;
    weft__waitq_enter(&e->mu, &e->q, &w, &undo);
    /* asyncio: a set that meets a cancellation loses. */
    int rc = weft__waitq_wait_granted(&e->mu, &e->q, &w);
    e->q.busy--;
    pthread_mutex_unlock(&e->mu);
    weft__task_park_undo(t, NULL, NULL, NULL);
    return rc;
}

bool weft_event_is_set(const weft_event_t *e)
{
    if (e == NULL)
        return false;
    return atomic_load_explicit(&((weft_event_t *)e)->flag, memory_order_acquire);
}

void weft_event_free(weft_event_t *e)
{
    if (e == NULL)
        return;
    pthread_mutex_lock(&e->mu);
    size_t n = e->q.busy;
    pthread_mutex_unlock(&e->mu);
    if (!weft__free_allowed("weft_event_free", "event", e, n))
        return;
    pthread_mutex_destroy(&e->mu);
    weft__free(e);
}

size_t weft__event_nwaiters(weft_event_t *e)
{
    return weft__waitq_len(&e->mu, &e->q);
}

/* ======================================================================= */
/* Condition                                                                */
/* ======================================================================= */

struct weft_cond {
    weft_lock_t *lock;
    bool own_lock;
    pthread_mutex_t mu; /* guards q; taken before lock->mu, never after */
    weft__waitq_t q;
};

int weft_cond_new(weft_lock_t *lock, weft_cond_t **out)
{
    if (out == NULL)
        return -EINVAL;
    weft_cond_t *c = weft__calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    if (lock == NULL) {
        int rc = weft_lock_new(&c->lock);
        if (rc != 0) {
            weft__free(c);
            return rc;
        }
        c->own_lock = true;
    } else {
        c->lock = lock;
    }
    pthread_mutex_init(&c->mu, NULL);
    weft__waitq_init(&c->q);
    *out = c;
    return 0;
}

int weft_cond_acquire(weft_cond_t *c)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return weft__not_in_task("weft_cond_acquire");
    if (c == NULL)
        return -EINVAL;
    return weft_lock_acquire(c->lock);
}

int weft_cond_try_acquire(weft_cond_t *c)
{
    return c != NULL ? weft_lock_try_acquire(c->lock) : -EINVAL;
}

int weft_cond_release(weft_cond_t *c)
{
    return c != NULL ? weft_lock_release(c->lock) : -EINVAL;
}

bool weft_cond_locked(const weft_cond_t *c)
{
    return c != NULL && weft_lock_locked(c->lock);
}

/* Theory of operation (wait morphing).  A waiter links a cond_waiter_t
 * into c->q, then releases the lock.  notify does not wake it: holding
 * c->mu and then lock->mu, it moves the node to the back of the lock's
 * queue (moved = true, its abandon-undo retargeted), where the waiter is
 * granted the lock by a release like any other lock waiter and woken
 * only then.  So notified waiters take the lock back in notify order, and
 * notify_all does not wake a herd that would fight over the lock (asyncio
 * gets the same order for free on one thread).
 * Invariants:
 *   1. `moved` is written under both mutexes, so the waiter may read it
 *      under either; before it is set the node belongs to c->q (and
 *      c->q.busy), after it to lock->q (and lock->q.busy).
 *   2. A waiter that finds itself moved waits for the lock without being
 *      cancellable: requests are counted and reported once the lock is
 *      held (asyncio re-acquires in a loop that swallows CancelledError).
 */
typedef struct cond_waiter {
    weft__waiter_t w; /* first: recovered from the queue node */
    weft__waitq_undo_t undo;
    bool moved;
} cond_waiter_t;

/* Under c->mu: move up to n live waiters, oldest first, to the lock. */
static int cond_notify_locked(weft_cond_t *c, int n)
{
    weft_lock_t *lk = c->lock;
    int moved = 0;
    pthread_mutex_lock(&lk->mu);
    while (moved < n) {
        weft__waiter_t *w = weft__waitq_first_live(&c->q);
        if (w == NULL)
            break;
        cond_waiter_t *cw = weft__container_of(w, cond_waiter_t, w);
        weft__waitq_remove(&c->q, w);
        c->q.busy--;
        cw->moved = true;
        cw->undo = (weft__waitq_undo_t){&lk->mu, &lk->q};
        weft__waitq_push_back(&lk->q, w);
        lk->q.busy++;
        moved++;
    }
    if (moved > 0)
        lock_after_requeue(lk);
    pthread_mutex_unlock(&lk->mu);
    return moved;
}

int weft_cond_wait(weft_cond_t *c)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return weft__not_in_task("weft_cond_wait");
    if (c == NULL)
        return -EINVAL;
    weft_lock_t *lk = c->lock;
    if (!weft_lock_locked(lk))
        return WEFT_EINVALSTATE;
    /* A request pending on entry is delivered here, before the lock is
     * let go: the caller gets WEFT_ECANCELED with the lock held, as it
     * would after a wait. */
    if (weft__task_take_cancel(t))
        return WEFT_ECANCELED;

    /* Link before releasing: a notify needs the lock, so none can come
     * between the release and the link and be missed. */
    cond_waiter_t cw = {.w = {.task = t}};
    pthread_mutex_lock(&c->mu);
    weft__waitq_enter(&c->mu, &c->q, &cw.w, &cw.undo);
    pthread_mutex_unlock(&c->mu);
    int bad = weft_lock_release(lk); /* only if someone else released it */

    int cancels = 0;
    pthread_mutex_lock(&c->mu);
    while (!cw.moved && bad == 0) {
        if (weft__waitq_park(&c->mu, t)) {
            cancels++;
            break;
        }
    }
    bool notified = cw.moved;
    if (!notified) {
        weft__waitq_remove(&c->q, &cw.w);
        c->q.busy--;
    }
    pthread_mutex_unlock(&c->mu);
    if (bad != 0 && !notified) {
        /* The caller did not hold the lock after all: nothing to undo. */
        weft__task_park_undo(t, NULL, NULL, NULL);
        return bad;
    }

    /* Take the lock back, cancelled or not (asyncio's finally clause). */
    if (notified) {
        pthread_mutex_lock(&lk->mu);
        (void)lock_wait_linked(lk, t, &cw.w, false, &cancels);
        pthread_mutex_unlock(&lk->mu);
        weft__task_park_undo(t, NULL, NULL, NULL);
    } else {
        weft__task_park_undo(t, NULL, NULL, NULL);
        unsigned expected = 0;
        if (!atomic_compare_exchange_strong_explicit(&lk->st, &expected, LOCK_HELD,
                                                     memory_order_acquire, memory_order_relaxed))
            (void)lock_acquire_slow(lk, t, false, &cancels);
    }

    if (bad != 0) {
        /* Moved to the lock by a notify before we saw the failure: give
         * back the lock it got us. */
        (void)weft_lock_release(lk);
        return bad;
    }
    if (cancels == 0)
        return 0;
    if (notified) {
        /* Notified and cancelled: hand the notification to another
         * waiter so none is lost (asyncio's _notify(1)). */
        pthread_mutex_lock(&c->mu);
        (void)cond_notify_locked(c, 1);
        pthread_mutex_unlock(&c->mu);
    }
    return WEFT_ECANCELED;
}

int weft_cond_wait_for(weft_cond_t *c, bool (*pred)(void *arg), void *arg)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return weft__not_in_task("weft_cond_wait_for");
    if (c == NULL || pred == NULL)
        return -EINVAL;
    while (!pred(arg)) {
        int rc = weft_cond_wait(c);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int weft_cond_notify(weft_cond_t *c, int n)
{
    if (c == NULL)
        return -EINVAL;
    if (!weft_lock_locked(c->lock))
        return WEFT_EINVALSTATE;
    if (n <= 0)
        return 0;
    pthread_mutex_lock(&c->mu);
    int woken = cond_notify_locked(c, n);
    pthread_mutex_unlock(&c->mu);
    return woken;
}

int weft_cond_notify_all(weft_cond_t *c)
{
    return weft_cond_notify(c, INT_MAX);
}

void weft_cond_free(weft_cond_t *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    size_t n = c->q.busy;
    pthread_mutex_unlock(&c->mu);
    if (c->own_lock) {
        pthread_mutex_lock(&c->lock->mu);
        n += c->lock->q.busy;
        pthread_mutex_unlock(&c->lock->mu);
    }
    if (!weft__free_allowed("weft_cond_free", "condition", c, n))
        return;
    if (c->own_lock)
        weft_lock_free(c->lock);
    pthread_mutex_destroy(&c->mu);
    weft__free(c);
}

size_t weft__cond_nwaiters(weft_cond_t *c)
{
    return weft__waitq_len(&c->mu, &c->q);
}

/* ======================================================================= */
/* Semaphore                                                                */
/* ======================================================================= */

/* asyncio 3.12+'s accounting: `value` counts permits nobody holds or has
 * been granted; a grant takes its permit out of `value` at once
 * (_wake_up_next), so a waiter that was granted and then cancelled puts it
 * back.  A newcomer may take a permit without waiting only when no live
 * waiter is queued (FIFO), which also makes locked() asyncio's. */
struct weft_sem {
    pthread_mutex_t mu;
    int value;
    int bound; /* initial value when bounded, else INT_MAX */
    weft__waitq_t q;
};

int weft_sem_new(int value, bool bounded, weft_sem_t **out)
{
    if (out == NULL || value < 0)
        return -EINVAL;
    weft_sem_t *s = weft__calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    pthread_mutex_init(&s->mu, NULL);
    s->value = value;
    s->bound = bounded ? value : INT_MAX;
    weft__waitq_init(&s->q);
    *out = s;
    return 0;
}

/* Under mu: hand out every permit there is to live waiters, oldest first
 * (asyncio's "while self._value > 0: _wake_up_next()"). */
static void sem_dispatch(weft_sem_t *s, const weft_task_t *self)
{
    while (s->value > 0) {
        weft__waiter_t *w = weft__waitq_first_live(&s->q);
        if (w == NULL)
            return;
        s->value--;
        weft__waitq_grant(&s->q, w, self);
    }
}

int weft_sem_acquire(weft_sem_t *s)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return weft__not_in_task("weft_sem_acquire");
    if (s == NULL)
        return -EINVAL;
    pthread_mutex_lock(&s->mu);
    if (s->value > 0 && weft__waitq_first_live(&s->q) == NULL) {
        s->value--;
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    if (weft__task_take_cancel(t)) {
        pthread_mutex_unlock(&s->mu);
        return WEFT_ECANCELED;
    }
    weft__waiter_t w = {.task = t};
    weft__waitq_undo_t undo;
    weft__waitq_enter(&s->mu, &s->q, &w, &undo);
    int rc;
    for (;;) {
        bool cancelled = weft__waitq_park(&s->mu, t);
        if (w.granted) {
            if (cancelled)
                s->value++; /* granted and cancelled: give it back */
            rc = cancelled ? WEFT_ECANCELED : 0;
            break;
        }
        if (cancelled) {
            weft__waitq_remove(&s->q, &w);
            rc = WEFT_ECANCELED;
            break;
        }
        sem_dispatch(s, t); /* a spurious wake may find a permit for us */
        if (w.granted) {
            rc = 0;
            break;
        }
    }
    /* Newcomers may have queued behind us while permits were free. */
    sem_dispatch(s, t);
    s->q.busy--;
    pthread_mutex_unlock(&s->mu);
    weft__task_park_undo(t, NULL, NULL, NULL);
    return rc;
}

int weft_sem_release(weft_sem_t *s)
{
    if (s == NULL)
        return -EINVAL;
    pthread_mutex_lock(&s->mu);
    if (s->value >= s->bound) {
        pthread_mutex_unlock(&s->mu);
        return -EINVAL;
    }
    s->value++;
    sem_dispatch(s, NULL);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

bool weft_sem_locked(const weft_sem_t *cs)
{
    if (cs == NULL)
        return false;
    weft_sem_t *s = (weft_sem_t *)cs;
    pthread_mutex_lock(&s->mu);
    bool locked = s->value == 0 || weft__waitq_first_live(&s->q) != NULL;
    pthread_mutex_unlock(&s->mu);
    return locked;
}

int weft_sem_value(const weft_sem_t *cs)
{
    if (cs == NULL)
        return -EINVAL;
    weft_sem_t *s = (weft_sem_t *)cs;
    pthread_mutex_lock(&s->mu);
    int v = s->value;
    pthread_mutex_unlock(&s->mu);
    return v;
}

void weft_sem_free(weft_sem_t *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    size_t n = s->q.busy;
    pthread_mutex_unlock(&s->mu);
    if (!weft__free_allowed("weft_sem_free", "semaphore", s, n))
        return;
    pthread_mutex_destroy(&s->mu);
    weft__free(s);
}

size_t weft__sem_nwaiters(weft_sem_t *s)
{
    return weft__waitq_len(&s->mu, &s->q);
}

/* ======================================================================= */
/* Barrier                                                                  */
/* ======================================================================= */

/* asyncio.Barrier's state machine, on one mutex instead of a Condition:
 * every state change wakes every waiter (notify_all), and each waiter
 * re-checks its own predicate.
 *   FILLING   -> DRAINING   the parties-th task arrived
 *   DRAINING  -> FILLING    the last task of the round left
 *   any       -> RESETTING  reset() with tasks inside; -> FILLING when the
 *                           last of them left (or at once when empty)
 *   any       -> BROKEN     abort(); only reset() leaves it */
enum { B_FILLING, B_DRAINING, B_RESETTING, B_BROKEN };

struct weft_barrier {
    pthread_mutex_t mu;
    unsigned parties;
    unsigned count; /* tasks inside wait() past the draining gate */
    int state;
    weft__waitq_t q;
};

int weft_barrier_new(unsigned parties, weft_barrier_t **out)
{
    if (out == NULL || parties == 0)
        return -EINVAL;
    weft_barrier_t *b = weft__calloc(1, sizeof *b);
    if (b == NULL)
        return -ENOMEM;
    pthread_mutex_init(&b->mu, NULL);
    b->parties = parties;
    b->state = B_FILLING;
    weft__waitq_init(&b->q);
    *out = b;
    return 0;
}

/* Under mu: wait for the next state change (a Condition.wait on the
 * barrier's own condition).  0, or WEFT_ECANCELED when a request was
 * pending or arrived. */
static int barrier_wait_change(weft_barrier_t *b, weft_task_t *t)
{
    if (weft__task_take_cancel(t))
        return WEFT_ECANCELED;
    weft__waiter_t w = {.task = t};
    weft__waitq_undo_t undo;
    weft__waitq_enter(&b->mu, &b->q, &w, &undo);
    bool cancelled = weft__waitq_park(&b->mu, t);
    if (w.linked)
        weft__waitq_remove(&b->q, &w);
    b->q.busy--;
    weft__task_park_undo(t, NULL, NULL, NULL);
    return cancelled ? WEFT_ECANCELED : 0;
}

int weft_barrier_wait(weft_barrier_t *b, unsigned *index)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return weft__not_in_task("weft_barrier_wait");
    if (b == NULL)
        return -EINVAL;
    pthread_mutex_lock(&b->mu);
    /* _block(): wait out the previous round's draining or resetting. */
    while (b->state == B_DRAINING || b->state == B_RESETTING) {
        int rc = barrier_wait_change(b, t);
        if (rc != 0) {
            pthread_mutex_unlock(&b->mu);
            return rc;
        }
    }
    if (b->state == B_BROKEN) {
        pthread_mutex_unlock(&b->mu);
        return WEFT_EBROKEN;
    }
    unsigned idx = b->count++;
    int rc = 0;
    if (idx + 1 == b->parties) {
        /* _release(): the last arrival trips the barrier, no suspension. */
        b->state = B_DRAINING;
        weft__waitq_grant_all(&b->q, t);
    } else {
        /* _wait() */
        while (b->state == B_FILLING) {
            rc = barrier_wait_change(b, t);
            if (rc != 0)
                break;
        }
        if (rc == 0 && (b->state == B_BROKEN || b->state == B_RESETTING))
            rc = WEFT_EBROKEN;
    }
    /* _exit(): the last task out of a drained or reset round reopens it. */
    b->count--;
    if (b->count == 0) {
        if (b->state == B_RESETTING || b->state == B_DRAINING)
            b->state = B_FILLING;
        weft__waitq_grant_all(&b->q, t);
    }
    pthread_mutex_unlock(&b->mu);
    if (rc == 0 && index != NULL)
        *index = idx;
    return rc;
}

int weft_barrier_abort(weft_barrier_t *b)
{
    if (b == NULL)
        return -EINVAL;
    pthread_mutex_lock(&b->mu);
    b->state = B_BROKEN;
    weft__waitq_grant_all(&b->q, NULL);
    pthread_mutex_unlock(&b->mu);
    return 0;
}

int weft_barrier_reset(weft_barrier_t *b)
{
    if (b == NULL)
        return -EINVAL;
    pthread_mutex_lock(&b->mu);
    b->state = b->count > 0 ? B_RESETTING : B_FILLING;
    weft__waitq_grant_all(&b->q, NULL);
    pthread_mutex_unlock(&b->mu);
    return 0;
}

unsigned weft_barrier_n_waiting(const weft_barrier_t *cb)
{
    if (cb == NULL)
        return 0;
    weft_barrier_t *b = (weft_barrier_t *)cb;
    pthread_mutex_lock(&b->mu);
    unsigned n = b->state == B_FILLING ? b->count : 0;
    pthread_mutex_unlock(&b->mu);
    return n;
}

unsigned weft_barrier_parties(const weft_barrier_t *b)
{
    return b != NULL ? b->parties : 0;
}

bool weft_barrier_broken(const weft_barrier_t *cb)
{
    if (cb == NULL)
        return false;
    weft_barrier_t *b = (weft_barrier_t *)cb;
    pthread_mutex_lock(&b->mu);
    bool broken = b->state == B_BROKEN;
    pthread_mutex_unlock(&b->mu);
    return broken;
}

void weft_barrier_free(weft_barrier_t *b)
{
    if (b == NULL)
        return;
    pthread_mutex_lock(&b->mu);
    size_t n = b->q.busy + b->count;
    pthread_mutex_unlock(&b->mu);
    if (!weft__free_allowed("weft_barrier_free", "barrier", b, n))
        return;
    pthread_mutex_destroy(&b->mu);
    weft__free(b);
}

size_t weft__barrier_nwaiters(weft_barrier_t *b)
{
    return weft__waitq_len(&b->mu, &b->q);
}
