/* test_localise.c: where inside a tap the error lives (compare/qd_localise.h), on synthetic tensors whose
 * answer is known by construction: a reference of values ~1 everywhere, a test side carrying a relative
 * rounding noise of up to 2^-8 (bf16's half ulp) everywhere, plus an error placed on purpose (some heads,
 * a position range, one channel, non-finite values). The noise comes from a fixed splitmix64 stream, so
 * every run sees the same tensors. Then the writers: qd_report_localise's per-head view, the terminal
 * lines, JSON's first_divergence.where. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qd_compare.h"
#include "qd_localise.h"
#include "qd_reports.h"

// ----------------------------------------------------------------------------
// tensors

static uint64_t rng_state;

static double uniform(void) { /* [-1, 1) from splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / 4503599627370496.0 - 1.0;
}

/* ref: values of magnitude 0.5..1.5 with random signs; test: ref with a relative noise of up to 2^-8. */
static void fill(float *test, float *ref, size_t n, uint64_t seed) {
    rng_state = seed;
    for (size_t i = 0; i < n; i++) {
        double r = (uniform() < 0 ? -1 : 1) * (1.0 + 0.5 * uniform());
        ref[i] = (float)r;
        test[i] = (float)(r * (1.0 + uniform() / 256.0));
    }
}

typedef struct {
    float *test, *ref; /* (shape) */
    int ndim;
    int64_t shape[3];
    size_t n;
} tensors;

static tensors make(int ndim, int64_t d0, int64_t d1, int64_t d2, uint64_t seed) {
    tensors t = {NULL, NULL, ndim, {d0, d1, d2}, 1};
    for (int i = 0; i < ndim; i++) t.n *= (size_t)t.shape[i];
    t.test = malloc(t.n * sizeof(float));
    t.ref = malloc(t.n * sizeof(float));
    assert_non_null(t.test);
    assert_non_null(t.ref);
    fill(t.test, t.ref, t.n, seed);
    return t;
}

static void drop(tensors *t) {
    free(t->test);
    free(t->ref);
}

static qd_where *localise(const tensors *t, int head_dim) {
    static qd_where w;
    size_t bytes = qd_localise_scratch_size(t->ndim, t->shape, head_dim);
    assert_true(bytes > 0);
    void *scratch = malloc(bytes);
    assert_non_null(scratch);
    assert_int_equal(qd_localise(t->test, t->ref, t->ndim, t->shape, head_dim, scratch, bytes, &w), 0);
    free(scratch);
    assert_true(w.valid);
    return &w;
}

#define assert_has(haystack, needle)                                           \
    do {                                                                       \
        if (!strstr((haystack), (needle))) {                                   \
            print_error("'%s' does not contain '%s'\n", (haystack), (needle)); \
            fail();                                                            \
        }                                                                      \
    } while (0)

/* the shares of an axis' top entries add up to at most 1, in descending order */
static void check_top(const qd_where_axis *x) {
    double sum = 0;
    for (int i = 0; i < x->n_top; i++) {
        sum += x->top[i].share;
        if (i) assert_true(x->top[i].share <= x->top[i - 1].share);
    }
    assert_true(sum <= 1 + 1e-12);
}

// ----------------------------------------------------------------------------
// the patterns

/* (T, H, D) = (16, 8, 16): heads 3 and 5 off by ~1 (the value's own size) everywhere, the rest noise.
 * Energy: 2 heads x 256 elements x ~1 against 6 x 256 x ~1e-5: both heads named, together ~100 %. */
static void put_heads_3_and_5(tensors *t, int64_t H, int64_t D) {
    for (int64_t tok = 0; tok < t->shape[0]; tok++)
        for (int64_t d = 0; d < D; d++) {
            t->test[(tok * H + 3) * D + d] += 1.0f;
            t->test[(tok * H + 5) * D + d] -= 0.75f;
        }
}

static void test_heads(void **state) {
    (void)state;
    tensors t = make(3, 16, 8, 16, 1);
    put_heads_3_and_5(&t, 8, 16);
    const qd_where *w = localise(&t, 0);
    const qd_where_axis *h = &w->axis[QD_AXIS_HEAD];
    assert_int_equal(h->len, 8);
    assert_int_equal(h->set.size, 2);
    assert_string_equal(h->set.text, "heads 3 and 5");
    assert_int_equal(h->set.n_index, 2);
    assert_int_equal(h->set.index[0], 3);
    assert_int_equal(h->set.index[1], 5);
    assert_true(h->set.share > 0.999);
    assert_true(h->set.contrast >= QD_WHERE_CONTRAST);
    assert_int_equal(h->top[0].index, 3); /* 1.0 beats 0.75 */
    assert_int_equal(h->top[1].index, 5);
    check_top(h);
    assert_int_equal(w->axis[QD_AXIS_TOKEN].set.size, 0); /* every token carries its share */
    assert_int_equal(w->axis[QD_AXIS_CHANNEL].set.size, 0);
    assert_string_equal(w->summary, "heads 3 and 5 carry 100 % of the error");
    drop(&t);
}

/* The same bytes as (T, H*D) = (16, 128): with head_dim 16 the per-head view finds the same heads; without
 * it, the error is columns 48..63 and 80..95. */
static void test_heads_flat(void **state) {
    (void)state;
    tensors t = make(2, 16, 128, 0, 1);
    put_heads_3_and_5(&t, 8, 16);
    const qd_where *w = localise(&t, 16);
    assert_int_equal(w->ndim, 3);
    assert_int_equal(w->shape[1], 8);
    assert_int_equal(w->shape[2], 16);
    assert_string_equal(w->axis[QD_AXIS_HEAD].set.text, "heads 3 and 5");
    w = localise(&t, 0);
    assert_int_equal(w->ndim, 2);
    assert_int_equal(w->axis[QD_AXIS_HEAD].len, 0);
    assert_string_equal(w->axis[QD_AXIS_CHANNEL].set.text, "channels 48..63 and 80..95");
    assert_has(w->summary, "channels 48..63 and 80..95 carry 100 % of the error");
    /* a head_dim that does not divide the row is ignored */
    w = localise(&t, 24);
    assert_int_equal(w->ndim, 2);
    drop(&t);
}

/* 2 heads of 4 (gqa-mod's pattern on the fixtures): half the axis, allowed because the other half is
 * clean (contrast >= 12 needs >= 92.3 % there; it has ~100 %). */
static void test_half_the_heads(void **state) {
    (void)state;
    tensors t = make(3, 8, 4, 32, 2);
    for (int64_t tok = 0; tok < 8; tok++)
        for (int64_t d = 0; d < 32; d++) t.test[(tok * 4 + 1) * 32 + d] = -t.test[(tok * 4 + 1) * 32 + d];
    for (int64_t tok = 0; tok < 8; tok++)
        for (int64_t d = 0; d < 32; d++) t.test[(tok * 4 + 2) * 32 + d] *= 2.0f;
    const qd_where *w = localise(&t, 0);
    assert_string_equal(w->axis[QD_AXIS_HEAD].set.text, "heads 1 and 2");
    assert_has(w->summary, "heads 1 and 2 carry 100 % of the error");
    drop(&t);
}

/* (T, C) = (128, 32): every position >= 64 off by ~its size, the first 64 only noise. The fewest heaviest
 * tokens reaching 80 % are ~52 scattered ones (not a set that carries most: 40 % of the axis at a contrast
 * of ~6); the relative errors jump at 64, and that range is said. */
static void test_positions_from(void **state) {
    (void)state;
    tensors t = make(2, 128, 32, 0, 3);
    for (size_t i = 64 * 32; i < t.n; i++) t.test[i] += 0.5f * t.ref[i];
    const qd_where *w = localise(&t, 0);
    const qd_where_axis *x = &w->axis[QD_AXIS_TOKEN];
    assert_string_equal(x->set.text, "positions >= 64");
    assert_int_equal(x->set.lo, 64);
    assert_int_equal(x->set.hi, 127);
    assert_int_equal(x->set.size, 64);
    assert_int_equal(x->peak.size, 0); /* no few tokens alone reach 80 % */
    assert_true(x->set.share > 0.999);
    for (int i = 0; i < x->n_top; i++) assert_true(x->top[i].index >= 64);
    check_top(x);
    assert_string_equal(w->summary, "positions >= 64 carry 100 % of the error");
    drop(&t);
}

/* More than half the axis, as one range: positions >= 16 of 80. */
static void test_positions_most_of_the_axis(void **state) {
    (void)state;
    tensors t = make(2, 80, 16, 0, 4);
    for (size_t i = 16 * 16; i < t.n; i++) t.test[i] = -t.test[i];
    const qd_where *w = localise(&t, 0);
    assert_string_equal(w->axis[QD_AXIS_TOKEN].set.text, "positions >= 16");
    drop(&t);
}

/* A band: positions 20..29 of 64. */
static void test_band(void **state) {
    (void)state;
    tensors t = make(2, 64, 16, 0, 5);
    for (size_t i = 20 * 16; i < 30 * 16; i++) t.test[i] += 3.0f;
    const qd_where *w = localise(&t, 0);
    assert_string_equal(w->axis[QD_AXIS_TOKEN].set.text, "positions 20..29");
    assert_int_equal(w->axis[QD_AXIS_TOKEN].set.lo, 20);
    assert_int_equal(w->axis[QD_AXIS_TOKEN].set.hi, 29);
    drop(&t);
}

/* The seed's shape: at position 64 an error of 1e28, decaying by 10x per position after it (every one
 * still far larger than its value), and rounding noise before it whose relative size varies from 0.4 % to
 * 50 % (knorm_extreme's near one-hot attention). The energy sees only position 64; the relative errors
 * jump between 0.5 and 1e6: positions >= 64, with token 64 as the peak. */
static void test_blowup(void **state) {
    (void)state;
    tensors t = make(2, 80, 16, 0, 6);
    for (int64_t tok = 0; tok < 64; tok++) {
        double amp = 0.004 * pow(125.0, (double)((tok * 37) % 64) / 63.0); /* 0.4 % .. 50 %, log-spread */
        for (int64_t c = 0; c < 16; c++) t.test[tok * 16 + c] = (float)(t.ref[tok * 16 + c] * (1 + amp * uniform()));
    }
    for (int64_t tok = 64; tok < 80; tok++)
        for (int64_t c = 0; c < 16; c++) t.test[tok * 16 + c] = (float)(1e28 * pow(0.1, (double)(tok - 64)) * (1 + c));
    const qd_where *w = localise(&t, 0);
    const qd_where_axis *x = &w->axis[QD_AXIS_TOKEN];
    assert_string_equal(x->set.text, "positions >= 64");
    assert_string_equal(x->peak.text, "token 64");
    assert_true(x->peak.share > 0.98 && x->peak.share < 0.995); /* 1 / (1 + 1e-2 + 1e-4 + ...) */
    assert_int_equal(x->top[0].index, 64);
    assert_true(x->top[0].rms_err > 1e27);
    assert_true(x->top[0].rms_ref < 2);
    assert_has(w->summary, "positions >= 64 carry 100 % of the error (token 64 alone 99 %)");
    drop(&t);
}

/* (T, C) = (24, 64): channel 9 off in every token. */
static void test_one_channel(void **state) {
    (void)state;
    tensors t = make(2, 24, 64, 0, 7);
    for (int64_t tok = 0; tok < 24; tok++) t.test[tok * 64 + 9] += 2.0f;
    const qd_where *w = localise(&t, 0);
    const qd_where_axis *x = &w->axis[QD_AXIS_CHANNEL];
    assert_int_equal(x->set.size, 1);
    assert_string_equal(x->set.text, "channel 9");
    assert_int_equal(x->top[0].index, 9);
    assert_true(fabs(x->top[0].rms_err - 2.0) < 0.05); /* 2 plus noise of <= 1.5 * 2^-8 */
    assert_int_equal(w->axis[QD_AXIS_TOKEN].set.size, 0);
    assert_string_equal(w->summary, "channel 9 carries 100 % of the error");
    drop(&t);
}

/* Seven scattered channels (more than 5 items to spell out): the count and the heaviest three. */
static void test_scattered(void **state) {
    (void)state;
    tensors t = make(2, 16, 64, 0, 14);
    const int64_t ch[7] = {50, 2, 41, 9, 60, 17, 30}; /* heaviest first: errors 3.0, 2.8, ..., 1.8 */
    for (int64_t tok = 0; tok < 16; tok++)
        for (int i = 0; i < 7; i++) t.test[tok * 64 + ch[i]] += (float)(3.0 - 0.2 * i);
    const qd_where *w = localise(&t, 0);
    const qd_where_set *s = &w->axis[QD_AXIS_CHANNEL].set;
    assert_int_equal(s->size, 7);
    assert_string_equal(s->text, "7 channels (50, 2, 41, ...)");
    assert_int_equal(s->lo, -1);
    assert_int_equal(s->n_index, QD_WHERE_TOP); /* the first five, ascending */
    assert_int_equal(s->index[0], 2);
    assert_int_equal(s->index[4], 41);
    drop(&t);
}

/* Only the rounding noise: nothing carries most; the sentence names the axes. */
static void test_spread(void **state) {
    (void)state;
    tensors t = make(3, 32, 4, 32, 8);
    const qd_where *w = localise(&t, 0);
    for (int a = 0; a < QD_NUM_AXES; a++) {
        assert_int_equal(w->axis[a].set.size, 0);
        check_top(&w->axis[a]);
    }
    assert_string_equal(w->summary, "spread over all tokens, heads and channels");
    tensors u = make(2, 32, 64, 0, 9);
    assert_string_equal(localise(&u, 0)->summary, "spread over all tokens and channels");
    drop(&t);
    drop(&u);
}

/* Non-finite mismatches dominate: NaN at token 5 (and an Inf at token 5) on the test side, a large finite
 * error at token 0 that would otherwise carry everything, and a NaN on both sides at token 9 (same class,
 * not a mismatch). */
static void test_nonfinite(void **state) {
    (void)state;
    tensors t = make(2, 16, 8, 0, 10);
    for (int64_t c = 0; c < 8; c++) t.test[0 * 8 + c] += 100.0f;
    t.test[5 * 8 + 1] = NAN;
    t.test[5 * 8 + 2] = NAN;
    t.test[5 * 8 + 6] = INFINITY;
    t.test[9 * 8 + 3] = t.ref[9 * 8 + 3] = NAN;
    const qd_where *w = localise(&t, 0);
    assert_int_equal(w->nonfinite, 3);
    assert_true(w->by_nonfinite);
    const qd_where_axis *x = &w->axis[QD_AXIS_TOKEN];
    assert_string_equal(x->set.text, "token 5");
    assert_true(x->set.share == 1.0);
    assert_int_equal(x->top[0].index, 5);
    assert_int_equal(x->top[0].nonfinite, 3);
    assert_int_equal(x->n_top, 1);                 /* only token 5 has mismatches */
    assert_true(w->energy > 100 * 100 * 8 * 0.99); /* the finite error is still measured */
    assert_has(w->summary, "3 non-finite mismatches: ");
    assert_has(w->summary, "token 5 carries 100 % of them");
    drop(&t);
}

/* Shapes: T = 1 (no statement along a one-index axis), a 1-D tap, and the exact figures of a 2 x 2. */
static void test_shapes(void **state) {
    (void)state;
    tensors t = make(2, 1, 64, 0, 11);
    t.test[3] += 4.0f;
    const qd_where *w = localise(&t, 0);
    assert_int_equal(w->axis[QD_AXIS_TOKEN].len, 1);
    assert_int_equal(w->axis[QD_AXIS_TOKEN].set.size, 0);
    assert_int_equal(w->axis[QD_AXIS_TOKEN].n_top, 1);
    assert_string_equal(w->summary, "channel 3 carries 100 % of the error");
    fill(t.test, t.ref, t.n, 12);
    assert_string_equal(localise(&t, 0)->summary, "spread over all channels");
    drop(&t);

    tensors v = make(1, 32, 0, 0, 13);
    v.test[31] += 5.0f;
    w = localise(&v, 0);
    assert_int_equal(w->ndim, 1);
    assert_int_equal(w->axis[QD_AXIS_TOKEN].len, 0);
    assert_string_equal(w->axis[QD_AXIS_CHANNEL].set.text, "channel 31");
    drop(&v);

    /* ref [[1, 2], [3, 4]], test differs by 2 at (1, 1): token 1 and channel 1 carry it all;
       rms error sqrt(4 / 2), rms reference sqrt((9 + 16) / 2) and sqrt((4 + 16) / 2) */
    float ref[4] = {1, 2, 3, 4}, test[4] = {1, 2, 3, 6};
    tensors s = {test, ref, 2, {2, 2, 0}, 4};
    w = localise(&s, 0);
    assert_true(w->energy == 4.0);
    assert_true(w->ref_energy == 30.0);
    const qd_where_entry *tok = &w->axis[QD_AXIS_TOKEN].top[0], *ch = &w->axis[QD_AXIS_CHANNEL].top[0];
    assert_int_equal(tok->index, 1);
    assert_true(tok->share == 1.0);
    assert_true(fabs(tok->rms_err - sqrt(2.0)) < 1e-15);
    assert_true(fabs(tok->rms_ref - sqrt(12.5)) < 1e-15);
    assert_int_equal(ch->index, 1);
    assert_true(fabs(ch->rms_ref - sqrt(10.0)) < 1e-15);
    assert_int_equal(w->axis[QD_AXIS_TOKEN].n_top, 1); /* token 0 has no error: not an offender */
    /* one of 2: needs >= 92.3 % (contrast 12), has 100 % */
    assert_string_equal(w->summary, "token 1 carries 100 % of the error; channel 1 carries 100 %");

    /* identical sides, and an empty tap */
    tensors same = {ref, ref, 2, {2, 2, 0}, 4};
    assert_string_equal(localise(&same, 0)->summary, "no difference between the sides");
    tensors empty = {ref, ref, 2, {0, 4, 0}, 0};
    assert_string_equal(localise(&empty, 0)->summary, "no difference between the sides");
}

static void test_bad_input(void **state) {
    (void)state;
    float x[4] = {0};
    int64_t shape[3] = {2, 2, 1}, neg[2] = {2, -1};
    char scratch[4096];
    qd_where w;
    assert_int_equal(qd_localise(x, x, 0, shape, 0, scratch, sizeof scratch, &w), -1);
    assert_int_equal(qd_localise(x, x, 4, shape, 0, scratch, sizeof scratch, &w), -1);
    assert_int_equal(qd_localise(x, x, 2, neg, 0, scratch, sizeof scratch, &w), -1);
    assert_false(w.valid);
    assert_int_equal(qd_localise(x, x, 2, shape, 0, scratch, 8, &w), -1); /* scratch too small */
    assert_int_equal(qd_localise_scratch_size(0, shape, 0), 0);
    assert_string_equal(qd_where_axis_name(QD_AXIS_HEAD), "head");
}

/* Deterministic: the same input gives the same bytes; and the scratch is O(T + H + C). */
static void test_deterministic(void **state) {
    (void)state;
    tensors t = make(3, 16, 8, 16, 1);
    put_heads_3_and_5(&t, 8, 16);
    qd_where a = *localise(&t, 0), b = *localise(&t, 0);
    assert_memory_equal(&a, &b, sizeof a);
    int64_t big[2] = {2048, 151936};
    assert_true(qd_localise_scratch_size(2, big, 0) <= 7 * 8 * (2048 + 151936 + 2) + 64);
    drop(&t);
}

// ----------------------------------------------------------------------------
// the report: the comparator's call, the terminal, JSON

static void test_report(void **state) {
    (void)state;
    /* attn of a model with head_dim 16: (T, NH*HD) = (16, 128), error in heads 3 and 5 */
    tensors t = make(2, 16, 128, 0, 1);
    put_heads_3_and_5(&t, 8, 16);
    qd_report r;
    qd_blowup b = {1e3, 10, 1e-4};
    qd_report_init(&r, "ref", "fp32", "emu", "bf16", 2, QD_MODE_FREE, &b);
    assert_false(r.where.valid);
    r.head_dim = 16;
    qd_err e = {0};
    r.rows = calloc(1, sizeof *r.rows);
    assert_non_null(r.rows);
    r.n = r.cap = 1;
    qd_tap_row *row = &r.rows[0];
    row->id = qd_tap_layer(1, QD_TAP_ATTN);
    row->tol = (qd_tol){1e-2, 1e-2, 1e-2};
    row->prev_rel_l2 = NAN;
    assert_int_equal(qd_metrics_compute(t.test, t.ref, t.ndim, t.shape, &row->m), QD_OK);
    row->verdict = qd_verdict(&row->m, &row->tol, &b, NAN);
    assert_true(qd_verdict_fails(row->verdict));
    r.first_div = r.first_fail[0] = 0;
    assert_int_equal(qd_report_localise(&r, row, t.test, t.ref, t.ndim, t.shape, &e), QD_OK);
    assert_true(r.where.valid);
    assert_string_equal(r.where.summary, "heads 3 and 5 carry 100 % of the error");

    /* the same tensors as o_proj (T, C): not per head, whatever head_dim says */
    row->id = qd_tap_layer(1, QD_TAP_O_PROJ);
    assert_int_equal(qd_report_localise(&r, row, t.test, t.ref, t.ndim, t.shape, &e), QD_OK);
    assert_int_equal(r.where.axis[QD_AXIS_HEAD].len, 0);
    row->id = qd_tap_layer(1, QD_TAP_ATTN);
    assert_int_equal(qd_report_localise(&r, row, t.test, t.ref, t.ndim, t.shape, &e), QD_OK);

    /* the terminal: two lines under the first divergence's */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    qd_report_print(&r, f, 0);
    fclose(f);
    assert_has(text, "\n  where: heads 3 and 5 carry 100 % of the error\n  top: head 3 ");
    char *why = strstr(text, "  why: "), *where = strstr(text, "  where: ");
    assert_non_null(why);
    assert_true(where > why);
    free(text);

    /* JSON: first_divergence.where */
    char path[] = "/tmp/qd_test_localise.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(qd_report_write_json(&r, path, &e), QD_OK);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    remove(path);
    assert_non_null(root);
    json_t *w = json_object_get(json_object_get(root, "first_divergence"), "where");
    assert_non_null(w);
    assert_string_equal(json_string_value(json_object_get(w, "summary")), "heads 3 and 5 carry 100 % of the error");
    json_t *head = json_object_get(w, "head");
    assert_string_equal(json_string_value(json_object_get(json_object_get(head, "set"), "text")), "heads 3 and 5");
    json_t *top0 = json_array_get(json_object_get(head, "top"), 0);
    assert_int_equal(json_integer_value(json_object_get(top0, "index")), 3);
    assert_true(json_is_number(json_object_get(top0, "rms_err")));
    assert_true(json_is_null(json_object_get(json_object_get(w, "token"), "set")));
    assert_int_equal(json_array_size(json_object_get(w, "view")), 3);
    json_decref(root);
    qd_report_free(&r);
    drop(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heads),
        cmocka_unit_test(test_heads_flat),
        cmocka_unit_test(test_half_the_heads),
        cmocka_unit_test(test_positions_from),
        cmocka_unit_test(test_positions_most_of_the_axis),
        cmocka_unit_test(test_band),
        cmocka_unit_test(test_blowup),
        cmocka_unit_test(test_one_channel),
        cmocka_unit_test(test_scattered),
        cmocka_unit_test(test_spread),
        cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_report),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
