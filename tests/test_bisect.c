/* test_bisect.c: the precision bisection (compare/qd_bisect.h) on the gqa_tied fixture.
 *
 * A gate that only layer 0's q_rope can fail (rel_l2 1e-4, every other tap unbounded) makes the clean
 * ref-vs-emu pair diverge there, and by the contract (docs/PRECISION.md) that tap carries four roundings:
 * attn_norm, q_proj, q_norm and q_rope itself (embed is exact for bf16 weights). Each is ~1e-3 of relative
 * error, ten times the gate, so the 1-minimal set is exactly those four, and no single one fixes it. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qd_bisect.h"
#include "qd_compare.h"
#include "qd_emu.h"
#include "qd_tokens.h"
#include "qd_weights.h"

#define BIT(p) (1u << (p))

typedef struct {
    qd_weights w;
    int32_t *tokens;
    int T;
    qd_tolerances tol;
} fixture;

static fixture fx;

/* Every tap unbounded except layer 0's q_rope; the growth check off (the unbounded taps may grow). */
static void tight_q_rope(qd_tolerances *t) {
    qd_err e;
    assert_int_equal(qd_tolerances_default(t, "bf16", "fp32", &e), QD_OK);
    qd_tol loose = {.rel_l2 = 1.0, .atol = 1e9, .rtol = 1e9};
    assert_int_equal(qd_tolerances_set(t, -1, NULL, &loose, QD_TOL_SET_ALL, &e), QD_OK);
    /* 1e-4: a tenth of one bf16 rounding's relative error (~1e-3), so every rounding on the path counts */
    qd_tol tight = {.rel_l2 = 1e-4, .atol = 1e9, .rtol = 1e9};
    assert_int_equal(qd_tolerances_set(t, 0, "q_rope", &tight, QD_TOL_SET_ALL, &e), QD_OK);
    t->blowup.growth_factor = 1e9;
}

static int setup(void **state) {
    (void)state;
    const char *root = getenv("QD_FIXTURES");
    if (!root) return -1;
    char dir[512], prompt[600];
    snprintf(dir, sizeof dir, "%s/gqa_tied", root);
    snprintf(prompt, sizeof prompt, "@%s/prompt.txt", dir);
    qd_err e;
    qd_err_clear(&e);
    if (qd_weights_load(dir, &fx.w, &e) != QD_OK) return -1;
    if (qd_tokens_parse(prompt, fx.w.cfg.vocab_size, &fx.tokens, &fx.T, &e) != QD_OK) return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    free(fx.tokens);
    qd_weights_free(&fx.w);
    return 0;
}

/* The run the bisection starts from: ref vs emu (with fault, or none) under tol; the report is the caller's. */
static void run_pair(const qd_tolerances *tol, const char *fault, qd_report *r) {
    qd_err e;
    qd_err_clear(&e);
    qd_backend_opts o = {.max_seq = fx.T};
    qd_backend_opts ob = o;
    if (fault) assert_int_equal(qd_fault_parse(fault, &ob.fault, &e), QD_OK);
    qd_backend *a = qd_backend_create("ref", &fx.w, &o, &e), *b = qd_backend_create("emu", &fx.w, &ob, &e);
    assert_non_null(a);
    assert_non_null(b);
    qd_report_init(r, a->name, a->precision, b->name, b->precision, fx.w.cfg.num_hidden_layers, QD_MODE_FREE,
                   &tol->blowup);
    qd_lockstep_opts lo = {.tokens = fx.tokens, .T = fx.T, .tol = tol, .locate = QD_MODE_FREE, .dump_window = -1};
    assert_int_equal(qd_lockstep(a, b, NULL, &lo, r, &e), QD_OK);
    qd_backend_destroy(a);
    qd_backend_destroy(b);
}

static qd_bisect_opts bisect_opts(const qd_tolerances *tol, const qd_report *r, const char *fault) {
    qd_err e;
    qd_bisect_opts o = {.name_a = "ref",
                        .name_b = "emu",
                        .tokens = fx.tokens,
                        .T = fx.T,
                        .tol = tol,
                        .locate = QD_MODE_FREE,
                        .flagged = &r->rows[r->first_div]};
    if (fault) assert_int_equal(qd_fault_parse(fault, &o.opts.fault, &e), QD_OK);
    return o;
}

static const qd_bisect_try *tried(const qd_bisect_result *b, unsigned fp32) {
    for (int i = 0; i < b->n_tried; i++)
        if (b->tried[i].fp32 == fp32) return &b->tried[i];
    return NULL;
}

static void test_bisect_minimal_set(void **state) {
    (void)state;
    qd_tolerances tol;
    tight_q_rope(&tol);
    qd_report r;
    run_pair(&tol, NULL, &r);
    assert_true(qd_report_diverged(&r));
    const qd_tap_row *f = &r.rows[r.first_div];
    assert_int_equal(f->id.layer, 0);
    assert_string_equal(qd_row_tap_name(f), "q_rope");

    qd_bisect_opts o = bisect_opts(&tol, &r, NULL);
    qd_bisect_result *b = malloc(sizeof *b);
    qd_err e;
    qd_err_clear(&e);
    assert_int_equal(qd_precision_bisect(&fx.w, &o, b, &e), QD_OK);
    const unsigned want = BIT(QD_PT_ATTN_NORM) | BIT(QD_PT_Q_PROJ) | BIT(QD_PT_Q_NORM) | BIT(QD_PT_Q_ROPE);
    assert_int_equal(b->outcome, QD_BISECT_MINIMAL);
    assert_int_equal(b->set, want);
    assert_int_equal(b->stand_in, 0);
    /* the run's own row first (not a rerun), then every rerun in tried */
    assert_string_equal(b->tried[0].stage, "run");
    assert_false(b->tried[0].fixed);
    assert_true(b->tried[0].rel_l2 == f->m.rel_l2);
    assert_int_equal(b->reruns, b->n_tried - 1);
    const qd_bisect_try *all = tried(b, b->candidates), *found = tried(b, want);
    assert_non_null(all);
    assert_true(all->fixed);
    assert_non_null(found);
    assert_true(found->fixed);
    /* 1-minimal: the set without any one of its points was tried and fails; no point fixes it alone */
    for (int p = 0; p < QD_NUM_PRECISION_POINTS; p++) {
        if (want >> p & 1u) {
            const qd_bisect_try *t = tried(b, want & ~BIT(p));
            assert_non_null(t);
            assert_false(t->fixed);
        }
        if (b->candidates >> p & 1u) {
            const qd_bisect_try *t = tried(b, BIT(p));
            assert_non_null(t);
            assert_false(t->fixed);
        }
    }
    assert_int_equal(b->also_alone, 0);
    assert_true(b->reruns <= QD_BISECT_DEFAULT_RERUNS);
    free(b);
    qd_report_free(&r);
    qd_tolerances_free(&tol);
}

/* With too few reruns allowed the search stops with a fixing set, not claimed 1-minimal. */
static void test_bisect_rerun_bound(void **state) {
    (void)state;
    qd_tolerances tol;
    tight_q_rope(&tol);
    qd_report r;
    run_pair(&tol, NULL, &r);
    qd_bisect_opts o = bisect_opts(&tol, &r, NULL);
    o.max_reruns = 3;
    qd_bisect_result *b = malloc(sizeof *b);
    qd_err e;
    assert_int_equal(qd_precision_bisect(&fx.w, &o, b, &e), QD_OK);
    assert_int_equal(b->outcome, QD_BISECT_NOT_MINIMAL);
    assert_int_equal(b->reruns, 3);
    assert_int_equal(b->set, b->candidates); /* all of them pass; nothing was removed yet */
    free(b);
    qd_report_free(&r);
    qd_tolerances_free(&tol);
}

/* A bug (GPT-J RoPE pairs) survives every point in fp32: one rerun, no set. */
static void test_bisect_bug_has_no_set(void **state) {
    (void)state;
    qd_tolerances tol;
    tight_q_rope(&tol);
    qd_report r;
    run_pair(&tol, "rope-interleaved@0", &r);
    assert_true(qd_report_diverged(&r));
    assert_string_equal(qd_row_tap_name(&r.rows[r.first_div]), "q_rope");
    qd_bisect_opts o = bisect_opts(&tol, &r, "rope-interleaved@0");
    qd_bisect_result *b = malloc(sizeof *b);
    qd_err e;
    assert_int_equal(qd_precision_bisect(&fx.w, &o, b, &e), QD_OK);
    assert_int_equal(b->outcome, QD_BISECT_NO_SET);
    assert_int_equal(b->reruns, 1);
    assert_int_equal(b->set, 0);
    assert_false(tried(b, b->candidates)->fixed);
    free(b);
    qd_report_free(&r);
    qd_tolerances_free(&tol);
}

/* B must be emu or fused; the bisection chooses the mask itself. */
static void test_bisect_refuses(void **state) {
    (void)state;
    qd_tap_row row = {.step = 0, .id = qd_tap_layer(0, QD_TAP_Q_ROPE), .mode = QD_MODE_FREE};
    qd_tolerances tol;
    qd_err e;
    assert_int_equal(qd_tolerances_default(&tol, "bf16", "fp32", &e), QD_OK);
    qd_bisect_opts o = {.name_a = "emu", .name_b = "ref", .tokens = fx.tokens, .T = fx.T, .tol = &tol, .flagged = &row};
    qd_bisect_result *b = malloc(sizeof *b);
    qd_err_clear(&e);
    assert_int_equal(qd_precision_bisect(&fx.w, &o, b, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "B must be emu or fused"));
    o.name_a = "ref";
    o.name_b = "emu";
    o.opts.fp32_points = BIT(QD_PT_K_NORM);
    qd_err_clear(&e);
    assert_int_equal(qd_precision_bisect(&fx.w, &o, b, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "--fp32-ops"));
    free(b);
    qd_tolerances_free(&tol);
}

/* Which points a tap can see: within its layer those before it, all layer points from an earlier layer or
 * step, final_norm only in the head; teacher-forced at the prompt, a tap sees only its own layer's (or the
 * head's) points; the scores (qk) round nowhere. */
static void test_bisect_reachable(void **state) {
    (void)state;
    const unsigned all = qd_precision_points_all(), layer_pts = all & ~BIT(QD_PT_FINAL_NORM);
    const unsigned to_k_norm = BIT(QD_PT_RESIDUAL) | BIT(QD_PT_ATTN_NORM) | BIT(QD_PT_Q_PROJ) | BIT(QD_PT_K_PROJ) |
                               BIT(QD_PT_V_PROJ) | BIT(QD_PT_Q_NORM) | BIT(QD_PT_K_NORM);
    assert_false(all >> QD_PT_QK & 1u);
    assert_int_equal(qd_bisect_reachable(0, qd_tap_layer(0, QD_TAP_K_NORM), QD_MODE_FREE), to_k_norm);
    assert_int_equal(qd_bisect_reachable(0, qd_tap_layer(2, QD_TAP_K_NORM), QD_MODE_ISOLATED), to_k_norm);
    assert_int_equal(qd_bisect_reachable(0, qd_tap_layer(2, QD_TAP_K_NORM), QD_MODE_FREE), layer_pts);
    assert_int_equal(qd_bisect_reachable(1, qd_tap_layer(0, QD_TAP_ATTN_NORM), QD_MODE_ISOLATED), layer_pts);
    unsigned attn = qd_bisect_reachable(0, qd_tap_layer(0, QD_TAP_ATTN), QD_MODE_FREE);
    assert_true(attn & BIT(QD_PT_SOFTMAX) && attn & BIT(QD_PT_ATTN) && attn & BIT(QD_PT_K_ROPE));
    assert_false(attn & BIT(QD_PT_O_PROJ));
    assert_int_equal(qd_bisect_reachable(0, qd_tap_model(QD_TAP_EMBED), QD_MODE_FREE), BIT(QD_PT_RESIDUAL));
    assert_int_equal(qd_bisect_reachable(0, qd_tap_model(QD_TAP_LOGITS), QD_MODE_FREE), all);
    assert_int_equal(qd_bisect_reachable(0, qd_tap_model(QD_TAP_FINAL_NORM), QD_MODE_ISOLATED),
                     BIT(QD_PT_RESIDUAL) | BIT(QD_PT_FINAL_NORM));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bisect_reachable),   cmocka_unit_test(test_bisect_minimal_set),
        cmocka_unit_test(test_bisect_rerun_bound), cmocka_unit_test(test_bisect_bug_has_no_set),
        cmocka_unit_test(test_bisect_refuses),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
