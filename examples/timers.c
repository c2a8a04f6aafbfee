/* example_timers — callbacks and timers on a standalone weft loop.
 *
 * What it shows:
 *   1. call_soon runs on the next loop iteration, before any timer;
 *   2. call_later timers run in deadline order, whatever order they were
 *      scheduled in (here 30 ms, 10 ms, 20 ms);
 *   3. a cancelled timer never runs;
 *   4. weft_loop_run_until_complete runs the loop until a future is done
 *      (a timer completes it) and hands back its outcome.
 *
 * Expected output (elapsed times vary by a millisecond or so):
 *   call_soon: runs first, at 0 ms
 *   timer "10 ms" fired at 10 ms
 *   timer "20 ms" fired at 20 ms
 *   timer "30 ms" fired at 30 ms -> stopping the loop
 *   run_until_complete: the future got "the answer is 42" after 25 ms
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "weft.h"

#define MS INT64_C(1000000) /* weft counts time in nanoseconds */

static weft_loop_t *loop;
static int64_t start;      /* loop time when we began, to print elapsed ms */
static int timers_fired;   /* how many of the three timers ran */
static int cancelled_runs; /* must stay 0 */

static double elapsed_ms(void)
{
    return (double)(weft_loop_time(loop) - start) / 1e6;
}

/* Exit with a message if a weft call failed: examples should never hide
 * an error code. */
static void ok(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s failed: %s (%s)\n", what, weft_strerror(rc), weft_err_name(rc));
        exit(1);
    }
}

static void say_soon(void *arg)
{
    (void)arg;
    printf("call_soon: runs first, at %.0f ms\n", elapsed_ms());
}

static void timer_fired(void *arg)
{
    const char *name = arg;
    timers_fired++;
    if (timers_fired < 3) {
        printf("timer \"%s\" fired at %.0f ms\n", name, elapsed_ms());
    } else {
        /* The last of the three: ask the loop to return from run_forever
         * once this iteration is over. */
        printf("timer \"%s\" fired at %.0f ms -> stopping the loop\n", name, elapsed_ms());
        weft_loop_stop(loop);
    }
}

static void never_runs(void *arg)
{
    (void)arg;
    cancelled_runs++;
    printf("BUG: a cancelled timer ran\n");
}

/* A timer that completes a future with a result. */
static void complete_future(void *arg)
{
    weft_future_t *f = arg;
    weft_future_set_result(f, "the answer is 42");
}

int main(void)
{
    ok(weft_loop_new(&loop), "weft_loop_new");
    start = weft_loop_time(loop);

    /* Part 1: schedule everything before the loop runs.  Passing NULL as
     * the last argument means "I don't need a handle". */
    ok(weft_loop_call_later(loop, 30 * MS, timer_fired, "30 ms", NULL), "call_later");
    ok(weft_loop_call_later(loop, 10 * MS, timer_fired, "10 ms", NULL), "call_later");
    ok(weft_loop_call_later(loop, 20 * MS, timer_fired, "20 ms", NULL), "call_later");
    ok(weft_loop_call_soon(loop, say_soon, NULL, NULL), "call_soon");

    /* This one we want to cancel, so we ask for its handle. */
    weft_handle_t *doomed = NULL;
    ok(weft_loop_call_later(loop, 15 * MS, never_runs, NULL, &doomed), "call_later");
    ok(weft_handle_cancel(doomed), "weft_handle_cancel");
    weft_handle_release(doomed); /* releasing a handle does not cancel it; we already did */

    /* Blocks until timer_fired() calls weft_loop_stop(). */
    ok(weft_loop_run_forever(loop), "weft_loop_run_forever");

    /* Part 2: a future completed by a timer.  run_until_complete runs the
     * loop until the future is done and returns its outcome (0 here). */
    weft_future_t *f = NULL;
    ok(weft_future_new(loop, &f), "weft_future_new");
    int64_t t0 = weft_loop_time(loop);
    ok(weft_loop_call_later(loop, 25 * MS, complete_future, f, NULL), "call_later");
    ok(weft_loop_run_until_complete(loop, f), "weft_loop_run_until_complete");

    void *value = NULL;
    ok(weft_future_result(f, &value), "weft_future_result");
    printf("run_until_complete: the future got \"%s\" after %.0f ms\n", (const char *)value,
           (double)(weft_loop_time(loop) - t0) / 1e6);

    weft_future_release(f);
    weft_loop_free(loop);

    if (timers_fired != 3 || cancelled_runs != 0) {
        fprintf(stderr, "unexpected: %d timers fired, cancelled one ran %d times\n", timers_fired,
                cancelled_runs);
        return 1;
    }
    return 0;
}
