/* stress_threadsafe — many foreign threads feeding one standalone loop.
 *
 * Usage: stress_threadsafe [workers [iterations [seed]]]
 *        (defaults: 4 workers, 20000 iterations, a time-based seed)
 *
 * Phase 1.  The loop runs on the main thread.  Each of `workers` plain
 * pthreads posts `iterations` callbacks with weft_loop_call_soon_threadsafe.
 * Every post carries a payload (magic value, thread, sequence number) that
 * the callback checks: magic intact, per-thread FIFO order, consumed exactly
 * once (an atomic flag; a second consumption is a failure).
 *
 * Workers post in random bursts and after half of them wait until the loop
 * ran their posts, so the loop alternates between busy and asleep (and the
 * eventfd wakeup path is exercised).
 *
 * Underneath, the loop arms one timer per TIMER_EVERY posts it runs, with a
 * random 0-2 ms delay drawn from a PRNG only the loop thread touches.  Each
 * timer is one of:
 *   KEEP       - left alone; it must fire;
 *   LOOP       - cancelled a little later by the loop thread;
 *   PUBLISHED  - its handle is handed to the foreign threads through an
 *                atomic slot; whichever thread exchanges it out cancels it
 *                and releases the handle.
 * Every timer carries an atomic state ARMED -> FIRED | CANCELLED.  The timer
 * callback moves ARMED -> FIRED; a canceller whose weft_handle_cancel took
 * effect (weft_handle_cancelled() is true) moves ARMED -> CANCELLED.  Any
 * other transition means a timer both ran and was cancelled.  At the end
 * armed == fired + cancelled, and the loop's own counters must agree.
 * The loop stops itself once every post arrived and every timer resolved.
 *
 * Phase 2 (close race).  With the loop stopped, the workers post again
 * (every other post asking for a handle) while the main thread calls
 * weft_loop_close.  Every post returns 0 or WEFT_ECLOSED; once a thread saw
 * WEFT_ECLOSED it never sees 0 again; no accepted post may run (the loop
 * never runs again), every accepted post's handle must read cancelled after
 * close, and the exception handler must have been told (code WEFT_ECLOSED)
 * if any post was accepted.
 *
 * Exit status: 0 when every check held, 1 on a failed check, 2 on bad
 * arguments, 3 when the watchdog gave up on a hung phase.
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

#define MS INT64_C(1000000)

#define PAYLOAD_MAGIC 0x7EF7C0DEu
#define PAYLOAD_DEAD  0xDEADBEEFu /* written over the magic once consumed */
#define TIMER_MAGIC   0x71E3A5EDu

/* One timer per 8 posts: 20000 timers at the CI size (8 x 20000), enough
 * to keep the heap busy without dominating the run under TSan. */
#define TIMER_EVERY 8
/* Slots through which the loop hands timer handles to foreign threads. */
#define NSLOTS 64
/* Timers the loop will cancel itself, oldest first. */
#define CANCEL_RING 64
/* Workers post in bursts of 1..MAX_BURST, and after half of the bursts
 * wait for the loop to catch up (see worker_phase1). */
#define MAX_BURST 64
/* A foreign thread looks at one slot every this many posts. */
#define STEAL_EVERY 4
/* Phase 2: the main thread closes once this many posts per worker landed. */
#define CLOSE_AFTER_PER_WORKER 64
/* Phase 2: a worker that never sees WEFT_ECLOSED gives up after this many. */
#define CLOSE_POST_CAP 1000000
/* Watchdog: no phase of a healthy run takes this long, even under TSan. */
#define WATCHDOG_SECONDS 300

/* ---- failures --------------------------------------------------------- */

static atomic_int failures;

/* Print the first few failures (with values) and count all of them.
 * Usable from any thread: stdio locks each call. */
#define FAIL(...)                                                                                  \
    do {                                                                                           \
        if (atomic_fetch_add(&failures, 1) < 20) {                                                 \
            fprintf(stderr, "stress_threadsafe: FAILED at %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            FAIL(__VA_ARGS__);                                                                     \
    } while (0)

/* ---- PRNG: splitmix64, one state per thread -------------------------- */

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

/* ---- shared state ------------------------------------------------------ */

typedef struct payload {
    uint32_t magic;
    uint32_t thread;
    uint32_t seq;
    atomic_int consumed;
} payload_t;

enum { T_ARMED = 1, T_FIRED = 2, T_CANCELLED = 3 };
enum { OWN_KEEP = 1, OWN_LOOP = 2, OWN_PUBLISHED = 3 };

typedef struct timer_rec {
    uint32_t magic;
    atomic_int state;
    /* Loop thread only: */
    int owner;
    int64_t when;
    /* The handle's one reference belongs to the loop, except while the
     * record sits in a slot or was taken from one by a foreign thread;
     * the slot exchange (seq_cst) hands it over. */
    weft_handle_t *h;
} timer_rec_t;

static struct {
    weft_loop_t *loop;
    unsigned workers;
    unsigned iterations;
    uint64_t total; /* workers * iterations */

    payload_t *payloads;
    timer_rec_t *timers;
    size_t max_timers;

    _Atomic(timer_rec_t *) slots[NSLOTS];
    atomic_uint workers_done;
    atomic_uint_fast64_t cancelled_foreign;
    atomic_uint_fast64_t received; /* written by the loop, read by the watchdog */
    atomic_int phase;              /* 1, 2, or 0 when finished */

    /* Loop thread only: */
    uint64_t rng;
    /* Per thread: the next sequence number the loop expects.  Written only
     * by the loop (release: the worker that sees it also sees the callback's
     * effects, though it only needs the number); read by the worker to pace
     * itself. */
    _Atomic uint32_t *next_seq;
    size_t armed;
    uint64_t fired;
    uint64_t cancelled_loop;
    uint64_t polls;
    timer_rec_t *ring[CANCEL_RING];
    size_t ring_head, ring_len;
    bool finishing;
    int64_t finish_deadline;
} S;

/* ---- timers ------------------------------------------------------------ */

static void on_timer(void *arg)
{
    timer_rec_t *t = arg;
    if (t->magic != TIMER_MAGIC) {
        FAIL("timer callback got a bad record (magic %#x)", t->magic);
        return;
    }
    int64_t now = weft_loop_time(S.loop);
    EXPECT(now >= t->when, "timer %td ran %" PRId64 " ns early", t - S.timers, t->when - now);
    int expected = T_ARMED;
    if (!atomic_compare_exchange_strong(&t->state, &expected, T_FIRED))
        FAIL("timer %td ran in state %d: its cancel had already taken effect", t - S.timers,
             expected);
    S.fired++;
    if (t->owner == OWN_KEEP) {
        weft_handle_release(t->h);
        t->h = NULL;
    }
}

/* A cancel took effect: ARMED -> CANCELLED, from any thread. */
static void mark_cancelled(timer_rec_t *t)
{
    int expected = T_ARMED;
    if (!atomic_compare_exchange_strong(&t->state, &expected, T_CANCELLED))
        FAIL("timer %td reads cancelled but was in state %d (it ran)", t - S.timers, expected);
}

/* Cancel on the loop thread and drop the loop's reference.  Here the
 * answer is exact: if the cancel did not take effect the timer must
 * already have run, since only this thread runs it. */
static void loop_cancel(timer_rec_t *t)
{
    EXPECT(weft_handle_cancel(t->h) == 0, "weft_handle_cancel failed on the loop thread");
    if (weft_handle_cancelled(t->h)) {
        mark_cancelled(t);
        S.cancelled_loop++;
    } else {
        int st = atomic_load(&t->state);
        EXPECT(st == T_FIRED, "loop-thread cancel of timer %td had no effect, state %d",
               t - S.timers, st);
    }
    weft_handle_release(t->h);
    t->h = NULL;
}

/* A foreign thread takes whatever sits in slot k and cancels it. */
static void foreign_take_and_cancel(unsigned k)
{
    timer_rec_t *t = atomic_exchange(&S.slots[k], NULL);
    if (t == NULL)
        return;
    if (t->magic != TIMER_MAGIC) {
        FAIL("slot %u held a bad record (magic %#x)", k, t->magic);
        return;
    }
    EXPECT(weft_handle_cancel(t->h) == 0, "weft_handle_cancel failed on a foreign thread");
    /* Not cancelled means it already ran or is running right now on the
     * loop thread; either way its callback accounts for it. */
    if (weft_handle_cancelled(t->h)) {
        mark_cancelled(t);
        atomic_fetch_add(&S.cancelled_foreign, 1);
    }
    weft_handle_release(t->h);
}

static void arm_timer(void)
{
    if (S.armed >= S.max_timers)
        return;
    timer_rec_t *t = &S.timers[S.armed];
    t->magic = TIMER_MAGIC;
    atomic_init(&t->state, T_ARMED);
    int64_t delay = (int64_t)(rng_next(&S.rng) % (uint64_t)(2 * MS + 1));
    unsigned pick = (unsigned)(rng_next(&S.rng) % 4);
    t->owner = pick < 2 ? OWN_KEEP : pick == 2 ? OWN_LOOP : OWN_PUBLISHED;

    weft_handle_t *h = NULL;
    int rc = weft_loop_call_later(S.loop, delay, on_timer, t, &h);
    if (rc != 0) {
        FAIL("weft_loop_call_later: %s", weft_err_name(rc));
        return;
    }
    S.armed++;
    t->h = h;
    t->when = weft_handle_when(h);
    EXPECT(t->when >= 0, "timer handle has no deadline");

    if (t->owner == OWN_LOOP) {
        /* Cancel the oldest when the ring is full, and sometimes earlier,
         * so cancels land both before and after the deadline. */
        if (S.ring_len == CANCEL_RING || (S.ring_len > 0 && rng_next(&S.rng) % 2 == 0)) {
            loop_cancel(S.ring[S.ring_head]);
            S.ring_head = (S.ring_head + 1) % CANCEL_RING;
            S.ring_len--;
        }
        S.ring[(S.ring_head + S.ring_len) % CANCEL_RING] = t;
        S.ring_len++;
    } else if (t->owner == OWN_PUBLISHED) {
        unsigned k = (unsigned)(rng_next(&S.rng) % NSLOTS);
        /* seq_cst exchange: publishes t->h to the thread that takes it. */
        timer_rec_t *old = atomic_exchange(&S.slots[k], t);
        if (old != NULL)
            loop_cancel(old); /* nobody took it: it is the loop's again */
    }
}

/* ---- finishing phase 1 ------------------------------------------------- */

static void on_poll(void *arg);

static void schedule_poll(void)
{
    int rc = weft_loop_call_later(S.loop, 1 * MS, on_poll, NULL, NULL);
    if (rc != 0) {
        FAIL("weft_loop_call_later (poll): %s", weft_err_name(rc));
        weft_loop_stop(S.loop);
    }
}

static void on_poll(void *arg)
{
    (void)arg;
    S.polls++;
    if (atomic_load(&S.workers_done) == S.workers) {
        /* No foreign thread will touch a slot again: reclaim them. */
        for (unsigned k = 0; k < NSLOTS; k++) {
            timer_rec_t *t = atomic_exchange(&S.slots[k], NULL);
            if (t != NULL)
                loop_cancel(t);
        }
        uint64_t resolved = S.fired + S.cancelled_loop + atomic_load(&S.cancelled_foreign);
        if (resolved == S.armed) {
            weft_loop_stop(S.loop);
            return;
        }
        EXPECT(resolved < S.armed, "more timers resolved (%" PRIu64 ") than armed (%zu)", resolved,
               S.armed);
    }
    if (weft_loop_time(S.loop) > S.finish_deadline) {
        FAIL("timers never resolved: armed %zu fired %" PRIu64 " cancelled %" PRIu64 "+%" PRIu64
             ", workers done %u/%u",
             S.armed, S.fired, S.cancelled_loop, (uint64_t)atomic_load(&S.cancelled_foreign),
             atomic_load(&S.workers_done), S.workers);
        weft_loop_stop(S.loop);
        return;
    }
    schedule_poll();
}

static void begin_finish(void)
{
    S.finishing = true;
    while (S.ring_len > 0) {
        loop_cancel(S.ring[S.ring_head]);
        S.ring_head = (S.ring_head + 1) % CANCEL_RING;
        S.ring_len--;
    }
    /* Timers are at most 2 ms away; 30 s of slack covers any scheduler. */
    S.finish_deadline = weft_loop_time(S.loop) + 30000 * MS;
    schedule_poll();
}

/* ---- posts ------------------------------------------------------------- */

static void on_post(void *arg)
{
    payload_t *p = arg;
    if (p->magic != PAYLOAD_MAGIC) {
        FAIL("post callback got a bad payload (magic %#x)", p->magic);
        return;
    }
    if (p->thread >= S.workers) {
        FAIL("payload names thread %u of %u", p->thread, S.workers);
        return;
    }
    uint32_t expect = atomic_load_explicit(&S.next_seq[p->thread], memory_order_relaxed);
    EXPECT(p->seq == expect, "thread %u: got seq %u, expected %u (FIFO broken)", p->thread, p->seq,
           expect);
    atomic_store_explicit(&S.next_seq[p->thread], p->seq + 1, memory_order_release);
    if (atomic_exchange(&p->consumed, 1) != 0)
        FAIL("payload thread %u seq %u consumed twice", p->thread, p->seq);
    p->magic = PAYLOAD_DEAD;

    uint64_t n = atomic_load_explicit(&S.received, memory_order_relaxed) + 1;
    atomic_store_explicit(&S.received, n, memory_order_relaxed);
    if (n % TIMER_EVERY == 0)
        arm_timer();
    if (n == S.total)
        begin_finish();
    EXPECT(n <= S.total, "more posts ran (%" PRIu64 ") than were made", n);
}

typedef struct worker {
    pthread_t tid;
    unsigned index;
    uint64_t rng;
    /* Phase 2 */
    weft_handle_t **handles;
    size_t n_handles, cap_handles;
    uint64_t closed_seen;
} worker_t;

static void *worker_phase1(void *arg)
{
    worker_t *w = arg;
    unsigned burst = 1 + (unsigned)(rng_next(&w->rng) % MAX_BURST);
    for (unsigned seq = 0; seq < S.iterations; seq++) {
        payload_t *p = &S.payloads[(size_t)w->index * S.iterations + seq];
        p->magic = PAYLOAD_MAGIC;
        p->thread = w->index;
        p->seq = seq;
        atomic_init(&p->consumed, 0);
        int rc = weft_loop_call_soon_threadsafe(S.loop, on_post, p, NULL);
        if (rc != 0) {
            FAIL("thread %u: call_soon_threadsafe: %s", w->index, weft_err_name(rc));
            break;
        }
        if (seq % STEAL_EVERY == 0)
            foreign_take_and_cancel((unsigned)(rng_next(&w->rng) % NSLOTS));
        if (--burst == 0) {
            /* End of a burst.  Half the time wait until the loop ran all of
             * this thread's posts, so the loop drains, goes to sleep and
             * must be woken through its eventfd; otherwise keep going and
             * let posts pile up while it is awake. */
            burst = 1 + (unsigned)(rng_next(&w->rng) % MAX_BURST);
            if (rng_next(&w->rng) % 2 == 0) {
                while (atomic_load_explicit(&S.next_seq[w->index], memory_order_acquire) <= seq) {
                    struct timespec ts = {0, 20000}; /* 20 us */
                    nanosleep(&ts, NULL);
                }
            } else if (rng_next(&w->rng) % 8 == 0) {
                sched_yield();
            }
        }
    }
    for (unsigned k = 0; k < NSLOTS; k++)
        foreign_take_and_cancel(k);
    atomic_fetch_add(&S.workers_done, 1);
    return NULL;
}

/* ---- phase 2: posting while the loop closes ----------------------------- */

static atomic_uint_fast64_t late_accepted;
static atomic_int late_runs;
static atomic_int exc_calls;
static pthread_t main_thread;

static void on_late_post(void *arg)
{
    (void)arg;
    /* The loop never runs again after phase 1. */
    atomic_fetch_add(&late_runs, 1);
}

static void on_exception(weft_loop_t *loop, const weft_error_context_t *ctx, void *arg)
{
    (void)arg;
    EXPECT(loop == S.loop, "exception handler got another loop");
    EXPECT(pthread_equal(pthread_self(), main_thread), "exception handler ran off the loop thread");
    if (ctx == NULL) {
        FAIL("exception handler got a NULL context");
        return;
    }
    EXPECT(ctx->message != NULL, "exception context without message");
    EXPECT(ctx->code == WEFT_ECLOSED, "exception handler code %s, expected WEFT_ECLOSED",
           weft_err_name(ctx->code));
    atomic_fetch_add(&exc_calls, 1);
}

static void *worker_phase2(void *arg)
{
    worker_t *w = arg;
    for (uint64_t i = 0; i < CLOSE_POST_CAP; i++) {
        /* Every other post asks for no handle: a plain inbox entry, which
         * close must drop (and free) just the same. */
        weft_handle_t *h = NULL;
        bool plain = i % 2 == 1;
        int rc = weft_loop_call_soon_threadsafe(S.loop, on_late_post, w, plain ? NULL : &h);
        if (rc == 0 && plain) {
            EXPECT(w->closed_seen == 0, "thread %u: post accepted after WEFT_ECLOSED", w->index);
            atomic_fetch_add(&late_accepted, 1);
        } else if (rc == 0) {
            EXPECT(w->closed_seen == 0, "thread %u: post accepted after WEFT_ECLOSED", w->index);
            if (w->n_handles == w->cap_handles) {
                size_t cap = w->cap_handles ? 2 * w->cap_handles : 256;
                weft_handle_t **nh = realloc(w->handles, cap * sizeof *nh);
                if (nh == NULL) {
                    FAIL("out of memory for handles");
                    weft_handle_release(h);
                    return NULL;
                }
                w->handles = nh;
                w->cap_handles = cap;
            }
            w->handles[w->n_handles++] = h;
            atomic_fetch_add(&late_accepted, 1);
        } else if (rc == WEFT_ECLOSED) {
            /* Closed stays closed: a few more posts must all be refused. */
            if (++w->closed_seen == 8)
                return NULL;
        } else {
            FAIL("thread %u: call_soon_threadsafe during close: %s", w->index, weft_err_name(rc));
            return NULL;
        }
    }
    FAIL("thread %u never saw WEFT_ECLOSED", w->index);
    return NULL;
}

/* ---- watchdog ------------------------------------------------------------ */

static void *watchdog(void *arg)
{
    (void)arg;
    for (int tick = 0; tick < WATCHDOG_SECONDS * 10; tick++) {
        if (atomic_load(&S.phase) == 0)
            return NULL;
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr,
            "stress_threadsafe: WATCHDOG: phase %d hung after %d s; posts run %" PRIu64
            " of %" PRIu64 ", workers done %u\n",
            atomic_load(&S.phase), WATCHDOG_SECONDS,
            (uint64_t)atomic_load_explicit(&S.received, memory_order_relaxed), S.total,
            atomic_load(&S.workers_done));
    _exit(3);
}

/* ---- main ---------------------------------------------------------------- */

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
    /* The seed comes first so any failure can be replayed. */
    printf("seed=%" PRIu64 "\n", seed);
    printf("workers=%" PRIu64 " iterations=%" PRIu64 "\n", workers, iterations);
    fflush(stdout);

    main_thread = pthread_self();
    S.workers = (unsigned)workers;
    S.iterations = (unsigned)iterations;
    S.total = workers * iterations;
    S.rng = seed;
    S.max_timers = S.total / TIMER_EVERY + 1;
    S.payloads = calloc(S.total, sizeof *S.payloads);
    S.timers = calloc(S.max_timers, sizeof *S.timers);
    S.next_seq = calloc(S.workers, sizeof *S.next_seq);
    worker_t *ws = calloc(S.workers, sizeof *ws);
    if (!S.payloads || !S.timers || !S.next_seq || !ws) {
        fprintf(stderr, "stress_threadsafe: out of memory\n");
        return 1;
    }
    for (unsigned k = 0; k < NSLOTS; k++)
        atomic_init(&S.slots[k], NULL);
    for (unsigned i = 0; i < S.workers; i++)
        atomic_init(&S.next_seq[i], 0);
    atomic_init(&S.phase, 1);

    int rc = weft_loop_new(&S.loop);
    if (rc != 0) {
        fprintf(stderr, "stress_threadsafe: weft_loop_new: %s\n", weft_strerror(rc));
        return 1;
    }

    pthread_t dog;
    if (pthread_create(&dog, NULL, watchdog, NULL) != 0) {
        fprintf(stderr, "stress_threadsafe: cannot start the watchdog\n");
        return 1;
    }

    /* ---- phase 1 ---- */
    int64_t t0 = now_ns();
    for (unsigned i = 0; i < S.workers; i++) {
        ws[i].index = i;
        ws[i].rng = seed ^ (UINT64_C(0xA5A5A5A5A5A5A5A5) * (i + 1));
        if (pthread_create(&ws[i].tid, NULL, worker_phase1, &ws[i]) != 0) {
            fprintf(stderr, "stress_threadsafe: cannot start worker %u\n", i);
            return 1;
        }
    }
    rc = weft_loop_run_forever(S.loop);
    EXPECT(rc == 0, "weft_loop_run_forever: %s", weft_err_name(rc));
    for (unsigned i = 0; i < S.workers; i++)
        pthread_join(ws[i].tid, NULL);
    int64_t t1 = now_ns();

    /* Every payload consumed exactly once, every thread's sequence whole. */
    uint64_t received = atomic_load(&S.received);
    EXPECT(received == S.total, "posts run %" PRIu64 ", made %" PRIu64, received, S.total);
    for (size_t i = 0; i < S.total; i++) {
        if (atomic_load(&S.payloads[i].consumed) != 1) {
            FAIL("payload %zu (thread %zu seq %zu) never ran", i, i / S.iterations,
                 i % S.iterations);
            break;
        }
    }
    for (unsigned i = 0; i < S.workers; i++) {
        uint32_t next = atomic_load(&S.next_seq[i]);
        EXPECT(next == S.iterations, "thread %u: last seq %u of %u", i, next, S.iterations);
    }

    /* Every timer resolved exactly one way. */
    uint64_t cancelled_foreign = atomic_load(&S.cancelled_foreign);
    uint64_t cancelled = S.cancelled_loop + cancelled_foreign;
    EXPECT(S.armed == S.fired + cancelled, "armed %zu != fired %" PRIu64 " + cancelled %" PRIu64,
           S.armed, S.fired, cancelled);
    for (size_t i = 0; i < S.armed; i++) {
        int st = atomic_load(&S.timers[i].state);
        if (st != T_FIRED && st != T_CANCELLED) {
            FAIL("timer %zu unresolved (state %d)", i, st);
            break;
        }
        if (S.timers[i].h != NULL && S.timers[i].owner != OWN_PUBLISHED) {
            FAIL("timer %zu still holds its handle", i);
            break;
        }
    }
    for (unsigned k = 0; k < NSLOTS; k++)
        EXPECT(atomic_load(&S.slots[k]) == NULL, "slot %u not drained", k);

    weft_loop_stats_t st;
    rc = weft_loop_get_stats(S.loop, &st);
    EXPECT(rc == 0, "weft_loop_get_stats: %s", weft_err_name(rc));
    /* Only the workers used call_soon_threadsafe, and the loop ran exactly
     * the posts, the timers that fired and its own poll timers. */
    EXPECT(st.threadsafe_calls == S.total, "stats: threadsafe_calls %" PRIu64 ", expected %" PRIu64,
           (uint64_t)st.threadsafe_calls, S.total);
    EXPECT(st.timers_fired == S.fired + S.polls,
           "stats: timers_fired %" PRIu64 ", expected %" PRIu64 " + %" PRIu64 " polls",
           (uint64_t)st.timers_fired, S.fired, S.polls);
    EXPECT(st.callbacks_run == S.total + S.fired + S.polls,
           "stats: callbacks_run %" PRIu64 ", expected %" PRIu64, (uint64_t)st.callbacks_run,
           S.total + S.fired + S.polls);
    /* The eventfd is written only for a sleeping loop, at most once per
     * sleep, and every eventfd wakeup needs a write. */
    EXPECT(st.eventfd_writes <= st.sleeps,
           "stats: eventfd_writes %" PRIu64 " > sleeps %" PRIu64 " (more than one per sleep)",
           (uint64_t)st.eventfd_writes, (uint64_t)st.sleeps);
    EXPECT(st.wakeups <= st.eventfd_writes, "stats: wakeups %" PRIu64 " > eventfd_writes %" PRIu64,
           (uint64_t)st.wakeups, (uint64_t)st.eventfd_writes);

    printf("phase 1: %.1f ms\n", (double)(t1 - t0) / 1e6);
    printf("calls=%" PRIu64 " eventfd_writes=%" PRIu64 " wakeups=%" PRIu64 " sleeps=%" PRIu64
           " iterations=%" PRIu64 "\n",
           (uint64_t)st.threadsafe_calls, (uint64_t)st.eventfd_writes, (uint64_t)st.wakeups,
           (uint64_t)st.sleeps, (uint64_t)st.iterations);
    printf("eventfd_writes/calls=%.5f\n",
           st.threadsafe_calls ? (double)st.eventfd_writes / (double)st.threadsafe_calls : 0.0);
    printf("timers armed=%zu fired=%" PRIu64 " cancelled=%" PRIu64 " (loop %" PRIu64
           ", foreign %" PRIu64 ") heap_removed=%" PRIu64 "\n",
           S.armed, S.fired, cancelled, S.cancelled_loop, cancelled_foreign,
           (uint64_t)st.timers_cancelled);
    fflush(stdout);

    /* ---- phase 2: close while foreign threads post ---- */
    atomic_store(&S.phase, 2);
    rc = weft_loop_set_exception_handler(S.loop, on_exception, NULL);
    EXPECT(rc == 0, "weft_loop_set_exception_handler: %s", weft_err_name(rc));
    for (unsigned i = 0; i < S.workers; i++) {
        if (pthread_create(&ws[i].tid, NULL, worker_phase2, &ws[i]) != 0) {
            fprintf(stderr, "stress_threadsafe: cannot start worker %u\n", i);
            return 1;
        }
    }
    uint64_t want = (uint64_t)S.workers * CLOSE_AFTER_PER_WORKER;
    int64_t wait_until = now_ns() + 10000 * MS;
    while (atomic_load(&late_accepted) < want && now_ns() < wait_until)
        sched_yield();
    rc = weft_loop_close(S.loop);
    EXPECT(rc == 0, "weft_loop_close: %s", weft_err_name(rc));
    EXPECT(weft_loop_is_closed(S.loop), "loop not closed after weft_loop_close");
    uint64_t accepted_at_close = atomic_load(&late_accepted);
    for (unsigned i = 0; i < S.workers; i++)
        pthread_join(ws[i].tid, NULL);

    uint64_t accepted = atomic_load(&late_accepted);
    uint64_t not_cancelled = 0;
    for (unsigned i = 0; i < S.workers; i++) {
        EXPECT(ws[i].closed_seen > 0, "thread %u never saw WEFT_ECLOSED", i);
        for (size_t j = 0; j < ws[i].n_handles; j++) {
            if (!weft_handle_cancelled(ws[i].handles[j]))
                not_cancelled++;
            weft_handle_release(ws[i].handles[j]);
        }
        free(ws[i].handles);
    }
    EXPECT(not_cancelled == 0,
           "%" PRIu64 " of %" PRIu64 " posts accepted around close neither ran nor read cancelled",
           not_cancelled, accepted);
    EXPECT(atomic_load(&late_runs) == 0, "%d callbacks ran on a closed loop",
           atomic_load(&late_runs));
    if (accepted > 0)
        EXPECT(atomic_load(&exc_calls) >= 1, "close dropped %" PRIu64 " callbacks silently",
               accepted);
    printf("close race: posts accepted=%" PRIu64 " (%" PRIu64
           " by the time close returned), exception reports=%d\n",
           accepted, accepted_at_close, atomic_load(&exc_calls));

    weft_loop_free(S.loop);
    atomic_store(&S.phase, 0);
    pthread_join(dog, NULL);
    free(ws);
    free(S.payloads);
    free(S.timers);
    free(S.next_seq);

    int nf = atomic_load(&failures);
    if (nf != 0) {
        printf("FAILED: %d check(s)\n", nf);
        return 1;
    }
    printf("OK\n");
    return 0;
}
