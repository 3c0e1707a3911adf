// cuda/ops/basic.h: the CUDA versions of src/ops/basic.h (embedding, RMSNorm,
// fused add + RMSNorm, tied logits, cross-entropy + accuracy). Same arguments
// and conventions as the CPU ops (see cuda/core/common.h: device pointers, backward
// accumulates, workspaces passed in). Reductions over rows (the norms' dw)
// use the CPU's fixed chunks of 64 rows in double, added in chunk order, so
// they are deterministic.
#ifndef HAX_CU_BASIC_H
#define HAX_CU_BASIC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// out[t, :] = W_emb[ids[t], :]. An id outside [0, V) gives a zero row and
// sets the error flag that the next cuda_sync reports.
void cuda_embedding_forward(float *out, const int32_t *ids, const float *W_emb, int n_tok, int d, int V);
// dW_emb[ids[t], :] += dout[t, :]: per chunk of 1024 tokens, one block per
// id sums its rows in token order, then the chunks are added in order (meant
// for the small vocabularies of this suite, V = 100: the work is V·n_tok).
size_t cuda_embedding_workspace_bytes(int n_tok, int d, int V);
void cuda_embedding_backward(float *dW_emb, const float *dout, const int32_t *ids, int n_tok, int d, int V,
                             void *work);

// Workspace of the norm backwards (dw partials): bytes for n rows of d.
size_t cuda_norm_workspace_bytes(int n, int d);

void cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int n, int d, float eps);
void cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *rstd,
                           const float *w, int n, int d, void *work);

void cuda_add_rmsnorm_forward(float *out, float *s, float *rstd, const float *x, const float *residual,
                              const float *w, int n, int d, float eps);
void cuda_add_rmsnorm_backward(float *dx, float *dresidual, float *dw, const float *dout, const float *ds,
                               const float *s, const float *rstd, const float *w, int n, int d,
                               void *work);

void cuda_logits_forward(float *logits, const float *h, const float *W_emb, int n, int d, int V);
void cuda_logits_backward(float *dh, float *dW_emb, const float *dlogits, const float *h,
                          const float *W_emb, int n, int d, int V);

// Cross-entropy + accuracy (src/ops/basic.h ce_forward). Instead of returning
// the sum, writes it to *loss (one device double); correct[s] and count[s]
// (device ints, either may be NULL) as on the CPU. The sum is deterministic (a
// fixed tree over the positions of a sequence, then the sequences in order).
// mask may be NULL.
size_t cuda_ce_workspace_bytes(int n_tok, int n_seq);
void cuda_ce_forward(double *loss, int *correct, int *count, const float *logits, const int32_t *labels,
                     const uint8_t *mask, const int *seq_off, int n_seq, int n_tok, int V, void *work);
// WRITES dlogits = (softmax − onehot) · scale at scored positions, 0 elsewhere.
void cuda_ce_backward(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask,
                      int n_tok, int V, float scale);
// bf16-pure (ce_backward_bf16, src/ops/basic.h); scale_dev (device memory) replaces scale when not NULL.
void cuda_ce_backward_bf16(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask,
                           int n_tok, int V, float scale, const float *scale_dev);

// Gated RMSNorm of Mamba-2 (src/ops/ssd.h gated_norm_*): v = y ⊙ silu(z),
// out = v ⊙ w / sqrt(mean(v²) + eps). rstd may be NULL in the forward. The
// backward's workspace is cuda_norm_workspace_bytes(n, E).
void cuda_gated_norm_forward(float *out, int ld_out, float *rstd, const float *y, int ld_y, const float *z,
                             int ld_z, const float *w, int n, int E, float eps);
void cuda_gated_norm_backward(float *dy, int ld_dy, float *dz, int ld_dz, float *dw, const float *dout,
                              int ld_dout, const float *rstd, const float *y, int ld_y, const float *z,
                              int ld_z, const float *w, int n, int E, void *work);

#ifdef __cplusplus
}
#endif

#endif
