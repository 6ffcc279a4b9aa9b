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
 * The expectations live in one table in selftest.c (qd_selftest_cases) with the reason for each;
 * qd_selftest_run checks them all and returns one record per check. The command line around it
 * (`qwen3-diff selftest`: options, table, JSON, exit status) is tools/selftest_cli.c. */
#ifndef QD_SELFTEST_H
#define QD_SELFTEST_H

#include <stdint.h>

#include "qd_backend.h"
#include "qd_compare.h"
#include "qd_fault.h"
#include "qd_sweep.h"
#include "qd_tolerances.h"

#define QD_SELFTEST_CALIB_PROMPTS 5 /* the bless step's prompts (the brief of --calibrate: >= 5 known-good runs) */
#define QD_SELFTEST_CLEAN_PROMPTS 5 /* held-out clean prompts per context, never used for calibration */
#define QD_SELFTEST_MARGIN 2.0      /* calibration margin, as --calibrate's default */
#define QD_SELFTEST_DECODE 2        /* decode steps of the contexts whose faults show only in decode steps */

/* Weight variants a fault needs and the fixture generator cannot write. */
typedef enum {
    QD_VARIANT_NONE = 0,
    QD_VARIANT_TINY_ROW, /* one token's embedding row scaled by 1e-3: an untrained (reserved) token */
} qd_variant;

/* One expectation: fault `fault` injected at layer `inject` of `fixture` first shows at (step, layer, tap),
 * in both modes. tap_fused: where the fused backend differs (e.g. a tap its kernels fuse away), with why. */
typedef struct {
    qd_fault_kind fault;
    const char *fixture; /* directory under the fixtures root */
    qd_variant variant;
    int prompt_len; /* 0: the fixture's prompt.txt; else qd_calib_prompt(prompt_seed, prompt_len) */
    uint64_t prompt_seed;
    int inject;      /* the layer the fault is injected in */
    int step, layer; /* expected first divergence */
    const char *tap;
    const char *why;       /* why it shows there (and only there) */
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
    int prompt_len; /* as qd_selftest_case */
    uint64_t prompt_seed;
    int inject;
    const char *act; /* the dtype of the run that diverged first (the sweep covers all three) */
    qd_sweep_class expect;
    const char *why;
} qd_sweep_case;

const qd_sweep_case *qd_sweep_cases(int *n);

/* 1 when the report's first failing row in `mode` is exactly (step, layer, tap); found gets what was found
 * ("step 0, layer 1, k_norm" or "no divergence"). Exposed so tests can check the checker. */
int qd_selftest_matches(const qd_report *r, qd_mode mode, int step, int layer, const char *tap, char *found, size_t n);

typedef struct {
    const char *backend;  /* the backend under test: "emu", or "fused" (a CUDA build and device); NULL: emu */
    const char *fixtures; /* the fixtures root, a directory per fixture; NULL: the source tree's fixtures/ */
    int threads;          /* CPU threads; 0: OpenMP's default */
    /* A fault name whose expectations are taken one layer later than the table says, which must make its
     * checks miss (a test of the checker); NULL: none. */
    const char *shift_expectation;
    /* Only the contexts and sweeps of this fixture (a short run: the valgrind test); NULL: every fixture. */
    const char *only_fixture;
    /* Called before each fixture context and each sweep, with one line ("gqa_tied: blessing ref vs emu
     * over 5 prompts"); NULL: nothing is reported. */
    void (*progress)(void *ctx, const char *msg);
    void *progress_ctx;
} qd_selftest_opts;

/* One check: an expectation of the table in one mode, the clean prompts of a context in one mode, or a
 * precision sweep. */
typedef struct {
    const char *kind;  /* "fault", "clean", "sweep" */
    char fault[48];    /* "knorm-mul@1", "clean (5 prompts)" */
    char fixture[96];  /* the context: "knorm_extreme", "gqa_tied+tiny-row", "knorm_extreme/T16#2" */
    char expected[96]; /* "step 0, layer 1, k_norm", "no divergence", a sweep class */
    char found[128];   /* the same form; "prompt 7: ..." for a clean prompt that diverged */
    const char *mode;  /* "free", "isolated", "sweep" */
    int ok;            /* found is what was expected */
    char reason[240];  /* the first divergence's reason, or the sweep's per-dtype summary */
    int32_t *tokens;   /* (T) the prompt of fault and sweep checks, owned; NULL for clean checks */
    int T;
} qd_selftest_check;

typedef struct {
    qd_selftest_check *checks; /* (n) in the order they ran */
    int n, cap;
    int misses; /* checks not ok */
} qd_selftest_result;

/* Runs every check (minutes on the CPU). Returns QD_OK with out filled, whatever the misses, or an error
 * code with e set and out empty: QD_EINPUT for bad options or fixtures, QD_ERUNTIME for a failing run.
 * Free out with qd_selftest_result_free. */
int qd_selftest_run(const qd_selftest_opts *o, qd_selftest_result *out, qd_err *e);
void qd_selftest_result_free(qd_selftest_result *r);

#endif
