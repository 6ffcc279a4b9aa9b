/* kernels.cuh: the fused path's elementwise and normalisation kernels (docs/PRECISION.md, docs/FUSED.md).
 *
 * Every kernel is templated on the activation mode M (act<M> below): bf16 storage (the fast path), or
 * fp32 storage holding values rounded to fp16 (diagnostic) or not rounded at all (fp32). All arithmetic
 * is fp32 and written with explicit round-to-nearest intrinsics (__fmul_rn, __fadd_rn, __fmaf_rn,
 * __fdiv_rn, __fsqrt_rn): the compiler may not contract or reorder them, so a fused kernel and the unfused
 * pair it replaces share device functions and give bitwise the same numbers, and the elementwise ops give
 * the same numbers as emu.c (built with -ffp-contract=off). Reductions run in a fixed order that depends
 * only on the row length, never on timing: every launch is deterministic.
 *
 * Faults (common/qd_fault.h, docs/FAULTS.md): a kernel that hosts one takes `fault`, the kind active in
 * this launch's layer (QD_FAULT_NONE otherwise), decided on the host per launch. The faulty code is a
 * branch on that launch-uniform argument; with QD_FAULT_NONE every kernel runs its clean arithmetic
 * unchanged. */
#ifndef QD_FUSED_KERNELS_CUH
#define QD_FUSED_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

extern "C" {
#include "qd_fault.h"
}

typedef __nv_bfloat16 bf16;

// ----------------------------------------------------------------------------
// activation storage: M is qd_act_dtype (0 bf16, 1 fp16, 2 fp32)

enum { MODE_BF16 = 0, MODE_FP16 = 1, MODE_FP32 = 2 };

template <int M>
struct act;
template <>
struct act<MODE_BF16> {
    typedef bf16 T; /* activations as stored */
    typedef bf16 W; /* weight matrices */
    static __device__ __forceinline__ float ld(T x) { return __bfloat162float(x); }
    static __device__ __forceinline__ T st(float x) { return __float2bfloat16_rn(x); }
};
/* fp16 activations live in fp32 buffers holding fp16-rounded values: the weights are bf16 and cuBLAS has
 * no bf16 x fp16 product, so this diagnostic mode runs fp32 GEMMs (see docs/FUSED.md). */
template <>
struct act<MODE_FP16> {
    typedef float T;
    typedef float W;
    static __device__ __forceinline__ float ld(T x) { return x; }
    static __device__ __forceinline__ T st(float x) { return __half2float(__float2half_rn(x)); }
};
template <>
struct act<MODE_FP32> {
    typedef float T;
    typedef float W;
    static __device__ __forceinline__ float ld(T x) { return x; }
    static __device__ __forceinline__ T st(float x) { return x; }
};

/* The value a store in the activation dtype would hold. */
template <int M>
static __device__ __forceinline__ float rnd(float x) {
    return act<M>::ld(act<M>::st(x));
}

static __device__ __forceinline__ float wld(bf16 x) { return __bfloat162float(x); }
static __device__ __forceinline__ float wld(float x) { return x; }

/* 8 consecutive values, 16-byte aligned (every row length here is a multiple of 8). */
static __device__ __forceinline__ void ld8(const bf16 *p, float v[8]) {
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __bfloat1622float2(h[i]);
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
}
static __device__ __forceinline__ void ld8(const float *p, float v[8]) {
    float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
/* Stores 8 values already rounded to the activation dtype (exact conversion). */
static __device__ __forceinline__ void st8(bf16 *p, const float v[8]) {
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}
static __device__ __forceinline__ void st8(float *p, const float v[8]) {
    reinterpret_cast<float4 *>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4 *>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// ----------------------------------------------------------------------------
// programmatic dependent launch (PDL, sm_90): a kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while the previous one drains; before
// griddep_wait it may only touch what the previous kernel does not write (weights, older cache rows).
// Both are no-ops for a kernel launched without the attribute, and before sm_90.

static __device__ __forceinline__ void griddep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
/* Lets the next kernel launch (its blocks start once every block of this one has called it or exited).
 * The one-token chain (gemv.cuh, decode_attn_qk_kernel) calls it first thing, so that the next kernels
 * stage their weights while this one waits and computes: safe because before griddep_wait a kernel reads
 * only what no kernel of the step writes, and after it every earlier kernel has completed (each one
 * completes only after its own wait). Kernels that call it after griddep_wait keep at most two in flight. */
static __device__ __forceinline__ void griddep_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
static __device__ __forceinline__ void prefetch_l2(const void *p) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

// ----------------------------------------------------------------------------
// timeline (a -Dtimeline=true build; qd_timeline.h, docs/FUSED.md): thread (0,0) of every block of the
// one-token chain records when the block started, when its dependency wait returned, when its inputs were
// ready (weights landed, prologue done) and when it ended. Without the option the macros are empty.

#ifdef QD_TIMELINE
#define QD_TL_MAX (1 << 16) /* records per step: the 0.6B chain at context 4096 writes about 30k */
struct qd_tl_dev {
    unsigned long long start, wait, ready, end, mark; /* mark: 0, or the kernel's own midpoint (TL_MARK) */
    int launch, block, sm, pad;
};
__device__ qd_tl_dev qd_tl_buf[QD_TL_MAX];
__device__ unsigned qd_tl_count;
struct qd_tl_stamps {
    unsigned long long start, wait, ready, mark;
};
static __device__ __forceinline__ unsigned long long tl_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
/* Called by every thread of the block (it waits for all of them), at the block's last instruction. */
static __device__ __forceinline__ void tl_end(const qd_tl_stamps &s, int launch) {
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        const unsigned i = atomicAdd(&qd_tl_count, 1u);
        if (i < QD_TL_MAX) {
            int sm;
            asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
            const qd_tl_dev r = {
                s.start, s.wait, s.ready, tl_now(), s.mark, launch, (int)(blockIdx.x + blockIdx.y * gridDim.x), sm, 0};
            qd_tl_buf[i] = r;
        }
    }
}
#define TL_START(s) qd_tl_stamps s = {tl_now(), 0, 0, 0}
#define TL_WAIT(s) (s.wait = s.ready = tl_now())
#define TL_READY(s) (s.ready = tl_now())
#define TL_MARK(s) (s.mark = tl_now())
#define TL_END(s, launch) tl_end(s, launch)
#else
#define TL_START(s) (void)0
#define TL_WAIT(s) (void)0
#define TL_READY(s) (void)0
#define TL_MARK(s) (void)0
#define TL_END(s, launch) (void)0
#endif

// ----------------------------------------------------------------------------
// asynchronous copies to shared memory (sm_80+)

static __device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16-byte async copy; src_ok == false writes zeros (rows past the end of Q or of the cache). */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src, bool src_ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_ok ? 16 : 0));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* Bulk copies by the Tensor Memory Accelerator (sm_90): one instruction moves a whole contiguous range
 * into shared memory and signals an mbarrier when its bytes have landed; the SM's load/store pipe stays
 * free for the kernels that are computing beside it. Before sm_90 (the PTX fallback) the same calls are
 * 16-byte cp.async copies by the whole block and a cp.async wait. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define QD_HAVE_TMA 1
#else
#define QD_HAVE_TMA 0
#endif

/* One thread: an mbarrier whose phases complete after `count` arrivals (and the bytes it is told to
 * expect); the block must __syncthreads() before using it. */
static __device__ __forceinline__ void mbar_init(uint64_t *bar, unsigned count = 1) {
#if QD_HAVE_TMA
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
    (void)bar;
#endif
}
/* One thread: expect bytes, then copy the n ranges (dst[i], src[i], bytes[i], each 16-byte aligned and a
 * multiple of 16 bytes). With the fallback, every thread of the block must call it (the copies are
 * spread over the block). */
static __device__ __forceinline__ void bulk_load(uint64_t *bar, void *const *dst, const void *const *src,
                                                 const unsigned *bytes, int n) {
#if QD_HAVE_TMA
    unsigned total = 0;
    for (int i = 0; i < n; i++) total += bytes[i];
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(total)
                 : "memory");
    for (int i = 0; i < n; i++)
        for (unsigned off = 0; off < bytes[i]; off += 32768u) { /* 32 KiB pieces: several in flight */
            const unsigned len = bytes[i] - off < 32768u ? bytes[i] - off : 32768u;
            asm volatile(
                "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                    smem_u32((char *)dst[i] + off)),
                "l"((const char *)src[i] + off), "r"(len), "r"(smem_u32(bar))
                : "memory");
        }
#else
    (void)bar;
    for (int i = 0; i < n; i++) {
        uint4 *d = (uint4 *)dst[i];
        const uint4 *s = (const uint4 *)src[i];
        for (unsigned c = threadIdx.x; c < bytes[i] / 16; c += blockDim.x) cp_async16(d + c, s + c, true);
    }
    cp_async_commit();
#endif
}
/* Every thread, sm_90: until phase `parity` (0 for the first use of a barrier, then 1, 0, ...) of bar has
 * completed: its arrival and every byte it was told to expect. */
static __device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t parity) {
#if QD_HAVE_TMA
    uint32_t done = 0;
    while (!done)
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(smem_u32(bar)), "r"(parity)
            : "memory");
#else
    (void)bar, (void)parity;
#endif
}
/* Every thread: until the copies of bulk_load have landed (phase 0 of a fresh barrier). The fallback
 * waits for the thread's own cp.async copies; a __syncthreads() must follow before reading. */
static __device__ __forceinline__ void bulk_wait(uint64_t *bar) {
#if QD_HAVE_TMA
    mbar_wait(bar, 0);
#else
    (void)bar;
    cp_async_wait<0>();
#endif
}
/* sm_90, one thread: the next phase of bar completes when `bytes` more bytes have landed (then the
 * copies of bulk_copy, signalling bar). */
static __device__ __forceinline__ void mbar_expect(uint64_t *bar, unsigned bytes) {
#if QD_HAVE_TMA
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
#else
    (void)bar, (void)bytes;
#endif
}
/* sm_90, one thread: one arrival on bar, releasing what the thread's warp read before it (the lanes have
 * passed __syncwarp) to whoever waits for the phase. */
static __device__ __forceinline__ void mbar_arrive(uint64_t *bar) {
#if QD_HAVE_TMA
    asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
#else
    (void)bar;
#endif
}
/* sm_90, one thread: one bulk copy of `bytes` (16-byte aligned, a multiple of 16, below 1 MiB) into shared
 * memory, completing on bar. */
static __device__ __forceinline__ void bulk_copy(uint64_t *bar, void *dst, const void *src, unsigned bytes) {
#if QD_HAVE_TMA
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                     smem_u32(dst)),
                 "l"(src), "r"(bytes), "r"(smem_u32(bar))
                 : "memory");
#else
    (void)bar, (void)dst, (void)src, (void)bytes;
#endif
}
/* cp.async.wait_group with a count known at run time (0..7; more waits for all) */
static __device__ __forceinline__ void cp_async_wait_n(int n) {
    switch (n) {
    case 7: cp_async_wait<7>(); break;
    case 6: cp_async_wait<6>(); break;
    case 5: cp_async_wait<5>(); break;
    case 4: cp_async_wait<4>(); break;
    case 3: cp_async_wait<3>(); break;
    case 2: cp_async_wait<2>(); break;
    case 1: cp_async_wait<1>(); break;
    default: cp_async_wait<0>(); break;
    }
}

// ----------------------------------------------------------------------------
// reductions in a fixed order

/* Sum over a warp; the xor butterfly adds the same pairs in every lane (addition commutes exactly), so
 * every lane holds bitwise the same total. */
static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32): warp sums, then warp 0's .. last warp's in order.
 * red (32) shared scratch. Every thread returns the same total. */
static __device__ __forceinline__ float block_sum(float v, float *red) {
    v = warp_sum(v);
    const int w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads(); /* red may still be read from a previous call */
    if ((threadIdx.x & 31) == 0) red[w] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < nw; i++) s = __fadd_rn(s, red[i]);
    return s;
}
static __device__ __forceinline__ float block_max(float v, float *red) {
    v = warp_max(v);
    const int w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[w] = v;
    __syncthreads();
    float s = -INFINITY;
    for (int i = 0; i < nw; i++) s = fmaxf(s, red[i]);
    return s;
}

/* 1/sqrt(mean + eps) exactly as rmsnorm_forward (reference/ops.c) writes it: 1.0f / sqrtf(ss/n + eps). */
static __device__ __forceinline__ float rms_scale(float ss, int n, float eps) {
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)n), eps)));
}

/* rms_scale, or with fault eps-outside-sqrt 1/(sqrt(mean) + eps) (emu's norm_act spells it the same). */
static __device__ __forceinline__ float rms_scale_f(float ss, int n, float eps, int fault) {
    if (fault == QD_FAULT_EPS_OUTSIDE) return __fdiv_rn(1.0f, __fadd_rn(__fsqrt_rn(__fdiv_rn(ss, (float)n)), eps));
    return rms_scale(ss, n, eps);
}

/* Fault norm-sumsq-lowp: the sum of squares of a row as a one-thread-per-row kernel with an accumulator of
 * the activation type computes it: each square and each partial sum rounded to A, in element order (emu's
 * arithmetic exactly; a bf16 sum stagnates once it dwarfs the terms). Every calling thread computes it.
 * x (n): the stored row (bf16) or fp32 values (shared memory, fp16/fp32 buffers). */
template <int M, typename X>
static __device__ float sumsq_lowp(const X *x, int n) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) {
        const float v = wld(x[i]);
        ss = rnd<M>(__fadd_rn(ss, rnd<M>(__fmul_rn(v, v))));
    }
    return ss;
}

// ----------------------------------------------------------------------------
// embedding

/* x[t,:] = embed[tok[t],:] rounded to the activation dtype (exact for bf16).
 * x (T, C); emb (V, C); tok (T). grid T, any block size. */
template <int M>
__global__ void embed_kernel(typename act<M>::T *__restrict__ x, const typename act<M>::W *__restrict__ emb,
                             const int32_t *__restrict__ tok, int C) {
    griddep_wait();
    griddep_launch();
    const int t = blockIdx.x;
    const typename act<M>::W *row = emb + (size_t)tok[t] * C;
    typename act<M>::T *out = x + (size_t)t * C;
    for (int c8 = threadIdx.x; c8 < C / 8; c8 += blockDim.x) {
        float v[8];
        ld8(row + c8 * 8, v);
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = rnd<M>(v[i]);
        st8(out + c8 * 8, v);
    }
}

// ----------------------------------------------------------------------------
// residual add and RMSNorm

/* res = A(res + add), elementwise over n values (n a multiple of 8). The unfused residual.
 * drop (fault residual-drop, only for the attention residual): res = add, the stream lost. */
template <int M>
__global__ void residual_kernel(typename act<M>::T *__restrict__ res, const typename act<M>::T *__restrict__ add,
                                size_t n8, int drop) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        float a[8], b[8];
        ld8(res + i * 8, a);
        ld8(add + i * 8, b);
#pragma unroll
        for (int k = 0; k < 8; k++) a[k] = drop ? b[k] : rnd<M>(__fadd_rn(a[k], b[k]));
        st8(res + i * 8, a);
    }
}

/* One row per block. With add != NULL the residual is updated first, res = A(res + add) (the fused
 * residual of the previous op), then out = A(res * rsqrt(mean(res^2) + eps) * w) over the stored res.
 * With add == NULL this is the plain (unfused) RMSNorm; both read res back in the same order, so the
 * fused kernel and the unfused pair give bitwise the same out.
 * Faults: residual-drop (res = add: the host passes it only to the attention residual's launch),
 * norm-sumsq-lowp, eps-outside-sqrt.
 * res, add, out (T, C); w (C). grid T; block: a function of C only (norm_threads). */
template <int M>
__global__ void add_rmsnorm_kernel(typename act<M>::T *__restrict__ res, const typename act<M>::T *__restrict__ add,
                                   typename act<M>::T *__restrict__ out, const float *__restrict__ w, int C, float eps,
                                   int fault) {
    __shared__ float red[32];
    typename act<M>::T *r = res + (size_t)blockIdx.x * C;
    typename act<M>::T *o = out + (size_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int c8 = threadIdx.x; c8 < C / 8; c8 += blockDim.x) {
        float v[8];
        ld8(r + c8 * 8, v);
        if (add) {
            float b[8];
            ld8(add + (size_t)blockIdx.x * C + c8 * 8, b);
#pragma unroll
            for (int k = 0; k < 8; k++) v[k] = fault == QD_FAULT_RESIDUAL_DROP ? b[k] : rnd<M>(__fadd_rn(v[k], b[k]));
            st8(r + c8 * 8, v);
        }
#pragma unroll
        for (int k = 0; k < 8; k++) ss = __fmaf_rn(v[k], v[k], ss);
    }
    if (fault == QD_FAULT_NORM_SUMSQ_LOWP) {
        __syncthreads(); /* the row's stores of every thread are visible to the block */
        ss = sumsq_lowp<M>(r, C);
    } else {
        ss = block_sum(ss, red);
    }
    const float scale = rms_scale_f(ss, C, eps, fault);
    for (int c8 = threadIdx.x; c8 < C / 8; c8 += blockDim.x) {
        float v[8];
        ld8(r + c8 * 8, v); /* this thread's own stores, or the input */
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = rnd<M>(__fmul_rn(__fmul_rn(v[k], scale), w[c8 * 8 + k]));
        st8(o + c8 * 8, v);
    }
}

// ----------------------------------------------------------------------------
// per-head q_norm / k_norm and rotate-half RoPE
// One warp per (token, head). Lane l holds the RoPE pairs (i, i + HD/2) for i = l, l + 32, ... < HD/2,
// so the norm and the rotation need no data exchange beyond the warp's sum of squares.

#define QD_HEAD_MAXJ 4 /* pairs per lane: head_dim up to 256 */

template <int M>
static __device__ __forceinline__ void head_load(const typename act<M>::T *x, int hd2, float x0[QD_HEAD_MAXJ],
                                                 float x1[QD_HEAD_MAXJ]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < QD_HEAD_MAXJ; j++) {
        int i = lane + 32 * j;
        x0[j] = i < hd2 ? act<M>::ld(x[i]) : 0.0f;
        x1[j] = i < hd2 ? act<M>::ld(x[i + hd2]) : 0.0f;
    }
}

/* Fault norm-sumsq-lowp over one head held by a warp: sumsq_lowp's arithmetic in element order 0..HD-1,
 * each value fetched from its lane. Called by all 32 lanes; each gets the sum. */
template <int M>
static __device__ float head_sumsq_lowp(const float x0[QD_HEAD_MAXJ], const float x1[QD_HEAD_MAXJ], int hd2) {
    float ss = 0.0f;
#pragma unroll
    for (int half = 0; half < 2; half++) {
#pragma unroll
        for (int j = 0; j < QD_HEAD_MAXJ; j++) {
#pragma unroll 1 /* a fault path: kept small, so that the clean path of the kernels stays in instruction cache */
            for (int l = 0; l < 32; l++) {
                const float v = __shfl_sync(0xffffffffu, half ? x1[j] : x0[j], l);
                if (l + 32 * j < hd2) ss = rnd<M>(__fadd_rn(ss, rnd<M>(__fmul_rn(v, v))));
            }
        }
    }
    return ss;
}

/* In place: x = A(x * rsqrt(mean(x^2) + eps) * w) over one head. w (HD).
 * Faults: norm-sumsq-lowp and eps-outside-sqrt (q_norm and k_norm are RMSNorms too); mul_only (fault
 * knorm-mul, k heads only): x = A(x * w), the weight without the normalisation. Warp-uniform arguments. */
template <int M>
static __device__ __forceinline__ void head_rmsnorm(float x0[QD_HEAD_MAXJ], float x1[QD_HEAD_MAXJ], const float *w,
                                                    int hd2, float eps, int fault, bool mul_only) {
    const int lane = threadIdx.x & 31;
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < QD_HEAD_MAXJ; j++) {
        ss = __fmaf_rn(x0[j], x0[j], ss);
        ss = __fmaf_rn(x1[j], x1[j], ss);
    }
    float scale;
    if (mul_only) scale = 1.0f; /* x * 1 * w == x * w exactly */
    else if (fault == QD_FAULT_NORM_SUMSQ_LOWP)
        scale = rms_scale_f(head_sumsq_lowp<M>(x0, x1, hd2), 2 * hd2, eps, fault);
    else scale = rms_scale_f(warp_sum(ss), 2 * hd2, eps, fault);
#pragma unroll
    for (int j = 0; j < QD_HEAD_MAXJ; j++) {
        int i = lane + 32 * j;
        if (i < hd2) {
            x0[j] = rnd<M>(__fmul_rn(__fmul_rn(x0[j], scale), w[i]));
            x1[j] = rnd<M>(__fmul_rn(__fmul_rn(x1[j], scale), w[i + hd2]));
        }
    }
}

/* In place: rotate-half RoPE at one position, as rope_forward (reference/ops.c): x0*c - x1*s and
 * x1*c + x0*s with every product rounded, then A(). cs, sn: this position's (HD/2) table rows.
 * interleaved (fault rope-interleaved, warp-uniform): the GPT-J pairs (2i, 2i+1) with frequency i, as emu's
 * faulty rope_act. Element e's partner e^1 sits in lane^1 at the same j and half (HD/2 is even). */
template <int M>
static __device__ __forceinline__ void head_rope(float x0[QD_HEAD_MAXJ], float x1[QD_HEAD_MAXJ], const float *cs,
                                                 const float *sn, int hd2, bool interleaved) {
    const int lane = threadIdx.x & 31;
    if (interleaved) {
        const bool odd = lane & 1;
#pragma unroll
        for (int j = 0; j < QD_HEAD_MAXJ; j++) {
            const int i = lane + 32 * j;
            const float p0 = __shfl_xor_sync(0xffffffffu, x0[j], 1), p1 = __shfl_xor_sync(0xffffffffu, x1[j], 1);
            if (i < hd2) {
                const int f0 = i >> 1, f1 = (i + hd2) >> 1; /* pair index = frequency index */
                /* even e: x[e]*c - x[e+1]*s; odd e: x[e]*c + x[e-1]*s */
                const float a0 = __fmul_rn(x0[j], cs[f0]), b0 = __fmul_rn(p0, sn[f0]);
                const float a1 = __fmul_rn(x1[j], cs[f1]), b1 = __fmul_rn(p1, sn[f1]);
                x0[j] = rnd<M>(odd ? __fadd_rn(a0, b0) : __fsub_rn(a0, b0));
                x1[j] = rnd<M>(odd ? __fadd_rn(a1, b1) : __fsub_rn(a1, b1));
            }
        }
        return;
    }
#pragma unroll
    for (int j = 0; j < QD_HEAD_MAXJ; j++) {
        int i = lane + 32 * j;
        if (i < hd2) {
            float c = cs[i], s = sn[i], a = x0[j], b = x1[j];
            x0[j] = rnd<M>(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
            x1[j] = rnd<M>(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
        }
    }
}

template <int M>
static __device__ __forceinline__ void head_store(typename act<M>::T *x, int hd2, const float x0[QD_HEAD_MAXJ],
                                                  const float x1[QD_HEAD_MAXJ]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < QD_HEAD_MAXJ; j++) {
        int i = lane + 32 * j;
        if (i < hd2) {
            x[i] = act<M>::st(x0[j]);
            x[i + hd2] = act<M>::st(x1[j]);
        }
    }
}

/* The fused kernel: for each token t and each head of qkv's row t (NH q heads, NKV k heads, NKV v heads,
 * in that order), q_norm + RoPE -> q; k_norm + RoPE -> k cache; v -> v cache. q_norm and k_norm are
 * rounded in registers where the unfused kernels store them.
 * qkv (T, NH*HD + 2*NKV*HD); q (T, NH, HD); kc, vc (max_seq, NKV, HD) of this layer;
 * qw, kw (HD); rope_cos, rope_sin (max_seq, HD/2) (the host passes the bf16-frequency table to a layer with
 * fault rope-freq-bf16). Position of token t: (d_pos ? *d_pos : pos0) + t.
 * Faults: knorm-mul, rope-interleaved, norm-sumsq-lowp, eps-outside-sqrt, kv-cache-pos (a one-token step
 * at pos > 0 stores its k and v at pos - 1, over the previous token's; RoPE still uses pos).
 * Warps over T * (NH + 2*NKV) heads, 4 per block. */
template <int M>
__global__ void __launch_bounds__(128)
    qk_norm_rope_kernel(const typename act<M>::T *__restrict__ qkv, typename act<M>::T *__restrict__ q,
                        typename act<M>::T *__restrict__ kc, typename act<M>::T *__restrict__ vc,
                        const float *__restrict__ qw, const float *__restrict__ kw, const float *__restrict__ rope_cos,
                        const float *__restrict__ rope_sin, int T, int pos0, const int *__restrict__ d_pos, int NH,
                        int NKV, int HD, float eps, int fault) {
    const int heads = NH + 2 * NKV;
    const int gw = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (gw >= T * heads) return; /* whole warps leave together */
    const int t = gw / heads, hi = gw % heads, hd2 = HD / 2;
    const int pos = (d_pos ? *d_pos : pos0) + t;
    const int wpos = fault == QD_FAULT_KV_POS && T == 1 && pos > 0 ? pos - 1 : pos; /* where k, v are stored */
    const typename act<M>::T *src = qkv + (size_t)t * heads * HD + (size_t)hi * HD;
    float x0[QD_HEAD_MAXJ], x1[QD_HEAD_MAXJ];
    head_load<M>(src, hd2, x0, x1);
    if (hi >= NH + NKV) { /* v: stored as projected */
        head_store<M>(vc + ((size_t)wpos * NKV + (hi - NH - NKV)) * HD, hd2, x0, x1);
        return;
    }
    const bool is_q = hi < NH;
    head_rmsnorm<M>(x0, x1, is_q ? qw : kw, hd2, eps, fault, !is_q && fault == QD_FAULT_KNORM_MUL);
    head_rope<M>(x0, x1, rope_cos + (size_t)pos * hd2, rope_sin + (size_t)pos * hd2, hd2,
                 fault == QD_FAULT_ROPE_INTERLEAVED);
    typename act<M>::T *dst = is_q ? q + ((size_t)t * NH + hi) * HD : kc + ((size_t)wpos * NKV + (hi - NH)) * HD;
    head_store<M>(dst, hd2, x0, x1);
}

/* Unfused 1/3: q_norm and k_norm stored. qn (T, NH, HD); kn (T, NKV, HD). Warps over T * (NH + NKV).
 * Faults: knorm-mul, norm-sumsq-lowp, eps-outside-sqrt. */
template <int M>
__global__ void __launch_bounds__(128)
    head_norm_kernel(const typename act<M>::T *__restrict__ qkv, typename act<M>::T *__restrict__ qn,
                     typename act<M>::T *__restrict__ kn, const float *__restrict__ qw, const float *__restrict__ kw,
                     int T, int NH, int NKV, int HD, float eps, int fault) {
    const int heads = NH + NKV, all = NH + 2 * NKV;
    const int gw = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (gw >= T * heads) return;
    const int t = gw / heads, hi = gw % heads, hd2 = HD / 2;
    float x0[QD_HEAD_MAXJ], x1[QD_HEAD_MAXJ];
    head_load<M>(qkv + (size_t)t * all * HD + (size_t)hi * HD, hd2, x0, x1);
    const bool is_q = hi < NH;
    head_rmsnorm<M>(x0, x1, is_q ? qw : kw, hd2, eps, fault, !is_q && fault == QD_FAULT_KNORM_MUL);
    head_store<M>(is_q ? qn + ((size_t)t * NH + hi) * HD : kn + ((size_t)t * NKV + hi - NH) * HD, hd2, x0, x1);
}

/* Unfused 2/3: RoPE over the stored q_norm / k_norm. q (T, NH, HD); kr (T, NKV, HD).
 * Faults: rope-interleaved (rope-freq-bf16 is the host's choice of table). */
template <int M>
__global__ void __launch_bounds__(128)
    rope_kernel(const typename act<M>::T *__restrict__ qn, const typename act<M>::T *__restrict__ kn,
                typename act<M>::T *__restrict__ q, typename act<M>::T *__restrict__ kr,
                const float *__restrict__ rope_cos, const float *__restrict__ rope_sin, int T, int pos0,
                const int *__restrict__ d_pos, int NH, int NKV, int HD, int fault) {
    const int heads = NH + NKV;
    const int gw = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (gw >= T * heads) return;
    const int t = gw / heads, hi = gw % heads, hd2 = HD / 2;
    const int pos = (d_pos ? *d_pos : pos0) + t;
    const bool is_q = hi < NH;
    const size_t off = is_q ? ((size_t)t * NH + hi) * HD : ((size_t)t * NKV + hi - NH) * HD;
    float x0[QD_HEAD_MAXJ], x1[QD_HEAD_MAXJ];
    head_load<M>((is_q ? qn : kn) + off, hd2, x0, x1);
    head_rope<M>(x0, x1, rope_cos + (size_t)pos * hd2, rope_sin + (size_t)pos * hd2, hd2,
                 fault == QD_FAULT_ROPE_INTERLEAVED);
    head_store<M>((is_q ? q : kr) + off, hd2, x0, x1);
}

/* Unfused 3/3: k_rope and v_proj into the caches at positions pos..pos+T-1.
 * kr (T, NKV, HD); qkv (T, NH*HD + 2*NKV*HD); kc, vc (max_seq, NKV, HD). Threads over T * NKV*HD / 8.
 * Fault kv-cache-pos: a one-token step at pos > 0 stores at pos - 1. */
template <int M>
__global__ void kv_store_kernel(const typename act<M>::T *__restrict__ kr, const typename act<M>::T *__restrict__ qkv,
                                typename act<M>::T *__restrict__ kc, typename act<M>::T *__restrict__ vc, int T,
                                int pos0, const int *__restrict__ d_pos, int NH, int NKV, int HD, int fault) {
    const int kvw = NKV * HD, row8 = kvw / 8;
    const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)T * row8) return;
    const int t = (int)(i / row8), c = (int)(i % row8) * 8;
    int pos = (d_pos ? *d_pos : pos0) + t;
    if (fault == QD_FAULT_KV_POS && T == 1 && pos > 0) pos -= 1;
    float v[8];
    ld8(kr + (size_t)t * kvw + c, v);
    st8(kc + (size_t)pos * kvw + c, v);
    ld8(qkv + (size_t)t * (NH * HD + 2 * kvw) + NH * HD + kvw + c, v);
    st8(vc + (size_t)pos * kvw + c, v);
}

// ----------------------------------------------------------------------------
// SwiGLU and the fp16 rounding of fp32 GEMM outputs

/* Fault act-gelu: GELU (erf form) where SiLU belongs, spelled as emu's: 0.5 * g * (1 + erf(g / sqrt 2)). */
static __device__ __forceinline__ float gelu_fault(float g) {
    return __fmul_rn(__fmul_rn(0.5f, g), __fadd_rn(1.0f, erff(__fmul_rn(g, 0.70710678f))));
}

/* act = A(silu(gate) * up) over the stored gate and up, as swiglu_forward: g / (1 + expf(-g)) * u.
 * gu (T, 2I): gate in columns [0, I), up in [I, 2I); out (T, I). Threads over T * I / 8.
 * Fault act-gelu: gelu_fault(gate) * up. */
template <int M>
__global__ void swiglu_kernel(typename act<M>::T *__restrict__ out, const typename act<M>::T *__restrict__ gu, int T,
                              int I, int fault) {
    const int row8 = I / 8;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)T * row8;
         i += (size_t)gridDim.x * blockDim.x) {
        const int t = (int)(i / row8), c = (int)(i % row8) * 8;
        float g[8], u[8];
        ld8(gu + (size_t)t * 2 * I + c, g);
        ld8(gu + (size_t)t * 2 * I + I + c, u);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float silu = fault == QD_FAULT_ACT_GELU ? gelu_fault(g[k]) : __fdiv_rn(g[k], __fadd_rn(1.0f, expf(-g[k])));
            g[k] = rnd<M>(__fmul_rn(silu, u[k]));
        }
        st8(out + (size_t)t * I + c, g);
    }
}

/* In place fp16 rounding of an fp32 GEMM output: rows x cols with row stride ld. */
__global__ void round_f16_kernel(float *__restrict__ x, int rows, int cols, int ld) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)rows * cols;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, c = i % cols;
        x[r * ld + c] = __half2float(__float2half_rn(x[r * ld + c]));
    }
}

#endif
