/* test_tokens.c: token list parsing (common/tokens.c): every accepted form and every refusal, with the
 * message naming the argument or file and the offending item. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "qd_tokens.h"

#define VOCAB 512

/* Parses and checks the ids. */
static void expect_ids(const char *arg, const int32_t *want, int n_want) {
    int32_t *ids = NULL;
    int n = -1;
    qd_err e;
    qd_err_clear(&e);
    int rc = qd_tokens_parse(arg, VOCAB, &ids, &n, &e);
    if (rc != QD_OK) print_error("unexpected error for '%s': %s\n", arg, e.msg);
    assert_int_equal(rc, QD_OK);
    assert_int_equal(n, n_want);
    assert_non_null(ids);
    for (int i = 0; i < n_want; i++) assert_int_equal(ids[i], want[i]);
    free(ids);
}

/* Parses, expects QD_EINPUT, one line, and every needle in the message. */
static void expect_error(const char *arg, const char *needle1, const char *needle2) {
    int32_t *ids = (int32_t *)(uintptr_t)1; /* must be reset to NULL */
    int n = -1;
    qd_err e;
    qd_err_clear(&e);
    int rc = qd_tokens_parse(arg, VOCAB, &ids, &n, &e);
    assert_int_equal(rc, QD_EINPUT);
    assert_int_equal(e.code, QD_EINPUT);
    assert_null(ids);
    assert_int_equal(n, 0);
    assert_null(strchr(e.msg, '\n'));
    if (needle1 && !strstr(e.msg, needle1)) print_error("'%s' not in: %s\n", needle1, e.msg);
    if (needle1) assert_non_null(strstr(e.msg, needle1));
    if (needle2 && !strstr(e.msg, needle2)) print_error("'%s' not in: %s\n", needle2, e.msg);
    if (needle2) assert_non_null(strstr(e.msg, needle2));
}

/* A temporary file with the given content; returns "@path" (malloc'd) and the path in *path. */
static char *temp_file(const char *content, char **path) {
    char tmpl[] = "/tmp/qd_tokens_XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    size_t len = strlen(content);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
    *path = strdup(tmpl);
    char *arg = malloc(strlen(tmpl) + 2);
    sprintf(arg, "@%s", tmpl);
    return arg;
}

static void test_valid_forms(void **state) {
    (void)state;
    const int32_t a[] = {5, 17, 3};
    expect_ids("5,17,3", a, 3);
    expect_ids("5 17 3", a, 3);
    expect_ids("5\t17\n3", a, 3);
    expect_ids(" 5, 17 ,3 ", a, 3); /* comma with spaces around it is one separator */
    expect_ids("5,17\n\n  3\n", a, 3);
    const int32_t b[] = {0};
    expect_ids("0", b, 1);
    const int32_t c[] = {511, 0, 7};
    expect_ids("511,000,007", c, 3); /* leading zeros are still decimal */
}

static void test_file_mixed_separators(void **state) {
    (void)state;
    char *path;
    char *arg = temp_file("5,17 3\n9,\n  10\t11,12\n", &path);
    const int32_t want[] = {5, 17, 3, 9, 10, 11, 12};
    expect_ids(arg, want, 7);
    unlink(path);
    free(path);
    free(arg);
}

static void test_many_tokens(void **state) {
    (void)state;
    /* more ids than the initial capacity: growth keeps every value in order */
    char buf[8192] = "";
    int32_t want[1000];
    for (int i = 0; i < 1000; i++) {
        want[i] = (i * 7) % VOCAB;
        sprintf(buf + strlen(buf), "%d%s", want[i], i % 3 ? "," : " ");
    }
    expect_ids(buf, want, 1000);
}

static void test_empty_list(void **state) {
    (void)state;
    expect_error("", "empty token list", NULL);
    expect_error("   \n\t", "empty token list", NULL);
    char *path;
    char *arg = temp_file("\n\n", &path);
    expect_error(arg, path, "empty token list");
    unlink(path);
    free(path);
    free(arg);
}

static void test_non_numeric(void **state) {
    (void)state;
    expect_error("5,x,3", "'x'", "position 1");
    expect_error("5,x,3", "tokens '5,x,3'", NULL); /* names the argument */
    expect_error("5,0x10", "'0x10'", "position 1");
    expect_error("+5", "'+5'", NULL);
    expect_error("5.0", "'5.0'", NULL);
    expect_error("5;6", "'5;6'", NULL);
    expect_error("-", "'-'", NULL);
}

static void test_negative(void **state) {
    (void)state;
    expect_error("1,-5", "-5", "negative");
    expect_error("1,-5", "position 1", NULL);
}

static void test_id_too_large(void **state) {
    (void)state;
    expect_error("1,2,600", "token id 600 at position 2 is >= vocab_size 512", NULL);
    expect_error("512", "token id 512 at position 0 is >= vocab_size 512", NULL); /* vocab is exclusive */
}

static void test_overflow(void **state) {
    (void)state;
    expect_error("99999999999999999999999", "overflows", "position 0");
    expect_error("2147483648", "overflows", NULL); /* INT32_MAX + 1 */
}

static void test_empty_items(void **state) {
    (void)state;
    expect_error("5,,3", "empty item", "position 1");
    expect_error("5, ,3", "empty item", "position 1");
    expect_error(",5", "empty item", "position 0");
    expect_error("5,", "empty item", "position 1");
}

static void test_file_errors(void **state) {
    (void)state;
    expect_error("@/nonexistent/qd_tokens.txt", "/nonexistent/qd_tokens.txt", NULL);
    expect_error("@", "no file name", NULL);
    expect_error("@/tmp", "/tmp", NULL); /* a directory is not readable as text */
    char *path;
    char *arg = temp_file("5,17\n3,x\n", &path);
    expect_error(arg, path, "'x'");
    expect_error(arg, "position 3", "line 2");
    unlink(path);
    free(path);
    free(arg);
    arg = temp_file("5,17\n700\n", &path);
    expect_error(arg, "token id 700 at position 2", ">= vocab_size 512");
    unlink(path);
    free(path);
    free(arg);
}

static void test_bad_vocab(void **state) {
    (void)state;
    int32_t *ids;
    int n;
    qd_err e;
    assert_int_equal(qd_tokens_parse("1", 0, &ids, &n, &e), QD_EINPUT);
    assert_int_equal(qd_tokens_parse(NULL, VOCAB, &ids, &n, &e), QD_EINPUT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_forms),  cmocka_unit_test(test_file_mixed_separators),
        cmocka_unit_test(test_many_tokens),  cmocka_unit_test(test_empty_list),
        cmocka_unit_test(test_non_numeric),  cmocka_unit_test(test_negative),
        cmocka_unit_test(test_id_too_large), cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_empty_items),  cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_bad_vocab),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
