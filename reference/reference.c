/* reference.c: the fp32 C reference of the whole Qwen3 model, the oracle every other backend is
 * measured against. It is deliberately clean, naive and readable: plain C loops over fp32 activations,
 * no SIMD intrinsics, no processor-specific tricks, no fusion and no fast-math, and one fixed summation
 * order for every reduction so that any thread count gives bitwise identical results. The weights are
 * read where the checkpoint is mapped, in its dtype (BF16/F16 upcast to fp32 as each value is used, which
 * is exact), so a large model needs no fp32 copy of them; the matmul's loops are blocked for the cache and
 * the vector unit without changing any dot product's order (common/matmul.c says how).
 * It reads top to bottom: the model state, creation, then one decoder layer exactly as transformers'
 * Qwen3DecoderLayer computes it (emitting every named tap of qd_taps.h on the way), the head, and the
 * prefill/decode conveniences. The ops themselves live in ops.c. Positions: qd_ref_layer takes pos0
 * explicitly and never touches the model's position; only qd_ref_prefill, qd_ref_decode and
 * qd_ref_reset change it, so a caller stepping the layers itself tracks positions itself. */
#include "qd_ref.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qd_ref_ops.h"

// ----------------------------------------------------------------------------
// the model state

struct qd_ref {
    const qd_weights *w; // borrowed
    qd_ref_opts opts;
    int pos;         // positions held in the cache after the last prefill/decode
    float *inv_freq; // (HD/2) RoPE inverse frequencies, from the config's rope_theta
    // KV cache: post-RoPE keys and values of every layer and position
    float *key_cache;   // (L, max_seq, NKV, HD)
    float *value_cache; // (L, max_seq, NKV, HD)
    // scratch activations for up to max_seq tokens (a step never holds more tokens than the cache)
    float *xb;  // (max_seq, C)      attn_norm, then mlp_norm, then final_norm
    float *q;   // (max_seq, NH*HD)  q_proj -> q_norm -> q_rope (in place)
    float *k;   // (max_seq, NKV*HD) k_proj -> k_norm -> k_rope (in place)
    float *v;   // (max_seq, NKV*HD) v_proj
    float *att; // (max_seq, NH*HD)  attn
    float *xb2; // (max_seq, C)      o_proj, then down_proj
    float *hb;  // (max_seq, I)      gate_proj -> act (in place)
    float *hb2; // (max_seq, I)      up_proj
};

// ----------------------------------------------------------------------------
// threads
// The ops' signatures carry no thread count, so each public entry point sets the calling thread's
// OpenMP thread-count ICV for the duration of the call and restores it on return.

static int threads_push(const qd_ref *r) {
    int old = omp_get_max_threads();
    if (r->opts.threads > 0) omp_set_num_threads(r->opts.threads);
    return old;
}

static void threads_pop(int old) { omp_set_num_threads(old); }

// ----------------------------------------------------------------------------
// creation

qd_ref *qd_ref_create(const qd_weights *w, const qd_ref_opts *opts, qd_err *e) {
    if (!w || !opts) {
        qd_errf(e, QD_EINPUT, "reference: weights and options are required");
        return NULL;
    }
    const qd_config *c = &w->cfg;
    if (opts->max_seq <= 0) {
        qd_errf(e, QD_EINPUT, "reference: max_seq must be > 0 (got %d)", opts->max_seq);
        return NULL;
    }
    if (opts->accum != QD_ACCUM_F32 && opts->accum != QD_ACCUM_F64) {
        qd_errf(e, QD_EINPUT, "reference: unknown accumulation %d", (int)opts->accum);
        return NULL;
    }
    if (c->hidden_size <= 0 || c->intermediate_size <= 0 || c->num_hidden_layers <= 0 || c->num_attention_heads <= 0 ||
        c->num_key_value_heads <= 0 || c->head_dim <= 0 || c->head_dim % 2 != 0 || c->vocab_size <= 0 ||
        c->num_attention_heads % c->num_key_value_heads != 0) {
        qd_errf(e, QD_EINPUT,
                "reference: config: invalid sizes (hidden_size %d, intermediate_size %d, layers %d, "
                "heads %d, kv heads %d, head_dim %d (must be even), vocab %d)",
                c->hidden_size, c->intermediate_size, c->num_hidden_layers, c->num_attention_heads,
                c->num_key_value_heads, c->head_dim, c->vocab_size);
        return NULL;
    }
    size_t S = (size_t)opts->max_seq, L = (size_t)c->num_hidden_layers;
    size_t C = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, HD = (size_t)c->head_dim;
    size_t QD = (size_t)c->num_attention_heads * HD, KVD = (size_t)c->num_key_value_heads * HD;
    size_t widest = C > QD ? C : QD, cache, cache_bytes, scratch;
    if (I > widest) widest = I;
    if (qd_mul_size(L * S, KVD, &cache) || qd_mul_size(cache, 2 * sizeof(float), &cache_bytes) ||
        qd_mul_size(S * sizeof(float), widest, &scratch)) {
        qd_errf(e, QD_EINPUT, "reference: max_seq %d makes the KV cache too large", opts->max_seq);
        return NULL;
    }

    qd_ref *r = qd_zalloc(1, sizeof(*r), e);
    if (!r) return NULL;
    r->w = w;
    r->opts = *opts;
    if (!(r->inv_freq = qd_alloc(HD / 2 * sizeof(float), e)) || !(r->key_cache = qd_zalloc(cache, sizeof(float), e)) ||
        !(r->value_cache = qd_zalloc(cache, sizeof(float), e)) || !(r->xb = qd_zalloc(S * C, sizeof(float), e)) ||
        !(r->q = qd_zalloc(S * QD, sizeof(float), e)) || !(r->k = qd_zalloc(S * KVD, sizeof(float), e)) ||
        !(r->v = qd_zalloc(S * KVD, sizeof(float), e)) || !(r->att = qd_zalloc(S * QD, sizeof(float), e)) ||
        !(r->xb2 = qd_zalloc(S * C, sizeof(float), e)) || !(r->hb = qd_zalloc(S * I, sizeof(float), e)) ||
        !(r->hb2 = qd_zalloc(S * I, sizeof(float), e))) {
        qd_ref_free(r);
        return NULL;
    }
    rope_inv_freq(r->inv_freq, c->head_dim, c->rope_theta);
    return r;
}

void qd_ref_free(qd_ref *r) {
    if (!r) return;
    free(r->inv_freq);
    free(r->key_cache);
    free(r->value_cache);
    free(r->xb);
    free(r->q);
    free(r->k);
    free(r->v);
    free(r->att);
    free(r->xb2);
    free(r->hb);
    free(r->hb2);
    free(r);
}

void qd_ref_reset(qd_ref *r) { r->pos = 0; }

int qd_ref_position(const qd_ref *r) { return r->pos; }

// ----------------------------------------------------------------------------
// embedding

int qd_ref_embed(qd_ref *r, const int32_t *tokens, int T, float *h, qd_tap_sink *sink, qd_err *e) {
    // tokens (T); h (T, C)
    const qd_config *c = &r->w->cfg;
    int C = c->hidden_size;
    int old_threads = threads_push(r); // only so that a sink sees the same OpenMP setting throughout
    qd_wview embed = qd_weights_mat(r->w, 0, QD_WM_EMBED); // (V, C), fp32 or the checkpoint's dtype
    for (int t = 0; t < T; t++) qd_wview_to_f32(embed, (size_t)tokens[t] * C, (size_t)C, h + (size_t)t * C);
    qd_weights_release(r->w, 0, QD_WM_EMBED);
    int rc = qd_tap_emit(sink, c, qd_tap_model(QD_TAP_EMBED), h, T, e);
    threads_pop(old_threads);
    return rc;
}

// ----------------------------------------------------------------------------
// one decoder layer

/* Emits a tap and returns from the calling function on a sink error (e as the sink left it). */
#define EMIT(tap, data)                                                           \
    do {                                                                          \
        int rc_ = qd_tap_emit(sink, c, qd_tap_layer(layer, (tap)), (data), T, e); \
        if (rc_ != QD_OK) {                                                       \
            threads_pop(old_threads);                                             \
            return rc_;                                                           \
        }                                                                         \
    } while (0)

int qd_ref_layer(qd_ref *r, int layer, const float *h_in, float *h_out, int T, int pos0, qd_tap_sink *sink, qd_err *e) {
    // h_in, h_out (T, C); h_out may alias h_in. Reads and writes the cache at positions 0..pos0+T-1.
    const qd_config *c = &r->w->cfg;
    if (layer < 0 || layer >= c->num_hidden_layers)
        return qd_errf(e, QD_EINPUT, "ref: layer %d out of range (the model has %d)", layer, c->num_hidden_layers);
    if (T <= 0 || pos0 < 0) return qd_errf(e, QD_EINPUT, "ref: layer %d: invalid step: T %d, pos0 %d", layer, T, pos0);
    if (pos0 > r->opts.max_seq - T)
        return qd_errf(e, QD_EINPUT, "ref: layer %d: KV cache overflow: positions %d..%lld do not fit max_seq %d",
                       layer, pos0, (long long)pos0 + T - 1, r->opts.max_seq);
    int old_threads = threads_push(r);
    const qd_layer_weights *lw = &r->w->layers[layer]; // the norm weights (fp32)
    // the projections, read in place in the checkpoint's dtype (exact upcast) or fp32
    qd_wview q_proj = qd_weights_mat(r->w, layer, QD_WM_Q_PROJ), k_proj = qd_weights_mat(r->w, layer, QD_WM_K_PROJ),
             v_proj = qd_weights_mat(r->w, layer, QD_WM_V_PROJ), o_proj = qd_weights_mat(r->w, layer, QD_WM_O_PROJ),
             gate_proj = qd_weights_mat(r->w, layer, QD_WM_GATE_PROJ),
             up_proj = qd_weights_mat(r->w, layer, QD_WM_UP_PROJ),
             down_proj = qd_weights_mat(r->w, layer, QD_WM_DOWN_PROJ);
    qd_accum accum = r->opts.accum;
    int C = c->hidden_size, I = c->intermediate_size, NH = c->num_attention_heads;
    int NKV = c->num_key_value_heads, HD = c->head_dim;
    float eps = (float)c->rms_norm_eps;

    // attention block
    rmsnorm_forward(r->xb, h_in, lw->input_layernorm, T, C, eps, accum);
    EMIT(QD_TAP_ATTN_NORM, r->xb);
    matmul_forward_w(r->q, r->xb, q_proj, T, C, NH * HD, accum);
    EMIT(QD_TAP_Q_PROJ, r->q);
    matmul_forward_w(r->k, r->xb, k_proj, T, C, NKV * HD, accum);
    EMIT(QD_TAP_K_PROJ, r->k);
    matmul_forward_w(r->v, r->xb, v_proj, T, C, NKV * HD, accum);
    EMIT(QD_TAP_V_PROJ, r->v);
    // q_norm and k_norm are full RMSNorms over head_dim, one per head (T*NH rows of HD), before RoPE
    rmsnorm_forward(r->q, r->q, lw->q_norm, T * NH, HD, eps, accum);
    EMIT(QD_TAP_Q_NORM, r->q);
    rmsnorm_forward(r->k, r->k, lw->k_norm, T * NKV, HD, eps, accum);
    EMIT(QD_TAP_K_NORM, r->k);
    rope_forward(r->q, T, NH, HD, pos0, r->inv_freq);
    EMIT(QD_TAP_Q_ROPE, r->q);
    rope_forward(r->k, T, NKV, HD, pos0, r->inv_freq);
    EMIT(QD_TAP_K_ROPE, r->k);

    // append this step's keys (after RoPE) and values to the cache at positions pos0..pos0+T-1
    size_t kv_row = (size_t)NKV * HD;
    float *key_cache = r->key_cache + (size_t)layer * r->opts.max_seq * kv_row;     // (max_seq, NKV, HD)
    float *value_cache = r->value_cache + (size_t)layer * r->opts.max_seq * kv_row; // (max_seq, NKV, HD)
    memcpy(key_cache + (size_t)pos0 * kv_row, r->k, (size_t)T * kv_row * sizeof(float));
    memcpy(value_cache + (size_t)pos0 * kv_row, r->v, (size_t)T * kv_row * sizeof(float));

    int rc = attention_forward(r->att, r->q, key_cache, value_cache, T, pos0, NH, NKV, HD, accum, e);
    if (rc != QD_OK) {
        threads_pop(old_threads);
        return rc;
    }
    EMIT(QD_TAP_ATTN, r->att);
    matmul_forward_w(r->xb2, r->att, o_proj, T, NH * HD, C, accum);
    EMIT(QD_TAP_O_PROJ, r->xb2);
    residual_forward(h_out, h_in, r->xb2, (long)T * C);
    EMIT(QD_TAP_ATTN_RESIDUAL, h_out);

    // MLP block
    rmsnorm_forward(r->xb, h_out, lw->post_attention_layernorm, T, C, eps, accum);
    EMIT(QD_TAP_MLP_NORM, r->xb);
    matmul_forward_w(r->hb, r->xb, gate_proj, T, C, I, accum);
    EMIT(QD_TAP_GATE_PROJ, r->hb);
    matmul_forward_w(r->hb2, r->xb, up_proj, T, C, I, accum);
    EMIT(QD_TAP_UP_PROJ, r->hb2);
    swiglu_forward(r->hb, r->hb, r->hb2, (long)T * I);
    EMIT(QD_TAP_ACT, r->hb);
    matmul_forward_w(r->xb2, r->hb, down_proj, T, I, C, accum);
    EMIT(QD_TAP_DOWN_PROJ, r->xb2);
    residual_forward(h_out, h_out, r->xb2, (long)T * C);
    EMIT(QD_TAP_OUT, h_out);

    qd_weights_release_layer(r->w, layer); // a mapped layer's pages leave the resident set until next used
    threads_pop(old_threads);
    return QD_OK;
}

#undef EMIT

// ----------------------------------------------------------------------------
// head: final RMSNorm and lm_head (the embedding when tied; qd_weights points lm_head at it)

int qd_ref_head(qd_ref *r, const float *h, int T, float *logits, qd_tap_sink *sink, qd_err *e) {
    // h (T, C); logits (T, V)
    const qd_config *c = &r->w->cfg;
    if (T <= 0 || T > r->opts.max_seq)
        return qd_errf(e, QD_EINPUT, "ref: head: %d tokens do not fit max_seq %d", T, r->opts.max_seq);
    int old_threads = threads_push(r);
    rmsnorm_forward(r->xb, h, r->w->norm, T, c->hidden_size, (float)c->rms_norm_eps, r->opts.accum);
    int rc = qd_tap_emit(sink, c, qd_tap_model(QD_TAP_FINAL_NORM), r->xb, T, e);
    if (rc == QD_OK) {
        matmul_forward_w(logits, r->xb, qd_weights_mat(r->w, 0, QD_WM_LM_HEAD), T, c->hidden_size, c->vocab_size,
                         r->opts.accum);
        qd_weights_release(r->w, 0, QD_WM_LM_HEAD);
        rc = qd_tap_emit(sink, c, qd_tap_model(QD_TAP_LOGITS), logits, T, e);
    }
    threads_pop(old_threads);
    return rc;
}

// ----------------------------------------------------------------------------
// prefill and decode: embed, every layer, head at positions pos0..pos0+T-1

static int forward(qd_ref *r, const int32_t *tokens, int T, int pos0, float *logits, qd_tap_sink *sink, qd_err *e) {
    const qd_config *c = &r->w->cfg;
    if (T <= 0) return qd_errf(e, QD_EINPUT, "ref: invalid step: T %d", T);
    if (pos0 > r->opts.max_seq - T)
        return qd_errf(e, QD_EINPUT, "ref: KV cache overflow: positions %d..%lld do not fit max_seq %d", pos0,
                       (long long)pos0 + T - 1, r->opts.max_seq);
    float *h = qd_alloc((size_t)T * c->hidden_size * sizeof(float), e); // (T, C) the residual stream
    if (!h) return QD_ERUNTIME;
    int rc = qd_ref_embed(r, tokens, T, h, sink, e);
    for (int l = 0; l < c->num_hidden_layers && rc == QD_OK; l++) rc = qd_ref_layer(r, l, h, h, T, pos0, sink, e);
    if (rc == QD_OK) rc = qd_ref_head(r, h, T, logits, sink, e);
    free(h);
    if (rc == QD_OK) r->pos = pos0 + T;
    return rc;
}

int qd_ref_prefill(qd_ref *r, const int32_t *tokens, int T, float *logits, qd_tap_sink *sink, qd_err *e) {
    qd_ref_reset(r);
    return forward(r, tokens, T, 0, logits, sink, e);
}

int qd_ref_decode(qd_ref *r, int32_t token, float *logits, qd_tap_sink *sink, qd_err *e) {
    return forward(r, &token, 1, r->pos, logits, sink, e);
}
