/* run_checks.c: see run_checks.h. */
#include "run_checks.h"

#include <math.h>
#include <string.h>

#include "qd_tokens.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

static int is_backend(const char *name, const char *want) { return name && strcmp(name, want) == 0; }

int qd_run_weights_mapped(const char *a, const char *b) { return !is_backend(a, "fused") && !is_backend(b, "fused"); }

qd_mem_estimate qd_run_memory(const qd_config *c, const qd_run_plan *p) {
    const double L = c->num_hidden_layers, C = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    const double Q = (double)c->num_attention_heads * c->head_dim, KV = (double)c->num_key_value_heads * c->head_dim;
    const double S = (double)p->T + p->decode; /* positions held */
    qd_mem_estimate m;
    const qd_param_counts n = qd_config_params(c);
    const double layer_mats = n.layer_mats; /* the seven matrices of one layer */
    const double embed_head = n.embed * (c->tie_word_embeddings ? 1 : 2);
    const double norms = L * n.layer_norms + n.final_norm;
    const double all = L * layer_mats + embed_head + norms;
    /* the stored dtype as config.json names it; BF16 (Qwen3's) when it names none */
    const int f32 = strcmp(c->dtype, "float32") == 0, f16 = strcmp(c->dtype, "float16") == 0, bf16 = !f32 && !f16;
    if (qd_run_weights_mapped(p->name_a, p->name_b)) {
        /* the matrices are read in place and each layer's pages are given back after it, so what is resident
         * at once is the largest of one layer's matrices and the embedding or lm_head (one at a time), in the
         * stored dtype, plus the norms in fp32 (docs/REFERENCE.md) */
        m.weights = (f32 ? 4.0 : 2.0) * (layer_mats > V * C ? layer_mats : V * C) + 4.0 * norms;
        /* emu's contract needs bf16 values: an F16 or F32 checkpoint gets it a bf16-rounded fp32 copy */
        if (!bf16 && (is_backend(p->name_a, "emu") || is_backend(p->name_b, "emu"))) m.weights += 4.0 * all;
    } else {
        /* every weight upcast to fp32, once, shared by the backends and uploaded */
        m.weights = 4.0 * all;
    }
    /* per backend: K and V of every layer and position, in fp32 */
    m.kv_cache = p->backends * 4.0 * 2 * L * S * KV;
    /* per backend: the layer's input, output and scratch for S tokens and the logits; per side in lockstep,
     * the taps of one layer (and the replay's inputs, as many again) */
    const double layer_taps = 6 * C + 4 * Q + 4 * KV + 3 * I;
    m.activations = p->backends * 4.0 * S * (4 * C + 3 * Q + 3 * I + V) +
                    (p->lockstep ? p->backends * 4.0 * S * 2 * layer_taps : 0);
    m.total = m.weights + m.kv_cache + m.activations;
    return m;
}

/* MemAvailable of /proc/meminfo in bytes; < 0 when unknown. */
static double mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    double kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024.0;
}

/* Why fault f cannot fire in this run, or NULL (docs/FAULTS.md gives each fault's conditions). */
static const char *cannot_fire(const qd_config *c, const qd_run_plan *p, const qd_fault *f, char *buf, size_t n) {
    const int S = p->T + p->decode;
    const char *name = qd_fault_info_of(f->kind)->name;
    if (f->layer >= c->num_hidden_layers) {
        snprintf(buf, n, "layer %d, but the model has %d layers (0..%d)", f->layer, c->num_hidden_layers,
                 c->num_hidden_layers - 1);
    } else if (qd_fault_info_of(f->kind)->decode_only && p->decode == 0) {
        snprintf(buf, n, "%s needs decode steps (--decode N): it acts only when a decode step writes the KV cache",
                 name);
    } else if (f->kind == QD_FAULT_GQA_MOD &&
               (c->num_key_value_heads == 1 || c->num_key_value_heads == c->num_attention_heads)) {
        snprintf(buf, n,
                 "%s needs grouped KV heads (1 < num_key_value_heads < num_attention_heads); this model has %d "
                 "KV heads for %d heads, where h mod n_kv = h / group",
                 name, c->num_key_value_heads, c->num_attention_heads);
    } else if (f->kind == QD_FAULT_ONLINE_RESCALE && S <= 64) {
        snprintf(buf, n,
                 "%s needs more than one key tile of 64 positions; this run has %d (%d tokens + %d decode steps)", name,
                 S, p->T, p->decode);
    } else if (f->kind == QD_FAULT_ROPE_INTERLEAVED && S < 2) {
        snprintf(buf, n, "%s needs a position > 0; this run has one token", name);
    } else {
        return NULL;
    }
    return buf;
}

int qd_run_check(const qd_config *c, const qd_run_plan *p, FILE *info, qd_err *e) {
    const long positions = (long)p->T + p->decode;
    /* as for the prompt (qd_tokens.h): a model without max_position_embeddings gets Qwen3's longest context */
    const int have_max = c->max_position_embeddings > 0 && c->max_position_embeddings <= QD_TOKENS_MAX_DEFAULT;
    const long max_pos = have_max ? c->max_position_embeddings : QD_TOKENS_MAX_DEFAULT;
    if (positions > max_pos)
        return qd_errf(e, QD_EINPUT,
                       "--decode %d: %d prompt tokens + %d decode steps = %ld positions, past the model's "
                       "max_position_embeddings %ld (%s)",
                       p->decode, p->T, p->decode, positions, max_pos,
                       have_max ? "config.json" : "config.json sets none or more: the longest Qwen3 context");
    const qd_fault *faults[2] = {&p->fault, &p->fault_a};
    const char *hosts[2] = {p->name_b, p->name_a};
    for (int k = 0; k < 2; k++) {
        char why[320], spec[64];
        if (faults[k]->kind == QD_FAULT_NONE) continue;
        snprintf(spec, sizeof spec, "%s", qd_fault_info_of(faults[k]->kind)->name);
        if (faults[k]->layer >= 0) snprintf(spec + strlen(spec), sizeof spec - strlen(spec), "@%d", faults[k]->layer);
        if (hosts[k] && strcmp(hosts[k], "ref") == 0)
            return qd_errf(e, QD_EINPUT,
                           "--inject%s %s: the fault goes to %s, here ref, the reference, which takes no faults; "
                           "inject into emu or fused (e.g. --backends %s)",
                           k ? "-a" : "", spec,
                           k             ? "the reference side A"
                           : p->lockstep ? "the side under test B"
                                         : "the backend run",
                           k ? "emu,emu" : "ref,emu");
        if (cannot_fire(c, p, faults[k], why, sizeof why))
            return qd_errf(e, QD_EINPUT, "--inject%s %s: the fault cannot fire in this run: %s", k ? "-a" : "", spec,
                           why);
    }
    if (p->max_memory == 0) return QD_OK;
    const qd_mem_estimate m = qd_run_memory(c, p);
    const double limit = p->max_memory > 0 ? p->max_memory : mem_available();
    char est[200];
    snprintf(est, sizeof est, "about %.3g GiB (weights %.3g, KV cache %.3g, activations and taps %.3g)", m.total / GIB,
             m.weights / GIB, m.kv_cache / GIB, m.activations / GIB);
    if (limit > 0 && m.total > limit)
        return qd_errf(e, QD_EINPUT,
                       "this run needs %s, more than the %.3g GiB %s (--max-memory GIB: another limit; 0: no check)",
                       est, limit / GIB, p->max_memory > 0 ? "of --max-memory" : "available (MemAvailable)");
    if (info && m.total >= GIB)
        fprintf(info, "qwen3-diff: memory: this run needs %s of %.3g GiB available\n", est, limit / GIB);
    return QD_OK;
}

void qd_run_fault_not_found(const qd_report *r, const qd_fault *f, int side, const char *flag, FILE *out) {
    double worst = -1;
    int at = -1;
    for (int i = 0; i < r->n; i++) {
        const qd_tap_row *row = &r->rows[i];
        if (row->id.pos == QD_POS_EMBED || (row->id.pos == QD_POS_LAYER && row->id.layer < f->layer)) continue;
        /* the tolerance verdict measures the pair, whichever side the fault is in */
        double ratio = r->replay ? row->rp[side].ratio : row->m.rel_l2 / row->tol.rel_l2;
        if (isfinite(ratio) && ratio > worst) {
            worst = ratio;
            at = i;
        }
    }
    const char *name = qd_fault_info_of(f->kind)->name;
    char layer[16] = "";
    if (f->layer >= 0) snprintf(layer, sizeof layer, "@%d", f->layer);
    if (at < 0) {
        fprintf(
            out,
            "qwen3-diff: warning: %s %s%s was injected but not found, and no op at or after its layer was compared\n",
            flag, name, layer);
        return;
    }
    char place[160], step[32] = "";
    const qd_tap_row *row = &r->rows[at];
    if (row->step > 0) snprintf(step, sizeof step, "decode step %d, ", row->step);
    if (row->id.pos != QD_POS_LAYER) snprintf(place, sizeof place, "%s%s", step, qd_tap_id_name(row->id));
    else snprintf(place, sizeof place, "%slayer %d, %s", step, row->id.layer, qd_tap_id_name(row->id));
    if (r->replay)
        fprintf(out,
                "qwen3-diff: warning: %s %s%s was injected but not found: the largest local error at or after "
                "its layer is %.3gx the noise floor (%s), under the threshold %gx\n",
                flag, name, layer, worst, place, r->threshold);
    else
        fprintf(out,
                "qwen3-diff: warning: %s %s%s was injected but not found: the largest rel_l2 at or after its "
                "layer is %.3gx its tolerance (%s), under 1\n",
                flag, name, layer, worst, place);
}
