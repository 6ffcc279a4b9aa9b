/* qd_weights.h: every Qwen3 tensor, checked against the config by name, dtype and shape.
 *
 * Two ways to hold them:
 *   qd_weights_load  every tensor upcast to fp32 in one allocation (4 bytes a parameter: an 8B model needs
 *                    32 GB). For whoever reads the float pointers: the fused path's upload, tests, repros.
 *   qd_weights_map   the checkpoint stays memory-mapped: the matrices (embedding, projections, lm_head) are
 *                    read in place in their stored dtype through qd_weights_mat, each value upcast to fp32
 *                    as it is used (exact for BF16 and F16), and only the 1-D norm weights are upcast to
 *                    fp32. Their float pointers are NULL. The reference and emu run this way, so peak memory
 *                    is the activations and the KV cache plus the pages of the mapping in use (a backend
 *                    gives a layer's pages back with qd_weights_release_layer once it is done with it).
 * qd_weights_mat serves both: a matrix's float pointer when it is set, else its view into the mapping.
 *
 * Shapes are in the HF (out, in) layout. A mismatch is QD_EINPUT with the file, the tensor name,
 * "Expected: [..]" and "Actual: [..]". Missing tensors, unexpected extra tensors (e.g. biases, which
 * Qwen3 does not have) and dtypes other than F32/F16/BF16 are refused by name. */
#ifndef QD_WEIGHTS_H
#define QD_WEIGHTS_H

#include "qd_config.h"
#include "qd_safetensors.h"

typedef struct {
    float *input_layernorm;          /* (C) */
    float *q_proj;                   /* (NH*HD, C) */
    float *k_proj;                   /* (NKV*HD, C) */
    float *v_proj;                   /* (NKV*HD, C) */
    float *q_norm;                   /* (HD) */
    float *k_norm;                   /* (HD) */
    float *o_proj;                   /* (C, NH*HD) */
    float *post_attention_layernorm; /* (C) */
    float *gate_proj;                /* (I, C) */
    float *up_proj;                  /* (I, C) */
    float *down_proj;                /* (C, I) */
} qd_layer_weights;

/* A weight matrix as stored: fp32 values, or a checkpoint's BF16/F16/F32 bytes in place in the mapping
 * (little-endian, possibly unaligned). data NULL: the matrix is not held. */
typedef struct {
    const void *data;
    qd_dtype dtype;
} qd_wview;

/* The matrices qd_weights_mat serves: a layer's seven projections, then the model's two. */
typedef enum {
    QD_WM_Q_PROJ,
    QD_WM_K_PROJ,
    QD_WM_V_PROJ,
    QD_WM_O_PROJ,
    QD_WM_GATE_PROJ,
    QD_WM_UP_PROJ,
    QD_WM_DOWN_PROJ,
    QD_WM_LAYER_MATS, /* count of the per-layer ones */
    QD_WM_EMBED = QD_WM_LAYER_MATS,
    QD_WM_LM_HEAD
} qd_wmat;

typedef struct {
    qd_config cfg;
    char *config_json;        /* raw config.json text (for the dump) */
    char *dir;                /* checkpoint directory */
    qd_dtype src_dtype;       /* dtype of the checkpoint's tensors (of the embedding) */
    float *embed;             /* (V, C) model.embed_tokens.weight */
    qd_layer_weights *layers; /* (L) */
    float *norm;              /* (C) model.norm.weight */
    float *lm_head;           /* (V, C) lm_head.weight, or == embed when tied */
    /* private */
    float *mem; /* one allocation holding every fp32 tensor (llm.c style); mapped: the norms only */
    size_t mem_floats;
    qd_st *st;                /* mapped: the open checkpoint, else NULL */
    const qd_tensor **mapped; /* mapped: (L * QD_WM_LAYER_MATS + 2) each matrix's tensor, in qd_wmat order */
} qd_weights;

/* Loads DIR (config.json + safetensors) into w, every tensor upcast to fp32. On failure w is left freed. */
int qd_weights_load(const char *dir, qd_weights *w, qd_err *e);

/* Binds DIR's tensors to w with the same checks as qd_weights_load, the matrices left in place in the
 * mapping (see above). On failure w is left freed. */
int qd_weights_map(const char *dir, qd_weights *w, qd_err *e);

/* Matrix m of layer `layer` (ignored for QD_WM_EMBED / QD_WM_LM_HEAD): its float pointer as an F32 view when
 * set, else its view into the mapping ({NULL} when neither). lm_head of a tied model is the embedding. */
qd_wview qd_weights_mat(const qd_weights *w, int layer, qd_wmat m);

/* Tells the kernel the mapped pages of a matrix (qd_weights_release) or of a layer's seven
 * (qd_weights_release_layer) are not needed for now: they leave the resident set and are read again from
 * the file (the page cache) when next used. Values are unchanged; no-op for fp32 matrices. */
void qd_weights_release(const qd_weights *w, int layer, qd_wmat m);
void qd_weights_release_layer(const qd_weights *w, int layer);

/* Upcasts n values starting at element `first` of a view to fp32 (exact): dst (n). */
void qd_wview_to_f32(qd_wview v, size_t first, size_t n, float *dst);

/* 1 when every value of w is a bf16 value: its fp32 tensors hold bf16 values (a NaN never counts) and its
 * mapped matrices are BF16. */
int qd_weights_all_bf16(const qd_weights *w);

/* An fp32 copy of w (every tensor in one allocation, as qd_weights_load makes): for a consumer of the float
 * pointers given mapped weights. out owns its memory; the config is copied, config_json and dir are not. */
int qd_weights_to_f32(const qd_weights *w, qd_weights *out, qd_err *e);

/* Allocates zeroed weights for a config without any file (unit tests, synthetic models). QD_ERUNTIME
 * with e filled when out of memory; w is then left freed. */
int qd_weights_alloc(qd_weights *w, const qd_config *c, qd_err *e);

void qd_weights_free(qd_weights *w);

#endif
