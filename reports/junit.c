/* junit.c: JUnit XML for CI (qwen3-diff --junit; qd_reports.h): one test case per layer of each step,
 * and one each for embed and the head; a failing case names its first failing tap and lists them all. */
#include <stdlib.h>
#include <string.h>

#include "qd_reports.h"
#include "shared.h"

/* A growing text buffer. The first failed allocation is kept in e and makes every later append a no-op,
 * so the cases are written without checking each append; qd_report_write_junit checks once. */
typedef struct {
    char *buf; /* (cap) NUL-terminated text */
    size_t len, cap;
    qd_err *e;
    int failed;
} xml_buf;

/* Appends s, escaping XML's five special characters when escape is set. */
static void xml_append(xml_buf *x, const char *s, int escape) {
    if (x->failed) return;
    for (; *s; s++) {
        const char *rep = NULL;
        if (escape) {
            switch (*s) {
            case '&': rep = "&amp;"; break;
            case '<': rep = "&lt;"; break;
            case '>': rep = "&gt;"; break;
            case '"': rep = "&quot;"; break;
            case '\'': rep = "&apos;"; break;
            default: break;
            }
        }
        size_t k = rep ? strlen(rep) : 1;
        if (x->len + k + 1 > x->cap) {
            size_t cap = 2 * (x->cap + k + 1);
            char *grown = qd_resize(x->buf, cap, x->e);
            if (!grown) {
                x->failed = 1;
                return;
            }
            x->buf = grown;
            x->cap = cap;
        }
        if (rep) memcpy(x->buf + x->len, rep, k);
        else x->buf[x->len] = *s;
        x->len += k;
    }
    x->buf[x->len] = '\0';
}

static void junit_case(const qd_report *r, xml_buf *x, int step, int layer, int head, const char *suite) {
    char name[64], line[1024];
    int count = 0, failing = 0;
    for (int i = 0; i < r->n; i++) {
        const qd_tap_row *row = &r->rows[i];
        if (!qd_row_in_group(row, step, layer, head)) continue;
        count++;
        failing += qd_verdict_fails(row->verdict);
    }
    if (!count) return;
    const char *base = layer >= 0 ? NULL : head ? "head" : "embed";
    if (step > 0) {
        if (base) snprintf(name, sizeof name, "decode step %d %s", step, base);
        else snprintf(name, sizeof name, "decode step %d layer %03d", step, layer);
    } else {
        if (base) snprintf(name, sizeof name, "%s", base);
        else snprintf(name, sizeof name, "layer %03d", layer);
    }
    xml_append(x, "  <testcase classname=\"", 0);
    xml_append(x, suite, 1);
    xml_append(x, "\" name=\"", 0);
    xml_append(x, name, 1);
    xml_append(x, "\">\n", 0);
    if (failing) {
        const qd_tap_row *first = NULL;
        for (int i = 0; i < r->n && !first; i++) {
            const qd_tap_row *row = &r->rows[i];
            if (qd_row_in_group(row, step, layer, head) && qd_verdict_fails(row->verdict)) first = row;
        }
        char reason[512];
        qd_row_reason(r, first, reason, sizeof reason);
        snprintf(line, sizeof line, "%s (%s): %s", qd_row_tap_name(first), qd_mode_name(first->mode), reason);
        xml_append(x, "    <failure type=\"", 0);
        xml_append(x, qd_verdict_class(first->verdict), 1);
        xml_append(x, "\" message=\"", 0);
        xml_append(x, line, 1);
        xml_append(x, "\">", 0);
        for (int i = 0; i < r->n; i++) {
            const qd_tap_row *row = &r->rows[i];
            if (!qd_row_in_group(row, step, layer, head) || !qd_verdict_fails(row->verdict)) continue;
            qd_row_reason(r, row, reason, sizeof reason);
            snprintf(line, sizeof line, "%s (%s): %s\n", qd_row_tap_name(row), qd_mode_name(row->mode), reason);
            xml_append(x, line, 1);
        }
        xml_append(x, "</failure>\n", 0);
    }
    xml_append(x, "  </testcase>\n", 0);
}

int qd_report_write_junit(const qd_report *r, const char *path, qd_err *e) {
    char suite[160], head[512];
    snprintf(suite, sizeof suite, "qwen3-diff.%s-vs-%s", r->name_a, r->name_b);
    int cases = 0, failures = 0;
    for (int step = 0; step < r->steps; step++)
        for (int layer = -1; layer <= r->n_layers; layer++) {
            int l = layer == r->n_layers ? -1 : layer, hd = layer == r->n_layers;
            int count = 0, failing = 0;
            for (int i = 0; i < r->n; i++) {
                const qd_tap_row *row = &r->rows[i];
                if (!qd_row_in_group(row, step, l, hd)) continue;
                count++;
                failing |= qd_verdict_fails(row->verdict);
            }
            cases += count > 0;
            failures += failing;
        }
    xml_buf x = {NULL, 0, 4096, e, 0};
    if (!(x.buf = qd_alloc(x.cap, e))) return QD_ERUNTIME; /* e filled by qd_alloc */
    x.buf[0] = '\0';
    snprintf(head, sizeof head,
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites tests=\"%d\" failures=\"%d\">\n"
             "<testsuite name=\"",
             cases, failures);
    xml_append(&x, head, 0);
    xml_append(&x, suite, 1);
    snprintf(head, sizeof head, "\" tests=\"%d\" failures=\"%d\" errors=\"0\" skipped=\"0\">\n", cases, failures);
    xml_append(&x, head, 0);
    for (int step = 0; step < r->steps; step++) {
        junit_case(r, &x, step, -1, 0, suite);
        for (int l = 0; l < r->n_layers; l++) junit_case(r, &x, step, l, 0, suite);
        junit_case(r, &x, step, -1, 1, suite);
    }
    xml_append(&x, "</testsuite>\n</testsuites>\n", 0);
    int rc = x.failed ? QD_ERUNTIME : qd_write_text_output(path, x.buf, e);
    free(x.buf);
    return rc;
}
