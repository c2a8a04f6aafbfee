/* stress_shutdown — foreign threads submitting while the runtime shuts down.
 *
 * Usage: stress_shutdown [workers [iterations [seed]]]
 *        (defaults: 4 workers, 20000 iterations, a time-based seed)
 *
 * Several runtimes in a row (4 + iterations / 2500).  For each, POSTERS
 * plain pthreads start jobs as fast as they can, each call either
 * weft_runtime_submit or weft_run_coroutine_threadsafe on a random worker's
 * loop, and now and then block on one of their futures for up to 1 ms
 * (pacing only: no check depends on how long anything takes).  Once a
 * random number of jobs was accepted, the main thread calls
 * weft_runtime_shutdown with a random timeout: none, zero, or 1-4 ms.
 * The posters go on until they have seen WEFT_ECLOSED POST_AFTER_CLOSED
 * times; then the main thread joins them and frees the runtime.
 *
 * Jobs, chosen at random: return at once; yield 1-20 times (giving up on
 * cancellation); yield up to 50 times ignoring cancellation (so shutdown
 * waits, or with a timeout abandons them); sleep up to 1 ms; spawn a child
 * job and await it; fail with -EIO.  Every job has a record with a magic
 * value and atomic counters of starts and finishes, and so has its child.
 *
 * Checks, for every call:
 *   - it returned 0 or WEFT_ECLOSED, and once a poster saw WEFT_ECLOSED it
 *     never sees 0 again;
 *   - WEFT_ECLOSED: the job never started (checked after the workers were
 *     joined, when nothing can start any more);
 *   - 0: once shutdown returned, the future is done (none lost), with the
 *     job's value (started and finished once), -EIO (a failing job, run
 *     once), or cancelled (started at most once);
 *   - no job or child ever started twice;
 *   - shutdown without a timeout returns 0 (nothing had to be abandoned),
 *     with a timeout 0 or WEFT_ETIMEDOUT.
 * Futures are released before weft_runtime_free for some runtimes and
 * after it for others (a future keeps its loop alive).
 *
 * Exit status: 0 when every check held, 1 on a failed check, 2 on bad
 * arguments, 3 when the watchdog gave up on a hung run.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "weft.h"

#define JOB_MAGIC 0x70B5C0DEu
#define MS        INT64_C(1000000)

#define POSTERS 4
/* Runtimes per run: a few even for tiny runs, one more per ITERS_PER_RT. */
#define MIN_RUNTIMES 4
#define ITERS_PER_RT 2500
/* The main thread shuts down once up to this many jobs per iteration
 * were accepted (a random share of it for each runtime). */
#define ACCEPT_PER_ITERATION 1
/* A poster stops after this many refusals (closed stays closed). */
#define POST_AFTER_CLOSED 8
/* About one call in WAIT_ONE_IN blocks on its future for up to 1 ms. */
#define WAIT_ONE_IN 16
/* Watchdog: a healthy run takes seconds, even under TSan on 2 cores. */
#define WATCHDOG_SECONDS 300

enum { J_QUICK, J_YIELDY, J_STUBBORN, J_SLEEPER, J_SPAWNER, J_FAILER, J_KINDS };
static const char *const kind_name[J_KINDS] = {"quick",   "yieldy",  "stubborn",
                                               "sleeper", "spawner", "failer"};

/* ---- failures ------------------------------------------------------------ */

static atomic_int failures;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        if (atomic_fetch_add(&failures, 1) < 20) {                                                 \
            flockfile(stderr);                                                                     \
            fprintf(stderr, "stress_shutdown: FAILED at %s:%d: ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            funlockfile(stderr);                                                                   \
        }                                                                                          \
    } while (0)

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            FAIL(__VA_ARGS__);                                                                     \
    } while (0)

/* xorshift64*: one stream per thread; jobs carry their own parameters. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- jobs ------------------------------------------------------------------ */

typedef struct job {
    uint32_t magic;
    uint32_t id;
    unsigned kind;
    unsigned count;  /* yields, or sleep in us */
    int call_rc;     /* what submit / run_coroutine_threadsafe returned */
    bool threadsafe; /* which of the two */
    weft_future_t *f;
    atomic_int started, finished;
    /* J_SPAWNER's child (a quick job).  The reference to it lives here,
     * not in the job's frame: a job abandoned at shutdown never returns
     * from its await, and the main thread then drops the reference. */
    atomic_int child_started, child_finished;
    weft_task_t *child;
} job_t;

static uintptr_t job_value(const job_t *j)
{
    return (uintptr_t)JOB_MAGIC << 32 | j->id;
}

static int child_main(void *arg, void **result)
{
    job_t *j = arg;
    int n = atomic_fetch_add(&j->child_started, 1);
    EXPECT(n == 0, "job %u: child started %d times", j->id, n + 1);
    *result = (void *)(job_value(j) ^ 1);
    atomic_fetch_add(&j->child_finished, 1);
    return 0;
}

static int job_main(void *arg, void **result)
{
    job_t *j = arg;
    if (j->magic != JOB_MAGIC) {
        FAIL("job_main got a bad job (magic %#x)", j->magic);
        return -EBADMSG;
    }
    int n = atomic_fetch_add(&j->started, 1);
    EXPECT(n == 0, "job %u (%s) started %d times", j->id, kind_name[j->kind], n + 1);
    int rc = 0;
    switch (j->kind) {
    case J_YIELDY:
        for (unsigned i = 0; i < j->count && rc == 0; i++)
            rc = weft_yield();
        EXPECT(rc == 0 || rc == WEFT_ECANCELED, "weft_yield: %s", weft_err_name(rc));
        break;
    case J_STUBBORN:
        /* Ignores cancellation for a while: shutdown must wait for it, or
         * abandon it when its timeout passes first. */
        for (unsigned i = 0; i < j->count; i++) {
            int yrc = weft_yield();
            EXPECT(yrc == 0 || yrc == WEFT_ECANCELED, "weft_yield: %s", weft_err_name(yrc));
        }
        break;
    case J_SLEEPER:
        rc = weft_sleep((int64_t)j->count * 1000);
        EXPECT(rc == 0 || rc == WEFT_ECANCELED, "weft_sleep: %s", weft_err_name(rc));
        break;
    case J_SPAWNER: {
        rc = weft_spawn(child_main, j, NULL, &j->child);
        if (rc == WEFT_ECLOSED) {
            rc = 0; /* the runtime is closing: a refusal is an answer */
            break;
        }
        if (rc != 0) {
            FAIL("weft_spawn (child): %s", weft_err_name(rc));
            break;
        }
        void *v = NULL;
        rc = weft_await(weft_task_future(j->child), &v);
        if (rc == 0)
            EXPECT((uintptr_t)v == (job_value(j) ^ 1), "job %u: child returned %#" PRIxPTR, j->id,
                   (uintptr_t)v);
        else
            EXPECT(rc == WEFT_ECANCELED, "await child: %s", weft_err_name(rc));
        weft_task_release(j->child);
        j->child = NULL;
        break;
    }
    case J_FAILER:
        rc = -EIO;
        break;
    default:
        break;
    }
    if (rc == 0)
        *result = (void *)job_value(j);
    atomic_fetch_add(&j->finished, 1);
    return rc;
}

/* ---- posters ---------------------------------------------------------------- */

typedef struct poster {
    pthread_t tid;
    unsigned index;
    uint64_t rng;
    job_t **jobs;
    size_t njobs, cap;
    unsigned closed_seen;
    uint64_t accepted, refused, waits;
} poster_t;

static struct {
    weft_runtime_t *rt;
    unsigned workers;
    weft_loop_t **loops;
    atomic_uint_fast64_t accepted; /* this runtime, all posters */
    atomic_uint next_id;
    atomic_int stage; /* for the watchdog: 0 done, 1 posting, 2 shutdown, 3 free */
    atomic_uint runtime_no;
} G;

static job_t *new_job(poster_t *p)
{
    if (p->njobs == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 256;
        job_t **nj = realloc(p->jobs, cap * sizeof *nj);
        if (nj == NULL)
            return NULL;
        p->jobs = nj;
        p->cap = cap;
    }
    job_t *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->magic = JOB_MAGIC;
    j->id = atomic_fetch_add_explicit(&G.next_id, 1, memory_order_relaxed);
    uint64_t r = rng_next(&p->rng);
    j->kind = (unsigned)(r % J_KINDS);
    switch (j->kind) {
    case J_YIELDY:
        j->count = 1 + (unsigned)((r >> 8) % 20);
        break;
    case J_STUBBORN:
        j->count = 1 + (unsigned)((r >> 8) % 50);
        break;
    case J_SLEEPER:
        j->count = (unsigned)((r >> 8) % 1000);
        break;
    default:
        break;
    }
    j->threadsafe = (r >> 32) % 2 == 0;
    atomic_init(&j->started, 0);
    atomic_init(&j->finished, 0);
    atomic_init(&j->child_started, 0);
    atomic_init(&j->child_finished, 0);
    p->jobs[p->njobs++] = j;
    return j;
}

static void *poster_main(void *arg)
{
    poster_t *p = arg;
    while (p->closed_seen < POST_AFTER_CLOSED) {
        job_t *j = new_job(p);
        if (j == NULL) {
            FAIL("out of memory");
            return NULL;
        }
        int rc;
        if (j->threadsafe) {
            weft_loop_t *loop = G.loops[rng_next(&p->rng) % G.workers];
            rc = weft_run_coroutine_threadsafe(loop, job_main, j, &j->f);
        } else {
            rc = weft_runtime_submit(G.rt, job_main, j, &j->f);
        }
        j->call_rc = rc;
        if (rc == 0) {
            EXPECT(p->closed_seen == 0, "poster %u: a call was accepted after WEFT_ECLOSED (%s)",
                   p->index, j->threadsafe ? "run_coroutine_threadsafe" : "submit");
            p->accepted++;
            atomic_fetch_add(&G.accepted, 1);
            if (rng_next(&p->rng) % WAIT_ONE_IN == 0) {
                /* Block on it for a while, maybe across the shutdown. */
                int wrc = weft_future_wait(j->f, 1 * MS);
                EXPECT(wrc == 0 || wrc == WEFT_ETIMEDOUT, "weft_future_wait: %s",
                       weft_err_name(wrc));
                p->waits++;
            }
        } else {
            j->f = NULL;
            EXPECT(rc == WEFT_ECLOSED, "poster %u: %s returned %s", p->index,
                   j->threadsafe ? "run_coroutine_threadsafe" : "submit", weft_err_name(rc));
            p->closed_seen++;
            p->refused++;
        }
    }
    return NULL;
}

/* ---- checking a runtime's jobs -------------------------------------------- */

typedef struct tally {
    uint64_t results, errors, cancelled, cancelled_unstarted, refused, lost, children;
    uint64_t abandoned_spawners;
} tally_t;

/* verbose: name every cancelled job (after a shutdown that should have
 * let every job finish but abandoned some). */
static void check_job(job_t *j, tally_t *t, bool verbose)
{
    EXPECT(j->magic == JOB_MAGIC, "job record corrupted (magic %#x)", j->magic);
    int started = atomic_load(&j->started), finished = atomic_load(&j->finished);
    int cstarted = atomic_load(&j->child_started);
    EXPECT(started <= 1 && finished <= started, "job %u (%s): started %d, finished %d", j->id,
           kind_name[j->kind], started, finished);
    EXPECT(cstarted <= 1, "job %u: child started %d times", j->id, cstarted);
    t->children += (uint64_t)cstarted;
    if (j->call_rc != 0) {
        EXPECT(started == 0, "job %u (%s) was refused (%s) but ran", j->id, kind_name[j->kind],
               weft_err_name(j->call_rc));
        t->refused++;
        return;
    }
    if (!weft_future_done(j->f)) {
        FAIL("job %u (%s, %s) was accepted but its future is still pending after shutdown "
             "(started %d, finished %d)",
             j->id, kind_name[j->kind], j->threadsafe ? "run_coroutine_threadsafe" : "submit",
             started, finished);
        t->lost++;
        return;
    }
    void *v = NULL;
    int rc = weft_future_result(j->f, &v);
    if (rc == 0) {
        EXPECT(started == 1 && finished == 1, "job %u (%s) has a result: started %d, finished %d",
               j->id, kind_name[j->kind], started, finished);
        EXPECT((uintptr_t)v == job_value(j), "job %u: result %#" PRIxPTR, j->id, (uintptr_t)v);
        t->results++;
    } else if (rc == WEFT_ECANCELED) {
        if (verbose)
            fprintf(stderr, "  cancelled: job %u (%s, %s), started %d, finished %d\n", j->id,
                    kind_name[j->kind], j->threadsafe ? "run_coroutine_threadsafe" : "submit",
                    started, finished);
        t->cancelled++;
        t->cancelled_unstarted += started == 0;
    } else if (rc == -EIO) {
        EXPECT(j->kind == J_FAILER, "job %u (%s) failed with EIO", j->id, kind_name[j->kind]);
        EXPECT(started == 1 && finished == 1, "job %u failed but started %d, finished %d", j->id,
               started, finished);
        t->errors++;
    } else {
        FAIL("job %u (%s): outcome %s", j->id, kind_name[j->kind], weft_err_name(rc));
    }
}

/* ---- log ------------------------------------------------------------------ */

/* Shutdowns that give up on tasks are expected to say so (abandoned tasks,
 * their sleep timers dropped at loop close): count the messages instead of
 * printing hundreds, but show the first few of each level. */
#define LOG_SHOW 2

static atomic_uint_fast64_t log_count[WEFT_LOG_ERROR + 1];

static void on_log(int level, const char *message, void *arg)
{
    (void)arg;
    if (level < 0 || level > WEFT_LOG_ERROR)
        level = WEFT_LOG_ERROR;
    if (atomic_fetch_add(&log_count[level], 1) < LOG_SHOW)
        fprintf(stderr, "weft log (level %d): %s\n", level, message);
}

/* ---- watchdog -------------------------------------------------------------- */

static atomic_bool finished_run;

static void *watchdog_main(void *arg)
{
    (void)arg;
    for (int tick = 0; tick < WATCHDOG_SECONDS * 10; tick++) {
        if (atomic_load(&finished_run))
            return NULL;
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    static const char *const stage[] = {"between runtimes", "posting", "shutdown", "joining/free"};
    fprintf(stderr,
            "stress_shutdown: WATCHDOG: no end after %d s; runtime %u, stage: %s, accepted %" PRIu64
            "\n",
            WATCHDOG_SECONDS, atomic_load(&G.runtime_no), stage[atomic_load(&G.stage) & 3],
            (uint64_t)atomic_load(&G.accepted));
    _exit(3);
}

/* ---- main -------------------------------------------------------------------- */

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    uint64_t workers = 4, iterations = 20000;
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if ((argc > 1 && !parse_u64(argv[1], &workers)) ||
        (argc > 2 && !parse_u64(argv[2], &iterations)) ||
        (argc > 3 && !parse_u64(argv[3], &seed)) || argc > 4 || workers < 1 || workers > 1024 ||
        iterations < 1 || iterations > 10000000) {
        fprintf(stderr, "usage: %s [workers 1..1024 [iterations [seed]]]\n", argv[0]);
        return 2;
    }
    printf("seed=%" PRIu64 "\n", seed);
    printf("workers=%" PRIu64 " iterations=%" PRIu64 "\n", workers, iterations);
    fflush(stdout);

    weft_set_log_handler(on_log, NULL);
    G.workers = (unsigned)workers;
    G.loops = calloc(G.workers, sizeof *G.loops);
    if (G.loops == NULL) {
        fprintf(stderr, "stress_shutdown: out of memory\n");
        return 1;
    }
    uint64_t rng = seed | 1;
    unsigned nruntimes = MIN_RUNTIMES + (unsigned)(iterations / ITERS_PER_RT);
    uint64_t accept_max = 2 * iterations * ACCEPT_PER_ITERATION / nruntimes;

    pthread_t dog;
    if (pthread_create(&dog, NULL, watchdog_main, NULL) != 0) {
        fprintf(stderr, "stress_shutdown: cannot start the watchdog\n");
        return 1;
    }
    tally_t total = {0};
    uint64_t timed_out = 0, kinds_started[J_KINDS] = {0};
    int64_t t0 = now_ns();
    for (unsigned r = 0; r < nruntimes; r++) {
        atomic_store(&G.runtime_no, r);
        atomic_store(&G.accepted, 0);
        weft_config_t cfg = {.workers = G.workers};
        int rc = weft_runtime_new(&cfg, &G.rt);
        if (rc != 0) {
            fprintf(stderr, "stress_shutdown: weft_runtime_new: %s\n", weft_strerror(rc));
            return 1;
        }
        for (unsigned i = 0; i < G.workers; i++)
            G.loops[i] = weft_runtime_loop(G.rt, i);

        /* The moment: after 0..accept_max accepted jobs (a quarter of the
         * runtimes right away, while the workers are still starting). */
        uint64_t shut_after = rng_next(&rng) % 4 == 0 ? 0 : rng_next(&rng) % (accept_max + 1);
        unsigned tsel = (unsigned)(rng_next(&rng) % 4);
        int64_t timeout = tsel < 2 ? -1 : tsel == 2 ? 0 : (int64_t)(1 + rng_next(&rng) % 4) * MS;
        bool release_after_free = rng_next(&rng) % 2 == 0;

        atomic_store(&G.stage, 1);
        poster_t posters[POSTERS];
        memset(posters, 0, sizeof posters);
        for (unsigned i = 0; i < POSTERS; i++) {
            posters[i].index = i;
            posters[i].rng = rng_next(&rng) | 1;
            if (pthread_create(&posters[i].tid, NULL, poster_main, &posters[i]) != 0) {
                fprintf(stderr, "stress_shutdown: cannot start poster %u\n", i);
                return 1;
            }
        }
        while (atomic_load(&G.accepted) < shut_after)
            sched_yield();

        atomic_store(&G.stage, 2);
        rc = weft_runtime_shutdown(G.rt, timeout);
        if (timeout < 0)
            EXPECT(rc == 0, "runtime %u: shutdown without a timeout: %s", r, weft_err_name(rc));
        else
            EXPECT(rc == 0 || rc == WEFT_ETIMEDOUT, "runtime %u: shutdown (%" PRId64 " ns): %s", r,
                   timeout, weft_err_name(rc));
        timed_out += rc == WEFT_ETIMEDOUT;
        /* Idempotent. */
        int rc2 = weft_runtime_shutdown(G.rt, -1);
        EXPECT(rc2 == 0, "runtime %u: second shutdown: %s", r, weft_err_name(rc2));

        atomic_store(&G.stage, 3);
        for (unsigned i = 0; i < POSTERS; i++)
            pthread_join(posters[i].tid, NULL);

        /* The workers are joined and the posters done: nothing can start
         * any more, so every count is final. */
        tally_t t = {0};
        for (unsigned i = 0; i < POSTERS; i++) {
            EXPECT(posters[i].closed_seen == POST_AFTER_CLOSED, "poster %u saw %u refusals", i,
                   posters[i].closed_seen);
            for (size_t k = 0; k < posters[i].njobs; k++) {
                job_t *j = posters[i].jobs[k];
                check_job(j, &t, timeout < 0 && rc != 0);
                if (atomic_load(&j->started))
                    kinds_started[j->kind]++;
                /* Left by a spawner that was abandoned in its await. */
                if (j->child != NULL) {
                    EXPECT(rc == WEFT_ETIMEDOUT, "job %u kept its child without being abandoned",
                           j->id);
                    weft_task_release(j->child);
                    j->child = NULL;
                    t.abandoned_spawners++;
                }
            }
        }
        if (!release_after_free) {
            for (unsigned i = 0; i < POSTERS; i++)
                for (size_t k = 0; k < posters[i].njobs; k++) {
                    weft_future_release(posters[i].jobs[k]->f);
                    posters[i].jobs[k]->f = NULL;
                }
        }
        weft_runtime_free(G.rt);
        G.rt = NULL;
        for (unsigned i = 0; i < POSTERS; i++) {
            for (size_t k = 0; k < posters[i].njobs; k++) {
                weft_future_release(posters[i].jobs[k]->f); /* NULL is ignored */
                free(posters[i].jobs[k]);
            }
            free(posters[i].jobs);
        }
        atomic_store(&G.stage, 0);

        printf("runtime %2u: shutdown after %5" PRIu64 " accepted, timeout %2" PRId64
               " ms -> %s; results %" PRIu64 ", errors %" PRIu64 ", cancelled %" PRIu64 " (%" PRIu64
               " never started), refused %" PRIu64 ", lost %" PRIu64 "\n",
               r, shut_after, timeout < 0 ? -1 : timeout / MS, weft_err_name(rc), t.results,
               t.errors, t.cancelled, t.cancelled_unstarted, t.refused, t.lost);
        fflush(stdout);
        total.results += t.results;
        total.errors += t.errors;
        total.cancelled += t.cancelled;
        total.cancelled_unstarted += t.cancelled_unstarted;
        total.refused += t.refused;
        total.lost += t.lost;
        total.children += t.children;
        total.abandoned_spawners += t.abandoned_spawners;
    }
    int64_t t1 = now_ns();
    atomic_store(&finished_run, true);
    pthread_join(dog, NULL);
    free(G.loops);

    printf("%u runtimes in %.1f ms: results %" PRIu64 ", errors %" PRIu64 ", cancelled %" PRIu64
           " (%" PRIu64 " never started), refused %" PRIu64 ", lost %" PRIu64 ", children %" PRIu64
           ", shutdowns timed out %" PRIu64 " (%" PRIu64 " spawners abandoned in an await)\n",
           nruntimes, (double)(t1 - t0) / 1e6, total.results, total.errors, total.cancelled,
           total.cancelled_unstarted, total.refused, total.lost, total.children, timed_out,
           total.abandoned_spawners);
    printf("log messages: %" PRIu64 " warnings, %" PRIu64 " errors\n",
           (uint64_t)atomic_load(&log_count[WEFT_LOG_WARN]),
           (uint64_t)atomic_load(&log_count[WEFT_LOG_ERROR]));
    printf("jobs started by kind:");
    for (unsigned k = 0; k < J_KINDS; k++)
        printf(" %s=%" PRIu64, kind_name[k], kinds_started[k]);
    printf("\n");

    int nf = atomic_load(&failures);
    if (nf != 0) {
        printf("FAILED: %d check(s)\n", nf);
        return 1;
    }
    printf("OK\n");
    return 0;
}
