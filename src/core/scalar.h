// src/core/scalar.h: the scalar math that both the host (C) and the device
// (CUDA) use, written once: sigmoid, silu and their derivatives, softplus,
// and the ranking target and BCE term of the key-selection loss
// (MODEL.md §5.5). HAX_HD marks them __host__ __device__ under nvcc; in C
// they are plain static inline functions. The expressions are the ones each
// side had before (float ops in float, the loss terms in double), so results
// stay bit for bit what they were; nvcc contracts a*b+c into an FMA on the
// device as it did in the device copies.
#ifndef HAX_CORE_SCALAR_H
#define HAX_CORE_SCALAR_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define HAX_HD __host__ __device__
#define HAX_INLINE static __forceinline__
#else
#define HAX_HD
#define HAX_INLINE static inline
#endif

HAX_HD HAX_INLINE float hax_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
HAX_HD HAX_INLINE float hax_silu(float x) { return x / (1.0f + expf(-x)); }
// d silu(x)/dx = σ(x)·(1 + x·(1 − σ(x)))
HAX_HD HAX_INLINE float hax_dsilu(float x) {
    float s = hax_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}
// softplus with PyTorch's threshold form: x itself when x > 20.
HAX_HD HAX_INLINE float hax_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
// Its derivative, consistent with the threshold (1 when x > 20).
HAX_HD HAX_INLINE float hax_dsoftplus(float x) { return x > 20.0f ? 1.0f : hax_sigmoid(x); }

// bf16 emulation (train.precision bf16 / bf16-pure, MODEL.md §0 "Precision"):
// x rounded to the nearest bfloat16 value, ties to even, returned as a float
// (its low 16 bits zero). Subnormals round like any other value (no flush),
// ±Inf stay, values at or above the halfway point past bf16's largest finite
// value (3.3895e38) become ±Inf, and a NaN stays a NaN (quiet, low bits
// cleared, as torch's float->bf16 conversion does).
HAX_HD HAX_INLINE float hax_bf16_round(float x) {
    union {
        float f;
        uint32_t u;
    } v;
    v.f = x;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) {
        v.u = (v.u | 0x00400000u) & 0xffff0000u;
        return v.f;
    }
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    v.u &= 0xffff0000u;
    return v.f;
}

// The CE gradient's normaliser, 1/N for N scored positions. bf16-pure: torch's
// nll_loss keeps N in a bf16 tensor (total_weight) and its backward divides the
// bf16 gradient 1 by it in bf16, so the reference's scale is bf16(1 / bf16(N)):
// 0.2% below 1/N at N = 319, up to about 0.4% for N in [512, 1024).
HAX_HD HAX_INLINE float hax_ce_grad_scale(int bf16_pure, double n) {
    if (n <= 0) return 0.0f;
    if (!bf16_pure) return (float)(1.0 / n);
    return hax_bf16_round(1.0f / hax_bf16_round((float)n));
}

// ---- the normal draw of the LSH hash matrices (Box-Muller), the same bits on
// the host and the device. libm's log / cos (glibc) and CUDA's may differ in a
// last bit, so both sides use these: every double operation rounds once, in
// the same order (HAX_D*: explicit round-to-nearest intrinsics on the device,
// where nvcc would fuse a*b+c; plain operators on the host, which builds with
// -std=c11, i.e. without contraction, and SSE2 doubles). Accurate to a few
// double ulps, so the float draws equal libm's (rng_normal) but for a rare
// last-bit case.
#ifdef __CUDA_ARCH__
#define HAX_DADD(a, b) __dadd_rn(a, b)
#define HAX_DSUB(a, b) __dsub_rn(a, b)
#define HAX_DMUL(a, b) __dmul_rn(a, b)
#define HAX_DDIV(a, b) __ddiv_rn(a, b)
#define HAX_DSQRT(a) __dsqrt_rn(a)
#else
#define HAX_DADD(a, b) ((a) + (b))
#define HAX_DSUB(a, b) ((a) - (b))
#define HAX_DMUL(a, b) ((a) * (b))
#define HAX_DDIV(a, b) ((a) / (b))
#define HAX_DSQRT(a) sqrt(a)
#endif

// log x for a positive normal x: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172: 13 terms of the series.
HAX_HD HAX_INLINE double hax_log_portable(double x) {
    int e;
    double m = frexp(x, &e);                                  // [0.5, 1), exact
    if (m < 0.70710678118654752440) m = HAX_DMUL(m, 2.0), e--;  // exact
    double s = HAX_DDIV(HAX_DSUB(m, 1.0), HAX_DADD(m, 1.0)), s2 = HAX_DMUL(s, s), p = 0.0;
    for (int k = 12; k >= 0; k--) p = HAX_DADD(HAX_DDIV(1.0, (double)(2 * k + 1)), HAX_DMUL(s2, p));
    return HAX_DADD(HAX_DMUL((double)e, 0.69314718055994530942), HAX_DMUL(HAX_DMUL(2.0, s), p));
}

// cos(2 pi u) for u in [0, 1): reduced exactly (Sterbenz) to an angle in
// [0, pi/4] of a cosine or a sine, then 10 nested Taylor factors.
HAX_HD HAX_INLINE double hax_cos2pi_portable(double u) {
    double a = fabs(u > 0.5 ? HAX_DSUB(u, 1.0) : u), sign = 1.0;  // cos is even: a in [0, 1/2]
    if (a > 0.25) a = HAX_DSUB(0.5, a), sign = -1.0;               // cos 2pi a = -cos 2pi (1/2 - a)
    int use_sin = a > 0.125;
    if (use_sin) a = HAX_DSUB(0.25, a);                             // cos 2pi a = sin 2pi (1/4 - a)
    double th = HAX_DMUL(6.28318530717958647693, a), t2 = HAX_DMUL(th, th), p = 1.0;
    // cos th = 1 - t2/(1*2) (1 - t2/(3*4) (...)); sin th = th (1 - t2/(2*3) (1 - t2/(4*5) (...)))
    for (int k = 10; k >= 1; k--) {
        double d = use_sin ? (double)(2 * k * (2 * k + 1)) : (double)((2 * k - 1) * 2 * k);
        p = HAX_DSUB(1.0, HAX_DDIV(HAX_DMUL(t2, p), d));
    }
    return HAX_DMUL(sign, use_sin ? HAX_DMUL(th, p) : p);
}

// Box-Muller from u1 in (0, 1] and u2 in [0, 1) (rng_normal's formula).
HAX_HD HAX_INLINE double hax_box_muller(double u1, double u2) {
    return HAX_DMUL(HAX_DSQRT(HAX_DMUL(-2.0, hax_log_portable(u1))), hax_cos2pi_portable(u2));
}

// ---- key selection's ranking loss (double)
HAX_HD HAX_INLINE double hax_sigmoid_d(double a) { return 1.0 / (1.0 + exp(-a)); }
// Pairwise target T_ab from the ranking targets y_a, y_b.
HAX_HD HAX_INLINE double hax_rank_target(double ya, double yb) { return ya > yb ? 1.0 : (ya == yb ? 0.5 : 0.0); }
// BCE with logits, the stable form max(P,0) - P T + log(1 + e^{-|P|}).
HAX_HD HAX_INLINE double hax_bce_logits(double P, double T) { return fmax(P, 0.0) - P * T + log1p(exp(-fabs(P))); }

// ---- the ranking loss in bf16-pure (src/sparse/ks.h's *_bf16): torch's ops
// on bf16 tensors, each result rounded once. One pair's loss term (torch 2.x
// binary_cross_entropy_with_logits: (1 - T) P - log_sigmoid(P)), with P =
// bf16(x_a - x_b):
HAX_HD HAX_INLINE float hax_bce_term_bf16(float xa, float xb, double ya, double yb) {
    float P = hax_bf16_round(xa - xb), T = (float)hax_rank_target(ya, yb);
    float ls = hax_bf16_round(fminf(P, 0.0f) - log1pf(expf(-fabsf(P))));
    return hax_bf16_round(hax_bf16_round((1.0f - T) * P) - ls);
}
// d loss / d P_ab: the explicit backward (sigmoid(P) - T) times the incoming
// gradient g, then the mean's division (a multiplication by inv = 1/count).
HAX_HD HAX_INLINE float hax_bce_dpair_bf16(float xa, float xb, double ya, double yb, float g, float inv) {
    float P = hax_bf16_round(xa - xb), T = (float)hax_rank_target(ya, yb);
    return hax_bf16_round(hax_bf16_round(hax_bf16_round(hax_bf16_round(hax_sigmoid(P)) - T) * g) * inv);
}

#endif
