/* qd_bisect.h: the precision bisection, "which roundings does this divergence need?".
 *
 * Beside the sweep (qd_sweep.h: does fp32 everywhere fix it?), this names the smallest set of emu's
 * precision points (qd_emu.h: attn_norm, q_proj, ..., k_norm, softmax, attn, ..., the residual stream)
 * whose outputs must stay in fp32 for the flagged tap (step, layer, tap, mode of the run's first
 * divergence) to pass again, everything else staying in the activation dtype. The pair is rerun with
 * B = emu and a mask of points kept in fp32, judged with the run's own tolerances (the dtype does not
 * change, so its tolerances still apply) by the same verdict as the run. When B is fused, emu stands in for
 * it as its precision model (docs/PRECISION.md): a divergence emu does not reproduce is not the contract's.
 *
 * The search, each rerun stopping after the flagged tap's layer and step:
 *   1. every point that can reach the flagged tap in fp32: if the tap still fails, no set of precision
 *      changes fixes it, a bug and not precision; stop;
 *   2. each of those points alone: one that fixes it is a smallest set;
 *   3. otherwise delta debugging from the whole set: remove chunks (halving down to single points, the
 *      points that helped least alone first) while the tap still passes, to a 1-minimal set (removing any
 *      one point makes it fail again), within a bound on the reruns. */
#ifndef QD_BISECT_H
#define QD_BISECT_H

#include <stdint.h>
#include <stdio.h>

#include "qd_backend.h"
#include "qd_compare.h"

/* What the search concluded. */
typedef enum {
    QD_BISECT_MINIMAL = 0,    /* set: a 1-minimal set of points whose fp32 fixes the tap */
    QD_BISECT_NOT_MINIMAL,    /* set fixes the tap; the rerun bound ran out before it was shown 1-minimal */
    QD_BISECT_NO_SET,         /* every reachable point in fp32 still fails: a bug, not precision */
    QD_BISECT_NOT_REPRODUCED, /* emu standing in for fused passes the tap as it is: the divergence is fused's
                                 own (a kernel departing from the contract), not the contract's rounding */
} qd_bisect_outcome;

/* One tried mask. */
typedef struct {
    unsigned fp32;     /* the points kept in fp32 (qd_precision_point bits) */
    const char *stage; /* "run" (the run's own row), "baseline", "all", "single", "reduce" */
    int fixed;         /* the flagged tap passes and no row before it (same mode) fails */
    int earlier_fail;  /* a row before the flagged tap fails: the divergence moved earlier */
    double rel_l2;     /* the flagged tap's */
    unsigned verdict;  /* its QD_V_* mask */
} qd_bisect_try;

#define QD_BISECT_MAX_TRIED 256
#define QD_BISECT_DEFAULT_RERUNS 64 /* a model's 18 points: 1 + 1 + 18 singles leave ~40 for the reduction */

typedef struct {
    qd_bisect_outcome outcome;
    int step; /* the flagged tap */
    qd_tap_id id;
    qd_mode mode;
    int stand_in;        /* B was fused: emu reran as its precision model */
    char name_a[32];     /* the rerun pair: A as run, B = emu */
    unsigned candidates; /* the points that round and can reach the flagged tap (all tried in stage 1) */
    unsigned set;        /* MINIMAL, NOT_MINIMAL: the set found; else 0 */
    unsigned also_alone; /* other single points that fix the tap alone (MINIMAL with a one-point set) */
    int reruns;          /* lockstep reruns made (the run's own row is not one) */
    qd_bisect_try tried[QD_BISECT_MAX_TRIED]; /* (n_tried) in the order tried */
    int n_tried;
} qd_bisect_result;

typedef struct {
    const char *name_a, *name_b; /* the run's pair; name_b "emu" or "fused" */
    qd_backend_opts opts;        /* the run's: threads, accum, act, fault (B only), taps_all; max_seq and
                                    fp32_points are set here (fp32_points must be 0) */
    const int32_t *tokens;
    int T;
    int decode;
    const qd_tolerances *tol;  /* the run's tolerances */
    qd_mode locate;            /* the run's; isolated: a teacher-forced instance is rerun too */
    const qd_tap_row *flagged; /* the run's first divergence (its step, tap and mode) */
    int max_reruns;            /* <= 0: QD_BISECT_DEFAULT_RERUNS */
    /* called before each rerun (NULL: none), e.g. for a progress line */
    void (*progress)(void *ctx, int rerun, unsigned fp32);
    void *progress_ctx;
} qd_bisect_opts;

/* Runs the search over loaded weights (borrowed). Returns QD_OK whatever the outcome, or an error code
 * with e set: QD_EINPUT when B is neither emu nor fused, or opts.fp32_points is not 0. */
int qd_precision_bisect(const qd_weights *w, const qd_bisect_opts *o, qd_bisect_result *out, qd_err *e);

/* The points that round and can change the tap (step, id) in mode: within a layer, those before the tap;
 * from an earlier layer (free-running) or an earlier step, every layer point; final_norm only for the head's
 * taps. */
unsigned qd_bisect_reachable(int step, qd_tap_id id, qd_mode mode);

/* The name of precision point p (emu's qd_precision_point: bit p of a mask), NULL when there is none,
 * for the writers (reports/ reads compare/, not emu/). */
const char *qd_bisect_point_name(int p);

const char *qd_bisect_outcome_name(qd_bisect_outcome o); /* "minimal", "not-minimal", "no-set", "not-reproduced" */

/* The block printed after the report: what was rerun, the tried sets in short, and the verdict line
 * ("precision bisect verdict: ..."). */
void qd_bisect_print(const qd_bisect_result *r, FILE *f);

#endif
