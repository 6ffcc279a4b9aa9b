/* tapstore.c: see qd_tapstore.h. */
#include "qd_tapstore.h"

#include <stdlib.h>
#include <string.h>

#include "qd_util.h"

static int tapstore_emit(qd_tap_sink *self, int layer, const char *name, const float *data, int ndim,
                         const int64_t *shape) {
    qd_tapstore *s = (qd_tapstore *)self->ctx;
    qd_tapbuf *b = NULL;
    if (layer < 0) {
        int i = qd_model_tap_index(name);
        if (i >= 0) b = &s->model_taps[i];
    } else {
        int i = qd_layer_tap_index(name);
        if (i >= 0) {
            if (s->layer != layer) {
                qd_tapstore_clear_layer(s);
                s->layer = layer;
            }
            b = &s->layer_taps[i];
        }
    }
    if (b) {
        size_t n = 1;
        for (int d = 0; d < ndim; d++) n *= (size_t)shape[d];
        if (n > b->cap) {
            free(b->data);
            b->data = qd_malloc(n * sizeof(float));
            b->cap = n;
        }
        memcpy(b->data, data, n * sizeof(float));
        b->ndim = ndim;
        for (int d = 0; d < 3; d++) b->shape[d] = d < ndim ? shape[d] : 1;
        b->present = 1;
    }
    return s->forward ? s->forward->emit(s->forward, layer, name, data, ndim, shape) : QD_OK;
}

void qd_tapstore_init(qd_tapstore *s, qd_tap_sink *forward) {
    memset(s, 0, sizeof *s);
    s->sink.emit = tapstore_emit;
    s->sink.ctx = s;
    s->forward = forward;
    s->layer = -1;
}

void qd_tapstore_clear_layer(qd_tapstore *s) {
    for (int i = 0; i < QD_NUM_LAYER_TAPS; i++) s->layer_taps[i].present = 0;
    s->layer = -1;
}

const qd_tapbuf *qd_tapstore_get(const qd_tapstore *s, int layer, int tap) {
    const qd_tapbuf *b;
    if (layer < 0) {
        if (tap < 0 || tap >= QD_NUM_MODEL_TAPS) return NULL;
        b = &s->model_taps[tap];
    } else {
        if (tap < 0 || tap >= QD_NUM_LAYER_TAPS || s->layer != layer) return NULL;
        b = &s->layer_taps[tap];
    }
    return b->present ? b : NULL;
}

void qd_tapstore_free(qd_tapstore *s) {
    for (int i = 0; i < QD_NUM_LAYER_TAPS; i++) free(s->layer_taps[i].data);
    for (int i = 0; i < QD_NUM_MODEL_TAPS; i++) free(s->model_taps[i].data);
    memset(s, 0, sizeof *s);
}
