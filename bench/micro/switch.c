/* weft-switch — the cost of one coroutine context switch.
 *
 * Usage: weft-switch [SWITCHES]   (default 10 000 000)
 *
 * A main context and one coroutine switch back and forth; the figure is
 * nanoseconds per switch (one direction), the median of 5 timed runs after
 * a warm-up.  It uses the internal coroutine API (sched/coro.h), not the
 * public one, so it is a separate program from weft-bench.  Which backend
 * it measures is the build's (-DWEFT_CORO=asm|ucontext).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sched/coro.h"
#include "sched/stack.h"

enum { RUNS = 5, WARMUP = 100000 };

static weft_coro_t main_ctx, co;

static void bounce(void *arg)
{
    (void)arg;
    for (;;)
        weft__coro_switch(&co, &main_ctx);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long switches = 10000000;
    if (argc > 1) {
        char *end;
        switches = strtol(argv[1], &end, 10);
        if (*end != '\0' || switches < 2) {
            fprintf(stderr, "usage: %s [SWITCHES >= 2]\n", argv[0]);
            return 2;
        }
    }
    weft_stack_t stack;
    weft__coro_thread_init(&main_ctx);
    if (weft__stack_alloc(NULL, 0, &stack) != 0 ||
        weft__coro_init(&co, &stack, bounce, NULL) != 0) {
        fprintf(stderr, "cannot set up a coroutine\n");
        return 1;
    }
    for (int i = 0; i < WARMUP; i++)
        weft__coro_switch(&main_ctx, &co);

    double ns[RUNS];
    for (int r = 0; r < RUNS; r++) {
        int64_t t0 = now_ns();
        for (long i = 0; i < switches / 2; i++)
            weft__coro_switch(&main_ctx, &co); /* there and back: 2 switches */
        ns[r] = (double)(now_ns() - t0) / (double)(switches / 2 * 2);
    }
    qsort(ns, RUNS, sizeof ns[0], by_value);
    printf("switch: %.2f ns (median of %d runs of %ld switches; min %.2f, max %.2f)\n",
           ns[RUNS / 2], RUNS, switches / 2 * 2, ns[0], ns[RUNS - 1]);
    /* The coroutine is parked in bounce() for good; its stack is left to
     * the process exit. */
    return 0;
}
