/* qd_safetensors.h: reading and writing the safetensors format.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON header
 *   {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {..}}
 * then the data; offsets are relative to the first byte after the header.
 * Files are memory-mapped read-only. Every header is validated before any tensor is used: header length
 * within the file, valid JSON object, known dtype, shape non-negative, end-begin == numel*itemsize,
 * offsets inside the data section and not overlapping. Violations are QD_EINPUT with the file name and
 * the tensor name in the message. */
#ifndef QD_SAFETENSORS_H
#define QD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "qd_util.h"

typedef enum { QD_DT_F32 = 0, QD_DT_F16 = 1, QD_DT_BF16 = 2 } qd_dtype;

#define QD_MAX_DIMS 4

typedef struct {
    char *name; /* e.g. "model.layers.0.self_attn.q_proj.weight" */
    qd_dtype dtype;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    const void *data; /* points into the mapping; little-endian, possibly unaligned */
    size_t nbytes;
    const char *file; /* the file it came from (owned by the qd_st) */
} qd_tensor;

typedef struct {
    qd_tensor *tensors; /* (n) */
    int n;
    /* private: mappings of each file */
    int nfiles;
    char **files;      /* (nfiles) */
    void **maps;       /* (nfiles) */
    size_t *map_sizes; /* (nfiles) */
} qd_st;

const char *qd_dtype_name(qd_dtype d); /* "F32", "F16", "BF16" */
size_t qd_dtype_size(qd_dtype d);      /* 4, 2, 2 */

/* Opens one .safetensors file and appends its tensors to st (st zero-initialised by the caller for the
 * first call). A tensor name already present in st is an error (duplicate across shards). */
int qd_st_open_file(qd_st *st, const char *path, qd_err *e);

/* Opens a checkpoint directory: DIR/model.safetensors, or DIR/model.safetensors.index.json whose
 * weight_map names the shards (each shard opened once; every name in weight_map must be found in the
 * shard it names). Neither present is QD_EINPUT naming both. */
int qd_st_open_dir(qd_st *st, const char *dir, qd_err *e);

const qd_tensor *qd_st_find(const qd_st *st, const char *name);

/* Copies a tensor into dst as fp32 (upcasting BF16/F16 exactly). dst holds numel floats. */
void qd_tensor_to_f32(const qd_tensor *t, float *dst);
int64_t qd_tensor_numel(const qd_tensor *t);
/* Tells the kernel the tensor's bytes are no longer needed (their whole pages leave the resident set;
 * were they read again they would come back from the file). For a loader that has copied it out: the
 * mapped checkpoint and its fp32 copy are then not both resident at the peak. */
void qd_tensor_release(const qd_tensor *t);

void qd_st_close(qd_st *st);

/* --- writing (fixtures and tests) --- */
typedef struct {
    const char *name;
    qd_dtype dtype;
    int ndim;
    int64_t shape[QD_MAX_DIMS];
    const void *data; /* numel * dtype_size bytes, already in the target dtype */
} qd_st_entry;

/* Writes a safetensors file with the entries in the given order (8-byte aligned data, header padded
 * with spaces to a multiple of 8 as the reference implementation does). metadata_json may be NULL or a
 * JSON object text stored as "__metadata__". Written to PATH.tmp and renamed, so a failure never leaves
 * a half-written file under the final name. */
int qd_st_write(const char *path, const qd_st_entry *entries, int n, const char *metadata_json, qd_err *e);

#endif
