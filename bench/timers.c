/* weft-bench — W8 timers.
 *
 * One task arms N one-shot timers on the loop of the worker it runs on,
 * with weft_loop_call_later (asyncio's call_later): timer i's delay is
 * i*span/N counted from the moment it is armed, and every odd timer is
 * cancelled right after it is armed (README "W8 timers").  The task then
 * waits until the N/2 even timers have fired.
 *
 * Arming never suspends, so the task stays on that worker for all N arms,
 * and the loop thread's rule for call_later holds.  A timer fired early if
 * its callback runs before arm time + delay, both read on the loop's own
 * clock (weft_loop_time); a cancelled timer must never run.
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

typedef struct w8 {
    weft_loop_t *loop;
    atomic_long fired;           /* even timers that ran */
    atomic_long early;           /* timers that ran before their deadline */
    atomic_long cancelled_fired; /* odd timers that ran anyway */
    bench_latch_t kept;          /* counts the even timers down to zero */
} w8_t;

typedef struct w8_timer {
    w8_t *s;
    int64_t deadline; /* arm time + delay on the loop clock */
    bool odd;
} w8_timer_t;

static void w8_fire(void *arg)
{
    w8_timer_t *t = arg;
    w8_t *s = t->s;
    /* relaxed: the counters are read by the root after the latch, whose
     * acq_rel count-down and the future's completion order them. */
    if (weft_loop_time(s->loop) < t->deadline)
        atomic_fetch_add_explicit(&s->early, 1, memory_order_relaxed);
    if (t->odd) {
        atomic_fetch_add_explicit(&s->cancelled_fired, 1, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&s->fired, 1, memory_order_relaxed);
    bench_latch_count_down(&s->kept, "W8");
}

static int w8_root(void *arg, void **result)
{
    bench_round_t *r = arg;
    (void)result;
    long n = bench_sizes.timer_n;
    int64_t span = bench_sizes.timer_span_ns;
    w8_t s = {.loop = weft_get_running_loop()};
    if (s.loop == NULL)
        bench_fail("W8", "the root task sees no running loop");
    atomic_init(&s.fired, 0);
    atomic_init(&s.early, 0);
    atomic_init(&s.cancelled_fired, 0);
    w8_timer_t *timers = malloc((size_t)n * sizeof *timers);
    if (timers == NULL)
        bench_fail("W8", "out of memory");
    bench_latch_init(&s.kept, n / 2 + n % 2, "W8"); /* the even i of 0..n-1 */

    int64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        w8_timer_t *t = &timers[i];
        int64_t delay = span * i / n;
        t->s = &s;
        t->odd = i % 2 == 1;
        t->deadline = weft_loop_time(s.loop) + delay;
        if (!t->odd) {
            BENCH_CHECK("W8", weft_loop_call_later(s.loop, delay, w8_fire, t, NULL));
            continue;
        }
        weft_handle_t *h;
        BENCH_CHECK("W8", weft_loop_call_later(s.loop, delay, w8_fire, t, &h));
        BENCH_CHECK("W8", weft_handle_cancel(h));
        weft_handle_release(h);
    }
    bench_latch_wait(&s.kept, "W8");
    r->secs = (double)(bench_now_ns() - t0) / 1e9;

    long fired = atomic_load(&s.fired), early = atomic_load(&s.early);
    long cancelled_fired = atomic_load(&s.cancelled_fired);
    if (fired != n / 2 + n % 2 || early != 0 || cancelled_fired != 0)
        bench_fail("W8", "%ld timers fired (want %ld), %ld early, %ld cancelled ones fired", fired,
                   n / 2 + n % 2, early, cancelled_fired);
    /* Every even timer has run and every odd one was cancelled before the
     * loop could run it, so no callback can touch `timers` any more. */
    free(timers);
    return 0;
}

static void w8_round(bench_round_t *r)
{
    bench_in_task("W8", w8_root, r);
}

void bench_w8(bench_workload_t *w)
{
    w->id = "W8";
    snprintf(w->params, sizeof w->params, "N=%ld span_ms=%lld", bench_sizes.timer_n,
             (long long)(bench_sizes.timer_span_ns / 1000000));
    w->ops = (uint64_t)bench_sizes.timer_n;
    w->run = w8_round;
}
