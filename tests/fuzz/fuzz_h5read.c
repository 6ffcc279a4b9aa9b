/* fuzz_h5read.c: libFuzzer target on the schema-v1 reader, reading each input as `qwen3-diff compare`
 * does: qd_h5in_open (the file checks, the root attributes, config_json, /input_ids), the backend groups,
 * then qd_compare_files of the first group against each of the next two (each group's precision, every
 * tap read with its shape and storage checks, the metrics), or, with one group or none, with no group named
 * (the only-group path).
 *
 * The input is written to a regular file in /dev/shm (memory, fuzz_util.h): the reader only takes paths,
 * and HDF5 needs one it can resolve with realpath(), so a memfd's /proc/self/fd/N does not do. Built
 * with clang -fsanitize=fuzzer (tests/fuzz/meson.build); replay.c runs the same entry point over a corpus
 * in any build, so the sanitizer build replays the seeds without libFuzzer. tests/fuzz/README.md says how
 * to run it. */
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "qd_compare.h"
#include "qd_h5read.h"

#define MAX_GROUPS 3 /* the first group against each of the next two: every code path, a bounded cost */

static void compare_pair(const char *path, const char *ga, const char *gb) {
    qd_report r;
    qd_err e;
    memset(&r, 0, sizeof r);
    qd_err_clear(&e);
    (void)qd_compare_files(path, ga, path, gb, NULL, &r, &e);
    qd_report_free(&r);
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* HDF5 1.10.8's global heap (where variable-length strings live) trusts its collections: an object
 * whose size is 0 loops forever in the collection's deserializer, one larger than the collection is
 * copied out of bounds by H5HG_read (tests/fuzz/README.md, "HDF5's own bugs"). Every string attribute of
 * schema v1 goes through it, and no check of the reader can come before it. Inputs with such a
 * collection only find those bugs again, at a second's timeout each, so the target skips them: this
 * walks each "GCOL" collection the way H5HG__cache_heap_deserialize does (8-byte lengths, as every dump
 * has) and says whether HDF5 would get through it. */
static int global_heaps_ok(const uint8_t *data, size_t size) {
    const uint8_t *end_all = data + size;
    for (const uint8_t *g = memmem(data, size, "GCOL", 4); g; g = memmem(g + 4, (size_t)(end_all - g - 4), "GCOL", 4)) {
        if (end_all - g < 16) return 0;
        uint64_t csize = le(g + 8, 8);
        if (csize < 16 || csize > (uint64_t)(end_all - g)) return 0;
        const uint8_t *p = g + 16, *end = g + csize;
        while (p < end) {
            if (end - p < 16) break; /* too small for an object header: free space */
            unsigned idx = (unsigned)le(p, 2);
            uint64_t osize = le(p + 8, 8);
            uint64_t need = idx > 0 ? 16 + ((osize + 7) & ~(uint64_t)7) : osize;
            if (need == 0 || osize > (uint64_t)(end - p) || need > (uint64_t)(end - p)) return 0;
            p += need;
        }
        if (g + 4 >= end_all) break;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!global_heaps_ok(data, size)) return 0;
    const char *path = fuzz_put("h5read", "input.h5", data, size);
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
