/* ops.c: the reference's ops (qd_ref_ops.h). Plain loops in the obvious order.
 *
 * Every reduction runs left to right over its index, in float (QD_ACCUM_F32) or in double rounded once
 * to float (QD_ACCUM_F64). OpenMP only splits independent output rows or elements, and each one is
 * computed entirely by one thread, so the results are bitwise identical for any thread count. The
 * build keeps -ffp-contract=off, so a*b+c is always two roundings. */
#include "qd_ref_ops.h"

#include <math.h>
#include <stdlib.h>

#include "qd_matmul.h"
#include "qd_util.h"

// ----------------------------------------------------------------------------
// RMSNorm

void rmsnorm_forward(float *out, const float *x, const float *w, int T, int n, float eps, qd_accum accum) {
    // x, out (T, n); w (n)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * n; // (n)
        float *ot = out + (size_t)t * n;     // (n)
        float scale;
        if (accum == QD_ACCUM_F64) {
            scale = rms_scale_f64(dot_f64(xt, xt, n), n, eps);
        } else {
            scale = rms_scale_f32(dot_f32(xt, xt, n), n, eps);
        }
        // normalise first, then weight: (x * scale) * w, the order transformers uses
        for (int i = 0; i < n; i++) ot[i] = (xt[i] * scale) * w[i];
    }
}

// ----------------------------------------------------------------------------
// matmul in the HF (out, in) layout

void matmul_forward_naive(float *out, const float *x, const float *W, int T, int in, int out_dim, qd_accum accum) {
    // x (T, in); W (out_dim, in); out (T, out_dim)
    // What matmul_forward computes, in the obvious loops: each out[t,o] is one dot product over i in
    // order, computed by one thread.
#pragma omp parallel for collapse(2) schedule(static)
    for (int o = 0; o < out_dim; o++) {
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * in; // (in)
            const float *wo = W + (size_t)o * in; // (in)
            out[(size_t)t * out_dim + o] = accum == QD_ACCUM_F64 ? (float)dot_f64(xt, wo, in) : dot_f32(xt, wo, in);
        }
    }
}

void matmul_forward_w(float *out, const float *x, qd_wview W, int T, int in, int out_dim, qd_accum accum) {
    // x (T, in); W (out_dim, in) in its stored dtype; out (T, out_dim)
    // matmul_forward_naive's dot products, bit for bit, in a cache- and register-blocked loop order
    // (common/matmul.c says why the order of each sum is still i = 0, 1, ..., in-1).
    if (accum == QD_ACCUM_F64) qd_matmul_f64(out, x, W, T, in, out_dim);
    else qd_matmul_f32(out, x, W, T, in, out_dim);
}

void matmul_forward(float *out, const float *x, const float *W, int T, int in, int out_dim, qd_accum accum) {
    matmul_forward_w(out, x, (qd_wview){W, QD_DT_F32}, T, in, out_dim, accum);
}

// ----------------------------------------------------------------------------
// RoPE, rotate-half ("NEOX") layout (qd_spec.h): pair i with i + head_dim/2, rotated by pos * inv_freq[i]

void rope_forward(float *x, int T, int nheads, int head_dim, int pos0, const float *inv_freq) {
    // x (T, nheads, head_dim); inv_freq (head_dim/2)
    int half = head_dim / 2;
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < half; i++) {
            float c, s;
            rope_cos_sin(pos0 + t, inv_freq[i], &c, &s);
            for (int h = 0; h < nheads; h++) {
                float *xh = x + ((size_t)t * nheads + h) * head_dim; // (head_dim)
                rope_rotate_pair(&xh[i], &xh[i + half], c, s);
            }
        }
    }
}

// ----------------------------------------------------------------------------
// causal GQA attention

/* One query row against keys 0..n_keys-1 of one kv head, accumulating in float.
 * q (HD); k, v: first row of the kv head, rows kv_stride floats apart; att (n_keys) scratch; out (HD). */
static void attention_row_f32(float *out, const float *q, const float *k, const float *v, size_t kv_stride, int n_keys,
                              int HD, float scale, float *att) {
    float max = -INFINITY; // not 0: with every score below 0 a max of 0 would underflow every exp
    for (int j = 0; j < n_keys; j++) {
        att[j] = dot_f32(q, k + (size_t)j * kv_stride, HD) * scale;
        if (att[j] > max) max = att[j];
    }
    float sum = 0.0f;
    for (int j = 0; j < n_keys; j++) {
        att[j] = expf(att[j] - max);
        sum += att[j];
    }
    for (int j = 0; j < n_keys; j++) att[j] /= sum;
    // out[d] = sum over j = 0..n_keys-1 of att[j] * v[j,d], each out[d] accumulated in j order
    for (int d = 0; d < HD; d++) out[d] = 0.0f;
    for (int j = 0; j < n_keys; j++) {
        const float *vj = v + (size_t)j * kv_stride; // (HD)
        for (int d = 0; d < HD; d++) out[d] += att[j] * vj[d];
    }
}

/* The same in double: scores, exp, the softmax sum and the weighted sum of V; out rounded once.
 * att (n_keys), acc (HD) scratch. */
static void attention_row_f64(float *out, const float *q, const float *k, const float *v, size_t kv_stride, int n_keys,
                              int HD, double scale, double *att, double *acc) {
    double max = -INFINITY;
    for (int j = 0; j < n_keys; j++) {
        att[j] = dot_f64(q, k + (size_t)j * kv_stride, HD) * scale;
        if (att[j] > max) max = att[j];
    }
    double sum = 0.0;
    for (int j = 0; j < n_keys; j++) {
        att[j] = exp(att[j] - max);
        sum += att[j];
    }
    for (int j = 0; j < n_keys; j++) att[j] /= sum;
    for (int d = 0; d < HD; d++) acc[d] = 0.0;
    for (int j = 0; j < n_keys; j++) {
        const float *vj = v + (size_t)j * kv_stride; // (HD)
        for (int d = 0; d < HD; d++) acc[d] += att[j] * (double)vj[d];
    }
    for (int d = 0; d < HD; d++) out[d] = (float)acc[d];
}

int attention_forward(float *out, const float *q, const float *kcache, const float *vcache, int T, int pos0, int NH,
                      int NKV, int HD, qd_accum accum, qd_err *e) {
    // q (T, NH, HD); kcache, vcache (max_seq, NKV, HD) holding positions 0..pos0+T-1; out (T, NH*HD)
    int kv_mul = NH / NKV;                   // query heads per kv head
    int max_keys = pos0 + T;                 // the last query sees every cached position
    size_t kv_stride = (size_t)NKV * HD;     // floats between consecutive positions of one kv head
    double scale64 = 1.0 / sqrt((double)HD); // HD^-0.5
    float scale32 = (float)scale64;
    size_t scratch = (size_t)max_keys * sizeof(double) + (size_t)HD * sizeof(double);
    int failed = 0; // a thread without scratch: the call fails, once every thread has left the loop
#pragma omp parallel
    {
        // per-thread scratch for one row of scores (double covers both accumulations)
        double *att = qd_alloc(scratch, NULL);
        if (!att) {
#pragma omp atomic write
            failed = 1;
        }
        double *acc = att ? att + max_keys : NULL; // (HD)
#pragma omp for collapse(2) schedule(static)
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < NH; h++) {
                if (!att) continue;
                int n_keys = pos0 + t + 1; // causal: positions 0..pos0+t
                int kvh = h / kv_mul;
                const float *qh = q + ((size_t)t * NH + h) * HD; // (HD)
                const float *k = kcache + (size_t)kvh * HD;      // row 0 of kv head kvh
                const float *v = vcache + (size_t)kvh * HD;
                float *oh = out + ((size_t)t * NH + h) * HD; // (HD)
                if (accum == QD_ACCUM_F64) attention_row_f64(oh, qh, k, v, kv_stride, n_keys, HD, scale64, att, acc);
                else attention_row_f32(oh, qh, k, v, kv_stride, n_keys, HD, scale32, (float *)att);
            }
        }
        free(att);
    }
    if (failed) return qd_errf(e, QD_ERUNTIME, "out of memory: attention scratch of %zu bytes per thread", scratch);
    return QD_OK;
}

// ----------------------------------------------------------------------------
// elementwise

void swiglu_forward(float *out, const float *gate, const float *up, long n) {
    // gate, up, out (n); out may alias gate or up
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        out[i] = silu(gate[i]) * up[i];
    }
}

void residual_forward(float *out, const float *a, const float *b, long n) {
    // a, b, out (n); out may alias a
    for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}
