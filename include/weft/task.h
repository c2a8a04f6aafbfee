/* weft — tasks: stackful coroutines that may migrate between workers.
 *
 * A task runs fn(arg) on its own stack.  It suspends in weft_await(),
 * weft_yield(), weft_sleep() (and later every blocking primitive) and
 * resumes on any worker of its runtime — or only on its loop when pinned,
 * or when it was spawned on a standalone loop.  A task is a future: its
 * outcome is fn's return (0 + result, or an error code).
 *
 * Rules for task code: read errno right after the failing call, before
 * anything that can suspend; do not keep pointers to thread-locals across
 * a suspension; never hold a pthread mutex across one.
 */
#ifndef WEFT_TASK_H
#define WEFT_TASK_H

#include "weft/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct weft_spawn_opts {
    const char *name;    /* copied; NULL = "Task-<n>" */
    size_t stack_size;   /* 0 = runtime (or default) stack size */
    weft_loop_t *pinned; /* non-NULL: runs only on this loop */
    bool eager;          /* run up to the first suspension inside spawn */
} weft_spawn_opts_t;

/* Start fn(arg) as a task.  Inside a runtime the task may run on any worker
 * (pinned: only on that loop); on a standalone loop it runs on that loop.
 * With out non-NULL, *out gets one reference to the task.
 * Returns 0, -EINVAL (fn NULL, stack_size too big, pinned loop of another
 * runtime), -ENOMEM, WEFT_ECLOSED (runtime shutting down or loop closed),
 * -EPERM (not called from a task or loop callback).
 * Thread: a task, or a loop callback (loop thread).  Suspends: no (an eager
 * task runs until its first suspension before spawn returns). */
WEFT_API int weft_spawn(weft_fn fn, void *arg, const weft_spawn_opts_t *opts, weft_task_t **out);

/* Start fn(arg) as a task on `loop` (a worker's loop: the task may then
 * migrate to other workers; a standalone loop: it stays there).
 * *out gets the task's future (one reference).
 * Returns 0, -EINVAL, -ENOMEM, WEFT_ECLOSED.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_run_coroutine_threadsafe(weft_loop_t *loop, weft_fn fn, void *arg,
                                           weft_future_t **out);

/* The task's future (borrowed: valid while the task reference is held).
 * Thread: any.  Suspends: no. */
WEFT_API weft_future_t *weft_task_future(weft_task_t *t);

/* Drop a task reference.  NULL is ignored.  Thread: any.  Suspends: no. */
WEFT_API void weft_task_release(weft_task_t *t);

/* Wait for f inside a task.  Returns f's outcome (0 with *result set when
 * result is non-NULL, f's error code, or WEFT_ECANCELED when f was
 * cancelled), or WEFT_ECANCELED when this task is cancelled while waiting,
 * -EINVAL (f NULL), -EPERM (not in a task), -EDEADLK (f is this task).
 * A done f returns at once without suspending (no cancellation is
 * delivered).  When a cancellation of this task is delivered here (also
 * one pending on entry), asyncio's rule applies: a plain future is
 * cancelled with the request's message and WEFT_ECANCELED is returned; a
 * task is sent the request and awaited, and its outcome is returned (a
 * task that swallows it yields its value; one already done makes this
 * return WEFT_ECANCELED).  If f completes and the request arrives before
 * this task resumes, f's outcome wins and the request stays pending.
 * Thread: inside a task.  Suspends: yes (not when f is done). */
WEFT_API int weft_await(weft_future_t *f, void **result);

/* Let other ready tasks run (asyncio.sleep(0)).
 * Returns 0, WEFT_ECANCELED, -EPERM.  Thread: inside a task.  Suspends: yes. */
WEFT_API int weft_yield(void);

/* Sleep delay_ns (<= 0 behaves as weft_yield).
 * Returns 0, WEFT_ECANCELED, -ENOMEM, -EPERM.
 * Thread: inside a task.  Suspends: yes. */
WEFT_API int weft_sleep(int64_t delay_ns);

/* The task running on this thread, or NULL.  Thread: any.  Suspends: no. */
WEFT_API weft_task_t *weft_current_task(void);

typedef void (*weft_task_visit_fn)(weft_task_t *t, void *arg);

/* Call fn on every task of rt that is not done.  The task reference passed
 * to fn is valid only during the call (retain it through
 * weft_future_retain(weft_task_future(t)) to keep it).  fn must not spawn
 * or release tasks of rt.  Safe while tasks run on other workers.
 * Returns the number of tasks visited, or -EINVAL.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_all_tasks(weft_runtime_t *rt, weft_task_visit_fn fn, void *arg);

/* Request cancellation: delivered at the task's next suspension point,
 * which returns WEFT_ECANCELED (several requests made before it are
 * delivered once).  A task cancelled before its first step never runs
 * its body.  A task that returns 0 with a request still undelivered ends
 * cancelled; one that returns an error keeps it; one that catches the
 * delivered cancellation and returns a value ends with that value.  msg
 * (copied, nullable): the first message among the requests pending
 * together; a request made after a delivery brings its own.  It becomes
 * the task's future message if the task ends cancelled, and is passed on
 * to the future or task it awaits.
 * Returns 1 requested (the task had not finished: it will see it, or end
 * cancelled), 0 already done (not counted), -EINVAL.
 * Thread: any, also a plain pthread.  Suspends: no. */
WEFT_API int weft_task_cancel(weft_task_t *t, const char *msg);

/* Cancellation requests of t not withdrawn by weft_task_uncancel,
 * delivered or not (asyncio's cancelling()); 0 for NULL.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_task_cancelling(const weft_task_t *t);

/* Withdraw one request; returns the remaining count (0 when there was
 * none).  When none remains, a request not yet delivered is withdrawn
 * too and never interrupts the task (Python 3.13).  -EINVAL for NULL.
 * Thread: any (normally the task itself).  Suspends: no. */
WEFT_API int weft_task_uncancel(weft_task_t *t);

/* Name ("Task-<n>" unless set).  Valid until the next set_name or the last
 * release.  Thread: any.  Suspends: no. */
WEFT_API const char *weft_task_get_name(const weft_task_t *t);

/* Returns 0, -EINVAL, -ENOMEM.  Thread: any (the task itself, or while no
 * other thread reads the name).  Suspends: no. */
WEFT_API int weft_task_set_name(weft_task_t *t, const char *name);

/* Task factory: weft_spawn calls it instead of creating the task itself.
 * The factory calls weft_task_create() to make the real task. */
typedef int (*weft_task_factory_fn)(weft_fn fn, void *arg, const weft_spawn_opts_t *opts,
                                    weft_task_t **out, void *factory_arg);

/* Install (NULL = none) the runtime's task factory.
 * Returns 0, -EINVAL.  Thread: any.  Suspends: no. */
WEFT_API int weft_runtime_set_task_factory(weft_runtime_t *rt, weft_task_factory_fn fn,
                                           void *factory_arg);

/* The plain task constructor (what weft_spawn does without a factory).
 * Returns as weft_spawn.  Thread: as weft_spawn.  Suspends: as weft_spawn. */
WEFT_API int weft_task_create(weft_fn fn, void *arg, const weft_spawn_opts_t *opts,
                              weft_task_t **out);

/* A factory that makes every task eager (asyncio.eager_task_factory). */
WEFT_API int weft_eager_task_factory(weft_fn fn, void *arg, const weft_spawn_opts_t *opts,
                                     weft_task_t **out, void *factory_arg);

/* ---- task context (asyncio's contextvars) ---------------------------------
 *
 * Task-local values by key.  A task spawned from a task starts with a copy
 * of its spawner's values, and so does a call submitted to an executor
 * from a task (weft_to_thread, weft_run_in_executor): later sets on either
 * side are not seen by the other.  A task spawned from a loop callback or
 * a plain thread starts empty.  The context owns each value set in it:
 * the key's destroy function (if any) is called once no context holds the
 * value any more — when it is replaced or unset and no copy shares it,
 * or when the last task or call holding it finishes — on whatever thread
 * that happens. */
typedef struct weft_context_key weft_context_key_t;

/* A new key (asyncio.ContextVar).  destroy may be NULL.
 * Returns 0, -EINVAL (out NULL), -ENOMEM.  Thread: any.  Suspends: no. */
WEFT_API int weft_context_key_new(void (*destroy)(void *value), weft_context_key_t **out);

/* Free a key.  Values already set under it stay until their contexts let
 * go of them (their destroy function is still called).  NULL is ignored.
 * Thread: any, once no one uses the key.  Suspends: no. */
WEFT_API void weft_context_key_free(weft_context_key_t *key);

/* Set the current task's value for key; NULL unsets it.  Setting the
 * value it already has changes nothing.  On error the value is not taken
 * (destroy is not called for it).
 * Returns 0, -EINVAL (key NULL), -ENOMEM, -EPERM (not in a task).
 * Thread: inside a task.  Suspends: no. */
WEFT_API int weft_context_set(weft_context_key_t *key, void *value);

/* The value for key in the current task's context (or, on an executor
 * thread, in the context of the call it runs); NULL when unset, for NULL,
 * and outside tasks and executor calls.
 * Thread: any.  Suspends: no. */
WEFT_API void *weft_context_get(weft_context_key_t *key);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_TASK_H */
