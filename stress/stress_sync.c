/* stress_sync — the sync primitives under parallel tasks and random
 * cancellations.
 *
 * Usage: stress_sync [workers [iterations [seed]]]
 *        (defaults: 4 workers, 20000 iterations, a time-based seed)
 *
 * One runtime of `workers` workers runs 2 * workers tasks per phase.  A
 * plain "canceller" thread cancels random running tasks of the phase all
 * along, and the tasks cancel each other at random too; a task whose call
 * returns WEFT_ECANCELED withdraws the request (weft_task_uncancel) and
 * retries, so the work still adds up.
 *
 *   lock      each task does `iterations` acquire/increment/release of a
 *             plain counter, sometimes yielding while it holds the lock;
 *             checks: counter == successes, never two inside, the lock
 *             ends free with nobody queued.
 *   sem       a bounded semaphore with 1-4 permits (from the seed), each
 *             task iterations/2 acquire/release; checks: occupancy never
 *             above the permits (atomic high-water mark), every permit
 *             back at the end, one release more is -EINVAL.
 *   cond      a bounded buffer (8 slots) on two Conditions sharing one
 *             Lock (not_full, not_empty): half the tasks produce payloads
 *             (magic value, consumed-once flag), half consume, with
 *             wait_for and notify(1) / notify_all picked at random; a
 *             cancelled wait_for still holds the lock; checks: every
 *             payload consumed exactly once (a lost notification hangs the
 *             run and the watchdog fails it), the lock ends free.
 *   event     iterations/40 rounds: every task waits on the round's
 *             event, which one of them sets after a few yields; a
 *             cancelled wait is retried; checks: every wait returns 0 only
 *             once the event is set.
 *   barrier   iterations/40 rounds of a barrier of all the tasks (no
 *             cancellations here: asyncio's indices repeat after one);
 *             checks: each index handed out once per round, nobody leaves
 *             before everybody arrived.
 *
 * Prints the seed first.  Exit status: 0 when every check held, 1 on a
 * failed check, 2 on bad arguments, 3 when the watchdog gave up on a hang.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "weft.h"

#define US INT64_C(1000)

#define PAYLOAD_MAGIC 0x5EC0DE11u
#define BUF_SLOTS     8
#define MAX_TASKS     256
/* Watchdog: no phase of a healthy run takes this long, even under TSan. */
#define WATCHDOG_SECONDS 240

/* ---- failures, PRNG, time --------------------------------------------- */

static atomic_int failures;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        if (atomic_fetch_add(&failures, 1) < 20) {                                                 \
            fprintf(stderr, "stress_sync: FAILED at %s:%d: ", __FILE__, __LINE__);                 \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            FAIL(__VA_ARGS__);                                                                     \
    } while (0)

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- shared state -------------------------------------------------------- */

typedef struct payload {
    uint32_t magic;
    atomic_int consumed;
} payload_t;

static struct {
    unsigned workers, tasks, iterations;
    uint64_t seed;
    weft_runtime_t *rt;

    /* the running phase's tasks, published by each once it runs (a task
     * cancelled before its first step would never run its body) */
    _Atomic(weft_task_t *) live[MAX_TASKS];
    atomic_bool phase_running;
    atomic_long cancels;

    /* lock */
    weft_lock_t *lock;
    long counter; /* plain: the lock protects it */
    atomic_long lock_ok;
    atomic_int inside, high;

    /* sem */
    weft_sem_t *sem;
    int permits;

    /* cond: a bounded buffer, two conditions over one lock */
    weft_lock_t *buf_lock;
    weft_cond_t *not_full, *not_empty;
    payload_t *buf[BUF_SLOTS]; /* ring, under the condition's lock */
    unsigned buf_head, buf_count;
    bool producers_done; /* under the condition's lock */
    atomic_int producers_left;
    payload_t *payloads;
    size_t npayloads;
    atomic_long consumed;

    /* event */
    weft_event_t **events;
    unsigned event_rounds;
    atomic_int event_passed_early;

    /* barrier */
    weft_barrier_t *barrier;
    unsigned barrier_rounds;
    atomic_int *bar_seen;    /* [round * tasks + index] */
    atomic_int *bar_arrived; /* [round] */
} g;

/* Withdraw every request on the current task (the retry loops' reaction
 * to WEFT_ECANCELED). */
static void absorb_cancel(void)
{
    atomic_fetch_add_explicit(&g.cancels, 1, memory_order_relaxed);
    while (weft_task_uncancel(weft_current_task()) > 0) {
    }
}

static void maybe_cancel_peer(uint64_t *rng, unsigned one_in)
{
    uint64_t r = rng_next(rng);
    if (r % one_in != 0)
        return;
    weft_task_t *v = atomic_load(&g.live[(r >> 20) % g.tasks]);
    if (v != NULL && v != weft_current_task())
        (void)weft_task_cancel(v, NULL);
}

/* ---- phases --------------------------------------------------------------- */

typedef struct targ {
    unsigned i;
    uint64_t rng;
} targ_t;

static int lock_task(void *arg, void **result)
{
    (void)result;
    targ_t *a = arg;
    unsigned n = g.iterations;
    for (unsigned k = 0; k < n;) {
        int rc = weft_lock_acquire(g.lock);
        if (rc == WEFT_ECANCELED) {
            absorb_cancel();
            continue;
        }
        EXPECT(rc == 0, "lock acquire: %s", weft_err_name(rc));
        int in = atomic_fetch_add(&g.inside, 1) + 1;
        EXPECT(in == 1, "%d tasks inside the lock", in);
        g.counter++;
        if (rng_next(&a->rng) % 8 == 0 && weft_yield() == WEFT_ECANCELED)
            absorb_cancel(); /* still holding the lock */
        atomic_fetch_sub(&g.inside, 1);
        atomic_fetch_add_explicit(&g.lock_ok, 1, memory_order_relaxed);
        rc = weft_lock_release(g.lock);
        EXPECT(rc == 0, "lock release: %s", weft_err_name(rc));
        maybe_cancel_peer(&a->rng, 64);
        k++;
    }
    return 0;
}

static int sem_task(void *arg, void **result)
{
    (void)result;
    targ_t *a = arg;
    unsigned n = g.iterations / 2;
    for (unsigned k = 0; k < n;) {
        int rc = weft_sem_acquire(g.sem);
        if (rc == WEFT_ECANCELED) {
            absorb_cancel();
            continue;
        }
        EXPECT(rc == 0, "sem acquire: %s", weft_err_name(rc));
        int in = atomic_fetch_add(&g.inside, 1) + 1;
        int hi = atomic_load(&g.high);
        while (in > hi && !atomic_compare_exchange_weak(&g.high, &hi, in)) {
        }
        EXPECT(in <= g.permits, "%d tasks inside a %d-permit semaphore", in, g.permits);
        if (rng_next(&a->rng) % 4 == 0 && weft_yield() == WEFT_ECANCELED)
            absorb_cancel();
        atomic_fetch_sub(&g.inside, 1);
        rc = weft_sem_release(g.sem);
        EXPECT(rc == 0, "sem release: %s", weft_err_name(rc));
        maybe_cancel_peer(&a->rng, 64);
        k++;
    }
    return 0;
}

static bool buf_has_room(void *arg)
{
    (void)arg;
    return g.buf_count < BUF_SLOTS;
}

static bool buf_has_item_or_done(void *arg)
{
    (void)arg;
    return g.buf_count > 0 || g.producers_done;
}

/* wait_for that absorbs cancellations: it returns with the lock held in
 * every case, so just wait again. */
static void cond_wait_for(weft_cond_t *c, bool (*pred)(void *))
{
    for (;;) {
        int rc = weft_cond_wait_for(c, pred, NULL);
        if (rc == 0)
            return;
        EXPECT(rc == WEFT_ECANCELED, "wait_for: %s", weft_err_name(rc));
        EXPECT(weft_lock_locked(g.buf_lock), "wait_for returned without the lock");
        absorb_cancel();
    }
}

static void buf_acquire(void)
{
    int rc;
    while ((rc = weft_lock_acquire(g.buf_lock)) == WEFT_ECANCELED)
        absorb_cancel();
    EXPECT(rc == 0, "buffer lock: %s", weft_err_name(rc));
}

static void buf_release(void)
{
    int rc = weft_lock_release(g.buf_lock);
    EXPECT(rc == 0, "buffer unlock: %s", weft_err_name(rc));
}

static void cond_wake(weft_cond_t *c, uint64_t *rng)
{
    int rc = rng_next(rng) % 4 == 0 ? weft_cond_notify_all(c) : weft_cond_notify(c, 1);
    EXPECT(rc >= 0, "notify: %s", weft_err_name(rc));
}

static int producer_task(void *arg, void **result)
{
    (void)result;
    targ_t *a = arg;
    unsigned producers = g.tasks / 2;
    for (size_t k = a->i; k < g.npayloads; k += producers) {
        buf_acquire();
        cond_wait_for(g.not_full, buf_has_room);
        g.buf[(g.buf_head + g.buf_count) % BUF_SLOTS] = &g.payloads[k];
        g.buf_count++;
        cond_wake(g.not_empty, &a->rng);
        buf_release();
        maybe_cancel_peer(&a->rng, 32);
    }
    if (atomic_fetch_sub(&g.producers_left, 1) == 1) {
        /* The last producer tells the consumers to drain and leave. */
        buf_acquire();
        g.producers_done = true;
        EXPECT(weft_cond_notify_all(g.not_empty) >= 0, "notify_all");
        buf_release();
    }
    return 0;
}

static int consumer_task(void *arg, void **result)
{
    (void)result;
    targ_t *a = arg;
    for (;;) {
        buf_acquire();
        cond_wait_for(g.not_empty, buf_has_item_or_done);
        if (g.buf_count == 0) {
            buf_release();
            return 0; /* producers done and the buffer drained */
        }
        payload_t *p = g.buf[g.buf_head];
        g.buf_head = (g.buf_head + 1) % BUF_SLOTS;
        g.buf_count--;
        cond_wake(g.not_full, &a->rng);
        buf_release();
        EXPECT(p->magic == PAYLOAD_MAGIC, "payload %p: bad magic %#x", (void *)p, p->magic);
        EXPECT(atomic_exchange(&p->consumed, 1) == 0, "payload %p consumed twice", (void *)p);
        atomic_fetch_add(&g.consumed, 1);
        maybe_cancel_peer(&a->rng, 32);
    }
}

static int cond_task(void *arg, void **result)
{
    targ_t *a = arg;
    return a->i < g.tasks / 2 ? producer_task(arg, result) : consumer_task(arg, result);
}

static int event_task(void *arg, void **result)
{
    (void)result;
    targ_t *a = arg;
    for (unsigned r = 0; r < g.event_rounds; r++) {
        if (r % g.tasks == a->i) {
            /* This round's setter lets the others queue up first. */
            for (uint64_t k = rng_next(&a->rng) % 4; k > 0; k--)
                if (weft_yield() == WEFT_ECANCELED)
                    absorb_cancel();
            int rc = weft_event_set(g.events[r]);
            EXPECT(rc == 0, "event set: %s", weft_err_name(rc));
        }
        int rc;
        while ((rc = weft_event_wait(g.events[r])) == WEFT_ECANCELED)
            absorb_cancel();
        EXPECT(rc == 0, "event wait: %s", weft_err_name(rc));
        /* Never cleared: a wait that returned 0 must see it set. */
        if (!weft_event_is_set(g.events[r]))
            atomic_fetch_add(&g.event_passed_early, 1);
        maybe_cancel_peer(&a->rng, 8);
    }
    return 0;
}

static int barrier_task(void *arg, void **result)
{
    (void)result;
    targ_t *a = arg;
    for (unsigned r = 0; r < g.barrier_rounds; r++) {
        atomic_fetch_add(&g.bar_arrived[r], 1);
        unsigned idx = g.tasks;
        int rc = weft_barrier_wait(g.barrier, &idx);
        EXPECT(rc == 0, "barrier wait: %s", weft_err_name(rc));
        EXPECT(idx < g.tasks, "barrier index %u", idx);
        if (rc == 0 && idx < g.tasks)
            atomic_fetch_add(&g.bar_seen[(size_t)r * g.tasks + idx], 1);
        int arrived = atomic_load(&g.bar_arrived[r]);
        EXPECT(arrived == (int)g.tasks, "left round %u with %d of %u arrived", r, arrived, g.tasks);
        if (rng_next(&a->rng) % 4 == 0)
            (void)weft_yield();
    }
    return 0;
}

/* Run fn in g.tasks tasks, with the canceller active when `cancels`. */
typedef struct phase {
    weft_fn fn;
    targ_t args[MAX_TASKS];
} phase_t;

static weft_task_t *g_refs[MAX_TASKS]; /* the driver's, released by run_phase */

static int phase_driver(void *arg, void **result)
{
    (void)result;
    phase_t *ph = arg;
    for (unsigned i = 0; i < g.tasks; i++) {
        int rc = weft_spawn(ph->fn, &ph->args[i], NULL, &g_refs[i]);
        if (rc != 0) {
            FAIL("spawn: %s", weft_err_name(rc));
            return rc;
        }
    }
    for (unsigned i = 0; i < g.tasks; i++) {
        /* A request that arrived after a task's last suspension ends it
         * cancelled; its work is in the counters. */
        int rc = weft_await(weft_task_future(g_refs[i]), NULL);
        EXPECT(rc == 0 || rc == WEFT_ECANCELED, "task %u ended with %s", i, weft_err_name(rc));
    }
    /* Unpublish; run_phase drops the references once the canceller cannot
     * be inside a cancel of one of them any more. */
    atomic_store(&g.phase_running, false);
    for (unsigned i = 0; i < g.tasks; i++)
        atomic_store(&g.live[i], NULL);
    return 0;
}

/* Tasks publish themselves, then run the phase's body. */
static weft_fn g_body;

static int phase_task(void *arg, void **result)
{
    targ_t *a = arg;
    atomic_store(&g.live[a->i], weft_current_task());
    return g_body(arg, result);
}

/* The canceller marks itself busy (seq_cst) before it loads a victim from
 * g.live and clears the mark after the cancel.  Once the phase's tasks are
 * unpublished, a look at busy == 0 means any later load finds NULL (the
 * loads come after that look in the seq_cst order), so the references can
 * go. */
static atomic_bool canceller_stop;
static atomic_int canceller_busy;

static void *canceller_main(void *arg)
{
    uint64_t rng = *(uint64_t *)arg;
    while (!atomic_load(&canceller_stop)) {
        atomic_store(&canceller_busy, 1);
        if (atomic_load(&g.phase_running)) {
            weft_task_t *v = atomic_load(&g.live[rng_next(&rng) % g.tasks]);
            if (v != NULL)
                (void)weft_task_cancel(v, NULL);
        }
        atomic_store(&canceller_busy, 0);
        struct timespec ts = {0, 20000 + (long)(rng_next(&rng) % 40000)};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void run_phase(const char *name, weft_fn body)
{
    static phase_t ph;
    g_body = body;
    ph.fn = phase_task;
    for (unsigned i = 0; i < g.tasks; i++)
        ph.args[i] = (targ_t){i, g.seed * 31 + i + 1};
    atomic_store(&g.phase_running, true);
    int64_t t0 = now_ns();
    weft_future_t *f = NULL;
    int rc = weft_runtime_submit(g.rt, phase_driver, &ph, &f);
    if (rc != 0) {
        FAIL("%s: submit: %s", name, weft_err_name(rc));
        return;
    }
    rc = weft_future_wait(f, (int64_t)WATCHDOG_SECONDS * 1000000000);
    if (rc == 0)
        rc = weft_future_result(f, NULL);
    EXPECT(rc == 0, "%s: driver: %s", name, weft_err_name(rc));
    weft_future_release(f);
    while (atomic_load(&canceller_busy))
        sched_yield();
    for (unsigned i = 0; i < g.tasks; i++) {
        weft_task_release(g_refs[i]);
        g_refs[i] = NULL;
    }
    printf("%-8s %.2fs\n", name, (double)(now_ns() - t0) / 1e9);
    fflush(stdout);
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    sleep(WATCHDOG_SECONDS);
    fprintf(stderr, "stress_sync: watchdog: no progress after %d s\n", WATCHDOG_SECONDS);
    _exit(3);
}

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

int main(int argc, char **argv)
{
    unsigned long long workers = 4, iterations = 20000, seed = (unsigned long long)now_ns();
    if ((argc > 1 && !parse_uint(argv[1], &workers)) ||
        (argc > 2 && !parse_uint(argv[2], &iterations)) ||
        (argc > 3 && !parse_uint(argv[3], &seed)) || argc > 4 || workers == 0 || workers > 64 ||
        iterations < 100 || iterations > 10000000) {
        fprintf(stderr, "usage: %s [workers (1-64) [iterations (>= 100) [seed]]]\n", argv[0]);
        return 2;
    }
    printf("seed=%llu\n", seed);
    fflush(stdout);

    g.workers = (unsigned)workers;
    g.tasks = 2 * g.workers;
    g.iterations = (unsigned)iterations;
    g.seed = seed;
    uint64_t rng = seed;
    g.permits = 1 + (int)(rng_next(&rng) % 4);
    g.npayloads = (size_t)g.iterations * g.workers / 2;
    g.event_rounds = g.iterations / 40;
    g.barrier_rounds = g.iterations / 40;
    atomic_init(&g.producers_left, (int)(g.tasks / 2));

    g.payloads = calloc(g.npayloads, sizeof *g.payloads);
    g.events = calloc(g.event_rounds, sizeof *g.events);
    g.bar_seen = calloc((size_t)g.barrier_rounds * g.tasks, sizeof *g.bar_seen);
    g.bar_arrived = calloc(g.barrier_rounds, sizeof *g.bar_arrived);
    if (g.payloads == NULL || g.events == NULL || g.bar_seen == NULL || g.bar_arrived == NULL) {
        fprintf(stderr, "stress_sync: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < g.npayloads; i++)
        g.payloads[i].magic = PAYLOAD_MAGIC;

    weft_config_t cfg = {.workers = g.workers};
    int rc;
    if ((rc = weft_runtime_new(&cfg, &g.rt)) != 0 || (rc = weft_lock_new(&g.lock)) != 0 ||
        (rc = weft_sem_new(g.permits, true, &g.sem)) != 0 ||
        (rc = weft_lock_new(&g.buf_lock)) != 0 ||
        (rc = weft_cond_new(g.buf_lock, &g.not_full)) != 0 ||
        (rc = weft_cond_new(g.buf_lock, &g.not_empty)) != 0 ||
        (rc = weft_barrier_new(g.tasks, &g.barrier)) != 0) {
        fprintf(stderr, "stress_sync: setup: %s\n", weft_err_name(rc));
        return 1;
    }
    for (unsigned r = 0; r < g.event_rounds; r++)
        if ((rc = weft_event_new(&g.events[r])) != 0) {
            fprintf(stderr, "stress_sync: setup: %s\n", weft_err_name(rc));
            return 1;
        }
    printf("workers=%u tasks=%u iterations=%u permits=%d\n", g.workers, g.tasks, g.iterations,
           g.permits);

    pthread_t watchdog, canceller;
    uint64_t crng = seed ^ UINT64_C(0xC0FFEE);
    if (pthread_create(&watchdog, NULL, watchdog_main, NULL) != 0 ||
        pthread_create(&canceller, NULL, canceller_main, &crng) != 0) {
        fprintf(stderr, "stress_sync: cannot start threads\n");
        return 1;
    }
    int64_t t0 = now_ns();

    run_phase("lock", lock_task);
    EXPECT(g.counter == atomic_load(&g.lock_ok), "lock: counter %ld, successes %ld", g.counter,
           atomic_load(&g.lock_ok));
    EXPECT(g.counter == (long)g.tasks * g.iterations, "lock: counter %ld", g.counter);
    EXPECT(!weft_lock_locked(g.lock), "lock: still locked");

    atomic_store(&g.high, 0);
    run_phase("sem", sem_task);
    EXPECT(atomic_load(&g.high) <= g.permits, "sem: high-water %d > %d", atomic_load(&g.high),
           g.permits);
    EXPECT(weft_sem_value(g.sem) == g.permits, "sem: value %d, permits %d", weft_sem_value(g.sem),
           g.permits);
    EXPECT(weft_sem_release(g.sem) == -EINVAL, "sem: released past the bound");
    EXPECT(!weft_sem_locked(g.sem), "sem: locked at rest");

    /* cond: producers first finish, then the consumers are told. */
    run_phase("cond", cond_task);
    EXPECT(atomic_load(&g.consumed) == (long)g.npayloads, "cond: consumed %ld of %zu",
           atomic_load(&g.consumed), g.npayloads);
    for (size_t i = 0; i < g.npayloads; i++)
        EXPECT(atomic_load(&g.payloads[i].consumed) == 1, "cond: payload %zu consumed %d times", i,
               atomic_load(&g.payloads[i].consumed));
    EXPECT(!weft_lock_locked(g.buf_lock), "cond: lock still held");

    run_phase("event", event_task);
    EXPECT(atomic_load(&g.event_passed_early) == 0, "event: %d waits passed an unset event",
           atomic_load(&g.event_passed_early));

    /* No cancellations at the barrier (see the top of the file). */
    atomic_store(&canceller_stop, true);
    pthread_join(canceller, NULL);
    run_phase("barrier", barrier_task);
    for (unsigned r = 0; r < g.barrier_rounds; r++)
        for (unsigned i = 0; i < g.tasks; i++)
            EXPECT(atomic_load(&g.bar_seen[(size_t)r * g.tasks + i]) == 1,
                   "barrier: round %u index %u seen %d times", r, i,
                   atomic_load(&g.bar_seen[(size_t)r * g.tasks + i]));

    rc = weft_runtime_shutdown(g.rt, (int64_t)30 * 1000000000);
    EXPECT(rc == 0, "runtime shutdown: %s", weft_err_name(rc));
    weft_runtime_free(g.rt);
    weft_lock_free(g.lock);
    weft_sem_free(g.sem);
    weft_cond_free(g.not_full);
    weft_cond_free(g.not_empty);
    weft_lock_free(g.buf_lock);
    weft_barrier_free(g.barrier);
    for (unsigned r = 0; r < g.event_rounds; r++)
        weft_event_free(g.events[r]);
    free(g.events);
    free(g.payloads);
    free(g.bar_seen);
    free(g.bar_arrived);

    int n = atomic_load(&failures);
    printf("elapsed=%.2fs cancellations=%ld\n", (double)(now_ns() - t0) / 1e9,
           atomic_load(&g.cancels));
    if (n != 0) {
        fprintf(stderr, "stress_sync: %d check(s) failed (seed=%llu)\n", n, seed);
        return 1;
    }
    printf("stress_sync: OK\n");
    return 0;
}
