/* qd_metrics.h: how far one tap of the backend under test is from the same tap of the reference side,
 * and the verdict on that distance. The comparator's numerical core: no I/O, no allocation.
 *
 * The same field names are used in code, HDF5, JSON and docs (docs/TOLERANCES.md): one list,
 * QD_METRICS_FIELDS below, gives them to all.
 *
 * Element classes. Every element of each side is finite, NaN, +Inf or -Inf. The error metrics (max_abs,
 * max_rel, rel_l2, cosine, sqnr_db) are taken over the elements where BOTH sides are finite; the others
 * are counted (nan_test, posinf_ref, ...), and any disagreement in class fails the verdict. When no
 * element is finite on both sides (n > 0), the error metrics are NAN: "nothing could be compared".
 * An empty tensor (n == 0) compares as identical. */
#ifndef QD_METRICS_H
#define QD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "qd_util.h"

struct json_t;

/* QD_METRICS_FIELDS(M, J, AT): every field of qd_metrics, one entry each, in the order of the struct, of
 * JSON (qd_metrics_to_json) and of the HDF5 table /diff/<A>-vs-<B>/metrics (docs/SCHEMA.md). The struct
 * below, the JSON writer, and the table's record, compound type and copy (reports/) are expansions of
 * this list; only qd_metrics_compute is written by hand per field. A new plain scalar metric is one M line
 * here plus its computation in metrics.c.
 *
 *   M(name, ctype, h5type, json, doc)  in the struct, in JSON and in the HDF5 table
 *   J(name, ctype, h5type, json, doc)  in the struct and in JSON only (h5type: its type should it join the
 *                                      table, which would change the dump's content)
 *   AT(value, index)                   a metric with a place. value and index are M/J entries; the place
 *                                      is index decoded along the tap's shape: in the struct int ndim and
 *                                      int64_t coord[3] after index, in JSON "coord" (ndim integers) after
 *                                      index, in the table token, head, channel (int64, -1 where the shape
 *                                      has no such axis) after value. The table's record stores those three
 *                                      before value: schema v1's layout, whose offsets are part of the
 *                                      file's type.
 *   ctype   int64_t or double
 *   h5type  its HDF5 type: a name from hdf5.h, expanded only where hdf5.h is included
 *   json    what writes it: json_integer, or qd_json_real (a double; non-finite as a string)
 *   doc     what it is, one line
 *
 * coord: (T, C) -> token, channel; (T, H, D) -> token, head, channel; (C) -> channel; unused: -1.
 * qd_metrics_token/head/channel read them by meaning.
 *
 * max_rel = max |test - ref| / max(|ref|, rel_floor), rel_floor = max(1e-6 * max_mag_ref, 1e-30). Without
 * the floor, one reference element that happens to be 1e-12 (a near-cancelled sum) would turn an ordinary
 * 1e-9 error into a relative error of 1e3 and hide every meaningful figure; with it, elements more than a
 * million times smaller than the tap's largest are judged against that millionth. 1e-30 keeps the
 * division defined when the reference is all zero.
 *
 * The counts and magnitudes are per side: the non-finite counts over all elements, the magnitudes over a
 * side's finite elements (whatever the other side holds there). */
/* clang-format off: one field per line, aligned as a table */
#define QD_METRICS_FIELDS(M, J, AT)                                                                             \
    M(n, int64_t, H5T_NATIVE_INT64, json_integer, "prod(shape): elements on each side")                         \
    J(n_finite, int64_t, H5T_NATIVE_INT64, json_integer,                                                        \
      "elements finite on both sides: what the error metrics cover")                                            \
    AT(M(max_abs, double, H5T_NATIVE_DOUBLE, qd_json_real, "the largest |test - ref|; NAN when n_finite == 0"), \
       J(max_abs_index, int64_t, H5T_NATIVE_INT64, json_integer,                                                \
         "flat row-major index of the first element reaching max_abs; -1 if none"))                             \
    M(test_at, double, H5T_NATIVE_DOUBLE, qd_json_real, "test[max_abs_index]; NAN if none")                     \
    M(ref_at, double, H5T_NATIVE_DOUBLE, qd_json_real, "ref[max_abs_index]; NAN if none")                       \
    M(max_rel, double, H5T_NATIVE_DOUBLE, qd_json_real, "max |test - ref| / max(|ref|, rel_floor): see above")  \
    J(rel_floor, double, H5T_NATIVE_DOUBLE, qd_json_real, "the floor max_rel used")                             \
    M(rel_l2, double, H5T_NATIVE_DOUBLE, qd_json_real,                                                          \
      "||test - ref|| / ||ref||; ||test - ref|| when ||ref|| == 0, since no relative scale exists")             \
    M(cosine, double, H5T_NATIVE_DOUBLE, qd_json_real,                                                          \
      "<test, ref> / (||test|| ||ref||) in [-1, 1]; 1 when both are zero, 0 when exactly one is")               \
    M(sqnr_db, double, H5T_NATIVE_DOUBLE, qd_json_real,                                                         \
      "10 log10(sum ref^2 / sum (test-ref)^2); INFINITY when identical, -INFINITY when ref is zero and test "   \
      "is not")                                                                                                 \
    M(nan_test, int64_t, H5T_NATIVE_INT64, json_integer, "NaN elements of test")                                \
    M(posinf_test, int64_t, H5T_NATIVE_INT64, json_integer, "+Inf elements of test")                            \
    M(neginf_test, int64_t, H5T_NATIVE_INT64, json_integer, "-Inf elements of test")                            \
    M(nan_ref, int64_t, H5T_NATIVE_INT64, json_integer, "NaN elements of ref")                                  \
    M(posinf_ref, int64_t, H5T_NATIVE_INT64, json_integer, "+Inf elements of ref")                              \
    M(neginf_ref, int64_t, H5T_NATIVE_INT64, json_integer, "-Inf elements of ref")                              \
    J(nonfinite_mismatch, int64_t, H5T_NATIVE_INT64, json_integer,                                              \
      "elements whose class (finite/NaN/+Inf/-Inf) differs between the sides: a NaN that moved even when "      \
      "the counts agree")                                                                                       \
    M(max_mag_test, double, H5T_NATIVE_DOUBLE, qd_json_real, "max |test| over test's finite elements")          \
    M(max_mag_ref, double, H5T_NATIVE_DOUBLE, qd_json_real, "max |ref| over ref's finite elements")             \
    M(mag_ratio, double, H5T_NATIVE_DOUBLE, qd_json_real, "max_mag_test / max(max_mag_ref, 1e-30)")
/* clang-format on */

#define QD_METRICS_MEMBER_(name, ctype, h5type, json, doc) ctype name;
#define QD_METRICS_AT_(value, index) \
    value index int ndim;            \
    int64_t coord[3];
typedef struct {
    QD_METRICS_FIELDS(QD_METRICS_MEMBER_, QD_METRICS_MEMBER_, QD_METRICS_AT_)
} qd_metrics;
#undef QD_METRICS_MEMBER_
#undef QD_METRICS_AT_

/* Computes every field of m for n = prod(shape) elements. test: the backend under test; ref: the
 * reference side; both (shape) row-major float32. All arithmetic is in double. One pass over the data
 * and no allocation (a second pass over the data happens only in the rare case described in metrics.c,
 * for max_rel alone). Returns QD_OK, or QD_EINPUT when ndim is not 1..3 or a dimension is negative (m is
 * then zeroed). */
int qd_metrics_compute(const float *test, const float *ref, int ndim, const int64_t *shape, qd_metrics *m);

/* The coordinates of max_abs by meaning; -1 when the shape has no such axis or there is no element. */
int64_t qd_metrics_token(const qd_metrics *m);
int64_t qd_metrics_head(const qd_metrics *m);
int64_t qd_metrics_channel(const qd_metrics *m);

/* "token 3, head 2, channel 17" (or "token 3, channel 17", or "none"). Returns snprintf's count. */
int qd_metrics_where(const qd_metrics *m, char *buf, size_t n);

/* JSON has no Inf or NaN, and jansson refuses to build them (json_real(INFINITY) is NULL). Every JSON
 * writer of this project writes a double through this: a finite value as a number, and the non-finite
 * ones as the strings "inf", "-inf" and "nan". Returns a new reference. */
struct json_t *qd_json_real(double x);

/* Every field of m under its own name, in the order of QD_METRICS_FIELDS; coord as an array of ndim
 * integers. New reference. */
struct json_t *qd_metrics_to_json(const qd_metrics *m);

// ----------------------------------------------------------------------------
// the verdict

/* A tap passes when the error is within these. All three are >= 0. */
typedef struct {
    double rel_l2; /* (b) fails when rel_l2 > rel_l2 */
    double atol;   /* (c) fails when max_abs > atol + rtol * max_mag_ref */
    double rtol;
} qd_tol;

/* The blow-up checks, which do not depend on the tap's tolerance. */
typedef struct {
    double blowup_ratio;  /* (d) mag_ratio >= blowup_ratio: the magnitude exploded vs the reference */
    double growth_factor; /* (e) rel_l2 / previous layer's rel_l2 of the same tap >= growth_factor ... */
    double growth_floor;  /* ... judged only when that previous rel_l2 > growth_floor: growth out of an
                             exactly-zero or noise-level error is not a divergence (layer 0's errors are
                             often one rounding, layer 1's the whole accumulated difference) */
} qd_blowup;

/* Verdict bits. A tap may carry several. */
enum {
    QD_V_NONFINITE = 1u << 0,     /* (a) a NaN / +Inf / -Inf count differs, or the classes differ in place */
    QD_V_REL_L2 = 1u << 1,        /* (b) rel_l2 > tol.rel_l2 (or NAN: nothing finite to compare) */
    QD_V_MAX_ABS = 1u << 2,       /* (c) max_abs > atol + rtol * max_mag_ref (or NAN) */
    QD_V_BLOWUP_MAG = 1u << 3,    /* (d) */
    QD_V_BLOWUP_GROWTH = 1u << 4, /* (e) */
    QD_V_COLLAPSE = 1u << 5,      /* the test side's finite elements are all exactly zero while the
                                     reference is not: the signature of an fp32 overflow upstream (a
                                     finite 1e29 squared overflows the next RMSNorm's sum of squares,
                                     rsqrt gives 0, everything after is zero, no NaN/Inf anywhere) */
    QD_V_LOCAL = 1u << 6,         /* the op's local error, replayed from the engine's own inputs, exceeds
                                     threshold x its noise floor (compare/qd_replay.h) */
};
#define QD_V_ALL 0x7fu

/* Judges m. prev_rel_l2: the same tap's rel_l2 in the previous layer, or NAN when there is none (layer 0,
 * model-level taps); (e) is skipped unless it is finite and > b->growth_floor. Returns the mask; 0 = pass. */
unsigned qd_verdict(const qd_metrics *m, const qd_tol *tol, const qd_blowup *b, double prev_rel_l2);

/* 1 when the mask fails the tap. Every flag fails it, blow-up and collapse included: they are the
 * divergences this tool exists to find. */
int qd_verdict_fails(unsigned mask);

/* Short name of one flag, as written in JSON: "nonfinite", "rel_l2", "max_abs", "blowup_mag",
 * "blowup_growth", "collapse", "local"; "?" otherwise. */
const char *qd_verdict_flag_name(unsigned flag);

/* The fewest significant digits, at least min_digits, with which "%.*g" of x and of bound keep x's
 * relation to bound: "rel_l2 0.1 > 0.1" hides 0.1008 > 0.1, 3 digits show "0.101 > 0.1". Equal or
 * non-finite values: min_digits. The shared rule of every verdict that prints a value beside its bound. */
int qd_distinct_digits(double x, double bound, int min_digits);

/* One line saying why, most telling first, reasons joined by "; ", e.g.
 *   "non-finite: 4 NaN vs 0"   "collapsed to zero (ref max 3.1)"
 *   "blow-up: max |test| 1e29 vs max |ref| 3.1"   "rel_l2 3.2e-2 > 2e-2"
 *   "max_abs 5e-1 > 1.3e-1 at token 3, head 2, channel 17"   "error grew 25x since the previous layer"
 * "ok" for mask 0. tol, b and prev_rel_l2 are those the mask was computed with. Returns snprintf's count. */
int qd_verdict_reason(unsigned mask, const qd_metrics *m, const qd_tol *tol, const qd_blowup *b, double prev_rel_l2,
                      char *buf, size_t n);

#endif
