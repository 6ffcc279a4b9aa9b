/* test_weights.c: binding a checkpoint to qd_weights (common/weights.c).
 *
 * A tiny Qwen3 (V 16, C 8, I 12, L 2, 4 heads, 2 KV heads, head_dim 4: NH*HD = 16 != C, the 0.6B
 * trap in miniature) is written by the test: config.json plus safetensors through qd_st_write, in
 * each dtype, tied and untied, single file and sharded. Values are small multiples of 1/8 (exact in
 * bf16 and fp16), derived from the tensor name, so every loaded float is checked for equality and a
 * tensor bound to the wrong slot shows up. Files live in a mkdtemp directory under /tmp, removed at
 * the end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#define QD_TEST_TMPDIR "/tmp/qd-test-weights-XXXXXX"
#include "qd_test_tmpdir.h"

#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qd_bf16.h"
#include "qd_weights.h"

/* qd_path_join, asserting that it allocated. */
static char *path_join(const char *dir, const char *name) {
    qd_err e;
    qd_err_clear(&e);
    char *p = qd_path_join(dir, name, &e);
    if (!p) fail_msg("qd_path_join: %s", e.msg);
    return p;
}

enum { V = 16, C = 8, I = 12, L = 2, NH = 4, NKV = 2, HD = 4 };

static char *subdir(const char *name) {
    char *d = path_join(tmpdir, name);
    assert_int_equal(mkdir(d, 0755), 0);
    return d;
}

/* The value of element i of tensor `name`: (k - 30) / 8 with k in [0, 61), exact in every dtype. */
static float gen(const char *name, int64_t i) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    return (float)((int)((uint64_t)(i * 7 + h % 61) % 61) - 30) / 8.0f;
}

static void write_config(const char *dir, int tied) {
    json_t *j = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:i, s:b, s:b, s:s, s:s}", "model_type",
                          "qwen3", "vocab_size", V, "hidden_size", C, "intermediate_size", I, "num_hidden_layers", L,
                          "num_attention_heads", NH, "num_key_value_heads", NKV, "head_dim", HD, "rms_norm_eps", 1e-6,
                          "rope_theta", 1000000, "tie_word_embeddings", tied, "attention_bias", 0, "hidden_act", "silu",
                          "torch_dtype", "bfloat16");
    assert_non_null(j);
    char *p = path_join(dir, "config.json");
    assert_int_equal(json_dump_file(j, p, JSON_INDENT(2)), 0);
    json_decref(j);
    free(p);
}

// ----------------------------------------------------------------------------
// a checkpoint under construction

typedef struct {
    qd_st_entry ent[64];
    char *names[64];
    void *bufs[64];
    int n;
} ckpt;

static void ck_add(ckpt *ck, const char *name, qd_dtype dt, int ndim, int64_t d0, int64_t d1) {
    assert_true(ck->n < 64);
    int64_t numel = d0 * (ndim == 2 ? d1 : 1);
    size_t isz = dt == QD_DT_F32 ? 4 : 2;
    unsigned char *buf = qd_alloc((size_t)numel * isz + 1, NULL);
    assert_non_null(buf);
    for (int64_t i = 0; i < numel; i++) {
        float f = gen(name, i);
        if (dt == QD_DT_F32) {
            memcpy(buf + 4 * i, &f, 4);
        } else {
            uint16_t h = dt == QD_DT_BF16 ? qd_f32_to_bf16(f) : qd_f32_to_f16(f);
            memcpy(buf + 2 * i, &h, 2);
        }
    }
    int k = ck->n++;
    ck->names[k] = strdup(name);
    assert_non_null(ck->names[k]);
    ck->bufs[k] = buf;
    ck->ent[k] = (qd_st_entry){ck->names[k], dt, ndim, {d0, ndim == 2 ? d1 : 0}, buf};
}

static void ck_remove(ckpt *ck, const char *name) {
    for (int k = 0; k < ck->n; k++) {
        if (strcmp(ck->names[k], name) != 0) continue;
        free(ck->names[k]);
        free(ck->bufs[k]);
        for (int j = k + 1; j < ck->n; j++) {
            ck->names[j - 1] = ck->names[j];
            ck->bufs[j - 1] = ck->bufs[j];
            ck->ent[j - 1] = ck->ent[j];
        }
        ck->n--;
        return;
    }
    fail_msg("no tensor '%s' to remove", name);
}

static void ck_free(ckpt *ck) {
    for (int k = 0; k < ck->n; k++) {
        free(ck->names[k]);
        free(ck->bufs[k]);
    }
    ck->n = 0;
}

/* dt_norm: dtype of the 1-D (norm) tensors; dt: of the others. */
static void ck_build(ckpt *ck, qd_dtype dt, qd_dtype dt_norm, int with_lm_head) {
    memset(ck, 0, sizeof *ck);
    char name[96];
    ck_add(ck, "model.embed_tokens.weight", dt, 2, V, C);
    for (int l = 0; l < L; l++) {
#define ADD(suffix, dtype, ndim, d0, d1)                          \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix); \
    ck_add(ck, name, dtype, ndim, d0, d1)
        ADD("input_layernorm.weight", dt_norm, 1, C, 0);
        ADD("self_attn.q_proj.weight", dt, 2, NH * HD, C);
        ADD("self_attn.k_proj.weight", dt, 2, NKV * HD, C);
        ADD("self_attn.v_proj.weight", dt, 2, NKV * HD, C);
        ADD("self_attn.q_norm.weight", dt_norm, 1, HD, 0);
        ADD("self_attn.k_norm.weight", dt_norm, 1, HD, 0);
        ADD("self_attn.o_proj.weight", dt, 2, C, NH * HD);
        ADD("post_attention_layernorm.weight", dt_norm, 1, C, 0);
        ADD("mlp.gate_proj.weight", dt, 2, I, C);
        ADD("mlp.up_proj.weight", dt, 2, I, C);
        ADD("mlp.down_proj.weight", dt, 2, C, I);
#undef ADD
    }
    ck_add(ck, "model.norm.weight", dt_norm, 1, C, 0);
    if (with_lm_head) ck_add(ck, "lm_head.weight", dt, 2, V, C);
}

/* Writes the checkpoint: model.safetensors, or nshards shards plus an index. */
static void ck_write(const ckpt *ck, const char *dir, int nshards) {
    qd_err e;
    int rc;
    if (nshards <= 1) {
        char *p = path_join(dir, "model.safetensors");
        rc = qd_st_write(p, ck->ent, ck->n, NULL, &e);
        if (rc) fail_msg("%s", e.msg);
        free(p);
        return;
    }
    json_t *wm = json_object();
    int per = (ck->n + nshards - 1) / nshards;
    for (int s = 0; s < nshards; s++) {
        char file[64];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, nshards);
        int lo = s * per, hi = lo + per < ck->n ? lo + per : ck->n;
        char *p = path_join(dir, file);
        rc = qd_st_write(p, ck->ent + lo, hi - lo, NULL, &e);
        if (rc) fail_msg("%s", e.msg);
        free(p);
        for (int k = lo; k < hi; k++) json_object_set_new(wm, ck->names[k], json_string(file));
    }
    json_t *idx = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 0, "weight_map", wm);
    char *p = path_join(dir, "model.safetensors.index.json");
    assert_int_equal(json_dump_file(idx, p, JSON_INDENT(2)), 0);
    json_decref(idx);
    free(p);
}

// ----------------------------------------------------------------------------
// checks

static size_t expected_floats(int tied) {
    size_t layer =
        C + (size_t)NH * HD * C + 2 * (size_t)NKV * HD * C + 2 * HD + (size_t)C * NH * HD + C + 3 * (size_t)I * C;
    return (size_t)V * C + L * layer + C + (tied ? 0 : (size_t)V * C);
}

/* p must hold gen(name, i) for i < numel and lie inside w's single allocation. */
static void check_tensor(const qd_weights *w, const float *p, const char *name, int64_t numel) {
    assert_non_null(p);
    assert_true(p >= w->mem && p + numel <= w->mem + w->mem_floats);
    for (int64_t i = 0; i < numel; i++)
        if (p[i] != gen(name, i))
            fail_msg("%s[%lld] = %g, want %g", name, (long long)i, (double)p[i], (double)gen(name, i));
}

static void check_weights(const qd_weights *w, int tied) {
    char name[96];
    assert_int_equal(w->cfg.head_dim, HD);
    assert_int_equal(w->cfg.tie_word_embeddings, tied);
    assert_int_equal(w->mem_floats, expected_floats(tied));
    check_tensor(w, w->embed, "model.embed_tokens.weight", V * C);
    for (int l = 0; l < L; l++) {
        const qd_layer_weights *lw = &w->layers[l];
#define CHECK(ptr, suffix, numel)                                 \
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix); \
    check_tensor(w, ptr, name, numel)
        CHECK(lw->input_layernorm, "input_layernorm.weight", C);
        CHECK(lw->q_proj, "self_attn.q_proj.weight", NH * HD * C);
        CHECK(lw->k_proj, "self_attn.k_proj.weight", NKV * HD * C);
        CHECK(lw->v_proj, "self_attn.v_proj.weight", NKV * HD * C);
        CHECK(lw->q_norm, "self_attn.q_norm.weight", HD);
        CHECK(lw->k_norm, "self_attn.k_norm.weight", HD);
        CHECK(lw->o_proj, "self_attn.o_proj.weight", C * NH * HD);
        CHECK(lw->post_attention_layernorm, "post_attention_layernorm.weight", C);
        CHECK(lw->gate_proj, "mlp.gate_proj.weight", I * C);
        CHECK(lw->up_proj, "mlp.up_proj.weight", I * C);
        CHECK(lw->down_proj, "mlp.down_proj.weight", C * I);
#undef CHECK
    }
    check_tensor(w, w->norm, "model.norm.weight", C);
    if (tied) {
        assert_ptr_equal(w->lm_head, w->embed);
    } else {
        assert_true(w->lm_head != w->embed);
        check_tensor(w, w->lm_head, "lm_head.weight", V * C);
    }
}

static void load_ok(const char *dir, qd_weights *w) {
    qd_err e;
    int rc = qd_weights_load(dir, w, &e);
    if (rc) fail_msg("rc %d: %s", rc, e.msg);
}

/* The load must fail with QD_EINPUT, the needles in a one-line message, and w left freed. */
static void load_refused(const char *dir, const char *n1, const char *n2, const char *n3) {
    qd_weights w;
    memset(&w, 0xff, sizeof w); /* garbage in: load must not rely on the caller zeroing */
    qd_err e;
    qd_err_clear(&e);
    int rc = qd_weights_load(dir, &w, &e);
    if (rc != QD_EINPUT) fail_msg("rc %d (expected QD_EINPUT), message '%s'", rc, e.msg);
    const char *needles[3] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i] && !strstr(e.msg, needles[i])) fail_msg("message '%s' lacks '%s'", e.msg, needles[i]);
    assert_null(strchr(e.msg, '\n'));
    assert_null(w.mem);
    assert_null(w.layers);
    assert_null(w.config_json);
    assert_null(w.dir);
    qd_weights_free(&w); /* freeing a failed load is harmless */
}

// ----------------------------------------------------------------------------
// loads

static void test_tied_bf16(void **state) {
    (void)state;
    char *d = subdir("tied_bf16");
    write_config(d, 1);
    ckpt ck;
    ck_build(&ck, QD_DT_BF16, QD_DT_BF16, 0);
    ck_write(&ck, d, 1);
    qd_weights w;
    load_ok(d, &w);
    check_weights(&w, 1);
    assert_int_equal(w.src_dtype, QD_DT_BF16);
    assert_string_equal(w.dir, d);
    assert_non_null(w.config_json);
    assert_non_null(strstr(w.config_json, "\"head_dim\": 4")); /* the file's text, verbatim */
    qd_weights_free(&w);
    assert_null(w.mem);
    ck_free(&ck);
    free(d);
}

static void test_untied_f16(void **state) {
    (void)state;
    char *d = subdir("untied_f16");
    write_config(d, 0);
    ckpt ck;
    ck_build(&ck, QD_DT_F16, QD_DT_F16, 1);
    ck_write(&ck, d, 1);
    qd_weights w;
    load_ok(d, &w);
    check_weights(&w, 0);
    assert_int_equal(w.src_dtype, QD_DT_F16);
    qd_weights_free(&w);
    ck_free(&ck);
    free(d);
}

static void test_untied_f32_sharded(void **state) {
    (void)state;
    char *d = subdir("untied_f32_sharded");
    write_config(d, 0);
    ckpt ck;
    ck_build(&ck, QD_DT_F32, QD_DT_F32, 1);
    ck_write(&ck, d, 3);
    qd_weights w;
    load_ok(d, &w);
    check_weights(&w, 0);
    assert_int_equal(w.src_dtype, QD_DT_F32);
    qd_weights_free(&w);
    ck_free(&ck);
    free(d);
}

/* Norms in F32 and the rest in BF16 (some exports keep norms in fp32); tied, yet lm_head.weight is
 * present with other values: it is ignored, as transformers does, and lm_head is the embedding. */
static void test_mixed_dtypes_tied_with_lm_head(void **state) {
    (void)state;
    char *d = subdir("mixed");
    write_config(d, 1);
    ckpt ck;
    ck_build(&ck, QD_DT_BF16, QD_DT_F32, 1);
    ck_write(&ck, d, 2);
    qd_weights w;
    load_ok(d, &w);
    check_weights(&w, 1);
    assert_int_equal(w.src_dtype, QD_DT_BF16);
    qd_weights_free(&w);
    ck_free(&ck);
    free(d);
}

// ----------------------------------------------------------------------------
// refusals

static void test_wrong_shape(void **state) {
    (void)state;
    char *d = subdir("shape");
    char *file = path_join(d, "model.safetensors");
    write_config(d, 1);
    ckpt ck;
    /* q_proj built as (C, C), as a loader assuming head_dim = hidden / heads would expect. */
    ck_build(&ck, QD_DT_BF16, QD_DT_BF16, 0);
    ck_remove(&ck, "model.layers.1.self_attn.q_proj.weight");
    ck_add(&ck, "model.layers.1.self_attn.q_proj.weight", QD_DT_BF16, 2, C, C);
    ck_write(&ck, d, 1);
    load_refused(d, file, "'model.layers.1.self_attn.q_proj.weight'", "Expected: [16, 8] Actual: [8, 8]");
    ck_free(&ck);
    /* 2-D where 1-D is expected. */
    ck_build(&ck, QD_DT_BF16, QD_DT_BF16, 0);
    ck_remove(&ck, "model.norm.weight");
    ck_add(&ck, "model.norm.weight", QD_DT_BF16, 2, C, 1);
    ck_write(&ck, d, 1);
    load_refused(d, "'model.norm.weight'", "Expected: [8]", "Actual: [8, 1]");
    ck_free(&ck);
    /* Transposed down_proj (I, C) instead of (C, I). */
    ck_build(&ck, QD_DT_BF16, QD_DT_BF16, 0);
    ck_remove(&ck, "model.layers.0.mlp.down_proj.weight");
    ck_add(&ck, "model.layers.0.mlp.down_proj.weight", QD_DT_BF16, 2, I, C);
    ck_write(&ck, d, 1);
    load_refused(d, "'model.layers.0.mlp.down_proj.weight'", "Expected: [8, 12]", "Actual: [12, 8]");
    ck_free(&ck);
    free(file);
    free(d);
}

static void test_missing_tensor(void **state) {
    (void)state;
    char *d = subdir("missing");
    write_config(d, 1);
    ckpt ck;
    ck_build(&ck, QD_DT_BF16, QD_DT_BF16, 0);
    ck_remove(&ck, "model.layers.1.self_attn.k_norm.weight");
    ck_write(&ck, d, 1);
    char *file = path_join(d, "model.safetensors");
    load_refused(d, file, "'model.layers.1.self_attn.k_norm.weight'", "missing");
    /* A config claiming a billion layers fails on the first missing one, without sizing anything by
     * num_hidden_layers (this would otherwise try to allocate ~100 GB of layer records). */
    ck_free(&ck);
    ck_build(&ck, QD_DT_BF16, QD_DT_BF16, 0);
    ck_write(&ck, d, 1);
    char *cfg = path_join(d, "config.json");
    json_error_t je;
    json_t *j = json_load_file(cfg, 0, &je);
    assert_non_null(j);
    json_object_set_new(j, "num_hidden_layers", json_integer(1000000000));
    assert_int_equal(json_dump_file(j, cfg, 0), 0);
    json_decref(j);
    load_refused(d, file, "'model.layers.2.input_layernorm.weight'", "missing");
    free(cfg);
    free(file);
    ck_free(&ck);
    free(d);
}

static void test_unexpected_tensors(void **state) {
    (void)state;
    char *d = subdir("unexpected");
    write_config(d, 1);
    ckpt ck;
    ck_build(&ck, QD_DT_BF16, QD_DT_BF16, 0);
    ck_add(&ck, "model.layers.0.self_attn.q_proj.bias", QD_DT_BF16, 1, NH * HD, 0);
    ck_write(&ck, d, 1);
    char *file = path_join(d, "model.safetensors");
    load_refused(d, file, "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'", "bias");
    ck_free(&ck);
    /* A layer beyond num_hidden_layers. */
    ck_build(&ck, QD_DT_BF16, QD_DT_BF16, 0);
    ck_add(&ck, "model.layers.2.input_layernorm.weight", QD_DT_BF16, 1, C, 0);
    ck_write(&ck, d, 1);
    load_refused(d, file, "unexpected tensor 'model.layers.2.input_layernorm.weight'", NULL);
    ck_free(&ck);
    free(file);
    free(d);
}

static void test_untied_without_lm_head(void **state) {
    (void)state;
    char *d = subdir("nolmhead");
    write_config(d, 0);
    ckpt ck;
    ck_build(&ck, QD_DT_BF16, QD_DT_BF16, 0);
    ck_write(&ck, d, 2);
    char *idx = path_join(d, "model.safetensors.index.json");
    load_refused(d, idx, "'lm_head.weight'", "missing");
    free(idx);
    ck_free(&ck);
    free(d);
}

static void test_bad_config_or_checkpoint(void **state) {
    (void)state;
    char *d = subdir("badconfig");
    ckpt ck;
    ck_build(&ck, QD_DT_BF16, QD_DT_BF16, 0);
    ck_write(&ck, d, 1);
    load_refused(d, "config.json", NULL, NULL); /* no config.json */
    char *cfg = path_join(d, "config.json");
    FILE *f = fopen(cfg, "wb");
    assert_non_null(f);
    fputs("{\"model_type\": \"qwen3\", \"attention_bias\": true}", f);
    fclose(f);
    load_refused(d, cfg, "'attention_bias'", NULL);
    char *empty = subdir("badconfig_nockpt");
    write_config(empty, 1);
    load_refused(empty, "model.safetensors", NULL, NULL); /* config but no weights */
    free(empty);
    free(cfg);
    ck_free(&ck);
    free(d);
}

static void test_alloc(void **state) {
    (void)state;
    qd_config c = {.vocab_size = V,
                   .hidden_size = C,
                   .intermediate_size = I,
                   .num_hidden_layers = L,
                   .num_attention_heads = NH,
                   .num_key_value_heads = NKV,
                   .head_dim = HD,
                   .rope_theta = 1e6,
                   .rms_norm_eps = 1e-6,
                   .tie_word_embeddings = 1};
    for (int tied = 0; tied <= 1; tied++) {
        c.tie_word_embeddings = tied;
        qd_weights w;
        qd_err err;
        assert_int_equal(qd_weights_alloc(&w, &c, &err), QD_OK);
        assert_int_equal(w.mem_floats, expected_floats(tied));
        for (size_t i = 0; i < w.mem_floats; i++) assert_true(w.mem[i] == 0.0f);
        /* Layout: embed first, each layer in struct order, then norm and lm_head, back to back. */
        assert_ptr_equal(w.embed, w.mem);
        assert_ptr_equal(w.layers[0].input_layernorm, w.mem + V * C);
        assert_ptr_equal(w.layers[0].q_proj, w.layers[0].input_layernorm + C);
        assert_ptr_equal(w.layers[1].input_layernorm, w.layers[0].down_proj + C * I);
        assert_ptr_equal(w.norm, w.layers[L - 1].down_proj + C * I);
        if (tied) assert_ptr_equal(w.lm_head, w.embed);
        else assert_ptr_equal(w.lm_head + V * C, w.mem + w.mem_floats);
        assert_null(w.config_json);
        assert_null(w.dir);
        qd_weights_free(&w);
        assert_null(w.mem);
        assert_null(w.layers);
    }
}

/* Sizes no allocation can hold are reported, not an exit, and leave w freed: a tied one-layer model of
 * INT32_MAX^2 embedding floats fits a size_t but not as bytes (calloc refuses it); an untied one with an
 * INT32_MAX^2 MLP as well overflows the count of floats itself. */
static void test_alloc_too_large(void **state) {
    (void)state;
    qd_config c = {.vocab_size = INT32_MAX,
                   .hidden_size = INT32_MAX,
                   .intermediate_size = I,
                   .num_hidden_layers = 1,
                   .num_attention_heads = NH,
                   .num_key_value_heads = NKV,
                   .head_dim = HD,
                   .rope_theta = 1e6,
                   .rms_norm_eps = 1e-6,
                   .tie_word_embeddings = 1};
    for (int untied_mlp = 0; untied_mlp <= 1; untied_mlp++) {
        if (untied_mlp) c.tie_word_embeddings = 0, c.intermediate_size = INT32_MAX;
        qd_weights w;
        qd_err err;
        qd_err_clear(&err);
        assert_int_equal(qd_weights_alloc(&w, &c, &err), QD_ERUNTIME);
        assert_int_equal(err.code, QD_ERUNTIME);
        printf("# %s\n", err.msg);
        assert_non_null(strstr(err.msg, untied_mlp ? "overflow" : "calloc"));
        assert_null(strchr(err.msg, '\n'));
        assert_null(w.mem);
        assert_null(w.layers);
        assert_int_equal(w.mem_floats, 0);
    }
}

// ----------------------------------------------------------------------------

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tied_bf16),
        cmocka_unit_test(test_untied_f16),
        cmocka_unit_test(test_untied_f32_sharded),
        cmocka_unit_test(test_mixed_dtypes_tied_with_lm_head),
        cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_unexpected_tensors),
        cmocka_unit_test(test_untied_without_lm_head),
        cmocka_unit_test(test_bad_config_or_checkpoint),
        cmocka_unit_test(test_alloc),
        cmocka_unit_test(test_alloc_too_large),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
