/* fuzz_h5read.c: libFuzzer target on the schema-v1 reader, reading each input as `qwen3-diff compare`
 * does: qd_h5in_open (the file checks, the root attributes, config_json, /input_ids), the backend groups,
 * then qd_compare_files of the first group against each of the next two (each group's precision, every
 * tap read with its shape and storage checks, the metrics), or, with one group or none, with no group named
 * (the only-group path).
 *
 * The input is written to a regular file in /dev/shm (memory), as the reader only takes paths. Built with clang -fsanitize=fuzzer (tests/fuzz/meson.build); replay.c runs the same entry
 * point over a corpus in any build, so the sanitizer build replays the seeds without libFuzzer.
 * tests/fuzz/README.md says how to run it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qd_compare.h"
#include "qd_h5read.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void remove_input(void);

#define MAX_GROUPS 3 /* the first group against each of the next two: every code path, a bounded cost */

static void compare_pair(const char *path, const char *ga, const char *gb) {
    qd_report r;
    qd_err e;
    memset(&r, 0, sizeof r);
    qd_err_clear(&e);
    (void)qd_compare_files(path, ga, path, gb, NULL, &r, &e);
    qd_report_free(&r);
}

static char input_name[4096];

static void remove_input(void) {
    if (input_name[0]) unlink(input_name);
}

/* The input as a regular file: in /dev/shm (memory) when it exists, else $TMPDIR or /tmp. HDF5 needs a
 * path it can resolve with realpath(), so a memfd's /proc/self/fd/N does not do. */
static const char *input_path(void) {
    char *path = input_name;
    if (!path[0]) {
        struct stat st;
        const char *dir = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0
                              ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        snprintf(path, sizeof input_name, "%s/qd_fuzz_h5read.%ld.h5", dir, (long)getpid());
        atexit(remove_input);
    }
    return path;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = input_path();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || close(fd) != 0) {
        perror(path);
        abort();
    }
    qd_err e;
    qd_err_clear(&e);
    qd_h5in *f = qd_h5in_open(path, &e);
    if (!f) return 0;
    char names[512];
    int n = qd_h5in_backends(f, names, sizeof names);
    qd_h5in_close(f);

    char *group[MAX_GROUPS];
    int ng = 0;
    for (char *save = NULL, *g = strtok_r(names, ",", &save); g && ng < MAX_GROUPS; g = strtok_r(NULL, ",", &save))
        group[ng++] = g + (*g == ' ');
    if (ng <= 1) compare_pair(path, NULL, NULL); /* the only-group path (or its refusal) */
    for (int k = 1; k < ng && n > 1; k++) compare_pair(path, group[0], group[k]);
    return 0;
}
