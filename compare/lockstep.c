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

const char *qd_row_tap_name(const qd_tap_row *row) { return qd_tap_id_name(row->id); }

int qd_report_diverged(const qd_report *r) { return r->first_div >= 0; }

static void add_only(char (*list)[24], int *n, qd_tap_id id) {
    const char *name = qd_tap_id_name(id);
    for (int i = 0; i < *n; i++)
        if (strcmp(list[i], name) == 0) return;
    if (*n < QD_NUM_TAP_KINDS) snprintf(list[(*n)++], 24, "%s", name);
}

/* Compares one tap and appends its row. prev: the growth-check memory of this mode, indexed by
 * qd_tap_id_kind. */
static int add_row(qd_report *r, const qd_tolerances *tol, int step, qd_tap_id id, qd_mode mode, const float *test,
                   const float *ref, int ndim, const int64_t *shape, double *prev, qd_err *e) {
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 256;
        qd_tap_row *rows = qd_resize(r->rows, (size_t)cap * sizeof *r->rows, e);
        if (!rows) return QD_ERUNTIME;
        r->rows = rows;
        r->cap = cap;
    }
    qd_tap_row *row = &r->rows[r->n];
    memset(row, 0, sizeof *row);
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

static void reset_prev(double prev[2][QD_NUM_TAP_KINDS]) {
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < QD_NUM_TAP_KINDS; i++) prev[m][i] = NAN;
}

// ----------------------------------------------------------------------------
// the dump: which tensors are written, and the window around the first divergence

typedef struct {
    const char *group; /* backend group name */
    qd_tap_id id;
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
static int dump_tap(dump_ctl *dc, const char *group, qd_tap_id id, int pos, const qd_tapbuf *t, qd_err *e) {
    if (!dc->d || !tap_selected(dc->globs, qd_tap_id_name(id))) return QD_OK;
    int write_now = dc->window < 0 ||
                    (dc->diverged_pos >= 0 && pos >= dc->diverged_pos - dc->window &&
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
    float *h, *h2;     /* (T, C) hidden state in and out */
    float *logits;     /* (T, V) */
} side;

static int side_init(side *s, qd_backend *be, const char *group, size_t hidden, size_t logits, qd_err *e) {
    s->be = be;
    s->group = group;
    qd_tapstore_init(&s->store);
    s->h = qd_alloc(hidden * sizeof(float), e);
    s->h2 = s->h ? qd_alloc(hidden * sizeof(float), e) : NULL;
    s->logits = s->h2 ? qd_alloc(logits * sizeof(float), e) : NULL;
    return s->logits ? QD_OK : QD_ERUNTIME;
}

static void side_free(side *s) {
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

/* Compares the taps both sides hold of one position. */
static int compare_taps(qd_report *r, const qd_tolerances *tol, int step, tap_list taps, const side *a,
                        const side *b, qd_mode mode, double *prev, qd_err *e) {
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
        int rc = add_row(r, tol, step, id, mode, tb->data, ta->data, ta->ndim, ta->shape, prev, e);
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

    r->head_dim = c->head_dim;
    side sa = {0}, sb = {0}, si = {0};
    dump_ctl dc = {.d = o->dump, .globs = o->dump_taps, .window = o->dump_window, .diverged_pos = -1};
    if ((rc = side_init(&sa, a, a->name, (size_t)T * C, (size_t)T * V, e)) ||
        (rc = side_init(&sb, b, b->name, (size_t)T * C, (size_t)T * V, e)) ||
        (b_iso && (rc = side_init(&si, b_iso, iso_group, (size_t)T * C, (size_t)T * V, e))))
        goto done;

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

    double prev[2][QD_NUM_TAP_KINDS];

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
        if ((rc = compare_taps(r, o->tol, step, embed_taps(), &sa, &sb, QD_MODE_FREE, prev[0], e))) goto done;
        if (dcs && ((rc = dump_side(dcs, &sa, embed_taps(), 0, e)) ||
                    (rc = dump_side(dcs, &sb, embed_taps(), 0, e)) ||
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
            const tap_list lt = layer_taps(l);
            if ((rc = compare_taps(r, o->tol, step, lt, &sa, &sb, QD_MODE_FREE, prev[0], e)) ||
                (b_iso && (rc = compare_taps(r, o->tol, step, lt, &sa, &si, QD_MODE_ISOLATED, prev[1], e))))
                goto done;
            if (dcs && ((rc = dump_side(dcs, &sa, lt, l + 1, e)) || (rc = dump_side(dcs, &sb, lt, l + 1, e)) ||
                        (b_iso && (rc = dump_side(dcs, &si, lt, l + 1, e))) ||
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
        if ((rc = compare_taps(r, o->tol, step, head_taps(), &sa, &sb, QD_MODE_FREE, prev[0], e)) ||
            (b_iso && (rc = compare_taps(r, o->tol, step, head_taps(), &sa, &si, QD_MODE_ISOLATED, prev[1], e))))
            goto done;
        if (dcs && ((rc = dump_side(dcs, &sa, head_taps(), L + 1, e)) ||
                    (rc = dump_side(dcs, &sb, head_taps(), L + 1, e)) ||
                    (b_iso && (rc = dump_side(dcs, &si, head_taps(), L + 1, e))) ||
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

/* The only backend group of a file, when the caller named none. */
static int only_group(const char *path, char *out, size_t n, qd_err *e) {
    qd_h5in *f = qd_h5in_open(path, e);
    if (!f) return e->code;
    char names[512] = "";
    int count = qd_h5in_backends(f, names, sizeof names);
    qd_h5in_close(f);
    if (count == 1) {
        snprintf(out, n, "%s", names);
        return QD_OK;
    }
    if (count == 0) return qd_errf(e, QD_EINPUT, "%s: no backend group (a group with a 'precision' attribute)", path);
    return qd_errf(e, QD_EINPUT, "%s: several backend groups (%s): name one as %s:GROUP", path, names, path);
}

static int compare_one(qd_report *r, const qd_tolerances *tol, qd_h5in *fa, const char *ga, qd_h5in *fb,
                       const char *gb, qd_tap_id id, double *prev, qd_err *e) {
    const char *name = qd_tap_id_name(id);
    char pa[256], pb[256];
    qd_h5_tap_path(pa, sizeof pa, ga, id.layer, name);
    qd_h5_tap_path(pb, sizeof pb, gb, id.layer, name);
    int ha = qd_h5in_has(fa, pa), hb = qd_h5in_has(fb, pb);
    if (ha && !hb) add_only(r->only_a, &r->n_only_a, id);
    if (hb && !ha) add_only(r->only_b, &r->n_only_b, id);
    if (!ha || !hb) return QD_OK;
    float *da = NULL, *db = NULL;
    int nda = 0, ndb = 0;
    int64_t sa[3], sb[3];
    int rc = qd_h5in_read_f32(fa, pa, &da, &nda, sa, e);
    if (!rc) rc = qd_h5in_read_f32(fb, pb, &db, &ndb, sb, e);
    if (!rc) {
        int same = nda == ndb;
        for (int d = 0; same && d < nda; d++) same = sa[d] == sb[d];
        if (!same)
            rc = qd_errf(e, QD_EINPUT, "tap '%s' of layer %d: shapes differ between the two files", name, id.layer);
        else
            rc = add_row(r, tol, 0, id, QD_MODE_FREE, db, da, nda, sa, prev, e);
    }
    free(da);
    free(db);
    return rc;
}

int qd_compare_files(const char *path_a, const char *group_a, const char *path_b, const char *group_b,
                     const qd_tolerances *tol, qd_report *r, qd_err *e) {
    char ga[128], gb[128];
    int rc = QD_OK;
    if (group_a) snprintf(ga, sizeof ga, "%s", group_a);
    else if ((rc = only_group(path_a, ga, sizeof ga, e))) return rc;
    if (group_b) snprintf(gb, sizeof gb, "%s", group_b);
    else if ((rc = only_group(path_b, gb, sizeof gb, e))) return rc;

    qd_h5in *fa = qd_h5in_open(path_a, e);
    if (!fa) return e->code;
    qd_h5in *fb = qd_h5in_open(path_b, e);
    if (!fb) {
        qd_h5in_close(fa);
        return e->code;
    }
    char prec_a[16], prec_b[16], pth[160];
    snprintf(pth, sizeof pth, "/%s", ga);
    if (!qd_h5in_has(fa, pth)) {
        rc = qd_errf(e, QD_EINPUT, "%s: no group '%s'", path_a, ga);
        goto out;
    }
    if ((rc = qd_h5in_attr_string(fa, pth, "precision", prec_a, sizeof prec_a, e))) goto out;
    snprintf(pth, sizeof pth, "/%s", gb);
    if (!qd_h5in_has(fb, pth)) {
        rc = qd_errf(e, QD_EINPUT, "%s: no group '%s'", path_b, gb);
        goto out;
    }
    if ((rc = qd_h5in_attr_string(fb, pth, "precision", prec_b, sizeof prec_b, e))) goto out;

    qd_tolerances deflt;
    int own_tol = tol == NULL;
    if (own_tol) {
        if ((rc = qd_tolerances_default(&deflt, prec_b, prec_a, e))) goto out;
        tol = &deflt;
    }
    int L = 0;
    for (;; L++) {
        char pa[160], pb[160];
        snprintf(pa, sizeof pa, "/%s/layers/%03d", ga, L);
        snprintf(pb, sizeof pb, "/%s/layers/%03d", gb, L);
        if (!qd_h5in_has(fa, pa) && !qd_h5in_has(fb, pb)) break;
    }
    char name_a[64], name_b[64];
    snprintf(name_a, sizeof name_a, "%.60s", ga);
    snprintf(name_b, sizeof name_b, "%.60s", gb);
    if (strcmp(ga, gb) == 0) { /* same group name in both files: say which file */
        snprintf(name_a, sizeof name_a, "A:%.58s", ga);
        snprintf(name_b, sizeof name_b, "B:%.58s", gb);
    }
    qd_report_init(r, name_a, prec_a, name_b, prec_b, L, QD_MODE_FREE, &tol->blowup);
    r->head_dim = qd_compare_dump_head_dim(fa);
    double prev[QD_NUM_TAP_KINDS];
    for (int i = 0; i < QD_NUM_TAP_KINDS; i++) prev[i] = NAN;
    rc = compare_one(r, tol, fa, ga, fb, gb, qd_tap_model(QD_TAP_EMBED), prev, e);
    for (int l = 0; l < L && !rc; l++)
        for (int t = 0; t < QD_NUM_LAYER_TAPS && !rc; t++)
            rc = compare_one(r, tol, fa, ga, fb, gb, qd_tap_layer(l, t), prev, e);
    if (!rc) rc = compare_one(r, tol, fa, ga, fb, gb, qd_tap_model(QD_TAP_FINAL_NORM), prev, e);
    if (!rc) rc = compare_one(r, tol, fa, ga, fb, gb, qd_tap_model(QD_TAP_LOGITS), prev, e);
    if (own_tol) qd_tolerances_free(&deflt);
out:
    qd_h5in_close(fa);
    qd_h5in_close(fb);
    return rc;
}
