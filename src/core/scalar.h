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

// ---- key selection's ranking loss (double)
HAX_HD HAX_INLINE double hax_sigmoid_d(double a) { return 1.0 / (1.0 + exp(-a)); }
// Pairwise target T_ab from the ranking targets y_a, y_b.
HAX_HD HAX_INLINE double hax_rank_target(double ya, double yb) { return ya > yb ? 1.0 : (ya == yb ? 0.5 : 0.0); }
// BCE with logits, the stable form max(P,0) - P T + log(1 + e^{-|P|}).
HAX_HD HAX_INLINE double hax_bce_logits(double P, double T) { return fmax(P, 0.0) - P * T + log1p(exp(-fabs(P))); }

#endif
