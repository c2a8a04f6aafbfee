/* Tests for TaskGroup (include/weft/cancel.h): waiting for every child,
 * the first failure aborting the group and the parent's body, the list of
 * errors, outside cancellation of the parent, spawning into a group that
 * is finishing, and every documented return code.
 *
 * Nothing here calls a cmocka assert inside a task: tasks CHECK into
 * g_rec and the test thread asserts after the runtime returned the
 * driving task's outcome (STYLE.md).  Children wait on plain futures the
 * test completes, so which child fails when is chosen by the test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "test/support/check.h"
#include "test/support/taskrun.h"
#include "weft.h"

static check_rec_t g_rec;

static int setup(void **state)
{
    (void)state;
    check_rec_init(&g_rec);
    return 0;
}

#define TEST(fn) cmocka_unit_test_setup(fn, setup)

static int tag_a;

static weft_future_t *new_future(void)
{
    weft_future_t *f = NULL;
    CHECK(&g_rec, weft_future_new(NULL, &f) == 0);
    return f;
}

/* A child: waits for `go` (NULL: sleeps "forever"), then ends with `code`.
 * Cancelled meanwhile it ends cancelled — unless `swallow` (then it
 * returns 0) or `fail_anyway` (then it returns `code` all the same). */
typedef struct kid {
    weft_future_t *go;
    int code;
    bool swallow, fail_anyway;
    weft_future_t *release; /* non-NULL: awaited after a cancellation */
    int wait_rc;
    atomic_int finished;
    weft_task_t *task;
    tr_order_t *order;
    int step;
    weft_future_t *started;
} kid_t;

static int kid_body(void *arg, void **result)
{
    kid_t *k = arg;
    CHECK(&g_rec, tr_signal(k->started) == 0);
    k->wait_rc = k->go != NULL ? weft_await(k->go, NULL) : weft_sleep(100 * SEC);
    if (k->wait_rc == WEFT_ECANCELED && k->release != NULL) {
        weft_future_t *shielded = NULL;
        CHECK(&g_rec, weft_shield(k->release, &shielded) == 0);
        CHECK(&g_rec, weft_await(shielded, NULL) == 0);
        weft_future_release(shielded);
    }
    if (k->order != NULL)
        tr_order_add(&g_rec, k->order, k->step);
    atomic_store(&k->finished, 1);
    *result = &tag_a;
    if (k->wait_rc == WEFT_ECANCELED && !k->fail_anyway)
        return k->swallow ? 0 : WEFT_ECANCELED;
    return k->code;
}

/* Spawn k into g and wait until it runs: a child cancelled before its
 * first step would never run its body at all. */
static void kid_spawn(weft_taskgroup_t *g, kid_t *k)
{
    atomic_init(&k->finished, 0);
    k->wait_rc = 99;
    k->started = new_future();
    CHECK(&g_rec, weft_taskgroup_spawn(g, kid_body, k, NULL, &k->task) == 0);
    CHECK(&g_rec, weft_await(k->started, NULL) == 0);
    weft_future_release(k->started);
    k->started = NULL;
}

/* ========================================================================== */

/* Every child is waited for, including one spawned into the group by
 * another child while the parent already waits. */
typedef struct spawner {
    weft_taskgroup_t *g;
    kid_t *grandchild;
} spawner_t;

static int spawner_body(void *arg, void **result)
{
    (void)result;
    spawner_t *s = arg;
    CHECK(&g_rec, weft_sleep(20 * MS) == 0);
    kid_spawn(s->g, s->grandchild);
    return 0;
}

static int all_children_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_taskgroup_t *g = NULL;
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    weft_future_t *go = new_future();
    CHECK(&g_rec, weft_future_set_result(go, NULL) == 0);
    kid_t kids[4] = {{.go = go}, {.go = go}, {.go = go}, {.go = go}};
    for (int i = 0; i < 3; i++)
        kid_spawn(g, &kids[i]);
    spawner_t s = {g, &kids[3]};
    weft_task_t *st = NULL;
    CHECK(&g_rec, weft_taskgroup_spawn(g, spawner_body, &s, NULL, &st) == 0);
    CHECK(&g_rec, weft_taskgroup_wait(g) == 0);
    CHECK(&g_rec, weft_future_done(weft_task_future(st)));
    for (int i = 0; i < 4; i++) {
        CHECK(&g_rec, atomic_load(&kids[i].finished) == 1);
        void *v = NULL;
        CHECK(&g_rec, weft_future_result(weft_task_future(kids[i].task), &v) == 0);
        CHECK(&g_rec, v == &tag_a);
        weft_task_release(kids[i].task);
    }
    CHECK(&g_rec, weft_taskgroup_error_count(g) == 0);
    CHECK(&g_rec, weft_task_cancelling(weft_current_task()) == 0);
    weft_task_release(st);
    weft_taskgroup_free(g);
    weft_future_release(go);
    return 0;
}

static void test_taskgroup_waits_for_every_child(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, all_children_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* The first failure cancels the other children and the parent's body;
 * exit lists the failure, withdraws the request it sent the parent, and
 * a child that swallowed its cancellation is no error. */
static int first_failure_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *self = weft_current_task();
    weft_taskgroup_t *g = NULL;
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    weft_future_t *go = new_future();
    kid_t failing = {.go = go, .code = -EIO};
    kid_t sleeping = {.go = NULL};
    kid_t swallowing = {.go = NULL, .swallow = true};
    kid_spawn(g, &failing);
    kid_spawn(g, &sleeping);
    kid_spawn(g, &swallowing);
    CHECK(&g_rec, weft_future_set_result(go, NULL) == 0);
    int rc = weft_sleep(100 * SEC); /* the body, stopped by the group */
    CHECK(&g_rec, rc == WEFT_ECANCELED);
    CHECK(&g_rec, weft_task_cancelling(self) == 1);
    /* Aborting: no new children. */
    CHECK(&g_rec, weft_taskgroup_spawn(g, kid_body, &failing, NULL, NULL) == WEFT_ECLOSED);
    CHECK(&g_rec, weft_taskgroup_exit(g, rc) == WEFT_EGROUP);
    CHECK(&g_rec, weft_task_cancelling(self) == 0);
    CHECK(&g_rec, weft_yield() == 0);
    CHECK(&g_rec, weft_taskgroup_error_count(g) == 1);
    weft_task_t *t = NULL;
    int code = 0;
    const char *msg = "x";
    CHECK(&g_rec, weft_taskgroup_error(g, 0, &t, &code, &msg) == 0);
    CHECK(&g_rec, t == failing.task && code == -EIO && msg == NULL);
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(sleeping.task)));
    CHECK(&g_rec, weft_future_result(weft_task_future(swallowing.task), NULL) == 0);
    CHECK(&g_rec, swallowing.wait_rc == WEFT_ECANCELED);
    /* Finished: no new children either. */
    CHECK(&g_rec, weft_taskgroup_spawn(g, kid_body, &failing, NULL, NULL) == WEFT_ECLOSED);
    weft_task_release(failing.task);
    weft_task_release(sleeping.task);
    weft_task_release(swallowing.task);
    weft_taskgroup_free(g);
    weft_future_release(go);
    return 0;
}

static void test_taskgroup_first_failure_cancels_the_others_and_the_body(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, first_failure_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Two failures are both listed, in the order they happened. */
static int two_failures_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_taskgroup_t *g = NULL;
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    weft_future_t *go1 = new_future(), *go2 = new_future();
    kid_t a = {.go = go1, .code = -EIO};
    kid_t b = {.go = go2, .code = -EPIPE, .fail_anyway = true};
    kid_spawn(g, &a);
    kid_spawn(g, &b);
    CHECK(&g_rec, weft_future_set_result(go1, NULL) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(a.task), NULL) == -EIO);
    /* b may have been cancelled already, and go2 with it. */
    (void)weft_future_set_result(go2, NULL);
    int rc = weft_taskgroup_exit(g, 0);
    CHECK(&g_rec, rc == WEFT_EGROUP);
    CHECK(&g_rec, weft_taskgroup_error_count(g) == 2);
    weft_task_t *t0 = NULL, *t1 = NULL;
    int c0 = 0, c1 = 0;
    CHECK(&g_rec, weft_taskgroup_error(g, 0, &t0, &c0, NULL) == 0);
    CHECK(&g_rec, weft_taskgroup_error(g, 1, &t1, &c1, NULL) == 0);
    CHECK(&g_rec, t0 == a.task && c0 == -EIO);
    CHECK(&g_rec, t1 == b.task && c1 == -EPIPE);
    CHECK(&g_rec, weft_taskgroup_error(g, 2, &t0, &c0, NULL) == -EINVAL);
    /* The group cancelled the parent while it was in exit; withdrawn. */
    CHECK(&g_rec, weft_task_cancelling(weft_current_task()) == 0);
    CHECK(&g_rec, weft_yield() == 0);
    weft_task_release(a.task);
    weft_task_release(b.task);
    weft_taskgroup_free(g);
    weft_future_release(go1);
    weft_future_release(go2);
    return 0;
}

static void test_taskgroup_lists_every_failure(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, two_failures_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* ========================================================================== */
/* Outside cancellation of the parent                                          */
/* ========================================================================== */

typedef struct parent_probe {
    weft_future_t *in_body; /* the body reached its suspension point */
    weft_future_t *release; /* lets the slow child finish its cleanup */
    kid_t slow, plain;
    tr_order_t order;
    int body_rc, exit_rc, cancelling_after, yield_after;
    bool cancel_in_body;
} parent_probe_t;

static int outside_parent_body(void *arg, void **result)
{
    (void)result;
    parent_probe_t *p = arg;
    weft_taskgroup_t *g = NULL;
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    p->slow = (kid_t){.go = NULL, .release = p->release, .order = &p->order, .step = 1};
    p->plain = (kid_t){.go = NULL};
    kid_spawn(g, &p->slow);
    kid_spawn(g, &p->plain);
    CHECK(&g_rec, tr_signal(p->in_body) == 0);
    p->body_rc = p->cancel_in_body ? weft_sleep(100 * SEC) : 0;
    p->exit_rc = weft_taskgroup_exit(g, p->body_rc);
    tr_order_add(&g_rec, &p->order, 2);
    p->cancelling_after = weft_task_cancelling(weft_current_task());
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(p->plain.task)));
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(p->slow.task)));
    weft_task_release(p->slow.task);
    weft_task_release(p->plain.task);
    weft_taskgroup_free(g);
    p->yield_after = weft_yield();
    return p->exit_rc;
}

static int outside_driver(void *arg, void **result)
{
    (void)result;
    parent_probe_t *p = arg;
    p->in_body = new_future();
    p->release = new_future();
    tr_order_init(&p->order);
    weft_task_t *parent = NULL;
    CHECK(&g_rec, weft_spawn(outside_parent_body, p, NULL, &parent) == 0);
    CHECK(&g_rec, weft_await(p->in_body, NULL) == 0);
    CHECK(&g_rec, weft_task_cancel(parent, "from outside") == 1);
    /* The slow child holds the parent in exit until released. */
    CHECK(&g_rec, weft_sleep(20 * MS) == 0);
    CHECK(&g_rec, !weft_future_done(weft_task_future(parent)));
    CHECK(&g_rec, weft_future_set_result(p->release, NULL) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(parent), NULL) == WEFT_ECANCELED);
    CHECK(&g_rec, tr_streq(weft_future_message(weft_task_future(parent)), "from outside"));
    weft_task_release(parent);
    weft_future_release(p->in_body);
    weft_future_release(p->release);
    return 0;
}

static void test_taskgroup_outside_cancellation_is_raised_after_the_children(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    for (int in_body = 0; in_body < 2; in_body++) {
        parent_probe_t p = {.cancel_in_body = in_body};
        assert_int_equal(tr_run_in(rt, outside_driver, &p, NULL), 0);
        ASSERT_NO_FAILURE(&g_rec);
        if (in_body)
            assert_int_equal(p.body_rc, WEFT_ECANCELED);
        assert_int_equal(p.exit_rc, WEFT_ECANCELED);
        /* The outside request stays counted and is not delivered again. */
        assert_int_equal(p.cancelling_after, 1);
        assert_int_equal(p.yield_after, 0);
        const int want[] = {1, 2}; /* the child's cleanup, then exit returns */
        tr_order_check(&p.order, want, 2);
    }
    tr_free_rt(rt);
}

/* Cancel during a failing TaskGroup: a child fails (the group sends the
 * parent its request) and the parent is also cancelled from outside.  The
 * errors win (WEFT_EGROUP), and the outside request, still counted, is
 * delivered again at the parent's next suspension point. */
typedef struct failing_probe {
    weft_future_t *in_body;
    weft_future_t *go;
    weft_future_t *release; /* holds the parent in exit until the driver is done */
    kid_t failing, sleeping;
    int body_rc, exit_rc, cancelling_after, yield_after, yield_again;
    bool cancel_first;
} failing_probe_t;

static int failing_parent_body(void *arg, void **result)
{
    (void)result;
    failing_probe_t *p = arg;
    weft_taskgroup_t *g = NULL;
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    p->failing = (kid_t){.go = p->go, .code = -EIO, .fail_anyway = true};
    p->sleeping = (kid_t){.go = NULL, .release = p->release};
    kid_spawn(g, &p->failing);
    kid_spawn(g, &p->sleeping);
    CHECK(&g_rec, tr_signal(p->in_body) == 0);
    p->body_rc = weft_sleep(100 * SEC);
    p->exit_rc = weft_taskgroup_exit(g, p->body_rc);
    p->cancelling_after = weft_task_cancelling(weft_current_task());
    CHECK(&g_rec, weft_taskgroup_error_count(g) == 1);
    weft_task_release(p->failing.task);
    weft_task_release(p->sleeping.task);
    weft_taskgroup_free(g);
    p->yield_after = weft_yield();
    p->yield_again = weft_yield();
    return 0;
}

static int failing_driver(void *arg, void **result)
{
    (void)result;
    failing_probe_t *p = arg;
    p->in_body = new_future();
    p->go = new_future();
    p->release = new_future();
    weft_task_t *parent = NULL;
    CHECK(&g_rec, weft_spawn(failing_parent_body, p, NULL, &parent) == 0);
    CHECK(&g_rec, weft_await(p->in_body, NULL) == 0);
    if (p->cancel_first) {
        CHECK(&g_rec, weft_task_cancel(parent, "outside") == 1);
        CHECK(&g_rec, weft_future_set_result(p->go, NULL) == 0);
    } else {
        CHECK(&g_rec, weft_future_set_result(p->go, NULL) == 0);
        CHECK(&g_rec, weft_task_cancel(parent, "outside") == 1);
    }
    CHECK(&g_rec, weft_future_set_result(p->release, NULL) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(parent), NULL) == 0);
    weft_task_release(parent);
    weft_future_release(p->in_body);
    weft_future_release(p->go);
    weft_future_release(p->release);
    return 0;
}

static void test_taskgroup_cancel_during_a_failing_group(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    for (int round = 0; round < 20; round++) {
        failing_probe_t p = {.cancel_first = round % 2 == 1};
        assert_int_equal(tr_run_in(rt, failing_driver, &p, NULL), 0);
        ASSERT_NO_FAILURE(&g_rec);
        assert_int_equal(p.body_rc, WEFT_ECANCELED);
        assert_int_equal(p.exit_rc, WEFT_EGROUP);
        assert_int_equal(p.cancelling_after, 1);
        assert_int_equal(p.yield_after, WEFT_ECANCELED);
        assert_int_equal(p.yield_again, 0);
    }
    tr_free_rt(rt);
}

/* ========================================================================== */
/* The body's own status                                                       */
/* ========================================================================== */

static int body_error_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_taskgroup_t *g = NULL;
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    kid_t k = {.go = NULL};
    kid_spawn(g, &k);
    /* The body failed on its own: the children are cancelled and the
     * body's error is listed, with no task. */
    CHECK(&g_rec, weft_taskgroup_exit(g, -ENOENT) == WEFT_EGROUP);
    CHECK(&g_rec, weft_future_cancelled(weft_task_future(k.task)));
    CHECK(&g_rec, weft_taskgroup_error_count(g) == 1);
    weft_task_t *t = weft_current_task();
    int code = 0;
    CHECK(&g_rec, weft_taskgroup_error(g, 0, &t, &code, NULL) == 0);
    CHECK(&g_rec, t == NULL && code == -ENOENT);
    CHECK(&g_rec, weft_taskgroup_exit(g, 0) == WEFT_EINVALSTATE);
    CHECK(&g_rec, weft_task_cancelling(weft_current_task()) == 0);
    weft_task_release(k.task);
    weft_taskgroup_free(g);

    /* An empty group, and a group whose children all finished already. */
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    CHECK(&g_rec, weft_taskgroup_wait(g) == 0);
    CHECK(&g_rec, weft_taskgroup_spawn(g, kid_body, &k, NULL, NULL) == WEFT_ECLOSED);
    weft_taskgroup_free(g);
    return 0;
}

static void test_taskgroup_body_error_aborts_and_is_listed(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, body_error_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* An eager child that fails inside spawn is handled at once. */
static int fail_now_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    return -EBADF;
}

static int eager_failure_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_task_t *self = weft_current_task();
    weft_taskgroup_t *g = NULL;
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    weft_spawn_opts_t opts = {.eager = true, .name = "eager"};
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_taskgroup_spawn(g, fail_now_body, NULL, &opts, &t) == 0);
    CHECK(&g_rec, weft_future_done(weft_task_future(t)));
    CHECK(&g_rec, weft_taskgroup_error_count(g) == 1);
    CHECK(&g_rec, weft_task_cancelling(self) == 1);
    int rc = weft_yield();
    CHECK(&g_rec, rc == WEFT_ECANCELED);
    CHECK(&g_rec, weft_taskgroup_exit(g, rc) == WEFT_EGROUP);
    CHECK(&g_rec, weft_task_cancelling(self) == 0);
    const char *name = NULL;
    weft_task_t *et = NULL;
    CHECK(&g_rec, weft_taskgroup_error(g, 0, &et, NULL, NULL) == 0);
    name = weft_task_get_name(et);
    CHECK(&g_rec, tr_streq(name, "eager"));
    weft_task_release(t);
    weft_taskgroup_free(g);
    return 0;
}

static void test_taskgroup_eager_child_failing_inside_spawn(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, eager_failure_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* ========================================================================== */
/* Errors and lifetime                                                           */
/* ========================================================================== */

typedef struct other_exit {
    weft_taskgroup_t *g;
    int rc;
} other_exit_t;

static int other_exit_body(void *arg, void **result)
{
    (void)result;
    other_exit_t *o = arg;
    o->rc = weft_taskgroup_exit(o->g, 0);
    return 0;
}

static int args_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_taskgroup_t *g = NULL;
    CHECK(&g_rec, weft_taskgroup_new(NULL) == -EINVAL);
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    CHECK(&g_rec, weft_taskgroup_spawn(NULL, kid_body, NULL, NULL, NULL) == -EINVAL);
    CHECK(&g_rec, weft_taskgroup_spawn(g, NULL, NULL, NULL, NULL) == -EINVAL);
    weft_spawn_opts_t big = {.stack_size = (size_t)1 << 40};
    kid_t k = {.go = NULL};
    CHECK(&g_rec, weft_taskgroup_spawn(g, kid_body, &k, &big, NULL) == -EINVAL);
    CHECK(&g_rec, weft_taskgroup_exit(NULL, 0) == -EINVAL);
    other_exit_t o = {g, 99};
    weft_task_t *t = NULL;
    CHECK(&g_rec, weft_spawn(other_exit_body, &o, NULL, &t) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(t), NULL) == 0);
    CHECK(&g_rec, o.rc == -EPERM);
    weft_task_release(t);
    /* A refused spawn left nothing behind: the group is empty. */
    CHECK(&g_rec, weft_taskgroup_wait(g) == 0);
    CHECK(&g_rec, weft_taskgroup_error(NULL, 0, NULL, NULL, NULL) == -EINVAL);
    CHECK(&g_rec, weft_taskgroup_error(g, 0, NULL, NULL, NULL) == -EINVAL);
    CHECK(&g_rec, weft_taskgroup_error_count(NULL) == 0);
    weft_taskgroup_free(g);
    weft_taskgroup_free(NULL);
    return 0;
}

static void test_taskgroup_errors(void **state)
{
    (void)state;
    weft_taskgroup_t *g = NULL;
    assert_int_equal(weft_taskgroup_new(&g), -EPERM);
    assert_null(g);
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, args_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* From a plain thread: spawning needs a task or a loop callback (weft_spawn's
 * -EPERM); reading the error list works anywhere. */
typedef struct plain_spawn {
    weft_taskgroup_t *g;
    atomic_int published; /* release: publishes g */
    weft_future_t *go;
    int exit_rc;
} plain_spawn_t;

static int plain_spawn_body(void *arg, void **result)
{
    (void)result;
    plain_spawn_t *p = arg;
    CHECK(&g_rec, weft_taskgroup_new(&p->g) == 0);
    atomic_store_explicit(&p->published, 1, memory_order_release);
    int rc = weft_await(p->go, NULL);
    p->exit_rc = weft_taskgroup_exit(p->g, rc);
    weft_taskgroup_free(p->g);
    return 0;
}

static void test_taskgroup_spawn_from_a_plain_thread_is_eperm(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    plain_spawn_t p = {.g = NULL, .exit_rc = 1};
    atomic_init(&p.published, 0);
    assert_int_equal(weft_future_new(weft_runtime_loop(rt, 0), &p.go), 0);
    weft_future_t *f = NULL;
    assert_int_equal(weft_runtime_submit(rt, plain_spawn_body, &p, &f), 0);
    for (int i = 0; i < 30000 && !atomic_load_explicit(&p.published, memory_order_acquire); i++)
        tr_sleep_ms(1);
    assert_int_equal(atomic_load_explicit(&p.published, memory_order_acquire), 1);
    weft_task_t *t = (weft_task_t *)&tag_a;
    assert_int_equal(weft_taskgroup_spawn(p.g, kid_body, NULL, NULL, &t), -EPERM);
    assert_ptr_equal(t, &tag_a);
    assert_int_equal(weft_taskgroup_error_count(p.g), 0);
    assert_int_equal(weft_taskgroup_exit(p.g, 0), -EPERM);
    assert_int_equal(weft_future_set_result(p.go, NULL), 0);
    assert_int_equal(weft_future_wait(f, WAIT_LIMIT), 0);
    assert_int_equal(p.exit_rc, 0); /* the refused spawn left nothing to wait for */
    weft_future_release(f);
    weft_future_release(p.go);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Freed without exit: the children run on, and the group's memory goes
 * with the last of them (ASan/LSan check it).  b's failure still aborts
 * the group (a may end cancelled) and sends this task the group's
 * request. */
static int free_early_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_taskgroup_t *g = NULL;
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    weft_future_t *go = new_future();
    kid_t a = {.go = go}, b = {.go = go, .code = -EIO, .fail_anyway = true};
    kid_spawn(g, &a);
    kid_spawn(g, &b);
    weft_taskgroup_free(g);
    CHECK(&g_rec, weft_future_set_result(go, NULL) == 0);
    int cancels = 0;
    for (int i = 0; i < 100000; i++) {
        if (weft_future_done(weft_task_future(a.task)) &&
            weft_future_done(weft_task_future(b.task)))
            break;
        if (weft_sleep(MS) == WEFT_ECANCELED)
            cancels++;
    }
    CHECK(&g_rec, weft_future_result(weft_task_future(b.task), NULL) == -EIO);
    int a_rc = weft_future_result(weft_task_future(a.task), NULL);
    CHECK(&g_rec, a_rc == 0 || a_rc == WEFT_ECANCELED);
    CHECK(&g_rec, cancels <= 1);
    weft_task_release(a.task);
    weft_task_release(b.task);
    weft_future_release(go);
    return 0;
}

static void test_taskgroup_freed_without_exit_lets_children_finish(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, free_early_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

/* Many children on two workers, some failing: the list holds exactly the
 * children that ended with an error (not cancelled), each once. */
#define MANY 64

static int maybe_fail_body(void *arg, void **result)
{
    (void)result;
    intptr_t i = (intptr_t)arg;
    for (int k = 0; k < (int)(i % 4); k++) {
        int rc = weft_yield();
        if (rc != 0)
            return rc;
    }
    return i % 7 == 3 ? -(int)(100 + i) : 0;
}

static int many_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    static weft_task_t *ts[MANY];
    weft_taskgroup_t *g = NULL;
    CHECK(&g_rec, weft_taskgroup_new(&g) == 0);
    int spawned = 0;
    for (intptr_t i = 0; i < MANY; i++) {
        int rc = weft_taskgroup_spawn(g, maybe_fail_body, (void *)i, NULL, &ts[i]);
        CHECK(&g_rec, rc == 0 || rc == WEFT_ECLOSED);
        if (rc != 0) {
            ts[i] = NULL;
            continue;
        }
        spawned++;
    }
    int rc = weft_taskgroup_wait(g);
    CHECK(&g_rec, rc == WEFT_EGROUP);
    size_t n = weft_taskgroup_error_count(g);
    size_t failed = 0;
    for (int i = 0; i < MANY; i++) {
        if (ts[i] == NULL)
            continue;
        weft_future_t *f = weft_task_future(ts[i]);
        CHECK(&g_rec, weft_future_done(f));
        if (!weft_future_cancelled(f) && weft_future_result(f, NULL) != 0) {
            failed++;
            int found = 0;
            for (size_t e = 0; e < n; e++) {
                weft_task_t *t = NULL;
                int code = 0;
                CHECK(&g_rec, weft_taskgroup_error(g, e, &t, &code, NULL) == 0);
                if (t == ts[i]) {
                    found++;
                    CHECK(&g_rec, code == -(100 + i));
                }
            }
            CHECK(&g_rec, found == 1);
        }
        weft_task_release(ts[i]);
    }
    CHECK(&g_rec, failed == n && n >= 1);
    CHECK(&g_rec, weft_task_cancelling(weft_current_task()) == 0);
    weft_taskgroup_free(g);
    return 0;
}

static void test_taskgroup_many_children_across_workers(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(2);
    for (int round = 0; round < 10; round++)
        assert_int_equal(tr_run_in(rt, many_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const struct CMUnitTest tests[] = {
        TEST(test_taskgroup_waits_for_every_child),
        TEST(test_taskgroup_first_failure_cancels_the_others_and_the_body),
        TEST(test_taskgroup_lists_every_failure),
        TEST(test_taskgroup_outside_cancellation_is_raised_after_the_children),
        TEST(test_taskgroup_cancel_during_a_failing_group),
        TEST(test_taskgroup_body_error_aborts_and_is_listed),
        TEST(test_taskgroup_eager_child_failing_inside_spawn),
        TEST(test_taskgroup_errors),
        TEST(test_taskgroup_spawn_from_a_plain_thread_is_eperm),
        TEST(test_taskgroup_freed_without_exit_lets_children_finish),
        TEST(test_taskgroup_many_children_across_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
