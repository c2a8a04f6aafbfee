/* weft — a 4-byte mutex (private).
 *
 * Every future (and so every task) has a lock; a pthread_mutex_t is 40
 * bytes and needs an init call, which was a tenth of a task record and a
 * visible part of spawning.  This is Drepper's three-state futex mutex
 * ("Futexes Are Tricky", mutex #3):
 *
 *   0  unlocked
 *   1  locked, nobody waits
 *   2  locked, someone may wait (unlock must wake one)
 *
 * lock:   CAS 0 -> 1 (acquire); else exchange 2 (acquire) until it returns
 *         0, sleeping in FUTEX_WAIT on 2 between tries.
 * unlock: fetch_sub 1 (release): from 1, done; from 2, store 0 (release)
 *         and wake one sleeper.
 *
 * Not recursive, no owner check; zero-initialised is unlocked.  Critical
 * sections under it are short (a few loads and stores, waking waiters), so
 * it never spins.  ThreadSanitizer sees the acquire/release pairs.
 */
#ifndef WEFT_SCHED_LOCK_H
#define WEFT_SCHED_LOCK_H

#include <linux/futex.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct weft__lock {
    atomic_uint v;
} weft__lock_t;

static inline void weft__lock_init(weft__lock_t *l)
{
    atomic_init(&l->v, 0);
}

static inline void weft__lock(weft__lock_t *l)
{
    unsigned c = 0;
    if (atomic_compare_exchange_strong_explicit(&l->v, &c, 1, memory_order_acquire,
                                                memory_order_relaxed))
        return;
    if (c != 2)
        c = atomic_exchange_explicit(&l->v, 2, memory_order_acquire);
    while (c != 0) {
        syscall(SYS_futex, (unsigned *)&l->v, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
        c = atomic_exchange_explicit(&l->v, 2, memory_order_acquire);
    }
}

/* true if the lock was free and is now the caller's. */
static inline bool weft__trylock(weft__lock_t *l)
{
    unsigned c = 0;
    return atomic_compare_exchange_strong_explicit(&l->v, &c, 1, memory_order_acquire,
                                                   memory_order_relaxed);
}

static inline void weft__unlock(weft__lock_t *l)
{
    if (atomic_fetch_sub_explicit(&l->v, 1, memory_order_release) != 1) {
        atomic_store_explicit(&l->v, 0, memory_order_release);
        syscall(SYS_futex, (unsigned *)&l->v, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
}

#endif /* WEFT_SCHED_LOCK_H */
