/* qd_replay.h: op replay. Judges each op of one engine on its own, from the engine's own inputs to that
 * op, against the noise floor its precision allows (docs/TOLERANCES.md, "Local error and the noise floor").
 *
 * An absolute tolerance cannot tell a bug from an ill-conditioned op amplifying correct rounding: on a
 * model with Qwen3's extreme k_norm, attention is nearly one-hot, so one bf16 rounding of K moves a
 * probability mass, and a correct bf16 engine's attn differs from the fp32 reference by tens of percent
 * once its inputs have drifted. Replay removes the drift: for every op (every tap of qd_taps.h) it takes
 * the engine's own inputs to that op, as tapped (attn from its q_rope and its history of k_rope and
 * v_proj; attn_norm from the layer input; out from its attn_residual and down_proj), and recomputes the op
 * twice:
 *
 *   oracle    the reference's maths (reference/qd_ref_ops.h) in fp32 with f64 accumulation;
 *   contract  the engine's own precision: emu's ops (emu/qd_emu_ops.h) with the engine's activation dtype
 *             for a bf16/fp16 engine, the reference's fp32 maths (f32 accumulation; f64 for an f64
 *             engine) for an fp32 engine.
 *
 *   local error  = the engine's tap vs the oracle replay       (what the op itself got wrong)
 *   noise floor  = the contract replay vs the oracle replay    (what the op's precision must get wrong)
 *   ratio        = local rel_l2 / max(floor rel_l2, min_floor)
 *
 * min_floor is the relative rms error of one rounding of the output in its dtype at the least:
 * 2^-(p+1)/sqrt(3) for p significant bits, so an exact op (the embedding lookup) or a lucky floor of 0
 * never divides by zero. A correct engine has ratio ~1 (emu replayed by its own contract: exactly 1); a
 * bug's ratio is its error over the rounding noise of that op alone, whatever the op inherited.
 *
 * When an engine does not tap an op's input (the fused kernels keep q_norm and k_norm in registers), the
 * replay goes through the missing op: q_rope from q_proj through norm and rope, each side (oracle,
 * contract) its own. A decode step (T = 1) attends over the keys of earlier steps: the replay keeps each
 * engine's own k_rope and v_proj history per layer, so one qd_replay follows one engine through a run.
 *
 * Where the taps come from: a qd_tap_source, a callback over a dump (compare/qd_h5read.h) or a live
 * backend's tap store (compare/qd_tapstore.h). */
#ifndef QD_REPLAY_H
#define QD_REPLAY_H

#include <stdint.h>

#include "qd_metrics.h"
#include "qd_taps.h"
#include "qd_weights.h"

/* The verdict's default threshold on the local ratio (docs/TOLERANCES.md, "Choosing the threshold"):
 * measured, a correct engine stays below 1.6 on every fixture (emu 1.0 exactly, the reference <= 1, fused
 * ~1.1), and the faults of the catalog show at 12 and above on the ops they break. 4 lies between with a
 * margin of >= 2.5x on each side. */
#define QD_REPLAY_THRESHOLD 4.0

/* One engine's taps of the current step (T rows). get returns the tap's data (its shape in ndim and shape)
 * or NULL when the engine does not have that tap. The data must stay valid until the next call of get
 * or the end of the replay call that asked. */
typedef struct {
    const float *(*get)(void *ctx, qd_tap_id id, int *ndim, int64_t shape[3]);
    void *ctx;
} qd_tap_source;

/* QD_REPLAY_FIELDS(M): the replay's figures of a row, in the order of JSON and of the HDF5 table
 * /diff/<A>-vs-<B>/metrics (after the existing columns): M(name, ctype, h5type, json, doc), as
 * QD_METRICS_FIELDS' M. The judged side's op (qd_tap_row.judged); NAN when no replay was made. */
/* clang-format off: one field per line, aligned as a table */
#define QD_REPLAY_FIELDS(M)                                                                           \
    M(local_rel_l2, double, H5T_NATIVE_DOUBLE, qd_json_real,                                          \
      "rel_l2 of the engine's tap vs the oracle replay of the op on the engine's own inputs")         \
    M(floor_rel_l2, double, H5T_NATIVE_DOUBLE, qd_json_real,                                          \
      "rel_l2 of the contract replay (the engine's precision) vs the oracle replay: the noise floor") \
    M(min_floor, double, H5T_NATIVE_DOUBLE, qd_json_real,                                             \
      "one rounding of the output in its dtype, 2^-(p+1)/sqrt(3): the floor's least value")           \
    M(ratio, double, H5T_NATIVE_DOUBLE, qd_json_real, "local_rel_l2 / max(floor_rel_l2, min_floor)")  \
    M(local_max_abs, double, H5T_NATIVE_DOUBLE, qd_json_real, "max |engine - oracle| of the op")
/* clang-format on */

#define QD_REPLAY_MEMBER_(name, ctype, h5type, json, doc) ctype name;
/* The figures of QD_REPLAY_FIELDS, one struct. */
typedef struct {
    QD_REPLAY_FIELDS(QD_REPLAY_MEMBER_)
} qd_replay_figures;
#undef QD_REPLAY_MEMBER_

/* One op's replay. */
typedef struct {
    int have;         /* 1: replayed (the engine has the tap and the inputs it needs) */
    qd_metrics local; /* test = the engine's tap, ref = the oracle replay */
    qd_metrics floor; /* test = the contract replay, ref = the oracle replay */
    double min_floor;
    double ratio;
} qd_replay_op;

typedef struct qd_replay qd_replay;

/* A replay of one engine over weights w (borrowed; the checkpoint the engine ran). precision: the engine's
 * activation dtype as in a dump's group attribute ("bf16", "fp16", "fp32", "fp64"); accum: its reduction
 * ("f32", "f64"; NULL: f32). max_seq: positions the run holds (prompt + decode steps). threads <= 0: OpenMP's
 * default. NULL with e set on failure (an unknown precision is QD_EINPUT). */
qd_replay *qd_replay_create(const qd_weights *w, const char *precision, const char *accum, int max_seq, int threads,
                            qd_err *e);
void qd_replay_free(qd_replay *rp);

/* The embedding of tokens (T). op: embed's replay. */
int qd_replay_embed(qd_replay *rp, const qd_tap_source *src, const int32_t *tokens, int T, qd_replay_op *op, qd_err *e);
/* Layer l at positions pos0..pos0+T-1. h_in (T, C): the layer's input as the engine received it (its previous
 * layer's out, its embed, or, teacher-forced, the other side's); NULL when unknown (the ops that read it,
 * attn_norm and attn_residual, are then not replayed). ops (QD_NUM_LAYER_TAPS), by qd_layer_tap. Appends the
 * engine's k_rope and v_proj of these positions to its history. */
int qd_replay_layer(qd_replay *rp, const qd_tap_source *src, int l, const float *h_in, int T, int pos0,
                    qd_replay_op *ops, qd_err *e);
/* The head over h (T, C), the last layer's output as the engine's head received it (NULL: unknown).
 * ops (2): final_norm, logits. */
int qd_replay_head(qd_replay *rp, const qd_tap_source *src, const float *h, int T, qd_replay_op *ops, qd_err *e);

/* The figures of op (every one NAN when op is NULL or was not replayed). */
qd_replay_figures qd_replay_figures_of(const qd_replay_op *op);

/* The min_floor of a dtype name: 2^-(p+1)/sqrt(3) with p = 8 (bf16), 11 (fp16), 24 (fp32), 53 (fp64). */
double qd_replay_min_floor(const char *precision);

/* The verdict of one replayed op (0: pass; 0 when !op->have): QD_V_LOCAL when ratio > threshold;
 * QD_V_NONFINITE when the engine has more non-finite values than the contract on the same inputs;
 * QD_V_BLOWUP_MAG when the engine's largest magnitude is >= blowup_ratio x the oracle's and the contract's
 * is not; QD_V_COLLAPSE when the engine's output is all zero and neither the oracle's nor the contract's is. */
unsigned qd_replay_verdict(const qd_replay_op *op, double threshold, double blowup_ratio);

// ----------------------------------------------------------------------------
// what each op reads: the one definition replay runs by and repro files (compare/qd_repro.h) are cut by

/* An input of an op that is not a tap of the same step. */
enum {
    QD_RIN_H = -1,      /* the layer's input h_in (final_norm: the last layer's output as the head got it) */
    QD_RIN_TOKENS = -2, /* the token ids (embed) */
};

/* The weights an op reads, one tensor each. */
typedef enum {
    QD_RW_NONE = 0,
    QD_RW_INPUT_LAYERNORM,
    QD_RW_Q_PROJ,
    QD_RW_K_PROJ,
    QD_RW_V_PROJ,
    QD_RW_Q_NORM,
    QD_RW_K_NORM,
    QD_RW_O_PROJ,
    QD_RW_POST_ATTENTION_LAYERNORM,
    QD_RW_GATE_PROJ,
    QD_RW_UP_PROJ,
    QD_RW_DOWN_PROJ, /* layer l's */
    QD_RW_EMBED,
    QD_RW_NORM,
    QD_RW_LM_HEAD, /* the model's */
    QD_NUM_RW
} qd_replay_weight;

/* The inputs of one op as replay reads them: taps of the same step and layer (by qd_tap_id_kind: layer taps
 * are qd_layer_tap, final_norm is QD_NUM_LAYER_TAPS + QD_TAP_FINAL_NORM), or QD_RIN_*. When the engine
 * did not tap an input, replay goes through the op that makes it (its own reads, recursively). */
typedef struct {
    int n_in;
    int in[3];
    int history;             /* 1: k_rope and v_proj (in[1], in[2]) of every position 0..pos0+T-1 (attn) */
    qd_replay_weight weight; /* QD_RW_NONE: none */
} qd_replay_reads;

/* The reads of the op producing tap id (every tap is one op's output). */
const qd_replay_reads *qd_replay_reads_of(qd_tap_id id);
/* The weight's name in the checkpoint's layer or model ("k_norm", "q_proj", "lm_head"; "" for none). */
const char *qd_replay_weight_name(qd_replay_weight k);
/* The weight's shape (HF layout (out, in), or (n) for a norm): its ndim (1 or 2; 0 for none). The embedding's
 * is (V, C); a repro stores only the rows its tokens read. */
int qd_replay_weight_shape(const qd_config *c, qd_replay_weight k, int64_t shape[2]);
/* The weight k of layer (ignored for the model's weights) in w; NULL for none, and for a matrix of mapped
 * weights (qd_weights_map), which only qd_replay_weight_view reads. */
const float *qd_replay_weight_of(const qd_weights *w, int layer, qd_replay_weight k);
/* The same as a view: a matrix in its stored dtype, fp32 or read in place; data NULL for none. */
qd_wview qd_replay_weight_view(const qd_weights *w, int layer, qd_replay_weight k);

/* The oracle's and the contract's replays of tap id at the replay's last call of that position (T rows, the
 * tap's shape), valid until the next call; 0 with both NULL when the replay keeps none for id. The embed's
 * share their buffers with final_norm's. */
int qd_replay_outputs(const qd_replay *rp, qd_tap_id id, const float **oracle, const float **contract);
/* Layer l's keys and values attention read at positions 0..n-1: the engine's k_rope and v_proj, or (when it
 * did not tap them) the oracle side's replay of them. k, v (n, NKV, HD). 0 when a position is not known. */
int qd_replay_history(const qd_replay *rp, int l, int n, const float **k, const float **v);

/* A fault of the catalog (common/qd_fault.h) in the contract's ops from now on (QD_FAULT_NONE: none), as emu
 * hosts it: each op takes the faults of the kernel it models; knorm-mul only k_norm, residual-drop only the
 * attention residual, rope-freq-bf16 the bf16 table, kv-cache-pos the one-token step's history write. An
 * fp32 or fp64 engine's contract is then emu's ops in fp32 (the reference's hosts no fault). QD_EINPUT for
 * an unknown kind. */
int qd_replay_set_fault(qd_replay *rp, int fault, qd_err *e);

/* What judges a comparison: the local ratio (w != NULL) or the tolerances (w == NULL). */
struct qd_repro_req;
typedef struct {
    const qd_weights *w;        /* the checkpoint both engines ran; NULL: no replay, the tolerance verdict */
    double threshold;           /* on the local ratio; <= 0: QD_REPLAY_THRESHOLD */
    int threads;                /* <= 0: OpenMP's default */
    struct qd_repro_req *repro; /* NULL; else the first divergence's op is written as a repro file there
                                   (compare/qd_repro.h) */
} qd_replay_judge;

#endif
