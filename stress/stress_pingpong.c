/* stress_pingpong — pairs handing a token back and forth across workers.
 *
 * Usage: stress_pingpong [workers [iterations [seed]]]
 *        (defaults: 4 workers, 20000 iterations, a time-based seed)
 *
 * One runtime with `workers` workers runs 2 x workers pairs at once, each
 * started by a root task submitted from the main thread.  A pair passes a
 * token HOPS times; hop k carries sequence number k, sides alternate (side
 * 0 sends the even numbers).  Four ways to pass it, one per pair in turn:
 *   FUTURE    two unpinned tasks.  The receiver makes a fresh future and
 *             sends it along with each token; the sender completes it with
 *             a message (magic, pair, sequence, the future for the reply).
 *             Both tasks may run, and be woken, on any worker.
 *   PINNED    the same, with the two tasks pinned to two different loops,
 *             so every wake crosses to the other worker through its inbox.
 *   CARRIER   as FUTURE, but each message travels inside a freshly
 *             spawned task: the box future carries the carrier task's
 *             future, which the receiver awaits (weft_await on a task).
 *   CALLBACK  no tasks: a callback on one worker's loop posts the next hop
 *             to the other worker's loop with weft_loop_call_soon_threadsafe;
 *             the last hop completes a future the root awaits.
 * Each receipt is checked three ways: the sequence number is the one after
 * the last this side saw plus two (never skipped or repeated), a shared
 * per-pair counter of deliveries equals the sequence number, and the
 * pair's holder word, exchanged to the receiver, names the other side (the
 * token never arrives twice in a row at one side).  Each side returns how
 * many tokens it received; the root checks those add up to HOPS.
 *
 * Exit status: 0 when every check held, 1 on a failed check, 2 on bad
 * arguments, 3 when the watchdog gave up on a hung run.
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
#include <time.h>
#include <unistd.h>

#include "weft.h"

#define PAIR_MAGIC 0x9A12C0DEu
#define MSG_MAGIC  0x7043A6E1u
#define MSG_STALE  0x57A1E000u /* written over a message once received */

/* Hops per iteration, over all pairs: 8 x 20000 = 160000 at the CI size,
 * about 8 s under TSan with 8 workers on 2 cores. */
#define HOPS_PER_ITERATION 8
/* About one hop in SLEEP_ONE_IN sleeps briefly before answering (a timer
 * wake instead of a direct one). */
#define SLEEP_ONE_IN 64
#define SLEEP_NS     20000
/* Watchdog: a healthy run takes seconds, even under TSan on 2 cores. */
#define WATCHDOG_SECONDS 300

enum { M_FUTURE, M_PINNED, M_CARRIER, M_CALLBACK, M_COUNT };
static const char *const mode_name[M_COUNT] = {"future", "pinned", "carrier", "callback"};

/* ---- failures ------------------------------------------------------------ */

static atomic_int failures;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        if (atomic_fetch_add(&failures, 1) < 20) {                                                 \
            flockfile(stderr);                                                                     \
            fprintf(stderr, "stress_pingpong: FAILED at %s:%d: ", __FILE__, __LINE__);             \
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

/* xorshift64*: one stream per side or pair. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

/* ---- pairs ------------------------------------------------------------------ */

struct pair;

typedef struct msg {
    uint32_t magic;
    uint32_t pair;
    uint64_t seq;
    /* Where the receiver answers: a future its sender made, holding one
     * reference for the answerer.  NULL on the last hop. */
    weft_future_t *reply;
} msg_t;

typedef struct side {
    struct pair *pair;
    unsigned who; /* 0 or 1 */
    uint64_t rng;
    /* The message this side sends.  One buffer is enough: it is written
     * again only after the peer answered, which it does after reading. */
    msg_t out;
    uint64_t received;
} side_t;

typedef struct pair {
    uint32_t magic;
    unsigned index;
    unsigned mode;
    uint64_t hops;
    weft_loop_t *loop[2];           /* PINNED, CALLBACK: the two workers' loops */
    atomic_uint_fast64_t delivered; /* tokens received so far, both sides */
    atomic_int holder;              /* side that received last; -1 at start */
    weft_future_t *first;           /* side 1's first box (made by the root) */
    side_t side[2];
    /* CALLBACK */
    uint64_t cb_seq;     /* next hop's number: written by one callback
                          * before it posts the next, which reads it */
    uint64_t cb_got[2];  /* tokens each loop received */
    uint64_t cb_last[2]; /* the last token each loop received */
    weft_future_t *done; /* completed by the last hop */
    weft_future_t *f;    /* the root task's future (main thread) */
} pair_t;

static struct {
    weft_runtime_t *rt;
    unsigned workers;
    pair_t *pairs;
    unsigned npairs;
    atomic_uint_fast64_t total_delivered; /* for the watchdog */
    atomic_bool finished_run;
} G;

/* A token arrived at side `who` of p with sequence seq; `last` is the
 * previous one this side saw (UINT64_MAX for none) and `first` the one it
 * must see first. */
static void check_receipt(pair_t *p, unsigned who, uint64_t seq, uint64_t last, uint64_t first)
{
    uint64_t want = last == UINT64_MAX ? first : last + 2;
    EXPECT(seq == want, "pair %u (%s) side %u: got token %" PRIu64 ", expected %" PRIu64, p->index,
           mode_name[p->mode], who, seq, want);
    uint64_t n = atomic_fetch_add(&p->delivered, 1);
    EXPECT(n == seq, "pair %u (%s): token %" PRIu64 " arrived as delivery %" PRIu64, p->index,
           mode_name[p->mode], seq, n);
    int prev = atomic_exchange(&p->holder, (int)who);
    EXPECT(prev == (seq == 0 ? -1 : (int)(1 - who)),
           "pair %u (%s) side %u: token %" PRIu64 " arrived but side %d had it last", p->index,
           mode_name[p->mode], who, seq, prev);
    atomic_fetch_add_explicit(&G.total_delivered, 1, memory_order_relaxed);
}

/* ---- FUTURE, PINNED and CARRIER: two tasks ------------------------------ */

static int carrier_main(void *arg, void **result)
{
    msg_t *m = arg;
    EXPECT(m->magic == MSG_MAGIC, "carrier got a bad message (magic %#x)", m->magic);
    /* Let the receiver start waiting on the carrier first, sometimes. */
    if (m->seq % 2 == 0) {
        int rc = weft_yield();
        EXPECT(rc == 0, "carrier: weft_yield: %s", weft_err_name(rc));
    }
    *result = m;
    return 0;
}

/* Send token `seq` into box (one reference, ours to drop), asking for the
 * answer in a new future unless it is the last hop.  Returns the future to
 * await next (one reference), NULL after the last hop or on failure. */
static weft_future_t *send_token(side_t *me, weft_future_t *box, uint64_t seq)
{
    pair_t *p = me->pair;
    weft_future_t *reply = NULL;
    if (seq + 1 < p->hops) {
        int rc = weft_future_new(NULL, &reply);
        if (rc != 0) {
            FAIL("weft_future_new in a task: %s", weft_err_name(rc));
            weft_future_release(box);
            return NULL;
        }
        weft_future_retain(reply); /* the answerer's, for completing it */
    }
    me->out.magic = MSG_MAGIC;
    me->out.pair = p->index;
    me->out.seq = seq;
    me->out.reply = reply;

    void *payload = &me->out;
    if (p->mode == M_CARRIER) {
        weft_task_t *t = NULL;
        int rc = weft_spawn(carrier_main, &me->out, NULL, &t);
        if (rc != 0) {
            FAIL("weft_spawn (carrier): %s", weft_err_name(rc));
            payload = NULL;
        } else {
            /* The task reference goes to the receiver with the box. */
            payload = weft_task_future(t);
        }
    }
    int rc;
    if (payload != NULL) {
        rc = weft_future_set_result(box, payload);
        EXPECT(rc == 0, "pair %u: set_result on the box: %s", p->index, weft_err_name(rc));
    } else {
        /* Already a failure: let the peer see it instead of hanging. */
        weft_future_cancel(box, "carrier failed");
        rc = WEFT_ECANCELED;
    }
    weft_future_release(box); /* the completer's reference */
    if (rc != 0 && reply != NULL) {
        weft_future_release(reply);
        weft_future_release(reply);
        reply = NULL;
    }
    return reply;
}

/* Await box (one reference, dropped here) and return the message in it,
 * or NULL on failure. */
static msg_t *receive_token(side_t *me, weft_future_t *box)
{
    pair_t *p = me->pair;
    void *v = NULL;
    int rc = weft_await(box, &v);
    weft_future_release(box);
    if (rc != 0) {
        FAIL("pair %u side %u: await box: %s", p->index, me->who, weft_err_name(rc));
        return NULL;
    }
    if (p->mode == M_CARRIER) {
        weft_future_t *carrier = v;
        v = NULL;
        rc = weft_await(carrier, &v);
        weft_future_release(carrier);
        if (rc != 0) {
            FAIL("pair %u side %u: await carrier: %s", p->index, me->who, weft_err_name(rc));
            return NULL;
        }
    }
    msg_t *m = v;
    if (m == NULL || m->magic != MSG_MAGIC || m->pair != p->index) {
        FAIL("pair %u side %u: bad message (magic %#x pair %u)", p->index, me->who,
             m ? m->magic : 0, m ? m->pair : 0);
        return NULL;
    }
    return m;
}

static void pace(side_t *me)
{
    uint64_t r = rng_next(&me->rng);
    if (r % SLEEP_ONE_IN == 0) {
        int rc = weft_sleep(SLEEP_NS);
        EXPECT(rc == 0, "weft_sleep: %s", weft_err_name(rc));
    } else if (r % 4 == 0) {
        int rc = weft_yield();
        EXPECT(rc == 0, "weft_yield: %s", weft_err_name(rc));
    }
}

static int side_main(void *arg, void **result)
{
    side_t *me = arg;
    pair_t *p = me->pair;
    if (p->magic != PAIR_MAGIC) {
        FAIL("side_main got a bad pair (magic %#x)", p->magic);
        return -EBADMSG;
    }
    if (p->mode == M_PINNED)
        EXPECT(weft_get_running_loop() == p->loop[me->who], "pinned side %u runs on another loop",
               me->who);
    uint64_t last = UINT64_MAX;
    weft_future_t *inbox = NULL;
    if (me->who == 0)
        inbox = send_token(me, p->first, 0); /* side 0 starts with the token */
    else
        inbox = p->first;
    while (inbox != NULL) {
        msg_t *m = receive_token(me, inbox);
        if (m == NULL)
            break;
        uint64_t seq = m->seq;
        weft_future_t *reply = m->reply;
        m->magic = MSG_STALE; /* the sender rewrites it only after our answer */
        /* Side 0 sent token 0, so side 1 receives the even ones. */
        check_receipt(p, me->who, seq, last, 1 - me->who);
        last = seq;
        me->received++;
        if (p->mode == M_PINNED)
            EXPECT(weft_get_running_loop() == p->loop[me->who],
                   "pinned side %u woke on another loop", me->who);
        if (reply == NULL) {
            EXPECT(seq + 1 == p->hops, "pair %u: no reply future before the last hop", p->index);
            break;
        }
        pace(me);
        inbox = send_token(me, reply, seq + 1);
    }
    *result = (void *)(uintptr_t)me->received;
    return 0;
}

/* ---- CALLBACK: two loops ------------------------------------------------ */

static void bounce(void *arg)
{
    pair_t *p = arg;
    uint64_t seq = p->cb_seq;
    unsigned who = (unsigned)(seq % 2);
    EXPECT(weft_get_running_loop() == p->loop[who], "pair %u: hop %" PRIu64 " ran on another loop",
           p->index, seq);
    /* Loop 0 runs hop 0, so it receives the even ones. */
    check_receipt(p, who, seq, p->cb_last[who], who);
    p->cb_last[who] = seq;
    p->cb_got[who]++;
    if (seq + 1 == p->hops) {
        /* The root holds its own reference; this one is the completer's. */
        int rc = weft_future_set_result(p->done, (void *)(uintptr_t)p->hops);
        EXPECT(rc == 0, "pair %u: set_result (done): %s", p->index, weft_err_name(rc));
        weft_future_release(p->done);
        return;
    }
    /* Written before the post, read by the next hop after it: the post
     * orders the two. */
    p->cb_seq = seq + 1;
    int rc = weft_loop_call_soon_threadsafe(p->loop[1 - who], bounce, p, NULL);
    if (rc != 0) {
        FAIL("pair %u: call_soon_threadsafe: %s", p->index, weft_err_name(rc));
        weft_future_cancel(p->done, "bounce failed");
        weft_future_release(p->done);
    }
}

/* ---- the root of a pair ------------------------------------------------------ */

static int pair_main(void *arg, void **result)
{
    pair_t *p = arg;
    if (p->magic != PAIR_MAGIC) {
        FAIL("pair_main got a bad pair (magic %#x)", p->magic);
        return -EBADMSG;
    }
    if (p->mode == M_CALLBACK) {
        int rc = weft_future_new(NULL, &p->done);
        if (rc != 0) {
            FAIL("weft_future_new: %s", weft_err_name(rc));
            return rc;
        }
        weft_future_retain(p->done); /* the last hop's, for completing */
        p->cb_seq = 0;
        p->cb_last[0] = p->cb_last[1] = UINT64_MAX;
        rc = weft_loop_call_soon_threadsafe(p->loop[0], bounce, p, NULL);
        if (rc != 0) {
            FAIL("call_soon_threadsafe: %s", weft_err_name(rc));
            weft_future_release(p->done);
            weft_future_release(p->done);
            return rc;
        }
        void *v = NULL;
        rc = weft_await(p->done, &v);
        weft_future_release(p->done);
        EXPECT(rc == 0, "pair %u: await done: %s", p->index, weft_err_name(rc));
        EXPECT(p->cb_got[0] + p->cb_got[1] == p->hops,
               "pair %u: loops received %" PRIu64 " + %" PRIu64 " of %" PRIu64, p->index,
               p->cb_got[0], p->cb_got[1], p->hops);
        *result = (void *)(uintptr_t)(p->cb_got[0] + p->cb_got[1]);
        return 0;
    }

    /* Side 1's first box: side 0 completes it, side 1 awaits it. */
    int rc = weft_future_new(NULL, &p->first);
    if (rc != 0) {
        FAIL("weft_future_new: %s", weft_err_name(rc));
        return rc;
    }
    weft_future_retain(p->first);
    weft_task_t *t[2] = {NULL, NULL};
    for (unsigned s = 0; s < 2; s++) {
        weft_spawn_opts_t opts = {0};
        if (p->mode == M_PINNED)
            opts.pinned = p->loop[s];
        rc = weft_spawn(side_main, &p->side[s], &opts, &t[s]);
        if (rc != 0) {
            FAIL("weft_spawn (side %u): %s", s, weft_err_name(rc));
            t[s] = NULL;
        }
    }
    if (t[0] == NULL || t[1] == NULL) {
        /* Already a failure.  Drop the references of the side that did not
         * start, and stop the one that did instead of leaving it waiting. */
        if (t[1] == NULL)
            weft_future_release(p->first);
        if (t[0] == NULL) {
            weft_future_cancel(p->first, "setup failed");
            weft_future_release(p->first);
        }
        for (unsigned s = 0; s < 2; s++)
            if (t[s] != NULL)
                weft_task_cancel(t[s], "setup failed");
    }
    uint64_t got = 0;
    for (unsigned s = 0; s < 2; s++) {
        if (t[s] == NULL)
            continue;
        void *v = NULL;
        rc = weft_await(weft_task_future(t[s]), &v);
        EXPECT(rc == 0, "pair %u side %u: %s", p->index, s, weft_err_name(rc));
        uint64_t want = s == 0 ? p->hops / 2 : (p->hops + 1) / 2;
        EXPECT((uint64_t)(uintptr_t)v == want,
               "pair %u (%s) side %u received %" PRIu64 " tokens, expected %" PRIu64, p->index,
               mode_name[p->mode], s, (uint64_t)(uintptr_t)v, want);
        got += (uint64_t)(uintptr_t)v;
        weft_task_release(t[s]);
    }
    *result = (void *)(uintptr_t)got;
    return 0;
}

/* ---- watchdog -------------------------------------------------------------- */

static uint64_t total_hops;

static void *watchdog_main(void *arg)
{
    (void)arg;
    for (int tick = 0; tick < WATCHDOG_SECONDS * 10; tick++) {
        if (atomic_load(&G.finished_run))
            return NULL;
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr,
            "stress_pingpong: WATCHDOG: no end after %d s; %" PRIu64 " of %" PRIu64
            " tokens delivered\n",
            WATCHDOG_SECONDS, (uint64_t)atomic_load(&G.total_delivered), total_hops);
    for (unsigned i = 0; i < G.npairs; i++) {
        pair_t *p = &G.pairs[i];
        uint64_t d = atomic_load(&p->delivered);
        if (d != p->hops)
            fprintf(stderr, "  pair %u (%s): %" PRIu64 " of %" PRIu64 ", last at side %d\n", i,
                    mode_name[p->mode], d, p->hops, atomic_load(&p->holder));
    }
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

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
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

    G.workers = (unsigned)workers;
    G.npairs = 2 * G.workers;
    uint64_t rng = seed | 1;
    uint64_t per_pair = iterations * HOPS_PER_ITERATION / G.npairs;
    if (per_pair < 2)
        per_pair = 2;

    weft_config_t cfg = {.workers = G.workers};
    int rc = weft_runtime_new(&cfg, &G.rt);
    if (rc != 0) {
        fprintf(stderr, "stress_pingpong: weft_runtime_new: %s\n", weft_strerror(rc));
        return 1;
    }
    G.pairs = calloc(G.npairs, sizeof *G.pairs);
    if (G.pairs == NULL) {
        fprintf(stderr, "stress_pingpong: out of memory\n");
        return 1;
    }
    for (unsigned i = 0; i < G.npairs; i++) {
        pair_t *p = &G.pairs[i];
        p->magic = PAIR_MAGIC;
        p->index = i;
        p->mode = i % M_COUNT;
        /* Odd and even lengths, so either side may end the exchange. */
        p->hops = per_pair / 2 + rng_next(&rng) % (per_pair + 1);
        if (p->hops < 2)
            p->hops = 2;
        total_hops += p->hops;
        /* Two different workers (the same one only when there is one). */
        unsigned a = (unsigned)(rng_next(&rng) % G.workers);
        unsigned b = a;
        if (G.workers > 1)
            b = (a + 1 + (unsigned)(rng_next(&rng) % (G.workers - 1))) % G.workers;
        p->loop[0] = weft_runtime_loop(G.rt, a);
        p->loop[1] = weft_runtime_loop(G.rt, b);
        atomic_init(&p->delivered, 0);
        atomic_init(&p->holder, -1);
        for (unsigned s = 0; s < 2; s++) {
            p->side[s].pair = p;
            p->side[s].who = s;
            p->side[s].rng = rng_next(&rng) | 1;
        }
    }
    printf("pairs=%u hops=%" PRIu64 "\n", G.npairs, total_hops);
    fflush(stdout);

    pthread_t dog;
    if (pthread_create(&dog, NULL, watchdog_main, NULL) != 0) {
        fprintf(stderr, "stress_pingpong: cannot start the watchdog\n");
        return 1;
    }
    int64_t t0 = now_ns();
    for (unsigned i = 0; i < G.npairs; i++) {
        rc = weft_runtime_submit(G.rt, pair_main, &G.pairs[i], &G.pairs[i].f);
        if (rc != 0) {
            FAIL("weft_runtime_submit: %s", weft_err_name(rc));
            G.pairs[i].f = NULL;
        }
    }
    uint64_t by_mode[M_COUNT] = {0};
    for (unsigned i = 0; i < G.npairs; i++) {
        pair_t *p = &G.pairs[i];
        if (p->f == NULL)
            continue;
        rc = weft_future_wait(p->f, -1);
        EXPECT(rc == 0, "weft_future_wait: %s", weft_err_name(rc));
        void *v = NULL;
        rc = weft_future_result(p->f, &v);
        EXPECT(rc == 0, "pair %u (%s): outcome %s", i, mode_name[p->mode], weft_err_name(rc));
        EXPECT(rc != 0 || (uint64_t)(uintptr_t)v == p->hops,
               "pair %u (%s): %" PRIu64 " tokens received, %" PRIu64 " sent", i, mode_name[p->mode],
               (uint64_t)(uintptr_t)v, p->hops);
        uint64_t d = atomic_load(&p->delivered);
        EXPECT(d == p->hops, "pair %u (%s): %" PRIu64 " deliveries of %" PRIu64, i,
               mode_name[p->mode], d, p->hops);
        by_mode[p->mode] += d;
        weft_future_release(p->f);
    }
    int64_t t1 = now_ns();

    weft_worker_stats_t sum = {0};
    for (unsigned i = 0; i < G.workers; i++) {
        weft_worker_stats_t st;
        rc = weft_runtime_worker_stats(G.rt, i, &st);
        EXPECT(rc == 0, "weft_runtime_worker_stats: %s", weft_err_name(rc));
        sum.tasks_run += st.tasks_run;
        sum.steals += st.steals;
        sum.parks += st.parks;
        sum.eventfd_writes += st.eventfd_writes;
        sum.lifo_runs += st.lifo_runs;
    }
    rc = weft_runtime_shutdown(G.rt, -1);
    EXPECT(rc == 0, "weft_runtime_shutdown: %s", weft_err_name(rc));
    weft_runtime_free(G.rt);
    atomic_store(&G.finished_run, true);
    pthread_join(dog, NULL);

    printf("pingpong: %.1f ms, %" PRIu64 " tokens (future %" PRIu64 ", pinned %" PRIu64
           ", carrier %" PRIu64 ", callback %" PRIu64 ")\n",
           (double)(t1 - t0) / 1e6, total_hops, by_mode[M_FUTURE], by_mode[M_PINNED],
           by_mode[M_CARRIER], by_mode[M_CALLBACK]);
    printf("steps=%" PRIu64 " lifo_runs=%" PRIu64 " steals=%" PRIu64 " parks=%" PRIu64
           " eventfd_writes=%" PRIu64 "\n",
           sum.tasks_run, sum.lifo_runs, sum.steals, sum.parks, sum.eventfd_writes);
    free(G.pairs);

    int nf = atomic_load(&failures);
    if (nf != 0) {
        printf("FAILED: %d check(s)\n", nf);
        return 1;
    }
    printf("OK\n");
    return 0;
}
