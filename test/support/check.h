/* Test support: record failures seen inside callbacks, tasks and worker
 * threads, then assert on the test thread.
 *
 * cmocka's asserts longjmp to one global jmp_buf, so they must never run
 * inside a loop callback, a task or a foreign thread.  Use CHECK(rec, cond)
 * there: the first failure (file, line, expression) is kept, later ones
 * only counted.  After the loop returns, the test calls
 * ASSERT_NO_FAILURE(rec), which fails the cmocka test with the first
 * recorded failure.
 */
#ifndef WEFT_TEST_CHECK_H
#define WEFT_TEST_CHECK_H

#include <stdatomic.h>
#include <stdio.h>

typedef struct check_rec {
    atomic_int failures; /* how many CHECKs failed */
    atomic_int claimed;  /* 0 until the first failure claims the text slot */
    const char *file;
    int line;
    const char *expr;
} check_rec_t;

static inline void check_rec_init(check_rec_t *r)
{
    atomic_init(&r->failures, 0);
    atomic_init(&r->claimed, 0);
    r->file = NULL;
    r->line = 0;
    r->expr = NULL;
}

static inline void check_fail(check_rec_t *r, const char *file, int line, const char *expr)
{
    /* The first failing thread claims the text slot; the release increment
     * of failures below publishes it to check_first(). */
    int expected = 0;
    if (atomic_compare_exchange_strong(&r->claimed, &expected, 1)) {
        r->file = file;
        r->line = line;
        r->expr = expr;
    }
    atomic_fetch_add_explicit(&r->failures, 1, memory_order_release);
}

#define CHECK(rec, cond)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            check_fail((rec), __FILE__, __LINE__, #cond);                                          \
    } while (0)

/* On the test thread, after every thread that could CHECK has finished. */
#define ASSERT_NO_FAILURE(rec)                                                                     \
    do {                                                                                           \
        int n_ = atomic_load_explicit(&(rec)->failures, memory_order_acquire);                     \
        if (n_ != 0)                                                                               \
            fail_msg("%d check(s) failed; first at %s:%d: %s", n_, (rec)->file, (rec)->line,       \
                     (rec)->expr);                                                                 \
    } while (0)

#endif /* WEFT_TEST_CHECK_H */
