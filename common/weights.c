/* weights.c: binds every Qwen3 tensor of a checkpoint to the model, checked against the config, and
 * upcasts it to fp32 or leaves it in the mapping (see qd_weights.h).
 *
 * Layout follows llm.c's fill_in_parameter_sizes / malloc_and_point_parameters: a parameter list
 * (name, shape, where its pointer goes) is built from the config, every tensor is checked against
 * it before anything is allocated (so a config with absurd sizes fails on the shape check, not in
 * malloc), then one allocation holds all of them and the pointers are set into it. */
#include "qd_weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qd_bf16.h"

typedef struct {
    char name[96];    /* HF name, e.g. "model.layers.3.mlp.up_proj.weight" */
    int ndim;         /* 1 or 2 */
    int64_t shape[2]; /* HF (out, in) layout */
    float **slot;     /* where the pointer into the allocation goes */
    int layer;        /* and which matrix it is (qd_wmat), -1 for a 1-D norm weight */
    int mat;
} param;

/* Per-layer tensors in the order they sit in memory (that of qd_layer_weights). */
enum { LAYER_PARAMS = 11 };

static void set_param(param *p, float **slot, int ndim, int64_t d0, int64_t d1, const char *fmt, int layer) {
    snprintf(p->name, sizeof p->name, fmt, layer);
    p->layer = layer;
    p->mat = -1;
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->slot = slot;
}

/* The parameter list for w->cfg's first L layers (w->layers holds L). Returns the count, or -1 with e
 * filled when out of memory. */
static int build_params(qd_weights *w, int L, param **out, qd_err *e) {
    const qd_config *c = &w->cfg;
    const int64_t V = c->vocab_size, C = c->hidden_size, I = c->intermediate_size;
    const int64_t HD = c->head_dim, QD = (int64_t)c->num_attention_heads * c->head_dim,
                  KVD = (int64_t)c->num_key_value_heads * c->head_dim;
    int n = 0, cap = 2 + LAYER_PARAMS * L + (c->tie_word_embeddings ? 0 : 1);
    param *p = qd_zalloc((size_t)cap, sizeof *p, e);
    if (!p) return -1;
    set_param(&p[n++], &w->embed, 2, V, C, "model.embed_tokens.weight", 0);
    for (int l = 0; l < L; l++) {
        qd_layer_weights *lw = &w->layers[l];
        set_param(&p[n++], &lw->input_layernorm, 1, C, 0, "model.layers.%d.input_layernorm.weight", l);
        set_param(&p[n++], &lw->q_proj, 2, QD, C, "model.layers.%d.self_attn.q_proj.weight", l);
        set_param(&p[n++], &lw->k_proj, 2, KVD, C, "model.layers.%d.self_attn.k_proj.weight", l);
        set_param(&p[n++], &lw->v_proj, 2, KVD, C, "model.layers.%d.self_attn.v_proj.weight", l);
        set_param(&p[n++], &lw->q_norm, 1, HD, 0, "model.layers.%d.self_attn.q_norm.weight", l);
        set_param(&p[n++], &lw->k_norm, 1, HD, 0, "model.layers.%d.self_attn.k_norm.weight", l);
        set_param(&p[n++], &lw->o_proj, 2, C, QD, "model.layers.%d.self_attn.o_proj.weight", l);
        set_param(&p[n++], &lw->post_attention_layernorm, 1, C, 0, "model.layers.%d.post_attention_layernorm.weight",
                  l);
        set_param(&p[n++], &lw->gate_proj, 2, I, C, "model.layers.%d.mlp.gate_proj.weight", l);
        set_param(&p[n++], &lw->up_proj, 2, I, C, "model.layers.%d.mlp.up_proj.weight", l);
        set_param(&p[n++], &lw->down_proj, 2, C, I, "model.layers.%d.mlp.down_proj.weight", l);
    }
    set_param(&p[n++], &w->norm, 1, C, 0, "model.norm.weight", 0);
    if (!c->tie_word_embeddings) set_param(&p[n++], &w->lm_head, 2, V, C, "lm_head.weight", 0);
    for (int i = 0; i < n; i++) {
        if (p[i].ndim != 2) continue;
        if (p[i].slot == &w->embed) p[i].mat = QD_WM_EMBED;
        else if (p[i].slot == &w->lm_head) p[i].mat = QD_WM_LM_HEAD;
        else {
            const qd_layer_weights *lw = &w->layers[p[i].layer];
            float *const *slots[QD_WM_LAYER_MATS] = {&lw->q_proj,    &lw->k_proj,  &lw->v_proj,   &lw->o_proj,
                                                     &lw->gate_proj, &lw->up_proj, &lw->down_proj};
            for (int m = 0; m < QD_WM_LAYER_MATS; m++)
                if (p[i].slot == slots[m]) p[i].mat = m;
        }
    }
    *out = p;
    return n;
}

static size_t param_numel(const param *p) { return (size_t)p->shape[0] * (p->ndim == 2 ? (size_t)p->shape[1] : 1); }

/* Total floats of all parameters; -1 on size_t overflow. */
static int params_total(const param *p, int n, size_t *total) {
    size_t t = 0;
    for (int i = 0; i < n; i++) {
        size_t k;
        if (qd_mul_size((size_t)p[i].shape[0], p[i].ndim == 2 ? (size_t)p[i].shape[1] : 1, &k) || t + k < t) return -1;
        t += k;
    }
    *total = t;
    return 0;
}

static void point_params(const param *p, int n, float *mem) {
    for (int i = 0; i < n; i++) {
        *p[i].slot = mem;
        mem += param_numel(&p[i]);
    }
}

static void fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

static int shape_matches(const param *p, const qd_tensor *t) {
    if (t->ndim != p->ndim) return 0;
    for (int i = 0; i < p->ndim; i++)
        if (t->shape[i] != p->shape[i]) return 0;
    return 1;
}

/* NULL with e filled when out of memory. */
static char *str_dup(const char *s, qd_err *e) {
    size_t n = strlen(s) + 1;
    char *p = qd_alloc(n, e);
    if (p) memcpy(p, s, n);
    return p;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

// ----------------------------------------------------------------------------

int qd_weights_alloc(qd_weights *w, const qd_config *c, qd_err *e) {
    memset(w, 0, sizeof *w);
    w->cfg = *c;
    w->src_dtype = QD_DT_F32;
    param *p = NULL;
    int n = -1;
    size_t total = 0;
    if (!(w->layers = qd_zalloc((size_t)c->num_hidden_layers, sizeof *w->layers, e)) ||
        (n = build_params(w, c->num_hidden_layers, &p, e)) < 0)
        goto fail;
    /* An overflowing size cannot be allocated either: reported as the allocation failing. */
    if (params_total(p, n, &total)) {
        qd_errf(e, QD_ERUNTIME, "out of memory: the weights of a %d-layer model overflow a size", c->num_hidden_layers);
        goto fail;
    }
    if (!(w->mem = qd_zalloc(total, sizeof(float), e))) goto fail;
    w->mem_floats = total;
    point_params(p, n, w->mem);
    if (c->tie_word_embeddings) w->lm_head = w->embed;
    free(p);
    return QD_OK;

fail:
    free(p);
    qd_weights_free(w);
    return QD_ERUNTIME;
}

/* Index of a matrix in w->mapped. */
static size_t mapped_index(const qd_config *c, int layer, int mat) {
    return mat < QD_WM_LAYER_MATS ? (size_t)layer * QD_WM_LAYER_MATS + (size_t)mat
                                  : (size_t)c->num_hidden_layers * QD_WM_LAYER_MATS + (size_t)(mat - QD_WM_EMBED);
}

/* qd_weights_load (mapped 0) and qd_weights_map (mapped 1): the same checks, then either every tensor upcast
 * into one allocation, or the norms alone upcast and the matrices left in the mapping. */
static int bind(const char *dir, qd_weights *w, int mapped, qd_err *e) {
    memset(w, 0, sizeof *w);
    qd_st st;
    memset(&st, 0, sizeof st);
    param *p = NULL;
    unsigned char *used = NULL;
    char *where = NULL;
    const qd_tensor **src = NULL; /* (n) the tensor each parameter comes from */
    int rc;
    if ((rc = qd_config_load(dir, &w->cfg, &w->config_json, e))) goto fail;
    if (!(w->dir = str_dup(dir, e))) {
        rc = QD_ERUNTIME;
        goto fail;
    }
    if ((rc = qd_st_open_dir(&st, dir, e))) goto fail;
    /* What a message about a missing tensor names: the file, or a sharded checkpoint's index. */
    where = st.nfiles == 1 ? str_dup(st.files[0], e) : qd_path_join(dir, "model.safetensors.index.json", e);
    if (!where) {
        rc = QD_ERUNTIME;
        goto fail;
    }

    /* Each layer has LAYER_PARAMS tensors. A config claiming more layers than the checkpoint has
     * tensors for is checked only as far as its first missing tensor (which lies within the first
     * st.n / LAYER_PARAMS + 1 layers), so a bad num_hidden_layers never sizes an allocation. */
    const int L = w->cfg.num_hidden_layers;
    int Lcheck = L;
    if ((int64_t)LAYER_PARAMS * L + 2 > st.n && st.n / LAYER_PARAMS + 1 < L) Lcheck = st.n / LAYER_PARAMS + 1;
    int n = -1;
    if (!(w->layers = qd_zalloc((size_t)Lcheck, sizeof *w->layers, e)) || (n = build_params(w, Lcheck, &p, e)) < 0 ||
        !(used = qd_zalloc((size_t)st.n + 1, 1, e)) || !(src = qd_zalloc((size_t)n, sizeof *src, e))) {
        rc = QD_ERUNTIME;
        goto fail;
    }
    char want[96], got[96];
    for (int i = 0; i < n; i++) {
        const qd_tensor *t = qd_st_find(&st, p[i].name);
        fmt_shape(want, sizeof want, p[i].ndim, p[i].shape);
        if (!t) {
            rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s' missing (Expected: %s)", where, p[i].name, want);
            goto fail;
        }
        if (!shape_matches(&p[i], t)) {
            fmt_shape(got, sizeof got, t->ndim, t->shape);
            rc = qd_errf(e, QD_EINPUT, "%s: tensor '%s': wrong shape. Expected: %s Actual: %s", t->file, p[i].name,
                         want, got);
            goto fail;
        }
        used[t - st.tensors] = 1;
        src[i] = t;
    }
    if (Lcheck < L) { /* unreachable: more names were expected than there are tensors */
        rc = qd_errf(e, QD_EINPUT, "%s: %d layers in the config but only %d tensors", where, L, st.n);
        goto fail;
    }
    for (int i = 0; i < st.n; i++) {
        const qd_tensor *t = &st.tensors[i];
        if (used[i]) continue;
        /* A tied checkpoint may still carry lm_head.weight; transformers ignores it, so do we. */
        if (w->cfg.tie_word_embeddings && strcmp(t->name, "lm_head.weight") == 0) continue;
        rc =
            qd_errf(e, QD_EINPUT, "%s: unexpected tensor '%s' (%s)", t->file, t->name,
                    ends_with(t->name, ".bias") ? "Qwen3 has no biases" : "not part of a Qwen3 model with this config");
        goto fail;
    }

    /* mapped: only the 1-D tensors go to the fp32 allocation; the rest stays in the checkpoint's pages */
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (mapped && p[i].ndim == 2) continue;
        size_t k;
        /* Cannot overflow once every shape matched a tensor in a mapped file; checked all the same. */
        if (qd_mul_size((size_t)p[i].shape[0], p[i].ndim == 2 ? (size_t)p[i].shape[1] : 1, &k) || total + k < total ||
            total + k > SIZE_MAX / sizeof(float)) {
            rc = qd_errf(e, QD_EINPUT, "%s: model size overflows", dir);
            goto fail;
        }
        total += k;
    }
    w->mem = malloc(total ? total * sizeof(float) : 1); /* every float is written below */
    if (!w->mem) {
        rc = qd_errf(e, QD_ERUNTIME, "%s: malloc(%zu) for the fp32 weights failed", dir, total * sizeof(float));
        goto fail;
    }
    w->mem_floats = total;
    if (mapped && !(w->mapped = qd_zalloc((size_t)L * QD_WM_LAYER_MATS + 2, sizeof *w->mapped, e))) {
        rc = QD_ERUNTIME;
        goto fail;
    }
    float *next = w->mem;
    for (int i = 0; i < n; i++) {
        if (mapped && p[i].ndim == 2) {
            w->mapped[mapped_index(&w->cfg, p[i].layer, p[i].mat)] = src[i];
            continue;
        }
        *p[i].slot = next;
        next += param_numel(&p[i]);
        qd_tensor_to_f32(src[i], *p[i].slot);
        qd_tensor_release(src[i]);
    }
    w->src_dtype = src[0]->dtype; /* the embedding's */
    if (w->cfg.tie_word_embeddings) w->lm_head = w->embed;
    if (mapped) { /* the tensors w->mapped points at live in st: it stays open until qd_weights_free */
        if (!(w->st = qd_alloc(sizeof *w->st, e))) {
            rc = QD_ERUNTIME;
            goto fail;
        }
        *w->st = st;
        memset(&st, 0, sizeof st);
    }
    free(src);
    free(p);
    free(used);
    free(where);
    qd_st_close(&st);
    return QD_OK;

fail:
    free(src);
    free(p);
    free(used);
    free(where);
    qd_st_close(&st);
    qd_weights_free(w);
    return rc;
}

int qd_weights_load(const char *dir, qd_weights *w, qd_err *e) { return bind(dir, w, 0, e); }

int qd_weights_map(const char *dir, qd_weights *w, qd_err *e) { return bind(dir, w, 1, e); }

/* Matrix m's float pointer (NULL when mapped). */
static float *mat_f32(const qd_weights *w, int layer, qd_wmat m) {
    if (m == QD_WM_EMBED) return w->embed;
    if (m == QD_WM_LM_HEAD) return w->lm_head;
    if (!w->layers || layer < 0 || layer >= w->cfg.num_hidden_layers) return NULL;
    const qd_layer_weights *lw = &w->layers[layer];
    float *const f[QD_WM_LAYER_MATS] = {lw->q_proj,    lw->k_proj,  lw->v_proj,   lw->o_proj,
                                        lw->gate_proj, lw->up_proj, lw->down_proj};
    return (int)m >= 0 && m < QD_WM_LAYER_MATS ? f[m] : NULL;
}

/* Matrix m's tensor in the mapping, or NULL. */
static const qd_tensor *mat_mapped(const qd_weights *w, int layer, qd_wmat m) {
    if (!w->mapped) return NULL;
    if (m == QD_WM_LM_HEAD && w->cfg.tie_word_embeddings) m = QD_WM_EMBED;
    if (m < QD_WM_LAYER_MATS && (layer < 0 || layer >= w->cfg.num_hidden_layers)) return NULL;
    if ((int)m < 0 || m > QD_WM_LM_HEAD) return NULL;
    return w->mapped[mapped_index(&w->cfg, layer, m)];
}

qd_wview qd_weights_mat(const qd_weights *w, int layer, qd_wmat m) {
    qd_wview v = {NULL, QD_DT_F32};
    const float *f = mat_f32(w, layer, m);
    const qd_tensor *t;
    if (f) v.data = f;
    else if ((t = mat_mapped(w, layer, m))) v = (qd_wview){t->data, t->dtype};
    return v;
}

void qd_weights_release(const qd_weights *w, int layer, qd_wmat m) {
    const qd_tensor *t = mat_f32(w, layer, m) ? NULL : mat_mapped(w, layer, m);
    if (t) qd_tensor_release(t);
}

void qd_weights_release_layer(const qd_weights *w, int layer) {
    for (int m = 0; m < QD_WM_LAYER_MATS; m++) qd_weights_release(w, layer, (qd_wmat)m);
}

void qd_wview_to_f32(qd_wview v, size_t first, size_t n, float *dst) {
    const unsigned char *b = (const unsigned char *)v.data + first * qd_dtype_size(v.dtype);
    for (size_t i = 0; i < n; i++) {
        if (v.dtype == QD_DT_F32) {
            memcpy(&dst[i], b + 4 * i, 4);
        } else {
            uint16_t h = (uint16_t)(b[2 * i] | (unsigned)b[2 * i + 1] << 8);
            dst[i] = v.dtype == QD_DT_BF16 ? qd_bf16_to_f32(h) : qd_f16_to_f32(h);
        }
    }
}

int qd_weights_all_bf16(const qd_weights *w) {
    for (size_t i = 0; i < w->mem_floats; i++) {
        const float r = qd_round_bf16(w->mem[i]);
        if (memcmp(&r, &w->mem[i], sizeof r) != 0) return 0; /* a NaN is never equal to itself */
    }
    for (int l = -1; l < w->cfg.num_hidden_layers; l++) /* -1: the embedding and lm_head */
        for (int k = l < 0 ? QD_WM_EMBED : 0; k < (l < 0 ? QD_WM_LM_HEAD + 1 : QD_WM_LAYER_MATS); k++) {
            const qd_tensor *t = mat_f32(w, l, (qd_wmat)k) ? NULL : mat_mapped(w, l, (qd_wmat)k);
            if (t && t->dtype != QD_DT_BF16) return 0; /* the fp32 ones are w->mem's, checked above */
        }
    return 1;
}

int qd_weights_to_f32(const qd_weights *w, qd_weights *out, qd_err *e) {
    if (qd_weights_alloc(out, &w->cfg, e)) return QD_ERUNTIME;
    out->src_dtype = w->src_dtype;
    const qd_config *c = &w->cfg;
    const size_t C = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, HD = (size_t)c->head_dim;
    const size_t QD = (size_t)c->num_attention_heads * HD, KVD = (size_t)c->num_key_value_heads * HD;
    const size_t V = (size_t)c->vocab_size;
    const size_t numel[QD_WM_LAYER_MATS] = {QD * C, KVD * C, KVD * C, C * QD, I * C, I * C, C * I};
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const qd_layer_weights *a = &w->layers[l];
        qd_layer_weights *b = &out->layers[l];
        if (a->input_layernorm) memcpy(b->input_layernorm, a->input_layernorm, C * sizeof(float));
        if (a->post_attention_layernorm)
            memcpy(b->post_attention_layernorm, a->post_attention_layernorm, C * sizeof(float));
        if (a->q_norm) memcpy(b->q_norm, a->q_norm, HD * sizeof(float));
        if (a->k_norm) memcpy(b->k_norm, a->k_norm, HD * sizeof(float));
        for (int m = 0; m < QD_WM_LAYER_MATS; m++) {
            qd_wview v = qd_weights_mat(w, l, (qd_wmat)m);
            if (v.data) qd_wview_to_f32(v, 0, numel[m], mat_f32(out, l, (qd_wmat)m));
        }
    }
    if (w->norm) memcpy(out->norm, w->norm, C * sizeof(float));
    for (int m = QD_WM_EMBED; m <= QD_WM_LM_HEAD; m++) {
        if (m == QD_WM_LM_HEAD && c->tie_word_embeddings) break; /* out->lm_head is out->embed */
        qd_wview v = qd_weights_mat(w, 0, (qd_wmat)m);
        if (v.data) qd_wview_to_f32(v, 0, V * C, mat_f32(out, 0, (qd_wmat)m));
    }
    return QD_OK;
}

void qd_weights_free(qd_weights *w) {
    if (w->st) qd_st_close(w->st);
    free(w->st);
    free(w->mapped);
    free(w->mem);
    free(w->layers);
    free(w->config_json);
    free(w->dir);
    memset(w, 0, sizeof *w);
}
