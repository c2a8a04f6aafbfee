/* weft — building blocks shared by timeouts, wait_for and the waiting
 * combinators (sched/cancel.c, sched/combinators.c).
 *
 * Fan-in.  A task waiting on many futures links one waiter node (future.h)
 * into each.  A completing future calls the node's wake under its own lock:
 * it claims the next slot of `order` with a fetch_add on `nrecorded` and
 * publishes the future's index there, then wakes the task.  The task alone
 * reads the slots, in order, from `ntaken`.  So the task sees completions
 * in the order they claimed their slots (asyncio's done-callback order),
 * futures already done when the fan-in starts first, in input order.
 *
 *   | field             | written by                        | read by      |
 *   |-------------------|-----------------------------------|--------------|
 *   | order[k]          | the completer that claimed k      | the task     |
 *   |                   | (release store, once)             | (acquire)    |
 *   | nrecorded         | completers (relaxed fetch_add)    | -            |
 *   | ntaken, nodes,    | the task (nodes: linked/unlinked  | the task     |
 *   |   everything else |   under each future's lock)       |              |
 *
 * Invariants:
 *   1. Each node is recorded at most once: by the wake that unlinks it, or
 *      by the task when the future was done before the node could be
 *      linked.  So nrecorded <= n and every slot is written at most once.
 *   2. A slot k < nrecorded that still reads 0 is being written: its
 *      completer wakes the task right after the store, so the task may
 *      suspend and will see it.
 *   3. The task unlinks every still-linked node before the nodes are
 *      freed (weft__fanin_fini); the future's lock makes that wait for a
 *      wake in progress.
 *
 * Alarm.  A timer on the task's current loop that wakes it at a deadline,
 * holding a task reference until it runs, is cancelled or is dropped by
 * a closing loop (weft_sleep's pattern).
 */
#ifndef WEFT_SCHED_CANCEL_H
#define WEFT_SCHED_CANCEL_H

#include <stdatomic.h>

#include "sched/future.h"
#include "sched/task.h"

typedef struct weft__fanin weft__fanin_t;

typedef struct weft__fanin_node {
    weft_waiter_t w;
    weft__fanin_t *fi;
    size_t idx;
} weft__fanin_node_t;

struct weft__fanin {
    weft_task_t *task;
    weft_future_t *const *fs;
    size_t n;
    weft__fanin_node_t *nodes;
    atomic_size_t *order; /* idx + 1; 0 = not written yet */
    atomic_size_t nrecorded;
    size_t ntaken;
};

/* Link a node into each of fs[0..n) on behalf of task t (the caller).
 * fs must stay valid until weft__fanin_fini.  0 or -ENOMEM.
 * Thread: inside t. */
int weft__fanin_init(weft__fanin_t *fi, weft_task_t *t, weft_future_t *const *fs, size_t n);

/* The index of the next completion not yet taken: true and *idx, or
 * false if none is visible yet.  Thread: inside t. */
bool weft__fanin_next(weft__fanin_t *fi, size_t *idx);

/* Unlink every node: no completion is recorded after this returns (the
 * ones recorded before stay readable through weft__fanin_next).
 * Thread: inside t, or the abandoning thread. */
void weft__fanin_stop(weft__fanin_t *fi);

/* weft__fanin_stop, then free the nodes.  Thread: as weft__fanin_stop. */
void weft__fanin_fini(weft__fanin_t *fi);

typedef struct weft__alarm {
    weft_handle_t *h; /* NULL when not armed */
    weft_task_t *t;   /* whose reference the timer holds */
} weft__alarm_t;

/* Arm a wake of t (the caller, on its current loop) at deadline_ns; an
 * armed alarm is left as it is.  0 or -ENOMEM.  Thread: inside t. */
int weft__alarm_arm(weft__alarm_t *a, weft_task_t *t, int64_t deadline_ns);

/* Cancel the alarm if armed.  Thread: inside t, or the abandoning thread. */
void weft__alarm_disarm(weft__alarm_t *a);

/* Wait until f is done, without passing t's own cancellation on to f: 0,
 * or WEFT_ECANCELED when a request for t is delivered first (also one
 * pending on entry, unless f is done by then).  With cancel, f is
 * cancelled (weft__future_cancel_any) once the wait is set up, so an
 * -ENOMEM leaves f untouched.  Thread: inside t. */
int weft__wait_done(weft_task_t *t, weft_future_t *f, bool cancel);

#endif /* WEFT_SCHED_CANCEL_H */
