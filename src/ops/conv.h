// src/ops/conv.h: depthwise causal conv1d + SiLU (MODEL.md §1.4; causal_conv1d_fn
// with activation "silu"), on a packed batch. Used by the Mamba and Mamba-2
// mixers. Never crosses a sequence boundary: positions before a sequence's
// start read as 0.
#ifndef HAX_OPS_CONV_H
#define HAX_OPS_CONV_H

// out[t, c] = silu(b[c] + sum_{k<K} w[c*K + k] * inp[t-(K-1)+k, c]) within each
// sequence (inputs before the sequence start are 0). b may be NULL (no bias).
// inp has leading dimension ld_inp; out and pre are dense [n_tok, C]; pre keeps
// the pre-activation for backward (may be NULL when no backward follows).
// w is the conv1d weight [C, 1, K] as C×K floats; w[c*K + K-1] multiplies the
// current position.
void conv_silu_forward(float *out, float *pre, const float *inp, int ld_inp, const float *w,
                       const float *b, const int *seq_off, int n_seq, int C, int K);

// Accumulates (+=) dinp (leading dimension ld_dinp), dw [C*K], db [C] (db may
// be NULL when there is no bias; dinp may be NULL) from dout [n_tok, C] dense,
// using the saved pre-activation pre [n_tok, C] and the forward input inp.
// dw and db get one partial per sequence, added in sequence order, so a packed
// batch gives the same result as the sequences passed one call at a time.
void conv_silu_backward(float *dinp, int ld_dinp, float *dw, float *db, const float *dout,
                        const float *pre, const float *inp, int ld_inp, const float *w,
                        const int *seq_off, int n_seq, int C, int K);

#endif
