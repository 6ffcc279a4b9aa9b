/* test_ops.c: every op of the model run by every backend on the same random inputs, one row per op and
 * shape, compared pair by pair (checkasm's call_ref / call_new, ggml's test-backend-ops).
 *
 * Columns: `ref` (reference/ops.c, fp32), `emu` (emu/ops.c, the precision contract on the CPU, what emu.c
 * runs) and, in a CUDA build, `fused` (fused/ops.cu: the very kernels fused.cu launches, one at a time).
 * Inputs are bf16 values (what the contract stores), so every column starts from the same numbers; weights
 * are bf16 values too, norm weights fp32 holding bf16 values (as emu and fused hold them).
 * Each pair (a, b) is judged by NMSE = sum((a - b)^2) / sum(a^2) against the row's bound for that pair,
 * written in the table with its reason. ref-fused is bounded by the triangle inequality over the other two:
 * (sqrt(bound ref-emu) + sqrt(bound emu-fused))^2.
 *
 *   test_ops [--cpu | --gpu] [--bench [N]] [--filter OP]
 *     --cpu     ref vs emu only (the 'cpu' suite)
 *     --gpu     every column; without a CUDA device: "skipped: no CUDA device", exit 77 (the 'gpu' suite)
 *     --bench   also times each column of each row (median of N runs, default 10; CUDA events around the
 *               launch alone, the L2 cache flushed before each) and prints it; not part of pass/fail
 * Exit 0 when every pair of every row is within its bound, 1 otherwise, 2 on bad usage, 3 on a runtime
 * failure (allocation, CUDA).
 *
 * A new op is one entry of `ops` below (its setup, one function per column, its bounds); a new backend is
 * one more column (an entry of `columns`, one function per op). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qd_bf16.h"
#include "qd_build_config.h"
#include "qd_emu_ops.h"
#include "qd_ref_ops.h"
#include "qd_spec.h"
#include "qd_util.h"
#if QD_HAVE_CUDA
#include "qd_fused.h"
#include "qd_fused_ops.h"
#else
typedef struct {
    int runs;
    double median_ms;
} qd_op_bench;
#endif

// ----------------------------------------------------------------------------
// shapes: the released models

typedef struct {
    const char *name;
    int C, NH, NKV, HD, I;
    double theta;
    float eps;
} model;

static const model qwen3_06b = {"0.6B", 1024, 16, 8, 128, 3072, 1000000.0, 1e-6f};
static const model qwen3_8b = {"8B", 4096, 32, 8, 128, 12288, 1000000.0, 1e-6f};

/* One row's shape: the model, T tokens at positions pos0..pos0+T-1 (a one-token op: T = 1, pos0 the
 * position), and for the projections the matrix (N, K). */
typedef struct {
    const model *m;
    int T, pos0;
    int N, K;
} shape;

// ----------------------------------------------------------------------------
// one case: a shape, its inputs (bf16 values in fp32) and the length of the compared output

#define MAX_IN 6

typedef struct {
    shape s;
    float *in[MAX_IN]; /* the op's inputs, its setup says which is which */
    size_t out_n;      /* floats of the compared output */
} op_case;

/* xorshift64*, then Box-Muller: deterministic normal samples */
static uint64_t rng_next(uint64_t *st) {
    uint64_t x = *st;
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    *st = x;
    return x * 0x2545F4914F6CDD1DULL;
}
static float rng_normal(uint64_t *st) {
    double u1 = ((rng_next(st) >> 11) + 1.0) / 9007199254740993.0, u2 = (rng_next(st) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* c->in[slot] = n values mean + sd * N(0, 1), rounded to bf16. */
static int fill(op_case *c, int slot, size_t n, float mean, float sd, uint64_t *st, qd_err *e) {
    float *x = qd_alloc(n * sizeof(float), e);
    if (!x) return QD_ERUNTIME;
    for (size_t i = 0; i < n; i++) x[i] = qd_round_bf16(mean + sd * rng_normal(st));
    c->in[slot] = x;
    return QD_OK;
}

/* A scratch buffer for a column's intermediate values. */
static float *scratch(size_t n, qd_err *e) { return qd_alloc((n ? n : 1) * sizeof(float), e); }

#define TRY(x)               \
    do {                     \
        int rc_ = (x);       \
        if (rc_) return rc_; \
    } while (0)

/* bf16 as the contract's activation dtype */
#define A QD_ACT_BF16

// ----------------------------------------------------------------------------
// rmsnorm: in x (T, C), w (C); out (T, C)

static int rmsnorm_setup(op_case *c, uint64_t *st, qd_err *e) {
    const shape *s = &c->s;
    TRY(fill(c, 0, (size_t)s->T * s->m->C, 0.0f, 1.0f, st, e));
    TRY(fill(c, 1, (size_t)s->m->C, 1.0f, 0.1f, st, e));
    c->out_n = (size_t)s->T * s->m->C;
    return QD_OK;
}
static int rmsnorm_ref(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    rmsnorm_forward(out, c->in[0], c->in[1], c->s.T, c->s.m->C, c->s.m->eps, QD_ACCUM_F32);
    return QD_OK;
}
static int rmsnorm_emu(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    emu_rmsnorm(out, c->in[0], c->in[1], c->s.T, c->s.m->C, c->s.m->eps, A, QD_FAULT_NONE);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// add_rmsnorm: the residual add fused into the next norm. in x, add (T, C), w (C); out res | xn (2, T, C)

static int add_rmsnorm_setup(op_case *c, uint64_t *st, qd_err *e) {
    const shape *s = &c->s;
    TRY(fill(c, 0, (size_t)s->T * s->m->C, 0.0f, 1.0f, st, e));
    TRY(fill(c, 1, (size_t)s->T * s->m->C, 0.0f, 0.5f, st, e));
    TRY(fill(c, 2, (size_t)s->m->C, 1.0f, 0.1f, st, e));
    c->out_n = 2 * (size_t)s->T * s->m->C;
    return QD_OK;
}
static int add_rmsnorm_ref(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    const size_t n = (size_t)c->s.T * c->s.m->C;
    residual_forward(out, c->in[0], c->in[1], (long)n);
    rmsnorm_forward(out + n, out, c->in[2], c->s.T, c->s.m->C, c->s.m->eps, QD_ACCUM_F32);
    return QD_OK;
}
static int add_rmsnorm_emu(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    const size_t n = (size_t)c->s.T * c->s.m->C;
    emu_residual(out, c->in[0], c->in[1], (long)n, A, QD_FAULT_NONE);
    emu_rmsnorm(out + n, out, c->in[2], c->s.T, c->s.m->C, c->s.m->eps, A, QD_FAULT_NONE);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// residual: in a, b (T, C); out (T, C)

static int residual_setup(op_case *c, uint64_t *st, qd_err *e) {
    const size_t n = (size_t)c->s.T * c->s.m->C;
    TRY(fill(c, 0, n, 0.0f, 1.0f, st, e));
    TRY(fill(c, 1, n, 0.0f, 0.5f, st, e));
    c->out_n = n;
    return QD_OK;
}
static int residual_ref(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    residual_forward(out, c->in[0], c->in[1], (long)c->out_n);
    return QD_OK;
}
static int residual_emu(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    emu_residual(out, c->in[0], c->in[1], (long)c->out_n, A, QD_FAULT_NONE);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// qk_norm_rope: q_norm / k_norm per head, then RoPE at pos0..pos0+T-1.
// in qkv (T, NH*HD + 2*NKV*HD), qw, kw (HD); out q_rope (T, NH, HD) | k_rope (T, NKV, HD)

static int qk_norm_rope_setup(op_case *c, uint64_t *st, qd_err *e) {
    const model *m = c->s.m;
    const size_t QKV = (size_t)(m->NH + 2 * m->NKV) * m->HD;
    TRY(fill(c, 0, (size_t)c->s.T * QKV, 0.0f, 1.0f, st, e));
    TRY(fill(c, 1, (size_t)m->HD, 1.0f, 0.2f, st, e));
    TRY(fill(c, 2, (size_t)m->HD, 1.0f, 0.2f, st, e));
    c->out_n = (size_t)c->s.T * (m->NH + m->NKV) * m->HD;
    return QD_OK;
}
/* q, k (T, NH*HD) and (T, NKV*HD) copied out of qkv's rows, as the ops read them */
static void split_qk(const op_case *c, float *q, float *k) {
    const model *m = c->s.m;
    const size_t QD = (size_t)m->NH * m->HD, KD = (size_t)m->NKV * m->HD, QKV = QD + 2 * KD;
    for (int t = 0; t < c->s.T; t++) {
        memcpy(q + t * QD, c->in[0] + t * QKV, QD * sizeof(float));
        memcpy(k + t * KD, c->in[0] + t * QKV + QD, KD * sizeof(float));
    }
}
static int inv_freq_of(const model *m, float **inv, qd_err *e) {
    if (!(*inv = scratch((size_t)m->HD / 2, e))) return QD_ERUNTIME;
    rope_inv_freq(*inv, m->HD, m->theta);
    return QD_OK;
}
static int qk_norm_rope_ref(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b;
    const model *m = c->s.m;
    const int T = c->s.T;
    float *q = out, *k = out + (size_t)T * m->NH * m->HD, *inv;
    TRY(inv_freq_of(m, &inv, e));
    split_qk(c, q, k);
    rmsnorm_forward(q, q, c->in[1], T * m->NH, m->HD, m->eps, QD_ACCUM_F32);
    rmsnorm_forward(k, k, c->in[2], T * m->NKV, m->HD, m->eps, QD_ACCUM_F32);
    rope_forward(q, T, m->NH, m->HD, c->s.pos0, inv);
    rope_forward(k, T, m->NKV, m->HD, c->s.pos0, inv);
    free(inv);
    return QD_OK;
}
static int qk_norm_rope_emu(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b;
    const model *m = c->s.m;
    const int T = c->s.T;
    float *q = out, *k = out + (size_t)T * m->NH * m->HD, *inv;
    TRY(inv_freq_of(m, &inv, e));
    split_qk(c, q, k);
    emu_rmsnorm(q, q, c->in[1], T * m->NH, m->HD, m->eps, A, QD_FAULT_NONE);
    emu_rmsnorm(k, k, c->in[2], T * m->NKV, m->HD, m->eps, A, QD_FAULT_NONE);
    emu_rope(q, T, m->NH, m->HD, c->s.pos0, inv, A, QD_FAULT_NONE);
    emu_rope(k, T, m->NKV, m->HD, c->s.pos0, inv, A, QD_FAULT_NONE);
    free(inv);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// attention: in q (T, NH, HD), kc, vc (pos0 + T, NKV, HD); out (T, NH*HD). Prefill (T > 1) and one token
// (T == 1, pos0 the position) share the columns; the fused column launches a different kernel for each.

static int attention_setup(op_case *c, uint64_t *st, qd_err *e) {
    const model *m = c->s.m;
    const size_t S = (size_t)c->s.pos0 + c->s.T, KV = (size_t)m->NKV * m->HD;
    /* q_rope and k_rope are unit-RMS rows (q_norm, k_norm); q at 2x gives scores of a few units after
     * HD^-0.5, a softmax neither flat nor one-hot */
    TRY(fill(c, 0, (size_t)c->s.T * m->NH * m->HD, 0.0f, 2.0f, st, e));
    TRY(fill(c, 1, S * KV, 0.0f, 1.0f, st, e));
    TRY(fill(c, 2, S * KV, 0.0f, 1.0f, st, e));
    c->out_n = (size_t)c->s.T * m->NH * m->HD;
    return QD_OK;
}
static int attention_ref(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b;
    const model *m = c->s.m;
    return attention_forward(out, c->in[0], c->in[1], c->in[2], c->s.T, c->s.pos0, m->NH, m->NKV, m->HD, QD_ACCUM_F32,
                             e);
}
static int attention_emu(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b;
    const model *m = c->s.m;
    const int threads = omp_get_max_threads();
    float *sc = scratch(emu_attention_scratch(threads, c->s.pos0 + c->s.T, m->HD), e);
    if (!sc) return QD_ERUNTIME;
    emu_attention(out, c->in[0], c->in[1], c->in[2], c->s.T, c->s.pos0, m->NH, m->NKV, m->HD, A, threads, QD_FAULT_NONE,
                  sc);
    free(sc);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// qk_attention_decode: the default one-token step's attention launch: q_norm / k_norm + RoPE of this token,
// its k and v into the cache at pos, attention over 0..pos.
// in qkv (NH*HD + 2*NKV*HD), qw, kw (HD), kc, vc (pos, NKV, HD); out attn (NH*HD) | q_rope (NH*HD) |
// k_rope (NKV*HD)

static int qk_attention_setup(op_case *c, uint64_t *st, qd_err *e) {
    const model *m = c->s.m;
    const size_t KV = (size_t)m->NKV * m->HD;
    TRY(fill(c, 0, (size_t)(m->NH + 2 * m->NKV) * m->HD, 0.0f, 1.0f, st, e));
    TRY(fill(c, 1, (size_t)m->HD, 1.0f, 0.2f, st, e));
    TRY(fill(c, 2, (size_t)m->HD, 1.0f, 0.2f, st, e));
    TRY(fill(c, 3, (size_t)c->s.pos0 * KV + 1, 0.0f, 1.0f, st, e));
    TRY(fill(c, 4, (size_t)c->s.pos0 * KV + 1, 0.0f, 1.0f, st, e));
    c->out_n = (size_t)(2 * m->NH + m->NKV) * m->HD;
    return QD_OK;
}
/* The cache of pos + 1 rows: the earlier positions, then this token's k_rope and v. kc, vc (pos + 1, KV). */
static void qk_attention_cache(const op_case *c, const float *k, float *kc, float *vc) {
    const model *m = c->s.m;
    const size_t KV = (size_t)m->NKV * m->HD, pos = (size_t)c->s.pos0;
    memcpy(kc, c->in[3], pos * KV * sizeof(float));
    memcpy(vc, c->in[4], pos * KV * sizeof(float));
    memcpy(kc + pos * KV, k, KV * sizeof(float));
    memcpy(vc + pos * KV, c->in[0] + (size_t)(m->NH + m->NKV) * m->HD, KV * sizeof(float));
}
static int qk_attention_col(const op_case *c, float *out, int col_emu, qd_err *e) {
    const model *m = c->s.m;
    const size_t KV = (size_t)m->NKV * m->HD, QD = (size_t)m->NH * m->HD, S = (size_t)c->s.pos0 + 1;
    float *att = out, *q = out + QD, *k = out + 2 * QD, *inv;
    float *kc = scratch(S * KV, e), *vc = kc ? scratch(S * KV, e) : NULL;
    int threads = omp_get_max_threads();
    float *sc = vc ? scratch(emu_attention_scratch(threads, (int)S, m->HD), e) : NULL;
    int rc = sc ? inv_freq_of(m, &inv, e) : QD_ERUNTIME;
    if (!rc) {
        memcpy(q, c->in[0], QD * sizeof(float));
        memcpy(k, c->in[0] + QD, KV * sizeof(float));
        if (col_emu) {
            emu_rmsnorm(q, q, c->in[1], m->NH, m->HD, m->eps, A, QD_FAULT_NONE);
            emu_rmsnorm(k, k, c->in[2], m->NKV, m->HD, m->eps, A, QD_FAULT_NONE);
            emu_rope(q, 1, m->NH, m->HD, c->s.pos0, inv, A, QD_FAULT_NONE);
            emu_rope(k, 1, m->NKV, m->HD, c->s.pos0, inv, A, QD_FAULT_NONE);
            qk_attention_cache(c, k, kc, vc);
            emu_attention(att, q, kc, vc, 1, c->s.pos0, m->NH, m->NKV, m->HD, A, threads, QD_FAULT_NONE, sc);
        } else {
            rmsnorm_forward(q, q, c->in[1], m->NH, m->HD, m->eps, QD_ACCUM_F32);
            rmsnorm_forward(k, k, c->in[2], m->NKV, m->HD, m->eps, QD_ACCUM_F32);
            rope_forward(q, 1, m->NH, m->HD, c->s.pos0, inv);
            rope_forward(k, 1, m->NKV, m->HD, c->s.pos0, inv);
            qk_attention_cache(c, k, kc, vc);
            rc = attention_forward(att, q, kc, vc, 1, c->s.pos0, m->NH, m->NKV, m->HD, QD_ACCUM_F32, e);
        }
        free(inv);
    }
    free(kc), free(vc), free(sc);
    return rc;
}
static int qk_attention_ref(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b;
    return qk_attention_col(c, out, 0, e);
}
static int qk_attention_emu(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b;
    return qk_attention_col(c, out, 1, e);
}

// ----------------------------------------------------------------------------
// matmul: gemm (prefill, T rows) and gemv (one token); in x (T, K), W (N, K); out (T, N)

static int matmul_setup(op_case *c, uint64_t *st, qd_err *e) {
    const shape *s = &c->s;
    TRY(fill(c, 0, (size_t)s->T * s->K, 0.0f, 1.0f, st, e));
    TRY(fill(c, 1, (size_t)s->N * s->K, 0.0f, (float)(1.0 / sqrt((double)s->K)), st, e));
    c->out_n = (size_t)s->T * s->N;
    return QD_OK;
}
static int matmul_ref(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    matmul_forward(out, c->in[0], c->in[1], c->s.T, c->s.K, c->s.N, QD_ACCUM_F32);
    return QD_OK;
}
static int matmul_emu(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    emu_matmul(out, c->in[0], c->in[1], c->s.T, c->s.K, c->s.N, A);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// gemv_norm: one token's residual add + norm folded into the next projection (decode q/k/v: attn_norm).
// in x, add (K), nw (K), W (N, K); out proj (N) | res (K) | xn (K)

static int gemv_norm_setup(op_case *c, uint64_t *st, qd_err *e) {
    const shape *s = &c->s;
    TRY(fill(c, 0, (size_t)s->K, 0.0f, 1.0f, st, e));
    TRY(fill(c, 1, (size_t)s->K, 0.0f, 0.5f, st, e));
    TRY(fill(c, 2, (size_t)s->K, 1.0f, 0.1f, st, e));
    TRY(fill(c, 3, (size_t)s->N * s->K, 0.0f, (float)(1.0 / sqrt((double)s->K)), st, e));
    c->out_n = (size_t)s->N + 2 * (size_t)s->K;
    return QD_OK;
}
static int gemv_norm_ref(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    const int N = c->s.N, K = c->s.K;
    float *res = out + N, *xn = res + K;
    residual_forward(res, c->in[0], c->in[1], K);
    rmsnorm_forward(xn, res, c->in[2], 1, K, c->s.m->eps, QD_ACCUM_F32);
    matmul_forward(out, xn, c->in[3], 1, K, N, QD_ACCUM_F32);
    return QD_OK;
}
static int gemv_norm_emu(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    const int N = c->s.N, K = c->s.K;
    float *res = out + N, *xn = res + K;
    emu_residual(res, c->in[0], c->in[1], K, A, QD_FAULT_NONE);
    emu_rmsnorm(xn, res, c->in[2], 1, K, c->s.m->eps, A, QD_FAULT_NONE);
    emu_matmul(out, xn, c->in[3], 1, K, N, A);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// gemv_swiglu: one token's mlp_norm folded into gate/up, SwiGLU as the epilogue (decode MLP).
// in x, add (K), nw (K), W (2N, K) gate rows then up rows; out gate | up | act (3, N)

static int gemv_swiglu_setup(op_case *c, uint64_t *st, qd_err *e) {
    const shape *s = &c->s;
    TRY(fill(c, 0, (size_t)s->K, 0.0f, 1.0f, st, e));
    TRY(fill(c, 1, (size_t)s->K, 0.0f, 0.5f, st, e));
    TRY(fill(c, 2, (size_t)s->K, 1.0f, 0.1f, st, e));
    TRY(fill(c, 3, 2 * (size_t)s->N * s->K, 0.0f, (float)(1.0 / sqrt((double)s->K)), st, e));
    c->out_n = 3 * (size_t)s->N;
    return QD_OK;
}
static int gemv_swiglu_col(const op_case *c, float *out, int col_emu, qd_err *e) {
    const int N = c->s.N, K = c->s.K;
    float *res = scratch(2 * (size_t)K, e), *xn = res + K;
    if (!res) return QD_ERUNTIME;
    if (col_emu) {
        emu_residual(res, c->in[0], c->in[1], K, A, QD_FAULT_NONE);
        emu_rmsnorm(xn, res, c->in[2], 1, K, c->s.m->eps, A, QD_FAULT_NONE);
        emu_matmul(out, xn, c->in[3], 1, K, 2 * N, A); /* gate | up */
        emu_swiglu(out + 2 * N, out, out + N, N, A, QD_FAULT_NONE);
    } else {
        residual_forward(res, c->in[0], c->in[1], K);
        rmsnorm_forward(xn, res, c->in[2], 1, K, c->s.m->eps, QD_ACCUM_F32);
        matmul_forward(out, xn, c->in[3], 1, K, 2 * N, QD_ACCUM_F32);
        swiglu_forward(out + 2 * N, out, out + N, N);
    }
    free(res);
    return QD_OK;
}
static int gemv_swiglu_ref(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b;
    return gemv_swiglu_col(c, out, 0, e);
}
static int gemv_swiglu_emu(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b;
    return gemv_swiglu_col(c, out, 1, e);
}

// ----------------------------------------------------------------------------
// swiglu: in gate, up (T, I); out (T, I)

static int swiglu_setup(op_case *c, uint64_t *st, qd_err *e) {
    const size_t n = (size_t)c->s.T * c->s.m->I;
    TRY(fill(c, 0, n, 0.0f, 2.0f, st, e));
    TRY(fill(c, 1, n, 0.0f, 1.0f, st, e));
    c->out_n = n;
    return QD_OK;
}
static int swiglu_ref(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    swiglu_forward(out, c->in[0], c->in[1], (long)c->out_n);
    return QD_OK;
}
static int swiglu_emu(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    (void)b, (void)e;
    emu_swiglu(out, c->in[0], c->in[1], (long)c->out_n, A, QD_FAULT_NONE);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// the fused column: fused/ops.cu's launchers

#if QD_HAVE_CUDA
static int rmsnorm_fused(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    return qd_fused_op_add_rmsnorm(out, NULL, c->in[0], NULL, c->in[1], c->s.T, c->s.m->C, c->s.m->eps, b, e);
}
static int add_rmsnorm_fused(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    const size_t n = (size_t)c->s.T * c->s.m->C;
    return qd_fused_op_add_rmsnorm(out + n, out, c->in[0], c->in[1], c->in[2], c->s.T, c->s.m->C, c->s.m->eps, b, e);
}
static int residual_fused(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    return qd_fused_op_residual(out, c->in[0], c->in[1], (long)c->out_n, b, e);
}
static int qk_norm_rope_fused(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    const model *m = c->s.m;
    return qd_fused_op_qk_norm_rope(out, out + (size_t)c->s.T * m->NH * m->HD, NULL, c->in[0], c->in[1], c->in[2],
                                    c->s.T, c->s.pos0, m->NH, m->NKV, m->HD, m->eps, m->theta, b, e);
}
/* the fused path's KV cache capacity in these rows: the context the released models are run at here */
#define OPS_MAX_SEQ 4096
static int attention_fused(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    const model *m = c->s.m;
    if (c->s.T == 1)
        return qd_fused_op_attention_decode(out, c->in[0], c->in[1], c->in[2], c->s.pos0, m->NH, m->NKV, m->HD,
                                            OPS_MAX_SEQ, b, e);
    return qd_fused_op_attention_prefill(out, c->in[0], c->in[1], c->in[2], c->s.T, c->s.pos0, m->NH, m->NKV, m->HD, b,
                                         e);
}
static int qk_attention_fused(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    const model *m = c->s.m;
    const size_t QD = (size_t)m->NH * m->HD;
    return qd_fused_op_qk_attention_decode(out, out + QD, out + 2 * QD, c->in[0], c->in[1], c->in[2],
                                           c->s.pos0 ? c->in[3] : NULL, c->s.pos0 ? c->in[4] : NULL, c->s.pos0, m->NH,
                                           m->NKV, m->HD, m->eps, m->theta, OPS_MAX_SEQ, b, e);
}
static int matmul_fused(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    if (c->s.T == 1) return qd_fused_op_gemv(out, c->in[1], c->in[0], c->s.N, c->s.K, b, e);
    return qd_fused_op_gemm(out, c->in[0], c->in[1], c->s.T, c->s.K, c->s.N, b, e);
}
static int gemv_norm_fused(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    const int N = c->s.N, K = c->s.K;
    return qd_fused_op_gemv_norm(out, out + N, out + N + K, c->in[3], c->in[0], c->in[1], c->in[2], N, K, c->s.m->eps,
                                 b, e);
}
static int gemv_swiglu_fused(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    const int N = c->s.N;
    return qd_fused_op_gemv_swiglu(out + 2 * N, out, out + N, c->in[3], c->in[0], c->in[1], c->in[2], N, c->s.K,
                                   c->s.m->eps, b, e);
}
static int swiglu_fused(const op_case *c, float *out, qd_op_bench *b, qd_err *e) {
    return qd_fused_op_swiglu(out, c->in[0], c->in[1], c->s.T, c->s.m->I, b, e);
}
#define FUSED(fn) fn
#else
#define FUSED(fn) NULL
#endif

// ----------------------------------------------------------------------------
// the table

enum { COL_REF, COL_EMU, COL_FUSED, NCOL };
typedef struct {
    const char *name;
    int device; /* runs on the CUDA device: only with --gpu, and it times its own launches */
} column;
static const column columns[NCOL] = {{"ref", 0}, {"emu", 0}, {"fused", 1}};

/* The pairs judged: (a, b), a the more exact one (NMSE is relative to a). */
enum { PAIR_REF_EMU, PAIR_EMU_FUSED, PAIR_REF_FUSED, NPAIR };
static const int pair_cols[NPAIR][2] = {{COL_REF, COL_EMU}, {COL_EMU, COL_FUSED}, {COL_REF, COL_FUSED}};

typedef int (*op_fn)(const op_case *c, float *out, qd_op_bench *b, qd_err *e);

#define MAX_SHAPES 6

typedef struct {
    const char *name;
    int (*setup)(op_case *c, uint64_t *st, qd_err *e);
    op_fn col[NCOL];
    /* NMSE bounds of ref-emu and emu-fused (ref-fused: the triangle inequality over both), each with why */
    double bound_ref_emu;
    const char *why_ref_emu;
    double bound_emu_fused;
    const char *why_emu_fused;
    shape shapes[MAX_SHAPES]; /* up to MAX_SHAPES, ended by m == NULL */
} op_row;

/* One bf16 rounding (RNE, 8 significant bits) leaves a relative error uniform in +-2^-9 of the rounded
 * value's ulp scale: its NMSE is about 2^-18 / 1.4 = 2.7e-6 on data spread over octaves. Each ref-emu
 * bound is the NMSE measured on these inputs (test_ops prints it) times a stated margin.
 * emu-fused: the same roundings at the same points, so only fp32 reduction order (and CUDA's expf, within
 * 2 ulp of the C library's) differs; a result moves across a bf16 rounding boundary with probability
 * about (fp32 difference) / (bf16 ulp), and then by one ulp: for relative fp32 differences near 2^-18 the
 * NMSE is near 2^-18 * 2^-8 = 1.5e-8. Each emu-fused bound is the NMSE measured on an H200 (`test_ops
 * --gpu`, the largest over the row's shapes) times 10: another GPU's cuBLAS or SM count may pick another
 * reduction order, which moves which elements flip but not how many by orders of magnitude. */
static const op_row ops[] = {
    {"rmsnorm",
     rmsnorm_setup,
     {rmsnorm_ref, rmsnorm_emu, FUSED(rmsnorm_fused)},
     1.0e-5,
     "the output's bf16 rounding (measured at most 3.3e-6), 3x margin",
     3.0e-8,
     "block-tree vs sequential fp32 sum of squares: rare 1-ulp flips (H200: 9.9e-9)",
     {{&qwen3_06b, 1, 0, 0, 0}, {&qwen3_06b, 64, 0, 0, 0}, {&qwen3_8b, 1, 0, 0, 0}, {&qwen3_8b, 64, 0, 0, 0}}},
    {"add_rmsnorm",
     add_rmsnorm_setup,
     {add_rmsnorm_ref, add_rmsnorm_emu, FUSED(add_rmsnorm_fused)},
     1.5e-5,
     "the residual's and the norm's bf16 roundings (measured at most 4.4e-6), 3x margin",
     6.0e-8,
     "block-tree vs sequential fp32 sum of squares: rare 1-ulp flips (H200: 6.2e-9)",
     {{&qwen3_06b, 1, 0, 0, 0}, {&qwen3_06b, 64, 0, 0, 0}, {&qwen3_8b, 16, 0, 0, 0}}},
    {"residual",
     residual_setup,
     {residual_ref, residual_emu, FUSED(residual_fused)},
     1.0e-5,
     "the sum's bf16 rounding (measured at most 3.2e-6), 3x margin",
     0.0,
     "the same two roundings of the same fp32 sum: bitwise",
     {{&qwen3_06b, 64, 0, 0, 0}, {&qwen3_8b, 16, 0, 0, 0}}},
    {"qk_norm_rope",
     qk_norm_rope_setup,
     {qk_norm_rope_ref, qk_norm_rope_emu, FUSED(qk_norm_rope_fused)},
     2.0e-5,
     "q_norm / k_norm rounded, then RoPE's output rounded (measured at most 5.6e-6), 3x margin",
     4.0e-9,
     "warp-tree vs sequential fp32 sum of squares per head: rare 1-ulp flips (H200: 3.7e-10)",
     {{&qwen3_06b, 1, 0, 0, 0}, {&qwen3_06b, 32, 0, 0, 0}, {&qwen3_06b, 1, 4095, 0, 0}, {&qwen3_8b, 16, 1000, 0, 0}}},
    {"attention",
     attention_setup,
     {attention_ref, attention_emu, FUSED(attention_fused)},
     1.2e-5,
     "the output's rounding; P rounded to bf16 adds little (measured at most 3.5e-6), 3x margin",
     5.0e-8,
     "tensor-core / split fp32 accumulation order of scores, sums and P.V (H200: 4.6e-9)",
     {{&qwen3_06b, 128, 0, 0, 0},
      {&qwen3_06b, 100, 37, 0, 0},
      {&qwen3_8b, 64, 0, 0, 0},
      {&qwen3_06b, 1, 0, 0, 0},
      {&qwen3_06b, 1, 1000, 0, 0},
      {&qwen3_8b, 1, 4095, 0, 0}}},
    {"qk_attention_decode",
     qk_attention_setup,
     {qk_attention_ref, qk_attention_emu, FUSED(qk_attention_fused)},
     2.0e-5,
     "q_norm / k_norm, RoPE, P and the output rounded (measured at most 5.7e-6), 3x margin",
     1.0e-10,
     "warp-tree sums of squares and split fp32 accumulation order (H200: 2.9e-12)",
     {{&qwen3_06b, 1, 0, 0, 0}, {&qwen3_06b, 1, 64, 0, 0}, {&qwen3_06b, 1, 1000, 0, 0}, {&qwen3_8b, 1, 4095, 0, 0}}},
    {"gemm",
     matmul_setup,
     {matmul_ref, matmul_emu, FUSED(matmul_fused)},
     1.0e-5,
     "the output's bf16 rounding (measured at most 2.8e-6), 3x margin",
     1.2e-7,
     "cuBLAS's fp32 accumulation order vs sequential: rare 1-ulp flips (H200: 1.1e-8)",
     {{&qwen3_06b, 64, 0, 4096, 1024},
      {&qwen3_06b, 64, 0, 1024, 3072},
      {&qwen3_8b, 16, 0, 4096, 4096},
      {&qwen3_8b, 8, 0, 4096, 12288}}},
    {"gemv",
     matmul_setup,
     {matmul_ref, matmul_emu, FUSED(matmul_fused)},
     1.0e-5,
     "the output's bf16 rounding (measured at most 2.9e-6), 3x margin",
     1.0e-8,
     "per-lane chunks and a warp butterfly vs sequential fp32 sums (H200: 9.0e-10)",
     {{&qwen3_06b, 1, 0, 1024, 2048},
      {&qwen3_06b, 1, 0, 1024, 3072},
      {&qwen3_8b, 1, 0, 4096, 4096},
      {&qwen3_8b, 1, 0, 4096, 12288}}},
    {"gemv_norm",
     gemv_norm_setup,
     {gemv_norm_ref, gemv_norm_emu, FUSED(gemv_norm_fused)},
     2.0e-5,
     "residual, attn_norm and projection rounded (measured at most 6.9e-6), 3x margin",
     9.0e-7,
     "tree sums of squares and per-lane dot products: rare 1-ulp flips (H200: 8.7e-8)",
     {{&qwen3_06b, 1, 0, 4096, 1024}, {&qwen3_8b, 1, 0, 6144, 4096}}},
    {"gemv_swiglu",
     gemv_swiglu_setup,
     {gemv_swiglu_ref, gemv_swiglu_emu, FUSED(gemv_swiglu_fused)},
     3.5e-5,
     "mlp_norm, gate, up and act rounded (measured at most 1.2e-5), 3x margin",
     3.4e-6,
     "tree sums of squares and per-lane dot products, twice, then SiLU (H200: 3.4e-7)",
     {{&qwen3_06b, 1, 0, 3072, 1024}, {&qwen3_8b, 1, 0, 12288, 4096}}},
    {"swiglu",
     swiglu_setup,
     {swiglu_ref, swiglu_emu, FUSED(swiglu_fused)},
     1.0e-5,
     "the output's bf16 rounding (measured at most 2.8e-6), 3x margin",
     1.0e-7,
     "the same roundings (H200: 0, bitwise); the bound allows CUDA's expf an fp32 ulp",
     {{&qwen3_06b, 64, 0, 0, 0}, {&qwen3_8b, 16, 0, 0, 0}}},
};
enum { NOPS = sizeof ops / sizeof ops[0] };

// ----------------------------------------------------------------------------
// comparison

typedef struct {
    double nmse; /* INFINITY when a non-finite value differs */
} cmp_result;

static double nmse_of(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) {
            if (memcmp(&a[i], &b[i], sizeof(float)) != 0) return INFINITY;
            continue;
        }
        const double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)a[i] * a[i];
    }
    return den > 0.0 ? num / den : (num > 0.0 ? INFINITY : 0.0);
}

/* The first few elements whose own squared error exceeds the bound's share of the total, (a - b)^2 >
 * bound * mean(a^2) (or any difference when the bound is 0): where a failing NMSE comes from. */
static void print_mismatches(const float *a, const float *b, size_t n, double bound, const char *na, const char *nb) {
    double den = 0.0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(a[i])) den += (double)a[i] * a[i];
    const double share = bound * den / (double)(n ? n : 1);
    int shown = 0;
    for (size_t i = 0; i < n && shown < 5; i++) {
        const double d = (double)a[i] - (double)b[i];
        const int differ = !isfinite(d) ? memcmp(&a[i], &b[i], sizeof(float)) != 0 : d * d > share && d != 0.0;
        if (!differ) continue;
        printf("      [%zu] %s %.9g  %s %.9g  diff %.3g\n", i, na, a[i], nb, b[i], d);
        shown++;
    }
}

static void shape_str(const op_row *op, const shape *s, char *buf, size_t n) {
    if (s->N) snprintf(buf, n, "%s T=%d N=%d K=%d", s->m->name, s->T, s->N, s->K);
    else if (op->setup == attention_setup || op->setup == qk_attention_setup || op->setup == qk_norm_rope_setup)
        snprintf(buf, n, "%s T=%d pos0=%d", s->m->name, s->T, s->pos0);
    else snprintf(buf, n, "%s T=%d C=%d", s->m->name, s->T, s->m->C);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *x, const void *y) {
    const double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* Runs column col of a case into out; with bench_runs > 0 also times it: a device column times its own
 * launches (CUDA events, L2 flushed), a CPU column is timed here by the wall clock. *ms: the median. */
static int run_col(const op_row *op, int col, const op_case *c, float *out, int bench_runs, double *ms, qd_err *e) {
    qd_op_bench b = {bench_runs, 0.0};
    if (columns[col].device) {
        TRY(op->col[col](c, out, bench_runs > 0 ? &b : NULL, e));
        *ms = b.median_ms;
        return QD_OK;
    }
    TRY(op->col[col](c, out, NULL, e));
    if (bench_runs <= 0) return QD_OK;
    double *t = qd_alloc((size_t)bench_runs * sizeof(double), e);
    if (!t) return QD_ERUNTIME;
    int rc = QD_OK;
    for (int r = 0; r < bench_runs && !rc; r++) {
        const double t0 = now_ms();
        rc = op->col[col](c, out, NULL, e);
        t[r] = now_ms() - t0;
    }
    qsort(t, (size_t)bench_runs, sizeof(double), cmp_double);
    *ms = bench_runs % 2 ? t[bench_runs / 2] : 0.5 * (t[bench_runs / 2 - 1] + t[bench_runs / 2]);
    free(t);
    return rc;
}

static double pair_bound(const op_row *op, int pair) {
    if (pair == PAIR_REF_EMU) return op->bound_ref_emu;
    if (pair == PAIR_EMU_FUSED) return op->bound_emu_fused;
    const double r = sqrt(op->bound_ref_emu) + sqrt(op->bound_emu_fused);
    return r * r;
}

static const char *pair_why(const op_row *op, int pair) {
    return pair == PAIR_REF_EMU     ? op->why_ref_emu
           : pair == PAIR_EMU_FUSED ? op->why_emu_fused
                                    : "the triangle inequality over ref-emu and emu-fused";
}

/* One row: inputs, every enabled column, every pair of enabled columns judged. *fails: the failing pairs. */
static int run_case(const op_row *op, const shape *s, const int *enabled, int bench_runs, uint64_t seed, int *fails,
                    qd_err *e) {
    op_case c;
    memset(&c, 0, sizeof c);
    c.s = *s;
    float *out[NCOL] = {NULL};
    double ms[NCOL] = {0};
    char sh[64];
    shape_str(op, s, sh, sizeof sh);
    uint64_t st = seed;
    int rc = op->setup(&c, &st, e);
    for (int k = 0; k < NCOL && !rc; k++) {
        if (!enabled[k] || !op->col[k]) continue;
        if (!(out[k] = scratch(c.out_n, e))) rc = QD_ERUNTIME;
        if (!rc) rc = run_col(op, k, &c, out[k], bench_runs, &ms[k], e);
    }
    for (int p = 0; p < NPAIR && !rc; p++) {
        const int a = pair_cols[p][0], b = pair_cols[p][1];
        if (!out[a] || !out[b]) continue;
        char pname[32];
        snprintf(pname, sizeof pname, "%s-%s", columns[a].name, columns[b].name);
        const double nmse = nmse_of(out[a], out[b], c.out_n), bound = pair_bound(op, p);
        const int ok = nmse <= bound;
        printf("%-20s %-26s %-10s %10.3e %10.3e  %s\n", op->name, sh, pname, nmse, bound, ok ? "ok" : "FAIL");
        if (!ok) {
            printf("      bound: %s\n", pair_why(op, p));
            print_mismatches(out[a], out[b], c.out_n, bound, columns[a].name, columns[b].name);
            (*fails)++;
        }
    }
    if (!rc && bench_runs > 0)
        for (int k = 0; k < NCOL; k++)
            if (out[k])
                printf("%-20s %-26s %-10s %10.4f ms  (median of %d)\n", op->name, sh, columns[k].name, ms[k],
                       bench_runs);
    for (int k = 0; k < NCOL; k++) free(out[k]);
    for (int i = 0; i < MAX_IN; i++) free(c.in[i]);
    return rc;
}

/* The control: the table must be able to fail. emu's rmsnorm with fault norm-sumsq-lowp (a bf16
 * accumulator for the sum of squares, which stagnates) against the reference, judged by the rmsnorm row's
 * bound: it must come out FAIL. Returns 1 when the table caught it. */
static int control_catches(qd_err *e) {
    op_case c;
    memset(&c, 0, sizeof c);
    c.s = (shape){&qwen3_06b, 4, 0, 0, 0};
    uint64_t st = 0x5EED;
    float *a = NULL, *b = NULL;
    int caught = -1;
    if (!rmsnorm_setup(&c, &st, e) && (a = scratch(c.out_n, e)) && (b = scratch(c.out_n, e))) {
        rmsnorm_ref(&c, a, NULL, e);
        emu_rmsnorm(b, c.in[0], c.in[1], c.s.T, c.s.m->C, c.s.m->eps, A, QD_FAULT_NORM_SUMSQ_LOWP);
        const double nmse = nmse_of(a, b, c.out_n);
        caught = nmse > ops[0].bound_ref_emu;
        printf("control: rmsnorm with fault norm-sumsq-lowp, ref-emu NMSE %.3e vs bound %.3e: %s\n", nmse,
               ops[0].bound_ref_emu, caught ? "caught" : "NOT CAUGHT");
    }
    free(a), free(b);
    for (int i = 0; i < MAX_IN; i++) free(c.in[i]);
    return caught;
}

static int usage(const char *msg) {
    fprintf(stderr, "test_ops: %s\nusage: test_ops [--cpu | --gpu] [--bench [N]] [--filter OP]\n", msg);
    return 2;
}

int main(int argc, char **argv) {
    int gpu = 0, bench_runs = 0;
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cpu")) {
            gpu = 0;
        } else if (!strcmp(argv[i], "--gpu")) {
            gpu = 1;
        } else if (!strcmp(argv[i], "--bench")) {
            bench_runs = 10;
            if (i + 1 < argc && argv[i + 1][0] != '-') {
                char *end;
                long n = strtol(argv[++i], &end, 10);
                if (*end || n < 1 || n > 100000) return usage("--bench N: a count from 1 to 100000");
                bench_runs = (int)n;
            }
        } else if (!strcmp(argv[i], "--filter") && i + 1 < argc) {
            filter = argv[++i];
        } else {
            char msg[256];
            snprintf(msg, sizeof msg, "unknown argument '%s'", argv[i]);
            return usage(msg);
        }
    }
    int enabled[NCOL] = {1, 1, 0};
    if (gpu) {
#if QD_HAVE_CUDA
        char desc[256] = "";
        if (qd_fused_device_count(desc, sizeof desc) == 0) {
            printf("skipped: no CUDA device\n");
            return 77;
        }
        printf("device: %s\n", desc);
        enabled[COL_FUSED] = 1;
#else
        printf("skipped: no CUDA device (built without CUDA)\n");
        return 77;
#endif
    }
    printf("%-20s %-26s %-10s %10s %10s  %s\n", "op", "shape", "pair", "NMSE", "bound", "result");
    int fails = 0, rows = 0;
    qd_err e;
    qd_err_clear(&e);
    for (int o = 0; o < NOPS; o++) {
        if (filter && strcmp(filter, ops[o].name) != 0) continue;
        for (int k = 0; k < MAX_SHAPES && ops[o].shapes[k].m; k++) {
            const uint64_t seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(o * MAX_SHAPES + k + 1);
            int failed_pairs = 0;
            int rc = run_case(&ops[o], &ops[o].shapes[k], enabled, bench_runs, seed, &failed_pairs, &e);
            if (rc) {
                fprintf(stderr, "test_ops: %s: %s\n", ops[o].name, e.msg);
                return rc == QD_EINPUT ? 2 : 3;
            }
            fails += failed_pairs > 0;
            rows++;
        }
    }
    if (rows == 0) return usage("--filter matched no op");
    const int caught = control_catches(&e);
    if (caught < 0) {
        fprintf(stderr, "test_ops: control: %s\n", e.msg);
        return 3;
    }
    fails += !caught;
    printf("%d of %d cases within every bound\n", rows - fails, rows);
    return fails ? 1 : 0;
}
