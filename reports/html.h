/* html.h: what the HTML report is drawn from (internal to reports/: the public interface is
 * qd_reports.h). Both sources reduce to this one form, so `--html` and `qwen3-diff report DUMP.h5` draw
 * the same page from the same figures: the rows as the dump's /diff table stores them (qd_metrics_record),
 * the first divergence's breakdown as its where table, and the attributes as strings. */
#ifndef QD_REPORTS_HTML_H
#define QD_REPORTS_HTML_H

#include "qd_reports.h"

typedef struct {
    char name_a[64], name_b[64]; /* the reference side and the side under test */
    char prec_a[16], prec_b[16], accum_a[16], accum_b[16];
    const char *model, *config_json, *tool_version; /* NULL: not known */
    const int32_t *tokens;                          /* (T); NULL: not known */
    int T;
    int n_layers;
    int replay;                    /* 1: rows judged by the local ratio; 0: by tolerances */
    double threshold;              /* replay: the ratio's threshold */
    int threshold_assumed;         /* 1: the source did not record it (a dump): the default is shown */
    const qd_metrics_record *rows; /* (n) in execution order */
    int n;
    int first_div; /* index into rows; -1 none */
    char where_summary[384];
    qd_where_record where[QD_NUM_AXES * QD_WHERE_TOP];
    int n_where;
    qd_next_tokens next;
    qd_token_text token_text;
    char esc_a[400], esc_b[400], esc_prec_b[100]; /* qd_html_render's: the names HTML-escaped */
} qd_html_doc;

/* Draws the page and writes it atomically (qd_write_text_output). */
int qd_html_render(const qd_html_doc *d, const char *path, qd_err *e);

#endif
