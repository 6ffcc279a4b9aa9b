/* tapstore.c: see qd_tapstore.h. */
#include "qd_tapstore.h"

#include <stdlib.h>
#include <string.h>

#include "qd_util.h"

static int tapstore_emit(qd_tap_sink *self, qd_tap_id id, const float *data, int ndim, const int64_t *shape,
                         qd_err *e) {
    qd_tapstore *s = (qd_tapstore *)self->ctx;
    if (!qd_tap_id_valid(id) || ndim < 1 || ndim > 3)
        return qd_errf(e, QD_EINPUT,
                       "tap store: tap %d at position %d, layer %d, rank %d is not a tap of the "
                       "schema",
                       id.tap, (int)id.pos, id.layer, ndim);
    qd_tapbuf *b;
    if (id.pos == QD_POS_LAYER) {
        if (s->layer != id.layer) {
            qd_tapstore_clear_layer(s);
            s->layer = id.layer;
        }
        b = &s->layer_taps[id.tap];
    } else {
        b = &s->model_taps[id.tap];
    }
    size_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (size_t)shape[d];
    if (n > b->cap) {
        float *grown = qd_alloc(n * sizeof(float), e);
        if (!grown) return QD_ERUNTIME;
        free(b->data);
        b->data = grown;
        b->cap = n;
    }
    memcpy(b->data, data, n * sizeof(float));
    b->ndim = ndim;
    for (int d = 0; d < 3; d++) b->shape[d] = d < ndim ? shape[d] : 1;
    b->present = 1;
    return QD_OK;
}

void qd_tapstore_init(qd_tapstore *s) {
    memset(s, 0, sizeof *s);
    s->sink.emit = tapstore_emit;
    s->sink.ctx = s;
    s->layer = -1;
}

void qd_tapstore_clear_layer(qd_tapstore *s) {
    for (int i = 0; i < QD_NUM_LAYER_TAPS; i++) s->layer_taps[i].present = 0;
    s->layer = -1;
}

const qd_tapbuf *qd_tapstore_get(const qd_tapstore *s, qd_tap_id id) {
    if (!qd_tap_id_valid(id)) return NULL;
    const qd_tapbuf *b;
    if (id.pos == QD_POS_LAYER) {
        if (s->layer != id.layer) return NULL;
        b = &s->layer_taps[id.tap];
    } else {
        b = &s->model_taps[id.tap];
    }
    return b->present ? b : NULL;
}

void qd_tapstore_free(qd_tapstore *s) {
    for (int i = 0; i < QD_NUM_LAYER_TAPS; i++) free(s->layer_taps[i].data);
    for (int i = 0; i < QD_NUM_MODEL_TAPS; i++) free(s->model_taps[i].data);
    memset(s, 0, sizeof *s);
}
