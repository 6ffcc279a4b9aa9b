/* test_taps.c: a tap's identity (common/qd_taps.h): execution order, names both ways, shapes, the table
 * row labels, embed and the head kept apart although both sit outside the layers, and qd_tap_emit's
 * contract with a sink (the shape it computes, a failing sink's message and code passed through). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qd_taps.h"

enum { L = 3 };

/* Every size distinct, so a shape with the wrong dimension cannot pass by luck. */
static qd_config small_config(void) {
    qd_config c = {0};
    c.vocab_size = 50;
    c.hidden_size = 16;
    c.intermediate_size = 28;
    c.num_hidden_layers = L;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 6;
    return c;
}

/* Every tap of an L-layer run in execution order, written out independently of qd_tap_id_cmp. */
static int all_ids(qd_tap_id *out) {
    int n = 0;
    out[n++] = (qd_tap_id){QD_POS_EMBED, -1, QD_TAP_EMBED};
    for (int l = 0; l < L; l++)
        for (int t = 0; t < QD_NUM_LAYER_TAPS; t++) out[n++] = (qd_tap_id){QD_POS_LAYER, l, t};
    out[n++] = (qd_tap_id){QD_POS_HEAD, -1, QD_TAP_FINAL_NORM};
    out[n++] = (qd_tap_id){QD_POS_HEAD, -1, QD_TAP_LOGITS};
    return n;
}

static void test_constructors(void **state) {
    (void)state;
    qd_tap_id e = qd_tap_model(QD_TAP_EMBED), f = qd_tap_model(QD_TAP_FINAL_NORM);
    qd_tap_id g = qd_tap_model(QD_TAP_LOGITS), k = qd_tap_layer(2, QD_TAP_K_NORM);
    assert_int_equal(e.pos, QD_POS_EMBED);
    assert_int_equal(e.layer, -1);
    assert_int_equal(f.pos, QD_POS_HEAD);
    assert_int_equal(f.layer, -1);
    assert_int_equal(g.pos, QD_POS_HEAD);
    assert_int_equal(k.pos, QD_POS_LAYER);
    assert_int_equal(k.layer, 2);
    assert_int_equal(k.tap, QD_TAP_K_NORM);
    assert_true(qd_tap_id_valid(e) && qd_tap_id_valid(f) && qd_tap_id_valid(g) && qd_tap_id_valid(k));
    /* inconsistent ids */
    assert_false(qd_tap_id_valid(qd_tap_layer(-1, QD_TAP_ACT)));
    assert_false(qd_tap_id_valid(qd_tap_layer(0, QD_NUM_LAYER_TAPS)));
    assert_false(qd_tap_id_valid(qd_tap_layer(0, -1)));
    assert_false(qd_tap_id_valid((qd_tap_id){QD_POS_EMBED, -1, QD_TAP_LOGITS}));
    assert_false(qd_tap_id_valid((qd_tap_id){QD_POS_HEAD, -1, QD_TAP_EMBED}));
    assert_false(qd_tap_id_valid((qd_tap_id){QD_POS_HEAD, 0, QD_TAP_LOGITS}));
    assert_false(qd_tap_id_valid((qd_tap_id){(qd_tap_pos)7, -1, 0}));
    assert_string_equal(qd_tap_id_name(qd_tap_layer(0, QD_NUM_LAYER_TAPS)), "?");
}

/* Embed and the head's taps both have layer -1: only the position tells embed from final_norm. */
static void test_embed_and_head_distinct(void **state) {
    (void)state;
    qd_tap_id e = qd_tap_model(QD_TAP_EMBED), f = qd_tap_model(QD_TAP_FINAL_NORM);
    assert_false(qd_tap_id_equal(e, f));
    assert_true(qd_tap_id_equal(e, qd_tap_model(QD_TAP_EMBED)));
    assert_true(qd_tap_id_cmp(e, f) < 0);
    /* embed before every layer tap, the head after every one, whatever the layer */
    for (int l = 0; l < 1000; l += 111) {
        assert_true(qd_tap_id_cmp(e, qd_tap_layer(l, QD_TAP_ATTN_NORM)) < 0);
        assert_true(qd_tap_id_cmp(f, qd_tap_layer(l, QD_TAP_OUT)) > 0);
    }
    char buf[16];
    assert_string_equal(qd_tap_id_pos_label(e, buf, sizeof buf), "embed");
    assert_string_equal(qd_tap_id_pos_label(f, buf, sizeof buf), "head");
    assert_string_equal(qd_tap_id_pos_label(qd_tap_model(QD_TAP_LOGITS), buf, sizeof buf), "head");
    assert_string_equal(qd_tap_id_pos_label(qd_tap_layer(3, QD_TAP_ACT), buf, sizeof buf), "3");
    assert_string_equal(qd_tap_id_pos_label(qd_tap_layer(27, QD_TAP_OUT), buf, sizeof buf), "27");
}

static void test_execution_order(void **state) {
    (void)state;
    qd_tap_id ids[1 + L * QD_NUM_LAYER_TAPS + 2];
    int n = all_ids(ids);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            int c = qd_tap_id_cmp(ids[i], ids[j]);
            if ((i < j && c >= 0) || (i > j && c <= 0) || (i == j && c != 0))
                fail_msg("cmp(%s of layer %d, %s of layer %d) = %d", qd_tap_id_name(ids[i]), ids[i].layer,
                         qd_tap_id_name(ids[j]), ids[j].layer, c);
            assert_int_equal(qd_tap_id_equal(ids[i], ids[j]), i == j);
        }
    /* layer order wins over tap order: layer 0's out before layer 1's attn_norm */
    assert_true(qd_tap_id_cmp(qd_tap_layer(0, QD_TAP_OUT), qd_tap_layer(1, QD_TAP_ATTN_NORM)) < 0);
}

static void test_names_both_ways(void **state) {
    (void)state;
    static const char *const layer_names[QD_NUM_LAYER_TAPS] = {
        "attn_norm", "q_proj",        "k_proj",   "v_proj",    "q_norm",  "k_norm", "q_rope",    "k_rope", "attn",
        "o_proj",    "attn_residual", "mlp_norm", "gate_proj", "up_proj", "act",    "down_proj", "out",
    };
    qd_tap_id ids[1 + L * QD_NUM_LAYER_TAPS + 2];
    int n = all_ids(ids);
    for (int i = 0; i < n; i++) {
        const char *name = qd_tap_id_name(ids[i]);
        if (ids[i].pos == QD_POS_LAYER) assert_string_equal(name, layer_names[ids[i].tap]);
        qd_tap_id back = {QD_POS_EMBED, 99, 99};
        assert_int_equal(qd_tap_id_parse(name, ids[i].layer, &back), 0);
        if (!qd_tap_id_equal(back, ids[i]))
            fail_msg("%s of layer %d parsed back as pos %d layer %d tap %d", name, ids[i].layer, (int)back.pos,
                     back.layer, back.tap);
    }
    assert_string_equal(qd_tap_id_name(qd_tap_model(QD_TAP_EMBED)), "embed");
    assert_string_equal(qd_tap_id_name(qd_tap_model(QD_TAP_FINAL_NORM)), "final_norm");
    assert_string_equal(qd_tap_id_name(qd_tap_model(QD_TAP_LOGITS)), "logits");
    /* names that are not taps where they are looked up */
    qd_tap_id out = qd_tap_layer(5, QD_TAP_ACT);
    assert_int_equal(qd_tap_id_parse("activation", 0, &out), -1);
    assert_int_equal(qd_tap_id_parse("act", -1, &out), -1);  /* a layer tap outside the layers */
    assert_int_equal(qd_tap_id_parse("embed", 0, &out), -1); /* a model tap inside a layer */
    assert_int_equal(qd_tap_id_parse("logits", 2, &out), -1);
    assert_int_equal(qd_tap_id_parse("", 0, &out), -1);
    assert_int_equal(qd_tap_id_parse(NULL, 0, &out), -1);
    assert_true(qd_tap_id_equal(out, qd_tap_layer(5, QD_TAP_ACT))); /* untouched on failure */
}

/* The kind indexes per-tap arrays: one slot per layer tap and per model tap, the layer ignored. */
static void test_kinds(void **state) {
    (void)state;
    int seen[QD_NUM_TAP_KINDS] = {0};
    qd_tap_id ids[1 + L * QD_NUM_LAYER_TAPS + 2];
    int n = all_ids(ids);
    for (int i = 0; i < n; i++) {
        int k = qd_tap_id_kind(ids[i]);
        assert_in_range(k, 0, QD_NUM_TAP_KINDS - 1);
        seen[k]++;
    }
    for (int k = 0; k < QD_NUM_TAP_KINDS; k++) assert_int_equal(seen[k], k < QD_NUM_LAYER_TAPS ? L : 1);
    assert_int_not_equal(qd_tap_id_kind(qd_tap_model(QD_TAP_EMBED)), qd_tap_id_kind(qd_tap_model(QD_TAP_FINAL_NORM)));
}

static void expect_shape(const qd_config *c, qd_tap_id id, int64_t T, int ndim, int64_t d1, int64_t d2) {
    int64_t s[3] = {-1, -1, -1};
    int nd = qd_tap_id_shape(c, id, T, s);
    if (nd != ndim || s[0] != T || s[1] != d1 || (ndim == 3 && s[2] != d2))
        fail_msg("%s: ndim %d shape (%lld, %lld, %lld), expected ndim %d (%lld, %lld, %lld)", qd_tap_id_name(id), nd,
                 (long long)s[0], (long long)s[1], (long long)s[2], ndim, (long long)T, (long long)d1, (long long)d2);
}

static void test_shapes(void **state) {
    (void)state;
    qd_config c = small_config();
    const int64_t C = 16, I = 28, NH = 4, NKV = 2, HD = 6, V = 50;
    for (int64_t T = 1; T <= 7; T += 6) {
        expect_shape(&c, qd_tap_model(QD_TAP_EMBED), T, 2, C, 0);
        expect_shape(&c, qd_tap_model(QD_TAP_FINAL_NORM), T, 2, C, 0);
        expect_shape(&c, qd_tap_model(QD_TAP_LOGITS), T, 2, V, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_ATTN_NORM), T, 2, C, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_Q_PROJ), T, 2, NH * HD, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_K_PROJ), T, 2, NKV * HD, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_V_PROJ), T, 2, NKV * HD, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_Q_NORM), T, 3, NH, HD);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_K_NORM), T, 3, NKV, HD);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_Q_ROPE), T, 3, NH, HD);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_K_ROPE), T, 3, NKV, HD);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_ATTN), T, 2, NH * HD, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_O_PROJ), T, 2, C, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_ATTN_RESIDUAL), T, 2, C, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_MLP_NORM), T, 2, C, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_GATE_PROJ), T, 2, I, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_UP_PROJ), T, 2, I, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_ACT), T, 2, I, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_DOWN_PROJ), T, 2, C, 0);
        expect_shape(&c, qd_tap_layer(1, QD_TAP_OUT), T, 2, C, 0);
    }
}

// ----------------------------------------------------------------------------
// qd_tap_emit and a sink

typedef struct {
    qd_tap_id id;
    int ndim;
    int64_t shape[3];
    const float *data;
    int calls;
    int fail;        /* return this code */
    const char *why; /* and fill e with it (NULL: say nothing) */
} probe;

static int probe_emit(qd_tap_sink *self, qd_tap_id id, const float *data, int ndim, const int64_t *shape, qd_err *e) {
    probe *p = self->ctx;
    p->calls++;
    p->id = id;
    p->ndim = ndim;
    for (int i = 0; i < ndim; i++) p->shape[i] = shape[i];
    p->data = data;
    if (p->fail && p->why) return qd_errf(e, p->fail, "%s", p->why);
    return p->fail;
}

static void test_emit(void **state) {
    (void)state;
    qd_config c = small_config();
    float data[5 * 2 * 6] = {0};
    qd_err e;
    qd_err_clear(&e);
    /* no sink: nothing to do */
    assert_int_equal(qd_tap_emit(NULL, &c, qd_tap_layer(0, QD_TAP_K_NORM), data, 5, &e), QD_OK);
    assert_int_equal(e.code, QD_OK);

    probe p = {0};
    qd_tap_sink s = {probe_emit, &p};
    assert_int_equal(qd_tap_emit(&s, &c, qd_tap_layer(2, QD_TAP_K_NORM), data, 5, &e), QD_OK);
    assert_int_equal(p.calls, 1);
    assert_true(qd_tap_id_equal(p.id, qd_tap_layer(2, QD_TAP_K_NORM)));
    assert_int_equal(p.ndim, 3);
    assert_int_equal(p.shape[0], 5); /* the caller's row count */
    assert_int_equal(p.shape[1], 2);
    assert_int_equal(p.shape[2], 6);
    assert_ptr_equal(p.data, data);
    assert_int_equal(e.code, QD_OK);

    /* a failing sink's code and message come back untouched */
    p.fail = QD_ERUNTIME;
    p.why = "x.h5: H5Dwrite failed for /ref/layers/002/k_norm";
    assert_int_equal(qd_tap_emit(&s, &c, qd_tap_layer(2, QD_TAP_K_NORM), data, 5, &e), QD_ERUNTIME);
    assert_int_equal(e.code, QD_ERUNTIME);
    assert_string_equal(e.msg, p.why);

    /* a sink that fails without a word still leaves a message naming the tap */
    qd_err_clear(&e);
    p.fail = QD_EINPUT;
    p.why = NULL;
    assert_int_equal(qd_tap_emit(&s, &c, qd_tap_model(QD_TAP_LOGITS), data, 1, &e), QD_EINPUT);
    assert_int_equal(e.code, QD_EINPUT);
    assert_string_equal(e.msg, "tap sink failed on 'logits' of layer -1 (code 2)");
    assert_int_equal(p.shape[0], 1);
    assert_int_equal(p.shape[1], 50);
    /* and with no qd_err at all, only the code */
    assert_int_equal(qd_tap_emit(&s, &c, qd_tap_model(QD_TAP_EMBED), data, 1, NULL), QD_EINPUT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_constructors),
        cmocka_unit_test(test_embed_and_head_distinct),
        cmocka_unit_test(test_execution_order),
        cmocka_unit_test(test_names_both_ways),
        cmocka_unit_test(test_kinds),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_emit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
