// cuda/sparse/masks.cu: the allowed keys of every query on the GPU (the CUDA
// twin of src/sparse/masks.c): the sorted union of the pattern's components,
// each component's rule in cuda/sparse/internal.cuh.
#include <limits.h>

#include "cuda/sparse/internal.cuh"

// First index i in srt[0..n) with srt[i] >= key.
__device__ __forceinline__ int lsh_lower_bound(const int64_t *srt, int n, int64_t key) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (srt[mid] < key) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// One thread per query: the sorted union of the components of mask m, by
// merging the components' ascending key streams (the CUDA rules of
// cuda/sparse/internal.cuh) one smallest head at a time. Same lists as
// src/sparse/masks.c build_row.
__global__ static void build_lists_kernel(int *allow_cnt, int *allow_key, const int64_t *lsh_sorted,
                                          int *has_empty, int *seq_empty, const int32_t *q_bucket, const int *sel,
                                          const int *seq_off, int n_seq, int n_tok, unsigned m,
                                          unsigned lsh_bits, int k, int delta, int cap) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_tok) return;
    int s = cu_seq_of(seq_off, n_seq, g), o = seq_off[s], t = g - o, n = seq_off[s + 1] - o;
    cu_rule_query q = {t, n, k, delta, NULL, 0, NULL, 0};
    if (m & lsh_bits) {  // LSH: the k most recent j <= t of the query's bucket (lsh_keys of masks.c)
        const int64_t *srt = lsh_sorted + o;
        int64_t base = (int64_t)((uint64_t)(int64_t)q_bucket[g] << 32);
        int lo = lsh_lower_bound(srt, n, base), hi = lsh_lower_bound(srt, n, base + t + 1);
        if (hi - lo > k) lo = hi - k;
        q.lk = srt + lo, q.ln = hi - lo;
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
    if (cnt == 0) {  // flags: order-free
        atomicOr(has_empty, 1);
        atomicOr(seq_empty + s, 1);
    }
}

// The allowed lists of the batch (st->allow_cnt, allow_key) from the buckets
// and, with key selection, its selections sel (may be NULL).
void cu_sp_build_lists(cu_sparse_state *st, const int *sel, const int *seq_off, int n_seq, int n_tok) {
    if (sparse_pattern_has(st->mask, SPF_LSH)) cu_sp_lsh_sort(st, seq_off, n_seq);
    build_lists_kernel<<<cu_blocks(n_tok, 128), 128, 0, cu_stream()>>>(
        st->allow_cnt, st->allow_key, st->lsh_sorted, st->has_empty, st->seq_empty, st->q_bucket, sel, seq_off, n_seq,
        n_tok, st->mask, sparse_pattern_bits(SPF_LSH), st->k_c, st->delta, st->row_cap);
    CUDA_LAUNCHED();
}
