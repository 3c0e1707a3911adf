// adamw.c: see adamw.h. The operation order follows PyTorch's single-tensor
// AdamW on CPU float32 tensors: Python-float hyperparameters are combined in
// double and cast to float where they meet a tensor, then each tensor op is
// one float32 rounding (mul_, lerp_, mul_ + addcmul_, sqrt / div / add, addcdiv_).
#include "src/ops/adamw.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/scalar.h"

void adamw_init(hax_adamw *opt, size_t n, double beta1, double beta2, double eps, double weight_decay) {
    memset(opt, 0, sizeof *opt);
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    opt->weight_decay = weight_decay;
    opt->n = n;
    opt->m = xcalloc(n ? n : 1, sizeof(float));
    opt->v = xcalloc(n ? n : 1, sizeof(float));
}

void adamw_free(hax_adamw *opt) {
    free(opt->m);
    free(opt->v);
    opt->m = opt->v = NULL;
    opt->n = 0;
}

void adamw_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double beta1, double beta2,
                  double eps, double weight_decay, int64_t step) {
    const float decay = (float)(1.0 - lr * weight_decay);    // param.mul_(1 - lr*wd)
    const float w1 = (float)(1.0 - beta1);                   // exp_avg.lerp_(grad, 1 - beta1)
    const float b2 = (float)beta2, w2 = (float)(1.0 - beta2); // exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    const float neg_step_size = (float)(-(lr / bc1));        // addcdiv_ value
    const float bc2_sqrt = (float)sqrt(bc2);
    const float epsf = (float)eps;
    // lerp(self, end, w) = self + w*(end - self) for |w| < 0.5, else end - (end - self)*(1 - w)
    const int lerp_low = fabsf(w1) < 0.5f;
    const float one_minus_w1 = 1.0f - w1;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) {
        float pi = p[i] * decay;
        float gi = g[i];
        float diff = gi - m[i];
        float mi = lerp_low ? m[i] + w1 * diff : gi - diff * one_minus_w1;
        float vi = v[i] * b2;
        vi = vi + w2 * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + epsf;
        p[i] = pi + neg_step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

void adamw_bf16_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int64_t step) {
    // the float scalars exactly as adamw_update makes them
    const float decay = (float)(1.0 - lr * weight_decay);
    const float w1 = (float)(1.0 - beta1);
    const float b2 = (float)beta2, w2 = (float)(1.0 - beta2);
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    const float neg_step_size = (float)(-(lr / bc1));
    const float bc2_sqrt = (float)sqrt(bc2);
    const float epsf = (float)eps;
    const int lerp_low = fabsf(w1) < 0.5f;
    const float one_minus_w1 = 1.0f - w1;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) {
        float gi = hax_bf16_round(g[i]);
        float pi = hax_bf16_round(p[i] * decay);
        float diff = gi - m[i];
        float mi = hax_bf16_round(lerp_low ? m[i] + w1 * diff : gi - diff * one_minus_w1);
        float vi = hax_bf16_round(v[i] * b2);
        vi = hax_bf16_round(vi + w2 * (gi * gi));
        float den = hax_bf16_round(sqrtf(vi));
        den = hax_bf16_round(den / bc2_sqrt);
        den = hax_bf16_round(den + epsf);
        p[i] = hax_bf16_round(pi + neg_step_size * (mi / den));
        m[i] = mi;
        v[i] = vi;
    }
}

void adamw_step(hax_adamw *opt, float *p, const float *g, double lr) {
    opt->step++;
    if (opt->bf16_pure) {
        adamw_bf16_update(p, g, opt->m, opt->v, opt->n, lr, opt->beta1, opt->beta2, opt->eps, opt->weight_decay,
                          opt->step);
        return;
    }
    adamw_update(p, g, opt->m, opt->v, opt->n, lr, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, opt->step);
}

double adamw_schedule_lr(double lr, int64_t step, int64_t warmup) {
    if (warmup <= 0) return lr;
    int64_t s = step - 1;  // LambdaLR's epoch counter when step `step` runs
    if (s < 0) s = 0;
    if (s >= warmup) return lr;
    return lr * ((double)s / (double)warmup);
}
