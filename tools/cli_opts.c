/* cli_opts.c: option tables -> getopt_long, usage lines and --help option lists (cli_opts.h). */
#include "cli_opts.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_OPTS 64       /* per command; the main command has 28 */
#define LONG_VAL0 256     /* getopt_long's value of table entry i: LONG_VAL0 + i, apart from any short name */
#define USAGE_COLUMNS 100 /* usage lines wrap before this column, as the hand-written ones did */
#define HELP_COLUMN 25    /* where the text of the option list starts: "  " + 22 for the name + " " */

static int find_short(const qd_cli_cmd *c, int ch) {
    for (int i = 0; i < c->nopts; i++)
        if (c->opts[i].short_name && c->opts[i].short_name == ch) return i;
    return -1;
}

/* The word as typed is exactly option o: "-h", "--name" or "--name=VALUE" (getopt_long also accepts
 * unambiguous abbreviations and short clusters, which this command line never did). */
static int spelled_out(const char *word, const qd_cli_opt *o) {
    if (o->short_name && word[0] == '-' && word[1] == o->short_name && word[2] == '\0') return 1;
    size_t n = strlen(o->name);
    return strncmp(word, "--", 2) == 0 && strncmp(word + 2, o->name, n) == 0 &&
           (word[2 + n] == '\0' || (o->value && word[2 + n] == '='));
}

int qd_cli_parse(const qd_cli_cmd *c, const qd_cli_handlers *h, void *ctx, int argc, char **argv, qd_err *e) {
    struct option lo[MAX_OPTS + 1];
    char shorts[2 + 2 * MAX_OPTS + 1];
    if (c->nopts > MAX_OPTS)
        return qd_errf(e, QD_ERUNTIME, "%s: %d options, at most %d", c->name ? c->name : "qwen3-diff", c->nopts,
                       MAX_OPTS);
    int ns = 0;
    shorts[ns++] = '-'; /* every word in order (operands come back as 1): nothing is permuted */
    shorts[ns++] = ':'; /* a missing value comes back as ':', not '?' */
    for (int i = 0; i < c->nopts; i++) {
        const qd_cli_opt *o = &c->opts[i];
        lo[i] = (struct option){o->name, o->value ? required_argument : no_argument, NULL, LONG_VAL0 + i};
        if (o->short_name) {
            shorts[ns++] = o->short_name;
            if (o->value) shorts[ns++] = ':';
        }
    }
    lo[c->nopts] = (struct option){NULL, 0, NULL, 0};
    shorts[ns] = '\0';

    int seen[MAX_OPTS] = {0}; /* valued options given so far, by table index */
    opterr = 0;               /* the command words its own one-line messages */
    optind = 0;               /* a full re-initialisation (glibc, musl), whatever parsed before */
    for (;;) {
        int at = optind ? optind : 1; /* the word getopt_long looks at next: no permutation, no clusters */
        if (at < argc && strcmp(argv[at], "--") == 0) return h->misuse(QD_CLI_UNKNOWN, argv[at], NULL, e);
        int k = getopt_long(argc, argv, shorts, lo, NULL);
        if (k == -1) return QD_OK;
        const char *word = argv[at];
        if (k == 1) { /* not an option; "-" alone is an unknown option, as it always was */
            if (word[0] == '-') return h->misuse(QD_CLI_UNKNOWN, word, NULL, e);
            int rc = h->operand ? h->operand(ctx, word, e) : h->misuse(QD_CLI_STRAY, word, NULL, e);
            if (rc) return rc;
            continue;
        }
        int code = k == ':' ? optopt : k; /* missing value: optopt is the option's value */
        int i = code >= LONG_VAL0 ? code - LONG_VAL0 : k == '?' ? -1 : find_short(c, code);
        if (i < 0 || i >= c->nopts || !spelled_out(word, &c->opts[i])) return h->misuse(QD_CLI_UNKNOWN, word, NULL, e);
        const qd_cli_opt *o = &c->opts[i];
        char flag[80];
        snprintf(flag, sizeof flag, "--%s", o->name);
        if (k == ':') return h->misuse(QD_CLI_MISSING, word, flag, e);
        if (o->value && !*optarg && !(o->flags & QD_CLI_EMPTY_OK)) return h->misuse(QD_CLI_EMPTY, word, flag, e);
        /* aliases share the id (--act and --fused-precision, --color and --no-color): a valued option or an
         * alias given again is refused; the same flag twice ("--quiet --quiet") says nothing new */
        for (int j = 0; j < c->nopts; j++)
            if (seen[j] && c->opts[j].id == o->id && (o->value || j != i))
                return h->misuse(QD_CLI_REPEATED, word, flag, e);
        seen[i] = 1;
        int rc = h->option(ctx, o, flag, o->value ? optarg : NULL, e);
        if (rc == QD_CLI_STOP) return QD_OK;
        if (rc) return rc;
    }
}

void qd_cli_print_usage(FILE *f, const char *lead, const qd_cli_cmd *c, int synopsis) {
    int col = fprintf(f, "%s", lead);
    if (c->name) col += fprintf(f, " %s", c->name);
    const int indent = col; /* continuation lines start under the first word after the command */
    if (c->operands) col += fprintf(f, " %s", c->operands);
    for (int pos = 1; pos <= c->nopts; pos++) {
        for (int i = 0; i < c->nopts; i++) {
            const qd_cli_opt *o = &c->opts[i];
            if (o->usage != pos || (synopsis && !(o->flags & QD_CLI_SYNOPSIS))) continue;
            char item[128];
            int w = snprintf(item, sizeof item, "[--%s%s%s]", o->name, o->value ? " " : "", o->value ? o->value : "");
            if (col + 1 + w > USAGE_COLUMNS && col > indent) col = fprintf(f, "\n%*s", indent, "") - 1;
            col += fprintf(f, " %s", item);
        }
    }
    const char *tail = synopsis ? c->synopsis_tail : c->usage_tail;
    fprintf(f, "%s\n", tail ? tail : "");
}

/* text, with '\n' continuing at the help column and "{NAME}" replaced from vars. */
static void print_text(FILE *f, const char *text, const char *const *vars) {
    for (const char *p = text; *p; p++) {
        const char *close = *p == '{' ? strchr(p, '}') : NULL;
        const char *value = NULL;
        for (int v = 0; close && vars && vars[v] && !value; v += 2)
            if (strlen(vars[v]) == (size_t)(close - p - 1) && strncmp(vars[v], p + 1, (size_t)(close - p - 1)) == 0)
                value = vars[v + 1];
        if (value) {
            fputs(value, f);
            p = close;
        } else if (*p == '\n') {
            fprintf(f, "\n%*s", HELP_COLUMN, "");
        } else {
            fputc(*p, f);
        }
    }
}

static int listed(const qd_cli_opt *o) { return o->help && o->section; }

void qd_cli_print_options(FILE *f, const qd_cli_cmd *c, const char *const *vars) {
    for (int i = 0; i < c->nopts; i++) {
        const char *sec = c->opts[i].section;
        int seen = !listed(&c->opts[i]);
        for (int j = 0; j < i && !seen; j++) seen = listed(&c->opts[j]) && strcmp(c->opts[j].section, sec) == 0;
        if (seen) continue;
        fprintf(f, "%s\n", sec);
        int names_open = 0; /* a line of options listed by name only ("  --help, --version") */
        for (int j = i; j < c->nopts; j++) {
            const qd_cli_opt *o = &c->opts[j];
            if (!listed(o) || strcmp(o->section, sec) != 0) continue;
            char label[128];
            snprintf(label, sizeof label, "--%s%s%s", o->name, o->value ? " " : "", o->value ? o->value : "");
            if (!*o->help) {
                fprintf(f, "%s%s", names_open ? ", " : "  ", label);
                names_open = 1;
                continue;
            }
            if (names_open) fputc('\n', f);
            names_open = 0;
            fprintf(f, "  %-*s ", HELP_COLUMN - 3, label);
            print_text(f, o->help, vars);
            fputc('\n', f);
        }
        if (names_open) fputc('\n', f);
    }
}

int qd_cli_parse_color(const char *val, int *when, qd_err *e) {
    if (strcmp(val, "always") == 0) *when = 1;
    else if (strcmp(val, "never") == 0) *when = 0;
    else if (strcmp(val, "auto") == 0) *when = -1;
    else return qd_errf(e, QD_EINPUT, "--color: '%s' is not auto, always or never", val);
    return QD_OK;
}

int qd_cli_color(int when, FILE *f) {
    if (when >= 0) return when;
    const char *no = getenv("NO_COLOR");
    return isatty(fileno(f)) && !(no && *no);
}
