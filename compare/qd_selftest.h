/* qd_selftest.h: proving the harness (`qwen3-diff selftest`), on the CPU (emu, the default) or on the
 * fused CUDA kernels (--backend fused).
 *
 * For every fixture context (a fixture, a prompt, sometimes a variant of the weights) the clean pair
 * ref vs B (emu or fused) is blessed first (qd_bless in qd_compare.h: the maths of --calibrate, 5 prompts,
 * margin 2), then:
 *   - clean runs over 5 held-out prompts, free-running and isolated, must flag nothing;
 *   - every fault of the catalog is injected into B on each fixture where it can show, and its first
 *     divergence, free-running and isolated, must be exactly the expected (step, layer, tap);
 *   - the precision sweep (qd_sweep.h) must classify faults 3, 6 and 8 as docs/FAULTS.md says.
 * The expectations live in one table in selftest.c (qd_selftest_cases) with the reason for each. */
#ifndef QD_SELFTEST_H
#define QD_SELFTEST_H

#include <stdint.h>

#include "qd_backend.h"
#include "qd_compare.h"
#include "qd_fault.h"
#include "qd_sweep.h"
#include "qd_tolerances.h"

/* Weight variants a fault needs and the fixture generator cannot write. */
typedef enum {
    QD_VARIANT_NONE = 0,
    QD_VARIANT_TINY_ROW, /* one token's embedding row scaled by 1e-3: an untrained (reserved) token */
} qd_variant;

/* One expectation: fault `fault` injected at layer `inject` of `fixture` first shows at (step, layer, tap),
 * in both modes. tap_fused: where the fused backend differs (e.g. a tap its kernels fuse away), with why. */
typedef struct {
    qd_fault_kind fault;
    const char *fixture;  /* directory under the fixtures root */
    qd_variant variant;
    int prompt_len;       /* 0: the fixture's prompt.txt; else qd_calib_prompt(prompt_seed, prompt_len) */
    uint64_t prompt_seed;
    int inject;           /* the layer the fault is injected in */
    int step, layer;      /* expected first divergence */
    const char *tap;
    const char *why;      /* why it shows there (and only there) */
    const char *tap_fused; /* NULL: tap; else the first divergence's tap on the fused backend */
    const char *why_fused; /* why it differs there */
} qd_selftest_case;

const qd_selftest_case *qd_selftest_cases(int *n);

/* The expected tap of case c for backend ("emu" or "fused"). */
const char *qd_selftest_case_tap(const qd_selftest_case *c, const char *backend);

/* One expectation of the precision sweep. */
typedef struct {
    qd_fault_kind fault;
    const char *fixture;
    int prompt_len;       /* as qd_selftest_case */
    uint64_t prompt_seed;
    int inject;
    const char *act;      /* the dtype of the run that diverged first (the sweep covers all three) */
    qd_sweep_class expect;
    const char *why;
} qd_sweep_case;

const qd_sweep_case *qd_sweep_cases(int *n);

/* 1 when the report's first failing row in `mode` is exactly (step, layer, tap); found gets what was found
 * ("step 0, layer 1, k_norm" or "no divergence"). Exposed so tests can check the checker. */
int qd_selftest_matches(const qd_report *r, qd_mode mode, int step, int layer, const char *tap, char *found,
                        size_t n);

/* `qwen3-diff selftest [--backend emu|fused] [--fixtures DIR] [--json FILE] [--threads N] [--quiet]
 * [--no-color]`: argv[0] is "selftest". --backend fused needs a binary built with CUDA and a device (else
 * exit 2 or 3 with the message). Returns the exit status: 0 every expectation met, 1 a miss, 2 bad usage or input, 3 runtime
 * failure (the message on stderr). Hidden for tests of the checker: --shift-expectation FAULT expects
 * FAULT one layer later than the table says, which must make the selftest fail. */
int qd_selftest_main(int argc, char **argv);

#endif
