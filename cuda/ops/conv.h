// cuda/ops/conv.h: the CUDA version of src/ops/conv.h (depthwise causal conv1d +
// SiLU on a packed batch), same arguments plus n_tok; seq_off[0] must be 0.
// K <= 8.
#ifndef HAX_CU_CONV_H
#define HAX_CU_CONV_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void cuda_conv_silu_forward(float *out, float *pre, const float *inp, int ld_inp, const float *w,
                            const float *b, const int *seq_off, int n_seq, int n_tok, int C, int K);

// Workspace: dw/db partials (double) per chunk of 64 positions; each
// sequence's total is added in sequence order as on the CPU.
size_t cuda_conv_workspace_bytes(int n_tok, int n_seq, int C, int K);
void cuda_conv_silu_backward(float *dinp, int ld_dinp, float *dw, float *db, const float *dout,
                             const float *pre, const float *inp, int ld_inp, const float *w,
                             const int *seq_off, int n_seq, int n_tok, int C, int K, void *work);

#ifdef __cplusplus
}
#endif

#endif
