// src/ops/mlp.c: Samba's GatedMLP (SwiGLU), forward and backward (see src/ops/mlp.h).
#include "src/ops/mlp.h"

#include <math.h>
#include <string.h>

#include "src/ops/basic.h"
#include "src/ops/linear.h"

static inline float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

size_t mlp_acts_floats(int n_tok, int M) { return 3 * (size_t)n_tok * M; }

void mlp_acts_assign(mlp_acts *acts, float *buf, int n_tok, int M) {
    size_t nm = (size_t)n_tok * M;
    acts->g = buf;
    acts->u = buf + nm;
    acts->s = buf + 2 * nm;
}

size_t mlp_bwd_floats(int n_tok, int d, int M) { return (size_t)n_tok * (2 * (size_t)M + (M > d ? M : d)); }

void mlp_forward(float *out, int ld_out, mlp_acts *acts, const float *a, int ld_a,
                 const mlp_params *w, int n_tok, int d, int M, int bf16) {
    linear_forward(acts->g, M, a, ld_a, w->gate, NULL, n_tok, d, M);
    linear_forward(acts->u, M, a, ld_a, w->up, NULL, n_tok, d, M);
    size_t nm = (size_t)n_tok * M;
    if (bf16) {
        round_bf16(acts->g, acts->g, (long)nm);
        round_bf16(acts->u, acts->u, (long)nm);
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < nm; i++) {
        float g = acts->g[i];
        acts->s[i] = g * sigmoidf_(g) * acts->u[i];
        if (bf16) acts->s[i] = hax_bf16_round(acts->s[i]);
    }
    linear_forward(out, ld_out, acts->s, M, w->down, NULL, n_tok, M, d);
}

void mlp_backward(float *da, int ld_da, mlp_grads *gr, float *scratch, const float *dout,
                  int ld_dout, const float *a, int ld_a, const mlp_acts *acts,
                  const mlp_params *w, int n_tok, int d, int M, int bf16) {
    size_t nm = (size_t)n_tok * M;
    float *ds = scratch, *dg = scratch + (size_t)n_tok * (M > d ? M : d), *du = dg + nm;
    memset(ds, 0, nm * sizeof(float));
    linear_backward(ds, M, gr->down, NULL, dout, ld_dout, acts->s, M, w->down, n_tok, M, d);
    // s = silu(g) u:  dg = ds u silu'(g),  du = ds silu(g)
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < nm; i++) {
        float g = acts->g[i], sg = sigmoidf_(g);
        if (bf16) {  // fla's swiglu_bwd on the bf16 ds
            float dsi = hax_bf16_round(ds[i]);
            dg[i] = hax_bf16_round(sg * (1.0f + g * (1.0f - sg)) * dsi * acts->u[i]);
            du[i] = hax_bf16_round(g * sg * dsi);
            continue;
        }
        dg[i] = ds[i] * acts->u[i] * sg * (1.0f + g * (1.0f - sg));
        du[i] = ds[i] * g * sg;
    }
    if (!bf16) {
        linear_backward(da, ld_da, gr->gate, NULL, dg, M, a, ld_a, w->gate, n_tok, d, M);
        linear_backward(da, ld_da, gr->up, NULL, du, M, a, ld_a, w->up, n_tok, d, M);
        return;
    }
    // two bf16 contributions to da (ds's slot is free: n·max(M, d) floats)
    float *share = ds;
    memset(share, 0, sizeof(float) * (size_t)n_tok * d);
    linear_backward(da ? share : NULL, d, gr->gate, NULL, dg, M, a, ld_a, w->gate, n_tok, d, M);
    if (da) add_bf16_rows(da, ld_da, share, d, d, n_tok);
    memset(share, 0, sizeof(float) * (size_t)n_tok * d);
    linear_backward(da ? share : NULL, d, gr->up, NULL, du, M, a, ld_a, w->up, n_tok, d, M);
    if (da) add_bf16_rows(da, ld_da, share, d, d, n_tok);
}
