/* qd_backend.h: one interface for every backend the comparator can step layer by layer.
 *
 *     embed(tokens)                 -> h (T, C)
 *     layer(i, h_in, pos0)          -> h_out (T, C)   appends positions pos0..pos0+T-1 to its KV cache
 *     head(h)                       -> logits (T, V)
 * Hidden states cross the interface as host float32 (T, C) arrays, whatever the backend computes in, so
 * one backend's input to layer i can be fed to another (teacher forcing, --isolate). Taps go to the sink
 * given to each call (may be NULL). Every call returns QD_OK or an error code with e filled: the backend's
 * own message, or a failing sink's (passed through untouched, e.g. a dump write's). */
#ifndef QD_BACKEND_H
#define QD_BACKEND_H

#include <stdint.h>

#include "qd_fault.h"
#include "qd_taps.h"
#include "qd_weights.h"

typedef struct qd_backend qd_backend;

struct qd_backend {
    char name[32];     /* "ref", "emu", "fused" */
    char precision[8]; /* activations: "fp64" | "fp32" | "bf16" | "fp16" (schema v1 attr) */
    char accum[8];     /* reductions: "f32" | "f64" */
    const qd_config *cfg;
    void *impl;
    int (*embed)(qd_backend *b, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e);
    int (*layer)(qd_backend *b, int layer, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink,
                 qd_err *e);
    int (*head)(qd_backend *b, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e);
    void (*destroy)(qd_backend *b);
};

typedef struct {
    int threads;          /* CPU backends; <= 0: default */
    int accum_f64;        /* ref: --ref-accum f64 */
    int max_seq;          /* KV cache capacity (prompt + decode steps) */
    const char *act;      /* emu, fused: activation dtype "bf16" (default when NULL) | "fp16" | "fp32" */
    qd_fault fault;       /* emu, fused: a fault to inject; kind QD_FAULT_NONE for none */
    int taps_all;         /* fused: the unfused variant, so every tap exists */
    unsigned fp32_points; /* emu: precision points kept in fp32 (qd_emu.h, bit p: qd_precision_point p); 0: none.
                             Any other backend refuses a non-zero mask (QD_EINPUT) */
} qd_backend_opts;

/* Creates a backend by name over loaded weights (borrowed). Unknown names and backends not built into
 * this binary are QD_EINPUT naming the backend. */
qd_backend *qd_backend_create(const char *name, const qd_weights *w, const qd_backend_opts *opts, qd_err *e);
void qd_backend_destroy(qd_backend *b);

/* The backends this binary knows, for --help and error messages: "ref, emu" (+ ", fused"). */
const char *qd_backend_names(void);

/* The default backend under test: "fused" when this binary has it and a CUDA device is present, else
 * "emu". */
const char *qd_backend_default_test(void);

#endif
