/* qd_reports.h: what the comparator's results look like to people and machines. Reads a qd_report
 * (compare/qd_compare.h: the rows, their metrics and verdicts, the first divergence) and writes it as
 * the terminal's first divergence line and per-layer table, JSON, JUnit XML, a self-contained HTML
 * report, and the /diff metrics table of an HDF5 dump. Nothing here computes or judges: that is compare/'s. */
#ifndef QD_REPORTS_H
#define QD_REPORTS_H

#include <stdint.h>
#include <stdio.h>

#include "qd_bisect.h"
#include "qd_compare.h"
#include "qd_dump.h"
#include "qd_sweep.h"

/* The first divergence line, then a compact per-layer table. color: ANSI colours (terminals only). */
void qd_report_print(const qd_report *r, FILE *f, int color);
/* {"verdict": "pass"|"diverged", "first_divergence": null | {..., "where": {...}}, "taps": [...]} */
int qd_report_write_json(const qd_report *r, const char *path, qd_err *e);
/* The same with the precision bisection's result as the field "precision_bisect" (bisect NULL: none). */
int qd_report_write_json_bisect(const qd_report *r, const qd_bisect_result *bisect, const char *path, qd_err *e);
/* What a run knows beside its report, for the JSON report. */
typedef struct {
    const char *model;     /* the checkpoint directory; NULL: not known */
    const int32_t *tokens; /* (T) the prompt's input ids; NULL: not known */
    int T;
    const qd_bisect_result *bisect; /* --precision-bisect's result; NULL: none */
    int sweep_asked;                /* --precision-sweep was given */
    const qd_sweep_result *sweep;   /* its result; NULL when it did not run (nothing diverged) */
} qd_report_context;
/* The JSON report with the context's fields: "model", "input_ids" (null when not known), and, when the
 * sweep was asked for, "precision_sweep" {"verdict", "text", "dtypes"} ("verdict" null: nothing diverged,
 * nothing to explain); "precision_bisect" as qd_report_write_json_bisect. c NULL: none of them known. */
int qd_report_write_json_ctx(const qd_report *r, const qd_report_context *c, const char *path, qd_err *e);
/* JUnit XML: one test case per step and layer (and one each per step for embed and the head). */
int qd_report_write_junit(const qd_report *r, const char *path, qd_err *e);
/* /diff/<A>-vs-<B>/metrics, a table of qd_metrics_record, one per row in the report's order, the
 * group's attributes first_divergence_layer, _step, _tap, _mode, _where, reference and test, and the table
 * where: the first divergence's top offenders per axis (docs/SCHEMA.md). */
int qd_report_write_h5(const qd_report *r, qd_dump *d, qd_err *e);

/* One row of /diff/<A>-vs-<B>/metrics as it is stored: the row's place and verdict, the table's fields of
 * QD_METRICS_FIELDS (compare/qd_metrics.h) in its order, max_abs's place as token, head and channel, then
 * the tolerance the row was judged by and the growth check's previous rel_l2, then the replay verdict's
 * figures of the judged side (QD_REPLAY_FIELDS, compare/qd_replay.h) and which side that is. */
#define QD_RECORD_MEMBER_(name, ctype, h5type, json, doc) ctype name;
#define QD_RECORD_SKIP_(name, ctype, h5type, json, doc)
#define QD_RECORD_AT_(value, index) \
    int64_t token, head, channel;   \
    value index
typedef struct {
    int32_t step, layer;
    char tap[24], mode[16]; /* NUL-padded */
    uint8_t pass;           /* 1: the row passed */
    uint32_t flags;         /* the verdict, QD_V_* */
    QD_METRICS_FIELDS(QD_RECORD_MEMBER_, QD_RECORD_SKIP_, QD_RECORD_AT_)
    double tol_rel_l2, tol_atol, tol_rtol, prev_rel_l2;
    QD_REPLAY_FIELDS(QD_RECORD_MEMBER_) /* the judged side's replay (compare/qd_replay.h); NAN: none */
    int32_t judged; /* the side judged by the replay: 0 the reference side A, 1 the test side B; -1 none */
} qd_metrics_record;
#undef QD_RECORD_MEMBER_
#undef QD_RECORD_SKIP_
#undef QD_RECORD_AT_

/* The table's compound type: every member of qd_metrics_record at its offset, in the order above (an HDF5
 * hid_t, as int64_t so that callers need not include hdf5.h; the caller closes it). -1 if HDF5 failed. */
int64_t qd_metrics_record_type(void);
/* Fills x (padding included: zeroed) from one row. */
void qd_metrics_record_fill(const qd_tap_row *row, qd_metrics_record *x);

/* One row of /diff/<A>-vs-<B>/where: a top offender of one axis of the first divergence's tap
 * (qd_localise.h; docs/SCHEMA.md). */
typedef struct {
    char axis[8]; /* "token", "head", "channel"; NUL-padded */
    int32_t rank; /* 0: the heaviest of its axis */
    int64_t index;
    double share, rms_err, rms_ref;
    int64_t nonfinite;
} qd_where_record;
/* Its compound type, as qd_metrics_record_type. */
int64_t qd_where_record_type(void);

// ----------------------------------------------------------------------------
// the HTML report (html.c, html_dump.c): one self-contained file, no script and no network at view time

/* The decoded text of a token id, for the next-token table: the hook through which a tokenizer adds the
 * text beside the ids. fn NULL, or fn returning NULL: the id alone. The text is HTML-escaped. */
typedef struct {
    const char *(*fn)(void *ctx, int32_t id);
    void *ctx;
} qd_token_text;

/* What the report shows beside the rows (all optional: NULL / 0 leave the line out). */
typedef struct {
    const char *model;        /* the checkpoint directory */
    const char *config_json;  /* its config.json, verbatim */
    const char *tool_version; /* what wrote the results */
    const int32_t *tokens;    /* the prompt, (T) */
    int T;
    const char *accum_a, *accum_b; /* each side's reduction, "f32" | "f64" */
    qd_token_text token_text;
} qd_html_context;

/* The report of a comparison (--html FILE): verdict and first divergence, error-vs-layer plots per tap,
 * the layer x tap heatmap, the step x layer grid, the flagged tap's breakdown, error vs magnitude, the
 * next tokens and the run's attributes. Written to path.tmp.<pid> and renamed (as --json). */
int qd_report_write_html(const qd_report *r, const qd_html_context *cx, const char *path, qd_err *e);

/* The context of a dump (`compare --html`): its root's model, config_json, tool_version and /input_ids,
 * read through the checked reader; the strings and ids are owned by cx (qd_html_context_free). The
 * accumulations are left out: they belong to the groups compared. */
int qd_html_context_from_dump(const char *dump, qd_html_context *cx, qd_err *e);
void qd_html_context_free(qd_html_context *cx);

/* The same report from a schema-v1 dump of a comparison (`qwen3-diff report DUMP.h5 -o FILE`): its
 * /diff/<A>-vs-<B> group (diff_group NULL: the only one), the root's and the backend groups' attributes,
 * and the two groups' logits when the dump holds them. Every read is checked (qd_h5read.h); a dump that
 * is not a comparison's is QD_EINPUT naming the file. */
int qd_report_html_from_dump(const char *dump, const char *diff_group, const qd_token_text *token_text,
                             const char *path, qd_err *e);

#endif
