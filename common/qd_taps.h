/* qd_taps.h: the named intermediate tensors ("taps") every backend reports, in execution order.
 *
 * Names and shapes are the HDF5 schema v1 contract (docs/SCHEMA.md); the same names are used in code,
 * HDF5, JSON and docs. A backend may omit a tap it does not have; it never renames one.
 * Model-level taps carry layer = -1. All tap data is float32, row-major, T rows first. */
#ifndef QD_TAPS_H
#define QD_TAPS_H

#include <stdint.h>

#include "qd_config.h"

typedef enum {
    QD_TAP_ATTN_NORM = 0,  /* (T, C)          RMSNorm(x) * input_layernorm */
    QD_TAP_Q_PROJ,         /* (T, NH*HD) */
    QD_TAP_K_PROJ,         /* (T, NKV*HD) */
    QD_TAP_V_PROJ,         /* (T, NKV*HD) */
    QD_TAP_Q_NORM,         /* (T, NH, HD)     per-head RMSNorm * q_norm, before RoPE */
    QD_TAP_K_NORM,         /* (T, NKV, HD) */
    QD_TAP_Q_ROPE,         /* (T, NH, HD)     rotate-half RoPE */
    QD_TAP_K_ROPE,         /* (T, NKV, HD) */
    QD_TAP_ATTN,           /* (T, NH*HD)      attention output before o_proj */
    QD_TAP_O_PROJ,         /* (T, C) */
    QD_TAP_ATTN_RESIDUAL,  /* (T, C)          x + o_proj */
    QD_TAP_MLP_NORM,       /* (T, C) */
    QD_TAP_GATE_PROJ,      /* (T, I) */
    QD_TAP_UP_PROJ,        /* (T, I) */
    QD_TAP_ACT,            /* (T, I)          silu(gate) * up */
    QD_TAP_DOWN_PROJ,      /* (T, C) */
    QD_TAP_OUT,            /* (T, C)          layer output */
    QD_NUM_LAYER_TAPS
} qd_layer_tap;

typedef enum {
    QD_TAP_EMBED = 0,      /* (T, C) */
    QD_TAP_FINAL_NORM,     /* (T, C) */
    QD_TAP_LOGITS,         /* (T, V) */
    QD_NUM_MODEL_TAPS
} qd_model_tap;

const char *qd_layer_tap_name(int tap);
const char *qd_model_tap_name(int tap);
/* Index of a layer tap by name, or -1. */
int qd_layer_tap_index(const char *name);
int qd_model_tap_index(const char *name);

/* Shape of a tap for T tokens; returns ndim (2 or 3). */
int qd_layer_tap_shape(const qd_config *c, int tap, int64_t T, int64_t shape[3]);
int qd_model_tap_shape(const qd_config *c, int tap, int64_t T, int64_t shape[3]);

/* Where taps go. emit() is called once per tap in execution order; layer is -1 for model-level taps.
 * data is only valid during the call (the sink copies what it keeps). A non-zero return (QD_ERUNTIME,
 * e.g. an HDF5 write failure) stops the backend, which returns that code. */
typedef struct qd_tap_sink {
    int (*emit)(struct qd_tap_sink *self, int layer, const char *name, const float *data, int ndim,
                const int64_t *shape);
    void *ctx;
} qd_tap_sink;

#endif
