/* taps.c: see qd_taps.h. */
#include "qd_taps.h"

#include <stdio.h>
#include <string.h>

static const char *const layer_tap_names[QD_NUM_LAYER_TAPS] = {
    "attn_norm", "q_proj",        "k_proj",   "v_proj",    "q_norm",  "k_norm", "q_rope",    "k_rope", "attn",
    "o_proj",    "attn_residual", "mlp_norm", "gate_proj", "up_proj", "act",    "down_proj", "out",
};

static const char *const model_tap_names[QD_NUM_MODEL_TAPS] = {"embed", "final_norm", "logits"};

const char *qd_layer_tap_name(int tap) { return tap >= 0 && tap < QD_NUM_LAYER_TAPS ? layer_tap_names[tap] : "?"; }

const char *qd_model_tap_name(int tap) { return tap >= 0 && tap < QD_NUM_MODEL_TAPS ? model_tap_names[tap] : "?"; }

int qd_layer_tap_index(const char *name) {
    for (int i = 0; i < QD_NUM_LAYER_TAPS; i++)
        if (strcmp(name, layer_tap_names[i]) == 0) return i;
    return -1;
}

int qd_model_tap_index(const char *name) {
    for (int i = 0; i < QD_NUM_MODEL_TAPS; i++)
        if (strcmp(name, model_tap_names[i]) == 0) return i;
    return -1;
}

int qd_layer_tap_shape(const qd_config *c, int tap, int64_t T, int64_t shape[3]) {
    int64_t C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim;
    int64_t NH = c->num_attention_heads, NKV = c->num_key_value_heads;
    shape[0] = T;
    switch (tap) {
    case QD_TAP_Q_PROJ:
    case QD_TAP_ATTN: shape[1] = NH * HD; return 2;
    case QD_TAP_K_PROJ:
    case QD_TAP_V_PROJ: shape[1] = NKV * HD; return 2;
    case QD_TAP_Q_NORM:
    case QD_TAP_Q_ROPE:
        shape[1] = NH;
        shape[2] = HD;
        return 3;
    case QD_TAP_K_NORM:
    case QD_TAP_K_ROPE:
        shape[1] = NKV;
        shape[2] = HD;
        return 3;
    case QD_TAP_GATE_PROJ:
    case QD_TAP_UP_PROJ:
    case QD_TAP_ACT: shape[1] = I; return 2;
    default: shape[1] = C; return 2;
    }
}

int qd_model_tap_shape(const qd_config *c, int tap, int64_t T, int64_t shape[3]) {
    shape[0] = T;
    shape[1] = tap == QD_TAP_LOGITS ? c->vocab_size : c->hidden_size;
    return 2;
}

// ----------------------------------------------------------------------------
// tap identity

qd_tap_id qd_tap_layer(int layer, int tap) { return (qd_tap_id){QD_POS_LAYER, layer, tap}; }

qd_tap_id qd_tap_model(int tap) { return (qd_tap_id){tap == QD_TAP_EMBED ? QD_POS_EMBED : QD_POS_HEAD, -1, tap}; }

int qd_tap_id_valid(qd_tap_id id) {
    switch (id.pos) {
    case QD_POS_EMBED: return id.layer == -1 && id.tap == QD_TAP_EMBED;
    case QD_POS_LAYER: return id.layer >= 0 && id.tap >= 0 && id.tap < QD_NUM_LAYER_TAPS;
    case QD_POS_HEAD: return id.layer == -1 && (id.tap == QD_TAP_FINAL_NORM || id.tap == QD_TAP_LOGITS);
    }
    return 0;
}

int qd_tap_id_equal(qd_tap_id a, qd_tap_id b) { return a.pos == b.pos && a.layer == b.layer && a.tap == b.tap; }

int qd_tap_id_cmp(qd_tap_id a, qd_tap_id b) {
    if (a.pos != b.pos) return a.pos < b.pos ? -1 : 1;
    if (a.layer != b.layer) return a.layer < b.layer ? -1 : 1;
    return a.tap < b.tap ? -1 : a.tap > b.tap;
}

const char *qd_tap_id_name(qd_tap_id id) {
    if (!qd_tap_id_valid(id)) return "?";
    return id.pos == QD_POS_LAYER ? qd_layer_tap_name(id.tap) : qd_model_tap_name(id.tap);
}

const char *qd_tap_id_pos_label(qd_tap_id id, char *buf, size_t n) {
    if (id.pos == QD_POS_LAYER) snprintf(buf, n, "%d", id.layer);
    else snprintf(buf, n, "%s", id.pos == QD_POS_EMBED ? "embed" : "head");
    return buf;
}

int qd_tap_id_kind(qd_tap_id id) { return id.pos == QD_POS_LAYER ? id.tap : QD_NUM_LAYER_TAPS + id.tap; }

int qd_tap_id_shape(const qd_config *c, qd_tap_id id, int64_t T, int64_t shape[3]) {
    return id.pos == QD_POS_LAYER ? qd_layer_tap_shape(c, id.tap, T, shape) : qd_model_tap_shape(c, id.tap, T, shape);
}

int qd_tap_id_parse(const char *name, int layer, qd_tap_id *out) {
    int tap = !name ? -1 : layer >= 0 ? qd_layer_tap_index(name) : qd_model_tap_index(name);
    if (tap < 0) return -1;
    *out = layer >= 0 ? qd_tap_layer(layer, tap) : qd_tap_model(tap);
    return 0;
}

int qd_tap_emit(qd_tap_sink *s, const qd_config *c, qd_tap_id id, const float *data, int64_t T, qd_err *e) {
    if (!s) return QD_OK;
    int64_t shape[3];
    int ndim = qd_tap_id_shape(c, id, T, shape);
    int rc = s->emit(s, id, data, ndim, shape, e);
    if (rc != QD_OK && e && e->code == QD_OK) /* a sink that failed without a word: say where, at least */
        qd_errf(e, rc, "tap sink failed on '%s' of layer %d (code %d)", qd_tap_id_name(id), id.layer, rc);
    return rc;
}
