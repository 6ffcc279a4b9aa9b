/* ops.c: emu's ops (qd_emu_ops.h), the precision contract one op at a time.
 *
 * Read beside reference/ops.c: the same loops over the shared maths of common/qd_spec.h, with the
 * contract's roundings (emu_round: a point where a fused kernel stores, or rounds in registers, a tensor in
 * the activation dtype) and the attention's tiles and splits as the fused kernels walk them. The faults
 * live inside the op that hosts the bug (docs/FAULTS.md). Built with -ffp-contract=off, no fast-math. */
#include "qd_emu_ops.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "qd_bf16.h"
#include "qd_matmul.h"
#include "qd_spec.h"

float emu_round(qd_act_dtype act, float x) {
    return act == QD_ACT_BF16 ? qd_round_bf16(x) : act == QD_ACT_FP16 ? qd_round_f16(x) : x;
}

void emu_round_n(qd_act_dtype act, float *x, size_t n) {
    if (act == QD_ACT_BF16)
        for (size_t i = 0; i < n; i++) x[i] = qd_round_bf16(x[i]);
    else if (act == QD_ACT_FP16)
        for (size_t i = 0; i < n; i++) x[i] = qd_round_f16(x[i]);
}

// ----------------------------------------------------------------------------
// RMSNorm

void emu_rmsnorm(float *out, const float *x, const float *w, int rows, int n, float eps, qd_act_dtype act, int fault) {
    // x, out (rows, n); w (n)
    const int lowp = fault == QD_FAULT_NORM_SUMSQ_LOWP, eps_outside = fault == QD_FAULT_EPS_OUTSIDE;
    const int mul_only = fault == QD_FAULT_KNORM_MUL;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n; // (n)
        float *o = out + (size_t)r * n;      // (n)
        if (mul_only) {                      /* fault 1: the weight without the norm */
            for (int i = 0; i < n; i++) o[i] = emu_round(act, xr[i] * w[i]);
            continue;
        }
        float ss;
        if (lowp) { /* fault 8: the accumulator has the activation's type */
            ss = 0.0f;
            for (int i = 0; i < n; i++) ss = emu_round(act, ss + emu_round(act, xr[i] * xr[i]));
        } else {
            ss = dot_f32(xr, xr, n);
        }
        float scale = eps_outside ? 1.0f / (sqrtf(ss / (float)n) + eps) /* fault 9 */
                                  : rms_scale_f32(ss, n, eps);
        for (int i = 0; i < n; i++) o[i] = emu_round(act, (xr[i] * scale) * w[i]);
    }
}

// ----------------------------------------------------------------------------
// GEMM over stored inputs and bf16 weights, fp32 accumulation, output rounded

void emu_matmul_w(float *out, const float *x, qd_wview W, int T, int in, int out_dim, qd_act_dtype act) {
    // x (T, in); W (out_dim, in); out (T, out_dim)
    // each out[t,o] is dot_f32(x[t], W[o], in), bit for bit (common/qd_matmul.h), then rounded once
    qd_matmul_f32(out, x, W, T, in, out_dim);
    emu_round_n(act, out, (size_t)T * out_dim);
}

void emu_matmul(float *out, const float *x, const float *W, int T, int in, int out_dim, qd_act_dtype act) {
    emu_matmul_w(out, x, (qd_wview){W, QD_DT_F32}, T, in, out_dim, act);
}

// ----------------------------------------------------------------------------
// RoPE

void emu_rope(float *x, int T, int nheads, int HD, int pos0, const float *inv_freq, qd_act_dtype act, int fault) {
    // x (T, nheads, HD); inv_freq (HD/2)
    const int half = HD / 2, interleaved = fault == QD_FAULT_ROPE_INTERLEAVED;
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < half; i++) {
            float c, s;
            rope_cos_sin(pos0 + t, inv_freq[i], &c, &s);
            for (int h = 0; h < nheads; h++) {
                float *xh = x + ((size_t)t * nheads + h) * HD; // (HD)
                if (interleaved)                               /* fault 2: GPT-J pairs, wrong for Qwen3 */
                    rope_rotate_pair(&xh[2 * i], &xh[2 * i + 1], c, s);
                else rope_rotate_pair(&xh[i], &xh[i + half], c, s);
            }
        }
    }
    emu_round_n(act, x, (size_t)T * nheads * HD);
}

// ----------------------------------------------------------------------------
// attention

/* Keys per tile of the fused attention kernel (FA_BC in fused/attention.cuh) and per split of its decode
 * kernel (DEC_CH). */
#define EMU_FA_BC 64

/* Softmax and P.V of one query row, prefill: keys in tiles of `tile` with a running max, as the fused
 * prefill kernels walk them. Per tile: mt = max(m, the tile's scores), alpha = exp(m - mt) rescales the
 * sum and the accumulator, P = A(exp(s - mt)) enters P.V and the unrounded exps enter the sum. Returns
 * the sum; acc (HD) holds P.V. s (n_keys) scores; v: key 0's value row, rows kv_stride apart. */
static float softmax_pv_tiles(qd_act_dtype act, float *acc, const float *s, const float *v, size_t kv_stride,
                              int n_keys, int HD, int tile) {
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
            float pr = emu_round(act, e);
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
static float softmax_pv_splits(qd_act_dtype act, float *acc, const float *s, const float *v, size_t kv_stride,
                               int n_keys, int HD, float *acc_s) {
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
            float pr = emu_round(act, e);
            for (int d = 0; d < HD; d++) acc_s[d] += pr * v[(size_t)j * kv_stride + d];
        }
        float w = expf(ms - top);
        sum += ls * w;
        for (int d = 0; d < HD; d++) acc[d] += acc_s[d] * w;
    }
    return sum;
}

size_t emu_attention_scratch(int threads, int max_keys, int HD) {
    return (size_t)threads * ((size_t)max_keys + 2 * (size_t)HD);
}

void emu_attention(float *out, const float *q, const float *kc, const float *vc, int T, int pos0, int NH, int NKV,
                   int HD, qd_act_dtype act, int threads, int fault, float *scratch) {
    emu_attention_at(out, q, kc, vc, T, pos0, NH, NKV, HD, act, act, act, threads, fault, scratch);
}

void emu_attention_eager(float *out, const float *q, const float *kc, const float *vc, int T, int pos0, int NH, int NKV,
                         int HD, qd_act_dtype act, int threads, float *scratch) {
    // q (T, NH, HD); kc, vc (max_seq, NKV, HD); out (T, NH*HD); scratch (threads, pos0 + T + 2*HD)
    const int kv_mul = NH / NKV;
    const size_t kv_stride = (size_t)NKV * HD;
    const float scale = (float)(1.0 / sqrt((double)HD));
    const size_t per_thread = emu_attention_scratch(1, pos0 + T, HD);
#pragma omp parallel num_threads(threads)
    {
        float *p = scratch + (size_t)omp_get_thread_num() * per_thread; /* (pos0 + T) scores, then P */
        float *acc = p + pos0 + T;                                      /* (HD) */
#pragma omp for collapse(2) schedule(static)
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < NH; h++) {
                const int n_keys = pos0 + t + 1;
                const float *qh = q + ((size_t)t * NH + h) * HD;
                const float *k = kc + (size_t)(h / kv_mul) * HD;
                const float *v = vc + (size_t)(h / kv_mul) * HD;
                float mx = -INFINITY;
                for (int j = 0; j < n_keys; j++) {
                    p[j] = emu_round(act, emu_round(act, dot_f32(qh, k + (size_t)j * kv_stride, HD)) * scale);
                    if (p[j] > mx) mx = p[j];
                }
                float sum = 0.0f;
                for (int j = 0; j < n_keys; j++) {
                    p[j] = expf(p[j] - mx);
                    sum += p[j];
                }
                for (int j = 0; j < n_keys; j++) p[j] = emu_round(act, p[j] / sum);
                for (int d = 0; d < HD; d++) acc[d] = 0.0f;
                for (int j = 0; j < n_keys; j++)
                    for (int d = 0; d < HD; d++) acc[d] += p[j] * v[(size_t)j * kv_stride + d];
                float *o = out + ((size_t)t * NH + h) * HD;
                for (int d = 0; d < HD; d++) o[d] = emu_round(act, acc[d]);
            }
        }
    }
}

void emu_attention_at(float *out, const float *q, const float *kc, const float *vc, int T, int pos0, int NH, int NKV,
                      int HD, qd_act_dtype act, qd_act_dtype act_p, qd_act_dtype act_out, int threads, int fault,
                      float *scratch) {
    // q (T, NH, HD); kc, vc (max_seq, NKV, HD); out (T, NH*HD); scratch (threads, pos0 + T + 2*HD)
    int kv_mul = NH / NKV;
    size_t kv_stride = (size_t)NKV * HD;
    int gqa_mod = fault == QD_FAULT_GQA_MOD, no_causal = fault == QD_FAULT_NO_CAUSAL;
    int no_max = fault == QD_FAULT_SOFTMAX_NO_MAX, online_bug = fault == QD_FAULT_ONLINE_RESCALE;
    float scale = fault == QD_FAULT_NO_SCALE ? 1.0f : (float)(1.0 / sqrt((double)HD));
    int max_keys = pos0 + T;
    size_t per_thread = emu_attention_scratch(1, max_keys, HD);
    /* the prefill kernel's key tile: 64 on tensor cores (bf16, head_dim 32/64/128), else 128 */
    int tile = act == QD_ACT_BF16 && (HD == 32 || HD == 64 || HD == 128) ? EMU_FA_BC : 2 * EMU_FA_BC;
#pragma omp parallel num_threads(threads)
    {
        /* (max_keys) scores, then (HD) acc and (HD) one split's acc; a team never has more than `threads` */
        float *p = scratch + (size_t)omp_get_thread_num() * per_thread;
        float *acc = p + max_keys;
#pragma omp for collapse(2) schedule(static)
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < NH; h++) {
                int n_keys = no_causal ? max_keys : pos0 + t + 1; /* fault 5: every key of the step */
                int kvh = gqa_mod ? h % NKV : h / kv_mul;         /* fault 4 */
                const float *qh = q + ((size_t)t * NH + h) * HD;
                const float *k = kc + (size_t)kvh * HD;
                const float *v = vc + (size_t)kvh * HD;
                for (int j = 0; j < n_keys; j++) p[j] = dot_f32(qh, k + (size_t)j * kv_stride, HD) * scale;
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
                            float pr = emu_round(act_p, e); /* P rounded with the running max, as the kernel does */
                            for (int d = 0; d < HD; d++) acc[d] += pr * v[(size_t)j * kv_stride + d];
                        }
                        mx = mt;
                    }
                } else if (no_max) {
                    /* fault 6: exp(s) with the max taken as 0, which overflows once s > 88 */
                    for (int j = 0; j < n_keys; j++) {
                        float e = expf(p[j]);
                        sum += e;
                        p[j] = emu_round(act_p, e);
                    }
                    for (int j = 0; j < n_keys; j++)
                        for (int d = 0; d < HD; d++) acc[d] += p[j] * v[(size_t)j * kv_stride + d];
                } else if (T == 1) {
                    sum = softmax_pv_splits(act_p, acc, p, v, kv_stride, n_keys, HD, acc + HD);
                } else {
                    sum = softmax_pv_tiles(act_p, acc, p, v, kv_stride, n_keys, HD, tile);
                }
                float *oh = out + ((size_t)t * NH + h) * HD;
                for (int d = 0; d < HD; d++) oh[d] = emu_round(act_out, acc[d] / sum);
            }
        }
    }
}

// ----------------------------------------------------------------------------
// elementwise

void emu_swiglu(float *out, const float *gate, const float *up, long n, qd_act_dtype act, int fault) {
    // gate, up, out (n); out may alias gate or up
    if (fault == QD_FAULT_ACT_GELU) { /* fault 11: GELU where SiLU belongs */
        for (long i = 0; i < n; i++) {
            float g = gate[i];
            out[i] = emu_round(act, 0.5f * g * (1.0f + erff(g * 0.70710678f)) * up[i]);
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) out[i] = emu_round(act, silu(gate[i]) * up[i]);
}

void emu_residual(float *out, const float *a, const float *b, long n, qd_act_dtype act, int fault) {
    // a, b, out (n); out may alias a
    if (fault == QD_FAULT_RESIDUAL_DROP) { /* fault 10: the stream lost */
        for (long i = 0; i < n; i++) out[i] = emu_round(act, b[i]);
        return;
    }
    for (long i = 0; i < n; i++) out[i] = emu_round(act, a[i] + b[i]);
}
