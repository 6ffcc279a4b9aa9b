/* qd_weights.h: every Qwen3 tensor, checked against the config by name, dtype and shape, upcast to fp32.
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
    float *mem; /* one allocation holding every tensor (llm.c style) */
    size_t mem_floats;
} qd_weights;

/* Loads DIR (config.json + safetensors) into w. On failure w is left freed. */
int qd_weights_load(const char *dir, qd_weights *w, qd_err *e);

/* Allocates zeroed weights for a config without any file (unit tests, synthetic models). QD_ERUNTIME
 * with e filled when out of memory; w is then left freed. */
int qd_weights_alloc(qd_weights *w, const qd_config *c, qd_err *e);

void qd_weights_free(qd_weights *w);

#endif
