/* qwen3-diff: finds where, how badly and why two Qwen3 implementations diverge.
 *
 *   qwen3-diff --layer-by-layer [--backends A,B]   runs two backends in lockstep and compares every tap
 *   qwen3-diff compare A.h5[:GROUP] B.h5[:GROUP]   compares two schema-v1 dumps from any engine
 *   qwen3-diff --backends ref --summary            runs one backend and prints what the run looked like
 *
 * Every mode can stream the taps into an HDF5 dump (schema v1, docs/SCHEMA.md).
 *
 * Order of work, chosen so that bad input fails before anything expensive happens:
 *   arguments -> config.json -> token ids (need the vocab) -> dump file created -> weights -> run.
 * Errors travel as qd_err up to main(), the only place that prints them ("qwen3-diff: <msg>", one line
 * on stderr) and exits: 2 for bad input or usage, 3 for runtime failures. A failed run never leaves a
 * dump under the final name (qd_dump_close(commit=0)). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <unistd.h>

#include <jansson.h>

#include "qd_act.h"
#include "qd_backend.h"
#include "qd_build_config.h"
#include "qd_compare.h"
#include "qd_config.h"
#include "qd_dump.h"
#include "qd_fault.h"
#include "qd_files.h"
#include "qd_ref.h"
#include "qd_selftest.h"
#include "qd_sweep.h"
#include "qd_tolerances.h"
#include "qd_taps.h"
#include "qd_tokens.h"
#include "qd_util.h"
#include "qd_weights.h"

// ----------------------------------------------------------------------------
// command line

#define MAX_BACKENDS 2

typedef struct {
    const char *model;          /* checkpoint directory; NULL: the bundled extreme-k_norm fixture */
    const char *tokens;         /* "5,17,3" or "@FILE"; NULL with the bundled model: its prompt */
    const char *backends[MAX_BACKENDS];
    int nbackends;              /* 0: the default pair */
    int layer_by_layer;         /* compare two backends in lockstep */
    int isolate;                /* also teacher-forced */
    qd_mode locate;
    int decode;                 /* decode steps compared after the prompt */
    const char *act;            /* emu/fused activation dtype */
    qd_fault fault;             /* --inject: into the backend under test */
    int taps_all;               /* --fused-taps all */
    const char *tolerances;     /* JSON file; NULL: the precision pair's defaults */
    int calibrate;              /* > 0: the bless step over this many prompts */
    const char *write_tol;      /* where calibration writes */
    double margin;              /* calibration margin over the worst measured error */
    const char *json, *junit;   /* report files */
    const char *dump;           /* NULL: no dump */
    const char *dump_taps;      /* globs */
    int dump_window;            /* --dump-on-divergence K; -1: everything */
    int dump_compress;          /* 0..9 */
    int threads;                /* 0: OpenMP's default */
    qd_accum accum;
    int summary, quiet, help, version, no_color, list_faults;
    int precision_sweep;        /* after a divergence: rerun B in fp32, fp16 and bf16 (qd_sweep.h) */
    const char *compare_a, *compare_b; /* the compare subcommand's operands */
} cli_args;

static void usage(FILE *f) {
    fprintf(f,
        "usage: qwen3-diff [--layer-by-layer] [--model DIR] [--tokens LIST|@FILE] [options]\n"
        "       qwen3-diff compare A.h5[:GROUP] B.h5[:GROUP] [--tolerances FILE] [--json F] [--junit F]\n"
        "       qwen3-diff selftest [--fixtures DIR] [--json FILE]   proves the harness on every fault (--help)\n"
        "\n"
        "Finds where, how badly and why two Qwen3 implementations diverge. --layer-by-layer runs two\n"
        "backends one layer at a time, compares every intermediate tensor (\"tap\") they share and prints the\n"
        "first layer and op whose error exceeds its tolerance or blows up. With one backend it just runs it.\n"
        "\n"
        "input\n"
        "  --model DIR            HF checkpoint: config.json + model.safetensors (or an index of shards)\n"
        "                         (default: the bundled extreme-k_norm fixture, with its prompt)\n"
        "  --tokens LIST|@FILE    prompt ids \"5,17,3\", or @FILE with ids separated by commas/whitespace\n"
        "backends\n"
        "  --backends A[,B]       %s; A is the reference side (default: ref,fused with a\n"
        "                         CUDA device, else ref,emu)\n"
        "  --layer-by-layer       compare the two backends in lockstep (implied by two backends)\n"
        "  --isolate              also run B teacher-forced: layer i of B gets A's input to layer i\n"
        "  --locate free|isolated which run locates the first divergence (default free)\n"
        "  --decode N             also compare N decode steps after the prompt (greedy on A's logits)\n"
        "  --act bf16|fp16|fp32   activation dtype of emu and fused (default bf16; also --fused-precision)\n"
        "  --fused-taps all|fused all: the unfused variant of the CUDA kernels, so every tap exists\n"
        "                         (default fused: taps a kernel fuses away are absent)\n"
        "  --inject NAME[@L]      inject a fault of the catalog into the backend under test (B), in layer L\n"
        "                         or every layer (names: qwen3-diff --inject help)\n"
        "  --threads N            CPU threads (default: all; the reference is bitwise identical for any N)\n"
        "  --ref-accum f32|f64    the reference's accumulation (default f32; f64 is the tighter oracle)\n"
        "verdict and CI\n"
        "  --tolerances FILE      tolerances (docs/TOLERANCES.md); default: from the precision pair\n"
        "  --precision-sweep      after a divergence, rerun B with fp32, fp16 and bf16 activations (each pair\n"
        "                         blessed on its own) and say whether precision or a bug explains it\n"
        "  --calibrate N          bless a known-good pair: run N prompts, then --write-tolerances\n"
        "                         (with --isolate, the teacher-forced rows get their own, tighter section)\n"
        "  --write-tolerances F   where --calibrate writes (margin --margin X over the worst error, default 2)\n"
        "  --json FILE            machine-readable report\n"
        "  --junit FILE           JUnit XML, one test case per layer\n"
        "dump\n"
        "  --dump OUT.h5          every tap of both backends plus /diff/<A>-vs-<B>/metrics (schema v1),\n"
        "                         written to OUT.h5.tmp.<pid> and renamed when complete\n"
        "  --dump-taps GLOBS      only taps whose names match (comma-separated, e.g. 'k_*,attn')\n"
        "  --dump-on-divergence K full tensors only within K layers of the first divergence\n"
        "  --dump-compress N      gzip level 0-9 (default 0)\n"
        "output\n"
        "  --summary              one backend: a per-layer table (max|k_norm|, top-5 next tokens)\n"
        "  --quiet                print nothing on success\n"
        "  --no-color             never colour (colour is used only on a terminal anyway)\n"
        "  --help, --version\n"
        "\n"
        "Exit status: 0 within tolerance, 1 diverged, 2 bad usage or input, 3 runtime failure.\n"
        "\n"
        "Example: locate a divergence, keep the evidence, read it back in h5py\n"
        "  qwen3-diff --layer-by-layer --model fixtures/knorm_extreme --tokens @fixtures/knorm_extreme/prompt.txt \\\n"
        "      --backends ref,emu --isolate --dump /tmp/knorm.h5 --json /tmp/knorm.json\n"
        "  /usr/bin/python3 -c \"import h5py; f = h5py.File('/tmp/knorm.h5'); "
        "print(f['diff/ref-vs-emu/metrics'][:5])\"\n",
        qd_backend_names());
}

/* A whole decimal integer in [lo, hi], or QD_EINPUT naming the flag. */
static int parse_int(const char *flag, const char *s, int lo, int hi, int *out, qd_err *e) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return qd_errf(e, QD_EINPUT, "%s: '%s' is not an integer in %d..%d", flag, s, lo, hi);
    *out = (int)v;
    return QD_OK;
}

static int parse_backends(const char *list, cli_args *a, qd_err *e) {
    static char buf[256]; /* the names point into it for the whole run */
    if (strlen(list) >= sizeof buf) return qd_errf(e, QD_EINPUT, "--backends: list too long");
    strcpy(buf, list);
    a->nbackends = 0;
    for (char *save = NULL, *b = strtok_r(buf, ",", &save); b; b = strtok_r(NULL, ",", &save)) {
        if (strcmp(b, "ref") != 0 && strcmp(b, "emu") != 0 && strcmp(b, "fused") != 0)
            return qd_errf(e, QD_EINPUT, "--backends: unknown backend '%s' (available: %s)", b, qd_backend_names());
        if (a->nbackends == MAX_BACKENDS)
            return qd_errf(e, QD_EINPUT, "--backends: at most %d backends (a reference side and a test side)",
                           MAX_BACKENDS);
        a->backends[a->nbackends++] = b;
    }
    if (a->nbackends == 0) return qd_errf(e, QD_EINPUT, "--backends: empty list (available: %s)", qd_backend_names());
    return QD_OK; /* ref,ref is allowed: a determinism check */
}

static int parse_args(int argc, char **argv, cli_args *a, qd_err *e) {
    memset(a, 0, sizeof *a);
    a->accum = QD_ACCUM_F32;
    a->dump_window = -1;
    a->margin = 2.0;
    a->locate = QD_MODE_FREE;
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "compare") == 0) {
        first = 2;
        int n = 0;
        for (int i = 2; i < argc; i++) {
            if (argv[i][0] == '-') {
                /* skip an option and its value; parsed below */
                if (!strchr(argv[i], '=') && strcmp(argv[i], "--quiet") != 0 && strcmp(argv[i], "--no-color") != 0 &&
                    strcmp(argv[i], "--help") != 0)
                    i++;
                continue;
            }
            if (n == 0) a->compare_a = argv[i];
            else if (n == 1) a->compare_b = argv[i];
            n++;
        }
        if (n != 2) return qd_errf(e, QD_EINPUT, "compare: expected two dumps, A.h5[:GROUP] B.h5[:GROUP] (got %d)", n);
    }
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        if (arg == a->compare_a || arg == a->compare_b) continue;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) { a->help = 1; continue; }
        if (strcmp(arg, "--version") == 0) { a->version = 1; continue; }
        if (strcmp(arg, "--summary") == 0) { a->summary = 1; continue; }
        if (strcmp(arg, "--quiet") == 0) { a->quiet = 1; continue; }
        if (strcmp(arg, "--no-color") == 0) { a->no_color = 1; continue; }
        if (strcmp(arg, "--layer-by-layer") == 0) { a->layer_by_layer = 1; continue; }
        if (strcmp(arg, "--isolate") == 0) { a->isolate = 1; continue; }
        if (strcmp(arg, "--precision-sweep") == 0) { a->precision_sweep = 1; continue; }
        /* flags with a value: "--flag VALUE" or "--flag=VALUE" */
        static const char *const valued[] = {
            "--model", "--tokens", "--backends", "--dump", "--dump-compress", "--threads", "--ref-accum",
            "--locate", "--decode", "--act", "--tolerances", "--calibrate", "--write-tolerances", "--margin",
            "--json", "--junit", "--dump-taps", "--dump-on-divergence", "--fused-precision", "--inject", "--fused-taps"};
        const char *flag = NULL, *val = NULL;
        for (int k = 0; k < (int)(sizeof valued / sizeof *valued) && !flag; k++) {
            size_t fl = strlen(valued[k]);
            if (strcmp(arg, valued[k]) == 0) {
                flag = valued[k];
                if (i + 1 >= argc) return qd_errf(e, QD_EINPUT, "%s: missing value", flag);
                val = argv[++i];
            } else if (strncmp(arg, valued[k], fl) == 0 && arg[fl] == '=') {
                flag = valued[k];
                val = arg + fl + 1;
            }
        }
        if (!flag) {
            if (arg[0] == '-') return qd_errf(e, QD_EINPUT, "unknown option '%s' (see --help)", arg);
            return qd_errf(e, QD_EINPUT, "unexpected argument '%s' (see --help)", arg);
        }
        /* an empty --tokens is left to the token parser, whose message says "empty token list" */
        if (!*val && strcmp(flag, "--tokens") != 0) return qd_errf(e, QD_EINPUT, "%s: empty value", flag);
        int rc = QD_OK;
        if (strcmp(flag, "--model") == 0) a->model = val;
        else if (strcmp(flag, "--tokens") == 0) a->tokens = val;
        else if (strcmp(flag, "--dump") == 0) a->dump = val;
        else if (strcmp(flag, "--tolerances") == 0) a->tolerances = val;
        else if (strcmp(flag, "--write-tolerances") == 0) a->write_tol = val;
        else if (strcmp(flag, "--json") == 0) a->json = val;
        else if (strcmp(flag, "--junit") == 0) a->junit = val;
        else if (strcmp(flag, "--dump-taps") == 0) a->dump_taps = val;
        else if (strcmp(flag, "--backends") == 0) rc = parse_backends(val, a, e);
        else if (strcmp(flag, "--fused-taps") == 0) {
            if (strcmp(val, "all") == 0) a->taps_all = 1;
            else if (strcmp(val, "fused") == 0) a->taps_all = 0;
            else rc = qd_errf(e, QD_EINPUT, "--fused-taps: '%s' is not all or fused", val);
        }
        else if (strcmp(flag, "--inject") == 0 && strcmp(val, "help") == 0) a->list_faults = 1;
        else if (strcmp(flag, "--inject") == 0) rc = qd_fault_parse(val, &a->fault, e);
        else if (strcmp(flag, "--dump-compress") == 0) rc = parse_int(flag, val, 0, 9, &a->dump_compress, e);
        else if (strcmp(flag, "--threads") == 0) rc = parse_int(flag, val, 0, 4096, &a->threads, e);
        else if (strcmp(flag, "--decode") == 0) rc = parse_int(flag, val, 0, 1 << 20, &a->decode, e);
        else if (strcmp(flag, "--calibrate") == 0) rc = parse_int(flag, val, 1, 100000, &a->calibrate, e);
        else if (strcmp(flag, "--dump-on-divergence") == 0) rc = parse_int(flag, val, 0, 1000, &a->dump_window, e);
        else if (strcmp(flag, "--act") == 0 || strcmp(flag, "--fused-precision") == 0) {
            qd_act_dtype d;
            if (qd_act_dtype_parse(val, &d) != 0) rc = qd_errf(e, QD_EINPUT, "%s: '%s' is not bf16, fp16 or fp32", flag, val);
            a->act = val;
        } else if (strcmp(flag, "--margin") == 0) {
            char *end;
            a->margin = strtod(val, &end);
            if (*end || !(a->margin >= 1.0 && a->margin <= 1e6))
                rc = qd_errf(e, QD_EINPUT, "--margin: '%s' is not a number >= 1", val);
        } else if (strcmp(flag, "--locate") == 0) {
            if (strcmp(val, "free") == 0) a->locate = QD_MODE_FREE;
            else if (strcmp(val, "isolated") == 0) a->locate = QD_MODE_ISOLATED;
            else rc = qd_errf(e, QD_EINPUT, "--locate: '%s' is not free or isolated", val);
        } else { /* --ref-accum */
            if (strcmp(val, "f32") == 0) a->accum = QD_ACCUM_F32;
            else if (strcmp(val, "f64") == 0) a->accum = QD_ACCUM_F64;
            else rc = qd_errf(e, QD_EINPUT, "--ref-accum: '%s' is not f32 or f64", val);
        }
        if (rc) return rc;
    }
    if (a->help || a->version || a->list_faults || a->compare_a) return QD_OK;
    if (a->nbackends == 2) a->layer_by_layer = 1;
    if (a->calibrate) a->layer_by_layer = 1;
    if (a->calibrate && !a->write_tol) return qd_errf(e, QD_EINPUT, "--calibrate needs --write-tolerances FILE");
    if (a->write_tol && !a->calibrate) return qd_errf(e, QD_EINPUT, "--write-tolerances needs --calibrate N");
    if (a->calibrate && (a->dump || a->json || a->junit || a->tolerances || a->fault.kind != QD_FAULT_NONE))
        return qd_errf(e, QD_EINPUT, "--calibrate blesses a clean pair and writes only --write-tolerances "
                                     "(drop --dump, --json, --junit, --tolerances and --inject)");
    if (a->layer_by_layer && a->nbackends == 1)
        return qd_errf(e, QD_EINPUT, "--layer-by-layer compares two backends: --backends A,B");
    if (!a->layer_by_layer) {
        const char *only_lockstep = a->isolate ? "--isolate" : a->tolerances ? "--tolerances" : a->json ? "--json"
                                  : a->junit ? "--junit" : a->decode ? "--decode" : a->dump_taps ? "--dump-taps"
                                  : a->dump_window >= 0 ? "--dump-on-divergence"
                                  : a->precision_sweep ? "--precision-sweep" : NULL;
        if (only_lockstep && a->nbackends == 1)
            return qd_errf(e, QD_EINPUT, "%s needs two backends (--layer-by-layer --backends A,B)", only_lockstep);
        if (only_lockstep) a->layer_by_layer = 1;
    }
    if (!a->layer_by_layer && a->nbackends == 0) { /* one backend: the reference */
        a->backends[0] = "ref";
        a->nbackends = 1;
    }
    if (a->layer_by_layer && a->summary)
        return qd_errf(e, QD_EINPUT, "--summary describes a one-backend run; a comparison prints its own table");
    if (a->locate == QD_MODE_ISOLATED && !a->isolate)
        return qd_errf(e, QD_EINPUT, "--locate isolated needs --isolate");
    /* no --model: the bundled extreme-k_norm fixture, with its own prompt unless --tokens is given */
    if (a->model && !a->tokens) return qd_errf(e, QD_EINPUT, "missing --tokens LIST|@FILE (see --help)");
    return QD_OK;
}

// ----------------------------------------------------------------------------
// the run's tap sink: forwards to the dump and keeps per-layer statistics for the summary

typedef struct {
    double out_rms;    /* rms of the layer output */
    float out_max;     /* max|out| */
    float k_norm_max;  /* max|k_norm|: the amplified K (QWEN3.md, "the seed") */
    float attn_max;    /* max|attn| */
    float act_max;     /* max|silu(gate)*up| */
    long nonfinite;    /* NaN/Inf values over every tap of the layer */
} layer_stats;

typedef struct {
    qd_tap_sink sink;       /* sink.ctx points back here */
    qd_tap_sink *dump;      /* NULL without --dump */
    int L;
    layer_stats *layers;    /* (L) */
    long nonfinite;         /* over every tap, model-level ones included */
    int first_bad_layer;    /* where the first non-finite value appeared (-1: model level) */
    char first_bad_tap[24]; /* "" while everything is finite */
} run_sink;

/* max|x| and the count of non-finite values over n values; NaN never wins the max. */
static float max_abs(const float *x, long n, long *nonfinite) {
    float m = 0.0f;
    long bad = 0;
    for (long i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (!isfinite(a)) bad++;
        if (a > m) m = a;
    }
    *nonfinite += bad;
    return m;
}

static double rms(const float *x, long n) {
    double s = 0.0;
    for (long i = 0; i < n; i++) s += (double)x[i] * x[i];
    return n ? sqrt(s / (double)n) : 0.0;
}

static int run_emit(qd_tap_sink *self, int layer, const char *name, const float *data, int ndim,
                    const int64_t *shape) {
    run_sink *s = self->ctx;
    if (s->dump) {
        int rc = s->dump->emit(s->dump, layer, name, data, ndim, shape);
        if (rc) return rc;
    }
    long n = 1;
    for (int i = 0; i < ndim; i++) n *= (long)shape[i];
    long bad = 0;
    float m = max_abs(data, n, &bad);
    if (bad && !s->nonfinite) {
        s->first_bad_layer = layer;
        snprintf(s->first_bad_tap, sizeof s->first_bad_tap, "%s", name);
    }
    s->nonfinite += bad;
    if (layer < 0 || layer >= s->L) return QD_OK;
    layer_stats *ls = &s->layers[layer];
    ls->nonfinite += bad;
    if (strcmp(name, "k_norm") == 0) ls->k_norm_max = m;
    else if (strcmp(name, "attn") == 0) ls->attn_max = m;
    else if (strcmp(name, "act") == 0) ls->act_max = m;
    return QD_OK;
}

// ----------------------------------------------------------------------------
// output

typedef struct {
    int32_t id;
    float logit;
} top_entry;

/* The k largest logits of one position, largest first (ties: lower id first). row (V). */
static void top_k(const float *row, int V, top_entry *top, int k) {
    int n = 0;
    for (int v = 0; v < V; v++) {
        float x = row[v];
        if (isnan(x)) continue;
        if (n == k && !(x > top[k - 1].logit)) continue;
        int j = n < k ? n++ : k - 1;
        while (j > 0 && x > top[j - 1].logit) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = (top_entry){v, x};
    }
    for (int j = n; j < k; j++) top[j] = (top_entry){-1, NAN};
}

static void print_summary(const cli_args *a, const char *model, const qd_backend *be, const qd_weights *w,
                          const run_sink *s, const float *logits, int T, double seconds) {
    const qd_config *c = &w->cfg;
    const float *last = logits + (size_t)(T - 1) * c->vocab_size; /* (V) */
    long bad = 0;
    float lmax = max_abs(logits, (long)T * c->vocab_size, &bad);
    top_entry top[5];
    top_k(last, c->vocab_size, top, 5);

    printf("model   %s\n", model);
    printf("config  L=%d C=%d I=%d NH=%d NKV=%d HD=%d V=%d theta=%g eps=%g %s, weights %s\n",
           c->num_hidden_layers, c->hidden_size, c->intermediate_size, c->num_attention_heads,
           c->num_key_value_heads, c->head_dim, c->vocab_size, c->rope_theta, c->rms_norm_eps,
           c->tie_word_embeddings ? "tied" : "untied", qd_dtype_name(w->src_dtype));
    (void)a;
    printf("run     %s, %s activations, %s accumulation, T=%d tokens, %.2f s\n", be->name, be->precision,
           be->accum, T, seconds);
    printf("\n%5s %11s %11s %11s %11s %11s\n", "layer", "rms(out)", "max|out|", "max|k_norm|", "max|attn|",
           "max|act|");
    for (int l = 0; l < s->L; l++) {
        const layer_stats *ls = &s->layers[l];
        printf("%5d %11.4g %11.4g %11.4g %11.4g %11.4g", l, ls->out_rms, ls->out_max, ls->k_norm_max,
               ls->attn_max, ls->act_max);
        if (ls->nonfinite) printf("  %ld non-finite", ls->nonfinite);
        printf("\n");
    }
    printf("\nlogits  max|.| %.4g over all %d positions\n", lmax, T);
    printf("next    top-5 after position %d, id (logit):", T - 1);
    for (int j = 0; j < 5 && top[j].id >= 0; j++) printf("  %d (%.4g)", top[j].id, top[j].logit);
    printf("\n");
    if (s->nonfinite) {
        printf("warning %ld non-finite values, the first in ", s->nonfinite);
        if (s->first_bad_layer < 0) printf("model-level tap '%s'\n", s->first_bad_tap);
        else printf("layer %d tap '%s'\n", s->first_bad_layer, s->first_bad_tap);
    }
}

// ----------------------------------------------------------------------------
// the run

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The run's input, in the order that makes bad input fail before anything expensive happens: the model
 * directory, config.json (its vocab checks the tokens), the token ids, then the dump file when asked
 * (dump_path NULL: none). On failure everything opened here is released. */
static int open_input(const cli_args *a, const char *model, const char *token_arg, const char *dump_path,
                      qd_config *cfg, char **config_text, int32_t **tokens, int *T, qd_dump **dump, qd_err *e) {
    struct stat st;
    *config_text = NULL;
    *tokens = NULL;
    *dump = NULL;
    if (stat(model, &st) != 0 || !S_ISDIR(st.st_mode))
        return qd_errf(e, QD_EINPUT, "--model %s: no such directory", model);
    int rc = qd_config_load(model, cfg, config_text, e);
    if (!rc) rc = qd_tokens_parse_max(token_arg, cfg->vocab_size, cfg->max_position_embeddings, tokens, T, e);
    if (!rc && dump_path) {
        char *abs_model = realpath(model, NULL);
        *dump = qd_dump_create(dump_path, abs_model ? abs_model : model, *config_text, *tokens, *T,
                               a->dump_compress, e);
        free(abs_model);
        if (!*dump) rc = e->code ? e->code : QD_ERUNTIME;
    }
    if (rc) {
        free(*config_text);
        free(*tokens);
        *config_text = NULL;
        *tokens = NULL;
    }
    return rc;
}

/* One backend, no comparison: run it, optionally dump it, and say what the run looked like. */
static int run_single(const cli_args *a, const char *model, const char *token_arg, qd_err *e) {
    qd_config cfg;
    char *config_text = NULL;
    int32_t *tokens = NULL;
    int T = 0, rc;
    qd_dump *dump = NULL;
    qd_weights w;
    int have_weights = 0;
    qd_backend *be = NULL;
    float *h = NULL, *h2 = NULL, *logits = NULL;
    run_sink s = {0};

    if ((rc = open_input(a, model, token_arg, a->dump, &cfg, &config_text, &tokens, &T, &dump, e))) return rc;

    if ((rc = qd_weights_load(model, &w, e))) goto out;
    have_weights = 1;
    const qd_config *c = &w.cfg;
    qd_backend_opts bo = {.threads = a->threads, .accum_f64 = a->accum == QD_ACCUM_F64, .max_seq = T, .act = a->act,
                          .fault = a->fault, .taps_all = a->taps_all};
    if (!(be = qd_backend_create(a->backends[0], &w, &bo, e))) {
        rc = e->code ? e->code : QD_ERUNTIME;
        goto out;
    }
    if (dump) {
        if ((rc = qd_dump_add_backend(dump, be->name, be->precision, e)) ||
            (rc = qd_dump_backend_attr(dump, be->name, "accum", be->accum, e)))
            goto out;
        s.dump = qd_dump_backend_sink(dump, be->name);
    }

    size_t TC;
    size_t TV;
    if (qd_mul_size((size_t)T, (size_t)c->hidden_size, &TC) || qd_mul_size((size_t)T, (size_t)c->vocab_size, &TV)) {
        rc = qd_errf(e, QD_EINPUT, "T=%d tokens: activation size overflows", T);
        goto out;
    }
    h = qd_malloc(TC * sizeof(float));      /* (T, C) layer input */
    h2 = qd_malloc(TC * sizeof(float));     /* (T, C) layer output */
    logits = qd_malloc(TV * sizeof(float)); /* (T, V) */
    s.sink.emit = run_emit;
    s.sink.ctx = &s;
    s.L = c->num_hidden_layers;
    s.layers = qd_calloc((size_t)s.L, sizeof *s.layers);

    double t0 = now_seconds();
    rc = be->embed(be, tokens, T, h, &s.sink, e);
    for (int layer = 0; rc == QD_OK && layer < s.L; layer++) {
        rc = be->layer(be, layer, h, h2, T, 0, &s.sink, e);
        if (rc) break;
        layer_stats *ls = &s.layers[layer];
        long bad = 0; /* already counted through the 'out' tap */
        ls->out_max = max_abs(h2, (long)TC, &bad);
        ls->out_rms = rms(h2, (long)TC);
        float *tmp = h;
        h = h2;
        h2 = tmp;
    }
    if (rc == QD_OK) rc = be->head(be, h, T, logits, &s.sink, e);
    double seconds = now_seconds() - t0;
    if (rc) {
        /* a dump write failure has its own message, more precise than the backend's */
        const qd_err *de = dump ? qd_dump_last_error(dump) : NULL;
        if (de && de->code) qd_errf(e, rc, "%s", de->msg);
        goto out;
    }

    if (dump) {
        rc = qd_dump_close(dump, 1, e);
        dump = NULL;
        if (rc) goto out;
    }
    if (a->summary) {
        print_summary(a, model, be, &w, &s, logits, T, seconds);
    } else if (!a->quiet) {
        top_entry top[1];
        top_k(logits + (size_t)(T - 1) * c->vocab_size, c->vocab_size, top, 1);
        printf("%s: %d layers, T=%d tokens, %.2f s; next token %d (logit %.4g)", be->name, s.L, T, seconds, top[0].id,
               top[0].logit);
        if (s.nonfinite) printf("; %ld non-finite values", s.nonfinite);
        if (a->dump) printf("; dump %s", a->dump);
        printf("\n");
    }

out:
    if (dump) qd_dump_close(dump, 0, NULL); /* failure: no half-written file */
    qd_backend_destroy(be);
    if (have_weights) qd_weights_free(&w);
    free(s.layers);
    free(h);
    free(h2);
    free(logits);
    free(tokens);
    free(config_text);
    return rc;
}

// ----------------------------------------------------------------------------
// comparisons

/* Loads the tolerances for the pair (test = B, reference = A): the file's, or the pair's defaults. A file
 * written for another precision pair, or with layer entries beyond the model, is refused. */
static int load_tolerances(const cli_args *a, const qd_backend *ra, const qd_backend *tb, int L, qd_tolerances *t,
                           qd_err *e) {
    if (!a->tolerances) return qd_tolerances_default(t, tb->precision, ra->precision, e);
    int rc = qd_tolerances_load(a->tolerances, t, e);
    if (rc) return rc;
    /* a pair is judged by its less precise side (fp64 ~ fp32), so compare the pairs' classes: their floors */
    qd_tol want, have;
    int same = !qd_tolerances_floor(tb->precision, ra->precision, &want, e) &&
               !qd_tolerances_floor(t->prec_test, t->prec_ref, &have, e) && want.rel_l2 == have.rel_l2;
    if (!same) {
        rc = qd_errf(e, QD_EINPUT, "%s: field 'precision_pair': written for %s vs %s, this comparison is %s (%s) vs %s (%s)",
                     a->tolerances, t->prec_test, t->prec_ref, tb->name, tb->precision, ra->name, ra->precision);
    } else {
        const qd_tolerances *sec[2] = {t, t->isolated}; /* the top level, the isolated section */
        for (int k = 0; k < 2 && !rc; k++)
            if (sec[k] && sec[k]->n_layers > L)
                rc = qd_errf(e, QD_EINPUT, "%s: field '%slayers': an entry for layer %d, but the model has %d layers",
                             a->tolerances, k ? "isolated." : "", sec[k]->n_layers - 1, L);
    }
    if (rc) qd_tolerances_free(t);
    return rc;
}

/* The bless step: N prompts (the given one, then deterministic random ones of the same length) through
 * a known-good pair; every tap's worst error times the margin becomes its tolerance. */
static int calibrate(const cli_args *a, const char *model, qd_backend *ra, qd_backend *tb, qd_backend *ti,
                     const int32_t *tokens, int T, qd_err *e) {
    qd_tolerances t;
    qd_bless_stats st;
    int rc = qd_bless(ra, tb, ti, tokens, T, a->calibrate, a->decode, a->margin, &t, &st, e);
    if (rc) return rc;
    char pair[160];
    snprintf(pair, sizeof pair, "%s,%s", ra->name, tb->name);
    t.measured = json_pack("{s:s, s:s, s:i, s:i, s:i, s:f, s:s, s:f, s:s}", "model", model, "backends", pair,
                           "prompts", a->calibrate, "tokens_per_prompt", T, "decode_steps", a->decode,
                           "worst_rel_l2", st.worst_rel_l2, "worst_at", st.worst_at, "worst_growth",
                           st.worst_growth, "worst_growth_at", st.worst_growth_at);
    rc = qd_tolerances_write(a->write_tol, &t, e);
    if (!rc && !a->quiet)
        printf("calibrated %s (%s) vs %s (%s) over %d prompts of %d tokens%s: worst rel_l2 %.3g (%s), worst "
               "layer-to-layer growth %.3gx; wrote %s (margin %g)\n", ra->name, ra->precision, tb->name,
               tb->precision, a->calibrate, T, a->decode ? " and their decode steps" : "", st.worst_rel_l2,
               st.worst_at, st.worst_growth, a->write_tol, a->margin);
    qd_tolerances_free(&t);
    return rc;
}

static int run_lockstep(const cli_args *a, const char *model, const char *token_arg, qd_err *e) {
    qd_config cfg;
    char *config_text = NULL;
    int32_t *tokens = NULL;
    int T = 0, rc;
    qd_dump *dump = NULL;
    qd_weights w;
    int have_weights = 0, have_tol = 0, have_report = 0;
    qd_backend *ba = NULL, *bb = NULL, *bi = NULL;
    qd_tolerances tol;
    qd_report r;

    if ((rc = open_input(a, model, token_arg, a->calibrate ? NULL : a->dump, &cfg, &config_text, &tokens, &T,
                         &dump, e)))
        return rc;
    const char *name_a = a->nbackends ? a->backends[0] : "ref";
    const char *name_b = a->nbackends ? a->backends[1] : qd_backend_default_test();
    if ((rc = qd_weights_load(model, &w, e))) goto out;
    have_weights = 1;
    const int L = w.cfg.num_hidden_layers;
    if (a->fault.kind != QD_FAULT_NONE && a->fault.layer >= L) {
        rc = qd_errf(e, QD_EINPUT, "--inject: layer %d, but the model has %d layers", a->fault.layer, L);
        goto out;
    }
    qd_backend_opts bo = {.threads = a->threads, .accum_f64 = a->accum == QD_ACCUM_F64, .max_seq = T + a->decode,
                          .act = a->act, .taps_all = a->taps_all};
    qd_backend_opts bo_test = bo;
    bo_test.fault = a->fault;
    if (!(ba = qd_backend_create(name_a, &w, &bo, e)) || !(bb = qd_backend_create(name_b, &w, &bo_test, e)) ||
        (a->isolate && !(bi = qd_backend_create(name_b, &w, &bo_test, e)))) {
        rc = e->code ? e->code : QD_ERUNTIME;
        goto out;
    }
    if (a->calibrate) {
        rc = calibrate(a, model, ba, bb, bi, tokens, T, e);
        goto out;
    }
    if ((rc = load_tolerances(a, ba, bb, L, &tol, e))) goto out;
    have_tol = 1;
    if (strcmp(ba->name, bb->name) == 0) { /* ref,ref: a determinism check; the dump needs two groups */
        size_t k = strlen(bb->name);
        if (k + 2 <= sizeof bb->name) memcpy(bb->name + k, "2", 2);
    }
    qd_report_init(&r, ba->name, ba->precision, bb->name, bb->precision, L, a->locate, &tol.blowup);
    have_report = 1;
    qd_lockstep_opts o = {.tokens = tokens, .T = T, .decode = a->decode, .tol = &tol, .locate = a->locate,
                          .dump = dump, .dump_taps = a->dump_taps, .dump_window = a->dump_window,
                          .progress = !a->quiet};
    if ((rc = qd_lockstep(ba, bb, bi, &o, &r, e))) goto out;
    if (dump) {
        if ((rc = qd_report_write_h5(&r, dump, e))) goto out;
        rc = qd_dump_close(dump, 1, e);
        dump = NULL;
        if (rc) goto out;
    }
    if (a->json && (rc = qd_report_write_json(&r, a->json, e))) goto out;
    if (a->junit && (rc = qd_report_write_junit(&r, a->junit, e))) goto out;
    if (!a->quiet) {
        printf("model %s, T=%d tokens\n", model, T);
        qd_report_print(&r, stdout, isatty(1) && !a->no_color);
        if (a->dump) printf("dump: %s\n", a->dump);
    }
    if (a->precision_sweep && !qd_report_diverged(&r)) {
        if (!a->quiet) printf("precision sweep: no divergence to explain\n");
    } else if (a->precision_sweep) {
        qd_sweep_opts so = {.name_a = name_a, .name_b = name_b, .tokens = tokens, .T = T, .decode = a->decode,
                            .calib_prompts = 5, .margin = a->margin, .locate = a->locate,
                            .opts = {.threads = a->threads, .accum_f64 = a->accum == QD_ACCUM_F64,
                                     .fault = a->fault, .taps_all = a->taps_all}};
        qd_sweep_result sr;
        if ((rc = qd_precision_sweep(&w, &so, &sr, e))) goto out;
        qd_sweep_print(&sr, &so, stdout);
    }
    rc = qd_report_diverged(&r) ? QD_EDIVERGED : QD_OK;

out:
    if (dump) qd_dump_close(dump, 0, NULL);
    if (have_report) qd_report_free(&r);
    if (have_tol) qd_tolerances_free(&tol);
    qd_backend_destroy(bi);
    qd_backend_destroy(bb);
    qd_backend_destroy(ba);
    if (have_weights) qd_weights_free(&w);
    free(tokens);
    free(config_text);
    return rc;
}

/* "file.h5:GROUP" -> path and group; a bare path (or one whose ':' belongs to the file name) has none. */
static void split_operand(const char *arg, char *path, size_t n, char *group, size_t gn) {
    snprintf(path, n, "%s", arg);
    group[0] = '\0';
    char *colon = strrchr(path, ':');
    struct stat st;
    if (colon && !strchr(colon, '/') && stat(path, &st) != 0) {
        *colon = '\0';
        snprintf(group, gn, "%s", colon + 1);
    }
}

static int run_compare(const cli_args *a, qd_err *e) {
    char pa[4096], pb[4096], ga[128], gb[128];
    split_operand(a->compare_a, pa, sizeof pa, ga, sizeof ga);
    split_operand(a->compare_b, pb, sizeof pb, gb, sizeof gb);
    qd_tolerances tol;
    int have_tol = 0, rc = QD_OK;
    if (a->tolerances) {
        if ((rc = qd_tolerances_load(a->tolerances, &tol, e))) return rc;
        have_tol = 1;
    }
    qd_report r;
    memset(&r, 0, sizeof r);
    rc = qd_compare_files(pa, ga[0] ? ga : NULL, pb, gb[0] ? gb : NULL, have_tol ? &tol : NULL, &r, e);
    if (!rc && a->json) rc = qd_report_write_json(&r, a->json, e);
    if (!rc && a->junit) rc = qd_report_write_junit(&r, a->junit, e);
    if (!rc && !a->quiet) {
        printf("compare %s vs %s\n", a->compare_a, a->compare_b);
        qd_report_print(&r, stdout, isatty(1) && !a->no_color);
    }
    if (!rc) rc = qd_report_diverged(&r) ? QD_EDIVERGED : QD_OK;
    qd_report_free(&r);
    if (have_tol) qd_tolerances_free(&tol);
    return rc;
}

int main(int argc, char **argv) {
    cli_args a;
    qd_err e;
    qd_err_clear(&e);
    if (argc > 1 && strcmp(argv[1], "selftest") == 0) return qd_selftest_main(argc - 1, argv + 1);
    int rc = parse_args(argc, argv, &a, &e);
    if (rc == QD_OK && a.help) {
        usage(stdout);
        return 0;
    }
    if (rc == QD_OK && a.list_faults) {
        printf("faults for --inject NAME[@LAYER] (into emu or fused; the first tap where each shows):\n");
        for (int k = 1; k < QD_NUM_FAULTS; k++) {
            const qd_fault_info *fi = qd_fault_info_of((qd_fault_kind)k);
            printf("  %2d %-24s %-14s %s%s\n", k, fi->name, fi->first_tap, fi->description,
                   fi->decode_only ? " (decode steps only: use --decode N)" : "");
        }
        return 0;
    }
    if (rc == QD_OK && a.version) {
        printf("qwen3-diff %s\n", QD_VERSION);
        return 0;
    }
    /* outputs never overwrite each other or an input; a signal removes the temporary files (qd_files.h) */
    if (rc == QD_OK)
        rc = qd_check_paths(&e, QD_PATH_OUT, "--dump", a.dump, QD_PATH_OUT, "--json", a.json, QD_PATH_OUT, "--junit",
                            a.junit, QD_PATH_OUT, "--write-tolerances", a.write_tol, QD_PATH_IN, "--tolerances",
                            a.tolerances, QD_PATH_IN, "--tokens", a.tokens && a.tokens[0] == '@' ? a.tokens + 1 : NULL,
                            QD_PATH_IN, "compare A", a.compare_a, QD_PATH_IN, "compare B", a.compare_b, QD_PATH_END);
    if (rc == QD_OK) rc = qd_tmp_cleanup_on_signals(&e);
    if (rc == QD_OK) {
        const char *model = a.model ? a.model : QD_SOURCE_ROOT "/fixtures/knorm_extreme";
        char token_arg[4200];
        snprintf(token_arg, sizeof token_arg, "%s", a.tokens ? a.tokens : "");
        if (!a.tokens) snprintf(token_arg, sizeof token_arg, "@%s/prompt.txt", model);
        if (a.compare_a) rc = run_compare(&a, &e);
        else if (a.layer_by_layer) rc = run_lockstep(&a, model, token_arg, &e);
        else rc = run_single(&a, model, token_arg, &e);
    }
    if (rc == QD_EDIVERGED) {
        if (e.msg[0]) fprintf(stderr, "qwen3-diff: %s\n", e.msg);
        return 1;
    }
    if (rc != QD_OK) {
        fprintf(stderr, "qwen3-diff: %s\n", e.msg[0] ? e.msg : "failed");
        return rc == QD_EINPUT ? 2 : 3;
    }
    return 0;
}
