/* test_config.c: config.json parsing (common/config.c).
 *
 * Starts from Qwen3-0.6B's released config.json (verbatim) and its transformers-5.x rewrite, checks
 * both parse to the same qd_config, then edits one field at a time (through jansson) and checks
 * each refusal: rc == QD_EINPUT and a one-line message naming the file and the field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qd_config.h"

static const char *const PATH = "fixtures/x/config.json";

/* Qwen/Qwen3-0.6B config.json as released (transformers 4.51). */
static const char *const released_0_6b = "{\n"
                                         "  \"architectures\": [\"Qwen3ForCausalLM\"],\n"
                                         "  \"attention_bias\": false,\n"
                                         "  \"attention_dropout\": 0.0,\n"
                                         "  \"bos_token_id\": 151643,\n"
                                         "  \"eos_token_id\": 151645,\n"
                                         "  \"head_dim\": 128,\n"
                                         "  \"hidden_act\": \"silu\",\n"
                                         "  \"hidden_size\": 1024,\n"
                                         "  \"initializer_range\": 0.02,\n"
                                         "  \"intermediate_size\": 3072,\n"
                                         "  \"max_position_embeddings\": 40960,\n"
                                         "  \"max_window_layers\": 28,\n"
                                         "  \"model_type\": \"qwen3\",\n"
                                         "  \"num_attention_heads\": 16,\n"
                                         "  \"num_hidden_layers\": 28,\n"
                                         "  \"num_key_value_heads\": 8,\n"
                                         "  \"rms_norm_eps\": 1e-06,\n"
                                         "  \"rope_scaling\": null,\n"
                                         "  \"rope_theta\": 1000000,\n"
                                         "  \"sliding_window\": null,\n"
                                         "  \"tie_word_embeddings\": true,\n"
                                         "  \"torch_dtype\": \"bfloat16\",\n"
                                         "  \"transformers_version\": \"4.51.0\",\n"
                                         "  \"use_cache\": true,\n"
                                         "  \"use_sliding_window\": false,\n"
                                         "  \"vocab_size\": 151936\n"
                                         "}\n";

static json_t *released(void) {
    json_error_t je;
    json_t *j = json_loads(released_0_6b, 0, &je);
    assert_non_null(j);
    return j;
}

/* The same model as transformers 5.x writes it: rope_parameters, dtype, layer_types. */
static json_t *v5(void) {
    json_t *j = released();
    json_object_del(j, "rope_theta");
    json_object_del(j, "rope_scaling");
    json_object_del(j, "torch_dtype");
    json_object_set_new(j, "dtype", json_string("bfloat16"));
    json_object_set_new(j, "rope_parameters", json_pack("{s:f, s:s}", "rope_theta", 1000000.0, "rope_type", "default"));
    json_t *lt = json_array();
    for (int i = 0; i < 28; i++) json_array_append_new(lt, json_string("full_attention"));
    json_object_set_new(j, "layer_types", lt);
    json_object_set_new(j, "transformers_version", json_string("5.0.0"));
    return j;
}

/* Parses j (consumed) with PATH in messages. */
static int parse(json_t *j, qd_config *c, qd_err *e) {
    char *text = json_dumps(j, JSON_INDENT(2));
    assert_non_null(text);
    json_decref(j);
    qd_err_clear(e);
    int rc = qd_config_parse(text, PATH, c, e);
    free(text);
    return rc;
}

/* j (consumed) must be refused: QD_EINPUT, a one-line message naming PATH and each needle. */
static void expect_refused(json_t *j, const char *needle1, const char *needle2) {
    qd_config c;
    qd_err e;
    int rc = parse(j, &c, &e);
    if (rc != QD_EINPUT) fail_msg("rc %d (expected QD_EINPUT), message '%s'", rc, e.msg);
    assert_int_equal(e.code, QD_EINPUT);
    if (strncmp(e.msg, PATH, strlen(PATH)) != 0) fail_msg("message does not start with the path: '%s'", e.msg);
    if (needle1 && !strstr(e.msg, needle1)) fail_msg("message '%s' lacks '%s'", e.msg, needle1);
    if (needle2 && !strstr(e.msg, needle2)) fail_msg("message '%s' lacks '%s'", e.msg, needle2);
    assert_null(strchr(e.msg, '\n'));
}

static void expect_ok(json_t *j, qd_config *c) {
    qd_err e;
    int rc = parse(j, c, &e);
    if (rc != QD_OK) fail_msg("rc %d: %s", rc, e.msg);
}

// ----------------------------------------------------------------------------

static void test_released_values(void **state) {
    (void)state;
    qd_config c;
    expect_ok(released(), &c);
    assert_int_equal(c.vocab_size, 151936);
    assert_int_equal(c.hidden_size, 1024);
    assert_int_equal(c.intermediate_size, 3072);
    assert_int_equal(c.num_hidden_layers, 28);
    assert_int_equal(c.num_attention_heads, 16);
    assert_int_equal(c.num_key_value_heads, 8);
    assert_int_equal(c.head_dim, 128); /* not 1024 / 16 = 64 */
    assert_int_equal(c.max_position_embeddings, 40960);
    assert_true(c.rope_theta == 1e6);
    assert_true(c.rms_norm_eps == 1e-6);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_string_equal(c.dtype, "bfloat16");
}

static void test_dialects_agree(void **state) {
    (void)state;
    qd_config a, b;
    expect_ok(released(), &a);
    expect_ok(v5(), &b);
    /* parse zeroes the struct first, so padding matches too */
    assert_memory_equal(&a, &b, sizeof a);
}

static void test_head_dim_given_vs_default(void **state) {
    (void)state;
    qd_config c;
    json_t *j = released();
    json_object_del(j, "head_dim");
    expect_ok(j, &c);
    assert_int_equal(c.head_dim, 1024 / 16);
    j = released();
    json_object_set_new(j, "head_dim", json_null()); /* transformers: None means derive it */
    expect_ok(j, &c);
    assert_int_equal(c.head_dim, 64);
    j = released();
    json_object_set_new(j, "head_dim", json_integer(96));
    expect_ok(j, &c);
    assert_int_equal(c.head_dim, 96);
    /* Absent head_dim with hidden not a multiple of heads cannot be derived. */
    j = released();
    json_object_del(j, "head_dim");
    json_object_set_new(j, "hidden_size", json_integer(1000));
    json_object_set_new(j, "num_attention_heads", json_integer(16));
    expect_refused(j, "'head_dim'", "1000");
}

static void test_defaults_and_integer_reals(void **state) {
    (void)state;
    qd_config c;
    json_t *j = released();
    json_object_del(j, "tie_word_embeddings");
    json_object_del(j, "max_position_embeddings");
    json_object_del(j, "torch_dtype");
    json_object_set_new(j, "rms_norm_eps", json_integer(1)); /* integer JSON is a valid real */
    json_object_set_new(j, "rope_theta", json_real(10000.5));
    expect_ok(j, &c);
    assert_int_equal(c.tie_word_embeddings, 0); /* Qwen3Config's default */
    assert_int_equal(c.max_position_embeddings, 0);
    assert_string_equal(c.dtype, "");
    assert_true(c.rms_norm_eps == 1.0);
    assert_true(c.rope_theta == 10000.5);
    /* rope_scaling of type default is no scaling; both spellings. */
    j = released();
    json_object_set_new(j, "rope_scaling", json_pack("{s:s}", "rope_type", "default"));
    expect_ok(j, &c);
    j = released();
    json_object_set_new(j, "rope_scaling", json_pack("{s:s}", "type", "default"));
    expect_ok(j, &c);
    /* MoE fields set to 0 describe a dense model. */
    j = released();
    json_object_set_new(j, "num_experts", json_integer(0));
    json_object_set_new(j, "decoder_sparse_step", json_integer(0));
    expect_ok(j, &c);
    /* Both theta spellings present and equal. */
    j = v5();
    json_object_set_new(j, "rope_theta", json_integer(1000000));
    expect_ok(j, &c);
    assert_true(c.rope_theta == 1e6);
}

static void test_kv_heads_message(void **state) {
    (void)state;
    json_t *j = released();
    json_object_set_new(j, "num_attention_heads", json_integer(4));
    json_object_set_new(j, "num_key_value_heads", json_integer(3));
    qd_config c;
    qd_err e;
    assert_int_equal(parse(j, &c, &e), QD_EINPUT);
    assert_string_equal(e.msg, "fixtures/x/config.json: field 'num_key_value_heads': 3 does not divide "
                               "num_attention_heads 4");
}

static void test_refuse_model_type(void **state) {
    (void)state;
    json_t *j = released();
    json_object_set_new(j, "model_type", json_string("qwen2"));
    expect_refused(j, "'model_type'", "qwen2");
    j = released();
    json_object_set_new(j, "model_type", json_string("qwen3_moe"));
    expect_refused(j, "'model_type'", "qwen3_moe");
    j = released();
    json_object_del(j, "model_type");
    expect_refused(j, "'model_type'", "missing");
    j = released();
    json_object_set_new(j, "model_type", json_integer(3));
    expect_refused(j, "'model_type'", "string");
}

static void test_refuse_features(void **state) {
    (void)state;
    json_t *j = released();
    json_object_set_new(j, "attention_bias", json_true());
    expect_refused(j, "'attention_bias'", "not supported");
    j = released();
    json_object_set_new(j, "use_sliding_window", json_true());
    expect_refused(j, "'use_sliding_window'", "not supported");
    j = released();
    json_object_set_new(j, "hidden_act", json_string("gelu"));
    expect_refused(j, "'hidden_act'", "gelu");
}

static void test_refuse_rope(void **state) {
    (void)state;
    json_t *j = v5();
    json_object_set_new(json_object_get(j, "rope_parameters"), "rope_type", json_string("yarn"));
    expect_refused(j, "'rope_parameters.rope_type'", "yarn");
    j = released();
    json_object_set_new(j, "rope_scaling", json_pack("{s:s, s:f}", "rope_type", "yarn", "factor", 4.0));
    expect_refused(j, "'rope_scaling.rope_type'", "yarn");
    j = released();
    json_object_set_new(j, "rope_scaling", json_pack("{s:s, s:f}", "type", "linear", "factor", 2.0));
    expect_refused(j, "'rope_scaling.type'", "linear");
    j = released();
    json_object_set_new(j, "rope_scaling", json_pack("{s:f}", "factor", 2.0));
    expect_refused(j, "'rope_scaling'", NULL);
    j = released();
    json_object_set_new(j, "rope_scaling", json_string("yarn"));
    expect_refused(j, "'rope_scaling'", "object");
    /* The two theta spellings disagreeing: which one would transformers use? Refuse. */
    j = v5();
    json_object_set_new(j, "rope_theta", json_integer(10000));
    expect_refused(j, "'rope_theta'", "disagrees");
}

static void test_refuse_moe(void **state) {
    (void)state;
    static const char *const fields[] = {"num_experts", "num_experts_per_tok", "moe_intermediate_size",
                                         "decoder_sparse_step"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", fields[i]);
        json_t *j = released();
        json_object_set_new(j, fields[i], json_integer(8));
        expect_refused(j, quoted, "mixture-of-experts");
    }
}

static void test_refuse_layer_types(void **state) {
    (void)state;
    json_t *j = v5();
    json_array_set_new(json_object_get(j, "layer_types"), 5, json_string("sliding_attention"));
    expect_refused(j, "'layer_types[5]'", "sliding_attention");
    j = v5();
    json_array_remove(json_object_get(j, "layer_types"), 0);
    expect_refused(j, "'layer_types'", "num_hidden_layers");
    j = v5();
    json_object_set_new(j, "layer_types", json_string("full_attention"));
    expect_refused(j, "'layer_types'", "array");
}

static void test_refuse_ranges(void **state) {
    (void)state;
    static const char *const ints[] = {"vocab_size",        "hidden_size",         "intermediate_size",
                                       "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                       "head_dim"};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", ints[i]);
        json_t *j = released();
        json_object_set_new(j, ints[i], json_integer(0));
        expect_refused(j, quoted, "range");
        j = released();
        json_object_set_new(j, ints[i], json_integer(-8));
        expect_refused(j, quoted, "range");
        j = released();
        json_object_set_new(j, ints[i], json_integer(1LL << 40));
        expect_refused(j, quoted, "range");
    }
    json_t *j = released();
    json_object_set_new(j, "head_dim", json_integer(127));
    expect_refused(j, "'head_dim'", "even");
    j = released();
    json_object_set_new(j, "rms_norm_eps", json_real(0.0));
    expect_refused(j, "'rms_norm_eps'", "positive");
    j = released();
    json_object_set_new(j, "rms_norm_eps", json_real(-1e-6));
    expect_refused(j, "'rms_norm_eps'", "positive");
    j = released();
    json_object_set_new(j, "rope_theta", json_integer(0));
    expect_refused(j, "'rope_theta'", "positive");
    j = v5();
    json_object_set_new(json_object_get(j, "rope_parameters"), "rope_theta", json_real(-1e6));
    expect_refused(j, "'rope_parameters.rope_theta'", "positive");
    j = released();
    json_object_set_new(j, "max_position_embeddings", json_integer(-1));
    expect_refused(j, "'max_position_embeddings'", "range");
}

static void test_missing_required(void **state) {
    (void)state;
    static const char *const req[] = {"vocab_size",        "hidden_size",         "intermediate_size",
                                      "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                      "rms_norm_eps",      "rope_theta"};
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", req[i]);
        json_t *j = released();
        assert_int_equal(json_object_del(j, req[i]), 0);
        expect_refused(j, quoted, "missing");
    }
    json_t *j = v5(); /* 5.x dialect without a theta anywhere */
    json_object_del(json_object_get(j, "rope_parameters"), "rope_theta");
    expect_refused(j, "'rope_theta'", "missing");
}

static void test_wrong_types(void **state) {
    (void)state;
    json_t *j = released();
    json_object_set_new(j, "hidden_size", json_string("1024"));
    expect_refused(j, "'hidden_size'", "integer");
    j = released();
    json_object_set_new(j, "num_hidden_layers", json_real(28.0)); /* a size must be an integer */
    expect_refused(j, "'num_hidden_layers'", "integer");
    j = released();
    json_object_set_new(j, "rope_theta", json_string("1e6"));
    expect_refused(j, "'rope_theta'", "number");
    j = released();
    json_object_set_new(j, "rms_norm_eps", json_null());
    expect_refused(j, "'rms_norm_eps'", "number");
    j = released();
    json_object_set_new(j, "tie_word_embeddings", json_string("true"));
    expect_refused(j, "'tie_word_embeddings'", "boolean");
    j = released();
    json_object_set_new(j, "attention_bias", json_integer(0));
    expect_refused(j, "'attention_bias'", "boolean");
    j = released();
    json_object_set_new(j, "num_experts", json_string("8"));
    expect_refused(j, "'num_experts'", "number");
    j = v5();
    json_object_set_new(j, "rope_parameters", json_real(1e6));
    expect_refused(j, "'rope_parameters'", "object");
    j = released();
    json_object_set_new(j, "torch_dtype", json_integer(16));
    expect_refused(j, "'torch_dtype'", "string");
}

static void test_bad_json(void **state) {
    (void)state;
    qd_config c;
    qd_err e;
    assert_int_equal(qd_config_parse("{\"model_type\": \"qwen3\",", PATH, &c, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, PATH));
    assert_non_null(strstr(e.msg, "JSON"));
    assert_int_equal(qd_config_parse("", PATH, &c, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, PATH));
    assert_int_equal(qd_config_parse("[1, 2]", PATH, &c, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "object"));
    /* A duplicated key is ambiguous (which value wins depends on the reader). */
    assert_int_equal(qd_config_parse("{\"hidden_size\": 1, \"hidden_size\": 2}", PATH, &c, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "hidden_size"));
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void test_load_file(void **state) {
    (void)state;
    char dir[] = "/tmp/qd-test-config-XXXXXX";
    assert_non_null(mkdtemp(dir));
    qd_config c;
    qd_err e;
    char *text = (char *)1;
    /* No config.json in the directory. */
    assert_int_equal(qd_config_load(dir, &c, &text, &e), QD_EINPUT);
    assert_null(text);
    assert_non_null(strstr(e.msg, dir));
    assert_non_null(strstr(e.msg, "config.json"));
    /* Missing directory. */
    assert_int_equal(qd_config_load("/nonexistent/qd-model", &c, NULL, &e), QD_EINPUT);
    assert_non_null(strstr(e.msg, "/nonexistent/qd-model/config.json"));

    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(released_0_6b, f);
    fclose(f);
    assert_int_equal(qd_config_load(dir, &c, &text, &e), QD_OK);
    assert_string_equal(text, released_0_6b); /* verbatim, for the dump */
    assert_int_equal(c.head_dim, 128);
    free(text);
    assert_int_equal(qd_config_load(dir, &c, NULL, &e), QD_OK);

    /* A parse error names the file it came from. */
    f = fopen(path, "wb");
    assert_non_null(f);
    fputs("{\"model_type\": \"llama\"}", f);
    fclose(f);
    text = (char *)1;
    assert_int_equal(qd_config_load(dir, &c, &text, &e), QD_EINPUT);
    assert_null(text);
    assert_non_null(strstr(e.msg, path));
    assert_non_null(strstr(e.msg, "'model_type'"));
    assert_int_equal(nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_released_values),
        cmocka_unit_test(test_dialects_agree),
        cmocka_unit_test(test_head_dim_given_vs_default),
        cmocka_unit_test(test_defaults_and_integer_reals),
        cmocka_unit_test(test_kv_heads_message),
        cmocka_unit_test(test_refuse_model_type),
        cmocka_unit_test(test_refuse_features),
        cmocka_unit_test(test_refuse_rope),
        cmocka_unit_test(test_refuse_moe),
        cmocka_unit_test(test_refuse_layer_types),
        cmocka_unit_test(test_refuse_ranges),
        cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_load_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
