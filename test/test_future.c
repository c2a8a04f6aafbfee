/* Tests for weft futures (include/weft/future.h): every state transition
 * and documented return code, done-callback scheduling (never inline,
 * registration order, on the loop thread), reference counting,
 * weft_future_wait, debug-mode reports of unretrieved errors, and futures
 * whose loop was closed.
 *
 * Nothing here calls a cmocka assert inside a loop callback or a helper
 * thread: those record failures with CHECK() and the test asserts
 * ASSERT_NO_FAILURE() once the loop has returned and threads are joined.
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
#include <string.h>
#include <time.h>

#include "weft.h"

#include "sched/common.h" /* weft__alloc_fail_nth(): the allocation-failure seam */
#include "test/support/check.h"

#define MS INT64_C(1000000)

/* An address no weft function hands out: proves out-params stay untouched
 * on error (DESIGN.md, "Public API conventions"). */
static char sentinel_obj;
#define SENTINEL ((void *)&sentinel_obj)

/* ---- helpers ------------------------------------------------------------ */

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

static weft_loop_t *new_loop(void)
{
    weft_loop_t *loop = NULL;
    assert_int_equal(weft_loop_new(&loop), 0);
    assert_non_null(loop);
    return loop;
}

static weft_future_t *new_future(weft_loop_t *loop)
{
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_non_null(f);
    return f;
}

/* Exactly one loop iteration: a stop requested before run_forever makes
 * the loop run one iteration and return (asyncio's rule). */
static void run_once(weft_loop_t *loop)
{
    assert_int_equal(weft_loop_stop(loop), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
}

/* Numbered steps recorded in the order they happen (neco's order_add). */
#define ORDER_MAX 32
typedef struct order {
    atomic_int n;
    int steps[ORDER_MAX];
} order_t;

static void order_add(order_t *o, int step)
{
    int i = atomic_fetch_add(&o->n, 1);
    if (i < ORDER_MAX)
        o->steps[i] = step;
}

/* What a done callback checks and records. */
typedef struct probe {
    check_rec_t rec;
    weft_loop_t *loop;     /* the loop that must be running the callback */
    weft_future_t *future; /* the future the callback must receive */
    pthread_t loop_thread; /* the thread that must run it */
    void *expect_value;    /* expected result when expect_result is set */
    bool expect_result;
    atomic_int runs;
    order_t order;
} probe_t;

static void probe_init(probe_t *p, weft_loop_t *loop, weft_future_t *f)
{
    memset(p, 0, sizeof *p);
    check_rec_init(&p->rec);
    p->loop = loop;
    p->future = f;
    p->loop_thread = pthread_self();
    atomic_init(&p->runs, 0);
    atomic_init(&p->order.n, 0);
}

typedef struct probe_arg {
    probe_t *p;
    int step;
} probe_arg_t;

static void on_done_probe(weft_future_t *f, void *arg)
{
    probe_arg_t *a = arg;
    probe_t *p = a->p;
    CHECK(&p->rec, f == p->future);
    CHECK(&p->rec, weft_future_done(f));
    CHECK(&p->rec, weft_get_running_loop() == p->loop);
    CHECK(&p->rec, weft_loop_is_running(p->loop));
    CHECK(&p->rec, pthread_equal(pthread_self(), p->loop_thread));
    if (p->expect_result) {
        void *v = SENTINEL;
        CHECK(&p->rec, weft_future_result(f, &v) == 0);
        CHECK(&p->rec, v == p->expect_value);
    }
    atomic_fetch_add(&p->runs, 1);
    order_add(&p->order, a->step);
}

static void on_done_count(weft_future_t *f, void *arg)
{
    (void)f;
    atomic_fetch_add((atomic_int *)arg, 1);
}

/* Exception handler that counts calls and keeps the last code. */
typedef struct exc_probe {
    check_rec_t rec;
    weft_loop_t *loop;
    atomic_int calls;
    atomic_int last_code;
} exc_probe_t;

static void exc_probe_init(exc_probe_t *e, weft_loop_t *loop)
{
    check_rec_init(&e->rec);
    e->loop = loop;
    atomic_init(&e->calls, 0);
    atomic_init(&e->last_code, 0);
}

static void on_exception(weft_loop_t *loop, const weft_error_context_t *ctx, void *arg)
{
    exc_probe_t *e = arg;
    CHECK(&e->rec, loop == e->loop);
    CHECK(&e->rec, ctx != NULL);
    if (ctx == NULL)
        return;
    CHECK(&e->rec, ctx->message != NULL);
    atomic_store(&e->last_code, ctx->code);
    atomic_fetch_add(&e->calls, 1);
}

/* The three ways a future becomes done, with fixed outcomes to check. */
enum { K_RESULT, K_ERROR, K_CANCEL, K_COUNT };

static int result_tag;
#define ERROR_CODE (-EIO)
#define ERROR_MSG  "disk on fire"
#define CANCEL_MSG "no longer needed"

/* First completion of kind k; asserts it succeeded. */
static void complete_as(weft_future_t *f, int k)
{
    switch (k) {
    case K_RESULT:
        assert_int_equal(weft_future_set_result(f, &result_tag), 0);
        break;
    case K_ERROR:
        assert_int_equal(weft_future_set_error(f, ERROR_CODE, ERROR_MSG), 0);
        break;
    default:
        assert_true(weft_future_cancel(f, CANCEL_MSG));
        break;
    }
}

/* The future holds exactly the outcome complete_as(f, k) gave it. */
static void assert_outcome(weft_future_t *f, int k)
{
    void *v = SENTINEL;
    assert_true(weft_future_done(f));
    switch (k) {
    case K_RESULT:
        assert_false(weft_future_cancelled(f));
        assert_int_equal(weft_future_result(f, &v), 0);
        assert_ptr_equal(v, &result_tag);
        assert_int_equal(weft_future_error(f), 0);
        assert_null(weft_future_message(f));
        break;
    case K_ERROR:
        assert_false(weft_future_cancelled(f));
        assert_int_equal(weft_future_result(f, &v), ERROR_CODE);
        assert_ptr_equal(v, SENTINEL);
        assert_int_equal(weft_future_error(f), ERROR_CODE);
        assert_string_equal(weft_future_message(f), ERROR_MSG);
        break;
    default:
        assert_true(weft_future_cancelled(f));
        assert_int_equal(weft_future_result(f, &v), WEFT_ECANCELED);
        assert_ptr_equal(v, SENTINEL);
        assert_int_equal(weft_future_error(f), WEFT_ECANCELED);
        assert_string_equal(weft_future_message(f), CANCEL_MSG);
        break;
    }
}

/* ---- creation ----------------------------------------------------------- */

static void test_future_new_without_loop_outside_a_loop_is_eperm(void **state)
{
    (void)state;
    weft_future_t *f = SENTINEL;
    assert_null(weft_get_running_loop());
    assert_int_equal(weft_future_new(NULL, &f), -EPERM);
    assert_ptr_equal(f, SENTINEL);
}

static void test_future_new_with_null_out_is_einval(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_future_new(loop, NULL), -EINVAL);
    weft_loop_free(loop);
}

typedef struct new_in_loop {
    check_rec_t rec;
    weft_loop_t *loop;
    atomic_int runs;
} new_in_loop_t;

static void cb_new_future_on_running_loop(void *arg)
{
    new_in_loop_t *c = arg;
    weft_future_t *f = NULL;
    CHECK(&c->rec, weft_future_new(NULL, &f) == 0);
    CHECK(&c->rec, f != NULL);
    if (f != NULL) {
        CHECK(&c->rec, weft_future_get_loop(f) == c->loop);
        CHECK(&c->rec, !weft_future_done(f));
        weft_future_release(f);
    }
    atomic_fetch_add(&c->runs, 1);
}

static void test_future_new_without_loop_uses_the_running_loop(void **state)
{
    (void)state;
    new_in_loop_t c;
    check_rec_init(&c.rec);
    c.loop = new_loop();
    atomic_init(&c.runs, 0);

    assert_int_equal(weft_loop_call_soon(c.loop, cb_new_future_on_running_loop, &c, NULL), 0);
    run_once(c.loop);

    assert_int_equal(atomic_load(&c.runs), 1);
    ASSERT_NO_FAILURE(&c.rec);
    weft_loop_free(c.loop);
}

static void test_future_new_on_closed_loop_is_eclosed(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_loop_close(loop), 0);
    weft_future_t *f = SENTINEL;
    assert_int_equal(weft_future_new(loop, &f), WEFT_ECLOSED);
    assert_ptr_equal(f, SENTINEL);
    weft_loop_free(loop);
}

static void test_future_new_is_pending_and_bound_to_its_loop(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    assert_false(weft_future_done(f));
    assert_false(weft_future_cancelled(f));
    assert_ptr_equal(weft_future_get_loop(f), loop);
    assert_int_equal(weft_future_error(f), WEFT_EINVALSTATE); /* asyncio: InvalidStateError */
    assert_null(weft_future_message(f));

    weft_future_release(f);
    weft_loop_free(loop);
}

/* ---- completion ---------------------------------------------------------- */

static void test_future_set_result_completes_with_the_value(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    assert_int_equal(weft_future_set_result(f, &result_tag), 0);
    assert_outcome(f, K_RESULT);
    /* Reading twice gives the same answer. */
    void *v = NULL;
    assert_int_equal(weft_future_result(f, &v), 0);
    assert_ptr_equal(v, &result_tag);

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_set_result_null_value_is_a_result(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    assert_int_equal(weft_future_set_result(f, NULL), 0);
    void *v = SENTINEL;
    assert_int_equal(weft_future_result(f, &v), 0);
    assert_null(v);
    assert_true(weft_future_done(f));
    assert_false(weft_future_cancelled(f));

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_set_error_copies_code_and_message(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    char msg[] = "disk on fire";
    assert_int_equal(weft_future_set_error(f, ERROR_CODE, msg), 0);
    /* The future keeps its own copy: scribbling over ours changes nothing. */
    memset(msg, 'X', sizeof msg - 1);
    assert_outcome(f, K_ERROR);

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_set_error_without_message_has_null_message(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    /* weft's own codes are errors like any other. */
    assert_int_equal(weft_future_set_error(f, WEFT_ECLOSED, NULL), 0);
    void *v = SENTINEL;
    assert_int_equal(weft_future_result(f, &v), WEFT_ECLOSED);
    assert_ptr_equal(v, SENTINEL);
    assert_int_equal(weft_future_error(f), WEFT_ECLOSED);
    assert_null(weft_future_message(f));
    assert_true(weft_future_done(f));
    assert_false(weft_future_cancelled(f));

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_set_error_rejects_zero_positive_and_ecanceled(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    const int bad[] = {0, 1, EIO, WEFT_ECANCELED};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(weft_future_set_error(f, bad[i], "nope"), -EINVAL);
        assert_int_equal(weft_future_set_error(f, bad[i], NULL), -EINVAL);
        /* A rejected call leaves the future pending. */
        assert_false(weft_future_done(f));
        assert_null(weft_future_message(f));
    }
    /* ...and it can still complete normally. */
    assert_int_equal(weft_future_set_error(f, ERROR_CODE, ERROR_MSG), 0);
    assert_outcome(f, K_ERROR);

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_cancel_without_message(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    assert_true(weft_future_cancel(f, NULL));
    assert_true(weft_future_done(f));
    assert_true(weft_future_cancelled(f));
    void *v = SENTINEL;
    assert_int_equal(weft_future_result(f, &v), WEFT_ECANCELED);
    assert_ptr_equal(v, SENTINEL);
    assert_int_equal(weft_future_error(f), WEFT_ECANCELED);
    assert_null(weft_future_message(f));

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_cancel_copies_message(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    char msg[] = "no longer needed";
    assert_true(weft_future_cancel(f, msg));
    memset(msg, 'X', sizeof msg - 1);
    assert_outcome(f, K_CANCEL);

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_second_completion_is_einvalstate(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();

    for (int first = 0; first < K_COUNT; first++) {
        for (int second = 0; second < K_COUNT; second++) {
            weft_future_t *f = new_future(loop);
            atomic_int runs;
            atomic_init(&runs, 0);
            assert_int_equal(weft_future_add_done_callback(f, on_done_count, &runs), 0);

            complete_as(f, first);
            int other = 7;
            switch (second) {
            case K_RESULT:
                assert_int_equal(weft_future_set_result(f, &other), WEFT_EINVALSTATE);
                break;
            case K_ERROR:
                assert_int_equal(weft_future_set_error(f, -ENOSPC, "late"), WEFT_EINVALSTATE);
                break;
            default:
                assert_false(weft_future_cancel(f, "late"));
                assert_false(weft_future_cancel(f, NULL));
                break;
            }
            /* The first outcome stands, and callbacks were scheduled once. */
            assert_outcome(f, first);
            run_once(loop);
            assert_int_equal(atomic_load(&runs), 1);
            run_once(loop);
            assert_int_equal(atomic_load(&runs), 1);
            weft_future_release(f);
        }
    }
    weft_loop_free(loop);
}

static void test_future_result_while_pending_is_einvalstate(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    void *v = SENTINEL;
    assert_int_equal(weft_future_result(f, &v), WEFT_EINVALSTATE);
    assert_ptr_equal(v, SENTINEL);
    assert_false(weft_future_done(f));

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_null_arguments(void **state)
{
    (void)state;
    void *v = SENTINEL;
    atomic_int runs;
    atomic_init(&runs, 0);

    assert_int_equal(weft_future_set_result(NULL, &v), -EINVAL);
    assert_int_equal(weft_future_set_error(NULL, ERROR_CODE, "x"), -EINVAL);
    assert_false(weft_future_cancel(NULL, NULL));
    assert_false(weft_future_cancel(NULL, "x"));
    assert_false(weft_future_done(NULL));
    assert_false(weft_future_cancelled(NULL));
    assert_int_equal(weft_future_result(NULL, &v), -EINVAL);
    assert_ptr_equal(v, SENTINEL);
    assert_int_equal(weft_future_add_done_callback(NULL, on_done_count, &runs), -EINVAL);
    assert_int_equal(weft_future_remove_done_callback(NULL, on_done_count, &runs), -EINVAL);
    assert_int_equal(weft_future_wait(NULL, 0), -EINVAL);
    assert_int_equal(weft_future_wait(NULL, -1), -EINVAL);
    /* Reference counting ignores NULL. */
    weft_future_retain(NULL);
    weft_future_release(NULL);

    /* A callback function is required. */
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);
    assert_int_equal(weft_future_add_done_callback(f, NULL, &runs), -EINVAL);
    assert_int_equal(weft_future_set_result(f, NULL), 0);
    run_once(loop);
    assert_int_equal(atomic_load(&runs), 0);
    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_retain_keeps_it_alive_until_last_release(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    weft_future_retain(f);
    weft_future_retain(f);
    weft_future_release(f);
    weft_future_release(f);
    /* One reference left: still usable (ASan would flag a premature free). */
    assert_int_equal(weft_future_set_result(f, &result_tag), 0);
    assert_outcome(f, K_RESULT);
    weft_future_release(f);
    weft_loop_free(loop);
}

/* ---- done callbacks ------------------------------------------------------ */

static void test_future_done_callback_is_not_run_inline_by_completion(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();

    for (int k = 0; k < K_COUNT; k++) {
        weft_future_t *f = new_future(loop);
        probe_t p;
        probe_init(&p, loop, f);
        probe_arg_t a = {&p, 1};

        assert_int_equal(weft_future_add_done_callback(f, on_done_probe, &a), 0);
        complete_as(f, k);
        /* set_result/set_error/cancel only schedule the callback. */
        assert_int_equal(atomic_load(&p.runs), 0);

        run_once(loop);
        assert_int_equal(atomic_load(&p.runs), 1);
        ASSERT_NO_FAILURE(&p.rec);
        assert_outcome(f, k);
        weft_future_release(f);
    }
    weft_loop_free(loop);
}

static void test_future_done_callbacks_run_in_registration_order(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);
    probe_t p;
    probe_init(&p, loop, f);
    p.expect_result = true;
    p.expect_value = &result_tag;

    enum { N = 6 };
    probe_arg_t args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (probe_arg_t){&p, i + 1};
        assert_int_equal(weft_future_add_done_callback(f, on_done_probe, &args[i]), 0);
    }
    assert_int_equal(weft_future_set_result(f, &result_tag), 0);
    assert_int_equal(atomic_load(&p.runs), 0);

    /* All were scheduled at completion, so one iteration runs them all. */
    run_once(loop);
    assert_int_equal(atomic_load(&p.runs), N);
    assert_int_equal(atomic_load(&p.order.n), N);
    for (int i = 0; i < N; i++)
        assert_int_equal(p.order.steps[i], i + 1);
    ASSERT_NO_FAILURE(&p.rec);

    run_once(loop);
    assert_int_equal(atomic_load(&p.runs), N);

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_done_callback_added_after_done_is_scheduled_not_inline(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();

    for (int k = 0; k < K_COUNT; k++) {
        weft_future_t *f = new_future(loop);
        probe_t p;
        probe_init(&p, loop, f);
        probe_arg_t a1 = {&p, 1}, a2 = {&p, 2};

        complete_as(f, k);
        assert_int_equal(weft_future_add_done_callback(f, on_done_probe, &a1), 0);
        assert_int_equal(weft_future_add_done_callback(f, on_done_probe, &a2), 0);
        assert_int_equal(atomic_load(&p.runs), 0);

        run_once(loop);
        assert_int_equal(atomic_load(&p.runs), 2);
        assert_int_equal(p.order.steps[0], 1);
        assert_int_equal(p.order.steps[1], 2);
        ASSERT_NO_FAILURE(&p.rec);
        weft_future_release(f);
    }
    weft_loop_free(loop);
}

typedef struct chain {
    check_rec_t rec;
    atomic_int first_runs;
    atomic_int second_runs;
} chain_t;

static void on_done_second(weft_future_t *f, void *arg)
{
    (void)f;
    chain_t *c = arg;
    atomic_fetch_add(&c->second_runs, 1);
}

static void on_done_first_adds_second(weft_future_t *f, void *arg)
{
    chain_t *c = arg;
    CHECK(&c->rec, weft_future_add_done_callback(f, on_done_second, c) == 0);
    /* Not inline, even from inside the loop. */
    CHECK(&c->rec, atomic_load(&c->second_runs) == 0);
    atomic_fetch_add(&c->first_runs, 1);
}

static void test_future_done_callback_added_by_a_done_callback_runs_next_iteration(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);
    chain_t c;
    check_rec_init(&c.rec);
    atomic_init(&c.first_runs, 0);
    atomic_init(&c.second_runs, 0);

    assert_int_equal(weft_future_add_done_callback(f, on_done_first_adds_second, &c), 0);
    assert_int_equal(weft_future_set_result(f, NULL), 0);

    run_once(loop);
    assert_int_equal(atomic_load(&c.first_runs), 1);
    assert_int_equal(atomic_load(&c.second_runs), 0);
    run_once(loop);
    assert_int_equal(atomic_load(&c.first_runs), 1);
    assert_int_equal(atomic_load(&c.second_runs), 1);
    ASSERT_NO_FAILURE(&c.rec);

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_remove_done_callback_returns_count_removed(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);
    atomic_int a_runs, b_runs;
    atomic_init(&a_runs, 0);
    atomic_init(&b_runs, 0);

    for (int i = 0; i < 3; i++)
        assert_int_equal(weft_future_add_done_callback(f, on_done_count, &a_runs), 0);
    assert_int_equal(weft_future_add_done_callback(f, on_done_count, &b_runs), 0);

    /* Every registration of (fn, arg) goes, and only those. */
    assert_int_equal(weft_future_remove_done_callback(f, on_done_count, &a_runs), 3);
    assert_int_equal(weft_future_remove_done_callback(f, on_done_count, &a_runs), 0);
    assert_int_equal(weft_future_remove_done_callback(f, on_done_probe, &b_runs), 0);

    assert_int_equal(weft_future_set_result(f, NULL), 0);
    run_once(loop);
    assert_int_equal(atomic_load(&a_runs), 0);
    assert_int_equal(atomic_load(&b_runs), 1);

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_remove_done_callback_after_scheduling_removes_nothing(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);
    atomic_int runs;
    atomic_init(&runs, 0);

    assert_int_equal(weft_future_add_done_callback(f, on_done_count, &runs), 0);
    assert_int_equal(weft_future_set_result(f, NULL), 0);
    /* Completion scheduled it: it is no longer registered, and it runs. */
    assert_int_equal(weft_future_remove_done_callback(f, on_done_count, &runs), 0);
    run_once(loop);
    assert_int_equal(atomic_load(&runs), 1);

    weft_future_release(f);
    weft_loop_free(loop);
}

typedef struct loop_runner {
    check_rec_t rec;
    weft_loop_t *loop;
    weft_future_t *f;
    int stop_rc;
    int run_rc;
    atomic_int runs;
    pthread_t ran_on; /* written by the callback, read after join */
} loop_runner_t;

static void on_done_record_thread(weft_future_t *f, void *arg)
{
    loop_runner_t *r = arg;
    CHECK(&r->rec, f == r->f);
    CHECK(&r->rec, weft_get_running_loop() == r->loop);
    r->ran_on = pthread_self();
    atomic_fetch_add(&r->runs, 1);
}

static void *run_once_on_thread(void *arg)
{
    loop_runner_t *r = arg;
    r->stop_rc = weft_loop_stop(r->loop);
    r->run_rc = weft_loop_run_forever(r->loop);
    return NULL;
}

static void test_future_done_callback_runs_on_the_thread_running_the_loop(void **state)
{
    (void)state;
    loop_runner_t r;
    memset(&r, 0, sizeof r);
    check_rec_init(&r.rec);
    r.loop = new_loop();
    r.f = new_future(r.loop);
    r.stop_rc = r.run_rc = 1;
    atomic_init(&r.runs, 0);

    /* Completed here, on the test thread, while no loop runs... */
    assert_int_equal(weft_future_add_done_callback(r.f, on_done_record_thread, &r), 0);
    assert_int_equal(weft_future_set_result(r.f, &result_tag), 0);
    assert_int_equal(atomic_load(&r.runs), 0);

    /* ...but another thread runs the loop: the callback must follow it. */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, run_once_on_thread, &r), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(r.stop_rc, 0);
    assert_int_equal(r.run_rc, 0);
    assert_int_equal(atomic_load(&r.runs), 1);
    assert_true(pthread_equal(r.ran_on, t));
    assert_false(pthread_equal(r.ran_on, pthread_self()));
    ASSERT_NO_FAILURE(&r.rec);

    weft_future_release(r.f);
    weft_loop_free(r.loop);
}

/* ---- completion from a foreign thread while the loop runs ---------------- */

typedef struct wake_ctx {
    check_rec_t rec;
    weft_loop_t *loop;
    weft_future_t *f;
    pthread_t loop_thread;
    atomic_int loop_started;
    atomic_int done_runs;
    atomic_int watchdog_fired;
    int set_rc; /* written by the completer, read after join */
} wake_ctx_t;

static void cb_mark_started(void *arg)
{
    wake_ctx_t *c = arg;
    atomic_store(&c->loop_started, 1);
}

static void cb_watchdog(void *arg)
{
    wake_ctx_t *c = arg;
    atomic_store(&c->watchdog_fired, 1);
    weft_loop_stop(c->loop);
}

static void on_done_stop_loop(weft_future_t *f, void *arg)
{
    wake_ctx_t *c = arg;
    CHECK(&c->rec, f == c->f);
    CHECK(&c->rec, pthread_equal(pthread_self(), c->loop_thread));
    CHECK(&c->rec, weft_get_running_loop() == c->loop);
    atomic_fetch_add(&c->done_runs, 1);
    CHECK(&c->rec, weft_loop_stop(c->loop) == 0);
}

static void *complete_while_loop_sleeps(void *arg)
{
    wake_ctx_t *c = arg;
    int64_t deadline = now_ns() + 5000 * MS;
    while (!atomic_load(&c->loop_started) && now_ns() < deadline)
        sleep_ms(1);
    CHECK(&c->rec, atomic_load(&c->loop_started));
    /* Give the loop time to go to sleep in epoll (it has nothing to do
     * but the 10 s watchdog timer), so only the eventfd can wake it. */
    int64_t asleep_by = now_ns() + 200 * MS;
    weft_loop_stats_t st;
    do {
        sleep_ms(5);
        CHECK(&c->rec, weft_loop_get_stats(c->loop, &st) == 0);
    } while (st.sleeps == 0 && now_ns() < asleep_by);
    sleep_ms(20);
    c->set_rc = weft_future_set_result(c->f, &result_tag);
    return NULL;
}

static void test_future_set_result_from_foreign_thread_wakes_the_loop(void **state)
{
    (void)state;
    wake_ctx_t c;
    memset(&c, 0, sizeof c);
    check_rec_init(&c.rec);
    c.loop = new_loop();
    c.f = new_future(c.loop);
    c.loop_thread = pthread_self();
    atomic_init(&c.loop_started, 0);
    atomic_init(&c.done_runs, 0);
    atomic_init(&c.watchdog_fired, 0);
    c.set_rc = 1;

    assert_int_equal(weft_future_add_done_callback(c.f, on_done_stop_loop, &c), 0);
    weft_handle_t *watchdog = NULL;
    assert_int_equal(weft_loop_call_later(c.loop, 10000 * MS, cb_watchdog, &c, &watchdog), 0);
    assert_int_equal(weft_loop_call_soon(c.loop, cb_mark_started, &c, NULL), 0);

    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, complete_while_loop_sleeps, &c), 0);
    assert_int_equal(weft_loop_run_forever(c.loop), 0);
    assert_int_equal(pthread_join(t, NULL), 0);

    assert_int_equal(atomic_load(&c.watchdog_fired), 0);
    assert_int_equal(c.set_rc, 0);
    assert_int_equal(atomic_load(&c.done_runs), 1);
    ASSERT_NO_FAILURE(&c.rec);
    assert_outcome(c.f, K_RESULT);

    /* The completion reached a sleeping loop through its eventfd. */
    weft_loop_stats_t st;
    assert_int_equal(weft_loop_get_stats(c.loop, &st), 0);
    assert_true(st.sleeps >= 1);
    assert_true(st.eventfd_writes >= 1);
    assert_true(st.wakeups >= 1);

    assert_int_equal(weft_handle_cancel(watchdog), 0);
    weft_handle_release(watchdog);
    weft_future_release(c.f);
    weft_loop_free(c.loop);
}

/* ---- reference counting ---------------------------------------------------- */

static void test_future_released_with_pending_done_callback_stays_alive(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();

    /* Registered before completion. */
    weft_future_t *f = new_future(loop);
    probe_t p;
    probe_init(&p, loop, f);
    p.expect_result = true;
    p.expect_value = &result_tag;
    probe_arg_t a = {&p, 1};
    assert_int_equal(weft_future_add_done_callback(f, on_done_probe, &a), 0);
    assert_int_equal(weft_future_set_result(f, &result_tag), 0);
    weft_future_release(f); /* our only reference */
    run_once(loop);         /* the callback reads f: ASan flags a freed f */
    assert_int_equal(atomic_load(&p.runs), 1);
    ASSERT_NO_FAILURE(&p.rec);

    /* Registered after completion. */
    weft_future_t *g = new_future(loop);
    probe_t q;
    probe_init(&q, loop, g);
    q.expect_result = true;
    q.expect_value = NULL;
    probe_arg_t b = {&q, 1};
    assert_int_equal(weft_future_set_result(g, NULL), 0);
    assert_int_equal(weft_future_add_done_callback(g, on_done_probe, &b), 0);
    weft_future_release(g);
    run_once(loop);
    assert_int_equal(atomic_load(&q.runs), 1);
    ASSERT_NO_FAILURE(&q.rec);

    weft_loop_free(loop);
}

/* ---- concurrent completion --------------------------------------------- */

enum { RACE_FUTURES = 200, RACE_THREADS = 4 };

typedef struct race {
    check_rec_t rec;
    pthread_barrier_t start;
    weft_future_t *fs[RACE_FUTURES];
    atomic_int winner[RACE_FUTURES]; /* 0 = none, else thread index + 1 */
    int tags[RACE_THREADS];
} race_t;

typedef struct racer {
    race_t *race;
    int index;
} racer_t;

/* Thread 0 and 3 set results, 1 sets an error, 2 cancels. */
static void *race_to_complete(void *arg)
{
    racer_t *r = arg;
    race_t *R = r->race;
    pthread_barrier_wait(&R->start);
    for (int i = 0; i < RACE_FUTURES; i++) {
        bool won;
        switch (r->index) {
        case 1:
            won = weft_future_set_error(R->fs[i], -(1000 + i), NULL) == 0;
            break;
        case 2:
            won = weft_future_cancel(R->fs[i], NULL);
            break;
        default: {
            int rc = weft_future_set_result(R->fs[i], &R->tags[r->index]);
            CHECK(&R->rec, rc == 0 || rc == WEFT_EINVALSTATE);
            won = rc == 0;
            break;
        }
        }
        if (won)
            CHECK(&R->rec, atomic_exchange(&R->winner[i], r->index + 1) == 0);
    }
    return NULL;
}

static void test_future_concurrent_completions_have_exactly_one_winner(void **state)
{
    (void)state;
    static race_t R; /* too big for a comfortable stack frame */
    memset(&R, 0, sizeof R);
    check_rec_init(&R.rec);
    weft_loop_t *loop = new_loop();
    atomic_int runs;
    atomic_init(&runs, 0);

    for (int i = 0; i < RACE_FUTURES; i++) {
        R.fs[i] = new_future(loop);
        atomic_init(&R.winner[i], 0);
        assert_int_equal(weft_future_add_done_callback(R.fs[i], on_done_count, &runs), 0);
    }
    assert_int_equal(pthread_barrier_init(&R.start, NULL, RACE_THREADS), 0);
    pthread_t t[RACE_THREADS];
    racer_t rs[RACE_THREADS];
    for (int i = 0; i < RACE_THREADS; i++) {
        rs[i] = (racer_t){&R, i};
        assert_int_equal(pthread_create(&t[i], NULL, race_to_complete, &rs[i]), 0);
    }
    for (int i = 0; i < RACE_THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&R.start);
    ASSERT_NO_FAILURE(&R.rec);

    for (int i = 0; i < RACE_FUTURES; i++) {
        int w = atomic_load(&R.winner[i]);
        assert_true(w >= 1 && w <= RACE_THREADS);
        void *v = SENTINEL;
        int rc = weft_future_result(R.fs[i], &v);
        switch (w - 1) {
        case 1:
            assert_int_equal(rc, -(1000 + i));
            assert_false(weft_future_cancelled(R.fs[i]));
            break;
        case 2:
            assert_int_equal(rc, WEFT_ECANCELED);
            assert_true(weft_future_cancelled(R.fs[i]));
            break;
        default:
            assert_int_equal(rc, 0);
            assert_ptr_equal(v, &R.tags[w - 1]);
            break;
        }
    }

    /* Each future's one callback was scheduled exactly once, from whichever
     * thread won; the inbox may need more than one iteration to drain. */
    for (int i = 0; i < 100 && atomic_load(&runs) < RACE_FUTURES; i++)
        run_once(loop);
    assert_int_equal(atomic_load(&runs), RACE_FUTURES);
    run_once(loop);
    assert_int_equal(atomic_load(&runs), RACE_FUTURES);

    for (int i = 0; i < RACE_FUTURES; i++)
        weft_future_release(R.fs[i]);
    weft_loop_free(loop);
}

/* ---- weft_future_wait -------------------------------------------------- */

typedef struct waiter {
    weft_future_t *f;
    int64_t timeout;
    int rc;
    int64_t elapsed;
} waiter_t;

static void *wait_on_thread(void *arg)
{
    waiter_t *w = arg;
    int64_t t0 = now_ns();
    w->rc = weft_future_wait(w->f, w->timeout);
    w->elapsed = now_ns() - t0;
    return NULL;
}

static void test_future_wait_times_out_on_a_plain_thread(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    waiter_t w = {f, 30 * MS, 1, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, wait_on_thread, &w), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(w.rc, WEFT_ETIMEDOUT);
    /* It blocked for the whole timeout, and not wildly longer. */
    assert_true(w.elapsed >= 30 * MS);
    assert_true(w.elapsed < 5000 * MS);
    assert_false(weft_future_done(f));

    weft_future_release(f);
    weft_loop_free(loop);
}

typedef struct completer {
    weft_future_t *f1, *f2;
    int rc1, rc2;
} completer_t;

static void *complete_two_later(void *arg)
{
    completer_t *c = arg;
    sleep_ms(20);
    c->rc1 = weft_future_set_result(c->f1, &result_tag);
    sleep_ms(20);
    c->rc2 = weft_future_set_error(c->f2, ERROR_CODE, ERROR_MSG);
    return NULL;
}

static void test_future_wait_returns_when_completed_by_another_thread(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    completer_t c = {new_future(loop), new_future(loop), 1, 1};

    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, complete_two_later, &c), 0);
    /* A bounded wait, then an unbounded one. */
    assert_int_equal(weft_future_wait(c.f1, 10000 * MS), 0);
    assert_true(weft_future_done(c.f1));
    assert_int_equal(weft_future_wait(c.f2, -1), 0);
    assert_true(weft_future_done(c.f2));
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(c.rc1, 0);
    assert_int_equal(c.rc2, 0);

    assert_outcome(c.f1, K_RESULT);
    assert_outcome(c.f2, K_ERROR);
    /* Waiting on a done future returns at once, whatever the timeout. */
    assert_int_equal(weft_future_wait(c.f1, 0), 0);
    assert_int_equal(weft_future_wait(c.f2, -1), 0);

    weft_future_release(c.f1);
    weft_future_release(c.f2);
    weft_loop_free(loop);
}

static void test_future_wait_zero_timeout_polls(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);

    int64_t t0 = now_ns();
    assert_int_equal(weft_future_wait(f, 0), WEFT_ETIMEDOUT);
    assert_true(now_ns() - t0 < 1000 * MS);
    assert_true(weft_future_cancel(f, NULL));
    assert_int_equal(weft_future_wait(f, 0), 0);

    weft_future_release(f);
    weft_loop_free(loop);
}

typedef struct wait_in_cb {
    check_rec_t rec;
    weft_future_t *f;
    atomic_int runs;
} wait_in_cb_t;

static void cb_wait_inside_loop(void *arg)
{
    wait_in_cb_t *c = arg;
    /* Blocking the loop thread would deadlock: refused, not attempted. */
    CHECK(&c->rec, weft_future_wait(c->f, 0) == -EPERM);
    CHECK(&c->rec, weft_future_wait(c->f, 1 * MS) == -EPERM);
    CHECK(&c->rec, !weft_future_done(c->f));
    atomic_fetch_add(&c->runs, 1);
}

static void test_future_wait_inside_a_loop_callback_is_eperm(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    wait_in_cb_t c;
    check_rec_init(&c.rec);
    c.f = new_future(loop);
    atomic_init(&c.runs, 0);

    assert_int_equal(weft_loop_call_soon(loop, cb_wait_inside_loop, &c, NULL), 0);
    run_once(loop);
    assert_int_equal(atomic_load(&c.runs), 1);
    ASSERT_NO_FAILURE(&c.rec);

    weft_future_release(c.f);
    weft_loop_free(loop);
}

/* ---- debug mode: unretrieved errors ------------------------------------ */

/* A report may happen at release time or be scheduled on the loop; two
 * iterations leave room for either. */
static void run_two_iterations(weft_loop_t *loop)
{
    run_once(loop);
    run_once(loop);
}

static void test_future_unretrieved_error_is_reported_in_debug_mode(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    exc_probe_t e;
    exc_probe_init(&e, loop);
    assert_int_equal(weft_loop_set_debug(loop, true), 0);
    assert_true(weft_loop_get_debug(loop));
    assert_int_equal(weft_loop_set_exception_handler(loop, on_exception, &e), 0);

    weft_future_t *f = new_future(loop);
    assert_int_equal(weft_future_set_error(f, -EPIPE, "nobody looked"), 0);
    weft_future_release(f);
    run_two_iterations(loop);

    assert_int_equal(atomic_load(&e.calls), 1);
    assert_int_equal(atomic_load(&e.last_code), -EPIPE);
    ASSERT_NO_FAILURE(&e.rec);
    weft_loop_free(loop);
    assert_int_equal(atomic_load(&e.calls), 1);
}

static void test_future_retrieved_error_is_not_reported_in_debug_mode(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    exc_probe_t e;
    exc_probe_init(&e, loop);
    assert_int_equal(weft_loop_set_debug(loop, true), 0);
    assert_int_equal(weft_loop_set_exception_handler(loop, on_exception, &e), 0);

    /* Retrieved through weft_future_result. */
    weft_future_t *f = new_future(loop);
    assert_int_equal(weft_future_set_error(f, -EPIPE, "seen"), 0);
    void *v = SENTINEL;
    assert_int_equal(weft_future_result(f, &v), -EPIPE);
    weft_future_release(f);

    /* Retrieved through weft_future_error. */
    weft_future_t *g = new_future(loop);
    assert_int_equal(weft_future_set_error(g, -ENOENT, NULL), 0);
    assert_int_equal(weft_future_error(g), -ENOENT);
    weft_future_release(g);

    /* A cancelled future carries no error to lose (asyncio's rule). */
    weft_future_t *h = new_future(loop);
    assert_true(weft_future_cancel(h, "bye"));
    weft_future_release(h);

    run_two_iterations(loop);
    assert_int_equal(atomic_load(&e.calls), 0);
    ASSERT_NO_FAILURE(&e.rec);
    weft_loop_free(loop);
    assert_int_equal(atomic_load(&e.calls), 0);
}

/* ---- closed loops ---------------------------------------------------------- */

static void test_future_add_done_callback_on_done_future_of_closed_loop_is_eclosed(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);
    atomic_int runs;
    atomic_init(&runs, 0);

    assert_int_equal(weft_future_set_result(f, &result_tag), 0);
    assert_int_equal(weft_loop_close(loop), 0);
    assert_true(weft_loop_is_closed(loop));

    assert_int_equal(weft_future_add_done_callback(f, on_done_count, &runs), WEFT_ECLOSED);
    /* The outcome is still readable; the callback never runs. */
    assert_outcome(f, K_RESULT);
    assert_int_equal(atomic_load(&runs), 0);

    weft_future_release(f);
    weft_loop_free(loop);
    assert_int_equal(atomic_load(&runs), 0);
}

static void test_future_done_callback_dropped_at_close_is_reported(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    exc_probe_t e;
    exc_probe_init(&e, loop);
    assert_int_equal(weft_loop_set_exception_handler(loop, on_exception, &e), 0);

    weft_future_t *f = new_future(loop);
    atomic_int runs;
    atomic_init(&runs, 0);
    assert_int_equal(weft_future_add_done_callback(f, on_done_count, &runs), 0);
    assert_int_equal(weft_future_set_result(f, NULL), 0);
    /* The scheduled callback holds the future (LeakSanitizer checks it is
     * dropped at close). */
    weft_future_release(f);

    assert_int_equal(weft_loop_close(loop), 0);
    assert_int_equal(atomic_load(&runs), 0);
    assert_int_equal(atomic_load(&e.calls), 1);
    assert_int_equal(atomic_load(&e.last_code), WEFT_ECLOSED);
    ASSERT_NO_FAILURE(&e.rec);

    weft_loop_free(loop);
    assert_int_equal(atomic_load(&runs), 0);
    assert_int_equal(atomic_load(&e.calls), 1);
}

/* ---- allocation failure (the weft__alloc_fail_nth seam) --------------------- */

static void test_future_new_out_of_memory_is_enomem(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    int failures = 0, rc = -1;
    weft_future_t *f = SENTINEL;

    for (long n = 1; n <= 16; n++) {
        f = SENTINEL;
        weft__alloc_fail_nth(n);
        rc = weft_future_new(loop, &f);
        weft__alloc_fail_nth(0);
        if (rc == 0)
            break;
        assert_int_equal(rc, -ENOMEM);
        assert_ptr_equal(f, SENTINEL);
        failures++;
    }
    assert_int_equal(rc, 0);
    assert_true(failures >= 1); /* a future cannot be made without memory */
    assert_false(weft_future_done(f));
    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_set_error_message_copy_failure_is_enomem(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    int failures = 0, rc = -1;

    for (long n = 1; n <= 16; n++) {
        weft_future_t *f = new_future(loop);
        weft__alloc_fail_nth(n);
        rc = weft_future_set_error(f, ERROR_CODE, ERROR_MSG);
        weft__alloc_fail_nth(0);
        if (rc == -ENOMEM) {
            /* Nothing happened: still pending, and it can complete. */
            failures++;
            assert_false(weft_future_done(f));
            assert_int_equal(weft_future_set_error(f, ERROR_CODE, ERROR_MSG), 0);
        } else {
            assert_int_equal(rc, 0);
        }
        assert_outcome(f, K_ERROR);
        weft_future_release(f);
        if (rc == 0 && failures > 0)
            break;
    }
    assert_true(failures >= 1); /* the message copy needs memory */
    weft_loop_free(loop);
}

static void test_future_cancel_message_copy_failure_still_cancels(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    int lost_message = 0;

    for (long n = 1; n <= 8; n++) {
        weft_future_t *f = new_future(loop);
        weft__alloc_fail_nth(n);
        bool cancelled = weft_future_cancel(f, CANCEL_MSG);
        weft__alloc_fail_nth(0);
        assert_true(cancelled);
        assert_true(weft_future_cancelled(f));
        void *v = SENTINEL;
        assert_int_equal(weft_future_result(f, &v), WEFT_ECANCELED);
        const char *m = weft_future_message(f);
        if (m == NULL)
            lost_message++;
        else
            assert_string_equal(m, CANCEL_MSG);
        weft_future_release(f);
    }
    assert_true(lost_message >= 1);
    weft_loop_free(loop);
}

static void test_future_add_done_callback_out_of_memory_is_enomem(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = new_future(loop);
    atomic_int runs;
    atomic_init(&runs, 0);
    int rc = -1;

    for (long n = 1; n <= 16; n++) {
        weft__alloc_fail_nth(n);
        rc = weft_future_add_done_callback(f, on_done_count, &runs);
        weft__alloc_fail_nth(0);
        if (rc == 0)
            break;
        assert_int_equal(rc, -ENOMEM);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(weft_future_set_result(f, NULL), 0);
    run_once(loop);
    /* Failed registrations are never called: exactly one run. */
    assert_int_equal(atomic_load(&runs), 1);

    weft_future_release(f);
    weft_loop_free(loop);
}

static void test_future_completion_never_loses_done_callbacks_for_memory(void **state)
{
    (void)state;
    /* set_result cannot return -ENOMEM and cancel returns only a bool, so
     * scheduling registered callbacks must not depend on a new allocation
     * succeeding (or must not be dropped silently). */
    weft_loop_t *loop = new_loop();
    for (int k = 0; k < K_COUNT; k++) {
        for (long n = 1; n <= 8; n++) {
            weft_future_t *f = new_future(loop);
            atomic_int runs;
            atomic_init(&runs, 0);
            assert_int_equal(weft_future_add_done_callback(f, on_done_count, &runs), 0);
            assert_int_equal(weft_future_add_done_callback(f, on_done_count, &runs), 0);
            weft__alloc_fail_nth(n);
            int rc;
            switch (k) {
            case K_RESULT:
                rc = weft_future_set_result(f, &result_tag);
                break;
            case K_ERROR:
                rc = weft_future_set_error(f, ERROR_CODE, NULL);
                break;
            default:
                rc = weft_future_cancel(f, NULL) ? 0 : WEFT_EINVALSTATE;
                break;
            }
            weft__alloc_fail_nth(0);
            assert_int_equal(rc, 0);
            run_once(loop);
            assert_int_equal(atomic_load(&runs), 2);
            if (k == K_ERROR)
                assert_int_equal(weft_future_error(f), ERROR_CODE);
            weft_future_release(f);
        }
    }
    weft_loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_future_new_without_loop_outside_a_loop_is_eperm),
        cmocka_unit_test(test_future_new_with_null_out_is_einval),
        cmocka_unit_test(test_future_new_without_loop_uses_the_running_loop),
        cmocka_unit_test(test_future_new_on_closed_loop_is_eclosed),
        cmocka_unit_test(test_future_new_is_pending_and_bound_to_its_loop),
        cmocka_unit_test(test_future_set_result_completes_with_the_value),
        cmocka_unit_test(test_future_set_result_null_value_is_a_result),
        cmocka_unit_test(test_future_set_error_copies_code_and_message),
        cmocka_unit_test(test_future_set_error_without_message_has_null_message),
        cmocka_unit_test(test_future_set_error_rejects_zero_positive_and_ecanceled),
        cmocka_unit_test(test_future_cancel_without_message),
        cmocka_unit_test(test_future_cancel_copies_message),
        cmocka_unit_test(test_future_second_completion_is_einvalstate),
        cmocka_unit_test(test_future_result_while_pending_is_einvalstate),
        cmocka_unit_test(test_future_null_arguments),
        cmocka_unit_test(test_future_retain_keeps_it_alive_until_last_release),
        cmocka_unit_test(test_future_done_callback_is_not_run_inline_by_completion),
        cmocka_unit_test(test_future_done_callbacks_run_in_registration_order),
        cmocka_unit_test(test_future_done_callback_added_after_done_is_scheduled_not_inline),
        cmocka_unit_test(test_future_done_callback_added_by_a_done_callback_runs_next_iteration),
        cmocka_unit_test(test_future_remove_done_callback_returns_count_removed),
        cmocka_unit_test(test_future_remove_done_callback_after_scheduling_removes_nothing),
        cmocka_unit_test(test_future_done_callback_runs_on_the_thread_running_the_loop),
        cmocka_unit_test(test_future_set_result_from_foreign_thread_wakes_the_loop),
        cmocka_unit_test(test_future_released_with_pending_done_callback_stays_alive),
        cmocka_unit_test(test_future_concurrent_completions_have_exactly_one_winner),
        cmocka_unit_test(test_future_wait_times_out_on_a_plain_thread),
        cmocka_unit_test(test_future_wait_returns_when_completed_by_another_thread),
        cmocka_unit_test(test_future_wait_zero_timeout_polls),
        cmocka_unit_test(test_future_wait_inside_a_loop_callback_is_eperm),
        cmocka_unit_test(test_future_unretrieved_error_is_reported_in_debug_mode),
        cmocka_unit_test(test_future_retrieved_error_is_not_reported_in_debug_mode),
        cmocka_unit_test(test_future_add_done_callback_on_done_future_of_closed_loop_is_eclosed),
        cmocka_unit_test(test_future_done_callback_dropped_at_close_is_reported),
        cmocka_unit_test(test_future_new_out_of_memory_is_enomem),
        cmocka_unit_test(test_future_set_error_message_copy_failure_is_enomem),
        cmocka_unit_test(test_future_cancel_message_copy_failure_still_cancels),
        cmocka_unit_test(test_future_add_done_callback_out_of_memory_is_enomem),
        cmocka_unit_test(test_future_completion_never_loses_done_callbacks_for_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
