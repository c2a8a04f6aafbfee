/* weft-bench — the workloads driven from a thread that is not a worker:
 * W6 remote_call and W7 remote_roundtrip.
 *
 * The driving thread is the program's main thread, which weft knows nothing
 * about (it is not a worker and runs no loop).  "The loop" of WORKLOADS.md
 * is worker 0's loop.  The thread blocks on weft futures with
 * weft_future_wait(), weft's way for a plain thread to wait (a futex).
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

/* ---- W6 remote_call ------------------------------------------------------ */

typedef struct w6 {
    long ran;               /* touched only by the callbacks, all on one loop thread */
    weft_future_t *all_ran; /* the poster's reference, plus one for the last callback */
} w6_t;

static void w6_callback(void *arg)
{
    w6_t *s = arg;
    if (++s->ran != bench_sizes.remote_c)
        return;
    /* *s lives on the poster's stack, which may be gone once the future is
     * complete: read the pointer first, drop the callback's reference last. */
    weft_future_t *f = s->all_ran;
    BENCH_CHECK("W6", weft_future_set_result(f, NULL));
    weft_future_release(f);
}

/* Posts C callbacks one after another, without waiting between posts (no
 * handle asked for: each post fills a slot of the loop's inbox).  The last
 * callback wakes this thread, which stops the clock. */
static void w6_round(bench_round_t *r)
{
    weft_loop_t *loop = weft_runtime_loop(bench_rt, 0);
    w6_t s = {.ran = 0};
    BENCH_CHECK("W6", weft_future_new(loop, &s.all_ran));
    weft_future_retain(s.all_ran); /* the last callback's reference */
    long c = bench_sizes.remote_c;
    int64_t t0 = bench_now_ns();
    for (long i = 0; i < c; i++)
        BENCH_CHECK("W6", weft_loop_call_soon_threadsafe(loop, w6_callback, &s, NULL));
    BENCH_CHECK("W6", weft_future_wait(s.all_ran, -1));
    r->secs = (double)(bench_now_ns() - t0) / 1e9;
    /* The future's completion (release) and the wait (acquire) order the
     * callbacks' writes to s.ran before this read. */
    if (s.ran != c)
        bench_fail("W6", "%ld callbacks ran, want %ld", s.ran, c);
    weft_future_release(s.all_ran);
}

void bench_w6(bench_workload_t *w)
{
    w->id = "W6";
    snprintf(w->params, sizeof w->params, "C=%ld", bench_sizes.remote_c);
    w->ops = (uint64_t)bench_sizes.remote_c;
    w->run = w6_round;
}

/* ---- W7 remote_roundtrip ------------------------------------------------- */

static int w7_plus_one(void *arg, void **result)
{
    *result = bench_ptr(bench_uint(arg) + 1);
    return 0;
}

/* K calls in sequence: submit a new task with run_coroutine_threadsafe,
 * block until its future is done, check arg+1.  Latency is per call, from
 * just before the submit to just after the result was read. */
static void w7_round(bench_round_t *r)
{
    weft_loop_t *loop = weft_runtime_loop(bench_rt, 0);
    long k = bench_sizes.roundtrip_k;
    r->lat_ns = malloc((size_t)k * sizeof r->lat_ns[0]);
    if (r->lat_ns == NULL)
        bench_fail("W7", "out of memory");
    r->n_lat = (size_t)k;
    int64_t start = bench_now_ns();
    for (long i = 0; i < k; i++) {
        int64_t t0 = bench_now_ns();
        weft_future_t *f;
        BENCH_CHECK("W7",
                    weft_run_coroutine_threadsafe(loop, w7_plus_one, bench_ptr((uintptr_t)i), &f));
        BENCH_CHECK("W7", weft_future_wait(f, -1));
        void *v;
        BENCH_CHECK("W7", weft_future_result(f, &v));
        weft_future_release(f);
        r->lat_ns[i] = bench_now_ns() - t0;
        if (bench_uint(v) != (uintptr_t)i + 1)
            bench_fail("W7", "call %ld returned %lu, want %ld", i, (unsigned long)bench_uint(v),
                       i + 1);
    }
    r->secs = (double)(bench_now_ns() - start) / 1e9;
}

void bench_w7(bench_workload_t *w)
{
    w->id = "W7";
    snprintf(w->params, sizeof w->params, "K=%ld", bench_sizes.roundtrip_k);
    w->ops = (uint64_t)bench_sizes.roundtrip_k;
    w->run = w7_round;
}
