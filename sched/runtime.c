/* weft — the runtime: starting workers, submitting work from any thread,
 * shutting down without losing done callbacks, and weft_run (asyncio.run).
 *
 * Shutdown order, and why:
 *   1. `closing`: new submissions and spawns are refused (WEFT_ECLOSED);
 *   2. every unfinished task gets a cancellation request, and we wait (up to
 *      the timeout) for all of them to finish while the workers still run,
 *      so their done callbacks run on their loops as usual;
 *   3. workers stop: each drains its loop's ready callbacks once more, then
 *      exits and is joined;
 *   4. loops close: what was still queued is reported to the exception
 *      handler, never dropped silently;
 *   5. tasks that ignored cancellation past the deadline are abandoned: no
 *      queue refers to them any more (step 4), their stacks are freed and
 *      their futures end cancelled (WEFT_ETIMEDOUT is returned).
 */
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "sched/common.h"
#include "sched/executor.h"
#include "sched/worker.h"

static void free_workers(weft_runtime_t *rt)
{
    for (unsigned i = 0; i < rt->n; i++) {
        weft_worker_t *w = rt->workers[i];
        if (w == NULL)
            continue;
        if (w->loop != NULL)
            weft_loop_free(w->loop);
        weft__free(w);
    }
    weft__free(rt->workers);
    weft__free(rt->idle);
}

static void rt_free_memory(weft_runtime_t *rt)
{
    weft_executor_free(rt->own_executor);
    free_workers(rt);
    weft__inject_destroy(&rt->inject);
    weft__task_set_destroy(&rt->tasks);
    pthread_mutex_destroy(&rt->idle_lock);
    pthread_mutex_destroy(&rt->shutdown_lock);
    weft__free(rt);
}

int weft_runtime_new(const weft_config_t *cfg, weft_runtime_t **out)
{
    static const weft_config_t defaults = {0};
    if (out == NULL)
        return -EINVAL;
    if (cfg == NULL)
        cfg = &defaults;
    if (cfg->stack_size > WEFT__STACK_MAX_SIZE || cfg->slow_callback_ns < 0 ||
        cfg->executor_keepalive_ns < 0 || cfg->workers > WEFT_MAX_WORKERS ||
        cfg->idle_spin_ns > WEFT__SPIN_MAX_NS)
        return -EINVAL;
    unsigned n = cfg->workers;
    if (n == 0) {
        n = weft__ncpu();
        if (n > WEFT_MAX_WORKERS)
            n = WEFT_MAX_WORKERS;
    }
    /* Aligned: the task set's shards are (task.h). */
    weft_runtime_t *rt = weft__alloc_aligned(alignof(weft_runtime_t), sizeof *rt);
    if (rt == NULL)
        return -ENOMEM;
    memset(rt, 0, sizeof *rt);
    rt->n = n;
    rt->stack_size = cfg->stack_size;
    rt->debug = cfg->debug || weft_debug_env();
    rt->slow_ns = cfg->slow_callback_ns;
    weft__inject_init(&rt->inject);
    weft__task_set_init(&rt->tasks, n);
    pthread_mutex_init(&rt->idle_lock, NULL);
    pthread_mutex_init(&rt->shutdown_lock, NULL);
    atomic_init(&rt->n_searching, 0);
    atomic_init(&rt->n_idle, 0);
    atomic_init(&rt->n_spinning, 0);
    atomic_init(&rt->closing, false);
    atomic_init(&rt->entering, 0);
    atomic_init(&rt->stopping, false);
    atomic_init(&rt->factory, NULL);
    atomic_init(&rt->factory_arg, NULL);

    /* Threads start on demand, so an unused executor costs no thread. */
    int rc =
        weft_executor_new(cfg->executor_max_threads, cfg->executor_keepalive_ns, &rt->own_executor);
    if (rc != 0) {
        rt->own_executor = NULL;
        goto fail;
    }
    atomic_init(&rt->executor, rt->own_executor);
    rt->workers = weft__calloc(n, sizeof *rt->workers);
    rt->idle = weft__calloc(n, sizeof *rt->idle);
    if (rt->workers == NULL || rt->idle == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    for (unsigned i = 0; i < n; i++) {
        weft_worker_t *w = weft__alloc_aligned(WEFT_CACHELINE, sizeof *w);
        if (w == NULL) {
            rc = -ENOMEM;
            goto fail;
        }
        memset(w, 0, sizeof *w);
        rt->workers[i] = w;
        w->rt = rt;
        w->index = i;
        w->rng = 0x9E3779B97F4A7C15ull * (i + 1); /* any non-zero seed */
        weft__runq_init(&w->runq);
        rc = weft_loop_new(&w->loop);
        if (rc != 0)
            goto fail;
        w->loop->worker = w;
        if (cfg->idle_spin_ns != 0) /* else the default, from weft_loop_new */
            w->loop->spin_ns = cfg->idle_spin_ns < 0 ? 0 : cfg->idle_spin_ns;
        weft__loop_bias_begin(w->loop);
        weft_loop_set_debug(w->loop, rt->debug);
        weft_loop_set_slow_callback_duration(w->loop, rt->slow_ns);
    }
    /* The header promises running workers on return: mark every loop
     * running before its thread starts, so that nobody can run one of
     * them from the outside meanwhile (weft_loop_run_forever refuses a
     * running loop); each worker sets the loop's owner when it starts. */
    for (unsigned i = 0; i < n; i++)
        atomic_store_explicit(&rt->workers[i]->loop->running, true, memory_order_release);
    for (unsigned i = 0; i < n; i++) {
        weft_worker_t *w = rt->workers[i];
        int err = pthread_create(&w->thread, NULL, weft__worker_main, w);
        if (err != 0) {
            rc = -err;
            for (unsigned j = i; j < n; j++)
                atomic_store_explicit(&rt->workers[j]->loop->running, false, memory_order_release);
            weft__rt_stop_workers(rt);
            goto fail;
        }
        w->started = true;
    }
    *out = rt;
    return 0;

fail:
    rt_free_memory(rt);
    return rc;
}

unsigned weft_runtime_workers(const weft_runtime_t *rt)
{
    return rt != NULL ? rt->n : 0;
}

weft_loop_t *weft_runtime_loop(weft_runtime_t *rt, unsigned index)
{
    if (rt == NULL || index >= rt->n)
        return NULL;
    return rt->workers[index]->loop;
}

weft_runtime_t *weft_get_running_runtime(void)
{
    weft_worker_t *w = weft__current_worker();
    return w != NULL ? w->rt : NULL;
}

int weft_runtime_worker_stats(const weft_runtime_t *rt, unsigned index, weft_worker_stats_t *out)
{
    if (rt == NULL || out == NULL || index >= rt->n)
        return -EINVAL;
    const weft_worker_t *w = rt->workers[index];
    out->tasks_run = atomic_load_explicit(&w->stats.tasks_run, memory_order_relaxed);
    out->steals = atomic_load_explicit(&w->stats.steals, memory_order_relaxed);
    out->stolen_tasks = atomic_load_explicit(&w->stats.stolen_tasks, memory_order_relaxed);
    out->parks = atomic_load_explicit(&w->stats.parks, memory_order_relaxed);
    out->inject_pops = atomic_load_explicit(&w->stats.inject_pops, memory_order_relaxed);
    out->lifo_runs = atomic_load_explicit(&w->stats.lifo_runs, memory_order_relaxed);
    weft_loop_stats_t ls;
    weft_loop_get_stats(w->loop, &ls);
    out->eventfd_writes = ls.eventfd_writes;
    return 0;
}

int weft_runtime_set_task_factory(weft_runtime_t *rt, weft_task_factory_fn fn, void *factory_arg)
{
    if (rt == NULL)
        return -EINVAL;
    /* The argument first: a spawner that sees the new factory (acquire)
     * also sees its argument. */
    atomic_store_explicit(&rt->factory_arg, factory_arg, memory_order_release);
    atomic_store_explicit(&rt->factory, fn, memory_order_release);
    return 0;
}

weft_executor_t *weft__runtime_default_executor(weft_runtime_t *rt)
{
    return rt != NULL ? atomic_load_explicit(&rt->executor, memory_order_acquire) : NULL;
}

int weft_runtime_set_default_executor(weft_runtime_t *rt, weft_executor_t *ex)
{
    if (rt == NULL)
        return -EINVAL;
    atomic_store_explicit(&rt->executor, ex != NULL ? ex : rt->own_executor, memory_order_release);
    return 0;
}

bool weft__rt_enter(weft_runtime_t *rt)
{
    /* seq_cst on both sides (here and in shutdown): either shutdown sees
     * us entered and waits, or we see `closing` and back out. */
    atomic_fetch_add_explicit(&rt->entering, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&rt->closing, memory_order_seq_cst)) {
        weft__rt_leave(rt);
        return false;
    }
    return true;
}

void weft__rt_leave(weft_runtime_t *rt)
{
    atomic_fetch_sub_explicit(&rt->entering, 1, memory_order_release);
}

int weft_runtime_submit(weft_runtime_t *rt, weft_fn fn, void *arg, weft_future_t **out)
{
    if (rt == NULL || fn == NULL || out == NULL)
        return -EINVAL;
    if (!weft__rt_enter(rt))
        return WEFT_ECLOSED;
    /* Done callbacks of the task run on a worker's loop; spread them. */
    static atomic_uint rr;
    unsigned i = atomic_fetch_add_explicit(&rr, 1, memory_order_relaxed) % rt->n;
    weft_task_t *t;
    int rc = weft__task_new(fn, arg, NULL, rt, NULL, rt->workers[i]->loop, false, &t);
    if (rc == 0) {
        weft_future_retain(&t->fut);
        *out = &t->fut;
        weft__task_enqueue(t, false);
    }
    weft__rt_leave(rt);
    return rc;
}

int weft_runtime_shutdown(weft_runtime_t *rt, int64_t timeout_ns)
{
    if (rt == NULL)
        return -EINVAL;
    weft_worker_t *self = weft__current_worker();
    if (self != NULL && self->rt == rt)
        return -EPERM; /* a worker cannot join itself */
    pthread_mutex_lock(&rt->shutdown_lock);
    if (rt->shut_down) {
        pthread_mutex_unlock(&rt->shutdown_lock);
        return 0;
    }
    atomic_store_explicit(&rt->closing, true, memory_order_seq_cst);
    int64_t deadline = timeout_ns < 0 ? -1 : weft__now_ns() + timeout_ns;
    /* Foreign threads that got past the check finish registering and
     * queueing first (a few instructions; they never block in between). */
    while (atomic_load_explicit(&rt->entering, memory_order_acquire) != 0)
        sched_yield();
    /* Spawns from tasks and callbacks are refused from here on, or
     * registered in time to be cancelled. */
    weft__task_set_close(&rt->tasks, "runtime shutdown");
    /* Its WEFT_ETIMEDOUT alone means nothing: a task that completed its
     * future may not have left the set yet.  Only abandoned tasks count. */
    (void)weft__task_set_wait_empty(&rt->tasks, deadline);
    /* Blocking calls still running finish first (they cannot be
     * interrupted); their results go to futures whose awaiters are gone. */
    weft_executor_shutdown(rt->own_executor, true);
    weft__rt_stop_workers(rt);
    for (unsigned i = 0; i < rt->n; i++)
        weft_loop_close(rt->workers[i]->loop);
    /* Whatever is left in the shared queue is abandoned below. */
    while (weft__inject_pop(&rt->inject) != NULL)
        ;
    size_t abandoned = weft__task_set_abandon(&rt->tasks);
    if (abandoned != 0)
        weft__log(WEFT_LOG_WARN, "runtime shutdown abandoned %zu task(s) that did not finish",
                  abandoned);
    rt->shut_down = true;
    pthread_mutex_unlock(&rt->shutdown_lock);
    return abandoned != 0 ? WEFT_ETIMEDOUT : 0;
}

void weft_runtime_free(weft_runtime_t *rt)
{
    if (rt == NULL)
        return;
    if (weft_runtime_shutdown(rt, -1) == -EPERM) {
        weft__log(WEFT_LOG_ERROR, "weft_runtime_free called on one of its own workers; ignored");
        return;
    }
    rt_free_memory(rt);
}

int weft_run(const weft_config_t *cfg, weft_fn main, void *arg, void **result)
{
    if (main == NULL)
        return -EINVAL;
    if (weft_get_running_loop() != NULL)
        return -EPERM; /* asyncio.run cannot be called from a running loop */
    weft_runtime_t *rt;
    int rc = weft_runtime_new(cfg, &rt);
    if (rc != 0)
        return rc;
    weft_future_t *f;
    rc = weft_runtime_submit(rt, main, arg, &f);
    if (rc == 0) {
        weft_future_wait(f, -1);
        void *v = NULL;
        rc = weft_future_result(f, &v);
        if (rc == 0 && result != NULL)
            *result = v;
        weft_future_release(f);
    }
    weft_runtime_free(rt);
    return rc;
}
