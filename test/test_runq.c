/* Unit tests of the per-worker run queue and the inject queue
 * (sched/runq.h), single-threaded: exact order and counts.  The
 * multi-threaded behaviour is exercised by stress/stress_runq.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sched/runq.h"

typedef struct item {
    weft_runnable_t r; /* first: runq stores weft_runnable_t pointers */
    int id;
} item_t;

#define N_ITEMS ((int)(3 * WEFT__RUNQ_CAP))

static item_t items[N_ITEMS];

static void setup_items(void)
{
    for (int i = 0; i < N_ITEMS; i++)
        items[i].id = i;
}

static int id_of(weft_runnable_t *r)
{
    return ((item_t *)r)->id;
}

static void test_runq_pops_in_fifo_order(void **state)
{
    (void)state;
    setup_items();
    static weft_runq_t q;
    weft_inject_t inj;
    weft__runq_init(&q);
    weft__inject_init(&inj);
    for (int i = 0; i < 100; i++)
        weft__runq_push(&q, &items[i].r, &inj);
    assert_int_equal(weft__runq_len(&q), 100);
    for (int i = 0; i < 100; i++)
        assert_int_equal(id_of(weft__runq_pop(&q)), i);
    assert_null(weft__runq_pop(&q));
    assert_int_equal(weft__runq_len(&q), 0);
    assert_true(weft__inject_empty(&inj));
    weft__inject_destroy(&inj);
}

static void test_runq_full_ring_moves_older_half_and_new_task_to_inject(void **state)
{
    (void)state;
    setup_items();
    static weft_runq_t q;
    weft_inject_t inj;
    weft__runq_init(&q);
    weft__inject_init(&inj);
    for (unsigned i = 0; i < WEFT__RUNQ_CAP; i++)
        weft__runq_push(&q, &items[i].r, &inj);
    assert_true(weft__inject_empty(&inj));
    /* One more: the older half plus this one go to inject, in order. */
    weft__runq_push(&q, &items[WEFT__RUNQ_CAP].r, &inj);
    assert_int_equal(weft__runq_len(&q), WEFT__RUNQ_CAP / 2);
    for (unsigned i = 0; i < WEFT__RUNQ_CAP / 2; i++)
        assert_int_equal(id_of(weft__inject_pop(&inj)), (int)i);
    assert_int_equal(id_of(weft__inject_pop(&inj)), (int)WEFT__RUNQ_CAP);
    assert_null(weft__inject_pop(&inj));
    for (unsigned i = WEFT__RUNQ_CAP / 2; i < WEFT__RUNQ_CAP; i++)
        assert_int_equal(id_of(weft__runq_pop(&q)), (int)i);
    assert_null(weft__runq_pop(&q));
    weft__inject_destroy(&inj);
}

static void test_runq_steal_takes_half_rounded_up_from_the_head(void **state)
{
    (void)state;
    setup_items();
    static weft_runq_t src, dst;
    weft_inject_t inj;
    weft__runq_init(&src);
    weft__runq_init(&dst);
    weft__inject_init(&inj);
    for (int i = 0; i < 7; i++)
        weft__runq_push(&src, &items[i].r, &inj);
    /* Half of 7 rounded up is 4: items 0..3; the thief runs the last of
     * them now and keeps 0..2 queued in order. */
    weft_runnable_t *now = weft__runq_steal_into(&src, &dst);
    assert_non_null(now);
    assert_int_equal(id_of(now), 3);
    assert_int_equal(weft__runq_len(&dst), 3);
    assert_int_equal(weft__runq_len(&src), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(id_of(weft__runq_pop(&dst)), i);
    for (int i = 4; i < 7; i++)
        assert_int_equal(id_of(weft__runq_pop(&src)), i);
    /* A queue of one can be stolen; an empty one cannot. */
    weft__runq_push(&src, &items[9].r, &inj);
    now = weft__runq_steal_into(&src, &dst);
    assert_non_null(now);
    assert_int_equal(id_of(now), 9);
    assert_null(weft__runq_steal_into(&src, &dst));
    weft__inject_destroy(&inj);
}

static void test_runq_indexes_wrap_around_the_ring(void **state)
{
    (void)state;
    setup_items();
    static weft_runq_t q;
    weft_inject_t inj;
    weft__runq_init(&q);
    weft__inject_init(&inj);
    int next_in = 0, next_out = 0;
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 200; i++, next_in++)
            weft__runq_push(&q, &items[next_in % N_ITEMS].r, &inj);
        for (int i = 0; i < 200; i++, next_out++)
            assert_int_equal(id_of(weft__runq_pop(&q)), next_out % N_ITEMS);
    }
    assert_null(weft__runq_pop(&q));
    assert_true(weft__inject_empty(&inj));
    weft__inject_destroy(&inj);
}

static void test_inject_batch_keeps_order(void **state)
{
    (void)state;
    setup_items();
    weft_inject_t inj;
    weft__inject_init(&inj);
    for (int i = 0; i < 4; i++)
        items[i].r.inject_next = &items[i + 1].r;
    weft__inject_push_batch(&inj, &items[0].r, &items[4].r, 5);
    weft__inject_push(&inj, &items[5].r);
    for (int i = 0; i < 6; i++)
        assert_int_equal(id_of(weft__inject_pop(&inj)), i);
    assert_true(weft__inject_empty(&inj));
    assert_null(weft__inject_pop(&inj));
    weft__inject_destroy(&inj);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runq_pops_in_fifo_order),
        cmocka_unit_test(test_runq_full_ring_moves_older_half_and_new_task_to_inject),
        cmocka_unit_test(test_runq_steal_takes_half_rounded_up_from_the_head),
        cmocka_unit_test(test_runq_indexes_wrap_around_the_ring),
        cmocka_unit_test(test_inject_batch_keeps_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
