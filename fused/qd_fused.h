/* qd_fused.h: the fused CUDA Qwen3 path (bf16, cuBLAS, fused kernels, CUDA graphs), the thing under test.
 * A C interface over fused.cu, stepped like the reference (qd_ref.h) so the comparator can run it in
 * lockstep, plus whole-prompt prefill and graph-replayed decode for speed.
 *
 * Numerics follow docs/PRECISION.md exactly (the same contract as `emu`). Taps are copied to the host
 * only when a sink is given (zero cost otherwise); a tap a kernel fuses away is absent, never faked,
 * unless taps_all selects the unfused variant of the same kernels.
 * Every CUDA / cuBLAS failure is QD_ERUNTIME with "file:line: call: error name". A missing device, a
 * device older than sm_80 or too little device memory (checked before the weights are uploaded) is
 * QD_ERUNTIME with a one-line message. */
#ifndef QD_FUSED_H
#define QD_FUSED_H

#include <stddef.h>
#include <stdint.h>

#include "qd_act.h"
#include "qd_fault.h"
#include "qd_taps.h"
#include "qd_timeline.h"
#include "qd_util.h"
#include "qd_weights.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_fused qd_fused;

/* Number of usable CUDA devices (0 when there is no driver or device); desc receives a short
 * description of device 0 ("NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB") when non-NULL. Never fails. */
int qd_fused_device_count(char *desc, size_t n);

typedef struct {
    qd_act_dtype act; /* activation dtype (bf16 default) */
    int max_seq;      /* KV cache capacity */
    int taps_all;     /* 1: unfused variant so every tap exists */
    int decode_gemv;  /* one-token decode (bf16): 0 the custom GEMV kernels (default), 1 cuBLAS; the
                           environment variable QD_FUSED_DECODE=cublas forces 1 (docs/FUSED.md) */
    qd_fault fault;   /* a fault of the catalog injected into the kernels that host it (docs/FAULTS.md);
                           kind QD_FAULT_NONE (zero) for none. A layer outside -1..L-1 or an unknown kind
                           is QD_EINPUT at create. With a fault, decode runs eagerly (no CUDA graph) */
} qd_fused_opts;

qd_fused *qd_fused_create(const qd_weights *w, const qd_fused_opts *opts, qd_err *e);
void qd_fused_free(qd_fused *f);

/* Stepped interface (host float32 hidden states, as qd_backend.h). h_in is rounded to the activation
 * dtype on upload. */
int qd_fused_embed(qd_fused *f, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e);
int qd_fused_layer(qd_fused *f, int layer, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink,
                   qd_err *e);
int qd_fused_head(qd_fused *f, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e);

/* Whole-model paths that keep everything on the device. prefill resets the cache and runs positions
 * 0..T-1 (logits (T, V) to the host when non-NULL); decode runs one token at the next position (logits
 * (V)), replaying a captured CUDA graph when sink is NULL. */
int qd_fused_prefill(qd_fused *f, const int32_t *tokens, int T, float *logits, qd_tap_sink *sink, qd_err *e);
int qd_fused_decode(qd_fused *f, int32_t token, float *logits, qd_tap_sink *sink, qd_err *e);
int qd_fused_position(const qd_fused *f);

/* One decode step, as qd_fused_decode without logits, with its block timeline (qd_timeline.h): up to cap
 * records into recs, their number in *n (all of them: more than cap is QD_EINPUT, nothing copied). Only
 * in a build configured with -Dtimeline=true, for the custom bf16 decode without a fault; otherwise
 * QD_EINPUT with the reason. The step itself is the graph replay qd_fused_decode runs. */
int qd_fused_decode_timeline(qd_fused *f, int32_t token, qd_tl_rec *recs, int cap, int *n, qd_err *e);
/* 1 when this build stamps timelines (-Dtimeline=true), else 0. */
int qd_fused_timeline_built(void);

#ifdef __cplusplus
}
#endif

#endif
