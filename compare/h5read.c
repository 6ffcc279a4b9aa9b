/* h5read.c: see qd_h5read.h. */
#include "qd_h5read.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct qd_h5in {
    hid_t file;
    char *path;
};

void qd_h5_tap_path(char *buf, size_t n, const char *backend, int layer, const char *tap) {
    if (layer < 0)
        snprintf(buf, n, "/%s/%s", backend, tap);
    else
        snprintf(buf, n, "/%s/layers/%03d/%s", backend, layer, tap);
}

qd_h5in *qd_h5in_open(const char *path, qd_err *e) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        FILE *probe = fopen(path, "rb");
        if (probe) fclose(probe);
        qd_errf(e, QD_EINPUT, "%s: %s", path, probe ? "not an HDF5 file (H5Fopen failed)" : "cannot open");
        return NULL;
    }
    qd_h5in *f = qd_calloc(1, sizeof *f);
    f->file = file;
    f->path = strdup(path);
    char schema[64];
    if (qd_h5in_attr_string(f, "/", "schema", schema, sizeof schema, e) != QD_OK) {
        qd_h5in_close(f);
        return NULL;
    }
    if (strcmp(schema, "qwen3-diff/1") != 0) {
        qd_errf(e, QD_EINPUT, "%s: attribute 'schema': expected \"qwen3-diff/1\", found \"%s\"", path, schema);
        qd_h5in_close(f);
        return NULL;
    }
    return f;
}

void qd_h5in_close(qd_h5in *f) {
    if (!f) return;
    H5Fclose(f->file);
    free(f->path);
    free(f);
}

int qd_h5in_has(qd_h5in *f, const char *path) {
    /* Walk the path one link at a time: H5Lexists needs every intermediate group to exist. */
    char buf[512];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (H5Lexists(f->file, buf, H5P_DEFAULT) <= 0) return 0;
            if (c == '\0') return 1;
            *p = c;
        }
    }
}

int qd_h5in_read_f32(qd_h5in *f, const char *path, float **data, int *ndim, int64_t shape[3], qd_err *e) {
    *data = NULL;
    if (!qd_h5in_has(f, path)) return qd_errf(e, QD_EINPUT, "%s: dataset '%s' not found", f->path, path);
    hid_t ds = H5Dopen2(f->file, path, H5P_DEFAULT);
    if (ds < 0) return qd_errf(e, QD_EINPUT, "%s: '%s' is not a dataset (H5Dopen2 failed)", f->path, path);
    int rc = QD_OK;
    hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
    int rank = H5Sget_simple_extent_ndims(space);
    hsize_t dims[3] = {0, 0, 0};
    if (H5Tget_class(type) != H5T_FLOAT) {
        rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s': expected a float type", f->path, path);
    } else if (rank < 1 || rank > 3) {
        rc = qd_errf(e, QD_EINPUT, "%s: dataset '%s': rank %d, expected 1 to 3", f->path, path, rank);
    } else {
        H5Sget_simple_extent_dims(space, dims, NULL);
        size_t n = 1;
        for (int i = 0; i < rank; i++) {
            shape[i] = (int64_t)dims[i];
            n *= dims[i];
        }
        *ndim = rank;
        *data = qd_malloc(n * sizeof(float));
        if (H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, *data) < 0) {
            free(*data);
            *data = NULL;
            rc = qd_errf(e, QD_ERUNTIME, "%s: H5Dread of '%s' failed", f->path, path);
        }
    }
    H5Tclose(type);
    H5Sclose(space);
    H5Dclose(ds);
    return rc;
}

int qd_h5in_input_ids(qd_h5in *f, int32_t **ids, int *T, qd_err *e) {
    *ids = NULL;
    if (!qd_h5in_has(f, "/input_ids")) return qd_errf(e, QD_EINPUT, "%s: dataset '/input_ids' not found", f->path);
    hid_t ds = H5Dopen2(f->file, "/input_ids", H5P_DEFAULT);
    hid_t space = H5Dget_space(ds);
    int rc = QD_OK;
    hsize_t n = 0;
    if (H5Sget_simple_extent_ndims(space) != 1) {
        rc = qd_errf(e, QD_EINPUT, "%s: dataset '/input_ids': expected rank 1", f->path);
    } else {
        H5Sget_simple_extent_dims(space, &n, NULL);
        *ids = qd_malloc((n ? n : 1) * sizeof(int32_t));
        if (H5Dread(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, *ids) < 0) {
            free(*ids);
            *ids = NULL;
            rc = qd_errf(e, QD_ERUNTIME, "%s: H5Dread of '/input_ids' failed", f->path);
        }
        *T = (int)n;
    }
    H5Sclose(space);
    H5Dclose(ds);
    return rc;
}

int qd_h5in_attr_string(qd_h5in *f, const char *path, const char *attr, char *buf, size_t n, qd_err *e) {
    buf[0] = '\0';
    if (H5Aexists_by_name(f->file, path, attr, H5P_DEFAULT) <= 0)
        return qd_errf(e, QD_EINPUT, "%s: attribute '%s' missing on '%s'", f->path, attr, path);
    hid_t a = H5Aopen_by_name(f->file, path, attr, H5P_DEFAULT, H5P_DEFAULT);
    hid_t type = H5Aget_type(a);
    int rc = QD_OK;
    if (H5Tget_class(type) != H5T_STRING) {
        rc = qd_errf(e, QD_EINPUT, "%s: attribute '%s' on '%s' is not a string", f->path, attr, path);
    } else if (H5Tis_variable_str(type) > 0) {
        char *s = NULL;
        hid_t mem = H5Tcopy(H5T_C_S1);
        H5Tset_size(mem, H5T_VARIABLE);
        H5Tset_cset(mem, H5Tget_cset(type));
        if (H5Aread(a, mem, &s) < 0 || !s) {
            rc = qd_errf(e, QD_ERUNTIME, "%s: H5Aread of '%s' failed", f->path, attr);
        } else {
            snprintf(buf, n, "%s", s);
            H5free_memory(s);
        }
        H5Tclose(mem);
    } else {
        size_t sz = H5Tget_size(type);
        char *tmp = qd_calloc(sz + 1, 1);
        hid_t mem = H5Tcopy(type);
        if (H5Aread(a, mem, tmp) < 0)
            rc = qd_errf(e, QD_ERUNTIME, "%s: H5Aread of '%s' failed", f->path, attr);
        else
            snprintf(buf, n, "%s", tmp);
        H5Tclose(mem);
        free(tmp);
    }
    H5Tclose(type);
    H5Aclose(a);
    return rc;
}

typedef struct {
    char *names;
    size_t n;
    int count;
} backend_list;

static herr_t collect_backend(hid_t root, const char *name, const H5L_info_t *info, void *ctx) {
    (void)info;
    backend_list *bl = ctx;
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
