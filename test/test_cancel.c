/* Tests for cancellation (weft_task_cancel / cancelling / uncancel and
 * where requests are delivered), weft_shield, timeout scopes and
 * weft_wait_for (include/weft/task.h, include/weft/cancel.h), against the
 * rules of docs/cancellation.md.
 *
 * Nothing here calls a cmocka assert inside a task, a callback or a
 * helper thread: those CHECK into g_rec and the test thread asserts once
 * the runtime has returned the driving task's outcome (STYLE.md).  Every
 * test shuts its runtime down with nothing left running or abandoned.
 * Tasks meet through plain futures (one sets it, the other awaits), not
 * through sleeps, so no outcome depends on timing; sleeps appear only as
 * "long enough to still be waiting" (seconds) or as the timeouts under
 * test, and no test asserts that anything was fast.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched/common.h" /* weft__alloc_fail_nth: the allocation-failure seam */
#include "test/support/check.h"
#include "test/support/taskrun.h"
#include "weft.h"

static check_rec_t g_rec;

static int setup(void **state)
{
    (void)state;
    check_rec_init(&g_rec);
    return 0;
}

#define TEST(fn) cmocka_unit_test_setup(fn, setup)

/* Distinct addresses used as results. */
static int tag_a, tag_b;

/* ---- helpers used by several tests ------------------------------------------- */

/* A plain future on the calling task's loop. */
static weft_future_t *new_future(void)
{
    weft_future_t *f = NULL;
    CHECK(&g_rec, weft_future_new(NULL, &f) == 0);
    return f;
}

static weft_task_t *spawn(weft_fn fn, void *arg)
{
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(fn, arg, NULL, &t) == 0);
    return t;
}

/* Await t, return its outcome, release it. */
static int finish(weft_task_t *t, void **result)
{
    int rc = weft_await(weft_task_future(t), result);
    weft_task_release(t);
    return rc;
}

/* A child that announces it started (sets `started`), then sleeps long
 * and reports what its sleep returned; on a cancellation it optionally
 * catches it and returns `value` instead. */
typedef struct sleeper {
    weft_future_t *started; /* set by the child once it runs */
    int sleep_rc;
    bool catch_cancel;
    void *value;
    atomic_int cleanup_done;
} sleeper_t;

static int sleeper_body(void *arg, void **result)
{
    sleeper_t *s = arg;
    if (s->started != NULL)
        CHECK(&g_rec, tr_signal(s->started) == 0);
    s->sleep_rc = weft_sleep(100 * SEC);
    if (s->sleep_rc == WEFT_ECANCELED) {
        /* Cleanup that itself suspends: the canceller must wait for it. */
        CHECK(&g_rec, weft_yield() == 0);
        atomic_store(&s->cleanup_done, 1);
        if (s->catch_cancel) {
            *result = s->value;
            return 0;
        }
    }
    return s->sleep_rc;
}

/* Spawn a sleeper and wait until it runs (it then suspends in weft_sleep
 * or, on another worker, is about to). */
static weft_task_t *start_sleeper(sleeper_t *s)
{
    s->started = new_future();
    weft_task_t *t = spawn(sleeper_body, s);
    CHECK(&g_rec, weft_await(s->started, NULL) == 0);
    weft_future_release(s->started);
    s->started = NULL;
    return t;
}

/* ========================================================================== */
/* Delivery                                                                    */
/* ========================================================================== */

/* A plain pthread (no runtime) cancels a sleeping task. */
typedef struct foreign_cancel {
    weft_task_t *target;
    int rc;
} foreign_cancel_t;

static void *foreign_cancel_thread(void *arg)
{
    foreign_cancel_t *fc = arg;
    fc->rc = weft_task_cancel(fc->target, "from a plain thread");
    return NULL;
}

static int foreign_cancel_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    sleeper_t s = {0};
    weft_task_t *t = start_sleeper(&s);
    foreign_cancel_t fc = {t, 99};
    pthread_t th;
    CHECK(&g_rec, pthread_create(&th, NULL, foreign_cancel_thread, &fc) == 0);
    /* Awaiting (not joining) keeps this worker free; the join below is
     * immediate once the task ended. */
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == WEFT_ECANCELED);
    pthread_join(th, NULL);
    CHECK(&g_rec, fc.rc == 1);
    CHECK(&g_rec, s.sleep_rc == WEFT_ECANCELED);
    CHECK(&g_rec, atomic_load(&s.cleanup_done) == 1);
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(t)));
    CHECK(&g_rec, tr_streq(weft_future_message(weft_task_future(t)), "from a plain thread"));
    CHECK(&g_rec, weft_task_cancelling(t) == 1);
    weft_task_release(t);
    return 0;
}

static void test_cancel_from_a_plain_pthread_wakes_a_sleeping_task(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, foreign_cancel_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* A task blocked in weft_to_thread is woken by a cancellation; the
 * blocking call itself runs to its end and its result is dropped. */
typedef struct blocker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool entered, release;
    atomic_int finished;
    int to_thread_rc;
    weft_future_t *entered_f; /* set by the call, on a plain thread */
} blocker_t;

static int blocking_call(void *arg, void **result)
{
    blocker_t *b = arg;
    CHECK(&g_rec, tr_signal(b->entered_f) == 0);
    pthread_mutex_lock(&b->mu);
    while (!b->release)
        pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
    atomic_store(&b->finished, 1);
    *result = &tag_a;
    return 0;
}

static int to_thread_body(void *arg, void **result)
{
    (void)result;
    blocker_t *b = arg;
    void *v = NULL;
    b->to_thread_rc = weft_to_thread(blocking_call, b, &v);
    return b->to_thread_rc;
}

static int to_thread_cancel_driver(void *arg, void **result)
{
    (void)result;
    blocker_t *b = arg;
    b->entered_f = new_future();
    weft_task_t *t = spawn(to_thread_body, b);
    CHECK(&g_rec, weft_await(b->entered_f, NULL) == 0); /* the call is running */
    CHECK(&g_rec, weft_task_cancel(t, "stop waiting") == 1);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, b->to_thread_rc == WEFT_ECANCELED);
    /* The blocking call could not be interrupted: it is still blocked. */
    CHECK(&g_rec, atomic_load(&b->finished) == 0);
    pthread_mutex_lock(&b->mu);
    b->release = true;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    weft_task_release(t);
    weft_future_release(b->entered_f);
    return 0;
}

static void test_cancel_wakes_a_task_blocked_in_to_thread(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    blocker_t b = {.entered = false, .release = false};
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    atomic_init(&b.finished, 0);
    assert_int_equal(tr_run_in(rt, to_thread_cancel_driver, &b, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt); /* shutdown waits for the executor's running call */
    assert_int_equal(atomic_load(&b.finished), 1);
    pthread_cond_destroy(&b.cv);
    pthread_mutex_destroy(&b.mu);
}

/* A task awaiting a plain future: the future is cancelled along, with the
 * request's message. */
typedef struct awaiter {
    weft_future_t *f;
    weft_future_t *started;
    int await_rc;
} awaiter_t;

static int awaiter_body(void *arg, void **result)
{
    (void)result;
    awaiter_t *a = arg;
    CHECK(&g_rec, tr_signal(a->started) == 0);
    a->await_rc = weft_await(a->f, NULL);
    return a->await_rc;
}

static int cancel_awaiter_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    awaiter_t a = {new_future(), new_future(), 1};
    weft_task_t *t = spawn(awaiter_body, &a);
    CHECK(&g_rec, weft_await(a.started, NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(t, "not needed") == 1);
    CHECK(&g_rec, finish(t, NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, a.await_rc == WEFT_ECANCELED);
    CHECK(&g_rec, weft_future_cancelled(a.f));
    CHECK(&g_rec, tr_streq(weft_future_message(a.f), "not needed"));
    weft_future_release(a.f);
    weft_future_release(a.started);
    return 0;
}

static void test_cancel_of_a_task_awaiting_a_future_cancels_the_future(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, cancel_awaiter_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* A task awaiting another task: the request is forwarded to the inner
 * task, and the outer one waits until the inner one has finished. */
typedef struct outer_inner {
    sleeper_t inner;
    weft_task_t *inner_t;
    weft_future_t *awaiting; /* set by the outer task before it awaits */
    int await_rc;
    void *await_value;
    int cancelling_after;
    int yield_after;
} outer_inner_t;

static int outer_body(void *arg, void **result)
{
    (void)result;
    outer_inner_t *o = arg;
    o->inner_t = start_sleeper(&o->inner);
    CHECK(&g_rec, tr_signal(o->awaiting) == 0);
    o->await_rc = weft_await(weft_task_future(o->inner_t), &o->await_value);
    /* The inner task is done whenever the outer await returns. */
    CHECK(&g_rec, weft_future_done(weft_task_future(o->inner_t)));
    CHECK(&g_rec, atomic_load(&o->inner.cleanup_done) == 1);
    o->cancelling_after = weft_task_cancelling(weft_current_task());
    o->yield_after = weft_yield();
    return o->await_rc;
}

static int forward_driver(void *arg, void **result)
{
    (void)result;
    outer_inner_t *o = arg;
    o->awaiting = new_future();
    weft_task_t *outer = spawn(outer_body, o);
    CHECK(&g_rec, weft_await(o->awaiting, NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(outer, "pass it on") == 1);
    void *v = NULL;
    int rc = finish(outer, &v);
    weft_future_t *inner_f = weft_task_future(o->inner_t);
    if (o->inner.catch_cancel) {
        /* The inner task swallowed it: the outer await gets its value and
         * the outer request was used up by the forwarding. */
        CHECK(&g_rec, rc == 0);
        CHECK(&g_rec, o->await_rc == 0 && o->await_value == &tag_b);
        CHECK(&g_rec, !weft_future_cancelled(inner_f));
        CHECK(&g_rec, o->yield_after == 0);
    } else {
        CHECK(&g_rec, rc == WEFT_ECANCELED);
        CHECK(&g_rec, o->await_rc == WEFT_ECANCELED);
        CHECK(&g_rec, weft_future_cancelled(inner_f));
        CHECK(&g_rec, tr_streq(weft_future_message(inner_f), "pass it on"));
    }
    CHECK(&g_rec, o->cancelling_after == 1);
    CHECK(&g_rec, weft_task_cancelling(o->inner_t) == 1);
    weft_task_release(o->inner_t);
    weft_future_release(o->awaiting);
    return 0;
}

static void test_cancel_of_a_task_awaiting_a_task_forwards_and_waits_for_it(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    outer_inner_t o = {.inner = {.catch_cancel = false}};
    assert_int_equal(tr_run_in(rt, forward_driver, &o, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static void test_cancel_forwarded_to_a_task_that_swallows_it_yields_its_value(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    outer_inner_t o = {.inner = {.catch_cancel = true, .value = &tag_b}};
    assert_int_equal(tr_run_in(rt, forward_driver, &o, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* ========================================================================== */
/* cancelling / uncancel                                                      */
/* ========================================================================== */

/* One worker: between the driver's cancel and uncancel nothing else runs,
 * so the request is withdrawn before the sleeper could see it.  The wake
 * it caused is spurious: the sleeper sleeps on to its deadline. */
typedef struct withdrawn {
    weft_future_t *started;
    int64_t deadline;
    int sleep_rc;
    bool early;
} withdrawn_t;

static int withdrawn_sleeper(void *arg, void **result)
{
    withdrawn_t *w = arg;
    w->deadline = tr_now_ns() + 50 * MS;
    CHECK(&g_rec, tr_signal(w->started) == 0);
    w->sleep_rc = weft_sleep(50 * MS);
    w->early = tr_now_ns() < w->deadline;
    *result = &tag_a;
    return 0;
}

static int uncancel_before_delivery_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    /* The task's own request, withdrawn before its next suspension. */
    weft_task_t *self = weft_current_task();
    CHECK(&g_rec, weft_task_cancel(self, "never mind") == 1);
    CHECK(&g_rec, weft_task_cancelling(self) == 1);
    CHECK(&g_rec, weft_task_uncancel(self) == 0);
    CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, weft_sleep(MS) == 0);

    /* Another task's. */
    withdrawn_t w = {.started = new_future(), .sleep_rc = 1};
    weft_task_t *t = spawn(withdrawn_sleeper, &w);
    CHECK(&g_rec, weft_await(w.started, NULL) == 0); /* it now sleeps (one worker) */
    CHECK(&g_rec, weft_task_cancel(t, NULL) == 1);
    CHECK(&g_rec, weft_task_uncancel(t) == 0);
    void *v = NULL;
    CHECK(&g_rec, finish(t, &v) == 0);
    CHECK(&g_rec, v == &tag_a);
    CHECK(&g_rec, w.sleep_rc == 0);
    CHECK(&g_rec, !w.early);
    weft_future_release(w.started);
    return 0;
}

static void test_cancel_uncancel_before_delivery_never_interrupts(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, uncancel_before_delivery_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static int uncancel_one_of_two_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *self = weft_current_task();
    CHECK(&g_rec, weft_task_cancel(self, NULL) == 1);
    CHECK(&g_rec, weft_task_cancel(self, NULL) == 1);
    CHECK(&g_rec, weft_task_cancelling(self) == 2);
    CHECK(&g_rec, weft_task_uncancel(self) == 1); /* one left: still pending */
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    CHECK(&g_rec, weft_yield() == 0); /* delivered once */
    CHECK(&g_rec, weft_task_cancelling(self) == 1);
    CHECK(&g_rec, weft_task_uncancel(self) == 0);
    CHECK(&g_rec, weft_task_uncancel(self) == 0); /* never below zero */
    return 0;
}

static void test_cancel_uncancel_of_one_of_two_requests_keeps_one_pending(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, uncancel_one_of_two_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* ========================================================================== */
/* How a task ends                                                              */
/* ========================================================================== */

static int swallow_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    sleeper_t s = {.catch_cancel = true, .value = &tag_a};
    weft_task_t *t = start_sleeper(&s);
    CHECK(&g_rec, weft_task_cancel(t, "stop") == 1);
    void *v = NULL;
    weft_future_t *f = weft_task_future(t);
    CHECK(&g_rec, weft_await(f, &v) == 0);
    CHECK(&g_rec, v == &tag_a);
    CHECK(&g_rec, !weft_future_cancelled(f));
    CHECK(&g_rec, s.sleep_rc == WEFT_ECANCELED);
    CHECK(&g_rec, weft_task_cancelling(t) == 1); /* it never uncancelled */
    CHECK(&g_rec, weft_task_cancel(t, NULL) == 0);
    CHECK(&g_rec, weft_task_cancelling(t) == 1); /* a refused request is not counted */
    weft_task_release(t);
    return 0;
}

static void test_cancel_task_that_catches_it_and_returns_a_value_ends_with_it(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, swallow_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* A task that cancels itself and returns without suspending: 0 ends
 * cancelled (the request was never delivered), an error stays an error. */
static int self_cancel_return_body(void *arg, void **result)
{
    int code = (int)(intptr_t)arg;
    CHECK(&g_rec, weft_task_cancel(weft_current_task(), "self") == 1);
    *result = &tag_a;
    return code;
}

static int self_cancel_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *t = spawn(self_cancel_return_body, (void *)(intptr_t)0);
    CHECK(&g_rec, finish(t, NULL) == WEFT_ECANCELED);
    t = spawn(self_cancel_return_body, (void *)(intptr_t)0);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(t)));
    CHECK(&g_rec, tr_streq(weft_future_message(weft_task_future(t)), "self"));
    weft_task_release(t);

    t = spawn(self_cancel_return_body, (void *)(intptr_t)-EIO);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == -EIO);
    CHECK(&g_rec, !weft_future_cancelled(weft_task_future(t)));
    weft_task_release(t);
    return 0;
}

static void test_cancel_self_cancelled_task_returning_without_suspending(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, self_cancel_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Cancelled before its first step, a task never runs its body (asyncio
 * throws CancelledError in before the first line); a request withdrawn
 * before the first step lets it run normally. */
static int count_runs_body(void *arg, void **result)
{
    atomic_fetch_add((atomic_int *)arg, 1);
    *result = &tag_b;
    return 0;
}

static int before_start_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    atomic_int runs;
    atomic_init(&runs, 0);
    weft_task_t *t = spawn(count_runs_body, &runs); /* one worker: not started */
    CHECK(&g_rec, weft_task_cancel(t, "too late") == 1);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, tr_streq(weft_future_message(weft_task_future(t)), "too late"));
    CHECK(&g_rec, atomic_load(&runs) == 0);
    weft_task_release(t);

    t = spawn(count_runs_body, &runs);
    CHECK(&g_rec, weft_task_cancel(t, NULL) == 1);
    CHECK(&g_rec, weft_task_uncancel(t) == 0);
    void *v = NULL;
    CHECK(&g_rec, finish(t, &v) == 0);
    CHECK(&g_rec, v == &tag_b);
    CHECK(&g_rec, atomic_load(&runs) == 1);
    return 0;
}

static void test_cancel_before_first_step_never_runs_the_body(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, before_start_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* A request pending when weft_await starts: a plain future is cancelled at
 * once; a task is asked to cancel and waited for; a done future's outcome
 * is returned without suspending, and the request stays pending. */
static int pending_child_body(void *arg, void **result)
{
    (void)result;
    sleeper_t *s = arg;
    s->sleep_rc = weft_sleep(100 * SEC);
    atomic_store(&s->cleanup_done, 1);
    return s->sleep_rc;
}

static int pending_on_entry_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *self = weft_current_task();

    weft_future_t *f = new_future();
    CHECK(&g_rec, weft_task_cancel(self, "pending") == 1);
    CHECK(&g_rec, weft_await(f, NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, weft_future_cancelled(f));
    CHECK(&g_rec, tr_streq(weft_future_message(f), "pending"));
    weft_future_release(f);

    sleeper_t s = {.sleep_rc = 1};
    weft_task_t *child = spawn(pending_child_body, &s);
    CHECK(&g_rec, weft_task_cancel(self, "pass") == 1);
    CHECK(&g_rec, weft_await(weft_task_future(child), NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, atomic_load(&s.cleanup_done) == 1 || s.sleep_rc == 1);
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(child)));
    CHECK(&g_rec, tr_streq(weft_future_message(weft_task_future(child)), "pass"));
    weft_task_release(child);

    f = new_future();
    CHECK(&g_rec, weft_future_set_result(f, &tag_a) == 0);
    CHECK(&g_rec, weft_task_cancel(self, NULL) == 1);
    void *v = NULL;
    CHECK(&g_rec, weft_await(f, &v) == 0);
    CHECK(&g_rec, v == &tag_a);
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    weft_future_release(f);
    CHECK(&g_rec, weft_task_cancelling(self) == 3);
    return 0;
}

static void test_cancel_pending_on_entry_to_await(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, pending_on_entry_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Messages: the first message of the pending requests is delivered; a
 * request after a delivery brings its own. */
typedef struct msg_probe {
    weft_future_t *started;
    weft_future_t *caught; /* set once the first request was caught */
    weft_future_t *go;     /* set once the second request was made */
} msg_probe_t;

static int twice_cancelled_body(void *arg, void **result)
{
    (void)result;
    msg_probe_t *p = arg;
    CHECK(&g_rec, tr_signal(p->started) == 0);
    CHECK(&g_rec, weft_sleep(100 * SEC) == WEFT_ECANCELED);
    CHECK(&g_rec, tr_signal(p->caught) == 0);
    /* Wait for the second request, unaffected by it: shielded. */
    weft_future_t *outer = NULL;
    CHECK(&g_rec, weft_shield(p->go, &outer) == 0);
    int rc = weft_await(outer, NULL);
    weft_future_release(outer);
    CHECK(&g_rec, rc == WEFT_ECANCELED || rc == 0);
    if (rc == 0)
        CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    return WEFT_ECANCELED;
}

static int messages_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    /* Pending together: the first message with text wins. */
    sleeper_t s = {0};
    weft_task_t *t = start_sleeper(&s);
    CHECK(&g_rec, weft_task_cancel(t, NULL) == 1);
    CHECK(&g_rec, weft_task_cancel(t, "first words") == 1);
    CHECK(&g_rec, weft_task_cancel(t, "second words") == 1);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == WEFT_ECANCELED);
    weft_future_t *tf = weft_task_future(t);
    CHECK(&g_rec, tr_streq(weft_future_message(tf), "first words"));
    weft_task_release(t);

    /* After a delivery, a new request brings its own message. */
    msg_probe_t p = {new_future(), new_future(), new_future()};
    t = spawn(twice_cancelled_body, &p);
    CHECK(&g_rec, weft_await(p.started, NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(t, "one") == 1);
    CHECK(&g_rec, weft_await(p.caught, NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(t, "two") == 1);
    CHECK(&g_rec, tr_signal(p.go) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, tr_streq(weft_future_message(weft_task_future(t)), "two"));
    weft_task_release(t);
    weft_future_release(p.started);
    weft_future_release(p.caught);
    weft_future_release(p.go);
    return 0;
}

static void test_cancel_message_of_each_delivered_request(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1); /* the requests meet a suspended task */
    assert_int_equal(tr_run_in(rt, messages_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* ========================================================================== */
/* Cancellation racing normal completion across two workers                    */
/* ========================================================================== */

/* Two shapes, many times each:
 *   A. a task that suspends a few times and returns a value, cancelled by
 *      a task on the other worker at a random moment: the canceller's
 *      weft_task_cancel returns 1 exactly when the task ends cancelled,
 *      0 exactly when it ends with its value;
 *   B. a task awaiting a future, then yielding, then awaiting a `hold`
 *      future, while the future is completed and the task cancelled in
 *      three orders (by another task in a race, cancel first, completion
 *      first): the request is delivered at exactly one of the three
 *      suspension points, the first await returns the future's value or
 *      WEFT_ECANCELED, and the future ends exactly one way. */
#define RACE_ROUNDS 300

typedef struct race {
    int victim_yields, canceller_yields;
    weft_task_t *victim;
    weft_future_t *f, *started, *hold;
    int cancel_rc;
    int rc[3];
    void *await_value;
    int completer_rc;
} race_t;

static unsigned rnd(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

static int race_victim_a(void *arg, void **result)
{
    race_t *r = arg;
    for (int i = 0; i < r->victim_yields; i++) {
        int rc = weft_yield();
        if (rc != 0)
            return rc; /* delivered: end cancelled */
    }
    *result = &tag_a;
    return 0;
}

static int race_canceller(void *arg, void **result)
{
    (void)result;
    race_t *r = arg;
    for (int i = 0; i < r->canceller_yields; i++)
        CHECK(&g_rec, weft_yield() == 0);
    r->cancel_rc = weft_task_cancel(r->victim, "race");
    return 0;
}

static int race_victim_b(void *arg, void **result)
{
    (void)result;
    race_t *r = arg;
    CHECK(&g_rec, tr_signal(r->started) == 0);
    r->rc[0] = weft_await(r->f, &r->await_value);
    r->rc[1] = weft_yield();
    r->rc[2] = weft_await(r->hold, NULL);
    return 0;
}

static int race_completer(void *arg, void **result)
{
    (void)result;
    race_t *r = arg;
    for (int i = 0; i < r->victim_yields; i++)
        CHECK(&g_rec, weft_yield() == 0);
    r->completer_rc = weft_future_set_result(r->f, &tag_b);
    return 0;
}

typedef struct race_stats {
    int cancelled, completed; /* shape A */
    int at[4]; /* shape B: delivered nowhere (ended cancelled), at await, yield, hold */
} race_stats_t;

static int race_driver(void *arg, void **result)
{
    (void)result;
    race_stats_t *st = arg;
    unsigned seed = 12345;
    for (int round = 0; round < RACE_ROUNDS; round++) {
        /* A */
        race_t r = {.victim_yields = (int)(rnd(&seed) % 4),
                    .canceller_yields = (int)(rnd(&seed) % 4),
                    .cancel_rc = 9};
        r.victim = spawn(race_victim_a, &r);
        weft_task_t *c = spawn(race_canceller, &r);
        CHECK(&g_rec, finish(c, NULL) == 0);
        void *v = NULL;
        int rc = weft_await(weft_task_future(r.victim), &v);
        CHECK(&g_rec, r.cancel_rc == 0 || r.cancel_rc == 1);
        if (r.cancel_rc == 1) {
            CHECK(&g_rec, rc == WEFT_ECANCELED);
            CHECK(&g_rec, weft_future_cancelled(weft_task_future(r.victim)));
            st->cancelled++;
        } else {
            CHECK(&g_rec, rc == 0 && v == &tag_a);
            st->completed++;
        }
        weft_task_release(r.victim);

        /* B */
        for (int order = 0; order < 3; order++) {
            race_t b = {.victim_yields = (int)(rnd(&seed) % 3),
                        .cancel_rc = 9,
                        .completer_rc = 9,
                        .rc = {9, 9, 9}};
            b.f = new_future();
            b.started = new_future();
            b.hold = new_future();
            b.victim = spawn(race_victim_b, &b);
            CHECK(&g_rec, weft_await(b.started, NULL) == 0);
            if (order == 0) {
                weft_task_t *comp = spawn(race_completer, &b);
                b.cancel_rc = weft_task_cancel(b.victim, "race");
                CHECK(&g_rec, finish(comp, NULL) == 0);
            } else if (order == 1) {
                b.cancel_rc = weft_task_cancel(b.victim, "first");
                b.completer_rc = weft_future_set_result(b.f, &tag_b);
            } else {
                b.completer_rc = weft_future_set_result(b.f, &tag_b);
                b.cancel_rc = weft_task_cancel(b.victim, "second");
            }
            /* The victim cannot finish before `hold`, so the request was
             * always accepted. */
            CHECK(&g_rec, b.cancel_rc == 1);
            int hold_rc = weft_future_set_result(b.hold, NULL);
            int end_rc = finish(b.victim, NULL);
            int where = -1, n = 0;
            for (int i = 0; i < 3; i++) {
                if (b.rc[i] == WEFT_ECANCELED) {
                    where = i;
                    n++;
                } else {
                    CHECK(&g_rec, b.rc[i] == 0);
                }
            }
            /* Or nowhere: hold was done before the victim reached it, so
             * it ended with the request undelivered, hence cancelled. */
            CHECK(&g_rec, n == 1 || (n == 0 && hold_rc == 0 && end_rc == WEFT_ECANCELED));
            CHECK(&g_rec, n == 0 || end_rc == 0);
            if (b.rc[0] == 0)
                CHECK(&g_rec, b.await_value == &tag_b && b.completer_rc == 0);
            else /* cancelled by the victim, or completed just before: one way */
                CHECK(&g_rec, weft_future_cancelled(b.f) == (b.completer_rc != 0));
            /* hold was cancelled exactly when the request met it. */
            CHECK(&g_rec, (hold_rc != 0) == (where == 2));
            st->at[where + 1]++;
            weft_future_release(b.f);
            weft_future_release(b.started);
            weft_future_release(b.hold);
        }
    }
    return 0;
}

static void
test_cancel_racing_completion_across_two_workers_has_one_consistent_outcome(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    race_stats_t st = {0};
    assert_int_equal(tr_run_in(rt, race_driver, &st, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(st.cancelled + st.completed, RACE_ROUNDS);
    assert_int_equal(st.at[0] + st.at[1] + st.at[2] + st.at[3], 3 * RACE_ROUNDS);
    print_message("  A: %d cancelled, %d completed; B: delivered at await %d, yield %d, "
                  "hold %d, at the end %d\n",
                  st.cancelled, st.completed, st.at[1], st.at[2], st.at[3], st.at[0]);
    tr_free_rt(rt);
}

/* ========================================================================== */
/* shield                                                                      */
/* ========================================================================== */

typedef struct shield_probe {
    weft_future_t *inner_f;
    weft_future_t *outer_f;
    weft_future_t *awaiting;
    int await_rc;
} shield_probe_t;

static int shield_awaiter(void *arg, void **result)
{
    (void)result;
    shield_probe_t *p = arg;
    CHECK(&g_rec, tr_signal(p->awaiting) == 0);
    p->await_rc = weft_await(p->outer_f, NULL);
    return p->await_rc;
}

static int inner_worker_body(void *arg, void **result)
{
    weft_future_t *go = arg;
    int rc = weft_await(go, NULL);
    *result = &tag_a;
    return rc;
}

static int shield_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    /* inner: a task waiting for `go`. */
    weft_future_t *go = new_future();
    weft_task_t *inner = spawn(inner_worker_body, go);
    shield_probe_t p = {.inner_f = weft_task_future(inner), .awaiting = new_future()};
    CHECK(&g_rec, weft_shield(p.inner_f, &p.outer_f) == 0);
    CHECK(&g_rec, p.outer_f != p.inner_f);
    weft_task_t *aw = spawn(shield_awaiter, &p);
    CHECK(&g_rec, weft_await(p.awaiting, NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(aw, "outer only") == 1);
    CHECK(&g_rec, finish(aw, NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, p.await_rc == WEFT_ECANCELED);
    CHECK(&g_rec, weft_future_cancelled(p.outer_f));
    CHECK(&g_rec, !weft_future_done(p.inner_f)); /* still running */
    CHECK(&g_rec, weft_task_cancelling(inner) == 0);
    CHECK(&g_rec, tr_signal(go) == 0);
    void *v = NULL;
    CHECK(&g_rec, weft_await(p.inner_f, &v) == 0);
    CHECK(&g_rec, v == &tag_a);
    weft_future_release(p.outer_f);
    weft_future_release(p.awaiting);
    weft_future_release(go);
    weft_task_release(inner);
    return 0;
}

static void test_shield_cancelling_the_awaiter_leaves_the_inner_work_running(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, shield_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static int shield_outcomes_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    for (int kind = 0; kind < 3; kind++) {
        weft_future_t *in = new_future(), *out = NULL;
        CHECK(&g_rec, weft_shield(in, &out) == 0);
        if (kind == 0)
            CHECK(&g_rec, weft_future_set_result(in, &tag_b) == 0);
        else if (kind == 1)
            CHECK(&g_rec, weft_future_set_error(in, -EPIPE, "broken") == 0);
        else
            CHECK(&g_rec, weft_future_cancel(in, "inner cancelled"));
        void *v = NULL;
        int rc = weft_await(out, &v);
        if (kind == 0) {
            CHECK(&g_rec, rc == 0 && v == &tag_b);
        } else if (kind == 1) {
            CHECK(&g_rec, rc == -EPIPE);
            CHECK(&g_rec, tr_streq(weft_future_message(out), "broken"));
        } else {
            CHECK(&g_rec, rc == WEFT_ECANCELED);
            CHECK(&g_rec, weft_future_cancelled(out));
            CHECK(&g_rec, tr_streq(weft_future_message(out), "inner cancelled"));
        }
        weft_future_release(out);
        weft_future_release(in);
    }
    /* A done inner is its own shield. */
    weft_future_t *in = new_future(), *out = NULL;
    CHECK(&g_rec, weft_future_set_result(in, &tag_a) == 0);
    CHECK(&g_rec, weft_shield(in, &out) == 0);
    CHECK(&g_rec, out == in);
    weft_future_release(out);
    /* Cancelling the outer directly leaves the inner alone; completing the
     * inner afterwards touches nothing. */
    out = NULL;
    weft_future_t *in2 = new_future();
    CHECK(&g_rec, weft_shield(in2, &out) == 0);
    CHECK(&g_rec, weft_future_cancel(out, NULL));
    CHECK(&g_rec, weft_yield() == 0); /* outer's done callback runs */
    CHECK(&g_rec, !weft_future_done(in2));
    CHECK(&g_rec, tr_signal(in2) == 0);
    CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, weft_future_cancelled(out));
    weft_future_release(out);
    weft_future_release(in2);
    weft_future_release(in);
    return 0;
}

static void test_shield_passes_on_result_error_and_cancellation(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, shield_outcomes_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static void test_shield_errors(void **state)
{
    (void)state;
    weft_future_t *out = (weft_future_t *)&tag_a;
    assert_int_equal(weft_shield(NULL, &out), -EINVAL);
    assert_ptr_equal(out, &tag_a);
    weft_loop_t *loop = NULL;
    assert_int_equal(weft_loop_new(&loop), 0);
    weft_future_t *in = NULL;
    assert_int_equal(weft_future_new(loop, &in), 0);
    assert_int_equal(weft_shield(in, NULL), -EINVAL);
    assert_int_equal(weft_loop_close(loop), 0);
    assert_int_equal(weft_shield(in, &out), WEFT_ECLOSED);
    assert_ptr_equal(out, &tag_a);
    weft_future_release(in);
    weft_loop_free(loop);
}

/* ========================================================================== */
/* Timeout scopes                                                              */
/* ========================================================================== */

static int timeout_expiry_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *self = weft_current_task();
    weft_timeout_t *to = NULL;
    int64_t before = tr_now_ns();
    CHECK(&g_rec, weft_timeout_enter(20 * MS, &to) == 0);
    int64_t when = weft_timeout_when(to);
    CHECK(&g_rec, when >= before + 20 * MS && when <= tr_now_ns() + 20 * MS);
    CHECK(&g_rec, !weft_timeout_expired(to));
    int rc = weft_sleep(100 * SEC);
    CHECK(&g_rec, rc == WEFT_ECANCELED);
    CHECK(&g_rec, tr_now_ns() >= when); /* never early */
    CHECK(&g_rec, weft_timeout_expired(to));
    CHECK(&g_rec, weft_task_cancelling(self) == 1);
    CHECK(&g_rec, weft_timeout_exit(to, rc) == WEFT_ETIMEDOUT);
    CHECK(&g_rec, weft_task_cancelling(self) == 0);
    CHECK(&g_rec, weft_yield() == 0);

    /* Not expired: the status comes back unchanged. */
    CHECK(&g_rec, weft_timeout_enter(100 * SEC, &to) == 0);
    CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, weft_timeout_exit(to, -EIO) == -EIO);
    CHECK(&g_rec, weft_timeout_enter(100 * SEC, &to) == 0);
    CHECK(&g_rec, weft_timeout_exit(to, 0) == 0);
    /* Never. */
    CHECK(&g_rec, weft_timeout_enter(-1, &to) == 0);
    CHECK(&g_rec, weft_timeout_when(to) == -1);
    CHECK(&g_rec, weft_sleep(MS) == 0);
    CHECK(&g_rec, weft_timeout_exit(to, WEFT_ECANCELED) == WEFT_ECANCELED);
    return 0;
}

static void test_timeout_expiry_turns_its_cancellation_into_etimedout(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, timeout_expiry_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static int past_deadline_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *self = weft_current_task();
    weft_timeout_t *to = NULL;
    CHECK(&g_rec, weft_timeout_at_enter(0, &to) == 0);
    CHECK(&g_rec, weft_timeout_expired(to));
    CHECK(&g_rec, weft_timeout_when(to) == 0);
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    CHECK(&g_rec, weft_timeout_exit(to, WEFT_ECANCELED) == WEFT_ETIMEDOUT);
    CHECK(&g_rec, weft_timeout_enter(0, &to) == 0);
    CHECK(&g_rec, weft_sleep(100 * SEC) == WEFT_ECANCELED);
    CHECK(&g_rec, weft_timeout_exit(to, WEFT_ECANCELED) == WEFT_ETIMEDOUT);

    /* Expired, but the body ended without reaching a suspension point: the
     * undelivered request is withdrawn and never seen. */
    CHECK(&g_rec, weft_timeout_at_enter(0, &to) == 0);
    CHECK(&g_rec, weft_task_cancelling(self) == 1);
    CHECK(&g_rec, weft_timeout_exit(to, 0) == 0);
    CHECK(&g_rec, weft_task_cancelling(self) == 0);
    CHECK(&g_rec, weft_yield() == 0);

    /* Expired and caught: the body returns a value; nothing to convert. */
    CHECK(&g_rec, weft_timeout_enter(0, &to) == 0);
    CHECK(&g_rec, weft_sleep(100 * SEC) == WEFT_ECANCELED);
    CHECK(&g_rec, weft_timeout_exit(to, 0) == 0);
    CHECK(&g_rec, weft_task_cancelling(self) == 0);
    return 0;
}

static void test_timeout_past_deadline_cancels_at_the_first_suspension(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, past_deadline_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* An outer cancellation inside a scope is left alone, expired or not. */
typedef struct outside {
    weft_future_t *entered;
    int exit_rc;
    int cancelling_after;
} outside_t;

static int outside_cancel_body(void *arg, void **result)
{
    (void)result;
    outside_t *o = arg;
    weft_timeout_t *to = NULL;
    CHECK(&g_rec, weft_timeout_enter(100 * SEC, &to) == 0);
    CHECK(&g_rec, tr_signal(o->entered) == 0);
    int rc = weft_sleep(100 * SEC);
    CHECK(&g_rec, rc == WEFT_ECANCELED);
    CHECK(&g_rec, !weft_timeout_expired(to));
    o->exit_rc = weft_timeout_exit(to, rc);
    o->cancelling_after = weft_task_cancelling(weft_current_task());
    return o->exit_rc;
}

static int outside_cancel_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    outside_t o = {.entered = new_future(), .exit_rc = 1};
    weft_task_t *t = spawn(outside_cancel_body, &o);
    CHECK(&g_rec, weft_await(o.entered, NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(t, NULL) == 1);
    CHECK(&g_rec, finish(t, NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, o.exit_rc == WEFT_ECANCELED);
    CHECK(&g_rec, o.cancelling_after == 1);
    weft_future_release(o.entered);
    return 0;
}

static int both_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *self = weft_current_task();
    /* Expired (one request) and cancelled from outside (another): exit
     * withdraws its own, sees one left, and does not claim it. */
    weft_timeout_t *to = NULL;
    CHECK(&g_rec, weft_timeout_at_enter(0, &to) == 0);
    CHECK(&g_rec, weft_task_cancel(self, "outside") == 1);
    CHECK(&g_rec, weft_task_cancelling(self) == 2);
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    CHECK(&g_rec, weft_timeout_expired(to));
    CHECK(&g_rec, weft_timeout_exit(to, WEFT_ECANCELED) == WEFT_ECANCELED);
    CHECK(&g_rec, weft_task_cancelling(self) == 1);
    CHECK(&g_rec, weft_task_uncancel(self) == 0);
    return 0;
}

static void test_timeout_leaves_an_outer_cancellation_alone(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, outside_cancel_driver, NULL, NULL), 0);
    assert_int_equal(tr_run_in(rt, both_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static int nested_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *self = weft_current_task();
    weft_timeout_t *outer = NULL, *inner = NULL;

    /* The outer scope expires first: the inner one passes the
     * cancellation through, the outer one claims it. */
    CHECK(&g_rec, weft_timeout_enter(20 * MS, &outer) == 0);
    CHECK(&g_rec, weft_timeout_enter(100 * SEC, &inner) == 0);
    int rc = weft_sleep(100 * SEC);
    CHECK(&g_rec, rc == WEFT_ECANCELED);
    CHECK(&g_rec, !weft_timeout_expired(inner));
    CHECK(&g_rec, weft_timeout_expired(outer));
    rc = weft_timeout_exit(inner, rc);
    CHECK(&g_rec, rc == WEFT_ECANCELED);
    rc = weft_timeout_exit(outer, rc);
    CHECK(&g_rec, rc == WEFT_ETIMEDOUT);
    CHECK(&g_rec, weft_task_cancelling(self) == 0);

    /* The inner one expires first: it claims it; the outer body goes on. */
    CHECK(&g_rec, weft_timeout_enter(100 * SEC, &outer) == 0);
    CHECK(&g_rec, weft_timeout_enter(20 * MS, &inner) == 0);
    rc = weft_sleep(100 * SEC);
    CHECK(&g_rec, weft_timeout_exit(inner, rc) == WEFT_ETIMEDOUT);
    CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, !weft_timeout_expired(outer));
    CHECK(&g_rec, weft_timeout_exit(outer, 0) == 0);

    /* Both expired, the outer before the inner was entered: the inner one
     * entered with the outer's request already counted, so after its own
     * is withdrawn the count is back at its entry value: it claims the
     * cancellation; the outer one then has nothing left to convert. */
    CHECK(&g_rec, weft_timeout_at_enter(0, &outer) == 0);
    CHECK(&g_rec, weft_timeout_at_enter(0, &inner) == 0);
    CHECK(&g_rec, weft_task_cancelling(self) == 2);
    rc = weft_yield();
    CHECK(&g_rec, rc == WEFT_ECANCELED);
    rc = weft_timeout_exit(inner, rc);
    CHECK(&g_rec, rc == WEFT_ETIMEDOUT);
    rc = weft_timeout_exit(outer, rc);
    CHECK(&g_rec, rc == WEFT_ETIMEDOUT);
    CHECK(&g_rec, weft_task_cancelling(self) == 0);
    CHECK(&g_rec, weft_yield() == 0);
    return 0;
}

static void test_timeout_nested_scopes_each_claim_only_their_own(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, nested_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static int reschedule_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_timeout_t *to = NULL;
    CHECK(&g_rec, weft_timeout_enter(100 * SEC, &to) == 0);
    int64_t when = tr_now_ns() + 20 * MS;
    CHECK(&g_rec, weft_timeout_reschedule(to, when) == 0);
    CHECK(&g_rec, weft_timeout_when(to) == when);
    int rc = weft_sleep(100 * SEC);
    CHECK(&g_rec, rc == WEFT_ECANCELED);
    CHECK(&g_rec, tr_now_ns() >= when);
    CHECK(&g_rec, weft_timeout_reschedule(to, -1) == WEFT_EINVALSTATE); /* expired */
    CHECK(&g_rec, weft_timeout_exit(to, rc) == WEFT_ETIMEDOUT);

    /* Pushed out to never: the old deadline does nothing. */
    CHECK(&g_rec, weft_timeout_enter(10 * MS, &to) == 0);
    CHECK(&g_rec, weft_timeout_reschedule(to, -1) == 0);
    CHECK(&g_rec, weft_timeout_when(to) == -1);
    CHECK(&g_rec, weft_sleep(40 * MS) == 0);
    CHECK(&g_rec, !weft_timeout_expired(to));
    CHECK(&g_rec, weft_timeout_exit(to, 0) == 0);

    /* Pulled into the past: expires at once. */
    CHECK(&g_rec, weft_timeout_enter(100 * SEC, &to) == 0);
    CHECK(&g_rec, weft_timeout_reschedule(to, weft_loop_time(weft_get_running_loop()) - 1) == 0);
    CHECK(&g_rec, weft_timeout_expired(to));
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    CHECK(&g_rec, weft_timeout_exit(to, WEFT_ECANCELED) == WEFT_ETIMEDOUT);
    return 0;
}

static void test_timeout_reschedule_moves_the_deadline(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, reschedule_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Another task reschedules a scope it does not own; a non-owner cannot
 * exit it. */
typedef struct resched_other {
    weft_timeout_t *to;
    weft_future_t *entered;
    int exit_rc_other;
} resched_other_t;

static int scope_owner_body(void *arg, void **result)
{
    (void)result;
    resched_other_t *r = arg;
    CHECK(&g_rec, weft_timeout_enter(100 * SEC, &r->to) == 0);
    CHECK(&g_rec, tr_signal(r->entered) == 0);
    int rc = weft_sleep(100 * SEC);
    return weft_timeout_exit(r->to, rc);
}

static int resched_other_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    resched_other_t r = {.entered = new_future()};
    weft_task_t *t = spawn(scope_owner_body, &r);
    CHECK(&g_rec, weft_await(r.entered, NULL) == 0);
    CHECK(&g_rec, weft_timeout_exit(r.to, 0) == -EPERM);
    CHECK(&g_rec, weft_timeout_reschedule(r.to, 0) == 0);
    CHECK(&g_rec, finish(t, NULL) == WEFT_ETIMEDOUT);
    weft_future_release(r.entered);
    return 0;
}

static void test_timeout_reschedule_from_another_task(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, resched_other_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static int timeout_args_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_timeout_t *to = (weft_timeout_t *)&tag_a;
    CHECK(&g_rec, weft_timeout_enter(-2, &to) == -EINVAL);
    CHECK(&g_rec, weft_timeout_at_enter(-5, &to) == -EINVAL);
    CHECK(&g_rec, to == (weft_timeout_t *)&tag_a);
    CHECK(&g_rec, weft_timeout_enter(SEC, NULL) == -EINVAL);
    CHECK(&g_rec, weft_timeout_at_enter(-1, NULL) == -EINVAL);
    CHECK(&g_rec, weft_timeout_enter(SEC, &to) == 0);
    CHECK(&g_rec, weft_timeout_reschedule(to, -2) == -EINVAL);
    CHECK(&g_rec, weft_timeout_exit(to, 0) == 0);
    return 0;
}

static void test_timeout_errors(void **state)
{
    (void)state;
    weft_timeout_t *to = (weft_timeout_t *)&tag_a;
    assert_int_equal(weft_timeout_enter(SEC, &to), -EPERM);
    assert_int_equal(weft_timeout_at_enter(0, &to), -EPERM);
    assert_int_equal(weft_timeout_enter(-2, &to), -EPERM);
    assert_ptr_equal(to, &tag_a);
    assert_int_equal(weft_timeout_reschedule(NULL, 0), -EINVAL);
    assert_int_equal(weft_timeout_exit(NULL, 0), -EINVAL);
    assert_int_equal(weft_timeout_when(NULL), -1);
    assert_false(weft_timeout_expired(NULL));
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, timeout_args_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* From a plain thread: moving the deadline needs a loop to arm it on
 * (-EPERM); disarming does not. */
typedef struct plain_resched {
    weft_timeout_t *to;
    atomic_int published; /* release: publishes to */
    weft_future_t *go;    /* completed by the test thread */
    int exit_rc;
} plain_resched_t;

static int plain_resched_body(void *arg, void **result)
{
    (void)result;
    plain_resched_t *p = arg;
    CHECK(&g_rec, weft_timeout_enter(100 * SEC, &p->to) == 0);
    atomic_store_explicit(&p->published, 1, memory_order_release);
    int rc = weft_await(p->go, NULL);
    p->exit_rc = weft_timeout_exit(p->to, rc);
    return 0;
}

static void test_timeout_reschedule_from_a_plain_thread(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    plain_resched_t p = {.to = NULL, .exit_rc = 1};
    atomic_init(&p.published, 0);
    assert_int_equal(weft_future_new(weft_runtime_loop(rt, 0), &p.go), 0);
    weft_future_t *f = NULL;
    assert_int_equal(weft_runtime_submit(rt, plain_resched_body, &p, &f), 0);
    for (int i = 0; i < 30000 && !atomic_load_explicit(&p.published, memory_order_acquire); i++)
        tr_sleep_ms(1);
    assert_int_equal(atomic_load_explicit(&p.published, memory_order_acquire), 1);
    assert_int_equal(weft_timeout_reschedule(p.to, tr_now_ns() + 100 * SEC), -EPERM);
    assert_int_equal(weft_timeout_reschedule(p.to, -1), 0);
    assert_int_equal(weft_timeout_when(p.to), -1);
    assert_false(weft_timeout_expired(p.to));
    assert_int_equal(weft_future_set_result(p.go, NULL), 0);
    assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
    assert_int_equal(weft_future_result(f, NULL), 0);
    assert_int_equal(p.exit_rc, 0);
    weft_future_release(f);
    weft_future_release(p.go);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* A task abandoned at shutdown inside a scope: the scope is undone with
 * it (no leak, no timer firing into freed memory). */
static int stubborn_in_scope(void *arg, void **result)
{
    (void)result;
    weft_future_t *entered = arg;
    weft_timeout_t *to = NULL;
    CHECK(&g_rec, weft_timeout_enter(100 * SEC, &to) == 0);
    CHECK(&g_rec, tr_signal(entered) == 0);
    for (;;) {
        if (weft_sleep(100 * SEC) == 0)
            break; /* never: cancellations are ignored */
    }
    return weft_timeout_exit(to, 0);
}

static int abandon_driver(void *arg, void **result)
{
    (void)result;
    weft_future_t *entered = new_future();
    weft_task_t *t = spawn(stubborn_in_scope, entered);
    CHECK(&g_rec, weft_await(entered, NULL) == 0);
    weft_future_release(entered);
    *(weft_task_t **)arg = t;
    return 0;
}

static void test_timeout_scope_of_an_abandoned_task_is_undone(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    weft_task_t *t = NULL;
    assert_int_equal(tr_run_in(rt, abandon_driver, &t, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(weft_runtime_shutdown(rt, 50 * MS), WEFT_ETIMEDOUT);
    assert_true(weft_future_cancelled(weft_task_future(t)));
    weft_task_release(t);
    weft_runtime_free(rt);
}

/* ========================================================================== */
/* wait_for                                                                     */
/* ========================================================================== */

static int value_after_go(void *arg, void **result)
{
    weft_future_t *go = arg;
    int rc = weft_await(go, NULL);
    *result = &tag_a;
    return rc;
}

static int fail_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    CHECK(&g_rec, weft_yield() == 0);
    return -EIO;
}

static int wait_for_basic_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    /* In time. */
    weft_future_t *go = new_future();
    CHECK(&g_rec, tr_signal(go) == 0);
    weft_task_t *t = spawn(value_after_go, go);
    void *v = NULL;
    CHECK(&g_rec, weft_wait_for(weft_task_future(t), 100 * SEC, &v) == 0);
    CHECK(&g_rec, v == &tag_a);
    CHECK(&g_rec, weft_task_cancelling(weft_current_task()) == 0);
    weft_task_release(t);
    weft_future_release(go);

    /* The inner error comes back as is. */
    t = spawn(fail_body, NULL);
    CHECK(&g_rec, weft_wait_for(weft_task_future(t), 100 * SEC, NULL) == -EIO);
    weft_task_release(t);

    /* A plain future times out and is cancelled. */
    weft_future_t *f = new_future();
    v = &tag_b;
    CHECK(&g_rec, weft_wait_for(f, 20 * MS, &v) == WEFT_ETIMEDOUT);
    CHECK(&g_rec, v == &tag_b);
    CHECK(&g_rec, weft_future_cancelled(f));
    CHECK(&g_rec, weft_task_cancelling(weft_current_task()) == 0);
    weft_future_release(f);

    /* No limit: a plain await. */
    f = new_future();
    CHECK(&g_rec, weft_future_set_result(f, &tag_b) == 0);
    CHECK(&g_rec, weft_wait_for(f, -1, &v) == 0);
    CHECK(&g_rec, v == &tag_b);
    weft_future_release(f);
    CHECK(&g_rec, weft_yield() == 0);
    return 0;
}

static void test_wait_for_returns_the_outcome_or_times_out(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, wait_for_basic_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* On timeout the inner task is cancelled and waited for: its cleanup is
 * over when wait_for returns. */
static int wait_for_cancels_and_waits_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    sleeper_t s = {0};
    weft_task_t *t = start_sleeper(&s);
    CHECK(&g_rec, weft_wait_for(weft_task_future(t), 20 * MS, NULL) == WEFT_ETIMEDOUT);
    CHECK(&g_rec, atomic_load(&s.cleanup_done) == 1);
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(t)));
    weft_task_release(t);

    /* One that swallows the cancellation: its value, no timeout. */
    sleeper_t s2 = {.catch_cancel = true, .value = &tag_b};
    t = start_sleeper(&s2);
    void *v = NULL;
    CHECK(&g_rec, weft_wait_for(weft_task_future(t), 20 * MS, &v) == 0);
    CHECK(&g_rec, v == &tag_b);
    CHECK(&g_rec, weft_task_cancelling(weft_current_task()) == 0);
    weft_task_release(t);
    CHECK(&g_rec, weft_yield() == 0);
    return 0;
}

static void test_wait_for_timeout_cancels_the_task_and_waits_for_it(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, wait_for_cancels_and_waits_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Zero timeout: work that has not started never starts; done work gives
 * its outcome; started work is cancelled and waited for. */
static int wait_for_zero_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    atomic_int runs;
    atomic_init(&runs, 0);
    weft_task_t *t = spawn(count_runs_body, &runs); /* one worker: not started */
    CHECK(&g_rec, weft_wait_for(weft_task_future(t), 0, NULL) == WEFT_ETIMEDOUT);
    CHECK(&g_rec, atomic_load(&runs) == 0);
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(t)));
    weft_task_release(t);

    t = spawn(count_runs_body, &runs);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    void *v = NULL;
    CHECK(&g_rec, weft_wait_for(weft_task_future(t), 0, &v) == 0);
    CHECK(&g_rec, v == &tag_b);
    weft_task_release(t);

    sleeper_t s = {0};
    t = start_sleeper(&s);
    CHECK(&g_rec, weft_wait_for(weft_task_future(t), 0, NULL) == WEFT_ETIMEDOUT);
    CHECK(&g_rec, atomic_load(&s.cleanup_done) == 1);
    weft_task_release(t);

    sleeper_t s2 = {.catch_cancel = true, .value = &tag_a};
    t = start_sleeper(&s2);
    CHECK(&g_rec, weft_wait_for(weft_task_future(t), 0, &v) == 0);
    CHECK(&g_rec, v == &tag_a);
    weft_task_release(t);

    weft_future_t *f = new_future();
    CHECK(&g_rec, weft_wait_for(f, 0, NULL) == WEFT_ETIMEDOUT);
    CHECK(&g_rec, weft_future_cancelled(f));
    weft_future_release(f);
    CHECK(&g_rec, weft_task_cancelling(weft_current_task()) == 0);
    return 0;
}

static void test_wait_for_zero_timeout(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, wait_for_zero_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* The waiting task cancelled from outside: WEFT_ECANCELED, not a
 * timeout.  With a timeout the request is passed to the inner task (as
 * any await of a task does); with timeout 0, wait_for is already waiting
 * for the inner task to finish cancelling, and returns at once, leaving
 * it to finish on its own. */
typedef struct slow_cancel {
    weft_future_t *started, *release;
    atomic_int caught;
} slow_cancel_t;

/* Catches its first cancellation and finishes only once released. */
static int slow_to_cancel_body(void *arg, void **result)
{
    (void)result;
    slow_cancel_t *s = arg;
    CHECK(&g_rec, tr_signal(s->started) == 0);
    CHECK(&g_rec, weft_sleep(100 * SEC) == WEFT_ECANCELED);
    atomic_store(&s->caught, 1);
    CHECK(&g_rec, weft_await(s->release, NULL) == 0);
    return WEFT_ECANCELED;
}

typedef struct wf_outer {
    weft_future_t *entered;
    sleeper_t inner;
    slow_cancel_t slow;
    weft_task_t *inner_t;
    int rc;
} wf_outer_t;

static int wf_outer_body(void *arg, void **result)
{
    (void)result;
    wf_outer_t *w = arg;
    w->inner_t = start_sleeper(&w->inner);
    CHECK(&g_rec, tr_signal(w->entered) == 0);
    w->rc = weft_wait_for(weft_task_future(w->inner_t), 100 * SEC, NULL);
    return w->rc;
}

static int wf_zero_outer_body(void *arg, void **result)
{
    (void)result;
    wf_outer_t *w = arg;
    w->inner_t = spawn(slow_to_cancel_body, &w->slow);
    CHECK(&g_rec, weft_await(w->slow.started, NULL) == 0);
    CHECK(&g_rec, tr_signal(w->entered) == 0);
    w->rc = weft_wait_for(weft_task_future(w->inner_t), 0, NULL);
    return w->rc;
}

static int wf_outer_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    wf_outer_t w = {.entered = new_future(), .rc = 1};
    weft_task_t *t = spawn(wf_outer_body, &w);
    CHECK(&g_rec, weft_await(w.entered, NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(t, "outer") == 1);
    CHECK(&g_rec, finish(t, NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, w.rc == WEFT_ECANCELED);
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(w.inner_t)));
    CHECK(&g_rec, tr_streq(weft_future_message(weft_task_future(w.inner_t)), "outer"));
    weft_task_release(w.inner_t);
    weft_future_release(w.entered);
    return 0;
}

static int wf_zero_outer_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    wf_outer_t w = {.entered = new_future(), .rc = 1};
    w.slow.started = new_future();
    w.slow.release = new_future();
    atomic_init(&w.slow.caught, 0);
    weft_task_t *t = spawn(wf_zero_outer_body, &w);
    CHECK(&g_rec, weft_await(w.entered, NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(t, "outer") == 1);
    CHECK(&g_rec, finish(t, NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, w.rc == WEFT_ECANCELED);
    /* The inner task got wait_for's request and is still finishing. */
    CHECK(&g_rec, !weft_future_done(weft_task_future(w.inner_t)));
    CHECK(&g_rec, tr_signal(w.slow.release) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(w.inner_t), NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, atomic_load(&w.slow.caught) == 1);
    weft_task_release(w.inner_t);
    weft_future_release(w.entered);
    weft_future_release(w.slow.started);
    weft_future_release(w.slow.release);
    return 0;
}

static void test_wait_for_cancelled_from_outside_is_ecanceled(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, wf_outer_driver, NULL, NULL), 0);
    assert_int_equal(tr_run_in(rt, wf_zero_outer_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static int wait_for_args_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_future_t *f = new_future();
    void *v = &tag_a;
    CHECK(&g_rec, weft_wait_for(NULL, SEC, &v) == -EINVAL);
    CHECK(&g_rec, weft_wait_for(f, -2, &v) == -EINVAL);
    CHECK(&g_rec, weft_wait_for(weft_task_future(weft_current_task()), SEC, &v) == -EDEADLK);
    CHECK(&g_rec, v == &tag_a);
    weft_future_release(f);
    return 0;
}

static void test_wait_for_errors(void **state)
{
    (void)state;
    assert_int_equal(weft_wait_for(NULL, 0, NULL), -EPERM);
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, wait_for_args_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* ========================================================================== */
/* Allocation failure                                                          */
/* ========================================================================== */

/* Every function of cancel.h and the task context that allocates returns
 * -ENOMEM with no effect when the nth allocation fails, for every n until
 * it succeeds.  Run on a standalone loop, so the test thread is the only
 * one allocating (the seam counts allocations process-wide). */
#define NOMEM_LIMIT 64

/* Try `call` with allocation n failing, n = 1, 2, ...: each attempt gives
 * -ENOMEM and satisfies `untouched`, until one gives `ok_rc`.  At least
 * one attempt must fail (every one of these allocates). */
#define NOMEM_LOOP(rc, call, ok_rc, untouched)                                                     \
    do {                                                                                           \
        int fails_ = 0;                                                                            \
        for (long n_ = 1; n_ <= NOMEM_LIMIT; n_++) {                                               \
            weft__alloc_fail_nth(n_);                                                              \
            rc = (call);                                                                           \
            weft__alloc_fail_nth(0);                                                               \
            if (rc != -ENOMEM)                                                                     \
                break;                                                                             \
            fails_++;                                                                              \
            CHECK(&g_rec, (untouched));                                                            \
        }                                                                                          \
        CHECK(&g_rec, rc == (ok_rc));                                                              \
        CHECK(&g_rec, fails_ >= 1);                                                                \
    } while (0)

/* Waits for `go` through a shield: a kid the group gives up on (and
 * cancels) must not cancel the shared `go`. */
static int nomem_kid(void *arg, void **result)
{
    (void)result;
    weft_future_t *outer = NULL;
    int rc = weft_shield(arg, &outer);
    if (rc != 0)
        return rc;
    rc = weft_await(outer, NULL);
    weft_future_release(outer);
    return rc;
}

static int nomem_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    int rc;
    weft_future_t *sentinel = (weft_future_t *)&tag_a;

    /* shield */
    weft_future_t *in = new_future(), *out = sentinel;
    NOMEM_LOOP(rc, weft_shield(in, &out), 0, out == sentinel);
    CHECK(&g_rec, weft_future_set_result(in, &tag_b) == 0);
    void *v = NULL;
    CHECK(&g_rec, weft_await(out, &v) == 0 && v == &tag_b);
    weft_future_release(out);
    weft_future_release(in);

    /* timeout scopes */
    weft_timeout_t *to = (weft_timeout_t *)&tag_a;
    NOMEM_LOOP(rc, weft_timeout_enter(SEC, &to), 0, to == (weft_timeout_t *)&tag_a);
    int64_t when = weft_timeout_when(to);
    int64_t later = when + SEC;
    NOMEM_LOOP(rc, weft_timeout_reschedule(to, later), 0, weft_timeout_when(to) == when);
    CHECK(&g_rec, weft_timeout_when(to) == later);
    CHECK(&g_rec, weft_timeout_exit(to, 0) == 0);
    CHECK(&g_rec, weft_task_cancelling(weft_current_task()) == 0);

    /* wait_for, with a timeout and with 0: f is left alone on failure */
    for (int zero = 0; zero < 2; zero++) {
        weft_future_t *f = new_future();
        NOMEM_LOOP(rc, weft_wait_for(f, zero ? 0 : MS, NULL), WEFT_ETIMEDOUT, !weft_future_done(f));
        CHECK(&g_rec, weft_future_cancelled(f));
        weft_future_release(f);
    }

    /* gather and wait */
    weft_future_t *fs[2] = {new_future(), new_future()};
    CHECK(&g_rec, weft_future_set_result(fs[0], NULL) == 0);
    bool done[2] = {false, false};
    NOMEM_LOOP(rc, weft_wait(fs, 2, WEFT_ALL_COMPLETED, MS, done), 1, !done[0]);
    CHECK(&g_rec, done[0] && !done[1]);
    CHECK(&g_rec, weft_future_set_result(fs[1], NULL) == 0);
    NOMEM_LOOP(rc, weft_gather(fs, 2, false), 0, true);

    /* as_completed */
    weft_as_completed_t *it = (weft_as_completed_t *)&tag_a;
    weft_future_t *pend = new_future();
    weft_future_t *ac[2] = {fs[0], pend};
    NOMEM_LOOP(rc, weft_as_completed_new(ac, 2, 2 * MS, &it), 0,
               it == (weft_as_completed_t *)&tag_a);
    weft_future_t *got = NULL;
    CHECK(&g_rec, weft_as_completed_next(it, &got) == 1 && got == fs[0]);
    NOMEM_LOOP(rc, weft_as_completed_next(it, &got), WEFT_ETIMEDOUT, got == fs[0]);
    weft_as_completed_free(it);
    weft_future_release(pend);
    weft_future_release(fs[0]);
    weft_future_release(fs[1]);

    /* TaskGroup: new, spawn (the child, or the group's watch on it), exit
     * (its wait) */
    weft_taskgroup_t *g = (weft_taskgroup_t *)&tag_a;
    NOMEM_LOOP(rc, weft_taskgroup_new(&g), 0, g == (weft_taskgroup_t *)&tag_a);
    weft_future_t *go = new_future();
    weft_task_t *kid = (weft_task_t *)&tag_a;
    NOMEM_LOOP(rc, weft_taskgroup_spawn(g, nomem_kid, go, NULL, &kid), 0,
               kid == (weft_task_t *)&tag_a);
    /* Exit allocates what it waits on first (then it would wait). */
    weft__alloc_fail_nth(1);
    rc = weft_taskgroup_exit(g, 0);
    weft__alloc_fail_nth(0);
    CHECK(&g_rec, rc == -ENOMEM);
    CHECK(&g_rec, weft_future_set_result(go, NULL) == 0);
    CHECK(&g_rec, weft_taskgroup_exit(g, 0) == 0); /* still open after a failed exit */
    CHECK(&g_rec, weft_future_done(weft_task_future(kid)));
    weft_task_release(kid);
    weft_taskgroup_free(g);
    weft_future_release(go);

    /* task context */
    weft_context_key_t *key = (weft_context_key_t *)&tag_a;
    NOMEM_LOOP(rc, weft_context_key_new(NULL, &key), 0, key == (weft_context_key_t *)&tag_a);
    NOMEM_LOOP(rc, weft_context_set(key, &tag_b), 0, weft_context_get(key) == NULL);
    CHECK(&g_rec, weft_context_get(key) == &tag_b);
    weft_context_key_free(key);
    return 0;
}

static void test_cancel_apis_fail_cleanly_when_memory_runs_out(void **state)
{
    (void)state;
    weft_loop_t *loop = NULL;
    assert_int_equal(weft_loop_new(&loop), 0);
    weft_future_t *f = NULL;
    assert_int_equal(weft_run_coroutine_threadsafe(loop, nomem_body, NULL, &f), 0);
    assert_int_equal(weft_loop_run_until_complete(loop, f), 0);
    weft_future_release(f);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(weft_loop_close(loop), 0);
    weft_loop_free(loop);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const struct CMUnitTest tests[] = {
        TEST(test_cancel_from_a_plain_pthread_wakes_a_sleeping_task),
        TEST(test_cancel_wakes_a_task_blocked_in_to_thread),
        TEST(test_cancel_of_a_task_awaiting_a_future_cancels_the_future),
        TEST(test_cancel_of_a_task_awaiting_a_task_forwards_and_waits_for_it),
        TEST(test_cancel_forwarded_to_a_task_that_swallows_it_yields_its_value),
        TEST(test_cancel_uncancel_before_delivery_never_interrupts),
        TEST(test_cancel_uncancel_of_one_of_two_requests_keeps_one_pending),
        TEST(test_cancel_task_that_catches_it_and_returns_a_value_ends_with_it),
        TEST(test_cancel_self_cancelled_task_returning_without_suspending),
        TEST(test_cancel_before_first_step_never_runs_the_body),
        TEST(test_cancel_pending_on_entry_to_await),
        TEST(test_cancel_message_of_each_delivered_request),
        TEST(test_cancel_racing_completion_across_two_workers_has_one_consistent_outcome),
        TEST(test_shield_cancelling_the_awaiter_leaves_the_inner_work_running),
        TEST(test_shield_passes_on_result_error_and_cancellation),
        TEST(test_shield_errors),
        TEST(test_timeout_expiry_turns_its_cancellation_into_etimedout),
        TEST(test_timeout_past_deadline_cancels_at_the_first_suspension),
        TEST(test_timeout_leaves_an_outer_cancellation_alone),
        TEST(test_timeout_nested_scopes_each_claim_only_their_own),
        TEST(test_timeout_reschedule_moves_the_deadline),
        TEST(test_timeout_reschedule_from_another_task),
        TEST(test_timeout_errors),
        TEST(test_timeout_reschedule_from_a_plain_thread),
        TEST(test_timeout_scope_of_an_abandoned_task_is_undone),
        TEST(test_wait_for_returns_the_outcome_or_times_out),
        TEST(test_wait_for_timeout_cancels_the_task_and_waits_for_it),
        TEST(test_wait_for_zero_timeout),
        TEST(test_wait_for_cancelled_from_outside_is_ecanceled),
        TEST(test_wait_for_errors),
        TEST(test_cancel_apis_fail_cleanly_when_memory_runs_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
