// cuda/sparse/attn_dense.cu: the sparse attention's backward through
// per-sequence dense products on cuBLAS (HAX_SPARSE_ATTN_BWD=dense, issue 11),
// an alternative to the gathers of cuda/sparse/attn.cu / attn_gather.cu
// (dQ per query over its list, dK/dV per key over its transposed list).
//
// Each sequence s (packed at seq_off[s], L_s positions) gets a block of
// Lp = st->dense_len rows (a multiple of 32 at least every L_s of the batch,
// given by the caller: cuda_sparse_dense_len), zeros past L_s, so that one
// strided-batched GEMM serves all sequences and no row of another sequence is
// ever read. With the row-major Lp x Lp matrix M of the sequence:
//   1. pad:  [K | Q] (KQ rows, K already / sqrt(N)), dattn and V into blocks;
//   2. dP = dattn . V^T into M (GEMM, k = E);
//   3. per query row t, over its allowed list (the gathers' arithmetic, keys in
//      list order): D = sum p dP in double, ds = p (dP - D) into allow_ds, and
//      M's row t := ds at the allowed keys, 0 elsewhere (M = dS);
//   4. dQ = dS . K and dK = dS^T . Q into one [dK | dQ] block (two GEMMs);
//   5. M's row t := p at the allowed keys, 0 elsewhere (M = P);
//   6. dV = P^T . dattn (GEMM) into V's block (V is no longer needed);
//   7. unpack: dKQ row = [dK | dQ] (written), dV row += dV (added, as the
//      gathers' key_grad_store: V is X, which other paths also feed).
// One Lp x Lp matrix per sequence serves dP, dS and P in turn (steps 3 and 5
// rewrite whole rows, one warp per row, so the dense matrix needs no memset).
// Every row of a padded block past L_s is zero in M and in the inputs, so the
// products add exact zeros there.
//
// Precision: the GEMMs run in plain FP32 (CUBLAS_COMPUTE_32F_PEDANTIC: no
// TF32 whatever the handle's math mode, which bf16-pure sets to TF32 for the
// engine's other GEMMs). dP, dQ, dK and dV are sums of the same products as
// the gathers' in another order (cuBLAS's blocking), so they differ from the
// gathers' in the last bits; D and ds are formed from dP exactly as the
// gathers form them (double D, keys in list order; bf16-pure: dP rounded as
// a bf16 GEMM output, ds rounded), so ds differs only where dP does. The sums
// dQ, dK, dV are rounded by the caller in bf16-pure (cuda/sparse/sparse.cu).
//
// Memory (only when selected at the state's allocation): per sequence of the
// capacity a Lc x Lc matrix (Lc = max_len rounded up to 32, at most
// CU_SP_DENSE_MAX_LEN) and Lc rows of 4N + 2E floats (cu_sp_dense_floats).
#include <stdlib.h>
#include <string.h>

#include "cuda/sparse/internal.cuh"

#define WARPS 8  // rows per block of the row kernels
#define FULL_MASK 0xffffffffu

// ---------------------------------------------------------------- selection

// HAX_SPARSE_ATTN_BWD: `gather` (0, the default: the gathers) or `dense` (1);
// read once; cuda_sparse_set_attn_bwd overrides it (tests). -1: not read yet.
static int g_dense = -1;

extern "C" int cuda_sparse_attn_bwd_dense(void) {
    if (g_dense < 0) g_dense = hax_env_choice("HAX_SPARSE_ATTN_BWD", "gather dense", 0);
    return g_dense;
}

extern "C" void cuda_sparse_set_attn_bwd(int dense) { g_dense = dense < 0 ? -1 : dense != 0; }

extern "C" int cuda_sparse_dense_len(const int *seq_off, int n_seq) {
    int mx = 0;
    for (int s = 0; s < n_seq; s++)
        if (seq_off[s + 1] - seq_off[s] > mx) mx = seq_off[s + 1] - seq_off[s];
    if (mx > CU_SP_DENSE_MAX_LEN) return 0;
    return (mx + 31) / 32 * 32;  // 0 for a batch of empty sequences: the gathers (nothing to do)
}

int cu_sp_dense_cap(const hax_model_config *cfg, int max_len) {
    if (!cuda_sparse_attn_bwd_dense() || sparse_pattern_has(cfg->sparse_mask, SPF_DENSE)) return 0;
    int L = max_len < CU_SP_DENSE_MAX_LEN ? max_len : CU_SP_DENSE_MAX_LEN;
    return (L + 31) / 32 * 32;
}

int cu_sp_dense_fits(const cu_sparse_state *st) {
    return st->attn_dense && st->dense_cap > 0 && st->dense_len > 0 && st->dense_len <= st->dense_cap &&
           !sparse_pattern_has(st->mask, SPF_DENSE);
}

// ---------------------------------------------------------------- kernels

// Step 1: padded row r = s * Lp + t of every block: [K | Q] (2N floats), dattn
// and V (E each), zeros past L_s. A sequence longer than Lp (a dense_len the
// caller did not update) sets CU_ERR_DENSE: its rows past Lp would be lost.
__global__ static void pad_kernel(float *kq_p, float *do_p, float *v_p, const float *KQ, const float *dattn,
                                  int ld_dattn, const float *V, int ldv, const int *seq_off, int n_seq, int Lp,
                                  int N, int E, int *err) {
    long r = (long)blockIdx.x * WARPS + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (r >= (long)n_seq * Lp) return;
    int s = (int)(r / Lp), t = (int)(r % Lp), o = seq_off[s], n = seq_off[s + 1] - o;
    if (t == 0 && lane == 0 && n > Lp) atomicOr(err, CU_ERR_DENSE);
    int in = t < n;
    size_t g = (size_t)o + t;
    float *kq = kq_p + (size_t)r * 2 * N, *dd = do_p + (size_t)r * E, *vv = v_p + (size_t)r * E;
    for (int c = lane; c < 2 * N; c += 32) kq[c] = in ? KQ[g * 2 * N + c] : 0.0f;
    for (int e = lane; e < E; e += 32) {
        dd[e] = in ? dattn[g * ld_dattn + e] : 0.0f;
        vv[e] = in ? V[g * ldv + e] : 0.0f;
    }
}

// A whole row of M (Lp floats, Lp a multiple of 32: float4 stores) set to 0.
__device__ __forceinline__ void zero_row(float *row, int Lp, int lane) {
    float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int j = 4 * lane; j < Lp; j += 128) *(float4 *)(row + j) = z;
}

// Step 3: M holds dP. Per query row (one warp): D = sum_i p_i dP_i in double,
// keys in list order (every lane the same sum, as attn_bwd_q_kernel;
// bf16-pure: dP rounded first, a bf16 GEMM output), ds_i = p_i (dP_i - D)
// (bf16-pure: rounded) into allow_ds, then the row := ds at the allowed keys,
// 0 elsewhere. Each lane keeps the list entries i = lane + 32 m (allow_ds
// holds its dP until ds replaces it), so the row is read in full before the
// warp barrier and rewritten after it. Rows past L_s: zeros (already, as
// products of zero rows; written again so that M never keeps stale values).
__global__ static void ds_rows_kernel(float *M, float *allow_ds, const float *allow_p, const int *allow_cnt,
                                      const int *allow_key, const int *seq_off, int n_seq, int Lp, int cap, int bf16) {
    long r = (long)blockIdx.x * WARPS + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (r >= (long)n_seq * Lp) return;  // the whole warp
    int s = (int)(r / Lp), t = (int)(r % Lp), o = seq_off[s], n = seq_off[s + 1] - o;
    float *row = M + (size_t)r * Lp;
    if (t >= n) {
        zero_row(row, Lp, lane);
        return;
    }
    size_t g = (size_t)o + t;
    int cnt = allow_cnt[g];
    const int *key = allow_key + g * cap;
    const float *p = allow_p + g * cap;
    float *ds = allow_ds + g * cap;
    double D = 0;
    for (int i0 = 0; i0 < cnt; i0 += 32) {
        int nb = min(32, cnt - i0);
        float pl = 0.0f, dl = 0.0f;
        if (lane < nb) {
            pl = p[i0 + lane], dl = row[key[i0 + lane]];
            if (bf16) dl = hax_bf16_round(dl);  // dP, a bf16 GEMM output
            ds[i0 + lane] = dl;
        }
        for (int b = 0; b < nb; b++) D += (double)__shfl_sync(FULL_MASK, pl, b) * __shfl_sync(FULL_MASK, dl, b);
    }
    __syncwarp();  // every read of the row before it is cleared
    zero_row(row, Lp, lane);
    __syncwarp();  // the zeros before the entries (the barrier orders the warp's memory accesses)
    float Df = (float)D;
    for (int i = lane; i < cnt; i += 32) {
        float d = p[i] * (ds[i] - Df);
        d = bf16 ? hax_bf16_round(d) : d;
        ds[i] = d;
        row[key[i]] = d;
    }
}

// Step 5: M's row := P (allow_p) at the allowed keys, 0 elsewhere.
__global__ static void p_rows_kernel(float *M, const float *allow_p, const int *allow_cnt, const int *allow_key,
                                     const int *seq_off, int n_seq, int Lp, int cap) {
    long r = (long)blockIdx.x * WARPS + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (r >= (long)n_seq * Lp) return;
    int s = (int)(r / Lp), t = (int)(r % Lp), o = seq_off[s], n = seq_off[s + 1] - o;
    float *row = M + (size_t)r * Lp;
    zero_row(row, Lp, lane);
    if (t >= n) return;
    __syncwarp();
    size_t g = (size_t)o + t;
    int cnt = allow_cnt[g];
    for (int i = lane; i < cnt; i += 32) row[allow_key[g * cap + i]] = allow_p[g * cap + i];
}

// Step 7: per packed row g: dKQ[g] = [dK | dQ] (stored), dV[g] += dV block row.
__global__ static void unpack_kernel(float *dKQ, float *dV, int ld_dv, const float *dkq_p, const float *dv_p,
                                     const int *seq_off, int n_seq, int n_tok, int Lp, int N, int E) {
    int g = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (g >= n_tok) return;
    int s = cu_seq_of(seq_off, n_seq, g);
    size_t r = (size_t)s * Lp + (g - seq_off[s]);
    for (int c = lane; c < 2 * N; c += 32) dKQ[(size_t)g * 2 * N + c] = dkq_p[r * 2 * N + c];
    for (int e = lane; e < E; e += 32) dV[(size_t)g * ld_dv + e] += dv_p[r * E + e];
}

// ---------------------------------------------------------------- GEMMs

// C_s = op(A_s) . op(B_s) for every sequence s (column-major, as cuBLAS sees
// the row-major blocks), plain FP32 whatever the handle's math mode.
static void gemm_seq(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A, int lda,
                     long long sa, const float *B, int ldb, long long sb, float *C, int ldc, long long sc, int batch) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(cu_blas(), ta, tb, m, n, k, &one, A, CUDA_R_32F, lda, sa, B, CUDA_R_32F,
                                            ldb, sb, &zero, C, CUDA_R_32F, ldc, sc, batch,
                                            CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT));
}

// The row-major blocks seen by cuBLAS (column-major): a row-major [R, C]
// block with row stride ld is the column-major C x R matrix with the same ld.
// So, per sequence (Lp rows; M row-major [query t][key j]):
//   M^T = V . dattn^T     (col-major Lp x Lp):  op(V block) = T, dattn block N
//   dQ^T = K^T . M^T      (col-major N x Lp):   K block (ld 2N) N, M N
//   dK^T = Q^T . M        (col-major N x Lp):   Q block (ld 2N) N, M T
//   dV^T = dattn^T . M    (col-major E x Lp):   dattn block N, M T
void cu_sp_dense_backward(cu_sparse_state *st, const int *seq_off, const float *V, int ldv, const float *dattn,
                          int ld_dattn, float *dV, int ld_dv) {
    int n_tok = st->n_tok, n_seq = st->n_seq, N = st->N, E = st->E, Lp = st->dense_len, cap = st->row_cap;
    cudaStream_t sm = cu_stream();
    long rows = (long)n_seq * Lp;
    long long sLL = (long long)Lp * Lp, sKQ = (long long)Lp * 2 * N, sE = (long long)Lp * E;
    int rblocks = cu_blocks(rows, WARPS);
    float *M = st->dn_mat, *kq = st->dn_kq, *dkq = st->dn_dkq, *dd = st->dn_do, *vv = st->dn_v;
    pad_kernel<<<rblocks, 32 * WARPS, 0, sm>>>(kq, dd, vv, st->KQ, dattn, ld_dattn, V, ldv, seq_off, n_seq, Lp, N, E,
                                               cu_error_flag());
    CUDA_LAUNCHED();
    gemm_seq(CUBLAS_OP_T, CUBLAS_OP_N, Lp, Lp, E, vv, E, sE, dd, E, sE, M, Lp, sLL, n_seq);
    ds_rows_kernel<<<rblocks, 32 * WARPS, 0, sm>>>(M, st->allow_ds, st->allow_p, st->allow_cnt, st->allow_key, seq_off,
                                                   n_seq, Lp, cap, st->bf16);
    CUDA_LAUNCHED();
    cu_sp_phase(st, "dense dP dS");
    gemm_seq(CUBLAS_OP_N, CUBLAS_OP_N, N, Lp, Lp, kq, 2 * N, sKQ, M, Lp, sLL, dkq + N, 2 * N, sKQ, n_seq);  // dQ
    gemm_seq(CUBLAS_OP_N, CUBLAS_OP_T, N, Lp, Lp, kq + N, 2 * N, sKQ, M, Lp, sLL, dkq, 2 * N, sKQ, n_seq);  // dK
    cu_sp_phase(st, "dense dQ dK");
    p_rows_kernel<<<rblocks, 32 * WARPS, 0, sm>>>(M, st->allow_p, st->allow_cnt, st->allow_key, seq_off, n_seq, Lp,
                                                  cap);
    CUDA_LAUNCHED();
    gemm_seq(CUBLAS_OP_N, CUBLAS_OP_T, E, Lp, Lp, dd, E, sE, M, Lp, sLL, vv, E, sE, n_seq);  // dV into V's block
    unpack_kernel<<<cu_blocks(n_tok, WARPS), 32 * WARPS, 0, sm>>>(st->dKQ, dV, ld_dv, dkq, vv, seq_off, n_seq, n_tok,
                                                                  Lp, N, E);
    CUDA_LAUNCHED();
    cu_sp_phase(st, "dense dV");
}
