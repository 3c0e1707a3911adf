// src/ops/ssd.h: the Mamba-2 state-space scan ("SSD", MODEL.md §3.2 step 6), on
// the CPU (the gated RMSNorm that follows it is in src/ops/basic.h).
//
// SSD, per sequence and head h (P channels per head, state N, one group: B and
// C are shared by all heads), state S[p, n] starting at 0 for each sequence:
//   Δ_t[h]   = softplus(dt_t[h] + dt_bias[h])          (threshold 20)
//   A[h]     = -exp(A_log[h])
//   S[p,n]  <- exp(Δ_t[h]·A[h])·S[p,n] + Δ_t[h]·x_t[h,p]·B_t[n]
//   y_t[h,p] = Σ_n C_t[n]·S[p,n] + D[h]·x_t[h,p]
// x_t[h, p] is column h·P + p of x (head-major). The batch is packed: sequence
// s is rows seq_off[s] .. seq_off[s+1]-1 and the scan restarts at each start.
//
// Memory: the forward keeps Δ [n_tok, H] and one checkpoint of the state per
// SSD_CHUNK positions of each sequence (ssd_ckpt_floats); the backward
// recomputes the states of one chunk at a time from its checkpoint.
#ifndef HAX_OPS_SSD_H
#define HAX_OPS_SSD_H

#include <stddef.h>

#define SSD_CHUNK 64  // positions between two stored states

// Number of floats of the state checkpoints of a packed batch:
// H·P·N per chunk, ceil(len/SSD_CHUNK) chunks per sequence.
size_t ssd_ckpt_floats(const int *seq_off, int n_seq, int H, int P, int N);
// Its upper bound for any split of n_tok positions into n_seq sequences
// (Σ ceil(len/SSD_CHUNK) <= n_seq + n_tok/SSD_CHUNK): the engine's sizing.
size_t ssd_ckpt_floats_max(int n_tok, int n_seq, int H, int P, int N);

// Forward. y [n_tok, H·P] (ld_y) is written; delta [n_tok, H] (dense) receives
// Δ; ckpt [ssd_ckpt_floats] receives the checkpoints (may be NULL when no
// backward follows). x [n_tok, H·P] (ld_x), dt [n_tok, H] (ld_dt, raw, before
// dt_bias), B and C [n_tok, N] (both with leading dimension ld_bc: slices of
// the conv output). dt_bias, A_log, D are [H].
void ssd_forward(float *y, int ld_y, float *delta, float *ckpt, const float *x, int ld_x,
                 const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                 const float *dt_bias, const float *A_log, const float *D, const int *seq_off,
                 int n_seq, int H, int P, int N);

// Backward: accumulates (+=) dx [n_tok, H·P] (ld_dx), ddt [n_tok, H] (ld_ddt,
// the gradient of the raw dt), dB, dC [n_tok, N] (ld_dbc), and the parameter
// gradients ddt_bias, dA_log, dD [H], from dy [n_tok, H·P] (ld_dy). delta and
// ckpt are the forward's. Any of dx, ddt, dB, dC may be NULL. Allocates its
// own scratch per call (per-thread chunk states, per-sequence partials, and
// H·n_tok·2N floats when there are fewer sequences than threads, so the heads
// of one long sequence run in parallel). Bit-identical for any thread count
// and for a packed batch vs its sequences one call at a time (heads' shares
// of dB/dC are added in head order; parameter gradients one sequence at a time).
void ssd_backward(float *dx, int ld_dx, float *ddt, int ld_ddt, float *dB, float *dC, int ld_dbc,
                  float *ddt_bias, float *dA_log, float *dD, const float *dy, int ld_dy,
                  const float *delta, const float *ckpt, const float *x, int ld_x,
                  const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                  const float *dt_bias, const float *A_log, const float *D, const int *seq_off,
                  int n_seq, int H, int P, int N);

#endif
