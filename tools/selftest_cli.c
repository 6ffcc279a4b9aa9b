/* selftest_cli.c: `qwen3-diff selftest`: parses its options, runs qd_selftest_run (compare/selftest.c),
 * prints the table of checks and writes the JSON report (schema qwen3-diff-selftest/1, docs/FAULTS.md). */
#include "selftest_cli.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qd_build_config.h"
#include "qd_fault.h"
#include "qd_progress.h"
#include "qd_files.h"
#include "qd_selftest.h"

// ----------------------------------------------------------------------------
// the command line

enum { S_BACKEND = 1, S_FIXTURES, S_JSON, S_THREADS, S_QUIET, S_COLOR, S_SHIFT, S_ONLY, S_HELP };

/* name, value, id, section, help, usage position, flags, short name. The selftest's --help is its usage line
 * and a paragraph: no option is listed (help NULL). */
static const qd_cli_opt selftest_opts[] = {
    {"backend", "emu|fused", S_BACKEND, NULL, NULL, 1, 0, 0},
    {"fixtures", "DIR", S_FIXTURES, NULL, NULL, 2, QD_CLI_SYNOPSIS, 0},
    {"json", "FILE", S_JSON, NULL, NULL, 3, QD_CLI_SYNOPSIS, 0},
    {"threads", "N", S_THREADS, NULL, NULL, 4, 0, 0},
    {"quiet", NULL, S_QUIET, NULL, NULL, 5, 0, 0},
    {"color", "WHEN", S_COLOR, NULL, NULL, 6, 0, 0},
    {"no-color", NULL, S_COLOR, NULL, NULL, 0, 0, 0},             /* --color never */
    {"shift-expectation", "FAULT", S_SHIFT, NULL, NULL, 0, 0, 0}, /* hidden: the checker's own test */
    {"only-fixture", "NAME", S_ONLY, NULL, NULL, 0, 0, 0},        /* hidden: a short run (the valgrind test) */
    {"help", NULL, S_HELP, NULL, NULL, 0, 0, 'h'},
};

const qd_cli_cmd selftest_cli_cmd = {
    .name = "selftest",
    .synopsis_tail = "   proves the harness on every fault (--help)",
    .opts = selftest_opts,
    .nopts = (int)(sizeof selftest_opts / sizeof *selftest_opts),
};

typedef struct {
    qd_selftest_opts run;
    const char *root; /* the fixtures root, as the JSON records it */
    const char *json;
    int quiet, help;
    int color; /* --color: 1 always, 0 never, -1 auto */
} st_args;

static void selftest_usage(FILE *f) {
    qd_cli_print_usage(f, "usage: qwen3-diff", &selftest_cli_cmd, 0);
    fprintf(f,
            "\n"
            "Proves the harness: blesses ref vs the backend under test (emu by default; fused: the CUDA\n"
            "kernels) on each fixture (%d prompts, margin %g), checks that %d held-out clean prompts flag\n"
            "nothing, injects every fault of the catalog (qwen3-diff --inject help) into that backend where it\n"
            "can show and checks that the first divergence is the expected step, layer and tap in free-running\n"
            "and isolated mode, and checks the precision sweep's verdicts (docs/FAULTS.md).\n"
            "--quiet: no progress and no table, only the rows that missed; --color: the marks in colour\n"
            "(auto: on a terminal, unless NO_COLOR is set).\n"
            "Exit status: 0 every expectation met, 1 a miss, 2 bad usage or input, 3 runtime failure.\n",
            QD_SELFTEST_CALIB_PROMPTS, QD_SELFTEST_MARGIN, QD_SELFTEST_CLEAN_PROMPTS);
}

static int st_option(void *ctx, const qd_cli_opt *o, const char *flag, const char *val, qd_err *e) {
    st_args *a = ctx;
    (void)flag;
    switch (o->id) {
    case S_BACKEND:
        if (strcmp(val, "emu") != 0 && strcmp(val, "fused") != 0)
            return qd_errf(e, QD_EINPUT, "--backend: '%s': expected emu or fused", val);
        a->run.backend = val;
        return QD_OK;
    case S_FIXTURES: a->root = val; return QD_OK;
    case S_JSON: a->json = val; return QD_OK;
    case S_THREADS: {
        char *end;
        long t = strtol(val, &end, 10);
        if (!*val || *end || t < 1 || t > 4096)
            return qd_errf(e, QD_EINPUT, "--threads: '%s' is not an integer in 1..4096", val);
        a->run.threads = (int)t;
        return QD_OK;
    }
    case S_QUIET: a->quiet = 1; return QD_OK;
    case S_COLOR:
        if (!val) a->color = 0; /* --no-color */
        return val ? qd_cli_parse_color(val, &a->color, e) : QD_OK;
    case S_SHIFT: a->run.shift_expectation = val; return QD_OK;
    case S_ONLY: a->run.only_fixture = val; return QD_OK;
    case S_HELP: a->help = 1; return QD_CLI_STOP; /* --help wins over what follows it, not over what precedes */
    }
    return qd_errf(e, QD_ERUNTIME, "selftest: option --%s has no handler", o->name);
}

static int st_misuse(qd_cli_misuse k, const char *word, const char *flag, qd_err *e) {
    switch (k) {
    case QD_CLI_MISSING: return qd_errf(e, QD_EINPUT, "%s: missing value", flag);
    case QD_CLI_EMPTY: return qd_errf(e, QD_EINPUT, "empty value for '%s' (see qwen3-diff selftest --help)", word);
    case QD_CLI_REPEATED:
        return qd_errf(e, QD_EINPUT,
                       "%s: already given, under this name or another (each option once: the last would win silently)",
                       word);
    case QD_CLI_UNKNOWN:
    case QD_CLI_STRAY: break;
    }
    return qd_errf(e, QD_EINPUT, "unknown argument '%s' (see qwen3-diff selftest --help)", word);
}

static int parse_selftest(int argc, char **argv, st_args *a, qd_err *e) {
    memset(a, 0, sizeof *a);
    a->root = QD_SOURCE_ROOT "/fixtures";
    a->run.backend = "emu";
    a->color = -1;
    const qd_cli_handlers h = {.option = st_option, .misuse = st_misuse};
    int rc = qd_cli_parse(&selftest_cli_cmd, &h, a, argc, argv, e);
    if (rc || a->help) return rc;
    struct stat st;
    if (stat(a->root, &st) != 0 || !S_ISDIR(st.st_mode))
        return qd_errf(e, QD_EINPUT, "--fixtures %s: no such directory", a->root);
    qd_fault f;
    if (a->run.shift_expectation && qd_fault_parse(a->run.shift_expectation, &f, e)) {
        char why[sizeof e->msg];
        snprintf(why, sizeof why, "%s", e->msg);
        return qd_errf(e, QD_EINPUT, "--shift-expectation: %s", why);
    }
    a->run.fixtures = a->root;
    return QD_OK;
}

// ----------------------------------------------------------------------------
// output

static int utf8_terminal(void) {
    if (!isatty(1)) return 0;
    const char *vars[] = {"LC_ALL", "LC_CTYPE", "LANG"};
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return strstr(v, "UTF-8") || strstr(v, "utf8") || strstr(v, "UTF8") || strstr(v, "utf-8");
    }
    return 0;
}

/* The table of checks; misses_only: only the rows that missed (--quiet), no header. */
static void print_table(const qd_selftest_result *r, FILE *f, int misses_only, int color) {
    int utf8 = utf8_terminal();
    if (!misses_only)
        fprintf(f, "%-28s %-26s %-28s %-30s %-8s %s\n", "fault", "fixture", "expected", "found", "mode", "");
    for (int i = 0; i < r->n; i++) {
        const qd_selftest_check *c = &r->checks[i];
        if (misses_only && c->ok) continue;
        const char *mark = c->ok ? (utf8 ? "\u2713" : "ok") : (utf8 ? "\u2717" : "MISS");
        fprintf(f, "%-28s %-26s %-28s %-30s %-8s %s%s%s\n", c->fault, c->fixture, c->expected, c->found, c->mode,
                !color  ? ""
                : c->ok ? "\033[32m"
                        : "\033[1;31m",
                mark, color ? "\033[0m" : "");
    }
}

static json_t *tokens_json(const int32_t *t, int T) {
    json_t *a = json_array();
    for (int i = 0; i < T; i++) json_array_append_new(a, json_integer(t[i]));
    return a;
}

static int write_json(const qd_selftest_result *r, const char *root, const char *backend, const char *path, qd_err *e) {
    json_t *rows = json_array();
    for (int i = 0; i < r->n; i++) {
        const qd_selftest_check *c = &r->checks[i];
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:b, s:s}", "kind", c->kind, "fault", c->fault, "fixture",
                              c->fixture, "expected", c->expected, "found", c->found, "mode", c->mode, "ok", c->ok,
                              "reason", c->reason);
        if (c->tokens) json_object_set_new(o, "tokens", tokens_json(c->tokens, c->T));
        json_array_append_new(rows, o);
    }
    json_t *root_o = json_pack("{s:s, s:b, s:s, s:s, s:i, s:i, s:f, s:i, s:o}", "schema", "qwen3-diff-selftest/1",
                               "pass", r->misses == 0, "fixtures", root, "backend", backend, "calibration_prompts",
                               QD_SELFTEST_CALIB_PROMPTS, "clean_prompts", QD_SELFTEST_CLEAN_PROMPTS, "margin",
                               QD_SELFTEST_MARGIN, "decode_steps", QD_SELFTEST_DECODE, "rows", rows);
    qd_out o; /* "-" is stdout; a file is written atomically (qd_files.h) */
    int rc = qd_out_open(&o, path, e);
    if (!rc && (json_dumpf(root_o, o.f, JSON_INDENT(1)) != 0 || fputc('\n', o.f) == EOF)) {
        qd_out_abort(&o);
        rc = qd_errf(e, QD_ERUNTIME, "selftest: cannot write %s", path);
    } else if (!rc) {
        rc = qd_out_commit(&o, e);
    }
    json_decref(root_o);
    return rc;
}

/* The selftest's phases through qd_progress (ctx): a live line on a terminal, a bounded rate in logs. */
static void print_progress(void *ctx, const char *msg) { qd_progress_update(ctx, 0, "%s", msg); }

// ----------------------------------------------------------------------------
// the sub-command

int selftest_cli_main(int argc, char **argv) {
    st_args a;
    qd_err e;
    qd_err_clear(&e);
    int rc = parse_selftest(argc, argv, &a, &e);
    if (rc == QD_OK && a.help) {
        selftest_usage(stdout);
        return 0;
    }
    qd_selftest_result r = {0};
    if (rc == QD_OK && qd_out_is_stdout(a.json)) rc = qd_out_claim_stdout(&e); /* --json -: the table to stderr */
    if (rc == QD_OK) {
        qd_progress pg;
        qd_progress_start(&pg, stderr, qd_progress_mode_for(stderr, a.quiet), "selftest", 0, NULL, NULL);
        a.run.progress = print_progress;
        a.run.progress_ctx = &pg;
        rc = qd_selftest_run(&a.run, &r, &e);
        qd_progress_end(&pg);
    }
    if (rc == QD_OK) {
        print_table(&r, stdout, a.quiet, qd_cli_color(a.color, stdout));
        if (!a.quiet) printf("selftest: %d checks, %d missed (backend %s)\n", r.n, r.misses, a.run.backend);
        if (a.json) rc = write_json(&r, a.root, a.run.backend, a.json, &e);
    }
    int misses = r.misses;
    qd_selftest_result_free(&r);
    if (rc) {
        fprintf(stderr, "qwen3-diff: selftest: %s\n", e.msg[0] ? e.msg : "failed");
        return rc == QD_EINPUT ? 2 : rc == QD_EDIVERGED ? 1 : 3;
    }
    return misses ? 1 : 0;
}
