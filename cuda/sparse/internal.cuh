// cuda/sparse/internal.cuh: what cuda/sparse/sparse.cu (state, LSH buckets, allowed
// lists, chaining) and cuda/sparse/attn.cu (the attention kernels) share. Not
// for callers (they use cuda/sparse/sparse.h).
#ifndef HAX_CU_SPARSE_INTERNAL_CUH
#define HAX_CU_SPARSE_INTERNAL_CUH

#define CU_SP_TR_MAX_BYTES (4.0 * 1073741824.0)  // the per-key bitmaps of the dK/dV lists at most (4 GiB)

#include <limits.h>

#include "cuda/core/common.cuh"
#include "cuda/sparse/sparse.h"

// Per-lane register capacities of the warp-per-row kernels: a warp spreads
// E values (V, attn rows) and N features (Q, K rows) over its 32 lanes.
#define CU_SP_EPL 8  // E <= 256
#define CU_SP_FPL 4  // N <= 128

// Doubles of the reference empty-row workspace per sequence (cuda/sparse/empty.cu):
// M [E, N], G [E, N], dsum [E], sk [N], c [N].
__host__ __device__ static inline size_t cu_sp_empty_doubles(int E, int N) { return 2 * (size_t)E * N + E + 2 * N; }

// ---- the CUDA rules: one per component of src/model/sparse_patterns.h
// (src/sparse/masks.c holds the CPU ones). cu_rule<C>::key(q, i) is the i-th
// allowed key of component C for query q, ascending, or INT_MAX past its last.
// cu_rule_key dispatches on a run-time component over every
// C < SP_N_COMPONENTS, so a component without its cu_rule fails to compile.
typedef struct {
    int t, n, k, delta;  // local query position, sequence length, k_c, dilation
    const int64_t *lk;   // LSH: the query's bucket keys (bucket << 32 | position), ascending ...
    int ln;              // ... and their count
    const int *sk;       // key selection: the query's selections, ascending ...
    int kn;              // ... and their count
} cu_rule_query;

template <int C>
struct cu_rule {
    static_assert(C < 0, "this component of src/model/sparse_patterns.h has no CUDA rule (cu_rule<C>)");
};
template <>
struct cu_rule<SP_SLIDING_WINDOW> {
    __device__ static int key(const cu_rule_query &q, int i) {
        int j = max(0, q.t - q.k + 1) + i;
        return j <= q.t ? j : INT_MAX;
    }
};
template <>
struct cu_rule<SP_SINK> {
    __device__ static int key(const cu_rule_query &q, int i) { return i < min(q.t + 1, q.k) ? i : INT_MAX; }
};
template <>
struct cu_rule<SP_DILATED> {
    __device__ static int key(const cu_rule_query &q, int i) {
        int j = q.delta - 1 + i * q.delta;
        return j <= q.t ? j : INT_MAX;
    }
};
struct cu_rule_lsh {  // both LSH kinds: the k_c most recent keys of the query's bucket
    __device__ static int key(const cu_rule_query &q, int i) { return i < q.ln ? (int)(q.lk[i] & 0xffffffff) : INT_MAX; }
};
template <>
struct cu_rule<SP_SIGN_BIN_LSH> : cu_rule_lsh {};
template <>
struct cu_rule<SP_ARGMAX_LSH> : cu_rule_lsh {};
template <>
struct cu_rule<SP_KEY_SELECTION> {
    __device__ static int key(const cu_rule_query &q, int i) { return i < q.kn ? q.sk[i] : INT_MAX; }
};
template <>
struct cu_rule<SP_FULL> {  // dense: no lists (never called for them)
    __device__ static int key(const cu_rule_query &q, int i) { return (void)q, (void)i, INT_MAX; }
};

template <int C = 0>
__device__ __forceinline__ int cu_rule_key(int c, const cu_rule_query &q, int i) {
    if constexpr (C == SP_N_COMPONENTS) return INT_MAX;
    else return c == C ? cu_rule<C>::key(q, i) : cu_rule_key<C + 1>(c, q, i);
}
// Phase timing (cu_sparse_state.timing): an event after the phase `name`.
static inline void cu_sp_phase(cu_sparse_state *st, const char *name) {
    if (!st->timing || st->n_ev >= CU_SP_MAX_EV) return;
    st->ev_name[st->n_ev] = name;
    st->ev[st->n_ev++] = cuda_event_record();
}

#define MAX_HASH 30  // sparse_pattern_check's limit of hash_bits

// cuda/sparse/lsh.cu: the buckets of the queries (which = 1: Q = KQ[:, N:]) or
// keys (which = 0) into st->q_bucket / k_bucket (forced ones where given).
void cu_sp_lsh_hash(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok, int L, const float *hash,
                    int which);
// cuda/sparse/lsh.cu, the new kernels (HAX_SPARSE_KS=new): the buckets of
// the queries and the keys in one launch, a block per sequence and kind;
// cu_sp_lsh_setup before the first launch (its shared-memory limit; not a
// stream operation).
void cu_sp_lsh_hash_seq(cu_sparse_state *st, const int *seq_off, int n_seq, int L, const float *hash);
void cu_sp_lsh_setup(void);
// A row's LSH bucket from its h projections, as the CPU's sparse_lsh_hash:
// the first maximum (argmax) or one bit per positive projection (sign_bin).
__device__ __forceinline__ int32_t lsh_code(const double *proj, int h, int argmax) {
    int32_t code = 0;
    if (argmax) {
        for (int i = 1; i < h; i++)
            if (proj[i] > proj[code]) code = i;
    } else {
        for (int i = 0; i < h; i++)
            if (proj[i] > 0) code |= (int32_t)1 << i;
    }
    return code;
}
// Projection i of a row of N features: Σ_f x[f]·H[f, i], f in order, each
// product and add rounded on its own (no FMA: the CPU's sum).
__device__ __forceinline__ double lsh_proj(const double *x, int N, const float *H, int h, int i) {
    double p = 0;
    for (int f = 0; f < N; f++) p = __dadd_rn(p, __dmul_rn(x[f], (double)H[(size_t)f * h + i]));
    return p;
}
// 1 / max(‖x‖, 1e-12) of a row of N features, the squares summed in order (F.normalize).
__device__ __forceinline__ double lsh_rinv(const double *x, int N) {
    double nrm = 0;
    for (int f = 0; f < N; f++) nrm = __dadd_rn(nrm, __dmul_rn(x[f], x[f]));
    return __ddiv_rn(1.0, fmax(__dsqrt_rn(nrm), 1e-12));
}

// The CPU's packing of the LSH keys (src/sparse/masks.c): bucket in the high
// word, position low; each sequence's keys sorted by it (st->lsh_sorted).
__device__ __forceinline__ int64_t lsh_pack(int32_t b, int j) {
    return (int64_t)((uint64_t)(int64_t)b << 32) | j;
}

// cuda/sparse/lsh.cu: each sequence's keys sorted by (k bucket, position)
// into st->lsh_sorted, as the CPU's (src/sparse/masks.c).
void cu_sp_lsh_sort(cu_sparse_state *st, const int *seq_off, int n_seq);
// cuda/sparse/lsh_long.cu, the long-sequence kernels (HAX_SPARSE_LONG,
// st->long_on): the buckets of the queries and the keys (the statistics'
// chains a warp per sequence and kind, the rest over all positions; causal
// semantics keeps the keys' running sums in st->dKQ during the forward), and
// the keys by bucket as a counting sort where cu_sp_lsh_sort_long_fits
// (computed buckets, at most CU_SP_LSH_CS_MAX_B values: its workspace
// st->lsh_hist, cu_sp_lsh_hist_ints ints). The same bits as lsh.cu's.
#define CU_SP_LSH_CS_MAX_B 1024
void cu_sp_lsh_hash_long(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok, int L, const float *hash);
int cu_sp_lsh_n_buckets(unsigned mask, int h);
size_t cu_sp_lsh_hist_ints(int max_tok, int max_seq, int n_buckets);
int cu_sp_lsh_sort_long_fits(const cu_sparse_state *st);
void cu_sp_lsh_sort_long(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok);
// cuda/sparse/masks.cu: the allowed lists of every query.
void cu_sp_build_lists(cu_sparse_state *st, const int *sel, const int *seq_off, int n_seq, int n_tok);

// cuda/sparse/trans.cu: the transposed lists of the last forward's rows
// (st->tr_cnt, tr_off, tr_ent).
void cu_sp_transpose(cu_sparse_state *st, const int *seq_off);
// cuda/sparse/attn.cu: sparse attention over the fixed-stride lists, the
// `full` dense causal attention, and the reference empty rows.
void cu_sp_attn_forward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv,
                        float *attn, int ld_attn);
// Zeroes st->dKQ, then writes dQ (unscaled K) / dK into it and adds dV into dV.
void cu_sp_attn_backward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv,
                         const float *dattn, int ld_dattn, float *dV, int ld_dv);
// cuda/sparse/attn_gather.cu: the default gathers of the sparse attention
// (the previous ones, st->attn_old, stay in attn.cu): the forward, dQ (with
// allow_ds) and dK/dV over the transposed lists, each as its attn.cu
// counterpart. cu_sp_gather_fits: the state's rows are short enough for the
// forward and dQ (row_cap <= 128); cu_sp_gather_setup: before the first
// launch (the dK/dV kernel's shared-memory limit; not a stream operation).
int cu_sp_gather_fits(const cu_sparse_state *st);
void cu_sp_gather_setup(void);
void cu_sp_gather_forward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, float *attn,
                          int ld_attn);
void cu_sp_gather_backward_q(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, const float *dattn,
                             int ld_dattn);
void cu_sp_gather_backward_kv(cu_sparse_state *st, const float *dattn, int ld_dattn, float *dV, int ld_dv);
// The attention's gathers by tiles (st->tiles, HAX_SPARSE_TILES), the same bits
// as the lists' kernels: dK/dV as dense tiles of the sparse d score and P,
// dQ (with allow_ds) and the forward (with allow_p) by rounds of key rows
// staged for 64 queries; cu_sp_tile_fits: N <= 32, E <= 128, rows of at most
// 128 keys.
#define SP_TILES_KV 1
#define SP_TILES_Q 2
#define SP_TILES_FWD 4
int cu_sp_tile_fits(const cu_sparse_state *st);
void cu_sp_tile_backward_kv(cu_sparse_state *st, const float *dattn, int ld_dattn, float *dV, int ld_dv);
void cu_sp_tile_forward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, float *attn, int ld_attn);
void cu_sp_tile_backward_q(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, const float *dattn,
                           int ld_dattn);
// cuda/sparse/empty.cu, reference semantics only (no-ops in causal): S_V of
// the sequences with an empty row into st->seq_sv (forward, before the
// attention), and the empty rows' backward added into st->dKQ and dV (after
// the sparse gradients are written).
void cu_sp_empty_forward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv);
void cu_sp_empty_backward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, const float *dattn,
                          int ld_dattn, float *dV, int ld_dv);

#endif
