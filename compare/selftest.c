/* selftest.c: proving the harness (qd_selftest.h, docs/FAULTS.md): the table of expectations and
 * qd_selftest_run, which checks them. The command line (`qwen3-diff selftest`: its options, table, JSON
 * and exit status) is tools/selftest_cli.c.
 *
 * Order of work per fixture context: load the weights (and apply a variant), bless the clean pair ref vs
 * the backend under test (emu, or fused; qd_bless, 5 prompts, margin 2), run 5 held-out clean prompts in
 * both modes, then every fault whose expectation names this context, injected into that backend. The
 * precision sweeps come last. Nothing here exits or prints: errors travel as qd_err, progress goes to the
 * caller's callback. */
#include "qd_selftest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qd_build_config.h"
#include "qd_tokens.h"
#include "qd_weights.h"

#define ST_DECODE QD_SELFTEST_DECODE
#define ST_CALIB_PROMPTS QD_SELFTEST_CALIB_PROMPTS
#define ST_CLEAN_PROMPTS QD_SELFTEST_CLEAN_PROMPTS
#define ST_MARGIN QD_SELFTEST_MARGIN
#define ST_TINY_SCALE 1e-3f /* the tiny row: rms ~1e-3, mean(x^2) ~1e-6 = eps, where eps's place matters */
#define ST_TINY_POS 2       /* the prompt position whose token gets the tiny row */

// ----------------------------------------------------------------------------
// prompts and the bless step

// ----------------------------------------------------------------------------
// the expectations: one table, with the reason for each

/* Prompt seeds chosen once and kept (the search is described in docs/FAULTS.md):
 *   SEED_SCORES: knorm_extreme layer 0 has a causal score of 104 (> 88.7, where expf overflows fp32)
 *   SEED_1E29:   knorm_extreme layer 1's last key tile lies ~67 below the row max: the seed's 1e29 */
#define SEED_SCORES 2
#define SEED_1E29 24

/* Fused keeps q_norm and k_norm in registers (qk_norm_rope_kernel): its first stored form of k_norm is
 * k_rope, the rotation of k_norm (norm-preserving, so the same relative error). */
#define BOTH NULL, NULL /* the same first divergence on emu and fused */
#define KNORM_FUSED \
    "k_rope", "fused has no k_norm tap (qk_norm_rope_kernel keeps it in registers): k_rope is its rotation"

static const qd_selftest_case cases[] = {
    /* 1 */
    {QD_FAULT_KNORM_MUL, "gqa_tied", 0, 0, 0, 1, 0, 1, "k_norm", "k_proj rows are not unit-rms: k_norm changes by ~15%",
     KNORM_FUSED},
    {QD_FAULT_KNORM_MUL, "mha_untied", 0, 0, 0, 1, 0, 1, "k_norm", "as gqa_tied", KNORM_FUSED},
    {QD_FAULT_KNORM_MUL, "knorm_extreme", 0, 0, 0, 1, 0, 1, "k_norm",
     "k_proj rows have rms ~1, so the missing normalisation moves k_norm by a few %, above the blessed 5%",
     KNORM_FUSED},
    {QD_FAULT_KNORM_MUL, "long_prompt", 0, 0, 0, 1, 0, 1, "k_norm", "as gqa_tied", KNORM_FUSED},
    /* 2 */
    {QD_FAULT_ROPE_INTERLEAVED, "gqa_tied", 0, 0, 0, 1, 0, 1, "q_rope",
     "wrong pairs: q_rope differs at every position > 0", BOTH},
    {QD_FAULT_ROPE_INTERLEAVED, "mha_untied", 0, 0, 0, 1, 0, 1, "q_rope", "as gqa_tied", BOTH},
    {QD_FAULT_ROPE_INTERLEAVED, "knorm_extreme", 0, 0, 0, 1, 0, 1, "q_rope", "as gqa_tied", BOTH},
    {QD_FAULT_ROPE_INTERLEAVED, "long_prompt", 0, 0, 0, 1, 0, 1, "q_rope", "as gqa_tied", BOTH},
    /* 3 */
    {QD_FAULT_ROPE_FREQ_BF16, "long_prompt", 0, 0, 0, 0, 0, 0, "q_rope",
     "angles move by pos * inv_freq * (bf16 error <= 2^-9): ~0.1 rad at pos 300, nothing at short prompts", BOTH},
    /* 4: not on mha_untied (4 on 4) or long_prompt (1 KV head): h mod n_kv == h / group there */
    {QD_FAULT_GQA_MOD, "gqa_tied", 0, 0, 0, 1, 0, 1, "attn", "heads 1 and 2 read the other KV head", BOTH},
    {QD_FAULT_GQA_MOD, "knorm_extreme", 0, 0, 0, 1, 0, 1, "attn", "as gqa_tied", BOTH},
    /* 5 */
    {QD_FAULT_NO_CAUSAL, "gqa_tied", 0, 0, 0, 1, 0, 1, "attn", "every token but the last sees later tokens", BOTH},
    {QD_FAULT_NO_CAUSAL, "mha_untied", 0, 0, 0, 1, 0, 1, "attn", "as gqa_tied", BOTH},
    {QD_FAULT_NO_CAUSAL, "knorm_extreme", 0, 0, 0, 1, 0, 1, "attn", "as gqa_tied", BOTH},
    {QD_FAULT_NO_CAUSAL, "long_prompt", 0, 0, 0, 1, 0, 1, "attn", "as gqa_tied", BOTH},
    /* 6: only where a score exceeds 88.7 (bf16 has fp32's exponent range); the ordinary fixtures' scores
     * stay below 8 */
    {QD_FAULT_SOFTMAX_NO_MAX, "knorm_extreme", 0, 16, SEED_SCORES, 0, 0, 0, "attn",
     "k_norm max 96.5 gives a causal score of 104: exp overflows fp32, inf/inf = NaN", BOTH},
    /* 7 */
    {QD_FAULT_NO_SCALE, "gqa_tied", 0, 0, 0, 1, 0, 1, "attn", "scores 5.7x too large: sharper softmax", BOTH},
    {QD_FAULT_NO_SCALE, "mha_untied", 0, 0, 0, 1, 0, 1, "attn", "as gqa_tied", BOTH},
    {QD_FAULT_NO_SCALE, "knorm_extreme", 0, 0, 0, 1, 0, 1, "attn", "as gqa_tied", BOTH},
    {QD_FAULT_NO_SCALE, "long_prompt", 0, 0, 0, 1, 0, 1, "attn", "as gqa_tied", BOTH},
    /* 8: layer 0, where the blessed attn_norm gate is the bf16 floor (0.4%); hidden 128 */
    {QD_FAULT_NORM_SUMSQ_LOWP, "knorm_extreme", 0, 0, 0, 0, 0, 0, "attn_norm",
     "a bf16 running sum of 128 squares stagnates: the scale is off by ~0.8% rms (hidden 1024: ~10%)", BOTH},
    /* 9: needs mean(x^2) ~ eps: a token with a tiny embedding row */
    {QD_FAULT_EPS_OUTSIDE, "gqa_tied", QD_VARIANT_TINY_ROW, 0, 0, 0, 0, 0, "attn_norm",
     "row rms 1e-3: 1/(sqrt(ms)+eps) vs 1/sqrt(ms+eps) differ by 40% on that token", BOTH},
    {QD_FAULT_EPS_OUTSIDE, "knorm_extreme", QD_VARIANT_TINY_ROW, 0, 0, 0, 0, 0, "attn_norm", "as gqa_tied", BOTH},
    /* 10 */
    {QD_FAULT_RESIDUAL_DROP, "gqa_tied", 0, 0, 0, 1, 0, 1, "attn_residual", "the residual stream is replaced", BOTH},
    {QD_FAULT_RESIDUAL_DROP, "mha_untied", 0, 0, 0, 1, 0, 1, "attn_residual", "as gqa_tied", BOTH},
    {QD_FAULT_RESIDUAL_DROP, "knorm_extreme", 0, 0, 0, 1, 0, 1, "attn_residual", "as gqa_tied", BOTH},
    {QD_FAULT_RESIDUAL_DROP, "long_prompt", 0, 0, 0, 1, 0, 1, "attn_residual", "as gqa_tied", BOTH},
    /* 11 */
    {QD_FAULT_ACT_GELU, "gqa_tied", 0, 0, 0, 1, 0, 1, "act", "GELU and SiLU differ by up to 0.2 near -1..1", BOTH},
    {QD_FAULT_ACT_GELU, "mha_untied", 0, 0, 0, 1, 0, 1, "act", "as gqa_tied", BOTH},
    {QD_FAULT_ACT_GELU, "knorm_extreme", 0, 0, 0, 1, 0, 1, "act", "as gqa_tied", BOTH},
    {QD_FAULT_ACT_GELU, "long_prompt", 0, 0, 0, 1, 0, 1, "act", "as gqa_tied", BOTH},
    /* 12: decode only. Not knorm_extreme: its layers 0-2 attend almost one-hot to another key, so losing
     * one key barely moves them, and its layer 3's free-running gate (33%, inherited error) hides it */
    {QD_FAULT_KV_POS, "gqa_tied", 0, 0, 0, 1, 1, 1, "attn", "decode step 1 loses the last prompt token's K/V", BOTH},
    {QD_FAULT_KV_POS, "mha_untied", 0, 0, 0, 1, 1, 1, "attn", "as gqa_tied", BOTH},
    {QD_FAULT_KV_POS, "long_prompt", 0, 0, 0, 1, 1, 1, "attn", "as gqa_tied", BOTH},
    /* 13: needs more than one key tile (64 keys) */
    {QD_FAULT_ONLINE_RESCALE, "knorm_extreme", 0, 80, SEED_1E29, 1, 0, 1, "attn",
     "the seed: the last tile's scores lie ~67 below the max, acc / l reaches 1.7e29 (a blow-up)", BOTH},
    {QD_FAULT_ONLINE_RESCALE, "long_prompt", 0, 0, 0, 1, 0, 1, "attn",
     "flat scores: dividing by the last tile's sum alone inflates attn by (t+1)/(t+1 - tile start)", BOTH},
};

/* The verdict flag the first divergence must carry besides failing: the seed is a blow-up (not just a
 * large error), softmax-no-max's overflow is a NaN. */
static unsigned case_flags(const qd_selftest_case *c) {
    if (c->fault == QD_FAULT_ONLINE_RESCALE && c->prompt_seed == SEED_1E29) return QD_V_BLOWUP_MAG;
    if (c->fault == QD_FAULT_SOFTMAX_NO_MAX) return QD_V_NONFINITE;
    return 0;
}

const qd_selftest_case *qd_selftest_cases(int *n) {
    *n = (int)(sizeof cases / sizeof *cases);
    return cases;
}

const char *qd_selftest_case_tap(const qd_selftest_case *c, const char *backend) {
    return backend && strcmp(backend, "fused") == 0 && c->tap_fused ? c->tap_fused : c->tap;
}

static const qd_sweep_case sweep_cases[] = {
    {QD_FAULT_ROPE_FREQ_BF16, "long_prompt", 0, 0, 0, "bf16", QD_SWEEP_BUG,
     "inv_freq is stored in bf16 whatever the activation dtype: the fault stays in fp32 and fp16"},
    {QD_FAULT_SOFTMAX_NO_MAX, "knorm_extreme", 16, SEED_SCORES, 0, "bf16", QD_SWEEP_BUG,
     "a score of 104 overflows exp in fp32 itself: no activation dtype saves it"},
    {QD_FAULT_SOFTMAX_NO_MAX, "knorm_extreme", 0, 0, 0, "fp16", QD_SWEEP_RANGE_FP16,
     "scores up to 83: exp(s) > 65504 once s > 11.1 overflows fp16's P; fp32 and bf16 hold exp(83)"},
    {QD_FAULT_NORM_SUMSQ_LOWP, "knorm_extreme", 0, 0, 0, "bf16", QD_SWEEP_PRECISION,
     "the sum of squares accumulates in the activation dtype: gone in fp32"},
};

const qd_sweep_case *qd_sweep_cases(int *n) {
    *n = (int)(sizeof sweep_cases / sizeof *sweep_cases);
    return sweep_cases;
}

int qd_selftest_matches(const qd_report *r, qd_mode mode, int step, int layer, const char *tap, char *found, size_t n) {
    int i = r->first_fail[mode];
    if (i < 0) {
        snprintf(found, n, "no divergence");
        return 0;
    }
    const qd_tap_row *row = &r->rows[i];
    const char *name = qd_row_tap_name(row);
    if (row->id.pos != QD_POS_LAYER) snprintf(found, n, "step %d, %s", row->step, name);
    else snprintf(found, n, "step %d, layer %d, %s", row->step, row->id.layer, name);
    return row->step == step && row->id.layer == layer && strcmp(name, tap) == 0;
}

// ----------------------------------------------------------------------------
// results

/* A new, zeroed check at the end of out; NULL (e filled) when memory runs out. */
static qd_selftest_check *add_check(qd_selftest_result *out, qd_err *e) {
    if (out->n == out->cap) {
        int cap = out->cap ? 2 * out->cap : 64;
        qd_selftest_check *nc = qd_resize(out->checks, (size_t)cap * sizeof *nc, e); /* (cap) */
        if (!nc) return NULL;
        out->checks = nc;
        out->cap = cap;
    }
    qd_selftest_check *c = &out->checks[out->n++];
    memset(c, 0, sizeof *c);
    return c;
}

/* The check's own copy of the prompt t (T). */
static int keep_tokens(qd_selftest_check *c, const int32_t *t, int T, qd_err *e) {
    if (!(c->tokens = qd_alloc((size_t)T * sizeof *t, e))) return e->code;
    memcpy(c->tokens, t, (size_t)T * sizeof *t);
    c->T = T;
    return QD_OK;
}

static void progress(const qd_selftest_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void progress(const qd_selftest_opts *o, const char *fmt, ...) {
    if (!o->progress) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    o->progress(o->progress_ctx, msg);
}

/* "layer 1 k_norm" (step 0) or "step 1, layer 1 attn". */
static void fmt_where(char *buf, size_t n, int step, int layer, const char *tap) {
    if (step) snprintf(buf, n, "step %d, layer %d, %s", step, layer, tap);
    else snprintf(buf, n, "step 0, layer %d, %s", layer, tap);
}

// ----------------------------------------------------------------------------
// one fixture context

typedef struct {
    const char *fixture;
    qd_variant variant;
    int prompt_len;
    uint64_t prompt_seed;
} st_context;

static void context_name(const st_context *cx, char *buf, size_t n) {
    char extra[64] = "";
    if (cx->variant == QD_VARIANT_TINY_ROW) snprintf(extra, sizeof extra, "+tiny-row");
    if (cx->prompt_len) {
        size_t u = strlen(extra);
        snprintf(extra + u, sizeof extra - u, "/T%d#%llu", cx->prompt_len, (unsigned long long)cx->prompt_seed);
    }
    snprintf(buf, n, "%s%s", cx->fixture, extra);
}

/* Weights and prompt of a context. */
static int load_context(const char *root, const st_context *cx, qd_weights *w, int32_t **tokens, int *T, qd_err *e) {
    char dir[4096], arg[4200];
    snprintf(dir, sizeof dir, "%s/%s", root, cx->fixture);
    int rc = qd_weights_load(dir, w, e);
    if (rc) return rc;
    const qd_config *c = &w->cfg;
    if (cx->prompt_len > 0) {
        *T = cx->prompt_len;
        if (!(*tokens = qd_alloc((size_t)*T * sizeof **tokens, e))) { /* (T) */
            qd_weights_free(w);
            return e->code;
        }
        qd_calib_prompt(cx->prompt_seed, *T, c->vocab_size, *tokens);
    } else {
        snprintf(arg, sizeof arg, "@%s/prompt.txt", dir);
        if ((rc = qd_tokens_parse(arg, c->vocab_size, tokens, T, e))) {
            qd_weights_free(w);
            return rc;
        }
    }
    if (cx->variant == QD_VARIANT_TINY_ROW) {
        if (*T <= ST_TINY_POS) {
            free(*tokens);
            qd_weights_free(w);
            return qd_errf(e, QD_EINPUT, "%s: the tiny-row variant needs a prompt of more than %d tokens", dir,
                           ST_TINY_POS);
        }
        /* (C) the embedding row of the token at ST_TINY_POS; with tied embeddings also its lm_head row */
        float *row = w->embed + (size_t)(*tokens)[ST_TINY_POS] * c->hidden_size;
        for (int i = 0; i < c->hidden_size; i++) row[i] *= ST_TINY_SCALE;
    }
    return QD_OK;
}

static qd_backend *make(const char *name, const qd_weights *w, int threads, int max_seq, const char *act,
                        qd_fault fault, qd_err *e) {
    qd_backend_opts o = {.threads = threads, .max_seq = max_seq, .act = act, .fault = fault};
    return qd_backend_create(name, w, &o, e);
}

/* Runs a's and b's lockstep once (b_iso for isolated rows) with the given tolerances. */
static int run_pair(qd_backend *a, qd_backend *b, qd_backend *bi, const int32_t *tokens, int T, int decode,
                    const qd_tolerances *tol, qd_report *r, qd_err *e) {
    qd_report_init(r, a->name, a->precision, b->name, b->precision, a->cfg->num_hidden_layers, QD_MODE_FREE,
                   &tol->blowup);
    qd_lockstep_opts o = {
        .tokens = tokens, .T = T, .decode = decode, .tol = tol, .locate = QD_MODE_FREE, .dump_window = -1};
    int rc = qd_lockstep(a, b, bi, &o, r, e);
    if (rc) qd_report_free(r);
    return rc;
}

static void row_reason(const qd_report *r, qd_mode mode, char *buf, size_t n) {
    int i = r->first_fail[mode];
    if (i < 0) {
        snprintf(buf, n, "%s", "");
        return;
    }
    const qd_tap_row *row = &r->rows[i];
    qd_verdict_reason(row->verdict, &row->m, &row->tol, &r->blowup, row->prev_rel_l2, buf, n);
}

static int run_context(const qd_selftest_opts *o, const char *root, const char *backend, const st_context *cx,
                       qd_selftest_result *out, qd_err *e) {
    const int threads = o->threads;
    const char *shift = o->shift_expectation;
    qd_weights w;
    int32_t *tokens = NULL;
    int T = 0;
    int rc = load_context(root, cx, &w, &tokens, &T, e);
    if (rc) return rc;
    char cname[96];
    context_name(cx, cname, sizeof cname);
    progress(o, "%s: blessing ref vs %s over %d prompts", cname, backend, ST_CALIB_PROMPTS);
    /* Decode steps only where a fault needs them: a single-token step's error is one token's, not an
     * average over T, so on knorm_extreme (one bf16 rounding of K can move a probability mass) 5 blessed
     * prompts do not bound the next prompt's decode steps (measured: rel_l2 9e-2 vs a blessed 7.9e-2) */
    int decode = 0, nc0;
    const qd_selftest_case *cs0 = qd_selftest_cases(&nc0);
    for (int k = 0; k < nc0; k++)
        if (!strcmp(cs0[k].fixture, cx->fixture) && cs0[k].variant == cx->variant &&
            cs0[k].prompt_len == cx->prompt_len && cs0[k].prompt_seed == cx->prompt_seed && cs0[k].step > 0)
            decode = ST_DECODE;
    const int max_seq = T + decode;
    qd_fault none = {QD_FAULT_NONE, -1};
    qd_backend *a = NULL, *b = NULL, *bi = NULL;
    qd_tolerances tol;
    int have_tol = 0;
    int32_t *p = qd_alloc((size_t)T * sizeof *p, e); /* (T) */
    if (!p || !(a = make("ref", &w, threads, max_seq, NULL, none, e)) ||
        !(b = make(backend, &w, threads, max_seq, NULL, none, e)) ||
        !(bi = make(backend, &w, threads, max_seq, NULL, none, e))) {
        rc = e->code ? e->code : QD_ERUNTIME;
        goto out;
    }
    if ((rc = qd_bless(a, b, bi, tokens, T, ST_CALIB_PROMPTS, decode, ST_MARGIN, &tol, NULL, NULL, e))) goto out;
    have_tol = 1;

    /* clean, held out: prompts the bless step never saw */
    for (int mode = 0; mode < 2; mode++) {
        qd_selftest_check *row = add_check(out, e);
        if (!row) {
            rc = e->code;
            goto out;
        }
        row->kind = "clean";
        snprintf(row->fault, sizeof row->fault, "clean (%d prompts)", ST_CLEAN_PROMPTS);
        snprintf(row->fixture, sizeof row->fixture, "%s", cname);
        snprintf(row->expected, sizeof row->expected, "no divergence");
        snprintf(row->found, sizeof row->found, "no divergence");
        row->mode = qd_mode_name((qd_mode)mode);
        row->ok = 1;
    }
    for (int i = 0; i < ST_CLEAN_PROMPTS; i++) {
        qd_calib_prompt(0x5eedull + (uint64_t)(ST_CALIB_PROMPTS + i), T, w.cfg.vocab_size, p);
        qd_report r;
        if ((rc = run_pair(a, b, bi, p, T, decode, &tol, &r, e))) goto out;
        for (int mode = 0; mode < 2; mode++) {
            qd_selftest_check *row = &out->checks[out->n - 2 + mode];
            char found[96];
            if (row->ok && r.first_fail[mode] >= 0) {
                qd_selftest_matches(&r, (qd_mode)mode, -1, -1, "", found, sizeof found);
                row->ok = 0;
                snprintf(row->found, sizeof row->found, "prompt %d: %s", ST_CALIB_PROMPTS + i, found);
                row_reason(&r, (qd_mode)mode, row->reason, sizeof row->reason);
            }
        }
        qd_report_free(&r);
    }

    /* the faults of this context */
    int nc;
    const qd_selftest_case *cs = qd_selftest_cases(&nc);
    for (int k = 0; k < nc; k++) {
        const qd_selftest_case *c = &cs[k];
        if (strcmp(c->fixture, cx->fixture) || c->variant != cx->variant || c->prompt_len != cx->prompt_len ||
            c->prompt_seed != cx->prompt_seed)
            continue;
        const qd_fault_info *fi = qd_fault_info_of(c->fault);
        int exp_layer = c->layer + (shift && strcmp(shift, fi->name) == 0);
        const char *exp_tap = qd_selftest_case_tap(c, backend);
        qd_fault f = {c->fault, c->inject};
        qd_backend *fb = make(backend, &w, threads, max_seq, NULL, f, e), *fbi = NULL;
        if (fb) fbi = make(backend, &w, threads, max_seq, NULL, f, e);
        qd_report r;
        if (!fb || !fbi || (rc = run_pair(a, fb, fbi, tokens, T, decode, &tol, &r, e))) {
            if (!rc) rc = e->code ? e->code : QD_ERUNTIME;
            qd_backend_destroy(fb);
            qd_backend_destroy(fbi);
            goto out;
        }
        for (int mode = 0; mode < 2; mode++) {
            qd_selftest_check *row = add_check(out, e);
            if (!row) {
                rc = e->code;
                break;
            }
            row->kind = "fault";
            snprintf(row->fault, sizeof row->fault, "%s@%d", fi->name, c->inject);
            snprintf(row->fixture, sizeof row->fixture, "%s", cname);
            fmt_where(row->expected, sizeof row->expected, c->step, exp_layer, exp_tap);
            row->mode = qd_mode_name((qd_mode)mode);
            row->ok =
                qd_selftest_matches(&r, (qd_mode)mode, c->step, exp_layer, exp_tap, row->found, sizeof row->found);
            unsigned need = case_flags(c);
            if (row->ok && need && (r.rows[r.first_fail[mode]].verdict & need) != need) {
                row->ok = 0;
                snprintf(row->found + strlen(row->found), sizeof row->found - strlen(row->found), " (not %s)",
                         qd_verdict_flag_name(need));
            }
            row_reason(&r, (qd_mode)mode, row->reason, sizeof row->reason);
            if ((rc = keep_tokens(row, tokens, T, e))) break;
        }
        qd_report_free(&r);
        qd_backend_destroy(fb);
        qd_backend_destroy(fbi);
        if (rc) goto out;
    }

out:
    if (have_tol) qd_tolerances_free(&tol);
    qd_backend_destroy(a);
    qd_backend_destroy(b);
    qd_backend_destroy(bi);
    free(p);
    free(tokens);
    qd_weights_free(&w);
    return rc;
}

static int run_sweep_case(const qd_selftest_opts *o, const char *root, const char *backend, const qd_sweep_case *sc,
                          qd_selftest_result *out, qd_err *e) {
    st_context cx = {sc->fixture, QD_VARIANT_NONE, sc->prompt_len, sc->prompt_seed};
    qd_weights w;
    int32_t *tokens = NULL;
    int T = 0;
    int rc = load_context(root, &cx, &w, &tokens, &T, e);
    if (rc) return rc;
    char cname[96];
    context_name(&cx, cname, sizeof cname);
    const qd_fault_info *fi = qd_fault_info_of(sc->fault);
    progress(o, "%s: precision sweep of %s@%d in %s", cname, fi->name, sc->inject, backend);
    qd_sweep_opts so = {.name_a = "ref",
                        .name_b = backend,
                        .opts = {.threads = o->threads, .fault = {sc->fault, sc->inject}},
                        .tokens = tokens,
                        .T = T,
                        .decode = 0,
                        .calib_prompts = ST_CALIB_PROMPTS,
                        .margin = ST_MARGIN,
                        .locate = QD_MODE_FREE};
    qd_sweep_result res;
    rc = qd_precision_sweep(&w, &so, &res, e);
    qd_selftest_check *row = rc ? NULL : add_check(out, e);
    if (!rc && !row) rc = e->code;
    if (row) {
        row->kind = "sweep";
        snprintf(row->fault, sizeof row->fault, "%s@%d", fi->name, sc->inject);
        snprintf(row->fixture, sizeof row->fixture, "%s", cname);
        snprintf(row->expected, sizeof row->expected, "%s", qd_sweep_class_name(sc->expect));
        snprintf(row->found, sizeof row->found, "%s", qd_sweep_class_name(res.cls));
        row->mode = "sweep";
        row->ok = res.cls == sc->expect;
        snprintf(row->reason, sizeof row->reason, "fp32 %s, fp16 %s, bf16 %s",
                 res.e[QD_SWEEP_FP32].diverged ? "diverges" : "clean",
                 res.e[QD_SWEEP_FP16].diverged ? "diverges" : "clean",
                 res.e[QD_SWEEP_BF16].diverged ? "diverges" : "clean");
        rc = keep_tokens(row, tokens, T, e);
    }
    free(tokens);
    qd_weights_free(&w);
    return rc;
}

// ----------------------------------------------------------------------------
// the run

void qd_selftest_result_free(qd_selftest_result *r) {
    for (int i = 0; i < r->n; i++) free(r->checks[i].tokens);
    free(r->checks);
    memset(r, 0, sizeof *r);
}

int qd_selftest_run(const qd_selftest_opts *o, qd_selftest_result *out, qd_err *e) {
    memset(out, 0, sizeof *out);
    const char *root = o->fixtures ? o->fixtures : QD_SOURCE_ROOT "/fixtures";
    const char *backend = o->backend ? o->backend : "emu";
    if (strcmp(backend, "emu") != 0 && strcmp(backend, "fused") != 0)
        return qd_errf(e, QD_EINPUT, "selftest: backend '%s': expected emu or fused", backend);
    struct stat st;
    if (stat(root, &st) != 0 || !S_ISDIR(st.st_mode))
        return qd_errf(e, QD_EINPUT, "selftest: fixtures %s: no such directory", root);
    qd_fault shifted;
    int rc = o->shift_expectation ? qd_fault_parse(o->shift_expectation, &shifted, e) : QD_OK;
    if (rc) return rc;

    /* the distinct contexts, in table order */
    int nc;
    const qd_selftest_case *cs = qd_selftest_cases(&nc);
    st_context cx[64];
    int ncx = 0;
    for (int k = 0; k < nc; k++) {
        int seen = 0;
        for (int j = 0; j < ncx && !seen; j++)
            seen = !strcmp(cx[j].fixture, cs[k].fixture) && cx[j].variant == cs[k].variant &&
                   cx[j].prompt_len == cs[k].prompt_len && cx[j].prompt_seed == cs[k].prompt_seed;
        if (!seen && ncx < 64)
            cx[ncx++] = (st_context){cs[k].fixture, cs[k].variant, cs[k].prompt_len, cs[k].prompt_seed};
    }

    const char *only = o->only_fixture;
    for (int j = 0; j < ncx && !rc; j++)
        if (!only || !strcmp(cx[j].fixture, only)) rc = run_context(o, root, backend, &cx[j], out, e);
    int ns;
    const qd_sweep_case *sw = qd_sweep_cases(&ns);
    for (int j = 0; j < ns && !rc; j++)
        if (!only || !strcmp(sw[j].fixture, only)) rc = run_sweep_case(o, root, backend, &sw[j], out, e);
    if (!rc && only && out->n == 0) rc = qd_errf(e, QD_EINPUT, "no check uses a fixture named '%s'", only);
    if (rc) {
        qd_selftest_result_free(out);
        return rc;
    }
    for (int i = 0; i < out->n; i++) out->misses += !out->checks[i].ok;
    return QD_OK;
}
