/* matmul.c: the fixed-order matrix product (qd_matmul.h).
 *
 * The obvious loop is
 *     for o, for t: out[t,o] = dot_f32(x[t], W[o], in)
 * and qd_matmul_f32 computes exactly that, only in an order of loops that keeps the processor busy. A
 * single dot product is a chain of dependent additions (each waits for the previous one); what may run
 * side by side is many dot products. So a tile of TB tokens x OB output columns is accumulated at once,
 * each of its TB*OB accumulators still walking i = 0, 1, ..., in-1 by itself: the compiler turns the OB
 * columns into vector lanes, and the lanes never meet. The weights are read KB values of i at a time into
 * a small fp32 tile (upcast there, transposed so the OB columns of one i are adjacent) and reused by every
 * token; between two KB blocks an accumulator is parked in out as the float it is, so the summation
 * order, and every rounding, are the obvious loop's. No reassociation, no fast-math, and -ffp-contract=off
 * keeps every a*b+c two roundings, as in dot_f32: bitwise identical to it for any T, shape and thread
 * count (tests/test_ops.c checks this against the plain loop). */
#include "qd_matmul.h"

#include <stdint.h>
#include <string.h>

#include "qd_bf16.h"
#include "qd_spec.h"

enum {
    OB = 8,  /* output columns per tile: vector lanes */
    TB = 4,  /* tokens per tile: TB * OB accumulators stay in registers */
    KB = 256 /* values of i per weight tile: OB * KB floats (8 KiB) stay in L1 */
};

/* wt (KB, OB) <- W[o0 + j, k0 + i] upcast, for i < kb and j < ob; the columns j >= ob are 0. */
static void load_tile(float *wt, qd_wview W, int in, int o0, int ob, int k0, int kb) {
    const size_t es = qd_dtype_size(W.dtype);
    for (int j = 0; j < OB; j++) {
        if (j >= ob) {
            for (int i = 0; i < kb; i++) wt[(size_t)i * OB + j] = 0.0f;
            continue;
        }
        const unsigned char *row = (const unsigned char *)W.data + ((size_t)(o0 + j) * in + k0) * es;
        if (W.dtype == QD_DT_BF16) {
            for (int i = 0; i < kb; i++)
                wt[(size_t)i * OB + j] = qd_bf16_to_f32((uint16_t)(row[2 * i] | row[2 * i + 1] << 8));
        } else if (W.dtype == QD_DT_F16) {
            for (int i = 0; i < kb; i++)
                wt[(size_t)i * OB + j] = qd_f16_to_f32((uint16_t)(row[2 * i] | row[2 * i + 1] << 8));
        } else {
            for (int i = 0; i < kb; i++) memcpy(&wt[(size_t)i * OB + j], row + 4 * (size_t)i, 4);
        }
    }
}

/* OB floats side by side: GCC's and Clang's generic vectors (plain element-wise + and *, each lane its own
 * IEEE operation, as the scalar loop would do it; no intrinsics, no processor-specific code in the source). */
typedef float lanes __attribute__((vector_size(OB * sizeof(float))));

/* Built twice, for AVX2 and for any x86-64, picked when the program starts: the vector width changes how
 * many lanes run at once, never what one lane computes (no FMA either way: -ffp-contract=off). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define QD_CLONES
#endif

/* The tile of tokens t0..t0+TB-1 and columns o0..o0+OB-1 over i = k0..k0+kb-1: acc starts at 0 for the
 * first block (k0 == 0), else at the partial sum parked in out. ob <= OB columns are stored. */
QD_CLONES static void tile_tb(float *out, const float *x, const float *wt, int in, int out_dim, int t0, int o0, int ob,
                              int k0, int kb) {
    lanes acc[TB];
    for (int t = 0; t < TB; t++)
        for (int j = 0; j < OB; j++) acc[t][j] = k0 == 0 || j >= ob ? 0.0f : out[(size_t)(t0 + t) * out_dim + o0 + j];
    const float *x0 = x + (size_t)t0 * in + k0, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;
    lanes a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    for (int i = 0; i < kb; i++) {
        lanes wi;
        memcpy(&wi, wt + (size_t)i * OB, sizeof wi);
        a0 += x0[i] * wi; /* acc[t][j] += x[t][i] * W[o0 + j][i], for the OB lanes j at once */
        a1 += x1[i] * wi;
        a2 += x2[i] * wi;
        a3 += x3[i] * wi;
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
    for (int t = 0; t < TB; t++)
        for (int j = 0; j < ob; j++) out[(size_t)(t0 + t) * out_dim + o0 + j] = acc[t][j];
}

/* The same for one token (the tail of T, and a decode step). */
QD_CLONES static void tile_1(float *out, const float *x, const float *wt, int in, int out_dim, int t0, int o0, int ob,
                             int k0, int kb) {
    lanes acc;
    for (int j = 0; j < OB; j++) acc[j] = k0 == 0 || j >= ob ? 0.0f : out[(size_t)t0 * out_dim + o0 + j];
    const float *x0 = x + (size_t)t0 * in + k0;
    for (int i = 0; i < kb; i++) {
        lanes wi;
        memcpy(&wi, wt + (size_t)i * OB, sizeof wi);
        acc += x0[i] * wi;
    }
    for (int j = 0; j < ob; j++) out[(size_t)t0 * out_dim + o0 + j] = acc[j];
}

void qd_matmul_f32(float *out, const float *x, qd_wview W, int T, int in, int out_dim) {
    // x (T, in); W (out_dim, in); out (T, out_dim)
    const int nob = (out_dim + OB - 1) / OB;
    if (in == 0) { /* an empty sum is 0, as dot_f32's */
        for (size_t k = 0; k < (size_t)T * out_dim; k++) out[k] = 0.0f;
        return;
    }
#pragma omp parallel
    {
        float wt[KB * OB]; /* (KB, OB) this thread's weight tile */
#pragma omp for schedule(static)
        for (int b = 0; b < nob; b++) {
            const int o0 = b * OB, ob = out_dim - o0 < OB ? out_dim - o0 : OB;
            for (int k0 = 0; k0 < in; k0 += KB) {
                const int kb = in - k0 < KB ? in - k0 : KB;
                load_tile(wt, W, in, o0, ob, k0, kb);
                int t = 0;
                for (; t + TB <= T; t += TB) tile_tb(out, x, wt, in, out_dim, t, o0, ob, k0, kb);
                for (; t < T; t++) tile_1(out, x, wt, in, out_dim, t, o0, ob, k0, kb);
            }
        }
    }
}

void qd_matmul_f64(float *out, const float *x, qd_wview W, int T, int in, int out_dim) {
    // x (T, in); W (out_dim, in); out (T, out_dim)
    // The oracle's double accumulation in the same tiles: each out[t,o] one double sum of exact products
    // over i in order, rounded once. A double partial sum cannot be parked in out, so the tokens go in
    // chunks of TC whose partials stay here for the whole of i.
    enum { TC = 64 };
    const int nob = (out_dim + OB - 1) / OB;
#pragma omp parallel
    {
        float wt[KB * OB];  /* (KB, OB) this thread's weight tile */
        double acc[TC][OB]; /* (TC, OB) the chunk's partial sums */
#pragma omp for schedule(static)
        for (int b = 0; b < nob; b++) {
            const int o0 = b * OB, ob = out_dim - o0 < OB ? out_dim - o0 : OB;
            for (int t0 = 0; t0 < T; t0 += TC) {
                const int tc = T - t0 < TC ? T - t0 : TC;
                for (int t = 0; t < tc; t++)
                    for (int j = 0; j < OB; j++) acc[t][j] = 0.0;
                for (int k0 = 0; k0 < in; k0 += KB) {
                    const int kb = in - k0 < KB ? in - k0 : KB;
                    load_tile(wt, W, in, o0, ob, k0, kb);
                    for (int t = 0; t < tc; t++) {
                        const float *xt = x + (size_t)(t0 + t) * in + k0;
                        for (int i = 0; i < kb; i++) {
                            const double a = (double)xt[i];
                            const float *wi = wt + (size_t)i * OB;
                            for (int j = 0; j < OB; j++) acc[t][j] += a * (double)wi[j];
                        }
                    }
                }
                for (int t = 0; t < tc; t++)
                    for (int j = 0; j < ob; j++) out[(size_t)(t0 + t) * out_dim + o0 + j] = (float)acc[t][j];
            }
        }
    }
}
