/* Tests for the multi-worker runtime (include/weft/runtime.h), seen from
 * the scheduling side: wakes that cross workers resume a task exactly once
 * per completion; the LIFO slot cap and the 61-tick fairness keep a
 * ping-ponging pair from starving other tasks and timers; a worker stuck
 * in a long task or callback does not stop the others; shutdown cancels
 * thousands of pending tasks, runs each done callback once and abandons
 * tasks that ignore cancellation; thread-local state read by a task after
 * it migrated; and every runtime function with each code it documents.
 *
 * Nothing here calls a cmocka assert inside a task, a loop callback or a
 * helper thread: those record with CHECK(&g_rec, ...) and the test thread
 * calls ASSERT_NO_FAILURE(&g_rec) once the runtime or the task it waits
 * for is done (STYLE.md, "Tests").  Every runtime ends shut down with no
 * task left in weft_all_tasks.  No assertion is about speed: waits are
 * liveness limits (WAIT_LIMIT) that only a hang reaches.
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
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "sched/worker.h" /* the runtime's task set, for the leavers test */
#include "test/support/check.h"
#include "weft.h"

#define MS  INT64_C(1000000)
#define SEC (INT64_C(1000) * MS)

/* How long anything may take before the test calls it a hang.  Generous:
 * ThreadSanitizer builds on a loaded two-core machine are slow. */
#define WAIT_LIMIT (30 * SEC)

/* Limit for the spinning parts of a test (a blocked worker, a ping-pong
 * that waits for others to progress).  Reaching it means the behaviour
 * under test did not happen; it is well below WAIT_LIMIT so the test
 * thread still sees the tasks finish and reports the real cause. */
#define SPIN_LIMIT (10 * SEC)

/* 1 GiB is the documented stack-size limit; one byte more is refused. */
#define STACK_MAX     ((size_t)1024 * 1024 * 1024)
#define STACK_TOO_BIG (STACK_MAX + 1)

/* The largest runtime a test here starts (the machine has 2 cores; more
 * workers than cores is the point of several tests). */
#define MAX_WORKERS 8

static check_rec_t g_rec;

/* From a task: await each of the n tasks of t that is not NULL (each must
 * succeed) and release it. */
static void await_release_all(weft_task_t **t, int n)
{
    for (int i = 0; i < n; i++) {
        if (t[i] == NULL)
            continue;
        CHECK(&g_rec, weft_await(weft_task_future(t[i]), NULL) == 0);
        weft_task_release(t[i]);
    }
}

/* An address no weft function hands out: proves out-params stay untouched
 * on error (DESIGN.md, "Public API conventions"). */
static char sentinel_obj;
#define SENTINEL ((void *)&sentinel_obj)

static int tag_a;

static int setup(void **state)
{
    (void)state;
    check_rec_init(&g_rec);
    return 0;
}

#define TEST(fn) cmocka_unit_test_setup(fn, setup)

/* ---- time and threads ----------------------------------------------------- */

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

/* The kernel's id of the calling thread.  A real system call every time:
 * unlike pthread_self() (declared __attribute__((const)) by glibc) no
 * compiler can reuse its value across a suspension, so it is the ground
 * truth for "which worker runs this task now". */
__attribute__((noinline)) static pid_t thread_id(void)
{
    return (pid_t)syscall(SYS_gettid);
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Test thread: poll until *a >= want, at most WAIT_LIMIT. */
static bool wait_atomic_ge(atomic_int *a, int want)
{
    int64_t deadline = now_ns() + WAIT_LIMIT;
    while (atomic_load(a) < want) {
        if (now_ns() > deadline)
            return false;
        sleep_ms(1);
    }
    return true;
}

/* ---- runtimes ------------------------------------------------------------ */

static weft_runtime_t *new_rt(unsigned workers)
{
    weft_config_t cfg = {.workers = workers};
    weft_runtime_t *rt = NULL;
    assert_int_equal(weft_runtime_new(&cfg, &rt), 0);
    assert_non_null(rt);
    assert_int_equal(weft_runtime_workers(rt), workers);
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

static void assert_no_task_left(weft_runtime_t *rt)
{
    int n = 0;
    assert_int_equal(weft_all_tasks(rt, count_visit, &n), 0);
    assert_int_equal(n, 0);
}

/* Shut down with every task finished (none abandoned), prove none is left,
 * free. */
static void free_rt(weft_runtime_t *rt)
{
    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    assert_no_task_left(rt);
    weft_runtime_free(rt);
}

static int loop_index(weft_runtime_t *rt, weft_loop_t *loop)
{
    for (unsigned i = 0; i < weft_runtime_workers(rt); i++)
        if (weft_runtime_loop(rt, i) == loop)
            return (int)i;
    return -1;
}

static weft_worker_stats_t stats_of(weft_runtime_t *rt, unsigned i)
{
    weft_worker_stats_t s;
    memset(&s, 0, sizeof s);
    assert_int_equal(weft_runtime_worker_stats(rt, i, &s), 0);
    return s;
}

static weft_worker_stats_t stats_sum(weft_runtime_t *rt)
{
    weft_worker_stats_t sum;
    memset(&sum, 0, sizeof sum);
    for (unsigned i = 0; i < weft_runtime_workers(rt); i++) {
        weft_worker_stats_t s = stats_of(rt, i);
        sum.tasks_run += s.tasks_run;
        sum.steals += s.steals;
        sum.stolen_tasks += s.stolen_tasks;
        sum.parks += s.parks;
        sum.eventfd_writes += s.eventfd_writes;
        sum.inject_pops += s.inject_pops;
        sum.lifo_runs += s.lifo_runs;
    }
    return sum;
}

/* Any thread. */
static uint64_t loop_callbacks_run(weft_loop_t *loop)
{
    weft_loop_stats_t s;
    memset(&s, 0, sizeof s);
    CHECK(&g_rec, weft_loop_get_stats(loop, &s) == 0);
    return s.callbacks_run;
}

/* Run fn(arg) on `loop` (a worker's loop) and wait until it has run. */
typedef struct on_loop_call {
    weft_callback_fn fn;
    void *arg;
    atomic_int done;
} on_loop_call_t;

static void on_loop_trampoline(void *arg)
{
    on_loop_call_t *c = arg;
    c->fn(c->arg);
    atomic_store(&c->done, 1);
}

static void call_on_loop(weft_loop_t *loop, weft_callback_fn fn, void *arg)
{
    on_loop_call_t c = {.fn = fn, .arg = arg};
    atomic_init(&c.done, 0);
    assert_int_equal(weft_loop_call_soon_threadsafe(loop, on_loop_trampoline, &c, NULL), 0);
    assert_true(wait_atomic_ge(&c.done, 1));
}

/* Which thread runs each worker's loop: the ground truth for the TLS
 * checks after a migration. */
typedef struct worker_map {
    unsigned n;
    pid_t tid[MAX_WORKERS];
    weft_loop_t *loop[MAX_WORKERS];
} worker_map_t;

typedef struct map_slot {
    worker_map_t *map;
    unsigned index;
    weft_runtime_t *rt;
} map_slot_t;

static void map_record_cb(void *arg)
{
    map_slot_t *s = arg;
    s->map->tid[s->index] = thread_id();
    s->map->loop[s->index] = weft_get_running_loop();
    /* A worker's loop callback: no task, but the runtime is known. */
    CHECK(&g_rec, weft_current_task() == NULL);
    CHECK(&g_rec, weft_get_running_runtime() == s->rt);
}

static void map_workers(weft_runtime_t *rt, worker_map_t *map)
{
    memset(map, 0, sizeof *map);
    map->n = weft_runtime_workers(rt);
    assert_true(map->n <= MAX_WORKERS);
    for (unsigned i = 0; i < map->n; i++) {
        map_slot_t s = {map, i, rt};
        call_on_loop(weft_runtime_loop(rt, i), map_record_cb, &s);
        assert_ptr_equal(map->loop[i], weft_runtime_loop(rt, i));
    }
    for (unsigned i = 0; i < map->n; i++)
        for (unsigned j = i + 1; j < map->n; j++)
            assert_int_not_equal(map->tid[i], map->tid[j]);
}

static weft_loop_t *map_loop_of(const worker_map_t *map, pid_t tid)
{
    for (unsigned i = 0; i < map->n; i++)
        if (map->tid[i] == tid)
            return map->loop[i];
    return NULL;
}

/* ---- small task bodies and callbacks -------------------------------------- */

static void nothing_cb(void *arg)
{
    (void)arg;
}

static int noop_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    return 0;
}

static int return_code_body(void *arg, void **result)
{
    (void)result;
    return (int)(intptr_t)arg;
}

static int return_arg_body(void *arg, void **result)
{
    *result = arg;
    return 0;
}

static void count_done_cb(weft_future_t *f, void *arg)
{
    (void)f;
    atomic_fetch_add((atomic_int *)arg, 1);
}

/* ======================================================================== */
/* 1. Cross-worker wakes resume a task exactly once per completion           */
/* ======================================================================== */

/* A pinned to worker 0's loop awaits PINNED_ROUNDS futures; B, pinned to
 * worker 1's loop, completes future k only once A has suspended on it.  A
 * pinned task is resumed by a callback on its home loop, and nothing else
 * runs callbacks on that loop here, so the loop's callbacks_run counter
 * counts A's steps exactly: B can tell when A is parked, and at the end
 * the count must be 1 (first run) + one per completion — more would be a
 * duplicate resume, fewer a lost wake (which also hangs A). */
enum { PINNED_ROUNDS = 5000 };

typedef struct pinned_pp {
    weft_loop_t *home_a, *home_b;
    weft_future_t *to_a[PINNED_ROUNDS];
    uint64_t base; /* callbacks_run of home_a before A was spawned */
    int a_rounds, b_rounds;
    int a_off_home, b_off_home;
    int b_found_done; /* a future already done when B came to complete it */
} pinned_pp_t;

static int pinned_awaiter_body(void *arg, void **result)
{
    (void)result;
    pinned_pp_t *p = arg;
    weft_task_t *self = weft_current_task();
    for (int k = 0; k < PINNED_ROUNDS; k++) {
        void *v = NULL;
        int rc = weft_await(p->to_a[k], &v);
        CHECK(&g_rec, rc == 0);
        CHECK(&g_rec, v == (void *)(uintptr_t)(k + 1));
        CHECK(&g_rec, weft_current_task() == self);
        if (weft_get_running_loop() != p->home_a)
            p->a_off_home++;
        p->a_rounds++;
    }
    return 0;
}

static int pinned_completer_body(void *arg, void **result)
{
    (void)result;
    pinned_pp_t *p = arg;
    int64_t deadline = now_ns() + SPIN_LIMIT;
    for (int k = 0; k < PINNED_ROUNDS; k++) {
        /* A's (k+1)-th step has ended: it is parked on to_a[k]. */
        while (loop_callbacks_run(p->home_a) < p->base + (uint64_t)k + 1) {
            if (now_ns() > deadline) {
                CHECK(&g_rec, !"A never suspended on its future");
                break;
            }
            CHECK(&g_rec, weft_yield() == 0);
        }
        if (weft_future_done(p->to_a[k]))
            p->b_found_done++;
        CHECK(&g_rec, weft_future_set_result(p->to_a[k], (void *)(uintptr_t)(k + 1)) == 0);
        if (weft_get_running_loop() != p->home_b)
            p->b_off_home++;
        p->b_rounds++;
    }
    return 0;
}

static int pinned_pp_driver(void *arg, void **result)
{
    (void)result;
    pinned_pp_t *p = arg;
    weft_spawn_opts_t oa = {.name = "pinned-awaiter", .pinned = p->home_a};
    weft_spawn_opts_t ob = {.name = "pinned-completer", .pinned = p->home_b};
    weft_task_t *a = NULL, *b = NULL;
    p->base = loop_callbacks_run(p->home_a);
    CHECK(&g_rec, weft_spawn(pinned_awaiter_body, p, &oa, &a) == 0);
    CHECK(&g_rec, weft_spawn(pinned_completer_body, p, &ob, &b) == 0);
    if (a != NULL) {
        CHECK(&g_rec, weft_await(weft_task_future(a), NULL) == 0);
        weft_task_release(a);
    }
    if (b != NULL) {
        CHECK(&g_rec, weft_await(weft_task_future(b), NULL) == 0);
        weft_task_release(b);
    }
    return 0;
}

static void
test_runtime_pinned_task_woken_from_another_worker_resumes_once_per_completion(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(3);
    pinned_pp_t *p = calloc(1, sizeof *p);
    assert_non_null(p);
    p->home_a = weft_runtime_loop(rt, 0);
    p->home_b = weft_runtime_loop(rt, 1);
    for (int k = 0; k < PINNED_ROUNDS; k++)
        assert_int_equal(weft_future_new(p->home_a, &p->to_a[k]), 0);

    assert_int_equal(run_in(rt, pinned_pp_driver, p, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(p->a_rounds, PINNED_ROUNDS);
    assert_int_equal(p->b_rounds, PINNED_ROUNDS);
    assert_int_equal(p->a_off_home, 0);
    assert_int_equal(p->b_off_home, 0);
    assert_int_equal(p->b_found_done, 0);
    /* A's last step is counted when its callback returns, which may be
     * after the driver saw A done: read the count once the workers are
     * joined.  One step for the first run, exactly one per completion. */
    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    uint64_t steps = loop_callbacks_run(p->home_a) - p->base;
    if (steps != (uint64_t)PINNED_ROUNDS + 1)
        fail_msg("A ran %llu steps for %d completions (expected %d)", (unsigned long long)steps,
                 PINNED_ROUNDS, PINNED_ROUNDS + 1);
    for (int k = 0; k < PINNED_ROUNDS; k++) {
        assert_true(weft_future_done(p->to_a[k]));
        weft_future_release(p->to_a[k]);
    }
    free(p);
    assert_no_task_left(rt);
    weft_runtime_free(rt);
}

/* Unpinned consumers, each awaiting a future that a callback on another
 * worker's loop completes.  The wake comes from that other worker's
 * thread, so the task may move there.  Only these tasks run, so the
 * workers' tasks_run counters add up to their steps: at most one first
 * run each plus one per await that found its future still pending. */
enum { CB_CONSUMERS = 4, CB_ROUNDS = 2000 };

typedef struct completion {
    weft_future_t *f;
    uintptr_t value;
    pid_t tid; /* the completer's thread, written before set_result */
} completion_t;

/* Holds a reference of its own on c->f, taken by the poster: the awaiting
 * task may see the future done, return and release its own reference
 * while set_result is still running here. */
static void complete_cb(void *arg)
{
    completion_t *c = arg;
    weft_future_t *f = c->f;
    void *value = (void *)c->value;
    c->tid = thread_id();
    /* c lives on the awaiting task's stack: not touched after this. */
    CHECK(&g_rec, weft_future_set_result(f, value) == 0);
    weft_future_release(f);
}

/* Post complete_cb to `loop` with the reference it needs. */
static int post_completion(weft_loop_t *loop, completion_t *c)
{
    weft_future_retain(c->f);
    int rc = weft_loop_call_soon_threadsafe(loop, complete_cb, c, NULL);
    if (rc != 0)
        weft_future_release(c->f);
    return rc;
}

typedef struct cb_consumer {
    weft_runtime_t *rt;
    int rounds;
    int pending_at_await; /* awaits that could suspend */
    int cross;            /* completions that ran on another thread */
    int moved;            /* steps that resumed on another thread */
} cb_consumer_t;

static int cb_consumer_body(void *arg, void **result)
{
    (void)result;
    cb_consumer_t *c = arg;
    unsigned n = weft_runtime_workers(c->rt);
    for (int k = 0; k < CB_ROUNDS; k++) {
        pid_t before = thread_id();
        int idx = loop_index(c->rt, weft_get_running_loop());
        CHECK(&g_rec, idx >= 0);
        if (idx < 0)
            return -EINVAL;
        weft_loop_t *other =
            weft_runtime_loop(c->rt, ((unsigned)idx + 1 + (unsigned)k % (n - 1)) % n);
        completion_t comp = {NULL, (uintptr_t)k + 1, 0};
        CHECK(&g_rec, weft_future_new(NULL, &comp.f) == 0);
        CHECK(&g_rec, post_completion(other, &comp) == 0);
        if (!weft_future_done(comp.f))
            c->pending_at_await++;
        void *v = NULL;
        CHECK(&g_rec, weft_await(comp.f, &v) == 0);
        CHECK(&g_rec, v == (void *)((uintptr_t)k + 1));
        CHECK(&g_rec, comp.tid != 0);
        if (comp.tid != before)
            c->cross++;
        if (thread_id() != before)
            c->moved++;
        weft_future_release(comp.f);
        c->rounds++;
    }
    return 0;
}

static void
test_runtime_task_woken_by_callback_on_another_worker_resumes_once_per_wake(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    cb_consumer_t c[CB_CONSUMERS];
    memset(c, 0, sizeof c);
    weft_future_t *f[CB_CONSUMERS];
    uint64_t before = stats_sum(rt).tasks_run;
    for (int i = 0; i < CB_CONSUMERS; i++) {
        c[i].rt = rt;
        assert_int_equal(weft_runtime_submit(rt, cb_consumer_body, &c[i], &f[i]), 0);
    }
    int pending = 0, cross = 0, moved = 0;
    for (int i = 0; i < CB_CONSUMERS; i++) {
        assert_int_equal(weft_future_wait(f[i], WAIT_LIMIT), 0);
        assert_int_equal(weft_future_result(f[i], NULL), 0);
        weft_future_release(f[i]);
    }
    ASSERT_NO_FAILURE(&g_rec);
    uint64_t steps = stats_sum(rt).tasks_run - before;
    for (int i = 0; i < CB_CONSUMERS; i++) {
        assert_int_equal(c[i].rounds, CB_ROUNDS);
        /* Every completion ran on another worker's thread. */
        assert_int_equal(c[i].cross, CB_ROUNDS);
        pending += c[i].pending_at_await;
        cross += c[i].cross;
        moved += c[i].moved;
    }
    print_message("  %d cross-worker wakes, %d of them found the future pending, %d moves, "
                  "%llu steps\n",
                  cross, pending, moved, (unsigned long long)steps);
    if (steps < (uint64_t)CB_CONSUMERS || steps > (uint64_t)(CB_CONSUMERS + pending))
        fail_msg("%llu task steps for %d first runs and at most %d suspending awaits",
                 (unsigned long long)steps, CB_CONSUMERS, pending);
    free_rt(rt);
}

/* A baton passed between two tasks: each await returns the future the
 * task must complete next, and completing it hands over a new future the
 * completer then awaits.  Only one side runs at a time; every hand-over is
 * a wake of the other side from a running task (into the waker's LIFO
 * slot, on whichever worker it runs). */
typedef struct baton_pair baton_pair_t;

typedef struct baton_side {
    baton_pair_t *pair;
    int id;
    weft_future_t *first_wait; /* A: the seed future; B: NULL */
    weft_future_t *first_give; /* B: the seed future; A: NULL */
    _Atomic pid_t waker_tid;   /* written by the partner before it completes */
    int gives, awaits, pending_at_await, cross;
} baton_side_t;

struct baton_pair {
    baton_side_t side[2];
    int max_gives;                              /* per side; 0 = no limit */
    bool (*should_stop)(baton_pair_t *pair);    /* nullable */
    void (*on_give)(baton_pair_t *pair, int n); /* nullable; n = total gives */
    void *ctx;
    atomic_int total_gives;
    atomic_int finished; /* sides that returned */
};

static int baton_body(void *arg, void **result)
{
    (void)result;
    baton_side_t *s = arg;
    baton_pair_t *p = s->pair;
    baton_side_t *partner = &p->side[1 - s->id];
    weft_future_t *wait = s->first_wait;
    weft_future_t *give = s->first_give;
    for (;;) {
        if (wait != NULL) {
            if (!weft_future_done(wait))
                s->pending_at_await++;
            pid_t before = thread_id();
            void *v = NULL;
            CHECK(&g_rec, weft_await(wait, &v) == 0);
            s->awaits++;
            if (atomic_load(&s->waker_tid) != before)
                s->cross++;
            weft_future_release(wait); /* the creator's reference */
            wait = NULL;
            give = v;
            if (give == NULL)
                break; /* the partner stopped */
            /* The partner awaits it and holds its own reference until it
             * is done, so taking ours now is safe. */
            weft_future_retain(give);
        }
        bool stop = (p->max_gives != 0 && s->gives + 1 >= p->max_gives) ||
                    (p->should_stop != NULL && p->should_stop(p));
        weft_future_t *next = NULL;
        if (!stop)
            CHECK(&g_rec, weft_future_new(NULL, &next) == 0);
        atomic_store(&partner->waker_tid, thread_id());
        CHECK(&g_rec, weft_future_set_result(give, next) == 0);
        weft_future_release(give);
        give = NULL;
        s->gives++;
        int n = atomic_fetch_add(&p->total_gives, 1) + 1;
        if (p->on_give != NULL)
            p->on_give(p, n);
        if (next == NULL)
            break;
        wait = next;
    }
    atomic_fetch_add(&p->finished, 1);
    return 0;
}

/* Prepare both sides; the seed future lives on `loop` and carries one
 * reference for each side. */
static void baton_init(baton_pair_t *p, weft_loop_t *loop)
{
    memset(p, 0, sizeof *p);
    atomic_init(&p->total_gives, 0);
    atomic_init(&p->finished, 0);
    weft_future_t *seed = NULL;
    assert_int_equal(weft_future_new(loop, &seed), 0);
    weft_future_retain(seed);
    for (int i = 0; i < 2; i++) {
        p->side[i].pair = p;
        p->side[i].id = i;
        atomic_init(&p->side[i].waker_tid, 0);
    }
    p->side[0].first_wait = seed;
    p->side[1].first_give = seed;
}

static void baton_check(const baton_pair_t *p)
{
    /* Every hand-over completed exactly one await of the other side. */
    assert_int_equal(atomic_load(&p->finished), 2);
    assert_int_equal(p->side[0].awaits, p->side[1].gives);
    assert_int_equal(p->side[1].awaits, p->side[0].gives);
    assert_int_equal(atomic_load(&p->total_gives), p->side[0].gives + p->side[1].gives);
}

enum { BATON_PAIRS = 3, BATON_GIVES = 5000 };

static void test_runtime_task_ping_pong_across_workers_resumes_once_per_wake(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    baton_pair_t *pairs = calloc(BATON_PAIRS, sizeof *pairs);
    assert_non_null(pairs);
    weft_future_t *f[BATON_PAIRS][2];
    uint64_t before = stats_sum(rt).tasks_run;
    for (int i = 0; i < BATON_PAIRS; i++) {
        baton_init(&pairs[i], weft_runtime_loop(rt, (unsigned)i % 4));
        pairs[i].max_gives = BATON_GIVES;
        for (int s = 0; s < 2; s++)
            assert_int_equal(weft_runtime_submit(rt, baton_body, &pairs[i].side[s], &f[i][s]), 0);
    }
    for (int i = 0; i < BATON_PAIRS; i++) {
        for (int s = 0; s < 2; s++) {
            assert_int_equal(weft_future_wait(f[i][s], WAIT_LIMIT), 0);
            assert_int_equal(weft_future_result(f[i][s], NULL), 0);
            weft_future_release(f[i][s]);
        }
    }
    ASSERT_NO_FAILURE(&g_rec);
    uint64_t steps = stats_sum(rt).tasks_run - before;
    int pending = 0, cross = 0;
    for (int i = 0; i < BATON_PAIRS; i++) {
        baton_check(&pairs[i]);
        /* Side B stops itself after BATON_GIVES hand-overs (the last one
         * tells A to stop). */
        assert_int_equal(pairs[i].side[1].gives, BATON_GIVES);
        for (int s = 0; s < 2; s++) {
            pending += pairs[i].side[s].pending_at_await;
            cross += pairs[i].side[s].cross;
        }
    }
    print_message("  %d awaits could suspend, %d woken from another thread, %llu steps\n", pending,
                  cross, (unsigned long long)steps);
    if (steps < 2 * BATON_PAIRS || steps > (uint64_t)(2 * BATON_PAIRS + pending))
        fail_msg("%llu task steps for %d first runs and at most %d suspending awaits",
                 (unsigned long long)steps, 2 * BATON_PAIRS, pending);
    free(pairs);
    free_rt(rt);
}

/* ======================================================================== */
/* 2. A ping-pong pair on one worker cannot starve other tasks or timers     */
/* ======================================================================== */

typedef struct starve {
    baton_pair_t pair;
    int64_t deadline;
    bool deadline_hit;
    atomic_int c_done, c2_done, d_done;
    /* Whether the pair was still passing the baton when each finished. */
    int c_gives_at_end, c2_gives_at_end, d_gives_at_end;
    int c_pp_finished_at_end, c2_pp_finished_at_end, d_pp_finished_at_end;
    int c_steps_during_pp; /* C's steps taken while the pair ran */
    weft_task_t *c2;
    int c2_spawn_rc;
} starve_t;

enum { STARVE_C_STEPS = 50, STARVE_D_SLEEPS = 5, STARVE_C2_AT = 100 };

/* docs/runtime.md: a worker runs at most 3 tasks in a row from its LIFO
 * slot.  On one worker the ring then gets a turn at least every 4th
 * hand-over, so a yielding task advances once per 4 hand-overs; the slack
 * covers the driver's and the sleeper's own wakes, which also go through
 * the slot. */
enum { LIFO_CAP = 3, STARVE_SLACK = 40 };

static int starve_c_body(void *arg, void **result)
{
    (void)result;
    starve_t *s = arg;
    for (int i = 0; i < STARVE_C_STEPS; i++) {
        CHECK(&g_rec, weft_yield() == 0);
        if (atomic_load(&s->pair.total_gives) > 0 && atomic_load(&s->pair.finished) == 0)
            s->c_steps_during_pp++;
    }
    s->c_gives_at_end = atomic_load(&s->pair.total_gives);
    s->c_pp_finished_at_end = atomic_load(&s->pair.finished);
    atomic_store(&s->c_done, 1);
    return 0;
}

static int starve_c2_body(void *arg, void **result)
{
    (void)result;
    starve_t *s = arg;
    for (int i = 0; i < STARVE_C_STEPS; i++)
        CHECK(&g_rec, weft_yield() == 0);
    s->c2_gives_at_end = atomic_load(&s->pair.total_gives);
    s->c2_pp_finished_at_end = atomic_load(&s->pair.finished);
    atomic_store(&s->c2_done, 1);
    return 0;
}

/* Its timers fire only through the fairness tick: the worker never parks
 * while the pair passes the baton. */
static int starve_d_body(void *arg, void **result)
{
    (void)result;
    starve_t *s = arg;
    for (int i = 0; i < STARVE_D_SLEEPS; i++)
        CHECK(&g_rec, weft_sleep(MS) == 0);
    s->d_gives_at_end = atomic_load(&s->pair.total_gives);
    s->d_pp_finished_at_end = atomic_load(&s->pair.finished);
    atomic_store(&s->d_done, 1);
    return 0;
}

static bool starve_should_stop(baton_pair_t *p)
{
    starve_t *s = p->ctx;
    if (atomic_load(&s->c_done) && atomic_load(&s->c2_done) && atomic_load(&s->d_done))
        return true;
    if (now_ns() > s->deadline) {
        s->deadline_hit = true;
        return true;
    }
    return false;
}

/* A third task spawned while the pair runs (from inside the pair). */
static void starve_on_give(baton_pair_t *p, int n)
{
    starve_t *s = p->ctx;
    if (n == STARVE_C2_AT)
        s->c2_spawn_rc = weft_spawn(starve_c2_body, s, NULL, &s->c2);
}

static int starve_driver(void *arg, void **result)
{
    (void)result;
    starve_t *s = arg;
    weft_task_t *c = NULL, *d = NULL, *a = NULL, *b = NULL;
    CHECK(&g_rec, weft_spawn(starve_c_body, s, NULL, &c) == 0);
    CHECK(&g_rec, weft_spawn(starve_d_body, s, NULL, &d) == 0);
    CHECK(&g_rec, weft_spawn(baton_body, &s->pair.side[0], NULL, &a) == 0);
    CHECK(&g_rec, weft_spawn(baton_body, &s->pair.side[1], NULL, &b) == 0);
    weft_task_t *all[4] = {a, b, c, d};
    await_release_all(all, 4);
    CHECK(&g_rec, s->c2_spawn_rc == 0);
    if (s->c2 != NULL) {
        CHECK(&g_rec, weft_await(weft_task_future(s->c2), NULL) == 0);
        weft_task_release(s->c2);
    }
    return 0;
}

static void test_runtime_ping_pong_on_one_worker_cannot_starve_a_third_task(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    starve_t *s = calloc(1, sizeof *s);
    assert_non_null(s);
    baton_init(&s->pair, weft_runtime_loop(rt, 0));
    s->pair.ctx = s;
    s->pair.should_stop = starve_should_stop;
    s->pair.on_give = starve_on_give;
    s->c2_spawn_rc = 1;
    atomic_init(&s->c_done, 0);
    atomic_init(&s->c2_done, 0);
    atomic_init(&s->d_done, 0);
    s->deadline = now_ns() + SPIN_LIMIT;
    weft_worker_stats_t before = stats_of(rt, 0);

    assert_int_equal(run_in(rt, starve_driver, s, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    weft_worker_stats_t after = stats_of(rt, 0);
    baton_check(&s->pair);
    int gives = atomic_load(&s->pair.total_gives);
    print_message("  %d hand-overs, %llu LIFO runs; C done after %d, C2 after %d, D after %d\n",
                  gives, (unsigned long long)(after.lifo_runs - before.lifo_runs),
                  s->c_gives_at_end, s->c2_gives_at_end, s->d_gives_at_end);
    /* The pair stopped because the others finished, not at the limit. */
    assert_false(s->deadline_hit);
    assert_int_equal(atomic_load(&s->c_done), 1);
    assert_int_equal(atomic_load(&s->c2_done), 1);
    assert_int_equal(atomic_load(&s->d_done), 1);
    /* Each finished while the pair was still going. */
    assert_int_equal(s->c_pp_finished_at_end, 0);
    assert_int_equal(s->c2_pp_finished_at_end, 0);
    assert_int_equal(s->d_pp_finished_at_end, 0);
    assert_true(s->c_gives_at_end > 0 && s->c_gives_at_end < gives);
    assert_true(s->c2_gives_at_end >= STARVE_C2_AT && s->c2_gives_at_end < gives);
    assert_true(s->d_gives_at_end > 0 && s->d_gives_at_end < gives);
    /* C interleaved with the pair rather than running before it started. */
    assert_true(s->c_steps_during_pp > STARVE_C_STEPS / 2);
    /* And got its turns as often as the slot's cap promises. */
    assert_true(s->c_gives_at_end <= (LIFO_CAP + 1) * STARVE_C_STEPS + STARVE_SLACK);
    assert_true(s->c2_gives_at_end - STARVE_C2_AT <=
                (LIFO_CAP + 1) * STARVE_C_STEPS + STARVE_SLACK);
    /* The pair really went through the LIFO slot. */
    assert_true(after.lifo_runs - before.lifo_runs >= (uint64_t)gives / 2);
    free(s);
    free_rt(rt);
}

/* ======================================================================== */
/* 3. A worker stuck in a long task or callback does not stop the others    */
/* ======================================================================== */

typedef struct blocked {
    weft_runtime_t *rt;
    atomic_int spinning;
    _Atomic(weft_loop_t *) blocked_loop;
    atomic_int children_done;
    atomic_int children_during_block;
    atomic_int children_off_blocked; /* steps on a worker other than the blocked one */
    atomic_int timer_fired;
    atomic_int timer_during_block;
    int n_children;
    bool deadline_hit;
    atomic_int finished;
} blocked_t;

static void blocked_init(blocked_t *b, weft_runtime_t *rt, int n_children)
{
    memset(b, 0, sizeof *b);
    b->rt = rt;
    b->n_children = n_children;
    atomic_init(&b->spinning, 0);
    atomic_init(&b->blocked_loop, NULL);
    atomic_init(&b->children_done, 0);
    atomic_init(&b->children_during_block, 0);
    atomic_init(&b->children_off_blocked, 0);
    atomic_init(&b->timer_fired, 0);
    atomic_init(&b->timer_during_block, 0);
    atomic_init(&b->finished, 0);
}

/* Spin without suspending until every child and the timer are done. */
static void blocked_spin(blocked_t *b)
{
    int64_t deadline = now_ns() + SPIN_LIMIT;
    while (atomic_load(&b->children_done) < b->n_children || atomic_load(&b->timer_fired) == 0) {
        if (now_ns() > deadline) {
            b->deadline_hit = true;
            break;
        }
        cpu_relax();
    }
    atomic_store(&b->spinning, 0);
}

/* Children yield and sleep: runnable work that only a worker other than
 * the blocked one can take, and timers armed where they run. */
static int blocked_child_body(void *arg, void **result)
{
    (void)result;
    blocked_t *b = arg;
    weft_loop_t *blocked_loop = atomic_load(&b->blocked_loop);
    for (int i = 0; i < 6; i++) {
        if (weft_get_running_loop() != blocked_loop)
            atomic_fetch_add(&b->children_off_blocked, 1);
        int rc = (i % 2 == 0) ? weft_yield() : weft_sleep(2 * MS);
        CHECK(&g_rec, rc == 0);
    }
    if (atomic_load(&b->spinning))
        atomic_fetch_add(&b->children_during_block, 1);
    atomic_fetch_add(&b->children_done, 1);
    return 0;
}

static void timer_fire_cb(void *arg)
{
    blocked_t *b = arg;
    if (atomic_load(&b->spinning))
        atomic_store(&b->timer_during_block, 1);
    atomic_store(&b->timer_fired, 1);
}

static void arm_timer_cb(void *arg)
{
    blocked_t *b = arg;
    CHECK(&g_rec,
          weft_loop_call_later(weft_get_running_loop(), 5 * MS, timer_fire_cb, b, NULL) == 0);
}

enum { BLOCKED_CHILDREN = 16 };

/* Spawns its children onto its own worker's run queue, then spins. */
static int blocking_task_body(void *arg, void **result)
{
    (void)result;
    blocked_t *b = arg;
    weft_task_t *kids[BLOCKED_CHILDREN];
    atomic_store(&b->spinning, 1);
    atomic_store(&b->blocked_loop, weft_get_running_loop());
    for (int i = 0; i < b->n_children; i++) {
        kids[i] = NULL;
        CHECK(&g_rec, weft_spawn(blocked_child_body, b, NULL, &kids[i]) == 0);
    }
    blocked_spin(b);
    await_release_all(kids, b->n_children);
    return 0;
}

static void test_runtime_worker_busy_in_a_task_does_not_stop_other_workers(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    blocked_t b;
    blocked_init(&b, rt, BLOCKED_CHILDREN);
    weft_worker_stats_t before[2] = {stats_of(rt, 0), stats_of(rt, 1)};
    weft_future_t *f = NULL;
    assert_int_equal(weft_runtime_submit(rt, blocking_task_body, &b, &f), 0);
    /* Wait until it spins, then arm a timer on the other worker's loop. */
    int64_t deadline = now_ns() + WAIT_LIMIT;
    while (atomic_load(&b.blocked_loop) == NULL && now_ns() < deadline)
        sleep_ms(1);
    weft_loop_t *blocked_loop = atomic_load(&b.blocked_loop);
    assert_non_null(blocked_loop);
    int bi = loop_index(rt, blocked_loop);
    assert_true(bi >= 0);
    unsigned other = 1u - (unsigned)bi;
    weft_worker_stats_t other_before = before[other];
    assert_int_equal(
        weft_loop_call_soon_threadsafe(weft_runtime_loop(rt, other), arm_timer_cb, &b, NULL), 0);

    assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
    assert_int_equal(weft_future_result(f, NULL), 0);
    weft_future_release(f);
    ASSERT_NO_FAILURE(&g_rec);
    assert_false(b.deadline_hit);
    assert_int_equal(atomic_load(&b.children_done), BLOCKED_CHILDREN);
    assert_int_equal(atomic_load(&b.children_during_block), BLOCKED_CHILDREN);
    assert_int_equal(atomic_load(&b.children_off_blocked), 6 * BLOCKED_CHILDREN);
    assert_int_equal(atomic_load(&b.timer_during_block), 1);
    /* The children sat in the blocked worker's queue: all of them were
     * stolen by the other worker. */
    weft_worker_stats_t other_after = stats_of(rt, other);
    assert_true(other_after.steals > other_before.steals);
    assert_true(other_after.stolen_tasks - other_before.stolen_tasks >= BLOCKED_CHILDREN);
    free_rt(rt);
}

/* A callback on worker 0's loop that blocks: tasks submitted meanwhile and
 * a timer on worker 1's loop still run.  Worker 0 runs callbacks inside its
 * park step (its loop iteration), so this also checks that a wake meant
 * for an idle worker does not go to a worker stuck in a callback. */
static void blocking_cb(void *arg)
{
    blocked_t *b = arg;
    atomic_store(&b->spinning, 1);
    blocked_spin(b);
    atomic_store(&b->finished, 1);
}

static int submitted_child_body(void *arg, void **result)
{
    return blocked_child_body(arg, result);
}

enum { BLOCKED_SUBMITS = 8 };

static void test_runtime_worker_busy_in_a_callback_does_not_stop_other_workers(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    blocked_t b;
    blocked_init(&b, rt, BLOCKED_SUBMITS);
    weft_loop_t *l0 = weft_runtime_loop(rt, 0), *l1 = weft_runtime_loop(rt, 1);
    atomic_store(&b.blocked_loop, l0);
    assert_int_equal(weft_loop_call_soon_threadsafe(l0, blocking_cb, &b, NULL), 0);
    assert_true(wait_atomic_ge(&b.spinning, 1));
    assert_int_equal(weft_loop_call_soon_threadsafe(l1, arm_timer_cb, &b, NULL), 0);
    weft_future_t *f[BLOCKED_SUBMITS];
    for (int i = 0; i < BLOCKED_SUBMITS; i++)
        assert_int_equal(weft_runtime_submit(rt, submitted_child_body, &b, &f[i]), 0);
    for (int i = 0; i < BLOCKED_SUBMITS; i++) {
        assert_int_equal(weft_future_wait(f[i], WAIT_LIMIT), 0);
        assert_int_equal(weft_future_result(f[i], NULL), 0);
        weft_future_release(f[i]);
    }
    assert_true(wait_atomic_ge(&b.finished, 1));
    ASSERT_NO_FAILURE(&g_rec);
    assert_false(b.deadline_hit);
    assert_int_equal(atomic_load(&b.children_during_block), BLOCKED_SUBMITS);
    assert_int_equal(atomic_load(&b.children_off_blocked), 6 * BLOCKED_SUBMITS);
    assert_int_equal(atomic_load(&b.timer_during_block), 1);
    free_rt(rt);
}

/* The same, with nothing else to wake worker 1: worker 0 re-parks last
 * (so it is the most recent entry of the idle set), then blocks in a
 * callback run by that park step.  Work submitted meanwhile must still
 * wake worker 1. */
static void test_runtime_submit_while_a_worker_blocks_in_a_callback_wakes_an_idle_one(void **state)
{
    (void)state;
    /* Regression: park() used to leave the idle set only after a whole
     * loop iteration, callbacks included, so weft__rt_notify_one() could
     * pick the worker stuck in the callback while worker 1 slept on.  A
     * worker now leaves the idle set as soon as its wait returns
     * (loop->on_unpark). */
    weft_runtime_t *rt = new_rt(2);
    weft_loop_t *l0 = weft_runtime_loop(rt, 0);
    for (unsigned i = 0; i < 2; i++) {
        int64_t deadline = now_ns() + WAIT_LIMIT;
        while (stats_of(rt, i).parks == 0 && now_ns() < deadline)
            sleep_ms(1);
        assert_true(stats_of(rt, i).parks > 0);
    }
    uint64_t p0 = stats_of(rt, 0).parks;
    call_on_loop(l0, nothing_cb, NULL);
    int64_t deadline = now_ns() + WAIT_LIMIT;
    while (stats_of(rt, 0).parks < p0 + 1 && now_ns() < deadline)
        sleep_ms(1);
    assert_true(stats_of(rt, 0).parks >= p0 + 1);

    blocked_t b;
    blocked_init(&b, rt, 1);
    atomic_store(&b.timer_fired, 1); /* no timer in this one */
    atomic_store(&b.blocked_loop, l0);
    assert_int_equal(weft_loop_call_soon_threadsafe(l0, blocking_cb, &b, NULL), 0);
    assert_true(wait_atomic_ge(&b.spinning, 1));
    /* One task: a second submit would wake worker 1 anyway (each wake
     * takes one worker out of the idle set). */
    weft_future_t *f = NULL;
    assert_int_equal(weft_runtime_submit(rt, submitted_child_body, &b, &f), 0);
    assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
    assert_int_equal(weft_future_result(f, NULL), 0);
    weft_future_release(f);
    assert_true(wait_atomic_ge(&b.finished, 1));
    ASSERT_NO_FAILURE(&g_rec);
    assert_false(b.deadline_hit);
    assert_int_equal(atomic_load(&b.children_during_block), 1);
    assert_int_equal(atomic_load(&b.children_off_blocked), 6);
    free_rt(rt);
}

/* ======================================================================== */
/* 4. Shutdown with thousands of pending tasks                               */
/* ======================================================================== */

enum {
    SD_SLEEPERS = 2000,
    SD_AWAITERS = 1500,
    SD_QUEUED = 1500,
    SD_BLOCKERS = 2, /* one per worker: keeps the queued tasks from starting */
    SD_SPAWNED = SD_SLEEPERS + SD_AWAITERS,
    SD_TOTAL = SD_SPAWNED + SD_QUEUED + SD_BLOCKERS,
};

typedef struct shutdown_probe {
    atomic_int started;        /* sleepers and awaiters that reached their wait */
    atomic_int wait_ecanceled; /* their sleep/await returned WEFT_ECANCELED */
    atomic_int wait_other;
    atomic_int queued_ran; /* queued tasks whose body ran (after the cancel) */
    atomic_int queued_first_ecanceled;
    atomic_int blockers_spinning;
    atomic_int blockers_saw_cancel;
    atomic_int done_calls[SD_TOTAL];
    weft_task_t *spawned[SD_SPAWNED];
    weft_future_t *gates[SD_AWAITERS]; /* never completed by anyone */
    int spawn_failures;
} shutdown_probe_t;

typedef struct sd_arg {
    shutdown_probe_t *p;
    int index;
} sd_arg_t;

static int sd_sleeper_body(void *arg, void **result)
{
    (void)result;
    shutdown_probe_t *p = arg;
    atomic_fetch_add(&p->started, 1);
    int rc = weft_sleep(100 * SEC);
    atomic_fetch_add(rc == WEFT_ECANCELED ? &p->wait_ecanceled : &p->wait_other, 1);
    return rc;
}

static int sd_awaiter_body(void *arg, void **result)
{
    (void)result;
    sd_arg_t *a = arg;
    atomic_fetch_add(&a->p->started, 1);
    int rc = weft_await(a->p->gates[a->index], NULL);
    atomic_fetch_add(rc == WEFT_ECANCELED ? &a->p->wait_ecanceled : &a->p->wait_other, 1);
    return rc;
}

static int sd_queued_body(void *arg, void **result)
{
    (void)result;
    shutdown_probe_t *p = arg;
    atomic_fetch_add(&p->queued_ran, 1);
    int rc = weft_sleep(100 * SEC);
    if (rc == WEFT_ECANCELED)
        atomic_fetch_add(&p->queued_first_ecanceled, 1);
    return rc;
}

/* Occupies its worker, without suspending, until shutdown asks it to stop. */
static int sd_blocker_body(void *arg, void **result)
{
    (void)result;
    shutdown_probe_t *p = arg;
    atomic_fetch_add(&p->blockers_spinning, 1);
    int64_t deadline = now_ns() + SPIN_LIMIT;
    while (weft_task_cancelling(weft_current_task()) == 0) {
        if (now_ns() > deadline)
            return -ETIME; /* shutdown never asked: reported by the test */
        cpu_relax();
    }
    atomic_fetch_add(&p->blockers_saw_cancel, 1);
    return WEFT_ECANCELED;
}

static int sd_driver(void *arg, void **result)
{
    (void)result;
    sd_arg_t *args = arg; /* SD_SPAWNED of them */
    shutdown_probe_t *p = args[0].p;
    for (int i = 0; i < SD_SPAWNED; i++) {
        weft_task_t *t = NULL;
        int rc = i < SD_SLEEPERS ? weft_spawn(sd_sleeper_body, p, NULL, &t)
                                 : weft_spawn(sd_awaiter_body, &args[i], NULL, &t);
        if (rc != 0) {
            p->spawn_failures++;
            continue;
        }
        p->spawned[i] = t;
        CHECK(&g_rec, weft_future_add_done_callback(weft_task_future(t), count_done_cb,
                                                    &p->done_calls[i]) == 0);
    }
    int64_t deadline = now_ns() + SPIN_LIMIT;
    while (atomic_load(&p->started) < SD_SPAWNED - p->spawn_failures && now_ns() < deadline)
        CHECK(&g_rec, weft_yield() == 0);
    return 0;
}

static void
test_runtime_shutdown_cancels_thousands_of_pending_tasks_each_done_callback_once(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(SD_BLOCKERS);
    shutdown_probe_t *p = calloc(1, sizeof *p);
    sd_arg_t *args = calloc(SD_SPAWNED, sizeof *args);
    assert_non_null(p);
    assert_non_null(args);
    for (int i = 0; i < SD_TOTAL; i++)
        atomic_init(&p->done_calls[i], 0);
    for (int i = 0; i < SD_SPAWNED; i++)
        args[i] = (sd_arg_t){p, i - SD_SLEEPERS};
    for (int i = 0; i < SD_AWAITERS; i++)
        assert_int_equal(weft_future_new(weft_runtime_loop(rt, (unsigned)i % 2), &p->gates[i]), 0);

    /* Sleepers and awaiters, all suspended in their wait. */
    assert_int_equal(run_in(rt, sd_driver, args, NULL), 0);
    assert_int_equal(p->spawn_failures, 0);
    assert_int_equal(atomic_load(&p->started), SD_SPAWNED);

    /* Both workers busy, then tasks that stay queued. */
    weft_future_t *blockers[SD_BLOCKERS], *queued[SD_QUEUED];
    for (int i = 0; i < SD_BLOCKERS; i++) {
        assert_int_equal(weft_runtime_submit(rt, sd_blocker_body, p, &blockers[i]), 0);
        assert_int_equal(weft_future_add_done_callback(blockers[i], count_done_cb,
                                                       &p->done_calls[SD_SPAWNED + SD_QUEUED + i]),
                         0);
        assert_true(wait_atomic_ge(&p->blockers_spinning, i + 1));
    }
    for (int i = 0; i < SD_QUEUED; i++) {
        assert_int_equal(weft_runtime_submit(rt, sd_queued_body, p, &queued[i]), 0);
        assert_int_equal(
            weft_future_add_done_callback(queued[i], count_done_cb, &p->done_calls[SD_SPAWNED + i]),
            0);
    }
    assert_int_equal(atomic_load(&p->queued_ran), 0);
    int live = 0;
    assert_int_equal(weft_all_tasks(rt, count_visit, &live), SD_TOTAL);
    assert_int_equal(live, SD_TOTAL);

    /* Everything cooperates with cancellation: nothing is abandoned. */
    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_no_task_left(rt);
    assert_int_equal(atomic_load(&p->blockers_saw_cancel), SD_BLOCKERS);
    assert_int_equal(atomic_load(&p->wait_ecanceled), SD_SPAWNED);
    assert_int_equal(atomic_load(&p->wait_other), 0);
    /* A queued task may run its body after the cancel request; its first
     * suspension then returns WEFT_ECANCELED. */
    assert_int_equal(atomic_load(&p->queued_first_ecanceled), atomic_load(&p->queued_ran));
    int not_once = 0, first_bad = -1;
    for (int i = 0; i < SD_TOTAL; i++) {
        if (atomic_load(&p->done_calls[i]) != 1) {
            not_once++;
            if (first_bad < 0)
                first_bad = i;
        }
    }
    if (not_once != 0)
        fail_msg("%d of %d done callbacks did not run exactly once (first: #%d ran %d times)",
                 not_once, SD_TOTAL, first_bad, atomic_load(&p->done_calls[first_bad]));
    for (int i = 0; i < SD_SPAWNED; i++) {
        assert_true(weft_future_cancelled(weft_task_future(p->spawned[i])));
        weft_task_release(p->spawned[i]);
    }
    for (int i = 0; i < SD_QUEUED; i++) {
        assert_true(weft_future_cancelled(queued[i]));
        weft_future_release(queued[i]);
    }
    for (int i = 0; i < SD_BLOCKERS; i++) {
        assert_true(weft_future_cancelled(blockers[i]));
        weft_future_release(blockers[i]);
    }
    /* Cancelling an awaiting task cancels the future it awaited. */
    for (int i = 0; i < SD_AWAITERS; i++) {
        assert_true(weft_future_cancelled(p->gates[i]));
        weft_future_release(p->gates[i]);
    }
    /* Idempotent. */
    assert_int_equal(weft_runtime_shutdown(rt, 0), 0);
    weft_runtime_free(rt);
    free(args);
    free(p);
}

/* Tasks that catch WEFT_ECANCELED and carry on: shutdown gives up on them
 * at its deadline, abandons them and says so with WEFT_ETIMEDOUT. */
typedef struct stubborn {
    atomic_int started;
    atomic_int cancels_seen;          /* WEFT_ECANCELED returns caught and ignored */
    _Atomic(weft_future_t *) awaited; /* the stubborn awaiter's current future */
    atomic_int reports;               /* exception-handler reports */
    atomic_int done_cb_reports;       /* ... about done callbacks that cannot run */
    atomic_int handlers_set;
} stubborn_t;

static int stubborn_sleeper_body(void *arg, void **result)
{
    (void)result;
    stubborn_t *s = arg;
    atomic_fetch_add(&s->started, 1);
    for (;;) {
        if (weft_sleep(MS) == WEFT_ECANCELED)
            atomic_fetch_add(&s->cancels_seen, 1);
    }
    return 0;
}

static int stubborn_yielder_body(void *arg, void **result)
{
    (void)result;
    stubborn_t *s = arg;
    atomic_fetch_add(&s->started, 1);
    for (;;) {
        if (weft_yield() == WEFT_ECANCELED)
            atomic_fetch_add(&s->cancels_seen, 1);
    }
    return 0;
}

/* Awaits a new future each time (a cancelled await cancels the future, so
 * awaiting it again would not suspend).  The test owns the current one:
 * an abandoned task's frames are dropped without unwinding. */
static int stubborn_awaiter_body(void *arg, void **result)
{
    (void)result;
    stubborn_t *s = arg;
    atomic_fetch_add(&s->started, 1);
    for (;;) {
        weft_future_t *f = NULL;
        if (weft_future_new(NULL, &f) != 0) {
            CHECK(&g_rec, !"weft_future_new failed");
            return -ENOMEM;
        }
        atomic_store(&s->awaited, f);
        if (weft_await(f, NULL) == WEFT_ECANCELED)
            atomic_fetch_add(&s->cancels_seen, 1);
        atomic_store(&s->awaited, NULL);
        weft_future_release(f);
    }
    return 0;
}

static int polite_sleeper_body(void *arg, void **result)
{
    (void)result;
    stubborn_t *s = arg;
    atomic_fetch_add(&s->started, 1);
    return weft_sleep(100 * SEC);
}

static void stubborn_exc_handler(weft_loop_t *loop, const weft_error_context_t *ctx, void *arg)
{
    (void)loop;
    stubborn_t *s = arg;
    atomic_fetch_add(&s->reports, 1);
    if (ctx != NULL && ctx->message != NULL && strstr(ctx->message, "done callback") != NULL)
        atomic_fetch_add(&s->done_cb_reports, 1);
}

static void set_stubborn_handler_cb(void *arg)
{
    stubborn_t *s = arg;
    CHECK(&g_rec,
          weft_loop_set_exception_handler(weft_get_running_loop(), stubborn_exc_handler, s) == 0);
    atomic_fetch_add(&s->handlers_set, 1);
}

enum { STUBBORN = 3, POLITE = 200 };

static void test_runtime_shutdown_abandons_tasks_that_ignore_cancellation(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    stubborn_t s;
    memset(&s, 0, sizeof s);
    atomic_init(&s.started, 0);
    atomic_init(&s.cancels_seen, 0);
    atomic_init(&s.awaited, NULL);
    atomic_init(&s.reports, 0);
    atomic_init(&s.done_cb_reports, 0);
    atomic_init(&s.handlers_set, 0);
    for (unsigned i = 0; i < 2; i++)
        call_on_loop(weft_runtime_loop(rt, i), set_stubborn_handler_cb, &s);
    assert_int_equal(atomic_load(&s.handlers_set), 2);

    weft_fn stubborn_fns[STUBBORN] = {stubborn_sleeper_body, stubborn_yielder_body,
                                      stubborn_awaiter_body};
    weft_future_t *f[STUBBORN + POLITE];
    atomic_int done_calls[STUBBORN + POLITE];
    for (int i = 0; i < STUBBORN + POLITE; i++) {
        atomic_init(&done_calls[i], 0);
        weft_fn fn = i < STUBBORN ? stubborn_fns[i] : polite_sleeper_body;
        assert_int_equal(weft_runtime_submit(rt, fn, &s, &f[i]), 0);
        assert_int_equal(weft_future_add_done_callback(f[i], count_done_cb, &done_calls[i]), 0);
    }
    assert_true(wait_atomic_ge(&s.started, STUBBORN + POLITE));

    assert_int_equal(weft_runtime_shutdown(rt, 300 * MS), WEFT_ETIMEDOUT);
    ASSERT_NO_FAILURE(&g_rec);
    assert_no_task_left(rt);
    /* Each stubborn task was asked (and said no) at least once. */
    assert_true(atomic_load(&s.cancels_seen) >= STUBBORN);
    /* The polite ones finished cancelled; their callbacks ran once. */
    for (int i = STUBBORN; i < STUBBORN + POLITE; i++) {
        assert_true(weft_future_cancelled(f[i]));
        assert_int_equal(atomic_load(&done_calls[i]), 1);
    }
    /* The abandoned ones end cancelled.  Their loops are closed by then,
     * so their done callbacks cannot run: each is reported instead. */
    int ran = 0;
    for (int i = 0; i < STUBBORN; i++) {
        assert_true(weft_future_done(f[i]));
        assert_true(weft_future_cancelled(f[i]));
        assert_int_equal(weft_future_result(f[i], NULL), WEFT_ECANCELED);
        int n = atomic_load(&done_calls[i]);
        assert_true(n == 0 || n == 1);
        ran += n;
    }
    assert_true(ran + atomic_load(&s.done_cb_reports) >= STUBBORN);
    print_message("  %d report(s), %d about done callbacks not run\n", atomic_load(&s.reports),
                  atomic_load(&s.done_cb_reports));
    for (int i = 0; i < STUBBORN + POLITE; i++)
        weft_future_release(f[i]);
    weft_future_release(atomic_load(&s.awaited));
    /* Idempotent: the second call has nothing left to abandon. */
    assert_int_equal(weft_runtime_shutdown(rt, 0), 0);
    weft_runtime_free(rt);
}

/* ======================================================================== */
/* 5. Thread-local state after a task migrated                               */
/* ======================================================================== */

/* weft's guarantee (docs/runtime.md "Rules for task code", DESIGN.md
 * "Coroutines and stacks"): a task may resume on another thread; errno is
 * per thread and is NOT carried across a suspension, so task code reads it
 * right after the failing call; weft's own thread-local state is reached
 * through non-inlined accessors with a compiler barrier, so
 * weft_current_task(), weft_get_running_loop() and
 * weft_get_running_runtime() called after a suspension describe the thread
 * the task runs on now, never a cached earlier one.  This test checks
 * exactly that, against the kernel's thread id, on tasks that are forced
 * to move: each round it awaits a future completed by a callback on
 * another worker's loop (the wake lands on that worker), then yields. */

/* A failing call and its errno, read right after it.  Kept in a
 * function of its own, called after the suspension, so no address of
 * errno computed on an earlier thread can be reused for the read: glibc
 * declares __errno_location() const, and GCC 12 and clang 14 at -O2 reuse
 * its result across an opaque call such as weft_await() when one function
 * touches errno both before and after it.  Such a function reads the
 * errno of the thread it left even when it reads right after the failing
 * call, so "read errno right after the call" alone does not make task
 * code correct; this test only relies on what it can. */
__attribute__((noinline)) static int failing_open_errno(void)
{
    errno = 0;
    int fd = open("/nonexistent-weft-test-dir/x", O_RDONLY);
    int e = errno;
    if (fd >= 0)
        close(fd);
    return fd < 0 ? e : 0;
}

__attribute__((noinline)) static int failing_close_errno(void)
{
    errno = 0;
    int rc = close(-1);
    int e = errno;
    return rc < 0 ? e : 0;
}

enum { MIGRANTS = 8, MIGRANT_ROUNDS = 150 };

typedef struct migrant {
    weft_runtime_t *rt;
    const worker_map_t *map;
    int steps;
    int moves;       /* steps that resumed on another thread than they left */
    int loop_wrong;  /* weft_get_running_loop() not the loop of this thread */
    int task_wrong;  /* weft_current_task() not this task */
    int rt_wrong;    /* weft_get_running_runtime() not rt */
    int errno_wrong; /* a failing call's errno read right after it was not its own */
    int unknown_tid; /* ran on a thread that is not a worker */
} migrant_t;

static void migrant_check_here(migrant_t *m, weft_task_t *self)
{
    pid_t tid = thread_id();
    weft_loop_t *truth = map_loop_of(m->map, tid);
    if (truth == NULL)
        m->unknown_tid++;
    if (weft_get_running_loop() != truth)
        m->loop_wrong++;
    if (weft_current_task() != self)
        m->task_wrong++;
    if (weft_get_running_runtime() != m->rt)
        m->rt_wrong++;
    if (failing_open_errno() != ENOENT)
        m->errno_wrong++;
    if (failing_close_errno() != EBADF)
        m->errno_wrong++;
}

static int migrant_body(void *arg, void **result)
{
    (void)result;
    migrant_t *m = arg;
    weft_task_t *self = weft_current_task();
    unsigned n = weft_runtime_workers(m->rt);
    for (int k = 0; k < MIGRANT_ROUNDS; k++) {
        pid_t before = thread_id();
        migrant_check_here(m, self);
        int idx = loop_index(m->rt, weft_get_running_loop());
        CHECK(&g_rec, idx >= 0);
        if (idx < 0)
            return -EINVAL;
        completion_t comp = {NULL, (uintptr_t)k + 1, 0};
        CHECK(&g_rec, weft_future_new(NULL, &comp.f) == 0);
        weft_loop_t *other =
            weft_runtime_loop(m->rt, ((unsigned)idx + 1 + (unsigned)k % (n - 1)) % n);
        CHECK(&g_rec, post_completion(other, &comp) == 0);
        CHECK(&g_rec, weft_await(comp.f, NULL) == 0);
        weft_future_release(comp.f);
        m->steps++;
        if (thread_id() != before)
            m->moves++;
        migrant_check_here(m, self);

        before = thread_id();
        CHECK(&g_rec, weft_yield() == 0);
        m->steps++;
        if (thread_id() != before)
            m->moves++;
        migrant_check_here(m, self);
    }
    return 0;
}

/* Direct yields: on a worker, weft_yield switches straight to the next
 * local task instead of going through the worker loop.  On one worker,
 * yielders must still interleave round-robin in FIFO order across many
 * fairness ticks, and the worker loop must still get its turn: a callback
 * posted to it runs within about one fairness period (61 ticks) of yields,
 * not when the yielders are done. */
#define DY_TASKS  3
#define DY_ROUNDS 300

typedef struct direct_yield {
    int order[DY_TASKS * DY_ROUNDS];
    int n;
    int seen_by_callback; /* -1 until the callback ran: n at that moment */
} direct_yield_t;

typedef struct dy_arg {
    direct_yield_t *d;
    int id;
} dy_arg_t;

static void dy_callback(void *arg)
{
    direct_yield_t *d = arg;
    d->seen_by_callback = d->n;
}

static int dy_yielder(void *arg, void **result)
{
    (void)result;
    dy_arg_t *a = arg;
    for (int i = 0; i < DY_ROUNDS; i++) {
        a->d->order[a->d->n++] = a->id;
        CHECK(&g_rec, weft_yield() == 0);
    }
    return 0;
}

static int dy_root(void *arg, void **result)
{
    (void)result;
    direct_yield_t *d = arg;
    dy_arg_t args[DY_TASKS];
    weft_task_t *t[DY_TASKS];
    for (int i = 0; i < DY_TASKS; i++) {
        args[i] = (dy_arg_t){d, i};
        CHECK(&g_rec, weft_spawn(dy_yielder, &args[i], NULL, &t[i]) == 0);
    }
    CHECK(&g_rec, weft_loop_call_soon(weft_get_running_loop(), dy_callback, d, NULL) == 0);
    await_release_all(t, DY_TASKS);
    return 0;
}

static void test_runtime_direct_yields_keep_fifo_order_and_loop_turns(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(1);
    direct_yield_t *d = calloc(1, sizeof *d);
    assert_non_null(d);
    d->seen_by_callback = -1;
    weft_future_t *f;
    assert_int_equal(weft_runtime_submit(rt, dy_root, d, &f), 0);
    assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
    assert_int_equal(weft_future_result(f, NULL), 0);
    weft_future_release(f);
    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    weft_runtime_free(rt);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(d->n, DY_TASKS * DY_ROUNDS);
    for (int i = 0; i < d->n; i++)
        assert_int_equal(d->order[i], i % DY_TASKS);
    assert_true(d->seen_by_callback >= 0);
    assert_true(d->seen_by_callback <= 2 * 61);
    free(d);
}

/* Background load so that yields find queues to be stolen from. */
static int load_body(void *arg, void **result)
{
    (void)result;
    atomic_int *stop = arg;
    while (atomic_load(stop) == 0)
        CHECK(&g_rec, weft_yield() == 0);
    return 0;
}

static void test_runtime_task_sees_its_current_thread_state_after_migrating(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(4);
    worker_map_t map;
    map_workers(rt, &map);
    migrant_t m[MIGRANTS];
    memset(m, 0, sizeof m);
    atomic_int stop;
    atomic_init(&stop, 0);
    weft_future_t *load[4], *f[MIGRANTS];
    for (int i = 0; i < 4; i++)
        assert_int_equal(weft_runtime_submit(rt, load_body, &stop, &load[i]), 0);
    for (int i = 0; i < MIGRANTS; i++) {
        m[i].rt = rt;
        m[i].map = &map;
        assert_int_equal(weft_runtime_submit(rt, migrant_body, &m[i], &f[i]), 0);
    }
    for (int i = 0; i < MIGRANTS; i++) {
        assert_int_equal(weft_future_wait(f[i], WAIT_LIMIT), 0);
        assert_int_equal(weft_future_result(f[i], NULL), 0);
        weft_future_release(f[i]);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(weft_future_wait(load[i], WAIT_LIMIT), 0);
        weft_future_release(load[i]);
    }
    ASSERT_NO_FAILURE(&g_rec);
    int moves = 0;
    for (int i = 0; i < MIGRANTS; i++) {
        assert_int_equal(m[i].steps, 2 * MIGRANT_ROUNDS);
        assert_int_equal(m[i].unknown_tid, 0);
        assert_int_equal(m[i].loop_wrong, 0);
        assert_int_equal(m[i].task_wrong, 0);
        assert_int_equal(m[i].rt_wrong, 0);
        assert_int_equal(m[i].errno_wrong, 0);
        moves += m[i].moves;
    }
    print_message("  %d of %d suspensions resumed on another worker\n", moves,
                  MIGRANTS * 2 * MIGRANT_ROUNDS);
    /* The checks above mean something only if tasks did move. */
    assert_true(moves > 0);
    free_rt(rt);
}

/* ======================================================================== */
/* 6. Every runtime function and the codes it documents                      */
/* ======================================================================== */

/* ---- weft_runtime_new ----------------------------------------------------- */

static void test_runtime_new_argument_errors_are_einval(void **state)
{
    (void)state;
    weft_runtime_t *rt = SENTINEL;
    weft_config_t cfg = {.workers = 1};
    assert_int_equal(weft_runtime_new(&cfg, NULL), -EINVAL);
    assert_int_equal(weft_runtime_new(NULL, NULL), -EINVAL);

    cfg.stack_size = STACK_TOO_BIG;
    assert_int_equal(weft_runtime_new(&cfg, &rt), -EINVAL);
    assert_ptr_equal(rt, SENTINEL);
    cfg.stack_size = SIZE_MAX;
    assert_int_equal(weft_runtime_new(&cfg, &rt), -EINVAL);
    assert_ptr_equal(rt, SENTINEL);

    /* Too many workers. */
    weft_config_t many = {.workers = WEFT_MAX_WORKERS + 1};
    assert_int_equal(weft_runtime_new(&many, &rt), -EINVAL);
    assert_ptr_equal(rt, SENTINEL);
    many.workers = UINT32_MAX;
    assert_int_equal(weft_runtime_new(&many, &rt), -EINVAL);
    assert_ptr_equal(rt, SENTINEL);

    /* Negative durations. */
    weft_config_t neg_slow = {.workers = 1, .slow_callback_ns = -1};
    assert_int_equal(weft_runtime_new(&neg_slow, &rt), -EINVAL);
    assert_ptr_equal(rt, SENTINEL);
    weft_config_t neg_keepalive = {.workers = 1, .executor_keepalive_ns = -1};
    assert_int_equal(weft_runtime_new(&neg_keepalive, &rt), -EINVAL);
    assert_ptr_equal(rt, SENTINEL);

    /* The limit itself is accepted. */
    cfg.stack_size = STACK_MAX;
    rt = NULL;
    assert_int_equal(weft_runtime_new(&cfg, &rt), 0);
    assert_non_null(rt);
    free_rt(rt);
}

static void test_runtime_new_defaults_to_one_worker_per_online_cpu(void **state)
{
    (void)state;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned want = cpus > 0 ? (unsigned)cpus : 1;
    weft_runtime_t *rt = NULL;
    assert_int_equal(weft_runtime_new(NULL, &rt), 0);
    assert_int_equal(weft_runtime_workers(rt), want);
    free_rt(rt);
    weft_config_t cfg = {0};
    rt = NULL;
    assert_int_equal(weft_runtime_new(&cfg, &rt), 0);
    assert_int_equal(weft_runtime_workers(rt), want);
    free_rt(rt);
}

/* "Its workers are running when this returns": each worker's loop already
 * runs, on a thread of its own, and a foreign caller cannot run it. */
static void test_runtime_new_returns_with_every_worker_loop_running(void **state)
{
    (void)state;
    /* Regression: weft_runtime_new used to return before the worker
     * threads had marked their loops running; it now marks them before
     * creating the threads. */
    for (int round = 0; round < 20; round++) {
        weft_runtime_t *rt = new_rt(MAX_WORKERS);
        for (unsigned i = 0; i < MAX_WORKERS; i++) {
            weft_loop_t *loop = weft_runtime_loop(rt, i);
            if (!weft_loop_is_running(loop))
                fail_msg("round %d: worker %u's loop is not running after weft_runtime_new", round,
                         i);
            assert_false(weft_loop_is_closed(loop));
        }
        assert_int_equal(weft_loop_run_forever(weft_runtime_loop(rt, 0)), WEFT_EINVALSTATE);
        free_rt(rt);
    }
}

/* ---- workers, loops, running runtime ------------------------------------- */

typedef struct where_probe {
    weft_runtime_t *rt;
    weft_loop_t *loop;
    weft_task_t *task;
    int runs;
} where_probe_t;

static void where_cb(void *arg)
{
    where_probe_t *p = arg;
    p->rt = weft_get_running_runtime();
    p->loop = weft_get_running_loop();
    p->task = weft_current_task();
    p->runs++;
}

static int where_body(void *arg, void **result)
{
    (void)result;
    where_cb(arg);
    return 0;
}

static void test_runtime_workers_loops_and_running_runtime(void **state)
{
    (void)state;
    assert_int_equal(weft_runtime_workers(NULL), 0);
    assert_null(weft_runtime_loop(NULL, 0));
    assert_null(weft_get_running_runtime());

    weft_runtime_t *rt = new_rt(3);
    weft_runtime_t *rt2 = new_rt(2);
    assert_int_equal(weft_runtime_workers(rt), 3);
    assert_int_equal(weft_runtime_workers(rt2), 2);
    weft_loop_t *loops[3];
    for (unsigned i = 0; i < 3; i++) {
        loops[i] = weft_runtime_loop(rt, i);
        assert_non_null(loops[i]);
        for (unsigned j = 0; j < i; j++)
            assert_ptr_not_equal(loops[i], loops[j]);
        /* Stable: the same loop every time. */
        assert_ptr_equal(weft_runtime_loop(rt, i), loops[i]);
        for (unsigned j = 0; j < 2; j++)
            assert_ptr_not_equal(weft_runtime_loop(rt2, j), loops[i]);
    }
    assert_null(weft_runtime_loop(rt, 3));
    assert_null(weft_runtime_loop(rt, 4));
    assert_null(weft_runtime_loop(rt, UINT32_MAX));
    assert_null(weft_runtime_loop(rt2, 2));

    /* In a loop callback of each worker. */
    for (unsigned i = 0; i < 3; i++) {
        where_probe_t p = {SENTINEL, SENTINEL, SENTINEL, 0};
        call_on_loop(loops[i], where_cb, &p);
        assert_int_equal(p.runs, 1);
        assert_ptr_equal(p.rt, rt);
        assert_ptr_equal(p.loop, loops[i]);
        assert_null(p.task);
    }
    /* In a task of each runtime. */
    where_probe_t p = {SENTINEL, SENTINEL, SENTINEL, 0};
    assert_int_equal(run_in(rt, where_body, &p, NULL), 0);
    assert_ptr_equal(p.rt, rt);
    assert_true(loop_index(rt, p.loop) >= 0);
    assert_non_null(p.task);
    assert_ptr_not_equal(p.task, SENTINEL);
    where_probe_t p2 = {SENTINEL, SENTINEL, SENTINEL, 0};
    assert_int_equal(run_in(rt2, where_body, &p2, NULL), 0);
    assert_ptr_equal(p2.rt, rt2);
    assert_true(loop_index(rt2, p2.loop) >= 0);

    /* In a standalone loop's callback: no runtime. */
    weft_loop_t *standalone = NULL;
    assert_int_equal(weft_loop_new(&standalone), 0);
    where_probe_t p3 = {SENTINEL, SENTINEL, SENTINEL, 0};
    assert_int_equal(weft_loop_call_soon(standalone, where_cb, &p3, NULL), 0);
    assert_int_equal(weft_loop_stop(standalone), 0);
    assert_int_equal(weft_loop_run_forever(standalone), 0);
    assert_int_equal(p3.runs, 1);
    assert_null(p3.rt);
    assert_ptr_equal(p3.loop, standalone);
    assert_int_equal(weft_loop_close(standalone), 0);
    weft_loop_free(standalone);

    assert_null(weft_get_running_runtime());
    assert_null(weft_current_task());
    free_rt(rt2);
    free_rt(rt);
}

/* ---- weft_runtime_submit -------------------------------------------------- */

static void test_runtime_submit_argument_errors_and_after_shutdown(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    weft_future_t *f = SENTINEL;
    assert_int_equal(weft_runtime_submit(NULL, noop_body, NULL, &f), -EINVAL);
    assert_int_equal(weft_runtime_submit(rt, NULL, NULL, &f), -EINVAL);
    assert_int_equal(weft_runtime_submit(rt, noop_body, NULL, NULL), -EINVAL);
    assert_ptr_equal(f, SENTINEL);

    /* Results and errors come back through the future. */
    void *v = NULL;
    assert_int_equal(run_in(rt, return_arg_body, &tag_a, &v), 0);
    assert_ptr_equal(v, &tag_a);
    assert_int_equal(run_in(rt, return_code_body, (void *)(intptr_t)-EXDEV, NULL), -EXDEV);

    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    assert_int_equal(weft_runtime_submit(rt, noop_body, NULL, &f), WEFT_ECLOSED);
    assert_ptr_equal(f, SENTINEL);
    /* The worker loops are closed too. */
    for (unsigned i = 0; i < 2; i++)
        assert_true(weft_loop_is_closed(weft_runtime_loop(rt, i)));
    assert_no_task_left(rt);
    weft_runtime_free(rt);
}

/* Submitted from many plain threads at once: each task runs exactly once. */
enum { SUBMIT_THREADS = 4, SUBMITS_PER_THREAD = 250 };

typedef struct submitter {
    weft_runtime_t *rt;
    atomic_int *runs;
    int failures;
} submitter_t;

static int count_run_body(void *arg, void **result)
{
    (void)result;
    atomic_fetch_add((atomic_int *)arg, 1);
    return 0;
}

static void *submitter_thread(void *arg)
{
    submitter_t *s = arg;
    weft_future_t *f[SUBMITS_PER_THREAD];
    for (int i = 0; i < SUBMITS_PER_THREAD; i++) {
        f[i] = NULL;
        if (weft_runtime_submit(s->rt, count_run_body, s->runs, &f[i]) != 0)
            s->failures++;
    }
    for (int i = 0; i < SUBMITS_PER_THREAD; i++) {
        if (f[i] == NULL)
            continue;
        if (weft_future_wait(f[i], WAIT_LIMIT) != 0 || weft_future_result(f[i], NULL) != 0)
            s->failures++;
        weft_future_release(f[i]);
    }
    return NULL;
}

static void test_runtime_submit_from_many_threads_runs_each_task_once(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(3);
    atomic_int runs;
    atomic_init(&runs, 0);
    weft_worker_stats_t before = stats_sum(rt);
    pthread_t th[SUBMIT_THREADS];
    submitter_t s[SUBMIT_THREADS];
    for (int i = 0; i < SUBMIT_THREADS; i++) {
        s[i] = (submitter_t){rt, &runs, 0};
        assert_int_equal(pthread_create(&th[i], NULL, submitter_thread, &s[i]), 0);
    }
    for (int i = 0; i < SUBMIT_THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(s[i].failures, 0);
    }
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&runs), SUBMIT_THREADS * SUBMITS_PER_THREAD);
    /* Each task is one step, taken from the shared queue once. */
    weft_worker_stats_t after = stats_sum(rt);
    assert_int_equal(after.tasks_run - before.tasks_run, SUBMIT_THREADS * SUBMITS_PER_THREAD);
    assert_int_equal(after.inject_pops - before.inject_pops, SUBMIT_THREADS * SUBMITS_PER_THREAD);
    free_rt(rt);
}

/* ---- weft_runtime_shutdown ------------------------------------------------- */

typedef struct shutdown_inside {
    weft_runtime_t *rt;
    weft_runtime_t *other;
    int rc_self, rc_null;
    int runs;
} shutdown_inside_t;

static int shutdown_inside_body(void *arg, void **result)
{
    (void)result;
    shutdown_inside_t *s = arg;
    s->rc_self = weft_runtime_shutdown(s->rt, 0);
    s->rc_null = weft_runtime_shutdown(NULL, 0);
    s->runs++;
    return 0;
}

static void shutdown_inside_cb(void *arg)
{
    shutdown_inside_t *s = arg;
    s->rc_self = weft_runtime_shutdown(s->rt, 0);
    s->runs++;
}

static void test_runtime_shutdown_errors_and_idempotence(void **state)
{
    (void)state;
    assert_int_equal(weft_runtime_shutdown(NULL, 0), -EINVAL);
    assert_int_equal(weft_runtime_shutdown(NULL, -1), -EINVAL);
    weft_runtime_free(NULL); /* ignored */

    weft_runtime_t *rt = new_rt(2);
    /* From one of its own workers: a task, then a loop callback. */
    shutdown_inside_t s = {rt, NULL, 1, 1, 0};
    assert_int_equal(run_in(rt, shutdown_inside_body, &s, NULL), 0);
    assert_int_equal(s.runs, 1);
    assert_int_equal(s.rc_self, -EPERM);
    assert_int_equal(s.rc_null, -EINVAL);
    for (unsigned i = 0; i < 2; i++) {
        shutdown_inside_t c = {rt, NULL, 1, 1, 0};
        call_on_loop(weft_runtime_loop(rt, i), shutdown_inside_cb, &c);
        assert_int_equal(c.runs, 1);
        assert_int_equal(c.rc_self, -EPERM);
    }
    /* Refused means refused: the runtime still works. */
    void *v = NULL;
    assert_int_equal(run_in(rt, return_arg_body, &tag_a, &v), 0);
    assert_ptr_equal(v, &tag_a);

    /* Idle runtime: 0, and again 0 whatever the timeout. */
    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    assert_int_equal(weft_runtime_shutdown(rt, 0), 0);
    assert_int_equal(weft_runtime_shutdown(rt, -1), 0);
    assert_int_equal(weft_runtime_shutdown(rt, WAIT_LIMIT), 0);
    assert_no_task_left(rt);
    weft_runtime_free(rt);
}

/* WEFT_ETIMEDOUT means "some tasks were abandoned".  A task whose future a
 * plain thread has seen done is not pending any more, so a shutdown right
 * after it, even with no time to wait, has nothing to abandon. */
static void test_runtime_shutdown_right_after_the_last_task_reported_done_returns_0(void **state)
{
    (void)state;
    /* Regression: weft_runtime_shutdown used to return the timed-out code
     * of its wait even when nothing was abandoned (a task leaves the task
     * set just after completing its future). */
    enum { ROUNDS = 100 };
    int timedout = 0;
    for (int i = 0; i < ROUNDS; i++) {
        weft_runtime_t *rt = new_rt(2);
        weft_future_t *f = NULL;
        assert_int_equal(weft_runtime_submit(rt, noop_body, NULL, &f), 0);
        /* Spin rather than sleep: shut down as soon as the task is seen
         * done. */
        int64_t deadline = now_ns() + WAIT_LIMIT;
        while (!weft_future_done(f) && now_ns() < deadline)
            cpu_relax();
        assert_true(weft_future_done(f));
        assert_int_equal(weft_future_result(f, NULL), 0);
        weft_future_release(f);
        int rc = weft_runtime_shutdown(rt, 0);
        if (rc == WEFT_ETIMEDOUT)
            timedout++;
        else
            assert_int_equal(rc, 0);
        assert_no_task_left(rt);
        weft_runtime_free(rt);
    }
    if (timedout != 0)
        fail_msg("%d of %d shutdowns returned WEFT_ETIMEDOUT with no task left to abandon",
                 timedout, ROUNDS);
}

/* Shutdown from several plain threads at once: all return 0, the tasks'
 * done callbacks run once. */
typedef struct concurrent_shutdown {
    weft_runtime_t *rt;
    int rc;
} concurrent_shutdown_t;

static void *shutdown_thread(void *arg)
{
    concurrent_shutdown_t *c = arg;
    c->rc = weft_runtime_shutdown(c->rt, WAIT_LIMIT);
    return NULL;
}

static int cancellable_sleep_body(void *arg, void **result)
{
    (void)result;
    atomic_fetch_add((atomic_int *)arg, 1);
    return weft_sleep(100 * SEC);
}

static void test_runtime_shutdown_from_several_threads_at_once(void **state)
{
    (void)state;
    enum { N = 50, THREADS = 3 };
    weft_runtime_t *rt = new_rt(2);
    atomic_int started, done_calls;
    atomic_init(&started, 0);
    atomic_init(&done_calls, 0);
    weft_future_t *f[N];
    for (int i = 0; i < N; i++) {
        assert_int_equal(weft_runtime_submit(rt, cancellable_sleep_body, &started, &f[i]), 0);
        assert_int_equal(weft_future_add_done_callback(f[i], count_done_cb, &done_calls), 0);
    }
    assert_true(wait_atomic_ge(&started, N));
    pthread_t th[THREADS];
    concurrent_shutdown_t c[THREADS];
    for (int i = 0; i < THREADS; i++) {
        c[i] = (concurrent_shutdown_t){rt, 1};
        assert_int_equal(pthread_create(&th[i], NULL, shutdown_thread, &c[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(c[i].rc, 0);
    }
    assert_int_equal(atomic_load(&done_calls), N);
    for (int i = 0; i < N; i++) {
        assert_true(weft_future_cancelled(f[i]));
        weft_future_release(f[i]);
    }
    assert_no_task_left(rt);
    weft_runtime_free(rt);
}

/* ---- weft_run --------------------------------------------------------------- */

static int cancel_self_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_cancel(weft_current_task(), "main gives up");
    return weft_yield();
}

typedef struct leftover {
    atomic_int child_started;
    atomic_int child_done_calls;
    int child_rc;
    weft_runtime_t *seen_rt;
} leftover_t;

static int leftover_child_body(void *arg, void **result)
{
    (void)result;
    leftover_t *l = arg;
    atomic_store(&l->child_started, 1);
    l->child_rc = weft_sleep(100 * SEC);
    return l->child_rc;
}

/* Leaves a child sleeping: weft_run's shutdown cancels it. */
static int leftover_main(void *arg, void **result)
{
    leftover_t *l = arg;
    l->seen_rt = weft_get_running_runtime();
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(leftover_child_body, l, NULL, &t) == 0);
    if (t == NULL)
        return -EINVAL;
    CHECK(&g_rec, weft_future_add_done_callback(weft_task_future(t), count_done_cb,
                                                &l->child_done_calls) == 0);
    while (atomic_load(&l->child_started) == 0)
        CHECK(&g_rec, weft_yield() == 0);
    weft_task_release(t);
    *result = &tag_a;
    return 0;
}

typedef struct nested_run {
    int rc;
    int runs;
} nested_run_t;

static int nested_run_body(void *arg, void **result)
{
    (void)result;
    nested_run_t *n = arg;
    n->rc = weft_run(NULL, noop_body, NULL, NULL);
    n->runs++;
    return 0;
}

static void nested_run_cb(void *arg)
{
    nested_run_t *n = arg;
    n->rc = weft_run(NULL, noop_body, NULL, NULL);
    n->runs++;
}

static void test_runtime_run_returns_main_outcome(void **state)
{
    (void)state;
    weft_config_t cfg = {.workers = 2};
    void *v = SENTINEL;
    assert_int_equal(weft_run(&cfg, return_arg_body, &tag_a, &v), 0);
    assert_ptr_equal(v, &tag_a);
    assert_int_equal(weft_run(&cfg, return_arg_body, &tag_a, NULL), 0);
    assert_int_equal(weft_run(NULL, noop_body, NULL, NULL), 0);

    v = SENTINEL;
    assert_int_equal(weft_run(&cfg, return_code_body, (void *)(intptr_t)-EIO, &v), -EIO);
    assert_ptr_equal(v, SENTINEL);
    assert_int_equal(weft_run(&cfg, return_code_body, (void *)(intptr_t)WEFT_EQUEUEFULL, &v),
                     WEFT_EQUEUEFULL);
    assert_int_equal(weft_run(&cfg, cancel_self_body, NULL, &v), WEFT_ECANCELED);
    assert_ptr_equal(v, SENTINEL);

    /* Errors of its own: no main, a bad config (main never runs). */
    assert_int_equal(weft_run(&cfg, NULL, NULL, &v), -EINVAL);
    atomic_int runs;
    atomic_init(&runs, 0);
    weft_config_t bad = {.workers = 1, .stack_size = STACK_TOO_BIG};
    assert_int_equal(weft_run(&bad, count_run_body, &runs, &v), -EINVAL);
    assert_int_equal(atomic_load(&runs), 0);
    assert_ptr_equal(v, SENTINEL);

    /* A child left behind is cancelled; its done callback runs. */
    leftover_t l;
    memset(&l, 0, sizeof l);
    atomic_init(&l.child_started, 0);
    atomic_init(&l.child_done_calls, 0);
    assert_int_equal(weft_run(&cfg, leftover_main, &l, &v), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_ptr_equal(v, &tag_a);
    assert_non_null(l.seen_rt);
    assert_int_equal(l.child_rc, WEFT_ECANCELED);
    assert_int_equal(atomic_load(&l.child_done_calls), 1);
    assert_null(weft_get_running_runtime());

    /* Not from a task or a loop callback. */
    weft_runtime_t *rt = new_rt(1);
    nested_run_t n = {1, 0};
    assert_int_equal(run_in(rt, nested_run_body, &n, NULL), 0);
    assert_int_equal(n.runs, 1);
    assert_int_equal(n.rc, -EPERM);
    nested_run_t n2 = {1, 0};
    call_on_loop(weft_runtime_loop(rt, 0), nested_run_cb, &n2);
    assert_int_equal(n2.runs, 1);
    assert_int_equal(n2.rc, -EPERM);
    free_rt(rt);
}

/* ---- weft_runtime_worker_stats ---------------------------------------------- */

typedef struct spread_arg {
    int children;
    int yields;
    atomic_int child_steps;
    bool deadline_hit;
} spread_arg_t;

static int spread_child_body(void *arg, void **result)
{
    (void)result;
    spread_arg_t *s = arg;
    for (int i = 0; i < s->yields; i++)
        CHECK(&g_rec, weft_yield() == 0);
    atomic_fetch_add(&s->child_steps, s->yields + 1);
    return 0;
}

static int spread_driver(void *arg, void **result)
{
    (void)result;
    spread_arg_t *s = arg;
    weft_task_t *t[64];
    CHECK(&g_rec, s->children <= 64);
    for (int i = 0; i < s->children; i++)
        CHECK(&g_rec, weft_spawn(spread_child_body, s, NULL, &t[i]) == 0);
    /* Without suspending: the children sit in this worker's queue, so
     * only other workers' steals can run them. */
    int64_t deadline = now_ns() + SPIN_LIMIT;
    for (int i = 0; i < s->children; i++) {
        while (!weft_future_done(weft_task_future(t[i]))) {
            if (now_ns() > deadline) {
                s->deadline_hit = true;
                break;
            }
            cpu_relax();
        }
    }
    await_release_all(t, s->children);
    return 0;
}

static void test_runtime_worker_stats_counters_move_plausibly(void **state)
{
    (void)state;
    enum { W = 4, SUBMITS = 100, CHILDREN = 64, YIELDS = 20 };
    weft_runtime_t *rt = new_rt(W);
    weft_worker_stats_t s;
    assert_int_equal(weft_runtime_worker_stats(NULL, 0, &s), -EINVAL);
    assert_int_equal(weft_runtime_worker_stats(rt, 0, NULL), -EINVAL);
    assert_int_equal(weft_runtime_worker_stats(rt, W, &s), -EINVAL);
    assert_int_equal(weft_runtime_worker_stats(rt, UINT32_MAX, &s), -EINVAL);

    /* Idle workers park. */
    for (unsigned i = 0; i < W; i++) {
        int64_t deadline = now_ns() + WAIT_LIMIT;
        while (stats_of(rt, i).parks == 0 && now_ns() < deadline)
            sleep_ms(1);
        assert_true(stats_of(rt, i).parks > 0);
    }

    /* Submitted tasks: one step each, each taken from the shared queue. */
    weft_worker_stats_t a = stats_sum(rt);
    weft_future_t *f[SUBMITS];
    for (int i = 0; i < SUBMITS; i++)
        assert_int_equal(weft_runtime_submit(rt, noop_body, NULL, &f[i]), 0);
    for (int i = 0; i < SUBMITS; i++) {
        assert_int_equal(weft_future_wait(f[i], WAIT_LIMIT), 0);
        weft_future_release(f[i]);
    }
    weft_worker_stats_t b = stats_sum(rt);
    assert_int_equal(b.tasks_run - a.tasks_run, SUBMITS);
    assert_int_equal(b.inject_pops - a.inject_pops, SUBMITS);

    /* One task spawning many that yield, then busy until they are done:
     * the others must steal every one of them. */
    spread_arg_t sp = {.children = CHILDREN, .yields = YIELDS};
    atomic_init(&sp.child_steps, 0);
    assert_int_equal(run_in(rt, spread_driver, &sp, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_false(sp.deadline_hit);
    weft_worker_stats_t c = stats_sum(rt);
    uint64_t child_steps = (uint64_t)CHILDREN * (YIELDS + 1);
    assert_int_equal(atomic_load(&sp.child_steps), (int)child_steps);
    /* The driver is one step: its awaits find the children done. */
    uint64_t steps = c.tasks_run - b.tasks_run;
    if (steps != child_steps + 1)
        fail_msg("%llu steps for %llu child steps and 1 driver step", (unsigned long long)steps,
                 (unsigned long long)child_steps);
    assert_true(c.stolen_tasks - b.stolen_tasks >= CHILDREN);
    print_message("  steals %llu (%llu tasks), lifo runs %llu, parks %llu, eventfd writes %llu\n",
                  (unsigned long long)(c.steals - b.steals),
                  (unsigned long long)(c.stolen_tasks - b.stolen_tasks),
                  (unsigned long long)(c.lifo_runs - b.lifo_runs),
                  (unsigned long long)(c.parks - b.parks),
                  (unsigned long long)(c.eventfd_writes - b.eventfd_writes));
    assert_true(c.steals > b.steals);
    /* A steal batch takes at least one task; every counter only grows;
     * nothing runs more from the LIFO slot than it runs at all.  A worker
     * takes a batch from the inject queue into its ring, where others may
     * steal part of it, so inject pops bound tasks run only in total. */
    for (unsigned i = 0; i < W; i++) {
        weft_worker_stats_t w = stats_of(rt, i);
        assert_true(w.stolen_tasks >= w.steals);
        assert_true(w.lifo_runs <= w.tasks_run);
    }
    assert_true(c.inject_pops <= c.tasks_run);
    assert_true(c.tasks_run >= b.tasks_run && c.parks >= b.parks &&
                c.eventfd_writes >= b.eventfd_writes && c.inject_pops >= b.inject_pops &&
                c.lifo_runs >= b.lifo_runs);

    /* Waking a parked worker from outside costs an eventfd write. */
    weft_loop_t *l0 = weft_runtime_loop(rt, 0);
    uint64_t w0 = stats_of(rt, 0).eventfd_writes;
    bool wrote = false;
    for (int i = 0; i < 200 && !wrote; i++) {
        sleep_ms(2); /* long enough to park, usually */
        call_on_loop(l0, nothing_cb, NULL);
        wrote = stats_of(rt, 0).eventfd_writes > w0;
    }
    assert_true(wrote);
    free_rt(rt);
}

/* ---- weft_future_wait ------------------------------------------------------- */

typedef struct wait_probe {
    weft_future_t *f;
    int rc, rc_done;
    int runs;
} wait_probe_t;

static int wait_in_task_body(void *arg, void **result)
{
    (void)result;
    wait_probe_t *w = arg;
    w->rc = weft_future_wait(w->f, 10 * MS);
    w->rc_done = weft_future_wait(weft_task_future(weft_current_task()), 0);
    w->runs++;
    return 0;
}

static void wait_in_cb(void *arg)
{
    wait_probe_t *w = arg;
    w->rc = weft_future_wait(w->f, 10 * MS);
    w->rc_done = weft_future_wait(w->f, -1);
    w->runs++;
}

typedef struct waiter_thread {
    weft_future_t *f;
    int rc;
    bool done_after;
} waiter_thread_t;

static void *waiter_thread_main(void *arg)
{
    waiter_thread_t *w = arg;
    w->rc = weft_future_wait(w->f, -1);
    w->done_after = weft_future_done(w->f);
    return NULL;
}

static int sleep_then_return_body(void *arg, void **result)
{
    (void)arg;
    int rc = weft_sleep(20 * MS);
    *result = &tag_a;
    return rc;
}

static void test_runtime_future_wait_times_out_and_refuses_loop_threads(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    assert_int_equal(weft_future_wait(NULL, 0), -EINVAL);
    assert_int_equal(weft_future_wait(NULL, -1), -EINVAL);

    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(weft_runtime_loop(rt, 0), &f), 0);
    /* A plain thread: poll, then a bounded wait that never ends early. */
    assert_int_equal(weft_future_wait(f, 0), WEFT_ETIMEDOUT);
    int64_t t0 = now_ns();
    assert_int_equal(weft_future_wait(f, 20 * MS), WEFT_ETIMEDOUT);
    assert_true(now_ns() - t0 >= 20 * MS);
    assert_false(weft_future_done(f));

    /* Inside a task and in a worker's loop callback: refused, even for a
     * done future. */
    wait_probe_t w = {f, 1, 1, 0};
    assert_int_equal(run_in(rt, wait_in_task_body, &w, NULL), 0);
    assert_int_equal(w.runs, 1);
    assert_int_equal(w.rc, -EPERM);
    assert_int_equal(w.rc_done, -EPERM);
    wait_probe_t wc = {f, 1, 1, 0};
    call_on_loop(weft_runtime_loop(rt, 1), wait_in_cb, &wc);
    assert_int_equal(wc.runs, 1);
    assert_int_equal(wc.rc, -EPERM);
    assert_int_equal(wc.rc_done, -EPERM);

    assert_int_equal(weft_future_set_result(f, &tag_a), 0);
    assert_int_equal(weft_future_wait(f, 0), 0);
    assert_int_equal(weft_future_wait(f, -1), 0);
    weft_future_release(f);

    /* A helper thread blocks with no limit on a task that sleeps. */
    weft_future_t *g = NULL;
    assert_int_equal(weft_runtime_submit(rt, sleep_then_return_body, NULL, &g), 0);
    waiter_thread_t wt = {g, 1, false};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, waiter_thread_main, &wt), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(wt.rc, 0);
    assert_true(wt.done_after);
    void *v = NULL;
    assert_int_equal(weft_future_result(g, &v), 0);
    assert_ptr_equal(v, &tag_a);
    weft_future_release(g);
    free_rt(rt);
}

/* ---- weft_runtime_set_task_factory ------------------------------------------ */

typedef struct factory_probe {
    atomic_int calls;
    int fail_code;
    void *last_factory_arg;
} factory_probe_t;

static int counting_factory(weft_fn fn, void *arg, const weft_spawn_opts_t *opts, weft_task_t **out,
                            void *factory_arg)
{
    factory_probe_t *p = factory_arg;
    atomic_fetch_add(&p->calls, 1);
    p->last_factory_arg = factory_arg;
    if (p->fail_code != 0)
        return p->fail_code;
    return weft_task_create(fn, arg, opts, out);
}

typedef struct factory_spawns {
    int n;
    int fail_expected; /* the factory refuses with this code */
    atomic_int child_runs;
    int eager_seen; /* children that had run when weft_spawn returned */
} factory_spawns_t;

static int factory_child_body(void *arg, void **result)
{
    (void)result;
    factory_spawns_t *s = arg;
    atomic_fetch_add(&s->child_runs, 1);
    return 0;
}

static int factory_spawn_driver(void *arg, void **result)
{
    (void)result;
    factory_spawns_t *s = arg;
    for (int i = 0; i < s->n; i++) {
        weft_task_t *t = SENTINEL;
        int before = atomic_load(&s->child_runs);
        int rc = weft_spawn(factory_child_body, s, NULL, &t);
        if (s->fail_expected != 0) {
            CHECK(&g_rec, rc == s->fail_expected);
            CHECK(&g_rec, t == SENTINEL);
            continue;
        }
        CHECK(&g_rec, rc == 0);
        if (rc != 0)
            continue;
        if (atomic_load(&s->child_runs) > before)
            s->eager_seen++;
        CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
        weft_task_release(t);
    }
    return 0;
}

/* ---- idle spinning ---------------------------------------------------------- */

static int spin_plus_one(void *arg, void **result)
{
    *result = (void *)((uintptr_t)arg + 1);
    return 0;
}

/* n calls posted one at a time from this thread to rt's only worker, each
 * gap_ns after the previous one's result; returns the worker's eventfd
 * writes over those calls. */
static uint64_t post_gapped_calls(weft_runtime_t *rt, int n, int64_t gap_ns)
{
    weft_worker_stats_t before, after;
    assert_int_equal(weft_runtime_worker_stats(rt, 0, &before), 0);
    for (int i = 0; i < n; i++) {
        struct timespec gap = {0, (long)gap_ns};
        nanosleep(&gap, NULL);
        weft_future_t *f = NULL;
        assert_int_equal(weft_run_coroutine_threadsafe(weft_runtime_loop(rt, 0), spin_plus_one,
                                                       (void *)(uintptr_t)i, &f),
                         0);
        assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
        void *v = NULL;
        assert_int_equal(weft_future_result(f, &v), 0);
        assert_int_equal((uintptr_t)v, (uintptr_t)i + 1);
        weft_future_release(f);
    }
    assert_int_equal(weft_runtime_worker_stats(rt, 0, &after), 0);
    return after.eventfd_writes - before.eventfd_writes;
}

static void test_runtime_idle_spin_catches_posts_without_eventfd_writes(void **state)
{
    (void)state;
    weft_runtime_t *rt = NULL;
    weft_config_t bad = {.workers = 1, .idle_spin_ns = SEC + 1};
    assert_int_equal(weft_runtime_new(&bad, &rt), -EINVAL);
    assert_null(rt);

    /* Spinning off: a worker with nothing to do sleeps in epoll, and each
     * call 2 ms later has to wake it through the eventfd. */
    weft_config_t off = {.workers = 1, .idle_spin_ns = -1};
    assert_int_equal(weft_runtime_new(&off, &rt), 0);
    uint64_t writes = post_gapped_calls(rt, 100, 2 * MS);
    assert_true(writes >= 90);
    assert_int_equal(weft_runtime_shutdown(rt, -1), 0);
    weft_runtime_free(rt);

    /* A spin longer than the gaps: the worker is still polling when each
     * call arrives, so none needs an eventfd write (one CPU: no spinning
     * can help, and the runtime does not pretend it does). */
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
        return;
    weft_config_t on = {.workers = 1, .idle_spin_ns = SEC};
    assert_int_equal(weft_runtime_new(&on, &rt), 0);
    writes = post_gapped_calls(rt, 100, 2 * MS);
    assert_true(writes <= 2);

    /* A plain thread's wait polls no longer than its timeout. */
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(weft_runtime_loop(rt, 0), &f), 0);
    int64_t t0 = now_ns();
    assert_int_equal(weft_future_wait(f, 20 * MS), WEFT_ETIMEDOUT);
    int64_t took = now_ns() - t0;
    assert_true(took >= 20 * MS);
    assert_true(took < SEC / 2);
    weft_future_release(f);
    assert_int_equal(weft_runtime_shutdown(rt, -1), 0);
    weft_runtime_free(rt);
}

static void test_runtime_set_task_factory_from_a_plain_thread(void **state)
{
    (void)state;
    assert_int_equal(weft_runtime_set_task_factory(NULL, counting_factory, NULL), -EINVAL);
    assert_int_equal(weft_runtime_set_task_factory(NULL, NULL, NULL), -EINVAL);

    weft_runtime_t *rt = new_rt(1); /* a plain child cannot run before its spawner suspends */
    factory_probe_t p;
    memset(&p, 0, sizeof p);
    atomic_init(&p.calls, 0);
    assert_int_equal(weft_runtime_set_task_factory(rt, counting_factory, &p), 0);
    factory_spawns_t s = {.n = 5};
    atomic_init(&s.child_runs, 0);
    assert_int_equal(run_in(rt, factory_spawn_driver, &s, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&p.calls), 5);
    assert_ptr_equal(p.last_factory_arg, &p);
    assert_int_equal(atomic_load(&s.child_runs), 5);

    /* A refusing factory: spawn returns its code, no task. */
    p.fail_code = -ENOSPC;
    factory_spawns_t sf = {.n = 3, .fail_expected = -ENOSPC};
    atomic_init(&sf.child_runs, 0);
    assert_int_equal(run_in(rt, factory_spawn_driver, &sf, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(atomic_load(&p.calls), 8);
    assert_int_equal(atomic_load(&sf.child_runs), 0);

    /* The eager factory: children run inside weft_spawn. */
    assert_int_equal(weft_runtime_set_task_factory(rt, weft_eager_task_factory, NULL), 0);
    factory_spawns_t se = {.n = 4};
    atomic_init(&se.child_runs, 0);
    assert_int_equal(run_in(rt, factory_spawn_driver, &se, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(se.eager_seen, 4);

    /* NULL: back to plain spawns (not eager, no factory call). */
    assert_int_equal(weft_runtime_set_task_factory(rt, NULL, NULL), 0);
    factory_spawns_t sn = {.n = 4};
    atomic_init(&sn.child_runs, 0);
    assert_int_equal(run_in(rt, factory_spawn_driver, &sn, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    assert_int_equal(sn.eager_seen, 0);
    assert_int_equal(atomic_load(&sn.child_runs), 4);
    assert_int_equal(atomic_load(&p.calls), 8);
    free_rt(rt);
}

/* ---- tasks leaving their spawner's shard from another worker -------------- */

#define LEAVERS 200

typedef struct leavers {
    weft_event_t *gate;
    weft_loop_t *home_a, *home_b;
    atomic_int started, done;
} leavers_t;

static int leaver_body(void *arg, void **result)
{
    (void)result;
    leavers_t *l = arg;
    atomic_fetch_add(&l->started, 1);
    CHECK(&g_rec, weft_event_wait(l->gate) == 0);
    atomic_fetch_add(&l->done, 1);
    return 0;
}

/* Pinned to worker 0: its children join worker 0's shard of the task set,
 * and run (and end) on worker 1. */
static int leavers_spawner(void *arg, void **result)
{
    (void)result;
    leavers_t *l = arg;
    weft_spawn_opts_t o = {.pinned = l->home_b};
    for (int i = 0; i < LEAVERS; i++)
        CHECK(&g_rec, weft_spawn(leaver_body, l, &o, NULL) == 0);
    return 0;
}

static int leavers_driver(void *arg, void **result)
{
    (void)result;
    leavers_t *l = arg;
    weft_spawn_opts_t o = {.pinned = l->home_a};
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(leavers_spawner, l, &o, &t) == 0);
    await_release_all(&t, 1);
    return 0;
}

/* Tasks that end on another worker than their spawner's leave its shard
 * through the shard's leavers, without its lock (task.h, "Leaving").  The
 * spawner's worker never spawns again here, so nothing would drain them
 * but the workers' tidying before they park: the set must still become
 * empty, with every task's record released. */
static void
test_runtime_tasks_ending_on_another_worker_leave_the_set_without_a_new_spawn(void **state)
{
    (void)state;
    weft_runtime_t *rt = new_rt(2);
    leavers_t l = {.home_a = weft_runtime_loop(rt, 0), .home_b = weft_runtime_loop(rt, 1)};
    atomic_init(&l.started, 0);
    atomic_init(&l.done, 0);
    assert_int_equal(weft_event_new(&l.gate), 0);
    assert_int_equal(run_in(rt, leavers_driver, &l, NULL), 0);
    assert_true(wait_atomic_ge(&l.started, LEAVERS));
    assert_true(weft__task_set_count(&rt->tasks) >= LEAVERS);
    assert_int_equal(weft_event_set(l.gate), 0);
    assert_true(wait_atomic_ge(&l.done, LEAVERS));
    int64_t deadline = now_ns() + SPIN_LIMIT;
    size_t left;
    while ((left = weft__task_set_count(&rt->tasks)) != 0 && now_ns() < deadline)
        sleep_ms(1);
    if (left != 0)
        fail_msg("%zu finished task(s) still in the set", left);
    ASSERT_NO_FAILURE(&g_rec);
    assert_no_task_left(rt);
    free_rt(rt);
    weft_event_free(l.gate);
}

/* An optional argument selects tests by name pattern (cmocka's filter). */
int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        TEST(test_runtime_new_argument_errors_are_einval),
        TEST(test_runtime_new_defaults_to_one_worker_per_online_cpu),
        TEST(test_runtime_new_returns_with_every_worker_loop_running),
        TEST(test_runtime_workers_loops_and_running_runtime),
        TEST(test_runtime_submit_argument_errors_and_after_shutdown),
        TEST(test_runtime_submit_from_many_threads_runs_each_task_once),
        TEST(test_runtime_shutdown_errors_and_idempotence),
        TEST(test_runtime_shutdown_right_after_the_last_task_reported_done_returns_0),
        TEST(test_runtime_shutdown_from_several_threads_at_once),
        TEST(test_runtime_run_returns_main_outcome),
        TEST(test_runtime_worker_stats_counters_move_plausibly),
        TEST(test_runtime_future_wait_times_out_and_refuses_loop_threads),
        TEST(test_runtime_idle_spin_catches_posts_without_eventfd_writes),
        TEST(test_runtime_set_task_factory_from_a_plain_thread),
        TEST(test_runtime_pinned_task_woken_from_another_worker_resumes_once_per_completion),
        TEST(test_runtime_task_woken_by_callback_on_another_worker_resumes_once_per_wake),
        TEST(test_runtime_task_ping_pong_across_workers_resumes_once_per_wake),
        TEST(test_runtime_ping_pong_on_one_worker_cannot_starve_a_third_task),
        TEST(test_runtime_worker_busy_in_a_task_does_not_stop_other_workers),
        TEST(test_runtime_worker_busy_in_a_callback_does_not_stop_other_workers),
        TEST(test_runtime_submit_while_a_worker_blocks_in_a_callback_wakes_an_idle_one),
        TEST(test_runtime_task_sees_its_current_thread_state_after_migrating),
        TEST(test_runtime_direct_yields_keep_fifo_order_and_loop_turns),
        TEST(test_runtime_shutdown_cancels_thousands_of_pending_tasks_each_done_callback_once),
        TEST(test_runtime_shutdown_abandons_tasks_that_ignore_cancellation),
        TEST(test_runtime_tasks_ending_on_another_worker_leave_the_set_without_a_new_spawn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
