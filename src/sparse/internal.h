// src/sparse/internal.h: the pieces of the sparse branch (sparse.h), shared by
// sparse.c, src/sparse/lsh.c, src/sparse/masks.c and src/sparse/attn.c. Not for callers.
#ifndef HAX_SPARSE_INTERNAL_H
#define HAX_SPARSE_INTERNAL_H

#include "src/sparse/sparse.h"

// The sequence holding packed row g (binary search over seq_off).
static inline int sparse_seq_of(const int *seq_off, int n_seq, int g) {
    int lo = 0, hi = n_seq - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (seq_off[mid] <= g) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// src/sparse/lsh.c: LSH buckets of every packed position. X holds rows of width
// ldx (Q or K, N features). proj [n_tok, h] = X~ . H with X~ centred and
// normalised (reference: per feature over the padded sequence of length L;
// causal: the prefix mean and the vector's own norm); bucket = sign-bin code
// sum_i 2^i [proj_i > 0], or with argmax != 0 the first index of the maximum.
// bf16 (bf16-pure, reference semantics): the reference's bf16 ops (lsh.c).
void sparse_lsh_hash(int32_t *bucket, float *proj, const float *x, int ldx, int N,
                     const float *H, int h, int argmax, const int *seq_off, int n_seq, int L,
                     hax_semantics sem, int bf16);

// src/sparse/masks.c: builds st->allow_off / allow_key (the union per query) for
// the components of cfg->sparse_mask except `full`; KS selections are read
// from st->ks->sel. Returns 1 if some row is empty.
int sparse_build_union(hax_sparse_state *st, const hax_model_config *cfg, const int *seq_off,
                       int n_seq);

// src/sparse/attn.c: attention over the CSR lists, and the dense causal `full`.
void sparse_attn_forward(hax_sparse_state *st, const float *V, int ldv, const int *seq_off,
                         int n_seq, int L, hax_semantics sem, float *attn, int ld_attn);
// Accumulates dV into dV (+=, ld_dv) and writes dK/dQ (unscaled K) into st->dKQ.
void sparse_attn_backward(hax_sparse_state *st, const float *V, int ldv, const int *seq_off,
                          int n_seq, int L, hax_semantics sem, const float *dattn, int ld_dattn,
                          float *dV, int ld_dv);
void sparse_full_forward(hax_sparse_state *st, const float *V, int ldv, const int *seq_off,
                         int n_seq, float *attn, int ld_attn);
void sparse_full_backward(hax_sparse_state *st, const float *V, int ldv, const int *seq_off,
                          int n_seq, const float *dattn, int ld_dattn, float *dV, int ld_dv);

#endif
