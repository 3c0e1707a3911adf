// cuda/ops/attn.h: Samba's sliding-window attention with RoPE on the GPU, the CUDA
// version of src/ops/attn.h (same maths, same arguments, same attn_acts
// layout: q, k after RoPE, v, o [n_tok, d], lse [n_tok, attn_heads]).
//
// Conventions (cuda/core/common.h): device pointers, seq_off on the device, host
// sizes, backward ACCUMULATES (+=) into da and the weight gradients; scratch
// passed in. The window is O(n·W): one thread per (query, head) in forward
// (two passes over its W keys: the max, then exp and the weighted sum, as
// the CPU); in backward one thread per (query, head) for dq and one per
// (key, head) for dk, dv, each looping over the queries that see the key, so
// no float atomics and a fixed summation order (results repeat exactly).
#ifndef HAX_CU_ATTN_H
#define HAX_CU_ATTN_H

#include <stddef.h>

#include "src/model/model_config.h"
#include "src/ops/attn.h"  // attn_params / attn_grads / attn_acts (device pointers here)

#ifdef __cplusplus
extern "C" {
#endif

// Scratch bytes of cuda_attn_backward for n_tok positions (dO, dq, dk, dv
// [n_tok, d] and D [n_tok, attn_heads]).
size_t cuda_attn_workspace_bytes(const hax_model_config *cfg, int n_tok);

// cfg->precision bf16-pure: the roundings of src/ops/attn.h, at the same
// points. Forward: a [n_tok, d] (ld_a) -> out [n_tok, d] (ld_out, written); acts
// filled. n_tok = seq_off[n_seq] given by the host. Dies (host check) on a
// config src/ops/attn.c refuses, or a head size above 128.
void cuda_attn_forward(float *out, int ld_out, const attn_acts *acts, const float *a, int ld_a,
                       const attn_params *w, const hax_model_config *cfg, const int *seq_off, int n_seq,
                       int n_tok);

// Backward: da (+=, ld_da, may be NULL) and the four weight gradients (+=)
// from dout [n_tok, d] (ld_dout).
void cuda_attn_backward(float *da, int ld_da, const attn_grads *gr, const float *dout, int ld_dout,
                        const float *a, int ld_a, const attn_acts *acts, const attn_params *w,
                        const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok, void *work);

// RoPE in place on x [n_tok, n_heads·hd] (ld_x), positions 0.. per sequence;
// inverse = 1 applies the transpose, bf16 = 1 rounds cos, sin and the result
// (as rope_apply).
void cuda_rope_apply(float *x, int ld_x, const int *seq_off, int n_seq, int n_tok, int n_heads, int hd,
                     float theta, int inverse, int bf16);

// The window kernels (one thread per (position, head)) come in two versions
// that give the same bits: the old ones, each thread reading its window's
// rows from global memory, and tiled ones, a block per tile of consecutive
// positions (all heads) staging the rows its windows read in shared memory
// once (cuda/ops/attn.cu; 4.7x faster at Samba's paper size, README "Window
// attention kernels"). HAX_WINDOW_ATTN (read once, at the first attention
// call): "old" (0) or "tiled" (1, also when unset); anything else is an
// error. cuda_attn_set_window_tiled overrides it (tests). Where a shape's
// rows do not fit a block's 48 KiB (cuda_attn_tile_positions 0: a long
// window or wide rows) the old kernels run either way.
int cuda_attn_window_tiled(void);
void cuda_attn_set_window_tiled(int tiled);
// Positions per block of the tiled kernels for rows of d floats, H heads,
// window W (dkv: the dK/dV kernel's larger tile), 0 where they do not fit.
int cuda_attn_tile_positions(int d, int H, int W, int dkv);

// The window kernels alone (the ops above call them; tests time them), the
// version chosen as above: q, k (after RoPE), v, o, dO, dq, dk, dv [n_tok, d]
// (d = H·hd, hd <= 128), lse, D [n_tok, H]. Forward: o, lse (=). dq (=) from
// dO, D = dO·o per (position, head), lse; dk, dv (=) the same.
void cuda_attn_window_forward(float *o, float *lse, const float *q, const float *k, const float *v,
                              const int *seq_off, int n_seq, int n_tok, int d, int H, int W);
void cuda_attn_window_dq(float *dq, const float *dO, const float *D, const float *lse, const float *q,
                         const float *k, const float *v, const int *seq_off, int n_seq, int n_tok, int d, int H,
                         int W);
void cuda_attn_window_dkv(float *dk, float *dv, const float *dO, const float *D, const float *lse, const float *q,
                          const float *k, const float *v, const int *seq_off, int n_seq, int n_tok, int d, int H,
                          int W);

#ifdef __cplusplus
}
#endif

#endif
