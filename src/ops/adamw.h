// adamw.h: torch.optim.AdamW (single-tensor path, float32, amsgrad off) and
// the reference's learning-rate schedule (linear warm-up, then constant).
//
// Per element, with n the step count after its increment (n = 1 first):
//   p <- p * (1 - lr*wd)
//   m <- m + (1 - b1) * (g - m)
//   v <- b2*v + (1 - b2) * g*g
//   bc1 = 1 - b1^n,  bc2 = 1 - b2^n                    (double)
//   p <- p - (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
// Weight decay applies to every parameter, as in the reference (quirk 17).
//
// bf16-pure (train.precision, MODEL.md §8.5, quirk 17): the reference's
// torch.optim.AdamW foreach path on bf16 parameters, gradients and moments.
// Each foreach op computes in fp32 from bf16 values (the Python-double
// scalars cast to float) and stores bf16, so each line is one rounding:
//   g   = bf16(g)                        (a bf16 .grad; a no-op for one rank)
//   p   = bf16(p * decay)                _foreach_mul_
//   m   = bf16(lerp(m, g, 1 - b1))       _foreach_lerp_ (torch's two-branch lerp)
//   v   = bf16(v * b2)                   _foreach_mul_
//   v   = bf16(v + (1 - b2) * (g * g))   _foreach_addcmul_ (self + value * (t1 * t2))
//   den = bf16(sqrt(v))                  _foreach_sqrt
//   den = bf16(den / sqrt(bc2))          _foreach_div_ (bc2 in double, as Python)
//   den = bf16(den + eps)                _foreach_add_
//   p   = bf16(p + (-(lr/bc1)) * (m / den))  _foreach_addcdiv_
#ifndef HAX_ADAMW_H
#define HAX_ADAMW_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "src/core/scalar.h"

typedef struct {
    double beta1, beta2, eps, weight_decay;  // 0.9, 0.999, 1e-8, 0.01 (doubles, as PyTorch's hyperparameters)
    int64_t step;   // steps taken so far (0 before the first)
    size_t n;       // parameters (one flat buffer)
    float *m, *v;   // first and second moments [n], zero at start
    int bf16_pure;  // 1: adamw_step runs adamw_bf16_update (train.precision bf16-pure)
} hax_adamw;

// The float scalars of one step, as PyTorch makes them from its Python
// floats (combined in double, cast to float where they meet a tensor); shared
// by the float32 and the bf16-pure updates.
typedef struct {
    float decay;          // param.mul_(1 - lr*wd)
    float w1, one_minus_w1;
    int lerp_low;         // exp_avg.lerp_(grad, w1): self + w*(end - self) for |w| < 0.5, else end - (end - self)*(1 - w)
    float b2, w2;         // exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
    float neg_step_size;  // addcdiv_ value, -(lr / bc1), bc1 = 1 - beta1^step in double
    float bc2_sqrt;       // sqrt(1 - beta2^step), in double then float
    float eps;
} adamw_scalars;
adamw_scalars adamw_scalars_of(double lr, double beta1, double beta2, double eps, double weight_decay,
                               int64_t step);

// The step's addition to the decayed weight, from the moments m, v after the
// step: -(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps) in float32, and in
// bf16-pure with den's three lines rounded (above; the caller rounds p + u).
// One expression for the updates below and for hax-pdiff's prediction.
static inline float adamw_step_term(const adamw_scalars *k, float m, float v) {
    float denom = sqrtf(v) / k->bc2_sqrt + k->eps;
    return k->neg_step_size * m / denom;
}
static inline float adamw_bf16_step_term(const adamw_scalars *k, float m, float v) {
    float den = hax_bf16_round(sqrtf(v));
    den = hax_bf16_round(den / k->bc2_sqrt);
    den = hax_bf16_round(den + k->eps);
    return k->neg_step_size * (m / den);
}

// Allocates zeroed moments for n parameters.
void adamw_init(hax_adamw *opt, size_t n, double beta1, double beta2, double eps, double weight_decay);
void adamw_free(hax_adamw *opt);

// One step over the whole flat buffer: increments opt->step, then updates
// p[0..n) from g[0..n) with learning rate lr (already scheduled).
void adamw_step(hax_adamw *opt, float *p, const float *g, double lr);

// The element-wise update of one step on a range, for callers that keep their
// own moments (a CUDA backend's CPU check, a sharded update). step is the
// step count after its increment (>= 1).
void adamw_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double beta1, double beta2,
                  double eps, double weight_decay, int64_t step);

// The bf16-pure update of one step (see above; p, m, v hold bf16 values and
// stay so). Same arguments as adamw_update.
void adamw_bf16_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int64_t step);

// The reference schedule (MODEL.md 8.4, quirk 16): optimizer step s (1-based)
// uses lr * min((s-1)/warmup, 1); step 1 uses 0. warmup <= 0: lr throughout.
// Learning rates are doubles, like PyTorch's Python floats.
double adamw_schedule_lr(double lr, int64_t step, int64_t warmup);

#endif
