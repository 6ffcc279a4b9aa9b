/* test_files.c: what a run does with files beyond reading and writing them (common/qd_files.h) and the
 * input checks of qd_read_text / qd_tokens_parse_max (common/util.c, tokens.c): non-regular files refused
 * before anything is read, size caps, colliding output paths, and temporary files removed by a signal
 * whose default action then still ends the process. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#define QD_TEST_TMPDIR "/tmp/qd-test-files-XXXXXX"
#include "qd_files.h"
#include "qd_test_tmpdir.h"
#include "qd_tokens.h"

static char *path_in(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void expect_msg(const qd_err *e, const char *needle) {
    if (!strstr(e->msg, needle)) print_error("message '%s' lacks '%s'\n", e->msg, needle);
    assert_non_null(strstr(e->msg, needle));
    assert_null(strchr(e->msg, '\n'));
}

static void test_read_text_refuses_non_regular(void **state) {
    (void)state;
    char *fifo = path_in("fifo");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    qd_err e;
    char *text = (char *)1;
    /* a FIFO with no writer: must return at once, not block in open() */
    assert_int_equal(qd_read_text(fifo, 100, "test", &text, NULL, &e), QD_EINPUT);
    assert_null(text);
    expect_msg(&e, "is a FIFO");
    assert_int_equal(qd_read_text("/dev/zero", 100, "test", &text, NULL, &e), QD_EINPUT);
    expect_msg(&e, "is a character device");
    assert_int_equal(qd_read_text(tmpdir, 100, "test", &text, NULL, &e), QD_EINPUT);
    expect_msg(&e, "is a directory");
    assert_int_equal(qd_read_text(path_in("missing"), 100, "test", &text, NULL, &e), QD_EINPUT);
    expect_msg(&e, "cannot open");
}

static void test_read_text_cap(void **state) {
    (void)state;
    char *p = path_in("ten");
    write_file(p, "0123456789");
    qd_err e;
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(qd_read_text(p, 10, "test", &text, &len, &e), QD_OK);
    assert_int_equal(len, 10);
    assert_string_equal(text, "0123456789");
    free(text);
    assert_int_equal(qd_read_text(p, 9, "the reason", &text, &len, &e), QD_EINPUT);
    assert_null(text);
    expect_msg(&e, "the reason");
    write_file(p, "");
    assert_int_equal(qd_read_text(p, 9, "test", &text, &len, &e), QD_OK);
    assert_int_equal(len, 0);
    free(text);
}

static void test_tokens_max_ids(void **state) {
    (void)state;
    int32_t *ids = NULL;
    int n = 0;
    qd_err e;
    assert_int_equal(qd_tokens_parse_max("1,2,3", 10, 3, &ids, &n, &e), QD_OK);
    assert_int_equal(n, 3);
    free(ids);
    assert_int_equal(qd_tokens_parse_max("1,2,3,4", 10, 3, &ids, &n, &e), QD_EINPUT);
    assert_null(ids);
    expect_msg(&e, "more than 3 token ids");
    /* the file cap follows max_ids: 16 bytes per id + 4096 */
    char *p = path_in("tokens");
    char big[5000];
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    big[0] = '1';
    write_file(p, big);
    char arg[600];
    snprintf(arg, sizeof arg, "@%s", p);
    assert_int_equal(qd_tokens_parse_max(arg, 10, 10, &ids, &n, &e), QD_EINPUT); /* 4999 > 4256 bytes */
    expect_msg(&e, "max_position_embeddings");
    assert_int_equal(qd_tokens_parse_max(arg, 10, 100, &ids, &n, &e), QD_OK); /* 4999 <= 5696 */
    assert_int_equal(n, 1);
    free(ids);
    assert_int_equal(qd_tokens_parse_max("@/dev/zero", 10, 10, &ids, &n, &e), QD_EINPUT);
    expect_msg(&e, "character device");
}

static void test_check_paths(void **state) {
    (void)state;
    qd_err e;
    char *a = path_in("a.json"), *b = path_in("b.json");
    char dotted[600];
    snprintf(dotted, sizeof dotted, "%s/./a.json", tmpdir);
    assert_int_equal(qd_check_paths(&e, QD_PATH_OUT, "--json", a, QD_PATH_OUT, "--junit", b, QD_PATH_OUT, "--dump",
                                    NULL, QD_PATH_END),
                     QD_OK);
    /* not created yet: the same canonical directory and name */
    assert_int_equal(qd_check_paths(&e, QD_PATH_OUT, "--json", a, QD_PATH_OUT, "--junit", dotted, QD_PATH_END),
                     QD_EINPUT);
    expect_msg(&e, "--json");
    expect_msg(&e, "name the same file");
    /* existing: the same inode through a hard link */
    write_file(a, "{}");
    char *hard = path_in("link.json");
    assert_int_equal(link(a, hard), 0);
    assert_int_equal(qd_check_paths(&e, QD_PATH_OUT, "--json", a, QD_PATH_OUT, "--junit", hard, QD_PATH_END),
                     QD_EINPUT);
    /* an output over an input, also one given as FILE:GROUP */
    char operand[600];
    snprintf(operand, sizeof operand, "%s:ref", a);
    assert_int_equal(qd_check_paths(&e, QD_PATH_IN, "compare A", operand, QD_PATH_OUT, "--json", a, QD_PATH_END),
                     QD_EINPUT);
    expect_msg(&e, "would overwrite the input");
    /* inputs may repeat; an output may not be a directory or a device */
    assert_int_equal(qd_check_paths(&e, QD_PATH_IN, "compare A", a, QD_PATH_IN, "compare B", a, QD_PATH_END), QD_OK);
    assert_int_equal(qd_check_paths(&e, QD_PATH_OUT, "--json", tmpdir, QD_PATH_END), QD_EINPUT);
    expect_msg(&e, "is a directory");
    assert_int_equal(qd_check_paths(&e, QD_PATH_OUT, "--dump", "/dev/null", QD_PATH_END), QD_EINPUT);
    expect_msg(&e, "character device");
    /* a stream output may be stdout or a device, not a directory; a seekable one (HDF5) is never stdout */
    assert_int_equal(
        qd_check_paths(&e, QD_PATH_STREAM, "--json", "/dev/null", QD_PATH_STREAM, "--junit", "/dev/null", QD_PATH_END),
        QD_OK);
    assert_int_equal(qd_check_paths(&e, QD_PATH_STREAM, "--json", "-", QD_PATH_OUT, "--dump", a, QD_PATH_END), QD_OK);
    assert_int_equal(qd_check_paths(&e, QD_PATH_STREAM, "--json", tmpdir, QD_PATH_END), QD_EINPUT);
    expect_msg(&e, "is a directory");
    assert_int_equal(qd_check_paths(&e, QD_PATH_OUT, "--dump", "-", QD_PATH_END), QD_EINPUT);
    expect_msg(&e, "not stdout");
    assert_int_equal(
        qd_check_paths(&e, QD_PATH_STREAM, "--json", "-", QD_PATH_STREAM, "--junit", "/dev/stdout", QD_PATH_END),
        QD_EINPUT);
    expect_msg(&e, "name the same file");
}

/* qd_out_open: a symlink's target written atomically (the link kept), a dangling link's target created,
 * a FIFO or "-" refused for a seekable output, a directory refused for both. */
static void test_out_open(void **state) {
    (void)state;
    qd_err e;
    char *target = path_in("out_target.json"), *link = path_in("out_link.json");
    write_file(target, "old");
    assert_int_equal(symlink("out_target.json", link), 0);
    qd_out o;
    assert_int_equal(qd_out_open(&o, link, &e), QD_OK);
    assert_string_equal(o.final, target);
    fputs("new", o.f);
    assert_int_equal(qd_out_commit(&o, &e), QD_OK);
    struct stat st;
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    char *text = NULL;
    assert_int_equal(qd_read_text(target, 1024, "test", &text, NULL, &e), QD_OK);
    assert_string_equal(text, "new");
    free(text);
    char *dangling = path_in("out_dangling.json"), *created = path_in("out_created.json");
    assert_int_equal(symlink("out_created.json", dangling), 0);
    assert_int_equal(qd_out_open_seekable(&o, dangling, &e), QD_OK);
    write_file(o.tmp, "h5");
    assert_int_equal(qd_out_commit(&o, &e), QD_OK);
    assert_int_equal(stat(created, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(qd_out_open_seekable(&o, "-", &e), QD_EINPUT);
    expect_msg(&e, "not stdout");
    char *fifo = path_in("out_fifo");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(qd_out_open_seekable(&o, fifo, &e), QD_EINPUT);
    expect_msg(&e, "a FIFO");
    assert_int_equal(qd_out_open(&o, tmpdir, &e), QD_EINPUT);
    expect_msg(&e, "is a directory");
    /* abandoned: nothing under the final name, no temporary file */
    char *fresh = path_in("out_fresh.json");
    assert_int_equal(qd_out_open(&o, fresh, &e), QD_OK);
    char tmp[sizeof o.tmp];
    snprintf(tmp, sizeof tmp, "%s", o.tmp);
    qd_out_abort(&o);
    assert_int_not_equal(access(fresh, F_OK), 0);
    assert_int_not_equal(access(tmp, F_OK), 0);
}

/* In a child: register a file, install the handlers, signal itself. The parent sees the child killed by
 * that signal (the exit status says what happened) and the file gone. */
static void signal_removes(int sig) {
    char *p = path_in(sig == SIGINT ? "int.tmp.1" : "term.tmp.1");
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        qd_err e;
        if (qd_tmp_cleanup_on_signals(&e) || qd_tmp_register(p, &e)) _exit(10);
        FILE *f = fopen(p, "w");
        if (!f) _exit(11);
        fclose(f);
        raise(sig);
        _exit(12); /* not reached: the default action ends the process */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), sig);
    assert_int_equal(access(p, F_OK), -1);
}

static void test_tmp_signals(void **state) {
    (void)state;
    signal_removes(SIGINT);
    signal_removes(SIGTERM);
}

static void test_tmp_forget_and_exit(void **state) {
    (void)state;
    char *kept = path_in("kept.tmp.1"), *gone = path_in("gone.tmp.1");
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        qd_err e;
        if (qd_tmp_cleanup_on_signals(&e) || qd_tmp_register(kept, &e) || qd_tmp_register(gone, &e)) _exit(10);
        write_file(kept, "x");
        write_file(gone, "x");
        qd_tmp_forget(kept); /* renamed or committed: no longer ours to remove */
        exit(3);             /* e.g. an allocation failure in code that still exits */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 3);
    assert_int_equal(access(kept, F_OK), 0);
    assert_int_equal(access(gone, F_OK), -1);
    /* the table is finite: the ninth file is refused, not silently unprotected */
    qd_err e;
    int rc = QD_OK;
    for (int i = 0; i <= QD_TMP_SLOTS && rc == QD_OK; i++) rc = qd_tmp_register(path_in("slot"), &e);
    assert_int_equal(rc, QD_ERUNTIME);
    for (int i = 0; i < QD_TMP_SLOTS; i++) qd_tmp_forget(path_in("slot"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_text_refuses_non_regular),
        cmocka_unit_test(test_read_text_cap),
        cmocka_unit_test(test_tokens_max_ids),
        cmocka_unit_test(test_check_paths),
        cmocka_unit_test(test_out_open),
        cmocka_unit_test(test_tmp_signals),
        cmocka_unit_test(test_tmp_forget_and_exit),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
