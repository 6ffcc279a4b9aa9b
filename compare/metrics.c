/* metrics.c: per-tap error metrics and the verdict (qd_metrics.h).
 *
 * qd_metrics_compute reads each element pair once and keeps only running sums and maxima, in double:
 * logits are (T, V) = 2048 x 151936 = 311M elements, 2.5 GB for the two sides, so a second pass costs
 * as much as the first and an allocation the size of a tap is out of the question. The pass goes in
 * blocks of BLOCK elements: a branch-free kernel with independent lanes handles a block whose elements
 * are all finite (the common case), and a block holding a NaN or Inf is redone one element at a time.
 * Measured: ~3.3 ns per element pair on one core of the build machine (an AMD EPYC), about 1 s for the
 * logits above; the plain element loop took 5.2 ns.
 *
 * max_rel is the one metric a single pass cannot get directly: its floor (1e-6 * max|ref|) is known only
 * at the end. The pass keeps two running figures against a floor known so far (never above the final
 * one): elements below it are certainly below the final floor, so their largest error (small_abs) is
 * divided by the final floor at the end; for the others the largest |d|/|ref| and its |ref| are kept.
 * If that |ref| is still above the final floor the answer is exact (every other element's true value
 * is at most its |d|/|ref|); otherwise (a near-zero element seen before the tap's largest reference
 * value raised the floor above it) max_rel alone is recomputed in a second pass. See test_metrics'
 * max_rel_floor_raised_late. */
#include "qd_metrics.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REL_FLOOR_FRAC 1e-6 /* rel_floor = 1e-6 * max|ref|: see qd_metrics.h */
#define TINY 1e-30          /* keeps divisions by an all-zero reference defined */

enum { CLS_FINITE = 0, CLS_NAN, CLS_POSINF, CLS_NEGINF };

static int classify(float x) {
    if (isfinite(x)) return CLS_FINITE;
    if (isnan(x)) return CLS_NAN;
    return x > 0 ? CLS_POSINF : CLS_NEGINF;
}

static void decode_coord(qd_metrics *m, const int64_t *shape) {
    m->coord[0] = m->coord[1] = m->coord[2] = -1;
    int64_t idx = m->max_abs_index;
    if (idx < 0) return;
    for (int d = m->ndim - 1; d >= 0; d--) {
        m->coord[d] = idx % shape[d];
        idx /= shape[d];
    }
}

/* The running state of the pass. */
typedef struct {
    double s_rr, s_tt, s_tr, s_dd; /* sum ref^2, test^2, test*ref, (test-ref)^2 over finite pairs */
    double max_abs;                /* -1 until the first finite pair */
    int64_t imax;
    double mag_test, mag_ref;
    double f_run;            /* the rel floor as known so far; only grows */
    double small_abs;        /* max |d| over elements with |ref| < f_run when seen */
    double rel_num, rel_den; /* max |d|/|ref| over the others, as a fraction */
    int64_t n_finite;
    int64_t cnt[2][4]; /* [side: test, ref][class] */
    int64_t mismatch;
} pass_state;

static void raise_mag_ref(pass_state *p, double ar) {
    if (ar > p->mag_ref) {
        p->mag_ref = ar;
        p->f_run = fmax(REL_FLOOR_FRAC * ar, TINY);
    }
}

/* Elements i0..i1-1 one at a time, any class. */
static void scalar_range(pass_state *p, const float *test, const float *ref, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
        float tf = test[i], rf = ref[i];
        if (!(isfinite(tf) && isfinite(rf))) {
            int ct = classify(tf), cr = classify(rf);
            p->cnt[0][ct]++;
            p->cnt[1][cr]++;
            if (ct != cr) p->mismatch++;
            if (ct == CLS_FINITE && fabs((double)tf) > p->mag_test) p->mag_test = fabs((double)tf);
            if (cr == CLS_FINITE) raise_mag_ref(p, fabs((double)rf));
            continue;
        }
        double t = tf, r = rf, d = t - r; /* d is exact: both are floats */
        double ad = fabs(d), ar = fabs(r), at = fabs(t);
        p->s_rr += r * r;
        p->s_tt += t * t;
        p->s_tr += t * r;
        p->s_dd += d * d;
        if (ad > p->max_abs) {
            p->max_abs = ad;
            p->imax = i;
        }
        if (at > p->mag_test) p->mag_test = at;
        raise_mag_ref(p, ar);
        if (ar < p->f_run) {
            if (ad > p->small_abs) p->small_abs = ad;
        } else if (ad * p->rel_den > p->rel_num * ar) { /* ad/ar > rel_num/rel_den without a division */
            p->rel_num = ad;
            p->rel_den = ar;
        }
        p->cnt[0][CLS_FINITE]++;
        p->cnt[1][CLS_FINITE]++;
        p->n_finite++;
    }
}

/* The same for BLOCK elements at i0, in LANES independent lanes without data-dependent branches: the
 * lanes break the dependency chains of the sums and maxima (5.2 -> 3.3 ns per pair). Lanes are combined
 * in a fixed order, so the result does not depend on the machine or the compiler's scheduling. The floor used for the whole block is the one known at its start: any floor at or below the
 * final one keeps the max_rel argument above valid. A non-finite element makes sum test^2 or sum ref^2
 * non-finite (finite floats squared cannot overflow a double): then nothing is merged, 0 is returned and
 * the caller takes the block one element at a time. */
#define BLOCK 1024
#define LANES 8
static int block_fast(pass_state *p, const float *test, const float *ref, int64_t i0) {
    double rr[LANES] = {0}, tt[LANES] = {0}, tr[LANES] = {0}, dd[LANES] = {0};
    double mad[LANES] = {0}, mat[LANES] = {0}, mar[LANES] = {0}, sab[LANES] = {0};
    double rn[LANES] = {0}, rd[LANES];
    for (int k = 0; k < LANES; k++) rd[k] = 1.0;
    const double f = p->f_run;
    const float *tb = test + i0, *rb = ref + i0;
    for (int j = 0; j < BLOCK; j += LANES) {
        for (int k = 0; k < LANES; k++) {
            double t = tb[j + k], r = rb[j + k], d = t - r;
            double ad = fabs(d), ar = fabs(r), at = fabs(t);
            rr[k] += r * r;
            tt[k] += t * t;
            tr[k] += t * r;
            dd[k] += d * d;
            mad[k] = ad > mad[k] ? ad : mad[k];
            mat[k] = at > mat[k] ? at : mat[k];
            mar[k] = ar > mar[k] ? ar : mar[k];
            double ad_small = ar < f ? ad : 0.0; /* below the floor: tracked by |d| alone */
            double ad_large = ar < f ? 0.0 : ad; /* above: by |d|/|ref|; 0 never wins the ratio */
            sab[k] = ad_small > sab[k] ? ad_small : sab[k];
            int better = ad_large * rd[k] > rn[k] * ar;
            rn[k] = better ? ad_large : rn[k];
            rd[k] = better ? ar : rd[k];
        }
    }
    double s_rr = 0, s_tt = 0, s_tr = 0, s_dd = 0;
    for (int k = 0; k < LANES; k++) {
        s_rr += rr[k];
        s_tt += tt[k];
        s_tr += tr[k];
        s_dd += dd[k];
    }
    if (!isfinite(s_rr) || !isfinite(s_tt)) return 0;
    p->s_rr += s_rr;
    p->s_tt += s_tt;
    p->s_tr += s_tr;
    p->s_dd += s_dd;
    double bmax = 0, bmag_t = 0, bmag_r = 0;
    for (int k = 0; k < LANES; k++) {
        bmax = fmax(bmax, mad[k]);
        bmag_t = fmax(bmag_t, mat[k]);
        bmag_r = fmax(bmag_r, mar[k]);
        p->small_abs = fmax(p->small_abs, sab[k]);
        if (rn[k] * p->rel_den > p->rel_num * rd[k]) {
            p->rel_num = rn[k];
            p->rel_den = rd[k];
        }
    }
    if (bmax > p->max_abs) { /* the first element of the block reaching it, as the scalar loop keeps */
        int j = 0;
        while (fabs((double)tb[j] - (double)rb[j]) != bmax) j++;
        p->max_abs = bmax;
        p->imax = i0 + j;
    }
    if (bmag_t > p->mag_test) p->mag_test = bmag_t;
    raise_mag_ref(p, bmag_r);
    p->cnt[0][CLS_FINITE] += BLOCK;
    p->cnt[1][CLS_FINITE] += BLOCK;
    p->n_finite += BLOCK;
    return 1;
}

/* The second pass for max_rel, taken only in the case described at the top. */
static double max_rel_exact(const float *test, const float *ref, int64_t n, double floor) {
    double best = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(test[i]) || !isfinite(ref[i])) continue;
        double r = ref[i];
        double q = fabs((double)test[i] - r) / fmax(fabs(r), floor);
        if (q > best) best = q;
    }
    return best;
}

int qd_metrics_compute(const float *test, const float *ref, int ndim, const int64_t *shape, qd_metrics *m) {
    // test, ref (shape), row-major
    memset(m, 0, sizeof *m);
    m->max_abs_index = -1;
    m->coord[0] = m->coord[1] = m->coord[2] = -1;
    if (ndim < 1 || ndim > 3) return QD_EINPUT;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return QD_EINPUT;
        n *= shape[d];
    }
    m->n = n;
    m->ndim = ndim;

    pass_state p;
    memset(&p, 0, sizeof p);
    p.max_abs = -1.0;
    p.imax = -1;
    p.f_run = TINY;
    p.rel_den = 1.0;
    int64_t i = 0;
    for (; i + BLOCK <= n; i += BLOCK)
        if (!block_fast(&p, test, ref, i)) scalar_range(&p, test, ref, i, i + BLOCK);
    scalar_range(&p, test, ref, i, n);

    int64_t n_finite = p.n_finite;
    m->n_finite = n_finite;
    m->nan_test = p.cnt[0][CLS_NAN];
    m->posinf_test = p.cnt[0][CLS_POSINF];
    m->neginf_test = p.cnt[0][CLS_NEGINF];
    m->nan_ref = p.cnt[1][CLS_NAN];
    m->posinf_ref = p.cnt[1][CLS_POSINF];
    m->neginf_ref = p.cnt[1][CLS_NEGINF];
    m->nonfinite_mismatch = p.mismatch;
    m->max_mag_test = p.mag_test;
    m->max_mag_ref = p.mag_ref;
    m->mag_ratio = p.mag_test / fmax(p.mag_ref, TINY);
    m->rel_floor = fmax(REL_FLOOR_FRAC * p.mag_ref, TINY);

    if (n == 0) { /* nothing to differ: identical */
        m->cosine = 1.0;
        m->sqnr_db = INFINITY;
        return QD_OK;
    }
    if (n_finite == 0) { /* nothing comparable: say so rather than report a perfect match */
        m->max_abs = m->max_rel = m->rel_l2 = m->cosine = m->sqnr_db = NAN;
        m->test_at = m->ref_at = NAN;
        return QD_OK;
    }

    m->max_abs = p.max_abs;
    m->max_abs_index = p.imax;
    m->test_at = test[p.imax];
    m->ref_at = ref[p.imax];
    decode_coord(m, shape);

    if (p.rel_num > 0.0 && p.rel_den < m->rel_floor) m->max_rel = max_rel_exact(test, ref, n, m->rel_floor);
    else m->max_rel = fmax(p.small_abs / m->rel_floor, p.rel_num / p.rel_den);

    double s_rr = p.s_rr, s_tt = p.s_tt, s_dd = p.s_dd;
    m->rel_l2 = s_rr > 0.0 ? sqrt(s_dd / s_rr) : sqrt(s_tt);
    if (s_tt == 0.0 && s_rr == 0.0) m->cosine = 1.0;
    else if (s_tt == 0.0 || s_rr == 0.0) m->cosine = 0.0;
    else m->cosine = fmin(1.0, fmax(-1.0, p.s_tr / (sqrt(s_tt) * sqrt(s_rr))));
    m->sqnr_db = s_dd == 0.0 ? INFINITY : 10.0 * log10(s_rr / s_dd); /* s_rr == 0: -inf */
    return QD_OK;
}

int64_t qd_metrics_token(const qd_metrics *m) { return m->ndim >= 2 ? m->coord[0] : -1; }

int64_t qd_metrics_head(const qd_metrics *m) { return m->ndim == 3 ? m->coord[1] : -1; }

int64_t qd_metrics_channel(const qd_metrics *m) { return m->ndim >= 1 ? m->coord[m->ndim - 1] : -1; }

int qd_metrics_where(const qd_metrics *m, char *buf, size_t n) {
    if (m->max_abs_index < 0) return snprintf(buf, n, "none");
    long long t = (long long)qd_metrics_token(m), h = (long long)qd_metrics_head(m);
    long long c = (long long)qd_metrics_channel(m);
    if (m->ndim == 3) return snprintf(buf, n, "token %lld, head %lld, channel %lld", t, h, c);
    if (m->ndim == 2) return snprintf(buf, n, "token %lld, channel %lld", t, c);
    return snprintf(buf, n, "channel %lld", c);
}

// ----------------------------------------------------------------------------
// JSON

json_t *qd_json_real(double x) {
    if (isnan(x)) return json_string("nan");
    if (isinf(x)) return json_string(x > 0 ? "inf" : "-inf");
    return json_real(x);
}

static json_t *coord_json(const qd_metrics *m) {
    json_t *coord = json_array();
    for (int d = 0; d < m->ndim; d++) json_array_append_new(coord, json_integer(m->coord[d]));
    return coord;
}

json_t *qd_metrics_to_json(const qd_metrics *m) {
    json_t *o = json_object();
#define FIELD(name, ctype, h5type, json, doc) json_object_set_new(o, #name, json(m->name));
#define AT(value, index) value index json_object_set_new(o, "coord", coord_json(m));
    QD_METRICS_FIELDS(FIELD, FIELD, AT)
#undef FIELD
#undef AT
    return o;
}

// ----------------------------------------------------------------------------
// the verdict

static int64_t finite_test(const qd_metrics *m) { return m->n - m->nan_test - m->posinf_test - m->neginf_test; }

unsigned qd_verdict(const qd_metrics *m, const qd_tol *tol, const qd_blowup *b, double prev_rel_l2) {
    unsigned v = 0;
    if (m->nan_test != m->nan_ref || m->posinf_test != m->posinf_ref || m->neginf_test != m->neginf_ref ||
        m->nonfinite_mismatch != 0)
        v |= QD_V_NONFINITE;
    /* written as !(x <= limit) so that a NAN metric (nothing comparable) fails */
    if (!(m->rel_l2 <= tol->rel_l2)) v |= QD_V_REL_L2;
    if (!(m->max_abs <= tol->atol + tol->rtol * m->max_mag_ref)) v |= QD_V_MAX_ABS;
    if (m->mag_ratio >= b->blowup_ratio) v |= QD_V_BLOWUP_MAG;
    if (isfinite(prev_rel_l2) && prev_rel_l2 > b->growth_floor && isfinite(m->rel_l2) &&
        m->rel_l2 / prev_rel_l2 >= b->growth_factor)
        v |= QD_V_BLOWUP_GROWTH;
    if (finite_test(m) > 0 && m->max_mag_test == 0.0 && m->max_mag_ref > 0.0) v |= QD_V_COLLAPSE;
    return v;
}

int qd_verdict_fails(unsigned mask) { return (mask & QD_V_ALL) != 0; }

const char *qd_verdict_flag_name(unsigned flag) {
    switch (flag) {
    case QD_V_NONFINITE: return "nonfinite";
    case QD_V_REL_L2: return "rel_l2";
    case QD_V_MAX_ABS: return "max_abs";
    case QD_V_BLOWUP_MAG: return "blowup_mag";
    case QD_V_BLOWUP_GROWTH: return "blowup_growth";
    case QD_V_COLLAPSE: return "collapse";
    case QD_V_LOCAL: return "local";
    }
    return "?";
}

int qd_distinct_digits(double x, double bound, int min_digits) {
    int p = min_digits < 1 ? 1 : min_digits;
    if (!isfinite(x) || !isfinite(bound) || x == bound) return p;
    for (; p < 17; p++) {
        char a[40], b[40];
        snprintf(a, sizeof a, "%.*g", p, x);
        snprintf(b, sizeof b, "%.*g", p, bound);
        double ra = strtod(a, NULL), rb = strtod(b, NULL);
        if (x > bound ? ra > rb : ra < rb) break;
    }
    return p;
}

/* A short figure: "3.2e-2", "1e29", "3.1", "250", "0": `digits` significant digits (2 unless more are
 * needed to tell it from its bound, qd_distinct_digits; all digits from 100 to 9999), exponent without
 * padding, trailing zeros of the mantissa dropped. */
static void fmt_short_digits(char *buf, size_t n, double x, int digits) {
    double ax = fabs(x);
    if (!isfinite(x) || x == 0.0 || (ax >= 0.1 && ax < 100.0)) {
        snprintf(buf, n, "%.*g", digits, x);
        return;
    }
    if (ax >= 100.0 && ax < 1e4) {
        if (digits <= 4) snprintf(buf, n, "%.0f", x);
        else snprintf(buf, n, "%.*g", digits, x);
        return;
    }
    char tmp[48];
    snprintf(tmp, sizeof tmp, "%.*e", digits - 1, x); /* "3.2e-02" */
    char *e = strchr(tmp, 'e');
    char mant[32];
    size_t ml = (size_t)(e - tmp);
    memcpy(mant, tmp, ml);
    mant[ml] = '\0';
    if (strchr(mant, '.')) {
        while (ml > 0 && mant[ml - 1] == '0') mant[--ml] = '\0'; /* "1.50" -> "1.5", "1.0" -> "1." */
        if (ml > 0 && mant[ml - 1] == '.') mant[--ml] = '\0';    /* "1." -> "1" */
    }
    snprintf(buf, n, "%se%d", mant, atoi(e + 1));
}

static void fmt_short(char *buf, size_t n, double x) { fmt_short_digits(buf, n, x, 2); }

/* A value and the bound it is compared with, each with the digits that show which one is larger. */
static void fmt_pair(char *a, char *c, size_t n, double x, double bound) {
    int p = qd_distinct_digits(x, bound, 2);
    fmt_short_digits(a, n, x, p);
    fmt_short_digits(c, n, bound, p);
}

typedef struct {
    char *buf;
    size_t n, len; /* len: what snprintf would have written in all */
} out_buf;

static void out_add(out_buf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_add(out_buf *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (o->len > 0) {
        size_t at = o->len < o->n ? o->len : o->n;
        int k = snprintf(o->buf + at, o->n - at, "; ");
        o->len += (size_t)k;
    }
    size_t at = o->len < o->n ? o->len : o->n;
    int k = vsnprintf(o->buf + at, o->n - at, fmt, ap);
    va_end(ap);
    if (k > 0) o->len += (size_t)k;
}

static void add_count(char *s, size_t n, const char *what, int64_t t, int64_t r) {
    if (t == r) return;
    size_t l = strlen(s);
    snprintf(s + l, n - l, "%s%lld %s vs %lld", l ? ", " : "", (long long)t, what, (long long)r);
}

int qd_verdict_reason(unsigned mask, const qd_metrics *m, const qd_tol *tol, const qd_blowup *b, double prev_rel_l2,
                      char *buf, size_t n) {
    char dummy[1];
    out_buf o = {n ? buf : dummy, n ? n : 1, 0};
    o.buf[0] = '\0';
    char a[48], c[48], w[96];
    if (mask & QD_V_NONFINITE) {
        char s[160] = "";
        add_count(s, sizeof s, "NaN", m->nan_test, m->nan_ref);
        add_count(s, sizeof s, "+Inf", m->posinf_test, m->posinf_ref);
        add_count(s, sizeof s, "-Inf", m->neginf_test, m->neginf_ref);
        if (s[0]) out_add(&o, "non-finite: %s", s);
        else out_add(&o, "non-finite: %lld elements differ in place", (long long)m->nonfinite_mismatch);
    }
    if (mask & QD_V_COLLAPSE) {
        fmt_short(a, sizeof a, m->max_mag_ref);
        out_add(&o, "collapsed to zero (ref max %s)", a);
    }
    if (mask & QD_V_BLOWUP_MAG) {
        fmt_short(a, sizeof a, m->max_mag_test);
        fmt_short(c, sizeof c, m->max_mag_ref);
        out_add(&o, "blow-up: max |test| %s vs max |ref| %s", a, c);
    }
    if (mask & QD_V_BLOWUP_GROWTH) {
        char g[48];
        fmt_pair(a, g, sizeof a, m->rel_l2 / prev_rel_l2, b->growth_factor);
        fmt_short(c, sizeof c, prev_rel_l2);
        out_add(&o, "blow-up: error grew %sx since the previous layer (rel_l2 was %s, factor %s)", a, c, g);
    }
    if (mask & QD_V_REL_L2) {
        fmt_pair(a, c, sizeof a, m->rel_l2, tol->rel_l2);
        if (isnan(m->rel_l2)) out_add(&o, "rel_l2 nan: no element is finite on both sides");
        else out_add(&o, "rel_l2 %s > %s", a, c);
    }
    if (mask & QD_V_MAX_ABS) {
        fmt_pair(a, c, sizeof a, m->max_abs, tol->atol + tol->rtol * m->max_mag_ref);
        qd_metrics_where(m, w, sizeof w);
        if (isnan(m->max_abs)) out_add(&o, "max_abs nan: no element is finite on both sides");
        else out_add(&o, "max_abs %s > %s at %s", a, c, w);
    }
    if (o.len == 0) out_add(&o, "ok");
    return (int)o.len;
}
