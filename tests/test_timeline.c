/* test_timeline.c: the block-timeline summaries (fused/qd_timeline.h) on hand-made records. Times are
 * small multiples of 0.25, exact in double, so every expected figure is exact: compared with ==. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qd_timeline.h"

static qd_err err;

static void test_kernel_names(void **state) {
    (void)state;
    assert_string_equal(qd_tl_kernel(0, 2), "q/k/v");
    assert_string_equal(qd_tl_kernel(1, 2), "attention");
    assert_string_equal(qd_tl_kernel(2, 2), "o_proj");
    assert_string_equal(qd_tl_kernel(3, 2), "gate/up");
    assert_string_equal(qd_tl_kernel(4, 2), "down_proj");
    assert_string_equal(qd_tl_kernel(9, 2), "down_proj"); /* layer 1's */
    assert_string_equal(qd_tl_kernel(10, 2), "head");     /* 2 layers x 5 kernels */
    assert_null(qd_tl_kernel(11, 2));
    assert_null(qd_tl_kernel(-1, 2));
}

/* A launch of nb blocks: block b starts at s + b, waits until w + b, is ready at w + b + 0.5, ends at
 * e + b. */
static int add_launch(qd_tl_rec *r, int n, int launch, int nb, double s, double w, double e) {
    for (int b = 0; b < nb; b++)
        r[n++] = (qd_tl_rec){.launch = launch,
                             .block = b,
                             .sm = b,
                             .start = s + b,
                             .wait = w + b,
                             .ready = w + b + 0.5,
                             .end = e + b,
                             .mark = -1};
    return n;
}

/* Two layers and the head, records given in reverse order of launch */
static int two_layers(qd_tl_rec *r) {
    int n = 0;
    n = add_launch(r, n, 10, 3, 40, 50, 60); /* head: wait 50..52, end 60..62 */
    for (int l = 1; l >= 0; l--)
        for (int k = 4; k >= 0; k--) {
            const double t0 = l * 20 + k * 4; /* launch l*5+k waits from t0 + 1, ends at t0 + 3.25 .. */
            n = add_launch(r, n, l * 5 + k, 2, t0, t0 + 1, t0 + 2.25 + 0.25 * l);
        }
    return n;
}

static void test_launches(void **state) {
    (void)state;
    qd_tl_rec r[64];
    qd_tl_launch l[16];
    const int n = two_layers(r);
    assert_int_equal(n, 23);
    assert_int_equal(qd_tl_launches(r, n, 2, l, 16, &err), 11);
    for (int i = 0; i < 11; i++) assert_int_equal(l[i].launch, i); /* launch order whatever the input order */
    /* layer 1, o_proj: launch 7, t0 = 28; blocks 0 and 1 */
    const qd_tl_launch *o = &l[7];
    assert_int_equal(o->layer, 1);
    assert_string_equal(o->kernel, "o_proj");
    assert_int_equal(o->blocks, 2);
    assert_true(o->start_first == 28 && o->start_last == 29);
    assert_true(o->wait_first == 29 && o->wait_last == 30);
    assert_true(o->ready_last == 30.5);
    assert_true(o->end_first == 30.5 && o->end_last == 31.5);
    const qd_tl_launch *h = &l[10];
    assert_int_equal(h->layer, -1);
    assert_string_equal(h->kernel, "head");
    assert_int_equal(h->blocks, 3);
    assert_true(h->wait_first == 50 && h->end_last == 62 && h->ready_last == 52.5);
    /* a launch without records is left out */
    assert_int_equal(qd_tl_launches(r + 3, n - 3, 2, l, 16, &err), 10);
    assert_int_equal(l[9].launch, 9);
}

static void test_launches_refused(void **state) {
    (void)state;
    qd_tl_rec r[64];
    qd_tl_launch l[16];
    const int n = two_layers(r);
    assert_int_equal(qd_tl_launches(r, n, 2, l, 10, &err), -1); /* 11 launches, room for 10 */
    assert_int_equal(err.code, QD_EINPUT);
    r[5].launch = 11; /* outside a 2-layer chain */
    assert_int_equal(qd_tl_launches(r, n, 2, l, 16, &err), -1);
    r[5].launch = -1;
    assert_int_equal(qd_tl_launches(r, n, 2, l, 16, &err), -1);
    assert_non_null(strstr(err.msg, "outside the chain"));
}

/* The launches of n records of two layers into l (room for 16: all 11 of them) and their kinds into k */
static void summarise(const qd_tl_rec *r, int n, qd_tl_launch *l, qd_tl_kind *k) {
    assert_int_equal(qd_tl_launches(r, n, 2, l, 16, &err), 11);
    assert_int_equal(qd_tl_kinds(l, 11, k, &err), QD_OK);
}

static void test_kinds(void **state) {
    (void)state;
    qd_tl_rec r[64];
    qd_tl_launch l[16];
    qd_tl_kind k[QD_TL_KINDS];
    summarise(r, two_layers(r), l, k);
    /* layer l kernel k: wait_first = t0 + 1, ready_last = t0 + 2.5, end_last = t0 + 3.25 + 0.25 l, so
     * after wait 2.25 + 0.25 l (median of layers 0 and 1: 2.375), after ready 0.75 + 0.25 l (0.875) */
    for (int q = 0; q < QD_TL_SLOTS; q++) {
        assert_int_equal(k[q].launches, 2);
        assert_true(k[q].after_wait == 2.375);
        assert_true(k[q].after_ready == 0.875);
    }
    /* to the next launch's first wait: within a layer t0 + 4 + 1 - (t0 + 3.25 + 0.25 l) = 1.75 - 0.25 l;
     * down_proj of layer 0 to q/k/v of layer 1: 21 - 19.25 = 1.75; down_proj of layer 1 to the head:
     * 50 - 39.5 = 10.5 */
    assert_true(k[QD_TL_QKV].gap_to_next == 1.625);
    assert_true(k[QD_TL_DOWN].gap_to_next == (1.75 + 10.5) / 2);
    assert_string_equal(k[QD_TL_SLOTS].kernel, "head");
    assert_int_equal(k[QD_TL_SLOTS].launches, 1);
    assert_true(k[QD_TL_SLOTS].after_wait == 12 && k[QD_TL_SLOTS].after_ready == 9.5);
    assert_true(k[QD_TL_SLOTS].gap_to_next == 0); /* nothing after the head */
    /* every launch's two blocks wait and end 1 us apart, the head's three 2 us apart */
    for (int q = 0; q < QD_TL_SLOTS; q++) assert_true(k[q].wait_spread == 1 && k[q].tail == 1);
    assert_true(k[QD_TL_SLOTS].wait_spread == 2 && k[QD_TL_SLOTS].tail == 2);
    /* no launches at all: zeros */
    assert_int_equal(qd_tl_kinds(l, 0, k, &err), QD_OK);
    for (int q = 0; q < QD_TL_KINDS; q++) assert_true(k[q].launches == 0 && k[q].after_wait == 0);
}

/* A late block in one layer's attention: the spreads are medians over the layers, per kernel */
static void test_kinds_spread(void **state) {
    (void)state;
    qd_tl_rec r[64];
    qd_tl_launch l[16];
    qd_tl_kind k[QD_TL_KINDS];
    const int n = two_layers(r);
    for (int i = 0; i < n; i++)
        if (r[i].launch == QD_TL_ATTN && r[i].block == 1) { /* layer 0's attention, its second block */
            r[i].wait += 0.5;
            r[i].ready += 0.5;
            r[i].end += 2;
        }
    summarise(r, n, l, k);
    /* layer 0: wait spread 1.5, tail 3; layer 1: 1 and 1 */
    assert_true(k[QD_TL_ATTN].wait_spread == 1.25 && k[QD_TL_ATTN].tail == 2);
    /* after wait: layer 0 now 4.25 (end_last t0 + 5.25 - wait_first t0 + 1), layer 1 2.5 */
    assert_true(k[QD_TL_ATTN].after_wait == 3.375);
    for (int q = 0; q < QD_TL_KINDS; q++)
        if (q != QD_TL_ATTN) assert_true(k[q].tail == (q == QD_TL_SLOTS ? 2 : 1));
}

/* Marks (the attention's counter passed) on the attention launches only: per launch the latest, per kernel
 * the median of (last end - last mark); the other kernels have none */
static void test_marks(void **state) {
    (void)state;
    qd_tl_rec r[64];
    qd_tl_launch l[16];
    qd_tl_kind k[QD_TL_KINDS];
    const int n = two_layers(r);
    for (int i = 0; i < n; i++)
        if (r[i].launch % QD_TL_SLOTS == QD_TL_ATTN && r[i].launch < 10) /* block b of layer l: t0 + 2 + b/4 */
            r[i].mark = (r[i].launch / QD_TL_SLOTS) * 20 + QD_TL_ATTN * 4 + 2 + 0.25 * r[i].block;
    summarise(r, n, l, k);
    assert_true(l[QD_TL_ATTN].mark_last == 6.25 && l[QD_TL_SLOTS + QD_TL_ATTN].mark_last == 26.25);
    assert_true(l[QD_TL_QKV].mark_last == -1 && l[10].mark_last == -1);
    /* end_last: t0 + 3.25 + 0.25 l, so after the mark 1 + 0.25 l: median 1.125 */
    assert_int_equal(k[QD_TL_ATTN].marked, 2);
    assert_true(k[QD_TL_ATTN].after_mark == 1.125);
    for (int q = 0; q < QD_TL_KINDS; q++)
        if (q != QD_TL_ATTN) assert_true(k[q].marked == 0 && k[q].after_mark == 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernel_names),     cmocka_unit_test(test_launches),
        cmocka_unit_test(test_launches_refused), cmocka_unit_test(test_kinds),
        cmocka_unit_test(test_kinds_spread),     cmocka_unit_test(test_marks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
