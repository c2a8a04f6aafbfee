/* stress_cancel — cancellation at random moments, from every direction,
 * against every kind of suspension point.
 *
 * Usage: stress_cancel [workers [iterations [seed]]]
 *        (defaults: 4 workers, 20000 iterations, a time-based seed)
 *
 * A runtime of `workers` workers runs `workers` driver tasks; together
 * they run `iterations` rounds (one victim each, so the CI size, 8 x 20000,
 * stays well inside a minute under ThreadSanitizer on two cores).  In a
 * round the driver prepares helpers for one kind of suspension point —
 * await of a future or of a task, sleep, yield, to_thread, a timeout
 * scope, wait_for, gather, wait, as_completed, a TaskGroup, shield, and
 * the sync primitives (lock, semaphore, event, condition) and a queue
 * (get from an empty one, put into a full one) — spawns a
 * victim task that waits there, and cancels it from none, one or two of:
 *   - a canceller task, after 0-3 yields (usually on another worker);
 *   - the driver itself, after 0-3 yields;
 *   - a plain pthread (FOREIGN threads take victims from a mailbox and
 *     cancel them after a random pause).
 * Every victim ends with 0 and a result marker (what its suspension point
 * returned when not cancelled: normal, timed out, group failed) or with
 * WEFT_ECANCELED; it never ends with anything else, so the checks are:
 *   1. some weft_task_cancel on it returned 1  <=>  it ended cancelled
 *      (a request is either seen by the finishing task or refused as
 *      "already done", never both);
 *   2. no canceller  =>  it did not end cancelled (a timeout scope's own
 *      cancellation, a TaskGroup's request to its parent, are withdrawn);
 *   3. its result marker is intact, a value read through a suspension
 *      point is the one that was sent, a timeout reported as timed out
 *      had expired; a queue item is neither lost nor duplicated (a
 *      cancelled get took nothing, a cancelled put put nothing);
 *   4. each round record is judged exactly once (magic, then DEAD);
 *   5. at the end: the shared lock is free, the semaphore has all its
 *      permits, the runtime shuts down with nothing abandoned and no task
 *      left.
 *
 * Exit status: 0 when every check held, 1 on a failed check, 2 on bad
 * arguments, 3 when the watchdog gave up.
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

#define US INT64_C(1000)
#define MS INT64_C(1000000)

#define REC_MAGIC 0x5CA7C311u
#define REC_DEAD  0xDEADD00Du

/* Plain pthreads that cancel victims handed to them through the mailbox. */
#define NFOREIGN 2
#define MAILBOX  64
/* Children a combinator round waits on. */
#define NKIDS 3
/* A healthy run finishes far sooner, even under TSan on a loaded machine. */
#define WATCHDOG_SECONDS 240

enum kind {
    K_AWAIT_FUTURE,
    K_AWAIT_TASK,
    K_SLEEP,
    K_YIELD,
    K_TO_THREAD,
    K_TIMEOUT,
    K_WAIT_FOR,
    K_GATHER,
    K_WAIT,
    K_AS_COMPLETED,
    K_TASKGROUP,
    K_SHIELD,
    K_LOCK,
    K_SEM,
    K_EVENT,
    K_COND,
    K_QUEUE,
    NKINDS
};

static const char *const kind_names[NKINDS] = {
    "await-future", "await-task", "sleep", "yield",        "to_thread", "timeout",
    "wait_for",     "gather",     "wait",  "as_completed", "taskgroup", "shield",
    "lock",         "sem",        "event", "cond",         "queue",
};

/* Cancellers of a round (bits). */
enum { C_TASK = 1, C_DRIVER = 2, C_FOREIGN = 4 };

/* What a victim that was not cancelled reports (its result). */
static int res_normal, res_timedout, res_group;

typedef struct round_rec {
    uint32_t magic;
    int kind;
    unsigned cancellers;
    uint64_t rng; /* the victim's own random stream */
    int yields;   /* canceller delays: yields, or (if sleep_us) a sleep */
    int sleep_us;
    atomic_bool started;
    weft_task_t *victim;
    /* helpers prepared by the driver */
    weft_future_t *fut;       /* K_AWAIT_FUTURE */
    weft_task_t *kids[NKIDS]; /* task children */
    int nkids;
    weft_event_t *event;
    weft_cond_t *cond;
    bool cond_flag;      /* under the condition's lock */
    weft_queue_t *queue; /* K_QUEUE: one slot */
    bool queue_put;      /* the victim puts into a full queue (else gets) */
    int queue_rc;
    void *queue_item;
    /* what the victim saw */
    void *value;
    /* A timeout was reported while a request was counted: one accepted
     * before the scope was entered and still undelivered merges with the
     * scope's own and is claimed as the timeout (asyncio does the same). */
    bool absorbed;
    /* what the cancellers saw */
    int task_rc, driver_rc;
    atomic_int foreign_rc;
    atomic_bool foreign_done;
} round_rec_t;

static struct {
    unsigned workers;
    unsigned long long iterations;
    uint64_t seed_base;
    weft_lock_t *lock;
    weft_sem_t *sem;
    _Atomic(round_rec_t *) mailbox[MAILBOX];
    atomic_bool stop_foreign;
    atomic_ullong next_round;
    atomic_int failures;
    atomic_ullong outcomes[NKINDS][2]; /* [kind][cancelled] */
    atomic_ullong accepted_late;       /* a canceller found the victim done */
    atomic_ullong cancelled_running;   /* cancelled after its body started */
    atomic_ullong to_thread_calls;
} g;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    if (atomic_fetch_add(&g.failures, 1) >= 10)
        return;
    va_list ap;
    va_start(ap, fmt);
    flockfile(stderr);
    fputs("stress_cancel: FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    funlockfile(stderr);
    va_end(ap);
}

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fail(__VA_ARGS__);                                                                     \
    } while (0)

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

static unsigned rnd(uint64_t *s, unsigned n)
{
    return (unsigned)(rng_next(s) >> 33) % n;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- helpers ------------------------------------------------------------------- */

/* A child: a few yields or a short sleep, then `arg` as its value. */
static int kid_body(void *arg, void **result)
{
    uintptr_t how = (uintptr_t)arg;
    int rc = (how & 1) ? weft_sleep((int64_t)(how % 7) * 20 * US) : weft_yield();
    if (rc != 0)
        return rc;
    *result = arg;
    return 0;
}

/* A child that fails after a yield (or ends cancelled). */
static int failing_kid_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    int rc = weft_yield();
    return rc != 0 ? rc : -EIO;
}

/* Completes a plain future after a few yields.  Holds its own reference
 * (completing needs one held through the call). */
static int completer_body(void *arg, void **result)
{
    (void)result;
    weft_future_t *f = arg;
    for (int i = 0; i < 2; i++)
        if (weft_yield() != 0)
            break;
    (void)weft_future_set_result(f, &res_normal); /* the victim may have cancelled it */
    weft_future_release(f);
    return 0;
}

/* Holds the shared lock or a semaphore permit for a moment. */
static int holder_body(void *arg, void **result)
{
    (void)result;
    bool lock = arg != NULL;
    int rc = lock ? weft_lock_acquire(g.lock) : weft_sem_acquire(g.sem);
    if (rc != 0) {
        fail("holder: acquire returned %s without being cancelled", weft_err_name(rc));
        return 0;
    }
    (void)weft_sleep(30 * US);
    rc = lock ? weft_lock_release(g.lock) : weft_sem_release(g.sem);
    EXPECT(rc == 0, "holder: release returned %s", weft_err_name(rc));
    return 0;
}

static int setter_body(void *arg, void **result)
{
    (void)result;
    round_rec_t *r = arg;
    (void)weft_sleep(20 * US);
    if (r->event != NULL) {
        EXPECT(weft_event_set(r->event) == 0, "event_set");
    } else {
        int rc = weft_cond_acquire(r->cond);
        EXPECT(rc == 0, "setter: cond_acquire returned %s", weft_err_name(rc));
        if (rc == 0) {
            r->cond_flag = true;
            EXPECT(weft_cond_notify_all(r->cond) >= 0, "notify_all");
            EXPECT(weft_cond_release(r->cond) == 0, "cond_release");
        }
    }
    return 0;
}

/* The other side of a K_QUEUE round, after a moment: gets the item that
 * fills the queue (the victim's put can then go in), or puts the one the
 * victim waits for. */
static int queue_helper_body(void *arg, void **result)
{
    (void)result;
    round_rec_t *r = arg;
    (void)weft_sleep(20 * US);
    if (r->queue_put) {
        void *item = NULL;
        int rc = weft_queue_get(r->queue, &item);
        EXPECT(rc == 0 && item == &res_group, "queue helper get: %s", weft_err_name(rc));
    } else {
        int rc = weft_queue_put(r->queue, &res_timedout);
        EXPECT(rc == 0, "queue helper put: %s", weft_err_name(rc));
    }
    return 0;
}

static bool cond_pred(void *arg)
{
    return ((round_rec_t *)arg)->cond_flag;
}

static int blocking_call(void *arg, void **result)
{
    (void)arg;
    atomic_fetch_add_explicit(&g.to_thread_calls, 1, memory_order_relaxed);
    sleep_ns(20 * US);
    *result = &res_normal;
    return 0;
}

/* ---- the victim ---------------------------------------------------------------- */

/* Turn a suspension point's outcome into the victim's: WEFT_ECANCELED
 * stays; anything else becomes 0 with a marker (so a request that comes
 * late still ends the task cancelled, check 1). */
static int end_with(int rc, void **result, void *marker)
{
    if (rc == WEFT_ECANCELED)
        return rc;
    *result = marker;
    return 0;
}

static int victim_body(void *arg, void **result)
{
    round_rec_t *r = arg;
    uint64_t *rng = &r->rng;
    int rc;
    atomic_store_explicit(&r->started, true, memory_order_relaxed);
    switch (r->kind) {
    case K_AWAIT_FUTURE:
        rc = weft_await(r->fut, &r->value);
        if (rc == 0)
            EXPECT(r->value == &res_normal, "await-future: wrong value");
        return end_with(rc, result, &res_normal);
    case K_AWAIT_TASK:
        rc = weft_await(weft_task_future(r->kids[0]), &r->value);
        if (rc == 0)
            EXPECT(r->value == (void *)(uintptr_t)3, "await-task: wrong value");
        return end_with(rc, result, &res_normal);
    case K_SLEEP:
        return end_with(weft_sleep((int64_t)rnd(rng, 200) * US), result, &res_normal);
    case K_YIELD:
        rc = 0;
        for (unsigned i = 1 + rnd(rng, 4); i > 0 && rc == 0; i--)
            rc = weft_yield();
        return end_with(rc, result, &res_normal);
    case K_TO_THREAD:
        rc = weft_to_thread(blocking_call, NULL, &r->value);
        if (rc == 0)
            EXPECT(r->value == &res_normal, "to_thread: wrong value");
        return end_with(rc, result, &res_normal);
    case K_TIMEOUT: {
        weft_timeout_t *to = NULL;
        rc = weft_timeout_enter((int64_t)rnd(rng, 150) * US, &to);
        if (rc != 0) {
            fail("timeout_enter: %s", weft_err_name(rc));
            return end_with(rc, result, &res_normal);
        }
        rc = weft_sleep((int64_t)rnd(rng, 150) * US);
        if (rnd(rng, 2) == 0 && rc == 0)
            rc = weft_yield();
        bool expired = weft_timeout_expired(to);
        rc = weft_timeout_exit(to, rc);
        EXPECT(rc == 0 || rc == WEFT_ECANCELED || rc == WEFT_ETIMEDOUT, "timeout: exit %s",
               weft_err_name(rc));
        if (rc == WEFT_ETIMEDOUT) {
            EXPECT(expired, "timeout: timed out without expiring");
            r->absorbed = weft_task_cancelling(weft_current_task()) > 0;
        }
        return end_with(rc, result, rc == WEFT_ETIMEDOUT ? &res_timedout : &res_normal);
    }
    case K_WAIT_FOR:
        rc = weft_wait_for(weft_task_future(r->kids[0]), (int64_t)rnd(rng, 4) * 50 * US, &r->value);
        EXPECT(rc == 0 || rc == WEFT_ECANCELED || rc == WEFT_ETIMEDOUT, "wait_for: %s",
               weft_err_name(rc));
        if (rc == 0)
            EXPECT(r->value == (void *)(uintptr_t)3, "wait_for: wrong value");
        if (rc == WEFT_ETIMEDOUT)
            r->absorbed = weft_task_cancelling(weft_current_task()) > 0;
        return end_with(rc, result, rc == WEFT_ETIMEDOUT ? &res_timedout : &res_normal);
    case K_GATHER: {
        weft_future_t *fs[NKIDS];
        for (int i = 0; i < r->nkids; i++)
            fs[i] = weft_task_future(r->kids[i]);
        rc = weft_gather(fs, (size_t)r->nkids, rnd(rng, 2) == 0);
        EXPECT(rc == 0 || rc == WEFT_ECANCELED, "gather: %s", weft_err_name(rc));
        if (rc == 0)
            for (int i = 0; i < r->nkids; i++)
                EXPECT(weft_future_done(fs[i]) && !weft_future_cancelled(fs[i]),
                       "gather: child %d not done with a value", i);
        return end_with(rc, result, &res_normal);
    }
    case K_WAIT: {
        weft_future_t *fs[NKIDS];
        bool done[NKIDS];
        for (int i = 0; i < r->nkids; i++)
            fs[i] = weft_task_future(r->kids[i]);
        int when = (int)rnd(rng, 3);
        int64_t timeout = rnd(rng, 3) == 0 ? -1 : (int64_t)rnd(rng, 100) * US;
        rc = weft_wait(fs, (size_t)r->nkids, when, timeout, done);
        EXPECT(rc >= 0 || rc == WEFT_ECANCELED, "wait: %s", weft_err_name(rc));
        if (rc >= 0) {
            int n = 0;
            for (int i = 0; i < r->nkids; i++)
                n += done[i];
            EXPECT(n == rc, "wait: count %d but %d flags", rc, n);
            EXPECT(timeout >= 0 || rc >= 1, "wait: returned %d without a timeout", rc);
        }
        return end_with(rc < 0 ? rc : 0, result, &res_normal);
    }
    case K_AS_COMPLETED: {
        weft_future_t *fs[NKIDS];
        for (int i = 0; i < r->nkids; i++)
            fs[i] = weft_task_future(r->kids[i]);
        weft_as_completed_t *it = NULL;
        int64_t timeout = rnd(rng, 2) == 0 ? -1 : (int64_t)rnd(rng, 100) * US;
        rc = weft_as_completed_new(fs, (size_t)r->nkids, timeout, &it);
        if (rc != 0) {
            fail("as_completed_new: %s", weft_err_name(rc));
            return end_with(rc, result, &res_normal);
        }
        int n = 0;
        weft_future_t *f;
        while ((rc = weft_as_completed_next(it, &f)) == 1) {
            EXPECT(weft_future_done(f), "as_completed: handed out a pending future");
            n++;
        }
        weft_as_completed_free(it);
        EXPECT(rc == 0 || rc == WEFT_ECANCELED || rc == WEFT_ETIMEDOUT, "as_completed: %s",
               weft_err_name(rc));
        if (rc == 0)
            EXPECT(n == r->nkids, "as_completed: %d of %d", n, r->nkids);
        return end_with(rc, result, rc == WEFT_ETIMEDOUT ? &res_timedout : &res_normal);
    }
    case K_TASKGROUP: {
        weft_taskgroup_t *tg = NULL;
        rc = weft_taskgroup_new(&tg);
        if (rc != 0) {
            fail("taskgroup_new: %s", weft_err_name(rc));
            return end_with(rc, result, &res_normal);
        }
        /* Two children, and in one round of four a third that fails: the
         * group then aborts and stops the body through a request it
         * withdraws again in exit. */
        bool failing = rnd(rng, 4) == 0;
        for (int i = 0; i < 3; i++) {
            if (i == 2 && !failing)
                break;
            int src = weft_taskgroup_spawn(tg, i == 2 ? failing_kid_body : kid_body,
                                           (void *)(uintptr_t)(1 + rnd(rng, 6)), NULL, NULL);
            EXPECT(src == 0 || src == WEFT_ECLOSED, "taskgroup_spawn: %s", weft_err_name(src));
        }
        rc = weft_sleep((int64_t)rnd(rng, 100) * US);
        rc = weft_taskgroup_exit(tg, rc);
        EXPECT(rc == 0 || rc == WEFT_ECANCELED || rc == WEFT_EGROUP, "taskgroup_exit: %s",
               weft_err_name(rc));
        if (rc == WEFT_EGROUP)
            EXPECT(failing && weft_taskgroup_error_count(tg) == 1, "taskgroup: %zu errors",
                   weft_taskgroup_error_count(tg));
        weft_taskgroup_free(tg);
        return end_with(rc, result, rc == WEFT_EGROUP ? &res_group : &res_normal);
    }
    case K_SHIELD: {
        weft_future_t *outer = NULL;
        rc = weft_shield(weft_task_future(r->kids[0]), &outer);
        if (rc != 0) {
            fail("shield: %s", weft_err_name(rc));
            return end_with(rc, result, &res_normal);
        }
        rc = weft_await(outer, &r->value);
        if (rc == 0)
            EXPECT(r->value == (void *)(uintptr_t)3, "shield: wrong value");
        weft_future_release(outer);
        return end_with(rc, result, &res_normal);
    }
    case K_LOCK:
    case K_SEM: {
        bool lock = r->kind == K_LOCK;
        rc = lock ? weft_lock_acquire(g.lock) : weft_sem_acquire(g.sem);
        EXPECT(rc == 0 || rc == WEFT_ECANCELED, "acquire: %s", weft_err_name(rc));
        if (rc == 0) {
            rc = weft_yield();
            int rrc = lock ? weft_lock_release(g.lock) : weft_sem_release(g.sem);
            EXPECT(rrc == 0, "release: %s", weft_err_name(rrc));
        }
        return end_with(rc, result, &res_normal);
    }
    case K_EVENT:
        rc = weft_event_wait(r->event);
        EXPECT(rc == 0 || rc == WEFT_ECANCELED, "event_wait: %s", weft_err_name(rc));
        if (rc == 0)
            EXPECT(weft_event_is_set(r->event), "event_wait returned unset");
        return end_with(rc, result, &res_normal);
    case K_COND:
        rc = weft_cond_acquire(r->cond);
        if (rc == 0) {
            rc = weft_cond_wait_for(r->cond, cond_pred, r);
            /* Held on return either way. */
            EXPECT(weft_cond_locked(r->cond), "cond_wait_for returned without the lock");
            if (rc == 0)
                EXPECT(r->cond_flag, "cond_wait_for returned 0 with pred false");
            EXPECT(weft_cond_release(r->cond) == 0, "cond_release");
        }
        EXPECT(rc == 0 || rc == WEFT_ECANCELED, "cond: %s", weft_err_name(rc));
        return end_with(rc, result, &res_normal);
    case K_QUEUE:
        if (r->queue_put)
            rc = weft_queue_put(r->queue, &res_normal);
        else
            rc = weft_queue_get(r->queue, &r->queue_item);
        r->queue_rc = rc;
        EXPECT(rc == 0 || rc == WEFT_ECANCELED, "queue: %s", weft_err_name(rc));
        return end_with(rc, result, &res_normal);
    default:
        fail("bad kind %d", r->kind);
        return 0;
    }
}

/* ---- cancellers ---------------------------------------------------------------- */

static void delay(const round_rec_t *r)
{
    if (r->sleep_us > 0) {
        (void)weft_sleep((int64_t)r->sleep_us * US);
        return;
    }
    for (int i = 0; i < r->yields; i++)
        (void)weft_yield();
}

static int canceller_body(void *arg, void **result)
{
    (void)result;
    round_rec_t *r = arg;
    delay(r);
    r->task_rc = weft_task_cancel(r->victim, "task");
    return 0;
}

static void *foreign_main(void *arg)
{
    uint64_t rng = g.seed_base ^ (UINT64_C(0x9E3779B97F4A7C15) * (1 + (uintptr_t)arg));
    unsigned idle = 0;
    while (!atomic_load_explicit(&g.stop_foreign, memory_order_acquire)) {
        bool found = false;
        for (unsigned i = 0; i < MAILBOX; i++) {
            unsigned slot = (i + rnd(&rng, MAILBOX)) % MAILBOX;
            round_rec_t *r = atomic_exchange_explicit(&g.mailbox[slot], NULL, memory_order_acq_rel);
            if (r == NULL)
                continue;
            found = true;
            if (r->magic != REC_MAGIC)
                fail("foreign: record magic %#x", r->magic);
            switch (rnd(&rng, 4)) {
            case 0:
                break;
            case 1:
                sched_yield();
                break;
            default:
                sleep_ns((int64_t)rnd(&rng, 30) * US);
            }
            atomic_store_explicit(&r->foreign_rc, weft_task_cancel(r->victim, "foreign"),
                                  memory_order_relaxed);
            /* release: publishes foreign_rc; pairs with the driver's acquire. */
            atomic_store_explicit(&r->foreign_done, true, memory_order_release);
        }
        if (found)
            idle = 0;
        else if (++idle > 64)
            sleep_ns(20 * US);
        else
            sched_yield();
    }
    return NULL;
}

static void post_to_foreign(round_rec_t *r, uint64_t *rng)
{
    for (;;) {
        unsigned slot = rnd(rng, MAILBOX);
        round_rec_t *expected = NULL;
        if (atomic_compare_exchange_strong_explicit(&g.mailbox[slot], &expected, r,
                                                    memory_order_acq_rel, memory_order_relaxed))
            return;
        (void)weft_yield();
    }
}

/* ---- one round ------------------------------------------------------------------- */

static weft_task_t *spawn_or_fail(weft_fn fn, void *arg)
{
    weft_task_t *t = NULL;
    int rc = weft_spawn(fn, arg, NULL, &t);
    if (rc != 0) {
        fail("spawn: %s", weft_err_name(rc));
        return NULL;
    }
    return t;
}

static void run_round(uint64_t *rng)
{
    round_rec_t *r = calloc(1, sizeof *r);
    if (r == NULL) {
        fail("out of memory");
        return;
    }
    r->magic = REC_MAGIC;
    r->kind = (int)rnd(rng, NKINDS);
    r->rng = rng_next(rng) | 1;
    r->yields = (int)rnd(rng, 4);
    r->sleep_us = rnd(rng, 3) == 0 ? 1 + (int)rnd(rng, 100) : 0;
    atomic_init(&r->started, false);
    r->task_rc = r->driver_rc = -1;
    atomic_init(&r->foreign_rc, -1);
    atomic_init(&r->foreign_done, false);
    unsigned c = rnd(rng, 8);
    r->cancellers = c == 0  ? 0
                    : c < 3 ? C_TASK
                    : c < 5 ? C_FOREIGN
                    : c < 6 ? C_DRIVER
                    : c < 7 ? (C_TASK | C_FOREIGN)
                            : (C_DRIVER | C_FOREIGN);
    /* to_thread costs a pool thread per concurrent call: keep it rarer. */
    if (r->kind == K_TO_THREAD && rnd(rng, 4) != 0)
        r->kind = K_YIELD;

    weft_task_t *helper = NULL;
    switch (r->kind) {
    case K_AWAIT_FUTURE:
        if (weft_future_new(NULL, &r->fut) != 0) {
            fail("future_new");
            break;
        }
        weft_future_retain(r->fut);
        helper = spawn_or_fail(completer_body, r->fut);
        break;
    case K_AWAIT_TASK:
    case K_WAIT_FOR:
    case K_SHIELD:
        r->nkids = 1;
        r->kids[0] = spawn_or_fail(kid_body, (void *)(uintptr_t)3);
        break;
    case K_GATHER:
    case K_WAIT:
    case K_AS_COMPLETED:
        r->nkids = 1 + (int)rnd(rng, NKIDS);
        for (int i = 0; i < r->nkids; i++)
            r->kids[i] = spawn_or_fail(kid_body, (void *)(uintptr_t)(1 + rnd(rng, 6)));
        break;
    case K_LOCK:
    case K_SEM:
        if (rnd(rng, 2) == 0)
            helper = spawn_or_fail(holder_body, r->kind == K_LOCK ? (void *)1 : NULL);
        break;
    case K_EVENT:
        if (weft_event_new(&r->event) != 0)
            fail("event_new");
        helper = spawn_or_fail(setter_body, r);
        break;
    case K_COND:
        if (weft_cond_new(NULL, &r->cond) != 0)
            fail("cond_new");
        helper = spawn_or_fail(setter_body, r);
        break;
    case K_QUEUE:
        r->queue_put = rnd(rng, 2) == 0;
        r->queue_rc = 1;
        if (weft_queue_new(WEFT_QUEUE_FIFO, 1, NULL, &r->queue) != 0) {
            fail("queue_new");
            r->kind = K_YIELD;
            break;
        }
        if (r->queue_put)
            EXPECT(weft_queue_put_nowait(r->queue, &res_group) == 0, "queue prefill");
        helper = spawn_or_fail(queue_helper_body, r);
        break;
    default:
        break;
    }

    r->victim = spawn_or_fail(victim_body, r);
    if (r->victim == NULL)
        return;
    weft_task_t *canceller = NULL;
    if (r->cancellers & C_TASK)
        canceller = spawn_or_fail(canceller_body, r);
    if (r->cancellers & C_FOREIGN)
        post_to_foreign(r, rng);
    if (r->cancellers & C_DRIVER) {
        delay(r);
        r->driver_rc = weft_task_cancel(r->victim, "driver");
    }

    /* The driver is never cancelled, so these awaits wait for real. */
    void *res = NULL;
    int vrc = weft_await(weft_task_future(r->victim), &res);
    if (canceller != NULL) {
        EXPECT(weft_await(weft_task_future(canceller), NULL) == 0, "canceller failed");
        weft_task_release(canceller);
    }
    if (r->cancellers & C_FOREIGN) {
        while (!atomic_load_explicit(&r->foreign_done, memory_order_acquire))
            (void)weft_sleep(20 * US);
    }
    if (helper != NULL) {
        EXPECT(weft_await(weft_task_future(helper), NULL) == 0, "helper failed");
        weft_task_release(helper);
    }
    for (int i = 0; i < r->nkids; i++) {
        int krc = weft_await(weft_task_future(r->kids[i]), NULL);
        EXPECT(krc == 0 || krc == WEFT_ECANCELED, "kid ended with %s", weft_err_name(krc));
        weft_task_release(r->kids[i]);
    }

    /* Judge the round, exactly once. */
    EXPECT(r->magic == REC_MAGIC, "round judged twice (magic %#x)", r->magic);
    r->magic = REC_DEAD;
    int frc = atomic_load_explicit(&r->foreign_rc, memory_order_relaxed);
    bool accepted = r->task_rc == 1 || r->driver_rc == 1 || frc == 1;
    bool cancelled = weft_future_cancelled(weft_task_future(r->victim));
    const char *kn = kind_names[r->kind];
    EXPECT(vrc == 0 || vrc == WEFT_ECANCELED, "%s: victim ended with %s", kn, weft_err_name(vrc));
    EXPECT(accepted == cancelled || (accepted && r->absorbed),
           "%s: cancellers %#x returned task %d driver %d foreign %d, but the victim %s", kn,
           r->cancellers, r->task_rc, r->driver_rc, frc,
           cancelled ? "ended cancelled" : "did not end cancelled");
    if (r->cancellers == 0)
        EXPECT(!cancelled, "%s: cancelled with no canceller", kn);
    if (vrc == 0)
        EXPECT(res == &res_normal || res == &res_timedout || res == &res_group,
               "%s: bad result marker %p", kn, res);
    if (r->cancellers != 0 && !accepted)
        atomic_fetch_add_explicit(&g.accepted_late, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&g.outcomes[r->kind][cancelled], 1, memory_order_relaxed);
    if (cancelled && atomic_load_explicit(&r->started, memory_order_relaxed))
        atomic_fetch_add_explicit(&g.cancelled_running, 1, memory_order_relaxed);

    weft_task_release(r->victim);
    if (r->fut != NULL) {
        (void)weft_future_set_result(r->fut, NULL); /* never completed if cancelled early */
        weft_future_release(r->fut);
    }
    if (r->event != NULL)
        weft_event_free(r->event);
    if (r->cond != NULL)
        weft_cond_free(r->cond);
    if (r->queue != NULL) {
        /* Exactly one copy of each item: the victim's op either happened
         * in full or not at all (an unstarted victim did nothing). */
        void *item = NULL;
        int grc = weft_queue_get_nowait(r->queue, &item);
        if (r->queue_put) {
            if (r->queue_rc == 0)
                EXPECT(grc == 0 && item == &res_normal, "queue: the put item is missing");
            else
                EXPECT(grc == WEFT_EQUEUEEMPTY, "queue: a cancelled put left %s",
                       grc == 0 ? "an item" : weft_err_name(grc));
        } else {
            if (r->queue_rc == 0)
                EXPECT(r->queue_item == &res_timedout && grc == WEFT_EQUEUEEMPTY,
                       "queue: item %s, queue %s", r->queue_item == &res_timedout ? "ok" : "bad",
                       weft_err_name(grc));
            else
                EXPECT(grc == 0 && item == &res_timedout, "queue: a cancelled get took the item");
        }
        weft_queue_free(r->queue);
    }
    free(r);
}

static int driver_body(void *arg, void **result)
{
    (void)result;
    uint64_t rng = g.seed_base ^ (UINT64_C(0xD1B54A32D192ED03) * (1 + (uintptr_t)arg));
    while (atomic_fetch_add_explicit(&g.next_round, 1, memory_order_relaxed) < g.iterations)
        run_round(&rng);
    return 0;
}

static int main_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *drivers[64];
    unsigned n = g.workers < 64 ? g.workers : 64;
    for (unsigned i = 0; i < n; i++)
        drivers[i] = spawn_or_fail(driver_body, (void *)(uintptr_t)i);
    for (unsigned i = 0; i < n; i++) {
        if (drivers[i] == NULL)
            continue;
        int rc = weft_await(weft_task_future(drivers[i]), NULL);
        EXPECT(rc == 0, "driver %u: %s", i, weft_err_name(rc));
        weft_task_release(drivers[i]);
    }
    return 0;
}

/* ---- main ---------------------------------------------------------------------------- */

static void *watchdog_main(void *arg)
{
    (void)arg;
    sleep_ns((int64_t)WATCHDOG_SECONDS * 1000 * MS);
    fprintf(stderr, "stress_cancel: watchdog: no progress after %d s (round %llu of %llu)\n",
            WATCHDOG_SECONDS, (unsigned long long)atomic_load(&g.next_round), g.iterations);
    fflush(stderr);
    _Exit(3);
}

static int count_visit_n;

static void count_visit(weft_task_t *t, void *arg)
{
    (void)t;
    (void)arg;
    count_visit_n++;
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
        iterations == 0) {
        fprintf(stderr, "usage: %s [workers (1-64) [iterations [seed]]]\n", argv[0]);
        return 2;
    }
    printf("seed=%llu\n", seed);
    fflush(stdout);
    g.workers = (unsigned)workers;
    g.iterations = iterations;
    g.seed_base = seed * UINT64_C(0x2545F4914F6CDD1D) + 1;

    pthread_t watchdog, foreign[NFOREIGN];
    if (pthread_create(&watchdog, NULL, watchdog_main, NULL) != 0) {
        fprintf(stderr, "stress_cancel: cannot start the watchdog\n");
        return 1;
    }
    pthread_detach(watchdog);
    int rc;
    if ((rc = weft_lock_new(&g.lock)) != 0 || (rc = weft_sem_new(2, true, &g.sem)) != 0) {
        fprintf(stderr, "stress_cancel: setup: %s\n", weft_err_name(rc));
        return 1;
    }
    for (uintptr_t i = 0; i < NFOREIGN; i++) {
        if (pthread_create(&foreign[i], NULL, foreign_main, (void *)i) != 0) {
            fprintf(stderr, "stress_cancel: cannot start a foreign thread\n");
            return 1;
        }
    }

    int64_t t0 = now_ns();
    weft_config_t cfg = {.workers = g.workers};
    weft_runtime_t *rt = NULL;
    if ((rc = weft_runtime_new(&cfg, &rt)) != 0) {
        fprintf(stderr, "stress_cancel: runtime_new: %s\n", weft_err_name(rc));
        return 1;
    }
    weft_future_t *f = NULL;
    if ((rc = weft_runtime_submit(rt, main_body, NULL, &f)) != 0) {
        fprintf(stderr, "stress_cancel: submit: %s\n", weft_err_name(rc));
        return 1;
    }
    EXPECT(weft_future_wait(f, -1) == 0, "waiting for the run");
    EXPECT(weft_future_result(f, NULL) == 0, "the run failed");
    weft_future_release(f);
    rc = weft_runtime_shutdown(rt, 30000 * MS);
    EXPECT(rc == 0, "shutdown: %s (tasks abandoned?)", weft_err_name(rc));
    EXPECT(weft_all_tasks(rt, count_visit, NULL) == 0 && count_visit_n == 0,
           "%d task(s) left after shutdown", count_visit_n);
    weft_runtime_free(rt);
    atomic_store_explicit(&g.stop_foreign, true, memory_order_release);
    for (int i = 0; i < NFOREIGN; i++)
        pthread_join(foreign[i], NULL);
    for (int i = 0; i < MAILBOX; i++)
        EXPECT(atomic_load(&g.mailbox[i]) == NULL, "mailbox slot %d still holds a round", i);
    EXPECT(!weft_lock_locked(g.lock), "the shared lock is still held");
    EXPECT(weft_sem_value(g.sem) == 2, "the semaphore has %d of 2 permits", weft_sem_value(g.sem));
    weft_lock_free(g.lock);
    weft_sem_free(g.sem);
    int64_t elapsed = now_ns() - t0;

    unsigned long long total = 0, cancelled = 0;
    for (int k = 0; k < NKINDS; k++) {
        total += g.outcomes[k][0] + g.outcomes[k][1];
        cancelled += g.outcomes[k][1];
    }
    EXPECT(total == g.iterations, "%llu rounds judged of %llu", total, g.iterations);
    printf("rounds=%llu cancelled=%llu (after starting: %llu) finished-before-cancel=%llu "
           "to_thread=%llu\n",
           total, cancelled, (unsigned long long)atomic_load(&g.cancelled_running),
           (unsigned long long)atomic_load(&g.accepted_late),
           (unsigned long long)atomic_load(&g.to_thread_calls));
    for (int k = 0; k < NKINDS; k++)
        printf("  %-13s %6llu done %6llu cancelled\n", kind_names[k],
               (unsigned long long)g.outcomes[k][0], (unsigned long long)g.outcomes[k][1]);
    printf("elapsed=%.2fs\n", (double)elapsed / 1e9);
    int failures = atomic_load(&g.failures);
    if (failures != 0) {
        printf("FAILED: %d check(s)\n", failures);
        return 1;
    }
    printf("OK\n");
    return 0;
}
