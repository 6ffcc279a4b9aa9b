/* tolerances.c: tolerance defaults, lookup, the tolerance file and calibration (qd_tolerances.h). */
#include "qd_json.h"
#include "qd_tolerances.h"

#include "qd_files.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// the precision-pair table: every default number lives here, with its reason

typedef enum { CLS_FP32 = 0, CLS_FP16, CLS_BF16 } prec_class; /* ordered: larger = less precise */

static const struct {
    const char *name;
    qd_tol def;   /* the default tolerance of a pair whose less precise side is this class */
    qd_tol floor; /* the calibration floor and (its rel_l2) the growth floor */
} pair_table[] = {
    [CLS_FP32] = {"fp32",
                  /* Two float32 implementations of the same maths differ only by summation order and libm.
         * Measured, reference vs transformers (float32, eager) over every tap of the four fixtures
         * (tests/test_golden.c): worst rel_l2 3.7e-6, worst max_abs/max|ref| 1.33e-5 (knorm_extreme's
         * attn, where k_norm weights up to 96.5 make the scores ~40x larger; 8.4e-7 elsewhere).
         * rel_l2 1e-5 is 2.7x the worst measured; atol and rtol 2e-5 are 1.5x the extreme fixture's
         * floor. */
                  {1e-5, 2e-5, 2e-5},
                  /* 1e-6: a reordered fp32 dot product of length ~3000 differs by ~sqrt(3000) * 2^-24 ~ 3e-6 at worst
         * and ~1e-7 typically; a tap measured at exactly zero keeps room for that */
                  {1e-6, 1e-6, 1e-6}},
    [CLS_FP16] = {"fp16",
                  /* fp16 keeps 3 more mantissa bits than bf16 (one rounding: 2^-11 = 0.05% vs 2^-8 = 0.39% at most),
         * so rel_l2 1e-2 and rtol 1e-2 (bf16's / 4, not / 8: its 65504 range limit pushes large
         * activations to the edge); atol 2.5e-3, bf16's / 4 likewise */
                  {1e-2, 2.5e-3, 1e-2},
                  /* 5e-4 ~ 2^-11: one fp16 rounding */
                  {5e-4, 5e-4, 5e-4}},
    [CLS_BF16] = {"bf16",
                  /* One bf16 rounding is 2^-8 = 0.39% relative at most, ~2^-9 = 0.2% rms; a correct bf16 path
         * accumulates many. Published bf16-vs-fp32 per-layer relative L2 for a correct Qwen2.5-0.5B: median
         * 1.6%, max 2.7%, logits 2.85%. Measured here, ref vs emu (the precision contract, no bug) on every
         * fixture's prompt plus 4 decode steps, free-running and isolated (qwen3-diff --backends ref,emu
         * --isolate --decode 4 --json): worst rel_l2 1.3% and worst max_abs/max|ref| 1.6% on the three
         * ordinary fixtures, but 7.6% and 11.3% on knorm_extreme, whose k_norm weights (max 96.5) make
         * attention nearly one-hot so a bf16 rounding of K can move a whole probability mass.
         * rel_l2 1e-1 and rtol 1.5e-1 pass every fixture with about 1.3x margin; atol 1e-2 covers taps of
         * order-one scale. Tighter gates come from calibration (--calibrate): the ordinary fixtures bless
         * to ~2% with margin 2. */
                  {1e-1, 1e-2, 1.5e-1},
                  /* 4e-3 ~ 2^-8: one bf16 rounding */
                  {4e-3, 4e-3, 4e-3}},
};

/* A correct low-precision path moves a tap's largest magnitude by percents; 1000x is an explosion
 * (the seed: |k| ~100 became ~1e29), not rounding. */
#define DEFAULT_BLOWUP_RATIO 1e3
/* Per-layer error in a correct model grows far less than 2x per layer (bf16 Qwen2.5-0.5B: 1.6% median,
 * 2.7% max over 24 layers); 10x in one layer is the onset of a divergence. */
#define DEFAULT_GROWTH_FACTOR 10.0

static int prec_class_of(const char *p, prec_class *cls) {
    if (!p) return -1;
    if (strcmp(p, "fp64") == 0 || strcmp(p, "fp32") == 0) *cls = CLS_FP32;
    else if (strcmp(p, "fp16") == 0) *cls = CLS_FP16;
    else if (strcmp(p, "bf16") == 0) *cls = CLS_BF16;
    else return -1;
    return 0;
}

static int pair_class(const char *prec_test, const char *prec_ref, prec_class *cls, qd_err *e) {
    prec_class a = CLS_FP32, b = CLS_FP32;
    if (prec_class_of(prec_test, &a) != 0)
        return qd_errf(e, QD_EINPUT, "precision '%s' (test side): expected fp64, fp32, bf16 or fp16",
                       prec_test ? prec_test : "(null)");
    if (prec_class_of(prec_ref, &b) != 0)
        return qd_errf(e, QD_EINPUT, "precision '%s' (reference side): expected fp64, fp32, bf16 or fp16",
                       prec_ref ? prec_ref : "(null)");
    *cls = a > b ? a : b;
    return QD_OK;
}

int qd_tolerances_floor(const char *prec_test, const char *prec_ref, qd_tol *floor, qd_err *e) {
    prec_class cls = CLS_FP32;
    int rc = pair_class(prec_test, prec_ref, &cls, e);
    if (rc != QD_OK) return rc;
    *floor = pair_table[cls].floor;
    return QD_OK;
}

int qd_tolerances_default(qd_tolerances *t, const char *prec_test, const char *prec_ref, qd_err *e) {
    memset(t, 0, sizeof *t);
    prec_class cls = CLS_FP32;
    int rc = pair_class(prec_test, prec_ref, &cls, e);
    if (rc != QD_OK) return rc;
    snprintf(t->prec_test, sizeof t->prec_test, "%s", prec_test);
    snprintf(t->prec_ref, sizeof t->prec_ref, "%s", prec_ref);
    t->def = pair_table[cls].def;
    t->def_set = QD_TOL_SET_ALL;
    t->blowup.blowup_ratio = DEFAULT_BLOWUP_RATIO;
    t->blowup.growth_factor = DEFAULT_GROWTH_FACTOR;
    /* growth out of an error below one rounding of the pair is noise, not divergence */
    t->blowup.growth_floor = pair_table[cls].floor.rel_l2;
    return QD_OK;
}

void qd_tolerances_free(qd_tolerances *t) {
    free(t->layers);
    if (t->measured) json_decref(t->measured);
    if (t->isolated) {
        qd_tolerances_free(t->isolated);
        free(t->isolated);
    }
    memset(t, 0, sizeof *t);
}

// ----------------------------------------------------------------------------
// levels and lookup

/* Tap id (see QD_NUM_TAP_IDS) of a name, or -1. */
static int tap_id(const char *name) {
    if (!name) return -1;
    int i = qd_layer_tap_index(name);
    if (i >= 0) return i;
    i = qd_model_tap_index(name);
    return i >= 0 ? QD_NUM_LAYER_TAPS + i : -1;
}

static const char *tap_id_name(int id) {
    return id < QD_NUM_LAYER_TAPS ? qd_layer_tap_name(id) : qd_model_tap_name(id - QD_NUM_LAYER_TAPS);
}

static qd_tol_entry *layer_row(const qd_tolerances *t, int layer) {
    return t->layers + (size_t)layer * (1 + QD_NUM_LAYER_TAPS);
}

static int ensure_layers(qd_tolerances *t, int n) {
    if (n <= t->n_layers) return QD_OK;
    size_t row = (size_t)(1 + QD_NUM_LAYER_TAPS) * sizeof(qd_tol_entry);
    qd_tol_entry *p = realloc(t->layers, (size_t)n * row);
    if (!p) return QD_ERUNTIME;
    memset((char *)p + (size_t)t->n_layers * row, 0, (size_t)(n - t->n_layers) * row);
    t->layers = p;
    t->n_layers = n;
    return QD_OK;
}

static void entry_apply(qd_tol_entry *dst, const qd_tol *tol, unsigned set) {
    if (set & QD_TOL_SET_REL_L2) dst->tol.rel_l2 = tol->rel_l2;
    if (set & QD_TOL_SET_ATOL) dst->tol.atol = tol->atol;
    if (set & QD_TOL_SET_RTOL) dst->tol.rtol = tol->rtol;
    dst->set |= set & QD_TOL_SET_ALL;
}

static int valid_value(double x) { return isfinite(x) && x >= 0.0; }

int qd_tolerances_set(qd_tolerances *t, int layer, const char *tap, const qd_tol *tol, unsigned set, qd_err *e) {
    if (((set & QD_TOL_SET_REL_L2) && !valid_value(tol->rel_l2)) ||
        ((set & QD_TOL_SET_ATOL) && !valid_value(tol->atol)) || ((set & QD_TOL_SET_RTOL) && !valid_value(tol->rtol)))
        return qd_errf(e, QD_EINPUT, "tolerance for layer %d tap %s: values must be finite and >= 0", layer,
                       tap ? tap : "(all)");
    if (layer >= QD_TOL_MAX_LAYERS)
        return qd_errf(e, QD_EINPUT, "tolerance for layer %d: layers go up to %d", layer, QD_TOL_MAX_LAYERS - 1);
    int id = -1;
    if (tap) {
        id = tap_id(tap);
        if (id < 0) return qd_errf(e, QD_EINPUT, "tolerance for tap '%s': no such tap", tap);
        if (layer >= 0 && id >= QD_NUM_LAYER_TAPS)
            return qd_errf(e, QD_EINPUT, "tolerance for layer %d tap '%s': a model-level tap has no layer", layer, tap);
    }
    if (layer < 0 && id < 0) {
        qd_tol_entry d = {t->def, t->def_set};
        entry_apply(&d, tol, set);
        t->def = d.tol;
        t->def_set = d.set;
    } else if (layer < 0) {
        entry_apply(&t->taps[id], tol, set);
    } else {
        if (ensure_layers(t, layer + 1) != QD_OK)
            return qd_errf(e, QD_ERUNTIME, "tolerances: out of memory for %d layers", layer + 1);
        entry_apply(&layer_row(t, layer)[id < 0 ? 0 : 1 + id], tol, set);
    }
    return QD_OK;
}

/* The "isolated" section, created empty (no level sets anything) on first use. */
static qd_tolerances *isolated_section(qd_tolerances *t, qd_err *e) {
    if (!t->isolated) t->isolated = qd_zalloc(1, sizeof *t->isolated, e);
    return t->isolated;
}

int qd_tolerances_set_isolated(qd_tolerances *t, int layer, const char *tap, const qd_tol *tol, unsigned set,
                               qd_err *e) {
    qd_tolerances *iso = isolated_section(t, e);
    return iso ? qd_tolerances_set(iso, layer, tap, tol, set, e) : QD_ERUNTIME;
}

/* Fills the fields of *out not yet in *have from entry. */
static void inherit(qd_tol *out, unsigned *have, const qd_tol_entry *en) {
    unsigned take = en->set & ~*have;
    if (take & QD_TOL_SET_REL_L2) out->rel_l2 = en->tol.rel_l2;
    if (take & QD_TOL_SET_ATOL) out->atol = en->tol.atol;
    if (take & QD_TOL_SET_RTOL) out->rtol = en->tol.rtol;
    *have |= take;
}

/* The four levels of one section, in lookup order, for the fields not yet in *have. */
static void inherit_levels(const qd_tolerances *t, int layer, const char *tap, qd_tol *out, unsigned *have) {
    int id = tap_id(tap);
    const qd_tol_entry *row = layer >= 0 && layer < t->n_layers ? layer_row(t, layer) : NULL;
    if (row && id >= 0 && id < QD_NUM_LAYER_TAPS) inherit(out, have, &row[1 + id]);
    if (id >= 0) inherit(out, have, &t->taps[id]);
    if (row) inherit(out, have, &row[0]);
    qd_tol_entry d = {t->def, t->def_set};
    inherit(out, have, &d);
}

qd_tol qd_tolerances_lookup(const qd_tolerances *t, int layer, const char *tap) {
    qd_tol out = {0, 0, 0};
    unsigned have = 0;
    inherit_levels(t, layer, tap, &out, &have);
    return out;
}

qd_tol qd_tolerances_lookup_isolated(const qd_tolerances *t, int layer, const char *tap) {
    qd_tol out = {0, 0, 0};
    unsigned have = 0;
    if (t->isolated) inherit_levels(t->isolated, layer, tap, &out, &have);
    inherit_levels(t, layer, tap, &out, &have);
    return out;
}

unsigned qd_tolerances_verdict(const qd_tolerances *t, int isolated, int layer, const char *tap, const qd_metrics *m,
                               double prev_rel_l2) {
    qd_tol tol = isolated ? qd_tolerances_lookup_isolated(t, layer, tap) : qd_tolerances_lookup(t, layer, tap);
    return qd_verdict(m, &tol, &t->blowup, prev_rel_l2);
}

// ----------------------------------------------------------------------------
// loading: every check names the file and the field

/* Every key of obj must be in keys (NULL-terminated); `where` is the object's field path ("" = root). */
static int check_keys(const json_t *obj, const char *const *keys, const char *where, const char *expected,
                      const char *path, qd_err *e) {
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        int ok = 0;
        for (const char *const *p = keys; *p && !ok; p++) ok = strcmp(k, *p) == 0;
        if (!ok)
            return qd_errf(e, QD_EINPUT, "%s: unknown key '%s%s%s' (expected %s)", path, where, where[0] ? "." : "", k,
                           expected);
    }
    return QD_OK;
}

/* A number with lo < x (strict) or lo <= x, finite. */
static int get_number(const json_t *v, const char *field, double lo, int strict, const char *path, double *out,
                      qd_err *e) {
    if (!json_is_number(v))
        return qd_errf(e, QD_EINPUT, "%s: field '%s': expected a number, got %s", path, field, qd_json_type_name(v));
    double x = json_number_value(v);
    if (!isfinite(x) || (strict ? !(x > lo) : !(x >= lo)))
        return qd_errf(e, QD_EINPUT, "%s: field '%s': %g must be a finite number %s %g", path, field, x,
                       strict ? ">" : ">=", lo);
    *out = x;
    return QD_OK;
}

/* A (possibly partial) tolerance object at field path `where`. */
static int parse_tol(const json_t *v, const char *where, const char *path, qd_tol_entry *out, qd_err *e) {
    static const char *const keys[] = {"rel_l2", "atol", "rtol", NULL};
    if (!json_is_object(v))
        return qd_errf(e, QD_EINPUT, "%s: field '%s': expected an object, got %s", path, where, qd_json_type_name(v));
    int rc = check_keys(v, keys, where, "rel_l2, atol or rtol", path, e);
    if (rc != QD_OK) return rc;
    const unsigned bits[] = {QD_TOL_SET_REL_L2, QD_TOL_SET_ATOL, QD_TOL_SET_RTOL};
    double *dst[] = {&out->tol.rel_l2, &out->tol.atol, &out->tol.rtol};
    for (int i = 0; i < 3; i++) {
        const json_t *x = json_object_get(v, keys[i]);
        if (!x) continue;
        char field[256];
        snprintf(field, sizeof field, "%s.%s", where, keys[i]);
        rc = get_number(x, field, 0.0, 0, path, dst[i], e);
        if (rc != QD_OK) return rc;
        out->set |= bits[i];
    }
    return QD_OK;
}

/* "3" -> 3; "3/k_norm" -> 3 and tap id. A plain decimal with no sign, no leading zero, no spaces. */
static int parse_layer_key(const char *key, const char *prefix, const char *path, int *layer, int *id, qd_err *e) {
    const char *slash = strchr(key, '/');
    size_t nd = slash ? (size_t)(slash - key) : strlen(key);
    int ok = nd > 0 && nd <= 4 && !(nd > 1 && key[0] == '0');
    long l = 0;
    for (size_t i = 0; ok && i < nd; i++) {
        ok = key[i] >= '0' && key[i] <= '9';
        l = l * 10 + (key[i] - '0');
    }
    if (!ok || l >= QD_TOL_MAX_LAYERS)
        return qd_errf(e, QD_EINPUT,
                       "%s: field '%slayers.%s': expected \"<layer>\" or \"<layer>/<tap>\" with a layer index "
                       "0..%d",
                       path, prefix, key, QD_TOL_MAX_LAYERS - 1);
    *layer = (int)l;
    *id = -1;
    if (slash) {
        int i = qd_layer_tap_index(slash + 1);
        if (i < 0) {
            if (qd_model_tap_index(slash + 1) >= 0)
                return qd_errf(e, QD_EINPUT,
                               "%s: field '%slayers.%s': '%s' is a model-level tap and has no layer (put it "
                               "under '%staps')",
                               path, prefix, key, slash + 1, prefix);
            return qd_errf(e, QD_EINPUT, "%s: field '%slayers.%s': unknown tap '%s'", path, prefix, key, slash + 1);
        }
        *id = i;
    }
    return QD_OK;
}

/* The levels of a section ("default", "taps", "layers") of obj; prefix names the section in messages
 * ("" or "isolated."). */
static int load_levels(const json_t *obj, const char *prefix, const char *path, qd_tolerances *t, qd_err *e) {
    const json_t *v;
    int rc;
    if ((v = json_object_get(obj, "default"))) {
        char field[64];
        snprintf(field, sizeof field, "%sdefault", prefix);
        qd_tol_entry d = {t->def, 0};
        if ((rc = parse_tol(v, field, path, &d, e)) != QD_OK) return rc;
        t->def = d.tol;
        t->def_set |= d.set;
    }
    if ((v = json_object_get(obj, "taps"))) {
        if (!json_is_object(v))
            return qd_errf(e, QD_EINPUT, "%s: field '%staps': expected an object, got %s", path, prefix,
                           qd_json_type_name(v));
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) {
            char field[256];
            snprintf(field, sizeof field, "%staps.%s", prefix, k);
            int id = tap_id(k);
            if (id < 0) return qd_errf(e, QD_EINPUT, "%s: field '%s': unknown tap '%s'", path, field, k);
            if ((rc = parse_tol(x, field, path, &t->taps[id], e)) != QD_OK) return rc;
        }
    }
    if ((v = json_object_get(obj, "layers"))) {
        if (!json_is_object(v))
            return qd_errf(e, QD_EINPUT, "%s: field '%slayers': expected an object, got %s", path, prefix,
                           qd_json_type_name(v));
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) {
            char field[256];
            snprintf(field, sizeof field, "%slayers.%s", prefix, k);
            int layer = 0, id = -1;
            if ((rc = parse_layer_key(k, prefix, path, &layer, &id, e)) != QD_OK) return rc;
            if (ensure_layers(t, layer + 1) != QD_OK)
                return qd_errf(e, QD_ERUNTIME, "%s: out of memory for %d layers", path, layer + 1);
            if ((rc = parse_tol(x, field, path, &layer_row(t, layer)[id < 0 ? 0 : 1 + id], e)) != QD_OK) return rc;
        }
    }
    return QD_OK;
}

/* The model names of "model", in the file's order; shape fields are positive integers. */
#define MODEL_SHAPE(X) X(layers) X(hidden) X(heads) X(kv_heads) X(head_dim) X(vocab)

static int load_model(const json_t *v, const char *path, qd_tol_model *m, qd_err *e) {
#define KEY(f) #f,
    static const char *const keys[] = {MODEL_SHAPE(KEY) "config_hash", NULL};
#undef KEY
    if (!json_is_object(v))
        return qd_errf(e, QD_EINPUT, "%s: field 'model': expected an object, got %s", path, qd_json_type_name(v));
    int rc = check_keys(v, keys, "model", "layers, hidden, heads, kv_heads, head_dim, vocab or config_hash", path, e);
    if (rc != QD_OK) return rc;
    const json_t *x;
#define GET(f)                                                                                                 \
    if (!(x = json_object_get(v, #f))) return qd_errf(e, QD_EINPUT, "%s: field 'model." #f "' missing", path); \
    if (!json_is_integer(x) || json_integer_value(x) < 1 || json_integer_value(x) > INT32_MAX)                 \
        return qd_errf(e, QD_EINPUT, "%s: field 'model." #f "': expected a positive integer, got %s", path,    \
                       json_is_integer(x) ? "a value out of range" : qd_json_type_name(x));                    \
    m->f = (int)json_integer_value(x);
    MODEL_SHAPE(GET)
#undef GET
    x = json_object_get(v, "config_hash");
    if (!x) return qd_errf(e, QD_EINPUT, "%s: field 'model.config_hash' missing", path);
    const char *h = json_is_string(x) ? json_string_value(x) : NULL;
    if (!h || strlen(h) != QD_CONFIG_HASH_LEN - 1 || strncmp(h, "fnv1a64:", 8) != 0 ||
        strspn(h + 8, "0123456789abcdef") != 16)
        return qd_errf(e, QD_EINPUT, "%s: field 'model.config_hash': expected \"fnv1a64:\" and 16 hex digits", path);
    snprintf(m->config_hash, sizeof m->config_hash, "%s", h);
    m->set = 1;
    return QD_OK;
}

void qd_tolerances_set_model(qd_tolerances *t, const qd_config *c) {
    qd_tol_model *m = &t->model;
    m->layers = c->num_hidden_layers;
    m->hidden = c->hidden_size;
    m->heads = c->num_attention_heads;
    m->kv_heads = c->num_key_value_heads;
    m->head_dim = c->head_dim;
    m->vocab = c->vocab_size;
    qd_config_hash(c, m->config_hash);
    m->set = 1;
}

int qd_tolerances_check_model(const qd_tolerances *t, const qd_config *c, int strict, char *note, size_t n, qd_err *e) {
    const char *src = t->source[0] ? t->source : "tolerances";
    note[0] = '\0';
    if (!t->model.set) {
        snprintf(note, n,
                 "note: %s has no field 'model' (written before tolerance files recorded it): "
                 "cannot check that it was calibrated on this model",
                 src);
        return QD_OK;
    }
    qd_tolerances tmp; /* only its model is set and read */
    memset(&tmp, 0, sizeof tmp);
    qd_tolerances_set_model(&tmp, c);
    const qd_tol_model have = tmp.model;
    char diff[512] = "";
    size_t k = 0;
#define DIFF(f)                                  \
    if (t->model.f != have.f && k < sizeof diff) \
        k += (size_t)snprintf(diff + k, sizeof diff - k, "%s" #f " %d vs %d", k ? ", " : "", t->model.f, have.f);
    MODEL_SHAPE(DIFF)
#undef DIFF
    if (!k && strcmp(t->model.config_hash, have.config_hash) == 0) return QD_OK;
    if (!k) snprintf(diff, sizeof diff, "the same shape, another config (intermediate size, rope_theta, eps or tying)");
    snprintf(note, n, "%s was calibrated on another model: %s (config_hash %s vs %s)%s", src, diff,
             t->model.config_hash, have.config_hash, strict ? "" : "; --strict makes this an error");
    if (strict) return qd_errf(e, QD_EINPUT, "%s", note);
    char warn[1024];
    snprintf(warn, sizeof warn, "warning: %s", note);
    snprintf(note, n, "%s", warn);
    return QD_OK;
}

static int load_root(const json_t *root, const char *path, qd_tolerances *t, qd_err *e) {
    static const char *const keys[] = {
        "schema",        "precision_pair", "margin",   "default", "taps",     "layers", "blowup_ratio",
        "growth_factor", "growth_floor",   "isolated", "model",   "measured", NULL};
    if (!json_is_object(root))
        return qd_errf(e, QD_EINPUT, "%s: expected a JSON object, got %s", path, qd_json_type_name(root));
    int rc = check_keys(root, keys, "",
                        "schema, precision_pair, margin, default, taps, layers, blowup_ratio, growth_factor, "
                        "growth_floor, isolated, model or measured",
                        path, e);
    if (rc != QD_OK) return rc;

    const json_t *v = json_object_get(root, "schema");
    if (!v) return qd_errf(e, QD_EINPUT, "%s: field 'schema' missing (expected \"%s\")", path, QD_TOL_SCHEMA);
    if (!json_is_string(v) || strcmp(json_string_value(v), QD_TOL_SCHEMA) != 0)
        return qd_errf(e, QD_EINPUT, "%s: field 'schema': expected \"%s\", got %s%s%s", path, QD_TOL_SCHEMA,
                       json_is_string(v) ? "\"" : "", json_is_string(v) ? json_string_value(v) : qd_json_type_name(v),
                       json_is_string(v) ? "\"" : "");

    v = json_object_get(root, "precision_pair");
    if (!v) return qd_errf(e, QD_EINPUT, "%s: field 'precision_pair' missing (e.g. [\"bf16\", \"fp32\"])", path);
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_string(json_array_get(v, 0)) ||
        !json_is_string(json_array_get(v, 1)))
        return qd_errf(e, QD_EINPUT, "%s: field 'precision_pair': expected [test, reference], two strings", path);
    const char *pt = json_string_value(json_array_get(v, 0)), *pr = json_string_value(json_array_get(v, 1));
    prec_class cls = CLS_FP32;
    if (prec_class_of(pt, &cls) != 0 || prec_class_of(pr, &cls) != 0)
        return qd_errf(e, QD_EINPUT, "%s: field 'precision_pair': '%s': expected fp64, fp32, bf16 or fp16", path,
                       prec_class_of(pt, &cls) != 0 ? pt : pr);
    rc = qd_tolerances_default(t, pt, pr, e);
    if (rc != QD_OK) return rc;

    if ((v = json_object_get(root, "margin")) && (rc = get_number(v, "margin", 1.0, 0, path, &t->margin, e)) != QD_OK)
        return rc;
    if ((rc = load_levels(root, "", path, t, e)) != QD_OK) return rc;
    if ((v = json_object_get(root, "isolated"))) {
        static const char *const iso_keys[] = {"default", "taps", "layers", NULL};
        if (!json_is_object(v))
            return qd_errf(e, QD_EINPUT, "%s: field 'isolated': expected an object, got %s", path,
                           qd_json_type_name(v));
        if ((rc = check_keys(v, iso_keys, "isolated", "default, taps or layers", path, e)) != QD_OK) return rc;
        qd_tolerances *iso = isolated_section(t, e);
        if (!iso) return QD_ERUNTIME;
        if ((rc = load_levels(v, "isolated.", path, iso, e)) != QD_OK) return rc;
    }
    if ((v = json_object_get(root, "blowup_ratio")) &&
        (rc = get_number(v, "blowup_ratio", 1.0, 1, path, &t->blowup.blowup_ratio, e)) != QD_OK)
        return rc;
    if ((v = json_object_get(root, "growth_factor")) &&
        (rc = get_number(v, "growth_factor", 1.0, 1, path, &t->blowup.growth_factor, e)) != QD_OK)
        return rc;
    if ((v = json_object_get(root, "growth_floor")) &&
        (rc = get_number(v, "growth_floor", 0.0, 0, path, &t->blowup.growth_floor, e)) != QD_OK)
        return rc;
    if ((v = json_object_get(root, "model")) && (rc = load_model(v, path, &t->model, e)) != QD_OK) return rc;
    if ((v = json_object_get(root, "measured"))) {
        if (!json_is_object(v))
            return qd_errf(e, QD_EINPUT, "%s: field 'measured': expected an object, got %s", path,
                           qd_json_type_name(v));
        t->measured = json_incref((json_t *)v);
    }
    return QD_OK;
}

int qd_tolerances_load(const char *path, qd_tolerances *t, qd_err *e) {
    memset(t, 0, sizeof *t);
    char *text = NULL;
    /* the largest valid file: QD_TOL_MAX_LAYERS layers x 18 entries (the layer and its 17 taps) x 2
     * sections x ~120 bytes is ~4.4 MB; 16 MiB leaves room for indentation and "measured" */
    int rc = qd_read_text(path, (size_t)16 << 20, "tolerance files: the largest valid one is ~4.4 MB", &text, NULL, e);
    if (rc != QD_OK) return rc;
    json_error_t je;
    /* duplicate keys are refused: with two "rel_l2" the last one would silently win */
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root)
        return qd_errf(e, QD_EINPUT, "%s: invalid JSON at line %d, column %d: %s", path, je.line, je.column, je.text);
    rc = load_root(root, path, t, e);
    json_decref(root);
    if (rc != QD_OK) qd_tolerances_free(t);
    else snprintf(t->source, sizeof t->source, "%s", path);
    return rc;
}

int qd_tolerances_check_fit(const qd_tolerances *t, const char *name_test, const char *prec_test, const char *name_ref,
                            const char *prec_ref, int n_layers, qd_err *e) {
    const char *src = t->source[0] ? t->source : "tolerances";
    /* a pair is judged by its less precise side (fp64 ~ fp32), so compare the pairs' classes: their floors */
    qd_tol want, have;
    if (qd_tolerances_floor(prec_test, prec_ref, &want, e) != QD_OK) return e ? e->code : QD_EINPUT;
    if (qd_tolerances_floor(t->prec_test, t->prec_ref, &have, e) != QD_OK) return e ? e->code : QD_EINPUT;
    if (want.rel_l2 != have.rel_l2)
        return qd_errf(e, QD_EINPUT,
                       "%s: field 'precision_pair': written for reference %s, test %s; this comparison is reference %s "
                       "(%s), test %s (%s)",
                       src, t->prec_ref, t->prec_test, name_ref, prec_ref, name_test, prec_test);
    const qd_tolerances *sec[2] = {t, t->isolated}; /* the top level, the isolated section */
    for (int k = 0; k < 2; k++)
        if (sec[k] && sec[k]->n_layers > n_layers)
            return qd_errf(e, QD_EINPUT, "%s: field '%slayers': an entry for layer %d, but the model has %d layers",
                           src, k ? "isolated." : "", sec[k]->n_layers - 1, n_layers);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// writing

/* x as the file will hold it: rounded to the 15 significant digits it is written with, so that what is
 * written loads again. Two values the loader accepts would not otherwise: one within 1e-15 above 1 in a
 * field that must be > 1 (1.0000000000000002 is written "1"), and one within 1e-15 of DBL_MAX (written
 * "1.79769313486232e+308", which overflows to inf when read). The first becomes the smallest 15-digit
 * decimal above 1, the second the largest 15-digit decimal below DBL_MAX. */
static double real15(double x, int above_one) {
    char buf[40];
    snprintf(buf, sizeof buf, "%.15g", x);
    double y = strtod(buf, NULL);
    if (isinf(y) && !isinf(x)) y = x > 0 ? 1.79769313486231e308 : -1.79769313486231e308;
    if (above_one && x > 1.0 && !(y > 1.0)) y = 1.00000000000001;
    return y;
}

/* The same for every number in a free-form section ("measured"), in place. */
static void round15_all(json_t *v) {
    const char *k;
    json_t *x;
    size_t i;
    if (json_is_real(v)) json_real_set(v, real15(json_real_value(v), 0));
    else if (json_is_object(v)) json_object_foreach(v, k, x) round15_all(x);
    else if (json_is_array(v)) json_array_foreach(v, i, x) round15_all(x);
}

static json_t *tol_json(const qd_tol_entry *en) {
    json_t *o = json_object();
    if (en->set & QD_TOL_SET_REL_L2) json_object_set_new(o, "rel_l2", json_real(real15(en->tol.rel_l2, 0)));
    if (en->set & QD_TOL_SET_ATOL) json_object_set_new(o, "atol", json_real(real15(en->tol.atol, 0)));
    if (en->set & QD_TOL_SET_RTOL) json_object_set_new(o, "rtol", json_real(real15(en->tol.rtol, 0)));
    return o;
}

/* A section's levels into obj: "default" (what it sets), "taps" and "layers" (when not empty). */
static void levels_json(json_t *root, const qd_tolerances *t) {
    qd_tol_entry d = {t->def, t->def_set};
    if (d.set) json_object_set_new(root, "default", tol_json(&d));
    json_t *taps = json_object();
    for (int id = 0; id < QD_NUM_TAP_IDS; id++)
        if (t->taps[id].set) json_object_set_new(taps, tap_id_name(id), tol_json(&t->taps[id]));
    if (json_object_size(taps)) json_object_set(root, "taps", taps);
    json_decref(taps);
    json_t *layers = json_object();
    for (int l = 0; l < t->n_layers; l++) {
        const qd_tol_entry *row = layer_row(t, l);
        char key[64];
        if (row[0].set) {
            snprintf(key, sizeof key, "%d", l);
            json_object_set_new(layers, key, tol_json(&row[0]));
        }
        for (int tap = 0; tap < QD_NUM_LAYER_TAPS; tap++) {
            if (!row[1 + tap].set) continue;
            snprintf(key, sizeof key, "%d/%s", l, qd_layer_tap_name(tap));
            json_object_set_new(layers, key, tol_json(&row[1 + tap]));
        }
    }
    if (json_object_size(layers)) json_object_set(root, "layers", layers);
    json_decref(layers);
}

static json_t *tolerances_json(const qd_tolerances *t) {
    json_t *root = json_object();
    json_object_set_new(root, "schema", json_string(QD_TOL_SCHEMA));
    json_object_set_new(root, "precision_pair", json_pack("[ss]", t->prec_test, t->prec_ref));
    if (t->margin > 0) json_object_set_new(root, "margin", json_real(real15(t->margin, 0)));
    levels_json(root, t);
    json_object_set_new(root, "blowup_ratio", json_real(real15(t->blowup.blowup_ratio, 1)));
    json_object_set_new(root, "growth_factor", json_real(real15(t->blowup.growth_factor, 1)));
    json_object_set_new(root, "growth_floor", json_real(real15(t->blowup.growth_floor, 0)));
    if (t->isolated) {
        json_t *iso = json_object();
        levels_json(iso, t->isolated);
        json_object_set_new(root, "isolated", iso);
    }
    if (t->model.set) {
        const qd_tol_model *m = &t->model;
        json_t *mo = json_object();
#define PUT(f) json_object_set_new(mo, #f, json_integer(m->f));
        MODEL_SHAPE(PUT)
#undef PUT
        json_object_set_new(mo, "config_hash", json_string(m->config_hash));
        json_object_set_new(root, "model", mo);
    }
    if (t->measured) {
        json_t *m = json_deep_copy(t->measured);
        round15_all(m);
        json_object_set_new(root, "measured", m);
    }
    return root;
}

int qd_tolerances_write(const char *path, const qd_tolerances *t, qd_err *e) {
    json_t *root = tolerances_json(t);
    qd_out o;
    int rc = qd_out_open(&o, path, e); /* "-" is stdout; a file is written atomically (qd_files.h) */
    if (!rc) {
        /* 15 significant digits: see the header on round trips */
        int bad = json_dumpf(root, o.f, JSON_INDENT(2) | JSON_REAL_PRECISION(15)) != 0;
        bad |= fputc('\n', o.f) == EOF;
        if (bad) {
            rc = qd_errf(e, QD_ERUNTIME, "%s: write failed: %s", path, strerror(errno));
            qd_out_abort(&o);
        } else {
            rc = qd_out_commit(&o, e);
        }
    }
    json_decref(root);
    return rc;
}

// ----------------------------------------------------------------------------
// calibration

int qd_calib_init(qd_calib *c, int n_layers, qd_err *e) {
    memset(c, 0, sizeof *c);
    if (n_layers < 0 || n_layers > QD_TOL_MAX_LAYERS)
        return qd_errf(e, QD_EINPUT, "calibration: %d layers (expected 0..%d)", n_layers, QD_TOL_MAX_LAYERS);
    c->n_layers = n_layers;
    c->slots = qd_zalloc((size_t)n_layers * QD_NUM_LAYER_TAPS + QD_NUM_MODEL_TAPS, sizeof *c->slots, e);
    return c->slots ? QD_OK : QD_ERUNTIME;
}

void qd_calib_free(qd_calib *c) {
    free(c->slots);
    memset(c, 0, sizeof *c);
}

int qd_calib_add(qd_calib *c, int layer, const char *tap, const qd_metrics *m, qd_err *e) {
    qd_calib_slot *s;
    if (layer < 0) {
        int i = qd_model_tap_index(tap);
        if (i < 0) return qd_errf(e, QD_EINPUT, "calibration: '%s' is not a model-level tap", tap);
        s = &c->slots[(size_t)c->n_layers * QD_NUM_LAYER_TAPS + i];
    } else {
        int i = qd_layer_tap_index(tap);
        if (i < 0) return qd_errf(e, QD_EINPUT, "calibration: layer %d: '%s' is not a layer tap", layer, tap);
        if (layer >= c->n_layers)
            return qd_errf(e, QD_EINPUT, "calibration: layer %d of a %d-layer model", layer, c->n_layers);
        s = &c->slots[(size_t)layer * QD_NUM_LAYER_TAPS + i];
    }
    if (m->nan_test != m->nan_ref || m->posinf_test != m->posinf_ref || m->neginf_test != m->neginf_ref ||
        m->nonfinite_mismatch != 0 || !isfinite(m->rel_l2) || !isfinite(m->max_abs))
        return qd_errf(e, QD_EINPUT,
                       "calibration: layer %d tap %s has non-finite differences or nothing comparable: "
                       "a failing run cannot be blessed",
                       layer, tap);
    if (m->rel_l2 > s->rel_l2) s->rel_l2 = m->rel_l2;
    if (m->max_mag_ref > 0.0) {
        double q = m->max_abs / m->max_mag_ref;
        if (q > s->abs_ratio) s->abs_ratio = q;
    } else if (m->max_abs > s->abs_zero_ref) {
        s->abs_zero_ref = m->max_abs;
    }
    s->runs++;
    return QD_OK;
}

/* The smallest 3-significant-digit decimal >= x (x >= 0, finite). */
static double round_up3(double x) {
    if (!(x > 0.0) || !isfinite(x)) return x;
    char buf[48];
    snprintf(buf, sizeof buf, "%.2e", x);
    double y = strtod(buf, NULL);
    if (y < x) { /* "d.dde[+-]X" rounded down: add one unit in the last digit */
        int ex = atoi(strchr(buf, 'e') + 1);
        int hundredths = (buf[0] - '0') * 100 + (buf[2] - '0') * 10 + (buf[3] - '0') + 1;
        snprintf(buf, sizeof buf, "%d.%02de%d", hundredths / 100, hundredths % 100, ex);
        y = strtod(buf, NULL);
    }
    return y;
}

static double calib_value(double worst, double margin, double floor) {
    double v = margin * worst;
    return round_up3(v > floor ? v : floor);
}

static int calib_to_levels(const qd_calib *c, double margin, const qd_tol *floor, qd_tolerances *out, int isolated,
                           qd_err *e) {
    if (!isfinite(margin) || margin < 1.0)
        return qd_errf(e, QD_EINPUT, "calibration: margin %g must be a finite number >= 1", margin);
    qd_tol fl;
    if (floor) {
        if (!valid_value(floor->rel_l2) || !valid_value(floor->atol) || !valid_value(floor->rtol))
            return qd_errf(e, QD_EINPUT, "calibration: floor values must be finite and >= 0");
        fl = *floor;
    } else {
        int rc = qd_tolerances_floor(out->prec_test, out->prec_ref, &fl, e);
        if (rc != QD_OK) return rc;
    }
    for (int layer = -1; layer < c->n_layers; layer++) {
        int ntaps = layer < 0 ? QD_NUM_MODEL_TAPS : QD_NUM_LAYER_TAPS;
        for (int tap = 0; tap < ntaps; tap++) {
            const qd_calib_slot *s = layer < 0 ? &c->slots[(size_t)c->n_layers * QD_NUM_LAYER_TAPS + tap]
                                               : &c->slots[(size_t)layer * QD_NUM_LAYER_TAPS + tap];
            if (!s->runs) continue;
            qd_tol tol = {calib_value(s->rel_l2, margin, fl.rel_l2), calib_value(s->abs_zero_ref, margin, fl.atol),
                          calib_value(s->abs_ratio, margin, fl.rtol)};
            const char *name = layer < 0 ? qd_model_tap_name(tap) : qd_layer_tap_name(tap);
            int rc = isolated ? qd_tolerances_set_isolated(out, layer, name, &tol, QD_TOL_SET_ALL, e)
                              : qd_tolerances_set(out, layer, name, &tol, QD_TOL_SET_ALL, e);
            if (rc != QD_OK) return rc;
        }
    }
    out->margin = margin;
    return QD_OK;
}

int qd_calib_to_tolerances(const qd_calib *c, double margin, const qd_tol *floor, qd_tolerances *out, qd_err *e) {
    return calib_to_levels(c, margin, floor, out, 0, e);
}

int qd_calib_to_tolerances_isolated(const qd_calib *c, double margin, const qd_tol *floor, qd_tolerances *out,
                                    qd_err *e) {
    return calib_to_levels(c, margin, floor, out, 1, e);
}
