/* fuzz_util.h: what the fuzz targets share (header only, so a target is one .c file).
 *
 * The parsers under test take paths, not buffers, where the product reads files: each process gets one
 * scratch directory, /dev/shm/qd_fuzz.<target>.<pid> (memory; $TMPDIR or /tmp where /dev/shm is not
 * writable), and fuzz_put() writes an input's bytes to a file in it. The directory and what the target
 * put there are removed at exit; run_fuzz.sh removes those of children killed by a timeout or a crash.
 *
 * fuzz_check() is the targets' oracle beyond "no crash": an invariant the parser promises (an accepted
 * config has an even head_dim, a parsed id is below vocab_size, ...). A violation aborts, which libFuzzer
 * records as a crash with the input that broke it. */
#ifndef QD_FUZZ_UTIL_H
#define QD_FUZZ_UTIL_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qd_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_FILES 8

static char fuzz_dir_[1024];
static char fuzz_files_[FUZZ_MAX_FILES][2048];

static void fuzz_cleanup_(void) {
    for (int i = 0; i < FUZZ_MAX_FILES; i++)
        if (fuzz_files_[i][0]) unlink(fuzz_files_[i]);
    if (fuzz_dir_[0]) rmdir(fuzz_dir_);
}

#define fuzz_check(cond)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* The scratch directory of this process, made on first use. */
static inline const char *fuzz_dir(const char *target) {
    if (!fuzz_dir_[0]) {
        struct stat st;
        const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0
                               ? "/dev/shm"
                           : getenv("TMPDIR") ? getenv("TMPDIR")
                                              : "/tmp";
        snprintf(fuzz_dir_, sizeof fuzz_dir_, "%s/qd_fuzz.%s.%ld", base, target, (long)getpid());
        if (mkdir(fuzz_dir_, 0700) != 0 && !(stat(fuzz_dir_, &st) == 0 && S_ISDIR(st.st_mode))) {
            perror(fuzz_dir_);
            abort();
        }
        atexit(fuzz_cleanup_);
    }
    return fuzz_dir_;
}

/* The path of NAME in the scratch directory, registered for removal at exit. */
static inline const char *fuzz_path(const char *target, const char *name) {
    const char *dir = fuzz_dir(target);
    int slot = 0;
    char path[sizeof fuzz_files_[0]];
    snprintf(path, sizeof path, "%s/%.512s", dir, name);
    while (slot < FUZZ_MAX_FILES && fuzz_files_[slot][0] && strcmp(fuzz_files_[slot], path) != 0) slot++;
    if (slot == FUZZ_MAX_FILES) {
        fprintf(stderr, "fuzz_path: more than %d scratch files\n", FUZZ_MAX_FILES);
        abort();
    }
    memcpy(fuzz_files_[slot], path, sizeof path);
    return fuzz_files_[slot];
}

/* Writes size bytes to NAME in the scratch directory (replacing what was there) and returns its path. */
static inline const char *fuzz_put(const char *target, const char *name, const void *data, size_t size) {
    const char *path = fuzz_path(target, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || close(fd) != 0) {
        perror(path);
        abort();
    }
    return path;
}

/* A refusal as the CLI prints it: a code (QD_EINPUT for what the file says, QD_ERUNTIME for I/O and
 * memory) and one non-empty line with no control character (a hostile file's text must not break the
 * line or reach the terminal as an escape sequence). */
static inline void fuzz_check_refusal(int rc, const qd_err *e) {
    fuzz_check(rc == QD_EINPUT || rc == QD_ERUNTIME);
    fuzz_check(e->code == rc);
    fuzz_check(e->msg[0] != '\0');
    for (const unsigned char *p = (const unsigned char *)e->msg; *p; p++) fuzz_check(*p >= 0x20 && *p != 0x7f);
}

/* The input as a NUL-terminated string (malloc'd); what follows an embedded NUL is not seen, as in C. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

#endif
