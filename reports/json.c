/* json.c: the machine-readable report (qwen3-diff --json; schema "qwen3-diff-report/1"): every row of a
 * qd_report with its verdict, reason, tolerance and metrics, and where inside the first divergence's tap
 * the error lives (qd_reports.h). Doubles go through qd_json_real, so a non-finite value is a string and
 * the file stays JSON. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "qd_reports.h"
#include "shared.h"

/* The precision points of a mask, by name in point order. */
static json_t *points_json(unsigned mask) {
    json_t *a = json_array();
    for (int p = 0; p < 32; p++)
        if (mask >> p & 1u && qd_bisect_point_name(p)) json_array_append_new(a, json_string(qd_bisect_point_name(p)));
    return a;
}

static json_t *flags_json(unsigned verdict) {
    json_t *flags = json_array();
    for (unsigned bit = 1; bit <= QD_V_ALL; bit <<= 1)
        if (verdict & bit) json_array_append_new(flags, json_string(qd_verdict_flag_name(bit)));
    return flags;
}

static json_t *tol_json(const qd_tol *t) {
    json_t *o = json_object();
    json_object_set_new(o, "rel_l2", qd_json_real(t->rel_l2));
    json_object_set_new(o, "atol", qd_json_real(t->atol));
    json_object_set_new(o, "rtol", qd_json_real(t->rtol));
    return o;
}

/* The row's own fields, then its metrics (qd_metrics_to_json: one key per field of QD_METRICS_FIELDS). */
static json_t *row_json(const qd_report *r, const qd_tap_row *row) {
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(row->step));
    json_object_set_new(o, "layer", json_integer(row->id.layer));
    json_object_set_new(o, "tap", json_string(qd_row_tap_name(row)));
    json_object_set_new(o, "mode", json_string(qd_mode_name(row->mode)));
    json_object_set_new(o, "pass", json_boolean(!qd_verdict_fails(row->verdict)));
    json_object_set_new(o, "flags", flags_json(row->verdict));
    char reason[512];
    qd_row_reason(r, row, reason, sizeof reason);
    json_object_set_new(o, "reason", json_string(reason));
    json_object_set_new(o, "tol", tol_json(&row->tol));
    json_object_set_new(o, "prev_rel_l2", qd_json_real(row->prev_rel_l2));
    json_t *m = qd_metrics_to_json(&row->m);
    json_object_update(o, m);
    json_decref(m);
    if (r->replay) {
        /* the replay verdict: the judged side's figures at the top, each side's replay below */
        const qd_replay_figures f = qd_replay_figures_of(row->judged >= 0 ? &row->rp[row->judged] : NULL);
#define FIGURE(name, ctype, h5type, json, doc) json_object_set_new(o, #name, json(f.name));
        QD_REPLAY_FIELDS(FIGURE)
#undef FIGURE
        json_object_set_new(o, "side",
                            row->judged < 0 ? json_null() : json_string(row->judged ? r->name_b : r->name_a));
        json_t *sides = json_object();
        for (int k = 0; k < (r->single ? 1 : 2); k++) {
            if (!row->rp[k].have) continue;
            const qd_replay_figures fk = qd_replay_figures_of(&row->rp[k]);
            json_t *so = json_object();
#define FIGURE_K(name, ctype, h5type, json, doc) json_object_set_new(so, #name, json(fk.name));
            QD_REPLAY_FIELDS(FIGURE_K)
#undef FIGURE_K
            json_object_set_new(so, "local", qd_metrics_to_json(&row->rp[k].local));
            json_object_set_new(so, "floor", qd_metrics_to_json(&row->rp[k].floor));
            json_object_set_new(sides, k ? r->name_b : r->name_a, so);
        }
        json_object_set_new(o, "replay", sides);
    }
    return o;
}

static json_t *set_json(const qd_where_set *s) {
    if (s->size == 0) return json_null();
    json_t *o = json_object();
    json_object_set_new(o, "text", json_string(s->text));
    json_object_set_new(o, "size", json_integer(s->size));
    json_object_set_new(o, "share", qd_json_real(s->share));
    json_object_set_new(o, "contrast", qd_json_real(s->contrast));
    json_object_set_new(o, "lo", s->lo >= 0 ? json_integer(s->lo) : json_null());
    json_object_set_new(o, "hi", s->hi >= 0 ? json_integer(s->hi) : json_null());
    json_t *idx = json_array();
    for (int i = 0; i < s->n_index; i++) json_array_append_new(idx, json_integer(s->index[i]));
    json_object_set_new(o, "index", idx);
    return o;
}

/* One axis of the breakdown: its length, what carries most (null: spread), and the top offenders. */
static json_t *axis_json(const qd_where_axis *x) {
    if (x->len == 0) return json_null();
    json_t *o = json_object();
    json_object_set_new(o, "len", json_integer(x->len));
    json_object_set_new(o, "set", set_json(&x->set));
    json_object_set_new(o, "peak", set_json(&x->peak));
    json_t *top = json_array();
    for (int i = 0; i < x->n_top; i++) {
        const qd_where_entry *t = &x->top[i];
        json_array_append_new(top, json_pack("{s:I, s:o, s:o, s:o, s:I}", "index", (json_int_t)t->index, "share",
                                             qd_json_real(t->share), "rms_err", qd_json_real(t->rms_err), "rms_ref",
                                             qd_json_real(t->rms_ref), "nonfinite", (json_int_t)t->nonfinite));
    }
    json_object_set_new(o, "top", top);
    return o;
}

/* first_divergence.where: the breakdown of qd_localise.h, one key per axis (null where the view has none). */
static json_t *where_json(const qd_where *w) {
    json_t *o = json_object();
    json_object_set_new(o, "summary", json_string(w->summary));
    json_t *view = json_array();
    for (int i = 0; i < w->ndim; i++) json_array_append_new(view, json_integer(w->shape[i]));
    json_object_set_new(o, "view", view);
    json_object_set_new(o, "energy", qd_json_real(w->energy));
    json_object_set_new(o, "ref_energy", qd_json_real(w->ref_energy));
    json_object_set_new(o, "nonfinite", json_integer(w->nonfinite));
    json_object_set_new(o, "shares_of", json_string(w->by_nonfinite ? "nonfinite" : "energy"));
    for (int a = 0; a < QD_NUM_AXES; a++) json_object_set_new(o, qd_where_axis_name(a), axis_json(&w->axis[a]));
    return o;
}

static json_t *names_json(const char (*names)[24], int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_string(names[i]));
    return a;
}

static json_t *bisect_json(const qd_bisect_result *b) {
    json_t *o = json_object();
    json_object_set_new(o, "flagged",
                        json_pack("{s:i, s:i, s:s, s:s}", "step", b->step, "layer", b->id.layer, "tap",
                                  qd_tap_id_name(b->id), "mode", qd_mode_name(b->mode)));
    json_object_set_new(o, "reference", json_string(b->name_a));
    json_object_set_new(o, "test", json_string("emu"));
    json_object_set_new(o, "stands_in_for", b->stand_in ? json_string("fused") : json_null());
    json_object_set_new(o, "outcome", json_string(qd_bisect_outcome_name(b->outcome)));
    json_object_set_new(o, "set", points_json(b->set));
    json_object_set_new(o, "also_alone", points_json(b->also_alone));
    json_object_set_new(o, "candidates", points_json(b->candidates));
    json_object_set_new(o, "reruns", json_integer(b->reruns));
    json_t *tried = json_array();
    for (int i = 0; i < b->n_tried; i++) {
        const qd_bisect_try *t = &b->tried[i];
        json_t *x = json_object();
        json_object_set_new(x, "fp32", points_json(t->fp32));
        json_object_set_new(x, "stage", json_string(t->stage));
        json_object_set_new(x, "rel_l2", qd_json_real(t->rel_l2));
        json_object_set_new(x, "pass", json_boolean(t->fixed));
        json_object_set_new(x, "flags", flags_json(t->verdict));
        json_object_set_new(x, "earlier_fail", json_boolean(t->earlier_fail));
        json_array_append_new(tried, x);
    }
    json_object_set_new(o, "tried", tried);
    return o;
}

/* --precision-sweep's outcome: the class, its sentence, and each dtype's first divergence (null: none). */
static json_t *sweep_json(const qd_sweep_result *s) {
    json_t *o = json_object();
    if (!s) {
        json_object_set_new(o, "verdict", json_null());
        json_object_set_new(o, "text", json_string("no divergence to explain"));
        return o;
    }
    json_object_set_new(o, "verdict", json_string(qd_sweep_class_name(s->cls)));
    json_object_set_new(o, "text", json_string(qd_sweep_class_text(s->cls)));
    json_t *d = json_object();
    for (int k = 0; k < QD_SWEEP_NDTYPES; k++) {
        const qd_sweep_entry *en = &s->e[k];
        json_t *x = !en->diverged ? json_null()
                                  : json_pack("{s:i, s:i, s:s, s:o, s:s}", "step", en->step, "layer", en->layer, "tap",
                                              en->tap_name, "flags", flags_json(en->verdict), "reason", en->reason);
        json_object_set_new(d, en->act, x);
    }
    json_object_set_new(o, "dtypes", d);
    return o;
}

int qd_report_write_json(const qd_report *r, const char *path, qd_err *e) {
    return qd_report_write_json_ctx(r, NULL, path, e);
}

int qd_report_write_json_bisect(const qd_report *r, const qd_bisect_result *bisect, const char *path, qd_err *e) {
    const qd_report_context c = {.bisect = bisect};
    return qd_report_write_json_ctx(r, &c, path, e);
}

int qd_report_write_json_ctx(const qd_report *r, const qd_report_context *c, const char *path, qd_err *e) {
    const qd_report_context none = {0};
    if (!c) c = &none;
    const qd_bisect_result *bisect = c->bisect;
    json_t *root = json_object();
    json_object_set_new(root, "schema", json_string("qwen3-diff-report/1"));
    json_object_set_new(root, "verdict", json_string(r->first_div >= 0 ? "diverged" : "pass"));
    json_object_set_new(root, "model", c->model ? json_string(c->model) : json_null());
    json_t *ids = c->tokens ? json_array() : json_null();
    for (int i = 0; c->tokens && i < c->T; i++) json_array_append_new(ids, json_integer(c->tokens[i]));
    json_object_set_new(root, "input_ids", ids);
    json_t *fd = r->first_div >= 0 ? row_json(r, &r->rows[r->first_div]) : json_null();
    if (r->first_div >= 0 && r->where.valid) json_object_set_new(fd, "where", where_json(&r->where));
    json_object_set_new(root, "first_divergence", fd);
    json_t *be = json_object();
    json_object_set_new(be, "reference", json_pack("{s:s, s:s}", "name", r->name_a, "precision", r->prec_a));
    json_object_set_new(be, "test", json_pack("{s:s, s:s}", "name", r->name_b, "precision", r->prec_b));
    json_object_set_new(root, "backends", be);
    json_object_set_new(root, "layers", json_integer(r->n_layers));
    json_object_set_new(root, "steps", json_integer(r->steps));
    json_object_set_new(root, "locate", json_string(qd_mode_name(r->locate)));
    json_object_set_new(root, "judge", json_string(r->replay ? "replay" : "tolerances"));
    if (r->replay) {
        json_object_set_new(root, "ratio_threshold", qd_json_real(r->threshold));
        json_object_set_new(root, "first_divergence_side",
                            r->first_div >= 0 && r->rows[r->first_div].judged >= 0
                                ? json_string(r->rows[r->first_div].judged ? r->name_b : r->name_a)
                                : json_null());
        json_object_set_new(root, "worst_inherited",
                            r->worst_inherited >= 0 ? row_json(r, &r->rows[r->worst_inherited]) : json_null());
    }
    json_object_set_new(root, "blowup",
                        json_pack("{s:o, s:o, s:o}", "blowup_ratio", qd_json_real(r->blowup.blowup_ratio),
                                  "growth_factor", qd_json_real(r->blowup.growth_factor), "growth_floor",
                                  qd_json_real(r->blowup.growth_floor)));
    json_t *taps = json_array();
    for (int i = 0; i < r->n; i++) json_array_append_new(taps, row_json(r, &r->rows[i]));
    json_object_set_new(root, "taps", taps);
    json_object_set_new(root, "only_in_reference", names_json(r->only_a, r->n_only_a));
    json_object_set_new(root, "only_in_test", names_json(r->only_b, r->n_only_b));
    if (bisect) json_object_set_new(root, "precision_bisect", bisect_json(bisect));
    if (c->sweep_asked) json_object_set_new(root, "precision_sweep", sweep_json(c->sweep));
    char *text = json_dumps(root, JSON_INDENT(1) | JSON_REAL_PRECISION(9));
    json_decref(root);
    if (!text) return qd_errf(e, QD_ERUNTIME, "%s: json_dumps failed", path);
    size_t len = strlen(text);
    char *with_nl = qd_alloc(len + 2, e);
    if (!with_nl) {
        free(text);
        return QD_ERUNTIME; /* e filled by qd_alloc */
    }
    memcpy(with_nl, text, len);
    memcpy(with_nl + len, "\n", 2);
    free(text);
    int rc = qd_write_text_output(path, with_nl, e);
    free(with_nl);
    return rc;
}
