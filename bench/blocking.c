/* weft-bench — W9 blocking.
 *
 * B calls of a function that busy-waits 1 us, each its own submission to
 * the runtime's default executor through weft_to_thread (asyncio's
 * to_thread).  64 lanes (tasks) each await one call at a time and take the
 * next call number from a shared counter, so 64 calls are in flight and a
 * new one is submitted only when one completes; the pool grows to 64
 * threads (README "W9 blocking", as Tokio's spawn_blocking lanes).
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

typedef struct w9 {
    atomic_long next; /* the next call number to submit */
} w9_t;

typedef struct w9_lane {
    w9_t *s;
    long calls;
    uint64_t sum;
    weft_task_t *task;
} w9_lane_t;

/* Runs on a pool thread: spin until the monotonic clock has advanced
 * 1000 ns, return arg + 1. */
static int w9_spin_1us(void *arg, void **result)
{
    int64_t t0 = bench_now_ns();
    while (bench_now_ns() - t0 < 1000) {
    }
    *result = bench_ptr(bench_uint(arg) + 1);
    return 0;
}

static int w9_lane(void *arg, void **result)
{
    w9_lane_t *l = arg;
    (void)result;
    for (;;) {
        /* relaxed: the counter only hands out distinct numbers. */
        long i = atomic_fetch_add_explicit(&l->s->next, 1, memory_order_relaxed);
        if (i >= bench_sizes.blocking_b)
            return 0;
        void *v;
        BENCH_CHECK("W9", weft_to_thread(w9_spin_1us, bench_ptr((uintptr_t)i), &v));
        l->sum += bench_uint(v);
        l->calls++;
    }
}

static int w9_root(void *arg, void **result)
{
    bench_round_t *r = arg;
    (void)result;
    long lanes_n = bench_sizes.blocking_in_flight, b = bench_sizes.blocking_b;
    w9_t s;
    atomic_init(&s.next, 0);
    w9_lane_t *lanes = calloc((size_t)lanes_n, sizeof *lanes);
    if (lanes == NULL)
        bench_fail("W9", "out of memory");
    int64_t t0 = bench_now_ns();
    for (long i = 0; i < lanes_n; i++) {
        lanes[i].s = &s;
        BENCH_CHECK("W9", weft_spawn(w9_lane, &lanes[i], NULL, &lanes[i].task));
    }
    long calls = 0;
    uint64_t sum = 0;
    for (long i = 0; i < lanes_n; i++) {
        BENCH_CHECK("W9", weft_await(weft_task_future(lanes[i].task), NULL));
        calls += lanes[i].calls;
        sum += lanes[i].sum;
    }
    r->secs = (double)(bench_now_ns() - t0) / 1e9;
    for (long i = 0; i < lanes_n; i++)
        weft_task_release(lanes[i].task);
    free(lanes);
    uint64_t want = (uint64_t)b * (uint64_t)(b + 1) / 2;
    if (calls != b || sum != want)
        bench_fail("W9", "%ld calls summing to %llu, want %ld summing to %llu", calls,
                   (unsigned long long)sum, b, (unsigned long long)want);
    return 0;
}

static void w9_round(bench_round_t *r)
{
    bench_in_task("W9", w9_root, r);
}

void bench_w9(bench_workload_t *w)
{
    w->id = "W9";
    snprintf(w->params, sizeof w->params, "B=%ld inflight=%ld pool=executor",
             bench_sizes.blocking_b, bench_sizes.blocking_in_flight);
    w->ops = (uint64_t)bench_sizes.blocking_b;
    w->run = w9_round;
}
