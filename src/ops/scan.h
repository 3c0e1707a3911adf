// src/ops/scan.h: Mamba's selective scan (MODEL.md §2.2 step 7; mamba_ssm
// selective_scan_ref with delta_softplus and delta_bias), forward and backward,
// on a packed batch. Per sequence and channel c (state s[c, 0..N-1], zero at the
// sequence start):
//
//   Δ_t[c]  = softplus(Δraw_t[c] + b_dt[c])        (threshold 20)
//   A[c,n]  = −exp(A_log[c,n])
//   s[c,n] ← exp(Δ_t[c]·A[c,n]) · s[c,n] + Δ_t[c] · B_t[n] · x_t[c]
//   y_t[c]  = Σ_n C_t[n] · s[c,n] + D[c] · x_t[c]
//
// The output y is NOT gated: the mixer multiplies by silu(z) (and merges the
// sparse branch) itself. B and C are shared by all E channels (one group).
//
// Memory: the forward stores the state at the start of every chunk of
// SCAN_CHUNK positions of each sequence (the checkpoints); the backward
// recomputes the states inside one chunk at a time from them, sweeping the
// chunks in reverse. That is about n_tok·E·N / SCAN_CHUNK floats instead of
// n_tok·E·N.
#ifndef HAX_OPS_SCAN_H
#define HAX_OPS_SCAN_H

#include <stddef.h>

#define SCAN_CHUNK 64

// Floats of the checkpoint buffer for a packed batch of n_tok positions in
// n_seq sequences: (n_tok / SCAN_CHUNK + n_seq) · E · N.
size_t scan_ckpt_floats(int n_tok, int n_seq, int E, int N);

// y [n_tok, E] (dense, written) from x [n_tok, E] (ld_x), draw = Δraw [n_tok, E]
// (dense; the dt bias is added here), dt_bias [E], A_log [E, N], Bm and Cm
// [n_tok, N] (leading dimension ld_bc: slices of x_proj's output), D [E].
// ckpt [scan_ckpt_floats] receives the chunk-start states (may be NULL when no
// backward follows).
void scan_forward(float *y, float *ckpt, const float *x, int ld_x, const float *draw,
                  const float *dt_bias, const float *A_log, const float *Bm, const float *Cm,
                  int ld_bc, const float *D, const int *seq_off, int n_seq, int E, int N);

// From dy [n_tok, E] (dense; the gradient of the ungated y) and the forward's
// inputs and checkpoints, ACCUMULATES (+=): dx [n_tok, E] (ld_dx), ddraw
// [n_tok, E] (dense), dBm and dCm [n_tok, N] (ld_dbc), and the parameter
// gradients ddt_bias [E], dA_log [E, N], dD [E]. Any of the parameter
// gradients may be NULL. Parameter gradients get one partial per sequence,
// added in sequence order (packed == one call per sequence, and independent of
// the thread count).
void scan_backward(float *dx, int ld_dx, float *ddraw, float *dBm, float *dCm, int ld_dbc,
                   float *ddt_bias, float *dA_log, float *dD, const float *dy, const float *ckpt,
                   const float *x, int ld_x, const float *draw, const float *dt_bias,
                   const float *A_log, const float *Bm, const float *Cm, int ld_bc,
                   const float *D, const int *seq_off, int n_seq, int E, int N);

#endif
