/* weft — the event loop: lifecycle, scheduling, one iteration.
 *
 * One iteration (asyncio's _run_once, plus the park protocol of loop.h):
 *   1. take the inbox (work posted from other threads) into the ready FIFO;
 *   2. choose a timeout: 0 if anything is ready or a stop is pending, else
 *      until the earliest live timer, else forever;
 *   3. if the timeout is not 0, park (RUNNING -> PARKED); a failed CAS means
 *      a waker came in between: un-notify and poll without sleeping;
 *   4. epoll: fd events queue their callbacks, the wake tag is consumed;
 *      take the inbox again;
 *   5. move every timer whose deadline has passed to the ready FIFO;
 *   6. run exactly the callbacks that are in the FIFO now; what they
 *      schedule waits for the next iteration.
 */
#include "sched/loop.h"

#include "sched/task.h"

#include <dlfcn.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MAX_EVENTS 256

/* How soon a loop that could not take its inbox for want of memory tries
 * again. */
#define STALL_RETRY_NS (1000000LL)

/* The loop running on this thread.  Reached only through the non-inlined
 * functions below (DESIGN.md: TLS across coroutine switches). */
static _Thread_local weft_loop_t *tls_running_loop;

WEFT__TLS_GET(, weft_loop_t, weft_get_running_loop, tls_running_loop)
WEFT__TLS_SET(, weft_loop_t, weft__loop_set_running, tls_running_loop)

/* ---- reference counting -------------------------------------------------- */

static void hpool_free(weft_loop_t *loop);

static void loop_destroy(weft_loop_t *loop)
{
    weft__inbox_destroy(&loop->inbox);
    hpool_free(loop);
    weft__timers_destroy(&loop->timers);
    weft__stack_cache_free(loop->stacks);
    weft__task_set_destroy(loop->tasks);
    weft__free(loop->tasks);
    weft__free(loop);
}

/* Large enough that references taken by the worker thread and dropped by
 * others never bring refs down to it from above. */
#define REF_BIAS ((int64_t)1 << 40)

/* True only on the worker thread of a biased loop: nobody else has it as
 * running loop, so `biased` is read by its writer alone. */
static inline bool owner_counts(const weft_loop_t *loop)
{
    return weft_get_running_loop() == loop && loop->biased;
}

void weft__loop_retain(weft_loop_t *loop)
{
    if (owner_counts(loop)) {
        loop->owner_refs++;
        return;
    }
    atomic_fetch_add_explicit(&loop->refs, 1, memory_order_relaxed);
}

void weft__loop_release(weft_loop_t *loop)
{
    if (owner_counts(loop)) {
        loop->owner_refs--; /* may go below zero: refs holds the bias */
        return;
    }
    if (atomic_fetch_sub_explicit(&loop->refs, 1, memory_order_acq_rel) == 1)
        loop_destroy(loop);
}

void weft__loop_bias_begin(weft_loop_t *loop)
{
    loop->biased = true;
    loop->owner_refs = 0;
    atomic_fetch_add_explicit(&loop->refs, REF_BIAS, memory_order_relaxed);
}

void weft__loop_bias_end(weft_loop_t *loop)
{
    if (!loop->biased)
        return;
    loop->biased = false;
    int64_t d = loop->owner_refs - REF_BIAS;
    loop->owner_refs = 0;
    if (atomic_fetch_add_explicit(&loop->refs, d, memory_order_acq_rel) + d == 0)
        loop_destroy(loop);
}

/* ---- creation ---------------------------------------------------------------- */

int weft_loop_new(weft_loop_t **out)
{
    if (out == NULL)
        return -EINVAL;
    weft_loop_t *loop = weft__calloc(1, sizeof *loop);
    if (loop == NULL)
        return -ENOMEM;
    loop->tasks = weft__alloc_aligned(alignof(weft_task_set_t), sizeof *loop->tasks);
    if (loop->tasks == NULL) {
        weft__free(loop);
        return -ENOMEM;
    }
    int rc = weft__inbox_init(&loop->inbox);
    if (rc != 0) {
        weft__free(loop->tasks);
        weft__free(loop);
        return rc;
    }
    rc = weft__poller_init(&loop->poller);
    if (rc != 0) {
        weft__inbox_destroy(&loop->inbox);
        weft__free(loop->tasks);
        weft__free(loop);
        return rc;
    }
    weft__task_set_init(loop->tasks, 1);
    weft__timers_init(&loop->timers);
    weft__fdtable_init(&loop->fds);
    weft__hstack_init(&loop->overflow);
    atomic_init(&loop->running, false);
    atomic_init(&loop->stopping, false);
    atomic_init(&loop->closed, false);
    atomic_init(&loop->debug, weft_debug_env());
    atomic_init(&loop->slow_ns, WEFT__SLOW_CALLBACK_DEFAULT_NS);
    atomic_init(&loop->owner, NULL);
    atomic_init(&loop->refs, 1);
    atomic_init(&loop->park, WEFT__PARK_RUNNING);
    loop->spin_ns = weft__spin_ns();
    *out = loop;
    return 0;
}

/* ---- thread checks ------------------------------------------------------- */

bool weft__loop_on_thread(const weft_loop_t *loop)
{
    if (!atomic_load_explicit(&loop->running, memory_order_acquire))
        return true;
    return atomic_load_explicit(&loop->owner, memory_order_acquire) == weft__thread_id();
}

int weft__loop_check_thread(weft_loop_t *loop, const char *fn)
{
    if (weft__likely(weft__loop_on_thread(loop)))
        return 0;
    if (atomic_load_explicit(&loop->debug, memory_order_relaxed))
        weft__log(WEFT_LOG_ERROR,
                  "%s called from a thread other than the one running loop %p; use "
                  "weft_loop_call_soon_threadsafe",
                  fn, (void *)loop);
    return -EPERM;
}

/* ---- scheduling ---------------------------------------------------------- */

void weft__loop_ready_push(weft_loop_t *loop, weft_handle_t *h)
{
    h->next = NULL;
    if (loop->ready_tail != NULL)
        loop->ready_tail->next = h;
    else
        loop->ready_head = h;
    loop->ready_tail = h;
    loop->ready_n++;
}

static weft_handle_t *ready_pop(weft_loop_t *loop)
{
    weft_handle_t *h = loop->ready_head;
    loop->ready_head = h->next;
    if (loop->ready_head == NULL)
        loop->ready_tail = NULL;
    loop->ready_n--;
    return h;
}

static inline bool is_closed(const weft_loop_t *loop)
{
    return atomic_load_explicit(&loop->closed, memory_order_acquire);
}

/* Wake the loop if it sleeps (park protocol, loop.h). */
void weft__loop_notify(weft_loop_t *loop)
{
    /* acq_rel: release publishes the work pushed before this call to the
     * loop's RMW on `park`; see loop.h. */
    int old = atomic_exchange_explicit(&loop->park, WEFT__PARK_NOTIFIED, memory_order_acq_rel);
    if (old == WEFT__PARK_PARKED) {
        /* Count before writing: once the write lands the loop may close
         * and be freed, so nothing may touch it afterwards. */
        atomic_fetch_add_explicit(&loop->stats.eventfd_writes, 1, memory_order_relaxed);
        int rc = weft__poller_wake(&loop->poller);
        WEFT_CHECK(rc == 0);
    }
}

void weft__loop_notify_posted(weft_loop_t *loop)
{
    /* A notification not yet consumed covers this push too (loop.h). */
    if (atomic_load_explicit(&loop->park, memory_order_seq_cst) == WEFT__PARK_NOTIFIED)
        return;
    weft__loop_notify(loop);
}

/* ---- handle pool ----------------------------------------------------------
 * Handles that ran on this loop and that nobody else referenced go back to
 * a small free list the loop thread allocates from again: the handles of
 * entries taken from the inbox, and of call_soon/call_at.  A handle freed
 * on the thread that reuses it stays in that thread's cache and costs no
 * allocator lock.  Sanitizer builds free every handle, so that a use after
 * free is seen.  Loop thread only (or the thread setting up a loop that is
 * not running), like the ready FIFO. */
#if defined(WEFT_ASAN) || defined(WEFT_TSAN)
#define HPOOL_MAX 0u
#else
#define HPOOL_MAX 512u
#endif

static weft_handle_t *handle_get(weft_loop_t *loop, uint8_t kind, weft_callback_fn fn, void *arg)
{
    weft_handle_t *h = loop->hpool;
    if (h == NULL)
        return weft__handle_new(loop, kind, fn, arg);
    if (weft__alloc_should_fail()) /* the test seam counts pooled handles too */
        return NULL;
    loop->hpool = h->next;
    loop->hpool_n--;
    weft__handle_init(h, loop, kind, fn, arg);
    return h;
}

/* h's last reference is the caller's. */
static void handle_put(weft_loop_t *loop, weft_handle_t *h)
{
    if (h->loop_ref)
        weft__loop_release(h->loop);
    if (loop->hpool_n + 1 > HPOOL_MAX) { /* (not >=: HPOOL_MAX may be 0) */
        weft__free(h);
        return;
    }
    h->next = loop->hpool;
    loop->hpool = h;
    loop->hpool_n++;
}

static void hpool_free(weft_loop_t *loop)
{
    while (loop->hpool != NULL) {
        weft_handle_t *h = loop->hpool;
        loop->hpool = h->next;
        weft__free(h);
    }
    loop->hpool_n = 0;
}

static void take_inbox(weft_loop_t *loop);

static void queued_local_handle(void *h);
static int inbox_push_handle(weft_loop_t *loop, weft_callback_fn marker, weft_handle_t *h);

/* Queue h from the loop thread.  Whatever other threads posted before
 * (as far as this thread can know: it happened before this call) is moved
 * to the ready FIFO first, so callbacks keep causal order across threads:
 * a task failing on another worker, then one failing here because of it,
 * get their done callbacks in that order.  If the inbox holds more than
 * one take's budget, h queues behind it in the inbox instead.  The check
 * is a load; coherence guarantees it sees any post that happened before
 * it. */
static void local_push(weft_loop_t *loop, weft_handle_t *h)
{
    if (weft__loop_inbox_nonempty(loop)) {
        take_inbox(loop);
        if (weft__loop_inbox_nonempty(loop) && inbox_push_handle(loop, queued_local_handle, h) == 0)
            return;
    }
    weft__loop_ready_push(loop, h);
}

int weft_loop_call_soon(weft_loop_t *loop, weft_callback_fn fn, void *arg, weft_handle_t **out)
{
    if (loop == NULL || fn == NULL)
        return -EINVAL;
    if (is_closed(loop))
        return WEFT_ECLOSED;
    int rc = weft__loop_check_thread(loop, "weft_loop_call_soon");
    if (rc != 0)
        return rc;
    weft_handle_t *h = handle_get(loop, WEFT__HK_SOON, fn, arg);
    if (h == NULL)
        return -ENOMEM;
    if (out != NULL) {
        weft__handle_hand_out(h);
        *out = h;
    }
    local_push(loop, h);
    return 0;
}

/* The fn of an inbox entry whose arg is a handle: never called, identities
 * only (take_inbox).  A handle the loop thread queued behind a backlog
 * (local_push) is told apart so that it does not count as a threadsafe
 * call.  Their bodies differ, so that no identical-code folding can give
 * the two one address. */
static void posted_handle(void *h)
{
    (void)h;
    WEFT_CHECK(!"the inbox marker posted_handle was called");
}

static void queued_local_handle(void *h)
{
    (void)h;
    WEFT_CHECK(!"the inbox marker queued_local_handle was called");
}

/* h into the inbox as marker(h); out of memory, into the overflow stack.
 * 0 or WEFT_ECLOSED.  Any thread. */
static int inbox_push_handle(weft_loop_t *loop, weft_callback_fn marker, weft_handle_t *h)
{
    int rc = weft__inbox_push(&loop->inbox, marker, h);
    if (rc == -ENOMEM)
        rc = weft__hstack_push(&loop->overflow, h);
    return rc;
}

static int post_handle_remote(weft_loop_t *loop, weft_handle_t *h)
{
    int rc = inbox_push_handle(loop, posted_handle, h);
    if (rc == 0)
        weft__loop_notify_posted(loop);
    return rc;
}

/* fn(arg) into the inbox as a plain entry.  0, -ENOMEM, WEFT_ECLOSED. */
static int post_remote(weft_loop_t *loop, weft_callback_fn fn, void *arg)
{
    int rc = weft__inbox_push(&loop->inbox, fn, arg);
    if (rc == 0)
        weft__loop_notify_posted(loop);
    return rc;
}

int weft_loop_call_soon_threadsafe(weft_loop_t *loop, weft_callback_fn fn, void *arg,
                                   weft_handle_t **out)
{
    if (loop == NULL || fn == NULL)
        return -EINVAL;
    if (out == NULL) /* no handle to give out: the entry is (fn, arg) in a slot */
        return post_remote(loop, fn, arg);
    weft_handle_t *h = weft__handle_new(loop, WEFT__HK_SOON, fn, arg);
    if (h == NULL)
        return -ENOMEM;
    weft__handle_hand_out(h);
    if (post_handle_remote(loop, h) != 0) {
        weft__handle_unref(h);
        weft__handle_unref(h);
        return WEFT_ECLOSED;
    }
    *out = h;
    return 0;
}

int weft__loop_post_handle(weft_loop_t *loop, weft_handle_t *h)
{
    if (weft_get_running_loop() == loop) {
        if (is_closed(loop))
            return WEFT_ECLOSED;
        local_push(loop, h);
        return 0;
    }
    return post_handle_remote(loop, h);
}

int weft__loop_post(weft_loop_t *loop, weft_callback_fn fn, void *arg)
{
    if (weft_get_running_loop() != loop)
        return post_remote(loop, fn, arg);
    if (is_closed(loop))
        return WEFT_ECLOSED;
    weft_handle_t *h = handle_get(loop, WEFT__HK_SOON, fn, arg);
    if (h == NULL)
        return -ENOMEM;
    local_push(loop, h);
    return 0;
}

int weft_loop_call_at(weft_loop_t *loop, int64_t when_ns, weft_callback_fn fn, void *arg,
                      weft_handle_t **out)
{
    if (loop == NULL || fn == NULL)
        return -EINVAL;
    if (is_closed(loop))
        return WEFT_ECLOSED;
    int rc = weft__loop_check_thread(loop, "weft_loop_call_at");
    if (rc != 0)
        return rc;
    weft_handle_t *h = handle_get(loop, WEFT__HK_TIMER, fn, arg);
    if (h == NULL)
        return -ENOMEM;
    h->when = when_ns;
    h->seq = loop->timer_seq++;
    rc = weft__timers_push(&loop->timers, h);
    if (rc != 0) {
        weft__handle_unref(h);
        return rc;
    }
    if (out != NULL) {
        weft__handle_hand_out(h);
        *out = h;
    }
    return 0;
}

int weft_loop_call_later(weft_loop_t *loop, int64_t delay_ns, weft_callback_fn fn, void *arg,
                         weft_handle_t **out)
{
    if (loop == NULL || fn == NULL)
        return -EINVAL;
    if (delay_ns < 0)
        delay_ns = 0;
    int64_t now = weft__now_ns();
    int64_t when = delay_ns > INT64_MAX - now ? INT64_MAX : now + delay_ns;
    return weft_loop_call_at(loop, when, fn, arg, out);
}

/* ---- fd watching --------------------------------------------------------- */

static int fd_add(weft_loop_t *loop, int fd, int dir, weft_callback_fn fn, void *arg,
                  const char *name)
{
    if (loop == NULL || fd < 0 || fn == NULL)
        return -EINVAL;
    if (is_closed(loop))
        return WEFT_ECLOSED;
    int rc = weft__loop_check_thread(loop, name);
    if (rc != 0)
        return rc;
    return weft__fd_add(loop, fd, dir, fn, arg);
}

static int fd_remove(weft_loop_t *loop, int fd, int dir, const char *name)
{
    if (loop == NULL || fd < 0)
        return -EINVAL;
    if (is_closed(loop))
        return WEFT_ECLOSED; /* close already dropped every registration */
    int rc = weft__loop_check_thread(loop, name);
    if (rc != 0)
        return rc;
    return weft__fd_remove(loop, fd, dir);
}

int weft_loop_add_reader(weft_loop_t *loop, int fd, weft_callback_fn fn, void *arg)
{
    return fd_add(loop, fd, WEFT__FD_READ, fn, arg, "weft_loop_add_reader");
}

int weft_loop_add_writer(weft_loop_t *loop, int fd, weft_callback_fn fn, void *arg)
{
    return fd_add(loop, fd, WEFT__FD_WRITE, fn, arg, "weft_loop_add_writer");
}

int weft_loop_remove_reader(weft_loop_t *loop, int fd)
{
    return fd_remove(loop, fd, WEFT__FD_READ, "weft_loop_remove_reader");
}

int weft_loop_remove_writer(weft_loop_t *loop, int fd)
{
    return fd_remove(loop, fd, WEFT__FD_WRITE, "weft_loop_remove_writer");
}

/* ---- one iteration ------------------------------------------------------- */

/* Move what other threads posted to the ready FIFO, at most TAKE_BUDGET
 * entries: handles as they are, (fn, arg) entries into handles from the
 * pool.  The budget keeps the handles in flight within the pool and the
 * cache: a poster that runs ahead of the loop can leave a hundred thousand
 * entries, and materialising them all at once cost a page fault per 50
 * (fresh memory) and a cache miss per handle when they ran.  What stays
 * behind runs in the next iterations, after this iteration's timers and fd
 * events (asyncio would run it first; libuv and Tokio also bound the
 * callbacks per iteration).  Out of memory, the rest stays in the inbox and
 * the loop polls again soon (inbox_stalled); until then a local call_soon
 * may run ahead of those entries. */
#define TAKE_BUDGET 256

static void take_inbox(weft_loop_t *loop)
{
    uint64_t n = 0, local = 0;
    weft__ib_slot_t *s;
    loop->inbox_stalled = false;
    for (; n < TAKE_BUDGET && (s = weft__inbox_peek(&loop->inbox)) != NULL; n++) {
        weft_callback_fn fn = atomic_load_explicit(&s->fn, memory_order_relaxed);
        weft_handle_t *h = s->arg;
        if (fn == queued_local_handle) {
            local++;
        } else if (fn != posted_handle) {
            h = handle_get(loop, WEFT__HK_SOON, fn, s->arg);
            if (h == NULL) {
                loop->inbox_stalled = true;
                break;
            }
        }
        weft__inbox_take(&loop->inbox, s);
        weft__loop_ready_push(loop, h);
    }
    /* The overflow's handles count as threadsafe calls even when the loop
     * thread queued them (only out of memory). */
    for (weft_handle_t *h = weft__hstack_take(&loop->overflow); h != NULL; n++) {
        weft_handle_t *next = h->next;
        weft__loop_ready_push(loop, h);
        h = next;
    }
    if (n != local)
        WEFT__STAT_ADD(loop, threadsafe_calls, n - local);
}

static void log_slow(weft_loop_t *loop, weft_callback_fn fn, void *arg, int64_t took)
{
    Dl_info info;
    const char *name = NULL;
    void *fnp;
    memcpy(&fnp, &fn, sizeof fnp);
    if (fnp != NULL && dladdr(fnp, &info) != 0 && info.dli_sname != NULL)
        name = info.dli_sname;
    char what[160];
    if (name != NULL)
        snprintf(what, sizeof what, "%s(%p)", name, arg);
    else
        snprintf(what, sizeof what, "callback %p(%p)", fnp, arg);
    weft__log(WEFT_LOG_WARN, "slow callback on loop %p: %s took %.3f ms", (void *)loop, what,
              (double)took / 1e6);
}

static void run_handle(weft_loop_t *loop, weft_handle_t *h)
{
    bool debug = atomic_load_explicit(&loop->debug, memory_order_relaxed);
    int64_t t0 = debug ? weft__now_ns() : 0;
    /* Read what the slow-callback log needs now: an fd callback may remove
     * its own registration, which frees the embedded handle. */
    uint8_t kind = h->kind;
    weft_callback_fn fn = h->fn;
    void *arg = h->arg;
    if (kind == WEFT__HK_EMBED) {
        fn(arg); /* the owner of h manages it; h may be reused from here on */
    } else if (kind == WEFT__HK_FD) {
        weft_fdreg_t *reg = arg;
        int dir = (int)h->seq;
        fn = reg->fn[dir];
        arg = reg->arg[dir];
        if (!weft__fd_run(loop, h)) /* h may be freed from here on */
            return;
    } else {
        /* sole: the loop holds the only reference (the common case: no
         * `out` handle was asked for, or its owner released it).  Whoever
         * cancels holds a reference, and references are only handed out
         * before a handle is queued, so nobody can race the loop for h: no
         * CAS, no atomic decrement.  acquire: a canceller that has since
         * released its reference made its CANCELLED store visible first. */
        bool sole = atomic_load_explicit(&h->refs, memory_order_acquire) == 1;
        bool live = sole
                        ? atomic_load_explicit(&h->state, memory_order_relaxed) != WEFT__H_CANCELLED
                        : weft__handle_claim(h);
        if (live)
            fn(arg);
        if (kind == WEFT__HK_TIMER && live)
            WEFT__STAT_ADD(loop, timers_fired, 1);
        else if (kind == WEFT__HK_TIMER)
            WEFT__STAT_ADD(loop, timers_cancelled, 1);
        /* The loop's reference; the last one sends h to the pool. */
        if (sole || atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) == 1)
            handle_put(loop, h);
        if (!live)
            return;
    }
    WEFT__STAT_ADD(loop, callbacks_run, 1);
    if (debug) {
        int64_t took = weft__now_ns() - t0;
        if (took > atomic_load_explicit(&loop->slow_ns, memory_order_relaxed))
            log_slow(loop, fn, arg, took);
    }
}

int weft__loop_run_once(weft_loop_t *loop, bool may_block)
{
    struct epoll_event evs[MAX_EVENTS];
    uint64_t dropped = 0;

    take_inbox(loop);

    int64_t timeout = -1;
    if (!may_block || loop->ready_n > 0 ||
        atomic_load_explicit(&loop->stopping, memory_order_acquire)) {
        timeout = 0;
    } else {
        weft_handle_t *top = weft__timers_peek(&loop->timers, &dropped);
        if (top != NULL) {
            int64_t d = top->when - weft__now_ns();
            timeout = d > 0 ? d : 0;
        }
        /* Entries left in the inbox for want of memory: retry soon. */
        if (loop->inbox_stalled && (timeout < 0 || timeout > STALL_RETRY_NS))
            timeout = STALL_RETRY_NS;
    }

    bool parked = false;
    if (timeout != 0) {
        int expected = WEFT__PARK_RUNNING;
        /* acq_rel on success publishes nothing of note but keeps the
         * word's RMW chain simple; on failure (NOTIFIED) acquire pairs with
         * the waker's exchange so its push is visible to take_inbox(). */
        if (atomic_compare_exchange_strong_explicit(&loop->park, &expected, WEFT__PARK_PARKED,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            parked = true;
        } else {
            /* seq_cst: weft__loop_notify_posted()'s pairing (loop.h). */
            atomic_exchange_explicit(&loop->park, WEFT__PARK_RUNNING, memory_order_seq_cst);
            take_inbox(loop);
            timeout = 0;
        }
    }

    int n = weft__poller_wait(&loop->poller, evs, MAX_EVENTS, timeout);

    if (may_block && loop->on_unpark != NULL)
        loop->on_unpark(loop->worker);
    if (parked) {
        WEFT__STAT_ADD(loop, sleeps, 1);
        /* acquire: pairs with a waker's release exchange (loop.h). */
        int old = atomic_exchange_explicit(&loop->park, WEFT__PARK_RUNNING, memory_order_seq_cst);
        /* NOTIFIED after a sleep means exactly one waker saw PARKED and
         * owes (or has made) one eventfd write; close waits for it. */
        if (old == WEFT__PARK_NOTIFIED)
            loop->wake_owed++;
    }
    if (n < 0)
        return n;

    for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 == WEFT__POLLER_WAKE_TAG) {
            loop->wake_owed -= weft__poller_ack_wake(&loop->poller);
            WEFT__STAT_ADD(loop, wakeups, 1);
        } else {
            weft__fd_event(loop, evs[i].data.u64, evs[i].events);
        }
    }
    take_inbox(loop);

    int64_t now = weft__now_ns();
    for (;;) {
        weft_handle_t *top = weft__timers_peek(&loop->timers, &dropped);
        if (top == NULL || top->when > now)
            break;
        weft__loop_ready_push(loop, weft__timers_pop(&loop->timers));
    }
    dropped += weft__timers_maybe_rebuild(&loop->timers);
    if (dropped != 0)
        WEFT__STAT_ADD(loop, timers_cancelled, dropped);

    /* Only what is ready now runs in this iteration. */
    for (size_t todo = loop->ready_n; todo > 0; todo--)
        run_handle(loop, ready_pop(loop));

    WEFT__STAT_ADD(loop, iterations, 1);
    return 0;
}

/* ---- run / stop ---------------------------------------------------------- */

int weft_loop_run_forever(weft_loop_t *loop)
{
    if (loop == NULL)
        return -EINVAL;
    if (is_closed(loop))
        return WEFT_ECLOSED;
    if (weft_get_running_loop() != NULL)
        return WEFT_EINVALSTATE; /* this or another loop already runs here */
    bool expected = false;
    if (!atomic_compare_exchange_strong_explicit(&loop->running, &expected, true,
                                                 memory_order_acq_rel, memory_order_acquire))
        return WEFT_EINVALSTATE;
    atomic_store_explicit(&loop->owner, weft__thread_id(), memory_order_release);
    weft__loop_set_running(loop);
    weft__coro_thread_init(&loop->main_ctx); /* tasks resumed here switch back to it */

    int rc = 0;
    for (;;) {
        rc = weft__loop_run_once(loop, true);
        if (rc != 0)
            break;
        /* acquire: pairs with the release store in weft_loop_stop(). */
        if (atomic_load_explicit(&loop->stopping, memory_order_acquire))
            break;
    }

    atomic_store_explicit(&loop->stopping, false, memory_order_relaxed);
    weft__coro_thread_fini(&loop->main_ctx);
    weft__loop_set_running(NULL);
    atomic_store_explicit(&loop->owner, NULL, memory_order_release);
    atomic_store_explicit(&loop->running, false, memory_order_release);
    return rc;
}

static void stop_on_done(weft_future_t *f, void *arg)
{
    (void)f;
    weft_loop_stop(arg);
}

int weft_loop_run_until_complete(weft_loop_t *loop, weft_future_t *f)
{
    if (loop == NULL || f == NULL)
        return -EINVAL;
    if (weft_future_get_loop(f) != loop)
        return -EINVAL;
    if (is_closed(loop))
        return WEFT_ECLOSED;
    if (weft_get_running_loop() != NULL || weft_loop_is_running(loop))
        return WEFT_EINVALSTATE;
    int rc = weft_future_add_done_callback(f, stop_on_done, loop);
    if (rc != 0)
        return rc;
    rc = weft_loop_run_forever(loop);
    weft_future_remove_done_callback(f, stop_on_done, loop);
    if (rc != 0)
        return rc;
    if (!weft_future_done(f))
        return WEFT_EINVALSTATE; /* "Event loop stopped before Future completed" */
    void *ignored;
    return weft_future_result(f, &ignored);
}

int weft_loop_stop(weft_loop_t *loop)
{
    if (loop == NULL)
        return -EINVAL;
    if (is_closed(loop))
        return WEFT_ECLOSED;
    /* release: pairs with the acquire loads in run_forever()/run_once(). */
    atomic_store_explicit(&loop->stopping, true, memory_order_release);
    weft__loop_notify(loop);
    return 0;
}

/* ---- close / free -------------------------------------------------------- */

typedef struct drop_count {
    uint64_t soon, timers;
} drop_count_t;

static void drop_handle(weft_handle_t *h, void *arg)
{
    drop_count_t *c = arg;
    if (h->kind == WEFT__HK_FD) {
        weft__fd_drop(h);
        return;
    }
    if (h->kind == WEFT__HK_EMBED) {
        c->soon++;
        if (h->on_drop != NULL)
            h->on_drop(h->arg);
        return;
    }
    if (weft__handle_try_cancel(h)) {
        if (h->on_drop != NULL)
            h->on_drop(h->arg); /* internal work: freed, counted as dropped */
        if (h->kind == WEFT__HK_TIMER)
            c->timers++;
        else
            c->soon++;
    }
    weft__handle_unref(h);
}

/* An inbox entry still queued at close. */
static void drop_entry(weft_callback_fn fn, void *arg, void *ctx)
{
    drop_count_t *c = ctx;
    if (fn == posted_handle || fn == queued_local_handle)
        drop_handle(arg, c);
    else
        c->soon++;
}

static void drop_list(weft_handle_t *h, drop_count_t *c)
{
    while (h != NULL) {
        weft_handle_t *next = h->next;
        drop_handle(h, c);
        h = next;
    }
}

int weft_loop_close(weft_loop_t *loop)
{
    if (loop == NULL)
        return -EINVAL;
    if (atomic_load_explicit(&loop->running, memory_order_acquire))
        return -EBUSY;
    if (atomic_exchange_explicit(&loop->closed, true, memory_order_acq_rel))
        return 0;

    drop_count_t c = {0, 0};
    weft__inbox_close(&loop->inbox, drop_entry, &c);
    drop_list(weft__hstack_close(&loop->overflow), &c);
    weft_handle_t *ready = loop->ready_head;
    loop->ready_head = loop->ready_tail = NULL;
    loop->ready_n = 0;
    drop_list(ready, &c);
    weft__timers_drain(&loop->timers, drop_handle, &c);
    weft__fdtable_destroy(&loop->fds);
    /* Tasks of a standalone loop that never finished: no queue refers to
     * them any more, so they can be given up (their futures end cancelled;
     * done callbacks that can no longer run are reported). */
    size_t abandoned = weft__task_set_abandon(loop->tasks);

    /* A waker that saw PARKED may not have written yet: wait for its write
     * so the eventfd is not closed (and its number reused) under it. */
    while (loop->wake_owed > 0) {
        struct pollfd p = {.fd = loop->poller.evfd, .events = POLLIN};
        if (poll(&p, 1, -1) > 0)
            loop->wake_owed -= weft__poller_ack_wake(&loop->poller);
    }
    weft__poller_close(&loop->poller);

    if (abandoned != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "loop closed with %zu unfinished task(s); they were abandoned",
                 abandoned);
        weft__loop_report(loop, WEFT_ECLOSED, msg, NULL);
    }
    if (c.soon + c.timers != 0) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "loop closed with %llu pending callback(s) and %llu pending timer(s); they "
                 "were cancelled and will not run",
                 (unsigned long long)c.soon, (unsigned long long)c.timers);
        weft__loop_report(loop, WEFT_ECLOSED, msg, NULL);
    }
    return 0;
}

void weft_loop_free(weft_loop_t *loop)
{
    if (loop == NULL)
        return;
    if (atomic_load_explicit(&loop->running, memory_order_acquire)) {
        weft__log(WEFT_LOG_ERROR, "weft_loop_free(%p) called while the loop runs; ignored",
                  (void *)loop);
        return;
    }
    weft_loop_close(loop);
    weft__loop_bias_end(loop); /* a worker's loop: its thread has ended */
    weft__loop_release(loop);
}

/* ---- queries and settings ------------------------------------------------ */

bool weft_loop_is_running(const weft_loop_t *loop)
{
    return loop != NULL && atomic_load_explicit(&loop->running, memory_order_acquire);
}

bool weft_loop_is_closed(const weft_loop_t *loop)
{
    return loop != NULL && is_closed(loop);
}

int64_t weft_loop_time(const weft_loop_t *loop)
{
    (void)loop; /* one clock for every loop */
    return weft__now_ns();
}

int weft_loop_set_debug(weft_loop_t *loop, bool on)
{
    if (loop == NULL)
        return -EINVAL;
    atomic_store_explicit(&loop->debug, on, memory_order_relaxed);
    return 0;
}

bool weft_loop_get_debug(const weft_loop_t *loop)
{
    return loop != NULL && atomic_load_explicit(&loop->debug, memory_order_relaxed);
}

int weft_loop_set_slow_callback_duration(weft_loop_t *loop, int64_t ns)
{
    if (loop == NULL)
        return -EINVAL;
    atomic_store_explicit(&loop->slow_ns, ns > 0 ? ns : WEFT__SLOW_CALLBACK_DEFAULT_NS,
                          memory_order_relaxed);
    return 0;
}

int weft_loop_get_stats(const weft_loop_t *loop, weft_loop_stats_t *out)
{
    if (loop == NULL || out == NULL)
        return -EINVAL;
    const weft_loop_counters_t *s = &loop->stats;
    out->iterations = atomic_load_explicit(&s->iterations, memory_order_relaxed);
    out->callbacks_run = atomic_load_explicit(&s->callbacks_run, memory_order_relaxed);
    out->threadsafe_calls = atomic_load_explicit(&s->threadsafe_calls, memory_order_relaxed);
    out->eventfd_writes = atomic_load_explicit(&s->eventfd_writes, memory_order_relaxed);
    out->wakeups = atomic_load_explicit(&s->wakeups, memory_order_relaxed);
    out->sleeps = atomic_load_explicit(&s->sleeps, memory_order_relaxed);
    out->timers_fired = atomic_load_explicit(&s->timers_fired, memory_order_relaxed);
    out->timers_cancelled = atomic_load_explicit(&s->timers_cancelled, memory_order_relaxed);
    return 0;
}

/* ---- exception handler --------------------------------------------------- */

static void default_exception_handler(weft_loop_t *loop, const weft_error_context_t *ctx, void *arg)
{
    (void)arg;
    if (ctx->code != 0)
        weft__log(WEFT_LOG_ERROR, "loop %p: %s (%s: %s)%s", (void *)loop, ctx->message,
                  weft_err_name(ctx->code), weft_strerror(ctx->code),
                  ctx->future != NULL ? " [future]" : "");
    else
        weft__log(WEFT_LOG_ERROR, "loop %p: %s", (void *)loop, ctx->message);
}

int weft_loop_set_exception_handler(weft_loop_t *loop, weft_exception_handler_fn fn, void *arg)
{
    if (loop == NULL)
        return -EINVAL;
    int rc = weft__loop_check_thread(loop, "weft_loop_set_exception_handler");
    if (rc != 0)
        return rc;
    loop->exc_fn = fn;
    loop->exc_arg = arg;
    return 0;
}

int weft_loop_call_exception_handler(weft_loop_t *loop, const weft_error_context_t *ctx)
{
    if (loop == NULL || ctx == NULL || ctx->message == NULL)
        return -EINVAL;
    int rc = weft__loop_check_thread(loop, "weft_loop_call_exception_handler");
    if (rc != 0)
        return rc;
    if (loop->exc_fn != NULL)
        loop->exc_fn(loop, ctx, loop->exc_arg);
    else
        default_exception_handler(loop, ctx, NULL);
    return 0;
}

void weft__loop_report(weft_loop_t *loop, int code, const char *message, weft_future_t *f)
{
    weft_error_context_t ctx = {.message = message, .code = code, .future = f, .task = NULL};
    if (loop->exc_fn != NULL)
        loop->exc_fn(loop, &ctx, loop->exc_arg);
    else
        default_exception_handler(loop, &ctx, NULL);
}
