/* qd_ref.h: the fp32 C reference of the whole Qwen3 model: the oracle everything is measured against.
 *
 * Naive and readable on purpose (see reference.c's opening paragraph). Stepped layer by layer so a
 * comparator can run two backends in lockstep:
 *     qd_ref_embed(tokens)          -> h (T, C)
 *     qd_ref_layer(l, h_in, pos0)   -> h_out (T, C), appending the layer's K/V for positions
 *                                      pos0..pos0+T-1 to the cache and attending over 0..pos0+T-1
 *     qd_ref_head(h)                -> logits (T, V)
 * Prefill is pos0 = 0 with T prompt tokens; a decode step is T = 1 with pos0 = tokens so far.
 *
 * Determinism: bitwise identical for any thread count. Every output element is computed by one thread
 * with a fixed summation order; threads only split independent output rows.
 * Accumulation: QD_ACCUM_F32 (default) accumulates dot products and reductions in float;
 * QD_ACCUM_F64 accumulates them in double and rounds once to float (a tighter oracle). */
#ifndef QD_REF_H
#define QD_REF_H

#include <stdint.h>

#include "qd_taps.h"
#include "qd_weights.h"

typedef enum { QD_ACCUM_F32 = 0, QD_ACCUM_F64 = 1 } qd_accum;

typedef struct {
    int threads; /* <= 0: OpenMP's default */
    qd_accum accum;
    int max_seq; /* KV cache capacity in positions (prompt + decode steps) */
} qd_ref_opts;

typedef struct qd_ref qd_ref;

/* Creates a reference model over loaded weights (borrowed, must outlive it). NULL with e set on failure
 * (QD_EINPUT for max_seq <= 0). */
qd_ref *qd_ref_create(const qd_weights *w, const qd_ref_opts *opts, qd_err *e);
void qd_ref_free(qd_ref *r);

/* Forgets every cached position (a new prompt). */
void qd_ref_reset(qd_ref *r);

/* Token ids must be in [0, V) (checked by the caller); sink may be NULL. Return QD_OK, QD_EINPUT when
 * the cache would overflow (e names the step), QD_ERUNTIME when scratch memory runs out, or the sink's
 * code with e as the sink filled it (the step stops at the failing tap). */
int qd_ref_embed(qd_ref *r, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e);
int qd_ref_layer(qd_ref *r, int layer, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink, qd_err *e);
int qd_ref_head(qd_ref *r, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e);

/* Conveniences over the three steps above. prefill resets the cache and runs positions 0..T-1;
 * decode runs one token at the next position. logits: (T, V) / (V). */
int qd_ref_prefill(qd_ref *r, const int32_t *tokens, int T, float *logits, qd_tap_sink *sink, qd_err *e);
int qd_ref_decode(qd_ref *r, int32_t token, float *logits, qd_tap_sink *sink, qd_err *e);
int qd_ref_position(const qd_ref *r); /* tokens in the cache */

#endif
