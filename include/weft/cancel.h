/* weft — cancellation scopes, timeouts and the waiting combinators:
 * asyncio's shield, timeout/timeout_at, wait_for, gather, wait,
 * as_completed and TaskGroup, with CancelledError as WEFT_ECANCELED and
 * TimeoutError as WEFT_ETIMEDOUT.  docs/cancellation.md states every rule
 * with a timeline for each subtle case.
 *
 * Where asyncio raises, these functions return the code; where it returns
 * a list of results, the results stay in the futures passed in, read in
 * input order with weft_future_result().  Futures are borrowed: the caller
 * keeps them alive for the duration of each call.
 */
#ifndef WEFT_CANCEL_H
#define WEFT_CANCEL_H

#include "weft/task.h"
#include "weft/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- shield ------------------------------------------------------------- */

/* asyncio.shield: *outer gets a future (one reference) that completes as
 * inner does, but cancelling outer — directly, or by cancelling a task that
 * awaits it — leaves inner running.  If inner is already done, *outer is
 * inner itself (with a new reference).
 * Returns 0, -EINVAL (NULL argument), -ENOMEM, WEFT_ECLOSED (inner's loop
 * is closed).  Thread: any.  Suspends: no. */
WEFT_API int weft_shield(weft_future_t *inner, weft_future_t **outer);

/* ---- timeout scopes -------------------------------------------------------
 *
 *     weft_timeout_t *to;
 *     int rc = weft_timeout_enter(500 * MS, &to);      // async with timeout(0.5):
 *     if (rc == 0) {
 *         rc = do_work();                              //     await ...
 *         rc = weft_timeout_exit(to, rc);              // WEFT_ETIMEDOUT if it expired
 *     }
 *
 * When the deadline passes the scope sends its task one cancellation
 * request (the next suspension point returns WEFT_ECANCELED).  Exit
 * withdraws that request (weft_task_uncancel) and, if no other request
 * came meanwhile and the body ended with WEFT_ECANCELED, returns
 * WEFT_ETIMEDOUT instead; anything else is returned unchanged.  Scopes
 * nest; each only claims its own cancellation.  A deadline already past
 * on entry (or on reschedule) sends the request at once, so the first
 * suspension point in the scope returns WEFT_ECANCELED. */
typedef struct weft_timeout weft_timeout_t;

/* Enter a scope expiring delay_ns from now (-1: never).
 * Returns 0, -EINVAL (out NULL, delay below -1), -ENOMEM, -EPERM (not in
 * a task).  Thread: inside a task.  Suspends: no. */
WEFT_API int weft_timeout_enter(int64_t delay_ns, weft_timeout_t **out);

/* Enter a scope expiring at when_ns (weft_loop_time's clock; -1: never).
 * Returns as weft_timeout_enter.  Thread: inside a task.  Suspends: no. */
WEFT_API int weft_timeout_at_enter(int64_t when_ns, weft_timeout_t **out);

/* Move the deadline (-1: never).  Only before the scope expired.
 * Returns 0, -EINVAL (t NULL, when below -1), WEFT_EINVALSTATE (already
 * expired), -ENOMEM, -EPERM (no loop runs on this thread).
 * Thread: a task or loop callback of the scope's runtime (or loop).
 * Suspends: no. */
WEFT_API int weft_timeout_reschedule(weft_timeout_t *t, int64_t when_ns);

/* The deadline, or -1 (none, or t NULL).  Thread: any.  Suspends: no. */
WEFT_API int64_t weft_timeout_when(const weft_timeout_t *t);

/* true once the deadline passed and the scope sent its request.
 * Thread: any.  Suspends: no. */
WEFT_API bool weft_timeout_expired(const weft_timeout_t *t);

/* Leave the scope and free t.  status is the body's outcome.  Returns
 * WEFT_ETIMEDOUT when status is WEFT_ECANCELED and the cancellation was
 * this scope's own, else status; or -EINVAL (t NULL), -EPERM (not the
 * task that entered it; t is not freed).
 * Thread: the task that entered the scope.  Suspends: no. */
WEFT_API int weft_timeout_exit(weft_timeout_t *t, int status);

/* asyncio.wait_for: await f for at most timeout_ns (-1: no limit).  On
 * timeout f is cancelled (a task gets a request) and waited for; then
 * WEFT_ETIMEDOUT, unless f ignored the cancellation and finished anyway:
 * then f's outcome.  With timeout 0, f is cancelled at once unless it is
 * done; a task that has not started never runs its body.
 * Returns f's outcome (0 with *result set when result is non-NULL, or f's
 * code), WEFT_ETIMEDOUT, WEFT_ECANCELED (this task cancelled: f is
 * cancelled too), -EINVAL (f NULL, timeout below -1), -EDEADLK (f is this
 * task), -ENOMEM (f untouched), -EPERM (not in a task).
 * Thread: inside a task.  Suspends: yes. */
WEFT_API int weft_wait_for(weft_future_t *f, int64_t timeout_ns, void **result);

/* ---- gather, wait, as_completed ------------------------------------------ */

/* asyncio.gather: wait for all n futures.  Results are read from each
 * future afterwards, in input order.  Without return_exceptions the first
 * future to fail (error, or cancelled: WEFT_ECANCELED) makes gather
 * return its code at once; the others keep running.  With it, gather
 * waits for all and returns 0.  Cancelling the waiting task cancels every
 * future not yet done (tasks get a request) and gather returns
 * WEFT_ECANCELED: without return_exceptions as soon as one of them ends
 * cancelled, with it once all are done.  If none could be cancelled (all
 * were already done) it returns WEFT_ECANCELED at once.
 * Returns 0, the first failure's code, WEFT_ECANCELED, -EINVAL (fs NULL
 * with n > 0, or a NULL entry), -ENOMEM, -EPERM (not in a task).
 * Thread: inside a task.  Suspends: yes (not when n is 0 or all are done
 * on entry: then no cancellation is delivered either). */
WEFT_API int weft_gather(weft_future_t *const *fs, size_t n, bool return_exceptions);

enum { WEFT_FIRST_COMPLETED, WEFT_FIRST_EXCEPTION, WEFT_ALL_COMPLETED };

/* asyncio.wait: wait until `when` holds — the first future done
 * (FIRST_COMPLETED), the first that fails with an error, not a
 * cancellation, or all (FIRST_EXCEPTION), all (ALL_COMPLETED) — or until
 * timeout_ns passes (-1: no limit).  Nothing is cancelled, on timeout or
 * otherwise.  done (nullable) gets n flags: which futures are done.
 * Returns how many are done (0 is possible after a timeout),
 * WEFT_ECANCELED (this task cancelled while waiting; done untouched),
 * -EINVAL (n 0, fs NULL, a NULL entry, bad when, timeout below -1),
 * -ENOMEM, -EPERM (not in a task).
 * Thread: inside a task.  Suspends: yes (not when `when` holds on entry or
 * the timeout is 0: then no cancellation is delivered either). */
WEFT_API int weft_wait(weft_future_t *const *fs, size_t n, int when, int64_t timeout_ns,
                       bool *done);

/* asyncio.as_completed: an iterator over n futures in completion order,
 * with an overall timeout (-1: none) counted from its creation.  It holds
 * a reference on each future; the ones it hands out are borrowed from it
 * (valid until weft_as_completed_free).  It is bound to the creating
 * task: only that task may call next.
 * Returns 0, -EINVAL (out NULL, fs NULL with n > 0, a NULL entry,
 * timeout below -1), -ENOMEM, -EPERM (not in a task).
 * Thread: inside a task.  Suspends: no. */
typedef struct weft_as_completed weft_as_completed_t;
WEFT_API int weft_as_completed_new(weft_future_t *const *fs, size_t n, int64_t timeout_ns,
                                   weft_as_completed_t **out);

/* The next future to complete.  Returns 1 (*next set), 0 (all n handed
 * out), WEFT_ETIMEDOUT (the timeout passed: once for each future not
 * handed out, then 0; futures that completed before it are handed out
 * first), WEFT_ECANCELED (this task cancelled; the iterator is unchanged),
 * -EINVAL (NULL argument), -ENOMEM, -EPERM (not the creating task).
 * Thread: the creating task.  Suspends: yes. */
WEFT_API int weft_as_completed_next(weft_as_completed_t *it, weft_future_t **next);

/* Free the iterator (futures not handed out are left alone).  NULL is
 * ignored.  Thread: the creating task, or any thread once it has
 * finished.  Suspends: no. */
WEFT_API void weft_as_completed_free(weft_as_completed_t *it);

/* ---- TaskGroup ------------------------------------------------------------
 *
 *     weft_taskgroup_t *g;
 *     weft_taskgroup_new(&g);                         // async with TaskGroup() as g:
 *     weft_taskgroup_spawn(g, fetch, a, NULL, NULL);  //     g.create_task(fetch(a))
 *     int rc = weft_sleep(SEC);                       //     await ...
 *     rc = weft_taskgroup_exit(g, rc);                // waits for every child
 *     ... weft_taskgroup_error(g, i, ...) when rc is WEFT_EGROUP ...
 *     weft_taskgroup_free(g);
 *
 * The first child to fail with an error (not a cancellation) cancels every
 * other child and sends the parent task one request, so its body stops at
 * its next suspension point; exit withdraws that request again.  Exit
 * waits for all children, then returns WEFT_EGROUP if any failed (the
 * errors are listed), else WEFT_ECANCELED if the parent was cancelled from
 * outside (that request stays counted; if errors take priority it is
 * delivered again at the next suspension point), else 0. */
typedef struct weft_taskgroup weft_taskgroup_t;

/* A group whose parent is the calling task.
 * Returns 0, -EINVAL (out NULL), -ENOMEM, -EPERM (not in a task).
 * Thread: inside a task.  Suspends: no. */
WEFT_API int weft_taskgroup_new(weft_taskgroup_t **out);

/* Spawn fn(arg) into the group (with opts as weft_spawn, through the task
 * factory).  out (nullable) gets a task reference.
 * Returns 0, WEFT_ECLOSED (the group is aborting after a failure or
 * cancellation, or has finished), -EINVAL (g or fn NULL), weft_spawn's
 * errors, -ENOMEM (also when the group could not watch the new child: it
 * is then cancelled and not part of the group).
 * Thread: a task or loop callback of the parent's runtime (or loop).
 * Suspends: no (an eager child runs until its first suspension). */
WEFT_API int weft_taskgroup_spawn(weft_taskgroup_t *g, weft_fn fn, void *arg,
                                  const weft_spawn_opts_t *opts, weft_task_t **out);

/* Leave the group: status is the body's outcome (asyncio's exception in
 * the `async with` block).  WEFT_ECANCELED or an error aborts the group
 * (cancels the children); an error is also listed as a failure with task
 * NULL.  Waits for every child, then returns WEFT_EGROUP, WEFT_ECANCELED
 * or 0 as described above; -EINVAL (g NULL), -EPERM (not the parent
 * task), WEFT_EINVALSTATE (already exited), -ENOMEM.  A cancellation of
 * the parent while it waits aborts the group and is returned after the
 * children finish.
 * Thread: the parent task.  Suspends: yes. */
WEFT_API int weft_taskgroup_exit(weft_taskgroup_t *g, int status);

/* weft_taskgroup_exit(g, 0). */
WEFT_API int weft_taskgroup_wait(weft_taskgroup_t *g);

/* Failures collected so far (child errors, then the body's, in the order
 * they happened).  Thread: any (stable once exit returned).  Suspends: no. */
WEFT_API size_t weft_taskgroup_error_count(const weft_taskgroup_t *g);

/* The i-th failure: *task (borrowed, valid until free; NULL for the
 * body's own error), *code, *msg (borrowed, may be NULL); each out
 * pointer is nullable.  Returns 0, -EINVAL (g NULL, i out of range).
 * Thread: any.  Suspends: no. */
WEFT_API int weft_taskgroup_error(const weft_taskgroup_t *g, size_t i, weft_task_t **task,
                                  int *code, const char **msg);

/* Free the group.  Children still running (exit was never called) are
 * left alone and the memory goes when the last of them finishes.  NULL is
 * ignored.  Thread: any.  Suspends: no. */
WEFT_API void weft_taskgroup_free(weft_taskgroup_t *g);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_CANCEL_H */
