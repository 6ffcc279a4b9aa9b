/* qwen3-bench-ref: the reference's matmul beside OpenBLAS's sgemm on the same matrices, in one run.
 *
 * For each model shape (--shapes) and prompt length (--tokens), the seven projections of one decoder layer
 * (q, k, v, o, gate, up, down: out (T, out) = x (T, in) . W (out, in)^T) are timed four ways:
 *   ref bf16   matmul_forward_w reading BF16 weights in place (what the reference runs on a checkpoint)
 *   ref f32    matmul_forward on an fp32 copy of the same weights
 *   naive      matmul_forward_naive, the plain loop of dot products (the order both of the above keep)
 *   openblas   cblas_sgemm on the fp32 copy
 * each the median of --repeat runs, with the same thread count (OpenMP and OpenBLAS). A row per matrix and
 * a "layer" row (the seven together: their flops over their summed median times) per shape and T, with the
 * ratio ref bf16 / openblas. The ref columns are checked bitwise against each other before timing.
 *
 *   qwen3-bench-ref [--shapes 0.6b,8b] [--tokens 8,16,32,64,128] [--repeat 5] [--threads N] [--naive 0|1]
 *                   [--clock wall|cpu]
 * --clock cpu times by the process's CPU time, which others' load on a shared machine disturbs less.
 *
 * Exit codes: 0 ok, 2 usage, 3 out of memory or a ref column disagreeing. */
#include <cblas.h>
#include <getopt.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qd_bf16.h"
#include "qd_ref_ops.h"

void openblas_set_num_threads(int num_threads); /* OpenBLAS's own; not in every cblas.h */

typedef struct {
    const char *name;
    int hidden, inter, heads, kv_heads, head_dim; /* (not I: <complex.h>, through cblas.h, defines it) */
} shape;

static const shape shapes[] = {
    {"0.6b", 1024, 3072, 16, 8, 128}, {"1.7b", 2048, 6144, 16, 8, 128}, {"4b", 2560, 9728, 32, 8, 128},
    {"8b", 4096, 12288, 32, 8, 128},  {"14b", 5120, 17408, 40, 8, 128}, {"32b", 5120, 25600, 64, 8, 128},
};

enum { NCOL = 4, MAX_REPEAT = 101, MAX_T = 16 };
static const char *col_names[NCOL] = {"ref bf16", "ref f32", "naive", "openblas"};

static clockid_t clock_id = CLOCK_MONOTONIC; /* --clock cpu: CLOCK_PROCESS_CPUTIME_ID */

static double now(void) {
    struct timespec ts;
    clock_gettime(clock_id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float uniform(void) { /* xorshift64*, in [-1, 1) */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((double)((rng * 2685821657736338717ull) >> 11) * 0x1.0p-52 - 1.0);
}

static void *alloc_or_die(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "qwen3-bench-ref: out of memory (%zu bytes)\n", n);
        exit(3);
    }
    return p;
}

static void die_usage(const char *msg, const char *arg) {
    fprintf(stderr, "qwen3-bench-ref: %s%s\n", msg, arg ? arg : "");
    exit(2);
}

/* One timed call of column c. */
static void run_col(int c, float *out, const float *x, const uint16_t *wb, const float *wf, int T, int in, int o) {
    switch (c) {
    case 0: matmul_forward_w(out, x, (qd_wview){wb, QD_DT_BF16}, T, in, o, QD_ACCUM_F32); break;
    case 1: matmul_forward(out, x, wf, T, in, o, QD_ACCUM_F32); break;
    case 2: matmul_forward_naive(out, x, wf, T, in, o, QD_ACCUM_F32); break;
    default: cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, o, in, 1.0f, x, in, wf, in, 0.0f, out, o); break;
    }
}

int main(int argc, char **argv) {
    char shape_arg[256] = "0.6b,8b", tok_arg[256] = "8,16,32,64,128";
    int repeat = 5, threads = omp_get_max_threads(), naive = 1;
    static const struct option opts[] = {{"shapes", required_argument, 0, 's'}, {"tokens", required_argument, 0, 't'},
                                         {"repeat", required_argument, 0, 'r'}, {"threads", required_argument, 0, 'j'},
                                         {"naive", required_argument, 0, 'n'},  {"clock", required_argument, 0, 'c'},
                                         {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 's': snprintf(shape_arg, sizeof shape_arg, "%s", optarg); break;
        case 't': snprintf(tok_arg, sizeof tok_arg, "%s", optarg); break;
        case 'r': repeat = atoi(optarg); break;
        case 'j': threads = atoi(optarg); break;
        case 'n': naive = atoi(optarg); break;
        case 'c':
            if (strcmp(optarg, "cpu") && strcmp(optarg, "wall"))
                die_usage("--clock: expected wall or cpu, got ", optarg);
            clock_id = strcmp(optarg, "cpu") ? CLOCK_MONOTONIC : CLOCK_PROCESS_CPUTIME_ID;
            break;
        case 'h':
            printf("usage: qwen3-bench-ref [--shapes 0.6b,8b] [--tokens 8,16,32,64,128] [--repeat 5] [--threads N] "
                   "[--naive 0|1] [--clock wall|cpu]\n"
                   "The reference's matmul (BF16 in place, fp32, the plain loop) beside OpenBLAS sgemm on one "
                   "decoder layer's\nseven projections; medians of --repeat runs, GFLOP/s. Shapes: 0.6b 1.7b 4b 8b "
                   "14b 32b.\n--clock cpu times by the process's CPU time (all threads together), which a busy "
                   "shared machine\ndisturbs less than the wall clock; with --threads 1 it is GFLOP/s per core.\n");
            return 0;
        default: die_usage("unknown option or missing value: ", argv[optind - 1]);
        }
    }
    if (repeat < 1 || repeat > MAX_REPEAT) die_usage("--repeat: expected 1..101", NULL);
    if (threads < 1) die_usage("--threads: expected >= 1", NULL);
    int Ts[MAX_T], nT = 0;
    for (char *p = strtok(tok_arg, ","); p; p = strtok(NULL, ",")) {
        if (nT == MAX_T || atoi(p) < 1) die_usage("--tokens: expected up to 16 positive counts, got ", p);
        Ts[nT++] = atoi(p);
    }
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    printf("threads %d, median of %d runs, GFLOP/s (2*T*in*out / %s time); ratio = ref bf16 / openblas\n", threads,
           repeat, clock_id == CLOCK_MONOTONIC ? "wall" : "CPU");
    printf("%-5s %4s %-9s %6s %6s %9s %9s %9s %9s %7s\n", "shape", "T", "matrix", "out", "in", col_names[0],
           col_names[1], col_names[2], col_names[3], "ratio");
    for (char *sp = strtok(shape_arg, ","); sp; sp = strtok(NULL, ",")) {
        const shape *s = NULL;
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
            if (!strcmp(shapes[i].name, sp)) s = &shapes[i];
        if (!s) die_usage("--shapes: unknown shape ", sp);
        const int QD = s->heads * s->head_dim, KVD = s->kv_heads * s->head_dim, C = s->hidden, I_ = s->inter;
        const struct {
            const char *name;
            int out, in;
        } mats[7] = {{"q_proj", QD, C},    {"k_proj", KVD, C}, {"v_proj", KVD, C},  {"o_proj", C, QD},
                     {"gate_proj", I_, C}, {"up_proj", I_, C}, {"down_proj", C, I_}};
        for (int ti = 0; ti < nT; ti++) {
            const int T = Ts[ti];
            double layer_time[NCOL] = {0}, layer_flop = 0;
            for (int m = 0; m < 7; m++) {
                const int o = mats[m].out, in = mats[m].in;
                const size_t nw = (size_t)o * in;
                uint16_t *wb = alloc_or_die(nw * sizeof *wb);        /* (o, in) BF16 */
                float *wf = alloc_or_die(nw * sizeof *wf);           /* (o, in) the same values in fp32 */
                float *x = alloc_or_die((size_t)T * in * sizeof *x); /* (T, in) */
                float *out = alloc_or_die((size_t)T * o * sizeof *out),
                      *chk = alloc_or_die((size_t)T * o * sizeof *chk);
                for (size_t k = 0; k < nw; k++) {
                    wb[k] = qd_f32_to_bf16(uniform() * 0.05f);
                    wf[k] = qd_bf16_to_f32(wb[k]);
                }
                for (size_t k = 0; k < (size_t)T * in; k++) x[k] = uniform();
                /* the ref columns are one computation: bitwise equal, or the benchmark is wrong */
                run_col(0, out, x, wb, wf, T, in, o);
                run_col(1, chk, x, wb, wf, T, in, o);
                int same = !memcmp(out, chk, (size_t)T * o * sizeof *out);
                if (naive) {
                    run_col(2, chk, x, wb, wf, T, in, o);
                    same = same && !memcmp(out, chk, (size_t)T * o * sizeof *out);
                }
                if (!same) {
                    fprintf(stderr, "qwen3-bench-ref: %s %s T %d: the ref columns disagree\n", s->name, mats[m].name,
                            T);
                    return 3;
                }
                const double flop = 2.0 * T * in * o;
                double gf[NCOL];
                for (int c = 0; c < NCOL; c++) {
                    if (c == 2 && !naive) {
                        gf[c] = 0;
                        continue;
                    }
                    double t[MAX_REPEAT];
                    run_col(c, out, x, wb, wf, T, in, o); /* warm-up */
                    for (int r = 0; r < repeat; r++) {
                        double t0 = now();
                        run_col(c, out, x, wb, wf, T, in, o);
                        t[r] = now() - t0;
                    }
                    qsort(t, (size_t)repeat, sizeof *t, cmp_double);
                    gf[c] = flop / t[repeat / 2] * 1e-9;
                    layer_time[c] += t[repeat / 2];
                }
                layer_flop += flop;
                printf("%-5s %4d %-9s %6d %6d %9.2f %9.2f %9.2f %9.2f %6.0f%%\n", s->name, T, mats[m].name, o, in,
                       gf[0], gf[1], gf[2], gf[3], 100.0 * gf[0] / gf[3]);
                free(wb);
                free(wf);
                free(x);
                free(out);
                free(chk);
            }
            printf("%-5s %4d %-9s %6s %6s %9.2f %9.2f %9.2f %9.2f %6.0f%%\n", s->name, T, "layer", "", "",
                   layer_flop / layer_time[0] * 1e-9, layer_flop / layer_time[1] * 1e-9,
                   naive ? layer_flop / layer_time[2] * 1e-9 : 0.0, layer_flop / layer_time[3] * 1e-9,
                   100.0 * layer_time[3] / layer_time[0]);
            fflush(stdout);
        }
    }
    return 0;
}
