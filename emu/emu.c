/* emu.c: the fused path's precision contract on the CPU (qd_emu.h, docs/PRECISION.md).
 *
 * The model stepped over emu's ops (qd_emu_ops.h: the shared maths of common/qd_spec.h with the contract's
 * roundings): read it beside reference/reference.c. Each op's output is rounded where a fused kernel
 * stores (or, fused, rounds in registers) a tensor, to the dtype of its precision point (`act_at`,
 * qd_emu.h): the activation dtype, unless the caller keeps that point in fp32. */
#include "qd_emu.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qd_bf16.h"
#include "qd_emu_ops.h"
#include "qd_spec.h"

struct qd_emu {
    const qd_config *cfg;
    qd_act_dtype act;
    int threads;  /* <= 0: OpenMP's default */
    int nthreads; /* the attention's OpenMP team: threads, or OpenMP's default at create */
    int max_seq;
    const qd_weights *w;  /* the weights in use, bf16 values held in fp32: the caller's when they are bf16
                            already (a bf16 checkpoint: no copy), else &own */
    qd_weights own;       /* the bf16-rounded copy, when one was needed */
    qd_fault fault;       /* the injected fault (kind QD_FAULT_NONE: none) */
    unsigned fp32_points; /* precision points kept in fp32 (bit p: qd_precision_point p); 0: the contract */
    float *inv_freq;      /* (HD/2) from theta in double, held in fp32 */
    float *inv_freq_bf16; /* (HD/2) the same rounded to bf16: fault rope-freq-bf16 */
    float *kcache;        /* (L, max_seq, NKV, HD) k_rope as stored */
    float *vcache;        /* (L, max_seq, NKV, HD) v_proj as stored */
    /* scratch for up to max_seq tokens */
    float *x;           /* (T, C) input, rounded */
    float *xn;          /* (T, C) attn_norm / mlp_norm */
    float *q;           /* (T, NH*HD) q_proj -> q_norm -> q_rope */
    float *k;           /* (T, NKV*HD) */
    float *v;           /* (T, NKV*HD) */
    float *att;         /* (T, NH*HD) */
    float *o;           /* (T, C) o_proj / down_proj */
    float *res;         /* (T, C) attn_residual */
    float *gate;        /* (T, I) */
    float *up;          /* (T, I) */
    float *att_scratch; /* (emu_attention_scratch(nthreads, max_seq, HD)) per-thread scores and accumulators */
};

/* The activation dtype of precision point p: fp32 when p is kept in fp32, else the contract's. */
static qd_act_dtype act_at(const qd_emu *m, qd_precision_point p) {
    return m->fp32_points >> p & 1u ? QD_ACT_FP32 : m->act;
}

/* A store of the residual stream: round-to-nearest-even, as __float2bfloat16_rn / __float2half_rn. */
static void round_residual(const qd_emu *m, float *x, size_t n) { emu_round_n(act_at(m, QD_PT_RESIDUAL), x, n); }

/* Emits a tap (a qd_tap_id) and returns from the calling function on a sink error (e as the sink left it). */
// ----------------------------------------------------------------------------
// precision points (qd_emu.h)

static const qd_precision_point_info points[QD_NUM_PRECISION_POINTS] = {
    [QD_PT_RESIDUAL] = {"residual", NULL, 1, -1,
                        "the residual stream as stored: embed, each layer's and the head's input, attn_residual, out"},
    [QD_PT_ATTN_NORM] = {"attn_norm", NULL, 1, QD_TAP_ATTN_NORM, "input RMSNorm output (and its sum of squares' type)"},
    [QD_PT_Q_PROJ] = {"q_proj", NULL, 1, QD_TAP_Q_PROJ, "q projection output"},
    [QD_PT_K_PROJ] = {"k_proj", NULL, 1, QD_TAP_K_PROJ, "k projection output"},
    [QD_PT_V_PROJ] = {"v_proj", NULL, 1, QD_TAP_V_PROJ, "v projection output, and so the V cache"},
    [QD_PT_Q_NORM] = {"q_norm", NULL, 1, QD_TAP_Q_NORM, "per-head RMSNorm of q"},
    [QD_PT_K_NORM] = {"k_norm", NULL, 1, QD_TAP_K_NORM, "per-head RMSNorm of k"},
    [QD_PT_Q_ROPE] = {"q_rope", NULL, 1, QD_TAP_Q_ROPE, "RoPE of q"},
    [QD_PT_K_ROPE] = {"k_rope", NULL, 1, QD_TAP_K_ROPE, "RoPE of k, and so the K cache"},
    [QD_PT_QK] = {"qk", "scores", 0, QD_TAP_ATTN, "attention scores q.k, scaled: fp32 in the contract already"},
    [QD_PT_SOFTMAX] = {"softmax", NULL, 1, QD_TAP_ATTN, "probabilities P = exp(s - m) as the P.V operand"},
    [QD_PT_ATTN] = {"attn", "pv", 1, QD_TAP_ATTN, "P.V output divided by the sum (tap attn)"},
    [QD_PT_O_PROJ] = {"o_proj", NULL, 1, QD_TAP_O_PROJ, "o projection output"},
    [QD_PT_MLP_NORM] = {"mlp_norm", NULL, 1, QD_TAP_MLP_NORM, "post-attention RMSNorm output"},
    [QD_PT_GATE_PROJ] = {"gate_proj", NULL, 1, QD_TAP_GATE_PROJ, "gate projection output"},
    [QD_PT_UP_PROJ] = {"up_proj", NULL, 1, QD_TAP_UP_PROJ, "up projection output"},
    [QD_PT_ACT] = {"act", "swiglu", 1, QD_TAP_ACT, "silu(gate) * up"},
    [QD_PT_DOWN_PROJ] = {"down_proj", NULL, 1, QD_TAP_DOWN_PROJ, "down projection output"},
    [QD_PT_FINAL_NORM] = {"final_norm", NULL, 1, QD_NUM_LAYER_TAPS, "final RMSNorm output (the lm_head's input)"},
};

const qd_precision_point_info *qd_precision_point_info_of(int p) {
    return p >= 0 && p < QD_NUM_PRECISION_POINTS ? &points[p] : NULL;
}

unsigned qd_precision_points_all(void) {
    unsigned mask = 0;
    for (int p = 0; p < QD_NUM_PRECISION_POINTS; p++)
        if (points[p].rounds) mask |= 1u << p;
    return mask;
}

/* word (n chars) spells name, ignoring case and '_' on both sides. */
static int spells(const char *word, size_t n, const char *name) {
    size_t i = 0;
    for (const char *c = name;; c++) {
        while (i < n && word[i] == '_') i++;
        while (*c == '_') c++;
        if (i == n || !*c) return i == n && !*c;
        char w = word[i] >= 'A' && word[i] <= 'Z' ? (char)(word[i] - 'A' + 'a') : word[i];
        if (w != *c) return 0;
        i++;
    }
}

int qd_precision_points_parse(const char *list, unsigned *mask, qd_err *e) {
    *mask = 0;
    for (const char *w = list; *w;) {
        size_t n = strcspn(w, ",");
        int found = -1;
        if (spells(w, n, "all")) {
            *mask |= qd_precision_points_all();
            found = QD_NUM_PRECISION_POINTS;
        } else if (spells(w, n, "none")) {
            found = QD_NUM_PRECISION_POINTS;
        }
        for (int p = 0; p < QD_NUM_PRECISION_POINTS && found < 0; p++)
            if (spells(w, n, points[p].name) || (points[p].alias && spells(w, n, points[p].alias))) found = p;
        if (found < 0) {
            char names[512];
            qd_precision_points_format((1u << QD_NUM_PRECISION_POINTS) - 1u, names, sizeof names);
            return qd_errf(e, QD_EINPUT, "--fp32-ops: unknown op '%.*s' (ops: %s, all, none)", (int)(n < 64 ? n : 64),
                           w, names);
        }
        if (found < QD_NUM_PRECISION_POINTS) *mask |= 1u << found;
        w += n;
        if (*w == ',') w++;
    }
    return QD_OK;
}

void qd_precision_points_format(unsigned mask, char *buf, size_t n) {
    if (!n) return;
    buf[0] = '\0';
    size_t k = 0;
    for (int p = 0; p < QD_NUM_PRECISION_POINTS; p++) {
        if (!(mask >> p & 1u)) continue;
        int w = snprintf(buf + k, n - k, "%s%s", k ? "," : "", points[p].name);
        if (w < 0 || (size_t)w >= n - k) return; /* truncated */
        k += (size_t)w;
    }
    if (!k) snprintf(buf, n, "none");
}

#define EMIT(id, data)                                      \
    do {                                                    \
        int rc_ = qd_tap_emit(sink, c, (id), (data), T, e); \
        if (rc_) return rc_;                                \
    } while (0)

// ----------------------------------------------------------------------------
// create / free

static void round_bf16_copy(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = qd_round_bf16(src[i]);
}

int qd_emu_shares_weights(const qd_emu *m) { return m->w != &m->own; }

void qd_emu_set_fp32_points(qd_emu *m, unsigned mask) { m->fp32_points = mask; }

qd_emu *qd_emu_create(const qd_weights *w, qd_act_dtype act, int threads, int max_seq, const qd_fault *fault,
                      qd_err *e) {
    if (max_seq <= 0) {
        qd_errf(e, QD_EINPUT, "emu: max_seq must be positive, got %d", max_seq);
        return NULL;
    }
    const qd_config *c = &w->cfg;
    qd_emu *m = qd_zalloc(1, sizeof *m, e);
    if (!m) return NULL;
    m->act = act;
    m->threads = threads;
    m->nthreads = threads > 0 ? threads : omp_get_max_threads();
    if (fault) m->fault = *fault;
    m->max_seq = max_seq;
    if (qd_weights_all_bf16(w)) {
        m->w = w;
    } else {
        /* an fp32 copy of every tensor, each value then rounded to bf16 */
        if (qd_weights_to_f32(w, &m->own, e)) {
            free(m);
            return NULL;
        }
        round_bf16_copy(m->own.mem, m->own.mem, m->own.mem_floats);
        m->w = &m->own;
    }
    m->cfg = &m->w->cfg;

    size_t C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim;
    size_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, L = c->num_hidden_layers;
    size_t S = (size_t)max_seq;
    if (!(m->inv_freq = qd_alloc(HD / 2 * sizeof(float), e)) ||
        !(m->inv_freq_bf16 = qd_alloc(HD / 2 * sizeof(float), e)) ||
        !(m->kcache = qd_zalloc(L * S * NKV * HD, sizeof(float), e)) ||
        !(m->vcache = qd_zalloc(L * S * NKV * HD, sizeof(float), e)) || !(m->x = qd_alloc(S * C * sizeof(float), e)) ||
        !(m->xn = qd_alloc(S * C * sizeof(float), e)) || !(m->q = qd_alloc(S * NH * HD * sizeof(float), e)) ||
        !(m->k = qd_alloc(S * NKV * HD * sizeof(float), e)) || !(m->v = qd_alloc(S * NKV * HD * sizeof(float), e)) ||
        !(m->att = qd_alloc(S * NH * HD * sizeof(float), e)) || !(m->o = qd_alloc(S * C * sizeof(float), e)) ||
        !(m->res = qd_alloc(S * C * sizeof(float), e)) || !(m->gate = qd_alloc(S * I * sizeof(float), e)) ||
        !(m->up = qd_alloc(S * I * sizeof(float), e)) ||
        !(m->att_scratch = qd_alloc(emu_attention_scratch(m->nthreads, max_seq, (int)HD) * sizeof(float), e))) {
        qd_emu_free(m);
        return NULL;
    }
    rope_inv_freq(m->inv_freq, (int)HD, c->rope_theta);
    for (size_t i = 0; i < HD / 2; i++) m->inv_freq_bf16[i] = qd_round_bf16(m->inv_freq[i]);
    return m;
}

void qd_emu_free(qd_emu *m) {
    if (!m) return;
    if (m->w == &m->own) qd_weights_free(&m->own);
    free(m->inv_freq);
    free(m->inv_freq_bf16);
    free(m->kcache);
    free(m->vcache);
    free(m->x);
    free(m->xn);
    free(m->q);
    free(m->k);
    free(m->v);
    free(m->att);
    free(m->o);
    free(m->res);
    free(m->gate);
    free(m->up);
    free(m->att_scratch);
    free(m);
}

// ----------------------------------------------------------------------------
// emu's ops (qd_emu_ops.h) with this model's shapes and layer l's fault

/* The fault as layer l's ops take it: its kind when it is active in layer l (-1: the final norm, active only
 * for a fault in every layer), else QD_FAULT_NONE. */
static int fault_in(const qd_emu *m, int l) {
    return m->fault.kind != QD_FAULT_NONE && qd_fault_at(&m->fault, m->fault.kind, l) ? (int)m->fault.kind
                                                                                      : (int)QD_FAULT_NONE;
}

/* RMSNorm over rows of n (the hidden norms, q_norm) at point p: knorm-mul is k_norm's alone. */
static void norm_act(const qd_emu *m, qd_precision_point p, float *out, const float *x, const float *w, int rows, int n,
                     int l) {
    int fault = fault_in(m, l);
    emu_rmsnorm(out, x, w, rows, n, (float)m->cfg->rms_norm_eps, act_at(m, p),
                fault == QD_FAULT_KNORM_MUL ? (int)QD_FAULT_NONE : fault);
}

/* W: layer l's matrix k, bf16 values (fp32 or read in place). */
static void matmul_act(const qd_emu *m, qd_precision_point p, float *out, const float *x, int l, qd_wmat k, int T,
                       int in, int out_dim) {
    emu_matmul_w(out, x, qd_weights_mat(m->w, l, k), T, in, out_dim, act_at(m, p));
}

static void attention_act(const qd_emu *m, float *out, const float *q, const float *kc, const float *vc, int T,
                          int pos0, int l) {
    const qd_config *c = m->cfg;
    /* the kernel (its key tile) is the activation dtype's whatever the points */
    emu_attention_at(out, q, kc, vc, T, pos0, c->num_attention_heads, c->num_key_value_heads, c->head_dim, m->act,
                     act_at(m, QD_PT_SOFTMAX), act_at(m, QD_PT_ATTN), m->nthreads, fault_in(m, l), m->att_scratch);
}

/* Fault rope-freq-bf16 is the choice of frequencies (as fused's host picks its table). */
static void rope_act(const qd_emu *m, qd_precision_point p, float *x, int T, int nheads, int pos0, int l) {
    int fault = fault_in(m, l);
    emu_rope(x, T, nheads, m->cfg->head_dim, pos0, fault == QD_FAULT_ROPE_FREQ_BF16 ? m->inv_freq_bf16 : m->inv_freq,
             act_at(m, p), fault);
}

// ----------------------------------------------------------------------------
// the model, stepped

int qd_emu_embed(qd_emu *m, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e) {
    const qd_config *c = m->cfg;
    size_t C = c->hidden_size;
    if (T > m->max_seq) return qd_errf(e, QD_EINPUT, "emu: embed: %d tokens do not fit max_seq %d", T, m->max_seq);
    qd_wview embed = qd_weights_mat(m->w, 0, QD_WM_EMBED); /* (V, C) */
    for (int t = 0; t < T; t++) qd_wview_to_f32(embed, (size_t)tokens[t] * C, C, h + (size_t)t * C);
    qd_weights_release(m->w, 0, QD_WM_EMBED);
    round_residual(m, h, (size_t)T * C); /* exact for bf16 weights; fp16 activations round here */
    EMIT(qd_tap_model(QD_TAP_EMBED), h);
    return QD_OK;
}

int qd_emu_layer(qd_emu *m, int l, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink, qd_err *e) {
    const qd_config *c = m->cfg;
    const qd_layer_weights *lw = &m->w->layers[l];
    int C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim;
    int NH = c->num_attention_heads, NKV = c->num_key_value_heads;
    if (pos0 < 0 || pos0 + T > m->max_seq)
        return qd_errf(e, QD_EINPUT, "emu: layer %d: positions %d..%d exceed the KV cache", l, pos0, pos0 + T - 1);
    size_t S = (size_t)m->max_seq;

    memcpy(m->x, h_in, (size_t)T * C * sizeof(float));
    round_residual(m, m->x, (size_t)T * C); /* the hidden state as the device stores it */

    norm_act(m, QD_PT_ATTN_NORM, m->xn, m->x, lw->input_layernorm, T, C, l);
    EMIT(qd_tap_layer(l, QD_TAP_ATTN_NORM), m->xn);
    matmul_act(m, QD_PT_Q_PROJ, m->q, m->xn, l, QD_WM_Q_PROJ, T, C, NH * HD);
    EMIT(qd_tap_layer(l, QD_TAP_Q_PROJ), m->q);
    matmul_act(m, QD_PT_K_PROJ, m->k, m->xn, l, QD_WM_K_PROJ, T, C, NKV * HD);
    EMIT(qd_tap_layer(l, QD_TAP_K_PROJ), m->k);
    matmul_act(m, QD_PT_V_PROJ, m->v, m->xn, l, QD_WM_V_PROJ, T, C, NKV * HD);
    EMIT(qd_tap_layer(l, QD_TAP_V_PROJ), m->v);

    norm_act(m, QD_PT_Q_NORM, m->q, m->q, lw->q_norm, T * NH, HD, l); /* per head, over head_dim */
    EMIT(qd_tap_layer(l, QD_TAP_Q_NORM), m->q);
    emu_rmsnorm(m->k, m->k, lw->k_norm, T * NKV, HD, (float)c->rms_norm_eps, act_at(m, QD_PT_K_NORM),
                fault_in(m, l)); /* knorm-mul */
    EMIT(qd_tap_layer(l, QD_TAP_K_NORM), m->k);
    rope_act(m, QD_PT_Q_ROPE, m->q, T, NH, pos0, l);
    EMIT(qd_tap_layer(l, QD_TAP_Q_ROPE), m->q);
    rope_act(m, QD_PT_K_ROPE, m->k, T, NKV, pos0, l);
    EMIT(qd_tap_layer(l, QD_TAP_K_ROPE), m->k);

    float *kc = m->kcache + (size_t)l * S * NKV * HD; /* (max_seq, NKV, HD) */
    float *vc = m->vcache + (size_t)l * S * NKV * HD;
    /* fault 12: the decode path writes one position early (over the previous token's K/V) */
    int wpos = T == 1 && pos0 > 0 && qd_fault_at(&m->fault, QD_FAULT_KV_POS, l) ? pos0 - 1 : pos0;
    memcpy(kc + (size_t)wpos * NKV * HD, m->k, (size_t)T * NKV * HD * sizeof(float));
    memcpy(vc + (size_t)wpos * NKV * HD, m->v, (size_t)T * NKV * HD * sizeof(float));

    attention_act(m, m->att, m->q, kc, vc, T, pos0, l);
    EMIT(qd_tap_layer(l, QD_TAP_ATTN), m->att);
    matmul_act(m, QD_PT_O_PROJ, m->o, m->att, l, QD_WM_O_PROJ, T, NH * HD, C);
    EMIT(qd_tap_layer(l, QD_TAP_O_PROJ), m->o);
    emu_residual(m->res, m->x, m->o, (long)T * C, act_at(m, QD_PT_RESIDUAL), fault_in(m, l)); /* residual-drop */
    EMIT(qd_tap_layer(l, QD_TAP_ATTN_RESIDUAL), m->res);

    norm_act(m, QD_PT_MLP_NORM, m->xn, m->res, lw->post_attention_layernorm, T, C, l);
    EMIT(qd_tap_layer(l, QD_TAP_MLP_NORM), m->xn);
    matmul_act(m, QD_PT_GATE_PROJ, m->gate, m->xn, l, QD_WM_GATE_PROJ, T, C, I);
    EMIT(qd_tap_layer(l, QD_TAP_GATE_PROJ), m->gate);
    matmul_act(m, QD_PT_UP_PROJ, m->up, m->xn, l, QD_WM_UP_PROJ, T, C, I);
    EMIT(qd_tap_layer(l, QD_TAP_UP_PROJ), m->up);
    emu_swiglu(m->gate, m->gate, m->up, (long)T * I, act_at(m, QD_PT_ACT), fault_in(m, l)); /* act-gelu */
    EMIT(qd_tap_layer(l, QD_TAP_ACT), m->gate);
    matmul_act(m, QD_PT_DOWN_PROJ, m->o, m->gate, l, QD_WM_DOWN_PROJ, T, I, C);
    EMIT(qd_tap_layer(l, QD_TAP_DOWN_PROJ), m->o);
    /* the MLP's: residual-drop is not its bug */
    emu_residual(h_out, m->res, m->o, (long)T * C, act_at(m, QD_PT_RESIDUAL), QD_FAULT_NONE);
    qd_weights_release_layer(m->w, l); /* a mapped layer's pages leave the resident set until next used */
    EMIT(qd_tap_layer(l, QD_TAP_OUT), h_out);
    return QD_OK;
}

int qd_emu_head(qd_emu *m, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e) {
    const qd_config *c = m->cfg;
    int C = c->hidden_size;
    memcpy(m->x, h, (size_t)T * C * sizeof(float));
    round_residual(m, m->x, (size_t)T * C);
    norm_act(m, QD_PT_FINAL_NORM, m->xn, m->x, m->w->norm, T, C, -1);
    EMIT(qd_tap_model(QD_TAP_FINAL_NORM), m->xn);
    /* logits stay fp32: fp32 accumulation over the stored final_norm, not rounded */
    emu_matmul_w(logits, m->xn, qd_weights_mat(m->w, 0, QD_WM_LM_HEAD), T, C, c->vocab_size, QD_ACT_FP32);
    qd_weights_release(m->w, 0, QD_WM_LM_HEAD);
    EMIT(qd_tap_model(QD_TAP_LOGITS), logits);
    return QD_OK;
}
