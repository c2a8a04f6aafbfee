/* weft — synchronization primitives for tasks: Lock, Event, Condition,
 * Semaphore / BoundedSemaphore and Barrier, after asyncio's (locks.py).
 *
 * Unlike asyncio's, these are shared by tasks running in parallel on many
 * workers: every primitive is safe from any worker, FIFO-fair, and wakes
 * each waiter exactly once per grant.  The calls that wait are suspension
 * points: they run only inside a task (-EPERM elsewhere), and a
 * cancellation request (weft_task_cancel, or a timeout scope's) makes them
 * return WEFT_ECANCELED.  A waiter that is handed the lock, a permit or a
 * notification at the moment it is cancelled passes it on to the next
 * waiter, as asyncio does, so nothing is ever lost.  The calls that do not
 * wait work from any thread, including loop callbacks and plain threads.
 *
 * Where asyncio raises, weft returns: RuntimeError (releasing an unlocked
 * lock, waiting or notifying on a condition whose lock is not held) is
 * WEFT_EINVALSTATE; ValueError (a bounded semaphore released too often, a
 * negative initial value) is -EINVAL; BrokenBarrierError is WEFT_EBROKEN.
 *
 * Objects are freed with their _free function once no task uses them.  A
 * primitive that still has waiters is not freed: the call logs an error
 * and leaks it, rather than leave the waiters pointing at freed memory.
 * docs/sync.md has the details and the differences from asyncio.
 */
#ifndef WEFT_SYNC_H
#define WEFT_SYNC_H

#include "weft/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Lock (asyncio.Lock) ---------------------------------------------- */

/* A new, unlocked lock.
 * Returns 0, -EINVAL (out NULL), -ENOMEM.  Thread: any.  Suspends: no. */
WEFT_API int weft_lock_new(weft_lock_t **out);

/* Acquire the lock, waiting in FIFO order behind the tasks already waiting.
 * A free lock with no waiter (or only cancelled ones) is taken at once,
 * without suspending, so a pending cancellation is not delivered then.
 * Returns 0 (the caller holds the lock), WEFT_ECANCELED (it does not),
 * -EINVAL, -EPERM (not in a task).
 * Thread: inside a task.  Suspends: yes (only when the lock is taken). */
WEFT_API int weft_lock_acquire(weft_lock_t *lk);

/* Take the lock only if acquire would not wait (extension: lets a loop
 * callback or a plain thread hold the lock, e.g. around a notify).
 * Returns 0, -EBUSY (held, or tasks are waiting), -EINVAL.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_lock_try_acquire(weft_lock_t *lk);

/* Release the lock.  With tasks waiting, the lock passes straight to the
 * first of them (it stays locked).  Like asyncio's, a lock is not owned:
 * any task or thread may release it.
 * Returns 0, WEFT_EINVALSTATE (not locked), -EINVAL.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_lock_release(weft_lock_t *lk);

/* true while held (including while handed to a waiter that has not run
 * yet).  NULL gives false.  Thread: any.  Suspends: no. */
WEFT_API bool weft_lock_locked(const weft_lock_t *lk);

/* Free an unused lock.  NULL is ignored; with waiters: logged, not freed.
 * Thread: any.  Suspends: no. */
WEFT_API void weft_lock_free(weft_lock_t *lk);

/* ---- Event (asyncio.Event) -------------------------------------------- */

/* A new event, not set.  Returns 0, -EINVAL, -ENOMEM.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_event_new(weft_event_t **out);

/* Set the flag and wake every waiting task.  Returns 0, -EINVAL.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_event_set(weft_event_t *e);

/* Clear the flag.  Tasks already woken by set still return 0.
 * Returns 0, -EINVAL.  Thread: any.  Suspends: no. */
WEFT_API int weft_event_clear(weft_event_t *e);

/* Wait until the flag is set; returns at once (without suspending) when it
 * is set already.
 * Returns 0, WEFT_ECANCELED, -EINVAL, -EPERM.
 * Thread: inside a task.  Suspends: yes (only when not set). */
WEFT_API int weft_event_wait(weft_event_t *e);

/* NULL gives false.  Thread: any.  Suspends: no. */
WEFT_API bool weft_event_is_set(const weft_event_t *e);

/* NULL is ignored; with waiters: logged, not freed.
 * Thread: any.  Suspends: no. */
WEFT_API void weft_event_free(weft_event_t *e);

/* ---- Condition (asyncio.Condition) ------------------------------------ */

/* A condition over `lock` (shared, not owned: free it after the
 * condition), or over a lock of its own when lock is NULL.
 * Returns 0, -EINVAL (out NULL), -ENOMEM.  Thread: any.  Suspends: no. */
WEFT_API int weft_cond_new(weft_lock_t *lock, weft_cond_t **out);

/* weft_lock_acquire / weft_lock_try_acquire / weft_lock_release /
 * weft_lock_locked on the condition's lock, with the same codes, threads
 * and suspension. */
WEFT_API int weft_cond_acquire(weft_cond_t *c);
WEFT_API int weft_cond_try_acquire(weft_cond_t *c);
WEFT_API int weft_cond_release(weft_cond_t *c);
WEFT_API bool weft_cond_locked(const weft_cond_t *c);

/* Release the lock, wait for a notify, and acquire the lock again before
 * returning, whatever the outcome: on WEFT_ECANCELED the lock is held too
 * (asyncio re-acquires even when cancelled; cancellations that arrive
 * while re-acquiring are kept and reported once the lock is held).  A
 * waiter notified and cancelled at the same moment passes the
 * notification on to another waiter.  Like asyncio's, it may return 0
 * spuriously: re-check the state (weft_cond_wait_for does).
 * Returns 0, WEFT_ECANCELED, WEFT_EINVALSTATE (lock not held), -EINVAL,
 * -EPERM.  Thread: inside a task.  Suspends: yes. */
WEFT_API int weft_cond_wait(weft_cond_t *c);

/* Wait until pred(arg) is true: pred is called first, then after each
 * wakeup, always with the lock held (asyncio.Condition.wait_for).
 * Returns 0 (pred true, lock held), or what weft_cond_wait returned
 * (WEFT_ECANCELED with the lock held), -EINVAL (c or pred NULL), -EPERM.
 * Thread: inside a task.  Suspends: yes (only while pred is false). */
WEFT_API int weft_cond_wait_for(weft_cond_t *c, bool (*pred)(void *arg), void *arg);

/* Wake up to n waiting tasks (n <= 0: none), oldest first.  The lock must
 * be held (by anyone: asyncio checks locked(), not an owner).
 * Returns how many were woken (>= 0), WEFT_EINVALSTATE (lock not held),
 * -EINVAL.  Thread: any.  Suspends: no. */
WEFT_API int weft_cond_notify(weft_cond_t *c, int n);

/* Wake every waiting task.  Returns as weft_cond_notify.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_cond_notify_all(weft_cond_t *c);

/* Frees its own lock too.  NULL is ignored; with waiters (on the condition
 * or on its own lock): logged, not freed.  Thread: any.  Suspends: no. */
WEFT_API void weft_cond_free(weft_cond_t *c);

/* ---- Semaphore / BoundedSemaphore (asyncio) --------------------------- */

/* A semaphore with `value` permits.  bounded: a BoundedSemaphore, whose
 * release past the initial value fails.
 * Returns 0, -EINVAL (value < 0, out NULL), -ENOMEM.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_sem_new(int value, bool bounded, weft_sem_t **out);

/* Take a permit, waiting in FIFO order.  Does not suspend when
 * weft_sem_locked() is false.
 * Returns 0, WEFT_ECANCELED (no permit taken), -EINVAL, -EPERM.
 * Thread: inside a task.  Suspends: yes (only when locked). */
WEFT_API int weft_sem_acquire(weft_sem_t *s);

/* Give a permit back; the first waiting task gets it.
 * Returns 0, -EINVAL (NULL, or a bounded semaphore released more often
 * than acquired: asyncio's ValueError).  Thread: any.  Suspends: no. */
WEFT_API int weft_sem_release(weft_sem_t *s);

/* true when acquire would wait: no permit left, or tasks wait that are not
 * cancelled (asyncio 3.12+).  NULL gives false.
 * Thread: any.  Suspends: no. */
WEFT_API bool weft_sem_locked(const weft_sem_t *s);

/* Permits available now (extension, asyncio's private _value); -EINVAL
 * for NULL.  Thread: any.  Suspends: no. */
WEFT_API int weft_sem_value(const weft_sem_t *s);

/* NULL is ignored; with waiters: logged, not freed.
 * Thread: any.  Suspends: no. */
WEFT_API void weft_sem_free(weft_sem_t *s);

/* ---- Barrier (asyncio.Barrier) ---------------------------------------- */

/* A barrier for `parties` tasks.
 * Returns 0, -EINVAL (parties 0, out NULL), -ENOMEM.
 * Thread: any.  Suspends: no. */
WEFT_API int weft_barrier_new(unsigned parties, weft_barrier_t **out);

/* Wait until `parties` tasks wait; all then return together, each with a
 * distinct arrival index 0 .. parties-1 in *index (may be NULL).  Waits
 * first while the barrier drains or resets from the previous round.
 * Returns 0, WEFT_EBROKEN (aborted, or reset while waiting),
 * WEFT_ECANCELED (this task leaves the barrier; the others keep waiting),
 * -EINVAL, -EPERM.  *index is written only on 0.
 * Thread: inside a task.  Suspends: yes (not for the last arrival). */
WEFT_API int weft_barrier_wait(weft_barrier_t *b, unsigned *index);

/* Put the barrier into the broken state: waiting tasks and later waits
 * return WEFT_EBROKEN until weft_barrier_reset.
 * Returns 0, -EINVAL.  Thread: any.  Suspends: no (asyncio's is a
 * coroutine only because it takes the condition's lock). */
WEFT_API int weft_barrier_abort(weft_barrier_t *b);

/* Back to the empty state; tasks waiting now return WEFT_EBROKEN.
 * Returns 0, -EINVAL.  Thread: any.  Suspends: no. */
WEFT_API int weft_barrier_reset(weft_barrier_t *b);

/* Tasks waiting for the barrier to fill (0 while draining or broken).
 * NULL gives 0.  Thread: any.  Suspends: no. */
WEFT_API unsigned weft_barrier_n_waiting(const weft_barrier_t *b);

/* The parties count (0 for NULL).  Thread: any.  Suspends: no. */
WEFT_API unsigned weft_barrier_parties(const weft_barrier_t *b);

/* NULL gives false.  Thread: any.  Suspends: no. */
WEFT_API bool weft_barrier_broken(const weft_barrier_t *b);

/* NULL is ignored; with waiters: logged, not freed.
 * Thread: any.  Suspends: no. */
WEFT_API void weft_barrier_free(weft_barrier_t *b);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_SYNC_H */
