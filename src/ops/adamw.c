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


adamw_scalars adamw_scalars_of(double lr, double beta1, double beta2, double eps, double weight_decay,
                                int64_t step) {
    adamw_scalars k;
    k.decay = (float)(1.0 - lr * weight_decay);
    k.w1 = (float)(1.0 - beta1);
    k.one_minus_w1 = 1.0f - k.w1;
    k.lerp_low = fabsf(k.w1) < 0.5f;
    k.b2 = (float)beta2, k.w2 = (float)(1.0 - beta2);
    k.neg_step_size = (float)(-(lr / (1.0 - pow(beta1, (double)step))));
    k.bc2_sqrt = (float)sqrt(1.0 - pow(beta2, (double)step));
    k.eps = (float)eps;
    return k;
}

void adamw_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double beta1, double beta2,
                  double eps, double weight_decay, int64_t step) {
    const adamw_scalars k = adamw_scalars_of(lr, beta1, beta2, eps, weight_decay, step);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) {
        float pi = p[i] * k.decay;
        float gi = g[i];
        float diff = gi - m[i];
        float mi = k.lerp_low ? m[i] + k.w1 * diff : gi - diff * k.one_minus_w1;
        float vi = v[i] * k.b2;
        vi = vi + k.w2 * gi * gi;
        p[i] = pi + adamw_step_term(&k, mi, vi);
        m[i] = mi;
        v[i] = vi;
    }
}

void adamw_bf16_update(float *p, const float *g, float *m, float *v, size_t n, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int64_t step) {
    const adamw_scalars k = adamw_scalars_of(lr, beta1, beta2, eps, weight_decay, step);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (size_t i = 0; i < n; i++) {
        float gi = hax_bf16_round(g[i]);
        float pi = hax_bf16_round(p[i] * k.decay);
        float diff = gi - m[i];
        float mi = hax_bf16_round(k.lerp_low ? m[i] + k.w1 * diff : gi - diff * k.one_minus_w1);
        float vi = hax_bf16_round(v[i] * k.b2);
        vi = hax_bf16_round(vi + k.w2 * (gi * gi));
        p[i] = hax_bf16_round(pi + adamw_bf16_step_term(&k, mi, vi));
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
