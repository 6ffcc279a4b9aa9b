/* test_ref_ops.c: every reference op on small hand-computed values (the arithmetic is in the comments).
 *
 * Tolerances: values that are exact in binary (small integers, halves) are compared exactly. Values
 * with transcendental functions are written to 8-9 significant digits, computed by hand in double;
 * the op rounds a few fp32 operations, so they are compared with REL_TOL below. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "qd_ref_ops.h"

/* A few fp32 roundings (~6e-8 each) plus 9-digit constants: 1e-6 relative leaves an order of margin
 * while any wrong formula (pairing, scale, eps) moves the result by 1e-3 or more. */
#define REL_TOL 1e-6

static void assert_close(double got, double want, const char *what, int i) {
    double tol = REL_TOL * fmax(fabs(want), 1.0);
    if (!(fabs(got - want) <= tol)) fail_msg("%s[%d] = %.9g, expected %.9g (tolerance %.1e)", what, i, got, want, tol);
}

// ----------------------------------------------------------------------------
// RMSNorm

static void test_rmsnorm(void **state) {
    (void)state;
    for (int accum = QD_ACCUM_F32; accum <= QD_ACCUM_F64; accum++) {
        float x[8] = {1, 3, 1, 3, /* row 0 */ 2, 2, 2, 2 /* row 1 */}; // (T=2, n=4)
        float w[4] = {3, 0.5f, -1, 2};
        float out[8];
        /* a large eps so that using it (and not a constant) shows:
         * row 0: mean(x^2) = (1+9+1+9)/4 = 5; 5 + eps 4 = 9; 1/sqrt(9) = 1/3
         *        out = x/3 * w = [1/3*3, 3/3*0.5, 1/3*-1, 3/3*2] = [1, 0.5, -0.333333333, 2]
         * row 1: mean(x^2) = 4; 4 + 4 = 8; 1/sqrt(8) = 0.353553391
         *        out = 2*0.353553391 * w = 0.707106781 * w = [2.12132034, 0.353553391, -0.707106781, 1.41421356] */
        const double want[8] = {1, 0.5, -0.333333333, 2, 2.12132034, 0.353553391, -0.707106781, 1.41421356};
        rmsnorm_forward(out, x, w, 2, 4, 4.0f, (qd_accum)accum);
        for (int i = 0; i < 8; i++) assert_close(out[i], want[i], "rmsnorm", i);
        /* in place (out aliases x), as the model does for q_norm/k_norm */
        rmsnorm_forward(x, x, w, 2, 4, 4.0f, (qd_accum)accum);
        assert_memory_equal(x, out, sizeof(out));
    }
    /* the per-row normalisation: with eps = 0, x = [3, 4]: mean(x^2) = 12.5, out = x / 3.53553391 * 1 */
    float y[2] = {3, 4}, ones[2] = {1, 1}, o2[2];
    rmsnorm_forward(o2, y, ones, 1, 2, 0.0f, QD_ACCUM_F32);
    assert_close(o2[0], 0.848528137, "rmsnorm eps 0", 0); /* 3 / sqrt(12.5) */
    assert_close(o2[1], 1.13137085, "rmsnorm eps 0", 1);  /* 4 / sqrt(12.5) */
}

// ----------------------------------------------------------------------------
// matmul

static void test_matmul_hf_layout(void **state) {
    (void)state;
    /* W in the HF (out, in) layout: out_dim = 2 rows of in = 3 */
    const float W[6] = {1, 2, 3, /* o = 0 */ 4, 5, 6 /* o = 1 */};
    const float x[6] = {1, 0, -1, /* t = 0 */ 2, 1, 0.5f /* t = 1 */}; // (T=2, in=3)
    /* out[0,0] = 1*1 + 0*2 + -1*3 = -2        out[0,1] = 1*4 + 0*5 + -1*6 = -2
     * out[1,0] = 2*1 + 1*2 + 0.5*3 = 5.5      out[1,1] = 2*4 + 1*5 + 0.5*6 = 16 */
    const float want[4] = {-2, -2, 5.5f, 16};
    for (int accum = QD_ACCUM_F32; accum <= QD_ACCUM_F64; accum++) {
        float out[4];
        matmul_forward(out, x, W, 2, 3, 2, (qd_accum)accum);
        assert_memory_equal(out, want, sizeof(want)); /* exact: small integers and halves */
    }
    /* a wide, non-square case: out_dim 3 > in 2, W = [[1,0],[0,1],[1,-1]], x = [5, 7] -> [5, 7, -2] */
    const float W2[6] = {1, 0, 0, 1, 1, -1}, x2[2] = {5, 7}, want2[3] = {5, 7, -2};
    float out2[3];
    matmul_forward(out2, x2, W2, 1, 2, 3, QD_ACCUM_F32);
    assert_memory_equal(out2, want2, sizeof(want2));
}

static void test_accum_f64_matches_exact(void **state) {
    (void)state;
    /* x . w = 1e8*1 + 1*1 + -1e8*1: in float 1e8 + 1 rounds back to 1e8 (its ulp is 8), so the sum is 0;
     * in double every partial sum is exact and the result is 1, the exact value. */
    const float x[3] = {1e8f, 1, -1e8f}, w[3] = {1, 1, 1};
    float o32, o64;
    matmul_forward(&o32, x, w, 1, 3, 1, QD_ACCUM_F32);
    matmul_forward(&o64, x, w, 1, 3, 1, QD_ACCUM_F64);
    assert_true(o32 == 0.0f);
    assert_true(o64 == 1.0f);

    /* 1 + 1000 terms of 1e-8: in float each 1 + 1e-8 rounds back to 1 (half ulp is 6e-8);
     * exact 1.00001, which double holds to 1e-16 before the final rounding to float. */
    enum { N = 1001 };
    float xs[N], ws[N];
    for (int i = 0; i < N; i++) xs[i] = 1, ws[i] = i == 0 ? 1.0f : 1e-8f;
    matmul_forward(&o32, xs, ws, 1, N, 1, QD_ACCUM_F32);
    matmul_forward(&o64, xs, ws, 1, N, 1, QD_ACCUM_F64);
    assert_true(o32 == 1.0f);
    assert_true(o64 == (float)(1.0 + 1000 * (double)1e-8f)); /* the exact sum, rounded once */
    assert_true(o64 != o32);

    /* sum of squares in RMSNorm: x = [4096, 1 x 15]: 4096^2 = 2^24, and 2^24 + 1 rounds to 2^24 in
     * float (a tie, to even), so the float sum stays 2^24 while the exact one is 2^24 + 15.
     * out[1] = 1 / sqrt(mean + eps) with mean 2^20 (float) or 2^20 + 15/16 (exact); eps = 0. */
    float xr[16], wr[16], r32[16], r64[16];
    for (int i = 0; i < 16; i++) xr[i] = i == 0 ? 4096.0f : 1.0f, wr[i] = 1.0f;
    rmsnorm_forward(r32, xr, wr, 1, 16, 0.0f, QD_ACCUM_F32);
    rmsnorm_forward(r64, xr, wr, 1, 16, 0.0f, QD_ACCUM_F64);
    assert_true(r32[1] == 1.0f / 1024.0f);                               /* 1/sqrt(2^20) */
    assert_true(r64[1] == (float)(1.0 / sqrt(1048576.0 + 15.0 / 16.0))); /* exact, rounded once */
    assert_true(r64[1] != r32[1]);
}

// ----------------------------------------------------------------------------
// RoPE

static void test_rope_inv_freq(void **state) {
    (void)state;
    /* HD = 4, theta = 10000: inv_freq[i] = 10000^(-2i/4) = [10000^0, 10000^-0.5] = [1, 0.01] */
    float inv[2];
    rope_inv_freq(inv, 4, 10000.0);
    assert_true(inv[0] == 1.0f);
    assert_true(inv[1] == 0.01f); /* computed in double, so exactly the float nearest 0.01 */
    /* HD = 8, theta = 1e6: [1, 1e6^-0.25, 1e6^-0.5, 1e6^-0.75] = [1, 0.0316227766, 0.001, 3.16227766e-5] */
    float inv8[4];
    rope_inv_freq(inv8, 8, 1e6);
    const double want8[4] = {1, 0.0316227766, 0.001, 3.16227766e-5};
    for (int i = 0; i < 4; i++) assert_close(inv8[i] / want8[i], 1.0, "inv_freq hd8 ratio", i);
}

static void test_rope_values(void **state) {
    (void)state;
    const float inv[2] = {1.0f, 0.01f};
    /* pos 0: every angle is 0, cos 1, sin 0: the identity, exactly */
    float x0[4] = {1, 2, 3, 4};
    rope_forward(x0, 1, 1, 4, 0, inv);
    const float id[4] = {1, 2, 3, 4};
    assert_memory_equal(x0, id, sizeof(id));

    /* pos 1, x = [1, 2, 3, 4]; rotate-half pairs (0, 2) at angle 1 and (1, 3) at angle 0.01.
     * cos 1 = 0.540302306, sin 1 = 0.841470985; cos 0.01 = 0.999950000, sin 0.01 = 0.00999983334
     * out0 = x0 cos1 - x2 sin1       = 0.540302306 - 2.524412954 = -1.984110648
     * out2 = x2 cos1 + x0 sin1       = 1.620906918 + 0.841470985 =  2.462377903
     * out1 = x1 cos.01 - x3 sin.01   = 1.999900000 - 0.039999333 =  1.959900667
     * out3 = x3 cos.01 + x1 sin.01   = 3.999800001 + 0.019999667 =  4.019799668 */
    float x[4] = {1, 2, 3, 4};
    rope_forward(x, 1, 1, 4, 1, inv);
    const double want[4] = {-1.984110648, 1.959900667, 2.462377903, 4.019799668};
    for (int i = 0; i < 4; i++) assert_close(x[i], want[i], "rope pos 1", i);

    /* T = 2 rows start at pos0: rows are positions pos0 and pos0+1; two heads rotate alike */
    float xt[16] = {1, 2, 3, 4, 1, 2, 3, 4, /* t = 0, heads 0 and 1 */ 1, 2, 3, 4, 1, 2, 3, 4};
    rope_forward(xt, 2, 2, 4, 0, inv); // (T=2, nheads=2, HD=4), positions 0 and 1
    assert_memory_equal(xt, id, sizeof(id));
    assert_memory_equal(xt + 4, id, sizeof(id));
    assert_memory_equal(xt + 8, x, sizeof(x));
    assert_memory_equal(xt + 12, x, sizeof(x));
}

static void test_rope_rotate_half_not_interleaved(void **state) {
    (void)state;
    /* x = e0 at pos 1. Rotate-half pairs 0 with 2: out = [cos1, 0, sin1, 0] = [0.540302306, 0, 0.841470985, 0].
     * The interleaved (GPT-J) layout would pair 0 with 1: [cos1, sin1, 0, 0]. */
    const float inv[2] = {1.0f, 0.01f};
    float x[4] = {1, 0, 0, 0};
    rope_forward(x, 1, 1, 4, 1, inv);
    assert_close(x[0], 0.540302306, "rope e0", 0);
    assert_true(x[1] == 0.0f);
    assert_close(x[2], 0.841470985, "rope e0", 2);
    assert_true(x[3] == 0.0f);
}

static void test_rope_angle_in_float(void **state) {
    (void)state;
    /* The angle is (float)pos * inv_freq in fp32 (as transformers forms it), then cos/sin in double.
     * At pos 12345 with inv_freq 0.01f: fp32 product 123.449997, exact product 123.4499972, and
     * 12345 * 0.01 in double 123.45; the three give three different fp32 cosines (-0.5995293,
     * -0.5995291, -0.5995269), so this pins the convention. */
    const float inv[2] = {1.0f, 0.01f};
    float x[4] = {0, 1, 0, 0}; /* pair (1, 3) at angle pos * 0.01f: out1 = cos, out3 = sin */
    rope_forward(x, 1, 1, 4, 12345, inv);
    float angle = 12345.0f * 0.01f;
    assert_true(x[1] == (float)cos((double)angle));
    assert_true(x[3] == (float)sin((double)angle));
    assert_true(x[1] != (float)cos(12345.0 * (double)0.01f)); /* the alternatives really differ */
    assert_true(x[1] != (float)cos(12345.0 * 0.01));
}

// ----------------------------------------------------------------------------
// attention

static void test_attention_values_and_scale(void **state) {
    (void)state;
    /* NH = NKV = 1, HD = 4, one query at pos0 = 1 over keys 0, 1. scale = 4^-0.5 = 0.5.
     * q = [1,1,0,0]; k0 = 0 -> score 0; k1 = [1,1,0,0] -> q.k1 = 2, * 0.5 = 1.
     * softmax([0, 1]) = [1/(1+e), e/(1+e)] = [0.268941421, 0.731058579]
     * v0 = [1, 2, 0, 0], v1 = [3, -1, 0, 4]:
     * out = [p0 + 3 p1, 2 p0 - p1, 0, 4 p1] = [2.462117157, -0.193175737, 0, 2.924234315] */
    const float q[4] = {1, 1, 0, 0};
    const float k[8] = {0, 0, 0, 0, 1, 1, 0, 0}; // (max_seq=2, NKV=1, HD=4)
    const float v[8] = {1, 2, 0, 0, 3, -1, 0, 4};
    const double want[4] = {2.462117157, -0.193175737, 0, 2.924234315};
    for (int accum = QD_ACCUM_F32; accum <= QD_ACCUM_F64; accum++) {
        float out[4];
        assert_int_equal(attention_forward(out, q, k, v, 1, 1, 1, 1, 4, (qd_accum)accum, NULL), QD_OK);
        for (int i = 0; i < 4; i++) assert_close(out[i], want[i], "attention", i);
    }
}

static void test_attention_causal(void **state) {
    (void)state;
    /* T = 3 queries at positions 0..2 (pos0 = 0); changing key/value 2 must leave queries 0 and 1
     * bitwise unchanged and change query 2. Query 0 sees only key 0, so its output is v0 exactly. */
    enum { T = 3, HD = 2 };
    const float q[T * HD] = {1, 0, 0, 1, 1, 1};
    float k[T * HD] = {1, 0, 0, 1, 1, 1};
    float v[T * HD] = {1, 2, 3, 4, 5, 6};
    float out_a[T * HD], out_b[T * HD];
    assert_int_equal(attention_forward(out_a, q, k, v, T, 0, 1, 1, HD, QD_ACCUM_F32, NULL), QD_OK);
    assert_true(out_a[0] == 1.0f && out_a[1] == 2.0f); /* softmax of one score is exactly 1 */
    k[4] = 50, k[5] = -50, v[4] = 100, v[5] = -100;
    assert_int_equal(attention_forward(out_b, q, k, v, T, 0, 1, 1, HD, QD_ACCUM_F32, NULL), QD_OK);
    assert_memory_equal(out_a, out_b, 2 * HD * sizeof(float));
    assert_memory_not_equal(out_a + 2 * HD, out_b + 2 * HD, HD * sizeof(float));

    /* the same queries one at a time (pos0 = 0, 1, 2 with T = 1) give the same rows bitwise */
    for (int t = 0; t < T; t++) {
        float row[HD];
        assert_int_equal(attention_forward(row, q + t * HD, k, v, 1, t, 1, 1, HD, QD_ACCUM_F32, NULL), QD_OK);
        assert_memory_equal(row, out_b + t * HD, sizeof(row));
    }
}

static void test_attention_gqa_mapping(void **state) {
    (void)state;
    /* NH = 4, NKV = 2, HD = 2; one query at pos0 = 1 over keys 0, 1. All keys are 0, so every score is
     * 0 and the weights are uniform [0.5, 0.5]: out = mean of the two values of the kv head read.
     * kv head 0: v = [2, 4], [4, 8]     -> [3, 6]
     * kv head 1: v = [10, 20], [30, 40] -> [20, 30]
     * h / (NH/NKV): heads 0, 1 read kv 0 and heads 2, 3 read kv 1 (h % NKV would give 0, 1, 0, 1). */
    const float q[8] = {1, 2, 3, 4, 5, 6, 7, 8}; // (T=1, NH=4, HD=2)
    const float k[8] = {0};                      // (max_seq=2, NKV=2, HD=2)
    const float v[8] = {2, 4, 10, 20, /* pos 0: kv 0, kv 1 */ 4, 8, 30, 40 /* pos 1 */};
    const float want[8] = {3, 6, 3, 6, 20, 30, 20, 30};
    for (int accum = QD_ACCUM_F32; accum <= QD_ACCUM_F64; accum++) {
        float out[8];
        assert_int_equal(attention_forward(out, q, k, v, 1, 1, 4, 2, 2, (qd_accum)accum, NULL), QD_OK);
        assert_memory_equal(out, want, sizeof(want)); /* exact: 0.5*2 + 0.5*4 etc. */
    }
}

static void test_attention_huge_scores(void **state) {
    (void)state;
    /* HD = 4 (scale 0.5), q = e0. Scores 10000 and 10001: expf(10000) overflows, so only the subtracted
     * max keeps them finite: softmax = [1/(1+e), e/(1+e)] = [0.268941421, 0.731058579].
     * With v0 = [1,0,0,0], v1 = [0,1,0,0] the output is those two probabilities. */
    const float q[4] = {1, 0, 0, 0};
    const float kp[8] = {20000, 0, 0, 0, 20002, 0, 0, 0};
    /* scores -10000 and -10001: a max started at 0 instead of -inf would underflow every exp to 0 and
     * divide 0 by 0; softmax = [e/(1+e), 1/(1+e)] = [0.731058579, 0.268941421] */
    const float kn[8] = {-20000, 0, 0, 0, -20002, 0, 0, 0};
    const float v[8] = {1, 0, 0, 0, 0, 1, 0, 0};
    for (int accum = QD_ACCUM_F32; accum <= QD_ACCUM_F64; accum++) {
        float out[4];
        assert_int_equal(attention_forward(out, q, kp, v, 1, 1, 1, 1, 4, (qd_accum)accum, NULL), QD_OK);
        assert_close(out[0], 0.268941421, "attention +1e4", 0);
        assert_close(out[1], 0.731058579, "attention +1e4", 1);
        assert_int_equal(attention_forward(out, q, kn, v, 1, 1, 1, 1, 4, (qd_accum)accum, NULL), QD_OK);
        assert_close(out[0], 0.731058579, "attention -1e4", 0);
        assert_close(out[1], 0.268941421, "attention -1e4", 1);
    }
}

// ----------------------------------------------------------------------------
// SwiGLU and residual

static void test_swiglu(void **state) {
    (void)state;
    /* silu(g) = g / (1 + e^-g):
     * silu(0) = 0;  silu(1) = 1/(1 + 0.367879441) = 0.731058579;  silu(-2) = -2/(1 + 7.389056099) = -0.238405844
     * silu(ln 3) = ln3 / (1 + 1/3) = 0.75 * 1.098612289 = 0.823959217
     * up = [5, 2, -3, 0.5]: out = [0, 1.462117157, 0.715217531, 0.411979608]
     * silu(-200): e^200 overflows float to inf, -200/inf = -0: a zero, not a NaN */
    const float g[5] = {0, 1, -2, 1.098612289f, -200};
    const float u[5] = {5, 2, -3, 0.5f, 1};
    const double want[5] = {0, 1.462117157, 0.715217531, 0.411979608, 0};
    float out[5];
    swiglu_forward(out, g, u, 5);
    for (int i = 0; i < 5; i++) assert_close(out[i], want[i], "swiglu", i);
    assert_true(out[4] == 0.0f);
}

static void test_residual(void **state) {
    (void)state;
    float a[3] = {1, 2, 0.5f};
    const float b[3] = {3, -5, 0.25f}, want[3] = {4, -3, 0.75f};
    float out[3];
    residual_forward(out, a, b, 3);
    assert_memory_equal(out, want, sizeof(want));
    residual_forward(a, a, b, 3); /* out aliases a */
    assert_memory_equal(a, want, sizeof(want));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_matmul_hf_layout),
        cmocka_unit_test(test_accum_f64_matches_exact),
        cmocka_unit_test(test_rope_inv_freq),
        cmocka_unit_test(test_rope_values),
        cmocka_unit_test(test_rope_rotate_half_not_interleaved),
        cmocka_unit_test(test_rope_angle_in_float),
        cmocka_unit_test(test_attention_values_and_scale),
        cmocka_unit_test(test_attention_causal),
        cmocka_unit_test(test_attention_gqa_mapping),
        cmocka_unit_test(test_attention_huge_scores),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_residual),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
