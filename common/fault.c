/* fault.c: the fault catalog's names and parsing (qd_fault.h). */
#include "qd_fault.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const qd_fault_info infos[QD_NUM_FAULTS] = {
    [QD_FAULT_NONE] = {"none", "no fault", "", 0},
    [QD_FAULT_KNORM_MUL] = {"knorm-mul", "k_norm as an element-wise multiply by its weight, no normalisation", "k_norm",
                            0},
    [QD_FAULT_ROPE_INTERLEAVED] = {"rope-interleaved", "RoPE pairs 2i/2i+1 instead of rotate-half (j, j+d/2)", "q_rope",
                                   0},
    [QD_FAULT_ROPE_FREQ_BF16] = {"rope-freq-bf16", "RoPE inv_freq computed or stored in bf16", "q_rope", 0},
    [QD_FAULT_GQA_MOD] = {"gqa-mod", "head h reads kv head h mod n_kv instead of h / (n_heads/n_kv)", "attn", 0},
    [QD_FAULT_NO_CAUSAL] = {"no-causal-mask", "causal mask missing: tokens attend to later tokens", "attn", 0},
    [QD_FAULT_SOFTMAX_NO_MAX] = {"softmax-no-max", "softmax without max subtraction (exp overflows)", "attn", 0},
    [QD_FAULT_NO_SCALE] = {"no-attn-scale", "attention scores not scaled by head_dim^-0.5", "attn", 0},
    [QD_FAULT_NORM_SUMSQ_LOWP] = {"norm-sumsq-lowp",
                                  "RMSNorm sum of squares accumulated in the activation dtype, not fp32", "attn_norm",
                                  0},
    [QD_FAULT_EPS_OUTSIDE] = {"eps-outside-sqrt", "RMSNorm eps added outside the square root", "attn_norm", 0},
    [QD_FAULT_RESIDUAL_DROP] = {"residual-drop", "the attention residual add dropped (x + o_proj -> o_proj)",
                                "attn_residual", 0},
    [QD_FAULT_ACT_GELU] = {"act-gelu", "SiLU replaced by GELU in the MLP", "act", 0},
    [QD_FAULT_KV_POS] = {"kv-cache-pos", "a decode step writes its K/V one position early", "attn", 1},
    [QD_FAULT_ONLINE_RESCALE] = {"online-softmax-rescale",
                                 "online softmax re-initialises its row sum per key tile instead of rescaling "
                                 "and carrying it (the seed: ~1e29, zeros after)",
                                 "attn", 0},
};

const qd_fault_info *qd_fault_info_of(qd_fault_kind k) {
    return k >= 0 && k < QD_NUM_FAULTS ? &infos[k] : &infos[QD_FAULT_NONE];
}

int qd_fault_parse(const char *spec, qd_fault *f, qd_err *e) {
    char name[64];
    const char *at = strchr(spec, '@');
    size_t n = at ? (size_t)(at - spec) : strlen(spec);
    if (n == 0 || n >= sizeof name) return qd_errf(e, QD_EINPUT, "--inject: '%s': expected NAME[@LAYER]", spec);
    memcpy(name, spec, n);
    name[n] = '\0';
    f->kind = QD_FAULT_NONE;
    for (int k = 1; k < QD_NUM_FAULTS; k++)
        if (strcmp(name, infos[k].name) == 0) f->kind = (qd_fault_kind)k;
    if (f->kind == QD_FAULT_NONE) {
        char known[1024] = "";
        for (int k = 1; k < QD_NUM_FAULTS; k++) {
            size_t used = strlen(known);
            snprintf(known + used, sizeof known - used, "%s%s", k > 1 ? ", " : "", infos[k].name);
        }
        return qd_errf(e, QD_EINPUT, "--inject: unknown fault '%s' (known: %s)", name, known);
    }
    f->layer = -1;
    if (at) {
        char *end;
        long l = strtol(at + 1, &end, 10);
        if (!at[1] || *end || l < 0 || l > 100000)
            return qd_errf(e, QD_EINPUT, "--inject: '%s': layer '%s' is not a non-negative integer", spec, at + 1);
        f->layer = (int)l;
    }
    return QD_OK;
}
