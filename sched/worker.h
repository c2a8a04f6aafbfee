/* weft — workers and the runtime (private layout).
 *
 * Each worker is one thread running one loop and owning one run queue.
 * Finding work, in order (DESIGN.md "Scheduling"):
 *   1. every 61st tick: the inject queue first, then a non-blocking loop
 *      iteration (timers, I/O, callbacks, posted work), so none of them
 *      starve behind a busy ring;
 *   2. the LIFO slot (the task this worker just woke), at most 3 in a row;
 *   3. the own run queue (FIFO), then the inject queue;
 *   4. stealing half of a random victim's queue — at most half the
 *      workers search at once; a searcher that finds work while it was the
 *      last searcher wakes one more worker;
 *   5. otherwise park: register in the idle set, re-check the shared
 *      queues, then run a blocking loop iteration (epoll with the next timer
 *      deadline), woken by the loop's park protocol (loop.h).
 *
 * Idle set and lost wakeups.  A producer that pushes to the inject queue
 * then calls weft__rt_notify_one(), which reads n_idle; a parking worker
 * increments n_idle and then re-reads the inject queue's length.  All four
 * accesses are seq_cst (store-buffer pattern), so either the producer sees
 * the idle worker and unparks it, or the worker sees the work.  Work pushed
 * to a worker's own run queue needs no such guarantee: its owner is awake
 * and will run it; notifying others there only adds parallelism.
 */
#ifndef WEFT_SCHED_WORKER_H
#define WEFT_SCHED_WORKER_H

#include <pthread.h>
#include <stdatomic.h>

#include "sched/loop.h"
#include "sched/runq.h"
#include "sched/task.h"
#include "weft/executor.h"
#include "weft/runtime.h"
#include "weft/task.h"

/* DESIGN.md: every 61 ticks a worker looks outside its ring (Go uses 61
 * too: a prime, so it does not beat against periodic workloads). */
#define WEFT__FAIRNESS_TICKS 61u
/* DESIGN.md: the LIFO slot runs at most 3 tasks in a row. */
#define WEFT__LIFO_MAX_STREAK 3u

typedef struct weft_worker_counters {
    atomic_uint_fast64_t tasks_run, steals, stolen_tasks, parks, inject_pops, lifo_runs;
} weft_worker_counters_t;

typedef struct weft_worker {
    weft_runq_t runq; /* cache-aligned inside */
    struct weft_runtime *rt;
    weft_loop_t *loop;
    unsigned index;
    pthread_t thread;
    bool started;
    weft_task_t *lifo;
    /* A task that handed this thread straight to another by weft_yield,
     * to be queued again by the task that runs next (its context is saved
     * only once the switch is done; sched/task.c, "direct yield"). */
    weft_task_t *handoff;
    unsigned lifo_streak;
    uint32_t tick;
    uint64_t rng;
    bool searching;
    bool idle_listed; /* in rt's idle set (under idle_lock) */
    weft_worker_counters_t stats;
} weft_worker_t;

struct weft_runtime {
    unsigned n;
    weft_worker_t **workers;
    weft_inject_t inject;
    atomic_uint n_searching;
    atomic_uint n_idle;
    atomic_uint n_spinning; /* workers polling for work before they sleep: 0 or 1 */
    pthread_mutex_t idle_lock;
    unsigned *idle; /* stack of parked worker indexes */
    unsigned idle_n;
    atomic_bool closing; /* no new submissions */
    /* Foreign threads between weft__rt_enter and weft__rt_leave: shutdown
     * waits for them after setting `closing`, so what they register and
     * queue is in place before it cancels and drains. */
    atomic_uint entering;
    atomic_bool stopping; /* workers exit their loop */
    bool shut_down;
    size_t stack_size;
    bool debug;
    int64_t slow_ns;
    weft_task_set_t tasks;
    _Atomic(weft_task_factory_fn) factory;
    _Atomic(void *) factory_arg;
    pthread_mutex_t shutdown_lock;
    weft_executor_t *own_executor;       /* from the config's limits */
    _Atomic(weft_executor_t *) executor; /* the default: own or the user's */
};

/* The worker running on this thread, or NULL. */
weft_worker_t *weft__current_worker(void);

/* Wake one idle worker if any (after pushing shared work). */
void weft__rt_notify_one(struct weft_runtime *rt);

/* Entry points called from any thread (submit, run_coroutine_threadsafe)
 * bracket their registering and queueing with these.  enter returns false
 * (and leaves nothing to undo) when the runtime is closing. */
bool weft__rt_enter(struct weft_runtime *rt);
void weft__rt_leave(struct weft_runtime *rt);

/* Thread body of a worker (pthread_create). */
void *weft__worker_main(void *arg);

/* Set `stopping`, wake every worker and join them. */
void weft__rt_stop_workers(struct weft_runtime *rt);

/* Queue a task on the current worker (LIFO slot when `lifo`). */
void weft__worker_push(weft_worker_t *w, weft_task_t *t, bool lifo);

/* The task to hand the thread to straight from a yielding task: the next
 * local task, counted as one scheduler tick; NULL when the scheduler must
 * take this turn itself (fairness tick, stopping) or has nothing local. */
weft_task_t *weft__worker_next_direct(weft_worker_t *w);

#endif /* WEFT_SCHED_WORKER_H */
