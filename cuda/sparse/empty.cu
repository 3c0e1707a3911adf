// cuda/sparse/empty.cu: the reference semantics' empty rows on the GPU (the
// CUDA version of src/sparse/attn.c sum_values and empty_rows_backward; see
// there and MODEL.md §5.6 for the formulas). A row with no allowed key is
// uniform over all L padded positions; its backward factorises through
// per-sequence sums, in double:
//   S_V = sum_j V_j,  S_K = sum_j K_j,  M = sum_j V_j^T K_j,  a_t = dattn_t . S_V,
//   G = sum_{t empty} dattn_t^T Q_t,  c = sum_{t empty} a_t Q_t,  dsum = sum_{t empty} dattn_t
//   dQ_t += (dattn_t . M - a_t S_K / L) / L             (t empty)
//   dK_j += (V_j . G - c / L) / L,  dV_j += dsum / L     (every j of the sequence)
// Only sequences with an empty row (st->seq_empty, set by the list builder)
// do any of it. Every sum runs over positions (or e) ascending, one product
// and one add rounded apiece as the CPU's (no fused multiply-add), so the
// results are the CPU's bit for bit before the final float conversion.
//
// Work is spread over the sequence's (e, f) entries, not serial per sequence:
// the sums kernel gives each thread R consecutive e of one f and walks the
// positions in shared-memory tiles; the apply kernel is one warp per row.
//
// bf16-pure (st->bf16): the empty rows' backward runs dense instead, as the
// CPU's empty_rows_backward_bf16 (src/sparse/attn.c): every dP and d score of
// an empty row rounded to bf16 (P = R(1/L) on all L keys). One warp per empty
// row for D_t and dQ_t, one warp per key of a sequence with an empty row for
// dK_j and dV_j, each adding in the CPU's order onto what the sparse rows
// left (keys ascending for dQ, empty rows ascending for dK and dV; products
// by __fmul_rn, so no fused multiply-add moves a bit).
#include "cuda/sparse/internal.cuh"

#define FULL_MASK 0xffffffffu
#define SUM_THREADS 256  // threads of a sums block
#define SUM_R 4          // e values per thread of a sums block
#define SUM_TJ 32        // positions per shared-memory tile
#define ROW_WARPS 8      // rows per block of the per-row kernels

// sv[s, e] = sum_{j<n} V_j[e] in double, positions in order, for the
// sequences with an empty row (the others are never read).
__global__ static void seq_sum_kernel(double *sv, const float *V, int ldv, const int *seq_off,
                                      const int *seq_empty, int E) {
    int s = blockIdx.x, e = blockIdx.y * blockDim.x + threadIdx.x;
    if (!seq_empty[s] || e >= E) return;
    double acc = 0;
    int end = seq_off[s + 1];
#pragma unroll 8
    for (int j = seq_off[s]; j < end; j++) acc += V[(size_t)j * ldv + e];
    sv[(size_t)s * E + e] = acc;
}

void cu_sp_empty_forward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv) {
    if (st->sem != SEMANTICS_REFERENCE || st->n_seq == 0) return;
    dim3 grid(st->n_seq, cu_blocks(st->E, 128));
    seq_sum_kernel<<<grid, 128, 0, cu_stream()>>>(st->seq_sv, V, ldv, seq_off, st->seq_empty, st->E);
    CUDA_LAUNCHED();
}

// a[g] = dattn_g . S_V (double, e ascending) for every empty row g, one thread per row.
__global__ static void empty_dot_kernel(double *a, const int *allow_cnt, const double *sv, const float *dattn,
                                        int ld_dattn, const int *seq_off, int n_seq, int n_tok, int E) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_tok || allow_cnt[g] != 0) return;
    int s = cu_seq_of(seq_off, n_seq, g);
    const float *da = dattn + (size_t)g * ld_dattn;
    const double *svs = sv + (size_t)s * E;
    double acc = 0;
#pragma unroll 8
    for (int e = 0; e < E; e++) acc = __dadd_rn(acc, __dmul_rn((double)da[e], svs[e]));
    a[g] = acc;
}

// Block (s, y): the sums of sequence s for e in [e0, e0 + EB), EB = R * (SUM_THREADS / N);
// thread (grp, f) holds e0 + grp * R + r for r < R. Block y == 0 also sums S_K
// and c (threads grp == 0). Tiles of SUM_TJ positions are staged in shared memory.
__global__ static void empty_sums_kernel(double *work, const int *allow_cnt, const float *KQ, const float *V,
                                         int ldv, const float *dattn, int ld_dattn, const double *a,
                                         const int *seq_off, const int *seq_empty, int N, int E) {
    int s = blockIdx.x;
    if (!seq_empty[s]) return;
    extern __shared__ float smem[];
    int tid = threadIdx.x, f = tid % N, grp = tid / N, n_grp = SUM_THREADS / N, EB = SUM_R * n_grp;
    int e0 = blockIdx.y * EB, eb = min(EB, E - e0), o = seq_off[s], n = seq_off[s + 1] - o, ldkq = 2 * N;
    float *tv = smem, *td = tv + SUM_TJ * EB, *tk = td + SUM_TJ * EB, *tq = tk + SUM_TJ * N;
    double *ta = (double *)(tq + SUM_TJ * N);  // 8-byte aligned: the float blocks above are multiples of SUM_TJ
    int *tempty = (int *)(ta + SUM_TJ);
    bool on = grp < n_grp, side = blockIdx.y == 0 && grp == 0;
    double mm[SUM_R] = {0}, gg[SUM_R] = {0}, ds[SUM_R] = {0}, sk = 0, cc = 0;
    for (int j0 = 0; j0 < n; j0 += SUM_TJ) {
        int nj = min(SUM_TJ, n - j0);
        __syncthreads();  // the previous tile is consumed
        for (int i = tid; i < nj; i += SUM_THREADS) {
            tempty[i] = allow_cnt[o + j0 + i] == 0;
            ta[i] = tempty[i] ? a[o + j0 + i] : 0.0;
        }
        for (int i = tid; i < nj * eb; i += SUM_THREADS) {
            int jj = i / eb, e = i % eb, g = o + j0 + jj;
            tv[jj * EB + e] = V[(size_t)g * ldv + e0 + e];
            td[jj * EB + e] = allow_cnt[g] == 0 ? dattn[(size_t)g * ld_dattn + e0 + e] : 0.0f;
        }
        for (int i = tid; i < nj * N; i += SUM_THREADS) {
            int jj = i / N, x = i % N;
            tk[i] = KQ[(size_t)(o + j0 + jj) * ldkq + x];
            tq[i] = KQ[(size_t)(o + j0 + jj) * ldkq + N + x];
        }
        __syncthreads();
        if (!on) continue;
        for (int jj = 0; jj < nj; jj++) {
            double k = tk[jj * N + f];
#pragma unroll
            for (int r = 0; r < SUM_R; r++) mm[r] += (double)tv[jj * EB + grp * SUM_R + r] * k;  // exact products
            if (side) sk += tk[jj * N + f];
            if (!tempty[jj]) continue;  // the same for the whole block
            double q = tq[jj * N + f];
#pragma unroll
            for (int r = 0; r < SUM_R; r++) {
                float d = td[jj * EB + grp * SUM_R + r];
                gg[r] += (double)d * q;
                if (f == 0) ds[r] += d;
            }
            if (side) cc = __dadd_rn(cc, __dmul_rn(ta[jj], q));
        }
    }
    if (!on) return;
    double *M = work + (size_t)s * cu_sp_empty_doubles(E, N), *G = M + (size_t)E * N;
    double *dsum = G + (size_t)E * N, *skv = dsum + E, *c = skv + N;
#pragma unroll
    for (int r = 0; r < SUM_R; r++) {
        int e = grp * SUM_R + r;
        if (e >= eb) break;
        M[(size_t)(e0 + e) * N + f] = mm[r], G[(size_t)(e0 + e) * N + f] = gg[r];
        if (f == 0) dsum[e0 + e] = ds[r];
    }
    if (side) skv[f] = sk, c[f] = cc;
}

// d += sum_e x_e W[e, f] for the lane's features f = lane + 32 w, e ascending,
// the row x spread over the lanes (x[u] = element lane + 32 u).
__device__ __forceinline__ void row_times(double *acc, const float *x, const double *W, int N, int E, int lane) {
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++) {
        if (32 * u >= E) break;
        for (int b = 0; b < 32 && 32 * u + b < E; b++) {
            double xe = __shfl_sync(FULL_MASK, x[u], b);
            const double *w = W + (size_t)(32 * u + b) * N;
#pragma unroll
            for (int v = 0; v < CU_SP_FPL; v++)
                if (lane + 32 * v < N) acc[v] = __dadd_rn(acc[v], __dmul_rn(xe, w[lane + 32 * v]));
        }
    }
}

// One warp per row g of a sequence with an empty row: dK_g and dV_g, and dQ_g if g is empty.
__global__ static void empty_apply_kernel(float *dKQ, float *dV, int ld_dv, const double *work, const double *a,
                                          const int *allow_cnt, const float *V, int ldv, const float *dattn,
                                          int ld_dattn, const int *seq_off, const int *seq_empty, int n_seq,
                                          int n_tok, int N, int E, int L) {
    int g = blockIdx.x * ROW_WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (g >= n_tok) return;  // the whole warp
    int s = cu_seq_of(seq_off, n_seq, g), ldkq = 2 * N;
    if (!seq_empty[s]) return;
    const double *M = work + (size_t)s * cu_sp_empty_doubles(E, N), *G = M + (size_t)E * N;
    const double *dsum = G + (size_t)E * N, *sk = dsum + E, *c = sk + N;
    float x[CU_SP_EPL];
    double acc[CU_SP_FPL];
    // dK_g = (V_g . G - c / L) / L
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++) x[u] = lane + 32 * u < E ? V[(size_t)g * ldv + lane + 32 * u] : 0.0f;
#pragma unroll
    for (int v = 0; v < CU_SP_FPL; v++) acc[v] = 0;
    row_times(acc, x, G, N, E, lane);
#pragma unroll
    for (int v = 0; v < CU_SP_FPL; v++)
        if (lane + 32 * v < N) dKQ[(size_t)g * ldkq + lane + 32 * v] += (float)((acc[v] - c[lane + 32 * v] / L) / L);
    for (int e = lane; e < E; e += 32) dV[(size_t)g * ld_dv + e] += (float)(dsum[e] / L);
    if (allow_cnt[g] != 0) return;
    // dQ_g = (dattn_g . M - a_g S_K / L) / L
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++)
        x[u] = lane + 32 * u < E ? dattn[(size_t)g * ld_dattn + lane + 32 * u] : 0.0f;
#pragma unroll
    for (int v = 0; v < CU_SP_FPL; v++) acc[v] = 0;
    row_times(acc, x, M, N, E, lane);
    double ag = a[g];
#pragma unroll
    for (int v = 0; v < CU_SP_FPL; v++) {
        int f = lane + 32 * v;
        if (f < N) dKQ[(size_t)g * ldkq + N + f] += (float)((acc[v] - __dmul_rn(ag, sk[f]) / L) / L);
    }
}

// ---------------------------------------------------------------- bf16-pure: dense empty rows

// The warp dot product of a register row r (element lane + 32 u in r[u]) with
// x in memory: per-lane partials in u order, then the butterfly. dP_tj is
// the same bits whichever of dattn_t, V_j is in registers.
__device__ __forceinline__ float empty_dot(const float *r, const float *x, int E, int lane) {
    float part = 0;
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++)
        if (lane + 32 * u < E) part += r[u] * x[lane + 32 * u];
    return cu_warp_sumf(part);
}

// One warp per empty row g: D_g = sum_j pe dP_gj (j ascending), kept in
// rowD[g]; dQ_g = sum_j R(pe (dP_gj - D_g)) K_j into dKQ (zero there: the
// sparse kernel skips empty rows).
__global__ static void empty_q_bf16_kernel(float *dKQ, float *rowD, const int *allow_cnt, const float *KQ,
                                           const float *V, int ldv, const float *dattn, int ld_dattn,
                                           const int *seq_off, int n_seq, int n_tok, int N, int E, int L) {
    int g = blockIdx.x * ROW_WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (g >= n_tok || allow_cnt[g] != 0) return;  // the whole warp
    int s = cu_seq_of(seq_off, n_seq, g), o = seq_off[s], n = seq_off[s + 1] - o, ldkq = 2 * N;
    float pe = hax_bf16_round(1.0f / (float)L), dr[CU_SP_EPL], acc[CU_SP_FPL] = {0};
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++)
        dr[u] = lane + 32 * u < E ? dattn[(size_t)g * ld_dattn + lane + 32 * u] : 0.0f;
    double D = 0;
    for (int j = 0; j < n; j++)
        D += (double)pe * hax_bf16_round(empty_dot(dr, V + (size_t)(o + j) * ldv, E, lane));
    float Df = (float)D;
    for (int j = 0; j < n; j++) {
        float dp = hax_bf16_round(empty_dot(dr, V + (size_t)(o + j) * ldv, E, lane));
        float ds = hax_bf16_round(pe * (dp - Df));
        const float *k = KQ + (size_t)(o + j) * ldkq;
#pragma unroll
        for (int u = 0; u < CU_SP_FPL; u++)
            if (lane + 32 * u < N) acc[u] = acc[u] + __fmul_rn(ds, k[lane + 32 * u]);
    }
#pragma unroll
    for (int u = 0; u < CU_SP_FPL; u++)
        if (lane + 32 * u < N) dKQ[(size_t)g * ldkq + N + lane + 32 * u] += acc[u];
    if (lane == 0) rowD[g] = Df;
}

// One warp per key j of a sequence with an empty row: over the empty rows t
// ascending, dK_j += R(pe (dP_tj - D_t)) Q_t and dV_j += pe dattn_t, onto
// the values already there.
__global__ static void empty_kv_bf16_kernel(float *dKQ, float *dV, int ld_dv, const float *rowD,
                                            const int *allow_cnt, const float *KQ, const float *V, int ldv,
                                            const float *dattn, int ld_dattn, const int *seq_off,
                                            const int *seq_empty, int n_seq, int n_tok, int N, int E, int L) {
    int j = blockIdx.x * ROW_WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (j >= n_tok) return;  // the whole warp
    int s = cu_seq_of(seq_off, n_seq, j), o = seq_off[s], n = seq_off[s + 1] - o, ldkq = 2 * N;
    if (!seq_empty[s]) return;
    float pe = hax_bf16_round(1.0f / (float)L), vr[CU_SP_EPL], dk[CU_SP_FPL], dv[CU_SP_EPL];
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++) {
        int e = lane + 32 * u;
        vr[u] = e < E ? V[(size_t)j * ldv + e] : 0.0f;
        dv[u] = e < E ? dV[(size_t)j * ld_dv + e] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < CU_SP_FPL; u++) dk[u] = lane + 32 * u < N ? dKQ[(size_t)j * ldkq + lane + 32 * u] : 0.0f;
    for (int t = o; t < o + n; t++) {
        if (allow_cnt[t] != 0) continue;  // the same for the whole warp
        const float *da = dattn + (size_t)t * ld_dattn, *q = KQ + (size_t)t * ldkq + N;
        float ds = hax_bf16_round(pe * (hax_bf16_round(empty_dot(vr, da, E, lane)) - rowD[t]));
#pragma unroll
        for (int u = 0; u < CU_SP_FPL; u++)
            if (lane + 32 * u < N) dk[u] = dk[u] + __fmul_rn(ds, q[lane + 32 * u]);
#pragma unroll
        for (int u = 0; u < CU_SP_EPL; u++)
            if (lane + 32 * u < E) dv[u] = dv[u] + __fmul_rn(pe, da[lane + 32 * u]);
    }
#pragma unroll
    for (int u = 0; u < CU_SP_FPL; u++)
        if (lane + 32 * u < N) dKQ[(size_t)j * ldkq + lane + 32 * u] = dk[u];
#pragma unroll
    for (int u = 0; u < CU_SP_EPL; u++)
        if (lane + 32 * u < E) dV[(size_t)j * ld_dv + lane + 32 * u] = dv[u];
}

static void empty_backward_bf16(cu_sparse_state *st, const int *seq_off, const float *V, int ldv,
                                const float *dattn, int ld_dattn, float *dV, int ld_dv) {
    int n_tok = st->n_tok, blocks = cu_blocks(n_tok, ROW_WARPS);
    cudaStream_t sm = cu_stream();
    empty_q_bf16_kernel<<<blocks, 32 * ROW_WARPS, 0, sm>>>(st->dKQ, st->rowD, st->allow_cnt, st->KQ, V, ldv, dattn,
                                                         ld_dattn, seq_off, st->n_seq, n_tok, st->N, st->E,
                                                         st->model_len);
    CUDA_LAUNCHED();
    empty_kv_bf16_kernel<<<blocks, 32 * ROW_WARPS, 0, sm>>>(st->dKQ, dV, ld_dv, st->rowD, st->allow_cnt, st->KQ, V,
                                                          ldv, dattn, ld_dattn, seq_off, st->seq_empty, st->n_seq,
                                                          n_tok, st->N, st->E, st->model_len);
    CUDA_LAUNCHED();
    cu_sp_phase(st, "empty-row dense bf16");
}

// Shared bytes of a sums block.
static size_t sums_smem(int N) {
    int EB = SUM_R * (SUM_THREADS / N);
    return sizeof(float) * SUM_TJ * (2 * (size_t)EB + 2 * N) + (sizeof(double) + sizeof(int)) * SUM_TJ;
}

void cu_sp_empty_backward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, const float *dattn,
                          int ld_dattn, float *dV, int ld_dv) {
    if (st->sem != SEMANTICS_REFERENCE || st->n_seq == 0) return;
    if (st->bf16) {
        empty_backward_bf16(st, seq_off, V, ldv, dattn, ld_dattn, dV, ld_dv);
        return;
    }
    int n_tok = st->n_tok, n_seq = st->n_seq, N = st->N, E = st->E;
    cudaStream_t sm = cu_stream();
    empty_dot_kernel<<<cu_blocks(n_tok, 128), 128, 0, sm>>>(st->empty_a, st->allow_cnt, st->seq_sv, dattn, ld_dattn,
                                                            seq_off, n_seq, n_tok, E);
    CUDA_LAUNCHED();
    int EB = SUM_R * (SUM_THREADS / N);
    dim3 grid(n_seq, cu_blocks(E, EB));
    empty_sums_kernel<<<grid, SUM_THREADS, sums_smem(N), sm>>>(st->empty_work, st->allow_cnt, st->KQ, V, ldv, dattn,
                                                               ld_dattn, st->empty_a, seq_off, st->seq_empty, N, E);
    CUDA_LAUNCHED();
    cu_sp_phase(st, "empty-row sums");
    empty_apply_kernel<<<cu_blocks(n_tok, ROW_WARPS), 32 * ROW_WARPS, 0, sm>>>(
        st->dKQ, dV, ld_dv, st->empty_work, st->empty_a, st->allow_cnt, V, ldv, dattn, ld_dattn, seq_off,
        st->seq_empty, n_seq, n_tok, N, E, st->model_len);
    CUDA_LAUNCHED();
    cu_sp_phase(st, "empty-row apply");
}
