/* files.c: see qd_files.h. */
#include "qd_files.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// temporary files

/* `used` is written after `path` on register and before it is reused, with a signal fence between, so
 * a handler that sees used == 1 sees the whole name. */
static struct {
    volatile sig_atomic_t used;
    char path[PATH_MAX];
} tmp_slots[QD_TMP_SLOTS];

static const int cleanup_signals[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM};
#define N_CLEANUP_SIGNALS ((int)(sizeof cleanup_signals / sizeof *cleanup_signals))

static void unlink_registered(void) {
    for (int i = 0; i < QD_TMP_SLOTS; i++)
        if (tmp_slots[i].used) (void)unlink(tmp_slots[i].path);
}

int qd_tmp_register(const char *path, qd_err *e) {
    size_t n = strlen(path);
    if (n >= PATH_MAX) return qd_errf(e, QD_ERUNTIME, "%s: temporary file name longer than PATH_MAX", path);
    for (int i = 0; i < QD_TMP_SLOTS; i++) {
        if (tmp_slots[i].used) continue;
        memcpy(tmp_slots[i].path, path, n + 1);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        tmp_slots[i].used = 1;
        return QD_OK;
    }
    return qd_errf(e, QD_ERUNTIME, "%s: more than %d temporary files at once", path, QD_TMP_SLOTS);
}

void qd_tmp_forget(const char *path) {
    for (int i = 0; i < QD_TMP_SLOTS; i++) {
        if (tmp_slots[i].used && strcmp(tmp_slots[i].path, path) == 0) {
            tmp_slots[i].used = 0;
            __atomic_signal_fence(__ATOMIC_SEQ_CST);
            return;
        }
    }
}

/* SA_RESETHAND has already restored the default action and the signal is blocked while this runs, so
 * raise() delivers it, with its default action, as soon as the handler returns. */
static void on_signal(int sig) {
    unlink_registered();
    raise(sig);
}

int qd_tmp_cleanup_on_signals(qd_err *e) {
    static int installed;
    if (installed) return QD_OK;
    for (int k = 0; k < N_CLEANUP_SIGNALS; k++) {
        struct sigaction old, sa;
        if (sigaction(cleanup_signals[k], NULL, &old) != 0)
            return qd_errf(e, QD_ERUNTIME, "sigaction(%d) failed: %s", cleanup_signals[k], strerror(errno));
        if (old.sa_handler == SIG_IGN) continue; /* e.g. SIGHUP under nohup: stays ignored */
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        for (int j = 0; j < N_CLEANUP_SIGNALS; j++) sigaddset(&sa.sa_mask, cleanup_signals[j]);
        sa.sa_flags = SA_RESETHAND;
        if (sigaction(cleanup_signals[k], &sa, NULL) != 0)
            return qd_errf(e, QD_ERUNTIME, "sigaction(%d) failed: %s", cleanup_signals[k], strerror(errno));
    }
    if (atexit(unlink_registered) != 0) return qd_errf(e, QD_ERUNTIME, "atexit failed");
    installed = 1;
    return QD_OK;
}

// ----------------------------------------------------------------------------
// output paths

#define MAX_PATHS 32

typedef struct {
    int kind;
    const char *flag;
    const char *path;    /* as given */
    char name[PATH_MAX]; /* the file it names: FILE of FILE:GROUP for an input, else path */
    struct stat st;
    int exists;
    char canon[2 * PATH_MAX + 2]; /* realpath(dirname) + "/" + basename; the name itself when the dir is missing */
} path_entry;

static void resolve(path_entry *p) {
    snprintf(p->name, sizeof p->name, "%s", p->path);
    p->exists = stat(p->name, &p->st) == 0;
    if (!p->exists && p->kind == QD_PATH_IN) {
        char *colon = strrchr(p->name, ':');
        if (colon && !strchr(colon, '/')) {
            *colon = '\0';
            p->exists = stat(p->name, &p->st) == 0;
            if (!p->exists) *colon = ':';
        }
    }
    char d[PATH_MAX], b[PATH_MAX], real[PATH_MAX];
    snprintf(d, sizeof d, "%s", p->name);
    snprintf(b, sizeof b, "%s", p->name);
    if (realpath(dirname(d), real))
        snprintf(p->canon, sizeof p->canon, "%s/%s", strcmp(real, "/") == 0 ? "" : real, basename(b));
    else snprintf(p->canon, sizeof p->canon, "%s", p->name);
}

static int same_file(const path_entry *a, const path_entry *b) {
    if (a->exists && b->exists) return a->st.st_dev == b->st.st_dev && a->st.st_ino == b->st.st_ino;
    return strcmp(a->canon, b->canon) == 0;
}

const char *qd_file_kind(unsigned mode) {
    mode_t m = (mode_t)mode;
    return S_ISDIR(m)    ? "a directory"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
           : S_ISSOCK(m) ? "a socket"
                         : "not a regular file";
}

int qd_check_paths(qd_err *e, ...) {
    static path_entry p[MAX_PATHS]; /* ~200 KB: not on the stack */
    int n = 0;
    va_list ap;
    va_start(ap, e);
    for (;;) {
        int kind = va_arg(ap, int);
        if (kind == QD_PATH_END) break;
        const char *flag = va_arg(ap, const char *);
        const char *path = va_arg(ap, const char *);
        if (!path || !*path) continue;
        if (n == MAX_PATHS) {
            va_end(ap);
            return qd_errf(e, QD_EINPUT, "more than %d file arguments", MAX_PATHS);
        }
        p[n].kind = kind;
        p[n].flag = flag;
        p[n].path = path;
        resolve(&p[n]);
        n++;
    }
    va_end(ap);
    for (int i = 0; i < n; i++) {
        if (p[i].kind != QD_PATH_OUT) continue;
        if (p[i].exists && !S_ISREG(p[i].st.st_mode))
            return qd_errf(e, QD_EINPUT, "%s %s: is %s, not a file name for an output", p[i].flag, p[i].path,
                           qd_file_kind(p[i].st.st_mode));
        for (int j = 0; j < n; j++) {
            if (j == i || (p[j].kind == QD_PATH_OUT && j < i) || !same_file(&p[i], &p[j])) continue;
            if (p[j].kind == QD_PATH_OUT)
                return qd_errf(e, QD_EINPUT, "%s %s and %s %s name the same file: each output needs its own path",
                               p[i].flag, p[i].path, p[j].flag, p[j].path);
            return qd_errf(e, QD_EINPUT, "%s %s would overwrite the input %s %s", p[i].flag, p[i].path, p[j].flag,
                           p[j].path);
        }
    }
    return QD_OK;
}
