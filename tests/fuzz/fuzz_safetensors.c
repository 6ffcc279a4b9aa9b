/* fuzz_safetensors.c: libFuzzer target on the safetensors reader. Each input is a model.safetensors:
 *   1. qd_st_open_file: the 8-byte header length, the JSON header, every entry's dtype, shape and
 *      data_offsets, the overlap and duplicate checks. What it accepts must hold what qd_safetensors.h
 *      promises: every tensor's bytes inside the file's data section, nbytes = numel x itemsize, names
 *      found by qd_st_find; each tensor (up to 64 Ki elements) is then upcast, which reads every byte.
 *   2. qd_weights_load of a directory holding the input next to a fixed config.json (the tiny model of
 *      corpus/safetensors/, 1 layer, hidden 8, vocab 16, tied): the loader's name, dtype and shape checks
 *      against the config, and the upcast into the model's one allocation.
 * A refusal must be a one-line message (fuzz_util.h). Seeds: corpus/safetensors/ (qwen3-fixture output). */
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "qd_safetensors.h"
#include "qd_weights.h"

/* fixtures' tiny preset with 1 layer: qwen3-fixture --vocab 16 --hidden 8 --heads 2 --kv-heads 1
 * --head-dim 4 --intermediate 16 --layers 1 --max-pos 64 (corpus/safetensors/bf16.safetensors) */
static const char tiny_config[] =
    "{\"model_type\": \"qwen3\", \"vocab_size\": 16, \"hidden_size\": 8, \"intermediate_size\": 16,"
    " \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 4,"
    " \"max_position_embeddings\": 64, \"rope_theta\": 1000000, \"rms_norm_eps\": 1e-6,"
    " \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\"}";

#define MAX_UPCAST ((int64_t)1 << 16)

static float upcast[MAX_UPCAST];

static void check_file(const char *path, const uint8_t *data, size_t size) {
    qd_st st;
    memset(&st, 0, sizeof st);
    qd_err e;
    qd_err_clear(&e);
    int rc = qd_st_open_file(&st, path, &e);
    if (rc != QD_OK) {
        fuzz_check_refusal(rc, &e);
        return;
    }
    fuzz_check(st.nfiles == 1);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | data[i];
    const uint8_t *map = st.maps[0], *section = map + 8 + hlen, *end = map + size;
    for (int i = 0; i < st.n; i++) {
        const qd_tensor *t = &st.tensors[i];
        const uint8_t *p = t->data;
        fuzz_check(p >= section && p <= end && t->nbytes <= (size_t)(end - p));
        fuzz_check(t->ndim >= 0 && t->ndim <= QD_MAX_DIMS);
        int64_t numel = qd_tensor_numel(t);
        fuzz_check(numel >= 0 && (size_t)numel * qd_dtype_size(t->dtype) == t->nbytes);
        fuzz_check(qd_st_find(&st, t->name) == t); /* names are unique */
        if (numel <= MAX_UPCAST) qd_tensor_to_f32(t, upcast);
    }
    qd_st_close(&st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_put("safetensors", "model.safetensors", data, size);
    if (size >= 8) check_file(path, data, size);

    static int have_config;
    if (!have_config) {
        fuzz_put("safetensors", "config.json", tiny_config, sizeof tiny_config - 1);
        have_config = 1;
    }
    qd_weights w;
    qd_err e;
    qd_err_clear(&e);
    int rc = qd_weights_load(fuzz_dir("safetensors"), &w, &e);
    if (rc != QD_OK) {
        fuzz_check_refusal(rc, &e);
        return 0;
    }
    fuzz_check(w.cfg.vocab_size == 16 && w.embed && w.lm_head == w.embed && w.layers && w.norm);
    qd_weights_free(&w);
    return 0;
}
