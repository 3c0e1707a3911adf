// cuda/sparse/ks_common.cuh: what the key-selection kernels of
// cuda/sparse/ks.cu and cuda/sparse/ks_long.cu (HAX_SPARSE_LONG) share: the
// features' chunking of a sequence (its double sums depend on it, so both
// files must chunk alike) and the top-k's total order.
#ifndef HAX_CU_SPARSE_KS_COMMON_CUH
#define HAX_CU_SPARSE_KS_COMMON_CUH

#define KS_MAX_N 128  // features: at most 4 feature columns per lane
#define KS_WARPS 8    // features: a sequence's chunks of positions (a warp each in ks.cu), summed in this order

// a is a worse key than b: a lower score, or an equal score and a higher
// index (ties keep the lower index). Indices are distinct, so this is a total
// order: "the k best of a set" is unique, and any way of computing it (the
// CPU's heap, a warp reduction, a merge of sorted runs) gives the same keys.
__device__ __forceinline__ bool ks_worse(float sa, int a, float sb, int b) {
    return sa < sb || (sa == sb && a > b);
}

// The number of entries of the best-first array (as, ai)[0..len) that are
// better than (s, i): a binary search (the array is sorted by ks_worse).
__device__ __forceinline__ int ks_count_better(const float *as, const int *ai, int len, float s, int i) {
    int lo = 0, hi = len;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (ks_worse(s, i, as[mid], ai[mid])) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

#endif
