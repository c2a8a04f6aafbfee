/* Test support for task-level tests: runtimes driven from the test thread,
 * numbered steps safe from any thread, and small clock helpers.
 *
 * The runtime helpers call cmocka asserts, so they run on the test thread
 * only.  Everything a task does is recorded with CHECK (check.h) and
 * asserted after the runtime has returned the driving task's outcome.
 * Include after <cmocka.h> and "test/support/check.h".
 */
#ifndef WEFT_TEST_TASKRUN_H
#define WEFT_TEST_TASKRUN_H

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "weft.h"

#define MS  INT64_C(1000000)
#define SEC (INT64_C(1000) * MS)

/* How long the test thread waits for anything before calling it a hang.
 * Generous: ThreadSanitizer builds on a loaded machine are slow. */
#define WAIT_LIMIT (30 * SEC)

static inline int64_t tr_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Block the calling plain thread for ms milliseconds. */
static inline void tr_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- runtimes ------------------------------------------------------------- */

static inline weft_runtime_t *tr_new_rt(unsigned workers)
{
    weft_config_t cfg = {.workers = workers};
    weft_runtime_t *rt = NULL;
    assert_int_equal(weft_runtime_new(&cfg, &rt), 0);
    assert_non_null(rt);
    return rt;
}

/* Submit fn(arg) from the test thread and block until it is done; returns
 * its outcome (and its result through *result when non-NULL). */
static inline int tr_run_in(weft_runtime_t *rt, weft_fn fn, void *arg, void **result)
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

static inline void tr_count_visit(weft_task_t *t, void *arg)
{
    (void)t;
    (*(int *)arg)++;
}

/* Shut down with every task finished (none abandoned), prove none is left,
 * free. */
static inline void tr_free_rt(weft_runtime_t *rt)
{
    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    int n = 0;
    assert_int_equal(weft_all_tasks(rt, tr_count_visit, &n), 0);
    assert_int_equal(n, 0);
    weft_runtime_free(rt);
}

/* ---- numbered steps (neco's order_add), safe from any thread ------------- */

#define TR_ORDER_MAX 64

typedef struct tr_order {
    atomic_int n;
    int steps[TR_ORDER_MAX];
} tr_order_t;

static inline void tr_order_init(tr_order_t *o)
{
    atomic_init(&o->n, 0);
    memset(o->steps, 0, sizeof o->steps);
}

static inline void tr_order_add(check_rec_t *rec, tr_order_t *o, int step)
{
    int i = atomic_fetch_add(&o->n, 1);
    CHECK(rec, i < TR_ORDER_MAX);
    if (i < TR_ORDER_MAX)
        o->steps[i] = step;
}

/* On the test thread. */
static inline void tr_order_check(tr_order_t *o, const int *want, int n)
{
    assert_int_equal(atomic_load(&o->n), n);
    for (int i = 0; i < n; i++) {
        if (o->steps[i] != want[i])
            fail_msg("step %d: expected %d, got %d", i, want[i], o->steps[i]);
    }
}

/* ---- small task bodies ------------------------------------------------------ */

/* Yield until *flag is non-zero (at most `limit` yields); true if it was
 * seen.  Inside a task. */
static inline bool tr_yield_until(atomic_int *flag, int limit)
{
    for (int i = 0; i < limit; i++) {
        if (atomic_load(flag) != 0)
            return true;
        if (weft_yield() != 0)
            return atomic_load(flag) != 0;
    }
    return atomic_load(flag) != 0;
}

/* Complete f with NULL on behalf of someone else's reference: a waiter
 * that sees f done may drop the last reference at once, while the
 * completer is still inside weft_future_set_result, so the completer
 * holds its own for the call.  Returns what set_result returned. */
static inline int tr_signal(weft_future_t *f)
{
    weft_future_retain(f);
    int rc = weft_future_set_result(f, NULL);
    weft_future_release(f);
    return rc;
}

static inline bool tr_streq(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}

#endif /* WEFT_TEST_TASKRUN_H */
