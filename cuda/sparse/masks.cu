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

// The sorted union of the components of mask m for query q into row: the
// components' ascending key streams (the CUDA rules of
// cuda/sparse/internal.cuh) merged one smallest head at a time. Returns the
// count.
__device__ static int merge_row(int *row, const cu_rule_query &q, unsigned m) {
    int idx[SP_N_COMPONENTS], head[SP_N_COMPONENTS];
#pragma unroll
    for (int c = 0; c < SP_N_COMPONENTS; c++) {
        idx[c] = 0;
        head[c] = (m >> c) & 1 ? cu_rule_key(c, q, 0) : INT_MAX;
    }
    int cnt = 0;
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
    return cnt;
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
    int cnt = merge_row(allow_key + (size_t)g * cap, q, m);
    allow_cnt[g] = cnt;
    if (cnt == 0) {  // flags: order-free
        atomicOr(has_empty, 1);
        atomicOr(seq_empty + s, 1);
    }
}

// build_lists_kernel with its rows written through shared memory
// (HAX_SPARSE_KS=new): there each thread stores its own row, so a warp's
// store touches 32 rows (32 sectors for 128 bytes); here a block's rows
// (rows_per threads, rows of cap + 1 ints: no bank conflicts for equal
// counts) go out as one contiguous run, only each row's first allow_cnt
// entries, as before. The key-selection count is min(k_c, t + 1), as the
// cumulative top-k writes it, instead of a search of the row for its first
// -1 (a chain of dependent loads). The same lists.
__global__ static void build_lists_staged_kernel(int *allow_cnt, int *allow_key, const int64_t *lsh_sorted,
                                                 int *has_empty, int *seq_empty, const int32_t *q_bucket,
                                                 const int *sel, const int *seq_off, int n_seq, int n_tok, unsigned m,
                                                 unsigned lsh_bits, int k, int delta, int cap) {
    extern __shared__ int rows_sh[];  // [blockDim.x][cap + 1], then the counts [blockDim.x]
    int stride = cap + 1, *cnt_sh = rows_sh + (size_t)blockDim.x * stride;
    int g0 = blockIdx.x * blockDim.x, g = g0 + threadIdx.x, cnt = 0;
    if (g < n_tok) {
        int s = cu_seq_of(seq_off, n_seq, g), o = seq_off[s], t = g - o, n = seq_off[s + 1] - o;
        cu_rule_query q = {t, n, k, delta, NULL, 0, NULL, 0};
        if (m & lsh_bits) {
            const int64_t *srt = lsh_sorted + o;
            int64_t base = (int64_t)((uint64_t)(int64_t)q_bucket[g] << 32);
            int lo = lsh_lower_bound(srt, n, base), hi = lsh_lower_bound(srt, n, base + t + 1);
            if (hi - lo > k) lo = hi - k;
            q.lk = srt + lo, q.ln = hi - lo;
        }
        if (sel) q.sk = sel + (size_t)g * k, q.kn = min(k, t + 1);
        cnt = merge_row(rows_sh + (size_t)threadIdx.x * stride, q, m);
        allow_cnt[g] = cnt;
        if (cnt == 0) {  // flags: order-free
            atomicOr(has_empty, 1);
            atomicOr(seq_empty + s, 1);
        }
    }
    cnt_sh[threadIdx.x] = cnt;
    __syncthreads();
    int rows = min((int)blockDim.x, n_tok - g0);
    for (int e = threadIdx.x; e < rows * cap; e += blockDim.x) {
        int r = e / cap, i = e % cap;
        if (i < cnt_sh[r]) allow_key[(size_t)g0 * cap + e] = rows_sh[r * stride + i];
    }
}

// Rows per block of build_lists_staged_kernel within 48 KiB (a multiple of
// 32, at most 128), or 0 if even 32 rows do not fit.
static int staged_rows(int cap) {
    int rows = (int)(48 * 1024 / (sizeof(int) * ((size_t)cap + 2)));
    rows = rows > 128 ? 128 : rows - rows % 32;
    return rows;
}

// The allowed lists of the batch (st->allow_cnt, allow_key) from the buckets
// and, with key selection, its selections sel (may be NULL).
void cu_sp_build_lists(cu_sparse_state *st, const int *sel, const int *seq_off, int n_seq, int n_tok) {
    if (sparse_pattern_has(st->mask, SPF_LSH) && st->long_on && cu_sp_lsh_sort_long_fits(st))
        cu_sp_lsh_sort_long(st, seq_off, n_seq, n_tok);  // cuda/sparse/lsh_long.cu: the same array
    else if (sparse_pattern_has(st->mask, SPF_LSH))
        cu_sp_lsh_sort(st, seq_off, n_seq);
    int rows = staged_rows(st->row_cap);
    if (!st->ks_old && rows > 0) {
        size_t smem = sizeof(int) * (size_t)rows * (st->row_cap + 2);
        build_lists_staged_kernel<<<cu_blocks(n_tok, rows), rows, smem, cu_stream()>>>(
            st->allow_cnt, st->allow_key, st->lsh_sorted, st->has_empty, st->seq_empty, st->q_bucket, sel, seq_off,
            n_seq, n_tok, st->mask, sparse_pattern_bits(SPF_LSH), st->k_c, st->delta, st->row_cap);
    } else {
        build_lists_kernel<<<cu_blocks(n_tok, 128), 128, 0, cu_stream()>>>(
            st->allow_cnt, st->allow_key, st->lsh_sorted, st->has_empty, st->seq_empty, st->q_bucket, sel, seq_off,
            n_seq, n_tok, st->mask, sparse_pattern_bits(SPF_LSH), st->k_c, st->delta, st->row_cap);
    }
    CUDA_LAUNCHED();
}
