/* gemv.cuh: the decode (one token) matrix-vector products of the fused path, bf16 only (docs/FUSED.md).
 *
 * For T = 1 a GEMM is a GEMV: every weight byte is read once and used once, so the step is bound by
 * memory bandwidth and by the number of launches. gemv_kernel reads each weight row with 16-byte loads
 * (8 bf16 per lane, a warp covering 256 consecutive values, coalesced), keeps several of them in flight
 * per lane, accumulates in fp32 with fused multiply-adds in a fixed order (each lane its chunks in
 * order, then the xor butterfly of warp_sum), and rounds each output once where the contract stores it.
 * What it may fold in without changing a value (docs/PRECISION.md: a fused kernel rounds where the
 * unfused one stores):
 *   prologue GV_NORM    res = A(res + add) and x = A(res * rsqrt(mean(res^2) + eps) * w), the very
 *                       arithmetic and reduction order of add_rmsnorm_kernel, computed by every block
 *                       into shared memory; block 0 stores res (to another buffer: other blocks still
 *                       read the input) and x (the attn_norm / mlp_norm / final_norm tap)
 *   epilogue GV_SWIGLU  a warp computes gate row r and up row r, rounds both, stores them (the taps),
 *                       and stores act = A(silu(gate) * up) exactly as swiglu_kernel
 *   epilogue GV_F32     fp32 output (the lm_head logits, not rounded)
 * Faults (gemv_args.fault, the kind active in this launch's layer): the GV_NORM prologue recomputes the
 * norm, so it hosts norm-sumsq-lowp and eps-outside-sqrt as add_rmsnorm_kernel does, and residual-drop
 * (res = add; the host passes it only to the mlp_norm launch, whose add is the attention residual); the
 * GV_SWIGLU epilogue hosts act-gelu.
 * Programmatic dependent launch: before griddepcontrol.wait a block touches only weights (an L2 prefetch
 * of its first rows), which overlaps the previous kernel's tail; after it, it lets the next kernel launch. */
#ifndef QD_FUSED_GEMV_CUH
#define QD_FUSED_GEMV_CUH

#include "kernels.cuh"

enum { GV_PLAIN = 0, GV_NORM = 1 };             /* prologue: where x comes from */
enum { GV_BF16 = 0, GV_F32 = 1, GV_SWIGLU = 2 }; /* epilogue: what is stored */

#define GV_THREADS 128 /* 4 warps per block */
/* 16-byte chunks per row in flight per lane (x2 rows): 8 for the plain GEMVs, whose rows are the long
 * ones (o_proj over NH*HD, down_proj over I: a whole 0.6B row in one or two rounds), 4 for the GEMVs over
 * the hidden size (one round covers C = 1024, and the register budget stays at 8 blocks per SM) */
template <int PRO> struct gv_unroll { static constexpr int U = PRO == 0 ? 8 : 4; };

typedef struct {
    const bf16 *W;      /* (N, K); GV_SWIGLU: (2N, K), gate rows then up rows */
    const bf16 *x;      /* (K) GV_PLAIN: the input; GV_NORM: the residual stream before the add */
    const bf16 *add;    /* (K) GV_NORM: added to the residual first, or NULL */
    const float *nw;    /* (K) GV_NORM: norm weight */
    bf16 *res_out;      /* (K) GV_NORM: block 0 stores A(x + add) here (must not be x) */
    bf16 *xn_out;       /* (K) GV_NORM: block 0 stores the normalised input here */
    void *out;          /* GV_BF16: (N) bf16; GV_F32: (N) fp32; GV_SWIGLU: (2N) bf16 gate | up */
    bf16 *act;          /* (N) GV_SWIGLU: silu(gate) * up */
    int N, K;           /* output rows (GV_SWIGLU: per half), input length (a multiple of 8) */
    int norm_threads;   /* GV_NORM: add_rmsnorm_kernel's block size for K (a multiple of 32, at most
                           2 * GV_THREADS): the sum of squares is accumulated in its order */
    float eps;
    int fault;          /* the fault of this launch (qd_fault_kind), QD_FAULT_NONE for none */
} gemv_args;

/* Unit u of a warp: two weight rows. GV_SWIGLU: gate row u and up row N + u; else rows 2u and 2u + 1
 * (the second absent when N is odd). */
template <int EPI> static __device__ __forceinline__ int gv_units(int N) { return EPI == GV_SWIGLU ? N : (N + 1) / 2; }
template <int EPI> static __device__ __forceinline__ int gv_row0(int u) { return EPI == GV_SWIGLU ? u : 2 * u; }
template <int EPI> static __device__ __forceinline__ int gv_row1(int u, int N) { return EPI == GV_SWIGLU ? N + u : 2 * u + 1; }

/* dynamic shared memory: x as fp32 (K) */
template <int PRO, int EPI>
__global__ void __launch_bounds__(GV_THREADS) gemv_kernel(const gemv_args a) {
    extern __shared__ __align__(16) float sx[]; /* (K) */
    __shared__ float red[32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int K = a.K, K8 = K / 8, N = a.N, units = gv_units<EPI>(N);
    const int gwarp = blockIdx.x * (GV_THREADS / 32) + warp, nwarps = gridDim.x * (GV_THREADS / 32);
    constexpr int GV_U = gv_unroll<PRO>::U;

    /* weights do not depend on the previous kernel: start pulling this warp's first rows into L2 */
    if (gwarp < units) {
        const int r0 = gv_row0<EPI>(gwarp), r1 = gv_row1<EPI>(gwarp, N);
        const int rows_here = (EPI != GV_SWIGLU && r1 >= N) ? 1 : 2;
        const int lines = (K * 2 + 127) / 128; /* 128-byte lines per row */
        for (int i = lane; i < rows_here * lines; i += 32) {
            const int r = i < lines ? r0 : r1, li = i < lines ? i : i - lines;
            prefetch_l2(reinterpret_cast<const char *>(a.W + (size_t)r * K) + (size_t)li * 128);
        }
    }
    griddep_wait();   /* the previous kernel has finished and its writes are visible */
    griddep_launch(); /* the next one may start its own weight prefetch */

    if (PRO == GV_PLAIN) {
        for (int c8 = tid; c8 < K8; c8 += GV_THREADS) {
            float v[8];
            ld8(a.x + c8 * 8, v);
            reinterpret_cast<float4 *>(sx + c8 * 8)[0] = make_float4(v[0], v[1], v[2], v[3]);
            reinterpret_cast<float4 *>(sx + c8 * 8)[1] = make_float4(v[4], v[5], v[6], v[7]);
        }
        __syncthreads();
    } else {
        /* add_rmsnorm_kernel's arithmetic in its order: it runs nt = norm_threads threads, thread t
         * taking the chunks c8 = t, t + nt, ..., then warp sums added in warp order. Here thread tid plays
         * the threads tid and tid + GV_THREADS of that block. */
        const int nt = a.norm_threads;
        float ssv[2] = {0.0f, 0.0f};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int vt = tid + h * GV_THREADS;
            for (int c8 = vt; c8 < K8 && vt < nt; c8 += nt) {
                float v[8];
                ld8(a.x + c8 * 8, v);
                if (a.add) {
                    float b[8];
                    ld8(a.add + c8 * 8, b);
#pragma unroll
                    for (int k = 0; k < 8; k++)
                        v[k] = a.fault == QD_FAULT_RESIDUAL_DROP ? b[k] : rnd<MODE_BF16>(__fadd_rn(v[k], b[k]));
                }
                if (blockIdx.x == 0) st8(a.res_out + c8 * 8, v);
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    ssv[h] = __fmaf_rn(v[k], v[k], ssv[h]);
                    sx[c8 * 8 + k] = v[k]; /* the residual, normalised in place below */
                }
            }
        }
        const float w0 = warp_sum(ssv[0]), w1 = warp_sum(ssv[1]);
        if (lane == 0) {
            red[warp] = w0;
            red[warp + GV_THREADS / 32] = w1;
        }
        __syncthreads(); /* red and sx complete */
        float ss = 0.0f;
        for (int i = 0; i < nt / 32; i++) ss = __fadd_rn(ss, red[i]);
        if (a.fault == QD_FAULT_NORM_SUMSQ_LOWP) { /* block-uniform */
            ss = sumsq_lowp<MODE_BF16>(sx, K);
            __syncthreads(); /* every thread has read sx before it is normalised in place */
        }
        const float scale = rms_scale_f(ss, K, a.eps, a.fault);
        for (int i = tid; i < K; i += GV_THREADS) {
            const float v = rnd<MODE_BF16>(__fmul_rn(__fmul_rn(sx[i], scale), a.nw[i]));
            if (blockIdx.x == 0) a.xn_out[i] = __float2bfloat16_rn(v);
            sx[i] = v;
        }
        __syncthreads();
    }

    for (int u = gwarp; u < units; u += nwarps) {
        const int r0 = gv_row0<EPI>(u), r1 = gv_row1<EPI>(u, N);
        const bool has1 = EPI == GV_SWIGLU || r1 < N; /* warp-uniform */
        const bf16 *w0 = a.W + (size_t)r0 * K, *w1 = a.W + (size_t)(has1 ? r1 : r0) * K;
        float acc0 = 0.0f, acc1 = 0.0f;
        for (int i0 = 0; i0 * 32 < K8; i0 += GV_U) {
            uint4 q0[GV_U], q1[GV_U];
#pragma unroll
            for (int j = 0; j < GV_U; j++) { /* all loads first: 2 * GV_U 16-byte loads in flight */
                const int c8 = (i0 + j) * 32 + lane;
                if (c8 < K8) {
                    q0[j] = __ldcs(reinterpret_cast<const uint4 *>(w0) + c8); /* streamed: read once */
                    q1[j] = has1 ? __ldcs(reinterpret_cast<const uint4 *>(w1) + c8) : make_uint4(0, 0, 0, 0);
                }
            }
#pragma unroll
            for (int j = 0; j < GV_U; j++) {
                const int c8 = (i0 + j) * 32 + lane;
                if (c8 < K8) {
                    const float4 xa = reinterpret_cast<const float4 *>(sx + c8 * 8)[0];
                    const float4 xb = reinterpret_cast<const float4 *>(sx + c8 * 8)[1];
                    const float xv[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
                    const __nv_bfloat162 *h0 = reinterpret_cast<const __nv_bfloat162 *>(&q0[j]);
                    const __nv_bfloat162 *h1 = reinterpret_cast<const __nv_bfloat162 *>(&q1[j]);
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        const float2 f0 = __bfloat1622float2(h0[k]), f1 = __bfloat1622float2(h1[k]);
                        acc0 = __fmaf_rn(f0.x, xv[2 * k], acc0);
                        acc0 = __fmaf_rn(f0.y, xv[2 * k + 1], acc0);
                        acc1 = __fmaf_rn(f1.x, xv[2 * k], acc1);
                        acc1 = __fmaf_rn(f1.y, xv[2 * k + 1], acc1);
                    }
                }
            }
        }
        acc0 = warp_sum(acc0);
        acc1 = warp_sum(acc1);
        if (lane == 0) {
            if (EPI == GV_F32) {
                float *o = (float *)a.out;
                o[r0] = acc0;
                if (has1) o[r1] = acc1;
            } else if (EPI == GV_BF16) {
                bf16 *o = (bf16 *)a.out;
                o[r0] = __float2bfloat16_rn(acc0);
                if (has1) o[r1] = __float2bfloat16_rn(acc1);
            } else { /* gate and up rounded and stored (the taps), act over the rounded values */
                bf16 *o = (bf16 *)a.out;
                const float g = rnd<MODE_BF16>(acc0), up = rnd<MODE_BF16>(acc1);
                o[r0] = __float2bfloat16_rn(g);
                o[r1] = __float2bfloat16_rn(up);
                const float silu = a.fault == QD_FAULT_ACT_GELU ? gelu_fault(g) : __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
                a.act[r0] = __float2bfloat16_rn(__fmul_rn(silu, up));
            }
        }
    }
}

#endif
