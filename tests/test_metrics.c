/* test_metrics.c: per-tap metrics and the verdict (compare/qd_metrics.h) on small arrays whose answers
 * are worked out by hand in the comments. Values are chosen exactly representable in float, so the only
 * rounding is in the double arithmetic of a handful of terms: expected figures are checked to 1e-12
 * relative (a few double roundings are ~1e-15). The last section checks that the writers follow the
 * field list QD_METRICS_FIELDS: JSON's keys, the /diff table's compound type and the copy into it. */
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
#include <hdf5.h>

#include "qd_metrics.h"
#include "qd_reports.h"

#define DREL 1e-12 /* a few double roundings on exactly representable inputs */

static void check_close(double got, double want, double rel, const char *what, int line) {
    if (!(fabs(got - want) <= rel * fabs(want))) {
        print_error("line %d: %s = %.17g, expected %.17g (rel %g)\n", line, what, got, want, rel);
        fail();
    }
}
#define assert_close(got, want) check_close((got), (want), DREL, #got, __LINE__)

static const qd_tol bf16_tol = {2e-2, 1e-2, 4e-2}; /* the numbers the reason strings below quote */
static const qd_blowup blowup = {1e3, 10.0, 1e-4};
static const qd_tol loose = {1e9, 1e9, 1e9}; /* isolates the blow-up and collapse flags */

static void compute_ok(const float *test, const float *ref, int ndim, const int64_t *shape, qd_metrics *m) {
    assert_int_equal(qd_metrics_compute(test, ref, ndim, shape, m), QD_OK);
}

// ----------------------------------------------------------------------------
// metrics

/* (T, H, D) = (2, 3, 4): ref[i] = i/4; test = ref + 0.75 at (token 1, head 2, channel 1), flat
 * 1*12 + 2*4 + 1 = 21, and + 0.25 at flat 5. */
static void test_max_abs_coords_3d(void **state) {
    (void)state;
    float ref[24], test[24];
    for (int i = 0; i < 24; i++) ref[i] = test[i] = (float)i / 4.0f;
    test[21] += 0.75f;
    test[5] += 0.25f;
    int64_t shape[3] = {2, 3, 4};
    qd_metrics m;
    compute_ok(test, ref, 3, shape, &m);
    assert_int_equal(m.n, 24);
    assert_int_equal(m.n_finite, 24);
    assert_true(m.max_abs == 0.75);
    assert_int_equal(m.max_abs_index, 21);
    assert_int_equal(m.ndim, 3);
    assert_int_equal(m.coord[0], 1);
    assert_int_equal(m.coord[1], 2);
    assert_int_equal(m.coord[2], 1);
    assert_int_equal(qd_metrics_token(&m), 1);
    assert_int_equal(qd_metrics_head(&m), 2);
    assert_int_equal(qd_metrics_channel(&m), 1);
    assert_true(m.ref_at == 5.25 && m.test_at == 6.0);
    char w[64];
    qd_metrics_where(&m, w, sizeof w);
    assert_string_equal(w, "token 1, head 2, channel 1");
    /* sum ref^2 = sum (i/4)^2 = (1/16) * 23*24*47/6 = 4324/16 = 270.25; sum d^2 = 0.5625 + 0.0625 */
    assert_close(m.rel_l2, sqrt(0.625 / 270.25));
    assert_true(m.max_mag_ref == 5.75 && m.max_mag_test == 6.0);
    assert_close(m.mag_ratio, 6.0 / 5.75);
    /* max_rel: 0.25 / |1.25| = 0.2 at flat 5 beats 0.75 / 5.25 */
    assert_close(m.max_rel, 0.2);
}

/* (T, C) = (3, 5): the largest error at flat 13 = token 2, channel 3; no head axis. */
static void test_max_abs_coords_2d(void **state) {
    (void)state;
    float ref[15], test[15];
    for (int i = 0; i < 15; i++) ref[i] = test[i] = 1.0f;
    test[13] = -1.0f;
    int64_t shape[2] = {3, 5};
    qd_metrics m;
    compute_ok(test, ref, 2, shape, &m);
    assert_true(m.max_abs == 2.0);
    assert_int_equal(m.max_abs_index, 13);
    assert_int_equal(qd_metrics_token(&m), 2);
    assert_int_equal(qd_metrics_head(&m), -1);
    assert_int_equal(qd_metrics_channel(&m), 3);
    assert_int_equal(m.coord[2], -1);
    char w[64];
    qd_metrics_where(&m, w, sizeof w);
    assert_string_equal(w, "token 2, channel 3");
}

/* ref (3, 4, 0, 0), test (3, 4, 1, 0): ||d|| = 1, ||ref|| = 5 -> rel_l2 0.2; <t,r> = 25, ||t|| = sqrt(26)
 * -> cosine 5/sqrt(26); sqnr 10 log10(25). max_rel: the error sits on a zero reference element, so it is
 * judged against rel_floor = 1e-6 * 4: 1 / 4e-6 = 250000 (not 1/0). */
static void test_rel_l2_cosine_floor(void **state) {
    (void)state;
    float ref[4] = {3, 4, 0, 0}, test[4] = {3, 4, 1, 0};
    int64_t shape[1] = {4};
    qd_metrics m;
    compute_ok(test, ref, 1, shape, &m);
    assert_close(m.rel_l2, 0.2);
    assert_close(m.cosine, 5.0 / sqrt(26.0));
    assert_close(m.sqnr_db, 10.0 * log10(25.0));
    assert_close(m.rel_floor, 4e-6);
    assert_close(m.max_rel, 250000.0);
    assert_int_equal(qd_metrics_channel(&m), 2);
    assert_int_equal(qd_metrics_token(&m), -1);
}

static void test_cosine_orthogonal_parallel(void **state) {
    (void)state;
    int64_t shape[2] = {1, 4};
    qd_metrics m;
    float a[4] = {1, 0, 2, 0}, b[4] = {0, 3, 0, -1};
    compute_ok(a, b, 2, shape, &m);
    assert_true(m.cosine == 0.0);
    float twice[4] = {2, 0, 4, 0};
    compute_ok(twice, a, 2, shape, &m); /* test = 2 ref: parallel, ||d|| = ||ref|| */
    assert_close(m.cosine, 1.0);
    assert_close(m.rel_l2, 1.0);
    assert_true(fabs(m.sqnr_db) < 1e-12); /* 10 log10(1) = 0 */
    float neg[4] = {-1, 0, -2, 0};
    compute_ok(neg, a, 2, shape, &m); /* antiparallel: d = -2 ref */
    assert_close(m.cosine, -1.0);
    assert_close(m.rel_l2, 2.0);
    float zero[4] = {0, 0, 0, 0};
    compute_ok(zero, zero, 2, shape, &m); /* both zero: cosine 1 by definition, identical */
    assert_true(m.cosine == 1.0);
    assert_true(m.rel_l2 == 0.0);
    compute_ok(zero, a, 2, shape, &m); /* one side zero: 0 */
    assert_true(m.cosine == 0.0);
    compute_ok(a, zero, 2, shape, &m); /* ref zero: rel_l2 is ||test|| = sqrt(5); sqnr -inf */
    assert_close(m.rel_l2, sqrt(5.0));
    assert_true(isinf(m.sqnr_db) && m.sqnr_db < 0);
}

/* ref = +-1 alternating, test = ref + s/64 with s = +-1 in another pattern (all exact in float):
 * sum ref^2 = N, sum d^2 = N/4096 -> sqnr = 10 log10(4096) = 36.12 dB, rel_l2 = 1/64. */
static void test_sqnr_known_noise(void **state) {
    (void)state;
    enum { N = 1000 };
    static float ref[N], test[N];
    for (int i = 0; i < N; i++) {
        ref[i] = i % 2 ? 1.0f : -1.0f;
        test[i] = ref[i] + ((i / 3) % 2 ? 1.0f : -1.0f) / 64.0f;
    }
    int64_t shape[2] = {10, 100};
    qd_metrics m;
    compute_ok(test, ref, 2, shape, &m);
    assert_close(m.sqnr_db, 10.0 * log10(4096.0));
    assert_close(m.rel_l2, 1.0 / 64.0);
    assert_true(m.max_abs == 1.0 / 64.0);
}

static void test_identical(void **state) {
    (void)state;
    float a[6] = {1.5f, -2.0f, 0.0f, 3.25f, 1e-20f, -7.0f};
    int64_t shape[2] = {2, 3};
    qd_metrics m;
    compute_ok(a, a, 2, shape, &m);
    assert_true(isinf(m.sqnr_db) && m.sqnr_db > 0);
    assert_true(m.rel_l2 == 0.0);
    assert_true(m.max_abs == 0.0);
    assert_true(m.max_rel == 0.0);
    assert_close(m.cosine, 1.0);
    assert_true(m.mag_ratio == 1.0);
    assert_int_equal(m.max_abs_index, 0); /* the first element reaching the maximum */
    assert_int_equal(qd_verdict(&m, &bf16_tol, &blowup, NAN), 0);
}

/* test {NaN, +Inf, 1, -Inf, NaN, 2} vs ref {NaN, 1, 1, 2, 3, 2}: counted per side; only flat 2 and 5
 * are compared (both equal); magnitudes over each side's finite elements (ref's 3 sits under a NaN). */
static void test_nonfinite_counts(void **state) {
    (void)state;
    float test[6] = {NAN, INFINITY, 1, -INFINITY, NAN, 2}, ref[6] = {NAN, 1, 1, 2, 3, 2};
    int64_t shape[2] = {2, 3};
    qd_metrics m;
    compute_ok(test, ref, 2, shape, &m);
    assert_int_equal(m.nan_test, 2);
    assert_int_equal(m.posinf_test, 1);
    assert_int_equal(m.neginf_test, 1);
    assert_int_equal(m.nan_ref, 1);
    assert_int_equal(m.posinf_ref, 0);
    assert_int_equal(m.neginf_ref, 0);
    assert_int_equal(m.nonfinite_mismatch, 3);
    assert_int_equal(m.n_finite, 2);
    assert_true(m.max_abs == 0.0 && m.rel_l2 == 0.0);
    assert_true(m.max_mag_test == 2.0 && m.max_mag_ref == 3.0);
    unsigned v = qd_verdict(&m, &bf16_tol, &blowup, NAN);
    assert_int_equal(v, QD_V_NONFINITE);
    char r[256];
    qd_verdict_reason(v, &m, &bf16_tol, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "non-finite: 2 NaN vs 1, 1 +Inf vs 0, 1 -Inf vs 0");
}

/* The same number of NaNs on both sides, in different places: the counts agree, the places do not. */
static void test_nonfinite_moved(void **state) {
    (void)state;
    float test[3] = {NAN, 1, 2}, ref[3] = {1, NAN, 2};
    int64_t shape[1] = {3};
    qd_metrics m;
    compute_ok(test, ref, 1, shape, &m);
    assert_int_equal(m.nan_test, m.nan_ref);
    assert_int_equal(m.nonfinite_mismatch, 2);
    unsigned v = qd_verdict(&m, &bf16_tol, &blowup, NAN);
    assert_int_equal(v, QD_V_NONFINITE);
    char r[256];
    qd_verdict_reason(v, &m, &bf16_tol, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "non-finite: 2 elements differ in place");
}

/* Nothing finite on both sides: the metrics say NAN and the verdict fails even when the counts agree. */
static void test_all_nonfinite(void **state) {
    (void)state;
    float nan2[2] = {NAN, NAN}, ok2[2] = {1, 2};
    int64_t shape[1] = {2};
    qd_metrics m;
    compute_ok(nan2, nan2, 1, shape, &m);
    assert_int_equal(m.n_finite, 0);
    assert_true(isnan(m.rel_l2) && isnan(m.max_abs) && isnan(m.cosine) && isnan(m.sqnr_db));
    assert_int_equal(m.max_abs_index, -1);
    unsigned v = qd_verdict(&m, &bf16_tol, &blowup, NAN);
    assert_int_equal(v, QD_V_REL_L2 | QD_V_MAX_ABS);
    assert_true(qd_verdict_fails(v));
    char r[256];
    qd_verdict_reason(v, &m, &bf16_tol, &blowup, NAN, r, sizeof r);
    assert_non_null(strstr(r, "rel_l2 nan: no element is finite on both sides"));
    compute_ok(nan2, ok2, 1, shape, &m);
    v = qd_verdict(&m, &bf16_tol, &blowup, NAN);
    assert_int_equal(v, QD_V_NONFINITE | QD_V_REL_L2 | QD_V_MAX_ABS);
    assert_int_equal(v & QD_V_COLLAPSE, 0); /* no finite test element: not "collapsed to zero" */
    assert_true(m.max_mag_ref == 2.0);
}

/* max_rel's floor (1e-6 * max|ref| = 1e-3) is known only after the 1000 is seen. With the near-zero
 * element first it was judged against |ref| = 1e-4 when seen, and must be re-judged against 1e-3:
 * (2e-4 - 1e-4) / 1e-3 ~ 0.1, not 1. With it last, the single pass gets it directly. Same answer. */
static void test_max_rel_floor_raised_late(void **state) {
    (void)state;
    float ref_a[2] = {1e-4f, 1000.0f}, test_a[2] = {2e-4f, 1000.0f};
    float ref_b[2] = {1000.0f, 1e-4f}, test_b[2] = {1000.0f, 2e-4f};
    int64_t shape[1] = {2};
    double want = ((double)2e-4f - (double)1e-4f) / (1e-6 * 1000.0);
    qd_metrics m;
    compute_ok(test_a, ref_a, 1, shape, &m);
    assert_close(m.max_rel, want);
    compute_ok(test_b, ref_b, 1, shape, &m);
    assert_close(m.max_rel, want);
    assert_true(want > 0.09 && want < 0.11);
}

/* Long enough for the blocked kernel (1024 elements a block, metrics.c): a tie for the largest error
 * inside an all-finite block keeps the first index; max_rel's floor raised by a later block (and within
 * one block) still gives the exact answer; an Inf on one side and a NaN on the other in the last block. */
static void test_block_path(void **state) {
    (void)state;
    enum { N = 3 * 1024 + 5 };
    static float test[N], ref[N];
    for (int i = 0; i < N; i++) ref[i] = test[i] = 1.0f;
    test[1500] = 3.0f;                         /* |d| = 2 */
    test[1200] = -1.0f;                        /* |d| = 2, first */
    ref[10] = 1e-4f, test[10] = 2e-4f;         /* |d|/|ref| = 1 while the floor is 1e-6 */
    ref[2100] = 1000.0f, test[2100] = 1000.0f; /* raises the final floor to 1e-3 */
    int64_t shape[2] = {N, 1};
    qd_metrics m;
    compute_ok(test, ref, 2, shape, &m);
    assert_true(m.max_abs == 2.0);
    assert_int_equal(m.max_abs_index, 1200);
    assert_int_equal(qd_metrics_token(&m), 1200);
    assert_int_equal(qd_metrics_channel(&m), 0);
    /* candidates: 2/1 at 1200, (2e-4 - 1e-4)/1e-3 ~ 0.1 at 10: 2 */
    assert_close(m.max_rel, 2.0);
    test[1200] = test[1500] = 1.0f;
    compute_ok(test, ref, 2, shape, &m);
    assert_close(m.max_rel, ((double)2e-4f - (double)1e-4f) / (1e-6 * 1000.0));
    /* raised within one block: |d|/|ref| = 2 at 5 when seen, but the final floor is 1e-5, so 0.2 there
     * and the answer is element 10's ratio, ~1 */
    ref[5] = 1e-6f, test[5] = 3e-6f;
    ref[7] = 10.0f, test[7] = 10.0f;
    ref[2100] = test[2100] = 1.0f;
    compute_ok(test, ref, 2, shape, &m);
    assert_close(m.max_rel, ((double)2e-4f - (double)1e-4f) / (double)1e-4f);
    test[1100] = NAN; /* only the test side of block 1, only the reference side of block 2 */
    ref[N - 9] = INFINITY;
    compute_ok(test, ref, 2, shape, &m);
    assert_int_equal(m.nan_test, 1);
    assert_int_equal(m.posinf_ref, 1);
    assert_int_equal(m.nonfinite_mismatch, 2);
    assert_int_equal(m.n_finite, N - 2);
}

/* A pseudo-random tap with every case mixed in (tiny elements, matching NaNs, a few large errors)
 * against a two-pass textbook computation in the test itself. */
static void test_against_two_pass(void **state) {
    (void)state;
    enum { T = 37, H = 3, D = 29, N = T * H * D };
    static float test[N], ref[N];
    uint32_t s = 12345;
    for (int i = 0; i < N; i++) {
        s = s * 1664525u + 1013904223u;
        double u = (double)(s >> 8) / 16777216.0 - 0.5; /* [-0.5, 0.5) */
        ref[i] = (float)(u * 8.0);
        if (i % 97 == 0) ref[i] = (float)(u * 1e-7); /* below the rel floor */
        test[i] = ref[i] * (1.0f + (float)(u * 1e-2));
        if (i % 211 == 0) test[i] += 0.5f;
        if (i % 500 == 7 && i >= 2048) test[i] = ref[i] = NAN; /* blocks 0 and 1 stay all-finite */
    }
    int64_t shape[3] = {T, H, D};
    qd_metrics m;
    compute_ok(test, ref, 3, shape, &m);
    double srr = 0, sdd = 0, stt = 0, str = 0, mabs = -1, mref = 0;
    int64_t imax = -1, nf = 0;
    for (int i = 0; i < N; i++) {
        if (!isfinite(test[i]) || !isfinite(ref[i])) continue;
        double d = (double)test[i] - ref[i];
        srr += (double)ref[i] * ref[i];
        stt += (double)test[i] * test[i];
        str += (double)test[i] * ref[i];
        sdd += d * d;
        if (fabs(d) > mabs) mabs = fabs(d), imax = i;
        if (fabs((double)ref[i]) > mref) mref = fabs((double)ref[i]);
        nf++;
    }
    double fl = 1e-6 * mref, mrel = 0;
    for (int i = 0; i < N; i++) {
        if (!isfinite(test[i]) || !isfinite(ref[i])) continue;
        double q = fabs((double)test[i] - ref[i]) / fmax(fabs((double)ref[i]), fl);
        if (q > mrel) mrel = q;
    }
    assert_int_equal(m.n_finite, nf);
    assert_int_equal(m.nan_test, N - nf);
    assert_int_equal(m.nonfinite_mismatch, 0);
    assert_close(m.rel_l2, sqrt(sdd / srr));
    assert_close(m.cosine, str / (sqrt(stt) * sqrt(srr)));
    assert_close(m.max_abs, mabs);
    assert_int_equal(m.max_abs_index, imax);
    assert_int_equal(qd_metrics_token(&m), imax / (H * D));
    assert_int_equal(qd_metrics_head(&m), (imax / D) % H);
    assert_int_equal(qd_metrics_channel(&m), imax % D);
    assert_close(m.max_mag_ref, mref);
    assert_close(m.max_rel, mrel);
}

static void test_bad_shape(void **state) {
    (void)state;
    float a[1] = {0};
    int64_t shape4[4] = {1, 1, 1, 1}, neg[2] = {2, -1};
    qd_metrics m;
    assert_int_equal(qd_metrics_compute(a, a, 4, shape4, &m), QD_EINPUT);
    assert_int_equal(qd_metrics_compute(a, a, 0, shape4, &m), QD_EINPUT);
    assert_int_equal(qd_metrics_compute(a, a, 2, neg, &m), QD_EINPUT);
    int64_t empty[2] = {0, 8};
    compute_ok(a, a, 2, empty, &m); /* nothing to compare: identical, passes */
    assert_int_equal(m.n, 0);
    assert_true(m.rel_l2 == 0.0 && m.cosine == 1.0);
    assert_int_equal(qd_verdict(&m, &bf16_tol, &blowup, NAN), 0);
}

static void test_json(void **state) {
    (void)state;
    float a[3] = {1, 2, 3};
    int64_t shape[2] = {1, 3};
    qd_metrics m;
    compute_ok(a, a, 2, shape, &m);
    json_t *j = qd_metrics_to_json(&m);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "sqnr_db")), "inf");
    assert_true(json_real_value(json_object_get(j, "rel_l2")) == 0.0);
    assert_int_equal(json_integer_value(json_object_get(j, "n")), 3);
    assert_int_equal(json_array_size(json_object_get(j, "coord")), 2);
    char *text = json_dumps(j, 0); /* the whole object serialises: no non-finite real slipped in */
    assert_non_null(text);
    free(text);
    json_decref(j);
    json_t *x = qd_json_real(-INFINITY);
    assert_string_equal(json_string_value(x), "-inf");
    json_decref(x);
    x = qd_json_real(NAN);
    assert_string_equal(json_string_value(x), "nan");
    json_decref(x);
}

// ----------------------------------------------------------------------------
// the field list (QD_METRICS_FIELDS) against its writers

#define IS_INT(x) _Generic((x), int64_t : 1, double : 0) /* the list's two C types */

/* Every listed field is a key of qd_metrics_to_json, in the list's order, with coord after its index,
 * integers as integers and doubles as reals (or "inf"/"-inf"/"nan"), and there is no other key. */
static void test_fields_json(void **state) {
    (void)state;
    float test[4] = {1, 2, NAN, 4}, ref[4] = {1, 2.5f, 3, 4}; /* a NaN: counts and finite values both */
    int64_t shape[2] = {2, 2};
    qd_metrics m;
    compute_ok(test, ref, 2, shape, &m);
    json_t *j = qd_metrics_to_json(&m);
    assert_non_null(j);
    const char *order[64]; /* the keys the list gives, in its order */
    size_t n = 0;
#define KEY(name, ctype, h5type, json, doc)                                                                 \
    do {                                                                                                    \
        json_t *v = json_object_get(j, #name);                                                              \
        assert_non_null(v);                                                                                 \
        if (IS_INT(m.name)) assert_true(json_is_integer(v) && json_integer_value(v) == (json_int_t)m.name); \
        else assert_true(json_is_real(v) || (json_is_string(v) && !isfinite((double)m.name)));              \
        order[n++] = #name;                                                                                 \
    } while (0);
#define AT(value, index)                                                                \
    value index assert_int_equal(json_array_size(json_object_get(j, "coord")), m.ndim); \
    order[n++] = "coord";
    QD_METRICS_FIELDS(KEY, KEY, AT)
#undef KEY
#undef AT
    assert_int_equal(json_object_size(j), n);
    size_t k = 0;
    for (void *it = json_object_iter(j); it; it = json_object_iter_next(j, it), k++)
        assert_string_equal(json_object_iter_key(it), order[k]);
    assert_int_equal(k, n);
    json_decref(j);
}

/* One member of the /diff table's compound type as the list and qd_metrics_record say it must be. */
typedef struct {
    const char *name;
    size_t offset, size;
    hid_t type; /* -1: a fixed-length string of that size */
} member;

#define RECORD_SIZE(name) sizeof(((qd_metrics_record *)0)->name)

/* The members the list gives for the table, in order: the row's place and verdict, the M entries with
 * the place of an AT entry after its value, the row's tolerance and previous rel_l2. */
static int expected_members(member *out) {
    int k = 0;
#define ROW(name, type) out[k++] = (member){#name, offsetof(qd_metrics_record, name), RECORD_SIZE(name), type};
    ROW(step, H5T_NATIVE_INT32)
    ROW(layer, H5T_NATIVE_INT32)
    ROW(tap, -1)
    ROW(mode, -1)
    ROW(pass, H5T_NATIVE_UINT8)
    ROW(flags, H5T_NATIVE_UINT32)
#define TABLE(name, ctype, h5type, json, doc) ROW(name, h5type) assert_int_equal(RECORD_SIZE(name), sizeof(ctype));
#define NOT_IN_TABLE(name, ctype, h5type, json, doc)
#define AT(value, index) \
    value index ROW(token, H5T_NATIVE_INT64) ROW(head, H5T_NATIVE_INT64) ROW(channel, H5T_NATIVE_INT64)
    QD_METRICS_FIELDS(TABLE, NOT_IN_TABLE, AT)
#undef TABLE
#undef NOT_IN_TABLE
#undef AT
    ROW(tol_rel_l2, H5T_NATIVE_DOUBLE)
    ROW(tol_atol, H5T_NATIVE_DOUBLE)
    ROW(tol_rtol, H5T_NATIVE_DOUBLE)
    ROW(prev_rel_l2, H5T_NATIVE_DOUBLE)
#define REPLAY(name, ctype, h5type, json, doc) ROW(name, h5type) assert_int_equal(RECORD_SIZE(name), sizeof(ctype));
    QD_REPLAY_FIELDS(REPLAY)
#undef REPLAY
    ROW(judged, H5T_NATIVE_INT32)
#undef ROW
    return k;
}

/* qd_metrics_record_type agrees with the list: as many members, the same names in the same order, each at
 * its offset in qd_metrics_record with the list's HDF5 type; the fields the list keeps out of the table
 * are absent. */
static void test_fields_h5_type(void **state) {
    (void)state;
    member want[64];
    int n = expected_members(want);
    int n_table = 0, n_json_only = 0;
#define COUNT_TABLE(name, ctype, h5type, json, doc) n_table++;
#define COUNT_JSON_ONLY(name, ctype, h5type, json, doc) n_json_only++;
#define AT(value, index) value index
    QD_METRICS_FIELDS(COUNT_TABLE, COUNT_JSON_ONLY, AT)
#undef COUNT_TABLE
#undef COUNT_JSON_ONLY
#undef AT
    int n_replay = 0;
#define COUNT_REPLAY(name, ctype, h5type, json, doc) n_replay++;
    QD_REPLAY_FIELDS(COUNT_REPLAY)
#undef COUNT_REPLAY
    /* place and verdict, the list's, token/head/channel, tol, the replay's figures and its judged side */
    assert_int_equal(n, 6 + n_table + 3 + 4 + n_replay + 1);
    assert_true(n_json_only > 0);
    hid_t t = (hid_t)qd_metrics_record_type();
    assert_true(t >= 0);
    assert_int_equal(H5Tget_size(t), sizeof(qd_metrics_record));
    assert_int_equal(H5Tget_nmembers(t), n);
    for (int i = 0; i < n; i++) {
        char *name = H5Tget_member_name(t, (unsigned)i);
        assert_non_null(name);
        assert_string_equal(name, want[i].name);
        H5free_memory(name);
        assert_int_equal(H5Tget_member_offset(t, (unsigned)i), want[i].offset);
        hid_t mt = H5Tget_member_type(t, (unsigned)i);
        assert_true(mt >= 0);
        assert_int_equal(H5Tget_size(mt), want[i].size);
        if (want[i].type >= 0) assert_true(H5Tequal(mt, want[i].type) > 0);
        else assert_int_equal(H5Tget_class(mt), H5T_STRING);
        H5Tclose(mt);
    }
#define ABSENT(name, ctype, h5type, json, doc) assert_true(H5Tget_member_index(t, #name) < 0);
#define PRESENT(name, ctype, h5type, json, doc)
#define AT(value, index) value index
    H5E_BEGIN_TRY{QD_METRICS_FIELDS(PRESENT, ABSENT, AT)} H5E_END_TRY; /* a miss prints an HDF5 error */
#undef ABSENT
#undef PRESENT
#undef AT
    H5Tclose(t);
}

/* qd_metrics_record_fill copies every table field of the list: each field set to its own value comes out
 * unchanged, and the place of max_abs as token, head, channel. */
static void test_fields_record_fill(void **state) {
    (void)state;
    qd_tap_row row;
    memset(&row, 0, sizeof row);
    row.step = 2;
    row.id = qd_tap_layer(1, QD_TAP_K_NORM);
    row.mode = QD_MODE_ISOLATED;
    row.verdict = QD_V_REL_L2;
    row.tol = (qd_tol){2e-2, 1e-2, 4e-2};
    row.prev_rel_l2 = 0.125;
    int k = 0;
#define SET(name, ctype, h5type, json, doc) row.m.name = (ctype)(100 + k++);
#define AT(value, index) value index row.m.ndim = 3, row.m.coord[0] = 5, row.m.coord[1] = 6, row.m.coord[2] = 7;
    QD_METRICS_FIELDS(SET, SET, AT)
#undef SET
#undef AT
    qd_metrics_record x;
    memset(&x, 0xa5, sizeof x); /* fill zeroes what it does not set: padding reaches the file */
    qd_metrics_record_fill(&row, &x);
#define SAME(name, ctype, h5type, json, doc) assert_true(x.name == row.m.name);
#define NOT_IN_TABLE(name, ctype, h5type, json, doc)
#define AT(value, index) value index
    QD_METRICS_FIELDS(SAME, NOT_IN_TABLE, AT)
#undef SAME
#undef NOT_IN_TABLE
#undef AT
    assert_int_equal(x.token, 5);
    assert_int_equal(x.head, 6);
    assert_int_equal(x.channel, 7);
    assert_int_equal(x.step, 2);
    assert_int_equal(x.layer, 1);
    assert_string_equal(x.tap, "k_norm");
    assert_string_equal(x.mode, "isolated");
    assert_int_equal(x.pass, 0);
    assert_int_equal(x.flags, QD_V_REL_L2);
    assert_true(x.tol_rel_l2 == 2e-2 && x.tol_atol == 1e-2 && x.tol_rtol == 4e-2 && x.prev_rel_l2 == 0.125);
    const unsigned char *pad = (const unsigned char *)&x + offsetof(qd_metrics_record, pass) + 1;
    for (; pad < (const unsigned char *)&x + offsetof(qd_metrics_record, flags); pad++) assert_int_equal(*pad, 0);
    for (size_t i = strlen(x.tap); i < sizeof x.tap; i++) assert_int_equal(x.tap[i], 0);
}

// ----------------------------------------------------------------------------
// the verdict: each flag alone, then the seed

/* ref all 1, test all 1 + 1/256: rel_l2 3.9e-3, max_abs 3.9e-3 <= 1e-2 + 4e-2: clean. */
static void test_verdict_clean(void **state) {
    (void)state;
    float ref[100], test[100];
    for (int i = 0; i < 100; i++) ref[i] = 1.0f, test[i] = 1.0f + 1.0f / 256.0f;
    int64_t shape[2] = {10, 10};
    qd_metrics m;
    compute_ok(test, ref, 2, shape, &m);
    unsigned v = qd_verdict(&m, &bf16_tol, &blowup, m.rel_l2);
    assert_int_equal(v, 0);
    assert_false(qd_verdict_fails(v));
    char r[64];
    qd_verdict_reason(v, &m, &bf16_tol, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "ok");
}

/* One NaN and nothing else wrong. */
static void test_verdict_nonfinite_alone(void **state) {
    (void)state;
    float ref[8] = {1, 2, 3, 4, 5, 6, 7, 8}, test[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int64_t shape[1] = {8};
    qd_metrics m;
    for (int k = 0; k < 4; k++) test[k] = NAN;
    compute_ok(test, ref, 1, shape, &m);
    unsigned v = qd_verdict(&m, &bf16_tol, &blowup, NAN);
    assert_int_equal(v, QD_V_NONFINITE);
    assert_true(qd_verdict_fails(v));
    char r[128];
    qd_verdict_reason(v, &m, &bf16_tol, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "non-finite: 4 NaN vs 0");
}

/* Uniform 1/32 relative error: rel_l2 0.03125 > 2e-2, max_abs 0.03125 <= 1e-2 + 4e-2 * 1. */
static void test_verdict_rel_l2_alone(void **state) {
    (void)state;
    float ref[100], test[100];
    for (int i = 0; i < 100; i++) ref[i] = 1.0f, test[i] = 1.0f + 1.0f / 32.0f;
    int64_t shape[2] = {10, 10};
    qd_metrics m;
    compute_ok(test, ref, 2, shape, &m);
    unsigned v = qd_verdict(&m, &bf16_tol, &blowup, NAN);
    assert_int_equal(v, QD_V_REL_L2);
    char r[128];
    qd_verdict_reason(v, &m, &bf16_tol, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "rel_l2 3.1e-2 > 2e-2");
}

/* A value just over its bound is printed with the digits that show it: rel_l2 0.1008 against 0.1 is
 * "0.101 > 0.1", never "0.1 > 0.1"; 1.00004e-2 against 1e-2 needs six digits; the growth factor too. */
static void test_reason_digits_show_the_inequality(void **state) {
    (void)state;
    qd_metrics m;
    memset(&m, 0, sizeof m);
    m.rel_l2 = 0.1008;
    qd_tol tol = {0.1, 1, 1};
    char r[256];
    qd_verdict_reason(QD_V_REL_L2, &m, &tol, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "rel_l2 0.101 > 0.1");
    m.rel_l2 = 1.00004e-2;
    tol.rel_l2 = 1e-2;
    qd_verdict_reason(QD_V_REL_L2, &m, &tol, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "rel_l2 1.00004e-2 > 1e-2");
    m.rel_l2 = 0.5, tol.rel_l2 = 0.25; /* distinct at two digits: unchanged */
    qd_verdict_reason(QD_V_REL_L2, &m, &tol, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "rel_l2 0.5 > 0.25");
    m.rel_l2 = 0.10004, m.max_abs = 0.0504, m.max_mag_ref = 1; /* max_abs 0.0504 > 1e-2 + 4e-2 * 1 */
    qd_verdict_reason(QD_V_MAX_ABS, &m, &bf16_tol, &blowup, NAN, r, sizeof r);
    assert_non_null(strstr(r, "max_abs 5.04e-2 > 5e-2"));
    qd_verdict_reason(QD_V_BLOWUP_GROWTH, &m, &bf16_tol, &blowup, 0.010003, r, sizeof r);
    assert_non_null(strstr(r, "error grew 10.001x")); /* 0.10004 / 0.010003 = 10.0010 > factor 10 */
    assert_non_null(strstr(r, "factor 10)"));
    assert_int_equal(qd_distinct_digits(0.1008, 0.1, 2), 3);
    assert_int_equal(qd_distinct_digits(0.1, 0.1, 2), 2);
    assert_int_equal(qd_distinct_digits(4.0004, 4, 3), 5);
    assert_int_equal(qd_distinct_digits(NAN, 4, 3), 3);
}

/* One element off by 0.5 in 10000: rel_l2 = 0.5/100 = 5e-3 passes; max_abs 0.5 > 1e-2 + 4e-2 * 1. */
static void test_verdict_max_abs_alone(void **state) {
    (void)state;
    enum { N = 10000 };
    static float ref[N], test[N];
    for (int i = 0; i < N; i++) ref[i] = test[i] = 1.0f;
    test[5] = 1.5f;
    int64_t shape[2] = {100, 100};
    qd_metrics m;
    compute_ok(test, ref, 2, shape, &m);
    assert_close(m.rel_l2, 5e-3);
    unsigned v = qd_verdict(&m, &bf16_tol, &blowup, NAN);
    assert_int_equal(v, QD_V_MAX_ABS);
    char r[128];
    qd_verdict_reason(v, &m, &bf16_tol, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "max_abs 0.5 > 5e-2 at token 0, channel 5");
    qd_tol exact_limit = {2e-2, 0.5, 0.0}; /* max_abs == atol: within */
    assert_int_equal(qd_verdict(&m, &exact_limit, &blowup, NAN), 0);
}

/* max |test| / max |ref| = 2000 / 2 = 1000 >= blowup_ratio; 999x would not be. */
static void test_verdict_blowup_mag_alone(void **state) {
    (void)state;
    float ref[4] = {1, -2, 0.5f, 1}, test[4] = {1, -2000, 0.5f, 1};
    int64_t shape[1] = {4};
    qd_metrics m;
    compute_ok(test, ref, 1, shape, &m);
    assert_true(m.mag_ratio == 1000.0);
    unsigned v = qd_verdict(&m, &loose, &blowup, NAN);
    assert_int_equal(v, QD_V_BLOWUP_MAG);
    assert_true(qd_verdict_fails(v));
    test[1] = -1998;
    compute_ok(test, ref, 1, shape, &m);
    assert_int_equal(qd_verdict(&m, &loose, &blowup, NAN), 0);
}

/* rel_l2 grows >= growth_factor from the previous layer's same tap: flagged when that previous error is
 * above the growth floor (1e-4 here), not when it is below (noise), not without a previous layer.
 * Here rel_l2 = 2^-8 exactly, so the ratios below are exact powers of two. */
static void test_verdict_growth_alone(void **state) {
    (void)state;
    float ref[100], test[100];
    for (int i = 0; i < 100; i++) ref[i] = 1.0f, test[i] = 1.0f + 1.0f / 256.0f;
    int64_t shape[2] = {10, 10};
    qd_metrics m;
    compute_ok(test, ref, 2, shape, &m);
    assert_true(m.rel_l2 == ldexp(1.0, -8));
    double prev = ldexp(1.0, -12); /* 16x, previous 2.4e-4 above the floor */
    unsigned v = qd_verdict(&m, &bf16_tol, &blowup, prev);
    assert_int_equal(v, QD_V_BLOWUP_GROWTH);
    assert_true(qd_verdict_fails(v));
    char r[160];
    qd_verdict_reason(v, &m, &bf16_tol, &blowup, prev, r, sizeof r);
    assert_string_equal(r, "blow-up: error grew 16x since the previous layer (rel_l2 was 2.4e-4, factor 10)");
    assert_int_equal(qd_verdict(&m, &bf16_tol, &blowup, ldexp(1.0, -11)), 0); /* 8x < 10x */
    qd_blowup eight = {1e3, 8.0, 1e-4};
    assert_int_equal(qd_verdict(&m, &bf16_tol, &eight, ldexp(1.0, -11)), QD_V_BLOWUP_GROWTH); /* 8x >= 8x */
    assert_int_equal(qd_verdict(&m, &bf16_tol, &blowup, 5e-5), 0); /* previous below the floor: 78x ignored */
    assert_int_equal(qd_verdict(&m, &bf16_tol, &blowup, 0.0), 0);  /* exact-zero previous error */
    assert_int_equal(qd_verdict(&m, &bf16_tol, &blowup, NAN), 0);  /* no previous layer */
}

static void test_verdict_collapse_alone(void **state) {
    (void)state;
    float ref[4] = {1, -2, 0.5f, 1}, test[4] = {0, 0, 0, 0};
    int64_t shape[1] = {4};
    qd_metrics m;
    compute_ok(test, ref, 1, shape, &m);
    unsigned v = qd_verdict(&m, &loose, &blowup, NAN);
    assert_int_equal(v, QD_V_COLLAPSE);
    assert_true(qd_verdict_fails(v));
    char r[128];
    qd_verdict_reason(v, &m, &loose, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "collapsed to zero (ref max 2)");
    compute_ok(test, test, 1, shape, &m); /* zero against zero is agreement, not a collapse */
    assert_int_equal(qd_verdict(&m, &loose, &blowup, NAN), 0);
}

/* The seed: layer 1's k_norm on the fused side reaches 1e29 at one element while the reference's
 * largest is 3.1; the next layer's taps are exactly zero on the fused side (the 1e29 squared overflowed
 * the next RMSNorm's sum of squares, rsqrt gave 0), with no NaN or Inf anywhere. */
static void test_seed(void **state) {
    (void)state;
    enum { T = 2, H = 2, D = 4, N = T * H * D };
    float ref[N], test[N];
    for (int i = 0; i < N; i++) ref[i] = test[i] = (float)((i % 7) - 3) * 0.5f; /* in [-1.5, 1.5] */
    ref[3] = test[3] = 3.1f;
    test[1 * H * D + 1 * D + 2] = 1e29f; /* token 1, head 1, channel 2 */
    int64_t shape[3] = {T, H, D};
    qd_metrics m;
    compute_ok(test, ref, 3, shape, &m);
    assert_int_equal(qd_metrics_token(&m), 1);
    assert_int_equal(qd_metrics_head(&m), 1);
    assert_int_equal(qd_metrics_channel(&m), 2);
    assert_true(m.max_mag_ref == (double)3.1f);
    assert_true(m.mag_ratio > 1e28);
    assert_int_equal(m.nan_test + m.posinf_test + m.neginf_test, 0);
    qd_tol bf16_default = {4e-2, 1e-2, 4e-2};
    unsigned v = qd_verdict(&m, &bf16_default, &blowup, 1.6e-2);
    assert_true(v & QD_V_BLOWUP_MAG);
    assert_int_equal(v & QD_V_NONFINITE, 0);
    assert_true(qd_verdict_fails(v));
    char r[512];
    qd_verdict_reason(v, &m, &bf16_default, &blowup, 1.6e-2, r, sizeof r);
    assert_non_null(strstr(r, "blow-up: max |test| 1e29 vs max |ref| 3.1"));
    assert_non_null(strstr(r, "at token 1, head 1, channel 2"));

    float zero[N] = {0};
    double prev = m.rel_l2;
    compute_ok(zero, ref, 3, shape, &m);
    v = qd_verdict(&m, &bf16_default, &blowup, prev);
    assert_true(v & QD_V_COLLAPSE);
    assert_int_equal(v & (QD_V_NONFINITE | QD_V_BLOWUP_MAG | QD_V_BLOWUP_GROWTH), 0);
    assert_true(qd_verdict_fails(v));
    qd_verdict_reason(v, &m, &bf16_default, &blowup, prev, r, sizeof r);
    assert_non_null(strstr(r, "collapsed to zero (ref max 3.1)"));
}

static void test_flag_names(void **state) {
    (void)state;
    assert_string_equal(qd_verdict_flag_name(QD_V_NONFINITE), "nonfinite");
    assert_string_equal(qd_verdict_flag_name(QD_V_REL_L2), "rel_l2");
    assert_string_equal(qd_verdict_flag_name(QD_V_MAX_ABS), "max_abs");
    assert_string_equal(qd_verdict_flag_name(QD_V_BLOWUP_MAG), "blowup_mag");
    assert_string_equal(qd_verdict_flag_name(QD_V_BLOWUP_GROWTH), "blowup_growth");
    assert_string_equal(qd_verdict_flag_name(QD_V_COLLAPSE), "collapse");
    for (unsigned f = 1; f <= QD_V_COLLAPSE; f <<= 1) assert_true(qd_verdict_fails(f));
    assert_false(qd_verdict_fails(0));
}

/* Several reasons join with "; " and a small buffer truncates without overflowing. */
static void test_reason_joined_and_truncated(void **state) {
    (void)state;
    float ref[4] = {1, 1, 1, 1}, test[4] = {NAN, 0, 0, 0};
    int64_t shape[1] = {4};
    qd_metrics m;
    compute_ok(test, ref, 1, shape, &m);
    unsigned v = qd_verdict(&m, &bf16_tol, &blowup, NAN);
    assert_int_equal(v, QD_V_NONFINITE | QD_V_COLLAPSE | QD_V_REL_L2 | QD_V_MAX_ABS);
    char r[256];
    int n = qd_verdict_reason(v, &m, &bf16_tol, &blowup, NAN, r, sizeof r);
    assert_string_equal(r, "non-finite: 1 NaN vs 0; collapsed to zero (ref max 1); rel_l2 1 > 2e-2; "
                           "max_abs 1 > 5e-2 at channel 1");
    assert_int_equal(n, (int)strlen(r));
    char small[12];
    memset(small, 'x', sizeof small);
    int n2 = qd_verdict_reason(v, &m, &bf16_tol, &blowup, NAN, small, 8);
    assert_int_equal(n2, n);
    assert_string_equal(small, "non-fin");
    assert_true(small[8] == 'x');
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_abs_coords_3d),
        cmocka_unit_test(test_max_abs_coords_2d),
        cmocka_unit_test(test_rel_l2_cosine_floor),
        cmocka_unit_test(test_cosine_orthogonal_parallel),
        cmocka_unit_test(test_sqnr_known_noise),
        cmocka_unit_test(test_identical),
        cmocka_unit_test(test_nonfinite_counts),
        cmocka_unit_test(test_nonfinite_moved),
        cmocka_unit_test(test_all_nonfinite),
        cmocka_unit_test(test_max_rel_floor_raised_late),
        cmocka_unit_test(test_block_path),
        cmocka_unit_test(test_against_two_pass),
        cmocka_unit_test(test_bad_shape),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_fields_json),
        cmocka_unit_test(test_fields_h5_type),
        cmocka_unit_test(test_fields_record_fill),
        cmocka_unit_test(test_verdict_clean),
        cmocka_unit_test(test_verdict_nonfinite_alone),
        cmocka_unit_test(test_verdict_rel_l2_alone),
        cmocka_unit_test(test_verdict_max_abs_alone),
        cmocka_unit_test(test_verdict_blowup_mag_alone),
        cmocka_unit_test(test_verdict_growth_alone),
        cmocka_unit_test(test_verdict_collapse_alone),
        cmocka_unit_test(test_seed),
        cmocka_unit_test(test_flag_names),
        cmocka_unit_test(test_reason_joined_and_truncated),
        cmocka_unit_test(test_reason_digits_show_the_inequality),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
