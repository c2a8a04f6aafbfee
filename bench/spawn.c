/* weft-bench — the task workloads: W1 spawn_many, W2 yield_many,
 * W4 chained_spawn and W5 fib.
 *
 * Each round's root is a task that bench_in_task() submits to the runtime;
 * it reads the clock just before its first spawn and again when it sees the
 * last operation complete (README "What is timed").  Tasks are spawned with
 * weft_spawn() and the default options: they may run on any worker.
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

/* ---- W1 spawn_many ------------------------------------------------------- */

/* Each task only counts down; the one that reaches zero wakes the root. */
static int w1_task(void *arg, void **result)
{
    (void)result;
    bench_latch_count_down(arg, "W1");
    return 0;
}

static int w1_root(void *arg, void **result)
{
    bench_round_t *r = arg;
    (void)result;
    long n = bench_sizes.spawn_n;
    bench_latch_t l;
    bench_latch_init(&l, n, "W1");
    int64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++)
        BENCH_CHECK("W1", weft_spawn(w1_task, &l, NULL, NULL));
    bench_latch_wait(&l, "W1");
    r->secs = (double)(bench_now_ns() - t0) / 1e9;
    long left = atomic_load(&l.left);
    if (left != 0)
        bench_fail("W1", "counter is %ld after the last task woke the spawner", left);
    return 0;
}

static void w1_round(bench_round_t *r)
{
    bench_in_task("W1", w1_root, r);
}

void bench_w1(bench_workload_t *w)
{
    w->id = "W1";
    snprintf(w->params, sizeof w->params, "N=%ld", bench_sizes.spawn_n);
    w->ops = (uint64_t)bench_sizes.spawn_n;
    w->run = w1_round;
}

/* ---- W2 yield_many ------------------------------------------------------- */

/* Yields Y times (one trip through the run queue each) and returns how
 * many yields it made, which the root adds up and checks. */
static int w2_task(void *arg, void **result)
{
    (void)arg;
    long n = 0;
    for (; n < bench_sizes.yield_y; n++)
        BENCH_CHECK("W2", weft_yield());
    *result = bench_ptr((uintptr_t)n);
    return 0;
}

static int w2_root(void *arg, void **result)
{
    bench_round_t *r = arg;
    (void)result;
    long t = bench_sizes.yield_t;
    weft_task_t **tasks = malloc((size_t)t * sizeof *tasks);
    if (tasks == NULL)
        bench_fail("W2", "out of memory");
    int64_t t0 = bench_now_ns();
    /* No start barrier: the first tasks may finish before the last start. */
    for (long i = 0; i < t; i++)
        BENCH_CHECK("W2", weft_spawn(w2_task, NULL, NULL, &tasks[i]));
    uint64_t yields = 0;
    for (long i = 0; i < t; i++) {
        void *v;
        BENCH_CHECK("W2", weft_await(weft_task_future(tasks[i]), &v));
        yields += bench_uint(v);
    }
    r->secs = (double)(bench_now_ns() - t0) / 1e9;
    for (long i = 0; i < t; i++)
        weft_task_release(tasks[i]);
    free(tasks);
    uint64_t want = (uint64_t)t * (uint64_t)bench_sizes.yield_y;
    if (yields != want)
        bench_fail("W2", "%llu yields, want %llu", (unsigned long long)yields,
                   (unsigned long long)want);
    return 0;
}

static void w2_round(bench_round_t *r)
{
    bench_in_task("W2", w2_root, r);
}

void bench_w2(bench_workload_t *w)
{
    w->id = "W2";
    snprintf(w->params, sizeof w->params, "T=%ld Y=%ld", bench_sizes.yield_t, bench_sizes.yield_y);
    w->ops = (uint64_t)bench_sizes.yield_t * (uint64_t)bench_sizes.yield_y;
    w->run = w2_round;
}

/* ---- W4 chained_spawn ---------------------------------------------------- */

/* One chain.  The links run strictly one after another (each is spawned by
 * the one before, which then ends), so the counter gives each link its
 * level; the link at level D completes `done` with the level it reached. */
typedef struct chain {
    atomic_long level;
    weft_future_t *done; /* the root's reference, plus one for the last link */
} chain_t;

static int w4_link(void *arg, void **result)
{
    chain_t *c = arg;
    (void)result;
    /* relaxed: each link is spawned by the previous one after its own
     * increment, and weft_spawn orders the two. */
    long level = atomic_fetch_add_explicit(&c->level, 1, memory_order_relaxed) + 1;
    if (level < bench_sizes.chain_d) {
        BENCH_CHECK("W4", weft_spawn(w4_link, c, NULL, NULL));
        return 0;
    }
    weft_future_t *done = c->done; /* *c is gone once the root wakes */
    BENCH_CHECK("W4", weft_future_set_result(done, bench_ptr((uintptr_t)level)));
    weft_future_release(done);
    return 0;
}

static int w4_root(void *arg, void **result)
{
    bench_round_t *r = arg;
    (void)result;
    int64_t t0 = bench_now_ns();
    for (long i = 0; i < bench_sizes.chain_r; i++) {
        chain_t c;
        atomic_init(&c.level, 0);
        BENCH_CHECK("W4", weft_future_new(NULL, &c.done));
        weft_future_retain(c.done); /* the last link's reference */
        BENCH_CHECK("W4", weft_spawn(w4_link, &c, NULL, NULL));
        void *v;
        BENCH_CHECK("W4", weft_await(c.done, &v));
        weft_future_release(c.done);
        if ((long)bench_uint(v) != bench_sizes.chain_d)
            bench_fail("W4", "chain ended at level %ld, want %ld", (long)bench_uint(v),
                       bench_sizes.chain_d);
    }
    r->secs = (double)(bench_now_ns() - t0) / 1e9;
    return 0;
}

static void w4_round(bench_round_t *r)
{
    bench_in_task("W4", w4_root, r);
}

void bench_w4(bench_workload_t *w)
{
    w->id = "W4";
    snprintf(w->params, sizeof w->params, "D=%ld R=%ld", bench_sizes.chain_d, bench_sizes.chain_r);
    w->ops = (uint64_t)bench_sizes.chain_d * (uint64_t)bench_sizes.chain_r;
    w->run = w4_round;
}

/* ---- W5 fib -------------------------------------------------------------- */

static int w5_task(void *arg, void **result);

/* fib(n) in the calling task: fib(n-1) is spawned as a task, fib(n-2) is
 * computed here, then the task is awaited. */
static uint64_t fib(long n)
{
    if (n < 2)
        return (uint64_t)n;
    weft_task_t *t;
    BENCH_CHECK("W5", weft_spawn(w5_task, bench_ptr((uintptr_t)(n - 1)), NULL, &t));
    uint64_t b = fib(n - 2);
    void *a;
    BENCH_CHECK("W5", weft_await(weft_task_future(t), &a));
    weft_task_release(t);
    return bench_uint(a) + b;
}

static int w5_task(void *arg, void **result)
{
    *result = bench_ptr((uintptr_t)fib((long)bench_uint(arg)));
    return 0;
}

/* fib calls for fib(n), the ops counted: calls(n) = 1 + calls(n-1) +
 * calls(n-2), calls(0) = calls(1) = 1; 150049 for n = 24. */
static uint64_t fib_calls(long n)
{
    uint64_t a = 1, b = 1;
    for (long i = 2; i <= n; i++) {
        uint64_t c = 1 + a + b;
        a = b;
        b = c;
    }
    return b;
}

static uint64_t fib_plain(long n)
{
    uint64_t a = 0, b = 1;
    for (long i = 0; i < n; i++) {
        uint64_t c = a + b;
        a = b;
        b = c;
    }
    return a;
}

static int w5_root(void *arg, void **result)
{
    bench_round_t *r = arg;
    (void)result;
    long n = bench_sizes.fib_n;
    int64_t t0 = bench_now_ns();
    uint64_t got = fib(n);
    r->secs = (double)(bench_now_ns() - t0) / 1e9;
    uint64_t want = fib_plain(n); /* 46368 for n = 24 */
    if (got != want)
        bench_fail("W5", "fib(%ld) = %llu, want %llu", n, (unsigned long long)got,
                   (unsigned long long)want);
    return 0;
}

static void w5_round(bench_round_t *r)
{
    bench_in_task("W5", w5_root, r);
}

void bench_w5(bench_workload_t *w)
{
    w->id = "W5";
    snprintf(w->params, sizeof w->params, "n=%ld", bench_sizes.fib_n);
    w->ops = fib_calls(bench_sizes.fib_n);
    w->run = w5_round;
}
