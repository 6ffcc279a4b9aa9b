/* qd_emu.h: `emu`, the fused path's precision contract (docs/PRECISION.md) executed on the CPU.
 *
 * bf16 weights, fp32 arithmetic and accumulation, and every tap rounded to the activation dtype where the
 * fused kernels store it, with consumers reading the rounded value. With emu, a whole ref-vs-bf16
 * comparison runs without a GPU, and on a GPU the three-way split ref / emu / fused separates the rounding
 * error the contract causes (ref vs emu) from a kernel bug (emu vs fused).
 * Stepped like the reference (qd_ref.h): embed, layer(i, h_in, pos0), head. */
#ifndef QD_EMU_H
#define QD_EMU_H

#include <stddef.h>
#include <stdint.h>

#include "qd_act.h"
#include "qd_fault.h"
#include "qd_taps.h"
#include "qd_weights.h"

typedef struct qd_emu qd_emu;

/* Precision points: the places where the contract rounds (docs/PRECISION.md, "Per-op precision"), each of
 * which can be kept in fp32 while everything else stays in the activation dtype (qd_emu_set_fp32_points),
 * to ask which rounding a divergence needs (compare/qd_bisect.h). A point covers its op in every layer.
 * Keeping a point in fp32 runs that op with fp32 activations: its output is not rounded, and whatever the op
 * does in the activation type (the norm-sumsq-lowp accumulator) is fp32 too, as in an fp32 run. Listed in
 * execution order; bit p of a mask is point p. */
typedef enum {
    QD_PT_RESIDUAL =
        0, /* the residual stream as stored: embed, each layer's and the head's input, attn_residual, out */
    QD_PT_ATTN_NORM,
    QD_PT_Q_PROJ,
    QD_PT_K_PROJ,
    QD_PT_V_PROJ,
    QD_PT_Q_NORM,
    QD_PT_K_NORM,
    QD_PT_Q_ROPE,
    QD_PT_K_ROPE,  /* also the K cache, which holds k_rope as stored (the V cache holds v_proj) */
    QD_PT_QK,      /* the scores q.k: fp32 in the contract already, so no rounding to remove */
    QD_PT_SOFTMAX, /* P = A(exp(s - m)), the P.V operand */
    QD_PT_ATTN,    /* the P.V output, tap attn */
    QD_PT_O_PROJ,
    QD_PT_MLP_NORM,
    QD_PT_GATE_PROJ,
    QD_PT_UP_PROJ,
    QD_PT_ACT, /* silu(gate) * up */
    QD_PT_DOWN_PROJ,
    QD_PT_FINAL_NORM,
    QD_NUM_PRECISION_POINTS
} qd_precision_point;

typedef struct {
    const char *name;  /* "k_norm", "softmax": the tap's name where the point is a tap's rounding */
    const char *alias; /* another accepted spelling ("pv"), or NULL */
    int rounds;        /* 0: the contract keeps this value in fp32 already (qk), keeping it in fp32 changes nothing */
    int tap;           /* the first layer tap (qd_layer_tap) the point's rounding reaches within a layer: -1 for
                          the residual stream (the layer's input), QD_NUM_LAYER_TAPS for final_norm (the head) */
    const char *doc;   /* one line: what is rounded there */
} qd_precision_point_info;

/* The point's row of the table; NULL outside 0..QD_NUM_PRECISION_POINTS-1. */
const qd_precision_point_info *qd_precision_point_info_of(int p);
/* Every point whose rounding can be kept in fp32 (rounds == 1). */
unsigned qd_precision_points_all(void);
/* "k_norm,softmax" -> a mask. Names are matched ignoring case and '_' ("knorm"), or by alias; "all" names
 * every point, "none" or "" none. QD_EINPUT naming the bad word and listing the names. */
int qd_precision_points_parse(const char *list, unsigned *mask, qd_err *e);
/* The mask as "k_norm,softmax" in point order ("none" for 0), truncated to n. */
void qd_precision_points_format(unsigned mask, char *buf, size_t n);

/* The weights as bf16 (the fused path's weight dtype): when every value of w is a bf16 value already (a
 * bf16 checkpoint), emu reads w in place and w must outlive it, unchanged (as the reference's weights
 * must); otherwise it keeps a rounded copy. fault: a fault of the catalog to inject (qd_fault.h), NULL
 * for none. NULL with e set on failure. */
qd_emu *qd_emu_create(const qd_weights *w, qd_act_dtype act, int threads, int max_seq, const qd_fault *fault,
                      qd_err *e);
void qd_emu_free(qd_emu *m);
/* Keeps the precision points of mask (bit p: qd_precision_point p) in fp32 from the next step on; 0 (the
 * default) is the contract itself, bitwise. */
void qd_emu_set_fp32_points(qd_emu *m, unsigned mask);
/* 1 when m reads the caller's weights in place, 0 when it holds a rounded copy. */
int qd_emu_shares_weights(const qd_emu *m);

/* As qd_ref_embed / qd_ref_layer / qd_ref_head: QD_OK, or an error code with e filled (by emu, or by a
 * failing sink, which stops the step). h_in is rounded to the activation dtype on entry (what storing it
 * on the device would do), so another backend's fp32 hidden state can be fed in. */
int qd_emu_embed(qd_emu *m, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e);
int qd_emu_layer(qd_emu *m, int layer, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink, qd_err *e);
int qd_emu_head(qd_emu *m, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e);

#endif
