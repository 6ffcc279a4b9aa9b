/* test_replay.c: op replay (compare/qd_replay.h) and the replay verdict.
 *
 * - emu replayed by its own contract: local error == noise floor, bitwise (ratio exactly 1 or 0);
 * - the reference replayed: ratio <= 1 (its f32 maths is the fp32 contract exactly);
 * - every fault of the selftest's catalog (compare/selftest.c's table: fixture, variant, prompt, layer),
 *   injected into emu, is the first divergence at its step, layer and op by the replay verdict alone, live
 *   (free-running and teacher-forced) and offline (the dump of emu, replayed on its own);
 * - a faulty reference side (A = emu fp32 with a fault, B = emu bf16 clean) is flagged on A;
 * - clean ref vs emu on every fixture, --isolate --decode 16: no divergence.
 * Each case prints its ratio, the figures docs/TOLERANCES.md quotes. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "qd_backend.h"
#include "qd_compare.h"
#include "qd_dump.h"
#include "qd_selftest.h"
#include "qd_tokens.h"
#include "qd_weights.h"

static const char *fixtures(void) {
    const char *fx = getenv("QD_FIXTURES");
    return fx ? fx : "fixtures";
}

/* The context of a selftest case: its fixture's weights (with its variant) and its prompt, as selftest.c's
 * load_context builds them (the tiny row: the token at position 2 gets its embedding row scaled by 1e-3). */
static void load_case(const qd_selftest_case *c, qd_weights *w, int32_t **tokens, int *T) {
    char dir[4096], arg[4200];
    qd_err e;
    qd_err_clear(&e);
    snprintf(dir, sizeof dir, "%s/%s", fixtures(), c->fixture);
    assert_int_equal(qd_weights_load(dir, w, &e), QD_OK);
    if (c->prompt_len > 0) {
        *T = c->prompt_len;
        *tokens = malloc((size_t)*T * sizeof **tokens);
        assert_non_null(*tokens);
        qd_calib_prompt(c->prompt_seed, *T, w->cfg.vocab_size, *tokens);
    } else {
        snprintf(arg, sizeof arg, "@%s/prompt.txt", dir);
        assert_int_equal(qd_tokens_parse(arg, w->cfg.vocab_size, tokens, T, &e), QD_OK);
    }
    if (c->variant == QD_VARIANT_TINY_ROW) {
        float *row = w->embed + (size_t)(*tokens)[2] * w->cfg.hidden_size; /* (C) */
        for (int i = 0; i < w->cfg.hidden_size; i++) row[i] *= 1e-3f;
    }
}

static qd_backend *make(const char *name, const qd_weights *w, int max_seq, const char *act, qd_fault f) {
    qd_err e;
    qd_err_clear(&e);
    qd_backend_opts o = {.max_seq = max_seq, .act = act, .fault = f};
    qd_backend *b = qd_backend_create(name, w, &o, &e);
    if (!b) fprintf(stderr, "%s\n", e.msg);
    assert_non_null(b);
    return b;
}

/* A lockstep of a vs b (bi: isolated, may be NULL) judged by the replay; dump: NULL or a file to write. */
static void run_pair(qd_backend *a, qd_backend *b, qd_backend *bi, const qd_weights *w, const int32_t *tokens, int T,
                     int decode, const char *dump, qd_report *r) {
    qd_err e;
    qd_err_clear(&e);
    qd_tolerances tol;
    assert_int_equal(qd_tolerances_default(&tol, b->precision, a->precision, &e), QD_OK);
    qd_dump *d = NULL;
    if (dump) {
        d = qd_dump_create(dump, w->dir, w->config_json, tokens, T, 0, &e);
        assert_non_null(d);
    }
    qd_report_init(r, a->name, a->precision, b->name, b->precision, w->cfg.num_hidden_layers, QD_MODE_FREE,
                   &tol.blowup);
    qd_lockstep_opts o = {.tokens = tokens,
                          .T = T,
                          .decode = decode,
                          .tol = &tol,
                          .locate = QD_MODE_FREE,
                          .dump = d,
                          .dump_window = -1,
                          .judge = {.w = w}};
    int rc = qd_lockstep(a, b, bi, &o, r, &e);
    if (rc) fprintf(stderr, "%s\n", e.msg);
    assert_int_equal(rc, QD_OK);
    if (d) assert_int_equal(qd_dump_close(d, 1, &e), QD_OK);
    qd_tolerances_free(&tol);
}

static double row_ratio(const qd_report *r, int i) {
    const qd_tap_row *row = &r->rows[i];
    return row->judged >= 0 ? row->rp[row->judged].ratio : NAN;
}

/* The largest ratio of side k over every row of r. */
static double max_ratio(const qd_report *r, int k) {
    double m = 0;
    for (int i = 0; i < r->n; i++)
        if (r->rows[i].rp[k].have && r->rows[i].rp[k].ratio > m) m = r->rows[i].rp[k].ratio;
    return m;
}

// ----------------------------------------------------------------------------

/* Clean ref vs emu on every fixture, prompt and 16 decode steps, free and isolated: no divergence; emu's
 * local error is its floor bitwise, the reference's ratio is at most 1. */
static void test_clean_fixtures(void **state) {
    (void)state;
    const char *fx[] = {"gqa_tied", "mha_untied", "knorm_extreme", "long_prompt"};
    for (int i = 0; i < 4; i++) {
        qd_selftest_case c = {.fixture = fx[i]};
        qd_weights w;
        int32_t *tokens;
        int T;
        load_case(&c, &w, &tokens, &T);
        const int decode = 16;
        qd_fault none = {QD_FAULT_NONE, -1};
        qd_backend *a = make("ref", &w, T + decode, NULL, none), *b = make("emu", &w, T + decode, NULL, none);
        qd_backend *bi = make("emu", &w, T + decode, NULL, none);
        qd_report r;
        run_pair(a, b, bi, &w, tokens, T, decode, NULL, &r);
        double worst_inherited = r.worst_inherited >= 0 ? r.rows[r.worst_inherited].m.rel_l2 : 0;
        printf("clean %-14s ref max ratio %.3g, emu max ratio %.3g, largest inherited rel_l2 %.3g (%d rows)\n", fx[i],
               max_ratio(&r, 0), max_ratio(&r, 1), worst_inherited, r.n);
        assert_int_equal(r.first_div, -1);
        assert_int_equal(r.first_fail[0], -1);
        assert_int_equal(r.first_fail[1], -1);
        for (int k = 0; k < r.n; k++) {
            const qd_tap_row *row = &r.rows[k];
            assert_true(row->rp[1].have);
            /* emu replayed by emu's ops on emu's own inputs: the same maths, bit for bit; attention's floor is
             * the wider of the fused form (emu's) and the eager form, so there local <= floor */
            if (row->id.pos == QD_POS_LAYER && row->id.tap == QD_TAP_ATTN) {
                assert_true(row->rp[1].local.rel_l2 <= row->rp[1].floor.rel_l2);
            } else {
                assert_true(row->rp[1].local.rel_l2 == row->rp[1].floor.rel_l2);
                assert_true(row->rp[1].local.max_abs == row->rp[1].floor.max_abs);
            }
            assert_true(row->rp[1].ratio <= 1.0);
            /* the reference's own f32 ops are the fp32 contract: local == floor too */
            assert_true(row->rp[0].ratio <= 1.0);
        }
        qd_report_free(&r);
        qd_backend_destroy(a);
        qd_backend_destroy(b);
        qd_backend_destroy(bi);
        free(tokens);
        qd_weights_free(&w);
    }
}

/* Every fault of the selftest's catalog, injected into emu, found at its step, layer and op by the replay
 * verdict, free-running and teacher-forced; then offline, replaying emu's dump on its own. */
static void test_fault_catalog(void **state) {
    (void)state;
    int n;
    const qd_selftest_case *cs = qd_selftest_cases(&n);
    char dump[] = "/tmp/qd_replay_XXXXXX";
    int fd = mkstemp(dump);
    assert_true(fd >= 0);
    close(fd);
    for (int k = 0; k < n; k++) {
        const qd_selftest_case *c = &cs[k];
        qd_weights w;
        int32_t *tokens;
        int T;
        load_case(c, &w, &tokens, &T);
        const int decode = c->step > 0 ? QD_SELFTEST_DECODE : 0;
        qd_fault none = {QD_FAULT_NONE, -1}, f = {c->fault, c->inject};
        qd_backend *a = make("ref", &w, T + decode, NULL, none), *b = make("emu", &w, T + decode, NULL, f);
        qd_backend *bi = make("emu", &w, T + decode, NULL, f);
        qd_report r;
        unlink(dump);
        run_pair(a, b, bi, &w, tokens, T, decode, c->step == 0 ? dump : NULL, &r);
        char found[96];
        const char *name = qd_fault_info_of(c->fault)->name;
        for (int mode = 0; mode < 2; mode++) {
            int ok = qd_selftest_matches(&r, (qd_mode)mode, c->step, c->layer, c->tap, found, sizeof found);
            int i = r.first_fail[mode];
            printf("fault %-24s @%d %-14s %-8s first: %-28s ratio %.3g side %d\n", name, c->inject, c->fixture,
                   qd_mode_name((qd_mode)mode), found, i >= 0 ? row_ratio(&r, i) : NAN, i >= 0 ? r.rows[i].judged : -1);
            assert_true(ok);
            assert_int_equal(r.rows[i].judged, 1); /* on emu, the side the fault is in */
        }
        qd_report_free(&r);
        if (c->step == 0) { /* the dump holds the prompt: emu's group replayed alone */
            qd_err e;
            qd_err_clear(&e);
            qd_replay_judge j = {.w = &w};
            assert_int_equal(qd_replay_file(dump, "emu", &j, &r, &e), QD_OK);
            assert_true(r.first_div >= 0);
            const qd_tap_row *row = &r.rows[r.first_div];
            printf("fault %-24s @%d %-14s offline  first: layer %d, %s ratio %.3g\n", name, c->inject, c->fixture,
                   row->id.layer, qd_tap_id_name(row->id), row->rp[0].ratio);
            assert_int_equal(row->id.layer, c->layer);
            assert_string_equal(qd_tap_id_name(row->id), c->tap);
            qd_report_free(&r);
            /* and the clean reference side of the same dump: nothing */
            assert_int_equal(qd_replay_file(dump, "ref", &j, &r, &e), QD_OK);
            assert_int_equal(r.first_div, -1);
            for (int i = 0; i < r.n; i++) assert_true(r.rows[i].rp[0].ratio <= 1.0);
            qd_report_free(&r);
        }
        qd_backend_destroy(a);
        qd_backend_destroy(b);
        qd_backend_destroy(bi);
        free(tokens);
        qd_weights_free(&w);
    }
    unlink(dump);
}

/* A faulty reference side: A = emu in fp32 with act-gelu@2, B = emu bf16 clean. The replay judges each side
 * on its own, so the divergence is A's, at layer 2, act; the same pair clean passes. */
static void test_faulty_reference_side(void **state) {
    (void)state;
    qd_selftest_case c = {.fixture = "gqa_tied"};
    qd_weights w;
    int32_t *tokens;
    int T;
    load_case(&c, &w, &tokens, &T);
    qd_fault none = {QD_FAULT_NONE, -1}, f = {QD_FAULT_ACT_GELU, 1};
    for (int faulty = 0; faulty < 2; faulty++) {
        qd_backend *a = make("emu", &w, T + 4, "fp32", faulty ? f : none), *b = make("emu", &w, T + 4, NULL, none);
        qd_backend *bi = make("emu", &w, T + 4, NULL, none);
        qd_report r;
        run_pair(a, b, bi, &w, tokens, T, 4, NULL, &r);
        printf("A = emu fp32%s, B = emu bf16: A max ratio %.3g, B max ratio %.3g\n", faulty ? " act-gelu@1" : "",
               max_ratio(&r, 0), max_ratio(&r, 1));
        if (faulty) {
            assert_true(r.first_div >= 0);
            const qd_tap_row *row = &r.rows[r.first_div];
            assert_int_equal(row->judged, 0);
            assert_int_equal(row->step, 0);
            assert_int_equal(row->id.layer, 1);
            assert_int_equal(row->id.tap, QD_TAP_ACT);
        } else {
            assert_int_equal(r.first_div, -1);
        }
        qd_report_free(&r);
        qd_backend_destroy(a);
        qd_backend_destroy(b);
        qd_backend_destroy(bi);
    }
    free(tokens);
    qd_weights_free(&w);
}

/* The floor's least value: one rounding, 2^-(p+1)/sqrt(3). */
static void test_min_floor(void **state) {
    (void)state;
    assert_true(fabs(qd_replay_min_floor("bf16") - ldexp(1, -9) / sqrt(3)) < 1e-18);
    assert_true(fabs(qd_replay_min_floor("fp16") - ldexp(1, -12) / sqrt(3)) < 1e-18);
    assert_true(fabs(qd_replay_min_floor("fp32") - ldexp(1, -25) / sqrt(3)) < 1e-22);
    qd_err e;
    qd_weights w;
    qd_selftest_case c = {.fixture = "gqa_tied"};
    int32_t *tokens;
    int T;
    load_case(&c, &w, &tokens, &T);
    assert_null(qd_replay_create(&w, "int8", NULL, 4, 1, &e));
    assert_int_equal(e.code, QD_EINPUT);
    free(tokens);
    qd_weights_free(&w);
}

/* The same catalog with the roles turned round: the reference side is a faulty fp32 engine (emu in fp32 with
 * the fault) and the side under test a correct bf16 engine (emu, clean). The replay verdict must find each
 * fault at its step, layer and op, on the reference side, although the bf16 side is the noisier one. */
static void test_fault_catalog_reference_side(void **state) {
    (void)state;
    int n;
    const qd_selftest_case *cs = qd_selftest_cases(&n);
    for (int k = 0; k < n; k++) {
        const qd_selftest_case *c = &cs[k];
        const char *name = qd_fault_info_of(c->fault)->name;
        /* the accumulator in the activation's type: in an fp32 engine that is the correct fp32 sum */
        if (c->fault == QD_FAULT_NORM_SUMSQ_LOWP) {
            printf("reference side: %-24s skipped: in fp32 the fault is the correct arithmetic\n", name);
            continue;
        }
        /* emu keeps its weights in bf16; a variant's edited weights (a row scaled by 1e-3) are not bf16 values,
         * so an fp32 emu over them is not an fp32 engine of that checkpoint (its embed alone differs) */
        if (c->variant != QD_VARIANT_NONE) {
            printf("reference side: %-24s @%d %-14s skipped: the variant's weights are not bf16 values\n", name,
                   c->inject, c->fixture);
            continue;
        }
        qd_weights w;
        int32_t *tokens;
        int T;
        load_case(c, &w, &tokens, &T);
        const int decode = c->step > 0 ? QD_SELFTEST_DECODE : 0;
        qd_fault none = {QD_FAULT_NONE, -1}, f = {c->fault, c->inject};
        qd_backend *a = make("emu", &w, T + decode, "fp32", f), *b = make("emu", &w, T + decode, NULL, none);
        qd_report r;
        run_pair(a, b, NULL, &w, tokens, T, decode, NULL, &r);
        char found[96];
        int ok = qd_selftest_matches(&r, QD_MODE_FREE, c->step, c->layer, c->tap, found, sizeof found);
        int i = r.first_fail[QD_MODE_FREE];
        printf("reference side: %-24s @%d %-14s first: %-28s ratio %.3g side %d\n", name, c->inject, c->fixture, found,
               i >= 0 ? row_ratio(&r, i) : NAN, i >= 0 ? r.rows[i].judged : -1);
        assert_true(ok);
        assert_int_equal(r.rows[i].judged, 0); /* on the reference side, where the fault is */
        qd_report_free(&r);
        qd_backend_destroy(a);
        qd_backend_destroy(b);
        free(tokens);
        qd_weights_free(&w);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_min_floor),
        cmocka_unit_test(test_faulty_reference_side),
        cmocka_unit_test(test_clean_fixtures),
        cmocka_unit_test(test_fault_catalog),
        cmocka_unit_test(test_fault_catalog_reference_side),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
