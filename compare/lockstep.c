/* lockstep.c: running two backends side by side, layer by layer, and comparing files (qd_compare.h). */
#include "qd_compare.h"

#include <fnmatch.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qd_h5read.h"
#include "qd_repro.h"
#include "qd_tapstore.h"

// ----------------------------------------------------------------------------
// the report

const char *qd_mode_name(qd_mode m) { return m == QD_MODE_ISOLATED ? "isolated" : "free"; }

void qd_report_init(qd_report *r, const char *name_a, const char *prec_a, const char *name_b, const char *prec_b,
                    int n_layers, qd_mode locate, const qd_blowup *blowup) {
    memset(r, 0, sizeof *r);
    snprintf(r->name_a, sizeof r->name_a, "%s", name_a);
    snprintf(r->name_b, sizeof r->name_b, "%s", name_b);
    snprintf(r->prec_a, sizeof r->prec_a, "%s", prec_a);
    snprintf(r->prec_b, sizeof r->prec_b, "%s", prec_b);
    r->n_layers = n_layers;
    r->steps = 1;
    r->locate = locate;
    if (blowup) r->blowup = *blowup;
    r->first_div = -1;
    r->first_fail[0] = r->first_fail[1] = -1;
    r->worst_inherited = -1;
    r->threshold = QD_REPLAY_THRESHOLD;
}

void qd_report_free(qd_report *r) {
    free(r->rows);
    r->rows = NULL;
    r->n = r->cap = 0;
}

const char *qd_row_tap_name(const qd_tap_row *row) { return qd_tap_id_name(row->id); }

void qd_next_tokens_fill(qd_next_tokens *nt, int side, const float *row, int V, int step, int pos) {
    const int k = V < QD_NEXT_TOP ? V : QD_NEXT_TOP;
    int n = 0, finite = 1;
    double mx = -INFINITY;
    for (int v = 0; v < V; v++) {
        const float x = row[v];
        if (!isfinite(x)) finite = 0;
        if (isfinite(x) && x > mx) mx = x;
        if (isnan(x) || (n == k && !(x > nt->logit[side][k - 1]))) continue;
        int i = n < k ? n++ : k - 1; /* insertion into the sorted top k; an equal logit keeps the smaller id */
        while (i > 0 && x > nt->logit[side][i - 1]) {
            nt->logit[side][i] = nt->logit[side][i - 1];
            nt->id[side][i] = nt->id[side][i - 1];
            i--;
        }
        nt->logit[side][i] = x;
        nt->id[side][i] = v;
    }
    double sum = 0;
    for (int v = 0; finite && v < V; v++) sum += exp((double)row[v] - mx);
    for (int i = 0; i < n; i++) nt->prob[side][i] = finite ? exp((double)nt->logit[side][i] - mx) / sum : NAN;
    nt->k = n;
    nt->have[side] = 1;
    nt->step = step;
    nt->pos = pos;
}

int qd_report_diverged(const qd_report *r) { return r->first_div >= 0; }

static void add_only(char (*list)[24], int *n, qd_tap_id id) {
    const char *name = qd_tap_id_name(id);
    for (int i = 0; i < *n; i++)
        if (strcmp(list[i], name) == 0) return;
    if (*n < QD_NUM_TAP_KINDS) snprintf(list[(*n)++], 24, "%s", name);
}

/* The replay judge of a row: each side's op judged on its own; the row's verdict is the judged side's. */
static void judge_row(const qd_report *r, qd_tap_row *row) {
    unsigned v[2];
    for (int k = 0; k < 2; k++) v[k] = qd_replay_verdict(&row->rp[k], r->threshold, r->blowup.blowup_ratio);
    int fails0 = qd_verdict_fails(v[0]), fails1 = qd_verdict_fails(v[1]);
    if (!row->rp[0].have && !row->rp[1].have) {
        row->judged = -1;
    } else if (fails0 != fails1) {
        row->judged = fails1;
    } else if (!row->rp[0].have || !row->rp[1].have) {
        row->judged = row->rp[1].have;
    } else { /* the larger ratio; a NAN ratio (nothing finite to compare) never wins */
        row->judged =
            row->rp[1].ratio >= row->rp[0].ratio || isnan(row->rp[0].ratio); /* a tie: B, the side under test */
    }
    row->verdict = row->judged < 0 ? 0 : v[row->judged];
}

/* The next row of r, zeroed (not yet counted in r->n); NULL with e set when the table cannot grow. */
static qd_tap_row *next_row(qd_report *r, qd_err *e) {
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 256;
        qd_tap_row *rows = qd_resize(r->rows, (size_t)cap * sizeof *r->rows, e);
        if (!rows) return NULL;
        r->rows = rows;
        r->cap = cap;
    }
    qd_tap_row *row = &r->rows[r->n];
    memset(row, 0, sizeof *row);
    return row;
}

/* Compares one tap and appends its row. prev: the growth-check memory of this mode, indexed by
 * qd_tap_id_kind. ra, rb: the op replayed on A's and B's own inputs (replay judge; NULL: none). */
static int add_row(qd_report *r, const qd_tolerances *tol, int step, qd_tap_id id, qd_mode mode, const float *test,
                   const float *ref, int ndim, const int64_t *shape, double *prev, const qd_replay_op *ra,
                   const qd_replay_op *rb, qd_err *e) {
    qd_tap_row *row = next_row(r, e);
    if (!row) return QD_ERUNTIME;
    row->step = step;
    row->id = id;
    row->mode = mode;
    qd_metrics_compute(test, ref, ndim, shape, &row->m);
    /* tolerance files name their taps: the lookup is by name */
    const char *name = qd_tap_id_name(id);
    const int kind = qd_tap_id_kind(id);
    const int iso = mode == QD_MODE_ISOLATED;
    row->tol = iso ? qd_tolerances_lookup_isolated(tol, id.layer, name) : qd_tolerances_lookup(tol, id.layer, name);
    row->prev_rel_l2 = id.pos != QD_POS_LAYER ? NAN : prev[kind];
    row->verdict = qd_verdict(&row->m, &row->tol, &tol->blowup, row->prev_rel_l2); /* the tolerance just looked up */
    prev[kind] = row->m.rel_l2;
    row->judged = -1;
    if (r->replay) {
        if (ra) row->rp[0] = *ra;
        if (rb) row->rp[1] = *rb;
        if (!ra) row->rp[0].ratio = NAN;
        if (!rb) row->rp[1].ratio = NAN;
        judge_row(r, row);
        if (!r->single && (r->worst_inherited < 0 || row->m.rel_l2 > r->rows[r->worst_inherited].m.rel_l2))
            r->worst_inherited = r->n;
    }
    if (qd_verdict_fails(row->verdict)) {
        if (r->first_fail[mode] < 0) r->first_fail[mode] = r->n;
        if (mode == r->locate && r->first_div < 0) {
            r->first_div = r->n;
            int rc = qd_report_localise(r, row, test, ref, ndim, shape, e);
            if (rc) return rc;
        }
    }
    if (mode == QD_MODE_ISOLATED) r->isolated = 1;
    r->n++;
    return QD_OK;
}

/* `qwen3-diff replay`: one engine's op, judged on its own (row->m is its local metrics: there is no pair). */
static int add_single_row(qd_report *r, qd_tap_id id, const qd_replay_op *op, qd_err *e) {
    qd_tap_row *row = next_row(r, e);
    if (!row) return QD_ERUNTIME;
    row->id = id;
    row->mode = QD_MODE_FREE;
    row->m = op->local;
    row->prev_rel_l2 = NAN;
    row->rp[0] = *op;
    row->rp[1].ratio = NAN;
    judge_row(r, row);
    if (qd_verdict_fails(row->verdict)) {
        if (r->first_fail[0] < 0) r->first_fail[0] = r->n;
        if (r->first_div < 0) r->first_div = r->n;
    }
    r->n++;
    return QD_OK;
}

static void reset_prev(double prev[2][QD_NUM_TAP_KINDS]) {
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < QD_NUM_TAP_KINDS; i++) prev[m][i] = NAN;
}

// ----------------------------------------------------------------------------
// the dump: which tensors are written, and the window around the first divergence

typedef struct {
    const char *group; /* backend group name */
    qd_tap_id id;
    int pos; /* 0 embed, l+1 layer l, L+1 head */
    int ndim;
    int64_t shape[3];
    float *data;
} held_tap;

typedef struct {
    qd_dump *d;
    const char *globs;
    int window;       /* < 0: write everything at once */
    int diverged_pos; /* position of the first divergence; -1 until found */
    held_tap *held;   /* taps kept while no divergence is known (window >= 0) */
    int n_held, cap_held;
} dump_ctl;

static int tap_selected(const char *globs, const char *name) {
    if (!globs || !*globs) return 1;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", globs);
    for (char *save = NULL, *g = strtok_r(buf, ",", &save); g; g = strtok_r(NULL, ",", &save))
        if (fnmatch(g, name, 0) == 0) return 1;
    return 0;
}

static void drop_held_before(dump_ctl *dc, int pos) {
    int k = 0;
    for (int i = 0; i < dc->n_held; i++) {
        if (dc->held[i].pos < pos) free(dc->held[i].data);
        else dc->held[k++] = dc->held[i];
    }
    dc->n_held = k;
}

/* Offers one tap to the dump: written now, held for the window, or dropped. */
static int dump_tap(dump_ctl *dc, const char *group, qd_tap_id id, int pos, const qd_tapbuf *t, qd_err *e) {
    if (!dc->d || !tap_selected(dc->globs, qd_tap_id_name(id))) return QD_OK;
    int write_now = dc->window < 0 || (dc->diverged_pos >= 0 && pos >= dc->diverged_pos - dc->window &&
                                       pos <= dc->diverged_pos + dc->window);
    if (write_now) return qd_dump_write_tap(dc->d, group, id, t->data, t->ndim, t->shape, e);
    if (dc->diverged_pos >= 0) return QD_OK; /* past the window */
    if (dc->n_held == dc->cap_held) {
        int cap = dc->cap_held ? 2 * dc->cap_held : 64;
        held_tap *held = qd_resize(dc->held, (size_t)cap * sizeof *dc->held, e);
        if (!held) return QD_ERUNTIME;
        dc->held = held;
        dc->cap_held = cap;
    }
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    float *data = qd_alloc(n * sizeof(float), e); /* (shape) */
    if (!data) return QD_ERUNTIME;
    memcpy(data, t->data, n * sizeof(float));
    held_tap *h = &dc->held[dc->n_held++];
    h->group = group;
    h->id = id;
    h->pos = pos;
    h->ndim = t->ndim;
    memcpy(h->shape, t->shape, sizeof h->shape);
    h->data = data;
    return QD_OK;
}

/* Called after each position is compared: keeps the window bounded, flushes it once a divergence shows. */
static int dump_after_position(dump_ctl *dc, int pos, int diverged_now, qd_err *e) {
    if (!dc->d || dc->window < 0) return QD_OK;
    if (diverged_now && dc->diverged_pos < 0) {
        dc->diverged_pos = pos;
        drop_held_before(dc, pos - dc->window);
        for (int i = 0; i < dc->n_held; i++) {
            held_tap *h = &dc->held[i];
            int rc = qd_dump_write_tap(dc->d, h->group, h->id, h->data, h->ndim, h->shape, e);
            if (rc) return rc;
        }
        drop_held_before(dc, 1 << 30);
        /* this position's own taps were held too and are now written */
        return QD_OK;
    }
    if (dc->diverged_pos < 0) drop_held_before(dc, pos + 1 - dc->window);
    return QD_OK;
}

static void dump_ctl_free(dump_ctl *dc) {
    drop_held_before(dc, 1 << 30);
    free(dc->held);
}

// ----------------------------------------------------------------------------
// lockstep

typedef struct {
    qd_backend *be;
    const char *group; /* dump group */
    qd_tapstore store;
    float *h, *h2;                       /* (T, C) hidden state in and out */
    float *logits;                       /* (T, V) */
    qd_replay *rp;                       /* replay judge: this side's replay, its own K/V history; NULL: none */
    qd_tap_source src;                   /* over store */
    qd_replay_op ops[QD_NUM_LAYER_TAPS]; /* the current position's replays, in its tap list's order */
} side;

static const float *store_get(void *ctx, qd_tap_id id, int *ndim, int64_t shape[3]) {
    const qd_tapbuf *t = qd_tapstore_get((const qd_tapstore *)ctx, id);
    if (!t) return NULL;
    *ndim = t->ndim;
    memcpy(shape, t->shape, sizeof t->shape);
    return t->data;
}

static int side_init(side *s, qd_backend *be, const char *group, size_t hidden, size_t logits, qd_err *e) {
    s->be = be;
    s->group = group;
    qd_tapstore_init(&s->store);
    s->h = qd_alloc(hidden * sizeof(float), e);
    s->h2 = s->h ? qd_alloc(hidden * sizeof(float), e) : NULL;
    s->logits = s->h2 ? qd_alloc(logits * sizeof(float), e) : NULL;
    return s->logits ? QD_OK : QD_ERUNTIME;
}

/* The replay judge's state for a side whose engine is be. */
static int side_replay(side *s, const qd_replay_judge *j, int max_seq, qd_err *e) {
    s->rp = qd_replay_create(j->w, s->be->precision, s->be->accum, max_seq, j->threads, e);
    s->src = (qd_tap_source){store_get, &s->store};
    return s->rp ? QD_OK : e->code;
}

static void side_free(side *s) {
    qd_replay_free(s->rp);
    qd_tapstore_free(&s->store);
    free(s->h);
    free(s->h2);
    free(s->logits);
}

/* The taps of one position of a run, in execution order: embed, layer l's, or the head's. */
typedef struct {
    qd_tap_id id[QD_NUM_LAYER_TAPS];
    int n;
} tap_list;

static tap_list embed_taps(void) { return (tap_list){{qd_tap_model(QD_TAP_EMBED)}, 1}; }

static tap_list head_taps(void) {
    return (tap_list){{qd_tap_model(QD_TAP_FINAL_NORM), qd_tap_model(QD_TAP_LOGITS)}, 2};
}

static tap_list layer_taps(int layer) {
    tap_list t = {.n = QD_NUM_LAYER_TAPS};
    for (int i = 0; i < QD_NUM_LAYER_TAPS; i++) t.id[i] = qd_tap_layer(layer, i);
    return t;
}

/* Compares the taps both sides hold of one position. ra, rb: the sides' replays of these taps, in the list's
 * order (NULL: none). */
static int compare_taps(qd_report *r, const qd_tolerances *tol, int step, tap_list taps, const side *a, const side *b,
                        qd_mode mode, double *prev, const qd_replay_op *ra, const qd_replay_op *rb, qd_err *e) {
    for (int k = 0; k < taps.n; k++) {
        qd_tap_id id = taps.id[k];
        const qd_tapbuf *ta = qd_tapstore_get(&a->store, id);
        const qd_tapbuf *tb = qd_tapstore_get(&b->store, id);
        if (ta && !tb) add_only(r->only_a, &r->n_only_a, id);
        if (tb && !ta) add_only(r->only_b, &r->n_only_b, id);
        if (!ta || !tb) continue;
        int same = ta->ndim == tb->ndim;
        for (int d = 0; same && d < ta->ndim; d++) same = ta->shape[d] == tb->shape[d];
        if (!same) continue; /* a backend's shape bug; the dump keeps both for inspection */
        int rc = add_row(r, tol, step, id, mode, tb->data, ta->data, ta->ndim, ta->shape, prev, ra ? &ra[k] : NULL,
                         rb ? &rb[k] : NULL, e);
        if (rc) return rc;
    }
    return QD_OK;
}

static int dump_side(dump_ctl *dc, const side *s, tap_list taps, int pos, qd_err *e) {
    for (int k = 0; k < taps.n; k++) {
        const qd_tapbuf *t = qd_tapstore_get(&s->store, taps.id[k]);
        if (!t) continue;
        int rc = dump_tap(dc, s->group, taps.id[k], pos, t, e);
        if (rc) return rc;
    }
    return QD_OK;
}

/* Hands the first divergence's op (found at this position) to the repro writer (judge.repro), from the side
 * that judged it: A, B, or isolated B, whose input is A's. h_a, h_b: the sides' inputs to the position (NULL
 * for embed). */
static int lockstep_repro(const qd_lockstep_opts *o, const qd_report *r, const side *sa, const side *sb, const side *si,
                          const float *h_a, const float *h_b, const int32_t *tokens, int step, int T, int pos0,
                          qd_err *e) {
    const qd_tap_row *row = &r->rows[r->first_div];
    if (!o->judge.repro || row->judged < 0) return QD_OK;
    const int iso = row->mode == QD_MODE_ISOLATED, k = row->judged;
    const side *s = k == 0 ? sa : iso ? si : sb;
    qd_repro_op op = {.id = row->id,
                      .step = step,
                      .T = T,
                      .pos0 = pos0,
                      .side = k ? 'B' : 'A',
                      .engine = s->be->name,
                      .precision = s->be->precision,
                      .accum = s->be->accum,
                      .mode = qd_mode_name(row->mode),
                      .w = o->judge.w,
                      .rp = s->rp,
                      .src = &s->src,
                      .h_in = k == 0 || iso ? h_a : h_b,
                      .tokens = tokens,
                      .op = &row->rp[k],
                      .verdict = row->verdict,
                      .threshold = r->threshold,
                      .blowup_ratio = r->blowup.blowup_ratio};
    return qd_repro_write(o->judge.repro, &op, e);
}

static int argmax_row(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int qd_lockstep(qd_backend *a, qd_backend *b, qd_backend *b_iso, const qd_lockstep_opts *o, qd_report *r, qd_err *e) {
    const qd_config *c = a->cfg;
    const int L = c->num_hidden_layers, C = c->hidden_size, V = c->vocab_size;
    const int T = o->T;
    int rc = QD_OK;
    char iso_group[80];
    snprintf(iso_group, sizeof iso_group, "%s-isolated", b->name);

    r->head_dim = c->head_dim;
    side sa = {0}, sb = {0}, si = {0};
    dump_ctl dc = {.d = o->dump, .globs = o->dump_taps, .window = o->dump_window, .diverged_pos = -1};
    if ((rc = side_init(&sa, a, a->name, (size_t)T * C, (size_t)T * V, e)) ||
        (rc = side_init(&sb, b, b->name, (size_t)T * C, (size_t)T * V, e)) ||
        (b_iso && (rc = side_init(&si, b_iso, iso_group, (size_t)T * C, (size_t)T * V, e))))
        goto done;
    r->replay = o->judge.w != NULL;
    if (r->replay) {
        r->threshold = o->judge.threshold > 0 ? o->judge.threshold : QD_REPLAY_THRESHOLD;
        const int max_seq = T + (o->decode > 0 ? o->decode : 0);
        if ((rc = side_replay(&sa, &o->judge, max_seq, e)) || (rc = side_replay(&sb, &o->judge, max_seq, e)) ||
            (b_iso && (rc = side_replay(&si, &o->judge, max_seq, e))))
            goto done;
    }
    /* the replays of a position, when judging by them: A's ops, B's, and isolated B's against A's */
    const qd_replay_op *ra = r->replay ? sa.ops : NULL, *rb = r->replay ? sb.ops : NULL;
    const qd_replay_op *ri = r->replay ? si.ops : NULL;

    if (o->dump) {
        const side *sides[3] = {&sa, &sb, b_iso ? &si : NULL};
        for (int i = 0; i < 3 && !rc; i++) {
            if (!sides[i]) continue;
            rc = qd_dump_add_backend(o->dump, sides[i]->group, sides[i]->be->precision, e);
            if (!rc) rc = qd_dump_backend_attr(o->dump, sides[i]->group, "accum", sides[i]->be->accum, e);
        }
        if (!rc && b_iso) rc = qd_dump_backend_attr(o->dump, iso_group, "isolated_from", a->name, e);
        if (rc) goto done;
    }

    double prev[2][QD_NUM_TAP_KINDS];

    int32_t next_token = 0;
    r->steps = 1 + (o->decode > 0 ? o->decode : 0);
    if (o->progress) o->progress->total = (double)L * T + (double)L * (r->steps - 1); /* token-layers */
    for (int step = 0; step < r->steps; step++) {
        const int32_t *tokens = step == 0 ? o->tokens : &next_token;
        int Tn = step == 0 ? T : 1;
        int pos0 = step == 0 ? 0 : T + step - 1;
        int dumping = step == 0; /* schema v1 holds the prompt pass */
        dump_ctl *dcs = dumping ? &dc : NULL;
        reset_prev(prev);

        /* embed: isolated B starts from A's embedding, so only the free pair is compared */
        if ((rc = a->embed(a, tokens, Tn, sa.h, &sa.store.sink, e)) ||
            (rc = b->embed(b, tokens, Tn, sb.h, &sb.store.sink, e)))
            goto done;
        if (r->replay && ((rc = qd_replay_embed(sa.rp, &sa.src, tokens, Tn, sa.ops, e)) ||
                          (rc = qd_replay_embed(sb.rp, &sb.src, tokens, Tn, sb.ops, e))))
            goto done;
        int before = r->first_div;
        if ((rc = compare_taps(r, o->tol, step, embed_taps(), &sa, &sb, QD_MODE_FREE, prev[0], ra, rb, e))) goto done;
        if (before < 0 && r->first_div >= 0 &&
            (rc = lockstep_repro(o, r, &sa, &sb, &si, NULL, NULL, tokens, step, Tn, pos0, e)))
            goto done;
        if (dcs && ((rc = dump_side(dcs, &sa, embed_taps(), 0, e)) || (rc = dump_side(dcs, &sb, embed_taps(), 0, e)) ||
                    (rc = dump_after_position(dcs, 0, before < 0 && r->first_div >= 0, e))))
            goto done;

        for (int l = 0; l < L; l++) {
            /* work in token-layers: the prompt's layers weigh T tokens each, a decode step's one */
            if (step == 0) qd_progress_update(o->progress, (double)l * T, "prompt, layer %d/%d", l + 1, L);
            else
                qd_progress_update(o->progress, (double)L * T + (double)(step - 1) * L + l,
                                   "decode step %d/%d, layer %d/%d", step, r->steps - 1, l + 1, L);
            qd_tapstore_clear_layer(&sa.store);
            qd_tapstore_clear_layer(&sb.store);
            if ((rc = a->layer(a, l, sa.h, sa.h2, Tn, pos0, &sa.store.sink, e)) ||
                (rc = b->layer(b, l, sb.h, sb.h2, Tn, pos0, &sb.store.sink, e)))
                goto done;
            if (b_iso) {
                qd_tapstore_clear_layer(&si.store);
                if ((rc = b_iso->layer(b_iso, l, sa.h, si.h2, Tn, pos0, &si.store.sink, e))) goto done;
            }
            /* each side's ops from its own inputs: A's and B's own layer inputs, isolated B's is A's */
            if (r->replay && ((rc = qd_replay_layer(sa.rp, &sa.src, l, sa.h, Tn, pos0, sa.ops, e)) ||
                              (rc = qd_replay_layer(sb.rp, &sb.src, l, sb.h, Tn, pos0, sb.ops, e)) ||
                              (b_iso && (rc = qd_replay_layer(si.rp, &si.src, l, sa.h, Tn, pos0, si.ops, e)))))
                goto done;
            before = r->first_div;
            const tap_list lt = layer_taps(l);
            if ((rc = compare_taps(r, o->tol, step, lt, &sa, &sb, QD_MODE_FREE, prev[0], ra, rb, e)) ||
                (b_iso && (rc = compare_taps(r, o->tol, step, lt, &sa, &si, QD_MODE_ISOLATED, prev[1], ra, ri, e))))
                goto done;
            if (before < 0 && r->first_div >= 0 &&
                (rc = lockstep_repro(o, r, &sa, &sb, &si, sa.h, sb.h, tokens, step, Tn, pos0, e)))
                goto done;
            if (dcs && ((rc = dump_side(dcs, &sa, lt, l + 1, e)) || (rc = dump_side(dcs, &sb, lt, l + 1, e)) ||
                        (b_iso && (rc = dump_side(dcs, &si, lt, l + 1, e))) ||
                        (rc = dump_after_position(dcs, l + 1, before < 0 && r->first_div >= 0, e))))
                goto done;
            float *t;
            t = sa.h, sa.h = sa.h2, sa.h2 = t;
            t = sb.h, sb.h = sb.h2, sb.h2 = t;
        }

        if ((rc = a->head(a, sa.h, Tn, sa.logits, &sa.store.sink, e)) ||
            (rc = b->head(b, sb.h, Tn, sb.logits, &sb.store.sink, e)))
            goto done;
        if (b_iso && (rc = b_iso->head(b_iso, sa.h, Tn, si.logits, &si.store.sink, e))) goto done;
        if (r->replay && ((rc = qd_replay_head(sa.rp, &sa.src, sa.h, Tn, sa.ops, e)) ||
                          (rc = qd_replay_head(sb.rp, &sb.src, sb.h, Tn, sb.ops, e)) ||
                          (b_iso && (rc = qd_replay_head(si.rp, &si.src, sa.h, Tn, si.ops, e)))))
            goto done;
        before = r->first_div;
        if ((rc = compare_taps(r, o->tol, step, head_taps(), &sa, &sb, QD_MODE_FREE, prev[0], ra, rb, e)) ||
            (b_iso &&
             (rc = compare_taps(r, o->tol, step, head_taps(), &sa, &si, QD_MODE_ISOLATED, prev[1], ra, ri, e))))
            goto done;
        if (before < 0 && r->first_div >= 0 &&
            (rc = lockstep_repro(o, r, &sa, &sb, &si, sa.h, sb.h, tokens, step, Tn, pos0, e)))
            goto done;
        if (dcs &&
            ((rc = dump_side(dcs, &sa, head_taps(), L + 1, e)) || (rc = dump_side(dcs, &sb, head_taps(), L + 1, e)) ||
             (b_iso && (rc = dump_side(dcs, &si, head_taps(), L + 1, e))) ||
             (rc = dump_after_position(dcs, L + 1, before < 0 && r->first_div >= 0, e))))
            goto done;
        qd_next_tokens_fill(&r->next, 0, sa.logits + (size_t)(Tn - 1) * V, V, step, pos0 + Tn - 1);
        qd_next_tokens_fill(&r->next, 1, sb.logits + (size_t)(Tn - 1) * V, V, step, pos0 + Tn - 1);
        /* the next decode step feeds both sides the reference side's greedy token */
        next_token = argmax_row(sa.logits + (size_t)(Tn - 1) * V, V);
    }

done:
    qd_progress_end(o->progress);
    dump_ctl_free(&dc);
    side_free(&sa);
    side_free(&sb);
    if (b_iso) side_free(&si);
    return rc;
}

// ----------------------------------------------------------------------------
// offline: two dumps

/* The group to compare in a file: the one named, or the file's only backend group. */
static int pick_group(qd_h5in *f, const char *path, const char *group, char *out, size_t n, qd_err *e) {
    if (group) {
        if (strlen(group) >= n) return qd_errf(e, QD_EINPUT, "%s: group name '%.60s...' is too long", path, group);
        snprintf(out, n, "%s", group);
        return QD_OK;
    }
    char names[512] = "";
    int count = qd_h5in_backends(f, names, sizeof names);
    if (count == 1) {
        snprintf(out, n, "%s", names);
        return QD_OK;
    }
    if (count == 0) return qd_errf(e, QD_EINPUT, "%s: no backend group (a group with a 'precision' attribute)", path);
    return qd_errf(e, QD_EINPUT, "%s: several backend groups (%s): name one as %s:GROUP", path, names, path);
}

/* The group's 'precision': one of the four the schema allows. */
static int group_precision(qd_h5in *f, const char *path, const char *group, char *prec, size_t n, qd_err *e) {
    char pth[160];
    snprintf(pth, sizeof pth, "/%s", group);
    if (!qd_h5in_has(f, pth)) return qd_errf(e, QD_EINPUT, "%s: no group '%s'", path, group);
    int rc = qd_h5in_attr_string(f, pth, "precision", prec, n, e);
    if (rc) return rc;
    static const char *const known[] = {"fp64", "fp32", "bf16", "fp16"};
    for (int i = 0; i < 4; i++)
        if (strcmp(prec, known[i]) == 0) return QD_OK;
    return qd_errf(e, QD_EINPUT, "%s: group '%s': attribute 'precision' is \"%s\", expected fp64, fp32, bf16 or fp16",
                   path, group, prec);
}

/* The first field of config_json in which a and b differ, in the order the maths uses them: the shapes
 * first (*shape = 1: no tap could be compared), then what changes values only. 0 when none. */
static int config_differs(const qd_config *a, const qd_config *b, const char **key, char *va, char *vb, size_t n,
                          int *shape) {
    const struct {
        const char *name;
        int va, vb;
    } dims[] = {{"num_hidden_layers", a->num_hidden_layers, b->num_hidden_layers},
                {"hidden_size", a->hidden_size, b->hidden_size},
                {"intermediate_size", a->intermediate_size, b->intermediate_size},
                {"num_attention_heads", a->num_attention_heads, b->num_attention_heads},
                {"num_key_value_heads", a->num_key_value_heads, b->num_key_value_heads},
                {"head_dim", a->head_dim, b->head_dim},
                {"vocab_size", a->vocab_size, b->vocab_size},
                {"tie_word_embeddings", a->tie_word_embeddings, b->tie_word_embeddings},
                {"max_position_embeddings", a->max_position_embeddings, b->max_position_embeddings}};
    for (size_t i = 0; i < sizeof dims / sizeof *dims; i++) {
        if (dims[i].va == dims[i].vb) continue;
        *key = dims[i].name;
        *shape = i < 7;
        snprintf(va, n, "%d", dims[i].va);
        snprintf(vb, n, "%d", dims[i].vb);
        return 1;
    }
    const struct {
        const char *name;
        double va, vb;
    } reals[] = {{"rope_theta", a->rope_theta, b->rope_theta}, {"rms_norm_eps", a->rms_norm_eps, b->rms_norm_eps}};
    for (size_t i = 0; i < sizeof reals / sizeof *reals; i++) {
        if (reals[i].va == reals[i].vb) continue;
        *key = reals[i].name;
        *shape = 0;
        snprintf(va, n, "%.9g", reals[i].va);
        snprintf(vb, n, "%.9g", reals[i].vb);
        return 1;
    }
    return 0;
}

/* Before any tap is compared: both dumps hold the same model (config_json) and ran the same prompt
 * (/input_ids); otherwise every tap differs and the "first divergence" would be the embedding. Each
 * mismatch is named in one line (QD_EINPUT). allow_mismatch: a difference that leaves something to
 * compare is allowed, and said in note: a config that differs in values only (not in shapes), or prompts
 * that share their first *Tc tokens (only those positions are compared). *Tc: the tokens compared. */
static int same_run(qd_h5in *fa, const char *path_a, qd_h5in *fb, const char *path_b, int allow_mismatch, int *Tc,
                    char *note, size_t note_n, qd_err *e) {
    const char *key;
    char va[32], vb[32];
    int shape = 0;
    if (config_differs(qd_h5in_config(fa), qd_h5in_config(fb), &key, va, vb, sizeof va, &shape)) {
        if (shape || !allow_mismatch)
            return qd_errf(e, QD_EINPUT,
                           "reference %s and test %s hold different models: config_json '%s' is %s vs %s%s", path_a,
                           path_b, key, va, vb,
                           shape ? " (the tensors' shapes differ: nothing can be compared)"
                                 : " (--allow-mismatch compares them anyway)");
        snprintf(note, note_n, "different models allowed: config_json '%s' is %s vs %s", key, va, vb);
    }
    int32_t *a = NULL, *b = NULL;
    int Ta = 0, Tb = 0;
    int rc = qd_h5in_input_ids(fa, &a, &Ta, e);
    if (!rc) rc = qd_h5in_input_ids(fb, &b, &Tb, e);
    int p = 0;
    while (!rc && p < Ta && p < Tb && a[p] == b[p]) p++;
    *Tc = Ta < Tb ? Ta : Tb;
    if (rc || (Ta == Tb && p == Ta)) {
        /* the same prompt */
    } else if ((Ta == Tb + 1 && memcmp(a + 1, b, (size_t)Tb * sizeof *a) == 0) ||
               (Tb == Ta + 1 && memcmp(b + 1, a, (size_t)Ta * sizeof *a) == 0)) {
        const int test_short = Ta > Tb;
        rc = qd_errf(e, QD_EINPUT,
                     "reference %s and test %s ran different prompts: the %s's is the %s's without its leading token "
                     "(id %d), so every position is shifted by one: a missing BOS token?",
                     path_a, path_b, test_short ? "test" : "reference", test_short ? "reference" : "test",
                     test_short ? a[0] : b[0]);
    } else {
        char what[160];
        if (p < *Tc) snprintf(what, sizeof what, "token %d is id %d in the reference, %d in the test", p, a[p], b[p]);
        else snprintf(what, sizeof what, "%d vs %d tokens, the first %d the same", Ta, Tb, p);
        if (!allow_mismatch || p == 0)
            rc = qd_errf(e, QD_EINPUT, "reference %s and test %s ran different prompts ('/input_ids'): %s%s", path_a,
                         path_b, what,
                         p == 0           ? " (no common first token: nothing to compare)"
                         : allow_mismatch ? ""
                                          : " (--allow-mismatch compares the common first tokens)");
        else {
            size_t k = strlen(note);
            snprintf(note + k, note_n - k, "%sdifferent prompts allowed (%s): only the first %d tokens are compared",
                     k ? "; " : "", what, p);
            *Tc = p;
        }
    }
    free(a);
    free(b);
    return rc;
}

/* Tc: the tokens compared (the first Tc rows of each tap; fewer than a dump holds with --allow-mismatch). */
static int compare_one(qd_report *r, const qd_tolerances *tol, qd_h5in *fa, const char *ga, qd_h5in *fb, const char *gb,
                       int Tc, qd_tap_id id, double *prev, const qd_replay_op *ra, const qd_replay_op *rb, qd_err *e) {
    const char *name = qd_tap_id_name(id);
    char pa[256], pb[256];
    qd_h5_tap_path(pa, sizeof pa, ga, id.layer, name);
    qd_h5_tap_path(pb, sizeof pb, gb, id.layer, name);
    int ha = qd_h5in_has(fa, pa), hb = qd_h5in_has(fb, pb);
    if (ha && !hb) add_only(r->only_a, &r->n_only_a, id);
    if (hb && !ha) add_only(r->only_b, &r->n_only_b, id);
    if (!ha || !hb) return QD_OK;
    float *da = NULL, *db = NULL; /* (T, ...) each checked against the model and its own T */
    int nd = 0, ndb = 0;
    int64_t shape[3], shape_b[3];
    int rc = qd_h5in_read_tap(fa, ga, id.layer, id.tap, &da, &nd, shape, e);
    if (!rc) rc = qd_h5in_read_tap(fb, gb, id.layer, id.tap, &db, &ndb, shape_b, e);
    shape[0] = Tc; /* row-major (T, ...): the first Tc rows are the first Tc positions */
    if (!rc) rc = add_row(r, tol, 0, id, QD_MODE_FREE, db, da, nd, shape, prev, ra, rb, e);
    if (!rc && id.pos == QD_POS_HEAD && id.tap == QD_TAP_LOGITS && nd == 2 && shape[0] > 0) {
        const size_t V = (size_t)shape[1], last = (size_t)shape[0] - 1;
        qd_next_tokens_fill(&r->next, 0, da + last * V, (int)V, 0, (int)last);
        qd_next_tokens_fill(&r->next, 1, db + last * V, (int)V, 0, (int)last);
    }
    free(da);
    free(db);
    return rc;
}

// ----------------------------------------------------------------------------
// offline replay: a dump's taps as a qd_tap_source

/* The taps of one position read from a dump group, held until the position is done. */
typedef struct {
    qd_h5in *f;
    const char *group;
    struct {
        qd_tap_id id;
        float *data; /* (shape) */
        int ndim;
        int64_t shape[3];
    } held[QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS];
    int n;
    int rc; /* a read failure (the replay goes on without the tap; the caller reports it) */
    qd_err e;
} h5_source;

static const float *h5_get(void *ctx, qd_tap_id id, int *ndim, int64_t shape[3]) {
    h5_source *s = ctx;
    for (int i = 0; i < s->n; i++)
        if (qd_tap_id_equal(s->held[i].id, id)) {
            *ndim = s->held[i].ndim;
            memcpy(shape, s->held[i].shape, 3 * sizeof *shape);
            return s->held[i].data;
        }
    char path[256];
    qd_h5_tap_path(path, sizeof path, s->group, id.layer, qd_tap_id_name(id));
    if (s->rc || s->n == (int)(sizeof s->held / sizeof *s->held) || !qd_h5in_has(s->f, path)) return NULL;
    float *d = NULL;
    int nd = 0;
    int64_t sh[3] = {1, 1, 1};
    if ((s->rc = qd_h5in_read_f32(s->f, path, &d, &nd, sh, &s->e))) return NULL;
    s->held[s->n].id = id;
    s->held[s->n].data = d;
    s->held[s->n].ndim = nd;
    memcpy(s->held[s->n].shape, sh, sizeof sh);
    s->n++;
    *ndim = nd;
    memcpy(shape, sh, sizeof sh);
    return d;
}

static void h5_drop(h5_source *s) {
    for (int i = 0; i < s->n; i++) free(s->held[i].data);
    s->n = 0;
}

/* One group of a dump being replayed: its source, its replay, and its last layer output. */
typedef struct {
    h5_source hs;
    qd_tap_source src;
    qd_replay *rp;
    float *h; /* (T, C) the input of the next layer (the previous out, or embed); NULL: not in the dump */
} file_side;

static int file_side_open(file_side *fs, qd_h5in *f, const char *path, const char *group, const qd_replay_judge *j,
                          int T, qd_err *e) {
    memset(fs, 0, sizeof *fs);
    fs->hs.f = f;
    fs->hs.group = group;
    fs->src = (qd_tap_source){h5_get, &fs->hs};
    char pth[160], prec[16], accum[16];
    snprintf(pth, sizeof pth, "/%s", group);
    int rc = qd_h5in_attr_string(f, pth, "precision", prec, sizeof prec, e);
    if (rc) return rc;
    qd_err ignored;
    int have_accum = qd_h5in_attr_string(f, pth, "accum", accum, sizeof accum, &ignored) == QD_OK;
    fs->rp = qd_replay_create(j->w, prec, have_accum ? accum : NULL, T, j->threads, e);
    if (!fs->rp)
        return e->code == QD_EINPUT ? qd_errf(e, QD_EINPUT, "%s: group '%s': %s", path, group, e->msg) : e->code;
    return QD_OK;
}

static void file_side_close(file_side *fs) {
    h5_drop(&fs->hs);
    qd_replay_free(fs->rp);
    free(fs->h);
}

/* Keeps the side's tap `id` (embed or a layer's out) as the next layer's input; NULL when absent. */
static int file_side_keep_input(file_side *fs, qd_tap_id id, const qd_config *c, int T, qd_err *e) {
    free(fs->h);
    fs->h = NULL;
    int nd;
    int64_t shape[3];
    const float *d = h5_get(&fs->hs, id, &nd, shape);
    if (fs->hs.rc) return qd_errf(e, fs->hs.rc, "%s", fs->hs.e.msg);
    if (!d || nd != 2 || shape[0] != T || shape[1] != c->hidden_size) return QD_OK;
    size_t n = (size_t)T * c->hidden_size;
    if (!(fs->h = qd_alloc(n * sizeof(float), e))) return QD_ERUNTIME;
    memcpy(fs->h, d, n * sizeof(float));
    return QD_OK;
}

/* Replays one position of a dump side: pos QD_POS_EMBED, QD_POS_LAYER (layer l) or QD_POS_HEAD. ops: in the
 * position's tap list's order. Afterwards the side holds the next layer's input. */
static int file_side_replay(file_side *fs, const qd_config *c, qd_tap_pos pos, int l, const int32_t *tokens, int T,
                            qd_replay_op *ops, qd_err *e) {
    int rc;
    if (pos == QD_POS_EMBED) rc = qd_replay_embed(fs->rp, &fs->src, tokens, T, ops, e);
    else if (pos == QD_POS_LAYER) rc = qd_replay_layer(fs->rp, &fs->src, l, fs->h, T, 0, ops, e);
    else rc = qd_replay_head(fs->rp, &fs->src, fs->h, T, ops, e);
    if (!rc && fs->hs.rc) rc = qd_errf(e, fs->hs.rc, "%s", fs->hs.e.msg);
    if (!rc && pos != QD_POS_HEAD)
        rc = file_side_keep_input(fs, pos == QD_POS_EMBED ? qd_tap_model(QD_TAP_EMBED) : qd_tap_layer(l, QD_TAP_OUT), c,
                                  T, e);
    h5_drop(&fs->hs);
    return rc;
}

/* The prompt of a dump (/input_ids) checked against the model. */
static int file_tokens(qd_h5in *f, const char *path, const qd_config *c, int32_t **tokens, int *T, qd_err *e) {
    int rc = qd_h5in_input_ids(f, tokens, T, e);
    if (rc) return rc;
    if (*T <= 0) return qd_errf(e, QD_EINPUT, "%s: '/input_ids' is empty", path);
    for (int t = 0; t < *T; t++)
        if ((*tokens)[t] < 0 || (*tokens)[t] >= c->vocab_size)
            return qd_errf(e, QD_EINPUT, "%s: '/input_ids'[%d] = %d is outside the model's vocabulary (%d)", path, t,
                           (*tokens)[t], c->vocab_size);
    return QD_OK;
}

/* The offline first divergence's op handed to the repro writer (judge->repro): the judged side's group is
 * replayed again up to that position (the comparison's own replay has moved past it), its input kept. */
static int files_repro(const char *path, const char *group, char which, const qd_replay_judge *judge,
                       const qd_report *r, const int32_t *tokens, int T, qd_err *e) {
    const qd_tap_row *row = &r->rows[r->first_div];
    const qd_config *c = &judge->w->cfg;
    qd_h5in *f = qd_h5in_open(path, e);
    if (!f) return e->code;
    file_side fs;
    char pth[160], accum[16];
    qd_err ignored;
    snprintf(pth, sizeof pth, "/%s", group);
    int have_accum = qd_h5in_attr_string(f, pth, "accum", accum, sizeof accum, &ignored) == QD_OK;
    int rc = file_side_open(&fs, f, path, group, judge, T, e), opened = !rc;
    float *h_in = NULL; /* (T, C) the position's input as the side had it */
    const int last = row->id.pos == QD_POS_EMBED   ? 0
                     : row->id.pos == QD_POS_LAYER ? row->id.layer + 1
                                                   : r->n_layers + 1;
    qd_replay_op ops[QD_NUM_LAYER_TAPS];
    for (int pos = 0; pos <= last && !rc; pos++) {
        qd_tap_pos p = pos == 0 ? QD_POS_EMBED : pos <= r->n_layers ? QD_POS_LAYER : QD_POS_HEAD;
        if (pos == last && fs.h) {
            size_t n = (size_t)T * c->hidden_size;
            if (!(h_in = qd_alloc(n * sizeof(float), e))) rc = QD_ERUNTIME;
            else memcpy(h_in, fs.h, n * sizeof(float));
        }
        if (!rc) rc = file_side_replay(&fs, c, p, pos - 1, tokens, T, ops, e);
    }
    if (!rc) {
        char prec[16];
        rc = qd_h5in_attr_string(f, pth, "precision", prec, sizeof prec, e);
        qd_repro_op op = {.id = row->id,
                          .step = 0,
                          .T = T,
                          .pos0 = 0,
                          .side = which,
                          .engine = group,
                          .precision = prec,
                          .accum = have_accum ? accum : NULL,
                          .mode = qd_mode_name(row->mode),
                          .w = judge->w,
                          .rp = fs.rp,
                          .src = &fs.src,
                          .h_in = h_in,
                          .tokens = tokens,
                          .op = &row->rp[row->judged],
                          .verdict = row->verdict,
                          .threshold = r->threshold,
                          .blowup_ratio = r->blowup.blowup_ratio};
        if (!rc) rc = qd_repro_write(judge->repro, &op, e); /* the source reads the taps again, lazily */
        if (!rc && fs.hs.rc) rc = qd_errf(e, fs.hs.rc, "%s", fs.hs.e.msg);
    }
    free(h_in);
    if (opened) file_side_close(&fs);
    qd_h5in_close(f);
    return rc;
}

int qd_dump_model_dir(const char *path, char *out, size_t n, qd_err *e) {
    qd_h5in *f = qd_h5in_open(path, e);
    if (!f) return e->code;
    char model[4096] = "";
    qd_err ignored;
    int have = qd_h5in_attr_string(f, "/", "model", model, sizeof model, &ignored) == QD_OK && model[0];
    qd_h5in_close(f);
    char probe[4200];
    if (have) {
        snprintf(probe, sizeof probe, "%s/config.json", model);
        if (access(probe, R_OK) == 0) {
            snprintf(out, n, "%s", model);
            return QD_OK;
        }
    }
    /* the dump's own directory */
    snprintf(probe, sizeof probe, "%s", path);
    char *slash = strrchr(probe, '/');
    if (slash) *slash = '\0';
    else snprintf(probe, sizeof probe, ".");
    char dir[4096];
    snprintf(dir, sizeof dir, "%.4000s", probe);
    snprintf(probe, sizeof probe, "%s/config.json", dir);
    if (access(probe, R_OK) == 0) {
        snprintf(out, n, "%s", dir);
        return QD_OK;
    }
    return qd_errf(e, QD_EINPUT,
                   "%s: the replay needs the model the dump was made with: its attribute 'model' (%s) is "
                   "not a checkpoint directory here; give --model DIR",
                   path, have ? model : "absent");
}

int qd_compare_files(const char *path_a, const char *group_a, const char *path_b, const char *group_b,
                     const qd_tolerances *tol, qd_report *r, qd_err *e) {
    return qd_compare_files_judged(path_a, group_a, path_b, group_b, tol, NULL, NULL, r, e);
}

int qd_compare_files_judged(const char *path_a, const char *group_a, const char *path_b, const char *group_b,
                            const qd_tolerances *tol, const qd_replay_judge *judge, qd_compare_match *match,
                            qd_report *r, qd_err *e) {
    char ga[128], gb[128], prec_a[16], prec_b[16];
    int rc = QD_OK, Tc = 0;
    qd_compare_match no_match = {0};
    if (!match) match = &no_match;
    match->note[0] = '\0';
    if (judge && !judge->w) judge = NULL;
    qd_h5in *fa = qd_h5in_open(path_a, e);
    if (!fa) return e->code;
    qd_h5in *fb = qd_h5in_open(path_b, e);
    if (!fb) {
        qd_h5in_close(fa);
        return e->code;
    }
    /* the schema was checked by qd_h5in_open; then the model and the prompt, before anything else */
    if ((rc = same_run(fa, path_a, fb, path_b, match->allow_mismatch, &Tc, match->note, sizeof match->note, e)) ||
        (rc = pick_group(fa, path_a, group_a, ga, sizeof ga, e)) ||
        (rc = pick_group(fb, path_b, group_b, gb, sizeof gb, e)) ||
        (rc = group_precision(fa, path_a, ga, prec_a, sizeof prec_a, e)) ||
        (rc = group_precision(fb, path_b, gb, prec_b, sizeof prec_b, e)))
        goto out;
    match->T_compared = Tc;
    /* the model says how many layers there are; a layer group past them would be silently ignored */
    const int L = qd_h5in_config(fa)->num_hidden_layers;
    if ((rc = qd_h5in_check_layers(fa, ga, e)) || (rc = qd_h5in_check_layers(fb, gb, e))) goto out;
    char name_a[64], name_b[64];
    snprintf(name_a, sizeof name_a, "%.60s", ga);
    snprintf(name_b, sizeof name_b, "%.60s", gb);
    if (strcmp(ga, gb) == 0) { /* same group name in both files: say which file */
        snprintf(name_a, sizeof name_a, "A:%.58s", ga);
        snprintf(name_b, sizeof name_b, "B:%.58s", gb);
    }
    /* a tolerance file is held to the same fit as in lockstep: this pair's precision class, these layers */
    if (tol && (rc = qd_tolerances_check_fit(tol, name_b, prec_b, name_a, prec_a, L, e))) goto out;

    qd_tolerances deflt;
    int own_tol = tol == NULL;
    if (own_tol) {
        if ((rc = qd_tolerances_default(&deflt, prec_b, prec_a, e))) goto out;
        tol = &deflt;
    }
    qd_report_init(r, name_a, prec_a, name_b, prec_b, L, QD_MODE_FREE, &tol->blowup);
    r->head_dim = qd_compare_dump_head_dim(fa);
    double prev[QD_NUM_TAP_KINDS];
    for (int i = 0; i < QD_NUM_TAP_KINDS; i++) prev[i] = NAN;
    /* the replay judge: each file's group replayed on its own, over the prompt of file A */
    file_side fs[2];
    int nfs = 0, T = 0, Tb = 0;
    int32_t *tokens = NULL, *tokens_b = NULL; /* each side replays its own prompt (they differ with --allow-mismatch) */
    qd_replay_op ops[2][QD_NUM_LAYER_TAPS];
    const qd_replay_op *ra = NULL, *rb = NULL;
    if (judge) {
        const qd_config *c = &judge->w->cfg;
        r->replay = 1;
        r->threshold = judge->threshold > 0 ? judge->threshold : QD_REPLAY_THRESHOLD;
        if (L > c->num_hidden_layers)
            rc = qd_errf(e, QD_EINPUT, "%s vs %s: the dumps hold %d layers, the model %d", path_a, path_b, L,
                         c->num_hidden_layers);
        const char *key;
        char va[32], vb[32];
        int shape = 0;
        if (!rc && config_differs(qd_h5in_config(fa), c, &key, va, vb, sizeof va, &shape))
            rc = qd_errf(e, QD_EINPUT,
                         "the replay's model (--model or %s's 'model') is not the dumps': config_json '%s' is %s "
                         "in %s, %s in the model",
                         path_a, key, va, path_a, vb);
        if (!rc) rc = file_tokens(fa, path_a, c, &tokens, &T, e);
        if (!rc) rc = file_tokens(fb, path_b, c, &tokens_b, &Tb, e);
        if (!rc && !(rc = file_side_open(&fs[0], fa, path_a, ga, judge, T, e))) nfs = 1;
        if (!rc && !(rc = file_side_open(&fs[1], fb, path_b, gb, judge, Tb, e))) nfs = 2;
        ra = ops[0];
        rb = ops[1];
    }
    const qd_config *jc = judge ? &judge->w->cfg : NULL;
#define SIDE_TOKENS(k) (k ? tokens_b : tokens), (k ? Tb : T)
    for (int k = 0; k < nfs && !rc; k++) rc = file_side_replay(&fs[k], jc, QD_POS_EMBED, -1, SIDE_TOKENS(k), ops[k], e);
    if (!rc) rc = compare_one(r, tol, fa, ga, fb, gb, Tc, qd_tap_model(QD_TAP_EMBED), prev, ra, rb, e);
    for (int l = 0; l < L && !rc; l++) {
        for (int k = 0; k < nfs && !rc; k++)
            rc = file_side_replay(&fs[k], jc, QD_POS_LAYER, l, SIDE_TOKENS(k), ops[k], e);
        for (int t = 0; t < QD_NUM_LAYER_TAPS && !rc; t++)
            rc = compare_one(r, tol, fa, ga, fb, gb, Tc, qd_tap_layer(l, t), prev, ra ? &ra[t] : NULL,
                             rb ? &rb[t] : NULL, e);
    }
    for (int k = 0; k < nfs && !rc; k++) rc = file_side_replay(&fs[k], jc, QD_POS_HEAD, -1, SIDE_TOKENS(k), ops[k], e);
    if (!rc) rc = compare_one(r, tol, fa, ga, fb, gb, Tc, qd_tap_model(QD_TAP_FINAL_NORM), prev, ra, rb, e);
    if (!rc)
        rc = compare_one(r, tol, fa, ga, fb, gb, Tc, qd_tap_model(QD_TAP_LOGITS), prev, ra ? &ra[1] : NULL,
                         rb ? &rb[1] : NULL, e);
    for (int k = 0; k < nfs; k++) file_side_close(&fs[k]);
    if (!rc && judge && judge->repro && r->first_div >= 0 && r->rows[r->first_div].judged >= 0) {
        const int k = r->rows[r->first_div].judged;
        rc = files_repro(k ? path_b : path_a, k ? gb : ga, k ? 'B' : 'A', judge, r, SIDE_TOKENS(k), e);
    }
#undef SIDE_TOKENS
    free(tokens);
    free(tokens_b);
    if (own_tol) qd_tolerances_free(&deflt);
    /* a comparison of nothing must not pass */
    if (!rc && r->n == 0)
        rc = qd_errf(e, QD_EINPUT, "%s:%s vs %s:%s: no tap is present in both groups, so nothing was compared", path_a,
                     ga, path_b, gb);
out:
    qd_h5in_close(fa);
    qd_h5in_close(fb);
    return rc;
}

int qd_replay_file(const char *path, const char *group, const qd_replay_judge *judge, qd_report *r, qd_err *e) {
    char g[128];
    int rc = QD_OK;
    if (!judge || !judge->w) return qd_errf(e, QD_EINPUT, "replay: no model weights given");
    qd_h5in *f = qd_h5in_open(path, e);
    if (!f) return e->code;
    const qd_config *c = &judge->w->cfg;
    char pth[160], prec[16];
    int32_t *tokens = NULL;
    int T = 0, opened = 0;
    file_side fs;
    if ((rc = pick_group(f, path, group, g, sizeof g, e)) || (rc = group_precision(f, path, g, prec, sizeof prec, e)) ||
        (rc = qd_h5in_check_layers(f, g, e))) {
        qd_h5in_close(f);
        return rc;
    }
    snprintf(pth, sizeof pth, "/%s", g);
    int L = 0;
    for (; !rc; L++) {
        char pl[160];
        snprintf(pl, sizeof pl, "/%s/layers/%03d", g, L);
        if (!qd_h5in_has(f, pl)) break;
    }
    if (!rc && L > c->num_hidden_layers)
        rc = qd_errf(e, QD_EINPUT, "%s: group '%s' holds %d layers, the model %d", path, g, L, c->num_hidden_layers);
    if (!rc) rc = file_tokens(f, path, c, &tokens, &T, e);
    if (!rc && !(rc = file_side_open(&fs, f, path, g, judge, T, e))) opened = 1;
    if (rc) goto out;
    qd_blowup b = {.blowup_ratio = 1000.0, .growth_factor = 10.0, .growth_floor = 0.0};
    qd_report_init(r, g, prec, "", "", L, QD_MODE_FREE, &b);
    r->replay = r->single = 1;
    r->threshold = judge->threshold > 0 ? judge->threshold : QD_REPLAY_THRESHOLD;
    qd_replay_op ops[QD_NUM_LAYER_TAPS];
    /* one row per replayed op: the engine against itself as the "pair" (no A-vs-B metrics), rp[0] judged */
    for (int pos = 0; pos < L + 2 && !rc; pos++) {
        qd_tap_pos p = pos == 0 ? QD_POS_EMBED : pos <= L ? QD_POS_LAYER : QD_POS_HEAD;
        tap_list tl = p == QD_POS_EMBED ? embed_taps() : p == QD_POS_LAYER ? layer_taps(pos - 1) : head_taps();
        if ((rc = file_side_replay(&fs, c, p, pos - 1, tokens, T, ops, e))) break;
        for (int k = 0; k < tl.n && !rc; k++) {
            if (ops[k].have) rc = add_single_row(r, tl.id[k], &ops[k], e);
        }
    }
out:
    if (opened) file_side_close(&fs);
    free(tokens);
    qd_h5in_close(f);
    return rc;
}
