/* weft — queues of void * items for tasks (asyncio.Queue, LifoQueue,
 * PriorityQueue), safe across workers.
 *
 * A queue holds pointers (any value, NULL included); it never dereferences
 * or frees them.  maxsize 0 means unbounded.  put / get / join are suspension points (inside a task
 * only; cancellation makes them return WEFT_ECANCELED and then they have
 * put or got nothing); every other call works from any thread, including
 * loop callbacks and plain threads.  Waiting getters and putters are woken
 * one per item or free slot, oldest first; a woken waiter that is
 * cancelled at the same moment wakes the next one in its place, so no item
 * or slot is ever left with a waiter sleeping beside it.
 *
 * Shutdown follows Python 3.13: afterwards put and put_nowait return
 * WEFT_EQSHUTDOWN, get and get_nowait keep returning the items left and
 * then WEFT_EQSHUTDOWN; with immediate the items left are dropped at once
 * (each counting as task_done) and gets fail straight away.  Every task
 * blocked in put or get wakes up and re-checks.
 *
 * docs/sync.md has the details and the differences from asyncio.
 */
#ifndef WEFT_QUEUE_H
#define WEFT_QUEUE_H

#include "weft/types.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    WEFT_QUEUE_FIFO,     /* asyncio.Queue */
    WEFT_QUEUE_LIFO,     /* asyncio.LifoQueue */
    WEFT_QUEUE_PRIORITY, /* asyncio.PriorityQueue */
};

/* A new queue of `kind`.  cmp (PRIORITY only, required there) is called
 * with two items as they were put, and returns < 0 when the first comes
 * out before the second (lowest first, like heapq); items that compare
 * equal come out in the order they were put.  cmp must not call back into
 * the queue.
 * Returns 0, -EINVAL (bad kind, PRIORITY without cmp, out NULL), -ENOMEM.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_queue_new(int kind, size_t maxsize, int (*cmp)(const void *a, const void *b),
                            weft_queue_t **out);

/* Put item, waiting for a free slot while the queue is full.
 * Returns 0, WEFT_EQSHUTDOWN (shut down; item not put), WEFT_ECANCELED
 * (item not put), -ENOMEM, -EINVAL, -EPERM.
 * Thread: inside a task.  Suspends: yes (only when full). */
WEFT_API int weft_queue_put(weft_queue_t *q, void *item);

/* Take the next item into *item, waiting while the queue is empty.
 * Returns 0, WEFT_EQSHUTDOWN (shut down and empty), WEFT_ECANCELED
 * (nothing taken), -EINVAL (q or item NULL), -EPERM.  *item is written only
 * on 0.  Thread: inside a task.  Suspends: yes (only when empty). */
WEFT_API int weft_queue_get(weft_queue_t *q, void **item);

/* Put without waiting.
 * Returns 0, WEFT_EQUEUEFULL, WEFT_EQSHUTDOWN, -ENOMEM, -EINVAL.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_queue_put_nowait(weft_queue_t *q, void *item);

/* Take without waiting.
 * Returns 0, WEFT_EQUEUEEMPTY, WEFT_EQSHUTDOWN (shut down and empty),
 * -EINVAL.  *item is written only on 0.  Thread: any.  Suspends: no. */
WEFT_API int weft_queue_get_nowait(weft_queue_t *q, void **item);

/* Items in the queue now (0 for NULL).  Thread: any.  Suspends: no. */
WEFT_API size_t weft_queue_qsize(const weft_queue_t *q);

/* qsize() == 0 (true for NULL).  Thread: any.  Suspends: no. */
WEFT_API bool weft_queue_empty(const weft_queue_t *q);

/* maxsize > 0 and qsize() >= maxsize (false for NULL or unbounded).
 * Thread: any.  Suspends: no. */
WEFT_API bool weft_queue_full(const weft_queue_t *q);

/* The maxsize it was created with (0 for NULL).  Thread: any.
 * Suspends: no. */
WEFT_API size_t weft_queue_maxsize(const weft_queue_t *q);

/* One item taken from the queue is fully processed: the unfinished count
 * (raised by every put) goes down, and join returns once it is 0.
 * Returns 0, -EINVAL (NULL, or called more often than items were put:
 * asyncio's ValueError).  Thread: any.  Suspends: no. */
WEFT_API int weft_queue_task_done(weft_queue_t *q);

/* Wait until every item put has been marked done (returns at once, without
 * suspending, when none is unfinished).
 * Returns 0, WEFT_ECANCELED, -EINVAL, -EPERM.
 * Thread: inside a task.  Suspends: yes (only while items are unfinished). */
WEFT_API int weft_queue_join(weft_queue_t *q);

/* Shut the queue down (see above); calling it again is harmless (a later
 * immediate one still drops the items left).
 * Returns 0, -EINVAL.  Thread: any.  Suspends: no. */
WEFT_API int weft_queue_shutdown(weft_queue_t *q, bool immediate);

/* Free the queue (not the items still in it).  NULL is ignored; with tasks
 * waiting in put, get or join: logged, not freed.
 * Thread: any.  Suspends: no. */
WEFT_API void weft_queue_free(weft_queue_t *q);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_QUEUE_H */
