/* bisect.c: the precision bisection (qd_bisect.h): the pair rerun with B = emu and chosen precision points
 * in fp32, until the smallest set that brings the flagged tap back within its bound is found, or all of
 * them do not. */
#include "qd_bisect.h"

#include <math.h>
#include <string.h>

#include "qd_emu.h"

// ----------------------------------------------------------------------------
// which points can move a tap

unsigned qd_bisect_reachable(int step, qd_tap_id id, qd_mode mode) {
    unsigned mask = 0;
    /* teacher-forced at the prompt: the layer (or head) starts from A's input, so only its own points count */
    const int own_only = mode == QD_MODE_ISOLATED && step == 0;
    for (int p = 0; p < QD_NUM_PRECISION_POINTS; p++) {
        const qd_precision_point_info *pi = qd_precision_point_info_of(p);
        int reach;
        if (!pi->rounds) reach = 0;
        else if (id.pos == QD_POS_EMBED) reach = p == QD_PT_RESIDUAL;
        else if (id.pos == QD_POS_HEAD) reach = !own_only || p == QD_PT_RESIDUAL || p == QD_PT_FINAL_NORM;
        /* final_norm feeds only B's logits; the next token is A's */
        else if (pi->tap >= QD_NUM_LAYER_TAPS) reach = 0;
        /* an earlier layer (its residual stream) or step (the KV cache) carries every layer point */
        else if (step > 0 || (!own_only && id.layer > 0)) reach = 1;
        else reach = pi->tap <= id.tap;
        if (reach) mask |= 1u << p;
    }
    return mask;
}

const char *qd_bisect_point_name(int p) {
    const qd_precision_point_info *pi = qd_precision_point_info_of(p);
    return pi ? pi->name : NULL;
}

const char *qd_bisect_outcome_name(qd_bisect_outcome o) {
    switch (o) {
    case QD_BISECT_MINIMAL: return "minimal";
    case QD_BISECT_NOT_MINIMAL: return "not-minimal";
    case QD_BISECT_NO_SET: return "no-set";
    case QD_BISECT_NOT_REPRODUCED: return "not-reproduced";
    }
    return "?";
}

// ----------------------------------------------------------------------------
// a backend that stops after a position: a rerun computes only what the flagged tap depends on

typedef struct {
    qd_backend be; /* what the lockstep steps; be.impl points back here */
    qd_backend *inner;
    int T;         /* the prompt's length: a step's number from its first position */
    int stop_step; /* the last step computed, ... */
    int stop_pos;  /* ... up to this position of it: 0 embed, l + 1 layer l, L + 1 the head */
    int embeds;    /* embed calls so far (A and B: one per step) */
    int step;      /* the step in progress */
} trunc_backend;

static int live(const trunc_backend *t, int pos) {
    return t->step < t->stop_step || (t->step == t->stop_step && pos <= t->stop_pos);
}

/* Past the stop a step emits nothing, so no row is added: the lockstep compares only taps both sides hold. */
static int trunc_embed(qd_backend *b, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e) {
    trunc_backend *t = b->impl;
    t->step = t->embeds++;
    if (live(t, 0)) return t->inner->embed(t->inner, tokens, T, h, sink, e);
    memset(h, 0, (size_t)T * (size_t)b->cfg->hidden_size * sizeof(float));
    return QD_OK;
}

static int trunc_layer(qd_backend *b, int layer, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink,
                       qd_err *e) {
    trunc_backend *t = b->impl;
    t->step = pos0 == 0 ? 0 : pos0 - t->T + 1; /* the teacher-forced instance has no embed to count */
    if (live(t, layer + 1)) return t->inner->layer(t->inner, layer, h_in, h_out, T, pos0, sink, e);
    memcpy(h_out, h_in, (size_t)T * (size_t)b->cfg->hidden_size * sizeof(float));
    return QD_OK;
}

static int trunc_head(qd_backend *b, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e) {
    trunc_backend *t = b->impl;
    if (live(t, b->cfg->num_hidden_layers + 1)) return t->inner->head(t->inner, h, T, logits, sink, e);
    memset(logits, 0, (size_t)T * (size_t)b->cfg->vocab_size * sizeof(float));
    return QD_OK;
}

static qd_backend *trunc_wrap(trunc_backend *t, qd_backend *inner, int T, int stop_step, int stop_pos) {
    memset(t, 0, sizeof *t);
    t->be = *inner; /* name, precision, accum, cfg */
    t->be.impl = t;
    t->be.embed = trunc_embed;
    t->be.layer = trunc_layer;
    t->be.head = trunc_head;
    t->be.destroy = NULL;
    t->inner = inner;
    t->T = T;
    t->stop_step = stop_step;
    t->stop_pos = stop_pos;
    return &t->be;
}

// ----------------------------------------------------------------------------
// one rerun

typedef struct {
    const qd_weights *w;
    const qd_bisect_opts *o;
    qd_backend *a; /* A, created once: it is the same in every rerun */
    int stop_pos;  /* the flagged tap's position */
    int max_reruns;
    qd_bisect_result *out;
} bisect_ctx;

static int budget_left(const bisect_ctx *c) {
    return c->out->reruns < c->max_reruns && c->out->n_tried < QD_BISECT_MAX_TRIED;
}

/* The row of the flagged tap in r, and whether a row before it (same mode) fails. */
static int judge(const bisect_ctx *c, const qd_report *r, qd_bisect_try *t, qd_err *e) {
    const qd_tap_row *f = c->o->flagged;
    for (int i = 0; i < r->n; i++) {
        const qd_tap_row *row = &r->rows[i];
        if (row->mode != f->mode) continue;
        if (row->step == f->step && qd_tap_id_equal(row->id, f->id)) {
            t->rel_l2 = row->m.rel_l2;
            t->verdict = row->verdict;
            t->fixed = !qd_verdict_fails(row->verdict) && !t->earlier_fail;
            return QD_OK;
        }
        if (qd_verdict_fails(row->verdict)) t->earlier_fail = 1;
    }
    return qd_errf(e, QD_ERUNTIME, "precision bisect: the rerun has no row for step %d, %s of layer %d", f->step,
                   qd_row_tap_name(f), f->id.layer);
}

/* The pair with B = emu keeping `fp32` in fp32, up to the flagged tap; *t points at its entry of tried
 * (an earlier entry when this mask was tried already: no rerun). */
static int rerun(bisect_ctx *c, unsigned fp32, const char *stage, const qd_bisect_try **t, qd_err *e) {
    qd_bisect_result *out = c->out;
    for (int i = 0; i < out->n_tried; i++)
        if (out->tried[i].fp32 == fp32) {
            *t = &out->tried[i];
            return QD_OK;
        }
    const qd_bisect_opts *o = c->o;
    if (o->progress) o->progress(o->progress_ctx, out->reruns + 1, fp32);
    qd_backend_opts ob = o->opts;
    ob.max_seq = o->T + o->decode;
    ob.fp32_points = fp32;
    const int iso = o->locate == QD_MODE_ISOLATED;
    qd_backend *b = NULL, *bi = NULL;
    int rc = QD_OK;
    if (!(b = qd_backend_create("emu", c->w, &ob, e)) || (iso && !(bi = qd_backend_create("emu", c->w, &ob, e)))) {
        rc = e->code ? e->code : QD_ERUNTIME;
        goto out;
    }
    const int step = o->flagged->step;
    trunc_backend ta, tb, tbi;
    qd_backend *wa = trunc_wrap(&ta, c->a, o->T, step, c->stop_pos);
    qd_backend *wb = trunc_wrap(&tb, b, o->T, step, c->stop_pos);
    qd_backend *wbi = bi ? trunc_wrap(&tbi, bi, o->T, step, c->stop_pos) : NULL;
    qd_report r;
    qd_report_init(&r, wa->name, wa->precision, wb->name, wb->precision, c->a->cfg->num_hidden_layers, o->locate,
                   &o->tol->blowup);
    qd_lockstep_opts lo = {
        .tokens = o->tokens, .T = o->T, .decode = o->decode, .tol = o->tol, .locate = o->locate, .dump_window = -1};
    out->reruns++;
    qd_bisect_try *nt = &out->tried[out->n_tried];
    memset(nt, 0, sizeof *nt);
    nt->fp32 = fp32;
    nt->stage = stage;
    if ((rc = qd_lockstep(wa, wb, wbi, &lo, &r, e)) == QD_OK && (rc = judge(c, &r, nt, e)) == QD_OK) {
        out->n_tried++;
        *t = nt;
    }
    qd_report_free(&r);
out:
    qd_backend_destroy(bi);
    qd_backend_destroy(b);
    return rc;
}

// ----------------------------------------------------------------------------
// the search

static int popcount(unsigned x) {
    int n = 0;
    for (; x; x &= x - 1) n++;
    return n;
}

/* Delta debugging from a passing set S (the candidates, no single one of which passes): remove chunks of
 * S while what is left still passes, halving the chunks down to single points. Ends 1-minimal (every
 * one-point removal tried and failing) unless the rerun bound runs out first. order (n): the candidates,
 * the points that helped least alone first, so that they are the first to go. */
static int reduce(bisect_ctx *c, const int *order, int n, qd_err *e) {
    int s[QD_NUM_PRECISION_POINTS], ns = n;
    memcpy(s, order, (size_t)n * sizeof *s);
    int gran = 2;
    for (;;) {
        if (ns < 2) break; /* a single point that passes alone: the single stage would have found it */
        int chunk = (ns + gran - 1) / gran, removed = 0;
        for (int start = 0; start < ns && !removed; start += chunk) {
            unsigned rest = 0;
            for (int i = 0; i < ns; i++)
                if (i < start || i >= start + chunk) rest |= 1u << s[i];
            if (!rest) continue;
            if (!budget_left(c)) {
                c->out->outcome = QD_BISECT_NOT_MINIMAL;
                goto done;
            }
            const qd_bisect_try *t;
            int rc = rerun(c, rest, "reduce", &t, e);
            if (rc) return rc;
            if (t->fixed) {
                int k = 0;
                for (int i = 0; i < ns; i++)
                    if (i < start || i >= start + chunk) s[k++] = s[i];
                ns = k;
                gran = gran > 2 ? gran - 1 : 2;
                removed = 1;
            }
        }
        if (!removed) {
            if (chunk == 1) break; /* every one-point removal fails: 1-minimal */
            gran = 2 * gran < ns ? 2 * gran : ns;
        }
    }
    c->out->outcome = QD_BISECT_MINIMAL;
done:
    c->out->set = 0;
    for (int i = 0; i < ns; i++) c->out->set |= 1u << s[i];
    return QD_OK;
}

static int search(bisect_ctx *c, qd_err *e) {
    qd_bisect_result *out = c->out;
    const qd_bisect_opts *o = c->o;
    const qd_bisect_try *t;
    int rc;
    /* the divergence as emu has it: the run's own row, or for fused the stand-in's */
    if (out->stand_in) {
        if ((rc = rerun(c, 0, "baseline", &t, e))) return rc;
        if (t->fixed) {
            out->outcome = QD_BISECT_NOT_REPRODUCED;
            return QD_OK;
        }
    } else {
        qd_bisect_try *run = &out->tried[out->n_tried++];
        *run = (qd_bisect_try){
            .fp32 = 0, .stage = "run", .fixed = 0, .rel_l2 = o->flagged->m.rel_l2, .verdict = o->flagged->verdict};
    }
    const unsigned cand = out->candidates;
    if (!cand || !budget_left(c)) {
        out->outcome = cand ? QD_BISECT_NOT_MINIMAL : QD_BISECT_NO_SET;
        return QD_OK;
    }
    if ((rc = rerun(c, cand, "all", &t, e))) return rc;
    if (!t->fixed) {
        out->outcome = QD_BISECT_NO_SET;
        return QD_OK;
    }
    out->set = cand; /* passes; what follows makes it smaller */
    out->outcome = QD_BISECT_NOT_MINIMAL;
    if (popcount(cand) == 1) {
        out->outcome = QD_BISECT_MINIMAL;
        return QD_OK;
    }
    int order[QD_NUM_PRECISION_POINTS], n = 0, best = -1;
    double alone[QD_NUM_PRECISION_POINTS];
    int cut = 0; /* the bound ran out before every point was tried alone */
    for (int p = 0; p < QD_NUM_PRECISION_POINTS; p++) {
        if (!(cand >> p & 1u)) continue;
        if ((cut = !budget_left(c))) break;
        if ((rc = rerun(c, 1u << p, "single", &t, e))) return rc;
        alone[p] = t->rel_l2;
        order[n++] = p;
        if (t->fixed) {
            if (best >= 0 && !(t->rel_l2 < alone[best])) {
                out->also_alone |= 1u << p;
            } else {
                if (best >= 0) out->also_alone |= 1u << best;
                best = p;
            }
        }
    }
    if (best >= 0) { /* one point: no smaller set passes (the empty one is the divergence) */
        out->set = 1u << best;
        out->outcome = QD_BISECT_MINIMAL;
        return QD_OK;
    }
    if (cut) return QD_OK; /* the whole set, NOT_MINIMAL */
    /* least help alone first (the largest rel_l2; a NaN helps least of all), execution order on ties */
    for (int i = 1; i < n; i++) {
        int p = order[i], j = i;
        for (; j > 0; j--) {
            double x = alone[p], y = alone[order[j - 1]];
            int before = (isnan(x) && !isnan(y)) || x > y;
            if (!before) break;
            order[j] = order[j - 1];
        }
        order[j] = p;
    }
    return reduce(c, order, n, e);
}

int qd_precision_bisect(const qd_weights *w, const qd_bisect_opts *o, qd_bisect_result *out, qd_err *e) {
    memset(out, 0, sizeof *out);
    if (strcmp(o->name_b, "emu") != 0 && strcmp(o->name_b, "fused") != 0)
        return qd_errf(e, QD_EINPUT,
                       "--precision-bisect: B is %s; it reruns emu's precision points, so B must be emu "
                       "or fused (emu standing in for it)",
                       o->name_b);
    if (o->opts.fp32_points)
        return qd_errf(e, QD_EINPUT, "--precision-bisect chooses the fp32 ops itself: drop --fp32-ops");
    const qd_tap_row *f = o->flagged;
    out->step = f->step;
    out->id = f->id;
    out->mode = f->mode;
    out->stand_in = strcmp(o->name_b, "emu") != 0;
    snprintf(out->name_a, sizeof out->name_a, "%s", o->name_a);
    out->candidates = qd_bisect_reachable(f->step, f->id, f->mode);

    qd_backend_opts oa = o->opts; /* A is clean, as in the run */
    oa.max_seq = o->T + o->decode;
    oa.fault.kind = QD_FAULT_NONE;
    oa.fault.layer = -1;
    bisect_ctx c = {
        .w = w, .o = o, .out = out, .max_reruns = o->max_reruns > 0 ? o->max_reruns : QD_BISECT_DEFAULT_RERUNS};
    if (!(c.a = qd_backend_create(o->name_a, w, &oa, e))) return e->code ? e->code : QD_ERUNTIME;
    const int L = c.a->cfg->num_hidden_layers;
    c.stop_pos = f->id.pos == QD_POS_EMBED ? 0 : f->id.pos == QD_POS_LAYER ? f->id.layer + 1 : L + 1;
    int rc = search(&c, e);
    qd_backend_destroy(c.a);
    return rc;
}

// ----------------------------------------------------------------------------
// the printed block

static void where(const qd_bisect_result *r, char *buf, size_t n) {
    int k = r->id.pos == QD_POS_LAYER ? snprintf(buf, n, "layer %d, %s", r->id.layer, qd_tap_id_name(r->id))
                                      : snprintf(buf, n, "%s", qd_tap_id_name(r->id));
    if (k > 0 && (size_t)k < n && r->step > 0) k += snprintf(buf + k, n - (size_t)k, ", step %d", r->step);
    if (k > 0 && (size_t)k < n && r->mode == QD_MODE_ISOLATED) snprintf(buf + k, n - (size_t)k, " (isolated)");
}

static const qd_bisect_try *find_try(const qd_bisect_result *r, unsigned fp32) {
    for (int i = 0; i < r->n_tried; i++)
        if (r->tried[i].fp32 == fp32) return &r->tried[i];
    return NULL;
}

static void print_try(FILE *f, const char *label, const qd_bisect_try *t) {
    if (!t) return;
    fprintf(f, "  %-29s rel_l2 %-9.2e %s%s\n", label, t->rel_l2, t->fixed ? "passes" : "fails",
            t->earlier_fail ? " (an earlier tap fails)" : "");
}

void qd_bisect_print(const qd_bisect_result *r, FILE *f) {
    char at[96], set[256], label[300];
    where(r, at, sizeof at);
    fprintf(f,
            "precision bisect: %s vs emu rerun up to %s with chosen ops kept in fp32, judged by this run's "
            "tolerances%s\n",
            r->name_a, at, r->stand_in ? "; emu stands in for fused as its precision model (docs/PRECISION.md)" : "");
    print_try(f, r->stand_in ? "emu as the contract" : "as run", &r->tried[0]);
    const qd_bisect_try *all = find_try(r, r->candidates);
    snprintf(label, sizeof label, "all %d reachable ops in fp32", popcount(r->candidates));
    if (all && all != &r->tried[0]) print_try(f, label, all);
    /* the single points, most helpful first: the three best */
    int shown = 0, singles = 0;
    unsigned done = 0;
    for (int i = 0; i < r->n_tried; i++) singles += strcmp(r->tried[i].stage, "single") == 0;
    while (shown < 3) {
        const qd_bisect_try *b = NULL;
        for (int i = 0; i < r->n_tried; i++) {
            const qd_bisect_try *t = &r->tried[i];
            if (strcmp(t->stage, "single") || done & t->fp32) continue;
            if (!b || t->rel_l2 < b->rel_l2 || (isnan(b->rel_l2) && !isnan(t->rel_l2))) b = t;
        }
        if (!b) break;
        done |= b->fp32;
        qd_precision_points_format(b->fp32, set, sizeof set);
        if (shown == 0) snprintf(label, sizeof label, "%s alone (best of %d)", set, singles);
        else snprintf(label, sizeof label, "%s alone", set);
        print_try(f, label, b);
        shown++;
    }
    qd_precision_points_format(r->set, set, sizeof set);
    if ((r->outcome == QD_BISECT_MINIMAL || r->outcome == QD_BISECT_NOT_MINIMAL) && popcount(r->set) > 1) {
        snprintf(label, sizeof label, "set %s", set);
        print_try(f, label, find_try(r, r->set));
    }
    const char *reruns = r->reruns == 1 ? "rerun" : "reruns";
    fprintf(f, "precision bisect verdict: ");
    switch (r->outcome) {
    case QD_BISECT_MINIMAL:
    case QD_BISECT_NOT_MINIMAL:
        fprintf(f, "keeping %s in fp32 fixes %s (%s; %d %s)", set, at,
                r->outcome == QD_BISECT_NOT_MINIMAL ? "not shown 1-minimal: the bound on reruns ran out"
                : popcount(r->set) == 1             ? "one op, a smallest set"
                                                    : "1-minimal: each of them is needed",
                r->reruns, reruns);
        if (r->also_alone) {
            qd_precision_points_format(r->also_alone, set, sizeof set);
            fprintf(f, "; also alone: %s", set);
        }
        break;
    case QD_BISECT_NO_SET:
        fprintf(f,
                "no set of precision changes fixes %s (all %d reachable ops in fp32 still fail; %d %s): a bug, "
                "not precision",
                at, popcount(r->candidates), r->reruns, reruns);
        break;
    case QD_BISECT_NOT_REPRODUCED:
        fprintf(f,
                "emu, fused's precision model, passes %s (%d %s): fused departs from the contract there (a kernel "
                "bug or accumulation order), not a precision problem of the contract",
                at, r->reruns, reruns);
        break;
    }
    fputc('\n', f);
}
