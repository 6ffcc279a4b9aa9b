/* run_checks.h: what qwen3-diff checks about a run after reading config.json and the tokens and before
 * loading any weights: positions against max_position_embeddings, the memory the run will hold against
 * what the machine has, and whether each injected fault can fire at all with these options
 * (docs/FAULTS.md, "the catalog"); and, after the run, a fault that fired but was not found. Each failed
 * check is QD_EINPUT with one line naming the numbers or the reason. */
#ifndef QD_RUN_CHECKS_H
#define QD_RUN_CHECKS_H

#include <stdio.h>

#include "qd_compare.h"
#include "qd_config.h"
#include "qd_fault.h"

typedef struct {
    int T;              /* prompt tokens */
    int decode;         /* decode steps after the prompt */
    int backends;       /* backend instances held at once: 1 (one backend), 2, or 3 (--isolate) */
    int lockstep;       /* the taps of both sides are held and replayed */
    const char *name_b; /* the side --inject goes to (B); NULL in a one-backend run: the backend run */
    const char *name_a; /* the side --inject-a goes to (A) */
    qd_fault fault;     /* --inject */
    qd_fault fault_a;   /* --inject-a */
    double max_memory;  /* bytes the run may plan to hold; < 0: MemAvailable of /proc/meminfo; 0: no check */
} qd_run_plan;

/* Whether a run of backends a and b (either may be NULL) reads the checkpoint in place from its mapping
 * (qd_weights_map: every CPU backend) rather than from fp32 copies of every tensor (qd_weights_load: the
 * fused path uploads from them). docs/REFERENCE.md. */
int qd_run_weights_mapped(const char *a, const char *b);

/* The host memory a run holds, by part, in bytes (an estimate: the weights as the run holds them, fp32
 * copies when a side is fused, else the pages of the largest matrices in use read in place from the mapping;
 * each backend's KV cache and scratch, the taps and replay inputs of one position held per side, the
 * logits). */
typedef struct {
    double weights, kv_cache, activations, total;
} qd_mem_estimate;

qd_mem_estimate qd_run_memory(const qd_config *c, const qd_run_plan *p);

/* The checks before the weights are loaded. info: where the memory estimate of a long run (1 GiB or
 * more) is printed, one line; NULL: not printed. */
int qd_run_check(const qd_config *c, const qd_run_plan *p, FILE *info, qd_err *e);

/* After a run in which the injected fault (B's, or A's with side 0) did not make it diverge: the one line
 * saying so, with the largest ratio seen at or after the injected layer against the threshold. */
void qd_run_fault_not_found(const qd_report *r, const qd_fault *f, int side, const char *flag, FILE *out);

#endif
