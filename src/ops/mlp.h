// src/ops/mlp.h: Samba's GatedMLP (fla GatedMLP with fused SwiGLU, MODEL.md §4.2):
//   g = a·W_gateᵀ, u = a·W_upᵀ  [n_tok, M];  s = silu(g) ⊙ u;  out = s·W_downᵀ  [n_tok, d]
// M = the MLP width (cfg->mlp_hidden, 256).
//
// bf16 != 0 (bf16-pure, README "Precision"): the reference's ops, fla's
// fused swiglu_linear included (fp32 inside, bf16 out):
//   g = bf16(a·W_gateᵀ), u = bf16(a·W_upᵀ), s = bf16(silu(g)·u)
//   backward: ds = bf16(dout·W_down), dg = bf16(silu'(g)·ds·u),
//   du = bf16(g·σ(g)·ds) (fla's swiglu_bwd order), and da gets the up and
//   gate shares as two bf16 contributions: da = bf16(da + bf16(share)) each.
// out stays fp32 (the engine rounds it). bf16 = 0: bit for bit as before.
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

// Scratch floats of mlp_backward (ds, dg, du [n_tok, M]; ds's slot holds
// n_tok·max(M, d) floats, bf16-pure's share of da).
size_t mlp_bwd_floats(int n_tok, int d, int M);

// Forward: a [n_tok, d] (ld_a) → out [n_tok, d] (ld_out, written), acts filled.
void mlp_forward(float *out, int ld_out, mlp_acts *acts, const float *a, int ld_a,
                 const mlp_params *w, int n_tok, int d, int M, int bf16);

// Backward: accumulates (+=) da (ld_da, may be NULL) and the three weight
// gradients from dout [n_tok, d] (ld_dout); scratch holds mlp_bwd_floats floats.
void mlp_backward(float *da, int ld_da, mlp_grads *gr, float *scratch, const float *dout,
                  int ld_dout, const float *a, int ld_a, const mlp_acts *acts,
                  const mlp_params *w, int n_tok, int d, int M, int bf16);

#endif
