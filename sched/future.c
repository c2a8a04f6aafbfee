/* weft — futures.  Theory of operation in future.h. */
#include "sched/future.h"

#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sched/common.h"
#include "sched/handle.h"
#include "sched/loop.h"

static inline int load_state(const weft_future_t *f)
{
    /* acquire: pairs with the seq_cst store in complete(), so the fields
     * written before it are visible. */
    return atomic_load_explicit(&((weft_future_t *)f)->state, memory_order_acquire);
}

static inline bool is_final(int s)
{
    return s >= WEFT__F_RESULT;
}

void weft__future_init(weft_future_t *f, weft_loop_t *loop)
{
    atomic_init(&f->refs, 1);
    atomic_init(&f->state, WEFT__F_PENDING);
    atomic_init(&f->waiters, 0);
    atomic_init(&f->retrieved, false);
    f->loop = loop;
    f->result = NULL;
    f->code = 0;
    f->msg = NULL;
    weft__lock_init(&f->lock);
    f->cb_head = NULL;
    f->post_h = NULL;
    f->waiters_list = NULL;
    f->cbs_closed = false;
    f->is_task = false;
    weft__loop_retain(loop);
}

int weft_future_new(weft_loop_t *loop, weft_future_t **out)
{
    if (out == NULL)
        return -EINVAL;
    if (loop == NULL) {
        loop = weft_get_running_loop();
        if (loop == NULL)
            return -EPERM;
    }
    if (weft_loop_is_closed(loop))
        return WEFT_ECLOSED;
    weft_future_t *f = weft__alloc(sizeof *f);
    if (f == NULL)
        return -ENOMEM;
    weft__future_init(f, loop);
    *out = f;
    return 0;
}

int weft__future_add_waiter(weft_future_t *f, weft_waiter_t *w)
{
    int linked = 0;
    weft__lock(&f->lock);
    if (!f->cbs_closed) {
        WEFT__DLIST_PUSH(f->waiters_list, w, prev, next);
        w->linked = true;
        linked = 1;
    }
    weft__unlock(&f->lock);
    return linked;
}

void weft__future_remove_waiter(weft_future_t *f, weft_waiter_t *w)
{
    weft__lock(&f->lock);
    if (w->linked) {
        WEFT__DLIST_UNLINK(f->waiters_list, w, prev, next);
        w->linked = false;
    }
    weft__unlock(&f->lock);
}

void weft_future_retain(weft_future_t *f)
{
    if (f != NULL)
        atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
}

static void free_nodes(weft_done_node_t *n)
{
    while (n != NULL) {
        weft_done_node_t *next = n->next;
        weft__free(n);
        n = next;
    }
}

/* ---- unretrieved-error reports ------------------------------------------- */

typedef struct lost_error {
    weft_loop_t *loop;
    int code;
    char text[200];
} lost_error_t;

static void report_lost_error(void *arg)
{
    lost_error_t *le = arg;
    weft__loop_report(le->loop, le->code, le->text, NULL);
    weft__loop_release(le->loop);
    weft__free(le);
}

/* Debug mode: a future dies with an error nobody read (asyncio's "Future
 * exception was never retrieved").  Reported on the loop thread. */
static void report_unretrieved(weft_future_t *f)
{
    weft_loop_t *loop = f->loop;
    lost_error_t *le = weft__alloc(sizeof *le);
    if (le == NULL) {
        weft__log(WEFT_LOG_ERROR, "future %p: error %s was never retrieved", (void *)f,
                  weft_err_name(f->code));
        return;
    }
    le->loop = loop;
    le->code = f->code;
    snprintf(le->text, sizeof le->text, "future %p: error was never retrieved%s%s", (void *)f,
             f->msg ? ": " : "", f->msg ? f->msg : "");
    weft__loop_retain(loop);
    if (weft_get_running_loop() == loop) {
        report_lost_error(le);
        return;
    }
    if (weft__loop_post(loop, report_lost_error, le) != 0) {
        /* The loop is closed: nobody else will say it. */
        weft__log(WEFT_LOG_ERROR, "%s (%s)", le->text, weft_err_name(le->code));
        weft__loop_release(loop);
        weft__free(le);
    }
}

void weft_future_release(weft_future_t *f)
{
    if (f == NULL)
        return;
    /* acq_rel: the last owner sees everything the others wrote. */
    if (atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (load_state(f) == WEFT__F_ERROR &&
        !atomic_load_explicit(&f->retrieved, memory_order_relaxed) && weft_loop_get_debug(f->loop))
        report_unretrieved(f);
    /* Callbacks still registered on a pending future die with it. */
    free_nodes(f->cb_head);
    if (f->post_h != NULL)
        weft__handle_unref(f->post_h);
    weft__free(f->msg);
    weft_loop_t *loop = f->loop;
    if (f->is_task)
        weft__task_free(f);
    else
        weft__free(f);
    weft__loop_release(loop);
}

/* ---- done callbacks ---------------------------------------------------------- */

/* A batch: the callbacks that were registered when f completed, or one
 * added later.  `f` holds a reference taken when it was posted. */
static void run_batch(void *arg)
{
    weft_done_node_t *n = arg;
    weft_future_t *f = n->f;
    while (n != NULL) {
        weft_done_node_t *next = n->next;
        n->fn(f, n->arg);
        weft__free(n);
        n = next;
    }
    weft_future_release(f);
}

/* on_drop of a batch's handle: the loop closed before it ran (close has
 * already reported it). */
static void drop_batch(void *arg)
{
    weft_done_node_t *n = arg;
    weft_future_t *f = n->f;
    free_nodes(n);
    weft_future_release(f);
}

static weft_handle_t *batch_handle_new(weft_future_t *f)
{
    weft_handle_t *h = weft__handle_new(f->loop, WEFT__HK_SOON, run_batch, NULL);
    if (h != NULL)
        h->on_drop = drop_batch;
    return h;
}

/* Post a batch through h (which it consumes).  If the loop is closed the
 * callbacks are reported and freed.  Called with f->lock held. */
static int post_batch(weft_future_t *f, weft_done_node_t *batch, weft_handle_t *h)
{
    size_t count = 0;
    for (weft_done_node_t *n = batch; n != NULL; n = n->next) {
        n->f = f;
        count++;
    }
    h->arg = batch;
    weft_future_retain(f);
    int rc = weft__loop_post_handle(f->loop, h);
    if (rc == 0)
        return 0;
    weft__handle_unref(h);
    free_nodes(batch);
    atomic_fetch_sub_explicit(&f->refs, 1, memory_order_relaxed); /* caller still holds one */
    char msg[160];
    snprintf(msg, sizeof msg, "future %p: %zu done callback(s) not run: the loop is closed",
             (void *)f, count);
    if (weft_get_running_loop() == f->loop || !weft_loop_is_running(f->loop))
        weft__loop_report(f->loop, rc, msg, NULL);
    else
        weft__log(WEFT_LOG_ERROR, "%s (%s)", msg, weft_err_name(rc));
    return rc;
}

int weft_future_add_done_callback(weft_future_t *f, weft_done_fn fn, void *arg)
{
    if (f == NULL || fn == NULL)
        return -EINVAL;
    weft_done_node_t *n = weft__alloc(sizeof *n);
    if (n == NULL)
        return -ENOMEM;
    n->next = NULL;
    n->fn = fn;
    n->arg = arg;
    n->f = f;
    int rc = 0;
    weft__lock(&f->lock);
    if (!f->cbs_closed) {
        if (f->post_h == NULL && (f->post_h = batch_handle_new(f)) == NULL) {
            rc = -ENOMEM;
            weft__free(n);
        } else {
            weft_done_node_t **pp = &f->cb_head;
            while (*pp != NULL)
                pp = &(*pp)->next;
            *pp = n;
        }
    } else if (weft_loop_is_closed(f->loop)) {
        weft__free(n);
        rc = WEFT_ECLOSED; /* refused: fn will never be called */
    } else {
        weft_handle_t *h = batch_handle_new(f);
        if (h == NULL) {
            weft__free(n);
            rc = -ENOMEM;
        } else {
            rc = post_batch(f, n, h);
        }
    }
    weft__unlock(&f->lock);
    return rc;
}

int weft_future_remove_done_callback(weft_future_t *f, weft_done_fn fn, void *arg)
{
    if (f == NULL || fn == NULL)
        return -EINVAL;
    int removed = 0;
    weft_done_node_t *gone = NULL;
    weft__lock(&f->lock);
    weft_done_node_t **pp = &f->cb_head;
    while (*pp != NULL) {
        weft_done_node_t *n = *pp;
        if (n->fn == fn && n->arg == arg) {
            *pp = n->next;
            n->next = gone;
            gone = n;
            removed++;
        } else {
            pp = &n->next;
        }
    }
    weft__unlock(&f->lock);
    while (gone != NULL) {
        weft_done_node_t *next = gone->next;
        weft__free(gone);
        gone = next;
    }
    return removed;
}

/* ---- completion ---------------------------------------------------------- */

static void futex_wake_all(atomic_int *word)
{
    syscall(SYS_futex, (int *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static int complete(weft_future_t *f, int final, void *value, int code, char *msg)
{
    /* Two locked instructions in all (the lock and its release): the
     * state only leaves PENDING under the lock, so the lock alone picks
     * the one completer (future.h). */
    weft__lock(&f->lock);
    if (atomic_load_explicit(&f->state, memory_order_relaxed) != WEFT__F_PENDING) {
        weft__unlock(&f->lock);
        weft__free(msg);
        return WEFT_EINVALSTATE;
    }
    f->result = value;
    f->code = code;
    f->msg = msg;
    /* release: publishes the fields to lock-free readers of the state. */
    atomic_store_explicit(&f->state, final, memory_order_release);
    /* Plain-thread sleepers register under the lock (weft_future_wait). */
    bool sleepers = atomic_load_explicit(&f->waiters, memory_order_relaxed) > 0;
    f->cbs_closed = true;
    /* Wake awaiting tasks directly (no loop hop).  Under the lock, so a
     * waiter's node stays valid until its wake returned (future.h).  The
     * list is pushed at its head; reversed, waiters wake in the order they
     * came (a task group's completion hook, registered at spawn, runs
     * before the wake of a parent that awaits the child later). */
    weft_waiter_t *w = NULL;
    for (weft_waiter_t *x = f->waiters_list; x != NULL;) {
        weft_waiter_t *next = x->next;
        x->next = w;
        w = x;
        x = next;
    }
    f->waiters_list = NULL;
    while (w != NULL) {
        weft_waiter_t *next = w->next;
        w->linked = false;
        w->wake(w);
        w = next;
    }
    weft_done_node_t *batch = f->cb_head;
    weft_handle_t *h = f->post_h;
    f->cb_head = NULL;
    f->post_h = NULL;
    if (batch != NULL)
        post_batch(f, batch, h);
    else if (h != NULL)
        weft__handle_unref(h); /* every callback was removed */
    weft__unlock(&f->lock);
    /* The completer holds a reference through the call (weft/future.h), so
     * f is still there. */
    if (sleepers)
        futex_wake_all(&f->state);
    return 0;
}

int weft_future_set_result(weft_future_t *f, void *value)
{
    if (f == NULL)
        return -EINVAL;
    return complete(f, WEFT__F_RESULT, value, 0, NULL);
}

int weft_future_set_error(weft_future_t *f, int code, const char *msg)
{
    if (f == NULL || code >= 0 || code == WEFT_ECANCELED)
        return -EINVAL;
    if (is_final(load_state(f)))
        return WEFT_EINVALSTATE;
    char *copy = NULL;
    if (msg != NULL && (copy = weft__strdup(msg)) == NULL)
        return -ENOMEM;
    return complete(f, WEFT__F_ERROR, NULL, code, copy);
}

bool weft_future_cancel(weft_future_t *f, const char *msg)
{
    if (f == NULL || load_state(f) != WEFT__F_PENDING)
        return false;
    char *copy = msg != NULL ? weft__strdup(msg) : NULL;
    return complete(f, WEFT__F_CANCELLED, NULL, WEFT_ECANCELED, copy) == 0;
}

bool weft_future_done(const weft_future_t *f)
{
    return f != NULL && is_final(load_state(f));
}

bool weft_future_cancelled(const weft_future_t *f)
{
    return f != NULL && load_state(f) == WEFT__F_CANCELLED;
}

int weft_future_result(weft_future_t *f, void **value)
{
    if (f == NULL)
        return -EINVAL;
    int s = load_state(f);
    if (!is_final(s))
        return WEFT_EINVALSTATE;
    if (s == WEFT__F_RESULT) {
        if (value != NULL)
            *value = f->result;
        return 0;
    }
    atomic_store_explicit(&f->retrieved, true, memory_order_relaxed);
    return f->code;
}

int weft_future_error(weft_future_t *f)
{
    if (f == NULL)
        return -EINVAL;
    int s = load_state(f);
    if (!is_final(s))
        return WEFT_EINVALSTATE;
    if (s == WEFT__F_RESULT)
        return 0;
    atomic_store_explicit(&f->retrieved, true, memory_order_relaxed);
    return f->code;
}

const char *weft_future_message(const weft_future_t *f)
{
    if (f == NULL || !is_final(load_state(f)))
        return NULL;
    return f->msg;
}

weft_loop_t *weft_future_get_loop(const weft_future_t *f)
{
    return f != NULL ? f->loop : NULL;
}

/* ---- blocking wait for plain threads ------------------------------------ */

int weft_future_wait(weft_future_t *f, int64_t timeout_ns)
{
    if (f == NULL)
        return -EINVAL;
    /* A loop thread that blocks here could never run the work it waits
     * for. */
    if (weft_get_running_loop() != NULL)
        return -EPERM;
    if (is_final(load_state(f)))
        return 0;
    if (timeout_ns == 0)
        return WEFT_ETIMEDOUT;
    int64_t now = weft__now_ns();
    int64_t deadline = timeout_ns > 0 ? now + timeout_ns : -1;
    /* Poll first, unregistered, for a short while (SPIN_NS in worker.c): a
     * result that arrives meanwhile costs neither this thread a wakeup from
     * another CPU nor the completer a futex call. */
    int64_t spin = f->loop != NULL ? f->loop->spin_ns : weft__spin_ns();
    if (spin > 0) {
        int64_t spin_end = now + spin;
        if (deadline >= 0 && deadline < spin_end)
            spin_end = deadline;
        for (unsigned i = 0; weft__spin_step(&i, spin_end);)
            if (is_final(load_state(f)))
                return 0;
    }
    /* Registered under the lock that completion holds while it stores the
     * state: either complete() sees this count, or we see its state. */
    weft__lock(&f->lock);
    bool done = is_final(atomic_load_explicit(&f->state, memory_order_relaxed));
    if (!done)
        atomic_fetch_add_explicit(&f->waiters, 1, memory_order_relaxed);
    weft__unlock(&f->lock);
    if (done)
        return 0;
    int rc = 0;
    for (;;) {
        int s = load_state(f);
        if (is_final(s))
            break;
        struct timespec ts, *tsp = NULL;
        if (deadline >= 0) {
            int64_t left = deadline - weft__now_ns();
            if (left <= 0) {
                rc = WEFT_ETIMEDOUT;
                break;
            }
            ts.tv_sec = (time_t)(left / 1000000000);
            ts.tv_nsec = (long)(left % 1000000000);
            tsp = &ts;
        }
        /* The kernel re-checks state == s atomically, so a completion
         * between our load and the sleep makes this return at once. */
        syscall(SYS_futex, (int *)&f->state, FUTEX_WAIT_PRIVATE, s, tsp, NULL, 0);
    }
    atomic_fetch_sub_explicit(&f->waiters, 1, memory_order_relaxed);
    return rc;
}
