/* stress_queue — many producers and consumers through bounded and
 * unbounded queues, with random cancellations and shutdowns.
 *
 * Usage: stress_queue [workers [iterations [seed]]]
 *        (defaults: 4 workers, 20000 iterations, a time-based seed)
 *
 * One runtime of `workers` workers.  Each round runs `workers` producer
 * tasks and `workers` consumer tasks on one queue, plus a plain-thread
 * producer (put_nowait, retrying while full) and a plain-thread consumer
 * (get_nowait, polling while empty).  Producers put iterations/2 payloads
 * each; every payload carries a magic value, its producer and sequence
 * number, and a consumed-once flag.  A plain "canceller" thread cancels
 * random tasks of the round all along and consumers cancel random peers;
 * a cancelled put is retried with the same payload, a cancelled get took
 * nothing.
 *
 *   rounds 1-3  FIFO, LIFO and PRIORITY, maxsize 1-8 (from the seed);
 *   round 4     FIFO unbounded;
 *   each ends with join (every payload task_done), then shutdown: the
 *   consumers leave on WEFT_EQSHUTDOWN.  Checks: every payload consumed
 *   exactly once; in FIFO rounds one consumer sees each producer's
 *   payloads in put order; the queue ends empty; one task_done more is
 *   -EINVAL.
 *   round 5     FIFO maxsize 4 shut down *immediately* while producers and
 *   consumers are busy: producers stop at WEFT_EQSHUTDOWN, consumers too;
 *   checks: no payload consumed twice, consumed + dropped == put (dropped
 *   = what was queued at the shutdown), join returns once the consumers
 *   marked what they took.
 *
 * Prints the seed first.  Exit status: 0 when every check held, 1 on a
 * failed check, 2 on bad arguments, 3 when the watchdog gave up on a hang.
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

#define PAYLOAD_MAGIC    0x0E0E5AFEu
#define MAX_TASKS        256
#define WATCHDOG_SECONDS 240

/* ---- failures, PRNG, time --------------------------------------------- */

static atomic_int failures;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        if (atomic_fetch_add(&failures, 1) < 20) {                                                 \
            fprintf(stderr, "stress_queue: FAILED at %s:%d: ", __FILE__, __LINE__);                \
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

/* ---- a round ------------------------------------------------------------ */

typedef struct payload {
    uint32_t magic;
    uint32_t producer; /* 0..workers-1 tasks, workers = the plain thread */
    uint32_t seq;
    uint32_t prio; /* random, for the priority round */
    atomic_int consumed;
} payload_t;

typedef struct targ {
    unsigned i; /* producers 0..workers-1, consumers workers..2*workers-1 */
    uint64_t rng;
} targ_t;

static struct {
    unsigned workers, tasks, per_producer;
    uint64_t seed;
    weft_runtime_t *rt;

    /* the current round */
    weft_queue_t *q;
    int kind;
    bool immediate;      /* round 5 */
    payload_t *payloads; /* (workers + 1) * per_producer */
    size_t npayloads;
    atomic_long put_ok, got, cancels, dropped;
    atomic_int producers_left;
    atomic_bool round_running, stop_plain;
    _Atomic(weft_task_t *) live[MAX_TASKS];
    weft_task_t *refs[MAX_TASKS];
    targ_t args[MAX_TASKS];
    /* last sequence number consumer c saw from producer p (FIFO check) */
    atomic_int *last_seq; /* [(workers + 1) * (workers + 1)] */
} g;

static void absorb_cancel(void)
{
    atomic_fetch_add_explicit(&g.cancels, 1, memory_order_relaxed);
    while (weft_task_uncancel(weft_current_task()) > 0) {
    }
}

static int cmp_prio(const void *a, const void *b)
{
    const payload_t *x = a, *y = b;
    return (x->prio > y->prio) - (x->prio < y->prio);
}

static void consume(payload_t *p, unsigned consumer)
{
    EXPECT(p != NULL && p->magic == PAYLOAD_MAGIC, "payload %p: bad magic", (void *)p);
    if (p == NULL || p->magic != PAYLOAD_MAGIC)
        return;
    EXPECT(atomic_exchange(&p->consumed, 1) == 0, "payload %u/%u consumed twice", p->producer,
           p->seq);
    if (g.kind == WEFT_QUEUE_FIFO) {
        atomic_int *last = &g.last_seq[p->producer * (g.workers + 1) + consumer];
        int prev = atomic_exchange(last, (int)p->seq);
        EXPECT(prev < (int)p->seq, "FIFO: consumer %u saw %u/%u after %u/%d", consumer, p->producer,
               p->seq, p->producer, prev);
    }
    atomic_fetch_add(&g.got, 1);
    int rc = weft_queue_task_done(g.q);
    EXPECT(rc == 0, "task_done: %s", weft_err_name(rc));
}

static int producer_task(targ_t *a)
{
    for (unsigned s = 0; s < g.per_producer;) {
        payload_t *p = &g.payloads[(size_t)a->i * g.per_producer + s];
        int rc = weft_queue_put(g.q, p);
        if (rc == WEFT_ECANCELED) {
            absorb_cancel();
            continue;
        }
        if (rc == WEFT_EQSHUTDOWN && g.immediate)
            break;
        EXPECT(rc == 0, "put: %s", weft_err_name(rc));
        atomic_fetch_add(&g.put_ok, 1);
        s++;
        if (rng_next(&a->rng) % 16 == 0 && weft_yield() == WEFT_ECANCELED)
            absorb_cancel();
    }
    atomic_fetch_sub(&g.producers_left, 1);
    return 0;
}

static int consumer_task(targ_t *a)
{
    unsigned me = a->i - g.workers;
    for (;;) {
        void *item = NULL;
        int rc = weft_queue_get(g.q, &item);
        if (rc == WEFT_EQSHUTDOWN)
            return 0;
        if (rc == WEFT_ECANCELED) {
            EXPECT(item == NULL, "cancelled get returned an item");
            absorb_cancel();
            continue;
        }
        EXPECT(rc == 0, "get: %s", weft_err_name(rc));
        consume(item, me);
        uint64_t r = rng_next(&a->rng);
        if (r % 16 == 0) {
            weft_task_t *v = atomic_load(&g.live[(r >> 20) % g.tasks]);
            if (v != NULL && v != weft_current_task())
                (void)weft_task_cancel(v, NULL);
        }
    }
}

static int round_task(void *arg, void **result)
{
    (void)result;
    targ_t *a = arg;
    /* Published once running: a task cancelled before its first step never
     * runs its body. */
    atomic_store(&g.live[a->i], weft_current_task());
    return a->i < g.workers ? producer_task(a) : consumer_task(a);
}

static int round_driver(void *arg, void **result)
{
    (void)arg;
    (void)result;
    for (unsigned i = 0; i < g.tasks; i++) {
        int rc = weft_spawn(round_task, &g.args[i], NULL, &g.refs[i]);
        if (rc != 0) {
            FAIL("spawn: %s", weft_err_name(rc));
            return rc;
        }
    }
    if (g.immediate) {
        /* Let them get going, then pull the plug. */
        while (atomic_load(&g.got) < (long)g.npayloads / 4)
            (void)weft_yield();
        /* What is queued now is what the shutdown drops (under the
         * queue's lock both happen at once only approximately, so count
         * afterwards: consumed + dropped == put, with dropped derived). */
        int rc = weft_queue_shutdown(g.q, true);
        EXPECT(rc == 0, "shutdown: %s", weft_err_name(rc));
    }
    for (unsigned i = 0; i < g.tasks; i++) {
        if (i == g.workers && !g.immediate) {
            /* Producers are done: wait for the plain producer, then for
             * every payload to be marked done, then shut down. */
            while (atomic_load(&g.producers_left) > 0)
                (void)weft_yield();
            int rc;
            while ((rc = weft_queue_join(g.q)) == WEFT_ECANCELED)
                absorb_cancel();
            EXPECT(rc == 0, "join: %s", weft_err_name(rc));
            EXPECT(weft_queue_qsize(g.q) == 0, "join returned with %zu queued",
                   weft_queue_qsize(g.q));
            rc = weft_queue_shutdown(g.q, false);
            EXPECT(rc == 0, "shutdown: %s", weft_err_name(rc));
        }
        int rc = weft_await(weft_task_future(g.refs[i]), NULL);
        EXPECT(rc == 0 || rc == WEFT_ECANCELED, "task %u ended with %s", i, weft_err_name(rc));
    }
    if (g.immediate) {
        int rc;
        while ((rc = weft_queue_join(g.q)) == WEFT_ECANCELED)
            absorb_cancel();
        EXPECT(rc == 0, "join after immediate shutdown: %s", weft_err_name(rc));
    }
    atomic_store(&g.round_running, false);
    for (unsigned i = 0; i < g.tasks; i++)
        atomic_store(&g.live[i], NULL);
    return 0;
}

static void *plain_producer(void *arg)
{
    (void)arg;
    for (unsigned s = 0; s < g.per_producer;) {
        payload_t *p = &g.payloads[(size_t)g.workers * g.per_producer + s];
        int rc = weft_queue_put_nowait(g.q, p);
        if (rc == WEFT_EQUEUEFULL) {
            sched_yield();
            continue;
        }
        if (rc == WEFT_EQSHUTDOWN && g.immediate)
            break;
        EXPECT(rc == 0, "put_nowait: %s", weft_err_name(rc));
        atomic_fetch_add(&g.put_ok, 1);
        s++;
    }
    atomic_fetch_sub(&g.producers_left, 1);
    return NULL;
}

static void *plain_consumer(void *arg)
{
    (void)arg;
    for (;;) {
        void *item = NULL;
        int rc = weft_queue_get_nowait(g.q, &item);
        if (rc == WEFT_EQSHUTDOWN)
            return NULL;
        if (rc == WEFT_EQUEUEEMPTY) {
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
            continue;
        }
        EXPECT(rc == 0, "get_nowait: %s", weft_err_name(rc));
        consume(item, g.workers);
    }
}

/* The canceller marks itself busy (seq_cst) before it loads a victim and
 * clears the mark after the cancel; once the round's tasks are
 * unpublished, seeing busy == 0 means no cancel of theirs is in flight,
 * so their references can go. */
static atomic_bool canceller_stop;
static atomic_int canceller_busy;

static void *canceller_main(void *arg)
{
    uint64_t rng = *(uint64_t *)arg;
    while (!atomic_load(&canceller_stop)) {
        atomic_store(&canceller_busy, 1);
        if (atomic_load(&g.round_running)) {
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

static void run_round(const char *name, int kind, size_t maxsize, bool immediate)
{
    int rc = weft_queue_new(kind, maxsize, kind == WEFT_QUEUE_PRIORITY ? cmp_prio : NULL, &g.q);
    if (rc != 0) {
        FAIL("%s: queue_new: %s", name, weft_err_name(rc));
        return;
    }
    g.kind = kind;
    g.immediate = immediate;
    uint64_t prng = g.seed ^ (uint64_t)kind * 977 ^ maxsize;
    for (size_t i = 0; i < g.npayloads; i++) {
        payload_t *p = &g.payloads[i];
        p->magic = PAYLOAD_MAGIC;
        p->producer = (uint32_t)(i / g.per_producer);
        p->seq = (uint32_t)(i % g.per_producer);
        p->prio = (uint32_t)(rng_next(&prng) % 1000);
        atomic_store(&p->consumed, 0);
    }
    for (size_t i = 0; i < (size_t)(g.workers + 1) * (g.workers + 1); i++)
        atomic_store(&g.last_seq[i], -1);
    atomic_store(&g.put_ok, 0);
    atomic_store(&g.got, 0);
    atomic_store(&g.producers_left, (int)g.workers + 1);
    for (unsigned i = 0; i < g.tasks; i++)
        g.args[i] = (targ_t){i, g.seed * 131 + i + (uint64_t)kind};
    atomic_store(&g.round_running, true);

    int64_t t0 = now_ns();
    pthread_t prod, cons;
    if (pthread_create(&prod, NULL, plain_producer, NULL) != 0 ||
        pthread_create(&cons, NULL, plain_consumer, NULL) != 0) {
        FAIL("%s: cannot start threads", name);
        exit(1);
    }
    weft_future_t *f = NULL;
    rc = weft_runtime_submit(g.rt, round_driver, NULL, &f);
    EXPECT(rc == 0, "%s: submit: %s", name, weft_err_name(rc));
    if (rc == 0) {
        rc = weft_future_wait(f, (int64_t)WATCHDOG_SECONDS * 1000000000);
        if (rc == 0)
            rc = weft_future_result(f, NULL);
        EXPECT(rc == 0, "%s: driver: %s", name, weft_err_name(rc));
        weft_future_release(f);
    }
    pthread_join(prod, NULL);
    pthread_join(cons, NULL);
    while (atomic_load(&canceller_busy))
        sched_yield();
    for (unsigned i = 0; i < g.tasks; i++) {
        weft_task_release(g.refs[i]);
        g.refs[i] = NULL;
    }

    long put = atomic_load(&g.put_ok), got = atomic_load(&g.got);
    long twice = 0, once = 0;
    for (size_t i = 0; i < g.npayloads; i++) {
        int c = atomic_load(&g.payloads[i].consumed);
        once += c == 1;
        twice += c > 1;
    }
    EXPECT(twice == 0, "%s: %ld payloads consumed more than once", name, twice);
    EXPECT(once == got, "%s: %ld consumed flags, %ld gets", name, once, got);
    EXPECT(weft_queue_qsize(g.q) == 0, "%s: %zu items left", name, weft_queue_qsize(g.q));
    EXPECT(weft_queue_task_done(g.q) == -EINVAL, "%s: task_done past the puts", name);
    if (!immediate) {
        EXPECT(put == (long)g.npayloads, "%s: put %ld of %zu", name, put, g.npayloads);
        EXPECT(got == (long)g.npayloads, "%s: got %ld of %zu", name, got, g.npayloads);
    } else {
        EXPECT(got <= put, "%s: got %ld > put %ld", name, got, put);
        atomic_fetch_add(&g.dropped, put - got);
    }
    weft_queue_free(g.q);
    g.q = NULL;
    printf("%-22s %.2fs put=%ld got=%ld\n", name, (double)(now_ns() - t0) / 1e9, put, got);
    fflush(stdout);
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    sleep(WATCHDOG_SECONDS);
    fprintf(stderr, "stress_queue: watchdog: no progress after %d s\n", WATCHDOG_SECONDS);
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
        iterations < 4 || iterations > 10000000) {
        fprintf(stderr, "usage: %s [workers (1-64) [iterations (>= 4) [seed]]]\n", argv[0]);
        return 2;
    }
    printf("seed=%llu\n", seed);
    fflush(stdout);

    g.workers = (unsigned)workers;
    g.tasks = 2 * g.workers;
    g.per_producer = (unsigned)iterations / 2;
    g.seed = seed;
    g.npayloads = (size_t)(g.workers + 1) * g.per_producer;
    g.payloads = calloc(g.npayloads, sizeof *g.payloads);
    g.last_seq = calloc((size_t)(g.workers + 1) * (g.workers + 1), sizeof *g.last_seq);
    if (g.payloads == NULL || g.last_seq == NULL) {
        fprintf(stderr, "stress_queue: out of memory\n");
        return 1;
    }
    uint64_t rng = seed;
    size_t maxsize = 1 + rng_next(&rng) % 8;

    weft_config_t cfg = {.workers = g.workers};
    int rc = weft_runtime_new(&cfg, &g.rt);
    if (rc != 0) {
        fprintf(stderr, "stress_queue: runtime: %s\n", weft_err_name(rc));
        return 1;
    }
    printf("workers=%u tasks=%u payloads/round=%zu maxsize=%zu\n", g.workers, g.tasks, g.npayloads,
           maxsize);

    pthread_t watchdog, canceller;
    uint64_t crng = seed ^ UINT64_C(0xCA5CADE);
    if (pthread_create(&watchdog, NULL, watchdog_main, NULL) != 0 ||
        pthread_create(&canceller, NULL, canceller_main, &crng) != 0) {
        fprintf(stderr, "stress_queue: cannot start threads\n");
        return 1;
    }
    int64_t t0 = now_ns();
    run_round("fifo", WEFT_QUEUE_FIFO, maxsize, false);
    run_round("lifo", WEFT_QUEUE_LIFO, maxsize, false);
    run_round("priority", WEFT_QUEUE_PRIORITY, maxsize, false);
    run_round("fifo unbounded", WEFT_QUEUE_FIFO, 0, false);
    run_round("fifo shutdown(immediate)", WEFT_QUEUE_FIFO, 4, true);
    atomic_store(&canceller_stop, true);
    pthread_join(canceller, NULL);

    rc = weft_runtime_shutdown(g.rt, (int64_t)30 * 1000000000);
    EXPECT(rc == 0, "runtime shutdown: %s", weft_err_name(rc));
    weft_runtime_free(g.rt);
    free(g.payloads);
    free(g.last_seq);

    int n = atomic_load(&failures);
    printf("elapsed=%.2fs cancellations=%ld dropped_at_shutdown=%ld\n",
           (double)(now_ns() - t0) / 1e9, atomic_load(&g.cancels), atomic_load(&g.dropped));
    if (n != 0) {
        fprintf(stderr, "stress_queue: %d check(s) failed (seed=%llu)\n", n, seed);
        return 1;
    }
    printf("stress_queue: OK\n");
    return 0;
}
