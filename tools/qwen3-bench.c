/* qwen3-bench: how fast the fused CUDA path runs a checkpoint, against the device's own ceilings.
 *
 *   prefill   tokens/s at T = 128, 512, 2048 (positions 0..T-1, next-token logits on the device)
 *   decode    ms/token at context 512 and 4096 (CUDA graph replay, logits left on the device)
 *   ceilings  the measured device-to-device copy bandwidth (bytes read + written) and the decode
 *             roofline: (bf16 weight bytes + KV-cache bytes read per token) / bandwidth
 * for the fused kernels, for the unfused variant (taps_all: every tap stored, same numbers, cuBLAS
 * decode) and, for decode, for the fused kernels with the cuBLAS one-token GEMMs instead of the custom
 * GEMV kernels (decode_gemv = 1), all in the same run. Times are CUDA events around the calls, after
 * warm-up, median of --runs. This is a benchmark, not a test: it measures and prints, it does not judge.
 * --timeline (a build configured with -Dtimeline=true) adds, for each decode context, one more step of
 * the custom decode with every block's timer stamps, summarised per kernel (docs/FUSED.md, "Timeline").
 *
 * Exit codes: 0 ok, 2 usage or bad input, 3 runtime failure, 77 no CUDA device. */
#include <cuda_runtime.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qd_fused.h"
#include "qd_util.h"
#include "qd_weights.h"

#define PROG "qwen3-bench"

static const int prefill_T[] = {128, 512, 2048};
static const int decode_ctx[] = {512, 4096};
enum { NPRE = sizeof prefill_T / sizeof prefill_T[0], NDEC = sizeof decode_ctx / sizeof decode_ctx[0] };

typedef struct {
    const char *model, *json, *timeline;
    int runs, warmup, steps;
} bench_args;

static void usage(FILE *f) {
    fprintf(f, "usage: " PROG " --model DIR [--json FILE] [--runs N] [--warmup N] [--steps N] [--timeline FILE]\n"
               "Times the fused CUDA path on a checkpoint (e.g. one written by qwen3-fixture --preset 0.6b).\n"
               "\n"
               "  --model DIR    checkpoint directory (config.json + safetensors)\n"
               "  --json FILE    also write every figure as JSON\n"
               "  --runs N       timed repetitions, the median is reported (default 7)\n"
               "  --warmup N     untimed repetitions first (default 2)\n"
               "  --steps N      decode steps per timed repetition (default 32)\n"
               "  --timeline FILE  one more decode step per context with per-block timer stamps: a per-kernel\n"
               "                 table, every launch as JSON in FILE (needs a build with -Dtimeline=true)\n");
}

static int parse_pos(const char *opt, const char *s, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > 100000) {
        fprintf(stderr, PROG ": %s: '%s' is not an integer in [1, 100000]\n", opt, s);
        return QD_EINPUT;
    }
    *out = (int)v;
    return QD_OK;
}

static int parse_args(int argc, char **argv, bench_args *a) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"json", required_argument, 0, 'j'},
                                         {"runs", required_argument, 0, 'r'},  {"warmup", required_argument, 0, 'w'},
                                         {"steps", required_argument, 0, 's'}, {"timeline", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    *a = (bench_args){.runs = 7, .warmup = 2, .steps = 32};
    int c;
    opterr = 0; /* one line of our own instead of getopt's */
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'j': a->json = optarg; break;
        case 'r':
            if (parse_pos("--runs", optarg, &a->runs)) return QD_EINPUT;
            break;
        case 'w':
            if (parse_pos("--warmup", optarg, &a->warmup)) return QD_EINPUT;
            break;
        case 's':
            if (parse_pos("--steps", optarg, &a->steps)) return QD_EINPUT;
            break;
        case 't': a->timeline = optarg; break;
        case 'h': usage(stdout); exit(0);
        default:
            fprintf(stderr, PROG ": %s: unknown option or missing value (see --help)\n", argv[optind - 1]);
            return QD_EINPUT;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
        return QD_EINPUT;
    }
    if (!a->model) {
        fprintf(stderr, PROG ": --model is required\n");
        return QD_EINPUT;
    }
    if (a->timeline && !qd_fused_timeline_built()) {
        fprintf(stderr, PROG ": --timeline: this build has no timeline stamps (configure with -Dtimeline=true)\n");
        return QD_EINPUT;
    }
    return QD_OK;
}

// ----------------------------------------------------------------------------
// timing

#define CK(call)                                                                                          \
    do {                                                                                                  \
        cudaError_t err_ = (call);                                                                        \
        if (err_ != cudaSuccess) {                                                                        \
            fprintf(stderr, PROG ": %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorName(err_)); \
            exit(QD_ERUNTIME);                                                                            \
        }                                                                                                 \
    } while (0)

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Events on the legacy default stream: the library's stream is a blocking one, so a record there waits
 * for all of its earlier work and later work waits for the record. */
static cudaEvent_t ev0, ev1;
static void tic(void) { CK(cudaEventRecord(ev0, 0)); }
static double toc_ms(void) {
    float ms;
    CK(cudaEventRecord(ev1, 0));
    CK(cudaEventSynchronize(ev1));
    CK(cudaEventElapsedTime(&ms, ev0, ev1));
    return ms;
}

/* Device-to-device copy bandwidth in GB/s (bytes read + bytes written), median of runs. */
static double copy_bandwidth(int runs) {
    size_t bytes = (size_t)1 << 30, freeb, total;
    CK(cudaMemGetInfo(&freeb, &total));
    while (bytes > ((size_t)64 << 20) && 2 * bytes + ((size_t)1 << 30) > freeb) bytes /= 2;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    CK(cudaMemset(b, 0, bytes));
    double *t = malloc((size_t)runs * sizeof *t);
    for (int i = 0; i < 3; i++) CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    for (int i = 0; i < runs; i++) {
        tic();
        CK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice, 0));
        t[i] = toc_ms();
    }
    double ms = median(t, runs);
    free(t);
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 2.0 * (double)bytes / (ms * 1e-3) / 1e9;
}

// ----------------------------------------------------------------------------
// the model's byte and flop counts

/* Bytes one decode step reads: every bf16 weight matrix once (q/k/v, o, gate/up, down of every layer and
 * lm_head), the fp32 norm weights, one embedding row. */
static double weight_bytes(const qd_config *c) {
    double C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim, NH = c->num_attention_heads;
    double NKV = c->num_key_value_heads, L = c->num_hidden_layers, V = c->vocab_size;
    double layer = ((NH + 2 * NKV) * HD * C + C * NH * HD + 2 * I * C + C * I) * 2 + (2 * C + 2 * HD) * 4;
    return L * layer + V * C * 2 + C * 4 + C * 2;
}

/* K and V of every layer for ctx positions, bf16. */
static double kv_bytes(const qd_config *c, int ctx) {
    return 2.0 * c->num_hidden_layers * ctx * c->num_key_value_heads * c->head_dim * 2;
}

/* Prefill arithmetic: the layers' GEMMs over T tokens, causal attention (QK^T and PV), lm_head for the
 * last token. */
static double prefill_flops(const qd_config *c, int T) {
    double C = c->hidden_size, I = c->intermediate_size, HD = c->head_dim, NH = c->num_attention_heads;
    double NKV = c->num_key_value_heads, L = c->num_hidden_layers, V = c->vocab_size;
    double params = L * ((NH + 2 * NKV) * HD * C + C * NH * HD + 3 * I * C);
    return 2 * params * T + L * NH * 4 * HD * ((double)T * (T + 1) / 2) + 2 * V * C;
}

// ----------------------------------------------------------------------------
// the runs

typedef struct {
    double prefill_ms[NPRE], decode_ms[NDEC];
} variant_result;

/* --timeline: one step of the custom decode per context */
typedef struct {
    qd_tl_launch *launch;
    int n;
    double step_us; /* first block start to last block end */
    qd_tl_kind kind[QD_TL_KINDS];
} timeline_result;
static timeline_result timelines[NDEC];

static void die_fused(const char *what, const qd_err *e) {
    fprintf(stderr, PROG ": %s: %s\n", what, e->msg);
    exit(e->code ? e->code : QD_ERUNTIME);
}

/* One more decode step, at the position after the timed ones, with the block timeline. */
static void timeline_step(qd_fused *f, const qd_weights *w, int32_t token, timeline_result *r) {
    enum { CAP = 1 << 16 };
    qd_err e;
    memset(&e, 0, sizeof e);
    qd_tl_rec *rec = qd_alloc(CAP * sizeof *rec, &e);
    if (!rec) die_fused("timeline", &e);
    int n = 0;
    if (qd_fused_decode_timeline(f, token, rec, CAP, &n, &e)) die_fused("timeline", &e);
    const int L = w->cfg.num_hidden_layers;
    r->launch = qd_alloc(((size_t)L * QD_TL_SLOTS + 1) * sizeof *r->launch, &e);
    if (!r->launch) die_fused("timeline", &e);
    r->n = qd_tl_launches(rec, n, L, r->launch, L * QD_TL_SLOTS + 1, &e);
    if (r->n < 0) { /* the device wrote them: a runtime failure whatever the code */
        fprintf(stderr, PROG ": %s\n", e.msg);
        exit(QD_ERUNTIME);
    }
    if (qd_tl_kinds(r->launch, r->n, r->kind, &e)) die_fused("timeline", &e);
    r->step_us = 0;
    for (int i = 0; i < r->n; i++)
        if (r->launch[i].end_last > r->step_us) r->step_us = r->launch[i].end_last;
    free(rec);
}

/* with_prefill 0: decode only (prefill_ms left 0; prefill does not depend on decode_gemv) */
static void run_variant(const qd_weights *w, int taps_all, int decode_gemv, int with_prefill, const bench_args *a,
                        const int32_t *tok, int max_seq, variant_result *r) {
    qd_err e;
    memset(&e, 0, sizeof e);
    memset(r, 0, sizeof *r);
    qd_fused_opts o = {.act = QD_ACT_BF16, .max_seq = max_seq, .taps_all = taps_all, .decode_gemv = decode_gemv};
    qd_fused *f = qd_fused_create(w, &o, &e);
    if (!f) die_fused("create", &e);
    double *t = malloc((size_t)a->runs * sizeof *t);
    for (int i = 0; i < NPRE && with_prefill; i++) {
        int T = prefill_T[i];
        for (int k = 0; k < a->warmup; k++)
            if (qd_fused_prefill(f, tok, T, NULL, NULL, &e)) die_fused("prefill", &e);
        for (int k = 0; k < a->runs; k++) {
            tic();
            if (qd_fused_prefill(f, tok, T, NULL, NULL, &e)) die_fused("prefill", &e);
            t[k] = toc_ms();
        }
        r->prefill_ms[i] = median(t, a->runs);
    }
    for (int i = 0; i < NDEC; i++) {
        int ctx = decode_ctx[i];
        for (int k = 0; k < a->runs; k++) {
            /* positions ctx - warmup .. ctx - 1 warm up (the very first step also captures the graph);
             * the timed steps run at positions ctx .. ctx + steps - 1 */
            if (qd_fused_prefill(f, tok, ctx - a->warmup, NULL, NULL, &e)) die_fused("prefill", &e);
            for (int s = 0; s < a->warmup; s++)
                if (qd_fused_decode(f, tok[ctx - a->warmup + s], NULL, NULL, &e)) die_fused("decode", &e);
            tic();
            for (int s = 0; s < a->steps; s++)
                if (qd_fused_decode(f, tok[ctx + s], NULL, NULL, &e)) die_fused("decode", &e);
            t[k] = toc_ms() / a->steps;
        }
        r->decode_ms[i] = median(t, a->runs);
        if (a->timeline && !taps_all && !decode_gemv) timeline_step(f, w, tok[ctx + a->steps], &timelines[i]);
    }
    free(t);
    qd_fused_free(f);
}

/* The --timeline table on stdout and every launch as JSON in a.timeline (written whole or not at all). */
static int write_timeline(const bench_args *a, const qd_config *c, const char *desc) {
    json_t *root = json_object(), *ctxs = json_array();
    json_object_set_new(root, "device", json_string(desc));
    json_object_set_new(root, "model", json_string(a->model));
    json_object_set_new(root, "layers", json_integer(c->num_hidden_layers));
    json_object_set_new(root, "units", json_string("microseconds from the step's first block start"));
    for (int i = 0; i < NDEC; i++) {
        const timeline_result *t = &timelines[i];
        printf("\ntimeline, decode ctx=%d (one step, custom GEMV): %.1f us from the first block start to the last "
               "block end\n",
               decode_ctx[i], t->step_us);
        printf("%-10s %9s %12s %12s %12s   (medians over the layers)\n", "kernel", "launches", "after wait",
               "after ready", "to next wait");
        json_t *cx = json_object(), *kinds = json_array(), *launches = json_array();
        json_object_set_new(cx, "ctx", json_integer(decode_ctx[i]));
        json_object_set_new(cx, "step_us", json_real(t->step_us));
        for (int k = 0; k < QD_TL_KINDS; k++) {
            const qd_tl_kind *q = &t->kind[k];
            printf("%-10s %9d %9.2f us %9.2f us %9.2f us\n", q->kernel, q->launches, q->after_wait, q->after_ready,
                   q->gap_to_next);
            json_t *o =
                json_pack("{s:s, s:i, s:f, s:f, s:f}", "kernel", q->kernel, "launches", q->launches, "after_wait_us",
                          q->after_wait, "after_ready_us", q->after_ready, "to_next_wait_us", q->gap_to_next);
            json_array_append_new(kinds, o);
        }
        for (int j = 0; j < t->n; j++) {
            const qd_tl_launch *l = &t->launch[j];
            json_t *o =
                json_pack("{s:i, s:i, s:s, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "launch", l->launch, "layer",
                          l->layer, "kernel", l->kernel, "blocks", l->blocks, "start_first", l->start_first,
                          "start_last", l->start_last, "wait_first", l->wait_first, "wait_last", l->wait_last,
                          "ready_last", l->ready_last, "end_first", l->end_first, "end_last", l->end_last);
            json_array_append_new(launches, o);
        }
        json_object_set_new(cx, "kernels", kinds);
        json_object_set_new(cx, "launches", launches);
        json_array_append_new(ctxs, cx);
        free(t->launch);
    }
    json_object_set_new(root, "contexts", ctxs);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", a->timeline, (long)getpid());
    int rc = json_dump_file(root, tmp, JSON_INDENT(2));
    json_decref(root);
    if (rc != 0 || rename(tmp, a->timeline) != 0) {
        remove(tmp);
        fprintf(stderr, PROG ": %s: cannot write the timeline file\n", a->timeline);
        return QD_ERUNTIME;
    }
    return QD_OK;
}

int main(int argc, char **argv) {
    bench_args a;
    if (parse_args(argc, argv, &a)) return QD_EINPUT;
    char desc[256] = "";
    if (qd_fused_device_count(desc, sizeof desc) == 0) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    qd_err e;
    memset(&e, 0, sizeof e);
    qd_weights w;
    int rc = qd_weights_load(a.model, &w, &e);
    if (rc) {
        fprintf(stderr, PROG ": %s\n", e.msg);
        return rc;
    }
    const qd_config *c = &w.cfg;
    if (a.warmup >= decode_ctx[0]) {
        fprintf(stderr, PROG ": --warmup %d: must be below the smallest decode context %d\n", a.warmup, decode_ctx[0]);
        return QD_EINPUT;
    }
    int max_seq = decode_ctx[NDEC - 1] + a.steps + 1; /* + 1: the --timeline step after the timed ones */
    if (prefill_T[NPRE - 1] > max_seq) max_seq = prefill_T[NPRE - 1];
    int32_t *tok = malloc((size_t)max_seq * sizeof *tok);
    uint64_t s = 12345;
    for (int i = 0; i < max_seq; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((s >> 33) % (uint64_t)c->vocab_size);
    }
    CK(cudaEventCreate(&ev0));
    CK(cudaEventCreate(&ev1));

    double bw = copy_bandwidth(a.runs);
    /* res[0] fused (custom decode), res[1] unfused (cuBLAS decode), res[2] fused with cuBLAS decode */
    variant_result res[3];
    run_variant(&w, 0, 0, 1, &a, tok, max_seq, &res[0]);
    run_variant(&w, 1, 1, 1, &a, tok, max_seq, &res[1]);
    run_variant(&w, 0, 1, 0, &a, tok, max_seq, &res[2]);
    const char *env = getenv("QD_FUSED_DECODE");
    if (env && strcmp(env, "cublas") == 0)
        printf("note: QD_FUSED_DECODE=cublas is set: the custom decode column is cuBLAS too\n");
    double wb = weight_bytes(c);

    printf("device: %s\n", desc);
    printf("model: %s (L %d, C %d, I %d, NH %d, NKV %d, HD %d, V %d)\n", a.model, c->num_hidden_layers, c->hidden_size,
           c->intermediate_size, c->num_attention_heads, c->num_key_value_heads, c->head_dim, c->vocab_size);
    printf("copy bandwidth (read + write): %.0f GB/s; weights read per decode token: %.1f MB\n", bw, wb / 1e6);
    printf("median of %d runs after %d warm-up; events around the calls\n\n", a.runs, a.warmup);
    printf("%-18s %14s %14s %10s\n", "", "fused", "unfused", "speedup");
    for (int i = 0; i < NPRE; i++) {
        double f0 = prefill_T[i] / (res[0].prefill_ms[i] * 1e-3), f1 = prefill_T[i] / (res[1].prefill_ms[i] * 1e-3);
        char label[32];
        snprintf(label, sizeof label, "prefill T=%d", prefill_T[i]);
        printf("%-18s %10.0f tok/s %8.0f tok/s %9.2fx   (%.1f TFLOP/s fused)\n", label, f0, f1, f0 / f1,
               prefill_flops(c, prefill_T[i]) / (res[0].prefill_ms[i] * 1e-3) / 1e12);
    }
    printf("\n%-18s %14s %14s %14s %10s %8s\n", "decode (ms/token)", "custom GEMV", "cuBLAS GEMV", "unfused",
           "roofline", "custom");
    for (int i = 0; i < NDEC; i++) {
        double roof = (wb + kv_bytes(c, decode_ctx[i])) / (bw * 1e9) * 1e3;
        char label[32];
        snprintf(label, sizeof label, "decode ctx=%d", decode_ctx[i]);
        printf("%-18s %11.3f ms %11.3f ms %11.3f ms %7.3f ms %7.0f%%   (cuBLAS %.0f%%, unfused %.0f%%)\n", label,
               res[0].decode_ms[i], res[2].decode_ms[i], res[1].decode_ms[i], roof, 100 * roof / res[0].decode_ms[i],
               100 * roof / res[2].decode_ms[i], 100 * roof / res[1].decode_ms[i]);
    }

    if (a.timeline && write_timeline(&a, c, desc)) return QD_ERUNTIME;

    if (a.json) {
        json_t *root = json_object();
        json_object_set_new(root, "device", json_string(desc));
        json_object_set_new(root, "model", json_string(a.model));
        json_object_set_new(root, "copy_bandwidth_gbs", json_real(bw));
        json_object_set_new(root, "weight_bytes_per_token", json_real(wb));
        json_object_set_new(root, "runs", json_integer(a.runs));
        json_object_set_new(root, "warmup", json_integer(a.warmup));
        json_object_set_new(root, "decode_steps", json_integer(a.steps));
        static const char *const names[3] = {"fused", "unfused", "fused_cublas_decode"};
        for (int v = 0; v < 3; v++) {
            json_t *var = json_object(), *pre = json_array(), *dec = json_array();
            for (int i = 0; i < NPRE && v < 2; i++) {
                json_t *p = json_object();
                json_object_set_new(p, "T", json_integer(prefill_T[i]));
                json_object_set_new(p, "ms", json_real(res[v].prefill_ms[i]));
                json_object_set_new(p, "tok_per_s", json_real(prefill_T[i] / (res[v].prefill_ms[i] * 1e-3)));
                json_object_set_new(p, "tflops",
                                    json_real(prefill_flops(c, prefill_T[i]) / (res[v].prefill_ms[i] * 1e-3) / 1e12));
                json_array_append_new(pre, p);
            }
            for (int i = 0; i < NDEC; i++) {
                double roof = (wb + kv_bytes(c, decode_ctx[i])) / (bw * 1e9) * 1e3;
                json_t *d = json_object();
                json_object_set_new(d, "ctx", json_integer(decode_ctx[i]));
                json_object_set_new(d, "ms_per_token", json_real(res[v].decode_ms[i]));
                json_object_set_new(d, "roofline_ms", json_real(roof));
                json_object_set_new(d, "fraction_of_roofline", json_real(roof / res[v].decode_ms[i]));
                json_array_append_new(dec, d);
            }
            if (v < 2) json_object_set_new(var, "prefill", pre);
            else json_decref(pre);
            json_object_set_new(var, "decode", dec);
            json_object_set_new(var, "decode_gemv", json_string(v == 0 ? "custom" : "cublas"));
            json_object_set_new(root, names[v], var);
        }
        if (json_dump_file(root, a.json, JSON_INDENT(2)) != 0) {
            fprintf(stderr, PROG ": %s: cannot write the JSON file\n", a.json);
            json_decref(root);
            return QD_ERUNTIME;
        }
        json_decref(root);
    }
    free(tok);
    qd_weights_free(&w);
    return 0;
}
