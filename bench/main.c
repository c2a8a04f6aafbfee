/* weft-bench — the workloads of ../shared/bench/WORKLOADS.md on weft.
 *
 *   weft-bench              W1..W10 (W10 prints "skipped" until weft has I/O)
 *   weft-bench W3 W5        only those; W11 runs only when named
 *   weft-bench --smoke ...  tiny sizes (also BENCH_SMOKE=1): scripts/test.sh
 *                           runs every self-check once this way
 *
 * BENCH_WORKERS sets the worker count (default: online CPUs).  Each workload
 * runs one untimed warm-up round and five timed rounds and prints the round
 * of median duration, in the peers' format:
 *
 *   weft W1 workers=2 N=100000 ops=100000 secs=0.012345 ops_per_sec=8100000
 *
 * W7 adds p50_us/p99_us (nearest rank, over that median round's calls), W11
 * rss_per_task_bytes.  A wrong result prints "weft <Wn>: FAIL: ..." on
 * stderr and exits 1; bad arguments exit 2.
 *
 * BENCH_STATS=1 also prints, on stderr, what each worker and its loop did
 * during a workload's rounds (weft_runtime_worker_stats and
 * weft_loop_get_stats, summed over warm-up and timed rounds): the first
 * thing to look at when a figure is off (docs/performance.md).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define RUNTIME_NAME "weft"
#define TIMED_ROUNDS 5

bench_sizes_t bench_sizes;
weft_runtime_t *bench_rt;

/* The sizes of WORKLOADS.md. */
static const bench_sizes_t full_sizes = {
    .spawn_n = 100000,
    .yield_t = 200,
    .yield_y = 1000,
    .ping_p = 100,
    .ping_m = 1000,
    .chain_d = 1000,
    .chain_r = 100,
    .fib_n = 24,
    .remote_c = 1000000,
    .roundtrip_k = 20000,
    .timer_n = 200000,
    .timer_span_ns = 200 * INT64_C(1000000),
    .blocking_b = 20000,
    .blocking_in_flight = 64,
    .idle_n = 1000000,
};

/* Smoke mode: every path of every workload, at a size that runs all of
 * them, warm-up and five rounds each, in about a second.  W8 keeps its
 * shape (even deadlines spread over a span, odd ones cancelled) on a 10 ms
 * span; W9 keeps its 64 calls in flight. */
static const bench_sizes_t smoke_sizes = {
    .spawn_n = 1000,
    .yield_t = 20,
    .yield_y = 50,
    .ping_p = 10,
    .ping_m = 50,
    .chain_d = 50,
    .chain_r = 5,
    .fib_n = 12,
    .remote_c = 10000,
    .roundtrip_k = 200,
    .timer_n = 2000,
    .timer_span_ns = 10 * INT64_C(1000000),
    .blocking_b = 500,
    .blocking_in_flight = 64,
    .idle_n = 2000,
};

typedef void (*describe_fn)(bench_workload_t *w);

/* In WORKLOADS.md's order; W11 last, as the peers print it. */
static const describe_fn all_workloads[] = {
    bench_w1, bench_w2, bench_w3, bench_w4,  bench_w5,  bench_w6,
    bench_w7, bench_w8, bench_w9, bench_w10, bench_w11,
};
#define N_WORKLOADS (sizeof all_workloads / sizeof all_workloads[0])

void bench_fail(const char *id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s %s: FAIL: ", RUNTIME_NAME, id);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    /* _exit, not exit: this may run on a worker or pool thread while the
     * others still run, and exit()'s teardown would race with them.  The
     * result lines printed so far are flushed first. */
    fflush(stdout);
    fflush(stderr);
    _exit(1);
}

int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void bench_in_task(const char *id, weft_fn root, void *arg)
{
    weft_future_t *f;
    BENCH_CHECK(id, weft_runtime_submit(bench_rt, root, arg, &f));
    BENCH_CHECK(id, weft_future_wait(f, -1));
    int rc = weft_future_result(f, NULL);
    if (rc != 0)
        bench_fail(id, "the root task ended with %s (%s)", weft_err_name(rc),
                   weft_future_message(f) != NULL ? weft_future_message(f) : weft_strerror(rc));
    weft_future_release(f);
}

int64_t bench_vm_rss(const char *id)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        bench_fail(id, "cannot read /proc/self/status: %s", strerror(errno));
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "VmRSS: %lld kB", &kb) == 1)
            break;
    }
    fclose(f);
    if (kb < 0)
        bench_fail(id, "no VmRSS line in /proc/self/status");
    return (int64_t)kb * 1024;
}

void bench_latch_init(bench_latch_t *l, long n, const char *id)
{
    atomic_init(&l->left, n);
    BENCH_CHECK(id, weft_future_new(NULL, &l->zero));
    weft_future_retain(l->zero); /* the completer's reference */
}

void bench_latch_count_down(bench_latch_t *l, const char *id)
{
    /* acq_rel: every count-down before this one happens-before the
     * completion, so the root sees all the work the counted tasks did. */
    if (atomic_fetch_sub_explicit(&l->left, 1, memory_order_acq_rel) != 1)
        return;
    weft_future_t *f = l->zero; /* read before completing: *l may go after */
    BENCH_CHECK(id, weft_future_set_result(f, NULL));
    weft_future_release(f);
}

void bench_latch_wait(bench_latch_t *l, const char *id)
{
    BENCH_CHECK(id, weft_await(l->zero, NULL));
    weft_future_release(l->zero);
}

/* ---- rounds and the result line ----------------------------------------- */

static int by_secs(const void *a, const void *b)
{
    double x = ((const bench_round_t *)a)->secs, y = ((const bench_round_t *)b)->secs;
    return (x > y) - (x < y);
}

static int by_value(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile num/den of sorted[0..n): the value at rank
 * ceil(n*num/den), counted from 1 (computed in integers, so 0.99 of 100
 * values is rank 99, not 100 through rounding). */
static int64_t percentile(const int64_t *sorted, size_t n, size_t num, size_t den)
{
    size_t rank = (n * num + den - 1) / den;
    return sorted[rank > 0 ? rank - 1 : 0];
}

static void round_run(const bench_workload_t *w, bench_round_t *r)
{
    memset(r, 0, sizeof *r);
    w->run(r);
    if (!(r->secs > 0))
        bench_fail(w->id, "a round measured %g s", r->secs);
}

/* One warm-up round, TIMED_ROUNDS timed ones; the median by duration is
 * left in *out (its latencies with it; the other rounds' are freed). */
static void measure(const bench_workload_t *w, bench_round_t *out)
{
    bench_round_t rounds[TIMED_ROUNDS];
    round_run(w, &rounds[0]);
    free(rounds[0].lat_ns);
    for (int i = 0; i < TIMED_ROUNDS; i++)
        round_run(w, &rounds[i]);
    qsort(rounds, TIMED_ROUNDS, sizeof rounds[0], by_secs);
    for (int i = 0; i < TIMED_ROUNDS; i++) {
        if (i != TIMED_ROUNDS / 2)
            free(rounds[i].lat_ns);
    }
    *out = rounds[TIMED_ROUNDS / 2];
}

static void report(const bench_workload_t *w, unsigned workers, bench_round_t *r)
{
    printf("%s %s workers=%u %s ops=%llu secs=%.6f ops_per_sec=%.0f", RUNTIME_NAME, w->id, workers,
           w->params, (unsigned long long)w->ops, r->secs, (double)w->ops / r->secs);
    if (r->lat_ns != NULL && r->n_lat > 0) {
        qsort(r->lat_ns, r->n_lat, sizeof r->lat_ns[0], by_value);
        printf(" p50_us=%.1f p99_us=%.1f", (double)percentile(r->lat_ns, r->n_lat, 50, 100) / 1e3,
               (double)percentile(r->lat_ns, r->n_lat, 99, 100) / 1e3);
    }
    if (r->extra[0] != '\0')
        printf(" %s", r->extra);
    printf("\n");
    fflush(stdout);
    free(r->lat_ns);
    r->lat_ns = NULL;
}

/* ---- BENCH_STATS=1 ------------------------------------------------------ */

typedef struct stats_snap {
    weft_worker_stats_t w;
    weft_loop_stats_t l;
} stats_snap_t;

static void stats_take(stats_snap_t *out, unsigned workers)
{
    for (unsigned i = 0; i < workers; i++) {
        memset(&out[i], 0, sizeof out[i]);
        (void)weft_runtime_worker_stats(bench_rt, i, &out[i].w);
        (void)weft_loop_get_stats(weft_runtime_loop(bench_rt, i), &out[i].l);
    }
}

#define D(field) (unsigned long long)(after[i].field - before[i].field)

static void stats_print(const char *id, const stats_snap_t *before, const stats_snap_t *after,
                        unsigned workers)
{
    for (unsigned i = 0; i < workers; i++) {
        fprintf(stderr,
                "# %s %s worker %u: tasks_run=%llu lifo_runs=%llu steals=%llu stolen_tasks=%llu "
                "inject_pops=%llu parks=%llu eventfd_writes=%llu | loop: iterations=%llu "
                "callbacks_run=%llu sleeps=%llu wakeups=%llu threadsafe_calls=%llu "
                "timers_fired=%llu timers_cancelled=%llu\n",
                RUNTIME_NAME, id, i, D(w.tasks_run), D(w.lifo_runs), D(w.steals), D(w.stolen_tasks),
                D(w.inject_pops), D(w.parks), D(w.eventfd_writes), D(l.iterations),
                D(l.callbacks_run), D(l.sleeps), D(l.wakeups), D(l.threadsafe_calls),
                D(l.timers_fired), D(l.timers_cancelled));
    }
}

#undef D

/* ---- arguments ----------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: weft-bench [--smoke] [W1 .. W11]   (no workload: W1..W10; W11 runs "
                    "only when named)\n");
    exit(2);
}

static unsigned workers_from_env(void)
{
    const char *s = getenv("BENCH_WORKERS");
    if (s == NULL || *s == '\0') {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (unsigned)n : 1;
    }
    char *end;
    errno = 0;
    unsigned long n = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || n < 1 || n > 1024) {
        fprintf(stderr, "weft-bench: bad BENCH_WORKERS \"%s\" (want 1..1024)\n", s);
        exit(2);
    }
    return (unsigned)n;
}

int main(int argc, char **argv)
{
    bool smoke = false;
    const char *env_smoke = getenv("BENCH_SMOKE");
    if (env_smoke != NULL && *env_smoke != '\0' && strcmp(env_smoke, "0") != 0)
        smoke = true;

    /* Which workloads, in the order named. */
    size_t selected[64];
    size_t n_selected = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--smoke") == 0) {
            smoke = true;
            continue;
        }
        if (argv[i][0] != 'W' || n_selected == sizeof selected / sizeof selected[0])
            usage();
        char *end;
        unsigned long k = strtoul(argv[i] + 1, &end, 10);
        if (*end != '\0' || k < 1 || k > N_WORKLOADS) {
            fprintf(stderr, "weft-bench: unknown workload \"%s\" (want W1..W11)\n", argv[i]);
            exit(2);
        }
        selected[n_selected++] = k - 1;
    }
    bench_sizes = smoke ? smoke_sizes : full_sizes;

    bench_workload_t ws[N_WORKLOADS];
    for (size_t i = 0; i < N_WORKLOADS; i++) {
        memset(&ws[i], 0, sizeof ws[i]);
        all_workloads[i](&ws[i]);
    }
    if (n_selected == 0) {
        for (size_t i = 0; i < N_WORKLOADS; i++) {
            if (!ws[i].once)
                selected[n_selected++] = i;
        }
    }

    unsigned workers = workers_from_env();
    weft_config_t cfg = {.workers = workers};
    int rc = weft_runtime_new(&cfg, &bench_rt);
    if (rc != 0) {
        fprintf(stderr, "weft-bench: weft_runtime_new: %s\n", weft_strerror(rc));
        return 1;
    }
    workers = weft_runtime_workers(bench_rt);

    const char *env_stats = getenv("BENCH_STATS");
    bool stats = env_stats != NULL && *env_stats != '\0' && strcmp(env_stats, "0") != 0;
    stats_snap_t *before = NULL, *after = NULL;
    if (stats) {
        before = calloc(workers, sizeof *before);
        after = calloc(workers, sizeof *after);
        if (before == NULL || after == NULL) {
            fprintf(stderr, "weft-bench: out of memory\n");
            return 1;
        }
    }

    for (size_t i = 0; i < n_selected; i++) {
        const bench_workload_t *w = &ws[selected[i]];
        if (w->run == NULL) {
            printf("%s %s skipped reason=%s\n", RUNTIME_NAME, w->id, w->skip);
            fflush(stdout);
            continue;
        }
        if (stats)
            stats_take(before, workers);
        bench_round_t r;
        if (w->once)
            round_run(w, &r);
        else
            measure(w, &r);
        if (stats) {
            stats_take(after, workers);
            stats_print(w->id, before, after, workers);
        }
        report(w, workers, &r);
    }
    free(before);
    free(after);

    rc = weft_runtime_shutdown(bench_rt, 10 * INT64_C(1000000000));
    if (rc != 0) {
        fprintf(stderr, "weft-bench: weft_runtime_shutdown: %s\n", weft_strerror(rc));
        return 1;
    }
    weft_runtime_free(bench_rt);
    return 0;
}
