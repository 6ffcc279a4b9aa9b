/* safetensors.c: reading safetensors files and checkpoint directories (see qd_safetensors.h).
 *
 * Files are memory-mapped read-only and every header entry is validated before any tensor is
 * returned, so a tensor's data pointer always lies inside its mapping and never overlaps another
 * tensor. The checks mirror the reference implementation's (header length, JSON object, dtype,
 * numel * itemsize == end - begin with overflow checks, offsets inside the data section, no
 * overlaps); unlike it we accept gaps between tensors, which change nothing for a reader. The
 * writer (qd_st_write, qd_dtype_name, qd_dtype_size) lives in st_write.c. */
#include "qd_json.h"
#include "qd_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qd_bf16.h"

/* Tensor data is read in place from the mapping; safetensors is little-endian. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c reads little-endian data in place; a big-endian host needs byte swapping"
#endif

// ----------------------------------------------------------------------------
// small helpers

/* NULL with e filled when out of memory. */
static char *str_dup(const char *s, qd_err *e) {
    size_t n = strlen(s) + 1;
    char *p = qd_alloc(n, e);
    if (p) memcpy(p, s, n);
    return p;
}

/* Grows a malloc'd array from n to n + add elements of size sz (old contents kept). On failure
 * returns NULL with e filled and leaves p untouched, so the caller's array stays valid. */
static void *grow(void *p, size_t n, size_t add, size_t sz, qd_err *e) {
    size_t bytes;
    if (qd_mul_size(n + add, sz, &bytes)) {
        qd_errf(e, QD_ERUNTIME, "out of memory: %zu elements of %zu bytes overflow a size", n + add, sz);
        return NULL;
    }
    void *q = qd_alloc(bytes, e);
    if (!q) return NULL;
    if (n) memcpy(q, p, n * sz);
    free(p);
    return q;
}

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Reads "F32" / "F16" / "BF16"; anything else (I64, F64, F8_E4M3, ...) the caller refuses. */
static int parse_dtype(const char *s, qd_dtype *d) {
    if (strcmp(s, "F32") == 0) *d = QD_DT_F32;
    else if (strcmp(s, "F16") == 0) *d = QD_DT_F16;
    else if (strcmp(s, "BF16") == 0) *d = QD_DT_BF16;
    else return -1;
    return 0;
}

static size_t itemsize(qd_dtype d) { return d == QD_DT_F32 ? 4 : 2; }

// ----------------------------------------------------------------------------
// one header entry

typedef struct {
    size_t begin, end; /* byte range in the data section */
    int idx;           /* index into the file's tensor list */
} span;

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Validates one entry against a data section of data_size bytes and fills t (name not set). */
static int parse_entry(const char *path, const char *name, const json_t *v, size_t data_size, qd_tensor *t, span *sp,
                       qd_err *e) {
    if (!json_is_object(v))
        return qd_errf(e, QD_EINPUT, "%s: tensor '%s': expected an object, got %s", path, name, qd_json_type_name(v));
    const json_t *dt = json_object_get(v, "dtype");
    const json_t *sh = json_object_get(v, "shape");
    const json_t *off = json_object_get(v, "data_offsets");
    if (!dt || !json_is_string(dt))
        return qd_errf(e, QD_EINPUT, "%s: tensor '%s': field 'dtype': expected a string, got %s", path, name,
                       dt ? qd_json_type_name(dt) : "nothing");
    if (parse_dtype(json_string_value(dt), &t->dtype))
        return qd_errf(e, QD_EINPUT, "%s: tensor '%s': unsupported dtype '%s' (supported: F32, F16, BF16)", path, name,
                       json_string_value(dt));
    if (!sh || !json_is_array(sh))
        return qd_errf(e, QD_EINPUT, "%s: tensor '%s': field 'shape': expected an array, got %s", path, name,
                       sh ? qd_json_type_name(sh) : "nothing");
    if (json_array_size(sh) > QD_MAX_DIMS)
        return qd_errf(e, QD_EINPUT, "%s: tensor '%s': field 'shape': %zu dimensions, at most %d supported", path, name,
                       json_array_size(sh), QD_MAX_DIMS);
    t->ndim = (int)json_array_size(sh);
    size_t numel = 1;
    int overflow = 0;
    for (int i = 0; i < t->ndim; i++) {
        const json_t *d = json_array_get(sh, (size_t)i);
        if (!json_is_integer(d))
            return qd_errf(e, QD_EINPUT, "%s: tensor '%s': field 'shape[%d]': expected an integer, got %s", path, name,
                           i, qd_json_type_name(d));
        json_int_t x = json_integer_value(d);
        if (x < 0)
            return qd_errf(e, QD_EINPUT, "%s: tensor '%s': field 'shape[%d]': %lld is negative", path, name, i,
                           (long long)x);
        t->shape[i] = (int64_t)x;
        if (qd_mul_size(numel, (size_t)x, &numel)) overflow = 1; /* x >= 0 fits size_t */
    }
    char sbuf[128];
    fmt_shape(sbuf, sizeof sbuf, t->ndim, t->shape);
    size_t nbytes = 0;
    if (overflow || qd_mul_size(numel, itemsize(t->dtype), &nbytes))
        return qd_errf(e, QD_EINPUT, "%s: tensor '%s': shape %s overflows the size of a tensor", path, name, sbuf);
    if (!off || !json_is_array(off) || json_array_size(off) != 2)
        return qd_errf(e, QD_EINPUT, "%s: tensor '%s': field 'data_offsets': expected an array of 2 integers", path,
                       name);
    const json_t *b = json_array_get(off, 0), *en = json_array_get(off, 1);
    if (!json_is_integer(b) || !json_is_integer(en))
        return qd_errf(e, QD_EINPUT, "%s: tensor '%s': field 'data_offsets': expected an array of 2 integers", path,
                       name);
    json_int_t ob = json_integer_value(b), oe = json_integer_value(en);
    if (ob < 0 || oe < ob)
        return qd_errf(e, QD_EINPUT, "%s: tensor '%s': data_offsets [%lld, %lld] out of range", path, name,
                       (long long)ob, (long long)oe);
    if ((unsigned long long)oe > data_size)
        return qd_errf(e, QD_EINPUT,
                       "%s: tensor '%s': data_offsets [%lld, %lld] out of range: the data section "
                       "holds %zu bytes (file truncated?)",
                       path, name, (long long)ob, (long long)oe, data_size);
    if ((size_t)(oe - ob) != nbytes)
        return qd_errf(e, QD_EINPUT,
                       "%s: tensor '%s': data_offsets [%lld, %lld] hold %lld bytes but shape %s of %s "
                       "needs %zu",
                       path, name, (long long)ob, (long long)oe, (long long)(oe - ob), sbuf, json_string_value(dt),
                       nbytes);
    t->nbytes = nbytes;
    sp->begin = (size_t)ob;
    sp->end = (size_t)oe;
    return QD_OK;
}

// ----------------------------------------------------------------------------
// one file

int qd_st_open_file(qd_st *st, const char *path, qd_err *e) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qd_errf(e, errno == ENOENT ? QD_EINPUT : QD_ERUNTIME, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return qd_errf(e, QD_ERUNTIME, "%s: fstat: %s", path, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return qd_errf(e, QD_EINPUT, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) {
        close(fd);
        return qd_errf(e, QD_EINPUT, "%s: truncated: %zu bytes, shorter than the 8-byte header length", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_err = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return qd_errf(e, QD_ERUNTIME, "%s: mmap: %s", path, strerror(map_err));
    const unsigned char *bytes = map;

    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | bytes[i];
    int rc = QD_OK;
    json_t *root = NULL;
    qd_tensor *ts = NULL;
    span *spans = NULL;
    char *fname = NULL; /* the file's name, shared by its tensors once committed */
    size_t nt = 0;
    if (hlen > size - 8) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: header length %llu runs past the end of the file (%zu bytes): truncated or "
                     "not a safetensors file",
                     path, (unsigned long long)hlen, size);
        goto fail;
    }
    json_error_t jerr;
    root = json_loadb((const char *)bytes + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        rc = qd_errf(e, QD_EINPUT, "%s: header is not valid JSON (column %d: %s)", path, jerr.column, jerr.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = qd_errf(e, QD_EINPUT, "%s: header: expected a JSON object, got %s", path, qd_json_type_name(root));
        goto fail;
    }
    size_t data_size = size - 8 - (size_t)hlen;
    const unsigned char *data = bytes + 8 + hlen;
    size_t cap = json_object_size(root);
    ts = qd_zalloc(cap ? cap : 1, sizeof *ts, e);
    spans = qd_zalloc(cap ? cap : 1, sizeof *spans, e);
    if (!ts || !spans) {
        rc = QD_ERUNTIME;
        goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue; /* free-form string map; nothing we need */
        qd_tensor *t = &ts[nt];
        if ((rc = parse_entry(path, key, val, data_size, t, &spans[nt], e))) goto fail;
        if (!(t->name = str_dup(key, e))) {
            rc = QD_ERUNTIME;
            goto fail;
        }
        t->data = data + spans[nt].begin;
        spans[nt].idx = (int)nt;
        nt++;
    }

    /* Overlaps: sorted by begin, each non-empty tensor must start at or after the previous end. */
    qsort(spans, nt, sizeof *spans, span_cmp);
    size_t prev_end = 0;
    int prev = -1;
    for (size_t i = 0; i < nt; i++) {
        if (spans[i].begin == spans[i].end) continue; /* empty tensors occupy no bytes */
        if (prev >= 0 && spans[i].begin < prev_end) {
            rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s': data_offsets [%zu, %zu] overlap tensor '%s' (ends at %zu)",
                         path, ts[spans[i].idx].name, spans[i].begin, spans[i].end, ts[prev].name, prev_end);
            goto fail;
        }
        prev = spans[i].idx;
        prev_end = spans[i].end;
    }

    /* A name already opened from another shard. */
    for (size_t i = 0; i < nt; i++) {
        const qd_tensor *old = qd_st_find(st, ts[i].name);
        if (old) {
            rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s' is also in %s (duplicate across shards)", path, ts[i].name,
                         old->file);
            goto fail;
        }
    }

    /* Commit: append the file and its tensors to st. Every allocation comes first; an array that
     * grew before a later one failed keeps its old contents and counts, so st stays as it was. */
    void *g;
    if (!(fname = str_dup(path, e))) goto oom;
    if (!(g = grow(st->files, (size_t)st->nfiles, 1, sizeof *st->files, e))) goto oom;
    st->files = g;
    if (!(g = grow(st->maps, (size_t)st->nfiles, 1, sizeof *st->maps, e))) goto oom;
    st->maps = g;
    if (!(g = grow(st->map_sizes, (size_t)st->nfiles, 1, sizeof *st->map_sizes, e))) goto oom;
    st->map_sizes = g;
    if (!(g = grow(st->tensors, (size_t)st->n, nt, sizeof *st->tensors, e))) goto oom;
    st->tensors = g;
    st->files[st->nfiles] = fname;
    st->maps[st->nfiles] = map;
    st->map_sizes[st->nfiles] = size;
    st->nfiles++;
    for (size_t i = 0; i < nt; i++) {
        ts[i].file = fname;
        st->tensors[st->n++] = ts[i];
    }
    free(ts);
    free(spans);
    json_decref(root);
    return QD_OK;

oom:
    rc = QD_ERUNTIME;
fail:
    free(fname);
    for (size_t i = 0; i < nt; i++) free(ts[i].name);
    free(ts);
    free(spans);
    json_decref(root);
    munmap(map, size);
    return rc;
}

// ----------------------------------------------------------------------------
// a checkpoint directory

/* A shard name is a plain file name inside the checkpoint directory, never a path out of it. */
static int shard_name_ok(const char *s) {
    return s[0] != '\0' && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int open_index(qd_st *st, const char *dir, const char *ipath, qd_err *e) {
    char *text = NULL;
    int rc = qd_read_file(ipath, &text, NULL, e);
    if (rc) return rc;
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return qd_errf(e, QD_EINPUT, "%s: invalid JSON at line %d, column %d: %s", ipath, jerr.line, jerr.column,
                       jerr.text);
    const char **shards = NULL;
    char **spaths = NULL;
    size_t nshards = 0;
    const int n0 = st->n;
    const json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(root)) {
        rc = qd_errf(e, QD_EINPUT, "%s: expected a JSON object, got %s", ipath, qd_json_type_name(root));
        goto done;
    }
    if (!wm || !json_is_object(wm)) {
        rc = qd_errf(e, QD_EINPUT, "%s: field 'weight_map': expected an object, got %s", ipath,
                     wm ? qd_json_type_name(wm) : "nothing");
        goto done;
    }
    if (json_object_size(wm) == 0) {
        rc = qd_errf(e, QD_EINPUT, "%s: field 'weight_map' is empty", ipath);
        goto done;
    }

    /* Distinct shard names, in order of first appearance. */
    shards = qd_zalloc(json_object_size(wm), sizeof *shards, e);
    if (!shards) {
        rc = QD_ERUNTIME;
        goto done;
    }
    const char *name;
    const json_t *v;
    json_object_foreach((json_t *)wm, name, v) {
        if (!json_is_string(v)) {
            rc = qd_errf(e, QD_EINPUT, "%s: weight_map['%s']: expected a string, got %s", ipath, name,
                         qd_json_type_name(v));
            goto done;
        }
        const char *s = json_string_value(v);
        if (!shard_name_ok(s)) {
            rc = qd_errf(e, QD_EINPUT,
                         "%s: weight_map['%s']: shard '%s' is not a file name inside the checkpoint "
                         "directory",
                         ipath, name, s);
            goto done;
        }
        size_t k = 0;
        while (k < nshards && strcmp(shards[k], s) != 0) k++;
        if (k == nshards) shards[nshards++] = s;
    }

    spaths = qd_zalloc(nshards, sizeof *spaths, e);
    if (!spaths) {
        rc = QD_ERUNTIME;
        goto done;
    }
    for (size_t k = 0; k < nshards; k++) {
        if (!(spaths[k] = qd_path_join(dir, shards[k], e))) {
            rc = QD_ERUNTIME;
            goto done;
        }
        if ((rc = qd_st_open_file(st, spaths[k], e))) goto done;
    }

    /* Every listed tensor is in the shard that the index names... */
    json_object_foreach((json_t *)wm, name, v) {
        size_t k = 0;
        while (strcmp(shards[k], json_string_value(v)) != 0) k++;
        const qd_tensor *t = qd_st_find(st, name);
        if (!t || strcmp(t->file, spaths[k]) != 0) {
            rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s' is listed in shard '%s' but not found in %s%s%s", ipath, name,
                         shards[k], spaths[k], t ? "; it is in " : "", t ? t->file : "");
            goto done;
        }
    }
    /* ...and every tensor of those shards is listed: an unlisted one means the index and the shards
     * come from different checkpoints. */
    for (int i = n0; i < st->n; i++) {
        if (!json_object_get(wm, st->tensors[i].name)) {
            rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s' is not listed in the weight_map of %s", st->tensors[i].file,
                         st->tensors[i].name, ipath);
            goto done;
        }
    }

done:
    if (spaths)
        for (size_t k = 0; k < nshards; k++) free(spaths[k]);
    free(spaths);
    free(shards);
    json_decref(root);
    return rc;
}

int qd_st_open_dir(qd_st *st, const char *dir, qd_err *e) {
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return qd_errf(e, errno == ENOENT || errno == ENOTDIR ? QD_EINPUT : QD_ERUNTIME,
                       "%s: cannot open checkpoint directory: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return qd_errf(e, QD_EINPUT, "%s: not a directory", dir);
    char *single = qd_path_join(dir, "model.safetensors", e);
    char *index = single ? qd_path_join(dir, "model.safetensors.index.json", e) : NULL;
    int rc;
    if (!index) rc = QD_ERUNTIME;
    else if (stat(single, &sb) == 0) rc = qd_st_open_file(st, single, e);
    else if (stat(index, &sb) == 0) rc = open_index(st, dir, index, e);
    else rc = qd_errf(e, QD_EINPUT, "%s: no checkpoint: neither %s nor %s exists", dir, single, index);
    free(single);
    free(index);
    return rc;
}

// ----------------------------------------------------------------------------
// access

const qd_tensor *qd_st_find(const qd_st *st, const char *name) {
    for (int i = 0; i < st->n; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

int64_t qd_tensor_numel(const qd_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

void qd_tensor_to_f32(const qd_tensor *t, float *dst) {
    const unsigned char *p = t->data;
    size_t n = (size_t)qd_tensor_numel(t);
    switch (t->dtype) {
    case QD_DT_F32: memcpy(dst, p, n * 4); break;
    case QD_DT_BF16: /* every bf16 value is exactly representable in fp32 */
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2); /* data may be unaligned */
            dst[i] = qd_bf16_to_f32(h);
        }
        break;
    case QD_DT_F16: /* so is every fp16 value, subnormals included */
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = qd_f16_to_f32(h);
        }
        break;
    }
}

void qd_tensor_release(const qd_tensor *t) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = ((uintptr_t)t->data + page - 1) / page * page,
                    b = ((uintptr_t)t->data + t->nbytes) / page * page;
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED); /* advice: a failure changes nothing */
}

void qd_st_close(qd_st *st) {
    for (int i = 0; i < st->n; i++) free(st->tensors[i].name);
    for (int k = 0; k < st->nfiles; k++) {
        munmap(st->maps[k], st->map_sizes[k]);
        free(st->files[k]);
    }
    free(st->tensors);
    free(st->files);
    free(st->maps);
    free(st->map_sizes);
    memset(st, 0, sizeof *st);
}
