// cuda/sparse/attn.cu: the attention of the sparse branch on the GPU (the CUDA
// version of src/sparse/attn.c; see there for the formulas), over the
// fixed-stride lists of cuda/sparse/sparse.cu, and the dense causal `full` pattern.
//
// One warp per query row (forward, backward dQ) or per key row (backward dK,
// dV): a row of E values lives in registers, CU_SP_EPL per lane, and N
// features CU_SP_FPL per lane. Every sum runs in a fixed order (keys or
// queries ascending, warp sums by the same butterfly), so results repeat
// exactly. dK and dV of a key are gathered over the queries that hold it,
// ascending, from the transposed lists of cuda/sparse/trans.cu (no atomics).
//
// Reference empty rows (uniform 1/L over all L padded positions): S_V and the
// CPU's factorised backward are in cuda/sparse/empty.cu.
//
// The sparse kernels here are the previous ones, run with st->attn_old
// (HAX_SPARSE_ATTN=old) or rows longer than the default ones take; the
// default gathers, equal to them bit for bit, are in cuda/sparse/attn_gather.cu.
//
// bf16-pure (bf16 != 0): the CPU's roundings (src/sparse/attn.c): scores,
// P = R(exp(s - max) / sum), the output, dP, d score per element (the
// sums dQ, dK, dV are rounded by the caller, cuda/sparse/sparse.cu).
#include <math.h>

#include "cuda/sparse/internal.cuh"

// Rows per block: consecutive rows of a sequence share most of their keys
// (window, sink, key selection) or queries, so a block of 8 of them on one
// SM reads them largely from its L1 (8, not more: at ~48 registers per
// thread, 256-thread blocks keep the occupancy of 128-thread ones).
#define WARPS 8
#define FULL_MASK 0xffffffffu

// One query's share of a key's gradients (the gathers of both backwards):
// dK += d * Q_query (d = dScore), dV += p * dattn_query (p = the weight).
__device__ __forceinline__ void key_grad_add(float *dk, float *dv, float d, const float *q, float p,
                                             const float *da, int N, int E, int lane) {
#pragma unroll
    for (int u = 0; u < CU_SP_FPL; u++)
        if (lane + 32 * u < N) dk[u] += d * q[lane + 32 * u];
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++)
        if (lane + 32 * u < E) dv[u] += p * da[lane + 32 * u];
}

// Writes a key's gathered gradients: its dK row (the key half of dKQ, written)
// and its dV row (accumulated: V is X, which other paths also feed).
__device__ __forceinline__ void key_grad_store(float *dk_row, float *dv_row, const float *dk, const float *dv,
                                               int N, int E, int lane) {
#pragma unroll
    for (int u = 0; u < CU_SP_FPL; u++)
        if (lane + 32 * u < N) dk_row[lane + 32 * u] = dk[u];
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++)
        if (lane + 32 * u < E) dv_row[lane + 32 * u] += dv[u];
}

__device__ __forceinline__ float warp_maxf(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// ---------------------------------------------------------------- sparse forward

__global__ static void attn_fwd_kernel(float *attn, int ld_attn, float *allow_p, const int *allow_cnt,
                                       const int *allow_key, const float *KQ, const float *V, int ldv,
                                       const double *sv, const int *seq_off, int n_seq, int n_tok,
                                       int N, int E, int cap, int L, int ref, int bf16) {
    int g = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (g >= n_tok) return;  // the whole warp
    int s = cu_seq_of(seq_off, n_seq, g), o = seq_off[s], cnt = allow_cnt[g], ldkq = 2 * N;
    float *out = attn + (size_t)g * ld_attn;
    if (cnt == 0) {
        float pe = hax_bf16_round(1.0f / (float)L);  // bf16-pure: the uniform row's bf16 P
        for (int e = lane; e < E; e += 32) {
            double v = sv[(size_t)s * E + e];
            out[e] = !ref ? 0.0f : bf16 ? hax_bf16_round((float)(v * pe)) : (float)(v / L);
        }
        return;
    }
    const int *key = allow_key + (size_t)g * cap;
    float *p = allow_p + (size_t)g * cap;
    const float *q = KQ + (size_t)g * ldkq + N;
    float mx = -INFINITY;
    for (int i = lane; i < cnt; i += 32) {
        const float *k = KQ + (size_t)(o + key[i]) * ldkq;
        float sc = 0;
        for (int f = 0; f < N; f++) sc += q[f] * k[f];
        if (bf16) sc = hax_bf16_round(sc);
        p[i] = sc;
        mx = fmaxf(mx, sc);
    }
    mx = warp_maxf(mx);
    double sum = 0;
    for (int i = lane; i < cnt; i += 32) {
        float ex = expf(p[i] - mx);
        p[i] = ex;
        sum += ex;
    }
    sum = cu_warp_sum(sum);
    float inv = (float)(1.0 / sum);
    for (int i = lane; i < cnt; i += 32) p[i] = bf16 ? hax_bf16_round(p[i] / (float)sum) : p[i] * inv;
    __syncwarp();
    float acc[CU_SP_EPL] = {0};
    for (int i0 = 0; i0 < cnt; i0 += 32) {  // keys and weights 32 at a time, one per lane
        int nb = min(32, cnt - i0), kl = lane < nb ? key[i0 + lane] : 0;
        float pl = lane < nb ? p[i0 + lane] : 0.0f;
        for (int b = 0; b < nb; b++) {
            float pi = __shfl_sync(FULL_MASK, pl, b);
            const float *v = V + (size_t)(o + __shfl_sync(FULL_MASK, kl, b)) * ldv;
#pragma unroll
            for (int u = 0; u < CU_SP_EPL; u++)
                if (lane + 32 * u < E) acc[u] += pi * v[lane + 32 * u];
        }
    }
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++)
        if (lane + 32 * u < E) out[lane + 32 * u] = bf16 ? hax_bf16_round(acc[u]) : acc[u];
}

// ---------------------------------------------------------------- full forward

// Online softmax per lane over keys j = lane, lane + 32, ... <= t, merged
// across lanes; then the keys 32 at a time, each lane scoring one and the
// probabilities broadcast by shuffles into the E-lane accumulators.
__global__ static void full_fwd_kernel(float *attn, int ld_attn, float *lse, const float *KQ,
                                       const float *V, int ldv, const int *seq_off, int n_seq,
                                       int n_tok, int N, int E, int bf16) {
    int g = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (g >= n_tok) return;
    int o = seq_off[cu_seq_of(seq_off, n_seq, g)], t = g - o, ldkq = 2 * N;
    const float *q = KQ + (size_t)g * ldkq + N;
    float m = -INFINITY, l = 0;
    for (int j = lane; j <= t; j += 32) {
        const float *k = KQ + (size_t)(o + j) * ldkq;
        float sc = 0;
        for (int f = 0; f < N; f++) sc += q[f] * k[f];
        if (bf16) sc = hax_bf16_round(sc);
        if (sc > m) l = l * expf(m - sc) + 1.0f, m = sc;
        else l += expf(sc - m);
    }
    for (int off = 16; off > 0; off >>= 1) {
        float m2 = __shfl_xor_sync(FULL_MASK, m, off), l2 = __shfl_xor_sync(FULL_MASK, l, off);
        float mn = fmaxf(m, m2);
        l = (l > 0 ? l * expf(m - mn) : 0.0f) + (l2 > 0 ? l2 * expf(m2 - mn) : 0.0f);
        m = mn;
    }
    float ls = m + logf(l);
    float acc[CU_SP_EPL] = {0};
    for (int j0 = 0; j0 <= t; j0 += 32) {
        int j = j0 + lane, nb = min(32, t - j0 + 1);
        float p = 0;
        if (j <= t) {
            const float *k = KQ + (size_t)(o + j) * ldkq;
            float sc = 0;
            for (int f = 0; f < N; f++) sc += q[f] * k[f];
            p = bf16 ? hax_bf16_round(expf(hax_bf16_round(sc) - ls)) : expf(sc - ls);
        }
        for (int b = 0; b < nb; b++) {
            float pb = __shfl_sync(FULL_MASK, p, b);
            const float *v = V + (size_t)(o + j0 + b) * ldv;
#pragma unroll
            for (int u = 0; u < CU_SP_EPL; u++)
                if (lane + 32 * u < E) acc[u] += pb * v[lane + 32 * u];
        }
    }
    float *out = attn + (size_t)g * ld_attn;
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++)
        if (lane + 32 * u < E) out[lane + 32 * u] = bf16 ? hax_bf16_round(acc[u]) : acc[u];
    if (lane == 0) lse[g] = ls;
}

void cu_sp_attn_forward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv,
                        float *attn, int ld_attn) {
    int n_tok = st->n_tok, n_seq = st->n_seq, blocks = cu_blocks(n_tok, WARPS);
    cudaStream_t sm = cu_stream();
    if (sparse_pattern_has(st->mask, SPF_DENSE)) {
        full_fwd_kernel<<<blocks, 32 * WARPS, 0, sm>>>(attn, ld_attn, st->lse, st->KQ, V, ldv, seq_off,
                                                       n_seq, n_tok, st->N, st->E, st->bf16);
        CUDA_LAUNCHED();
        return;
    }
    int ref = st->sem == SEMANTICS_REFERENCE;
    cu_sp_empty_forward(st, seq_off, V, ldv);  // S_V of the sequences with an empty row
    cu_sp_phase(st, "empty-row S_V");
    if ((st->tiles & SP_TILES_FWD) && cu_sp_tile_fits(st)) {
        cu_sp_tile_forward(st, seq_off, V, ldv, attn, ld_attn);
        return;
    }
    if (st->attn_old != 1 && cu_sp_gather_fits(st)) {
        cu_sp_gather_forward(st, seq_off, V, ldv, attn, ld_attn);
        return;
    }
    attn_fwd_kernel<<<blocks, 32 * WARPS, 0, sm>>>(attn, ld_attn, st->allow_p, st->allow_cnt,
                                                   st->allow_key, st->KQ, V, ldv, st->seq_sv, seq_off,
                                                   n_seq, n_tok, st->N, st->E, st->row_cap,
                                                   st->model_len, ref, st->bf16);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- sparse backward

// Per query: dP_i = dattn . V_key (warp sums), D = sum p dP (double, keys in
// order), ds_i = p_i (dP_i - D) into allow_ds, dQ = sum ds_i K_key.
__global__ static void attn_bwd_q_kernel(float *dKQ, float *allow_ds, const float *allow_p,
                                         const int *allow_cnt, const int *allow_key, const float *KQ,
                                         const float *V, int ldv, const float *dattn, int ld_dattn,
                                         const int *seq_off, int n_seq, int n_tok, int N, int E,
                                         int cap, int bf16) {
    int g = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (g >= n_tok) return;
    int cnt = allow_cnt[g], ldkq = 2 * N;
    if (cnt == 0) return;
    int o = seq_off[cu_seq_of(seq_off, n_seq, g)];
    const int *key = allow_key + (size_t)g * cap;
    const float *p = allow_p + (size_t)g * cap, *da = dattn + (size_t)g * ld_dattn;
    float *ds = allow_ds + (size_t)g * cap;
    float dr[CU_SP_EPL];
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++) dr[u] = lane + 32 * u < E ? da[lane + 32 * u] : 0.0f;
    double D = 0;
    for (int i0 = 0; i0 < cnt; i0 += 32) {  // keys and weights 32 at a time, one per lane
        int nb = min(32, cnt - i0), kl = lane < nb ? key[i0 + lane] : 0;
        float pl = lane < nb ? p[i0 + lane] : 0.0f;
        for (int b = 0; b < nb; b++) {
            const float *v = V + (size_t)(o + __shfl_sync(FULL_MASK, kl, b)) * ldv;
            float part = 0;
#pragma unroll
            for (int u = 0; u < CU_SP_EPL; u++)
                if (lane + 32 * u < E) part += dr[u] * v[lane + 32 * u];
            part = cu_warp_sumf(part);
            if (bf16) part = hax_bf16_round(part);  // dP, a bf16 GEMM output
            D += (double)__shfl_sync(FULL_MASK, pl, b) * part;  // every lane the same sum
            if (lane == b) ds[i0 + b] = part;
        }
    }
    for (int i = lane; i < cnt; i += 32) {
        float d = p[i] * (ds[i] - (float)D);
        ds[i] = bf16 ? hax_bf16_round(d) : d;
    }
    __syncwarp();
    float acc[CU_SP_FPL] = {0};
    for (int i0 = 0; i0 < cnt; i0 += 32) {
        int nb = min(32, cnt - i0), kl = lane < nb ? key[i0 + lane] : 0;
        float dl = lane < nb ? ds[i0 + lane] : 0.0f;
        for (int b = 0; b < nb; b++) {
            float dsi = __shfl_sync(FULL_MASK, dl, b);
            const float *k = KQ + (size_t)(o + __shfl_sync(FULL_MASK, kl, b)) * ldkq;
#pragma unroll
            for (int u = 0; u < CU_SP_FPL; u++)
                if (lane + 32 * u < N) acc[u] += dsi * k[lane + 32 * u];
        }
    }
    float *dq = dKQ + (size_t)g * ldkq + N;
#pragma unroll
    for (int u = 0; u < CU_SP_FPL; u++)
        if (lane + 32 * u < N) dq[lane + 32 * u] = acc[u];
}

// Per key j: dK_j = sum_t ds_tj Q_t, dV_j += sum_t P_tj dattn_t over the
// queries t that hold j, from its transposed list (cuda/sparse/trans.cu,
// queries ascending): 32 entries loaded at a time, one per lane, then added
// one after the other in list order. A key can have hundreds of holders (a
// dilated key, a popular key-selection pick): the Q and dattn rows of GATHER_U
// holders are loaded before any is added, so their loads overlap instead of
// each waiting for the previous row's adds (same adds, same order).
#define GATHER_U 4
__global__ static void attn_bwd_k_kernel(float *dKQ, float *dV, int ld_dv, const float *allow_ds,
                                         const float *allow_p, const int *tr_off, const int *tr_cnt,
                                         const int *tr_ent, const float *KQ, const float *dattn,
                                         int ld_dattn, int n_tok, int N, int E, int cap) {
    int j = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (j >= n_tok) return;
    int ldkq = 2 * N, start = tr_off[j], cnt = tr_cnt[j];
    float dk[CU_SP_FPL] = {0}, dv[CU_SP_EPL] = {0};
    for (int i0 = 0; i0 < cnt; i0 += 32) {
        int nb = min(32, cnt - i0), gq = 0;
        float d = 0.0f, p = 0.0f;
        if (lane < nb) {
            int slot = tr_ent[start + i0 + lane];
            gq = slot / cap, d = allow_ds[slot], p = allow_p[slot];
        }
        for (int b0 = 0; b0 < nb; b0 += GATHER_U) {
            float qr[GATHER_U][CU_SP_FPL], dr[GATHER_U][CU_SP_EPL], db[GATHER_U], pb[GATHER_U];
#pragma unroll
            for (int w = 0; w < GATHER_U; w++) {  // past nb: the last holder again, not added
                int b = min(b0 + w, nb - 1), gb = __shfl_sync(FULL_MASK, gq, b);
                db[w] = __shfl_sync(FULL_MASK, d, b), pb[w] = __shfl_sync(FULL_MASK, p, b);
                const float *q = KQ + (size_t)gb * ldkq + N, *da = dattn + (size_t)gb * ld_dattn;
#pragma unroll
                for (int u = 0; u < CU_SP_FPL; u++) qr[w][u] = lane + 32 * u < N ? q[lane + 32 * u] : 0.0f;
#pragma unroll
                for (int u = 0; u < CU_SP_EPL; u++) dr[w][u] = lane + 32 * u < E ? da[lane + 32 * u] : 0.0f;
            }
#pragma unroll
            for (int w = 0; w < GATHER_U; w++) {
                if (b0 + w >= nb) break;  // the same for the whole warp
#pragma unroll
                for (int u = 0; u < CU_SP_FPL; u++)
                    if (lane + 32 * u < N) dk[u] += db[w] * qr[w][u];
#pragma unroll
                for (int u = 0; u < CU_SP_EPL; u++)
                    if (lane + 32 * u < E) dv[u] += pb[w] * dr[w][u];
            }
        }
    }
    key_grad_store(dKQ + (size_t)j * ldkq, dV + (size_t)j * ld_dv, dk, dv, N, E, lane);
}

// ---------------------------------------------------------------- full backward

// Warp dot products of a register row (per lane FPL/EPL values) with a row in memory.
__device__ __forceinline__ float dot_n(const float *r, const float *x, int N, int lane) {
    float part = 0;
#pragma unroll
    for (int u = 0; u < CU_SP_FPL; u++)
        if (lane + 32 * u < N) part += r[u] * x[lane + 32 * u];
    return cu_warp_sumf(part);
}
__device__ __forceinline__ float dot_e(const float *r, const float *x, int E, int lane) {
    float part = 0;
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++)
        if (lane + 32 * u < E) part += r[u] * x[lane + 32 * u];
    return cu_warp_sumf(part);
}

// Per query: D_t = sum_{j<=t} P dP (double), then dQ_t = sum_j P (dP - D) K_j.
// `full`'s P_tj and dP_tj from the warp dot products (bf16-pure: the rounded
// score, P = R(exp(s - lse)), dP rounded; src/sparse/attn.c full_p).
__device__ __forceinline__ float full_p_dev(float s, float lse, int bf16) {
    return bf16 ? hax_bf16_round(expf(hax_bf16_round(s) - lse)) : expf(s - lse);
}
__device__ __forceinline__ float full_dp_dev(float dp, int bf16) { return bf16 ? hax_bf16_round(dp) : dp; }
__device__ __forceinline__ float full_ds_dev(float p, float dp, float D, int bf16) {
    float d = p * (dp - D);
    return bf16 ? hax_bf16_round(d) : d;
}

__global__ static void full_bwd_q_kernel(float *dKQ, float *rowD, const float *lse, const float *KQ,
                                         const float *V, int ldv, const float *dattn, int ld_dattn,
                                         const int *seq_off, int n_seq, int n_tok, int N, int E, int bf16) {
    int g = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (g >= n_tok) return;
    int o = seq_off[cu_seq_of(seq_off, n_seq, g)], t = g - o, ldkq = 2 * N;
    float qr[CU_SP_FPL], dr[CU_SP_EPL], ls = lse[g];
    const float *q = KQ + (size_t)g * ldkq + N, *da = dattn + (size_t)g * ld_dattn;
#pragma unroll
    for (int u = 0; u < CU_SP_FPL; u++) qr[u] = lane + 32 * u < N ? q[lane + 32 * u] : 0.0f;
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++) dr[u] = lane + 32 * u < E ? da[lane + 32 * u] : 0.0f;
    double D = 0;
    for (int j = 0; j <= t; j++) {
        float p = full_p_dev(dot_n(qr, KQ + (size_t)(o + j) * ldkq, N, lane), ls, bf16);
        D += (double)p * full_dp_dev(dot_e(dr, V + (size_t)(o + j) * ldv, E, lane), bf16);
    }
    float Df = (float)D, acc[CU_SP_FPL] = {0};
    for (int j = 0; j <= t; j++) {
        const float *k = KQ + (size_t)(o + j) * ldkq;
        float p = full_p_dev(dot_n(qr, k, N, lane), ls, bf16);
        float d = full_ds_dev(p, full_dp_dev(dot_e(dr, V + (size_t)(o + j) * ldv, E, lane), bf16), Df, bf16);
#pragma unroll
        for (int u = 0; u < CU_SP_FPL; u++)
            if (lane + 32 * u < N) acc[u] += d * k[lane + 32 * u];
    }
#pragma unroll
    for (int u = 0; u < CU_SP_FPL; u++)
        if (lane + 32 * u < N) dKQ[(size_t)g * ldkq + N + lane + 32 * u] = acc[u];
    if (lane == 0) rowD[g] = Df;
}

// Per key j: dK_j and dV_j over the queries t >= j (P recomputed from lse).
__global__ static void full_bwd_k_kernel(float *dKQ, float *dV, int ld_dv, const float *lse,
                                         const float *rowD, const float *KQ, const float *V, int ldv,
                                         const float *dattn, int ld_dattn, const int *seq_off,
                                         int n_seq, int n_tok, int N, int E, int bf16) {
    int j = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (j >= n_tok) return;
    int end = seq_off[cu_seq_of(seq_off, n_seq, j) + 1], ldkq = 2 * N;
    float kr[CU_SP_FPL], vr[CU_SP_EPL], dk[CU_SP_FPL] = {0}, dv[CU_SP_EPL] = {0};
#pragma unroll
    for (int u = 0; u < CU_SP_FPL; u++) kr[u] = lane + 32 * u < N ? KQ[(size_t)j * ldkq + lane + 32 * u] : 0.0f;
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++) vr[u] = lane + 32 * u < E ? V[(size_t)j * ldv + lane + 32 * u] : 0.0f;
    for (int g = j; g < end; g++) {
        const float *q = KQ + (size_t)g * ldkq + N, *da = dattn + (size_t)g * ld_dattn;
        float p = full_p_dev(dot_n(kr, q, N, lane), lse[g], bf16);
        float d = full_ds_dev(p, full_dp_dev(dot_e(vr, da, E, lane), bf16), rowD[g], bf16);
        key_grad_add(dk, dv, d, q, p, da, N, E, lane);
    }
    key_grad_store(dKQ + (size_t)j * ldkq, dV + (size_t)j * ld_dv, dk, dv, N, E, lane);
}

void cu_sp_attn_backward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv,
                         const float *dattn, int ld_dattn, float *dV, int ld_dv) {
    int n_tok = st->n_tok, n_seq = st->n_seq, N = st->N, E = st->E, cap = st->row_cap;
    int blocks = cu_blocks(n_tok, WARPS);
    cudaStream_t sm = cu_stream();
    CUDA_CHECK(cudaMemsetAsync(st->dKQ, 0, sizeof(float) * (size_t)n_tok * 2 * N, sm));
    if (sparse_pattern_has(st->mask, SPF_DENSE)) {
        full_bwd_q_kernel<<<blocks, 32 * WARPS, 0, sm>>>(st->dKQ, st->rowD, st->lse, st->KQ, V, ldv,
                                                         dattn, ld_dattn, seq_off, n_seq, n_tok, N, E, st->bf16);
        CUDA_LAUNCHED();
        full_bwd_k_kernel<<<blocks, 32 * WARPS, 0, sm>>>(st->dKQ, dV, ld_dv, st->lse, st->rowD, st->KQ,
                                                         V, ldv, dattn, ld_dattn, seq_off, n_seq,
                                                         n_tok, N, E, st->bf16);
        CUDA_LAUNCHED();
        return;
    }
    if ((st->tiles & SP_TILES_Q) && cu_sp_tile_fits(st)) {
        cu_sp_tile_backward_q(st, seq_off, V, ldv, dattn, ld_dattn);
    } else if (st->attn_old == 0 && cu_sp_gather_fits(st)) {
        cu_sp_gather_backward_q(st, seq_off, V, ldv, dattn, ld_dattn);
    } else {
        attn_bwd_q_kernel<<<blocks, 32 * WARPS, 0, sm>>>(st->dKQ, st->allow_ds, st->allow_p, st->allow_cnt,
                                                         st->allow_key, st->KQ, V, ldv, dattn, ld_dattn,
                                                         seq_off, n_seq, n_tok, N, E, cap, st->bf16);
        CUDA_LAUNCHED();
    }
    cu_sp_phase(st, "attention dQ");
    cu_sp_transpose(st, seq_off);
    cu_sp_phase(st, "transposed lists");
    if ((st->tiles & SP_TILES_KV) && cu_sp_tile_fits(st)) {
        cu_sp_tile_backward_kv(st, dattn, ld_dattn, dV, ld_dv);
    } else if (st->attn_old == 0) {
        cu_sp_gather_backward_kv(st, dattn, ld_dattn, dV, ld_dv);
    } else {
        attn_bwd_k_kernel<<<blocks, 32 * WARPS, 0, sm>>>(st->dKQ, dV, ld_dv, st->allow_ds, st->allow_p,
                                                         st->tr_off, st->tr_cnt, st->tr_ent, st->KQ, dattn,
                                                         ld_dattn, n_tok, N, E, cap);
        CUDA_LAUNCHED();
    }
    cu_sp_phase(st, "attention dK dV");
    cu_sp_empty_backward(st, seq_off, V, ldv, dattn, ld_dattn, dV, ld_dv);  // its own phases
}
