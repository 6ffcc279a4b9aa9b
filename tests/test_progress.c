/* test_progress.c: the progress line of long runs (common/qd_progress.h), on a clock driven by hand:
 * plain lines (logs, CI) come at most one per interval and never before the first interval; the terminal
 * line is rewritten in place and cleared at the end; the ETA extrapolates the rate so far; OFF prints
 * nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qd_progress.h"

static double fake_now;
static double fake_clock(void *ctx) {
    (void)ctx;
    return fake_now;
}

/* Everything written to f so far, as a string (static buffer). */
static const char *contents(FILE *f) {
    static char buf[8192];
    fflush(f);
    long n = ftell(f);
    rewind(f);
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    buf[k] = '\0';
    fseek(f, n, SEEK_SET);
    return buf;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void test_lines_bounded_rate(void **state) {
    (void)state;
    unsetenv("QD_PROGRESS_INTERVAL");
    FILE *f = tmpfile();
    assert_non_null(f);
    qd_progress p;
    fake_now = 100.0;
    qd_progress_start(&p, f, QD_PROGRESS_LINES, "tool", 1000, fake_clock, NULL);
    /* 1000 updates over 25 s: lines at 10 s and 20 s only */
    for (int i = 1; i <= 1000; i++) {
        fake_now = 100.0 + 0.025 * i;
        qd_progress_update(&p, i, "layer %d/1000", i);
    }
    qd_progress_end(&p);
    const char *s = contents(f);
    assert_int_equal(count_lines(s), 2);
    assert_null(strchr(s, '\r'));
    /* at 10 s, 400 of 1000 done: 40 %, ETA 15 s */
    assert_non_null(strstr(s, "tool: layer 400/1000, 40 % done, 10 s elapsed, ETA 15 s\n"));
    fclose(f);
}

static void test_short_run_is_silent(void **state) {
    (void)state;
    unsetenv("QD_PROGRESS_INTERVAL");
    FILE *f = tmpfile();
    qd_progress p;
    fake_now = 0;
    qd_progress_start(&p, f, QD_PROGRESS_LINES, "tool", 10, fake_clock, NULL);
    for (int i = 1; i <= 10; i++) {
        fake_now = 0.5 * i;
        qd_progress_update(&p, i, "step %d", i);
    }
    qd_progress_end(&p);
    assert_string_equal(contents(f), "");
    fclose(f);
}

static void test_interval_from_environment(void **state) {
    (void)state;
    setenv("QD_PROGRESS_INTERVAL", "0", 1);
    FILE *f = tmpfile();
    qd_progress p;
    fake_now = 0;
    qd_progress_start(&p, f, QD_PROGRESS_LINES, "tool", 0, fake_clock, NULL);
    for (int i = 1; i <= 3; i++) qd_progress_update(&p, i, "step %d", i);
    assert_string_equal(contents(f), "tool: step 1, 0.0 s elapsed\ntool: step 2, 0.0 s elapsed\n"
                                     "tool: step 3, 0.0 s elapsed\n");
    unsetenv("QD_PROGRESS_INTERVAL");
    fclose(f);
}

static void test_tty_rewrites_and_clears(void **state) {
    (void)state;
    FILE *f = tmpfile();
    qd_progress p;
    fake_now = 0;
    qd_progress_start(&p, f, QD_PROGRESS_TTY, "tool", 4, fake_clock, NULL);
    qd_progress_update(&p, 1, "a"); /* shown at once */
    fake_now = 0.05;                /* within the refresh gap: skipped */
    qd_progress_update(&p, 2, "b");
    fake_now = 0.2;
    qd_progress_update(&p, 3, "c");
    qd_progress_end(&p);
    const char *s = contents(f);
    assert_null(strchr(s, '\n'));
    assert_non_null(strstr(s, "\r\033[Ktool: a, 25 % done"));
    assert_null(strstr(s, "tool: b"));
    assert_non_null(strstr(s, "\r\033[Ktool: c, 75 % done"));
    size_t n = strlen(s);
    assert_true(n >= 4 && strcmp(s + n - 4, "\r\033[K") == 0); /* cleared at the end */
    fclose(f);
}

static void test_off_prints_nothing(void **state) {
    (void)state;
    setenv("QD_PROGRESS_INTERVAL", "0", 1);
    FILE *f = tmpfile();
    qd_progress p;
    qd_progress_start(&p, f, QD_PROGRESS_OFF, "tool", 4, fake_clock, NULL);
    for (int i = 1; i <= 4; i++) qd_progress_update(&p, i, "x");
    qd_progress_end(&p);
    qd_progress_update(NULL, 1, "x"); /* no progress at all: a no-op */
    qd_progress_end(NULL);
    assert_string_equal(contents(f), "");
    assert_int_equal(qd_progress_mode_for(f, 1), QD_PROGRESS_OFF);
    assert_int_equal(qd_progress_mode_for(f, 0), QD_PROGRESS_LINES); /* a file is not a terminal */
    unsetenv("QD_PROGRESS_INTERVAL");
    fclose(f);
}

static void test_duration(void **state) {
    (void)state;
    char b[32];
    qd_progress_duration(3.25, b, sizeof b);
    assert_string_equal(b, "3.2 s");
    qd_progress_duration(185, b, sizeof b);
    assert_string_equal(b, "3 min 05 s");
    qd_progress_duration(3720, b, sizeof b);
    assert_string_equal(b, "1 h 02 min");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_bounded_rate),        cmocka_unit_test(test_short_run_is_silent),
        cmocka_unit_test(test_interval_from_environment), cmocka_unit_test(test_tty_rewrites_and_clears),
        cmocka_unit_test(test_off_prints_nothing),        cmocka_unit_test(test_duration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
