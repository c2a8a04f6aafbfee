/* weft — tasks: creation, the wake/resume state machine, suspension points
 * (await, yield, sleep), cancellation requests, names and the task sets.
 * Theory of operation in task.h. */
#include "sched/task.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "sched/common.h"
#include "sched/context.h"
#include "sched/executor.h"
#include "sched/loop.h"
#include "sched/worker.h"

/* Stacks kept per loop thread for reuse (DESIGN.md: "a million short tasks
 * use a handful of stacks"). */
#define STACK_CACHE_MAX 64

static atomic_uint_fast64_t next_task_id = 1;

/* Task ids come from the global counter in blocks of ID_BLOCK per thread:
 * one shared locked add per block instead of one per spawn, whose cache
 * line every worker would otherwise pass around.  Ids stay unique; their
 * order across threads is not the order of creation. */
#define ID_BLOCK 256u
static _Thread_local uint64_t tls_id_next, tls_id_end;

/* Never inlined, and it does not suspend: the TLS addresses are computed
 * afresh on every call, on whatever thread the task runs now. */
__attribute__((noinline)) static uint64_t task_id_take(void)
{
    if (tls_id_next == tls_id_end) {
        tls_id_next = atomic_fetch_add_explicit(&next_task_id, ID_BLOCK, memory_order_relaxed);
        tls_id_end = tls_id_next + ID_BLOCK;
    }
    uint64_t id = tls_id_next++;
    __asm__ volatile("" ::: "memory");
    return id;
}

/* ---- the current task (TLS through non-inlined accessors) --------------- */

static _Thread_local weft_task_t *tls_current_task;

WEFT__TLS_GET(, weft_task_t, weft_current_task, tls_current_task)
WEFT__TLS_SET(static, weft_task_t, set_current_task, tls_current_task)

/* ---- task sets ----------------------------------------------------------- */

/* Which shard a thread adds to: worker i's is i (weft__task_set_owner);
 * other threads are numbered round-robin on first use.  Never inlined:
 * called from tasks, which may resume on another thread (DESIGN.md, TLS
 * across coroutine switches). */
static atomic_uint next_shard_hint;
static _Thread_local unsigned tls_shard_hint = UINT_MAX;

__attribute__((noinline)) static unsigned pick_shard(weft_task_set_t *s)
{
    if (tls_shard_hint == UINT_MAX)
        tls_shard_hint =
            atomic_fetch_add_explicit(&next_shard_hint, 1, memory_order_relaxed) & (UINT_MAX >> 1);
    unsigned idx = tls_shard_hint % s->nshards;
    __asm__ volatile("" ::: "memory");
    return idx;
}

void weft__task_set_owner(unsigned shard)
{
    tls_shard_hint = shard;
}

void weft__task_set_init(weft_task_set_t *s, unsigned nshards)
{
    if (nshards == 0)
        nshards = 1;
    if (nshards > WEFT__TASK_SHARDS_MAX)
        nshards = WEFT__TASK_SHARDS_MAX;
    s->nshards = nshards;
    for (unsigned i = 0; i < WEFT__TASK_SHARDS_MAX; i++) {
        weft__lock_init(&s->shards[i].lock);
        s->shards[i].head = NULL;
        s->shards[i].count = 0;
        atomic_init(&s->shards[i].leavers, NULL);
    }
    atomic_init(&s->waiting, false);
    atomic_init(&s->closed, false);
    pthread_mutex_init(&s->empty_lock, NULL);
    pthread_cond_init(&s->empty, NULL);
}

static bool set_empty(weft_task_set_t *s);

void weft__task_set_destroy(weft_task_set_t *s)
{
    bool empty = set_empty(s); /* drains what left last */
    WEFT_ASSERT(empty);
    (void)empty;
    pthread_cond_destroy(&s->empty);
    pthread_mutex_destroy(&s->empty_lock);
}

/* ---- shard locking and draining (task.h, "Leaving") ---- */

static weft_task_t *leaver_next(weft_task_t *t)
{
    /* A finished task is in no run queue: its link carries the leavers. */
    return t->run.inject_next != NULL ? weft__task_of_runnable(t->run.inject_next) : NULL;
}

static void unlink_locked(weft_task_shard_t *sh, weft_task_t *t)
{
    WEFT__DLIST_UNLINK(sh->head, t, set_prev, set_next);
    t->set_prev = t->set_next = NULL;
    sh->count--;
}

/* With sh locked: unlink its leavers and return them (shard_lock). */
static weft_task_t *drain_locked(weft_task_shard_t *sh)
{
    /* A plain load first: mostly empty, and a load leaves the line shared. */
    if (atomic_load_explicit(&sh->leavers, memory_order_relaxed) == NULL)
        return NULL;
    /* acquire: pairs with the pushers' CAS; their writes to the task
     * (the outcome, the freed stack) happen before its release below. */
    weft_task_t *list = atomic_exchange_explicit(&sh->leavers, NULL, memory_order_acquire);
    for (weft_task_t *t = list; t != NULL; t = leaver_next(t))
        unlink_locked(sh, t);
    return list;
}

/* Lock sh and unlink its leavers; returns them, for shard_unlock to
 * release once the lock is dropped (a last release may free the task and
 * report to an exception handler, which must not run under the lock). */
static weft_task_t *shard_lock(weft_task_shard_t *sh)
{
    weft__lock(&sh->lock);
    return drain_locked(sh);
}

/* Drainers never signal a waiter: every leaver's push did, and the
 * waiter's own reads drain (signal_if_empty). */
static void shard_unlock(weft_task_shard_t *sh, weft_task_t *drained)
{
    weft__unlock(&sh->lock);
    while (drained != NULL) {
        weft_task_t *next = leaver_next(drained);
        weft_future_release(&drained->fut); /* the scheduler's, handed over */
        drained = next;
    }
}

static int set_add(weft_task_set_t *s, weft_task_t *t)
{
    unsigned idx = pick_shard(s);
    weft_task_shard_t *sh = &s->shards[idx];
    weft_task_t *drained = shard_lock(sh);
    if (atomic_load_explicit(&s->closed, memory_order_relaxed)) {
        shard_unlock(sh, drained);
        return WEFT_ECLOSED;
    }
    t->shard_idx = (uint8_t)idx & 0x7f;
    t->leave_later = 0;
    WEFT__DLIST_PUSH(sh->head, t, set_prev, set_next);
    sh->count++;
    shard_unlock(sh, drained);
    return 0;
}

/* A parked task costs a stack page plus this record: keep it in
 * jemalloc's 256-byte class (the W11 target of the benchmarks).  Sanitizer
 * and ucontext builds carry a bigger coroutine context. */
#if defined(__x86_64__) && !defined(WEFT_CORO_UCONTEXT) && !defined(WEFT_TSAN) &&                  \
    !defined(WEFT_ASAN)
_Static_assert(sizeof(weft_task_t) <= 256, "weft_task_t grew past 256 bytes");
#endif

static weft_task_set_t *task_set_of(const weft_task_t *t)
{
    return t->rt != NULL ? &t->rt->tasks : t->home->tasks;
}

/* seq_cst pairs with the waiter's store of `waiting` and its reads of the
 * shards: either it sees the change that made a shard empty (or pushed a
 * leaver, which its read drains), or we see it waiting and signal under
 * empty_lock, which it holds from its check until it sleeps.  Never from
 * the waiter's own reads (it holds empty_lock). */
static void signal_if_empty(weft_task_set_t *s, bool now_empty)
{
    if (now_empty && atomic_load_explicit(&s->waiting, memory_order_seq_cst)) {
        pthread_mutex_lock(&s->empty_lock);
        pthread_cond_broadcast(&s->empty);
        pthread_mutex_unlock(&s->empty_lock);
    }
}

static void set_remove(weft_task_t *t)
{
    weft_task_set_t *s = task_set_of(t);
    weft_task_shard_t *sh = &s->shards[t->shard_idx];
    weft_task_t *drained = shard_lock(sh);
    unlink_locked(sh, t);
    bool now_empty = sh->count == 0;
    shard_unlock(sh, drained);
    signal_if_empty(s, now_empty);
}

/* Leave t's set now if this thread adds to t's shard (its lock is then
 * this thread's own, uncontended); otherwise mark t to leave through the
 * leavers once its stack is freed (leave_or_release). */
static void set_leave(weft_task_t *t, bool may_defer)
{
    if (may_defer && t->rt != NULL && pick_shard(task_set_of(t)) != t->shard_idx) {
        t->leave_later = 1;
        return;
    }
    set_remove(t);
}

/* Drop the scheduler's reference to finished t: through the leavers if it
 * still has to leave its set (the reference goes with it). */
static void leave_or_release(weft_task_t *t)
{
    if (!t->leave_later) {
        weft_future_release(&t->fut);
        return;
    }
    weft_task_set_t *s = task_set_of(t);
    weft_task_shard_t *sh = &s->shards[t->shard_idx];
    weft_task_t *old = atomic_load_explicit(&sh->leavers, memory_order_relaxed);
    do {
        t->run.inject_next = old != NULL ? &old->run : NULL;
        /* release: publishes t's last writes to the drainer; seq_cst: the
         * waiter's pairing (signal_if_empty). */
    } while (!atomic_compare_exchange_weak_explicit(&sh->leavers, &old, t, memory_order_seq_cst,
                                                    memory_order_relaxed));
    signal_if_empty(s, true);
}

void weft__task_set_tidy(weft_task_set_t *s)
{
    for (unsigned i = 0; i < s->nshards; i++) {
        weft_task_shard_t *sh = &s->shards[i];
        /* A held lock means its holder drains. */
        if (atomic_load_explicit(&sh->leavers, memory_order_relaxed) == NULL ||
            !weft__trylock(&sh->lock))
            continue;
        shard_unlock(sh, drain_locked(sh));
    }
}

size_t weft__task_set_count(weft_task_set_t *s)
{
    size_t n = 0;
    for (unsigned i = 0; i < s->nshards; i++) {
        weft__lock(&s->shards[i].lock);
        n += s->shards[i].count;
        weft__unlock(&s->shards[i].lock);
    }
    return n;
}

/* Visit every task of s under its shard's lock; fn must not take a shard
 * lock or free tasks. */
static void set_for_each(weft_task_set_t *s, void (*fn)(weft_task_t *t, void *arg), void *arg)
{
    for (unsigned i = 0; i < s->nshards; i++) {
        weft_task_shard_t *sh = &s->shards[i];
        weft_task_t *drained = shard_lock(sh);
        for (weft_task_t *t = sh->head; t != NULL; t = t->set_next)
            fn(t, arg);
        shard_unlock(sh, drained);
    }
}

static bool set_empty(weft_task_set_t *s)
{
    for (unsigned i = 0; i < s->nshards; i++) {
        weft_task_shard_t *sh = &s->shards[i];
        weft_task_t *drained = shard_lock(sh);
        size_t n = sh->count;
        shard_unlock(sh, drained);
        if (n != 0)
            return false;
    }
    return true;
}

/* Any task of s, or NULL when it is empty. */
static weft_task_t *set_any(weft_task_set_t *s)
{
    for (unsigned i = 0; i < s->nshards; i++) {
        weft_task_shard_t *sh = &s->shards[i];
        weft_task_t *drained = shard_lock(sh);
        weft_task_t *t = sh->head;
        shard_unlock(sh, drained);
        if (t != NULL)
            return t;
    }
    return NULL;
}

static void cancel_visit(weft_task_t *t, void *arg)
{
    weft_task_cancel(t, arg);
}

void weft__task_set_close(weft_task_set_t *s, const char *msg)
{
    /* Every shard lock taken after this store sees it (set_add reads it
     * under the lock); an add that got its shard lock first is visited
     * below. */
    atomic_store_explicit(&s->closed, true, memory_order_relaxed);
    set_for_each(s, cancel_visit, (void *)msg);
}

int weft__task_set_wait_empty(weft_task_set_t *s, int64_t deadline_ns)
{
    int rc = 0;
    pthread_mutex_lock(&s->empty_lock);
    atomic_store_explicit(&s->waiting, true, memory_order_seq_cst);
    while (!set_empty(s)) {
        if (deadline_ns < 0) {
            pthread_cond_wait(&s->empty, &s->empty_lock);
            continue;
        }
        /* The condvar uses CLOCK_REALTIME; convert the remaining time. */
        int64_t left = deadline_ns - weft__now_ns();
        if (left <= 0) {
            rc = WEFT_ETIMEDOUT;
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t abs_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + left;
        ts.tv_sec = (time_t)(abs_ns / 1000000000);
        ts.tv_nsec = (long)(abs_ns % 1000000000);
        pthread_cond_timedwait(&s->empty, &s->empty_lock, &ts);
    }
    atomic_store_explicit(&s->waiting, false, memory_order_relaxed);
    pthread_mutex_unlock(&s->empty_lock);
    return rc;
}

/* ---- lifetime ------------------------------------------------------------ */

void weft__task_free(weft_future_t *f)
{
    weft_task_t *t = (weft_task_t *)f;
    WEFT_ASSERT(!t->has_stack);
    weft__free(atomic_load_explicit(&t->name, memory_order_relaxed));
    weft__free(t->post_h);
    weft__free(t->cancel_msg);
    weft__free(t);
}

static bool is_task_future(const weft_future_t *f)
{
    return f->is_task;
}

weft_future_t *weft_task_future(weft_task_t *t)
{
    return t != NULL ? &t->fut : NULL;
}

void weft_task_release(weft_task_t *t)
{
    if (t != NULL)
        weft_future_release(&t->fut);
}

/* Record the outcome and leave every set (or, with may_defer, perhaps
 * only mark t to leave later: set_leave); the scheduler's reference stays
 * (a task ending on its own stack publishes its outcome before it
 * switches out, and its stack is freed after). */
static void publish_outcome(weft_task_t *t, bool may_defer)
{
    atomic_store_explicit(&t->state, WEFT__T_DONE, memory_order_release);
    /* acq_rel: pairs with the CAS in weft_task_cancel (task.h, CLOSED). */
    bool undelivered =
        atomic_fetch_or_explicit(&t->must_cancel, WEFT__C_CLOSED, memory_order_acq_rel) &
        WEFT__C_PENDING;
    /* Its values go now, not with the last reference to the task. */
    weft__context_release(t->ctx);
    t->ctx = NULL;
    /* asyncio: a coroutine that returns normally while a request is still
     * undelivered ends cancelled ("cancelled right before it stopped");
     * one that fails keeps its error. */
    if (t->rc == WEFT_ECANCELED || (t->rc == 0 && undelivered)) {
        /* Taken under the lock: a weft_task_cancel that passed its DONE
         * check before the store above may still replace the message. */
        weft__lock(&t->fut.lock);
        char *msg = t->cancel_msg;
        t->cancel_msg = NULL;
        weft__unlock(&t->fut.lock);
        weft_future_cancel(&t->fut, msg);
        weft__free(msg);
    } else if (t->rc == 0) {
        weft_future_set_result(&t->fut, t->fut.result); /* parked there by task_entry */
    } else if (t->rc < 0) {
        weft_future_set_error(&t->fut, t->rc, NULL);
    } else {
        weft_future_set_error(&t->fut, -EINVAL, "task function returned a positive value");
    }
    set_leave(t, may_defer);
}

/* Record the outcome, leave every set, drop the scheduler's reference. */
static void complete_task(weft_task_t *t)
{
    publish_outcome(t, false);
    weft_future_release(&t->fut);
}

static void release_stack(weft_task_t *t, weft_stack_cache_t *cache)
{
    if (!t->has_stack)
        return;
    weft__coro_destroy(&t->coro);
    weft__stack_release(cache, &t->stack);
    t->has_stack = false;
}

size_t weft__task_set_abandon(weft_task_set_t *s)
{
    size_t n = 0;
    for (;;) {
        weft_task_t *t = set_any(s);
        if (t == NULL)
            return n;
        /* Never resumed again: its frames are dropped without unwinding,
         * so first unlink any node of theirs that a shared structure still
         * points to (a later completion would write into a freed stack). */
        if (t->park_unlink != NULL) {
            t->park_unlink(t->park_node, t->park_where);
            t->park_unlink = NULL;
        }
        while (t->scopes != NULL) {
            weft__scope_t *sc = t->scopes;
            t->scopes = sc->outer;
            sc->abandon(sc);
        }
        release_stack(t, NULL);
        t->rc = WEFT_ECANCELED;
        weft__lock(&t->fut.lock);
        if (t->cancel_msg == NULL)
            t->cancel_msg = weft__strdup("task abandoned at shutdown");
        weft__unlock(&t->fut.lock);
        complete_task(t);
        n++;
    }
}

/* ---- creation ------------------------------------------------------------ */

static void resume_from_loop(void *arg)
{
    weft_task_t *t = arg;
    weft__task_resume(t, weft_get_running_loop());
}

/* "Task-<id>" into buf (26 bytes: 5 + at most 20 digits + NUL), as
 * asyncio names tasks.  A spawn storm
 * spent a tenth of its time in snprintf and strdup. */
static char *default_name(char *buf, uint64_t id)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + id % 10);
        id /= 10;
    } while (id != 0);
    memcpy(buf, "Task-", 5);
    for (int i = 0; i < n; i++)
        buf[5 + i] = digits[n - 1 - i];
    buf[5 + n] = '\0';
    return buf;
}

static weft_handle_t *post_handle_new(weft_task_t *t)
{
    weft_handle_t *h = weft__calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    h->kind = WEFT__HK_EMBED; /* owned by the task, never freed by a loop */
    h->fn = resume_from_loop;
    h->arg = t;
    h->when = -1;
    atomic_init(&h->refs, 1);
    atomic_init(&h->state, WEFT__H_PENDING);
    return h;
}

int weft__task_new(weft_fn fn, void *arg, const weft_spawn_opts_t *opts, weft_runtime_t *rt,
                   weft_loop_t *home, weft_loop_t *future_loop, bool posted, weft_task_t **out)
{
    size_t stack_size = opts != NULL ? opts->stack_size : 0;
    if (stack_size == 0)
        stack_size = rt != NULL ? rt->stack_size : 0;
    if (stack_size == 0)
        stack_size = weft__stack_default_size();
    if (stack_size > WEFT__STACK_MAX_SIZE)
        return -EINVAL;
    weft_task_t *t = weft__calloc(1, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    t->id = task_id_take();
    char *name = NULL;
    if (opts != NULL && opts->name != NULL) {
        name = weft__strdup(opts->name);
        if (name == NULL) {
            weft__free(t);
            return -ENOMEM;
        }
    }
    atomic_init(&t->name, name);
    if (home != NULL || posted) {
        t->post_h = post_handle_new(t);
        if (t->post_h == NULL) {
            weft__free(name);
            weft__free(t);
            return -ENOMEM;
        }
    }
    weft__future_init(&t->fut, future_loop);
    t->fut.is_task = true;
    atomic_init(&t->state, WEFT__T_SCHEDULED);
    atomic_init(&t->must_cancel, 0);
    t->fn = fn;
    t->arg = arg;
    t->stack.size = (uint32_t)stack_size; /* what to ask for at first run */
    t->rt = rt;
    t->home = home;
    int rc = set_add(rt != NULL ? &rt->tasks : home->tasks, t);
    if (rc != 0) {
        weft_future_release(&t->fut); /* never registered: just freed */
        return rc;
    }
    *out = t;
    return 0;
}

/* ---- scheduling ---------------------------------------------------------- */

/* How a task came to be queued: a wake from a running task or callback on
 * a worker goes to that worker's LIFO slot (message-passing locality);
 * spawns and requeues go to the back of the run queue. */
enum { ENQ_SPAWN, ENQ_WAKE, ENQ_REQUEUE };

static void enqueue(weft_task_t *t, int how)
{
    if (t->home != NULL) {
        /* Pinned or standalone: only its loop may run it.  A closed loop
         * refuses; the task is then abandoned when the loop closes. */
        t->post_h->loop = t->home;
        (void)weft__loop_post_handle(t->home, t->post_h);
        return;
    }
    /* Workers stopped (shutdown): nobody would run it, and what is left
     * is abandoned from the task set; a queue entry would only dangle. */
    if (atomic_load_explicit(&t->rt->stopping, memory_order_acquire))
        return;
    weft_worker_t *w = weft__current_worker();
    if (w != NULL && w->rt == t->rt) {
        weft__worker_push(w, t, how == ENQ_WAKE);
        return;
    }
    weft__inject_push(&t->rt->inject, &t->run);
    weft__rt_notify_one(t->rt);
}

void weft__task_enqueue(weft_task_t *t, bool yielded)
{
    enqueue(t, yielded ? ENQ_REQUEUE : ENQ_SPAWN);
}

void weft__task_wake(weft_task_t *t)
{
    /* acq_rel: release publishes the waker's prior writes to the resumer's
     * exchange (task.h); acquire orders the enqueue after the state
     * change. */
    unsigned old = atomic_fetch_or_explicit(&t->state, WEFT__T_NOTIFIED, memory_order_acq_rel);
    if (old == WEFT__T_IDLE)
        enqueue(t, ENQ_WAKE);
}

static bool take_cancel(weft_task_t *t);
static void finish_handoff(void);
static weft_task_t *direct_next(weft_task_t *t);

static void task_entry(void *arg)
{
    weft_task_t *t = arg;
    finish_handoff(); /* started by a direct switch: finish the one before */
    void *result = NULL;
    /* asyncio throws CancelledError into a coroutine cancelled before its
     * first step, so its body never runs: work cancelled before it
     * started (say, by wait_for with a zero timeout) never starts. */
    int rc = take_cancel(t) ? WEFT_ECANCELED : t->fn(t->arg, &result);
    t->rc = rc;
    t->fut.result = result; /* not published until publish_outcome sets it */
    /* Published from here, so that a waiter it wakes (into this worker's
     * LIFO slot) can be the task switched to next. */
    publish_outcome(t, true);
    t->finished = true;
    /* Read the resumer now: the task may have migrated since it started. */
    weft_task_t *next = direct_next(t);
    weft__coro_exit(&t->coro, next != NULL ? &next->coro : t->resumer);
}

static weft_stack_cache_t *loop_stacks(weft_loop_t *loop)
{
    if (loop->stacks == NULL)
        (void)weft__stack_cache_new(STACK_CACHE_MAX, &loop->stacks); /* NULL: no cache */
    return loop->stacks;
}

/* Make t runnable on loop's thread: RUNNING, with a stack.  false when no
 * stack could be had: t is then completed with the error. */
static bool task_prepare(weft_task_t *t, weft_loop_t *loop)
{
    /* A task requeued by a yield kept RUNNING: if nobody woke it since,
     * there is nothing to clear and the acquire load is enough (locked
     * RMWs were most of the cost of a yield). */
    if (atomic_load_explicit(&t->state, memory_order_acquire) != WEFT__T_RUNNING)
        atomic_exchange_explicit(&t->state, WEFT__T_RUNNING, memory_order_acq_rel);
    if (t->has_stack)
        return true;
    /* A stack is taken at first run, not at spawn (DESIGN.md). */
    int rc = weft__stack_alloc_ex(loop_stacks(loop), t->stack.size, weft_loop_get_debug(loop),
                                  &t->stack);
    if (rc == 0) {
        rc = weft__coro_init(&t->coro, &t->stack, task_entry, t);
        if (rc != 0)
            weft__stack_release(loop_stacks(loop), &t->stack);
    }
    if (rc != 0) {
        t->rc = rc;
        complete_task(t);
        return false;
    }
    t->has_stack = true;
    return true;
}

/* What follows a task's switch out, on loop's thread, by whoever runs
 * next there: the worker loop, or the next task after a direct switch. */
static void switched_out(weft_task_t *t, weft_loop_t *loop)
{
    if (weft_loop_get_debug(loop) && t->has_stack && !weft__stack_canary_ok(&t->stack)) {
        weft__log(WEFT_LOG_ERROR, "task %s overflowed its stack of %zu bytes",
                  weft_task_get_name(t), (size_t)t->stack.size);
        WEFT_CHECK(!"stack overflow");
    }
    if (t->finished) {
        /* Its outcome was published by task_entry. */
        release_stack(t, loop_stacks(loop));
        leave_or_release(t);
        return;
    }
    if (t->yielding) {
        /* Queued again with RUNNING kept (task.h): a wake meanwhile only
         * sets NOTIFIED, which the next resume clears. */
        t->yielding = false;
        enqueue(t, ENQ_REQUEUE);
        return;
    }
    unsigned expected = WEFT__T_RUNNING;
    if (!atomic_compare_exchange_strong_explicit(&t->state, &expected, WEFT__T_IDLE,
                                                 memory_order_acq_rel, memory_order_acquire)) {
        /* Woken while it ran: queue it again, now that it is switched out. */
        atomic_exchange_explicit(&t->state, WEFT__T_SCHEDULED, memory_order_acq_rel);
        enqueue(t, ENQ_REQUEUE);
    }
}

void weft__task_resume(weft_task_t *t, weft_loop_t *loop)
{
    if (!task_prepare(t, loop))
        return;
    weft_task_t *prev = weft_current_task();
    weft_coro_t *from = prev != NULL ? &prev->coro : &loop->main_ctx;
    t->resumer = from;
    set_current_task(t);
    weft__coro_switch(from, &t->coro);
    /* Back here from t, or from a task that t (or a successor of it)
     * handed the thread to directly: deal with that one. */
    t = weft_current_task();
    set_current_task(prev);
    switched_out(t, loop);
}

/* ---- direct switches --------------------------------------------------------
 * A task on a worker that yields, parks or ends switches straight to the
 * next local task, instead of back to the worker loop and from there to
 * the next task: one context switch instead of two (each also costs a
 * mispredicted return), and no trip through the worker loop.  What must
 * follow the switch out (queue a yielder again, mark a parked task IDLE,
 * complete a finished one and free its stack: switched_out) cannot run
 * before the context is saved, or a thief or a waker could resume a
 * half-saved task; so the task is left in the worker's `handoff`, and the
 * task that runs next does it as the first thing it does (finish_handoff).
 * That task is resumed in the worker loop's name (its resumer is the
 * worker's main context, as the first one's was), so it too may switch
 * directly, or back to the worker loop, whose weft__task_resume deals with
 * whichever task comes back.  Every WEFT__FAIRNESS_TICKS-th tick goes back
 * to the worker loop (weft__worker_next_direct). */

static void finish_handoff(void)
{
    weft_worker_t *w = weft__current_worker();
    if (w == NULL || w->handoff == NULL)
        return;
    weft_task_t *prev = w->handoff;
    w->handoff = NULL;
    switched_out(prev, w->loop);
}

/* The task to switch to straight from t, made current, with t left in the
 * worker's handoff; NULL when t must switch back to its resumer. */
static weft_task_t *direct_next(weft_task_t *t)
{
    weft_worker_t *w = weft__current_worker();
    if (w == NULL || t->home != NULL || w->rt != t->rt)
        return NULL;
    weft_loop_t *loop = w->loop;
    /* Resumed by the worker loop (not eagerly, inside another task), and
     * not in debug mode, whose stack checks run in the worker loop. */
    if (t->resumer != &loop->main_ctx || weft_loop_get_debug(loop))
        return NULL;
    weft_task_t *next = weft__worker_next_direct(w);
    if (next == NULL || !task_prepare(next, loop))
        return NULL;
    next->resumer = t->resumer;
    w->handoff = t;
    set_current_task(next);
    return next;
}

/* Switch out of t (yielding or parking): to the next local task, or back
 * to whoever resumed it.  Returns when t is resumed, after finishing the
 * handoff of whoever switched to it. */
static void suspend(weft_task_t *t)
{
    weft_task_t *next = direct_next(t);
    weft__coro_switch(&t->coro, next != NULL ? &next->coro : t->resumer);
    finish_handoff();
}

static bool take_cancel(weft_task_t *t)
{
    /* The plain load spares the common case a locked RMW.  A request
     * that raced past it is delivered at the next suspension point; one
     * whose wake resumed us is visible here (the wake's RMW on `state`
     * ordered it before our resume). */
    if (!(atomic_load_explicit(&t->must_cancel, memory_order_relaxed) & WEFT__C_PENDING))
        return false;
    return atomic_fetch_and_explicit(&t->must_cancel, ~(unsigned)WEFT__C_PENDING,
                                     memory_order_acq_rel) &
           WEFT__C_PENDING;
}

void weft__task_suspend(weft_task_t *t)
{
    suspend(t);
}

bool weft__task_take_cancel(weft_task_t *t)
{
    return take_cancel(t);
}

void weft__task_park_undo(weft_task_t *t, void (*unlink)(void *node, void *where), void *node,
                          void *where)
{
    t->park_unlink = unlink;
    t->park_node = node;
    t->park_where = where;
}

/* ---- spawning ------------------------------------------------------------ */

int weft_task_create(weft_fn fn, void *arg, const weft_spawn_opts_t *opts, weft_task_t **out)
{
    if (fn == NULL)
        return -EINVAL;
    weft_task_t *cur = weft_current_task();
    weft_loop_t *loop = weft_get_running_loop();
    if (cur == NULL && loop == NULL)
        return -EPERM;
    weft_runtime_t *rt = cur != NULL ? cur->rt : (loop->worker ? loop->worker->rt : NULL);
    weft_loop_t *home;
    if (opts != NULL && opts->pinned != NULL) {
        weft_loop_t *p = opts->pinned;
        bool ok = rt != NULL ? (p->worker != NULL && p->worker->rt == rt) : (p == loop);
        if (!ok)
            return -EINVAL;
        home = p;
    } else if (rt == NULL) {
        home = cur != NULL ? cur->home : loop;
    } else {
        home = NULL;
    }
    if (rt != NULL && atomic_load_explicit(&rt->closing, memory_order_acquire))
        return WEFT_ECLOSED;
    weft_loop_t *future_loop = home != NULL ? home : loop;
    if (weft_loop_is_closed(future_loop))
        return WEFT_ECLOSED;
    weft_task_t *t;
    int rc = weft__task_new(fn, arg, opts, rt, home, future_loop, false, &t);
    if (rc != 0)
        return rc;
    /* contextvars: a task starts with its spawner's values (shared until
     * either side sets one: sched/context.h). */
    t->ctx = weft__context_retain(weft__context_current());
    if (out != NULL) {
        weft_future_retain(&t->fut);
        *out = t;
    }
    if (opts != NULL && opts->eager && (home == NULL || home == loop))
        weft__task_resume(t, loop); /* runs until its first suspension */
    else
        enqueue(t, ENQ_SPAWN);
    return 0;
}

int weft_spawn(weft_fn fn, void *arg, const weft_spawn_opts_t *opts, weft_task_t **out)
{
    if (fn == NULL)
        return -EINVAL;
    weft_task_t *cur = weft_current_task();
    weft_loop_t *loop = weft_get_running_loop();
    weft_runtime_t *rt = cur != NULL ? cur->rt : (loop && loop->worker ? loop->worker->rt : NULL);
    if (rt != NULL) {
        weft_task_factory_fn factory = atomic_load_explicit(&rt->factory, memory_order_acquire);
        if (factory != NULL) {
            void *farg = atomic_load_explicit(&rt->factory_arg, memory_order_acquire);
            weft_task_t *t = NULL;
            int rc = factory(fn, arg, opts, &t, farg);
            if (rc == 0 && out != NULL)
                *out = t;
            else if (rc == 0)
                weft_task_release(t);
            return rc;
        }
    }
    return weft_task_create(fn, arg, opts, out);
}

int weft_eager_task_factory(weft_fn fn, void *arg, const weft_spawn_opts_t *opts, weft_task_t **out,
                            void *factory_arg)
{
    (void)factory_arg;
    weft_spawn_opts_t o = {0};
    if (opts != NULL)
        o = *opts;
    o.eager = true;
    return weft_task_create(fn, arg, &o, out);
}

int weft_run_coroutine_threadsafe(weft_loop_t *loop, weft_fn fn, void *arg, weft_future_t **out)
{
    if (loop == NULL || fn == NULL || out == NULL)
        return -EINVAL;
    if (weft_loop_is_closed(loop))
        return WEFT_ECLOSED;
    weft_runtime_t *rt = loop->worker != NULL ? loop->worker->rt : NULL;
    /* A foreign thread: shutdown waits for it to finish posting. */
    if (rt != NULL && !weft__rt_enter(rt))
        return WEFT_ECLOSED;
    weft_task_t *t;
    int rc = weft__task_new(fn, arg, NULL, rt, rt != NULL ? NULL : loop, loop, true, &t);
    if (rc != 0) {
        if (rt != NULL)
            weft__rt_leave(rt);
        return rc;
    }
    weft_future_retain(&t->fut);
    /* First run on the named loop (through its inbox); from there a
     * runtime task may migrate like any other. */
    t->post_h->loop = loop;
    rc = weft__loop_post_handle(loop, t->post_h);
    if (rc != 0) {
        t->rc = WEFT_ECANCELED;
        complete_task(t);
        weft_future_release(&t->fut);
    } else {
        *out = &t->fut;
    }
    if (rt != NULL)
        weft__rt_leave(rt);
    return rc;
}

/* ---- suspension points ------------------------------------------------- */

static void waiter_wake(weft_waiter_t *w)
{
    weft__task_wake(w->ctx);
}

static void waiter_unlink(void *node, void *where)
{
    weft__future_remove_waiter(where, node);
}

static int outcome(weft_future_t *f, void **result)
{
    void *v = NULL;
    int rc = weft_future_result(f, &v);
    if (rc == 0 && result != NULL)
        *result = v;
    return rc;
}

int weft_await(weft_future_t *f, void **result)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return -EPERM;
    if (f == NULL)
        return -EINVAL;
    if (f == &t->fut)
        return -EDEADLK;
    /* A done future does not suspend (as asyncio), so no cancellation is
     * delivered here. */
    if (weft_future_done(f))
        return outcome(f, result);
    weft_waiter_t w = {.wake = waiter_wake, .ctx = t};
    if (!weft__future_add_waiter(f, &w))
        return outcome(f, result);
    t->park_unlink = waiter_unlink;
    t->park_node = &w;
    t->park_where = f;
    weft_task_t *inner = is_task_future(f) ? (weft_task_t *)f : NULL;
    /* A request pending on entry is handled like one that arrives while
     * suspended (asyncio cancels the awaited future at once). */
    for (;;) {
        if (take_cancel(t)) {
            /* asyncio: the awaited future is cancelled along.  A task is
             * only asked to cancel, and waited for: its outcome (often,
             * but not always, WEFT_ECANCELED) is this await's.  If it is
             * already done the request stays ours: WEFT_ECANCELED. */
            char *msg = weft__task_cancel_msg_dup(t);
            bool forwarded = inner != NULL && weft_task_cancel(inner, msg) == 1;
            if (!forwarded) {
                t->park_unlink = NULL;
                weft__future_remove_waiter(f, &w);
                if (inner == NULL)
                    weft_future_cancel(f, msg);
                weft__free(msg);
                return WEFT_ECANCELED;
            }
            weft__free(msg);
        }
        suspend(t);
        /* Completion first: a request that arrives together with it stays
         * pending for the next suspension point. */
        if (weft_future_done(f))
            break;
    }
    /* Completion unlinked w; taking the lock also waits until the
     * completer is done with it. */
    t->park_unlink = NULL;
    weft__future_remove_waiter(f, &w);
    return outcome(f, result);
}

int weft_yield(void)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return -EPERM;
    if (take_cancel(t))
        return WEFT_ECANCELED;
    t->yielding = true;
    suspend(t);
    return take_cancel(t) ? WEFT_ECANCELED : 0;
}

/* The sleep timer holds a task reference, dropped by whichever of the
 * callback, the cancelling sleeper or loop close gets to it. */
static void sleep_fire(void *arg)
{
    weft_task_t *t = arg;
    weft__task_wake(t);
    weft_future_release(&t->fut);
}

static void sleep_drop(void *arg)
{
    weft_task_t *t = arg;
    weft_future_release(&t->fut);
}

/* What the end of weft_sleep does, for a sleeper abandoned in it. */
static void sleep_unlink(void *node, void *where)
{
    weft_handle_t *h = node;
    weft_task_t *t = where;
    if (weft__handle_cancel(h))
        weft_future_release(&t->fut);
    weft_handle_release(h);
}

int weft_sleep(int64_t delay_ns)
{
    weft_task_t *t = weft_current_task();
    if (t == NULL)
        return -EPERM;
    if (delay_ns <= 0)
        return weft_yield();
    if (take_cancel(t))
        return WEFT_ECANCELED;
    int64_t now = weft__now_ns();
    int64_t deadline = delay_ns > INT64_MAX - now ? INT64_MAX : now + delay_ns;
    weft_handle_t *h;
    weft_future_retain(&t->fut);
    int rc = weft_loop_call_at(weft_get_running_loop(), deadline, sleep_fire, t, &h);
    if (rc != 0) {
        weft_future_release(&t->fut);
        return rc;
    }
    h->on_drop = sleep_drop;
    t->park_unlink = sleep_unlink;
    t->park_node = h;
    t->park_where = t;
    rc = 0;
    for (;;) {
        suspend(t);
        if (weft__now_ns() >= deadline)
            break;
        if (take_cancel(t)) {
            rc = WEFT_ECANCELED;
            break;
        }
    }
    t->park_unlink = NULL;
    if (weft__handle_cancel(h))
        weft_future_release(&t->fut); /* the callback will never run */
    weft_handle_release(h);
    return rc;
}

int weft_to_thread(weft_fn fn, void *arg, void **result)
{
    if (fn == NULL)
        return -EINVAL;
    if (weft_current_task() == NULL)
        return -EPERM;
    weft_future_t *f;
    int rc = weft_run_in_executor(NULL, fn, arg, &f);
    if (rc != 0)
        return rc;
    /* A cancelled await cancels f: the executor then skips fn, or discards
     * its result if it already runs. */
    rc = weft_await(f, result);
    weft_future_release(f);
    return rc;
}

/* ---- cancellation requests ---------------------------------------------- */

int weft_task_cancel(weft_task_t *t, const char *msg)
{
    if (t == NULL)
        return -EINVAL;
    if (atomic_load_explicit(&t->state, memory_order_acquire) & WEFT__T_DONE)
        return 0;
    char *copy = msg != NULL ? weft__strdup(msg) : NULL; /* best effort: NULL keeps none */
    weft__lock(&t->fut.lock);
    /* Count it and make it pending in one step (task.h).  acq_rel: pairs
     * with the RMWs of take_cancel(), uncancel and complete_task(). */
    unsigned old = atomic_load_explicit(&t->must_cancel, memory_order_relaxed);
    while (!(old & WEFT__C_CLOSED) &&
           !atomic_compare_exchange_weak_explicit(&t->must_cancel, &old,
                                                  (old + WEFT__C_ONE) | WEFT__C_PENDING,
                                                  memory_order_acq_rel, memory_order_relaxed))
        ;
    if (old & WEFT__C_CLOSED) {
        weft__unlock(&t->fut.lock);
        weft__free(copy);
        return 0; /* it finished meanwhile */
    }
    /* While a request is pending its first message stays; a request made
     * after the last one was delivered (or withdrawn) brings its own. */
    if (!(old & WEFT__C_PENDING) || t->cancel_msg == NULL) {
        char *prev = t->cancel_msg;
        t->cancel_msg = copy;
        copy = prev;
    }
    weft__unlock(&t->fut.lock);
    weft__free(copy);
    weft__task_wake(t);
    return 1;
}

char *weft__task_cancel_msg_dup(weft_task_t *t)
{
    weft__lock(&t->fut.lock);
    char *m = t->cancel_msg != NULL ? weft__strdup(t->cancel_msg) : NULL;
    weft__unlock(&t->fut.lock);
    return m;
}

weft_task_t *weft__task_of_future(weft_future_t *f)
{
    return f != NULL && is_task_future(f) ? (weft_task_t *)f : NULL;
}

bool weft__future_cancel_any(weft_future_t *f, const char *msg)
{
    weft_task_t *t = weft__task_of_future(f);
    if (t != NULL)
        return weft_task_cancel(t, msg) == 1;
    return weft_future_cancel(f, msg);
}

int weft_task_cancelling(const weft_task_t *t)
{
    if (t == NULL)
        return 0;
    return (int)(atomic_load_explicit(&((weft_task_t *)t)->must_cancel, memory_order_relaxed) /
                 WEFT__C_ONE);
}

int weft_task_uncancel(weft_task_t *t)
{
    if (t == NULL)
        return -EINVAL;
    unsigned old = atomic_load_explicit(&t->must_cancel, memory_order_relaxed), next;
    do {
        if (old < WEFT__C_ONE)
            return 0; /* nothing to withdraw */
        next = old - WEFT__C_ONE;
        /* Python 3.13: with no request left, one not yet delivered is
         * withdrawn and never interrupts the task. */
        if (next < WEFT__C_ONE)
            next &= ~(unsigned)WEFT__C_PENDING;
    } while (!atomic_compare_exchange_weak_explicit(&t->must_cancel, &old, next,
                                                    memory_order_acq_rel, memory_order_relaxed));
    return (int)(next / WEFT__C_ONE);
}

/* ---- names and enumeration ---------------------------------------------- */

const char *weft_task_get_name(const weft_task_t *t)
{
    if (t == NULL)
        return NULL;
    weft_task_t *mt = (weft_task_t *)t;
    char *name = atomic_load_explicit(&mt->name, memory_order_acquire);
    if (name != NULL)
        return name;
    /* The default, made on first use: "Task-<id>", as asyncio names them. */
    char buf[32];
    char *copy = weft__strdup(default_name(buf, t->id));
    if (copy == NULL)
        return "Task"; /* no memory: a name that is still true */
    if (!atomic_compare_exchange_strong_explicit(&mt->name, &name, copy, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        weft__free(copy); /* another thread named it first */
        return name;
    }
    return copy;
}

int weft_task_set_name(weft_task_t *t, const char *name)
{
    if (t == NULL || name == NULL)
        return -EINVAL;
    char *copy = weft__strdup(name);
    if (copy == NULL)
        return -ENOMEM;
    weft__free(atomic_exchange_explicit(&t->name, copy, memory_order_acq_rel));
    return 0;
}

typedef struct all_visit {
    weft_task_visit_fn fn;
    void *arg;
    int n;
} all_visit_t;

static void all_visit(weft_task_t *t, void *arg)
{
    all_visit_t *v = arg;
    /* A finished task stays in the set for the moment between completing
     * its future and leaving the set; whoever saw the future done must not
     * meet it here (asyncio skips done tasks). */
    if (weft_future_done(&t->fut))
        return;
    v->fn(t, v->arg);
    v->n++;
}

int weft_all_tasks(weft_runtime_t *rt, weft_task_visit_fn fn, void *arg)
{
    if (rt == NULL || fn == NULL)
        return -EINVAL;
    all_visit_t v = {fn, arg, 0};
    set_for_each(&rt->tasks, all_visit, &v);
    return v.n;
}
