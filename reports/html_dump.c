/* html_dump.c: the HTML report from a comparison's dump (`qwen3-diff report DUMP.h5 -o FILE`). Reads what
 * reports/h5metrics.c wrote under /diff/<A>-vs-<B> (the metrics and where tables, the first divergence's
 * attributes), the root's and the two backend groups' attributes and, when the dump holds them, both
 * groups' logits, every read through compare/'s checked reader (qd_h5read.h); then draws the same page as
 * --html (html.c). A dump is input from anyone, so every record is checked before it is drawn: its layer
 * inside the model, its tap a schema name, its mode and side known. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "html.h"
#include "qd_h5read.h"

/* rows of a metrics table: (1 + decode steps) x (L x 17 + 3) x 2 modes; 2^24 is far beyond any run */
#define MAX_ROWS ((size_t)1 << 24)
#define MAX_TEXT 4096 /* model, tool_version */

/* An optional string attribute: "" when absent; QD_EINPUT when present and not one string. */
static int opt_string(qd_h5in *f, const char *path, const char *attr, char *buf, size_t n, qd_err *e) {
    buf[0] = '\0';
    char probe[8];
    qd_err ignored;
    qd_err_clear(&ignored);
    if (qd_h5in_attr_string(f, path, attr, probe, sizeof probe, &ignored) == QD_OK || !strstr(ignored.msg, "missing"))
        return qd_h5in_attr_string(f, path, attr, buf, n, e);
    return QD_OK;
}

/* Each record is the dump's, not ours: strings terminated, places inside the model, names known. */
static int check_rows(const char *dump, const char *mpath, qd_metrics_record *rows, size_t n, int L, qd_err *e) {
    for (size_t i = 0; i < n; i++) {
        qd_metrics_record *x = &rows[i];
        x->tap[sizeof x->tap - 1] = '\0';
        x->mode[sizeof x->mode - 1] = '\0';
        const char *bad = NULL;
        if (x->step < 0 || x->step > (1 << 20)) bad = "step";
        else if (x->layer < -1 || x->layer >= L) bad = "layer";
        else if (x->layer >= 0 ? qd_layer_tap_index(x->tap) < 0 : qd_model_tap_index(x->tap) < 0) bad = "tap";
        else if (strcmp(x->mode, "free") != 0 && strcmp(x->mode, "isolated") != 0) bad = "mode";
        else if (x->judged < -1 || x->judged > 1) bad = "judged";
        if (bad)
            return qd_errf(e, QD_EINPUT, "%s: '%s' row %zu: field '%s' is not valid here (layer %d of %d, tap '%.23s')",
                           dump, mpath, i, bad, x->layer, L, x->tap);
    }
    return QD_OK;
}

/* The last prompt row of a group's logits, when the dump holds them. */
static int read_next(qd_h5in *f, const char *group, int side, qd_next_tokens *nt, qd_err *e) {
    char path[256];
    qd_h5_tap_path(path, sizeof path, group, -1, "logits");
    if (!qd_h5in_has(f, path)) return QD_OK;
    float *data = NULL;
    int nd = 0;
    int64_t shape[3];
    int rc = qd_h5in_read_tap(f, group, -1, QD_TAP_LOGITS, &data, &nd, shape, e);
    if (!rc && nd == 2 && shape[0] > 0)
        qd_next_tokens_fill(nt, side, data + (size_t)(shape[0] - 1) * (size_t)shape[1], (int)shape[1], 0,
                            (int)shape[0] - 1);
    free(data);
    return rc;
}

int qd_report_html_from_dump(const char *dump, const char *diff_group, const qd_token_text *token_text,
                             const char *path, qd_err *e) {
    qd_h5in *f = qd_h5in_open(dump, e);
    if (!f) return e->code ? e->code : QD_EINPUT;
    qd_html_doc d;
    memset(&d, 0, sizeof d);
    d.first_div = -1;
    char *config = NULL, model[MAX_TEXT], version[MAX_TEXT], gpath[320], mpath[340], wpath[340], verdict[16];
    char groups[1024], group[256], fdt[32], fdm[32];
    qd_metrics_record *rows = NULL;
    qd_where_record *where = NULL;
    int32_t *ids = NULL;
    size_t n = 0, nw = 0;
    int rc = QD_OK;
    const int L = qd_h5in_config(f)->num_hidden_layers;

    /* the comparison: the one /diff group, or the one named */
    int ng = qd_h5in_groups(f, "/diff", groups, sizeof groups);
    if (diff_group) {
        snprintf(group, sizeof group, "%s", diff_group);
        snprintf(gpath, sizeof gpath, "/diff/%s", group);
        if (!qd_h5in_has(f, gpath) || strlen(diff_group) >= sizeof group)
            rc = qd_errf(e, QD_EINPUT, "%s: no comparison '%.200s' under /diff (it has: %s)", dump, diff_group,
                         ng ? groups : "none");
    } else if (ng == 0) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: no /diff group: not a comparison's dump (write one with --dump on a run of two backends)",
                     dump);
    } else if (ng > 1) {
        rc = qd_errf(e, QD_EINPUT, "%s: several comparisons under /diff (%s): name one as %s:A-vs-B", dump, groups,
                     dump);
    } else {
        snprintf(group, sizeof group, "%.255s", groups);
    }
    if (rc) goto out;
    snprintf(gpath, sizeof gpath, "/diff/%s", group);
    snprintf(mpath, sizeof mpath, "%s/metrics", gpath);
    snprintf(wpath, sizeof wpath, "%s/where", gpath);

    /* the group's attributes: the two sides, the verdict, the first divergence */
    if ((rc = qd_h5in_attr_string(f, gpath, "reference", d.name_a, sizeof d.name_a, e)) ||
        (rc = qd_h5in_attr_string(f, gpath, "test", d.name_b, sizeof d.name_b, e)) ||
        (rc = opt_string(f, gpath, "verdict", verdict, sizeof verdict, e)) ||
        (rc = qd_h5in_attr_string(f, gpath, "first_divergence_tap", fdt, sizeof fdt, e)) ||
        (rc = qd_h5in_attr_string(f, gpath, "first_divergence_mode", fdm, sizeof fdm, e)) ||
        (rc = opt_string(f, gpath, "first_divergence_where", d.where_summary, sizeof d.where_summary, e)))
        goto out;
    long long fdl = -1, fds = -1;
    if ((rc = qd_h5in_attr_int(f, gpath, "first_divergence_layer", &fdl, e)) ||
        (rc = qd_h5in_attr_int(f, gpath, "first_divergence_step", &fds, e)))
        goto out;
    if (strcmp(verdict, "replay") != 0 && strcmp(verdict, "tolerances") != 0 && verdict[0]) {
        rc = qd_errf(e, QD_EINPUT, "%s: attribute 'verdict' on '%s' is \"%s\", expected replay or tolerances", dump,
                     gpath, verdict);
        goto out;
    }
    d.replay = strcmp(verdict, "replay") == 0;
    d.threshold = QD_REPLAY_THRESHOLD;
    d.threshold_assumed = d.replay;

    /* the tables */
    void *recs = NULL;
    if ((rc = qd_h5in_read_table(f, mpath, qd_metrics_record_type, sizeof *rows, MAX_ROWS, &recs, &n, e))) goto out;
    rows = recs;
    if ((rc = check_rows(dump, mpath, rows, n, L, e))) goto out;
    if (n == 0) {
        rc = qd_errf(e, QD_EINPUT, "%s: '%s' has no rows: nothing was compared", dump, mpath);
        goto out;
    }
    if (qd_h5in_has(f, wpath)) {
        if ((rc = qd_h5in_read_table(f, wpath, qd_where_record_type, sizeof *where, QD_NUM_AXES * QD_WHERE_TOP, &recs,
                                     &nw, e)))
            goto out;
        where = recs;
        for (size_t i = 0; i < nw; i++) {
            where[i].axis[sizeof where[i].axis - 1] = '\0';
            d.where[i] = where[i];
        }
        d.n_where = (int)nw;
    }
    if (fdt[0]) { /* the row the attributes name */
        for (size_t i = 0; i < n && d.first_div < 0; i++)
            if (rows[i].step == fds && rows[i].layer == fdl && strcmp(rows[i].tap, fdt) == 0 &&
                strcmp(rows[i].mode, fdm) == 0)
                d.first_div = (int)i;
        if (d.first_div < 0) {
            rc = qd_errf(e, QD_EINPUT,
                         "%s: '%s': the first divergence (step %lld, layer %lld, %.23s, %.15s) is no row "
                         "of its metrics table",
                         dump, gpath, fds, fdl, fdt, fdm);
            goto out;
        }
    }
    d.rows = rows;
    d.n = (int)n;
    d.n_layers = L;

    /* the two backend groups (absent from a dump that kept only some taps: their names are still known) */
    for (int k = 0; k < 2; k++) {
        const char *g = k ? d.name_b : d.name_a;
        char bpath[80];
        snprintf(bpath, sizeof bpath, "/%s", g);
        if (!qd_h5in_has(f, bpath)) continue;
        if ((rc = qd_h5in_attr_string(f, bpath, "precision", k ? d.prec_b : d.prec_a, sizeof d.prec_a, e)) ||
            (rc = opt_string(f, bpath, "accum", k ? d.accum_b : d.accum_a, sizeof d.accum_a, e)) ||
            (rc = read_next(f, g, k, &d.next, e)))
            goto out;
    }
    if (!d.next.have[0] || !d.next.have[1]) memset(&d.next, 0, sizeof d.next);

    /* the root */
    if ((rc = opt_string(f, "/", "model", model, sizeof model, e)) ||
        (rc = opt_string(f, "/", "tool_version", version, sizeof version, e)))
        goto out;
    const size_t cn = ((size_t)1 << 20) + 1;
    if (!(config = qd_alloc(cn, e))) {
        rc = QD_ERUNTIME;
        goto out;
    }
    if ((rc = qd_h5in_attr_string(f, "/", "config_json", config, cn, e))) goto out;
    d.model = model[0] ? model : NULL;
    d.tool_version = version[0] ? version : NULL;
    d.config_json = config;
    if ((rc = qd_h5in_input_ids(f, &ids, &d.T, e))) goto out;
    d.tokens = ids;
    if (token_text) d.token_text = *token_text;
    rc = qd_html_render(&d, path, e);
out:
    free(config);
    free(rows);
    free(where);
    free(ids);
    qd_h5in_close(f);
    return rc;
}

int qd_html_context_from_dump(const char *dump, qd_html_context *cx, qd_err *e) {
    memset(cx, 0, sizeof *cx);
    qd_h5in *f = qd_h5in_open(dump, e);
    if (!f) return e->code ? e->code : QD_EINPUT;
    const size_t cn = ((size_t)1 << 20) + 1;
    char *model = qd_alloc(MAX_TEXT, e), *version = model ? qd_alloc(MAX_TEXT, e) : NULL;
    char *config = version ? qd_alloc(cn, e) : NULL;
    int32_t *ids = NULL;
    int rc = config ? QD_OK : QD_ERUNTIME;
    if (!rc) rc = opt_string(f, "/", "model", model, MAX_TEXT, e);
    if (!rc) rc = opt_string(f, "/", "tool_version", version, MAX_TEXT, e);
    if (!rc) rc = qd_h5in_attr_string(f, "/", "config_json", config, cn, e);
    if (!rc) rc = qd_h5in_input_ids(f, &ids, &cx->T, e);
    qd_h5in_close(f);
    cx->model = model;
    cx->tool_version = version;
    cx->config_json = config;
    cx->tokens = ids;
    if (rc) qd_html_context_free(cx);
    return rc;
}

void qd_html_context_free(qd_html_context *cx) {
    free((char *)cx->model);
    free((char *)cx->tool_version);
    free((char *)cx->config_json);
    free((int32_t *)cx->tokens);
    memset(cx, 0, sizeof *cx);
}
