/* test_streaming.c: mapped weights (qd_weights_map) and the blocked matmul (common/qd_matmul.h).
 *
 * Checks: the reference and emu over a mapped checkpoint give the bits they give over its fp32 copy
 * (qd_weights_load), for BF16 and F16 checkpoints and 1, 2, 3 and 7 threads; the matrices are read in
 * place (their views point into the file's mapping, emu shares them) and the heap does not grow by their
 * fp32 size (glibc's mallinfo2 sees every allocation: qd_weights_load's growth shows it would); the blocked
 * qd_matmul_f32 / qd_matmul_f64 give matmul_forward_naive's bits for ragged shapes, every weight dtype,
 * unaligned weights, signed zeros and infinities, at 1, 2, 3 and 7 threads. A checkpoint is written by the
 * test into a mkdtemp directory under /tmp, removed at the end. */
#include <malloc.h>
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#if defined(__SANITIZE_ADDRESS__)
#define QD_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QD_UNDER_ASAN 1
#endif
#endif
#ifndef QD_UNDER_ASAN
#define QD_UNDER_ASAN 0
#endif
#if QD_UNDER_ASAN
/* the sanitizer runtime's count of live heap bytes (declared in <sanitizer/allocator_interface.h>, which not
 * every compiler installs: gcc 12 on Debian does not) */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#include "qd_bf16.h"
#include "qd_emu.h"
#include "qd_matmul.h"
#include "qd_ref.h"
#include "qd_ref_ops.h"
#include "qd_weights.h"

/* Big enough that the fp32 matrices (about 9 MB) dwarf the activations, small enough to run in a second:
 * C and I not multiples of the matmul's tile (8), I above its K block (256). */
enum { V = 500, C = 260, I = 700, L = 2, NH = 4, NKV = 2, HD = 64, T = 5 };

static const int thread_counts[] = {1, 2, 3, 7};

static qd_err err;
static uint64_t rng_state = 0x1234;

static float rng_uniform(void) { /* xorshift64*, in [-1, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (float)((double)((rng_state * 2685821657736338717ull) >> 11) * 0x1.0p-52 - 1.0);
}

// ----------------------------------------------------------------------------
// a checkpoint written by the test

static char tmpdir[64];

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
} spec;

static int specs(spec *s) {
    int n = 0;
#define ADD(nd, d0, d1, ...)                                \
    do {                                                    \
        snprintf(s[n].name, sizeof s[n].name, __VA_ARGS__); \
        s[n].ndim = nd;                                     \
        s[n].shape[0] = d0;                                 \
        s[n].shape[1] = d1;                                 \
        n++;                                                \
    } while (0)
    ADD(2, V, C, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) {
        ADD(1, C, 0, "model.layers.%d.input_layernorm.weight", l);
        ADD(2, NH * HD, C, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(2, NKV * HD, C, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(2, NKV * HD, C, "model.layers.%d.self_attn.v_proj.weight", l);
        ADD(1, HD, 0, "model.layers.%d.self_attn.q_norm.weight", l);
        ADD(1, HD, 0, "model.layers.%d.self_attn.k_norm.weight", l);
        ADD(2, C, NH * HD, "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(1, C, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(2, I, C, "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(2, I, C, "model.layers.%d.mlp.up_proj.weight", l);
        ADD(2, C, I, "model.layers.%d.mlp.down_proj.weight", l);
    }
    ADD(1, C, 0, "model.norm.weight");
    ADD(2, V, C, "lm_head.weight");
#undef ADD
    return n;
}

/* The fp32 bytes of every matrix. */
static size_t matrix_bytes(void) {
    spec s[64];
    int n = specs(s);
    size_t b = 0;
    for (int i = 0; i < n; i++)
        if (s[i].ndim == 2) b += (size_t)s[i].shape[0] * (size_t)s[i].shape[1] * sizeof(float);
    return b;
}

/* tmpdir/<sub>: config.json and model.safetensors in dtype dt (BF16 or F16), untied. */
static void write_checkpoint(const char *sub, qd_dtype dt) {
    char dir[160], path[200], cfg[1024];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, sub);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(cfg, sizeof cfg,
             "{\"model_type\": \"qwen3\", \"vocab_size\": %d, \"hidden_size\": %d, \"intermediate_size\": %d, "
             "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, "
             "\"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000, \"tie_word_embeddings\": false, "
             "\"attention_bias\": false, \"hidden_act\": \"silu\", \"torch_dtype\": \"%s\"}\n",
             V, C, I, L, NH, NKV, HD, dt == QD_DT_BF16 ? "bfloat16" : "float16");
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, cfg);
    spec s[64];
    qd_st_entry ent[64];
    int n = specs(s);
    rng_state = 0x5eed;
    for (int i = 0; i < n; i++) {
        size_t numel = (size_t)s[i].shape[0] * (s[i].ndim == 2 ? (size_t)s[i].shape[1] : 1);
        uint16_t *d = malloc(numel * sizeof *d);
        assert_non_null(d);
        float sd = s[i].ndim == 1 ? 0.2f : i == 0 ? 1.0f : 1.0f / sqrtf((float)s[i].shape[1]);
        for (size_t k = 0; k < numel; k++) {
            float x = (s[i].ndim == 1 ? 1.0f : 0.0f) + sd * 1.7f * rng_uniform();
            d[k] = dt == QD_DT_BF16 ? qd_f32_to_bf16(x) : qd_f32_to_f16(x);
        }
        ent[i] = (qd_st_entry){s[i].name, dt, s[i].ndim, {s[i].shape[0], s[i].shape[1]}, d};
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(qd_st_write(path, ent, n, NULL, &err), QD_OK);
    for (int i = 0; i < n; i++) free((void *)ent[i].data);
}

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qd_streaming_XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    write_checkpoint("bf16", QD_DT_BF16);
    write_checkpoint("f16", QD_DT_F16);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void ckpt_dir(char *buf, size_t n, const char *sub) { snprintf(buf, n, "%s/%s", tmpdir, sub); }

static const int32_t tokens[T + 1] = {3, 499, 0, 250, 17, 42};

/* Prefill T tokens and decode one: logits (T + 1, V). */
static void run_ref(const qd_weights *w, int threads, qd_accum accum, float *logits) {
    qd_ref_opts o = {.threads = threads, .accum = accum, .max_seq = T + 1};
    qd_ref *r = qd_ref_create(w, &o, &err);
    if (!r) fail_msg("qd_ref_create: %s", err.msg);
    assert_int_equal(qd_ref_prefill(r, tokens, T, logits, NULL, &err), QD_OK);
    assert_int_equal(qd_ref_decode(r, tokens[T], logits + (size_t)T * V, NULL, &err), QD_OK);
    qd_ref_free(r);
}

/* The emu's logits of the same steps (its layer and head, stepped). */
static void run_emu(const qd_weights *w, int threads, float *logits, int *shares) {
    qd_emu *m = qd_emu_create(w, QD_ACT_BF16, threads, T + 1, NULL, &err);
    if (!m) fail_msg("qd_emu_create: %s", err.msg);
    *shares = qd_emu_shares_weights(m);
    float *h = malloc((size_t)T * C * sizeof(float)); /* (T, C) */
    assert_non_null(h);
    for (int step = 0; step < 2; step++) {
        const int n = step ? 1 : T, pos0 = step ? T : 0;
        assert_int_equal(qd_emu_embed(m, tokens + pos0, n, h, NULL, &err), QD_OK);
        for (int l = 0; l < L; l++) assert_int_equal(qd_emu_layer(m, l, h, h, n, pos0, NULL, &err), QD_OK);
        assert_int_equal(qd_emu_head(m, h, n, logits + (size_t)pos0 * V, NULL, &err), QD_OK);
    }
    free(h);
    qd_emu_free(m);
}

// ----------------------------------------------------------------------------
// mapped = loaded, bit for bit

static void check_mapped_matches_loaded(const char *sub) {
    char dir[160];
    ckpt_dir(dir, sizeof dir, sub);
    qd_weights wl, wm;
    assert_int_equal(qd_weights_load(dir, &wl, &err), QD_OK);
    assert_int_equal(qd_weights_map(dir, &wm, &err), QD_OK);
    const size_t n = (size_t)(T + 1) * V;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    assert_non_null(a);
    assert_non_null(b);
    for (int accum = QD_ACCUM_F32; accum <= QD_ACCUM_F64; accum++) {
        run_ref(&wl, 1, (qd_accum)accum, a);
        for (size_t k = 0; k < sizeof thread_counts / sizeof *thread_counts; k++) {
            run_ref(&wm, thread_counts[k], (qd_accum)accum, b);
            if (memcmp(a, b, n * sizeof(float)) != 0)
                fail_msg("%s, accum %d: mapped at %d threads differs from loaded at 1", sub, accum, thread_counts[k]);
        }
    }
    int shares_l, shares_m;
    run_emu(&wl, 1, a, &shares_l);
    run_emu(&wm, 3, b, &shares_m);
    assert_memory_equal(a, b, n * sizeof(float));
    /* a BF16 checkpoint is read in place by emu as by the reference; F16 values need a bf16-rounded copy */
    assert_int_equal(shares_m, strcmp(sub, "bf16") == 0);
    assert_int_equal(shares_l, strcmp(sub, "bf16") == 0);
    free(a);
    free(b);
    qd_weights_free(&wl);
    qd_weights_free(&wm);
}

static void test_mapped_matches_loaded_bf16(void **state) {
    (void)state;
    check_mapped_matches_loaded("bf16");
}

static void test_mapped_matches_loaded_f16(void **state) {
    (void)state;
    check_mapped_matches_loaded("f16");
}

// ----------------------------------------------------------------------------
// mapped, not copied

/* Bytes of heap in use (small chunks and mmapped ones), as glibc counts them. Under AddressSanitizer malloc is
 * ASan's own allocator, which glibc's mallinfo2 does not see (it reads zero there): the sanitizer counts. */
static size_t heap_in_use(void) {
#if QD_UNDER_ASAN
    return __sanitizer_get_current_allocated_bytes();
#else
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
#endif
}

static void test_mapped_not_copied(void **state) {
    (void)state;
    char dir[160];
    ckpt_dir(dir, sizeof dir, "bf16");
    float *logits = malloc((size_t)(T + 1) * V * sizeof(float)); /* (T + 1, V) */
    assert_non_null(logits);
    const size_t mats = matrix_bytes();

    qd_weights w;
    size_t before = heap_in_use();
    assert_int_equal(qd_weights_map(dir, &w, &err), QD_OK);
    size_t after_map = heap_in_use();
    run_ref(&w, 2, QD_ACCUM_F32, logits); /* the heap it used is freed again: the peak is what matters */
    qd_ref_opts o = {.threads = 2, .accum = QD_ACCUM_F32, .max_seq = T + 1};
    qd_ref *r = qd_ref_create(&w, &o, &err);
    assert_non_null(r);
    assert_int_equal(qd_ref_prefill(r, tokens, T, logits, NULL, &err), QD_OK);
    size_t with_ref = heap_in_use();
    /* the norms (L * (2C + 2HD) + C floats), the tensor table, the ref's KV cache and scratch: each well
     * under an eighth of the matrices' fp32 size, which a copy of them would add in full */
    if (after_map - before >= mats / 8 || with_ref - before >= mats / 8)
        fail_msg("heap grew by %zu (map) and %zu (map + ref) bytes; the matrices are %zu bytes in fp32",
                 after_map - before, with_ref - before, mats);
    assert_int_equal(w.mem_floats, (size_t)L * (2 * C + 2 * HD) + C); /* the 1-D tensors alone are fp32 */
    assert_null(w.layers[0].q_proj);                                  /* no fp32 matrix anywhere */
    assert_null(w.embed);
    /* every matrix is read where the file is mapped */
    for (int l = -1; l < L; l++)
        for (int k = l < 0 ? QD_WM_EMBED : 0; k < (l < 0 ? QD_WM_LM_HEAD + 1 : QD_WM_LAYER_MATS); k++) {
            qd_wview v = qd_weights_mat(&w, l, (qd_wmat)k);
            assert_int_equal(v.dtype, QD_DT_BF16);
            const char *p = v.data, *m = w.st->maps[0];
            assert_true(p >= m && p < m + w.st->map_sizes[0]);
        }
    qd_ref_free(r);
    qd_weights_free(&w);

    /* the measure sees a copy: qd_weights_load grows the heap by at least the matrices' fp32 size */
    before = heap_in_use();
    assert_int_equal(qd_weights_load(dir, &w, &err), QD_OK);
    assert_true(heap_in_use() >= before + mats);
    qd_weights_free(&w);
    free(logits);
}

/* Giving a layer's pages back changes no value: a second run after the releases gives the same bits. */
static void test_release_keeps_values(void **state) {
    (void)state;
    char dir[160];
    ckpt_dir(dir, sizeof dir, "bf16");
    qd_weights w;
    assert_int_equal(qd_weights_map(dir, &w, &err), QD_OK);
    const size_t n = (size_t)(T + 1) * V;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    assert_non_null(a);
    assert_non_null(b);
    run_ref(&w, 1, QD_ACCUM_F32, a);
    for (int l = 0; l < L; l++) qd_weights_release_layer(&w, l);
    qd_weights_release(&w, 0, QD_WM_EMBED);
    qd_weights_release(&w, 0, QD_WM_LM_HEAD);
    run_ref(&w, 1, QD_ACCUM_F32, b);
    assert_memory_equal(a, b, n * sizeof(float));
    free(a);
    free(b);
    qd_weights_free(&w);
}

// ----------------------------------------------------------------------------
// the blocked matmul = the plain loop, bit for bit

static void check_matmul(int t, int in, int out_dim, qd_dtype dt, int unaligned) {
    const size_t es = qd_dtype_size(dt), nw = (size_t)out_dim * in;
    float *x = malloc(((size_t)t * in + 1) * sizeof(float)); /* (t, in) */
    float *wf = malloc((nw + 1) * sizeof(float));            /* (out_dim, in) the fp32 values */
    unsigned char *raw = malloc(nw * es + 8);                /* the stored bytes, little-endian */
    float *want = malloc(((size_t)t * out_dim + 1) * sizeof(float)),
          *got = malloc(((size_t)t * out_dim + 1) * sizeof(float));
    assert_true(x && wf && raw && want && got);
    for (size_t k = 0; k < (size_t)t * in; k++) x[k] = rng_uniform() * 3.0f;
    if (t * in > 3) {
        x[1] = -0.0f; /* signed zeros and an infinity: the plain loop's answer, whatever it is */
        x[2] = INFINITY;
    }
    unsigned char *bytes = raw + (unaligned ? 2 : 0);
    for (size_t k = 0; k < nw; k++) {
        float v = rng_uniform();
        if (k % 97 == 5) v = -0.0f;
        if (dt == QD_DT_F32) {
            memcpy(bytes + 4 * k, &v, 4);
            wf[k] = v;
        } else {
            uint16_t h = dt == QD_DT_BF16 ? qd_f32_to_bf16(v) : qd_f32_to_f16(v);
            bytes[2 * k] = (unsigned char)(h & 0xff);
            bytes[2 * k + 1] = (unsigned char)(h >> 8);
            wf[k] = dt == QD_DT_BF16 ? qd_bf16_to_f32(h) : qd_f16_to_f32(h);
        }
    }
    const qd_wview W = {bytes, dt};
    int saved = omp_get_max_threads();
    for (int accum = QD_ACCUM_F32; accum <= QD_ACCUM_F64; accum++) {
        omp_set_num_threads(1);
        matmul_forward_naive(want, x, wf, t, in, out_dim, (qd_accum)accum);
        for (size_t k = 0; k < sizeof thread_counts / sizeof *thread_counts; k++) {
            omp_set_num_threads(thread_counts[k]);
            memset(got, 0xff, (size_t)t * out_dim * sizeof(float)); /* NaN: every element must be written */
            if (accum == QD_ACCUM_F32) qd_matmul_f32(got, x, W, t, in, out_dim);
            else qd_matmul_f64(got, x, W, t, in, out_dim);
            if (memcmp(want, got, (size_t)t * out_dim * sizeof(float)) != 0)
                fail_msg("T %d, in %d, out %d, %s%s, accum %s, %d threads: differs from the plain loop", t, in, out_dim,
                         qd_dtype_name(dt), unaligned ? " unaligned" : "", accum ? "f64" : "f32", thread_counts[k]);
        }
    }
    omp_set_num_threads(saved);
    free(x);
    free(wf);
    free(raw);
    free(want);
    free(got);
}

static void test_matmul_blocked_is_plain_loop(void **state) {
    (void)state;
    static const int ts[] = {1, 3, 4, 5, 9, 70}, ins[] = {1, 7, 255, 256, 257, 600}, outs[] = {1, 7, 8, 9, 33};
    for (size_t a = 0; a < sizeof ts / sizeof *ts; a++)
        for (size_t b = 0; b < sizeof ins / sizeof *ins; b++)
            for (size_t c = 0; c < sizeof outs / sizeof *outs; c++)
                check_matmul(ts[a], ins[b], outs[c], (qd_dtype)((a + b + c) % 3), (int)((a + c) % 2));
    for (int dt = 0; dt < 3; dt++) check_matmul(13, 300, 17, (qd_dtype)dt, 1); /* every dtype on one shape */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_blocked_is_plain_loop), cmocka_unit_test(test_mapped_matches_loaded_bf16),
        cmocka_unit_test(test_mapped_matches_loaded_f16),    cmocka_unit_test(test_mapped_not_copied),
        cmocka_unit_test(test_release_keeps_values),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
