/* weft — futures.
 *
 * A future is a reference-counted box that becomes done exactly once:
 * with a result (a void *), with an error (code + optional message), or
 * cancelled (optional message).  Any thread may complete it; later
 * attempts return WEFT_EINVALSTATE.  Done callbacks are scheduled with
 * call_soon on the future's loop — never run inline by set_result — in the
 * order they were added.  A future holds a reference on its loop.
 */
#ifndef WEFT_FUTURE_H
#define WEFT_FUTURE_H

#include "weft/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* New pending future bound to loop (NULL = the loop running on this
 * thread).  *out carries one reference.
 * Returns 0, -EINVAL (out NULL), -EPERM (loop NULL and no running loop),
 * WEFT_ECLOSED, -ENOMEM.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_future_new(weft_loop_t *loop, weft_future_t **out);

/* Reference counting.  NULL is ignored.  Thread: any.  Suspends: no. */
WEFT_API void weft_future_retain(weft_future_t *f);
WEFT_API void weft_future_release(weft_future_t *f);

/* Complete with a result.  The caller must hold a reference to f until
 * the call returns (as for set_error and cancel): a waiter woken by the
 * completion may drop its own reference at once.
 * Returns 0, -EINVAL, WEFT_EINVALSTATE (already done).
 * Thread: any.  Suspends: no. */
WEFT_API int weft_future_set_result(weft_future_t *f, void *value);

/* Complete with an error: code must be negative and not WEFT_ECANCELED
 * (use weft_future_cancel for that).  msg (nullable) is copied.
 * Returns 0, -EINVAL, -ENOMEM (message copy), WEFT_EINVALSTATE.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_future_set_error(weft_future_t *f, int code, const char *msg);

/* Cancel: true if the future was pending and is now cancelled, false if
 * it was already done (or f is NULL).  msg (nullable) is copied; if the
 * copy fails the future is still cancelled, without the message.
 * Thread: any.  Suspends: no. */
WEFT_API bool weft_future_cancel(weft_future_t *f, const char *msg);

/* Thread: any.  Suspends: no.  false for NULL. */
WEFT_API bool weft_future_done(const weft_future_t *f);
WEFT_API bool weft_future_cancelled(const weft_future_t *f);

/* Outcome: 0 with *value set (value may be NULL), the error code, or
 * WEFT_ECANCELED; WEFT_EINVALSTATE if still pending; -EINVAL for NULL f.
 * Reading marks an error as retrieved (no "never retrieved" report).
 * Thread: any.  Suspends: no. */
WEFT_API int weft_future_result(weft_future_t *f, void **value);

/* The error code without touching the result (asyncio's exception()):
 * 0 if it has a result, its error code, WEFT_ECANCELED if cancelled,
 * WEFT_EINVALSTATE while pending, -EINVAL for NULL.  Marks the error
 * retrieved.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_future_error(weft_future_t *f);

/* Error or cancel message, or NULL.  Valid while the caller holds a
 * reference.  Thread: any.  Suspends: no. */
WEFT_API const char *weft_future_message(const weft_future_t *f);

/* The loop the future belongs to (borrowed).  Thread: any. */
WEFT_API weft_loop_t *weft_future_get_loop(const weft_future_t *f);

typedef void (*weft_done_fn)(weft_future_t *f, void *arg);

/* Call fn(f, arg) once f is done, through call_soon on f's loop (also if
 * f is already done).  The future stays alive until fn has run.
 * Returns 0, -EINVAL, -ENOMEM, WEFT_ECLOSED (f done and its loop closed).
 * Thread: any.  Suspends: no. */
WEFT_API int weft_future_add_done_callback(weft_future_t *f, weft_done_fn fn, void *arg);

/* Remove every registration of (fn, arg) not yet scheduled.
 * Returns how many were removed (>= 0), or -EINVAL.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_future_remove_done_callback(weft_future_t *f, weft_done_fn fn, void *arg);

/* Block the calling plain thread until f is done or timeout_ns passes
 * (-1 = no limit, 0 = poll).
 * Returns 0 once done (read the outcome with weft_future_result),
 * WEFT_ETIMEDOUT, -EINVAL, -EPERM when called on a thread that is running
 * a loop or a task (it would deadlock; a task awaits instead).
 * Thread: any plain thread.  Suspends: no (blocks the thread). */
WEFT_API int weft_future_wait(weft_future_t *f, int64_t timeout_ns);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_FUTURE_H */
