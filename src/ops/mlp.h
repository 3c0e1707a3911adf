// src/ops/mlp.h: Samba's GatedMLP (fla GatedMLP with fused SwiGLU, MODEL.md §4.2):
//   g = a·W_gateᵀ, u = a·W_upᵀ  [n_tok, M];  s = silu(g) ⊙ u;  out = s·W_downᵀ  [n_tok, d]
// M = the MLP width (cfg->mlp_hidden, 256).
#ifndef HAX_OPS_MLP_H
#define HAX_OPS_MLP_H

#include <stddef.h>

// layers.j.mlp.{gate_proj,up_proj}.weight [M, d]; down_proj.weight [d, M].
typedef struct {
    const float *gate, *up, *down;
} mlp_params;

typedef struct {
    float *gate, *up, *down;
} mlp_grads;

typedef struct {
    float *g;  // [n_tok, M] gate pre-activation
    float *u;  // [n_tok, M] up projection
    float *s;  // [n_tok, M] silu(g) ⊙ u (the down_proj input)
} mlp_acts;

size_t mlp_acts_floats(int n_tok, int M);
void mlp_acts_assign(mlp_acts *acts, float *buf, int n_tok, int M);

// Scratch floats of mlp_backward (3·n_tok·M).
size_t mlp_bwd_floats(int n_tok, int M);

// Forward: a [n_tok, d] (ld_a) → out [n_tok, d] (ld_out, written), acts filled.
void mlp_forward(float *out, int ld_out, mlp_acts *acts, const float *a, int ld_a,
                 const mlp_params *w, int n_tok, int d, int M);

// Backward: accumulates (+=) da (ld_da, may be NULL) and the three weight
// gradients from dout [n_tok, d] (ld_dout); scratch holds mlp_bwd_floats floats.
void mlp_backward(float *da, int ld_da, mlp_grads *gr, float *scratch, const float *dout,
                  int ld_dout, const float *a, int ld_a, const mlp_acts *acts,
                  const mlp_params *w, int n_tok, int d, int M);

#endif
