/* fuzz_tolerances.c: libFuzzer target on the tolerance file reader (qd_tolerances.h). Each input is a
 * tolerance file:
 *   1. qd_tolerances_load; a refusal is a one-line message (fuzz_util.h).
 *   2. What it accepts: every tap's tolerance (free-running and teacher-forced) in every layer it names
 *      and one past, is finite and >= 0, as the loader promises; qd_tolerances_check_fit against the
 *      file's own pair and layers (passes) and against one layer fewer (refuses or passes, one line).
 *   3. The round trip: qd_tolerances_write, then qd_tolerances_load of what it wrote, must succeed and
 *      give back every looked-up value to 15 significant digits (the precision the writer keeps).
 * Seeds: corpus/tolerances/ (tests/data, the TOLERANCES.md example, hand-made edge cases). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "qd_tolerances.h"

static int close15(double a, double b) { return a == b || fabs(a - b) <= 1e-14 * fmax(fabs(a), fabs(b)); }

static void check_tol(qd_tol x) {
    fuzz_check(isfinite(x.rel_l2) && x.rel_l2 >= 0 && isfinite(x.atol) && x.atol >= 0);
    fuzz_check(isfinite(x.rtol) && x.rtol >= 0);
}

static const char *tap_name(int id) {
    return id < QD_NUM_LAYER_TAPS ? qd_layer_tap_name(id) : qd_model_tap_name(id - QD_NUM_LAYER_TAPS);
}

/* Every (layer, tap) lookup of a against b (b NULL: only a's own checks). */
static void walk(const qd_tolerances *a, const qd_tolerances *b) {
    int nl = a->n_layers;
    if (a->isolated && a->isolated->n_layers > nl) nl = a->isolated->n_layers;
    for (int layer = -1; layer <= nl; layer++)
        for (int id = 0; id < QD_NUM_TAP_IDS; id++) {
            const char *tap = tap_name(id);
            qd_tol x = qd_tolerances_lookup(a, layer, tap), y = qd_tolerances_lookup_isolated(a, layer, tap);
            check_tol(x);
            check_tol(y);
            if (!b) continue;
            qd_tol u = qd_tolerances_lookup(b, layer, tap), v = qd_tolerances_lookup_isolated(b, layer, tap);
            fuzz_check(close15(x.rel_l2, u.rel_l2) && close15(x.atol, u.atol) && close15(x.rtol, u.rtol));
            fuzz_check(close15(y.rel_l2, v.rel_l2) && close15(y.atol, v.atol) && close15(y.rtol, v.rtol));
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_put("tolerances", "tol.json", data, size);
    qd_tolerances t;
    qd_err e;
    qd_err_clear(&e);
    int rc = qd_tolerances_load(path, &t, &e);
    if (rc != QD_OK) {
        fuzz_check_refusal(rc, &e);
        return 0;
    }
    walk(&t, NULL);
    int nl = t.n_layers;
    if (t.isolated && t.isolated->n_layers > nl) nl = t.isolated->n_layers;
    qd_err_clear(&e);
    rc = qd_tolerances_check_fit(&t, "test", t.prec_test, "ref", t.prec_ref, nl > 0 ? nl : 1, &e);
    fuzz_check(rc == QD_OK);
    if (nl > 0 && (rc = qd_tolerances_check_fit(&t, "test", t.prec_test, "ref", t.prec_ref, nl - 1, &e)) != QD_OK)
        fuzz_check_refusal(rc, &e);

    const char *out = fuzz_path("tolerances", "written.json");
    qd_err_clear(&e);
    rc = qd_tolerances_write(out, &t, &e);
    if (rc != QD_OK) {
        fprintf(stderr, "fuzz_tolerances: writing an accepted file failed: %s\n", e.msg);
        abort();
    }
    qd_tolerances back;
    rc = qd_tolerances_load(out, &back, &e);
    if (rc != QD_OK) {
        fprintf(stderr, "fuzz_tolerances: what the writer wrote does not load: %s\n", e.msg);
        abort();
    }
    fuzz_check(strcmp(back.prec_test, t.prec_test) == 0 && strcmp(back.prec_ref, t.prec_ref) == 0);
    fuzz_check(close15(back.blowup.blowup_ratio, t.blowup.blowup_ratio));
    fuzz_check(close15(back.blowup.growth_factor, t.blowup.growth_factor));
    fuzz_check(close15(back.blowup.growth_floor, t.blowup.growth_floor) && close15(back.margin, t.margin));
    walk(&t, &back);
    qd_tolerances_free(&back);
    qd_tolerances_free(&t);
    return 0;
}
