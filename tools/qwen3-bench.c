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
 * --prefill-T, --ctx and --variants run a subset (e.g. one phase under a profiler); the defaults are the
 * lists above and all three variants.
 * --peer hf then times Hugging Face transformers on the same checkpoint, contexts and prompt lengths
 * (tools/bench_peer_hf.py in a Python with torch and transformers, run once the fused model is freed) and
 * prints its figures beside the fused ones; that Python and the script are checked before any timing.
 *
 * Exit codes: 0 ok, 2 usage or bad input, 3 runtime failure (the peer's too, after the table), 77 no CUDA
 * device. */
#include <cuda_runtime.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qd_fused.h"
#include "qd_util.h"
#include "qd_weights.h"

#define PROG "qwen3-bench"

/* tools/bench_peer_hf.py in the source tree (meson defines it); QD_PEER_HF_SCRIPT overrides */
#ifndef QD_PEER_HF_SCRIPT
#define QD_PEER_HF_SCRIPT "tools/bench_peer_hf.py"
#endif

enum { MAXL = 16 }; /* values per list option */
enum { V_FUSED = 1, V_UNFUSED = 2, V_CUBLAS = 4 };

typedef struct {
    const char *model, *json, *timeline, *peer, *python, *peer_script;
    int runs, warmup, steps;
    int pre_T[MAXL], npre; /* prefill lengths (none: npre 0) */
    int ctx[MAXL], nctx;   /* decode contexts */
    unsigned variants;     /* V_* */
} bench_args;

static void usage(FILE *f) {
    fprintf(f, "usage: " PROG " --model DIR [--json FILE] [--runs N] [--warmup N] [--steps N] [--prefill-T LIST]\n"
               "                   [--ctx LIST] [--variants LIST] [--peer hf [--python PATH]] [--timeline FILE]\n"
               "Times the fused CUDA path on a checkpoint (e.g. one written by qwen3-fixture --preset 0.6b).\n"
               "\n"
               "  --model DIR    checkpoint directory (config.json + safetensors)\n"
               "  --json FILE    also write every figure as JSON\n"
               "  --runs N       timed repetitions, the median is reported (default 7)\n"
               "  --warmup N     untimed repetitions first (default 2)\n"
               "  --steps N      decode steps per timed repetition (default 32)\n"
               "  --prefill-T LIST  prefill lengths, comma-separated, or none (default 128,512,2048); timed by\n"
               "                 the fused and unfused variants\n"
               "  --ctx LIST     decode contexts, comma-separated, or none (default 512,4096)\n"
               "  --variants LIST  which of fused (custom decode GEMVs), unfused (taps_all, cuBLAS decode) and\n"
               "                 cublas (fused with cuBLAS decode) run, comma-separated (default all three)\n"
               "  --peer hf      then time Hugging Face transformers on the same checkpoint, contexts and\n"
               "                 lengths (bf16, StaticCache, decode step under torch.compile mode=reduce-overhead)\n"
               "                 and print its figures beside the fused ones; runs tools/bench_peer_hf.py\n"
               "                 (QD_PEER_HF_SCRIPT overrides its path)\n"
               "  --python PATH  the Python with torch and transformers for --peer (default: $QD_PYTHON, else\n"
               "                 python3)\n"
               "  --timeline FILE  one more decode step per context with per-block timer stamps: a per-kernel\n"
               "                 table, every launch as JSON in FILE (needs a build with -Dtimeline=true)\n"
               "\n"
               "e.g. " PROG " --model DIR --prefill-T none --ctx 4096 --variants fused --runs 1 --warmup 1\n"
               "     (one decode context, custom GEMVs only: for a profiler)\n"
               "     " PROG " --model DIR --peer hf --python build/.venv/bin/python3 --json bench.json\n");
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

/* "none", or up to MAXL distinct integers in [1, 100000] separated by commas */
static int parse_list(const char *opt, const char *s, int *v, int *n) {
    *n = 0;
    if (strcmp(s, "none") == 0) return QD_OK;
    const char *p = s;
    for (;;) {
        char *end;
        long x = (*p >= '0' && *p <= '9') ? strtol(p, &end, 10) : -1;
        if (x < 1 || x > 100000 || (*end != ',' && *end != '\0')) {
            fprintf(stderr, PROG ": %s: '%s' is not 'none' or a comma-separated list of integers in [1, 100000]\n", opt,
                    s);
            return QD_EINPUT;
        }
        for (int i = 0; i < *n; i++)
            if (v[i] == x) {
                fprintf(stderr, PROG ": %s: '%s' names %ld twice\n", opt, s, x);
                return QD_EINPUT;
            }
        if (*n == MAXL) {
            fprintf(stderr, PROG ": %s: '%s' has more than %d values\n", opt, s, MAXL);
            return QD_EINPUT;
        }
        v[(*n)++] = (int)x;
        if (*end == '\0') return QD_OK;
        p = end + 1;
    }
}

static const char *const variant_names[3] = {"fused", "unfused", "cublas"};

static int parse_variants(const char *s, unsigned *out) {
    *out = 0;
    const char *p = s;
    for (;;) {
        size_t len = strcspn(p, ",");
        unsigned bit = 0;
        for (int i = 0; i < 3; i++)
            if (len == strlen(variant_names[i]) && strncmp(p, variant_names[i], len) == 0) bit = 1u << i;
        if (!bit || (*out & bit)) {
            fprintf(stderr, PROG ": --variants: '%s' is not a list of distinct names from fused, unfused, cublas\n", s);
            return QD_EINPUT;
        }
        *out |= bit;
        if (p[len] == '\0') return QD_OK;
        p += len + 1;
    }
}

static int list_max(const int *v, int n) {
    int m = 0;
    for (int i = 0; i < n; i++)
        if (v[i] > m) m = v[i];
    return m;
}

static int list_min(const int *v, int n) {
    int m = n ? v[0] : 0;
    for (int i = 1; i < n; i++)
        if (v[i] < m) m = v[i];
    return m;
}

static int parse_args(int argc, char **argv, bench_args *a) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"json", required_argument, 0, 'j'},
                                         {"runs", required_argument, 0, 'r'},
                                         {"warmup", required_argument, 0, 'w'},
                                         {"steps", required_argument, 0, 's'},
                                         {"timeline", required_argument, 0, 't'},
                                         {"prefill-T", required_argument, 0, 'T'},
                                         {"ctx", required_argument, 0, 'c'},
                                         {"variants", required_argument, 0, 'v'},
                                         {"peer", required_argument, 0, 'p'},
                                         {"python", required_argument, 0, 'y'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    *a = (bench_args){.runs = 7,
                      .warmup = 2,
                      .steps = 32,
                      .pre_T = {128, 512, 2048},
                      .npre = 3,
                      .ctx = {512, 4096},
                      .nctx = 2,
                      .variants = V_FUSED | V_UNFUSED | V_CUBLAS};
    int c, pre_given = 0, ctx_given = 0;
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
        case 'T':
            if (parse_list("--prefill-T", optarg, a->pre_T, &a->npre)) return QD_EINPUT;
            pre_given = 1;
            break;
        case 'c':
            if (parse_list("--ctx", optarg, a->ctx, &a->nctx)) return QD_EINPUT;
            ctx_given = 1;
            break;
        case 'v':
            if (parse_variants(optarg, &a->variants)) return QD_EINPUT;
            break;
        case 'p':
            if (strcmp(optarg, "hf") != 0) {
                fprintf(stderr, PROG ": --peer: '%s' is not a known peer (hf: Hugging Face transformers)\n", optarg);
                return QD_EINPUT;
            }
            a->peer = optarg;
            break;
        case 'y': a->python = optarg; break;
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
    /* prefill is timed by fused and unfused only (the cuBLAS decode variant shares fused's prefill) */
    if (!(a->variants & (V_FUSED | V_UNFUSED))) {
        if (pre_given && a->npre) {
            fprintf(stderr,
                    PROG ": --prefill-T: only the fused and unfused variants time prefill (--variants cublas)\n");
            return QD_EINPUT;
        }
        a->npre = 0;
    }
    if (!a->npre && !a->nctx) {
        if (pre_given && ctx_given) fprintf(stderr, PROG ": --prefill-T none and --ctx none: nothing to time\n");
        else fprintf(stderr, PROG ": --ctx none with --variants cublas: nothing to time (cublas times decode only)\n");
        return QD_EINPUT;
    }
    if (a->nctx && a->warmup >= list_min(a->ctx, a->nctx)) {
        fprintf(stderr, PROG ": --warmup %d: must be below the smallest decode context %d\n", a->warmup,
                list_min(a->ctx, a->nctx));
        return QD_EINPUT;
    }
    if (a->timeline && (!a->nctx || !(a->variants & V_FUSED))) {
        fprintf(stderr, PROG ": --timeline: needs a decode context (--ctx) and the fused variant (--variants)\n");
        return QD_EINPUT;
    }
    if (a->python && !a->peer) {
        fprintf(stderr, PROG ": --python: only used with --peer hf\n");
        return QD_EINPUT;
    }
    return QD_OK;
}

// ----------------------------------------------------------------------------
// the peer: a child process

/* Runs argv (argv[0] looked up in PATH), its stdout into *out (malloc'd, NUL-terminated; NULL to discard)
 * and its stderr into the file errpath (NULL: /dev/null). Returns its exit status, CHILD_SIGNAL + the
 * signal that ended it, or -1 with *err = errno when it could not be started. */
enum { CHILD_SIGNAL = 1000 };
static int run_child(char *const argv[], char **out, const char *errpath, int *err) {
    int fd[2];
    if (pipe2(fd, O_CLOEXEC)) {
        *err = errno;
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, errpath ? errpath : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    pid_t pid;
    fflush(stdout);
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    if (rc) {
        close(fd[0]);
        *err = rc;
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (buf && len + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
        char sink[4096];
        ssize_t k = buf ? read(fd[0], buf + len, cap - 1 - len) : read(fd[0], sink, sizeof sink);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        if (buf) len += (size_t)k;
    }
    close(fd[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (buf) buf[len] = '\0';
    if (out) *out = buf;
    else free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : CHILD_SIGNAL + WTERMSIG(st);
}

/* The last non-empty line of a file, trimmed to fit line (empty when there is none). */
static void last_line(const char *path, char *line, size_t n) {
    line[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return;
    char buf[1024];
    while (fgets(buf, sizeof buf, f)) {
        buf[strcspn(buf, "\r\n")] = '\0';
        size_t k = strlen(buf) < n ? strlen(buf) : n - 1;
        if (k) {
            memcpy(line, buf, k);
            line[k] = '\0';
        }
    }
    fclose(f);
}

/* --peer hf: the script is a readable file and the Python imports torch and transformers. Before any
 * timing (and before looking for a device), so that a run that cannot finish does not start. */
static int peer_check(bench_args *a) {
    const char *env = getenv("QD_PYTHON");
    if (!a->python) a->python = env && *env ? env : "python3";
    env = getenv("QD_PEER_HF_SCRIPT");
    a->peer_script = env && *env ? env : QD_PEER_HF_SCRIPT;
    struct stat st;
    if (stat(a->peer_script, &st) != 0 || !S_ISREG(st.st_mode) || access(a->peer_script, R_OK) != 0) {
        fprintf(stderr, PROG ": --peer hf: the script %s is not a readable file (QD_PEER_HF_SCRIPT sets its path)\n",
                a->peer_script);
        return QD_EINPUT;
    }
    /* prints the modules that do not import */
    char *argv[] = {(char *)a->python, "-c",
                    "import sys\n"
                    "missing = []\n"
                    "for m in ('torch', 'transformers'):\n"
                    "    try:\n"
                    "        __import__(m)\n"
                    "    except Exception:\n"
                    "        missing.append(m)\n"
                    "print(' and '.join(missing))\n"
                    "sys.exit(1 if missing else 0)\n",
                    NULL};
    char *out = NULL;
    int err = 0, rc = run_child(argv, &out, NULL, &err);
    if (rc < 0) {
        fprintf(stderr, PROG ": --peer hf: cannot run the Python '%s': %s (--python PATH or QD_PYTHON)\n", a->python,
                strerror(err));
        free(out);
        return QD_EINPUT;
    }
    if (rc != 0) {
        if (out) out[strcspn(out, "\r\n")] = '\0';
        fprintf(stderr,
                PROG ": --peer hf: the Python '%s' cannot import %s (--python PATH or QD_PYTHON names one that has "
                     "torch and transformers)\n",
                a->python, out && *out ? out : "torch and transformers");
        free(out);
        return QD_EINPUT;
    }
    free(out);
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
    const qd_param_counts n = qd_config_params(c);
    return c->num_hidden_layers * (n.layer_mats * 2 + n.layer_norms * 4) + n.embed * 2 + n.final_norm * 4 +
           c->hidden_size * 2;
}

/* K and V of every layer for ctx positions, bf16. */
static double kv_bytes(const qd_config *c, int ctx) {
    return 2.0 * c->num_hidden_layers * ctx * c->num_key_value_heads * c->head_dim * 2;
}

/* Prefill arithmetic: the layers' GEMMs over T tokens, causal attention (QK^T and PV), lm_head for the
 * last token. */
static double prefill_flops(const qd_config *c, int T) {
    const double HD = c->head_dim, NH = c->num_attention_heads, L = c->num_hidden_layers;
    const qd_param_counts n = qd_config_params(c);
    return 2 * L * n.layer_mats * T + L * NH * 4 * HD * ((double)T * (T + 1) / 2) + 2 * n.embed;
}

// ----------------------------------------------------------------------------
// the runs

typedef struct {
    double prefill_ms[MAXL], decode_ms[MAXL];
} variant_result;

/* --timeline: one step of the custom decode per context */
typedef struct {
    qd_tl_launch *launch;
    int n;
    double step_us; /* first block start to last block end */
    qd_tl_kind kind[QD_TL_KINDS];
} timeline_result;
static timeline_result timelines[MAXL];

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
    for (int i = 0; i < a->npre && with_prefill; i++) {
        int T = a->pre_T[i];
        for (int k = 0; k < a->warmup; k++)
            if (qd_fused_prefill(f, tok, T, NULL, NULL, &e)) die_fused("prefill", &e);
        for (int k = 0; k < a->runs; k++) {
            tic();
            if (qd_fused_prefill(f, tok, T, NULL, NULL, &e)) die_fused("prefill", &e);
            t[k] = toc_ms();
        }
        r->prefill_ms[i] = median(t, a->runs);
    }
    for (int i = 0; i < a->nctx; i++) {
        int ctx = a->ctx[i];
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
    for (int i = 0; i < a->nctx; i++) {
        const timeline_result *t = &timelines[i];
        printf("\ntimeline, decode ctx=%d (one step, custom GEMV): %.1f us from the first block start to the last "
               "block end\n",
               a->ctx[i], t->step_us);
        printf("%-10s %9s %12s %12s %12s %12s %12s %12s   (medians over the layers)\n", "kernel", "launches",
               "after wait", "after ready", "to next wait", "wait spread", "tail", "after mark");
        json_t *cx = json_object(), *kinds = json_array(), *launches = json_array();
        json_object_set_new(cx, "ctx", json_integer(a->ctx[i]));
        json_object_set_new(cx, "step_us", json_real(t->step_us));
        for (int k = 0; k < QD_TL_KINDS; k++) {
            const qd_tl_kind *q = &t->kind[k];
            char am[32] = "           -"; /* the attention's last block: from its counter to its end */
            if (q->marked) snprintf(am, sizeof am, "%9.2f us", q->after_mark);
            printf("%-10s %9d %9.2f us %9.2f us %9.2f us %9.2f us %9.2f us %s\n", q->kernel, q->launches, q->after_wait,
                   q->after_ready, q->gap_to_next, q->wait_spread, q->tail, am);
            json_t *o = json_pack("{s:s, s:i, s:f, s:f, s:f, s:f, s:f}", "kernel", q->kernel, "launches", q->launches,
                                  "after_wait_us", q->after_wait, "after_ready_us", q->after_ready, "to_next_wait_us",
                                  q->gap_to_next, "wait_spread_us", q->wait_spread, "tail_us", q->tail);
            if (q->marked) json_object_set_new(o, "after_mark_us", json_real(q->after_mark));
            json_array_append_new(kinds, o);
        }
        for (int j = 0; j < t->n; j++) {
            const qd_tl_launch *l = &t->launch[j];
            json_t *o =
                json_pack("{s:i, s:i, s:s, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "launch", l->launch, "layer",
                          l->layer, "kernel", l->kernel, "blocks", l->blocks, "start_first", l->start_first,
                          "start_last", l->start_last, "wait_first", l->wait_first, "wait_last", l->wait_last,
                          "ready_last", l->ready_last, "end_first", l->end_first, "end_last", l->end_last);
            if (l->mark_last >= 0) json_object_set_new(o, "mark_last", json_real(l->mark_last));
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

// ----------------------------------------------------------------------------
// --peer hf

static void join_list(char *buf, size_t n, const int *v, int len) {
    if (!len) {
        snprintf(buf, n, "none");
        return;
    }
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < len && at < n; i++) at += (size_t)snprintf(buf + at, n - at, i ? ",%d" : "%d", v[i]);
}

/* A positive finite number under key in o, or -1. */
static double peer_num(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    double x = json_is_number(v) ? json_number_value(v) : -1;
    return isfinite(x) && x > 0 ? x : -1;
}

/* The entry of the array arr whose key equals want, or NULL. */
static json_t *peer_row(const json_t *root, const char *arr, const char *key, int want) {
    json_t *a = json_object_get(root, arr), *row;
    size_t i;
    json_array_foreach(a, i, row) {
        if (json_integer_value(json_object_get(row, key)) == want) return row;
    }
    return NULL;
}

/* A figure of the peer block: prefill in tokens/s, decode in ms per token. */
static void peer_figure(char *buf, size_t n, int prefill, double v) {
    if (prefill) snprintf(buf, n, "%.0f tok/s", v);
    else snprintf(buf, n, "%.3f ms", v);
}

/* "fused is 3.56x faster" or "hf is 1.25x faster", from fused's and the peer's times */
static void ratio_words(char *buf, size_t n, double fused_ms, double peer_ms, const char *peer) {
    if (peer_ms >= fused_ms) snprintf(buf, n, "fused is %.2fx faster", peer_ms / fused_ms);
    else snprintf(buf, n, "%s is %.2fx faster", peer, fused_ms / peer_ms);
}

/* Runs tools/bench_peer_hf.py, checks its JSON and prints the peer block beside fused's figures (fused:
 * the custom-decode variant's results, NULL when it did not run). *peer_out: the peer's object with the
 * fused figures and ratios added to its rows. QD_ERUNTIME with one line when the peer fails. */
static int run_peer(const bench_args *a, const variant_result *fused, json_t **peer_out) {
    char ctx[MAXL * 8], pre[MAXL * 8], steps[16], runs[16], warm[16];
    join_list(ctx, sizeof ctx, a->ctx, a->nctx);
    join_list(pre, sizeof pre, a->pre_T, a->npre);
    snprintf(steps, sizeof steps, "%d", a->steps);
    snprintf(runs, sizeof runs, "%d", a->runs);
    snprintf(warm, sizeof warm, "%d", a->warmup);
    char *py = (char *)a->python, *script = (char *)a->peer_script, *model = (char *)a->model;
    char *argv[] = {py,    script,   "--model", model,      "--ctx", ctx,        "--prefill-T", pre, "--steps",
                    steps, "--runs", runs,      "--warmup", warm,    "--device", "cuda",        NULL};
    char errpath[4096]; /* the peer's stderr: its last line names what failed */
    const char *tmpdir = getenv("TMPDIR");
    snprintf(errpath, sizeof errpath, "%s/qwen3-bench-peer.XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    int efd = mkstemp(errpath);
    if (efd < 0) {
        fprintf(stderr, PROG ": --peer hf: mkstemp: %s\n", strerror(errno));
        return QD_ERUNTIME;
    }
    close(efd);
    printf("\npeer: %s %s (Hugging Face transformers; compiles its decode step first) ...\n", a->python,
           a->peer_script);
    char *out = NULL, line[512];
    int err = 0, rc = run_child(argv, &out, errpath, &err);
    last_line(errpath, line, sizeof line);
    remove(errpath);
    if (rc != 0) {
        if (rc < 0) fprintf(stderr, PROG ": --peer hf: cannot run '%s': %s\n", a->python, strerror(err));
        else if (rc > CHILD_SIGNAL)
            fprintf(stderr, PROG ": --peer hf: %s was ended by signal %d (%s)\n", a->peer_script, rc - CHILD_SIGNAL,
                    strsignal(rc - CHILD_SIGNAL));
        else
            fprintf(stderr, PROG ": --peer hf: %s exited %d: %s\n", a->peer_script, rc,
                    line[0] ? line : "(no message)");
        free(out);
        return QD_ERUNTIME;
    }
    json_error_t je;
    json_t *root = out ? json_loads(out, 0, &je) : NULL;
    free(out);
    if (!json_is_object(root)) {
        fprintf(stderr, PROG ": --peer hf: %s printed no JSON object: %s\n", a->peer_script,
                root ? "not an object" : je.text);
        json_decref(root);
        return QD_ERUNTIME;
    }
    /* the peer's rows, decode (ms per token) then prefill (tokens/s): row i of a->nctx + a->npre is
     * kinds[i >= a->nctx], at key value a->ctx[i] or a->pre_T[i - a->nctx] */
    static const struct {
        const char *arr, *key, *label, *field, *fused_field;
    } kinds[2] = {{"decode", "ctx", "decode ctx=", "ms_per_token", "fused_ms_per_token"},
                  {"prefill", "T", "prefill T=", "tok_per_s", "fused_tok_per_s"}};
    /* every figure asked for, positive and finite, before anything is printed */
    for (int i = 0; i < a->nctx + a->npre; i++) {
        const int k = i >= a->nctx, want = k ? a->pre_T[i - a->nctx] : a->ctx[i];
        json_t *row = peer_row(root, kinds[k].arr, kinds[k].key, want);
        if (!row || peer_num(row, kinds[k].field) < 0) {
            fprintf(stderr, PROG ": --peer hf: %s's JSON has no positive finite %s for %s=%d\n", a->peer_script,
                    kinds[k].field, kinds[k].key, want);
            json_decref(root);
            return QD_ERUNTIME;
        }
    }
    const char *mode = json_string_value(json_object_get(root, "compile_mode"));
    const char *tv = json_string_value(json_object_get(root, "transformers"));
    const char *pv = json_string_value(json_object_get(root, "torch"));
    int compiled = mode && strcmp(mode, "none") != 0;
    const char *name = compiled ? "hf+compile" : "hf";
    printf("peer: Hugging Face transformers %s (torch %s), bf16, batch 1, sdpa; decode: StaticCache, step %s%s%s; "
           "prefill: uncompiled, DynamicCache\n",
           tv ? tv : "?", pv ? pv : "?", compiled ? "torch.compile(mode=\"" : "eager", compiled ? mode : "",
           compiled ? "\", fullgraph=True)" : "");
    for (int i = 0; i < a->nctx + a->npre; i++) {
        const int k = i >= a->nctx, j = k ? i - a->nctx : i, want = k ? a->pre_T[j] : a->ctx[j];
        json_t *row = peer_row(root, kinds[k].arr, kinds[k].key, want);
        const double peer_v = peer_num(row, kinds[k].field);
        const char *who = k ? "hf" : name; /* the decode step is the compiled one */
        char label[32], pf[32], ff[32], words[64];
        snprintf(label, sizeof label, "%s%d", kinds[k].label, want);
        peer_figure(pf, sizeof pf, k, peer_v);
        if (!fused) {
            printf("%-18s %s %s  (fused not run)\n", label, who, pf);
            continue;
        }
        /* fused's figure in the row's unit; the ratio from times per token either way */
        const double fused_v = k ? want / (fused->prefill_ms[j] * 1e-3) : fused->decode_ms[j];
        peer_figure(ff, sizeof ff, k, fused_v);
        ratio_words(words, sizeof words, k ? 1 / fused_v : fused_v, k ? 1 / peer_v : peer_v, "hf");
        printf("%-18s fused %s  %s %s  %s\n", label, ff, who, pf, words);
        json_object_set_new(row, kinds[k].fused_field, json_real(fused_v));
        json_object_set_new(row, "fused_speedup", json_real(k ? fused_v / peer_v : peer_v / fused_v));
    }
    json_object_set_new(root, "python", json_string(a->python));
    json_object_set_new(root, "script", json_string(a->peer_script));
    *peer_out = root;
    return QD_OK;
}

int main(int argc, char **argv) {
    bench_args a;
    if (parse_args(argc, argv, &a)) return QD_EINPUT;
    if (a.peer && peer_check(&a)) return QD_EINPUT;
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
    /* + 1: the --timeline step after the timed ones */
    int max_seq = a.nctx ? list_max(a.ctx, a.nctx) + a.steps + 1 : 0;
    if (list_max(a.pre_T, a.npre) > max_seq) max_seq = list_max(a.pre_T, a.npre);
    int32_t *tok = malloc((size_t)max_seq * sizeof *tok);
    uint64_t s = 12345; /* tools/bench_peer_hf.py draws the same ids */
    for (int i = 0; i < max_seq; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = (int32_t)((s >> 33) % (uint64_t)c->vocab_size);
    }
    CK(cudaEventCreate(&ev0));
    CK(cudaEventCreate(&ev1));

    double bw = copy_bandwidth(a.runs);
    /* res[0] fused (custom decode), res[1] unfused (cuBLAS decode), res[2] fused with cuBLAS decode; ran[v]:
     * the variant ran something (the cuBLAS decode variant times decode only) */
    variant_result res[3];
    int ran[3] = {(a.variants & V_FUSED) != 0, (a.variants & V_UNFUSED) != 0, (a.variants & V_CUBLAS) && a.nctx};
    if (ran[0]) run_variant(&w, 0, 0, 1, &a, tok, max_seq, &res[0]);
    if (ran[1]) run_variant(&w, 1, 1, 1, &a, tok, max_seq, &res[1]);
    if (ran[2]) run_variant(&w, 0, 1, 0, &a, tok, max_seq, &res[2]);
    const char *env = getenv("QD_FUSED_DECODE");
    if (ran[0] && env && strcmp(env, "cublas") == 0)
        printf("note: QD_FUSED_DECODE=cublas is set: the custom decode column is cuBLAS too\n");
    double wb = weight_bytes(c);

    printf("device: %s\n", desc);
    printf("model: %s (L %d, C %d, I %d, NH %d, NKV %d, HD %d, V %d)\n", a.model, c->num_hidden_layers, c->hidden_size,
           c->intermediate_size, c->num_attention_heads, c->num_key_value_heads, c->head_dim, c->vocab_size);
    printf("copy bandwidth (read + write): %.0f GB/s; weights read per decode token: %.1f MB\n", bw, wb / 1e6);
    printf("median of %d runs after %d warm-up; events around the calls\n", a.runs, a.warmup);
    if (a.npre) {
        printf("\n%-18s", "");
        if (ran[0]) printf(" %14s", "fused");
        if (ran[1]) printf(" %14s", "unfused");
        if (ran[0] && ran[1]) printf(" %10s", "speedup");
        printf("\n");
    }
    for (int i = 0; i < a.npre; i++) {
        int T = a.pre_T[i];
        double f0 = ran[0] ? T / (res[0].prefill_ms[i] * 1e-3) : 0, f1 = ran[1] ? T / (res[1].prefill_ms[i] * 1e-3) : 0;
        char label[32];
        snprintf(label, sizeof label, "prefill T=%d", T);
        printf("%-18s", label);
        if (ran[0]) printf(" %10.0f tok/s", f0);
        if (ran[1]) printf(" %8.0f tok/s", f1);
        if (ran[0] && ran[1]) printf(" %9.2fx", f0 / f1);
        int v = ran[0] ? 0 : 1;
        printf("   (%.1f TFLOP/s %s)\n", prefill_flops(c, T) / (res[v].prefill_ms[i] * 1e-3) / 1e12,
               v ? "unfused" : "fused");
    }
    /* decode columns in the order custom GEMV (fused), cuBLAS GEMV, unfused */
    static const int dec_order[3] = {0, 2, 1};
    static const char *const dec_head[3] = {"custom GEMV", "unfused", "cuBLAS GEMV"};
    static const char *const dec_short[3] = {"custom", "unfused", "cuBLAS"};
    int first = -1;
    for (int k = 0; k < 3 && first < 0; k++)
        if (ran[dec_order[k]]) first = dec_order[k];
    if (a.nctx && first >= 0) {
        printf("\n%-18s", "decode (ms/token)");
        for (int k = 0; k < 3; k++)
            if (ran[dec_order[k]]) printf(" %14s", dec_head[dec_order[k]]);
        printf(" %10s %8s\n", "roofline", dec_short[first]);
    }
    for (int i = 0; i < a.nctx && first >= 0; i++) {
        double roof = (wb + kv_bytes(c, a.ctx[i])) / (bw * 1e9) * 1e3;
        char label[32];
        snprintf(label, sizeof label, "decode ctx=%d", a.ctx[i]);
        printf("%-18s", label);
        for (int k = 0; k < 3; k++)
            if (ran[dec_order[k]]) printf(" %11.3f ms", res[dec_order[k]].decode_ms[i]);
        printf(" %7.3f ms %7.0f%%", roof, 100 * roof / res[first].decode_ms[i]);
        const char *sep = "   (";
        for (int k = 0; k < 3; k++) {
            int v = dec_order[k];
            if (!ran[v] || v == first) continue;
            printf("%s%s %.0f%%", sep, dec_short[v], 100 * roof / res[v].decode_ms[i]);
            sep = ", ";
        }
        printf("%s\n", sep[0] == ',' ? ")" : "");
    }

    if (a.timeline && write_timeline(&a, c, desc)) return QD_ERUNTIME;

    /* the peer, once every fused model is freed (their device memory with them) */
    json_t *peer = NULL;
    int peer_rc = a.peer ? run_peer(&a, ran[0] ? &res[0] : NULL, &peer) : QD_OK;

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
            if (!ran[v]) continue;
            json_t *var = json_object(), *pre = json_array(), *dec = json_array();
            for (int i = 0; i < a.npre && v < 2; i++) {
                int T = a.pre_T[i];
                json_t *p = json_object();
                json_object_set_new(p, "T", json_integer(T));
                json_object_set_new(p, "ms", json_real(res[v].prefill_ms[i]));
                json_object_set_new(p, "tok_per_s", json_real(T / (res[v].prefill_ms[i] * 1e-3)));
                json_object_set_new(p, "tflops", json_real(prefill_flops(c, T) / (res[v].prefill_ms[i] * 1e-3) / 1e12));
                json_array_append_new(pre, p);
            }
            for (int i = 0; i < a.nctx; i++) {
                double roof = (wb + kv_bytes(c, a.ctx[i])) / (bw * 1e9) * 1e3;
                json_t *d = json_object();
                json_object_set_new(d, "ctx", json_integer(a.ctx[i]));
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
        if (peer) json_object_set(root, "peer_hf", peer);
        if (json_dump_file(root, a.json, JSON_INDENT(2)) != 0) {
            fprintf(stderr, PROG ": %s: cannot write the JSON file\n", a.json);
            json_decref(root);
            json_decref(peer);
            return QD_ERUNTIME;
        }
        json_decref(root);
    }
    json_decref(peer);
    free(tok);
    qd_weights_free(&w);
    return peer_rc;
}
