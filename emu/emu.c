/* emu.c: the fused path's precision contract on the CPU (qd_emu.h, docs/PRECISION.md).
 *
 * Written as the reference's ops with the contract's roundings between them: read it beside
 * reference/reference.c. Each `round_act` below is a point where a fused kernel stores (or, fused, rounds
 * in registers) a tensor in the activation dtype. */
#include "qd_emu.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "qd_bf16.h"
#include "qd_ref_ops.h"

struct qd_emu {
    const qd_config *cfg;
    qd_act_dtype act;
    int threads;
    int max_seq;
    const qd_weights *w; /* the weights in use, bf16 values held in fp32: the caller's when they are bf16
                            already (a bf16 checkpoint: no copy), else &own */
    qd_weights own;   /* the bf16-rounded copy, when one was needed */
    qd_fault fault;   /* the injected fault (kind QD_FAULT_NONE: none) */
    float *inv_freq;  /* (HD/2) from theta in double, held in fp32 */
    float *inv_freq_bf16; /* (HD/2) the same rounded to bf16: fault rope-freq-bf16 */
    float *kcache;    /* (L, max_seq, NKV, HD) k_rope as stored */
    float *vcache;    /* (L, max_seq, NKV, HD) v_proj as stored */
    /* scratch for up to max_seq tokens */
    float *x;         /* (T, C) input, rounded */
    float *xn;        /* (T, C) attn_norm / mlp_norm */
    float *q;         /* (T, NH*HD) q_proj -> q_norm -> q_rope */
    float *k;         /* (T, NKV*HD) */
    float *v;         /* (T, NKV*HD) */
    float *att;       /* (T, NH*HD) */
    float *o;         /* (T, C) o_proj / down_proj */
    float *res;       /* (T, C) attn_residual */
    float *gate;      /* (T, I) */
    float *up;        /* (T, I) */
};

/* A store in the activation dtype: round-to-nearest-even, as __float2bfloat16_rn / __float2half_rn. */
static void round_act(const qd_emu *m, float *x, size_t n) {
    if (m->act == QD_ACT_BF16)
        for (size_t i = 0; i < n; i++) x[i] = qd_round_bf16(x[i]);
    else if (m->act == QD_ACT_FP16)
        for (size_t i = 0; i < n; i++) x[i] = qd_round_f16(x[i]);
}

static float round1(const qd_emu *m, float x) {
    return m->act == QD_ACT_BF16 ? qd_round_bf16(x) : m->act == QD_ACT_FP16 ? qd_round_f16(x) : x;
}

static int emit(qd_tap_sink *sink, int layer, const qd_config *c, int tap, int T, const float *data) {
    if (!sink) return QD_OK;
    int64_t shape[3];
    if (layer < 0) {
        int nd = qd_model_tap_shape(c, tap, T, shape);
        return sink->emit(sink, -1, qd_model_tap_name(tap), data, nd, shape);
    }
    int nd = qd_layer_tap_shape(c, tap, T, shape);
    return sink->emit(sink, layer, qd_layer_tap_name(tap), data, nd, shape);
}

#define EMIT(layer, tap, data)                                                                            \
    do {                                                                                                  \
        int rc_ = emit(sink, (layer), c, (tap), T, (data));                                               \
        if (rc_) return rc_;                                                                              \
    } while (0)

// ----------------------------------------------------------------------------
// create / free

static void round_bf16_copy(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = qd_round_bf16(src[i]);
}

/* Every value already a bf16 value (rounding leaves its bits alone; a NaN never does). */
static int all_bf16(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float r = qd_round_bf16(x[i]);
        if (memcmp(&r, &x[i], sizeof r) != 0) return 0;
    }
    return 1;
}

int qd_emu_shares_weights(const qd_emu *m) { return m->w != &m->own; }

qd_emu *qd_emu_create(const qd_weights *w, qd_act_dtype act, int threads, int max_seq, const qd_fault *fault,
                      qd_err *e) {
    if (max_seq <= 0) {
        qd_errf(e, QD_EINPUT, "emu: max_seq must be positive, got %d", max_seq);
        return NULL;
    }
    const qd_config *c = &w->cfg;
    qd_emu *m = qd_calloc(1, sizeof *m);
    m->act = act;
    m->threads = threads;
    if (fault) m->fault = *fault;
    m->max_seq = max_seq;
    if (all_bf16(w->mem, w->mem_floats)) {
        m->w = w;
    } else {
        qd_weights_alloc(&m->own, c);
        /* Every tensor lives in one allocation in both structs with the same layout, so one pass rounds
         * all of them; lm_head is its own tensor only when untied. */
        if (m->own.mem_floats != w->mem_floats) { /* both come from the same layout function */
            qd_errf(e, QD_ERUNTIME, "emu: weight layout mismatch (%zu vs %zu floats)", m->own.mem_floats,
                    w->mem_floats);
            qd_weights_free(&m->own);
            free(m);
            return NULL;
        }
        round_bf16_copy(m->own.mem, w->mem, w->mem_floats);
        m->w = &m->own;
    }
    m->cfg = &m->w->cfg;

    size_t C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim;
    size_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, L = c->num_hidden_layers;
    size_t S = (size_t)max_seq;
    m->inv_freq = qd_malloc(HD / 2 * sizeof(float));
    rope_inv_freq(m->inv_freq, (int)HD, c->rope_theta);
    m->inv_freq_bf16 = qd_malloc(HD / 2 * sizeof(float));
    for (size_t i = 0; i < HD / 2; i++) m->inv_freq_bf16[i] = qd_round_bf16(m->inv_freq[i]);
    m->kcache = qd_calloc(L * S * NKV * HD, sizeof(float));
    m->vcache = qd_calloc(L * S * NKV * HD, sizeof(float));
    m->x = qd_malloc(S * C * sizeof(float));
    m->xn = qd_malloc(S * C * sizeof(float));
    m->q = qd_malloc(S * NH * HD * sizeof(float));
    m->k = qd_malloc(S * NKV * HD * sizeof(float));
    m->v = qd_malloc(S * NKV * HD * sizeof(float));
    m->att = qd_malloc(S * NH * HD * sizeof(float));
    m->o = qd_malloc(S * C * sizeof(float));
    m->res = qd_malloc(S * C * sizeof(float));
    m->gate = qd_malloc(S * I * sizeof(float));
    m->up = qd_malloc(S * I * sizeof(float));
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
    free(m);
}

// ----------------------------------------------------------------------------
// ops with the contract's roundings

/* RMSNorm over rows of n, fp32 sum of squares, one rounding of x * rsqrt(mean + eps) * w. l: the layer
 * (-1 for the final norm), for the faults that live here. */
static void norm_act(const qd_emu *m, float *out, const float *x, const float *w, int rows, int n, int l) {
    int lowp = qd_fault_at(&m->fault, QD_FAULT_NORM_SUMSQ_LOWP, l);
    int eps_outside = qd_fault_at(&m->fault, QD_FAULT_EPS_OUTSIDE, l);
    if (!lowp && !eps_outside) {
        rmsnorm_forward(out, x, w, rows, n, (float)m->cfg->rms_norm_eps, QD_ACCUM_F32);
        round_act(m, out, (size_t)rows * n);
        return;
    }
    float eps = (float)m->cfg->rms_norm_eps;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *o = out + (size_t)r * n;
        float ss = 0.0f;
        for (int i = 0; i < n; i++) /* fault 8: the accumulator has the activation's type */
            ss = lowp ? round1(m, ss + round1(m, xr[i] * xr[i])) : ss + xr[i] * xr[i];
        float scale = eps_outside ? 1.0f / (sqrtf(ss / (float)n) + eps) /* fault 9 */
                                  : 1.0f / sqrtf(ss / (float)n + eps);
        for (int i = 0; i < n; i++) o[i] = round1(m, (xr[i] * scale) * w[i]);
    }
}

/* GEMM over stored inputs and bf16 weights, fp32 accumulation, output rounded. */
static void matmul_act(const qd_emu *m, float *out, const float *x, const float *W, int T, int in, int out_dim) {
    matmul_forward(out, x, W, T, in, out_dim, QD_ACCUM_F32);
    round_act(m, out, (size_t)T * out_dim);
}

/* Keys per tile of the fused attention kernel (FA_BC in fused/attention.cuh); only the faulty online-softmax
 * path (fault 13) walks tiles, the clean path's two-pass softmax has none. */
#define EMU_FA_BC 64

/* Softmax and P.V of one query row, prefill: keys in tiles of `tile` with a running max, as the fused
 * prefill kernels walk them. Per tile: mt = max(m, the tile's scores), alpha = exp(m - mt) rescales the
 * sum and the accumulator, P = A(exp(s - mt)) enters P.V and the unrounded exps enter the sum. Returns
 * the sum; acc (HD) holds P.V. s (n_keys) scores; v: key 0's value row, rows kv_stride apart. */
static float softmax_pv_tiles(const qd_emu *m, float *acc, const float *s, const float *v, size_t kv_stride,
                              int n_keys, int tile) {
    int HD = m->cfg->head_dim;
    float mx = -INFINITY, sum = 0.0f;
    for (int j0 = 0; j0 < n_keys; j0 += tile) {
        int j1 = j0 + tile < n_keys ? j0 + tile : n_keys;
        float mt = mx;
        for (int j = j0; j < j1; j++)
            if (s[j] > mt) mt = s[j];
        float alpha = expf(mx - mt); /* 0 for the first tile */
        float ts = 0.0f;
        for (int d = 0; d < HD; d++) acc[d] *= alpha;
        for (int j = j0; j < j1; j++) {
            float e = expf(s[j] - mt);
            ts += e;
            float pr = round1(m, e);
            for (int d = 0; d < HD; d++) acc[d] += pr * v[(size_t)j * kv_stride + d];
        }
        sum = sum * alpha + ts;
        mx = mt;
    }
    return sum;
}

/* The same for one token over the cache, as the fused decode kernel splits it: splits of EMU_FA_BC keys,
 * each with its own max m_s, P = A(exp(s - m_s)), sum l_s and accumulator acc_s; then, in split order,
 * sum += l_s w_s and acc += acc_s w_s with w_s = exp(m_s - max_s m_s). acc_s (HD) scratch. */
static float softmax_pv_splits(const qd_emu *m, float *acc, const float *s, const float *v, size_t kv_stride,
                               int n_keys, float *acc_s) {
    int HD = m->cfg->head_dim;
    float top = -INFINITY, sum = 0.0f;
    for (int j = 0; j < n_keys; j++)
        if (s[j] > top) top = s[j];
    for (int j0 = 0; j0 < n_keys; j0 += EMU_FA_BC) {
        int j1 = j0 + EMU_FA_BC < n_keys ? j0 + EMU_FA_BC : n_keys;
        float ms = -INFINITY, ls = 0.0f;
        for (int j = j0; j < j1; j++)
            if (s[j] > ms) ms = s[j];
        for (int d = 0; d < HD; d++) acc_s[d] = 0.0f;
        for (int j = j0; j < j1; j++) {
            float e = expf(s[j] - ms);
            ls += e;
            float pr = round1(m, e);
            for (int d = 0; d < HD; d++) acc_s[d] += pr * v[(size_t)j * kv_stride + d];
        }
        float w = expf(ms - top);
        sum += ls * w;
        for (int d = 0; d < HD; d++) acc[d] += acc_s[d] * w;
    }
    return sum;
}

/* Causal GQA attention as the fused kernels compute it: fp32 scores over the stored q and k, fp32 max and
 * sum, probabilities rounded to the activation dtype for the P.V product with the max known when they are
 * formed (key tiles with a running max in prefill, splits with their own max for one token; the sum uses
 * the unrounded exps), fp32 accumulation, the output divided by the sum and rounded.
 * q (T, NH, HD); kc, vc (max_seq, NKV, HD); out (T, NH*HD). l: the layer, for the faults that live here. */
static void attention_act(const qd_emu *m, float *out, const float *q, const float *kc, const float *vc, int T,
                          int pos0, int l) {
    const qd_config *c = m->cfg;
    int NH = c->num_attention_heads, NKV = c->num_key_value_heads, HD = c->head_dim;
    int kv_mul = NH / NKV;
    size_t kv_stride = (size_t)NKV * HD;
    const qd_fault *f = &m->fault;
    int gqa_mod = qd_fault_at(f, QD_FAULT_GQA_MOD, l), no_causal = qd_fault_at(f, QD_FAULT_NO_CAUSAL, l);
    int no_max = qd_fault_at(f, QD_FAULT_SOFTMAX_NO_MAX, l), online_bug = qd_fault_at(f, QD_FAULT_ONLINE_RESCALE, l);
    float scale = qd_fault_at(f, QD_FAULT_NO_SCALE, l) ? 1.0f : (float)(1.0 / sqrt((double)HD));
    int max_keys = pos0 + T;
    /* the prefill kernel's key tile: 64 on tensor cores (bf16, head_dim 32/64/128), else 128 */
    int tile = m->act == QD_ACT_BF16 && (HD == 32 || HD == 64 || HD == 128) ? EMU_FA_BC : 2 * EMU_FA_BC;
#pragma omp parallel num_threads(m->threads > 0 ? m->threads : omp_get_max_threads())
    {
        /* (max_keys) scores, then (HD) acc and (HD) one split's acc */
        float *p = qd_malloc(((size_t)max_keys + 2 * (size_t)HD) * sizeof(float));
        float *acc = p + max_keys;
#pragma omp for collapse(2) schedule(static)
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < NH; h++) {
                int n_keys = no_causal ? max_keys : pos0 + t + 1; /* fault 5: every key of the step */
                int kvh = gqa_mod ? h % NKV : h / kv_mul;         /* fault 4 */
                const float *qh = q + ((size_t)t * NH + h) * HD;
                const float *k = kc + (size_t)kvh * HD;
                const float *v = vc + (size_t)kvh * HD;
                for (int j = 0; j < n_keys; j++) {
                    float s = 0.0f;
                    for (int d = 0; d < HD; d++) s += qh[d] * k[(size_t)j * kv_stride + d];
                    p[j] = s * scale;
                }
                for (int d = 0; d < HD; d++) acc[d] = 0.0f;
                float sum = 0.0f;
                if (online_bug) {
                    /* fault 13, the seed: FlashAttention's loop over tiles of EMU_FA_BC keys (fused/attention.cuh's
                     * FA_BC) with correct max bookkeeping for the accumulator (rescaled by exp(old max - new max)
                     * and carried), but the row sum l re-initialised in every tile instead of rescaled and
                     * carried. acc / l then divides the whole row's mass by the last tile's sum alone: where that
                     * tile's scores lie ~67 below the row max (the extreme k_norm layers), 1/l is ~1e29. Tiles a
                     * row cannot see at all are skipped, as the kernel skips fully masked tiles. */
                    float mx = -INFINITY;
                    for (int j0 = 0; j0 < n_keys; j0 += EMU_FA_BC) {
                        int j1 = j0 + EMU_FA_BC < n_keys ? j0 + EMU_FA_BC : n_keys;
                        float mt = mx;
                        for (int j = j0; j < j1; j++)
                            if (p[j] > mt) mt = p[j];
                        float corr = expf(mx - mt); /* 0 for the first tile */
                        for (int d = 0; d < HD; d++) acc[d] *= corr;
                        sum = 0.0f; /* the bug: the kernel must keep sum * corr here */
                        for (int j = j0; j < j1; j++) {
                            float e = expf(p[j] - mt);
                            sum += e;
                            float pr = round1(m, e); /* P rounded with the running max, as the kernel does */
                            for (int d = 0; d < HD; d++) acc[d] += pr * v[(size_t)j * kv_stride + d];
                        }
                        mx = mt;
                    }
                } else if (no_max) {
                    /* fault 6: exp(s) with the max taken as 0, which overflows once s > 88 */
                    for (int j = 0; j < n_keys; j++) {
                        float e = expf(p[j]);
                        sum += e;
                        p[j] = round1(m, e);
                    }
                    for (int j = 0; j < n_keys; j++)
                        for (int d = 0; d < HD; d++) acc[d] += p[j] * v[(size_t)j * kv_stride + d];
                } else if (T == 1) {
                    sum = softmax_pv_splits(m, acc, p, v, kv_stride, n_keys, acc + HD);
                } else {
                    sum = softmax_pv_tiles(m, acc, p, v, kv_stride, n_keys, tile);
                }
                float *oh = out + ((size_t)t * NH + h) * HD;
                for (int d = 0; d < HD; d++) oh[d] = round1(m, acc[d] / sum);
            }
        }
        free(p);
    }
}

/* RoPE over x (T, nheads, HD), rotate-half, rounded; the faults that live here swap the pairing
 * (fault 2) or the frequencies (fault 3). */
static void rope_act(const qd_emu *m, float *x, int T, int nheads, int pos0, int l) {
    int HD = m->cfg->head_dim;
    const float *inv_freq = qd_fault_at(&m->fault, QD_FAULT_ROPE_FREQ_BF16, l) ? m->inv_freq_bf16 : m->inv_freq;
    if (qd_fault_at(&m->fault, QD_FAULT_ROPE_INTERLEAVED, l)) {
        for (int t = 0; t < T; t++) {
            float pos = (float)(pos0 + t);
            for (int i = 0; i < HD / 2; i++) {
                float angle = pos * inv_freq[i];
                float cs = (float)cos((double)angle), sn = (float)sin((double)angle);
                for (int h = 0; h < nheads; h++) {
                    float *xh = x + ((size_t)t * nheads + h) * HD;
                    float x0 = xh[2 * i], x1 = xh[2 * i + 1]; /* GPT-J pairs, wrong for Qwen3 */
                    xh[2 * i] = x0 * cs - x1 * sn;
                    xh[2 * i + 1] = x1 * cs + x0 * sn;
                }
            }
        }
    } else {
        rope_forward(x, T, nheads, HD, pos0, inv_freq);
    }
    round_act(m, x, (size_t)T * nheads * HD);
}

// ----------------------------------------------------------------------------
// the model, stepped

int qd_emu_embed(qd_emu *m, const int32_t *tokens, int T, float *h, qd_tap_sink *sink) {
    const qd_config *c = m->cfg;
    size_t C = c->hidden_size;
    if (T > m->max_seq) return QD_EINPUT;
    for (int t = 0; t < T; t++) memcpy(h + (size_t)t * C, m->w->embed + (size_t)tokens[t] * C, C * sizeof(float));
    round_act(m, h, (size_t)T * C); /* exact for bf16 weights; fp16 activations round here */
    EMIT(-1, QD_TAP_EMBED, h);
    return QD_OK;
}

int qd_emu_layer(qd_emu *m, int l, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink) {
    const qd_config *c = m->cfg;
    const qd_layer_weights *lw = &m->w->layers[l];
    int C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim;
    int NH = c->num_attention_heads, NKV = c->num_key_value_heads;
    if (pos0 < 0 || pos0 + T > m->max_seq) return QD_EINPUT;
    size_t S = (size_t)m->max_seq;

    memcpy(m->x, h_in, (size_t)T * C * sizeof(float));
    round_act(m, m->x, (size_t)T * C); /* the hidden state as the device stores it */

    norm_act(m, m->xn, m->x, lw->input_layernorm, T, C, l);
    EMIT(l, QD_TAP_ATTN_NORM, m->xn);
    matmul_act(m, m->q, m->xn, lw->q_proj, T, C, NH * HD);
    EMIT(l, QD_TAP_Q_PROJ, m->q);
    matmul_act(m, m->k, m->xn, lw->k_proj, T, C, NKV * HD);
    EMIT(l, QD_TAP_K_PROJ, m->k);
    matmul_act(m, m->v, m->xn, lw->v_proj, T, C, NKV * HD);
    EMIT(l, QD_TAP_V_PROJ, m->v);

    norm_act(m, m->q, m->q, lw->q_norm, T * NH, HD, l); /* per head, over head_dim */
    EMIT(l, QD_TAP_Q_NORM, m->q);
    if (qd_fault_at(&m->fault, QD_FAULT_KNORM_MUL, l)) { /* fault 1: the weight without the norm */
        for (size_t i = 0; i < (size_t)T * NKV * HD; i++) m->k[i] = round1(m, m->k[i] * lw->k_norm[i % HD]);
    } else {
        norm_act(m, m->k, m->k, lw->k_norm, T * NKV, HD, l);
    }
    EMIT(l, QD_TAP_K_NORM, m->k);
    rope_act(m, m->q, T, NH, pos0, l);
    EMIT(l, QD_TAP_Q_ROPE, m->q);
    rope_act(m, m->k, T, NKV, pos0, l);
    EMIT(l, QD_TAP_K_ROPE, m->k);

    float *kc = m->kcache + (size_t)l * S * NKV * HD; /* (max_seq, NKV, HD) */
    float *vc = m->vcache + (size_t)l * S * NKV * HD;
    /* fault 12: the decode path writes one position early (over the previous token's K/V) */
    int wpos = T == 1 && pos0 > 0 && qd_fault_at(&m->fault, QD_FAULT_KV_POS, l) ? pos0 - 1 : pos0;
    memcpy(kc + (size_t)wpos * NKV * HD, m->k, (size_t)T * NKV * HD * sizeof(float));
    memcpy(vc + (size_t)wpos * NKV * HD, m->v, (size_t)T * NKV * HD * sizeof(float));

    attention_act(m, m->att, m->q, kc, vc, T, pos0, l);
    EMIT(l, QD_TAP_ATTN, m->att);
    matmul_act(m, m->o, m->att, lw->o_proj, T, NH * HD, C);
    EMIT(l, QD_TAP_O_PROJ, m->o);
    if (qd_fault_at(&m->fault, QD_FAULT_RESIDUAL_DROP, l)) /* fault 10 */
        memcpy(m->res, m->o, (size_t)T * C * sizeof(float));
    else
        residual_forward(m->res, m->x, m->o, (long)T * C);
    round_act(m, m->res, (size_t)T * C);
    EMIT(l, QD_TAP_ATTN_RESIDUAL, m->res);

    norm_act(m, m->xn, m->res, lw->post_attention_layernorm, T, C, l);
    EMIT(l, QD_TAP_MLP_NORM, m->xn);
    matmul_act(m, m->gate, m->xn, lw->gate_proj, T, C, I);
    EMIT(l, QD_TAP_GATE_PROJ, m->gate);
    matmul_act(m, m->up, m->xn, lw->up_proj, T, C, I);
    EMIT(l, QD_TAP_UP_PROJ, m->up);
    if (qd_fault_at(&m->fault, QD_FAULT_ACT_GELU, l)) { /* fault 11: GELU where SiLU belongs */
        for (size_t i = 0; i < (size_t)T * I; i++) {
            float g = m->gate[i];
            m->gate[i] = 0.5f * g * (1.0f + erff(g * 0.70710678f)) * m->up[i];
        }
    } else {
        swiglu_forward(m->gate, m->gate, m->up, (long)T * I);
    }
    round_act(m, m->gate, (size_t)T * I);
    EMIT(l, QD_TAP_ACT, m->gate);
    matmul_act(m, m->o, m->gate, lw->down_proj, T, I, C);
    EMIT(l, QD_TAP_DOWN_PROJ, m->o);
    residual_forward(h_out, m->res, m->o, (long)T * C);
    round_act(m, h_out, (size_t)T * C);
    EMIT(l, QD_TAP_OUT, h_out);
    return QD_OK;
}

int qd_emu_head(qd_emu *m, const float *h, int T, float *logits, qd_tap_sink *sink) {
    const qd_config *c = m->cfg;
    int C = c->hidden_size;
    memcpy(m->x, h, (size_t)T * C * sizeof(float));
    round_act(m, m->x, (size_t)T * C);
    norm_act(m, m->xn, m->x, m->w->norm, T, C, -1);
    EMIT(-1, QD_TAP_FINAL_NORM, m->xn);
    /* logits stay fp32: fp32 accumulation over the stored final_norm, not rounded */
    matmul_forward(logits, m->xn, m->w->lm_head, T, C, c->vocab_size, QD_ACCUM_F32);
    EMIT(-1, QD_TAP_LOGITS, logits);
    return QD_OK;
}
