/* qd_test_model.h: what the model-level tests share: deterministic random models whose weights are
 * already bf16 (as every released checkpoint), a sink recording every tap of a run, and rel_l2.
 * Header-only (static functions): each test is one executable. Include after cmocka.h. */
#ifndef QD_TEST_MODEL_H
#define QD_TEST_MODEL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qd_bf16.h"
#include "qd_taps.h"
#include "qd_weights.h"

static uint64_t rng_state;
static inline double rng_normal(void) {
    /* splitmix64 + Box-Muller: deterministic for a seed */
    uint64_t z[2];
    for (int i = 0; i < 2; i++) {
        uint64_t x = (rng_state += 0x9e3779b97f4a7c15ull);
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        z[i] = x ^ (x >> 31);
    }
    double u1 = ((z[0] >> 11) + 1.0) / 9007199254740993.0, u2 = (z[1] >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* The small model of the emu and fused tests: NH*HD = 128 != C = 64, GQA 2:1, head_dim 32, 3 layers. */
static inline qd_config small_cfg(int tied) {
    qd_config c = {.vocab_size = 128,
                   .hidden_size = 64,
                   .intermediate_size = 96,
                   .num_hidden_layers = 3,
                   .num_attention_heads = 4,
                   .num_key_value_heads = 2,
                   .head_dim = 32,
                   .rope_theta = 1e6,
                   .rms_norm_eps = 1e-6,
                   .tie_word_embeddings = tied};
    return c;
}

/* Linear weights N(0, sd) (sd = 1/sqrt(C) keeps activations O(1)), embedding N(0, 1), norm weights
 * 1 + N(0, 0.2), and layer 0's k_norm with the seed's extreme scale (std ~9, max ~96). */
static inline void make_model(qd_weights *w, const qd_config *cfg, uint64_t seed) {
    qd_err err;
    assert_int_equal(qd_weights_alloc(w, cfg, &err), QD_OK);
    const qd_config *c = &w->cfg;
    double sd = c->hidden_size <= 64 ? 0.15 : 1.0 / sqrt((double)c->hidden_size);
    rng_state = seed;
    for (size_t i = 0; i < w->mem_floats; i++) w->mem[i] = qd_round_bf16((float)(sd * rng_normal()));
    for (size_t i = 0; i < (size_t)c->vocab_size * c->hidden_size; i++)
        w->embed[i] = qd_round_bf16((float)rng_normal());
    for (int l = 0; l < c->num_hidden_layers; l++) {
        qd_layer_weights *lw = &w->layers[l];
        for (int i = 0; i < c->hidden_size; i++) {
            lw->input_layernorm[i] = qd_round_bf16((float)(1 + 0.2 * rng_normal()));
            lw->post_attention_layernorm[i] = qd_round_bf16((float)(1 + 0.2 * rng_normal()));
        }
        for (int i = 0; i < c->head_dim; i++) {
            lw->q_norm[i] = qd_round_bf16((float)(1 + 0.2 * rng_normal()));
            lw->k_norm[i] = qd_round_bf16((float)(l == 0 ? 2 + 9 * fabs(rng_normal()) : 1 + 0.2 * rng_normal()));
        }
    }
    for (int i = 0; i < c->hidden_size; i++) w->norm[i] = qd_round_bf16((float)(1 + 0.2 * rng_normal()));
}

// ----------------------------------------------------------------------------
// a sink recording every tap of a run

#define MAX_TAPS 256
typedef struct {
    qd_tap_sink sink;
    int n;
    qd_tap_id id[MAX_TAPS];
    int layer[MAX_TAPS];     /* id.layer: -1 for embed and the head */
    char name[MAX_TAPS][24]; /* qd_tap_id_name(id) */
    size_t count[MAX_TAPS];
    int64_t rows[MAX_TAPS];
    float *data[MAX_TAPS];
} recorder;

static inline int record(qd_tap_sink *self, qd_tap_id id, const float *data, int ndim, const int64_t *shape,
                         qd_err *e) {
    (void)e;
    recorder *r = (recorder *)self->ctx;
    assert_true(r->n < MAX_TAPS);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    int k = r->n++;
    r->id[k] = id;
    r->layer[k] = id.layer;
    snprintf(r->name[k], sizeof r->name[k], "%s", qd_tap_id_name(id));
    r->count[k] = n;
    r->rows[k] = shape[0];
    r->data[k] = malloc(n * sizeof(float));
    memcpy(r->data[k], data, n * sizeof(float));
    return QD_OK;
}

static inline void recorder_init(recorder *r) {
    memset(r, 0, sizeof *r);
    r->sink.emit = record;
    r->sink.ctx = r;
}

static inline void recorder_free(recorder *r) {
    for (int i = 0; i < r->n; i++) free(r->data[i]);
    r->n = 0;
}

static inline double rel_l2(const float *a, const float *b, size_t n) {
    double d2 = 0, b2 = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        if (d != d) return INFINITY; /* NaN never passes */
        d2 += d * d;
        b2 += (double)b[i] * b[i];
    }
    return sqrt(d2 / (b2 > 0 ? b2 : 1));
}

#endif
