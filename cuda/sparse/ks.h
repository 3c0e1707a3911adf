// cuda/sparse/ks.h: key selection (KS) of the sparse branch on the GPU, the
// CUDA version of src/sparse/ks.h (MODEL.md §5.5, §5.8; quirks 3, 5, 8): the
// detached features, the key-score MLP, the cumulative top-k, the ranking-loss
// candidates (drawn on the device with the CPU's Philox stream, so both draw
// the same), the ranking targets and the pairwise ranking loss.
//
// Conventions (cuda/core/common.h): every array is a DEVICE pointer laid out as for
// the CPU op of the same name (packed batch, seq_off [n_seq + 1] on the
// device, K/Q with leading dimensions, key positions LOCAL 0..n-1); sizes are
// host ints; backward ops accumulate +=; nothing allocates or waits for the
// host, so a step can be captured in a CUDA graph; fixed summation orders
// (results repeat bit for bit). ks_params / ks_grads (src/sparse/ks.h) hold
// DEVICE pointers here.
//
// Exactness against the CPU: given the same scores, cuda_ks_cumtopk selects
// exactly the CPU's keys (ties: the lower index); cuda_ks_sample_candidates
// draws exactly the CPU's candidates; the targets are summed in double.
//
// Errors the CPU dies on are found on the device here (no host wait): a bad
// candidate row (a position >= n, a repeat, a non -1 after -1) or a sequence
// longer than model_len (reference semantics) sets the bit CU_ERR_KS of the
// device error flag (cuda/core/common.cuh); the bad slot / sequence is then skipped.
#ifndef HAX_CU_SPARSE_KS_H
#define HAX_CU_SPARSE_KS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "src/sparse/ks.h"
#ifdef __cplusplus
}
#endif

#define CU_ERR_KS 4  // the device error flag's bit for bad KS inputs (see above)

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------- the ops

// Features T [n_tok, 2N] = [K, TQ] as ks_features (N <= 128).
void cuda_ks_features(float *T, const float *K, int ldk, const float *Q, int ldq, const int *seq_off,
                      int n_seq, int n_tok, int model_len, int N, hax_semantics sem);

// Score MLP on all n_tok rows (h1, h2 [n_tok, 2N] kept for the backward).
void cuda_ks_mlp_forward(float *score, float *h1, float *h2, const float *T, const ks_params *p,
                         int n_tok, int N);

// Workspace of cuda_ks_mlp_backward for n_rows rows.
size_t cuda_ks_mlp_workspace_bytes(int n_rows, int N);

// MLP parameter gradients (+=) from dscore [n_tok], visiting the rows
// rows[0..n_rows) (device; global packed row indices; a row < 0 is skipped,
// i.e. contributes nothing). rows == NULL: rows 0..n_rows-1.
void cuda_ks_mlp_backward(const ks_grads *g, const ks_params *p, const float *T, const float *h1,
                          const float *h2, const float *dscore, const int *rows, int n_rows, int N,
                          void *work);

// Cumulative top-k, as ks_cumtopk: sel [n_tok, k_c] (a block per sequence: the
// set before every 64-position chunk by merges of sorted runs, then the chunks
// walked in parallel). k_c at most 3040. The previous kernel
// (HAX_SPARSE_KS=old); cuda_ks_cumtopk_exit is the new one.
void cuda_ks_cumtopk(int *sel, const float *score, const int *seq_off, int n_seq, int k_c);

// The same selections from each key's exit position: key j is selected at
// step t exactly when j <= t < exit_at[j], exit_at[j] the position where the
// count of keys better than j (any position, in order) reaches k_c (n if it
// never does). One thread per key finds it, then every row is written on its
// own (one warp per row). exit_at [n_tok] is workspace; n_tok = seq_off[n_seq].
// k_c at most 6000.
void cuda_ks_cumtopk_exit(int *sel, int *exit_at, const float *score, const int *seq_off, int n_seq, int n_tok,
                          int k_c);

// Candidates, as ks_sample_candidates: cand [n_seq, k_c]; sample_id [n_seq]
// (device int64, batch->sample_idx). Same stream and algorithm as the CPU.
void cuda_ks_sample_candidates(int *cand, const int *seq_off, int n_seq, const int64_t *sample_id,
                               int k_c, uint64_t seed, uint32_t step, uint32_t layer);

// Ranking targets y [n_seq, k_c] (double, unused slots 0), as ks_rank_targets.
void cuda_ks_rank_targets(double *y, const float *K, int ldk, const float *Q, int ldq,
                          const int *cand, const int *seq_off, int n_seq, int model_len, int N,
                          int k_c, hax_semantics sem);

// Workspace of cuda_ks_rank_loss_pairs.
size_t cuda_ks_loss_workspace_bytes(int n_seq);

// The loss sum of ks_rank_loss_pairs, written to *loss (one device double):
// per-sequence means, added in sequence order.
void cuda_ks_rank_loss_pairs(double *loss, const float *score, const double *y, const int *cand,
                             const int *seq_off, int n_seq, int k_c, void *work);

// dscore[seq_off[s] + I_m] += scale * d(sum)/dx_m, as ks_rank_loss_backward.
void cuda_ks_rank_loss_backward(float *dscore, const float *score, const double *y, const int *cand,
                                const int *seq_off, int n_seq, int k_c, float scale);

// rows [n_seq * k_c]: slot (s, m) gets seq_off[s] + cand[s, m], or -1 for
// an unused slot (for cuda_ks_mlp_backward with n_rows = n_seq * k_c).
void cuda_ks_candidate_rows(int *rows, const int *cand, const int *seq_off, int n_seq, int k_c);

// ---------------------------------------------------------------- bf16-pure
//
// The bf16-pure ops of src/sparse/ks.h (the same roundings at the same
// points, the same summation orders where a sum is sequential): features
// (reference semantics; one thread per (sequence, feature), sequential over
// the positions as the bf16 running sum must be), MLP forward / backward,
// targets (lanes over the queries, warp sum: the CPU sums in order, so y may
// differ where the double sum rounds apart), loss, loss backward.
void cuda_ks_features_bf16(float *T, const float *K, int ldk, const float *Q, int ldq, const int *seq_off,
                           int n_seq, int model_len, int N, int bf16_acc);
void cuda_ks_mlp_forward_bf16(float *score, float *h1, float *h2, const float *T, const ks_params *p,
                              int n_tok, int N);
void cuda_ks_mlp_backward_bf16(const ks_grads *g, const ks_params *p, const float *T, const float *h1,
                               const float *h2, const float *dscore, const int *rows, int n_rows, int N,
                               void *work);
void cuda_ks_rank_targets_bf16(double *y, const float *K, int ldk, const float *Q, int ldq,
                               const int *cand, const int *seq_off, int n_seq, int model_len, int N,
                               int k_c, hax_semantics sem);
void cuda_ks_rank_loss_pairs_bf16(double *loss, const float *score, const double *y, const int *cand,
                                  const int *seq_off, int n_seq, int k_c, void *work);
void cuda_ks_rank_loss_backward_bf16(float *dscore, const float *score, const double *y, const int *cand,
                                     const int *seq_off, int n_seq, int k_c, float scale);

// ---------------------------------------------------------------- long sequences (HAX_SPARSE_LONG)
//
// cuda/sparse/ks_long.cu: the features and the cumulative top-k with
// parallelism that grows with the sequence length (issue 14), the same bits
// as the ops above (see that file); run on an H100 on 2026-12-07 (README).

// HAX_SPARSE_LONG (environment, read once): `old` (0) never runs the
// long-sequence kernels of the sparse branch (LSH buckets, key selection's
// features and top-k, the LSH keys by bucket); `new` or unset (1) runs them
// where cuda_sparse_long_use says the batch's sequences are long; `all`
// (2) always (timings, tests); anything else is an error.
int cuda_sparse_long_env(void);
// Mode 1's rule: at least CU_SP_LONG_MIN_LEN positions per sequence on
// average (the previous kernels take a block per sequence; the long ones
// spread a sequence over blocks but take more launches; measured faster from
// 1,024 up, the shortest length measured). Mode 2: always.
#define CU_SP_LONG_MIN_LEN 1024
int cuda_sparse_long_use(int mode, int n_seq, int n_tok);

// Features as cuda_ks_features (bf16_ref = 0, the same bits in both
// semantics) or cuda_ks_features_bf16 (bf16_ref = 1, bf16-pure reference
// semantics, accumulator bf16_acc): cbuf [n_tok, N] doubles of scratch
// (fp32 only; the state passes its h1, which the MLP then overwrites), work
// cuda_ks_features_long_doubles(n_seq, N) doubles.
size_t cuda_ks_features_long_doubles(int max_seq, int N);
void cuda_ks_features_long(float *T, double *cbuf, double *work, const float *K, int ldk, const float *Q,
                           int ldq, const int *seq_off, int n_seq, int n_tok, int model_len, int N,
                           hax_semantics sem, int bf16_ref, int bf16_acc);

// Cumulative top-k as cuda_ks_cumtopk (the same selections) for k_c up to
// KS_LONG_MAX_KC: work cuda_ks_cumtopk_long_ints(max_tok, max_seq, k_c) ints
// for any batch within max_tok positions and max_seq sequences; len_hint:
// a guess of the longest sequence (sizes the grids only).
#define KS_LONG_MAX_KC 1024
size_t cuda_ks_cumtopk_long_ints(int max_tok, int max_seq, int k_c);
void cuda_ks_cumtopk_long(int *sel, int *work, const float *score, const int *seq_off, int n_seq, int n_tok,
                          int len_hint, int k_c);

// ---------------------------------------------------------------- per layer

// HAX_SPARSE_KS (environment, read once): `old` runs the previous kernels of
// the sparse branch's non-attention phases (LSH buckets, key selection
// forward and backward, allowed lists, transposed lists), `new` (or unset)
// the faster ones; anything else is an error. Both give the same bits.
// Returns 1 for old.
int cuda_ks_old_kernels(void);

// HAX_KS_TARGETS (environment, read once): `warp` (or unset) runs the new
// kernels' targets one warp per candidate (ks_targets_new_kernel), `tile`
// from shared-memory tiles (ks_targets_tile_kernel); the same bits. Returns 1
// for warp.
int cuda_ks_targets_warp(void);

typedef struct {
    int max_tok, max_seq, N, k_c;  // capacity
    int bf16;                      // set by the caller: 1 runs the bf16-pure ops (as ks_state.bf16)
    int old;                       // 1: the previous kernels (set at init from cuda_ks_old_kernels; the
                                   // caller may change it between calls)
    int targets_warp;              // 1: the new kernels' targets by one warp per candidate reading its rows
                                   // from global memory (HAX_KS_TARGETS=warp), 0: from tiles staged in
                                   // shared memory for 8 candidates at once (the same bits; set at init from
                                   // cuda_ks_targets_warp, the caller may change it)
    int n_tok, n_seq;              // the last forward
    const int *seq_off;            // the last forward's (device; kept by the caller until backward)
    float *T, *h1, *h2;            // [max_tok, 2N]
    float *score;                  // [max_tok] key score
    int *sel;                      // [max_tok, k_c] selected keys per query
    int has_loss;                  // the last forward computed the ranking loss
    int *cand;                     // [max_seq, k_c] candidates (may be filled by the caller)
    double *y;                     // [max_seq, k_c] ranking targets
    double *loss;                  // [1] the last forward's ranking-loss sum (device)
    float *dscore;                 // [max_tok]
    int *rows;                     // [max_seq * k_c]
    void *work;                    // loss + MLP-backward workspace
    int *exit_at;                  // [max_tok] new kernels: each key's exit position (cuda_ks_cumtopk_exit)
    int *cand_m;                   // [max_seq] new kernels: the usable candidates of each sequence (0 for a
                                   // row with a position outside its sequence)
    double *row_loss;              // [max_seq * k_c] new kernels: each candidate's row of pair terms
    int long_mode;                 // the long-sequence kernels (HAX_SPARSE_LONG: 0 never, 1 by
                                   // cuda_sparse_long_use, 2 always; set at init, the caller may change it)
    double *long_feat;             // their features' workspace (cuda_ks_features_long_doubles)
    int *long_topk;                // their top-k's workspace (cuda_ks_cumtopk_long_ints; NULL for k_c
                                   // above KS_LONG_MAX_KC, where the top-k of the new kernels runs)
} cuda_ks_state;

// Steps of cuda_ks_forward / cuda_ks_backward with the new kernels (old ==
// 0; cuda/sparse/ks_rank.cu). Forward, after the scores: the targets
// (cand, device [n_seq, k_c], copied into st->cand; st->cand_m), the loss
// rows and their sum into *st->loss. Backward: st->rows, st->dscore at the
// candidate rows and the MLP backward's gathered rows (its workspace
// layout): ds [n_seq * k_c], Tg, h1g, h2g [n_seq * k_c, 2N], dh1 = dh2 = 0.
void cuda_ks_targets_loss(cuda_ks_state *st, const float *K, int ldk, const float *Q, int ldq, const int *cand,
                          int model_len, hax_semantics sem);
void cuda_ks_loss_backward_gather(cuda_ks_state *st, float scale, float *Tg, float *h1g, float *h2g, float *dh1,
                                  float *dh2, float *ds);

// Device bytes a state of this capacity needs (one block, carved by init).
size_t cuda_ks_state_bytes(int max_tok, int max_seq, int N, int k_c);
// Points the state's buffers into mem (cuda_ks_state_bytes bytes of device
// memory, owned by the caller); zeroes dscore. Host-side checks only.
void cuda_ks_state_init(cuda_ks_state *st, void *mem, int max_tok, int max_seq, int N, int k_c);

// Features, MLP, cumulative top-k (st->score, st->sel); with cand != NULL
// (device [n_seq, k_c], may be st->cand) also the targets and the loss sum
// (st->y, *st->loss; not divided by the global sequence count). n_tok =
// seq_off[n_seq] (host int). Without cand, *st->loss is set to 0.
void cuda_ks_forward(cuda_ks_state *st, const ks_params *p, const float *K, int ldk, const float *Q,
                     int ldq, const int *seq_off, int n_seq, int n_tok, int model_len,
                     hax_semantics sem, const int *cand);

// From the last training forward: MLP gradients (+=) of scale * (loss sum).
// No-op if the last forward had no loss.
void cuda_ks_backward(cuda_ks_state *st, const ks_params *p, const ks_grads *g, float scale);

#ifdef __cplusplus
}
#endif

#endif
