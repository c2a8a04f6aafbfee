/* Tests for the synchronization primitives (include/weft/sync.h): Lock,
 * Event, Condition, Semaphore / BoundedSemaphore and Barrier.
 *
 * asyncio's behaviours first (FIFO hand-off, locked() with queued and
 * cancelled waiters, notify(n) counts, barrier indices, abort and reset,
 * what a cancelled waiter does with a grant it received), each documented
 * return code, then parallel runs with tasks spread over 8 workers: a Lock
 * guarding a plain counter, a Semaphore's high-water mark, and random
 * cancellations from other tasks and from a plain thread that must never
 * lose a lock hand-off or a permit.
 *
 * Nothing here calls a cmocka assert inside a task or a helper thread:
 * they record with CHECK(&g_rec, ...) and the test thread calls
 * ASSERT_NO_FAILURE(&g_rec) once the task it waits for has returned
 * (STYLE.md, "Tests").  Every runtime is shut down with nothing abandoned
 * and no task left.
 *
 * Deterministic orders come from waiting until a waiter is queued
 * (weft__*_nwaiters, test hooks of sched/waitq.h) before starting the
 * next, or from a one-worker runtime where the driving task keeps the
 * worker until it suspends.
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

/* How long anything may take before it counts as a hang (TSan builds on a
 * loaded machine are slow). */
#define WAIT_LIMIT (30 * SEC)

static check_rec_t g_rec;

static char sentinel_obj;
#define SENTINEL ((void *)&sentinel_obj)

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

/* Inside a task: poll until cond holds (sleeping 50 us between looks);
 * a hang is recorded as a failure instead of blocking forever. */
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

/* ---- numbered steps, safe from any thread -------------------------------- */

#define ORDER_MAX 256

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

/* ---- runtimes -------------------------------------------------------------- */

static weft_runtime_t *new_rt(unsigned workers)
{
    weft_config_t cfg = {.workers = workers};
    weft_runtime_t *rt = NULL;
    assert_int_equal(weft_runtime_new(&cfg, &rt), 0);
    assert_non_null(rt);
    return rt;
}

/* Submit fn(arg) from the test thread, block until done, return its code. */
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

/* Inside a task: spawn fn(arg), keeping a reference. */
static weft_task_t *spawn(weft_fn fn, void *arg)
{
    weft_task_t *t = NULL;
    int rc = weft_spawn(fn, arg, NULL, &t);
    CHECK(&g_rec, rc == 0);
    return rc == 0 ? t : NULL;
}

/* Inside a task: await t, drop the reference, return its outcome. */
static int join(weft_task_t *t)
{
    if (t == NULL)
        return -EINVAL;
    int rc = weft_await(weft_task_future(t), NULL);
    weft_task_release(t);
    return rc;
}

/* A log handler that counts errors mentioning `needle`. */
static const char *log_needle;
static atomic_int log_hits;

static void count_log(int level, const char *message, void *arg)
{
    (void)arg;
    if (level == WEFT_LOG_ERROR && log_needle != NULL && strstr(message, log_needle) != NULL)
        atomic_fetch_add(&log_hits, 1);
}

/* ======================================================================== */
/* Lock                                                                      */
/* ======================================================================== */

static void test_lock_argument_and_context_errors(void **state)
{
    (void)state;
    assert_int_equal(weft_lock_new(NULL), -EINVAL);
    weft_lock_t *lk = SENTINEL;
    assert_int_equal(weft_lock_new(&lk), 0);
    assert_ptr_not_equal(lk, SENTINEL);

    /* Suspending call from a plain thread: refused, nothing changed. */
    assert_int_equal(weft_lock_acquire(lk), -EPERM);
    assert_false(weft_lock_locked(lk));
    assert_int_equal(weft_lock_acquire(NULL), -EPERM);

    assert_int_equal(weft_lock_release(NULL), -EINVAL);
    assert_int_equal(weft_lock_try_acquire(NULL), -EINVAL);
    assert_false(weft_lock_locked(NULL));
    weft_lock_free(NULL);

    /* In debug mode the refusal is logged, naming the function. */
    log_needle = "weft_lock_acquire";
    atomic_store(&log_hits, 0);
    assert_int_equal(weft_set_log_handler(count_log, NULL), 0);
    assert_int_equal(setenv("WEFT_DEBUG", "1", 1), 0);
    assert_int_equal(weft_lock_acquire(lk), -EPERM);
    assert_int_equal(unsetenv("WEFT_DEBUG"), 0);
    assert_int_equal(weft_lock_acquire(lk), -EPERM); /* not logged */
    assert_int_equal(weft_set_log_handler(NULL, NULL), 0);
    assert_int_equal(atomic_load(&log_hits), 1);

    /* asyncio: RuntimeError('Lock is not acquired.') */
    assert_int_equal(weft_lock_release(lk), WEFT_EINVALSTATE);
    /* Non-suspending calls work from a plain thread. */
    assert_int_equal(weft_lock_try_acquire(lk), 0);
    assert_true(weft_lock_locked(lk));
    assert_int_equal(weft_lock_try_acquire(lk), -EBUSY);
    assert_int_equal(weft_lock_release(lk), 0);
    assert_false(weft_lock_locked(lk));
    assert_int_equal(weft_lock_release(lk), WEFT_EINVALSTATE);
    weft_lock_free(lk);
}

typedef struct lock_basic {
    weft_lock_t *lk;
} lock_basic_t;

static int lock_basic_body(void *arg, void **result)
{
    (void)result;
    lock_basic_t *p = arg;
    CHECK(&g_rec, weft_lock_acquire(NULL) == -EINVAL);
    CHECK(&g_rec, !weft_lock_locked(p->lk));
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0);
    CHECK(&g_rec, weft_lock_locked(p->lk));
    CHECK(&g_rec, weft_lock_try_acquire(p->lk) == -EBUSY);
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    CHECK(&g_rec, !weft_lock_locked(p->lk));
    CHECK(&g_rec, weft_lock_release(p->lk) == WEFT_EINVALSTATE);
    /* Not owned (asyncio): taken here, released by the test thread. */
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0);
    return 0;
}

static void test_lock_acquire_and_release_in_a_task(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    lock_basic_t p;
    assert_int_equal(weft_lock_new(&p.lk), 0);
    assert_int_equal(run_in(rt, lock_basic_body, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_true(weft_lock_locked(p.lk));
    assert_int_equal(weft_lock_release(p.lk), 0);
    free_rt(rt);
    weft_lock_free(p.lk);
}

/* Waiters queued one by one (each seen queued before the next starts) get
 * the lock in that order, over 4 workers. */
typedef struct lock_fifo {
    weft_lock_t *lk;
    order_t order;
    int id;
    atomic_int next_id;
} lock_fifo_t;

static int lock_fifo_waiter(void *arg, void **result)
{
    (void)result;
    lock_fifo_t *p = arg;
    int id = atomic_fetch_add(&p->next_id, 1);
    int rc = weft_lock_acquire(p->lk);
    CHECK(&g_rec, rc == 0);
    order_add(&p->order, id);
    (void)weft_yield(); /* hold it across a suspension */
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    return rc;
}

#define FIFO_WAITERS 12

static int lock_fifo_driver(void *arg, void **result)
{
    (void)result;
    lock_fifo_t *p = arg;
    weft_task_t *t[FIFO_WAITERS];
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0);
    for (int i = 0; i < FIFO_WAITERS; i++) {
        t[i] = spawn(lock_fifo_waiter, p);
        AWAIT_TRUE(weft__lock_nwaiters(p->lk) == (size_t)i + 1);
    }
    order_add(&p->order, -1);
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    for (int i = 0; i < FIFO_WAITERS; i++)
        CHECK(&g_rec, join(t[i]) == 0);
    CHECK(&g_rec, !weft_lock_locked(p->lk));
    return 0;
}

static void test_lock_waiters_acquire_in_fifo_order(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    lock_fifo_t p;
    assert_int_equal(weft_lock_new(&p.lk), 0);
    order_init(&p.order);
    atomic_init(&p.next_id, 0);
    assert_int_equal(run_in(rt, lock_fifo_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    int want[FIFO_WAITERS + 1] = {-1};
    for (int i = 0; i < FIFO_WAITERS; i++)
        want[i + 1] = i;
    order_check(&p.order, want, FIFO_WAITERS + 1);
    free_rt(rt);
    weft_lock_free(p.lk);
}

/* Released with a waiter, the lock goes to that waiter: it stays locked,
 * try_acquire fails, and a task arriving now queues behind (asyncio's
 * fairness).  One worker: the waiter cannot run before the driver
 * suspends. */
typedef struct handoff {
    weft_lock_t *lk;
    order_t order;
} handoff_t;

static int handoff_first(void *arg, void **result)
{
    (void)result;
    handoff_t *p = arg;
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0);
    order_add(&p->order, 1);
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    return 0;
}

static int handoff_second(void *arg, void **result)
{
    (void)result;
    handoff_t *p = arg;
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0);
    order_add(&p->order, 2);
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    return 0;
}

static int handoff_driver(void *arg, void **result)
{
    (void)result;
    handoff_t *p = arg;
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0);
    weft_task_t *a = spawn(handoff_first, p);
    AWAIT_TRUE(weft__lock_nwaiters(p->lk) == 1);
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    /* Handed over: still locked, nobody queued, a newcomer must wait. */
    CHECK(&g_rec, weft_lock_locked(p->lk));
    CHECK(&g_rec, weft__lock_nwaiters(p->lk) == 0);
    CHECK(&g_rec, weft_lock_try_acquire(p->lk) == -EBUSY);
    weft_task_t *b = spawn(handoff_second, p);
    order_add(&p->order, 0);
    CHECK(&g_rec, join(a) == 0);
    CHECK(&g_rec, join(b) == 0);
    CHECK(&g_rec, !weft_lock_locked(p->lk));
    return 0;
}

static void test_lock_release_hands_the_lock_to_the_first_waiter(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    handoff_t p;
    assert_int_equal(weft_lock_new(&p.lk), 0);
    order_init(&p.order);
    assert_int_equal(run_in(rt, handoff_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    order_check(&p.order, (int[]){0, 1, 2}, 3);
    free_rt(rt);
    weft_lock_free(p.lk);
}

/* Cancelled while waiting: WEFT_ECANCELED, out of the queue, never held;
 * the waiter behind it gets the lock next. */
typedef struct lock_cancel {
    weft_lock_t *lk;
    int rc[3];
    atomic_int held_by;
} lock_cancel_t;

typedef struct lock_cancel_arg {
    lock_cancel_t *p;
    int i;
} lock_cancel_arg_t;

static int lock_cancel_waiter(void *arg, void **result)
{
    (void)result;
    lock_cancel_arg_t *a = arg;
    int rc = weft_lock_acquire(a->p->lk);
    a->p->rc[a->i] = rc;
    if (rc == 0) {
        atomic_store(&a->p->held_by, a->i);
        CHECK(&g_rec, weft_lock_release(a->p->lk) == 0);
    }
    return 0;
}

static int lock_cancel_driver(void *arg, void **result)
{
    (void)result;
    lock_cancel_t *p = arg;
    lock_cancel_arg_t args[2] = {{p, 0}, {p, 1}};
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0);
    weft_task_t *a = spawn(lock_cancel_waiter, &args[0]);
    AWAIT_TRUE(weft__lock_nwaiters(p->lk) == 1);
    weft_task_t *b = spawn(lock_cancel_waiter, &args[1]);
    AWAIT_TRUE(weft__lock_nwaiters(p->lk) == 2);
    CHECK(&g_rec, weft_task_cancel(a, "stop waiting") == 1);
    AWAIT_TRUE(weft__lock_nwaiters(p->lk) == 1);
    CHECK(&g_rec, join(a) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_ECANCELED);
    CHECK(&g_rec, weft_lock_locked(p->lk));
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    CHECK(&g_rec, join(b) == 0);
    CHECK(&g_rec, p->rc[1] == 0);
    CHECK(&g_rec, atomic_load(&p->held_by) == 1);
    return 0;
}

static void test_lock_cancelled_waiter_leaves_the_queue(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    lock_cancel_t p = {.rc = {1, 1, 1}};
    atomic_init(&p.held_by, -1);
    assert_int_equal(weft_lock_new(&p.lk), 0);
    assert_int_equal(run_in(rt, lock_cancel_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_false(weft_lock_locked(p.lk));
    free_rt(rt);
    weft_lock_free(p.lk);
}

/* Handed the lock and cancelled before it runs (one worker): asyncio's
 * rule, the cancellation wins and the lock goes on to the next waiter. */
static int lock_grant_cancel_driver(void *arg, void **result)
{
    (void)result;
    lock_cancel_t *p = arg;
    lock_cancel_arg_t args[2] = {{p, 0}, {p, 1}};
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0);
    weft_task_t *a = spawn(lock_cancel_waiter, &args[0]);
    AWAIT_TRUE(weft__lock_nwaiters(p->lk) == 1);
    weft_task_t *b = spawn(lock_cancel_waiter, &args[1]);
    AWAIT_TRUE(weft__lock_nwaiters(p->lk) == 2);
    CHECK(&g_rec, weft_lock_release(p->lk) == 0); /* granted to a */
    CHECK(&g_rec, weft__lock_nwaiters(p->lk) == 1);
    CHECK(&g_rec, weft_task_cancel(a, NULL) == 1); /* before a runs */
    CHECK(&g_rec, join(a) == 0);
    CHECK(&g_rec, join(b) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_ECANCELED);
    CHECK(&g_rec, p->rc[1] == 0);
    CHECK(&g_rec, atomic_load(&p->held_by) == 1);
    CHECK(&g_rec, !weft_lock_locked(p->lk));
    return 0;
}

static void test_lock_waiter_granted_and_cancelled_passes_the_lock_on(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    lock_cancel_t p = {.rc = {1, 1, 1}};
    atomic_init(&p.held_by, -1);
    assert_int_equal(weft_lock_new(&p.lk), 0);
    assert_int_equal(run_in(rt, lock_grant_cancel_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_lock_free(p.lk);
}

/* Only cancelled waiters queued: release leaves the lock free, and an
 * acquire takes it at once (asyncio: "jumping the queue if all are
 * cancelled"). */
static int lock_all_cancelled_driver(void *arg, void **result)
{
    (void)result;
    lock_cancel_t *p = arg;
    lock_cancel_arg_t args[1] = {{p, 0}};
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0);
    weft_task_t *a = spawn(lock_cancel_waiter, &args[0]);
    AWAIT_TRUE(weft__lock_nwaiters(p->lk) == 1);
    CHECK(&g_rec, weft_task_cancel(a, NULL) == 1); /* a cannot run yet */
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    CHECK(&g_rec, !weft_lock_locked(p->lk));
    CHECK(&g_rec, weft__lock_nwaiters(p->lk) == 1);
    CHECK(&g_rec, weft_lock_try_acquire(p->lk) == 0);
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0); /* no suspension */
    CHECK(&g_rec, weft__lock_nwaiters(p->lk) == 1);
    CHECK(&g_rec, join(a) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_ECANCELED);
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    return 0;
}

static void test_lock_with_only_cancelled_waiters_is_taken_at_once(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    lock_cancel_t p = {.rc = {1, 1, 1}};
    atomic_init(&p.held_by, -1);
    assert_int_equal(weft_lock_new(&p.lk), 0);
    assert_int_equal(run_in(rt, lock_all_cancelled_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_lock_free(p.lk);
}

/* A free lock is taken without suspending, so a pending cancellation is
 * not delivered there but at the next suspension point (asyncio). */
static int lock_pending_cancel_body(void *arg, void **result)
{
    (void)result;
    weft_lock_t *lk = arg;
    CHECK(&g_rec, weft_task_cancel(weft_current_task(), NULL) == 1);
    CHECK(&g_rec, weft_lock_acquire(lk) == 0);
    CHECK(&g_rec, weft_lock_release(lk) == 0);
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    CHECK(&g_rec, weft_task_uncancel(weft_current_task()) == 0);
    /* A request pending when acquire must wait is delivered there. */
    CHECK(&g_rec, weft_lock_acquire(lk) == 0);
    weft_lock_t *held = lk;
    CHECK(&g_rec, weft_task_cancel(weft_current_task(), NULL) == 1);
    CHECK(&g_rec, weft_lock_try_acquire(held) == -EBUSY);
    CHECK(&g_rec, weft_lock_release(held) == 0);
    CHECK(&g_rec, weft_lock_try_acquire(held) == 0);
    /* held now, so this acquire would wait: the request is delivered */
    CHECK(&g_rec, weft_lock_acquire(held) == WEFT_ECANCELED);
    CHECK(&g_rec, weft__lock_nwaiters(held) == 0);
    CHECK(&g_rec, weft_lock_release(held) == 0);
    CHECK(&g_rec, weft_task_uncancel(weft_current_task()) == 0);
    return 0;
}

static void test_lock_pending_cancel_is_delivered_only_when_acquire_waits(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    weft_lock_t *lk;
    assert_int_equal(weft_lock_new(&lk), 0);
    assert_int_equal(run_in(rt, lock_pending_cancel_body, lk), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_false(weft_lock_locked(lk));
    free_rt(rt);
    weft_lock_free(lk);
}

/* Freeing a primitive with a task waiting is refused with a log line; it
 * can be freed once the waiter has gone. */
typedef struct free_probe {
    weft_lock_t *lk;
    weft_event_t *ev;
    weft_sem_t *sem;
    weft_cond_t *cond;
    weft_barrier_t *bar;
    int rc[5];
} free_probe_t;

static int free_lock_waiter(void *arg, void **result)
{
    (void)result;
    free_probe_t *p = arg;
    p->rc[0] = weft_lock_acquire(p->lk);
    return 0;
}

static int free_event_waiter(void *arg, void **result)
{
    (void)result;
    free_probe_t *p = arg;
    p->rc[1] = weft_event_wait(p->ev);
    return 0;
}

static int free_sem_waiter(void *arg, void **result)
{
    (void)result;
    free_probe_t *p = arg;
    p->rc[2] = weft_sem_acquire(p->sem);
    return 0;
}

static int free_cond_waiter(void *arg, void **result)
{
    (void)result;
    free_probe_t *p = arg;
    CHECK(&g_rec, weft_cond_acquire(p->cond) == 0);
    p->rc[3] = weft_cond_wait(p->cond);
    CHECK(&g_rec, weft_cond_release(p->cond) == 0);
    return 0;
}

static int free_barrier_waiter(void *arg, void **result)
{
    (void)result;
    free_probe_t *p = arg;
    p->rc[4] = weft_barrier_wait(p->bar, NULL);
    return 0;
}

static int free_driver(void *arg, void **result)
{
    (void)result;
    free_probe_t *p = arg;
    CHECK(&g_rec, weft_lock_acquire(p->lk) == 0);
    weft_task_t *t[5] = {spawn(free_lock_waiter, p), spawn(free_event_waiter, p),
                         spawn(free_sem_waiter, p), spawn(free_cond_waiter, p),
                         spawn(free_barrier_waiter, p)};
    AWAIT_TRUE(weft__lock_nwaiters(p->lk) == 1);
    AWAIT_TRUE(weft__event_nwaiters(p->ev) == 1);
    AWAIT_TRUE(weft__sem_nwaiters(p->sem) == 1);
    AWAIT_TRUE(weft__cond_nwaiters(p->cond) == 1);
    AWAIT_TRUE(weft__barrier_nwaiters(p->bar) == 1);
    weft_lock_free(p->lk);
    weft_event_free(p->ev);
    weft_sem_free(p->sem);
    weft_cond_free(p->cond);
    weft_barrier_free(p->bar);
    CHECK(&g_rec, atomic_load(&log_hits) == 5);
    /* Still usable: wake everyone. */
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    CHECK(&g_rec, weft_event_set(p->ev) == 0);
    CHECK(&g_rec, weft_sem_release(p->sem) == 0);
    CHECK(&g_rec, weft_cond_try_acquire(p->cond) == 0);
    CHECK(&g_rec, weft_cond_notify_all(p->cond) == 1);
    CHECK(&g_rec, weft_cond_release(p->cond) == 0);
    CHECK(&g_rec, weft_barrier_abort(p->bar) == 0);
    for (int i = 0; i < 5; i++)
        CHECK(&g_rec, join(t[i]) == 0);
    CHECK(&g_rec, p->rc[0] == 0 && p->rc[1] == 0 && p->rc[2] == 0 && p->rc[3] == 0);
    CHECK(&g_rec, p->rc[4] == WEFT_EBROKEN);
    CHECK(&g_rec, weft_lock_release(p->lk) == 0);
    return 0;
}

static void test_sync_free_with_waiters_is_refused_and_logged(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    free_probe_t p = {.rc = {1, 1, 1, 1, 1}};
    assert_int_equal(weft_lock_new(&p.lk), 0);
    assert_int_equal(weft_event_new(&p.ev), 0);
    assert_int_equal(weft_sem_new(0, false, &p.sem), 0);
    assert_int_equal(weft_cond_new(NULL, &p.cond), 0);
    assert_int_equal(weft_barrier_new(2, &p.bar), 0);
    log_needle = "not freed";
    atomic_store(&log_hits, 0);
    assert_int_equal(weft_set_log_handler(count_log, NULL), 0);
    int rc = run_in(rt, free_driver, &p);
    assert_int_equal(weft_set_log_handler(NULL, NULL), 0);
    assert_int_equal(rc, 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_lock_free(p.lk);
    weft_event_free(p.ev);
    weft_sem_free(p.sem);
    weft_cond_free(p.cond);
    weft_barrier_free(p.bar);
    assert_int_equal(atomic_load(&log_hits), 5);
}

/* Every constructor reports a failed allocation as -ENOMEM and leaves its
 * out-param alone; a condition whose own lock cannot be made frees what it
 * had (ASan checks the leak).  The allocation seam is process-wide, so no
 * runtime runs here. */
static void test_sync_constructors_report_enomem(void **state)
{
    (void)state;
    for (long nth = 1; nth <= 2; nth++) {
        weft_lock_t *lk = SENTINEL;
        weft__alloc_fail_nth(nth);
        int rc = weft_lock_new(&lk);
        weft__alloc_fail_nth(0);
        if (nth == 1) {
            assert_int_equal(rc, -ENOMEM);
            assert_ptr_equal(lk, SENTINEL);
        } else {
            assert_int_equal(rc, 0); /* one allocation only */
            weft_lock_free(lk);
        }
        weft_cond_t *c = SENTINEL;
        weft__alloc_fail_nth(nth); /* 1: the condition, 2: its own lock */
        rc = weft_cond_new(NULL, &c);
        weft__alloc_fail_nth(0);
        assert_int_equal(rc, -ENOMEM);
        assert_ptr_equal(c, SENTINEL);
    }
    weft_event_t *e = SENTINEL;
    weft_sem_t *s = SENTINEL;
    weft_barrier_t *b = SENTINEL;
    weft_cond_t *c = SENTINEL;
    weft_lock_t *shared;
    assert_int_equal(weft_lock_new(&shared), 0);
    weft__alloc_fail_nth(1);
    assert_int_equal(weft_event_new(&e), -ENOMEM);
    weft__alloc_fail_nth(1);
    assert_int_equal(weft_sem_new(1, true, &s), -ENOMEM);
    weft__alloc_fail_nth(1);
    assert_int_equal(weft_barrier_new(2, &b), -ENOMEM);
    weft__alloc_fail_nth(1);
    assert_int_equal(weft_cond_new(shared, &c), -ENOMEM);
    weft__alloc_fail_nth(0);
    assert_ptr_equal(e, SENTINEL);
    assert_ptr_equal(s, SENTINEL);
    assert_ptr_equal(b, SENTINEL);
    assert_ptr_equal(c, SENTINEL);
    weft_lock_free(shared);
}

/* 1 000 000 increments of a plain int under the lock, by 16 tasks over 8
 * workers (on however few cores), end exact. */
#define COUNTER_TASKS 16
#define COUNTER_TOTAL 1000000

typedef struct counter {
    weft_lock_t *lk;
    long value; /* plain: only the lock protects it */
    atomic_int inside;
    atomic_int overlaps;
} counter_t;

static int counter_body(void *arg, void **result)
{
    (void)result;
    counter_t *c = arg;
    for (int i = 0; i < COUNTER_TOTAL / COUNTER_TASKS; i++) {
        int rc = weft_lock_acquire(c->lk);
        CHECK(&g_rec, rc == 0);
        if (rc != 0)
            return rc;
        if (atomic_fetch_add_explicit(&c->inside, 1, memory_order_relaxed) != 0)
            atomic_fetch_add(&c->overlaps, 1);
        c->value++;
        atomic_fetch_sub_explicit(&c->inside, 1, memory_order_relaxed);
        CHECK(&g_rec, weft_lock_release(c->lk) == 0);
        if (i % 4096 == 0)
            (void)weft_yield();
    }
    return 0;
}

static int counter_driver(void *arg, void **result)
{
    (void)result;
    weft_task_t *t[COUNTER_TASKS];
    for (int i = 0; i < COUNTER_TASKS; i++)
        t[i] = spawn(counter_body, arg);
    for (int i = 0; i < COUNTER_TASKS; i++)
        CHECK(&g_rec, join(t[i]) == 0);
    return 0;
}

static void test_lock_guards_a_plain_counter_over_8_workers(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(8);
    counter_t c = {.value = 0};
    atomic_init(&c.inside, 0);
    atomic_init(&c.overlaps, 0);
    assert_int_equal(weft_lock_new(&c.lk), 0);
    assert_int_equal(run_in(rt, counter_driver, &c), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(c.value, COUNTER_TOTAL);
    assert_int_equal(atomic_load(&c.overlaps), 0);
    assert_false(weft_lock_locked(c.lk));
    free_rt(rt);
    weft_lock_free(c.lk);
}

/* ======================================================================== */
/* Random cancellations (Lock and Semaphore)                                 */
/* ======================================================================== */

/* Workers loop on acquire/release of a lock or a semaphore while a plain
 * thread and the workers themselves cancel random workers.  A cancelled
 * acquire holds nothing; every successful one is released once.  At the
 * end the lock is free / every permit is back, the plain counter equals
 * the successes, and the occupancy never went past the limit. */
#define CX_TASKS   12
#define CX_ROUNDS  3000
#define CX_PERMITS 3

typedef struct cx {
    weft_lock_t *lk; /* or: */
    weft_sem_t *sem;
    weft_task_t *tasks[CX_TASKS];          /* references, released by the test */
    _Atomic(weft_task_t *) live[CX_TASKS]; /* published by each task once it runs */
    atomic_int inside, high, cancels, done;
    long value; /* protected by lk / counted by successes when sem */
    atomic_long successes;
    atomic_uint seed;
} cx_t;

typedef struct cx_arg {
    cx_t *c;
    int i;
} cx_arg_t;

static uint32_t cx_rand(atomic_uint *seed)
{
    /* A shared LCG is enough to pick victims; races only skip numbers. */
    uint32_t s = atomic_load_explicit(seed, memory_order_relaxed) * 1664525u + 1013904223u;
    atomic_store_explicit(seed, s, memory_order_relaxed);
    return s >> 8;
}

static int cx_body(void *arg, void **result)
{
    (void)result;
    cx_arg_t *a = arg;
    cx_t *c = a->c;
    weft_task_t *self = weft_current_task();
    /* Published only once running: a task cancelled before its first step
     * never runs its body (asyncio), which would lose its rounds. */
    atomic_store(&c->live[a->i], self);
    int limit = c->lk != NULL ? 1 : CX_PERMITS;
    for (int i = 0; i < CX_ROUNDS;) {
        int rc = c->lk != NULL ? weft_lock_acquire(c->lk) : weft_sem_acquire(c->sem);
        if (rc == WEFT_ECANCELED) {
            atomic_fetch_add(&c->cancels, 1);
            while (weft_task_uncancel(self) > 0) {
            }
            continue;
        }
        CHECK(&g_rec, rc == 0);
        int in = atomic_fetch_add(&c->inside, 1) + 1;
        int hi = atomic_load(&c->high);
        while (in > hi && !atomic_compare_exchange_weak(&c->high, &hi, in)) {
        }
        CHECK(&g_rec, in <= limit);
        if (c->lk != NULL)
            c->value++;
        atomic_fetch_add(&c->successes, 1);
        if (i % 7 == 0) {
            /* Hold it across a suspension; a request landing here is
             * delivered by the yield, which must not lose the hold. */
            if (weft_yield() == WEFT_ECANCELED) {
                atomic_fetch_add(&c->cancels, 1);
                while (weft_task_uncancel(self) > 0) {
                }
            }
        }
        atomic_fetch_sub(&c->inside, 1);
        CHECK(&g_rec, (c->lk != NULL ? weft_lock_release(c->lk) : weft_sem_release(c->sem)) == 0);
        if (i % 5 == 0) {
            weft_task_t *victim = atomic_load(&c->live[cx_rand(&c->seed) % CX_TASKS]);
            if (victim != NULL && victim != self)
                (void)weft_task_cancel(victim, NULL);
        }
        i++;
    }
    return 0;
}

static int cx_driver(void *arg, void **result)
{
    (void)result;
    cx_t *c = arg;
    cx_arg_t args[CX_TASKS];
    for (int i = 0; i < CX_TASKS; i++) {
        args[i] = (cx_arg_t){c, i};
        c->tasks[i] = spawn(cx_body, &args[i]); /* the test thread releases it */
    }
    for (int i = 0; i < CX_TASKS; i++) {
        weft_task_t *t = c->tasks[i];
        /* A request that arrived after the last suspension ends the task
         * cancelled; its work is counted in the shared counters. */
        int rc = weft_await(weft_task_future(t), NULL);
        CHECK(&g_rec, rc == 0 || rc == WEFT_ECANCELED);
    }
    atomic_store(&c->done, 1);
    return 0;
}

static void *cx_canceller(void *arg)
{
    cx_t *c = arg;
    uint32_t s = 12345;
    while (!atomic_load(&c->done)) {
        s = s * 1664525u + 1013904223u;
        weft_task_t *victim = atomic_load(&c->live[(s >> 8) % CX_TASKS]);
        if (victim != NULL)
            (void)weft_task_cancel(victim, NULL);
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void run_cx(cx_t *c)
{
    weft_runtime_t *rt = new_rt(8);
    atomic_init(&c->inside, 0);
    atomic_init(&c->high, 0);
    atomic_init(&c->cancels, 0);
    atomic_init(&c->done, 0);
    atomic_init(&c->successes, 0);
    atomic_init(&c->seed, 42);
    for (int i = 0; i < CX_TASKS; i++) {
        c->tasks[i] = NULL;
        atomic_init(&c->live[i], NULL);
    }
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, cx_canceller, c), 0);
    int rc = run_in(rt, cx_driver, c);
    atomic_store(&c->done, 1);
    pthread_join(th, NULL);
    assert_int_equal(rc, 0);
    ASSERT_NO_FAILURE(&g_rec);
    for (int i = 0; i < CX_TASKS; i++)
        weft_task_release(c->tasks[i]);
    free_rt(rt);
    assert_int_equal(atomic_load(&c->successes), (long)CX_TASKS * CX_ROUNDS);
    assert_int_equal(atomic_load(&c->inside), 0);
    assert_true(atomic_load(&c->cancels) > 0);
}

static void test_lock_random_cancellations_never_lose_the_lock(void **state)
{
    (void)state;
    cx_t c = {.value = 0};
    assert_int_equal(weft_lock_new(&c.lk), 0);
    run_cx(&c);
    assert_int_equal(c.value, (long)CX_TASKS * CX_ROUNDS);
    assert_int_equal(atomic_load(&c.high), 1);
    assert_false(weft_lock_locked(c.lk));
    assert_int_equal(weft__lock_nwaiters(c.lk), 0);
    weft_lock_free(c.lk);
}

static void test_sem_random_cancellations_never_lose_a_permit(void **state)
{
    (void)state;
    cx_t c = {.value = 0};
    assert_int_equal(weft_sem_new(CX_PERMITS, true, &c.sem), 0);
    run_cx(&c);
    assert_true(atomic_load(&c.high) <= CX_PERMITS);
    assert_int_equal(weft_sem_value(c.sem), CX_PERMITS);
    assert_false(weft_sem_locked(c.sem));
    assert_int_equal(weft_sem_release(c.sem), -EINVAL); /* all back: bound */
    weft_sem_free(c.sem);
}

/* ======================================================================== */
/* Event                                                                     */
/* ======================================================================== */

static void test_event_argument_and_context_errors(void **state)
{
    (void)state;
    assert_int_equal(weft_event_new(NULL), -EINVAL);
    assert_int_equal(weft_event_set(NULL), -EINVAL);
    assert_int_equal(weft_event_clear(NULL), -EINVAL);
    assert_false(weft_event_is_set(NULL));
    weft_event_free(NULL);
    weft_event_t *e;
    assert_int_equal(weft_event_new(&e), 0);
    assert_int_equal(weft_event_wait(e), -EPERM);
    assert_int_equal(weft_event_wait(NULL), -EPERM);
    assert_false(weft_event_is_set(e));
    assert_int_equal(weft_event_set(e), 0); /* from a plain thread */
    assert_true(weft_event_is_set(e));
    assert_int_equal(weft_event_set(e), 0);
    assert_int_equal(weft_event_clear(e), 0);
    assert_false(weft_event_is_set(e));
    weft_event_free(e);
}

typedef struct ev_probe {
    weft_event_t *ev;
    atomic_int woken;
    int rc[8];
} ev_probe_t;

typedef struct ev_arg {
    ev_probe_t *p;
    int i;
} ev_arg_t;

static int ev_waiter(void *arg, void **result)
{
    (void)result;
    ev_arg_t *a = arg;
    a->p->rc[a->i] = weft_event_wait(a->p->ev);
    atomic_fetch_add(&a->p->woken, 1);
    return 0;
}

/* set wakes every waiter; one woken and then cleared still returns 0
 * (asyncio: the wait's future is already done); a wait on a set event
 * returns at once; after clear, waits block again. */
static int ev_driver(void *arg, void **result)
{
    (void)result;
    ev_probe_t *p = arg;
    ev_arg_t args[5];
    weft_task_t *t[5];
    CHECK(&g_rec, weft_event_wait(NULL) == -EINVAL);
    for (int i = 0; i < 4; i++) {
        args[i] = (ev_arg_t){p, i};
        t[i] = spawn(ev_waiter, &args[i]);
    }
    AWAIT_TRUE(weft__event_nwaiters(p->ev) == 4);
    CHECK(&g_rec, atomic_load(&p->woken) == 0);
    CHECK(&g_rec, weft_event_set(p->ev) == 0);
    CHECK(&g_rec, weft_event_clear(p->ev) == 0); /* before they ran, maybe */
    for (int i = 0; i < 4; i++)
        CHECK(&g_rec, join(t[i]) == 0);
    for (int i = 0; i < 4; i++)
        CHECK(&g_rec, p->rc[i] == 0);
    /* Cleared: a new waiter blocks until the next set. */
    args[4] = (ev_arg_t){p, 4};
    t[4] = spawn(ev_waiter, &args[4]);
    AWAIT_TRUE(weft__event_nwaiters(p->ev) == 1);
    CHECK(&g_rec, atomic_load(&p->woken) == 4);
    CHECK(&g_rec, weft_event_set(p->ev) == 0);
    CHECK(&g_rec, join(t[4]) == 0);
    CHECK(&g_rec, p->rc[4] == 0);
    /* Set: returns at once, a pending cancellation is not delivered. */
    CHECK(&g_rec, weft_task_cancel(weft_current_task(), NULL) == 1);
    CHECK(&g_rec, weft_event_wait(p->ev) == 0);
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    CHECK(&g_rec, weft_task_uncancel(weft_current_task()) == 0);
    return 0;
}

static void test_event_set_wakes_every_waiter_and_clear_rearms(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    ev_probe_t p = {.rc = {1, 1, 1, 1, 1, 1, 1, 1}};
    atomic_init(&p.woken, 0);
    assert_int_equal(weft_event_new(&p.ev), 0);
    assert_int_equal(run_in(rt, ev_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_event_free(p.ev);
}

/* Cancelled while waiting: WEFT_ECANCELED, the others still wake on set;
 * set and cancelled before running (one worker): the cancellation wins. */
static int ev_cancel_driver(void *arg, void **result)
{
    (void)result;
    ev_probe_t *p = arg;
    ev_arg_t args[3] = {{p, 0}, {p, 1}, {p, 2}};
    weft_task_t *t[3];
    for (int i = 0; i < 3; i++)
        t[i] = spawn(ev_waiter, &args[i]);
    AWAIT_TRUE(weft__event_nwaiters(p->ev) == 3);
    CHECK(&g_rec, weft_task_cancel(t[0], NULL) == 1);
    CHECK(&g_rec, join(t[0]) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_ECANCELED);
    CHECK(&g_rec, weft__event_nwaiters(p->ev) == 2);
    CHECK(&g_rec, weft_event_set(p->ev) == 0);
    CHECK(&g_rec, weft_task_cancel(t[1], NULL) == 1); /* t[1] has not run */
    CHECK(&g_rec, join(t[1]) == 0);
    CHECK(&g_rec, join(t[2]) == 0);
    CHECK(&g_rec, p->rc[1] == WEFT_ECANCELED);
    CHECK(&g_rec, p->rc[2] == 0);
    return 0;
}

static void test_event_cancelled_waiter_returns_ecanceled(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    ev_probe_t p = {.rc = {1, 1, 1}};
    atomic_init(&p.woken, 0);
    assert_int_equal(weft_event_new(&p.ev), 0);
    assert_int_equal(run_in(rt, ev_cancel_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_event_free(p.ev);
}

/* set from a plain thread wakes tasks waiting on other workers. */
static int ev_many_driver(void *arg, void **result)
{
    (void)result;
    ev_probe_t *p = arg;
    ev_arg_t args[8];
    weft_task_t *t[8];
    for (int i = 0; i < 8; i++) {
        args[i] = (ev_arg_t){p, i};
        t[i] = spawn(ev_waiter, &args[i]);
    }
    for (int i = 0; i < 8; i++)
        CHECK(&g_rec, join(t[i]) == 0);
    return 0;
}

static void test_event_set_from_a_plain_thread_wakes_tasks(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(8);
    ev_probe_t p = {.rc = {1, 1, 1, 1, 1, 1, 1, 1}};
    atomic_init(&p.woken, 0);
    assert_int_equal(weft_event_new(&p.ev), 0);
    weft_future_t *f;
    assert_int_equal(weft_runtime_submit(rt, ev_many_driver, &p, &f), 0);
    int64_t dl = now_ns() + WAIT_LIMIT;
    while (weft__event_nwaiters(p.ev) < 8 && now_ns() < dl) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(weft__event_nwaiters(p.ev), 8);
    assert_int_equal(weft_event_set(p.ev), 0);
    assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
    assert_int_equal(weft_future_result(f, NULL), 0);
    weft_future_release(f);
    ASSERT_NO_FAILURE(&g_rec);
    for (int i = 0; i < 8; i++)
        assert_int_equal(p.rc[i], 0);
    free_rt(rt);
    weft_event_free(p.ev);
}

/* ======================================================================== */
/* Condition                                                                 */
/* ======================================================================== */

static void test_cond_argument_and_context_errors(void **state)
{
    (void)state;
    weft_cond_t *c;
    assert_int_equal(weft_cond_new(NULL, NULL), -EINVAL);
    assert_int_equal(weft_cond_new(NULL, &c), 0);
    assert_int_equal(weft_cond_acquire(c), -EPERM);
    assert_int_equal(weft_cond_wait(c), -EPERM);
    assert_int_equal(weft_cond_wait_for(c, NULL, NULL), -EPERM);
    assert_int_equal(weft_cond_acquire(NULL), -EPERM);
    assert_int_equal(weft_cond_release(NULL), -EINVAL);
    assert_int_equal(weft_cond_try_acquire(NULL), -EINVAL);
    assert_int_equal(weft_cond_notify(NULL, 1), -EINVAL);
    assert_int_equal(weft_cond_notify_all(NULL), -EINVAL);
    assert_false(weft_cond_locked(NULL));
    weft_cond_free(NULL);
    /* asyncio: RuntimeError('cannot notify on un-acquired lock') */
    assert_int_equal(weft_cond_notify(c, 1), WEFT_EINVALSTATE);
    assert_int_equal(weft_cond_notify_all(c), WEFT_EINVALSTATE);
    assert_int_equal(weft_cond_release(c), WEFT_EINVALSTATE);
    /* From a plain thread once the lock is held. */
    assert_int_equal(weft_cond_try_acquire(c), 0);
    assert_true(weft_cond_locked(c));
    assert_int_equal(weft_cond_notify(c, 1), 0);
    assert_int_equal(weft_cond_notify(c, 0), 0);
    assert_int_equal(weft_cond_notify(c, -3), 0);
    assert_int_equal(weft_cond_notify_all(c), 0);
    assert_int_equal(weft_cond_release(c), 0);
    weft_cond_free(c);

    /* Over a shared lock, which the condition does not free. */
    weft_lock_t *lk;
    assert_int_equal(weft_lock_new(&lk), 0);
    assert_int_equal(weft_cond_new(lk, &c), 0);
    assert_int_equal(weft_lock_try_acquire(lk), 0);
    assert_true(weft_cond_locked(c));
    assert_int_equal(weft_cond_release(c), 0);
    assert_false(weft_lock_locked(lk));
    weft_cond_free(c);
    weft_lock_free(lk);
}

typedef struct cv {
    weft_lock_t *lk; /* the condition's lock when the test made it */
    weft_cond_t *c;
    order_t order;
    int rc[8];
    bool lock_held_after[8];
    int ready; /* protected by the condition's lock */
} cv_t;

typedef struct cv_arg {
    cv_t *p;
    int i;
} cv_arg_t;

static int cv_waiter(void *arg, void **result)
{
    (void)result;
    cv_arg_t *a = arg;
    CHECK(&g_rec, weft_cond_acquire(a->p->c) == 0);
    a->p->rc[a->i] = weft_cond_wait(a->p->c);
    a->p->lock_held_after[a->i] = weft_cond_locked(a->p->c);
    order_add(&a->p->order, a->i);
    CHECK(&g_rec, weft_cond_release(a->p->c) == 0);
    return 0;
}

static int cv_errors_body(void *arg, void **result)
{
    (void)result;
    cv_t *p = arg;
    /* asyncio: RuntimeError('cannot wait on un-acquired lock') */
    CHECK(&g_rec, weft_cond_wait(p->c) == WEFT_EINVALSTATE);
    CHECK(&g_rec, weft_cond_wait(NULL) == -EINVAL);
    CHECK(&g_rec, weft_cond_wait_for(NULL, NULL, NULL) == -EINVAL);
    CHECK(&g_rec, weft_cond_wait_for(p->c, NULL, NULL) == -EINVAL);
    CHECK(&g_rec, weft_cond_acquire(NULL) == -EINVAL);
    return 0;
}

static void test_cond_wait_without_the_lock_is_einvalstate(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    cv_t p = {0};
    assert_int_equal(weft_cond_new(NULL, &p.c), 0);
    assert_int_equal(run_in(rt, cv_errors_body, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_cond_free(p.c);
}

/* Five waiters queued in order: notify(2) wakes exactly the first two and
 * returns 2, notify(1) the third; notify_all the last two; every wait
 * returns with the lock held. */
static int cv_notify_driver(void *arg, void **result)
{
    (void)result;
    cv_t *p = arg;
    cv_arg_t args[5];
    weft_task_t *t[5];
    for (int i = 0; i < 5; i++) {
        args[i] = (cv_arg_t){p, i};
        t[i] = spawn(cv_waiter, &args[i]);
        AWAIT_TRUE(weft__cond_nwaiters(p->c) == (size_t)i + 1);
    }
    CHECK(&g_rec, weft_cond_acquire(p->c) == 0);
    CHECK(&g_rec, weft_cond_notify(p->c, 2) == 2);
    CHECK(&g_rec, weft__cond_nwaiters(p->c) == 3);
    CHECK(&g_rec, weft_cond_release(p->c) == 0);
    CHECK(&g_rec, join(t[0]) == 0);
    CHECK(&g_rec, join(t[1]) == 0);
    CHECK(&g_rec, atomic_load(&p->order.n) == 2);
    CHECK(&g_rec, weft_cond_acquire(p->c) == 0);
    CHECK(&g_rec, weft_cond_notify(p->c, 1) == 1);
    CHECK(&g_rec, weft_cond_release(p->c) == 0);
    CHECK(&g_rec, join(t[2]) == 0);
    CHECK(&g_rec, atomic_load(&p->order.n) == 3);
    CHECK(&g_rec, weft_cond_acquire(p->c) == 0);
    CHECK(&g_rec, weft_cond_notify_all(p->c) == 2);
    CHECK(&g_rec, weft_cond_notify_all(p->c) == 0);
    CHECK(&g_rec, weft_cond_release(p->c) == 0);
    CHECK(&g_rec, join(t[3]) == 0);
    CHECK(&g_rec, join(t[4]) == 0);
    for (int i = 0; i < 5; i++) {
        CHECK(&g_rec, p->rc[i] == 0);
        CHECK(&g_rec, p->lock_held_after[i]);
    }
    return 0;
}

static void test_cond_notify_n_wakes_exactly_n_in_fifo_order(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    cv_t p = {0};
    order_init(&p.order);
    assert_int_equal(weft_cond_new(NULL, &p.c), 0);
    assert_int_equal(run_in(rt, cv_notify_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    order_check(&p.order, (int[]){0, 1, 2, 3, 4}, 5);
    free_rt(rt);
    weft_cond_free(p.c);
}

/* wait_for: the predicate is checked first and after each wake, with the
 * lock held; notifies that leave it false do not end the wait. */
static bool cv_ready_3(void *arg)
{
    cv_t *p = arg;
    CHECK(&g_rec, weft_cond_locked(p->c));
    return p->ready >= 3;
}

static int cv_wait_for_waiter(void *arg, void **result)
{
    (void)result;
    cv_t *p = arg;
    CHECK(&g_rec, weft_cond_acquire(p->c) == 0);
    p->rc[0] = weft_cond_wait_for(p->c, cv_ready_3, p);
    CHECK(&g_rec, p->ready == 3);
    CHECK(&g_rec, weft_cond_release(p->c) == 0);
    return 0;
}

static int cv_wait_for_driver(void *arg, void **result)
{
    (void)result;
    cv_t *p = arg;
    weft_task_t *t = spawn(cv_wait_for_waiter, p);
    for (int i = 1; i <= 3; i++) {
        AWAIT_TRUE(weft__cond_nwaiters(p->c) == 1);
        CHECK(&g_rec, weft_cond_acquire(p->c) == 0);
        p->ready = i;
        CHECK(&g_rec, weft_cond_notify(p->c, 1) == 1);
        CHECK(&g_rec, weft_cond_release(p->c) == 0);
    }
    CHECK(&g_rec, join(t) == 0);
    CHECK(&g_rec, p->rc[0] == 0);
    /* True at once: no wait, even with a request pending. */
    CHECK(&g_rec, weft_cond_acquire(p->c) == 0);
    CHECK(&g_rec, weft_task_cancel(weft_current_task(), NULL) == 1);
    CHECK(&g_rec, weft_cond_wait_for(p->c, cv_ready_3, p) == 0);
    CHECK(&g_rec, weft_cond_release(p->c) == 0);
    CHECK(&g_rec, weft_yield() == WEFT_ECANCELED);
    CHECK(&g_rec, weft_task_uncancel(weft_current_task()) == 0);
    return 0;
}

static void test_cond_wait_for_rechecks_the_predicate_after_each_notify(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    cv_t p = {.rc = {1}};
    order_init(&p.order);
    assert_int_equal(weft_cond_new(NULL, &p.c), 0);
    assert_int_equal(run_in(rt, cv_wait_for_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_cond_free(p.c);
}

/* Cancelled while waiting: the wait re-acquires the lock before returning
 * WEFT_ECANCELED — also when the lock is busy then, and also when a second
 * request arrives while it re-acquires. */
static int cv_cancel_driver(void *arg, void **result)
{
    (void)result;
    cv_t *p = arg;
    cv_arg_t a0 = {p, 0};
    weft_task_t *t = spawn(cv_waiter, &a0);
    AWAIT_TRUE(weft__cond_nwaiters(p->c) == 1);
    CHECK(&g_rec, weft_cond_acquire(p->c) == 0); /* make re-acquiring wait */
    CHECK(&g_rec, weft_task_cancel(t, NULL) == 1);
    AWAIT_TRUE(weft__cond_nwaiters(p->c) == 0);
    AWAIT_TRUE(weft__lock_nwaiters(p->lk) == 1); /* queued for the lock */
    CHECK(&g_rec, atomic_load(&p->order.n) == 0);
    CHECK(&g_rec, weft_task_cancel(t, NULL) == 1); /* kept for later */
    (void)weft_sleep(2 * MS);
    CHECK(&g_rec, atomic_load(&p->order.n) == 0);
    CHECK(&g_rec, weft_cond_release(p->c) == 0);
    CHECK(&g_rec, join(t) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_ECANCELED);
    CHECK(&g_rec, p->lock_held_after[0]);
    CHECK(&g_rec, !weft_cond_locked(p->c));
    return 0;
}

static void test_cond_cancelled_wait_reacquires_the_lock(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    cv_t p = {.rc = {1}};
    order_init(&p.order);
    assert_int_equal(weft_lock_new(&p.lk), 0);
    assert_int_equal(weft_cond_new(p.lk, &p.c), 0);
    assert_int_equal(run_in(rt, cv_cancel_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_cond_free(p.c);
    weft_lock_free(p.lk);
}

/* Notified and cancelled before it runs (one worker): the waiter returns
 * WEFT_ECANCELED (with the lock) and the notification goes to the next
 * waiter, so notify(1) still wakes one task. */
static int cv_notify_cancel_driver(void *arg, void **result)
{
    (void)result;
    cv_t *p = arg;
    cv_arg_t args[2] = {{p, 0}, {p, 1}};
    weft_task_t *t[2];
    for (int i = 0; i < 2; i++) {
        t[i] = spawn(cv_waiter, &args[i]);
        AWAIT_TRUE(weft__cond_nwaiters(p->c) == (size_t)i + 1);
    }
    CHECK(&g_rec, weft_cond_acquire(p->c) == 0);
    CHECK(&g_rec, weft_cond_notify(p->c, 1) == 1);
    CHECK(&g_rec, weft_task_cancel(t[0], NULL) == 1);
    CHECK(&g_rec, weft_cond_release(p->c) == 0);
    CHECK(&g_rec, join(t[0]) == 0);
    CHECK(&g_rec, join(t[1]) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_ECANCELED);
    CHECK(&g_rec, p->rc[1] == 0);
    CHECK(&g_rec, p->lock_held_after[0] && p->lock_held_after[1]);
    return 0;
}

static void test_cond_notified_and_cancelled_waiter_passes_the_notification_on(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    cv_t p = {.rc = {1, 1}};
    order_init(&p.order);
    assert_int_equal(weft_cond_new(NULL, &p.c), 0);
    assert_int_equal(run_in(rt, cv_notify_cancel_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    order_check(&p.order, (int[]){0, 1}, 2);
    free_rt(rt);
    weft_cond_free(p.c);
}

/* A plain thread notifies (holding the lock through try_acquire) and two
 * conditions share one lock. */
typedef struct cv_shared {
    weft_lock_t *lk;
    weft_cond_t *a, *b;
    int rc_a, rc_b;
} cv_shared_t;

static int cv_shared_wait_a(void *arg, void **result)
{
    (void)result;
    cv_shared_t *s = arg;
    CHECK(&g_rec, weft_lock_acquire(s->lk) == 0);
    s->rc_a = weft_cond_wait(s->a);
    CHECK(&g_rec, weft_lock_locked(s->lk));
    CHECK(&g_rec, weft_lock_release(s->lk) == 0);
    return 0;
}

static int cv_shared_wait_b(void *arg, void **result)
{
    (void)result;
    cv_shared_t *s = arg;
    CHECK(&g_rec, weft_cond_acquire(s->b) == 0);
    s->rc_b = weft_cond_wait(s->b);
    CHECK(&g_rec, weft_cond_release(s->b) == 0);
    return 0;
}

static int cv_shared_driver(void *arg, void **result)
{
    (void)result;
    weft_task_t *a = spawn(cv_shared_wait_a, arg);
    weft_task_t *b = spawn(cv_shared_wait_b, arg);
    CHECK(&g_rec, join(a) == 0);
    CHECK(&g_rec, join(b) == 0);
    return 0;
}

static void plain_notify(weft_cond_t *c, int want)
{
    int64_t dl = now_ns() + WAIT_LIMIT;
    while (weft__cond_nwaiters(c) < 1 && now_ns() < dl) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    while (weft_cond_try_acquire(c) != 0 && now_ns() < dl) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(weft_cond_notify(c, 5), want);
    assert_int_equal(weft_cond_release(c), 0);
}

static void test_cond_shared_lock_and_notify_from_a_plain_thread(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    cv_shared_t s = {.rc_a = 1, .rc_b = 1};
    assert_int_equal(weft_lock_new(&s.lk), 0);
    assert_int_equal(weft_cond_new(s.lk, &s.a), 0);
    assert_int_equal(weft_cond_new(s.lk, &s.b), 0);
    weft_future_t *f;
    assert_int_equal(weft_runtime_submit(rt, cv_shared_driver, &s, &f), 0);
    plain_notify(s.a, 1);
    plain_notify(s.b, 1);
    assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
    assert_int_equal(weft_future_result(f, NULL), 0);
    weft_future_release(f);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(s.rc_a, 0);
    assert_int_equal(s.rc_b, 0);
    free_rt(rt);
    weft_cond_free(s.a);
    weft_cond_free(s.b);
    assert_false(weft_lock_locked(s.lk));
    weft_lock_free(s.lk);
}

/* ======================================================================== */
/* Semaphore                                                                 */
/* ======================================================================== */

static void test_sem_argument_and_context_errors(void **state)
{
    (void)state;
    weft_sem_t *s = SENTINEL;
    /* asyncio: ValueError('Semaphore initial value must be >= 0') */
    assert_int_equal(weft_sem_new(-1, false, &s), -EINVAL);
    assert_ptr_equal(s, SENTINEL);
    assert_int_equal(weft_sem_new(1, false, NULL), -EINVAL);
    assert_int_equal(weft_sem_release(NULL), -EINVAL);
    assert_int_equal(weft_sem_value(NULL), -EINVAL);
    assert_false(weft_sem_locked(NULL));
    weft_sem_free(NULL);
    assert_int_equal(weft_sem_new(2, true, &s), 0);
    assert_int_equal(weft_sem_acquire(s), -EPERM);
    assert_int_equal(weft_sem_acquire(NULL), -EPERM);
    /* asyncio: ValueError('BoundedSemaphore released too many times') */
    assert_int_equal(weft_sem_release(s), -EINVAL);
    assert_int_equal(weft_sem_value(s), 2);
    weft_sem_free(s);
    /* Unbounded: release raises the value past the start. */
    assert_int_equal(weft_sem_new(0, false, &s), 0);
    assert_true(weft_sem_locked(s));
    assert_int_equal(weft_sem_release(s), 0);
    assert_int_equal(weft_sem_release(s), 0);
    assert_int_equal(weft_sem_value(s), 2);
    assert_false(weft_sem_locked(s));
    weft_sem_free(s);
}

typedef struct sp {
    weft_sem_t *s;
    order_t order;
    int rc[8];
} sp_t;

typedef struct sp_arg {
    sp_t *p;
    int i;
} sp_arg_t;

static int sp_waiter(void *arg, void **result)
{
    (void)result;
    sp_arg_t *a = arg;
    int rc = weft_sem_acquire(a->p->s);
    a->p->rc[a->i] = rc;
    if (rc == 0)
        order_add(&a->p->order, a->i);
    return 0;
}

static int sp_body(void *arg, void **result)
{
    (void)result;
    sp_t *p = arg;
    CHECK(&g_rec, weft_sem_acquire(NULL) == -EINVAL);
    /* Two permits taken without waiting. */
    CHECK(&g_rec, !weft_sem_locked(p->s));
    CHECK(&g_rec, weft_sem_acquire(p->s) == 0);
    CHECK(&g_rec, weft_sem_acquire(p->s) == 0);
    CHECK(&g_rec, weft_sem_value(p->s) == 0);
    CHECK(&g_rec, weft_sem_locked(p->s));
    /* Four waiters, queued in order. */
    sp_arg_t args[4];
    weft_task_t *t[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (sp_arg_t){p, i};
        t[i] = spawn(sp_waiter, &args[i]);
        AWAIT_TRUE(weft__sem_nwaiters(p->s) == (size_t)i + 1);
    }
    /* locked(): value 0, and waiters queued. */
    CHECK(&g_rec, weft_sem_locked(p->s));
    CHECK(&g_rec, weft_sem_release(p->s) == 0); /* -> waiter 0 */
    CHECK(&g_rec, join(t[0]) == 0);
    CHECK(&g_rec, weft_sem_value(p->s) == 0);
    CHECK(&g_rec, weft_sem_locked(p->s));
    CHECK(&g_rec, weft_sem_release(p->s) == 0); /* -> waiter 1 */
    CHECK(&g_rec, join(t[1]) == 0);
    CHECK(&g_rec, weft_sem_release(p->s) == 0); /* -> waiter 2 */
    CHECK(&g_rec, join(t[2]) == 0);
    /* Waiter 3 cancelled (it cannot have run: it is queued with no
     * permit): locked() no longer counts it. */
    CHECK(&g_rec, weft_sem_locked(p->s));
    CHECK(&g_rec, weft_task_cancel(t[3], NULL) == 1);
    CHECK(&g_rec, weft_sem_release(p->s) == 0); /* skips the cancelled one */
    CHECK(&g_rec, weft_sem_value(p->s) == 1);
    CHECK(&g_rec, !weft_sem_locked(p->s));
    CHECK(&g_rec, join(t[3]) == 0);
    CHECK(&g_rec, p->rc[3] == WEFT_ECANCELED);
    CHECK(&g_rec, weft_sem_value(p->s) == 1);
    /* Bounded at 2: one more release fits, the next is too many. */
    CHECK(&g_rec, weft_sem_release(p->s) == 0);
    CHECK(&g_rec, weft_sem_value(p->s) == 2);
    CHECK(&g_rec, weft_sem_release(p->s) == -EINVAL);
    CHECK(&g_rec, weft_sem_value(p->s) == 2);
    return 0;
}

static void test_sem_wake_order_and_locked_with_queued_waiters(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    sp_t p = {.rc = {1, 1, 1, 1}};
    order_init(&p.order);
    assert_int_equal(weft_sem_new(2, true, &p.s), 0);
    assert_int_equal(run_in(rt, sp_body, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    order_check(&p.order, (int[]){0, 1, 2}, 3);
    free_rt(rt);
    weft_sem_free(p.s);
}

/* Granted a permit and cancelled before it runs (one worker): the
 * cancellation wins, the permit goes to the next waiter. */
static int sp_grant_cancel_body(void *arg, void **result)
{
    (void)result;
    sp_t *p = arg;
    sp_arg_t args[2] = {{p, 0}, {p, 1}};
    weft_task_t *t[2];
    for (int i = 0; i < 2; i++) {
        t[i] = spawn(sp_waiter, &args[i]);
        AWAIT_TRUE(weft__sem_nwaiters(p->s) == (size_t)i + 1);
    }
    CHECK(&g_rec, weft_sem_release(p->s) == 0); /* granted to 0 */
    CHECK(&g_rec, weft_task_cancel(t[0], NULL) == 1);
    CHECK(&g_rec, join(t[0]) == 0);
    CHECK(&g_rec, join(t[1]) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_ECANCELED);
    CHECK(&g_rec, p->rc[1] == 0);
    CHECK(&g_rec, weft_sem_value(p->s) == 0);
    CHECK(&g_rec, weft_sem_release(p->s) == 0);
    CHECK(&g_rec, weft_sem_value(p->s) == 1);
    return 0;
}

static void test_sem_waiter_granted_and_cancelled_passes_the_permit_on(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    sp_t p = {.rc = {1, 1}};
    order_init(&p.order);
    assert_int_equal(weft_sem_new(0, false, &p.s), 0);
    assert_int_equal(run_in(rt, sp_grant_cancel_body, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    order_check(&p.order, (int[]){1}, 1);
    free_rt(rt);
    weft_sem_free(p.s);
}

/* Permits never exceed the limit: 24 tasks over 8 workers, an atomic
 * high-water mark of the tasks inside. */
#define HW_TASKS  24
#define HW_ROUNDS 2000
#define HW_LIMIT  3

typedef struct hw {
    weft_sem_t *s;
    atomic_int inside, high;
    atomic_long total;
} hw_t;

static int hw_body(void *arg, void **result)
{
    (void)result;
    hw_t *h = arg;
    for (int i = 0; i < HW_ROUNDS; i++) {
        CHECK(&g_rec, weft_sem_acquire(h->s) == 0);
        int in = atomic_fetch_add(&h->inside, 1) + 1;
        int hi = atomic_load(&h->high);
        while (in > hi && !atomic_compare_exchange_weak(&h->high, &hi, in)) {
        }
        atomic_fetch_add(&h->total, 1);
        if (i % 3 == 0)
            (void)weft_yield();
        atomic_fetch_sub(&h->inside, 1);
        CHECK(&g_rec, weft_sem_release(h->s) == 0);
    }
    return 0;
}

static int hw_driver(void *arg, void **result)
{
    (void)result;
    weft_task_t *t[HW_TASKS];
    for (int i = 0; i < HW_TASKS; i++)
        t[i] = spawn(hw_body, arg);
    for (int i = 0; i < HW_TASKS; i++)
        CHECK(&g_rec, join(t[i]) == 0);
    return 0;
}

static void test_sem_permits_never_exceed_the_limit_over_8_workers(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(8);
    hw_t h;
    atomic_init(&h.inside, 0);
    atomic_init(&h.high, 0);
    atomic_init(&h.total, 0);
    assert_int_equal(weft_sem_new(HW_LIMIT, true, &h.s), 0);
    assert_int_equal(run_in(rt, hw_driver, &h), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&h.total), (long)HW_TASKS * HW_ROUNDS);
    assert_true(atomic_load(&h.high) <= HW_LIMIT);
    assert_true(atomic_load(&h.high) >= 1);
    assert_int_equal(weft_sem_value(h.s), HW_LIMIT);
    free_rt(rt);
    weft_sem_free(h.s);
}

/* ======================================================================== */
/* Barrier                                                                   */
/* ======================================================================== */

static void test_barrier_argument_and_context_errors(void **state)
{
    (void)state;
    weft_barrier_t *b = SENTINEL;
    assert_int_equal(weft_barrier_new(0, &b), -EINVAL); /* asyncio: ValueError */
    assert_ptr_equal(b, SENTINEL);
    assert_int_equal(weft_barrier_new(2, NULL), -EINVAL);
    assert_int_equal(weft_barrier_abort(NULL), -EINVAL);
    assert_int_equal(weft_barrier_reset(NULL), -EINVAL);
    assert_int_equal(weft_barrier_n_waiting(NULL), 0);
    assert_int_equal(weft_barrier_parties(NULL), 0);
    assert_false(weft_barrier_broken(NULL));
    weft_barrier_free(NULL);
    assert_int_equal(weft_barrier_new(3, &b), 0);
    unsigned idx = 77;
    assert_int_equal(weft_barrier_wait(b, &idx), -EPERM);
    assert_int_equal(weft_barrier_wait(NULL, &idx), -EPERM);
    assert_int_equal(idx, 77);
    assert_int_equal(weft_barrier_parties(b), 3);
    assert_int_equal(weft_barrier_n_waiting(b), 0);
    assert_false(weft_barrier_broken(b));
    /* abort and reset from a plain thread. */
    assert_int_equal(weft_barrier_abort(b), 0);
    assert_true(weft_barrier_broken(b));
    assert_int_equal(weft_barrier_reset(b), 0);
    assert_false(weft_barrier_broken(b));
    weft_barrier_free(b);
}

typedef struct bp {
    weft_barrier_t *b;
    int rc[8];
    unsigned idx[8];
    order_t order;
} bp_t;

typedef struct bp_arg {
    bp_t *p;
    int i;
} bp_arg_t;

static int bp_waiter(void *arg, void **result)
{
    (void)result;
    bp_arg_t *a = arg;
    a->p->idx[a->i] = 99;
    a->p->rc[a->i] = weft_barrier_wait(a->p->b, &a->p->idx[a->i]);
    order_add(&a->p->order, a->i);
    return 0;
}

/* Indices follow arrival order; n_waiting counts the arrivals; the barrier
 * is reusable for the next round; parties 1 never waits. */
static int bp_index_driver(void *arg, void **result)
{
    (void)result;
    bp_t *p = arg;
    CHECK(&g_rec, weft_barrier_wait(NULL, NULL) == -EINVAL);
    for (int round = 0; round < 2; round++) {
        bp_arg_t args[3];
        weft_task_t *t[2];
        for (int i = 0; i < 2; i++) {
            args[i] = (bp_arg_t){p, i};
            t[i] = spawn(bp_waiter, &args[i]);
            AWAIT_TRUE(weft__barrier_nwaiters(p->b) == (size_t)i + 1);
            CHECK(&g_rec, weft_barrier_n_waiting(p->b) == (unsigned)i + 1);
        }
        unsigned mine = 99;
        CHECK(&g_rec, weft_barrier_wait(p->b, &mine) == 0); /* last: no wait */
        CHECK(&g_rec, mine == 2);
        for (int i = 0; i < 2; i++)
            CHECK(&g_rec, join(t[i]) == 0);
        CHECK(&g_rec, p->rc[0] == 0 && p->rc[1] == 0);
        CHECK(&g_rec, p->idx[0] == 0 && p->idx[1] == 1);
        CHECK(&g_rec, weft_barrier_n_waiting(p->b) == 0);
        CHECK(&g_rec, !weft_barrier_broken(p->b));
    }
    weft_barrier_t *one;
    CHECK(&g_rec, weft_barrier_new(1, &one) == 0);
    unsigned i1 = 5;
    CHECK(&g_rec, weft_barrier_wait(one, &i1) == 0 && i1 == 0);
    CHECK(&g_rec, weft_barrier_wait(one, NULL) == 0);
    weft_barrier_free(one);
    return 0;
}

static void test_barrier_indices_follow_arrival_and_it_is_reusable(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    bp_t p = {0};
    order_init(&p.order);
    assert_int_equal(weft_barrier_new(3, &p.b), 0);
    assert_int_equal(run_in(rt, bp_index_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_barrier_free(p.b);
}

/* abort: the waiting tasks and every later wait get WEFT_EBROKEN until
 * reset; reset with tasks waiting breaks them too, then the barrier works
 * again. */
static int bp_abort_driver(void *arg, void **result)
{
    (void)result;
    bp_t *p = arg;
    bp_arg_t args[4] = {{p, 0}, {p, 1}, {p, 2}, {p, 3}};
    weft_task_t *t[4];
    t[0] = spawn(bp_waiter, &args[0]);
    t[1] = spawn(bp_waiter, &args[1]);
    AWAIT_TRUE(weft__barrier_nwaiters(p->b) == 2);
    CHECK(&g_rec, weft_barrier_abort(p->b) == 0);
    CHECK(&g_rec, weft_barrier_broken(p->b));
    CHECK(&g_rec, join(t[0]) == 0 && join(t[1]) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_EBROKEN && p->rc[1] == WEFT_EBROKEN);
    CHECK(&g_rec, p->idx[0] == 99 && p->idx[1] == 99); /* untouched */
    unsigned idx = 7;
    CHECK(&g_rec, weft_barrier_wait(p->b, &idx) == WEFT_EBROKEN);
    CHECK(&g_rec, idx == 7);
    CHECK(&g_rec, weft_barrier_n_waiting(p->b) == 0);

    CHECK(&g_rec, weft_barrier_reset(p->b) == 0);
    CHECK(&g_rec, !weft_barrier_broken(p->b));
    t[2] = spawn(bp_waiter, &args[2]);
    AWAIT_TRUE(weft__barrier_nwaiters(p->b) == 1);
    CHECK(&g_rec, weft_barrier_n_waiting(p->b) == 1);
    CHECK(&g_rec, weft_barrier_reset(p->b) == 0); /* breaks the waiter */
    CHECK(&g_rec, join(t[2]) == 0);
    CHECK(&g_rec, p->rc[2] == WEFT_EBROKEN);
    CHECK(&g_rec, !weft_barrier_broken(p->b));
    CHECK(&g_rec, weft_barrier_n_waiting(p->b) == 0);

    /* Usable again: a full round of 3. */
    t[0] = spawn(bp_waiter, &args[0]);
    t[1] = spawn(bp_waiter, &args[1]);
    AWAIT_TRUE(weft__barrier_nwaiters(p->b) == 2);
    CHECK(&g_rec, weft_barrier_wait(p->b, &idx) == 0 && idx == 2);
    CHECK(&g_rec, join(t[0]) == 0 && join(t[1]) == 0);
    CHECK(&g_rec, p->rc[0] == 0 && p->rc[1] == 0);
    CHECK(&g_rec, p->idx[0] + p->idx[1] == 1);
    return 0;
}

static void test_barrier_abort_and_reset_break_the_waiters(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    bp_t p = {0};
    order_init(&p.order);
    assert_int_equal(weft_barrier_new(3, &p.b), 0);
    assert_int_equal(run_in(rt, bp_abort_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_barrier_free(p.b);
}

/* A cancelled waiter leaves (n_waiting drops) without breaking the
 * barrier; the round completes with a newcomer (asyncio: the index is the
 * number of tasks inside on arrival, so it can repeat after a
 * cancellation). */
static int bp_cancel_driver(void *arg, void **result)
{
    (void)result;
    bp_t *p = arg;
    bp_arg_t args[3] = {{p, 0}, {p, 1}, {p, 2}};
    weft_task_t *t[3];
    t[0] = spawn(bp_waiter, &args[0]);
    AWAIT_TRUE(weft__barrier_nwaiters(p->b) == 1);
    t[1] = spawn(bp_waiter, &args[1]);
    AWAIT_TRUE(weft__barrier_nwaiters(p->b) == 2);
    CHECK(&g_rec, weft_task_cancel(t[0], NULL) == 1);
    CHECK(&g_rec, join(t[0]) == 0);
    CHECK(&g_rec, p->rc[0] == WEFT_ECANCELED);
    CHECK(&g_rec, weft_barrier_n_waiting(p->b) == 1);
    CHECK(&g_rec, !weft_barrier_broken(p->b));
    t[2] = spawn(bp_waiter, &args[2]);
    AWAIT_TRUE(weft__barrier_nwaiters(p->b) == 2);
    unsigned idx = 99;
    CHECK(&g_rec, weft_barrier_wait(p->b, &idx) == 0);
    CHECK(&g_rec, idx == 2);
    CHECK(&g_rec, join(t[1]) == 0 && join(t[2]) == 0);
    CHECK(&g_rec, p->rc[1] == 0 && p->rc[2] == 0);
    /* asyncio's index is the count inside when a task arrives, so the one
     * that replaced the cancelled task repeats index 1. */
    CHECK(&g_rec, p->idx[1] == 1 && p->idx[2] == 1);
    return 0;
}

static void test_barrier_cancelled_waiter_leaves_without_breaking_it(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    bp_t p = {0};
    order_init(&p.order);
    assert_int_equal(weft_barrier_new(3, &p.b), 0);
    assert_int_equal(run_in(rt, bp_cancel_driver, &p), 0);
    ASSERT_NO_FAILURE(&g_rec);
    free_rt(rt);
    weft_barrier_free(p.b);
}

/* Many rounds over 8 workers: in each round every index 0..N-1 is handed
 * out exactly once, and nobody starts round r+1 before all finished r. */
#define BR_TASKS  8
#define BR_ROUNDS 200

typedef struct br {
    weft_barrier_t *b;
    atomic_int seen[BR_ROUNDS][BR_TASKS];
    atomic_int arrived[BR_ROUNDS];
} br_t;

static int br_body(void *arg, void **result)
{
    (void)result;
    br_t *r = arg;
    for (int round = 0; round < BR_ROUNDS; round++) {
        atomic_fetch_add(&r->arrived[round], 1);
        unsigned idx = BR_TASKS;
        int rc = weft_barrier_wait(r->b, &idx);
        CHECK(&g_rec, rc == 0);
        CHECK(&g_rec, idx < BR_TASKS);
        if (rc == 0 && idx < BR_TASKS)
            atomic_fetch_add(&r->seen[round][idx], 1);
        /* Everybody arrived at this round before anybody left it. */
        CHECK(&g_rec, atomic_load(&r->arrived[round]) == BR_TASKS);
    }
    return 0;
}

static int br_driver(void *arg, void **result)
{
    (void)result;
    weft_task_t *t[BR_TASKS];
    for (int i = 0; i < BR_TASKS; i++)
        t[i] = spawn(br_body, arg);
    for (int i = 0; i < BR_TASKS; i++)
        CHECK(&g_rec, join(t[i]) == 0);
    return 0;
}

static void test_barrier_rounds_over_8_workers_hand_out_each_index_once(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(8);
    br_t *r = calloc(1, sizeof *r);
    assert_non_null(r);
    assert_int_equal(weft_barrier_new(BR_TASKS, &r->b), 0);
    assert_int_equal(run_in(rt, br_driver, r), 0);
    ASSERT_NO_FAILURE(&g_rec);
    for (int round = 0; round < BR_ROUNDS; round++)
        for (int i = 0; i < BR_TASKS; i++)
            if (atomic_load(&r->seen[round][i]) != 1)
                fail_msg("round %d index %d seen %d times", round, i,
                         atomic_load(&r->seen[round][i]));
    free_rt(rt);
    weft_barrier_free(r->b);
    free(r);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        TEST(test_lock_argument_and_context_errors),
        TEST(test_lock_acquire_and_release_in_a_task),
        TEST(test_lock_waiters_acquire_in_fifo_order),
        TEST(test_lock_release_hands_the_lock_to_the_first_waiter),
        TEST(test_lock_cancelled_waiter_leaves_the_queue),
        TEST(test_lock_waiter_granted_and_cancelled_passes_the_lock_on),
        TEST(test_lock_with_only_cancelled_waiters_is_taken_at_once),
        TEST(test_lock_pending_cancel_is_delivered_only_when_acquire_waits),
        TEST(test_sync_constructors_report_enomem),
        TEST(test_lock_guards_a_plain_counter_over_8_workers),
        TEST(test_lock_random_cancellations_never_lose_the_lock),
        TEST(test_event_argument_and_context_errors),
        TEST(test_event_set_wakes_every_waiter_and_clear_rearms),
        TEST(test_event_cancelled_waiter_returns_ecanceled),
        TEST(test_event_set_from_a_plain_thread_wakes_tasks),
        TEST(test_cond_argument_and_context_errors),
        TEST(test_cond_wait_without_the_lock_is_einvalstate),
        TEST(test_cond_notify_n_wakes_exactly_n_in_fifo_order),
        TEST(test_cond_wait_for_rechecks_the_predicate_after_each_notify),
        TEST(test_cond_cancelled_wait_reacquires_the_lock),
        TEST(test_cond_notified_and_cancelled_waiter_passes_the_notification_on),
        TEST(test_cond_shared_lock_and_notify_from_a_plain_thread),
        TEST(test_sem_argument_and_context_errors),
        TEST(test_sem_wake_order_and_locked_with_queued_waiters),
        TEST(test_sem_waiter_granted_and_cancelled_passes_the_permit_on),
        TEST(test_sem_permits_never_exceed_the_limit_over_8_workers),
        TEST(test_sem_random_cancellations_never_lose_a_permit),
        TEST(test_barrier_argument_and_context_errors),
        TEST(test_barrier_indices_follow_arrival_and_it_is_reusable),
        TEST(test_barrier_abort_and_reset_break_the_waiters),
        TEST(test_barrier_cancelled_waiter_leaves_without_breaking_it),
        TEST(test_barrier_rounds_over_8_workers_hand_out_each_index_once),
        TEST(test_sync_free_with_waiters_is_refused_and_logged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
