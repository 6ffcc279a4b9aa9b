/* test_util.c: the allocation that reports instead of exiting (common/qd_util.h). A request no allocator
 * can meet (SIZE_MAX bytes, or a count * size that overflows) returns NULL with a one-line QD_ERUNTIME
 * message naming the call and this file, and the process goes on: reaching the asserts after the call is
 * the proof that nothing exited. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qd_util.h"

static void expect_oom(const qd_err *e, const char *call) {
    assert_int_equal(e->code, QD_ERUNTIME);
    assert_non_null(strstr(e->msg, "out of memory"));
    assert_non_null(strstr(e->msg, call));
    assert_non_null(strstr(e->msg, "test_util.c:")); /* where the failing call is */
    assert_null(strchr(e->msg, '\n'));
}

static void test_alloc_failure(void **state) {
    (void)state;
    qd_err e;
    qd_err_clear(&e);
    assert_null(qd_alloc(SIZE_MAX, &e));
    expect_oom(&e, "malloc(");
    char want[64];
    snprintf(want, sizeof want, "malloc(%zu bytes)", (size_t)SIZE_MAX);
    assert_non_null(strstr(e.msg, want));
    assert_null(qd_alloc(SIZE_MAX, NULL)); /* no qd_err: still NULL, still no exit */
}

static void test_zalloc_failure(void **state) {
    (void)state;
    qd_err e;
    qd_err_clear(&e);
    assert_null(qd_zalloc(SIZE_MAX / 2, 4, &e)); /* count * size overflows */
    expect_oom(&e, "calloc(");
    qd_err_clear(&e);
    assert_null(qd_zalloc(1, SIZE_MAX, &e));
    expect_oom(&e, "calloc(");
    assert_null(qd_zalloc(SIZE_MAX, 1, NULL));
}

static void test_resize_failure_keeps_block(void **state) {
    (void)state;
    qd_err e;
    qd_err_clear(&e);
    char *p = qd_alloc(16, &e);
    assert_non_null(p);
    memcpy(p, "fifteen bytes..", 16);
    assert_null(qd_resize(p, SIZE_MAX, &e));
    expect_oom(&e, "realloc(");
    assert_string_equal(p, "fifteen bytes.."); /* still the caller's, unchanged */
    free(p);
}

/* Text quoted from a hostile file (a tokens argument, a JSON string) must not break the one-line message or
 * reach the terminal as a control sequence: found by the tokens and config fuzz targets. */
static void test_errf_control_chars(void **state) {
    (void)state;
    qd_err e;
    assert_int_equal(qd_errf(&e, QD_EINPUT, "tokens '%s'", "3\r7\x1b[2J\t1\n\x7f"), QD_EINPUT);
    assert_string_equal(e.msg, "tokens '3 7 [2J 1  '");
    assert_int_equal(e.code, QD_EINPUT);
}

static void test_success(void **state) {
    (void)state;
    qd_err e;
    qd_err_clear(&e);
    void *z = qd_alloc(0, &e); /* NULL always means failure, even for 0 bytes */
    assert_non_null(z);
    free(z);
    int *a = qd_zalloc(100, sizeof *a, &e);
    assert_non_null(a);
    for (int i = 0; i < 100; i++) assert_int_equal(a[i], 0);
    for (int i = 0; i < 100; i++) a[i] = i;
    int *b = qd_resize(a, 1000 * sizeof *a, &e);
    assert_non_null(b);
    for (int i = 0; i < 100; i++) assert_int_equal(b[i], i);
    free(b);
    assert_int_equal(e.code, QD_OK); /* success leaves e alone */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_failure),
        cmocka_unit_test(test_zalloc_failure),
        cmocka_unit_test(test_resize_failure_keeps_block),
        cmocka_unit_test(test_errf_control_chars),
        cmocka_unit_test(test_success),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
