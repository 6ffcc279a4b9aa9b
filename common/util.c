/* util.c: see qd_util.h. */
#include "qd_util.h"

#include "qd_act.h"
#include "qd_files.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int qd_errf(qd_err *e, int code, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        /* messages are one line, and text quoted from a hostile file (a tokens argument, a JSON string)
         * must not break it or reach the terminal as a control sequence (\r, ESC): every control
         * character becomes a space */
        for (unsigned char *p = (unsigned char *)e->msg; *p; p++)
            if (*p < 0x20 || *p == 0x7f) *p = ' ';
        e->code = code;
    }
    return code;
}

void qd_err_clear(qd_err *e) {
    if (e) {
        e->code = QD_OK;
        e->msg[0] = '\0';
    }
}

void *qd_alloc_at(size_t n, qd_err *e, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) qd_errf(e, QD_ERUNTIME, "out of memory: malloc(%zu bytes) at %s:%d", n, file, line);
    return p;
}

void *qd_zalloc_at(size_t count, size_t size, qd_err *e, const char *file, int line) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) qd_errf(e, QD_ERUNTIME, "out of memory: calloc(%zu, %zu bytes) at %s:%d", count, size, file, line);
    return p;
}

void *qd_resize_at(void *p, size_t n, qd_err *e, const char *file, int line) {
    void *q = realloc(p, n ? n : 1);
    if (!q) qd_errf(e, QD_ERUNTIME, "out of memory: realloc(%zu bytes) at %s:%d", n, file, line);
    return q;
}

int qd_read_file(const char *path, char **out, size_t *len, qd_err *e) {
    return qd_read_text(path, QD_READ_FILE_MAX, QD_READ_FILE_MAX_WHY, out, len, e);
}

int qd_read_text(const char *path, size_t max, const char *why, char **out, size_t *len, qd_err *e) {
    *out = NULL;
    /* O_NONBLOCK: opening a FIFO with no writer returns at once, so fstat can refuse it instead of
     * blocking; it changes nothing for a regular file */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return qd_errf(e, errno == ENOENT || errno == ENOTDIR ? QD_EINPUT : QD_ERUNTIME, "%s: cannot open: %s", path,
                       strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return qd_errf(e, QD_ERUNTIME, "%s: fstat failed: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return qd_errf(e, QD_EINPUT, "%s: is %s, not a regular file", path, qd_file_kind(st.st_mode));
    }
    if ((uint64_t)st.st_size > (uint64_t)max) {
        close(fd);
        return qd_errf(e, QD_EINPUT, "%s: %lld bytes, more than the %zu this file may have (%s)", path,
                       (long long)st.st_size, max, why);
    }
    /* read up to max + 1 bytes whatever st_size said: the file may grow while it is read */
    size_t cap = (size_t)st.st_size + 1 < max + 1 ? (size_t)st.st_size + 1 : max + 1, n = 0;
    char *buf = qd_alloc(cap + 1, e);
    if (!buf) {
        close(fd);
        return QD_ERUNTIME;
    }
    for (;;) {
        if (n == cap) {
            if (cap > max) break;
            size_t ncap = cap * 2 < max + 1 ? cap * 2 : max + 1;
            char *nb = qd_resize(buf, ncap + 1, e);
            if (!nb) {
                free(buf);
                close(fd);
                return QD_ERUNTIME;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            int err = errno;
            free(buf);
            close(fd);
            return qd_errf(e, QD_ERUNTIME, "%s: read failed: %s", path, strerror(err));
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    close(fd);
    if (n > max) {
        free(buf);
        return qd_errf(e, QD_EINPUT, "%s: more than the %zu bytes this file may have (%s)", path, max, why);
    }
    buf[n] = '\0';
    *out = buf;
    if (len) *len = n;
    return QD_OK;
}

char *qd_path_join(const char *dir, const char *name, qd_err *e) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = qd_alloc(a + b + 2, e);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a > 0 && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

int qd_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return -1;
    *out = a * b;
    return 0;
}

const char *qd_act_dtype_name(qd_act_dtype d) { return d == QD_ACT_BF16 ? "bf16" : d == QD_ACT_FP16 ? "fp16" : "fp32"; }

int qd_act_dtype_parse(const char *s, qd_act_dtype *d) {
    if (strcmp(s, "bf16") == 0) *d = QD_ACT_BF16;
    else if (strcmp(s, "fp16") == 0) *d = QD_ACT_FP16;
    else if (strcmp(s, "fp32") == 0) *d = QD_ACT_FP32;
    else return -1;
    return 0;
}
