/* taps.c: see qd_taps.h. */
#include "qd_taps.h"

#include <string.h>

static const char *const layer_tap_names[QD_NUM_LAYER_TAPS] = {
    "attn_norm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm",    "q_rope",    "k_rope", "attn",
    "o_proj",    "attn_residual", "mlp_norm", "gate_proj", "up_proj", "act", "down_proj", "out",
};

static const char *const model_tap_names[QD_NUM_MODEL_TAPS] = {"embed", "final_norm", "logits"};

const char *qd_layer_tap_name(int tap) {
    return tap >= 0 && tap < QD_NUM_LAYER_TAPS ? layer_tap_names[tap] : "?";
}

const char *qd_model_tap_name(int tap) {
    return tap >= 0 && tap < QD_NUM_MODEL_TAPS ? model_tap_names[tap] : "?";
}

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
    case QD_TAP_Q_ROPE: shape[1] = NH; shape[2] = HD; return 3;
    case QD_TAP_K_NORM:
    case QD_TAP_K_ROPE: shape[1] = NKV; shape[2] = HD; return 3;
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
