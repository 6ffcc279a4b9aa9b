/* replay.c: op replay (qd_replay.h). Each op of one engine recomputed from the engine's own tapped inputs by
 * the oracle (the reference's ops, f64 accumulation) and by the engine's contract (emu's ops in its
 * activation dtype, or the reference's fp32 ops), and the engine's tap measured against both. */
#include "qd_replay.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "qd_act.h"
#include "qd_bf16.h"
#include "qd_emu_ops.h"
#include "qd_ref_ops.h"

struct qd_replay {
    const qd_weights *w;  /* the oracle's: the checkpoint as loaded (borrowed) */
    const qd_weights *wc; /* the contract's: w, or &own, its bf16 rounding (emu's weights) */
    qd_weights own;
    int lowp;  /* contract = emu's ops in act; else the reference's ops with accum_c */
    int emu;   /* the contract runs emu's ops: lowp, or a fault set (qd_replay_set_fault) */
    int fault; /* qd_fault_kind in the contract's ops; QD_FAULT_NONE: the clean contract */
    qd_act_dtype act;
    qd_accum accum_c;
    double min_floor;     /* of the activation dtype */
    double min_floor_f32; /* of fp32 (the contract's logits) */
    int max_seq, threads;
    float *inv_freq;      /* (HD/2) rope_inv_freq */
    float *inv_freq_bf16; /* (HD/2) the same rounded to bf16 (fault rope-freq-bf16); NULL until asked */
    /* the inputs attention saw at every earlier position: the engine's k_rope and v_proj (or, when it does
     * not tap them, each side's own replay of them) */
    float *kc_o, *vc_o;          /* (L, max_seq, NKV, HD) oracle side */
    float *kc_c, *vc_c;          /* (L, max_seq, NKV, HD) contract side */
    unsigned char *hist;         /* (L, max_seq) 1: that position's K/V is known */
    float *o[QD_NUM_LAYER_TAPS]; /* (max_seq, width of the tap) oracle replays */
    float *c[QD_NUM_LAYER_TAPS]; /* (max_seq, width of the tap) contract replays */
    float *xr;                   /* (max_seq, C) the contract's copy of an input */
    float *fn_o, *fn_c;          /* (max_seq, C) final_norm replays */
    float *lg_o, *lg_c;          /* (max_seq, V) logits replays */
    float *att_scratch;          /* (emu_attention_scratch(threads, max_seq, HD)) */
    float *att_eager;            /* (max_seq, NH*HD) attention by the eager contract (emu_attention_eager) */
};

static size_t tap_width(const qd_config *c, int tap) {
    int64_t shape[3];
    int nd = qd_layer_tap_shape(c, tap, 1, shape);
    size_t n = 1;
    for (int d = 1; d < nd; d++) n *= (size_t)shape[d];
    return n;
}

double qd_replay_min_floor(const char *precision) {
    int p = 24;
    if (!strcmp(precision, "bf16")) p = 8;
    else if (!strcmp(precision, "fp16")) p = 11;
    else if (!strcmp(precision, "fp64")) p = 53;
    return ldexp(1.0, -(p + 1)) / sqrt(3.0);
}

void qd_replay_free(qd_replay *rp) {
    if (!rp) return;
    if (rp->wc == &rp->own) qd_weights_free(&rp->own);
    free(rp->inv_freq);
    free(rp->inv_freq_bf16);
    free(rp->kc_o);
    free(rp->vc_o);
    free(rp->kc_c);
    free(rp->vc_c);
    free(rp->hist);
    for (int t = 0; t < QD_NUM_LAYER_TAPS; t++) {
        free(rp->o[t]);
        free(rp->c[t]);
    }
    free(rp->xr);
    free(rp->fn_o);
    free(rp->fn_c);
    free(rp->lg_o);
    free(rp->lg_c);
    free(rp->att_scratch);
    free(rp->att_eager);
    free(rp);
}

/* own = w with every tensor rounded to bf16, in its own allocation laid out as w's (w may hold only some
 * tensors, as a repro file's weights: the pointers are rebased, NULL ones stay NULL). */
static int round_weights(const qd_weights *w, qd_weights *own, qd_err *e) {
    const int L = w->cfg.num_hidden_layers;
    memset(own, 0, sizeof *own);
    own->cfg = w->cfg;
    own->src_dtype = w->src_dtype;
    if (!(own->mem = qd_alloc((w->mem_floats ? w->mem_floats : 1) * sizeof(float), e))) return QD_ERUNTIME;
    if (!(own->layers = qd_zalloc((size_t)(L > 0 ? L : 1), sizeof *own->layers, e))) {
        free(own->mem);
        return QD_ERUNTIME;
    }
    own->mem_floats = w->mem_floats;
    for (size_t i = 0; i < w->mem_floats; i++) own->mem[i] = qd_round_bf16(w->mem[i]);
#define REBASE(p) ((p) ? own->mem + ((p)-w->mem) : NULL)
    own->embed = REBASE(w->embed);
    own->norm = REBASE(w->norm);
    own->lm_head = REBASE(w->lm_head);
    for (int l = 0; l < L; l++) {
        const qd_layer_weights *a = &w->layers[l];
        qd_layer_weights *b = &own->layers[l];
        b->input_layernorm = REBASE(a->input_layernorm);
        b->q_proj = REBASE(a->q_proj);
        b->k_proj = REBASE(a->k_proj);
        b->v_proj = REBASE(a->v_proj);
        b->q_norm = REBASE(a->q_norm);
        b->k_norm = REBASE(a->k_norm);
        b->o_proj = REBASE(a->o_proj);
        b->post_attention_layernorm = REBASE(a->post_attention_layernorm);
        b->gate_proj = REBASE(a->gate_proj);
        b->up_proj = REBASE(a->up_proj);
        b->down_proj = REBASE(a->down_proj);
    }
#undef REBASE
    return QD_OK;
}

/* own = mapped weights w as fp32, every value rounded to bf16. */
static int round_mapped(const qd_weights *w, qd_weights *own, qd_err *e) {
    if (qd_weights_to_f32(w, own, e)) return QD_ERUNTIME;
    for (size_t i = 0; i < own->mem_floats; i++) own->mem[i] = qd_round_bf16(own->mem[i]);
    return QD_OK;
}

qd_replay *qd_replay_create(const qd_weights *w, const char *precision, const char *accum, int max_seq, int threads,
                            qd_err *e) {
    const qd_config *c = &w->cfg;
    if (max_seq <= 0) {
        qd_errf(e, QD_EINPUT, "replay: max_seq must be positive, got %d", max_seq);
        return NULL;
    }
    int lowp = !strcmp(precision, "bf16") || !strcmp(precision, "fp16");
    if (!lowp && strcmp(precision, "fp32") && strcmp(precision, "fp64")) {
        qd_errf(e, QD_EINPUT, "replay: precision '%s': expected bf16, fp16, fp32 or fp64", precision);
        return NULL;
    }
    if (accum && strcmp(accum, "f32") && strcmp(accum, "f64")) {
        qd_errf(e, QD_EINPUT, "replay: accumulation '%s': expected f32 or f64", accum);
        return NULL;
    }
    qd_replay *rp = qd_zalloc(1, sizeof *rp, e);
    if (!rp) return NULL;
    rp->w = w;
    rp->wc = w;
    rp->lowp = rp->emu = lowp;
    rp->act = QD_ACT_FP32;
    rp->fault = QD_FAULT_NONE;
    if (lowp) qd_act_dtype_parse(precision, &rp->act);
    /* an fp64 engine, or an fp32 one reducing in f64, is the oracle's maths: its floor is 0 */
    rp->accum_c = !strcmp(precision, "fp64") || (accum && !strcmp(accum, "f64")) ? QD_ACCUM_F64 : QD_ACCUM_F32;
    rp->min_floor = qd_replay_min_floor(precision);
    rp->min_floor_f32 = qd_replay_min_floor("fp32");
    rp->max_seq = max_seq;
    rp->threads = threads > 0 ? threads : omp_get_max_threads();
    size_t S = (size_t)max_seq, L = (size_t)c->num_hidden_layers, C = (size_t)c->hidden_size;
    size_t HD = (size_t)c->head_dim, KV = (size_t)c->num_key_value_heads * HD, V = (size_t)c->vocab_size;
    int ok =
        (rp->inv_freq = qd_alloc(HD / 2 * sizeof(float), e)) && (rp->kc_o = qd_zalloc(L * S * KV, sizeof(float), e)) &&
        (rp->vc_o = qd_zalloc(L * S * KV, sizeof(float), e)) && (rp->kc_c = qd_zalloc(L * S * KV, sizeof(float), e)) &&
        (rp->vc_c = qd_zalloc(L * S * KV, sizeof(float), e)) && (rp->hist = qd_zalloc(L * S, 1, e)) &&
        (rp->xr = qd_alloc(S * C * sizeof(float), e)) && (rp->fn_o = qd_alloc(S * C * sizeof(float), e)) &&
        (rp->fn_c = qd_alloc(S * C * sizeof(float), e)) && (rp->lg_o = qd_alloc(S * V * sizeof(float), e)) &&
        (rp->lg_c = qd_alloc(S * V * sizeof(float), e)) &&
        (rp->att_scratch = qd_alloc(emu_attention_scratch(rp->threads, max_seq, (int)HD) * sizeof(float), e)) &&
        (rp->att_eager = qd_alloc(S * (size_t)c->num_attention_heads * HD * sizeof(float), e));
    for (int t = 0; ok && t < QD_NUM_LAYER_TAPS; t++)
        ok = (rp->o[t] = qd_alloc(S * tap_width(c, t) * sizeof(float), e)) &&
             (rp->c[t] = qd_alloc(S * tap_width(c, t) * sizeof(float), e));
    if (ok && lowp && !qd_weights_all_bf16(w)) {
        /* emu's weights: the checkpoint rounded to bf16 once (docs/PRECISION.md); mapped weights are made
         * fp32 first (a BF16 checkpoint never comes here) */
        if (w->mapped ? round_mapped(w, &rp->own, e) : round_weights(w, &rp->own, e)) ok = 0;
        else rp->wc = &rp->own;
    }
    if (!ok) {
        qd_replay_free(rp);
        return NULL;
    }
    rope_inv_freq(rp->inv_freq, (int)HD, c->rope_theta);
    return rp;
}

// ----------------------------------------------------------------------------
// the ops on each side

/* The tap of the engine when it has it with the shape of T rows, else NULL. */
static const float *engine_tap(const qd_tap_source *src, const qd_config *c, qd_tap_id id, int T) {
    if (!src || !src->get) return NULL;
    int nd = 0;
    int64_t shape[3] = {0, 0, 0}, want[3];
    const float *d = src->get(src->ctx, id, &nd, shape);
    if (!d) return NULL;
    int wn = qd_tap_id_shape(c, id, T, want);
    if (nd != wn) return NULL;
    for (int i = 0; i < nd; i++)
        if (shape[i] != want[i]) return NULL;
    return d;
}

/* The oracle's RoPE: the exact rotation, angle pos * theta^(-2i/HD), cos, sin and the products in double,
 * rounded once. Every engine (the reference too) takes its angle in fp32 from an fp32 inv_freq: that
 * rounding grows with the position (~pos * 2^-24 rad) and is part of each engine's noise, so it belongs in
 * the floor, not in the oracle (transformers' float inv_freq differs from ours by an ulp: 2.3e-7 at
 * position 300, 13 output roundings). x (T, nh, HD) in place. */
static void rope_oracle(float *x, int T, int nh, int HD, int pos0, double theta) {
    const int half = HD / 2;
    for (int i = 0; i < half; i++) {
        const double inv = pow(theta, -2.0 * i / (double)HD);
        for (int t = 0; t < T; t++) {
            const double a = (double)(pos0 + t) * inv, c = cos(a), s = sin(a);
            for (int h = 0; h < nh; h++) {
                float *xh = x + ((size_t)t * nh + h) * HD; /* (HD) */
                const double x0 = xh[i], x1 = xh[i + half];
                xh[i] = (float)(x0 * c - x1 * s);
                xh[i + half] = (float)(x1 * c + x0 * s);
            }
        }
    }
}

static void norm_o(float *out, const float *x, const float *w, int rows, int n, float eps) {
    rmsnorm_forward(out, x, w, rows, n, eps, QD_ACCUM_F64);
}

/* fault: the contract's fault as this launch takes it (FAULT_FOR). */
static void norm_c(const qd_replay *rp, float *out, const float *x, const float *w, int rows, int n, float eps,
                   int fault) {
    if (rp->emu) emu_rmsnorm(out, x, w, rows, n, eps, rp->act, fault);
    else rmsnorm_forward(out, x, w, rows, n, eps, rp->accum_c);
}

static void matmul_c(const qd_replay *rp, float *out, const float *x, qd_wview W, int T, int in, int out_dim) {
    if (rp->emu) emu_matmul_w(out, x, W, T, in, out_dim, rp->act);
    else matmul_forward_w(out, x, W, T, in, out_dim, rp->accum_c);
}

static void rope_c(const qd_replay *rp, float *x, int T, int nh, int HD, int pos0) {
    if (rp->emu)
        emu_rope(x, T, nh, HD, pos0, rp->fault == QD_FAULT_ROPE_FREQ_BF16 ? rp->inv_freq_bf16 : rp->inv_freq, rp->act,
                 rp->fault);
    else rope_forward(x, T, nh, HD, pos0, rp->inv_freq);
}

/* The contract's copy of an input the engine may hold in a wider type (a layer input fed from the other
 * side): rounded as the engine stores it. */
static const float *input_c(qd_replay *rp, const float *x, size_t n) {
    if (!rp->emu) return x;
    memcpy(rp->xr, x, n * sizeof(float));
    emu_round_n(rp->act, rp->xr, n);
    return rp->xr;
}

/* Every input of an op (rd) is known this step: the engine tapped it, it was replayed, or it is h_in. */
static int ready(const qd_replay_reads *rd, const float *const *eng, const int *done, const float *h_in) {
    for (int i = 0; i < rd->n_in; i++) {
        const int in = rd->in[i];
        if (in == QD_RIN_H ? !h_in : in < 0 || in >= QD_NUM_LAYER_TAPS || !(eng[in] || done[in])) return 0;
    }
    return 1;
}

static void measure(qd_replay_op *op, const float *engine, const float *oracle, const float *contract, int ndim,
                    const int64_t *shape, double min_floor) {
    memset(op, 0, sizeof *op);
    op->have = 1;
    qd_metrics_compute(engine, oracle, ndim, shape, &op->local);
    qd_metrics_compute(contract, oracle, ndim, shape, &op->floor);
    op->min_floor = min_floor;
    double fl = op->floor.rel_l2 > min_floor ? op->floor.rel_l2 : min_floor;
    op->ratio = op->local.rel_l2 / fl;
}

/* Attention has two common correct low-precision forms: the fused kernels' (fp32 scores, P rounded with the
 * running max, emu_attention) and the eager one (scores and normalised P stored in the dtype,
 * emu_attention_eager). A correct engine of either kind must pass, so the floor is the wider of the two
 * (docs/TOLERANCES.md, "The noise floor"). */
static void widen_floor(qd_replay_op *op, const float *contract2, const float *oracle, int ndim, const int64_t *shape) {
    qd_metrics f2;
    qd_metrics_compute(contract2, oracle, ndim, shape, &f2);
    if (!(f2.rel_l2 > op->floor.rel_l2)) return;
    op->floor = f2;
    double fl = f2.rel_l2 > op->min_floor ? f2.rel_l2 : op->min_floor;
    op->ratio = op->local.rel_l2 / fl;
}

static void clear_ops(qd_replay_op *ops, int n) {
    memset(ops, 0, (size_t)n * sizeof *ops);
    for (int i = 0; i < n; i++) ops[i].ratio = NAN;
}

int qd_replay_embed(qd_replay *rp, const qd_tap_source *src, const int32_t *tokens, int T, qd_replay_op *op,
                    qd_err *e) {
    const qd_config *c = &rp->w->cfg;
    clear_ops(op, 1);
    if (T <= 0 || T > rp->max_seq)
        return qd_errf(e, QD_EINPUT, "replay: embed: %d tokens do not fit max_seq %d", T, rp->max_seq);
    const qd_tap_id id = qd_tap_model(QD_TAP_EMBED);
    const float *eng = engine_tap(src, c, id, T);
    if (!eng) return QD_OK;
    size_t C = (size_t)c->hidden_size;
    for (int t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return qd_errf(e, QD_EINPUT, "replay: token %d at position %d is outside the vocabulary (%d)", tokens[t], t,
                           c->vocab_size);
        qd_wview_to_f32(qd_weights_mat(rp->w, 0, QD_WM_EMBED), (size_t)tokens[t] * C, C, rp->fn_o + t * C);
        qd_wview_to_f32(qd_weights_mat(rp->wc, 0, QD_WM_EMBED), (size_t)tokens[t] * C, C, rp->fn_c + t * C);
    }
    if (rp->lowp) emu_round_n(rp->act, rp->fn_c, (size_t)T * C);
    int64_t shape[3];
    int nd = qd_tap_id_shape(c, id, T, shape);
    measure(op, eng, rp->fn_o, rp->fn_c, nd, shape, rp->min_floor);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// what each op reads (qd_replay.h): the table qd_replay_layer decides by, and repro files are cut by

#define MODEL_KIND(t) (QD_NUM_LAYER_TAPS + (t))
static const qd_replay_reads op_reads[QD_NUM_TAP_KINDS] = {
    [QD_TAP_ATTN_NORM] = {1, {QD_RIN_H}, 0, QD_RW_INPUT_LAYERNORM},
    [QD_TAP_Q_PROJ] = {1, {QD_TAP_ATTN_NORM}, 0, QD_RW_Q_PROJ},
    [QD_TAP_K_PROJ] = {1, {QD_TAP_ATTN_NORM}, 0, QD_RW_K_PROJ},
    [QD_TAP_V_PROJ] = {1, {QD_TAP_ATTN_NORM}, 0, QD_RW_V_PROJ},
    [QD_TAP_Q_NORM] = {1, {QD_TAP_Q_PROJ}, 0, QD_RW_Q_NORM},
    [QD_TAP_K_NORM] = {1, {QD_TAP_K_PROJ}, 0, QD_RW_K_NORM},
    [QD_TAP_Q_ROPE] = {1, {QD_TAP_Q_NORM}, 0, QD_RW_NONE},
    [QD_TAP_K_ROPE] = {1, {QD_TAP_K_NORM}, 0, QD_RW_NONE},
    [QD_TAP_ATTN] = {3, {QD_TAP_Q_ROPE, QD_TAP_K_ROPE, QD_TAP_V_PROJ}, 1, QD_RW_NONE},
    [QD_TAP_O_PROJ] = {1, {QD_TAP_ATTN}, 0, QD_RW_O_PROJ},
    [QD_TAP_ATTN_RESIDUAL] = {2, {QD_RIN_H, QD_TAP_O_PROJ}, 0, QD_RW_NONE},
    [QD_TAP_MLP_NORM] = {1, {QD_TAP_ATTN_RESIDUAL}, 0, QD_RW_POST_ATTENTION_LAYERNORM},
    [QD_TAP_GATE_PROJ] = {1, {QD_TAP_MLP_NORM}, 0, QD_RW_GATE_PROJ},
    [QD_TAP_UP_PROJ] = {1, {QD_TAP_MLP_NORM}, 0, QD_RW_UP_PROJ},
    [QD_TAP_ACT] = {2, {QD_TAP_GATE_PROJ, QD_TAP_UP_PROJ}, 0, QD_RW_NONE},
    [QD_TAP_DOWN_PROJ] = {1, {QD_TAP_ACT}, 0, QD_RW_DOWN_PROJ},
    [QD_TAP_OUT] = {2, {QD_TAP_ATTN_RESIDUAL, QD_TAP_DOWN_PROJ}, 0, QD_RW_NONE},
    [MODEL_KIND(QD_TAP_EMBED)] = {1, {QD_RIN_TOKENS}, 0, QD_RW_EMBED},
    [MODEL_KIND(QD_TAP_FINAL_NORM)] = {1, {QD_RIN_H}, 0, QD_RW_NORM},
    [MODEL_KIND(QD_TAP_LOGITS)] = {1, {MODEL_KIND(QD_TAP_FINAL_NORM)}, 0, QD_RW_LM_HEAD},
};

const qd_replay_reads *qd_replay_reads_of(qd_tap_id id) {
    if (!qd_tap_id_valid(id)) return NULL;
    return &op_reads[qd_tap_id_kind(id)];
}

static const char *const weight_names[QD_NUM_RW] = {
    "",       "input_layernorm",          "q_proj",    "k_proj",  "v_proj",    "q_norm",       "k_norm",
    "o_proj", "post_attention_layernorm", "gate_proj", "up_proj", "down_proj", "embed_tokens", "norm",
    "lm_head"};

const char *qd_replay_weight_name(qd_replay_weight k) { return k > QD_RW_NONE && k < QD_NUM_RW ? weight_names[k] : ""; }

int qd_replay_weight_shape(const qd_config *c, qd_replay_weight k, int64_t shape[2]) {
    const int64_t C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim, V = c->vocab_size;
    const int64_t Q = (int64_t)c->num_attention_heads * HD, KV = (int64_t)c->num_key_value_heads * HD;
    const int64_t dims[QD_NUM_RW][2] = {[QD_RW_INPUT_LAYERNORM] = {C, 0},
                                        [QD_RW_Q_PROJ] = {Q, C},
                                        [QD_RW_K_PROJ] = {KV, C},
                                        [QD_RW_V_PROJ] = {KV, C},
                                        [QD_RW_Q_NORM] = {HD, 0},
                                        [QD_RW_K_NORM] = {HD, 0},
                                        [QD_RW_O_PROJ] = {C, Q},
                                        [QD_RW_POST_ATTENTION_LAYERNORM] = {C, 0},
                                        [QD_RW_GATE_PROJ] = {I, C},
                                        [QD_RW_UP_PROJ] = {I, C},
                                        [QD_RW_DOWN_PROJ] = {C, I},
                                        [QD_RW_EMBED] = {V, C},
                                        [QD_RW_NORM] = {C, 0},
                                        [QD_RW_LM_HEAD] = {V, C}};
    if (k <= QD_RW_NONE || k >= QD_NUM_RW) return 0;
    shape[0] = dims[k][0];
    shape[1] = dims[k][1];
    return dims[k][1] ? 2 : 1;
}

qd_wview qd_replay_weight_view(const qd_weights *w, int layer, qd_replay_weight k) {
    static const int mat[QD_NUM_RW] = {[QD_RW_Q_PROJ] = QD_WM_Q_PROJ + 1,       [QD_RW_K_PROJ] = QD_WM_K_PROJ + 1,
                                       [QD_RW_V_PROJ] = QD_WM_V_PROJ + 1,       [QD_RW_O_PROJ] = QD_WM_O_PROJ + 1,
                                       [QD_RW_GATE_PROJ] = QD_WM_GATE_PROJ + 1, [QD_RW_UP_PROJ] = QD_WM_UP_PROJ + 1,
                                       [QD_RW_DOWN_PROJ] = QD_WM_DOWN_PROJ + 1, [QD_RW_EMBED] = QD_WM_EMBED + 1,
                                       [QD_RW_LM_HEAD] = QD_WM_LM_HEAD + 1}; /* 0: a norm (fp32) */
    if (k > QD_RW_NONE && k < QD_NUM_RW && mat[k]) {
        if (mat[k] - 1 < QD_WM_LAYER_MATS && (layer < 0 || layer >= w->cfg.num_hidden_layers))
            return (qd_wview){NULL, QD_DT_F32};
        return qd_weights_mat(w, layer, (qd_wmat)(mat[k] - 1));
    }
    return (qd_wview){qd_replay_weight_of(w, layer, k), QD_DT_F32};
}

const float *qd_replay_weight_of(const qd_weights *w, int layer, qd_replay_weight k) {
    if (k == QD_RW_EMBED) return w->embed;
    if (k == QD_RW_NORM) return w->norm;
    if (k == QD_RW_LM_HEAD) return w->lm_head;
    if (k <= QD_RW_NONE || k >= QD_NUM_RW || layer < 0 || layer >= w->cfg.num_hidden_layers) return NULL;
    const qd_layer_weights *lw = &w->layers[layer];
    const float *const p[] = {
        NULL,       lw->input_layernorm,          lw->q_proj,    lw->k_proj,  lw->v_proj,   lw->q_norm, lw->k_norm,
        lw->o_proj, lw->post_attention_layernorm, lw->gate_proj, lw->up_proj, lw->down_proj};
    return p[k];
}

/* The fault as op `tap` of the contract takes it: the kernels host knorm-mul in k_norm only and residual-drop
 * in the attention residual only (qd_emu_ops.h); the history write's kv-cache-pos and the table's
 * rope-freq-bf16 are the callers'. */
static int fault_for(const qd_replay *rp, int tap) {
    if (rp->fault == QD_FAULT_KNORM_MUL && tap != QD_TAP_K_NORM) return QD_FAULT_NONE;
    if (rp->fault == QD_FAULT_RESIDUAL_DROP && tap != QD_TAP_ATTN_RESIDUAL) return QD_FAULT_NONE;
    return rp->fault;
}

int qd_replay_set_fault(qd_replay *rp, int fault, qd_err *e) {
    if (fault < QD_FAULT_NONE || fault >= QD_NUM_FAULTS)
        return qd_errf(e, QD_EINPUT, "replay: unknown fault %d", fault);
    const int HD = rp->w->cfg.head_dim;
    if (fault == QD_FAULT_ROPE_FREQ_BF16 && !rp->inv_freq_bf16) {
        if (!(rp->inv_freq_bf16 = qd_alloc((size_t)(HD / 2) * sizeof(float), e))) return QD_ERUNTIME;
        for (int i = 0; i < HD / 2; i++) rp->inv_freq_bf16[i] = qd_round_bf16(rp->inv_freq[i]);
    }
    rp->fault = fault;
    rp->emu = rp->lowp || fault != QD_FAULT_NONE;
    return QD_OK;
}

int qd_replay_outputs(const qd_replay *rp, qd_tap_id id, const float **oracle, const float **contract) {
    *oracle = *contract = NULL;
    if (!qd_tap_id_valid(id)) return 0;
    if (id.pos == QD_POS_LAYER) {
        *oracle = rp->o[id.tap];
        *contract = rp->c[id.tap];
    } else if (id.tap == QD_TAP_LOGITS) {
        *oracle = rp->lg_o;
        *contract = rp->lg_c;
    } else {
        *oracle = rp->fn_o;
        *contract = rp->fn_c;
    }
    return 1;
}

int qd_replay_history(const qd_replay *rp, int l, int n, const float **k, const float **v) {
    const qd_config *c = &rp->w->cfg;
    *k = *v = NULL;
    if (l < 0 || l >= c->num_hidden_layers || n < 0 || n > rp->max_seq) return 0;
    const size_t S = (size_t)rp->max_seq, kv = (size_t)c->num_key_value_heads * c->head_dim;
    for (int p = 0; p < n; p++)
        if (!rp->hist[(size_t)l * S + p]) return 0;
    *k = rp->kc_o + (size_t)l * S * kv;
    *v = rp->vc_o + (size_t)l * S * kv;
    return 1;
}

int qd_replay_layer(qd_replay *rp, const qd_tap_source *src, int l, const float *h_in, int T, int pos0,
                    qd_replay_op *ops, qd_err *e) {
    const qd_config *c = &rp->w->cfg;
    clear_ops(ops, QD_NUM_LAYER_TAPS);
    if (l < 0 || l >= c->num_hidden_layers) return qd_errf(e, QD_EINPUT, "replay: layer %d out of range", l);
    if (T <= 0 || pos0 < 0 || pos0 + T > rp->max_seq)
        return qd_errf(e, QD_EINPUT, "replay: layer %d: positions %d..%d exceed max_seq %d", l, pos0, pos0 + T - 1,
                       rp->max_seq);
    const int C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim, NH = c->num_attention_heads;
    const int NKV = c->num_key_value_heads;
    const float eps = (float)c->rms_norm_eps;
    const size_t TC = (size_t)T * C;

    const float *eng[QD_NUM_LAYER_TAPS];
    for (int t = 0; t < QD_NUM_LAYER_TAPS; t++) eng[t] = engine_tap(src, c, qd_tap_layer(l, t), T);
    /* done[t]: the op was replayed on both sides; avail(t): its output is known to its consumers, the
     * engine's tap (the same on both sides) or each side's own replay when the engine has no such tap */
    int done[QD_NUM_LAYER_TAPS] = {0};
#define AVAIL(t) (eng[t] || done[t])
#define IN_O(t) (eng[t] ? eng[t] : rp->o[t])
#define IN_C(t) (eng[t] ? eng[t] : rp->c[t])
/* op t's inputs (op_reads) are all known this step, and its weight is held (a repro file holds only its op's) */
#define READY(t) (ready(&op_reads[t], eng, done, h_in) && (op_reads[t].weight == QD_RW_NONE || W_O(t).data))
/* op t's weight on the oracle's and the contract's side */
#define W_O(t) qd_replay_weight_view(rp->w, l, op_reads[t].weight)
#define W_C(t) qd_replay_weight_view(rp->wc, l, op_reads[t].weight)
#define N_O(t) ((const float *)W_O(t).data) /* a norm weight: fp32 always */
#define N_C(t) ((const float *)W_C(t).data)
    float **O = rp->o, **K = rp->c;

    if (READY(QD_TAP_ATTN_NORM)) {
        norm_o(O[QD_TAP_ATTN_NORM], h_in, N_O(QD_TAP_ATTN_NORM), T, C, eps);
        norm_c(rp, K[QD_TAP_ATTN_NORM], input_c(rp, h_in, TC), N_C(QD_TAP_ATTN_NORM), T, C, eps,
               fault_for(rp, QD_TAP_ATTN_NORM));
        done[QD_TAP_ATTN_NORM] = 1;
    }
    const struct {
        int tap, out;
    } proj[3] = {{QD_TAP_Q_PROJ, NH * HD}, {QD_TAP_K_PROJ, NKV * HD}, {QD_TAP_V_PROJ, NKV * HD}};
    for (int i = 0; i < 3; i++) {
        const int t = proj[i].tap;
        if (!READY(t)) continue;
        matmul_forward_w(O[t], IN_O(QD_TAP_ATTN_NORM), W_O(t), T, C, proj[i].out, QD_ACCUM_F64);
        matmul_c(rp, K[t], IN_C(QD_TAP_ATTN_NORM), W_C(t), T, C, proj[i].out);
        done[t] = 1;
    }
    /* per-head norms over head_dim, then RoPE: q and k alike */
    const struct {
        int proj, norm, rope, nh;
    } qk[2] = {{QD_TAP_Q_PROJ, QD_TAP_Q_NORM, QD_TAP_Q_ROPE, NH}, {QD_TAP_K_PROJ, QD_TAP_K_NORM, QD_TAP_K_ROPE, NKV}};
    for (int i = 0; i < 2; i++) {
        const int nt = qk[i].norm, rt = qk[i].rope;
        if (READY(nt)) {
            norm_o(O[nt], IN_O(qk[i].proj), N_O(nt), T * qk[i].nh, HD, eps);
            norm_c(rp, K[nt], IN_C(qk[i].proj), N_C(nt), T * qk[i].nh, HD, eps, fault_for(rp, nt));
            done[nt] = 1;
        }
        if (READY(rt)) {
            size_t n = (size_t)T * qk[i].nh * HD;
            memcpy(O[rt], IN_O(nt), n * sizeof(float));
            memcpy(K[rt], IN_C(nt), n * sizeof(float));
            rope_oracle(O[rt], T, qk[i].nh, HD, pos0, c->rope_theta);
            rope_c(rp, K[rt], T, qk[i].nh, HD, pos0);
            done[rt] = 1;
        }
    }

    /* this step's keys and values join the history, then attention over positions 0..pos0+T-1 */
    const size_t S = (size_t)rp->max_seq, kv = (size_t)NKV * HD;
    float *kco = rp->kc_o + (size_t)l * S * kv, *vco = rp->vc_o + (size_t)l * S * kv; /* (max_seq, NKV, HD) */
    float *kcc = rp->kc_c + (size_t)l * S * kv, *vcc = rp->vc_c + (size_t)l * S * kv;
    unsigned char *hist = rp->hist + (size_t)l * S; /* (max_seq) */
    const int k_in = op_reads[QD_TAP_ATTN].in[1], v_in = op_reads[QD_TAP_ATTN].in[2];
    int have_kv = AVAIL(k_in) && AVAIL(v_in);
    for (int t = 0; t < T; t++) hist[pos0 + t] = (unsigned char)have_kv;
    if (have_kv) {
        /* fault kv-cache-pos: the contract's one-token step writes one position early, as emu's cache does */
        const int wpos = rp->fault == QD_FAULT_KV_POS && T == 1 && pos0 > 0 ? pos0 - 1 : pos0;
        memcpy(kco + (size_t)pos0 * kv, IN_O(k_in), (size_t)T * kv * sizeof(float));
        memcpy(kcc + (size_t)wpos * kv, IN_C(k_in), (size_t)T * kv * sizeof(float));
        memcpy(vco + (size_t)pos0 * kv, IN_O(v_in), (size_t)T * kv * sizeof(float));
        memcpy(vcc + (size_t)wpos * kv, IN_C(v_in), (size_t)T * kv * sizeof(float));
    }
    int full_hist = 1;
    for (int p = 0; p < pos0 + T; p++) full_hist &= hist[p];
    if (full_hist && READY(QD_TAP_ATTN)) {
        const int q_in = op_reads[QD_TAP_ATTN].in[0];
        const int fault = fault_for(rp, QD_TAP_ATTN);
        int rc = attention_forward(O[QD_TAP_ATTN], IN_O(q_in), kco, vco, T, pos0, NH, NKV, HD, QD_ACCUM_F64, e);
        if (!rc && rp->emu)
            emu_attention(K[QD_TAP_ATTN], IN_C(q_in), kcc, vcc, T, pos0, NH, NKV, HD, rp->act, rp->threads, fault,
                          rp->att_scratch);
        else if (!rc)
            rc = attention_forward(K[QD_TAP_ATTN], IN_C(q_in), kcc, vcc, T, pos0, NH, NKV, HD, rp->accum_c, e);
        if (!rc && rp->lowp && fault == QD_FAULT_NONE) /* the eager form, for the wider floor (widen_floor) */
            emu_attention_eager(rp->att_eager, IN_C(q_in), kcc, vcc, T, pos0, NH, NKV, HD, rp->act, rp->threads,
                                rp->att_scratch);
        if (rc) return rc;
        done[QD_TAP_ATTN] = 1;
    }
    if (READY(QD_TAP_O_PROJ)) {
        matmul_forward_w(O[QD_TAP_O_PROJ], IN_O(QD_TAP_ATTN), W_O(QD_TAP_O_PROJ), T, NH * HD, C, QD_ACCUM_F64);
        matmul_c(rp, K[QD_TAP_O_PROJ], IN_C(QD_TAP_ATTN), W_C(QD_TAP_O_PROJ), T, NH * HD, C);
        done[QD_TAP_O_PROJ] = 1;
    }
    /* the residual adds: fp32 adds over the stored values, rounded once in the contract */
    if (READY(QD_TAP_ATTN_RESIDUAL)) {
        residual_forward(O[QD_TAP_ATTN_RESIDUAL], h_in, IN_O(QD_TAP_O_PROJ), (long)TC);
        if (rp->emu)
            emu_residual(K[QD_TAP_ATTN_RESIDUAL], input_c(rp, h_in, TC), IN_C(QD_TAP_O_PROJ), (long)TC, rp->act,
                         fault_for(rp, QD_TAP_ATTN_RESIDUAL));
        else residual_forward(K[QD_TAP_ATTN_RESIDUAL], h_in, IN_C(QD_TAP_O_PROJ), (long)TC);
        done[QD_TAP_ATTN_RESIDUAL] = 1;
    }
    if (READY(QD_TAP_MLP_NORM)) {
        norm_o(O[QD_TAP_MLP_NORM], IN_O(QD_TAP_ATTN_RESIDUAL), N_O(QD_TAP_MLP_NORM), T, C, eps);
        norm_c(rp, K[QD_TAP_MLP_NORM], IN_C(QD_TAP_ATTN_RESIDUAL), N_C(QD_TAP_MLP_NORM), T, C, eps,
               fault_for(rp, QD_TAP_MLP_NORM));
        done[QD_TAP_MLP_NORM] = 1;
    }
    const int gu[2] = {QD_TAP_GATE_PROJ, QD_TAP_UP_PROJ};
    for (int i = 0; i < 2; i++) {
        if (!READY(gu[i])) continue;
        matmul_forward_w(O[gu[i]], IN_O(QD_TAP_MLP_NORM), W_O(gu[i]), T, C, I, QD_ACCUM_F64);
        matmul_c(rp, K[gu[i]], IN_C(QD_TAP_MLP_NORM), W_C(gu[i]), T, C, I);
        done[gu[i]] = 1;
    }
    if (READY(QD_TAP_ACT)) {
        swiglu_forward(O[QD_TAP_ACT], IN_O(QD_TAP_GATE_PROJ), IN_O(QD_TAP_UP_PROJ), (long)T * I);
        if (rp->emu)
            emu_swiglu(K[QD_TAP_ACT], IN_C(QD_TAP_GATE_PROJ), IN_C(QD_TAP_UP_PROJ), (long)T * I, rp->act,
                       fault_for(rp, QD_TAP_ACT));
        else swiglu_forward(K[QD_TAP_ACT], IN_C(QD_TAP_GATE_PROJ), IN_C(QD_TAP_UP_PROJ), (long)T * I);
        done[QD_TAP_ACT] = 1;
    }
    if (READY(QD_TAP_DOWN_PROJ)) {
        matmul_forward_w(O[QD_TAP_DOWN_PROJ], IN_O(QD_TAP_ACT), W_O(QD_TAP_DOWN_PROJ), T, I, C, QD_ACCUM_F64);
        matmul_c(rp, K[QD_TAP_DOWN_PROJ], IN_C(QD_TAP_ACT), W_C(QD_TAP_DOWN_PROJ), T, I, C);
        done[QD_TAP_DOWN_PROJ] = 1;
    }
    if (READY(QD_TAP_OUT)) {
        residual_forward(O[QD_TAP_OUT], IN_O(QD_TAP_ATTN_RESIDUAL), IN_O(QD_TAP_DOWN_PROJ), (long)TC);
        if (rp->emu)
            emu_residual(K[QD_TAP_OUT], IN_C(QD_TAP_ATTN_RESIDUAL), IN_C(QD_TAP_DOWN_PROJ), (long)TC, rp->act,
                         QD_FAULT_NONE);
        else residual_forward(K[QD_TAP_OUT], IN_C(QD_TAP_ATTN_RESIDUAL), IN_C(QD_TAP_DOWN_PROJ), (long)TC);
        done[QD_TAP_OUT] = 1;
    }
    /* mapped weights: the layer's pages leave the resident set until next used */
    qd_weights_release_layer(rp->w, l);
    if (rp->wc != rp->w) qd_weights_release_layer(rp->wc, l);
#undef AVAIL
#undef IN_O
#undef IN_C
#undef READY
#undef W_O
#undef W_C
#undef N_O
#undef N_C

    for (int t = 0; t < QD_NUM_LAYER_TAPS; t++) {
        if (!eng[t] || !done[t]) continue;
        int64_t shape[3];
        int nd = qd_layer_tap_shape(c, t, T, shape);
        measure(&ops[t], eng[t], O[t], K[t], nd, shape, rp->min_floor);
        if (t == QD_TAP_ATTN && rp->lowp && fault_for(rp, QD_TAP_ATTN) == QD_FAULT_NONE)
            widen_floor(&ops[t], rp->att_eager, O[t], nd, shape);
    }
    return QD_OK;
}

/* Every finite value of x (n) is a value of act: an engine that stores its logits in the activation dtype. */
static int all_in_act(qd_act_dtype act, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (isfinite(x[i]) && emu_round(act, x[i]) != x[i]) return 0;
    return 1;
}

int qd_replay_head(qd_replay *rp, const qd_tap_source *src, const float *h, int T, qd_replay_op *ops, qd_err *e) {
    const qd_config *c = &rp->w->cfg;
    clear_ops(ops, 2);
    if (T <= 0 || T > rp->max_seq)
        return qd_errf(e, QD_EINPUT, "replay: head: %d tokens do not fit max_seq %d", T, rp->max_seq);
    const int C = c->hidden_size, V = c->vocab_size;
    const float eps = (float)c->rms_norm_eps;
    const qd_tap_id fid = qd_tap_model(QD_TAP_FINAL_NORM), lid = qd_tap_model(QD_TAP_LOGITS);
    const float *fn = engine_tap(src, c, fid, T);
    int64_t shape[3];
    int nd;
    int have_fn = 0;
    if (h) {
        norm_o(rp->fn_o, h, rp->w->norm, T, C, eps);
        norm_c(rp, rp->fn_c, input_c(rp, h, (size_t)T * C), rp->wc->norm, T, C, eps, fault_for(rp, -1));
        have_fn = 1;
        if (fn) {
            nd = qd_tap_id_shape(c, fid, T, shape);
            measure(&ops[0], fn, rp->fn_o, rp->fn_c, nd, shape, rp->min_floor);
        }
    }
    if (!fn && !have_fn) return QD_OK;
    const float *lg = engine_tap(src, c, lid, T);
    if (!lg) return QD_OK;
    const float *in_o = fn ? fn : rp->fn_o, *in_c = fn ? fn : rp->fn_c;
    matmul_forward_w(rp->lg_o, in_o, qd_weights_mat(rp->w, 0, QD_WM_LM_HEAD), T, C, V, QD_ACCUM_F64);
    /* the contract keeps logits in fp32 (docs/PRECISION.md); an engine that stores them in its activation
     * dtype (every value representable) is replayed with that rounding, and judged by its floor */
    size_t n = (size_t)T * V;
    int rounded = rp->lowp && all_in_act(rp->act, lg, n);
    const qd_wview lm_head_c = qd_weights_mat(rp->wc, 0, QD_WM_LM_HEAD);
    if (rp->lowp) emu_matmul_w(rp->lg_c, in_c, lm_head_c, T, C, V, rounded ? rp->act : QD_ACT_FP32);
    else matmul_forward_w(rp->lg_c, in_c, lm_head_c, T, C, V, rp->accum_c);
    nd = qd_tap_id_shape(c, lid, T, shape);
    /* fp32 logits of a low-precision engine: their floor is fp32 summation noise, and an engine may sum the
     * C products in any order (lanes, splits, a tree). One order's error is not another's: the least floor
     * is the rms relative error of a length-C fp32 sum in an arbitrary order, sqrt(C) roundings of
     * 2^-24/sqrt(3) each (a random walk). Measured: the fused path's one-token lm_head GEMV on the 0.6B
     * shape (C 1024) sits at 4.0-4.1x the sequential sum's floor (2.5e-7), 0.9x this one (1.1e-6). */
    const double dot_floor = sqrt((double)C) * ldexp(1.0, -24) / sqrt(3.0);
    const double lg_floor = rp->min_floor_f32 > dot_floor ? rp->min_floor_f32 : dot_floor;
    measure(&ops[1], lg, rp->lg_o, rp->lg_c, nd, shape, rounded || !rp->lowp ? rp->min_floor : lg_floor);
    qd_weights_release(rp->w, 0, QD_WM_LM_HEAD);
    return QD_OK;
}

unsigned qd_replay_verdict(const qd_replay_op *op, double threshold, double blowup_ratio) {
    if (!op->have) return 0;
    unsigned v = 0;
    const qd_metrics *l = &op->local, *f = &op->floor;
    int64_t nf_engine = l->nan_test + l->posinf_test + l->neginf_test;
    int64_t nf_contract = f->nan_test + f->posinf_test + f->neginf_test;
    if (nf_engine > nf_contract || l->nonfinite_mismatch > f->nonfinite_mismatch) v |= QD_V_NONFINITE;
    if (op->ratio > threshold) v |= QD_V_LOCAL;
    if (l->mag_ratio >= blowup_ratio && f->mag_ratio < blowup_ratio) v |= QD_V_BLOWUP_MAG;
    if (l->max_mag_test == 0 && l->max_mag_ref > 0 && f->max_mag_test > 0 && l->n_finite > 0) v |= QD_V_COLLAPSE;
    return v;
}

qd_replay_figures qd_replay_figures_of(const qd_replay_op *op) {
    qd_replay_figures f = {NAN, NAN, NAN, NAN, NAN};
    if (!op || !op->have) return f;
    f.local_rel_l2 = op->local.rel_l2;
    f.floor_rel_l2 = op->floor.rel_l2;
    f.min_floor = op->min_floor;
    f.ratio = op->ratio;
    f.local_max_abs = op->local.max_abs;
    return f;
}
