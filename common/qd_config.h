/* qd_config.h: the Qwen3 model configuration, read from a Hugging Face config.json.
 *
 * Both dialects are read (see docs/ARCHITECTURE.md and docs/QWEN3.md):
 *   released checkpoints:  "rope_theta": 1000000, "torch_dtype": "bfloat16"
 *   transformers 5.x:      "rope_parameters": {"rope_theta": ..., "rope_type": "default"}, "dtype": ...
 * Features this project does not implement are refused by name (QD_EINPUT): attention_bias true,
 * use_sliding_window true, rope_type other than "default", model_type other than "qwen3", MoE fields
 * (num_experts, num_experts_per_tok, moe_intermediate_size, ...). */
#ifndef QD_CONFIG_H
#define QD_CONFIG_H

#include "qd_util.h"

typedef struct {
    int vocab_size;              /* V */
    int hidden_size;             /* C */
    int intermediate_size;       /* I */
    int num_hidden_layers;       /* L */
    int num_attention_heads;     /* NH */
    int num_key_value_heads;     /* NKV; NH % NKV == 0 */
    int head_dim;                /* HD; NOT hidden_size / heads in general (0.6B: 128 vs 64) */
    int max_position_embeddings; /* 0 when absent */
    double rope_theta;           /* from either dialect */
    double rms_norm_eps;
    int tie_word_embeddings; /* 1: lm_head is model.embed_tokens.weight */
    char dtype[16];          /* "bfloat16", "float16", "float32" or "" when absent (informational) */
} qd_config;

/* Parses config.json text. `path` is only used in messages ("<path>: field 'x': ..."). Every required
 * field is checked for presence, type and range; head_dim defaults to hidden_size / heads only when
 * absent (as transformers does). */
int qd_config_parse(const char *json_text, const char *path, qd_config *c, qd_err *e);

/* The identity of the maths a config describes, for telling two models apart (tolerance files carry it):
 * FNV-1a 64 over the canonical text "qwen3;L=..;C=..;I=..;NH=..;NKV=..;HD=..;V=..;theta=..;eps=..;tied=.."
 * (integers in decimal, theta and eps as "%.17g"), written "fnv1a64:" + 16 hex digits. Left out: what does
 * not change a forward pass (max_position_embeddings, the stored dtype, the dialect, key order). */
#define QD_CONFIG_HASH_LEN 25 /* "fnv1a64:" + 16 + NUL */
void qd_config_hash(const qd_config *c, char out[QD_CONFIG_HASH_LEN]);

/* How many values a config's weights hold, by kind (doubles: a 32B model's counts pass 2^31). Every
 * count of weight bytes, memory or arithmetic derives from these. */
typedef struct {
    double layer_mats;  /* one layer's seven matrices: q, k, v, o, gate, up, down */
    double layer_norms; /* one layer's norm vectors: input, post-attention (C each), q_norm, k_norm (HD) */
    double embed;       /* the embedding (V x C); an untied lm_head holds as many again */
    double final_norm;  /* model.norm (C) */
} qd_param_counts;
qd_param_counts qd_config_params(const qd_config *c);

/* Reads and parses DIR/config.json. If text_out is not NULL it receives the raw text (malloc'd), which
 * the HDF5 dump stores verbatim as the root attribute config_json. */
int qd_config_load(const char *dir, qd_config *c, char **text_out, qd_err *e);

#endif
