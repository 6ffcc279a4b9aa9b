/* report.c: what the comparator tells people and machines: the first divergence line and a per-layer
 * table (terminal), JSON, JUnit XML and the /diff metrics table of the HDF5 dump (qd_compare.h). */
#include <errno.h>
#include <hdf5.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qd_compare.h"

// ----------------------------------------------------------------------------
// shared wording

/* The one-word class of a failure, most telling first. */
static const char *verdict_class(unsigned v) {
    if (v & QD_V_NONFINITE) return "non-finite";
    if (v & QD_V_BLOWUP_MAG) return "blow-up";
    if (v & QD_V_COLLAPSE) return "collapse";
    if (v & QD_V_BLOWUP_GROWTH) return "error growth";
    if (v & QD_V_REL_L2) return "rel_l2";
    if (v & QD_V_MAX_ABS) return "max_abs";
    return "ok";
}

static void row_reason(const qd_report *r, const qd_tap_row *row, char *buf, size_t n) {
    qd_verdict_reason(row->verdict, &row->m, &row->tol, &r->blowup, row->prev_rel_l2, buf, n);
}

/* "layer 1, o_proj" / "logits" / "decode step 2, layer 1, o_proj" */
static void row_place(const qd_tap_row *row, char *buf, size_t n) {
    char step[32] = "";
    if (row->step > 0) snprintf(step, sizeof step, "decode step %d, ", row->step);
    if (row->id.pos != QD_POS_LAYER)
        snprintf(buf, n, "%s%s", step, qd_row_tap_name(row));
    else
        snprintf(buf, n, "%slayer %d, %s", step, row->id.layer, qd_row_tap_name(row));
}

/* The position of a table row: layer >= 0, else the embed or (head) the head row. */
static qd_tap_pos group_pos(int layer, int head) {
    return layer >= 0 ? QD_POS_LAYER : head ? QD_POS_HEAD : QD_POS_EMBED;
}

// ----------------------------------------------------------------------------
// terminal

#define RED(c) ((c) ? "\033[1;31m" : "")
#define GREEN(c) ((c) ? "\033[32m" : "")
#define BOLD(c) ((c) ? "\033[1m" : "")
#define RESET(c) ((c) ? "\033[0m" : "")

static void print_first_divergence(const qd_report *r, FILE *f, int color) {
    if (r->first_div < 0) {
        fprintf(f, "%sno divergence%s: every shared tap of %s vs %s is within tolerance (%s mode)\n",
                GREEN(color), RESET(color), r->name_b, r->name_a, qd_mode_name(r->locate));
        return;
    }
    const qd_tap_row *row = &r->rows[r->first_div];
    char place[96], where[96], reason[512];
    row_place(row, place, sizeof place);
    qd_metrics_where(&row->m, where, sizeof where);
    row_reason(r, row, reason, sizeof reason);
    fprintf(f, "%sfirst divergence%s%s: %s — max|%s| %.3g vs max|%s| %.3g at %s (%s)\n", RED(color),
            r->isolated ? (row->mode == QD_MODE_ISOLATED ? " (isolated)" : " (free-running)") : "", RESET(color),
            place, r->name_b, row->m.max_mag_test, r->name_a, row->m.max_mag_ref, where,
            verdict_class(row->verdict));
    fprintf(f, "  why: %s; there %s = %.6g, %s = %.6g\n", reason, r->name_b, row->m.test_at, r->name_a,
            row->m.ref_at);
}

/* Worst and first-failing rows of one (step, layer, mode) group of rows. */
typedef struct {
    const qd_tap_row *worst, *first_fail;
    double mag_ratio;
    int n;
} layer_summary;

static layer_summary summarise(const qd_report *r, int step, int layer, qd_mode mode, int head) {
    layer_summary s = {NULL, NULL, 0, 0};
    for (int i = 0; i < r->n; i++) {
        const qd_tap_row *row = &r->rows[i];
        if (row->step != step || row->id.pos != group_pos(layer, head) || row->id.layer != layer || row->mode != mode)
            continue;
        s.n++;
        if (!s.worst || row->m.rel_l2 > s.worst->m.rel_l2 || isnan(row->m.rel_l2)) s.worst = row;
        if (!s.first_fail && qd_verdict_fails(row->verdict)) s.first_fail = row;
        if (row->m.mag_ratio > s.mag_ratio) s.mag_ratio = row->m.mag_ratio;
    }
    return s;
}

static void print_layer_row(const qd_report *r, FILE *f, int color, int step, int layer, int head) {
    layer_summary fr = summarise(r, step, layer, QD_MODE_FREE, head);
    if (fr.n == 0) return;
    layer_summary is = summarise(r, step, layer, QD_MODE_ISOLATED, head);
    char name[16];
    if (layer >= 0) snprintf(name, sizeof name, "%5d", layer);
    else snprintf(name, sizeof name, "%5s", head ? "head" : "embed");
    fprintf(f, "%s  %-14s %9.2e %9.2e %9.3g", name, qd_row_tap_name(fr.worst), fr.worst->m.rel_l2,
            fr.worst->m.max_abs, fr.mag_ratio);
    if (r->isolated) {
        if (is.n)
            fprintf(f, "  %-14s %9.2e", qd_row_tap_name(is.worst), is.worst->m.rel_l2);
        else
            fprintf(f, "  %-14s %9s", "-", "-");
    }
    const qd_tap_row *ff = fr.first_fail ? fr.first_fail : is.first_fail;
    if (ff)
        fprintf(f, "  %sFAIL%s %s%s: %s\n", RED(color), RESET(color), qd_row_tap_name(ff),
                ff->mode == QD_MODE_ISOLATED ? " (isolated)" : "", verdict_class(ff->verdict));
    else
        fprintf(f, "  %sok%s\n", GREEN(color), RESET(color));
}

void qd_report_print(const qd_report *r, FILE *f, int color) {
    fprintf(f, "%s%s (%s) vs %s (%s)%s: %d layers, %d taps compared%s\n", BOLD(color), r->name_a, r->prec_a,
            r->name_b, r->prec_b, RESET(color), r->n_layers, r->n,
            r->steps > 1 ? ", prompt and decode steps" : "");
    print_first_divergence(r, f, color);
    for (int step = 0; step < r->steps; step++) {
        if (r->steps > 1) fprintf(f, "\n%s\n", step == 0 ? "prompt:" : "");
        if (step > 0) fprintf(f, "decode step %d:\n", step);
        fprintf(f, "%5s  %-14s %9s %9s %9s", "layer", "worst tap", "rel_l2", "max_abs", "mag_ratio");
        if (r->isolated) fprintf(f, "  %-14s %9s", "isolated worst", "rel_l2");
        fprintf(f, "  status\n");
        print_layer_row(r, f, color, step, -1, 0);
        for (int l = 0; l < r->n_layers; l++) print_layer_row(r, f, color, step, l, 0);
        print_layer_row(r, f, color, step, -1, 1);
    }
    if (r->n_only_a || r->n_only_b) {
        for (int side = 0; side < 2; side++) {
            int n = side ? r->n_only_b : r->n_only_a;
            if (!n) continue;
            fprintf(f, "taps only in %s (not compared):", side ? r->name_b : r->name_a);
            for (int i = 0; i < n; i++) fprintf(f, "%s %s", i ? "," : "", side ? r->only_b[i] : r->only_a[i]);
            fprintf(f, "\n");
        }
    }
}

// ----------------------------------------------------------------------------
// JSON

static json_t *tol_json(const qd_tol *t) {
    json_t *o = json_object();
    json_object_set_new(o, "rel_l2", qd_json_real(t->rel_l2));
    json_object_set_new(o, "atol", qd_json_real(t->atol));
    json_object_set_new(o, "rtol", qd_json_real(t->rtol));
    return o;
}

static json_t *row_json(const qd_report *r, const qd_tap_row *row) {
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(row->step));
    json_object_set_new(o, "layer", json_integer(row->id.layer));
    json_object_set_new(o, "tap", json_string(qd_row_tap_name(row)));
    json_object_set_new(o, "mode", json_string(qd_mode_name(row->mode)));
    json_object_set_new(o, "pass", json_boolean(!qd_verdict_fails(row->verdict)));
    json_t *flags = json_array();
    for (unsigned bit = 1; bit <= QD_V_ALL; bit <<= 1)
        if (row->verdict & bit) json_array_append_new(flags, json_string(qd_verdict_flag_name(bit)));
    json_object_set_new(o, "flags", flags);
    char reason[512];
    row_reason(r, row, reason, sizeof reason);
    json_object_set_new(o, "reason", json_string(reason));
    json_object_set_new(o, "tol", tol_json(&row->tol));
    json_object_set_new(o, "prev_rel_l2", qd_json_real(row->prev_rel_l2));
    json_t *m = qd_metrics_to_json(&row->m);
    json_object_update(o, m);
    json_decref(m);
    return o;
}

static json_t *names_json(const char (*names)[24], int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_string(names[i]));
    return a;
}

static int write_text_atomically(const char *path, const char *text, qd_err *e) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return qd_errf(e, QD_ERUNTIME, "%s: fopen failed: %s", tmp, strerror(errno));
    size_t len = strlen(text);
    int bad = fwrite(text, 1, len, f) != len;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return qd_errf(e, QD_ERUNTIME, "%s: write/rename failed: %s", path, strerror(errno));
    }
    return QD_OK;
}

int qd_report_write_json(const qd_report *r, const char *path, qd_err *e) {
    json_t *root = json_object();
    json_object_set_new(root, "schema", json_string("qwen3-diff-report/1"));
    json_object_set_new(root, "verdict", json_string(r->first_div >= 0 ? "diverged" : "pass"));
    json_object_set_new(root, "first_divergence",
                        r->first_div >= 0 ? row_json(r, &r->rows[r->first_div]) : json_null());
    json_t *be = json_object();
    json_object_set_new(be, "reference", json_pack("{s:s, s:s}", "name", r->name_a, "precision", r->prec_a));
    json_object_set_new(be, "test", json_pack("{s:s, s:s}", "name", r->name_b, "precision", r->prec_b));
    json_object_set_new(root, "backends", be);
    json_object_set_new(root, "layers", json_integer(r->n_layers));
    json_object_set_new(root, "steps", json_integer(r->steps));
    json_object_set_new(root, "locate", json_string(qd_mode_name(r->locate)));
    json_object_set_new(root, "blowup", json_pack("{s:o, s:o, s:o}", "blowup_ratio", qd_json_real(r->blowup.blowup_ratio),
                                                  "growth_factor", qd_json_real(r->blowup.growth_factor),
                                                  "growth_floor", qd_json_real(r->blowup.growth_floor)));
    json_t *taps = json_array();
    for (int i = 0; i < r->n; i++) json_array_append_new(taps, row_json(r, &r->rows[i]));
    json_object_set_new(root, "taps", taps);
    json_object_set_new(root, "only_in_reference", names_json(r->only_a, r->n_only_a));
    json_object_set_new(root, "only_in_test", names_json(r->only_b, r->n_only_b));
    char *text = json_dumps(root, JSON_INDENT(1) | JSON_REAL_PRECISION(9));
    json_decref(root);
    if (!text) return qd_errf(e, QD_ERUNTIME, "%s: json_dumps failed", path);
    size_t len = strlen(text);
    char *with_nl = qd_alloc(len + 2, e);
    if (!with_nl) {
        free(text);
        return QD_ERUNTIME;
    }
    memcpy(with_nl, text, len);
    memcpy(with_nl + len, "\n", 2);
    free(text);
    int rc = write_text_atomically(path, with_nl, e);
    free(with_nl);
    return rc;
}

// ----------------------------------------------------------------------------
// JUnit XML

/* Appends s to the growing buffer, escaping XML's five special characters. Out of memory: *buf is freed
 * and left NULL, and later appends do nothing (the writer reports it once). */
static void xml_append(char **buf, size_t *len, size_t *cap, const char *s, int escape) {
    for (; *buf && *s; s++) {
        const char *rep = NULL;
        if (escape) {
            switch (*s) {
            case '&': rep = "&amp;"; break;
            case '<': rep = "&lt;"; break;
            case '>': rep = "&gt;"; break;
            case '"': rep = "&quot;"; break;
            case '\'': rep = "&apos;"; break;
            default: break;
            }
        }
        size_t k = rep ? strlen(rep) : 1;
        if (*len + k + 1 > *cap) {
            *cap = 2 * (*cap + k + 1);
            char *grown = qd_resize(*buf, *cap, NULL);
            if (!grown) {
                free(*buf);
                *buf = NULL;
                return;
            }
            *buf = grown;
        }
        if (rep) memcpy(*buf + *len, rep, k);
        else (*buf)[*len] = *s;
        *len += k;
    }
    if (*buf) (*buf)[*len] = '\0';
}

static void junit_case(const qd_report *r, char **buf, size_t *len, size_t *cap, int step, int layer, int head,
                       const char *suite) {
    char name[64], line[1024];
    int count = 0, failing = 0;
    for (int i = 0; i < r->n; i++) {
        const qd_tap_row *row = &r->rows[i];
        if (row->step != step || row->id.pos != group_pos(layer, head) || row->id.layer != layer) continue;
        count++;
        failing += qd_verdict_fails(row->verdict);
    }
    if (!count) return;
    const char *base = layer >= 0 ? NULL : head ? "head" : "embed";
    if (step > 0) {
        if (base) snprintf(name, sizeof name, "decode step %d %s", step, base);
        else snprintf(name, sizeof name, "decode step %d layer %03d", step, layer);
    } else {
        if (base) snprintf(name, sizeof name, "%s", base);
        else snprintf(name, sizeof name, "layer %03d", layer);
    }
    xml_append(buf, len, cap, "  <testcase classname=\"", 0);
    xml_append(buf, len, cap, suite, 1);
    xml_append(buf, len, cap, "\" name=\"", 0);
    xml_append(buf, len, cap, name, 1);
    xml_append(buf, len, cap, "\">\n", 0);
    if (failing) {
        const qd_tap_row *first = NULL;
        for (int i = 0; i < r->n && !first; i++) {
            const qd_tap_row *row = &r->rows[i];
            if (row->step == step && row->id.pos == group_pos(layer, head) && row->id.layer == layer &&
                qd_verdict_fails(row->verdict))
                first = row;
        }
        char reason[512];
        row_reason(r, first, reason, sizeof reason);
        snprintf(line, sizeof line, "%s (%s): %s", qd_row_tap_name(first), qd_mode_name(first->mode), reason);
        xml_append(buf, len, cap, "    <failure type=\"", 0);
        xml_append(buf, len, cap, verdict_class(first->verdict), 1);
        xml_append(buf, len, cap, "\" message=\"", 0);
        xml_append(buf, len, cap, line, 1);
        xml_append(buf, len, cap, "\">", 0);
        for (int i = 0; i < r->n; i++) {
            const qd_tap_row *row = &r->rows[i];
            if (row->step != step || row->id.pos != group_pos(layer, head) || row->id.layer != layer ||
                !qd_verdict_fails(row->verdict))
                continue;
            row_reason(r, row, reason, sizeof reason);
            snprintf(line, sizeof line, "%s (%s): %s\n", qd_row_tap_name(row), qd_mode_name(row->mode), reason);
            xml_append(buf, len, cap, line, 1);
        }
        xml_append(buf, len, cap, "</failure>\n", 0);
    }
    xml_append(buf, len, cap, "  </testcase>\n", 0);
}

int qd_report_write_junit(const qd_report *r, const char *path, qd_err *e) {
    char suite[160], head[512];
    snprintf(suite, sizeof suite, "qwen3-diff.%s-vs-%s", r->name_a, r->name_b);
    int cases = 0, failures = 0;
    for (int step = 0; step < r->steps; step++)
        for (int layer = -1; layer <= r->n_layers; layer++) {
            int l = layer == r->n_layers ? -1 : layer, hd = layer == r->n_layers;
            int count = 0, failing = 0;
            for (int i = 0; i < r->n; i++) {
                const qd_tap_row *row = &r->rows[i];
                if (row->step != step || row->id.pos != group_pos(l, hd) || row->id.layer != l) continue;
                count++;
                failing |= qd_verdict_fails(row->verdict);
            }
            cases += count > 0;
            failures += failing;
        }
    size_t len = 0, cap = 4096;
    char *buf = qd_alloc(cap, e);
    if (!buf) return QD_ERUNTIME;
    buf[0] = '\0';
    snprintf(head, sizeof head, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites tests=\"%d\" failures=\"%d\">\n"
             "<testsuite name=\"", cases, failures);
    xml_append(&buf, &len, &cap, head, 0);
    xml_append(&buf, &len, &cap, suite, 1);
    snprintf(head, sizeof head, "\" tests=\"%d\" failures=\"%d\" errors=\"0\" skipped=\"0\">\n", cases, failures);
    xml_append(&buf, &len, &cap, head, 0);
    for (int step = 0; step < r->steps; step++) {
        junit_case(r, &buf, &len, &cap, step, -1, 0, suite);
        for (int l = 0; l < r->n_layers; l++) junit_case(r, &buf, &len, &cap, step, l, 0, suite);
        junit_case(r, &buf, &len, &cap, step, -1, 1, suite);
    }
    xml_append(&buf, &len, &cap, "</testsuite>\n</testsuites>\n", 0);
    if (!buf) return qd_errf(e, QD_ERUNTIME, "%s: out of memory building the JUnit XML", path);
    int rc = write_text_atomically(path, buf, e);
    free(buf);
    return rc;
}

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
    metrics_record *rec = qd_zalloc((size_t)(r->n ? r->n : 1), sizeof *rec, e);
    if (!rec) return QD_ERUNTIME;
    for (int i = 0; i < r->n; i++) {
        const qd_tap_row *row = &r->rows[i];
        metrics_record *x = &rec[i];
        x->step = row->step;
        x->layer = row->id.layer;
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
        fdl = row->id.layer;
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
