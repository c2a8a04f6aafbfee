/* weft — shield, timeout scopes and wait_for (asyncio's tasks.shield,
 * timeouts.Timeout and tasks.wait_for of CPython 3.12/3.13).
 *
 * Theory of operation of a timeout scope.  A scope belongs to the task
 * that entered it; its timer fires on some loop thread while the task may
 * run on another worker, and reschedule may come from yet another task.
 * So `state`, `when` and the armed handle live under the scope's mutex:
 *
 *   ENTERED --deadline passes (timer, or a past deadline on enter or
 *             reschedule)--> EXPIRING --exit--> EXPIRED
 *   ENTERED --exit--> EXITED
 *
 * The move to EXPIRING sends the one cancellation request (under the
 * mutex, so exit sees either no request and ENTERED, or the request and
 * EXPIRING — never a request still on its way).  Exit withdraws that
 * request with weft_task_uncancel and claims the cancellation as a
 * timeout only if the count is back to what it was on entry (no one else
 * asked meanwhile): asyncio's rule.
 *
 * Invariants:
 *   1. refs = 1 for the scope (dropped by exit or abandonment) + 1 per
 *      armed timer (dropped by its callback, by whoever cancels it, or by
 *      its loop's close), so a callback blocked on the mutex while exit
 *      runs still finds the memory; it then sees EXITED/EXPIRED and does
 *      nothing.
 *   2. A timer callback acts only in ENTERED and only if `when` has
 *      passed: a stale timer of an earlier deadline is harmless.
 *   3. `task` is touched only in ENTERED, so never after exit.
 *
 * Lock order: scope mutex, then the task's future lock (weft_task_cancel);
 * nothing takes them the other way round.
 */
#include "sched/cancel.h"

#include <pthread.h>

#include "sched/common.h"
#include "sched/handle.h"
#include "sched/loop.h"
#include "weft/cancel.h"

/* ---- shield ----------------------------------------------------------------- */

/* inner's done callback: copy its outcome to outer (holds a ref on outer). */
static void shield_inner_done(weft_future_t *inner, void *arg)
{
    weft_future_t *outer = arg;
    if (weft_future_cancelled(inner)) {
        weft_future_cancel(outer, weft_future_message(inner));
    } else {
        void *v = NULL;
        int rc = weft_future_result(inner, &v); /* also marks an error retrieved */
        if (!weft_future_done(outer)) {
            if (rc == 0)
                (void)weft_future_set_result(outer, v);
            else
                (void)weft_future_set_error(outer, rc, weft_future_message(inner));
        }
    }
    weft_future_release(outer);
}

/* outer's done callback: once outer is done (cancelled, typically), inner
 * no longer needs to report to it (holds a ref on inner). */
static void shield_outer_done(weft_future_t *outer, void *arg)
{
    weft_future_t *inner = arg;
    if (weft_future_remove_done_callback(inner, shield_inner_done, outer) > 0)
        weft_future_release(outer); /* the reference that callback held */
    weft_future_release(inner);
}

int weft_shield(weft_future_t *inner, weft_future_t **outer)
{
    if (inner == NULL || outer == NULL)
        return -EINVAL;
    if (weft_future_done(inner)) {
        weft_future_retain(inner);
        *outer = inner;
        return 0;
    }
    weft_future_t *o;
    int rc = weft_future_new(weft_future_get_loop(inner), &o);
    if (rc != 0)
        return rc;
    /* outer's callback first: outer is private yet, so it can be taken
     * back for sure if inner refuses its callback. */
    weft_future_retain(inner);
    rc = weft_future_add_done_callback(o, shield_outer_done, inner);
    if (rc != 0) {
        weft_future_release(inner);
        weft_future_release(o);
        return rc;
    }
    weft_future_retain(o);
    rc = weft_future_add_done_callback(inner, shield_inner_done, o);
    if (rc != 0) {
        weft_future_release(o);
        weft_future_remove_done_callback(o, shield_outer_done, inner);
        weft_future_release(inner);
        weft_future_release(o);
        return rc;
    }
    *outer = o;
    return 0;
}

/* ---- timeout scopes ---------------------------------------------------------- */

enum { TO_ENTERED, TO_EXPIRING, TO_EXPIRED, TO_EXITED };

struct weft_timeout {
    weft__scope_t scope; /* in task->scopes while entered */
    pthread_mutex_t lock;
    atomic_uint refs; /* invariant 1 */
    weft_task_t *task;
    int cancelling;   /* task's cancelling() on entry */
    int64_t when;     /* under lock; -1 = never */
    int state;        /* under lock */
    weft_handle_t *h; /* armed timer (our reference), under lock */
};

static void to_release(weft_timeout_t *to)
{
    /* acq_rel: the last holder frees after every other holder is done. */
    if (atomic_fetch_sub_explicit(&to->refs, 1, memory_order_acq_rel) != 1)
        return;
    pthread_mutex_destroy(&to->lock);
    weft__free(to);
}

/* With lock: the deadline passed. */
static void expire_locked(weft_timeout_t *to)
{
    to->state = TO_EXPIRING;
    weft_task_cancel(to->task, NULL);
}

static void to_fire(void *arg)
{
    weft_timeout_t *to = arg;
    pthread_mutex_lock(&to->lock);
    if (to->state == TO_ENTERED && to->when >= 0 && weft__now_ns() >= to->when)
        expire_locked(to);
    pthread_mutex_unlock(&to->lock);
    to_release(to);
}

static void to_drop(void *arg)
{
    to_release(arg);
}

/* With lock: cancel the armed timer, if any. */
static void disarm_locked(weft_timeout_t *to)
{
    if (to->h == NULL)
        return;
    /* The scope's own reference keeps refs above zero here. */
    if (weft__handle_cancel(to->h))
        atomic_fetch_sub_explicit(&to->refs, 1, memory_order_relaxed);
    weft_handle_release(to->h);
    to->h = NULL;
}

/* With lock, state ENTERED: act on to->when. */
static int arm_locked(weft_timeout_t *to)
{
    if (to->when < 0)
        return 0;
    if (to->when <= weft__now_ns()) {
        expire_locked(to); /* "cancels at the first suspension" */
        return 0;
    }
    weft_loop_t *loop = weft_get_running_loop();
    if (loop == NULL)
        return -EPERM;
    atomic_fetch_add_explicit(&to->refs, 1, memory_order_relaxed);
    int rc = weft_loop_call_at(loop, to->when, to_fire, to, &to->h);
    if (rc != 0) {
        atomic_fetch_sub_explicit(&to->refs, 1, memory_order_relaxed);
        to->h = NULL;
        return rc;
    }
    /* Set on the loop thread, before the timer can fire or be dropped. */
    to->h->on_drop = to_drop;
    return 0;
}

static void unlink_scope(weft_timeout_t *to)
{
    for (weft__scope_t **pp = &to->task->scopes; *pp != NULL; pp = &(*pp)->outer) {
        if (*pp == &to->scope) {
            *pp = to->scope.outer;
            return;
        }
    }
}

/* The task will never run again (weft__task_set_abandon). */
static void to_abandon(weft__scope_t *s)
{
    weft_timeout_t *to = weft__container_of(s, weft_timeout_t, scope);
    pthread_mutex_lock(&to->lock);
    disarm_locked(to);
    to->state = TO_EXITED;
    pthread_mutex_unlock(&to->lock);
    to_release(to);
}

int weft_timeout_at_enter(int64_t when_ns, weft_timeout_t **out)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return -EPERM;
    if (out == NULL || when_ns < -1)
        return -EINVAL;
    weft_timeout_t *to = weft__alloc(sizeof *to);
    if (to == NULL)
        return -ENOMEM;
    pthread_mutex_init(&to->lock, NULL);
    atomic_init(&to->refs, 1);
    to->task = t;
    to->cancelling = weft_task_cancelling(t);
    to->when = when_ns;
    to->state = TO_ENTERED;
    to->h = NULL;
    to->scope.abandon = to_abandon;
    pthread_mutex_lock(&to->lock);
    int rc = arm_locked(to);
    pthread_mutex_unlock(&to->lock);
    if (rc != 0) {
        to_release(to);
        return rc;
    }
    to->scope.outer = t->scopes;
    t->scopes = &to->scope;
    *out = to;
    return 0;
}

int weft_timeout_enter(int64_t delay_ns, weft_timeout_t **out)
{
    if (delay_ns < -1)
        return weft_current_task() == NULL ? -EPERM : -EINVAL;
    int64_t when = -1;
    if (delay_ns >= 0) {
        int64_t now = weft__now_ns();
        when = delay_ns > INT64_MAX - now ? INT64_MAX : now + delay_ns;
    }
    return weft_timeout_at_enter(when, out);
}

int weft_timeout_reschedule(weft_timeout_t *to, int64_t when_ns)
{
    if (to == NULL || when_ns < -1)
        return -EINVAL;
    pthread_mutex_lock(&to->lock);
    int rc;
    if (to->state != TO_ENTERED) {
        rc = WEFT_EINVALSTATE; /* asyncio: "Cannot change state of expiring Timeout" */
    } else {
        /* Arm the new deadline first, so a failure leaves the old one. */
        weft_handle_t *old_h = to->h;
        int64_t old_when = to->when;
        to->h = NULL;
        to->when = when_ns;
        rc = arm_locked(to);
        weft_handle_t *new_h = to->h;
        to->h = old_h;
        if (rc != 0) {
            to->when = old_when;
        } else {
            disarm_locked(to);
            to->h = new_h;
        }
    }
    pthread_mutex_unlock(&to->lock);
    return rc;
}

int64_t weft_timeout_when(const weft_timeout_t *t)
{
    if (t == NULL)
        return -1;
    weft_timeout_t *to = (weft_timeout_t *)t;
    pthread_mutex_lock(&to->lock);
    int64_t when = to->when;
    pthread_mutex_unlock(&to->lock);
    return when;
}

bool weft_timeout_expired(const weft_timeout_t *t)
{
    if (t == NULL)
        return false;
    weft_timeout_t *to = (weft_timeout_t *)t;
    pthread_mutex_lock(&to->lock);
    bool expired = to->state == TO_EXPIRING || to->state == TO_EXPIRED;
    pthread_mutex_unlock(&to->lock);
    return expired;
}

int weft_timeout_exit(weft_timeout_t *to, int status)
{
    if (to == NULL)
        return -EINVAL;
    weft_task_t *t = weft_current_task();
    if (t != to->task)
        return -EPERM;
    pthread_mutex_lock(&to->lock);
    disarm_locked(to);
    bool expiring = to->state == TO_EXPIRING;
    to->state = expiring ? TO_EXPIRED : TO_EXITED;
    pthread_mutex_unlock(&to->lock);
    /* asyncio: withdraw our request; if nobody else asked meanwhile, a
     * cancellation that ended the body was ours: a timeout. */
    if (expiring && weft_task_uncancel(t) <= to->cancelling && status == WEFT_ECANCELED)
        status = WEFT_ETIMEDOUT;
    unlink_scope(to);
    to_release(to);
    return status;
}

/* ---- wait_for ------------------------------------------------------------------ */

static int outcome(weft_future_t *f, void **result)
{
    void *v = NULL;
    int rc = weft_future_result(f, &v);
    if (rc == 0 && result != NULL)
        *result = v;
    return rc;
}

int weft_wait_for(weft_future_t *f, int64_t timeout_ns, void **result)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return -EPERM;
    if (f == NULL || timeout_ns < -1)
        return -EINVAL;
    if (f == weft_task_future(t))
        return -EDEADLK;
    if (timeout_ns == -1)
        return weft_await(f, result);
    if (timeout_ns == 0) {
        /* CPython 3.12: cancel at once and wait for the cancellation to
         * finish, without handing our own cancellation on to f. */
        if (weft_future_done(f))
            return outcome(f, result);
        int rc = weft__wait_done(t, f, true);
        if (rc != 0)
            return rc;
        if (weft_future_cancelled(f))
            return WEFT_ETIMEDOUT;
        return outcome(f, result);
    }
    /* CPython 3.12: `async with timeout(t): return await f`.  On expiry
     * the await cancels f (a task: asks it and waits for it). */
    weft_timeout_t *to;
    int rc = weft_timeout_enter(timeout_ns, &to);
    if (rc != 0)
        return rc;
    rc = weft_await(f, result);
    return weft_timeout_exit(to, rc);
}
