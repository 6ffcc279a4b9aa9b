/* qd_dump.h: the HDF5 dump, schema v1 (docs/SCHEMA.md is the document users read).
 *
 *   /                       attrs: schema="qwen3-diff/1", model, config_json, tool_version
 *   /input_ids              int32 (T,)
 *   /<backend>/             attr precision: "fp64" | "fp32" | "bf16" | "fp16"
 *   /<backend>/embed        (T, C)      /<backend>/final_norm (T, C)     /<backend>/logits (T, V)
 *   /<backend>/layers/NNN/<tap>          layer taps, NNN zero-padded to 3 digits
 * All tensors float32, chunked, optionally compressed. The file is written to PATH.tmp.<pid> and renamed
 * to PATH by qd_dump_close(commit=1); qd_dump_close(commit=0) removes it: no half-written file ever
 * carries the final name. The temporary name is registered with qd_tmp_register (qd_files.h), so after
 * qd_tmp_cleanup_on_signals() a SIGINT or SIGTERM removes it too. */
#ifndef QD_DUMP_H
#define QD_DUMP_H

#include <stdint.h>

#include "qd_taps.h"
#include "qd_util.h"

typedef struct qd_dump qd_dump;

/* compress: 0 none, 1..9 gzip level. */
qd_dump *qd_dump_create(const char *path, const char *model_path, const char *config_json, const int32_t *input_ids,
                        int T, int compress, qd_err *e);

/* Adds a backend group; later qd_dump_backend_sink() taps land under it. */
int qd_dump_add_backend(qd_dump *d, const char *backend, const char *precision, qd_err *e);

/* Adds (or replaces) a string attribute on a backend group, e.g. accum = "f64". A key that is empty,
 * or is "precision" (set by qd_dump_add_backend), is QD_EINPUT. */
int qd_dump_backend_attr(qd_dump *d, const char *backend, const char *key, const char *value, qd_err *e);

/* A tap sink writing each emitted tap to /<backend>/... (embed and the head's taps at the group's top,
 * layer taps under layers/NNN); a failed write fills the emitting caller's qd_err. The sink stays valid
 * until qd_dump_close. NULL with e set (QD_EINPUT) when the backend was not added. */
qd_tap_sink *qd_dump_backend_sink(qd_dump *d, const char *backend, qd_err *e);

/* Writes one tensor directly, at the path of its id. */
int qd_dump_write_tap(qd_dump *d, const char *backend, qd_tap_id id, const float *data, int ndim, const int64_t *shape,
                      qd_err *e);

/* --- tables beside the backend groups (the comparator's /diff/<A>-vs-<B>/metrics) --- */

/* Writes /<parent>/<group>/<name> as a 1-D table of n records of a compound type made by make_type()
 * (an HDF5 hid_t, returned as int64_t so callers need not include hdf5.h; the writer closes it).
 * Groups are created on demand; parent may not be a backend group. */
int qd_dump_write_table(qd_dump *d, const char *parent, const char *group, const char *name, const void *records,
                        size_t n, int64_t (*make_type)(void), qd_err *e);
/* Integer and string attributes on /<parent>/<group> (created on demand). */
int qd_dump_group_attr_int(qd_dump *d, const char *parent, const char *group, const char *key, long long value,
                           qd_err *e);
int qd_dump_group_attr_string(qd_dump *d, const char *parent, const char *group, const char *key, const char *value,
                              qd_err *e);

/* commit=1: flush, close, rename to the final path. commit=0: close and delete. Frees d. */
int qd_dump_close(qd_dump *d, int commit, qd_err *e);

#endif
