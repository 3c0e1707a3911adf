// src/ops/attn.h: Samba's sliding-window softmax attention layer (fla Attention
// with flash-attn varlen, MODEL.md §4.3, golden README Q17), on the CPU.
//
//   q = a·W_qᵀ, k = a·W_kᵀ, v = a·W_vᵀ       [n_tok, d]; head h = columns h·hd .. h·hd+hd-1,
//                                            hd = d / attn_heads
//   RoPE on q and k (rotate-half, non-interleaved), position t = 0.. within each
//   sequence, f_i = 1/θ^(2i/hd) (float), cos/sin of (float)(t·f_i):
//     q'[i] = q[i]·cos − q[i+hd/2]·sin,  q'[i+hd/2] = q[i+hd/2]·cos + q[i]·sin
//   o_t = Σ_j softmax_j(q'_t·k'_j / sqrt(hd)) v_j over keys j = t−W+1 .. t of the
//   same sequence (W = window_size keys including t itself)
//   out = o·W_oᵀ                              [n_tok, d]
// Cost O(n_tok·W·d). Dimensions from hax_model_config: d = hidden_size,
// attn_heads, window_size, rope_theta (attn_kv_heads must equal attn_heads).
//
// cfg->precision bf16-pure (README "Precision", MODEL.md §4.3): the tensors
// the reference stores are rounded to bf16 where its ops store them: q, k, v
// (the projections), the rotary's cos/sin cache and its output q', k', the
// attention output o (flash-attn: fp32 inside), and in backward dO, flash-
// attn's dq', dk', dv, the rotary backward's dq, dk, and da as three bf16
// contributions in autograd's order (v, k, q). Inside flash-attn (scores,
// softmax, its bf16 P tiles) the computation stays fp32. Other precisions:
// bit for bit as before.
#ifndef HAX_OPS_ATTN_H
#define HAX_OPS_ATTN_H

#include <stddef.h>

#include "src/model/model_config.h"

// layers.{i}.mixer.{q,k,v,o}_proj.weight, each [d, d].
typedef struct {
    const float *q_proj, *k_proj, *v_proj, *o_proj;
} attn_params;

typedef struct {
    float *q_proj, *k_proj, *v_proj, *o_proj;
} attn_grads;

// What forward keeps for backward.
typedef struct {
    float *q;    // [n_tok, d] queries after RoPE
    float *k;    // [n_tok, d] keys after RoPE
    float *v;    // [n_tok, d] values
    float *o;    // [n_tok, d] attention output before o_proj
    float *lse;  // [n_tok, attn_heads] log-sum-exp of each query's scaled scores
} attn_acts;

size_t attn_acts_floats(const hax_model_config *cfg, int n_tok);
void attn_acts_assign(attn_acts *acts, float *buf, const hax_model_config *cfg, int n_tok);

// Scratch floats of attn_backward (4·n_tok·d).
size_t attn_bwd_floats(const hax_model_config *cfg, int n_tok);

// Forward: a [n_tok, d] (ld_a) → out [n_tok, d] (ld_out, written) and acts.
void attn_forward(float *out, int ld_out, attn_acts *acts, const float *a, int ld_a,
                  const attn_params *w, const hax_model_config *cfg, const int *seq_off, int n_seq);

// Backward: accumulates (+=) da [n_tok, d] (ld_da, may be NULL) and the four
// weight gradients from dout [n_tok, d] (ld_dout). scratch holds
// attn_bwd_floats floats. Deterministic for any thread count.
void attn_backward(float *da, int ld_da, attn_grads *gr, float *scratch, const float *dout,
                   int ld_dout, const float *a, int ld_a, const attn_acts *acts,
                   const attn_params *w, const hax_model_config *cfg, const int *seq_off,
                   int n_seq);

// RoPE in place on x [n_tok, n_heads·hd] (ld_x), positions 0.. per sequence;
// inverse = 1 applies the transpose (the backward of the rotation); bf16 = 1
// rounds cos, sin and the result to bf16.
void rope_apply(float *x, int ld_x, const int *seq_off, int n_seq, int n_heads, int hd,
                float theta, int inverse, int bf16);

#endif
