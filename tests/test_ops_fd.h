// test_ops_fd.h: the finite-difference check shared by the op tests whose
// losses are computed in double precision (test_ops_mamba2.c,
// test_ops_samba.c). Include after test.h.
#ifndef HAX_TEST_OPS_FD_H
#define HAX_TEST_OPS_FD_H

#include <math.h>
#include <stddef.h>

// Central finite differences of a double-precision loss, dividing by the step
// actually taken in float ((x+h) - (x-h) as rounded), so the float rounding
// of the perturbed input does not bias the difference. Same contract as
// fd_check in test.h: probes at most max_probe entries of x and returns the
// worst |fd - grad| / (|fd| + |grad| + floor).
static inline double fd_exact(float *x, size_t n, const float *grad, test_loss_fn loss, void *ctx, float h,
                              size_t max_probe, double floor) {
    double worst = 0;
    size_t stride = n > max_probe ? n / max_probe : 1;
    for (size_t i = 0; i < n; i += stride) {
        float saved = x[i], xp = saved + h, xm = saved - h;
        x[i] = xp;
        double lp = loss(ctx);
        x[i] = xm;
        double lm = loss(ctx);
        x[i] = saved;
        double fd = (lp - lm) / ((double)xp - (double)xm);
        double err = fabs(fd - grad[i]) / (fabs(fd) + fabs(grad[i]) + floor);
        if (err > worst) worst = err;
    }
    return worst;
}

#endif
