/* qd_timeline.h: where a decode step's time goes, block by block (docs/FUSED.md, "Timeline").
 *
 * A build configured with `-Dtimeline=true` makes every block of the custom one-token chain (the staged
 * GEMVs, the attention kernel, the lm_head GEMV) stamp the GPU's global timer when it starts, when its
 * griddepcontrol.wait returns (the previous kernel has completed), when its inputs are ready (weights
 * landed in shared memory, prologue done) and when it ends; qd_fused_decode_timeline (qd_fused.h) replays
 * one step and returns those records. This module turns them into per-launch and per-kernel summaries:
 * plain C, no CUDA, so the arithmetic is tested on any machine. */
#ifndef QD_TIMELINE_H
#define QD_TIMELINE_H

#include "qd_util.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Launch ids of the chain: layer l's kernel s is l * QD_TL_SLOTS + s; the head (final norm + lm_head) is
 * n_layers * QD_TL_SLOTS. */
enum { QD_TL_QKV, QD_TL_ATTN, QD_TL_O, QD_TL_GATE_UP, QD_TL_DOWN, QD_TL_SLOTS };
#define QD_TL_KINDS (QD_TL_SLOTS + 1) /* the five per-layer kernels and the head */

/* One block of one launch; times in microseconds from the step's earliest block start. ready == wait for
 * a kernel with nothing to wait for after its dependency. mark: a midpoint of the kernel's own (the
 * attention: its split's partial stored and counted, the last block's combine after it), -1 for none. */
typedef struct {
    int launch, block, sm;
    double start, wait, ready, end, mark;
} qd_tl_rec;

/* One launch: its blocks' first and last times. */
typedef struct {
    int launch, layer; /* layer -1: the head */
    const char *kernel;
    int blocks;
    double start_first, start_last, wait_first, wait_last, ready_last, end_first, end_last;
    double mark_last; /* the latest mark of its blocks, -1 when none has one */
} qd_tl_launch;

/* One kernel over the layers: medians of its launches' (last end - first wait), (last end - last ready),
 * the gap from its last end to the next launch's first wait, (last wait - first wait: blocks that pass
 * their wait late) and (last end - first end: how long the last blocks run after the first is done). */
typedef struct {
    const char *kernel;
    int launches;
    double after_wait, after_ready, gap_to_next, wait_spread, tail;
    int marked;        /* launches with a mark */
    double after_mark; /* median over those of (last end - last mark); 0 when none */
} qd_tl_kind;

/* The kernel name of a launch id ("q/k/v", "attention", "o_proj", "gate/up", "down_proj", "head"), or NULL
 * for an id outside the chain of n_layers layers. */
const char *qd_tl_kernel(int launch, int n_layers);

/* Per-launch summaries of n records, in launch order, into out (at most cap); returns how many, or -1
 * with e filled: QD_EINPUT when a record's launch id lies outside the chain or cap is too small,
 * QD_ERUNTIME when out of memory. */
int qd_tl_launches(const qd_tl_rec *r, int n, int n_layers, qd_tl_launch *out, int cap, qd_err *e);

/* Per-kernel medians over the launches of qd_tl_launches (in launch order); out[k] for the kind k of
 * QD_TL_KINDS (k == QD_TL_SLOTS: the head). A kind without launches has launches 0 and zero times.
 * Returns QD_OK, or QD_ERUNTIME with e filled when out of memory. */
int qd_tl_kinds(const qd_tl_launch *l, int n, qd_tl_kind out[QD_TL_KINDS], qd_err *e);

#ifdef __cplusplus
}
#endif

#endif
