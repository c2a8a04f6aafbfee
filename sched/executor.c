/* weft — executor pools: threads on demand for blocking calls.
 *
 * Theory of operation.
 *
 * An executor is a FIFO of jobs, a count of pool threads and one mutex
 * with two condition variables: `work_cond`, on which idle threads wait for
 * a job (for at most the keep-alive), and `exit_cond`, on which shutdown
 * waits for the last thread to leave.  A job is (fn, arg, future); the
 * thread that unlinks it runs fn with the lock released and completes the
 * future with fn's outcome, unless the future was already done (cancelled)
 * when the job came up, in which case fn is skipped.
 *
 * Threads on demand.  A submission starts a thread when, with its job
 * queued, the queue holds more jobs than there are idle threads to take
 * them and fewer than max_threads threads exist.  The thread is counted
 * under the lock before pthread_create runs unlocked, so racing submitters
 * never overshoot the cap.  If creation fails while other threads exist,
 * the job just waits for one of them.  If no thread is left at all, the
 * submitter takes its job back and returns the error; jobs that others
 * queued behind it in that window cannot run either and fail through their
 * futures with the same error.
 *
 * Leaving and joining.  A thread leaves when the executor is closed and the
 * queue is empty, or when its keep-alive passes with the queue empty.
 * Joining is chained: the leaving thread records itself as `zombie` and
 * joins the previous zombie after unlocking.  So at most one exited thread
 * is ever unjoined, no thread waits on a join for long, and whoever joins
 * the last zombie once the count is 0 has (transitively) joined them all.
 *
 * Invariants (under `lock`):
 *   1. nthreads counts threads being created, running or idle, up to the
 *      moment they record themselves as zombie; nthreads <= max_threads.
 *   2. idle counts threads inside pthread_cond_timedwait on work_cond;
 *      idle <= nthreads.  A submission signals work_cond if idle > 0.
 *   3. While the queue is non-empty, nthreads > 0: a thread leaves only
 *      with the queue empty, and a failed creation that leaves nthreads at
 *      0 empties the queue (above).  So every queued job runs or fails.
 *   4. closed never goes back to false, and no job is queued after it.
 *   5. A job is unlinked exactly once, by the thread that runs or drops it.
 *
 * Lock order: `lock` is a leaf, taken alone and never held while a job
 * runs, a future is completed or released, a message is logged, or a
 * thread is created or joined.
 */
#include "sched/executor.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include "sched/common.h"
#include "sched/context.h"
#include "weft/loop.h"

/* asyncio caps its default pool at min(32, cpus + 4) because Python
 * threads share one interpreter lock; weft's calls run truly in parallel
 * and mostly sleep in the kernel, so the cap is the card's 512. */
#define DEFAULT_MAX_THREADS  512u
#define DEFAULT_KEEPALIVE_NS (INT64_C(10) * 1000000000)

typedef struct job {
    struct job *next;
    weft_fn fn;
    void *arg;
    weft_future_t *f; /* the executor's own reference */
    uint64_t seq;
    weft__context_t *ctx; /* the submitter's task context (a reference), or NULL */
} job_t;

struct weft_executor {
    pthread_mutex_t lock;
    pthread_cond_t work_cond; /* CLOCK_MONOTONIC: keep-alive deadlines */
    pthread_cond_t exit_cond;
    job_t *head, *tail;
    size_t queued;
    unsigned nthreads;
    unsigned idle;
    unsigned max_threads;
    int64_t keepalive_ns;
    bool closed;
    bool has_zombie; /* zombie holds an exited, unjoined thread */
    bool joining;    /* a shutdown is joining the zombie right now */
    pthread_t zombie;
    uint64_t next_seq; /* names jobs for spawn_failed(); addresses get reused */
};

/* ---- pool-thread marker --------------------------------------------------
 * The executor whose pool runs the calling thread.  Reached only through
 * these non-inlined functions, like every weft TLS (DESIGN.md). */

static _Thread_local weft_executor_t *tls_pool;

WEFT__TLS_GET(static, weft_executor_t, current_pool, tls_pool)
WEFT__TLS_SET(static, weft_executor_t, set_current_pool, tls_pool)

/* ---- construction --------------------------------------------------------- */

static int executor_init(weft_executor_t *ex, unsigned max_threads, int64_t keepalive_ns)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc != 0)
        return -rc;
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0 && (rc = pthread_mutex_init(&ex->lock, NULL)) == 0) {
        if ((rc = pthread_cond_init(&ex->work_cond, &attr)) == 0) {
            if ((rc = pthread_cond_init(&ex->exit_cond, NULL)) != 0)
                pthread_cond_destroy(&ex->work_cond);
        }
        if (rc != 0)
            pthread_mutex_destroy(&ex->lock);
    }
    pthread_condattr_destroy(&attr);
    if (rc != 0)
        return -rc;
    ex->head = ex->tail = NULL;
    ex->queued = 0;
    ex->nthreads = 0;
    ex->idle = 0;
    ex->max_threads = max_threads != 0 ? max_threads : DEFAULT_MAX_THREADS;
    ex->keepalive_ns = keepalive_ns != 0 ? keepalive_ns : DEFAULT_KEEPALIVE_NS;
    ex->closed = false;
    ex->has_zombie = false;
    ex->joining = false;
    ex->next_seq = 0;
    return 0;
}

int weft_executor_new(unsigned max_threads, int64_t keepalive_ns, weft_executor_t **out)
{
    if (out == NULL || keepalive_ns < 0)
        return -EINVAL;
    weft_executor_t *ex = weft__alloc(sizeof *ex);
    if (ex == NULL)
        return -ENOMEM;
    int rc = executor_init(ex, max_threads, keepalive_ns);
    if (rc != 0) {
        weft__free(ex);
        return rc;
    }
    *out = ex;
    return 0;
}

/* Static storage, so the default can never fail to exist for lack of
 * memory, and never counts against the allocation-failure seam. */
static weft_executor_t default_ex;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void default_init(void)
{
    WEFT_CHECK(executor_init(&default_ex, 0, 0) == 0);
}

weft_executor_t *weft__executor_default(void)
{
    pthread_once(&default_once, default_init);
    return &default_ex;
}

unsigned weft__executor_thread_count(weft_executor_t *ex)
{
    pthread_mutex_lock(&ex->lock);
    unsigned n = ex->nthreads;
    pthread_mutex_unlock(&ex->lock);
    return n;
}

/* ---- running jobs ---------------------------------------------------------- */

/* Hand fn's outcome to the future.  Each setter returns WEFT_EINVALSTATE if
 * the future was cancelled while fn ran: the outcome is dropped, as
 * asyncio drops the result of a call whose future was cancelled. */
static void complete(weft_future_t *f, int rc, void *result)
{
    if (rc == 0) {
        (void)weft_future_set_result(f, result);
        return;
    }
    if (rc == WEFT_ECANCELED) {
        (void)weft_future_cancel(f, NULL);
        return;
    }
    if (rc > 0) {
        weft__log(WEFT_LOG_ERROR,
                  "executor: a blocking call returned %d; weft_fn returns 0 or a negative "
                  "code, so its future fails with EINVAL",
                  rc);
        rc = -EINVAL;
    }
    (void)weft_future_set_error(f, rc, NULL);
}

static void run_job(job_t *j)
{
    weft_fn fn = j->fn;
    void *arg = j->arg;
    weft_future_t *f = j->f;
    weft__context_t *ctx = j->ctx;
    weft__free(j);
    /* A future done before its job starts was cancelled (or completed by
     * its owner): the call is skipped, asyncio's rule for a cancelled
     * run_in_executor future still in the queue. */
    if (!weft_future_done(f)) {
        void *result = NULL;
        /* fn sees its submitter's task context (weft_context_get). */
        weft__context_set_thread(ctx);
        int rc = fn(arg, &result); /* a statement of its own: fn must run before result is read */
        weft__context_set_thread(NULL);
        complete(f, rc, result);
    }
    weft_future_release(f);
    weft__context_release(ctx);
}

static struct timespec deadline_after(int64_t ns)
{
    int64_t now = weft__now_ns();
    int64_t when = ns > INT64_MAX - now ? INT64_MAX : now + ns;
    struct timespec ts = {(time_t)(when / 1000000000), (long)(when % 1000000000)};
    return ts;
}

/* With lock held: the next job, waiting for one up to the keep-alive; NULL
 * when this thread should leave (closed and drained, or idle too long). */
static job_t *next_job(weft_executor_t *ex)
{
    struct timespec deadline;
    bool armed = false;
    while (ex->head == NULL) {
        if (ex->closed)
            return NULL;
        /* One deadline per idle spell: wakeups that found the job already
         * taken by a busier thread do not extend it. */
        if (!armed) {
            deadline = deadline_after(ex->keepalive_ns);
            armed = true;
        }
        ex->idle++;
        int rc = pthread_cond_timedwait(&ex->work_cond, &ex->lock, &deadline);
        ex->idle--;
        if (rc == ETIMEDOUT && ex->head == NULL)
            return NULL;
    }
    job_t *j = ex->head;
    ex->head = j->next;
    if (ex->head == NULL)
        ex->tail = NULL;
    ex->queued--;
    return j;
}

static void *pool_main(void *arg)
{
    weft_executor_t *ex = arg;
    set_current_pool(ex);
    pthread_setname_np(pthread_self(), "weft-executor");

    pthread_mutex_lock(&ex->lock);
    job_t *j;
    while ((j = next_job(ex)) != NULL) {
        pthread_mutex_unlock(&ex->lock);
        run_job(j);
        pthread_mutex_lock(&ex->lock);
    }
    /* Leave: become the zombie, join the previous one (theory above). */
    ex->nthreads--;
    bool join_prev = ex->has_zombie;
    pthread_t prev = ex->zombie;
    ex->zombie = pthread_self();
    ex->has_zombie = true;
    if (ex->nthreads == 0)
        pthread_cond_broadcast(&ex->exit_cond);
    pthread_mutex_unlock(&ex->lock);
    if (join_prev) {
        int rc = pthread_join(prev, NULL);
        WEFT_CHECK(rc == 0);
    }
    return NULL;
}

/* ---- starting threads ------------------------------------------------------ */

/* Test seam (executor.h).  The pair is written only while no thread can
 * be spawning; release/acquire keep the argument with its function. */
static _Atomic(weft__spawn_hook_fn) spawn_hook;
static void *_Atomic spawn_hook_arg;

void weft__executor_set_spawn_hook(weft__spawn_hook_fn fn, void *arg)
{
    atomic_store_explicit(&spawn_hook_arg, arg, memory_order_relaxed);
    atomic_store_explicit(&spawn_hook, fn, memory_order_release);
}

static int spawn(weft_executor_t *ex)
{
    weft__spawn_hook_fn hook = atomic_load_explicit(&spawn_hook, memory_order_acquire);
    if (hook != NULL) {
        int err = hook(atomic_load_explicit(&spawn_hook_arg, memory_order_relaxed));
        if (err != 0)
            return err;
    }

    /* The new thread inherits the creator's mask, so block first: no
     * signal can reach it between creation and its first instruction.
     * Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS) stay
     * deliverable; blocking them kills the process without a handler. */
    sigset_t all, old;
    sigfillset(&all);
    static const int sync_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS};
    for (size_t i = 0; i < sizeof sync_signals / sizeof sync_signals[0]; i++)
        sigdelset(&all, sync_signals[i]);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid;
    int rc = pthread_create(&tid, NULL, pool_main, ex);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    /* tid is not kept: the thread names itself as zombie when it leaves. */
    return rc;
}

/* pthread_create failed with err for the thread counted for job `seq`.
 * Returns 0 when the job stays queued for an existing thread (or one has
 * already taken it), -err when no thread is left and the job was taken
 * back; then other queued jobs are orphans and fail with -err too. */
static int spawn_failed(weft_executor_t *ex, uint64_t seq, int err)
{
    job_t *orphans = NULL;
    pthread_mutex_lock(&ex->lock);
    ex->nthreads--;
    if (ex->nthreads == 0) {
        orphans = ex->head; /* invariant 3: nobody is left to run them */
        ex->head = ex->tail = NULL;
        ex->queued = 0;
        pthread_cond_broadcast(&ex->exit_cond);
    }
    pthread_mutex_unlock(&ex->lock);

    int rc = 0;
    while (orphans != NULL) {
        job_t *j = orphans;
        orphans = j->next;
        if (j->seq == seq)
            rc = -err; /* the caller still holds its own reference on f */
        else
            (void)weft_future_set_error(j->f, -err, NULL);
        weft_future_release(j->f);
        weft__context_release(j->ctx);
        weft__free(j);
    }
    return rc;
}

/* ---- the API ----------------------------------------------------------------- */

int weft__executor_submit(weft_executor_t *ex, weft_fn fn, void *arg, weft_future_t *f)
{
    if (ex == NULL || fn == NULL || f == NULL)
        return -EINVAL;
    job_t *j = weft__alloc(sizeof *j);
    if (j == NULL)
        return -ENOMEM;
    j->next = NULL;
    j->fn = fn;
    j->arg = arg;
    j->f = f;
    j->ctx = NULL;

    pthread_mutex_lock(&ex->lock);
    if (ex->closed) {
        pthread_mutex_unlock(&ex->lock);
        weft__free(j);
        return WEFT_ECLOSED;
    }
    /* contextvars: the call runs with a copy of the submitter's values. */
    j->ctx = weft__context_retain(weft__context_current());
    /* Taken before the job is visible: a pool thread may complete f and
     * drop this reference as soon as the lock is released. */
    weft_future_retain(f);
    uint64_t seq = j->seq = ex->next_seq++;
    if (ex->tail != NULL)
        ex->tail->next = j;
    else
        ex->head = j;
    ex->tail = j;
    ex->queued++;
    if (ex->idle > 0)
        pthread_cond_signal(&ex->work_cond);
    bool start = ex->queued > ex->idle && ex->nthreads < ex->max_threads;
    if (start)
        ex->nthreads++;
    pthread_mutex_unlock(&ex->lock);

    if (!start)
        return 0;
    int err = spawn(ex);
    return err == 0 ? 0 : spawn_failed(ex, seq, err);
}

/* Close ex (idle threads are told to leave once the queue is empty); with
 * wait, block until no thread is left and the last one is joined. */
static void close_and_wait(weft_executor_t *ex, bool wait)
{
    pthread_mutex_lock(&ex->lock);
    if (!ex->closed) {
        ex->closed = true;
        pthread_cond_broadcast(&ex->work_cond);
    }
    while (wait) {
        if (ex->nthreads > 0 || ex->joining) {
            pthread_cond_wait(&ex->exit_cond, &ex->lock);
            continue;
        }
        if (!ex->has_zombie)
            break;
        /* One waiter joins; concurrent ones wait on `joining`, so none
         * returns before every thread is really gone. */
        pthread_t z = ex->zombie;
        ex->has_zombie = false;
        ex->joining = true;
        pthread_mutex_unlock(&ex->lock);
        int rc = pthread_join(z, NULL);
        WEFT_CHECK(rc == 0);
        pthread_mutex_lock(&ex->lock);
        ex->joining = false;
        pthread_cond_broadcast(&ex->exit_cond);
    }
    pthread_mutex_unlock(&ex->lock);
}

int weft_executor_shutdown(weft_executor_t *ex, bool wait)
{
    if (ex == NULL)
        return -EINVAL;
    if (ex == &default_ex) {
        weft__log(WEFT_LOG_ERROR, "executor: the default executor cannot be shut down");
        return -EPERM;
    }
    if (wait && (weft_get_running_loop() != NULL || current_pool() == ex)) {
        if (weft_debug_env())
            weft__log(WEFT_LOG_WARN, "executor: shutdown with wait refused on a %s thread",
                      current_pool() == ex ? "pool" : "loop");
        return -EPERM;
    }
    close_and_wait(ex, wait);
    return 0;
}

void weft_executor_free(weft_executor_t *ex)
{
    if (ex == NULL)
        return;
    if (ex == &default_ex) {
        weft__log(WEFT_LOG_ERROR, "executor: the default executor cannot be freed");
        return;
    }
    if (current_pool() == ex) {
        weft__log(WEFT_LOG_ERROR,
                  "executor %p: weft_executor_free called on one of its own pool threads; "
                  "not freed",
                  (void *)ex);
        return;
    }
    close_and_wait(ex, true);
    WEFT_ASSERT(ex->head == NULL && ex->nthreads == 0 && !ex->has_zombie);
    pthread_cond_destroy(&ex->exit_cond);
    pthread_cond_destroy(&ex->work_cond);
    pthread_mutex_destroy(&ex->lock);
    weft__free(ex);
}

int weft_run_in_executor(weft_executor_t *ex, weft_fn fn, void *arg, weft_future_t **out)
{
    if (fn == NULL || out == NULL)
        return -EINVAL;
    weft_loop_t *loop = weft_get_running_loop();
    if (loop == NULL) {
        if (weft_debug_env())
            weft__log(WEFT_LOG_WARN, "weft_run_in_executor: no loop runs on this thread");
        return -EPERM;
    }
    /* The running runtime's default first, else the process-wide one. */
    if (ex == NULL)
        ex = weft__runtime_default_executor(weft_get_running_runtime());
    if (ex == NULL)
        ex = weft__executor_default();
    weft_future_t *f;
    int rc = weft_future_new(loop, &f);
    if (rc != 0)
        return rc;
    rc = weft__executor_submit(ex, fn, arg, f);
    if (rc != 0) {
        weft_future_release(f);
        return rc;
    }
    *out = f;
    return 0;
}
