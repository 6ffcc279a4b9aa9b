/* shared.c: the wording and file writing the writers of reports/ share (shared.h). */
#include "shared.h"

#include "qd_files.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const char *qd_verdict_class(unsigned v) {
    if (v & QD_V_NONFINITE) return "non-finite";
    if (v & QD_V_BLOWUP_MAG) return "blow-up";
    if (v & QD_V_COLLAPSE) return "collapse";
    if (v & QD_V_BLOWUP_GROWTH) return "error growth";
    if (v & QD_V_REL_L2) return "rel_l2";
    if (v & QD_V_MAX_ABS) return "max_abs";
    if (v & QD_V_LOCAL) return "local error";
    return "ok";
}

const char *qd_row_side_name(const qd_report *r, const qd_tap_row *row) {
    return row->judged == 1 ? r->name_b : r->name_a;
}

/* The replay verdict's reason: the judged side's local error against its noise floor. */
static void replay_reason(const qd_report *r, const qd_tap_row *row, char *buf, size_t n) {
    if (row->judged < 0) {
        snprintf(buf, n, "not replayed");
        return;
    }
    const qd_replay_op *op = &row->rp[row->judged];
    const qd_metrics *l = &op->local, *f = &op->floor;
    const char *side = qd_row_side_name(r, row);
    const double fl = f->rel_l2 > op->min_floor ? f->rel_l2 : op->min_floor;
    size_t k = 0;
#define ADD(...) (k += (size_t)snprintf(buf + k, k < n ? n - k : 0, __VA_ARGS__), k = k < n ? k : n)
    buf[0] = '\0';
    if (row->verdict & QD_V_NONFINITE)
        ADD("non-finite: %s has %lld NaN/Inf where the contract on the same inputs has %lld; ", side,
            (long long)(l->nan_test + l->posinf_test + l->neginf_test),
            (long long)(f->nan_test + f->posinf_test + f->neginf_test));
    if (row->verdict & QD_V_COLLAPSE) ADD("collapsed to zero (oracle max %.3g); ", l->max_mag_ref);
    if (row->verdict & QD_V_BLOWUP_MAG)
        ADD("blow-up: max |%s| %.3g vs max |oracle| %.3g; ", side, l->max_mag_test, l->max_mag_ref);
    const int p = qd_distinct_digits(op->ratio, r->threshold, 3); /* "4.01x ... (threshold 4)", not "4x" */
    ADD("%s's local error rel_l2 %.3g = %.*gx its noise floor %.3g%s (threshold %.*g)", side, l->rel_l2, p, op->ratio,
        fl, f->rel_l2 > op->min_floor ? "" : " (one rounding)", p, r->threshold);
#undef ADD
}

void qd_row_reason(const qd_report *r, const qd_tap_row *row, char *buf, size_t n) {
    if (r->replay) replay_reason(r, row, buf, n);
    else qd_verdict_reason(row->verdict, &row->m, &row->tol, &r->blowup, row->prev_rel_l2, buf, n);
}

void qd_row_place(const qd_tap_row *row, char *buf, size_t n) {
    char step[32] = "";
    if (row->step > 0) snprintf(step, sizeof step, "decode step %d, ", row->step);
    if (row->id.pos != QD_POS_LAYER) snprintf(buf, n, "%s%s", step, qd_row_tap_name(row));
    else snprintf(buf, n, "%slayer %d, %s", step, row->id.layer, qd_row_tap_name(row));
}

int qd_row_in_group(const qd_tap_row *row, int step, int layer, int head) {
    qd_tap_pos pos = layer >= 0 ? QD_POS_LAYER : head ? QD_POS_HEAD : QD_POS_EMBED;
    return row->step == step && row->id.pos == pos && (pos != QD_POS_LAYER || row->id.layer == layer);
}

int qd_write_text_output(const char *path, const char *text, qd_err *e) {
    qd_out o;
    int rc = qd_out_open(&o, path, e); /* "-", a pipe, a device in place; a file atomically (qd_files.h) */
    if (rc) return rc;
    if (fputs(text, o.f) == EOF) {
        rc = qd_errf(e, QD_ERUNTIME, "%s: write failed: %s", path, strerror(errno));
        qd_out_abort(&o);
        return rc;
    }
    return qd_out_commit(&o, e);
}
