/* qd_reports.h: what the comparator's results look like to people and machines. Reads a qd_report
 * (compare/qd_compare.h: the rows, their metrics and verdicts, the first divergence) and writes it as
 * the terminal's first divergence line and per-layer table, JSON, JUnit XML, and the /diff metrics
 * table of an HDF5 dump. Nothing here computes or judges: that is compare/'s. */
#ifndef QD_REPORTS_H
#define QD_REPORTS_H

#include <stdio.h>

#include "qd_compare.h"
#include "qd_dump.h"

/* The first divergence line, then a compact per-layer table. color: ANSI colours (terminals only). */
void qd_report_print(const qd_report *r, FILE *f, int color);
/* {"verdict": "pass"|"diverged", "first_divergence": null | {...}, "taps": [...]} */
int qd_report_write_json(const qd_report *r, const char *path, qd_err *e);
/* JUnit XML: one test case per layer (and one each for embed and the head). */
int qd_report_write_junit(const qd_report *r, const char *path, qd_err *e);
/* /diff/<A>-vs-<B>/metrics, a compound table of every row, with attrs first_divergence_layer and
 * first_divergence_tap. */
int qd_report_write_h5(const qd_report *r, qd_dump *d, qd_err *e);

#endif
