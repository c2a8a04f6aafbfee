/* weft-bench — what the workload files share with the driver (main.c).
 *
 * Each workload of ../shared/bench/WORKLOADS.md is one function that runs
 * one round and fills a bench_round_t.  The driver runs the untimed warm-up
 * round and the five timed rounds, picks the median and prints the result
 * line; a workload only measures and checks.  A wrong answer ends the
 * process through bench_fail(), from whatever thread noticed it.
 *
 * The choices the peers made where WORKLOADS.md is silent ("Interpretations"
 * in ../shared/peers/README.md) are followed here; each workload's file says
 * which ones it touches.  Only weft's public API is used.
 */
#ifndef WEFT_BENCH_H
#define WEFT_BENCH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "weft.h"

/* The sizes of every workload.  bench_sizes holds those of WORKLOADS.md,
 * or the tiny ones of smoke mode (BENCH_SMOKE=1), which scripts/test.sh
 * uses to run each self-check once in well under a second. */
typedef struct bench_sizes {
    long spawn_n;            /* W1 N */
    long yield_t, yield_y;   /* W2 T, Y */
    long ping_p, ping_m;     /* W3 P, M */
    long chain_d, chain_r;   /* W4 D, R */
    long fib_n;              /* W5 n */
    long remote_c;           /* W6 C */
    long roundtrip_k;        /* W7 K */
    long timer_n;            /* W8 N */
    int64_t timer_span_ns;   /* W8: the deadlines spread over 0..span */
    long blocking_b;         /* W9 B */
    long blocking_in_flight; /* W9: calls in flight at once */
    long idle_n;             /* W11 N */
} bench_sizes_t;

extern bench_sizes_t bench_sizes;

/* The runtime every workload runs on: BENCH_WORKERS workers, everything
 * else at weft's defaults.  Made once by main.c before the first round. */
extern weft_runtime_t *bench_rt;

/* What one round measured. */
typedef struct bench_round {
    double secs;
    int64_t *lat_ns; /* per-operation latencies (malloc'd, freed by the driver); NULL if none */
    size_t n_lat;
    char extra[96]; /* printed last on the line ("rss_per_task_bytes=.."); "" if none */
} bench_round_t;

typedef void (*bench_run_fn)(bench_round_t *r);

/* One entry of WORKLOADS.md, filled in by the workload's own file. */
typedef struct bench_workload {
    const char *id;   /* "W1" .. "W11" */
    char params[128]; /* printed after workers=, e.g. "N=100000" */
    uint64_t ops;     /* ops one round counts */
    bench_run_fn run; /* NULL: skipped, for the reason in `skip` */
    const char *skip; /* reason printed as "skipped reason=<skip>" */
    bool once;        /* one round, no warm-up, only when named (W11) */
} bench_workload_t;

/* Each fills *w from bench_sizes (called after the sizes are chosen). */
void bench_w1(bench_workload_t *w);
void bench_w2(bench_workload_t *w);
void bench_w3(bench_workload_t *w);
void bench_w4(bench_workload_t *w);
void bench_w5(bench_workload_t *w);
void bench_w6(bench_workload_t *w);
void bench_w7(bench_workload_t *w);
void bench_w8(bench_workload_t *w);
void bench_w9(bench_workload_t *w);
void bench_w10(bench_workload_t *w);
void bench_w11(bench_workload_t *w);

/* Print "weft <id>: FAIL: <message>" on stderr and end the process with
 * status 1.  Callable from any thread: a task, a callback, a pool thread. */
__attribute__((noreturn, format(printf, 2, 3))) void bench_fail(const char *id, const char *fmt,
                                                                ...);

/* Check a weft call that must succeed: on rc != 0, fail naming the call. */
#define BENCH_CHECK(id, call)                                                                      \
    do {                                                                                           \
        int bench_rc_ = (call);                                                                    \
        if (bench_rc_ != 0)                                                                        \
            bench_fail((id), "%s: %s", #call, weft_strerror(bench_rc_));                           \
    } while (0)

/* CLOCK_MONOTONIC in nanoseconds (the clock weft's loops use too). */
int64_t bench_now_ns(void);

/* Run root(arg) as a task on bench_rt, from the main thread, and wait for
 * it: the "root task" of WORKLOADS.md.  Starting it and waiting for it are
 * outside the timed part, which the root measures itself.  A root that
 * fails ends the process. */
void bench_in_task(const char *id, weft_fn root, void *arg);

/* The process's resident set size in bytes: the VmRSS line of
 * /proc/self/status (kB there), as the peers read it. */
int64_t bench_vm_rss(const char *id);

/* A count-down latch for a root task: the task that brings the count to
 * zero completes the latch's future, which wakes the root awaiting it (the
 * peers' Notify / closed channel).  The future holds two references, one
 * for the root and one for whichever task completes it, so neither has to
 * outlive the other.  Only `left` and `zero` are shared; the struct lives
 * on the root's stack, which is safe because the root cannot return before
 * the future is complete, and the completing task reads the struct only
 * before completing it. */
typedef struct bench_latch {
    atomic_long left;
    weft_future_t *zero;
} bench_latch_t;

/* Thread: inside a task (the future belongs to the running loop). */
void bench_latch_init(bench_latch_t *l, long n, const char *id);
/* Thread: any.  The call that takes the count to zero completes the future. */
void bench_latch_count_down(bench_latch_t *l, const char *id);
/* Await zero, then drop the root's reference.  Thread: inside a task. */
void bench_latch_wait(bench_latch_t *l, const char *id);

/* Integers travel through weft's void * results and arguments. */
static inline void *bench_ptr(uintptr_t v)
{
    return (void *)v;
}

static inline uintptr_t bench_uint(void *p)
{
    return (uintptr_t)p;
}

#endif /* WEFT_BENCH_H */
