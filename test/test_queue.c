/* Tests for the queues (include/weft/queue.h): FIFO, LIFO and priority
 * order, the nowait codes, waiting get and put, waiters served oldest
 * first, task_done / join, Python 3.13's shutdown (plain and immediate),
 * cancelled waiters (a woken one passes the item or slot on), every
 * documented return code, and parallel runs over 8 workers: many
 * producers and consumers through a bounded queue deliver every item
 * exactly once (magic values, consumed-once flags), also while waiters are
 * cancelled at random from other tasks and from a plain thread.
 *
 * Nothing here calls a cmocka assert inside a task or a helper thread:
 * they record with CHECK(&g_rec, ...) and the test thread calls
 * ASSERT_NO_FAILURE(&g_rec) once the task it waits for has returned
 * (STYLE.md, "Tests").  Every runtime is shut down with nothing abandoned
 * and no task left.
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

#include "sched/common.h" /* weft__alloc_fail_nth */
#include "sched/waitq.h"
#include "test/support/check.h"
#include "weft.h"

#define US  INT64_C(1000)
#define MS  INT64_C(1000000)
#define SEC (INT64_C(1000) * MS)

#define WAIT_LIMIT (30 * SEC)

enum { GETTERS = 0, PUTTERS = 1, JOINERS = 2 };

static check_rec_t g_rec;

static char sentinel_obj;
#define SENTINEL ((void *)&sentinel_obj)

/* Items: small integers disguised as pointers (never dereferenced). */
#define ITEM(n) ((void *)(intptr_t)(n))
#define NUM(p)  ((int)(intptr_t)(p))

static int setup(void **state)
{
    (void)state;
    check_rec_init(&g_rec);
    return 0;
}

#define TEST(fn) cmocka_unit_test_setup(fn, setup)

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Inside a task: poll until cond holds; a hang becomes a recorded
 * failure. */
#define AWAIT_TRUE(cond)                                                                           \
    do {                                                                                           \
        int64_t dl_ = now_ns() + WAIT_LIMIT;                                                       \
        while (!(cond)) {                                                                          \
            if (now_ns() > dl_) {                                                                  \
                CHECK(&g_rec, !"timed out waiting for: " #cond);                                   \
                break;                                                                             \
            }                                                                                      \
            (void)weft_sleep(50 * US);                                                             \
        }                                                                                          \
    } while (0)

/* On the test thread: poll until cond holds. */
#define WAIT_TRUE(cond)                                                                            \
    do {                                                                                           \
        int64_t dl_ = now_ns() + WAIT_LIMIT;                                                       \
        while (!(cond) && now_ns() < dl_) {                                                        \
            struct timespec ts_ = {0, 100000};                                                     \
            nanosleep(&ts_, NULL);                                                                 \
        }                                                                                          \
        assert_true(cond);                                                                         \
    } while (0)

static weft_runtime_t *new_rt(unsigned workers)
{
    weft_config_t cfg = {.workers = workers};
    weft_runtime_t *rt = NULL;
    assert_int_equal(weft_runtime_new(&cfg, &rt), 0);
    return rt;
}

static int run_in(weft_runtime_t *rt, weft_fn fn, void *arg)
{
    weft_future_t *f = NULL;
    assert_int_equal(weft_runtime_submit(rt, fn, arg, &f), 0);
    assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
    int rc = weft_future_result(f, NULL);
    weft_future_release(f);
    return rc;
}

static void count_visit(weft_task_t *t, void *arg)
{
    (void)t;
    (*(int *)arg)++;
}

static void free_rt(weft_runtime_t *rt)
{
    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    int n = 0;
    assert_int_equal(weft_all_tasks(rt, count_visit, &n), 0);
    assert_int_equal(n, 0);
    weft_runtime_free(rt);
}

static weft_task_t *spawn(weft_fn fn, void *arg)
{
    weft_task_t *t = NULL;
    int rc = weft_spawn(fn, arg, NULL, &t);
    CHECK(&g_rec, rc == 0);
    return rc == 0 ? t : NULL;
}

static int join(weft_task_t *t)
{
    if (t == NULL)
        return -EINVAL;
    int rc = weft_await(weft_task_future(t), NULL);
    weft_task_release(t);
    return rc;
}

static int cmp_int(const void *a, const void *b)
{
    int x = NUM(a), y = NUM(b);
    return (x > y) - (x < y);
}

/* Priority by the tens digit only, so 11, 12, 13 compare equal. */
static int cmp_tens(const void *a, const void *b)
{
    int x = NUM(a) / 10, y = NUM(b) / 10;
    return (x > y) - (x < y);
}

static weft_queue_t *new_queue(int kind, size_t maxsize)
{
    weft_queue_t *q = NULL;
    assert_int_equal(
        weft_queue_new(kind, maxsize, kind == WEFT_QUEUE_PRIORITY ? cmp_int : NULL, &q), 0);
    assert_non_null(q);
    return q;
}

/* ======================================================================== */
/* Without tasks                                                             */
/* ======================================================================== */

static void test_queue_argument_and_context_errors(void **state)
{
    (void)state;
    weft_queue_t *q = SENTINEL;
    assert_int_equal(weft_queue_new(WEFT_QUEUE_FIFO, 0, NULL, NULL), -EINVAL);
    assert_int_equal(weft_queue_new(7, 0, NULL, &q), -EINVAL);
    assert_int_equal(weft_queue_new(-1, 0, NULL, &q), -EINVAL);
    assert_int_equal(weft_queue_new(WEFT_QUEUE_PRIORITY, 0, NULL, &q), -EINVAL);
    assert_ptr_equal(q, SENTINEL);

    void *item = SENTINEL;
    assert_int_equal(weft_queue_put_nowait(NULL, ITEM(1)), -EINVAL);
    assert_int_equal(weft_queue_get_nowait(NULL, &item), -EINVAL);
    assert_int_equal(weft_queue_task_done(NULL), -EINVAL);
    assert_int_equal(weft_queue_shutdown(NULL, false), -EINVAL);
    assert_int_equal(weft_queue_qsize(NULL), 0);
    assert_true(weft_queue_empty(NULL));
    assert_false(weft_queue_full(NULL));
    assert_int_equal(weft_queue_maxsize(NULL), 0);
    weft_queue_free(NULL);

    q = new_queue(WEFT_QUEUE_FIFO, 3);
    assert_int_equal(weft_queue_maxsize(q), 3);
    assert_int_equal(weft_queue_get_nowait(q, NULL), -EINVAL);
    /* The suspending calls are refused outside a task, nothing changes. */
    assert_int_equal(weft_queue_put(q, ITEM(1)), -EPERM);
    assert_int_equal(weft_queue_get(q, &item), -EPERM);
    assert_int_equal(weft_queue_join(q), -EPERM);
    assert_int_equal(weft_queue_put(NULL, ITEM(1)), -EPERM);
    assert_ptr_equal(item, SENTINEL);
    assert_int_equal(weft_queue_qsize(q), 0);
    /* asyncio: ValueError('task_done() called too many times') */
    assert_int_equal(weft_queue_task_done(q), -EINVAL);
    weft_queue_free(q);
}

static void test_queue_fifo_lifo_and_priority_orders(void **state)
{
    (void)state;
    static const int in[] = {5, 1, 4, 2, 3};
    static const int want_fifo[] = {5, 1, 4, 2, 3};
    static const int want_lifo[] = {3, 2, 4, 1, 5};
    static const int want_prio[] = {1, 2, 3, 4, 5};
    const int *want[] = {want_fifo, want_lifo, want_prio};
    int kinds[] = {WEFT_QUEUE_FIFO, WEFT_QUEUE_LIFO, WEFT_QUEUE_PRIORITY};
    for (int k = 0; k < 3; k++) {
        weft_queue_t *q = new_queue(kinds[k], 0);
        for (int i = 0; i < 5; i++)
            assert_int_equal(weft_queue_put_nowait(q, ITEM(in[i])), 0);
        assert_int_equal(weft_queue_qsize(q), 5);
        for (int i = 0; i < 5; i++) {
            void *item = NULL;
            assert_int_equal(weft_queue_get_nowait(q, &item), 0);
            assert_int_equal(NUM(item), want[k][i]);
        }
        void *item = SENTINEL;
        assert_int_equal(weft_queue_get_nowait(q, &item), WEFT_EQUEUEEMPTY);
        assert_ptr_equal(item, SENTINEL);
        weft_queue_free(q);
    }

    /* Any pointer is an item, NULL included. */
    weft_queue_t *nq = new_queue(WEFT_QUEUE_FIFO, 2);
    assert_int_equal(weft_queue_put_nowait(nq, NULL), 0);
    assert_int_equal(weft_queue_qsize(nq), 1);
    void *got = SENTINEL;
    assert_int_equal(weft_queue_get_nowait(nq, &got), 0);
    assert_null(got);
    weft_queue_free(nq);

    /* Equal priorities come out in put order. */
    weft_queue_t *q = NULL;
    assert_int_equal(weft_queue_new(WEFT_QUEUE_PRIORITY, 0, cmp_tens, &q), 0);
    static const int tens_in[] = {21, 11, 22, 12, 13, 23, 1, 31};
    static const int tens_want[] = {1, 11, 12, 13, 21, 22, 23, 31};
    for (int i = 0; i < 8; i++)
        assert_int_equal(weft_queue_put_nowait(q, ITEM(tens_in[i])), 0);
    for (int i = 0; i < 8; i++) {
        void *item = NULL;
        assert_int_equal(weft_queue_get_nowait(q, &item), 0);
        assert_int_equal(NUM(item), tens_want[i]);
    }
    weft_queue_free(q);
}

static void test_queue_nowait_full_and_empty_codes(void **state)
{
    (void)state;
    int kinds[] = {WEFT_QUEUE_FIFO, WEFT_QUEUE_LIFO, WEFT_QUEUE_PRIORITY};
    for (int k = 0; k < 3; k++) {
        weft_queue_t *q = new_queue(kinds[k], 2);
        assert_true(weft_queue_empty(q));
        assert_false(weft_queue_full(q));
        assert_int_equal(weft_queue_put_nowait(q, ITEM(1)), 0);
        assert_false(weft_queue_empty(q));
        assert_false(weft_queue_full(q));
        assert_int_equal(weft_queue_put_nowait(q, ITEM(2)), 0);
        assert_true(weft_queue_full(q));
        assert_int_equal(weft_queue_put_nowait(q, ITEM(3)), WEFT_EQUEUEFULL);
        assert_int_equal(weft_queue_qsize(q), 2);
        void *item;
        assert_int_equal(weft_queue_get_nowait(q, &item), 0);
        assert_int_equal(weft_queue_get_nowait(q, &item), 0);
        item = SENTINEL;
        assert_int_equal(weft_queue_get_nowait(q, &item), WEFT_EQUEUEEMPTY);
        assert_ptr_equal(item, SENTINEL);
        assert_true(weft_queue_empty(q));
        /* Two items were put: two task_done, the third is too many. */
        assert_int_equal(weft_queue_task_done(q), 0);
        assert_int_equal(weft_queue_task_done(q), 0);
        assert_int_equal(weft_queue_task_done(q), -EINVAL);
        weft_queue_free(q);
    }
}

/* The ring grows and wraps without reordering; the heap grows too. */
static void test_queue_unbounded_queue_grows_and_keeps_order(void **state)
{
    (void)state;
    weft_queue_t *q = new_queue(WEFT_QUEUE_FIFO, 0);
    int next_in = 0, next_out = 0;
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 300; i++)
            assert_int_equal(weft_queue_put_nowait(q, ITEM(next_in++)), 0);
        for (int i = 0; i < 250; i++) {
            void *item;
            assert_int_equal(weft_queue_get_nowait(q, &item), 0);
            assert_int_equal(NUM(item), next_out++);
        }
    }
    assert_int_equal(weft_queue_qsize(q), (size_t)(next_in - next_out));
    while (next_out < next_in) {
        void *item;
        assert_int_equal(weft_queue_get_nowait(q, &item), 0);
        assert_int_equal(NUM(item), next_out++);
    }
    assert_false(weft_queue_full(q)); /* unbounded: never full */
    weft_queue_free(q);

    q = new_queue(WEFT_QUEUE_PRIORITY, 0);
    unsigned s = 7;
    for (int i = 0; i < 5000; i++) {
        s = s * 1103515245u + 12345u;
        assert_int_equal(weft_queue_put_nowait(q, ITEM((s >> 8) % 100000)), 0);
    }
    int prev = -1;
    for (int i = 0; i < 5000; i++) {
        void *item;
        assert_int_equal(weft_queue_get_nowait(q, &item), 0);
        assert_true(NUM(item) >= prev);
        prev = NUM(item);
    }
    weft_queue_free(q);
}

/* A put that needs more storage and cannot get it returns -ENOMEM and
 * changes nothing (the item is not queued, nothing unfinished is added);
 * the constructor reports -ENOMEM too.  The allocation seam is
 * process-wide, so no runtime runs here. */
static void test_queue_allocation_failures_are_enomem(void **state)
{
    (void)state;
    weft_queue_t *q = SENTINEL;
    weft__alloc_fail_nth(1);
    assert_int_equal(weft_queue_new(WEFT_QUEUE_FIFO, 0, NULL, &q), -ENOMEM);
    weft__alloc_fail_nth(0);
    assert_ptr_equal(q, SENTINEL);

    int kinds[] = {WEFT_QUEUE_FIFO, WEFT_QUEUE_LIFO, WEFT_QUEUE_PRIORITY};
    for (int k = 0; k < 3; k++) {
        q = new_queue(kinds[k], 0);
        weft__alloc_fail_nth(1); /* the first put allocates the storage */
        assert_int_equal(weft_queue_put_nowait(q, ITEM(1)), -ENOMEM);
        weft__alloc_fail_nth(0);
        assert_int_equal(weft_queue_qsize(q), 0);
        assert_int_equal(weft_queue_task_done(q), -EINVAL);
        int n = 0;
        /* Fill until the next put has to grow, then fail that growth. */
        for (; n < 16; n++)
            assert_int_equal(weft_queue_put_nowait(q, ITEM(n)), 0);
        weft__alloc_fail_nth(1);
        assert_int_equal(weft_queue_put_nowait(q, ITEM(n)), -ENOMEM);
        weft__alloc_fail_nth(0);
        assert_int_equal(weft_queue_qsize(q), 16);
        assert_int_equal(weft_queue_put_nowait(q, ITEM(n)), 0); /* grows now */
        for (int i = 0; i < 17; i++) {
            void *item;
            assert_int_equal(weft_queue_get_nowait(q, &item), 0);
            assert_int_equal(weft_queue_task_done(q), 0);
        }
        assert_int_equal(weft_queue_task_done(q), -EINVAL);
        weft_queue_free(q);
    }
}

/* ======================================================================== */
/* Waiting                                                                   */
/* ======================================================================== */

typedef struct qp {
    weft_queue_t *q;
    int rc[16];
    void *got[16];
} qp_t;

typedef struct qp_arg {
    qp_t *p;
    int i;
} qp_arg_t;

static int getter(void *arg, void **result)
{
    (void)result;
    qp_arg_t *a = arg;
    a->p->got[a->i] = SENTINEL;
    a->p->rc[a->i] = weft_queue_get(a->p->q, &a->p->got[a->i]);
    return 0;
}

static int putter(void *arg, void **result)
{
    (void)result;
    qp_arg_t *a = arg;
    a->p->rc[a->i] = weft_queue_put(a->p->q, ITEM(100 + a->i));
    return 0;
}

static int joiner(void *arg, void **result)
{
    (void)result;
    qp_arg_t *a = arg;
    a->p->rc[a->i] = weft_queue_join(a->p->q);
    return 0;
}

static void qp_init(qp_t *p, weft_queue_t *q)
{
    p->q = q;
    for (int i = 0; i < 16; i++) {
        p->rc[i] = 1;
        p->got[i] = NULL;
    }
}

/* get waits for a put; put on a full queue waits for a get; neither
 * suspends when it need not (a pending cancellation is not delivered). */
static int wait_basic_driver(void *arg, void **result)
{
    (void)result;
    qp_t *p = arg;
    CHECK(&g_rec, weft_queue_get(NULL, NULL) == -EINVAL);
    CHECK(&g_rec, weft_queue_get(p->q, NULL) == -EINVAL);
    CHECK(&g_rec, weft_queue_put(NULL, NULL) == -EINVAL);
    CHECK(&g_rec, weft_queue_join(NULL) == -EINVAL);
    qp_arg_t a0 = {p, 0}, a1 = {p, 1};
    weft_task_t *g = spawn(getter, &a0);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, GETTERS) == 1);
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(7)) == 0);
    CHECK(&g_rec, join(g) == 0);
    CHECK(&g_rec, p->rc[0] == 0 && NUM(p->got[0]) == 7);

    CHECK(&g_rec, weft_queue_put(p->q, ITEM(8)) == 0); /* maxsize 1: full */
    weft_task_t *pt = spawn(putter, &a1);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, PUTTERS) == 1);
    void *item = NULL;
    CHECK(&g_rec, weft_queue_get(p->q, &item) == 0 && NUM(item) == 8);
    CHECK(&g_rec, join(pt) == 0);
    CHECK(&g_rec, p->rc[1] == 0);
    CHECK(&g_rec, weft_queue_qsize(p->q) == 1);

    /* No suspension needed: a pending request is not delivered. */
    CHECK(&g_rec, weft_task_cancel(weft_current_task(), NULL) == 1);
    CHECK(&g_rec, weft_queue_get(p->q, &item) == 0 && NUM(item) == 101);
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(9)) == 0);
    CHECK(&g_rec, weft_queue_get(p->q, &item) == 0 && NUM(item) == 9);
    for (int i = 0; i < 4; i++)
        CHECK(&g_rec, weft_queue_task_done(p->q) == 0);
    CHECK(&g_rec, weft_queue_join(p->q) == 0);
    /* Suspension needed: delivered, nothing taken or put. */
    item = SENTINEL;
    CHECK(&g_rec, weft_queue_get(p->q, &item) == WEFT_ECANCELED);
    CHECK(&g_rec, item == SENTINEL);
    CHECK(&g_rec, weft_task_uncancel(weft_current_task()) == 0);
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(10)) == 0);
    CHECK(&g_rec, weft_task_cancel(weft_current_task(), NULL) == 1);
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(11)) == WEFT_ECANCELED);
    CHECK(&g_rec, weft_task_uncancel(weft_current_task()) == 0);
    CHECK(&g_rec, weft_task_cancel(weft_current_task(), NULL) == 1);
    CHECK(&g_rec, weft_queue_join(p->q) == WEFT_ECANCELED);
    CHECK(&g_rec, weft_task_uncancel(weft_current_task()) == 0);
    CHECK(&g_rec, weft_queue_get(p->q, &item) == 0 && NUM(item) == 10);
    CHECK(&g_rec, weft_queue_qsize(p->q) == 0);
    return 0;
}

static void test_queue_get_and_put_wait_only_when_they_must(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    qp_t p;
    qp_init(&p, new_queue(WEFT_QUEUE_FIFO, 1));
    assert_int_equal(run_in(rt, wait_basic_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_queue_free(p.q);
}

/* Getters queued one by one are served oldest first; so are putters. */
#define ORDERED 6

static int order_driver(void *arg, void **result)
{
    (void)result;
    qp_t *p = arg;
    qp_arg_t args[ORDERED];
    weft_task_t *t[ORDERED];
    for (int i = 0; i < ORDERED; i++) {
        args[i] = (qp_arg_t){p, i};
        t[i] = spawn(getter, &args[i]);
        AWAIT_TRUE(weft__queue_nwaiters(p->q, GETTERS) == (size_t)i + 1);
    }
    for (int i = 0; i < ORDERED; i++) {
        CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(i)) == 0);
        CHECK(&g_rec, join(t[i]) == 0); /* the oldest getter got it */
        CHECK(&g_rec, p->rc[i] == 0 && NUM(p->got[i]) == i);
    }
    /* Putters: fill the 1-slot queue, queue putters, drain one by one. */
    CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(99)) == 0);
    for (int i = 0; i < ORDERED; i++) {
        t[i] = spawn(putter, &args[i]);
        AWAIT_TRUE(weft__queue_nwaiters(p->q, PUTTERS) == (size_t)i + 1);
    }
    void *item;
    CHECK(&g_rec, weft_queue_get_nowait(p->q, &item) == 0 && NUM(item) == 99);
    for (int i = 0; i < ORDERED; i++) {
        CHECK(&g_rec, join(t[i]) == 0);
        CHECK(&g_rec, p->rc[i] == 0);
        CHECK(&g_rec, weft_queue_get_nowait(p->q, &item) == 0);
        CHECK(&g_rec, NUM(item) == 100 + i);
    }
    return 0;
}

static void test_queue_waiting_getters_and_putters_are_served_oldest_first(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    qp_t p;
    qp_init(&p, new_queue(WEFT_QUEUE_FIFO, 1));
    assert_int_equal(run_in(rt, order_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_queue_free(p.q);
}

/* asyncio lets a get_nowait take the item a woken getter was woken for;
 * that getter waits again, keeping its turn (one worker: it cannot run
 * before the driver suspends). */
static int barge_driver(void *arg, void **result)
{
    (void)result;
    qp_t *p = arg;
    qp_arg_t a0 = {p, 0}, a1 = {p, 1};
    weft_task_t *g0 = spawn(getter, &a0);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, GETTERS) == 1);
    CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(1)) == 0); /* wakes g0 */
    void *item = NULL;
    CHECK(&g_rec, weft_queue_get_nowait(p->q, &item) == 0 && NUM(item) == 1);
    weft_task_t *g1 = spawn(getter, &a1);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, GETTERS) == 2); /* g0 back, then g1 */
    CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(2)) == 0);
    CHECK(&g_rec, join(g0) == 0);
    CHECK(&g_rec, p->rc[0] == 0 && NUM(p->got[0]) == 2);
    CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(3)) == 0);
    CHECK(&g_rec, join(g1) == 0);
    CHECK(&g_rec, p->rc[1] == 0 && NUM(p->got[1]) == 3);
    return 0;
}

static void test_queue_woken_getter_that_finds_nothing_keeps_its_turn(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    qp_t p;
    qp_init(&p, new_queue(WEFT_QUEUE_FIFO, 0));
    assert_int_equal(run_in(rt, barge_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_queue_free(p.q);
}

/* ======================================================================== */
/* Cancellation                                                              */
/* ======================================================================== */

/* A cancelled getter or putter leaves the queue having taken or put
 * nothing; the others are unaffected. */
static int cancel_driver(void *arg, void **result)
{
    (void)result;
    qp_t *p = arg;
    qp_arg_t a[4] = {{p, 0}, {p, 1}, {p, 2}, {p, 3}};
    weft_task_t *g0 = spawn(getter, &a[0]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, GETTERS) == 1);
    weft_task_t *g1 = spawn(getter, &a[1]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, GETTERS) == 2);
    CHECK(&g_rec, weft_task_cancel(g0, NULL) == 1);
    CHECK(&g_rec, join(g0) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_ECANCELED && p->got[0] == SENTINEL);
    CHECK(&g_rec, weft__queue_nwaiters(p->q, GETTERS) == 1);
    CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(5)) == 0);
    CHECK(&g_rec, join(g1) == 0);
    CHECK(&g_rec, p->rc[1] == 0 && NUM(p->got[1]) == 5);

    CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(6)) == 0); /* full */
    weft_task_t *p2 = spawn(putter, &a[2]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, PUTTERS) == 1);
    CHECK(&g_rec, weft_task_cancel(p2, NULL) == 1);
    CHECK(&g_rec, join(p2) == 0);
    CHECK(&g_rec, p->rc[2] == WEFT_ECANCELED);
    CHECK(&g_rec, weft__queue_nwaiters(p->q, PUTTERS) == 0);
    void *item;
    CHECK(&g_rec, weft_queue_get_nowait(p->q, &item) == 0 && NUM(item) == 6);
    CHECK(&g_rec, weft_queue_get_nowait(p->q, &item) == WEFT_EQUEUEEMPTY);

    /* join cancelled */
    weft_task_t *j = spawn(joiner, &a[3]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, JOINERS) == 1);
    CHECK(&g_rec, weft_task_cancel(j, NULL) == 1);
    CHECK(&g_rec, join(j) == 0);
    CHECK(&g_rec, p->rc[3] == WEFT_ECANCELED);
    CHECK(&g_rec, weft__queue_nwaiters(p->q, JOINERS) == 0);
    CHECK(&g_rec, weft_queue_task_done(p->q) == 0);
    CHECK(&g_rec, weft_queue_task_done(p->q) == 0);
    return 0;
}

static void test_queue_cancelled_waiters_take_and_put_nothing(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    qp_t p;
    qp_init(&p, new_queue(WEFT_QUEUE_FIFO, 1));
    assert_int_equal(run_in(rt, cancel_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_queue_free(p.q);
}

/* Woken for an item and cancelled before it runs (one worker): it returns
 * WEFT_ECANCELED and wakes the next getter for the item; a putter woken
 * for a slot and cancelled passes the slot on the same way. */
static int woken_cancel_driver(void *arg, void **result)
{
    (void)result;
    qp_t *p = arg;
    qp_arg_t a[4] = {{p, 0}, {p, 1}, {p, 2}, {p, 3}};
    weft_task_t *g0 = spawn(getter, &a[0]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, GETTERS) == 1);
    weft_task_t *g1 = spawn(getter, &a[1]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, GETTERS) == 2);
    CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(1)) == 0); /* wakes g0 */
    CHECK(&g_rec, weft__queue_nwaiters(p->q, GETTERS) == 1);
    CHECK(&g_rec, weft_task_cancel(g0, NULL) == 1);
    CHECK(&g_rec, join(g0) == 0);
    CHECK(&g_rec, join(g1) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_ECANCELED && p->got[0] == SENTINEL);
    CHECK(&g_rec, p->rc[1] == 0 && NUM(p->got[1]) == 1);

    CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(2)) == 0); /* full */
    weft_task_t *p2 = spawn(putter, &a[2]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, PUTTERS) == 1);
    weft_task_t *p3 = spawn(putter, &a[3]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, PUTTERS) == 2);
    void *item;
    CHECK(&g_rec, weft_queue_get_nowait(p->q, &item) == 0 && NUM(item) == 2); /* wakes p2 */
    CHECK(&g_rec, weft_task_cancel(p2, NULL) == 1);
    CHECK(&g_rec, join(p2) == 0);
    CHECK(&g_rec, join(p3) == 0);
    CHECK(&g_rec, p->rc[2] == WEFT_ECANCELED && p->rc[3] == 0);
    CHECK(&g_rec, weft_queue_get_nowait(p->q, &item) == 0 && NUM(item) == 103);
    CHECK(&g_rec, weft_queue_qsize(p->q) == 0);
    return 0;
}

static void test_queue_woken_and_cancelled_waiter_passes_the_wakeup_on(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    qp_t p;
    qp_init(&p, new_queue(WEFT_QUEUE_FIFO, 1));
    assert_int_equal(run_in(rt, woken_cancel_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_queue_free(p.q);
}

/* ======================================================================== */
/* task_done / join, shutdown                                                */
/* ======================================================================== */

static int join_driver(void *arg, void **result)
{
    (void)result;
    qp_t *p = arg;
    qp_arg_t a[3] = {{p, 0}, {p, 1}, {p, 2}};
    CHECK(&g_rec, weft_queue_join(p->q) == 0); /* nothing unfinished */
    for (int i = 0; i < 3; i++)
        CHECK(&g_rec, weft_queue_put(p->q, ITEM(i)) == 0);
    weft_task_t *j0 = spawn(joiner, &a[0]);
    weft_task_t *j1 = spawn(joiner, &a[1]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, JOINERS) == 2);
    void *item;
    for (int i = 0; i < 3; i++)
        CHECK(&g_rec, weft_queue_get(p->q, &item) == 0);
    /* Emptied but not done: the joiners still wait. */
    CHECK(&g_rec, weft_queue_task_done(p->q) == 0);
    CHECK(&g_rec, weft_queue_task_done(p->q) == 0);
    (void)weft_sleep(MS);
    CHECK(&g_rec, p->rc[0] == 1 && p->rc[1] == 1);
    CHECK(&g_rec, weft__queue_nwaiters(p->q, JOINERS) == 2);
    CHECK(&g_rec, weft_queue_task_done(p->q) == 0);
    CHECK(&g_rec, join(j0) == 0 && join(j1) == 0);
    CHECK(&g_rec, p->rc[0] == 0 && p->rc[1] == 0);
    CHECK(&g_rec, weft_queue_task_done(p->q) == -EINVAL);
    /* A put after the joiners were released does not take it back. */
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(9)) == 0);
    weft_task_t *j2 = spawn(joiner, &a[2]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, JOINERS) == 1);
    CHECK(&g_rec, weft_queue_get(p->q, &item) == 0);
    CHECK(&g_rec, weft_queue_task_done(p->q) == 0);
    CHECK(&g_rec, join(j2) == 0 && p->rc[2] == 0);
    return 0;
}

static void test_queue_join_waits_for_every_task_done(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    qp_t p;
    qp_init(&p, new_queue(WEFT_QUEUE_PRIORITY, 0));
    assert_int_equal(run_in(rt, join_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_queue_free(p.q);
}

/* Python 3.13 shutdown: blocked getters and putters wake with
 * WEFT_EQSHUTDOWN; later puts fail; gets drain what is left, then fail;
 * join still waits for task_done. */
static int shutdown_driver(void *arg, void **result)
{
    (void)result;
    qp_t *p = arg;
    qp_arg_t a[4] = {{p, 0}, {p, 1}, {p, 2}, {p, 3}};
    weft_queue_t *empty = NULL;
    CHECK(&g_rec, weft_queue_new(WEFT_QUEUE_LIFO, 0, NULL, &empty) == 0);
    qp_t pe;
    qp_init(&pe, empty);
    qp_arg_t ae = {&pe, 0};
    weft_task_t *g = spawn(getter, &ae);
    AWAIT_TRUE(weft__queue_nwaiters(empty, GETTERS) == 1);
    CHECK(&g_rec, weft_queue_shutdown(empty, false) == 0);
    CHECK(&g_rec, join(g) == 0);
    CHECK(&g_rec, pe.rc[0] == WEFT_EQSHUTDOWN && pe.got[0] == SENTINEL);
    weft_queue_free(empty);

    /* p->q: maxsize 2, full, a putter blocked. */
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(1)) == 0);
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(2)) == 0);
    weft_task_t *pt = spawn(putter, &a[0]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, PUTTERS) == 1);
    weft_task_t *j = spawn(joiner, &a[1]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, JOINERS) == 1);
    CHECK(&g_rec, weft_queue_shutdown(p->q, false) == 0);
    CHECK(&g_rec, join(pt) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_EQSHUTDOWN);
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(3)) == WEFT_EQSHUTDOWN);
    CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(3)) == WEFT_EQSHUTDOWN);
    void *item;
    CHECK(&g_rec, weft_queue_get(p->q, &item) == 0 && NUM(item) == 1);
    CHECK(&g_rec, weft_queue_get_nowait(p->q, &item) == 0 && NUM(item) == 2);
    item = SENTINEL;
    CHECK(&g_rec, weft_queue_get(p->q, &item) == WEFT_EQSHUTDOWN);
    CHECK(&g_rec, weft_queue_get_nowait(p->q, &item) == WEFT_EQSHUTDOWN);
    CHECK(&g_rec, item == SENTINEL);
    CHECK(&g_rec, weft_queue_shutdown(p->q, false) == 0); /* again: harmless */
    CHECK(&g_rec, p->rc[1] == 1);                         /* join: still 2 unfinished */
    CHECK(&g_rec, weft_queue_task_done(p->q) == 0);
    CHECK(&g_rec, weft_queue_task_done(p->q) == 0);
    CHECK(&g_rec, join(j) == 0 && p->rc[1] == 0);
    return 0;
}

static void test_queue_shutdown_fails_puts_and_drains_gets(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    qp_t p;
    qp_init(&p, new_queue(WEFT_QUEUE_FIFO, 2));
    assert_int_equal(run_in(rt, shutdown_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_queue_free(p.q);
}

/* immediate: the items left are dropped (each counting as done, which
 * releases join), gets fail at once. */
static int shutdown_now_driver(void *arg, void **result)
{
    (void)result;
    qp_t *p = arg;
    qp_arg_t a[2] = {{p, 0}, {p, 1}};
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(0)) == 0);
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(1)) == 0);
    void *item;
    CHECK(&g_rec, weft_queue_get(p->q, &item) == 0);   /* taken, not done */
    CHECK(&g_rec, weft_queue_put(p->q, ITEM(2)) == 0); /* full again */
    weft_task_t *pt = spawn(putter, &a[0]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, PUTTERS) == 1);
    weft_task_t *j = spawn(joiner, &a[1]);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, JOINERS) == 1);
    CHECK(&g_rec, weft_queue_shutdown(p->q, true) == 0);
    CHECK(&g_rec, weft_queue_qsize(p->q) == 0);
    CHECK(&g_rec, weft_queue_get_nowait(p->q, &item) == WEFT_EQSHUTDOWN);
    CHECK(&g_rec, weft_queue_get(p->q, &item) == WEFT_EQSHUTDOWN);
    CHECK(&g_rec, join(pt) == 0 && p->rc[0] == WEFT_EQSHUTDOWN);
    (void)weft_sleep(MS);
    CHECK(&g_rec, p->rc[1] == 1); /* one taken item still unfinished */
    CHECK(&g_rec, weft_queue_task_done(p->q) == 0);
    CHECK(&g_rec, join(j) == 0 && p->rc[1] == 0);
    CHECK(&g_rec, weft_queue_task_done(p->q) == -EINVAL);
    CHECK(&g_rec, weft_queue_join(p->q) == 0);
    return 0;
}

static void test_queue_shutdown_immediate_drops_items_and_releases_join(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    qp_t p;
    qp_init(&p, new_queue(WEFT_QUEUE_FIFO, 2));
    assert_int_equal(run_in(rt, shutdown_now_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_queue_free(p.q);
}

/* Immediate shutdown with nothing unfinished left releases join at once
 * too; freeing with a waiter is refused and logged. */
static atomic_int log_hits;

static void count_log(int level, const char *message, void *arg)
{
    (void)arg;
    if (level == WEFT_LOG_ERROR && strstr(message, "not freed") != NULL)
        atomic_fetch_add(&log_hits, 1);
}

static int free_driver(void *arg, void **result)
{
    (void)result;
    qp_t *p = arg;
    qp_arg_t a0 = {p, 0};
    weft_task_t *g = spawn(getter, &a0);
    AWAIT_TRUE(weft__queue_nwaiters(p->q, GETTERS) == 1);
    weft_queue_free(p->q);
    CHECK(&g_rec, atomic_load(&log_hits) == 1);
    CHECK(&g_rec, weft_queue_put_nowait(p->q, ITEM(4)) == 0);
    CHECK(&g_rec, join(g) == 0 && NUM(p->got[0]) == 4);
    return 0;
}

static void test_queue_free_with_a_waiter_is_refused_and_logged(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    qp_t p;
    qp_init(&p, new_queue(WEFT_QUEUE_FIFO, 0));
    atomic_store(&log_hits, 0);
    assert_int_equal(weft_set_log_handler(count_log, NULL), 0);
    int rc = run_in(rt, free_driver, &p);
    assert_int_equal(weft_set_log_handler(NULL, NULL), 0);
    assert_int_equal(rc, 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_queue_free(p.q);
    assert_int_equal(atomic_load(&log_hits), 1);
}

/* A loop callback may use the non-suspending calls (its put_nowait wakes a
 * task), and is refused the suspending ones. */
typedef struct cb_probe {
    weft_queue_t *q;
    int put_rc, get_rc, join_rc, nowait_rc;
    atomic_int ran;
} cb_probe_t;

static void queue_cb(void *arg)
{
    cb_probe_t *c = arg;
    void *item = SENTINEL;
    c->get_rc = weft_queue_get(c->q, &item);
    c->join_rc = weft_queue_join(c->q);
    c->put_rc = weft_queue_put(c->q, ITEM(1));
    c->nowait_rc = weft_queue_put_nowait(c->q, ITEM(42));
    atomic_store(&c->ran, 1);
}

static int cb_getter(void *arg, void **result)
{
    (void)result;
    cb_probe_t *c = arg;
    void *item = NULL;
    int rc = weft_queue_get(c->q, &item);
    CHECK(&g_rec, rc == 0 && NUM(item) == 42);
    return rc;
}

static void test_queue_from_a_loop_callback(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    cb_probe_t c = {.q = new_queue(WEFT_QUEUE_FIFO, 1)};
    atomic_init(&c.ran, 0);
    weft_future_t *f;
    assert_int_equal(weft_runtime_submit(rt, cb_getter, &c, &f), 0);
    WAIT_TRUE(weft__queue_nwaiters(c.q, GETTERS) == 1);
    assert_int_equal(weft_loop_call_soon_threadsafe(weft_runtime_loop(rt, 1), queue_cb, &c, NULL),
                     0);
    assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
    assert_int_equal(weft_future_result(f, NULL), 0);
    weft_future_release(f);
    WAIT_TRUE(atomic_load(&c.ran) == 1);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(c.get_rc, -EPERM);
    assert_int_equal(c.join_rc, -EPERM);
    assert_int_equal(c.put_rc, -EPERM);
    assert_int_equal(c.nowait_rc, 0);
    free_rt(rt);
    weft_queue_free(c.q);
}

/* Tasks of a standalone loop (woken through their loop, not a worker)
 * pass items through a 1-slot queue. */
static int sl_producer(void *arg, void **result)
{
    (void)result;
    weft_queue_t *q = arg;
    for (int i = 0; i < 100; i++)
        CHECK(&g_rec, weft_queue_put(q, ITEM(i)) == 0);
    CHECK(&g_rec, weft_queue_shutdown(q, false) == 0);
    return 0;
}

static int sl_consumer(void *arg, void **result)
{
    weft_queue_t *q = arg;
    int n = 0;
    for (;;) {
        void *item;
        int rc = weft_queue_get(q, &item);
        if (rc == WEFT_EQSHUTDOWN)
            break;
        CHECK(&g_rec, rc == 0 && NUM(item) == n);
        n++;
    }
    *result = ITEM(n);
    return 0;
}

typedef struct sl_spawn {
    weft_queue_t *q;
    weft_task_t *prod, *cons;
} sl_spawn_t;

static void sl_spawn_cb(void *arg)
{
    sl_spawn_t *s = arg;
    CHECK(&g_rec, weft_spawn(sl_consumer, s->q, NULL, &s->cons) == 0);
    CHECK(&g_rec, weft_spawn(sl_producer, s->q, NULL, &s->prod) == 0);
}

static void test_queue_between_tasks_of_a_standalone_loop(void **state)
{
    (void)state;
    weft_loop_t *loop = NULL;
    assert_int_equal(weft_loop_new(&loop), 0);
    sl_spawn_t s = {.q = new_queue(WEFT_QUEUE_FIFO, 1)};
    assert_int_equal(weft_loop_call_soon(loop, sl_spawn_cb, &s, NULL), 0);
    assert_int_equal(weft_loop_stop(loop), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0); /* one iteration: spawns */
    ASSERT_NO_FAILURE(&g_rec);
    assert_non_null(s.cons);
    assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(s.cons)), 0);
    assert_int_equal(weft_loop_run_until_complete(loop, weft_task_future(s.prod)), 0);
    ASSERT_NO_FAILURE(&g_rec);
    void *n = NULL;
    assert_int_equal(weft_future_result(weft_task_future(s.cons), &n), 0);
    assert_int_equal(NUM(n), 100);
    weft_task_release(s.cons);
    weft_task_release(s.prod);
    assert_int_equal(weft_loop_close(loop), 0);
    weft_loop_free(loop);
    weft_queue_free(s.q);
}

/* ======================================================================== */
/* Parallel                                                                  */
/* ======================================================================== */

/* Producers put numbered payloads through a small bounded queue to
 * consumers over 8 workers; a plain thread produces too (put_nowait,
 * retrying when full) and another consumes (get_nowait).  Every payload
 * carries a magic value and a consumed-once flag.  With `cancels`, a
 * plain thread and the consumers cancel random producers and consumers
 * all along: a cancelled put is retried with the same payload, a
 * cancelled get took nothing; still every payload arrives exactly once. */
#define MAGIC      0x51E7C0DEu
#define PRODUCERS  6
#define CONSUMERS  6
#define PER_TASK   4000
#define PER_THREAD 2000
#define MAXSIZE    4

typedef struct payload {
    uint32_t magic;
    int producer, seq;
    atomic_int consumed;
} payload_t;

typedef struct mpmc {
    weft_queue_t *q;
    bool cancels;
    payload_t *payloads; /* (PRODUCERS + 1) * PER_TASK */
    atomic_long got, cancelled_puts, cancelled_gets;
    atomic_int producers_left, done;
    _Atomic(weft_task_t *) live[PRODUCERS + CONSUMERS];
    weft_task_t *refs[PRODUCERS + CONSUMERS];
    atomic_int last_seq[PRODUCERS + 1][CONSUMERS + 1];
} mpmc_t;

typedef struct mpmc_arg {
    mpmc_t *m;
    int i;
} mpmc_arg_t;

static void consume(mpmc_t *m, void *item, int who)
{
    payload_t *pl = item;
    CHECK(&g_rec, pl != NULL && pl->magic == MAGIC);
    if (pl == NULL || pl->magic != MAGIC)
        return;
    CHECK(&g_rec, atomic_exchange(&pl->consumed, 1) == 0);
    /* One consumer sees each producer's items in put order (FIFO). */
    int prev = atomic_exchange(&m->last_seq[pl->producer][who], pl->seq);
    CHECK(&g_rec, prev < pl->seq);
    atomic_fetch_add(&m->got, 1);
}

static void uncancel_all(void)
{
    while (weft_task_uncancel(weft_current_task()) > 0) {
    }
}

static int producer(void *arg, void **result)
{
    (void)result;
    mpmc_arg_t *a = arg;
    mpmc_t *m = a->m;
    atomic_store(&m->live[a->i], weft_current_task());
    for (int s = 0; s < PER_TASK;) {
        payload_t *pl = &m->payloads[a->i * PER_TASK + s];
        int rc = weft_queue_put(m->q, pl);
        if (rc == WEFT_ECANCELED) {
            atomic_fetch_add(&m->cancelled_puts, 1);
            uncancel_all();
            continue;
        }
        CHECK(&g_rec, rc == 0);
        s++;
    }
    atomic_fetch_sub(&m->producers_left, 1);
    return 0;
}

static int consumer(void *arg, void **result)
{
    (void)result;
    mpmc_arg_t *a = arg;
    mpmc_t *m = a->m;
    atomic_store(&m->live[a->i], weft_current_task());
    unsigned s = (unsigned)a->i * 7919u + 1u;
    for (;;) {
        void *item = NULL;
        int rc = weft_queue_get(m->q, &item);
        if (rc == WEFT_EQSHUTDOWN)
            break;
        if (rc == WEFT_ECANCELED) {
            CHECK(&g_rec, item == NULL);
            atomic_fetch_add(&m->cancelled_gets, 1);
            uncancel_all();
            continue;
        }
        CHECK(&g_rec, rc == 0);
        consume(m, item, a->i - PRODUCERS);
        CHECK(&g_rec, weft_queue_task_done(m->q) == 0);
        s = s * 1103515245u + 12345u;
        if (m->cancels && (s >> 8) % 16 == 0) {
            weft_task_t *v = atomic_load(&m->live[(s >> 12) % (PRODUCERS + CONSUMERS)]);
            if (v != NULL && v != weft_current_task())
                (void)weft_task_cancel(v, NULL);
        }
    }
    return 0;
}

static int mpmc_driver(void *arg, void **result)
{
    (void)result;
    mpmc_t *m = arg;
    mpmc_arg_t args[PRODUCERS + CONSUMERS];
    for (int i = 0; i < PRODUCERS + CONSUMERS; i++) {
        args[i] = (mpmc_arg_t){m, i};
        m->refs[i] = spawn(i < PRODUCERS ? producer : consumer, &args[i]);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        int rc = weft_await(weft_task_future(m->refs[i]), NULL);
        CHECK(&g_rec, rc == 0 || rc == WEFT_ECANCELED); /* a late request */
    }
    /* Every produced item is in or through the queue; the plain thread
     * producer may still be at it. */
    AWAIT_TRUE(atomic_load(&m->producers_left) == 0);
    int rc = weft_queue_join(m->q);
    while (rc == WEFT_ECANCELED) {
        uncancel_all();
        rc = weft_queue_join(m->q);
    }
    CHECK(&g_rec, rc == 0);
    CHECK(&g_rec, weft_queue_shutdown(m->q, false) == 0);
    for (int i = PRODUCERS; i < PRODUCERS + CONSUMERS; i++) {
        int rc2 = weft_await(weft_task_future(m->refs[i]), NULL);
        CHECK(&g_rec, rc2 == 0 || rc2 == WEFT_ECANCELED);
    }
    atomic_store(&m->done, 1);
    return 0;
}

static void *plain_producer(void *arg)
{
    mpmc_t *m = arg;
    for (int s = 0; s < PER_THREAD;) {
        payload_t *pl = &m->payloads[PRODUCERS * PER_TASK + s];
        int rc = weft_queue_put_nowait(m->q, pl);
        if (rc == WEFT_EQUEUEFULL) {
            sched_yield();
            continue;
        }
        CHECK(&g_rec, rc == 0);
        s++;
    }
    atomic_fetch_sub(&m->producers_left, 1);
    return NULL;
}

static void *plain_consumer(void *arg)
{
    mpmc_t *m = arg;
    for (;;) {
        void *item = NULL;
        int rc = weft_queue_get_nowait(m->q, &item);
        if (rc == WEFT_EQSHUTDOWN)
            break;
        if (rc == WEFT_EQUEUEEMPTY) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
            continue;
        }
        CHECK(&g_rec, rc == 0);
        consume(m, item, CONSUMERS);
        CHECK(&g_rec, weft_queue_task_done(m->q) == 0);
    }
    return NULL;
}

static void *plain_canceller(void *arg)
{
    mpmc_t *m = arg;
    unsigned s = 99;
    while (!atomic_load(&m->done)) {
        s = s * 1103515245u + 12345u;
        weft_task_t *v = atomic_load(&m->live[(s >> 8) % (PRODUCERS + CONSUMERS)]);
        if (v != NULL)
            (void)weft_task_cancel(v, NULL);
        struct timespec ts = {0, 30000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void run_mpmc(bool cancels)
{
    weft_runtime_t *rt = new_rt(8);
    mpmc_t *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->q = new_queue(WEFT_QUEUE_FIFO, MAXSIZE);
    m->cancels = cancels;
    size_t total = (size_t)PRODUCERS * PER_TASK + PER_THREAD;
    m->payloads = calloc(total, sizeof *m->payloads);
    assert_non_null(m->payloads);
    for (size_t i = 0; i < total; i++) {
        m->payloads[i].magic = MAGIC;
        m->payloads[i].producer = (int)(i / PER_TASK);
        m->payloads[i].seq = (int)(i % PER_TASK);
    }
    for (int p = 0; p <= PRODUCERS; p++)
        for (int c = 0; c <= CONSUMERS; c++)
            atomic_init(&m->last_seq[p][c], -1);
    atomic_init(&m->producers_left, PRODUCERS + 1);
    pthread_t prod, cons, canc;
    assert_int_equal(pthread_create(&prod, NULL, plain_producer, m), 0);
    assert_int_equal(pthread_create(&cons, NULL, plain_consumer, m), 0);
    if (cancels)
        assert_int_equal(pthread_create(&canc, NULL, plain_canceller, m), 0);
    int rc = run_in(rt, mpmc_driver, m);
    atomic_store(&m->done, 1);
    pthread_join(prod, NULL);
    pthread_join(cons, NULL);
    if (cancels)
        pthread_join(canc, NULL);
    assert_int_equal(rc, 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&m->got), (long)total);
    for (size_t i = 0; i < total; i++)
        if (atomic_load(&m->payloads[i].consumed) != 1)
            fail_msg("payload %zu consumed %d times", i, atomic_load(&m->payloads[i].consumed));
    assert_int_equal(weft_queue_qsize(m->q), 0);
    assert_int_equal(weft_queue_task_done(m->q), -EINVAL);
    if (cancels)
        assert_true(atomic_load(&m->cancelled_puts) + atomic_load(&m->cancelled_gets) > 0);
    for (int i = 0; i < PRODUCERS + CONSUMERS; i++)
        weft_task_release(m->refs[i]);
    free_rt(rt);
    weft_queue_free(m->q);
    free(m->payloads);
    free(m);
}

static void test_queue_bounded_mpmc_over_8_workers_delivers_each_item_once(void **state)
{
    (void)state;
    run_mpmc(false);
}

static void test_queue_random_cancellations_never_lose_an_item(void **state)
{
    (void)state;
    run_mpmc(true);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        TEST(test_queue_argument_and_context_errors),
        TEST(test_queue_fifo_lifo_and_priority_orders),
        TEST(test_queue_nowait_full_and_empty_codes),
        TEST(test_queue_unbounded_queue_grows_and_keeps_order),
        TEST(test_queue_allocation_failures_are_enomem),
        TEST(test_queue_get_and_put_wait_only_when_they_must),
        TEST(test_queue_waiting_getters_and_putters_are_served_oldest_first),
        TEST(test_queue_woken_getter_that_finds_nothing_keeps_its_turn),
        TEST(test_queue_cancelled_waiters_take_and_put_nothing),
        TEST(test_queue_woken_and_cancelled_waiter_passes_the_wakeup_on),
        TEST(test_queue_join_waits_for_every_task_done),
        TEST(test_queue_shutdown_fails_puts_and_drains_gets),
        TEST(test_queue_shutdown_immediate_drops_items_and_releases_join),
        TEST(test_queue_free_with_a_waiter_is_refused_and_logged),
        TEST(test_queue_from_a_loop_callback),
        TEST(test_queue_between_tasks_of_a_standalone_loop),
        TEST(test_queue_bounded_mpmc_over_8_workers_delivers_each_item_once),
        TEST(test_queue_random_cancellations_never_lose_an_item),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
