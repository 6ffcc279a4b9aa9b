/* selftest_cli.h: `qwen3-diff selftest`, the command line of qd_selftest_run (compare/qd_selftest.h). */
#ifndef QD_SELFTEST_CLI_H
#define QD_SELFTEST_CLI_H

#include "cli_opts.h"

/* The sub-command's option table, for the synopsis in qwen3-diff's --help. */
extern const qd_cli_cmd selftest_cli_cmd;

/* `qwen3-diff selftest [--backend emu|fused] [--fixtures DIR] [--json FILE] [--threads N] [--quiet]
 * [--no-color]`; argv[0] is "selftest". Prints the table of checks (stdout), progress unless --quiet and
 * errors (stderr, "qwen3-diff: selftest: ..."), writes the JSON report. Returns the exit status: 0 every
 * expectation met, 1 a miss, 2 bad usage or input, 3 runtime failure. */
int selftest_cli_main(int argc, char **argv);

#endif
