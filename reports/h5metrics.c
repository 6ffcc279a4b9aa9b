/* h5metrics.c: the comparator's rows as a table of the HDF5 dump, /diff/<A>-vs-<B>/metrics, with the
 * first divergence as attributes of its group and where inside its tap the error lives as the small table
 * /diff/<A>-vs-<B>/where (docs/SCHEMA.md; qd_reports.h). Written through compare/'s qd_dump_write_table. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qd_reports.h"

/* The compound type: each field at its offset in qd_metrics_record, in the list's order. */
int64_t qd_metrics_record_type(void) {
    hid_t t = H5Tcreate(H5T_COMPOUND, sizeof(qd_metrics_record));
    hid_t s24 = H5Tcopy(H5T_C_S1), s16 = H5Tcopy(H5T_C_S1);
    int bad = t < 0 || s24 < 0 || s16 < 0;
    bad |= H5Tset_size(s24, sizeof((qd_metrics_record *)0)->tap) < 0;
    bad |= H5Tset_size(s16, sizeof((qd_metrics_record *)0)->mode) < 0;
#define INSERT(name, type) bad |= H5Tinsert(t, #name, HOFFSET(qd_metrics_record, name), type) < 0;
#define TABLE(name, ctype, h5type, json, doc) INSERT(name, h5type)
#define NOT_IN_TABLE(name, ctype, h5type, json, doc)
#define AT(value, index) \
    value index INSERT(token, H5T_NATIVE_INT64) INSERT(head, H5T_NATIVE_INT64) INSERT(channel, H5T_NATIVE_INT64)
    if (!bad) {
        INSERT(step, H5T_NATIVE_INT32)
        INSERT(layer, H5T_NATIVE_INT32)
        INSERT(tap, s24)
        INSERT(mode, s16)
        INSERT(pass, H5T_NATIVE_UINT8)
        INSERT(flags, H5T_NATIVE_UINT32)
        QD_METRICS_FIELDS(TABLE, NOT_IN_TABLE, AT)
        INSERT(tol_rel_l2, H5T_NATIVE_DOUBLE)
        INSERT(tol_atol, H5T_NATIVE_DOUBLE)
        INSERT(tol_rtol, H5T_NATIVE_DOUBLE)
        INSERT(prev_rel_l2, H5T_NATIVE_DOUBLE)
        QD_REPLAY_FIELDS(TABLE)
        INSERT(judged, H5T_NATIVE_INT32)
    }
#undef INSERT
#undef TABLE
#undef NOT_IN_TABLE
#undef AT
    if (s24 >= 0) H5Tclose(s24);
    if (s16 >= 0) H5Tclose(s16);
    if (bad && t >= 0) H5Tclose(t);
    return bad ? -1 : t;
}

void qd_metrics_record_fill(const qd_tap_row *row, qd_metrics_record *x) {
    memset(x, 0, sizeof *x); /* padding and the strings' tails reach the file as they are */
    x->step = row->step;
    x->layer = row->id.layer;
    snprintf(x->tap, sizeof x->tap, "%s", qd_row_tap_name(row));
    snprintf(x->mode, sizeof x->mode, "%s", qd_mode_name(row->mode));
    x->pass = !qd_verdict_fails(row->verdict);
    x->flags = row->verdict;
#define TABLE(name, ctype, h5type, json, doc) x->name = row->m.name;
#define NOT_IN_TABLE(name, ctype, h5type, json, doc)
#define AT(value, index)                              \
    value index x->token = qd_metrics_token(&row->m); \
    x->head = qd_metrics_head(&row->m);               \
    x->channel = qd_metrics_channel(&row->m);
    QD_METRICS_FIELDS(TABLE, NOT_IN_TABLE, AT)
#undef TABLE
#undef NOT_IN_TABLE
#undef AT
    x->tol_rel_l2 = row->tol.rel_l2;
    x->tol_atol = row->tol.atol;
    x->tol_rtol = row->tol.rtol;
    x->prev_rel_l2 = row->prev_rel_l2;
    const qd_replay_figures f = qd_replay_figures_of(row->judged >= 0 ? &row->rp[row->judged] : NULL);
#define FIGURE(name, ctype, h5type, json, doc) x->name = f.name;
    QD_REPLAY_FIELDS(FIGURE)
#undef FIGURE
    x->judged = row->judged;
}

int64_t qd_where_record_type(void) {
    hid_t t = H5Tcreate(H5T_COMPOUND, sizeof(qd_where_record));
    hid_t s8 = H5Tcopy(H5T_C_S1);
    int bad = t < 0 || s8 < 0 || H5Tset_size(s8, sizeof((qd_where_record *)0)->axis) < 0;
#define INSERT(name, type) bad |= H5Tinsert(t, #name, HOFFSET(qd_where_record, name), type) < 0;
    if (!bad) {
        INSERT(axis, s8)
        INSERT(rank, H5T_NATIVE_INT32)
        INSERT(index, H5T_NATIVE_INT64)
        INSERT(share, H5T_NATIVE_DOUBLE)
        INSERT(rms_err, H5T_NATIVE_DOUBLE)
        INSERT(rms_ref, H5T_NATIVE_DOUBLE)
        INSERT(nonfinite, H5T_NATIVE_INT64)
    }
#undef INSERT
    if (s8 >= 0) H5Tclose(s8);
    if (bad && t >= 0) H5Tclose(t);
    return bad ? -1 : t;
}

/* The first divergence's breakdown: its sentence as an attribute, its top offenders as a table (no rows
 * when there is no divergence). */
static int write_where(const qd_report *r, qd_dump *d, const char *group, qd_err *e) {
    const qd_where *w = &r->where;
    const int on = r->first_div >= 0 && w->valid;
    qd_where_record rec[QD_NUM_AXES * QD_WHERE_TOP];
    memset(rec, 0, sizeof rec); /* padding and the strings' tails reach the file as they are */
    size_t n = 0;
    for (int a = 0; on && a < QD_NUM_AXES; a++)
        for (int i = 0; i < w->axis[a].n_top; i++) {
            const qd_where_entry *t = &w->axis[a].top[i];
            qd_where_record *x = &rec[n++];
            snprintf(x->axis, sizeof x->axis, "%s", qd_where_axis_name(a));
            x->rank = i;
            x->index = t->index;
            x->share = t->share;
            x->rms_err = t->rms_err;
            x->rms_ref = t->rms_ref;
            x->nonfinite = t->nonfinite;
        }
    int rc = qd_dump_write_table(d, "diff", group, "where", rec, n, qd_where_record_type, e);
    if (!rc) rc = qd_dump_group_attr_string(d, "diff", group, "first_divergence_where", on ? w->summary : "", e);
    return rc;
}

int qd_report_write_h5(const qd_report *r, qd_dump *d, qd_err *e) {
    char group[160];
    snprintf(group, sizeof group, "%s-vs-%s", r->name_a, r->name_b);
    qd_metrics_record *rec = qd_alloc((size_t)r->n * sizeof *rec, e);
    if (!rec) return QD_ERUNTIME; /* e filled by qd_alloc */
    for (int i = 0; i < r->n; i++) qd_metrics_record_fill(&r->rows[i], &rec[i]);
    int fdl = -1;
    char fdt[24] = "", fdm[16] = "";
    int fds = -1;
    if (r->first_div >= 0) {
        const qd_tap_row *row = &r->rows[r->first_div];
        fdl = row->id.layer;
        fds = row->step;
        snprintf(fdt, sizeof fdt, "%s", qd_row_tap_name(row));
        snprintf(fdm, sizeof fdm, "%s", qd_mode_name(row->mode));
    }
    int rc = qd_dump_write_table(d, "diff", group, "metrics", rec, (size_t)r->n, qd_metrics_record_type, e);
    if (!rc) rc = qd_dump_group_attr_int(d, "diff", group, "first_divergence_layer", fdl, e);
    if (!rc) rc = qd_dump_group_attr_int(d, "diff", group, "first_divergence_step", fds, e);
    if (!rc) rc = qd_dump_group_attr_string(d, "diff", group, "first_divergence_tap", fdt, e);
    if (!rc) rc = qd_dump_group_attr_string(d, "diff", group, "first_divergence_mode", fdm, e);
    if (!rc) rc = qd_dump_group_attr_string(d, "diff", group, "reference", r->name_a, e);
    if (!rc) rc = qd_dump_group_attr_string(d, "diff", group, "test", r->name_b, e);
    if (!rc) rc = write_where(r, d, group, e);
    /* which verdict judged the rows: "replay" (the local ratio, with its threshold) or "tolerances" */
    if (!rc) rc = qd_dump_group_attr_string(d, "diff", group, "verdict", r->replay ? "replay" : "tolerances", e);
    if (!rc && r->replay && r->first_div >= 0)
        rc = qd_dump_group_attr_string(d, "diff", group, "first_divergence_side",
                                       r->rows[r->first_div].judged == 0 ? r->name_a : r->name_b, e);
    free(rec);
    return rc;
}
