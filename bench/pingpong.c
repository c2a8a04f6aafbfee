/* weft-bench — W3 ping_pong, on weft's queues.
 *
 * P pairs of tasks.  In a pair, A puts i into a FIFO queue of maxsize 1
 * (the peers' one-slot channel), B gets it and puts i+1 into a second one,
 * and A gets and checks that; M round trips.  Then A shuts its queue down
 * (asyncio's Queue.shutdown(), not immediate), and B's next get returns
 * WEFT_EQSHUTDOWN, which ends B: "B ends when A closes its channel".  The
 * root spawns all 2P tasks and stops the clock once the P A-tasks are done.
 *
 * The queues (include/weft/queue.h) arrive with the sync issue; until the
 * header exists this workload prints "skipped".
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

#if __has_include(<weft/queue.h>)
#include <weft/queue.h>

typedef struct pair {
    weft_queue_t *to_b, *to_a;
    long trips, wrong; /* written by A, read by the root after awaiting A */
    weft_task_t *a, *b;
} pair_t;

/* The values travel as pointers.  The queue API does not promise to take
 * NULL as an item, so each value is sent as value + 1. */
static void *enc(long v)
{
    return bench_ptr((uintptr_t)v + 1);
}

static long dec(void *p)
{
    return (long)(bench_uint(p) - 1);
}

static int w3_b(void *arg, void **result)
{
    pair_t *p = arg;
    (void)result;
    for (;;) {
        void *v;
        int rc = weft_queue_get(p->to_b, &v);
        if (rc == WEFT_EQSHUTDOWN)
            return 0;
        BENCH_CHECK("W3", rc);
        BENCH_CHECK("W3", weft_queue_put(p->to_a, enc(dec(v) + 1)));
    }
}

static int w3_a(void *arg, void **result)
{
    pair_t *p = arg;
    (void)result;
    long trips = 0, wrong = 0;
    for (long i = 0; i < bench_sizes.ping_m; i++) {
        BENCH_CHECK("W3", weft_queue_put(p->to_b, enc(i)));
        void *v;
        BENCH_CHECK("W3", weft_queue_get(p->to_a, &v));
        if (dec(v) != i + 1)
            wrong++;
        trips++;
    }
    BENCH_CHECK("W3", weft_queue_shutdown(p->to_b, false));
    p->trips = trips;
    p->wrong = wrong;
    return 0;
}

static int w3_root(void *arg, void **result)
{
    bench_round_t *r = arg;
    (void)result;
    long n = bench_sizes.ping_p;
    pair_t *pairs = calloc((size_t)n, sizeof *pairs);
    if (pairs == NULL)
        bench_fail("W3", "out of memory");
    int64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        pair_t *p = &pairs[i];
        BENCH_CHECK("W3", weft_queue_new(WEFT_QUEUE_FIFO, 1, NULL, &p->to_b));
        BENCH_CHECK("W3", weft_queue_new(WEFT_QUEUE_FIFO, 1, NULL, &p->to_a));
        BENCH_CHECK("W3", weft_spawn(w3_b, p, NULL, &p->b));
        BENCH_CHECK("W3", weft_spawn(w3_a, p, NULL, &p->a));
    }
    for (long i = 0; i < n; i++)
        BENCH_CHECK("W3", weft_await(weft_task_future(pairs[i].a), NULL));
    r->secs = (double)(bench_now_ns() - t0) / 1e9;

    /* Untimed: the B tasks end once their queue is shut down. */
    long trips = 0, wrong = 0;
    for (long i = 0; i < n; i++) {
        pair_t *p = &pairs[i];
        BENCH_CHECK("W3", weft_await(weft_task_future(p->b), NULL));
        trips += p->trips;
        wrong += p->wrong;
        weft_task_release(p->a);
        weft_task_release(p->b);
        weft_queue_free(p->to_b);
        weft_queue_free(p->to_a);
    }
    free(pairs);
    long want = n * bench_sizes.ping_m;
    if (wrong != 0 || trips != want)
        bench_fail("W3", "%ld round trips (%ld wrong replies), want %ld", trips, wrong, want);
    return 0;
}

static void w3_round(bench_round_t *r)
{
    bench_in_task("W3", w3_root, r);
}

void bench_w3(bench_workload_t *w)
{
    w->id = "W3";
    snprintf(w->params, sizeof w->params, "P=%ld M=%ld", bench_sizes.ping_p, bench_sizes.ping_m);
    w->ops = (uint64_t)bench_sizes.ping_p * (uint64_t)bench_sizes.ping_m;
    w->run = w3_round;
}

#else /* no weft/queue.h yet */

void bench_w3(bench_workload_t *w)
{
    w->id = "W3";
    w->skip = "weft_queue_not_built_yet";
}

#endif
