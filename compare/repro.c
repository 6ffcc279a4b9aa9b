/* repro.c: the first bad op as one small file, and its rerun from that file alone (qd_repro.h). */
#include "qd_repro.h"
#include "qd_files.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qd_bf16.h"
#include "qd_build_config.h"
#include "qd_config.h"
#include "qd_fault.h"
#if QD_HAVE_CUDA
#include "qd_fused.h"
#include "qd_fused_ops.h"
#endif

/* Rows a repro holds at most (positions): a bound on what a hand-edited file can make the rerun allocate. */
#define MAX_POSITIONS (1 << 20)

// ----------------------------------------------------------------------------
// what an op needs: qd_replay_reads_of, through the ops whose output the engine did not tap

#define MAX_NEED 12

typedef struct {
    int in[MAX_NEED];   /* tap kinds (qd_tap_id_kind) or QD_RIN_* */
    int hist[MAX_NEED]; /* 1: every position 0..pos0+T-1 (attn's k_rope and v_proj) */
    int n_in;
    qd_replay_weight w[MAX_NEED];
    int n_w;
    int missing;    /* the direct input that cannot be had (valid when walk returns 0) */
    int missing_of; /* the op that reads it */
} need_set;

/* has(ctx, in, hist): the input is at hand as the engine tapped it. */
typedef int (*has_fn)(void *ctx, int in, int hist);

static qd_tap_id kind_id(int layer, int kind) {
    return kind < QD_NUM_LAYER_TAPS ? qd_tap_layer(layer, kind) : qd_tap_model(kind - QD_NUM_LAYER_TAPS);
}

static const char *input_name(int layer, int in) {
    if (in == QD_RIN_H) return "h_in";
    if (in == QD_RIN_TOKENS) return "tokens";
    return qd_tap_id_name(kind_id(layer, in));
}

static void need_in(need_set *ns, int in, int hist) {
    for (int i = 0; i < ns->n_in; i++)
        if (ns->in[i] == in) return;
    if (ns->n_in < MAX_NEED) {
        ns->in[ns->n_in] = in;
        ns->hist[ns->n_in++] = hist;
    }
}

static void need_w(need_set *ns, qd_replay_weight k) {
    for (int i = 0; i < ns->n_w; i++)
        if (ns->w[i] == k) return;
    if (ns->n_w < MAX_NEED) ns->w[ns->n_w++] = k;
}

/* What op `kind` of layer reads: its inputs at hand, else (an untapped tap) what makes them, and the weights
 * of every op on the way. 0 when some input cannot be had (ns->missing). */
static int walk(int layer, int kind, has_fn has, void *ctx, need_set *ns, int depth) {
    const qd_replay_reads *rd = qd_replay_reads_of(kind_id(layer, kind));
    if (!rd || depth > QD_NUM_TAP_KINDS) return 0;
    if (rd->weight != QD_RW_NONE) need_w(ns, rd->weight);
    for (int i = 0; i < rd->n_in; i++) {
        const int in = rd->in[i], hist = rd->history && i > 0;
        if (has(ctx, in, hist)) {
            need_in(ns, in, hist);
            continue;
        }
        if (in < 0 || hist || !walk(layer, in, has, ctx, ns, depth + 1)) {
            if (depth == 0 || ns->missing_of < 0) {
                ns->missing = in;
                ns->missing_of = kind;
            }
            return 0;
        }
    }
    return 1;
}

static void need_init(need_set *ns) {
    memset(ns, 0, sizeof *ns);
    ns->missing_of = -1;
}

// ----------------------------------------------------------------------------
// HDF5 helpers of both directions

static herr_t innermost_desc(unsigned n, const H5E_error2_t *err, void *data) {
    if (n == 0 && err->desc) snprintf((char *)data, 256, "%s", err->desc);
    return 0;
}

static int h5_fail(const char *path, qd_err *e, const char *call, const char *object) {
    char detail[256] = "";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_desc, detail);
    return qd_errf(e, QD_ERUNTIME, "%s: %s failed for %s%s%s", path, call, object, detail[0] ? ": " : "", detail);
}

static int attr_string(const char *path, hid_t obj, const char *key, const char *value, qd_err *e) {
    int rc = QD_OK;
    hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR), attr = -1;
    if (type < 0 || space < 0 || H5Tset_size(type, H5T_VARIABLE) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0 ||
        (attr = H5Acreate2(obj, key, type, space, H5P_DEFAULT, H5P_DEFAULT)) < 0 || H5Awrite(attr, type, &value) < 0)
        rc = h5_fail(path, e, "H5Awrite", key);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return rc;
}

static int attr_num(const char *path, hid_t obj, const char *key, hid_t file_type, hid_t mem_type, const void *v,
                    qd_err *e) {
    int rc = QD_OK;
    hid_t space = H5Screate(H5S_SCALAR), attr = -1;
    if (space < 0 || (attr = H5Acreate2(obj, key, file_type, space, H5P_DEFAULT, H5P_DEFAULT)) < 0 ||
        H5Awrite(attr, mem_type, v) < 0)
        rc = h5_fail(path, e, "H5Awrite", key);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return rc;
}

static int attr_int(const char *path, hid_t obj, const char *key, long long v, qd_err *e) {
    return attr_num(path, obj, key, H5T_STD_I64LE, H5T_NATIVE_LLONG, &v, e);
}

static int attr_double(const char *path, hid_t obj, const char *key, double v, qd_err *e) {
    return attr_num(path, obj, key, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v, e);
}

/* A dataset /group/name of ndim dims (shape), float32 or int32 (mem_type): shuffled and deflated, which halves
 * what bf16 values held in float32 take (their low 16 bits are zero). */
static int write_ds(const char *path, hid_t file, const char *group, const char *name, hid_t file_type, hid_t mem_type,
                    const void *data, int ndim, const int64_t *shape, qd_err *e) {
    char obj[160];
    snprintf(obj, sizeof obj, "/%s/%s", group, name);
    hsize_t dims[3];
    size_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (size_t)(dims[d] = (hsize_t)shape[d]);
    int rc = QD_OK;
    hid_t g = -1, space = -1, dcpl = -1, ds = -1;
    htri_t exists = H5Lexists(file, group, H5P_DEFAULT);
    g = exists > 0 ? H5Gopen2(file, group, H5P_DEFAULT)
                   : H5Gcreate2(file, group, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return h5_fail(path, e, "H5Gcreate2", group);
    if ((space = H5Screate_simple(ndim, dims, NULL)) < 0 || (dcpl = H5Pcreate(H5P_DATASET_CREATE)) < 0 ||
        H5Pset_obj_track_times(dcpl, 0) < 0) {
        rc = h5_fail(path, e, "H5Screate_simple", obj);
        goto out;
    }
    if (n > 0 && (H5Pset_chunk(dcpl, ndim, dims) < 0 || H5Pset_shuffle(dcpl) < 0 || H5Pset_deflate(dcpl, 6) < 0)) {
        rc = h5_fail(path, e, "H5Pset_deflate", obj);
        goto out;
    }
    if ((ds = H5Dcreate2(g, name, file_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)) < 0) {
        rc = h5_fail(path, e, "H5Dcreate2", obj);
        goto out;
    }
    if (n > 0 && H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        rc = h5_fail(path, e, "H5Dwrite", obj);
out:
    if (ds >= 0) H5Dclose(ds);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    H5Gclose(g);
    return rc;
}

static int write_f32(const char *path, hid_t file, const char *group, const char *name, const float *data, int ndim,
                     const int64_t *shape, qd_err *e) {
    return write_ds(path, file, group, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, data, ndim, shape, e);
}

// ----------------------------------------------------------------------------
// the writer

typedef struct {
    const qd_repro_op *op;
    const qd_config *c;
} writer_ctx;

/* The engine's tap `kind` of the op's position with T rows, or NULL. */
static const float *engine_tap_of(const qd_repro_op *op, const qd_config *c, int kind, int ndim_out[1],
                                  int64_t shape_out[3]) {
    if (!op->src || !op->src->get) return NULL;
    const qd_tap_id id = kind_id(op->id.layer, kind);
    int nd = 0;
    int64_t shape[3] = {0, 0, 0}, want[3];
    const float *d = op->src->get(op->src->ctx, id, &nd, shape);
    int wn = qd_tap_id_shape(c, id, op->T, want);
    if (!d || nd != wn) return NULL;
    for (int i = 0; i < nd; i++)
        if (shape[i] != want[i]) return NULL;
    if (ndim_out) *ndim_out = nd;
    if (shape_out) memcpy(shape_out, want, sizeof want);
    return d;
}

static int writer_has(void *ctx, int in, int hist) {
    const writer_ctx *w = ctx;
    const qd_repro_op *op = w->op;
    if (in == QD_RIN_H) return op->h_in != NULL;
    if (in == QD_RIN_TOKENS) return op->tokens != NULL;
    if (hist) {
        const float *k, *v;
        return op->id.pos == QD_POS_LAYER && qd_replay_history(op->rp, op->id.layer, op->pos0 + op->T, &k, &v);
    }
    return engine_tap_of(op, w->c, in, NULL, NULL) != NULL;
}

static void op_place(const qd_tap_id id, int step, char *buf, size_t n) {
    char st[32] = "";
    if (step > 0) snprintf(st, sizeof st, "decode step %d, ", step);
    if (id.pos == QD_POS_LAYER) snprintf(buf, n, "%slayer %d, %s", st, id.layer, qd_tap_id_name(id));
    else snprintf(buf, n, "%s%s", st, qd_tap_id_name(id));
}

static int write_body(const char *path, hid_t file, const qd_repro_op *op, const need_set *ns, qd_err *e) {
    const qd_config *c = &op->w->cfg;
    const int layer = op->id.pos == QD_POS_LAYER ? op->id.layer : -1;
    const qd_tap_id id = op->id;
    const char *tap = qd_tap_id_name(id);
    int rc;
    /* identity */
    if ((rc = attr_string(path, file, "schema", QD_REPRO_SCHEMA, e)) ||
        (rc = attr_string(path, file, "tool_version", QD_VERSION, e)) ||
        (rc = attr_string(path, file, "config_json", op->w->config_json ? op->w->config_json : "", e)) ||
        (rc = attr_string(path, file, "tap", tap, e)) || (rc = attr_int(path, file, "layer", layer, e)) ||
        (rc = attr_int(path, file, "step", op->step, e)) || (rc = attr_int(path, file, "pos0", op->pos0, e)) ||
        (rc = attr_int(path, file, "T", op->T, e)) ||
        (rc = attr_string(path, file, "side", op->side == 'A' ? "A" : "B", e)) ||
        (rc = attr_string(path, file, "engine", op->engine, e)) ||
        (rc = attr_string(path, file, "precision", op->precision, e)) ||
        (rc = attr_string(path, file, "accum", op->accum ? op->accum : "f32", e)) ||
        (rc = attr_string(path, file, "mode", op->mode, e)))
        return rc;
    /* the figures and the verdict they gave */
    const qd_replay_figures fg = qd_replay_figures_of(op->op);
    if ((rc = attr_double(path, file, "local_rel_l2", fg.local_rel_l2, e)) ||
        (rc = attr_double(path, file, "floor_rel_l2", fg.floor_rel_l2, e)) ||
        (rc = attr_double(path, file, "min_floor", fg.min_floor, e)) ||
        (rc = attr_double(path, file, "ratio", fg.ratio, e)) ||
        (rc = attr_double(path, file, "local_max_abs", fg.local_max_abs, e)) ||
        (rc = attr_double(path, file, "threshold", op->threshold, e)) ||
        (rc = attr_double(path, file, "blowup_ratio", op->blowup_ratio, e)) ||
        (rc = attr_int(path, file, "verdict", (long long)op->verdict, e)))
        return rc;
    /* inputs, as the engine tapped them */
    for (int i = 0; i < ns->n_in; i++) {
        const int in = ns->in[i];
        const char *name = input_name(layer, in);
        int64_t shape[3];
        if (in == QD_RIN_TOKENS) {
            shape[0] = op->T;
            rc = write_ds(path, file, "inputs", name, H5T_STD_I32LE, H5T_NATIVE_INT32, op->tokens, 1, shape, e);
        } else if (in == QD_RIN_H) {
            shape[0] = op->T;
            shape[1] = c->hidden_size;
            rc = write_f32(path, file, "inputs", name, op->h_in, 2, shape, e);
        } else if (ns->hist[i]) {
            const float *k, *v;
            qd_replay_history(op->rp, op->id.layer, op->pos0 + op->T, &k, &v);
            int nd = qd_tap_id_shape(c, kind_id(layer, in), op->pos0 + op->T, shape);
            rc = write_f32(path, file, "inputs", name, in == QD_TAP_K_ROPE ? k : v, nd, shape, e);
        } else {
            int nd = 0;
            const float *d = engine_tap_of(op, c, in, &nd, shape);
            rc = write_f32(path, file, "inputs", name, d, nd, shape, e);
        }
        if (rc) return rc;
    }
    /* the weights those ops read; of the embedding only the rows of the step's tokens */
    for (int i = 0; i < ns->n_w; i++) {
        const qd_replay_weight k = ns->w[i];
        int64_t shape[2];
        int nd = qd_replay_weight_shape(c, k, shape);
        const qd_wview src = qd_replay_weight_view(op->w, layer, k); /* fp32, or in place in the mapping */
        if (k == QD_RW_EMBED) {
            const size_t C = (size_t)c->hidden_size;
            float *rows = qd_alloc((size_t)op->T * C * sizeof(float), e); /* (T, C) */
            if (!rows) return QD_ERUNTIME;
            for (int t = 0; t < op->T; t++) qd_wview_to_f32(src, (size_t)op->tokens[t] * C, C, rows + t * C);
            shape[0] = op->T;
            rc = write_f32(path, file, "weights", qd_replay_weight_name(k), rows, 2, shape, e);
            free(rows);
        } else if (src.dtype == QD_DT_F32 && ((uintptr_t)src.data % sizeof(float)) == 0) {
            rc = write_f32(path, file, "weights", qd_replay_weight_name(k), src.data, nd, shape, e);
        } else { /* upcast (exactly) for the file */
            const size_t n = (size_t)shape[0] * (nd == 2 ? (size_t)shape[1] : 1);
            float *vals = qd_alloc(n * sizeof(float), e); /* (shape) */
            if (!vals) return QD_ERUNTIME;
            qd_wview_to_f32(src, 0, n, vals);
            rc = write_f32(path, file, "weights", qd_replay_weight_name(k), vals, nd, shape, e);
            free(vals);
        }
        if (rc) return rc;
    }
    /* the engine's output, the oracle's and the contract's */
    int64_t shape[3];
    int nd = 0;
    const float *eng = engine_tap_of(op, c, qd_tap_id_kind(id), &nd, shape);
    const float *oracle, *contract;
    qd_replay_outputs(op->rp, id, &oracle, &contract);
    if ((rc = write_f32(path, file, "engine", tap, eng, nd, shape, e)) ||
        (rc = write_f32(path, file, "oracle", tap, oracle, nd, shape, e)) ||
        (rc = write_f32(path, file, "contract", tap, contract, nd, shape, e)))
        return rc;
    return QD_OK;
}

int qd_repro_write(qd_repro_req *req, const qd_repro_op *op, qd_err *e) {
    const qd_config *c = &op->w->cfg;
    char place[96];
    op_place(op->id, op->step, place, sizeof place);
    snprintf(req->what, sizeof req->what, "%s of %s (side %c%s)", place, op->engine, op->side,
             strcmp(op->mode, "isolated") ? "" : ", teacher-forced");
    if (!op->op || !op->op->have) return qd_errf(e, QD_EINPUT, "repro: %s was not replayed: nothing to write", place);
    writer_ctx wc = {op, c};
    need_set ns;
    need_init(&ns);
    if (!engine_tap_of(op, c, qd_tap_id_kind(op->id), NULL, NULL) ||
        !walk(op->id.layer, qd_tap_id_kind(op->id), writer_has, &wc, &ns, 0))
        return qd_errf(e, QD_EINPUT, "repro: %s: its input %s is not at hand", place,
                       ns.missing_of < 0 ? qd_tap_id_name(op->id) : input_name(op->id.layer, ns.missing));

    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    /* a regular file or a new name, written to a registered temporary name and renamed (qd_files.h) */
    qd_out out;
    if (qd_out_open_seekable(&out, req->path, e)) return e->code;
    const char *tmp = out.tmp;
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    int rc = file < 0 ? h5_fail(req->path, e, "H5Fcreate", tmp) : QD_OK;
    if (fcpl >= 0) H5Pclose(fcpl);
    if (!rc) rc = write_body(req->path, file, op, &ns, e);
    if (file >= 0 && H5Fclose(file) < 0 && !rc) rc = h5_fail(req->path, e, "H5Fclose", tmp);
    /* fsync before rename: after a crash the final name holds either nothing or the whole file */
    if (!rc) rc = qd_out_commit(&out, e);
    else qd_out_abort(&out);
    if (!rc) req->written = 1;
    return rc;
}

// ----------------------------------------------------------------------------
// the reader

typedef struct {
    const char *path;
    hid_t file;
    qd_err *e;
} reader;

static int rd_has(const reader *rd, const char *obj) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", obj);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char ch = *p;
            *p = '\0';
            if (H5Lexists(rd->file, buf, H5P_DEFAULT) <= 0) return 0;
            if (ch == '\0') return 1;
            *p = ch;
        }
    }
}

static int rd_attr_string(const reader *rd, const char *key, char *buf, size_t n) {
    if (H5Aexists(rd->file, key) <= 0) return qd_errf(rd->e, QD_EINPUT, "%s: no root attribute '%s'", rd->path, key);
    hid_t attr = H5Aopen(rd->file, key, H5P_DEFAULT);
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    int rc = QD_OK;
    if (type < 0 || H5Tget_class(type) != H5T_STRING) {
        rc = qd_errf(rd->e, QD_EINPUT, "%s: root attribute '%s' is not a string", rd->path, key);
    } else if (H5Tis_variable_str(type) > 0) {
        char *s = NULL;
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(type));
        if (H5Aread(attr, mt, &s) < 0 || !s)
            rc = qd_errf(rd->e, QD_EINPUT, "%s: root attribute '%s' unreadable", rd->path, key);
        else if (strlen(s) >= n) rc = qd_errf(rd->e, QD_EINPUT, "%s: root attribute '%s' is too long", rd->path, key);
        else snprintf(buf, n, "%s", s);
        if (s) H5free_memory(s);
        H5Tclose(mt);
    } else {
        size_t sz = H5Tget_size(type);
        if (sz >= n) {
            rc = qd_errf(rd->e, QD_EINPUT, "%s: root attribute '%s' is too long", rd->path, key);
        } else {
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, sz + 1);
            memset(buf, 0, n);
            if (H5Aread(attr, mt, buf) < 0)
                rc = qd_errf(rd->e, QD_EINPUT, "%s: root attribute '%s' unreadable", rd->path, key);
            H5Tclose(mt);
        }
    }
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    return rc;
}

/* A malloc'd copy of a variable-length string attribute (config_json has no length bound). */
static int rd_attr_text(const reader *rd, const char *key, char **out) {
    *out = NULL;
    if (H5Aexists(rd->file, key) <= 0) return qd_errf(rd->e, QD_EINPUT, "%s: no root attribute '%s'", rd->path, key);
    hid_t attr = H5Aopen(rd->file, key, H5P_DEFAULT);
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    int rc = QD_OK;
    if (type < 0 || H5Tget_class(type) != H5T_STRING || H5Tis_variable_str(type) <= 0) {
        rc = qd_errf(rd->e, QD_EINPUT, "%s: root attribute '%s' is not a variable-length string", rd->path, key);
    } else {
        char *s = NULL;
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(type));
        if (H5Aread(attr, mt, &s) < 0 || !s)
            rc = qd_errf(rd->e, QD_EINPUT, "%s: root attribute '%s' unreadable", rd->path, key);
        else if (!(*out = strdup(s))) rc = qd_errf(rd->e, QD_ERUNTIME, "%s: strdup failed", rd->path);
        if (s) H5free_memory(s);
        H5Tclose(mt);
    }
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    return rc;
}

static int rd_attr_num(const reader *rd, const char *key, hid_t mem_type, void *v) {
    if (H5Aexists(rd->file, key) <= 0) return qd_errf(rd->e, QD_EINPUT, "%s: no root attribute '%s'", rd->path, key);
    hid_t attr = H5Aopen(rd->file, key, H5P_DEFAULT);
    hid_t space = attr >= 0 ? H5Aget_space(attr) : -1;
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    int rc = QD_OK;
    H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    if (space < 0 || H5Sget_simple_extent_npoints(space) != 1 || (cls != H5T_INTEGER && cls != H5T_FLOAT) ||
        H5Aread(attr, mem_type, v) < 0)
        rc = qd_errf(rd->e, QD_EINPUT, "%s: root attribute '%s' is not a number", rd->path, key);
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    if (attr >= 0) H5Aclose(attr);
    return rc;
}

static int rd_attr_int(const reader *rd, const char *key, long long lo, long long hi, int *out) {
    long long v = 0;
    int rc = rd_attr_num(rd, key, H5T_NATIVE_LLONG, &v);
    if (rc) return rc;
    if (v < lo || v > hi)
        return qd_errf(rd->e, QD_EINPUT, "%s: root attribute '%s' = %lld is outside %lld..%lld", rd->path, key, v, lo,
                       hi);
    *out = (int)v;
    return QD_OK;
}

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int d = 0; d < ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < n) snprintf(buf + k, n - k, "%s)", ndim == 1 ? "," : "");
}

/* Reads /group/name, which must have exactly the shape want (ndim), as mem_type into *out (malloc'd). */
static int rd_dataset(const reader *rd, const char *group, const char *name, hid_t mem_type, size_t elem, int ndim,
                      const int64_t *want, void **out) {
    char obj[160];
    snprintf(obj, sizeof obj, "/%s/%s", group, name);
    *out = NULL;
    if (!rd_has(rd, obj)) return qd_errf(rd->e, QD_EINPUT, "%s: no dataset '%s'", rd->path, obj);
    hid_t ds = H5Dopen2(rd->file, obj, H5P_DEFAULT);
    if (ds < 0) return qd_errf(rd->e, QD_EINPUT, "%s: '%s' is not a dataset", rd->path, obj);
    hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
    int rc = QD_OK;
    int rank = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    hsize_t dims[8] = {0};
    int64_t have[8] = {0};
    H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    H5T_class_t want_cls = mem_type == H5T_NATIVE_FLOAT ? H5T_FLOAT : H5T_INTEGER;
    if (rank < 0 || rank > 8) {
        rc = qd_errf(rd->e, QD_EINPUT, "%s: dataset '%s' has an unreadable shape", rd->path, obj);
    } else {
        H5Sget_simple_extent_dims(space, dims, NULL);
        int same = rank == ndim;
        for (int d = 0; d < rank; d++) {
            have[d] = (int64_t)dims[d];
            if (same) same = have[d] == want[d];
        }
        char hs[96], ws[96];
        fmt_shape(hs, sizeof hs, rank, have);
        fmt_shape(ws, sizeof ws, ndim, want);
        if (!same) rc = qd_errf(rd->e, QD_EINPUT, "%s: dataset '%s' has shape %s, expected %s", rd->path, obj, hs, ws);
        else if (cls != want_cls)
            rc = qd_errf(rd->e, QD_EINPUT, "%s: dataset '%s' is not %s", rd->path, obj,
                         want_cls == H5T_FLOAT ? "a float dataset" : "an integer dataset");
    }
    if (!rc) {
        size_t n = 1;
        for (int d = 0; d < ndim; d++) n *= (size_t)want[d];
        void *buf = qd_alloc((n ? n : 1) * elem, rd->e);
        if (!buf) rc = QD_ERUNTIME;
        else if (n && H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
            free(buf);
            rc = qd_errf(rd->e, QD_EINPUT, "%s: dataset '%s' unreadable (H5Dread failed)", rd->path, obj);
        } else {
            *out = buf;
        }
    }
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    H5Dclose(ds);
    return rc;
}

static int reader_has(void *ctx, int in, int hist) {
    (void)hist;
    const reader *rd = ((void **)ctx)[0];
    const int *layer = ((void **)ctx)[1];
    char obj[96];
    snprintf(obj, sizeof obj, "/inputs/%s", input_name(*layer, in));
    return rd_has(rd, obj);
}

int qd_repro_is_repro(const char *path) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    FILE *probe = fopen(path, "rb");
    if (!probe) return 0;
    fclose(probe);
    if (H5Fis_hdf5(path) <= 0) return 0;
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) return 0;
    qd_err e;
    reader rd = {path, file, &e};
    char schema[64] = "";
    int is = rd_attr_string(&rd, "schema", schema, sizeof schema) == QD_OK &&
             strncmp(schema, "qwen3-diff-repro/", strlen("qwen3-diff-repro/")) == 0;
    H5Fclose(file);
    return is;
}

// ----------------------------------------------------------------------------
// the rerun: the op replayed by qd_replay over the file's inputs

/* The file's taps as a qd_tap_source. */
typedef struct {
    struct {
        int kind;
        const float *data;
        int ndim;
        int64_t shape[3];
    } t[MAX_NEED + 1];
    int n, layer;
} mem_source;

static const float *mem_get(void *ctx, qd_tap_id id, int *ndim, int64_t shape[3]) {
    const mem_source *s = ctx;
    if (id.pos == QD_POS_LAYER && id.layer != s->layer) return NULL;
    for (int i = 0; i < s->n; i++)
        if (s->t[i].kind == qd_tap_id_kind(id)) {
            *ndim = s->t[i].ndim;
            memcpy(shape, s->t[i].shape, sizeof s->t[i].shape);
            return s->t[i].data;
        }
    return NULL;
}

static void mem_add(mem_source *s, const qd_config *c, int layer, int kind, const float *data, int rows) {
    if (s->n > MAX_NEED) return;
    s->t[s->n].kind = kind;
    s->t[s->n].data = data;
    s->t[s->n].ndim = qd_tap_id_shape(c, kind_id(layer, kind), rows, s->t[s->n].shape);
    s->n++;
}

/* What a rerun holds: the file's content. */
typedef struct {
    qd_config cfg;
    char *config_json;
    need_set ns;
    float *in[MAX_NEED]; /* by ns.in's order; tokens as int32 */
    int32_t *tokens;     /* (T) */
    int32_t *rows;       /* (T) 0..T-1: the embedding rows the file keeps */
    float *engine;       /* the engine's output (T rows) */
    qd_weights w;        /* only the weights the op reads, the rest NULL */
} repro_data;

static void repro_data_free(repro_data *d) {
    free(d->config_json);
    for (int i = 0; i < MAX_NEED; i++) free(d->in[i]);
    free(d->tokens);
    free(d->rows);
    free(d->engine);
    free(d->w.mem);
    free(d->w.layers);
}

static int64_t shape_count(int nd, const int64_t *s) {
    int64_t n = 1;
    for (int d = 0; d < nd; d++) n *= s[d];
    return n;
}

static int read_repro(const char *path, qd_repro_result *r, repro_data *d, qd_err *e) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        FILE *probe = fopen(path, "rb");
        if (probe) fclose(probe);
        return qd_errf(e, QD_EINPUT, "%s: %s", path, probe ? "not an HDF5 file (H5Fopen failed)" : "cannot open");
    }
    reader rd = {path, file, e};
    char schema[64], tap[32];
    int rc = rd_attr_string(&rd, "schema", schema, sizeof schema);
    if (!rc && strcmp(schema, QD_REPRO_SCHEMA) != 0)
        rc = qd_errf(e, QD_EINPUT, "%s: attribute 'schema': expected \"%s\", found \"%s\"", path, QD_REPRO_SCHEMA,
                     schema);
    if (!rc) rc = rd_attr_text(&rd, "config_json", &d->config_json);
    if (!rc) rc = qd_config_parse(d->config_json, path, &d->cfg, e);
    const qd_config *c = &d->cfg;
    int layer = -1;
    if (!rc) rc = rd_attr_string(&rd, "tap", tap, sizeof tap);
    if (!rc) rc = rd_attr_int(&rd, "layer", -1, c->num_hidden_layers - 1, &layer);
    if (!rc && qd_tap_id_parse(tap, layer, &r->id) != 0)
        rc = qd_errf(e, QD_EINPUT, "%s: root attribute 'tap' = '%s' is not a %s tap", path, tap,
                     layer >= 0 ? "layer" : "model-level");
    if (!rc) rc = rd_attr_int(&rd, "step", 0, MAX_POSITIONS, &r->step);
    if (!rc) rc = rd_attr_int(&rd, "T", 1, MAX_POSITIONS, &r->T);
    if (!rc) rc = rd_attr_int(&rd, "pos0", 0, MAX_POSITIONS - r->T, &r->pos0);
    if (!rc) rc = rd_attr_string(&rd, "side", r->side, sizeof r->side);
    if (!rc) rc = rd_attr_string(&rd, "engine", r->engine, sizeof r->engine);
    if (!rc) rc = rd_attr_string(&rd, "precision", r->precision, sizeof r->precision);
    if (!rc) rc = rd_attr_string(&rd, "accum", r->accum, sizeof r->accum);
    if (!rc) rc = rd_attr_string(&rd, "mode", r->mode, sizeof r->mode);
    if (!rc) rc = rd_attr_num(&rd, "threshold", H5T_NATIVE_DOUBLE, &r->threshold);
    if (!rc) rc = rd_attr_num(&rd, "blowup_ratio", H5T_NATIVE_DOUBLE, &r->blowup_ratio);
    if (!rc && !(r->threshold > 0 && r->blowup_ratio > 1))
        rc = qd_errf(e, QD_EINPUT, "%s: root attributes 'threshold' (%g) and 'blowup_ratio' (%g) must be > 0 and > 1",
                     path, r->threshold, r->blowup_ratio);
    qd_replay_figures *f = &r->stored_figures;
    if (!rc) rc = rd_attr_num(&rd, "local_rel_l2", H5T_NATIVE_DOUBLE, &f->local_rel_l2);
    if (!rc) rc = rd_attr_num(&rd, "floor_rel_l2", H5T_NATIVE_DOUBLE, &f->floor_rel_l2);
    if (!rc) rc = rd_attr_num(&rd, "min_floor", H5T_NATIVE_DOUBLE, &f->min_floor);
    if (!rc) rc = rd_attr_num(&rd, "ratio", H5T_NATIVE_DOUBLE, &f->ratio);
    if (!rc) rc = rd_attr_num(&rd, "local_max_abs", H5T_NATIVE_DOUBLE, &f->local_max_abs);
    if (rc) goto out;
    snprintf(r->tap, sizeof r->tap, "%s", qd_tap_id_name(r->id));

    /* the inputs: what the op reads, through what the engine did not tap, as replay defines it */
    need_init(&d->ns);
    void *hctx[2] = {&rd, &layer};
    if (!walk(layer, qd_tap_id_kind(r->id), reader_has, hctx, &d->ns, 0)) {
        rc = qd_errf(e, QD_EINPUT, "%s: no dataset '/inputs/%s' (%s reads it)", path, input_name(layer, d->ns.missing),
                     input_name(layer, d->ns.missing_of));
        goto out;
    }
    const int T = r->T, rows_all = r->pos0 + T;
    for (int i = 0; i < d->ns.n_in && !rc; i++) {
        const int in = d->ns.in[i];
        int64_t shape[3];
        if (in == QD_RIN_TOKENS) {
            shape[0] = T;
            rc = rd_dataset(&rd, "inputs", "tokens", H5T_NATIVE_INT32, sizeof(int32_t), 1, shape, (void **)&d->tokens);
            for (int t = 0; !rc && t < T; t++)
                if (d->tokens[t] < 0 || d->tokens[t] >= c->vocab_size)
                    rc = qd_errf(e, QD_EINPUT, "%s: dataset '/inputs/tokens'[%d] = %d is outside the vocabulary (%d)",
                                 path, t, d->tokens[t], c->vocab_size);
        } else if (in == QD_RIN_H) {
            shape[0] = T;
            shape[1] = c->hidden_size;
            rc = rd_dataset(&rd, "inputs", "h_in", H5T_NATIVE_FLOAT, sizeof(float), 2, shape, (void **)&d->in[i]);
        } else {
            int nd = qd_tap_id_shape(c, kind_id(layer, in), d->ns.hist[i] ? rows_all : T, shape);
            rc = rd_dataset(&rd, "inputs", input_name(layer, in), H5T_NATIVE_FLOAT, sizeof(float), nd, shape,
                            (void **)&d->in[i]);
        }
    }
    if (!rc) {
        int64_t shape[3];
        int nd = qd_tap_id_shape(c, r->id, T, shape);
        rc = rd_dataset(&rd, "engine", r->tap, H5T_NATIVE_FLOAT, sizeof(float), nd, shape, (void **)&d->engine);
    }
    /* the weights, laid out in one allocation as qd_weights holds them (the rest stays NULL) */
    if (!rc) {
        int64_t wshape[MAX_NEED][2];
        int wnd[MAX_NEED];
        size_t total = 0;
        for (int i = 0; i < d->ns.n_w; i++) {
            wnd[i] = qd_replay_weight_shape(c, d->ns.w[i], wshape[i]);
            if (d->ns.w[i] == QD_RW_EMBED) wshape[i][0] = T;
            total += (size_t)shape_count(wnd[i], wshape[i]);
        }
        memset(&d->w, 0, sizeof d->w);
        d->w.cfg = *c;
        d->w.src_dtype = QD_DT_F32;
        if (!(d->w.layers = qd_zalloc((size_t)c->num_hidden_layers, sizeof *d->w.layers, e)) ||
            !(d->w.mem = qd_alloc((total ? total : 1) * sizeof(float), e)))
            rc = QD_ERUNTIME;
        d->w.mem_floats = total;
        size_t off = 0;
        for (int i = 0; i < d->ns.n_w && !rc; i++) {
            float *buf = NULL;
            rc = rd_dataset(&rd, "weights", qd_replay_weight_name(d->ns.w[i]), H5T_NATIVE_FLOAT, sizeof(float), wnd[i],
                            wshape[i], (void **)&buf);
            if (rc) break;
            size_t n = (size_t)shape_count(wnd[i], wshape[i]);
            float *dst = d->w.mem + off;
            memcpy(dst, buf, n * sizeof(float));
            free(buf);
            off += n;
            qd_layer_weights *lw = layer >= 0 ? &d->w.layers[layer] : NULL;
            switch (d->ns.w[i]) {
            case QD_RW_INPUT_LAYERNORM: lw->input_layernorm = dst; break;
            case QD_RW_Q_PROJ: lw->q_proj = dst; break;
            case QD_RW_K_PROJ: lw->k_proj = dst; break;
            case QD_RW_V_PROJ: lw->v_proj = dst; break;
            case QD_RW_Q_NORM: lw->q_norm = dst; break;
            case QD_RW_K_NORM: lw->k_norm = dst; break;
            case QD_RW_O_PROJ: lw->o_proj = dst; break;
            case QD_RW_POST_ATTENTION_LAYERNORM: lw->post_attention_layernorm = dst; break;
            case QD_RW_GATE_PROJ: lw->gate_proj = dst; break;
            case QD_RW_UP_PROJ: lw->up_proj = dst; break;
            case QD_RW_DOWN_PROJ: lw->down_proj = dst; break;
            case QD_RW_EMBED: d->w.embed = dst; break;
            case QD_RW_NORM: d->w.norm = dst; break;
            case QD_RW_LM_HEAD: d->w.lm_head = dst; break;
            default: break;
            }
        }
    }
    /* the embedding keeps the rows of the step's tokens: row t is position t's */
    if (!rc && d->tokens) {
        if (!(d->rows = qd_alloc((size_t)T * sizeof(int32_t), e))) rc = QD_ERUNTIME;
        for (int t = 0; !rc && t < T; t++) d->rows[t] = t;
    }
out:
    H5Fclose(file);
    return rc;
}

/* The file's input i (ns order), or NULL. */
static const float *input_of(const repro_data *d, int in) {
    for (int i = 0; i < d->ns.n_in; i++)
        if (d->ns.in[i] == in) return d->in[i];
    return NULL;
}

/* One replay of the op over the file's inputs, with the contract's fault. out: the op's replay; oracle and
 * contract (copied, T rows of the tap) may be NULL. */
static int replay_once(const repro_data *d, const qd_repro_result *r, int fault, int threads, qd_replay_op *out,
                       float **oracle, float **contract, qd_err *e) {
    const qd_config *c = &d->cfg;
    const int layer = r->id.pos == QD_POS_LAYER ? r->id.layer : -1, T = r->T;
    int rc = QD_OK;
    qd_replay *rp = qd_replay_create(&d->w, r->precision, r->accum, r->pos0 + T, threads, e);
    if (!rp) return e->code == QD_EINPUT ? qd_errf(e, QD_EINPUT, "repro: %s", e->msg) : e->code;
    if ((rc = qd_replay_set_fault(rp, fault, e))) goto out;
    /* the step's taps: the inputs (the history's last T rows) and the engine's output */
    mem_source step = {.layer = layer};
    const float *h = NULL;
    int hist_k = -1, hist_v = -1;
    for (int i = 0; i < d->ns.n_in; i++) {
        const int in = d->ns.in[i];
        if (in == QD_RIN_H) {
            h = d->in[i];
        } else if (in >= 0) {
            int64_t s1[3];
            const size_t width = (size_t)shape_count(qd_tap_id_shape(c, kind_id(layer, in), 1, s1), s1); /* one row */
            mem_add(&step, c, layer, in, d->in[i] + (d->ns.hist[i] ? (size_t)r->pos0 * width : 0), T);
            if (d->ns.hist[i] && in == QD_TAP_K_ROPE) hist_k = i;
            if (d->ns.hist[i] && in == QD_TAP_V_PROJ) hist_v = i;
        }
    }
    mem_add(&step, c, layer, qd_tap_id_kind(r->id), d->engine, T);
    const qd_tap_source src = {mem_get, &step};
    if (r->id.pos == QD_POS_LAYER) {
        qd_replay_op ops[QD_NUM_LAYER_TAPS];
        if (r->pos0 > 0 && hist_k >= 0 && hist_v >= 0) { /* the earlier positions join the history first */
            mem_source hs = {.layer = layer};
            mem_add(&hs, c, layer, QD_TAP_K_ROPE, d->in[hist_k], r->pos0);
            mem_add(&hs, c, layer, QD_TAP_V_PROJ, d->in[hist_v], r->pos0);
            const qd_tap_source hsrc = {mem_get, &hs};
            if ((rc = qd_replay_layer(rp, &hsrc, layer, NULL, r->pos0, 0, ops, e))) goto out;
        }
        if ((rc = qd_replay_layer(rp, &src, layer, h, T, r->pos0, ops, e))) goto out;
        *out = ops[r->id.tap];
    } else if (r->id.tap == QD_TAP_EMBED) {
        if ((rc = qd_replay_embed(rp, &src, d->rows, T, out, e))) goto out;
    } else {
        qd_replay_op ops[2];
        if ((rc = qd_replay_head(rp, &src, h, T, ops, e))) goto out;
        *out = ops[r->id.tap == QD_TAP_LOGITS];
    }
    if (!out->have) {
        rc = qd_errf(e, QD_EINPUT, "repro: the file's inputs do not make %s", r->tap);
        goto out;
    }
    const float *o, *k;
    qd_replay_outputs(rp, r->id, &o, &k);
    int64_t shape[3];
    size_t n = (size_t)shape_count(qd_tap_id_shape(c, r->id, T, shape), shape);
    float **dst[2] = {oracle, contract};
    const float *srcs[2] = {o, k};
    for (int i = 0; i < 2 && !rc; i++) {
        if (!dst[i]) continue;
        if (!(*dst[i] = qd_alloc(n * sizeof(float), e))) rc = QD_ERUNTIME;
        else memcpy(*dst[i], srcs[i], n * sizeof(float));
    }
out:
    qd_replay_free(rp);
    return rc;
}

/* impl: an output x measured against the oracle, its ratio over the clean contract's floor. */
static void judge_impl(qd_repro_impl *impl, const float *x, const float *oracle, const qd_replay_op *clean,
                       const qd_repro_result *r, const qd_config *c) {
    int64_t shape[3];
    int nd = qd_tap_id_shape(c, r->id, r->T, shape);
    impl->have = 1;
    impl->op = *clean;
    qd_metrics_compute(x, oracle, nd, shape, &impl->op.local);
    double fl = clean->floor.rel_l2 > clean->min_floor ? clean->floor.rel_l2 : clean->min_floor;
    impl->op.ratio = impl->op.local.rel_l2 / fl;
    impl->verdict = qd_replay_verdict(&impl->op, r->threshold, r->blowup_ratio);
}

#if QD_HAVE_CUDA
/* The fused kernel of the op (fused/qd_fused_ops.h) on the file's inputs: out (T rows of the tap). 0 with a
 * note when there is no such launcher for these inputs. */
static int run_fused(const repro_data *d, const qd_repro_result *r, float *out, char *note, size_t nn, qd_err *e) {
    const qd_config *c = &d->cfg;
    const int layer = r->id.pos == QD_POS_LAYER ? r->id.layer : -1, T = r->T;
    const int C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim, NH = c->num_attention_heads;
    const int NKV = c->num_key_value_heads;
    const float eps = (float)c->rms_norm_eps;
    const qd_replay_reads *rd = qd_replay_reads_of(r->id);
    const float *w = qd_replay_weight_of(&d->w, layer, rd->weight);
    const float *x0 = rd->n_in > 0 ? input_of(d, rd->in[0]) : NULL, *x1 = rd->n_in > 1 ? input_of(d, rd->in[1]) : NULL;
    const int kind = qd_tap_id_kind(r->id);
    if (r->id.pos == QD_POS_LAYER && kind == QD_TAP_ATTN) {
        const float *q = input_of(d, QD_TAP_Q_ROPE), *kc = input_of(d, QD_TAP_K_ROPE), *vc = input_of(d, QD_TAP_V_PROJ);
        if (!q) {
            snprintf(note, nn, "no kernel for attn from q_proj (fused ropes q inside qk_norm_rope_kernel)");
            return 0;
        }
        if (T > 1) {
            snprintf(note, nn, "flash_attn_kernel / attn_rows_kernel (prefill)");
            return qd_fused_op_attention_prefill(out, q, kc, vc, T, r->pos0, NH, NKV, HD, NULL, e) ? -1 : 1;
        }
        snprintf(note, nn, "decode_attn_kernel (one token)");
        return qd_fused_op_attention_decode(out, q, kc, vc, r->pos0, NH, NKV, HD, r->pos0 + T, NULL, e) ? -1 : 1;
    }
    if (r->id.pos == QD_POS_LAYER && (kind == QD_TAP_Q_ROPE || kind == QD_TAP_K_ROPE)) {
        const int isq = kind == QD_TAP_Q_ROPE;
        const float *p = input_of(d, isq ? QD_TAP_Q_PROJ : QD_TAP_K_PROJ);
        const float *nw = qd_replay_weight_of(&d->w, layer, isq ? QD_RW_Q_NORM : QD_RW_K_NORM);
        if (!p || !nw) {
            snprintf(note, nn, "no kernel for %s from a tapped %s (fused norms and ropes in one kernel)", r->tap,
                     isq ? "q_norm" : "k_norm");
            return 0;
        }
        const size_t W = (size_t)NH * HD + 2 * (size_t)NKV * HD, qw = (size_t)NH * HD, kw = (size_t)NKV * HD;
        float *qkv = qd_zalloc((size_t)T * W, sizeof(float), e); /* (T, NH*HD + 2*NKV*HD) */
        float *ones = qd_alloc((size_t)HD * sizeof(float), e);   /* (HD) the other norm's weight */
        float *other = qd_alloc((size_t)T * (isq ? kw : qw) * sizeof(float), e);
        int rc = qkv && ones && other ? QD_OK : QD_ERUNTIME;
        for (int i = 0; !rc && i < HD; i++) ones[i] = 1.0f;
        for (int t = 0; !rc && t < T; t++)
            memcpy(qkv + t * W + (isq ? 0 : qw), p + t * (isq ? qw : kw), (isq ? qw : kw) * sizeof(float));
        if (!rc)
            rc = qd_fused_op_qk_norm_rope(isq ? out : other, isq ? other : out, NULL, qkv, isq ? nw : ones,
                                          isq ? ones : nw, T, r->pos0, NH, NKV, HD, eps, c->rope_theta, NULL, e);
        free(qkv);
        free(ones);
        free(other);
        snprintf(note, nn, "qk_norm_rope_kernel");
        return rc ? -1 : 1;
    }
    const int is_norm =
        rd->weight == QD_RW_INPUT_LAYERNORM || rd->weight == QD_RW_POST_ATTENTION_LAYERNORM || rd->weight == QD_RW_NORM;
    if (is_norm && x0) {
        snprintf(note, nn, "add_rmsnorm_kernel");
        return qd_fused_op_add_rmsnorm(out, NULL, x0, NULL, w, T, C, eps, NULL, e) ? -1 : 1;
    }
    if (w && x0 && rd->weight != QD_RW_EMBED && !is_norm && rd->weight != QD_RW_Q_NORM && rd->weight != QD_RW_K_NORM) {
        int64_t ws[2];
        qd_replay_weight_shape(c, rd->weight, ws);
        const int N = (int)ws[0], K = (int)ws[1];
        const int gemv = T == 1 && (rd->weight == QD_RW_O_PROJ || rd->weight == QD_RW_DOWN_PROJ);
        if (T == 1 && !gemv && rd->weight != QD_RW_LM_HEAD) {
            snprintf(note, nn, "no kernel for %s at a one-token step (fused folds the norm into its GEMV)", r->tap);
            return 0;
        }
        float *wb = qd_alloc((size_t)N * K * sizeof(float), e); /* (N, K) the weight as the device holds it */
        if (!wb) return -1;
        for (size_t i = 0; i < (size_t)N * K; i++) wb[i] = qd_round_bf16(w[i]);
        int rc = gemv ? qd_fused_op_gemv(out, wb, x0, N, K, NULL, e) : qd_fused_op_gemm(out, x0, wb, T, K, N, NULL, e);
        free(wb);
        snprintf(note, nn, gemv ? "gemv (one token)" : "cublasGemmEx (bf16)");
        return rc ? -1 : 1;
    }
    if (r->id.pos == QD_POS_LAYER && (kind == QD_TAP_ATTN_RESIDUAL || kind == QD_TAP_OUT) && x0 && x1) {
        snprintf(note, nn, "residual_kernel");
        return qd_fused_op_residual(out, x0, x1, (long)T * C, NULL, e) ? -1 : 1;
    }
    if (r->id.pos == QD_POS_LAYER && kind == QD_TAP_ACT && x0 && x1) {
        snprintf(note, nn, "swiglu_kernel");
        return qd_fused_op_swiglu(out, x0, x1, T, I, NULL, e) ? -1 : 1;
    }
    snprintf(note, nn, "no kernel for %s", r->tap);
    return 0;
}
#endif

int qd_repro_run(const char *path, int fault, int threads, qd_repro_result *r, qd_err *e) {
    memset(r, 0, sizeof *r);
    r->fault = fault;
    repro_data d;
    memset(&d, 0, sizeof d);
    float *oracle = NULL, *contract = NULL, *faulted = NULL, *fused = NULL;
    int rc = read_repro(path, r, &d, e);
    if (rc) goto out;
    const qd_config *c = &d.cfg;
    /* clean: the stored output judged again, the contract against the oracle */
    qd_replay_op clean;
    if ((rc = replay_once(&d, r, QD_FAULT_NONE, threads, &clean, &oracle, &contract, e))) goto out;
    r->stored.have = 1;
    r->stored.op = clean;
    r->stored.verdict = qd_replay_verdict(&clean, r->threshold, r->blowup_ratio);
    judge_impl(&r->contract, contract, oracle, &clean, r, c);
    const int lowp = !strcmp(r->precision, "bf16") || !strcmp(r->precision, "fp16");
    if (lowp) snprintf(r->contract.note, sizeof r->contract.note, "emu's op in %s", r->precision);
    else
        snprintf(r->contract.note, sizeof r->contract.note, "the reference's fp32 maths, %s accumulation",
                 !strcmp(r->precision, "fp64") || !strcmp(r->accum, "f64") ? "f64" : "f32");
    if (fault != QD_FAULT_NONE) {
        qd_replay_op fop;
        if ((rc = replay_once(&d, r, fault, threads, &fop, NULL, &faulted, e))) goto out;
        judge_impl(&r->faulted, faulted, oracle, &clean, r, c);
        snprintf(r->faulted.note, sizeof r->faulted.note, "emu's op in %s with %s", lowp ? r->precision : "fp32",
                 qd_fault_info_of((qd_fault_kind)fault)->name);
    }
#if QD_HAVE_CUDA
    char desc[160];
    if (qd_fused_device_count(desc, sizeof desc) <= 0) {
        snprintf(r->fused.note, sizeof r->fused.note, "skipped: no CUDA device");
    } else {
        int64_t shape[3];
        size_t n = (size_t)shape_count(qd_tap_id_shape(c, r->id, r->T, shape), shape);
        if (!(fused = qd_alloc(n * sizeof(float), e))) {
            rc = QD_ERUNTIME;
            goto out;
        }
        char note[160];
        int ran = run_fused(&d, r, fused, note, sizeof note, e);
        if (ran > 0) judge_impl(&r->fused, fused, oracle, &clean, r, c);
        /* a launch that fails (a shape the kernel does not take, a CUDA error) is the fused line's news, not the
         * rerun's failure: the stored output's verdict stands */
        if (ran < 0) snprintf(r->fused.note, sizeof r->fused.note, "%.48s failed: %.100s", note, e->msg);
        else snprintf(r->fused.note, sizeof r->fused.note, "%s", note);
        if (ran < 0) qd_err_clear(e);
    }
#else
    snprintf(r->fused.note, sizeof r->fused.note, "skipped: no CUDA device (built without CUDA)");
#endif
out:
    free(oracle);
    free(contract);
    free(faulted);
    free(fused);
    repro_data_free(&d);
    return rc;
}

// ----------------------------------------------------------------------------
// the lines

static const char *verdict_word(unsigned v) {
    if (v & QD_V_NONFINITE) return "non-finite";
    if (v & QD_V_BLOWUP_MAG) return "blow-up";
    if (v & QD_V_COLLAPSE) return "collapse";
    if (v & QD_V_LOCAL) return "local error";
    return "ok";
}

static void print_impl(FILE *f, const char *label, const qd_repro_impl *im) {
    const qd_metrics *l = &im->op.local;
    fprintf(f, "  %-9s rel_l2 %.3g vs the oracle = %.3gx the floor", label, l->rel_l2, im->op.ratio);
    if (im->verdict & QD_V_BLOWUP_MAG) fprintf(f, "; max|x| %.3g vs max|oracle| %.3g", l->max_mag_test, l->max_mag_ref);
    if (im->verdict & QD_V_NONFINITE)
        fprintf(f, "; %lld NaN/Inf", (long long)(l->nan_test + l->posinf_test + l->neginf_test));
    if (qd_verdict_fails(im->verdict)) fprintf(f, ": FAILS (%s; %s)\n", verdict_word(im->verdict), im->note);
    else fprintf(f, ": within the floor (%s)\n", im->note);
}

void qd_repro_print(const qd_repro_result *r, FILE *f) {
    char place[96];
    op_place(r->id, r->step, place, sizeof place);
    const double fl =
        r->stored.op.floor.rel_l2 > r->stored.op.min_floor ? r->stored.op.floor.rel_l2 : r->stored.op.min_floor;
    fprintf(f, "repro: %s, positions %d..%d, %s (side %s, %s, accum %s%s)\n", place, r->pos0, r->pos0 + r->T - 1,
            r->engine, r->side, r->precision, r->accum, strcmp(r->mode, "isolated") ? "" : ", teacher-forced");
    fprintf(f, "  oracle    the reference's maths, f64 accumulation; noise floor %.3g (%sthreshold %g)\n", fl,
            r->stored.op.floor.rel_l2 > r->stored.op.min_floor ? "" : "one rounding; ", r->threshold);
    print_impl(f, "contract", &r->contract);
    if (r->faulted.have) print_impl(f, "+fault", &r->faulted);
    if (r->fused.have) print_impl(f, "fused", &r->fused);
    else fprintf(f, "  fused: %s\n", r->fused.note);
    if (r->fault != QD_FAULT_NONE && r->fused.have)
        fprintf(f,
                "  fused: the launchers take no fault (fused/qd_fused_ops.h), so the kernel above ran clean; the "
                "fused backend hosts it: --backends ref,fused --inject %s\n",
                qd_fault_info_of((qd_fault_kind)r->fault)->name);
    const qd_metrics *l = &r->stored.op.local;
    fprintf(f, "stored %s output: rel_l2 %.3g vs the oracle = %.3gx the floor", r->engine, l->rel_l2,
            r->stored.op.ratio);
    if (r->stored.verdict & QD_V_BLOWUP_MAG)
        fprintf(f, ", max|%s| %.3g vs max|oracle| %.3g", r->engine, l->max_mag_test, l->max_mag_ref);
    if (qd_verdict_fails(r->stored.verdict)) fprintf(f, ": FAILS (%s at %s)\n", verdict_word(r->stored.verdict), place);
    else fprintf(f, ": passes\n");
}
