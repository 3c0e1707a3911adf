// sparse.h: the sparse attention branch of the Enhanced Mamba / Mamba-2 mixers
// (MODEL.md §5): Q/K projection, the component masks (sliding window, sink,
// dilated, sign-bin LSH, argmax LSH, key selection, full) and their union per
// query, the sparse softmax attention, forward and backward, in the
// reference's semantics or the paper's causal ones.
//
// Layout: a packed batch (hax_batch: seq_off, n_seq, model_len L). X is the
// SSM input [n_tok, ldX] (Mamba: ldX = E; Mamba-2: ldX = conv_dim, the first
// E channels are read). Per layer:
//   KQ = X . W_xx^T [n_tok, 2N];  K = KQ[:, :N] / sqrt(N);  Q = KQ[:, N:];  V = X[:, :E]
//   attn_t = sum_{j allowed for t} softmax_j(Q_t . K_j) V_j          [n_tok, E]
// No L x L mask or score matrix is built: each query gathers its allowed keys
// (at most sparse_keys of them; `full` walks 0..t without storing anything).
//
// Empty rows (no allowed key: dilated queries t < delta-1, LSH queries with no
// earlier same-bucket key): SEMANTICS_REFERENCE gives them the uniform
// distribution 1/L over all L padded positions (attn_t = (1/L) sum_{j<n} V_j,
// future keys included) and back-propagates into all L scores as autograd does
// (MODEL.md §5.6, golden README Q3); SEMANTICS_CAUSAL outputs 0 there and gives
// no gradient.
//
// bf16-pure (cfg->precision, read at every forward; README "Precision",
// MODEL.md §0, §5.2-§5.6): every tensor the reference materialises is rounded
// to bf16 where its op stores it (R() below; fp32 inside each op):
//   KQ = R(X·W_xxᵀ); K = R(KQ_k · fl(1/√N)) (torch divides a CUDA tensor by a
//   Python scalar as a multiplication by its float reciprocal)
//   LSH (reference semantics): μ = R(Σ_t x · fl(1/L)); c = R(x − μ);
//   ν = R(√(Σ c² + n_pad μ²)); den = R(max(ν, 1e-12)); x̃ = R(c / den);
//   proj = R(x̃·H), buckets from its signs (causal semantics: no reference
//   sequence to follow, the double path as in fp32)
//   key selection: src/sparse/ks.h's bf16 ops
//   softmax: s = R(Q·K), P = R(exp(s − max) / Σ exp), attn = R(Σ P V);
//   empty rows P = R(1/L), attn = R(P·Σ V) (`full`: P = R(exp(s − lse)))
//   backward: dP = R(dattn·V), ds = R(P (dP − Σ P dP)), dQ = R(Σ ds K),
//   dK = R(Σ ds Q), dV = R(Σ P dattn), dK_raw = R(dK · fl(1/√N)); dV and
//   xx_proj's dX reach dX as two bf16 contributions, dX = R(dX + R(share)).
// Empty rows (P = R(1/L) on all L keys) run their backward dense in
// bf16-pure, every dP and ds of the row rounded (not the factorised sums).
//
// Typical use per layer and step:
//   st = sparse_state_alloc(cfg, max_tok, max_seq, max_len);   // once
//   gl = sparse_forward(st, cfg, batch, X, ldX, W_xx, &ks, H, cand, training, attn, E);
//   ... gate_loss_total += gl / batch->global_n_seq ...
//   sparse_backward(st, cfg, batch, dattn, E, alpha / batch->global_n_seq,
//                   X, ldX, W_xx, &ks, dX, ldX, dW_xx, &dks);
#ifndef HAX_SPARSE_H
#define HAX_SPARSE_H

#include <stddef.h>
#include <stdint.h>

#include "src/io/batch.h"
#include "src/model/model_config.h"
#include "src/sparse/ks.h"

#ifdef __cplusplus
extern "C" {
#endif

// sparse_row_cap (the list capacity both backends use) is in
// src/model/sparse_patterns.h.

// Whether the CPU backend has a list rule for component c (src/sparse/masks.c);
// every component that is not SPF_DENSE must (tests/test_sparse_patterns.c).
int sparse_component_has_cpu_rule(int c);

// Key-selection MLP parameters (dx_proj_1/2/3, PyTorch layout, all inside the
// caller's flat buffer): w1 [2N, 2N], b1 [2N], w2 [2N, 2N], b2 [2N], w3 [1, 2N], b3 [1];
// and their gradients (accumulated +=), same shapes. The types of src/sparse/ks.h.
typedef ks_params hax_sparse_ks_params;
typedef ks_grads hax_sparse_ks_grads;

// Everything one layer's forward keeps for its backward and for hax-check.
// Sizes are for the capacities given to sparse_state_alloc; a forward fills
// the first n_tok / n_seq entries. Read-only for the caller, except where noted.
typedef struct hax_sparse_state {
    // capacities and the shape of the last forward
    int max_tok, max_seq, max_len, row_cap;
    int n_tok, n_seq, N, E, h, k_c;
    int has_empty;           // 1 if some row of the last forward had no allowed key
    int bf16;                // the last forward ran in bf16-pure (cfg->precision)

    float *KQ;               // [max_tok, 2N]: K (already / sqrt(N)) in [:, :N], Q in [:, N:]

    // LSH (sign_bin_lsh / argmax_lsh); buckets are -1 elsewhere
    int32_t *q_bucket;       // [max_tok] bucket of each query (sign-bin: sum_i 2^i [proj_i > 0]; argmax: index)
    int32_t *k_bucket;       // [max_tok] bucket of each key
    float *hq_proj;          // [max_tok, h] Q~ . H (the projection whose signs give the bits)
    float *hk_proj;          // [max_tok, h] K~ . H
    // Bucket injection (golden README: a float32 sign flip): when non-NULL,
    // these [n_tok] buckets replace the computed ones in the next forwards.
    // Set with sparse_force_buckets; the pointers must stay valid.
    const int32_t *force_q_bucket, *force_k_bucket;

    // The union of allowed keys per query, CSR over the packed queries:
    // row t holds allow_key[allow_off[t] .. allow_off[t+1]-1], sorted
    // increasing, as LOCAL positions within t's sequence. Not filled for `full`
    // (allow_off all 0 there: every j <= t is allowed).
    int *allow_off;          // [max_tok + 1]
    int *allow_key;          // [max_tok * row_cap]
    float *allow_p;          // [max_tok * row_cap] softmax probability of each allowed key
    float *allow_ds;         // [max_tok * row_cap] scratch (backward: d score)
    int *tr_off;             // [max_tok + 1] transpose of the CSR (key -> entries), backward
    int *tr_ent;             // [max_tok * row_cap] CSR entry indices, by key, queries ascending
    int *ent_row;            // [max_tok * row_cap] the packed query row of each CSR entry
    float *lse;              // [max_tok] `full` only: log-sum-exp of each row's scores
    float *rowD;             // [max_tok] `full` backward: sum_j P_tj dP_tj per row

    // Key selection (key_selection patterns; NULL otherwise): the workspace of
    // src/sparse/ks.h. ks->score [n_tok] is the key score (golden key_score),
    // ks->sel the per-query selections, ks->cand [n_seq, k_c] the candidates
    // used, ks->y [n_seq, k_c] (double) the ranking targets (ks_selected_attn).
    ks_state *ks;
    float *key_score;        // = ks->score (NULL without key selection)
    double gate_loss;        // this layer's ranking-loss partial sum (see sparse_forward)

    // scratch
    double *seq_sv;          // [max_seq, E] sum_{j<n} V_j per sequence (reference empty rows)
    int64_t *lsh_sorted;     // [max_tok] per sequence: (bucket << 32 | position), sorted
    float *dKQ;              // [max_tok, 2N] backward
    float *dXs;              // [max_tok, E] backward, bf16-pure: one share of dX at a time (made
                             // by the first bf16-pure backward)
} hax_sparse_state;

// Allocates the state for batches of at most max_tok packed positions,
// max_seq sequences and model length (padded L) at most max_len, for cfg's
// pattern (cfg->sparse_mask != 0). Dies (hax_die) on a config it cannot run.
hax_sparse_state *sparse_state_alloc(const hax_model_config *cfg, int max_tok, int max_seq,
                                     int max_len);
void sparse_state_free(hax_sparse_state *st);
// Bytes held by a state of these capacities (for memory reports).
size_t sparse_state_bytes(const hax_model_config *cfg, int max_tok, int max_seq, int max_len);

// Forward of one layer's branch. Inputs:
//   X [n_tok, ldX] (V = X[:, :E]); W_xx = xx_proj.weight [2N, E];
//   ks: the dx_proj parameters (key_selection patterns; NULL otherwise);
//   hash: H [N, h] row-major (LSH patterns; NULL otherwise), shared by Q and K;
//   ks_cand: [n_seq, k_c] candidate key positions (local to each sequence) for
//     the ranking loss (key_selection and training; NULL otherwise);
//   training: 1 computes the ranking loss (key_selection), 0 gives 0.
// Output: attn [n_tok, ld_attn] (the first E columns are written).
// Returns this layer's ranking-loss PARTIAL SUM: the sum over the local
// sequences of each sequence's mean over its k_c x k_c candidate pairs of
// BCE-with-logits. The layer's gate loss is that sum divided by the GLOBAL
// number of sequences (batch->global_n_seq) after summing over ranks.
// 0 without key_selection or when not training.
double sparse_forward(hax_sparse_state *st, const hax_model_config *cfg, const hax_batch *b,
                      const float *X, int ldX, const float *W_xx, const hax_sparse_ks_params *ks,
                      const float *hash, const int *ks_cand, int training, float *attn,
                      int ld_attn);

// Backward of the last sparse_forward on st (same batch, X, W_xx, ks).
//   dattn [n_tok, ld_dattn]: d loss / d attn;
//   gate_scale: d loss / d (the partial sum sparse_forward returned), e.g.
//     alpha / global_n_seq; used only for key_selection in training.
// Accumulates (+=): dX[:, :E] (leading dimension ld_dX), dW_xx [2N, E], and
// the dx_proj gradients in dks (from the ranking loss only; may be NULL
// without key_selection). Gradients reach W_xx only through the scores.
void sparse_backward(hax_sparse_state *st, const hax_model_config *cfg, const hax_batch *b,
                     const float *dattn, int ld_dattn, float gate_scale, const float *X, int ldX,
                     const float *W_xx, const hax_sparse_ks_params *ks, float *dX, int ld_dX,
                     float *dW_xx, hax_sparse_ks_grads *dks);

// Forces the LSH buckets of the following forwards to q_bucket/k_bucket
// ([n_tok] each, packed like the batch); NULL, NULL returns to computed ones.
void sparse_force_buckets(hax_sparse_state *st, const int32_t *q_bucket, const int32_t *k_bucket);

// Writes the allowed keys of every query as a dense [n_tok, width] table of
// local key positions, sorted, padded with -1 (the golden `allowed_keys`
// layout, width = sparse_keys). For `full` every j <= t (truncated to width).
void sparse_allowed_table(const hax_sparse_state *st, const hax_batch *b, int full, int width,
                          int64_t *out);

#ifdef __cplusplus
}
#endif

#endif
