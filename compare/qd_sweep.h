/* qd_sweep.h: the precision sweep, "is it the precision contract or a bug?".
 *
 * Given a pair that diverged, the backend under test (B) is run again with its activations in fp32, fp16
 * and bf16: same weights, same fault (if one is injected), same prompt. Each pair's tolerances are
 * re-derived for that pair by the bless step (qd_bless: the clean pair over N prompts, margin x the worst
 * error), because a bf16 gate would hide nothing in fp32 and an fp32 gate would fail every bf16 run. Which
 * dtypes make the divergence disappear classifies it (docs/FAULTS.md gives the reasoning):
 *
 *   fp32 fp16 bf16
 *    -    -    -    clean          no divergence in any dtype
 *    -    x    x    precision      the activation dtype's precision (a value is stored too coarsely)
 *    -    x    -    range-fp16     fp16's range: something exceeds 65504 (bf16 has fp32's range)
 *    -    -    x    mantissa-bf16  bf16's 8-bit mantissa (fp16 keeps 11 bits)
 *    x    x    x    bug            diverges in every dtype: not explained by activation precision
 *    x    other     inconsistent   diverges in fp32 but not in a lower precision: a bug that rounding
 *                                  happens to hide somewhere; treat it as a bug
 *
 * When A is not the fp32 reference (e.g. emu vs fused), A is re-created in the same dtype as B, so the
 * pair keeps comparing like with like. */
#ifndef QD_SWEEP_H
#define QD_SWEEP_H

#include <stdint.h>
#include <stdio.h>

#include "qd_backend.h"
#include "qd_compare.h"

typedef enum {
    QD_SWEEP_CLEAN = 0,
    QD_SWEEP_PRECISION,
    QD_SWEEP_RANGE_FP16,
    QD_SWEEP_MANTISSA_BF16,
    QD_SWEEP_BUG,
    QD_SWEEP_INCONSISTENT,
} qd_sweep_class;

enum { QD_SWEEP_FP32 = 0, QD_SWEEP_FP16 = 1, QD_SWEEP_BF16 = 2, QD_SWEEP_NDTYPES = 3 };

typedef struct {
    char act[8];          /* "fp32", "fp16", "bf16" */
    int diverged;         /* a failing tap in the located mode */
    int step, layer, tap; /* the first divergence (tap: as qd_tap_row.tap); layer -1 for model taps */
    char tap_name[24];
    unsigned verdict; /* its QD_V_* mask */
    char reason[200]; /* qd_verdict_reason of that row */
} qd_sweep_entry;

typedef struct {
    qd_sweep_entry e[QD_SWEEP_NDTYPES]; /* indexed by QD_SWEEP_FP32 / FP16 / BF16 */
    qd_sweep_class cls;
} qd_sweep_result;

typedef struct {
    const char *name_a, *name_b; /* backends, e.g. "ref", "emu" */
    qd_backend_opts opts;        /* threads, accum, fault (B only), taps_all; act and max_seq are set here */
    const int32_t *tokens;
    int T;
    int decode;
    int calib_prompts; /* >= 1: prompts of the bless step per pair (5 is the selftest's) */
    double margin;     /* >= 1 */
    qd_mode locate;
    qd_progress *progress; /* one count per dtype (common/qd_progress.h); NULL: none */
} qd_sweep_opts;

/* Runs the sweep over the three dtypes. Returns QD_OK (whatever the class) or an error code with e set
 * (e.g. a clean pair that cannot be blessed because it is itself broken in some dtype). */
int qd_precision_sweep(const qd_weights *w, const qd_sweep_opts *o, qd_sweep_result *out, qd_err *e);

/* The class of a pattern of divergences, diverged[QD_SWEEP_FP32 / FP16 / BF16]. */
qd_sweep_class qd_sweep_classify(const int diverged[QD_SWEEP_NDTYPES]);
const char *qd_sweep_class_name(qd_sweep_class c); /* "clean", "precision", "range-fp16", ... */
const char *qd_sweep_class_text(qd_sweep_class c); /* one sentence saying what it means */

/* The per-dtype lines and the verdict line ("precision sweep verdict: <name>: <text>"). */
void qd_sweep_print(const qd_sweep_result *r, const qd_sweep_opts *o, FILE *f);

#endif
