/* config.c: reads a Hugging Face Qwen3 config.json (see qd_config.h).
 *
 * Every value the model depends on comes from the file; nothing falls back to a released size's
 * value. The only defaults are the ones transformers itself applies: head_dim = hidden_size / heads
 * when absent, tie_word_embeddings false, max_position_embeddings 0 (unused by the forward pass).
 * Anything this project does not implement is refused by name rather than silently ignored, because
 * a silently ignored feature (a bias, a scaled RoPE) would show up later as a "numerical
 * divergence". */
#include "qd_json.h"
#include "qd_config.h"

#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// typed field readers: each returns QD_OK or fills e with "<path>: field '<name>': ..."

/* A positive int (JSON integer, not real: 1024.0 in a size field means the file was not written by
 * transformers, and silently truncating 1024.5 would hide it). */
static int get_pos_int(const json_t *root, const char *key, const char *path, int *out, qd_err *e) {
    const json_t *v = json_object_get(root, key);
    if (!v) return qd_errf(e, QD_EINPUT, "%s: field '%s' missing", path, key);
    if (!json_is_integer(v))
        return qd_errf(e, QD_EINPUT, "%s: field '%s': expected an integer, got %s", path, key, qd_json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x <= 0 || x > INT_MAX)
        return qd_errf(e, QD_EINPUT, "%s: field '%s': %lld is out of range (1..%d)", path, key, (long long)x, INT_MAX);
    *out = (int)x;
    return QD_OK;
}

/* A positive finite real; integer JSON is accepted ("rope_theta": 1000000 in released configs). */
static int check_pos_real(const json_t *v, const char *key, const char *path, double *out, qd_err *e) {
    if (!json_is_number(v))
        return qd_errf(e, QD_EINPUT, "%s: field '%s': expected a number, got %s", path, key, qd_json_type_name(v));
    double x = json_number_value(v);
    if (!(x > 0.0) || !isfinite(x))
        return qd_errf(e, QD_EINPUT, "%s: field '%s': %g must be a positive finite number", path, key, x);
    *out = x;
    return QD_OK;
}

/* Optional boolean feature flag that must be false (absent or null counts as false). */
static int refuse_true(const json_t *root, const char *key, const char *what, const char *path, qd_err *e) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v) || json_is_false(v)) return QD_OK;
    if (json_is_true(v)) return qd_errf(e, QD_EINPUT, "%s: field '%s' is true: %s not supported", path, key, what);
    return qd_errf(e, QD_EINPUT, "%s: field '%s': expected a boolean, got %s", path, key, qd_json_type_name(v));
}

/* MoE fields: present with a value > 0 means a sparse model (Qwen3-MoE), which has no dense MLP. */
static int refuse_moe(const json_t *root, const char *key, const char *path, qd_err *e) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return QD_OK;
    if (!json_is_number(v))
        return qd_errf(e, QD_EINPUT, "%s: field '%s': expected a number, got %s", path, key, qd_json_type_name(v));
    if (json_number_value(v) > 0)
        return qd_errf(e, QD_EINPUT, "%s: field '%s' is %g: mixture-of-experts models are not supported", path, key,
                       json_number_value(v));
    return QD_OK;
}

/* rope_type (5.x "rope_parameters") or rope_scaling's "rope_type"/"type" (older files) must be
 * "default": any scaling (yarn, linear, dynamic, ...) changes inv_freq and is not implemented. */
static int check_rope_type(const json_t *obj, const char *field, const char *path, int required, qd_err *e) {
    const json_t *t = json_object_get(obj, "rope_type");
    const char *key = "rope_type";
    if (!t) {
        t = json_object_get(obj, "type");
        key = "type";
    }
    if (!t) {
        if (!required) return QD_OK;
        return qd_errf(e, QD_EINPUT, "%s: field '%s': no 'rope_type': RoPE scaling is not supported", path, field);
    }
    if (!json_is_string(t))
        return qd_errf(e, QD_EINPUT, "%s: field '%s.%s': expected a string, got %s", path, field, key,
                       qd_json_type_name(t));
    if (strcmp(json_string_value(t), "default") != 0)
        return qd_errf(e, QD_EINPUT, "%s: field '%s.%s' is '%s': only 'default' RoPE is supported", path, field, key,
                       json_string_value(t));
    return QD_OK;
}

// ----------------------------------------------------------------------------
// the parser proper

static int parse_root(const json_t *root, const char *path, qd_config *c, qd_err *e) {
    int rc;
    if (!json_is_object(root))
        return qd_errf(e, QD_EINPUT, "%s: expected a JSON object, got %s", path, qd_json_type_name(root));

    /* model_type first: a different architecture would fail later in confusing ways. */
    const json_t *mt = json_object_get(root, "model_type");
    if (!mt) return qd_errf(e, QD_EINPUT, "%s: field 'model_type' missing (expected \"qwen3\")", path);
    if (!json_is_string(mt))
        return qd_errf(e, QD_EINPUT, "%s: field 'model_type': expected a string, got %s", path, qd_json_type_name(mt));
    if (strcmp(json_string_value(mt), "qwen3") != 0)
        return qd_errf(e, QD_EINPUT, "%s: field 'model_type' is '%s': only 'qwen3' is supported", path,
                       json_string_value(mt));

    /* Unsupported features, refused by name. */
    if ((rc = refuse_true(root, "attention_bias", "biases in the attention projections are", path, e))) return rc;
    if ((rc = refuse_true(root, "use_sliding_window", "sliding-window attention is", path, e))) return rc;
    static const char *const moe_fields[] = {"num_experts", "num_experts_per_tok", "moe_intermediate_size",
                                             "decoder_sparse_step"};
    for (size_t i = 0; i < sizeof moe_fields / sizeof moe_fields[0]; i++)
        if ((rc = refuse_moe(root, moe_fields[i], path, e))) return rc;
    const json_t *act = json_object_get(root, "hidden_act");
    if (act && !json_is_null(act)) {
        if (!json_is_string(act))
            return qd_errf(e, QD_EINPUT, "%s: field 'hidden_act': expected a string, got %s", path,
                           qd_json_type_name(act));
        /* The MLP is SwiGLU; another activation would compute a different model. */
        if (strcmp(json_string_value(act), "silu") != 0)
            return qd_errf(e, QD_EINPUT, "%s: field 'hidden_act' is '%s': only 'silu' is supported", path,
                           json_string_value(act));
    }

    /* Sizes. */
    if ((rc = get_pos_int(root, "vocab_size", path, &c->vocab_size, e))) return rc;
    if ((rc = get_pos_int(root, "hidden_size", path, &c->hidden_size, e))) return rc;
    if ((rc = get_pos_int(root, "intermediate_size", path, &c->intermediate_size, e))) return rc;
    if ((rc = get_pos_int(root, "num_hidden_layers", path, &c->num_hidden_layers, e))) return rc;
    if ((rc = get_pos_int(root, "num_attention_heads", path, &c->num_attention_heads, e))) return rc;
    if ((rc = get_pos_int(root, "num_key_value_heads", path, &c->num_key_value_heads, e))) return rc;
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return qd_errf(e, QD_EINPUT, "%s: field 'num_key_value_heads': %d does not divide num_attention_heads %d", path,
                       c->num_key_value_heads, c->num_attention_heads);

    /* head_dim: Qwen3 sets it explicitly (128) and it is NOT hidden/heads in general; transformers
     * only derives it when absent or null. */
    const json_t *hd = json_object_get(root, "head_dim");
    if (hd && !json_is_null(hd)) {
        if ((rc = get_pos_int(root, "head_dim", path, &c->head_dim, e))) return rc;
    } else {
        if (c->hidden_size % c->num_attention_heads != 0)
            return qd_errf(e, QD_EINPUT,
                           "%s: field 'head_dim' missing and hidden_size %d is not a multiple of "
                           "num_attention_heads %d",
                           path, c->hidden_size, c->num_attention_heads);
        c->head_dim = c->hidden_size / c->num_attention_heads;
    }
    if (c->head_dim % 2 != 0) /* rotate-half RoPE pairs j with j + head_dim/2 */
        return qd_errf(e, QD_EINPUT, "%s: field 'head_dim': %d must be even for RoPE", path, c->head_dim);
    if ((long long)c->num_attention_heads * c->head_dim > INT_MAX)
        return qd_errf(e, QD_EINPUT, "%s: field 'head_dim': num_attention_heads * head_dim = %lld is out of range",
                       path, (long long)c->num_attention_heads * c->head_dim);

    const json_t *mp = json_object_get(root, "max_position_embeddings");
    c->max_position_embeddings = 0;
    if (mp && !json_is_null(mp))
        if ((rc = get_pos_int(root, "max_position_embeddings", path, &c->max_position_embeddings, e))) return rc;

    /* RoPE: top-level rope_theta (released) or rope_parameters.rope_theta (transformers 5.x). */
    const json_t *rp = json_object_get(root, "rope_parameters");
    const json_t *theta_top = json_object_get(root, "rope_theta");
    const json_t *theta_rp = NULL;
    if (rp && !json_is_null(rp)) {
        if (!json_is_object(rp))
            return qd_errf(e, QD_EINPUT, "%s: field 'rope_parameters': expected an object, got %s", path,
                           qd_json_type_name(rp));
        if ((rc = check_rope_type(rp, "rope_parameters", path, 0, e))) return rc;
        theta_rp = json_object_get(rp, "rope_theta");
    }
    const json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs))
            return qd_errf(e, QD_EINPUT, "%s: field 'rope_scaling': expected an object or null, got %s", path,
                           qd_json_type_name(rs));
        if ((rc = check_rope_type(rs, "rope_scaling", path, 1, e))) return rc;
    }
    if (theta_rp) {
        if ((rc = check_pos_real(theta_rp, "rope_parameters.rope_theta", path, &c->rope_theta, e))) return rc;
        double top;
        if (theta_top && !json_is_null(theta_top)) {
            if ((rc = check_pos_real(theta_top, "rope_theta", path, &top, e))) return rc;
            if (top != c->rope_theta)
                return qd_errf(e, QD_EINPUT, "%s: field 'rope_theta': %g disagrees with rope_parameters.rope_theta %g",
                               path, top, c->rope_theta);
        }
    } else if (theta_top && !json_is_null(theta_top)) {
        if ((rc = check_pos_real(theta_top, "rope_theta", path, &c->rope_theta, e))) return rc;
    } else {
        return qd_errf(e, QD_EINPUT,
                       "%s: field 'rope_theta' missing (neither 'rope_theta' nor "
                       "'rope_parameters.rope_theta' is present)",
                       path);
    }

    const json_t *eps = json_object_get(root, "rms_norm_eps");
    if (!eps) return qd_errf(e, QD_EINPUT, "%s: field 'rms_norm_eps' missing", path);
    if ((rc = check_pos_real(eps, "rms_norm_eps", path, &c->rms_norm_eps, e))) return rc;

    /* transformers' Qwen3Config defaults tie_word_embeddings to false. */
    const json_t *tie = json_object_get(root, "tie_word_embeddings");
    c->tie_word_embeddings = 0;
    if (tie && !json_is_null(tie)) {
        if (!json_is_boolean(tie))
            return qd_errf(e, QD_EINPUT, "%s: field 'tie_word_embeddings': expected a boolean, got %s", path,
                           qd_json_type_name(tie));
        c->tie_word_embeddings = json_is_true(tie);
    }

    /* layer_types (5.x): every layer must be full attention. */
    const json_t *lt = json_object_get(root, "layer_types");
    if (lt && !json_is_null(lt)) {
        if (!json_is_array(lt))
            return qd_errf(e, QD_EINPUT, "%s: field 'layer_types': expected an array, got %s", path,
                           qd_json_type_name(lt));
        if (json_array_size(lt) != (size_t)c->num_hidden_layers)
            return qd_errf(e, QD_EINPUT, "%s: field 'layer_types': %zu entries but num_hidden_layers is %d", path,
                           json_array_size(lt), c->num_hidden_layers);
        for (size_t i = 0; i < json_array_size(lt); i++) {
            const json_t *s = json_array_get(lt, i);
            if (!json_is_string(s))
                return qd_errf(e, QD_EINPUT, "%s: field 'layer_types[%zu]': expected a string, got %s", path, i,
                               qd_json_type_name(s));
            if (strcmp(json_string_value(s), "full_attention") != 0)
                return qd_errf(e, QD_EINPUT,
                               "%s: field 'layer_types[%zu]' is '%s': only 'full_attention' is "
                               "supported",
                               path, i, json_string_value(s));
        }
    }

    /* dtype: informational ("dtype" in 5.x, "torch_dtype" in released files). */
    const char *dkey = "dtype";
    const json_t *dt = json_object_get(root, dkey);
    if (!dt || json_is_null(dt)) {
        dkey = "torch_dtype";
        dt = json_object_get(root, dkey);
    }
    c->dtype[0] = '\0';
    if (dt && !json_is_null(dt)) {
        if (!json_is_string(dt))
            return qd_errf(e, QD_EINPUT, "%s: field '%s': expected a string, got %s", path, dkey,
                           qd_json_type_name(dt));
        const char *s = json_string_value(dt);
        if (strlen(s) >= sizeof c->dtype)
            return qd_errf(e, QD_EINPUT, "%s: field '%s': '%s' is not a dtype name", path, dkey, s);
        strcpy(c->dtype, s);
    }
    return QD_OK;
}

int qd_config_parse(const char *json_text, const char *path, qd_config *c, qd_err *e) {
    memset(c, 0, sizeof *c);
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return qd_errf(e, QD_EINPUT, "%s: invalid JSON at line %d, column %d: %s", path, jerr.line, jerr.column,
                       jerr.text);
    int rc = parse_root(root, path, c, e);
    json_decref(root);
    if (rc) memset(c, 0, sizeof *c);
    return rc;
}

int qd_config_load(const char *dir, qd_config *c, char **text_out, qd_err *e) {
    if (text_out) *text_out = NULL;
    memset(c, 0, sizeof *c);
    char *path = qd_path_join(dir, "config.json", e);
    if (!path) return QD_ERUNTIME;
    char *text = NULL;
    int rc = qd_read_file(path, &text, NULL, e);
    if (rc == QD_OK) rc = qd_config_parse(text, path, c, e);
    free(path);
    if (rc == QD_OK && text_out) *text_out = text;
    else free(text);
    return rc;
}

void qd_config_hash(const qd_config *c, char out[QD_CONFIG_HASH_LEN]) {
    char text[512];
    snprintf(text, sizeof text, "qwen3;L=%d;C=%d;I=%d;NH=%d;NKV=%d;HD=%d;V=%d;theta=%.17g;eps=%.17g;tied=%d",
             c->num_hidden_layers, c->hidden_size, c->intermediate_size, c->num_attention_heads, c->num_key_value_heads,
             c->head_dim, c->vocab_size, c->rope_theta, c->rms_norm_eps, c->tie_word_embeddings);
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64: offset basis, prime 0x100000001b3 */
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) h = (h ^ *p) * 0x100000001b3ULL;
    snprintf(out, QD_CONFIG_HASH_LEN, "fnv1a64:%016llx", (unsigned long long)h);
}

qd_param_counts qd_config_params(const qd_config *c) {
    const double C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim;
    const double Q = (double)c->num_attention_heads * c->head_dim, KV = (double)c->num_key_value_heads * c->head_dim;
    qd_param_counts n;
    n.layer_mats = (Q + 2 * KV) * C + C * Q + 3 * I * C;
    n.layer_norms = 2 * C + 2 * HD;
    n.embed = (double)c->vocab_size * C;
    n.final_norm = C;
    return n;
}
