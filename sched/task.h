/* weft — tasks (private layout).
 *
 * A task is a future (first member) plus a coroutine.  Theory of
 * operation of its `state` word, after Tokio's task state:
 *
 *   IDLE      suspended, not queued: only a wake may move it (to SCHEDULED)
 *   SCHEDULED in exactly one queue (a run queue, the inject queue, the LIFO
 *             slot, or a loop's ready FIFO as its embedded handle)
 *   RUNNING   some thread is executing it (or is about to switch in)
 *   RUNNING|NOTIFIED  woken while running: the resumer queues it again as
 *             soon as it has switched out
 *   RUNNING (queued)  requeued by its resumer after weft_yield: the state
 *             stays RUNNING while it waits in a queue, so a wake meanwhile
 *             only adds NOTIFIED (it never queues it twice) and the next
 *             resume, finding plain RUNNING, needs no RMW
 *   DONE      finished; never queued again
 *
 *   wake():    old = fetch_or(NOTIFIED): old IDLE -> it is now SCHEDULED and
 *              this waker queues it; old RUNNING -> the resumer requeues it
 *              after the switch-out; SCHEDULED or DONE -> nothing.  Every
 *              wake is an RMW, so it sits in the release sequence that the
 *              resumer's exchange reads: whatever the waker did before (say,
 *              completing the awaited future) is visible to the task.
 *   resume():  exchange(RUNNING), by the thread that dequeued it (a
 *              load-acquire when it already reads plain RUNNING).
 *   after the switch back:  CAS RUNNING -> IDLE, or, when NOTIFIED was
 *              set meanwhile, exchange(SCHEDULED) and queue it.
 *
 * Invariants:
 *   1. A task is published to other threads (queued) only by a wake that
 *      found it IDLE, or by its resumer after its switch-out returned, so
 *      no thread resumes it while its registers are still being saved.
 *   2. Suspension points tolerate spurious wakes: each loops on its own
 *      condition (future done, deadline passed, cancellation requested).
 *   3. Every task not DONE holds one reference on itself (the scheduler's),
 *      dropped when it finishes or is abandoned at shutdown.
 *
 * The CASes on `state` are acq_rel: a wake's release publishes what the
 * waker did before (e.g. completing the awaited future) to the resumed task.
 */
#ifndef WEFT_SCHED_TASK_H
#define WEFT_SCHED_TASK_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>

#include "sched/coro.h"
#include "sched/future.h"
#include "sched/handle.h"
#include "sched/runq.h"
#include "sched/stack.h"
#include "weft/task.h"

/* State bits.  SCHEDULED is NOTIFIED without RUNNING. */
enum {
    WEFT__T_IDLE = 0,
    WEFT__T_RUNNING = 2,
    WEFT__T_NOTIFIED = 4,
    WEFT__T_SCHEDULED = WEFT__T_NOTIFIED,
    WEFT__T_DONE = 8,
};

/* The cancel word, must_cancel: (cancelling() << 2) | CLOSED | PENDING.
 * PENDING: a cancellation request not yet delivered.  CLOSED: the task
 * finished (set by the same RMW that reads PENDING for the last time), so
 * weft_task_cancel refuses from then on: a request is either seen by the
 * finishing task or reported as "already done" (0), never both.  The
 * count lives in the same word so that a request is counted and made
 * pending in one step: no uncancel or finishing task can see one without
 * the other. */
enum {
    WEFT__C_PENDING = 1,
    WEFT__C_CLOSED = 2,
    WEFT__C_ONE = 4, /* one request in the count */
};

struct weft_runtime;
struct weft_worker;

/* Tasks that have not finished, for weft_all_tasks and for shutdown.
 * Sharded: a task joins the shard of the thread that creates it (worker i
 * owns shard i; other threads share them round-robin), so workers spawning
 * in parallel never meet on one lock (a single set lock was the hottest
 * spot of a spawn storm).  Each shard keeps its own count; the set has no
 * global counter for the same reason.
 *
 * Leaving.  A task that finishes on a thread of its own shard unlinks
 * itself under the shard lock.  One that finishes elsewhere (a spawner's
 * tasks run by a thief: most of them, in a spawn storm) does not take
 * that lock, which the spawner holds for every spawn: once its stack is
 * freed it pushes itself on the shard's `leavers` stack (one CAS, handing
 * over the scheduler's reference), and whoever takes the shard lock next
 * unlinks the leavers first and then drops their references (drain).  The
 * stack is push-only and taken whole, so it suffers no ABA.  Every
 * reader of the set (counts, walks) drains first, so a leaver is never
 * seen, and every worker drains the shards whose lock is free before it
 * parks, so leavers do not pile up behind a spawner gone quiet (they wait
 * at most until the workers that finished them run out of work).
 * Between finishing and being pushed, a task stays in the set done:
 * walks skip done tasks. */
#define WEFT__TASK_SHARDS_MAX 16u /* fits weft_task.shard_idx (7 bits) */

typedef struct weft_task_shard {
    alignas(WEFT_CACHELINE) weft__lock_t lock; /* held for a few stores */
    struct weft_task *head;
    size_t count;
    /* On its own line: finishers on other threads push here while the
     * shard's own thread takes the lock for every spawn. */
    alignas(WEFT_CACHELINE) _Atomic(struct weft_task *) leavers;
} weft_task_shard_t;

typedef struct weft_task_set {
    weft_task_shard_t shards[WEFT__TASK_SHARDS_MAX];
    unsigned nshards;
    /* Set by weft__task_set_close: set_add refuses from then on.  Read
     * under a shard lock, so a task is either refused or registered
     * before the closer visits its shard. */
    atomic_bool closed;
    /* A shard that drops to empty while someone waits signals `empty`
     * under empty_lock (weft__task_set_wait_empty). */
    atomic_bool waiting;
    pthread_mutex_t empty_lock;
    pthread_cond_t empty;
} weft_task_set_t;

/* Field order keeps the record at 256 bytes (jemalloc's 256 class: one
 * parked task costs a stack page plus this); check the size after adding
 * a field. */
struct weft_task {
    struct weft_future fut; /* first: a task is a future */
    weft_runnable_t run;    /* run queue / inject link */
    atomic_uint state;
    atomic_uint must_cancel; /* the cancel word above */
    int rc;
    bool finished; /* fn returned; set on the task's stack, read by the resumer */
    bool yielding; /* suspended by weft_yield: requeue at the back */
    bool has_stack;
    uint8_t shard_idx : 7;   /* its shard of its set (task_set_of) */
    uint8_t leave_later : 1; /* finished on another shard's thread: push on
                                the leavers once the stack is freed (set by
                                and read on the finishing thread) */
    weft_fn fn;
    void *arg;
    weft_coro_t coro;
    weft_stack_t stack;      /* before first run: only .size, the size to ask for */
    weft_coro_t *resumer;    /* context to switch back to when suspending */
    struct weft_runtime *rt; /* NULL for a task of a standalone loop */
    weft_loop_t *home;       /* pinned loop or standalone loop; NULL = any worker */
    /* EMBED handle to resume through a loop's ready FIFO: only pinned and
     * standalone tasks and run_coroutine_threadsafe's first run need one,
     * so it is allocated for those alone (72 bytes less per task). */
    weft_handle_t *post_h;
    char *cancel_msg; /* the pending request's message, else the last delivered
                         one's (weft_task_cancel); under fut.lock */
    /* A heap copy, or NULL for the default "Task-<id>", formatted on the
     * first weft_task_get_name (few tasks are ever asked their name). */
    _Atomic(char *) name;
    uint64_t id;
    struct weft_task *set_prev, *set_next;
    /* While suspended holding something its frames would release on the
     * way out (a waiter node on its own stack linked into a future, a
     * timer handle reference): how to undo it.  Set and cleared by the
     * task around its suspension; called only by weft__task_set_abandon,
     * before the stack is freed, when the task will never run again. */
    void (*park_unlink)(void *node, void *where);
    void *park_node, *park_where;
    /* Timeout scopes entered and not yet exited, innermost first.  Only
     * the task itself links and unlinks them (weft__task_set_abandon
     * undoes them for a task that never runs again). */
    struct weft__scope *scopes;
    /* Task-local values (sched/context.h), NULL when empty.  Read and
     * replaced by the task itself; released when it finishes. */
    struct weft__context *ctx;
};

static inline weft_task_t *weft__task_of_runnable(weft_runnable_t *r)
{
    return (weft_task_t *)((char *)r - offsetof(weft_task_t, run));
}

/* nshards: 1 for a standalone loop, the worker count for a runtime
 * (capped at WEFT__TASK_SHARDS_MAX). */
void weft__task_set_init(weft_task_set_t *s, unsigned nshards);

/* The calling thread adds to shard `shard` from now on (worker i: i). */
void weft__task_set_owner(unsigned shard);

/* Drain the leavers of every shard whose lock is free (above, "Leaving"):
 * a worker about to park, so that tasks which finished on it do not wait
 * in the shard of a spawner that has gone quiet. */
void weft__task_set_tidy(weft_task_set_t *s);

/* Tasks in s, counting leavers not drained yet (tests). */
size_t weft__task_set_count(weft_task_set_t *s);
void weft__task_set_destroy(weft_task_set_t *s);

/* Refuse new tasks (weft__task_new returns WEFT_ECLOSED), then request
 * cancellation of every task in s.  A task registered concurrently is
 * either refused or cancelled, never missed. */
void weft__task_set_close(weft_task_set_t *s, const char *msg);

/* Wait until s is empty or deadline_ns passes (-1: no limit): 0 or
 * WEFT_ETIMEDOUT. */
int weft__task_set_wait_empty(weft_task_set_t *s, int64_t deadline_ns);

/* Give up on every task still in s: never resumed again; stacks freed,
 * futures cancelled, done callbacks scheduled.  Callers make sure no
 * thread runs or queues them any more.  Returns how many. */
size_t weft__task_set_abandon(weft_task_set_t *s);

/* Resume t (dequeued by the caller, state SCHEDULED) on the thread
 * running `loop`.  Returns after t suspends or finishes. */
void weft__task_resume(weft_task_t *t, weft_loop_t *loop);

/* The wake of the state machine above.  Any thread. */
void weft__task_wake(weft_task_t *t);

/* Create a task (state SCHEDULED, not queued yet); see weft_task_create
 * for the context rules.  future_loop: where its done callbacks run.
 * posted: its first run goes through a loop's ready FIFO (its post handle
 * is allocated, as it always is for a task with a home loop). */
int weft__task_new(weft_fn fn, void *arg, const weft_spawn_opts_t *opts, struct weft_runtime *rt,
                   weft_loop_t *home, weft_loop_t *future_loop, bool posted, weft_task_t **out);

/* Queue a SCHEDULED task where it belongs. */
void weft__task_enqueue(weft_task_t *t, bool yielded);

/* ---- building suspension points outside task.c -------------------------
 *
 * A suspension point (a lock, a queue, a timeout scope ...) follows this
 * pattern, on the task's own thread:
 *
 *     weft_task_t *t = weft_current_task();        NULL: return -EPERM
 *     if (weft__task_take_cancel(t))               a request is pending:
 *         return WEFT_ECANCELED;                   deliver it, do not wait
 *     link a waiter node (may live on t's stack) whose wake, from any
 *     thread, calls weft__task_wake(t) after recording why;
 *     weft__task_park_undo(t, unlink, node, where);
 *     for (;;) {
 *         weft__task_suspend(t);
 *         if (what it waits for happened) break;
 *         if (weft__task_take_cancel(t)) { unlink; clear undo; ...
 *                                          return WEFT_ECANCELED; }
 *     }
 *     weft__task_park_undo(t, NULL, NULL, NULL); unlink if still linked
 *
 * Wakes can be spurious (a cancellation withdrawn by uncancel before
 * delivery, a late wake from an earlier wait): always re-check.  A waiter
 * that was granted something (a permit, an item) and is cancelled at the
 * same moment keeps or passes on the grant: it never drops it.
 * weft__task_park_undo registers what weft__task_set_abandon must do if
 * the task is abandoned while suspended (its frames never unwind). */
void weft__task_suspend(weft_task_t *t);
bool weft__task_take_cancel(weft_task_t *t);
void weft__task_park_undo(weft_task_t *t, void (*unlink)(void *node, void *where), void *node,
                          void *where);

/* ---- for cancellation scopes and combinators (sched/cancel.c, ...) ---- */

/* Something a task entered and must leave before it ends (a timeout
 * scope).  If the task is abandoned (never resumed again), `abandon` is
 * called instead of the normal exit, innermost scope first. */
typedef struct weft__scope {
    struct weft__scope *outer;
    void (*abandon)(struct weft__scope *s);
} weft__scope_t;

/* f's task when f is a task's future, else NULL.  Thread: any. */
weft_task_t *weft__task_of_future(weft_future_t *f);

/* Cancel what f stands for: a task gets a cancellation request
 * (weft_task_cancel), a plain future is cancelled.  true if f was not done
 * (the request was made / the future was cancelled).  Thread: any. */
bool weft__future_cancel_any(weft_future_t *f, const char *msg);

/* A copy of t's cancel message (see cancel_msg above), NULL if it has
 * none or memory ran out; weft__free it.  Thread: any. */
char *weft__task_cancel_msg_dup(weft_task_t *t);

#endif /* WEFT_SCHED_TASK_H */
