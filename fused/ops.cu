/* ops.cu: single kernels of the fused path launched from the host one op at a time (qd_fused_ops.h).
 *
 * Every launch below is copied from the fused.cu function named next to it: the same instantiation, grid,
 * block, shared memory and arguments (bf16 mode, no fault, no taps_all unless that is the only path the
 * kernel has), so that tests/test_ops.c measures what the model runs. If fused.cu changes how it launches
 * a kernel, the launcher here changes with it. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "qd_bf16.h"
#include "qd_fused_ops.h"
#include "qd_spec.h"
}

/* kernels.cuh defines one kernel that is not a template (round_f16_kernel) and, in a timeline build, two
 * device variables; fused.cu includes it too, so this translation unit's copies get names of their own
 * and a program may link both. */
#define round_f16_kernel qd_ops_round_f16_kernel
#define qd_tl_buf qd_ops_tl_buf
#define qd_tl_count qd_ops_tl_count
#include "attention.cuh"
#include "gemv.cuh"
#include "kernels.cuh"
#undef round_f16_kernel
#undef qd_tl_buf
#undef qd_tl_count

// ----------------------------------------------------------------------------
// errors: every CUDA and cuBLAS call checked, returned as a qd_err naming it (as fused.cu)

#include "cuda_check.cuh"

#define TRY(x)               \
    do {                     \
        int rc_ = (x);       \
        if (rc_) return rc_; \
    } while (0)

#define BLAS_WS (32u << 20) /* fused.cu's cuBLAS workspace */

// ----------------------------------------------------------------------------
// device, buffers, transfers

/* The device fused.cu would use (device 0, sm_80 or newer) and its properties. */
static int open_device(cudaDeviceProp *p, qd_err *e) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        cudaGetLastError();
        return qd_errf(e, QD_ERUNTIME, "fused ops: no CUDA device (%s)",
                       err != cudaSuccess ? cudaGetErrorName(err) : "device count is 0");
    }
    CUDA_CHECK(cudaSetDevice(0));
    CUDA_CHECK(cudaGetDeviceProperties(p, 0));
    if (p->major < 8)
        return qd_errf(e, QD_ERUNTIME, "fused ops: device 0 (%s) is sm_%d%d; the fused path needs sm_80 or newer",
                       p->name, p->major, p->minor);
    return QD_OK;
}

/* The device buffers of one launcher, freed when it returns by whatever path. */
struct dev_arena {
    enum { MAX = 16 };
    void *p[MAX];
    int n = 0;
    ~dev_arena() {
        for (int i = 0; i < n; i++) cudaFree(p[i]);
    }
};

/* *out = a zeroed device buffer of `bytes` (zeros: no kernel ever reads uninitialised memory). */
template <class T>
static int dalloc(dev_arena &a, T **out, size_t bytes, qd_err *e) {
    if (a.n == dev_arena::MAX) return qd_errf(e, QD_ERUNTIME, "fused ops: more than %d device buffers", dev_arena::MAX);
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    a.p[a.n++] = p;
    CUDA_CHECK(cudaMemset(p, 0, bytes ? bytes : 1));
    *out = (T *)p;
    return QD_OK;
}

/* dst (n) bf16 on the device <- src (n) host fp32, rounded to nearest even (exact for bf16 values). */
static int upload_bf16(bf16 *dst, const float *src, size_t n, qd_err *e) {
    uint16_t *stage = (uint16_t *)qd_alloc(n * sizeof(uint16_t), e);
    if (!stage) return QD_ERUNTIME;
    for (size_t i = 0; i < n; i++) stage[i] = qd_f32_to_bf16(src[i]);
    cudaError_t err = cudaMemcpy(dst, stage, n * sizeof(uint16_t), cudaMemcpyHostToDevice);
    free(stage);
    CUDA_CHECK(err);
    return QD_OK;
}

/* dst (n) host fp32 <- src (n) bf16 on the device. */
static int download_bf16(float *dst, const bf16 *src, size_t n, qd_err *e) {
    uint16_t *stage = (uint16_t *)qd_alloc(n * sizeof(uint16_t), e);
    if (!stage) return QD_ERUNTIME;
    cudaError_t err = cudaMemcpy(stage, src, n * sizeof(uint16_t), cudaMemcpyDeviceToHost);
    if (err == cudaSuccess)
        for (size_t i = 0; i < n; i++) dst[i] = qd_bf16_to_f32(stage[i]);
    free(stage);
    CUDA_CHECK(err);
    return QD_OK;
}

static int upload_f32(float *dst, const float *src, size_t n, qd_err *e) {
    CUDA_CHECK(cudaMemcpy(dst, src, n * sizeof(float), cudaMemcpyHostToDevice));
    return QD_OK;
}

/* The RoPE tables of positions 0..npos-1 as fused.cu's upload_rope_table builds them.
 * d_cos, d_sin (npos, HD/2) on the device. */
static int upload_rope(float *d_cos, float *d_sin, int npos, int HD, double theta, qd_err *e) {
    const int hd2 = HD / 2;
    const size_t n = (size_t)npos * hd2;
    float *inv = (float *)qd_alloc((size_t)hd2 * sizeof(float), e);
    float *cs = inv ? (float *)qd_alloc(n * sizeof(float), e) : NULL;
    float *sn = cs ? (float *)qd_alloc(n * sizeof(float), e) : NULL;
    if (!sn) {
        free(inv), free(cs);
        return QD_ERUNTIME;
    }
    rope_inv_freq(inv, HD, theta);
    for (int p = 0; p < npos; p++)
        for (int i = 0; i < hd2; i++) rope_cos_sin(p, inv[i], &cs[(size_t)p * hd2 + i], &sn[(size_t)p * hd2 + i]);
    cudaError_t err = cudaMemcpy(d_cos, cs, n * sizeof(float), cudaMemcpyHostToDevice);
    if (err == cudaSuccess) err = cudaMemcpy(d_sin, sn, n * sizeof(float), cudaMemcpyHostToDevice);
    free(inv), free(cs), free(sn);
    CUDA_CHECK(err);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// one checked run, then the timed ones

struct events {
    cudaEvent_t start = NULL, stop = NULL;
    ~events() {
        if (start) cudaEventDestroy(start);
        if (stop) cudaEventDestroy(stop);
    }
};

static int cmp_float(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* upload(): copies the host inputs in (again: a kernel may update a buffer in place); launch(): the kernel.
 * One checked run; with bench, bench->runs timed launches, each after a fresh upload and an L2 flush
 * (a memset of twice the L2 size), timed with events around the launch alone. The outputs are the last
 * run's, the same values: every launch is deterministic. */
template <class Upload, class Launch>
static int run_op(const cudaDeviceProp *p, qd_op_bench *bench, Upload upload, Launch launch, qd_err *e) {
    TRY(upload());
    TRY(launch());
    CUDA_CHECK(cudaDeviceSynchronize());
    if (!bench || bench->runs <= 0) return QD_OK;
    dev_arena a;
    const size_t flush_bytes = 2 * (size_t)(p->l2CacheSize > (1 << 20) ? p->l2CacheSize : (1 << 20));
    char *flush = NULL;
    TRY(dalloc(a, &flush, flush_bytes, e));
    events ev;
    CUDA_CHECK(cudaEventCreate(&ev.start));
    CUDA_CHECK(cudaEventCreate(&ev.stop));
    float *ms = (float *)qd_alloc((size_t)bench->runs * sizeof(float), e);
    if (!ms) return QD_ERUNTIME;
    int rc = QD_OK;
    for (int r = 0; r < bench->runs && !rc; r++) {
        rc = upload();
        cudaError_t err = cudaSuccess;
        if (!rc) err = cudaMemset(flush, r & 0xff, flush_bytes);
        if (!rc && err == cudaSuccess) err = cudaEventRecord(ev.start, 0);
        if (!rc && err == cudaSuccess) rc = launch();
        if (!rc && err == cudaSuccess) err = cudaEventRecord(ev.stop, 0);
        if (!rc && err == cudaSuccess) err = cudaEventSynchronize(ev.stop);
        if (!rc && err == cudaSuccess) err = cudaEventElapsedTime(&ms[r], ev.start, ev.stop);
        if (!rc && err != cudaSuccess)
            rc = qd_errf(e, QD_ERUNTIME, "%s:%d: timed run %d: %s (%s)", __FILE__, __LINE__, r, cudaGetErrorName(err),
                         cudaGetErrorString(err));
    }
    if (!rc) {
        qsort(ms, (size_t)bench->runs, sizeof(float), cmp_float);
        const int n = bench->runs;
        bench->median_ms = n % 2 ? ms[n / 2] : 0.5 * ((double)ms[n / 2 - 1] + (double)ms[n / 2]);
    }
    free(ms);
    return rc;
}

// ----------------------------------------------------------------------------
// launch shapes, as fused.cu computes them

/* fused.cu's norm_threads: add_rmsnorm_kernel's block for a row of n (and the GV_NORM reduction order). */
static int norm_threads(int n) {
    int t = (n / 8 + 31) / 32 * 32;
    return t < 32 ? 32 : t > 256 ? 256 : t;
}

/* fused.cu's grid_for */
static unsigned grid_for(size_t n, int threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b > 65535u * 16 ? 65535u * 16 : b);
}

static int check_heads(int NH, int NKV, int HD, qd_err *e) {
    if (HD <= 0 || HD % 16 || HD > 256)
        return qd_errf(e, QD_EINPUT, "fused ops: head_dim %d not supported (a multiple of 16, at most 256)", HD);
    if (NKV <= 0 || NH <= 0 || NH % NKV || NH / NKV > DEC_MAXMUL)
        return qd_errf(e, QD_EINPUT, "fused ops: %d heads over %d kv heads: needs a whole ratio of at most %d", NH, NKV,
                       DEC_MAXMUL);
    return QD_OK;
}

static int check_mult8(const char *what, long n, qd_err *e) {
    if (n <= 0 || n % 8) return qd_errf(e, QD_EINPUT, "fused ops: %s %ld must be a positive multiple of 8", what, n);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// residual add and RMSNorm (fused.cu: add_norm, residual)

extern "C" int qd_fused_op_add_rmsnorm(float *out, float *res, const float *x, const float *add, const float *w, int T,
                                       int C, float eps, qd_op_bench *bench, qd_err *e) {
    TRY(check_mult8("hidden size", C, e));
    if (T <= 0) return qd_errf(e, QD_EINPUT, "fused ops: add_rmsnorm over %d rows", T);
    cudaDeviceProp p;
    TRY(open_device(&p, e));
    const size_t n = (size_t)T * C;
    dev_arena a;
    bf16 *d_res = NULL, *d_add = NULL, *d_out = NULL;
    float *d_w = NULL;
    TRY(dalloc(a, &d_res, n * 2, e));
    if (add) TRY(dalloc(a, &d_add, n * 2, e));
    TRY(dalloc(a, &d_out, n * 2, e));
    TRY(dalloc(a, &d_w, (size_t)C * 4, e));
    TRY(upload_f32(d_w, w, C, e));
    auto upload = [&]() -> int {
        TRY(upload_bf16(d_res, x, n, e));
        if (add) TRY(upload_bf16(d_add, add, n, e));
        return QD_OK;
    };
    auto launch = [&]() -> int {
        add_rmsnorm_kernel<MODE_BF16>
            <<<T, (unsigned)norm_threads(C)>>>(d_res, d_add, d_out, d_w, C, eps, QD_FAULT_NONE);
        LAUNCH_CHECK(add_rmsnorm_kernel);
        return QD_OK;
    };
    TRY(run_op(&p, bench, upload, launch, e));
    TRY(download_bf16(out, d_out, n, e));
    if (res) TRY(download_bf16(res, d_res, n, e));
    return QD_OK;
}

extern "C" int qd_fused_op_residual(float *out, const float *a_in, const float *b_in, long n, qd_op_bench *bench,
                                    qd_err *e) {
    TRY(check_mult8("length", n, e));
    cudaDeviceProp p;
    TRY(open_device(&p, e));
    dev_arena a;
    bf16 *d_res = NULL, *d_add = NULL;
    TRY(dalloc(a, &d_res, (size_t)n * 2, e));
    TRY(dalloc(a, &d_add, (size_t)n * 2, e));
    auto upload = [&]() -> int {
        TRY(upload_bf16(d_res, a_in, (size_t)n, e));
        TRY(upload_bf16(d_add, b_in, (size_t)n, e));
        return QD_OK;
    };
    const size_t n8 = (size_t)n / 8;
    auto launch = [&]() -> int {
        residual_kernel<MODE_BF16><<<grid_for(n8, 256), 256>>>(d_res, d_add, n8, 0);
        LAUNCH_CHECK(residual_kernel);
        return QD_OK;
    };
    TRY(run_op(&p, bench, upload, launch, e));
    return download_bf16(out, d_res, (size_t)n, e);
}

// ----------------------------------------------------------------------------
// q_norm / k_norm + RoPE + cache write (fused.cu: run_layer, !taps_all)

extern "C" int qd_fused_op_qk_norm_rope(float *q, float *k, float *v, const float *qkv, const float *qw,
                                        const float *kw, int T, int pos0, int NH, int NKV, int HD, float eps,
                                        double theta, qd_op_bench *bench, qd_err *e) {
    TRY(check_heads(NH, NKV, HD, e));
    if (T <= 0 || pos0 < 0) return qd_errf(e, QD_EINPUT, "fused ops: qk_norm_rope of %d tokens at %d", T, pos0);
    cudaDeviceProp p;
    TRY(open_device(&p, e));
    const int S = pos0 + T; /* cache rows and RoPE table rows: positions 0..pos0+T-1 */
    const size_t QKV = (size_t)(NH + 2 * NKV) * HD, KV = (size_t)NKV * HD;
    dev_arena a;
    bf16 *d_qkv = NULL, *d_q = NULL, *d_kc = NULL, *d_vc = NULL;
    float *d_qw = NULL, *d_kw = NULL, *d_cos = NULL, *d_sin = NULL;
    TRY(dalloc(a, &d_qkv, (size_t)T * QKV * 2, e));
    TRY(dalloc(a, &d_q, (size_t)T * NH * HD * 2, e));
    TRY(dalloc(a, &d_kc, (size_t)S * KV * 2, e));
    TRY(dalloc(a, &d_vc, (size_t)S * KV * 2, e));
    TRY(dalloc(a, &d_qw, (size_t)HD * 4, e));
    TRY(dalloc(a, &d_kw, (size_t)HD * 4, e));
    TRY(dalloc(a, &d_cos, (size_t)S * (HD / 2) * 4, e));
    TRY(dalloc(a, &d_sin, (size_t)S * (HD / 2) * 4, e));
    TRY(upload_f32(d_qw, qw, HD, e));
    TRY(upload_f32(d_kw, kw, HD, e));
    TRY(upload_rope(d_cos, d_sin, S, HD, theta, e));
    auto upload = [&]() -> int { return upload_bf16(d_qkv, qkv, (size_t)T * QKV, e); };
    const unsigned all = (unsigned)T * (NH + 2 * NKV); /* one warp per head, 4 per block */
    auto launch = [&]() -> int {
        qk_norm_rope_kernel<MODE_BF16><<<(all + 3) / 4, 128>>>(d_qkv, d_q, d_kc, d_vc, d_qw, d_kw, d_cos, d_sin, T,
                                                               pos0, NULL, NH, NKV, HD, eps, QD_FAULT_NONE);
        LAUNCH_CHECK(qk_norm_rope_kernel);
        return QD_OK;
    };
    TRY(run_op(&p, bench, upload, launch, e));
    TRY(download_bf16(q, d_q, (size_t)T * NH * HD, e));
    TRY(download_bf16(k, d_kc + (size_t)pos0 * KV, (size_t)T * KV, e));
    if (v) TRY(download_bf16(v, d_vc + (size_t)pos0 * KV, (size_t)T * KV, e));
    return QD_OK;
}

// ----------------------------------------------------------------------------
// attention (fused.cu: set_flash_attr, attention)

extern "C" int qd_fused_op_attention_prefill(float *out, const float *q, const float *kc, const float *vc, int T,
                                             int pos0, int NH, int NKV, int HD, qd_op_bench *bench, qd_err *e) {
    TRY(check_heads(NH, NKV, HD, e));
    if (T <= 0 || pos0 < 0) return qd_errf(e, QD_EINPUT, "fused ops: attention of %d tokens at %d", T, pos0);
    cudaDeviceProp p;
    TRY(open_device(&p, e));
    const int S = pos0 + T;
    const size_t KV = (size_t)NKV * HD, NHHD = (size_t)NH * HD;
    const float scale = (float)(1.0 / sqrt((double)HD)); /* fused.cu's f->scale */
    /* set_flash_attr: tensor cores for head_dim 32/64/128 when the tiles fit the opt-in shared memory */
    const size_t smem = flash_attn_smem(HD);
    const bool flash = (HD == 32 || HD == 64 || HD == 128) && smem <= p.sharedMemPerBlockOptin;
    if (flash) {
        if (HD == 32)
            CUDA_CHECK(
                cudaFuncSetAttribute(flash_attn_kernel<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        else if (HD == 64)
            CUDA_CHECK(
                cudaFuncSetAttribute(flash_attn_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        else
            CUDA_CHECK(
                cudaFuncSetAttribute(flash_attn_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    }
    dev_arena a;
    bf16 *d_q = NULL, *d_kc = NULL, *d_vc = NULL, *d_out = NULL;
    TRY(dalloc(a, &d_q, (size_t)T * NHHD * 2, e));
    TRY(dalloc(a, &d_kc, (size_t)S * KV * 2, e));
    TRY(dalloc(a, &d_vc, (size_t)S * KV * 2, e));
    TRY(dalloc(a, &d_out, (size_t)T * NHHD * 2, e));
    auto upload = [&]() -> int {
        TRY(upload_bf16(d_q, q, (size_t)T * NHHD, e));
        TRY(upload_bf16(d_kc, kc, (size_t)S * KV, e));
        TRY(upload_bf16(d_vc, vc, (size_t)S * KV, e));
        return QD_OK;
    };
    auto launch = [&]() -> int {
        if (flash) {
            dim3 grid((T + FA_BR - 1) / FA_BR, NH);
            if (HD == 32)
                flash_attn_kernel<32>
                    <<<grid, 128, smem>>>(d_q, d_kc, d_vc, d_out, T, pos0, NH, NKV, scale, QD_FAULT_NONE);
            else if (HD == 64)
                flash_attn_kernel<64>
                    <<<grid, 128, smem>>>(d_q, d_kc, d_vc, d_out, T, pos0, NH, NKV, scale, QD_FAULT_NONE);
            else
                flash_attn_kernel<128>
                    <<<grid, 128, smem>>>(d_q, d_kc, d_vc, d_out, T, pos0, NH, NKV, scale, QD_FAULT_NONE);
            LAUNCH_CHECK(flash_attn_kernel);
        } else {
            attn_rows_kernel<MODE_BF16>
                <<<dim3(T, NH), AR_CHUNK>>>(d_q, d_kc, d_vc, d_out, pos0, NH, NKV, HD, scale, QD_FAULT_NONE);
            LAUNCH_CHECK(attn_rows_kernel);
        }
        return QD_OK;
    };
    TRY(run_op(&p, bench, upload, launch, e));
    return download_bf16(out, d_out, (size_t)T * NHHD, e);
}

extern "C" int qd_fused_op_attention_decode(float *out, const float *q, const float *kc, const float *vc, int pos,
                                            int NH, int NKV, int HD, int max_seq, qd_op_bench *bench, qd_err *e) {
    TRY(check_heads(NH, NKV, HD, e));
    if (pos < 0 || pos >= max_seq)
        return qd_errf(e, QD_EINPUT, "fused ops: decode attention at position %d with max_seq %d", pos, max_seq);
    cudaDeviceProp p;
    TRY(open_device(&p, e));
    const size_t KV = (size_t)NKV * HD, NHHD = (size_t)NH * HD;
    const int nsplit = (max_seq + DEC_CH - 1) / DEC_CH; /* fused.cu's f->nsplit: the grid is sized for max_seq */
    const float scale = (float)(1.0 / sqrt((double)HD));
    dev_arena a;
    bf16 *d_q = NULL, *d_kc = NULL, *d_vc = NULL, *d_out = NULL;
    float *d_part = NULL;
    unsigned *d_counters = NULL;
    TRY(dalloc(a, &d_q, NHHD * 2, e));
    TRY(dalloc(a, &d_kc, (size_t)max_seq * KV * 2, e)); /* rows past pos stay zero, as fused's cleared cache */
    TRY(dalloc(a, &d_vc, (size_t)max_seq * KV * 2, e));
    TRY(dalloc(a, &d_out, NHHD * 2, e));
    TRY(dalloc(a, &d_part, (size_t)NH * nsplit * (HD + 2) * 4, e));
    TRY(dalloc(a, &d_counters, (size_t)NKV * sizeof(unsigned), e));
    auto upload = [&]() -> int {
        TRY(upload_bf16(d_q, q, NHHD, e));
        TRY(upload_bf16(d_kc, kc, (size_t)(pos + 1) * KV, e));
        TRY(upload_bf16(d_vc, vc, (size_t)(pos + 1) * KV, e));
        CUDA_CHECK(cudaMemset(d_counters, 0, (size_t)NKV * sizeof(unsigned))); /* zero at launch */
        return QD_OK;
    };
    auto launch = [&]() -> int {
        decode_attn_kernel<MODE_BF16, true><<<dim3(nsplit, NKV), 128>>>(
            d_q, d_kc, d_vc, d_part, d_counters, d_out, NULL, pos, NH, NKV, HD, nsplit, scale, QD_FAULT_NONE);
        LAUNCH_CHECK(decode_attn_kernel);
        return QD_OK;
    };
    TRY(run_op(&p, bench, upload, launch, e));
    return download_bf16(out, d_out, NHHD, e);
}

typedef decltype(&decode_attn_qk_kernel<MODE_BF16, 2>) dec_attn_fn;

/* fused.cu's dec_attn_for */
static dec_attn_fn dec_attn_for(int kv_mul) {
    return kv_mul <= 2   ? decode_attn_qk_kernel<MODE_BF16, 2>
           : kv_mul <= 4 ? decode_attn_qk_kernel<MODE_BF16, 4>
                         : decode_attn_qk_kernel<MODE_BF16, 8>;
}

extern "C" int qd_fused_op_qk_attention_decode(float *out, float *q, float *k, const float *qkv, const float *qw,
                                               const float *kw, const float *kc, const float *vc, int pos, int NH,
                                               int NKV, int HD, float eps, double theta, int max_seq,
                                               qd_op_bench *bench, qd_err *e) {
    TRY(check_heads(NH, NKV, HD, e));
    if (pos < 0 || pos >= max_seq)
        return qd_errf(e, QD_EINPUT, "fused ops: decode attention at position %d with max_seq %d", pos, max_seq);
    cudaDeviceProp p;
    TRY(open_device(&p, e));
    const size_t KV = (size_t)NKV * HD, NHHD = (size_t)NH * HD, QKV = NHHD + 2 * KV;
    const int nsplit = (max_seq + DEC_CH - 1) / DEC_CH;
    const float scale = (float)(1.0 / sqrt((double)HD));
    /* set_decode_attr: the instantiation for this kv_mul, its static shared memory plus the K/V tiles */
    const dec_attn_fn fn = dec_attn_for(NH / NKV);
    const size_t asmem = decode_attn_qk_smem(HD, sizeof(bf16));
    cudaFuncAttributes fa;
    CUDA_CHECK(cudaFuncGetAttributes(&fa, fn));
    if (fa.sharedSizeBytes + asmem > p.sharedMemPerBlockOptin)
        return qd_errf(e, QD_ERUNTIME,
                       "fused ops: decode_attn_qk_kernel needs %zu bytes of shared memory, device 0 (%s) has %zu",
                       fa.sharedSizeBytes + asmem, p.name, (size_t)p.sharedMemPerBlockOptin);
    CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)asmem));
    CUDA_CHECK(
        cudaFuncSetAttribute(fn, cudaFuncAttributePreferredSharedMemoryCarveout, (int)cudaSharedmemCarveoutMaxShared));
    dev_arena a;
    bf16 *d_qkv = NULL, *d_q = NULL, *d_kc = NULL, *d_vc = NULL, *d_out = NULL;
    float *d_qw = NULL, *d_kw = NULL, *d_cos = NULL, *d_sin = NULL, *d_part = NULL;
    unsigned *d_counters = NULL;
    int *d_pos = NULL;
    TRY(dalloc(a, &d_qkv, QKV * 2, e));
    TRY(dalloc(a, &d_q, NHHD * 2, e));
    TRY(dalloc(a, &d_kc, (size_t)max_seq * KV * 2, e));
    TRY(dalloc(a, &d_vc, (size_t)max_seq * KV * 2, e));
    TRY(dalloc(a, &d_out, NHHD * 2, e));
    TRY(dalloc(a, &d_qw, (size_t)HD * 4, e));
    TRY(dalloc(a, &d_kw, (size_t)HD * 4, e));
    TRY(dalloc(a, &d_cos, (size_t)(pos + 1) * (HD / 2) * 4, e)); /* the kernel reads row pos */
    TRY(dalloc(a, &d_sin, (size_t)(pos + 1) * (HD / 2) * 4, e));
    TRY(dalloc(a, &d_part, (size_t)NH * nsplit * (HD + 2) * 4, e));
    TRY(dalloc(a, &d_counters, (size_t)NKV * sizeof(unsigned), e));
    TRY(dalloc(a, &d_pos, sizeof(int), e));
    TRY(upload_f32(d_qw, qw, HD, e));
    TRY(upload_f32(d_kw, kw, HD, e));
    TRY(upload_rope(d_cos, d_sin, pos + 1, HD, theta, e));
    CUDA_CHECK(cudaMemcpy(d_pos, &pos, sizeof(int), cudaMemcpyHostToDevice)); /* fused's f->step + 1 */
    auto upload = [&]() -> int {
        TRY(upload_bf16(d_qkv, qkv, QKV, e));
        if (pos > 0) {
            TRY(upload_bf16(d_kc, kc, (size_t)pos * KV, e));
            TRY(upload_bf16(d_vc, vc, (size_t)pos * KV, e));
        }
        CUDA_CHECK(cudaMemset(d_counters, 0, (size_t)NKV * sizeof(unsigned))); /* zero at launch */
        return QD_OK;
    };
    auto launch = [&]() -> int {
        fn<<<dim3(nsplit, NKV), dim3(128, NH / NKV), asmem>>>(d_qkv, d_q, d_kc, d_vc, d_qw, d_kw, d_cos, d_sin, d_part,
                                                              d_counters, d_out, d_pos, NH, NKV, HD, nsplit, scale, eps,
                                                              QD_FAULT_NONE, 0);
        LAUNCH_CHECK(decode_attn_qk_kernel);
        return QD_OK;
    };
    TRY(run_op(&p, bench, upload, launch, e));
    TRY(download_bf16(out, d_out, NHHD, e));
    if (q) TRY(download_bf16(q, d_q, NHHD, e));
    if (k) TRY(download_bf16(k, d_kc + (size_t)pos * KV, KV, e));
    return QD_OK;
}

// ----------------------------------------------------------------------------
// projections: cuBLAS for prefill (fused.cu: create_device, gemm), gemv.cuh for one token (gemv)

struct blas_handle {
    cublasHandle_t h = NULL;
    ~blas_handle() {
        if (h) cublasDestroy(h);
    }
};

extern "C" int qd_fused_op_gemm(float *out, const float *x, const float *W, int T, int K, int N, qd_op_bench *bench,
                                qd_err *e) {
    if (T <= 0 || K <= 0 || N <= 0) return qd_errf(e, QD_EINPUT, "fused ops: gemm of (%d, %d) by (%d, %d)", T, K, N, K);
    cudaDeviceProp p;
    TRY(open_device(&p, e));
    dev_arena a;
    bf16 *d_x = NULL, *d_W = NULL, *d_out = NULL;
    void *d_ws = NULL;
    TRY(dalloc(a, &d_x, (size_t)T * K * 2, e));
    TRY(dalloc(a, &d_W, (size_t)N * K * 2, e));
    TRY(dalloc(a, &d_out, (size_t)T * N * 2, e));
    TRY(dalloc(a, &d_ws, BLAS_WS, e));
    blas_handle b;
    CUBLAS_CHECK(cublasCreate(&b.h));
    CUBLAS_CHECK(cublasSetStream(b.h, 0));
    CUBLAS_CHECK(cublasSetWorkspace(b.h, d_ws, BLAS_WS)); /* after SetStream, which resets it */
    CUBLAS_CHECK(
        cublasSetMathMode(b.h, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    TRY(upload_bf16(d_W, W, (size_t)N * K, e));
    auto upload = [&]() -> int { return upload_bf16(d_x, x, (size_t)T * K, e); };
    auto launch = [&]() -> int {
        /* out (T, N) = x (T, K) . W (N, K)^T; column-major: out^T (N, T) = W (K, N)^T . x^T (K, T) */
        const float one = 1.0f, zero = 0.0f;
        CUBLAS_CHECK(cublasGemmEx(b.h, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, d_W, CUDA_R_16BF, K, d_x, CUDA_R_16BF,
                                  K, &zero, d_out, CUDA_R_16BF, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return QD_OK;
    };
    TRY(run_op(&p, bench, upload, launch, e));
    return download_bf16(out, d_out, (size_t)T * N, e);
}

/* fused.cu's gemv<PRO, EPI> for a device that runs the custom decode (set_decode_attr), with kmax = K:
 * gemv_staged_kernel when its tile and input fit the opt-in shared memory and a weight unit fits a tile,
 * else the streaming gemv_kernel; shared-memory attributes raised as set_decode_attr raises them. */
template <int PRO, int EPI>
static int gemv_launch(const cudaDeviceProp *p, const gemv_args &ga, qd_err *e) {
    const size_t K = (size_t)ga.K, N = (size_t)ga.N;
    const size_t smem = K * sizeof(bf16); /* the streaming GEMV: its input vector */
    if (smem + 1024 > p->sharedMemPerBlockOptin)
        return qd_errf(e, QD_ERUNTIME,
                       "fused ops: a GEMV over K = %zu needs more shared memory than device 0 has "
                       "(fused.cu decodes through cuBLAS then)",
                       K);
    const size_t gsmem = GS_TILE_MAX + K * (sizeof(float) + sizeof(bf16));
    const bool staged = gsmem + 1024 <= p->sharedMemPerBlockOptin;
    const size_t row = K * 2 * (EPI == GV_SWIGLU ? 2 : 1); /* weight bytes per unit */
    if (EPI != GV_F32 && staged && row <= GS_TILE_MAX) {
        CUDA_CHECK(cudaFuncSetAttribute(gemv_staged_kernel<PRO, EPI>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)gsmem));
        CUDA_CHECK(cudaFuncSetAttribute(gemv_staged_kernel<PRO, EPI>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        (int)cudaSharedmemCarveoutMaxShared));
        size_t upb = (N + p->multiProcessorCount - 1) / p->multiProcessorCount;
        if (upb * row > GS_TILE_MAX) upb = GS_TILE_MAX / row;
        const size_t blocks = (N + upb - 1) / upb;
        const size_t iters = EPI == GV_SWIGLU ? upb : (upb + 1) / 2;
        const unsigned threads = (unsigned)(32 * (iters < GS_THREADS / 32 ? iters : GS_THREADS / 32));
        gemv_staged_kernel<PRO, EPI><<<(unsigned)blocks, threads, gs_smem<EPI>((int)upb, ga.K)>>>(ga, (int)upb);
        LAUNCH_CHECK(gemv_staged_kernel);
        return QD_OK;
    }
    if (smem + 1024 > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(gemv_kernel<PRO, EPI>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const size_t units = EPI == GV_SWIGLU ? N : (N + 1) / 2;
    size_t blocks = (units + GV_THREADS / 32 - 1) / (GV_THREADS / 32), cap = (size_t)p->multiProcessorCount * 8;
    if (blocks > cap) blocks = cap;
    gemv_kernel<PRO, EPI><<<(unsigned)blocks, GV_THREADS, smem>>>(ga);
    LAUNCH_CHECK(gemv_kernel);
    return QD_OK;
}

extern "C" int qd_fused_op_gemv(float *out, const float *W, const float *x, int N, int K, qd_op_bench *bench,
                                qd_err *e) {
    TRY(check_mult8("GEMV input length", K, e));
    if (N <= 0) return qd_errf(e, QD_EINPUT, "fused ops: GEMV of %d rows", N);
    cudaDeviceProp p;
    TRY(open_device(&p, e));
    dev_arena a;
    bf16 *d_W = NULL, *d_x = NULL, *d_out = NULL;
    TRY(dalloc(a, &d_W, (size_t)N * K * 2, e));
    TRY(dalloc(a, &d_x, (size_t)K * 2, e));
    TRY(dalloc(a, &d_out, (size_t)N * 2, e));
    TRY(upload_bf16(d_W, W, (size_t)N * K, e));
    gemv_args ga; /* fused.cu's gemv_plain */
    memset(&ga, 0, sizeof ga);
    ga.W = d_W, ga.x = d_x, ga.out = d_out, ga.N = N, ga.K = K;
    auto upload = [&]() -> int { return upload_bf16(d_x, x, (size_t)K, e); };
    auto launch = [&]() -> int { return gemv_launch<GV_PLAIN, GV_BF16>(&p, ga, e); };
    TRY(run_op(&p, bench, upload, launch, e));
    return download_bf16(out, d_out, (size_t)N, e);
}

/* The GV_NORM launches: fused.cu's gemv_norm. rows: N (GV_BF16) or 2N (GV_SWIGLU) weight rows. */
template <int EPI>
static int gemv_norm_op(float *out, float *act, float *res, float *xn, const float *W, const float *x, const float *add,
                        const float *nw, int N, int K, float eps, qd_op_bench *bench, qd_err *e) {
    TRY(check_mult8("GEMV input length", K, e));
    if (N <= 0) return qd_errf(e, QD_EINPUT, "fused ops: GEMV of %d rows", N);
    cudaDeviceProp p;
    TRY(open_device(&p, e));
    const size_t rows = EPI == GV_SWIGLU ? 2 * (size_t)N : (size_t)N;
    dev_arena a;
    bf16 *d_W = NULL, *d_x = NULL, *d_add = NULL, *d_res = NULL, *d_xn = NULL, *d_out = NULL, *d_act = NULL;
    float *d_nw = NULL;
    TRY(dalloc(a, &d_W, rows * K * 2, e));
    TRY(dalloc(a, &d_x, (size_t)K * 2, e));
    if (add) TRY(dalloc(a, &d_add, (size_t)K * 2, e));
    TRY(dalloc(a, &d_res, (size_t)K * 2, e)); /* must not be x: other blocks still read it */
    TRY(dalloc(a, &d_xn, (size_t)K * 2, e));
    TRY(dalloc(a, &d_out, rows * 2, e));
    if (EPI == GV_SWIGLU) TRY(dalloc(a, &d_act, (size_t)N * 2, e));
    TRY(dalloc(a, &d_nw, (size_t)K * 4, e));
    TRY(upload_bf16(d_W, W, rows * K, e));
    TRY(upload_f32(d_nw, nw, (size_t)K, e));
    gemv_args ga;
    memset(&ga, 0, sizeof ga);
    ga.W = d_W, ga.x = d_x, ga.out = d_out, ga.N = N, ga.K = K, ga.fault = QD_FAULT_NONE;
    ga.add = d_add, ga.nw = d_nw, ga.res_out = d_res, ga.xn_out = d_xn, ga.act = d_act;
    ga.norm_threads = norm_threads(K), ga.eps = eps;
    auto upload = [&]() -> int {
        TRY(upload_bf16(d_x, x, (size_t)K, e));
        if (add) TRY(upload_bf16(d_add, add, (size_t)K, e));
        return QD_OK;
    };
    auto launch = [&]() -> int { return gemv_launch<GV_NORM, EPI>(&p, ga, e); };
    TRY(run_op(&p, bench, upload, launch, e));
    if (EPI == GV_SWIGLU) {
        TRY(download_bf16(act, d_act, (size_t)N, e));
        if (out) TRY(download_bf16(out, d_out, rows, e)); /* gate | up */
    } else {
        TRY(download_bf16(out, d_out, rows, e));
    }
    if (res) TRY(download_bf16(res, d_res, (size_t)K, e));
    if (xn) TRY(download_bf16(xn, d_xn, (size_t)K, e));
    return QD_OK;
}

extern "C" int qd_fused_op_gemv_norm(float *out, float *res, float *xn, const float *W, const float *x,
                                     const float *add, const float *nw, int N, int K, float eps, qd_op_bench *bench,
                                     qd_err *e) {
    return gemv_norm_op<GV_BF16>(out, NULL, res, xn, W, x, add, nw, N, K, eps, bench, e);
}

extern "C" int qd_fused_op_gemv_swiglu(float *act, float *gate, float *up, const float *W, const float *x,
                                       const float *add, const float *nw, int N, int K, float eps, qd_op_bench *bench,
                                       qd_err *e) {
    float *gu = NULL; /* (2N) gate | up as the kernel stores them */
    if (gate || up) {
        gu = (float *)qd_alloc(2 * (size_t)N * sizeof(float), e);
        if (!gu) return QD_ERUNTIME;
    }
    int rc = gemv_norm_op<GV_SWIGLU>(gu, act, NULL, NULL, W, x, add, nw, N, K, eps, bench, e);
    if (!rc && gate) memcpy(gate, gu, (size_t)N * sizeof(float));
    if (!rc && up) memcpy(up, gu + N, (size_t)N * sizeof(float));
    free(gu);
    return rc;
}

// ----------------------------------------------------------------------------
// SwiGLU (fused.cu: run_layer)

extern "C" int qd_fused_op_swiglu(float *act, const float *gate, const float *up, int T, int I, qd_op_bench *bench,
                                  qd_err *e) {
    TRY(check_mult8("intermediate size", I, e));
    if (T <= 0) return qd_errf(e, QD_EINPUT, "fused ops: swiglu over %d rows", T);
    cudaDeviceProp p;
    TRY(open_device(&p, e));
    const size_t n = (size_t)T * I;
    float *gu = (float *)qd_alloc(2 * n * sizeof(float), e); /* (T, 2I): gate then up in each row, as fused.cu's gu */
    if (!gu) return QD_ERUNTIME;
    for (int t = 0; t < T; t++) {
        memcpy(gu + (size_t)t * 2 * I, gate + (size_t)t * I, (size_t)I * sizeof(float));
        memcpy(gu + (size_t)t * 2 * I + I, up + (size_t)t * I, (size_t)I * sizeof(float));
    }
    dev_arena a;
    bf16 *d_gu = NULL, *d_act = NULL;
    int rc = dalloc(a, &d_gu, 2 * n * 2, e);
    if (!rc) rc = dalloc(a, &d_act, n * 2, e);
    if (!rc) rc = upload_bf16(d_gu, gu, 2 * n, e);
    free(gu);
    TRY(rc);
    auto upload = [&]() -> int { return QD_OK; }; /* swiglu_kernel writes none of its inputs */
    auto launch = [&]() -> int {
        swiglu_kernel<MODE_BF16><<<grid_for(n / 8, 256), 256>>>(d_act, d_gu, T, I, QD_FAULT_NONE);
        LAUNCH_CHECK(swiglu_kernel);
        return QD_OK;
    };
    TRY(run_op(&p, bench, upload, launch, e));
    return download_bf16(act, d_act, n, e);
}
