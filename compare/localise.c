/* localise.c: where inside a tap the error lives (qd_localise.h), and the comparator's call at its first
 * divergence (qd_report_localise, qd_compare.h). */
#include "qd_localise.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qd_compare.h"
#include "qd_config.h"
#include "qd_h5read.h"

// ----------------------------------------------------------------------------
// the view and the scratch

/* The view (T, H, D) of a tap: absent axes are 1 and flagged off. */
typedef struct {
    int ndim;
    int64_t shape[3];
    int64_t len[QD_NUM_AXES]; /* 0: no such axis */
    int64_t T, H, D;          /* loop extents; 1 where an axis is absent */
} view;

static int make_view(int ndim, const int64_t *shape, int head_dim, view *v) {
    if (ndim < 1 || ndim > 3) return -1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) return -1;
    memset(v, 0, sizeof *v);
    v->ndim = ndim;
    for (int i = 0; i < ndim; i++) v->shape[i] = shape[i];
    if (ndim == 2 && head_dim > 0 && shape[1] > 0 && shape[1] % head_dim == 0) {
        v->ndim = 3;
        v->shape[1] = shape[1] / head_dim;
        v->shape[2] = head_dim;
    }
    v->T = v->H = v->D = 1;
    if (v->ndim == 1) {
        v->D = v->len[QD_AXIS_CHANNEL] = v->shape[0];
    } else {
        v->T = v->len[QD_AXIS_TOKEN] = v->shape[0];
        v->D = v->len[QD_AXIS_CHANNEL] = v->shape[v->ndim - 1];
        if (v->ndim == 3) v->H = v->len[QD_AXIS_HEAD] = v->shape[1];
    }
    return 0;
}

/* One axis' accumulators, carved out of the scratch. */
typedef struct {
    int64_t N;
    double *e;      /* (N) error energy over finite pairs */
    double *r;      /* (N) reference energy over the same pairs */
    int64_t *n;     /* (N) finite pairs */
    int64_t *nf;    /* (N) non-finite mismatches */
    int64_t *order; /* (N) indices, sorted as needed */
    double *pre;    /* (N + 1) scratch: relative error per index */
    double *suf;    /* (N + 1) scratch: weight of ranks >= j, then the hot marks */
} axis_acc;

#define AXIS_BYTES(N) \
    ((size_t)(N) * (2 * sizeof(double) + 3 * sizeof(int64_t)) + 2 * ((size_t)(N) + 1) * sizeof(double))

size_t qd_localise_scratch_size(int ndim, const int64_t *shape, int head_dim) {
    view v;
    if (make_view(ndim, shape, head_dim, &v)) return 0;
    size_t bytes = 0;
    for (int a = 0; a < QD_NUM_AXES; a++) bytes += AXIS_BYTES(v.len[a]);
    return bytes;
}

static void carve(axis_acc *a, int64_t N, char **p) {
    a->N = N;
    size_t n = (size_t)N;
    /* doubles first, then the int64 arrays: every piece stays 8-byte aligned */
    a->e = (double *)*p, *p += n * sizeof(double);
    a->r = (double *)*p, *p += n * sizeof(double);
    a->pre = (double *)*p, *p += (n + 1) * sizeof(double);
    a->suf = (double *)*p, *p += (n + 1) * sizeof(double);
    a->n = (int64_t *)*p, *p += n * sizeof(int64_t);
    a->nf = (int64_t *)*p, *p += n * sizeof(int64_t);
    a->order = (int64_t *)*p, *p += n * sizeof(int64_t);
    memset(a->e, 0, n * sizeof(double));
    memset(a->r, 0, n * sizeof(double));
    memset(a->n, 0, n * sizeof(int64_t));
    memset(a->nf, 0, n * sizeof(int64_t));
}

/* What the shares count: the energy, or the mismatches when there are any. */
static double weight(const axis_acc *a, int by_nf, int64_t i) { return by_nf ? (double)a->nf[i] : a->e[i]; }

// ----------------------------------------------------------------------------
// ordering (heapsort with a context: qsort has none, and a static would make this non-reentrant)

typedef int (*before_fn)(const axis_acc *a, int by_nf, int64_t x, int64_t y);

/* heavier first; the lower index on equal weights */
static int heavier(const axis_acc *a, int by_nf, int64_t x, int64_t y) {
    double wx = weight(a, by_nf, x), wy = weight(a, by_nf, y);
    return wx != wy ? wx > wy : x < y;
}

static int lower_index(const axis_acc *a, int by_nf, int64_t x, int64_t y) {
    (void)a, (void)by_nf;
    return x < y;
}

static void sift(int64_t *v, int64_t root, int64_t n, before_fn before, const axis_acc *a, int by_nf) {
    for (;;) {
        int64_t child = 2 * root + 1;
        if (child >= n) return;
        /* a max-heap of "comes later" so that the array ends up in "before" order */
        if (child + 1 < n && before(a, by_nf, v[child], v[child + 1])) child++;
        if (!before(a, by_nf, v[root], v[child])) return;
        int64_t t = v[root];
        v[root] = v[child];
        v[child] = t;
        root = child;
    }
}

static void sort_indices(int64_t *v, int64_t n, before_fn before, const axis_acc *a, int by_nf) {
    for (int64_t i = n / 2 - 1; i >= 0; i--) sift(v, i, n, before, a, by_nf);
    for (int64_t end = n - 1; end > 0; end--) {
        int64_t t = v[0];
        v[0] = v[end];
        v[end] = t;
        sift(v, 0, end, before, a, by_nf);
    }
}

// ----------------------------------------------------------------------------
// the set that carries most

/* weight per index inside over outside; INFINITY when the outside is clean */
static double contrast_of(double in, double out, int64_t k, int64_t N) {
    if (out <= 0) return INFINITY;
    return (in / (double)k) / (out / (double)(N - k));
}

/* The rule of qd_localise.h for a set of k indices holding `in` of the axis' W, the rest `out` (summed
 * apart, so that a tiny remainder is not lost to cancellation). Fills share and contrast. */
static int carries_most(double in, double out, double W, int64_t k, int64_t N, qd_where_set *s) {
    s->size = k;
    s->share = in / W;
    s->contrast = contrast_of(in, out, k, N);
    return k >= 1 && k < N && s->share >= QD_WHERE_SHARE && s->contrast >= QD_WHERE_CONTRAST;
}

/* at most half the axis, unless the k ascending members m[] form one run */
static int small_or_range(const int64_t *m, int64_t k, int64_t N) {
    return (double)k <= QD_WHERE_MAX_FRACTION * (double)N || m[k - 1] - m[0] + 1 == k;
}

/* a's relative error at i: rms error / rms reference; INFINITY where the reference is zero and the error
   is not */
static double rel_error(const axis_acc *a, int64_t i) {
    if (!(a->e[i] > 0)) return 0;
    return a->r[i] > 0 ? sqrt(a->e[i] / a->r[i]) : INFINITY;
}

static int rel_lower(const axis_acc *a, int by_nf, int64_t x, int64_t y) {
    (void)by_nf;
    double rx = a->pre[x], ry = a->pre[y];
    return rx != ry ? rx < ry : x < y;
}

/* 1 when every member of core (k indices) is hot. */
static int holds(const unsigned char *hot, const int64_t *core, int64_t k) {
    for (int64_t i = 0; i < k; i++)
        if (!hot[core[i]]) return 0;
    return 1;
}

// ----------------------------------------------------------------------------
// words

static const char *noun(int axis, int plural, int range) {
    static const char *const one[QD_NUM_AXES] = {"token", "head", "channel"};
    static const char *const many[QD_NUM_AXES] = {"tokens", "heads", "channels"};
    if (range && axis == QD_AXIS_TOKEN) return "positions";
    return plural ? many[axis] : one[axis];
}

const char *qd_where_axis_name(int axis) { return axis >= 0 && axis < QD_NUM_AXES ? noun(axis, 0, 0) : "?"; }

/* A share as a percentage: "91", "100", "0.52". */
static void pct(double share, char *buf, size_t n) {
    double p = 100.0 * share;
    if (p >= 1 || p == 0) snprintf(buf, n, "%.0f", p);
    else snprintf(buf, n, "%.2g", p);
}

static void append(char *buf, size_t n, const char *fmt, const char *s) {
    size_t used = strlen(buf);
    if (used < n) snprintf(buf + used, n - used, fmt, s);
}

/* Writes the set of the k indices in m[] (ascending) into s: members, range, text. heavy: its n_heavy (<= 3)
 * heaviest members, named when the set is too scattered to spell out. */
static void describe(qd_where_set *s, int axis, int64_t N, const int64_t *m, int64_t k, const int64_t *heavy,
                     int n_heavy) {
    s->lo = s->hi = -1;
    s->n_index = (int)(k < QD_WHERE_TOP ? k : QD_WHERE_TOP);
    for (int i = 0; i < s->n_index; i++) s->index[i] = m[i];
    /* the runs: a run of >= 3 is one item "lo..hi", shorter ones are one item per member */
    int items = 0, ranges = 0;
    for (int64_t i = 0; i < k;) {
        int64_t j = i;
        while (j + 1 < k && m[j + 1] == m[j] + 1) j++;
        int64_t len = j - i + 1;
        items += len >= 3 ? 1 : (int)len;
        ranges += len >= 3;
        i = j + 1;
    }
    char *t = s->text;
    const size_t n = sizeof s->text;
    t[0] = '\0';
    if (m[k - 1] - m[0] + 1 == k) {
        s->lo = m[0];
        s->hi = m[k - 1];
    }
    if (k == 1) {
        snprintf(t, n, "%s %lld", noun(axis, 0, 0), (long long)m[0]);
    } else if (s->lo >= 0 && k >= 3 && (s->lo == 0 || s->hi == N - 1)) {
        snprintf(t, n, "%s %s %lld", noun(axis, 1, 1),
                 s->lo == 0 ? "<=" : ">=", (long long)(s->lo == 0 ? s->hi : s->lo));
    } else if (items <= 5) {
        snprintf(t, n, "%s ", noun(axis, 1, ranges > 0));
        int item = 0;
        for (int64_t i = 0; i < k;) {
            int64_t j = i;
            while (j + 1 < k && m[j + 1] == m[j] + 1) j++;
            int64_t len = j - i + 1;
            for (int64_t q = i; q <= j; q++) {
                char num[48];
                if (len >= 3) snprintf(num, sizeof num, "%lld..%lld", (long long)m[i], (long long)m[j]);
                else snprintf(num, sizeof num, "%lld", (long long)m[q]);
                item++;
                append(t, n, item == 1 ? "%s" : item == items ? " and %s" : ", %s", num);
                if (len >= 3) break;
            }
            i = j + 1;
        }
    } else { /* scattered: its size and the heaviest three */
        snprintf(t, n, "%lld %s (", (long long)k, noun(axis, 1, 0));
        for (int i = 0; i < n_heavy; i++) {
            char num[32];
            snprintf(num, sizeof num, "%lld", (long long)heavy[i]);
            append(t, n, i == 0 ? "%s" : ", %s", num);
        }
        append(t, n, "%s", ", ...)");
    }
}

/* The axis' set and peak (qd_localise.h). order[] holds the indices heaviest first on entry; pre[], suf[]
 * and order[] are scratch. W: the axis' total weight. */
static void find_set(qd_where_axis *x, int axis, axis_acc *a, int by_nf, double W) {
    const int64_t N = a->N;
    if (N < 2 || !(W > 0)) return;

    /* the core: the fewest heaviest reaching the share; suf[j] is the weight of ranks >= j, summed from the
       lightest up */
    a->suf[N] = 0;
    for (int64_t j = N - 1; j >= 0; j--) a->suf[j] = a->suf[j + 1] + weight(a, by_nf, a->order[j]);
    int64_t kc = 0;
    double in = 0;
    while (kc < N && in < QD_WHERE_SHARE * W) in += weight(a, by_nf, a->order[kc++]);
    qd_where_set core = {0};
    int core_ok = carries_most(in, a->suf[kc], W, kc, N, &core) && (double)kc <= QD_WHERE_MAX_FRACTION * (double)N;

    /* the hot set, marked in a byte per index (carved from suf[], free again) */
    unsigned char *hot = (unsigned char *)a->suf;
    if (by_nf) {
        for (int64_t i = 0; i < N; i++) hot[i] = a->nf[i] > 0;
    } else {
        int64_t *by_rel = a->n; /* n[] is no longer needed once the top entries hold their rms figures */
        for (int64_t i = 0; i < N; i++) a->pre[i] = rel_error(a, i), by_rel[i] = i;
        sort_indices(by_rel, N, rel_lower, a, by_nf);
        double cut = INFINITY; /* the first gap of >= 12x going up from the 1/8 quantile */
        for (int64_t j = (N - 1) / 8; j + 1 < N; j++) {
            const double lo = a->pre[by_rel[j]], hi = a->pre[by_rel[j + 1]];
            if (lo == 0 ? hi > 0 : hi >= QD_WHERE_CONTRAST * lo) {
                cut = hi;
                break;
            }
        }
        for (int64_t i = 0; i < N; i++) hot[i] = a->pre[i] >= cut;
    }
    int64_t kh = 0;
    double hin = 0, hout = 0;
    for (int64_t i = 0; i < N; i++) {
        if (hot[i]) kh++, hin += weight(a, by_nf, i);
        else hout += weight(a, by_nf, i);
    }
    /* members ascending: the hot set from the marks, the core from order[] (sorted in place last) */
    int64_t *m = a->n;
    for (int64_t i = 0, k = 0; i < N; i++)
        if (hot[i]) m[k++] = i;
    qd_where_set hs = {0};
    int hot_ok = kh > 0 && carries_most(hin, hout, W, kh, N, &hs) && small_or_range(m, kh, N) &&
                 (!core_ok || holds(hot, a->order, kc));
    int64_t heavy[3]; /* the set's heaviest members, from order[] while it is still heaviest first */
    int n_heavy = 0;
    for (int64_t j = 0; j < N && n_heavy < 3; j++)
        if (hot_ok ? hot[a->order[j]] : j < kc) heavy[n_heavy++] = a->order[j];
    if (hot_ok) {
        x->set = hs;
        describe(&x->set, axis, N, m, kh, heavy, n_heavy);
        if (core_ok && kc <= 4 && kc < kh) {
            sort_indices(a->order, kc, lower_index, a, by_nf);
            x->peak = core;
            describe(&x->peak, axis, N, a->order, kc, heavy, 0);
        }
    } else if (core_ok) {
        sort_indices(a->order, kc, lower_index, a, by_nf);
        x->set = core;
        describe(&x->set, axis, N, a->order, kc, heavy, n_heavy);
    }
}

static void summarise(qd_where *w) {
    static const int order[QD_NUM_AXES] = {QD_AXIS_HEAD, QD_AXIS_TOKEN, QD_AXIS_CHANNEL};
    char *s = w->summary;
    const size_t n = sizeof w->summary;
    s[0] = '\0';
    if (w->nonfinite == 0 && !(w->energy > 0)) {
        snprintf(s, n, "no difference between the sides");
        return;
    }
    if (w->by_nonfinite) snprintf(s, n, "%lld non-finite mismatches", (long long)w->nonfinite);
    int clauses = 0;
    for (int i = 0; i < QD_NUM_AXES; i++) {
        const qd_where_axis *x = &w->axis[order[i]];
        if (x->set.size == 0) continue;
        char p[32], clause[300];
        pct(x->set.share, p, sizeof p);
        const char *verb = x->set.size == 1 ? "carries" : "carry";
        if (w->by_nonfinite)
            snprintf(clause, sizeof clause, "%s%s %s %s %% of them", clauses ? "; " : ": ", x->set.text, verb, p);
        else
            snprintf(clause, sizeof clause, "%s%s %s %s %%%s", clauses ? "; " : "", x->set.text, verb, p,
                     clauses ? "" : " of the error");
        append(s, n, "%s", clause);
        if (x->peak.size) {
            char pp[32], peak[160];
            pct(x->peak.share, pp, sizeof pp);
            snprintf(peak, sizeof peak, " (%s alone %s %%)", x->peak.text, pp);
            append(s, n, "%s", peak);
        }
        clauses++;
    }
    if (clauses) return;
    /* nowhere concentrated: name the axes it is spread over (an axis of one index says nothing) */
    const char *names[QD_NUM_AXES];
    int k = 0;
    static const int natural[QD_NUM_AXES] = {QD_AXIS_TOKEN, QD_AXIS_HEAD, QD_AXIS_CHANNEL};
    for (int i = 0; i < QD_NUM_AXES; i++)
        if (w->axis[natural[i]].len >= 2) names[k++] = noun(natural[i], 1, 0);
    append(s, n, "%s", w->by_nonfinite ? ", " : "");
    if (k == 0) {
        append(s, n, "%s", "in a single element");
        return;
    }
    append(s, n, "%s", "spread over all ");
    for (int i = 0; i < k; i++) append(s, n, i == 0 ? "%s" : i == k - 1 ? " and %s" : ", %s", names[i]);
}

int qd_where_top_line(const qd_where *w, char *buf, size_t n) {
    static const int order[QD_NUM_AXES] = {QD_AXIS_HEAD, QD_AXIS_TOKEN, QD_AXIS_CHANNEL};
    buf[0] = '\0';
    for (int i = 0; i < QD_NUM_AXES; i++) {
        const qd_where_axis *x = &w->axis[order[i]];
        if (x->n_top == 0) continue;
        const qd_where_entry *t = &x->top[0];
        char p[32], item[200];
        pct(t->share, p, sizeof p);
        if (w->by_nonfinite)
            snprintf(item, sizeof item, "%s %lld: %lld non-finite (%s %%)", noun(order[i], 0, 0), (long long)t->index,
                     (long long)t->nonfinite, p);
        else
            snprintf(item, sizeof item, "%s %lld %s %% (rms error %.2g vs %.2g)", noun(order[i], 0, 0),
                     (long long)t->index, p, t->rms_err, t->rms_ref);
        append(buf, n, strlen(buf) ? "; %s" : "%s", item);
    }
    return (int)strlen(buf);
}

// ----------------------------------------------------------------------------
// the breakdown

/* 0 finite, 1 NaN, 2 +Inf, 3 -Inf */
static int fclass(float x) { return isnan(x) ? 1 : isinf(x) ? (x > 0 ? 2 : 3) : 0; }

int qd_localise(const float *test, const float *ref, int ndim, const int64_t *shape, int head_dim, void *scratch,
                size_t scratch_bytes, qd_where *w) {
    memset(w, 0, sizeof *w);
    view v;
    if (make_view(ndim, shape, head_dim, &v)) return -1;
    if (scratch_bytes < qd_localise_scratch_size(ndim, shape, head_dim) || (!scratch && scratch_bytes)) return -1;
    axis_acc acc[QD_NUM_AXES];
    char *p = scratch;
    for (int a = 0; a < QD_NUM_AXES; a++) carve(&acc[a], v.len[a], &p);
    /* absent axes accumulate into nothing: index 0 of a zero-length axis is never touched */
    const int has_t = v.len[QD_AXIS_TOKEN] > 0, has_h = v.len[QD_AXIS_HEAD] > 0;

    double energy = 0, ref_energy = 0;
    int64_t nonfinite = 0;
    size_t idx = 0;
    for (int64_t t = 0; t < v.T; t++)
        for (int64_t h = 0; h < v.H; h++)
            for (int64_t c = 0; c < v.D; c++, idx++) {
                const float x = test[idx], y = ref[idx];
                const int cx = fclass(x), cy = fclass(y);
                if (cx == 0 && cy == 0) {
                    const double d = (double)x - (double)y, d2 = d * d, r2 = (double)y * (double)y;
                    energy += d2;
                    ref_energy += r2;
                    if (has_t) acc[QD_AXIS_TOKEN].e[t] += d2, acc[QD_AXIS_TOKEN].r[t] += r2, acc[QD_AXIS_TOKEN].n[t]++;
                    if (has_h) acc[QD_AXIS_HEAD].e[h] += d2, acc[QD_AXIS_HEAD].r[h] += r2, acc[QD_AXIS_HEAD].n[h]++;
                    acc[QD_AXIS_CHANNEL].e[c] += d2, acc[QD_AXIS_CHANNEL].r[c] += r2, acc[QD_AXIS_CHANNEL].n[c]++;
                } else if (cx != cy) {
                    nonfinite++;
                    if (has_t) acc[QD_AXIS_TOKEN].nf[t]++;
                    if (has_h) acc[QD_AXIS_HEAD].nf[h]++;
                    acc[QD_AXIS_CHANNEL].nf[c]++;
                }
            }

    w->valid = 1;
    w->ndim = v.ndim;
    memcpy(w->shape, v.shape, sizeof w->shape);
    w->energy = energy;
    w->ref_energy = ref_energy;
    w->nonfinite = nonfinite;
    w->by_nonfinite = nonfinite > 0;
    const int by_nf = w->by_nonfinite;

    for (int ax = 0; ax < QD_NUM_AXES; ax++) {
        axis_acc *a = &acc[ax];
        qd_where_axis *x = &w->axis[ax];
        x->len = a->N;
        x->set.lo = x->set.hi = x->peak.lo = x->peak.hi = -1;
        if (a->N == 0) continue;
        /* the axis' total in index order: the same sum for every axis up to rounding, so each axis' shares
           add up to 1 */
        double W = 0;
        for (int64_t i = 0; i < a->N; i++) W += weight(a, by_nf, i);
        for (int64_t i = 0; i < a->N; i++) a->order[i] = i;
        sort_indices(a->order, a->N, heavier, a, by_nf);
        for (int64_t i = 0; i < a->N && x->n_top < QD_WHERE_TOP && W > 0; i++) {
            int64_t j = a->order[i];
            if (!(weight(a, by_nf, j) > 0)) break;
            qd_where_entry *en = &x->top[x->n_top++];
            en->index = j;
            en->share = weight(a, by_nf, j) / W;
            en->rms_err = a->n[j] ? sqrt(a->e[j] / (double)a->n[j]) : 0;
            en->rms_ref = a->n[j] ? sqrt(a->r[j] / (double)a->n[j]) : 0;
            en->nonfinite = a->nf[j];
        }
        find_set(x, ax, a, by_nf, W);
    }
    summarise(w);
    return 0;
}

// ----------------------------------------------------------------------------
// the comparator's side (qd_compare.h)

int qd_report_localise(qd_report *r, const qd_tap_row *row, const float *test, const float *ref, int ndim,
                       const int64_t *shape, qd_err *e) {
    int head_dim = 0;
    /* the (T, NH*HD) taps that are per head in meaning; the 3-D ones carry their heads already */
    if (row->id.pos == QD_POS_LAYER && ndim == 2 &&
        (row->id.tap == QD_TAP_Q_PROJ || row->id.tap == QD_TAP_K_PROJ || row->id.tap == QD_TAP_V_PROJ ||
         row->id.tap == QD_TAP_ATTN))
        head_dim = r->head_dim;
    memset(&r->where, 0, sizeof r->where);
    size_t bytes = qd_localise_scratch_size(ndim, shape, head_dim);
    void *scratch = qd_alloc(bytes, e); /* O(T + H + C) */
    if (!scratch) return QD_ERUNTIME;
    /* a shape the metrics accepted is one this accepts; should it not be, the breakdown stays invalid */
    qd_localise(test, ref, ndim, shape, head_dim, scratch, bytes, &r->where);
    free(scratch);
    return QD_OK;
}

int qd_compare_dump_head_dim(struct qd_h5in *f) {
    /* config.json is a few KiB; 1 MiB leaves room for any that carries more than the model's dimensions */
    const size_t cap = 1 << 20;
    qd_err e = {0};
    char *text = qd_alloc(cap, &e);
    if (!text) return 0;
    qd_config c;
    int hd = 0;
    if (qd_h5in_attr_string(f, "/", "config_json", text, cap, &e) == QD_OK &&
        qd_config_parse(text, "config_json", &c, &e) == QD_OK)
        hd = c.head_dim;
    free(text);
    return hd;
}
