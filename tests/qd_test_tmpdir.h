/* qd_test_tmpdir.h: a temporary directory per test binary, made by the group setup and removed with its
 * contents by the group teardown. Define QD_TEST_TMPDIR ("/tmp/qd-test-NAME-XXXXXX") before including. */
#ifndef QD_TEST_TMPDIR_H
#define QD_TEST_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static char tmpdir[] = QD_TEST_TMPDIR;

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static int setup(void **state) {
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif
