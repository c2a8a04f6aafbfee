/* stress_runq — work-stealing run queues under real parallelism.
 *
 * usage: stress_runq [workers] [iterations] [seed]
 *
 * Built with a 16-slot ring (CMakeLists.txt) so that overflow to the inject
 * queue and stealing happen constantly.  Each worker thread owns a run
 * queue; it runs items from its own queue, then the inject queue, then
 * steals half of a random victim's queue.  Running an item "spawns" up to
 * two new items into the runner's queue until `iterations` items exist.
 * Every item carries a magic value and a consumed-once flag: an item run
 * twice, never run, or corrupted fails the program.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sched/runq.h"

#define MAGIC 0x57e4f7a5c0ffee11ull

typedef struct item {
    weft_runnable_t r;
    uint64_t magic;
    atomic_int consumed;
    uint32_t id;
} item_t;

typedef struct worker {
    weft_runq_t q;
    pthread_t thread;
    unsigned index;
    uint64_t rng;
    uint64_t ran, stolen_batches, from_inject;
} worker_t;

static item_t *items;
static uint32_t total;
static atomic_uint next_id; /* items created so far */
static atomic_uint done;    /* items run so far */
static atomic_int failures;
static weft_inject_t inject;
static worker_t *workers;
static unsigned n_workers;

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void fail(const char *what, uint32_t id)
{
    if (atomic_fetch_add(&failures, 1) == 0)
        fprintf(stderr, "stress_runq: FAIL: %s (item %u)\n", what, id);
}

static void spawn(worker_t *w)
{
    /* Relaxed: ids only need to be unique; the item is published by the
     * runq push (release) that follows. */
    uint32_t id = atomic_fetch_add_explicit(&next_id, 1, memory_order_relaxed);
    if (id >= total)
        return;
    item_t *it = &items[id];
    it->magic = MAGIC;
    it->id = id;
    weft__runq_push(&w->q, &it->r, &inject);
}

static void run_item(worker_t *w, weft_runnable_t *r)
{
    item_t *it = (item_t *)r;
    if (it->magic != MAGIC)
        fail("bad magic", it->id);
    if (atomic_exchange(&it->consumed, 1) != 0)
        fail("item ran twice", it->id);
    w->ran++;
    atomic_fetch_add_explicit(&done, 1, memory_order_relaxed);
    unsigned kids = (unsigned)(xorshift(&w->rng) % 3); /* 0..2: the queue grows and shrinks */
    for (unsigned i = 0; i < kids; i++)
        spawn(w);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    for (int i = 0; i < 4; i++)
        spawn(w);
    unsigned idle = 0;
    while (atomic_load_explicit(&done, memory_order_relaxed) < total &&
           atomic_load(&failures) == 0) {
        weft_runnable_t *r = weft__runq_pop(&w->q);
        if (r == NULL && (r = weft__inject_pop(&inject)) != NULL)
            w->from_inject++;
        if (r == NULL && n_workers > 1) {
            unsigned v = (unsigned)(xorshift(&w->rng) % n_workers);
            if (v != w->index && (r = weft__runq_steal_into(&workers[v].q, &w->q)) != NULL)
                w->stolen_batches++;
        }
        if (r == NULL) {
            /* Nothing anywhere: make sure the run can finish even when
             * every live item ran without children. */
            if (++idle % 64 == 0)
                spawn(w);
            sched_yield();
            continue;
        }
        idle = 0;
        run_item(w, r);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    n_workers = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 4;
    total = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 20000;
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : (uint64_t)time(NULL);
    printf("seed=%llu workers=%u iterations=%u ring=%u\n", (unsigned long long)seed, n_workers,
           total, WEFT__RUNQ_CAP);
    fflush(stdout);
    if (n_workers == 0 || total == 0) {
        fprintf(stderr, "stress_runq: workers and iterations must be > 0\n");
        return 2;
    }
    items = calloc(total, sizeof *items);
    workers = calloc(n_workers, sizeof *workers);
    if (items == NULL || workers == NULL)
        return 2;
    weft__inject_init(&inject);
    for (unsigned i = 0; i < n_workers; i++) {
        workers[i].index = i;
        workers[i].rng = seed * 0x9E3779B97F4A7C15ull + i + 1;
        weft__runq_init(&workers[i].q);
    }
    for (unsigned i = 0; i < n_workers; i++)
        pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
    uint64_t ran = 0, steals = 0, injected = 0;
    for (unsigned i = 0; i < n_workers; i++) {
        pthread_join(workers[i].thread, NULL);
        ran += workers[i].ran;
        steals += workers[i].stolen_batches;
        injected += workers[i].from_inject;
    }
    if (atomic_load(&failures) == 0) {
        if (ran != total)
            fail("run count differs from item count", (uint32_t)ran);
        for (uint32_t i = 0; i < total; i++)
            if (atomic_load(&items[i].consumed) != 1)
                fail("item never ran", i);
        for (unsigned i = 0; i < n_workers; i++)
            if (weft__runq_pop(&workers[i].q) != NULL)
                fail("queue not empty at the end", i);
        if (weft__inject_pop(&inject) != NULL)
            fail("inject queue not empty at the end", 0);
    }
    printf("ran=%llu steal_batches=%llu from_inject=%llu\n", (unsigned long long)ran,
           (unsigned long long)steals, (unsigned long long)injected);
    weft__inject_destroy(&inject);
    free(items);
    free(workers);
    if (atomic_load(&failures) != 0) {
        printf("stress_runq: FAILED\n");
        return 1;
    }
    printf("stress_runq: OK\n");
    return 0;
}
