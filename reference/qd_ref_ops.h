/* qd_ref_ops.h: the reference's ops, plain functions named <op>_forward, exposed for unit tests.
 * The maths the backends share (dot products, the RMSNorm scale, RoPE frequencies, angles and rotation,
 * SiLU) is common/qd_spec.h's; these ops are its loops in the obvious order. All buffers are fp32,
 * row-major; shapes are given next to every pointer. `accum` selects float or double accumulation
 * (qd_accum). Row-parallel ops use OpenMP over independent output rows only. */
#ifndef QD_REF_OPS_H
#define QD_REF_OPS_H

#include "qd_ref.h"
#include "qd_spec.h"

/* out[t,:] = x[t,:] * 1/sqrt(mean(x[t,:]^2) + eps) * w.  x, out (T, n); w (n). out may alias x. */
void rmsnorm_forward(float *out, const float *x, const float *w, int T, int n, float eps, qd_accum accum);

/* out[t,o] = sum_i x[t,i] * W[o,i].  x (T, in); W (out_dim, in) (HF layout); out (T, out_dim).
 * matmul_forward_naive is the plain loop over dot_f32 / dot_f64 (the definition, and the tests' oracle);
 * matmul_forward and matmul_forward_w (W in its stored dtype, read in place) give its bits in a blocked
 * loop order (common/qd_matmul.h). */
void matmul_forward_naive(float *out, const float *x, const float *W, int T, int in, int out_dim, qd_accum accum);
void matmul_forward(float *out, const float *x, const float *W, int T, int in, int out_dim, qd_accum accum);
void matmul_forward_w(float *out, const float *x, qd_wview W, int T, int in, int out_dim, qd_accum accum);

/* Rotate-half ("NEOX") RoPE in place on x (T, nheads, head_dim) for positions pos0..pos0+T-1:
 * pair j with j + head_dim/2, each rotated by rope_cos_sin / rope_rotate_pair (qd_spec.h).
 * inv_freq (head_dim/2) from rope_inv_freq. */
void rope_forward(float *x, int T, int nheads, int head_dim, int pos0, const float *inv_freq);

/* Causal GQA attention for T queries at positions pos0..pos0+T-1 over keys 0..pos0+T-1.
 * q (T, NH, HD); kcache, vcache (max_seq, NKV, HD) already holding positions 0..pos0+T-1;
 * out (T, NH*HD). Head h reads kv head h / (NH/NKV). Scores scaled by HD^-0.5, max-subtracted softmax.
 * QD_OK, or QD_ERUNTIME with e set when the per-thread score scratch cannot be allocated. */
int attention_forward(float *out, const float *q, const float *kcache, const float *vcache, int T, int pos0, int NH,
                      int NKV, int HD, qd_accum accum, qd_err *e);

/* out = silu(gate) * up, elementwise over n values (silu: qd_spec.h). */
void swiglu_forward(float *out, const float *gate, const float *up, long n);

/* out = a + b, elementwise over n values. out may alias a. */
void residual_forward(float *out, const float *a, const float *b, long n);

#endif
