/* weft — executor pools, internal entry points.
 *
 * Which calls may run together on one executor:
 *
 *                        submit  shutdown  shutdown  thread_  free
 *                                (nowait)  (wait)    count
 *   submit                 yes     yes       yes      yes      no
 *   shutdown (nowait)      yes     yes       yes      yes      no
 *   shutdown (wait)        yes     yes       yes      yes      no
 *   thread_count           yes     yes       yes      yes      no
 *   free                   no      no        no       no       no
 *
 * Every entry point but free may also be called from ex's own pool threads
 * (a job may submit another job); shutdown with wait and free refuse to
 * run there, since they would wait for themselves.
 */
#ifndef WEFT_SCHED_EXECUTOR_H
#define WEFT_SCHED_EXECUTOR_H

#include "weft/executor.h"
#include "weft/future.h"
#include "weft/runtime.h"

/* Queue fn(arg) on ex; a pool thread runs it and completes f (created by
 * the caller, on any loop) with its outcome, as weft_run_in_executor
 * describes.  The executor takes its own reference on f and drops it after
 * completing f (or after skipping fn because f was already done).
 * Returns 0, -EINVAL (ex, fn or f NULL), WEFT_ECLOSED (shut down), -ENOMEM,
 * -errno from pthread_create when ex had no thread at all to run fn; on
 * error f is untouched and fn is never called.
 * Thread: any.  Suspends: no. */
int weft__executor_submit(weft_executor_t *ex, weft_fn fn, void *arg, weft_future_t *f);

/* The process-wide default executor: created on first use with the
 * default limits, never freed (its idle threads exit after the keep-alive
 * and no memory stays behind).  Never NULL.  weft_executor_free and
 * weft_executor_shutdown refuse it (log, -EPERM).
 * Thread: any.  Suspends: no. */
weft_executor_t *weft__executor_default(void);

/* How many pool threads exist (started and not yet exited), for tests.
 * Thread: any.  Suspends: no. */
unsigned weft__executor_thread_count(weft_executor_t *ex);

/* rt's default executor, or NULL for rt NULL (sched/runtime.c). */
weft_executor_t *weft__runtime_default_executor(weft_runtime_t *rt);

/* Test seam: when set, every thread creation (in any executor: pool
 * threads and the monitor thread that starts pool threads for jobs stuck
 * behind blocked ones) first calls fn(arg), with no executor lock held, on
 * the creating thread: the submitting one, or the monitor for the threads
 * it starts.  A non-zero errno value (EAGAIN, as at the process's thread
 * limit) makes the creation fail as pthread_create would.  NULL removes it.
 * Thread: any, while no submission runs (meant for tests).  Suspends: no. */
typedef int (*weft__spawn_hook_fn)(void *arg);
void weft__executor_set_spawn_hook(weft__spawn_hook_fn fn, void *arg);

#endif /* WEFT_SCHED_EXECUTOR_H */
