/* gemv.cuh: the decode (one token) matrix-vector products of the fused path, bf16 only (docs/FUSED.md).
 *
 * For T = 1 a GEMM is a GEMV: every weight byte is read once and used once, so the step is bound by
 * memory bandwidth and by the latency of its chain of kernels. Two kernels, one arithmetic:
 *   gemv_staged_kernel  the per-layer projections: a block copies its whole weight tile into shared
 *                       memory before griddepcontrol.wait (below), then computes from there
 *   gemv_kernel         the lm_head (and tiles too large for shared memory): streams the weights from
 *                       global memory, several 16-byte loads in flight per lane
 * Both read each row in 16-byte chunks (8 bf16 per lane, a warp covering 256 consecutive values),
 * accumulate in fp32 with fused multiply-adds in a fixed order (each lane its chunks in order, then the
 * xor butterfly of warp_sum), and round each output once where the contract stores it: a row's value
 * does not depend on which kernel computed it. The input vector is held in shared memory as bf16 (every
 * value there is bf16 by the contract).
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
 * Programmatic dependent launch: before griddepcontrol.wait a block touches only weights (the staged
 * kernel: all of its tile and the norm weight, by bulk copies; the streaming kernel: an L2 prefetch of
 * its first rows). The staged kernel lets the next kernel launch first thing, the streaming one (the
 * last of the step) after its wait. */
#ifndef QD_FUSED_GEMV_CUH
#define QD_FUSED_GEMV_CUH

#include "kernels.cuh"

enum { GV_PLAIN = 0, GV_NORM = 1 };              /* prologue: where x comes from */
enum { GV_BF16 = 0, GV_F32 = 1, GV_SWIGLU = 2 }; /* epilogue: what is stored */

#define GV_THREADS 128 /* 4 warps per block */
/* 16-byte chunks per row in flight per lane (x2 rows): 8 for the plain GEMVs, whose rows are the long
 * ones (o_proj over NH*HD, down_proj over I: a whole 0.6B row in one or two rounds), 4 for the GEMVs over
 * the hidden size (one round covers C = 1024, and the register budget stays at 8 blocks per SM) */
template <int PRO>
struct gv_unroll {
    static constexpr int U = PRO == 0 ? 8 : 4;
};

typedef struct {
    const bf16 *W;    /* (N, K); GV_SWIGLU: (2N, K), gate rows then up rows */
    const bf16 *x;    /* (K) GV_PLAIN: the input; GV_NORM: the residual stream before the add */
    const bf16 *add;  /* (K) GV_NORM: added to the residual first, or NULL */
    const float *nw;  /* (K) GV_NORM: norm weight */
    bf16 *res_out;    /* (K) GV_NORM: block 0 stores A(x + add) here (must not be x) */
    bf16 *xn_out;     /* (K) GV_NORM: block 0 stores the normalised input here */
    void *out;        /* GV_BF16: (N) bf16; GV_F32: (N) fp32; GV_SWIGLU: (2N) bf16 gate | up */
    bf16 *act;        /* (N) GV_SWIGLU: silu(gate) * up */
    int N, K;         /* output rows (GV_SWIGLU: per half), input length (a multiple of 8) */
    int norm_threads; /* GV_NORM: add_rmsnorm_kernel's block size for K (a multiple of 32, at most
                           2 * GV_THREADS): the sum of squares is accumulated in its order */
    float eps;
    unsigned *sched; /* gemv_pipe_kernel: NULL for the static order of groups, else two counters (the next
                        group, the blocks done), zero at launch and left zero, handing out groups on demand */
    int fault;       /* the fault of this launch (qd_fault_kind), QD_FAULT_NONE for none */
    int tl;          /* the launch's id in a timeline build (qd_timeline.h) */
} gemv_args;

/* Unit u of a warp: two weight rows. GV_SWIGLU: gate row u and up row N + u; else rows 2u and 2u + 1
 * (the second absent when N is odd). */
template <int EPI>
static __device__ __forceinline__ int gv_units(int N) {
    return EPI == GV_SWIGLU ? N : (N + 1) / 2;
}
template <int EPI>
static __device__ __forceinline__ int gv_row0(int u) {
    return EPI == GV_SWIGLU ? u : 2 * u;
}
template <int EPI>
static __device__ __forceinline__ int gv_row1(int u, int N) {
    return EPI == GV_SWIGLU ? N + u : 2 * u + 1;
}

/* The GV_NORM prologue, by any block of bd threads (a multiple of 32): add_rmsnorm_kernel's arithmetic in
 * its order. That kernel runs nt = norm_threads threads, thread t taking the chunks c8 = t, t + nt, ...,
 * then adds the warp sums in warp order; here thread tid plays its threads tid, tid + bd, ... Leaves the
 * normalised input in sx (K values, bf16: every value here is rounded to bf16 by the contract, so the
 * copy is exact and its 16-byte chunks are read without bank conflicts); block 0 also stores res_out and
 * xn_out. nw: the norm weight (global memory, or a copy in shared memory that lands on nw_bar). GV_PLAIN:
 * x into sx. */
template <int PRO>
static __device__ __forceinline__ void gv_prologue(const gemv_args &a, bf16 *sx, float *red, const float *nw,
                                                   uint64_t *nw_bar) {
    const int tid = threadIdx.x, lane = tid & 31, bd = blockDim.x, K = a.K, K8 = K / 8;
    if (PRO == GV_PLAIN) {
        for (int c8 = tid; c8 < K8; c8 += bd)
            reinterpret_cast<uint4 *>(sx)[c8] = reinterpret_cast<const uint4 *>(a.x)[c8];
        __syncthreads();
        return;
    }
    const int nt = a.norm_threads;
    for (int h = 0; h * bd < nt; h++) {
        const int vt = tid + h * bd; /* vt < nt is warp-uniform: nt and bd are multiples of 32 */
        float ss = 0.0f;
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
            for (int k = 0; k < 8; k++) ss = __fmaf_rn(v[k], v[k], ss);
            st8(sx + c8 * 8, v); /* the residual, normalised in place below */
        }
        ss = warp_sum(ss);
        if (lane == 0 && vt < nt) red[vt >> 5] = ss;
    }
    if (nw_bar) bulk_wait(nw_bar);
    __syncthreads(); /* red, sx and the norm weight complete */
    float ss = 0.0f;
    for (int i = 0; i < nt / 32; i++) ss = __fadd_rn(ss, red[i]);
    if (a.fault == QD_FAULT_NORM_SUMSQ_LOWP) { /* block-uniform */
        ss = sumsq_lowp<MODE_BF16>(sx, K);
        __syncthreads(); /* every thread has read sx before it is normalised in place */
    }
    const float scale = rms_scale_f(ss, K, a.eps, a.fault);
    for (int c8 = tid; c8 < K8; c8 += bd) {
        float v[8], w[8];
        ld8(sx + c8 * 8, v);
        ld8(nw + c8 * 8, w);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = rnd<MODE_BF16>(__fmul_rn(__fmul_rn(v[k], scale), w[k]));
        if (blockIdx.x == 0) st8(a.xn_out + c8 * 8, v);
        st8(sx + c8 * 8, v);
    }
    __syncthreads();
}

/* acc0 += (8 weights of q0) . x, acc1 += (8 weights of q1) . x: one lane's 8 products per row, in order */
static __device__ __forceinline__ void gv_fma8(float &acc0, float &acc1, const uint4 q0, const uint4 q1,
                                               const uint4 xq) {
    const __nv_bfloat162 *h0 = reinterpret_cast<const __nv_bfloat162 *>(&q0);
    const __nv_bfloat162 *h1 = reinterpret_cast<const __nv_bfloat162 *>(&q1);
    const __nv_bfloat162 *hx = reinterpret_cast<const __nv_bfloat162 *>(&xq);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 f0 = __bfloat1622float2(h0[k]), f1 = __bfloat1622float2(h1[k]), x = __bfloat1622float2(hx[k]);
        acc0 = __fmaf_rn(f0.x, x.x, acc0);
        acc0 = __fmaf_rn(f0.y, x.y, acc0);
        acc1 = __fmaf_rn(f1.x, x.x, acc1);
        acc1 = __fmaf_rn(f1.y, x.y, acc1);
    }
}

/* The epilogue of rows r0 and r1 (r1 only if has1), by one lane: acc0/acc1 are the finished sums. */
template <int EPI>
static __device__ __forceinline__ void gv_store(const gemv_args &a, int r0, int r1, bool has1, float acc0, float acc1) {
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

/* The streaming GEMV (the lm_head, and any matrix whose rows do not fit gemv_staged_kernel's tile).
 * dynamic shared memory: x as bf16 (K) */
template <int PRO, int EPI>
__global__ void __launch_bounds__(GV_THREADS) gemv_kernel(const gemv_args a) {
    extern __shared__ __align__(16) unsigned char gv_mem[];
    bf16 *sx = reinterpret_cast<bf16 *>(gv_mem); /* (K) */
    __shared__ float red[32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int K = a.K, K8 = K / 8, N = a.N, units = gv_units<EPI>(N);
    const int gwarp = blockIdx.x * (GV_THREADS / 32) + warp, nwarps = gridDim.x * (GV_THREADS / 32);
    constexpr int GV_U = gv_unroll<PRO>::U;
    TL_START(tl);

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
    TL_WAIT(tl);
    gv_prologue<PRO>(a, sx, red, a.nw, nullptr);

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
                if (c8 < K8) gv_fma8(acc0, acc1, q0[j], q1[j], reinterpret_cast<const uint4 *>(sx)[c8]);
            }
        }
        acc0 = warp_sum(acc0);
        acc1 = warp_sum(acc1);
        if (lane == 0) gv_store<EPI>(a, r0, r1, has1, acc0, acc1);
    }
    TL_END(tl, a.tl);
}

// ----------------------------------------------------------------------------
// The staged GEMV of the per-layer projections: a block owns upb consecutive units (GV_BF16: rows;
// GV_SWIGLU: gate row u with up row N + u) and copies all their weights into shared memory (bulk copies of
// the TMA on sm_90, cp.async before) before griddepcontrol.wait. It lets the next kernel launch first
// thing, so while one kernel waits for its input and computes, the next ones of the step are already
// pulling their weights: the DRAM stream no longer stops at every dependency. The host sizes upb so that
// the grid is about one block per SM and the tile at most GS_TILE_MAX bytes (about three consecutive
// kernels of a layer then fit on an SM together).
// Arithmetic per row is gemv_kernel's: each lane its chunks c8 = lane, lane + 32, ... in order, then the
// xor butterfly, so both kernels give bitwise the same outputs.

#define GS_THREADS 256                /* at most; the host gives a block one warp per two rows */
#define GS_TILE_MAX (96 * 1024 + 512) /* weight bytes per block: a 0.6B gate/up tile is 96 KiB */

/* Rows of weights one block stages: upb units, two rows per unit for GV_SWIGLU. */
template <int EPI>
static __host__ __device__ __forceinline__ int gs_rows(int upb) {
    return EPI == GV_SWIGLU ? 2 * upb : upb;
}
/* dynamic shared memory: the weight tile (gs_rows x K bf16), the norm weight (K fp32), x (K bf16) */
template <int EPI>
static __host__ __device__ __forceinline__ size_t gs_smem(int upb, int K) {
    return (size_t)gs_rows<EPI>(upb) * K * 2 + (size_t)K * 4 + (size_t)K * 2;
}

template <int PRO, int EPI>
__global__ void __launch_bounds__(GS_THREADS) gemv_staged_kernel(const gemv_args a, int upb) {
    extern __shared__ __align__(16) unsigned char gs_mem[];
    __shared__ float red[32];
    __shared__ __align__(8) uint64_t bar[2]; /* the weight tile; the norm weight */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    const int K = a.K, K8 = K / 8, N = a.N;
    const int u0 = blockIdx.x * upb, nu = min(upb, N - u0);
    const size_t tile = (size_t)gs_rows<EPI>(upb) * K * 2;
    uint4 *sw = reinterpret_cast<uint4 *>(gs_mem);                      /* (gs_rows, K8) */
    float *snw = reinterpret_cast<float *>(gs_mem + tile);              /* (K) */
    bf16 *sx = reinterpret_cast<bf16 *>(gs_mem + tile + (size_t)K * 4); /* (K) */
    TL_START(tl);

    if (tid == 0) {
        mbar_init(&bar[0]);
        mbar_init(&bar[1]);
    }
    __syncthreads();
    griddep_launch();               /* the next kernel may start staging its weights now */
    if (!QD_HAVE_TMA || tid == 0) { /* weights only: nothing a kernel of the step writes */
        if (PRO == GV_NORM) {
            void *const d[1] = {snw};
            const void *const s[1] = {a.nw};
            const unsigned len[1] = {(unsigned)K * 4};
            bulk_load(&bar[1], d, s, len, 1);
        }
        const unsigned bytes = (unsigned)nu * K * 2;
        void *const dst[2] = {sw, sw + (size_t)upb * K8};
        const void *const src[2] = {a.W + (size_t)u0 * K, a.W + (size_t)(N + u0) * K};
        const unsigned len[2] = {bytes, bytes};
        bulk_load(&bar[0], dst, src, len, EPI == GV_SWIGLU ? 2 : 1);
    }
    griddep_wait(); /* the previous kernel has finished and its writes are visible */
    TL_WAIT(tl);
    gv_prologue<PRO>(a, sx, red, snw, &bar[1]);
    bulk_wait(&bar[0]);
    __syncthreads(); /* fallback: every thread's copies have landed */
    TL_READY(tl);

    const uint4 *sxq = reinterpret_cast<const uint4 *>(sx);
    const int iters = EPI == GV_SWIGLU ? nu : (nu + 1) / 2;
    for (int it = warp; it < iters; it += nw) {
        const int s0 = EPI == GV_SWIGLU ? it : 2 * it, s1 = EPI == GV_SWIGLU ? upb + it : 2 * it + 1;
        const bool has1 = EPI == GV_SWIGLU || s1 < nu; /* warp-uniform */
        const uint4 *w0 = sw + (size_t)s0 * K8, *w1 = sw + (size_t)(has1 ? s1 : s0) * K8;
        float acc0 = 0.0f, acc1 = 0.0f;
#pragma unroll 4
        for (int c8 = lane; c8 < K8; c8 += 32) {
            const uint4 q0 = w0[c8], q1 = w1[c8], xq = sxq[c8]; /* 16-byte loads, conflict-free */
            gv_fma8(acc0, acc1, q0, q1, xq);
        }
        acc0 = warp_sum(acc0);
        acc1 = warp_sum(acc1);
        const int r0 = u0 + s0, r1 = EPI == GV_SWIGLU ? N + u0 + it : u0 + s1;
        if (lane == 0) gv_store<EPI>(a, r0, r1, has1, acc0, acc1);
    }
    TL_END(tl, a.tl);
}

// ----------------------------------------------------------------------------
// The pipelined GEMV, for matrices whose staged tiles would come in waves (the 8B shape: 34-201 MB per
// projection). A persistent grid, one block per SM: block b owns the groups of GP_ROWS rows g = b,
// b + grid, ... (GV_SWIGLU: GP_ROWS / 2 units, gate and up rows), and streams each group through shared
// memory in K-slices of ks values: a ring of nst slots of GP_ROWS x ks bf16. Warp-specialised: a producer
// warp fills the slots with bulk copies (one per row slice, issued side by side by its lanes, completing
// on the slot's "full" mbarrier) and refills a slot as soon as the GP_CWARPS consumer warps have released
// it on its "empty" mbarrier; the consumers never wait for each other, only for the bytes. The first nst
// slots are requested before griddepcontrol.wait (weights only), overlapping the previous kernel's tail.
// Arithmetic per row is gemv_kernel's: consumer warp w owns rows 2w and 2w + 1 of the group (GV_SWIGLU:
// gate and up of unit w), each lane its chunks c8 = lane, lane + 32, ... in order across the slices (ks
// is a multiple of 256 values, a whole round of the warp), then the xor butterfly: bitwise the same
// outputs as the staged and streaming kernels. Before sm_90 (the PTX fallback) the slots are filled by the
// whole block with 16-byte cp.async, one commit group per slot, and a block barrier releases each slot.

#define GP_CWARPS 8                       /* consumer warps, two rows each */
#define GP_THREADS (32 * (GP_CWARPS + 1)) /* and the producer warp */
#define GP_ROWS (2 * GP_CWARPS)           /* weight rows per group */
#define GP_MAX_SLOTS 8                    /* ring slots (the mbarriers are static) */
/* values per slice (a 16-row slot is 64 KiB) and slots in the ring: 192 KiB, with x (24 KiB at I = 12288)
 * within an SM's 227 KiB. Measured on the 8B shape (H200, decode ctx 512, ms/token, with a block barrier
 * releasing each slot; docs/FUSED.md): 512 x 5 slots 9.21, 1024 x 3 5.63, 1024 x 5 5.25, 2048 x 3 4.33,
 * 256 x 8 17.0: the cost is per slot consumed, so the larger the slot the better */
#define GP_KS 2048
#define GP_SLOTS 3

/* units of a group: rows, or gate/up pairs */
template <int EPI>
static __host__ __device__ __forceinline__ int gp_units(void) {
    return EPI == GV_SWIGLU ? GP_ROWS / 2 : GP_ROWS;
}
/* dynamic shared memory: the ring (nst slots of GP_ROWS x ks bf16) and x (K bf16) */
static __host__ __device__ __forceinline__ size_t gp_smem(int ks, int nst, int K) {
    return (size_t)nst * GP_ROWS * ks * 2 + (size_t)K * 2;
}
/* Row i of a slot (i < the group's rows) for the group of units u0..u0+nu-1: the weight row it holds, and
 * *si its row in the slot (GV_SWIGLU: gate row u0 + i at i, up row N + u0 + i - nu at upg + i - nu) */
template <int EPI>
static __device__ __forceinline__ int gp_row(int i, int u0, int nu, int N, int *si) {
    const bool up = EPI == GV_SWIGLU && i >= nu;
    *si = up ? gp_units<EPI>() + i - nu : i;
    return up ? N + u0 + i - nu : u0 + i;
}

/* The stage iterator of one block: group g (blockIdx.x, + gridDim.x, ...), slice s of it, slot st of the
 * ring and the parity of that slot's current use; advanced one stage at a time (no divisions in the loop). */
struct gp_stage {
    int g, s, st;
    uint32_t ph;
    __device__ __forceinline__ void next(int nsl, int nst) {
        if (++s == nsl) s = 0, g += (int)gridDim.x;
        if (++st == nst) st = 0, ph ^= 1u;
    }
};

template <int PRO, int EPI>
__global__ void __launch_bounds__(GP_THREADS, 1) gemv_pipe_kernel(const gemv_args a, int ks, int nst) {
    extern __shared__ __align__(128) unsigned char gp_mem[];
    __shared__ float red[32];
    __shared__ __align__(8) uint64_t full[GP_MAX_SLOTS], empty[GP_MAX_SLOTS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int K = a.K, N = a.N, upg = gp_units<EPI>();
    const int ngroups = (N + upg - 1) / upg, nsl = (K + ks - 1) / ks;
    const size_t slot = (size_t)GP_ROWS * ks * 2;
    bf16 *sx = reinterpret_cast<bf16 *>(gp_mem + nst * slot);
    TL_START(tl);

    /* the copies of stage sg into its slot: the lanes of the producer warp (sm_90) or the block */
    auto issue = [&](const gp_stage &sg) {
        const int k0 = sg.s * ks, len = min(ks, K - k0);
        const int u0 = sg.g * upg, nu = min(upg, N - u0), nrows = EPI == GV_SWIGLU ? 2 * nu : nu;
        unsigned char *dst = gp_mem + (size_t)sg.st * slot;
#if QD_HAVE_TMA
        uint64_t *bar = &full[sg.st]; /* lane 0 arms the barrier, then lane i copies row i */
        if (lane == 0) mbar_expect(bar, (unsigned)(nrows * len * 2));
        __syncwarp();
        for (int i = lane; i < nrows; i += 32) {
            int si;
            const int r = gp_row<EPI>(i, u0, nu, N, &si);
            bulk_copy(bar, dst + (size_t)si * ks * 2, a.W + (size_t)r * K + k0, (unsigned)len * 2);
        }
#else
        const int l8 = len / 8;
        for (int c = tid; c < nrows * l8; c += blockDim.x) {
            int si;
            const int r = gp_row<EPI>(c / l8, u0, nu, N, &si), j = c % l8;
            cp_async16(dst + (size_t)si * ks * 2 + (size_t)j * 16, a.W + (size_t)r * K + k0 + j * 8, true);
        }
#endif
    };

    if (tid == 0)
        for (int i = 0; i < nst; i++) {
            mbar_init(&full[i]);
            mbar_init(&empty[i], GP_CWARPS);
        }
    __syncthreads();
    griddep_launch();                         /* the next kernel may start filling its own ring */
    gp_stage p = {(int)blockIdx.x, 0, 0, 0u}; /* the next stage to request */
#if QD_HAVE_TMA
    const bool producer = warp == GP_CWARPS;
    /* The producer hands each slot's group to the consumers in sgroup (-1: no more), written before the
     * slot's barrier is armed. Groups in the static order (blockIdx.x, + gridDim.x, ...), or with a.sched
     * the next one of a counter shared by the blocks: an SM that streams faster takes more groups, and the
     * blocks end within one group of each other. */
    __shared__ int sgroup[GP_MAX_SLOTS];
    int cur = -1;
    bool done = false;
    auto produce = [&]() {
        if (p.s == 0) {
            if (a.sched) {
                unsigned g = 0;
                if (lane == 0) g = atomicAdd(&a.sched[0], 1u);
                cur = (int)__shfl_sync(0xffffffffu, g, 0);
            } else {
                cur = cur < 0 ? (int)blockIdx.x : cur + (int)gridDim.x;
            }
        }
        if (cur >= ngroups) { /* the end marker: the slot's phase completes with no bytes */
            if (lane == 0) {
                sgroup[p.st] = -1;
                mbar_expect(&full[p.st], 0u);
            }
            done = true;
            return;
        }
        if (lane == 0) sgroup[p.st] = cur;
        p.g = cur;
        issue(p);
        p.next(nsl, nst);
    };
    if (producer) /* the first slots: weights only, nothing a kernel of the step writes */
        for (int t = 0; t < nst && !done; t++) produce();
#else
    /* this block's stages: its groups (static order) x their slices */
    const int nstage = ((ngroups - 1 - (int)blockIdx.x) / (int)gridDim.x + 1) * nsl;
    for (int t = 0; t < nst; t++) { /* weights only: nothing a kernel of the step writes */
        if (t < nstage) issue(p);
        cp_async_commit(); /* one group per slot, empty past the end */
        p.next(nsl, nst);
    }
#endif
    griddep_wait(); /* the previous kernel has finished and its writes are visible */
    TL_WAIT(tl);
    gv_prologue<PRO>(a, sx, red, a.nw, nullptr);
    TL_READY(tl);

    /* this warp's rows in a group: i0 and i1 in the slot, the weight rows u0 + i0 and u0 + r1 (GV_SWIGLU:
     * gate and up rows of unit `warp`); the fallback's ninth warp only copies */
    const bool consumer = warp < GP_CWARPS;
    const int i0 = EPI == GV_SWIGLU ? warp : 2 * warp, i1 = EPI == GV_SWIGLU ? upg + warp : 2 * warp + 1;
    const int r1 = EPI == GV_SWIGLU ? N + warp : i1;
    const uint4 *sxq = reinterpret_cast<const uint4 *>(sx);
    float acc0 = 0.0f, acc1 = 0.0f;
    /* one stage of a consumer warp: slice s of group g, in slot st (the warp's arithmetic, then the store
     * when the group's rows are complete) */
    auto consume = [&](int g, int s, int st) {
        const int u0 = g * upg, k0 = s * ks, len = min(ks, K - k0);
        const bool has0 = consumer && u0 + i0 < N; /* warp-uniform */
        const bool has1 = EPI == GV_SWIGLU ? has0 : has0 && u0 + i1 < N;
        if (has0) {
            const unsigned char *base = gp_mem + (size_t)st * slot;
            const uint4 *w0 = reinterpret_cast<const uint4 *>(base + (size_t)i0 * ks * 2);
            const uint4 *w1 = reinterpret_cast<const uint4 *>(base + (size_t)(has1 ? i1 : i0) * ks * 2);
            const int l8 = len / 8, c0 = k0 / 8;
#pragma unroll 2
            for (int q = lane; q < l8; q += 32) gv_fma8(acc0, acc1, w0[q], w1[q], sxq[c0 + q]);
        }
        return has0 ? (has1 ? 2 : 1) : 0;
    };
    auto finish_group = [&](int g, int has) {
        if (has) {
            const int u0 = g * upg;
            const float v0 = warp_sum(acc0), v1 = warp_sum(acc1);
            if (lane == 0) gv_store<EPI>(a, u0 + i0, u0 + r1, has == 2, v0, v1);
        }
        acc0 = acc1 = 0.0f;
    };
#if QD_HAVE_TMA
    if (producer) {
        /* refill: each slot once the consumers have released its previous stage */
        while (!done) {
            mbar_wait(&empty[p.st], p.ph ^ 1u); /* p.ph is the use of the slot being filled, from 1 on */
            produce();
        }
        if (a.sched && lane == 0) { /* the last block done resets the counters for the next launch */
            __threadfence();
            if (atomicAdd(&a.sched[1], 1u) == gridDim.x - 1) {
                a.sched[0] = 0u;
                a.sched[1] = 0u;
            }
        }
    } else {
        gp_stage c = {0, 0, 0, 0u};
        for (;;) {
            mbar_wait(&full[c.st], c.ph);
            const int g = sgroup[c.st];
            if (g < 0) break;
            const int has = consume(g, c.s, c.st);
            __syncwarp(); /* every lane has read the slot: release it to the producer */
            if (lane == 0) mbar_arrive(&empty[c.st]);
            if (c.s == nsl - 1) finish_group(g, has);
            c.next(nsl, nst);
        }
    }
#else
    gp_stage c = {(int)blockIdx.x, 0, 0, 0u};
    for (int t = 0; t < nstage; t++) {
        cp_async_wait_n(nst - 1);
        __syncthreads();
        const int has = consume(c.g, c.s, c.st);
        if (c.s == nsl - 1) finish_group(c.g, has);
        __syncthreads(); /* every warp has read the slot */
        if (t + nst < nstage) issue(p);
        cp_async_commit();
        p.next(nsl, nst);
        c.next(nsl, nst);
    }
#endif
    TL_END(tl, a.tl);
}

#endif
