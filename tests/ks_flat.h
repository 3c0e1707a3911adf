// ks_flat.h: the key-selection MLP's parameters (src/sparse/ks.h) in one
// flat buffer, as the sparse tests keep them: w1 [2N, 2N], b1 [2N],
// w2 [2N, 2N], b2 [2N], w3 [2N], b3 [1], one after the other.
#ifndef HAX_TESTS_KS_FLAT_H
#define HAX_TESTS_KS_FLAT_H

#include "src/sparse/ks.h"

// Floats of the buffer for state size N.
#define KS_FLAT_FLOATS(N) (2 * (2 * (N)) * (2 * (N)) + 3 * (2 * (N)) + 1)

static inline ks_params ks_flat_params(const float *p, int N) {
    int D = 2 * N;
    ks_params v = {p, p + D * D, p + D * D + D, p + 2 * D * D + D, p + 2 * D * D + 2 * D,
                   p + 2 * D * D + 3 * D};
    return v;
}

// The gradients' buffer, the same layout.
static inline ks_grads ks_flat_grads(float *p, int N) {
    int D = 2 * N;
    ks_grads v = {p, p + D * D, p + D * D + D, p + 2 * D * D + D, p + 2 * D * D + 2 * D,
                  p + 2 * D * D + 3 * D};
    return v;
}

#endif
