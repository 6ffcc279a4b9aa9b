/* spec.c: the maths every backend agrees on (qd_spec.h). Plain expressions, one rounding per written
 * operation: the build keeps -ffp-contract=off and no fast-math. */
#include "qd_spec.h"

#include <math.h>

float dot_f32(const float *a, const float *b, int n) {
    // a, b (n)
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

double dot_f64(const float *a, const float *b, int n) {
    // a, b (n)
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)a[i] * (double)b[i]; /* the product is exact in double */
    return sum;
}

float rms_scale_f32(float ss, int n, float eps) { return 1.0f / sqrtf(ss / (float)n + eps); }

float rms_scale_f64(double ss, int n, float eps) { return (float)(1.0 / sqrt(ss / n + (double)eps)); }

void rope_inv_freq(float *inv_freq, int head_dim, double theta) {
    // inv_freq (head_dim/2)
    for (int i = 0; i < head_dim / 2; i++) inv_freq[i] = (float)(1.0 / pow(theta, (double)(2 * i) / (double)head_dim));
}

void rope_cos_sin(int pos, float inv_freq, float *c, float *s) {
    float angle = (float)pos * inv_freq;
    *c = (float)cos((double)angle);
    *s = (float)sin((double)angle);
}

void rope_rotate_pair(float *x0, float *x1, float c, float s) {
    float a = *x0, b = *x1;
    *x0 = a * c - b * s;
    *x1 = b * c + a * s;
}

float silu(float g) { return g / (1.0f + expf(-g)); }
