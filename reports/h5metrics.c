/* h5metrics.c: the comparator's rows as a table of the HDF5 dump, /diff/<A>-vs-<B>/metrics, with the
 * first divergence as attributes of its group (docs/SCHEMA.md; qd_reports.h). Written through compare/'s
 * qd_dump_write_table. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>

#include "qd_reports.h"

// ----------------------------------------------------------------------------
// HDF5: /diff/<A>-vs-<B>/metrics

typedef struct {
    int32_t step, layer;
    char tap[24], mode[16];
    uint8_t pass;
    uint32_t flags;
    int64_t n, token, head, channel;
    double max_abs, test_at, ref_at, max_rel, rel_l2, cosine, sqnr_db;
    int64_t nan_test, posinf_test, neginf_test, nan_ref, posinf_ref, neginf_ref;
    double max_mag_test, max_mag_ref, mag_ratio;
    double tol_rel_l2, tol_atol, tol_rtol, prev_rel_l2;
} metrics_record;

static int64_t metrics_type(void) {
    hid_t t = H5Tcreate(H5T_COMPOUND, sizeof(metrics_record));
    hid_t s24 = H5Tcopy(H5T_C_S1), s16 = H5Tcopy(H5T_C_S1);
    H5Tset_size(s24, 24);
    H5Tset_size(s16, 16);
#define F(name, type) H5Tinsert(t, #name, HOFFSET(metrics_record, name), type)
    F(step, H5T_NATIVE_INT32);
    F(layer, H5T_NATIVE_INT32);
    F(tap, s24);
    F(mode, s16);
    F(pass, H5T_NATIVE_UINT8);
    F(flags, H5T_NATIVE_UINT32);
    F(n, H5T_NATIVE_INT64);
    F(max_abs, H5T_NATIVE_DOUBLE);
    F(token, H5T_NATIVE_INT64);
    F(head, H5T_NATIVE_INT64);
    F(channel, H5T_NATIVE_INT64);
    F(test_at, H5T_NATIVE_DOUBLE);
    F(ref_at, H5T_NATIVE_DOUBLE);
    F(max_rel, H5T_NATIVE_DOUBLE);
    F(rel_l2, H5T_NATIVE_DOUBLE);
    F(cosine, H5T_NATIVE_DOUBLE);
    F(sqnr_db, H5T_NATIVE_DOUBLE);
    F(nan_test, H5T_NATIVE_INT64);
    F(posinf_test, H5T_NATIVE_INT64);
    F(neginf_test, H5T_NATIVE_INT64);
    F(nan_ref, H5T_NATIVE_INT64);
    F(posinf_ref, H5T_NATIVE_INT64);
    F(neginf_ref, H5T_NATIVE_INT64);
    F(max_mag_test, H5T_NATIVE_DOUBLE);
    F(max_mag_ref, H5T_NATIVE_DOUBLE);
    F(mag_ratio, H5T_NATIVE_DOUBLE);
    F(tol_rel_l2, H5T_NATIVE_DOUBLE);
    F(tol_atol, H5T_NATIVE_DOUBLE);
    F(tol_rtol, H5T_NATIVE_DOUBLE);
    F(prev_rel_l2, H5T_NATIVE_DOUBLE);
#undef F
    H5Tclose(s24);
    H5Tclose(s16);
    return t;
}

int qd_report_write_h5(const qd_report *r, qd_dump *d, qd_err *e) {
    char group[160];
    snprintf(group, sizeof group, "%s-vs-%s", r->name_a, r->name_b);
    /* zeroed: the record's padding and the strings' tails reach the file as they are */
    metrics_record *rec = qd_zalloc((size_t)r->n, sizeof *rec, e);
    if (!rec) return QD_ERUNTIME; /* e filled by qd_zalloc */
    for (int i = 0; i < r->n; i++) {
        const qd_tap_row *row = &r->rows[i];
        metrics_record *x = &rec[i];
        x->step = row->step;
        x->layer = row->layer;
        snprintf(x->tap, sizeof x->tap, "%s", qd_row_tap_name(row));
        snprintf(x->mode, sizeof x->mode, "%s", qd_mode_name(row->mode));
        x->pass = !qd_verdict_fails(row->verdict);
        x->flags = row->verdict;
        x->n = row->m.n;
        x->max_abs = row->m.max_abs;
        x->token = qd_metrics_token(&row->m);
        x->head = qd_metrics_head(&row->m);
        x->channel = qd_metrics_channel(&row->m);
        x->test_at = row->m.test_at;
        x->ref_at = row->m.ref_at;
        x->max_rel = row->m.max_rel;
        x->rel_l2 = row->m.rel_l2;
        x->cosine = row->m.cosine;
        x->sqnr_db = row->m.sqnr_db;
        x->nan_test = row->m.nan_test;
        x->posinf_test = row->m.posinf_test;
        x->neginf_test = row->m.neginf_test;
        x->nan_ref = row->m.nan_ref;
        x->posinf_ref = row->m.posinf_ref;
        x->neginf_ref = row->m.neginf_ref;
        x->max_mag_test = row->m.max_mag_test;
        x->max_mag_ref = row->m.max_mag_ref;
        x->mag_ratio = row->m.mag_ratio;
        x->tol_rel_l2 = row->tol.rel_l2;
        x->tol_atol = row->tol.atol;
        x->tol_rtol = row->tol.rtol;
        x->prev_rel_l2 = row->prev_rel_l2;
    }
    int fdl = -1;
    char fdt[24] = "", fdm[16] = "";
    int fds = -1;
    if (r->first_div >= 0) {
        const qd_tap_row *row = &r->rows[r->first_div];
        fdl = row->layer;
        fds = row->step;
        snprintf(fdt, sizeof fdt, "%s", qd_row_tap_name(row));
        snprintf(fdm, sizeof fdm, "%s", qd_mode_name(row->mode));
    }
    int rc = qd_dump_write_table(d, "diff", group, "metrics", rec, (size_t)r->n, metrics_type, e);
    if (!rc) rc = qd_dump_group_attr_int(d, "diff", group, "first_divergence_layer", fdl, e);
    if (!rc) rc = qd_dump_group_attr_int(d, "diff", group, "first_divergence_step", fds, e);
    if (!rc) rc = qd_dump_group_attr_string(d, "diff", group, "first_divergence_tap", fdt, e);
    if (!rc) rc = qd_dump_group_attr_string(d, "diff", group, "first_divergence_mode", fdm, e);
    if (!rc) rc = qd_dump_group_attr_string(d, "diff", group, "reference", r->name_a, e);
    if (!rc) rc = qd_dump_group_attr_string(d, "diff", group, "test", r->name_b, e);
    free(rec);
    return rc;
}
