/* weft — executor pools for blocking calls (asyncio's run_in_executor).
 *
 * A loop thread must never block, so a call that does (a read of a regular
 * file, getaddrinfo, a CPU-heavy function, a library with its own locks)
 * runs on an executor: a pool of plain threads, started on demand up to a
 * cap and ended after an idle keep-alive.  The call's outcome comes back
 * through a future bound to the caller's loop, so a loop callback adds a
 * done callback and a task awaits it.
 *
 * Cancelling that future before the call starts means it never runs;
 * cancelling it while the call runs discards the outcome but cannot
 * interrupt the call (asyncio's rule: the thread keeps going).
 *
 * Pool threads start with every asynchronous signal blocked and install no
 * handlers; deliver signals to a loop through a signalfd instead.
 */
#ifndef WEFT_EXECUTOR_H
#define WEFT_EXECUTOR_H

#include "weft/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct weft_executor weft_executor_t;

/* New executor.  max_threads caps how many pool threads exist at once
 * (0 = 512).  keepalive_ns is how long an idle thread waits for work
 * before it exits (0 = 10 s).  No thread is started until work arrives.
 * Returns 0, -EINVAL (out NULL, keepalive_ns < 0), -ENOMEM, or -errno from
 * mutex/condition-variable setup.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_executor_new(unsigned max_threads, int64_t keepalive_ns, weft_executor_t **out);

/* Stop accepting work: later submissions return WEFT_ECLOSED.  Work already
 * queued still runs (concurrent.futures' cancel_futures=False).  With
 * wait, block until the queue is drained and every pool thread has exited
 * and been joined.  Calling it again is harmless and returns 0 (with wait,
 * it waits as the first call would have).
 * Returns 0, -EINVAL (ex NULL), -EPERM (wait on a thread that runs a loop,
 * which would stall it, or on one of ex's own pool threads, which would
 * wait for itself).
 * Thread: any; with wait, a plain thread.  Suspends: no (blocks with wait). */
WEFT_API int weft_executor_shutdown(weft_executor_t *ex, bool wait);

/* Shut down with wait if that was not done yet (queued work runs first),
 * join every pool thread, and free ex.  NULL is ignored.  Called on one of
 * ex's own pool threads it logs an error and frees nothing.  It blocks
 * like shutdown with wait, also on a loop thread, so free a busy executor
 * from a plain thread.  No other call on ex may run concurrently or follow.
 * Thread: any but ex's pool threads.  Suspends: no (blocks). */
WEFT_API void weft_executor_free(weft_executor_t *ex);

/* Run fn(arg, &result) on a thread of ex (NULL = the default executor) and
 * hand out, through *out, a new future bound to the calling thread's
 * running loop (one reference; release it).  The future completes from the
 * pool thread: with fn's result when fn returns 0, with fn's error when it
 * returns a negative code (a positive return is a bug and becomes -EINVAL;
 * WEFT_ECANCELED cancels the future).  Its done callbacks run on its loop.
 * If the future is cancelled before fn starts, fn never runs.  An accepted
 * call always completes its future; in the one case where it cannot run
 * (ex lost its last thread to a failed thread creation while the call was
 * queued) the future fails with that creation error.
 * Returns 0, -EINVAL (fn or out NULL), -EPERM (no loop runs on this
 * thread), WEFT_ECLOSED (ex shut down), -ENOMEM, -EAGAIN or another -errno
 * from thread creation when ex had no thread to run the call.  On error fn
 * is never called and *out is untouched.
 * Thread: loop thread (a loop callback or a task).  Suspends: no. */
WEFT_API int weft_run_in_executor(weft_executor_t *ex, weft_fn fn, void *arg, weft_future_t **out);

/* Run fn(arg, result) on the default executor and await it (asyncio's
 * to_thread).  If the calling task is cancelled meanwhile the call's result
 * is discarded (fn itself cannot be interrupted) and WEFT_ECANCELED is
 * returned.  Returns fn's outcome, WEFT_ECANCELED, -EPERM (not in a task),
 * -EINVAL, or an error of weft_run_in_executor.
 * Thread: inside a task.  Suspends: yes. */
WEFT_API int weft_to_thread(weft_fn fn, void *arg, void **result);

/* Make ex the default executor of rt (used by weft_run_in_executor(NULL)
 * and weft_to_thread from rt's workers); NULL restores rt's own, made from
 * weft_config_t's executor limits.  The caller keeps ownership of ex and
 * must keep it alive until the runtime is freed or another default is set.
 * Returns 0, -EINVAL.  Thread: any.  Suspends: no. */
WEFT_API int weft_runtime_set_default_executor(weft_runtime_t *rt, weft_executor_t *ex);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_EXECUTOR_H */
