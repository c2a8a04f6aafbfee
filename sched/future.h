/* weft — futures (private layout).
 *
 * Theory of operation.  `state` moves from PENDING to one of RESULT /
 * ERROR / CANCELLED, only under `lock`: the first completer to take the
 * lock and find PENDING is the one completer; it writes result/code/msg,
 * then publishes them with a release store of the final state.  Readers
 * that see a final state with an acquire (or stronger) load may read the
 * fields without a lock.
 *
 * Done callbacks live in a list under `lock`.  Completion closes the list
 * (cbs_closed) and posts it to the loop as one batch, through a handle
 * allocated when the first callback was added, while still holding the
 * lock; a callback added afterwards is posted alone, also under the
 * lock, so it lands after the batch: registration order is kept even when
 * completion and add race on two threads.  The lock is never held across a
 * suspension.
 *
 * Plain-thread waiters (weft_future_wait) sleep on a futex on `state`.
 * A waiter checks the state and increments `waiters` under the lock; the
 * completer stores the state and reads `waiters` under the same lock, and
 * wakes the futex after releasing it.  So either the waiter saw the final
 * state, or the completer saw the waiter; the kernel re-checks the state
 * before sleeping, so a wake that comes first is not lost.
 *
 * Invariants:
 *   1. result/code/msg are written once, before the final state is stored.
 *   2. Every registered callback runs exactly once, or is removed by
 *      weft_future_remove_done_callback, or is reported dropped because the
 *      loop closed.
 *   3. A future holds a reference on its loop; every posted batch holds a
 *      reference on the future.
 */
#ifndef WEFT_SCHED_FUTURE_H
#define WEFT_SCHED_FUTURE_H

#include <pthread.h>
#include <stdatomic.h>

#include "sched/lock.h"
#include "weft/future.h"
#include "weft/loop.h"

enum {
    WEFT__F_PENDING = 0,
    WEFT__F_RESULT = 1, /* this and above: final (is_final in future.c) */
    WEFT__F_ERROR = 2,
    WEFT__F_CANCELLED = 3,
};

typedef struct weft_done_node {
    struct weft_done_node *next;
    weft_done_fn fn;
    void *arg;
    weft_future_t *f;
} weft_done_node_t;

/* A suspended task waiting for the future (weft_await).  Lives on the
 * waiting task's stack; linked and unlinked under the future's lock, and
 * `wake` is called under that lock, so the node stays valid while it is
 * used. */
typedef struct weft_waiter {
    struct weft_waiter *next, *prev;
    void (*wake)(struct weft_waiter *w);
    void *ctx;
    bool linked;
} weft_waiter_t;

struct weft_future {
    /* The small fields first, packed: with a task's own fields after
     * them, a task record fits jemalloc's 256-byte class. */
    atomic_uint refs;
    atomic_int state;
    atomic_int waiters;
    int code;
    weft__lock_t lock; /* sched/lock.h: 4 bytes, where a pthread mutex is 40 */
    atomic_bool retrieved;
    bool cbs_closed;
    bool is_task; /* embedded in a task: the last release calls weft__task_free */
    weft_loop_t *loop;
    void *result;
    char *msg;
    weft_done_node_t *cb_head; /* FIFO; appended by walking (lists are short) */
    /* Allocated with the first callback, so completion never allocates and
     * so can never lose a callback for lack of memory. */
    struct weft_handle *post_h;
    weft_waiter_t *waiters_list; /* awaiting tasks */
};

/* Frees a task whose embedded future lost its last reference (task.c). */
void weft__task_free(weft_future_t *f);

/* Initialise an embedded future (refs = 1) on loop; takes a loop ref. */
void weft__future_init(weft_future_t *f, weft_loop_t *loop);

/* Link w unless f is done: 1 linked, 0 already done. */
int weft__future_add_waiter(weft_future_t *f, weft_waiter_t *w);

/* Unlink w if still linked (completion unlinks what it wakes). */
void weft__future_remove_waiter(weft_future_t *f, weft_waiter_t *w);

#endif /* WEFT_SCHED_FUTURE_H */
