/* dump.c: the HDF5 dump, schema v1 (qd_dump.h; docs/SCHEMA.md is the document users read).
 *
 * Taps are written as they are emitted (one dataset per tap, closed right away), so memory stays bounded
 * by one tap whatever the model size. Everything goes to PATH.tmp.<pid>; only qd_dump_close(commit=1)
 * renames it to PATH, so a crash or an error never leaves a half-written file under the final name.
 * HDF5's own error printing is switched off: failures come back as one-line QD_ERUNTIME messages that
 * name the HDF5 call, the object path and HDF5's innermost error description. */
#include "qd_dump.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qd_build_config.h"
#include "qd_files.h"

#define QD_SCHEMA "qwen3-diff/1"
#define QD_MAX_LAYER 999          /* layer groups are named with 3 digits */
#define QD_CHUNK_BYTES (1u << 20) /* whole rows per chunk, up to ~1 MiB: reads of a few positions stay cheap */

typedef struct {
    qd_tap_sink sink; /* sink.ctx points back to this struct */
    qd_dump *d;
    char *name;  /* group name, e.g. "ref" */
    hid_t group; /* /<name>, open until close */
} dump_backend;

struct qd_dump {
    hid_t file;
    char *path; /* final name */
    qd_out out; /* the output file (qd_files.h): a regular file or a new name, written atomically */
    char *tmp;  /* out.tmp: PATH.tmp.<pid> (or a symlink's target's), what is written until commit */
    int T;
    int compress;            /* 0 none, 1..9 gzip level (with shuffle) */
    dump_backend **backends; /* (nbackends), pointers so sinks handed out stay valid */
    int nbackends;
};

// ----------------------------------------------------------------------------
// HDF5 error reporting

/* The innermost error's text; when it comes from a system call, only its strerror part (the rest is
 * addresses, sizes and a timestamp). buf holds 256 bytes. */
static herr_t innermost_desc(unsigned n, const H5E_error2_t *err, void *ctx) {
    char *buf = ctx;
    if (n != 0 || !err->desc) return 0;
    const char *key = "error message = '";
    const char *m = strstr(err->desc, key);
    if (m) {
        m += strlen(key);
        const char *end = strchr(m, '\'');
        snprintf(buf, 256, "%.*s", end ? (int)(end - m) : 200, m);
    } else {
        snprintf(buf, 256, "%s", err->desc);
    }
    return 0;
}

/* A QD_ERUNTIME message naming the failing call and the object, with HDF5's innermost error text
 * (walking upward starts at the most specific error, e.g. the open(2) failure with its errno). */
static int h5_fail(const qd_dump *d, qd_err *e, const char *call, const char *object) {
    char detail[256] = "";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_desc, detail);
    return qd_errf(e, QD_ERUNTIME, "%s: %s failed for %s%s%s", d->path, call, object, detail[0] ? ": " : "", detail);
}

// ----------------------------------------------------------------------------
// helpers

/* Scalar variable-length UTF-8 string attribute: h5py reads it as str, h5dump prints it as text, and the
 * string lives in the global heap, so config_json is not bound by the 64 KiB object-header limit. */
static int write_string_attr(qd_dump *d, hid_t obj, const char *objpath, const char *key, const char *value,
                             qd_err *e) {
    int rc = QD_OK;
    hid_t type = H5Tcopy(H5T_C_S1), space = -1, attr = -1;
    if (type < 0 || H5Tset_size(type, H5T_VARIABLE) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0) {
        rc = h5_fail(d, e, "H5Tset_size", objpath);
        goto out;
    }
    if ((space = H5Screate(H5S_SCALAR)) < 0) {
        rc = h5_fail(d, e, "H5Screate", objpath);
        goto out;
    }
    htri_t exists = H5Aexists(obj, key);
    if (exists < 0 || (exists > 0 && H5Adelete(obj, key) < 0)) {
        rc = h5_fail(d, e, "H5Adelete", objpath);
        goto out;
    }
    if ((attr = H5Acreate2(obj, key, type, space, H5P_DEFAULT, H5P_DEFAULT)) < 0) {
        rc = h5_fail(d, e, "H5Acreate2", objpath);
        goto out;
    }
    if (H5Awrite(attr, type, &value) < 0) rc = h5_fail(d, e, "H5Awrite", objpath);
out:
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return rc;
}

/* Object creation without timestamps: two dumps of the same run differ only where the data does. */
static hid_t create_plist(hid_t cls) {
    hid_t p = H5Pcreate(cls);
    if (p >= 0 && H5Pset_obj_track_times(p, 0) < 0) {
        H5Pclose(p);
        return -1;
    }
    return p;
}

/* Opens parent/name, creating the group when it does not exist yet. */
static hid_t group_open_or_create(qd_dump *d, hid_t parent, const char *name, const char *objpath, qd_err *e) {
    htri_t exists = H5Lexists(parent, name, H5P_DEFAULT);
    if (exists < 0) {
        h5_fail(d, e, "H5Lexists", objpath);
        return -1;
    }
    if (exists > 0) {
        hid_t g = H5Gopen2(parent, name, H5P_DEFAULT);
        if (g < 0) h5_fail(d, e, "H5Gopen2", objpath);
        return g;
    }
    hid_t gcpl = create_plist(H5P_GROUP_CREATE);
    hid_t g = gcpl < 0 ? -1 : H5Gcreate2(parent, name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    if (g < 0) h5_fail(d, e, "H5Gcreate2", objpath); /* before any other H5 call clears the error stack */
    if (gcpl >= 0) H5Pclose(gcpl);
    return g;
}

/* Whole rows per chunk up to QD_CHUNK_BYTES; a row larger than that is split along its leading
 * non-row dimension. dims, chunk (ndim), ndim 2 or 3. */
static void chunk_dims(int ndim, const hsize_t *dims, hsize_t *chunk) {
    const hsize_t budget = QD_CHUNK_BYTES / sizeof(float); /* elements per chunk */
    hsize_t row = 1;
    for (int i = 1; i < ndim; i++) {
        row *= dims[i];
        chunk[i] = dims[i];
    }
    if (row <= budget) {
        chunk[0] = budget / row < dims[0] ? budget / row : dims[0];
        return;
    }
    chunk[0] = 1;
    hsize_t inner = 1; /* elements per step of dimension 1 */
    for (int i = 2; i < ndim; i++) inner *= dims[i];
    if (inner > budget) { /* only for absurd head dims; keep every chunk under HDF5's 4 GiB limit */
        chunk[1] = 1;
        chunk[2] = budget < dims[2] ? budget : dims[2];
    } else {
        chunk[1] = budget / inner < dims[1] ? budget / inner : dims[1];
    }
}

static dump_backend *find_backend(const qd_dump *d, const char *name) {
    for (int i = 0; i < d->nbackends; i++)
        if (strcmp(d->backends[i]->name, name) == 0) return d->backends[i];
    return NULL;
}

static int valid_group_name(const char *s) {
    if (!s || !*s || strlen(s) > 64 || s[0] == '.') return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
                 c == '.';
        if (!ok) return 0;
    }
    return 1;
}

// ----------------------------------------------------------------------------
// API

static int backend_emit(qd_tap_sink *self, qd_tap_id id, const float *data, int ndim, const int64_t *shape, qd_err *e);

qd_dump *qd_dump_create(const char *path, const char *model_path, const char *config_json, const int32_t *input_ids,
                        int T, int compress, qd_err *e) {
    if (!path || !*path) {
        qd_errf(e, QD_EINPUT, "dump: empty output path");
        return NULL;
    }
    if (T <= 0 || !input_ids) {
        qd_errf(e, QD_EINPUT, "%s: input_ids: need at least one token (T = %d)", path, T);
        return NULL;
    }
    if (compress < 0 || compress > 9) {
        qd_errf(e, QD_EINPUT, "%s: compression level %d is not in 0..9", path, compress);
        return NULL;
    }
    /* HDF5 1.10 crashes in its atexit cleanup when a file whose close failed (e.g. a full disk) is
     * still in its ID table; every file here is closed explicitly, so that cleanup is not needed.
     * (Has no effect, and fails harmlessly, once the library is initialised.) */
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);

    qd_dump *d = qd_zalloc(1, sizeof *d, e);
    if (!d) return NULL;
    d->file = -1;
    d->T = T;
    d->compress = compress;
    if (!(d->path = qd_alloc(strlen(path) + 1, e))) goto fail;
    strcpy(d->path, path);
    /* a directory, "-", a FIFO or a device is refused now, not by rename() after the run; the temporary
     * name is registered before it exists: a SIGINT or SIGTERM from here on removes it (qd_files.h) */
    if (qd_out_open_seekable(&d->out, path, e)) goto fail;
    d->tmp = d->out.tmp;
    if (compress > 0 && (H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0 || H5Zfilter_avail(H5Z_FILTER_SHUFFLE) <= 0)) {
        qd_errf(e, QD_ERUNTIME,
                "%s: this HDF5 library has no gzip (deflate) or shuffle filter; use "
                "compression level 0",
                path);
        goto fail;
    }

    /* STRONG close: H5Fclose really closes the file (and every object still open in it), so the
     * rename or unlink that follows sees a complete file on every error path. */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    hid_t fcpl = create_plist(H5P_FILE_CREATE);
    if (fapl >= 0 && fcpl >= 0 && H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) >= 0)
        d->file = H5Fcreate(d->tmp, H5F_ACC_TRUNC, fcpl, fapl);
    if (d->file < 0) h5_fail(d, e, "H5Fcreate", d->tmp); /* before H5Pclose clears the error stack */
    if (fapl >= 0) H5Pclose(fapl);
    if (fcpl >= 0) H5Pclose(fcpl);
    if (d->file < 0) goto fail;

    if (write_string_attr(d, d->file, "/", "schema", QD_SCHEMA, e) ||
        write_string_attr(d, d->file, "/", "model", model_path ? model_path : "", e) ||
        write_string_attr(d, d->file, "/", "config_json", config_json ? config_json : "", e) ||
        write_string_attr(d, d->file, "/", "tool_version", QD_VERSION, e))
        goto fail;

    hsize_t dims[1] = {(hsize_t)T};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t dcpl = create_plist(H5P_DATASET_CREATE);
    hid_t ds = space < 0 || dcpl < 0
                   ? -1
                   : H5Dcreate2(d->file, "input_ids", H5T_STD_I32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    int rc = QD_OK;
    if (ds < 0) rc = h5_fail(d, e, "H5Dcreate2", "/input_ids");
    else if (H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, input_ids) < 0)
        rc = h5_fail(d, e, "H5Dwrite", "/input_ids");
    if (ds >= 0) H5Dclose(ds);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    if (rc) goto fail;
    return d;

fail:
    if (d->file >= 0) H5Fclose(d->file);
    qd_out_abort(&d->out);
    free(d->path);
    free(d);
    return NULL;
}

int qd_dump_add_backend(qd_dump *d, const char *backend, const char *precision, qd_err *e) {
    static const char *const precisions[] = {"fp64", "fp32", "bf16", "fp16"};
    if (!valid_group_name(backend))
        return qd_errf(e, QD_EINPUT,
                       "%s: backend name '%s' must be 1-64 characters of [A-Za-z0-9_.-], not "
                       "starting with '.'",
                       d->path, backend ? backend : "");
    if (strcmp(backend, "input_ids") == 0 || strcmp(backend, "diff") == 0)
        return qd_errf(e, QD_EINPUT, "%s: backend name '%s' is reserved by the schema", d->path, backend);
    int known = 0;
    for (int i = 0; i < 4; i++) known |= precision && strcmp(precision, precisions[i]) == 0;
    if (!known)
        return qd_errf(e, QD_EINPUT, "%s: backend '%s': precision '%s' is not one of fp64, fp32, bf16, fp16", d->path,
                       backend, precision ? precision : "");
    if (find_backend(d, backend)) return qd_errf(e, QD_EINPUT, "%s: backend '%s' already added", d->path, backend);

    char objpath[80];
    snprintf(objpath, sizeof objpath, "/%s", backend);
    hid_t g = group_open_or_create(d, d->file, backend, objpath, e);
    if (g < 0) return QD_ERUNTIME;
    int rc = write_string_attr(d, g, objpath, "precision", precision, e);
    if (rc) {
        H5Gclose(g);
        return rc;
    }
    dump_backend *b = qd_zalloc(1, sizeof *b, e);
    if (!b) {
        H5Gclose(g);
        return QD_ERUNTIME;
    }
    b->d = d;
    b->name = strdup(backend);
    b->group = g;
    b->sink.ctx = b;
    b->sink.emit = backend_emit;
    dump_backend **nb = realloc(d->backends, (size_t)(d->nbackends + 1) * sizeof *nb);
    if (!nb || !b->name) {
        H5Gclose(g);
        free(b->name);
        free(b);
        return qd_errf(e, QD_ERUNTIME, "%s: out of memory adding backend '%s'", d->path, backend);
    }
    d->backends = nb;
    d->backends[d->nbackends++] = b;
    return QD_OK;
}

int qd_dump_backend_attr(qd_dump *d, const char *backend, const char *key, const char *value, qd_err *e) {
    dump_backend *b = backend ? find_backend(d, backend) : NULL;
    if (!b) return qd_errf(e, QD_EINPUT, "%s: backend '%s' was not added", d->path, backend ? backend : "");
    if (!key || !*key || strcmp(key, "precision") == 0)
        return qd_errf(e, QD_EINPUT, "%s: backend '%s': attribute name '%s' is empty or reserved", d->path, backend,
                       key ? key : "");
    char objpath[80];
    snprintf(objpath, sizeof objpath, "/%s", backend);
    return write_string_attr(d, b->group, objpath, key, value ? value : "", e);
}

int qd_dump_write_tap(qd_dump *d, const char *backend, qd_tap_id id, const float *data, int ndim, const int64_t *shape,
                      qd_err *e) {
    dump_backend *b = backend ? find_backend(d, backend) : NULL;
    if (!b) return qd_errf(e, QD_EINPUT, "%s: backend '%s' was not added", d->path, backend ? backend : "");
    const int layer = id.layer;
    if (id.pos == QD_POS_LAYER && layer > QD_MAX_LAYER)
        return qd_errf(e, QD_EINPUT, "%s: backend '%s': layer %d is not in 0..%d", d->path, backend, layer,
                       QD_MAX_LAYER);
    if (!qd_tap_id_valid(id))
        return qd_errf(e, QD_EINPUT, "%s: backend '%s': tap %d of position %d, layer %d is not a tap of schema v1",
                       d->path, backend, id.tap, (int)id.pos, layer);
    /* The schema fixes the tap names and their rank (qd_taps.h); the config is not needed for that. */
    qd_config probe = {0};
    int64_t want[3];
    int want_ndim = qd_tap_id_shape(&probe, id, 1, want);
    const char *name = qd_tap_id_name(id);

    char objpath[160];
    if (id.pos != QD_POS_LAYER) snprintf(objpath, sizeof objpath, "/%s/%s", backend, name);
    else snprintf(objpath, sizeof objpath, "/%s/layers/%03d/%s", backend, layer, name);
    if (ndim != want_ndim)
        return qd_errf(e, QD_EINPUT, "%s: %s: rank %d, expected %d", d->path, objpath, ndim, want_ndim);
    if (!data || !shape) return qd_errf(e, QD_EINPUT, "%s: %s: no data", d->path, objpath);
    if (shape[0] != d->T)
        return qd_errf(e, QD_EINPUT, "%s: %s: %lld rows, expected T = %d", d->path, objpath, (long long)shape[0], d->T);
    hsize_t dims[3], chunk[3];
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0)
            return qd_errf(e, QD_EINPUT, "%s: %s: dimension %d is %lld", d->path, objpath, i, (long long)shape[i]);
        dims[i] = (hsize_t)shape[i];
    }

    int rc = QD_OK;
    hid_t layers = -1, lg = -1, parent = b->group, space = -1, dcpl = -1, ds = -1;
    if (id.pos == QD_POS_LAYER) {
        char lname[8], lpath[100];
        snprintf(lname, sizeof lname, "%03d", layer);
        snprintf(lpath, sizeof lpath, "/%s/layers", backend);
        if ((layers = group_open_or_create(d, b->group, "layers", lpath, e)) < 0) return QD_ERUNTIME;
        snprintf(lpath, sizeof lpath, "/%s/layers/%s", backend, lname);
        if ((lg = group_open_or_create(d, layers, lname, lpath, e)) < 0) {
            rc = QD_ERUNTIME;
            goto out;
        }
        parent = lg;
    }
    htri_t exists = H5Lexists(parent, name, H5P_DEFAULT);
    if (exists < 0) {
        rc = h5_fail(d, e, "H5Lexists", objpath);
        goto out;
    }
    if (exists > 0) {
        rc = qd_errf(e, QD_EINPUT, "%s: duplicate tap %s (each tap is written once per backend)", d->path, objpath);
        goto out;
    }

    chunk_dims(ndim, dims, chunk);
    if ((space = H5Screate_simple(ndim, dims, NULL)) < 0) {
        rc = h5_fail(d, e, "H5Screate_simple", objpath);
        goto out;
    }
    if ((dcpl = create_plist(H5P_DATASET_CREATE)) < 0 || H5Pset_chunk(dcpl, ndim, chunk) < 0) {
        rc = h5_fail(d, e, "H5Pset_chunk", objpath);
        goto out;
    }
    /* shuffle groups the bytes of each float by significance, which is what lets gzip find redundancy */
    if (d->compress > 0 && (H5Pset_shuffle(dcpl) < 0 || H5Pset_deflate(dcpl, (unsigned)d->compress) < 0)) {
        rc = h5_fail(d, e, "H5Pset_deflate", objpath);
        goto out;
    }
    if ((ds = H5Dcreate2(parent, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)) < 0) {
        rc = h5_fail(d, e, "H5Dcreate2", objpath);
        goto out;
    }
    if (H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        rc = h5_fail(d, e, "H5Dwrite", objpath);
        goto out;
    }
out:
    if (ds >= 0 && H5Dclose(ds) < 0 && rc == QD_OK) rc = h5_fail(d, e, "H5Dclose", objpath);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    if (lg >= 0) H5Gclose(lg);
    if (layers >= 0) H5Gclose(layers);
    return rc;
}

static int backend_emit(qd_tap_sink *self, qd_tap_id id, const float *data, int ndim, const int64_t *shape, qd_err *e) {
    dump_backend *b = self->ctx;
    return qd_dump_write_tap(b->d, b->name, id, data, ndim, shape, e);
}

qd_tap_sink *qd_dump_backend_sink(qd_dump *d, const char *backend, qd_err *e) {
    dump_backend *b = backend ? find_backend(d, backend) : NULL;
    if (!b) {
        qd_errf(e, QD_EINPUT, "%s: backend '%s' was not added", d->path, backend ? backend : "");
        return NULL;
    }
    return &b->sink;
}

// ----------------------------------------------------------------------------
// tables beside the backend groups

/* Opens /<parent>/<group>, creating both on demand. */
static hid_t open_table_group(qd_dump *d, const char *parent, const char *group, char *objpath, size_t n, qd_err *e) {
    if (!valid_group_name(parent) || find_backend(d, parent) || !group || !*group || strchr(group, '/')) {
        qd_errf(e, QD_EINPUT, "%s: table group '/%s/%s' is not a valid name outside the backend groups", d->path,
                parent ? parent : "", group ? group : "");
        return -1;
    }
    snprintf(objpath, n, "/%s", parent);
    hid_t p = group_open_or_create(d, d->file, parent, objpath, e);
    if (p < 0) return -1;
    snprintf(objpath, n, "/%s/%s", parent, group);
    hid_t g = group_open_or_create(d, p, group, objpath, e);
    H5Gclose(p);
    return g;
}

int qd_dump_write_table(qd_dump *d, const char *parent, const char *group, const char *name, const void *records,
                        size_t n, int64_t (*make_type)(void), qd_err *e) {
    char objpath[256];
    hid_t g = open_table_group(d, parent, group, objpath, sizeof objpath, e);
    if (g < 0) return e && e->code ? e->code : QD_ERUNTIME;
    int rc = QD_OK;
    hid_t type = (hid_t)make_type();
    hsize_t dims[1] = {n};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t dcpl = create_plist(H5P_DATASET_CREATE);
    snprintf(objpath + strlen(objpath), sizeof objpath - strlen(objpath), "/%s", name);
    hid_t ds =
        type < 0 || space < 0 || dcpl < 0 ? -1 : H5Dcreate2(g, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds < 0) rc = h5_fail(d, e, "H5Dcreate2", objpath);
    else if (n > 0 && H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, records) < 0)
        rc = h5_fail(d, e, "H5Dwrite", objpath);
    if (ds >= 0 && H5Dclose(ds) < 0 && rc == QD_OK) rc = h5_fail(d, e, "H5Dclose", objpath);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    H5Gclose(g);
    return rc;
}

int qd_dump_group_attr_int(qd_dump *d, const char *parent, const char *group, const char *key, long long value,
                           qd_err *e) {
    char objpath[256];
    hid_t g = open_table_group(d, parent, group, objpath, sizeof objpath, e);
    if (g < 0) return e && e->code ? e->code : QD_ERUNTIME;
    int rc = QD_OK;
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? -1 : H5Acreate2(g, key, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, H5T_NATIVE_LLONG, &value) < 0) rc = h5_fail(d, e, "H5Awrite", objpath);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    H5Gclose(g);
    return rc;
}

int qd_dump_group_attr_string(qd_dump *d, const char *parent, const char *group, const char *key, const char *value,
                              qd_err *e) {
    char objpath[256];
    hid_t g = open_table_group(d, parent, group, objpath, sizeof objpath, e);
    if (g < 0) return e && e->code ? e->code : QD_ERUNTIME;
    int rc = write_string_attr(d, g, objpath, key, value ? value : "", e);
    H5Gclose(g);
    return rc;
}

int qd_dump_close(qd_dump *d, int commit, qd_err *e) {
    if (!d) return QD_OK;
    int rc = QD_OK;
    for (int i = 0; i < d->nbackends; i++) {
        H5Gclose(d->backends[i]->group);
        free(d->backends[i]->name);
        free(d->backends[i]);
    }
    free(d->backends);
    if (commit && H5Fflush(d->file, H5F_SCOPE_GLOBAL) < 0) rc = h5_fail(d, e, "H5Fflush", d->tmp);
    if (H5Fclose(d->file) < 0 && rc == QD_OK && commit) rc = h5_fail(d, e, "H5Fclose", d->tmp);
    /* fsync, then rename: after a crash the final name holds either nothing or the whole file */
    if (commit && rc == QD_OK) rc = qd_out_commit(&d->out, e);
    else qd_out_abort(&d->out);
    free(d->path);
    free(d);
    return rc;
}
