/* test_html.c: the parts of the HTML report checked best from C, on a report built by hand:
 *   - qd_next_tokens_fill: the top ids by logit, ties to the smaller id, NaN never ranked, a vocabulary
 *     smaller than the table, the softmax and its NaN when the row is not all finite;
 *   - the token-text hook (qd_html_context.token_text): without it the next-token table has ids only;
 *     with it, a text column whose text is escaped, empty for an id the hook does not know;
 *   - strings of the report (backend names, the where sentence) escaped wherever they appear;
 *   - the page written atomically: no temporary file left, and a path in a missing directory fails with
 *     QD_ERUNTIME naming it. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>

#define QD_TEST_TMPDIR "/tmp/qd-test-html-XXXXXX"
#include "qd_compare.h"
#include "qd_reports.h"
#include "qd_test_tmpdir.h"

static void next_tokens_rank(void **state) {
    (void)state;
    qd_next_tokens nt;
    memset(&nt, 0, sizeof nt);
    /* 14 logits: 7 and 3 tie at the top, a NaN, an -inf; 12 ranked */
    const float row[14] = {0.5f, 1.0f, 2.0f, 5.0f, -1.0f, NAN, 0.0f, 5.0f, 3.0f, -INFINITY, 1.5f, 4.0f, 0.25f, 0.75f};
    qd_next_tokens_fill(&nt, 0, row, 14, 2, 40);
    assert_int_equal(nt.k, QD_NEXT_TOP);
    assert_int_equal(nt.have[0], 1);
    assert_int_equal(nt.have[1], 0);
    assert_int_equal(nt.step, 2);
    assert_int_equal(nt.pos, 40);
    const int32_t want[QD_NEXT_TOP] = {3, 7, 11, 8, 2, 10, 1, 13, 0, 12};
    for (int i = 0; i < QD_NEXT_TOP; i++) assert_int_equal(nt.id[0][i], want[i]);
    assert_true(isnan(nt.prob[0][0])); /* the row holds a NaN and an -inf: no softmax */

    /* a finite row of 4 logits: k = 4, the softmax sums to 1 */
    const float small[4] = {1.0f, 3.0f, 2.0f, 3.0f};
    qd_next_tokens_fill(&nt, 1, small, 4, 0, 7);
    assert_int_equal(nt.k, 4);
    const int32_t want4[4] = {1, 3, 2, 0};
    double sum = 0;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(nt.id[1][i], want4[i]);
        sum += nt.prob[1][i];
    }
    assert_true(fabs(sum - 1.0) < 1e-12);                                              /* four terms summed in double */
    assert_true(fabs(nt.prob[1][0] - exp(0.0) / (2 + exp(-1.0) + exp(-2.0))) < 1e-15); /* one division */
}

/* A report of one layer's attn_norm and q_rope, q_rope failing, with a where breakdown and both sides'
 * next tokens. Names that need escaping on purpose. */
static void make_report(qd_report *r) {
    qd_blowup bl = {.blowup_ratio = 1000, .growth_factor = 10, .growth_floor = 1e-3};
    qd_report_init(r, "ref<a>", "fp32", "emu&b", "bf16", 1, QD_MODE_FREE, &bl);
    r->replay = 1;
    r->rows = calloc(2, sizeof *r->rows);
    assert_non_null(r->rows);
    r->n = r->cap = 2;
    for (int i = 0; i < 2; i++) {
        qd_tap_row *x = &r->rows[i];
        x->step = 0;
        x->id = qd_tap_layer(0, i ? QD_TAP_Q_ROPE : QD_TAP_ATTN_NORM);
        x->mode = QD_MODE_FREE;
        x->m.rel_l2 = i ? 0.7 : 1e-3;
        x->m.max_abs = i ? 5.0 : 1e-2;
        x->m.max_mag_ref = 4.0;
        x->m.max_mag_test = 4.0;
        x->m.ndim = 3;
        x->m.coord[0] = 7, x->m.coord[1] = 0, x->m.coord[2] = 35;
        x->m.max_abs_index = 1;
        x->prev_rel_l2 = NAN;
        x->judged = 1;
        x->rp[1].have = 1;
        x->rp[1].local.rel_l2 = i ? 0.742 : 1.2e-3;
        x->rp[1].floor.rel_l2 = 1.28e-3;
        x->rp[1].min_floor = 2.2e-3 / 2;
        x->rp[1].ratio = x->rp[1].local.rel_l2 / 1.28e-3;
        x->verdict = i ? QD_V_LOCAL : 0;
    }
    r->first_div = 1;
    r->where.valid = 1;
    snprintf(r->where.summary, sizeof r->where.summary, "channels <1..9> carry 83 %% of the error");
    r->where.axis[QD_AXIS_CHANNEL].len = 64;
    r->where.axis[QD_AXIS_CHANNEL].n_top = 2;
    r->where.axis[QD_AXIS_CHANNEL].top[0] = (qd_where_entry){35, 0.09, 1.75, 1.2, 0};
    r->where.axis[QD_AXIS_CHANNEL].top[1] = (qd_where_entry){5, 0.08, 1.7, 1.3, 0};
    const float la[5] = {0, 1, 4, 2, 3}, lb[5] = {0, 1, 2, 4, 3};
    qd_next_tokens_fill(&r->next, 0, la, 5, 0, 15);
    qd_next_tokens_fill(&r->next, 1, lb, 5, 0, 15);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static const char *token_text(void *ctx, int32_t id) {
    (void)ctx;
    return id == 2 ? "<b>&tok" : id == 3 ? " the" : NULL;
}

static void hook_and_escaping(void **state) {
    (void)state;
    qd_report r;
    make_report(&r);
    char plain[4200], hooked[4200];
    snprintf(plain, sizeof plain, "%s/plain.html", tmpdir);
    snprintf(hooked, sizeof hooked, "%s/hooked.html", tmpdir);
    qd_err e;
    qd_err_clear(&e);
    qd_html_context cx = {.tool_version = "test"};
    assert_int_equal(qd_report_write_html(&r, &cx, plain, &e), QD_OK);
    cx.token_text = (qd_token_text){token_text, NULL};
    assert_int_equal(qd_report_write_html(&r, &cx, hooked, &e), QD_OK);
    char *p = slurp(plain), *h = slurp(hooked);

    /* ids only without the hook; with it, a text column per side, escaped, empty where it has none */
    assert_null(strstr(p, "class=\"tok\""));
    assert_null(strstr(p, "<th>text</th>"));
    assert_non_null(strstr(h, "<th>text</th>"));
    assert_non_null(strstr(h, "<td class=\"tok\"><code>&lt;b&gt;&amp;tok</code></td>"));
    assert_non_null(strstr(h, "<td class=\"tok\"><code> the</code></td>"));
    assert_non_null(strstr(h, "<td class=\"tok\"></td>"));
    assert_null(strstr(h, "<b>&tok"));
    /* A's top is id 2, B's is id 3: B ranks A's top third */
    assert_non_null(strstr(p, "ref&lt;a&gt;&#39;s top token is emu&amp;b&#39;s number 3."));

    /* every name and sentence escaped: no raw '<a>' or '&b' anywhere */
    assert_null(strstr(p, "ref<a>"));
    assert_null(strstr(p, "emu&b"));
    assert_non_null(strstr(p, "channels &lt;1..9&gt; carry 83 % of the error"));
    assert_non_null(strstr(p, "id=\"fd-layer\">0</dd>"));
    assert_non_null(strstr(p, "id=\"fd-op\">q_rope</dd>"));
    free(p);
    free(h);

    /* nothing left beside the two pages */
    DIR *dir = opendir(tmpdir);
    assert_non_null(dir);
    int files = 0;
    for (struct dirent *de; (de = readdir(dir));) {
        if (de->d_name[0] == '.') continue;
        assert_null(strstr(de->d_name, ".tmp."));
        files++;
    }
    closedir(dir);
    assert_int_equal(files, 2);
    /* an output in a directory that does not exist is bad input (exit 2, qd_out_open), named in the message */
    char bad[4200];
    snprintf(bad, sizeof bad, "%s/no/such/dir/page.html", tmpdir);
    assert_int_equal(qd_report_write_html(&r, &cx, bad, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "no/such/dir"));
    qd_report_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(next_tokens_rank),
        cmocka_unit_test(hook_and_escaping),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
