/* qd_h5read.h: reading schema-v1 dumps (ours, transformers' goldens from tools/hf_golden.py, or any
 * engine's) for offline comparison. Files whose root attr `schema` is not "qwen3-diff/1" are refused
 * (QD_EINPUT, naming the file and the attribute). */
#ifndef QD_H5READ_H
#define QD_H5READ_H

#include <stdint.h>

#include "qd_util.h"

typedef struct qd_h5in qd_h5in;

qd_h5in *qd_h5in_open(const char *path, qd_err *e);
void qd_h5in_close(qd_h5in *f);

/* Path of a tap inside the file: "/<backend>/<tap>" for layer -1, else "/<backend>/layers/NNN/<tap>". */
void qd_h5_tap_path(char *buf, size_t n, const char *backend, int layer, const char *tap);

int qd_h5in_has(qd_h5in *f, const char *path);

/* Reads a float dataset (converted to float32 by HDF5) of rank <= 3. *data is malloc'd. */
int qd_h5in_read_f32(qd_h5in *f, const char *path, float **data, int *ndim, int64_t shape[3], qd_err *e);

/* Reads /input_ids (int32). */
int qd_h5in_input_ids(qd_h5in *f, int32_t **ids, int *T, qd_err *e);

/* The backend groups of the file: root groups carrying a 'precision' attribute, as "a, b" in names.
 * Returns how many. */
int qd_h5in_backends(qd_h5in *f, char *names, size_t n);

/* Reads a string attribute of the object at path ("/" for the root) into buf. */
int qd_h5in_attr_string(qd_h5in *f, const char *path, const char *attr, char *buf, size_t n, qd_err *e);

#endif
