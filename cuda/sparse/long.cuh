// cuda/sparse/long.cuh: what the long-sequence kernels of the sparse branch
// (HAX_SPARSE_LONG, issue 14: cuda/sparse/lsh_long.cu, cuda/sparse/ks_long.cu)
// share: a warp's in-order walk over the rows of a sequence with its loads
// issued ahead, and the slots of per-chunk workspace rows.
#ifndef HAX_CU_SPARSE_LONG_CUH
#define HAX_CU_SPARSE_LONG_CUH

#include "cuda/core/common.cuh"

// Lane `lane` of a warp walks rows t0 .. t1-1 of x (row t at x + t * ld) in
// order, holding columns lane + 32u (u < R, those < ncol) of each row in
// v[u] (0 past ncol), and calls f(t, v) for each row. A row's loads do not
// wait for the chain f runs: the next 64 / R rows are loaded while the
// current ones are used (registers, fully unrolled; every load unconditional
// from a clamped address, so none waits behind a branch), so a serial chain
// (a running sum in a fixed order) costs its own latency, not a memory
// latency per row. Every lane must call it with the same t0, t1; ncol >= 1.
template <int R>
__device__ __forceinline__ void cu_long_load(float (&v)[64 / R][R], const float *x, size_t ld, int ncol, int tb, int t1,
                                             int lane) {
#pragma unroll
    for (int p = 0; p < 64 / R; p++)
#pragma unroll
        for (int u = 0; u < R; u++) {
            int t = tb + p, c = lane + 32 * u;
            float a = x[(size_t)min(t, t1 - 1) * ld + min(c, ncol - 1)];
            v[p][u] = t < t1 && c < ncol ? a : 0.0f;
        }
}

template <int R, typename F>
__device__ __forceinline__ void cu_long_walk(const float *x, size_t ld, int ncol, int t0, int t1, int lane, F f) {
    constexpr int P = 64 / R;
    if (t0 >= t1) return;
    float cur[P][R], nxt[P][R];
    cu_long_load<R>(cur, x, ld, ncol, t0, t1, lane);
    for (int tb = t0; tb < t1; tb += P) {
        cu_long_load<R>(nxt, x, ld, ncol, tb + P, t1, lane);  // (past t1: row t1 - 1 again, unused)
#pragma unroll
        for (int p = 0; p < P; p++)
            if (tb + p < t1) f(tb + p, cur[p]);
#pragma unroll
        for (int p = 0; p < P; p++)
#pragma unroll
            for (int u = 0; u < R; u++) cur[p][u] = nxt[p][u];
    }
}

// Workspace rows, one per chunk of `chunk` positions of a sequence: chunk c
// of the sequence s starting at row o of the batch has slot o / chunk + s +
// c. Distinct for every (s, c) (the last chunk of s starts at or after
// seq_off[s + 1] - chunk, so its slot is below the first slot of s + 1), and
// below n_tok / chunk + n_seq: cu_long_slots rows cover any batch of at
// most max_tok positions and max_seq sequences.
__host__ __device__ __forceinline__ int cu_long_slot(int o, int s, int chunk) { return o / chunk + s; }
static inline size_t cu_long_slots(int max_tok, int max_seq, int chunk) {
    return (size_t)(max_tok > 0 ? max_tok : 0) / chunk + (size_t)(max_seq > 0 ? max_seq : 0) + 1;
}

// The grids' guess of a sequence's length (blocks per sequence; the
// kernels loop, so any guess gives the same results): the padded length,
// at least the mean, at most all positions.
static inline int cu_long_len_hint(int n_tok, int n_seq, int model_len) {
    int mean = n_seq > 0 ? (n_tok + n_seq - 1) / n_seq : n_tok, len = model_len > mean ? model_len : mean;
    return len < n_tok ? len : n_tok;
}

#endif
