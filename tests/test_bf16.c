/* test_bf16.c: qd_bf16.h conversions: bf16 and IEEE half, round-to-nearest-even, NaN, Inf, subnormals.
 * Hand-picked bit patterns pin the rules; random sweeps compare against independent oracles (a
 * nearest-candidate search in double for bf16, and the compiler's _Float16 conversion for half). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "qd_bf16.h"

static float f_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t u_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng_u32(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

// ----------------------------------------------------------------------------
// bf16

static void test_bf16_round_to_nearest_even(void **state) {
    (void)state;
    /* bf16 keeps the top 16 bits; the low 16 bits decide the rounding, 0x8000 is the exact tie. */
    assert_int_equal(qd_f32_to_bf16(f_of(0x3f800000u)), 0x3f80); /* 1.0 exact */
    assert_int_equal(qd_f32_to_bf16(f_of(0x3f808000u)), 0x3f80); /* tie, 0x3f80 even: down */
    assert_int_equal(qd_f32_to_bf16(f_of(0x3f818000u)), 0x3f82); /* tie, 0x3f81 odd: up to even */
    assert_int_equal(qd_f32_to_bf16(f_of(0x3f807fffu)), 0x3f80); /* just below the tie: down */
    assert_int_equal(qd_f32_to_bf16(f_of(0x3f808001u)), 0x3f81); /* just above the tie: up */
    assert_int_equal(qd_f32_to_bf16(f_of(0xbf808000u)), 0xbf80); /* negative tie, even: toward 0 */
    assert_int_equal(qd_f32_to_bf16(f_of(0xbf818000u)), 0xbf82); /* negative tie, odd: away from 0 */
    /* 1 + 2^-8 is the tie between 1 and 1 + 2^-7 */
    assert_true(qd_round_bf16(1.0f + 0x1p-8f) == 1.0f);
    assert_true(qd_round_bf16(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);
    /* a carry out of the mantissa bumps the exponent: 0x3fffffff -> 2.0 */
    assert_int_equal(qd_f32_to_bf16(f_of(0x3fffffffu)), 0x4000);
}

static void test_bf16_nan_inf_overflow(void **state) {
    (void)state;
    /* NaN whose payload lives only in the low 16 bits: truncation would make it Inf */
    uint16_t n = qd_f32_to_bf16(f_of(0x7f800001u));
    assert_true(isnan(qd_bf16_to_f32(n)));
    assert_int_equal(n & 0x0040, 0x0040); /* quiet */
    assert_true(isnan(qd_bf16_to_f32(qd_f32_to_bf16(f_of(0xff800001u)))));
    assert_true(isnan(qd_round_bf16(NAN)));
    assert_int_equal(qd_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(qd_f32_to_bf16(-INFINITY), 0xff80);
    /* FLT_MAX is above bf16's largest finite value (0x7f7f) by more than half an ulp: Inf */
    assert_int_equal(qd_f32_to_bf16(f_of(0x7f7fffffu)), 0x7f80);
    assert_int_equal(qd_f32_to_bf16(f_of(0xff7fffffu)), 0xff80);
    assert_int_equal(qd_f32_to_bf16(f_of(0x7f7f7fffu)), 0x7f7f); /* below the tie: largest finite */
    assert_int_equal(qd_f32_to_bf16(f_of(0x7f7f8000u)), 0x7f80); /* tie, odd: up to even, i.e. Inf */
    /* signed zero and subnormals keep their bits */
    assert_int_equal(qd_f32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(qd_f32_to_bf16(f_of(0x00010000u)), 0x0001);
}

static void test_bf16_upcast_exact(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = qd_bf16_to_f32((uint16_t)h);
        assert_int_equal(u_of(f), h << 16);
        if (!isnan(f)) assert_int_equal(qd_f32_to_bf16(f), h);
        else assert_true(isnan(qd_bf16_to_f32(qd_f32_to_bf16(f))));
    }
}

/* Oracle: the nearer of the two bf16 neighbours of f, measured in double; ties go to the even one.
 * Past the largest finite value the upper neighbour is Inf, which IEEE rounding treats as 2^128. */
static uint16_t bf16_oracle(float f) {
    uint32_t lo = u_of(f) & 0xffff0000u; /* truncation: the neighbour toward zero */
    uint32_t hi = lo + 0x10000u;         /* the neighbour away from zero */
    double a = fabs((double)f);
    double dlo = a - fabs((double)f_of(lo));
    double dhi = (isinf(f_of(hi)) ? 0x1p128 : fabs((double)f_of(hi))) - a;
    if (dlo < dhi) return (uint16_t)(lo >> 16);
    if (dhi < dlo) return (uint16_t)(hi >> 16);
    return (uint16_t)(((lo >> 16) & 1u) ? hi >> 16 : lo >> 16);
}

static void test_bf16_random_vs_oracle(void **state) {
    (void)state;
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = rng_u32();
        float f = f_of(u);
        if (isnan(f) || isinf(f)) continue;
        uint16_t got = qd_f32_to_bf16(f), want = bf16_oracle(f);
        if (got != want) fail_msg("bf16(0x%08x) = 0x%04x, oracle 0x%04x", u, got, want);
    }
}

// ----------------------------------------------------------------------------
// IEEE half

static void test_f16_values(void **state) {
    (void)state;
    assert_true(qd_f16_to_f32(0x0001) == 0x1p-24f);        /* smallest subnormal */
    assert_true(qd_f16_to_f32(0x03ff) == 1023 * 0x1p-24f); /* largest subnormal */
    assert_true(qd_f16_to_f32(0x0400) == 0x1p-14f);        /* smallest normal */
    assert_true(qd_f16_to_f32(0x3c00) == 1.0f);
    assert_true(qd_f16_to_f32(0xc000) == -2.0f);
    assert_true(qd_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(qd_f16_to_f32(0x8001) == -0x1p-24f);
    assert_true(isinf(qd_f16_to_f32(0x7c00)) && qd_f16_to_f32(0x7c00) > 0);
    assert_true(isinf(qd_f16_to_f32(0xfc00)) && qd_f16_to_f32(0xfc00) < 0);
    assert_true(isnan(qd_f16_to_f32(0x7e00)));
    assert_true(isnan(qd_f16_to_f32(0x7c01)));
    assert_int_equal(u_of(qd_f16_to_f32(0x8000)), 0x80000000u); /* -0 */
}

static void test_f16_rounding(void **state) {
    (void)state;
    assert_int_equal(qd_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(qd_f32_to_f16(65519.0f), 0x7bff); /* below the tie with 65536: down */
    assert_int_equal(qd_f32_to_f16(65520.0f), 0x7c00); /* tie, 0x7bff odd: up, i.e. Inf */
    assert_int_equal(qd_f32_to_f16(-65520.0f), 0xfc00);
    assert_int_equal(qd_f32_to_f16(1e6f), 0x7c00);
    assert_int_equal(qd_f32_to_f16(INFINITY), 0x7c00);
    assert_true(isnan(qd_f16_to_f32(qd_f32_to_f16(NAN))));
    assert_true(isnan(qd_f16_to_f32(qd_f32_to_f16(f_of(0x7f800001u))))); /* payload below f16's bits */
    /* normal ties: 1 + 2^-11 is halfway between 1 (0x3c00, even) and 1 + 2^-10 (0x3c01) */
    assert_int_equal(qd_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    assert_int_equal(qd_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02); /* between 0x3c01 (odd), 0x3c02 */
    assert_int_equal(qd_f32_to_f16(-(1.0f + 3 * 0x1p-11f)), 0xbc02);
    assert_int_equal(qd_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01); /* above the tie */
    /* subnormals (unit 2^-24) */
    assert_int_equal(qd_f32_to_f16(0x1p-24f), 0x0001);
    assert_int_equal(qd_f32_to_f16(0x1p-25f), 0x0000); /* tie between 0 and 1: even, 0 */
    assert_int_equal(qd_f32_to_f16(-0x1p-25f), 0x8000);
    assert_int_equal(qd_f32_to_f16(0x1.000002p-25f), 0x0001); /* above the tie */
    assert_int_equal(qd_f32_to_f16(0x1p-26f), 0x0000);
    assert_int_equal(qd_f32_to_f16(3 * 0x1p-25f), 0x0002); /* 1.5 units: tie, to 2 */
    assert_int_equal(qd_f32_to_f16(5 * 0x1p-25f), 0x0002); /* 2.5 units: tie, to 2 */
    assert_int_equal(qd_f32_to_f16(1023 * 0x1p-24f), 0x03ff);
    assert_int_equal(qd_f32_to_f16(1023.5f * 0x1p-24f), 0x0400); /* tie, odd: up into the normals */
    assert_int_equal(qd_f32_to_f16(0x1p-14f), 0x0400);
    assert_int_equal(qd_f32_to_f16(-0.0f), 0x8000);
}

static void test_f16_roundtrip_all(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = qd_f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        assert_int_equal(qd_f32_to_f16(f), h);
    }
}

#ifdef __FLT16_MAX__
/* The compiler's float -> _Float16 conversion (correctly rounded, RNE) as an independent oracle. */
static void test_f16_random_vs_compiler(void **state) {
    (void)state;
    for (int i = 0; i < 4000000; i++) {
        uint32_t u = rng_u32();
        /* half the samples in f16's range, where all the interesting rounding happens */
        if (i & 1) u = (u & 0x80000000u) | (0x33000000u + (u % (0x47800000u - 0x33000000u)));
        float f = f_of(u);
        if (isnan(f)) continue;
        _Float16 h = (_Float16)f;
        uint16_t want;
        memcpy(&want, &h, 2);
        uint16_t got = qd_f32_to_f16(f);
        if (got != want) fail_msg("f16(0x%08x) = 0x%04x, compiler 0x%04x", u, got, want);
    }
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_round_to_nearest_even),
        cmocka_unit_test(test_bf16_nan_inf_overflow),
        cmocka_unit_test(test_bf16_upcast_exact),
        cmocka_unit_test(test_bf16_random_vs_oracle),
        cmocka_unit_test(test_f16_values),
        cmocka_unit_test(test_f16_rounding),
        cmocka_unit_test(test_f16_roundtrip_all),
#ifdef __FLT16_MAX__
        cmocka_unit_test(test_f16_random_vs_compiler),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
