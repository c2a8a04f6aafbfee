/* weft — the waiting combinators: gather, wait and as_completed (asyncio's
 * tasks.gather, tasks.wait, tasks.as_completed), on the fan-in and alarm
 * of sched/cancel.h, whose theory of operation is there.
 *
 * Each combinator is one loop on the waiting task's own thread: take the
 * completions recorded so far, in order, and stop when its condition
 * holds; else stop on the deadline or on a delivered cancellation; else
 * suspend.  Completions are looked at before cancellation, as weft_await
 * does: a request that arrives together with the last completion stays
 * pending for the next suspension point.
 */
#include "sched/cancel.h"

#include "sched/common.h"
#include "sched/handle.h"
#include "sched/loop.h"
#include "weft/cancel.h"

/* ---- fan-in -------------------------------------------------------------------- */

static void record(weft__fanin_t *fi, size_t idx)
{
    /* relaxed: the slot number only has to be unique (invariant 1). */
    size_t k = atomic_fetch_add_explicit(&fi->nrecorded, 1, memory_order_relaxed);
    /* release: pairs with the acquire load in weft__fanin_next(); the
     * future's completion happened before (its lock orders it). */
    atomic_store_explicit(&fi->order[k], idx + 1, memory_order_release);
}

/* Under the completing future's lock. */
static void fanin_wake(weft_waiter_t *w)
{
    weft__fanin_node_t *node = (weft__fanin_node_t *)w;
    weft__fanin_t *fi = node->fi;
    weft_task_t *t = fi->task; /* read before the record lets the task free fi */
    record(fi, node->idx);
    weft__task_wake(t);
}

int weft__fanin_init(weft__fanin_t *fi, weft_task_t *t, weft_future_t *const *fs, size_t n)
{
    fi->task = t;
    fi->fs = fs;
    fi->n = n;
    fi->ntaken = 0;
    atomic_init(&fi->nrecorded, 0);
    fi->nodes = weft__calloc(n != 0 ? n : 1, sizeof *fi->nodes);
    fi->order = weft__calloc(n != 0 ? n : 1, sizeof *fi->order);
    if (fi->nodes == NULL || fi->order == NULL) {
        weft__free(fi->nodes);
        weft__free(fi->order);
        fi->nodes = NULL;
        fi->order = NULL;
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        atomic_init(&fi->order[i], 0);
    for (size_t i = 0; i < n; i++) {
        weft__fanin_node_t *node = &fi->nodes[i];
        node->fi = fi;
        node->idx = i;
        node->w.wake = fanin_wake;
        node->w.ctx = t;
        node->w.linked = false;
        if (!weft__future_add_waiter(fs[i], &node->w))
            record(fi, i); /* already done */
    }
    return 0;
}

bool weft__fanin_next(weft__fanin_t *fi, size_t *idx)
{
    if (fi->ntaken >= fi->n)
        return false;
    size_t v = atomic_load_explicit(&fi->order[fi->ntaken], memory_order_acquire);
    if (v == 0)
        return false; /* not recorded yet, or being written (invariant 2) */
    fi->ntaken++;
    *idx = v - 1;
    return true;
}

void weft__fanin_stop(weft__fanin_t *fi)
{
    if (fi->nodes == NULL)
        return;
    for (size_t i = 0; i < fi->n; i++)
        weft__future_remove_waiter(fi->fs[i], &fi->nodes[i].w);
}

void weft__fanin_fini(weft__fanin_t *fi)
{
    weft__fanin_stop(fi);
    weft__free(fi->nodes);
    weft__free(fi->order);
    fi->nodes = NULL;
    fi->order = NULL;
}

/* ---- alarm ------------------------------------------------------------------------- */

static void alarm_fire(void *arg)
{
    weft_task_t *t = arg;
    weft__task_wake(t);
    weft_task_release(t);
}

static void alarm_drop(void *arg)
{
    weft_task_release(arg);
}

int weft__alarm_arm(weft__alarm_t *a, weft_task_t *t, int64_t deadline_ns)
{
    if (a->h != NULL)
        return 0;
    weft_future_retain(weft_task_future(t));
    int rc = weft_loop_call_at(weft_get_running_loop(), deadline_ns, alarm_fire, t, &a->h);
    if (rc != 0) {
        a->h = NULL;
        weft_task_release(t);
        return rc;
    }
    a->h->on_drop = alarm_drop;
    a->t = t;
    return 0;
}

void weft__alarm_disarm(weft__alarm_t *a)
{
    if (a->h == NULL)
        return;
    if (weft__handle_cancel(a->h))
        weft_task_release(a->t); /* the callback will never run */
    weft_handle_release(a->h);
    a->h = NULL;
}

/* ---- what an abandoned waiter leaves behind -------------------------------------- */

typedef struct waitstate {
    weft__fanin_t fi;
    weft__alarm_t alarm;
} waitstate_t;

/* park_unlink for a task abandoned inside one of the waits below. */
static void waitstate_undo(void *node, void *where)
{
    (void)where;
    waitstate_t *ws = node;
    weft__alarm_disarm(&ws->alarm);
    weft__fanin_fini(&ws->fi);
}

static void park(weft_task_t *t, waitstate_t *ws)
{
    weft__task_park_undo(t, waitstate_undo, ws, NULL);
    weft__task_suspend(t);
    weft__task_park_undo(t, NULL, NULL, NULL);
}

static bool check_fs(weft_future_t *const *fs, size_t n)
{
    if (n != 0 && fs == NULL)
        return false;
    for (size_t i = 0; i < n; i++)
        if (fs[i] == NULL)
            return false;
    return true;
}

/* ---- wait_done (wait_for's _cancel_and_wait) ------------------------------------- */

int weft__wait_done(weft_task_t *t, weft_future_t *f, bool cancel)
{
    if (weft_future_done(f))
        return 0;
    waitstate_t ws = {.alarm = {NULL, NULL}};
    weft_future_t *one[1] = {f};
    int rc = weft__fanin_init(&ws.fi, t, one, 1);
    if (rc != 0)
        return rc;
    if (cancel)
        weft__future_cancel_any(f, NULL);
    size_t idx;
    for (;;) {
        if (weft__fanin_next(&ws.fi, &idx))
            break;
        if (weft__task_take_cancel(t)) {
            rc = WEFT_ECANCELED;
            break;
        }
        park(t, &ws);
    }
    weft__fanin_fini(&ws.fi);
    return rc;
}

/* ---- gather ----------------------------------------------------------------------- */

int weft_gather(weft_future_t *const *fs, size_t n, bool return_exceptions)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return -EPERM;
    if (!check_fs(fs, n))
        return -EINVAL;
    if (n == 0)
        return 0; /* asyncio: an already-done gather of nothing */
    waitstate_t ws = {.alarm = {NULL, NULL}};
    int rc = weft__fanin_init(&ws.fi, t, fs, n);
    if (rc != 0)
        return rc;
    size_t finished = 0;
    bool cancel_requested = false;
    rc = 1; /* still waiting */
    while (rc == 1) {
        size_t idx;
        while (rc == 1 && weft__fanin_next(&ws.fi, &idx)) {
            finished++;
            /* Also marks an error retrieved, as asyncio's callback does. */
            int code = weft_future_error(fs[idx]);
            if (!return_exceptions && code != 0)
                rc = code; /* the first failure, at once */
            else if (finished == n)
                rc = cancel_requested ? WEFT_ECANCELED : 0;
        }
        if (rc != 1)
            break;
        if (weft__task_take_cancel(t)) {
            /* asyncio's _GatheringFuture.cancel: cancel every child not
             * done; if none could be, the request is ours alone. */
            char *msg = weft__task_cancel_msg_dup(t);
            bool any = false;
            for (size_t i = 0; i < n; i++)
                if (!weft_future_done(fs[i]) && weft__future_cancel_any(fs[i], msg))
                    any = true;
            weft__free(msg);
            if (!any) {
                rc = WEFT_ECANCELED;
                break;
            }
            cancel_requested = true;
            continue; /* children may have finished meanwhile */
        }
        park(t, &ws);
    }
    weft__fanin_fini(&ws.fi);
    return rc;
}

/* ---- wait -------------------------------------------------------------------------- */

int weft_wait(weft_future_t *const *fs, size_t n, int when, int64_t timeout_ns, bool *done)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return -EPERM;
    if (n == 0 || !check_fs(fs, n) || timeout_ns < -1)
        return -EINVAL;
    if (when != WEFT_FIRST_COMPLETED && when != WEFT_FIRST_EXCEPTION && when != WEFT_ALL_COMPLETED)
        return -EINVAL;
    int64_t deadline = -1;
    if (timeout_ns >= 0) {
        int64_t now = weft__now_ns();
        deadline = timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
    }
    waitstate_t ws = {.alarm = {NULL, NULL}};
    int rc = weft__fanin_init(&ws.fi, t, fs, n);
    if (rc != 0)
        return rc;
    size_t finished = 0;
    bool met = false;
    for (;;) {
        size_t idx;
        while (!met && weft__fanin_next(&ws.fi, &idx)) {
            finished++;
            /* asyncio's _on_completion. */
            if (finished == n || when == WEFT_FIRST_COMPLETED)
                met = true;
            else if (when == WEFT_FIRST_EXCEPTION && !weft_future_cancelled(fs[idx]) &&
                     weft_future_error(fs[idx]) != 0)
                met = true;
        }
        if (met || (deadline >= 0 && weft__now_ns() >= deadline))
            break;
        if (weft__task_take_cancel(t)) {
            rc = WEFT_ECANCELED;
            break;
        }
        if (deadline >= 0 && (rc = weft__alarm_arm(&ws.alarm, t, deadline)) != 0)
            break;
        park(t, &ws);
    }
    weft__alarm_disarm(&ws.alarm);
    weft__fanin_fini(&ws.fi);
    if (rc != 0)
        return rc;
    /* asyncio splits by f.done() once the wait is over. */
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        bool d = weft_future_done(fs[i]);
        if (done != NULL)
            done[i] = d;
        count += d;
    }
    return count;
}

/* ---- as_completed ------------------------------------------------------------------ */

struct weft_as_completed {
    waitstate_t ws;
    weft_task_t *task;  /* the creating task (a reference) */
    weft_future_t **fs; /* a reference on each */
    size_t n;
    int64_t deadline; /* -1 = none */
    size_t handed;    /* futures handed out + timeouts reported */
    bool timed_out;
};

int weft_as_completed_new(weft_future_t *const *fs, size_t n, int64_t timeout_ns,
                          weft_as_completed_t **out)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return -EPERM;
    if (out == NULL || !check_fs(fs, n) || timeout_ns < -1)
        return -EINVAL;
    weft_as_completed_t *it = weft__calloc(1, sizeof *it);
    if (it == NULL)
        return -ENOMEM;
    it->fs = weft__alloc((n != 0 ? n : 1) * sizeof *it->fs);
    if (it->fs == NULL) {
        weft__free(it);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        it->fs[i] = fs[i];
        weft_future_retain(fs[i]);
    }
    it->n = n;
    it->deadline = -1;
    if (timeout_ns >= 0) {
        int64_t now = weft__now_ns();
        it->deadline = timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
    }
    int rc = weft__fanin_init(&it->ws.fi, t, it->fs, n);
    if (rc != 0) {
        for (size_t i = 0; i < n; i++)
            weft_future_release(it->fs[i]);
        weft__free(it->fs);
        weft__free(it);
        return rc;
    }
    weft_future_retain(weft_task_future(t));
    it->task = t;
    *out = it;
    return 0;
}

int weft_as_completed_next(weft_as_completed_t *it, weft_future_t **next)
{
    if (it == NULL || next == NULL)
        return -EINVAL;
    weft_task_t *t = weft_current_task();
    if (t == NULL || t != it->task)
        return -EPERM;
    int rc = 0;
    for (;;) {
        if (it->handed >= it->n)
            break;
        size_t idx;
        if (weft__fanin_next(&it->ws.fi, &idx)) {
            *next = it->fs[idx];
            it->handed++;
            rc = 1;
            break;
        }
        if (it->timed_out) {
            /* asyncio queues one "timed out" marker per future left. */
            it->handed++;
            rc = WEFT_ETIMEDOUT;
            break;
        }
        if (it->deadline >= 0 && weft__now_ns() >= it->deadline) {
            /* From now on nothing more is recorded; what was recorded
             * before still comes first. */
            weft__fanin_stop(&it->ws.fi);
            it->timed_out = true;
            continue;
        }
        if (weft__task_take_cancel(t)) {
            rc = WEFT_ECANCELED;
            break;
        }
        if (it->deadline >= 0 && (rc = weft__alarm_arm(&it->ws.alarm, t, it->deadline)) != 0)
            break;
        park(t, &it->ws);
    }
    weft__alarm_disarm(&it->ws.alarm);
    return rc;
}

void weft_as_completed_free(weft_as_completed_t *it)
{
    if (it == NULL)
        return;
    weft__fanin_fini(&it->ws.fi);
    for (size_t i = 0; i < it->n; i++)
        weft_future_release(it->fs[i]);
    weft__free(it->fs);
    weft_task_release(it->task);
    weft__free(it);
}
