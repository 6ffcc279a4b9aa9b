/* st_write.c: writing safetensors files (qd_st_write, qd_st_write_stream) and the dtype table.
 *
 * Layout written, as the reference implementation (huggingface/safetensors) writes it:
 *   u64 LE header length N | N bytes of compact JSON, space-padded so 8 + N is a multiple of 8 | data
 * Tensors are stored back to back in the given order: the reference reader rejects gaps between
 * data_offsets, so a tensor is 8-byte aligned exactly when the byte sizes before it are multiples of 8
 * (true for every Qwen3 tensor, whose dimensions are multiples of 4). "__metadata__" comes first.
 * The file is written to PATH.tmp.<pid> and renamed, so a failure never leaves a partial file under
 * the final name. */
#include "qd_safetensors.h"
#include "qd_st_stream.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *qd_dtype_name(qd_dtype d) {
    switch (d) {
    case QD_DT_F32: return "F32";
    case QD_DT_F16: return "F16";
    case QD_DT_BF16: return "BF16";
    }
    return "?";
}

size_t qd_dtype_size(qd_dtype d) {
    switch (d) {
    case QD_DT_F32: return 4;
    case QD_DT_F16: return 2;
    case QD_DT_BF16: return 2;
    }
    return 0;
}

static int dtype_valid(qd_dtype d) { return d == QD_DT_F32 || d == QD_DT_F16 || d == QD_DT_BF16; }

size_t qd_st_entry_nbytes(const qd_st_entry *en) {
    if (!dtype_valid(en->dtype) || en->ndim < 0 || en->ndim > QD_MAX_DIMS) return 0;
    size_t nb = qd_dtype_size(en->dtype);
    for (int d = 0; d < en->ndim; d++) {
        if (en->shape[d] < 0 || qd_mul_size(nb, (size_t)en->shape[d], &nb) != 0) return 0;
    }
    return nb;
}

/* Builds the padded header text for entries; returns it malloc'd with its length in *len.
 * nbytes (n) receives each entry's byte size. */
static int build_header(const char *path, const qd_st_entry *entries, int n, const char *metadata_json, size_t *nbytes,
                        char **out, size_t *len, qd_err *e) {
    json_t *root = json_object();
    if (!root) return qd_errf(e, QD_ERUNTIME, "%s: json_object() failed", path);
    int rc = QD_OK;

    if (metadata_json) {
        json_error_t je;
        json_t *meta = json_loads(metadata_json, JSON_REJECT_DUPLICATES, &je);
        if (!meta) {
            rc = qd_errf(e, QD_EINPUT, "%s: __metadata__: invalid JSON at line %d: %s", path, je.line, je.text);
            goto done;
        }
        if (!json_is_object(meta)) {
            json_decref(meta);
            rc = qd_errf(e, QD_EINPUT, "%s: __metadata__: must be a JSON object", path);
            goto done;
        }
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v)) {
                json_decref(meta);
                rc = qd_errf(e, QD_EINPUT, "%s: __metadata__: value of '%s' must be a string", path, k);
                goto done;
            }
        }
        json_object_set_new(root, "__metadata__", meta);
    }

    /* json_int_t is 64-bit; offsets beyond it cannot be written. */
    unsigned long long off = 0;
    for (int i = 0; i < n; i++) {
        const qd_st_entry *en = &entries[i];
        if (!en->name || !en->name[0]) {
            rc = qd_errf(e, QD_EINPUT, "%s: entry %d: empty tensor name", path, i);
            goto done;
        }
        if (strcmp(en->name, "__metadata__") == 0) {
            rc = qd_errf(e, QD_EINPUT, "%s: entry %d: '__metadata__' is reserved", path, i);
            goto done;
        }
        if (json_object_get(root, en->name)) {
            rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s': duplicate name", path, en->name);
            goto done;
        }
        if (!dtype_valid(en->dtype)) {
            rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s': dtype: unknown value %d", path, en->name, (int)en->dtype);
            goto done;
        }
        if (en->ndim < 0 || en->ndim > QD_MAX_DIMS) {
            rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s': ndim %d outside [0, %d]", path, en->name, en->ndim,
                         QD_MAX_DIMS);
            goto done;
        }
        json_t *shape = json_array();
        for (int d = 0; d < en->ndim; d++) {
            if (en->shape[d] < 0) {
                json_decref(shape);
                rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s': shape[%d] = %lld is negative", path, en->name, d,
                             (long long)en->shape[d]);
                goto done;
            }
            json_array_append_new(shape, json_integer((json_int_t)en->shape[d]));
        }
        size_t nb = qd_st_entry_nbytes(en);
        int empty = 0;
        for (int d = 0; d < en->ndim; d++) empty |= en->shape[d] == 0;
        if ((nb == 0 && !empty) || nb > (unsigned long long)INT64_MAX - off) {
            json_decref(shape);
            rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s': byte size overflows", path, en->name);
            goto done;
        }
        nbytes[i] = nb;
        json_t *t = json_object();
        json_object_set_new(t, "dtype", json_string(qd_dtype_name(en->dtype)));
        json_object_set_new(t, "shape", shape);
        json_t *offs = json_array();
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)(off + nb)));
        json_object_set_new(t, "data_offsets", offs);
        json_object_set_new(root, en->name, t);
        off += nb;
    }

    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        rc = qd_errf(e, QD_ERUNTIME, "%s: json_dumps failed", path);
        goto done;
    }
    size_t tl = strlen(text), padded = (tl + 7) / 8 * 8; /* 8 + padded: data starts 8-aligned */
    char *buf = qd_alloc(padded + 1, e);
    if (!buf) {
        free(text);
        rc = QD_ERUNTIME;
        goto done;
    }
    memcpy(buf, text, tl);
    memset(buf + tl, ' ', padded - tl);
    buf[padded] = '\0';
    free(text);
    *out = buf;
    *len = padded;
done:
    json_decref(root);
    return rc;
}

static int write_all(FILE *f, const void *p, size_t n, const char *tmp, qd_err *e) {
    if (n && fwrite(p, 1, n, f) != n)
        return qd_errf(e, QD_ERUNTIME, "fwrite(%s): %s", tmp, errno ? strerror(errno) : "short write");
    return QD_OK;
}

/* fill == NULL: write entries[i].data directly (qd_st_write); otherwise ask fill chunk by chunk. */
static int st_write_impl(const char *path, const qd_st_entry *entries, int n, const char *metadata_json,
                         qd_st_fill_fn fill, void *ctx, qd_err *e) {
    if (!path || n < 0 || (n > 0 && !entries))
        return qd_errf(e, QD_EINPUT, "%s: qd_st_write: bad arguments (n=%d)", path ? path : "(null)", n);
    size_t *nbytes = qd_zalloc((size_t)(n > 0 ? n : 1), sizeof *nbytes, e); /* (n) */
    if (!nbytes) return QD_ERUNTIME;
    char *header = NULL, *tmp = NULL, *chunk = NULL;
    size_t hlen = 0;
    FILE *f = NULL;
    int rc = build_header(path, entries, n, metadata_json, nbytes, &header, &hlen, e);
    if (rc) goto out;
    if (!fill) {
        for (int i = 0; i < n; i++) {
            if (nbytes[i] > 0 && !entries[i].data) {
                rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s': data is NULL", path, entries[i].name);
                goto out;
            }
        }
    }

    size_t tmplen = strlen(path) + 32;
    if (!(tmp = qd_alloc(tmplen, e))) {
        rc = QD_ERUNTIME;
        goto out;
    }
    snprintf(tmp, tmplen, "%s.tmp.%ld", path, (long)getpid());
    f = fopen(tmp, "wb");
    if (!f) {
        rc = qd_errf(e, QD_ERUNTIME, "fopen(%s): %s", tmp, strerror(errno));
        goto out;
    }

    unsigned char le[8];
    for (int b = 0; b < 8; b++) le[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
    errno = 0;
    if ((rc = write_all(f, le, 8, tmp, e)) || (rc = write_all(f, header, hlen, tmp, e))) goto fail;

    /* 16 MiB chunks (a multiple of 8) bound the memory of the streaming path. */
    const size_t chunk_max = (size_t)16 << 20;
    if (fill && !(chunk = qd_alloc(chunk_max, e))) {
        rc = QD_ERUNTIME;
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        if (!fill) {
            if ((rc = write_all(f, entries[i].data, nbytes[i], tmp, e))) goto fail;
            continue;
        }
        for (size_t o = 0; o < nbytes[i]; o += chunk_max) {
            size_t m = nbytes[i] - o < chunk_max ? nbytes[i] - o : chunk_max;
            if ((rc = fill(ctx, i, o, chunk, m, e))) goto fail;
            errno = 0;
            if ((rc = write_all(f, chunk, m, tmp, e))) goto fail;
        }
    }
    errno = 0;
    if (fflush(f) != 0 || ferror(f)) {
        rc = qd_errf(e, QD_ERUNTIME, "fflush(%s): %s", tmp, errno ? strerror(errno) : "write error");
        goto fail;
    }
    FILE *fc = f;
    f = NULL;
    if (fclose(fc) != 0) {
        rc = qd_errf(e, QD_ERUNTIME, "fclose(%s): %s", tmp, strerror(errno));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        rc = qd_errf(e, QD_ERUNTIME, "rename(%s, %s): %s", tmp, path, strerror(errno));
        goto fail;
    }
    goto out;
fail:
    if (f) fclose(f);
    f = NULL;
    remove(tmp);
out:
    free(chunk);
    free(tmp);
    free(header);
    free(nbytes);
    return rc;
}

int qd_st_write(const char *path, const qd_st_entry *entries, int n, const char *metadata_json, qd_err *e) {
    return st_write_impl(path, entries, n, metadata_json, NULL, NULL, e);
}

int qd_st_write_stream(const char *path, const qd_st_entry *entries, int n, const char *metadata_json,
                       qd_st_fill_fn fill, void *ctx, qd_err *e) {
    if (!fill) return qd_errf(e, QD_EINPUT, "%s: qd_st_write_stream: fill callback is NULL", path ? path : "(null)");
    return st_write_impl(path, entries, n, metadata_json, fill, ctx, e);
}
