// cuda/sparse/sparse.h: the sparse attention branch on the GPU, the CUDA version of
// src/sparse/sparse.h (MODEL.md §5) with the same calling shape: a per-layer state
// allocated once, a forward that keeps what the backward needs, a backward
// that ACCUMULATES into dX, dW_xx and the key-selection MLP gradients.
//
// Conventions (cuda/core/common.h): every array argument is a DEVICE pointer laid out
// as for the CPU branch (packed batch, seq_off [n_seq + 1] on the device,
// leading dimensions); sizes are host ints. Forward and backward only enqueue
// work on the stream: no allocation, no host wait (a step can be captured in a
// CUDA graph); every buffer lives in the state, allocated by
// cuda_sparse_state_alloc.
//
//   KQ = X . W_xx^T [n_tok, 2N];  K = KQ[:, :N] / sqrt(N);  Q = KQ[:, N:];  V = X[:, :E]
//   attn_t = sum_{j allowed for t} softmax_j(Q_t . K_j) V_j
//
// The LSH statistics and projections are computed in double with the CPU's
// order of operations and no fused multiply-add, so the buckets are the CPU
// branch's bit for bit. The allowed keys of each query are the same sorted
// union as on the CPU (src/sparse/masks.c), stored at a fixed stride of row_cap
// entries per query (not compacted): row g is allow_key[g*row_cap ..
// g*row_cap + allow_cnt[g] - 1], local positions, increasing. `full` builds no
// lists (dense causal, O(n^2)). Empty rows: reference semantics uniform 1/L
// over all L padded positions with the CPU's factorised backward; causal 0.
// All sums run in a fixed order: results repeat exactly run to run.
//
// bf16-pure (bf16 = 1, set by the caller before each forward): the roundings
// of src/sparse/sparse.h at the same points (KQ, K, the LSH statistics and
// projections, key selection, scores, P, the output; dP, d score, dQ, dK,
// dV and dX's two bf16 shares in the backward).
#ifndef HAX_CU_SPARSE_H
#define HAX_CU_SPARSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "src/model/model_config.h"
#include "src/sparse/ks.h"  // ks_params / ks_grads: six weight pointers (here device pointers)

#define CU_SP_MAX_EV 12  // phase-timing events per call

typedef struct cu_sparse_state {
    // capacities, and the config it was made for
    int max_tok, max_seq, max_len, row_cap;
    int N, E, h, k_c, delta;     // delta: dilation (data_max_length / k_c), 0 without `dilated`
    unsigned mask;               // cfg->sparse_mask
    hax_semantics sem;
    int bf16;                    // bf16-pure (set by the caller; the backward uses the forward's)
    int bf16_made;               // made for cfg->precision bf16-pure: dXs allocated
    int attn_old;                // 1: the previous attention gathers (cuda/sparse/attn.cu), 0: the new ones,
                                 // 2: new forward, previous backward (the default; HAX_SPARSE_ATTN), for A/B
                                 // timing: set at alloc from HAX_SPARSE_ATTN=old; tests may set it
    int tiles;                   // the attention's gathers by tiles where they fit (HAX_SPARSE_TILES, set at
                                 // alloc; tests may set it): bit 1 dK/dV by dense tiles (cu_sp_tile_backward_kv),
                                 // bit 2 dQ and bit 4 the forward by staged key rounds (cu_sp_tile_backward_q,
                                 // cu_sp_tile_forward); else the lists' kernels as attn_old says
    int ks_old;                  // the previous kernels of the other phases (LSH buckets, key
                                 // selection, allowed lists, transposed lists): set at alloc from
                                 // HAX_SPARSE_KS (cuda_ks_old_kernels, cuda/sparse/ks.h); tests may set it
    int long_mode;               // the long-sequence kernels (HAX_SPARSE_LONG, cuda_sparse_long_env of
                                 // cuda/sparse/ks.h): 0 never, 1 where cuda_sparse_long_use says the
                                 // batch's sequences are long, 2 always; set at alloc, tests may set it
    // the last forward's shape
    int n_tok, n_seq, model_len;
    int long_on;                 // the last forward ran the long-sequence kernels (LSH buckets, key
                                 // selection's features and top-k, the LSH keys by bucket; the same bits)

    // device buffers (read-only for the caller, except the forced buckets)
    float *KQ;                   // [max_tok, 2N]: K / sqrt(N) in [:, :N], Q in [:, N:]
    float *dKQ;                  // [max_tok, 2N] backward scratch (the long kernels' forward keeps the
                                 // keys' causal LSH running sums there, [max_tok, N] doubles)
    float *dXs;                  // [max_tok, E] backward, bf16-pure: one share of dX at a time (NULL
                                 // unless bf16_made: fp32 runs keep their memory)
    int32_t *q_bucket, *k_bucket;// [max_tok] LSH buckets (-1 without LSH)
    float *hq_proj, *hk_proj;    // [max_tok, h] the projections (as the CPU's, float)
    double *lsh_stat;            // [max_tok + 4 max_seq, N] LSH statistics scratch
    int64_t *lsh_sorted;         // [max_tok] per sequence: (k bucket << 32 | position), sorted
    int *lsh_hist;               // the long kernels' counting sort of the LSH keys (NULL without LSH or
                                 // with more than CU_SP_LSH_CS_MAX_B buckets): per-chunk bucket counts
    int *allow_cnt;              // [max_tok] allowed keys per query (0 for `full`)
    int *allow_key;              // [max_tok, row_cap] the sorted lists
    float *allow_p;              // [max_tok, row_cap] softmax probabilities
    float *allow_ds;             // [max_tok, row_cap] backward: d score
    // the transposed lists (backward, cuda/sparse/trans.cu): key j's holders
    // are tr_ent[tr_off[j] .. + tr_cnt[j]), list slots g * row_cap + e, queries ascending
    uint32_t *tr_bits;           // [max_tok, W] per key: bit t = row t holds it (W = max_len / 32 rounded up)
    int *tr_cnt, *tr_off;        // [max_tok]
    int *tr_ent;                 // [max_tok, row_cap]
    float *lse, *rowD;           // [max_tok] `full` only
    double *seq_sv;              // [max_seq, E] sum_{j<n} V_j (reference empty rows; sequences with one only)
    double *empty_work;          // [max_seq, 2EN + E + 2N] reference empty-row backward
    double *empty_a;             // [max_tok] reference empty-row backward: dattn_t . S_V of empty rows t
    int *has_empty;              // [1] device flag: some row of the last forward was empty
    int *seq_empty;              // [max_seq] device flags: sequence s of the last forward has an empty row
    double *gate_loss;           // [1] device: the last forward's ranking-loss partial sum
    int64_t *sample_id;          // [max_seq] the sample ids of cuda_sparse_draw_candidates
    // Bucket injection (golden README): device [n_tok] buckets that replace
    // the computed ones in the following forwards (NULL: computed ones).
    const int32_t *force_q_bucket, *force_k_bucket;
    void *ks;                    // key-selection state (cuda/sparse/ks.h), NULL without KS
    // Phase timing (tests): with timing != 0, each forward / backward records
    // an event (cuda_event_record) at its start, ev[0], and after each phase,
    // ev[i] after the phase named ev_name[i]; n_ev events in all.
    int timing, n_ev, ev[CU_SP_MAX_EV];
    const char *ev_name[CU_SP_MAX_EV];
} cu_sparse_state;

// Device bytes a state of these capacities holds (for memory reports).
size_t cuda_sparse_state_bytes(const hax_model_config *cfg, int max_tok, int max_seq, int max_len);
// Allocates the state (device buffers) for batches of at most max_tok
// positions, max_seq sequences, sequences of at most max_len positions.
// Dies (hax_die) naming the field on a config the branch cannot run (the
// CPU's checks: sparse.c).
cu_sparse_state *cuda_sparse_state_alloc(const hax_model_config *cfg, int max_tok, int max_seq,
                                         int max_len);
void cuda_sparse_state_free(cu_sparse_state *st);

// Forward of one layer's branch (as sparse_forward, sparse.h), all device
// pointers: seq_off [n_seq + 1] with n_tok = seq_off[n_seq] given by the host,
// model_len = the padded length L (batch->model_len); X [n_tok, ldX] (V =
// X[:, :E]); W_xx [2N, E]; ks: dx_proj parameters (key_selection; else NULL);
// hash: H [N, h] row-major (LSH; else NULL); ks_cand [n_seq, k_c] ranking
// candidates (key_selection in training; else NULL). Writes attn [n_tok,
// ld_attn] (first E columns) and *st->gate_loss (device double: the ranking
// loss partial sum of sparse_forward; 0 without it). Host checks only: dies
// if n_tok / n_seq exceed the capacities or a needed input is NULL.
void cuda_sparse_forward(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok,
                         int model_len, const float *X, int ldX, const float *W_xx,
                         const ks_params *ks, const float *hash, const int *ks_cand, int training,
                         float *attn, int ld_attn);

// Backward of the last forward (same batch, X, W_xx, ks): accumulates (+=)
// dX[:, :E] (ld_dX), dW_xx [2N, E], and the dx_proj gradients in dks from the
// ranking loss scaled by gate_scale (key_selection in training; dks may be
// NULL otherwise).
void cuda_sparse_backward(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok,
                          const float *dattn, int ld_dattn, float gate_scale, const float *X,
                          int ldX, const float *W_xx, const ks_params *ks, float *dX, int ld_dX,
                          float *dW_xx, const ks_grads *dks);

// The LSH hash matrix drawn on the device: H[i] (device, n entries) = the
// i-th rng_normal_portable value of the stream (seed, domain, a, b, 0), as a
// float, rounded to bf16 if bf16 (bf16-pure) -- the host's draw bit for bit.
void cuda_lsh_draw_hash(float *H, int n, uint64_t seed, uint32_t domain, uint32_t a, uint32_t b, int bf16);

// The key-selection candidates of the batch drawn on the device, as
// ks_sample_candidates: cand [n_seq_pad, k_c] (device) for the first n_seq
// sequences of seq_off (device), from the host sample ids sample_idx [n_seq]
// (uploaded into the state), rows n_seq .. n_seq_pad - 1 all -1.
void cuda_sparse_draw_candidates(cu_sparse_state *st, int *cand, const int *seq_off, int n_seq, int n_seq_pad,
                                 const int64_t *sample_idx, uint64_t seed, uint32_t step, uint32_t layer);

// Whether the attention can take its gathers by tiles (st->tiles): N <= 32, E <= 128, rows of at most 128 keys.
int cuda_sparse_tiles_fit(const cu_sparse_state *st);

// Device buckets [n_tok] replacing the computed ones (NULL, NULL: computed).
void cuda_sparse_force_buckets(cu_sparse_state *st, const int32_t *q_bucket,
                               const int32_t *k_bucket);

#ifdef __cplusplus
}
#endif

#endif
