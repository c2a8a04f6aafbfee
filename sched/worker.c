/* weft — worker threads: finding work, stealing, parking.  The order of
 * places a worker looks and the lost-wakeup argument are in worker.h. */
#include "sched/worker.h"

#include <signal.h>
#include <unistd.h>

#include "sched/common.h"

static _Thread_local weft_worker_t *tls_worker;

WEFT__TLS_GET(, weft_worker_t, weft__current_worker, tls_worker)
WEFT__TLS_SET(static, weft_worker_t, set_current_worker, tls_worker)

#define STAT_ADD(w, field, n)                                                                      \
    atomic_store_explicit(&(w)->stats.field,                                                       \
                          atomic_load_explicit(&(w)->stats.field, memory_order_relaxed) + (n),     \
                          memory_order_relaxed)
#define STAT_INC(w, field) STAT_ADD(w, field, 1)

static uint64_t next_rand(weft_worker_t *w)
{
    /* xorshift64: a victim picker, not cryptography. */
    uint64_t x = w->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return w->rng = x;
}

/* ---- spinning ------------------------------------------------------------ */

/* How long a worker that ran out of work polls for more before it sleeps
 * in epoll, and a plain thread polls a future before it sleeps on it
 * (future.c).  A wakeup of a thread asleep on another CPU costs 5-100 us
 * on the VMs we measure on (an IPI, and on a VM an exit), against under
 * a microsecond for a thread that polls: W7 (a plain thread's round trips
 * through a worker) is two such wakeups per call without the spin.  50 us
 * covers one round trip of a short call; a worker that gets nothing in
 * that time sleeps as before, so an idle runtime burns 50 us of CPU per
 * time it goes idle, not more. */
#define SPIN_NS (INT64_C(50) * 1000)
_Static_assert(SPIN_NS <= WEFT__SPIN_MAX_NS, "the default spin is a valid idle_spin_ns");

unsigned weft__ncpu(void)
{
    /* 0: not read yet.  Racing first readers store the same value. */
    static atomic_uint cached;
    unsigned n = atomic_load_explicit(&cached, memory_order_relaxed);
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus > 0 ? (unsigned)cpus : 1;
        atomic_store_explicit(&cached, n, memory_order_relaxed);
    }
    return n;
}

int64_t weft__spin_ns(void)
{
    return weft__ncpu() > 1 ? SPIN_NS : 0;
}

/* ---- idle set ------------------------------------------------------------ */

static void idle_add(weft_runtime_t *rt, weft_worker_t *w)
{
    pthread_mutex_lock(&rt->idle_lock);
    rt->idle[rt->idle_n++] = w->index;
    w->idle_listed = true;
    /* seq_cst: the parking side of the store-buffer pairing (worker.h). */
    atomic_fetch_add_explicit(&rt->n_idle, 1, memory_order_seq_cst);
    pthread_mutex_unlock(&rt->idle_lock);
}

static void idle_remove(weft_runtime_t *rt, weft_worker_t *w)
{
    pthread_mutex_lock(&rt->idle_lock);
    if (w->idle_listed) {
        for (unsigned i = 0; i < rt->idle_n; i++) {
            if (rt->idle[i] == w->index) {
                rt->idle[i] = rt->idle[--rt->idle_n];
                break;
            }
        }
        w->idle_listed = false;
        atomic_fetch_sub_explicit(&rt->n_idle, 1, memory_order_seq_cst);
    }
    pthread_mutex_unlock(&rt->idle_lock);
}

void weft__rt_notify_one(weft_runtime_t *rt)
{
    /* seq_cst: the producer side of the pairing; the work was pushed
     * before this load (worker.h). */
    if (atomic_load_explicit(&rt->n_idle, memory_order_seq_cst) == 0)
        return;
    weft_worker_t *w = NULL;
    pthread_mutex_lock(&rt->idle_lock);
    if (rt->idle_n > 0) {
        w = rt->workers[rt->idle[--rt->idle_n]];
        w->idle_listed = false;
        atomic_fetch_sub_explicit(&rt->n_idle, 1, memory_order_seq_cst);
    }
    pthread_mutex_unlock(&rt->idle_lock);
    if (w != NULL)
        weft__loop_notify(w->loop);
}

static void notify_all(weft_runtime_t *rt)
{
    for (unsigned i = 0; i < rt->n; i++)
        weft__loop_notify(rt->workers[i]->loop);
}

/* ---- queues ---------------------------------------------------------------- */

void weft__worker_push(weft_worker_t *w, weft_task_t *t, bool lifo)
{
    if (lifo) {
        weft_task_t *old = w->lifo;
        w->lifo = t;
        if (old == NULL)
            return; /* nobody else can take the LIFO slot: no one to wake */
        t = old;
    }
    weft__runq_push(&w->runq, &t->run, &w->rt->inject);
    /* Extra parallelism only (worker.h): relaxed reads are enough.  As
     * Tokio does, wake another worker only when this one has more than one
     * task waiting: a chain of spawns (each task spawning the next and
     * ending) then stays on one worker instead of being stolen back and
     * forth, a wake and a steal per link. */
    weft_runtime_t *rt = w->rt;
    if (weft__runq_len(&w->runq) + (w->lifo != NULL) > 1 &&
        atomic_load_explicit(&rt->n_searching, memory_order_relaxed) == 0 &&
        atomic_load_explicit(&rt->n_idle, memory_order_relaxed) != 0)
        weft__rt_notify_one(rt);
}

static weft_task_t *from_inject(weft_worker_t *w)
{
    weft_runnable_t *r = weft__inject_pop(&w->rt->inject);
    if (r == NULL)
        return NULL;
    STAT_INC(w, inject_pops);
    return weft__task_of_runnable(r);
}

/* With the local ring empty: take this worker's share of the inject queue
 * in one lock (one task to run now, the rest into the ring, where other
 * workers can steal them), as Tokio does.  A spawn storm from one worker
 * overflows its ring into the inject queue, and popping those one lock
 * at a time was a good part of what the other workers did. */
static weft_task_t *from_inject_batch(weft_worker_t *w)
{
    weft_runtime_t *rt = w->rt;
    size_t len = atomic_load_explicit(&rt->inject.len, memory_order_relaxed);
    size_t max = len / rt->n + 1;
    if (max > WEFT__RUNQ_CAP / 2)
        max = WEFT__RUNQ_CAP / 2;
    size_t n;
    weft_runnable_t *r = weft__inject_pop_batch(&rt->inject, max, &n);
    if (r == NULL)
        return NULL;
    STAT_ADD(w, inject_pops, n);
    weft_runnable_t *rest = r->inject_next;
    while (rest != NULL) {
        weft_runnable_t *next = rest->inject_next;
        weft__runq_push(&w->runq, rest, &rt->inject);
        rest = next;
    }
    return weft__task_of_runnable(r);
}

static weft_task_t *next_local(weft_worker_t *w)
{
    if (w->tick % WEFT__FAIRNESS_TICKS == 0) {
        weft_task_t *t = from_inject(w);
        if (t != NULL)
            return t;
    }
    if (w->lifo != NULL) {
        weft_task_t *t = w->lifo;
        w->lifo = NULL;
        if (w->lifo_streak < WEFT__LIFO_MAX_STREAK) {
            w->lifo_streak++;
            STAT_INC(w, lifo_runs);
            return t;
        }
        /* Two tasks ping-ponging through the slot would starve the ring. */
        weft__runq_push(&w->runq, &t->run, &w->rt->inject);
    }
    w->lifo_streak = 0;
    weft_runnable_t *r = weft__runq_pop(&w->runq);
    if (r != NULL)
        return weft__task_of_runnable(r);
    return from_inject_batch(w);
}

weft_task_t *weft__worker_next_direct(weft_worker_t *w)
{
    /* Every WEFT__FAIRNESS_TICKS-th tick belongs to the worker loop: the
     * inject queue, timers, I/O and callbacks. */
    if ((w->tick + 1) % WEFT__FAIRNESS_TICKS == 0 ||
        atomic_load_explicit(&w->rt->stopping, memory_order_relaxed))
        return NULL;
    w->tick++;
    weft_task_t *t = next_local(w);
    if (t != NULL)
        STAT_INC(w, tasks_run);
    return t;
}

static void stop_searching(weft_worker_t *w, bool found)
{
    if (!w->searching)
        return;
    w->searching = false;
    unsigned prev = atomic_fetch_sub_explicit(&w->rt->n_searching, 1, memory_order_seq_cst);
    /* The last searcher that found work wakes one more, so that stealing
     * continues while there is work to spread (DESIGN.md). */
    if (found && prev == 1)
        weft__rt_notify_one(w->rt);
}

static weft_task_t *steal(weft_worker_t *w)
{
    weft_runtime_t *rt = w->rt;
    if (rt->n < 2)
        return NULL;
    if (!w->searching) {
        /* At most half the workers search at once. */
        unsigned s = atomic_load_explicit(&rt->n_searching, memory_order_relaxed);
        if (2 * s >= rt->n)
            return NULL;
        atomic_fetch_add_explicit(&rt->n_searching, 1, memory_order_seq_cst);
        w->searching = true;
    }
    unsigned start = (unsigned)(next_rand(w) % rt->n);
    for (unsigned i = 0; i < rt->n; i++) {
        weft_worker_t *v = rt->workers[(start + i) % rt->n];
        if (v == w)
            continue;
        uint32_t before = weft__runq_len(&w->runq);
        weft_runnable_t *r = weft__runq_steal_into(&v->runq, &w->runq);
        if (r != NULL) {
            STAT_INC(w, steals);
            uint64_t got = 1 + (uint64_t)(weft__runq_len(&w->runq) - before);
            atomic_store_explicit(
                &w->stats.stolen_tasks,
                atomic_load_explicit(&w->stats.stolen_tasks, memory_order_relaxed) + got,
                memory_order_relaxed);
            return weft__task_of_runnable(r);
        }
    }
    return from_inject(w);
}

static bool shared_work_visible(weft_worker_t *w)
{
    weft_runtime_t *rt = w->rt;
    if (!weft__inject_empty_sc(&rt->inject))
        return true;
    for (unsigned i = 0; i < rt->n; i++)
        if (rt->workers[i] != w && weft__runq_len(&rt->workers[i]->runq) != 0)
            return true;
    return false;
}

static void leave_idle(weft_worker_t *w)
{
    idle_remove(w->rt, w);
}

static bool shared_work_or_stop(weft_worker_t *w)
{
    return shared_work_visible(w) || atomic_load_explicit(&w->rt->stopping, memory_order_acquire);
}

/* Whether shared work (or a stop) is there now, or shows up while this
 * worker, listed as idle, polls for up to its loop's spin_ns: whoever has
 * work for it then notifies it with a store to its park word, not an
 * eventfd write.  Work for its loop ends the poll too, with false: the
 * loop iteration that follows runs it without sleeping.  One worker
 * polls at a time: a second would take the last CPU of a small machine
 * from the thread that is about to post the work.  Timers are not polled:
 * one falls due at most spin_ns late. */
static bool shared_work_arrives(weft_worker_t *w)
{
    weft_runtime_t *rt = w->rt;
    weft_loop_t *loop = w->loop;
    if (shared_work_or_stop(w))
        return true;
    unsigned expected = 0;
    if (loop->spin_ns == 0 || loop->ready_n > 0 ||
        !atomic_compare_exchange_strong_explicit(&rt->n_spinning, &expected, 1,
                                                 memory_order_relaxed, memory_order_relaxed))
        return false;
    int64_t end = weft__now_ns() + loop->spin_ns;
    bool found = false;
    for (unsigned i = 0; weft__spin_step(&i, end);) {
        if (atomic_load_explicit(&loop->park, memory_order_relaxed) != WEFT__PARK_RUNNING ||
            weft__loop_inbox_nonempty(loop))
            break;
        if (shared_work_or_stop(w)) {
            found = true;
            break;
        }
    }
    atomic_store_explicit(&rt->n_spinning, 0, memory_order_relaxed);
    return found;
}

static void park(weft_worker_t *w)
{
    weft_runtime_t *rt = w->rt;
    /* Tasks that finished here (or anywhere) wait in their spawner's shard
     * for its next spawn, which may not come for a while. */
    weft__task_set_tidy(&rt->tasks);
    idle_add(rt, w);
    if (shared_work_arrives(w)) {
        idle_remove(rt, w);
        return;
    }
    STAT_INC(w, parks);
    /* Sleeps in epoll unless notified meanwhile (the loop's park word),
     * a callback is ready or a timer is due. */
    int rc = weft__loop_run_once(w->loop, true); /* leaves the idle set on waking */
    WEFT_CHECK(rc == 0);
    idle_remove(rt, w); /* no-op unless the iteration returned early */
}

static void run_task(weft_worker_t *w, weft_task_t *t)
{
    STAT_INC(w, tasks_run);
    weft__task_resume(t, w->loop);
}

/* Bound on the callback iterations a stopping worker runs to deliver what
 * is still queued (done callbacks of the last tasks); a callback that keeps
 * rescheduling itself must not keep shutdown waiting forever. */
#define DRAIN_ITERATIONS 1000

static void drain_loop(weft_loop_t *loop)
{
    for (int i = 0; i < DRAIN_ITERATIONS; i++) {
        (void)weft__loop_run_once(loop, false);
        if (loop->ready_n == 0 && !weft__loop_inbox_nonempty(loop))
            break;
    }
}

void *weft__worker_main(void *arg)
{
    weft_worker_t *w = arg;
    weft_runtime_t *rt = w->rt;
    weft_loop_t *loop = w->loop;

    /* DESIGN.md: workers run with async signals blocked; signals reach
     * users through signalfd on a loop. */
    sigset_t all;
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    set_current_worker(w);
    weft__task_set_owner(w->index);
    loop->on_unpark = leave_idle;
    atomic_store_explicit(&loop->owner, weft__thread_id(), memory_order_release);
    atomic_store_explicit(&loop->running, true, memory_order_release);
    weft__loop_set_running(loop);
    weft__coro_thread_init(&loop->main_ctx);

    while (!atomic_load_explicit(&rt->stopping, memory_order_acquire)) {
        /* Fairness: timers, I/O and callbacks get their turn even when
         * the ring never empties.  Checked before the task is taken: tasks
         * that yield straight to one another advance the tick too
         * (weft__worker_next_direct), and hand the turn back here when it
         * is the loop's. */
        if (++w->tick % WEFT__FAIRNESS_TICKS == 0)
            (void)weft__loop_run_once(loop, false);
        weft_task_t *t = next_local(w);
        if (t == NULL)
            t = steal(w);
        if (t != NULL) {
            stop_searching(w, true);
            run_task(w, t);
            continue;
        }
        stop_searching(w, false);
        park(w);
    }

    /* The LIFO task goes back to the ring (it is abandoned with the rest if
     * shutdown gave up on it). */
    if (w->lifo != NULL) {
        weft__runq_push(&w->runq, &w->lifo->run, &rt->inject);
        w->lifo = NULL;
    }
    drain_loop(loop);
    weft__coro_thread_fini(&loop->main_ctx);
    weft__loop_set_running(NULL);
    /* From here this thread counts its references like everyone else. */
    weft__loop_bias_end(loop);
    atomic_store_explicit(&loop->running, false, memory_order_release);
    atomic_store_explicit(&loop->owner, NULL, memory_order_release);
    set_current_worker(NULL);
    return NULL;
}

void weft__rt_stop_workers(weft_runtime_t *rt)
{
    atomic_store_explicit(&rt->stopping, true, memory_order_release);
    notify_all(rt);
    for (unsigned i = 0; i < rt->n; i++) {
        if (rt->workers[i]->started)
            pthread_join(rt->workers[i]->thread, NULL);
        rt->workers[i]->started = false;
    }
}
