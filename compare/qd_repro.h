/* qd_repro.h: the first bad op as one small file, and its rerun without the checkpoint (docs/SCHEMA.md,
 * "Repro files"; docs/FAULTS.md, "Filing a kernel bug").
 *
 * When the replay verdict (compare/qd_replay.h) finds a first divergence, the writer keeps exactly what that
 * op needs to be judged again: its identity (step, layer, tap, positions pos0..pos0+T-1, the side and its
 * engine, precision and accumulation), the model's config.json, the op's inputs as the engine tapped them
 * (cut by qd_replay_reads_of: attn reads q_rope and the k_rope and v_proj history of every position; an
 * input the engine did not tap is replaced by what makes it, as replay goes through the missing op), the
 * weights those ops read (float32 holding the checkpoint's values), the engine's output, and the oracle's
 * and the contract's replays with the figures. A few hundred KB for a fixture's attention, one matrix for a
 * projection.
 *
 * The rerun reads that file alone: it replays the op with qd_replay (the same code the run judged by, so
 * the figures come out the same), judges the stored output, reruns the contract with a fault of the
 * catalog when asked, and runs the fused kernel (fused/qd_fused_ops.h) when the build has CUDA and a
 * device is present. */
#ifndef QD_REPRO_H
#define QD_REPRO_H

#include <stdint.h>
#include <stdio.h>

#include "qd_metrics.h"
#include "qd_replay.h"
#include "qd_weights.h"

#define QD_REPRO_SCHEMA "qwen3-diff-repro/1"

/* A request for a repro file, carried by qd_replay_judge.repro into the comparison. */
typedef struct qd_repro_req {
    const char *path;  /* the file; written to PATH.tmp.<pid> and renamed when complete */
    const char *model; /* provenance: the checkpoint directory ("" or NULL: unknown) */
    int written;       /* out: 1 once the file is there */
    char what[160];    /* out: "layer 1, attn of emu (side B)" */
} qd_repro_req;

/* The first divergence's op as the comparator holds it, right after its position was replayed. */
typedef struct {
    qd_tap_id id;
    int step, T, pos0;                      /* decode step (0: the prompt); rows; their first position */
    char side;                              /* 'A' or 'B' */
    const char *engine, *precision, *accum; /* accum NULL: f32 */
    const char *mode;                       /* "free" or "isolated" */
    const qd_weights *w;                    /* the checkpoint (its config_json is kept) */
    const qd_replay *rp;                    /* that side's replay */
    const qd_tap_source *src;               /* that side's taps of the position */
    const float *h_in;      /* (T, C) the position's input: the layer's, or the last layer's output for the
                                head; NULL when unknown */
    const int32_t *tokens;  /* (T) the step's token ids */
    const qd_replay_op *op; /* the op's replay on that side */
    unsigned verdict;       /* qd_replay_verdict of op */
    double threshold, blowup_ratio;
} qd_repro_op;

/* Writes the repro of op to req->path (QD_ERUNTIME naming the failing call; QD_EINPUT when an input the op
 * needs is unknown, e.g. a layer input the comparison did not have). Sets req->written and req->what. */
int qd_repro_write(qd_repro_req *req, const qd_repro_op *op, qd_err *e);

/* 1 when path is an HDF5 file whose root attribute `schema` begins "qwen3-diff-repro/" (any version: the
 * rerun names an unsupported one); 0 otherwise, also for a file that cannot be read. */
int qd_repro_is_repro(const char *path);

/* One implementation's output on the file's inputs, measured against the oracle's. */
typedef struct {
    int have;         /* 0: not run (note says why) */
    qd_replay_op op;  /* local = its output vs the oracle; floor = the clean contract's */
    unsigned verdict; /* qd_replay_verdict */
    char note[160];   /* "skipped: no CUDA device", "no kernel for q_norm", the kernel's name */
} qd_repro_impl;

typedef struct {
    qd_tap_id id;
    int step, T, pos0;
    char side[4], engine[64], precision[8], accum[8], mode[16], tap[24];
    double threshold, blowup_ratio;
    qd_replay_figures stored_figures; /* as the file holds them (the run's) */
    qd_repro_impl stored;             /* the engine's stored output, judged again */
    qd_repro_impl contract;           /* the clean contract: its ratio is 1 by construction */
    qd_repro_impl faulted;            /* the contract with the fault (have 0 without one) */
    qd_repro_impl fused;              /* the fused kernel */
    int fault;                        /* qd_fault_kind injected; QD_FAULT_NONE */
} qd_repro_result;

/* Reruns the op of the repro file at path: oracle, contract, the contract with fault (QD_FAULT_NONE: none)
 * and the fused kernel. threads <= 0: OpenMP's default. A file that is not a valid repro (wrong schema,
 * missing or misshapen datasets, attributes out of range) is QD_EINPUT with one line naming the file and the
 * dataset or attribute. */
int qd_repro_run(const char *path, int fault, int threads, qd_repro_result *r, qd_err *e);

/* The rerun's lines: the op, then one line per implementation (rel_l2 vs the oracle, ratio over the floor,
 * its verdict), the stored output's verdict last. */
void qd_repro_print(const qd_repro_result *r, FILE *f);

#endif
