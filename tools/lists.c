/* lists.c: --list-taps and --list-faults (lists.h). The names come from common/ (qd_taps.h, qd_fault.h),
 * so a tap or fault added there is listed here; a missing description is a test failure
 * (tests/test_cli_truth.py), not a blank. */
#include "lists.h"

#include "qd_fault.h"
#include "qd_taps.h"

/* One line per tap kind: the shape (T tokens, C hidden, I intermediate, NH/NKV heads, HD head_dim, V vocab)
 * and what it holds (docs/SCHEMA.md is the contract). */
static const char *const layer_tap_text[QD_NUM_LAYER_TAPS] = {
    [QD_TAP_ATTN_NORM] = "(T, C)       RMSNorm(x) * input_layernorm.weight",
    [QD_TAP_Q_PROJ] = "(T, NH*HD)   q = attn_norm @ q_proj.weight^T",
    [QD_TAP_K_PROJ] = "(T, NKV*HD)  k = attn_norm @ k_proj.weight^T",
    [QD_TAP_V_PROJ] = "(T, NKV*HD)  v = attn_norm @ v_proj.weight^T",
    [QD_TAP_Q_NORM] = "(T, NH, HD)  per-head RMSNorm of q over head_dim * q_norm.weight, before RoPE",
    [QD_TAP_K_NORM] = "(T, NKV, HD) per-head RMSNorm of k * k_norm.weight (Qwen3's extreme weights live here)",
    [QD_TAP_Q_ROPE] = "(T, NH, HD)  q after rotate-half RoPE (pairs j and j + HD/2)",
    [QD_TAP_K_ROPE] = "(T, NKV, HD) k after RoPE, as written to the KV cache",
    [QD_TAP_ATTN] = "(T, NH*HD)   causal softmax(q k^T / sqrt(HD)) v, GQA, before o_proj",
    [QD_TAP_O_PROJ] = "(T, C)       attn @ o_proj.weight^T",
    [QD_TAP_ATTN_RESIDUAL] = "(T, C)       x + o_proj: the residual stream after attention",
    [QD_TAP_MLP_NORM] = "(T, C)       RMSNorm(attn_residual) * post_attention_layernorm.weight",
    [QD_TAP_GATE_PROJ] = "(T, I)       mlp_norm @ gate_proj.weight^T",
    [QD_TAP_UP_PROJ] = "(T, I)       mlp_norm @ up_proj.weight^T",
    [QD_TAP_ACT] = "(T, I)       silu(gate_proj) * up_proj",
    [QD_TAP_DOWN_PROJ] = "(T, C)       act @ down_proj.weight^T",
    [QD_TAP_OUT] = "(T, C)       attn_residual + down_proj: the layer's output",
};

static const char *const model_tap_text[QD_NUM_MODEL_TAPS] = {
    [QD_TAP_EMBED] = "(T, C)       embed_tokens rows of the input ids (before layer 0)",
    [QD_TAP_FINAL_NORM] = "(T, C)       RMSNorm(last layer's out) * norm.weight (after the last layer)",
    [QD_TAP_LOGITS] = "(T, V)       final_norm @ lm_head.weight^T (embed_tokens when tied)",
};

void qd_list_taps(FILE *f) {
    fprintf(f, "taps in data-flow order (schema v1 names, docs/SCHEMA.md; --dump-taps takes globs of them):\n");
    fprintf(f, "  %-14s %s\n", qd_model_tap_name(QD_TAP_EMBED), model_tap_text[QD_TAP_EMBED]);
    fprintf(f, "  per layer:\n");
    for (int t = 0; t < QD_NUM_LAYER_TAPS; t++)
        fprintf(f, "  %-14s %s\n", qd_layer_tap_name(t), layer_tap_text[t] ? layer_tap_text[t] : "?");
    for (int t = QD_TAP_FINAL_NORM; t < QD_NUM_MODEL_TAPS; t++)
        fprintf(f, "  %-14s %s\n", qd_model_tap_name(t), model_tap_text[t] ? model_tap_text[t] : "?");
}

/* What a fault needs before it can show at all (docs/FAULTS.md, "The expectations"); NULL: nothing more
 * than a prompt of two tokens. */
static const char *fault_needs(qd_fault_kind k) {
    switch (k) {
    case QD_FAULT_ROPE_INTERLEAVED:
    case QD_FAULT_NO_CAUSAL: return "a prompt of 2 or more tokens (position 0 is unchanged)";
    case QD_FAULT_ROPE_FREQ_BF16: return "long prompts: the angle error grows with the position (~300 tokens)";
    case QD_FAULT_GQA_MOD: return "grouped-query attention with 2 or more KV heads (the identity on MHA or 1 KV head)";
    case QD_FAULT_SOFTMAX_NO_MAX:
        return "an attention score above 88.7 (fp32/bf16) or 11.1 (fp16), where exp overflows";
    case QD_FAULT_NORM_SUMSQ_LOWP: return "bf16 or fp16 activations (--act); wide rows show it most";
    case QD_FAULT_EPS_OUTSIDE: return "an activation row with mean(x^2) near rms_norm_eps";
    case QD_FAULT_KV_POS: return "decode steps: --decode N";
    case QD_FAULT_ONLINE_RESCALE: return "more than one key tile: prompts longer than 64 tokens";
    default: return NULL;
    }
}

void qd_list_faults(FILE *f) {
    fprintf(f, "faults for --inject NAME[@LAYER] (into the test side B) and --inject-a (into A): they live in emu\n"
               "and fused (the CUDA kernels, docs/FAULTS.md); the reference takes none. LAYER: one layer, else every\n"
               "layer. Columns: number, name, the first tap where it shows, what it does, what it needs to show.\n");
    for (int k = 1; k < QD_NUM_FAULTS; k++) {
        const qd_fault_info *fi = qd_fault_info_of((qd_fault_kind)k);
        const char *needs = fault_needs((qd_fault_kind)k);
        fprintf(f, "  %2d %-24s %-14s %s\n", k, fi->name, fi->first_tap, fi->description);
        fprintf(f, "     %-24s %-14s needs: %s\n", "", "", needs ? needs : "any prompt");
    }
}
