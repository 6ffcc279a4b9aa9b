/* qd_localise.h: where inside one tap the error lives. Given the two sides of a tap that was judged
 * (test, ref) it breaks the error energy sum (test - ref)^2 down by token, by head (where the tap has
 * heads) and by channel, lists the top offenders of each axis, finds the set of indices that carries most
 * of the error on each axis, and says it in one sentence: "heads 1 and 2 carry 100 % of the error;
 * positions >= 64 carry 100 %", "channel 90 carries 97 % of the error", "spread over all tokens, heads and
 * channels". The comparator fills one for the first divergence (qd_report_localise, qd_compare.h).
 *
 * The view. (T, C), (T, I), (T, V): token, channel. (T, NH, HD): token, head, channel (the index within the
 * head, as in the metrics' coord). A (T, NH*HD) tap that is per head in meaning (q_proj, k_proj, v_proj,
 * attn) is viewed as (T, NH, HD) when the caller passes head_dim. (C): channel only.
 *
 * Energy. Over the pairs finite on both sides, in double. A pair whose class (finite, NaN, +Inf, -Inf)
 * differs is a non-finite mismatch: it is counted per index, not added to the energy, and when the tensor
 * has any, they dominate: shares and sets are then of the mismatches (a NaN where the reference has a value
 * is a worse error than any finite one, and it has no size to add up).
 *
 * "Carries most" (one rule for every axis). A set S of indices of an axis of N carries most of the error
 * when
 *   - S holds >= 80 % of the axis' error energy (QD_WHERE_SHARE), and
 *   - the energy per index inside S is >= 12 times that of the rest (QD_WHERE_CONTRAST: 12 is what 80 %
 *     in a quarter of the axis gives, (0.8 / 0.25) / (0.2 / 0.75); so any set of <= 25 % of the axis with
 *     >= 80 % qualifies, and a wider one must be cleaner outside: half the axis needs >= 92.3 %), and
 *   - S is at most half of the axis (QD_WHERE_MAX_FRACTION), unless it is one contiguous range: beyond
 *     half, a scattered set says more about the clean rest than about the error, while a clean prefix,
 *     suffix or band still says where the error starts ("positions >= 64" of 300).
 * Why these figures: error spread evenly (rounding noise) gives a contrast near 1, and the per-index
 * fluctuation of noise summed over even a few tens of elements stays within a few times the mean, far from
 * 12; a bug confined to some heads, positions or channels leaves the rest at the noise floor, a contrast
 * in the hundreds or more (gqa-mod@1 on knorm_extreme: heads 1 and 2 of 4 at 5e4). On a small axis the
 * rule still speaks: 2 heads of 4 need >= 92.3 %.
 *
 * Which set. Two candidates are tried on every axis:
 *   - the core: the fewest indices, heaviest first, that reach 80 % of the energy;
 *   - the hot set: the indices above the first gap of >= 12x (the contrast above) in the axis' relative
 *     errors (rms error / rms reference at each index) sorted ascending, going up from their 1/8 quantile
 *     (a clean part smaller than that is not looked for, and a lone outlier at the bottom is skipped).
 *     Clean indices are dense in that order, so the first such gap is where the clean part ends.
 *     Relative, because energy alone sees only the peak of a blow-up spanning tens of orders: the seed's
 *     attn carries ~1e59 at position 64 and 1e20..1e47 at each later position, every one of them wrong by
 *     1e4..1e28 times its own size, while the earlier positions' rounding noise (knorm_extreme's near
 *     one-hot attention) is 0.5 % to 46 % relative; a threshold at a fixed multiple of a quantile would
 *     take the 46 % ones in.
 *     With non-finite mismatches, the hot set is where they are.
 * The hot set is said when it qualifies and holds the core (with the core as its peak when that is at most
 * 4 indices and fewer than the hot set: "positions >= 64 carry 100 % of the error (token 64 alone 100 %)");
 * otherwise the core, when it qualifies; otherwise nothing: the error is spread along that axis. A set is
 * written as its runs ("positions >= 64", "channels 0..11 and 32..39", "heads 3 and 5") when that takes at
 * most 5 items, else as its size and heaviest members. Deterministic: fixed summation order, index order
 * on equal energies. */
#ifndef QD_LOCALISE_H
#define QD_LOCALISE_H

#include <stddef.h>
#include <stdint.h>

#define QD_WHERE_TOP 5     /* offenders listed per axis */
#define QD_WHERE_SHARE 0.8 /* see above */
#define QD_WHERE_CONTRAST 12.0
#define QD_WHERE_MAX_FRACTION 0.5

enum { QD_AXIS_TOKEN = 0, QD_AXIS_HEAD = 1, QD_AXIS_CHANNEL = 2, QD_NUM_AXES = 3 };

/* One index of an axis. */
typedef struct {
    int64_t index;
    double share;      /* of the error energy (or of the non-finite mismatches, when by_nonfinite) */
    double rms_err;    /* sqrt(mean (test - ref)^2) over the finite pairs at this index; 0 if none */
    double rms_ref;    /* sqrt(mean ref^2) over the same pairs */
    int64_t nonfinite; /* non-finite mismatches at this index */
} qd_where_entry;

/* A set of indices of one axis. */
typedef struct {
    int64_t size;    /* 0: none */
    double share;    /* of the axis' total */
    double contrast; /* weight per index inside / outside; INFINITY when the rest is clean */
    int64_t lo, hi;  /* a contiguous range lo..hi; both -1 when it is not one */
    int n_index;     /* its members, ascending: the first QD_WHERE_TOP */
    int64_t index[QD_WHERE_TOP];
    char text[96]; /* "heads 1 and 2", "positions >= 64", "channels 0..11 and 32..39" */
} qd_where_set;

typedef struct {
    int64_t len; /* N; 0: the view has no such axis */
    int n_top;   /* entries in top, by share descending, then index */
    qd_where_entry top[QD_WHERE_TOP];
    qd_where_set set;  /* what carries most (see above); size 0: spread along this axis */
    qd_where_set peak; /* when set is the hot set and the core is at most 4 indices and
                                          fewer: the core (the seed: positions >= 64, token 64 alone 100 %);
                                          else size 0 */
} qd_where_axis;

typedef struct {
    int valid; /* 0: nothing computed */
    int ndim;  /* the view: 1..3 */
    int64_t shape[3];
    double energy;                   /* sum (test - ref)^2 over the finite pairs */
    double ref_energy;               /* sum ref^2 over the same pairs */
    int64_t nonfinite;               /* non-finite mismatches */
    int by_nonfinite;                /* 1: shares and sets are of the mismatches (nonfinite > 0) */
    qd_where_axis axis[QD_NUM_AXES]; /* QD_AXIS_*; len 0 where the view has none */
    char summary[384];               /* the sentence, e.g. "heads 1 and 2 carry 100 % of the error" */
} qd_where;

/* Bytes of scratch qd_localise needs for this tap: O(T + H + C). */
size_t qd_localise_scratch_size(int ndim, const int64_t *shape, int head_dim);

/* Fills w for test and ref (shape) row-major float32. head_dim > 0 views a 2-D (T, H*head_dim) tap as
 * (T, H, head_dim) (ignored unless ndim == 2 and head_dim divides shape[1]); 0 takes the shape as it is.
 * scratch: at least qd_localise_scratch_size bytes, any alignment malloc gives. No other memory is used,
 * nothing is kept. Returns 0, or -1 (w invalid) for ndim outside 1..3, a negative dimension or too small
 * a scratch. */
int qd_localise(const float *test, const float *ref, int ndim, const int64_t *shape, int head_dim, void *scratch,
                size_t scratch_bytes, qd_where *w);

/* "token", "head", "channel". */
const char *qd_where_axis_name(int axis);

/* The top-offender line of a report: the first entry of each axis, e.g.
 * "token 64 100 % (rms error 4.7e+27 vs 1.1); head 1 100 % (...); channel 26 10 % (...)". */
int qd_where_top_line(const qd_where *w, char *buf, size_t n);

#endif
