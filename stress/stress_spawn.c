/* stress_spawn — spawn storms on a multi-worker runtime.
 *
 * Usage: stress_spawn [workers [iterations [seed]]]
 *        (defaults: 4 workers, 20000 iterations, a time-based seed)
 *
 * One runtime with `workers` workers.  Three foreign pthreads start "root"
 * tasks, each in its own way:
 *   SUBMIT      weft_runtime_submit (through the inject queue);
 *   THREADSAFE  weft_run_coroutine_threadsafe on a random worker's loop;
 *   CALLBACK    weft_loop_call_soon_threadsafe onto a random worker's loop,
 *               whose callback calls weft_spawn (spawning from a loop
 *               callback) and hands the task's future back through a
 *               future the foreign thread blocks on.
 * Each keeps up to IN_FLIGHT roots going and blocks on the oldest with
 * weft_future_wait.
 *
 * Every task runs node_main on a `node`: a magic value, a 64-bit seed, a
 * depth and a run counter.  The seed alone decides what the node does, so
 * the expected outcome of any subtree can be computed without running it
 * (expect_value / expect_count):
 *   LEAF      (depth 0) yields 0-2 times, sometimes calls weft_all_tasks
 *             and checks that it saw itself; returns a value, or -EIO for
 *             about one leaf in sixteen;
 *   TREE      spawns 1-4 children one level down, yielding between spawns
 *             (so spawns come from whichever worker it migrated to), and
 *             awaits them in a random order;
 *   BURST     spawns 8-64 leaves back to back (a burst that can fill a run
 *             queue) and awaits them last to first;
 *   DETACHED  spawns 2-8 children one level down without awaiting them:
 *             adds a done callback to each, yields until every child is
 *             done and every callback ran, then reads each outcome with
 *             weft_future_result;
 *   EAGER     spawns 1-4 children one level down with the eager option,
 *             awaits them in order.
 * A parent checks every child: ran exactly once, magic intact, result equal
 * to the expected value (or -EIO for a failing leaf).  A node's value is
 * its own base value plus the values of its children that did not fail, so
 * a root's result checks its whole tree.
 *
 * Meanwhile an observer thread calls weft_all_tasks in a loop, keeps a few
 * visited tasks alive past the call through their futures, and reads their
 * names and cancellation counts.
 *
 * At the end: every root's result is right, the number of node runs equals
 * the number computed from the seeds, weft_all_tasks finds no task left,
 * and shutdown returns 0.
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

#define NODE_MAGIC UINT64_C(0x5BA3A5C0FFEE7A11)
#define NODE_DEAD  UINT64_C(0xDEADDEADDEADDEAD)

/* Roots are this deep: big enough trees for stealing to matter, small
 * enough that a root's stacks stay few (at most 4 + 16 + 4*64 children). */
#define ROOT_DEPTH 3
/* Node runs per iteration: 4 x 20000 = 80000 tasks at the CI size, about
 * 20 s under TSan with 8 workers on 2 cores. */
#define TASKS_PER_ITERATION 4
/* Roots each foreign thread keeps going at once. */
#define IN_FLIGHT 8
/* About one leaf in ALL_TASKS_ONE_IN calls weft_all_tasks. */
#define ALL_TASKS_ONE_IN 64
/* Observer: tasks kept alive past one weft_all_tasks call. */
#define OBSERVE_KEEP 8
/* Watchdog: a healthy run takes seconds, even under TSan on 2 cores. */
#define WATCHDOG_SECONDS 300

enum { K_LEAF, K_TREE, K_BURST, K_DETACHED, K_EAGER };
enum { HOW_SUBMIT, HOW_THREADSAFE, HOW_CALLBACK, HOW_COUNT };

/* ---- failures ------------------------------------------------------------ */

static atomic_int failures;

/* Print the first few failures and count all of them; any thread, any
 * task (stdio locks each call). */
#define FAIL(...)                                                                                  \
    do {                                                                                           \
        if (atomic_fetch_add(&failures, 1) < 20) {                                                 \
            flockfile(stderr);                                                                     \
            fprintf(stderr, "stress_spawn: FAILED at %s:%d: ", __FILE__, __LINE__);                \
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

/* ---- randomness ------------------------------------------------------------ */

/* xorshift64*: one stream per thread or task, for choices that do not
 * change any expected result (yields, orders, pacing). */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

/* splitmix64's finalizer: derives a node's decisions and its children's
 * seeds from its own seed, so that expected results can be recomputed. */
static uint64_t mix(uint64_t z)
{
    z += UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* ---- what a node does, from its seed alone -------------------------------- */

static unsigned node_kind(uint64_t seed, unsigned depth)
{
    if (depth == 0)
        return K_LEAF;
    return K_TREE + (unsigned)(mix(seed ^ 0x1111) % 4);
}

static unsigned node_fanout(uint64_t seed, unsigned kind)
{
    uint64_t r = mix(seed ^ 0x2222);
    switch (kind) {
    case K_TREE:
    case K_EAGER:
        return 1 + (unsigned)(r % 4);
    case K_BURST:
        return 8 + (unsigned)(r % 57);
    case K_DETACHED:
        return 2 + (unsigned)(r % 7);
    default:
        return 0;
    }
}

static unsigned child_depth(unsigned kind, unsigned depth)
{
    return kind == K_BURST ? 0 : depth - 1;
}

static uint64_t child_seed(uint64_t seed, unsigned i)
{
    return mix(seed + (uint64_t)(i + 1) * UINT64_C(0xD1B54A32D192ED03));
}

static bool leaf_fails(uint64_t seed)
{
    return mix(seed ^ 0x3333) % 16 == 0;
}

static uint64_t base_value(uint64_t seed)
{
    return mix(seed ^ 0x4444);
}

/* The result node_main must produce for (seed, depth); only leaves fail. */
static uint64_t expect_value(uint64_t seed, unsigned depth)
{
    unsigned kind = node_kind(seed, depth);
    uint64_t v = base_value(seed);
    if (kind == K_LEAF)
        return v;
    unsigned fan = node_fanout(seed, kind);
    unsigned cd = child_depth(kind, depth);
    for (unsigned i = 0; i < fan; i++) {
        uint64_t cs = child_seed(seed, i);
        if (cd == 0 && leaf_fails(cs))
            continue;
        v += expect_value(cs, cd);
    }
    return v;
}

/* How many tasks the subtree runs, itself included. */
static uint64_t expect_count(uint64_t seed, unsigned depth)
{
    unsigned kind = node_kind(seed, depth);
    if (kind == K_LEAF)
        return 1;
    unsigned fan = node_fanout(seed, kind);
    unsigned cd = child_depth(kind, depth);
    uint64_t n = 1;
    for (unsigned i = 0; i < fan; i++)
        n += expect_count(child_seed(seed, i), cd);
    return n;
}

/* ---- shared state -------------------------------------------------------- */

typedef struct node {
    uint64_t magic;
    uint64_t seed;
    unsigned depth;
    atomic_int runs;      /* node_main entries: exactly 1 */
    atomic_int callbacks; /* DETACHED: done callbacks of its children */
} node_t;

typedef struct root {
    node_t node;
    unsigned how;
    uint64_t expect;
    weft_future_t *f;       /* the root task's future, once started */
    weft_future_t *handoff; /* CALLBACK: carries f from the loop thread */
    weft_loop_t *loop;      /* THREADSAFE, CALLBACK: where it starts */
} root_t;

static struct {
    weft_runtime_t *rt;
    unsigned workers;
    weft_loop_t **loops;
    root_t *roots;
    size_t nroots;
    uint64_t expect_tasks;
    atomic_uint_fast64_t started;  /* node_main entries */
    atomic_uint_fast64_t finished; /* node_main returns */
    atomic_uint_fast64_t *ran_on;  /* per worker: nodes that started there */
    atomic_uint_fast64_t roots_done;
    atomic_uint_fast64_t inner_all_tasks;
    atomic_uint submitters_done;
    atomic_bool finished_run; /* watchdog off */
} G;

/* ---- nodes ------------------------------------------------------------------ */

static int node_main(void *arg, void **result);

static int worker_index(void)
{
    weft_loop_t *loop = weft_get_running_loop();
    for (unsigned i = 0; i < G.workers; i++)
        if (G.loops[i] == loop)
            return (int)i;
    return -1;
}

typedef struct self_visit {
    weft_task_t *self;
    int seen_self;
    int visited;
} self_visit_t;

static void visit_self(weft_task_t *t, void *arg)
{
    self_visit_t *v = arg;
    if (t == v->self)
        v->seen_self++;
    if (weft_task_get_name(t) == NULL)
        FAIL("weft_all_tasks visited a task without a name");
    v->visited++;
}

static int run_leaf(node_t *n, uint64_t *rng, void **result)
{
    unsigned yields = (unsigned)(rng_next(rng) % 3);
    for (unsigned i = 0; i < yields; i++) {
        int rc = weft_yield();
        EXPECT(rc == 0, "leaf: weft_yield: %s", weft_err_name(rc));
    }
    if (mix(n->seed ^ 0x5555) % ALL_TASKS_ONE_IN == 0) {
        /* A task that is running is not done: it must see itself. */
        self_visit_t v = {weft_current_task(), 0, 0};
        int rc = weft_all_tasks(weft_get_running_runtime(), visit_self, &v);
        EXPECT(rc == v.visited, "weft_all_tasks returned %d after %d visits", rc, v.visited);
        EXPECT(v.seen_self == 1, "weft_all_tasks from a task saw it %d times", v.seen_self);
        atomic_fetch_add_explicit(&G.inner_all_tasks, 1, memory_order_relaxed);
    }
    if (leaf_fails(n->seed))
        return -EIO;
    *result = (void *)(uintptr_t)base_value(n->seed);
    return 0;
}

static void on_child_done(weft_future_t *f, void *arg)
{
    node_t *parent = arg;
    EXPECT(weft_future_done(f), "done callback ran on a pending future");
    EXPECT(parent->magic == NODE_MAGIC, "done callback: parent magic %#" PRIx64, parent->magic);
    /* Last touch of parent: once the count is complete it may be freed. */
    atomic_fetch_add(&parent->callbacks, 1);
}

/* Check one child's outcome.  Returns what the child should add to its
 * parent's value, so that a wrong value is reported once, here, and not
 * again by every ancestor. */
static uint64_t check_child(const node_t *kid, int rc, void *value)
{
    EXPECT(kid->magic == NODE_MAGIC, "child magic %#" PRIx64, kid->magic);
    int runs = atomic_load(&kid->runs);
    EXPECT(runs == 1, "child (seed %#" PRIx64 ") ran %d times", kid->seed, runs);
    if (kid->depth == 0 && leaf_fails(kid->seed)) {
        EXPECT(rc == -EIO, "failing leaf: outcome %s, expected EIO", weft_err_name(rc));
        return 0;
    }
    uint64_t want = expect_value(kid->seed, kid->depth);
    if (rc != 0) {
        FAIL("child (seed %#" PRIx64 " depth %u): outcome %s", kid->seed, kid->depth,
             weft_err_name(rc));
        return want;
    }
    EXPECT((uint64_t)(uintptr_t)value == want,
           "child (seed %#" PRIx64 " depth %u): value %#" PRIx64 ", expected %#" PRIx64, kid->seed,
           kid->depth, (uint64_t)(uintptr_t)value, want);
    return want;
}

static int run_inner(node_t *n, unsigned kind, uint64_t *rng, void **result)
{
    unsigned fan = node_fanout(n->seed, kind);
    unsigned cd = child_depth(kind, n->depth);
    node_t *kids = calloc(fan, sizeof *kids);
    weft_task_t **tasks = calloc(fan, sizeof *tasks);
    unsigned *order = calloc(fan, sizeof *order);
    if (kids == NULL || tasks == NULL || order == NULL) {
        FAIL("out of memory");
        free(kids);
        free(tasks);
        free(order);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < fan; i++) {
        kids[i].magic = NODE_MAGIC;
        kids[i].seed = child_seed(n->seed, i);
        kids[i].depth = cd;
        atomic_init(&kids[i].runs, 0);
        atomic_init(&kids[i].callbacks, 0);
    }

    /* Spawn.  Names on some, to exercise the copy. */
    for (unsigned i = 0; i < fan; i++) {
        char name[32];
        weft_spawn_opts_t opts = {0};
        opts.eager = kind == K_EAGER;
        if (rng_next(rng) % 4 == 0) {
            snprintf(name, sizeof name, "node-%u-%u", n->depth, i);
            opts.name = name;
        }
        int rc = weft_spawn(node_main, &kids[i], &opts, &tasks[i]);
        if (rc != 0) {
            FAIL("weft_spawn (kind %u): %s", kind, weft_err_name(rc));
            tasks[i] = NULL;
        }
        /* A tree moves between its spawns, so children come from many
         * workers. */
        if (kind == K_TREE && rng_next(rng) % 2 == 0) {
            rc = weft_yield();
            EXPECT(rc == 0, "tree: weft_yield: %s", weft_err_name(rc));
        }
    }

    /* Collect. */
    for (unsigned i = 0; i < fan; i++)
        order[i] = kind == K_BURST ? fan - 1 - i : i;
    if (kind == K_TREE) {
        for (unsigned i = fan; i > 1; i--) {
            unsigned j = (unsigned)(rng_next(rng) % i);
            unsigned tmp = order[i - 1];
            order[i - 1] = order[j];
            order[j] = tmp;
        }
    }
    unsigned want_callbacks = 0;
    if (kind == K_DETACHED) {
        for (unsigned i = 0; i < fan; i++) {
            if (tasks[i] == NULL)
                continue;
            int rc = weft_future_add_done_callback(weft_task_future(tasks[i]), on_child_done, n);
            if (rc == 0)
                want_callbacks++;
            else
                FAIL("weft_future_add_done_callback: %s", weft_err_name(rc));
        }
        for (;;) {
            bool all_done = true;
            for (unsigned i = 0; i < fan && all_done; i++)
                if (tasks[i] != NULL && !weft_future_done(weft_task_future(tasks[i])))
                    all_done = false;
            if (all_done && (unsigned)atomic_load(&n->callbacks) == want_callbacks)
                break;
            int rc = weft_yield();
            if (rc != 0) {
                FAIL("detached: weft_yield: %s", weft_err_name(rc));
                break;
            }
        }
    }
    uint64_t sum = base_value(n->seed);
    for (unsigned k = 0; k < fan; k++) {
        unsigned i = order[k];
        if (tasks[i] == NULL)
            continue;
        void *value = NULL;
        int rc;
        if (kind == K_DETACHED)
            rc = weft_future_result(weft_task_future(tasks[i]), &value);
        else
            rc = weft_await(weft_task_future(tasks[i]), &value);
        sum += check_child(&kids[i], rc, value);
        weft_task_release(tasks[i]);
    }
    for (unsigned i = 0; i < fan; i++)
        kids[i].magic = NODE_DEAD;
    free(kids);
    free(tasks);
    free(order);
    *result = (void *)(uintptr_t)sum;
    return 0;
}

static int node_main(void *arg, void **result)
{
    node_t *n = arg;
    if (n->magic != NODE_MAGIC) {
        FAIL("node_main got a bad node (magic %#" PRIx64 ")", n->magic);
        return -EBADMSG;
    }
    int runs = atomic_fetch_add(&n->runs, 1);
    EXPECT(runs == 0, "node (seed %#" PRIx64 ") started %d times", n->seed, runs + 1);
    atomic_fetch_add_explicit(&G.started, 1, memory_order_relaxed);
    int w = worker_index();
    if (w < 0)
        FAIL("node_main runs outside the runtime's workers");
    else
        atomic_fetch_add_explicit(&G.ran_on[w], 1, memory_order_relaxed);

    uint64_t rng = n->seed | 1;
    unsigned kind = node_kind(n->seed, n->depth);
    int rc = kind == K_LEAF ? run_leaf(n, &rng, result) : run_inner(n, kind, &rng, result);
    atomic_fetch_add_explicit(&G.finished, 1, memory_order_relaxed);
    return rc;
}

/* ---- starting roots from foreign threads ---------------------------------- */

/* CALLBACK roots: runs on the chosen worker's loop thread. */
static void spawn_from_callback(void *arg)
{
    root_t *r = arg;
    /* Read before completing it: the foreign thread clears r->handoff as
     * soon as it sees the future done. */
    weft_future_t *handoff = r->handoff;
    EXPECT(weft_get_running_loop() == r->loop, "callback ran on another loop");
    weft_task_t *t = NULL;
    int rc = weft_spawn(node_main, &r->node, NULL, &t);
    if (rc != 0) {
        FAIL("weft_spawn from a loop callback: %s", weft_err_name(rc));
        rc = weft_future_set_error(handoff, rc, "spawn failed");
        EXPECT(rc == 0, "weft_future_set_error: %s", weft_err_name(rc));
        weft_future_release(handoff);
        return;
    }
    weft_future_t *f = weft_task_future(t);
    weft_future_retain(f); /* becomes the foreign thread's reference */
    weft_task_release(t);
    rc = weft_future_set_result(handoff, f);
    EXPECT(rc == 0, "weft_future_set_result (handoff): %s", weft_err_name(rc));
    /* The reference the foreign thread took for this callback: a
     * completer must own one until set_result returns, since the waiter
     * may drop its own as soon as it sees the future done. */
    weft_future_release(handoff);
}

static bool start_root(root_t *r)
{
    int rc;
    switch (r->how) {
    case HOW_SUBMIT:
        rc = weft_runtime_submit(G.rt, node_main, &r->node, &r->f);
        EXPECT(rc == 0, "weft_runtime_submit: %s", weft_err_name(rc));
        return rc == 0;
    case HOW_THREADSAFE:
        rc = weft_run_coroutine_threadsafe(r->loop, node_main, &r->node, &r->f);
        EXPECT(rc == 0, "weft_run_coroutine_threadsafe: %s", weft_err_name(rc));
        return rc == 0;
    default:
        rc = weft_future_new(r->loop, &r->handoff);
        if (rc != 0) {
            FAIL("weft_future_new from a foreign thread: %s", weft_err_name(rc));
            return false;
        }
        weft_future_retain(r->handoff); /* the callback's, for set_result */
        rc = weft_loop_call_soon_threadsafe(r->loop, spawn_from_callback, r, NULL);
        if (rc != 0) {
            FAIL("weft_loop_call_soon_threadsafe: %s", weft_err_name(rc));
            weft_future_release(r->handoff);
            weft_future_release(r->handoff);
            r->handoff = NULL;
            return false;
        }
        return true;
    }
}

static void finish_root(root_t *r)
{
    if (r->handoff != NULL) {
        int rc = weft_future_wait(r->handoff, -1);
        EXPECT(rc == 0, "weft_future_wait (handoff): %s", weft_err_name(rc));
        void *v = NULL;
        rc = weft_future_result(r->handoff, &v);
        weft_future_release(r->handoff);
        r->handoff = NULL;
        if (rc != 0)
            return; /* reported by the callback */
        r->f = v;
    }
    if (r->f == NULL)
        return;
    int rc = weft_future_wait(r->f, -1);
    EXPECT(rc == 0, "weft_future_wait (root): %s", weft_err_name(rc));
    void *v = NULL;
    rc = weft_future_result(r->f, &v);
    EXPECT(rc == 0, "root %td (how %u): outcome %s", r - G.roots, r->how, weft_err_name(rc));
    if (rc == 0)
        EXPECT((uint64_t)(uintptr_t)v == r->expect,
               "root %td (how %u): value %#" PRIx64 ", expected %#" PRIx64, r - G.roots, r->how,
               (uint64_t)(uintptr_t)v, r->expect);
    int runs = atomic_load(&r->node.runs);
    EXPECT(runs == 1, "root %td ran %d times", r - G.roots, runs);
    weft_future_release(r->f);
    r->f = NULL;
    r->node.magic = NODE_DEAD;
    atomic_fetch_add(&G.roots_done, 1);
}

typedef struct submitter {
    pthread_t tid;
    unsigned how;
    uint64_t rng;
} submitter_t;

static void *submitter_main(void *arg)
{
    submitter_t *s = arg;
    root_t *window[IN_FLIGHT];
    size_t head = 0, len = 0;
    for (size_t i = s->how; i < G.nroots; i += HOW_COUNT) {
        root_t *r = &G.roots[i];
        r->how = s->how;
        r->loop = G.loops[rng_next(&s->rng) % G.workers];
        if (len == IN_FLIGHT) {
            finish_root(window[head]);
            head = (head + 1) % IN_FLIGHT;
            len--;
        }
        if (start_root(r)) {
            window[(head + len) % IN_FLIGHT] = r;
            len++;
        }
    }
    while (len > 0) {
        finish_root(window[head]);
        head = (head + 1) % IN_FLIGHT;
        len--;
    }
    atomic_fetch_add(&G.submitters_done, 1);
    return NULL;
}

/* ---- observer: weft_all_tasks while everything runs ---------------------- */

typedef struct observe {
    weft_task_t *kept[OBSERVE_KEEP];
    unsigned nkept;
    int visited;
} observe_t;

static void observe_visit(weft_task_t *t, void *arg)
{
    observe_t *o = arg;
    o->visited++;
    if (weft_task_get_name(t) == NULL)
        FAIL("weft_all_tasks visited a task without a name");
    if (o->nkept < OBSERVE_KEEP) {
        /* Retaining is allowed inside the visit; releasing is not. */
        weft_future_retain(weft_task_future(t));
        o->kept[o->nkept++] = t;
    }
}

static uint64_t observer_calls, observer_visits;

static void *observer_main(void *arg)
{
    uint64_t rng = *(uint64_t *)arg;
    while (atomic_load(&G.submitters_done) < HOW_COUNT) {
        observe_t o = {0};
        int rc = weft_all_tasks(G.rt, observe_visit, &o);
        EXPECT(rc == o.visited, "weft_all_tasks returned %d after %d visits", rc, o.visited);
        for (unsigned i = 0; i < o.nkept; i++) {
            weft_task_t *t = o.kept[i];
            EXPECT(weft_task_get_name(t) != NULL, "kept task lost its name");
            EXPECT(weft_task_cancelling(t) == 0, "a task nobody cancelled reads cancelling %d",
                   weft_task_cancelling(t));
            weft_task_release(t);
        }
        observer_calls++;
        observer_visits += (uint64_t)o.visited;
        /* Pace: up to 200 us between calls, so the set is not locked all
         * the time. */
        struct timespec ts = {0, (long)(rng_next(&rng) % 200000)};
        nanosleep(&ts, NULL);
    }
    return NULL;
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
    fprintf(stderr,
            "stress_spawn: WATCHDOG: no end after %d s; roots done %" PRIu64 " of %zu, node "
            "runs started %" PRIu64 " finished %" PRIu64 " of %" PRIu64 "\n",
            WATCHDOG_SECONDS, (uint64_t)atomic_load(&G.roots_done), G.nroots,
            (uint64_t)atomic_load(&G.started), (uint64_t)atomic_load(&G.finished), G.expect_tasks);
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

static void count_visit(weft_task_t *t, void *arg)
{
    (void)t;
    (*(int *)arg)++;
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

    G.workers = (unsigned)workers;
    uint64_t rng = seed | 1;

    /* Roots until their trees add up to the target number of tasks; the
     * shapes come from the seed, so a seed replays the same work. */
    uint64_t target = iterations * TASKS_PER_ITERATION;
    size_t cap = 64;
    G.roots = calloc(cap, sizeof *G.roots);
    while (G.roots != NULL && G.expect_tasks < target) {
        if (G.nroots == cap) {
            root_t *nr = realloc(G.roots, 2 * cap * sizeof *nr);
            if (nr == NULL) {
                free(G.roots);
                G.roots = NULL;
                break;
            }
            memset(nr + cap, 0, cap * sizeof *nr);
            G.roots = nr;
            cap *= 2;
        }
        root_t *r = &G.roots[G.nroots++];
        r->node.magic = NODE_MAGIC;
        r->node.seed = rng_next(&rng);
        r->node.depth = ROOT_DEPTH;
        atomic_init(&r->node.runs, 0);
        atomic_init(&r->node.callbacks, 0);
        r->expect = expect_value(r->node.seed, ROOT_DEPTH);
        G.expect_tasks += expect_count(r->node.seed, ROOT_DEPTH);
    }
    G.loops = calloc(G.workers, sizeof *G.loops);
    G.ran_on = calloc(G.workers, sizeof *G.ran_on);
    if (G.roots == NULL || G.loops == NULL || G.ran_on == NULL) {
        fprintf(stderr, "stress_spawn: out of memory\n");
        return 1;
    }
    printf("roots=%zu tasks=%" PRIu64 "\n", G.nroots, G.expect_tasks);
    fflush(stdout);

    weft_config_t cfg = {.workers = G.workers};
    int rc = weft_runtime_new(&cfg, &G.rt);
    if (rc != 0) {
        fprintf(stderr, "stress_spawn: weft_runtime_new: %s\n", weft_strerror(rc));
        return 1;
    }
    for (unsigned i = 0; i < G.workers; i++)
        G.loops[i] = weft_runtime_loop(G.rt, i);

    pthread_t dog, observer;
    submitter_t subs[HOW_COUNT];
    uint64_t observer_seed = rng_next(&rng);
    if (pthread_create(&dog, NULL, watchdog_main, NULL) != 0 ||
        pthread_create(&observer, NULL, observer_main, &observer_seed) != 0) {
        fprintf(stderr, "stress_spawn: cannot start a thread\n");
        return 1;
    }
    int64_t t0 = now_ns();
    for (unsigned i = 0; i < HOW_COUNT; i++) {
        subs[i].how = i;
        subs[i].rng = rng_next(&rng) | 1;
        if (pthread_create(&subs[i].tid, NULL, submitter_main, &subs[i]) != 0) {
            fprintf(stderr, "stress_spawn: cannot start submitter %u\n", i);
            return 1;
        }
    }
    for (unsigned i = 0; i < HOW_COUNT; i++)
        pthread_join(subs[i].tid, NULL);
    pthread_join(observer, NULL);
    int64_t t1 = now_ns();

    uint64_t started = atomic_load(&G.started), finished = atomic_load(&G.finished);
    EXPECT(atomic_load(&G.roots_done) == G.nroots, "roots done %" PRIu64 " of %zu",
           (uint64_t)atomic_load(&G.roots_done), G.nroots);
    EXPECT(started == G.expect_tasks, "node runs started %" PRIu64 ", expected %" PRIu64, started,
           G.expect_tasks);
    EXPECT(finished == G.expect_tasks, "node runs finished %" PRIu64 ", expected %" PRIu64,
           finished, G.expect_tasks);
    int left = 0;
    rc = weft_all_tasks(G.rt, count_visit, &left);
    EXPECT(rc == 0 && left == 0, "weft_all_tasks after the storm: %d (visited %d)", rc, left);

    weft_worker_stats_t sum = {0};
    printf("worker  nodes      steps      steals  stolen   inject  lifo     parks\n");
    for (unsigned i = 0; i < G.workers; i++) {
        weft_worker_stats_t st;
        rc = weft_runtime_worker_stats(G.rt, i, &st);
        EXPECT(rc == 0, "weft_runtime_worker_stats: %s", weft_err_name(rc));
        printf("%6u %6" PRIu64 " %10" PRIu64 " %10" PRIu64 " %7" PRIu64 " %8" PRIu64 " %5" PRIu64
               " %9" PRIu64 "\n",
               i, (uint64_t)atomic_load(&G.ran_on[i]), st.tasks_run, st.steals, st.stolen_tasks,
               st.inject_pops, st.lifo_runs, st.parks);
        sum.tasks_run += st.tasks_run;
        sum.steals += st.steals;
        sum.stolen_tasks += st.stolen_tasks;
        sum.inject_pops += st.inject_pops;
    }
    /* Every node run is at least one step. */
    EXPECT(sum.tasks_run >= started, "task steps %" PRIu64 " < node runs %" PRIu64, sum.tasks_run,
           started);

    rc = weft_runtime_shutdown(G.rt, -1);
    EXPECT(rc == 0, "weft_runtime_shutdown: %s", weft_err_name(rc));
    weft_runtime_free(G.rt);
    atomic_store(&G.finished_run, true);
    pthread_join(dog, NULL);

    printf("storm: %.1f ms, %" PRIu64 " tasks, %" PRIu64 " steps, %" PRIu64 " steals (%" PRIu64
           " tasks), all_tasks: %" PRIu64 " observer calls (%" PRIu64 " visits), %" PRIu64
           " from tasks\n",
           (double)(t1 - t0) / 1e6, started, sum.tasks_run, sum.steals, sum.stolen_tasks,
           observer_calls, observer_visits, (uint64_t)atomic_load(&G.inner_all_tasks));
    free(G.roots);
    free(G.loops);
    free(G.ran_on);

    int nf = atomic_load(&failures);
    if (nf != 0) {
        printf("FAILED: %d check(s)\n", nf);
        return 1;
    }
    printf("OK\n");
    return 0;
}
