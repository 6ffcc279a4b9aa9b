/* sweep.c: the precision sweep (qd_sweep.h): the backend under test in fp32, fp16 and bf16, each pair
 * blessed on its own, and which dtypes keep the divergence. */
#include "qd_sweep.h"

#include <string.h>

#include "qd_selftest.h"

static const char *const sweep_acts[QD_SWEEP_NDTYPES] = {"fp32", "fp16", "bf16"};

qd_sweep_class qd_sweep_classify(const int diverged[QD_SWEEP_NDTYPES]) {
    int f32 = diverged[QD_SWEEP_FP32] != 0, f16 = diverged[QD_SWEEP_FP16] != 0, b16 = diverged[QD_SWEEP_BF16] != 0;
    if (f32) return f16 && b16 ? QD_SWEEP_BUG : QD_SWEEP_INCONSISTENT;
    if (f16 && b16) return QD_SWEEP_PRECISION;
    if (f16) return QD_SWEEP_RANGE_FP16;
    if (b16) return QD_SWEEP_MANTISSA_BF16;
    return QD_SWEEP_CLEAN;
}

const char *qd_sweep_class_name(qd_sweep_class c) {
    switch (c) {
    case QD_SWEEP_CLEAN: return "clean";
    case QD_SWEEP_PRECISION: return "precision";
    case QD_SWEEP_RANGE_FP16: return "range-fp16";
    case QD_SWEEP_MANTISSA_BF16: return "mantissa-bf16";
    case QD_SWEEP_BUG: return "bug";
    case QD_SWEEP_INCONSISTENT: return "inconsistent";
    }
    return "?";
}

const char *qd_sweep_class_text(qd_sweep_class c) {
    switch (c) {
    case QD_SWEEP_CLEAN: return "no divergence in any activation dtype";
    case QD_SWEEP_PRECISION:
        return "diverges in bf16 and fp16, clean in fp32: a precision problem of the activation dtype";
    case QD_SWEEP_RANGE_FP16:
        return "diverges in fp16 only, clean in fp32 and bf16: fp16's range (a value above 65504 overflows)";
    case QD_SWEEP_MANTISSA_BF16:
        return "diverges in bf16 only, clean in fp32 and fp16: bf16's 8-bit mantissa is too coarse here";
    case QD_SWEEP_BUG: return "diverges in every activation dtype: not explained by precision (a bug)";
    case QD_SWEEP_INCONSISTENT:
        return "diverges in fp32 but not in every lower precision: not a precision effect (a bug that rounding "
               "hides in some dtype)";
    }
    return "?";
}

/* One dtype: bless the clean pair, then run the pair under test once. */
static int sweep_one(const qd_weights *w, const qd_sweep_opts *o, int i, qd_sweep_entry *en, qd_err *e) {
    memset(en, 0, sizeof *en);
    snprintf(en->act, sizeof en->act, "%s", sweep_acts[i]);
    en->step = en->layer = en->tap = -1;
    qd_backend_opts ob = o->opts;
    ob.act = sweep_acts[i];
    ob.max_seq = o->T + o->decode;
    qd_backend_opts oc = ob; /* the clean side: no fault */
    oc.fault.kind = QD_FAULT_NONE;
    oc.fault.layer = -1;
    int iso = o->locate == QD_MODE_ISOLATED;
    qd_backend *a = NULL, *b = NULL, *bi = NULL, *fb = NULL, *fbi = NULL;
    qd_tolerances tol;
    int have_tol = 0, rc = QD_OK;
    if (!(a = qd_backend_create(o->name_a, w, &oc, e)) || !(b = qd_backend_create(o->name_b, w, &oc, e)) ||
        (iso && !(bi = qd_backend_create(o->name_b, w, &oc, e))) || !(fb = qd_backend_create(o->name_b, w, &ob, e)) ||
        (iso && !(fbi = qd_backend_create(o->name_b, w, &ob, e)))) {
        rc = e->code ? e->code : QD_ERUNTIME;
        goto out;
    }
    rc = qd_bless(a, b, bi, o->tokens, o->T, o->calib_prompts, o->decode, o->margin, &tol, NULL, NULL, e);
    if (rc == QD_EDIVERGED) { /* the clean pair is itself broken in this dtype: that is a divergence */
        en->diverged = 1;
        snprintf(en->reason, sizeof en->reason, "the clean pair is already broken: %.160s", e->msg);
        qd_err_clear(e);
        rc = QD_OK;
        goto out;
    }
    if (rc) goto out;
    have_tol = 1;
    qd_report r;
    qd_report_init(&r, a->name, a->precision, fb->name, fb->precision, a->cfg->num_hidden_layers, o->locate,
                   &tol.blowup);
    qd_lockstep_opts lo = {
        .tokens = o->tokens, .T = o->T, .decode = o->decode, .tol = &tol, .locate = o->locate, .dump_window = -1};
    if ((rc = qd_lockstep(a, fb, fbi, &lo, &r, e)) == QD_OK && r.first_div >= 0) {
        const qd_tap_row *row = &r.rows[r.first_div];
        en->diverged = 1;
        en->step = row->step;
        en->layer = row->id.layer;
        en->tap = row->id.tap;
        snprintf(en->tap_name, sizeof en->tap_name, "%s", qd_row_tap_name(row));
        en->verdict = row->verdict;
        qd_verdict_reason(row->verdict, &row->m, &row->tol, &r.blowup, row->prev_rel_l2, en->reason, sizeof en->reason);
    }
    qd_report_free(&r);
out:
    if (have_tol) qd_tolerances_free(&tol);
    qd_backend_destroy(fbi);
    qd_backend_destroy(fb);
    qd_backend_destroy(bi);
    qd_backend_destroy(b);
    qd_backend_destroy(a);
    return rc;
}

int qd_precision_sweep(const qd_weights *w, const qd_sweep_opts *o, qd_sweep_result *out, qd_err *e) {
    memset(out, 0, sizeof *out);
    if (o->calib_prompts < 1 || !(o->margin >= 1.0))
        return qd_errf(e, QD_EINPUT, "precision sweep: calib_prompts must be >= 1 and margin >= 1");
    int diverged[QD_SWEEP_NDTYPES];
    if (o->progress) o->progress->total = QD_SWEEP_NDTYPES;
    for (int i = 0; i < QD_SWEEP_NDTYPES; i++) {
        qd_progress_update(o->progress, i, "precision sweep, %s (%d/%d)", sweep_acts[i], i + 1, QD_SWEEP_NDTYPES);
        int rc = sweep_one(w, o, i, &out->e[i], e);
        if (rc) {
            qd_progress_end(o->progress);
            return rc;
        }
        diverged[i] = out->e[i].diverged;
    }
    qd_progress_end(o->progress);
    out->cls = qd_sweep_classify(diverged);
    return QD_OK;
}

void qd_sweep_print(const qd_sweep_result *r, const qd_sweep_opts *o, FILE *f) {
    fprintf(f,
            "precision sweep: %s activations in fp32, fp16, bf16; each pair blessed on its own (%d prompts, "
            "margin %g)\n",
            o->name_b, o->calib_prompts, o->margin);
    for (int i = 0; i < QD_SWEEP_NDTYPES; i++) {
        const qd_sweep_entry *en = &r->e[i];
        if (!en->diverged) {
            fprintf(f, "  %-5s clean\n", en->act);
        } else if (en->layer < 0 && en->tap < 0) {
            fprintf(f, "  %-5s diverges: %s\n", en->act, en->reason);
        } else {
            char where[64];
            if (en->layer < 0) snprintf(where, sizeof where, "%s", en->tap_name);
            else snprintf(where, sizeof where, "layer %d, %s", en->layer, en->tap_name);
            fprintf(f, "  %-5s diverges at %s%s%.0d: %s\n", en->act, where, en->step ? ", step " : "", en->step,
                    en->reason);
        }
    }
    fprintf(f, "precision sweep verdict: %s: %s\n", qd_sweep_class_name(r->cls), qd_sweep_class_text(r->cls));
}
