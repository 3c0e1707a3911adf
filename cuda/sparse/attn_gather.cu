// cuda/sparse/attn_gather.cu: the sparse attention's gathers over the allowed
// lists (forward, dQ, dK/dV), the default kernels. cuda/sparse/attn.cu keeps
// the previous ones (cu_sparse_state.attn_old, HAX_SPARSE_ATTN=old), the
// dense `full` kernels and the dispatch.
//
// Every value is the previous kernels' bit for bit: each sum adds the same
// terms in the same order with the same roundings (bf16-pure included);
// what changed is how the rows reach the adds:
// - forward, dQ: one warp per query as before, but a row's list entries, its
//   scores and probabilities stay in registers (one pass over the list, P
//   written once), and GROUP keys' rows are loaded before any is added, so
//   their loads overlap (the previous loops waited for each row). The
//   forward reads K and V rows as float4 (a lane then owns 4 consecutive
//   elements of attn instead of every 32nd: each element still adds its keys
//   in list order). dQ's dP_i = dattn . V_key keeps the previous lane layout
//   (its warp sum's tree depends on it) and sums GROUP keys at once, with
//   the same adds but 10 shuffles for 8 keys instead of 40
//   (warp_sums_group).
// - dK/dV: a block takes KV_TILE consecutive keys and walks their holders'
//   rows (Q_t, dattn_t) in chunks of KV_ROWS consecutive queries staged in
//   shared memory, so a query row is read once per tile instead of once per
//   key that it holds; each key still adds its holders in ascending order.
//   The previous kernel was one warp per key: a popular key-selection pick
//   has hundreds of holders, each row a round trip to L2 for that warp
//   alone, and those warps set the kernel's time.
// Rows of more than 32 * LIST_CHUNKS keys run the previous forward and dQ.
#include <limits.h>
#include <math.h>

#include "cuda/sparse/internal.cuh"
#include "cuda/sparse/tiles.h"

#define WARPS 8  // rows (forward, dQ) or 4-key groups (dK/dV) per block, as attn.cu
#define FULL_MASK 0xffffffffu
#define LIST_CHUNKS 4  // list entries per lane in registers: rows of up to 32 * 4 keys
#define KV_KEYS 4      // dK/dV: keys per warp ...
#define KV_TILE (WARPS * KV_KEYS)  // ... and per block (consecutive)
// dK/dV: query rows per chunk, the warp width: a key has at most one entry per
// query, so a chunk's entries of a key lie in one 32-entry window of its list.
#define KV_ROWS 32

// The kernels' per-lane sizes as template arguments: EU values of an E-wide
// row per lane (4: E <= 128; 8: E <= 256 = 32 * CU_SP_EPL), FU of an N-wide
// one (1: N <= 32; 4: N <= 128 = 32 * CU_SP_FPL); GROUP_OF: rows loaded ahead.
#define GROUP_OF(EU) ((EU) == 4 ? 8 : 4)

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// One step of warp_sums_group: lanes a and a ^ O each keep one half of the
// 2H sums they carry (the upper half where bit O of the lane is set) and add
// the partner's share of it.
template <int O, int H, int G>
__device__ __forceinline__ void warp_sums_step(float (&v)[G], int lane) {
    int up = (lane & O) != 0;
#pragma unroll
    for (int k = 0; k < H; k++) {
        float send = up ? v[k] : v[k + H], keep = up ? v[k + H] : v[k];
        v[k] = keep + __shfl_xor_sync(FULL_MASK, send, O);
    }
}

// The warp sums of v[k], k < G (4 or 8): for each k the adds of
// cu_warp_sumf(v[k]) (at the step of bit o, lane a adds lane a ^ o's partial
// sum to its own: the butterfly's pairs, and a + b == b + a), so the same
// bits, with fewer shuffles (10 for 8 sums, not 40): the first steps halve
// the sums a lane carries on, the last add whole ones. Returns the sum of
// v[lane >> (5 - log2 G)] (key k's on lanes k * 32 / G ...).
template <int G>
__device__ __forceinline__ float warp_sums_group(float (&v)[G], int lane) {
    static_assert(G == 4 || G == 8, "warp_sums_group: G is 4 or 8");
    warp_sums_step<16, G / 2>(v, lane);
    warp_sums_step<8, G / 4>(v, lane);
    if constexpr (G == 8) warp_sums_step<4, 1>(v, lane);
    float s = v[0];
    if constexpr (G == 4) s += __shfl_xor_sync(FULL_MASK, s, 4);
    s += __shfl_xor_sync(FULL_MASK, s, 2);
    s += __shfl_xor_sync(FULL_MASK, s, 1);
    return s;
}

// Q_g . K_j over f ascending, one rounding per multiply-add (the previous
// kernel's expression); float4 loads where N % 4 == 0 (rows 16-byte aligned).
__device__ __forceinline__ float score_dot(const float *q, const float *k, int N, int vec) {
    float sc = 0;
    if (vec) {
        const float4 *q4 = (const float4 *)q, *k4 = (const float4 *)k;
        for (int c = 0; c < N / 4; c++) {
            float4 a = q4[c], b = k4[c];
            sc += a.x * b.x;
            sc += a.y * b.y;
            sc += a.z * b.z;
            sc += a.w * b.w;
        }
    } else {
        for (int f = 0; f < N; f++) sc += q[f] * k[f];
    }
    return sc;
}

// A row's P from its scores (entry lane + 32 m in pr[m], cnt entries): the
// max, exp(s - max), the double sums per lane (m ascending) then over the
// warp, P = e / sum (bf16-pure: rounded to bf16), into pr and p.
__device__ __forceinline__ void row_softmax(float (&pr)[LIST_CHUNKS], float *p, int cnt, int bf16, int lane) {
    float mx = -INFINITY;
#pragma unroll
    for (int m = 0; m < LIST_CHUNKS; m++)
        if (lane + 32 * m < cnt) mx = fmaxf(mx, pr[m]);
    mx = warp_max(mx);
    double sum = 0;
#pragma unroll
    for (int m = 0; m < LIST_CHUNKS; m++)
        if (lane + 32 * m < cnt) {
            pr[m] = expf(pr[m] - mx);
            sum += pr[m];
        }
    sum = cu_warp_sum(sum);
    float inv = (float)(1.0 / sum);
#pragma unroll
    for (int m = 0; m < LIST_CHUNKS; m++)
        if (lane + 32 * m < cnt) {
            pr[m] = bf16 ? hax_bf16_round(pr[m] / (float)sum) : pr[m] * inv;
            p[lane + 32 * m] = pr[m];
        }
}

// The output of a row without keys (the sequence s's S_V, sv): reference
// semantics the uniform row (bf16-pure: its bf16 P), causal 0.
__device__ __forceinline__ void empty_row_out(float *out, const double *sv, int s, int E, int L, int ref, int bf16,
                                              int lane) {
    float pe = hax_bf16_round(1.0f / (float)L);  // bf16-pure: the uniform row's bf16 P
    for (int e = lane; e < E; e += 32) {
        double v = sv[(size_t)s * E + e];
        out[e] = !ref ? 0.0f : bf16 ? hax_bf16_round((float)(v * pe)) : (float)(v / L);
    }
}

// ---------------------------------------------------------------- forward

// attn_g = sum_i p_i V_key(i), keys in list order, GROUP rows loaded ahead.
// vec: lane owns float4 c = lane + 32 v of the row (V rows 16-byte aligned,
// E % 4 == 0); else element lane + 32 u, as the previous kernel.
template <int EU>
__device__ __forceinline__ void fwd_values(float *out, const int *kr, const float *pr, int cnt, const float *V,
                                           int ldv, int o, int E, int bf16, int vec, int lane) {
    const int G = GROUP_OF(EU), EV = EU / 4;
    if (vec) {
        int E4 = E / 4;
        float4 acc[EV];
#pragma unroll
        for (int v = 0; v < EV; v++) acc[v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int m = 0; m < LIST_CHUNKS; m++) {
            int nb = min(32, cnt - 32 * m);
            if (nb <= 0) break;
            for (int b0 = 0; b0 < nb; b0 += G) {
                float4 x[G][EV];
#pragma unroll
                for (int w = 0; w < G; w++) {  // past nb: the last key again, not added
                    int b = min(b0 + w, nb - 1);
                    const float4 *row = (const float4 *)(V + (size_t)(o + __shfl_sync(FULL_MASK, kr[m], b)) * ldv);
#pragma unroll
                    for (int v = 0; v < EV; v++)
                        x[w][v] = lane + 32 * v < E4 ? row[lane + 32 * v] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
#pragma unroll
                for (int w = 0; w < G; w++) {
                    if (b0 + w >= nb) break;  // the same for the whole warp
                    float pb = __shfl_sync(FULL_MASK, pr[m], b0 + w);
#pragma unroll
                    for (int v = 0; v < EV; v++) {
                        acc[v].x += pb * x[w][v].x;
                        acc[v].y += pb * x[w][v].y;
                        acc[v].z += pb * x[w][v].z;
                        acc[v].w += pb * x[w][v].w;
                    }
                }
            }
        }
#pragma unroll
        for (int v = 0; v < EV; v++) {
            int c = lane + 32 * v;
            if (c >= E4) continue;
            float a[4] = {acc[v].x, acc[v].y, acc[v].z, acc[v].w};
            for (int i = 0; i < 4; i++) out[4 * c + i] = bf16 ? hax_bf16_round(a[i]) : a[i];
        }
        return;
    }
    float acc[EU] = {0};
#pragma unroll
    for (int m = 0; m < LIST_CHUNKS; m++) {
        int nb = min(32, cnt - 32 * m);
        if (nb <= 0) break;
        for (int b0 = 0; b0 < nb; b0 += G) {
            float x[G][EU];
#pragma unroll
            for (int w = 0; w < G; w++) {
                const float *row = V + (size_t)(o + __shfl_sync(FULL_MASK, kr[m], min(b0 + w, nb - 1))) * ldv;
#pragma unroll
                for (int u = 0; u < EU; u++) x[w][u] = lane + 32 * u < E ? row[lane + 32 * u] : 0.0f;
            }
#pragma unroll
            for (int w = 0; w < G; w++) {
                if (b0 + w >= nb) break;
                float pb = __shfl_sync(FULL_MASK, pr[m], b0 + w);
#pragma unroll
                for (int u = 0; u < EU; u++)
                    if (lane + 32 * u < E) acc[u] += pb * x[w][u];
            }
        }
    }
#pragma unroll
    for (int u = 0; u < EU; u++)
        if (lane + 32 * u < E) out[lane + 32 * u] = bf16 ? hax_bf16_round(acc[u]) : acc[u];
}

// One warp per query: the lane's entries i = lane + 32 m (key, score, then P)
// in registers; max, exp, the double sum per lane (m ascending) and the warp
// sums exactly as the previous kernel; P written to allow_p once.
template <int EU>
__global__ static void gather_fwd_kernel(float *attn, int ld_attn, float *allow_p, const int *allow_cnt,
                                         const int *allow_key, const float *KQ, const float *V, int ldv,
                                         const double *sv, const int *seq_off, int n_seq, int n_tok, int N,
                                         int E, int cap, int L, int ref, int bf16, int vec_k, int vec_v) {
    int g = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (g >= n_tok) return;  // the whole warp
    int s = cu_seq_of(seq_off, n_seq, g), o = seq_off[s], cnt = allow_cnt[g], ldkq = 2 * N;
    float *out = attn + (size_t)g * ld_attn;
    if (cnt == 0) {
        empty_row_out(out, sv, s, E, L, ref, bf16, lane);
        return;
    }
    const int *key = allow_key + (size_t)g * cap;
    const float *q = KQ + (size_t)g * ldkq + N;
    int kr[LIST_CHUNKS];
    float pr[LIST_CHUNKS];
#pragma unroll
    for (int m = 0; m < LIST_CHUNKS; m++) kr[m] = lane + 32 * m < cnt ? key[lane + 32 * m] : 0;
#pragma unroll
    for (int m = 0; m < LIST_CHUNKS; m++) {
        pr[m] = 0.0f;
        if (lane + 32 * m >= cnt) continue;
        float sc = score_dot(q, KQ + (size_t)(o + kr[m]) * ldkq, N, vec_k);
        pr[m] = bf16 ? hax_bf16_round(sc) : sc;
    }
    row_softmax(pr, allow_p + (size_t)g * cap, cnt, bf16, lane);
    fwd_values<EU>(out, kr, pr, cnt, V, ldv, o, E, bf16, vec_v, lane);
}

// ---------------------------------------------------------------- dQ

// dP = dattn . V_key of a chunk's nb <= 32 entries (entry b's row: base +
// (key on lane b + off) * ld; dr: this lane's dattn elements lane + 32 u),
// GROUP rows loaded before any is added, each lane's partial sums handed to
// warp_sums_group: the previous kernel's warp tree. On lane b: entry b's dP.
template <int EU>
__device__ __forceinline__ float chunk_dp(const float *base, int ld, int key, int off, int nb, const float (&dr)[EU],
                                          int E, int lane) {
    const int G = GROUP_OF(EU), sh = G == 8 ? 2 : 3;
    float dp = 0.0f;
    for (int b0 = 0; b0 < nb; b0 += G) {
        float x[G][EU], part[G];  // part[c]: this lane's share of dattn . V_key(b0 + c)
#pragma unroll
        for (int c = 0; c < G; c++) {  // past nb: the last key again, its sum unused
            const float *row = base + (size_t)(__shfl_sync(FULL_MASK, key, min(b0 + c, nb - 1)) + off) * ld;
#pragma unroll
            for (int u = 0; u < EU; u++) x[c][u] = lane + 32 * u < E ? row[lane + 32 * u] : 0.0f;
        }
#pragma unroll
        for (int c = 0; c < G; c++) {
            float s = 0;
#pragma unroll
            for (int u = 0; u < EU; u++)
                if (lane + 32 * u < E) s += dr[u] * x[c][u];
            part[c] = s;
        }
        float sum = warp_sums_group<G>(part, lane);  // key b0 + (lane >> sh)'s
        float got = __shfl_sync(FULL_MASK, sum, (lane & (G - 1)) << sh);
        if ((lane & ~(G - 1)) == b0) dp = got;
    }
    return dp;
}

// Per query: dP_i = dattn . V_key (bf16: rounded), D = sum_i p_i dP_i in
// double, keys ascending, ds_i = p_i (dP_i - D) into allow_ds, dQ = sum_i ds_i
// K_key, keys ascending: the previous kernel's values. The lanes' partial
// dot products of GROUP keys go to warp_sums_group, whose sums are then
// moved so that lane b holds key b's dP (b < 32, a chunk of the list); the
// products p_b dP_b (exact in double) pass through shared memory for the
// ordered sum.
template <int EU, int FU>
__global__ static void gather_bwd_q_kernel(float *dKQ, float *allow_ds, const float *allow_p, const int *allow_cnt,
                                           const int *allow_key, const float *KQ, const float *V, int ldv,
                                           const float *dattn, int ld_dattn, const int *seq_off, int n_seq,
                                           int n_tok, int N, int E, int cap, int bf16) {
    const int G = GROUP_OF(EU);
    __shared__ double prod[WARPS][32];
    int w = threadIdx.x / 32, g = blockIdx.x * WARPS + w, lane = threadIdx.x & 31;
    if (g >= n_tok) return;  // the whole warp (only __syncwarp below)
    int cnt = allow_cnt[g], ldkq = 2 * N;
    if (cnt == 0) return;
    int o = seq_off[cu_seq_of(seq_off, n_seq, g)];
    const int *key = allow_key + (size_t)g * cap;
    const float *p = allow_p + (size_t)g * cap, *da = dattn + (size_t)g * ld_dattn;
    float dr[EU];
#pragma unroll
    for (int u = 0; u < EU; u++) dr[u] = lane + 32 * u < E ? da[lane + 32 * u] : 0.0f;
    int kr[LIST_CHUNKS];
    float pr[LIST_CHUNKS], dsr[LIST_CHUNKS];
#pragma unroll
    for (int m = 0; m < LIST_CHUNKS; m++) {
        int i = lane + 32 * m;
        kr[m] = i < cnt ? key[i] : 0, pr[m] = i < cnt ? p[i] : 0.0f, dsr[m] = 0.0f;
    }
    double D = 0;
#pragma unroll
    for (int m = 0; m < LIST_CHUNKS; m++) {
        int nb = min(32, cnt - 32 * m);
        if (nb <= 0) break;
        float dp = chunk_dp<EU>(V, ldv, kr[m], o, nb, dr, E, lane);  // on lane b: key b's dP
        if (bf16) dp = hax_bf16_round(dp);           // dP, a bf16 GEMM output
        dsr[m] = dp;
        prod[w][lane] = (double)pr[m] * dp;  // exact: D += it rounds as D += p * dP did
        __syncwarp();
        for (int b = 0; b < nb; b++) D += prod[w][b];
        __syncwarp();  // prod is rewritten by the next chunk
    }
    float Df = (float)D;
    float *ds = allow_ds + (size_t)g * cap;
#pragma unroll
    for (int m = 0; m < LIST_CHUNKS; m++) {
        int i = lane + 32 * m;
        if (i >= cnt) continue;
        float d = pr[m] * (dsr[m] - Df);
        dsr[m] = bf16 ? hax_bf16_round(d) : d;
        ds[i] = dsr[m];
    }
    const int G2 = FU == 1 ? 32 : G;  // K rows loaded ahead: a whole chunk's where N <= 32
    float acc[FU] = {0};
#pragma unroll
    for (int m = 0; m < LIST_CHUNKS; m++) {
        int nb = min(32, cnt - 32 * m);
        if (nb <= 0) break;
        for (int b0 = 0; b0 < nb; b0 += G2) {
            float x[G2][FU];
#pragma unroll
            for (int c = 0; c < G2; c++) {
                const float *k = KQ + (size_t)(o + __shfl_sync(FULL_MASK, kr[m], min(b0 + c, nb - 1))) * ldkq;
#pragma unroll
                for (int u = 0; u < FU; u++) x[c][u] = lane + 32 * u < N ? k[lane + 32 * u] : 0.0f;
            }
#pragma unroll
            for (int c = 0; c < G2; c++) {
                if (b0 + c >= nb) break;  // the same for the whole warp
                float d = __shfl_sync(FULL_MASK, dsr[m], b0 + c);
#pragma unroll
                for (int u = 0; u < FU; u++)
                    if (lane + 32 * u < N) acc[u] += d * x[c][u];
            }
        }
    }
    float *dq = dKQ + (size_t)g * ldkq + N;
#pragma unroll
    for (int u = 0; u < FU; u++)
        if (lane + 32 * u < N) dq[lane + 32 * u] = acc[u];
}

// ---------------------------------------------------------------- dK, dV

// Floats of a staged query row: dattn_t (E, padded to a multiple of 4), then Q_t.
__host__ __device__ static inline int kv_row_floats(int N, int E) { return 4 * ((E + 3) / 4) + 4 * ((N + 3) / 4); }
static size_t kv_smem_bytes(int N, int E) { return sizeof(float) * KV_ROWS * kv_row_floats(N, E); }

// A key's window: its next (up to) 32 list entries, one per lane (ent: the
// first of them, left: the entries left in its list): first the list slots
// (-1 past the end), then from each slot the query g (INT_MAX past the end),
// d score and P. Two steps so that every key's slot loads are in flight at once.
__device__ __forceinline__ int kv_slot(const int *ent, int left, int lane) { return lane < left ? ent[lane] : -1; }
__device__ __forceinline__ void kv_entry(int &hg, float &hd, float &hp, int slot, const float *allow_ds,
                                         const float *allow_p, int cap) {
    hg = slot >= 0 ? slot / cap : INT_MAX;
    hd = slot >= 0 ? allow_ds[slot] : 0.0f;
    hp = slot >= 0 ? allow_p[slot] : 0.0f;
}

// Keys j = the block's KV_TILE, KV_KEYS per warp: dK_j = sum_t ds_tj Q_t
// (written), dV_j += sum_t P_tj dattn_t, holders t ascending from the
// transposed lists. Each round the block starts a chunk at the smallest next
// holder of its keys, cs, stages the rows t in [cs, cs + KV_ROWS) that some
// key holds (Q_t, dattn_t; a bit mask), and every key adds its holders in the
// chunk: the prefix of its window with t < cs + KV_ROWS. The adds per element
// are the previous kernel's (same products, same order); a lane owns 4
// consecutive elements of dV (float4 reads of the staged row).
template <int EU, int FU>  // small instance: 4 blocks per SM (64 registers; the block waits on its rows)
__global__ static void __launch_bounds__(32 * WARPS, EU == 4 ? 4 : 1)
    gather_bwd_kv_kernel(float *dKQ, float *dV, int ld_dv, const float *allow_ds, const float *allow_p,
                         const int *tr_off, const int *tr_cnt, const int *tr_ent, const float *KQ,
                         const float *dattn, int ld_dattn, int n_tok, int N, int E, int cap) {
    const int EV = EU / 4;
    extern __shared__ float4 rows4[];  // [KV_ROWS][kv_row_floats] (float4: 16-byte aligned)
    __shared__ int next_of[WARPS];
    __shared__ unsigned used;
    float *rows = (float *)rows4;
    int w = threadIdx.x / 32, lane = threadIdx.x & 31, ldkq = 2 * N;
    int E4 = (E + 3) / 4, qoff = 4 * E4, rs = kv_row_floats(N, E);
    int j0 = blockIdx.x * KV_TILE + w * KV_KEYS;
    int at[KV_KEYS], left[KV_KEYS], hg[KV_KEYS], slot[KV_KEYS];  // at: the window's first entry in tr_ent
    float hd[KV_KEYS], hp[KV_KEYS], dk[KV_KEYS][FU];
    float4 dv[KV_KEYS][EV];
#pragma unroll
    for (int k = 0; k < KV_KEYS; k++) {
        int j = j0 + k;
        at[k] = j < n_tok ? tr_off[j] : 0, left[k] = j < n_tok ? tr_cnt[j] : 0;
        slot[k] = kv_slot(tr_ent + at[k], left[k], lane);
#pragma unroll
        for (int u = 0; u < FU; u++) dk[k][u] = 0.0f;
#pragma unroll
        for (int v = 0; v < EV; v++) dv[k][v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int k = 0; k < KV_KEYS; k++) kv_entry(hg[k], hd[k], hp[k], slot[k], allow_ds, allow_p, cap);
    for (;;) {
        int first = INT_MAX;  // the warp's smallest next holder (lane 0 holds each key's next)
#pragma unroll
        for (int k = 0; k < KV_KEYS; k++) first = min(first, __shfl_sync(FULL_MASK, hg[k], 0));
        if (lane == 0) next_of[w] = first;
        if (threadIdx.x == 0) used = 0;
        __syncthreads();
        int cs = INT_MAX;
        for (int i = 0; i < WARPS; i++) cs = min(cs, next_of[i]);
        if (cs == INT_MAX) break;  // every key's list is done (the same for the whole block)
        unsigned mark = 0;  // the chunk's rows held by this warp's keys (hg >= cs: no overflow)
#pragma unroll
        for (int k = 0; k < KV_KEYS; k++)
            if (hg[k] - cs < KV_ROWS) mark |= 1u << (hg[k] - cs);
        mark = __reduce_or_sync(FULL_MASK, mark);
        if (lane == 0 && mark) atomicOr(&used, mark);
        __syncthreads();
        unsigned need = used;
        for (int r = w; r < KV_ROWS; r += WARPS) {
            if (!(need >> r & 1)) continue;
            const float *da = dattn + (size_t)(cs + r) * ld_dattn, *q = KQ + (size_t)(cs + r) * ldkq + N;
            float *row = rows + r * rs;
            for (int e = lane; e < qoff; e += 32) row[e] = e < E ? da[e] : 0.0f;
            for (int f = lane; f < rs - qoff; f += 32) row[qoff + f] = f < N ? q[f] : 0.0f;
        }
        __syncthreads();
        int nt[KV_KEYS];  // each key's entries in the chunk: a prefix of its window
#pragma unroll
        for (int k = 0; k < KV_KEYS; k++) {
            nt[k] = __popc(__ballot_sync(FULL_MASK, hg[k] - cs < KV_ROWS));
            if (nt[k] > 0)  // the next window's slots: loads in flight during the adds
                at[k] += nt[k], left[k] -= nt[k], slot[k] = kv_slot(tr_ent + at[k], left[k], lane);
        }
#pragma unroll
        for (int k = 0; k < KV_KEYS; k++) {
            for (int b = 0; b < nt[k]; b++) {
                const float *row = rows + (__shfl_sync(FULL_MASK, hg[k], b) - cs) * rs;
                float d = __shfl_sync(FULL_MASK, hd[k], b), pb = __shfl_sync(FULL_MASK, hp[k], b);
#pragma unroll
                for (int v = 0; v < EV; v++) {
                    if (lane + 32 * v >= E4) continue;
                    float4 a = ((const float4 *)row)[lane + 32 * v];
                    dv[k][v].x += pb * a.x;
                    dv[k][v].y += pb * a.y;
                    dv[k][v].z += pb * a.z;
                    dv[k][v].w += pb * a.w;
                }
#pragma unroll
                for (int u = 0; u < FU; u++)
                    if (lane + 32 * u < N) dk[k][u] += d * row[qoff + lane + 32 * u];
            }
        }
#pragma unroll
        for (int k = 0; k < KV_KEYS; k++)
            if (nt[k] > 0) kv_entry(hg[k], hd[k], hp[k], slot[k], allow_ds, allow_p, cap);
        __syncthreads();  // rows, next_of and used are rewritten by the next round
    }
#pragma unroll
    for (int k = 0; k < KV_KEYS; k++) {
        int j = j0 + k;
        if (j >= n_tok) continue;
        float *dk_row = dKQ + (size_t)j * ldkq, *dv_row = dV + (size_t)j * ld_dv;
#pragma unroll
        for (int u = 0; u < FU; u++)
            if (lane + 32 * u < N) dk_row[lane + 32 * u] = dk[k][u];
#pragma unroll
        for (int v = 0; v < EV; v++) {
            int c = lane + 32 * v;
            float a[4] = {dv[k][v].x, dv[k][v].y, dv[k][v].z, dv[k][v].w};
            for (int i = 0; i < 4; i++)
                if (4 * c + i < E) dv_row[4 * c + i] += a[i];
        }
    }
}

// ---------------------------------------------------------------- dK, dV by dense tiles

// The same sums as gather_bwd_kv_kernel, as small dense products: a block
// takes TILE_K consecutive keys and walks the queries in rounds of TILE_Q
// rows, starting each round at the smallest next holder of its keys, cs. A
// round writes the keys' list entries with holder t in [cs, cs + TILE_Q)
// into two zeroed TILE_Q x TILE_K tiles (d score and P, from the transposed
// lists), stages those rows' dattn_t and Q_t, and then every thread adds, for
// its 4 keys and 10 columns, all TILE_Q rows in ascending order:
// dK_j += dS_tj Q_t, dV_j += P_tj dattn_t. A row that key j does not hold
// adds 0 * x, which leaves a finite sum as it was (bit for bit: the
// accumulators start at +0, and x + (+-0) = x), so each element gets the list
// kernels' products in their order, holders ascending. The work no longer
// depends on how the entries fall on keys: a key-selection pick with hundreds
// of holders is spread over the block's 256 threads instead of one warp.
// (Rows nobody in the tile holds are staged as zeros, so a non-finite value
// there cannot reach a key; a non-finite value in a held row reaches every
// key of the tile, where the list kernels give it only to its holders: the
// step's gradient is then non-finite either way.) Small rows only: N <= 32,
// E <= 128 (the paper's models).
// (TILE_K, TILE_Q, TILE_LD, TILE_E, TILE_N and the next-holder rule: cuda/sparse/tiles.h)
static_assert(TILE_WARPS == WARPS, "cuda/sparse/tiles.h: the scatter's warps are the block's");

static size_t tile_smem_bytes(void) { return sizeof(float) * (2 * TILE_Q * TILE_LD + TILE_Q * (TILE_E + TILE_N)); }

__device__ __forceinline__ void fma4(float4 &acc, float s, float4 a) {
    acc.x += s * a.x, acc.y += s * a.y, acc.z += s * a.z, acc.w += s * a.w;
}

// Warp 0 of a tiled kernel's block, at the start of a round: *start = the
// smallest of the TILE_K next rows (INT_MAX: all done), the round's held-row
// mask cleared.
__device__ __forceinline__ void tile_round_begin(int *start, unsigned *used, const int *next, int lane) {
    int m = min(next[lane], next[lane + 32]);
    for (int o = 16; o > 0; o >>= 1) m = min(m, __shfl_xor_sync(FULL_MASK, m, o));
    if (lane == 0) *start = m;
    if (lane < 2) used[lane] = 0;
}

// The rows of a round this warp's lanes saw held (m0: rows 0..31, m1: 32..63)
// into the block's mask.
__device__ __forceinline__ void tile_mark_rows(unsigned *used, unsigned m0, unsigned m1, int lane) {
    m0 = __reduce_or_sync(FULL_MASK, m0), m1 = __reduce_or_sync(FULL_MASK, m1);
    if (lane == 0 && m0) atomicOr(&used[0], m0);
    if (lane == 0 && m1) atomicOr(&used[1], m1);
}

__global__ static void __launch_bounds__(32 * WARPS, 2)
    tile_bwd_kv_kernel(float *dKQ, float *dV, int ld_dv, const float *allow_ds, const float *allow_p,
                       const int *tr_off, const int *tr_cnt, const int *tr_ent, const float *KQ,
                       const float *dattn, int ld_dattn, int n_tok, int N, int E, int cap) {
    extern __shared__ float4 tile4[];
    float *S = (float *)tile4, *P = S + TILE_Q * TILE_LD, *A = P + TILE_Q * TILE_LD, *Q = A + TILE_Q * TILE_E;
    __shared__ int at_s[TILE_K], left_s[TILE_K], next_s[TILE_K];  // each key's list: next entry, entries left,
                                                                 // its holder (or a lower bound; INT_MAX: done)
    __shared__ unsigned used[2];  // the rows of the round some key holds (TILE_Q = 64)
    __shared__ int cs_s;
    int tid = threadIdx.x, w = tid / 32, lane = tid & 31, ldkq = 2 * N, j0 = blockIdx.x * TILE_K;
    if (tid < TILE_K) {
        int j = j0 + tid, a = j < n_tok ? tr_off[j] : 0, n = j < n_tok ? tr_cnt[j] : 0;
        at_s[tid] = a, left_s[tid] = n, next_s[tid] = n > 0 ? tr_ent[a] / cap : INT_MAX;
    }
    int ty = tid / 16, tx = tid % 16;  // keys 4ty..4ty+3; dV columns 4tx.. and 64 + 4tx..; dK columns tx, 16 + tx
    float4 dv[4][2];
    float dk[4][2];
#pragma unroll
    for (int k = 0; k < 4; k++)
#pragma unroll
        for (int h = 0; h < 2; h++) dv[k][h] = make_float4(0.0f, 0.0f, 0.0f, 0.0f), dk[k][h] = 0.0f;
    for (;;) {
        __syncthreads();  // the lists' state written; the previous round's products done
        if (w == 0) tile_round_begin(&cs_s, used, next_s, lane);
        for (int i = tid; i < 2 * TILE_Q * TILE_LD / 4; i += 32 * WARPS) tile4[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        __syncthreads();
        int cs = cs_s;
        if (cs == INT_MAX) break;  // every key's list is done (the same for the whole block)
        // The scatter, in passes: each of the warp's keys whose next holder
        // may lie in the round loads its next window (up to 32 entries, one per
        // lane) at once, and writes the entries below cs + TILE_Q.
        unsigned mark0 = 0, mark1 = 0;  // the rows [0, 32) and [32, 64) this lane wrote
        for (;;) {
            int slot[TILE_KEYS_W];
            unsigned act = 0;
#pragma unroll
            for (int k = 0; k < TILE_KEYS_W; k++) {
                int key = w * TILE_KEYS_W + k, on = next_s[key] < cs + TILE_Q;
                act |= (unsigned)on << k;
                slot[k] = on && lane < left_s[key] ? tr_ent[at_s[key] + lane] : -1;
            }
            if (!act) break;  // the same for the whole warp
            float d[TILE_KEYS_W], p[TILE_KEYS_W];
#pragma unroll
            for (int k = 0; k < TILE_KEYS_W; k++)
                d[k] = slot[k] >= 0 ? allow_ds[slot[k]] : 0.0f, p[k] = slot[k] >= 0 ? allow_p[slot[k]] : 0.0f;
            __syncwarp();  // every lane has read the lists' state before lane 0 moves it on
#pragma unroll
            for (int k = 0; k < TILE_KEYS_W; k++) {
                if (!(act >> k & 1)) continue;
                int key = w * TILE_KEYS_W + k, g = slot[k] >= 0 ? slot[k] / cap : INT_MAX, in = g < cs + TILE_Q;
                if (in) {
                    int r = g - cs;
                    S[r * TILE_LD + key] = d[k], P[r * TILE_LD + key] = p[k];
                    if (r < 32) mark0 |= 1u << r;
                    else mark1 |= 1u << (r - 32);
                }
                int n = __popc(__ballot_sync(FULL_MASK, in)), left = left_s[key] - n;
                // the next holder: the first lane not taken; after a whole window, only a lower bound
                int nxt = tile_next_holder(n, __shfl_sync(FULL_MASK, g, n % 32), __shfl_sync(FULL_MASK, g, 31));
                __syncwarp();
                if (lane == 0) at_s[key] += n, left_s[key] = left, next_s[key] = left > 0 ? nxt : INT_MAX;
                __syncwarp();
            }
        }
        tile_mark_rows(used, mark0, mark1, lane);
        __syncthreads();
        // the rows of the round (zeros where nobody holds the row, and past E and N)
        for (int i = tid; i < TILE_Q * TILE_E; i += 32 * WARPS) {
            int r = i / TILE_E, c = i % TILE_E;
            A[i] = c < E && (used[r / 32] >> (r % 32) & 1) ? dattn[(size_t)(cs + r) * ld_dattn + c] : 0.0f;
        }
        for (int i = tid; i < TILE_Q * TILE_N; i += 32 * WARPS) {
            int r = i / TILE_N, c = i % TILE_N;
            Q[i] = c < N && (used[r / 32] >> (r % 32) & 1) ? KQ[(size_t)(cs + r) * ldkq + N + c] : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int r = 0; r < TILE_Q; r++) {
            float4 s = ((const float4 *)(S + r * TILE_LD))[ty], p = ((const float4 *)(P + r * TILE_LD))[ty];
            float4 a0 = ((const float4 *)(A + r * TILE_E))[tx], a1 = ((const float4 *)(A + r * TILE_E))[16 + tx];
            float q0 = Q[r * TILE_N + tx], q1 = Q[r * TILE_N + 16 + tx];
            float sk[4] = {s.x, s.y, s.z, s.w}, pk[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                fma4(dv[k][0], pk[k], a0), fma4(dv[k][1], pk[k], a1);
                dk[k][0] += sk[k] * q0, dk[k][1] += sk[k] * q1;
            }
        }
    }
#pragma unroll
    for (int k = 0; k < 4; k++) {
        int j = j0 + 4 * ty + k;
        if (j >= n_tok) continue;
        float *dk_row = dKQ + (size_t)j * ldkq, *dv_row = dV + (size_t)j * ld_dv;
        if (tx < N) dk_row[tx] = dk[k][0];
        if (16 + tx < N) dk_row[16 + tx] = dk[k][1];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float a[4] = {dv[k][h].x, dv[k][h].y, dv[k][h].z, dv[k][h].w};
            for (int i = 0; i < 4; i++) {
                int c = 64 * h + 4 * tx + i;
                if (c < E) dv_row[c] += a[i];
            }
        }
    }
}

// ---------------------------------------------------------------- dQ by staged key rounds

#define QT_Q 64
#define QT_W (QT_Q / WARPS)  // queries per warp

// The round kernels' lists (tile_bwd_q_kernel, tile_fwd_kernel): per query
// ql of the block (g0 + ql), its next list entry pos[ql], that entry's key as
// a global row next[ql] (INT_MAX: done) and its sequence's first row off[ql].
// rounds_start: from each list's start (off as well when with_off).
__device__ __forceinline__ void rounds_start(int *pos, int *next, int *off, int with_off, const int *allow_cnt,
                                             const int *allow_key, const int *seq_off, int n_seq, int n_tok, int cap,
                                             int g0, int ql) {
    int g = g0 + ql, c = g < n_tok ? allow_cnt[g] : 0;
    if (with_off) off[ql] = g < n_tok ? seq_off[cu_seq_of(seq_off, n_seq, g)] : 0;
    pos[ql] = 0, next[ql] = c > 0 ? off[ql] + allow_key[(size_t)g * cap] : INT_MAX;
}

// Every warp marks the rows [ks, ks + TILE_K) its queries' lists hold from
// their next entries on, into the block's mask used.
__device__ __forceinline__ void rounds_mark(unsigned *used, const int *pos, const int *next, const int *off,
                                            const int *allow_cnt, const int *allow_key, int cap, int g0, int ks,
                                            int w, int lane) {
    unsigned m0 = 0, m1 = 0;  // the rows this lane saw held
    for (int q = 0; q < QT_W; q++) {
        int ql = w * QT_W + q, g = g0 + ql;
        if (next[ql] >= ks + TILE_K) continue;
        int cnt = allow_cnt[g];
        for (int i = pos[ql] + lane; i < cnt; i += 32) {
            int r = off[ql] + allow_key[(size_t)g * cap + i] - ks;
            if (r >= TILE_K) break;  // the list is sorted
            if (r < 32) m0 |= 1u << r;
            else m1 |= 1u << (r - 32);
        }
    }
    tile_mark_rows(used, m0, m1, lane);
}

// A round's start for the whole block: its first key row, the smallest next
// key of its queries (INT_MAX: every list is done), and the rows held from
// there marked in used.
__device__ __forceinline__ int rounds_begin(int *ks_s, unsigned *used, const int *pos, const int *next, const int *off,
                                            const int *allow_cnt, const int *allow_key, int cap, int g0, int w,
                                            int lane) {
    __syncthreads();  // the lists' state written; the previous round's reads done
    if (w == 0) tile_round_begin(ks_s, used, next, lane);
    __syncthreads();
    int ks = *ks_s;
    if (ks == INT_MAX) return ks;  // the same for the whole block
    rounds_mark(used, pos, next, off, allow_cnt, allow_key, cap, g0, ks, w, lane);
    __syncthreads();
    return ks;
}

// A query's next entries in the round, up to 32 (lane b: entry i = pos + b,
// its key row kl, INT_MAX past the list, and whether it lies in the round):
// returns how many do, a prefix, the list being sorted.
__device__ __forceinline__ int rounds_chunk(int &i, int &kl, int &in, const int *key, int pos, int cnt, int o, int end,
                                            int lane) {
    i = pos + lane, kl = i < cnt ? o + key[i] : INT_MAX, in = kl < end;
    return __popc(__ballot_sync(FULL_MASK, in));
}

// After a query's entries in the round (pos: its next entry now): its state
// for the next round, written once every lane has read it.
__device__ __forceinline__ void rounds_moved(int *pos_s, int *next_s, int ql, int pos, int cnt, int o, const int *key,
                                             int lane) {
    __syncwarp();
    if (lane == 0) pos_s[ql] = pos, next_s[ql] = pos < cnt ? o + key[pos] : INT_MAX;
    __syncwarp();
}

// The marked rows of the round, `width` floats each, from src (rows ks + r,
// stride ld_src) into dst (stride ld_dst); the block's threads.
__device__ __forceinline__ void rounds_stage(float *dst, int ld_dst, const float *src, int ld_src, int width,
                                             const unsigned *used, int ks, int tid) {
    for (int i = tid; i < TILE_K * width; i += 32 * WARPS) {
        int r = i / width, c = i % width;
        if (used[r / 32] >> (r % 32) & 1) dst[r * ld_dst + c] = src[(size_t)(ks + r) * ld_src + c];
    }
}


// gather_bwd_q_kernel<4, 1>'s values (so the previous kernel's) with the key
// rows read from shared memory. There each warp gathers its query's V and K
// rows from global memory, one row per list entry (V's 512 bytes at E 128),
// a few queries per block sharing them through L1 at best. Here a block takes
// QT_Q = 64 consecutive queries (8 per warp, one after another) and walks
// their keys in rounds of TILE_K consecutive rows from the smallest next key
// of its queries: a round stages the rows some query of the block holds
// (V in the first pass, K in the second), and each query adds its entries in
// the round, a prefix of the rest of its sorted list, exactly as before:
//   pass 1: dP_i = dattn . V_key by warp_sums_group (the previous warp tree),
//           bf16-pure rounded, D += p_i dP_i in double in list order, dP_i
//           into allow_ds; then ds_i = p_i (dP_i - (float) D) in place;
//   pass 2: dQ += ds_i K_key, list order, one lane per feature.
// The rounds go in key order, so each query's entries in list order.
static size_t qtile_smem_bytes(void) { return sizeof(float) * TILE_K * (TILE_E + TILE_N); }

__global__ static void __launch_bounds__(32 * WARPS)
    tile_bwd_q_kernel(float *dKQ, float *allow_ds, const float *allow_p, const int *allow_cnt, const int *allow_key,
                      const float *KQ, const float *V, int ldv, const float *dattn, int ld_dattn, const int *seq_off,
                      int n_seq, int n_tok, int N, int E, int cap, int bf16) {
    extern __shared__ float4 qt4[];
    float *Vs = (float *)qt4, *Ks = Vs + TILE_K * TILE_E;  // the round's rows (only the held ones are written)
    __shared__ int pos_s[QT_Q], next_s[QT_Q], off_s[QT_Q];  // per query: next list entry, its key (global
                                                            // row; INT_MAX: done), the sequence's first row
    __shared__ double D_s[QT_Q], prod[WARPS][32];
    __shared__ float dq_s[QT_Q][TILE_N];
    __shared__ unsigned used[2];
    __shared__ int ks_s;
    int tid = threadIdx.x, w = tid / 32, lane = tid & 31, g0 = blockIdx.x * QT_Q, ldkq = 2 * N;
    if (tid < QT_Q) {
        rounds_start(pos_s, next_s, off_s, 1, allow_cnt, allow_key, seq_off, n_seq, n_tok, cap, g0, tid);
        D_s[tid] = 0.0;
    }
    for (int i = tid; i < QT_Q * TILE_N; i += 32 * WARPS) dq_s[i / TILE_N][i % TILE_N] = 0.0f;
    for (int pass = 0; pass < 2; pass++) {
        for (;;) {
            int ks = rounds_begin(&ks_s, used, pos_s, next_s, off_s, allow_cnt, allow_key, cap, g0, w, lane);
            if (ks == INT_MAX) break;
            int end = ks + TILE_K;
            if (pass == 0) rounds_stage(Vs, TILE_E, V, ldv, E, used, ks, tid);
            else rounds_stage(Ks, TILE_N, KQ, ldkq, N, used, ks, tid);
            __syncthreads();
            for (int q = 0; q < QT_W; q++) {
                int ql = w * QT_W + q, g = g0 + ql;
                if (next_s[ql] >= end) continue;  // the same for the whole warp
                int cnt = allow_cnt[g], o = off_s[ql], pos = pos_s[ql];
                const int *key = allow_key + (size_t)g * cap;
                const float *p = allow_p + (size_t)g * cap;
                float *ds = allow_ds + (size_t)g * cap;
                double D = D_s[ql];
                float dr[4];
                if (pass == 0) {
                    const float *da = dattn + (size_t)g * ld_dattn;
#pragma unroll
                    for (int u = 0; u < 4; u++) dr[u] = lane + 32 * u < E ? da[lane + 32 * u] : 0.0f;
                }
                for (;;) {  // the query's entries in the round, 32 at a time (lane b: entry pos + b)
                    int i, kl, in, nb = rounds_chunk(i, kl, in, key, pos, cnt, o, end, lane);
                    if (nb == 0) break;
                    if (pass == 0) {
                        float pl = in ? p[i] : 0.0f, dp = chunk_dp<4>(Vs, TILE_E, kl, -ks, nb, dr, E, lane);
                        if (bf16) dp = hax_bf16_round(dp);  // dP, a bf16 GEMM output
                        prod[w][lane] = (double)pl * dp;    // exact: D += it rounds as D += p * dP did
                        __syncwarp();
                        for (int b = 0; b < nb; b++) D += prod[w][b];
                        __syncwarp();  // prod is rewritten by the next 32
                        if (in) ds[i] = dp;
                    } else {
                        float dl = in ? ds[i] : 0.0f, acc = dq_s[ql][lane];
                        for (int b = 0; b < nb; b++) {
                            float d = __shfl_sync(FULL_MASK, dl, b);
                            const float *k = Ks + (__shfl_sync(FULL_MASK, kl, b) - ks) * TILE_N;
                            if (lane < N) acc += d * k[lane];
                        }
                        dq_s[ql][lane] = acc;
                    }
                    pos += nb;
                    if (nb < 32) break;
                }
                if (lane == 0) D_s[ql] = D;  // (every lane read it before the first chunk's ballot)
                rounds_moved(pos_s, next_s, ql, pos, cnt, o, key, lane);
            }
        }
        if (pass == 1) break;
        // ds_i = p_i (dP_i - D) for the warp's queries, and their lists from the start again
        for (int q = 0; q < QT_W; q++) {
            int ql = w * QT_W + q, g = g0 + ql;
            if (g >= n_tok) continue;
            int cnt = allow_cnt[g];
            const float *p = allow_p + (size_t)g * cap;
            float *ds = allow_ds + (size_t)g * cap, Df = (float)D_s[ql];
            for (int i = lane; i < cnt; i += 32) {
                float d = p[i] * (ds[i] - Df);
                ds[i] = bf16 ? hax_bf16_round(d) : d;
            }
            __syncwarp();  // pass 2 reads them back
            if (lane == 0) rounds_start(pos_s, next_s, off_s, 0, allow_cnt, allow_key, seq_off, n_seq, n_tok, cap, g0, ql);
        }
    }
    for (int q = 0; q < QT_W; q++) {  // rows without entries: 0, as the memset left them
        int g = g0 + w * QT_W + q;
        if (g < n_tok && lane < N) dKQ[(size_t)g * ldkq + N + lane] = dq_s[w * QT_W + q][lane];
    }
}

// ---------------------------------------------------------------- forward by staged key rounds

// gather_fwd_kernel's values with the key rows read from shared memory, the
// rounds of tile_bwd_q_kernel (64 queries per block, 8 per warp):
//   pass 1 (K rows staged at an odd stride: a lane per entry reads its own
//           row): each entry's score Q_g . K_key, f ascending, bf16-pure
//           rounded, into allow_p for now; then per query, as gather_fwd_kernel
//           on its lane layout (entry i on lane i % 32): the max, exp(s - max),
//           the double sums per lane then over the warp, P into allow_p;
//   pass 2 (V rows staged): attn_g += P_i V_key, list order, each lane 4
//           consecutive elements kept in shared memory across the rounds.
// Each element adds the same products in the same order, so the same bits.
static size_t ftile_smem_bytes(void) {
    return sizeof(float) * (TILE_K * (TILE_N + 1) + QT_Q * (TILE_N + 1) + TILE_K * TILE_E + QT_Q * TILE_E);
}

__global__ static void __launch_bounds__(32 * WARPS)
    tile_fwd_kernel(float *attn, int ld_attn, float *allow_p, const int *allow_cnt, const int *allow_key,
                    const float *KQ, const float *V, int ldv, const double *sv, const int *seq_off, int n_seq,
                    int n_tok, int N, int E, int cap, int L, int ref, int bf16) {
    const int KS = TILE_N + 1;  // the staged score rows' stride (odd: 32 lanes, 32 rows, 32 banks)
    extern __shared__ float4 ft4[];
    float *Vs = (float *)ft4, *acc = Vs + TILE_K * TILE_E, *Ks = acc + QT_Q * TILE_E, *Qs = Ks + TILE_K * KS;
    __shared__ int pos_s[QT_Q], next_s[QT_Q], off_s[QT_Q];
    __shared__ unsigned used[2];
    __shared__ int ks_s;
    int tid = threadIdx.x, w = tid / 32, lane = tid & 31, g0 = blockIdx.x * QT_Q, ldkq = 2 * N;
    if (tid < QT_Q) rounds_start(pos_s, next_s, off_s, 1, allow_cnt, allow_key, seq_off, n_seq, n_tok, cap, g0, tid);
    for (int i = tid; i < QT_Q * TILE_E; i += 32 * WARPS) acc[i] = 0.0f;
    for (int i = tid; i < QT_Q * TILE_N; i += 32 * WARPS) {
        int q = i / TILE_N, f = i % TILE_N, g = g0 + q;
        Qs[q * KS + f] = g < n_tok && f < N ? KQ[(size_t)g * ldkq + N + f] : 0.0f;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (;;) {
            int ks = rounds_begin(&ks_s, used, pos_s, next_s, off_s, allow_cnt, allow_key, cap, g0, w, lane);
            if (ks == INT_MAX) break;
            int end = ks + TILE_K;
            if (pass == 0) rounds_stage(Ks, KS, KQ, ldkq, N, used, ks, tid);
            else rounds_stage(Vs, TILE_E, V, ldv, E, used, ks, tid);
            __syncthreads();
            for (int q = 0; q < QT_W; q++) {
                int ql = w * QT_W + q, g = g0 + ql;
                if (next_s[ql] >= end) continue;  // the same for the whole warp
                int cnt = allow_cnt[g], o = off_s[ql], pos = pos_s[ql];
                const int *key = allow_key + (size_t)g * cap;
                float *p = allow_p + (size_t)g * cap;
                float4 a4 = ((const float4 *)(acc + ql * TILE_E))[lane];
                for (;;) {  // the query's entries in the round, 32 at a time (lane b: entry pos + b)
                    int i, kl, in, nb = rounds_chunk(i, kl, in, key, pos, cnt, o, end, lane);
                    if (nb == 0) break;
                    if (pass == 0) {
                        if (in) {
                            const float *k = Ks + (kl - ks) * KS, *qr = Qs + ql * KS;
                            float sc = 0;
                            for (int f = 0; f < N; f++) sc += qr[f] * k[f];
                            p[i] = bf16 ? hax_bf16_round(sc) : sc;
                        }
                    } else {
                        float pl = in ? p[i] : 0.0f;
                        for (int b = 0; b < nb; b++) {
                            float pb = __shfl_sync(FULL_MASK, pl, b);
                            float4 x = ((const float4 *)(Vs + (__shfl_sync(FULL_MASK, kl, b) - ks) * TILE_E))[lane];
                            a4.x += pb * x.x, a4.y += pb * x.y, a4.z += pb * x.z, a4.w += pb * x.w;
                        }
                    }
                    pos += nb;
                    if (nb < 32) break;
                }
                if (pass == 1) ((float4 *)(acc + ql * TILE_E))[lane] = a4;
                rounds_moved(pos_s, next_s, ql, pos, cnt, o, key, lane);
            }
        }
        if (pass == 1) break;
        // P from the scores, as gather_fwd_kernel; the lists from the start again
        for (int q = 0; q < QT_W; q++) {
            int ql = w * QT_W + q, g = g0 + ql;
            if (g >= n_tok) continue;
            int cnt = allow_cnt[g];
            float *p = allow_p + (size_t)g * cap, pr[LIST_CHUNKS];
#pragma unroll
            for (int m = 0; m < LIST_CHUNKS; m++) pr[m] = lane + 32 * m < cnt ? p[lane + 32 * m] : 0.0f;
            row_softmax(pr, p, cnt, bf16, lane);
            __syncwarp();  // pass 2 reads them back
            if (lane == 0) rounds_start(pos_s, next_s, off_s, 0, allow_cnt, allow_key, seq_off, n_seq, n_tok, cap, g0, ql);
        }
    }
    for (int q = 0; q < QT_W; q++) {
        int ql = w * QT_W + q, g = g0 + ql;
        if (g >= n_tok) continue;
        float *out = attn + (size_t)g * ld_attn;
        if (allow_cnt[g] == 0) {
            empty_row_out(out, sv, cu_seq_of(seq_off, n_seq, g), E, L, ref, bf16, lane);
            continue;
        }
        for (int e = lane; e < E; e += 32) {
            float a = acc[ql * TILE_E + e];
            out[e] = bf16 ? hax_bf16_round(a) : a;
        }
    }
}

// ---------------------------------------------------------------- launches

// The small instances (EU 4, FU 1) serve E <= 128 and N <= 32 (the paper's models).
static int small_rows(const cu_sparse_state *st) { return st->E <= 128 && st->N <= 32; }

int cu_sp_gather_fits(const cu_sparse_state *st) { return st->row_cap <= 32 * LIST_CHUNKS; }

void cu_sp_gather_setup(void) {
    // The large dK/dV instance stages up to 48 KiB of rows (E 256, N 128):
    // with its static arrays over the default limit, hence the opt-in (the
    // limit, not the size launched; the small instance stays under 21 KiB).
    int bytes = (int)kv_smem_bytes(32 * CU_SP_FPL, 32 * CU_SP_EPL);
    CUDA_CHECK(cudaFuncSetAttribute(gather_bwd_kv_kernel<8, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    // the dense tiles' 74 KiB: 2 blocks per SM
    CUDA_CHECK(cudaFuncSetAttribute(tile_bwd_kv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)tile_smem_bytes()));
    // dQ's 40 KiB of rows beside its 11 KiB of static arrays: over the default 48 KiB in all
    CUDA_CHECK(cudaFuncSetAttribute(tile_bwd_q_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)qtile_smem_bytes()));
    CUDA_CHECK(cudaFuncSetAttribute(tile_fwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)ftile_smem_bytes()));
}

void cu_sp_gather_forward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, float *attn,
                          int ld_attn) {
    int n_tok = st->n_tok, N = st->N, E = st->E, blocks = cu_blocks(n_tok, WARPS);
    int ref = st->sem == SEMANTICS_REFERENCE;
    int vec_k = N % 4 == 0;  // KQ rows of 2N floats from a 256-byte aligned buffer
    int vec_v = E % 4 == 0 && ldv % 4 == 0 && ((uintptr_t)V & 15) == 0;
    cudaStream_t sm = cu_stream();
    if (small_rows(st))
        gather_fwd_kernel<4><<<blocks, 32 * WARPS, 0, sm>>>(attn, ld_attn, st->allow_p, st->allow_cnt, st->allow_key,
                                                           st->KQ, V, ldv, st->seq_sv, seq_off, st->n_seq, n_tok, N,
                                                           E, st->row_cap, st->model_len, ref, st->bf16, vec_k, vec_v);
    else
        gather_fwd_kernel<8><<<blocks, 32 * WARPS, 0, sm>>>(attn, ld_attn, st->allow_p, st->allow_cnt, st->allow_key,
                                                           st->KQ, V, ldv, st->seq_sv, seq_off, st->n_seq, n_tok, N,
                                                           E, st->row_cap, st->model_len, ref, st->bf16, vec_k, vec_v);
    CUDA_LAUNCHED();
}

void cu_sp_gather_backward_q(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, const float *dattn,
                             int ld_dattn) {
    int n_tok = st->n_tok, blocks = cu_blocks(n_tok, WARPS);
    cudaStream_t sm = cu_stream();
    if (small_rows(st))
        gather_bwd_q_kernel<4, 1><<<blocks, 32 * WARPS, 0, sm>>>(
            st->dKQ, st->allow_ds, st->allow_p, st->allow_cnt, st->allow_key, st->KQ, V, ldv, dattn, ld_dattn,
            seq_off, st->n_seq, n_tok, st->N, st->E, st->row_cap, st->bf16);
    else
        gather_bwd_q_kernel<8, 4><<<blocks, 32 * WARPS, 0, sm>>>(
            st->dKQ, st->allow_ds, st->allow_p, st->allow_cnt, st->allow_key, st->KQ, V, ldv, dattn, ld_dattn,
            seq_off, st->n_seq, n_tok, st->N, st->E, st->row_cap, st->bf16);
    CUDA_LAUNCHED();
}

void cu_sp_gather_backward_kv(cu_sparse_state *st, const float *dattn, int ld_dattn, float *dV, int ld_dv) {
    int n_tok = st->n_tok, blocks = cu_blocks(n_tok, KV_TILE);
    size_t smem = kv_smem_bytes(st->N, st->E);
    cudaStream_t sm = cu_stream();
    if (small_rows(st))
        gather_bwd_kv_kernel<4, 1><<<blocks, 32 * WARPS, smem, sm>>>(
            st->dKQ, dV, ld_dv, st->allow_ds, st->allow_p, st->tr_off, st->tr_cnt, st->tr_ent, st->KQ, dattn,
            ld_dattn, n_tok, st->N, st->E, st->row_cap);
    else
        gather_bwd_kv_kernel<8, 4><<<blocks, 32 * WARPS, smem, sm>>>(
            st->dKQ, dV, ld_dv, st->allow_ds, st->allow_p, st->tr_off, st->tr_cnt, st->tr_ent, st->KQ, dattn,
            ld_dattn, n_tok, st->N, st->E, st->row_cap);
    CUDA_LAUNCHED();
}

int cu_sp_tile_fits(const cu_sparse_state *st) { return st->N <= TILE_N && st->E <= TILE_E && cu_sp_gather_fits(st); }

void cu_sp_tile_backward_kv(cu_sparse_state *st, const float *dattn, int ld_dattn, float *dV, int ld_dv) {
    int n_tok = st->n_tok;
    tile_bwd_kv_kernel<<<cu_blocks(n_tok, TILE_K), 32 * WARPS, tile_smem_bytes(), cu_stream()>>>(
        st->dKQ, dV, ld_dv, st->allow_ds, st->allow_p, st->tr_off, st->tr_cnt, st->tr_ent, st->KQ, dattn, ld_dattn,
        n_tok, st->N, st->E, st->row_cap);
    CUDA_LAUNCHED();
}

void cu_sp_tile_backward_q(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, const float *dattn,
                           int ld_dattn) {
    int n_tok = st->n_tok;
    tile_bwd_q_kernel<<<cu_blocks(n_tok, QT_Q), 32 * WARPS, qtile_smem_bytes(), cu_stream()>>>(
        st->dKQ, st->allow_ds, st->allow_p, st->allow_cnt, st->allow_key, st->KQ, V, ldv, dattn, ld_dattn, seq_off,
        st->n_seq, n_tok, st->N, st->E, st->row_cap, st->bf16);
    CUDA_LAUNCHED();
}

void cu_sp_tile_forward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, float *attn, int ld_attn) {
    int n_tok = st->n_tok;
    tile_fwd_kernel<<<cu_blocks(n_tok, QT_Q), 32 * WARPS, ftile_smem_bytes(), cu_stream()>>>(
        attn, ld_attn, st->allow_p, st->allow_cnt, st->allow_key, st->KQ, V, ldv, st->seq_sv, seq_off, st->n_seq, n_tok,
        st->N, st->E, st->row_cap, st->model_len, st->sem == SEMANTICS_REFERENCE, st->bf16);
    CUDA_LAUNCHED();
}
