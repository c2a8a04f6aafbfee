/* weft — the multi-worker runtime.
 *
 * A runtime owns N workers; each is one OS thread running one loop and a
 * work-stealing run queue of tasks.  Tasks spawned inside the runtime may
 * run on any worker (unless pinned); callbacks stay on their loop.
 */
#ifndef WEFT_RUNTIME_H
#define WEFT_RUNTIME_H

#include "weft/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most workers a runtime takes (each is a thread with an epoll instance
 * and an eventfd). */
#define WEFT_MAX_WORKERS 1024u

typedef struct weft_config {
    unsigned workers;              /* 0 = online CPUs; at most WEFT_MAX_WORKERS */
    size_t stack_size;             /* 0 = default (256 KiB virtual) */
    unsigned executor_max_threads; /* 0 = 512 */
    int64_t executor_keepalive_ns; /* 0 = 10 s */
    bool debug;                    /* or WEFT_DEBUG=1 in the environment */
    int64_t slow_callback_ns;      /* 0 = 100 ms */
    /* How long a worker that runs out of work polls for more before it
     * sleeps, and a plain thread in weft_future_wait on one of this
     * runtime's futures polls before it sleeps: 0 = 50 us (none with one
     * CPU online), negative = never poll, at most 1 s.  Polling spares the
     * thread that posts the work a wakeup from another CPU (5-100 us on a
     * VM) at the price of up to this much CPU each time a worker goes
     * idle; docs/runtime.md, "Spinning". */
    int64_t idle_spin_ns;
} weft_config_t;

/* Start a runtime; its workers are running when this returns.  cfg may be
 * NULL (all defaults).
 * Returns 0, -EINVAL (out NULL, workers above WEFT_MAX_WORKERS, stack_size
 * above 1 GiB, a negative slow_callback_ns or executor_keepalive_ns, an
 * idle_spin_ns above 1 s), -ENOMEM, -errno
 * from thread, epoll or eventfd creation.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_runtime_new(const weft_config_t *cfg, weft_runtime_t **out);

/* Stop accepting work, cancel every task still pending, wait up to
 * timeout_ns (-1 = no limit) for them to finish, then stop and join the
 * workers.  Done callbacks of finished tasks all run.  Tasks still not done
 * at the deadline are abandoned: their futures end cancelled.
 * Returns 0, WEFT_ETIMEDOUT (some tasks were abandoned), -EINVAL, -EPERM
 * (called from one of the runtime's own workers).  Idempotent.
 * Thread: any thread except the runtime's workers.  Suspends: no (blocks). */
WEFT_API int weft_runtime_shutdown(weft_runtime_t *rt, int64_t timeout_ns);

/* Shut down (no time limit) if needed, then free.  NULL is ignored.
 * Thread: as shutdown.  Suspends: no. */
WEFT_API void weft_runtime_free(weft_runtime_t *rt);

/* Thread: any.  Suspends: no. */
WEFT_API unsigned weft_runtime_workers(const weft_runtime_t *rt);

/* The loop of worker `index` (borrowed), or NULL if out of range.
 * Thread: any.  Suspends: no. */
WEFT_API weft_loop_t *weft_runtime_loop(weft_runtime_t *rt, unsigned index);

/* Start fn(arg) as a task from any thread (through the inject queue);
 * *out gets the task's future (one reference).
 * Returns 0, -EINVAL, -ENOMEM, WEFT_ECLOSED (shut down).
 * Thread: any.  Suspends: no. */
WEFT_API int weft_runtime_submit(weft_runtime_t *rt, weft_fn fn, void *arg, weft_future_t **out);

/* asyncio.run(): start a runtime, run main(arg) as a task, shut down.
 * Returns main's outcome (0 with *result, its error, or WEFT_ECANCELED), or
 * an error from weft_runtime_new.  result may be NULL.
 * Thread: a plain thread.  Suspends: no (blocks). */
WEFT_API int weft_run(const weft_config_t *cfg, weft_fn main, void *arg, void **result);

/* The runtime whose worker runs the caller, or NULL.
 * Thread: any.  Suspends: no. */
WEFT_API weft_runtime_t *weft_get_running_runtime(void);

/* Per-worker counters (extension). */
typedef struct weft_worker_stats {
    uint64_t tasks_run;      /* task steps (resumes) run on this worker */
    uint64_t steals;         /* successful steal batches */
    uint64_t stolen_tasks;   /* tasks taken by those batches */
    uint64_t parks;          /* times the worker slept */
    uint64_t eventfd_writes; /* wakeups written to this worker's eventfd */
    uint64_t inject_pops;    /* tasks taken from the shared inject queue */
    uint64_t lifo_runs;      /* tasks run from the LIFO slot */
} weft_worker_stats_t;

/* Returns 0, -EINVAL.  Thread: any.  Suspends: no. */
WEFT_API int weft_runtime_worker_stats(const weft_runtime_t *rt, unsigned index,
                                       weft_worker_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_RUNTIME_H */
