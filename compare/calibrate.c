/* calibrate.c: the bless step (qwen3-diff --calibrate, and the selftest's gates): qd_compare.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qd_compare.h"

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void qd_calib_prompt(uint64_t seed, int T, int vocab, int32_t *out) {
    for (int k = 0; k < T; k++) out[k] = (int32_t)(splitmix64(&seed) % (uint64_t)vocab);
}

int qd_bless(qd_backend *a, qd_backend *b, qd_backend *b_iso, const int32_t *prompt, int T, int n_prompts, int decode,
             double margin, qd_tolerances *out, qd_bless_stats *stats, qd_progress *progress, qd_err *e) {
    qd_bless_stats st = {0, 0, "", ""};
    const qd_config *c = a->cfg;
    int rc = qd_tolerances_default(out, b->precision, a->precision, e);
    if (rc) return rc;
    qd_calib cal, cal_iso; /* free-running rows; teacher-forced rows (with b_iso) */
    if ((rc = qd_calib_init(&cal, c->num_hidden_layers, e))) {
        qd_tolerances_free(out);
        return rc;
    }
    if ((rc = qd_calib_init(&cal_iso, c->num_hidden_layers, e))) {
        qd_calib_free(&cal);
        qd_tolerances_free(out);
        return rc;
    }
    int32_t *p = qd_alloc((size_t)T * sizeof *p, e); /* (T) */
    if (!p) rc = QD_ERUNTIME;
    if (progress) progress->total = n_prompts;
    for (int i = 0; i < n_prompts && !rc; i++) {
        qd_progress_update(progress, i, "calibration prompt %d/%d", i + 1, n_prompts);
        if (i == 0) memcpy(p, prompt, (size_t)T * sizeof *p);
        else qd_calib_prompt(0x5eedull + (uint64_t)i, T, c->vocab_size, p);
        qd_report r;
        qd_report_init(&r, a->name, a->precision, b->name, b->precision, c->num_hidden_layers, QD_MODE_FREE,
                       &out->blowup);
        qd_lockstep_opts o = {
            .tokens = p, .T = T, .decode = decode, .tol = out, .locate = QD_MODE_FREE, .dump_window = -1};
        rc = qd_lockstep(a, b, b_iso, &o, &r, e);
        for (int k = 0; k < r.n && !rc; k++) {
            const qd_tap_row *row = &r.rows[k];
            if (row->verdict & (QD_V_NONFINITE | QD_V_BLOWUP_MAG | QD_V_COLLAPSE)) {
                rc = qd_errf(e, QD_EDIVERGED,
                             "calibration prompt %d: step %d, layer %d, %s: %s: a broken pair "
                             "cannot be blessed",
                             i, row->step, row->id.layer, qd_row_tap_name(row),
                             row->verdict & QD_V_NONFINITE  ? "non-finite values"
                             : row->verdict & QD_V_COLLAPSE ? "collapsed to zero"
                                                            : "blow-up");
                break;
            }
            /* teacher-forced errors get their own, tighter section; the free-running ones include the
             * inherited error and set the top level, which also covers what the isolated section lacks */
            if (row->mode == QD_MODE_ISOLATED) {
                rc = qd_calib_add(&cal_iso, row->id.layer, qd_row_tap_name(row), &row->m, e);
                continue;
            }
            rc = qd_calib_add(&cal, row->id.layer, qd_row_tap_name(row), &row->m, e);
            if (row->m.rel_l2 > st.worst_rel_l2) {
                st.worst_rel_l2 = row->m.rel_l2;
                snprintf(st.worst_at, sizeof st.worst_at, "step %d, layer %d, %s", row->step, row->id.layer,
                         qd_row_tap_name(row));
            }
            /* layer-to-layer growth, as the verdict measures it */
            if (row->prev_rel_l2 > out->blowup.growth_floor && row->m.rel_l2 / row->prev_rel_l2 > st.worst_growth) {
                st.worst_growth = row->m.rel_l2 / row->prev_rel_l2;
                snprintf(st.worst_growth_at, sizeof st.worst_growth_at, "step %d, layer %d, %s", row->step,
                         row->id.layer, qd_row_tap_name(row));
            }
        }
        qd_report_free(&r);
    }
    if (!rc) rc = qd_calib_to_tolerances(&cal, margin, NULL, out, e);
    if (!rc && b_iso) rc = qd_calib_to_tolerances_isolated(&cal_iso, margin, NULL, out, e);
    /* A known-good pair whose error already grows g-fold between two layers somewhere (single-token decode
     * steps of a model with near one-hot attention do) must not trip the growth check: the blessed factor
     * is margin x the worst growth measured, never below the default. */
    if (!rc && margin * st.worst_growth > out->blowup.growth_factor)
        out->blowup.growth_factor = margin * st.worst_growth;
    if (stats) *stats = st;
    qd_progress_end(progress);
    free(p);
    qd_calib_free(&cal);
    qd_calib_free(&cal_iso);
    if (rc) qd_tolerances_free(out);
    return rc;
}
