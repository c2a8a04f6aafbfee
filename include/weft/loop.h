/* weft — event loops.
 *
 * A loop runs callbacks, timers and fd-readiness callbacks on one thread:
 * the thread that calls weft_loop_run_forever() / _run_until_complete()
 * ("the loop thread").  A loop made by weft_loop_new() is standalone,
 * like asyncio.new_event_loop(); each worker of a runtime owns one too.
 *
 * Ordering rules (asyncio's):
 *   - call_soon callbacks run in FIFO order; one iteration runs only the
 *     callbacks that were ready when it began, so a callback scheduled by a
 *     callback runs in the next iteration;
 *   - timers never run before their deadline; equal deadlines run in the
 *     order they were scheduled;
 *   - a handle can be cancelled (from any thread) until it runs.
 *
 * Thread rules: "loop thread" functions may be called from the thread that
 * is running the loop, or from any single thread while the loop is not
 * running (to set it up).  Called from another thread while the loop runs,
 * they return -EPERM (and log it in debug mode).  call_soon_threadsafe and
 * weft_handle_cancel work from any thread, including threads weft knows
 * nothing about.
 */
#ifndef WEFT_LOOP_H
#define WEFT_LOOP_H

#include "weft/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Create a standalone loop.
 * Returns 0, -EINVAL (out NULL), -ENOMEM, or -errno from epoll/eventfd.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_loop_new(weft_loop_t **out);

/* Run until weft_loop_stop().  A stop requested before the call makes the
 * loop run one iteration and return (asyncio's rule).
 * Returns 0, -EINVAL, WEFT_ECLOSED, WEFT_EINVALSTATE (already running, or
 * another loop already runs on this thread), -errno from epoll.
 * Thread: becomes the loop thread.  Suspends: no (blocks). */
WEFT_API int weft_loop_run_forever(weft_loop_t *loop);

/* Run until future f is done, then return its outcome: 0 (and the result
 * stays readable through weft_future_result), its error code, or
 * WEFT_ECANCELED.  f must belong to this loop.  If the loop is stopped
 * before f is done, returns WEFT_EINVALSTATE ("Event loop stopped before
 * Future completed").
 * Returns also -EINVAL, WEFT_ECLOSED, WEFT_EINVALSTATE as run_forever.
 * Thread: becomes the loop thread.  Suspends: no (blocks). */
WEFT_API int weft_loop_run_until_complete(weft_loop_t *loop, weft_future_t *f);

/* Ask the loop to return from run_* after the current iteration.
 * Returns 0, -EINVAL, WEFT_ECLOSED.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_loop_stop(weft_loop_t *loop);

/* Close the loop: release epoll/eventfd, cancel what is still scheduled.
 * Callbacks and timers accepted before close that never ran are marked
 * cancelled and reported once to the exception handler (code
 * WEFT_ECLOSED) — never dropped silently.  Later calls that schedule work
 * return WEFT_ECLOSED.
 * Returns 0 (also when already closed), -EINVAL, -EBUSY while running.
 * Thread: loop thread.  Suspends: no. */
WEFT_API int weft_loop_close(weft_loop_t *loop);

/* Drop the caller's reference; the memory goes when the last future or
 * handle that refers to the loop is released.  Closes the loop first if
 * needed.  NULL is ignored.  Must not be called while the loop runs.
 * Thread: loop thread.  Suspends: no. */
WEFT_API void weft_loop_free(weft_loop_t *loop);

/* Thread: any.  Suspends: no.  false for NULL. */
WEFT_API bool weft_loop_is_running(const weft_loop_t *loop);
WEFT_API bool weft_loop_is_closed(const weft_loop_t *loop);

/* Current time on the loop clock (CLOCK_MONOTONIC, nanoseconds).
 * Thread: any.  Suspends: no. */
WEFT_API int64_t weft_loop_time(const weft_loop_t *loop);

/* The loop running on this thread, or NULL.
 * Thread: any.  Suspends: no. */
WEFT_API weft_loop_t *weft_get_running_loop(void);

/* Schedule fn(arg) for the next iteration.  With out non-NULL, *out gets a
 * handle holding one reference (release it with weft_handle_release).
 * Returns 0, -EINVAL (loop or fn NULL), -ENOMEM, WEFT_ECLOSED, -EPERM.
 * Thread: loop thread.  Suspends: no. */
WEFT_API int weft_loop_call_soon(weft_loop_t *loop, weft_callback_fn fn, void *arg,
                                 weft_handle_t **out);

/* As call_soon, from any thread.  The loop is woken through its eventfd
 * only if it is asleep, and at most once per sleep.  Calls made by one
 * thread run in the order made, and before any call_soon the loop thread
 * makes after it has seen them (causal order).  Without `out` the call
 * allocates nothing but a block of slots once per 255 calls.  A loop
 * takes at most 256 posted calls per step, so a backlog left by a thread
 * posting faster than the loop runs is spread over the next iterations,
 * between their timers and fd events, rather than run in one.
 * Returns 0, -EINVAL, -ENOMEM, WEFT_ECLOSED.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_loop_call_soon_threadsafe(weft_loop_t *loop, weft_callback_fn fn, void *arg,
                                            weft_handle_t **out);

/* Run fn(arg) no earlier than delay_ns from now (delay < 0 counts as 0).
 * Returns 0, -EINVAL, -ENOMEM, WEFT_ECLOSED, -EPERM.
 * Thread: loop thread.  Suspends: no. */
WEFT_API int weft_loop_call_later(weft_loop_t *loop, int64_t delay_ns, weft_callback_fn fn,
                                  void *arg, weft_handle_t **out);

/* Run fn(arg) no earlier than the absolute time when_ns (weft_loop_time's
 * clock).  A time in the past runs in the next iteration.
 * Returns 0, -EINVAL, -ENOMEM, WEFT_ECLOSED, -EPERM.
 * Thread: loop thread.  Suspends: no. */
WEFT_API int weft_loop_call_at(weft_loop_t *loop, int64_t when_ns, weft_callback_fn fn, void *arg,
                               weft_handle_t **out);

/* Cancel a handle that has not run yet: it will not run.
 * Returns 0 (also if it already ran or was cancelled), -EINVAL.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_handle_cancel(weft_handle_t *h);

/* true once weft_handle_cancel() took effect (or close dropped it).
 * Thread: any.  Suspends: no. */
WEFT_API bool weft_handle_cancelled(const weft_handle_t *h);

/* Deadline of a timer handle; -1 for call_soon handles and NULL.
 * Thread: any.  Suspends: no. */
WEFT_API int64_t weft_handle_when(const weft_handle_t *h);

/* Drop the reference handed out by call_*.  NULL is ignored.  Releasing
 * does not cancel.
 * Thread: any.  Suspends: no. */
WEFT_API void weft_handle_release(weft_handle_t *h);

/* Call fn(arg) on the loop thread whenever fd is readable (level
 * semantics, as asyncio: called again each iteration while data remains).
 * Replaces an earlier reader callback of the same fd.
 * Returns 0, -EINVAL (fd < 0, fn NULL), -ENOMEM, -EBADF, -EPERM (fd not
 * pollable, e.g. a regular file), WEFT_ECLOSED.
 * Thread: loop thread.  Suspends: no. */
WEFT_API int weft_loop_add_reader(weft_loop_t *loop, int fd, weft_callback_fn fn, void *arg);

/* Returns 1 if a reader was removed, 0 if none, -EINVAL, -EPERM, WEFT_ECLOSED.
 * Thread: loop thread.  Suspends: no. */
WEFT_API int weft_loop_remove_reader(weft_loop_t *loop, int fd);

/* As add_reader/remove_reader for writability. */
WEFT_API int weft_loop_add_writer(weft_loop_t *loop, int fd, weft_callback_fn fn, void *arg);
WEFT_API int weft_loop_remove_writer(weft_loop_t *loop, int fd);

/* Debug mode for this loop (also on when WEFT_DEBUG=1 is set in the
 * environment at weft_loop_new): wrong-thread calls are logged, callbacks
 * slower than the slow-callback duration are logged.
 * Returns 0, -EINVAL.  Thread: any.  Suspends: no. */
WEFT_API int weft_loop_set_debug(weft_loop_t *loop, bool on);
WEFT_API bool weft_loop_get_debug(const weft_loop_t *loop);

/* Threshold for "slow callback" logging in debug mode; <= 0 restores the
 * default of 100 ms.  Returns 0, -EINVAL.  Thread: any.  Suspends: no. */
WEFT_API int weft_loop_set_slow_callback_duration(weft_loop_t *loop, int64_t ns);

/* What the exception handler receives (asyncio's context dict). */
typedef struct weft_error_context {
    const char *message;   /* always set */
    int code;              /* weft error code, 0 if none */
    weft_future_t *future; /* borrowed, may be NULL */
    weft_task_t *task;     /* borrowed, may be NULL */
} weft_error_context_t;

typedef void (*weft_exception_handler_fn)(weft_loop_t *loop, const weft_error_context_t *ctx,
                                          void *arg);

/* Replace the handler called for errors nobody else can report (callbacks
 * dropped at close, unretrieved future errors in debug mode, ...).  NULL
 * restores the default, which logs through the weft log handler.
 * Returns 0, -EINVAL.  Thread: loop thread.  Suspends: no. */
WEFT_API int weft_loop_set_exception_handler(weft_loop_t *loop, weft_exception_handler_fn fn,
                                             void *arg);

/* Call the current exception handler (asyncio's call_exception_handler).
 * Returns 0, -EINVAL.  Thread: loop thread.  Suspends: no. */
WEFT_API int weft_loop_call_exception_handler(weft_loop_t *loop, const weft_error_context_t *ctx);

/* Counters for tests and benchmarks.  Each is monotonic since
 * weft_loop_new; reading them from another thread gives a recent value. */
typedef struct weft_loop_stats {
    uint64_t iterations;       /* loop iterations run */
    uint64_t callbacks_run;    /* callbacks (ready + timers + fd) run */
    uint64_t threadsafe_calls; /* call_soon_threadsafe calls accepted */
    uint64_t eventfd_writes;   /* wakeups written to the eventfd */
    uint64_t wakeups;          /* sleeps ended by the eventfd */
    uint64_t sleeps;           /* sleeps in epoll, counted when each ends */
    uint64_t timers_fired;     /* timer callbacks run */
    uint64_t timers_cancelled; /* cancelled timers removed from the heap */
} weft_loop_stats_t;

/* Returns 0, -EINVAL.  Thread: any.  Suspends: no. */
WEFT_API int weft_loop_get_stats(const weft_loop_t *loop, weft_loop_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_LOOP_H */
