/* attention.cuh: causal GQA attention of the fused path (docs/PRECISION.md "softmax probabilities P").
 *
 * Three kernels, one contract: scores in fp32 over the stored q_rope and k_rope, scaled by HD^-0.5 in
 * fp32, max subtracted; exp in fp32 (expf, not __expf); P = A(exp(s - m)) with the max m known when P is
 * formed (the running max of a tile, rescaled later in fp32); the softmax sum over the unrounded exps;
 * P.V accumulated in fp32 and divided by the sum at the end; the output rounded once.
 *   flash_attn_kernel     prefill, bf16, tensor cores (mma.sync m16n8k16, FlashAttention-2 layout)
 *   attn_rows_kernel      prefill on CUDA cores (fp16/fp32 modes, head_dim the mma kernel lacks)
 *   decode_attn_kernel    one token over the cache, split-KV (flash-decoding), optional in-kernel combine
 * The KV cache is (max_seq, NKV, HD) per layer; query head h reads kv head h / (NH / NKV).
 *
 * Faults (`fault`: the kind active in this launch's layer, decided on the host; docs/FAULTS.md), the same
 * bug in every kernel so that it behaves the same whichever path runs:
 *   gqa-mod                 query head h reads kv head h mod NKV
 *   no-causal-mask          prefill: every row sees every key of the step (pos0 + T); decode: the one
 *                           query is the last position, there is nothing later to see (no effect, as emu)
 *   softmax-no-max          exp(s) with the max taken as 0 (a tile's, a chunk's or a split's)
 *   no-attn-scale           scores not multiplied by HD^-0.5
 *   online-softmax-rescale  the row sum l restarts at every 64-key tile while the accumulator is rescaled and
 *                           carried, so acc / l divides by the last tile's sum; decode: the combine keeps
 *                           only the last split's l_s (the splits are the tiles)
 * kv-cache-pos lives in the cache write (kernels.cuh, decode_attn_qk_kernel below). */
#ifndef QD_FUSED_ATTENTION_CUH
#define QD_FUSED_ATTENTION_CUH

#include "kernels.cuh"

// ----------------------------------------------------------------------------
// PTX wrappers (sm_80+)

static __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

/* d (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col). */
static __device__ __forceinline__ void mma_bf16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two fp32 values rounded to bf16 (RNE) and packed; lo goes to the lower column index. */
static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
}

// ----------------------------------------------------------------------------
// prefill on tensor cores
//
// Block: 4 warps, 64 query rows of one head (16 per warp); K/V tiles of 64 keys double-buffered in shared
// memory through cp.async. Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4*g + tg;
//   A (16x16): a0 (g, 2tg..2tg+1), a1 (g+8, 2tg..), a2 (g, 2tg+8..), a3 (g+8, 2tg+8..)
//   B (16x8):  b0 (k 2tg..2tg+1, n g), b1 (k 2tg+8.., n g)
//   C (16x8):  c0,c1 (g, 2tg..2tg+1), c2,c3 (g+8, 2tg..)
// so S's accumulators for keys 16kk..16kk+15 are exactly P's A fragment for the P.V product.

#define FA_BR 64 /* query rows per block */
#define FA_BC 64 /* keys per tile */

/* Dynamic shared memory of flash_attn_kernel<HD>: Q tile + two stages of K and V, rows padded by 16 bytes
 * so that ldmatrix's eight 16-byte rows fall in distinct banks. */
static constexpr size_t flash_attn_smem(int HD) { return (size_t)(FA_BR + 4 * FA_BC) * (HD + 8) * sizeof(bf16); }

/* q (T, NH, HD) q_rope of tokens at positions pos0..pos0+T-1; kc, vc (max_seq, NKV, HD) holding positions
 * 0..pos0+T-1; out (T, NH*HD). grid (ceil(T/64), NH), block 128. */
template <int HD>
__global__ void __launch_bounds__(128)
    flash_attn_kernel(const bf16 *__restrict__ q, const bf16 *__restrict__ kc, const bf16 *__restrict__ vc,
                      bf16 *__restrict__ out, int T, int pos0, int NH, int NKV, float scale, int fault) {
    static_assert(HD % 16 == 0 && HD <= 128, "flash_attn_kernel: head_dim a multiple of 16, at most 128");
    constexpr int LD = HD + 8, CH = HD / 8; /* smem row stride (elements); 16-byte chunks per row */
    extern __shared__ __align__(16) unsigned char smem[];
    bf16 *sQ = reinterpret_cast<bf16 *>(smem); /* (FA_BR, LD) */
    bf16 *sK = sQ + FA_BR * LD;                /* (2, FA_BC, LD) */
    bf16 *sV = sK + 2 * FA_BC * LD;            /* (2, FA_BC, LD) */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tg = lane & 3;
    const bool causal = fault != QD_FAULT_NO_CAUSAL, no_max = fault == QD_FAULT_SOFTMAX_NO_MAX;
    const bool reset_l = fault == QD_FAULT_ONLINE_RESCALE;
    if (fault == QD_FAULT_NO_SCALE) scale = 1.0f;
    const int h = blockIdx.y, kvh = fault == QD_FAULT_GQA_MOD ? h % NKV : h / (NH / NKV);
    const int q0 = (gridDim.x - 1 - blockIdx.x) * FA_BR;              /* the longest rows start first */
    const int kv_len = causal ? pos0 + min(q0 + FA_BR, T) : pos0 + T; /* keys any row of this tile can see */
    const int ntiles = (kv_len + FA_BC - 1) / FA_BC;
    const size_t kv_stride = (size_t)NKV * HD;
    const bf16 *kbase = kc + (size_t)kvh * HD, *vbase = vc + (size_t)kvh * HD;

    for (int c = tid; c < FA_BR * CH; c += 128) {
        const int r = c / CH, col = (c % CH) * 8;
        const bool ok = q0 + r < T;
        cp_async16(sQ + r * LD + col, ok ? q + ((size_t)(q0 + r) * NH + h) * HD + col : q, ok);
    }
    auto load_kv = [&](int tile, int stage) {
        const int k0 = tile * FA_BC;
        bf16 *dK = sK + stage * FA_BC * LD, *dV = sV + stage * FA_BC * LD;
        for (int c = tid; c < FA_BC * CH; c += 128) {
            const int r = c / CH, col = (c % CH) * 8;
            const bool ok = k0 + r < kv_len; /* zeros past the end: P = 0 must not meet garbage V */
            const size_t off = (size_t)(k0 + r) * kv_stride + col;
            cp_async16(dK + r * LD + col, ok ? kbase + off : kbase, ok);
            cp_async16(dV + r * LD + col, ok ? vbase + off : vbase, ok);
        }
    };
    load_kv(0, 0);
    cp_async_commit(); /* group 0: Q and the first K/V tile */

    uint32_t qf[HD / 16][4]; /* this warp's 16 query rows as A fragments */
    float o[HD / 8][4];      /* P.V accumulators: rows g, g+8; columns 8*jd + 2tg.. */
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
#pragma unroll
    for (int jd = 0; jd < HD / 8; jd++) o[jd][0] = o[jd][1] = o[jd][2] = o[jd][3] = 0.0f;
    const int qp0 = pos0 + q0 + warp * 16 + g, qp1 = qp0 + 8; /* positions of this thread's two rows */
    const int qp_warp_last = pos0 + q0 + warp * 16 + 15;

    for (int it = 0; it < ntiles; it++) {
        const int st = it & 1;
        if (it + 1 < ntiles) {
            load_kv(it + 1, st ^ 1); /* that stage was last read in iteration it-1, before its barrier */
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++)
                ldmatrix_x4(qf[kk], sQ + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
        }
        const bf16 *tK = sK + st * FA_BC * LD, *tV = sV + st * FA_BC * LD;
        const int kv0 = it * FA_BC;
        if (!causal || kv0 <= qp_warp_last) { /* warp-uniform: some row of this warp sees a key of this tile */
            float s[FA_BC / 8][4];
#pragma unroll
            for (int j = 0; j < FA_BC / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            const int mi = lane >> 3, r8 = lane & 7;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
                for (int j = 0; j < FA_BC / 8; j += 2) {
                    uint32_t b[4]; /* keys 8j..8j+15 x dims 16kk..16kk+15 */
                    ldmatrix_x4(b, tK + (j * 8 + (mi >> 1) * 8 + r8) * LD + kk * 16 + (mi & 1) * 8);
                    mma_bf16(s[j], qf[kk], b[0], b[1]);
                    mma_bf16(s[j + 1], qf[kk], b[2], b[3]);
                }
            }
            /* scale, causal mask, row max over the tile (the 4 lanes of a group share a row) */
            float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
            for (int j = 0; j < FA_BC / 8; j++) {
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    const int key = kv0 + j * 8 + tg * 2 + c;
                    float v0 = __fmul_rn(s[j][c], scale), v1 = __fmul_rn(s[j][2 + c], scale);
                    if ((causal && key > qp0) || key >= kv_len) v0 = -INFINITY;
                    if ((causal && key > qp1) || key >= kv_len) v1 = -INFINITY;
                    s[j][c] = v0;
                    s[j][2 + c] = v1;
                    mx0 = fmaxf(mx0, v0);
                    mx1 = fmaxf(mx1, v1);
                }
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            float mn0 = fmaxf(mrow[0], mx0), mn1 = fmaxf(mrow[1], mx1);
            if (no_max) mn0 = mn1 = 0.0f; /* the fault: exp(s - 0) overflows fp32 once s > 88.7 */
            /* a row that has seen no key yet keeps m = -inf; subtracting 0 then avoids inf - inf */
            const float b0 = mn0 == -INFINITY ? 0.0f : mn0, b1 = mn1 == -INFINITY ? 0.0f : mn1;
            const float al0 = expf(__fsub_rn(mrow[0], b0)), al1 = expf(__fsub_rn(mrow[1], b1));
            mrow[0] = mn0;
            mrow[1] = mn1;
            float ls0 = 0.0f, ls1 = 0.0f;
            uint32_t pf[FA_BC / 16][4]; /* P = A(exp(s - m)) as A fragments */
#pragma unroll
            for (int j = 0; j < FA_BC / 8; j++) {
                const float e00 = expf(__fsub_rn(s[j][0], b0)), e01 = expf(__fsub_rn(s[j][1], b0));
                const float e10 = expf(__fsub_rn(s[j][2], b1)), e11 = expf(__fsub_rn(s[j][3], b1));
                ls0 = __fadd_rn(__fadd_rn(ls0, e00), e01); /* the sum takes the unrounded exps */
                ls1 = __fadd_rn(__fadd_rn(ls1, e10), e11);
                pf[j >> 1][(j & 1) * 2 + 0] = pack_bf16(e00, e01);
                pf[j >> 1][(j & 1) * 2 + 1] = pack_bf16(e10, e11);
            }
            /* the seed's bug: l restarts in every tile the row sees (a tile it cannot see adds 0 either way) */
            lrow[0] = reset_l && kv0 <= qp0 ? ls0 : __fadd_rn(__fmul_rn(lrow[0], al0), ls0);
            lrow[1] = reset_l && kv0 <= qp1 ? ls1 : __fadd_rn(__fmul_rn(lrow[1], al1), ls1);
#pragma unroll
            for (int jd = 0; jd < HD / 8; jd++) {
                o[jd][0] = __fmul_rn(o[jd][0], al0);
                o[jd][1] = __fmul_rn(o[jd][1], al0);
                o[jd][2] = __fmul_rn(o[jd][2], al1);
                o[jd][3] = __fmul_rn(o[jd][3], al1);
            }
#pragma unroll
            for (int kk = 0; kk < FA_BC / 16; kk++) {
#pragma unroll
                for (int jd = 0; jd < HD / 8; jd += 2) {
                    uint32_t b[4]; /* keys 16kk..16kk+15 x dims 8jd..8jd+15, transposed on load */
                    ldmatrix_x4_trans(b, tV + (kk * 16 + (mi & 1) * 8 + r8) * LD + jd * 8 + (mi >> 1) * 8);
                    mma_bf16(o[jd], pf[kk], b[0], b[1]);
                    mma_bf16(o[jd + 1], pf[kk], b[2], b[3]);
                }
            }
        }
        __syncthreads(); /* this stage is refilled two iterations on */
    }

    /* each lane summed its own columns: add the group's four partial sums */
    float l0 = lrow[0], l1 = lrow[1];
    l0 = __fadd_rn(l0, __shfl_xor_sync(0xffffffffu, l0, 1));
    l0 = __fadd_rn(l0, __shfl_xor_sync(0xffffffffu, l0, 2));
    l1 = __fadd_rn(l1, __shfl_xor_sync(0xffffffffu, l1, 1));
    l1 = __fadd_rn(l1, __shfl_xor_sync(0xffffffffu, l1, 2));
    const int t0 = q0 + warp * 16 + g, t1 = t0 + 8;
#pragma unroll
    for (int jd = 0; jd < HD / 8; jd++) {
        const int d = jd * 8 + tg * 2;
        if (t0 < T)
            *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)t0 * NH * HD + (size_t)h * HD + d) =
                __floats2bfloat162_rn(__fdiv_rn(o[jd][0], l0), __fdiv_rn(o[jd][1], l0));
        if (t1 < T)
            *reinterpret_cast<__nv_bfloat162 *>(out + (size_t)t1 * NH * HD + (size_t)h * HD + d) =
                __floats2bfloat162_rn(__fdiv_rn(o[jd][2], l1), __fdiv_rn(o[jd][3], l1));
    }
}

// ----------------------------------------------------------------------------
// prefill on CUDA cores: one block of 128 threads per (token, head), keys in chunks of 128 with the
// online softmax. Within a chunk it computes exactly what emu's attention does (dot products in d order,
// P.V in key order); chunks rescale like the tensor-core kernel. Any mode, any head_dim <= 256.

#define AR_CHUNK 128

/* q (T, NH, HD); kc, vc (max_seq, NKV, HD); out (T, NH*HD). grid (T, NH), block 128.
 * A chunk is two of the tensor-core kernel's 64-key tiles: fault online-softmax-rescale restarts l at the
 * chunk's last tile that the row sees, so l ends as the last 64-key tile's sum there too. */
template <int M>
__global__ void __launch_bounds__(AR_CHUNK)
    attn_rows_kernel(const typename act<M>::T *__restrict__ q, const typename act<M>::T *__restrict__ kc,
                     const typename act<M>::T *__restrict__ vc, typename act<M>::T *__restrict__ out, int pos0, int NH,
                     int NKV, int HD, float scale, int fault) {
    static_assert(AR_CHUNK == 2 * FA_BC, "attn_rows_kernel: a chunk is two key tiles");
    __shared__ float sq[256], sp[AR_CHUNK], red[32];
    const int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    if (fault == QD_FAULT_NO_SCALE) scale = 1.0f;
    const int kvh = fault == QD_FAULT_GQA_MOD ? h % NKV : h / (NH / NKV);
    const int n_keys = fault == QD_FAULT_NO_CAUSAL ? pos0 + (int)gridDim.x : pos0 + t + 1; /* gridDim.x = T */
    const size_t kv_stride = (size_t)NKV * HD;
    for (int d = tid; d < HD; d += AR_CHUNK) sq[d] = act<M>::ld(q[((size_t)t * NH + h) * HD + d]);
    __syncthreads();
    float m = -INFINITY, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f; /* acc for d = tid and tid + 128 */
    for (int k0 = 0; k0 < n_keys; k0 += AR_CHUNK) {
        const int j = k0 + tid, nk = min(AR_CHUNK, n_keys - k0);
        float s = -INFINITY;
        if (j < n_keys) {
            const typename act<M>::T *kr = kc + (size_t)j * kv_stride + (size_t)kvh * HD;
            float dot = 0.0f;
            for (int d = 0; d < HD; d++) dot = __fadd_rn(dot, __fmul_rn(sq[d], act<M>::ld(kr[d])));
            s = __fmul_rn(dot, scale);
        }
        float mn = fmaxf(m, block_max(s, red));          /* finite: key 0 is in the first chunk */
        if (fault == QD_FAULT_SOFTMAX_NO_MAX) mn = 0.0f; /* the fault: exp(s - 0) */
        const float alpha = expf(__fsub_rn(m, mn));
        const float ex = j < n_keys ? expf(__fsub_rn(s, mn)) : 0.0f;
        if (fault == QD_FAULT_ONLINE_RESCALE) { /* the seed: the sum of this chunk's last tile the row sees */
            const int tile0 = k0 + FA_BC < n_keys ? k0 + FA_BC : k0;
            l = block_sum(j >= tile0 ? ex : 0.0f, red);
        } else {
            l = __fadd_rn(__fmul_rn(l, alpha), block_sum(ex, red));
        }
        sp[tid] = rnd<M>(ex);
        m = mn;
        __syncthreads();
        acc0 = __fmul_rn(acc0, alpha);
        acc1 = __fmul_rn(acc1, alpha);
        const typename act<M>::T *vr = vc + (size_t)k0 * kv_stride + (size_t)kvh * HD;
        for (int jj = 0; jj < nk; jj++, vr += kv_stride) {
            if (tid < HD) acc0 = __fadd_rn(acc0, __fmul_rn(sp[jj], act<M>::ld(vr[tid])));
            if (tid + AR_CHUNK < HD) acc1 = __fadd_rn(acc1, __fmul_rn(sp[jj], act<M>::ld(vr[tid + AR_CHUNK])));
        }
        __syncthreads(); /* sp is rewritten by the next chunk */
    }
    typename act<M>::T *o = out + ((size_t)t * NH + h) * HD;
    if (tid < HD) o[tid] = act<M>::st(__fdiv_rn(acc0, l));
    if (tid + AR_CHUNK < HD) o[tid + AR_CHUNK] = act<M>::st(__fdiv_rn(acc1, l));
}

// ----------------------------------------------------------------------------
// decode: split-KV (flash-decoding)
//
// Block (split s, kv head g) handles keys [64s, 64s+64) of the n = pos+1 cached positions for the NH/NKV
// query heads that share kv head g: scores, the split's max m_s, P = A(exp(s - m_s)), l_s = sum of the
// unrounded exps, acc_s = P.V, all fp32, written to part. The combine rescales by exp(m_s - M) in fp32,
// adds the splits in index order and divides by the total sum. The grid is sized for max_seq (so a
// captured CUDA graph is valid at every position); splits past the current length exit at once.
// With FUSE the last block of kv head g to finish (an atomic counter) does the combine itself; the
// counter is reset by that block, ready for the next launch. Either way the arithmetic is the same
// function (combine_head), so the fused and unfused variants agree bitwise.

#define DEC_CH 64    /* keys per split */
#define DEC_MAXMUL 8 /* query heads per kv head */

/* One head's combine. part_h (nsplit, HD + 2): acc (HD), m, l per split; ns splits in use. Called by every
 * thread of a block of 128 (HD <= 256: two dimensions per thread at most). The split weights
 * w_s = exp(m_s - max) are computed once per split into shared memory (sw, 2 * DEC_CW floats: w_s, then l_s)
 * instead of once per (split, dimension); the sums still run over the splits in index order, so the values
 * are exactly those of the plain loop: sum_s l_s w_s and sum_s acc_s w_s, then divided. The acc loads of
 * a batch of splits are issued together (one round trip to L2 per batch, not per split). */
#define DEC_CW 256 /* splits per round of weights in shared memory */
template <bool CG>
static __device__ __forceinline__ float ld_part(const float *p) {
    return CG ? __ldcg(p) : *p;
}

/* reset_l (fault online-softmax-rescale): l keeps only the last split's l_s * w_s. */
template <int M, bool CG, int NB = 4>
static __device__ __forceinline__ void combine_head(const float *part_h, int ns, int HD, typename act<M>::T *out_h,
                                                    float *sw, float *red, bool reset_l) {
    const int tid = threadIdx.x, d0 = tid, d1 = tid + 128;
    const size_t st = (size_t)HD + 2;
    float mx = -INFINITY;
    for (int s = tid; s < ns; s += blockDim.x) mx = fmaxf(mx, ld_part<CG>(part_h + s * st + HD));
    mx = block_max(mx, red); /* max is exact in any order */
    float l = 0.0f, a0 = 0.0f, a1 = 0.0f;
    for (int s0 = 0; s0 < ns; s0 += DEC_CW) {
        const int n = min(DEC_CW, ns - s0);
        __syncthreads(); /* sw of the previous round has been read */
        for (int i = tid; i < n; i += blockDim.x) {
            const float *pi = part_h + (s0 + i) * st;
            sw[i] = expf(__fsub_rn(ld_part<CG>(pi + HD), mx));
            sw[DEC_CW + i] = ld_part<CG>(pi + HD + 1);
        }
        __syncthreads();
        const float *p = part_h + (size_t)s0 * st;
        if (HD <= 128) { /* one dimension per thread: batches of NB splits, loaded before the in-order sums */
            for (int i0 = 0; i0 < n; i0 += NB, p += NB * st) {
                float v0[NB];
#pragma unroll
                for (int k = 0; k < NB; k++) v0[k] = i0 + k < n && d0 < HD ? ld_part<CG>(p + k * st + d0) : 0.0f;
#pragma unroll
                for (int k = 0; k < NB; k++) {
                    if (i0 + k < n) {
                        const float w = sw[i0 + k], ls = sw[DEC_CW + i0 + k];
                        l = reset_l ? __fmul_rn(ls, w) : __fadd_rn(l, __fmul_rn(ls, w));
                        a0 = __fadd_rn(a0, __fmul_rn(v0[k], w));
                    }
                }
            }
        } else {
#pragma unroll 4
            for (int i = 0; i < n; i++, p += st) {
                const float w = sw[i], ls = sw[DEC_CW + i];
                l = reset_l ? __fmul_rn(ls, w) : __fadd_rn(l, __fmul_rn(ls, w));
                if (d0 < HD) a0 = __fadd_rn(a0, __fmul_rn(ld_part<CG>(p + d0), w));
                if (d1 < HD) a1 = __fadd_rn(a1, __fmul_rn(ld_part<CG>(p + d1), w));
            }
        }
    }
    if (d0 < HD) out_h[d0] = act<M>::st(__fdiv_rn(a0, l));
    if (d1 < HD) out_h[d1] = act<M>::st(__fdiv_rn(a1, l));
}

/* The query head of slot hh of kv head g's block: g * kv_mul + hh, or with fault gqa-mod the heads that
 * read kv head g under h mod NKV: g, g + NKV, g + 2 NKV, ... */
static __device__ __forceinline__ int dec_head(int g, int hh, int kv_mul, int NKV, bool gqa_mod) {
    return gqa_mod ? g + hh * NKV : g * kv_mul + hh;
}

/* q (NH, HD) this token's q_rope; kc, vc (max_seq, NKV, HD); part (NH, nsplit, HD + 2);
 * counters (NKV) zero at launch (FUSE); out (NH*HD) (FUSE). Position: d_pos ? *d_pos : pos_host.
 * grid (nsplit, NKV), block 128. HD a multiple of 16, at most 256; NH/NKV at most 8. */
template <int M, bool FUSE>
__global__ void __launch_bounds__(128)
    decode_attn_kernel(const typename act<M>::T *__restrict__ q, const typename act<M>::T *__restrict__ kc,
                       const typename act<M>::T *__restrict__ vc, float *__restrict__ part,
                       unsigned *__restrict__ counters, typename act<M>::T *__restrict__ out,
                       const int *__restrict__ d_pos, int pos_host, int NH, int NKV, int HD, int nsplit, float scale,
                       int fault) {
    __shared__ float sq[DEC_MAXMUL * 256];   /* (kv_mul, HD) q as float */
    __shared__ float sp[DEC_MAXMUL][DEC_CH]; /* scores, then P */
    __shared__ float sm[DEC_MAXMUL], sl[DEC_MAXMUL], sw[2 * DEC_CW], red[32];
    __shared__ int last;
    const int sidx = blockIdx.x, g = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n_keys = (d_pos ? *d_pos : pos_host) + 1;
    const int ns = (n_keys + DEC_CH - 1) / DEC_CH;
    if (sidx >= ns) return;
    const int k0 = sidx * DEC_CH, nk = min(DEC_CH, n_keys - k0);
    const int kv_mul = NH / NKV, hd2 = HD / 2;
    const size_t kv_stride = (size_t)NKV * HD;
    const bool gqa_mod = fault == QD_FAULT_GQA_MOD, no_max = fault == QD_FAULT_SOFTMAX_NO_MAX;
    if (fault == QD_FAULT_NO_SCALE) scale = 1.0f;
    for (int i = tid; i < kv_mul * HD; i += blockDim.x)
        sq[i] = act<M>::ld(q[(size_t)dec_head(g, i / HD, kv_mul, NKV, gqa_mod) * HD + i % HD]);
    __syncthreads();

    /* scores: two threads per key, each over half of head_dim, then added */
    {
        const int j = tid >> 1, hf = tid & 1;
        float acc[DEC_MAXMUL];
#pragma unroll
        for (int hh = 0; hh < DEC_MAXMUL; hh++) acc[hh] = 0.0f;
        if (j < nk) {
            const typename act<M>::T *kr = kc + (size_t)(k0 + j) * kv_stride + (size_t)g * HD + hf * hd2;
            for (int d8 = 0; d8 < hd2; d8 += 8) {
                float kv[8];
                ld8(kr + d8, kv);
#pragma unroll
                for (int hh = 0; hh < DEC_MAXMUL; hh++) {
                    if (hh < kv_mul) {
                        const float *qh = sq + hh * HD + hf * hd2 + d8;
#pragma unroll
                        for (int k = 0; k < 8; k++) acc[hh] = __fadd_rn(acc[hh], __fmul_rn(qh[k], kv[k]));
                    }
                }
            }
        }
#pragma unroll
        for (int hh = 0; hh < DEC_MAXMUL; hh++) {
            const float s = __fadd_rn(acc[hh], __shfl_xor_sync(0xffffffffu, acc[hh], 1));
            if (hh < kv_mul && hf == 0) sp[hh][j] = j < nk ? __fmul_rn(s, scale) : -INFINITY;
        }
    }
    __syncthreads();

    /* the split's softmax: one warp per query head, two keys per lane */
    for (int hh = warp; hh < kv_mul; hh += 4) {
        const float a = sp[hh][lane], b = sp[hh][lane + 32];
        const float mx = no_max ? 0.0f : warp_max(fmaxf(a, b)); /* finite: every split has a key */
        const float ea = expf(__fsub_rn(a, mx)), eb = expf(__fsub_rn(b, mx));
        const float sum = warp_sum(__fadd_rn(ea, eb));
        sp[hh][lane] = rnd<M>(ea);
        sp[hh][lane + 32] = rnd<M>(eb);
        if (lane == 0) {
            sm[hh] = mx;
            sl[hh] = sum;
        }
    }
    __syncthreads();

    /* P.V: one thread per dimension, keys in order */
    for (int d = tid; d < HD; d += blockDim.x) {
        float o[DEC_MAXMUL];
#pragma unroll
        for (int hh = 0; hh < DEC_MAXMUL; hh++) o[hh] = 0.0f;
        const typename act<M>::T *vr = vc + (size_t)k0 * kv_stride + (size_t)g * HD + d;
        for (int jj = 0; jj < nk; jj++) {
            const float v = act<M>::ld(vr[(size_t)jj * kv_stride]);
#pragma unroll
            for (int hh = 0; hh < DEC_MAXMUL; hh++)
                if (hh < kv_mul) o[hh] = __fadd_rn(o[hh], __fmul_rn(sp[hh][jj], v));
        }
#pragma unroll
        for (int hh = 0; hh < DEC_MAXMUL; hh++)
            if (hh < kv_mul)
                part[((size_t)dec_head(g, hh, kv_mul, NKV, gqa_mod) * nsplit + sidx) * (HD + 2) + d] = o[hh];
    }
    if (tid < kv_mul) {
        float *p = part + ((size_t)dec_head(g, tid, kv_mul, NKV, gqa_mod) * nsplit + sidx) * (HD + 2);
        p[HD] = sm[tid];
        p[HD + 1] = sl[tid];
    }
    if (!FUSE) return;

    /* the last split of kv head g to finish combines (threadFenceReduction pattern) */
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(&counters[g], 1u) == (unsigned)(ns - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int hh = 0; hh < kv_mul; hh++) {
        const int h = dec_head(g, hh, kv_mul, NKV, gqa_mod);
        combine_head<M, true>(part + (size_t)h * nsplit * (HD + 2), ns, HD, out + (size_t)h * HD, sw, red,
                              fault == QD_FAULT_ONLINE_RESCALE);
    }
    if (tid == 0) counters[g] = 0u;
}

/* The decode path's attention (docs/FUSED.md, custom decode): one launch does what qk_norm_rope_kernel,
 * decode_attn_kernel<M, true> and the combine do, with the same contract and the same split of 64 keys.
 * Block (split s, kv head g) has kv_mul groups of 128 threads (blockDim (128, kv_mul)); group hh owns
 * query head slot hh, so the query heads of a kv head run side by side over one shared K/V tile:
 *   - first thing it lets the next kernel launch (the o_proj GEMV stages its weights meanwhile); before
 *     griddepcontrol.wait the block copies the split's cached K and V rows (earlier steps wrote them; no
 *     kernel of this step does before it) into shared memory with cp.async, in one go, and the q/k norm
 *     weights and this position's RoPE row with plain loads
 *   - then group hh's warp 0 normalises and rotates its query head from qkv (head_rmsnorm and head_rope,
 *     the functions of qk_norm_rope_kernel: bitwise its q_rope); split 0 stores it (the tap)
 *   - the block of the last split (the only one that reads position pos; with fault kv-cache-pos the
 *     block of the split holding pos - 1, where it writes) normalises, rotates and stores this token's k,
 *     and stores its v, into the caches and into its shared tile (that row is not copied from the cache)
 *   - scores: two threads per key, each over half of head_dim, then added (as decode_attn_kernel)
 *   - every warp of a group computes its head's split softmax itself (the same values in each warp) and
 *     hands P to its lanes by shuffles: no barrier between softmax and P.V
 *   - P.V: lane (kg, d8) of a warp accumulates dimensions 8*d8..8*d8+7 over the keys kg, kg + KGw, ...
 *     in order, then the warp adds the KGw partial sums with an xor butterfly (an accumulation order, not
 *     a change of contract)
 *   - the last block of kv head g to finish combines, each group one head (combine_head, splits in order)
 * qkv (NH*HD + 2*NKV*HD) this token's projections; q_out (NH, HD); kc, vc (max_seq, NKV, HD);
 * qw, kw (HD); rope_cos, rope_sin (max_seq, HD/2); part (NH, nsplit, HD + 2); counters (NKV) zero at launch;
 * out (NH*HD). grid (nsplit, NKV), block (128, NH/NKV), dynamic shared memory decode_attn_qk_smem(HD,
 * sizeof(act<M>::T)) bytes. */

/* Bytes of the K and V tiles of decode_attn_qk_kernel: DEC_CH rows each, padded by 16 bytes so that the
 * 16-byte loads of neighbouring rows fall in different banks. */
static constexpr size_t decode_attn_qk_smem(int HD, size_t elt) { return 2 * (size_t)DEC_CH * (HD * elt + 16); }

/* MUL: the most query heads per kv head the instantiation serves (2, 4 or 8; the host takes the smallest
 * that covers NH/NKV): it sizes the per-head shared arrays (the 8-head instantiation alone needs 30 KB of
 * static shared memory, the 2-head one 10 KB) and bounds the block to 128 * MUL threads at 64
 * registers, so that 1024 threads of the kernel fit on an SM beside the GEMVs of the chain: at long
 * context its grid of splits x kv heads is several blocks per SM. tl_launch: the launch's id in a
 * timeline build (qd_timeline.h). */
template <int M, int MUL>
__global__ void __launch_bounds__(128 * MUL, 8 / MUL)
    decode_attn_qk_kernel(const typename act<M>::T *__restrict__ qkv, typename act<M>::T *__restrict__ q_out,
                          typename act<M>::T *kc, typename act<M>::T *vc, const float *__restrict__ qw,
                          const float *__restrict__ kw, const float *__restrict__ rope_cos,
                          const float *__restrict__ rope_sin, float *__restrict__ part, unsigned *__restrict__ counters,
                          typename act<M>::T *__restrict__ out, const int *__restrict__ d_pos, int NH, int NKV, int HD,
                          int nsplit, float scale, float eps, int fault, int tl_launch) {
    typedef typename act<M>::T S;
    TL_START(tl);
    extern __shared__ __align__(16) unsigned char dec_smem[];
    __shared__ __align__(16) float sq[MUL][256]; /* (kv_mul, HD) q_rope as float */
    __shared__ float sp[MUL][DEC_CH];            /* scores */
    __shared__ float sw[MUL][2 * DEC_CW], red[MUL][32];
    __shared__ float sqw[256], skw[256], scs[128], ssn[128]; /* q_norm, k_norm weights; this position's RoPE */
    __shared__ int last;
    const int sidx = blockIdx.x, g = blockIdx.y, tid = threadIdx.x, hh = threadIdx.y, lane = tid & 31, wg = tid >> 5;
    const int ltid = hh * 128 + tid, nthr = 128 * (int)blockDim.y;
    griddep_launch();                         /* the next kernel may start staging its weights now */
    const int pos = *d_pos, n_keys = pos + 1; /* written before the graph starts: safe before the wait */
    const int ns = (n_keys + DEC_CH - 1) / DEC_CH;
    if (sidx >= ns) return;
    const int k0 = sidx * DEC_CH, nk = min(DEC_CH, n_keys - k0);
    const int kv_mul = NH / NKV, hd2 = HD / 2; /* kv_mul == blockDim.y */
    const size_t kv_stride = (size_t)NKV * HD;
    const bool gqa_mod = fault == QD_FAULT_GQA_MOD, no_max = fault == QD_FAULT_SOFTMAX_NO_MAX;
    const bool interleaved = fault == QD_FAULT_ROPE_INTERLEAVED;
    if (fault == QD_FAULT_NO_SCALE) scale = 1.0f;
    /* where this token's k and v go: pos, or with fault kv-cache-pos pos - 1; the block of the split that
     * holds that position writes it (the last split when clean), so no other block reads it */
    const int wpos = fault == QD_FAULT_KV_POS && pos > 0 ? pos - 1 : pos;
    const bool is_writer = sidx == wpos / DEC_CH;
    const int EPC = 16 / (int)sizeof(S), LDS = HD + EPC; /* elements per 16 bytes; padded row (elements) */
    S *sK = reinterpret_cast<S *>(dec_smem);             /* (DEC_CH, LDS) */
    S *sV = sK + DEC_CH * LDS;                           /* (DEC_CH, LDS) */
    { /* the cached rows of this split; rows past the end are zeros (P = 0 must not meet garbage V); the
         * row this launch writes is filled below, after the wait */
        const int chr = HD / EPC, per = DEC_CH * chr;
        for (int c = ltid; c < 2 * per; c += nthr) {
            const int kv = c / per, r = (c % per) / chr, col = (c % chr) * EPC;
            if (k0 + r == wpos) continue;
            const bool ok = r < nk;
            const S *src = (kv ? vc : kc) + (size_t)(k0 + r) * kv_stride + (size_t)g * HD + col;
            cp_async16((kv ? sV : sK) + r * LDS + col, ok ? src : kc, ok);
        }
        cp_async_commit();
    }
    /* weights and tables (no kernel writes them): copied now, they leave the critical path after the wait */
    for (int i = ltid; i < HD; i += nthr) {
        sqw[i] = qw[i];
        skw[i] = kw[i];
    }
    for (int i = ltid; i < hd2; i += nthr) {
        scs[i] = rope_cos[(size_t)pos * hd2 + i];
        ssn[i] = rope_sin[(size_t)pos * hd2 + i];
    }
    griddep_wait();
    TL_WAIT(tl);
    __syncthreads(); /* sqw, skw, scs, ssn */

    /* q head of this group (and k, v of this token in the writer split, group 0's warps 1 and 2) */
    if (wg == 0 || (is_writer && hh == 0 && wg <= 2)) { /* warp-uniform */
        float x0[QD_HEAD_MAXJ], x1[QD_HEAD_MAXJ];
        if (wg == 0) {
            const int h = dec_head(g, hh, kv_mul, NKV, gqa_mod);
            head_load<M>(qkv + (size_t)h * HD, hd2, x0, x1);
            head_rmsnorm<M>(x0, x1, sqw, hd2, eps, fault, false);
            head_rope<M>(x0, x1, scs, ssn, hd2, interleaved);
#pragma unroll
            for (int j = 0; j < QD_HEAD_MAXJ; j++) {
                const int i = lane + 32 * j;
                if (i < hd2) {
                    sq[hh][i] = x0[j];
                    sq[hh][i + hd2] = x1[j];
                }
            }
            if (sidx == 0) head_store<M>(q_out + (size_t)h * HD, hd2, x0, x1);
        } else if (wg == 1) {
            head_load<M>(qkv + (size_t)(NH + g) * HD, hd2, x0, x1);
            head_rmsnorm<M>(x0, x1, skw, hd2, eps, fault, fault == QD_FAULT_KNORM_MUL);
            head_rope<M>(x0, x1, scs, ssn, hd2, interleaved);
            head_store<M>(kc + (size_t)wpos * kv_stride + (size_t)g * HD, hd2, x0, x1);
            head_store<M>(sK + (wpos - k0) * LDS, hd2, x0, x1);
        } else {
            head_load<M>(qkv + (size_t)(NH + NKV + g) * HD, hd2, x0, x1);
            head_store<M>(vc + (size_t)wpos * kv_stride + (size_t)g * HD, hd2, x0, x1);
            head_store<M>(sV + (wpos - k0) * LDS, hd2, x0, x1);
        }
    }
    cp_async_wait<0>();
    __syncthreads();
    TL_READY(tl);

    /* scores of head slot hh: two threads per key, each over half of head_dim, then added */
    {
        const int j = tid >> 1, hf = tid & 1;
        float acc = 0.0f;
        if (j < nk) {
            const S *kr = sK + j * LDS + hf * hd2;
            const float *qh = sq[hh] + hf * hd2;
            for (int d8 = 0; d8 < hd2; d8 += 8) {
                float kv[8], qv[8];
                ld8(kr + d8, kv);
                ld8(qh + d8, qv); /* two 16-byte loads, not eight */
#pragma unroll
                for (int k = 0; k < 8; k++) acc = __fadd_rn(acc, __fmul_rn(qv[k], kv[k]));
            }
        }
        const float s = __fadd_rn(acc, __shfl_xor_sync(0xffffffffu, acc, 1));
        if (hf == 0) sp[hh][j] = j < nk ? __fmul_rn(s, scale) : -INFINITY;
    }
    __syncthreads();

    /* the split's softmax, in every warp of the group: two keys per lane */
    const int h = dec_head(g, hh, kv_mul, NKV, gqa_mod);
    float *ph = part + ((size_t)h * nsplit + sidx) * (HD + 2);
    float pa, pb; /* P of keys lane and lane + 32 */
    {
        const float a = sp[hh][lane], b = sp[hh][lane + 32];
        const float mx = no_max ? 0.0f : warp_max(fmaxf(a, b)); /* finite: every split has a key */
        const float ea = expf(__fsub_rn(a, mx)), eb = expf(__fsub_rn(b, mx));
        const float sum = warp_sum(__fadd_rn(ea, eb));
        pa = rnd<M>(ea);
        pb = rnd<M>(eb);
        if (wg == 0 && lane == 0) {
            ph[HD] = mx;
            ph[HD + 1] = sum;
        }
    }

    /* P.V: warp wg covers dpw groups of 8 dimensions (a power of two), its lanes KGw = 32 / dpw key groups;
     * keys past nk have P = 0 and zero rows, adding exact zeros */
    {
        const int DG = HD / 8, q4 = (DG + 3) / 4;
        int dpw = 1;
        while (dpw < q4) dpw <<= 1;
        const int KGw = 32 / dpw, d8 = wg * dpw + (lane & (dpw - 1)), kg = lane / dpw;
        const bool active = d8 < DG;
        float o[8];
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = 0.0f;
        const S *vr = sV + d8 * 8;
#pragma unroll 4
        for (int j0 = 0; j0 < DEC_CH; j0 += KGw) { /* warp-uniform: keys j0..j0+KGw-1 lie in one half */
            const int jj = j0 + kg;
            const float p = __shfl_sync(0xffffffffu, j0 >= 32 ? pb : pa, jj & 31);
            if (active) {
                float v[8];
                ld8(vr + jj * LDS, v);
#pragma unroll
                for (int k = 0; k < 8; k++) o[k] = __fmaf_rn(p, v[k], o[k]);
            }
        }
        for (int off = dpw; off < 32; off <<= 1) {
#pragma unroll
            for (int k = 0; k < 8; k++) o[k] = __fadd_rn(o[k], __shfl_xor_sync(0xffffffffu, o[k], off));
        }
        if (active) { /* every lane of the column holds the sum: lanes kg = 0..3 store two values each */
#pragma unroll
            for (int c = 0; c < 4; c++)
                if (kg == c) reinterpret_cast<float2 *>(ph + d8 * 8)[c] = make_float2(o[2 * c], o[2 * c + 1]);
        }
    }

    /* the last split of kv head g to finish combines (threadFenceReduction pattern) */
    __threadfence();
    __syncthreads();
    if (ltid == 0) last = atomicAdd(&counters[g], 1u) == (unsigned)(ns - 1);
    __syncthreads();
    TL_MARK(tl); /* the split's partial stored and counted: the last block's combine follows */
    if (!last) {
        TL_END(tl, tl_launch);
        return;
    }
    __threadfence();
    combine_head<M, true, 8>(part + (size_t)h * nsplit * (HD + 2), ns, HD, out + (size_t)h * HD, sw[hh], red[hh],
                             fault == QD_FAULT_ONLINE_RESCALE);
    if (ltid == 0) counters[g] = 0u;
    TL_END(tl, tl_launch);
}

/* The unfused combine: grid NH, block 128. part (NH, nsplit, HD + 2); out (NH*HD). */
template <int M>
__global__ void __launch_bounds__(128)
    decode_combine_kernel(const float *__restrict__ part, typename act<M>::T *__restrict__ out,
                          const int *__restrict__ d_pos, int pos_host, int HD, int nsplit, int fault) {
    __shared__ float sw[2 * DEC_CW], red[32];
    const int n_keys = (d_pos ? *d_pos : pos_host) + 1;
    const int ns = (n_keys + DEC_CH - 1) / DEC_CH, h = blockIdx.x;
    combine_head<M, false>(part + (size_t)h * nsplit * (HD + 2), ns, HD, out + (size_t)h * HD, sw, red,
                           fault == QD_FAULT_ONLINE_RESCALE);
}

#endif
