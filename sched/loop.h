/* weft — the loop's private layout and internal entry points.
 *
 * Concurrency of struct weft_loop:
 *   | field(s)                 | written by          | read by              |
 *   |--------------------------|---------------------|----------------------|
 *   | ready, timers, fds,      | loop thread (or the | loop thread          |
 *   |   poller calls, seq      | setup thread while  |                      |
 *   |                          | not running)        |                      |
 *   | inbox                    | any (push), loop    | loop thread          |
 *   |                          | thread (take/close) |                      |
 *   | park                     | any (exchange), loop| any                  |
 *   |                          | thread (CAS/xchg)   |                      |
 *   | running, stopping,closed,| atomics             | any                  |
 *   |   owner, debug, slow_ns  |                     |                      |
 *   | refs                     | any (atomic)        | any                  |
 *   | owner_refs, biased       | worker thread (then | worker thread (then  |
 *   |                          | runtime, after join)| runtime, after join) |
 *   | stats                    | relaxed atomics     | any                  |
 *
 * Park protocol (DESIGN.md "Parking"): `park` is RUNNING, PARKED or
 * NOTIFIED and changes only by exchange/CAS.
 *   waker:  push work; if exchange(park, NOTIFIED) returned PARKED, write
 *           the eventfd (so: no write while the loop is awake, at most one
 *           per sleep).
 *   loop:   CAS RUNNING -> PARKED; if that fails (NOTIFIED) exchange back
 *           to RUNNING and poll without sleeping; else sleep in epoll, then
 *           exchange RUNNING and drain the inbox.
 * A waker's exchange and the loop's CAS/exchange are RMWs on one word, so
 * they are totally ordered; acq_rel makes the pushed work visible to the
 * drain that follows the loop's RMW (release sequences chain RMWs).
 *
 * Posting to the inbox (weft__loop_notify_posted) skips the exchange when a
 * seq_cst load finds NOTIFIED: a notification not consumed yet covers the
 * new push too.  The push (the store of the slot's fn, or the overflow
 * CAS), that load, the loop's exchange back to RUNNING and its loads of
 * the next inbox slot and the overflow head are all seq_cst, so in their single total
 * order either the load precedes the exchange (the loop then drains after
 * the push) or it follows it and reads RUNNING, PARKED, or a NOTIFIED
 * whose consumption is itself followed by a drain.  A busy loop fed from
 * another thread then costs that thread one locked instruction per post
 * (the push) instead of two, and the loop's line no ping-pong.
 */
#ifndef WEFT_SCHED_LOOP_H
#define WEFT_SCHED_LOOP_H

#include <stdalign.h>
#include <stdatomic.h>

#include "io/fdwatch.h"
#include "io/poller.h"
#include "sched/coro.h"
#include "sched/common.h"
#include "sched/handle.h"
#include "sched/inbox.h"
#include "sched/stack.h"
#include "sched/timer.h"
#include "weft/future.h"
#include "weft/loop.h"

enum { WEFT__PARK_RUNNING = 0, WEFT__PARK_PARKED = 1, WEFT__PARK_NOTIFIED = 2 };

#define WEFT__SLOW_CALLBACK_DEFAULT_NS (100 * 1000000LL) /* asyncio's 0.1 s */

typedef struct weft_loop_counters {
    atomic_uint_fast64_t iterations, callbacks_run, threadsafe_calls, eventfd_writes, wakeups,
        sleeps, timers_fired, timers_cancelled;
} weft_loop_counters_t;

struct weft_loop {
    /* ---- loop-thread state ---- */
    weft_poller_t poller;
    weft_handle_t *ready_head, *ready_tail;
    size_t ready_n;
    /* Free handles kept for reuse (loop.c, "handle pool"). */
    weft_handle_t *hpool;
    unsigned hpool_n;
    /* take_inbox() stopped for want of a handle: poll again soon. */
    bool inbox_stalled;
    weft_timer_heap_t timers;
    uint64_t timer_seq;
    weft_fdtable_t fds;
    weft_exception_handler_fn exc_fn;
    void *exc_arg;
    int64_t wake_owed; /* eventfd writes promised by wakers, not yet read */
    /* Tasks: the context of the thread running the loop (tasks resumed by
     * the loop switch back to it), the stack cache of that thread, and the
     * worker owning this loop (NULL for a standalone loop). */
    weft_coro_t main_ctx;
    weft_stack_cache_t *stacks;
    struct weft_worker *worker;
    struct weft_task_set *tasks; /* standalone loops: tasks homed here */
    /* How long a plain thread in weft_future_wait polls a future of this
     * loop before it sleeps: the runtime's idle_spin_ns for worker loops,
     * the default for standalone ones.  Written before the loop is shared. */
    int64_t spin_ns;
    /* Called (loop thread) right after a blocking wait returns, before
     * any event or callback of that iteration runs: a worker leaves the
     * idle set there, so a wake is never aimed at a worker busy in a
     * callback.  NULL for standalone loops. */
    void (*on_unpark)(struct weft_worker *w);

    /* ---- shared flags ---- */
    atomic_bool running;
    atomic_bool stopping;
    atomic_bool closed;
    atomic_bool debug;
    _Atomic(int64_t) slow_ns;
    _Atomic(const void *) owner; /* weft__thread_id() of the loop thread */
    /* References (futures, handles and the creator's): biased for a
     * worker's loop (weft__loop_retain), plain otherwise. */
    _Atomic(int64_t) refs;
    int64_t owner_refs; /* the worker thread's own, unshared count */
    bool biased;        /* owner_refs in use, with refs raised by a bias */
    weft_loop_counters_t stats;

    /* ---- cross-thread hot words, each on its own line ---- */
    weft_inbox_t inbox;      /* aligned to its own lines */
    weft__hstack_t overflow; /* handles posted when the inbox had no memory */
    alignas(WEFT_CACHELINE) atomic_int park;
    char pad_[WEFT_CACHELINE - sizeof(atomic_int)];
};

/* Relaxed counter bump by the one thread that writes the counter. */
#define WEFT__STAT_ADD(loop, field, n)                                                             \
    atomic_store_explicit(&(loop)->stats.field,                                                    \
                          atomic_load_explicit(&(loop)->stats.field, memory_order_relaxed) + (n),  \
                          memory_order_relaxed)

/* References on a loop.  A runtime worker's loop counts the references
 * its own thread takes and drops in a plain field (owner_refs), and only
 * the others' in the atomic `refs`, which a large bias keeps from reaching
 * zero meanwhile: every future and handle holds a reference, so a spawn
 * used to cost two locked instructions on one line shared by all the
 * workers.  weft__loop_bias_end folds the two together. */
void weft__loop_retain(weft_loop_t *loop);
void weft__loop_release(weft_loop_t *loop);

/* Give a worker loop biased counting (before its thread starts). */
void weft__loop_bias_begin(weft_loop_t *loop);

/* Fold owner_refs into refs and stop the biased counting; no-op if it is
 * not biased.  Called by the worker thread once it stopped running the
 * loop, or by any thread after that thread ended (or never started). */
void weft__loop_bias_end(weft_loop_t *loop);

/* true on the thread that may use loop-thread functions right now: the
 * running loop's thread, or while it is not running, any thread. */
bool weft__loop_on_thread(const weft_loop_t *loop);

/* Context check for loop-thread functions: 0, or -EPERM (logged in debug
 * mode, naming fn). */
int weft__loop_check_thread(weft_loop_t *loop, const char *fn);

/* Append a handle to the ready FIFO (loop thread; takes the reference). */
void weft__loop_ready_push(weft_loop_t *loop, weft_handle_t *h);

/* Anything posted from another thread not taken yet (loop thread). */
static inline bool weft__loop_inbox_nonempty(weft_loop_t *loop)
{
    return weft__inbox_peek(&loop->inbox) != NULL || weft__hstack_nonempty(&loop->overflow);
}

/* Schedule fn(arg) on loop from any thread: the ready FIFO directly on the
 * loop thread, the inbox otherwise.  0, -ENOMEM, WEFT_ECLOSED. */
int weft__loop_post(weft_loop_t *loop, weft_callback_fn fn, void *arg);

/* As weft__loop_post with a handle allocated beforehand, so posting cannot
 * fail for memory.  0 (the loop owns h's reference), or WEFT_ECLOSED (the
 * caller still owns it). */
int weft__loop_post_handle(weft_loop_t *loop, weft_handle_t *h);

/* Wake the loop if it sleeps (the park protocol above).  Any thread. */
void weft__loop_notify(weft_loop_t *loop);

/* weft__loop_notify after a push to loop's inbox: no RMW when the loop is
 * already notified (the protocol above).  Any thread. */
void weft__loop_notify_posted(weft_loop_t *loop);

/* One iteration; with may_block false it never sleeps.  0 or -errno from
 * epoll.  Loop thread, with the loop marked running. */
int weft__loop_run_once(weft_loop_t *loop, bool may_block);

/* Mark the calling thread as running loop (or none) for
 * weft_get_running_loop(). */
void weft__loop_set_running(weft_loop_t *loop);

/* Report through the loop's exception handler (loop thread or any thread
 * while the loop does not run; the default handler is thread-safe). */
void weft__loop_report(weft_loop_t *loop, int code, const char *message, weft_future_t *f);

#endif /* WEFT_SCHED_LOOP_H */
