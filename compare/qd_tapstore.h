/* qd_tapstore.h: a tap sink that keeps a copy of the taps of the current step: one layer's 17 taps (the
 * buffers are reused from layer to layer, so memory holds one layer, never the whole model's) plus the
 * model-level taps, each slot found by its qd_tap_id. */
#ifndef QD_TAPSTORE_H
#define QD_TAPSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "qd_taps.h"

typedef struct {
    float *data; /* (shape) */
    size_t cap;  /* floats allocated */
    int ndim;
    int64_t shape[3];
    int present;
} qd_tapbuf;

typedef struct {
    qd_tap_sink sink; /* give &store.sink to a backend */
    qd_tapbuf layer_taps[QD_NUM_LAYER_TAPS];
    qd_tapbuf model_taps[QD_NUM_MODEL_TAPS];
    int layer; /* layer of the taps held in layer_taps, -1 if none */
} qd_tapstore;

void qd_tapstore_init(qd_tapstore *s);
/* Forgets the held layer taps (buffers kept) before the next layer runs. */
void qd_tapstore_clear_layer(qd_tapstore *s);
/* The tap, or NULL when the backend did not emit it (a layer tap: of that layer). */
const qd_tapbuf *qd_tapstore_get(const qd_tapstore *s, qd_tap_id id);
void qd_tapstore_free(qd_tapstore *s);

#endif
