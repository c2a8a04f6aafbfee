/* Tests for the waiting combinators (include/weft/cancel.h): weft_gather,
 * weft_wait and weft_as_completed, including how each one meets the
 * cancellation of the waiting task, and every documented return code.
 *
 * Nothing here calls a cmocka assert inside a task: tasks CHECK into
 * g_rec and the test thread asserts after the runtime returned the
 * driving task's outcome (STYLE.md).  The futures under test are plain
 * futures completed by the driver, or tasks that wait for a plain `go`
 * future, so the order of completions is chosen by the test, not by
 * timing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

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

static int tags[8];
#define TAG(i) ((void *)&tags[(i)])

static weft_future_t *new_future(void)
{
    weft_future_t *f = NULL;
    CHECK(&g_rec, weft_future_new(NULL, &f) == 0);
    return f;
}

static void new_futures(weft_future_t **fs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fs[i] = new_future();
}

static void release_futures(weft_future_t **fs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        weft_future_release(fs[i]);
}

/* A child task: waits for `go`, then ends with `code` (0: result TAG(idx))
 * — or, when cancelled meanwhile, with WEFT_ECANCELED unless it swallows
 * the cancellation (then with TAG(idx)). */
typedef struct child {
    weft_future_t *go;
    int code;
    int idx;
    bool swallow;
    int await_rc;
    atomic_bool started; /* its body runs (a task cancelled before that never runs it) */
} child_t;

static int child_body(void *arg, void **result)
{
    child_t *c = arg;
    atomic_store(&c->started, true);
    c->await_rc = weft_await(c->go, NULL);
    if (c->await_rc == WEFT_ECANCELED && !c->swallow)
        return WEFT_ECANCELED;
    if (c->code == 0)
        *result = TAG(c->idx);
    return c->code;
}

static weft_task_t *spawn_child(child_t *c)
{
    weft_task_t *t = NULL;
    c->go = new_future();
    c->await_rc = 1;
    CHECK(&g_rec, weft_spawn(child_body, c, NULL, &t) == 0);
    return t;
}

static void release_child(child_t *c, weft_task_t *t)
{
    weft_future_release(c->go);
    weft_task_release(t);
}

/* A task that runs one combinator on its own, so the driver can cancel it
 * or watch it. */
typedef struct waiter {
    weft_future_t **fs;
    size_t n;
    bool rex;
    int when;
    int64_t timeout;
    bool done[8];
    int rc;
    int yield_after;
    weft_future_t *entered;
} waiter_t;

static int gather_waiter_body(void *arg, void **result)
{
    (void)result;
    waiter_t *w = arg;
    CHECK(&g_rec, tr_signal(w->entered) == 0);
    w->rc = weft_gather(w->fs, w->n, w->rex);
    w->yield_after = weft_yield();
    return 0;
}

static int wait_waiter_body(void *arg, void **result)
{
    (void)result;
    waiter_t *w = arg;
    CHECK(&g_rec, tr_signal(w->entered) == 0);
    w->rc = weft_wait(w->fs, w->n, w->when, w->timeout, w->done);
    w->yield_after = weft_yield();
    return 0;
}

static weft_task_t *start_waiter(weft_fn body, waiter_t *w)
{
    weft_task_t *t = NULL;
    w->entered = new_future();
    w->rc = 99;
    w->yield_after = 99;
    CHECK(&g_rec, weft_spawn(body, w, NULL, &t) == 0);
    CHECK(&g_rec, weft_await(w->entered, NULL) == 0);
    return t;
}

static void finish_waiter(waiter_t *w, weft_task_t *t)
{
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    weft_task_release(t);
    weft_future_release(w->entered);
}

/* ========================================================================== */
/* gather                                                                      */
/* ========================================================================== */

/* All succeed, completing in reverse order: gather returns 0 and each
 * result is read from its own future, in input order. */
static int gather_all_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    child_t c[3] = {{.idx = 0}, {.idx = 1}, {.idx = 2}};
    weft_task_t *t[3];
    weft_future_t *fs[4];
    for (int i = 0; i < 3; i++) {
        t[i] = spawn_child(&c[i]);
        fs[i] = weft_task_future(t[i]);
    }
    fs[3] = new_future(); /* a plain future among the tasks */
    waiter_t w = {.fs = fs, .n = 4};
    weft_task_t *wt = start_waiter(gather_waiter_body, &w);
    CHECK(&g_rec, weft_future_set_result(fs[3], TAG(3)) == 0);
    for (int i = 2; i >= 0; i--) {
        CHECK(&g_rec, tr_signal(c[i].go) == 0);
        CHECK(&g_rec, weft_await(fs[i], NULL) == 0);
        if (i > 0)
            CHECK(&g_rec, w.rc == 99); /* still gathering */
    }
    finish_waiter(&w, wt);
    CHECK(&g_rec, w.rc == 0);
    for (int i = 0; i < 4; i++) {
        void *v = NULL;
        CHECK(&g_rec, weft_future_result(fs[i], &v) == 0 && v == TAG(i));
    }
    for (int i = 0; i < 3; i++)
        release_child(&c[i], t[i]);
    weft_future_release(fs[3]);

    /* Nothing to gather; everything already done: no suspension. */
    CHECK(&g_rec, weft_gather(NULL, 0, false) == 0);
    weft_future_t *done[2];
    new_futures(done, 2);
    CHECK(&g_rec, weft_future_set_result(done[0], NULL) == 0);
    CHECK(&g_rec, weft_future_set_result(done[1], NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(weft_current_task(), NULL) == 1);
    CHECK(&g_rec, weft_gather(done, 2, false) == 0); /* request stays pending */
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    release_futures(done, 2);
    return 0;
}

static void test_gather_waits_for_all_and_results_stay_in_input_order(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, gather_all_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Without return_exceptions the first failure comes back at once and the
 * others keep running; with it gather waits for all and returns 0. */
static int gather_first_error_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    for (int rex = 0; rex < 2; rex++) {
        child_t c[3] = {{.idx = 0}, {.idx = 1, .code = -EPIPE}, {.idx = 2, .code = -EIO}};
        weft_task_t *t[3];
        weft_future_t *fs[3];
        for (int i = 0; i < 3; i++) {
            t[i] = spawn_child(&c[i]);
            fs[i] = weft_task_future(t[i]);
        }
        waiter_t w = {.fs = fs, .n = 3, .rex = rex};
        weft_task_t *wt = start_waiter(gather_waiter_body, &w);
        /* -EIO (index 2) fails first, then -EPIPE. */
        CHECK(&g_rec, tr_signal(c[2].go) == 0);
        if (!rex) {
            finish_waiter(&w, wt);
            CHECK(&g_rec, w.rc == -EIO);
            CHECK(&g_rec, !weft_future_done(fs[0]) && !weft_future_done(fs[1]));
            CHECK(&g_rec, tr_signal(c[1].go) == 0);
            CHECK(&g_rec, tr_signal(c[0].go) == 0);
            CHECK(&g_rec, weft_await(fs[0], NULL) == 0);
            CHECK(&g_rec, weft_await(fs[1], NULL) == -EPIPE);
            CHECK(&g_rec, !weft_future_cancelled(fs[0]));
        } else {
            CHECK(&g_rec, tr_signal(c[1].go) == 0);
            CHECK(&g_rec, weft_await(fs[1], NULL) == -EPIPE);
            CHECK(&g_rec, w.rc == 99);
            CHECK(&g_rec, tr_signal(c[0].go) == 0);
            finish_waiter(&w, wt);
            CHECK(&g_rec, w.rc == 0);
            CHECK(&g_rec, weft_future_result(fs[0], NULL) == 0);
            CHECK(&g_rec, weft_future_result(fs[1], NULL) == -EPIPE);
            CHECK(&g_rec, weft_future_result(fs[2], NULL) == -EIO);
        }
        for (int i = 0; i < 3; i++)
            release_child(&c[i], t[i]);
    }

    /* A child cancelled on its own (not the gather) is a failure too. */
    weft_future_t *fs[2];
    new_futures(fs, 2);
    waiter_t w = {.fs = fs, .n = 2};
    weft_task_t *wt = start_waiter(gather_waiter_body, &w);
    CHECK(&g_rec, weft_future_cancel(fs[1], "child only"));
    finish_waiter(&w, wt);
    CHECK(&g_rec, w.rc == WEFT_ECANCELED);
    CHECK(&g_rec, w.yield_after == 0); /* the gathering task was not cancelled */
    CHECK(&g_rec, !weft_future_done(fs[0]));
    CHECK(&g_rec, weft_future_set_result(fs[0], NULL) == 0);
    release_futures(fs, 2);
    return 0;
}

static void test_gather_first_failure_returns_at_once_others_keep_running(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, gather_first_error_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Cancelling the task waiting in gather cancels every child not done. */
static int gather_cancel_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    for (int rex = 0; rex < 2; rex++) {
        /* Child 0 already done; child 1 swallows its cancellation and
         * finishes with a value; child 2 ends cancelled. */
        child_t c[3] = {{.idx = 0}, {.idx = 1, .swallow = true}, {.idx = 2}};
        weft_task_t *t[3];
        weft_future_t *fs[3];
        for (int i = 0; i < 3; i++) {
            t[i] = spawn_child(&c[i]);
            fs[i] = weft_task_future(t[i]);
        }
        CHECK(&g_rec, tr_signal(c[0].go) == 0);
        CHECK(&g_rec, weft_await(fs[0], NULL) == 0);
        /* Children 1 and 2 must be inside their await: one cancelled
         * before its first step would never run its body (and child 1
         * could not swallow the request). */
        while (!atomic_load(&c[1].started) || !atomic_load(&c[2].started))
            CHECK(&g_rec, weft_yield() == 0);
        waiter_t w = {.fs = fs, .n = 3, .rex = rex};
        weft_task_t *wt = start_waiter(gather_waiter_body, &w);
        CHECK(&g_rec, weft_task_cancel(wt, "stop all") == 1);
        finish_waiter(&w, wt);
        CHECK(&g_rec, w.rc == WEFT_ECANCELED);
        CHECK(&g_rec, w.yield_after == 0); /* the request was used */
        for (int i = 0; i < 3; i++)
            CHECK(&g_rec, weft_await(fs[i], NULL) == (i == 2 ? WEFT_ECANCELED : 0));
        CHECK(&g_rec, weft_task_cancelling(t[0]) == 0);
        CHECK(&g_rec, weft_task_cancelling(t[1]) == 1);
        CHECK(&g_rec, tr_streq(weft_future_message(fs[2]), "stop all"));
        CHECK(&g_rec, c[1].await_rc == WEFT_ECANCELED);
        for (int i = 0; i < 3; i++)
            release_child(&c[i], t[i]);
    }
    return 0;
}

static void test_gather_cancelled_cancels_every_child_not_done(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, gather_cancel_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Gather cancelled while its children are finishing.  One worker, so the
 * order is exact:
 *   1. every child completes, then the gathering task is cancelled, all
 *      before it resumes: it finds all done and returns 0 (completion is
 *      looked at first); the request is delivered at its next suspension
 *      point;
 *   2. one child completes, then the gather is cancelled, before it
 *      resumes: the other child is cancelled; gather returns
 *      WEFT_ECANCELED; the finished child keeps its result;
 *   3. with return_exceptions, one child done and one that swallows the
 *      cancellation and finishes with a value: gather waits for both and
 *      still returns WEFT_ECANCELED; both values are kept. */
static int gather_finishing_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    /* 1 */
    weft_future_t *fs[2];
    new_futures(fs, 2);
    waiter_t w = {.fs = fs, .n = 2};
    weft_task_t *wt = start_waiter(gather_waiter_body, &w);
    CHECK(&g_rec, weft_future_set_result(fs[0], TAG(0)) == 0);
    CHECK(&g_rec, weft_future_set_result(fs[1], TAG(1)) == 0);
    CHECK(&g_rec, weft_task_cancel(wt, NULL) == 1);
    finish_waiter(&w, wt);
    CHECK(&g_rec, w.rc == 0);
    CHECK(&g_rec, w.yield_after == WEFT_ECANCELED);
    release_futures(fs, 2);

    /* 2 */
    new_futures(fs, 2);
    w = (waiter_t){.fs = fs, .n = 2};
    wt = start_waiter(gather_waiter_body, &w);
    CHECK(&g_rec, weft_future_set_result(fs[0], TAG(0)) == 0);
    CHECK(&g_rec, weft_task_cancel(wt, "late") == 1);
    finish_waiter(&w, wt);
    CHECK(&g_rec, w.rc == WEFT_ECANCELED);
    CHECK(&g_rec, w.yield_after == 0);
    void *v = NULL;
    CHECK(&g_rec, weft_future_result(fs[0], &v) == 0 && v == TAG(0));
    CHECK(&g_rec, weft_future_cancelled(fs[1]));
    CHECK(&g_rec, tr_streq(weft_future_message(fs[1]), "late"));
    release_futures(fs, 2);

    /* 3 */
    child_t c = {.idx = 1, .swallow = true};
    weft_task_t *t = spawn_child(&c);
    CHECK(&g_rec, weft_yield() == 0); /* the child now waits for go */
    fs[0] = new_future();
    fs[1] = weft_task_future(t);
    w = (waiter_t){.fs = fs, .n = 2, .rex = true};
    wt = start_waiter(gather_waiter_body, &w);
    CHECK(&g_rec, weft_future_set_result(fs[0], TAG(0)) == 0);
    CHECK(&g_rec, weft_task_cancel(wt, NULL) == 1);
    finish_waiter(&w, wt);
    CHECK(&g_rec, w.rc == WEFT_ECANCELED);
    CHECK(&g_rec, c.await_rc == WEFT_ECANCELED);
    CHECK(&g_rec, weft_future_result(fs[0], &v) == 0 && v == TAG(0));
    CHECK(&g_rec, weft_future_result(fs[1], &v) == 0 && v == TAG(1));
    weft_future_release(fs[0]);
    release_child(&c, t);
    return 0;
}

static void test_gather_cancelled_while_children_are_finishing(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, gather_finishing_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static int gather_args_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_future_t *fs[2] = {new_future(), NULL};
    CHECK(&g_rec, weft_gather(NULL, 1, false) == -EINVAL);
    CHECK(&g_rec, weft_gather(fs, 2, true) == -EINVAL);
    weft_future_release(fs[0]);
    return 0;
}

static void test_gather_errors(void **state)
{
    (void)state;
    assert_int_equal(weft_gather(NULL, 0, false), -EPERM);
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, gather_args_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* ========================================================================== */
/* wait                                                                         */
/* ========================================================================== */

static int wait_modes_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_future_t *fs[3];

    /* FIRST_COMPLETED: the first one, of any kind. */
    new_futures(fs, 3);
    waiter_t w = {.fs = fs, .n = 3, .when = WEFT_FIRST_COMPLETED, .timeout = -1};
    weft_task_t *wt = start_waiter(wait_waiter_body, &w);
    CHECK(&g_rec, weft_future_cancel(fs[1], NULL));
    finish_waiter(&w, wt);
    CHECK(&g_rec, w.rc == 1);
    CHECK(&g_rec, !w.done[0] && w.done[1] && !w.done[2]);
    CHECK(&g_rec, !weft_future_done(fs[0]) && !weft_future_done(fs[2])); /* untouched */
    CHECK(&g_rec, weft_future_set_result(fs[0], NULL) == 0);
    CHECK(&g_rec, weft_future_set_result(fs[2], NULL) == 0);
    release_futures(fs, 3);

    /* FIRST_EXCEPTION: a cancellation is not an exception; an error is. */
    new_futures(fs, 3);
    w = (waiter_t){.fs = fs, .n = 3, .when = WEFT_FIRST_EXCEPTION, .timeout = -1};
    wt = start_waiter(wait_waiter_body, &w);
    CHECK(&g_rec, weft_future_cancel(fs[0], NULL));
    CHECK(&g_rec, weft_future_set_result(fs[1], NULL) == 0);
    CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, w.rc == 99);
    CHECK(&g_rec, weft_future_set_error(fs[2], -EIO, NULL) == 0);
    finish_waiter(&w, wt);
    CHECK(&g_rec, w.rc == 3);
    CHECK(&g_rec, w.done[0] && w.done[1] && w.done[2]);
    release_futures(fs, 3);

    new_futures(fs, 3);
    w = (waiter_t){.fs = fs, .n = 3, .when = WEFT_FIRST_EXCEPTION, .timeout = -1};
    wt = start_waiter(wait_waiter_body, &w);
    CHECK(&g_rec, weft_future_set_error(fs[1], -EIO, NULL) == 0);
    finish_waiter(&w, wt);
    CHECK(&g_rec, w.rc == 1 && w.done[1] && !w.done[0] && !w.done[2]);
    CHECK(&g_rec, weft_future_set_result(fs[0], NULL) == 0);
    CHECK(&g_rec, weft_future_set_result(fs[2], NULL) == 0);
    release_futures(fs, 3);

    /* ALL_COMPLETED. */
    new_futures(fs, 3);
    w = (waiter_t){.fs = fs, .n = 3, .when = WEFT_ALL_COMPLETED, .timeout = -1};
    wt = start_waiter(wait_waiter_body, &w);
    for (int i = 0; i < 3; i++) {
        CHECK(&g_rec, w.rc == 99);
        CHECK(&g_rec, weft_future_set_error(fs[i], -EIO, NULL) == 0);
        CHECK(&g_rec, weft_yield() == 0);
    }
    finish_waiter(&w, wt);
    CHECK(&g_rec, w.rc == 3);
    release_futures(fs, 3);
    return 0;
}

static void test_wait_returns_when_its_condition_holds(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, wait_modes_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static int wait_timeout_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_future_t *fs[3];
    new_futures(fs, 3);
    CHECK(&g_rec, weft_future_set_result(fs[2], NULL) == 0);
    bool done[3] = {true, true, false};
    /* Timeout: nothing is cancelled; the count is what is done. */
    int64_t t0 = tr_now_ns();
    CHECK(&g_rec, weft_wait(fs, 2, WEFT_ALL_COMPLETED, 20 * MS, done) == 0);
    CHECK(&g_rec, tr_now_ns() - t0 >= 20 * MS);
    CHECK(&g_rec, !done[0] && !done[1]);
    CHECK(&g_rec, !weft_future_done(fs[0]) && !weft_future_done(fs[1]));
    CHECK(&g_rec, weft_wait(fs, 3, WEFT_ALL_COMPLETED, 20 * MS, done) == 1);
    CHECK(&g_rec, !done[0] && !done[1] && done[2]);
    /* Zero timeout: a poll, without suspending (a pending request stays). */
    CHECK(&g_rec, weft_task_cancel(weft_current_task(), NULL) == 1);
    CHECK(&g_rec, weft_wait(fs, 3, WEFT_ALL_COMPLETED, 0, NULL) == 1);
    CHECK(&g_rec, weft_wait(fs, 3, WEFT_FIRST_COMPLETED, -1, done) == 1); /* holds on entry */
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    release_futures(fs, 3);
    return 0;
}

static void test_wait_timeout_cancels_nothing(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, wait_timeout_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* The waiting task cancelled: WEFT_ECANCELED, flags untouched, the futures
 * untouched. */
static int wait_cancel_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_future_t *fs[2];
    new_futures(fs, 2);
    waiter_t w = {
        .fs = fs, .n = 2, .when = WEFT_ALL_COMPLETED, .timeout = 100 * SEC, .done = {true, true}};
    weft_task_t *wt = start_waiter(wait_waiter_body, &w);
    CHECK(&g_rec, weft_future_set_result(fs[0], NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(wt, NULL) == 1);
    finish_waiter(&w, wt);
    CHECK(&g_rec, w.rc == WEFT_ECANCELED);
    CHECK(&g_rec, w.done[0] && w.done[1]);
    CHECK(&g_rec, !weft_future_done(fs[1]));
    CHECK(&g_rec, weft_future_set_result(fs[1], NULL) == 0);
    release_futures(fs, 2);
    return 0;
}

static void test_wait_cancelled_leaves_the_futures_alone(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, wait_cancel_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

static int wait_args_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_future_t *fs[2] = {new_future(), NULL};
    bool done[2] = {true, true};
    CHECK(&g_rec, weft_wait(fs, 0, WEFT_ALL_COMPLETED, -1, done) == -EINVAL);
    CHECK(&g_rec, weft_wait(NULL, 1, WEFT_ALL_COMPLETED, -1, done) == -EINVAL);
    CHECK(&g_rec, weft_wait(fs, 2, WEFT_ALL_COMPLETED, -1, done) == -EINVAL);
    CHECK(&g_rec, weft_wait(fs, 1, 7, -1, done) == -EINVAL);
    CHECK(&g_rec, weft_wait(fs, 1, WEFT_ALL_COMPLETED, -2, done) == -EINVAL);
    CHECK(&g_rec, done[0] && done[1]);
    weft_future_release(fs[0]);
    return 0;
}

static void test_wait_errors(void **state)
{
    (void)state;
    weft_future_t *f = NULL;
    assert_int_equal(weft_wait(&f, 1, WEFT_ALL_COMPLETED, -1, NULL), -EPERM);
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, wait_args_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* ========================================================================== */
/* as_completed                                                                 */
/* ========================================================================== */

typedef struct ac_state {
    weft_future_t *fs[4];
    weft_future_t *entered;
    weft_future_t *got[4];
    int rcs[6];
    int nrc;
} ac_state_t;

/* Iterates, recording each return code and future, until 0. */
static int ac_consumer(void *arg, void **result)
{
    (void)result;
    ac_state_t *s = arg;
    weft_as_completed_t *it = NULL;
    CHECK(&g_rec, weft_as_completed_new(s->fs, 4, -1, &it) == 0);
    CHECK(&g_rec, tr_signal(s->entered) == 0);
    int k = 0;
    for (;;) {
        weft_future_t *f = NULL;
        int rc = weft_as_completed_next(it, &f);
        if (s->nrc < 6)
            s->rcs[s->nrc++] = rc;
        if (rc != 1)
            break;
        if (k < 4)
            s->got[k++] = f;
    }
    weft_as_completed_free(it);
    return 0;
}

static int ac_order_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    ac_state_t s = {.entered = new_future()};
    new_futures(s.fs, 4);
    /* Two done before the iterator exists: they come first, in input
     * order; then completion order. */
    CHECK(&g_rec, weft_future_set_result(s.fs[3], NULL) == 0);
    CHECK(&g_rec, weft_future_set_error(s.fs[1], -EIO, NULL) == 0);
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(ac_consumer, &s, NULL, &t) == 0);
    CHECK(&g_rec, weft_await(s.entered, NULL) == 0);
    CHECK(&g_rec, weft_future_cancel(s.fs[2], NULL));
    CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, weft_future_set_result(s.fs[0], NULL) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    weft_task_release(t);
    CHECK(&g_rec, s.nrc == 5);
    for (int i = 0; i < 4; i++)
        CHECK(&g_rec, s.rcs[i] == 1);
    CHECK(&g_rec, s.rcs[4] == 0);
    CHECK(&g_rec, s.got[0] == s.fs[1] && s.got[1] == s.fs[3]);
    CHECK(&g_rec, s.got[2] == s.fs[2] && s.got[3] == s.fs[0]);
    release_futures(s.fs, 4);
    weft_future_release(s.entered);
    return 0;
}

static void test_as_completed_yields_in_completion_order(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, ac_order_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Overall timeout: what completed first comes out first, then one
 * WEFT_ETIMEDOUT per future not handed out, then 0; futures completing
 * after the timeout are not handed out. */
static int ac_timeout_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_future_t *fs[3];
    new_futures(fs, 3);
    weft_as_completed_t *it = NULL;
    CHECK(&g_rec, weft_as_completed_new(fs, 3, 20 * MS, &it) == 0);
    CHECK(&g_rec, weft_future_set_result(fs[1], NULL) == 0);
    weft_future_t *f = NULL;
    CHECK(&g_rec, weft_as_completed_next(it, &f) == 1 && f == fs[1]);
    f = NULL;
    CHECK(&g_rec, weft_as_completed_next(it, &f) == WEFT_ETIMEDOUT);
    CHECK(&g_rec, f == NULL);
    CHECK(&g_rec, weft_future_set_result(fs[0], NULL) == 0);
    CHECK(&g_rec, weft_as_completed_next(it, &f) == WEFT_ETIMEDOUT);
    CHECK(&g_rec, weft_as_completed_next(it, &f) == 0);
    CHECK(&g_rec, weft_as_completed_next(it, &f) == 0);
    CHECK(&g_rec, !weft_future_done(fs[2])); /* nothing cancelled */
    weft_as_completed_free(it);
    /* Freed with a future still pending: completing it later is safe. */
    CHECK(&g_rec, weft_future_set_result(fs[2], NULL) == 0);
    release_futures(fs, 3);

    /* Nothing to iterate. */
    CHECK(&g_rec, weft_as_completed_new(NULL, 0, -1, &it) == 0);
    CHECK(&g_rec, weft_as_completed_next(it, &f) == 0);
    weft_as_completed_free(it);
    return 0;
}

static void test_as_completed_overall_timeout(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, ac_timeout_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Cancelled inside next: WEFT_ECANCELED, the iterator still works. */
typedef struct ac_cancel {
    weft_future_t *fs[2];
    weft_future_t *entered, *after_first;
    int first_rc, second_rc;
    weft_future_t *second;
} ac_cancel_t;

static int ac_cancel_body(void *arg, void **result)
{
    (void)result;
    ac_cancel_t *a = arg;
    weft_as_completed_t *it = NULL;
    CHECK(&g_rec, weft_as_completed_new(a->fs, 2, -1, &it) == 0);
    CHECK(&g_rec, tr_signal(a->entered) == 0);
    weft_future_t *f = NULL;
    a->first_rc = weft_as_completed_next(it, &f);
    CHECK(&g_rec, tr_signal(a->after_first) == 0);
    a->second_rc = weft_as_completed_next(it, &a->second);
    weft_as_completed_free(it);
    return 0;
}

static int ac_cancel_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    ac_cancel_t a = {.entered = new_future(), .after_first = new_future()};
    new_futures(a.fs, 2);
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(ac_cancel_body, &a, NULL, &t) == 0);
    CHECK(&g_rec, weft_await(a.entered, NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(t, NULL) == 1);
    CHECK(&g_rec, weft_await(a.after_first, NULL) == 0);
    CHECK(&g_rec, weft_future_set_result(a.fs[1], NULL) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    CHECK(&g_rec, a.first_rc == WEFT_ECANCELED);
    CHECK(&g_rec, a.second_rc == 1 && a.second == a.fs[1]);
    CHECK(&g_rec, !weft_future_done(a.fs[0])); /* left alone */
    weft_task_release(t);
    CHECK(&g_rec, weft_future_set_result(a.fs[0], NULL) == 0);
    release_futures(a.fs, 2);
    weft_future_release(a.entered);
    weft_future_release(a.after_first);
    return 0;
}

static void test_as_completed_cancelled_in_next(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, ac_cancel_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

typedef struct ac_other {
    weft_as_completed_t *it;
    int rc;
} ac_other_t;

static int ac_other_body(void *arg, void **result)
{
    (void)result;
    ac_other_t *o = arg;
    weft_future_t *f = NULL;
    o->rc = weft_as_completed_next(o->it, &f);
    return 0;
}

static int ac_args_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_future_t *fs[2] = {new_future(), NULL};
    weft_as_completed_t *it = (weft_as_completed_t *)TAG(0);
    CHECK(&g_rec, weft_as_completed_new(fs, 2, -1, &it) == -EINVAL);
    CHECK(&g_rec, weft_as_completed_new(NULL, 1, -1, &it) == -EINVAL);
    CHECK(&g_rec, weft_as_completed_new(fs, 1, -2, &it) == -EINVAL);
    CHECK(&g_rec, weft_as_completed_new(fs, 1, -1, NULL) == -EINVAL);
    CHECK(&g_rec, it == (weft_as_completed_t *)TAG(0));
    CHECK(&g_rec, weft_as_completed_new(fs, 1, -1, &it) == 0);
    weft_future_t *f = NULL;
    CHECK(&g_rec, weft_as_completed_next(NULL, &f) == -EINVAL);
    CHECK(&g_rec, weft_as_completed_next(it, NULL) == -EINVAL);
    /* Another task may not iterate it. */
    ac_other_t o = {it, 99};
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(ac_other_body, &o, NULL, &t) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    CHECK(&g_rec, o.rc == -EPERM);
    weft_task_release(t);
    weft_as_completed_free(it);
    weft_as_completed_free(NULL);
    weft_future_release(fs[0]);
    return 0;
}

static void test_as_completed_errors(void **state)
{
    (void)state;
    weft_as_completed_t *it = NULL;
    assert_int_equal(weft_as_completed_new(NULL, 0, -1, &it), -EPERM);
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, ac_args_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Many children on two workers, finishing in parallel: gather and
 * as_completed see each exactly once. */
#define MANY 200

static int many_child(void *arg, void **result)
{
    for (int i = 0; i < (int)((intptr_t)arg % 3); i++)
        CHECK(&g_rec, weft_yield() == 0);
    *result = arg;
    return 0;
}

static int many_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    static weft_task_t *ts[MANY];
    static weft_future_t *fs[MANY];
    for (int round = 0; round < 2; round++) {
        for (intptr_t i = 0; i < MANY; i++) {
            CHECK(&g_rec, weft_spawn(many_child, (void *)i, NULL, &ts[i]) == 0);
            fs[i] = weft_task_future(ts[i]);
        }
        if (round == 0) {
            CHECK(&g_rec, weft_gather(fs, MANY, false) == 0);
        } else {
            weft_as_completed_t *it = NULL;
            CHECK(&g_rec, weft_as_completed_new(fs, MANY, -1, &it) == 0);
            static bool seen[MANY];
            memset(seen, 0, sizeof seen);
            weft_future_t *f;
            int n = 0;
            while (weft_as_completed_next(it, &f) == 1) {
                void *v = NULL;
                CHECK(&g_rec, weft_future_result(f, &v) == 0);
                intptr_t i = (intptr_t)v;
                CHECK(&g_rec, i >= 0 && i < MANY && !seen[i] && fs[i] == f);
                if (i >= 0 && i < MANY)
                    seen[i] = true;
                n++;
            }
            CHECK(&g_rec, n == MANY);
            weft_as_completed_free(it);
        }
        for (intptr_t i = 0; i < MANY; i++) {
            void *v = NULL;
            CHECK(&g_rec, weft_future_result(fs[i], &v) == 0 && v == (void *)i);
            weft_task_release(ts[i]);
        }
    }
    return 0;
}

static void test_combinators_many_children_across_workers(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, many_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const struct CMUnitTest tests[] = {
        TEST(test_gather_waits_for_all_and_results_stay_in_input_order),
        TEST(test_gather_first_failure_returns_at_once_others_keep_running),
        TEST(test_gather_cancelled_cancels_every_child_not_done),
        TEST(test_gather_cancelled_while_children_are_finishing),
        TEST(test_gather_errors),
        TEST(test_wait_returns_when_its_condition_holds),
        TEST(test_wait_timeout_cancels_nothing),
        TEST(test_wait_cancelled_leaves_the_futures_alone),
        TEST(test_wait_errors),
        TEST(test_as_completed_yields_in_completion_order),
        TEST(test_as_completed_overall_timeout),
        TEST(test_as_completed_cancelled_in_next),
        TEST(test_as_completed_errors),
        TEST(test_combinators_many_children_across_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
