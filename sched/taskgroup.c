/* weft — TaskGroup (asyncio.TaskGroup, CPython 3.13's taskgroups.py).
 *
 * Theory of operation.  A group has one parent task (its creator) and any
 * number of children.  Children finish on any worker; each one's done
 * callback (on its future's loop, never under a future's lock) updates the
 * group under the group's mutex: it leaves the child list, records an
 * error, and on the first error aborts — cancels every other child and
 * sends the parent one request (parent_cancel_requested), exactly where
 * asyncio's _on_task_done does.  The parent's exit marks the group
 * exiting, aborts it if the body ended with an error or a cancellation,
 * then waits on a plain future (`on_completed`) that the callback of the
 * last child completes; a cancellation of the parent while it waits
 * cancels that future, aborts the group and is remembered.  After the
 * last child, exit withdraws the group's own request and decides the
 * result as asyncio's __aexit__ does.
 *
 * Invariants (under `lock`):
 *   1. `active` counts children spawned and not yet seen done, plus
 *      spawns in progress (reserved before the child exists, so a group
 *      that looks empty to exit can never gain a child afterwards).
 *   2. Once exiting with active == 0, or aborting, no spawn succeeds.
 *   3. refs = 1 for the user (dropped by free) + 1 per child whose done
 *      callback has not run yet, so the group outlives every callback.
 *
 * Lock order: the group's mutex, then a task's future lock
 * (weft_task_cancel) or a future's lock (completing on_completed);
 * callbacks never run under a future's lock, so nothing takes them the
 * other way round.  Spawning (which may run an eager child) happens with
 * the mutex released.
 */
#include "weft/cancel.h"

#include <pthread.h>
#include <stdatomic.h>

#include "sched/common.h"
#include "sched/task.h"

typedef struct child {
    struct child *prev, *next;
    weft_task_t *task; /* a reference, until its done callback ran */
    struct weft_taskgroup *g;
    /* Linked in the task's future: its wake runs at the completion
     * itself, on the completing thread, and stamps `ticket`.  Done
     * callbacks of children that finished on different workers may run
     * in either order; the tickets keep the error list in the order the
     * children finished, as asyncio's would be. */
    weft_waiter_t done_hook;
    uint64_t ticket;
} child_t;

typedef struct group_error {
    weft_task_t *task; /* a reference; NULL for the body's own error */
    int code;
    const char *msg; /* the task's future message, or NULL */
    uint64_t ticket; /* completion order (the body's error: last) */
} group_error_t;

struct weft_taskgroup {
    pthread_mutex_t lock;
    atomic_uint refs;    /* invariant 3 */
    weft_task_t *parent; /* a reference */
    child_t *children;
    size_t active; /* invariant 1 */
    bool exiting, exited, aborting, parent_cancel_requested;
    weft_future_t *on_completed; /* while the parent waits in exit */
    group_error_t *errors;       /* sorted by ticket */
    size_t nerrors, cap_errors;
    atomic_uint_fast64_t next_ticket;
};

static void group_release(weft_taskgroup_t *g)
{
    /* acq_rel: the last holder sees every other holder's writes. */
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < g->nerrors; i++)
        weft_task_release(g->errors[i].task);
    weft__free(g->errors);
    weft_task_release(g->parent);
    pthread_mutex_destroy(&g->lock);
    weft__free(g);
}

int weft_taskgroup_new(weft_taskgroup_t **out)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return -EPERM;
    if (out == NULL)
        return -EINVAL;
    weft_taskgroup_t *g = weft__calloc(1, sizeof *g);
    if (g == NULL)
        return -ENOMEM;
    pthread_mutex_init(&g->lock, NULL);
    atomic_init(&g->refs, 1);
    weft_future_retain(weft_task_future(t));
    g->parent = t;
    *out = g;
    return 0;
}

/* With lock: append a failure.  -ENOMEM if the list cannot grow (the
 * failure is then only logged). */
static int add_error_locked(weft_taskgroup_t *g, weft_task_t *task, int code, const char *msg,
                            uint64_t ticket)
{
    if (g->nerrors == g->cap_errors) {
        size_t cap = g->cap_errors != 0 ? g->cap_errors * 2 : 4;
        group_error_t *grown = weft__realloc(g->errors, cap * sizeof *grown);
        if (grown == NULL) {
            weft__log(WEFT_LOG_ERROR, "taskgroup %p: no memory to record a failure (%s)", (void *)g,
                      weft_err_name(code));
            return -ENOMEM;
        }
        g->errors = grown;
        g->cap_errors = cap;
    }
    if (task != NULL)
        weft_future_retain(weft_task_future(task));
    size_t i = g->nerrors++;
    while (i > 0 && g->errors[i - 1].ticket > ticket) {
        g->errors[i] = g->errors[i - 1];
        i--;
    }
    g->errors[i] = (group_error_t){task, code, msg, ticket};
    return 0;
}

static uint64_t take_ticket(weft_taskgroup_t *g)
{
    return atomic_fetch_add_explicit(&g->next_ticket, 1, memory_order_relaxed);
}

static void child_done_hook(weft_waiter_t *w)
{
    child_t *c = w->ctx;
    c->ticket = take_ticket(c->g);
}

/* With lock: asyncio's _abort — cancel every child not done. */
static void abort_locked(weft_taskgroup_t *g)
{
    g->aborting = true;
    for (child_t *c = g->children; c != NULL; c = c->next)
        if (!weft_future_done(weft_task_future(c->task)))
            weft_task_cancel(c->task, NULL);
}

/* With lock: a child (reserved or real) is gone. */
static void child_gone_locked(weft_taskgroup_t *g)
{
    g->active--;
    if (g->active == 0 && g->on_completed != NULL)
        (void)weft_future_set_result(g->on_completed, NULL); /* may be cancelled already */
}

/* asyncio's _on_task_done, for child c whose task is done. */
static void on_child_done_locked(weft_taskgroup_t *g, weft_task_t *task, uint64_t ticket)
{
    child_gone_locked(g);
    weft_future_t *f = weft_task_future(task);
    if (weft_future_cancelled(f))
        return;
    int code = weft_future_error(f); /* marks it retrieved */
    if (code == 0)
        return;
    add_error_locked(g, task, code, weft_future_message(f), ticket);
    if (weft_future_done(weft_task_future(g->parent))) {
        weft__log(WEFT_LOG_ERROR, "taskgroup %p: task %s failed (%s) after its parent finished",
                  (void *)g, weft_task_get_name(task), weft_err_name(code));
        return;
    }
    if (!g->aborting && !g->parent_cancel_requested) {
        /* Stop whatever the parent's body is doing; exit withdraws it. */
        abort_locked(g);
        g->parent_cancel_requested = true;
        weft_task_cancel(g->parent, NULL);
    }
}

static void unlink_child_locked(weft_taskgroup_t *g, child_t *c)
{
    WEFT__DLIST_UNLINK(g->children, c, prev, next);
}

static void child_done_cb(weft_future_t *f, void *arg)
{
    (void)f;
    child_t *c = arg;
    weft_taskgroup_t *g = c->g;
    pthread_mutex_lock(&g->lock);
    unlink_child_locked(g, c);
    /* The hook ran at completion, before this callback was posted (the
     * post orders its write before us). */
    on_child_done_locked(g, c->task, c->ticket);
    pthread_mutex_unlock(&g->lock);
    weft_task_release(c->task);
    weft__free(c);
    group_release(g);
}

int weft_taskgroup_spawn(weft_taskgroup_t *g, weft_fn fn, void *arg, const weft_spawn_opts_t *opts,
                         weft_task_t **out)
{
    if (g == NULL || fn == NULL)
        return -EINVAL;
    child_t *c = weft__calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    c->g = g;
    pthread_mutex_lock(&g->lock);
    /* asyncio: "TaskGroup is finished" / "TaskGroup is shutting down". */
    if ((g->exiting && g->active == 0) || g->aborting || g->exited) {
        pthread_mutex_unlock(&g->lock);
        weft__free(c);
        return WEFT_ECLOSED;
    }
    g->active++; /* reserved: invariant 1 */
    pthread_mutex_unlock(&g->lock);

    weft_task_t *t = NULL;
    int rc = weft_spawn(fn, arg, opts, &t);

    pthread_mutex_lock(&g->lock);
    if (rc != 0) {
        child_gone_locked(g);
        pthread_mutex_unlock(&g->lock);
        weft__free(c);
        return rc;
    }
    if (weft_future_done(weft_task_future(t))) {
        /* An eager child that already finished: handled at once (asyncio
         * does the same instead of scheduling the callback). */
        on_child_done_locked(g, t, take_ticket(g));
        pthread_mutex_unlock(&g->lock);
        weft__free(c);
    } else {
        c->task = t;
        weft_future_retain(weft_task_future(t));
        WEFT__DLIST_PUSH(g->children, c, prev, next);
        /* A child spawned while the group aborts is cancelled with it. */
        if (g->aborting)
            weft_task_cancel(t, NULL);
        atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
        c->done_hook.wake = child_done_hook;
        c->done_hook.ctx = c;
        if (!weft__future_add_waiter(weft_task_future(t), &c->done_hook))
            c->ticket = take_ticket(g); /* finished meanwhile */
        pthread_mutex_unlock(&g->lock);
        /* Added outside the lock: it may be posted at once if t is
         * already done, and runs on t's loop either way. */
        rc = weft_future_add_done_callback(weft_task_future(t), child_done_cb, c);
        if (rc != 0) {
            /* -ENOMEM (or the loop closed under a shutdown): the group
             * cannot watch t, so t leaves it, cancelled. */
            weft__future_remove_waiter(weft_task_future(t), &c->done_hook);
            pthread_mutex_lock(&g->lock);
            unlink_child_locked(g, c);
            child_gone_locked(g);
            pthread_mutex_unlock(&g->lock);
            weft_task_cancel(t, NULL);
            weft_task_release(c->task);
            weft__free(c);
            atomic_fetch_sub_explicit(&g->refs, 1, memory_order_relaxed); /* the user's stays */
            weft_task_release(t);
            return rc;
        }
    }
    if (out != NULL)
        *out = t;
    else
        weft_task_release(t);
    return 0;
}

int weft_taskgroup_exit(weft_taskgroup_t *g, int status)
{
    if (g == NULL)
        return -EINVAL;
    weft_task_t *t = weft_current_task();
    if (t == NULL || t != g->parent)
        return -EPERM;
    pthread_mutex_lock(&g->lock);
    if (g->exiting) {
        pthread_mutex_unlock(&g->lock);
        return WEFT_EINVALSTATE;
    }
    g->exiting = true;
    bool propagate_cancel = status == WEFT_ECANCELED;
    if (status != 0 && !g->aborting)
        abort_locked(g);
    int rc = 0;
    while (g->active > 0) {
        weft_future_t *done;
        rc = weft_future_new(NULL, &done);
        if (rc != 0)
            break;
        g->on_completed = done;
        weft_future_retain(done);
        pthread_mutex_unlock(&g->lock);
        int arc = weft_await(done, NULL);
        pthread_mutex_lock(&g->lock);
        g->on_completed = NULL;
        weft_future_release(done); /* the group's */
        weft_future_release(done); /* ours */
        if (arc == WEFT_ECANCELED && !g->aborting) {
            /* Our parent is cancelled from outside while children run. */
            propagate_cancel = true;
            abort_locked(g);
        }
    }
    if (rc != 0) {
        /* No memory to wait with: children keep running, the group stays
         * open for another exit. */
        g->exiting = false;
        pthread_mutex_unlock(&g->lock);
        return rc;
    }
    g->exited = true;
    bool uncancel = g->parent_cancel_requested;
    pthread_mutex_unlock(&g->lock);

    /* After the children (3.13): withdraw the request the group sent; if
     * no request is left, no cancellation is ours to report. */
    if (uncancel && weft_task_uncancel(t) == 0)
        propagate_cancel = false;
    /* Children's errors take priority over a cancellation; the body's own
     * error does not (asyncio checks before adding it). */
    if (propagate_cancel && weft_taskgroup_error_count(g) == 0)
        return WEFT_ECANCELED;
    if (status != 0 && status != WEFT_ECANCELED) {
        pthread_mutex_lock(&g->lock);
        add_error_locked(g, NULL, status, NULL, UINT64_MAX);
        pthread_mutex_unlock(&g->lock);
    }
    if (weft_taskgroup_error_count(g) != 0) {
        /* 3.13: an outside cancellation still counted is delivered again
         * at the next suspension point (uncancel + cancel keeps the count). */
        if (weft_task_cancelling(t) > 0) {
            weft_task_uncancel(t);
            weft_task_cancel(t, NULL);
        }
        return WEFT_EGROUP;
    }
    return 0;
}

int weft_taskgroup_wait(weft_taskgroup_t *g)
{
    return weft_taskgroup_exit(g, 0);
}

size_t weft_taskgroup_error_count(const weft_taskgroup_t *g)
{
    if (g == NULL)
        return 0;
    weft_taskgroup_t *m = (weft_taskgroup_t *)g;
    pthread_mutex_lock(&m->lock);
    size_t n = m->nerrors;
    pthread_mutex_unlock(&m->lock);
    return n;
}

int weft_taskgroup_error(const weft_taskgroup_t *g, size_t i, weft_task_t **task, int *code,
                         const char **msg)
{
    if (g == NULL)
        return -EINVAL;
    weft_taskgroup_t *m = (weft_taskgroup_t *)g;
    pthread_mutex_lock(&m->lock);
    int rc = -EINVAL;
    if (i < m->nerrors) {
        group_error_t e = m->errors[i];
        if (task != NULL)
            *task = e.task;
        if (code != NULL)
            *code = e.code;
        if (msg != NULL)
            *msg = e.msg;
        rc = 0;
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

void weft_taskgroup_free(weft_taskgroup_t *g)
{
    if (g != NULL)
        group_release(g);
}
