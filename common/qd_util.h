/* qd_util.h: errors, checked allocation and small helpers shared by every part of qwen3-diff.
 *
 * Error contract (the CLI turns these into exit codes):
 *   QD_OK       0  success
 *   QD_EINPUT   2  bad input or usage: a one-line message naming the file and the field
 *   QD_ERUNTIME 3  runtime failure (I/O, CUDA, out of memory): the message names the failing call
 * Library code never exits; it fills a qd_err and returns its code. Only main() exits. */
#ifndef QD_UTIL_H
#define QD_UTIL_H

#include <stddef.h>
#include <stdint.h>

enum { QD_OK = 0, QD_EDIVERGED = 1, QD_EINPUT = 2, QD_ERUNTIME = 3 };

typedef struct {
    int code;       /* QD_OK, QD_EINPUT or QD_ERUNTIME */
    char msg[1024]; /* one line, no trailing newline */
} qd_err;

/* Sets e->code and e->msg (printf-style) and returns code. e may be NULL. */
int qd_errf(qd_err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void qd_err_clear(qd_err *e);

/* Allocation that reports instead of exiting: NULL with e filled (QD_ERUNTIME, "out of memory:
 * malloc(N bytes) at FILE:LINE") when it fails; n == 0 allocates one byte, so NULL always means failure.
 * qd_resize leaves p allocated (and owned by the caller) when it fails. Library code uses these. */
#define qd_alloc(n, e) qd_alloc_at((n), (e), __FILE__, __LINE__)
#define qd_zalloc(count, size, e) qd_zalloc_at((count), (size), (e), __FILE__, __LINE__)
#define qd_resize(p, n, e) qd_resize_at((p), (n), (e), __FILE__, __LINE__)
void *qd_alloc_at(size_t n, qd_err *e, const char *file, int line);
void *qd_zalloc_at(size_t count, size_t size, qd_err *e, const char *file, int line);
void *qd_resize_at(void *p, size_t n, qd_err *e, const char *file, int line);

/* Reads a whole file into a NUL-terminated buffer. QD_EINPUT if it does not exist, is not a regular file
 * (a FIFO, a device, a directory: refused before anything is read, so none of them can block or feed
 * bytes without end) or has more than `max` bytes (the message gives `why`, the reason for the cap);
 * QD_ERUNTIME on a read error. *len may be NULL. */
int qd_read_text(const char *path, size_t max, const char *why, char **out, size_t *len, qd_err *e);
/* qd_read_text for JSON metadata: config.json and a shard index. */
#define QD_READ_FILE_MAX ((size_t)64 << 20)
#define QD_READ_FILE_MAX_WHY "JSON metadata: a config.json is a few KB, the largest Qwen3 shard index ~2 MB"
int qd_read_file(const char *path, char **out, size_t *len, qd_err *e);

/* Joins dir and name with one '/'; the result is malloc'd. NULL with e filled (QD_ERUNTIME) when out
 * of memory. */
char *qd_path_join(const char *dir, const char *name, qd_err *e);

/* Overflow-checked size arithmetic: returns 0 and sets *out, or -1 on overflow. */
int qd_mul_size(size_t a, size_t b, size_t *out);

#endif
