/* Tests for weft's error codes: weft_strerror() and weft_err_name(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "weft.h"

/* One row per own code, generated from the same table as the enum. */
typedef struct own_code {
    int code;
    const char *enum_name; /* "WEFT_ECLOSED" */
    const char *message;   /* the table's message */
} own_code_t;

static const own_code_t own_codes[] = {
#define OWN_ROW(name, off, msg) {WEFT_##name, "WEFT_" #name, msg},
    WEFT_OWN_ERRNO_MAP(OWN_ROW)
#undef OWN_ROW
};

#define N_OWN (sizeof own_codes / sizeof own_codes[0])

static void test_error_own_codes_are_below_errno_range(void **state)
{
    (void)state;
    assert_true(N_OWN >= 9);
    for (size_t i = 0; i < N_OWN; i++) {
        assert_true(own_codes[i].code < -4096);
        assert_true(own_codes[i].code <= WEFT__ERR_BASE);
        /* The block is contiguous: base, base-1, ... in table order. */
        assert_int_equal(own_codes[i].code, WEFT__ERR_BASE - (int)i);
    }
}

static void test_error_own_codes_are_distinct(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_OWN; i++)
        for (size_t j = i + 1; j < N_OWN; j++)
            assert_int_not_equal(own_codes[i].code, own_codes[j].code);
}

static void test_error_own_codes_have_distinct_known_messages(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_OWN; i++) {
        const char *m = weft_strerror(own_codes[i].code);
        assert_non_null(m);
        assert_string_not_equal(m, "unknown error");
        assert_string_equal(m, own_codes[i].message);
        assert_true(strlen(m) > 0);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(m, weft_strerror(own_codes[j].code));
    }
}

static void test_error_own_codes_are_named_weft_name(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_OWN; i++) {
        const char *n = weft_err_name(own_codes[i].code);
        assert_non_null(n);
        assert_string_equal(n, own_codes[i].enum_name);
        assert_int_equal(strncmp(n, "WEFT_", 5), 0);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(n, weft_err_name(own_codes[j].code));
    }
}

static void test_error_named_own_codes_have_expected_names(void **state)
{
    (void)state;
    assert_string_equal(weft_err_name(WEFT_EINVALSTATE), "WEFT_EINVALSTATE");
    assert_string_equal(weft_err_name(WEFT_EINCOMPLETE), "WEFT_EINCOMPLETE");
    assert_string_equal(weft_err_name(WEFT_ELIMIT), "WEFT_ELIMIT");
    assert_string_equal(weft_err_name(WEFT_EQUEUEEMPTY), "WEFT_EQUEUEEMPTY");
    assert_string_equal(weft_err_name(WEFT_EQUEUEFULL), "WEFT_EQUEUEFULL");
    assert_string_equal(weft_err_name(WEFT_EQSHUTDOWN), "WEFT_EQSHUTDOWN");
    assert_string_equal(weft_err_name(WEFT_EBROKEN), "WEFT_EBROKEN");
    assert_string_equal(weft_err_name(WEFT_ECLOSED), "WEFT_ECLOSED");
    assert_string_equal(weft_err_name(WEFT_EGROUP), "WEFT_EGROUP");
    assert_int_equal(WEFT_EINVALSTATE, -20000);
}

static void test_error_asyncio_aliases_equal_negative_errno(void **state)
{
    (void)state;
    assert_int_equal(WEFT_ECANCELED, -ECANCELED);
    assert_int_equal(WEFT_ETIMEDOUT, -ETIMEDOUT);
    assert_int_equal(WEFT_EINVAL, -EINVAL);
    assert_int_equal(WEFT_OK, 0);
    assert_string_equal(weft_err_name(WEFT_ECANCELED), "ECANCELED");
    assert_string_equal(weft_err_name(WEFT_ETIMEDOUT), "ETIMEDOUT");
}

static void test_error_strerror_of_negative_errno_matches_libc(void **state)
{
    (void)state;
    static const int errs[] = {EINVAL, ENOMEM,    EBADF,     EPERM,  EBUSY,
                               EIO,    ECANCELED, ETIMEDOUT, EAGAIN, EPIPE};
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
        char expect[256];
        /* strerror() is not thread-safe, but this test is single-threaded;
         * copy before calling weft in case it shares libc's buffer. */
        snprintf(expect, sizeof expect, "%s", strerror(errs[i]));
        const char *m = weft_strerror(-errs[i]);
        assert_non_null(m);
        assert_string_equal(m, expect);
    }
}

static void test_error_err_name_of_negative_errno_is_symbol(void **state)
{
    (void)state;
    assert_string_equal(weft_err_name(-EINVAL), "EINVAL");
    assert_string_equal(weft_err_name(-ENOMEM), "ENOMEM");
    assert_string_equal(weft_err_name(-EBADF), "EBADF");
    assert_string_equal(weft_err_name(-EPERM), "EPERM");
    assert_string_equal(weft_err_name(-EBUSY), "EBUSY");
}

static void test_error_zero_is_ok(void **state)
{
    (void)state;
    assert_string_equal(weft_err_name(0), "OK");
    const char *m = weft_strerror(0);
    assert_non_null(m);
    assert_string_not_equal(m, "unknown error");
}

static void test_error_unknown_codes_give_unknown(void **state)
{
    (void)state;
    static const int unknown[] = {-19999, 12345, 1, -4096, -5000, -25000, INT32_MIN};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        assert_string_equal(weft_strerror(unknown[i]), "unknown error");
        assert_string_equal(weft_err_name(unknown[i]), "UNKNOWN");
    }
    /* The first code past the end of the own block is unknown too. */
    int past = WEFT__ERR_BASE - (int)N_OWN;
    assert_string_equal(weft_strerror(past), "unknown error");
    assert_string_equal(weft_err_name(past), "UNKNOWN");
}

static void test_error_never_null_over_code_sweep(void **state)
{
    (void)state;
    int own_seen = 0;
    for (int c = -25000; c <= 10; c++) {
        const char *m = weft_strerror(c);
        const char *n = weft_err_name(c);
        if (m == NULL || n == NULL)
            fail_msg("NULL string for code %d", c);
        if (m[0] == '\0' || n[0] == '\0')
            fail_msg("empty string for code %d", c);
        if (strncmp(n, "WEFT_", 5) == 0)
            own_seen++;
    }
    /* Exactly the own codes carry a WEFT_ name in that range. */
    assert_int_equal(own_seen, (int)N_OWN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_own_codes_are_below_errno_range),
        cmocka_unit_test(test_error_own_codes_are_distinct),
        cmocka_unit_test(test_error_own_codes_have_distinct_known_messages),
        cmocka_unit_test(test_error_own_codes_are_named_weft_name),
        cmocka_unit_test(test_error_named_own_codes_have_expected_names),
        cmocka_unit_test(test_error_asyncio_aliases_equal_negative_errno),
        cmocka_unit_test(test_error_strerror_of_negative_errno_matches_libc),
        cmocka_unit_test(test_error_err_name_of_negative_errno_is_symbol),
        cmocka_unit_test(test_error_zero_is_ok),
        cmocka_unit_test(test_error_unknown_codes_give_unknown),
        cmocka_unit_test(test_error_never_null_over_code_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
