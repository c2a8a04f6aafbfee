/* stress_steal — steal storms: run queues that overflow, idle workers that
 * must steal.
 *
 * Usage: stress_steal [workers [iterations [seed]]]
 *        (defaults: 4 workers, 20000 iterations, a time-based seed)
 *
 * Built against its own copy of the library with a 16-slot run-queue ring
 * (CMakeLists.txt, weft_smallring), so a burst of spawns overflows the ring
 * into the inject queue and thieves take half of a small ring at a time.
 *
 * The main thread runs rounds.  Each round submits 1-3 "flooders" with
 * weft_runtime_submit and blocks on them.  A flooder spawns 17-256 children
 * back to back — more than the ring holds — and then, without suspending,
 * spins (sched_yield) until its children have started or SPIN_MAX spins
 * passed: its own worker is busy, so until it awaits, every child that
 * runs was stolen or taken from the inject queue by another worker.  Then
 * it awaits every child in order.  A child yields once sometimes (a requeue
 * into whichever ring it is on now) and sometimes spawns and awaits one
 * grandchild (a spawn into a thief's ring).
 *
 * What every task is going to do is planned from the seed before the run,
 * and each has a slot: a magic value, a run counter and the worker it ran
 * on.  Checks: every task ran exactly once (counter 1, magic intact), every
 * await returns the value its child was planned to return, and after the
 * run the workers' counters show steals (with more than one worker) and
 * overflow (inject-queue pops beyond the flooders that were submitted
 * there).
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

#include "sched/runq.h" /* WEFT__RUNQ_CAP: which ring this build has */

_Static_assert(WEFT__RUNQ_CAP <= 32, "stress_steal must be built against the small-ring library "
                                     "(weft_smallring in CMakeLists.txt)");

#define SLOT_MAGIC    0x57EA1C0Du
#define CHILD_MAGIC   0xC41DF00Du
#define FLOODER_MAGIC 0xF100D3E5u

/* Children per flooder: from just over the ring to 16 rings' worth. */
#define MIN_CHILDREN (WEFT__RUNQ_CAP + 1u)
#define MAX_CHILDREN 256u
/* Planned tasks per iteration: 3 x 20000 = 60000 at the CI size, about
 * 10 s under TSan with 8 workers on 2 cores. */
#define TASKS_PER_ITERATION 3
/* A flooder gives thieves this many sched_yield()s to start its children
 * before it awaits them itself.  Ends early once all have started. */
#define SPIN_MAX 2000
/* Watchdog: a healthy run takes seconds, even under TSan on 2 cores. */
#define WATCHDOG_SECONDS 300

/* ---- failures ------------------------------------------------------------ */

static atomic_int failures;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        if (atomic_fetch_add(&failures, 1) < 20) {                                                 \
            flockfile(stderr);                                                                     \
            fprintf(stderr, "stress_steal: FAILED at %s:%d: ", __FILE__, __LINE__);                \
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

/* ---- randomness (xorshift64*, planned on the main thread) ----------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

/* ---- the plan ---------------------------------------------------------------- */

/* One per task: the consumed-once record. */
typedef struct slot {
    uint32_t magic;
    atomic_int runs;
    atomic_int worker; /* where it ran; -1 until then */
} slot_t;

struct flooder;

typedef struct child {
    uint32_t magic;
    uint32_t id;     /* slot */
    uint32_t gc_id;  /* the grandchild's slot, when has_gc */
    bool yield_once; /* weft_yield once after starting */
    bool has_gc;     /* spawn and await one grandchild */
    struct flooder *parent;
} child_t;

typedef struct flooder {
    uint32_t magic;
    uint32_t id; /* slot */
    uint32_t n;  /* children */
    child_t *kids;
    weft_future_t *f;
    int home;              /* worker it spawned from (written by itself) */
    atomic_bool spinning;  /* spawned everything, not yet awaiting */
    atomic_uint started;   /* children that began */
    atomic_uint elsewhere; /* ... on another worker while it spun */
    unsigned spins;        /* sched_yield()s it made */
} flooder_t;

static struct {
    weft_runtime_t *rt;
    unsigned workers;
    weft_loop_t **loops;
    slot_t *slots;
    uint32_t nslots;
    atomic_uint_fast64_t ran; /* tasks that began */
    atomic_bool finished_run;
    uint64_t flooders_done, flooders_total;
} G;

static int worker_index(void)
{
    weft_loop_t *loop = weft_get_running_loop();
    for (unsigned i = 0; i < G.workers; i++)
        if (G.loops[i] == loop)
            return (int)i;
    return -1;
}

/* Consumed-once: the first run claims the slot; any other is a failure. */
static int mark_slot(uint32_t id, const char *what)
{
    if (id >= G.nslots) {
        FAIL("%s: slot %u out of range", what, id);
        return -1;
    }
    slot_t *s = &G.slots[id];
    EXPECT(s->magic == SLOT_MAGIC, "%s %u: slot magic %#x", what, id, s->magic);
    int runs = atomic_fetch_add(&s->runs, 1);
    EXPECT(runs == 0, "%s %u ran %d times", what, id, runs + 1);
    int w = worker_index();
    EXPECT(w >= 0, "%s %u runs outside the runtime's workers", what, id);
    atomic_store(&s->worker, w);
    atomic_fetch_add_explicit(&G.ran, 1, memory_order_relaxed);
    return w;
}

static uintptr_t planned_value(uint32_t magic, uint32_t id)
{
    return (uintptr_t)magic << 32 | id;
}

/* ---- tasks -------------------------------------------------------------------- */

static int grandchild_main(void *arg, void **result)
{
    const child_t *c = arg;
    mark_slot(c->gc_id, "grandchild");
    *result = (void *)planned_value(SLOT_MAGIC, c->gc_id);
    return 0;
}

static int child_main(void *arg, void **result)
{
    child_t *c = arg;
    if (c->magic != CHILD_MAGIC) {
        FAIL("child_main got a bad child (magic %#x)", c->magic);
        return -EBADMSG;
    }
    int w = mark_slot(c->id, "child");
    flooder_t *fl = c->parent;
    atomic_fetch_add(&fl->started, 1);
    /* While the flooder spins its worker runs nothing else, so a child
     * starting elsewhere was stolen or came through the inject queue. */
    if (atomic_load(&fl->spinning) && w != fl->home)
        atomic_fetch_add(&fl->elsewhere, 1);
    if (c->yield_once) {
        int rc = weft_yield();
        EXPECT(rc == 0, "child: weft_yield: %s", weft_err_name(rc));
    }
    if (c->has_gc) {
        weft_task_t *t = NULL;
        int rc = weft_spawn(grandchild_main, c, NULL, &t);
        if (rc != 0) {
            FAIL("weft_spawn (grandchild): %s", weft_err_name(rc));
        } else {
            void *v = NULL;
            rc = weft_await(weft_task_future(t), &v);
            EXPECT(rc == 0, "await grandchild: %s", weft_err_name(rc));
            EXPECT((uintptr_t)v == planned_value(SLOT_MAGIC, c->gc_id),
                   "grandchild %u returned %#" PRIxPTR, c->gc_id, (uintptr_t)v);
            EXPECT(atomic_load(&G.slots[c->gc_id].runs) == 1, "grandchild %u: %d runs", c->gc_id,
                   atomic_load(&G.slots[c->gc_id].runs));
            weft_task_release(t);
        }
    }
    *result = (void *)planned_value(CHILD_MAGIC, c->id);
    return 0;
}

static int flooder_main(void *arg, void **result)
{
    flooder_t *fl = arg;
    if (fl->magic != FLOODER_MAGIC) {
        FAIL("flooder_main got a bad flooder (magic %#x)", fl->magic);
        return -EBADMSG;
    }
    /* Its children read `home` after they were queued, so queuing
     * publishes it. */
    fl->home = mark_slot(fl->id, "flooder");
    weft_task_t **tasks = calloc(fl->n, sizeof *tasks);
    if (tasks == NULL) {
        FAIL("out of memory");
        return -ENOMEM;
    }
    atomic_store(&fl->spinning, true);
    /* Back to back, no suspension: the ring fills and overflows. */
    for (uint32_t i = 0; i < fl->n; i++) {
        int rc = weft_spawn(child_main, &fl->kids[i], NULL, &tasks[i]);
        if (rc != 0) {
            FAIL("weft_spawn (child): %s", weft_err_name(rc));
            tasks[i] = NULL;
        }
    }
    unsigned spins = 0;
    while (atomic_load(&fl->started) < fl->n && spins < SPIN_MAX) {
        sched_yield();
        spins++;
    }
    fl->spins = spins;
    atomic_store(&fl->spinning, false);

    uint32_t ok = 0;
    for (uint32_t i = 0; i < fl->n; i++) {
        if (tasks[i] == NULL)
            continue;
        void *v = NULL;
        int rc = weft_await(weft_task_future(tasks[i]), &v);
        const child_t *c = &fl->kids[i];
        if (rc != 0)
            FAIL("await child %u: %s", c->id, weft_err_name(rc));
        else if ((uintptr_t)v != planned_value(CHILD_MAGIC, c->id))
            FAIL("child %u returned %#" PRIxPTR, c->id, (uintptr_t)v);
        else
            ok++;
        int runs = atomic_load(&G.slots[c->id].runs);
        EXPECT(runs == 1, "child %u: %d runs after its await", c->id, runs);
        weft_task_release(tasks[i]);
    }
    free(tasks);
    *result = (void *)(uintptr_t)ok;
    return 0;
}

/* ---- watchdog -------------------------------------------------------------- */

static void *watchdog_main(void *arg)
{
    (void)arg;
    for (int tick = 0; tick < WATCHDOG_SECONDS * 10; tick++) {
        if (atomic_load(&G.finished_run))
            return NULL;
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "stress_steal: WATCHDOG: no end after %d s; tasks begun %" PRIu64 " of %u\n",
            WATCHDOG_SECONDS, (uint64_t)atomic_load(&G.ran), G.nslots);
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

typedef struct round {
    unsigned nflooders;
    flooder_t fl[3];
} round_t;

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
    printf("workers=%" PRIu64 " iterations=%" PRIu64 " ring=%u\n", workers, iterations,
           (unsigned)WEFT__RUNQ_CAP);
    fflush(stdout);

    G.workers = (unsigned)workers;
    uint64_t rng = seed | 1;

    /* ---- plan every task from the seed ---- */
    uint64_t target = iterations * TASKS_PER_ITERATION;
    size_t nrounds = 0, cap_rounds = 64;
    round_t *rounds = calloc(cap_rounds, sizeof *rounds);
    uint32_t nslots = 0;
    while (rounds != NULL && nslots < target) {
        if (nrounds == cap_rounds) {
            round_t *nr = realloc(rounds, 2 * cap_rounds * sizeof *nr);
            if (nr == NULL) {
                free(rounds);
                rounds = NULL;
                break;
            }
            memset(nr + cap_rounds, 0, cap_rounds * sizeof *nr);
            rounds = nr;
            cap_rounds *= 2;
        }
        round_t *r = &rounds[nrounds++];
        r->nflooders = 1 + (unsigned)(rng_next(&rng) % 3);
        for (unsigned k = 0; k < r->nflooders; k++) {
            flooder_t *fl = &r->fl[k];
            fl->magic = FLOODER_MAGIC;
            fl->id = nslots++;
            fl->n = MIN_CHILDREN + (uint32_t)(rng_next(&rng) % (MAX_CHILDREN - MIN_CHILDREN + 1));
            fl->kids = calloc(fl->n, sizeof *fl->kids);
            if (fl->kids == NULL) {
                fprintf(stderr, "stress_steal: out of memory\n");
                return 1;
            }
            for (uint32_t i = 0; i < fl->n; i++) {
                child_t *c = &fl->kids[i];
                uint64_t x = rng_next(&rng);
                c->magic = CHILD_MAGIC;
                c->id = nslots++;
                c->yield_once = x % 4 == 0;
                c->has_gc = (x >> 8) % 8 == 0;
                if (c->has_gc)
                    c->gc_id = nslots++;
            }
            G.flooders_total++;
        }
    }
    /* Now that `rounds` stopped moving: children point at their flooder. */
    for (size_t ri = 0; rounds != NULL && ri < nrounds; ri++) {
        for (unsigned k = 0; k < rounds[ri].nflooders; k++) {
            flooder_t *fl = &rounds[ri].fl[k];
            atomic_init(&fl->spinning, false);
            atomic_init(&fl->started, 0);
            atomic_init(&fl->elsewhere, 0);
            for (uint32_t i = 0; i < fl->n; i++)
                fl->kids[i].parent = fl;
        }
    }
    G.nslots = nslots;
    G.slots = calloc(nslots, sizeof *G.slots);
    G.loops = calloc(G.workers, sizeof *G.loops);
    if (rounds == NULL || G.slots == NULL || G.loops == NULL) {
        fprintf(stderr, "stress_steal: out of memory\n");
        return 1;
    }
    for (uint32_t i = 0; i < nslots; i++) {
        G.slots[i].magic = SLOT_MAGIC;
        atomic_init(&G.slots[i].runs, 0);
        atomic_init(&G.slots[i].worker, -1);
    }
    printf("rounds=%zu flooders=%" PRIu64 " tasks=%u\n", nrounds, G.flooders_total, nslots);
    fflush(stdout);

    weft_config_t cfg = {.workers = G.workers};
    int rc = weft_runtime_new(&cfg, &G.rt);
    if (rc != 0) {
        fprintf(stderr, "stress_steal: weft_runtime_new: %s\n", weft_strerror(rc));
        return 1;
    }
    for (unsigned i = 0; i < G.workers; i++)
        G.loops[i] = weft_runtime_loop(G.rt, i);
    pthread_t dog;
    if (pthread_create(&dog, NULL, watchdog_main, NULL) != 0) {
        fprintf(stderr, "stress_steal: cannot start the watchdog\n");
        return 1;
    }

    /* ---- run: one round at a time, so workers also go idle in between
     * and must be woken ---- */
    int64_t t0 = now_ns();
    uint64_t submitted = 0, elsewhere = 0, spins = 0, spun_out = 0;
    for (size_t ri = 0; ri < nrounds; ri++) {
        round_t *r = &rounds[ri];
        for (unsigned k = 0; k < r->nflooders; k++) {
            flooder_t *fl = &r->fl[k];
            rc = weft_runtime_submit(G.rt, flooder_main, fl, &fl->f);
            if (rc != 0) {
                FAIL("weft_runtime_submit: %s", weft_err_name(rc));
                fl->f = NULL;
            } else {
                submitted++;
            }
        }
        for (unsigned k = 0; k < r->nflooders; k++) {
            flooder_t *fl = &r->fl[k];
            if (fl->f == NULL)
                continue;
            rc = weft_future_wait(fl->f, -1);
            EXPECT(rc == 0, "weft_future_wait: %s", weft_err_name(rc));
            void *v = NULL;
            rc = weft_future_result(fl->f, &v);
            EXPECT(rc == 0, "flooder %u: outcome %s", fl->id, weft_err_name(rc));
            EXPECT(rc != 0 || (uintptr_t)v == fl->n, "flooder %u: %" PRIuPTR " of %u children ok",
                   fl->id, (uintptr_t)v, fl->n);
            weft_future_release(fl->f);
            fl->f = NULL;
            elsewhere += atomic_load(&fl->elsewhere);
            spins += fl->spins;
            spun_out += fl->spins == SPIN_MAX;
            G.flooders_done++;
        }
    }
    int64_t t1 = now_ns();

    /* ---- every task ran exactly once ---- */
    uint64_t missing = 0, twice = 0;
    for (uint32_t i = 0; i < nslots; i++) {
        int runs = atomic_load(&G.slots[i].runs);
        if (runs == 0 && missing++ < 5)
            FAIL("task %u never ran", i);
        if (runs > 1 && twice++ < 5)
            FAIL("task %u ran %d times", i, runs);
    }
    uint64_t ran = atomic_load(&G.ran);
    EXPECT(ran == nslots, "tasks begun %" PRIu64 ", planned %u", ran, nslots);

    weft_worker_stats_t sum = {0};
    printf("worker      steps   steals   stolen   inject   lifo    parks\n");
    for (unsigned i = 0; i < G.workers; i++) {
        weft_worker_stats_t st;
        rc = weft_runtime_worker_stats(G.rt, i, &st);
        EXPECT(rc == 0, "weft_runtime_worker_stats: %s", weft_err_name(rc));
        printf("%6u %10" PRIu64 " %8" PRIu64 " %8" PRIu64 " %8" PRIu64 " %6" PRIu64 " %8" PRIu64
               "\n",
               i, st.tasks_run, st.steals, st.stolen_tasks, st.inject_pops, st.lifo_runs, st.parks);
        sum.tasks_run += st.tasks_run;
        sum.steals += st.steals;
        sum.stolen_tasks += st.stolen_tasks;
        sum.inject_pops += st.inject_pops;
    }
    /* Every steal batch takes at least one task. */
    EXPECT(sum.stolen_tasks >= sum.steals, "stolen tasks %" PRIu64 " < steal batches %" PRIu64,
           sum.stolen_tasks, sum.steals);
    /* Idle workers next to a busy one with a full ring must steal; over a
     * whole run of rounds that is not left to chance. */
    if (G.workers > 1)
        EXPECT(sum.steals > 0, "no steals at all with %u workers", G.workers);
    /* Only the flooders were submitted through the inject queue; each is
     * popped once.  Every further pop is a task a full ring moved there. */
    uint64_t overflow = sum.inject_pops >= submitted ? sum.inject_pops - submitted : 0;
    EXPECT(sum.inject_pops >= submitted, "inject pops %" PRIu64 " < submitted %" PRIu64,
           sum.inject_pops, submitted);
    EXPECT(overflow > 0, "no overflow to the inject queue with a %u-slot ring",
           (unsigned)WEFT__RUNQ_CAP);

    rc = weft_runtime_shutdown(G.rt, -1);
    EXPECT(rc == 0, "weft_runtime_shutdown: %s", weft_err_name(rc));
    weft_runtime_free(G.rt);
    atomic_store(&G.finished_run, true);
    pthread_join(dog, NULL);

    printf("steal storm: %.1f ms, %u tasks, %" PRIu64 " steps, steals=%" PRIu64 " (%" PRIu64
           " tasks), overflow pops=%" PRIu64 ", children started elsewhere while "
           "their flooder spun=%" PRIu64 ", spins=%" PRIu64 " (%" PRIu64 " flooders spun out)\n",
           (double)(t1 - t0) / 1e6, nslots, sum.tasks_run, sum.steals, sum.stolen_tasks, overflow,
           elsewhere, spins, spun_out);

    for (size_t ri = 0; ri < nrounds; ri++)
        for (unsigned k = 0; k < rounds[ri].nflooders; k++)
            free(rounds[ri].fl[k].kids);
    free(rounds);
    free(G.slots);
    free(G.loops);

    int nf = atomic_load(&failures);
    if (nf != 0) {
        printf("FAILED: %d check(s)\n", nf);
        return 1;
    }
    printf("OK\n");
    return 0;
}
