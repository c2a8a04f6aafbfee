/* Tests for executor pools (include/weft/executor.h, sched/executor.h):
 * outcomes propagated through the future, binding to the running loop,
 * threads started on demand up to the cap and ended after the keep-alive,
 * short calls served by about one thread per CPU, blocking calls (jobs
 * that all sleep, jobs that wait for a job queued after them) given a
 * thread each, cancellation before and during a call, shutdown and free
 * with queued work, every documented return code (allocation and thread-creation
 * failures through their test seams), jobs that submit jobs, the default
 * executor, and the signal mask of pool threads.
 *
 * Nothing here calls a cmocka assert inside a pool thread or a loop
 * callback: those record failures with CHECK() and the test asserts
 * ASSERT_NO_FAILURE() once the loop has returned and the pool is drained.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "weft.h"
#include "weft/executor.h"

#include "sched/common.h"   /* weft__alloc_fail_nth(): the allocation-failure seam */
#include "sched/executor.h" /* weft__executor_submit, thread count, spawn seam */
#include "test/support/check.h"

#define MS INT64_C(1000000)
/* Generous: nothing here should take a second even under TSan. */
#define WAIT_NS (INT64_C(10) * 1000 * MS)

static char sentinel_obj;
#define SENTINEL ((void *)&sentinel_obj)

/* ---- helpers ------------------------------------------------------------ */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static weft_loop_t *new_loop(void)
{
    weft_loop_t *loop = NULL;
    assert_int_equal(weft_loop_new(&loop), 0);
    return loop;
}

static weft_executor_t *new_executor(unsigned max_threads, int64_t keepalive_ns)
{
    weft_executor_t *ex = NULL;
    assert_int_equal(weft_executor_new(max_threads, keepalive_ns, &ex), 0);
    assert_non_null(ex);
    return ex;
}

/* Queue fn(arg) with a fresh future on loop (which need not be running:
 * the future completes from the pool thread and is waited for with
 * weft_future_wait). */
static weft_future_t *submit(weft_executor_t *ex, weft_loop_t *loop, weft_fn fn, void *arg)
{
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_int_equal(weft__executor_submit(ex, fn, arg, f), 0);
    return f;
}

/* fs[0..n-1] = n submissions of fn(arg). */
static void submit_all(weft_executor_t *ex, weft_loop_t *loop, weft_fn fn, void *arg,
                       weft_future_t **fs, int n)
{
    for (int i = 0; i < n; i++)
        fs[i] = submit(ex, loop, fn, arg);
}

static void wait_done(weft_future_t *f)
{
    assert_int_equal(weft_future_wait(f, WAIT_NS), 0);
    assert_true(weft_future_done(f));
}

/* wait_done, then release, for each of the n futures of fs. */
static void wait_done_all(weft_future_t **fs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        wait_done(fs[i]);
        weft_future_release(fs[i]);
    }
}

/* Poll cond() every millisecond for up to WAIT_NS; true once it held. */
#define POLL_UNTIL(cond)                                                                           \
    ({                                                                                             \
        int64_t deadline_ = weft__now_ns() + WAIT_NS;                                              \
        while (!(cond) && weft__now_ns() < deadline_)                                              \
            sleep_ms(1);                                                                           \
        (bool)(cond);                                                                              \
    })

/* A gate jobs block on until the test opens it. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
} gate_t;

static void gate_init(gate_t *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->open = false;
}

static void gate_open(gate_t *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_pass(gate_t *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void gate_destroy(gate_t *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

/* What a probe job records: how many started, ran at once (high-water
 * mark), finished; optionally it blocks on a gate or sleeps. */
typedef struct probe {
    check_rec_t rec;
    gate_t gate;
    bool use_gate;
    int sleep_ms;
    atomic_int started;
    atomic_int running;
    atomic_int high;
    atomic_int finished;
    _Atomic(pthread_t) last_thread;
} probe_t;

static void probe_init(probe_t *p)
{
    memset(p, 0, sizeof *p);
    check_rec_init(&p->rec);
    gate_init(&p->gate);
}

static int probe_fn(void *arg, void **result)
{
    probe_t *p = arg;
    atomic_fetch_add(&p->started, 1);
    int now = atomic_fetch_add(&p->running, 1) + 1;
    int high = atomic_load(&p->high);
    while (now > high && !atomic_compare_exchange_weak(&p->high, &high, now)) {
    }
    CHECK(&p->rec, weft_get_running_loop() == NULL);
    if (p->use_gate)
        gate_pass(&p->gate);
    if (p->sleep_ms > 0)
        sleep_ms(p->sleep_ms);
    atomic_store(&p->last_thread, pthread_self());
    atomic_fetch_sub(&p->running, 1);
    atomic_fetch_add(&p->finished, 1);
    *result = p;
    return 0;
}

/* Returns its argument, an int code, as the outcome: 0 -> result 42. */
static int code_fn(void *arg, void **result)
{
    int code = (int)(intptr_t)arg;
    if (code == 0)
        *result = (void *)(uintptr_t)42;
    return code;
}

/* Log capture, for the calls documented to log instead of returning. */
static atomic_int log_errors;

static void count_log(int level, const char *message, void *arg)
{
    (void)message;
    (void)arg;
    if (level == WEFT_LOG_ERROR)
        atomic_fetch_add(&log_errors, 1);
}

static void capture_log(void)
{
    atomic_store(&log_errors, 0);
    assert_int_equal(weft_set_log_handler(count_log, NULL), 0);
}

static void restore_log(void)
{
    assert_int_equal(weft_set_log_handler(NULL, NULL), 0);
}

/* ---- run_in_executor from a loop callback --------------------------------- */

typedef struct in_loop {
    check_rec_t rec;
    weft_loop_t *loop;
    weft_executor_t *ex; /* NULL = default */
    weft_fn fn;
    void *arg;
    int rc;
    weft_future_t *f;
    atomic_int done_calls;
    pthread_t test_thread;
} in_loop_t;

static void on_done(weft_future_t *f, void *arg)
{
    in_loop_t *c = arg;
    CHECK(&c->rec, f == c->f);
    CHECK(&c->rec, weft_get_running_loop() == c->loop);
    CHECK(&c->rec, pthread_equal(pthread_self(), c->test_thread));
    atomic_fetch_add(&c->done_calls, 1);
}

static void start_in_loop(void *arg)
{
    in_loop_t *c = arg;
    c->rc = weft_run_in_executor(c->ex, c->fn, c->arg, &c->f);
    if (c->rc == 0)
        CHECK(&c->rec, weft_future_add_done_callback(c->f, on_done, c) == 0);
}

/* As start_in_loop, without the done callback (it would allocate). */
static void start_only(void *arg)
{
    in_loop_t *c = arg;
    c->rc = weft_run_in_executor(c->ex, c->fn, c->arg, &c->f);
}

/* Start fn(arg) on ex from inside a callback of a fresh loop, run the loop
 * until the future is done, and return run_until_complete's answer.  The
 * caller releases c->f and frees c->loop. */
static int run_in_loop(in_loop_t *c, weft_executor_t *ex, weft_fn fn, void *arg)
{
    memset(c, 0, sizeof *c);
    check_rec_init(&c->rec);
    c->loop = new_loop();
    c->ex = ex;
    c->fn = fn;
    c->arg = arg;
    c->rc = -12345;
    c->test_thread = pthread_self();
    assert_int_equal(weft_loop_call_soon(c->loop, start_in_loop, c, NULL), 0);
    assert_int_equal(weft_loop_stop(c->loop), 0);
    assert_int_equal(weft_loop_run_forever(c->loop), 0);
    assert_int_equal(c->rc, 0);
    assert_non_null(c->f);
    int rc = weft_loop_run_until_complete(c->loop, c->f);
    /* One more iteration runs the done callback, scheduled by completion. */
    assert_int_equal(weft_loop_stop(c->loop), 0);
    assert_int_equal(weft_loop_run_forever(c->loop), 0);
    ASSERT_NO_FAILURE(&c->rec);
    assert_int_equal(atomic_load(&c->done_calls), 1);
    return rc;
}

static void finish_in_loop(in_loop_t *c)
{
    weft_future_release(c->f);
    weft_loop_free(c->loop);
}

/* ---- construction and arguments ----------------------------------------------- */

static void test_executor_new_rejects_null_out_and_negative_keepalive(void **state)
{
    (void)state;
    weft_executor_t *ex = SENTINEL;
    assert_int_equal(weft_executor_new(0, 0, NULL), -EINVAL);
    assert_int_equal(weft_executor_new(4, -1, &ex), -EINVAL);
    assert_ptr_equal(ex, SENTINEL);
    assert_int_equal(weft_executor_new(0, 0, &ex), 0); /* all defaults */
    assert_ptr_not_equal(ex, SENTINEL);
    assert_int_equal(weft__executor_thread_count(ex), 0); /* none until work arrives */
    weft_executor_free(ex);
}

static void test_executor_new_out_of_memory_is_enomem(void **state)
{
    (void)state;
    weft_executor_t *ex = SENTINEL;
    weft__alloc_fail_nth(1);
    assert_int_equal(weft_executor_new(2, 0, &ex), -ENOMEM);
    weft__alloc_fail_nth(0);
    assert_ptr_equal(ex, SENTINEL);
}

static void test_executor_null_arguments_are_einval(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(1, 0);
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);

    assert_int_equal(weft__executor_submit(NULL, code_fn, NULL, f), -EINVAL);
    assert_int_equal(weft__executor_submit(ex, NULL, NULL, f), -EINVAL);
    assert_int_equal(weft__executor_submit(ex, code_fn, NULL, NULL), -EINVAL);
    weft_future_t *out = SENTINEL;
    assert_int_equal(weft_run_in_executor(ex, NULL, NULL, &out), -EINVAL);
    assert_int_equal(weft_run_in_executor(ex, code_fn, NULL, NULL), -EINVAL);
    assert_ptr_equal(out, SENTINEL);
    assert_int_equal(weft_executor_shutdown(NULL, false), -EINVAL);
    assert_int_equal(weft_executor_shutdown(NULL, true), -EINVAL);
    weft_executor_free(NULL); /* ignored */

    assert_false(weft_future_done(f)); /* nothing touched it */
    assert_int_equal(weft__executor_thread_count(ex), 0);
    weft_future_release(f);
    weft_executor_free(ex);
    weft_loop_free(loop);
}

/* ---- outcomes and loop binding ---------------------------------------------------- */

static void test_executor_run_in_executor_propagates_the_result(void **state)
{
    (void)state;
    weft_executor_t *ex = new_executor(2, 0);
    in_loop_t c;
    assert_int_equal(run_in_loop(&c, ex, code_fn, (void *)(intptr_t)0), 0);
    void *value = NULL;
    assert_int_equal(weft_future_result(c.f, &value), 0);
    assert_ptr_equal(value, (void *)(uintptr_t)42);
    finish_in_loop(&c);
    weft_executor_free(ex);
}

static void test_executor_run_in_executor_propagates_the_error_code(void **state)
{
    (void)state;
    weft_executor_t *ex = new_executor(2, 0);
    in_loop_t c;
    assert_int_equal(run_in_loop(&c, ex, code_fn, (void *)(intptr_t)-EIO), -EIO);
    assert_int_equal(weft_future_error(c.f), -EIO);
    assert_false(weft_future_cancelled(c.f));
    finish_in_loop(&c);
    weft_executor_free(ex);
}

static void test_executor_positive_return_fails_with_einval_and_logs(void **state)
{
    (void)state;
    weft_executor_t *ex = new_executor(1, 0);
    in_loop_t c;
    capture_log();
    assert_int_equal(run_in_loop(&c, ex, code_fn, (void *)(intptr_t)7), -EINVAL);
    restore_log();
    assert_int_equal(atomic_load(&log_errors), 1);
    finish_in_loop(&c);
    weft_executor_free(ex);
}

static void test_executor_fn_returning_ecanceled_cancels_the_future(void **state)
{
    (void)state;
    weft_executor_t *ex = new_executor(1, 0);
    in_loop_t c;
    assert_int_equal(run_in_loop(&c, ex, code_fn, (void *)(intptr_t)WEFT_ECANCELED),
                     WEFT_ECANCELED);
    assert_true(weft_future_cancelled(c.f));
    finish_in_loop(&c);
    weft_executor_free(ex);
}

static void test_executor_future_is_bound_to_the_running_loop(void **state)
{
    (void)state;
    weft_executor_t *ex = new_executor(1, 0);
    in_loop_t c;
    /* run_in_loop checks the done callback ran once, on this thread, with
     * this loop running. */
    assert_int_equal(run_in_loop(&c, ex, code_fn, (void *)(intptr_t)0), 0);
    assert_ptr_equal(weft_future_get_loop(c.f), c.loop);
    finish_in_loop(&c);
    weft_executor_free(ex);
}

static void test_executor_run_in_executor_outside_a_loop_is_eperm(void **state)
{
    (void)state;
    weft_executor_t *ex = new_executor(1, 0);
    weft_future_t *out = SENTINEL;
    assert_int_equal(weft_run_in_executor(ex, code_fn, NULL, &out), -EPERM);
    assert_int_equal(weft_run_in_executor(NULL, code_fn, NULL, &out), -EPERM);
    assert_ptr_equal(out, SENTINEL);
    assert_int_equal(weft__executor_thread_count(ex), 0);
    weft_executor_free(ex);
}

static void test_executor_default_executor_runs_the_call(void **state)
{
    (void)state;
    in_loop_t c;
    assert_int_equal(run_in_loop(&c, NULL, code_fn, (void *)(intptr_t)0), 0);
    void *value = NULL;
    assert_int_equal(weft_future_result(c.f, &value), 0);
    assert_ptr_equal(value, (void *)(uintptr_t)42);
    finish_in_loop(&c);
}

static void test_executor_default_executor_refuses_shutdown_and_free(void **state)
{
    (void)state;
    weft_executor_t *def = weft__executor_default();
    assert_non_null(def);
    assert_ptr_equal(weft__executor_default(), def);
    capture_log();
    assert_int_equal(weft_executor_shutdown(def, false), -EPERM);
    weft_executor_free(def);
    restore_log();
    assert_int_equal(atomic_load(&log_errors), 2);
    /* Still usable. */
    in_loop_t c;
    assert_int_equal(run_in_loop(&c, NULL, code_fn, (void *)(intptr_t)-EIO), -EIO);
    finish_in_loop(&c);
}

/* ---- threads on demand, keep-alive ----------------------------------------------- */

static void test_executor_starts_threads_on_demand_up_to_the_cap(void **state)
{
    (void)state;
    enum { JOBS = 10 };
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(2, 0);
    probe_t p;
    probe_init(&p);
    p.use_gate = true;
    weft_future_t *fs[JOBS];
    submit_all(ex, loop, probe_fn, &p, fs, JOBS);
    assert_true(POLL_UNTIL(atomic_load(&p.running) == 2));
    sleep_ms(50); /* room for a third thread, if the cap leaked */
    assert_int_equal(atomic_load(&p.running), 2);
    assert_int_equal(weft__executor_thread_count(ex), 2);
    gate_open(&p.gate);
    for (int i = 0; i < JOBS; i++) {
        wait_done(fs[i]);
        void *value = NULL;
        assert_int_equal(weft_future_result(fs[i], &value), 0);
        assert_ptr_equal(value, &p);
        weft_future_release(fs[i]);
    }
    assert_int_equal(atomic_load(&p.high), 2);
    assert_int_equal(atomic_load(&p.finished), JOBS);
    assert_true(weft__executor_thread_count(ex) <= 2);
    weft_executor_free(ex);
    ASSERT_NO_FAILURE(&p.rec);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

static void test_executor_reuses_an_idle_thread_instead_of_starting_one(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(8, 0); /* 10 s keep-alive */
    probe_t p;
    probe_init(&p);
    weft_future_t *f = submit(ex, loop, probe_fn, &p);
    wait_done(f);
    weft_future_release(f);
    pthread_t first = atomic_load(&p.last_thread);
    sleep_ms(100); /* the thread is idle now, and stays for the keep-alive */
    assert_int_equal(weft__executor_thread_count(ex), 1);
    f = submit(ex, loop, probe_fn, &p);
    wait_done(f);
    weft_future_release(f);
    assert_true(pthread_equal(first, atomic_load(&p.last_thread)));
    assert_int_equal(weft__executor_thread_count(ex), 1);
    weft_executor_free(ex);
    assert_int_equal(atomic_load(&p.finished), 2);
    ASSERT_NO_FAILURE(&p.rec);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

static void test_executor_idle_threads_exit_after_the_keepalive(void **state)
{
    (void)state;
    enum { JOBS = 3 };
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(JOBS, 20 * MS);
    probe_t p;
    probe_init(&p);
    p.use_gate = true;
    weft_future_t *fs[JOBS];
    submit_all(ex, loop, probe_fn, &p, fs, JOBS);
    assert_true(POLL_UNTIL(atomic_load(&p.running) == JOBS));
    assert_int_equal(weft__executor_thread_count(ex), JOBS);
    gate_open(&p.gate);
    wait_done_all(fs, JOBS);
    sleep_ms(200);
    assert_true(POLL_UNTIL(weft__executor_thread_count(ex) == 0));
    /* Work after the pool emptied starts a thread again. */
    p.use_gate = false;
    weft_future_t *f = submit(ex, loop, probe_fn, &p);
    wait_done(f);
    weft_future_release(f);
    assert_int_equal(atomic_load(&p.finished), JOBS + 1);
    assert_true(POLL_UNTIL(weft__executor_thread_count(ex) == 0));
    weft_executor_free(ex);
    ASSERT_NO_FAILURE(&p.rec);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

/* ---- short calls, blocking calls ------------------------------------------------- */

static unsigned online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

static int nop_fn(void *arg, void **result)
{
    (void)arg;
    (void)result;
    return 0;
}

/* A burst of short calls is served by about one thread per CPU: the pool
 * starts threads beyond ncpu only for threads stuck in a call, and these
 * calls never get stuck.  (Starting one per queued job would make
 * hundreds.)  The bound leaves room for a thread or two caught asleep in
 * an allocator lock on a loaded machine. */
static void test_executor_short_calls_do_not_grow_the_pool_past_the_cpus(void **state)
{
    (void)state;
    enum { JOBS = 2000 };
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(0, 0);
    static weft_future_t *fs[JOBS];
    submit_all(ex, loop, nop_fn, NULL, fs, JOBS);
    for (int i = 0; i < JOBS; i++) {
        wait_done(fs[i]);
        assert_int_equal(weft_future_result(fs[i], NULL), 0);
        weft_future_release(fs[i]);
    }
    assert_true(weft__executor_thread_count(ex) <= 2 * online_cpus() + 8);
    weft_executor_free(ex);
    weft_loop_free(loop);
}

/* Each job waits (asleep) until all JOBS run at once, for at most WAIT_NS:
 * they finish only if the pool grows well past the CPU count while none
 * of them returns and nobody submits. */
typedef struct rendezvous {
    check_rec_t rec;
    int jobs;
    atomic_int running;
    atomic_int met;
} rendezvous_t;

static int rendezvous_fn(void *arg, void **result)
{
    rendezvous_t *r = arg;
    (void)result;
    atomic_fetch_add(&r->running, 1);
    int64_t deadline = weft__now_ns() + WAIT_NS;
    while (atomic_load(&r->running) < r->jobs && weft__now_ns() < deadline)
        sleep_ms(1);
    bool met = atomic_load(&r->running) >= r->jobs;
    CHECK(&r->rec, met);
    if (met)
        atomic_fetch_add(&r->met, 1);
    return 0;
}

static void test_executor_blocked_jobs_get_a_thread_each(void **state)
{
    (void)state;
    enum { JOBS = 64 };
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(0, 0);
    rendezvous_t r = {.jobs = JOBS};
    check_rec_init(&r.rec);
    atomic_init(&r.running, 0);
    atomic_init(&r.met, 0);
    weft_future_t *fs[JOBS];
    submit_all(ex, loop, rendezvous_fn, &r, fs, JOBS);
    wait_done_all(fs, JOBS);
    ASSERT_NO_FAILURE(&r.rec);
    assert_int_equal(atomic_load(&r.met), JOBS);
    assert_true(weft__executor_thread_count(ex) >= JOBS);
    weft_executor_free(ex);
    weft_loop_free(loop);
}

/* Many sleeping calls run side by side: 200 calls of 50 ms take 5 s on
 * two threads, and about 50 ms (plus the pool's growth) on 200. */
static void test_executor_sleeping_calls_run_in_parallel(void **state)
{
    (void)state;
    enum { JOBS = 200 };
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(0, 0);
    probe_t p;
    probe_init(&p);
    p.sleep_ms = 50;
    int64_t t0 = weft__now_ns();
    static weft_future_t *fs[JOBS];
    submit_all(ex, loop, probe_fn, &p, fs, JOBS);
    wait_done_all(fs, JOBS);
    int64_t elapsed = weft__now_ns() - t0;
    assert_int_equal(atomic_load(&p.finished), JOBS);
    assert_true(elapsed < 4000 * MS);
    weft_executor_free(ex);
    ASSERT_NO_FAILURE(&p.rec);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

/* WAITERS jobs wait for an event that only the job queued after them
 * sets: it must get a thread although every earlier one is taken. */
typedef struct waiters {
    check_rec_t rec;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool set;
    atomic_int woke;
} waiters_t;

static int wait_event_fn(void *arg, void **result)
{
    waiters_t *w = arg;
    (void)result;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += WAIT_NS / (1000 * MS);
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    while (!w->set && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&w->cv, &w->mu, &deadline);
    bool set = w->set;
    pthread_mutex_unlock(&w->mu);
    CHECK(&w->rec, set);
    if (set)
        atomic_fetch_add(&w->woke, 1);
    return 0;
}

static int set_event_fn(void *arg, void **result)
{
    waiters_t *w = arg;
    (void)result;
    pthread_mutex_lock(&w->mu);
    w->set = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

static void test_executor_job_waiting_for_a_later_job_completes(void **state)
{
    (void)state;
    unsigned waiters = 2 * online_cpus() + 2; /* past the threads started at once */
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(0, 0);
    waiters_t w = {.set = false};
    check_rec_init(&w.rec);
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    atomic_init(&w.woke, 0);
    weft_future_t **fs = calloc(waiters, sizeof *fs);
    assert_non_null(fs);
    for (unsigned i = 0; i < waiters; i++)
        fs[i] = submit(ex, loop, wait_event_fn, &w);
    weft_future_t *setter = submit(ex, loop, set_event_fn, &w);
    wait_done(setter);
    wait_done_all(fs, waiters);
    weft_future_release(setter);
    free(fs);
    ASSERT_NO_FAILURE(&w.rec);
    assert_int_equal(atomic_load(&w.woke), (int)waiters);
    weft_executor_free(ex);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    weft_loop_free(loop);
}

/* ---- cancellation ------------------------------------------------------------------ */

static void test_executor_cancel_before_start_skips_the_call(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(1, 0);
    probe_t blocker, skipped;
    probe_init(&blocker);
    probe_init(&skipped);
    blocker.use_gate = true;
    weft_future_t *f1 = submit(ex, loop, probe_fn, &blocker);
    weft_future_t *f2 = submit(ex, loop, probe_fn, &skipped);
    assert_true(POLL_UNTIL(atomic_load(&blocker.started) == 1));
    assert_true(weft_future_cancel(f2, "not needed"));
    /* The executor keeps its own reference until the job comes up. */
    weft_future_release(f2);
    gate_open(&blocker.gate);
    wait_done(f1);
    assert_int_equal(weft_executor_shutdown(ex, true), 0); /* drains the queue */
    assert_int_equal(atomic_load(&skipped.started), 0);
    assert_int_equal(atomic_load(&blocker.finished), 1);
    weft_future_release(f1);
    weft_executor_free(ex);
    ASSERT_NO_FAILURE(&blocker.rec);
    gate_destroy(&blocker.gate);
    gate_destroy(&skipped.gate);
    weft_loop_free(loop);
}

static void test_executor_cancel_while_running_discards_the_result(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(1, 0);
    probe_t p;
    probe_init(&p);
    p.use_gate = true;
    weft_future_t *f = submit(ex, loop, probe_fn, &p);
    assert_true(POLL_UNTIL(atomic_load(&p.started) == 1));
    assert_true(weft_future_cancel(f, NULL));
    gate_open(&p.gate);
    assert_int_equal(weft_executor_shutdown(ex, true), 0);
    assert_int_equal(atomic_load(&p.finished), 1); /* ran to the end */
    assert_true(weft_future_cancelled(f));
    void *value = SENTINEL;
    assert_int_equal(weft_future_result(f, &value), WEFT_ECANCELED);
    assert_ptr_equal(value, SENTINEL);
    weft_future_release(f);
    weft_executor_free(ex);
    ASSERT_NO_FAILURE(&p.rec);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

/* ---- shutdown and free ---------------------------------------------------------------- */

static void test_executor_submit_after_shutdown_is_eclosed(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(2, 0);
    assert_int_equal(weft_executor_shutdown(ex, false), 0);
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_int_equal(weft__executor_submit(ex, code_fn, NULL, f), WEFT_ECLOSED);
    assert_false(weft_future_done(f));
    assert_int_equal(weft__executor_thread_count(ex), 0);
    weft_future_release(f);
    weft_executor_free(ex);
    weft_loop_free(loop);
}

static void test_executor_shutdown_wait_runs_queued_work_and_joins(void **state)
{
    (void)state;
    enum { JOBS = 10 };
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(2, 0);
    probe_t p;
    probe_init(&p);
    p.sleep_ms = 2;
    weft_future_t *fs[JOBS];
    submit_all(ex, loop, probe_fn, &p, fs, JOBS);
    assert_int_equal(weft_executor_shutdown(ex, true), 0);
    assert_int_equal(atomic_load(&p.finished), JOBS);
    assert_int_equal(weft__executor_thread_count(ex), 0);
    for (int i = 0; i < JOBS; i++) {
        assert_true(weft_future_done(fs[i]));
        assert_int_equal(weft_future_result(fs[i], NULL), 0);
        weft_future_release(fs[i]);
    }
    weft_executor_free(ex);
    ASSERT_NO_FAILURE(&p.rec);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

static void test_executor_shutdown_twice_is_zero(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(1, 0);
    probe_t p;
    probe_init(&p);
    weft_future_t *f = submit(ex, loop, probe_fn, &p);
    assert_int_equal(weft_executor_shutdown(ex, false), 0);
    assert_int_equal(weft_executor_shutdown(ex, false), 0);
    assert_int_equal(weft_executor_shutdown(ex, true), 0);
    assert_int_equal(weft_executor_shutdown(ex, true), 0);
    assert_true(weft_future_done(f));
    weft_future_release(f);
    weft_executor_free(ex);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

typedef struct shutdown_in_loop {
    weft_executor_t *ex;
    int rc_wait, rc_nowait;
} shutdown_in_loop_t;

static void shutdown_cb(void *arg)
{
    shutdown_in_loop_t *s = arg;
    s->rc_wait = weft_executor_shutdown(s->ex, true);
    s->rc_nowait = weft_executor_shutdown(s->ex, false);
}

static void test_executor_shutdown_wait_inside_a_loop_callback_is_eperm(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    shutdown_in_loop_t s = {new_executor(1, 0), 1, 1};
    assert_int_equal(weft_loop_call_soon(loop, shutdown_cb, &s, NULL), 0);
    assert_int_equal(weft_loop_stop(loop), 0);
    assert_int_equal(weft_loop_run_forever(loop), 0);
    assert_int_equal(s.rc_wait, -EPERM);
    assert_int_equal(s.rc_nowait, 0); /* not blocking: allowed */
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    assert_int_equal(weft__executor_submit(s.ex, code_fn, NULL, f), WEFT_ECLOSED);
    weft_future_release(f);
    weft_executor_free(s.ex);
    weft_loop_free(loop);
}

/* A job that tries to shut down and free its own executor. */
typedef struct self_stop {
    check_rec_t rec;
    weft_executor_t *ex;
} self_stop_t;

static int self_stop_fn(void *arg, void **result)
{
    self_stop_t *s = arg;
    (void)result;
    CHECK(&s->rec, weft_executor_shutdown(s->ex, true) == -EPERM);
    weft_executor_free(s->ex); /* refused with a logged error */
    CHECK(&s->rec, weft_executor_shutdown(s->ex, false) == 0);
    return 0;
}

static void test_executor_shutdown_wait_and_free_on_its_own_pool_thread_are_refused(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    self_stop_t s = {.ex = new_executor(1, 0)};
    check_rec_init(&s.rec);
    capture_log();
    weft_future_t *f = submit(s.ex, loop, self_stop_fn, &s);
    wait_done(f);
    assert_int_equal(weft_executor_shutdown(s.ex, true), 0);
    restore_log();
    assert_int_equal(atomic_load(&log_errors), 1);
    assert_int_equal(weft_future_result(f, NULL), 0);
    ASSERT_NO_FAILURE(&s.rec);
    weft_future_release(f);
    weft_executor_free(s.ex);
    weft_loop_free(loop);
}

typedef struct waiter {
    check_rec_t *rec;
    weft_executor_t *ex;
} waiter_t;

static void *shutdown_waiter(void *arg)
{
    waiter_t *w = arg;
    CHECK(w->rec, weft_executor_shutdown(w->ex, true) == 0);
    CHECK(w->rec, weft__executor_thread_count(w->ex) == 0);
    return NULL;
}

static void test_executor_concurrent_shutdown_waits_all_return_after_the_join(void **state)
{
    (void)state;
    enum { JOBS = 6, WAITERS = 3 };
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(3, 0);
    probe_t p;
    probe_init(&p);
    p.sleep_ms = 5;
    weft_future_t *fs[JOBS];
    submit_all(ex, loop, probe_fn, &p, fs, JOBS);
    check_rec_t rec;
    check_rec_init(&rec);
    waiter_t w = {&rec, ex};
    pthread_t th[WAITERS];
    for (int i = 0; i < WAITERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, shutdown_waiter, &w), 0);
    for (int i = 0; i < WAITERS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    ASSERT_NO_FAILURE(&rec);
    assert_int_equal(atomic_load(&p.finished), JOBS);
    for (int i = 0; i < JOBS; i++)
        weft_future_release(fs[i]);
    weft_executor_free(ex);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

static void test_executor_free_with_queued_jobs_completes_them(void **state)
{
    (void)state;
    enum { JOBS = 10 };
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(1, 0);
    probe_t p;
    probe_init(&p);
    p.sleep_ms = 1;
    weft_future_t *fs[JOBS];
    submit_all(ex, loop, probe_fn, &p, fs, JOBS);
    weft_executor_free(ex);
    assert_int_equal(atomic_load(&p.finished), JOBS);
    for (int i = 0; i < JOBS; i++) {
        void *value = NULL;
        assert_int_equal(weft_future_result(fs[i], &value), 0);
        assert_ptr_equal(value, &p);
        weft_future_release(fs[i]);
    }
    ASSERT_NO_FAILURE(&p.rec);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

/* ---- resource failures -------------------------------------------------------------- */

/* run_in_executor allocates the future, then the job: fail each in turn,
 * then let it through.  Nothing may leak (LSan) and *out stays untouched. */
static void test_executor_run_in_executor_out_of_memory_is_enomem(void **state)
{
    (void)state;
    weft_executor_t *ex = new_executor(1, 0);
    for (long n = 1;; n++) {
        in_loop_t c;
        memset(&c, 0, sizeof c);
        c.loop = new_loop();
        c.ex = ex;
        c.fn = code_fn;
        c.f = SENTINEL;
        c.test_thread = pthread_self();
        check_rec_init(&c.rec);
        assert_int_equal(weft_loop_call_soon(c.loop, start_only, &c, NULL), 0);
        weft__alloc_fail_nth(n);
        assert_int_equal(weft_loop_stop(c.loop), 0);
        assert_int_equal(weft_loop_run_forever(c.loop), 0);
        weft__alloc_fail_nth(0);
        if (c.rc == 0) {
            assert_true(n >= 3);
            assert_int_equal(weft_loop_run_until_complete(c.loop, c.f), 0);
            finish_in_loop(&c);
            break;
        }
        assert_int_equal(c.rc, -ENOMEM);
        assert_ptr_equal(c.f, SENTINEL);
        weft_loop_free(c.loop);
    }
    weft_executor_free(ex);
}

static void test_executor_submit_out_of_memory_is_enomem_and_keeps_no_reference(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(1, 0);
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    weft__alloc_fail_nth(1);
    assert_int_equal(weft__executor_submit(ex, code_fn, NULL, f), -ENOMEM);
    weft__alloc_fail_nth(0);
    assert_false(weft_future_done(f));
    assert_int_equal(weft__executor_thread_count(ex), 0);
    weft_future_release(f); /* the last reference: LSan proves it */
    weft_executor_free(ex);
    weft_loop_free(loop);
}

static int fail_spawn(void *arg)
{
    (void)arg;
    return EAGAIN;
}

static void test_executor_thread_creation_failure_without_threads_is_eagain(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(4, 0);
    probe_t p;
    probe_init(&p);
    weft_future_t *f = NULL;
    assert_int_equal(weft_future_new(loop, &f), 0);
    weft__executor_set_spawn_hook(fail_spawn, NULL);
    assert_int_equal(weft__executor_submit(ex, probe_fn, &p, f), -EAGAIN);
    weft__executor_set_spawn_hook(NULL, NULL);
    assert_false(weft_future_done(f));
    assert_int_equal(weft__executor_thread_count(ex), 0);
    /* Nothing stayed queued: the next submission runs alone. */
    assert_int_equal(weft__executor_submit(ex, probe_fn, &p, f), 0);
    wait_done(f);
    assert_int_equal(atomic_load(&p.finished), 1);
    weft_future_release(f);
    weft_executor_free(ex);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

static void test_executor_thread_creation_failure_with_a_thread_queues_the_job(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(4, 0);
    probe_t p;
    probe_init(&p);
    p.use_gate = true;
    weft_future_t *f1 = submit(ex, loop, probe_fn, &p);
    assert_true(POLL_UNTIL(atomic_load(&p.started) == 1));
    capture_log();
    weft__executor_set_spawn_hook(fail_spawn, NULL);
    weft_future_t *f2 = submit(ex, loop, probe_fn, &p); /* 0: the busy thread takes it later */
    weft__executor_set_spawn_hook(NULL, NULL);
    restore_log();
    assert_int_equal(atomic_load(&log_errors), 0);
    assert_int_equal(weft__executor_thread_count(ex), 1);
    gate_open(&p.gate);
    wait_done(f1);
    wait_done(f2);
    assert_int_equal(weft_future_result(f2, NULL), 0);
    assert_int_equal(atomic_load(&p.finished), 2);
    weft_future_release(f1);
    weft_future_release(f2);
    weft_executor_free(ex);
    ASSERT_NO_FAILURE(&p.rec);
    gate_destroy(&p.gate);
    weft_loop_free(loop);
}

/* The hook runs while the failing submitter has counted its thread but not
 * created it: a second submission then queues behind it without starting a
 * thread (the cap is reached), and is orphaned when creation fails. */
typedef struct orphan {
    weft_executor_t *ex;
    weft_future_t *second;
    int second_rc;
} orphan_t;

static int submit_then_fail(void *arg)
{
    orphan_t *o = arg;
    weft__executor_set_spawn_hook(fail_spawn, NULL); /* not re-entered */
    o->second_rc = weft__executor_submit(o->ex, code_fn, NULL, o->second);
    return EAGAIN;
}

static void test_executor_jobs_orphaned_by_a_failed_creation_fail_their_futures(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    orphan_t o = {.ex = new_executor(1, 0), .second_rc = 1};
    weft_future_t *first = NULL;
    assert_int_equal(weft_future_new(loop, &first), 0);
    assert_int_equal(weft_future_new(loop, &o.second), 0);
    weft__executor_set_spawn_hook(submit_then_fail, &o);
    assert_int_equal(weft__executor_submit(o.ex, code_fn, NULL, first), -EAGAIN);
    weft__executor_set_spawn_hook(NULL, NULL);
    assert_int_equal(o.second_rc, 0);
    assert_false(weft_future_done(first));
    assert_int_equal(weft_future_error(o.second), -EAGAIN);
    assert_int_equal(weft__executor_thread_count(o.ex), 0);
    weft_future_release(first);
    weft_future_release(o.second);
    weft_executor_free(o.ex);
    weft_loop_free(loop);
}

/* ---- jobs submitting jobs, signals ---------------------------------------------------------- */

typedef struct chain {
    check_rec_t rec;
    weft_executor_t *ex;
    weft_loop_t *loop;
    weft_future_t *inner; /* made and submitted by the outer job */
} chain_t;

static int outer_fn(void *arg, void **result)
{
    chain_t *c = arg;
    weft_future_t *out = SENTINEL;
    /* No loop runs on a pool thread. */
    CHECK(&c->rec, weft_run_in_executor(c->ex, code_fn, NULL, &out) == -EPERM);
    CHECK(&c->rec, weft_future_new(c->loop, &c->inner) == 0);
    CHECK(&c->rec, weft__executor_submit(c->ex, code_fn, (void *)(intptr_t)0, c->inner) == 0);
    *result = c;
    return 0;
}

static void test_executor_job_can_submit_another_job(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    chain_t c = {.ex = new_executor(1, 0), .loop = loop};
    check_rec_init(&c.rec);
    weft_future_t *outer = submit(c.ex, loop, outer_fn, &c);
    wait_done(outer);
    ASSERT_NO_FAILURE(&c.rec);
    assert_non_null(c.inner);
    wait_done(c.inner); /* the single thread got to it after the outer job */
    void *value = NULL;
    assert_int_equal(weft_future_result(c.inner, &value), 0);
    assert_ptr_equal(value, (void *)(uintptr_t)42);
    weft_future_release(outer);
    weft_future_release(c.inner);
    weft_executor_free(c.ex);
    weft_loop_free(loop);
}

typedef struct sigprobe {
    check_rec_t rec;
} sigprobe_t;

static int sigmask_fn(void *arg, void **result)
{
    sigprobe_t *s = arg;
    (void)result;
    sigset_t cur;
    CHECK(&s->rec, pthread_sigmask(SIG_BLOCK, NULL, &cur) == 0);
    CHECK(&s->rec, sigismember(&cur, SIGINT) == 1);
    CHECK(&s->rec, sigismember(&cur, SIGTERM) == 1);
    CHECK(&s->rec, sigismember(&cur, SIGCHLD) == 1);
    CHECK(&s->rec, sigismember(&cur, SIGUSR1) == 1);
    CHECK(&s->rec, sigismember(&cur, SIGSEGV) == 0);
    return 0;
}

static void test_executor_pool_threads_block_async_signals(void **state)
{
    (void)state;
    weft_loop_t *loop = new_loop();
    weft_executor_t *ex = new_executor(1, 0);
    sigprobe_t s;
    check_rec_init(&s.rec);
    weft_future_t *f = submit(ex, loop, sigmask_fn, &s);
    wait_done(f);
    assert_int_equal(weft_future_result(f, NULL), 0);
    ASSERT_NO_FAILURE(&s.rec);
    /* The submitter's own mask is untouched. */
    sigset_t cur;
    assert_int_equal(pthread_sigmask(SIG_BLOCK, NULL, &cur), 0);
    assert_int_equal(sigismember(&cur, SIGUSR1), 0);
    weft_future_release(f);
    weft_executor_free(ex);
    weft_loop_free(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_executor_new_rejects_null_out_and_negative_keepalive),
        cmocka_unit_test(test_executor_new_out_of_memory_is_enomem),
        cmocka_unit_test(test_executor_null_arguments_are_einval),
        cmocka_unit_test(test_executor_run_in_executor_propagates_the_result),
        cmocka_unit_test(test_executor_run_in_executor_propagates_the_error_code),
        cmocka_unit_test(test_executor_positive_return_fails_with_einval_and_logs),
        cmocka_unit_test(test_executor_fn_returning_ecanceled_cancels_the_future),
        cmocka_unit_test(test_executor_future_is_bound_to_the_running_loop),
        cmocka_unit_test(test_executor_run_in_executor_outside_a_loop_is_eperm),
        cmocka_unit_test(test_executor_default_executor_runs_the_call),
        cmocka_unit_test(test_executor_default_executor_refuses_shutdown_and_free),
        cmocka_unit_test(test_executor_starts_threads_on_demand_up_to_the_cap),
        cmocka_unit_test(test_executor_reuses_an_idle_thread_instead_of_starting_one),
        cmocka_unit_test(test_executor_idle_threads_exit_after_the_keepalive),
        cmocka_unit_test(test_executor_short_calls_do_not_grow_the_pool_past_the_cpus),
        cmocka_unit_test(test_executor_blocked_jobs_get_a_thread_each),
        cmocka_unit_test(test_executor_sleeping_calls_run_in_parallel),
        cmocka_unit_test(test_executor_job_waiting_for_a_later_job_completes),
        cmocka_unit_test(test_executor_cancel_before_start_skips_the_call),
        cmocka_unit_test(test_executor_cancel_while_running_discards_the_result),
        cmocka_unit_test(test_executor_submit_after_shutdown_is_eclosed),
        cmocka_unit_test(test_executor_shutdown_wait_runs_queued_work_and_joins),
        cmocka_unit_test(test_executor_shutdown_twice_is_zero),
        cmocka_unit_test(test_executor_shutdown_wait_inside_a_loop_callback_is_eperm),
        cmocka_unit_test(test_executor_shutdown_wait_and_free_on_its_own_pool_thread_are_refused),
        cmocka_unit_test(test_executor_concurrent_shutdown_waits_all_return_after_the_join),
        cmocka_unit_test(test_executor_free_with_queued_jobs_completes_them),
        cmocka_unit_test(test_executor_run_in_executor_out_of_memory_is_enomem),
        cmocka_unit_test(test_executor_submit_out_of_memory_is_enomem_and_keeps_no_reference),
        cmocka_unit_test(test_executor_thread_creation_failure_without_threads_is_eagain),
        cmocka_unit_test(test_executor_thread_creation_failure_with_a_thread_queues_the_job),
        cmocka_unit_test(test_executor_jobs_orphaned_by_a_failed_creation_fail_their_futures),
        cmocka_unit_test(test_executor_job_can_submit_another_job),
        cmocka_unit_test(test_executor_pool_threads_block_async_signals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
