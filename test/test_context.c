/* Tests for the task context (include/weft/task.h, asyncio's contextvars):
 * set/get by key, copies inherited by spawned tasks and executor calls,
 * the destroy function called once per value when the last context holding
 * it lets go, and every documented return code.
 *
 * Nothing here calls a cmocka assert inside a task or an executor call:
 * they CHECK into g_rec and the test thread asserts afterwards (STYLE.md).
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

/* How often each value was destroyed (values are indices into it). */
#define NVALS 16
static atomic_int destroyed[NVALS];
static int vals[NVALS];
#define VAL(i) ((void *)&vals[(i)])

static void destroy_val(void *v)
{
    ptrdiff_t i = (int *)v - vals;
    CHECK(&g_rec, i >= 0 && i < NVALS);
    if (i >= 0 && i < NVALS)
        atomic_fetch_add(&destroyed[i], 1);
}

static int setup(void **state)
{
    (void)state;
    check_rec_init(&g_rec);
    for (int i = 0; i < NVALS; i++)
        atomic_init(&destroyed[i], 0);
    return 0;
}

#define TEST(fn) cmocka_unit_test_setup(fn, setup)

static weft_context_key_t *key_a, *key_b, *key_plain;

static void new_keys(void)
{
    assert_int_equal(weft_context_key_new(destroy_val, &key_a), 0);
    assert_int_equal(weft_context_key_new(destroy_val, &key_b), 0);
    assert_int_equal(weft_context_key_new(NULL, &key_plain), 0);
}

static void free_keys(void)
{
    weft_context_key_free(key_a);
    weft_context_key_free(key_b);
    weft_context_key_free(key_plain);
}

/* ---- set / get / unset ---------------------------------------------------------- */

static int set_get_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    CHECK(&g_rec, weft_context_get(key_a) == NULL);
    CHECK(&g_rec, weft_context_set(key_a, VAL(0)) == 0);
    CHECK(&g_rec, weft_context_set(key_b, VAL(1)) == 0);
    CHECK(&g_rec, weft_context_get(key_a) == VAL(0));
    CHECK(&g_rec, weft_context_get(key_b) == VAL(1));
    CHECK(&g_rec, weft_yield() == 0); /* survives a suspension (and a migration) */
    CHECK(&g_rec, weft_context_get(key_a) == VAL(0));
    /* Replacing an unshared value destroys the old one at once. */
    CHECK(&g_rec, weft_context_set(key_a, VAL(2)) == 0);
    CHECK(&g_rec, atomic_load(&destroyed[0]) == 1);
    CHECK(&g_rec, weft_context_get(key_a) == VAL(2));
    /* The same value again changes nothing. */
    CHECK(&g_rec, weft_context_set(key_a, VAL(2)) == 0);
    CHECK(&g_rec, atomic_load(&destroyed[2]) == 0);
    /* Unset. */
    CHECK(&g_rec, weft_context_set(key_b, NULL) == 0);
    CHECK(&g_rec, atomic_load(&destroyed[1]) == 1);
    CHECK(&g_rec, weft_context_get(key_b) == NULL);
    CHECK(&g_rec, weft_context_set(key_b, NULL) == 0); /* nothing to unset */
    /* A key without destroy. */
    CHECK(&g_rec, weft_context_set(key_plain, VAL(3)) == 0);
    CHECK(&g_rec, weft_context_get(key_plain) == VAL(3));
    return 0; /* VAL(2) goes when this task finishes */
}

static void test_context_set_get_replace_and_unset(void **state)
{
    (void)state;
    new_keys();
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, set_get_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
    assert_int_equal(atomic_load(&destroyed[0]), 1);
    assert_int_equal(atomic_load(&destroyed[1]), 1);
    assert_int_equal(atomic_load(&destroyed[2]), 1);
    assert_int_equal(atomic_load(&destroyed[3]), 0); /* no destroy function */
    free_keys();
}

/* ---- inheritance ------------------------------------------------------------------- */

typedef struct family {
    weft_future_t *child_set; /* the child changed its copy */
    weft_future_t *parent_set;
    void *child_saw_a_first, *child_saw_a_after, *child_saw_b;
    void *grandchild_saw_a;
} family_t;

static int grandchild_body(void *arg, void **result)
{
    (void)result;
    family_t *f = arg;
    f->grandchild_saw_a = weft_context_get(key_a);
    return 0;
}

static int child_body(void *arg, void **result)
{
    (void)result;
    family_t *f = arg;
    f->child_saw_a_first = weft_context_get(key_a);
    CHECK(&g_rec, weft_context_set(key_a, VAL(5)) == 0);
    CHECK(&g_rec, weft_context_set(key_b, VAL(6)) == 0);
    CHECK(&g_rec, tr_signal(f->child_set) == 0);
    CHECK(&g_rec, weft_await(f->parent_set, NULL) == 0);
    /* The parent's later change is not seen here. */
    f->child_saw_a_after = weft_context_get(key_a);
    f->child_saw_b = weft_context_get(key_b);
    weft_task_t *g = NULL;
    CHECK(&g_rec, weft_spawn(grandchild_body, f, NULL, &g) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(g), NULL) == 0);
    weft_task_release(g);
    return 0;
}

static int parent_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    family_t f = {0};
    f.child_set = NULL;
    CHECK(&g_rec, weft_future_new(NULL, &f.child_set) == 0);
    CHECK(&g_rec, weft_future_new(NULL, &f.parent_set) == 0);
    CHECK(&g_rec, weft_context_set(key_a, VAL(4)) == 0);
    weft_task_t *c = NULL;
    CHECK(&g_rec, weft_spawn(child_body, &f, NULL, &c) == 0);
    CHECK(&g_rec, weft_await(f.child_set, NULL) == 0);
    /* The child's changes are not seen here. */
    CHECK(&g_rec, weft_context_get(key_a) == VAL(4));
    CHECK(&g_rec, weft_context_get(key_b) == NULL);
    CHECK(&g_rec, weft_context_set(key_a, VAL(7)) == 0);
    /* VAL(4) is still held by nobody else (the child replaced its copy). */
    CHECK(&g_rec, atomic_load(&destroyed[4]) == 1);
    CHECK(&g_rec, tr_signal(f.parent_set) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(c), NULL) == 0);
    weft_task_release(c);
    CHECK(&g_rec, f.child_saw_a_first == VAL(4));
    CHECK(&g_rec, f.child_saw_a_after == VAL(5));
    CHECK(&g_rec, f.child_saw_b == VAL(6));
    CHECK(&g_rec, f.grandchild_saw_a == VAL(5));
    /* The child and grandchild finished: their values are gone. */
    CHECK(&g_rec, atomic_load(&destroyed[5]) == 1);
    CHECK(&g_rec, atomic_load(&destroyed[6]) == 1);
    CHECK(&g_rec, weft_context_get(key_a) == VAL(7));
    weft_future_release(f.child_set);
    weft_future_release(f.parent_set);
    return 0;
}

static void test_context_spawned_tasks_inherit_a_copy(void **state)
{
    (void)state;
    new_keys();
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, parent_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
    for (int i = 4; i <= 7; i++)
        assert_int_equal(atomic_load(&destroyed[i]), 1);
    free_keys();
}

/* A value shared by parent and child is destroyed once, when the last of
 * them lets go. */
static int shared_child(void *arg, void **result)
{
    (void)result;
    weft_future_t *go = arg;
    CHECK(&g_rec, weft_context_get(key_a) == VAL(8));
    CHECK(&g_rec, weft_await(go, NULL) == 0);
    CHECK(&g_rec, weft_context_get(key_a) == VAL(8));
    return 0;
}

static int shared_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    weft_future_t *go = NULL;
    CHECK(&g_rec, weft_future_new(NULL, &go) == 0);
    CHECK(&g_rec, weft_context_set(key_a, VAL(8)) == 0);
    weft_task_t *c = NULL;
    CHECK(&g_rec, weft_spawn(shared_child, go, NULL, &c) == 0);
    CHECK(&g_rec, weft_context_set(key_a, NULL) == 0);
    CHECK(&g_rec, atomic_load(&destroyed[8]) == 0); /* the child still holds it */
    CHECK(&g_rec, tr_signal(go) == 0);
    CHECK(&g_rec, weft_await(weft_task_future(c), NULL) == 0);
    CHECK(&g_rec, atomic_load(&destroyed[8]) == 1);
    weft_task_release(c);
    weft_future_release(go);
    return 0;
}

static void test_context_shared_value_is_destroyed_once_by_the_last_holder(void **state)
{
    (void)state;
    new_keys();
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, shared_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
    assert_int_equal(atomic_load(&destroyed[8]), 1);
    free_keys();
}

/* ---- executor calls ------------------------------------------------------------------- */

static int in_executor(void *arg, void **result)
{
    (void)arg;
    *result = weft_context_get(key_a);
    /* Not a task: cannot set. */
    CHECK(&g_rec, weft_context_set(key_a, VAL(0)) == -EPERM);
    return 0;
}

static int executor_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    CHECK(&g_rec, weft_context_set(key_a, VAL(9)) == 0);
    void *v = NULL;
    CHECK(&g_rec, weft_to_thread(in_executor, NULL, &v) == 0);
    CHECK(&g_rec, v == VAL(9));
    weft_future_t *f = NULL;
    CHECK(&g_rec, weft_run_in_executor(NULL, in_executor, NULL, &f) == 0);
    /* Changed after submitting: the call keeps the copy it was given. */
    CHECK(&g_rec, weft_context_set(key_a, VAL(10)) == 0);
    v = NULL;
    CHECK(&g_rec, weft_await(f, &v) == 0);
    CHECK(&g_rec, v == VAL(9));
    weft_future_release(f);
    return 0;
}

static void test_context_executor_calls_see_the_submitters_values(void **state)
{
    (void)state;
    new_keys();
    weft_runtime_t *rt = tr_new_rt(2);
    assert_int_equal(tr_run_in(rt, executor_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
    assert_int_equal(atomic_load(&destroyed[9]), 1);
    assert_int_equal(atomic_load(&destroyed[10]), 1);
    free_keys();
}

/* ---- where there is no context ------------------------------------------------------- */

static int empty_body(void *arg, void **result)
{
    (void)arg;
    *result = weft_context_get(key_a);
    return 0;
}

typedef struct cb_spawn {
    weft_task_t *t;
    atomic_int done; /* release: publishes t */
} cb_spawn_t;

static void spawn_from_callback(void *arg)
{
    cb_spawn_t *c = arg;
    CHECK(&g_rec, weft_spawn(empty_body, NULL, NULL, &c->t) == 0);
    atomic_store_explicit(&c->done, 1, memory_order_release);
}

static int many_keys_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    /* Insert and remove in mixed order across more keys than the first
     * allocation holds. */
    enum { K = 12 };
    weft_context_key_t *keys[K];
    for (int i = 0; i < K; i++)
        CHECK(&g_rec, weft_context_key_new(NULL, &keys[i]) == 0);
    for (int i = K - 1; i >= 0; i -= 2)
        CHECK(&g_rec, weft_context_set(keys[i], VAL(i)) == 0);
    for (int i = 0; i < K; i += 2)
        CHECK(&g_rec, weft_context_set(keys[i], VAL(i)) == 0);
    for (int i = 0; i < K; i++)
        CHECK(&g_rec, weft_context_get(keys[i]) == VAL(i));
    for (int i = 0; i < K; i += 3)
        CHECK(&g_rec, weft_context_set(keys[i], NULL) == 0);
    for (int i = 0; i < K; i++)
        CHECK(&g_rec, weft_context_get(keys[i]) == (i % 3 == 0 ? NULL : VAL(i)));
    for (int i = 0; i < K; i++)
        weft_context_key_free(keys[i]);
    return 0;
}

static void test_context_empty_outside_tasks_and_for_tasks_started_elsewhere(void **state)
{
    (void)state;
    new_keys();
    /* Outside any task. */
    assert_null(weft_context_get(key_a));
    assert_null(weft_context_get(NULL));
    assert_int_equal(weft_context_set(key_a, VAL(0)), -EPERM);
    assert_int_equal(weft_context_key_new(NULL, NULL), -EINVAL);
    weft_context_key_free(NULL);

    weft_runtime_t *rt = tr_new_rt(2);
    /* A task submitted from a plain thread starts empty. */
    void *v = VAL(1);
    assert_int_equal(tr_run_in(rt, empty_body, NULL, &v), 0);
    assert_null(v);
    /* So does one spawned from a loop callback. */
    cb_spawn_t c = {.t = NULL};
    atomic_init(&c.done, 0);
    assert_int_equal(
        weft_loop_call_soon_threadsafe(weft_runtime_loop(rt, 0), spawn_from_callback, &c, NULL), 0);
    for (int i = 0; i < 30000 && atomic_load_explicit(&c.done, memory_order_acquire) == 0; i++)
        tr_sleep_ms(1);
    assert_int_equal(atomic_load_explicit(&c.done, memory_order_acquire), 1);
    weft_task_t *t = c.t;
    assert_non_null(t);
    assert_int_equal(weft_future_wait(weft_task_future(t), WAIT_LIMIT), 0);
    v = VAL(1);
    assert_int_equal(weft_future_result(weft_task_future(t), &v), 0);
    assert_null(v);
    weft_task_release(t);
    assert_int_equal(tr_run_in(rt, many_keys_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
    free_keys();
}

static int key_args_body(void *arg, void **result)
{
    (void)arg;
    (void)result;
    CHECK(&g_rec, weft_context_set(NULL, VAL(0)) == -EINVAL);
    CHECK(&g_rec, weft_context_get(NULL) == NULL);
    /* A key freed while its value is set: the value still goes, destroyed. */
    weft_context_key_t *k = NULL;
    CHECK(&g_rec, weft_context_key_new(destroy_val, &k) == 0);
    CHECK(&g_rec, weft_context_set(k, VAL(11)) == 0);
    weft_context_key_free(k);
    /* A new key never sees the freed key's value. */
    CHECK(&g_rec, weft_context_key_new(destroy_val, &k) == 0);
    CHECK(&g_rec, weft_context_get(k) == NULL);
    weft_context_key_free(k);
    return 0;
}

static void test_context_errors_and_freed_keys(void **state)
{
    (void)state;
    weft_runtime_t *rt = tr_new_rt(1);
    assert_int_equal(tr_run_in(rt, key_args_body, NULL, NULL), 0);
    ASSERT_NO_FAILURE(&g_rec);
    tr_free_rt(rt);
    assert_int_equal(atomic_load(&destroyed[11]), 1);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const struct CMUnitTest tests[] = {
        TEST(test_context_set_get_replace_and_unset),
        TEST(test_context_spawned_tasks_inherit_a_copy),
        TEST(test_context_shared_value_is_destroyed_once_by_the_last_holder),
        TEST(test_context_executor_calls_see_the_submitters_values),
        TEST(test_context_empty_outside_tasks_and_for_tasks_started_elsewhere),
        TEST(test_context_errors_and_freed_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
