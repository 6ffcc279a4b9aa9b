/* qd_emu.h: `emu`, the fused path's precision contract (docs/PRECISION.md) executed on the CPU.
 *
 * bf16 weights, fp32 arithmetic and accumulation, and every tap rounded to the activation dtype where the
 * fused kernels store it, with consumers reading the rounded value. With emu, a whole ref-vs-bf16
 * comparison runs without a GPU, and on a GPU the three-way split ref / emu / fused separates the rounding
 * error the contract causes (ref vs emu) from a kernel bug (emu vs fused).
 * Stepped like the reference (qd_ref.h): embed, layer(i, h_in, pos0), head. */
#ifndef QD_EMU_H
#define QD_EMU_H

#include <stdint.h>

#include "qd_act.h"
#include "qd_fault.h"
#include "qd_taps.h"
#include "qd_weights.h"

typedef struct qd_emu qd_emu;

/* The weights as bf16 (the fused path's weight dtype): when every value of w is a bf16 value already (a
 * bf16 checkpoint), emu reads w in place and w must outlive it, unchanged (as the reference's weights
 * must); otherwise it keeps a rounded copy. fault: a fault of the catalog to inject (qd_fault.h), NULL
 * for none. NULL with e set on failure. */
qd_emu *qd_emu_create(const qd_weights *w, qd_act_dtype act, int threads, int max_seq, const qd_fault *fault,
                      qd_err *e);
void qd_emu_free(qd_emu *m);
/* 1 when m reads the caller's weights in place, 0 when it holds a rounded copy. */
int qd_emu_shares_weights(const qd_emu *m);

/* As qd_ref_embed / qd_ref_layer / qd_ref_head: QD_OK, or an error code with e filled (by emu, or by a
 * failing sink, which stops the step). h_in is rounded to the activation dtype on entry (what storing it
 * on the device would do), so another backend's fp32 hidden state can be fed in. */
int qd_emu_embed(qd_emu *m, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e);
int qd_emu_layer(qd_emu *m, int layer, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink,
                 qd_err *e);
int qd_emu_head(qd_emu *m, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e);

#endif
