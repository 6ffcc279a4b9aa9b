/* cli_opts.h: the option tables of qwen3-diff's commands (the main command, compare, selftest).
 *
 * Each command declares every option once, in a table of qd_cli_opt: long name, value placeholder, help
 * text, help section and place in the usage line. getopt_long's option array, the usage lines and the
 * option list of --help are generated from that table, so an option cannot be parsed without being
 * documented, or documented without being parsed.
 *
 * The parser keeps the command line's contract stricter than getopt_long alone: a long option must be
 * spelled out (getopt_long would take "--mod" for "--model"), "-h" is the only short option, words are
 * seen in order (no permutation), "--" is not an end-of-options marker but an unknown option, and a
 * valued option may be given once (a second --tokens would silently replace the first). Every
 * misuse is handed to the command, which words its own one-line message. */
#ifndef QD_CLI_OPTS_H
#define QD_CLI_OPTS_H

#include <stdio.h>

#include "qd_util.h"

/* qd_cli_opt.flags */
enum {
    QD_CLI_SYNOPSIS = 1 << 0, /* also in the one-line synopsis the main --help gives of a sub-command */
    QD_CLI_EMPTY_OK = 1 << 1, /* an empty value goes to the handler (else it is a misuse) */
};

typedef struct {
    const char *name;    /* long name, without "--" */
    const char *value;   /* placeholder of the value ("DIR", "free|isolated"); NULL: takes no value */
    int id;              /* what the command's handler switches on */
    const char *section; /* the --help section it is listed under */
    const char *help;    /* its text in the option list (continuation lines after '\n', "{NAME}" replaced
                          * by qd_cli_print_options' vars); "": listed by name only, on one line with its
                          * neighbours of the same kind; NULL: not listed */
    int usage;           /* its place in the command's usage line, from 1; 0: not shown there */
    unsigned flags;      /* QD_CLI_* */
    char short_name;     /* '\0', or the one-letter alias ("-h") */
} qd_cli_opt;

typedef struct {
    const char *name;          /* "compare", "selftest"; NULL: the main command */
    const char *operands;      /* the operands in the usage line ("A.h5[:GROUP] B.h5[:GROUP]"); NULL: none */
    const char *usage_tail;    /* after the options in the usage line (" [options]"); NULL: none */
    const char *synopsis_tail; /* after the synopsis in the main --help ("   proves the harness ..."); NULL: none */
    const qd_cli_opt *opts;    /* (nopts) in the order of --help */
    int nopts;
} qd_cli_cmd;

typedef enum {
    QD_CLI_UNKNOWN,  /* an undeclared option, an abbreviated one, a value given to a flag, "-", "--" */
    QD_CLI_STRAY,    /* a word that is not an option, where the command takes no operands */
    QD_CLI_MISSING,  /* a valued option last on the line */
    QD_CLI_EMPTY,    /* a valued option given "" (without QD_CLI_EMPTY_OK) */
    QD_CLI_REPEATED, /* a valued option given twice, or an option and its alias (same id): the last would win */
} qd_cli_misuse;

/* What an option handler returns to end the parse early and successfully (e.g. selftest's --help). */
#define QD_CLI_STOP (-1)

typedef struct {
    /* One option: flag is "--name" as declared, val its value (NULL for a flag). Returns QD_OK,
     * QD_CLI_STOP, or an error code with e filled. */
    int (*option)(void *ctx, const qd_cli_opt *o, const char *flag, const char *val, qd_err *e);
    /* One word that is not an option; NULL: every such word is QD_CLI_STRAY. */
    int (*operand)(void *ctx, const char *word, qd_err *e);
    /* Fills e for a misuse and returns its code. word: the word as typed ("--threads=", "--mod");
     * flag: "--name" of the option concerned (QD_CLI_MISSING, QD_CLI_EMPTY), else NULL. */
    int (*misuse)(qd_cli_misuse k, const char *word, const char *flag, qd_err *e);
} qd_cli_handlers;

/* Parses argv[1..argc-1] (argv[0]: the program or the sub-command's name) against c's table, left to
 * right, stopping at the first error or QD_CLI_STOP. Returns QD_OK (also after QD_CLI_STOP) or the error
 * code of the handler or misuse. */
int qd_cli_parse(const qd_cli_cmd *c, const qd_cli_handlers *h, void *ctx, int argc, char **argv, qd_err *e);

/* A usage line of c: lead (e.g. "usage: qwen3-diff"), the command's name, its operands and its options
 * as "[--name VALUE]" in their usage order (synopsis: only those with QD_CLI_SYNOPSIS), wrapped under
 * the first word after the command before column 100, then the command's synopsis_tail or usage_tail. */
void qd_cli_print_usage(FILE *f, const char *lead, const qd_cli_cmd *c, int synopsis);

/* The option list of --help: each section, in the order of its first option, then its options. vars:
 * NULL, or pairs {"NAME", "value", ..., NULL} replacing "{NAME}" in the help texts. */
void qd_cli_print_options(FILE *f, const qd_cli_cmd *c, const char *const *vars);

/* --color WHEN: "always" 1, "never" 0, "auto" -1; QD_EINPUT naming the value otherwise. */
int qd_cli_parse_color(const char *val, int *when, qd_err *e);

/* Whether output to f is coloured: when 1 or 0 as given; auto (-1): f is a terminal and the environment
 * variable NO_COLOR is unset or empty (no-color.org). */
int qd_cli_color(int when, FILE *f);

#endif
