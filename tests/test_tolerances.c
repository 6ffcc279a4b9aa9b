/* test_tolerances.c: tolerance defaults, the lookup order, the tolerance file (round trip and every
 * load error) and calibration (compare/qd_tolerances.h). Tolerance values are compared exactly: they
 * are decimals that survive the file's 15 significant digits unchanged. */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "qd_tolerances.h"

static char tmpdir[256];

/* qd_path_join, asserting that it allocated. */
static char *path_join(const char *dir, const char *name) {
    qd_err e;
    qd_err_clear(&e);
    char *p = qd_path_join(dir, name, &e);
    if (!p) fail_msg("qd_path_join: %s", e.msg);
    return p;
}

static int setup_dir(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qd_test_tol.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_dir(void **state) {
    (void)state;
    DIR *d = opendir(tmpdir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)))
            if (de->d_name[0] != '.') {
                char *p = path_join(tmpdir, de->d_name);
                unlink(p);
                free(p);
            }
        closedir(d);
    }
    rmdir(tmpdir);
    return 0;
}

static char *write_tmp(const char *name, const char *text) {
    char *p = path_join(tmpdir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

static void assert_tol_eq(qd_tol a, double rel_l2, double atol, double rtol) {
    if (a.rel_l2 != rel_l2 || a.atol != atol || a.rtol != rtol) {
        print_error("got {%g, %g, %g}, expected {%g, %g, %g}\n", a.rel_l2, a.atol, a.rtol, rel_l2, atol, rtol);
        fail();
    }
}

// ----------------------------------------------------------------------------
// defaults

static void test_defaults(void **state) {
    (void)state;
    qd_tolerances t;
    qd_err e;
    assert_int_equal(qd_tolerances_default(&t, "bf16", "fp32", &e), QD_OK);
    assert_tol_eq(t.def, 1e-1, 1e-2, 1.5e-1);
    assert_true(t.blowup.blowup_ratio == 1e3 && t.blowup.growth_factor == 10.0);
    assert_true(t.blowup.growth_floor == 4e-3);
    assert_string_equal(t.prec_test, "bf16");
    assert_string_equal(t.prec_ref, "fp32");
    qd_tolerances_free(&t);
    assert_int_equal(qd_tolerances_default(&t, "fp32", "bf16", &e), QD_OK); /* the less precise side rules */
    assert_tol_eq(t.def, 1e-1, 1e-2, 1.5e-1);
    qd_tolerances_free(&t);
    assert_int_equal(qd_tolerances_default(&t, "fp32", "fp64", &e), QD_OK);
    assert_tol_eq(t.def, 1e-5, 2e-5, 2e-5);
    qd_tolerances_free(&t);
    assert_int_equal(qd_tolerances_default(&t, "fp16", "fp32", &e), QD_OK);
    assert_true(t.def.rel_l2 == 1e-2);
    assert_true(t.def.rel_l2 < 1e-1 && t.def.rel_l2 > 1e-5); /* between the other two */
    qd_tolerances_free(&t);
    qd_err_clear(&e);
    assert_int_equal(qd_tolerances_default(&t, "int8", "fp32", &e), QD_EINPUT);
    assert_int_equal(e.code, QD_EINPUT);
    assert_non_null(strstr(e.msg, "'int8'"));
    qd_tol fl;
    assert_int_equal(qd_tolerances_floor("bf16", "fp32", &fl, &e), QD_OK);
    assert_tol_eq(fl, 4e-3, 4e-3, 4e-3);
    assert_int_equal(qd_tolerances_floor("fp32", "fp32", &fl, &e), QD_OK);
    assert_tol_eq(fl, 1e-6, 1e-6, 1e-6);
    assert_int_equal(qd_tolerances_floor("fp32", "f32", &fl, &e), QD_EINPUT);
}

// ----------------------------------------------------------------------------
// lookup: layer+tap, tap, layer, default, field by field

static void test_lookup_order(void **state) {
    (void)state;
    qd_tolerances t;
    qd_err e;
    assert_int_equal(qd_tolerances_default(&t, "bf16", "fp32", &e), QD_OK);
    qd_tol v = {0.5, 0.6, 0.7};
    assert_int_equal(qd_tolerances_set(&t, -1, NULL, &(qd_tol){0.1, 0.2, 0.3}, QD_TOL_SET_ALL, &e), QD_OK);
    assert_int_equal(qd_tolerances_set(&t, -1, "k_norm", &(qd_tol){0.11, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_OK);
    assert_int_equal(qd_tolerances_set(&t, 3, NULL, &(qd_tol){0.31, 0.32, 0}, QD_TOL_SET_REL_L2 | QD_TOL_SET_ATOL, &e),
                     QD_OK);
    assert_int_equal(qd_tolerances_set(&t, 3, "k_norm", &(qd_tol){0, 0, 0.333}, QD_TOL_SET_RTOL, &e), QD_OK);
    assert_int_equal(qd_tolerances_set(&t, -1, "logits", &v, QD_TOL_SET_ATOL, &e), QD_OK);
    assert_int_equal(t.n_layers, 4);

    /* layer 3 k_norm: rtol from layer+tap, rel_l2 from the tap (outranks the layer), atol from the layer */
    assert_tol_eq(qd_tolerances_lookup(&t, 3, "k_norm"), 0.11, 0.32, 0.333);
    /* layer 3 q_norm: no tap entries: the layer's rel_l2 and atol, the default rtol */
    assert_tol_eq(qd_tolerances_lookup(&t, 3, "q_norm"), 0.31, 0.32, 0.3);
    /* layer 2 k_norm: the tap, then the default */
    assert_tol_eq(qd_tolerances_lookup(&t, 2, "k_norm"), 0.11, 0.2, 0.3);
    /* a layer beyond every entry and a plain tap: the default */
    assert_tol_eq(qd_tolerances_lookup(&t, 40, "out"), 0.1, 0.2, 0.3);
    assert_tol_eq(qd_tolerances_lookup(&t, 40, "k_norm"), 0.11, 0.2, 0.3);
    /* model-level taps: layer -1, the tap then the default */
    assert_tol_eq(qd_tolerances_lookup(&t, -1, "logits"), 0.1, 0.6, 0.3);
    assert_tol_eq(qd_tolerances_lookup(&t, -1, "embed"), 0.1, 0.2, 0.3);
    /* an unknown name gets the layer and the default */
    assert_tol_eq(qd_tolerances_lookup(&t, 3, "nope"), 0.31, 0.32, 0.3);

    /* the verdict uses the looked-up tolerance: rel_l2 0.2 passes layer 3 (0.31), fails layer 2 out (0.1) */
    qd_metrics m = {.n = 1,
                    .n_finite = 1,
                    .rel_l2 = 0.2,
                    .max_abs = 0.0,
                    .max_mag_ref = 1.0,
                    .max_mag_test = 1.0,
                    .mag_ratio = 1.0};
    assert_int_equal(qd_tolerances_verdict(&t, 0, 3, "q_norm", &m, NAN), 0);
    assert_int_equal(qd_tolerances_verdict(&t, 0, 2, "out", &m, NAN), QD_V_REL_L2);

    /* bad settings */
    qd_err_clear(&e);
    assert_int_equal(qd_tolerances_set(&t, 3, "logits", &v, QD_TOL_SET_ALL, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "logits"));
    assert_int_equal(qd_tolerances_set(&t, 3, "k_nrom", &v, QD_TOL_SET_ALL, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "k_nrom"));
    assert_int_equal(qd_tolerances_set(&t, -1, NULL, &(qd_tol){-1, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_EINPUT);
    assert_int_equal(qd_tolerances_set(&t, -1, NULL, &(qd_tol){NAN, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_EINPUT);
    assert_int_equal(qd_tolerances_set(&t, QD_TOL_MAX_LAYERS, NULL, &v, QD_TOL_SET_ALL, &e), QD_EINPUT);
    assert_tol_eq(t.def, 0.1, 0.2, 0.3); /* failed settings changed nothing */
    qd_tolerances_free(&t);
}

/* A teacher-forced row: the isolated section's four levels first, field by field, then the top level's. */
static void test_lookup_isolated(void **state) {
    (void)state;
    qd_tolerances t;
    qd_err e;
    assert_int_equal(qd_tolerances_default(&t, "bf16", "fp32", &e), QD_OK);
    assert_int_equal(qd_tolerances_set(&t, -1, NULL, &(qd_tol){0.1, 0.2, 0.3}, QD_TOL_SET_ALL, &e), QD_OK);
    assert_int_equal(qd_tolerances_set(&t, 3, "attn", &(qd_tol){0.9, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_OK);
    /* no isolated section: the same tolerance as a free-running row */
    assert_null(t.isolated);
    assert_tol_eq(qd_tolerances_lookup_isolated(&t, 3, "attn"), 0.9, 0.2, 0.3);
    assert_tol_eq(qd_tolerances_lookup_isolated(&t, -1, "logits"), 0.1, 0.2, 0.3);
    assert_int_equal(qd_tolerances_set_isolated(&t, -1, NULL, &(qd_tol){0, 0.02, 0}, QD_TOL_SET_ATOL, &e), QD_OK);
    assert_int_equal(qd_tolerances_set_isolated(&t, -1, "attn", &(qd_tol){0.05, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_OK);
    assert_int_equal(qd_tolerances_set_isolated(&t, 3, NULL, &(qd_tol){0, 0, 0.03}, QD_TOL_SET_RTOL, &e), QD_OK);
    assert_int_equal(qd_tolerances_set_isolated(&t, 3, "attn", &(qd_tol){0.01, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_OK);
    assert_int_equal(qd_tolerances_set_isolated(&t, -1, "logits", &(qd_tol){0.04, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_OK);
    assert_tol_eq(qd_tolerances_lookup_isolated(&t, 3, "attn"), 0.01, 0.02, 0.03); /* layer+tap, default, layer */
    assert_tol_eq(qd_tolerances_lookup_isolated(&t, 2, "attn"), 0.05, 0.02, 0.3);  /* tap, default, top level */
    assert_tol_eq(qd_tolerances_lookup_isolated(&t, 3, "out"), 0.1, 0.02, 0.03);   /* top level's rel_l2 */
    assert_tol_eq(qd_tolerances_lookup_isolated(&t, -1, "logits"), 0.04, 0.02, 0.3);
    /* free-running rows never see the section */
    assert_tol_eq(qd_tolerances_lookup(&t, 3, "attn"), 0.9, 0.2, 0.3);
    assert_tol_eq(qd_tolerances_lookup(&t, -1, "logits"), 0.1, 0.2, 0.3);
    /* its setter refuses what the top level's refuses, and changes nothing then */
    assert_int_equal(qd_tolerances_set_isolated(&t, 3, "logits", &(qd_tol){0.1, 0, 0}, QD_TOL_SET_ALL, &e), QD_EINPUT);
    assert_int_equal(qd_tolerances_set_isolated(&t, -1, NULL, &(qd_tol){-1, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_EINPUT);
    assert_tol_eq(qd_tolerances_lookup_isolated(&t, 3, "out"), 0.1, 0.02, 0.03);
    qd_metrics m = {.n = 10,
                    .n_finite = 10,
                    .rel_l2 = 0.02,
                    .max_abs = 0.0,
                    .max_mag_ref = 1.0,
                    .max_mag_test = 1.0,
                    .mag_ratio = 1.0,
                    .cosine = 1.0};
    assert_int_equal(qd_tolerances_verdict(&t, 0, 3, "attn", &m, NAN), 0);
    assert_int_equal(qd_tolerances_verdict(&t, 1, 3, "attn", &m, NAN), QD_V_REL_L2);
    qd_tolerances_free(&t);
    assert_null(t.isolated);
}

// ----------------------------------------------------------------------------
// the file

/* The levels of two sections: default (the fields set), taps, layers. */
static void check_levels_equal(const qd_tolerances *a, const qd_tolerances *b) {
    assert_int_equal(a->def_set, b->def_set);
    if (a->def_set & QD_TOL_SET_REL_L2) assert_true(a->def.rel_l2 == b->def.rel_l2);
    if (a->def_set & QD_TOL_SET_ATOL) assert_true(a->def.atol == b->def.atol);
    if (a->def_set & QD_TOL_SET_RTOL) assert_true(a->def.rtol == b->def.rtol);
    for (int id = 0; id < QD_NUM_TAP_IDS; id++) {
        assert_int_equal(a->taps[id].set, b->taps[id].set);
        const unsigned s = a->taps[id].set;
        if (s & QD_TOL_SET_REL_L2) assert_true(a->taps[id].tol.rel_l2 == b->taps[id].tol.rel_l2);
        if (s & QD_TOL_SET_ATOL) assert_true(a->taps[id].tol.atol == b->taps[id].tol.atol);
        if (s & QD_TOL_SET_RTOL) assert_true(a->taps[id].tol.rtol == b->taps[id].tol.rtol);
    }
    int nl = a->n_layers > b->n_layers ? a->n_layers : b->n_layers;
    for (int l = 0; l < nl; l++)
        for (int k = 0; k < 1 + QD_NUM_LAYER_TAPS; k++) {
            qd_tol_entry none = {{0, 0, 0}, 0};
            const qd_tol_entry *x = l < a->n_layers ? &a->layers[(size_t)l * (1 + QD_NUM_LAYER_TAPS) + k] : &none;
            const qd_tol_entry *y = l < b->n_layers ? &b->layers[(size_t)l * (1 + QD_NUM_LAYER_TAPS) + k] : &none;
            assert_int_equal(x->set, y->set);
            if (x->set & QD_TOL_SET_REL_L2) assert_true(x->tol.rel_l2 == y->tol.rel_l2);
            if (x->set & QD_TOL_SET_ATOL) assert_true(x->tol.atol == y->tol.atol);
            if (x->set & QD_TOL_SET_RTOL) assert_true(x->tol.rtol == y->tol.rtol);
        }
}

static void check_equal(const qd_tolerances *a, const qd_tolerances *b) {
    assert_string_equal(a->prec_test, b->prec_test);
    assert_string_equal(a->prec_ref, b->prec_ref);
    assert_true(a->margin == b->margin);
    assert_int_equal(a->def_set, QD_TOL_SET_ALL);
    check_levels_equal(a, b);
    assert_int_equal(a->isolated != NULL, b->isolated != NULL);
    if (a->isolated) check_levels_equal(a->isolated, b->isolated);
    assert_true(a->blowup.blowup_ratio == b->blowup.blowup_ratio);
    assert_true(a->blowup.growth_factor == b->blowup.growth_factor);
    assert_true(a->blowup.growth_floor == b->blowup.growth_floor);
    assert_int_equal(a->measured != NULL, b->measured != NULL);
    if (a->measured) assert_true(json_equal(a->measured, b->measured));
}

static int count_tmp_files(void) {
    int n = 0;
    DIR *d = opendir(tmpdir);
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void test_round_trip(void **state) {
    (void)state;
    qd_tolerances t, u;
    qd_err e;
    assert_int_equal(qd_tolerances_default(&t, "bf16", "fp32", &e), QD_OK);
    t.margin = 2.0;
    t.blowup.blowup_ratio = 500;
    t.blowup.growth_factor = 8;
    t.blowup.growth_floor = 1e-7;
    assert_int_equal(qd_tolerances_set(&t, -1, NULL, &(qd_tol){3.5e-2, 1.25e-2, 0.05}, QD_TOL_SET_ALL, &e), QD_OK);
    assert_int_equal(qd_tolerances_set(&t, -1, "logits", &(qd_tol){5e-2, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_OK);
    assert_int_equal(qd_tolerances_set(&t, -1, "k_norm", &(qd_tol){0, 0.1, 0.2}, QD_TOL_SET_ATOL | QD_TOL_SET_RTOL, &e),
                     QD_OK);
    assert_int_equal(qd_tolerances_set(&t, 3, NULL, &(qd_tol){6e-2, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_OK);
    assert_int_equal(qd_tolerances_set(&t, 3, "k_norm", &(qd_tol){0, 2e-2, 0}, QD_TOL_SET_ATOL, &e), QD_OK);
    assert_int_equal(qd_tolerances_set(&t, 27, "out", &(qd_tol){0.0123, 1e-7, 0}, QD_TOL_SET_ALL, &e), QD_OK);
    assert_int_equal(qd_tolerances_set_isolated(&t, -1, NULL, &(qd_tol){1.5e-2, 0, 0}, QD_TOL_SET_REL_L2, &e), QD_OK);
    assert_int_equal(qd_tolerances_set_isolated(&t, -1, "logits", &(qd_tol){0, 0, 2.5e-2}, QD_TOL_SET_RTOL, &e), QD_OK);
    assert_int_equal(qd_tolerances_set_isolated(&t, 3, "attn", &(qd_tol){7e-3, 1e-3, 9e-3}, QD_TOL_SET_ALL, &e), QD_OK);
    t.measured = json_pack("{s:[ss],s:f,s:s}", "prompts", "hello", "the", "worst_rel_l2", 0.0271, "note", "x");
    char *path = path_join(tmpdir, "tol.json");
    assert_int_equal(qd_tolerances_write(path, &t, &e), QD_OK);
    assert_int_equal(count_tmp_files(), 0); /* the temporary was renamed away */
    qd_err_clear(&e);
    int rc = qd_tolerances_load(path, &u, &e);
    if (rc != QD_OK) print_error("%s\n", e.msg);
    assert_int_equal(rc, QD_OK);
    check_equal(&t, &u);
    /* and written again, byte for byte the same file */
    char *path2 = path_join(tmpdir, "tol2.json");
    assert_int_equal(qd_tolerances_write(path2, &u, &e), QD_OK);
    char *a, *b;
    assert_int_equal(qd_read_file(path, &a, NULL, &e), QD_OK);
    assert_int_equal(qd_read_file(path2, &b, NULL, &e), QD_OK);
    assert_string_equal(a, b);
    assert_non_null(strstr(a, "\"3/k_norm\""));
    assert_non_null(strstr(a, "\"isolated\""));
    assert_non_null(strstr(a, "\"schema\": \"qwen3-diff-tolerances/1\""));
    free(a);
    free(b);
    free(path2);
    free(path);
    qd_tolerances_free(&t);
    qd_tolerances_free(&u);
}

/* A hand-written file: partial objects inherit from the precision pair's table. */
static void test_load_partial(void **state) {
    (void)state;
    char *p = write_tmp("partial.json",
                        "{\"schema\": \"qwen3-diff-tolerances/1\", \"precision_pair\": [\"bf16\", \"fp32\"],\n"
                        " \"default\": {\"rel_l2\": 0.03},\n"
                        " \"taps\": {\"logits\": {\"rtol\": 0.1}},\n"
                        " \"layers\": {\"0\": {\"atol\": 0.5}, \"12/act\": {\"rel_l2\": 0.07}}}\n");
    qd_tolerances t;
    qd_err e;
    qd_err_clear(&e);
    int rc = qd_tolerances_load(p, &t, &e);
    if (rc != QD_OK) print_error("%s\n", e.msg);
    assert_int_equal(rc, QD_OK);
    assert_tol_eq(t.def, 0.03, 1e-2, 1.5e-1);
    assert_tol_eq(qd_tolerances_lookup(&t, -1, "logits"), 0.03, 1e-2, 0.1);
    assert_tol_eq(qd_tolerances_lookup(&t, 0, "out"), 0.03, 0.5, 1.5e-1);
    assert_tol_eq(qd_tolerances_lookup(&t, 12, "act"), 0.07, 1e-2, 1.5e-1);
    assert_tol_eq(qd_tolerances_lookup(&t, 12, "up_proj"), 0.03, 1e-2, 1.5e-1);
    assert_true(t.blowup.blowup_ratio == 1e3 && t.blowup.growth_factor == 10.0);
    assert_true(t.margin == 0.0);
    assert_null(t.measured);
    qd_tolerances_free(&t);
    free(p);
}

/* Every load error: QD_EINPUT, one line naming the file and the field. */
static void test_load_errors(void **state) {
    (void)state;
#define HEAD "{\"schema\": \"qwen3-diff-tolerances/1\", \"precision_pair\": [\"bf16\", \"fp32\"], "
    static const struct {
        const char *text;
        const char *field; /* must appear in the message */
    } cases[] = {
        {HEAD "\"rel_l2\": 0.1}", "'rel_l2'"},                      /* unknown top-level key */
        {HEAD "\"default\": {\"rel_l3\": 0.1}}", "default.rel_l3"}, /* typo in a tolerance */
        {HEAD "\"layers\": {\"3/k_norm\": {\"atl\": 0.1}}}", "layers.3/k_norm.atl"},
        {HEAD "\"taps\": {\"logits\": {\"rel_l2\": -0.1}}}", "taps.logits.rel_l2"},    /* negative */
        {HEAD "\"taps\": {\"logits\": {\"rel_l2\": \"0.1\"}}}", "taps.logits.rel_l2"}, /* not a number */
        {HEAD "\"taps\": {\"logits\": {\"rel_l2\": true}}}", "taps.logits.rel_l2"},
        {HEAD "\"taps\": {\"logits\": 0.1}}", "taps.logits"},          /* not an object */
        {HEAD "\"taps\": {\"k_nrom\": {\"rel_l2\": 0.1}}}", "k_nrom"}, /* unknown tap */
        {HEAD "\"layers\": {\"3/k_nrom\": {\"rel_l2\": 0.1}}}", "layers.3/k_nrom"},
        {HEAD "\"layers\": {\"3/logits\": {\"rel_l2\": 0.1}}}", "layers.3/logits"}, /* model tap with a layer */
        {HEAD "\"layers\": {\"x\": {\"rel_l2\": 0.1}}}", "layers.x"},               /* not a layer index */
        {HEAD "\"layers\": {\"03\": {\"rel_l2\": 0.1}}}", "layers.03"},
        {HEAD "\"layers\": {\"-1\": {\"rel_l2\": 0.1}}}", "layers.-1"},
        {HEAD "\"layers\": {\"1024\": {\"rel_l2\": 0.1}}}", "layers.1024"},
        {HEAD "\"layers\": [1]}", "'layers'"},
        {HEAD "\"blowup_ratio\": 0.5}", "blowup_ratio"}, /* must exceed 1 */
        {HEAD "\"growth_factor\": 1}", "growth_factor"},
        {HEAD "\"growth_floor\": -1e-7}", "growth_floor"},
        {HEAD "\"margin\": 0.5}", "margin"},
        {HEAD "\"measured\": [1, 2]}", "measured"},
        {HEAD "\"default\": {\"rel_l2\": 0.1, \"rel_l2\": 0.2}}", "duplicate"},   /* duplicate key */
        {HEAD "\"isolated\": [1]}", "'isolated'"},                                /* the isolated section */
        {HEAD "\"isolated\": {\"growth_factor\": 2}}", "isolated.growth_factor"}, /* only levels there */
        {HEAD "\"isolated\": {\"default\": {\"rel_l3\": 0.1}}}", "isolated.default.rel_l3"},
        {HEAD "\"isolated\": {\"taps\": {\"logits\": {\"rel_l2\": -1}}}}", "isolated.taps.logits.rel_l2"},
        {HEAD "\"isolated\": {\"layers\": {\"3/k_nrom\": {\"rel_l2\": 0.1}}}}", "isolated.layers.3/k_nrom"},
        {HEAD "\"isolated\": {\"layers\": {\"3/logits\": {\"rel_l2\": 0.1}}}}", "isolated.taps"},
        {"{\"schema\": \"qwen3-diff-tolerances/2\", \"precision_pair\": [\"bf16\", \"fp32\"]}", "'schema'"},
        {"{\"schema\": 1, \"precision_pair\": [\"bf16\", \"fp32\"]}", "'schema'"},
        {"{\"precision_pair\": [\"bf16\", \"fp32\"]}", "'schema'"}, /* missing */
        {"{\"schema\": \"qwen3-diff-tolerances/1\"}", "'precision_pair'"},
        {"{\"schema\": \"qwen3-diff-tolerances/1\", \"precision_pair\": [\"int8\", \"fp32\"]}", "int8"},
        {"{\"schema\": \"qwen3-diff-tolerances/1\", \"precision_pair\": \"bf16\"}", "'precision_pair'"},
        {HEAD "\"default\": {\"rel_l2\": 0.1},}", "invalid JSON"}, /* bad JSON */
        {"", "invalid JSON"},
        {"[1, 2]", "expected a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "bad%zu.json", i);
        char *p = write_tmp(name, cases[i].text);
        qd_tolerances t;
        qd_err e;
        qd_err_clear(&e);
        int rc = qd_tolerances_load(p, &t, &e);
        int ok = rc == QD_EINPUT && e.code == QD_EINPUT && strstr(e.msg, p) && strstr(e.msg, cases[i].field) &&
                 !strchr(e.msg, '\n');
        if (!ok) {
            print_error("case %zu (%s): rc %d, message '%s', expected the path and '%s'\n", i, cases[i].text, rc, e.msg,
                        cases[i].field);
            fail();
        }
        assert_null(t.layers); /* nothing left allocated */
        assert_null(t.measured);
        assert_null(t.isolated);
        unlink(p);
        free(p);
    }
#undef HEAD
    /* a missing file */
    char *p = path_join(tmpdir, "missing.json");
    qd_tolerances t;
    qd_err e;
    qd_err_clear(&e);
    assert_int_equal(qd_tolerances_load(p, &t, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, p));
    free(p);
    /* writing into a directory that does not exist */
    assert_int_equal(qd_tolerances_default(&t, "bf16", "fp32", &e), QD_OK);
    p = path_join(tmpdir, "no/such/dir/tol.json");
    assert_int_not_equal(qd_tolerances_write(p, &t, &e), QD_OK);
    assert_non_null(strstr(e.msg, "no/such/dir"));
    free(p);
    qd_tolerances_free(&t);
}

// ----------------------------------------------------------------------------
// calibration

static qd_metrics run_metrics(double rel_l2, double max_abs, double max_mag_ref) {
    qd_metrics m = {.n = 100,
                    .n_finite = 100,
                    .rel_l2 = rel_l2,
                    .max_abs = max_abs,
                    .max_mag_ref = max_mag_ref,
                    .max_mag_test = max_mag_ref,
                    .mag_ratio = 1.0,
                    .cosine = 1.0};
    return m;
}

static void test_calibration(void **state) {
    (void)state;
    qd_calib c;
    qd_err e;
    assert_int_equal(qd_calib_init(&c, 2, &e), QD_OK);
    qd_metrics m;
    /* layer 0 k_norm over three runs: worst rel_l2 1.25e-2, worst max_abs/max|ref| 0.5/10 = 5e-2 */
    m = run_metrics(1e-2, 0.5, 10.0);
    assert_int_equal(qd_calib_add(&c, 0, "k_norm", &m, &e), QD_OK);
    m = run_metrics(1.25e-2, 0.2, 10.0);
    assert_int_equal(qd_calib_add(&c, 0, "k_norm", &m, &e), QD_OK);
    m = run_metrics(5e-3, 0.3, 20.0);
    assert_int_equal(qd_calib_add(&c, 0, "k_norm", &m, &e), QD_OK);
    /* layer 1 q_proj matched exactly: the floor applies */
    m = run_metrics(0.0, 0.0, 3.0);
    assert_int_equal(qd_calib_add(&c, 1, "q_proj", &m, &e), QD_OK);
    /* layer 1 act: margin x worst needs rounding up: 2 x 6.17e-3 = 1.234e-2 -> 1.24e-2 */
    m = run_metrics(6.17e-3, 1e-3, 1.0);
    assert_int_equal(qd_calib_add(&c, 1, "act", &m, &e), QD_OK);
    /* the logits, a model tap; a reference that was all zero goes to atol */
    m = run_metrics(2e-2, 0.25, 5.0);
    assert_int_equal(qd_calib_add(&c, -1, "logits", &m, &e), QD_OK);
    m = run_metrics(0.0, 0.125, 0.0);
    assert_int_equal(qd_calib_add(&c, -1, "logits", &m, &e), QD_OK);

    /* refused: broken runs, bad names, a layer outside the model */
    qd_err_clear(&e);
    m = run_metrics(NAN, NAN, 1.0);
    assert_int_equal(qd_calib_add(&c, 0, "out", &m, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "out"));
    m = run_metrics(1e-3, 1e-3, 1.0);
    m.nan_test = 1;
    assert_int_equal(qd_calib_add(&c, 0, "out", &m, &e), QD_EINPUT);
    m.nan_test = 0;
    assert_int_equal(qd_calib_add(&c, 2, "out", &m, &e), QD_EINPUT);
    assert_int_equal(qd_calib_add(&c, 0, "logits", &m, &e), QD_EINPUT);
    assert_int_equal(qd_calib_add(&c, -1, "out", &m, &e), QD_EINPUT);
    assert_int_equal(c.slots[0 * QD_NUM_LAYER_TAPS + QD_TAP_OUT].runs, 0);

    qd_tolerances t;
    assert_int_equal(qd_tolerances_default(&t, "bf16", "fp32", &e), QD_OK);
    assert_int_equal(qd_calib_to_tolerances(&c, 0.5, NULL, &t, &e), QD_EINPUT); /* margin < 1 */
    qd_tol floor = {1e-3, 2e-3, 3e-3};
    assert_int_equal(qd_calib_to_tolerances(&c, 2.0, &floor, &t, &e), QD_OK);
    assert_true(t.margin == 2.0);
    assert_tol_eq(qd_tolerances_lookup(&t, 0, "k_norm"), 2.5e-2, 2e-3, 0.1); /* 2 x worst; atol floor */
    assert_tol_eq(qd_tolerances_lookup(&t, 1, "q_proj"), 1e-3, 2e-3, 3e-3);  /* all floor */
    assert_tol_eq(qd_tolerances_lookup(&t, 1, "act"), 1.24e-2, 2e-3, 3e-3);  /* rounded up; 2e-3 < floor */
    assert_tol_eq(qd_tolerances_lookup(&t, -1, "logits"), 4e-2, 0.25, 0.1);  /* atol 2 x 0.125 */
    assert_tol_eq(qd_tolerances_lookup(&t, 1, "out"), 1e-1, 1e-2, 1.5e-1);   /* never seen: the default */
    assert_int_equal(t.taps[QD_TAP_K_NORM].set, 0);                          /* only layer+tap entries */

    /* the runs it was calibrated on pass what it produced */
    m = run_metrics(1.25e-2, 0.5, 10.0);
    assert_int_equal(qd_tolerances_verdict(&t, 0, 0, "k_norm", &m, NAN), 0);
    m = run_metrics(6.17e-3, 1e-3, 1.0);
    assert_int_equal(qd_tolerances_verdict(&t, 0, 1, "act", &m, NAN), 0);
    m = run_metrics(0.0, 0.125, 0.0);
    assert_int_equal(qd_tolerances_verdict(&t, 0, -1, "logits", &m, NAN) & (QD_V_REL_L2 | QD_V_MAX_ABS), 0);

    /* with floor NULL the precision pair's floor applies */
    qd_tolerances t2;
    assert_int_equal(qd_tolerances_default(&t2, "bf16", "fp32", &e), QD_OK);
    assert_int_equal(qd_calib_to_tolerances(&c, 2.0, NULL, &t2, &e), QD_OK);
    assert_tol_eq(qd_tolerances_lookup(&t2, 1, "q_proj"), 4e-3, 4e-3, 4e-3);

    /* the teacher-forced rows' worst figures go to the isolated section, leaving the top level as it was */
    qd_calib ci;
    assert_int_equal(qd_calib_init(&ci, 2, &e), QD_OK);
    m = run_metrics(2e-3, 0.05, 10.0);
    assert_int_equal(qd_calib_add(&ci, 0, "k_norm", &m, &e), QD_OK);
    assert_int_equal(qd_calib_to_tolerances_isolated(&ci, 2.0, &floor, &t, &e), QD_OK);
    assert_non_null(t.isolated);
    assert_tol_eq(qd_tolerances_lookup_isolated(&t, 0, "k_norm"), 4e-3, 2e-3, 1e-2); /* 2 x worst; atol floor */
    assert_tol_eq(qd_tolerances_lookup(&t, 0, "k_norm"), 2.5e-2, 2e-3, 0.1);         /* unchanged */
    assert_tol_eq(qd_tolerances_lookup_isolated(&t, 1, "act"), 1.24e-2, 2e-3, 3e-3); /* not seen: top level */
    m = run_metrics(1e-2, 0.05, 10.0); /* within the free-running gate, over the teacher-forced one */
    assert_int_equal(qd_tolerances_verdict(&t, 0, 0, "k_norm", &m, NAN), 0);
    assert_int_equal(qd_tolerances_verdict(&t, 1, 0, "k_norm", &m, NAN), QD_V_REL_L2);
    qd_calib_free(&ci);

    /* and the blessed file round-trips */
    char *path = path_join(tmpdir, "blessed.json");
    assert_int_equal(qd_tolerances_write(path, &t, &e), QD_OK);
    qd_tolerances u;
    assert_int_equal(qd_tolerances_load(path, &u, &e), QD_OK);
    check_equal(&t, &u);
    free(path);
    qd_tolerances_free(&u);
    qd_tolerances_free(&t2);
    qd_tolerances_free(&t);
    qd_calib_free(&c);
    assert_int_equal(qd_calib_init(&c, -1, &e), QD_EINPUT);
}

/* The model a file was calibrated on: written and read back, the same model is silent, another one is
 * named field by field (a warning, or with strict an error), a file without the record gets a note, and the
 * config hash is pinned: its canonical text must not change silently (every file written records it). */
static void test_model_record(void **state) {
    (void)state;
    qd_config c = {.vocab_size = 256,
                   .hidden_size = 64,
                   .intermediate_size = 128,
                   .num_hidden_layers = 2,
                   .num_attention_heads = 4,
                   .num_key_value_heads = 2,
                   .head_dim = 32,
                   .rope_theta = 1e6,
                   .rms_norm_eps = 1e-6,
                   .tie_word_embeddings = 1};
    char h[QD_CONFIG_HASH_LEN];
    qd_config_hash(&c, h);
    /* FNV-1a 64 of "qwen3;L=2;C=64;I=128;NH=4;NKV=2;HD=32;V=256;theta=1000000;eps=9.9999999999999995e-07;tied=1" */
    assert_string_equal(h, "fnv1a64:2ae6c97ff14cfa47");
    qd_config c2 = c;
    c2.max_position_embeddings = 40960; /* not part of the maths */
    char h2[QD_CONFIG_HASH_LEN];
    qd_config_hash(&c2, h2);
    assert_string_equal(h, h2);

    qd_err e;
    qd_err_clear(&e);
    qd_tolerances t;
    assert_int_equal(qd_tolerances_default(&t, "bf16", "fp32", &e), QD_OK);
    char note[1024];
    assert_int_equal(qd_tolerances_check_model(&t, &c, 1, note, sizeof note, &e), QD_OK);
    assert_non_null(strstr(note, "note: "));
    assert_non_null(strstr(note, "'model'"));
    qd_tolerances_set_model(&t, &c);
    char *path = path_join(tmpdir, "model.json");
    assert_int_equal(qd_tolerances_write(path, &t, &e), QD_OK);
    qd_tolerances_free(&t);
    assert_int_equal(qd_tolerances_load(path, &t, &e), QD_OK);
    assert_true(t.model.set);
    assert_int_equal(t.model.layers, 2);
    assert_int_equal(t.model.head_dim, 32);
    assert_string_equal(t.model.config_hash, h);
    assert_int_equal(qd_tolerances_check_model(&t, &c, 1, note, sizeof note, &e), QD_OK);
    assert_string_equal(note, "");
    c2 = c;
    c2.hidden_size = 128;
    c2.vocab_size = 512;
    assert_int_equal(qd_tolerances_check_model(&t, &c2, 0, note, sizeof note, &e), QD_OK);
    assert_non_null(strstr(note, "warning: "));
    assert_non_null(strstr(note, "hidden 64 vs 128, vocab 256 vs 512"));
    assert_int_equal(qd_tolerances_check_model(&t, &c2, 1, note, sizeof note, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "calibrated on another model: hidden 64 vs 128"));
    c2 = c;
    c2.rope_theta = 1e4; /* the same shape, other maths: only the hash tells */
    assert_int_equal(qd_tolerances_check_model(&t, &c2, 1, note, sizeof note, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "the same shape, another config"));
    qd_tolerances_free(&t);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),    cmocka_unit_test(test_lookup_order), cmocka_unit_test(test_lookup_isolated),
        cmocka_unit_test(test_round_trip),  cmocka_unit_test(test_load_partial), cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_calibration), cmocka_unit_test(test_model_record),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
