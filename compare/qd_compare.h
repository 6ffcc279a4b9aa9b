/* qd_compare.h: the comparator. Runs two backends side by side, layer by layer (or reads two schema-v1
 * dumps), compares every tap they share, judges each against its tolerance and finds the first
 * divergence: the first failing tap in execution order.
 *
 * Sides: A is the reference side (e.g. ref), B the backend under test (e.g. emu, fused); metrics are
 * computed with test = B, ref = A.
 * Modes: free-running (B runs on its own outputs, so each layer's error includes what it inherited) and,
 * with --isolate, teacher-forced (layer i of B runs on A's input to layer i, so the error is local to the
 * layer). The first divergence is located in one of them (--locate free|isolated).
 *
 * Judges: by default (a qd_replay_judge with weights) every op of each side is replayed from that side's
 * own inputs (compare/qd_replay.h) and a row fails when either side's local error exceeds the threshold x its
 * noise floor: the first divergence is a local error, never drift inherited from earlier ops. With
 * tolerances only (no weights given: --tolerances FILE, --calibrate, the selftest's blessed gates) a row
 * fails when the A-vs-B error exceeds its tolerance (the stricter gate, docs/TOLERANCES.md). */
#ifndef QD_COMPARE_H
#define QD_COMPARE_H

#include <stdint.h>
#include <stdio.h>

#include "qd_backend.h"
#include "qd_dump.h"
#include "qd_progress.h"
#include "qd_localise.h"
#include "qd_metrics.h"
#include "qd_replay.h"
#include "qd_tokenizer.h"
#include "qd_tolerances.h"

typedef enum { QD_MODE_FREE = 0, QD_MODE_ISOLATED = 1 } qd_mode;

const char *qd_mode_name(qd_mode m); /* "free", "isolated" */

typedef struct {
    int step;     /* 0: the prompt; k >= 1: decode step k */
    qd_tap_id id; /* which tap: embed, layer n's, or the head's (id.layer -1 outside the layers) */
    qd_mode mode;
    qd_metrics m;
    qd_tol tol;         /* the tolerance it was judged by */
    double prev_rel_l2; /* the same tap's rel_l2 one layer earlier (growth check); NAN if none */
    unsigned verdict;   /* QD_V_* mask; 0 = pass. Replay judge: the judged side's qd_replay_verdict */
    qd_replay_op rp[2]; /* replay judge: the op replayed on A's (0) and B's (1) own inputs; .have 0: none */
    int judged;         /* replay judge: the side that judged the row (0 A, 1 B): the failing one with the
                           larger ratio, else the larger ratio; -1: no replay */
} qd_tap_row;

/* The next-token prediction at the last position whose logits a comparison saw (the last step's last
 * position; offline, the prompt's): each side's top ids by logit, for the reports. */
#define QD_NEXT_TOP 10
typedef struct {
    int k;                      /* ids per side: min(QD_NEXT_TOP, V); 0: no logits seen */
    int have[2];                /* side A (0), B (1) filled */
    int step, pos;              /* the step (0: the prompt) and position of that row */
    int32_t id[2][QD_NEXT_TOP]; /* by logit descending, ties by the smaller id; NaN never ranks */
    float logit[2][QD_NEXT_TOP];
    double prob[2][QD_NEXT_TOP]; /* softmax over the row, in double; NAN when the row is not all finite */
} qd_next_tokens;

/* Fills side (0 A, 1 B) of nt from one row of V logits at (step, pos). */
void qd_next_tokens_fill(qd_next_tokens *nt, int side, const float *row, int V, int step, int pos);

typedef struct {
    char name_a[64], name_b[64]; /* e.g. "ref", "emu" (offline: file:group) */
    char prec_a[8], prec_b[8];
    int n_layers;
    int steps;    /* 1 + decode steps compared */
    int isolated; /* isolated-mode rows exist */
    qd_mode locate;
    qd_blowup blowup; /* the blow-up settings used (for reasons) */
    qd_tap_row *rows; /* (n) in execution order: step, layer, tap; free before isolated */
    int n, cap;
    int first_div;                     /* row index of the first divergence in the located mode; -1 none */
    int first_fail[2];                 /* first failing row per mode; -1 none */
    char only_a[QD_NUM_TAP_KINDS][24]; /* taps only one side has (names) */
    int n_only_a;
    char only_b[QD_NUM_TAP_KINDS][24];
    int n_only_b;
    int head_dim;            /* HD: where's per-head view of q_proj, k_proj, v_proj and attn; 0 unknown */
    qd_where where;          /* where inside the first divergence's tap the error lives
                                        (qd_report_localise); where.valid 0 when none */
    int replay;              /* 1: rows judged by the local ratio (qd_replay.h); 0: by tolerances */
    double threshold;        /* replay: the ratio's threshold */
    int single;              /* `qwen3-diff replay`: one engine (side A), no A-vs-B metrics */
    int worst_inherited;     /* replay: the row with the largest A-vs-B rel_l2; -1 none */
    qd_next_tokens next;     /* both sides' top next tokens at the last position with logits */
    const qd_tokenizer *tok; /* the checkpoint's tokenizer, for token text in reports; NULL: none (borrowed) */
} qd_report;

void qd_report_init(qd_report *r, const char *name_a, const char *prec_a, const char *name_b, const char *prec_b,
                    int n_layers, qd_mode locate, const qd_blowup *blowup);
void qd_report_free(qd_report *r);
/* Name of a row's tap. */
const char *qd_row_tap_name(const qd_tap_row *row);
int qd_report_diverged(const qd_report *r);

/* Fills r->where from the two tensors the row was judged on (test = B, ref = A, shape (ndim)): whichever
 * judge decides the first divergence calls this once, at that moment, while the tensors are at hand; the
 * breakdown is a few hundred bytes, nothing else is kept. q_proj, k_proj, v_proj and attn are viewed per
 * head with r->head_dim. QD_OK, or QD_ERUNTIME (e filled) when its O(T + H + C) scratch cannot be
 * allocated. */
int qd_report_localise(qd_report *r, const qd_tap_row *row, const float *test, const float *ref, int ndim,
                       const int64_t *shape, qd_err *e);
/* head_dim of a schema-v1 dump's config_json (the offline compare's r->head_dim); 0 when it has none that
 * parses. */
struct qd_h5in;
int qd_compare_dump_head_dim(struct qd_h5in *f);

typedef struct {
    const int32_t *tokens;
    int T;
    int decode; /* decode steps after the prompt, each fed A's greedy next token */
    const qd_tolerances *tol;
    qd_mode locate;
    qd_dump *dump;         /* NULL: no dump. Full tensors of the prompt step are written under
                                   /<A>, /<B> (and /<B>-isolated) */
    const char *dump_taps; /* comma-separated fnmatch globs over tap names; NULL: all */
    int dump_window;       /* --dump-on-divergence K: tensors only for positions within K of the
                                   first divergence (embed is position 0, layer i is i+1, the head
                                   L+1); < 0: every position */
    qd_progress *progress; /* "prompt, layer i/N" with an ETA (common/qd_progress.h); NULL: none */
    qd_replay_judge judge; /* judge.w NULL (a zeroed struct): the tolerance verdict; else the replay's */
} qd_lockstep_opts;

/* Runs A and B (and b_iso, a second instance of B's kind, for isolated mode; NULL for none) in lockstep
 * and fills r (initialised by the caller with qd_report_init). Memory holds one layer of taps per backend
 * (plus the dump window). Returns QD_OK (whatever the verdict) or an error code with e set. */
int qd_lockstep(qd_backend *a, qd_backend *b, qd_backend *b_iso, const qd_lockstep_opts *o, qd_report *r, qd_err *e);

/* Offline: compares two schema-v1 dumps, A = path_a's group_a (the reference side), B = path_b's
 * group_b. group NULL: the file's only backend group (QD_EINPUT if it has several, naming them). tol NULL:
 * the defaults of the groups' precision pair; otherwise it must fit the pair and the layer count
 * (qd_tolerances_check_fit). Every read is checked against the dumps' config_json and T (qd_h5read.h);
 * both must hold the same model and prompt (qd_compare_files_judged). Taps present on only one side are listed, not failed; no tap
 * present on both sides is QD_EINPUT (nothing compared is not a pass). */
int qd_compare_files(const char *path_a, const char *group_a, const char *path_b, const char *group_b,
                     const qd_tolerances *tol, qd_report *r, qd_err *e);
/* What a comparison of two dumps does when they are not of one model and one prompt. */
typedef struct {
    int allow_mismatch; /* 1: compare anyway where something is comparable (--allow-mismatch) */
    int T_compared;     /* out: the tokens compared (the common first tokens when the prompts differ) */
    char note[320];     /* out: the mismatch that was allowed, in words; "" when none */
} qd_compare_match;

/* The same, judged by judge: judge NULL or judge->w NULL is qd_compare_files; else both files' groups are
 * replayed over judge->w (the checkpoint the dumps were made with) and rows judged by the local ratio.
 * Before any tap, the dumps' config_json and /input_ids are compared (and the replay model's config with
 * them): different models (the first differing field), different prompts (the first differing token),
 * one prompt the other's without its leading token (a missing BOS) are QD_EINPUT, one line each. match
 * NULL: nothing allowed; else match->allow_mismatch allows a config that differs in values only, and
 * prompts that share their first tokens (only those positions are compared). */
int qd_compare_files_judged(const char *path_a, const char *group_a, const char *path_b, const char *group_b,
                            const qd_tolerances *tol, const qd_replay_judge *judge, qd_compare_match *match,
                            qd_report *r, qd_err *e);

/* Offline, one engine: replays path's group (NULL: the only one) over judge->w and fills r (side A = that
 * group, r->single set; every row's rp[0] and verdict). Returns QD_OK whatever the verdict. */
int qd_replay_file(const char *path, const char *group, const qd_replay_judge *judge, qd_report *r, qd_err *e);

/* The model directory a dump names in its root attribute `model`, when it names an existing directory
 * holding a config.json; else the dump's own directory when that holds one (a golden kept beside its
 * checkpoint, as the fixtures'). QD_EINPUT naming the file when neither does. */
int qd_dump_model_dir(const char *path, char *out, size_t n, qd_err *e);

// ----------------------------------------------------------------------------
// the bless step (calibrate.c)

/* The deterministic prompts of calibration: T ids in [0, vocab) from splitmix64 seeded with seed
 * (--calibrate's prompt i >= 1 uses seed 0x5eed + i). */
void qd_calib_prompt(uint64_t seed, int T, int vocab, int32_t *out);

typedef struct {
    double worst_rel_l2; /* over every free-running tap of every prompt */
    double worst_growth; /* worst layer-to-layer growth of a tap's rel_l2 (above the growth floor) */
    char worst_at[96], worst_growth_at[96];
} qd_bless_stats;

/* Blesses a known-good pair (`qwen3-diff --calibrate N`, and the selftest's gates): prompt 0 is `prompt`,
 * prompt i >= 1 is qd_calib_prompt(0x5eed + i) of the same length; every free-running tap of every prompt
 * (decode steps included) is folded into a qd_calib, and out gets qd_calib_to_tolerances(margin) on top of
 * the pair's defaults, with growth_factor raised to margin x the worst growth measured when that is above
 * the default. b_iso may be NULL. A run with non-finite values, a blow-up or a collapse is refused
 * (QD_EDIVERGED naming prompt, step, layer and tap). out must hold nothing on entry; on success the
 * caller frees it. stats may be NULL. progress (NULL: none) counts the prompts. */
int qd_bless(qd_backend *a, qd_backend *b, qd_backend *b_iso, const int32_t *prompt, int T, int n_prompts, int decode,
             double margin, qd_tolerances *out, qd_bless_stats *stats, qd_progress *progress, qd_err *e);

// ----------------------------------------------------------------------------
// outputs: reports/qd_reports.h writes a qd_report for people and machines (terminal, JSON, JUnit, the
// HDF5 /diff table)

#endif
