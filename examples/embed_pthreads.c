/* example_embed_pthreads — weft inside an ordinary pthread program.
 *
 * The program is a plain multi-threaded C program: main() starts a few
 * "producer" threads that do their own work (here: summing the squares of
 * their numbers with an ordinary loop).  Part of that work is handed to a
 * weft runtime as coroutines:
 *
 *   - weft_runtime_submit(rt, fn, arg, &future) starts a task from the
 *     producer thread; weft_future_wait(future, timeout) blocks that thread
 *     (and only it) until the task is done;
 *   - weft_run_coroutine_threadsafe(loop, ...) does the same but starts the
 *     task on one chosen worker's loop;
 *   - inside a task, weft_to_thread runs a blocking call on the runtime's
 *     executor threads, and weft_spawn / weft_await fan work out over the
 *     workers.
 *
 * Each producer checks every answer it gets against its own computation.
 * When all producers are joined, main() shuts the runtime down: tasks still
 * running would be cancelled, and the call returns when every worker and
 * executor thread has exited.
 *
 * Exit status: 0 when every answer was right and shutdown was clean.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "weft.h"

#define MSEC INT64_C(1000000) /* weft counts time in nanoseconds */
#define SEC  INT64_C(1000000000)

enum {
    PRODUCERS = 3,
    JOBS = 8,   /* jobs each producer hands to the runtime */
    PARTS = 4,  /* each job fans out into this many child tasks */
    SPAN = 1000 /* numbers per child */
};

static weft_runtime_t *rt;
static atomic_int wrong; /* answers that did not match */

/* ---- the coroutines ------------------------------------------------------ */

typedef struct part {
    uint64_t first, count;
} part_t;

/* A child task: sum the squares of [first, first + count), yielding now and
 * then so that other tasks on the same worker get their turn. */
static int sum_squares(void *arg, void **result)
{
    const part_t *p = arg;
    uint64_t sum = 0;
    for (uint64_t i = p->first; i < p->first + p->count; i++) {
        sum += i * i;
        if (i % 256 == 0) {
            int rc = weft_yield();
            if (rc != 0)
                return rc; /* cancelled: give up */
        }
    }
    *result = (void *)(uintptr_t)sum;
    return 0;
}

/* A blocking call, as a real program would make (a file read, a DNS
 * lookup, a database client): it must not run on a worker thread. */
static int slow_lookup(void *arg, void **result)
{
    struct timespec pause = {0, 2 * MSEC};
    nanosleep(&pause, NULL);
    *result = arg; /* "looked up": echoes its argument */
    return 0;
}

typedef struct job {
    uint64_t first; /* the job sums squares of [first, first + PARTS * SPAN) */
    part_t parts[PARTS];
} job_t;

/* The coroutine a producer submits: a blocking lookup on the executor, then
 * PARTS child tasks spread over the workers, awaited in order. */
static int run_job(void *arg, void **result)
{
    job_t *j = arg;
    void *looked_up = NULL;
    int rc = weft_to_thread(slow_lookup, j, &looked_up);
    if (rc != 0)
        return rc;
    if (looked_up != j)
        return -EINVAL;

    weft_task_t *children[PARTS];
    int spawned = 0;
    for (int i = 0; i < PARTS; i++) {
        j->parts[i].first = j->first + (uint64_t)i * SPAN;
        j->parts[i].count = SPAN;
        rc = weft_spawn(sum_squares, &j->parts[i], NULL, &children[i]);
        if (rc != 0)
            break;
        spawned++;
    }
    uint64_t total = 0;
    for (int i = 0; i < spawned; i++) {
        void *part = NULL;
        int prc = weft_await(weft_task_future(children[i]), &part);
        if (prc == 0)
            total += (uint64_t)(uintptr_t)part;
        else if (rc == 0)
            rc = prc;
        weft_task_release(children[i]);
    }
    if (rc != 0)
        return rc;
    *result = (void *)(uintptr_t)total;
    return 0;
}

/* A tiny coroutine for weft_run_coroutine_threadsafe: report which worker
 * loop it ran on. */
static int where_am_i(void *arg, void **result)
{
    (void)arg;
    *result = weft_get_running_loop();
    return 0;
}

/* ---- the ordinary threads ----------------------------------------------- */

static uint64_t squares_between(uint64_t first, uint64_t count)
{
    uint64_t sum = 0;
    for (uint64_t i = first; i < first + count; i++)
        sum += i * i;
    return sum;
}

static void *producer(void *arg)
{
    int id = (int)(intptr_t)arg;
    job_t jobs[JOBS];
    weft_future_t *futures[JOBS];

    /* Hand every job to the runtime first, so they run in parallel... */
    for (int i = 0; i < JOBS; i++) {
        jobs[i].first = ((uint64_t)id * JOBS + (uint64_t)i) * PARTS * SPAN;
        int rc = weft_runtime_submit(rt, run_job, &jobs[i], &futures[i]);
        if (rc != 0) {
            fprintf(stderr, "producer %d: weft_runtime_submit: %s\n", id, weft_strerror(rc));
            exit(1);
        }
    }

    /* ...do this thread's own work meanwhile (the expected answers)... */
    uint64_t expect[JOBS];
    for (int i = 0; i < JOBS; i++)
        expect[i] = squares_between(jobs[i].first, (uint64_t)PARTS * SPAN);

    /* ...then block on each result.  weft_future_wait is for plain threads
     * like this one; a task would weft_await instead. */
    for (int i = 0; i < JOBS; i++) {
        int rc = weft_future_wait(futures[i], 10 * SEC);
        void *got = NULL;
        if (rc == 0)
            rc = weft_future_result(futures[i], &got);
        if (rc != 0) {
            fprintf(stderr, "producer %d job %d: %s\n", id, i, weft_strerror(rc));
            atomic_fetch_add(&wrong, 1);
        } else if ((uint64_t)(uintptr_t)got != expect[i]) {
            fprintf(stderr, "producer %d job %d: got %" PRIu64 ", expected %" PRIu64 "\n", id, i,
                    (uint64_t)(uintptr_t)got, expect[i]);
            atomic_fetch_add(&wrong, 1);
        }
        weft_future_release(futures[i]);
    }

    /* One coroutine on a chosen worker's loop. */
    unsigned index = (unsigned)id % weft_runtime_workers(rt);
    weft_loop_t *target = weft_runtime_loop(rt, index);
    weft_future_t *f;
    int rc = weft_run_coroutine_threadsafe(target, where_am_i, NULL, &f);
    if (rc == 0)
        rc = weft_future_wait(f, 10 * SEC);
    void *ran_on = NULL;
    if (rc == 0)
        rc = weft_future_result(f, &ran_on);
    if (rc != 0 || ran_on != target) {
        fprintf(stderr, "producer %d: run_coroutine_threadsafe: %s\n", id, weft_strerror(rc));
        atomic_fetch_add(&wrong, 1);
    }
    weft_future_release(f);

    printf("producer %d: %d jobs checked, a coroutine ran on worker %u's loop\n", id, JOBS, index);
    return NULL;
}

int main(void)
{
    /* A runtime with 2 workers (0 = one per CPU) and at most 4 executor
     * threads for blocking calls. */
    weft_config_t cfg = {0};
    cfg.workers = 2;
    cfg.executor_max_threads = 4;
    int rc = weft_runtime_new(&cfg, &rt);
    if (rc != 0) {
        fprintf(stderr, "weft_runtime_new: %s\n", weft_strerror(rc));
        return 1;
    }
    printf("runtime started with %u workers\n", weft_runtime_workers(rt));

    pthread_t threads[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        if (pthread_create(&threads[i], NULL, producer, (void *)(intptr_t)i) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(threads[i], NULL);

    /* Every task is done by now, so shutdown has nothing to cancel: it
     * stops the workers and joins the executor's threads.  The timeout is
     * how long tasks still running would get to finish after being
     * cancelled. */
    rc = weft_runtime_shutdown(rt, 5 * SEC);
    weft_runtime_free(rt);
    if (rc != 0) {
        fprintf(stderr, "weft_runtime_shutdown: %s\n", weft_strerror(rc));
        return 1;
    }
    int bad = atomic_load(&wrong);
    printf("%d producers x %d jobs: %s; runtime shut down cleanly\n", PRODUCERS, JOBS,
           bad == 0 ? "every answer right" : "WRONG ANSWERS");
    return bad == 0 ? 0 : 1;
}
