/* fused.cu: the fused CUDA Qwen3 path (qd_fused.h), the fast bf16 implementation under test.
 *
 * Built the way a fast inference engine is built, and numerically the twin of emu.c (docs/PRECISION.md):
 *   weights     bf16, uploaded once; q/k/v concatenated into one (NH*HD + 2*NKV*HD, C) matrix and
 *               gate/up into one (2I, C) matrix, so each is one GEMM
 *   GEMMs       cuBLAS, bf16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F, no reduced-precision
 *               split-K reduction), output rounded once; lm_head writes fp32 logits
 *   kernels     add + RMSNorm in one kernel (the residual add of o_proj / down_proj is fused into the
 *               next norm); q_norm + k_norm + RoPE + KV-cache write in one kernel; SwiGLU; attention
 *               on tensor cores for prefill (attention.cuh), split-KV flash-decoding for one token
 *   decode      every layer and the head captured once in a CUDA graph and replayed; token id and
 *               position live in device memory, the split-KV grid is sized for max_seq
 * taps_all selects the unfused variant of the same kernels (residual and RMSNorm apart, q_norm / k_norm /
 * RoPE / cache write apart, attention's combine apart): every tap exists, the numbers are bitwise the same,
 * and it serves as the unfused baseline of tools/qwen3-bench.
 * fp16 and fp32 activations are a diagnostic mode: fp32 copies of the (bf16-valued) weights, fp32 buffers
 * holding values rounded to the activation dtype, pedantic fp32 GEMMs (no TF32) and CUDA-core attention.
 * Faults (qd_fused_opts.fault, docs/FAULTS.md): each launch gets the fault's kind when it is active in that
 * launch's layer (fault_in) and the kernel that hosts the bug branches on it; decode with a fault runs
 * eagerly, never from a graph. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "qd_bf16.h"
#include "qd_fused.h"
#include "qd_spec.h"
}

#include "attention.cuh"
#include "gemv.cuh"
#include "kernels.cuh"

// ----------------------------------------------------------------------------
// errors: every CUDA and cuBLAS call is checked; the library never exits

#include "cuda_check.cuh"

/* A cudaError_t kept in a variable so that something could be freed first; `call` names it. */
#define CUDA_CHECK_ERR(err, call)                                                                                 \
    do {                                                                                                          \
        if ((err) != cudaSuccess)                                                                                 \
            return qd_errf(e, QD_ERUNTIME, "%s:%d: %s: %s (%s)", __FILE__, __LINE__, call, cudaGetErrorName(err), \
                           cudaGetErrorString(err));                                                              \
    } while (0)

#define TRY(x)               \
    do {                     \
        int rc_ = (x);       \
        if (rc_) return rc_; \
    } while (0)

/* One kernel's launch attributes: dynamic shared memory up to smem bytes (0: the default 48 KiB) and, with
 * carve, the largest shared-memory carveout (the kernels of the one-token chain then share an SM without
 * waiting for it to drain and be reconfigured). KERNEL_ATTRS names the instantiation in the error
 * (parenthesise a template-id: KERNEL_ATTRS((k<A, B>), ...)). */
template <typename Kern>
static int kernel_attrs(Kern *kernel, const char *name, size_t smem, bool carve, qd_err *e) {
    cudaError_t err = cudaSuccess;
    if (smem) err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err == cudaSuccess && carve)
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                   (int)cudaSharedmemCarveoutMaxShared);
    if (err != cudaSuccess)
        return qd_errf(e, QD_ERUNTIME, "cudaFuncSetAttribute(%s, %zu bytes of shared memory%s): %s (%s)", name, smem,
                       carve ? ", largest carveout" : "", cudaGetErrorName(err), cudaGetErrorString(err));
    return QD_OK;
}
#define KERNEL_ATTRS(kernel, smem, carve) TRY(kernel_attrs(kernel, #kernel, smem, carve, e))

#define HEAD_ROWS 256       /* lm_head rows per GEMM: the fp32 logits buffer is (HEAD_ROWS, V), not (max_seq, V) */
#define BLAS_WS (32u << 20) /* cuBLAS workspace, fixed so that graph capture never allocates */
#define MEM_MARGIN ((size_t)256 << 20) /* left free for cuBLAS, graphs and the driver */

// ----------------------------------------------------------------------------
// the model on the device

typedef struct {
    void *wqkv;  /* (NH*HD + 2*NKV*HD, C) q_proj; k_proj; v_proj rows */
    void *wo;    /* (C, NH*HD) */
    void *wgu;   /* (2I, C) gate_proj; up_proj rows */
    void *wdown; /* (C, I) */
    float *ln1;  /* (C) input_layernorm */
    float *ln2;  /* (C) post_attention_layernorm */
    float *qn;   /* (HD) q_norm */
    float *kn;   /* (HD) k_norm */
} layer_dev;

typedef decltype(&decode_attn_qk_kernel<MODE_BF16, 2>) dec_attn_fn; /* any instantiation: one signature */

struct qd_fused {
    qd_config cfg;
    qd_act_dtype act;
    int max_seq, taps_all, pos;
    int C, I, HD, NH, NKV, L, V, QKV; /* QKV = NH*HD + 2*NKV*HD */
    int nsplit;                       /* decode splits for max_seq */
    int use_flash;                    /* prefill attention on tensor cores */
    int custom_decode;                /* one-token steps through gemv.cuh (else cuBLAS, as prefill) */
    int use_pdl;                      /* custom decode launches with programmatic dependent launch */
    int num_sms;
    int gemv_staged;      /* custom decode: gemv_staged_kernel for the per-layer projections */
    int gemv_pipe;        /* custom decode: gemv_pipe_kernel where staged tiles would come in waves */
    int gemv_pipe_all;    /* QD_FUSED_GEMV=pipe: gemv_pipe_kernel for every GEMV, the lm_head too */
    int gp_dynamic;       /* gemv_pipe_kernel's groups handed out by a counter (QD_FUSED_SCHED=static: not) */
    int gp_ks, gp_nst;    /* gemv_pipe_kernel's K-slice (values) and ring slots */
    dec_attn_fn dec_attn; /* custom decode: decode_attn_qk_kernel for this kv_mul */
    float eps, scale;
    qd_fault fault;    /* the injected fault (kind QD_FAULT_NONE: none) */
    size_t aelt, welt; /* bytes per activation / weight element */
    size_t wmax;       /* widest tap row (elements) */

    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;

    char *wmem;            /* all weights, one allocation */
    void *embed, *lm_head; /* (V, C); lm_head == embed when tied */
    layer_dev *lw;         /* (L) host array of device pointers */
    float *final_norm;     /* (C) */

    char *amem;                       /* activations, caches and scratch, one allocation */
    void *kc, *vc;                    /* (L, max_seq, NKV, HD) */
    void *xres;                       /* (S, C) residual stream: embed / attn_residual / out */
    void *xres2;                      /* (C) custom decode: out (the norm-folding GEMVs never update in place) */
    void *xn;                         /* (S, C) attn_norm / mlp_norm / final_norm */
    void *qkv;                        /* (S, QKV) q_proj | k_proj | v_proj */
    void *q;                          /* (S, NH, HD) q_rope */
    void *att;                        /* (S, NH*HD) attention output */
    void *o;                          /* (S, C) o_proj */
    void *down;                       /* (S, C) down_proj */
    void *gu;                         /* (S, 2I) gate_proj | up_proj */
    void *actv;                       /* (S, I) act */
    void *qn, *kn, *kr;               /* taps_all: (S, NH, HD) q_norm, (S, NKV, HD) k_norm, (S, NKV, HD) k_rope */
    float *rope_cos, *rope_sin;       /* (S, HD/2) */
    float *rope_cos_bf, *rope_sin_bf; /* (S, HD/2) fault rope-freq-bf16 only: from bf16-rounded inv_freq */
    float *part;                      /* (NH, nsplit, HD + 2) decode partials */
    unsigned *counters;               /* (NKV) decode combine counters */
    unsigned *gp_sched;               /* (L * QD_TL_SLOTS + 1, 2) the pipelined GEMVs' group counters, or NULL */
    float *logits;                    /* (HEAD_ROWS, V) */
    int32_t *tokens;                  /* (S) */
    int32_t *step;                    /* (2) decode token id, position */

    int32_t *h_step; /* pinned (S, 2): the step of each position, read by an in-flight graph */
    float *h_tap;    /* host staging (max(S * wmax, V)) */
    uint16_t *h_raw; /* host staging (S * wmax) raw bf16 */
    cudaGraphExec_t graph;
};

// ----------------------------------------------------------------------------
// device enumeration

extern "C" int qd_fused_device_count(char *desc, size_t n) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* no driver or no device: not an error here */
        return 0;
    }
    if (count > 0 && desc && n > 0) {
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, 0) == cudaSuccess)
            snprintf(desc, n, "%s, sm_%d%d, %.1f GiB", p.name, p.major, p.minor, (double)p.totalGlobalMem / (1 << 30));
        else snprintf(desc, n, "device 0");
    }
    return count;
}

// ----------------------------------------------------------------------------
// layout: every device buffer carved from two allocations (llm.c style)

typedef struct {
    char *base; /* NULL: only count */
    size_t off;
} carve;

static void *take(carve *c, size_t bytes) {
    size_t o = (c->off + 255) & ~(size_t)255;
    c->off = o + bytes;
    return c->base ? c->base + o : NULL;
}

static void layout_weights(qd_fused *f, carve *c) {
    size_t C = f->C, I = f->I, HD = f->HD, V = f->V, QKV = f->QKV, NHHD = (size_t)f->NH * f->HD;
    f->embed = take(c, V * C * f->welt);
    f->lm_head = f->cfg.tie_word_embeddings ? f->embed : take(c, V * C * f->welt);
    for (int l = 0; l < f->L; l++) {
        layer_dev *d = &f->lw[l];
        d->wqkv = take(c, QKV * C * f->welt);
        d->wo = take(c, C * NHHD * f->welt);
        d->wgu = take(c, 2 * I * C * f->welt);
        d->wdown = take(c, C * I * f->welt);
        d->ln1 = (float *)take(c, C * sizeof(float));
        d->ln2 = (float *)take(c, C * sizeof(float));
        d->qn = (float *)take(c, HD * sizeof(float));
        d->kn = (float *)take(c, HD * sizeof(float));
    }
    f->final_norm = (float *)take(c, C * sizeof(float));
}

static void layout_acts(qd_fused *f, carve *c) {
    size_t S = f->max_seq, C = f->C, I = f->I, HD = f->HD, a = f->aelt;
    size_t NHHD = (size_t)f->NH * HD, KV = (size_t)f->NKV * HD;
    f->kc = take(c, (size_t)f->L * S * KV * a);
    f->vc = take(c, (size_t)f->L * S * KV * a);
    f->xres = take(c, S * C * a);
    f->xres2 = take(c, C * a);
    f->xn = take(c, S * C * a);
    f->qkv = take(c, S * f->QKV * a);
    f->q = take(c, S * NHHD * a);
    f->att = take(c, S * NHHD * a);
    f->o = take(c, S * C * a);
    f->down = take(c, S * C * a);
    f->gu = take(c, S * 2 * I * a);
    f->actv = take(c, S * I * a);
    if (f->taps_all) {
        f->qn = take(c, S * NHHD * a);
        f->kn = take(c, S * KV * a);
        f->kr = take(c, S * KV * a);
    }
    f->rope_cos = (float *)take(c, S * (HD / 2) * sizeof(float));
    f->rope_sin = (float *)take(c, S * (HD / 2) * sizeof(float));
    if (f->fault.kind == QD_FAULT_ROPE_FREQ_BF16) {
        f->rope_cos_bf = (float *)take(c, S * (HD / 2) * sizeof(float));
        f->rope_sin_bf = (float *)take(c, S * (HD / 2) * sizeof(float));
    }
    f->part = (float *)take(c, (size_t)f->NH * f->nsplit * (HD + 2) * sizeof(float));
    f->counters = (unsigned *)take(c, (size_t)f->NKV * sizeof(unsigned));
    f->gp_sched = (unsigned *)take(c, ((size_t)f->L * QD_TL_SLOTS + 1) * 2 * sizeof(unsigned));
    f->logits = (float *)take(c, (size_t)HEAD_ROWS * f->V * sizeof(float));
    f->tokens = (int32_t *)take(c, S * sizeof(int32_t));
    f->step = (int32_t *)take(c, 2 * sizeof(int32_t));
}

// ----------------------------------------------------------------------------
// weight upload: fp32 host arrays holding bf16 values -> bf16 (or bf16-valued fp32) on the device

#define UPLOAD_CHUNK ((size_t)1 << 22) /* elements converted per copy */

static int upload_matrix(qd_fused *f, void *dst, const float *src, size_t n, void *stage, qd_err *e) {
    for (size_t i0 = 0; i0 < n; i0 += UPLOAD_CHUNK) {
        size_t m = n - i0 < UPLOAD_CHUNK ? n - i0 : UPLOAD_CHUNK;
        if (f->welt == 2) {
            uint16_t *s = (uint16_t *)stage;
            for (size_t i = 0; i < m; i++) s[i] = qd_f32_to_bf16(src[i0 + i]);
        } else {
            float *s = (float *)stage;
            for (size_t i = 0; i < m; i++) s[i] = qd_round_bf16(src[i0 + i]);
        }
        CUDA_CHECK(cudaMemcpy((char *)dst + i0 * f->welt, stage, m * f->welt, cudaMemcpyHostToDevice));
    }
    return QD_OK;
}

/* Norm weights stay fp32 on the device, rounded to bf16 like every weight (emu rounds them too). */
static int upload_norm(float *dst, const float *src, size_t n, void *stage, qd_err *e) {
    float *s = (float *)stage;
    for (size_t i = 0; i < n; i++) s[i] = qd_round_bf16(src[i]);
    CUDA_CHECK(cudaMemcpy(dst, s, n * sizeof(float), cudaMemcpyHostToDevice));
    return QD_OK;
}

static int upload_weights(qd_fused *f, const qd_weights *w, qd_err *e) {
    size_t C = f->C, I = f->I, HD = f->HD, V = f->V, NHHD = (size_t)f->NH * HD, KV = (size_t)f->NKV * HD;
    void *stage = malloc(UPLOAD_CHUNK * sizeof(float));
    if (!stage) return qd_errf(e, QD_ERUNTIME, "fused: out of host memory for the weight upload");
    int rc = upload_matrix(f, f->embed, w->embed, V * C, stage, e);
    if (!rc && !f->cfg.tie_word_embeddings) rc = upload_matrix(f, f->lm_head, w->lm_head, V * C, stage, e);
    for (int l = 0; l < f->L && !rc; l++) {
        const qd_layer_weights *s = &w->layers[l];
        const layer_dev *d = &f->lw[l];
        char *qkv = (char *)d->wqkv, *gu = (char *)d->wgu;
        if (!rc) rc = upload_matrix(f, qkv, s->q_proj, NHHD * C, stage, e);
        if (!rc) rc = upload_matrix(f, qkv + NHHD * C * f->welt, s->k_proj, KV * C, stage, e);
        if (!rc) rc = upload_matrix(f, qkv + (NHHD + KV) * C * f->welt, s->v_proj, KV * C, stage, e);
        if (!rc) rc = upload_matrix(f, d->wo, s->o_proj, C * NHHD, stage, e);
        if (!rc) rc = upload_matrix(f, gu, s->gate_proj, I * C, stage, e);
        if (!rc) rc = upload_matrix(f, gu + I * C * f->welt, s->up_proj, I * C, stage, e);
        if (!rc) rc = upload_matrix(f, d->wdown, s->down_proj, C * I, stage, e);
        if (!rc) rc = upload_norm(d->ln1, s->input_layernorm, C, stage, e);
        if (!rc) rc = upload_norm(d->ln2, s->post_attention_layernorm, C, stage, e);
        if (!rc) rc = upload_norm(d->qn, s->q_norm, HD, stage, e);
        if (!rc) rc = upload_norm(d->kn, s->k_norm, HD, stage, e);
    }
    if (!rc) rc = upload_norm(f->final_norm, w->norm, C, stage, e);
    free(stage);
    return rc;
}

/* cos/sin of every position, computed on the host by the shared spec (qd_spec.h: rope_cos_sin, an fp32
 * angle pos * inv_freq, inv_freq from theta in double, cos/sin in double rounded to fp32), so the device
 * rotates with bitwise the same factors as emu and the reference. With fault rope-freq-bf16 a second
 * table is built from inv_freq rounded to bf16 (emu's inv_freq_bf16); the faulty layers get it. */
static int upload_rope_table(const qd_fused *f, const float *inv, float *d_cos, float *d_sin, qd_err *e) {
    int hd2 = f->HD / 2;
    size_t n = (size_t)f->max_seq * hd2;
    float *cs = (float *)malloc(n * sizeof(float)), *sn = (float *)malloc(n * sizeof(float));
    if (!cs || !sn) {
        free(cs), free(sn);
        return qd_errf(e, QD_ERUNTIME, "fused: out of host memory for the RoPE tables");
    }
    for (int p = 0; p < f->max_seq; p++)
        for (int i = 0; i < hd2; i++) rope_cos_sin(p, inv[i], &cs[(size_t)p * hd2 + i], &sn[(size_t)p * hd2 + i]);
    cudaError_t err = cudaMemcpy(d_cos, cs, n * sizeof(float), cudaMemcpyHostToDevice);
    if (err == cudaSuccess) err = cudaMemcpy(d_sin, sn, n * sizeof(float), cudaMemcpyHostToDevice);
    free(cs), free(sn);
    CUDA_CHECK_ERR(err, "cudaMemcpy(rope tables)");
    return QD_OK;
}

static int upload_rope(qd_fused *f, qd_err *e) {
    int hd2 = f->HD / 2;
    float *inv = (float *)malloc((size_t)hd2 * sizeof(float));
    if (!inv) return qd_errf(e, QD_ERUNTIME, "fused: out of host memory for the RoPE tables");
    rope_inv_freq(inv, f->HD, f->cfg.rope_theta);
    int rc = upload_rope_table(f, inv, f->rope_cos, f->rope_sin, e);
    if (!rc && f->rope_cos_bf) {
        for (int i = 0; i < hd2; i++) inv[i] = qd_round_bf16(inv[i]); /* the fault: inv_freq stored in bf16 */
        rc = upload_rope_table(f, inv, f->rope_cos_bf, f->rope_sin_bf, e);
    }
    free(inv);
    return rc;
}

// ----------------------------------------------------------------------------
// create / free

static int check_shapes(const qd_config *c, const qd_fused_opts *o, qd_err *e) {
    if (!o) return qd_errf(e, QD_EINPUT, "fused: options missing");
    if (o->act != QD_ACT_BF16 && o->act != QD_ACT_FP16 && o->act != QD_ACT_FP32)
        return qd_errf(e, QD_EINPUT, "fused: activation dtype %d: expected bf16, fp16 or fp32", (int)o->act);
    if (o->max_seq <= 0) return qd_errf(e, QD_EINPUT, "fused: max_seq must be positive, got %d", o->max_seq);
    if (o->decode_gemv != 0 && o->decode_gemv != 1)
        return qd_errf(e, QD_EINPUT, "fused: decode_gemv %d: expected 0 (custom kernels) or 1 (cuBLAS)",
                       o->decode_gemv);
    if (c->head_dim % 16 || c->head_dim > 256)
        return qd_errf(e, QD_EINPUT, "fused: head_dim %d not supported (a multiple of 16, at most 256)", c->head_dim);
    if (c->hidden_size % 8 || c->intermediate_size % 8)
        return qd_errf(e, QD_EINPUT, "fused: hidden_size %d and intermediate_size %d must be multiples of 8",
                       c->hidden_size, c->intermediate_size);
    if ((int)o->fault.kind < 0 || (int)o->fault.kind >= QD_NUM_FAULTS)
        return qd_errf(e, QD_EINPUT, "fused: fault kind %d: expected 0..%d (qd_fault.h)", (int)o->fault.kind,
                       QD_NUM_FAULTS - 1);
    if (o->fault.kind != QD_FAULT_NONE && (o->fault.layer < -1 || o->fault.layer >= c->num_hidden_layers))
        return qd_errf(e, QD_EINPUT, "fused: --inject %s@%d: the model has layers 0..%d",
                       qd_fault_info_of(o->fault.kind)->name, o->fault.layer, c->num_hidden_layers - 1);
    if (c->num_key_value_heads <= 0 || c->num_attention_heads % c->num_key_value_heads ||
        c->num_attention_heads / c->num_key_value_heads > DEC_MAXMUL)
        return qd_errf(e, QD_EINPUT,
                       "fused: num_attention_heads %d / num_key_value_heads %d: needs a whole ratio of at most %d",
                       c->num_attention_heads, c->num_key_value_heads, DEC_MAXMUL);
    return QD_OK;
}

static size_t norm_threads(int n) {
    int t = (n / 8 + 31) / 32 * 32;
    return t < 32 ? 32 : t > 256 ? 256 : t;
}

static int set_flash_attr(qd_fused *f, qd_err *e) {
    f->use_flash = 0;
    if (f->act != QD_ACT_BF16 || (f->HD != 32 && f->HD != 64 && f->HD != 128)) return QD_OK;
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
    size_t smem = flash_attn_smem(f->HD);
    /* too little shared memory: the CUDA-core kernel computes the same contract */
    if (smem > p.sharedMemPerBlockOptin) return QD_OK;
    if (f->HD == 32)
        CUDA_CHECK(cudaFuncSetAttribute(flash_attn_kernel<32>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    else if (f->HD == 64)
        CUDA_CHECK(cudaFuncSetAttribute(flash_attn_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    else
        CUDA_CHECK(
            cudaFuncSetAttribute(flash_attn_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    f->use_flash = 1;
    return QD_OK;
}

/* The decode attention instantiation for kv_mul query heads per kv head (at most DEC_MAXMUL). */
static dec_attn_fn dec_attn_for(int kv_mul) {
    return kv_mul <= 2   ? decode_attn_qk_kernel<MODE_BF16, 2>
           : kv_mul <= 4 ? decode_attn_qk_kernel<MODE_BF16, 4>
                         : decode_attn_qk_kernel<MODE_BF16, 8>;
}

/* The custom decode's kernels: the streaming GEMV holds its input vector in shared memory (K bf16), the
 * staged GEMVs a weight tile as well, the attention its K/V tiles; above the default 48 KB they need the
 * opt-in limit raised, and past the device's limit decode stays on cuBLAS. */
static int set_decode_attr(qd_fused *f, const cudaDeviceProp *p, qd_err *e) {
    f->num_sms = p->multiProcessorCount;
    /* programmatic dependent launch: sm_90; QD_FUSED_PDL=0 turns it off (a diagnostic) */
    const char *pdl = getenv("QD_FUSED_PDL");
    f->use_pdl = p->major >= 9 && !(pdl && strcmp(pdl, "0") == 0);
    if (!f->custom_decode) return QD_OK;
    size_t kmax = (size_t)f->C;
    if ((size_t)f->NH * f->HD > kmax) kmax = (size_t)f->NH * f->HD;
    if ((size_t)f->I > kmax) kmax = f->I;
    const size_t smem = kmax * sizeof(bf16); /* the streaming GEMV: its input vector */
    if (smem + 1024 > p->sharedMemPerBlockOptin) {
        f->custom_decode = 0;
        return QD_OK;
    }
    /* decode_attn_qk_kernel: the instantiation for this kv_mul; static shared memory plus the split's K and
     * V tiles */
    f->dec_attn = dec_attn_for(f->NH / f->NKV);
    const size_t asmem = decode_attn_qk_smem(f->HD, sizeof(bf16));
    cudaFuncAttributes fa;
    CUDA_CHECK(cudaFuncGetAttributes(&fa, f->dec_attn));
    if (fa.sharedSizeBytes + asmem > p->sharedMemPerBlockOptin) {
        f->custom_decode = 0;
        return QD_OK;
    }
    KERNEL_ATTRS(f->dec_attn, asmem, true);
    /* the staged GEMVs: a full tile and the largest input vector, within the device's opt-in limit */
    const size_t gsmem = GS_TILE_MAX + kmax * (sizeof(float) + sizeof(bf16));
    /* QD_FUSED_GEMV (diagnostics): "stream" the streaming kernel everywhere, "pipe" the pipelined one
     * everywhere, "staged" the staged one (in waves where the tiles do not cover a matrix) */
    const char *gs = getenv("QD_FUSED_GEMV");
    const int stream_only = gs && strcmp(gs, "stream") == 0;
    f->gemv_staged = gsmem + 1024 <= p->sharedMemPerBlockOptin && !stream_only;
    /* the pipelined GEMV: slices of GP_KS values (a 16-row slot is 64 KiB) and GP_SLOTS slots, fewer where
     * the largest input vector leaves less opt-in shared memory; slices of half as many values where not
     * even two slots would fit */
    f->gp_ks = GP_KS;
    for (;;) {
        const size_t slot = (size_t)GP_ROWS * f->gp_ks * 2, room = kmax * 2 + 1024;
        const size_t fit = p->sharedMemPerBlockOptin > room ? (p->sharedMemPerBlockOptin - room) / slot : 0;
        f->gp_nst = (int)(fit < GP_SLOTS ? fit : GP_SLOTS);
        if (f->gp_nst >= 2 || f->gp_ks <= 256) break;
        f->gp_ks /= 2;
    }
    /* QD_FUSED_GP=KS,SLOTS: another slice (a multiple of 256 values) and ring (a diagnostic for tuning) */
    const char *gp = getenv("QD_FUSED_GP");
    int gks, gns;
    char gend;
    if (gp && sscanf(gp, "%d,%d%c", &gks, &gns, &gend) == 2 && gks >= 256 && gks % 256 == 0 && gks <= 8192 &&
        gns >= 2 && gns <= GP_MAX_SLOTS)
        f->gp_ks = gks, f->gp_nst = gns;
    else if (gp) /* a typo would otherwise measure the default */
        fprintf(stderr,
                "warning: QD_FUSED_GP=%s ignored: expected KS,SLOTS (KS a multiple of 256 up to 8192, "
                "SLOTS 2..%d)\n",
                gp, GP_MAX_SLOTS);
    const size_t psmem = gp_smem(f->gp_ks, f->gp_nst, (int)kmax);
    const int gp_fits = psmem + 1024 <= p->sharedMemPerBlockOptin;
    f->gemv_pipe = gp_fits && !stream_only && !(gs && strcmp(gs, "staged") == 0);
    if (gp && !gp_fits) /* well-formed, but the ring and x do not fit */
        fprintf(stderr,
                "warning: QD_FUSED_GP=%s: %zu bytes of shared memory, the device has %zu per block; "
                "the pipelined GEMV is off\n",
                gp, psmem, (size_t)p->sharedMemPerBlockOptin);
    f->gemv_pipe_all = f->gemv_pipe && gs && strcmp(gs, "pipe") == 0;
    /* the pipelined GEMV's groups on demand from a counter; QD_FUSED_SCHED=static (a diagnostic) hands them
     * out in the fixed order b, b + grid, ... (bitwise the same outputs) */
    const char *sc = getenv("QD_FUSED_SCHED");
    f->gp_dynamic = 1;
    if (sc && (strcmp(sc, "static") == 0 || strcmp(sc, "dynamic") == 0)) f->gp_dynamic = sc[0] == 'd';
    else if (sc) fprintf(stderr, "warning: QD_FUSED_SCHED=%s ignored: expected static or dynamic\n", sc);
    if (f->gemv_pipe) {
        KERNEL_ATTRS((gemv_pipe_kernel<GV_NORM, GV_BF16>), psmem, true);
        KERNEL_ATTRS((gemv_pipe_kernel<GV_NORM, GV_SWIGLU>), psmem, true);
        KERNEL_ATTRS((gemv_pipe_kernel<GV_PLAIN, GV_BF16>), psmem, true);
        KERNEL_ATTRS((gemv_pipe_kernel<GV_NORM, GV_F32>), psmem, true);
    }
    /* every kernel of the one-token chain asks for the largest carveout */
    const size_t ssmem = f->gemv_staged ? gsmem : 0;
    KERNEL_ATTRS((gemv_staged_kernel<GV_NORM, GV_BF16>), ssmem, true);
    KERNEL_ATTRS((gemv_staged_kernel<GV_NORM, GV_SWIGLU>), ssmem, true);
    KERNEL_ATTRS((gemv_staged_kernel<GV_PLAIN, GV_BF16>), ssmem, true);
    /* the streaming kernel: beyond the default limit with its static shared memory */
    const size_t vsmem = smem + 1024 > 48 * 1024 ? smem : 0;
    KERNEL_ATTRS((gemv_kernel<GV_NORM, GV_BF16>), vsmem, false);
    KERNEL_ATTRS((gemv_kernel<GV_NORM, GV_F32>), vsmem, true);
    KERNEL_ATTRS((gemv_kernel<GV_NORM, GV_SWIGLU>), vsmem, false);
    KERNEL_ATTRS((gemv_kernel<GV_PLAIN, GV_BF16>), vsmem, false);
    return QD_OK;
}

static double gib(size_t b) { return (double)b / (1 << 30); }

static int create_device(qd_fused *f, const qd_weights *w, qd_err *e) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        cudaGetLastError();
        return qd_errf(e, QD_ERUNTIME, "fused: no CUDA device (%s)",
                       err != cudaSuccess ? cudaGetErrorName(err) : "device count is 0");
    }
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
    if (p.major < 8)
        return qd_errf(e, QD_ERUNTIME, "fused: device 0 (%s) is sm_%d%d; the fused path needs sm_80 or newer", p.name,
                       p.major, p.minor);
    CUDA_CHECK(cudaSetDevice(0));
    CUDA_CHECK(cudaFree(0)); /* creates the context, so that the free memory below is what is left */

    carve cw = {NULL, 0}, ca = {NULL, 0};
    layout_weights(f, &cw);
    layout_acts(f, &ca);
    size_t need = cw.off + ca.off + BLAS_WS + MEM_MARGIN, freeb = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&freeb, &total));
    if (need > freeb)
        return qd_errf(e, QD_ERUNTIME,
                       "fused: needs %.2f GiB of device memory (weights %.2f, KV cache and activations for "
                       "max_seq %d %.2f, workspace %.2f) but %.2f GiB of %.2f are free; lower max_seq",
                       gib(need), gib(cw.off), f->max_seq, gib(ca.off), gib(BLAS_WS + MEM_MARGIN), gib(freeb),
                       gib(total));

    CUDA_CHECK(cudaStreamCreate(&f->stream)); /* blocking: events on the legacy stream bracket its work */
    CUBLAS_CHECK(cublasCreate(&f->blas));
    CUBLAS_CHECK(cublasSetStream(f->blas, f->stream));
    CUDA_CHECK(cudaMalloc(&f->blas_ws, BLAS_WS));
    CUBLAS_CHECK(cublasSetWorkspace(f->blas, f->blas_ws, BLAS_WS)); /* after SetStream, which resets it */
    /* bf16: fp32 accumulation all the way, no split-K reduction in bf16. fp32 / fp16: pedantic, no TF32. */
    CUBLAS_CHECK(cublasSetMathMode(
        f->blas, f->act == QD_ACT_BF16
                     ? (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)
                     : CUBLAS_PEDANTIC_MATH));

    CUDA_CHECK(cudaMalloc((void **)&f->wmem, cw.off));
    CUDA_CHECK(cudaMalloc((void **)&f->amem, ca.off));
    cw.base = f->wmem, cw.off = 0;
    ca.base = f->amem, ca.off = 0;
    layout_weights(f, &cw);
    layout_acts(f, &ca);
    /* zeros: the counters must start at 0; the caches only so that nothing ever reads uninitialised memory */
    CUDA_CHECK(cudaMemset(f->amem, 0, ca.off));
    TRY(upload_weights(f, w, e));
    TRY(upload_rope(f, e));
    TRY(set_flash_attr(f, e));
    TRY(set_decode_attr(f, &p, e));
    CUDA_CHECK(cudaMallocHost((void **)&f->h_step, (size_t)f->max_seq * 2 * sizeof(int32_t)));
    CUDA_CHECK(cudaDeviceSynchronize());
    return QD_OK;
}

extern "C" qd_fused *qd_fused_create(const qd_weights *w, const qd_fused_opts *opts, qd_err *e) {
    const qd_config *c = &w->cfg;
    if (check_shapes(c, opts, e)) return NULL;
    qd_fused *f = (qd_fused *)qd_zalloc(1, sizeof *f, e);
    if (!f) return NULL;
    f->cfg = *c;
    f->act = opts->act;
    f->max_seq = opts->max_seq;
    f->taps_all = opts->taps_all != 0;
    f->fault = opts->fault;
    if (f->fault.kind == QD_FAULT_NONE) f->fault.layer = -1;
    /* the custom one-token path is the default for bf16; taps_all (the unfused baseline) keeps cuBLAS */
    const char *env = getenv("QD_FUSED_DECODE");
    const int force_cublas = env && strcmp(env, "cublas") == 0;
    f->custom_decode = opts->decode_gemv == 0 && !force_cublas && f->act == QD_ACT_BF16 && !f->taps_all;
    f->C = c->hidden_size, f->I = c->intermediate_size, f->HD = c->head_dim;
    f->NH = c->num_attention_heads, f->NKV = c->num_key_value_heads, f->L = c->num_hidden_layers;
    f->V = c->vocab_size;
    f->QKV = (f->NH + 2 * f->NKV) * f->HD;
    f->nsplit = (f->max_seq + DEC_CH - 1) / DEC_CH;
    f->eps = (float)c->rms_norm_eps;
    f->scale = (float)(1.0 / sqrt((double)f->HD)); /* as emu and the reference */
    f->aelt = f->act == QD_ACT_BF16 ? 2 : 4;
    f->welt = f->act == QD_ACT_BF16 ? 2 : 4;
    size_t wm = (size_t)f->C;
    if ((size_t)f->NH * f->HD > wm) wm = (size_t)f->NH * f->HD;
    if ((size_t)f->I > wm) wm = f->I;
    f->wmax = wm;
    f->lw = (layer_dev *)qd_zalloc((size_t)f->L, sizeof(layer_dev), e); /* (L) */
    if (!f->lw) {                                                       /* nothing on the device yet */
        free(f);
        return NULL;
    }
    if (create_device(f, w, e)) {
        qd_fused_free(f);
        return NULL;
    }
    return f;
}

extern "C" void qd_fused_free(qd_fused *f) {
    if (!f) return;
    if (f->stream) cudaStreamSynchronize(f->stream);
    if (f->graph) cudaGraphExecDestroy(f->graph);
    if (f->blas) cublasDestroy(f->blas);
    cudaFree(f->blas_ws);
    cudaFree(f->wmem);
    cudaFree(f->amem);
    if (f->h_step) cudaFreeHost(f->h_step);
    if (f->stream) cudaStreamDestroy(f->stream);
    cudaGetLastError(); /* leave no sticky error from a failed create behind */
    free(f->h_tap);
    free(f->h_raw);
    free(f->lw);
    free(f);
}

extern "C" int qd_fused_position(const qd_fused *f) { return f->pos; }

// ----------------------------------------------------------------------------
// host <-> device transfers of activations, and taps

static int host_staging(qd_fused *f, qd_err *e) {
    if (f->h_tap) return QD_OK;
    size_t n = (size_t)f->max_seq * f->wmax;
    f->h_tap = (float *)malloc((n > (size_t)f->V ? n : (size_t)f->V) * sizeof(float));
    f->h_raw = (uint16_t *)malloc(n * sizeof(uint16_t));
    if (!f->h_tap || !f->h_raw) return qd_errf(e, QD_ERUNTIME, "fused: out of host memory for tap staging");
    return QD_OK;
}

/* dst (rows, cols) host fp32 <- src (rows, cols) with row stride ld, activation dtype. */
template <int M>
static int download_act(qd_fused *f, float *dst, const void *src, int rows, int cols, size_t ld, qd_err *e) {
    TRY(host_staging(f, e));
    if (M == MODE_BF16) {
        CUDA_CHECK(cudaMemcpy2DAsync(f->h_raw, (size_t)cols * 2, src, ld * 2, (size_t)cols * 2, rows,
                                     cudaMemcpyDeviceToHost, f->stream));
        CUDA_CHECK(cudaStreamSynchronize(f->stream));
        for (size_t i = 0; i < (size_t)rows * cols; i++) dst[i] = qd_bf16_to_f32(f->h_raw[i]);
    } else {
        CUDA_CHECK(cudaMemcpy2DAsync(dst, (size_t)cols * 4, src, ld * 4, (size_t)cols * 4, rows, cudaMemcpyDeviceToHost,
                                     f->stream));
        CUDA_CHECK(cudaStreamSynchronize(f->stream));
    }
    return QD_OK;
}

/* dst (n) activation dtype <- src (n) host fp32, rounded as a store would (emu rounds on entry too). */
template <int M>
static int upload_act(qd_fused *f, void *dst, const float *src, size_t n, qd_err *e) {
    TRY(host_staging(f, e));
    if (M == MODE_BF16) {
        for (size_t i = 0; i < n; i++) f->h_raw[i] = qd_f32_to_bf16(src[i]);
        CUDA_CHECK(cudaMemcpyAsync(dst, f->h_raw, n * 2, cudaMemcpyHostToDevice, f->stream));
    } else if (M == MODE_FP16) {
        for (size_t i = 0; i < n; i++) f->h_tap[i] = qd_round_f16(src[i]);
        CUDA_CHECK(cudaMemcpyAsync(dst, f->h_tap, n * 4, cudaMemcpyHostToDevice, f->stream));
    } else {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyHostToDevice, f->stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(f->stream)); /* the staging is reused at once */
    return QD_OK;
}

/* Emits a host tap of `rows` rows (T, or 1 for the last row's logits). */
static int emit_host(qd_fused *f, qd_tap_sink *sink, qd_tap_id id, const float *data, int rows, qd_err *e) {
    return qd_tap_emit(sink, &f->cfg, id, data, rows, e);
}

/* Emits a device tap (rows, cols) with row stride ld; nothing at all without a sink. */
template <int M>
static int emit_dev(qd_fused *f, qd_tap_sink *sink, qd_tap_id id, const void *src, int rows, int cols, size_t ld,
                    qd_err *e) {
    if (!sink) return QD_OK;
    TRY(host_staging(f, e));
    TRY(download_act<M>(f, f->h_tap, src, rows, cols, ld, e));
    return emit_host(f, sink, id, f->h_tap, rows, e);
}

// ----------------------------------------------------------------------------
// launches

template <int M>
static inline typename act<M>::T *A(void *p) {
    return (typename act<M>::T *)p;
}
template <int M>
static inline typename act<M>::T *A(void *p, size_t off) {
    return (typename act<M>::T *)p + off;
}

/* The fault as layer l's launches take it: its kind when it is active in layer l (-1: the final norm,
 * active only for a fault in every layer, as emu), else QD_FAULT_NONE. */
static int fault_in(const qd_fused *f, int l) {
    return f->fault.kind != QD_FAULT_NONE && qd_fault_at(&f->fault, f->fault.kind, l) ? (int)f->fault.kind
                                                                                      : (int)QD_FAULT_NONE;
}

/* The same for a launch whose residual add is the MLP's (the previous layer's down_proj): residual-drop
 * is the attention residual's bug and stays out of it. */
static int fault_in_no_drop(const qd_fused *f, int l) {
    const int k = fault_in(f, l);
    return k == QD_FAULT_RESIDUAL_DROP ? (int)QD_FAULT_NONE : k;
}

/* Layer l's RoPE tables: the bf16-frequency ones where fault rope-freq-bf16 is active. */
static const float *rope_cos_of(const qd_fused *f, int l) {
    return fault_in(f, l) == QD_FAULT_ROPE_FREQ_BF16 ? f->rope_cos_bf : f->rope_cos;
}
static const float *rope_sin_of(const qd_fused *f, int l) {
    return fault_in(f, l) == QD_FAULT_ROPE_FREQ_BF16 ? f->rope_sin_bf : f->rope_sin;
}

/* The cache row a step's k_rope tap is read from: where the kernel stored it (fault kv-cache-pos: one
 * position early in a one-token step), so the tap is the value computed, as emu's. */
static int kv_row(const qd_fused *f, int l, int T, int pos0) {
    return fault_in(f, l) == QD_FAULT_KV_POS && T == 1 && pos0 > 0 ? pos0 - 1 : pos0;
}

static unsigned grid_for(size_t n, int threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b > 65535u * 16 ? 65535u * 16 : b);
}

/* out (T, N) = x (T, K) . W (N, K)^T, row-major, fp32 accumulation; out in the activation dtype, or fp32
 * when out_f32 (logits). In column-major terms: out^T (N, T) = W (K, N)^T . x^T (K, T). */
template <int M>
static int gemm(qd_fused *f, void *out, const void *x, const void *W, int T, int K, int N, bool out_f32, qd_err *e) {
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType ab = M == MODE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    const cudaDataType ct = out_f32 ? CUDA_R_32F : ab;
    const cublasComputeType_t comp = M == MODE_BF16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC;
    CUBLAS_CHECK(cublasGemmEx(f->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &one, W, ab, K, x, ab, K, &zero, out, ct, N,
                              comp, CUBLAS_GEMM_DEFAULT));
    if (M == MODE_FP16 && !out_f32) {
        round_f16_kernel<<<grid_for((size_t)T * N, 256), 256, 0, f->stream>>>((float *)out, T, N, N);
        LAUNCH_CHECK(round_f16_kernel);
    }
    return QD_OK;
}

/* res (T, C) [+= add], out = RMSNorm(res) * w: fused when add is given and !taps_all, else apart.
 * fault: this launch's (fault_in / fault_in_no_drop). */
template <int M>
static int add_norm(qd_fused *f, void *res, const void *add, void *out, const float *w, int T, int fault, qd_err *e) {
    typedef typename act<M>::T S;
    if (add && f->taps_all) {
        size_t n8 = (size_t)T * f->C / 8;
        residual_kernel<M>
            <<<grid_for(n8, 256), 256, 0, f->stream>>>((S *)res, (const S *)add, n8, fault == QD_FAULT_RESIDUAL_DROP);
        LAUNCH_CHECK(residual_kernel);
        add = NULL;
    }
    add_rmsnorm_kernel<M>
        <<<T, (unsigned)norm_threads(f->C), 0, f->stream>>>((S *)res, (const S *)add, (S *)out, w, f->C, f->eps, fault);
    LAUNCH_CHECK(add_rmsnorm_kernel);
    return QD_OK;
}

template <int M>
static int residual(qd_fused *f, void *res, const void *add, int T, qd_err *e) {
    typedef typename act<M>::T S;
    size_t n8 = (size_t)T * f->C / 8;
    residual_kernel<M><<<grid_for(n8, 256), 256, 0, f->stream>>>((S *)res, (const S *)add, n8, 0); /* the MLP's */
    LAUNCH_CHECK(residual_kernel);
    return QD_OK;
}

/* Attention of T tokens at positions pos0.. (or *d_pos for one token) over the layer's cache. */
template <int M>
static int attention(qd_fused *f, const void *kc, const void *vc, int T, int pos0, const int *d_pos, int fault,
                     qd_err *e) {
    typedef typename act<M>::T S;
    const S *q = A<M>(f->q), *k = (const S *)kc, *v = (const S *)vc;
    S *out = A<M>(f->att);
    if (T == 1) { /* flash-decoding */
        dim3 grid(f->nsplit, f->NKV);
        if (!f->taps_all) {
            decode_attn_kernel<M, true><<<grid, 128, 0, f->stream>>>(q, k, v, f->part, f->counters, out, d_pos, pos0,
                                                                     f->NH, f->NKV, f->HD, f->nsplit, f->scale, fault);
            LAUNCH_CHECK(decode_attn_kernel);
        } else {
            decode_attn_kernel<M, false><<<grid, 128, 0, f->stream>>>(q, k, v, f->part, f->counters, out, d_pos, pos0,
                                                                      f->NH, f->NKV, f->HD, f->nsplit, f->scale, fault);
            LAUNCH_CHECK(decode_attn_kernel);
            decode_combine_kernel<M><<<f->NH, 128, 0, f->stream>>>(f->part, out, d_pos, pos0, f->HD, f->nsplit, fault);
            LAUNCH_CHECK(decode_combine_kernel);
        }
        return QD_OK;
    }
    if constexpr (M == MODE_BF16) {
        if (f->use_flash) {
            dim3 grid((T + FA_BR - 1) / FA_BR, f->NH);
            size_t smem = flash_attn_smem(f->HD);
            if (f->HD == 32)
                flash_attn_kernel<32>
                    <<<grid, 128, smem, f->stream>>>(q, k, v, out, T, pos0, f->NH, f->NKV, f->scale, fault);
            else if (f->HD == 64)
                flash_attn_kernel<64>
                    <<<grid, 128, smem, f->stream>>>(q, k, v, out, T, pos0, f->NH, f->NKV, f->scale, fault);
            else
                flash_attn_kernel<128>
                    <<<grid, 128, smem, f->stream>>>(q, k, v, out, T, pos0, f->NH, f->NKV, f->scale, fault);
            LAUNCH_CHECK(flash_attn_kernel);
            return QD_OK;
        }
    }
    attn_rows_kernel<M>
        <<<dim3(T, f->NH), AR_CHUNK, 0, f->stream>>>(q, k, v, out, pos0, f->NH, f->NKV, f->HD, f->scale, fault);
    LAUNCH_CHECK(attn_rows_kernel);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// forward

// ----------------------------------------------------------------------------
// the custom one-token step (gemv.cuh, decode_attn_qk_kernel), launched with programmatic dependent launch

/* cudaLaunchKernelEx with the PDL attribute when pdl and the device has it; returns the launch's error. */
template <typename... KA, typename... Args>
static cudaError_t launch_ex(const qd_fused *f, bool pdl, void (*kernel)(KA...), dim3 grid, dim3 block, size_t smem,
                             Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = f->stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl && f->use_pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, ((KA)args)...);
}

#define LAUNCH_EX(kernel, ...)                                                                          \
    do {                                                                                                \
        cudaError_t err_ = launch_ex(__VA_ARGS__);                                                      \
        if (err_ == cudaSuccess) err_ = cudaGetLastError();                                             \
        if (err_ != cudaSuccess)                                                                        \
            return qd_errf(e, QD_ERUNTIME, "%s:%d: launch of %s: %s (%s)", __FILE__, __LINE__, #kernel, \
                           cudaGetErrorName(err_), cudaGetErrorString(err_));                           \
    } while (0)

/* One GEMV of gemv.cuh. The per-layer projections (bf16 output or SwiGLU) use gemv_staged_kernel: upb
 * units per block so that the grid is about one block per SM, one warp per two rows up to GS_THREADS,
 * when a block's tile (at most GS_TILE_MAX bytes) covers the matrix in one wave (the 0.6B shape). Where
 * the tiles would come in waves (the 8B shape), gemv_pipe_kernel: one block per SM streaming its groups
 * through a ring of slots. The lm_head (fp32 output), and everything when the device's shared memory is
 * too small, uses the streaming gemv_kernel: 4 warps per block, two rows per warp, at most 8 blocks per
 * SM (a loop over the rows beyond). QD_FUSED_GEMV=pipe puts every GEMV through the pipelined kernel. */
template <int PRO, int EPI>
static int gemv(qd_fused *f, const gemv_args &a, qd_err *e) {
    const size_t row = (size_t)a.K * 2 * (EPI == GV_SWIGLU ? 2 : 1); /* weight bytes per unit */
    if (EPI != GV_F32 && f->gemv_staged && row <= GS_TILE_MAX && !f->gemv_pipe_all) {
        size_t upb = ((size_t)a.N + f->num_sms - 1) / f->num_sms;
        const bool waves = upb * row > GS_TILE_MAX;
        if (!waves || !f->gemv_pipe) {
            if (waves) upb = GS_TILE_MAX / row;
            const size_t blocks = ((size_t)a.N + upb - 1) / upb;
            const size_t iters = EPI == GV_SWIGLU ? upb : (upb + 1) / 2;
            const unsigned threads = (unsigned)(32 * (iters < GS_THREADS / 32 ? iters : GS_THREADS / 32));
            LAUNCH_EX(gemv_staged_kernel, f, true, gemv_staged_kernel<PRO, EPI>, dim3((unsigned)blocks), dim3(threads),
                      gs_smem<EPI>((int)upb, a.K), a, (int)upb);
            return QD_OK;
        }
    }
    if (f->gemv_pipe && (EPI != GV_F32 || f->gemv_pipe_all)) {
        /* a K shorter than the slice gets a slice of whole warp rounds (256 values) */
        const int ks = a.K >= f->gp_ks ? f->gp_ks : (a.K + 255) / 256 * 256;
        const int groups = (a.N + gp_units<EPI>() - 1) / gp_units<EPI>();
        const int blocks = groups < f->num_sms ? groups : f->num_sms;
        gemv_args pa = a; /* each launch id of the chain its own counters */
        pa.sched = f->gp_dynamic && a.tl >= 0 && a.tl <= f->L * QD_TL_SLOTS ? f->gp_sched + 2 * a.tl : NULL;
        LAUNCH_EX(gemv_pipe_kernel, f, true, gemv_pipe_kernel<PRO, EPI>, dim3((unsigned)blocks), dim3(GP_THREADS),
                  gp_smem(ks, f->gp_nst, a.K), pa, ks, f->gp_nst);
        return QD_OK;
    }
    const size_t units = EPI == GV_SWIGLU ? (size_t)a.N : ((size_t)a.N + 1) / 2;
    size_t blocks = (units + GV_THREADS / 32 - 1) / (GV_THREADS / 32), cap = (size_t)f->num_sms * 8;
    if (blocks > cap) blocks = cap;
    LAUNCH_EX(gemv_kernel, f, true, gemv_kernel<PRO, EPI>, dim3((unsigned)blocks), dim3(GV_THREADS),
              (size_t)a.K * sizeof(bf16), a);
    return QD_OK;
}

static gemv_args gemv_plain(const void *W, const void *x, void *out, int N, int K) {
    gemv_args a;
    memset(&a, 0, sizeof a);
    a.W = (const bf16 *)W, a.x = (const bf16 *)x, a.out = out, a.N = N, a.K = K;
    return a;
}

/* x (K) the residual, add (K) or NULL: res_out = A(x + add), xn_out = RMSNorm(res_out) * nw, then the GEMV
 * over xn_out's values. */
static gemv_args gemv_norm(const qd_fused *f, const void *W, const void *x, const void *add, const float *nw,
                           void *res_out, void *xn_out, void *out, int N, int fault) {
    gemv_args a = gemv_plain(W, x, out, N, f->C);
    a.fault = fault;
    a.add = (const bf16 *)add, a.nw = nw, a.res_out = (bf16 *)res_out, a.xn_out = (bf16 *)xn_out;
    a.norm_threads = (int)norm_threads(f->C), a.eps = f->eps;
    return a;
}

/* One token, bf16, at the position in f->step: 5 launches per layer and 2 more (embed; final norm folded
 * into lm_head). The residual stream alternates between f->xres (embed, attn_residual) and f->xres2 (out),
 * because the norm-folding GEMVs read the residual in every block while block 0 writes the update.
 * Taps are the default mode's, emitted in schema order as each launch produces them. Logits in f->logits. */
static gemv_args with_tl(gemv_args a, int tl) {
    a.tl = tl;
    return a;
}

static int decode_step_custom(qd_fused *f, int pos_host, qd_tap_sink *sink, qd_err *e) {
    const int M = MODE_BF16;
    const int C = f->C, I = f->I, HD = f->HD, NH = f->NH, NKV = f->NKV, QKV = f->QKV, V = f->V;
    const size_t KV = (size_t)NKV * HD, layer_kv = (size_t)f->max_seq * KV;
    embed_kernel<M><<<1, 128, 0, f->stream>>>(A<M>(f->xres), (const bf16 *)f->embed, f->step, C);
    LAUNCH_CHECK(embed_kernel);
    TRY(emit_dev<M>(f, sink, qd_tap_model(QD_TAP_EMBED), f->xres, 1, C, C, e));
    for (int l = 0; l < f->L; l++) {
        const layer_dev *w = &f->lw[l];
        bf16 *kc = A<M>(f->kc, (size_t)l * layer_kv), *vc = A<M>(f->vc, (size_t)l * layer_kv);
        const int fk = fault_in(f, l);
        const int tl = l * QD_TL_SLOTS; /* timeline launch ids of this layer (qd_timeline.h) */
        TRY((gemv<GV_NORM, GV_BF16>(f,
                                    with_tl(gemv_norm(f, w->wqkv, f->xres, l > 0 ? f->down : NULL, w->ln1, f->xres2,
                                                      f->xn, f->qkv, QKV, fault_in_no_drop(f, l)),
                                            tl + QD_TL_QKV),
                                    e)));
        if (l > 0) TRY(emit_dev<M>(f, sink, qd_tap_layer(l - 1, QD_TAP_OUT), f->xres2, 1, C, C, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_ATTN_NORM), f->xn, 1, C, C, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_Q_PROJ), f->qkv, 1, NH * HD, QKV, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_K_PROJ), A<M>(f->qkv, (size_t)NH * HD), 1, (int)KV, QKV, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_V_PROJ), A<M>(f->qkv, (size_t)NH * HD + KV), 1, (int)KV, QKV,
                        e));

        LAUNCH_EX(decode_attn_qk_kernel, f, true, f->dec_attn, dim3(f->nsplit, NKV), dim3(128, NH / NKV),
                  decode_attn_qk_smem(HD, sizeof(bf16)), (const bf16 *)f->qkv, A<M>(f->q), kc, vc, (const float *)w->qn,
                  (const float *)w->kn, rope_cos_of(f, l), rope_sin_of(f, l), f->part, f->counters, A<M>(f->att),
                  (const int *)(f->step + 1), NH, NKV, HD, f->nsplit, f->scale, f->eps, fk, tl + QD_TL_ATTN);
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_Q_ROPE), f->q, 1, NH * HD, (size_t)NH * HD, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_K_ROPE), kc + (size_t)kv_row(f, l, 1, pos_host) * KV, 1,
                        (int)KV, KV, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_ATTN), f->att, 1, NH * HD, (size_t)NH * HD, e));

        TRY((gemv<GV_PLAIN, GV_BF16>(f, with_tl(gemv_plain(w->wo, f->att, f->o, C, NH * HD), tl + QD_TL_O), e)));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_O_PROJ), f->o, 1, C, C, e));

        gemv_args gu = gemv_norm(f, w->wgu, f->xres2, f->o, w->ln2, f->xres, f->xn, f->gu, I, fk); /* attn residual */
        gu.act = A<M>(f->actv);
        gu.tl = tl + QD_TL_GATE_UP;
        TRY((gemv<GV_NORM, GV_SWIGLU>(f, gu, e)));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_ATTN_RESIDUAL), f->xres, 1, C, C, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_MLP_NORM), f->xn, 1, C, C, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_GATE_PROJ), f->gu, 1, I, 2 * (size_t)I, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_UP_PROJ), A<M>(f->gu, I), 1, I, 2 * (size_t)I, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_ACT), f->actv, 1, I, I, e));

        TRY((gemv<GV_PLAIN, GV_BF16>(f, with_tl(gemv_plain(w->wdown, f->actv, f->down, C, I), tl + QD_TL_DOWN), e)));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_DOWN_PROJ), f->down, 1, C, C, e));
    }
    TRY((gemv<GV_NORM, GV_F32>(f,
                               with_tl(gemv_norm(f, f->lm_head, f->xres, f->down, f->final_norm, f->xres2, f->xn,
                                                 f->logits, V, fault_in_no_drop(f, -1)),
                                       f->L * QD_TL_SLOTS),
                               e)));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(f->L - 1, QD_TAP_OUT), f->xres2, 1, C, C, e));
    TRY(emit_dev<M>(f, sink, qd_tap_model(QD_TAP_FINAL_NORM), f->xn, 1, C, C, e));
    if (sink) {
        TRY(host_staging(f, e));
        CUDA_CHECK(cudaMemcpyAsync(f->h_tap, f->logits, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost, f->stream));
        CUDA_CHECK(cudaStreamSynchronize(f->stream));
        TRY(emit_host(f, sink, qd_tap_model(QD_TAP_LOGITS), f->h_tap, 1, e));
    }
    return QD_OK;
}

/* One decoder layer over f->xres (T, C) holding the layer's input, or, with pending, the previous
 * layer's attn_residual whose down_proj (f->down) is still to be added (fused into this layer's first
 * norm). Leaves attn_residual in f->xres and down_proj in f->down: the caller adds them.
 * Positions pos0..pos0+T-1; for a captured decode step d_pos points at the position on the device and
 * pos0 is only used to locate taps. Taps are emitted in schema order as each kernel produces them. */
template <int M>
static int run_layer(qd_fused *f, int l, int T, int pos0, const int *d_pos, bool pending, qd_tap_sink *sink,
                     qd_err *e) {
    typedef typename act<M>::T S;
    const layer_dev *w = &f->lw[l];
    const int C = f->C, I = f->I, HD = f->HD, NH = f->NH, NKV = f->NKV, QKV = f->QKV;
    const size_t KV = (size_t)NKV * HD, layer_kv = (size_t)f->max_seq * KV;
    S *kc = A<M>(f->kc, (size_t)l * layer_kv), *vc = A<M>(f->vc, (size_t)l * layer_kv);
    const int fk = fault_in(f, l);
    const float *rcos = rope_cos_of(f, l), *rsin = rope_sin_of(f, l);

    /* the add here is the previous layer's MLP residual; the norm is this layer's attn_norm */
    TRY(add_norm<M>(f, f->xres, pending ? f->down : NULL, f->xn, w->ln1, T, fault_in_no_drop(f, l), e));
    if (pending) TRY(emit_dev<M>(f, sink, qd_tap_layer(l - 1, QD_TAP_OUT), f->xres, T, C, C, e));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_ATTN_NORM), f->xn, T, C, C, e));

    TRY(gemm<M>(f, f->qkv, f->xn, w->wqkv, T, C, QKV, false, e));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_Q_PROJ), f->qkv, T, NH * HD, QKV, e));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_K_PROJ), A<M>(f->qkv, (size_t)NH * HD), T, (int)KV, QKV, e));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_V_PROJ), A<M>(f->qkv, (size_t)NH * HD + KV), T, (int)KV, QKV, e));

    const unsigned warps = (unsigned)T * (NH + NKV);
    if (!f->taps_all) {
        const unsigned all = (unsigned)T * (NH + 2 * NKV);
        qk_norm_rope_kernel<M><<<(all + 3) / 4, 128, 0, f->stream>>>(
            A<M>(f->qkv), A<M>(f->q), kc, vc, w->qn, w->kn, rcos, rsin, T, pos0, d_pos, NH, NKV, HD, f->eps, fk);
        LAUNCH_CHECK(qk_norm_rope_kernel);
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_Q_ROPE), f->q, T, NH * HD, (size_t)NH * HD, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_K_ROPE), kc + (size_t)kv_row(f, l, T, pos0) * KV, T, (int)KV,
                        KV, e));
    } else {
        head_norm_kernel<M><<<(warps + 3) / 4, 128, 0, f->stream>>>(A<M>(f->qkv), A<M>(f->qn), A<M>(f->kn), w->qn,
                                                                    w->kn, T, NH, NKV, HD, f->eps, fk);
        LAUNCH_CHECK(head_norm_kernel);
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_Q_NORM), f->qn, T, NH * HD, (size_t)NH * HD, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_K_NORM), f->kn, T, (int)KV, KV, e));
        rope_kernel<M><<<(warps + 3) / 4, 128, 0, f->stream>>>(A<M>(f->qn), A<M>(f->kn), A<M>(f->q), A<M>(f->kr), rcos,
                                                               rsin, T, pos0, d_pos, NH, NKV, HD, fk);
        LAUNCH_CHECK(rope_kernel);
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_Q_ROPE), f->q, T, NH * HD, (size_t)NH * HD, e));
        TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_K_ROPE), f->kr, T, (int)KV, KV, e));
        size_t n8 = (size_t)T * KV / 8;
        kv_store_kernel<M><<<grid_for(n8, 256), 256, 0, f->stream>>>(A<M>(f->kr), A<M>(f->qkv), kc, vc, T, pos0, d_pos,
                                                                     NH, NKV, HD, fk);
        LAUNCH_CHECK(kv_store_kernel);
    }

    TRY(attention<M>(f, kc, vc, T, pos0, d_pos, fk, e));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_ATTN), f->att, T, NH * HD, (size_t)NH * HD, e));
    TRY(gemm<M>(f, f->o, f->att, w->wo, T, NH * HD, C, false, e));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_O_PROJ), f->o, T, C, C, e));

    TRY(add_norm<M>(f, f->xres, f->o, f->xn, w->ln2, T, fk, e)); /* the attention residual, mlp_norm */
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_ATTN_RESIDUAL), f->xres, T, C, C, e));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_MLP_NORM), f->xn, T, C, C, e));

    TRY(gemm<M>(f, f->gu, f->xn, w->wgu, T, C, 2 * I, false, e));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_GATE_PROJ), f->gu, T, I, 2 * (size_t)I, e));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_UP_PROJ), A<M>(f->gu, I), T, I, 2 * (size_t)I, e));
    size_t n8 = (size_t)T * I / 8;
    swiglu_kernel<M><<<grid_for(n8, 256), 256, 0, f->stream>>>(A<M>(f->actv), A<M>(f->gu), T, I, fk);
    LAUNCH_CHECK(swiglu_kernel);
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_ACT), f->actv, T, I, I, e));
    TRY(gemm<M>(f, f->down, f->actv, w->wdown, T, I, C, false, e));
    TRY(emit_dev<M>(f, sink, qd_tap_layer(l, QD_TAP_DOWN_PROJ), f->down, T, C, C, e));
    return QD_OK;
}

/* Final norm (with the last layer's pending down_proj added first) and lm_head.
 * logits: host (T, V), or NULL. last_only: only the last row's logits, kept on the device in f->logits
 * (what generation needs; the sink then gets that one row, T must be 1). */
template <int M>
static int run_head(qd_fused *f, int T, bool pending, float *logits, bool last_only, qd_tap_sink *sink, qd_err *e) {
    const int C = f->C, V = f->V;
    TRY(add_norm<M>(f, f->xres, pending ? f->down : NULL, f->xn, f->final_norm, T, fault_in_no_drop(f, -1), e));
    if (pending) TRY(emit_dev<M>(f, sink, qd_tap_layer(f->L - 1, QD_TAP_OUT), f->xres, T, C, C, e));
    TRY(emit_dev<M>(f, sink, qd_tap_model(QD_TAP_FINAL_NORM), f->xn, T, C, C, e));
    if (last_only) {
        TRY(gemm<M>(f, f->logits, A<M>(f->xn, (size_t)(T - 1) * C), f->lm_head, 1, C, V, true, e));
        if (sink) {
            TRY(host_staging(f, e));
            CUDA_CHECK(
                cudaMemcpyAsync(f->h_tap, f->logits, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost, f->stream));
            CUDA_CHECK(cudaStreamSynchronize(f->stream));
            TRY(emit_host(f, sink, qd_tap_model(QD_TAP_LOGITS), f->h_tap, 1, e));
        }
        return QD_OK;
    }
    float *out = logits, *tmp = NULL;
    if (!out) {
        if (!sink) return QD_OK;
        out = tmp = (float *)malloc((size_t)T * V * sizeof(float));
        if (!tmp) return qd_errf(e, QD_ERUNTIME, "fused: out of host memory for (%d, %d) logits", T, V);
    }
    int rc = QD_OK;
    for (int r0 = 0; r0 < T && !rc; r0 += HEAD_ROWS) {
        int n = T - r0 < HEAD_ROWS ? T - r0 : HEAD_ROWS;
        rc = gemm<M>(f, f->logits, A<M>(f->xn, (size_t)r0 * C), f->lm_head, n, C, V, true, e);
        cudaError_t err = cudaSuccess;
        if (!rc)
            err = cudaMemcpyAsync(out + (size_t)r0 * V, f->logits, (size_t)n * V * sizeof(float),
                                  cudaMemcpyDeviceToHost, f->stream);
        if (!rc && err == cudaSuccess) err = cudaStreamSynchronize(f->stream);
        if (!rc && err != cudaSuccess)
            rc = qd_errf(e, QD_ERUNTIME, "%s:%d: logits copy: %s", __FILE__, __LINE__, cudaGetErrorName(err));
    }
    if (!rc && sink) rc = emit_host(f, sink, qd_tap_model(QD_TAP_LOGITS), out, T, e);
    free(tmp);
    return rc;
}

template <int M>
static int embed(qd_fused *f, const int32_t *d_tok, int T, qd_tap_sink *sink, qd_err *e) {
    embed_kernel<M><<<T, 128, 0, f->stream>>>(A<M>(f->xres), (const typename act<M>::W *)f->embed, d_tok, f->C);
    LAUNCH_CHECK(embed_kernel);
    return emit_dev<M>(f, sink, qd_tap_model(QD_TAP_EMBED), f->xres, T, f->C, f->C, e);
}

template <int M>
static int prefill(qd_fused *f, const int32_t *tokens, int T, float *logits, qd_tap_sink *sink, qd_err *e) {
    CUDA_CHECK(cudaMemcpyAsync(f->tokens, tokens, (size_t)T * sizeof(int32_t), cudaMemcpyHostToDevice, f->stream));
    TRY(embed<M>(f, f->tokens, T, sink, e));
    for (int l = 0; l < f->L; l++) TRY(run_layer<M>(f, l, T, 0, NULL, l > 0, sink, e));
    TRY(run_head<M>(f, T, true, logits, !logits && !sink, sink, e));
    CUDA_CHECK(cudaStreamSynchronize(f->stream));
    return QD_OK;
}

/* One token at the position in f->step (device), pos_host for taps. Capturable: no host syncs unless
 * a sink is given. Logits (V) stay in f->logits. */
template <int M>
static int decode_step(qd_fused *f, int pos_host, qd_tap_sink *sink, qd_err *e) {
    if constexpr (M == MODE_BF16)
        if (f->custom_decode) return decode_step_custom(f, pos_host, sink, e);
    TRY(embed<M>(f, f->step, 1, sink, e));
    for (int l = 0; l < f->L; l++) TRY(run_layer<M>(f, l, 1, pos_host, f->step + 1, l > 0, sink, e));
    return run_head<M>(f, 1, true, NULL, true, sink, e);
}

template <int M>
static int capture_decode_once(qd_fused *f, qd_err *e) {
    cudaGraph_t g = NULL;
    CUDA_CHECK(cudaStreamBeginCapture(f->stream, cudaStreamCaptureModeThreadLocal));
    int rc = decode_step<M>(f, 0, NULL, e);
    cudaError_t err = cudaStreamEndCapture(f->stream, &g); /* always: the stream must leave capture mode */
    if (rc) {
        if (g) cudaGraphDestroy(g);
        cudaGetLastError();
        return rc;
    }
    CUDA_CHECK_ERR(err, "cudaStreamEndCapture(decode step)");
    err = cudaGraphInstantiate(&f->graph, g, 0);
    cudaGraphDestroy(g);
    if (err != cudaSuccess) f->graph = NULL;
    CUDA_CHECK_ERR(err, "cudaGraphInstantiate(decode step)");
    return QD_OK;
}

/* A driver that cannot capture programmatic dependent launches gets the same graph without them (the
 * same kernels and numbers; only the overlap of launches is lost). */
template <int M>
static int capture_decode(qd_fused *f, qd_err *e) {
    int rc = capture_decode_once<M>(f, e);
    if (rc && f->custom_decode && f->use_pdl) {
        fprintf(stderr, "fused: decode graph with programmatic dependent launch failed (%s); capturing without\n",
                e->msg);
        f->use_pdl = 0;
        rc = capture_decode_once<M>(f, e);
    }
    return rc;
}

template <int M>
static int decode(qd_fused *f, int32_t token, float *logits, qd_tap_sink *sink, qd_err *e) {
    const int pos = f->pos;
    int32_t *hs = f->h_step + 2 * (size_t)pos; /* one pinned slot per position: never rewritten while a
                                                  graph launched for it may still read it */
    hs[0] = token;
    hs[1] = pos;
    CUDA_CHECK(cudaMemcpyAsync(f->step, hs, 2 * sizeof(int32_t), cudaMemcpyHostToDevice, f->stream));
    if (sink || f->fault.kind != QD_FAULT_NONE) {
        /* a sink, or a fault (a diagnostic: kept out of graphs), runs the same launches eagerly */
        TRY(decode_step<M>(f, pos, sink, e));
    } else if (!f->graph) {
        /* the first step runs eagerly (cuBLAS and lazily loaded kernels initialise outside the capture),
         * then the same launches are captured; every later step replays the graph */
        TRY(decode_step<M>(f, pos, NULL, e));
        TRY(capture_decode<M>(f, e));
    } else {
        CUDA_CHECK(cudaGraphLaunch(f->graph, f->stream));
    }
    if (logits) {
        CUDA_CHECK(cudaMemcpyAsync(logits, f->logits, (size_t)f->V * sizeof(float), cudaMemcpyDeviceToHost, f->stream));
        CUDA_CHECK(cudaStreamSynchronize(f->stream));
    }
    f->pos = pos + 1;
    return QD_OK;
}

template <int M>
static int layer_step(qd_fused *f, int l, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink,
                      qd_err *e) {
    const size_t n = (size_t)T * f->C;
    TRY(upload_act<M>(f, f->xres, h_in, n, e));
    TRY(run_layer<M>(f, l, T, pos0, NULL, false, sink, e));
    TRY(residual<M>(f, f->xres, f->down, T, e));
    TRY(download_act<M>(f, h_out, f->xres, T, f->C, f->C, e));
    if (sink) TRY(emit_host(f, sink, qd_tap_layer(l, QD_TAP_OUT), h_out, T, e));
    return QD_OK;
}

template <int M>
static int embed_step(qd_fused *f, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e) {
    CUDA_CHECK(cudaMemcpyAsync(f->tokens, tokens, (size_t)T * sizeof(int32_t), cudaMemcpyHostToDevice, f->stream));
    embed_kernel<M><<<T, 128, 0, f->stream>>>(A<M>(f->xres), (const typename act<M>::W *)f->embed, f->tokens, f->C);
    LAUNCH_CHECK(embed_kernel);
    TRY(download_act<M>(f, h, f->xres, T, f->C, f->C, e));
    if (sink) TRY(emit_host(f, sink, qd_tap_model(QD_TAP_EMBED), h, T, e));
    return QD_OK;
}

template <int M>
static int head_step(qd_fused *f, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e) {
    TRY(upload_act<M>(f, f->xres, h, (size_t)T * f->C, e));
    TRY(run_head<M>(f, T, false, logits, false, sink, e));
    CUDA_CHECK(cudaStreamSynchronize(f->stream));
    return QD_OK;
}

// ----------------------------------------------------------------------------
// the C API: argument checks, then dispatch on the activation dtype

#define DISPATCH(fn, ...)                                 \
    (f->act == QD_ACT_BF16   ? fn<MODE_BF16>(__VA_ARGS__) \
     : f->act == QD_ACT_FP16 ? fn<MODE_FP16>(__VA_ARGS__) \
                             : fn<MODE_FP32>(__VA_ARGS__))

static int check_tokens(const qd_fused *f, const int32_t *tokens, int T, qd_err *e) {
    if (T <= 0 || T > f->max_seq)
        return qd_errf(e, QD_EINPUT, "fused: %d tokens: expected 1..%d (max_seq)", T, f->max_seq);
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= f->V)
            return qd_errf(e, QD_EINPUT, "fused: token %d at index %d is outside the vocabulary [0, %d)", tokens[t], t,
                           f->V);
    return QD_OK;
}

/* Stepped calls and prefill are synchronous; an asynchronous decode before them has to finish first. */
static int sync_stream(qd_fused *f, qd_err *e) {
    CUDA_CHECK(cudaStreamSynchronize(f->stream));
    return QD_OK;
}

extern "C" int qd_fused_embed(qd_fused *f, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e) {
    TRY(check_tokens(f, tokens, T, e));
    TRY(sync_stream(f, e));
    return DISPATCH(embed_step, f, tokens, T, h, sink, e);
}

extern "C" int qd_fused_layer(qd_fused *f, int layer, const float *h_in, float *h_out, int T, int pos0,
                              qd_tap_sink *sink, qd_err *e) {
    if (layer < 0 || layer >= f->L)
        return qd_errf(e, QD_EINPUT, "fused: layer %d: the model has %d layers", layer, f->L);
    if (T <= 0 || pos0 < 0 || pos0 > f->max_seq - T)
        return qd_errf(e, QD_EINPUT, "fused: layer %d: positions %d..%d exceed the KV cache (max_seq %d)", layer, pos0,
                       pos0 + T - 1, f->max_seq);
    TRY(sync_stream(f, e));
    TRY(DISPATCH(layer_step, f, layer, h_in, h_out, T, pos0, sink, e));
    f->pos = pos0 + T;
    return QD_OK;
}

extern "C" int qd_fused_head(qd_fused *f, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e) {
    if (T <= 0 || T > f->max_seq)
        return qd_errf(e, QD_EINPUT, "fused: head: %d rows: expected 1..%d (max_seq)", T, f->max_seq);
    TRY(sync_stream(f, e));
    return DISPATCH(head_step, f, h, T, logits, sink, e);
}

extern "C" int qd_fused_prefill(qd_fused *f, const int32_t *tokens, int T, float *logits, qd_tap_sink *sink,
                                qd_err *e) {
    TRY(check_tokens(f, tokens, T, e));
    TRY(sync_stream(f, e));
    f->pos = 0;
    TRY(DISPATCH(prefill, f, tokens, T, logits, sink, e));
    f->pos = T;
    return QD_OK;
}

extern "C" int qd_fused_decode(qd_fused *f, int32_t token, float *logits, qd_tap_sink *sink, qd_err *e) {
    if (f->pos >= f->max_seq)
        return qd_errf(e, QD_EINPUT, "fused: decode at position %d: the KV cache holds max_seq %d positions", f->pos,
                       f->max_seq);
    if (token < 0 || token >= f->V)
        return qd_errf(e, QD_EINPUT, "fused: token %d is outside the vocabulary [0, %d)", token, f->V);
    return DISPATCH(decode, f, token, logits, sink, e);
}

extern "C" int qd_fused_timeline_built(void) {
#ifdef QD_TIMELINE
    return 1;
#else
    return 0;
#endif
}

extern "C" int qd_fused_decode_timeline(qd_fused *f, int32_t token, qd_tl_rec *recs, int cap, int *n, qd_err *e) {
    *n = 0;
#ifndef QD_TIMELINE
    (void)f, (void)token, (void)recs, (void)cap;
    return qd_errf(e, QD_EINPUT, "fused: this build has no timeline (configure with -Dtimeline=true)");
#else
    if (f->act != QD_ACT_BF16 || !f->custom_decode || f->fault.kind != QD_FAULT_NONE)
        return qd_errf(e, QD_EINPUT, "fused: the timeline covers the custom bf16 decode without a fault");
    static const unsigned zero = 0;
    CUDA_CHECK(cudaStreamSynchronize(f->stream));
    CUDA_CHECK(cudaMemcpyToSymbol(qd_tl_count, &zero, sizeof zero));
    TRY(qd_fused_decode(f, token, NULL, NULL, e));
    CUDA_CHECK(cudaStreamSynchronize(f->stream));
    unsigned count = 0;
    CUDA_CHECK(cudaMemcpyFromSymbol(&count, qd_tl_count, sizeof count));
    if (count > QD_TL_MAX)
        return qd_errf(e, QD_EINPUT, "fused: the step wrote %u timeline records, the buffer holds %d", count,
                       QD_TL_MAX);
    if ((int)count > cap)
        return qd_errf(e, QD_EINPUT, "fused: the step wrote %u timeline records, room for %d", count, cap);
    qd_tl_dev *d = (qd_tl_dev *)qd_alloc((size_t)(count ? count : 1) * sizeof *d, e); /* (count) */
    if (!d) return QD_ERUNTIME;
    cudaError_t err = cudaMemcpyFromSymbol(d, qd_tl_buf, (size_t)count * sizeof *d);
    if (err != cudaSuccess) {
        free(d);
        return qd_errf(e, QD_ERUNTIME, "%s:%d: cudaMemcpyFromSymbol(qd_tl_buf): %s", __FILE__, __LINE__,
                       cudaGetErrorName(err));
    }
    unsigned long long t0 = ~0ull;
    for (unsigned i = 0; i < count; i++) t0 = d[i].start < t0 ? d[i].start : t0;
    for (unsigned i = 0; i < count; i++) {
        qd_tl_rec *r = &recs[i];
        r->launch = d[i].launch, r->block = d[i].block, r->sm = d[i].sm;
        r->start = (double)(d[i].start - t0) * 1e-3;
        r->wait = (double)(d[i].wait - t0) * 1e-3;
        r->ready = (double)(d[i].ready - t0) * 1e-3;
        r->end = (double)(d[i].end - t0) * 1e-3;
        r->mark = d[i].mark ? (double)(d[i].mark - t0) * 1e-3 : -1;
    }
    free(d);
    *n = (int)count;
    return QD_OK;
#endif
}
