/* test_emu.c: emu follows the precision contract (docs/PRECISION.md) and otherwise computes the same
 * function as the reference. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qd_bf16.h"
#include "qd_emu.h"
#include "qd_ref.h"
#include "qd_test_model.h"

/* The shared small model (tests/qd_test_model.h), tied or not. */
static void make_small(qd_weights *w, int tied, uint64_t seed) {
    qd_config c = small_cfg(tied);
    make_model(w, &c, seed);
}

static const int32_t prompt[] = {5, 17, 3, 99, 42, 0, 127, 64, 8, 1, 77, 31};
enum { T = sizeof prompt / sizeof prompt[0] };

static void run_ref(const qd_weights *w, recorder *rec) {
    qd_err e;
    qd_ref_opts o = {.threads = 0, .accum = QD_ACCUM_F32, .max_seq = T};
    qd_ref *r = qd_ref_create(w, &o, &e);
    assert_non_null(r);
    float *logits = malloc((size_t)T * w->cfg.vocab_size * sizeof(float));
    assert_int_equal(qd_ref_prefill(r, prompt, T, logits, &rec->sink, &e), QD_OK);
    free(logits);
    qd_ref_free(r);
}

/* emu with the precision points of fp32_points kept in fp32 (0: the contract). */
static void run_emu_points(const qd_weights *w, qd_act_dtype act, unsigned fp32_points, recorder *rec) {
    qd_err e;
    qd_emu *m = qd_emu_create(w, act, 0, T, NULL, &e);
    assert_non_null(m);
    qd_emu_set_fp32_points(m, fp32_points);
    const qd_config *c = &w->cfg;
    float *h = malloc((size_t)T * c->hidden_size * sizeof(float));
    float *h2 = malloc((size_t)T * c->hidden_size * sizeof(float));
    float *logits = malloc((size_t)T * c->vocab_size * sizeof(float));
    assert_int_equal(qd_emu_embed(m, prompt, T, h, &rec->sink, &e), QD_OK);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        assert_int_equal(qd_emu_layer(m, l, h, h2, T, 0, &rec->sink, &e), QD_OK);
        memcpy(h, h2, (size_t)T * c->hidden_size * sizeof(float));
    }
    assert_int_equal(qd_emu_head(m, h, T, logits, &rec->sink, &e), QD_OK);
    free(h);
    free(h2);
    free(logits);
    qd_emu_free(m);
}

static void run_emu(const qd_weights *w, qd_act_dtype act, recorder *rec) { run_emu_points(w, act, 0, rec); }

/* With fp32 activations emu is the reference computed another way (P.V accumulated before dividing by the
 * softmax sum instead of after): every tap agrees to float32 rounding. */
static void test_emu_fp32_matches_reference(void **state) {
    (void)state;
    qd_weights w;
    make_small(&w, 1, 7);
    recorder a, b;
    recorder_init(&a);
    recorder_init(&b);
    run_ref(&w, &a);
    run_emu(&w, QD_ACT_FP32, &b);
    assert_int_equal(a.n, b.n);
    double worst = 0;
    for (int i = 0; i < a.n; i++) {
        assert_int_equal(a.layer[i], b.layer[i]);
        assert_string_equal(a.name[i], b.name[i]);
        assert_int_equal(a.count[i], b.count[i]);
        double r = rel_l2(b.data[i], a.data[i], a.count[i]);
        if (r > worst) worst = r;
    }
    /* Bound: float32 reassociation of the attention normalisation only; measured worst 6.5e-7 (3 layers,
     * extreme k_norm on layer 0), bound 3x that. */
    printf("# emu(fp32) vs ref: worst rel_l2 %.3g\n", worst);
    assert_true(worst < 2e-6);
    recorder_free(&a);
    recorder_free(&b);
    qd_weights_free(&w);
}

/* Every bf16 tap holds values representable in bf16 (each was rounded where the contract stores it);
 * logits are fp32 by contract and are not. */
static void test_emu_bf16_taps_are_bf16(void **state) {
    (void)state;
    qd_weights w;
    make_small(&w, 0, 11);
    recorder r;
    recorder_init(&r);
    run_emu(&w, QD_ACT_BF16, &r);
    assert_int_equal(r.n, 3 * 17 + 3);
    int logits_seen = 0, logits_not_bf16 = 0;
    for (int i = 0; i < r.n; i++) {
        int is_logits = strcmp(r.name[i], "logits") == 0;
        for (size_t j = 0; j < r.count[i]; j++) {
            float x = r.data[i][j];
            if (is_logits) {
                logits_not_bf16 += x != qd_round_bf16(x);
            } else if (x != qd_round_bf16(x)) {
                fail_msg("tap %s of layer %d: element %zu = %.9g is not a bf16 value", r.name[i], r.layer[i], j, x);
            }
        }
        logits_seen += is_logits;
    }
    assert_int_equal(logits_seen, 1);
    assert_true(logits_not_bf16 > 0); /* fp32 logits: most are not bf16 values */
    recorder_free(&r);
    qd_weights_free(&w);
}

/* bf16 activations differ from the fp32 reference by the contract's rounding, no more and no less:
 * each tap's relative L2 lies between a fraction of one bf16 rounding (2^-9 relative) and a few percent. */
static void test_emu_bf16_error_is_rounding_sized(void **state) {
    (void)state;
    qd_weights w;
    make_small(&w, 1, 13);
    recorder a, b;
    recorder_init(&a);
    recorder_init(&b);
    run_ref(&w, &a);
    run_emu(&w, QD_ACT_BF16, &b);
    assert_int_equal(a.n, b.n);
    double worst = 0, best = 1;
    for (int i = 0; i < a.n; i++) {
        if (strcmp(a.name[i], "embed") == 0) { /* exact: bf16 weights */
            assert_memory_equal(a.data[i], b.data[i], a.count[i] * sizeof(float));
            continue;
        }
        double r = rel_l2(b.data[i], a.data[i], a.count[i]);
        if (r > worst) worst = r;
        if (r < best) best = r;
    }
    printf("# emu(bf16) vs ref: rel_l2 from %.3g to %.3g\n", best, worst);
    /* Lower bound: a rounded tensor is at least ~0.3 of a half-ulp (2^-9 / sqrt(3) RMS relative ~ 1.1e-3)
     * away on average; 1e-4 leaves an order of magnitude. Upper bound: 5e-2, above published bf16-vs-fp32
     * per-layer figures for correct implementations (max 2.7 %, logits 2.85 %). */
    assert_true(best > 1e-4);
    assert_true(worst < 5e-2);
    recorder_free(&a);
    recorder_free(&b);
    qd_weights_free(&w);
}

/* Feeding another backend's fp32 hidden state rounds it on entry, as storing it on the device would. */
static void test_emu_rounds_input(void **state) {
    (void)state;
    qd_weights w;
    make_small(&w, 1, 17);
    qd_err e;
    const qd_config *c = &w.cfg;
    qd_emu *m1 = qd_emu_create(&w, QD_ACT_BF16, 0, T, NULL, &e), *m2 = qd_emu_create(&w, QD_ACT_BF16, 0, T, NULL, &e);
    assert_non_null(m1);
    assert_non_null(m2);
    size_t n = (size_t)T * c->hidden_size;
    float *h = malloc(n * sizeof(float)), *hr = malloc(n * sizeof(float));
    float *o1 = malloc(n * sizeof(float)), *o2 = malloc(n * sizeof(float));
    rng_state = 99;
    for (size_t i = 0; i < n; i++) {
        h[i] = (float)rng_normal();
        hr[i] = qd_round_bf16(h[i]);
    }
    assert_int_equal(qd_emu_layer(m1, 0, h, o1, T, 0, NULL, &e), QD_OK);
    assert_int_equal(qd_emu_layer(m2, 0, hr, o2, T, 0, NULL, &e), QD_OK);
    assert_memory_equal(o1, o2, n * sizeof(float));
    free(h);
    free(hr);
    free(o1);
    free(o2);
    qd_emu_free(m1);
    qd_emu_free(m2);
    qd_weights_free(&w);
}

/* bf16 weights (every released checkpoint) are read in place, others are rounded into emu's own copy;
 * either way the arithmetic sees the same bf16 values. w2 holds w's values nudged up by less than half a
 * bf16 ulp (x * (1 + 2^-12): bf16 keeps 8 significant bits), so it is not bf16 but rounds back to w:
 * the emu that copies and rounds w2 must give bitwise the logits of the emu that reads w in place. */
static void test_emu_shares_bf16_weights(void **state) {
    (void)state;
    qd_weights w, w2;
    make_small(&w, 0, 23);
    make_small(&w2, 0, 23);
    for (size_t i = 0; i < w2.mem_floats; i++) w2.mem[i] *= 1.0f + 0x1p-12f;
    assert_true(w2.mem[0] != w.mem[0] && qd_round_bf16(w2.mem[0]) == w.mem[0]);
    qd_err e;
    qd_emu *a = qd_emu_create(&w, QD_ACT_BF16, 0, T, NULL, &e), *b = qd_emu_create(&w2, QD_ACT_BF16, 0, T, NULL, &e);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(qd_emu_shares_weights(a), 1);
    assert_int_equal(qd_emu_shares_weights(b), 0);
    const qd_config *c = &w.cfg;
    size_t n = (size_t)T * c->hidden_size, nl = (size_t)T * c->vocab_size;
    float *h = malloc(n * sizeof(float)), *h2 = malloc(n * sizeof(float)), *la = malloc(nl * sizeof(float));
    float *lb = malloc(nl * sizeof(float));
    qd_emu *m[2] = {a, b};
    float *lg[2] = {la, lb};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(qd_emu_embed(m[k], prompt, T, h, NULL, &e), QD_OK);
        for (int l = 0; l < c->num_hidden_layers; l++) {
            assert_int_equal(qd_emu_layer(m[k], l, h, h2, T, 0, NULL, &e), QD_OK);
            memcpy(h, h2, n * sizeof(float));
        }
        assert_int_equal(qd_emu_head(m[k], h, T, lg[k], NULL, &e), QD_OK);
    }
    assert_memory_equal(la, lb, nl * sizeof(float));
    free(h);
    free(h2);
    free(la);
    free(lb);
    qd_emu_free(a);
    qd_emu_free(b);
    qd_weights_free(&w);
    qd_weights_free(&w2);
}

// ----------------------------------------------------------------------------
// precision points (qd_emu_set_fp32_points)

/* Index of the first tap where two recordings of the same run differ bitwise; b->n if none. */
static int first_difference(const recorder *a, const recorder *b) {
    assert_int_equal(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        assert_int_equal(a->count[i], b->count[i]);
        if (memcmp(a->data[i], b->data[i], a->count[i] * sizeof(float)) != 0) return i;
    }
    return a->n;
}

static int holds_non_bf16(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (x[i] != qd_round_bf16(x[i])) return 1;
    return 0;
}

/* An empty mask is the contract bitwise (also after another mask was set and cleared); every point kept in
 * fp32 is an fp32 run bitwise (the prompt's 12 keys fit one key tile of either kernel). */
static void test_emu_fp32_points_empty_and_all(void **state) {
    (void)state;
    qd_weights w;
    make_small(&w, 1, 31);
    recorder base, empty, all, f32;
    recorder_init(&base);
    recorder_init(&empty);
    recorder_init(&all);
    recorder_init(&f32);
    run_emu(&w, QD_ACT_BF16, &base);
    qd_err e;
    qd_emu *m = qd_emu_create(&w, QD_ACT_BF16, 0, T, NULL, &e);
    assert_non_null(m);
    qd_emu_set_fp32_points(m, qd_precision_points_all());
    qd_emu_set_fp32_points(m, 0);
    const qd_config *c = &w.cfg;
    float *h = malloc((size_t)T * c->hidden_size * sizeof(float)),
          *h2 = malloc((size_t)T * c->hidden_size * sizeof(float));
    float *logits = malloc((size_t)T * c->vocab_size * sizeof(float));
    assert_int_equal(qd_emu_embed(m, prompt, T, h, &empty.sink, &e), QD_OK);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        assert_int_equal(qd_emu_layer(m, l, h, h2, T, 0, &empty.sink, &e), QD_OK);
        memcpy(h, h2, (size_t)T * c->hidden_size * sizeof(float));
    }
    assert_int_equal(qd_emu_head(m, h, T, logits, &empty.sink, &e), QD_OK);
    assert_int_equal(first_difference(&base, &empty), base.n);

    run_emu_points(&w, QD_ACT_BF16, qd_precision_points_all(), &all);
    run_emu(&w, QD_ACT_FP32, &f32);
    assert_int_equal(first_difference(&all, &f32), all.n);
    assert_true(first_difference(&base, &all) < base.n); /* and that is not the bf16 run */
    free(h);
    free(h2);
    free(logits);
    qd_emu_free(m);
    recorder_free(&base);
    recorder_free(&empty);
    recorder_free(&all);
    recorder_free(&f32);
    qd_weights_free(&w);
}

/* One point in fp32: every tap before the point's first tap in layer 0 is the contract's bitwise, the
 * point's tap is the first to change, and where the point is that tap's rounding the tap holds values that
 * bf16 cannot (its output stayed unrounded). qk is fp32 in the contract: the run does not change. */
static void test_emu_fp32_point_unrounded(void **state) {
    (void)state;
    qd_weights w;
    make_small(&w, 0, 37);
    recorder base;
    recorder_init(&base);
    run_emu(&w, QD_ACT_BF16, &base);
    for (int p = 0; p < QD_NUM_PRECISION_POINTS; p++) {
        const qd_precision_point_info *pi = qd_precision_point_info_of(p);
        recorder r;
        recorder_init(&r);
        run_emu_points(&w, QD_ACT_BF16, 1u << p, &r);
        int d = first_difference(&base, &r);
        if (!pi->rounds) {
            assert_int_equal(d, base.n);
            recorder_free(&r);
            continue;
        }
        assert_true(d < base.n);
        /* the first tap the point reaches: embed is exact for bf16 weights and the entry rounding then the
         * identity, so the residual stream first shows at attn_residual */
        const char *want = p == QD_PT_RESIDUAL ? "attn_residual" : p == QD_PT_SOFTMAX ? "attn" : pi->name;
        int want_layer = p == QD_PT_FINAL_NORM ? -1 : 0;
        if (strcmp(r.name[d], want) != 0 || r.layer[d] != want_layer)
            fail_msg("point %s: first change at layer %d %s, expected layer %d %s", pi->name, r.layer[d], r.name[d],
                     want_layer, want);
        /* P in fp32 feeds a product whose output is still rounded; every other point is its tap's rounding */
        assert_int_equal(holds_non_bf16(r.data[d], r.count[d]), p != QD_PT_SOFTMAX);
        recorder_free(&r);
    }
    recorder_free(&base);
    qd_weights_free(&w);
}

/* --fp32-ops' names: the tap names, ignoring case and '_', the aliases, all and none; a bad name is one
 * line naming it. */
static void test_emu_fp32_points_parse(void **state) {
    (void)state;
    qd_err e;
    unsigned mask;
    assert_int_equal(qd_precision_points_parse("knorm,Softmax", &mask, &e), QD_OK);
    assert_int_equal(mask, 1u << QD_PT_K_NORM | 1u << QD_PT_SOFTMAX);
    assert_int_equal(qd_precision_points_parse("pv,q_rope,scores", &mask, &e), QD_OK);
    assert_int_equal(mask, 1u << QD_PT_ATTN | 1u << QD_PT_Q_ROPE | 1u << QD_PT_QK);
    assert_int_equal(qd_precision_points_parse("all", &mask, &e), QD_OK);
    assert_int_equal(mask, qd_precision_points_all());
    assert_false(mask >> QD_PT_QK & 1u); /* nothing to keep: the scores are fp32 already */
    assert_int_equal(qd_precision_points_parse("none", &mask, &e), QD_OK);
    assert_int_equal(mask, 0);
    char buf[256];
    qd_precision_points_format(1u << QD_PT_RESIDUAL | 1u << QD_PT_FINAL_NORM, buf, sizeof buf);
    assert_string_equal(buf, "residual,final_norm");
    qd_precision_points_format(0, buf, sizeof buf);
    assert_string_equal(buf, "none");
    qd_err_clear(&e);
    assert_int_equal(qd_precision_points_parse("k_norm,bogus", &mask, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "'bogus'"));
    assert_null(strchr(e.msg, '\n'));
    qd_err_clear(&e);
    assert_int_equal(qd_precision_points_parse("k_norm,,act", &mask, &e), QD_EINPUT); /* an empty name */
    assert_non_null(strstr(e.msg, "''"));
}

/* A sink that refuses the n-th tap (0-based) with a message of its own. */
typedef struct {
    int n, fail_at;
} refusing_sink;

static int refuse_emit(qd_tap_sink *self, qd_tap_id id, const float *data, int ndim, const int64_t *shape, qd_err *e) {
    (void)data, (void)ndim, (void)shape;
    refusing_sink *r = self->ctx;
    if (r->n++ == r->fail_at)
        return qd_errf(e, QD_ERUNTIME, "disk full at %s of layer %d", qd_tap_id_name(id), id.layer);
    return QD_OK;
}

/* A failing sink stops emu at that tap; the step returns the sink's code with the sink's message. Bad
 * positions are QD_EINPUT with a message naming the layer and the positions. */
static void test_emu_sink_error_stops(void **state) {
    (void)state;
    qd_weights w;
    make_small(&w, 1, 29);
    const qd_config *c = &w.cfg;
    qd_err e;
    qd_err_clear(&e);
    qd_emu *m = qd_emu_create(&w, QD_ACT_BF16, 0, T, NULL, &e);
    assert_non_null(m);
    size_t n = (size_t)T * c->hidden_size;
    float *h = malloc(n * sizeof(float)), *h2 = malloc(n * sizeof(float));
    float *logits = malloc((size_t)T * c->vocab_size * sizeof(float));
    refusing_sink r = {0, 0};
    qd_tap_sink sink = {refuse_emit, &r};

    assert_int_equal(qd_emu_embed(m, prompt, T, h, &sink, &e), QD_ERUNTIME);
    assert_int_equal(e.code, QD_ERUNTIME);
    assert_string_equal(e.msg, "disk full at embed of layer -1");

    qd_err_clear(&e);
    r = (refusing_sink){0, QD_TAP_K_NORM};
    assert_int_equal(qd_emu_layer(m, 1, h, h2, T, 0, &sink, &e), QD_ERUNTIME);
    assert_int_equal(r.n, QD_TAP_K_NORM + 1); /* nothing emitted after the refused tap */
    assert_string_equal(e.msg, "disk full at k_norm of layer 1");

    qd_err_clear(&e);
    r = (refusing_sink){0, 1};
    assert_int_equal(qd_emu_head(m, h, T, logits, &sink, &e), QD_ERUNTIME);
    assert_int_equal(r.n, 2);
    assert_string_equal(e.msg, "disk full at logits of layer -1");

    qd_err_clear(&e);
    assert_int_equal(qd_emu_layer(m, 0, h, h2, 2, T - 1, NULL, &e), QD_EINPUT);
    assert_int_equal(e.code, QD_EINPUT);
    char want[96];
    snprintf(want, sizeof want, "emu: layer 0: positions %d..%d exceed the KV cache", T - 1, T);
    assert_string_equal(e.msg, want);
    qd_err_clear(&e);
    assert_int_equal(qd_emu_embed(m, prompt, T + 1, h, NULL, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "max_seq"));

    free(h);
    free(h2);
    free(logits);
    qd_emu_free(m);
    qd_weights_free(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_emu_fp32_matches_reference),
        cmocka_unit_test(test_emu_bf16_taps_are_bf16),
        cmocka_unit_test(test_emu_bf16_error_is_rounding_sized),
        cmocka_unit_test(test_emu_rounds_input),
        cmocka_unit_test(test_emu_shares_bf16_weights),
        cmocka_unit_test(test_emu_sink_error_stops),
        cmocka_unit_test(test_emu_fp32_points_empty_and_all),
        cmocka_unit_test(test_emu_fp32_point_unrounded),
        cmocka_unit_test(test_emu_fp32_points_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
