/* weft-bench — W11 idle_tasks: what a parked task costs in memory.
 *
 * The root reads VmRSS, starts the clock and spawns N tasks.  Each adds 1
 * to `parked` and then awaits one shared gate, a future that the root
 * completes once it has seen all N announced (it polls with 1 ms sleeps);
 * a future awaited by many tasks is weft's closed channel / Notify: each
 * waiter is a node on the waiting task's own stack, with no allocation.
 * Between the two polls the root reads VmRSS again.  The task that
 * finishes last wakes the root through a latch.
 *
 * rss_per_task_bytes = (VmRSS when all are parked - VmRSS before) / N,
 * integer division, as the peers compute it.  It counts what weft keeps for
 * a parked task: its record, the touched pages of its stack, the run-queue
 * and bookkeeping growth.  One round, no warm-up, and only when named, in a
 * process that has run nothing else (README "W11 idle_tasks").
 */
#include <stdio.h>

#include "bench.h"

#define MS INT64_C(1000000)

typedef struct w11 {
    atomic_long parked;
    weft_future_t *gate; /* completed by the root when all N are parked */
    bench_latch_t finished;
} w11_t;

static int w11_task(void *arg, void **result)
{
    w11_t *s = arg;
    (void)result;
    /* release: pairs with the root's acquire load of `parked`, which then
     * reads the gate pointer this task also read. */
    atomic_fetch_add_explicit(&s->parked, 1, memory_order_release);
    BENCH_CHECK("W11", weft_await(s->gate, NULL));
    bench_latch_count_down(&s->finished, "W11");
    return 0;
}

static int w11_root(void *arg, void **result)
{
    bench_round_t *r = arg;
    (void)result;
    long n = bench_sizes.idle_n;
    w11_t s;
    atomic_init(&s.parked, 0);
    BENCH_CHECK("W11", weft_future_new(NULL, &s.gate));
    bench_latch_init(&s.finished, n, "W11");

    int64_t rss_before = bench_vm_rss("W11");
    int64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++)
        BENCH_CHECK("W11", weft_spawn(w11_task, &s, NULL, NULL));
    while (atomic_load_explicit(&s.parked, memory_order_acquire) < n)
        BENCH_CHECK("W11", weft_sleep(1 * MS));
    int64_t rss_parked = bench_vm_rss("W11");
    BENCH_CHECK("W11", weft_future_set_result(s.gate, NULL));
    bench_latch_wait(&s.finished, "W11");
    r->secs = (double)(bench_now_ns() - t0) / 1e9;

    long done = n - atomic_load(&s.finished.left);
    if (done != n)
        bench_fail("W11", "%ld tasks finished, want %ld", done, n);
    weft_future_release(s.gate); /* no waiter is left on it */
    snprintf(r->extra, sizeof r->extra, "rss_per_task_bytes=%lld",
             (long long)((rss_parked - rss_before) / n));
    return 0;
}

static void w11_round(bench_round_t *r)
{
    bench_in_task("W11", w11_root, r);
}

void bench_w11(bench_workload_t *w)
{
    w->id = "W11";
    snprintf(w->params, sizeof w->params, "N=%ld", bench_sizes.idle_n);
    w->ops = (uint64_t)bench_sizes.idle_n;
    w->run = w11_round;
    w->once = true;
}
