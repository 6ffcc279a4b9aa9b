/* qd_taps.h: the named intermediate tensors ("taps") every backend reports, in execution order.
 *
 * Names and shapes are the HDF5 schema v1 contract (docs/SCHEMA.md); the same names are used in code,
 * HDF5, JSON and docs. A backend may omit a tap it does not have; it never renames one.
 * A tap is named by a qd_tap_id (below). All tap data is float32, row-major, T rows first. */
#ifndef QD_TAPS_H
#define QD_TAPS_H

#include <stddef.h>
#include <stdint.h>

#include "qd_config.h"
#include "qd_util.h"

typedef enum {
    QD_TAP_ATTN_NORM = 0, /* (T, C)          RMSNorm(x) * input_layernorm */
    QD_TAP_Q_PROJ,        /* (T, NH*HD) */
    QD_TAP_K_PROJ,        /* (T, NKV*HD) */
    QD_TAP_V_PROJ,        /* (T, NKV*HD) */
    QD_TAP_Q_NORM,        /* (T, NH, HD)     per-head RMSNorm * q_norm, before RoPE */
    QD_TAP_K_NORM,        /* (T, NKV, HD) */
    QD_TAP_Q_ROPE,        /* (T, NH, HD)     rotate-half RoPE */
    QD_TAP_K_ROPE,        /* (T, NKV, HD) */
    QD_TAP_ATTN,          /* (T, NH*HD)      attention output before o_proj */
    QD_TAP_O_PROJ,        /* (T, C) */
    QD_TAP_ATTN_RESIDUAL, /* (T, C)          x + o_proj */
    QD_TAP_MLP_NORM,      /* (T, C) */
    QD_TAP_GATE_PROJ,     /* (T, I) */
    QD_TAP_UP_PROJ,       /* (T, I) */
    QD_TAP_ACT,           /* (T, I)          silu(gate) * up */
    QD_TAP_DOWN_PROJ,     /* (T, C) */
    QD_TAP_OUT,           /* (T, C)          layer output */
    QD_NUM_LAYER_TAPS
} qd_layer_tap;

typedef enum {
    QD_TAP_EMBED = 0,  /* (T, C) */
    QD_TAP_FINAL_NORM, /* (T, C) */
    QD_TAP_LOGITS,     /* (T, V) */
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

/* A tap's identity, carried from the backend through the sink, the tap store and the comparator's rows to
 * the writers; names appear only where text does (HDF5 paths, JSON, terminal output, parsing input).
 * pos says where the tap sits in a run: embed before the layers, layer n, or the head after them. */
typedef enum { QD_POS_EMBED = 0, QD_POS_LAYER = 1, QD_POS_HEAD = 2 } qd_tap_pos;

typedef struct {
    qd_tap_pos pos;
    int layer; /* QD_POS_LAYER: the layer; -1 otherwise (the model-level layer of JSON, HDF5 tables, tolerance
                  files) */
    int tap;   /* qd_layer_tap for QD_POS_LAYER, else qd_model_tap (QD_TAP_EMBED for QD_POS_EMBED) */
} qd_tap_id;

/* Every tap kind, layer taps first, then model taps: the size of arrays indexed by qd_tap_id_kind. */
#define QD_NUM_TAP_KINDS (QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS)

qd_tap_id qd_tap_layer(int layer, int tap); /* a qd_layer_tap of layer `layer` */
qd_tap_id qd_tap_model(int tap);            /* embed (QD_POS_EMBED), final_norm or logits (QD_POS_HEAD) */
/* 1 when pos, layer and tap are consistent (layer >= 0 only for QD_POS_LAYER, tap in range for the pos). */
int qd_tap_id_valid(qd_tap_id id);
int qd_tap_id_equal(qd_tap_id a, qd_tap_id b);
/* Execution order: embed, layer 0's taps in qd_layer_tap order, ..., then final_norm, logits. <0, 0, >0. */
int qd_tap_id_cmp(qd_tap_id a, qd_tap_id b);
/* The tap's schema name ("k_norm", "embed"); "?" for an invalid id. */
const char *qd_tap_id_name(qd_tap_id id);
/* The per-layer table's row label: "embed", the layer number ("3"), or "head". buf (n) holds it. */
const char *qd_tap_id_pos_label(qd_tap_id id, char *buf, size_t n);
/* 0..QD_NUM_TAP_KINDS-1, the layer ignored: layer taps first, then model taps. */
int qd_tap_id_kind(qd_tap_id id);
/* Shape of the tap for T rows; returns ndim (2 or 3). */
int qd_tap_id_shape(const qd_config *c, qd_tap_id id, int64_t T, int64_t shape[3]);
/* From a name: layer >= 0 looks among the layer taps, layer < 0 among the model taps. 0 with *out set, or
 * -1 when the name is not such a tap. */
int qd_tap_id_parse(const char *name, int layer, qd_tap_id *out);

/* Where taps go. emit() is called once per tap in execution order. data is only valid during the call
 * (the sink copies what it keeps). A failing sink fills e (one line naming what failed) and returns its
 * code (QD_ERUNTIME, e.g. an HDF5 write failure); the backend then stops and returns that code, e as the
 * sink left it. */
typedef struct qd_tap_sink {
    int (*emit)(struct qd_tap_sink *self, qd_tap_id id, const float *data, int ndim, const int64_t *shape, qd_err *e);
    void *ctx;
} qd_tap_sink;

/* Every backend reports a tap through this: data holds T rows of the tap's shape (qd_tap_id_shape). QD_OK
 * without a sink; otherwise the sink's code, with e filled (by the sink, or here naming the tap when a sink
 * failed without saying why). */
int qd_tap_emit(qd_tap_sink *s, const qd_config *c, qd_tap_id id, const float *data, int64_t T, qd_err *e);

#endif
