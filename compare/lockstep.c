/* lockstep.c: running two backends side by side, layer by layer, and comparing files (qd_compare.h). */
#include "qd_compare.h"

#include <fnmatch.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qd_h5read.h"
#include "qd_tapstore.h"

// ----------------------------------------------------------------------------
// the report

const char *qd_mode_name(qd_mode m) { return m == QD_MODE_ISOLATED ? "isolated" : "free"; }

void qd_report_init(qd_report *r, const char *name_a, const char *prec_a, const char *name_b,
                    const char *prec_b, int n_layers, qd_mode locate, const qd_blowup *blowup) {
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
}

void qd_report_free(qd_report *r) {
    free(r->rows);
    r->rows = NULL;
    r->n = r->cap = 0;
}

const char *qd_row_tap_name(const qd_tap_row *row) {
    return row->layer < 0 ? qd_model_tap_name(row->tap) : qd_layer_tap_name(row->tap);
}

int qd_report_diverged(const qd_report *r) { return r->first_div >= 0; }

static void add_only(char (*list)[24], int *n, const char *name) {
    for (int i = 0; i < *n; i++)
        if (strcmp(list[i], name) == 0) return;
    if (*n < QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS) snprintf(list[(*n)++], 24, "%s", name);
}

/* Compares one tap and appends its row. prev: the growth-check memory of this mode, indexed by tap id. */
static void add_row(qd_report *r, const qd_tolerances *tol, int step, int layer, int tap, qd_mode mode,
                    const float *test, const float *ref, int ndim, const int64_t *shape, double *prev) {
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 256;
        r->rows = qd_realloc(r->rows, (size_t)r->cap * sizeof *r->rows);
    }
    qd_tap_row *row = &r->rows[r->n];
    memset(row, 0, sizeof *row);
    row->step = step;
    row->layer = layer;
    row->tap = tap;
    row->mode = mode;
    qd_metrics_compute(test, ref, ndim, shape, &row->m);
    const char *name = qd_row_tap_name(row);
    int id = layer < 0 ? QD_NUM_LAYER_TAPS + tap : tap;
    const int iso = mode == QD_MODE_ISOLATED;
    row->tol = iso ? qd_tolerances_lookup_isolated(tol, layer, name) : qd_tolerances_lookup(tol, layer, name);
    row->prev_rel_l2 = layer < 0 ? NAN : prev[id];
    row->verdict = qd_verdict(&row->m, &row->tol, &tol->blowup, row->prev_rel_l2); /* the tolerance just looked up */
    prev[id] = row->m.rel_l2;
    if (qd_verdict_fails(row->verdict)) {
        if (r->first_fail[mode] < 0) r->first_fail[mode] = r->n;
        if (mode == r->locate && r->first_div < 0) r->first_div = r->n;
    }
    if (mode == QD_MODE_ISOLATED) r->isolated = 1;
    r->n++;
}

static void reset_prev(double prev[2][QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS]) {
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS; i++) prev[m][i] = NAN;
}

// ----------------------------------------------------------------------------
// the dump: which tensors are written, and the window around the first divergence

typedef struct {
    const char *group; /* backend group name */
    int layer;
    char name[24];
    int pos;           /* 0 embed, l+1 layer l, L+1 head */
    int ndim;
    int64_t shape[3];
    float *data;
} held_tap;

typedef struct {
    qd_dump *d;
    const char *globs;
    int window;        /* < 0: write everything at once */
    int diverged_pos;  /* position of the first divergence; -1 until found */
    held_tap *held;    /* taps kept while no divergence is known (window >= 0) */
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
        if (dc->held[i].pos < pos)
            free(dc->held[i].data);
        else
            dc->held[k++] = dc->held[i];
    }
    dc->n_held = k;
}

/* Offers one tap to the dump: written now, held for the window, or dropped. */
static int dump_tap(dump_ctl *dc, const char *group, int layer, const char *name, int pos, const qd_tapbuf *t,
                    qd_err *e) {
    if (!dc->d || !tap_selected(dc->globs, name)) return QD_OK;
    int write_now = dc->window < 0 ||
                    (dc->diverged_pos >= 0 && pos >= dc->diverged_pos - dc->window &&
                     pos <= dc->diverged_pos + dc->window);
    if (write_now) return qd_dump_write_tap(dc->d, group, layer, name, t->data, t->ndim, t->shape, e);
    if (dc->diverged_pos >= 0) return QD_OK; /* past the window */
    if (dc->n_held == dc->cap_held) {
        dc->cap_held = dc->cap_held ? 2 * dc->cap_held : 64;
        dc->held = qd_realloc(dc->held, (size_t)dc->cap_held * sizeof *dc->held);
    }
    held_tap *h = &dc->held[dc->n_held++];
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    h->group = group;
    h->layer = layer;
    snprintf(h->name, sizeof h->name, "%s", name);
    h->pos = pos;
    h->ndim = t->ndim;
    memcpy(h->shape, t->shape, sizeof h->shape);
    h->data = qd_malloc(n * sizeof(float));
    memcpy(h->data, t->data, n * sizeof(float));
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
            int rc = qd_dump_write_tap(dc->d, h->group, h->layer, h->name, h->data, h->ndim, h->shape, e);
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
    float *h, *h2;     /* (T, C) hidden state in and out */
    float *logits;     /* (T, V) */
} side;

static void side_init(side *s, qd_backend *be, const char *group, size_t hidden, size_t logits) {
    s->be = be;
    s->group = group;
    qd_tapstore_init(&s->store, NULL);
    s->h = qd_malloc(hidden * sizeof(float));
    s->h2 = qd_malloc(hidden * sizeof(float));
    s->logits = qd_malloc(logits * sizeof(float));
}

static void side_free(side *s) {
    qd_tapstore_free(&s->store);
    free(s->h);
    free(s->h2);
    free(s->logits);
}

/* Compares the taps both sides hold for one layer (layer -1: the model taps in `taps`). */
static void compare_taps(qd_report *r, const qd_tolerances *tol, int step, int layer, const int *taps, int ntaps,
                         const side *a, const side *b, qd_mode mode, double *prev) {
    for (int k = 0; k < ntaps; k++) {
        int tap = taps[k];
        const qd_tapbuf *ta = qd_tapstore_get(&a->store, layer, tap);
        const qd_tapbuf *tb = qd_tapstore_get(&b->store, layer, tap);
        const char *name = layer < 0 ? qd_model_tap_name(tap) : qd_layer_tap_name(tap);
        if (ta && !tb) add_only(r->only_a, &r->n_only_a, name);
        if (tb && !ta) add_only(r->only_b, &r->n_only_b, name);
        if (!ta || !tb) continue;
        int same = ta->ndim == tb->ndim;
        for (int d = 0; same && d < ta->ndim; d++) same = ta->shape[d] == tb->shape[d];
        if (!same) continue; /* a backend's shape bug; the dump keeps both for inspection */
        add_row(r, tol, step, layer, tap, mode, tb->data, ta->data, ta->ndim, ta->shape, prev);
    }
}

static int dump_side(dump_ctl *dc, const side *s, int layer, const int *taps, int ntaps, int pos, qd_err *e) {
    for (int k = 0; k < ntaps; k++) {
        const qd_tapbuf *t = qd_tapstore_get(&s->store, layer, taps[k]);
        if (!t) continue;
        const char *name = layer < 0 ? qd_model_tap_name(taps[k]) : qd_layer_tap_name(taps[k]);
        int rc = dump_tap(dc, s->group, layer, name, pos, t, e);
        if (rc) return rc;
    }
    return QD_OK;
}

static int argmax_row(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int qd_lockstep(qd_backend *a, qd_backend *b, qd_backend *b_iso, const qd_lockstep_opts *o, qd_report *r,
                qd_err *e) {
    const qd_config *c = a->cfg;
    const int L = c->num_hidden_layers, C = c->hidden_size, V = c->vocab_size;
    const int T = o->T;
    int rc = QD_OK;
    char iso_group[80];
    snprintf(iso_group, sizeof iso_group, "%s-isolated", b->name);

    side sa, sb, si;
    side_init(&sa, a, a->name, (size_t)T * C, (size_t)T * V);
    side_init(&sb, b, b->name, (size_t)T * C, (size_t)T * V);
    if (b_iso) side_init(&si, b_iso, iso_group, (size_t)T * C, (size_t)T * V);

    dump_ctl dc = {.d = o->dump, .globs = o->dump_taps, .window = o->dump_window, .diverged_pos = -1};
    if (o->dump) {
        const side *sides[3] = {&sa, &sb, b_iso ? &si : NULL};
        for (int i = 0; i < 3 && !rc; i++) {
            if (!sides[i]) continue;
            rc = qd_dump_add_backend(o->dump, sides[i]->group, sides[i]->be->precision, e);
            if (!rc) rc = qd_dump_backend_attr(o->dump, sides[i]->group, "accum", sides[i]->be->accum, e);
        }
        if (!rc && b_iso)
            rc = qd_dump_backend_attr(o->dump, iso_group, "isolated_from", a->name, e);
        if (rc) goto done;
    }

    static const int embed_taps[] = {QD_TAP_EMBED};
    static const int head_taps[] = {QD_TAP_FINAL_NORM, QD_TAP_LOGITS};
    int layer_taps[QD_NUM_LAYER_TAPS];
    for (int i = 0; i < QD_NUM_LAYER_TAPS; i++) layer_taps[i] = i;
    double prev[2][QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS];

    int32_t next_token = 0;
    r->steps = 1 + (o->decode > 0 ? o->decode : 0);
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
        int before = r->first_div;
        compare_taps(r, o->tol, step, -1, embed_taps, 1, &sa, &sb, QD_MODE_FREE, prev[0]);
        if (dcs && ((rc = dump_side(dcs, &sa, -1, embed_taps, 1, 0, e)) ||
                    (rc = dump_side(dcs, &sb, -1, embed_taps, 1, 0, e)) ||
                    (rc = dump_after_position(dcs, 0, before < 0 && r->first_div >= 0, e))))
            goto done;

        for (int l = 0; l < L; l++) {
            if (o->progress && isatty(2))
                fprintf(stderr, "\rqwen3-diff: %s layer %d/%d ", step ? "decode" : "prompt", l + 1, L);
            qd_tapstore_clear_layer(&sa.store);
            qd_tapstore_clear_layer(&sb.store);
            if ((rc = a->layer(a, l, sa.h, sa.h2, Tn, pos0, &sa.store.sink, e)) ||
                (rc = b->layer(b, l, sb.h, sb.h2, Tn, pos0, &sb.store.sink, e)))
                goto done;
            if (b_iso) {
                qd_tapstore_clear_layer(&si.store);
                if ((rc = b_iso->layer(b_iso, l, sa.h, si.h2, Tn, pos0, &si.store.sink, e))) goto done;
            }
            before = r->first_div;
            compare_taps(r, o->tol, step, l, layer_taps, QD_NUM_LAYER_TAPS, &sa, &sb, QD_MODE_FREE, prev[0]);
            if (b_iso)
                compare_taps(r, o->tol, step, l, layer_taps, QD_NUM_LAYER_TAPS, &sa, &si, QD_MODE_ISOLATED,
                             prev[1]);
            if (dcs && ((rc = dump_side(dcs, &sa, l, layer_taps, QD_NUM_LAYER_TAPS, l + 1, e)) ||
                        (rc = dump_side(dcs, &sb, l, layer_taps, QD_NUM_LAYER_TAPS, l + 1, e)) ||
                        (b_iso && (rc = dump_side(dcs, &si, l, layer_taps, QD_NUM_LAYER_TAPS, l + 1, e))) ||
                        (rc = dump_after_position(dcs, l + 1, before < 0 && r->first_div >= 0, e))))
                goto done;
            float *t;
            t = sa.h, sa.h = sa.h2, sa.h2 = t;
            t = sb.h, sb.h = sb.h2, sb.h2 = t;
        }
        if (o->progress && isatty(2)) fprintf(stderr, "\r\033[K");

        if ((rc = a->head(a, sa.h, Tn, sa.logits, &sa.store.sink, e)) ||
            (rc = b->head(b, sb.h, Tn, sb.logits, &sb.store.sink, e)))
            goto done;
        if (b_iso && (rc = b_iso->head(b_iso, sa.h, Tn, si.logits, &si.store.sink, e))) goto done;
        before = r->first_div;
        compare_taps(r, o->tol, step, -1, head_taps, 2, &sa, &sb, QD_MODE_FREE, prev[0]);
        if (b_iso) compare_taps(r, o->tol, step, -1, head_taps, 2, &sa, &si, QD_MODE_ISOLATED, prev[1]);
        if (dcs && ((rc = dump_side(dcs, &sa, -1, head_taps, 2, L + 1, e)) ||
                    (rc = dump_side(dcs, &sb, -1, head_taps, 2, L + 1, e)) ||
                    (b_iso && (rc = dump_side(dcs, &si, -1, head_taps, 2, L + 1, e))) ||
                    (rc = dump_after_position(dcs, L + 1, before < 0 && r->first_div >= 0, e))))
            goto done;
        /* the next decode step feeds both sides the reference side's greedy token */
        next_token = argmax_row(sa.logits + (size_t)(Tn - 1) * V, V);
    }

done:
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

/* Both dumps must hold the same model's tensors for the same number of tokens: every tap shape follows. */
static int same_model(qd_h5in *fa, const char *path_a, qd_h5in *fb, const char *path_b, qd_err *e) {
    const qd_config *a = qd_h5in_config(fa), *b = qd_h5in_config(fb);
    const struct {
        const char *name;
        int va, vb;
    } dims[] = {{"num_hidden_layers", a->num_hidden_layers, b->num_hidden_layers},
                {"hidden_size", a->hidden_size, b->hidden_size},
                {"intermediate_size", a->intermediate_size, b->intermediate_size},
                {"num_attention_heads", a->num_attention_heads, b->num_attention_heads},
                {"num_key_value_heads", a->num_key_value_heads, b->num_key_value_heads},
                {"head_dim", a->head_dim, b->head_dim},
                {"vocab_size", a->vocab_size, b->vocab_size}};
    for (size_t i = 0; i < sizeof dims / sizeof *dims; i++)
        if (dims[i].va != dims[i].vb)
            return qd_errf(e, QD_EINPUT, "%s and %s hold different models: config_json field '%s' is %d vs %d", path_a,
                           path_b, dims[i].name, dims[i].va, dims[i].vb);
    if (qd_h5in_T(fa) != qd_h5in_T(fb))
        return qd_errf(e, QD_EINPUT, "%s and %s hold runs of different lengths: /input_ids has %d vs %d tokens", path_a,
                       path_b, qd_h5in_T(fa), qd_h5in_T(fb));
    return QD_OK;
}

static int compare_one(qd_report *r, const qd_tolerances *tol, qd_h5in *fa, const char *ga, qd_h5in *fb,
                       const char *gb, int layer, int tap, double *prev, qd_err *e) {
    const char *name = layer < 0 ? qd_model_tap_name(tap) : qd_layer_tap_name(tap);
    char pa[256], pb[256];
    qd_h5_tap_path(pa, sizeof pa, ga, layer, name);
    qd_h5_tap_path(pb, sizeof pb, gb, layer, name);
    int ha = qd_h5in_has(fa, pa), hb = qd_h5in_has(fb, pb);
    if (ha && !hb) add_only(r->only_a, &r->n_only_a, name);
    if (hb && !ha) add_only(r->only_b, &r->n_only_b, name);
    if (!ha || !hb) return QD_OK;
    float *da = NULL, *db = NULL; /* (shape), the same in both: each is checked against the model */
    int nd = 0;
    int64_t shape[3];
    int rc = qd_h5in_read_tap(fa, ga, layer, tap, &da, &nd, shape, e);
    if (!rc) rc = qd_h5in_read_tap(fb, gb, layer, tap, &db, &nd, shape, e);
    if (!rc) add_row(r, tol, 0, layer, tap, QD_MODE_FREE, db, da, nd, shape, prev);
    free(da);
    free(db);
    return rc;
}

int qd_compare_files(const char *path_a, const char *group_a, const char *path_b, const char *group_b,
                     const qd_tolerances *tol, qd_report *r, qd_err *e) {
    char ga[128], gb[128], prec_a[16], prec_b[16];
    int rc = QD_OK;
    qd_h5in *fa = qd_h5in_open(path_a, e);
    if (!fa) return e->code;
    qd_h5in *fb = qd_h5in_open(path_b, e);
    if (!fb) {
        qd_h5in_close(fa);
        return e->code;
    }
    if ((rc = pick_group(fa, path_a, group_a, ga, sizeof ga, e)) ||
        (rc = pick_group(fb, path_b, group_b, gb, sizeof gb, e)) ||
        (rc = group_precision(fa, path_a, ga, prec_a, sizeof prec_a, e)) ||
        (rc = group_precision(fb, path_b, gb, prec_b, sizeof prec_b, e)) || (rc = same_model(fa, path_a, fb, path_b, e)))
        goto out;
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
    double prev[QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS];
    for (int i = 0; i < QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS; i++) prev[i] = NAN;
    rc = compare_one(r, tol, fa, ga, fb, gb, -1, QD_TAP_EMBED, prev, e);
    for (int l = 0; l < L && !rc; l++)
        for (int t = 0; t < QD_NUM_LAYER_TAPS && !rc; t++) rc = compare_one(r, tol, fa, ga, fb, gb, l, t, prev, e);
    if (!rc) rc = compare_one(r, tol, fa, ga, fb, gb, -1, QD_TAP_FINAL_NORM, prev, e);
    if (!rc) rc = compare_one(r, tol, fa, ga, fb, gb, -1, QD_TAP_LOGITS, prev, e);
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
