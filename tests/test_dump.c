/* test_dump.c: the HDF5 dump (compare/dump.c) written with fake taps and read back through the HDF5 C
 * API: root attributes, group attributes, every dataset's type, shape, layout and values, the
 * temp-file-and-rename protocol, and the refusals (bad precision, duplicate tap, unwritable path). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <hdf5.h>
#include <unistd.h>

#include "qd_build_config.h"
#include "qd_dump.h"

#define T 3

static const char *CONFIG_JSON = "{\"model_type\": \"qwen3\", \"hidden_size\": 8}";
static const int32_t IDS[T] = {5, 17, 3};

/* A tiny model: C=8, I=12, NH=2, NKV=1, HD=4, V=10, L=2. */
static qd_config tiny_config(void) {
    qd_config c = {0};
    c.vocab_size = 10;
    c.hidden_size = 8;
    c.intermediate_size = 12;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = 4;
    return c;
}

/* A value unique to (layer, tap, index), exactly representable in float. */
static float fake_value(int layer, int tap, long i) {
    return (float)((layer + 2) * 1000 + tap * 50) + 0.25f * (float)i;
}

static long numel(int ndim, const int64_t *shape) {
    long n = 1;
    for (int i = 0; i < ndim; i++) n *= (long)shape[i];
    return n;
}

typedef struct {
    char dir[64];
    char path[96];
} tmpdir;

static void make_dir(tmpdir *t) {
    strcpy(t->dir, "/tmp/qd_dump_XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->path, sizeof t->path, "%s/out.h5", t->dir);
}

/* Number of entries in the directory besides . and .. */
static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *de; (de = readdir(d));)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void remove_dir(tmpdir *t) {
    unlink(t->path);
    assert_int_equal(rmdir(t->dir), 0); /* fails if anything else (a temp file) was left behind */
}

/* Emits one tap filled with its fake values. Model-level taps (layer -1) use key 100 + tap. */
static int emit_tap(qd_tap_sink *s, const qd_config *c, int layer, int tap) {
    qd_tap_id id = layer < 0 ? qd_tap_model(tap) : qd_tap_layer(layer, tap);
    int64_t shape[3];
    int ndim = qd_tap_id_shape(c, id, T, shape);
    int key = layer < 0 ? 100 + tap : tap;
    long n = numel(ndim, shape);
    float *buf = malloc(sizeof(float) * (size_t)n);
    for (long i = 0; i < n; i++) buf[i] = fake_value(layer, key, i);
    qd_err e = {0};
    int rc = s->emit(s, id, buf, ndim, shape, &e);
    free(buf);
    return rc;
}

/* Every tap of the tiny model, in execution order, as a backend would emit them. */
static int emit_all(qd_tap_sink *s, const qd_config *c) {
    int rc = emit_tap(s, c, -1, QD_TAP_EMBED);
    for (int l = 0; l < c->num_hidden_layers; l++)
        for (int tap = 0; tap < QD_NUM_LAYER_TAPS && rc == QD_OK; tap++) rc = emit_tap(s, c, l, tap);
    if (rc == QD_OK) rc = emit_tap(s, c, -1, QD_TAP_FINAL_NORM);
    if (rc == QD_OK) rc = emit_tap(s, c, -1, QD_TAP_LOGITS);
    return rc;
}

/* Reads a scalar string attribute (variable-length UTF-8, as the schema requires) into a malloc'd
 * string. */
static char *read_string_attr(hid_t obj, const char *key) {
    hid_t a = H5Aopen(obj, key, H5P_DEFAULT);
    assert_true(a >= 0);
    hid_t ft = H5Aget_type(a);
    assert_int_equal(H5Tget_class(ft), H5T_STRING);
    assert_true(H5Tis_variable_str(ft) > 0);
    assert_int_equal(H5Tget_cset(ft), H5T_CSET_UTF8);
    hid_t space = H5Aget_space(a);
    assert_int_equal(H5Sget_simple_extent_type(space), H5S_SCALAR);
    char *s = NULL;
    assert_true(H5Aread(a, ft, &s) >= 0);
    char *copy = strdup(s);
    H5free_memory(s);
    H5Sclose(space);
    H5Tclose(ft);
    H5Aclose(a);
    return copy;
}

static void expect_string_attr(hid_t obj, const char *key, const char *want) {
    char *s = read_string_attr(obj, key);
    assert_string_equal(s, want);
    free(s);
}

/* Opens a dataset and checks it is little-endian float32 with the given shape and the fake values;
 * returns its creation property list (caller closes). */
static hid_t check_tap(hid_t file, const char *path, int layer, int key, int ndim, const int64_t *shape) {
    hid_t ds = H5Dopen2(file, path, H5P_DEFAULT);
    if (ds < 0) print_error("missing dataset %s\n", path);
    assert_true(ds >= 0);
    hid_t ft = H5Dget_type(ds);
    assert_true(H5Tequal(ft, H5T_IEEE_F32LE) > 0);
    H5Tclose(ft);
    hid_t space = H5Dget_space(ds);
    hsize_t dims[3];
    assert_int_equal(H5Sget_simple_extent_ndims(space), ndim);
    H5Sget_simple_extent_dims(space, dims, NULL);
    for (int i = 0; i < ndim; i++) assert_int_equal(dims[i], (hsize_t)shape[i]);
    H5Sclose(space);
    long n = numel(ndim, shape);
    float *buf = malloc(sizeof(float) * (size_t)n);
    assert_true(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    for (long i = 0; i < n; i++) assert_true(buf[i] == fake_value(layer, key, i)); /* stored exactly */
    free(buf);
    hid_t dcpl = H5Dget_create_plist(ds);
    assert_int_equal(H5Pget_layout(dcpl), H5D_CHUNKED);
    H5Dclose(ds);
    return dcpl;
}

static void test_write_and_read_back(void **state) {
    (void)state;
    tmpdir t;
    make_dir(&t);
    qd_config c = tiny_config();
    qd_err e;
    qd_err_clear(&e);
    qd_dump *d = qd_dump_create(t.path, "/models/tiny", CONFIG_JSON, IDS, T, 0, &e);
    assert_non_null(d);
    assert_int_equal(qd_dump_add_backend(d, "ref", "fp32", &e), QD_OK);
    assert_int_equal(qd_dump_backend_attr(d, "ref", "accum", "f64", &e), QD_OK);
    assert_int_equal(qd_dump_add_backend(d, "hf", "bf16", &e), QD_OK);
    qd_tap_sink *s = qd_dump_backend_sink(d, "ref", &e);
    assert_non_null(s);
    assert_int_equal(emit_all(s, &c), QD_OK);
    /* a second backend, one tap written directly */
    int64_t shape[3];
    int ndim = qd_model_tap_shape(&c, QD_TAP_EMBED, T, shape);
    float emb[T * 8];
    for (int i = 0; i < T * 8; i++) emb[i] = fake_value(-1, 100 + QD_TAP_EMBED, i);
    assert_int_equal(qd_dump_write_tap(d, "hf", qd_tap_model(QD_TAP_EMBED), emb, ndim, shape, &e), QD_OK);

    /* until commit the final name does not exist, only the temp file does */
    assert_int_not_equal(access(t.path, F_OK), 0);
    assert_int_equal(count_entries(t.dir), 1);
    assert_int_equal(qd_dump_close(d, 1, &e), QD_OK);
    assert_int_equal(access(t.path, F_OK), 0);
    assert_int_equal(count_entries(t.dir), 1); /* the final file, no temp file */

    hid_t f = H5Fopen(t.path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    expect_string_attr(f, "schema", "qwen3-diff/1");
    expect_string_attr(f, "model", "/models/tiny");
    expect_string_attr(f, "config_json", CONFIG_JSON);
    expect_string_attr(f, "tool_version", QD_VERSION);

    hid_t ids = H5Dopen2(f, "/input_ids", H5P_DEFAULT);
    assert_true(ids >= 0);
    hid_t it = H5Dget_type(ids);
    assert_true(H5Tequal(it, H5T_STD_I32LE) > 0);
    H5Tclose(it);
    hid_t isp = H5Dget_space(ids);
    hsize_t idim;
    assert_int_equal(H5Sget_simple_extent_ndims(isp), 1);
    H5Sget_simple_extent_dims(isp, &idim, NULL);
    assert_int_equal(idim, T);
    H5Sclose(isp);
    int32_t got[T];
    assert_true(H5Dread(ids, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, got) >= 0);
    for (int i = 0; i < T; i++) assert_int_equal(got[i], IDS[i]);
    H5Dclose(ids);

    hid_t g = H5Gopen2(f, "/ref", H5P_DEFAULT);
    assert_true(g >= 0);
    expect_string_attr(g, "precision", "fp32");
    expect_string_attr(g, "accum", "f64");
    H5Gclose(g);
    g = H5Gopen2(f, "/hf", H5P_DEFAULT);
    expect_string_attr(g, "precision", "bf16");
    H5Gclose(g);

    char path[128];
    for (int l = 0; l < c.num_hidden_layers; l++)
        for (int tap = 0; tap < QD_NUM_LAYER_TAPS; tap++) {
            snprintf(path, sizeof path, "/ref/layers/%03d/%s", l, qd_layer_tap_name(tap));
            ndim = qd_layer_tap_shape(&c, tap, T, shape);
            H5Pclose(check_tap(f, path, l, tap, ndim, shape));
        }
    /* q_norm is (T, NH, HD) and k_rope (T, NKV, HD) */
    ndim = qd_layer_tap_shape(&c, QD_TAP_Q_NORM, T, shape);
    assert_int_equal(ndim, 3);
    for (int mt = 0; mt < QD_NUM_MODEL_TAPS; mt++) {
        snprintf(path, sizeof path, "/ref/%s", qd_model_tap_name(mt));
        ndim = qd_model_tap_shape(&c, mt, T, shape);
        hid_t dcpl = check_tap(f, path, -1, 100 + mt, ndim, shape);
        assert_int_equal(H5Pget_nfilters(dcpl), 0); /* compress 0: no filters */
        H5Pclose(dcpl);
    }
    ndim = qd_model_tap_shape(&c, QD_TAP_EMBED, T, shape);
    H5Pclose(check_tap(f, "/hf/embed", -1, 100 + QD_TAP_EMBED, ndim, shape));
    /* layer groups exist only where taps were written */
    assert_true(H5Lexists(f, "/ref/layers/002", H5P_DEFAULT) == 0);
    assert_true(H5Lexists(f, "/hf/layers", H5P_DEFAULT) == 0);
    H5Fclose(f);
    remove_dir(&t);
}

static void test_compression_and_chunks(void **state) {
    (void)state;
    tmpdir t;
    make_dir(&t);
    qd_config c = tiny_config();
    c.vocab_size = 300000; /* a 1.2 MB row: over the chunk budget, so the row is split */
    qd_err e;
    qd_dump *d = qd_dump_create(t.path, "m", "{}", IDS, T, 6, &e);
    assert_non_null(d);
    assert_int_equal(qd_dump_add_backend(d, "ref", "fp32", &e), QD_OK);
    int64_t shape[3];
    int ndim = qd_model_tap_shape(&c, QD_TAP_LOGITS, T, shape);
    long n = numel(ndim, shape);
    float *buf = malloc(sizeof(float) * (size_t)n);
    for (long i = 0; i < n; i++) buf[i] = fake_value(-1, 7, i % 1000); /* compressible */
    assert_int_equal(qd_dump_write_tap(d, "ref", qd_tap_model(QD_TAP_LOGITS), buf, ndim, shape, &e), QD_OK);
    ndim = qd_layer_tap_shape(&c, QD_TAP_K_NORM, T, shape);
    for (long i = 0; i < numel(ndim, shape); i++) buf[i] = fake_value(0, QD_TAP_K_NORM, i);
    assert_int_equal(qd_dump_write_tap(d, "ref", qd_tap_layer(0, QD_TAP_K_NORM), buf, ndim, shape, &e), QD_OK);
    assert_int_equal(qd_dump_close(d, 1, &e), QD_OK);

    hid_t f = H5Fopen(t.path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t ds = H5Dopen2(f, "/ref/logits", H5P_DEFAULT);
    hid_t dcpl = H5Dget_create_plist(ds);
    hsize_t chunk[3];
    assert_int_equal(H5Pget_chunk(dcpl, 3, chunk), 2);
    assert_int_equal(chunk[0], 1);
    assert_int_equal(chunk[1], (1u << 20) / 4); /* 1 MiB of floats */
    assert_int_equal(H5Pget_nfilters(dcpl), 2);
    unsigned flags, cd[4];
    size_t ncd = 4;
    assert_int_equal(H5Pget_filter2(dcpl, 0, &flags, &ncd, cd, 0, NULL, NULL), H5Z_FILTER_SHUFFLE);
    ncd = 4;
    assert_int_equal(H5Pget_filter2(dcpl, 1, &flags, &ncd, cd, 0, NULL, NULL), H5Z_FILTER_DEFLATE);
    assert_int_equal(cd[0], 6); /* the gzip level asked for */
    float *back = malloc(sizeof(float) * (size_t)n);
    assert_true(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, back) >= 0);
    for (long i = 0; i < n; i++) assert_true(back[i] == fake_value(-1, 7, i % 1000)); /* lossless */
    H5Pclose(dcpl);
    H5Dclose(ds);
    /* small rows: every row of the tap in one chunk */
    ds = H5Dopen2(f, "/ref/layers/000/k_norm", H5P_DEFAULT);
    dcpl = H5Dget_create_plist(ds);
    assert_int_equal(H5Pget_chunk(dcpl, 3, chunk), 3);
    assert_int_equal(chunk[0], T);
    assert_int_equal(chunk[1], 1);
    assert_int_equal(chunk[2], 4);
    H5Pclose(dcpl);
    H5Dclose(ds);
    H5Fclose(f);
    free(back);
    free(buf);
    remove_dir(&t);
}

static void test_abort_leaves_nothing(void **state) {
    (void)state;
    tmpdir t;
    make_dir(&t);
    qd_config c = tiny_config();
    qd_err e;
    qd_dump *d = qd_dump_create(t.path, "m", CONFIG_JSON, IDS, T, 1, &e);
    assert_non_null(d);
    assert_int_equal(qd_dump_add_backend(d, "ref", "fp32", &e), QD_OK);
    assert_int_equal(emit_all(qd_dump_backend_sink(d, "ref", &e), &c), QD_OK);
    assert_int_equal(count_entries(t.dir), 1); /* the temp file */
    assert_int_equal(qd_dump_close(d, 0, &e), QD_OK);
    assert_int_equal(count_entries(t.dir), 0); /* neither the final nor the temp file */
    remove_dir(&t);
}

static void test_duplicate_tap(void **state) {
    (void)state;
    tmpdir t;
    make_dir(&t);
    qd_config c = tiny_config();
    qd_err e;
    qd_dump *d = qd_dump_create(t.path, "m", CONFIG_JSON, IDS, T, 0, &e);
    assert_int_equal(qd_dump_add_backend(d, "ref", "fp32", &e), QD_OK);
    int64_t shape[3];
    int ndim = qd_layer_tap_shape(&c, QD_TAP_Q_NORM, T, shape);
    float buf[T * 8] = {0};
    assert_int_equal(qd_dump_write_tap(d, "ref", qd_tap_layer(1, QD_TAP_Q_NORM), buf, ndim, shape, &e), QD_OK);
    assert_int_equal(qd_dump_write_tap(d, "ref", qd_tap_layer(1, QD_TAP_Q_NORM), buf, ndim, shape, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "duplicate tap"));
    assert_non_null(strstr(e.msg, "/ref/layers/001/q_norm"));
    /* through the sink: the emit fails and fills the caller's qd_err with why */
    qd_tap_sink *s = qd_dump_backend_sink(d, "ref", &e);
    assert_non_null(s);
    qd_err se = {0};
    assert_int_equal(s->emit(s, qd_tap_layer(1, QD_TAP_Q_NORM), buf, ndim, shape, &se), QD_EINPUT);
    assert_int_equal(se.code, QD_EINPUT);
    assert_non_null(strstr(se.msg, "duplicate tap"));
    assert_non_null(strstr(se.msg, "/ref/layers/001/q_norm"));
    /* same name in another layer or backend is not a duplicate */
    qd_err_clear(&se);
    assert_int_equal(s->emit(s, qd_tap_layer(0, QD_TAP_Q_NORM), buf, ndim, shape, &se), QD_OK);
    assert_int_equal(se.code, QD_OK);
    /* a backend added twice */
    assert_int_equal(qd_dump_add_backend(d, "ref", "fp32", &e), QD_EINPUT);
    assert_int_equal(qd_dump_close(d, 0, &e), QD_OK);
    remove_dir(&t);
}

static void test_bad_inputs(void **state) {
    (void)state;
    tmpdir t;
    make_dir(&t);
    qd_config c = tiny_config();
    qd_err e;
    qd_dump *d = qd_dump_create(t.path, "m", CONFIG_JSON, IDS, T, 0, &e);
    assert_non_null(d);
    assert_int_equal(qd_dump_add_backend(d, "ref", "fp8", &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "precision"));
    assert_non_null(strstr(e.msg, "fp8"));
    assert_int_equal(qd_dump_add_backend(d, "ref", NULL, &e), QD_EINPUT);
    assert_int_equal(qd_dump_add_backend(d, "a/b", "fp32", &e), QD_EINPUT);
    assert_int_equal(qd_dump_add_backend(d, "", "fp32", &e), QD_EINPUT);
    assert_int_equal(qd_dump_add_backend(d, "diff", "fp32", &e), QD_EINPUT); /* reserved */
    assert_int_equal(qd_dump_add_backend(d, "ref", "fp32", &e), QD_OK);
    assert_int_equal(qd_dump_backend_attr(d, "ref", "precision", "fp16", &e), QD_EINPUT);
    assert_int_equal(qd_dump_backend_attr(d, "emu", "accum", "f32", &e), QD_EINPUT);

    int64_t shape[3];
    float buf[T * 12] = {0};
    int ndim = qd_layer_tap_shape(&c, QD_TAP_ACT, T, shape);
    const qd_tap_id act0 = qd_tap_layer(0, QD_TAP_ACT);
    assert_int_equal(qd_dump_write_tap(d, "emu", act0, buf, ndim, shape, &e), QD_EINPUT); /* not added */
    assert_int_equal(qd_dump_write_tap(d, "ref", qd_tap_layer(0, QD_NUM_LAYER_TAPS), buf, ndim, shape, &e),
                     QD_EINPUT); /* no such tap */
    assert_non_null(strstr(e.msg, "not a tap of schema v1"));
    const qd_tap_id act_model = {QD_POS_HEAD, -1, QD_TAP_ACT}; /* a layer tap's number outside the layers */
    assert_int_equal(qd_dump_write_tap(d, "ref", act_model, buf, ndim, shape, &e), QD_EINPUT);
    const qd_tap_id embed_in_layer = {QD_POS_EMBED, 0, QD_TAP_EMBED};
    assert_int_equal(qd_dump_write_tap(d, "ref", embed_in_layer, buf, ndim, shape, &e), QD_EINPUT);
    assert_int_equal(qd_dump_write_tap(d, "ref", qd_tap_layer(1000, QD_TAP_ACT), buf, ndim, shape, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "layer 1000"));
    assert_int_equal(qd_dump_write_tap(d, "ref", qd_tap_layer(-1, QD_TAP_ACT), buf, ndim, shape, &e), QD_EINPUT);
    assert_int_equal(qd_dump_write_tap(d, "ref", act0, buf, 3, shape, &e), QD_EINPUT); /* rank */
    shape[0] = T + 1;
    assert_int_equal(qd_dump_write_tap(d, "ref", act0, buf, ndim, shape, &e), QD_EINPUT); /* rows != T */
    assert_non_null(strstr(e.msg, "/ref/layers/000/act"));
    qd_err_clear(&e);
    assert_null(qd_dump_backend_sink(d, "emu", &e));
    assert_int_equal(e.code, QD_EINPUT);
    assert_non_null(strstr(e.msg, "'emu' was not added"));
    assert_int_equal(qd_dump_close(d, 0, &e), QD_OK);

    assert_null(qd_dump_create(t.path, "m", "{}", IDS, 0, 0, &e)); /* no tokens */
    assert_int_equal(e.code, QD_EINPUT);
    assert_null(qd_dump_create(t.path, "m", "{}", IDS, T, 10, &e)); /* gzip level */
    assert_int_equal(e.code, QD_EINPUT);
    assert_null(qd_dump_create(t.dir, "m", "{}", IDS, T, 0, &e)); /* a directory as the output name */
    assert_int_equal(e.code, QD_EINPUT);
    assert_int_equal(count_entries(t.dir), 0);
    remove_dir(&t);
}

static void test_unwritable_path(void **state) {
    (void)state;
    qd_err e;
    qd_err_clear(&e);
    qd_dump *d = qd_dump_create("/nonexistent_qd_dir/sub/out.h5", "m", "{}", IDS, T, 0, &e);
    assert_null(d);
    assert_int_equal(e.code, QD_ERUNTIME);
    assert_non_null(strstr(e.msg, "H5Fcreate"));
    assert_non_null(strstr(e.msg, "/nonexistent_qd_dir/sub/out.h5"));
    assert_null(strchr(e.msg, '\n'));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_and_read_back),  cmocka_unit_test(test_compression_and_chunks),
        cmocka_unit_test(test_abort_leaves_nothing), cmocka_unit_test(test_duplicate_tap),
        cmocka_unit_test(test_bad_inputs),           cmocka_unit_test(test_unwritable_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
