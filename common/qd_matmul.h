/* qd_matmul.h: the fixed-order matrix product the CPU backends share (the reference's matmul_forward and
 * emu's emu_matmul), over weights held in fp32 or read in place from the checkpoint (qd_wview).
 *
 *     out[t,o] = sum_i x[t,i] * W[o,i]        x (T, in); W (out_dim, in), the HF layout; out (T, out_dim)
 *
 * Every out[t,o] is one dot product in the order i = 0, 1, ..., in-1 with one accumulator starting at 0:
 * qd_matmul_f32 gives bitwise dot_f32(x[t], W[o], in) and qd_matmul_f64 bitwise (float)dot_f64(...)
 * (qd_spec.h) for every element, whatever the blocking and the thread count. A BF16/F16 weight is upcast
 * to fp32 as it is read, which is exact, so a matrix read in place gives the bits of its fp32 copy.
 * OpenMP splits the output columns only; the team is the caller's (omp_set_num_threads). */
#ifndef QD_MATMUL_H
#define QD_MATMUL_H

#include "qd_weights.h"

void qd_matmul_f32(float *out, const float *x, qd_wview W, int T, int in, int out_dim);
void qd_matmul_f64(float *out, const float *x, qd_wview W, int T, int in, int out_dim);

#endif
