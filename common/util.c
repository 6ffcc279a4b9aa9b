/* util.c: see qd_util.h. */
#include "qd_util.h"

#include "qd_act.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qd_errf(qd_err *e, int code, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        for (char *p = e->msg; *p; p++)
            if (*p == '\n') *p = ' '; /* messages are one line */
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

void *qd_malloc_check(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "qwen3-diff: malloc(%zu) failed at %s:%d\n", n, file, line);
        exit(QD_ERUNTIME);
    }
    return p;
}

void *qd_calloc_check(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "qwen3-diff: calloc(%zu, %zu) failed at %s:%d\n", n, size, file, line);
        exit(QD_ERUNTIME);
    }
    return p;
}

void *qd_realloc_check(void *p, size_t n, const char *file, int line) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "qwen3-diff: realloc(%zu) failed at %s:%d\n", n, file, line);
        exit(QD_ERUNTIME);
    }
    return q;
}

int qd_read_file(const char *path, char **out, size_t *len, qd_err *e) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return qd_errf(e, errno == ENOENT ? QD_EINPUT : QD_ERUNTIME, "%s: cannot open: %s", path,
                       strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = qd_alloc(cap, e);
    if (!buf) {
        fclose(f);
        return QD_ERUNTIME;
    }
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return qd_errf(e, QD_ERUNTIME, "%s: realloc(%zu) failed", path, cap);
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return qd_errf(e, QD_ERUNTIME, "%s: read error", path);
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

const char *qd_act_dtype_name(qd_act_dtype d) {
    return d == QD_ACT_BF16 ? "bf16" : d == QD_ACT_FP16 ? "fp16" : "fp32";
}

int qd_act_dtype_parse(const char *s, qd_act_dtype *d) {
    if (strcmp(s, "bf16") == 0) *d = QD_ACT_BF16;
    else if (strcmp(s, "fp16") == 0) *d = QD_ACT_FP16;
    else if (strcmp(s, "fp32") == 0) *d = QD_ACT_FP32;
    else return -1;
    return 0;
}
