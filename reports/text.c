/* text.c: what a person reads on the terminal (qd_report_print, qd_reports.h): the first divergence line,
 * with its place, magnitudes, reason and the values there, where inside the tap the error lives, then a
 * compact per-layer table per step. */
#include <math.h>
#include <stdio.h>

#include "qd_reports.h"
#include "shared.h"

#define RED(c) ((c) ? "\033[1;31m" : "")
#define GREEN(c) ((c) ? "\033[32m" : "")
#define BOLD(c) ((c) ? "\033[1m" : "")
#define RESET(c) ((c) ? "\033[0m" : "")

/* Where inside the first divergence's tap the error lives (qd_localise.h): the sentence, then the heaviest
 * index of each axis. The breakdown is of the two sides' difference at that tap. */
static void print_where(const qd_report *r, FILE *f) {
    if (r->first_div < 0 || !r->where.valid) return;
    char top[512];
    fprintf(f, "  where: %s\n", r->where.summary);
    if (qd_where_top_line(&r->where, top, sizeof top) > 0) fprintf(f, "  top: %s\n", top);
}

static void print_first_divergence(const qd_report *r, FILE *f, int color) {
    if (r->first_div < 0) {
        fprintf(f, "%sno divergence%s: every shared tap of %s vs %s is within tolerance (%s mode)\n", GREEN(color),
                RESET(color), r->name_a, r->name_b, qd_mode_name(r->locate));
        return;
    }
    const qd_tap_row *row = &r->rows[r->first_div];
    char place[96], where[96], reason[512];
    qd_row_place(row, place, sizeof place);
    qd_metrics_where(&row->m, where, sizeof where);
    qd_row_reason(r, row, reason, sizeof reason);
    fprintf(f, "%sfirst divergence%s%s: %s — max|%s| %.3g vs max|%s| %.3g at %s (%s)\n", RED(color),
            r->isolated ? (row->mode == QD_MODE_ISOLATED ? " (isolated)" : " (free-running)") : "", RESET(color), place,
            r->name_a, row->m.max_mag_ref, r->name_b, row->m.max_mag_test, where, qd_verdict_class(row->verdict));
    fprintf(f, "  why: %s; there %s = %.6g, %s = %.6g\n", reason, r->name_a, row->m.ref_at, r->name_b, row->m.test_at);
    print_where(r, f);
}

/* The per-layer table's metric columns, each a field of QD_METRICS_FIELDS (compare/qd_metrics.h) under its
 * own name: the figure of the layer's worst tap (WORST: the largest rel_l2) or the largest over the
 * layer's taps (LARGEST: a blow-up shows on whichever tap it hits), in a printf format 9 wide. */
#define TABLE_COLUMNS(C)       \
    C(rel_l2, WORST, "%9.2e")  \
    C(max_abs, WORST, "%9.2e") \
    C(mag_ratio, LARGEST, "%9.3g")

#define COLUMN_INDEX(name, agg, fmt) COL_##name,
enum { TABLE_COLUMNS(COLUMN_INDEX) NUM_COLUMNS };
#undef COLUMN_INDEX

/* The row a table line names, in its "worst" column and its status alike: a failing row outranks every
 * passing one (the first failing row in data-flow order, where the group's divergence starts, as the
 * first divergence line counts), else the largest figure. The two columns once chose separately (the
 * largest rel_l2, the first failure) and named different taps on one line. */
static int outranks(const qd_tap_row *row, double fig, const qd_tap_row *best, double best_fig) {
    if (!best) return 1;
    int fails = qd_verdict_fails(row->verdict), best_fails = qd_verdict_fails(best->verdict);
    if (fails != best_fails) return fails;
    if (fails) return 0; /* both fail: the earlier stays */
    return fig > best_fig || (isnan(best_fig) && !isnan(fig));
}

/* The named row of one (step, layer, mode) group of rows (outranks), and each column's largest. */
typedef struct {
    const qd_tap_row *worst, *first_fail;
    double largest[NUM_COLUMNS]; /* 0 when no row is larger; NAN never wins */
    int n;
} layer_summary;

#define WORST(s, name) ((s).worst->m.name)
#define LARGEST(s, name) ((s).largest[COL_##name])

static layer_summary summarise(const qd_report *r, int step, int layer, qd_mode mode, int head) {
    layer_summary s = {NULL, NULL, {0}, 0};
    for (int i = 0; i < r->n; i++) {
        const qd_tap_row *row = &r->rows[i];
        if (row->mode != mode || !qd_row_in_group(row, step, layer, head)) continue;
        s.n++;
        if (outranks(row, row->m.rel_l2, s.worst, s.worst ? s.worst->m.rel_l2 : NAN)) s.worst = row;
        if (!s.first_fail && qd_verdict_fails(row->verdict)) s.first_fail = row;
#define FOLD(name, agg, fmt) \
    if (row->m.name > s.largest[COL_##name]) s.largest[COL_##name] = row->m.name;
        TABLE_COLUMNS(FOLD)
#undef FOLD
    }
    return s;
}

/* A table row's first column: the layer, or embed / head, right-aligned in 5. */
static void group_label(int layer, int head, char *name, size_t n) {
    if (layer >= 0) snprintf(name, n, "%5d", layer);
    else snprintf(name, n, "%5s", head ? "head" : "embed");
}

static void print_layer_row(const qd_report *r, FILE *f, int color, int step, int layer, int head) {
    layer_summary fr = summarise(r, step, layer, QD_MODE_FREE, head);
    if (fr.n == 0) return;
    layer_summary is = summarise(r, step, layer, QD_MODE_ISOLATED, head);
    char name[16];
    group_label(layer, head, name, sizeof name);
    fprintf(f, "%s  %-14s", name, qd_row_tap_name(fr.worst));
#define VALUE(name, agg, fmt) fprintf(f, " " fmt, agg(fr, name));
    TABLE_COLUMNS(VALUE)
#undef VALUE
    if (r->isolated) {
        if (is.n) fprintf(f, "  %-14s %9.2e", qd_row_tap_name(is.worst), is.worst->m.rel_l2);
        else fprintf(f, "  %-14s %9s", "-", "-");
    }
    const qd_tap_row *ff = fr.first_fail ? fr.first_fail : is.first_fail;
    if (ff)
        fprintf(f, "  %sFAIL%s %s%s: %s\n", RED(color), RESET(color), qd_row_tap_name(ff),
                ff->mode == QD_MODE_ISOLATED ? " (isolated)" : "", qd_verdict_class(ff->verdict));
    else fprintf(f, "  %sok%s\n", GREEN(color), RESET(color));
}

// ----------------------------------------------------------------------------
// the replay verdict: each op judged by its local error over its noise floor (compare/qd_replay.h)

static const qd_replay_op *judged_op(const qd_tap_row *row) { return row->judged >= 0 ? &row->rp[row->judged] : NULL; }

static double judged_ratio(const qd_tap_row *row) {
    const qd_replay_op *op = judged_op(row);
    return op ? op->ratio : NAN;
}

static void print_replay_first_divergence(const qd_report *r, FILE *f, int color) {
    if (r->first_div < 0) {
        if (r->single)
            fprintf(f, "%sno divergence%s: every op of %s is within %gx its noise floor\n", GREEN(color), RESET(color),
                    r->name_a, r->threshold);
        else
            fprintf(f,
                    "%sno divergence%s: every op of %s and of %s is within %gx its noise floor (%s mode; each replayed "
                    "on its own inputs)\n",
                    GREEN(color), RESET(color), r->name_a, r->name_b, r->threshold, qd_mode_name(r->locate));
    } else {
        const qd_tap_row *row = &r->rows[r->first_div];
        const qd_replay_op *op = judged_op(row);
        const char *side = qd_row_side_name(r, row);
        char place[96], where[96], reason[640];
        qd_row_place(row, place, sizeof place);
        qd_metrics_where(&op->local, where, sizeof where);
        qd_row_reason(r, row, reason, sizeof reason);
        fprintf(f,
                "%sfirst divergence%s%s: %s — on %s%s: local error %.3g = %.3gx the noise floor, max|%s| %.3g vs "
                "max|oracle| %.3g at %s (%s)\n",
                RED(color), r->isolated ? (row->mode == QD_MODE_ISOLATED ? " (isolated)" : " (free-running)") : "",
                RESET(color), place, side,
                r->single     ? ""
                : row->judged ? " (the test side)"
                              : " (the reference side)",
                op->local.rel_l2, op->ratio, side, op->local.max_mag_test, op->local.max_mag_ref, where,
                qd_verdict_class(row->verdict));
        fprintf(f, "  why: %s; there %s = %.6g, oracle = %.6g", reason, side, op->local.test_at, op->local.ref_at);
        if (!r->single) fprintf(f, "; inherited: %s vs %s rel_l2 %.3g", r->name_a, r->name_b, row->m.rel_l2);
        fprintf(f, "\n");
        print_where(r, f);
    }
    if (r->worst_inherited >= 0) {
        const qd_tap_row *w = &r->rows[r->worst_inherited];
        char place[96];
        qd_row_place(w, place, sizeof place);
        fprintf(f, "  inherited: largest %s vs %s error rel_l2 %.3g at %s (%s)%s\n", r->name_a, r->name_b, w->m.rel_l2,
                place, qd_mode_name(w->mode),
                qd_verdict_fails(w->verdict) ? ""
                                             : ": carried in from earlier ops and steps, its op's local error is "
                                               "within its floor");
    }
}

/* The worst row by judged ratio of a (step, layer, mode) group, and the group's largest inherited rel_l2. */
typedef struct {
    const qd_tap_row *worst, *first_fail;
    double inherited;
    int n;
} replay_summary;

static replay_summary summarise_replay(const qd_report *r, int step, int layer, qd_mode mode, int head) {
    replay_summary s = {NULL, NULL, 0.0, 0};
    for (int i = 0; i < r->n; i++) {
        const qd_tap_row *row = &r->rows[i];
        if (row->mode != mode || !qd_row_in_group(row, step, layer, head)) continue;
        s.n++;
        if (outranks(row, judged_ratio(row), s.worst, s.worst ? judged_ratio(s.worst) : NAN)) s.worst = row;
        if (!s.first_fail && qd_verdict_fails(row->verdict)) s.first_fail = row;
        if (row->m.rel_l2 > s.inherited) s.inherited = row->m.rel_l2;
    }
    return s;
}

static void print_replay_layer_row(const qd_report *r, FILE *f, int color, int step, int layer, int head) {
    replay_summary fr = summarise_replay(r, step, layer, QD_MODE_FREE, head);
    if (fr.n == 0) return;
    replay_summary is = summarise_replay(r, step, layer, QD_MODE_ISOLATED, head);
    char name[16];
    group_label(layer, head, name, sizeof name);
    const qd_replay_op *op = judged_op(fr.worst);
    fprintf(f, "%s  %-14s", name, qd_row_tap_name(fr.worst));
    if (op)
        fprintf(f, " %8.3g %9.2e %9.2e  %-6.6s", op->ratio, op->local.rel_l2,
                op->floor.rel_l2 > op->min_floor ? op->floor.rel_l2 : op->min_floor, qd_row_side_name(r, fr.worst));
    else fprintf(f, " %8s %9s %9s  %-6s", "-", "-", "-", "-");
    fprintf(f, " %9.2e", fr.inherited);
    if (r->isolated) {
        if (is.n && judged_op(is.worst)) fprintf(f, "  %-14s %8.3g", qd_row_tap_name(is.worst), judged_ratio(is.worst));
        else fprintf(f, "  %-14s %8s", "-", "-");
    }
    const qd_tap_row *ff = fr.first_fail ? fr.first_fail : is.first_fail;
    if (ff)
        fprintf(f, "  %sFAIL%s %s%s on %s: %s\n", RED(color), RESET(color), qd_row_tap_name(ff),
                ff->mode == QD_MODE_ISOLATED ? " (isolated)" : "", qd_row_side_name(r, ff),
                qd_verdict_class(ff->verdict));
    else fprintf(f, "  %sok%s\n", GREEN(color), RESET(color));
}

/* `qwen3-diff replay`: every op of one engine, one line each. */
static void print_single(const qd_report *r, FILE *f, int color) {
    fprintf(f, "%5s  %-14s %9s %9s %8s  %s\n", "layer", "op", "local", "floor", "ratio", "verdict");
    for (int i = 0; i < r->n; i++) {
        const qd_tap_row *row = &r->rows[i];
        const qd_replay_op *op = &row->rp[0];
        char pos[16];
        qd_tap_id_pos_label(row->id, pos, sizeof pos);
        int fails = qd_verdict_fails(row->verdict);
        fprintf(f, "%5s  %-14s %9.2e %9.2e %8.3g  %s%s%s\n", pos, qd_row_tap_name(row), op->local.rel_l2,
                op->floor.rel_l2 > op->min_floor ? op->floor.rel_l2 : op->min_floor, op->ratio,
                fails ? RED(color) : GREEN(color), fails ? qd_verdict_class(row->verdict) : "ok", RESET(color));
    }
}

static void print_replay(const qd_report *r, FILE *f, int color) {
    if (r->single)
        fprintf(f,
                "%s%s (%s)%s: %d layers, %d ops replayed; local error vs the oracle (fp32, f64 accumulation), "
                "noise floor of its precision, threshold %gx\n",
                BOLD(color), r->name_a, r->prec_a, RESET(color), r->n_layers, r->n, r->threshold);
    else
        fprintf(f,
                "%sreference %s (%s) vs test %s (%s)%s: %d layers, %d taps compared%s; each op replayed on each side's "
                "own inputs, "
                "threshold %gx the noise floor\n",
                BOLD(color), r->name_a, r->prec_a, r->name_b, r->prec_b, RESET(color), r->n_layers, r->n,
                r->steps > 1 ? ", prompt and decode steps" : "", r->threshold);
    print_replay_first_divergence(r, f, color);
    if (r->single) {
        print_single(r, f, color);
        return;
    }
    for (int step = 0; step < r->steps; step++) {
        if (r->steps > 1) fprintf(f, "\n%s\n", step == 0 ? "prompt:" : "");
        if (step > 0) fprintf(f, "decode step %d:\n", step);
        fprintf(f, "%5s  %-14s %8s %9s %9s  %-6s %9s", "layer", "worst op", "ratio", "local", "floor", "side",
                "inherited");
        if (r->isolated) fprintf(f, "  %-14s %8s", "isolated worst", "ratio");
        fprintf(f, "  status\n");
        print_replay_layer_row(r, f, color, step, -1, 0);
        for (int l = 0; l < r->n_layers; l++) print_replay_layer_row(r, f, color, step, l, 0);
        print_replay_layer_row(r, f, color, step, -1, 1);
    }
}

/* Each side's next-token candidates at the last position with logits (after the prompt, or the last decode step),
 * with their text, when the checkpoint's tokenizer is known: where the two sides' top tokens differ, the divergence
 * changed what the model would say. The text report shows the first QD_TEXT_TOP of the QD_NEXT_TOP kept. */
#define QD_TEXT_TOP 5
static void print_next_tokens(const qd_report *r, FILE *f) {
    const qd_next_tokens *nt = &r->next;
    if (!r->tok || !nt->k || !nt->have[0]) return;
    const int k = nt->k < QD_TEXT_TOP ? nt->k : QD_TEXT_TOP;
    if (nt->step == 0) fprintf(f, "next token after the prompt (top %d: id 'text' logit):\n", k);
    else fprintf(f, "next token after decode step %d, position %d (top %d: id 'text' logit):\n", nt->step, nt->pos, k);
    for (int side = 0; side < 2; side++) {
        if (!nt->have[side]) continue;
        fprintf(f, "  %-6s", side ? r->name_b : r->name_a);
        for (int j = 0; j < k; j++) {
            char text[64];
            qd_tok_token_text(r->tok, nt->id[side][j], text, sizeof text);
            fprintf(f, "%s %d '%s' %.4g", j ? "," : "", nt->id[side][j], text, nt->logit[side][j]);
        }
        fprintf(f, "\n");
    }
    if (nt->have[1] && nt->id[0][0] != nt->id[1][0])
        fprintf(f, "  the greedy next token differs: %s %d vs %s %d\n", r->name_a, nt->id[0][0], r->name_b,
                nt->id[1][0]);
}

void qd_report_print(const qd_report *r, FILE *f, int color) {
    if (r->replay) {
        print_replay(r, f, color);
        goto only;
    }
    fprintf(f, "%sreference %s (%s) vs test %s (%s)%s: %d layers, %d taps compared%s\n", BOLD(color), r->name_a,
            r->prec_a, r->name_b, r->prec_b, RESET(color), r->n_layers, r->n,
            r->steps > 1 ? ", prompt and decode steps" : "");
    print_first_divergence(r, f, color);
    for (int step = 0; step < r->steps; step++) {
        if (r->steps > 1) fprintf(f, "\n%s\n", step == 0 ? "prompt:" : "");
        if (step > 0) fprintf(f, "decode step %d:\n", step);
        fprintf(f, "%5s  %-14s", "layer", "worst tap");
#define HEADER(name, agg, fmt) fprintf(f, " %9s", #name);
        TABLE_COLUMNS(HEADER)
#undef HEADER
        if (r->isolated) fprintf(f, "  %-14s %9s", "isolated worst", "rel_l2");
        fprintf(f, "  status\n");
        print_layer_row(r, f, color, step, -1, 0);
        for (int l = 0; l < r->n_layers; l++) print_layer_row(r, f, color, step, l, 0);
        print_layer_row(r, f, color, step, -1, 1);
    }
only:
    if (r->n_only_a || r->n_only_b) {
        for (int side = 0; side < 2; side++) {
            int n = side ? r->n_only_b : r->n_only_a;
            if (!n) continue;
            fprintf(f, "taps only in %s (not compared):", side ? r->name_b : r->name_a);
            for (int i = 0; i < n; i++) fprintf(f, "%s %s", i ? "," : "", side ? r->only_b[i] : r->only_a[i]);
            fprintf(f, "\n");
        }
    }
    print_next_tokens(r, f);
}
