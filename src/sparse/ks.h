// src/sparse/ks.h: key selection (KS) of the sparse branch (MODEL.md §5.5, §5.8,
// §5.9; quirks 3, 5, 8): the key-score MLP on detached features, the
// cumulative top-k selection, the ranking-loss candidates and the pairwise
// ranking loss, forward and backward, in both semantics.
//
// Layout (the ops conventions): a packed batch, sequence s is rows
// seq_off[s] .. seq_off[s+1]-1, positions within a sequence start at 0.
// K and Q are [n_tok, N] slices with leading dimensions (K already divided by
// sqrt(N), Q unscaled), as the sparse branch computes them. model_len L is the
// reference's padded length (batch->model_len); n_pad = L - n per sequence.
// Key positions everywhere here (sel, cand) are LOCAL positions 0..n-1.
//
// Nothing here produces a gradient for K or Q: the features and the ranking
// targets are detached; the MLP parameters learn from the ranking loss only.
//
// Two levels: the single ops (ks_features ... ks_rank_loss_backward), and a
// per-layer state (ks_state, ks_forward, ks_backward) that chains them with
// buffers allocated once.
#ifndef HAX_SPARSE_KS_H
#define HAX_SPARSE_KS_H

#include <stddef.h>
#include <stdint.h>

#include "src/model/model_config.h"

// The KS MLP parameters (pointers into the caller's flat buffer, PyTorch
// layout): dx_proj_1 weight [2N, 2N] bias [2N], dx_proj_2 weight [2N, 2N]
// bias [2N], dx_proj_3 weight [1, 2N] bias [1].
typedef struct {
    const float *w1, *b1, *w2, *b2, *w3, *b3;
} ks_params;

// Their gradients, same shapes (accumulated +=).
typedef struct {
    float *w1, *b1, *w2, *b2, *w3, *b3;
} ks_grads;

// ---------------------------------------------------------------- the ops

// Features T [n_tok, 2N] = [TK, TQ] (key features first). TK = K.
// C_t = sum_{p<=t} Q_p within the sequence (accumulated in double).
// SEMANTICS_REFERENCE: per sequence and feature, w^2 = sum_{t<n} C_t^2 +
//   n_pad * C_{n-1}^2 (the pads repeat the total), TQ = C / max(w, 1e-12).
// SEMANTICS_CAUSAL (paper Eq. 14): TQ_t = C_t / max(||C_t||, 1e-12) per vector.
// Dies if some sequence is longer than model_len (reference semantics only).
void ks_features(float *T, const float *K, int ldk, const float *Q, int ldq, const int *seq_off,
                 int n_seq, int model_len, int N, hax_semantics sem);

// Score MLP on all n_tok rows: h1 = relu(W1 T + b1), h2 = relu(W2 h1 + b2),
// score = W3 h2 + b3. h1, h2 [n_tok, 2N] are kept for the backward.
void ks_mlp_forward(float *score, float *h1, float *h2, const float *T, const ks_params *p,
                    int n_tok, int N);

// Floats of scratch that ks_mlp_backward needs for n_rows rows.
size_t ks_mlp_scratch_floats(int n_rows, int N);

// Backward of the MLP from dscore [n_tok] into the six parameter gradients
// (+=); no input gradient (T is detached). Only the rows listed in
// rows[0..n_rows) (global packed row indices, distinct) are visited, since
// dscore is non-zero only at the ranking candidates; rows == NULL means rows
// 0..n_rows-1. scratch: ks_mlp_scratch_floats(n_rows, N) floats.
void ks_mlp_backward(const ks_grads *g, const ks_params *p, const float *T, const float *h1,
                     const float *h2, const float *dscore, const int *rows, int n_rows, int N,
                     float *scratch);

// Cumulative top-k. For each query t of each sequence: the k_c keys j <= t
// with the highest score (all of 0..t when t+1 <= k_c); among equal scores the
// lower index wins. sel [n_tok, k_c]: row t holds the min(t+1, k_c) selected
// local key positions in ascending order, then -1. O(n k_c) per sequence.
void ks_cumtopk(int *sel, const float *score, const int *seq_off, int n_seq, int k_c);

// Ranking-loss candidates: cand [n_seq, k_c], per sequence a uniform random
// min(n, k_c)-subset of its real positions 0..n-1, ascending, then -1 in the
// unused slots. Stream: rng (seed, RNG_KS, step, layer, (uint32)sample_id[s]),
// so a sample draws the same candidates on whichever rank holds it. The
// caller passes batch->sample_idx (or injects the golden ks_selected_idx into
// cand instead of calling this).
// n < k_c (the reference would pick pad positions there; joint recall never
// has n < k_c): all n real positions are the candidates, and that sequence's
// loss is the mean over its n^2 pairs.
void ks_sample_candidates(int *cand, const int *seq_off, int n_seq, const int64_t *sample_id,
                          int k_c, uint64_t seed, uint32_t step, uint32_t layer);

// Ranking loss forward. For sequence s with m_s = number of candidates (the
// entries of cand row s before the first -1; each must be a distinct position
// < n, or the call dies): x_m = score[I_m];
// y_m = sum_{t=I_m}^{n-1} sigmoid(Q_t . K_{I_m})  (+ 0.5 n_pad in reference
// semantics: every pad query adds sigmoid(0); not in causal semantics), in
// double; y [n_seq, k_c] (unused slots 0) is kept for the backward and is the
// golden dbg.layers.{i}.ks_selected_attn.
// Returns sum over the n_seq sequences of (1/m_s^2) sum_{m,m'} BCEwithlogits(
// x_m - x_m', T_mm'), T = 1, 0.5, 0 for y_m >, ==, < y_m' (the diagonal
// included). The caller divides by the GLOBAL sequence count (the reference's
// mean over the batch) and sums over layers.
double ks_rank_loss_forward(double *y, const float *score, const float *K, int ldk,
                            const float *Q, int ldq, const int *cand, const int *seq_off,
                            int n_seq, int model_len, int N, int k_c, hax_semantics sem);

// The two halves of ks_rank_loss_forward: the targets y alone, and the loss
// from given targets (e.g. the golden ks_selected_attn).
void ks_rank_targets(double *y, const float *K, int ldk, const float *Q, int ldq, const int *cand,
                     const int *seq_off, int n_seq, int model_len, int N, int k_c,
                     hax_semantics sem);
double ks_rank_loss_pairs(const float *score, const double *y, const int *cand, const int *seq_off,
                          int n_seq, int k_c);

// Ranking loss backward: dscore[seq_off[s] + I_m] += scale * d(returned sum)/dx_m,
// scale = d(total loss)/d(returned sum) (e.g. gate_loss_weight / global n_seq).
void ks_rank_loss_backward(float *dscore, const float *score, const double *y, const int *cand,
                           const int *seq_off, int n_seq, int k_c, float scale);

// Global packed rows of the candidates (distinct), for ks_mlp_backward.
// rows: at least n_seq * k_c ints. Returns the number written.
int ks_candidate_rows(int *rows, const int *cand, const int *seq_off, int n_seq, int k_c);

// ---------------------------------------------------------------- bf16-pure
//
// The same ops in the reference's pure-bf16 regime (train.precision
// bf16-pure, MODEL.md §0, §5.5; README "Precision"): every tensor the
// reference materialises is a bf16 value, each op computing in fp32 from bf16
// inputs (sums accumulate in fp32; here in double, then rounded to float)
// and rounding its output once. K and Q are bf16 values (the branch rounds
// them). Written R() below.

// The running query sum's accumulator (torch.cumsum over the sequence axis,
// dim 1 of [B, L, N], an outer dimension: PyTorch's scan_outer_dim kernel
// carries the running sum in the tensor's dtype, rounding after every add):
// 1 (the default) or, with HAX_KS_CUMSUM_BF16_ACC=0, an fp32 accumulator
// rounded only as each output is stored. Dies on another value.
int ks_cumsum_bf16_acc(void);

// Features (reference semantics): TK = K; C_t = R(C_{t-1} + Q_t) (bf16
// accumulator; fp32 with bf16_acc = 0, C_t = R(acc)); the pads repeat C_{n-1};
// w = R(sqrt(sum_t C_t^2 + n_pad C_{n-1}^2)); den = R(max(w, 1e-12));
// TQ = R(C / den) (F.normalize: norm, clamp_min, divide, each a bf16 op).
void ks_features_bf16(float *T, const float *K, int ldk, const float *Q, int ldq, const int *seq_off,
                      int n_seq, int model_len, int N, int bf16_acc);

// MLP: h1 = relu(R(W1 T + b1)), h2 = relu(R(W2 h1 + b2)), score = R(W3 h2 + b3).
void ks_mlp_forward_bf16(float *score, float *h1, float *h2, const float *T, const ks_params *p,
                         int n_tok, int N);
// Its backward: dh2 = R(dscore W3), dh1 = R(dh2' W2) (ReLU masks exact); the
// parameter gradients as ks_mlp_backward (the engine rounds them).
void ks_mlp_backward_bf16(const ks_grads *g, const ks_params *p, const float *T, const float *h1,
                          const float *h2, const float *dscore, const int *rows, int n_rows, int N,
                          float *scratch);

// Targets: a_tm = R(Q_t . K_I) (a bf16 GEMM), s = R(sigmoid(a)), y_m =
// R(sum_{t >= I} s + 0.5 n_pad) (the pads' sigmoid(0) in reference semantics).
void ks_rank_targets_bf16(double *y, const float *K, int ldk, const float *Q, int ldq, const int *cand,
                          const int *seq_off, int n_seq, int model_len, int N, int k_c,
                          hax_semantics sem);
// Loss (torch 2.x binary_cross_entropy_with_logits on bf16): P = R(x_a - x_b),
// term = R(R((1 - T) P) - R(log_sigmoid(P))), per sequence the mean of its
// m^2 terms in double (the reference's final bf16 mean is not rounded here:
// it is a reported number only).
double ks_rank_loss_pairs_bf16(const float *score, const double *y, const int *cand, const int *seq_off,
                               int n_seq, int k_c);
// Backward (autograd's: the explicit binary_cross_entropy_with_logits
// backward, the mean's division, then the broadcast subtraction's two sums):
// dP_ab = R(R(R(R(sigmoid(P_ab)) - T_ab) scale) / m^2), scale the bf16 weight
// over the sequence count (the engine's gate_scale in bf16-pure);
// dscore[I_a] += R(R(sum_b dP_ab) + R(-sum_b dP_ba)).
void ks_rank_loss_backward_bf16(float *dscore, const float *score, const double *y, const int *cand,
                                const int *seq_off, int n_seq, int k_c, float scale);

// ---------------------------------------------------------------- per layer

typedef struct {
    int max_tok, max_seq, N, k_c;  // capacity
    int bf16;                      // set by the caller: 1 runs the bf16-pure ops (causal semantics: the
                                   // double features rounded, no reference to follow)
    int n_tok, n_seq;              // the last forward
    const int *seq_off;            // the last forward's (the caller keeps it until backward)
    float *T;                      // [max_tok, 2N] features
    float *h1, *h2;                // [max_tok, 2N] post-ReLU activations
    float *score;                  // [max_tok] key score (golden dbg.layers.{i}.key_score)
    int *sel;                      // [max_tok, k_c] selected keys per query (see ks_cumtopk)
    int has_loss;                  // 1 if the last forward computed the ranking loss
    int *cand;                     // [max_seq, k_c] copy of the candidates
    double *y;                     // [max_seq, k_c] ranking targets
    double gate_loss;              // the last forward's ks_rank_loss_forward sum
    float *dscore;                 // [max_tok]
    int *rows;                     // [max_seq * k_c]
    float *scratch;                // ks_mlp_scratch_floats(max_seq * k_c, N)
} ks_state;

void ks_state_init(ks_state *st, int max_tok, int max_seq, int N, int k_c);
void ks_state_free(ks_state *st);

// Features, MLP, cumulative top-k (st->score, st->sel); with cand != NULL
// (training) also the ranking loss (st->y), returned (else 0 is returned).
double ks_forward(ks_state *st, const ks_params *p, const float *K, int ldk, const float *Q,
                  int ldq, const int *seq_off, int n_seq, int model_len, hax_semantics sem,
                  const int *cand);

// From the last training forward: MLP parameter gradients (+=) of
// scale * (returned loss). No-op if the last forward had no loss.
void ks_backward(ks_state *st, const ks_params *p, const ks_grads *g, float scale);

#endif
