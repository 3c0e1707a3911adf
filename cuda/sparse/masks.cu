// cuda/sparse/masks.cu: the allowed keys of every query on the GPU (the CUDA
// twin of src/sparse/masks.c): the sorted union of the pattern's components,
// each component's rule in cuda/sparse/internal.cuh.
#include <limits.h>

#include "cuda/sparse/internal.cuh"

// One thread per query: the sorted union of the components of mask m, by
// merging the components' ascending key streams (the CUDA rules of
// cuda/sparse/internal.cuh) one smallest head at a time. Same lists as
// src/sparse/masks.c build_row.
__global__ static void build_lists_kernel(int *allow_cnt, int *allow_key, int *lsh_keys,
                                          int *has_empty, const int32_t *q_bucket,
                                          const int32_t *k_bucket, const int *sel,
                                          const int *seq_off, int n_seq, int n_tok, unsigned m,
                                          unsigned lsh_bits, int k, int delta, int cap) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_tok) return;
    int s = cu_seq_of(seq_off, n_seq, g), o = seq_off[s], t = g - o;
    cu_rule_query q = {t, seq_off[s + 1] - o, k, delta, lsh_keys + (size_t)g * k, 0, NULL, 0};
    if (m & lsh_bits) {  // LSH: the k most recent j <= t in the query's bucket, newest first
        int32_t b = q_bucket[g];
        int *lk = lsh_keys + (size_t)g * k;
        for (int j = t; j >= 0 && q.ln < k; j--)
            if (k_bucket[o + j] == b) lk[q.ln++] = j;
    }
    if (sel) {
        q.sk = sel + (size_t)g * k;
        while (q.kn < k && q.sk[q.kn] >= 0) q.kn++;
    }
    int idx[SP_N_COMPONENTS], head[SP_N_COMPONENTS];
#pragma unroll
    for (int c = 0; c < SP_N_COMPONENTS; c++) {
        idx[c] = 0;
        head[c] = (m >> c) & 1 ? cu_rule_key(c, q, 0) : INT_MAX;
    }
    int *row = allow_key + (size_t)g * cap, cnt = 0;
    for (;;) {
        int nxt = INT_MAX;
#pragma unroll
        for (int c = 0; c < SP_N_COMPONENTS; c++) nxt = min(nxt, head[c]);
        if (nxt == INT_MAX) break;
        row[cnt++] = nxt;
#pragma unroll
        for (int c = 0; c < SP_N_COMPONENTS; c++)
            if (head[c] == nxt) head[c] = cu_rule_key(c, q, ++idx[c]);
    }
    allow_cnt[g] = cnt;
    if (cnt == 0) atomicOr(has_empty, 1);
}

// The allowed lists of the batch (st->allow_cnt, allow_key) from the buckets
// and, with key selection, its selections sel (may be NULL).
void cu_sp_build_lists(cu_sparse_state *st, const int *sel, const int *seq_off, int n_seq, int n_tok) {
    build_lists_kernel<<<cu_blocks(n_tok, 128), 128, 0, cu_stream()>>>(
        st->allow_cnt, st->allow_key, st->lsh_keys, st->has_empty, st->q_bucket, st->k_bucket,
        sel, seq_off, n_seq, n_tok, st->mask, sparse_pattern_bits(SPF_LSH), st->k_c, st->delta, st->row_cap);
    CUDA_LAUNCHED();
}
