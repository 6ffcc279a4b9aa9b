/* qd_tolerances.h: which tolerance each tap is judged by, where the numbers come from (the precision
 * pair's defaults, a tolerance file, or calibration over known-good runs), and the file format.
 * docs/TOLERANCES.md is the document users read; this comment is the same contract.
 *
 * Lookup order, per field (rel_l2, atol and rtol separately; the first level that sets a field wins):
 *     layer+tap  ("layers": {"3/k_norm": ...})    only for layer taps, layer >= 0
 *     tap        ("taps": {"k_norm": ...})         all layers; model taps (embed, final_norm, logits) live here
 *     layer      ("layers": {"3": ...})            every tap of that layer
 *     default    ("default": ...)                  itself built on the precision pair's table (tolerances.c)
 * so a partial object inherits what it leaves out from the next level down. The specific tap outranks the
 * whole layer: a layer entry loosens a layer without touching the taps that have their own setting.
 * A teacher-forced row (qwen3-diff --isolate) first looks through the same four levels of "isolated", if
 * the file has that section, then through the levels above for what they leave unset. Its error is its
 * own layer's, none inherited, so it can be held far tighter than a free-running row: on a model whose
 * free-running error decorrelates (near one-hot attention, long decode), only the isolated gate is tight.
 *
 * File format (JSON, schema "qwen3-diff-tolerances/1"):
 *   {
 *     "schema": "qwen3-diff-tolerances/1",              required
 *     "precision_pair": ["bf16", "fp32"],               required: [test, reference]; each fp64|fp32|bf16|fp16
 *     "margin": 2.0,                                    optional: the margin calibration used (>= 1)
 *     "default": {"rel_l2": 4e-2, "atol": 1e-2, "rtol": 4e-2},
 *     "taps":   {"logits": {"rel_l2": 5e-2}, "k_norm": {...}},
 *     "layers": {"3": {"rel_l2": 6e-2}, "3/k_norm": {"atol": 2e-2}},
 *     "blowup_ratio": 1000,                             > 1
 *     "growth_factor": 10,                              > 1
 *     "growth_floor": 4e-3,                             >= 0 (qd_blowup in qd_metrics.h)
 *     "isolated": {"default": {...}, "taps": {...}, "layers": {...}},
 *                                                       optional: the teacher-forced rows' levels
 *     "model": {"layers": 28, "hidden": 1024, "heads": 16, "kv_heads": 8, "head_dim": 128, "vocab": 151936,
 *               "config_hash": "fnv1a64:..."},        optional (written by --calibrate): the model it was
 *                                                       calibrated on; the hash is qd_config_hash's
 *     "measured": {...}                                 optional, free-form provenance: prompts, worst figures
 *   }
 * Every field but schema and precision_pair is optional and every tolerance object may be partial;
 * what is absent comes from the precision pair's table. Loading is strict, because a typo in a CI gate
 * must not silently loosen it: an unknown key (at any level), a duplicate key, a value that is not a
 * number or is negative / not finite, an unknown tap name, a model tap under a layer ("3/logits"), a
 * layer that is not a plain decimal index below QD_TOL_MAX_LAYERS, a wrong schema string: each is
 * QD_EINPUT with one line naming the file and the field ("tol.json: field 'layers.3/k_norm.atol': ...").
 * Numbers are written with 15 significant digits, so every value that came from a decimal of up to 15
 * digits (all values this project writes or reads) round-trips exactly; a longer one is rounded to 15 digits,
 * and where that rounding would make the file refused (a field > 1 written as 1, DBL_MAX written as a
 * number that overflows) to the nearest 15-digit value the loader accepts. */
#ifndef QD_TOLERANCES_H
#define QD_TOLERANCES_H

#include "qd_config.h"
#include "qd_metrics.h"
#include "qd_taps.h"
#include "qd_util.h"

#define QD_TOL_SCHEMA "qwen3-diff-tolerances/1"
#define QD_TOL_MAX_LAYERS 1024 /* the largest Qwen3 has 64 layers; a larger index is a typo */

/* Which fields of a qd_tol_entry are set. */
enum { QD_TOL_SET_REL_L2 = 1u, QD_TOL_SET_ATOL = 2u, QD_TOL_SET_RTOL = 4u, QD_TOL_SET_ALL = 7u };

typedef struct {
    qd_tol tol;
    unsigned set; /* QD_TOL_SET_* bits; 0: no entry */
} qd_tol_entry;

/* Tap ids used below: a layer tap's qd_layer_tap, or QD_NUM_LAYER_TAPS + a qd_model_tap. */
#define QD_NUM_TAP_IDS (QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS)

/* The model a tolerance file was calibrated on: its shape and qd_config_hash. */
typedef struct {
    int set; /* 0: the file does not say (written before the field existed) */
    int layers, hidden, heads, kv_heads, head_dim, vocab;
    char config_hash[QD_CONFIG_HASH_LEN];
} qd_tol_model;

typedef struct qd_tolerances qd_tolerances;
struct qd_tolerances {
    char prec_test[8], prec_ref[8]; /* the precision pair, e.g. "bf16", "fp32" */
    double margin;                  /* provenance: the margin calibration used; 0 when none */
    qd_tol def;                     /* the default level */
    unsigned def_set;               /* its fields that are set: all of them at the top level; in
                                       `isolated`, those its "default" sets (the rest fall through) */
    qd_tol_entry taps[QD_NUM_TAP_IDS];
    int n_layers;            /* rows of layers (0 when no layer entry) */
    qd_tol_entry *layers;    /* (n_layers, 1 + QD_NUM_LAYER_TAPS): [l][0] the whole layer l,
                                       [l][1 + tap] layer l's tap */
    qd_blowup blowup;        /* blowup_ratio, growth_factor, growth_floor */
    struct json_t *measured; /* "measured", kept verbatim; NULL when absent; owned */
    qd_tolerances *isolated; /* "isolated": the levels of teacher-forced rows (def, def_set, taps,
                                       layers; nothing else of it is used); NULL when absent; owned */
    char source[256];        /* the file qd_tolerances_load read (for messages); "" otherwise */
    qd_tol_model model;      /* "model": the model it was calibrated on; model.set 0 when absent */
};

/* Initialises t (which holds nothing yet, or was qd_tolerances_free'd) with the defaults of the
 * precision pair: no overrides, the pair's default tolerance, the blow-up defaults. The pair is judged
 * by its less precise side (bf16 vs fp32 and fp32 vs bf16 alike). QD_EINPUT names an unknown precision. */
int qd_tolerances_default(qd_tolerances *t, const char *prec_test, const char *prec_ref, qd_err *e);

/* The smallest tolerance calibration may produce for this pair: about one rounding of the less precise
 * side (tolerances.c gives the figures and reasons). Also the default growth_floor (as floor->rel_l2). */
int qd_tolerances_floor(const char *prec_test, const char *prec_ref, qd_tol *floor, qd_err *e);

void qd_tolerances_free(qd_tolerances *t);

/* Sets the fields named by `set` (QD_TOL_SET_*) at one level:
 *   layer <  0, tap == NULL: the default      layer <  0, tap: the tap, in every layer
 *   layer >= 0, tap == NULL: the layer        layer >= 0, tap: that layer's tap (layer taps only)
 * QD_EINPUT for an unknown tap, a model tap with a layer, a layer >= QD_TOL_MAX_LAYERS, or a negative
 * or non-finite value. */
int qd_tolerances_set(qd_tolerances *t, int layer, const char *tap, const qd_tol *tol, unsigned set, qd_err *e);
/* The same at a level of the "isolated" section (created empty on first use). */
int qd_tolerances_set_isolated(qd_tolerances *t, int layer, const char *tap, const qd_tol *tol, unsigned set,
                               qd_err *e);

/* The tolerance for `tap` (a layer tap or model tap name) in `layer` (-1 for model-level taps), by the
 * lookup order above. An unknown name gets the layer and default levels. */
qd_tol qd_tolerances_lookup(const qd_tolerances *t, int layer, const char *tap);
/* The tolerance of a teacher-forced row: the "isolated" levels, then qd_tolerances_lookup for the rest. */
qd_tol qd_tolerances_lookup_isolated(const qd_tolerances *t, int layer, const char *tap);

/* qd_verdict with the looked-up tolerance (of a teacher-forced row when `isolated`) and t's blow-up
 * settings. */
unsigned qd_tolerances_verdict(const qd_tolerances *t, int isolated, int layer, const char *tap, const qd_metrics *m,
                               double prev_rel_l2);

/* Reads and validates a tolerance file (format above): a regular file of at most 16 MiB. On error t
 * holds nothing. */
int qd_tolerances_load(const char *path, qd_tolerances *t, qd_err *e);

/* Whether t fits a comparison of test (name_test, prec_test) against reference (name_ref, prec_ref) over
 * n_layers layers: the same precision pair class (a file blessed for bf16 vs fp32 would be far too loose
 * for fp32 vs fp32) and no layer entry, at the top level or in "isolated", at or beyond n_layers.
 * QD_EINPUT naming t->source and the field otherwise. */
int qd_tolerances_check_fit(const qd_tolerances *t, const char *name_test, const char *prec_test, const char *name_ref,
                            const char *prec_ref, int n_layers, qd_err *e);

/* Records c as the model t is calibrated on ("model"). */
void qd_tolerances_set_model(qd_tolerances *t, const qd_config *c);

/* Whether t was calibrated on the model c: QD_OK with note[0] == '\0' when it was; otherwise one line in
 * note (no newline) naming what differs ("calibrated on another model: layers 2 vs 4, ...") or, for a
 * file without "model", that it cannot be checked. strict: a different model is QD_EINPUT with that line
 * (a file without "model" stays a note: nothing says it is another model). */
int qd_tolerances_check_model(const qd_tolerances *t, const qd_config *c, int strict, char *note, size_t n, qd_err *e);

/* Writes t in the format above, to PATH.tmp.<pid> then renamed to PATH: a reader never sees half a file. */
int qd_tolerances_write(const char *path, const qd_tolerances *t, qd_err *e);

// ----------------------------------------------------------------------------
// calibration: the maths of the "bless" step

/* Per (layer, tap), the worst figures seen over several known-good runs. */
typedef struct {
    double rel_l2;       /* worst rel_l2 */
    double abs_ratio;    /* worst max_abs / max_mag_ref, over runs with max_mag_ref > 0 */
    double abs_zero_ref; /* worst max_abs over runs whose reference was all zero */
    int64_t runs;        /* how many runs reported this tap; 0: never seen */
} qd_calib_slot;

typedef struct {
    int n_layers;
    qd_calib_slot *slots; /* (n_layers * QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS): layer taps by
                             [layer][tap], then the model taps */
} qd_calib;

int qd_calib_init(qd_calib *c, int n_layers, qd_err *e);
void qd_calib_free(qd_calib *c);

/* Folds one tap's metrics in. layer -1 for model taps. A run whose tap has non-finite differences or
 * nothing comparable (NAN metrics) is QD_EINPUT: a broken run must not be blessed. (Blow-up and collapse
 * need the verdict, which the caller checks before adding a run.) */
int qd_calib_add(qd_calib *c, int layer, const char *tap, const qd_metrics *m, qd_err *e);

/* Writes into out (already initialised, normally by qd_tolerances_default for the pair) one entry per
 * seen (layer, tap) (model taps under "taps"), each field margin x worst measured, never below floor:
 *     rel_l2 = max(margin * worst rel_l2,            floor.rel_l2)
 *     rtol   = max(margin * worst max_abs/max|ref|,  floor.rtol)
 *     atol   = max(margin * worst max_abs where ref was all zero, floor.atol)
 * then rounded UP to 3 significant digits (never below margin x worst; the file stays readable). The
 * floor keeps a tap that happened to match exactly from getting a zero tolerance that the next,
 * equally correct run would fail. floor NULL: qd_tolerances_floor of out's precision pair.
 * margin must be >= 1. Sets out->margin. */
int qd_calib_to_tolerances(const qd_calib *c, double margin, const qd_tol *floor, qd_tolerances *out, qd_err *e);
/* The same into out's "isolated" section (teacher-forced rows' worst figures), floor and margin alike. */
int qd_calib_to_tolerances_isolated(const qd_calib *c, double margin, const qd_tol *floor, qd_tolerances *out,
                                    qd_err *e);

#endif
