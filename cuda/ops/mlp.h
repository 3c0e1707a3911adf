// cuda/ops/mlp.h: Samba's GatedMLP (SwiGLU) on the GPU, the CUDA version of
// src/ops/mlp.h: g = a·W_gateᵀ, u = a·W_upᵀ [n_tok, M]; s = silu(g) ⊙ u;
// out = s·W_downᵀ [n_tok, d]. Same arguments and mlp_acts layout as the CPU
// op (device pointers; backward ACCUMULATES += into da and the gradients).
#ifndef HAX_CU_MLP_H
#define HAX_CU_MLP_H

#include <stddef.h>

#include "src/ops/mlp.h"  // mlp_params / mlp_grads / mlp_acts (device pointers here)

#ifdef __cplusplus
extern "C" {
#endif

// Scratch bytes of cuda_mlp_backward (ds, dg, du [n_tok, M]; ds's slot
// holds n_tok·max(M, d) floats, as mlp_bwd_floats).
size_t cuda_mlp_workspace_bytes(int n_tok, int d, int M);

// bf16 != 0: the bf16-pure roundings of src/ops/mlp.h.
void cuda_mlp_forward(float *out, int ld_out, const mlp_acts *acts, const float *a, int ld_a,
                      const mlp_params *w, int n_tok, int d, int M, int bf16);

void cuda_mlp_backward(float *da, int ld_da, const mlp_grads *gr, const float *dout, int ld_dout,
                       const float *a, int ld_a, const mlp_acts *acts, const mlp_params *w, int n_tok, int d,
                       int M, void *work, int bf16);

#ifdef __cplusplus
}
#endif

#endif
