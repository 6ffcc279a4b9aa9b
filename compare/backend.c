/* backend.c: the backends behind qd_backend.h. Each adapter is a thin wrapper over its backend's own API.
 */
#include "qd_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qd_build_config.h"
#include "qd_emu.h"
#if QD_HAVE_CUDA
#include "qd_fused.h"
#endif
#include "qd_ref.h"

/* --- ref: the fp32 reference ------------------------------------------------------------------------ */

static int ref_embed(qd_backend *b, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e) {
    return qd_ref_embed((qd_ref *)b->impl, tokens, T, h, sink, e);
}

static int ref_layer(qd_backend *b, int layer, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink,
                     qd_err *e) {
    return qd_ref_layer((qd_ref *)b->impl, layer, h_in, h_out, T, pos0, sink, e);
}

static int ref_head(qd_backend *b, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e) {
    return qd_ref_head((qd_ref *)b->impl, h, T, logits, sink, e);
}

static void ref_destroy(qd_backend *b) { qd_ref_free((qd_ref *)b->impl); }

static qd_backend *ref_create(const qd_weights *w, const qd_backend_opts *o, qd_err *e) {
    if (o->fault.kind != QD_FAULT_NONE) { /* the oracle stays clean */
        qd_errf(e, QD_EINPUT, "--inject: the reference takes no faults; inject into emu or fused");
        return NULL;
    }
    qd_ref_opts ro = {
        .threads = o->threads, .accum = o->accum_f64 ? QD_ACCUM_F64 : QD_ACCUM_F32, .max_seq = o->max_seq};
    qd_ref *r = qd_ref_create(w, &ro, e);
    if (!r) return NULL;
    qd_backend *b = qd_zalloc(1, sizeof *b, e);
    if (!b) {
        qd_ref_free(r);
        return NULL;
    }
    snprintf(b->name, sizeof b->name, "ref");
    snprintf(b->precision, sizeof b->precision, "fp32");
    snprintf(b->accum, sizeof b->accum, "%s", o->accum_f64 ? "f64" : "f32");
    b->cfg = &w->cfg;
    b->impl = r;
    b->embed = ref_embed;
    b->layer = ref_layer;
    b->head = ref_head;
    b->destroy = ref_destroy;
    return b;
}

/* --- emu: the fused path's precision contract on the CPU ------------------------------------------- */

static int emu_embed(qd_backend *b, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e) {
    return qd_emu_embed((qd_emu *)b->impl, tokens, T, h, sink, e);
}

static int emu_layer(qd_backend *b, int layer, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink,
                     qd_err *e) {
    return qd_emu_layer((qd_emu *)b->impl, layer, h_in, h_out, T, pos0, sink, e);
}

static int emu_head(qd_backend *b, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e) {
    return qd_emu_head((qd_emu *)b->impl, h, T, logits, sink, e);
}

static void emu_destroy(qd_backend *b) { qd_emu_free((qd_emu *)b->impl); }

static qd_backend *emu_create(const qd_weights *w, const qd_backend_opts *o, qd_err *e) {
    qd_act_dtype act = QD_ACT_BF16;
    if (o->act && qd_act_dtype_parse(o->act, &act) != 0) {
        qd_errf(e, QD_EINPUT, "activation precision '%s': expected bf16, fp16 or fp32", o->act);
        return NULL;
    }
    qd_emu *m = qd_emu_create(w, act, o->threads, o->max_seq, &o->fault, e);
    if (!m) return NULL;
    qd_emu_set_fp32_points(m, o->fp32_points);
    qd_backend *b = qd_zalloc(1, sizeof *b, e);
    if (!b) {
        qd_emu_free(m);
        return NULL;
    }
    snprintf(b->name, sizeof b->name, "emu");
    snprintf(b->precision, sizeof b->precision, "%s", qd_act_dtype_name(act));
    snprintf(b->accum, sizeof b->accum, "f32");
    b->cfg = &w->cfg;
    b->impl = m;
    b->embed = emu_embed;
    b->layer = emu_layer;
    b->head = emu_head;
    b->destroy = emu_destroy;
    return b;
}

/* --- fused: the CUDA path under test --------------------------------------------------------------- */

#if QD_HAVE_CUDA
static int fused_embed(qd_backend *b, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e) {
    return qd_fused_embed((qd_fused *)b->impl, tokens, T, h, sink, e);
}

static int fused_layer(qd_backend *b, int layer, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink,
                       qd_err *e) {
    return qd_fused_layer((qd_fused *)b->impl, layer, h_in, h_out, T, pos0, sink, e);
}

static int fused_head(qd_backend *b, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e) {
    return qd_fused_head((qd_fused *)b->impl, h, T, logits, sink, e);
}

static void fused_destroy(qd_backend *b) { qd_fused_free((qd_fused *)b->impl); }

static qd_backend *fused_create(const qd_weights *w, const qd_backend_opts *o, qd_err *e) {
    qd_fused_opts fo = {.act = QD_ACT_BF16, .max_seq = o->max_seq, .taps_all = o->taps_all, .fault = o->fault};
    if (o->act && qd_act_dtype_parse(o->act, &fo.act) != 0) {
        qd_errf(e, QD_EINPUT, "activation precision '%s': expected bf16, fp16 or fp32", o->act);
        return NULL;
    }
    if (w->mapped) { /* the upload reads the fp32 pointers, which mapped weights (qd_weights_map) leave NULL */
        qd_errf(e, QD_EINPUT, "fused: needs every weight in fp32 (qd_weights_load), got mapped weights");
        return NULL;
    }
    qd_fused *f = qd_fused_create(w, &fo, e);
    if (!f) return NULL;
    qd_backend *b = qd_zalloc(1, sizeof *b, e);
    if (!b) {
        qd_fused_free(f);
        return NULL;
    }
    snprintf(b->name, sizeof b->name, "fused");
    snprintf(b->precision, sizeof b->precision, "%s", qd_act_dtype_name(fo.act));
    snprintf(b->accum, sizeof b->accum, "f32");
    b->cfg = &w->cfg;
    b->impl = f;
    b->embed = fused_embed;
    b->layer = fused_layer;
    b->head = fused_head;
    b->destroy = fused_destroy;
    return b;
}
#endif

/* --- registry --------------------------------------------------------------------------------------- */

qd_backend *qd_backend_create(const char *name, const qd_weights *w, const qd_backend_opts *opts, qd_err *e) {
    /* per-op precision is emu's alone: the reference has no roundings, the CUDA kernels no such switch */
    if (opts->fp32_points && (strcmp(name, "ref") == 0 || strcmp(name, "fused") == 0)) {
        qd_errf(e, QD_EINPUT, "--fp32-ops: only emu keeps chosen ops in fp32; %s takes no per-op precision", name);
        return NULL;
    }
    if (strcmp(name, "ref") == 0) return ref_create(w, opts, e);
    if (strcmp(name, "emu") == 0) return emu_create(w, opts, e);
#if QD_HAVE_CUDA
    if (strcmp(name, "fused") == 0) return fused_create(w, opts, e);
#endif
    qd_errf(e, QD_EINPUT, "backend '%s': unknown or not built into this binary (available: %s)", name,
            qd_backend_names());
    return NULL;
}

void qd_backend_destroy(qd_backend *b) {
    if (!b) return;
    if (b->destroy) b->destroy(b);
    free(b);
}

const char *qd_backend_names(void) { return QD_HAVE_CUDA ? "ref, emu, fused" : "ref, emu"; }

const char *qd_backend_default_test(void) {
#if QD_HAVE_CUDA
    if (qd_fused_device_count(NULL, 0) > 0) return "fused";
#endif
    return "emu";
}
