/* html.c: the HTML report (qd_reports.h): one self-contained page a person opens in any browser, offline.
 *
 * Every figure is drawn here, in C, as inline SVG: no script runs (the page's Content-Security-Policy
 * forbids scripts and every fetch), so what the file holds is what is seen, a test can count the plots'
 * points and the heatmap's cells in the file itself, and nothing depends on a library that would have to
 * be inlined or fetched. Hover text is SVG <title>, which browsers show without script. Every string that
 * comes from a file (names, attributes, config.json, the localisation's sentence, token text) is
 * HTML-escaped.
 *
 * Sections, top to bottom (each a <section id=...>): verdict (the first divergence: step, layer, op,
 * side, ratio, class, where), layers (error vs layer, one plot per tap, log scale, with the noise floor
 * and the failing line), heatmap (layer x tap), steps (decode step x layer), where (the flagged tap's
 * breakdown by token, head and channel), scatter (error vs magnitude), failing (the failing rows), next
 * (top next tokens), attrs (model, config, precision). */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "html.h"
#include "shared.h"

// ----------------------------------------------------------------------------
// the page as it is built: one growing buffer

typedef struct {
    char *p;
    size_t n, cap;
    int failed; /* an allocation failed: the page is dropped */
    qd_err e;
} page;

static void put(page *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = qd_resize(b->p, cap, &b->e);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void puts_(page *b, const char *s) { put(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void pf(page *b, const char *fmt, ...) {
    char small[1024];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if ((size_t)k < sizeof small) {
        put(b, small, (size_t)k);
        return;
    }
    char *big = malloc((size_t)k + 1);
    if (!big) {
        b->failed = 1;
        qd_errf(&b->e, QD_ERUNTIME, "malloc(%d) failed", k + 1);
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    put(b, big, (size_t)k);
    free(big);
}

/* Text from a file or a run, escaped for element content and quoted attribute values alike. */
static void esc(page *b, const char *s) {
    for (const char *q = s; *q; q++) {
        switch (*q) {
        case '&': puts_(b, "&amp;"); break;
        case '<': puts_(b, "&lt;"); break;
        case '>': puts_(b, "&gt;"); break;
        case '"': puts_(b, "&quot;"); break;
        case '\'': puts_(b, "&#39;"); break;
        default: put(b, q, 1);
        }
    }
}

/* A number as the report prints it: 3 significant digits, NaN and inf spelled out. */
static const char *num(char buf[32], double x) {
    if (isnan(x)) return "NaN";
    if (isinf(x)) return x > 0 ? "inf" : "-inf";
    snprintf(buf, 32, "%.3g", x);
    return buf;
}

// ----------------------------------------------------------------------------
// what each row means on the page

static int row_fails(const qd_metrics_record *x) { return !x->pass; }

/* The plotted error of a row: the judged side's local error (replay), or the A-vs-B rel_l2 (tolerances). */
static double row_error(const qd_html_doc *d, const qd_metrics_record *x) {
    return d->replay ? x->local_rel_l2 : x->rel_l2;
}

/* The noise floor of a row (replay): the contract's error, at least one rounding. */
static double row_floor(const qd_metrics_record *x) {
    return x->floor_rel_l2 > x->min_floor ? x->floor_rel_l2 : x->min_floor;
}

/* Where a row starts to fail: threshold x floor (replay), or the rel_l2 tolerance. */
static double row_limit(const qd_html_doc *d, const qd_metrics_record *x) {
    return d->replay ? d->threshold * row_floor(x) : x->tol_rel_l2;
}

/* Severity: the error over its limit (1: on the line). A failing row is at least 1, whatever failed it
 * (a blow-up or a non-finite count can fail a row whose ratio is small). NAN: not judged. */
static double row_severity(const qd_html_doc *d, const qd_metrics_record *x) {
    double s;
    if (d->replay) {
        if (x->judged < 0) return row_fails(x) ? INFINITY : NAN;
        s = x->ratio / d->threshold;
    } else {
        s = x->tol_rel_l2 > 0 ? x->rel_l2 / x->tol_rel_l2 : x->rel_l2 > 0 ? INFINITY : 0;
    }
    if (isnan(s)) s = row_fails(x) ? INFINITY : NAN;
    if (row_fails(x) && !(s >= 1)) s = 1;
    return s;
}

/* The mode the plots show: the first divergence's, else free-running. */
static const char *shown_mode(const qd_html_doc *d) { return d->first_div >= 0 ? d->rows[d->first_div].mode : "free"; }

static int in_shown(const qd_html_doc *d, const qd_metrics_record *x) { return strcmp(x->mode, shown_mode(d)) == 0; }

/* "layer 1, q_rope" / "logits" / "decode step 2, layer 1, o_proj" */
static void place(const qd_metrics_record *x, char *buf, size_t n) {
    char step[32] = "";
    if (x->step > 0) snprintf(step, sizeof step, "decode step %d, ", x->step);
    if (x->layer < 0) snprintf(buf, n, "%s%s", step, x->tap);
    else snprintf(buf, n, "%slayer %d, %s", step, x->layer, x->tap);
}

static const char *side_name(const qd_html_doc *d, const qd_metrics_record *x) {
    return x->judged == 1 ? d->name_b : d->name_a;
}

/* The row's reason in one line, from its record alone (so a dump says what the run said). */
static void reason(const qd_html_doc *d, const qd_metrics_record *x, char *buf, size_t n) {
    char a[32], b[32], c[32], f[32], g[32];
    size_t k = 0;
#define ADD(...) (k += (size_t)snprintf(buf + k, k < n ? n - k : 0, __VA_ARGS__), k = k < n ? k : n)
    buf[0] = '\0';
    if (d->replay) {
        if (x->judged < 0) {
            ADD("not replayed");
            return;
        }
        const char *side = side_name(d, x);
        if (x->flags & QD_V_BLOWUP_MAG)
            ADD("blow-up: max |%s| %s vs max |%s| %s; ", d->name_b, num(a, x->max_mag_test), d->name_a,
                num(b, x->max_mag_ref));
        if (x->flags & QD_V_NONFINITE)
            ADD("non-finite: %s %lld NaN/Inf vs %s %lld; ", d->name_b,
                (long long)(x->nan_test + x->posinf_test + x->neginf_test), d->name_a,
                (long long)(x->nan_ref + x->posinf_ref + x->neginf_ref));
        if (x->flags & QD_V_COLLAPSE) ADD("collapsed to zero; ");
        ADD("%s's local error rel_l2 %s = %sx its noise floor %s (threshold %s)", side, num(a, x->local_rel_l2),
            num(b, x->ratio), num(c, row_floor(x)), num(f, d->threshold));
    } else {
        if (x->flags & QD_V_NONFINITE)
            ADD("non-finite: %s %lld NaN/Inf vs %s %lld; ", d->name_b,
                (long long)(x->nan_test + x->posinf_test + x->neginf_test), d->name_a,
                (long long)(x->nan_ref + x->posinf_ref + x->neginf_ref));
        if (x->flags & QD_V_BLOWUP_MAG)
            ADD("blow-up: max |%s| %s vs max |%s| %s; ", d->name_b, num(a, x->max_mag_test), d->name_a,
                num(b, x->max_mag_ref));
        if (x->flags & QD_V_BLOWUP_GROWTH)
            ADD("error growth: rel_l2 %s after %s one layer earlier; ", num(a, x->rel_l2), num(b, x->prev_rel_l2));
        if (x->flags & QD_V_COLLAPSE) ADD("collapsed to zero; ");
        ADD("rel_l2 %s (tolerance %s), max_abs %s (atol %s + rtol %s x max|%s|)", num(a, x->rel_l2),
            num(b, x->tol_rel_l2), num(c, x->max_abs), num(f, x->tol_atol), num(g, x->tol_rtol), d->name_a);
    }
#undef ADD
}

/* " at token 7, head 0, channel 35" for the row's max_abs, "" when it has none */
static void at_text(const qd_metrics_record *x, char *buf, size_t n) {
    size_t k = 0;
    buf[0] = '\0';
    if (x->token >= 0) k += (size_t)snprintf(buf + k, n - k, "token %lld", (long long)x->token);
    if (x->head >= 0 && k < n) k += (size_t)snprintf(buf + k, n - k, "%shead %lld", k ? ", " : "", (long long)x->head);
    if (x->channel >= 0 && k < n) snprintf(buf + k, n - k, "%schannel %lld", k ? ", " : "", (long long)x->channel);
}

// ----------------------------------------------------------------------------
// colours

/* The heatmap's colour for a severity s (error over its limit): below the line, pale to deep green up to a
 * third of it (log10 s from -3 to -0.5: rounding noise, where a healthy op sits) then green to amber as it
 * nears the line; above it, reds (log10 s from 0 to 6); grey when not judged. */
static void sev_colour(double s, char out[16]) {
    static const struct {
        double at; /* log10 s */
        int r, g, b;
    } stops[] = {{-3, 0xf1, 0xf8, 0xe9},
                 {-0.5, 0x66, 0xbb, 0x6a},
                 {-0.001, 0xff, 0xb3, 0x00},
                 {0, 0xef, 0x53, 0x50},
                 {6, 0x7f, 0x00, 0x00}};
    if (isnan(s)) {
        snprintf(out, 16, "#d9d9d9");
        return;
    }
    double v = s > 0 ? log10(s) : -INFINITY;
    if (isinf(s)) v = 6;
    int i = 0;
    while (i + 2 < (int)(sizeof stops / sizeof *stops) && v >= stops[i + 1].at) i++;
    double t = (v - stops[i].at) / (stops[i + 1].at - stops[i].at);
    t = !(t > 0) ? 0 : t > 1 ? 1 : t;
    snprintf(out, 16, "#%02x%02x%02x", (int)lround(stops[i].r + t * (stops[i + 1].r - stops[i].r)),
             (int)lround(stops[i].g + t * (stops[i + 1].g - stops[i].g)),
             (int)lround(stops[i].b + t * (stops[i + 1].b - stops[i].b)));
}

// ----------------------------------------------------------------------------
// a log axis

typedef struct {
    int lo, hi; /* decades: 10^lo .. 10^hi */
} decades;

/* The decades spanning the positive finite values seen (at least two; 1e-6..1 when none). */
static decades span(const double *v, int n) {
    double mn = INFINITY, mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i]) && v[i] > 0) {
            mn = v[i] < mn ? v[i] : mn;
            mx = v[i] > mx ? v[i] : mx;
        }
    decades d = {-6, 0};
    if (mx > 0) {
        d.lo = (int)floor(log10(mn));
        d.hi = (int)ceil(log10(mx));
        if (d.hi - d.lo < 2) d.hi = d.lo + 2;
        if (d.lo < -40) d.lo = -40; /* denormal-sized errors all sit on the floor of the plot */
        if (d.hi > 40) d.hi = 40;
        if (d.hi <= d.lo) d.hi = d.lo + 2;
    }
    return d;
}

/* y (or x) of v on a log axis of length len from its origin o (reversed: y grows downwards). Zero and
 * below sit at the axis' bottom, +inf and NaN at its top: the caller marks them. */
static double log_pos(decades d, double v, double o, double len, int reversed) {
    double t = !(v > 0) ? 0 : isinf(v) || isnan(v) ? 1 : (log10(v) - d.lo) / (d.hi - d.lo);
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    return reversed ? o - t * len : o + t * len;
}

/* Gridlines and labels of a log y axis between x0 and x1, y from y0 (bottom) up by len. */
static void y_axis(page *b, decades d, double x0, double x1, double y0, double len) {
    int step = (d.hi - d.lo + 5) / 6; /* at most ~7 labels */
    for (int k = d.lo; k <= d.hi; k += step) {
        double y = log_pos(d, pow(10, k), y0, len, 1);
        pf(b, "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", x0, y, x1, y);
        pf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">1e%d</text>", x0 - 3, y + 3, k);
    }
}

// ----------------------------------------------------------------------------
// sections

static void section_verdict(page *b, const qd_html_doc *d) {
    char a[32], c[32], t[512];
    puts_(b, "<section id=\"verdict\">\n");
    if (d->first_div < 0) {
        int worst = -1;
        for (int i = 0; i < d->n; i++) {
            double s = row_severity(d, &d->rows[i]);
            if (!isnan(s) && (worst < 0 || s > row_severity(d, &d->rows[worst]))) worst = i;
        }
        pf(b,
           "<p class=\"badge pass\">PASS</p><p class=\"headline\" id=\"verdict-text\">no divergence: %d taps "
           "compared, every one within ",
           d->n);
        puts_(b, d->replay ? "its noise floor" : "its tolerance");
        puts_(b, "</p>\n");
        if (worst >= 0) {
            place(&d->rows[worst], t, sizeof t);
            puts_(b, "<p>closest to failing: ");
            esc(b, t);
            puts_(b, " (");
            esc(b, d->rows[worst].mode);
            pf(b, " mode), at %s %% of its limit</p>\n", num(a, 100 * row_severity(d, &d->rows[worst])));
            puts_(b, "<p>");
            reason(d, &d->rows[worst], t, sizeof t);
            esc(b, t);
            puts_(b, "</p>\n");
        }
        puts_(b, "</section>\n");
        return;
    }
    const qd_metrics_record *x = &d->rows[d->first_div];
    puts_(b, "<p class=\"badge fail\">DIVERGED</p><p class=\"headline\" id=\"verdict-text\">first divergence: ");
    place(x, t, sizeof t);
    esc(b, t);
    if (d->replay && x->judged >= 0) {
        puts_(b, " — on ");
        esc(b, side_name(d, x));
        pf(b, " (%s): local error %s = %sx the noise floor", x->judged ? "B" : "A", num(a, x->local_rel_l2),
           num(c, x->ratio));
    } else {
        pf(b, ": rel_l2 %s vs tolerance %s", num(a, x->rel_l2), num(c, x->tol_rel_l2));
    }
    pf(b, " (%s)</p>\n", qd_verdict_class(x->flags));
    /* the figures a reader looks for first, one box each */
    puts_(b, "<dl class=\"facts\">");
    pf(b, "<div><dt>step</dt><dd id=\"fd-step\">%d</dd></div>", x->step);
    if (x->layer >= 0) pf(b, "<div><dt>layer</dt><dd id=\"fd-layer\">%d</dd></div>", x->layer);
    else puts_(b, "<div><dt>layer</dt><dd id=\"fd-layer\">model</dd></div>");
    puts_(b, "<div><dt>op</dt><dd id=\"fd-op\">");
    esc(b, x->tap);
    puts_(b, "</dd></div>");
    if (d->replay) pf(b, "<div><dt>ratio</dt><dd id=\"fd-ratio\">%s</dd></div>", num(a, x->ratio));
    else pf(b, "<div><dt>rel_l2</dt><dd id=\"fd-ratio\">%s</dd></div>", num(a, x->rel_l2));
    pf(b, "<div><dt>class</dt><dd>%s</dd></div><div><dt>mode</dt><dd>", qd_verdict_class(x->flags));
    esc(b, x->mode);
    puts_(b, "</dd></div></dl>\n<p class=\"why\">why: ");
    reason(d, x, t, sizeof t);
    esc(b, t);
    char at[96];
    at_text(x, at, sizeof at);
    if (at[0]) {
        char u[32];
        pf(b, "; largest |%s - %s| = %s at %s: %s = %s, %s = %s", d->esc_b, d->esc_a, num(a, x->max_abs), at, d->esc_b,
           num(c, x->test_at), d->esc_a, num(u, x->ref_at));
    }
    puts_(b, "</p>\n<p class=\"where\" id=\"verdict-where\">where: ");
    esc(b, d->where_summary[0] ? d->where_summary : "not localised");
    puts_(b, "</p>\n</section>\n");
}

/* One plot: a tap's error against the layer, with its floor and failing line. */
static void layer_plot(page *b, const qd_html_doc *d, const char *tap) {
    enum { W = 300, H = 180, X0 = 42, X1 = 292, Y0 = 150, Y1 = 22 };
    const int L = d->n_layers > 0 ? d->n_layers : 1;
    double *v = malloc(sizeof(double) * 4 * (size_t)L);
    const qd_metrics_record **at = calloc((size_t)L, sizeof *at);
    if (!v || !at) {
        free(v);
        free(at);
        b->failed = 1;
        qd_errf(&b->e, QD_ERUNTIME, "malloc failed for a plot");
        return;
    }
    int nv = 0;
    for (int i = 0; i < d->n; i++) {
        const qd_metrics_record *x = &d->rows[i];
        if (x->step != 0 || x->layer < 0 || x->layer >= L || !in_shown(d, x) || strcmp(x->tap, tap) != 0) continue;
        at[x->layer] = x;
        v[nv++] = row_error(d, x);
        v[nv++] = row_limit(d, x);
        if (d->replay) v[nv++] = row_floor(x), v[nv++] = x->rel_l2;
    }
    decades dy = span(v, nv);
    const double len = Y0 - Y1, dx = L > 1 ? (double)(X1 - X0) / (L - 1) : 0;
#define XL(l) (L > 1 ? X0 + (l)*dx : (X0 + X1) / 2.0)
    pf(b,
       "<figure class=\"plotbox\"><svg class=\"plot\" data-tap=\"%s\" viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" "
       "role=\"img\" aria-label=\"error vs layer, %s\">",
       tap, W, H, W, H, tap);
    pf(b, "<text class=\"ptitle\" x=\"%d\" y=\"14\">%s</text>", X0, tap);
    y_axis(b, dy, X0, X1, Y0, len);
    pf(b, "<line class=\"axis\" x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\"/>", X0, Y0, X1, Y0);
    int lstep = L > 12 ? (L + 6) / 7 : 1;
    for (int l = 0; l < L; l += lstep)
        pf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%d</text>", XL(l), Y0 + 12, l);
    pf(b, "<text class=\"tick\" x=\"%d\" y=\"%d\" text-anchor=\"end\">layer</text>", X1, H - 2);
    /* the lines: inherited (replay), floor (replay), the failing line, then the error itself on top */
    struct {
        const char *cls;
        int what; /* 0 error, 1 limit, 2 floor, 3 inherited */
    } series[] = {{"inherited", 3}, {"floor", 2}, {"limit", 1}, {"err", 0}};
    for (size_t s = 0; s < sizeof series / sizeof *series; s++) {
        if (!d->replay && series[s].what >= 2) continue;
        pf(b, "<polyline class=\"%s\" points=\"", series[s].cls);
        for (int l = 0; l < L; l++) {
            if (!at[l]) continue;
            const qd_metrics_record *x = at[l];
            double y = series[s].what == 0   ? row_error(d, x)
                       : series[s].what == 1 ? row_limit(d, x)
                       : series[s].what == 2 ? row_floor(x)
                                             : x->rel_l2;
            pf(b, "%.1f,%.1f ", XL(l), log_pos(dy, y, Y0, len, 1));
        }
        puts_(b, "\"/>");
    }
    for (int l = 0; l < L; l++) {
        if (!at[l]) continue;
        const qd_metrics_record *x = at[l];
        double y = row_error(d, x);
        char a[32], c[32], t[512];
        const int first = d->first_div >= 0 && x == &d->rows[d->first_div];
        pf(b, "<circle class=\"pt%s%s%s\" data-layer=\"%d\" cx=\"%.1f\" cy=\"%.1f\" r=\"%d\"><title>",
           row_fails(x) ? " fail" : "", !(y > 0) || !isfinite(y) ? " off" : "", first ? " first" : "", l, XL(l),
           log_pos(dy, y, Y0, len, 1), first ? 5 : 3);
        pf(b, "layer %d, %s: %s %s, limit %s — ", l, tap, d->replay ? "local error" : "rel_l2", num(a, y),
           num(c, row_limit(d, x)));
        reason(d, x, t, sizeof t);
        esc(b, t);
        puts_(b, "</title></circle>");
    }
#undef XL
    puts_(b, "</svg></figure>\n");
    free(v);
    free(at);
}

/* The layer taps present in the shown rows, in execution order. */
static int present_taps(const qd_html_doc *d, int step_any, int present[QD_NUM_LAYER_TAPS]) {
    int n = 0;
    for (int t = 0; t < QD_NUM_LAYER_TAPS; t++) present[t] = 0;
    for (int i = 0; i < d->n; i++) {
        const qd_metrics_record *x = &d->rows[i];
        int t = qd_layer_tap_index(x->tap);
        if (x->layer >= 0 && t >= 0 && in_shown(d, x) && (step_any || x->step == 0) && !present[t]) present[t] = 1, n++;
    }
    return n;
}

static void section_layers(page *b, const qd_html_doc *d) {
    int present[QD_NUM_LAYER_TAPS];
    int n = present_taps(d, 0, present);
    puts_(b, "<section id=\"layers\">\n<h2>Error vs layer, per tap</h2>\n<p class=\"note\">");
    pf(b, "The prompt pass, %s-running rows%s. ", strcmp(shown_mode(d), "free") == 0 ? "free" : "teacher-forced",
       strcmp(shown_mode(d), "isolated") == 0 ? " (isolated: each layer fed the reference side's input)" : "");
    if (d->replay)
        pf(b,
           "<span class=\"k err\">&#9679;</span> the judged side's local error (its op replayed on its own "
           "inputs, vs the oracle); <span class=\"k floor\">&#8212;</span> the noise floor (the precision "
           "contract's own error); <span class=\"k limit\">&#8212;</span> %g&#215; the floor: above it the op "
           "fails; <span class=\"k inherited\">&#8212;</span> the A-vs-B error, inherited included. Log scale.",
           d->threshold);
    else
        puts_(b, "<span class=\"k err\">&#9679;</span> rel_l2 of B vs A; <span class=\"k limit\">&#8212;</span> "
                 "the rel_l2 tolerance. Log scale.");
    puts_(b, " A point on the bottom axis is an exact zero; red points fail.</p>\n<div class=\"plots\">\n");
    for (int t = 0; t < QD_NUM_LAYER_TAPS; t++)
        if (present[t]) layer_plot(b, d, qd_layer_tap_name(t));
    if (n == 0) puts_(b, "<p>no layer taps were compared</p>\n");
    puts_(b, "</div>\n</section>\n");
}

/* The colour scale under the heatmap and the grid. */
static void legend(page *b) {
    puts_(b, "<p class=\"legend\">");
    static const double marks[] = {1e-3, 1e-2, 0.1, 0.3, 0.9, 1, 10, 1e3, 1e6};
    for (size_t i = 0; i < sizeof marks / sizeof *marks; i++) {
        char c[16], a[32];
        sev_colour(marks[i], c);
        pf(b, "<span class=\"sw\" style=\"background:%s\"></span>%s ", c, num(a, marks[i]));
    }
    char c[16];
    sev_colour(NAN, c);
    pf(b,
       "<span class=\"sw\" style=\"background:%s\"></span>not judged "
       "<span class=\"sw missing\"></span>absent &#8212; error over its limit (1: on the line)</p>\n",
       c);
}

static void cell(page *b, const qd_html_doc *d, const qd_metrics_record *x, double s, double cx, double cy, double w,
                 double h, const char *attrs) {
    char col[16], a[32], t[512];
    sev_colour(s, col);
    const int first = d->first_div >= 0 && x == &d->rows[d->first_div];
    pf(b, "<rect class=\"cell%s%s\" %s x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>",
       x && row_fails(x) ? " fail" : "", first ? " first" : "", attrs, cx, cy, w, h, x ? col : "#ffffff");
    if (!x) {
        puts_(b, "not compared</title></rect>");
        return;
    }
    place(x, t, sizeof t);
    esc(b, t);
    pf(b, ": %s of its limit — ", num(a, s));
    reason(d, x, t, sizeof t);
    esc(b, t);
    puts_(b, "</title></rect>");
}

static void section_heatmap(page *b, const qd_html_doc *d) {
    int present[QD_NUM_LAYER_TAPS], col[QD_NUM_LAYER_TAPS];
    int nt = present_taps(d, 0, present), L = d->n_layers;
    puts_(b, "<section id=\"heatmap\">\n<h2>Layer &#215; tap</h2>\n");
    puts_(b, "<p class=\"note\">The prompt pass, the plots' rows; each cell is the tap's error over its limit.</p>\n");
    if (nt == 0 || L <= 0) {
        puts_(b, "<p>no layer taps were compared</p>\n</section>\n");
        return;
    }
    const qd_metrics_record **grid = calloc((size_t)L * QD_NUM_LAYER_TAPS, sizeof *grid);
    if (!grid) {
        b->failed = 1;
        qd_errf(&b->e, QD_ERUNTIME, "malloc failed for the heatmap");
        return;
    }
    for (int t = 0, k = 0; t < QD_NUM_LAYER_TAPS; t++) col[t] = present[t] ? k++ : -1;
    for (int i = 0; i < d->n; i++) {
        const qd_metrics_record *x = &d->rows[i];
        int t = qd_layer_tap_index(x->tap);
        if (x->step == 0 && x->layer >= 0 && x->layer < L && t >= 0 && in_shown(d, x))
            grid[(size_t)x->layer * QD_NUM_LAYER_TAPS + t] = x;
    }
    const double cw = 40, ch = L > 40 ? 10 : 16, x0 = 60, y0 = 84;
    const double W = x0 + nt * cw + 10, H = y0 + L * ch + 10;
    pf(b,
       "<svg class=\"heatmap\" data-layers=\"%d\" data-taps=\"%d\" viewBox=\"0 0 %.0f %.0f\" width=\"%.0f\" "
       "height=\"%.0f\" role=\"img\" aria-label=\"layer by tap heatmap\">",
       L, nt, W, H, W, H);
    for (int t = 0; t < QD_NUM_LAYER_TAPS; t++)
        if (col[t] >= 0)
            pf(b, "<text class=\"tick\" transform=\"translate(%.1f,%.1f) rotate(-55)\">%s</text>",
               x0 + col[t] * cw + cw / 2, y0 - 4, qd_layer_tap_name(t));
    int lstep = L > 40 ? 5 : 1;
    for (int l = 0; l < L; l++) {
        if (l % lstep == 0)
            pf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">layer %d</text>", x0 - 4,
               y0 + l * ch + ch - 4, l);
        for (int t = 0; t < QD_NUM_LAYER_TAPS; t++) {
            if (col[t] < 0) continue;
            const qd_metrics_record *x = grid[(size_t)l * QD_NUM_LAYER_TAPS + t];
            char attrs[96];
            snprintf(attrs, sizeof attrs, "data-layer=\"%d\" data-tap=\"%s\"", l, qd_layer_tap_name(t));
            cell(b, d, x, x ? row_severity(d, x) : NAN, x0 + col[t] * cw, y0 + l * ch, cw - 1, ch - 1, attrs);
        }
    }
    puts_(b, "</svg>\n");
    legend(b);
    puts_(b, "</section>\n");
    free(grid);
}

static void section_steps(page *b, const qd_html_doc *d) {
    int S = 0, L = d->n_layers;
    for (int i = 0; i < d->n; i++) S = d->rows[i].step + 1 > S ? d->rows[i].step + 1 : S;
    puts_(b, "<section id=\"steps\">\n<h2>Decode step &#215; layer</h2>\n<p class=\"note\">");
    puts_(b, "Each cell is the worst tap of that step and layer (embed and the head at the ends).");
    if (S <= 1) puts_(b, " Only the prompt was compared: <code>--decode N</code> adds N decode steps.");
    puts_(b, "</p>\n");
    if (S == 0 || L < 0) {
        puts_(b, "</section>\n");
        return;
    }
    const int P = L + 2; /* embed, layers, head */
    const qd_metrics_record **worst = calloc((size_t)S * P, sizeof *worst);
    double *sv = malloc(sizeof(double) * (size_t)S * P);
    if (!worst || !sv) {
        free(worst);
        free(sv);
        b->failed = 1;
        qd_errf(&b->e, QD_ERUNTIME, "malloc failed for the step grid");
        return;
    }
    for (int i = 0; i < d->n; i++) {
        const qd_metrics_record *x = &d->rows[i];
        if (!in_shown(d, x)) continue;
        int p = x->layer >= 0 ? x->layer + 1 : strcmp(x->tap, "embed") == 0 ? 0 : L + 1;
        size_t k = (size_t)x->step * P + p;
        double s = row_severity(d, x);
        if (!worst[k] || (!isnan(s) && (isnan(sv[k]) || s > sv[k]))) worst[k] = x, sv[k] = s;
    }
    const double cw = L > 40 ? 10 : 18, ch = S > 32 ? 8 : 16, x0 = 64, y0 = 22;
    const double W = x0 + P * cw + 40, H = y0 + S * ch + 10;
    pf(b,
       "<svg class=\"steps\" data-steps=\"%d\" data-positions=\"%d\" viewBox=\"0 0 %.0f %.0f\" width=\"%.0f\" "
       "height=\"%.0f\" role=\"img\" aria-label=\"decode step by layer grid\">",
       S, P, W, H, W, H);
    int pstep = P > 24 ? (P + 11) / 12 : 1;
    for (int p = 0; p < P; p++) {
        if (p % pstep != 0 && p != P - 1) continue;
        char lab[16];
        if (p == 0) snprintf(lab, sizeof lab, "emb");
        else if (p == P - 1) snprintf(lab, sizeof lab, "head");
        else snprintf(lab, sizeof lab, "%d", p - 1);
        pf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>", x0 + p * cw + cw / 2,
           y0 - 6, lab);
    }
    int sstep = S > 32 ? (S + 15) / 16 : 1;
    for (int s = 0; s < S; s++) {
        if (s % sstep == 0) {
            pf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", x0 - 4, y0 + s * ch + ch - 4);
            if (s) pf(b, "step %d</text>", s);
            else puts_(b, "prompt</text>");
        }
        for (int p = 0; p < P; p++) {
            size_t k = (size_t)s * P + p;
            char attrs[64];
            snprintf(attrs, sizeof attrs, "data-step=\"%d\" data-pos=\"%d\"", s, p);
            cell(b, d, worst[k], worst[k] ? sv[k] : NAN, x0 + p * cw, y0 + s * ch, cw - 1, ch - 1, attrs);
        }
    }
    puts_(b, "</svg>\n");
    free(worst);
    free(sv);
    puts_(b, "</section>\n");
}

static void section_where(page *b, const qd_html_doc *d) {
    puts_(b, "<section id=\"where\">\n<h2>Inside the flagged tap</h2>\n");
    if (d->first_div < 0) {
        puts_(b, "<p>no divergence: nothing to break down</p>\n</section>\n");
        return;
    }
    const qd_metrics_record *x = &d->rows[d->first_div];
    char t[256];
    place(x, t, sizeof t);
    puts_(b, "<p class=\"note\">Where the error energy &#931;(B &#8722; A)&#178; of ");
    esc(b, t);
    puts_(b, " lives, by token, head and channel: the top offenders of each axis (the dump's where table) "
             "and their share of the error.</p>\n<p class=\"where\">");
    esc(b, d->where_summary[0] ? d->where_summary : "not localised");
    puts_(b, "</p>\n<div class=\"axes\">\n");
    static const char *const axes[] = {"token", "head", "channel"};
    for (int a = 0; a < 3; a++) {
        int rows = 0;
        for (int i = 0; i < d->n_where; i++) rows += strcmp(d->where[i].axis, axes[a]) == 0;
        if (!rows) continue;
        pf(b,
           "<table class=\"axis\" data-axis=\"%s\"><caption>by %s</caption><tr><th>%s</th><th>share</th>"
           "<th></th><th>rms error</th><th>rms %s</th><th>non-finite</th></tr>\n",
           axes[a], axes[a], axes[a], d->esc_a);
        for (int i = 0; i < d->n_where; i++) {
            const qd_where_record *w = &d->where[i];
            if (strcmp(w->axis, axes[a]) != 0) continue;
            char s1[32], s2[32], s3[32];
            double sh = isfinite(w->share) ? w->share : 0;
            sh = sh < 0 ? 0 : sh > 1 ? 1 : sh;
            pf(b,
               "<tr class=\"wrow\"><td>%lld</td><td>%s %%</td><td><svg class=\"bar\" width=\"120\" height=\"10\">"
               "<rect width=\"%.1f\" height=\"10\"/></svg></td><td>%s</td><td>%s</td><td>%lld</td></tr>\n",
               (long long)w->index, num(s1, 100 * w->share), 120 * sh, num(s2, w->rms_err), num(s3, w->rms_ref),
               (long long)w->nonfinite);
        }
        puts_(b, "</table>\n");
    }
    if (d->n_where == 0) puts_(b, "<p>the source holds no breakdown of this tap</p>\n");
    puts_(b, "</div>\n</section>\n");
}

/* Mantissa bits of a precision name: where one rounding sits on the scatter. */
static int mantissa_bits(const char *prec) {
    return strcmp(prec, "bf16") == 0 ? 8 : strcmp(prec, "fp16") == 0 ? 11 : strcmp(prec, "fp64") == 0 ? 53 : 24;
}

static void section_scatter(page *b, const qd_html_doc *d) {
    enum { W = 560, H = 340, X0 = 56, X1 = 540, Y0 = 300, Y1 = 16 };
    puts_(b, "<section id=\"scatter\">\n<h2>Error vs magnitude</h2>\n");
    double *xs = malloc(sizeof(double) * (size_t)(d->n + 1)), *ys = malloc(sizeof(double) * (size_t)(d->n + 1));
    if (!xs || !ys) {
        free(xs);
        free(ys);
        b->failed = 1;
        qd_errf(&b->e, QD_ERUNTIME, "malloc failed for the scatter");
        return;
    }
    int n = 0, left_out = 0;
    for (int i = 0; i < d->n; i++) {
        const qd_metrics_record *x = &d->rows[i];
        if (!in_shown(d, x)) continue;
        if (isfinite(x->max_mag_ref) && x->max_mag_ref > 0 && isfinite(x->max_abs) && x->max_abs > 0)
            xs[n] = x->max_mag_ref, ys[n++] = x->max_abs;
        else left_out++;
    }
    const int p = mantissa_bits(d->prec_b);
    pf(b,
       "<p class=\"note\">One point per compared tap (every step, the plots' mode): the largest |B &#8722; A| "
       "against the largest |A|. The dashed line is one rounding of %s (2<sup>&#8722;%d</sup> &#215; "
       "magnitude): error at the line is the precision's own; error far above it at small magnitude is a "
       "bug's. Left out: %d taps with no error or no finite magnitude.</p>\n",
       d->esc_prec_b, p + 1, left_out);
    decades dx = span(xs, n), dy = span(ys, n);
    pf(b,
       "<svg class=\"scatter\" data-points=\"%d\" viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" role=\"img\" "
       "aria-label=\"error vs magnitude\">",
       n, W, H, W, H);
    y_axis(b, dy, X0, X1, Y0, Y0 - Y1);
    int step = (dx.hi - dx.lo + 7) / 8;
    for (int k = dx.lo; k <= dx.hi; k += step) {
        double x = log_pos(dx, pow(10, k), X0, X1 - X0, 0);
        pf(b, "<line class=\"grid\" x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\"/>", x, Y0, x, Y1);
        pf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">1e%d</text>", x, Y0 + 14, k);
    }
    pf(b, "<text class=\"tick\" x=\"%d\" y=\"%d\" text-anchor=\"end\">max |%s|</text>", X1, H - 4, d->esc_a);
    pf(b, "<text class=\"tick\" x=\"%d\" y=\"%d\">max |B &#8722; A|</text>", X0 + 4, Y1 + 10);
    /* the rounding line, clipped to the plot: err = mag * 2^-(p+1) */
    {
        const double lx0 = pow(10, dx.lo), lx1 = pow(10, dx.hi), r = ldexp(1.0, -(p + 1));
        pf(b,
           "<svg x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" viewBox=\"%d %d %d %d\"><line class=\"limit\" "
           "x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/></svg>",
           X0, Y1, X1 - X0, Y0 - Y1, X0, Y1, X1 - X0, Y0 - Y1, log_pos(dx, lx0, X0, X1 - X0, 0),
           Y0 - ((log10(lx0 * r) - dy.lo) / (dy.hi - dy.lo)) * (Y0 - Y1), log_pos(dx, lx1, X0, X1 - X0, 0),
           Y0 - ((log10(lx1 * r) - dy.lo) / (dy.hi - dy.lo)) * (Y0 - Y1));
    }
    for (int i = 0; i < d->n; i++) {
        const qd_metrics_record *x = &d->rows[i];
        if (!in_shown(d, x) ||
            !(isfinite(x->max_mag_ref) && x->max_mag_ref > 0 && isfinite(x->max_abs) && x->max_abs > 0))
            continue;
        char t[256], a[32], c[32];
        const int first = d->first_div >= 0 && x == &d->rows[d->first_div];
        int t_idx = qd_layer_tap_index(x->tap);
        const char *family = t_idx < 0                       ? "model"
                             : t_idx <= QD_TAP_O_PROJ        ? "attn"
                             : t_idx == QD_TAP_ATTN_RESIDUAL ? "resid"
                             : t_idx == QD_TAP_OUT           ? "resid"
                                                             : "mlp";
        pf(b, "<circle class=\"pt %s%s%s\" cx=\"%.1f\" cy=\"%.1f\" r=\"%d\"><title>", family,
           row_fails(x) ? " fail" : "", first ? " first" : "", log_pos(dx, x->max_mag_ref, X0, X1 - X0, 0),
           log_pos(dy, x->max_abs, Y0, Y0 - Y1, 1), first ? 6 : 3);
        place(x, t, sizeof t);
        esc(b, t);
        pf(b, ": max|B - A| %s at max|A| %s</title></circle>", num(a, x->max_abs), num(c, x->max_mag_ref));
    }
    puts_(b, "</svg>\n<p class=\"legend\"><span class=\"dot attn\"></span>attention taps <span class=\"dot mlp\">"
             "</span>MLP taps <span class=\"dot resid\"></span>residual stream <span class=\"dot model\"></span>"
             "embed / head <span class=\"dot fail\"></span>failing</p>\n</section>\n");
    free(xs);
    free(ys);
}

static void section_failing(page *b, const qd_html_doc *d) {
    enum { MAX_LISTED = 60 };
    int n = 0;
    for (int i = 0; i < d->n; i++) n += row_fails(&d->rows[i]);
    pf(b, "<section id=\"failing\">\n<h2>Failing taps (%d of %d)</h2>\n", n, d->n);
    if (!n) {
        puts_(b, "<p>none</p>\n</section>\n");
        return;
    }
    puts_(b, "<table class=\"rows\"><tr><th>where</th><th>mode</th><th>class</th><th>reason</th></tr>\n");
    int k = 0;
    for (int i = 0; i < d->n && k < MAX_LISTED; i++) {
        const qd_metrics_record *x = &d->rows[i];
        if (!row_fails(x)) continue;
        char t[512];
        k++;
        pf(b, "<tr class=\"frow%s\"><td>", i == d->first_div ? " first" : "");
        place(x, t, sizeof t);
        esc(b, t);
        puts_(b, "</td><td>");
        esc(b, x->mode);
        pf(b, "</td><td>%s</td><td>", qd_verdict_class(x->flags));
        reason(d, x, t, sizeof t);
        esc(b, t);
        puts_(b, "</td></tr>\n");
    }
    puts_(b, "</table>\n");
    if (n > k) pf(b, "<p>and %d more (the JSON report and the dump's metrics table list every row)</p>\n", n - k);
    puts_(b, "</section>\n");
}

static void token_cell(page *b, const qd_html_doc *d, int32_t id) {
    const char *text = d->token_text.fn ? d->token_text.fn(d->token_text.ctx, id) : NULL;
    if (!d->token_text.fn) return;
    puts_(b, "<td class=\"tok\">");
    if (text) {
        puts_(b, "<code>");
        esc(b, text);
        puts_(b, "</code>");
    }
    puts_(b, "</td>");
}

static void section_next(page *b, const qd_html_doc *d) {
    const qd_next_tokens *nt = &d->next;
    puts_(b, "<section id=\"next\">\n<h2>Next tokens</h2>\n");
    if (nt->k == 0 || !nt->have[0] || !nt->have[1]) {
        puts_(b, "<p>no logits: the source holds none for both sides</p>\n</section>\n");
        return;
    }
    if (nt->step > 0)
        pf(b, "<p class=\"note\">At decode step %d (position %d), the last position with logits.", nt->step, nt->pos);
    else pf(b, "<p class=\"note\">At the prompt's last position (%d), the last position with logits.", nt->pos);
    int rank_b = -1;
    for (int i = 0; i < nt->k; i++)
        if (nt->id[1][i] == nt->id[0][0]) rank_b = i;
    if (rank_b == 0) puts_(b, " Both sides predict the same token.");
    else if (rank_b > 0) pf(b, " %s&#39;s top token is %s&#39;s number %d.", d->esc_a, d->esc_b, rank_b + 1);
    else pf(b, " %s&#39;s top token is not in %s&#39;s top %d.", d->esc_a, d->esc_b, nt->k);
    puts_(b, "</p>\n<table class=\"next\"><tr><th>rank</th>");
    for (int s = 0; s < 2; s++) {
        pf(b, "<th>%s id</th>", s ? d->esc_b : d->esc_a);
        if (d->token_text.fn) puts_(b, "<th>text</th>");
        puts_(b, "<th>logit</th><th>p</th>");
    }
    puts_(b, "</tr>\n");
    for (int i = 0; i < nt->k; i++) {
        pf(b, "<tr class=\"nrow\"><td>%d</td>", i + 1);
        for (int s = 0; s < 2; s++) {
            char a[32], c[32];
            pf(b, "<td class=\"id%s\">%d</td>", s && nt->id[1][i] != nt->id[0][i] ? " differs" : "", (int)nt->id[s][i]);
            token_cell(b, d, nt->id[s][i]);
            pf(b, "<td>%s</td><td>%s</td>", num(a, nt->logit[s][i]), num(c, nt->prob[s][i]));
        }
        puts_(b, "</tr>\n");
    }
    puts_(b, "</table>\n</section>\n");
}

static void attr_row(page *b, const char *key, const char *value) {
    puts_(b, "<tr><th>");
    esc(b, key);
    puts_(b, "</th><td>");
    esc(b, value);
    puts_(b, "</td></tr>\n");
}

static void section_attrs(page *b, const qd_html_doc *d) {
    char v[512];
    puts_(b, "<section id=\"attrs\">\n<h2>Model, configuration and precision</h2>\n<table class=\"attrs\">\n");
    if (d->model) attr_row(b, "model", d->model);
    if (d->tool_version) attr_row(b, "written by", d->tool_version);
    snprintf(v, sizeof v, "%s: %s%s%s", d->name_a, d->prec_a, d->accum_a[0] ? ", accumulation " : "", d->accum_a);
    attr_row(b, "reference side (A)", v);
    snprintf(v, sizeof v, "%s: %s%s%s", d->name_b, d->prec_b, d->accum_b[0] ? ", accumulation " : "", d->accum_b);
    attr_row(b, "side under test (B)", v);
    if (d->replay)
        snprintf(v, sizeof v, "replay: each op's local error over its noise floor, threshold %g%s", d->threshold,
                 d->threshold_assumed ? " (the default; the dump does not record --ratio-threshold)" : "");
    else snprintf(v, sizeof v, "tolerances: A-vs-B error against absolute tolerances");
    attr_row(b, "verdict", v);
    int S = 0;
    for (int i = 0; i < d->n; i++) S = d->rows[i].step + 1 > S ? d->rows[i].step + 1 : S;
    snprintf(v, sizeof v, "%d rows, %d layers, the prompt%s", d->n, d->n_layers, S > 1 ? " and decode steps" : " only");
    attr_row(b, "compared", v);
    if (S > 1) {
        snprintf(v, sizeof v, "%d", S - 1);
        attr_row(b, "decode steps", v);
    }
    if (d->tokens && d->T > 0) {
        size_t k = (size_t)snprintf(v, sizeof v, "T = %d: ", d->T);
        for (int t = 0; t < d->T && k < sizeof v - 24; t++)
            k += (size_t)snprintf(v + k, sizeof v - k, "%s%d", t ? "," : "", (int)d->tokens[t]);
        if (k >= sizeof v - 24) snprintf(v + k, sizeof v - k, ", ...");
        attr_row(b, "prompt ids", v);
    }
    /* config.json: every top-level key, nested values as compact JSON */
    json_t *cfg = d->config_json ? json_loads(d->config_json, 0, NULL) : NULL;
    if (json_is_object(cfg)) {
        const char *key;
        json_t *val;
        json_object_foreach(cfg, key, val) {
            char name[96];
            snprintf(name, sizeof name, "config: %s", key);
            if (json_is_string(val)) attr_row(b, name, json_string_value(val));
            else {
                char *s = json_dumps(val, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(10));
                attr_row(b, name, s ? s : "?");
                free(s);
            }
        }
    }
    json_decref(cfg);
    puts_(b, "</table>\n");
    if (d->config_json) {
        puts_(b, "<details><summary>config.json as stored</summary><pre>");
        esc(b, d->config_json);
        puts_(b, "</pre></details>\n");
    }
    puts_(b, "</section>\n");
}

static const char STYLE[] =
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d1d1f;"
    "background:#fafafa}\n"
    "header{background:#263238;color:#fff;padding:10px 24px}header h1{font-size:18px;margin:0}"
    "header nav a{color:#b0bec5;margin-right:14px;font-size:13px}\n"
    "main{padding:8px 24px 40px;max-width:1500px}section{background:#fff;border:1px solid #e0e0e0;"
    "border-radius:6px;padding:12px 18px;margin:14px 0}\n"
    "h2{font-size:16px;margin:4px 0 8px}.note{color:#555;font-size:13px;max-width:1100px}\n"
    ".badge{display:inline-block;font-weight:700;font-size:15px;padding:3px 12px;border-radius:4px;"
    "margin:4px 12px 4px 0;color:#fff}.badge.pass{background:#2e7d32}.badge.fail{background:#c62828}\n"
    ".headline{display:inline;font-size:16px;font-weight:600}.why,.where{font-size:13px}"
    ".where{font-weight:600;color:#4a148c}\n"
    "dl.facts{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}dl.facts div{border:1px solid #ddd;"
    "border-radius:4px;padding:4px 12px;min-width:70px}dl.facts dt{font-size:11px;color:#666;"
    "text-transform:uppercase}dl.facts dd{margin:0;font-size:18px;font-weight:600}\n"
    ".plots{display:flex;flex-wrap:wrap;gap:6px}.plotbox{margin:0;border:1px solid #eee;border-radius:4px}\n"
    "svg text{font:10px system-ui,sans-serif;fill:#444}svg .ptitle{font-size:12px;font-weight:600;fill:#222}\n"
    "svg .grid{stroke:#eee}svg .axis{stroke:#999}polyline{fill:none;stroke-width:1.5}"
    "polyline.err{stroke:#1565c0}polyline.floor{stroke:#2e7d32;stroke-dasharray:2 2}"
    "polyline.limit,line.limit{stroke:#c62828;stroke-dasharray:5 3;stroke-width:1.2}"
    "polyline.inherited{stroke:#9e9e9e}\n"
    "circle.pt{fill:#1565c0}circle.pt.off{fill:#fff;stroke:#1565c0}circle.pt.fail{fill:#c62828;stroke:#c62828}"
    "circle.pt.first{stroke:#000;stroke-width:2}\n"
    "circle.pt.attn{fill:#1565c0;opacity:.75}circle.pt.mlp{fill:#ef6c00;opacity:.75}"
    "circle.pt.resid{fill:#6a1b9a;opacity:.75}circle.pt.model{fill:#00897b;opacity:.75}\n"
    "circle.pt.fail.attn,circle.pt.fail.mlp,circle.pt.fail.resid,circle.pt.fail.model{fill:#c62828;opacity:1}\n"
    "rect.cell.first{stroke:#000;stroke-width:2}rect.cell{stroke:none}\n"
    ".k{font-weight:700}.k.err{color:#1565c0}.k.floor{color:#2e7d32}.k.limit{color:#c62828}"
    ".k.inherited{color:#9e9e9e}\n"
    ".legend{font-size:12px;color:#444}.sw{display:inline-block;width:14px;height:10px;margin:0 3px 0 8px;"
    "border:1px solid #ccc}.sw.missing{background:#fff}.dot{display:inline-block;width:9px;height:9px;"
    "border-radius:50%;margin:0 3px 0 10px}.dot.attn{background:#1565c0}.dot.mlp{background:#ef6c00}"
    ".dot.resid{background:#6a1b9a}.dot.model{background:#00897b}.dot.fail{background:#c62828}\n"
    "table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #eee;padding:3px 10px;"
    "text-align:left;vertical-align:top}th{color:#444}caption{text-align:left;font-weight:600;padding:4px 0}\n"
    ".axes{display:flex;flex-wrap:wrap;gap:24px}svg.bar rect{fill:#7b1fa2}td.id.differs{color:#c62828;"
    "font-weight:600}\n"
    "table.attrs th{white-space:nowrap}table.attrs td{font-family:ui-monospace,monospace;word-break:break-all}"
    "pre{background:#f5f5f5;padding:8px;overflow:auto;max-height:360px;font-size:12px}"
    "tr.frow.first td{font-weight:600}\n";

/* s escaped into out (n): the names are at most 63 bytes and a precision 15, so their escaped forms (at
 * most 6 bytes a byte) fit the doc's buffers; an allocation failure leaves "" */
static void esc_to(char *out, size_t n, const char *s) {
    page b = {0};
    esc(&b, s);
    snprintf(out, n, "%s", b.p && !b.failed ? b.p : "");
    free(b.p);
}

int qd_html_render(const qd_html_doc *doc, const char *path, qd_err *e) {
    qd_html_doc copy = *doc; /* with the names escaped once, for the places that print them in a format */
    esc_to(copy.esc_a, sizeof copy.esc_a, doc->name_a);
    esc_to(copy.esc_b, sizeof copy.esc_b, doc->name_b);
    esc_to(copy.esc_prec_b, sizeof copy.esc_prec_b, doc->prec_b);
    const qd_html_doc *d = &copy;
    page b = {0};
    qd_err_clear(&b.e);
    puts_(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    /* no script, no fetch of any kind: the page is what the file holds */
    puts_(&b, "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src "
              "'unsafe-inline'\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
              "<meta name=\"generator\" content=\"qwen3-diff\">\n<title>qwen3-diff: ");
    esc(&b, d->name_a);
    puts_(&b, " vs ");
    esc(&b, d->name_b);
    pf(&b, " — %s</title>\n<style>\n%s</style>\n</head>\n<body>\n<header><h1>qwen3-diff: ",
       d->first_div >= 0 ? "diverged" : "pass", STYLE);
    esc(&b, d->name_a);
    puts_(&b, " (A) vs ");
    esc(&b, d->name_b);
    puts_(&b, " (B)</h1><nav><a href=\"#verdict\">verdict</a><a href=\"#layers\">error vs layer</a>"
              "<a href=\"#heatmap\">layer &#215; tap</a><a href=\"#steps\">step &#215; layer</a>"
              "<a href=\"#where\">inside the tap</a><a href=\"#scatter\">error vs magnitude</a>"
              "<a href=\"#failing\">failing</a><a href=\"#next\">next tokens</a><a href=\"#attrs\">model</a></nav>"
              "</header>\n<main>\n");
    section_verdict(&b, d);
    section_layers(&b, d);
    section_heatmap(&b, d);
    section_steps(&b, d);
    section_where(&b, d);
    section_scatter(&b, d);
    section_failing(&b, d);
    section_next(&b, d);
    section_attrs(&b, d);
    puts_(&b, "</main>\n</body>\n</html>\n");
    int rc;
    if (b.failed) {
        *e = b.e;
        rc = e->code ? e->code : QD_ERUNTIME;
        if (!e->msg[0]) qd_errf(e, QD_ERUNTIME, "%s: building the page failed", path);
    } else {
        rc = qd_write_text_output(path, b.p, e);
    }
    free(b.p);
    return rc;
}

// ----------------------------------------------------------------------------
// from a run: the rows as the dump would store them

int qd_report_write_html(const qd_report *r, const qd_html_context *cx, const char *path, qd_err *e) {
    qd_html_doc d;
    memset(&d, 0, sizeof d);
    snprintf(d.name_a, sizeof d.name_a, "%s", r->name_a);
    snprintf(d.name_b, sizeof d.name_b, "%s", r->name_b);
    snprintf(d.prec_a, sizeof d.prec_a, "%s", r->prec_a);
    snprintf(d.prec_b, sizeof d.prec_b, "%s", r->prec_b);
    if (cx) {
        snprintf(d.accum_a, sizeof d.accum_a, "%s", cx->accum_a ? cx->accum_a : "");
        snprintf(d.accum_b, sizeof d.accum_b, "%s", cx->accum_b ? cx->accum_b : "");
        d.model = cx->model;
        d.config_json = cx->config_json;
        d.tool_version = cx->tool_version;
        d.tokens = cx->tokens;
        d.T = cx->T;
        d.token_text = cx->token_text;
    }
    d.n_layers = r->n_layers;
    d.replay = r->replay;
    d.threshold = r->threshold;
    d.first_div = r->first_div;
    d.next = r->next;
    qd_metrics_record *rec = qd_alloc(((size_t)r->n + 1) * sizeof *rec, e);
    if (!rec) return QD_ERUNTIME;
    for (int i = 0; i < r->n; i++) qd_metrics_record_fill(&r->rows[i], &rec[i]);
    d.rows = rec;
    d.n = r->n;
    if (r->first_div >= 0 && r->where.valid) {
        snprintf(d.where_summary, sizeof d.where_summary, "%s", r->where.summary);
        for (int a = 0; a < QD_NUM_AXES; a++)
            for (int i = 0; i < r->where.axis[a].n_top; i++) {
                const qd_where_entry *t = &r->where.axis[a].top[i];
                qd_where_record *w = &d.where[d.n_where++];
                snprintf(w->axis, sizeof w->axis, "%s", qd_where_axis_name(a));
                w->rank = i;
                w->index = t->index;
                w->share = t->share;
                w->rms_err = t->rms_err;
                w->rms_ref = t->rms_ref;
                w->nonfinite = t->nonfinite;
            }
    }
    int rc = qd_html_render(&d, path, e);
    free(rec);
    return rc;
}
