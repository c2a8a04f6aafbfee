/* Tests for the event loop: call_soon ordering, timers, call_soon_threadsafe,
 * lifecycle errors, run_until_complete, thread rules, close reporting, the
 * exception handler, debug mode and fd readiness callbacks.
 *
 * Nothing below calls a cmocka assert inside a loop callback or a pthread:
 * those record through CHECK(&g_rec, ...) and the test thread calls
 * ASSERT_NO_FAILURE(&g_rec) once the loop has returned (STYLE.md, "Tests").
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sched/common.h" /* weft__alloc_fail_nth(): the allocation-failure seam */
#include "test/support/check.h"
#include "weft.h"

#define MS (INT64_C(1000000))

/* Failures seen inside callbacks and foreign threads; reset per test. */
static check_rec_t g_rec;

/* The loop under test, for callbacks that need it. */
static weft_loop_t *g_loop;

/* ---- numbered steps ------------------------------------------------------
 * Only touched on the loop thread (or the test thread while the loop is not
 * running), so plain ints suffice. */
#define ORDER_CAP 8192

static struct {
    int steps[ORDER_CAP];
    uint64_t iter[ORDER_CAP]; /* stats.iterations when the step was recorded */
    int n;
} g_order;

static void order_add(int step)
{
    CHECK(&g_rec, g_order.n < ORDER_CAP);
    if (g_order.n >= ORDER_CAP)
        return;
    weft_loop_stats_t s;
    memset(&s, 0, sizeof s);
    CHECK(&g_rec, weft_loop_get_stats(g_loop, &s) == 0);
    g_order.iter[g_order.n] = s.iterations;
    g_order.steps[g_order.n++] = step;
}

/* ---- log capture ----------------------------------------------------------
 * The log handler may run on any thread, concurrently. */
static struct {
    atomic_int count;
    atomic_int by_level[4];
    pthread_mutex_t mu;
    char text[8192]; /* every message, '\n'-separated, truncated */
    size_t len;
} g_log = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void log_capture_fn(int level, const char *message, void *arg)
{
    (void)arg;
    if (level >= 0 && level < 4)
        atomic_fetch_add(&g_log.by_level[level], 1);
    pthread_mutex_lock(&g_log.mu);
    if (message != NULL) {
        size_t room = sizeof g_log.text - g_log.len;
        int w = snprintf(g_log.text + g_log.len, room, "%s\n", message);
        if (w > 0)
            g_log.len += (size_t)w < room ? (size_t)w : room - 1;
    }
    pthread_mutex_unlock(&g_log.mu);
    atomic_fetch_add(&g_log.count, 1);
}

static void log_capture_reset(void)
{
    pthread_mutex_lock(&g_log.mu);
    g_log.text[0] = '\0';
    g_log.len = 0;
    pthread_mutex_unlock(&g_log.mu);
    atomic_store(&g_log.count, 0);
    for (int i = 0; i < 4; i++)
        atomic_store(&g_log.by_level[i], 0);
}

static bool log_contains(const char *needle)
{
    pthread_mutex_lock(&g_log.mu);
    bool found = strstr(g_log.text, needle) != NULL;
    pthread_mutex_unlock(&g_log.mu);
    return found;
}

/* ---- helpers ---------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    check_rec_init(&g_rec);
    memset(&g_order, 0, sizeof g_order);
    log_capture_reset();
    g_loop = NULL;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    weft_set_log_handler(NULL, NULL);
    return 0;
}

#define TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

static weft_loop_t *new_loop(void)
{
    weft_loop_t *loop = NULL;
    assert_int_equal(weft_loop_new(&loop), 0);
    assert_non_null(loop);
    g_loop = loop;
    return loop;
}

static void close_and_free(weft_loop_t *loop)
{
    assert_int_equal(weft_loop_close(loop), 0);
    assert_true(weft_loop_is_closed(loop));
    weft_loop_free(loop);
    if (g_loop == loop)
        g_loop = NULL;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int socketpair_nb(int sv[2])
{
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv);
}

static void stop_cb(void *arg)
{
    CHECK(&g_rec, weft_loop_stop((weft_loop_t *)arg) == 0);
}

static void step_cb(void *arg)
{
    order_add((int)(intptr_t)arg);
}

/* Post steps from..to-1 with call_soon_threadsafe, each accepted. */
static void post_steps_threadsafe(weft_loop_t *loop, int from, int to)
{
    for (int i = from; i < to; i++)
        assert_int_equal(weft_loop_call_soon_threadsafe(loop, step_cb, (void *)(intptr_t)i, NULL),
                         0);
}

/* The first n steps recorded were 0, 1, ..., n-1. */
static void assert_steps_in_order(int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(g_order.steps[i], i);
}

static atomic_int g_never_count;

/* A callback that must never run. */
static void never_cb(void *arg)
{
    (void)arg;
    atomic_fetch_add(&g_never_count, 1);
    CHECK(&g_rec, !"never_cb ran");
}

/* Stops the loop if a test would otherwise hang; the test then fails on
 * its counts.  Returns the handle; disarm() cancels and releases it. */
static atomic_int g_watchdog_fired;

static void watchdog_cb(void *arg)
{
    atomic_store(&g_watchdog_fired, 1);
    weft_loop_stop((weft_loop_t *)arg);
}

static weft_handle_t *arm_watchdog(weft_loop_t *loop, int64_t delay_ns)
{
    weft_handle_t *h = NULL;
    atomic_store(&g_watchdog_fired, 0);
    assert_int_equal(weft_loop_call_later(loop, delay_ns, watchdog_cb, loop, &h), 0);
    assert_non_null(h);
    return h;
}

static void disarm(weft_handle_t *h)
{
    assert_int_equal(weft_handle_cancel(h), 0);
    weft_handle_release(h);
}

/* Deterministic PRNG (xorshift64*); the seed is printed by each user. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * UINT64_C(2685821657736338717);
}

/* =========================================================================
 * call_soon ordering
 * ========================================================================= */

static void test_loop_new_starts_idle_with_zero_stats(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    assert_false(weft_loop_is_running(loop));
    assert_false(weft_loop_is_closed(loop));
    weft_loop_stats_t s;
    memset(&s, 0xff, sizeof s);
    assert_int_equal(weft_loop_get_stats(loop, &s), 0);
    assert_int_equal(s.iterations, 0);
    assert_int_equal(s.callbacks_run, 0);
    assert_int_equal(s.threadsafe_calls, 0);
    assert_int_equal(s.eventfd_writes, 0);
    assert_int_equal(s.timers_fired, 0);
    assert_int_equal(s.timers_cancelled, 0);
    close_and_free(loop);
}

/* Causal order across threads: a callback another thread posted before
 * (it told us so) runs before one this thread queues afterwards. */
typedef struct causal {
    weft_loop_t *loop;
    atomic_int posted; /* the foreign thread's post is done */
    pthread_t thread;
    bool started;
} causal_t;

static void *causal_poster(void *arg)
{
    causal_t *c = arg;
    CHECK(&g_rec, weft_loop_call_soon_threadsafe(c->loop, step_cb, (void *)(intptr_t)1, NULL) == 0);
    atomic_store_explicit(&c->posted, 1, memory_order_release);
    return NULL;
}

static void causal_cb(void *arg)
{
    causal_t *c = arg;
    c->started = pthread_create(&c->thread, NULL, causal_poster, c) == 0;
    CHECK(&g_rec, c->started);
    /* Wait (bounded) until the other thread has posted step 1. */
    for (long i = 0; c->started && i < 2000000000L; i++) {
        if (atomic_load_explicit(&c->posted, memory_order_acquire))
            break;
    }
    CHECK(&g_rec, atomic_load_explicit(&c->posted, memory_order_acquire) == 1);
    CHECK(&g_rec, weft_loop_call_soon(c->loop, step_cb, (void *)(intptr_t)2, NULL) == 0);
    CHECK(&g_rec, weft_loop_call_soon(c->loop, stop_cb, c->loop, NULL) == 0);
}

static void test_loop_callbacks_keep_causal_order_across_threads(void **state)
{
    (void)state;
    causal_t c;
    memset(&c, 0, sizeof c);
    c.loop = new_loop();
    atomic_init(&c.posted, 0);
    assert_int_equal(weft_loop_call_soon(c.loop, causal_cb, &c, NULL), 0);
    assert_int_equal(weft_loop_run_forever(c.loop), 0);
    if (c.started)
        pthread_join(c.thread, NULL);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, 2);
    assert_int_equal(g_order.steps[0], 1);
    assert_int_equal(g_order.steps[1], 2);
    close_and_free(c.loop);
}

static void test_loop_call_soon_runs_in_fifo_order(void **state)
{
    (void)state;
    enum { N = 1000 };
    weft_loop_t *loop = new_loop();
    for (int i = 0; i < N; i++)
        assert_int_equal(weft_loop_call_soon(loop, step_cb, (void *)(intptr_t)i, NULL), 0);
    assert_int_equal(weft_loop_call_soon(loop, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, N);
    assert_steps_in_order(N);
    /* All were ready when the first iteration began: one iteration. */
    assert_true(g_order.iter[0] == g_order.iter[N - 1]);
    close_and_free(loop);
}

enum { STEP_A = 1, STEP_B = 2, STEP_C = 3 };

static void step_a_schedules_c(void *arg)
{
    (void)arg;
    order_add(STEP_A);
    CHECK(&g_rec, weft_loop_call_soon(g_loop, step_cb, (void *)(intptr_t)STEP_C, NULL) == 0);
    CHECK(&g_rec, weft_loop_call_soon(g_loop, stop_cb, g_loop, NULL) == 0);
}

static void test_loop_callback_scheduled_by_callback_runs_next_iteration(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_loop_call_soon(loop, step_a_schedules_c, NULL, NULL), 0);
    assert_int_equal(weft_loop_call_soon(loop, step_cb, (void *)(intptr_t)STEP_B, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, 3);
    assert_int_equal(g_order.steps[0], STEP_A);
    assert_int_equal(g_order.steps[1], STEP_B);
    assert_int_equal(g_order.steps[2], STEP_C);
    /* A and B share an iteration; C runs in the one after. */
    assert_true(g_order.iter[0] == g_order.iter[1]);
    assert_true(g_order.iter[2] == g_order.iter[0] + 1);
    close_and_free(loop);
}

static void test_loop_stop_before_run_forever_runs_one_iteration(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    /* A and B are ready when the single iteration begins. */
    assert_int_equal(weft_loop_call_soon(loop, step_cb, (void *)(intptr_t)STEP_A, NULL), 0);
    assert_int_equal(weft_loop_call_soon(loop, step_cb, (void *)(intptr_t)STEP_B, NULL), 0);
    assert_int_equal(weft_loop_stop(loop), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_false(weft_loop_is_running(loop));
    assert_int_equal(g_order.n, 2);
    assert_int_equal(g_order.steps[0], STEP_A);
    assert_int_equal(g_order.steps[1], STEP_B);

    /* One iteration only: work scheduled by a callback waits for the next
     * run. */
    assert_int_equal(weft_loop_call_soon(loop, step_a_schedules_c, NULL, NULL), 0);
    assert_int_equal(weft_loop_stop(loop), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, 3);
    assert_int_equal(g_order.steps[2], STEP_A);

    /* The stop was consumed: this run goes on until C's follow-up stop. */
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, 4);
    assert_int_equal(g_order.steps[3], STEP_C);
    close_and_free(loop);
}

/* =========================================================================
 * Timers
 * ========================================================================= */

/* One scheduled timer; the callback checks it is not early and not
 * cancelled, and records its index. */
typedef struct tent {
    int index;
    int64_t deadline;
    bool cancelled;
    weft_handle_t *h;
} tent_t;

static void tent_cb(void *arg)
{
    tent_t *e = arg;
    int64_t now = weft_loop_time(g_loop);
    CHECK(&g_rec, !e->cancelled);
    CHECK(&g_rec, now >= e->deadline);
    order_add(e->index);
}

static int tent_cmp(const void *a, const void *b)
{
    const tent_t *x = a, *y = b;
    if (x->deadline != y->deadline)
        return x->deadline < y->deadline ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* Assert that exactly the uncancelled entries ran, sorted by (deadline,
 * scheduling order). Sorts a copy of ents. */
static void assert_ran_uncancelled_in_deadline_order(const tent_t *ents, int n)
{
    tent_t *sorted = malloc(sizeof *sorted * (size_t)n);
    assert_non_null(sorted);
    memcpy(sorted, ents, sizeof *sorted * (size_t)n);
    qsort(sorted, (size_t)n, sizeof *sorted, tent_cmp);
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (sorted[i].cancelled)
            continue;
        if (k >= g_order.n || g_order.steps[k] != sorted[i].index) {
            int got = k < g_order.n ? g_order.steps[k] : -1;
            int want = sorted[i].index;
            free(sorted);
            fail_msg("timer #%d: expected index %d, got %d", k, want, got);
        }
        k++;
    }
    free(sorted);
    assert_int_equal(g_order.n, k);
}

static void test_loop_timer_never_runs_before_deadline(void **state)
{
    (void)state;
    static const int64_t delays[] = {0, 1 * MS, 3 * MS, 5 * MS, 10 * MS, 20 * MS, 2 * MS};
    enum { N = sizeof delays / sizeof delays[0] };
    tent_t ents[N];
    weft_loop_t *loop = new_loop();
    for (int i = 0; i < N; i++) {
        int64_t before = weft_loop_time(loop);
        ents[i] = (tent_t){.index = i};
        assert_int_equal(weft_loop_call_later(loop, delays[i], tent_cb, &ents[i], &ents[i].h), 0);
        int64_t after = weft_loop_time(loop);
        ents[i].deadline = weft_handle_when(ents[i].h);
        assert_true(ents[i].deadline >= before + delays[i]);
        assert_true(ents[i].deadline <= after + delays[i]);
    }
    assert_int_equal(weft_loop_call_later(loop, 30 * MS, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_ran_uncancelled_in_deadline_order(ents, N);
    for (int i = 0; i < N; i++) {
        assert_false(weft_handle_cancelled(ents[i].h));
        weft_handle_release(ents[i].h);
    }
    close_and_free(loop);
}

static void test_loop_timers_with_equal_deadlines_run_in_scheduling_order(void **state)
{
    (void)state;
    enum { N = 100 };
    tent_t ents[N];
    weft_loop_t *loop = new_loop();
    int64_t when = weft_loop_time(loop) + 5 * MS;
    for (int i = 0; i < N; i++) {
        ents[i] = (tent_t){.index = i, .deadline = when};
        assert_int_equal(weft_loop_call_at(loop, when, tent_cb, &ents[i], NULL), 0);
    }
    /* Same deadline, scheduled last: runs last. */
    assert_int_equal(weft_loop_call_at(loop, when, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, N);
    assert_steps_in_order(N);
    close_and_free(loop);
}

static void test_loop_timers_scheduled_out_of_order_run_sorted_by_deadline(void **state)
{
    (void)state;
    enum { N = 200 };
    tent_t ents[N];
    int perm[N];
    rng_state = UINT64_C(0x5eed0001);
    print_message("seed %#llx\n", (unsigned long long)rng_state);
    for (int i = 0; i < N; i++)
        perm[i] = i;
    for (int i = N - 1; i > 0; i--) {
        int j = (int)(rng_next() % (uint64_t)(i + 1));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    weft_loop_t *loop = new_loop();
    int64_t base = weft_loop_time(loop) + 1 * MS;
    /* Scheduling order i, deadline rank perm[i]: all deadlines distinct. */
    for (int i = 0; i < N; i++) {
        ents[i] = (tent_t){.index = perm[i], .deadline = base + perm[i] * (50 * 1000)};
        assert_int_equal(weft_loop_call_at(loop, ents[i].deadline, tent_cb, &ents[i], NULL), 0);
    }
    assert_int_equal(weft_loop_call_at(loop, base + N * (50 * 1000), stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, N);
    assert_steps_in_order(N);
    close_and_free(loop);
}

static void test_loop_cancelled_timers_never_run(void **state)
{
    (void)state;
    enum { N = 1000 };
    tent_t *ents = calloc(N, sizeof *ents);
    assert_non_null(ents);
    rng_state = UINT64_C(0x5eed0002);
    print_message("seed %#llx\n", (unsigned long long)rng_state);
    weft_loop_t *loop = new_loop();
    int64_t base = weft_loop_time(loop) + 1 * MS;
    int64_t last = base;
    for (int i = 0; i < N; i++) {
        ents[i].index = i;
        ents[i].deadline = base + (int64_t)(rng_next() % (uint64_t)(20 * MS));
        if (ents[i].deadline > last)
            last = ents[i].deadline;
        assert_int_equal(weft_loop_call_at(loop, ents[i].deadline, tent_cb, &ents[i], &ents[i].h),
                         0);
        assert_true(weft_handle_when(ents[i].h) == ents[i].deadline);
    }
    /* Cancel a random half. */
    int cancelled = 0;
    while (cancelled < N / 2) {
        int i = (int)(rng_next() % N);
        if (ents[i].cancelled)
            continue;
        assert_false(weft_handle_cancelled(ents[i].h));
        assert_int_equal(weft_handle_cancel(ents[i].h), 0);
        assert_true(weft_handle_cancelled(ents[i].h));
        /* Cancelling twice is harmless. */
        assert_int_equal(weft_handle_cancel(ents[i].h), 0);
        ents[i].cancelled = true;
        cancelled++;
    }
    assert_int_equal(weft_loop_call_at(loop, last + 1 * MS, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_ran_uncancelled_in_deadline_order(ents, N);
    assert_int_equal(g_order.n, N - N / 2);
    for (int i = 0; i < N; i++) {
        assert_true(weft_handle_cancelled(ents[i].h) == ents[i].cancelled);
        weft_handle_release(ents[i].h);
    }
    free(ents);
    close_and_free(loop);
}

typedef struct remote_cancel {
    weft_loop_t *loop;
    weft_handle_t *h;
    int64_t deadline;
    pthread_t thread;
    bool started;
} remote_cancel_t;

static void *remote_cancel_thread(void *arg)
{
    remote_cancel_t *rc = arg;
    /* The cancel must land before the deadline for the test to mean
     * anything; the deadline is far enough away for that. */
    CHECK(&g_rec, weft_loop_time(rc->loop) < rc->deadline);
    CHECK(&g_rec, weft_handle_cancel(rc->h) == 0);
    CHECK(&g_rec, weft_handle_cancelled(rc->h));
    CHECK(&g_rec, weft_loop_time(rc->loop) < rc->deadline);
    return NULL;
}

/* Runs on the loop: start the canceller while the loop is running (it will
 * be asleep in epoll when the cancel lands). */
static void start_remote_cancel(void *arg)
{
    remote_cancel_t *rc = arg;
    rc->started = pthread_create(&rc->thread, NULL, remote_cancel_thread, rc) == 0;
    CHECK(&g_rec, rc->started);
}

static void test_loop_timer_cancelled_from_another_thread_never_runs(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    atomic_store(&g_never_count, 0);
    remote_cancel_t rc = {.loop = loop};
    assert_int_equal(weft_loop_call_later(loop, 300 * MS, never_cb, NULL, &rc.h), 0);
    rc.deadline = weft_handle_when(rc.h);
    assert_int_equal(weft_loop_call_soon(loop, start_remote_cancel, &rc, NULL), 0);
    /* Stop well after the cancelled timer's deadline. */
    assert_int_equal(weft_loop_call_at(loop, rc.deadline + 20 * MS, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    if (rc.started)
        assert_int_equal(pthread_join(rc.thread, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_never_count), 0);
    assert_true(weft_handle_cancelled(rc.h));
    weft_loop_stats_t s;
    assert_int_equal(weft_loop_get_stats(loop, &s), 0);
    assert_int_equal(s.timers_fired, 1);     /* only the stop timer */
    assert_int_equal(s.timers_cancelled, 1); /* the dead entry left the heap */
    weft_handle_release(rc.h);
    close_and_free(loop);
}

static void schedule_past_timer_and_soon(void *arg)
{
    (void)arg;
    order_add(STEP_A);
    /* A deadline one second in the past. */
    int64_t past = weft_loop_time(g_loop) - 1000 * MS;
    CHECK(&g_rec, weft_loop_call_at(g_loop, past, step_cb, (void *)(intptr_t)STEP_C, NULL) == 0);
    CHECK(&g_rec, weft_loop_call_soon(g_loop, step_cb, (void *)(intptr_t)STEP_B, NULL) == 0);
    /* Stop after the next iteration. */
    CHECK(&g_rec, weft_loop_call_soon(g_loop, stop_cb, g_loop, NULL) == 0);
}

static void test_loop_call_at_in_the_past_runs_next_iteration(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_loop_call_soon(loop, schedule_past_timer_and_soon, NULL, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, 3);
    assert_int_equal(g_order.steps[0], STEP_A);
    /* B and C both run in the next iteration (their mutual order is not
     * promised). */
    int b = g_order.steps[1] == STEP_B ? 1 : 2;
    int c = 3 - b;
    assert_int_equal(g_order.steps[b], STEP_B);
    assert_int_equal(g_order.steps[c], STEP_C);
    assert_true(g_order.iter[b] == g_order.iter[0] + 1);
    assert_true(g_order.iter[c] == g_order.iter[0] + 1);
    close_and_free(loop);
}

static void noop_cb(void *arg)
{
    (void)arg;
}

static void test_loop_handle_when_is_deadline_for_timers_and_minus_one_otherwise(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_handle_t *soon = NULL, *later = NULL, *at = NULL, *neg = NULL, *ts = NULL;

    assert_int_equal(weft_loop_call_soon(loop, noop_cb, NULL, &soon), 0);
    assert_non_null(soon);
    assert_true(weft_handle_when(soon) == -1);

    assert_int_equal(weft_loop_call_soon_threadsafe(loop, noop_cb, NULL, &ts), 0);
    assert_non_null(ts);
    assert_true(weft_handle_when(ts) == -1);

    int64_t t0 = weft_loop_time(loop);
    assert_int_equal(weft_loop_call_later(loop, 7 * MS, noop_cb, NULL, &later), 0);
    int64_t t1 = weft_loop_time(loop);
    assert_non_null(later);
    assert_true(weft_handle_when(later) >= t0 + 7 * MS);
    assert_true(weft_handle_when(later) <= t1 + 7 * MS);

    /* A negative delay counts as zero. */
    t0 = weft_loop_time(loop);
    assert_int_equal(weft_loop_call_later(loop, -5 * MS, noop_cb, NULL, &neg), 0);
    t1 = weft_loop_time(loop);
    assert_true(weft_handle_when(neg) >= t0);
    assert_true(weft_handle_when(neg) <= t1);

    int64_t when = weft_loop_time(loop) + 123456789;
    assert_int_equal(weft_loop_call_at(loop, when, noop_cb, NULL, &at), 0);
    assert_true(weft_handle_when(at) == when);

    assert_true(weft_handle_when(NULL) == -1);

    weft_handle_t *all[] = {soon, ts, later, neg, at};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        assert_false(weft_handle_cancelled(all[i]));
        assert_int_equal(weft_handle_cancel(all[i]), 0);
        assert_true(weft_handle_cancelled(all[i]));
        /* Cancelling does not change the deadline. */
        weft_handle_release(all[i]);
    }
    assert_false(weft_handle_cancelled(NULL));
    assert_int_equal(weft_handle_cancel(NULL), -EINVAL);
    weft_handle_release(NULL);

    /* Let the cancelled ready callbacks drain. */
    assert_int_equal(weft_loop_stop(loop), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    close_and_free(loop);
}

typedef struct cancel_peer {
    weft_handle_t *victim;
    int ran_first;
    int ran_victim;
} cancel_peer_t;

static void cancel_peer_first(void *arg)
{
    cancel_peer_t *p = arg;
    p->ran_first++;
    CHECK(&g_rec, weft_handle_cancel(p->victim) == 0);
    CHECK(&g_rec, weft_handle_cancelled(p->victim));
}

static void cancel_peer_victim(void *arg)
{
    cancel_peer_t *p = arg;
    p->ran_victim++;
    CHECK(&g_rec, !"timer cancelled earlier in its iteration ran");
}

static void test_loop_timer_cancelled_by_callback_in_same_iteration_does_not_run(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    cancel_peer_t p = {0};
    /* Both are due in the same iteration; the first cancels the second. */
    int64_t when = weft_loop_time(loop) + 2 * MS;
    assert_int_equal(weft_loop_call_at(loop, when, cancel_peer_first, &p, NULL), 0);
    assert_int_equal(weft_loop_call_at(loop, when, cancel_peer_victim, &p, &p.victim), 0);
    assert_int_equal(weft_loop_call_at(loop, when + 10 * MS, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(p.ran_first, 1);
    assert_int_equal(p.ran_victim, 0);
    assert_true(weft_handle_cancelled(p.victim));
    weft_handle_release(p.victim);

    /* Same with a call_soon victim cancelled by an earlier call_soon. */
    cancel_peer_t q = {0};
    assert_int_equal(weft_loop_call_soon(loop, cancel_peer_first, &q, NULL), 0);
    assert_int_equal(weft_loop_call_soon(loop, cancel_peer_victim, &q, &q.victim), 0);
    assert_int_equal(weft_loop_call_soon(loop, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(q.ran_first, 1);
    assert_int_equal(q.ran_victim, 0);
    weft_handle_release(q.victim);
    close_and_free(loop);
}

typedef struct many_timers {
    tent_t *ents;
    int n;
} many_timers_t;

/* First timer to fire: cancels every index % 4 == 1 entry while the loop
 * runs, pushing the dead fraction of the heap above one half. */
static void cancel_quarter_cb(void *arg)
{
    many_timers_t *m = arg;
    for (int i = 0; i < m->n; i++) {
        if (m->ents[i].index % 4 == 1) {
            CHECK(&g_rec, weft_handle_cancel(m->ents[i].h) == 0);
            m->ents[i].cancelled = true;
        }
    }
}

static void test_loop_many_timers_with_cancellations_run_in_deadline_order(void **state)
{
    (void)state;
    enum { N = 5000 };
    tent_t *ents = calloc(N, sizeof *ents);
    assert_non_null(ents);
    rng_state = UINT64_C(0x5eed0003);
    print_message("seed %#llx\n", (unsigned long long)rng_state);
    weft_loop_t *loop = new_loop();
    int64_t base = weft_loop_time(loop);
    int64_t last = base;
    many_timers_t m = {.ents = ents, .n = N};
    /* Deadline base: earlier than all the others. */
    assert_int_equal(weft_loop_call_at(loop, base, cancel_quarter_cb, &m, NULL), 0);
    for (int i = 0; i < N; i++) {
        ents[i].index = i;
        ents[i].deadline = base + 1 * MS + (int64_t)(rng_next() % (uint64_t)(30 * MS));
        if (ents[i].deadline > last)
            last = ents[i].deadline;
        assert_int_equal(weft_loop_call_at(loop, ents[i].deadline, tent_cb, &ents[i], &ents[i].h),
                         0);
    }
    /* Half cancelled before the loop runs ... */
    int cancelled = 0;
    for (int i = 0; i < N; i++) {
        if (i % 4 >= 2) {
            assert_int_equal(weft_handle_cancel(ents[i].h), 0);
            ents[i].cancelled = true;
            cancelled++;
        }
    }
    assert_int_equal(cancelled, N / 2);
    /* ... and a quarter more by cancel_quarter_cb while it runs. */
    assert_int_equal(weft_loop_call_at(loop, last + 1 * MS, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_ran_uncancelled_in_deadline_order(ents, N);
    assert_int_equal(g_order.n, N / 4);

    weft_loop_stats_t s;
    assert_int_equal(weft_loop_get_stats(loop, &s), 0);
    /* cancel_quarter_cb + the survivors + stop_cb. */
    assert_int_equal(s.timers_fired, 1 + N / 4 + 1);
    /* Every dead entry left the heap (the loop ran past all deadlines). */
    assert_int_equal(s.timers_cancelled, N - N / 4);
    for (int i = 0; i < N; i++) {
        assert_true(weft_handle_cancelled(ents[i].h) == ents[i].cancelled);
        weft_handle_release(ents[i].h);
    }
    free(ents);
    close_and_free(loop);
}

/* =========================================================================
 * call_soon_threadsafe
 * ========================================================================= */

enum { TS_THREADS = 4, TS_CALLS = 100000 };

static struct {
    weft_loop_t *loop;
    uint32_t next_seq[TS_THREADS]; /* loop thread only */
    long total;                    /* loop thread only */
} g_ts;

static void ts_cb(void *arg)
{
    uintptr_t v = (uintptr_t)arg;
    unsigned tid = (unsigned)(v / 1000000u);
    uint32_t seq = (uint32_t)(v % 1000000u);
    CHECK(&g_rec, tid < TS_THREADS);
    if (tid >= TS_THREADS)
        return;
    /* Each producer's calls arrive once each, in its order. */
    CHECK(&g_rec, seq == g_ts.next_seq[tid]);
    g_ts.next_seq[tid] = seq + 1;
    if (++g_ts.total == (long)TS_THREADS * TS_CALLS)
        CHECK(&g_rec, weft_loop_stop(g_ts.loop) == 0);
}

static void *ts_producer(void *arg)
{
    uintptr_t tid = (uintptr_t)arg;
    for (uint32_t seq = 0; seq < TS_CALLS; seq++) {
        void *payload = (void *)(tid * 1000000u + seq);
        int rc = weft_loop_call_soon_threadsafe(g_ts.loop, ts_cb, payload, NULL);
        CHECK(&g_rec, rc == 0);
        if (rc != 0)
            break;
    }
    return NULL;
}

static void test_loop_call_soon_threadsafe_delivers_each_call_once_in_order(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    memset(&g_ts, 0, sizeof g_ts);
    g_ts.loop = loop;
    pthread_t th[TS_THREADS];
    for (uintptr_t t = 0; t < TS_THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, ts_producer, (void *)t), 0);
    weft_handle_t *wd = arm_watchdog(loop, 60000 * MS);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    for (int t = 0; t < TS_THREADS; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
    disarm(wd);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_watchdog_fired), 0);
    assert_int_equal(g_ts.total, (long)TS_THREADS * TS_CALLS);
    for (int t = 0; t < TS_THREADS; t++)
        assert_int_equal(g_ts.next_seq[t], TS_CALLS);

    weft_loop_stats_t s;
    assert_int_equal(weft_loop_get_stats(loop, &s), 0);
    print_message("threadsafe_calls=%llu eventfd_writes=%llu (1 per %.1f calls) wakeups=%llu "
                  "sleeps=%llu iterations=%llu\n",
                  (unsigned long long)s.threadsafe_calls, (unsigned long long)s.eventfd_writes,
                  s.eventfd_writes ? (double)s.threadsafe_calls / (double)s.eventfd_writes : 0.0,
                  (unsigned long long)s.wakeups, (unsigned long long)s.sleeps,
                  (unsigned long long)s.iterations);
    assert_int_equal(s.threadsafe_calls, (uint64_t)TS_THREADS * TS_CALLS);
    /* A busy loop needs no wakeups: far fewer eventfd writes than calls. */
    assert_true(s.eventfd_writes * 10 < s.threadsafe_calls);
    /* At most one write per sleep. */
    assert_true(s.wakeups <= s.eventfd_writes);
    close_and_free(loop);
}

typedef struct waker {
    weft_loop_t *loop;
    atomic_int ran;
    pthread_t thread;
    bool started;
} waker_t;

static void waker_cb(void *arg)
{
    waker_t *w = arg;
    atomic_fetch_add(&w->ran, 1);
    CHECK(&g_rec, weft_loop_stop(w->loop) == 0);
}

static void *waker_thread(void *arg)
{
    waker_t *w = arg;
    /* The loop has nothing to do: by now it is asleep in epoll. */
    sleep_ms(20);
    CHECK(&g_rec, weft_loop_is_running(w->loop));
    CHECK(&g_rec, weft_loop_call_soon_threadsafe(w->loop, waker_cb, w, NULL) == 0);
    return NULL;
}

/* Runs on the loop, so the waker starts only once the loop runs. */
static void start_waker_cb(void *arg)
{
    waker_t *w = arg;
    w->started = pthread_create(&w->thread, NULL, waker_thread, w) == 0;
    CHECK(&g_rec, w->started);
}

static void test_loop_call_soon_threadsafe_wakes_sleeping_loop(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    waker_t w = {.loop = loop};
    atomic_init(&w.ran, 0);
    assert_int_equal(weft_loop_call_soon(loop, start_waker_cb, &w, NULL), 0);
    /* No timers, nothing ready after the first callback: only the eventfd
     * can end the sleep (the ctest timeout guards against a hang). */
    assert_int_equal(weft_loop_run_forever(loop), 0);
    if (w.started)
        assert_int_equal(pthread_join(w.thread, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&w.ran), 1);
    weft_loop_stats_t s;
    assert_int_equal(weft_loop_get_stats(loop, &s), 0);
    assert_true(s.sleeps >= 1);
    assert_true(s.eventfd_writes >= 1);
    assert_true(s.wakeups >= 1);
    assert_int_equal(s.threadsafe_calls, 1);
    close_and_free(loop);
}

/* More threadsafe calls than the loop takes in one step (256): a call_soon
 * made after them (here by the setup thread) still runs after all of them,
 * and only the posted ones count as threadsafe calls. */
static void test_loop_call_soon_after_a_backlog_of_threadsafe_calls_runs_after_it(void **state)
{
    (void)state;
    enum { N = 3000 }; /* about a dozen inbox blocks */
    weft_loop_t *loop = new_loop();
    post_steps_threadsafe(loop, 0, N);
    assert_int_equal(weft_loop_call_soon(loop, step_cb, (void *)(intptr_t)N, NULL), 0);
    assert_int_equal(weft_loop_call_soon(loop, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, N + 1);
    assert_steps_in_order(N + 1);
    weft_loop_stats_t s;
    assert_int_equal(weft_loop_get_stats(loop, &s), 0);
    assert_int_equal(s.threadsafe_calls, N);
    /* Spread over several iterations, not run in one. */
    assert_true(g_order.iter[N] > g_order.iter[0]);
    close_and_free(loop);
}

/* The loop cannot make a handle for a posted call: the call stays queued
 * and runs later, in order; nothing is lost. */
static void test_loop_threadsafe_calls_survive_a_failed_allocation_in_the_loop(void **state)
{
    (void)state;
    enum { N = 10 };
    weft_loop_t *loop = new_loop();
    post_steps_threadsafe(loop, 0, N);
    weft__alloc_fail_nth(1); /* the loop's first handle */
    assert_int_equal(weft_loop_stop(loop), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    weft__alloc_fail_nth(0);
    assert_int_equal(weft_loop_call_soon_threadsafe(loop, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, N);
    assert_steps_in_order(N);
    close_and_free(loop);
}

/* A post that needs a new inbox block when none can be allocated: without
 * a handle it fails with -ENOMEM and queues nothing; with one (allocated
 * first) it is still accepted, through the overflow stack, and runs. */
static void test_loop_call_soon_threadsafe_out_of_memory_for_a_block(void **state)
{
    (void)state;
    enum { FIRST = 254 }; /* slots 0..253 of the first block; 254 is its last */
    atomic_store(&g_never_count, 0);
    weft_loop_t *loop = new_loop();
    post_steps_threadsafe(loop, 0, FIRST);
    weft__alloc_fail_nth(1);
    assert_int_equal(weft_loop_call_soon_threadsafe(loop, never_cb, NULL, NULL), -ENOMEM);
    weft__alloc_fail_nth(2); /* the handle, then the block */
    weft_handle_t *h = NULL;
    assert_int_equal(weft_loop_call_soon_threadsafe(loop, step_cb, (void *)(intptr_t)FIRST, &h), 0);
    weft__alloc_fail_nth(0);
    assert_non_null(h);
    assert_int_equal(
        weft_loop_call_soon_threadsafe(loop, step_cb, (void *)(intptr_t)(FIRST + 1), NULL), 0);
    assert_int_equal(weft_loop_call_soon_threadsafe(loop, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_never_count), 0);
    assert_int_equal(g_order.n, FIRST + 2);
    assert_steps_in_order(FIRST);
    /* The overflow is taken after the inbox: FIRST may come after FIRST+1
     * (documented, out of memory only); each ran once. */
    int a = g_order.steps[FIRST], b = g_order.steps[FIRST + 1];
    assert_true((a == FIRST && b == FIRST + 1) || (a == FIRST + 1 && b == FIRST));
    assert_false(weft_handle_cancelled(h));
    weft_handle_release(h);
    close_and_free(loop);
}

/* =========================================================================
 * Lifecycle
 * ========================================================================= */

static void test_loop_run_on_closed_loop_is_eclosed(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_int_equal(weft_loop_close(loop), 0);
    assert_true(weft_loop_is_closed(loop));
    assert_int_equal(weft_loop_run_forever(loop), WEFT_ECLOSED);
    assert_int_equal(weft_loop_run_until_complete(loop, f), WEFT_ECLOSED);
    assert_int_equal(weft_loop_stop(loop), WEFT_ECLOSED);
    assert_false(weft_loop_is_running(loop));
    weft_future_release(f);
    weft_loop_free(loop);
}

static void close_while_running_cb(void *arg)
{
    weft_loop_t *loop = arg;
    CHECK(&g_rec, weft_loop_close(loop) == -EBUSY);
    CHECK(&g_rec, !weft_loop_is_closed(loop));
    CHECK(&g_rec, weft_loop_is_running(loop));
    order_add(1);
    CHECK(&g_rec, weft_loop_stop(loop) == 0);
}

static void test_loop_close_while_running_is_ebusy(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_loop_call_soon(loop, close_while_running_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, 1);
    assert_false(weft_loop_is_closed(loop));
    /* Still usable. */
    assert_int_equal(weft_loop_call_soon(loop, step_cb, (void *)(intptr_t)2, NULL), 0);
    assert_int_equal(weft_loop_stop(loop), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    assert_int_equal(g_order.n, 2);
    close_and_free(loop);
}

static void test_loop_close_twice_returns_zero(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_loop_close(loop), 0);
    assert_true(weft_loop_is_closed(loop));
    assert_int_equal(weft_loop_close(loop), 0);
    assert_true(weft_loop_is_closed(loop));
    weft_loop_free(loop);
    /* free also closes a loop that was never closed. */
    loop = new_loop();
    weft_loop_free(loop);
    weft_loop_free(NULL);
}

static void test_loop_scheduling_on_closed_loop_is_eclosed(void **state)
{
    (void)state;
    static int sentinel_obj;
    weft_handle_t *const sentinel = (weft_handle_t *)&sentinel_obj;
    atomic_store(&g_never_count, 0);
    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);

    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_loop_close(loop), 0);

    weft_handle_t *h = sentinel;
    assert_int_equal(weft_loop_call_soon(loop, never_cb, NULL, &h), WEFT_ECLOSED);
    assert_ptr_equal(h, sentinel);
    assert_int_equal(weft_loop_call_soon_threadsafe(loop, never_cb, NULL, &h), WEFT_ECLOSED);
    assert_ptr_equal(h, sentinel);
    assert_int_equal(weft_loop_call_later(loop, 1 * MS, never_cb, NULL, &h), WEFT_ECLOSED);
    assert_ptr_equal(h, sentinel);
    assert_int_equal(weft_loop_call_at(loop, weft_loop_time(loop), never_cb, NULL, &h),
                     WEFT_ECLOSED);
    assert_ptr_equal(h, sentinel);
    assert_int_equal(weft_loop_call_soon(loop, never_cb, NULL, NULL), WEFT_ECLOSED);
    assert_int_equal(weft_loop_add_reader(loop, p[0], never_cb, NULL), WEFT_ECLOSED);
    assert_int_equal(weft_loop_add_writer(loop, p[1], never_cb, NULL), WEFT_ECLOSED);

    weft_future_t *f = (weft_future_t *)&sentinel_obj;
    assert_int_equal(weft_future_new(loop, &f), WEFT_ECLOSED);
    assert_ptr_equal(f, (weft_future_t *)&sentinel_obj);

    weft_loop_free(loop);
    close(p[0]);
    close(p[1]);
    assert_int_equal(atomic_load(&g_never_count), 0);
}

static void dummy_handler(weft_loop_t *loop, const weft_error_context_t *ctx, void *arg)
{
    (void)loop;
    (void)ctx;
    (void)arg;
}

static void test_loop_null_arguments_are_einval(void **state)
{
    (void)state;
    static int sentinel_obj;
    weft_handle_t *const sentinel = (weft_handle_t *)&sentinel_obj;
    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    weft_handle_t *h = sentinel;
    weft_loop_stats_t s;
    weft_error_context_t ctx = {.message = "x", .code = -EIO};

    assert_int_equal(weft_loop_new(NULL), -EINVAL);
    assert_int_equal(weft_loop_run_forever(NULL), -EINVAL);
    assert_int_equal(weft_loop_run_until_complete(NULL, f), -EINVAL);
    assert_int_equal(weft_loop_run_until_complete(loop, NULL), -EINVAL);
    assert_int_equal(weft_loop_stop(NULL), -EINVAL);
    assert_int_equal(weft_loop_close(NULL), -EINVAL);

    assert_int_equal(weft_loop_call_soon(NULL, noop_cb, NULL, &h), -EINVAL);
    assert_int_equal(weft_loop_call_soon(loop, NULL, NULL, &h), -EINVAL);
    assert_int_equal(weft_loop_call_soon_threadsafe(NULL, noop_cb, NULL, &h), -EINVAL);
    assert_int_equal(weft_loop_call_soon_threadsafe(loop, NULL, NULL, &h), -EINVAL);
    assert_int_equal(weft_loop_call_later(NULL, 0, noop_cb, NULL, &h), -EINVAL);
    assert_int_equal(weft_loop_call_later(loop, 0, NULL, NULL, &h), -EINVAL);
    assert_int_equal(weft_loop_call_at(NULL, 0, noop_cb, NULL, &h), -EINVAL);
    assert_int_equal(weft_loop_call_at(loop, 0, NULL, NULL, &h), -EINVAL);
    assert_ptr_equal(h, sentinel);

    assert_int_equal(weft_handle_cancel(NULL), -EINVAL);

    assert_int_equal(weft_loop_add_reader(NULL, p[0], noop_cb, NULL), -EINVAL);
    assert_int_equal(weft_loop_add_reader(loop, p[0], NULL, NULL), -EINVAL);
    assert_int_equal(weft_loop_add_writer(NULL, p[1], noop_cb, NULL), -EINVAL);
    assert_int_equal(weft_loop_add_writer(loop, p[1], NULL, NULL), -EINVAL);
    assert_int_equal(weft_loop_remove_reader(NULL, p[0]), -EINVAL);
    assert_int_equal(weft_loop_remove_writer(NULL, p[1]), -EINVAL);
    assert_int_equal(weft_loop_remove_reader(loop, -1), -EINVAL);
    assert_int_equal(weft_loop_remove_writer(loop, -1), -EINVAL);

    assert_int_equal(weft_loop_set_debug(NULL, true), -EINVAL);
    assert_int_equal(weft_loop_set_slow_callback_duration(NULL, 10 * MS), -EINVAL);
    assert_int_equal(weft_loop_set_exception_handler(NULL, dummy_handler, NULL), -EINVAL);
    assert_int_equal(weft_loop_call_exception_handler(NULL, &ctx), -EINVAL);
    assert_int_equal(weft_loop_call_exception_handler(loop, NULL), -EINVAL);
    assert_int_equal(weft_loop_get_stats(NULL, &s), -EINVAL);
    assert_int_equal(weft_loop_get_stats(loop, NULL), -EINVAL);

    assert_false(weft_loop_is_running(NULL));
    assert_false(weft_loop_is_closed(NULL));
    assert_false(weft_loop_get_debug(NULL));
    assert_true(weft_handle_when(NULL) == -1);
    assert_false(weft_handle_cancelled(NULL));
    weft_handle_release(NULL);
    weft_loop_free(NULL);

    /* Nothing was registered by the failed calls. */
    assert_int_equal(weft_loop_remove_reader(loop, p[0]), 0);
    assert_int_equal(weft_loop_remove_writer(loop, p[1]), 0);

    weft_future_release(f);
    close_and_free(loop);
    close(p[0]);
    close(p[1]);
}

static weft_loop_t *g_other_loop;

static void nested_run_cb(void *arg)
{
    weft_future_t *f = arg;
    CHECK(&g_rec, weft_loop_run_forever(g_loop) == WEFT_EINVALSTATE);
    CHECK(&g_rec, weft_loop_run_until_complete(g_loop, f) == WEFT_EINVALSTATE);
    /* Another loop cannot run on a thread already running one. */
    CHECK(&g_rec, weft_loop_run_forever(g_other_loop) == WEFT_EINVALSTATE);
    CHECK(&g_rec, !weft_loop_is_running(g_other_loop));
    CHECK(&g_rec, weft_loop_is_running(g_loop));
    order_add(1);
    CHECK(&g_rec, weft_loop_stop(g_loop) == 0);
}

static void test_loop_run_inside_callback_is_einvalstate(void **state)
{
    (void)state;
    weft_loop_t *other = NULL;
    assert_int_equal(weft_loop_new(&other), 0);
    g_other_loop = other;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_int_equal(weft_loop_call_soon(loop, nested_run_cb, f, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, 1);
    assert_false(weft_future_done(f));
    weft_future_release(f);
    close_and_free(loop);
    assert_int_equal(weft_loop_close(other), 0);
    weft_loop_free(other);
    g_other_loop = NULL;
}

static void running_state_cb(void *arg)
{
    weft_loop_t *loop = arg;
    CHECK(&g_rec, weft_loop_is_running(loop));
    CHECK(&g_rec, weft_get_running_loop() == loop);
    order_add(1);
    CHECK(&g_rec, weft_loop_stop(loop) == 0);
}

static void test_loop_is_running_and_running_loop_only_inside_callbacks(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    assert_false(weft_loop_is_running(loop));
    assert_null(weft_get_running_loop());
    assert_int_equal(weft_loop_call_soon(loop, running_state_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(g_order.n, 1);
    assert_false(weft_loop_is_running(loop));
    assert_null(weft_get_running_loop());
    close_and_free(loop);
}

/* =========================================================================
 * run_until_complete
 * ========================================================================= */

static int g_result_obj;

static void set_result_cb(void *arg)
{
    CHECK(&g_rec, weft_future_set_result((weft_future_t *)arg, &g_result_obj) == 0);
}

static void set_error_cb(void *arg)
{
    CHECK(&g_rec, weft_future_set_error((weft_future_t *)arg, -EIO, "boom") == 0);
}

static void cancel_future_cb(void *arg)
{
    CHECK(&g_rec, weft_future_cancel((weft_future_t *)arg, "bye"));
}

static void test_loop_run_until_complete_returns_result_set_by_timer(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_ptr_equal(weft_future_get_loop(f), loop);
    assert_int_equal(weft_loop_call_later(loop, 5 * MS, set_result_cb, f, NULL), 0);
    assert_int_equal(weft_loop_run_until_complete(loop, f), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_false(weft_loop_is_running(loop));
    assert_true(weft_future_done(f));
    void *v = NULL;
    assert_int_equal(weft_future_result(f, &v), 0);
    assert_ptr_equal(v, &g_result_obj);
    weft_future_release(f);
    close_and_free(loop);
}

static void test_loop_run_until_complete_returns_future_error(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_int_equal(weft_loop_call_later(loop, 1 * MS, set_error_cb, f, NULL), 0);
    assert_int_equal(weft_loop_run_until_complete(loop, f), -EIO);
    ASSERT_NO_FAILURE(&g_rec);
    assert_non_null(weft_future_message(f));
    assert_string_equal(weft_future_message(f), "boom");
    assert_int_equal(weft_future_error(f), -EIO);
    weft_future_release(f);
    close_and_free(loop);
}

static void test_loop_run_until_complete_of_cancelled_future_is_ecanceled(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_int_equal(weft_loop_call_soon(loop, cancel_future_cb, f, NULL), 0);
    assert_int_equal(weft_loop_run_until_complete(loop, f), WEFT_ECANCELED);
    ASSERT_NO_FAILURE(&g_rec);
    assert_true(weft_future_cancelled(f));
    weft_future_release(f);
    close_and_free(loop);
}

static void test_loop_run_until_complete_of_done_future_returns_its_outcome(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_int_equal(weft_future_set_error(f, -ENOENT, NULL), 0);
    assert_int_equal(weft_loop_run_until_complete(loop, f), -ENOENT);
    assert_false(weft_loop_is_running(loop));
    weft_future_release(f);
    close_and_free(loop);
}

static void test_loop_run_until_complete_stopped_before_done_is_einvalstate(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_int_equal(weft_loop_call_soon(loop, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_until_complete(loop, f), WEFT_EINVALSTATE);
    ASSERT_NO_FAILURE(&g_rec);
    assert_false(weft_future_done(f));
    assert_false(weft_loop_is_running(loop));
    /* The loop can run the same future to completion afterwards. */
    assert_int_equal(weft_loop_call_soon(loop, set_result_cb, f, NULL), 0);
    assert_int_equal(weft_loop_run_until_complete(loop, f), 0);
    ASSERT_NO_FAILURE(&g_rec);
    void *v = NULL;
    assert_int_equal(weft_future_result(f, &v), 0);
    assert_ptr_equal(v, &g_result_obj);
    weft_future_release(f);
    close_and_free(loop);
}

/* =========================================================================
 * Thread rules
 * ========================================================================= */

typedef struct foreign {
    weft_loop_t *loop;
    int rfd, wfd;
    pthread_t thread;
    bool started;
} foreign_t;

static void *foreign_thread(void *arg)
{
    foreign_t *fg = arg;
    static int sentinel_obj;
    weft_handle_t *const sentinel = (weft_handle_t *)&sentinel_obj;
    weft_handle_t *h = sentinel;
    weft_loop_t *loop = fg->loop;

    CHECK(&g_rec, weft_get_running_loop() == NULL);
    CHECK(&g_rec, weft_loop_is_running(loop));
    CHECK(&g_rec, weft_loop_call_soon(loop, never_cb, NULL, &h) == -EPERM);
    CHECK(&g_rec, weft_loop_call_later(loop, 0, never_cb, NULL, &h) == -EPERM);
    CHECK(&g_rec, weft_loop_call_at(loop, weft_loop_time(loop), never_cb, NULL, &h) == -EPERM);
    CHECK(&g_rec, h == sentinel);
    CHECK(&g_rec, weft_loop_add_reader(loop, fg->rfd, never_cb, NULL) == -EPERM);
    CHECK(&g_rec, weft_loop_add_writer(loop, fg->wfd, never_cb, NULL) == -EPERM);
    CHECK(&g_rec, weft_loop_remove_reader(loop, fg->rfd) == -EPERM);
    CHECK(&g_rec, weft_loop_remove_writer(loop, fg->wfd) == -EPERM);
    /* The one way in from a foreign thread. */
    CHECK(&g_rec, weft_loop_call_soon_threadsafe(loop, stop_cb, loop, NULL) == 0);
    return NULL;
}

static void start_foreign_cb(void *arg)
{
    foreign_t *fg = arg;
    fg->started = pthread_create(&fg->thread, NULL, foreign_thread, fg) == 0;
    CHECK(&g_rec, fg->started);
}

static void run_foreign_thread_scenario(weft_loop_t *loop)
{
    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    atomic_store(&g_never_count, 0);
    foreign_t fg = {.loop = loop, .rfd = p[0], .wfd = p[1]};
    assert_int_equal(weft_loop_call_soon(loop, start_foreign_cb, &fg, NULL), 0);
    weft_handle_t *wd = arm_watchdog(loop, 10000 * MS);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    if (fg.started)
        assert_int_equal(pthread_join(fg.thread, NULL), 0);
    disarm(wd);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_watchdog_fired), 0);
    /* A few more iterations: nothing the foreign thread tried may run. */
    assert_int_equal(weft_loop_call_later(loop, 5 * MS, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_never_count), 0);
    assert_int_equal(weft_loop_remove_reader(loop, p[0]), 0);
    assert_int_equal(weft_loop_remove_writer(loop, p[1]), 0);
    close(p[0]);
    close(p[1]);
}

static void test_loop_calls_from_foreign_thread_while_running_are_eperm(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    run_foreign_thread_scenario(loop);
    close_and_free(loop);
}

/* =========================================================================
 * close reporting, exception handler
 * ========================================================================= */

static struct {
    atomic_int calls;
    weft_loop_t *loop;
    int code;
    char message[256];
    weft_future_t *future;
    weft_task_t *task;
    void *arg;
} g_exc;

static void recording_handler(weft_loop_t *loop, const weft_error_context_t *ctx, void *arg)
{
    /* Called on the loop thread; the test reads after close/return. */
    atomic_fetch_add(&g_exc.calls, 1);
    CHECK(&g_rec, ctx != NULL);
    if (ctx == NULL)
        return;
    CHECK(&g_rec, ctx->message != NULL);
    g_exc.loop = loop;
    g_exc.code = ctx->code;
    snprintf(g_exc.message, sizeof g_exc.message, "%s", ctx->message ? ctx->message : "");
    g_exc.future = ctx->future;
    g_exc.task = ctx->task;
    g_exc.arg = arg;
}

static void closed_report_handler(weft_loop_t *loop, const weft_error_context_t *ctx, void *arg)
{
    atomic_fetch_add(&g_exc.calls, 1);
    CHECK(&g_rec, ctx != NULL);
    CHECK(&g_rec, arg == &g_exc);
    CHECK(&g_rec, loop == g_loop);
    if (ctx == NULL)
        return;
    CHECK(&g_rec, ctx->code == WEFT_ECLOSED);
    CHECK(&g_rec, ctx->message != NULL);
}

static void exc_reset(void)
{
    atomic_store(&g_exc.calls, 0);
    g_exc.loop = NULL;
    g_exc.code = 0;
    g_exc.message[0] = '\0';
    g_exc.future = NULL;
    g_exc.task = NULL;
    g_exc.arg = NULL;
}

static void test_loop_close_reports_pending_callbacks_and_timers(void **state)
{
    (void)state;
    exc_reset();
    atomic_store(&g_never_count, 0);
    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_loop_set_exception_handler(loop, closed_report_handler, &g_exc), 0);
    enum { NH = 6 };
    weft_handle_t *h[NH] = {0};
    assert_int_equal(weft_loop_call_soon(loop, never_cb, NULL, &h[0]), 0);
    assert_int_equal(weft_loop_call_soon(loop, never_cb, NULL, &h[1]), 0);
    assert_int_equal(weft_loop_call_soon_threadsafe(loop, never_cb, NULL, &h[2]), 0);
    assert_int_equal(weft_loop_call_later(loop, 10000 * MS, never_cb, NULL, &h[3]), 0);
    assert_int_equal(
        weft_loop_call_at(loop, weft_loop_time(loop) + 20000 * MS, never_cb, NULL, &h[4]), 0);
    assert_int_equal(weft_loop_call_later(loop, 0, never_cb, NULL, &h[5]), 0);
    /* And two without handles (must not leak). */
    assert_int_equal(weft_loop_call_soon(loop, never_cb, NULL, NULL), 0);
    assert_int_equal(weft_loop_call_later(loop, 10000 * MS, never_cb, NULL, NULL), 0);

    assert_int_equal(weft_loop_close(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    int calls = atomic_load(&g_exc.calls);
    /* Reported, never dropped silently: once for all or once each. */
    assert_true(calls >= 1);
    assert_true(calls <= NH + 2);
    for (int i = 0; i < NH; i++) {
        assert_true(weft_handle_cancelled(h[i]));
        weft_handle_release(h[i]);
    }
    /* Closing again reports nothing new. */
    assert_int_equal(weft_loop_close(loop), 0);
    assert_int_equal(atomic_load(&g_exc.calls), calls);
    assert_int_equal(weft_loop_run_forever(loop), WEFT_ECLOSED);
    assert_int_equal(atomic_load(&g_never_count), 0);
    weft_loop_free(loop);
}

static void test_loop_close_does_not_report_ran_or_cancelled_handles(void **state)
{
    (void)state;
    exc_reset();
    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_loop_set_exception_handler(loop, closed_report_handler, &g_exc), 0);
    weft_handle_t *t = NULL, *s = NULL;
    assert_int_equal(weft_loop_call_later(loop, 10000 * MS, never_cb, NULL, &t), 0);
    assert_int_equal(weft_loop_call_soon(loop, never_cb, NULL, &s), 0);
    assert_int_equal(weft_handle_cancel(t), 0);
    assert_int_equal(weft_handle_cancel(s), 0);
    assert_int_equal(weft_loop_call_soon(loop, noop_cb, NULL, NULL), 0);
    assert_int_equal(weft_loop_stop(loop), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    assert_int_equal(weft_loop_close(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_exc.calls), 0);
    weft_handle_release(t);
    weft_handle_release(s);
    weft_loop_free(loop);
}

static void test_loop_call_exception_handler_calls_installed_handler(void **state)
{
    (void)state;
    exc_reset();
    weft_loop_t *loop = new_loop();
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    static int arg_obj;
    assert_int_equal(weft_loop_set_exception_handler(loop, recording_handler, &arg_obj), 0);
    weft_error_context_t ctx = {.message = "something broke", .code = -EPIPE, .future = f};
    assert_int_equal(weft_loop_call_exception_handler(loop, &ctx), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_exc.calls), 1);
    assert_ptr_equal(g_exc.loop, loop);
    assert_int_equal(g_exc.code, -EPIPE);
    assert_string_equal(g_exc.message, "something broke");
    assert_ptr_equal(g_exc.future, f);
    assert_null(g_exc.task);
    assert_ptr_equal(g_exc.arg, &arg_obj);

    /* NULL restores the default, which logs through the log handler. */
    assert_int_equal(weft_loop_set_exception_handler(loop, NULL, NULL), 0);
    assert_int_equal(weft_set_log_handler(log_capture_fn, NULL), 0);
    weft_error_context_t ctx2 = {.message = "default handler message", .code = WEFT_ECLOSED};
    assert_int_equal(weft_loop_call_exception_handler(loop, &ctx2), 0);
    assert_int_equal(weft_set_log_handler(NULL, NULL), 0);
    assert_int_equal(atomic_load(&g_exc.calls), 1);
    assert_true(atomic_load(&g_log.count) >= 1);
    assert_true(log_contains("default handler message"));
    assert_true(atomic_load(&g_log.by_level[WEFT_LOG_WARN]) +
                    atomic_load(&g_log.by_level[WEFT_LOG_ERROR]) >=
                1);

    weft_future_release(f);
    close_and_free(loop);
}

/* =========================================================================
 * Debug mode
 * ========================================================================= */

static void slow_cb(void *arg)
{
    sleep_ms(30);
    CHECK(&g_rec, weft_loop_stop((weft_loop_t *)arg) == 0);
}

static void test_loop_debug_mode_logs_slow_callback(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_loop_set_debug(loop, true), 0);
    assert_true(weft_loop_get_debug(loop));
    assert_int_equal(weft_loop_set_slow_callback_duration(loop, 10 * MS), 0);
    assert_int_equal(weft_set_log_handler(log_capture_fn, NULL), 0);
    assert_int_equal(weft_loop_call_soon(loop, slow_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    assert_int_equal(weft_set_log_handler(NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_true(atomic_load(&g_log.by_level[WEFT_LOG_WARN]) >= 1);
    /* <= 0 restores the default; debug can be switched off again. */
    assert_int_equal(weft_loop_set_slow_callback_duration(loop, 0), 0);
    assert_int_equal(weft_loop_set_debug(loop, false), 0);
    assert_false(weft_loop_get_debug(loop));
    close_and_free(loop);
}

static void test_loop_debug_mode_logs_wrong_thread_call(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    assert_int_equal(weft_loop_set_debug(loop, true), 0);
    assert_int_equal(weft_set_log_handler(log_capture_fn, NULL), 0);
    run_foreign_thread_scenario(loop);
    assert_int_equal(weft_set_log_handler(NULL, NULL), 0);
    /* Seven refused calls; at least one was logged. */
    assert_true(atomic_load(&g_log.count) >= 1);
    close_and_free(loop);
}

/* =========================================================================
 * fd readiness
 * ========================================================================= */

typedef struct piper {
    weft_loop_t *loop;
    int rfd, wfd;
    int reads;     /* reader callback calls */
    int writes;    /* writer callback calls */
    int max_reads; /* level test: remove and stop after this many */
    uint64_t iter[8];
} piper_t;

static void write_byte_cb(void *arg)
{
    piper_t *pp = arg;
    char c = 'x';
    CHECK(&g_rec, write(pp->wfd, &c, 1) == 1);
}

static void reader_once_cb(void *arg)
{
    piper_t *pp = arg;
    char c = 0;
    pp->reads++;
    CHECK(&g_rec, read(pp->rfd, &c, 1) == 1);
    CHECK(&g_rec, c == 'x');
    CHECK(&g_rec, weft_loop_remove_reader(pp->loop, pp->rfd) == 1);
    CHECK(&g_rec, weft_loop_remove_reader(pp->loop, pp->rfd) == 0);
    /* Another byte after removal must not call us; stop a bit later. */
    CHECK(&g_rec, weft_loop_call_later(pp->loop, 2 * MS, write_byte_cb, pp, NULL) == 0);
    CHECK(&g_rec, weft_loop_call_later(pp->loop, 20 * MS, stop_cb, pp->loop, NULL) == 0);
}

static void test_loop_add_reader_runs_callback_when_pipe_readable(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    weft_loop_t *loop = new_loop();
    piper_t pp = {.loop = loop, .rfd = p[0], .wfd = p[1]};
    assert_int_equal(weft_loop_add_reader(loop, p[0], reader_once_cb, &pp), 0);
    assert_int_equal(weft_loop_call_later(loop, 5 * MS, write_byte_cb, &pp, NULL), 0);
    weft_handle_t *wd = arm_watchdog(loop, 5000 * MS);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    disarm(wd);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_watchdog_fired), 0);
    assert_int_equal(pp.reads, 1);
    /* The second byte is still in the pipe, unread. */
    char c = 0;
    assert_int_equal(read(p[0], &c, 1), 1);
    assert_int_equal(c, 'x');
    close_and_free(loop);
    close(p[0]);
    close(p[1]);
}

static void reader_level_cb(void *arg)
{
    piper_t *pp = arg;
    char c = 0;
    weft_loop_stats_t s;
    CHECK(&g_rec, weft_loop_get_stats(pp->loop, &s) == 0);
    if (pp->reads < 8)
        pp->iter[pp->reads] = s.iterations;
    pp->reads++;
    CHECK(&g_rec, read(pp->rfd, &c, 1) == 1);
    if (pp->reads == pp->max_reads) {
        /* Drained: nothing left. */
        CHECK(&g_rec, read(pp->rfd, &c, 1) == -1 && errno == EAGAIN);
        CHECK(&g_rec, weft_loop_remove_reader(pp->loop, pp->rfd) == 1);
        CHECK(&g_rec, weft_loop_call_later(pp->loop, 5 * MS, stop_cb, pp->loop, NULL) == 0);
    }
}

static void test_loop_reader_is_called_again_while_data_remains(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    assert_int_equal(write(p[1], "xyz", 3), 3);
    weft_loop_t *loop = new_loop();
    piper_t pp = {.loop = loop, .rfd = p[0], .wfd = p[1], .max_reads = 3};
    assert_int_equal(weft_loop_add_reader(loop, p[0], reader_level_cb, &pp), 0);
    weft_handle_t *wd = arm_watchdog(loop, 2000 * MS);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    disarm(wd);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_watchdog_fired), 0);
    assert_int_equal(pp.reads, 3);
    /* Once per iteration. */
    assert_true(pp.iter[1] > pp.iter[0]);
    assert_true(pp.iter[2] > pp.iter[1]);
    close_and_free(loop);
    close(p[0]);
    close(p[1]);
}

static void writer_cb(void *arg)
{
    piper_t *pp = arg;
    pp->writes++;
    CHECK(&g_rec, weft_loop_remove_writer(pp->loop, pp->wfd) == 1);
    CHECK(&g_rec, weft_loop_remove_writer(pp->loop, pp->wfd) == 0);
    CHECK(&g_rec, weft_loop_call_later(pp->loop, 5 * MS, stop_cb, pp->loop, NULL) == 0);
}

static void test_loop_add_writer_runs_callback_when_pipe_writable(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    weft_loop_t *loop = new_loop();
    piper_t pp = {.loop = loop, .rfd = p[0], .wfd = p[1]};
    assert_int_equal(weft_loop_add_writer(loop, p[1], writer_cb, &pp), 0);
    weft_handle_t *wd = arm_watchdog(loop, 2000 * MS);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    disarm(wd);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_watchdog_fired), 0);
    assert_int_equal(pp.writes, 1);
    close_and_free(loop);
    close(p[0]);
    close(p[1]);
}

static void test_loop_add_reader_rejects_bad_fds(void **state)
{
    (void)state;
    atomic_store(&g_never_count, 0);
    weft_loop_t *loop = new_loop();

    assert_int_equal(weft_loop_add_reader(loop, -1, never_cb, NULL), -EINVAL);
    assert_int_equal(weft_loop_add_writer(loop, -1, never_cb, NULL), -EINVAL);

    /* A number that was just closed. */
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    close(p[0]);
    close(p[1]);
    assert_int_equal(weft_loop_add_reader(loop, p[0], never_cb, NULL), -EBADF);
    assert_int_equal(weft_loop_add_writer(loop, p[1], never_cb, NULL), -EBADF);

    /* Regular files cannot be polled. */
    FILE *tf = tmpfile();
    assert_non_null(tf);
    int fd = fileno(tf);
    assert_int_equal(weft_loop_add_reader(loop, fd, never_cb, NULL), -EPERM);
    assert_int_equal(weft_loop_add_writer(loop, fd, never_cb, NULL), -EPERM);
    assert_int_equal(weft_loop_remove_reader(loop, fd), 0);
    assert_int_equal(weft_loop_remove_writer(loop, fd), 0);

    /* The refused callbacks never run. */
    assert_int_equal(weft_loop_call_later(loop, 5 * MS, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_never_count), 0);
    fclose(tf);
    close_and_free(loop);
}

static void replaced_reader_cb(void *arg)
{
    piper_t *pp = arg;
    char c = 0;
    pp->reads++;
    CHECK(&g_rec, read(pp->rfd, &c, 1) == 1);
    /* One reader per fd: the replacement, removed once. */
    CHECK(&g_rec, weft_loop_remove_reader(pp->loop, pp->rfd) == 1);
    CHECK(&g_rec, weft_loop_remove_reader(pp->loop, pp->rfd) == 0);
    CHECK(&g_rec, weft_loop_stop(pp->loop) == 0);
}

static void test_loop_add_reader_twice_replaces_callback(void **state)
{
    (void)state;
    atomic_store(&g_never_count, 0);
    int p[2];
    assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    weft_loop_t *loop = new_loop();
    piper_t pp = {.loop = loop, .rfd = p[0], .wfd = p[1]};
    assert_int_equal(weft_loop_add_reader(loop, p[0], never_cb, NULL), 0);
    assert_int_equal(weft_loop_add_reader(loop, p[0], replaced_reader_cb, &pp), 0);
    assert_int_equal(write(p[1], "x", 1), 1);
    weft_handle_t *wd = arm_watchdog(loop, 2000 * MS);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    disarm(wd);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_watchdog_fired), 0);
    assert_int_equal(pp.reads, 1);
    assert_int_equal(atomic_load(&g_never_count), 0);
    close_and_free(loop);
    close(p[0]);
    close(p[1]);
}

static void both_reader_cb(void *arg)
{
    piper_t *pp = arg;
    char c = 0;
    pp->reads++;
    CHECK(&g_rec, read(pp->rfd, &c, 1) == 1);
    CHECK(&g_rec, weft_loop_remove_reader(pp->loop, pp->rfd) == 1);
    if (pp->writes > 0)
        CHECK(&g_rec, weft_loop_stop(pp->loop) == 0);
}

static void both_writer_cb(void *arg)
{
    piper_t *pp = arg;
    pp->writes++;
    CHECK(&g_rec, weft_loop_remove_writer(pp->loop, pp->wfd) == 1);
    if (pp->reads > 0)
        CHECK(&g_rec, weft_loop_stop(pp->loop) == 0);
}

static void test_loop_reader_and_writer_on_same_fd_are_independent(void **state)
{
    (void)state;
    /* A socketpair end is readable and writable at once. */
    int sv[2];
    assert_int_equal(socketpair_nb(sv), 0);
    weft_loop_t *loop = new_loop();
    piper_t pp = {.loop = loop, .rfd = sv[0], .wfd = sv[0]};
    assert_int_equal(write(sv[1], "x", 1), 1);
    assert_int_equal(weft_loop_add_reader(loop, sv[0], both_reader_cb, &pp), 0);
    assert_int_equal(weft_loop_add_writer(loop, sv[0], both_writer_cb, &pp), 0);
    weft_handle_t *wd = arm_watchdog(loop, 2000 * MS);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    disarm(wd);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&g_watchdog_fired), 0);
    assert_int_equal(pp.reads, 1);
    assert_int_equal(pp.writes, 1);
    close_and_free(loop);
    close(sv[0]);
    close(sv[1]);
}

/* =========================================================================
 * Stats and time
 * ========================================================================= */

static void test_loop_get_stats_counts_callbacks_and_timers(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    for (int i = 0; i < 10; i++)
        assert_int_equal(weft_loop_call_soon(loop, noop_cb, NULL, NULL), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(weft_loop_call_later(loop, i * MS, noop_cb, NULL, NULL), 0);
    assert_int_equal(weft_loop_call_later(loop, 5 * MS, stop_cb, loop, NULL), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    ASSERT_NO_FAILURE(&g_rec);
    weft_loop_stats_t s;
    assert_int_equal(weft_loop_get_stats(loop, &s), 0);
    assert_int_equal(s.callbacks_run, 15);
    assert_int_equal(s.timers_fired, 5);
    assert_int_equal(s.timers_cancelled, 0);
    assert_int_equal(s.threadsafe_calls, 0);
    assert_true(s.iterations >= 1);
    close_and_free(loop);
}

static void test_loop_get_stats_with_null_is_einval(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_loop_stats_t s;
    memset(&s, 0x5a, sizeof s);
    weft_loop_stats_t before = s;
    assert_int_equal(weft_loop_get_stats(NULL, &s), -EINVAL);
    /* Out-param untouched on error. */
    assert_memory_equal(&s, &before, sizeof s);
    assert_int_equal(weft_loop_get_stats(loop, NULL), -EINVAL);
    close_and_free(loop);
}

static void test_loop_time_is_monotonic_clock_and_never_decreases(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    int64_t before = mono_ns();
    int64_t t = weft_loop_time(loop);
    int64_t after = mono_ns();
    assert_true(t >= before);
    assert_true(t <= after);
    int64_t prev = t;
    for (int i = 0; i < 100000; i++) {
        int64_t now = weft_loop_time(loop);
        if (now < prev)
            fail_msg("loop time went back: %lld after %lld", (long long)now, (long long)prev);
        prev = now;
    }
    int64_t t0 = weft_loop_time(loop);
    sleep_ms(2);
    assert_true(weft_loop_time(loop) - t0 >= 2 * MS);
    close_and_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(test_loop_new_starts_idle_with_zero_stats),
        TEST(test_loop_call_soon_runs_in_fifo_order),
        TEST(test_loop_callbacks_keep_causal_order_across_threads),
        TEST(test_loop_callback_scheduled_by_callback_runs_next_iteration),
        TEST(test_loop_stop_before_run_forever_runs_one_iteration),
        TEST(test_loop_timer_never_runs_before_deadline),
        TEST(test_loop_timers_with_equal_deadlines_run_in_scheduling_order),
        TEST(test_loop_timers_scheduled_out_of_order_run_sorted_by_deadline),
        TEST(test_loop_cancelled_timers_never_run),
        TEST(test_loop_timer_cancelled_from_another_thread_never_runs),
        TEST(test_loop_call_at_in_the_past_runs_next_iteration),
        TEST(test_loop_handle_when_is_deadline_for_timers_and_minus_one_otherwise),
        TEST(test_loop_timer_cancelled_by_callback_in_same_iteration_does_not_run),
        TEST(test_loop_many_timers_with_cancellations_run_in_deadline_order),
        TEST(test_loop_call_soon_threadsafe_delivers_each_call_once_in_order),
        TEST(test_loop_call_soon_threadsafe_wakes_sleeping_loop),
        TEST(test_loop_call_soon_after_a_backlog_of_threadsafe_calls_runs_after_it),
        TEST(test_loop_threadsafe_calls_survive_a_failed_allocation_in_the_loop),
        TEST(test_loop_call_soon_threadsafe_out_of_memory_for_a_block),
        TEST(test_loop_run_on_closed_loop_is_eclosed),
        TEST(test_loop_close_while_running_is_ebusy),
        TEST(test_loop_close_twice_returns_zero),
        TEST(test_loop_scheduling_on_closed_loop_is_eclosed),
        TEST(test_loop_null_arguments_are_einval),
        TEST(test_loop_run_inside_callback_is_einvalstate),
        TEST(test_loop_is_running_and_running_loop_only_inside_callbacks),
        TEST(test_loop_run_until_complete_returns_result_set_by_timer),
        TEST(test_loop_run_until_complete_returns_future_error),
        TEST(test_loop_run_until_complete_of_cancelled_future_is_ecanceled),
        TEST(test_loop_run_until_complete_of_done_future_returns_its_outcome),
        TEST(test_loop_run_until_complete_stopped_before_done_is_einvalstate),
        TEST(test_loop_calls_from_foreign_thread_while_running_are_eperm),
        TEST(test_loop_close_reports_pending_callbacks_and_timers),
        TEST(test_loop_close_does_not_report_ran_or_cancelled_handles),
        TEST(test_loop_call_exception_handler_calls_installed_handler),
        TEST(test_loop_debug_mode_logs_slow_callback),
        TEST(test_loop_debug_mode_logs_wrong_thread_call),
        TEST(test_loop_add_reader_runs_callback_when_pipe_readable),
        TEST(test_loop_reader_is_called_again_while_data_remains),
        TEST(test_loop_add_writer_runs_callback_when_pipe_writable),
        TEST(test_loop_add_reader_rejects_bad_fds),
        TEST(test_loop_add_reader_twice_replaces_callback),
        TEST(test_loop_reader_and_writer_on_same_fd_are_independent),
        TEST(test_loop_get_stats_counts_callbacks_and_timers),
        TEST(test_loop_get_stats_with_null_is_einval),
        TEST(test_loop_time_is_monotonic_clock_and_never_decreases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
