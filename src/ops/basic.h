// src/ops/basic.h: the blocks shared by every model (MODEL.md §1.1, §1.2, §1.6,
// §8.3): embedding, RMSNorm, Samba's fused add + RMSNorm, logits through the
// tied embedding matrix, cross-entropy + accuracy at the scored positions, and
// small scalar helpers (silu, softplus, sigmoid).
//
// Activations are packed row-major [n_tok, C]; sequences are seq_off[0..n_seq].
// Backward functions ACCUMULATE (+=) into input and parameter gradients (the
// caller zeroes), except ce_backward, which writes dlogits. Results do not depend
// on the OpenMP thread count (reductions over rows go through fixed-size row
// chunks summed in a fixed order).
#ifndef HAX_OPS_BASIC_H
#define HAX_OPS_BASIC_H

#include <math.h>
#include <stdint.h>

#include "src/core/scalar.h"

// ---- scalar helpers (hax_sigmoid, hax_silu, hax_dsilu, hax_softplus, hax_dsoftplus):
// src/core/scalar.h, shared with the CUDA ops.

// ---- bf16 emulation (train.precision, MODEL.md §0 "Precision"):
// out[i] = hax_bf16_round(x[i]) for i < n (out may be x); the rows variant
// rounds x[t*ld + 0..width) for t < rows in place.
void round_bf16(float *out, const float *x, long n);
void round_bf16_rows(float *x, int ld, int width, int rows);
// A gradient that autograd accumulates from several bf16 contributions:
// dst = bf16(dst + bf16(src)) on rows t < rows, columns j < width (the first
// use of a contribution rounds it, then the bf16 sum is rounded).
void add_bf16_rows(float *dst, int ld_dst, const float *src, int ld_src, int width, int rows);

// ---- embedding (§1.1): out[t, :] = W_emb[ids[t], :], W_emb [V, d].
// Dies (naming the position and id) on an id outside [0, V).
void embedding_forward(float *out, const int32_t *ids, const float *W_emb, int n_tok, int d, int V);
// dW_emb[ids[t], :] += dout[t, :] (rows added in token order).
void embedding_backward(float *dW_emb, const float *dout, const int32_t *ids, int n_tok, int d);

// ---- RMSNorm (§1.2): out = x · w / sqrt(mean(x²) + eps), per row of d.
// x, out [n, d] dense; rstd [n] saves 1/sqrt(mean(x²)+eps) for backward.
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int n, int d, float eps);
// dx [n, d] += ..., dw [d] += ... (either may be NULL).
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *rstd,
                      const float *w, int n, int d);

// ---- fused add + RMSNorm (§1.2, Samba's mlp_norm with prenorm=True):
// s = x + residual (the new residual, written to s; s may alias x or residual),
// out = rmsnorm(s) · w; rstd [n] saved.
void add_rmsnorm_forward(float *out, float *s, float *rstd, const float *x, const float *residual,
                         const float *w, int n, int d, float eps);
// dout: gradient of the normed output; ds: gradient reaching the new residual s
// directly (may be NULL). With g = ds + d(out)/ds: dx += g and dresidual += g
// (either may be NULL; they may be the same buffer, which then gets 2g); dw +=.
void add_rmsnorm_backward(float *dx, float *dresidual, float *dw, const float *dout, const float *ds,
                          const float *s, const float *rstd, const float *w, int n, int d);

// ---- logits (§1.6): logits [n, V] = h [n, d] · W_embᵀ (W_emb [V, d], tied).
void logits_forward(float *logits, const float *h, const float *W_emb, int n, int d, int V);
// dh [n, d] += dlogits · W_emb; dW_emb [V, d] += dlogitsᵀ · h (either may be NULL).
void logits_backward(float *dh, float *dW_emb, const float *dlogits, const float *h,
                     const float *W_emb, int n, int d, int V);

// ---- cross-entropy and accuracy at the scored positions (§8.3, golden README Q20).
// logits [n_tok, V]; labels [n_tok]; mask [n_tok] (1 = scored; NULL = every
// position). Returns the SUM over scored positions of −log softmax(logits[t])[labels[t]]
// (the caller divides by the global scored count). For each sequence s, writes
// correct[s] = #scored positions whose argmax over all V ids (first maximum on
// ties) equals the label, and count[s] = #scored positions (either array may be
// NULL). The reference accuracy is then mean_s(correct[s] / count[s]) over the
// global batch. Dies on a scored label outside [0, V).
double ce_forward(const float *logits, const int32_t *labels, const uint8_t *mask,
                  const int *seq_off, int n_seq, int V, int *correct, int *count);
// WRITES dlogits [n_tok, V] = (softmax(logits[t]) − onehot(labels[t])) · scale at
// scored positions and 0 elsewhere (scale = dloss / global scored count).
void ce_backward(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask,
                 int n_tok, int V, float scale);
// bf16-pure (the reference's torch ops on bf16 logits): dlogits = bf16 of
// exp(bf16 log_softmax) · scale, minus scale at the label (basic.c says how);
// scale = hax_ce_grad_scale(1, N).
void ce_backward_bf16(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask,
                      int n_tok, int V, float scale);

// Gated RMSNorm (fla RMSNormGated, norm_before_gate=False, one group of all E
// channels), row by row:  v = y ⊙ silu(z);  out = v ⊙ w / sqrt(mean(v²) + eps).
// out [n, E] (ld_out) is written; rstd [n] receives 1/sqrt(mean(v²)+eps)
// (may be NULL). y (ld_y), z (ld_z) are [n, E]; w is [E].
void gated_norm_forward(float *out, int ld_out, float *rstd, const float *y, int ld_y,
                        const float *z, int ld_z, const float *w, int n, int E, float eps);

// Backward: accumulates (+=) dy (ld_dy), dz (ld_dz) [n, E] and dw [E] from
// dout (ld_dout). rstd is the forward's. dy or dz may be NULL.
void gated_norm_backward(float *dy, int ld_dy, float *dz, int ld_dz, float *dw, const float *dout,
                         int ld_dout, const float *rstd, const float *y, int ld_y, const float *z,
                         int ld_z, const float *w, int n, int E);

// dw[j] += sum over chunks ch (in order, in double) of part[ch * d + j]: the
// fixed-order reduction of per-chunk partial sums that keeps the column sums
// (norm weights, dE) independent of the thread count.
void add_partials(float *dw, const double *part, int n_chunk, int d);

#endif
