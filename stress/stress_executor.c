/* stress_executor — foreign threads flooding executor pools.
 *
 * Usage: stress_executor [workers [iterations [seed]]]
 *        (defaults: 4 workers, 20000 iterations, a time-based seed)
 *
 * One standalone loop runs on the main thread.  Each of `workers` plain
 * pthreads makes `iterations` futures bound to that loop (weft_future_new
 * from a foreign thread), registers a done callback on each, and submits a
 * job with weft__executor_submit.  Every job carries a payload: a magic
 * value, the expected result, whether it should fail (-EIO), and a run
 * counter the job increments (consumed at most once).  About one
 * submission in eight cancels a future from its submitting thread: the one
 * just submitted (mostly still queued), the same after a yield (racing the
 * job's start), or one of the submitter's 16 most recent (often running or
 * done, where the cancel loses or discards the result).
 *
 * Most jobs go to one main executor (cap 4, short keep-alive, so threads
 * come and go).  One in eight goes to one of three churning executors with
 * caps 1, 2 and 3: a churn thread keeps replacing them, shutting each one
 * down (sometimes while still published, so submitters see WEFT_ECLOSED and
 * resubmit to the main executor) and freeing it once no submitter can still
 * hold it.  Submitters announce themselves on a per-slot counter before
 * loading the slot's pointer; the churn thread frees an unpublished
 * executor only after it read that counter as 0 (all seq_cst, so a
 * submitter that still had the old pointer is seen).
 *
 * The done callback runs on the loop thread and checks the outcome: a
 * future not cancelled ran its job exactly once and carries the expected
 * result or -EIO.  The loop stops when every future is done.  Then the
 * executors are shut down with wait (queued jobs of cancelled futures drain)
 * and every payload is checked: ran at most once, exactly once unless
 * cancelled, cancelled exactly when a submitter's cancel won, and the
 * totals add up.
 *
 * Exit status: 0 when every check held, 1 on a failed check, 2 on bad
 * arguments, 3 when the watchdog gave up on a hung run.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "weft.h"
#include "weft/executor.h"

#include "sched/executor.h" /* weft__executor_submit, weft__executor_thread_count */

#define MS INT64_C(1000000)

#define PAYLOAD_MAGIC 0x3EC0FEEDu
/* One job in CANCEL_ONE_IN is cancelled by its submitter; one in
 * CHURN_ONE_IN goes to a churning executor; one in ERROR_ONE_IN fails. */
#define CANCEL_ONE_IN 8
#define CHURN_ONE_IN  8
#define ERROR_ONE_IN  11
/* Submitters pause while this many futures are not yet done, so the
 * flood stays a flood rather than a memory test. */
#define MAX_IN_FLIGHT 4096
#define NCHURN        3
/* Each submitter holds its last RECENT futures, so a cancel can also hit
 * a job that is running or finished. */
#define RECENT 16
/* The main executor: enough threads to overlap, few enough that the
 * "all threads busy" and keep-alive paths run constantly. */
#define MAIN_CAP       4
#define MAIN_KEEPALIVE (1 * MS)
/* Watchdog: a healthy run takes seconds, even under TSan on 2 cores. */
#define WATCHDOG_SECONDS 300

enum { OUT_NONE = 0, OUT_RESULT, OUT_ERROR, OUT_CANCELLED };

typedef struct payload {
    uint32_t magic;
    bool want_error;
    uintptr_t expect;
    atomic_int runs;        /* incremented by the job */
    atomic_int done_seen;   /* incremented by the done callback */
    atomic_int outcome;     /* OUT_* as the done callback saw it */
    atomic_bool cancel_won; /* a weft_future_cancel on it returned true */
} payload_t;

typedef struct churn_slot {
    _Atomic(weft_executor_t *) ex;
    atomic_int users; /* submitters between loading ex and leaving submit */
} churn_slot_t;

static struct {
    unsigned workers;
    unsigned iterations;
    size_t total;
    payload_t *payloads;
    weft_loop_t *loop;
    weft_executor_t *main_ex;
    churn_slot_t slots[NCHURN];
    atomic_bool flood_done;
    atomic_size_t done_count; /* written by the loop thread, read by submitters */
    atomic_size_t submitted;
    atomic_size_t closed_refusals;
    atomic_size_t churned;
    atomic_int failures;
    uint64_t seed_base; /* every thread's random stream derives from it */
    /* Loop-thread only. */
    size_t done, cancelled_seen, errors_seen;
} g;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    /* Only the first few are printed; the count tells the rest. */
    if (atomic_fetch_add(&g.failures, 1) >= 10)
        return;
    va_list ap;
    va_start(ap, fmt);
    flockfile(stderr);
    fputs("stress_executor: FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    funlockfile(stderr);
    va_end(ap);
}

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: fast, and good enough to pick branches. */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- the job (pool threads) and its done callback (loop thread) ------------ */

static int job_fn(void *arg, void **result)
{
    payload_t *p = arg;
    if (p->magic != PAYLOAD_MAGIC)
        fail("job %p: bad magic %#x", (void *)p, p->magic);
    if (atomic_fetch_add_explicit(&p->runs, 1, memory_order_relaxed) != 0)
        fail("job %p ran twice", (void *)p);
    /* A little work now and then, so jobs overlap and queues build up. */
    if ((p->expect & 63) == 0)
        sched_yield();
    if (p->want_error)
        return -EIO;
    *result = (void *)p->expect;
    return 0;
}

static void on_done(weft_future_t *f, void *arg)
{
    payload_t *p = arg;
    if (atomic_fetch_add_explicit(&p->done_seen, 1, memory_order_relaxed) != 0)
        fail("payload %p: done callback ran twice", (void *)p);
    if (weft_get_running_loop() != g.loop)
        fail("payload %p: done callback off the loop thread", (void *)p);
    void *value = NULL;
    int rc = weft_future_result(f, &value);
    if (rc == WEFT_ECANCELED) {
        atomic_store_explicit(&p->outcome, OUT_CANCELLED, memory_order_relaxed);
        g.cancelled_seen++;
    } else {
        /* The job's increment happened before it completed f, which
         * happened before this callback was posted. */
        int runs = atomic_load_explicit(&p->runs, memory_order_relaxed);
        if (runs != 1)
            fail("payload %p: completed but its job ran %d times", (void *)p, runs);
        if (p->want_error) {
            if (rc != -EIO)
                fail("payload %p: expected -EIO, got %s", (void *)p, weft_err_name(rc));
            atomic_store_explicit(&p->outcome, OUT_ERROR, memory_order_relaxed);
            g.errors_seen++;
        } else {
            if (rc != 0 || (uintptr_t)value != p->expect)
                fail("payload %p: expected result %#" PRIxPTR ", got rc %s value %p", (void *)p,
                     p->expect, weft_err_name(rc), value);
            atomic_store_explicit(&p->outcome, OUT_RESULT, memory_order_relaxed);
        }
    }
    g.done++;
    /* relaxed: only a throttle for the submitters. */
    atomic_store_explicit(&g.done_count, g.done, memory_order_relaxed);
    if (g.done == g.total)
        weft_loop_stop(g.loop);
}

/* ---- submitters (foreign threads) ---------------------------------------------- */

/* Submit to churn slot k; false if the slot's executor refused (closed) or
 * the slot is empty, and the caller falls back to the main executor. */
static bool submit_churn(unsigned k, payload_t *p, weft_future_t *f)
{
    churn_slot_t *s = &g.slots[k];
    /* seq_cst, both: the announcement must precede the load in the single
     * order the churn thread's exchange and users load also take part in
     * (see churn_main). */
    atomic_fetch_add(&s->users, 1);
    weft_executor_t *ex = atomic_load(&s->ex);
    int rc = ex != NULL ? weft__executor_submit(ex, job_fn, p, f) : WEFT_ECLOSED;
    atomic_fetch_sub(&s->users, 1);
    if (rc == 0)
        return true;
    if (rc != WEFT_ECLOSED)
        fail("submit to churn executor: %s", weft_err_name(rc));
    atomic_fetch_add_explicit(&g.closed_refusals, 1, memory_order_relaxed);
    return false;
}

static void *submitter_main(void *arg)
{
    unsigned w = (unsigned)(uintptr_t)arg;
    uint64_t rng = (g.seed_base ^ ((uint64_t)(w + 1) * UINT64_C(0x9E3779B97F4A7C15))) | 1;
    struct {
        weft_future_t *f;
        payload_t *p;
    } recent[RECENT] = {{NULL, NULL}};
    for (unsigned i = 0; i < g.iterations; i++) {
        while (atomic_load_explicit(&g.submitted, memory_order_relaxed) -
                   atomic_load_explicit(&g.done_count, memory_order_relaxed) >
               MAX_IN_FLIGHT)
            sleep_ns(50 * 1000);

        payload_t *p = &g.payloads[(size_t)w * g.iterations + i];
        uint64_t r = rng_next(&rng);
        p->magic = PAYLOAD_MAGIC;
        p->want_error = r % ERROR_ONE_IN == 0;
        p->expect = (uintptr_t)(r >> 8) | 1;

        weft_future_t *f = NULL;
        int rc = weft_future_new(g.loop, &f);
        if (rc != 0) {
            fail("weft_future_new: %s", weft_err_name(rc));
            exit(1); /* the loop would never stop */
        }
        rc = weft_future_add_done_callback(f, on_done, p);
        if (rc != 0) {
            fail("add_done_callback: %s", weft_err_name(rc));
            exit(1);
        }
        atomic_fetch_add_explicit(&g.submitted, 1, memory_order_relaxed);
        bool placed = false;
        if ((r >> 40) % CHURN_ONE_IN == 0)
            placed = submit_churn((unsigned)((r >> 44) % NCHURN), p, f);
        if (!placed && (rc = weft__executor_submit(g.main_ex, job_fn, p, f)) != 0) {
            fail("submit to main executor: %s", weft_err_name(rc));
            exit(1);
        }
        /* Keep the future among the recent ones; the oldest drops out. */
        unsigned slot = i % RECENT;
        weft_future_release(recent[slot].f);
        recent[slot].f = f;
        recent[slot].p = p;
        if ((r >> 48) % CANCEL_ONE_IN == 0) {
            /* This one (likely still queued), after a yield (maybe
             * starting), or a recent one (maybe running or done). */
            unsigned pick = (r >> 52) % 3;
            if (pick == 1)
                sched_yield();
            if (pick == 2)
                slot = (unsigned)((r >> 56) % RECENT);
            if (recent[slot].f != NULL && weft_future_cancel(recent[slot].f, NULL))
                atomic_store_explicit(&recent[slot].p->cancel_won, true, memory_order_relaxed);
        }
    }
    for (unsigned k = 0; k < RECENT; k++)
        weft_future_release(recent[k].f);
    return NULL;
}

/* ---- churning executors -------------------------------------------------------- */

typedef struct retired {
    struct retired *next;
    weft_executor_t *ex;
    unsigned slot;
} retired_t;

/* Free every retired executor whose slot shows no submitter.  An executor
 * was unpublished before it was retired, so a submitter that announces
 * itself now loads another pointer; one that announced earlier is still
 * counted.  Returns the list of those still in use. */
static retired_t *reap(retired_t *list)
{
    retired_t *keep = NULL;
    while (list != NULL) {
        retired_t *r = list;
        list = r->next;
        if (atomic_load(&g.slots[r->slot].users) == 0) {
            weft_executor_free(r->ex);
            free(r);
        } else {
            r->next = keep;
            keep = r;
        }
    }
    return keep;
}

static void *churn_main(void *arg)
{
    (void)arg;
    uint64_t rng = g.seed_base | 1;
    static const int64_t keepalives[] = {100 * 1000, 1 * MS, 0 /* 10 s */};
    retired_t *retired = NULL;
    while (!atomic_load_explicit(&g.flood_done, memory_order_relaxed)) {
        unsigned k = (unsigned)(rng_next(&rng) % NCHURN);
        weft_executor_t *fresh = NULL;
        int rc = weft_executor_new(k + 1, keepalives[rng_next(&rng) % 3], &fresh);
        if (rc != 0) {
            fail("weft_executor_new: %s", weft_err_name(rc));
            break;
        }
        weft_executor_t *old = atomic_load(&g.slots[k].ex);
        /* Half the time close it while still published, so submitters
         * meet WEFT_ECLOSED. */
        bool early = rng_next(&rng) & 1;
        if (old != NULL && early)
            weft_executor_shutdown(old, false);
        old = atomic_exchange(&g.slots[k].ex, fresh);
        if (old != NULL) {
            if (!early)
                weft_executor_shutdown(old, rng_next(&rng) & 1);
            retired_t *r = malloc(sizeof *r);
            if (r == NULL) {
                fail("out of memory");
                exit(1);
            }
            r->ex = old;
            r->slot = k;
            r->next = retired;
            retired = r;
            atomic_fetch_add_explicit(&g.churned, 1, memory_order_relaxed);
        }
        retired = reap(retired);
        sleep_ns((int64_t)(rng_next(&rng) % (2 * MS)));
    }
    for (unsigned k = 0; k < NCHURN; k++) {
        weft_executor_t *old = atomic_exchange(&g.slots[k].ex, NULL);
        if (old != NULL) {
            retired_t *r = malloc(sizeof *r);
            if (r == NULL) {
                fail("out of memory");
                exit(1);
            }
            *r = (retired_t){retired, old, k};
            retired = r;
        }
    }
    while ((retired = reap(retired)) != NULL)
        sched_yield();
    return NULL;
}

/* ---- watchdog ------------------------------------------------------------------- */

static pthread_mutex_t watchdog_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watchdog_cv = PTHREAD_COND_INITIALIZER;
static bool watchdog_off;

static void *watchdog_main(void *arg)
{
    (void)arg;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += WATCHDOG_SECONDS;
    pthread_mutex_lock(&watchdog_mu);
    while (!watchdog_off) {
        if (pthread_cond_timedwait(&watchdog_cv, &watchdog_mu, &deadline) == ETIMEDOUT &&
            !watchdog_off) {
            fprintf(stderr,
                    "stress_executor: watchdog: no end after %d s (done %zu of %zu, "
                    "submitted %zu)\n",
                    WATCHDOG_SECONDS, atomic_load(&g.done_count), g.total,
                    atomic_load(&g.submitted));
            exit(3);
        }
    }
    pthread_mutex_unlock(&watchdog_mu);
    return NULL;
}

/* ---- main ---------------------------------------------------------------------- */

static bool parse_uint(const char *s, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return false;
    *out = v;
    return true;
}

static void verify(void)
{
    size_t cancel_won = 0, ran = 0, skipped = 0, ran_cancelled = 0;
    for (size_t i = 0; i < g.total; i++) {
        payload_t *p = &g.payloads[i];
        int runs = atomic_load(&p->runs);
        int seen = atomic_load(&p->done_seen);
        int outcome = atomic_load(&p->outcome);
        bool won = atomic_load(&p->cancel_won);
        if (runs > 1)
            fail("payload %zu ran %d times", i, runs);
        if (seen != 1)
            fail("payload %zu: done callback ran %d times", i, seen);
        if (outcome != OUT_CANCELLED && runs != 1)
            fail("payload %zu: not cancelled but ran %d times", i, runs);
        if (won != (outcome == OUT_CANCELLED))
            fail("payload %zu: cancel won %d but outcome %d", i, won, outcome);
        cancel_won += won;
        ran += runs == 1;
        skipped += runs == 0;
        ran_cancelled += runs == 1 && outcome == OUT_CANCELLED;
    }
    if (g.done != g.total)
        fail("%zu of %zu futures done", g.done, g.total);
    if (g.cancelled_seen != cancel_won)
        fail("%zu cancelled futures seen, %zu cancels won", g.cancelled_seen, cancel_won);
    if (ran + skipped != g.total || skipped > cancel_won)
        fail("ran %zu + skipped %zu != %zu (cancelled %zu)", ran, skipped, g.total, cancel_won);
    printf("jobs=%zu ran=%zu errors=%zu cancelled=%zu (skipped before start %zu, "
           "discarded after running %zu) closed_refusals=%zu executors_churned=%zu\n",
           g.total, ran, g.errors_seen, cancel_won, skipped, ran_cancelled,
           atomic_load(&g.closed_refusals), atomic_load(&g.churned));
}

int main(int argc, char **argv)
{
    unsigned long long workers = 4, iterations = 20000, seed = (unsigned long long)now_ns();
    if ((argc > 1 && !parse_uint(argv[1], &workers)) ||
        (argc > 2 && !parse_uint(argv[2], &iterations)) ||
        (argc > 3 && !parse_uint(argv[3], &seed)) || argc > 4 || workers == 0 || workers > 1024 ||
        iterations == 0 || iterations > 10000000) {
        fprintf(stderr, "usage: %s [workers (1-1024) [iterations [seed]]]\n", argv[0]);
        return 2;
    }
    printf("seed=%llu\n", seed);
    fflush(stdout);

    g.workers = (unsigned)workers;
    g.iterations = (unsigned)iterations;
    g.total = (size_t)workers * iterations;
    g.payloads = calloc(g.total, sizeof *g.payloads);
    if (g.payloads == NULL) {
        fprintf(stderr, "stress_executor: out of memory\n");
        return 1;
    }
    g.seed_base = seed * UINT64_C(0x2545F4914F6CDD1D) + 1;

    int rc;
    if ((rc = weft_loop_new(&g.loop)) != 0 ||
        (rc = weft_executor_new(MAIN_CAP, MAIN_KEEPALIVE, &g.main_ex)) != 0) {
        fprintf(stderr, "stress_executor: setup: %s\n", weft_err_name(rc));
        return 1;
    }

    pthread_t watchdog, churn, *subs = calloc(g.workers, sizeof *subs);
    if (subs == NULL || pthread_create(&watchdog, NULL, watchdog_main, NULL) != 0 ||
        pthread_create(&churn, NULL, churn_main, NULL) != 0) {
        fprintf(stderr, "stress_executor: cannot start threads\n");
        return 1;
    }
    int64_t t0 = now_ns();
    for (unsigned w = 0; w < g.workers; w++) {
        if (pthread_create(&subs[w], NULL, submitter_main, (void *)(uintptr_t)w) != 0) {
            fprintf(stderr, "stress_executor: cannot start submitter %u\n", w);
            return 1;
        }
    }

    rc = weft_loop_run_forever(g.loop);
    if (rc != 0)
        fail("run_forever: %s", weft_err_name(rc));
    for (unsigned w = 0; w < g.workers; w++)
        pthread_join(subs[w], NULL);
    atomic_store(&g.flood_done, true);
    pthread_join(churn, NULL);

    /* Jobs of cancelled futures may still be queued: drain them. */
    if ((rc = weft_executor_shutdown(g.main_ex, true)) != 0)
        fail("shutdown: %s", weft_err_name(rc));
    if (weft__executor_thread_count(g.main_ex) != 0)
        fail("%u threads left after shutdown", weft__executor_thread_count(g.main_ex));
    int64_t elapsed = now_ns() - t0;
    verify();
    printf("elapsed=%.2fs (%.0f jobs/s)\n", (double)elapsed / 1e9,
           (double)g.total / ((double)elapsed / 1e9));

    pthread_mutex_lock(&watchdog_mu);
    watchdog_off = true;
    pthread_cond_signal(&watchdog_cv);
    pthread_mutex_unlock(&watchdog_mu);
    pthread_join(watchdog, NULL);

    weft_executor_free(g.main_ex);
    weft_loop_close(g.loop);
    weft_loop_free(g.loop);
    free(subs);
    free(g.payloads);

    int failures = atomic_load(&g.failures);
    if (failures != 0) {
        fprintf(stderr, "stress_executor: %d check(s) failed (seed=%llu)\n", failures, seed);
        return 1;
    }
    printf("stress_executor: ok\n");
    return 0;
}
