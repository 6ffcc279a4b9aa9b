/* test_safetensors.c: the safetensors reader (common/safetensors.c).
 *
 * Valid files are written with qd_st_write; malformed ones are crafted byte by byte (8-byte LE
 * header length, header text, data). Every file lives in a mkdtemp directory under /tmp, removed at
 * the end. Each refusal checks rc == QD_EINPUT and that the one-line message names the file (and
 * the tensor where there is one). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#define QD_TEST_TMPDIR "/tmp/qd-test-st-XXXXXX"
#include "qd_test_tmpdir.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qd_safetensors.h"

/* qd_path_join, asserting that it allocated. */
static char *path_join(const char *dir, const char *name) {
    qd_err e;
    qd_err_clear(&e);
    char *p = qd_path_join(dir, name, &e);
    if (!p) fail_msg("qd_path_join: %s", e.msg);
    return p;
}

/* A fresh subdirectory of tmpdir per test, so tests cannot see each other's files. */
static char *subdir(const char *name) {
    char *d = path_join(tmpdir, name);
    assert_int_equal(mkdir(d, 0755), 0);
    return d;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* A hand-made safetensors file: LE u64 hlen, the header text, then ndata bytes of data. hlen is
 * strlen(header) unless hlen_override is nonzero. */
static void write_raw(const char *path, const char *header, const void *data, size_t ndata, uint64_t hlen_override) {
    size_t hl = strlen(header);
    uint64_t hlen = hlen_override ? hlen_override : hl;
    unsigned char *buf = qd_alloc(8 + hl + ndata, NULL);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (ndata) memcpy(buf + 8 + hl, data, ndata);
    write_bytes(path, buf, 8 + hl + ndata);
    free(buf);
}

/* rc must be QD_EINPUT with a one-line message containing each non-NULL needle. */
static void expect_einput(int rc, const qd_err *e, const char *n1, const char *n2, const char *n3) {
    if (rc != QD_EINPUT) fail_msg("rc %d (expected QD_EINPUT), message '%s'", rc, e->msg);
    assert_int_equal(e->code, QD_EINPUT);
    const char *needles[3] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i] && !strstr(e->msg, needles[i])) fail_msg("message '%s' lacks '%s'", e->msg, needles[i]);
    assert_null(strchr(e->msg, '\n'));
}

/* Opens one crafted file; it must be refused naming the file and the needles. The qd_st stays
 * empty (nothing of a refused file is kept). */
static void expect_file_refused(const char *path, const char *n1, const char *n2) {
    qd_st st = {0};
    qd_err e;
    qd_err_clear(&e);
    int rc = qd_st_open_file(&st, path, &e);
    expect_einput(rc, &e, path, n1, n2);
    assert_int_equal(st.n, 0);
    assert_int_equal(st.nfiles, 0);
    qd_st_close(&st);
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Loaded values must equal the expected ones bit for bit (exact upcast; also tells -0 from +0). */
static void expect_bits(const float *got, const float *want, int n) {
    for (int i = 0; i < n; i++)
        if (f32_bits(got[i]) != f32_bits(want[i]))
            fail_msg("element %d: got %a, want %a", i, (double)got[i], (double)want[i]);
}

// ----------------------------------------------------------------------------
// valid files

static void test_roundtrip_dtypes(void **state) {
    (void)state;
    char *d = subdir("roundtrip");
    char *path = path_join(d, "model.safetensors");

    /* BF16: the fp32 value is the bf16 bits shifted left 16, by definition of the format. */
    static const uint16_t bf16[8] = {0x3f80, 0xc040, 0x0001, 0x8001, 0x7f7f, 0xff7f, 0x3dcd, 0x8000};
    float bf16_want[8];
    for (int i = 0; i < 8; i++) {
        uint32_t u = (uint32_t)bf16[i] << 16;
        memcpy(&bf16_want[i], &u, 4);
    }
    /* F16: expected values computed independently with ldexp. */
    static const uint16_t f16[10] = {0x3c00, 0xc000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x7bff, 0xfbff, 0x3555, 0x8000};
    const float f16_want[10] = {1.0f,
                                -2.0f,
                                ldexpf(1.0f, -24), /* smallest subnormal */
                                -ldexpf(1.0f, -24),
                                ldexpf(1023.0f, -24), /* largest subnormal */
                                ldexpf(1.0f, -14),    /* smallest normal */
                                65504.0f,             /* largest finite */
                                -65504.0f,
                                ldexpf(1365.0f, -12), /* 0x3555 = (1024+341) * 2^-12 */
                                -0.0f};
    /* F32: copied as is, including subnormals and extremes. */
    const float f32[8] = {1.5f, -2.25f, 1e-45f, -1e-40f, 3.4028235e38f, -3.4028235e38f, 0.1f, -0.0f};

    const qd_st_entry ents[3] = {
        {"a.bf16", QD_DT_BF16, 2, {2, 4}, bf16},
        {"b.f16", QD_DT_F16, 1, {10}, f16},
        {"c.f32", QD_DT_F32, 3, {2, 2, 2}, f32},
    };
    qd_err e;
    assert_int_equal(qd_st_write(path, ents, 3, "{\"format\": \"pt\"}", &e), QD_OK);

    qd_st st = {0};
    int rc = qd_st_open_dir(&st, d, &e);
    if (rc) fail_msg("%s", e.msg);
    assert_int_equal(st.n, 3); /* __metadata__ is not a tensor */
    assert_int_equal(st.nfiles, 1);
    assert_null(qd_st_find(&st, "__metadata__"));
    assert_null(qd_st_find(&st, "nope"));

    const qd_tensor *t = qd_st_find(&st, "a.bf16");
    assert_non_null(t);
    assert_int_equal(t->dtype, QD_DT_BF16);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 4);
    assert_int_equal(qd_tensor_numel(t), 8);
    assert_int_equal(t->nbytes, 16);
    assert_string_equal(t->file, path);
    float out[10];
    qd_tensor_to_f32(t, out);
    expect_bits(out, bf16_want, 8);

    t = qd_st_find(&st, "b.f16");
    assert_non_null(t);
    assert_int_equal(t->dtype, QD_DT_F16);
    assert_int_equal(qd_tensor_numel(t), 10);
    assert_int_equal(t->nbytes, 20);
    qd_tensor_to_f32(t, out);
    expect_bits(out, f16_want, 10);

    t = qd_st_find(&st, "c.f32");
    assert_non_null(t);
    assert_int_equal(t->dtype, QD_DT_F32);
    assert_int_equal(t->ndim, 3);
    assert_int_equal(qd_tensor_numel(t), 8);
    qd_tensor_to_f32(t, out);
    expect_bits(out, f32, 8);
    qd_st_close(&st);
    assert_int_equal(st.n, 0);
    assert_null(st.tensors);
    free(path);
    free(d);
}

/* Data at an odd offset (header length not a multiple of 8), an empty tensor and a scalar. */
static void test_unaligned_and_edge_shapes(void **state) {
    (void)state;
    char *d = subdir("unaligned");
    char *path = path_join(d, "x.safetensors");
    const float v[3] = {-1.0f, 2.5f, 1e-42f};
    unsigned char data[1 + 12 + 4];
    data[0] = 0xAA;          /* one byte of gap before the first tensor */
    memcpy(data + 1, v, 12); /* odd offset */
    const float s = 7.0f;
    memcpy(data + 13, &s, 4);
    write_raw(path,
              "{\"v\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[1,13]},"
              "\"empty\":{\"dtype\":\"BF16\",\"shape\":[0,5],\"data_offsets\":[5,5]},"
              "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[13,17]}}",
              data, sizeof data, 0);
    qd_st st = {0};
    qd_err e;
    int rc = qd_st_open_file(&st, path, &e);
    if (rc) fail_msg("%s", e.msg);
    assert_int_equal(st.n, 3);
    float out[3];
    qd_tensor_to_f32(qd_st_find(&st, "v"), out);
    expect_bits(out, v, 3);
    assert_int_equal(qd_tensor_numel(qd_st_find(&st, "empty")), 0);
    assert_int_equal(qd_st_find(&st, "s")->ndim, 0);
    assert_int_equal(qd_tensor_numel(qd_st_find(&st, "s")), 1);
    qd_tensor_to_f32(qd_st_find(&st, "s"), out);
    assert_true(out[0] == 7.0f);
    qd_st_close(&st);
    free(path);
    free(d);
}

/* Releasing a tensor's pages after copying it out loses nothing: read again, its bytes come back from the
 * file, and its neighbours (sharing its first and last pages) are untouched. Three tensors of several
 * pages each, none starting on a page boundary. */
static void test_release(void **state) {
    (void)state;
    char *d = subdir("release");
    char *path = path_join(d, "x.safetensors");
    enum { N = 5000 }; /* 20000 bytes per tensor: whole pages inside each, partial ones at the ends */
    float *a = malloc(3 * N * sizeof(float));
    for (int i = 0; i < 3 * N; i++) a[i] = (float)i * 0.5f - 7.0f;
    qd_st_entry ents[3];
    const char *names[3] = {"a", "b", "c"};
    for (int k = 0; k < 3; k++)
        ents[k] = (qd_st_entry){.name = names[k], .dtype = QD_DT_F32, .ndim = 1, .shape = {N}, .data = a + k * N};
    qd_err e;
    assert_int_equal(qd_st_write(path, ents, 3, NULL, &e), QD_OK);
    qd_st st = {0};
    if (qd_st_open_file(&st, path, &e)) fail_msg("%s", e.msg);
    float *out = malloc(N * sizeof(float));
    qd_tensor_to_f32(qd_st_find(&st, "b"), out);
    qd_tensor_release(qd_st_find(&st, "b"));
    for (int k = 0; k < 3; k++) {
        qd_tensor_to_f32(qd_st_find(&st, names[k]), out);
        expect_bits(out, a + k * N, N);
        qd_tensor_release(qd_st_find(&st, names[k]));
    }
    qd_tensor_to_f32(qd_st_find(&st, "b"), out); /* twice released */
    expect_bits(out, a + N, N);
    qd_st_close(&st);
    free(out);
    free(a);
    free(path);
    free(d);
}

static void write_index(const char *dir, const char *body) {
    char *p = path_join(dir, "model.safetensors.index.json");
    write_bytes(p, body, strlen(body));
    free(p);
}

/* Three shards, one of them holding two tensors (each shard is opened once). */
static void test_sharded(void **state) {
    (void)state;
    char *d = subdir("sharded");
    const float a[2] = {1, 2}, b[3] = {3, 4, 5}, c[1] = {6}, x[2] = {7, 8};
    qd_err e;
    const qd_st_entry s1[2] = {{"a", QD_DT_F32, 1, {2}, a}, {"x", QD_DT_F32, 1, {2}, x}};
    const qd_st_entry s2[1] = {{"b", QD_DT_F32, 1, {3}, b}};
    const qd_st_entry s3[1] = {{"c", QD_DT_F32, 1, {1}, c}};
    char *p1 = path_join(d, "model-00001-of-00003.safetensors");
    char *p2 = path_join(d, "model-00002-of-00003.safetensors");
    char *p3 = path_join(d, "model-00003-of-00003.safetensors");
    assert_int_equal(qd_st_write(p1, s1, 2, NULL, &e), QD_OK);
    assert_int_equal(qd_st_write(p2, s2, 1, NULL, &e), QD_OK);
    assert_int_equal(qd_st_write(p3, s3, 1, NULL, &e), QD_OK);
    write_index(d, "{\"metadata\": {\"total_size\": 32}, \"weight_map\": {"
                   "\"a\": \"model-00001-of-00003.safetensors\","
                   "\"b\": \"model-00002-of-00003.safetensors\","
                   "\"c\": \"model-00003-of-00003.safetensors\","
                   "\"x\": \"model-00001-of-00003.safetensors\"}}");
    qd_st st = {0};
    int rc = qd_st_open_dir(&st, d, &e);
    if (rc) fail_msg("%s", e.msg);
    assert_int_equal(st.nfiles, 3);
    assert_int_equal(st.n, 4);
    float out[3];
    const qd_tensor *t = qd_st_find(&st, "b");
    assert_non_null(t);
    assert_string_equal(t->file, p2);
    qd_tensor_to_f32(t, out);
    expect_bits(out, b, 3);
    assert_string_equal(qd_st_find(&st, "x")->file, p1);
    assert_string_equal(qd_st_find(&st, "c")->file, p3);
    qd_tensor_to_f32(qd_st_find(&st, "x"), out);
    expect_bits(out, x, 2);
    qd_st_close(&st);

    /* model.safetensors wins over an index when both exist (as in transformers). */
    char *single = path_join(d, "model.safetensors");
    assert_int_equal(qd_st_write(single, s3, 1, NULL, &e), QD_OK);
    assert_int_equal(qd_st_open_dir(&st, d, &e), QD_OK);
    assert_int_equal(st.n, 1);
    assert_int_equal(st.nfiles, 1);
    qd_st_close(&st);
    free(single);
    free(p1);
    free(p2);
    free(p3);
    free(d);
}

// ----------------------------------------------------------------------------
// refusals: files and directories

static void test_missing(void **state) {
    (void)state;
    char *d = subdir("empty");
    qd_st st = {0};
    qd_err e;
    expect_einput(qd_st_open_dir(&st, d, &e), &e, d, "model.safetensors.index.json", "model.safetensors ");
    char *nope = path_join(tmpdir, "no-such-dir");
    expect_einput(qd_st_open_dir(&st, nope, &e), &e, nope, NULL, NULL);
    char *f = path_join(d, "absent.safetensors");
    expect_einput(qd_st_open_file(&st, f, &e), &e, f, NULL, NULL);
    /* A directory is not a safetensors file. */
    expect_einput(qd_st_open_file(&st, d, &e), &e, d, "regular", NULL);
    assert_int_equal(st.n, 0);
    qd_st_close(&st);
    free(f);
    free(nope);
    free(d);
}

static void test_short_file(void **state) {
    (void)state;
    char *d = subdir("short");
    char *p = path_join(d, "short.safetensors");
    write_bytes(p, "\x10\0\0\0\0", 5);
    expect_file_refused(p, "truncated", "8");
    write_bytes(p, "", 0);
    expect_file_refused(p, "truncated", NULL);
    free(p);
    free(d);
}

static void test_header_past_end(void **state) {
    (void)state;
    char *d = subdir("hlen");
    char *p = path_join(d, "h.safetensors");
    write_raw(p, "{}", NULL, 0, 1000);
    expect_file_refused(p, "header length 1000", "past the end");
    /* A length near 2^64 must not wrap around. */
    write_raw(p, "{}", NULL, 0, UINT64_MAX - 3);
    expect_file_refused(p, "past the end", NULL);
    free(p);
    free(d);
}

static void test_header_not_json(void **state) {
    (void)state;
    char *d = subdir("notjson");
    char *p = path_join(d, "n.safetensors");
    write_raw(p, "{\"a\": {\"dtype\": ", NULL, 0, 0);
    expect_file_refused(p, "JSON", NULL);
    write_raw(p, "[1, 2, 3]", NULL, 0, 0);
    expect_file_refused(p, "object", NULL);
    /* A tensor name twice in one header. */
    write_raw(p,
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
              "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
              "\0\0\0\0\0\0\0\0", 8, 0);
    expect_file_refused(p, "duplicate", NULL);
    free(p);
    free(d);
}

static void test_bad_entry_types(void **state) {
    (void)state;
    char *d = subdir("types");
    char *p = path_join(d, "t.safetensors");
    const char zeros[16] = {0};
    write_raw(p, "{\"w\": [1]}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "object");
    write_raw(p, "{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "'dtype'");
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "'shape'");
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "'shape[0]'");
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "'data_offsets'");
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "'data_offsets'");
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "'data_offsets'");
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "dimensions");
    free(p);
    free(d);
}

static void test_offsets_out_of_range(void **state) {
    (void)state;
    char *d = subdir("range");
    char *p = path_join(d, "r.safetensors");
    const char zeros[16] = {0};
    /* end past the data section: 4 floats declared, 8 bytes present. */
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", zeros, 8, 0);
    expect_file_refused(p, "'w'", "out of range");
    /* begin > end */
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "out of range");
    /* negative begin */
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "out of range");
    /* offsets near 2^63 must not wrap around. */
    write_raw(p,
              "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
              "\"data_offsets\":[9223372036854775800,9223372036854775804]}}",
              zeros, 16, 0);
    expect_file_refused(p, "'w'", "out of range");
    free(p);
    free(d);
}

/* A valid file written by qd_st_write, then cut short: the data is shorter than the last end
 * offset. */
static void test_truncated_data(void **state) {
    (void)state;
    char *d = subdir("trunc");
    char *p = path_join(d, "model.safetensors");
    const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    const qd_st_entry ents[2] = {{"a", QD_DT_F32, 1, {4}, a}, {"b", QD_DT_F32, 1, {4}, b}};
    qd_err e;
    assert_int_equal(qd_st_write(p, ents, 2, NULL, &e), QD_OK);
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(truncate(p, sb.st_size - 4), 0);
    expect_file_refused(p, "'b'", "truncated");
    qd_st st = {0};
    expect_einput(qd_st_open_dir(&st, d, &e), &e, p, "'b'", NULL);
    qd_st_close(&st);
    free(p);
    free(d);
}

static void test_overlap(void **state) {
    (void)state;
    char *d = subdir("overlap");
    char *p = path_join(d, "o.safetensors");
    const char zeros[16] = {0};
    write_raw(p,
              "{\"first\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"second\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
              zeros, 16, 0);
    expect_file_refused(p, "'second'", "overlap tensor 'first'");
    /* Same range twice, listed in the other order. */
    write_raw(p,
              "{\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]},"
              "\"a\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]}}",
              zeros, 16, 0);
    expect_file_refused(p, "overlap", NULL);
    free(p);
    free(d);
}

static void test_size_mismatch(void **state) {
    (void)state;
    char *d = subdir("size");
    char *p = path_join(d, "s.safetensors");
    const char zeros[16] = {0};
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "[3]");
    /* BF16 of 4 elements is 8 bytes, not 16. */
    write_raw(p, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "needs 8");
    /* numel * itemsize overflowing size_t. */
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,8],\"data_offsets\":[0,8]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "overflow");
    free(p);
    free(d);
}

static void test_unknown_dtype(void **state) {
    (void)state;
    char *d = subdir("dtype");
    char *p = path_join(d, "d.safetensors");
    const char zeros[16] = {0};
    write_raw(p, "{\"w\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "unsupported dtype 'F64'");
    write_raw(p, "{\"w\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "unsupported dtype 'I64'");
    write_raw(p, "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "unsupported dtype 'F8_E4M3'");
    write_raw(p, "{\"w\":{\"dtype\":\"bf16\",\"shape\":[2],\"data_offsets\":[0,4]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "unsupported dtype 'bf16'"); /* names are case-sensitive */
    free(p);
    free(d);
}

static void test_negative_shape(void **state) {
    (void)state;
    char *d = subdir("neg");
    char *p = path_join(d, "n.safetensors");
    const char zeros[16] = {0};
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1,2],\"data_offsets\":[0,8]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "negative");
    /* -2 x -1 would give a positive product: each dimension must be checked. */
    write_raw(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2,-1],\"data_offsets\":[0,8]}}", zeros, 16, 0);
    expect_file_refused(p, "'w'", "negative");
    free(p);
    free(d);
}

// ----------------------------------------------------------------------------
// refusals: sharded checkpoints

/* Writes one F32 tensor per name into DIR/file. */
static void write_shard(const char *dir, const char *file, const char *const *names, int n) {
    static const float v[2] = {1, 2};
    qd_st_entry ents[4];
    for (int i = 0; i < n; i++) ents[i] = (qd_st_entry){names[i], QD_DT_F32, 1, {2}, v};
    char *p = path_join(dir, file);
    qd_err e;
    int rc = qd_st_write(p, ents, n, NULL, &e);
    if (rc) fail_msg("%s", e.msg);
    free(p);
}

static void test_shard_escapes(void **state) {
    (void)state;
    char *d = subdir("escape");
    char *idx = path_join(d, "model.safetensors.index.json");
    char *inner = path_join(d, "inner");
    assert_int_equal(mkdir(inner, 0755), 0);
    write_shard(inner, "s.safetensors", (const char *const[]){"a"}, 1);
    write_shard(tmpdir, "outside.safetensors", (const char *const[]){"a"}, 1);
    static const char *const bad[] = {
        "{\"weight_map\": {\"a\": \"../outside.safetensors\"}}",
        "{\"weight_map\": {\"a\": \"inner/s.safetensors\"}}",
        "{\"weight_map\": {\"a\": \"/etc/passwd\"}}",
        "{\"weight_map\": {\"a\": \"..\"}}",
        "{\"weight_map\": {\"a\": \"\"}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_index(d, bad[i]);
        qd_st st = {0};
        qd_err e;
        expect_einput(qd_st_open_dir(&st, d, &e), &e, idx, "'a'", "not a file name inside");
        assert_int_equal(st.nfiles, 0);
        qd_st_close(&st);
    }
    char *out = path_join(tmpdir, "outside.safetensors");
    remove(out);
    free(out);
    free(inner);
    free(idx);
    free(d);
}

static void test_index_malformed(void **state) {
    (void)state;
    char *d = subdir("badindex");
    char *idx = path_join(d, "model.safetensors.index.json");
    write_shard(d, "s1.safetensors", (const char *const[]){"a"}, 1);
    static const char *const bad[][2] = {
        {"{\"weight_map\": ", "JSON"},          {"[]", "object"},
        {"{\"metadata\": {}}", "'weight_map'"}, {"{\"weight_map\": []}", "'weight_map'"},
        {"{\"weight_map\": {}}", "empty"},      {"{\"weight_map\": {\"a\": 1}}", "'a'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_index(d, bad[i][0]);
        qd_st st = {0};
        qd_err e;
        expect_einput(qd_st_open_dir(&st, d, &e), &e, idx, bad[i][1], NULL);
        qd_st_close(&st);
    }
    /* A listed shard that does not exist. */
    write_index(d, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s9.safetensors\"}}");
    qd_st st = {0};
    qd_err e;
    expect_einput(qd_st_open_dir(&st, d, &e), &e, "s9.safetensors", NULL, NULL);
    qd_st_close(&st);
    free(idx);
    free(d);
}

static void test_index_tensor_missing(void **state) {
    (void)state;
    char *d = subdir("idxmissing");
    write_shard(d, "s1.safetensors", (const char *const[]){"a"}, 1);
    write_shard(d, "s2.safetensors", (const char *const[]){"b"}, 1);
    char *idx = path_join(d, "model.safetensors.index.json");
    char *s1 = path_join(d, "s1.safetensors");
    /* "c" is listed in s1 but s1 does not hold it. */
    write_index(d, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\", "
                   "\"c\": \"s1.safetensors\"}}");
    qd_st st = {0};
    qd_err e;
    expect_einput(qd_st_open_dir(&st, d, &e), &e, idx, "'c'", s1);
    qd_st_close(&st);
    /* "b" is listed in s1 but lives in s2 (which the index names too, for another tensor). */
    write_index(d, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\", "
                   "\"z\": \"s2.safetensors\"}}");
    expect_einput(qd_st_open_dir(&st, d, &e), &e, idx, "'b'", "s2.safetensors");
    qd_st_close(&st);
    /* s3 holds "extra", which the index does not list. */
    write_shard(d, "s3.safetensors", (const char *const[]){"b3", "extra"}, 2);
    write_index(d, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b3\": \"s3.safetensors\"}}");
    expect_einput(qd_st_open_dir(&st, d, &e), &e, "s3.safetensors", "'extra'", "not listed");
    qd_st_close(&st);
    free(s1);
    free(idx);
    free(d);
}

static void test_duplicate_across_shards(void **state) {
    (void)state;
    char *d = subdir("dup");
    write_shard(d, "s1.safetensors", (const char *const[]){"a", "w"}, 2);
    write_shard(d, "s2.safetensors", (const char *const[]){"b", "w"}, 2);
    write_index(d, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\", "
                   "\"w\": \"s1.safetensors\"}}");
    char *s1 = path_join(d, "s1.safetensors"), *s2 = path_join(d, "s2.safetensors");
    qd_st st = {0};
    qd_err e;
    expect_einput(qd_st_open_dir(&st, d, &e), &e, "'w'", s1, s2);
    qd_st_close(&st);
    /* The same through qd_st_open_file: the second file is refused and st keeps only the first. */
    assert_int_equal(qd_st_open_file(&st, s1, &e), QD_OK);
    expect_einput(qd_st_open_file(&st, s2, &e), &e, s2, "'w'", "duplicate");
    assert_int_equal(st.n, 2);
    assert_int_equal(st.nfiles, 1);
    qd_st_close(&st);
    free(s1);
    free(s2);
    free(d);
}

// ----------------------------------------------------------------------------

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_dtypes),
        cmocka_unit_test(test_unaligned_and_edge_shapes),
        cmocka_unit_test(test_release),
        cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_missing),
        cmocka_unit_test(test_short_file),
        cmocka_unit_test(test_header_past_end),
        cmocka_unit_test(test_header_not_json),
        cmocka_unit_test(test_bad_entry_types),
        cmocka_unit_test(test_offsets_out_of_range),
        cmocka_unit_test(test_truncated_data),
        cmocka_unit_test(test_overlap),
        cmocka_unit_test(test_size_mismatch),
        cmocka_unit_test(test_unknown_dtype),
        cmocka_unit_test(test_negative_shape),
        cmocka_unit_test(test_shard_escapes),
        cmocka_unit_test(test_index_malformed),
        cmocka_unit_test(test_index_tensor_missing),
        cmocka_unit_test(test_duplicate_across_shards),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
