/* qd_fused_ops.h: single kernels of the fused path, callable from the host one op at a time, so that a
 * test can run exactly what fused.cu launches against emu and the reference (tests/test_ops.c).
 *
 * Each launcher allocates device buffers, copies the host inputs in, launches the kernel fused.cu launches
 * for that op in the bf16 path (the same template instantiation, grid, block and shared memory, chosen
 * the way fused.cu chooses them), copies the outputs out and frees everything. Host buffers are fp32;
 * activations and weight matrices go to the device as bf16 (round-to-nearest-even: pass bf16 values to
 * get them exactly), norm weights stay fp32 as fused.cu uploads them, outputs come back as the fp32 value
 * of what the kernel stored. No fault is injected (QD_FAULT_NONE). Kernels are launched without
 * programmatic dependent launch: alone in a stream it changes no value.
 *
 * bench: NULL, or bench->runs > 0 to time the launch itself: after the checked run, the inputs are copied
 * in again, the L2 cache flushed, and the launch timed with CUDA events, runs times; bench->median_ms
 * receives the median. Every CUDA and cuBLAS call is checked: QD_ERUNTIME naming the call, or QD_EINPUT for
 * a shape the kernel does not take. No CUDA device: QD_ERUNTIME (qd_fused_device_count says so first). */
#ifndef QD_FUSED_OPS_H
#define QD_FUSED_OPS_H

#include "qd_util.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int runs;         /* timed launches; <= 0: none */
    double median_ms; /* out: the median launch time */
} qd_op_bench;

/* add_rmsnorm_kernel: with add, res = A(x + add) (the residual fused into the norm) and
 * out = A(res * rsqrt(mean(res^2) + eps) * w); without add (NULL), res = x and the plain RMSNorm.
 * x, add, out, res (T, C); w (C). res may be NULL. C a multiple of 8. */
int qd_fused_op_add_rmsnorm(float *out, float *res, const float *x, const float *add, const float *w, int T, int C,
                            float eps, qd_op_bench *bench, qd_err *e);

/* residual_kernel (the unfused residual of the taps_all path and of layer_step): out = A(a + b).
 * a, b, out (n); n a multiple of 8. */
int qd_fused_op_residual(float *out, const float *a, const float *b, long n, qd_op_bench *bench, qd_err *e);

/* qk_norm_rope_kernel (prefill): per head q_norm / k_norm, rotate-half RoPE at positions pos0..pos0+T-1
 * with the host tables fused.cu builds (rope_inv_freq(theta), rope_cos_sin), k and v into the cache.
 * qkv (T, NH*HD + 2*NKV*HD) q_proj | k_proj | v_proj; qw, kw (HD); q (T, NH, HD) q_rope; k, v (T, NKV, HD)
 * k_rope and v as stored in the cache (v may be NULL). HD a multiple of 16, at most 256. */
int qd_fused_op_qk_norm_rope(float *q, float *k, float *v, const float *qkv, const float *qw, const float *kw, int T,
                             int pos0, int NH, int NKV, int HD, float eps, double theta, qd_op_bench *bench, qd_err *e);

/* Prefill attention as fused.cu's attention() for T > 1 in bf16: flash_attn_kernel<HD> on tensor cores
 * (HD 32, 64 or 128, when the device's shared memory holds its tiles), else attn_rows_kernel.
 * q (T, NH, HD) at positions pos0..pos0+T-1; kc, vc (pos0 + T, NKV, HD); out (T, NH*HD). */
int qd_fused_op_attention_prefill(float *out, const float *q, const float *kc, const float *vc, int T, int pos0, int NH,
                                  int NKV, int HD, qd_op_bench *bench, qd_err *e);

/* One-token attention as fused.cu's attention() for T == 1 (the cuBLAS decode path):
 * decode_attn_kernel<bf16, combine fused>, grid (ceil(max_seq / 64), NKV) sized for max_seq as fused sizes
 * it. q (NH, HD) at position pos; kc, vc (pos + 1, NKV, HD); out (NH*HD). pos < max_seq; NH/NKV <= 8. */
int qd_fused_op_attention_decode(float *out, const float *q, const float *kc, const float *vc, int pos, int NH, int NKV,
                                 int HD, int max_seq, qd_op_bench *bench, qd_err *e);

/* The default bf16 decode step's attention launch, decode_attn_qk_kernel: q_norm / k_norm and RoPE of this
 * token's projections, its k and v written into the cache at pos, then split-KV attention over 0..pos with
 * the in-kernel combine. qkv (NH*HD + 2*NKV*HD); qw, kw (HD); kc, vc (pos, NKV, HD) the earlier positions
 * (NULL when pos is 0); out (NH*HD); q (NH, HD) q_rope and k (NKV, HD) k_rope (either may be NULL).
 * QD_ERUNTIME when the device's shared memory is too small for it (fused.cu then decodes through
 * cuBLAS and decode_attn_kernel). */
int qd_fused_op_qk_attention_decode(float *out, float *q, float *k, const float *qkv, const float *qw, const float *kw,
                                    const float *kc, const float *vc, int pos, int NH, int NKV, int HD, float eps,
                                    double theta, int max_seq, qd_op_bench *bench, qd_err *e);

/* The prefill projection, fused.cu's gemm() in bf16: cublasGemmEx with bf16 operands, fp32 accumulation
 * (CUBLAS_COMPUTE_32F, no reduced-precision reduction), the 32 MiB workspace, bf16 output.
 * x (T, K); W (N, K) (HF layout); out (T, N). */
int qd_fused_op_gemm(float *out, const float *x, const float *W, int T, int K, int N, qd_op_bench *bench, qd_err *e);

/* The decode projection, gemv<GV_PLAIN, GV_BF16> (o_proj, down_proj): gemv_staged_kernel when its weight
 * tile fits the device's shared memory, else the streaming gemv_kernel, with fused.cu's launch shapes.
 * x (K); W (N, K); out (N). K a multiple of 8. */
int qd_fused_op_gemv(float *out, const float *W, const float *x, int N, int K, qd_op_bench *bench, qd_err *e);

/* The decode q/k/v projection with its residual and attn_norm folded in, gemv<GV_NORM, GV_BF16>:
 * res = A(x + add) (add may be NULL: res = x), xn = A(res * rsqrt(mean(res^2) + eps) * nw), out = A(W . xn).
 * x, add, nw, res, xn (K); W (N, K); out (N). res and xn may be NULL. */
int qd_fused_op_gemv_norm(float *out, float *res, float *xn, const float *W, const float *x, const float *add,
                          const float *nw, int N, int K, float eps, qd_op_bench *bench, qd_err *e);

/* The decode gate/up projection with mlp_norm folded in and SwiGLU as its epilogue,
 * gemv<GV_NORM, GV_SWIGLU>: xn as qd_fused_op_gemv_norm, gate = A(W[0:N] . xn), up = A(W[N:2N] . xn),
 * act = A(silu(gate) * up). x, add, nw (K); W (2N, K) gate rows then up rows; gate, up, act (N).
 * gate and up may be NULL. */
int qd_fused_op_gemv_swiglu(float *act, float *gate, float *up, const float *W, const float *x, const float *add,
                            const float *nw, int N, int K, float eps, qd_op_bench *bench, qd_err *e);

/* swiglu_kernel: act = A(silu(gate) * up). gate, up, act (T, I); I a multiple of 8. */
int qd_fused_op_swiglu(float *act, const float *gate, const float *up, int T, int I, qd_op_bench *bench, qd_err *e);

#ifdef __cplusplus
}
#endif

#endif
