/* fuzz_config.c: libFuzzer target on the config.json reader. Each input is a config.json:
 *   1. qd_config_parse on its text (up to the first NUL, as a C string): what it accepts must hold what
 *      qd_config.h promises (every size positive, NKV divides NH, head_dim even, NH x HD fits an int,
 *      rope_theta and rms_norm_eps positive and finite, dtype a terminated string); a refusal is a
 *      one-line message (fuzz_util.h).
 *   2. When the text parses, qd_weights_load of a directory holding it as config.json next to a fixed
 *      checkpoint (the tiny model: 1 layer, hidden 8, vocab 16, tied, bf16 zeros, written once with
 *      qd_st_write): a config with absurd sizes must be refused on the shape check, never reach malloc
 *      with them (weights.c), which libFuzzer's -rss_limit_mb and -malloc_limit_mb would catch.
 * Seeds: corpus/config/ (the fixtures' config.json, both dialects). */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "qd_config.h"
#include "qd_safetensors.h"
#include "qd_weights.h"

/* The tiny checkpoint's tensors, all zero: (name, ndim, shape). */
static const struct {
    const char *name;
    int ndim;
    int64_t d0, d1;
} tiny[] = {
    {"model.embed_tokens.weight", 2, 16, 8},
    {"model.layers.0.input_layernorm.weight", 1, 8, 0},
    {"model.layers.0.self_attn.q_proj.weight", 2, 8, 8},
    {"model.layers.0.self_attn.k_proj.weight", 2, 4, 8},
    {"model.layers.0.self_attn.v_proj.weight", 2, 4, 8},
    {"model.layers.0.self_attn.q_norm.weight", 1, 4, 0},
    {"model.layers.0.self_attn.k_norm.weight", 1, 4, 0},
    {"model.layers.0.self_attn.o_proj.weight", 2, 8, 8},
    {"model.layers.0.post_attention_layernorm.weight", 1, 8, 0},
    {"model.layers.0.mlp.gate_proj.weight", 2, 16, 8},
    {"model.layers.0.mlp.up_proj.weight", 2, 16, 8},
    {"model.layers.0.mlp.down_proj.weight", 2, 8, 16},
    {"model.norm.weight", 1, 8, 0},
};
#define N_TINY (sizeof tiny / sizeof tiny[0])

static void write_checkpoint(void) {
    static const uint16_t zeros[16 * 16];
    qd_st_entry en[N_TINY];
    for (size_t i = 0; i < N_TINY; i++) {
        en[i] = (qd_st_entry){.name = tiny[i].name, .dtype = QD_DT_BF16, .ndim = tiny[i].ndim, .data = zeros};
        en[i].shape[0] = tiny[i].d0;
        en[i].shape[1] = tiny[i].d1;
    }
    qd_err e;
    if (qd_st_write(fuzz_path("config", "model.safetensors"), en, (int)N_TINY, NULL, &e) != QD_OK) {
        fprintf(stderr, "fuzz_config: %s\n", e.msg);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_cstr(data, size);
    qd_config c;
    qd_err e;
    qd_err_clear(&e);
    int rc = qd_config_parse(text, "config.json", &c, &e);
    if (rc != QD_OK) {
        fuzz_check_refusal(rc, &e);
        free(text);
        return 0;
    }
    fuzz_check(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_hidden_layers > 0);
    fuzz_check(c.num_attention_heads > 0 && c.num_key_value_heads > 0 && c.head_dim > 0);
    fuzz_check(c.num_attention_heads % c.num_key_value_heads == 0 && c.head_dim % 2 == 0);
    fuzz_check((long long)c.num_attention_heads * c.head_dim <= INT_MAX && c.max_position_embeddings >= 0);
    fuzz_check(isfinite(c.rope_theta) && c.rope_theta > 0 && isfinite(c.rms_norm_eps) && c.rms_norm_eps > 0);
    fuzz_check(memchr(c.dtype, '\0', sizeof c.dtype) != NULL);

    static int have_checkpoint;
    if (!have_checkpoint) {
        write_checkpoint();
        have_checkpoint = 1;
    }
    fuzz_put("config", "config.json", data, strlen(text));
    free(text);
    qd_weights w;
    qd_err_clear(&e);
    rc = qd_weights_load(fuzz_dir("config"), &w, &e);
    if (rc != QD_OK) {
        fuzz_check_refusal(rc, &e);
        return 0;
    }
    /* only the tiny model's own sizes can bind its tensors */
    fuzz_check(w.cfg.vocab_size == 16 && w.cfg.hidden_size == 8 && w.cfg.num_hidden_layers == 1);
    qd_weights_free(&w);
    return 0;
}
