/* Tests for tasks (include/weft/task.h): spawning, awaiting, yielding and
 * sleeping on a standalone loop and inside a runtime; names; cancellation
 * requests (cancel, cancelling, uncancel) and where they are delivered;
 * task factories and eager tasks; weft_run_coroutine_threadsafe;
 * weft_current_task; weft_all_tasks; and every documented return code.
 *
 * Nothing here calls a cmocka assert inside a task, a loop callback or a
 * helper thread: those record with CHECK(&g_rec, ...) and the test thread
 * calls ASSERT_NO_FAILURE(&g_rec) once the loop or the task it waits for
 * has returned (STYLE.md, "Tests").  Every test ends with no task left:
 * runtimes are shut down with a result of 0 (nothing abandoned) and an
 * empty weft_all_tasks, standalone loops close without an abandoned-task
 * report unless that report is what the test is about.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test/support/check.h"
#include "weft.h"

#define MS  INT64_C(1000000)
#define SEC (INT64_C(1000) * MS)

/* How long the test thread waits for anything before calling it a hang.
 * Generous: ThreadSanitizer builds on a loaded machine are slow. */
#define WAIT_LIMIT (30 * SEC)

/* 1 GiB is the documented stack-size limit; one byte more is refused. */
#define STACK_TOO_BIG ((size_t)1024 * 1024 * 1024 + 1)

/* Failures seen inside tasks, callbacks and helper threads; reset per test. */
static check_rec_t g_rec;

/* An address no weft function hands out: proves out-params stay untouched
 * on error (DESIGN.md, "Public API conventions"). */
static char sentinel_obj;
#define SENTINEL ((void *)&sentinel_obj)

/* Distinct addresses used as task results. */
static int tag_a, tag_b;

static int setup(void **state)
{
    (void)state;
    check_rec_init(&g_rec);
    return 0;
}

#define TEST(fn) cmocka_unit_test_setup(fn, setup)

/* ---- time ---------------------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- numbered steps (neco's order_add), safe from any thread ------------- */

#define ORDER_MAX 64

typedef struct order {
    atomic_int n;
    int steps[ORDER_MAX];
} order_t;

static void order_init(order_t *o)
{
    atomic_init(&o->n, 0);
    memset(o->steps, 0, sizeof o->steps);
}

static void order_add(order_t *o, int step)
{
    int i = atomic_fetch_add(&o->n, 1);
    CHECK(&g_rec, i < ORDER_MAX);
    if (i < ORDER_MAX)
        o->steps[i] = step;
}

static void order_check(order_t *o, const int *want, int n)
{
    assert_int_equal(atomic_load(&o->n), n);
    for (int i = 0; i < n; i++) {
        if (o->steps[i] != want[i])
            fail_msg("step %d: expected %d, got %d", i, want[i], o->steps[i]);
    }
}

/* ---- standalone loops ---------------------------------------------------- */

static weft_loop_t *new_loop(void)
{
    weft_loop_t *loop = NULL;
    assert_int_equal(weft_loop_new(&loop), 0);
    assert_non_null(loop);
    return loop;
}

/* Exactly one iteration: a stop requested before run_forever makes the loop
 * run one iteration and return (asyncio's rule). */
static void run_once(weft_loop_t *loop)
{
    assert_int_equal(weft_loop_stop(loop), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
}

/* Counts exception-handler reports and checks their codes. */
typedef struct exc_probe {
    weft_loop_t *loop;
    atomic_int calls;
    atomic_int eclosed;
} exc_probe_t;

static void on_exception(weft_loop_t *loop, const weft_error_context_t *ctx, void *arg)
{
    exc_probe_t *e = arg;
    CHECK(&g_rec, loop == e->loop);
    CHECK(&g_rec, ctx != NULL && ctx->message != NULL);
    atomic_fetch_add(&e->calls, 1);
    if (ctx != NULL && ctx->code == WEFT_ECLOSED)
        atomic_fetch_add(&e->eclosed, 1);
}

static void exc_probe_install(exc_probe_t *e, weft_loop_t *loop)
{
    e->loop = loop;
    atomic_init(&e->calls, 0);
    atomic_init(&e->eclosed, 0);
    assert_int_equal(weft_loop_set_exception_handler(loop, on_exception, e), 0);
}

/* Close and free a loop whose tasks all finished: nothing may be reported. */
static void close_clean(weft_loop_t *loop)
{
    exc_probe_t e;
    exc_probe_install(&e, loop);
    assert_int_equal(weft_loop_close(loop), 0);
    assert_int_equal(atomic_load(&e.calls), 0);
    weft_loop_free(loop);
}

/* weft_spawn from a loop callback (a task needs a task or a callback to be
 * spawned from). */
typedef struct spawn_req {
    weft_fn fn;
    void *arg;
    const weft_spawn_opts_t *opts;
    int rc;
    weft_task_t *t;
} spawn_req_t;

static void spawn_cb(void *arg)
{
    spawn_req_t *r = arg;
    r->t = SENTINEL;
    r->rc = weft_spawn(r->fn, r->arg, r->opts, &r->t);
}

/* Spawn fn(arg) on a standalone loop during one iteration; the task has not
 * run yet when this returns (unless eager). */
static weft_task_t *spawn_on(weft_loop_t *loop, weft_fn fn, void *arg,
                             const weft_spawn_opts_t *opts)
{
    spawn_req_t r = {fn, arg, opts, 1, NULL};
    assert_int_equal(weft_loop_call_soon(loop, spawn_cb, &r, NULL), 0);
    run_once(loop);
    assert_int_equal(r.rc, 0);
    assert_non_null(r.t);
    assert_ptr_not_equal(r.t, SENTINEL);
    return r.t;
}

/* ---- runtimes ------------------------------------------------------------ */

static weft_runtime_t *new_rt(unsigned workers)
{
    weft_config_t cfg = {.workers = workers};
    weft_runtime_t *rt = NULL;
    assert_int_equal(weft_runtime_new(&cfg, &rt), 0);
    assert_non_null(rt);
    return rt;
}

/* Submit fn(arg) from the test thread and block until it is done; returns
 * its outcome. */
static int run_in(weft_runtime_t *rt, weft_fn fn, void *arg, void **result)
{
    weft_future_t *f = NULL;
    assert_int_equal(weft_runtime_submit(rt, fn, arg, &f), 0);
    assert_non_null(f);
    assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
    void *v = NULL;
    int rc = weft_future_result(f, &v);
    if (result != NULL)
        *result = v;
    weft_future_release(f);
    return rc;
}

static void count_visit(weft_task_t *t, void *arg)
{
    (void)t;
    (*(int *)arg)++;
}

/* Shut down with every task finished (none abandoned), prove none is left,
 * free. */
static void free_rt(weft_runtime_t *rt)
{
    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    int n = 0;
    assert_int_equal(weft_all_tasks(rt, count_visit, &n), 0);
    assert_int_equal(n, 0);
    weft_runtime_free(rt);
}

static bool is_loop_of(weft_runtime_t *rt, weft_loop_t *loop)
{
    for (unsigned i = 0; i < weft_runtime_workers(rt); i++)
        if (weft_runtime_loop(rt, i) == loop)
            return true;
    return false;
}

/* ---- small task bodies ---------------------------------------------------- */

static int noop_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    return 0;
}

/* Returns the code passed as arg. */
static int return_code_body(void *arg, void **result)
{
    (void)result;
    return (int)(intptr_t)arg;
}

/* Returns arg as its result. */
static int return_arg_body(void *arg, void **result)
{
    *result = arg;
    return 0;
}

/* ======================================================================== */
/* Outside any task                                                          */
/* ======================================================================== */

static void test_task_suspension_points_outside_a_task_are_eperm(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);

    void *v = SENTINEL;
    assert_int_equal(weft_await(f, &v), -EPERM);
    assert_ptr_equal(v, SENTINEL);
    assert_int_equal(weft_yield(), -EPERM);
    assert_int_equal(weft_sleep(MS), -EPERM);
    assert_int_equal(weft_sleep(0), -EPERM);
    assert_int_equal(weft_sleep(-1), -EPERM);
    assert_null(weft_current_task());
    assert_false(weft_future_done(f));

    weft_future_release(f);
    close_clean(loop);
}

/* What a plain loop callback sees: no current task, suspension refused. */
typedef struct callback_ctx_probe {
    weft_future_t *f;
    int await_rc, yield_rc, sleep_rc;
    weft_task_t *current;
    int runs;
} callback_ctx_probe_t;

static void callback_ctx_cb(void *arg)
{
    callback_ctx_probe_t *p = arg;
    p->await_rc = weft_await(p->f, NULL);
    p->yield_rc = weft_yield();
    p->sleep_rc = weft_sleep(MS);
    p->current = weft_current_task();
    p->runs++;
}

static void test_task_suspension_points_in_a_loop_callback_are_eperm(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    callback_ctx_probe_t p = {.current = SENTINEL};
    assert_int_equal(weft_future_new(loop, &p.f), 0);
    assert_int_equal(weft_loop_call_soon(loop, callback_ctx_cb, &p, NULL), 0);
    run_once(loop);

    assert_int_equal(p.runs, 1);
    assert_int_equal(p.await_rc, -EPERM);
    assert_int_equal(p.yield_rc, -EPERM);
    assert_int_equal(p.sleep_rc, -EPERM);
    assert_null(p.current);
    weft_future_release(p.f);
    close_clean(loop);
}

static void test_task_spawn_outside_a_task_or_callback_is_eperm(void **state)
{
    (void)state;
    weft_task_t *t = SENTINEL;
    assert_int_equal(weft_spawn(noop_body, NULL, NULL, &t), -EPERM);
    assert_ptr_equal(t, SENTINEL);
    assert_int_equal(weft_spawn(noop_body, NULL, NULL, NULL), -EPERM);
    assert_int_equal(weft_task_create(noop_body, NULL, NULL, &t), -EPERM);
    assert_ptr_equal(t, SENTINEL);

    /* A runtime existing somewhere does not make the test thread a task. */
    weft_runtime_t *rt = new_rt(1);
    weft_spawn_opts_t opts = {.pinned = weft_runtime_loop(rt, 0)};
    assert_int_equal(weft_spawn(noop_body, NULL, &opts, &t), -EPERM);
    assert_ptr_equal(t, SENTINEL);
    free_rt(rt);
}

static void test_task_spawn_with_null_fn_is_einval(void **state)
{
    (void)state;
    weft_task_t *t = SENTINEL;
    assert_int_equal(weft_spawn(NULL, NULL, NULL, &t), -EINVAL);
    assert_int_equal(weft_task_create(NULL, NULL, NULL, &t), -EINVAL);
    assert_ptr_equal(t, SENTINEL);
}

static void test_task_null_handles(void **state)
{
    (void)state;
    assert_null(weft_task_future(NULL));
    weft_task_release(NULL); /* ignored */
    assert_int_equal(weft_task_cancel(NULL, "x"), -EINVAL);
    assert_int_equal(weft_task_cancelling(NULL), 0);
    assert_int_equal(weft_task_uncancel(NULL), -EINVAL);
    assert_int_equal(weft_task_set_name(NULL, "x"), -EINVAL);
    assert_int_equal(weft_all_tasks(NULL, count_visit, NULL), -EINVAL);
    assert_int_equal(weft_runtime_set_task_factory(NULL, weft_eager_task_factory, NULL), -EINVAL);

    weft_runtime_t *rt = new_rt(1);
    assert_int_equal(weft_all_tasks(rt, NULL, NULL), -EINVAL);
    free_rt(rt);
}

/* ======================================================================== */
/* Tasks on a standalone loop                                                */
/* ======================================================================== */

typedef struct where_probe {
    weft_loop_t *loop;
    weft_task_t *self;
    weft_runtime_t *rt;
    pthread_t thread;
    int runs;
} where_probe_t;

static int where_body(void *arg, void **result)
{
    where_probe_t *p = arg;
    p->loop = weft_get_running_loop();
    p->self = weft_current_task();
    p->rt = weft_get_running_runtime();
    p->thread = pthread_self();
    p->runs++;
    *result = &tag_a;
    return 0;
}

static void test_task_on_standalone_loop_runs_on_the_loop_thread(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    where_probe_t p = {.loop = SENTINEL, .self = SENTINEL, .rt = SENTINEL};
    weft_task_t *t = spawn_on(loop, where_body, &p, NULL);
    assert_int_equal(p.runs, 0); /* spawned, not run inline */
    assert_false(weft_future_done(weft_task_future(t)));
    assert_ptr_equal(weft_future_get_loop(weft_task_future(t)), loop);

    assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(t)), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(p.runs, 1);
    assert_ptr_equal(p.loop, loop);
    assert_ptr_equal(p.self, t);
    assert_null(p.rt);
    assert_true(pthread_equal(p.thread, pthread_self()));
    void *v = NULL;
    assert_int_equal(weft_future_result(weft_task_future(t), &v), 0);
    assert_ptr_equal(v, &tag_a);
    assert_null(weft_current_task());

    weft_task_release(t);
    close_clean(loop);
}

static void test_task_run_until_complete_returns_the_task_error(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_task_t *t = spawn_on(loop, return_code_body, (void *)(intptr_t)-EIO, NULL);
    assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(t)), -EIO);
    assert_int_equal(weft_future_error(weft_task_future(t)), -EIO);
    assert_null(weft_future_message(weft_task_future(t)));
    assert_false(weft_future_cancelled(weft_task_future(t)));
    weft_task_release(t);
    close_clean(loop);
}

/* Cancels itself, sees the request at its next suspension point and ends
 * by returning WEFT_ECANCELED. */
typedef struct self_cancel_probe {
    int cancel_rc, yield_rc;
} self_cancel_probe_t;

static int self_cancel_body(void *arg, void **result)
{
    (void)result;
    self_cancel_probe_t *p = arg;
    p->cancel_rc = weft_task_cancel(weft_current_task(), "stop now");
    p->yield_rc = weft_yield();
    return p->yield_rc;
}

static void test_task_returning_ecanceled_ends_cancelled_with_the_message(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    self_cancel_probe_t p = {0, 0};
    weft_task_t *t = spawn_on(loop, self_cancel_body, &p, NULL);
    assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(t)), WEFT_ECANCELED);
    assert_int_equal(p.cancel_rc, 1);
    assert_int_equal(p.yield_rc, WEFT_ECANCELED);
    weft_future_t *f = weft_task_future(t);
    assert_true(weft_future_cancelled(f));
    assert_int_equal(weft_future_error(f), WEFT_ECANCELED);
    assert_non_null(weft_future_message(f));
    assert_string_equal(weft_future_message(f), "stop now");
    assert_int_equal(weft_task_cancel(t, "late"), 0); /* already done */
    weft_task_release(t);
    close_clean(loop);
}

/* Three tasks that each record a step and yield: on one loop they
 * interleave round-robin in spawn order (FIFO; yield goes to the back). */
typedef struct rr_arg {
    order_t *order;
    int id;
} rr_arg_t;

static int round_robin_body(void *arg, void **result)
{
    (void)result;
    rr_arg_t *a = arg;
    for (int i = 0; i < 3; i++) {
        order_add(a->order, a->id * 10 + i);
        CHECK(&g_rec, weft_yield() == 0);
    }
    return 0;
}

typedef struct spawn3 {
    rr_arg_t args[3];
    weft_task_t *t[3];
    int rc[3];
} spawn3_t;

static void spawn3_cb(void *arg)
{
    spawn3_t *s = arg;
    for (int i = 0; i < 3; i++)
        s->rc[i] = weft_spawn(round_robin_body, &s->args[i], NULL, &s->t[i]);
}

static void test_task_yield_interleaves_tasks_in_fifo_order(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    order_t order;
    order_init(&order);
    spawn3_t s;
    memset(&s, 0, sizeof s);
    for (int i = 0; i < 3; i++)
        s.args[i] = (rr_arg_t){&order, i + 1};
    assert_int_equal(weft_loop_call_soon(loop, spawn3_cb, &s, NULL), 0);
    run_once(loop);
    for (int i = 0; i < 3; i++)
        assert_int_equal(s.rc[i], 0);
    assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(s.t[2])), 0);
    ASSERT_NO_FAILURE(&g_rec);
    static const int want[] = {10, 20, 30, 11, 21, 31, 12, 22, 32};
    order_check(&order, want, 9);
    for (int i = 0; i < 3; i++) {
        assert_true(weft_future_done(weft_task_future(s.t[i])));
        weft_task_release(s.t[i]);
    }
    close_clean(loop);
}

/* Awaits futures completed in every way, by loop callbacks. */
static void set_result_cb(void *arg)
{
    CHECK(&g_rec, weft_future_set_result(arg, &tag_b) == 0);
}

static void set_error_cb(void *arg)
{
    CHECK(&g_rec, weft_future_set_error(arg, -EPIPE, "pipe gone") == 0);
}

static void cancel_cb(void *arg)
{
    CHECK(&g_rec, weft_future_cancel(arg, "no"));
}

typedef struct await_probe {
    int steps;
} await_probe_t;

static int await_outcomes_body(void *arg, void **result)
{
    (void)result;
    await_probe_t *p = arg;
    weft_loop_t *loop = weft_get_running_loop();
    weft_future_t *f[3];
    weft_callback_fn completers[3] = {set_result_cb, set_error_cb, cancel_cb};
    for (int i = 0; i < 3; i++) {
        CHECK(&g_rec, weft_future_new(NULL, &f[i]) == 0); /* the running loop */
        CHECK(&g_rec, weft_future_get_loop(f[i]) == loop);
        CHECK(&g_rec, weft_loop_call_soon(loop, completers[i], f[i], NULL) == 0);
    }
    void *v = SENTINEL;
    CHECK(&g_rec, weft_await(f[0], &v) == 0);
    CHECK(&g_rec, v == &tag_b);
    v = SENTINEL;
    CHECK(&g_rec, weft_await(f[1], &v) == -EPIPE);
    CHECK(&g_rec, v == SENTINEL);
    CHECK(&g_rec, weft_await(f[2], &v) == WEFT_ECANCELED);
    CHECK(&g_rec, v == SENTINEL);
    /* Awaiting a done future gives its outcome again. */
    CHECK(&g_rec, weft_await(f[0], NULL) == 0);
    CHECK(&g_rec, weft_await(f[1], NULL) == -EPIPE);
    for (int i = 0; i < 3; i++)
        weft_future_release(f[i]);
    p->steps++;

    CHECK(&g_rec, weft_await(NULL, &v) == -EINVAL);
    CHECK(&g_rec, v == SENTINEL);
    CHECK(&g_rec, weft_await(weft_task_future(weft_current_task()), &v) == -EDEADLK);
    CHECK(&g_rec, v == SENTINEL);
    p->steps++;
    return 0;
}

static void test_task_await_returns_each_outcome_and_refuses_null_and_self(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    await_probe_t p = {0};
    weft_task_t *t = spawn_on(loop, await_outcomes_body, &p, NULL);
    assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(t)), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(p.steps, 2);
    weft_task_release(t);
    close_clean(loop);
}

/* Sleeps never end early; <= 0 behaves as a yield. */
typedef struct sleep_probe {
    int64_t slept_ns;
    int rc_pos, rc_zero, rc_neg;
} sleep_probe_t;

static int sleep_body(void *arg, void **result)
{
    (void)result;
    sleep_probe_t *p = arg;
    int64_t t0 = now_ns();
    p->rc_pos = weft_sleep(20 * MS);
    p->slept_ns = now_ns() - t0;
    p->rc_zero = weft_sleep(0);
    p->rc_neg = weft_sleep(-5 * MS);
    return 0;
}

static void test_task_sleep_never_returns_early_and_nonpositive_yields(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    sleep_probe_t p = {-1, 1, 1, 1};
    weft_task_t *t = spawn_on(loop, sleep_body, &p, NULL);
    assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(t)), 0);
    assert_int_equal(p.rc_pos, 0);
    assert_true(p.slept_ns >= 20 * MS);
    assert_int_equal(p.rc_zero, 0);
    assert_int_equal(p.rc_neg, 0);
    weft_task_release(t);
    close_clean(loop);
}

/* An eager task runs up to its first suspension inside weft_spawn. */
typedef struct eager_probe {
    atomic_int before; /* set before the first yield */
    atomic_int after;  /* set after it */
    int before_at_return, after_at_return;
    weft_task_t *current_at_return;
} eager_probe_t;

static void eager_probe_init(eager_probe_t *p)
{
    atomic_init(&p->before, 0);
    atomic_init(&p->after, 0);
    p->before_at_return = p->after_at_return = -1;
    p->current_at_return = SENTINEL;
}

static int eager_body(void *arg, void **result)
{
    (void)result;
    eager_probe_t *p = arg;
    atomic_store(&p->before, 1);
    CHECK(&g_rec, weft_yield() == 0);
    atomic_store(&p->after, 1);
    return 0;
}

typedef struct eager_spawn_req {
    eager_probe_t *p;
    bool eager;
    int rc;
    weft_task_t *t;
} eager_spawn_req_t;

static void eager_spawn_cb(void *arg)
{
    eager_spawn_req_t *r = arg;
    weft_spawn_opts_t opts = {.eager = r->eager};
    r->rc = weft_spawn(eager_body, r->p, &opts, &r->t);
    r->p->before_at_return = atomic_load(&r->p->before);
    r->p->after_at_return = atomic_load(&r->p->after);
    r->p->current_at_return = weft_current_task();
}

static void test_task_eager_spawn_on_standalone_loop_runs_to_first_suspension(void **state)
{
    (void)state;
    for (int eager = 0; eager <= 1; eager++) {
        weft_loop_t *loop = new_loop();
        eager_probe_t p;
        eager_probe_init(&p);
        eager_spawn_req_t r = {&p, eager == 1, 1, NULL};
        assert_int_equal(weft_loop_call_soon(loop, eager_spawn_cb, &r, NULL), 0);
        run_once(loop);
        assert_int_equal(r.rc, 0);
        assert_int_equal(p.before_at_return, eager);
        assert_int_equal(p.after_at_return, 0);
        assert_null(p.current_at_return); /* back in the callback, not in the task */
        assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(r.t)), 0);
        ASSERT_NO_FAILURE(&g_rec);
        assert_int_equal(atomic_load(&p.before), 1);
        assert_int_equal(atomic_load(&p.after), 1);
        weft_task_release(r.t);
        close_clean(loop);
    }
}

static void test_task_spawn_pinned_to_another_standalone_loop_is_einval(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_loop_t *other = new_loop();
    weft_spawn_opts_t opts = {.pinned = other};
    spawn_req_t r = {noop_body, NULL, &opts, 1, NULL};
    assert_int_equal(weft_loop_call_soon(loop, spawn_cb, &r, NULL), 0);
    run_once(loop);
    assert_int_equal(r.rc, -EINVAL);
    assert_ptr_equal(r.t, SENTINEL);

    /* Pinned to its own loop is fine. */
    opts.pinned = loop;
    weft_task_t *t = spawn_on(loop, return_arg_body, &tag_a, &opts);
    assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(t)), 0);
    weft_task_release(t);
    close_clean(other);
    close_clean(loop);
}

static void test_task_spawn_with_stack_size_above_limit_is_einval(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_spawn_opts_t opts = {.stack_size = STACK_TOO_BIG};
    spawn_req_t r = {noop_body, NULL, &opts, 1, NULL};
    assert_int_equal(weft_loop_call_soon(loop, spawn_cb, &r, NULL), 0);
    run_once(loop);
    assert_int_equal(r.rc, -EINVAL);
    assert_ptr_equal(r.t, SENTINEL);
    close_clean(loop);
}

/* ---- run_coroutine_threadsafe -------------------------------------------- */

typedef struct rcts_thread {
    weft_loop_t *loop;
    pthread_t loop_thread;
    where_probe_t probe;
    int submit_rc, wait_rc, result_rc;
    void *result;
} rcts_thread_t;

static void *rcts_thread_main(void *arg)
{
    rcts_thread_t *x = arg;
    weft_future_t *f = NULL;
    x->submit_rc = weft_run_coroutine_threadsafe(x->loop, where_body, &x->probe, &f);
    if (x->submit_rc == 0) {
        x->wait_rc = weft_future_wait(f, WAIT_LIMIT);
        x->result_rc = weft_future_result(f, &x->result);
        CHECK(&g_rec, weft_future_get_loop(f) == x->loop);
        weft_future_release(f);
    }
    CHECK(&g_rec, weft_loop_stop(x->loop) == 0);
    return NULL;
}

/* A watchdog for loops the test runs forever: stops them if a test would
 * hang, so it fails on its checks instead. */
static void watchdog_cb(void *arg)
{
    CHECK(&g_rec, !"watchdog fired");
    weft_loop_stop(arg);
}

static void test_task_run_coroutine_threadsafe_from_foreign_thread_runs_on_the_loop(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_handle_t *wd = NULL;
    assert_int_equal(weft_loop_call_later(loop, WAIT_LIMIT, watchdog_cb, loop, &wd), 0);
    rcts_thread_t x;
    memset(&x, 0, sizeof x);
    x.loop = loop;
    x.loop_thread = pthread_self();
    x.submit_rc = x.wait_rc = x.result_rc = 1;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, rcts_thread_main, &x), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);

    assert_int_equal(x.submit_rc, 0);
    assert_int_equal(x.wait_rc, 0);
    assert_int_equal(x.result_rc, 0);
    assert_ptr_equal(x.result, &tag_a);
    assert_int_equal(x.probe.runs, 1);
    assert_ptr_equal(x.probe.loop, loop);
    assert_non_null(x.probe.self);
    assert_null(x.probe.rt);
    assert_true(pthread_equal(x.probe.thread, pthread_self()));

    assert_int_equal(weft_handle_cancel(wd), 0);
    weft_handle_release(wd);
    close_clean(loop);
}

static void test_task_run_coroutine_threadsafe_errors(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = SENTINEL;
    assert_int_equal(weft_run_coroutine_threadsafe(NULL, noop_body, NULL, &f), -EINVAL);
    assert_int_equal(weft_run_coroutine_threadsafe(loop, NULL, NULL, &f), -EINVAL);
    assert_int_equal(weft_run_coroutine_threadsafe(loop, noop_body, NULL, NULL), -EINVAL);
    assert_ptr_equal(f, SENTINEL);
    assert_int_equal(weft_loop_close(loop), 0);
    assert_int_equal(weft_run_coroutine_threadsafe(loop, noop_body, NULL, &f), WEFT_ECLOSED);
    assert_ptr_equal(f, SENTINEL);
    weft_loop_free(loop);
}

/* Submitted from the test thread before the loop runs: the future gives the
 * task's outcome through run_until_complete. */
static void test_task_run_coroutine_threadsafe_before_the_loop_runs(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(
        weft_run_coroutine_threadsafe(loop, return_code_body, (void *)(intptr_t)-ENOSPC, &f), 0);
    assert_false(weft_future_done(f));
    assert_int_equal(weft_loop_run_until_complete(loop, f), -ENOSPC);
    assert_int_equal(weft_future_error(f), -ENOSPC);
    weft_future_release(f);
    close_clean(loop);
}

/* ---- closing a loop with a task still suspended -------------------------- */

typedef struct parked_probe {
    atomic_int started;
    atomic_int resumed; /* must stay 0: an abandoned task never runs again */
    weft_future_t *gate;
} parked_probe_t;

static int sleep_long_body(void *arg, void **result)
{
    (void)result;
    parked_probe_t *p = arg;
    atomic_store(&p->started, 1);
    (void)weft_sleep(100 * SEC);
    atomic_store(&p->resumed, 1);
    return 0;
}

static int await_gate_body(void *arg, void **result)
{
    (void)result;
    parked_probe_t *p = arg;
    atomic_store(&p->started, 1);
    (void)weft_await(p->gate, NULL);
    atomic_store(&p->resumed, 1);
    return 0;
}

static void count_done_cb(weft_future_t *f, void *arg)
{
    (void)f;
    atomic_fetch_add((atomic_int *)arg, 1);
}

static void test_task_closing_loop_with_sleeping_task_reports_and_cancels_it(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    parked_probe_t p;
    memset(&p, 0, sizeof p);
    weft_task_t *t = spawn_on(loop, sleep_long_body, &p, NULL);
    run_once(loop); /* the task runs and suspends in weft_sleep */
    assert_int_equal(atomic_load(&p.started), 1);
    atomic_int done_calls;
    atomic_init(&done_calls, 0);
    assert_int_equal(weft_future_add_done_callback(weft_task_future(t), count_done_cb, &done_calls),
                     0);

    exc_probe_t e;
    exc_probe_install(&e, loop);
    assert_int_equal(weft_loop_close(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_true(atomic_load(&e.calls) >= 1);
    assert_int_equal(atomic_load(&e.eclosed), atomic_load(&e.calls));
    weft_future_t *f = weft_task_future(t);
    assert_true(weft_future_done(f));
    assert_true(weft_future_cancelled(f));
    assert_int_equal(weft_future_result(f, NULL), WEFT_ECANCELED);
    assert_int_equal(atomic_load(&p.resumed), 0);
    assert_int_equal(atomic_load(&done_calls), 0); /* its loop is gone: reported instead */
    assert_int_equal(weft_task_cancel(t, NULL), 0);
    weft_task_release(t);
    weft_loop_free(loop);
}

static void test_task_closing_loop_with_awaiting_task_reports_it_once(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    parked_probe_t p;
    memset(&p, 0, sizeof p);
    assert_int_equal(weft_future_new(loop, &p.gate), 0);
    weft_task_t *t = spawn_on(loop, await_gate_body, &p, NULL);
    run_once(loop);
    assert_int_equal(atomic_load(&p.started), 1);

    exc_probe_t e;
    exc_probe_install(&e, loop);
    assert_int_equal(weft_loop_close(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    /* Nothing but the task was pending: one report, WEFT_ECLOSED. */
    assert_int_equal(atomic_load(&e.calls), 1);
    assert_int_equal(atomic_load(&e.eclosed), 1);
    assert_true(weft_future_cancelled(weft_task_future(t)));
    assert_int_equal(atomic_load(&p.resumed), 0);
    assert_false(weft_future_done(p.gate));
    weft_task_release(t);
    weft_future_release(p.gate);
    weft_loop_free(loop);
}

/* ======================================================================== */
/* Tasks in a runtime                                                        */
/* ======================================================================== */

typedef struct spawn_await_probe {
    where_probe_t child;
    weft_loop_t *driver_loop;
    weft_runtime_t *driver_rt;
    int done;
} spawn_await_probe_t;

static int child_where_body(void *arg, void **result)
{
    where_probe_t *p = arg;
    p->loop = weft_get_running_loop();
    p->self = weft_current_task();
    p->rt = weft_get_running_runtime();
    p->runs++;
    *result = &tag_b;
    return 0;
}

static int spawn_await_driver(void *arg, void **result)
{
    spawn_await_probe_t *p = arg;
    weft_task_t *self = weft_current_task();
    CHECK(&g_rec, self != NULL);
    p->driver_loop = weft_get_running_loop();
    p->driver_rt = weft_get_running_runtime();
    weft_task_t *t = SENTINEL;
    CHECK(&g_rec, weft_spawn(child_where_body, &p->child, NULL, &t) == 0);
    if (t == SENTINEL || t == NULL)
        return -EFAULT;
    void *v = NULL;
    CHECK(&g_rec, weft_await(weft_task_future(t), &v) == 0);
    CHECK(&g_rec, v == &tag_b);
    CHECK(&g_rec, p->child.runs == 1);
    CHECK(&g_rec, p->child.self == t);
    CHECK(&g_rec, weft_current_task() == self);
    CHECK(&g_rec, weft_task_cancel(t, NULL) == 0); /* done */
    weft_task_release(t);
    p->done = 1;
    *result = &tag_a;
    return 0;
}

static void test_task_spawn_and_await_in_a_runtime(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    spawn_await_probe_t p;
    memset(&p, 0, sizeof p);
    void *v = NULL;
    assert_int_equal(run_in(rt, spawn_await_driver, &p, &v), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_ptr_equal(v, &tag_a);
    assert_int_equal(p.done, 1);
    assert_ptr_equal(p.driver_rt, rt);
    assert_true(is_loop_of(rt, p.driver_loop));
    assert_ptr_equal(p.child.rt, rt);
    assert_true(is_loop_of(rt, p.child.loop));
    assert_null(weft_current_task());
    assert_null(weft_get_running_runtime());
    free_rt(rt);
}

/* Awaiting tasks that fail, awaiting itself, blocking waits inside a task. */
static int await_errors_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(return_code_body, (void *)(intptr_t)-EIO, NULL, &t) == 0);
    void *v = SENTINEL;
    CHECK(&g_rec, weft_await(weft_task_future(t), &v) == -EIO);
    CHECK(&g_rec, v == SENTINEL);
    CHECK(&g_rec, weft_future_error(weft_task_future(t)) == -EIO);
    CHECK(&g_rec, !weft_future_cancelled(weft_task_future(t)));
    weft_task_release(t);

    weft_future_t *own = weft_task_future(weft_current_task());
    CHECK(&g_rec, weft_await(own, &v) == -EDEADLK);
    CHECK(&g_rec, weft_await(NULL, &v) == -EINVAL);
    CHECK(&g_rec, v == SENTINEL);

    /* A task awaits; it may not block its worker. */
    weft_future_t *f = NULL;
    CHECK(&g_rec, weft_future_new(NULL, &f) == 0);
    CHECK(&g_rec, weft_future_wait(f, 0) == -EPERM);
    CHECK(&g_rec, weft_future_wait(f, MS) == -EPERM);
    CHECK(&g_rec, weft_future_set_result(f, NULL) == 0);
    CHECK(&g_rec, weft_future_wait(f, -1) == -EPERM);
    weft_future_release(f);
    return 0;
}

static void test_task_await_errors_in_a_runtime(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    assert_int_equal(run_in(rt, await_errors_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
}

/* A task returning a negative code fails with it (through submit too). */
static void test_task_returning_an_error_code_ends_with_it(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    static const int codes[] = {-EIO, -ENOENT, WEFT_ETIMEDOUT, WEFT_EINVALSTATE};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        weft_future_t *f = NULL;
        assert_int_equal(weft_runtime_submit(rt, return_code_body, (void *)(intptr_t)codes[i], &f),
                         0);
        assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
        assert_int_equal(weft_future_error(f), codes[i]);
        assert_false(weft_future_cancelled(f));
        void *v = SENTINEL;
        assert_int_equal(weft_future_result(f, &v), codes[i]);
        assert_ptr_equal(v, SENTINEL);
        weft_future_release(f);
    }
    free_rt(rt);
}

/* ---- cancellation -------------------------------------------------------- */

typedef struct counts_probe {
    int step;
} counts_probe_t;

static int cancel_counts_body(void *arg, void **result)
{
    (void)result;
    counts_probe_t *p = arg;
    weft_task_t *self = weft_current_task();
    CHECK(&g_rec, weft_task_cancelling(self) == 0);
    CHECK(&g_rec, weft_task_uncancel(self) == 0); /* nothing to withdraw */
    CHECK(&g_rec, weft_task_cancel(self, "first") == 1);
    CHECK(&g_rec, weft_task_cancelling(self) == 1);
    CHECK(&g_rec, weft_task_cancel(self, "second") == 1);
    CHECK(&g_rec, weft_task_cancelling(self) == 2);
    CHECK(&g_rec, weft_task_uncancel(self) == 1);
    CHECK(&g_rec, weft_task_cancelling(self) == 1);
    CHECK(&g_rec, weft_task_uncancel(self) == 0);
    CHECK(&g_rec, weft_task_cancelling(self) == 0);
    p->step = 1;
    /* Every request withdrawn: no suspension point is interrupted. */
    CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, weft_sleep(MS) == 0);
    p->step = 2;
    /* One request: delivered once, at the next suspension point. */
    CHECK(&g_rec, weft_task_cancel(self, "third") == 1);
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    CHECK(&g_rec, weft_task_cancelling(self) == 1); /* delivery withdraws nothing */
    CHECK(&g_rec, weft_yield() == 0);
    p->step = 3;
    /* Delivered by weft_sleep too, without sleeping. */
    CHECK(&g_rec, weft_task_cancel(self, NULL) == 1);
    CHECK(&g_rec, weft_task_cancelling(self) == 2);
    CHECK(&g_rec, weft_sleep(100 * SEC) == WEFT_ECANCELED);
    p->step = 4;
    return 0; /* handled: the task ends with a result */
}

static void test_task_cancel_cancelling_and_uncancel_counts(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    counts_probe_t p = {0};
    void *v = SENTINEL;
    assert_int_equal(run_in(rt, cancel_counts_body, &p, &v), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(p.step, 4);
    assert_null(v);
    free_rt(rt);
}

/* A sleeping task, cancelled: its weft_sleep returns WEFT_ECANCELED. */
typedef struct sleeper {
    atomic_int started;
    int sleep_rc;
} sleeper_t;

static int cancellable_sleeper_body(void *arg, void **result)
{
    (void)result;
    sleeper_t *s = arg;
    atomic_store(&s->started, 1);
    s->sleep_rc = weft_sleep(100 * SEC);
    return s->sleep_rc;
}

static int cancel_sleeper_driver(void *arg, void **result)
{
    (void)result;
    sleeper_t *s = arg;
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(cancellable_sleeper_body, s, NULL, &t) == 0);
    /* One worker: once the sleeper has started it is suspended in
     * weft_sleep (it cannot run while this task runs). */
    for (int i = 0; i < 1000 && atomic_load(&s->started) == 0; i++)
        CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, atomic_load(&s->started) == 1);
    CHECK(&g_rec, !weft_future_done(weft_task_future(t)));
    CHECK(&g_rec, weft_task_cancel(t, "wake up") == 1);
    CHECK(&g_rec, weft_task_cancelling(t) == 1);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, s->sleep_rc == WEFT_ECANCELED);
    weft_future_t *f = weft_task_future(t);
    CHECK(&g_rec, weft_future_cancelled(f));
    const char *msg = weft_future_message(f);
    CHECK(&g_rec, msg != NULL && strcmp(msg, "wake up") == 0);
    CHECK(&g_rec, weft_task_cancel(t, NULL) == 0);
    weft_task_release(t);
    return 0;
}

static void test_task_cancelled_sleeping_task_sleep_returns_ecanceled(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    sleeper_t s;
    atomic_init(&s.started, 0);
    s.sleep_rc = 1;
    assert_int_equal(run_in(rt, cancel_sleeper_driver, &s, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(s.sleep_rc, WEFT_ECANCELED);
    free_rt(rt);
}

/* A task awaiting a future that never completes, cancelled: its await
 * returns WEFT_ECANCELED. */
typedef struct awaiter {
    atomic_int started;
    int await_rc;
    weft_future_t *f;
} awaiter_t;

static int cancellable_awaiter_body(void *arg, void **result)
{
    (void)result;
    awaiter_t *a = arg;
    atomic_store(&a->started, 1);
    a->await_rc = weft_await(a->f, NULL);
    return a->await_rc;
}

static int cancel_awaiter_driver(void *arg, void **result)
{
    (void)result;
    awaiter_t *a = arg;
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_future_new(NULL, &a->f) == 0);
    CHECK(&g_rec, weft_spawn(cancellable_awaiter_body, a, NULL, &t) == 0);
    for (int i = 0; i < 1000 && atomic_load(&a->started) == 0; i++)
        CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, weft_task_cancel(t, "enough") == 1);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, a->await_rc == WEFT_ECANCELED);
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(t)));
    weft_task_release(t);
    return 0;
}

static void test_task_cancelled_awaiting_task_await_returns_ecanceled(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    awaiter_t a;
    memset(&a, 0, sizeof a);
    atomic_init(&a.started, 0);
    a.await_rc = 1;
    assert_int_equal(run_in(rt, cancel_awaiter_driver, &a, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(a.await_rc, WEFT_ECANCELED);
    weft_future_release(a.f);
    free_rt(rt);
}

/* Cancelled before it first ran: if its body runs at all, its first
 * suspension point returns WEFT_ECANCELED; the task ends cancelled. */
typedef struct early_probe {
    atomic_int ran;
    int first_rc;
} early_probe_t;

static int early_body(void *arg, void **result)
{
    (void)result;
    early_probe_t *p = arg;
    atomic_store(&p->ran, 1);
    p->first_rc = weft_yield();
    return p->first_rc;
}

static int cancel_before_start_driver(void *arg, void **result)
{
    (void)result;
    early_probe_t *p = arg;
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(early_body, p, NULL, &t) == 0);
    /* One worker and no suspension since spawn: it has not run. */
    CHECK(&g_rec, atomic_load(&p->ran) == 0);
    CHECK(&g_rec, weft_task_cancel(t, "before start") == 1);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(t)));
    if (atomic_load(&p->ran))
        CHECK(&g_rec, p->first_rc == WEFT_ECANCELED);
    weft_task_release(t);
    return 0;
}

static void test_task_cancelled_before_first_run_ends_cancelled(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    early_probe_t p;
    atomic_init(&p.ran, 0);
    p.first_rc = 1;
    assert_int_equal(run_in(rt, cancel_before_start_driver, &p, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
}

/* ---- names --------------------------------------------------------------- */

static bool is_default_name(const char *s)
{
    if (s == NULL || strncmp(s, "Task-", 5) != 0 || s[5] == '\0')
        return false;
    for (const char *c = s + 5; *c != '\0'; c++)
        if (*c < '0' || *c > '9')
            return false;
    return true;
}

static int rename_self_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *self = weft_current_task();
    CHECK(&g_rec, weft_task_set_name(self, "self-named") == 0);
    const char *n = weft_task_get_name(self);
    CHECK(&g_rec, n != NULL && strcmp(n, "self-named") == 0);
    CHECK(&g_rec, weft_yield() == 0);
    n = weft_task_get_name(self);
    CHECK(&g_rec, n != NULL && strcmp(n, "self-named") == 0);
    return 0;
}

static int names_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    CHECK(&g_rec, weft_spawn(noop_body, NULL, NULL, &a) == 0);
    CHECK(&g_rec, weft_spawn(noop_body, NULL, NULL, &b) == 0);
    char buf[16] = "worker-7";
    weft_spawn_opts_t opts = {.name = buf};
    CHECK(&g_rec, weft_spawn(noop_body, NULL, &opts, &c) == 0);
    buf[0] = 'X'; /* the name was copied */
    CHECK(&g_rec, weft_spawn(rename_self_body, NULL, NULL, &d) == 0);
    weft_task_t *all[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++)
        CHECK(&g_rec, weft_await(weft_task_future(all[i]), NULL) == 0);

    const char *na = weft_task_get_name(a), *nb = weft_task_get_name(b);
    CHECK(&g_rec, is_default_name(na));
    CHECK(&g_rec, is_default_name(nb));
    CHECK(&g_rec, na != NULL && nb != NULL && strcmp(na, nb) != 0);
    CHECK(&g_rec, is_default_name(weft_task_get_name(weft_current_task())));
    const char *nc = weft_task_get_name(c);
    CHECK(&g_rec, nc != NULL && strcmp(nc, "worker-7") == 0);
    const char *nd = weft_task_get_name(d);
    CHECK(&g_rec, nd != NULL && strcmp(nd, "self-named") == 0);

    CHECK(&g_rec, weft_task_set_name(c, "renamed") == 0);
    nc = weft_task_get_name(c);
    CHECK(&g_rec, nc != NULL && strcmp(nc, "renamed") == 0);
    CHECK(&g_rec, weft_task_set_name(c, NULL) == -EINVAL);
    nc = weft_task_get_name(c);
    CHECK(&g_rec, nc != NULL && strcmp(nc, "renamed") == 0);
    for (int i = 0; i < 4; i++)
        weft_task_release(all[i]);
    return 0;
}

static void test_task_names_default_copy_and_set(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    assert_int_equal(run_in(rt, names_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
}

static void test_task_names_on_a_standalone_loop(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_task_t *t = spawn_on(loop, noop_body, NULL, NULL);
    assert_true(is_default_name(weft_task_get_name(t)));
    assert_int_equal(weft_task_set_name(t, "loop-task"), 0); /* not running yet */
    assert_string_equal(weft_task_get_name(t), "loop-task");
    assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(t)), 0);
    assert_string_equal(weft_task_get_name(t), "loop-task");
    weft_task_release(t);
    close_clean(loop);
}

/* ---- task factories and eager tasks ------------------------------------- */

typedef struct factory_probe {
    atomic_int calls;
    int fail_code; /* returned instead of creating when non-zero */
    atomic_int runs;
    const char *last_name;
} factory_probe_t;

static int counting_factory(weft_fn fn, void *arg, const weft_spawn_opts_t *opts, weft_task_t **out,
                            void *factory_arg)
{
    factory_probe_t *p = factory_arg;
    atomic_fetch_add(&p->calls, 1);
    p->last_name = opts != NULL ? opts->name : NULL;
    if (p->fail_code != 0)
        return p->fail_code;
    return weft_task_create(fn, arg, opts, out);
}

static int count_run_body(void *arg, void **result)
{
    (void)result;
    factory_probe_t *p = arg;
    atomic_fetch_add(&p->runs, 1);
    return 0;
}

static int factory_driver(void *arg, void **result)
{
    (void)result;
    factory_probe_t *p = arg;
    weft_runtime_t *rt = weft_get_running_runtime();
    CHECK(&g_rec, weft_runtime_set_task_factory(rt, counting_factory, p) == 0);

    weft_task_t *t[5];
    for (int i = 0; i < 5; i++)
        CHECK(&g_rec, weft_spawn(count_run_body, p, NULL, &t[i]) == 0);
    CHECK(&g_rec, atomic_load(&p->calls) == 5);
    /* Without out: the factory's reference is dropped for us. */
    weft_spawn_opts_t opts = {.name = "from-factory"};
    CHECK(&g_rec, weft_spawn(count_run_body, p, &opts, NULL) == 0);
    CHECK(&g_rec, p->last_name != NULL && strcmp(p->last_name, "from-factory") == 0);
    CHECK(&g_rec, weft_spawn(count_run_body, p, NULL, NULL) == 0);
    CHECK(&g_rec, atomic_load(&p->calls) == 7);
    for (int i = 0; i < 5; i++) {
        CHECK(&g_rec, weft_await(weft_task_future(t[i]), NULL) == 0);
        weft_task_release(t[i]);
    }
    for (int i = 0; i < 100000 && atomic_load(&p->runs) < 7; i++)
        CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, atomic_load(&p->runs) == 7);

    /* A failing factory: spawn returns its code, out untouched. */
    p->fail_code = -ENOMEM;
    weft_task_t *x = SENTINEL;
    CHECK(&g_rec, weft_spawn(count_run_body, p, NULL, &x) == -ENOMEM);
    CHECK(&g_rec, x == SENTINEL);
    CHECK(&g_rec, atomic_load(&p->calls) == 8);

    /* Uninstalled: spawn creates tasks itself again. */
    CHECK(&g_rec, weft_runtime_set_task_factory(rt, NULL, NULL) == 0);
    CHECK(&g_rec, weft_spawn(count_run_body, p, NULL, &x) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(x), NULL) == 0);
    weft_task_release(x);
    CHECK(&g_rec, atomic_load(&p->calls) == 8);
    CHECK(&g_rec, atomic_load(&p->runs) == 8);
    return 0;
}

static void test_task_factory_is_called_for_every_spawn(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    factory_probe_t p;
    memset(&p, 0, sizeof p);
    atomic_init(&p.calls, 0);
    atomic_init(&p.runs, 0);
    assert_int_equal(run_in(rt, factory_driver, &p, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&p.calls), 8);
    free_rt(rt);
}

/* One worker, so nothing runs the spawned task behind the spawner's back:
 * before/after show exactly how far it got when weft_spawn returned. */
typedef struct eager_driver_arg {
    eager_probe_t lazy, opt, factory, direct;
} eager_driver_arg_t;

static int eager_driver(void *arg, void **result)
{
    (void)result;
    eager_driver_arg_t *a = arg;
    weft_task_t *self = weft_current_task();
    weft_task_t *t = NULL;

    CHECK(&g_rec, weft_spawn(eager_body, &a->lazy, NULL, &t) == 0);
    CHECK(&g_rec, atomic_load(&a->lazy.before) == 0); /* runs soon, not now */
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    weft_task_release(t);

    weft_spawn_opts_t opts = {.eager = true};
    CHECK(&g_rec, weft_spawn(eager_body, &a->opt, &opts, &t) == 0);
    CHECK(&g_rec, atomic_load(&a->opt.before) == 1);
    CHECK(&g_rec, atomic_load(&a->opt.after) == 0);
    CHECK(&g_rec, weft_current_task() == self);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    CHECK(&g_rec, atomic_load(&a->opt.after) == 1);
    weft_task_release(t);

    weft_runtime_t *rt = weft_get_running_runtime();
    CHECK(&g_rec, weft_runtime_set_task_factory(rt, weft_eager_task_factory, NULL) == 0);
    CHECK(&g_rec, weft_spawn(eager_body, &a->factory, NULL, &t) == 0);
    CHECK(&g_rec, atomic_load(&a->factory.before) == 1);
    CHECK(&g_rec, atomic_load(&a->factory.after) == 0);
    CHECK(&g_rec, weft_current_task() == self);
    CHECK(&g_rec, weft_runtime_set_task_factory(rt, NULL, NULL) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    weft_task_release(t);

    /* Called directly, the eager factory makes an eager task as well. */
    CHECK(&g_rec, weft_eager_task_factory(eager_body, &a->direct, NULL, &t, NULL) == 0);
    CHECK(&g_rec, atomic_load(&a->direct.before) == 1);
    CHECK(&g_rec, atomic_load(&a->direct.after) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    CHECK(&g_rec, atomic_load(&a->direct.after) == 1);
    weft_task_release(t);
    return 0;
}

static void test_task_eager_spawn_runs_until_first_suspension_before_returning(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    eager_driver_arg_t a;
    eager_probe_init(&a.lazy);
    eager_probe_init(&a.opt);
    eager_probe_init(&a.factory);
    eager_probe_init(&a.direct);
    assert_int_equal(run_in(rt, eager_driver, &a, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&a.lazy.after), 1);
    assert_int_equal(atomic_load(&a.factory.after), 1);
    free_rt(rt);
}

/* ---- weft_all_tasks ------------------------------------------------------- */

typedef struct visit_probe {
    int n;
    int done_seen; /* visited tasks whose future was already done */
    int self_seen;
    weft_task_t *self;
} visit_probe_t;

static void probe_visit(weft_task_t *t, void *arg)
{
    visit_probe_t *v = arg;
    v->n++;
    if (weft_future_done(weft_task_future(t)))
        v->done_seen++;
    if (t == v->self)
        v->self_seen++;
}

typedef struct gate_arg {
    weft_future_t *gate;
    atomic_int started;
} gate_arg_t;

static int gated_body(void *arg, void **result)
{
    (void)result;
    gate_arg_t *g = arg;
    atomic_fetch_add(&g->started, 1);
    CHECK(&g_rec, weft_await(g->gate, NULL) == 0);
    return 0;
}

static void test_task_all_tasks_visits_exactly_the_live_tasks(void **state)
{
    (void)state;
    enum { N = 16 };
    weft_runtime_t *rt = new_rt(2);
    gate_arg_t g;
    atomic_init(&g.started, 0);
    assert_int_equal(weft_future_new(weft_runtime_loop(rt, 0), &g.gate), 0);

    visit_probe_t v = {0, 0, 0, NULL};
    assert_int_equal(weft_all_tasks(rt, probe_visit, &v), 0);
    assert_int_equal(v.n, 0);

    weft_future_t *f[N];
    for (int i = 0; i < N; i++)
        assert_int_equal(weft_runtime_submit(rt, gated_body, &g, &f[i]), 0);
    /* None can finish before the gate opens: exactly N, started or not. */
    memset(&v, 0, sizeof v);
    assert_int_equal(weft_all_tasks(rt, probe_visit, &v), N);
    assert_int_equal(v.n, N);
    assert_int_equal(v.done_seen, 0);
    for (int spins = 0; atomic_load(&g.started) < N && spins < 30000; spins++)
        sleep_ms(1);
    assert_int_equal(atomic_load(&g.started), N);
    memset(&v, 0, sizeof v);
    assert_int_equal(weft_all_tasks(rt, probe_visit, &v), N);
    assert_int_equal(v.n, N);

    assert_int_equal(weft_future_set_result(g.gate, NULL), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(weft_future_wait(f[i], WAIT_LIMIT), 0);
        assert_int_equal(weft_future_result(f[i], NULL), 0);
        weft_future_release(f[i]);
    }
    ASSERT_NO_FAILURE(&g_rec);
    weft_future_release(g.gate);
    free_rt(rt);
}

/* Inside a task, one worker: counts are exact at every step. */
typedef struct all_tasks_driver_arg {
    atomic_int release;
    atomic_int started;
    visit_probe_t during, after;
} all_tasks_driver_arg_t;

static int spin_until_released_body(void *arg, void **result)
{
    (void)result;
    all_tasks_driver_arg_t *a = arg;
    atomic_fetch_add(&a->started, 1);
    while (atomic_load(&a->release) == 0)
        CHECK(&g_rec, weft_yield() == 0);
    return 0;
}

static int all_tasks_driver(void *arg, void **result)
{
    (void)result;
    all_tasks_driver_arg_t *a = arg;
    weft_runtime_t *rt = weft_get_running_runtime();
    weft_task_t *t[3];
    for (int i = 0; i < 3; i++)
        CHECK(&g_rec, weft_spawn(spin_until_released_body, a, NULL, &t[i]) == 0);
    for (int i = 0; i < 1000 && atomic_load(&a->started) < 3; i++)
        CHECK(&g_rec, weft_yield() == 0);
    a->during.self = weft_current_task();
    CHECK(&g_rec, weft_all_tasks(rt, probe_visit, &a->during) == 4);
    atomic_store(&a->release, 1);
    for (int i = 0; i < 3; i++) {
        CHECK(&g_rec, weft_await(weft_task_future(t[i]), NULL) == 0);
        weft_task_release(t[i]);
    }
    a->after.self = weft_current_task();
    CHECK(&g_rec, weft_all_tasks(rt, probe_visit, &a->after) == 1);
    return 0;
}

static void test_task_all_tasks_inside_a_task_counts_itself_and_its_children(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    all_tasks_driver_arg_t a;
    memset(&a, 0, sizeof a);
    atomic_init(&a.release, 0);
    atomic_init(&a.started, 0);
    assert_int_equal(run_in(rt, all_tasks_driver, &a, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&a.started), 3);
    assert_int_equal(a.during.n, 4);
    assert_int_equal(a.during.self_seen, 1);
    assert_int_equal(a.during.done_seen, 0);
    assert_int_equal(a.after.n, 1);
    assert_int_equal(a.after.self_seen, 1);
    assert_int_equal(a.after.done_seen, 0);
    free_rt(rt);
}

/* A task whose future a plain thread has seen done is no longer live. */
static void test_task_all_tasks_never_visits_a_task_seen_done(void **state)
{
    (void)state;
    enum { ROUNDS = 2000 };
    weft_runtime_t *rt = new_rt(2);
    int visited_done = 0, visited = 0;
    for (int i = 0; i < ROUNDS; i++) {
        weft_future_t *f = NULL;
        assert_int_equal(weft_runtime_submit(rt, noop_body, NULL, &f), 0);
        assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
        visit_probe_t v = {0, 0, 0, NULL};
        int n = weft_all_tasks(rt, probe_visit, &v);
        assert_int_equal(n, v.n);
        visited += v.n;
        visited_done += v.done_seen;
        weft_future_release(f);
    }
    if (visited_done != 0)
        fail_msg("weft_all_tasks visited %d task(s) already done (of %d visits in %d rounds)",
                 visited_done, visited, ROUNDS);
    assert_int_equal(visited, 0);
    free_rt(rt);
}

/* ---- spawn arguments inside a runtime ----------------------------------- */

typedef struct spawn_errors_arg {
    weft_loop_t *foreign_worker_loop; /* a worker loop of another runtime */
    weft_loop_t *standalone;
    int rc[4];
    bool untouched[4];
} spawn_errors_arg_t;

static int spawn_errors_driver(void *arg, void **result)
{
    (void)result;
    spawn_errors_arg_t *a = arg;
    weft_spawn_opts_t opts[4] = {
        {.stack_size = STACK_TOO_BIG},
        {.pinned = a->foreign_worker_loop},
        {.pinned = a->standalone},
        {0},
    };
    weft_fn fns[4] = {noop_body, noop_body, noop_body, NULL};
    for (int i = 0; i < 4; i++) {
        weft_task_t *t = SENTINEL;
        a->rc[i] = weft_spawn(fns[i], NULL, &opts[i], &t);
        a->untouched[i] = t == SENTINEL;
    }
    /* Pinned to a loop of its own runtime is fine. */
    weft_spawn_opts_t ok = {.pinned = weft_runtime_loop(weft_get_running_runtime(), 0)};
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(return_arg_body, &tag_b, &ok, &t) == 0);
    void *v = NULL;
    CHECK(&g_rec, weft_await(weft_task_future(t), &v) == 0);
    CHECK(&g_rec, v == &tag_b);
    weft_task_release(t);
    return 0;
}

static void test_task_spawn_argument_errors_in_a_runtime_are_einval(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    weft_runtime_t *other = new_rt(1);
    weft_loop_t *standalone = new_loop();
    spawn_errors_arg_t a;
    memset(&a, 0, sizeof a);
    a.foreign_worker_loop = weft_runtime_loop(other, 0);
    a.standalone = standalone;
    assert_int_equal(run_in(rt, spawn_errors_driver, &a, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    for (int i = 0; i < 4; i++) {
        if (a.rc[i] != -EINVAL)
            fail_msg("case %d: weft_spawn returned %d, expected -EINVAL", i, a.rc[i]);
        assert_true(a.untouched[i]);
    }
    free_rt(other);
    free_rt(rt);
    close_clean(standalone);
}

/* During shutdown a task may still run, but it can spawn nothing. */
typedef struct closing_arg {
    atomic_int started;
    int sleep_rc, spawn_rc, create_rc;
    bool untouched;
} closing_arg_t;

static int spawn_while_closing_body(void *arg, void **result)
{
    (void)result;
    closing_arg_t *a = arg;
    atomic_store(&a->started, 1);
    a->sleep_rc = weft_sleep(100 * SEC);
    weft_task_t *t = SENTINEL;
    a->spawn_rc = weft_spawn(noop_body, NULL, NULL, &t);
    a->create_rc = weft_task_create(noop_body, NULL, NULL, &t);
    a->untouched = t == SENTINEL;
    return a->sleep_rc;
}

static void test_task_spawn_while_runtime_shuts_down_is_eclosed(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    closing_arg_t a;
    memset(&a, 0, sizeof a);
    atomic_init(&a.started, 0);
    weft_future_t *f = NULL;
    assert_int_equal(weft_runtime_submit(rt, spawn_while_closing_body, &a, &f), 0);
    for (int spins = 0; atomic_load(&a.started) == 0 && spins < 30000; spins++)
        sleep_ms(1);
    assert_int_equal(atomic_load(&a.started), 1);
    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    assert_true(weft_future_done(f));
    assert_true(weft_future_cancelled(f));
    assert_int_equal(a.sleep_rc, WEFT_ECANCELED);
    assert_int_equal(a.spawn_rc, WEFT_ECLOSED);
    assert_int_equal(a.create_rc, WEFT_ECLOSED);
    assert_true(a.untouched);
    weft_future_release(f);

    /* The worker loops are closed too. */
    weft_future_t *g = SENTINEL;
    assert_int_equal(weft_run_coroutine_threadsafe(weft_runtime_loop(rt, 0), noop_body, NULL, &g),
                     WEFT_ECLOSED);
    assert_ptr_equal(g, SENTINEL);
    free_rt(rt);
}

/* ---- run_coroutine_threadsafe onto worker loops ------------------------- */

static int first_loop_body(void *arg, void **result)
{
    (void)arg;
    *result = weft_get_running_loop(); /* where it first runs */
    return 0;
}

typedef struct rcts_worker_arg {
    weft_runtime_t *rt;
    int rc[8];
    void *loops[8];
} rcts_worker_arg_t;

static void *rcts_worker_thread(void *arg)
{
    rcts_worker_arg_t *a = arg;
    unsigned n = weft_runtime_workers(a->rt);
    for (unsigned i = 0; i < n && i < 8; i++) {
        weft_future_t *f = NULL;
        a->rc[i] =
            weft_run_coroutine_threadsafe(weft_runtime_loop(a->rt, i), first_loop_body, NULL, &f);
        if (a->rc[i] != 0)
            continue;
        CHECK(&g_rec, weft_future_wait(f, WAIT_LIMIT) == 0);
        CHECK(&g_rec, weft_future_result(f, &a->loops[i]) == 0);
        weft_future_release(f);
    }
    return NULL;
}

static void test_task_run_coroutine_threadsafe_starts_on_the_named_worker_loop(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(3);
    /* From the test thread. */
    for (unsigned i = 0; i < 3; i++) {
        weft_future_t *f = NULL;
        weft_loop_t *loop = weft_runtime_loop(rt, i);
        assert_int_equal(weft_run_coroutine_threadsafe(loop, first_loop_body, NULL, &f), 0);
        assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
        void *v = NULL;
        assert_int_equal(weft_future_result(f, &v), 0);
        assert_ptr_equal(v, loop);
        weft_future_release(f);
    }
    /* From a thread weft knows nothing about. */
    rcts_worker_arg_t a;
    memset(&a, 0, sizeof a);
    a.rt = rt;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, rcts_worker_thread, &a), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    for (unsigned i = 0; i < 3; i++) {
        assert_int_equal(a.rc[i], 0);
        assert_ptr_equal(a.loops[i], weft_runtime_loop(rt, i));
    }
    free_rt(rt);
}

/* ---- pinned tasks and stack sizes --------------------------------------- */

typedef struct pinned_arg {
    weft_loop_t *home;
    atomic_int steps;
    atomic_int off_home;
} pinned_arg_t;

static int pinned_body(void *arg, void **result)
{
    (void)result;
    pinned_arg_t *a = arg;
    for (int i = 0; i < 200; i++) {
        if (weft_get_running_loop() != a->home)
            atomic_fetch_add(&a->off_home, 1);
        int rc = (i % 20 == 19) ? weft_sleep(MS / 4) : weft_yield();
        CHECK(&g_rec, rc == 0);
        atomic_fetch_add(&a->steps, 1);
    }
    if (weft_get_running_loop() != a->home)
        atomic_fetch_add(&a->off_home, 1);
    return 0;
}

static int busy_yield_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    for (int i = 0; i < 300; i++)
        CHECK(&g_rec, weft_yield() == 0);
    return 0;
}

static int pinned_driver(void *arg, void **result)
{
    (void)result;
    pinned_arg_t *a = arg; /* two of them */
    weft_runtime_t *rt = weft_get_running_runtime();
    weft_task_t *t[2], *busy[6];
    for (int i = 0; i < 2; i++) {
        weft_spawn_opts_t opts = {.pinned = a[i].home};
        CHECK(&g_rec, weft_spawn(pinned_body, &a[i], &opts, &t[i]) == 0);
    }
    /* Unpinned work around them, so the workers steal and idle. */
    for (int i = 0; i < 6; i++)
        CHECK(&g_rec, weft_spawn(busy_yield_body, NULL, NULL, &busy[i]) == 0);
    for (int i = 0; i < 2; i++) {
        CHECK(&g_rec, weft_await(weft_task_future(t[i]), NULL) == 0);
        weft_task_release(t[i]);
    }
    for (int i = 0; i < 6; i++) {
        CHECK(&g_rec, weft_await(weft_task_future(busy[i]), NULL) == 0);
        weft_task_release(busy[i]);
    }
    (void)rt;
    return 0;
}

static void test_task_pinned_task_only_ever_runs_on_its_loop(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(3);
    pinned_arg_t a[2];
    for (int i = 0; i < 2; i++) {
        a[i].home = weft_runtime_loop(rt, (unsigned)(i + 1));
        atomic_init(&a[i].steps, 0);
        atomic_init(&a[i].off_home, 0);
    }
    assert_int_equal(run_in(rt, pinned_driver, a, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(atomic_load(&a[i].steps), 200);
        assert_int_equal(atomic_load(&a[i].off_home), 0);
    }
    free_rt(rt);
}

/* Uses most of a 1 MiB stack: fine with stack_size = 2 MiB, which the
 * default 256 KiB could not hold. */
__attribute__((noinline)) static int use_big_stack(void)
{
    volatile char buf[1024 * 1024];
    memset((char *)buf, 0x5a, sizeof buf);
    int sum = 0;
    for (size_t i = 0; i < sizeof buf; i += 4096)
        sum += buf[i];
    return sum;
}

static int big_stack_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    int sum = use_big_stack();
    CHECK(&g_rec, sum == 0x5a * 256);
    CHECK(&g_rec, weft_yield() == 0);
    sum = use_big_stack();
    CHECK(&g_rec, sum == 0x5a * 256);
    return 0;
}

static int big_stack_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_spawn_opts_t opts = {.stack_size = 2 * 1024 * 1024};
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(big_stack_body, NULL, &opts, &t) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    weft_task_release(t);
    return 0;
}

static void test_task_spawn_honours_stack_size(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    assert_int_equal(run_in(rt, big_stack_driver, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
}

/* ---- an abandoned task's awaited future stays usable -------------------- */

/* The future a task was awaiting when its loop closed outlives the task:
 * completing it later must not touch the abandoned task (whose stack is
 * gone). */
static void test_task_future_awaited_by_abandoned_task_can_still_be_completed(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_loop_t *other = new_loop();
    parked_probe_t p;
    memset(&p, 0, sizeof p);
    assert_int_equal(weft_future_new(other, &p.gate), 0);
    weft_task_t *t = spawn_on(loop, await_gate_body, &p, NULL);
    run_once(loop);
    assert_int_equal(atomic_load(&p.started), 1);
    exc_probe_t e;
    exc_probe_install(&e, loop);
    assert_int_equal(weft_loop_close(loop), 0);
    assert_int_equal(atomic_load(&e.calls), 1);
    assert_true(weft_future_cancelled(weft_task_future(t)));

    assert_int_equal(weft_future_set_result(p.gate, &tag_a), 0);
    run_once(other);
    assert_int_equal(atomic_load(&p.resumed), 0);
    ASSERT_NO_FAILURE(&g_rec);
    weft_task_release(t);
    weft_loop_free(loop);
    weft_future_release(p.gate);
    close_clean(other);
}

/* An optional argument selects tests by name pattern (cmocka's filter). */
int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        TEST(test_task_suspension_points_outside_a_task_are_eperm),
        TEST(test_task_suspension_points_in_a_loop_callback_are_eperm),
        TEST(test_task_spawn_outside_a_task_or_callback_is_eperm),
        TEST(test_task_spawn_with_null_fn_is_einval),
        TEST(test_task_null_handles),
        TEST(test_task_on_standalone_loop_runs_on_the_loop_thread),
        TEST(test_task_run_until_complete_returns_the_task_error),
        TEST(test_task_returning_ecanceled_ends_cancelled_with_the_message),
        TEST(test_task_yield_interleaves_tasks_in_fifo_order),
        TEST(test_task_await_returns_each_outcome_and_refuses_null_and_self),
        TEST(test_task_sleep_never_returns_early_and_nonpositive_yields),
        TEST(test_task_eager_spawn_on_standalone_loop_runs_to_first_suspension),
        TEST(test_task_spawn_pinned_to_another_standalone_loop_is_einval),
        TEST(test_task_spawn_with_stack_size_above_limit_is_einval),
        TEST(test_task_run_coroutine_threadsafe_from_foreign_thread_runs_on_the_loop),
        TEST(test_task_run_coroutine_threadsafe_errors),
        TEST(test_task_run_coroutine_threadsafe_before_the_loop_runs),
        TEST(test_task_closing_loop_with_sleeping_task_reports_and_cancels_it),
        TEST(test_task_closing_loop_with_awaiting_task_reports_it_once),
        TEST(test_task_names_on_a_standalone_loop),
        TEST(test_task_spawn_and_await_in_a_runtime),
        TEST(test_task_await_errors_in_a_runtime),
        TEST(test_task_returning_an_error_code_ends_with_it),
        TEST(test_task_cancel_cancelling_and_uncancel_counts),
        TEST(test_task_cancelled_sleeping_task_sleep_returns_ecanceled),
        TEST(test_task_cancelled_awaiting_task_await_returns_ecanceled),
        TEST(test_task_cancelled_before_first_run_ends_cancelled),
        TEST(test_task_names_default_copy_and_set),
        TEST(test_task_factory_is_called_for_every_spawn),
        TEST(test_task_eager_spawn_runs_until_first_suspension_before_returning),
        TEST(test_task_all_tasks_visits_exactly_the_live_tasks),
        TEST(test_task_all_tasks_inside_a_task_counts_itself_and_its_children),
        TEST(test_task_all_tasks_never_visits_a_task_seen_done),
        TEST(test_task_spawn_argument_errors_in_a_runtime_are_einval),
        TEST(test_task_spawn_while_runtime_shuts_down_is_eclosed),
        TEST(test_task_run_coroutine_threadsafe_starts_on_the_named_worker_loop),
        TEST(test_task_pinned_task_only_ever_runs_on_its_loop),
        TEST(test_task_spawn_honours_stack_size),
        /* Last: when it fails it may bring the process down (use after
         * free of an abandoned task's stack). */
        TEST(test_task_future_awaited_by_abandoned_task_can_still_be_completed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
