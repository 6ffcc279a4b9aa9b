/* qd_fault.h: the fault catalog. Each fault is a bug class seen in real inference engines, injected where
 * such a bug really lives (inside the op or kernel, never by editing an output afterwards), so the
 * harness can be shown to find real bugs at the right place: --inject NAME[@LAYER].
 * Backends that implement faults: emu (CPU) and fused (CUDA). */
#ifndef QD_FAULT_H
#define QD_FAULT_H

#include "qd_util.h"

typedef enum {
    QD_FAULT_NONE = 0,
    QD_FAULT_KNORM_MUL,        /*  1 k_norm as an element-wise multiply by its weight, no normalisation */
    QD_FAULT_ROPE_INTERLEAVED, /*  2 RoPE pairs 2i/2i+1 (GPT-J layout) instead of rotate-half */
    QD_FAULT_ROPE_FREQ_BF16,   /*  3 RoPE inv_freq stored in bf16 */
    QD_FAULT_GQA_MOD,          /*  4 head h reads kv head h mod n_kv instead of h / group */
    QD_FAULT_NO_CAUSAL,        /*  5 causal mask missing */
    QD_FAULT_SOFTMAX_NO_MAX,   /*  6 softmax without max subtraction */
    QD_FAULT_NO_SCALE,         /*  7 attention scale head_dim^-0.5 missing */
    QD_FAULT_NORM_SUMSQ_LOWP,  /*  8 RMSNorm sum of squares accumulated in the activation dtype */
    QD_FAULT_EPS_OUTSIDE,      /*  9 eps added outside the square root */
    QD_FAULT_RESIDUAL_DROP,    /* 10 the attention residual add dropped */
    QD_FAULT_ACT_GELU,         /* 11 SiLU replaced by GELU */
    QD_FAULT_KV_POS,           /* 12 a decode step writes its K/V one position early */
    QD_FAULT_ONLINE_RESCALE,   /* 13 the seed: online softmax resets its row sum per key tile (no rescale) */
    QD_NUM_FAULTS
} qd_fault_kind;

typedef struct {
    qd_fault_kind kind;
    int layer; /* the layer it is injected in; -1: every layer */
} qd_fault;

typedef struct {
    const char *name;        /* the --inject name */
    const char *description; /* one line */
    const char *first_tap;   /* the tap where it first shows */
    int decode_only;         /* shows only in decode steps */
} qd_fault_info;

const qd_fault_info *qd_fault_info_of(qd_fault_kind k);

/* "NAME" or "NAME@LAYER"; an unknown name is QD_EINPUT listing the known ones. */
int qd_fault_parse(const char *spec, qd_fault *f, qd_err *e);

/* Whether the fault f is active in layer l. */
static inline int qd_fault_at(const qd_fault *f, qd_fault_kind k, int l) {
    return f && f->kind == k && (f->layer < 0 || f->layer == l);
}

#endif
