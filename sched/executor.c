/* weft — executor pools: threads on demand for blocking calls.
 *
 * Theory of operation.
 *
 * An executor is a FIFO of jobs, its pool threads, an optional monitor
 * thread, and one mutex.  A job is (fn, arg, future); the thread that
 * unlinks it runs fn with the lock released and completes the future with
 * fn's outcome, unless the future was already done (cancelled) when the
 * job came up, in which case fn is skipped.
 *
 * Two kinds of calls share a pool.  Short ones (a hash, a stat of a cached
 * file) want about one thread per CPU: more threads only add context
 * switches and contention on the lock.  Blocking ones (a read from a pipe,
 * a DNS query, a job that waits for another job) want a thread each, or
 * jobs queued behind them starve, and deadlock if they are what the
 * running ones wait for.  The pool cannot tell which kind a call is, so it
 * watches what its threads do, as Go's sysmon watches Ps in syscalls.
 *
 * Waking.  Each pool thread has its own condition variable.  An idle
 * thread pushes itself on the `idle` stack and sleeps there, for at most
 * the keep-alive.  A submission pops the most recently idle thread (it is
 * the warmest, and the others then reach their keep-alive and exit) and
 * signals it alone: one signal per job that needs one, never one for a
 * thread that was already woken.  A thread that finishes a job takes the
 * next queued one without sleeping.
 *
 * Starting threads.  A submission that finds no idle thread starts one at
 * once while there are fewer than ncpu (the online CPUs).  From ncpu on,
 * its job waits for a busy thread, and the monitor decides.  The monitor
 * runs while jobs wait, whether or not anyone submits; every STALL_NS
 * (doubling up to SCAN_MAX_NS while its scans find nothing to do, and at
 * once when a submission sees that no job was taken for STALL_NS) it
 * counts the stuck threads: busy on the job they had at the previous scan
 * and asleep in the kernel (state S or D in /proc), or busy on one job
 * for LONG_JOB_NS.  If the others are fewer than ncpu it starts enough
 * threads to make up ncpu, or half the stuck count if that is more, no
 * more than the waiting jobs need or the cap allows.
 * So a pool of short calls stays at ncpu threads whatever the queue depth
 * (W9: 64 calls in flight grew the old one-thread-per-waiting-job pool to
 * ~32 threads fighting over 2 CPUs and one lock, 6x slower), while a pool
 * whose threads all block grows geometrically until the jobs run or
 * max_threads is reached: a job never waits forever behind stuck threads
 * while the cap allows one more, even when what they wait for is the job
 * queued behind them.  A thread that only waits for a CPU is not stuck:
 * counting it grew the pool without bound on a loaded machine.
 * The monitor starts with the first job that waits, parks (for at most
 * the keep-alive) once no job waited for a few scans, and exits after
 * that; if it cannot be created, that submission starts a pool thread at
 * once instead.
 *
 * Every thread is counted under the lock before pthread_create runs
 * unlocked, so racing starters never overshoot the cap.  If creation fails
 * while other threads exist, the job just waits for one of them.  If no
 * thread is left at all, the submitter takes its job back and returns the
 * error; jobs that others queued behind it in that window cannot run
 * either and fail through their futures with the same error.
 *
 * Leaving and joining.  A pool thread leaves when the executor is closed
 * and the queue is empty, or when its keep-alive passes with the queue
 * empty; the monitor leaves when nothing waits and the executor is closed
 * or its keep-alive passed.  Joining is chained: the leaving thread records
 * itself as `zombie` and joins the previous zombie after unlocking.  So at
 * most one exited thread is ever unjoined, no thread waits on a join for
 * long, and whoever joins the last zombie once no thread is left has
 * (transitively) joined them all.
 *
 * Invariants (under `lock`):
 *   1. nthreads counts pool threads being created, running or idle, up to
 *      the moment they record themselves as zombie; nthreads <= max_threads.
 *      The monitor is not among them: `monitor` says it exists or is being
 *      created.
 *   2. A thread is on `idle` exactly while it sleeps there unwoken.  A
 *      thread taken off by a submission or a close is `woken` and counted
 *      in nwoken until it looks at the queue.  So jobs beyond nwoken are
 *      waiting for a busy thread, and `idle` is empty whenever they exist.
 *   3. While a job waits (queued > nwoken) and nthreads < max_threads,
 *      the monitor exists, or the job's submission started a thread
 *      (below ncpu, or when the monitor could not be created, or when that
 *      creation failed).  The monitor leaves only when no job waits.  So
 *      no job waits forever behind threads that never come back.
 *   4. While the queue is non-empty, nthreads > 0: a thread leaves only
 *      with the queue empty, and a failed creation that leaves nthreads at
 *      0 empties the queue (above).  So every queued job runs or fails.
 *   5. closed never goes back to false, and no job is queued after it.
 *   6. A job is unlinked exactly once, by the thread that runs or drops it.
 *
 * Lock order: `lock` is a leaf, taken alone and never held while a job
 * runs, a future is completed or released, a message is logged, or a
 * thread is created or joined.  (The monitor reads /proc under it: a
 * read of a few bytes from procfs, which takes no lock of ours.)
 */
#include "sched/executor.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sched/common.h"
#include "sched/context.h"
#include "weft/loop.h"

/* asyncio caps its default pool at min(32, cpus + 4) because Python
 * threads share one interpreter lock; weft's calls run truly in parallel
 * and mostly sleep in the kernel, so the cap is the card's 512. */
#define DEFAULT_MAX_THREADS  512u
#define DEFAULT_KEEPALIVE_NS (INT64_C(10) * 1000000000)
/* The monitor's shortest scan period, hence the shortest run after which
 * a sleeping job counts as stuck; also how long the pool may go without
 * taking a job, while jobs wait, before a submission asks the monitor to
 * scan at once.  100 us is about a hundred short calls on one thread, so
 * a merely busy pool never looks stuck, and still small next to the calls
 * that really block (a disk read, a DNS query, a lock held elsewhere). */
#define STALL_NS (INT64_C(100) * 1000)
/* The monitor's longest scan period, reached by doubling while scans find
 * nothing to start: at most 1000 wakeups a second on a saturated pool. */
#define SCAN_MAX_NS (INT64_C(1000) * 1000)
/* A job that has run this long counts as stuck even while it computes:
 * the jobs queued behind long CPU-bound calls get a thread after this
 * wait at most.  Long enough that a thread merely waiting for a CPU on a
 * loaded machine (tens of ms at worst under CFS) rarely reaches it. */
#define LONG_JOB_NS (INT64_C(50) * 1000000)
/* The seq of no job: threads the monitor starts are for no job in
 * particular (spawn_failed). */
#define NO_SEQ UINT64_MAX

typedef struct job {
    struct job *next;
    weft_fn fn;
    void *arg;
    weft_future_t *f; /* the executor's own reference */
    uint64_t seq;
    weft__context_t *ctx; /* the submitter's task context (a reference), or NULL */
} job_t;

/* A pool thread, on its own stack; every field but busy is under the lock. */
typedef struct pool_thread {
    struct pool_thread *prev, *next;           /* ex->threads, for the monitor's scan */
    struct pool_thread *idle_prev, *idle_next; /* ex->idle, while on it */
    pthread_cond_t cond;                       /* CLOCK_MONOTONIC; sleeps here while idle */
    bool woken;                                /* taken off ex->idle to look at the queue */
    /* Set under the lock when a job is taken; cleared without it as soon
     * as the job returns, so a thread that waits for the lock after its
     * job never looks stuck.  Relaxed: the monitor's scan only estimates,
     * and a stale value moves a thread start by one scan at most. */
    atomic_bool busy;
    uint64_t jobs;      /* jobs taken so far; the current one while busy */
    uint64_t since;     /* ex->scans when the current job was taken */
    int64_t taken_ns;   /* and the time */
    uint64_t stuck_job; /* jobs, when the current job was found stuck */
    pid_t tid;          /* for its state in /proc */
} pool_thread_t;

struct weft_executor {
    pthread_mutex_t lock;
    pthread_cond_t monitor_cond; /* CLOCK_MONOTONIC: scan periods, keep-alive */
    pthread_cond_t exit_cond;
    job_t *head, *tail;
    size_t queued;
    pool_thread_t *threads; /* every pool thread that has started running */
    pool_thread_t *idle;    /* idle threads, the most recently idle first */
    unsigned nthreads;
    unsigned nwoken; /* woken threads that have not looked at the queue yet */
    unsigned ncpu;   /* threads up to this many start at once */
    unsigned max_threads;
    int64_t keepalive_ns;
    int64_t progress_ns; /* when a job was last taken or a thread last started */
    uint64_t scans;      /* monitor scans so far: the clock of pool_thread.since */
    bool monitor;        /* the monitor thread exists or is being created */
    bool monitor_parked; /* it waits, without scanning, for a job to wait */
    bool scan_soon;      /* a submission saw no progress: scan without waiting */
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

static int cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc != 0)
        return rc;
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(c, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

static int executor_init(weft_executor_t *ex, unsigned max_threads, int64_t keepalive_ns)
{
    int rc = pthread_mutex_init(&ex->lock, NULL);
    if (rc != 0)
        return -rc;
    if ((rc = cond_init_monotonic(&ex->monitor_cond)) == 0) {
        if ((rc = pthread_cond_init(&ex->exit_cond, NULL)) != 0)
            pthread_cond_destroy(&ex->monitor_cond);
    }
    if (rc != 0) {
        pthread_mutex_destroy(&ex->lock);
        return -rc;
    }
    ex->head = ex->tail = NULL;
    ex->queued = 0;
    ex->threads = ex->idle = NULL;
    ex->nthreads = 0;
    ex->nwoken = 0;
    ex->ncpu = weft__ncpu();
    ex->max_threads = max_threads != 0 ? max_threads : DEFAULT_MAX_THREADS;
    ex->keepalive_ns = keepalive_ns != 0 ? keepalive_ns : DEFAULT_KEEPALIVE_NS;
    ex->progress_ns = 0;
    ex->scans = 0;
    ex->monitor = false;
    ex->monitor_parked = false;
    ex->scan_soon = false;
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

/* ---- the idle stack (lock held) -------------------------------------------- */

static void idle_push(weft_executor_t *ex, pool_thread_t *t)
{
    t->woken = false;
    WEFT__DLIST_PUSH(ex->idle, t, idle_prev, idle_next);
}

static void idle_remove(weft_executor_t *ex, pool_thread_t *t)
{
    WEFT__DLIST_UNLINK(ex->idle, t, idle_prev, idle_next);
}

/* Take the most recently idle thread off the stack and wake it. */
static void wake_idle(weft_executor_t *ex)
{
    pool_thread_t *t = ex->idle;
    idle_remove(ex, t);
    t->woken = true;
    ex->nwoken++;
    pthread_cond_signal(&t->cond);
}

/* Jobs queued that no woken thread is on its way to take (invariant 2). */
static bool jobs_wait(const weft_executor_t *ex)
{
    return ex->queued > ex->nwoken;
}

/* ---- pool threads ------------------------------------------------------------ */

/* With lock held: the next job, waiting for one up to the keep-alive; NULL
 * when this thread should leave (closed and drained, or idle too long). */
static job_t *next_job(weft_executor_t *ex, pool_thread_t *self)
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
        idle_push(ex, self);
        int rc = 0;
        while (!self->woken && rc != ETIMEDOUT) {
            rc = pthread_cond_timedwait(&self->cond, &ex->lock, &deadline);
            WEFT_CHECK(rc == 0 || rc == ETIMEDOUT);
        }
        if (self->woken) {
            ex->nwoken--;
        } else {
            idle_remove(ex, self); /* the keep-alive passed unwoken */
            if (ex->head == NULL)
                return NULL;
        }
    }
    job_t *j = ex->head;
    ex->head = j->next;
    if (ex->head == NULL)
        ex->tail = NULL;
    ex->queued--;
    ex->progress_ns = weft__now_ns();
    return j;
}

/* With lock held, by a pool thread already uncounted or the monitor
 * already unmarked: become the zombie, unlock, and join the previous
 * zombie (theory above). */
static void leave(weft_executor_t *ex)
{
    bool join_prev = ex->has_zombie;
    pthread_t prev = ex->zombie;
    ex->zombie = pthread_self();
    ex->has_zombie = true;
    if (ex->nthreads == 0 && !ex->monitor)
        pthread_cond_broadcast(&ex->exit_cond);
    pthread_mutex_unlock(&ex->lock);
    if (join_prev) {
        int rc = pthread_join(prev, NULL);
        WEFT_CHECK(rc == 0);
    }
}

static void *pool_main(void *arg)
{
    weft_executor_t *ex = arg;
    set_current_pool(ex);
    pthread_setname_np(pthread_self(), "weft-executor");
    pool_thread_t self = {.prev = NULL, .jobs = 0, .stuck_job = 0};
    atomic_init(&self.busy, false);
    self.tid = (pid_t)syscall(SYS_gettid);
    /* glibc's init cannot fail for a monotonic, process-private cond. */
    WEFT_CHECK(cond_init_monotonic(&self.cond) == 0);

    pthread_mutex_lock(&ex->lock);
    WEFT__DLIST_PUSH(ex->threads, &self, prev, next);
    job_t *j;
    while ((j = next_job(ex, &self)) != NULL) {
        self.jobs++;
        self.since = ex->scans;
        self.taken_ns = ex->progress_ns;
        atomic_store_explicit(&self.busy, true, memory_order_relaxed);
        pthread_mutex_unlock(&ex->lock);
        run_job(j);
        atomic_store_explicit(&self.busy, false, memory_order_relaxed);
        pthread_mutex_lock(&ex->lock);
    }
    WEFT__DLIST_UNLINK(ex->threads, &self, prev, next);
    /* Off both lists: nobody signals self.cond any more. */
    pthread_cond_destroy(&self.cond);
    ex->nthreads--;
    leave(ex);
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

/* Create a thread running main(ex), the pool's or the monitor's. */
static int spawn(weft_executor_t *ex, void *(*main)(void *))
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
    int rc = pthread_create(&tid, NULL, main, ex);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    /* tid is not kept: the thread names itself as zombie when it leaves. */
    return rc;
}

/* pthread_create failed with err for the pool thread counted for job `seq`
 * (NO_SEQ: the monitor's).  Returns 0 when the job stays queued for an
 * existing thread (or one has already taken it), -err when no thread is
 * left and the job was taken back; then other queued jobs are orphans and
 * fail with -err too. */
static int spawn_failed(weft_executor_t *ex, uint64_t seq, int err)
{
    job_t *orphans = NULL;
    pthread_mutex_lock(&ex->lock);
    ex->nthreads--;
    if (ex->nthreads == 0) {
        orphans = ex->head; /* invariant 4: nobody is left to run them */
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

/* ---- the monitor --------------------------------------------------------------- */

/* Whether thread tid of this process is running or waiting for a CPU
 * ('R' in /proc), rather than asleep in the kernel.  Without /proc, every
 * thread counts as asleep, and only the scan period tells stuck threads
 * apart.  The line starts "tid (comm) S", and comm may hold ')'. */
static bool thread_runnable(pid_t tid)
{
    char path[48], buf[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');
    return paren != NULL && paren[1] == ' ' && paren[2] == 'R';
}

/* With lock held, one scan: how many pool threads to start now (counted
 * here).  A thread is stuck when it has run its job for a whole scan
 * period and sleeps in the kernel (a read, a lock, a wait for another
 * job), or has run it for LONG_JOB_NS whatever it does.  A thread that
 * is merely waiting for a CPU is not stuck: another thread would only
 * wait too, and counting it made a loaded 2-CPU machine grow the pool
 * without bound.  Start enough threads to bring the ones not stuck back to
 * ncpu (or more, below), no more than the waiting jobs need or the cap
 * allows.
 *
 * Reading /proc costs a few microseconds under the lock, once per job
 * found asleep (the verdict is kept for that job) and once per scan for a
 * job found running; only jobs older than a scan period are looked at,
 * and only while jobs wait. */
static unsigned scan(weft_executor_t *ex)
{
    uint64_t scans = ex->scans++;
    if (!jobs_wait(ex) || ex->nthreads >= ex->max_threads)
        return 0;
    int64_t now = weft__now_ns();
    unsigned stuck = 0;
    for (pool_thread_t *t = ex->threads; t != NULL; t = t->next) {
        if (!atomic_load_explicit(&t->busy, memory_order_relaxed) || t->since == scans)
            continue;
        if (t->stuck_job != t->jobs &&
            (now - t->taken_ns >= LONG_JOB_NS || !thread_runnable(t->tid)))
            t->stuck_job = t->jobs;
        stuck += t->stuck_job == t->jobs;
    }
    if (ex->nthreads - stuck >= ex->ncpu)
        return 0;
    /* ncpu threads per scan would take a second to reach the cap of a
     * pool of sleeping calls; half the stuck ones more makes the growth
     * geometric (200 sleepers get their threads in about ten scans). */
    size_t want = ex->ncpu - (ex->nthreads - stuck);
    if (want < stuck / 2)
        want = stuck / 2;
    if (want > ex->queued - ex->nwoken)
        want = ex->queued - ex->nwoken;
    if (want > ex->max_threads - ex->nthreads)
        want = ex->max_threads - ex->nthreads;
    ex->nthreads += (unsigned)want;
    ex->progress_ns = now;
    return (unsigned)want;
}

/* With lock held: sleep until a job waits, the executor closes or the
 * keep-alive passes; true when a job waits (there is work to watch). */
static bool park_monitor(weft_executor_t *ex)
{
    struct timespec deadline = deadline_after(ex->keepalive_ns);
    int rc = 0;
    ex->monitor_parked = true;
    while (!jobs_wait(ex) && !ex->closed && rc != ETIMEDOUT) {
        rc = pthread_cond_timedwait(&ex->monitor_cond, &ex->lock, &deadline);
        WEFT_CHECK(rc == 0 || rc == ETIMEDOUT);
    }
    ex->monitor_parked = false;
    /* Jobs that began before now have run a whole period at the first
     * scan, one period from now: they count as stuck there. */
    ex->scans++;
    return jobs_wait(ex);
}

static void *monitor_main(void *arg)
{
    weft_executor_t *ex = arg;
    pthread_setname_np(pthread_self(), "weft-exec-mon");
    int64_t period = STALL_NS;
    pthread_mutex_lock(&ex->lock);
    for (;;) {
        if (!jobs_wait(ex)) {
            if (ex->closed)
                break;
            /* Keep scanning for a few periods after the queue drained:
             * a pool whose queue empties and refills all the time would
             * otherwise wake a parked monitor for every burst. */
            if (period >= SCAN_MAX_NS) {
                if (!park_monitor(ex))
                    break;
                period = STALL_NS;
                continue;
            }
        }
        if (!ex->scan_soon) {
            struct timespec next = deadline_after(period);
            int rc = pthread_cond_timedwait(&ex->monitor_cond, &ex->lock, &next);
            WEFT_CHECK(rc == 0 || rc == ETIMEDOUT);
            if (rc == 0 && !ex->scan_soon)
                continue; /* closed (or a spurious wakeup): look again */
        }
        ex->scan_soon = false;
        unsigned want = scan(ex);
        if (want == 0) {
            period = period * 2 < SCAN_MAX_NS ? period * 2 : SCAN_MAX_NS;
            continue;
        }
        period = STALL_NS;
        pthread_mutex_unlock(&ex->lock);
        for (unsigned i = 0; i < want; i++) {
            int err = spawn(ex, pool_main);
            if (err == 0)
                continue;
            /* Threads exist (the stuck ones), so no job is orphaned here
             * unless they all leave meanwhile; spawn_failed handles that. */
            for (; i < want; i++)
                (void)spawn_failed(ex, NO_SEQ, err);
        }
        pthread_mutex_lock(&ex->lock);
    }
    ex->monitor = false;
    leave(ex);
    return NULL;
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
    bool start = false, start_monitor = false;
    if (ex->idle != NULL) {
        wake_idle(ex);
    } else if (jobs_wait(ex) && ex->nthreads < ex->max_threads) {
        /* Below ncpu, start at once; from there on, the monitor decides
         * (theory above).  It is told to look now when it is parked, or
         * when no thread took a job for STALL_NS; one signal each. */
        if (ex->nthreads < ex->ncpu) {
            start = true;
        } else if (!ex->monitor) {
            ex->monitor = start_monitor = true;
        } else if (ex->monitor_parked) {
            ex->monitor_parked = false;
            pthread_cond_signal(&ex->monitor_cond);
        } else if (!ex->scan_soon && weft__now_ns() - ex->progress_ns >= STALL_NS) {
            ex->scan_soon = true;
            pthread_cond_signal(&ex->monitor_cond);
        }
    }
    if (start) {
        ex->nthreads++;
        ex->progress_ns = weft__now_ns();
    }
    pthread_mutex_unlock(&ex->lock);

    if (start_monitor && spawn(ex, monitor_main) != 0) {
        /* Nobody would watch this job: start a pool thread for it at once,
         * as below ncpu (invariant 3). */
        pthread_mutex_lock(&ex->lock);
        ex->monitor = false;
        if (ex->nthreads == 0)
            pthread_cond_broadcast(&ex->exit_cond);
        start = jobs_wait(ex) && ex->nthreads < ex->max_threads;
        if (start)
            ex->nthreads++;
        pthread_mutex_unlock(&ex->lock);
    }
    if (!start)
        return 0;
    int err = spawn(ex, pool_main);
    return err == 0 ? 0 : spawn_failed(ex, seq, err);
}

/* Close ex (idle threads are told to leave once the queue is empty); with
 * wait, block until no thread is left and the last one is joined. */
static void close_and_wait(weft_executor_t *ex, bool wait)
{
    pthread_mutex_lock(&ex->lock);
    if (!ex->closed) {
        ex->closed = true;
        while (ex->idle != NULL)
            wake_idle(ex);
        pthread_cond_signal(&ex->monitor_cond);
    }
    while (wait) {
        if (ex->nthreads > 0 || ex->monitor || ex->joining) {
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
    WEFT_ASSERT(ex->head == NULL && ex->nthreads == 0 && !ex->monitor && !ex->has_zombie);
    pthread_cond_destroy(&ex->exit_cond);
    pthread_cond_destroy(&ex->monitor_cond);
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
