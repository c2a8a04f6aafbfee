/* weft — waiter queues shared by the sync primitives and the queues
 * (sched/sync.c, sched/queue.c).
 *
 * A waiter is a node on the waiting task's own stack.  Every primitive
 * keeps its waiters in one or more FIFO lists guarded by the primitive's
 * pthread mutex `mu`; nothing here is lock-free.
 *
 *   operation                 who              holds mu   may run with
 *   ------------------------  ---------------  ---------  ----------------
 *   push_back / push_front    the waiter       yes        nothing else on q
 *   remove                    waiter or waker  yes        nothing else on q
 *   first_live                anyone           yes        cancel requests
 *   grant                     the waker        yes        cancel requests
 *   read w->granted           the waiter       yes        -
 *
 * Theory of operation.  A waiter links its node under mu, drops mu and
 * suspends (weft__task_suspend).  Whoever hands it what it waits for (the
 * lock, a permit, a notification, "an item may be there") does so under
 * mu: it unlinks the node, sets `granted`, and wakes the task while still
 * holding mu.  The waiter, once resumed, takes mu before it reads
 * `granted`, so
 *   1. the waker's write of `granted` and everything it did before (the
 *      data the lock protects, the item it queued) happen before the
 *      waiter's read (the mutex orders them);
 *   2. the node, on the waiter's stack, stays valid for as long as the
 *      waker uses it: the waiter cannot return and pop its frame before
 *      the waker drops mu;
 *   3. the task stays alive for the wake: it is suspended in the primitive
 *      until it has seen the grant, which needs mu.
 * Wakes can be spurious (task.h): a waiter that resumes without a grant
 * and without a cancellation re-evaluates its condition under mu.
 *
 * "Live" waiters.  asyncio skips waiters whose future is already cancelled
 * (Lock._wake_up_first, Semaphore._wake_up_next, Condition._notify).  A
 * weft waiter is cancelled by a request (weft_task_cancel) that it takes
 * only when it resumes, so first_live skips waiters whose task has a
 * request pending.  That read is only a hint: a stale "not cancelled"
 * grants to a waiter that then passes the grant on; a stale "cancelled"
 * skips a waiter that is about to be woken by that request anyway, and
 * re-evaluates under mu when it resumes (so a request withdrawn by
 * weft_task_uncancel cannot strand it).
 */
#ifndef WEFT_SCHED_WAITQ_H
#define WEFT_SCHED_WAITQ_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "sched/common.h"
#include "sched/task.h"
#include "weft/loop.h"

typedef struct weft__waiter {
    struct weft__waiter *next, *prev;
    weft_task_t *task;
    bool linked;  /* in a list (under mu) */
    bool granted; /* unlinked by a waker that handed it what it waits for */
} weft__waiter_t;

typedef struct weft__waitq {
    weft__waiter_t *head, *tail;
    size_t n; /* linked now */
    /* Tasks inside a waiting call on this queue: linked, or granted and not
     * yet back from the call (the primitive's _free refuses while any). */
    size_t busy;
} weft__waitq_t;

static inline void weft__waitq_init(weft__waitq_t *q)
{
    q->head = q->tail = NULL;
    q->n = 0;
    q->busy = 0;
}

static inline void weft__waitq_push_back(weft__waitq_t *q, weft__waiter_t *w)
{
    WEFT_ASSERT(!w->linked);
    w->next = NULL;
    w->prev = q->tail;
    if (q->tail != NULL)
        q->tail->next = w;
    else
        q->head = w;
    q->tail = w;
    q->n++;
    w->linked = true;
    w->granted = false;
}

/* For a waiter that was woken but must wait again: it keeps its turn. */
static inline void weft__waitq_push_front(weft__waitq_t *q, weft__waiter_t *w)
{
    WEFT_ASSERT(!w->linked);
    w->prev = NULL;
    w->next = q->head;
    if (q->head != NULL)
        q->head->prev = w;
    else
        q->tail = w;
    q->head = w;
    q->n++;
    w->linked = true;
    w->granted = false;
}

static inline void weft__waitq_remove(weft__waitq_t *q, weft__waiter_t *w)
{
    WEFT_ASSERT(w->linked);
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        q->head = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    else
        q->tail = w->prev;
    w->next = w->prev = NULL;
    q->n--;
    w->linked = false;
}

/* A cancellation request is pending for w's task (a hint; see above).
 * Relaxed: nothing is read on the strength of it. */
static inline bool weft__waiter_cancelled(const weft__waiter_t *w)
{
    return (atomic_load_explicit(&w->task->must_cancel, memory_order_relaxed) & WEFT__C_PENDING) !=
           0;
}

/* The first waiter whose task has no cancellation pending, or NULL. */
static inline weft__waiter_t *weft__waitq_first_live(const weft__waitq_t *q)
{
    for (weft__waiter_t *w = q->head; w != NULL; w = w->next)
        if (!weft__waiter_cancelled(w))
            return w;
    return NULL;
}

/* Unlink w, record the grant and wake its task, unless it is `self` (a
 * waiter granting to itself while it re-evaluates is running already). */
static inline void weft__waitq_grant(weft__waitq_t *q, weft__waiter_t *w, const weft_task_t *self)
{
    weft__waitq_remove(q, w);
    w->granted = true;
    if (w->task != self)
        weft__task_wake(w->task);
}

/* Grant every waiter of q (broadcasts: Event.set, notify_all of a
 * barrier, queue shutdown). */
static inline size_t weft__waitq_grant_all(weft__waitq_t *q, const weft_task_t *self)
{
    size_t n = 0;
    while (q->head != NULL) {
        weft__waitq_grant(q, q->head, self);
        n++;
    }
    return n;
}

/* Drop mu, suspend until woken, take mu again.  Returns whether a
 * cancellation request was taken on the way (asyncio's rule: when a grant
 * and a cancellation meet, the cancellation wins and the grant is passed
 * on). */
static inline bool weft__waitq_park(pthread_mutex_t *mu, weft_task_t *t)
{
    pthread_mutex_unlock(mu);
    weft__task_suspend(t);
    bool cancelled = weft__task_take_cancel(t);
    pthread_mutex_lock(mu);
    return cancelled;
}

/* What weft__task_set_abandon calls for a task abandoned while it waits
 * (task.h): unlink its node so no waker writes into the freed stack, and
 * leave the queue's busy count (the undo is registered only while the
 * task counts in it).  A
 * grant it had already received is lost with it (the runtime is being torn
 * down; passing it on would wake tasks that are being abandoned too). */
typedef struct weft__waitq_undo {
    pthread_mutex_t *mu;
    weft__waitq_t *q;
} weft__waitq_undo_t;

static inline void weft__waitq_undo_fn(void *node, void *where)
{
    weft__waiter_t *w = node;
    weft__waitq_undo_t *u = where;
    pthread_mutex_lock(u->mu);
    if (w->linked)
        weft__waitq_remove(u->q, w);
    u->q->busy--;
    pthread_mutex_unlock(u->mu);
}

/* Register that undo for t while w waits in u->q (u lives on t's stack
 * too); weft__task_park_undo(t, NULL, NULL, NULL) clears it. */
static inline void weft__waitq_set_undo(weft_task_t *t, weft__waiter_t *w, weft__waitq_undo_t *u)
{
    weft__task_park_undo(t, weft__waitq_undo_fn, w, u);
}

/* w's task starts waiting: w (on that task's stack) goes to the back of
 * q, the task counts in q->busy, and u (on its stack too) is registered as
 * its abandon undo.  Under mu, q's mutex. */
static inline void weft__waitq_enter(pthread_mutex_t *mu, weft__waitq_t *q, weft__waiter_t *w,
                                     weft__waitq_undo_t *u)
{
    weft__waitq_push_back(q, w);
    q->busy++;
    u->mu = mu;
    u->q = q;
    weft__waitq_set_undo(w->task, w, u);
}

/* Park until w is granted (0) or a cancellation is delivered
 * (WEFT_ECANCELED, w unlinked if still linked): the cancellation wins over
 * a grant that meets it, as with asyncio's Event.wait.  Under mu, as on
 * return. */
static inline int weft__waitq_wait_granted(pthread_mutex_t *mu, weft__waitq_t *q, weft__waiter_t *w)
{
    for (;;) {
        if (weft__waitq_park(mu, w->task)) {
            if (w->linked)
                weft__waitq_remove(q, w);
            return WEFT_ECANCELED;
        }
        if (w->granted)
            return 0;
    }
}

/* Refusal of a suspending call outside a task: -EPERM, logged in debug
 * mode (docs/errors.md rule 9). */
static inline int weft__not_in_task(const char *fn)
{
    weft_loop_t *loop = weft_get_running_loop();
    if ((loop != NULL && weft_loop_get_debug(loop)) || weft_debug_env())
        weft__log(WEFT_LOG_ERROR,
                  "%s called outside a task; it suspends, so only a task may call it", fn);
    return -EPERM;
}

/* q->n read under mu (the test hooks below). */
static inline size_t weft__waitq_len(pthread_mutex_t *mu, const weft__waitq_t *q)
{
    pthread_mutex_lock(mu);
    size_t n = q->n;
    pthread_mutex_unlock(mu);
    return n;
}

/* For a primitive's _free, given how many tasks are still inside its
 * waiting calls: true when it may be freed; otherwise false, with an
 * error logged (freeing it would leave those tasks a dangling pointer, so
 * it is leaked instead). */
static inline bool weft__free_allowed(const char *fn, const char *what, const void *obj,
                                      size_t busy)
{
    if (busy == 0)
        return true;
    weft__log(WEFT_LOG_ERROR, "%s: %s %p still has %zu waiting task(s); not freed", fn, what, obj,
              busy);
    return false;
}

/* ---- test hooks (sched/sync.c, sched/queue.c) ----------------------------
 * How many tasks wait right now (cancelled ones included), for tests that
 * must know a waiter is queued before they go on. */
struct weft_lock;
struct weft_cond;
struct weft_sem;
struct weft_barrier;
struct weft_event;
struct weft_queue;
size_t weft__lock_nwaiters(struct weft_lock *lk);
size_t weft__cond_nwaiters(struct weft_cond *c);
size_t weft__sem_nwaiters(struct weft_sem *s);
size_t weft__barrier_nwaiters(struct weft_barrier *b);
size_t weft__event_nwaiters(struct weft_event *e);
/* which: 0 getters, 1 putters, 2 joiners */
size_t weft__queue_nwaiters(struct weft_queue *q, int which);

#endif /* WEFT_SCHED_WAITQ_H */
