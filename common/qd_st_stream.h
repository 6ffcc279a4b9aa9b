/* qd_st_stream.h: the streaming form of qd_st_write (common/st_write.c).
 *
 * qd_st_write needs every tensor in memory at once; a synthetic 8B checkpoint does not fit. Here the
 * writer asks a callback for each tensor's bytes in order, in chunks, so memory stays bounded by one
 * chunk. qd_st_write is this function with a callback that copies from entries[i].data, so both share
 * one code path and one on-disk layout. */
#ifndef QD_ST_STREAM_H
#define QD_ST_STREAM_H

#include <stddef.h>

#include "qd_safetensors.h"

/* Fills buf with bytes [offset, offset + nbytes) of tensor `index`. Called for index 0..n-1 in order,
 * with offset starting at 0 and increasing contiguously; nbytes is a multiple of 8 except for the last
 * chunk of a tensor. Returns QD_OK or an error code (with e filled), which aborts the write. */
typedef int (*qd_st_fill_fn)(void *ctx, int index, size_t offset, void *buf, size_t nbytes, qd_err *e);

/* Same file layout and guarantees as qd_st_write (entries[i].data is ignored; may be NULL). */
int qd_st_write_stream(const char *path, const qd_st_entry *entries, int n, const char *metadata_json,
                       qd_st_fill_fn fill, void *ctx, qd_err *e);

/* Byte size of one entry (numel * dtype size), or 0 if it overflows or the entry is malformed. */
size_t qd_st_entry_nbytes(const qd_st_entry *en);

#endif
