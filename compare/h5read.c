/* h5read.c: see qd_h5read.h.
 *
 * The order of every read is: what HDF5 says the object is (type class, dataspace, layout), against what
 * the schema and the model say it must be, then the allocation, sized from the checked numbers, then the
 * H5Aread / H5Dread that fills it. A crafted file can therefore make a read fail, never make it write
 * past a buffer or allocate more than the model's own tensors need. */
#include "qd_h5read.h"

#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qd_files.h"
#include "qd_taps.h"
#include "qd_tokens.h"

#define SCHEMA "qwen3-diff/1"
/* config_json is a config.json (a few KB); 1 MiB bounds a hostile one */
#define MAX_CONFIG_JSON ((size_t)1 << 20)
/* deflate cannot compress by more than 1032:1 (a 258-byte match in ~2 bits); 4x headroom for the other
 * filters an HDF5 build may carry. Storage smaller than nbytes / MAX_INFLATE cannot hold the data. */
#define MAX_INFLATE 4096
/* qwen3-diff and h5py's automatic chunking both write chunks of at most 1 MiB. A chunk may be larger
 * than the data only up to that: HDF5 1.10.8 copies a whole declared chunk out of a filtered chunk that
 * decompresses to less (tests/fuzz/README.md), so this bounds what such a file can make it over-read */
#define MAX_CHUNK_BYTES ((size_t)1 << 20)

struct qd_h5in {
    hid_t file;
    hid_t lapl; /* link access: external links are refused */
    char *path;
    qd_config cfg; /* from config_json */
    int T;         /* length of /input_ids */
    int32_t *ids;  /* (T) */
};

// ----------------------------------------------------------------------------
// helpers

/* HDF5's innermost error text (its own message, without file and line), for a failed read. */
static herr_t innermost_desc(unsigned n, const H5E_error2_t *err, void *ctx) {
    if (n == 0 && err->desc) snprintf(ctx, 200, "%s", err->desc);
    return 0;
}

static int h5_read_fail(const qd_h5in *f, const char *call, const char *object, qd_err *e) {
    char detail[200] = "";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_desc, detail);
    return qd_errf(e, QD_EINPUT, "%s: %s of '%s' failed (a damaged or hand-made file?)%s%s", f->path, call, object,
                   detail[0] ? ": " : "", detail);
}

/* External links would open another file named by the dump: never followed. */
static herr_t deny_external_link(const char *parent_file, const char *parent_group, const char *child_file,
                                 const char *child_object, unsigned *acc_flags, hid_t fapl, void *ctx) {
    (void)parent_file, (void)parent_group, (void)child_file, (void)child_object, (void)acc_flags, (void)fapl, (void)ctx;
    return -1;
}

static void shape_str(char *buf, size_t n, int ndim, const hsize_t *dims) {
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    if (k < n) snprintf(buf + k, n - k, "%s)", ndim == 1 ? "," : "");
}

/* IEEE binary32 and binary64 (either byte order), and the two 16-bit formats engines store activations
 * in: IEEE binary16 (h5py's float16) and bfloat16. Other bit layouts are refused rather than handed to
 * HDF5's generic float conversion. */
static int float_type_ok(hid_t type) {
    if (H5Tget_class(type) != H5T_FLOAT) return 0;
    size_t size = H5Tget_size(type);
    if (size == 4) return H5Tequal(type, H5T_IEEE_F32LE) > 0 || H5Tequal(type, H5T_IEEE_F32BE) > 0;
    if (size == 8) return H5Tequal(type, H5T_IEEE_F64LE) > 0 || H5Tequal(type, H5T_IEEE_F64BE) > 0;
    if (size != 2 || H5Tget_precision(type) != 16 || H5Tget_offset(type) != 0) return 0;
    size_t spos, epos, esize, mpos, msize;
    if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0 || spos != 15 || mpos != 0) return 0;
    size_t ebias = H5Tget_ebias(type);
    return (epos == 10 && esize == 5 && msize == 10 && ebias == 15) ||
           (epos == 7 && esize == 8 && msize == 7 && ebias == 127);
}

/* The checks every dataset read shares, on an open dataset: rank and shape exactly `want`, storage
 * (layout, external files, filters, stored bytes) able to hold it. *n gets the element count. */
static int check_dataset(const qd_h5in *f, hid_t ds, const char *path, int ndim, const hsize_t *want, size_t elem_size,
                         size_t *n, qd_err *e) {
    int rc = QD_OK;
    hid_t space = H5Dget_space(ds), dcpl = H5Dget_create_plist(ds);
    hsize_t dims[H5S_MAX_RANK];
    char have_s[200], want_s[200];
    if (space < 0 || dcpl < 0) {
        rc = h5_read_fail(f, "H5Dget_space", path, e);
        goto out;
    }
    int rank = H5Sget_simple_extent_type(space) == H5S_SIMPLE ? H5Sget_simple_extent_ndims(space) : 0;
    if (rank < 0 || rank > H5S_MAX_RANK || H5Sget_simple_extent_dims(space, dims, NULL) < 0) rank = 0;
    shape_str(want_s, sizeof want_s, ndim, want);
    if (rank != ndim) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: dataset '%s': rank %d, expected %d %s (T from /input_ids, sizes from "
                     "config_json)",
                     f->path, path, rank, ndim, want_s);
        goto out;
    }
    int same = 1;
    for (int i = 0; i < ndim; i++) same &= dims[i] == want[i];
    if (!same) {
        shape_str(have_s, sizeof have_s, rank, dims);
        rc = qd_errf(e, QD_EINPUT,
                     "%s: dataset '%s': shape %s, expected %s (T from /input_ids, sizes from "
                     "config_json)",
                     f->path, path, have_s, want_s);
        goto out;
    }
    size_t count = 1, nbytes;
    for (int i = 0; i < ndim && rc == QD_OK; i++)
        if (qd_mul_size(count, (size_t)want[i], &count))
            rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s': %s elements overflow size_t", f->path, path, want_s);
    if (rc == QD_OK && qd_mul_size(count, elem_size, &nbytes))
        rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s': %s elements overflow size_t", f->path, path, want_s);
    if (rc) goto out;

    H5D_layout_t layout = H5Pget_layout(dcpl);
    if (layout != H5D_COMPACT && layout != H5D_CONTIGUOUS && layout != H5D_CHUNKED) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: dataset '%s': layout %d (virtual datasets read other files) is not "
                     "readable here",
                     f->path, path, (int)layout);
        goto out;
    }
    if (H5Pget_external_count(dcpl) != 0) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: dataset '%s': raw data in external files (a dump is read from its own "
                     "file only)",
                     f->path, path);
        goto out;
    }
    if (layout == H5D_CHUNKED) {
        hsize_t chunk[H5S_MAX_RANK];
        if (H5Pget_chunk(dcpl, ndim, chunk) != ndim) {
            rc = h5_read_fail(f, "H5Pget_chunk", path, e);
            goto out;
        }
        /* HDF5 allocates whole chunks to read through them (filters, the chunk cache): a chunk may be
         * larger than the data (a resizable dataset's), but not without bound */
        size_t chunk_bytes = elem_size;
        for (int i = 0; i < ndim && rc == QD_OK; i++)
            if (chunk[i] == 0 || qd_mul_size(chunk_bytes, (size_t)chunk[i], &chunk_bytes) ||
                chunk_bytes > (nbytes > MAX_CHUNK_BYTES ? nbytes : MAX_CHUNK_BYTES))
                rc = qd_errf(e, QD_EINPUT,
                             "%s: dataset '%s': chunk dimension %d is %llu: a zero or oversized chunk "
                             "(limit %zu bytes)",
                             f->path, path, i, (unsigned long long)chunk[i],
                             nbytes > MAX_CHUNK_BYTES ? nbytes : MAX_CHUNK_BYTES);
        if (rc) goto out;
    }
    int nfilters = H5Pget_nfilters(dcpl);
    for (int i = 0; i < nfilters; i++) {
        unsigned flags = 0, config = 0, cd[16];
        size_t ncd = sizeof cd / sizeof *cd;
        char name[64] = "";
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, cd, sizeof name, name, &config);
        if (id < 0 || H5Zfilter_avail(id) <= 0) {
            rc = qd_errf(e, QD_EINPUT,
                         "%s: dataset '%s': filter %d ('%.60s') is not available in this HDF5 "
                         "library",
                         f->path, path, (int)id, name);
            goto out;
        }
    }
    /* Declared-but-unwritten data reads back as fill values: refused, so that what is allocated follows
     * what the file holds, not only what it declares. */
    hsize_t stored = H5Dget_storage_size(ds);
    int ok = nfilters > 0 ? stored > 0 && nbytes / MAX_INFLATE <= stored : stored >= nbytes;
    if (!ok && nbytes > 0) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: dataset '%s': %llu bytes stored for %zu bytes of data%s: declared but not "
                     "written",
                     f->path, path, (unsigned long long)stored, nbytes, nfilters > 0 ? " (compressed)" : "");
        goto out;
    }
    *n = count;
out:
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return rc;
}

/* Opens a dataset by path (hard or soft links in this file only). */
static hid_t open_dataset(const qd_h5in *f, const char *path, qd_err *e) {
    H5L_info_t li;
    if (H5Lget_info(f->file, path, &li, f->lapl) >= 0 && li.type != H5L_TYPE_HARD && li.type != H5L_TYPE_SOFT) {
        qd_errf(e, QD_EINPUT, "%s: '%s' is an external link (a dump is read from its own file only)", f->path, path);
        return -1;
    }
    hid_t obj = H5Oopen(f->file, path, f->lapl);
    if (obj < 0) {
        h5_read_fail(f, "H5Oopen", path, e);
        return -1;
    }
    if (H5Iget_type(obj) != H5I_DATASET) {
        H5Oclose(obj);
        qd_errf(e, QD_EINPUT, "%s: '%s' is not a dataset", f->path, path);
        return -1;
    }
    return obj;
}

/* One string attribute of at most max bytes, malloc'd into *out. */
static int attr_string_alloc(const qd_h5in *f, const char *path, const char *attr, size_t max, char **out, qd_err *e) {
    *out = NULL;
    htri_t exists = H5Aexists_by_name(f->file, path, attr, f->lapl);
    if (exists <= 0) return qd_errf(e, QD_EINPUT, "%s: attribute '%s' missing on '%s'", f->path, attr, path);
    hid_t a = H5Aopen_by_name(f->file, path, attr, H5P_DEFAULT, f->lapl);
    if (a < 0) return h5_read_fail(f, "H5Aopen_by_name", attr, e);
    hid_t type = H5Aget_type(a), space = H5Aget_space(a), mem = -1;
    int rc = QD_OK;
    if (type < 0 || space < 0) {
        rc = h5_read_fail(f, "H5Aget_type", attr, e);
        goto out;
    }
    if (H5Tget_class(type) != H5T_STRING) {
        rc = qd_errf(e, QD_EINPUT, "%s: attribute '%s' on '%s' is not a string", f->path, attr, path);
        goto out;
    }
    /* exactly one value: H5Aread writes one element per point of the dataspace */
    H5S_class_t sc = H5Sget_simple_extent_type(space);
    hssize_t points = H5Sget_simple_extent_npoints(space);
    if (!(sc == H5S_SCALAR || (sc == H5S_SIMPLE && points == 1))) {
        rc = qd_errf(e, QD_EINPUT, "%s: attribute '%s' on '%s' holds %lld strings, expected one (a scalar)", f->path,
                     attr, path, sc == H5S_NULL ? 0LL : (long long)points);
        goto out;
    }
    htri_t vl = H5Tis_variable_str(type);
    if (vl < 0) {
        rc = h5_read_fail(f, "H5Tis_variable_str", attr, e);
        goto out;
    }
    if (vl) {
        char *s = NULL;
        mem = H5Tcopy(H5T_C_S1);
        if (mem < 0 || H5Tset_size(mem, H5T_VARIABLE) < 0 || H5Tset_cset(mem, H5Tget_cset(type)) < 0 ||
            H5Aread(a, mem, &s) < 0) {
            rc = h5_read_fail(f, "H5Aread", attr, e);
            goto out;
        }
        size_t len = s ? strlen(s) : 0;
        if (len > max)
            rc = qd_errf(e, QD_EINPUT, "%s: attribute '%s' on '%s': %zu bytes, more than %zu", f->path, attr, path, len,
                         max);
        else if ((*out = qd_alloc(len + 1, e))) memcpy(*out, s ? s : "", len + 1);
        else rc = QD_ERUNTIME;
        if (s) H5free_memory(s);
    } else {
        size_t sz = H5Tget_size(type);
        if (sz == 0 || sz > max) {
            rc = qd_errf(e, QD_EINPUT, "%s: attribute '%s' on '%s': fixed-length string of %zu bytes, more than %zu",
                         f->path, attr, path, sz, max);
            goto out;
        }
        char *buf = qd_zalloc(sz + 1, 1, e); /* (sz + 1): one string and its terminator */
        if (!buf) {
            rc = QD_ERUNTIME;
            goto out;
        }
        if ((mem = H5Tcopy(type)) < 0 || H5Aread(a, mem, buf) < 0) {
            free(buf);
            rc = h5_read_fail(f, "H5Aread", attr, e);
            goto out;
        }
        buf[sz] = '\0';
        *out = buf;
    }
out:
    if (mem >= 0) H5Tclose(mem);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    H5Aclose(a);
    return rc;
}

/* /input_ids: integers, rank 1, 1..max positions, each a token id of the model. */
static int read_input_ids(qd_h5in *f, qd_err *e) {
    const char *path = "/input_ids";
    if (!qd_h5in_has(f, path)) return qd_errf(e, QD_EINPUT, "%s: dataset '%s' not found", f->path, path);
    hid_t ds = open_dataset(f, path, e);
    if (ds < 0) return e->code;
    int rc = QD_OK;
    hid_t type = H5Dget_type(ds), space = H5Dget_space(ds);
    int64_t *wide = NULL; /* (T) */
    int max_T = f->cfg.max_position_embeddings > 0 && f->cfg.max_position_embeddings < QD_TOKENS_MAX_DEFAULT
                    ? f->cfg.max_position_embeddings
                    : QD_TOKENS_MAX_DEFAULT;
    hsize_t dims[H5S_MAX_RANK] = {0};
    if (type < 0 || space < 0) {
        rc = h5_read_fail(f, "H5Dget_type", path, e);
        goto out;
    }
    if (H5Tget_class(type) != H5T_INTEGER || H5Tget_size(type) > 8) {
        rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s': expected an integer type (int32)", f->path, path);
        goto out;
    }
    int rank = H5Sget_simple_extent_type(space) == H5S_SIMPLE ? H5Sget_simple_extent_ndims(space) : 0;
    if (rank != 1 || H5Sget_simple_extent_dims(space, dims, NULL) < 0) {
        rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s': rank %d, expected 1 (T,)", f->path, path, rank < 0 ? 0 : rank);
        goto out;
    }
    if (dims[0] < 1 || dims[0] > (hsize_t)max_T) {
        rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s': %llu ids, expected 1..%d (max_position_embeddings)", f->path,
                     path, (unsigned long long)dims[0], max_T);
        goto out;
    }
    size_t n = 0;
    if ((rc = check_dataset(f, ds, path, 1, dims, H5Tget_size(type), &n, e))) goto out;
    f->T = (int)n;
    /* read wide so that an id beyond int32 is seen, not clipped by the conversion */
    if (!(wide = qd_alloc(n * sizeof *wide, e)) || !(f->ids = qd_alloc(n * sizeof *f->ids, e))) {
        rc = QD_ERUNTIME;
        goto out;
    }
    if (H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, wide) < 0) {
        rc = h5_read_fail(f, "H5Dread", path, e);
        goto out;
    }
    for (size_t t = 0; t < n; t++) {
        if (wide[t] < 0 || wide[t] >= f->cfg.vocab_size) {
            rc = qd_errf(e, QD_EINPUT,
                         "%s: dataset '%s': id %lld at position %zu is not in 0..%d (vocab_size "
                         "in config_json)",
                         f->path, path, (long long)wide[t], t, f->cfg.vocab_size - 1);
            goto out;
        }
        f->ids[t] = (int32_t)wide[t];
    }
out:
    free(wide);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    H5Dclose(ds);
    return rc;
}

// ----------------------------------------------------------------------------
// API

void qd_h5_tap_path(char *buf, size_t n, const char *backend, int layer, const char *tap) {
    if (layer < 0) snprintf(buf, n, "/%s/%s", backend, tap);
    else snprintf(buf, n, "/%s/layers/%03d/%s", backend, layer, tap);
}

qd_h5in *qd_h5in_open(const char *path, qd_err *e) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    struct stat st;
    if (stat(path, &st) != 0) {
        qd_errf(e, QD_EINPUT, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) { /* H5Fopen would block on a FIFO and read a device without end */
        qd_errf(e, QD_EINPUT, "%s: is %s, not a regular file", path, qd_file_kind(st.st_mode));
        return NULL;
    }
    qd_h5in *f = qd_zalloc(1, sizeof *f, e);
    if (!f) return NULL;
    f->file = f->lapl = -1;
    if (!(f->path = qd_alloc(strlen(path) + 1, e))) {
        free(f);
        return NULL;
    }
    strcpy(f->path, path);
    f->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f->file < 0) {
        qd_errf(e, QD_EINPUT, "%s: not an HDF5 file (H5Fopen failed)", path);
        qd_h5in_close(f);
        return NULL;
    }
    f->lapl = H5Pcreate(H5P_LINK_ACCESS);
    if (f->lapl < 0 || H5Pset_elink_cb(f->lapl, deny_external_link, NULL) < 0) {
        qd_errf(e, QD_ERUNTIME, "%s: H5Pset_elink_cb failed", path);
        qd_h5in_close(f);
        return NULL;
    }
    char *schema = NULL, *config = NULL;
    int rc = attr_string_alloc(f, "/", "schema", 64, &schema, e);
    if (!rc && strcmp(schema, SCHEMA) != 0)
        rc = qd_errf(e, QD_EINPUT, "%s: attribute 'schema': expected \"%s\", found \"%.64s\"", path, SCHEMA, schema);
    if (!rc) rc = attr_string_alloc(f, "/", "config_json", MAX_CONFIG_JSON, &config, e);
    if (!rc) {
        size_t wn = strlen(path) + 32;
        char *where = qd_alloc(wn, e);
        if (!where) {
            rc = QD_ERUNTIME;
        } else {
            snprintf(where, wn, "%s: attribute 'config_json'", path);
            rc = qd_config_parse(config, where, &f->cfg, e);
            free(where);
        }
    }
    if (!rc) rc = read_input_ids(f, e);
    free(schema);
    free(config);
    if (rc) {
        qd_h5in_close(f);
        return NULL;
    }
    return f;
}

void qd_h5in_close(qd_h5in *f) {
    if (!f) return;
    if (f->lapl >= 0) H5Pclose(f->lapl);
    if (f->file >= 0) H5Fclose(f->file);
    free(f->ids);
    free(f->path);
    free(f);
}

const qd_config *qd_h5in_config(const qd_h5in *f) { return &f->cfg; }

int qd_h5in_T(const qd_h5in *f) { return f->T; }

int qd_h5in_has(qd_h5in *f, const char *path) {
    /* Walk the path one link at a time: H5Lexists needs every intermediate group to exist. */
    char buf[512];
    if (!path || path[0] != '/' || snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return 0;
    if (!buf[1]) return 1; /* the root */
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (H5Lexists(f->file, buf, f->lapl) <= 0) return 0;
            if (c == '\0') return 1;
            *p = c;
        }
    }
}

int qd_h5in_read_tap(qd_h5in *f, const char *backend, int layer, int tap, float **data, int *ndim, int64_t shape[3],
                     qd_err *e) {
    *data = NULL;
    const char *name = layer < 0 ? qd_model_tap_name(tap) : qd_layer_tap_name(tap);
    int64_t want64[3];
    int nd =
        layer < 0 ? qd_model_tap_shape(&f->cfg, tap, f->T, want64) : qd_layer_tap_shape(&f->cfg, tap, f->T, want64);
    char path[256];
    qd_h5_tap_path(path, sizeof path, backend, layer, name);
    if (strcmp(name, "?") == 0) return qd_errf(e, QD_EINPUT, "%s: '%s' is not a tap of schema v1", f->path, path);
    if (layer > 999 || layer >= f->cfg.num_hidden_layers)
        return qd_errf(e, QD_EINPUT, "%s: '%s': layer %d, but config_json has %d layers", f->path, path, layer,
                       f->cfg.num_hidden_layers);
    if (!qd_h5in_has(f, path)) return qd_errf(e, QD_EINPUT, "%s: dataset '%s' not found", f->path, path);
    hid_t ds = open_dataset(f, path, e);
    if (ds < 0) return e->code;
    hsize_t want[3];
    for (int i = 0; i < nd; i++) want[i] = (hsize_t)want64[i];
    int rc = QD_OK;
    size_t n = 0;
    hid_t type = H5Dget_type(ds);
    if (type < 0) {
        rc = h5_read_fail(f, "H5Dget_type", path, e);
    } else if (!float_type_ok(type)) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: dataset '%s': expected a float type (IEEE binary32; binary16, bfloat16 or "
                     "binary64 are converted)",
                     f->path, path);
    } else if (!(rc = check_dataset(f, ds, path, nd, want, H5Tget_size(type), &n, e))) {
        size_t bytes;
        if (qd_mul_size(n, sizeof(float), &bytes)) {
            rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s': %zu floats overflow size_t", f->path, path, n);
        } else if (!(*data = qd_alloc(bytes, e))) {
            rc = QD_ERUNTIME;
        } else if (H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, *data) < 0) {
            free(*data);
            *data = NULL;
            rc = h5_read_fail(f, "H5Dread", path, e);
        } else {
            *ndim = nd;
            for (int i = 0; i < nd; i++) shape[i] = want64[i];
        }
    }
    if (type >= 0) H5Tclose(type);
    H5Dclose(ds);
    return rc;
}

int qd_h5in_read_f32(qd_h5in *f, const char *path, float **data, int *ndim, int64_t shape[3], qd_err *e) {
    *data = NULL;
    /* "/<backend>/<tap>" or "/<backend>/layers/NNN/<tap>" */
    char buf[256], *part[6];
    int np = 0;
    if (!path || path[0] != '/' || snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return qd_errf(e, QD_EINPUT, "%s: '%s' is not the path of a tap", f->path, path ? path : "");
    for (char *save = NULL, *p = strtok_r(buf, "/", &save); p && np < 6; p = strtok_r(NULL, "/", &save)) part[np++] = p;
    if (np == 2 && qd_model_tap_index(part[1]) >= 0)
        return qd_h5in_read_tap(f, part[0], -1, qd_model_tap_index(part[1]), data, ndim, shape, e);
    if (np == 4 && strcmp(part[1], "layers") == 0 && strlen(part[2]) == 3 && qd_layer_tap_index(part[3]) >= 0) {
        int layer = 0;
        for (const char *c = part[2]; *c; c++) layer = *c >= '0' && *c <= '9' ? layer * 10 + (*c - '0') : -1000;
        if (layer >= 0) return qd_h5in_read_tap(f, part[0], layer, qd_layer_tap_index(part[3]), data, ndim, shape, e);
    }
    return qd_errf(e, QD_EINPUT, "%s: '%s' is not the path of a tap", f->path, path);
}

int qd_h5in_input_ids(qd_h5in *f, int32_t **ids, int *T, qd_err *e) {
    *ids = qd_alloc((size_t)f->T * sizeof **ids, e);
    if (!*ids) return QD_ERUNTIME;
    memcpy(*ids, f->ids, (size_t)f->T * sizeof **ids);
    *T = f->T;
    return QD_OK;
}

int qd_h5in_attr_string(qd_h5in *f, const char *path, const char *attr, char *buf, size_t n, qd_err *e) {
    buf[0] = '\0';
    char *s = NULL;
    int rc = attr_string_alloc(f, path, attr, n - 1, &s, e);
    if (rc) return rc;
    snprintf(buf, n, "%s", s);
    free(s);
    return QD_OK;
}

typedef struct {
    int L;
    char bad[64]; /* the first link that is not a layer of the model; "" while none */
} layer_scan;

static herr_t check_layer_link(hid_t g, const char *name, const H5L_info_t *info, void *ctx) {
    (void)g, (void)info;
    layer_scan *ls = ctx;
    int ok = strlen(name) == 3, layer = 0;
    for (const char *c = name; ok && *c; c++) {
        ok = *c >= '0' && *c <= '9';
        layer = layer * 10 + (*c - '0');
    }
    if (ok && layer < ls->L) return 0;
    snprintf(ls->bad, sizeof ls->bad, "%.60s", name);
    return 1; /* stops the iteration */
}

int qd_h5in_check_layers(qd_h5in *f, const char *backend, qd_err *e) {
    char path[160];
    snprintf(path, sizeof path, "/%s/layers", backend);
    if (!qd_h5in_has(f, path)) return QD_OK;
    layer_scan ls = {f->cfg.num_hidden_layers, ""};
    if (H5Literate_by_name(f->file, path, H5_INDEX_NAME, H5_ITER_INC, NULL, check_layer_link, &ls, f->lapl) < 0)
        return h5_read_fail(f, "H5Literate_by_name", path, e);
    if (ls.bad[0])
        return qd_errf(e, QD_EINPUT, "%s: '%s/%s' is not a layer of the model (000..%03d: config_json has %d layers)",
                       f->path, path, ls.bad, f->cfg.num_hidden_layers - 1, f->cfg.num_hidden_layers);
    return QD_OK;
}

typedef struct {
    char *names;
    size_t n;
    int count;
} backend_list;

static herr_t collect_backend(hid_t root, const char *name, const H5L_info_t *info, void *ctx) {
    backend_list *bl = ctx;
    if (info->type != H5L_TYPE_HARD) return 0;   /* a soft or external link is not a group of this dump */
    hid_t g = H5Gopen2(root, name, H5P_DEFAULT); /* fails for datasets such as /input_ids */
    if (g < 0) return 0;
    int has = H5Aexists(g, "precision") > 0;
    H5Gclose(g);
    if (!has) return 0;
    size_t used = strlen(bl->names);
    snprintf(bl->names + used, bl->n - used, "%s%s", bl->count ? ", " : "", name);
    bl->count++;
    return 0;
}

int qd_h5in_backends(qd_h5in *f, char *names, size_t n) {
    names[0] = '\0';
    backend_list bl = {names, n, 0};
    H5Literate(f->file, H5_INDEX_NAME, H5_ITER_INC, NULL, collect_backend, &bl);
    return bl.count;
}

int qd_h5in_attr_int(qd_h5in *f, const char *path, const char *attr, long long *v, qd_err *e) {
    if (H5Aexists_by_name(f->file, path, attr, f->lapl) <= 0)
        return qd_errf(e, QD_EINPUT, "%s: attribute '%s' missing on '%s'", f->path, attr, path);
    hid_t a = H5Aopen_by_name(f->file, path, attr, H5P_DEFAULT, f->lapl);
    if (a < 0) return h5_read_fail(f, "H5Aopen_by_name", attr, e);
    hid_t type = H5Aget_type(a), space = H5Aget_space(a);
    int rc = QD_OK;
    if (type < 0 || space < 0) rc = h5_read_fail(f, "H5Aget_type", attr, e);
    else if (H5Tget_class(type) != H5T_INTEGER)
        rc = qd_errf(e, QD_EINPUT, "%s: attribute '%s' on '%s' is not an integer", f->path, attr, path);
    else if (!(H5Sget_simple_extent_type(space) == H5S_SCALAR ||
               (H5Sget_simple_extent_type(space) == H5S_SIMPLE && H5Sget_simple_extent_npoints(space) == 1)))
        rc = qd_errf(e, QD_EINPUT, "%s: attribute '%s' on '%s' holds more than one value", f->path, attr, path);
    else if (H5Aread(a, H5T_NATIVE_LLONG, v) < 0) rc = h5_read_fail(f, "H5Aread", attr, e);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    H5Aclose(a);
    return rc;
}

static herr_t collect_group(hid_t parent, const char *name, const H5L_info_t *info, void *ctx) {
    backend_list *bl = ctx;
    if (info->type != H5L_TYPE_HARD) return 0;
    hid_t g = H5Gopen2(parent, name, H5P_DEFAULT); /* fails for datasets */
    if (g < 0) return 0;
    H5Gclose(g);
    size_t used = strlen(bl->names);
    snprintf(bl->names + used, bl->n - used, "%s%s", bl->count ? ", " : "", name);
    bl->count++;
    return 0;
}

int qd_h5in_groups(qd_h5in *f, const char *path, char *names, size_t n) {
    names[0] = '\0';
    backend_list bl = {names, n, 0};
    if (!qd_h5in_has(f, path)) return 0; /* external links are absent: the group is in this file */
    hid_t g = H5Gopen2(f->file, path, H5P_DEFAULT);
    if (g < 0) return 0;
    H5Gclose(g);
    H5Literate_by_name(f->file, path, H5_INDEX_NAME, H5_ITER_INC, NULL, collect_group, &bl, f->lapl);
    return bl.count;
}

int qd_h5in_read_table(qd_h5in *f, const char *path, int64_t (*make_type)(void), size_t rec_size, size_t max_rows,
                       void **recs, size_t *n, qd_err *e) {
    *recs = NULL;
    *n = 0;
    hid_t ds = open_dataset(f, path, e);
    if (ds < 0) return e->code ? e->code : QD_EINPUT;
    hid_t ftype = H5Dget_type(ds), space = H5Dget_space(ds), mem = -1;
    int rc = QD_OK;
    hsize_t dims[H5S_MAX_RANK] = {0};
    if (ftype < 0 || space < 0) {
        rc = h5_read_fail(f, "H5Dget_type", path, e);
        goto out;
    }
    if (H5Tget_class(ftype) != H5T_COMPOUND) {
        rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s' is not a table of records (a compound type)", f->path, path);
        goto out;
    }
    int rank = H5Sget_simple_extent_type(space) == H5S_SIMPLE ? H5Sget_simple_extent_ndims(space) : 0;
    if (rank != 1 || H5Sget_simple_extent_dims(space, dims, NULL) < 0) {
        rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s': rank %d, expected a 1-D table", f->path, path, rank);
        goto out;
    }
    if (dims[0] > max_rows) {
        rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s': %llu rows, more than %zu", f->path, path,
                     (unsigned long long)dims[0], max_rows);
        goto out;
    }
    size_t count = 0;
    if ((rc = check_dataset(f, ds, path, 1, dims, H5Tget_size(ftype), &count, e))) goto out;
    if (count == 0) goto out;
    if ((mem = (hid_t)make_type()) < 0) {
        rc = qd_errf(e, QD_ERUNTIME, "%s: building the memory type of '%s' failed", f->path, path);
        goto out;
    }
    /* HDF5 would leave a field the file lacks as it was: a table without one is not this table */
    for (int i = 0, nm = H5Tget_nmembers(mem); i < nm && !rc; i++) {
        char *name = H5Tget_member_name(mem, (unsigned)i);
        if (name && H5Tget_member_index(ftype, name) < 0)
            rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s' has no field '%s'", f->path, path, name);
        H5free_memory(name);
    }
    if (rc) goto out;
    if (!(*recs = qd_zalloc(count, rec_size, e))) {
        rc = QD_ERUNTIME;
        goto out;
    }
    if (H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, *recs) < 0) {
        rc = h5_read_fail(f, "H5Dread", path, e);
        free(*recs);
        *recs = NULL;
        goto out;
    }
    *n = count;
out:
    if (mem >= 0) H5Tclose(mem);
    if (space >= 0) H5Sclose(space);
    if (ftype >= 0) H5Tclose(ftype);
    H5Dclose(ds);
    return rc;
}
