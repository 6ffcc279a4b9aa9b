/* qd_h5read.h: reading schema-v1 dumps (ours, transformers' goldens from tools/hf_golden.py, or any
 * engine's) for offline comparison. A dump is input from other engines and other people, so every read
 * is checked before anything is allocated or handed to HDF5 to fill (docs/SCHEMA.md, "What a reader
 * checks"):
 *   - the path is a regular file (a FIFO, a device or a directory is refused before HDF5 opens it);
 *   - every attribute read is a string (H5T_STRING) holding exactly one value (a scalar dataspace, or a
 *     simple one of one element), of bounded length, read into a buffer sized from that check;
 *   - the root's `schema` is "qwen3-diff/1" and its `config_json` a config.json this project accepts: it
 *     gives the model, and with T (the length of /input_ids) the exact shape of every tap;
 *   - every dataset read has the expected type class, rank and shape, an element count computed with
 *     overflow checks, storage that can hold that many values (declared-but-unwritten data is refused),
 *     no external raw data, no virtual layout and only filters this HDF5 has;
 *   - external links are never followed (a dump is read from its own file only).
 * Any failure is QD_EINPUT with one line naming the file and the attribute or dataset. */
#ifndef QD_H5READ_H
#define QD_H5READ_H

#include <stdint.h>

#include "qd_config.h"
#include "qd_util.h"

typedef struct qd_h5in qd_h5in;

/* Opens a dump and reads what every later read is checked against: the root attributes `schema` and
 * `config_json`, and /input_ids (an integer dataset of 1..max_position_embeddings ids, each below
 * vocab_size). */
qd_h5in *qd_h5in_open(const char *path, qd_err *e);
void qd_h5in_close(qd_h5in *f);

/* The model of the dump (from its config_json) and its number of tokens T (from /input_ids). */
const qd_config *qd_h5in_config(const qd_h5in *f);
int qd_h5in_T(const qd_h5in *f);

/* Path of a tap inside the file: "/<backend>/<tap>" for layer -1, else "/<backend>/layers/NNN/<tap>". */
void qd_h5_tap_path(char *buf, size_t n, const char *backend, int layer, const char *tap);

/* 1 when every link of path exists (external links are not followed: a path through one is absent). */
int qd_h5in_has(qd_h5in *f, const char *path);

/* Reads one tap (layer -1 with a qd_model_tap, else a qd_layer_tap) of a backend group, converted to
 * float32, after checking its type and that its shape is exactly the one config_json and T give
 * (qd_layer_tap_shape / qd_model_tap_shape). *data (shape (ndim, shape)) is malloc'd; NULL on error. */
int qd_h5in_read_tap(qd_h5in *f, const char *backend, int layer, int tap, float **data, int *ndim, int64_t shape[3],
                     qd_err *e);

/* qd_h5in_read_tap for a tap given by its path ("/<backend>/<tap>" or "/<backend>/layers/NNN/<tap>"); a
 * path that names no tap is QD_EINPUT. */
int qd_h5in_read_f32(qd_h5in *f, const char *path, float **data, int *ndim, int64_t shape[3], qd_err *e);

/* A copy of /input_ids (T ids, checked at open). *ids is malloc'd. */
int qd_h5in_input_ids(qd_h5in *f, int32_t **ids, int *T, qd_err *e);

/* Every link under /<backend>/layers is a layer of the model: "000" .. L-1 (L from config_json). A layer
 * group past the model, or a stray name, would otherwise be silently left out of a comparison. */
int qd_h5in_check_layers(qd_h5in *f, const char *backend, qd_err *e);

/* The backend groups of the file: root groups carrying a 'precision' attribute, as "a, b" in names.
 * Returns how many. */
int qd_h5in_backends(qd_h5in *f, char *names, size_t n);

/* Reads a string attribute of the object at path ("/" for the root) into buf: it must be one string
 * (scalar or one element) shorter than n bytes. */
int qd_h5in_attr_string(qd_h5in *f, const char *path, const char *attr, char *buf, size_t n, qd_err *e);

/* An integer attribute (one value, any integer type) of the object at path, read as 64-bit. */
int qd_h5in_attr_int(qd_h5in *f, const char *path, const char *attr, long long *v, qd_err *e);

/* The groups directly under path (hard links only), as "a, b" in names (truncated to n). Returns how many;
 * 0 when path is not a group. */
int qd_h5in_groups(qd_h5in *f, const char *path, char *names, size_t n);

/* A 1-D table of compound records (the /diff tables): the dataset at path must be a compound of rank 1 with
 * at most max_rows rows, its storage checked as a tap's; it is read into *recs (n x rec_size bytes, zeroed
 * first, malloc'd; NULL when n is 0) through the memory type make_type() gives (members matched by name;
 * the caller closes nothing); a table lacking a field of that type is QD_EINPUT naming it. */
int qd_h5in_read_table(qd_h5in *f, const char *path, int64_t (*make_type)(void), size_t rec_size, size_t max_rows,
                       void **recs, size_t *n, qd_err *e);

#endif
