/* files.c: see qd_files.h. */
#include "qd_files.h"

#include <errno.h>
#include <fcntl.h>
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
// output files

static int stdout_fd = 1; /* where "-" goes; a duplicate of the original fd 1 after qd_out_claim_stdout */

/* The descriptor a name of this process's own descriptors stands for, or -1: /dev/stdout, /dev/stderr,
 * /dev/fd/N, /proc/self/fd/N. These are links into /proc whose targets ("pipe:[123]") are not paths. */
static int fd_alias(const char *path) {
    if (strcmp(path, "-") == 0 || strcmp(path, "/dev/stdout") == 0) return 1;
    if (strcmp(path, "/dev/stderr") == 0) return 2;
    const char *n = strncmp(path, "/dev/fd/", 8) == 0          ? path + 8
                    : strncmp(path, "/proc/self/fd/", 14) == 0 ? path + 14
                                                               : NULL;
    if (!n || !*n) return -1;
    char *end;
    long fd = strtol(n, &end, 10);
    return *end || fd < 0 || fd > INT_MAX ? -1 : (int)fd;
}

int qd_out_claim_stdout(qd_err *e) {
    if (stdout_fd != 1) return QD_OK;
    fflush(stdout);
    int fd = fcntl(1, F_DUPFD_CLOEXEC, 3);
    if (fd < 0) return qd_errf(e, QD_ERUNTIME, "dup(stdout) failed: %s", strerror(errno));
    if (dup2(2, 1) < 0) {
        int err = errno;
        close(fd);
        return qd_errf(e, QD_ERUNTIME, "dup2(stderr, stdout) failed: %s", strerror(err));
    }
    stdout_fd = fd;
    return QD_OK;
}

/* Follows path's symbolic links to the name that is finally written (which may not exist: a dangling
 * link's target). *fd: the descriptor when a link leads to one of fd_alias's names, else -1. */
static int follow_links(const char *path, char *final, size_t n, int *fd, struct stat *st, int *exists, qd_err *e) {
    char cur[PATH_MAX], link[PATH_MAX];
    snprintf(cur, sizeof cur, "%s", path);
    for (int hop = 0; hop < 40; hop++) {
        if ((*fd = fd_alias(cur)) >= 0) return QD_OK;
        if (lstat(cur, st) != 0) {
            if (errno != ENOENT) return qd_errf(e, QD_EINPUT, "%s: cannot write %s: %s", path, cur, strerror(errno));
            *exists = 0;
            snprintf(final, n, "%s", cur);
            return QD_OK;
        }
        if (!S_ISLNK(st->st_mode)) {
            *exists = 1;
            snprintf(final, n, "%s", cur);
            return QD_OK;
        }
        ssize_t k = readlink(cur, link, sizeof link - 1);
        if (k < 0) return qd_errf(e, QD_ERUNTIME, "%s: readlink(%s) failed: %s", path, cur, strerror(errno));
        link[k] = '\0';
        char *slash = strrchr(cur, '/');
        if (link[0] == '/' || !slash) {
            snprintf(cur, sizeof cur, "%s", link);
        } else { /* relative to the link's directory */
            slash[1] = '\0';
            char next[PATH_MAX];
            if ((size_t)snprintf(next, sizeof next, "%s%s", cur, link) >= sizeof next)
                return qd_errf(e, QD_EINPUT, "%s: the link's target is longer than PATH_MAX", path);
            memcpy(cur, next, sizeof cur);
        }
    }
    return qd_errf(e, QD_EINPUT, "%s: too many levels of symbolic links", path);
}

int qd_out_is_stdout(const char *path) {
    if (!path || !*path) return 0;
    char final[PATH_MAX];
    struct stat st;
    int fd = -1, exists = 0;
    qd_err ignored;
    return follow_links(path, final, sizeof final, &fd, &st, &exists, &ignored) == QD_OK && fd == 1;
}

static int out_open(qd_out *o, const char *path, int seekable, qd_err *e) {
    memset(o, 0, sizeof *o);
    if (strlen(path) >= sizeof o->path)
        return qd_errf(e, QD_EINPUT, "%.80s...: output path longer than PATH_MAX", path);
    snprintf(o->path, sizeof o->path, "%s", path);
    if (!*path) return qd_errf(e, QD_EINPUT, "empty output path");
    struct stat st;
    int fd = -1, exists = 0;
    int rc = follow_links(path, o->final, sizeof o->final, &fd, &st, &exists, e);
    if (rc) return rc;
    if (fd < 0 && exists && S_ISDIR(st.st_mode))
        return qd_errf(e, QD_EINPUT, "%s: is a directory, not a file name for an output", path);
    if (fd >= 0 || (exists && !S_ISREG(st.st_mode))) { /* a descriptor, FIFO or device: in place */
        o->final[0] = '\0';
        if (seekable)
            return qd_errf(e, QD_EINPUT, "%s: an HDF5 file needs a seekable regular file, not %s", path,
                           fd == 1   ? "stdout"
                           : fd >= 0 ? "a file descriptor"
                                     : qd_file_kind(st.st_mode));
        int wfd = fd == 1 ? fcntl(stdout_fd, F_DUPFD_CLOEXEC, 3) : fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
        if (fd < 0 && S_ISSOCK(st.st_mode))
            return qd_errf(e, QD_EINPUT, "%s: is a socket, not a file name for an output", path);
        if (fd < 0) wfd = open(path, O_WRONLY | O_CLOEXEC); /* a FIFO waits for its reader, as `cmd > fifo` does */
        if (wfd < 0 || !(o->f = fdopen(wfd, "w"))) {
            int err = errno;
            if (wfd >= 0) close(wfd);
            return qd_errf(e, QD_ERUNTIME, "%s: cannot open for writing: %s", path, strerror(err));
        }
        return QD_OK;
    }
    /* a regular file or a new name (a link's target): PATH.tmp.<pid>, renamed when complete */
    if ((size_t)snprintf(o->tmp, sizeof o->tmp, "%s.tmp.%ld", o->final, (long)getpid()) >= sizeof o->tmp)
        return qd_errf(e, QD_EINPUT, "%s: output path longer than PATH_MAX", path);
    /* registered before it exists: a SIGINT or SIGTERM while it is written removes it */
    if ((rc = qd_tmp_register(o->tmp, e))) {
        o->tmp[0] = '\0';
        return rc;
    }
    if (seekable) return QD_OK;
    if (!(o->f = fopen(o->tmp, "w"))) {
        int err = errno;
        rc = qd_errf(e, err == ENOENT || err == ENOTDIR ? QD_EINPUT : QD_ERUNTIME, "%s: cannot create %s: %s", path,
                     o->tmp, strerror(err));
        qd_tmp_forget(o->tmp);
        o->tmp[0] = '\0';
    }
    return rc;
}

int qd_out_open(qd_out *o, const char *path, qd_err *e) { return out_open(o, path, 0, e); }
int qd_out_open_seekable(qd_out *o, const char *path, qd_err *e) { return out_open(o, path, 1, e); }

void qd_out_abort(qd_out *o) {
    if (o->f) fclose(o->f);
    o->f = NULL;
    if (o->tmp[0]) {
        (void)unlink(o->tmp);
        qd_tmp_forget(o->tmp);
        o->tmp[0] = '\0';
    }
}

int qd_out_commit(qd_out *o, qd_err *e) {
    int rc = QD_OK;
    if (o->f) {
        int bad = fflush(o->f) != 0 || ferror(o->f);
        /* fsync before rename: after a crash the final name holds either the old file or the whole new one */
        if (!bad && o->tmp[0]) bad = fsync(fileno(o->f)) != 0;
        int err = errno;
        bad |= fclose(o->f) != 0;
        if (bad) err = errno ? errno : err;
        o->f = NULL;
        if (bad) rc = qd_errf(e, QD_ERUNTIME, "%s: write failed: %s", o->path, strerror(err));
    } else if (o->tmp[0]) { /* a seekable output its writer has closed */
        int fd = open(o->tmp, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0)
            rc = qd_errf(e, QD_ERUNTIME, "%s: fsync(%s) failed: %s", o->path, o->tmp, strerror(errno));
        if (fd >= 0) close(fd);
    }
    if (!rc && o->tmp[0] && rename(o->tmp, o->final) != 0)
        rc = qd_errf(e, QD_ERUNTIME, "%s: rename(%s, %s) failed: %s", o->path, o->tmp, o->final, strerror(errno));
    if (rc) qd_out_abort(o);
    else if (o->tmp[0]) {
        qd_tmp_forget(o->tmp);
        o->tmp[0] = '\0';
    }
    return rc;
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
    int fd = p->kind == QD_PATH_IN ? -1 : fd_alias(p->path);
    if (fd >= 0) { /* "-", /dev/stdout, ...: the descriptor's file, whatever its name */
        p->exists = fstat(fd == 1 ? stdout_fd : fd, &p->st) == 0;
        snprintf(p->canon, sizeof p->canon, "/dev/fd/%d", fd);
        return;
    }
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
    if (a->exists && b->exists && S_ISCHR(a->st.st_mode) && S_ISCHR(b->st.st_mode) && !qd_out_is_stdout(a->path) &&
        !qd_out_is_stdout(b->path))
        return 0; /* /dev/null twice */
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
        if (p[i].kind == QD_PATH_IN) continue;
        int fd = fd_alias(p[i].path);
        if (p[i].kind == QD_PATH_OUT && fd >= 0)
            return qd_errf(e, QD_EINPUT, "%s %s: an HDF5 file needs a seekable regular file, not %s", p[i].flag,
                           p[i].path, fd == 1 ? "stdout" : "a file descriptor");
        if (p[i].exists && !S_ISREG(p[i].st.st_mode) &&
            (p[i].kind == QD_PATH_OUT || (fd < 0 && (S_ISDIR(p[i].st.st_mode) || S_ISSOCK(p[i].st.st_mode)))))
            return qd_errf(e, QD_EINPUT, "%s %s: is %s, not a file name for %s", p[i].flag, p[i].path,
                           qd_file_kind(p[i].st.st_mode),
                           p[i].kind == QD_PATH_OUT ? "an HDF5 file (it needs a seekable regular file)" : "an output");
        for (int j = 0; j < n; j++) {
            if (j == i || (p[j].kind != QD_PATH_IN && j < i) || !same_file(&p[i], &p[j])) continue;
            if (p[j].kind != QD_PATH_IN)
                return qd_errf(e, QD_EINPUT, "%s %s and %s %s name the same file: each output needs its own path",
                               p[i].flag, p[i].path, p[j].flag, p[j].path);
            return qd_errf(e, QD_EINPUT, "%s %s would overwrite the input %s %s", p[i].flag, p[i].path, p[j].flag,
                           p[j].path);
        }
    }
    return QD_OK;
}
