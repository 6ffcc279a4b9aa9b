/* qd_spec.h: the maths every backend must agree on, written once (docs/ARCHITECTURE.md, "Parts").
 *
 * The reference (reference/), the precision contract on the CPU (emu/) and the host side of the fused
 * path (fused/) all call these, so a RoPE frequency, an angle, a rotation, a SiLU, an RMSNorm scale or a
 * fixed-order dot product cannot drift apart between the oracle and the part under test. What differs
 * between backends (where values are rounded to the activation dtype, in what order a kernel reduces) is
 * not here: it belongs to each backend. The device kernels (the .cuh files of fused/) cannot call host
 * code; they spell the same expressions with round-to-nearest intrinsics.
 *
 * spec.c is built with -ffp-contract=off and no fast-math, so each expression below is exactly the
 * roundings it writes, wherever it is called from. */
#ifndef QD_SPEC_H
#define QD_SPEC_H

#ifdef __cplusplus
extern "C" {
#endif

// ----------------------------------------------------------------------------
// reductions: one dot product, in the order i = 0, 1, ..., n-1

/* sum_i a[i] * b[i] accumulated in float, left to right. a, b (n). */
float dot_f32(const float *a, const float *b, int n);
/* The same in double (each product exact in double), not rounded: the caller rounds once. a, b (n). */
double dot_f64(const float *a, const float *b, int n);

// ----------------------------------------------------------------------------
// RMSNorm: out[i] = (x[i] * scale) * w[i], normalise first, then weight (the order transformers uses)

/* scale = 1 / sqrt(ss / n + eps) in float, ss the float sum of squares of the row (dot_f32(x, x, n)). */
float rms_scale_f32(float ss, int n, float eps);
/* scale = 1 / sqrt(ss / n + eps) in double, rounded once to float; ss from dot_f64(x, x, n). */
float rms_scale_f64(double ss, int n, float eps);

// ----------------------------------------------------------------------------
// RoPE, rotate-half ("NEOX") layout
// NORMAL (GPT-J) pairs 2i with 2i+1; NEOX, which Qwen3 uses, pairs i with i + head_dim/2, and pair i
// rotates by pos * inv_freq[i].

/* inv_freq[i] = theta^(-2i/head_dim), computed in double, stored as float. inv_freq (head_dim/2). */
void rope_inv_freq(float *inv_freq, int head_dim, double theta);

/* cos and sin of the angle of position pos and one frequency: the angle is an fp32 product, as in
 * transformers (fp32 inv_freq times fp32 positions); only cos/sin themselves are evaluated in double,
 * then rounded to float. */
void rope_cos_sin(int pos, float inv_freq, float *c, float *s);

/* One pair rotated in place: (x0, x1) <- (x0*c - x1*s, x1*c + x0*s), every product rounded to float. */
void rope_rotate_pair(float *x0, float *x1, float c, float s);

// ----------------------------------------------------------------------------
// activation

/* silu(g) = g / (1 + expf(-g)) in float; for g -> -inf, expf overflows to inf and silu is -0. */
float silu(float g);

#ifdef __cplusplus
}
#endif

#endif
