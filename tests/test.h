// test.h: the suite's small test harness. A test file defines functions
// `static void test_x(void)`, calls RUN(test_x) for each in main, and ends
// with `return test_summary();`, which prints "N passed, N failed".
// tests/run.sh adds the counts of every test program into one total.
#ifndef HAX_TEST_H
#define HAX_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed, test_failed, test_current_failed;
static const char *test_current_name;

// Fails the current test (and goes on, so one run shows every problem).
#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (!(cond)) {                                                            \
            test_current_failed = 1;                                              \
            fprintf(stderr, "  %s:%d: %s: check failed: %s: ", __FILE__, __LINE__, \
                    test_current_name, #cond);                                    \
            fprintf(stderr, __VA_ARGS__);                                         \
            fprintf(stderr, "\n");                                                \
        }                                                                         \
    } while (0)

#define RUN(fn)                                                         \
    do {                                                                \
        test_current_name = #fn;                                        \
        test_current_failed = 0;                                        \
        fn();                                                           \
        if (test_current_failed) {                                      \
            test_failed++;                                              \
            printf("FAIL %s\n", #fn);                                   \
        } else {                                                        \
            test_passed++;                                              \
            printf("ok   %s\n", #fn);                                   \
        }                                                               \
        fflush(stdout);                                                 \
    } while (0)

// A float's bit pattern and back.
static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// Distance in bf16 steps between two bf16 values (their low 16 bits zero):
// the number of bf16 values from a to b, counted through zero when the signs
// differ (0 and -0 are one value). NaNs are far from everything.
static inline long bf16_ulps(float a, float b) {
    if (a != a || b != b) return a != a && b != b ? 0 : 1L << 20;
    uint32_t ua = f32_bits(a) >> 16, ub = f32_bits(b) >> 16;
    long ma = (long)(ua & 0x7fffu), mb = (long)(ub & 0x7fffu);
    long sa = ua & 0x8000u ? -ma : ma, sb = ub & 0x8000u ? -mb : mb;
    return sa > sb ? sa - sb : sb - sa;
}

// bf16-pure results computed two ways (CPU and GPU op, say): both must hold
// bf16 values only; the elements that differ, and those more than one bf16
// step apart, are counted, printed and bounded by the fractions max_diff and
// max_far of n (a flipped rounding of one op moves its result by one step;
// an op after it, summing that element with others of the opposite sign,
// may move further).
static inline void check_bf16_close(const char *what, const float *got, const float *want, size_t n,
                                    double max_diff, double max_far) {
    size_t diff = 0, far = 0, not16 = 0;
    long worst = 0;
    for (size_t i = 0; i < n; i++) {
        not16 += (got[i] == got[i] && (f32_bits(got[i]) & 0xffffu)) ||
                 (want[i] == want[i] && (f32_bits(want[i]) & 0xffffu));
        long u = bf16_ulps(got[i], want[i]);
        diff += u != 0, far += u > 1;
        if (u > worst) worst = u;
    }
    printf("    %-34s bf16: %zu of %zu differ, %zu by > 1 step (worst %ld)\n", what, diff, n, far, worst);
    CHECK(not16 == 0, "%s: %zu values are not bf16 values", what, not16);
    CHECK(diff <= max_diff * n, "%s: %zu of %zu elements differ, expected at most %.3g of them", what, diff, n,
          max_diff);
    CHECK(far <= max_far * n, "%s: %zu of %zu elements differ by more than one bf16 step, expected at most %.3g",
          what, far, n, max_far);
}

// The golden files' folder: $HAX_GOLDEN, else tests/golden.
static inline const char *test_golden_dir(void) {
    const char *d = getenv("HAX_GOLDEN");
    return d ? d : "tests/golden";
}

// 1 when s ends with suffix.
static inline int test_ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

// Removes a test's temporary folder and everything in it; 1 when that worked.
static inline int test_remove_dir(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0;
}

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

// Normwise relative error ||a - b|| / ||b|| (absolute error when ||b|| = 0).
static inline double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

// Largest |a - b| / max|b| (the golden README's metric).
static inline double max_rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > num) num = d;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return den > 0 ? num / den : num;
}

// Central finite differences of a scalar function of x[0..n), in double,
// against an analytic gradient. loss(ctx) reads x. Checks at most max_probe
// entries spread over x. Returns the largest |fd - analytic| / (|fd| + |analytic| + floor).
typedef double (*test_loss_fn)(void *ctx);
static inline double fd_check(float *x, size_t n, const float *grad, test_loss_fn loss, void *ctx,
                              float h, size_t max_probe, double floor) {
    double worst = 0;
    size_t stride = n > max_probe ? n / max_probe : 1;
    for (size_t i = 0; i < n; i += stride) {
        float saved = x[i];
        x[i] = saved + h;
        double lp = loss(ctx);
        x[i] = saved - h;
        double lm = loss(ctx);
        x[i] = saved;
        double fd = (lp - lm) / (2.0 * (double)h);
        double err = fabs(fd - grad[i]) / (fabs(fd) + fabs(grad[i]) + floor);
        if (err > worst) worst = err;
    }
    return worst;
}

// Deterministic pseudo-random fill for test inputs (not the suite's rng).
static inline void test_fill(float *x, size_t n, unsigned seed, float scale) {
    unsigned s = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = scale * ((float)(s >> 8) / 16777216.0f * 2.0f - 1.0f);
    }
}

#endif
