/* shared.h: what the writers of reports/ share (shared.c): the wording of a row's verdict and place, and
 * writing a text output. Internal to reports/: the public interface is qd_reports.h. */
#ifndef QD_REPORTS_SHARED_H
#define QD_REPORTS_SHARED_H

#include <stddef.h>

#include "qd_compare.h"

/* The one-word class of a failure, most telling first: "non-finite", "blow-up", "collapse",
 * "error growth", "rel_l2", "max_abs", "local error"; "ok" for a pass. */
const char *qd_verdict_class(unsigned v);

/* The name of the side a replay-judged row was judged on (A's when none). */
const char *qd_row_side_name(const qd_report *r, const qd_tap_row *row);

/* The row's qd_verdict_reason, with the tolerance and blow-up settings it was judged by; with the replay
 * verdict, the judged side's local error over its noise floor. */
void qd_row_reason(const qd_report *r, const qd_tap_row *row, char *buf, size_t n);

/* "layer 1, o_proj" / "logits" / "decode step 2, layer 1, o_proj" */
void qd_row_place(const qd_tap_row *row, char *buf, size_t n);

/* 1 when the row is in the table group of (step, layer): a layer (layer >= 0), or the embed or (head)
 * the head row (layer < 0). */
int qd_row_in_group(const qd_tap_row *row, int step, int layer, int head);

/* Writes text to the output path (qd_out_open: "-" is stdout; a regular file is written to
 * path.tmp.<pid> and renamed, so a file under the final name is complete). QD_ERUNTIME naming the
 * failing call. */
int qd_write_text_output(const char *path, const char *text, qd_err *e);

#endif
