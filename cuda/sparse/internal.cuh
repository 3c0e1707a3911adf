// cuda/sparse/internal.cuh: what cuda/sparse/sparse.cu (state, LSH buckets, allowed
// lists, chaining) and cuda/sparse/attn.cu (the attention kernels) share. Not
// for callers (they use cuda/sparse/sparse.h).
#ifndef HAX_CU_SPARSE_INTERNAL_CUH
#define HAX_CU_SPARSE_INTERNAL_CUH

#include "cuda/core/common.cuh"
#include "cuda/sparse/sparse.h"

// Per-lane register capacities of the warp-per-row kernels: a warp spreads
// E values (V, attn rows) and N features (Q, K rows) over its 32 lanes.
#define CU_SP_EPL 8  // E <= 256
#define CU_SP_FPL 4  // N <= 128

// Doubles of the reference empty-row workspace per sequence:
// M [E, N], G [E, N], dsum [E], sk [N], c [N], and a flag (any empty row).
__host__ __device__ static inline size_t cu_sp_empty_doubles(int E, int N) { return 2 * (size_t)E * N + E + 2 * N + 1; }

// cuda/sparse/attn.cu: sparse attention over the fixed-stride lists, the
// `full` dense causal attention, and the reference empty rows.
void cu_sp_attn_forward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv,
                        float *attn, int ld_attn);
// Zeroes st->dKQ, then writes dQ (unscaled K) / dK into it and adds dV into dV.
void cu_sp_attn_backward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv,
                         const float *dattn, int ld_dattn, float *dV, int ld_dv);

#endif
