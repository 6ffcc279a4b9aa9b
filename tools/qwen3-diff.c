/* qwen3-diff: finds where, how badly and why two Qwen3 implementations diverge.
 *
 *   qwen3-diff --layer-by-layer [--backends A,B]   runs two backends in lockstep and compares every tap
 *   qwen3-diff compare REF.h5[:G] TEST.h5[:G]      compares two schema-v1 dumps from any engine (the first is
 *                                                  the reference; also --reference F[:G] --test F[:G])
 *   qwen3-diff replay DUMP.h5[:GROUP]              judges one engine's dump op by op on its own
 *   qwen3-diff replay REPRO.h5                     reruns one op from its repro file (--repro), no checkpoint
 *   qwen3-diff --backends ref --summary            runs one backend and prints what the run looked like
 *   qwen3-diff selftest [--backend emu|fused]      proves the harness on every fault (selftest_cli.c)
 *
 * Every mode can stream the taps into an HDF5 dump (schema v1, docs/SCHEMA.md).
 *
 * Order of work, chosen so that bad input fails before anything expensive happens:
 *   arguments -> config.json -> token ids (need the vocab) -> dump file created -> weights -> run.
 * Errors travel as qd_err up to main(), the only place that prints them ("qwen3-diff: <msg>", one line
 * on stderr) and exits: 2 for bad input or usage, 3 for runtime failures. A failed run never leaves a
 * dump under the final name (qd_dump_close(commit=0)).
 *
 * Verdicts: by default each op of each side is replayed from that side's own tapped inputs and judged by its
 * local error over its noise floor (compare/qd_replay.h); --tolerances FILE or --calibrate selects the
 * absolute, blessed tolerances instead (docs/TOLERANCES.md).
 *
 * Options: one table per command (main_opts, compare_opts and replay_opts below, selftest's in selftest_cli.c), from
 * which the parser and --help are generated (cli_opts.h). An option is a row of its table and a case of
 * take_option; checks across options stay in parse_args. */
#include <fnmatch.h>
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
#include "qd_bisect.h"
#include "qd_build_config.h"
#include "qd_compare.h"
#include "qd_config.h"
#include "qd_dump.h"
#include "qd_emu.h"
#include "qd_fault.h"
#include "qd_files.h"
#include "qd_h5read.h"
#include "qd_progress.h"
#include "qd_ref.h"
#include "qd_reports.h"
#include "qd_repro.h"
#include "qd_sweep.h"
#include "qd_tolerances.h"
#include "qd_taps.h"
#include "qd_tokenizer.h"
#include "qd_tokens.h"
#include "qd_util.h"
#include "qd_weights.h"

#include "cli_opts.h"
#include "lists.h"
#include "run_checks.h"
#include "selftest_cli.h"

// ----------------------------------------------------------------------------
// command line: one option table per command (cli_opts.h); parsing, the usage lines and --help's option
// list all come from the tables

#define MAX_BACKENDS 2

typedef struct {
    const char *model;  /* checkpoint directory; NULL: the bundled extreme-k_norm fixture */
    const char *tokens; /* "5,17,3" or "@FILE"; NULL with the bundled model: its prompt */
    const char *prompt; /* --prompt TEXT or @FILE, tokenised with the model's tokenizer.json; NULL: none */
    int chat;           /* --chat: the prompt as one user turn of the chat template */
    const char *backends[MAX_BACKENDS];
    int nbackends;      /* 0: the default pair */
    int layer_by_layer; /* compare two backends in lockstep */
    int isolate;        /* also teacher-forced */
    qd_mode locate;
    int decode;               /* decode steps compared after the prompt */
    const char *act;          /* emu/fused activation dtype */
    qd_fault fault;           /* --inject: into the backend under test */
    const char *act_a;        /* --act-a: the reference side's activation dtype (emu/fused); NULL: --act */
    qd_fault fault_a;         /* --inject-a: into the reference side (emu/fused) */
    double threshold;         /* --ratio-threshold; 0: QD_REPLAY_THRESHOLD */
    int taps_all;             /* --fused-taps all */
    const char *tolerances;   /* JSON file; NULL: the precision pair's defaults */
    int calibrate;            /* > 0: the bless step over this many prompts */
    const char *write_tol;    /* where calibration writes */
    double margin;            /* calibration margin over the worst measured error */
    const char *json, *junit; /* report files */
    const char *html;         /* --html, or report's -o: the HTML report */
    const char *report_dump;  /* the report subcommand's operand */
    const char *dump;         /* NULL: no dump */
    const char *repro;        /* --repro: the first divergence's op as a repro file; NULL: none */
    const char *dump_taps;    /* globs */
    int dump_window;          /* --dump-on-divergence K; -1: everything */
    int dump_compress;        /* 0..9; -1: not given */
    int threads;              /* 0: OpenMP's default (--threads takes 1 and up) */
    qd_accum accum;
    int summary, quiet, help, version, list_faults, list_taps;
    int color;            /* --color: 1 always, 0 never, -1 auto (a terminal without NO_COLOR) */
    int strict;           /* a tolerance file of another model is an error */
    int precision_sweep;  /* after a divergence: rerun B in fp32, fp16 and bf16 (qd_sweep.h) */
    int precision_bisect; /* after a divergence: the smallest set of ops whose fp32 fixes it (qd_bisect.h) */
    unsigned fp32_points; /* --fp32-ops: emu's precision points kept in fp32 (qd_emu.h) */
    const char *compare_a, *compare_b; /* the compare subcommand's operands: the reference, the test */
    int allow_mismatch;                /* compare: dumps of other prompts or configs, where comparable */
    double max_memory;                 /* --max-memory in bytes; < 0: MemAvailable; 0: no check */
    const char *replay_dump;           /* the replay subcommand's operand */
    int noperands;                     /* how many dumps the compare subcommand was given */
} cli_args;

enum {
    O_MODEL = 1,
    O_TOKENS,
    O_BACKENDS,
    O_LAYER_BY_LAYER,
    O_ISOLATE,
    O_LOCATE,
    O_DECODE,
    O_ACT,
    O_FUSED_TAPS,
    O_INJECT,
    O_THREADS,
    O_REF_ACCUM,
    O_TOLERANCES,
    O_PRECISION_SWEEP,
    O_CALIBRATE,
    O_WRITE_TOL,
    O_MARGIN,
    O_JSON,
    O_JUNIT,
    O_DUMP,
    O_DUMP_TAPS,
    O_DUMP_ON_DIVERGENCE,
    O_DUMP_COMPRESS,
    O_SUMMARY,
    O_QUIET,
    O_HELP,
    O_VERSION,
    O_FP32_OPS,
    O_PRECISION_BISECT,
    O_ACT_A,
    O_INJECT_A,
    O_RATIO_THRESHOLD,
    O_REPRO,
    O_PROMPT,
    O_CHAT,
    O_HTML,
    O_STRICT,
    O_COLOR,
    O_LIST_TAPS,
    O_LIST_FAULTS,
    O_REFERENCE,
    O_TEST,
    O_ALLOW_MISMATCH,
    O_MAX_MEMORY,
};

/* name, value, id, section, help (NULL: not listed), usage position, flags, short name; in the order of --help */
static const qd_cli_opt main_opts[] = {
    {"model", "DIR", O_MODEL, "input",
     "HF checkpoint: config.json + model.safetensors (or an index of shards)\n"
     "(default: the bundled extreme-k_norm fixture, with its prompt)",
     2, 0, 0},
    /* an empty list is left to the token parser, whose message says "empty token list" */
    {"tokens", "LIST|@FILE", O_TOKENS, "input",
     "prompt ids \"5,17,3\", or @FILE with ids separated by commas/whitespace", 3, QD_CLI_EMPTY_OK, 0},
    {"prompt", "TEXT|@FILE", O_PROMPT, "input",
     "prompt text (or a UTF-8 file's), tokenised with the model's tokenizer.json;\n"
     "special tokens written in it (<|im_start|>) are matched (docs/TOKENIZER.md)",
     0, QD_CLI_EMPTY_OK, 0},
    {"chat", NULL, O_CHAT, "input",
     "wrap --prompt as one user turn in the model's chat template\n"
     "(ChatML, from tokenizer_config.json), ready for the assistant's answer",
     0, 0, 0},
    {"backends", "A[,B]", O_BACKENDS, "backends",
     "{backends}; A is the reference side (default: ref,fused with a\n"
     "CUDA device, else ref,emu)",
     0, 0, 0},
    {"layer-by-layer", NULL, O_LAYER_BY_LAYER, "backends",
     "compare the two backends in lockstep (implied by two backends)", 1, 0, 0},
    {"isolate", NULL, O_ISOLATE, "backends", "also run B teacher-forced: layer i of B gets A's input to layer i", 0, 0,
     0},
    {"locate", "free|isolated", O_LOCATE, "backends", "which run locates the first divergence (default free)", 0, 0, 0},
    {"decode", "N", O_DECODE, "backends", "also compare N decode steps after the prompt (greedy on A's logits)", 0, 0,
     0},
    {"act", "bf16|fp16|fp32", O_ACT, "backends",
     "activation dtype of emu and fused (default bf16; also --fused-precision)", 0, 0, 0},
    {"fused-precision", "bf16|fp16|fp32", O_ACT, "backends", NULL, 0, 0, 0}, /* --act's older name: its id */
    {"fp32-ops", "OPS", O_FP32_OPS, "backends",
     "keep these ops of emu (B) in fp32, the rest in the activation "
     "dtype\n(docs/PRECISION.md): {fp32_ops}",
     0, 0, 0},
    {"fused-taps", "all|fused", O_FUSED_TAPS, "backends",
     "all: the unfused variant of the CUDA kernels, so every tap "
     "exists\n(default fused: taps a kernel fuses away are absent)",
     0, 0, 0},
    {"inject", "NAME[@L]", O_INJECT, "backends",
     "inject a fault of the catalog into the backend under test (B), in "
     "layer L\nor every layer (names: qwen3-diff --inject help)",
     0, 0, 0},
    {"act-a", "bf16|fp16|fp32", O_ACT_A, "backends",
     "activation dtype of the reference side A when it is emu or fused (default: --act)", 0, 0, 0},
    {"inject-a", "NAME[@L]", O_INJECT_A, "backends",
     "inject a fault into the reference side A (emu or fused): the "
     "replay verdict\njudges each side on its own and names the faulty one",
     0, 0, 0},
    {"threads", "N", O_THREADS, "backends", "CPU threads (default: all; the reference is bitwise identical for any N)",
     0, 0, 0},
    {"ref-accum", "f32|f64", O_REF_ACCUM, "backends",
     "the reference's accumulation (default f32; f64 is the tighter oracle)", 0, 0, 0},
    {"max-memory", "GIB", O_MAX_MEMORY, "backends",
     "refuse a run whose memory estimate exceeds GIB (default: MemAvailable;\n0: no check); "
     "a run of 1 GiB or more prints its estimate",
     0, 0, 0},
    {"tolerances", "FILE", O_TOLERANCES, "verdict and CI",
     "judge by absolute tolerances (docs/TOLERANCES.md), the stricter gate; default:\n"
     "replay each op from each side's own inputs and judge its local error over\nits noise floor",
     0, 0, 0},
    {"ratio-threshold", "X", O_RATIO_THRESHOLD, "verdict and CI",
     "the replay verdict's threshold on local error / noise floor (default 4)", 0, 0, 0},
    {"precision-sweep", NULL, O_PRECISION_SWEEP, "verdict and CI",
     "after a divergence, rerun B with fp32, fp16 and "
     "bf16 activations (each pair\nblessed on its own) and say whether precision or a bug explains it",
     0, 0, 0},
    {"precision-bisect", NULL, O_PRECISION_BISECT, "verdict and CI",
     "after a divergence, rerun B as emu with chosen "
     "ops in fp32 and name the\nsmallest set of ops whose fp32 fixes the flagged tap, or say none does",
     0, 0, 0},
    {"calibrate", "N", O_CALIBRATE, "verdict and CI",
     "bless a known-good pair: run N prompts, then "
     "--write-tolerances\n(with --isolate, the teacher-forced rows get their own, tighter section)",
     0, 0, 0},
    {"write-tolerances", "F", O_WRITE_TOL, "verdict and CI",
     "where --calibrate writes; the file records the model's shape and config hash", 0, 0, 0},
    {"margin", "X", O_MARGIN, "verdict and CI",
     "--calibrate's and --precision-sweep's margin over the worst measured error\n(default 2)", 0, 0, 0},
    {"strict", NULL, O_STRICT, "verdict and CI",
     "a --tolerances file calibrated on another model (shape or config hash) is an\nerror, not a warning", 0, 0, 0},
    {"json", "FILE", O_JSON, "verdict and CI",
     "machine-readable report (docs/SCHEMA.md, \"The JSON report\"): the verdict, every\ntap, the model, "
     "the input ids, the precision sweep's verdict",
     0, 0, 0},
    {"junit", "FILE", O_JUNIT, "verdict and CI", "JUnit XML, one test case per step and layer (embed and head too)", 0,
     0, 0},
    {"html", "FILE", O_HTML, "verdict and CI",
     "a self-contained HTML report (plots, heatmaps, where; no network needed to view\nit); "
     "`qwen3-diff report DUMP.h5 -o FILE` draws it from a dump",
     0, 0, 0},
    {"dump", "OUT.h5", O_DUMP, "dump",
     "every tap of both backends plus /diff/<A>-vs-<B>/metrics (schema v1),\n"
     "written to OUT.h5.tmp.<pid> and renamed when complete",
     0, 0, 0},
    {"dump-taps", "GLOBS", O_DUMP_TAPS, "dump", "only taps whose names match (comma-separated, e.g. 'k_*,attn')", 0, 0,
     0},
    {"dump-on-divergence", "K", O_DUMP_ON_DIVERGENCE, "dump",
     "full tensors only within K layers of the first divergence", 0, 0, 0},
    {"dump-compress", "N", O_DUMP_COMPRESS, "dump", "gzip level 0-9 (default 0)", 0, 0, 0},
    {"repro", "FILE", O_REPRO, "dump",
     "the first divergence's op alone as a small HDF5 file (its inputs as tapped,\n"
     "weights, outputs; replay verdict only): `qwen3-diff replay FILE` reruns it\nwithout the checkpoint "
     "(docs/SCHEMA.md, \"Repro files\"; compare takes it too)",
     0, 0, 0},
    {"summary", NULL, O_SUMMARY, "output", "one backend: a per-layer table (max|k_norm|, top-5 next tokens)", 0, 0, 0},
    {"quiet", NULL, O_QUIET, "output",
     "no progress (else on stderr with an ETA: a live line on a terminal, a line\n"
     "per 10 s in a log, QD_PROGRESS_INTERVAL=SECONDS), no tables: only errors,\nwarnings and the exit status",
     0, 0, 0},
    {"color", "WHEN", O_COLOR, "output",
     "auto, always or never: colour the verdicts (auto, the default: on a\nterminal, unless NO_COLOR is set)", 0, 0, 0},
    {"no-color", NULL, O_COLOR, "output", "--color never", 0, 0, 0},
    {"list-taps", NULL, O_LIST_TAPS, "output", "print every tap in data-flow order with what it holds", 0, 0, 0},
    {"list-faults", NULL, O_LIST_FAULTS, "output",
     "print the fault catalog: where each applies and what it needs (also\n--inject help)", 0, 0, 0},
    {"help", NULL, O_HELP, "output", "", 0, 0, 'h'},
    {"version", NULL, O_VERSION, "output", "", 0, 0, 0},
};

/* --model's text in compare --help and replay --help (their tables' own help texts are listed only there) */
#define MODEL_OF_DUMP "the checkpoint the dump was made with (default: the dump's 'model' attribute)"

/* compare's options, described by the main --help: the model (for the replay verdict), the report files, the
 * tolerances, the output */
static const qd_cli_opt compare_opts[] = {
    {"reference", "F[:G]", O_REFERENCE, NULL, NULL, 0, 0, 0}, /* the operands by name (compare_cmd) */
    {"test", "F[:G]", O_TEST, NULL, NULL, 0, 0, 0},
    {"allow-mismatch", NULL, O_ALLOW_MISMATCH, NULL, NULL, 0, 0, 0},
    {"model", "DIR", O_MODEL, NULL, MODEL_OF_DUMP, 1, QD_CLI_SYNOPSIS, 0},
    {"tolerances", "FILE", O_TOLERANCES, NULL, NULL, 2, QD_CLI_SYNOPSIS, 0},
    {"ratio-threshold", "X", O_RATIO_THRESHOLD, NULL, NULL, 0, 0, 0},
    {"threads", "N", O_THREADS, NULL, NULL, 0, 0, 0},
    {"json", "F", O_JSON, NULL, NULL, 3, QD_CLI_SYNOPSIS, 0},
    {"junit", "F", O_JUNIT, NULL, NULL, 4, QD_CLI_SYNOPSIS, 0},
    {"html", "F", O_HTML, NULL, NULL, 6, 0, 0},
    {"repro", "FILE", O_REPRO, NULL, NULL, 5, QD_CLI_SYNOPSIS, 0},
    {"strict", NULL, O_STRICT, NULL, NULL, 0, 0, 0},
    {"quiet", NULL, O_QUIET, NULL, NULL, 0, 0, 0},
    {"color", "WHEN", O_COLOR, NULL, NULL, 0, 0, 0},
    {"no-color", NULL, O_COLOR, NULL, NULL, 0, 0, 0},
    {"help", NULL, O_HELP, NULL, NULL, 0, 0, 'h'},
};

/* replay's options: the model the dump was made with, the threshold, the report, the output; a repro file's
 * rerun takes a fault (--inject) and needs no model */
static const qd_cli_opt replay_opts[] = {
    {"model", "DIR", O_MODEL, NULL, MODEL_OF_DUMP, 1, QD_CLI_SYNOPSIS, 0},
    {"inject", "NAME", O_INJECT, NULL,
     "a repro file's op rerun with this fault of the catalog in the contract\n(qwen3-diff --list-faults)", 4,
     QD_CLI_SYNOPSIS, 0},
    {"ratio-threshold", "X", O_RATIO_THRESHOLD, NULL, NULL, 2, 0, 0},
    {"threads", "N", O_THREADS, NULL, NULL, 0, 0, 0},
    {"json", "F", O_JSON, NULL, NULL, 3, QD_CLI_SYNOPSIS, 0},
    {"quiet", NULL, O_QUIET, NULL, NULL, 0, 0, 0},
    {"color", "WHEN", O_COLOR, NULL, NULL, 0, 0, 0},
    {"no-color", NULL, O_COLOR, NULL, NULL, 0, 0, 0},
    {"help", NULL, O_HELP, NULL, NULL, 0, 0, 'h'},
};

/* report's options: the page's path */
static const qd_cli_opt report_opts[] = {
    {"output", "FILE", O_HTML, NULL, NULL, 1, QD_CLI_SYNOPSIS, 'o'},
    {"quiet", NULL, O_QUIET, NULL, NULL, 0, 0, 0},
    {"help", NULL, O_HELP, NULL, NULL, 0, 0, 'h'},
};

static const qd_cli_cmd report_cmd = {
    .name = "report",
    .operands = "DUMP.h5[:A-vs-B]",
    .opts = report_opts,
    .nopts = (int)(sizeof report_opts / sizeof *report_opts),
};

static const qd_cli_cmd main_cmd = {
    .usage_tail = " [options]",
    .opts = main_opts,
    .nopts = (int)(sizeof main_opts / sizeof *main_opts),
};

static const qd_cli_cmd compare_cmd = {
    .name = "compare",
    .operands = "REF.h5[:GROUP] TEST.h5[:GROUP]",
    .opts = compare_opts,
    .nopts = (int)(sizeof compare_opts / sizeof *compare_opts),
};

/* --fp32-ops' names for --help, wrapped under the help column (cli_opts.c's HELP_COLUMN) */
static void fp32_ops_names(char *buf, size_t n) {
    enum { HELP_COLUMN = 25, WIDTH = 100 };
    size_t k = 0;
    int col = HELP_COLUMN + (int)strlen("(docs/PRECISION.md): ");
    buf[0] = '\0';
    for (int p = 0; p < QD_NUM_PRECISION_POINTS && k < n; p++) {
        const char *name = qd_precision_point_info_of(p)->name;
        int len = (int)strlen(name), wrap = p && col + 2 + len > WIDTH;
        int w = snprintf(buf + k, n - k, "%s%*s%s", !p ? "" : wrap ? ",\n" : ", ", wrap ? HELP_COLUMN : 0, "", name);
        if (w < 0) return;
        k += (size_t)w;
        col = (wrap ? HELP_COLUMN : col + (p ? 2 : 0)) + len;
    }
}

static const qd_cli_cmd replay_cmd = {
    .name = "replay",
    .operands = "DUMP.h5[:GROUP] | REPRO.h5",
    .opts = replay_opts,
    .nopts = (int)(sizeof replay_opts / sizeof *replay_opts),
};

static void usage(FILE *f) {
    char ops[512];
    fp32_ops_names(ops, sizeof ops);
    const char *const vars[] = {"backends", qd_backend_names(), "fp32_ops", ops, NULL};
    qd_cli_print_usage(f, "usage: qwen3-diff", &main_cmd, 0);
    qd_cli_print_usage(f, "       qwen3-diff", &compare_cmd, 1);
    qd_cli_print_usage(f, "       qwen3-diff", &replay_cmd, 1);
    qd_cli_print_usage(f, "       qwen3-diff", &report_cmd, 1);
    qd_cli_print_usage(f, "       qwen3-diff", &selftest_cli_cmd, 1);
    fputs("\n"
          "Finds where, how badly and why two Qwen3 implementations diverge. --layer-by-layer runs two\n"
          "backends one layer at a time, compares every intermediate tensor (\"tap\") they share and prints the\n"
          "first layer and op whose error exceeds its tolerance or blows up. With one backend it just runs it.\n"
          "By default each op of each side is replayed from that side's own inputs, and an op diverges when\n"
          "its local error exceeds 4x the noise floor of its precision (drift inherited from earlier ops is\n"
          "reported, never blamed). compare replays both dumps (the model: --model DIR or the dump's 'model'\n"
          "attribute); replay judges one dump on its own, or reruns the op of a --repro file from that file\n"
          "alone (--inject NAME: with a fault of the catalog in the contract). report draws a comparison's\n"
          "dump (--dump) as the HTML page --html writes.\n"
          "compare's first dump is the reference (the side trusted), the second the test (or name them:\n"
          "--reference F[:G] --test F[:G]). Dumps of different models or prompts are refused, naming the\n"
          "difference; --allow-mismatch compares the prompts' common first tokens, or configs that differ in\n"
          "values only. A report file (--json, --junit, --html, --write-tolerances) may be '-': stdout, where\n"
          "it is then alone (the text report goes to stderr). Limits (positions, memory) and whether each\n"
          "--inject fault can fire are checked before any weight is loaded.\n"
          "\n",
          f);
    qd_cli_print_options(f, &main_cmd, vars);
    fputs(
        "\n"
        "Exit status: 0 within tolerance, 1 diverged, 2 bad usage or input, 3 runtime failure.\n"
        "\n"
        "Example: locate a divergence, keep the evidence, read it back in h5py\n"
        "  qwen3-diff --layer-by-layer --model fixtures/knorm_extreme --tokens @fixtures/knorm_extreme/prompt.txt \\\n"
        "      --backends ref,emu --isolate --dump /tmp/knorm.h5 --json /tmp/knorm.json\n"
        "  /usr/bin/python3 -c \"import h5py; f = h5py.File('/tmp/knorm.h5'); "
        "print(f['diff/ref-vs-emu/metrics'][:5])\"\n",
        f);
}

/* compare --help, replay --help: the command's usage line, what it does, and its options, each with the main
 * --help's text for the same option (the tables share ids) unless the command's row has its own. */
static void sub_usage(FILE *f, const qd_cli_cmd *c, const char *what) {
    qd_cli_opt opts[32];
    int n = 0;
    for (int i = 0; i < c->nopts && n < 32; i++) {
        opts[n] = c->opts[i];
        opts[n].section = "options";
        for (int j = 0; j < main_cmd.nopts && !opts[n].help; j++)
            if (main_opts[j].id == opts[n].id) opts[n].help = main_opts[j].help;
        n++;
    }
    const qd_cli_cmd list = {.opts = opts, .nopts = n};
    qd_cli_print_usage(f, "usage: qwen3-diff", c, 0);
    fprintf(f, "\n%s\n\n", what);
    qd_cli_print_options(f, &list, NULL);
    fputs("\nExit status: 0 within tolerance, 1 diverged, 2 bad usage or input, 3 runtime failure.\n", f);
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

/* One option of the main command or compare (whose options are a subset, with the same ids). */
static int take_option(void *ctx, const qd_cli_opt *o, const char *flag, const char *val, qd_err *e) {
    cli_args *a = ctx;
    switch (o->id) {
    case O_HELP: a->help = 1; return QD_OK;
    case O_VERSION: a->version = 1; return QD_OK;
    case O_SUMMARY: a->summary = 1; return QD_OK;
    case O_QUIET: a->quiet = 1; return QD_OK;
    case O_COLOR: /* --no-color: its alias without a value */
        if (!val) a->color = 0;
        return val ? qd_cli_parse_color(val, &a->color, e) : QD_OK;
    case O_STRICT: a->strict = 1; return QD_OK;
    case O_LIST_TAPS: a->list_taps = 1; return QD_OK;
    case O_LIST_FAULTS: a->list_faults = 1; return QD_OK;
    case O_LAYER_BY_LAYER: a->layer_by_layer = 1; return QD_OK;
    case O_ISOLATE: a->isolate = 1; return QD_OK;
    case O_PRECISION_SWEEP: a->precision_sweep = 1; return QD_OK;
    case O_PRECISION_BISECT: a->precision_bisect = 1; return QD_OK;
    case O_FP32_OPS: return qd_precision_points_parse(val, &a->fp32_points, e);
    case O_MODEL: a->model = val; return QD_OK;
    case O_TOKENS: a->tokens = val; return QD_OK;
    case O_PROMPT: a->prompt = val; return QD_OK;
    case O_CHAT: a->chat = 1; return QD_OK;
    case O_DUMP: a->dump = val; return QD_OK;
    case O_REPRO: a->repro = val; return QD_OK;
    case O_TOLERANCES: a->tolerances = val; return QD_OK;
    case O_WRITE_TOL: a->write_tol = val; return QD_OK;
    case O_JSON: a->json = val; return QD_OK;
    case O_JUNIT: a->junit = val; return QD_OK;
    case O_HTML: a->html = val; return QD_OK;
    case O_DUMP_TAPS: a->dump_taps = val; return QD_OK;
    case O_BACKENDS: return parse_backends(val, a, e);
    case O_FUSED_TAPS:
        if (strcmp(val, "all") == 0) a->taps_all = 1;
        else if (strcmp(val, "fused") == 0) a->taps_all = 0;
        else return qd_errf(e, QD_EINPUT, "--fused-taps: '%s' is not all or fused", val);
        return QD_OK;
    case O_INJECT:
        if (strcmp(val, "help") == 0) {
            a->list_faults = 1;
            return QD_OK;
        }
        return qd_fault_parse(val, &a->fault, e);
    case O_INJECT_A: return qd_fault_parse(val, &a->fault_a, e);
    case O_ACT_A: {
        qd_act_dtype d;
        a->act_a = val;
        if (qd_act_dtype_parse(val, &d) != 0)
            return qd_errf(e, QD_EINPUT, "%s: '%s' is not bf16, fp16 or fp32", flag, val);
        return QD_OK;
    }
    case O_RATIO_THRESHOLD: {
        char *end;
        a->threshold = strtod(val, &end);
        if (*end || !(a->threshold > 0 && a->threshold <= 1e12))
            return qd_errf(e, QD_EINPUT, "--ratio-threshold: '%s' is not a positive number", val);
        return QD_OK;
    }
    case O_DUMP_COMPRESS: return parse_int(flag, val, 0, 9, &a->dump_compress, e);
    case O_THREADS: return parse_int(flag, val, 1, 4096, &a->threads, e); /* 0 was OpenMP's default: omit it */
    case O_DECODE: return parse_int(flag, val, 0, 1 << 20, &a->decode, e);
    case O_CALIBRATE: return parse_int(flag, val, 1, 100000, &a->calibrate, e);
    case O_DUMP_ON_DIVERGENCE: return parse_int(flag, val, 0, 1000, &a->dump_window, e);
    case O_ACT: {
        qd_act_dtype d;
        a->act = val;
        if (qd_act_dtype_parse(val, &d) != 0)
            return qd_errf(e, QD_EINPUT, "%s: '%s' is not bf16, fp16 or fp32", flag, val);
        return QD_OK;
    }
    case O_MARGIN: {
        char *end;
        a->margin = strtod(val, &end);
        if (*end || !(a->margin >= 1.0 && a->margin <= 1e6))
            return qd_errf(e, QD_EINPUT, "--margin: '%s' is not a number >= 1", val);
        return QD_OK;
    }
    case O_ALLOW_MISMATCH: a->allow_mismatch = 1; return QD_OK;
    case O_MAX_MEMORY: {
        char *end;
        double gib = strtod(val, &end);
        if (*end || !(gib >= 0 && gib <= 1e6))
            return qd_errf(e, QD_EINPUT, "--max-memory: '%s' is not a number of GiB (0: no check)", val);
        a->max_memory = gib * 1024.0 * 1024.0 * 1024.0;
        return QD_OK;
    }
    case O_REFERENCE:
    case O_TEST: {
        const char **slot = o->id == O_REFERENCE ? &a->compare_a : &a->compare_b;
        if (*slot)
            return qd_errf(e, QD_EINPUT, "%s: the %s dump is given twice ('%s', '%s')", flag, flag + 2, *slot, val);
        *slot = val;
        a->noperands++; /* counted with the positional ones */
        return QD_OK;
    }
    case O_LOCATE:
        if (strcmp(val, "free") == 0) a->locate = QD_MODE_FREE;
        else if (strcmp(val, "isolated") == 0) a->locate = QD_MODE_ISOLATED;
        else return qd_errf(e, QD_EINPUT, "--locate: '%s' is not free or isolated", val);
        return QD_OK;
    case O_REF_ACCUM:
        if (strcmp(val, "f32") == 0) a->accum = QD_ACCUM_F32;
        else if (strcmp(val, "f64") == 0) a->accum = QD_ACCUM_F64;
        else return qd_errf(e, QD_EINPUT, "--ref-accum: '%s' is not f32 or f64", val);
        return QD_OK;
    }
    return qd_errf(e, QD_ERUNTIME, "option %s has no handler", flag);
}

/* compare's operands: the two dumps, counted so that a wrong number is reported as such */
static int take_operand(void *ctx, const char *word, qd_err *e) {
    cli_args *a = ctx;
    (void)e;
    if (a->replay_dump || a->noperands < 0) { /* replay: one operand */
        a->replay_dump = word;
        a->noperands = a->noperands < 0 ? 1 : a->noperands + 1;
        return QD_OK;
    }
    /* the first operand is the reference, unless --reference named it; then the test */
    const char **slot = !a->compare_a ? &a->compare_a : !a->compare_b ? &a->compare_b : NULL;
    if (slot) *slot = word;
    a->noperands++;
    return QD_OK;
}

/* report's operand: the dump */
static int take_report_operand(void *ctx, const char *word, qd_err *e) {
    cli_args *a = ctx;
    (void)e;
    a->report_dump = word;
    a->noperands++;
    return QD_OK;
}

static int misuse(qd_cli_misuse k, const char *word, const char *flag, qd_err *e) {
    switch (k) {
    case QD_CLI_UNKNOWN: return qd_errf(e, QD_EINPUT, "unknown option '%s' (see --help)", word);
    case QD_CLI_STRAY: return qd_errf(e, QD_EINPUT, "unexpected argument '%s' (see --help)", word);
    case QD_CLI_MISSING: return qd_errf(e, QD_EINPUT, "%s: missing value", flag);
    case QD_CLI_EMPTY: return qd_errf(e, QD_EINPUT, "%s: empty value", flag);
    case QD_CLI_REPEATED:
        return qd_errf(e, QD_EINPUT,
                       "%s: already given, under this name or another (each option once: the last would win silently)",
                       word);
    }
    return qd_errf(e, QD_EINPUT, "'%s' (see --help)", word);
}

/* Options that shape a dump do nothing without one, --margin nothing without a bless step, and a --dump-taps
 * glob that matches no tap dumps none of what was meant: each is a mistake, said before any work. */
static int check_dump_options(cli_args *a, qd_err *e) {
    const char *orphan = a->dump_compress >= 0 ? "--dump-compress"
                         : a->dump_window >= 0 ? "--dump-on-divergence"
                         : a->dump_taps        ? "--dump-taps"
                                               : NULL;
    if (orphan && !a->dump) return qd_errf(e, QD_EINPUT, "%s shapes the dump: add --dump OUT.h5", orphan);
    if (a->dump_compress < 0) a->dump_compress = 0;
    if (a->margin > 0 && !a->calibrate && !a->precision_sweep)
        return qd_errf(e, QD_EINPUT, "--margin is the margin of --calibrate and --precision-sweep: add one of them");
    if (a->margin <= 0) a->margin = 2.0;
    char globs[1024];
    snprintf(globs, sizeof globs, "%s", a->dump_taps ? a->dump_taps : "");
    for (char *save = NULL, *g = strtok_r(globs, ",", &save); g; g = strtok_r(NULL, ",", &save)) {
        int hit = 0;
        for (int t = 0; t < QD_NUM_LAYER_TAPS && !hit; t++) hit = fnmatch(g, qd_layer_tap_name(t), 0) == 0;
        for (int t = 0; t < QD_NUM_MODEL_TAPS && !hit; t++) hit = fnmatch(g, qd_model_tap_name(t), 0) == 0;
        if (!hit) return qd_errf(e, QD_EINPUT, "--dump-taps: '%s' matches no tap (qwen3-diff --list-taps)", g);
    }
    return QD_OK;
}

static int parse_args(int argc, char **argv, cli_args *a, qd_err *e) {
    memset(a, 0, sizeof *a);
    a->accum = QD_ACCUM_F32;
    a->dump_window = -1;
    a->dump_compress = -1;
    a->color = -1;
    a->margin = 0; /* not given: 2, once check_dump_options has seen whether it was */
    a->locate = QD_MODE_FREE;
    a->max_memory = -1;
    qd_cli_handlers h = {.option = take_option, .misuse = misuse};
    if (argc > 1 && strcmp(argv[1], "compare") == 0) {
        h.operand = take_operand;
        int rc = qd_cli_parse(&compare_cmd, &h, a, argc - 1, argv + 1, e);
        a->help *= 2; /* compare's own --help */
        if (rc || a->help) return rc;
        if (a->noperands != 2)
            return qd_errf(e, QD_EINPUT,
                           "compare: expected two dumps, REF.h5[:GROUP] TEST.h5[:GROUP] (or --reference F[:G] "
                           "--test F[:G]) (got %d)",
                           a->noperands);
        if (a->repro && a->tolerances)
            return qd_errf(e, QD_EINPUT, "--repro writes the op the replay verdict blames: drop --tolerances");
        return QD_OK;
    }
    if (argc > 1 && strcmp(argv[1], "report") == 0) {
        h.operand = take_report_operand;
        int rc = qd_cli_parse(&report_cmd, &h, a, argc - 1, argv + 1, e);
        if (rc || a->help) return rc;
        if (a->noperands != 1)
            return qd_errf(e, QD_EINPUT, "report: expected one dump, DUMP.h5[:A-vs-B] (got %d)", a->noperands);
        if (!a->html) return qd_errf(e, QD_EINPUT, "report: missing -o FILE (where the HTML page goes)");
        return QD_OK;
    }
    if (argc > 1 && strcmp(argv[1], "replay") == 0) {
        h.operand = take_operand;
        a->noperands = -1; /* take_operand: the replay's operand */
        int rc = qd_cli_parse(&replay_cmd, &h, a, argc - 1, argv + 1, e);
        a->help *= 3; /* replay's own --help */
        if (rc || a->help) return rc;
        if (a->noperands != 1)
            return qd_errf(e, QD_EINPUT, "replay: expected one dump, DUMP.h5[:GROUP] (got %d)",
                           a->noperands < 0 ? 0 : a->noperands);
        return QD_OK;
    }
    int rc = qd_cli_parse(&main_cmd, &h, a, argc, argv, e);
    if (rc) return rc;
    if (a->help || a->version || a->list_faults || a->list_taps) return QD_OK;
    if ((rc = check_dump_options(a, e))) return rc;
    if (a->nbackends == 2) a->layer_by_layer = 1;
    if (a->calibrate) a->layer_by_layer = 1;
    /* a fault goes to the side under test: without --backends, B of the default pair */
    if (a->nbackends == 0 && a->fault.kind != QD_FAULT_NONE) a->layer_by_layer = 1;
    if (a->calibrate && !a->write_tol) return qd_errf(e, QD_EINPUT, "--calibrate needs --write-tolerances FILE");
    if (a->write_tol && !a->calibrate) return qd_errf(e, QD_EINPUT, "--write-tolerances needs --calibrate N");
    if (a->calibrate && (a->dump || a->json || a->junit || a->html || a->tolerances || a->fault.kind != QD_FAULT_NONE ||
                         a->fault_a.kind != QD_FAULT_NONE || a->repro))
        return qd_errf(e, QD_EINPUT,
                       "--calibrate blesses a clean pair and writes only --write-tolerances "
                       "(drop --dump, --json, --junit, --html, --tolerances, --repro and --inject)");
    if (a->repro && a->tolerances)
        return qd_errf(e, QD_EINPUT, "--repro writes the op the replay verdict blames: drop --tolerances");
    if (a->layer_by_layer && a->nbackends == 1)
        return qd_errf(e, QD_EINPUT, "--layer-by-layer compares two backends: --backends A,B");
    if (!a->layer_by_layer) {
        const char *only_lockstep = a->isolate                         ? "--isolate"
                                    : a->tolerances                    ? "--tolerances"
                                    : a->json                          ? "--json"
                                    : a->junit                         ? "--junit"
                                    : a->html                          ? "--html"
                                    : a->decode                        ? "--decode"
                                    : a->dump_taps                     ? "--dump-taps"
                                    : a->dump_window >= 0              ? "--dump-on-divergence"
                                    : a->precision_sweep               ? "--precision-sweep"
                                    : a->precision_bisect              ? "--precision-bisect"
                                    : a->fault_a.kind != QD_FAULT_NONE ? "--inject-a"
                                    : a->act_a                         ? "--act-a"
                                    : a->threshold > 0                 ? "--ratio-threshold"
                                    : a->repro                         ? "--repro"
                                                                       : NULL;
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
    if (a->precision_bisect && a->fp32_points)
        return qd_errf(e, QD_EINPUT, "--precision-bisect chooses the fp32 ops itself: drop --fp32-ops");
    if (a->locate == QD_MODE_ISOLATED && !a->isolate) return qd_errf(e, QD_EINPUT, "--locate isolated needs --isolate");
    /* no --model: the bundled extreme-k_norm fixture, with its own prompt unless --tokens is given */
    if (a->prompt && a->tokens) return qd_errf(e, QD_EINPUT, "--prompt and --tokens both give the input: use one");
    if (a->chat && !a->prompt)
        return qd_errf(e, QD_EINPUT, "--chat wraps the text of --prompt: give --prompt TEXT|@FILE");
    if (a->model && !a->tokens && !a->prompt)
        return qd_errf(e, QD_EINPUT, "missing --tokens LIST|@FILE or --prompt TEXT|@FILE (see --help)");
    return QD_OK;
}

// ----------------------------------------------------------------------------
// the run's tap sink: forwards to the dump and keeps per-layer statistics for the summary

typedef struct {
    double out_rms;   /* rms of the layer output */
    float out_max;    /* max|out| */
    float k_norm_max; /* max|k_norm|: the amplified K (docs/QWEN3.md, "the seed") */
    float attn_max;   /* max|attn| */
    float act_max;    /* max|silu(gate)*up| */
    long nonfinite;   /* NaN/Inf values over every tap of the layer */
} layer_stats;

typedef struct {
    qd_tap_sink sink;  /* sink.ctx points back here */
    qd_tap_sink *dump; /* NULL without --dump */
    int L;
    layer_stats *layers; /* (L) */
    long nonfinite;      /* over every tap, model-level ones included */
    qd_tap_id first_bad; /* where the first non-finite value appeared (when nonfinite > 0) */
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

static int run_emit(qd_tap_sink *self, qd_tap_id id, const float *data, int ndim, const int64_t *shape, qd_err *e) {
    run_sink *s = self->ctx;
    if (s->dump) {
        int rc = s->dump->emit(s->dump, id, data, ndim, shape, e);
        if (rc) return rc;
    }
    long n = 1;
    for (int i = 0; i < ndim; i++) n *= (long)shape[i];
    long bad = 0;
    float m = max_abs(data, n, &bad);
    if (bad && !s->nonfinite) s->first_bad = id;
    s->nonfinite += bad;
    if (id.pos != QD_POS_LAYER || id.layer >= s->L) return QD_OK;
    layer_stats *ls = &s->layers[id.layer];
    ls->nonfinite += bad;
    if (id.tap == QD_TAP_K_NORM) ls->k_norm_max = m;
    else if (id.tap == QD_TAP_ATTN) ls->attn_max = m;
    else if (id.tap == QD_TAP_ACT) ls->act_max = m;
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

static void print_summary(const qd_tokenizer *tok, const char *model, const qd_backend *be, const qd_weights *w,
                          const run_sink *s, const float *logits, int T, double seconds) {
    const qd_config *c = &w->cfg;
    const float *last = logits + (size_t)(T - 1) * c->vocab_size; /* (V) */
    long bad = 0;
    float lmax = max_abs(logits, (long)T * c->vocab_size, &bad);
    top_entry top[5];
    top_k(last, c->vocab_size, top, 5);

    printf("model   %s\n", model);
    printf("config  L=%d C=%d I=%d NH=%d NKV=%d HD=%d V=%d theta=%g eps=%g %s, weights %s\n", c->num_hidden_layers,
           c->hidden_size, c->intermediate_size, c->num_attention_heads, c->num_key_value_heads, c->head_dim,
           c->vocab_size, c->rope_theta, c->rms_norm_eps, c->tie_word_embeddings ? "tied" : "untied",
           qd_dtype_name(w->src_dtype));
    printf("run     %s, %s activations, %s accumulation, T=%d tokens, %.2f s\n", be->name, be->precision, be->accum, T,
           seconds);
    printf("\n%5s %11s %11s %11s %11s %11s\n", "layer", "rms(out)", "max|out|", "max|k_norm|", "max|attn|", "max|act|");
    for (int l = 0; l < s->L; l++) {
        const layer_stats *ls = &s->layers[l];
        printf("%5d %11.4g %11.4g %11.4g %11.4g %11.4g", l, ls->out_rms, ls->out_max, ls->k_norm_max, ls->attn_max,
               ls->act_max);
        if (ls->nonfinite) printf("  %ld non-finite", ls->nonfinite);
        printf("\n");
    }
    printf("\nlogits  max|.| %.4g over all %d positions\n", lmax, T);
    printf("next    top-5 after position %d, id (logit):", T - 1);
    for (int j = 0; j < 5 && top[j].id >= 0; j++) printf("  %d (%.4g)", top[j].id, top[j].logit);
    printf("\n");
    if (tok) { /* a line of its own: the line above keeps its form for whoever parses it */
        printf("        their text:");
        for (int j = 0; j < 5 && top[j].id >= 0; j++) {
            char text[64];
            qd_tok_token_text(tok, top[j].id, text, sizeof text);
            printf("  '%s'", text);
        }
        printf("\n");
    }
    if (s->nonfinite) {
        printf("warning %ld non-finite values, the first in ", s->nonfinite);
        if (s->first_bad.pos != QD_POS_LAYER) printf("model-level tap '%s'\n", qd_tap_id_name(s->first_bad));
        else printf("layer %d tap '%s'\n", s->first_bad.layer, qd_tap_id_name(s->first_bad));
    }
}

// ----------------------------------------------------------------------------
// the run

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The model's tokenizer.json (ids checked against the model's vocab_size): --prompt needs it and fails with it;
 * otherwise it only gives the reports token text, so without one there is none, and one that cannot be read
 * is named in a warning and the run goes on. */
static int open_tokenizer(const cli_args *a, const char *model, const qd_config *cfg, qd_tokenizer **tok, qd_err *e) {
    *tok = NULL;
    char *path = qd_path_join(model, "tokenizer.json", e);
    if (!path) return QD_ERUNTIME;
    struct stat st;
    int rc = QD_OK;
    if (a->prompt || (!a->quiet && stat(path, &st) == 0)) {
        qd_err te;
        qd_err_clear(&te);
        *tok = qd_tok_load(path, cfg->vocab_size, &te);
        if (!*tok && a->prompt) rc = qd_errf(e, te.code, "--prompt: %s", te.msg);
        else if (!*tok) fprintf(stderr, "qwen3-diff: warning: no token text in the report: %s\n", te.msg);
    }
    free(path);
    return rc;
}

/* The HTML report's token-text hook: one token's text as the text report shows it (one buffer: the report is
 * written by one thread, and each text is copied into the page before the next is asked for). */
static const char *html_token_text(void *ctx, int32_t id) {
    static char text[128];
    if (!ctx) return NULL;
    qd_tok_token_text((const qd_tokenizer *)ctx, id, text, sizeof text);
    return text;
}

/* An offline run's tokenizer for token text in the HTML report (compare, report): the tokenizer.json of the
 * checkpoint (--model, else the dump's 'model' attribute) when it has one; none otherwise, or when it cannot be
 * read (a warning: only text is lost). */
static qd_tokenizer *html_tokenizer(const cli_args *a, const char *dump) {
    if (!a->html) return NULL;
    qd_err te;
    qd_err_clear(&te);
    qd_html_context hc;
    const char *model = a->model;
    int have_hc = !model && dump && qd_html_context_from_dump(dump, &hc, &te) == QD_OK;
    if (have_hc) model = hc.model;
    char *path = model ? qd_path_join(model, "tokenizer.json", &te) : NULL;
    struct stat st;
    qd_tokenizer *tok = NULL;
    if (path && stat(path, &st) == 0) {
        tok = qd_tok_load(path, 0, &te);
        if (!tok) fprintf(stderr, "qwen3-diff: warning: no token text in the report: %s\n", te.msg);
    }
    free(path);
    if (have_hc) qd_html_context_free(&hc);
    return tok;
}

/* --prompt's ids: the text (or the file's, as it is), wrapped by --chat, through the tokenizer. */
static int prompt_ids(const cli_args *a, const char *model, const qd_config *cfg, const qd_tokenizer *tok,
                      int32_t **tokens, int *T, qd_err *e) {
    int max_ids = cfg->max_position_embeddings > 0 && cfg->max_position_embeddings <= QD_TOKENS_MAX_DEFAULT
                      ? cfg->max_position_embeddings
                      : QD_TOKENS_MAX_DEFAULT;
    const char *text = a->prompt;
    char *file = NULL, *wrapped = NULL;
    size_t len = strlen(text);
    int rc = QD_OK;
    if (text[0] == '@') {
        char why[96];
        snprintf(why, sizeof why, "%d tokens (max_position_embeddings) of at most 64 bytes each", max_ids);
        qd_err re;
        if (qd_read_text(text + 1, (size_t)max_ids * 64 + 4096, why, &file, &len, &re))
            return qd_errf(e, QD_EINPUT, "--prompt %s", re.msg);
        text = file;
    }
    if (a->chat && !(rc = qd_chat_wrap(model, text, len, &wrapped, &len, e))) text = wrapped;
    qd_err te;
    if (!rc && (rc = qd_tok_encode(tok, text, len, tokens, T, &te))) qd_errf(e, te.code, "--prompt: %s", te.msg);
    if (!rc && *T == 0) rc = qd_errf(e, QD_EINPUT, "--prompt: the text gives no tokens");
    if (!rc && *T > max_ids)
        rc = qd_errf(e, QD_EINPUT, "--prompt: %d tokens, more than the model's %d positions (max_position_embeddings)",
                     *T, max_ids);
    if (rc) {
        free(*tokens);
        *tokens = NULL;
    }
    free(file);
    free(wrapped);
    return rc;
}

/* The run's input, in the order that makes bad input fail before anything expensive happens: the model
 * directory, config.json (its vocab checks the tokens), the tokenizer, the token ids, then the dump file when
 * asked (dump_path NULL: none). On failure everything opened here is released. */
static int open_input(const cli_args *a, const char *model, const char *token_arg, const char *dump_path,
                      qd_config *cfg, char **config_text, qd_tokenizer **tok, int32_t **tokens, int *T, qd_dump **dump,
                      qd_err *e) {
    struct stat st;
    *config_text = NULL;
    *tokens = NULL;
    *dump = NULL;
    *tok = NULL;
    if (stat(model, &st) != 0 || !S_ISDIR(st.st_mode))
        return qd_errf(e, QD_EINPUT, "--model %s: no such directory", model);
    int rc = qd_config_load(model, cfg, config_text, e);
    if (!rc) rc = open_tokenizer(a, model, cfg, tok, e);
    if (!rc && a->prompt) rc = prompt_ids(a, model, cfg, *tok, tokens, T, e);
    else if (!rc) rc = qd_tokens_parse_max(token_arg, cfg->vocab_size, cfg->max_position_embeddings, tokens, T, e);
    if (!rc && dump_path) {
        char *abs_model = realpath(model, NULL);
        *dump =
            qd_dump_create(dump_path, abs_model ? abs_model : model, *config_text, *tokens, *T, a->dump_compress, e);
        free(abs_model);
        if (!*dump) rc = e->code ? e->code : QD_ERUNTIME;
    }
    if (rc) {
        free(*config_text);
        free(*tokens);
        qd_tok_free(*tok);
        *config_text = NULL;
        *tokens = NULL;
        *tok = NULL;
    }
    return rc;
}

/* The checkpoint for backends a and b (b may be NULL), as qd_run_weights_mapped says (the memory check
 * estimates the same way): the CPU backends read the matrices in place from the mapping, so an 8B or 32B
 * model runs in the memory of its activations and KV cache; the fused path uploads from fp32 copies. */
static int load_weights_for(const char *model, const char *a, const char *b, qd_weights *w, qd_err *e) {
    return qd_run_weights_mapped(a, b) ? qd_weights_map(model, w, e) : qd_weights_load(model, w, e);
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
    qd_tokenizer *tok = NULL;

    if ((rc = open_input(a, model, token_arg, a->dump, &cfg, &config_text, &tok, &tokens, &T, &dump, e))) return rc;
    qd_run_plan plan = {
        .T = T, .backends = 1, .name_b = a->backends[0], .fault = a->fault, .max_memory = a->max_memory};
    if ((rc = qd_run_check(&cfg, &plan, a->quiet ? NULL : stderr, e))) goto out; /* before any weight is loaded */

    if ((rc = load_weights_for(model, a->backends[0], NULL, &w, e))) goto out;
    have_weights = 1;
    const qd_config *c = &w.cfg;
    qd_backend_opts bo = {.threads = a->threads,
                          .accum_f64 = a->accum == QD_ACCUM_F64,
                          .max_seq = T,
                          .act = a->act,
                          .fault = a->fault,
                          .taps_all = a->taps_all,
                          .fp32_points = a->fp32_points};
    if (!(be = qd_backend_create(a->backends[0], &w, &bo, e))) {
        rc = e->code ? e->code : QD_ERUNTIME;
        goto out;
    }
    if (dump) {
        if ((rc = qd_dump_add_backend(dump, be->name, be->precision, e)) ||
            (rc = qd_dump_backend_attr(dump, be->name, "accum", be->accum, e)))
            goto out;
        if (!(s.dump = qd_dump_backend_sink(dump, be->name, e))) {
            rc = e->code;
            goto out;
        }
    }

    size_t TC;
    size_t TV;
    if (qd_mul_size((size_t)T, (size_t)c->hidden_size, &TC) || qd_mul_size((size_t)T, (size_t)c->vocab_size, &TV)) {
        rc = qd_errf(e, QD_EINPUT, "T=%d tokens: activation size overflows", T);
        goto out;
    }
    s.sink.emit = run_emit;
    s.sink.ctx = &s;
    s.L = c->num_hidden_layers;
    if (!(h = qd_alloc(TC * sizeof(float), e)) ||      /* (T, C) layer input */
        !(h2 = qd_alloc(TC * sizeof(float), e)) ||     /* (T, C) layer output */
        !(logits = qd_alloc(TV * sizeof(float), e)) || /* (T, V) */
        !(s.layers = qd_zalloc((size_t)s.L, sizeof *s.layers, e))) {
        rc = QD_ERUNTIME;
        goto out;
    }

    double t0 = now_seconds();
    qd_progress pg;
    qd_progress_start(&pg, stderr, qd_progress_mode_for(stderr, a->quiet), "qwen3-diff", s.L, NULL, NULL);
    rc = be->embed(be, tokens, T, h, &s.sink, e);
    for (int layer = 0; rc == QD_OK && layer < s.L; layer++) {
        qd_progress_update(&pg, layer, "%s, layer %d/%d", be->name, layer + 1, s.L);
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
    qd_progress_end(&pg);
    double seconds = now_seconds() - t0;
    if (rc) goto out; /* e holds the step's message, or the dump's when a write failed */

    if (dump) {
        rc = qd_dump_close(dump, 1, e);
        dump = NULL;
        if (rc) goto out;
    }
    if (a->summary && !a->quiet) {
        print_summary(tok, model, be, &w, &s, logits, T, seconds);
    } else if (!a->quiet) {
        top_entry top[1];
        char text[64];
        top_k(logits + (size_t)(T - 1) * c->vocab_size, c->vocab_size, top, 1);
        printf("%s: %d layers, T=%d tokens, %.2f s; next token %d", be->name, s.L, T, seconds, top[0].id);
        if (tok && top[0].id >= 0 && qd_tok_token_text(tok, top[0].id, text, sizeof text) < sizeof text)
            printf(" '%s'", text);
        printf(" (logit %.4g)", top[0].logit);
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
    qd_tok_free(tok);
    return rc;
}

// ----------------------------------------------------------------------------
// comparisons

/* A tolerance file calibrated on another model: a one-line warning (an error with --strict); one without
 * the model's identity: a one-line note. Printed under --quiet too (they are not progress), but only once
 * the file is known to fit the comparison otherwise: a refused file gets its one error line alone. */
static int check_tolerances_model(const cli_args *a, const qd_tolerances *t, const qd_config *cfg, char *note, size_t n,
                                  qd_err *e) {
    return qd_tolerances_check_model(t, cfg, a->strict, note, n, e);
}

static void print_note(const char *note) {
    if (note[0]) fprintf(stderr, "qwen3-diff: %s\n", note);
}

/* Loads the tolerances for the pair (test = B, reference = A): the file's, or the pair's defaults. A file
 * written for another precision pair, or with layer entries beyond the model, is refused. */
static int load_tolerances(const cli_args *a, const qd_backend *ra, const qd_backend *tb, const qd_config *cfg,
                           qd_tolerances *t, qd_err *e) {
    const int L = cfg->num_hidden_layers;
    if (!a->tolerances) return qd_tolerances_default(t, tb->precision, ra->precision, e);
    int rc = qd_tolerances_load(a->tolerances, t, e);
    if (rc) return rc;
    /* a pair is judged by its less precise side (fp64 ~ fp32), so compare the pairs' classes: their floors */
    qd_tol want, have;
    int same = !qd_tolerances_floor(tb->precision, ra->precision, &want, e) &&
               !qd_tolerances_floor(t->prec_test, t->prec_ref, &have, e) && want.rel_l2 == have.rel_l2;
    if (!same) {
        rc = qd_errf(e, QD_EINPUT,
                     "%s: field 'precision_pair': written for reference %s, test %s; this comparison is reference %s "
                     "(%s), test %s (%s)",
                     a->tolerances, t->prec_ref, t->prec_test, ra->name, ra->precision, tb->name, tb->precision);
    } else {
        const qd_tolerances *sec[2] = {t, t->isolated}; /* the top level, the isolated section */
        for (int k = 0; k < 2 && !rc; k++)
            if (sec[k] && sec[k]->n_layers > L)
                rc = qd_errf(e, QD_EINPUT, "%s: field '%slayers': an entry for layer %d, but the model has %d layers",
                             a->tolerances, k ? "isolated." : "", sec[k]->n_layers - 1, L);
    }
    char note[1024];
    if (!rc && !(rc = check_tolerances_model(a, t, cfg, note, sizeof note, e))) print_note(note);
    if (rc) qd_tolerances_free(t);
    return rc;
}

/* The bless step: N prompts (the given one, then deterministic random ones of the same length) through
 * a known-good pair; every tap's worst error times the margin becomes its tolerance. */
static int calibrate(const cli_args *a, const char *model, const qd_config *cfg, qd_backend *ra, qd_backend *tb,
                     qd_backend *ti, const int32_t *tokens, int T, qd_err *e) {
    qd_tolerances t;
    qd_bless_stats st;
    qd_progress pg;
    qd_progress_start(&pg, stderr, qd_progress_mode_for(stderr, a->quiet), "qwen3-diff", 0, NULL, NULL);
    int rc = qd_bless(ra, tb, ti, tokens, T, a->calibrate, a->decode, a->margin, &t, &st, &pg, e);
    if (rc) return rc;
    qd_tolerances_set_model(&t, cfg);
    char pair[160];
    snprintf(pair, sizeof pair, "%s,%s", ra->name, tb->name);
    t.measured =
        json_pack("{s:s, s:s, s:i, s:i, s:i, s:f, s:s, s:f, s:s}", "model", model, "backends", pair, "prompts",
                  a->calibrate, "tokens_per_prompt", T, "decode_steps", a->decode, "worst_rel_l2", st.worst_rel_l2,
                  "worst_at", st.worst_at, "worst_growth", st.worst_growth, "worst_growth_at", st.worst_growth_at);
    rc = qd_tolerances_write(a->write_tol, &t, e);
    if (!rc && !a->quiet)
        printf("calibrated %s (%s) vs %s (%s) over %d prompts of %d tokens%s: worst rel_l2 %.3g (%s), worst "
               "layer-to-layer growth %.3gx; wrote %s (margin %g)\n",
               ra->name, ra->precision, tb->name, tb->precision, a->calibrate, T,
               a->decode ? " and their decode steps" : "", st.worst_rel_l2, st.worst_at, st.worst_growth, a->write_tol,
               a->margin);
    qd_tolerances_free(&t);
    return rc;
}

/* "rerun k" while the bisection runs (ctx: its qd_progress; the number of reruns is not known ahead). */
static void bisect_progress(void *ctx, int rerun, unsigned fp32) {
    char set[256];
    qd_precision_points_format(fp32, set, sizeof set);
    qd_progress_update(ctx, rerun, "precision bisect, rerun %d: %.60s", rerun, set);
}

/* --repro's outcome: the file and its op on stdout, or on stderr that there was nothing to write. */
static void report_repro(const cli_args *a, const qd_repro_req *rq) {
    if (!a->repro) return;
    if (!rq->written) fprintf(stderr, "qwen3-diff: --repro: no divergence, so no repro file was written\n");
    else if (!a->quiet) printf("repro: %s (%s; rerun it: qwen3-diff replay %s)\n", a->repro, rq->what, a->repro);
}

/* The precision sweep blesses each dtype's pair over as many prompts as the selftest's bless step
 * (the brief of --calibrate: >= 5 known-good runs), with --margin. */
#define SWEEP_CALIB_PROMPTS 5

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
    qd_bisect_result *bisect = NULL; /* --precision-bisect's result, after a divergence */
    qd_tokenizer *tok = NULL;
    qd_sweep_result sweep; /* --precision-sweep's, after a divergence */
    int have_sweep = 0;
    qd_progress pg; /* the lockstep's, then the bisection's */
    qd_progress_start(&pg, stderr, qd_progress_mode_for(stderr, a->quiet), "qwen3-diff", 0, NULL, NULL);

    if ((rc = open_input(a, model, token_arg, a->calibrate ? NULL : a->dump, &cfg, &config_text, &tok, &tokens, &T,
                         &dump, e)))
        return rc;
    const char *name_a = a->nbackends ? a->backends[0] : "ref";
    const char *name_b = a->nbackends ? a->backends[1] : qd_backend_default_test();
    qd_run_plan plan = {.T = T,
                        .decode = a->decode,
                        .backends = a->isolate ? 3 : 2,
                        .lockstep = 1,
                        .name_b = name_b,
                        .name_a = name_a,
                        .fault = a->fault,
                        .fault_a = a->fault_a,
                        .max_memory = a->max_memory};
    if ((rc = qd_run_check(&cfg, &plan, a->quiet ? NULL : stderr, e))) goto out; /* before any weight is loaded */
    if (a->precision_bisect && strcmp(name_b, "emu") != 0 && strcmp(name_b, "fused") != 0) {
        rc = qd_errf(e, QD_EINPUT,
                     "--precision-bisect: B is %s; it reruns emu's precision points, so B must be emu "
                     "or fused (emu standing in for it)",
                     name_b);
        goto out;
    }
    if ((rc = load_weights_for(model, name_a, name_b, &w, e))) goto out;
    have_weights = 1;
    const int L = w.cfg.num_hidden_layers;
    qd_backend_opts bo = {.threads = a->threads,
                          .accum_f64 = a->accum == QD_ACCUM_F64,
                          .max_seq = T + a->decode,
                          .act = a->act,
                          .taps_all = a->taps_all};
    qd_backend_opts bo_test = bo, bo_ref = bo;
    bo_test.fault = a->fault;
    bo_test.fp32_points = a->fp32_points;
    bo_ref.fault = a->fault_a; /* --inject-a: a faulty reference side, which the replay verdict names */
    if (a->act_a) bo_ref.act = a->act_a;
    if (!(ba = qd_backend_create(name_a, &w, &bo_ref, e)) || !(bb = qd_backend_create(name_b, &w, &bo_test, e)) ||
        (a->isolate && !(bi = qd_backend_create(name_b, &w, &bo_test, e)))) {
        rc = e->code ? e->code : QD_ERUNTIME;
        goto out;
    }
    if (a->calibrate) {
        rc = calibrate(a, model, &w.cfg, ba, bb, bi, tokens, T, e);
        goto out;
    }
    if ((rc = load_tolerances(a, ba, bb, &w.cfg, &tol, e))) goto out;
    have_tol = 1;
    if (strcmp(ba->name, bb->name) == 0) { /* ref,ref: a determinism check; the dump needs two groups */
        size_t k = strlen(bb->name);
        if (k + 2 <= sizeof bb->name) memcpy(bb->name + k, "2", 2);
    }
    qd_report_init(&r, ba->name, ba->precision, bb->name, bb->precision, L, a->locate, &tol.blowup);
    r.tok = tok;
    have_report = 1;
    qd_repro_req repro = {.path = a->repro, .model = model};
    qd_lockstep_opts o = {.tokens = tokens,
                          .T = T,
                          .decode = a->decode,
                          .tol = &tol,
                          .locate = a->locate,
                          .dump = dump,
                          .dump_taps = a->dump_taps,
                          .dump_window = a->dump_window,
                          .progress = &pg,
                          /* the replay verdict unless tolerances were asked for: the stricter gate */
                          .judge = {.w = a->tolerances ? NULL : &w,
                                    .threshold = a->threshold,
                                    .threads = a->threads,
                                    .repro = a->repro ? &repro : NULL}};
    if ((rc = qd_lockstep(ba, bb, bi, &o, &r, e))) goto out;
    if (dump) {
        if ((rc = qd_report_write_h5(&r, dump, e))) goto out;
        rc = qd_dump_close(dump, 1, e);
        dump = NULL;
        if (rc) goto out;
    }
    if (a->precision_bisect && qd_report_diverged(&r)) {
        qd_bisect_opts bso = {.name_a = name_a,
                              .name_b = name_b,
                              .tokens = tokens,
                              .T = T,
                              .decode = a->decode,
                              .tol = &tol,
                              .locate = a->locate,
                              .flagged = &r.rows[r.first_div],
                              .progress = bisect_progress,
                              .progress_ctx = &pg,
                              .opts = {.threads = a->threads,
                                       .accum_f64 = a->accum == QD_ACCUM_F64,
                                       .act = a->act,
                                       .fault = a->fault,
                                       .taps_all = a->taps_all}};
        if (!(bisect = qd_alloc(sizeof *bisect, e))) {
            rc = QD_ERUNTIME;
            goto out;
        }
        qd_progress_start(&pg, stderr, pg.mode, "qwen3-diff", 0, NULL, NULL);
        rc = qd_precision_bisect(&w, &bso, bisect, e);
        qd_progress_end(&pg);
        if (rc) goto out;
    }
    if (a->junit && (rc = qd_report_write_junit(&r, a->junit, e))) goto out;
    if (a->html) {
        char *abs_model = realpath(model, NULL); /* the dump's 'model' names it the same way */
        qd_html_context hc = {.model = abs_model ? abs_model : model,
                              .config_json = config_text,
                              .tool_version = QD_VERSION,
                              .tokens = tokens,
                              .T = T,
                              .accum_a = ba->accum,
                              .accum_b = bb->accum,
                              .token_text = {tok ? html_token_text : NULL, tok}};
        rc = qd_report_write_html(&r, &hc, a->html, e);
        free(abs_model);
        if (rc) goto out;
    }
    if (!a->quiet) {
        printf("model %s, T=%d tokens\n", model, T);
        qd_report_print(&r, stdout, qd_cli_color(a->color, stdout));
        if (a->dump) printf("dump: %s\n", a->dump);
    }
    report_repro(a, &repro);
    if (!qd_report_diverged(&r) && !a->quiet) { /* a fault that fired and was not found is said */
        if (a->fault.kind != QD_FAULT_NONE) qd_run_fault_not_found(&r, &a->fault, 1, "--inject", stderr);
        if (a->fault_a.kind != QD_FAULT_NONE) qd_run_fault_not_found(&r, &a->fault_a, 0, "--inject-a", stderr);
    }
    if (a->precision_sweep && !qd_report_diverged(&r)) {
        if (!a->quiet) printf("precision sweep: no divergence to explain\n");
    } else if (a->precision_sweep) {
        qd_sweep_opts so = {.name_a = name_a,
                            .name_b = name_b,
                            .tokens = tokens,
                            .T = T,
                            .decode = a->decode,
                            .calib_prompts = SWEEP_CALIB_PROMPTS,
                            .margin = a->margin,
                            .locate = a->locate,
                            .progress = &pg,
                            .opts = {.threads = a->threads,
                                     .accum_f64 = a->accum == QD_ACCUM_F64,
                                     .fault = a->fault,
                                     .taps_all = a->taps_all}};
        qd_progress_start(&pg, stderr, pg.mode, "qwen3-diff", 0, NULL, NULL);
        if ((rc = qd_precision_sweep(&w, &so, &sweep, e))) goto out;
        have_sweep = 1;
        if (!a->quiet) qd_sweep_print(&sweep, &so, stdout);
    }
    if (a->json) { /* last: it holds the sweep's verdict */
        char *abs_model = realpath(model, NULL);
        const qd_report_context ctx = {.model = abs_model ? abs_model : model,
                                       .tokens = tokens,
                                       .T = T,
                                       .bisect = bisect,
                                       .sweep_asked = a->precision_sweep,
                                       .sweep = have_sweep ? &sweep : NULL};
        rc = qd_report_write_json_ctx(&r, &ctx, a->json, e);
        free(abs_model);
        if (rc) goto out;
    }
    if (a->precision_bisect && !qd_report_diverged(&r)) {
        if (!a->quiet) printf("precision bisect: no divergence to explain\n");
    } else if (bisect && !a->quiet) {
        qd_bisect_print(bisect, stdout);
    }
    rc = qd_report_diverged(&r) ? QD_EDIVERGED : QD_OK;

out:
    qd_progress_end(&pg);
    free(bisect);
    if (dump) qd_dump_close(dump, 0, NULL);
    if (have_report) qd_report_free(&r);
    if (have_tol) qd_tolerances_free(&tol);
    qd_backend_destroy(bi);
    qd_backend_destroy(bb);
    qd_backend_destroy(ba);
    if (have_weights) qd_weights_free(&w);
    free(tokens);
    free(config_text);
    qd_tok_free(tok);
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

/* The checkpoint a dump's replay needs: --model, else the dump's own 'model' attribute (qd_dump_model_dir). */
static int load_dump_model(const cli_args *a, const char *path, qd_weights *w, qd_err *e) {
    char dir[4096];
    struct stat st;
    if (a->model) {
        if (stat(a->model, &st) != 0 || !S_ISDIR(st.st_mode))
            return qd_errf(e, QD_EINPUT, "--model %s: no such directory", a->model);
        snprintf(dir, sizeof dir, "%s", a->model);
    } else {
        int rc = qd_dump_model_dir(path, dir, sizeof dir, e);
        if (rc) return rc;
    }
    return qd_weights_map(dir, w, e); /* the replay reads the matrices in place */
}

/* What the JSON report says of a dump's run: its checkpoint (--model, else the dump's own) and input ids; the
 * config from its config_json for the tolerance file's model check. Fields stay unset where it has none. */
typedef struct {
    char model[4096];
    int32_t *tokens;
    int T;
    qd_config cfg;
    int have_cfg;
} dump_facts;

static void read_dump_facts(const cli_args *a, const char *path, dump_facts *df) {
    memset(df, 0, sizeof *df);
    qd_err ignored; /* a dump that cannot say is reported as such by the comparison itself */
    char dir[4096] = "";
    if (a->model) snprintf(dir, sizeof dir, "%s", a->model);
    else if (qd_dump_model_dir(path, dir, sizeof dir, &ignored)) dir[0] = '\0';
    char *abs_dir = dir[0] ? realpath(dir, NULL) : NULL;
    snprintf(df->model, sizeof df->model, "%s", abs_dir ? abs_dir : dir);
    free(abs_dir);
    qd_h5in *f = qd_h5in_open(path, &ignored);
    if (!f) return;
    df->cfg = *qd_h5in_config(f);
    df->have_cfg = 1;
    if (qd_h5in_input_ids(f, &df->tokens, &df->T, &ignored)) df->tokens = NULL;
    qd_h5in_close(f);
}

static int run_compare(const cli_args *a, qd_err *e) {
    char pa[4096], pb[4096], ga[128], gb[128];
    split_operand(a->compare_a, pa, sizeof pa, ga, sizeof ga);
    split_operand(a->compare_b, pb, sizeof pb, gb, sizeof gb);
    qd_tolerances tol;
    qd_weights w;
    int have_tol = 0, have_w = 0, rc = QD_OK;
    dump_facts df;
    char note[1024] = ""; /* the tolerance file's model check, printed once the comparison ran */
    read_dump_facts(a, pa, &df);
    if (a->tolerances) {
        if ((rc = qd_tolerances_load(a->tolerances, &tol, e))) goto done;
        have_tol = 1;
        if (df.have_cfg && (rc = check_tolerances_model(a, &tol, &df.cfg, note, sizeof note, e))) goto done;
    } else { /* the replay verdict: both dumps replayed over the checkpoint they were made with */
        if ((rc = load_dump_model(a, pa, &w, e))) goto done;
        have_w = 1;
    }
    qd_report r;
    memset(&r, 0, sizeof r);
    qd_repro_req repro = {.path = a->repro, .model = a->model};
    qd_replay_judge judge = {
        .w = have_w ? &w : NULL, .threshold = a->threshold, .threads = a->threads, .repro = a->repro ? &repro : NULL};
    qd_compare_match match = {.allow_mismatch = a->allow_mismatch};
    rc = qd_compare_files_judged(pa, ga[0] ? ga : NULL, pb, gb[0] ? gb : NULL, have_tol ? &tol : NULL, &judge, &match,
                                 &r, e);
    if (!rc && match.note[0]) fprintf(stderr, "qwen3-diff: warning: --allow-mismatch: %s\n", match.note);
    if (!rc) print_note(note);
    const qd_report_context ctx = {.model = df.model[0] ? df.model : NULL, .tokens = df.tokens, .T = df.T};
    if (!rc && a->json) rc = qd_report_write_json_ctx(&r, &ctx, a->json, e);
    if (!rc && a->junit) rc = qd_report_write_junit(&r, a->junit, e);
    qd_html_context hc; /* the page's attributes: dump A's */
    if (!rc && a->html && !(rc = qd_html_context_from_dump(pa, &hc, e))) {
        qd_tokenizer *tok = html_tokenizer(a, pa);
        hc.token_text = (qd_token_text){tok ? html_token_text : NULL, tok};
        rc = qd_report_write_html(&r, &hc, a->html, e);
        qd_html_context_free(&hc);
        qd_tok_free(tok);
    }
    if (!rc && !a->quiet) {
        printf("compare: reference %s, test %s\n", a->compare_a, a->compare_b);
        qd_report_print(&r, stdout, qd_cli_color(a->color, stdout));
    }
    if (!rc) report_repro(a, &repro);
    if (!rc) rc = qd_report_diverged(&r) ? QD_EDIVERGED : QD_OK;
    qd_report_free(&r);
done:
    free(df.tokens);
    if (have_tol) qd_tolerances_free(&tol);
    if (have_w) qd_weights_free(&w);
    return rc;
}

/* A comparison's dump drawn as the HTML report. */
static int run_report(const cli_args *a, qd_err *e) {
    char path[4096], group[256];
    split_operand(a->report_dump, path, sizeof path, group, sizeof group);
    qd_tokenizer *tok = html_tokenizer(a, path);
    qd_token_text tt = {tok ? html_token_text : NULL, tok};
    int rc = qd_report_html_from_dump(path, group[0] ? group : NULL, &tt, a->html, e);
    qd_tok_free(tok);
    if (!rc && !a->quiet && strcmp(a->html, "-") != 0) printf("report: %s\n", a->html); /* "-": the page itself */
    return rc;
}

/* A repro file's op rerun from the file alone: oracle, contract (and with --inject a fault), fused kernel. */
static int run_repro(const cli_args *a, qd_err *e) {
    if (a->json)
        return qd_errf(e, QD_EINPUT, "--json: %s is a repro file; its rerun prints lines only", a->replay_dump);
    qd_repro_result res;
    int rc = qd_repro_run(a->replay_dump, a->fault.kind, a->threads, &res, e);
    if (rc) return rc;
    if (!a->quiet) qd_repro_print(&res, stdout);
    return qd_verdict_fails(res.stored.verdict) ? QD_EDIVERGED : QD_OK;
}

/* One engine's dump judged on its own, op by op. */
static int run_replay(const cli_args *a, qd_err *e) {
    if (qd_repro_is_repro(a->replay_dump)) return run_repro(a, e);
    if (a->fault.kind != QD_FAULT_NONE)
        return qd_errf(e, QD_EINPUT, "--inject: %s is a dump; only a repro file's op (--repro) is rerun with a fault",
                       a->replay_dump);
    char path[4096], group[128];
    split_operand(a->replay_dump, path, sizeof path, group, sizeof group);
    qd_weights w;
    int rc = load_dump_model(a, path, &w, e);
    if (rc) return rc;
    qd_report r;
    memset(&r, 0, sizeof r);
    qd_replay_judge judge = {.w = &w, .threshold = a->threshold, .threads = a->threads};
    rc = qd_replay_file(path, group[0] ? group : NULL, &judge, &r, e);
    dump_facts df;
    if (!rc && a->json) {
        read_dump_facts(a, path, &df);
        const qd_report_context ctx = {.model = df.model[0] ? df.model : NULL, .tokens = df.tokens, .T = df.T};
        rc = qd_report_write_json_ctx(&r, &ctx, a->json, e);
        free(df.tokens);
    }
    if (!rc && !a->quiet) {
        printf("replay %s\n", a->replay_dump);
        qd_report_print(&r, stdout, qd_cli_color(a->color, stdout));
    }
    if (!rc) rc = qd_report_diverged(&r) ? QD_EDIVERGED : QD_OK;
    qd_report_free(&r);
    qd_weights_free(&w);
    return rc;
}

int main(int argc, char **argv) {
    cli_args a;
    qd_err e;
    qd_err_clear(&e);
    if (argc > 1 && strcmp(argv[1], "selftest") == 0) return selftest_cli_main(argc - 1, argv + 1);
    int rc = parse_args(argc, argv, &a, &e);
    if (rc == QD_OK && a.help) {
        if (a.help == 2)
            sub_usage(stdout, &compare_cmd,
                      "Compares two schema-v1 dumps from any engines: A is the reference side, B the test side.\n"
                      "By default both are replayed over the checkpoint they were made with (--model DIR, else the\n"
                      "dump's 'model' attribute) and each op is judged by its local error over its noise floor;\n"
                      "--tolerances FILE judges the A-vs-B error by absolute tolerances instead.");
        else if (a.help == 3)
            sub_usage(stdout, &replay_cmd,
                      "Judges one engine's dump on its own: each op replayed by the oracle from that engine's own\n"
                      "inputs, its local error against its noise floor. A repro file (--repro) is rerun from the\n"
                      "file alone: oracle, contract (with --inject NAME, a fault of the catalog) and fused kernel.");
        else usage(stdout);
        return 0;
    }
    if (rc == QD_OK && (a.list_faults || a.list_taps)) {
        if (a.list_taps) qd_list_taps(stdout);
        if (a.list_faults) qd_list_faults(stdout);
        return 0;
    }
    if (rc == QD_OK && a.version) {
        printf("qwen3-diff %s\n", QD_VERSION);
        return 0;
    }
    /* outputs never overwrite each other or an input; a signal removes the temporary files (qd_files.h) */
    if (rc == QD_OK)
        rc = qd_check_paths(&e, QD_PATH_OUT, "--dump", a.dump, QD_PATH_OUT, "--repro", a.repro, QD_PATH_STREAM,
                            "--json", a.json, QD_PATH_STREAM, "--junit", a.junit, QD_PATH_STREAM, "--html", a.html,
                            QD_PATH_IN, "report", a.report_dump, QD_PATH_STREAM, "--write-tolerances", a.write_tol,
                            QD_PATH_IN, "--tolerances", a.tolerances, QD_PATH_IN, "--tokens",
                            a.tokens && a.tokens[0] == '@' ? a.tokens + 1 : NULL, QD_PATH_IN, "--prompt",
                            a.prompt && a.prompt[0] == '@' ? a.prompt + 1 : NULL, QD_PATH_IN, "compare reference",
                            a.compare_a, QD_PATH_IN, "compare test", a.compare_b, QD_PATH_END);
    if (rc == QD_OK) rc = qd_tmp_cleanup_on_signals(&e);
    /* a document on stdout ("-") stays alone there: the text report goes to stderr */
    if (rc == QD_OK && (qd_out_is_stdout(a.json) || qd_out_is_stdout(a.junit) || qd_out_is_stdout(a.write_tol) ||
                        qd_out_is_stdout(a.html)))
        rc = qd_out_claim_stdout(&e);
    if (rc == QD_OK) {
        const char *model = a.model ? a.model : QD_SOURCE_ROOT "/fixtures/knorm_extreme";
        char token_arg[4200];
        snprintf(token_arg, sizeof token_arg, "%s", a.tokens ? a.tokens : "");
        if (!a.tokens) snprintf(token_arg, sizeof token_arg, "@%s/prompt.txt", model);
        if (a.report_dump) rc = run_report(&a, &e);
        else if (a.replay_dump) rc = run_replay(&a, &e);
        else if (a.compare_a) rc = run_compare(&a, &e);
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
