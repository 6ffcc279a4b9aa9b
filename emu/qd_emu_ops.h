/* qd_emu_ops.h: emu's ops, the precision contract (docs/PRECISION.md) one op at a time, exposed so that
 * tests/test_ops.c runs what emu.c runs (emu.c calls these and has no second copy).
 *
 * Every buffer is fp32, row-major, holding values of the activation dtype `act` where the contract stores
 * a tensor: each op takes its inputs as stored and rounds its output once to `act` (QD_ACT_FP32: no
 * rounding). Weights are bf16 values held in fp32 (the caller rounds them). The shared maths (dot
 * product, RMSNorm scale, RoPE angle and rotation, SiLU) is common/qd_spec.h's; what is the contract's
 * own is here: the rounding points, and the attention's tiles and splits as the fused kernels walk them.
 *
 * fault: the fault kind (common/qd_fault.h) active in this launch, QD_FAULT_NONE for none; each op hosts
 * the faults of the kernel it models and ignores the others, so the caller may pass a layer's fault to
 * every op of the layer (except where an op's comment says otherwise). */
#ifndef QD_EMU_OPS_H
#define QD_EMU_OPS_H

#include <stddef.h>

#include "qd_act.h"
#include "qd_fault.h"
#include "qd_weights.h"

/* The value a store in the activation dtype holds: round-to-nearest-even, as __float2bfloat16_rn /
 * __float2half_rn; the identity for QD_ACT_FP32. */
float emu_round(qd_act_dtype act, float x);
/* emu_round over x (n), in place. */
void emu_round_n(qd_act_dtype act, float *x, size_t n);

/* RMSNorm over rows of n: fp32 sum of squares in element order (dot_f32), rms_scale_f32, then
 * out = A((x * scale) * w). x, out (rows, n), out may alias x; w (n).
 * Faults: norm-sumsq-lowp (the accumulator has the activation's type), eps-outside-sqrt, knorm-mul
 * (out = A(x * w), no normalisation: pass it only to the k_norm launch, as the kernels apply it to k
 * heads only). */
void emu_rmsnorm(float *out, const float *x, const float *w, int rows, int n, float eps, qd_act_dtype act, int fault);

/* out (T, out_dim) = A(x (T, in) . W (out_dim, in)^T), each output one fp32 dot product over i in order
 * (dot_f32). OpenMP over outputs; bitwise the same for any thread count. */
void emu_matmul(float *out, const float *x, const float *W, int T, int in, int out_dim, qd_act_dtype act);
/* The same with W in its stored dtype (BF16 read in place from the checkpoint's mapping). */
void emu_matmul_w(float *out, const float *x, qd_wview W, int T, int in, int out_dim, qd_act_dtype act);

/* Rotate-half RoPE in place on x (T, nheads, HD) at positions pos0..pos0+T-1, then x = A(x).
 * inv_freq (HD/2): rope_inv_freq's, or with fault rope-freq-bf16 the same rounded to bf16 (the caller's
 * choice of table, as fused's host picks the table). Fault rope-interleaved: GPT-J pairs (2i, 2i+1). */
void emu_rope(float *x, int T, int nheads, int HD, int pos0, const float *inv_freq, qd_act_dtype act, int fault);

/* Floats of scratch emu_attention needs for `threads` threads and queries seeing up to max_keys keys. */
size_t emu_attention_scratch(int threads, int max_keys, int HD);

/* Causal GQA attention as the fused kernels compute it: fp32 scores over the stored q and k scaled by
 * HD^-0.5 in fp32, fp32 max and sum, probabilities P = A(exp(s - m)) for the P.V product with the max m
 * known when they are formed: prefill (T > 1) walks keys in tiles with a running max (64 keys on tensor
 * cores: bf16 with HD 32/64/128; else 128), one token (T == 1) splits the keys in 64s, each with its own
 * max, combined in split order. The sum uses the unrounded exps; the output is divided by it and rounded.
 * q (T, NH, HD) at positions pos0..pos0+T-1; kc, vc (max_seq, NKV, HD) holding positions 0..pos0+T-1;
 * out (T, NH*HD). threads > 0: the OpenMP team; scratch (emu_attention_scratch(threads, pos0 + T, HD)).
 * Faults: gqa-mod, no-causal-mask, softmax-no-max, no-attn-scale, online-softmax-rescale. */
void emu_attention(float *out, const float *q, const float *kc, const float *vc, int T, int pos0, int NH, int NKV,
                   int HD, qd_act_dtype act, int threads, int fault, float *scratch);

/* emu_attention with its two roundings chosen apart (the per-op precision of qd_emu.h's points `softmax` and
 * `attn`): act is the kernel's activation dtype (it picks the prefill tile), act_p rounds P before P.V,
 * act_out rounds the output. emu_attention(..., act, ...) is emu_attention_at(..., act, act, act, ...). */
void emu_attention_at(float *out, const float *q, const float *kc, const float *vc, int T, int pos0, int NH, int NKV,
                      int HD, qd_act_dtype act, qd_act_dtype act_p, qd_act_dtype act_out, int threads, int fault,
                      float *scratch);

/* Causal GQA attention as an eager bf16 implementation computes it (transformers' eager attention on a
 * bf16 model): scores A(A(q . k) * HD^-0.5) (the QK^T product stored, then the scaling stored), an fp32
 * softmax over the whole row with its max, P = A(exp(s - m) / sum) normalised before it is stored, fp32
 * P.V, the output rounded. Another correct way to do the contract's arithmetic: the replay's noise floor
 * of attention takes the wider of this and emu_attention (docs/TOLERANCES.md). Shapes and scratch as
 * emu_attention; no faults. */
void emu_attention_eager(float *out, const float *q, const float *kc, const float *vc, int T, int pos0, int NH, int NKV,
                         int HD, qd_act_dtype act, int threads, float *scratch);

/* out = A(silu(gate) * up) over n values; out may alias gate or up. Fault act-gelu: GELU (erf form). */
void emu_swiglu(float *out, const float *gate, const float *up, long n, qd_act_dtype act, int fault);

/* out = A(a + b) over n values; out may alias a. Fault residual-drop: out = A(b), the stream lost (pass
 * it only to the attention residual). */
void emu_residual(float *out, const float *a, const float *b, long n, qd_act_dtype act, int fault);

#endif
