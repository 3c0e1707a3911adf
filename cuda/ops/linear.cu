// cuda/ops/linear.cu: see cuda/ops/linear.h. cuBLAS is column-major: a row-major matrix
// [rows, cols] with leading dimension ld is, to cuBLAS, its transpose
// [cols, rows] with the same ld. So out = inp·Wᵀ becomes outᵀ = W·inpᵀ etc.
#include "cuda/core/common.cuh"
#include "cuda/ops/linear.h"

// out[i, :] = bias for every row (before a beta = 1 GEMM): a warp per row.
__global__ static void fill_bias_kernel(float *out, int ld_out, const float *bias, int n, int out_dim) {
    int r = blockIdx.x * 8 + threadIdx.y;
    if (r >= n) return;
    for (int o = threadIdx.x; o < out_dim; o += 32) out[(size_t)r * ld_out + o] = bias[o];
}

// dbias[o] += Σ_i dout[i, o] in a fixed order: the rows are cut into at most
// BIAS_CHUNKS chunks; a block (32 columns × 8 row lanes, lane y taking the
// chunk's rows y, y+8, ... in order, the lanes then added in order) writes the
// chunk's column sums (double) into the static scratch g_bias_part (no
// allocation inside the op; ops run in stream order, so one scratch serves
// every call); a second kernel adds the chunks in a fixed tree.
#define BIAS_CHUNKS 256
#define BIAS_ROWS_MIN 64
#define BIAS_SCRATCH (1 << 20)  // doubles (8 MiB): out_dim up to 4096 at 256 chunks

__device__ static double g_bias_part[BIAS_SCRATCH];

__global__ static void bias_part_kernel(const float *dout, int ld_dout, int n, int out_dim, int rows) {
    __shared__ double acc[8][33];
    int x = threadIdx.x, y = threadIdx.y, o = blockIdx.x * 32 + x, ch = blockIdx.y;
    int i0 = ch * rows, i1 = i0 + rows < n ? i0 + rows : n;
    double a = 0.0;
    if (o < out_dim)
#pragma unroll 4
        for (int i = i0 + y; i < i1; i += 8) a += dout[(size_t)i * ld_dout + o];
    acc[y][x] = a;
    __syncthreads();
    if (y || o >= out_dim) return;
    a = acc[0][x];
    for (int k = 1; k < 8; k++) a += acc[k][x];
    g_bias_part[(size_t)ch * out_dim + o] = a;
}

// dbias[o] += Σ_ch part[ch, o]: 32 columns × 32 chunk lanes (lane y: chunks
// y, y+32, ... in order), the lanes in a fixed pairwise tree.
__global__ static void bias_sum_kernel(float *dbias, int n_chunk, int out_dim) {
    __shared__ double acc[32][33];
    int x = threadIdx.x, y = threadIdx.y, o = blockIdx.x * 32 + x;
    double a = 0.0;
    if (o < out_dim)
        for (int ch = y; ch < n_chunk; ch += 32) a += g_bias_part[(size_t)ch * out_dim + o];
    acc[y][x] = a;
    __syncthreads();
    for (int h = 16; h > 0; h /= 2) {
        if (y < h) acc[y][x] += acc[y + h][x];
        __syncthreads();
    }
    if (y == 0 && o < out_dim) dbias[o] += (float)acc[0][x];
}

// Wider outputs than the scratch holds (BIAS_SCRATCH columns): one thread per
// column, rows in order.
__global__ static void bias_grad_kernel(float *dbias, const float *dout, int ld_dout, int n, int out_dim) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out_dim) return;
    float acc = dbias[o];
    for (int i = 0; i < n; i++) acc += dout[(size_t)i * ld_dout + o];
    dbias[o] = acc;
}

static void bias_grad(float *dbias, const float *dout, int ld_dout, int n, int out_dim) {
    if (out_dim <= 0) return;
    int max_chunks = BIAS_SCRATCH / out_dim < BIAS_CHUNKS ? BIAS_SCRATCH / out_dim : BIAS_CHUNKS;
    if (max_chunks < 1) {
        bias_grad_kernel<<<cu_blocks(out_dim, 128), 128, 0, cu_stream()>>>(dbias, dout, ld_dout, n, out_dim);
        CUDA_LAUNCHED();
        return;
    }
    int rows = (n + max_chunks - 1) / max_chunks;
    if (rows < BIAS_ROWS_MIN) rows = BIAS_ROWS_MIN;
    int n_chunk = (n + rows - 1) / rows;
    bias_part_kernel<<<dim3(cu_blocks(out_dim, 32), n_chunk), dim3(32, 8), 0, cu_stream()>>>(dout, ld_dout, n, out_dim,
                                                                                            rows);
    CUDA_LAUNCHED();
    bias_sum_kernel<<<cu_blocks(out_dim, 32), dim3(32, 32), 0, cu_stream()>>>(dbias, n_chunk, out_dim);
    CUDA_LAUNCHED();
}

// ---- the GEMMs. HAX_GEMM (compile time) picks who runs them:
//   0  cuBLAS SGEMM for all three (the old path; cuBLAS splits the dW GEMM's
//      K = n_tok with a separate reduce launch),
//   1  the dW GEMM here (chunked K, the bias gradient fused), cuBLAS for the
//      forward and dinp GEMMs (the default),
//   2  every GEMM here.
// Every path is FP32 (no TF32) and deterministic: cuBLAS with a fixed handle
// and shapes on one GPU, the kernels here in a fixed order.
#ifndef HAX_GEMM
#define HAX_GEMM 1
#endif

#if HAX_GEMM >= 1
#define GEMM_BK 16         // K per shared-memory stage
#define GEMM_THREADS 256   // 16 × 16 threads (tx, ty), each rows ty·BM/16.. × columns tx·BN/16.. of the tile
#define GEMM_BLOCKS 640    // the dW GEMM aims at about this many blocks (K chunks × tiles)
#define GEMM_ROWS_MIN 64   // and at least this many rows of K per chunk
#define GEMM_SCRATCH (1 << 22)  // floats (16 MiB) of dW chunk partials

// The dW chunk partials: chunk z at g_gemm_part[z·P ..], P = M·N (+ M with the
// bias). A static scratch as g_bias_part's: no allocation inside the op.
__device__ static float g_gemm_part[GEMM_SCRATCH];

// One BM × BN tile of C (blockIdx.x: the M tiles, .y: the N tiles), summed
// over k in [z·rows, min(K, (z+1)·rows)) with z = blockIdx.z, k in order:
//   A(m, k) = TA ? A[k·lda + m] : A[m·lda + k]
//   B(k, n) = TB ? B[n·ldb + k] : B[k·ldb + n]
// to_part 0: C[m·ldc + n] = beta·C + Σ (beta 0 or 1; one chunk). Else
// g_gemm_part[z·P + m·N + n] = Σ, and with `bias` also g_gemm_part[z·P + M·N + m]
// = Σ_k A(m, k) (P = M·N + M), in the blocks of the first N tile.
template <bool TA, bool TB, int BM, int BN>
__global__ __launch_bounds__(GEMM_THREADS) static void gemm_kernel(float *C, int ldc, float beta, const float *A,
                                                                   int lda, const float *B, int ldb, int M, int N,
                                                                   int K, int rows, int to_part, int bias) {
    constexpr int TM = BM / 16, TN = BN / 16, PA = BM + 4, PB = BN + 4;  // pitches keep float4 alignment
    __shared__ __align__(16) float As[GEMM_BK][PA];
    __shared__ __align__(16) float Bs[GEMM_BK][PB];
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    long k0 = (long)blockIdx.z * rows, k1 = k0 + rows < K ? k0 + rows : K;
    bool do_bias = to_part && bias && blockIdx.y == 0 && tid < BM;
    float acc[TM][TN] = {}, bsum = 0.0f;
    for (long kb = k0; kb < k1; kb += GEMM_BK) {
        for (int e = tid; e < BM * GEMM_BK; e += GEMM_THREADS) {
            int mm = TA ? e % BM : e / GEMM_BK, kk = TA ? e / BM : e % GEMM_BK;
            long k = kb + kk;
            int m = m0 + mm;
            As[kk][mm] = m < M && k < k1 ? (TA ? A[k * lda + m] : A[(long)m * lda + k]) : 0.0f;
        }
        for (int e = tid; e < BN * GEMM_BK; e += GEMM_THREADS) {
            int nn = TB ? e / GEMM_BK : e % BN, kk = TB ? e % GEMM_BK : e / BN;
            long k = kb + kk;
            int n = n0 + nn;
            Bs[kk][nn] = n < N && k < k1 ? (TB ? B[(long)n * ldb + k] : B[k * ldb + n]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; kk++) {
            float a[TM], b[TN];
            if constexpr (TM == 4) {
                float4 v = *(const float4 *)&As[kk][ty * 4];
                a[0] = v.x, a[1] = v.y, a[2] = v.z, a[3] = v.w;
            } else {
                a[0] = As[kk][ty];
            }
            if constexpr (TN == 4) {
                float4 v = *(const float4 *)&Bs[kk][tx * 4];
                b[0] = v.x, b[1] = v.y, b[2] = v.z, b[3] = v.w;
            } else {
                b[0] = Bs[kk][tx];
            }
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++) acc[i][j] += a[i] * b[j];
        }
        if (do_bias)
#pragma unroll
            for (int kk = 0; kk < GEMM_BK; kk++) bsum += As[kk][tid];
        __syncthreads();
    }
    size_t P = (size_t)M * N + (bias ? M : 0);
    float *out = to_part ? g_gemm_part + blockIdx.z * P : C;
    int ld = to_part ? N : ldc;
#pragma unroll
    for (int i = 0; i < TM; i++) {
        int m = m0 + ty * TM + i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < TN; j++) {
            int n = n0 + tx * TN + j;
            if (n >= N) continue;
            float *c = out + (size_t)m * ld + n;
            *c = to_part || beta == 0.0f ? acc[i][j] : *c + acc[i][j];
        }
    }
    if (do_bias && m0 + tid < M) out[(size_t)M * N + m0 + tid] = bsum;
}

// Launches gemm_kernel with 16- or 64-wide tiles (16 where the side is that
// small: less padding for dt_proj's R = 8 and the key scorer's one output).
template <bool TA, bool TB>
static void gemm_launch(dim3 grid_z, float *C, int ldc, float beta, const float *A, int lda, const float *B, int ldb,
                        int M, int N, int K, int rows, int to_part, int bias) {
    bool sm = M <= 16, sn = N <= 16;
    dim3 grid(cu_blocks(M, sm ? 16 : 64), cu_blocks(N, sn ? 16 : 64), grid_z.z);
#define GEMM_GO(BM_, BN_)                                                                                       \
    gemm_kernel<TA, TB, BM_, BN_><<<grid, GEMM_THREADS, 0, cu_stream()>>>(C, ldc, beta, A, lda, B, ldb, M, N, K, rows, \
                                                                        to_part, bias)
    if (sm && sn) GEMM_GO(16, 16);
    else if (sm) GEMM_GO(16, 64);
    else if (sn) GEMM_GO(64, 16);
    else GEMM_GO(64, 64);
#undef GEMM_GO
    CUDA_LAUNCHED();
}

// dst[j] += (float)Σ_z part[z·P + j], chunks in order in double; dW [M, N]
// row-major is part's first M·N entries, dbias the M after them.
__global__ static void gemm_sum_kernel(float *dW, float *dbias, int MN, int P, int n_chunk) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= P) return;
    double a = 0.0;
    for (int z = 0; z < n_chunk; z++) a += g_gemm_part[(size_t)z * P + j];
    float *d = j < MN ? dW + j : dbias + (j - MN);
    *d += (float)a;
}

// The chunking of the dW GEMM for K = n rows and an M × N weight (P floats a
// chunk): about GEMM_BLOCKS blocks, at least GEMM_ROWS_MIN rows a chunk, within
// the scratch. 0 where the scratch cannot hold even one chunk.
static int dw_chunk_rows(int n, int M, int N, size_t P) {
    if (P > GEMM_SCRATCH) return 0;
    long tiles = (long)cu_blocks(M, M <= 16 ? 16 : 64) * cu_blocks(N, N <= 16 ? 16 : 64);
    long want = (GEMM_BLOCKS + tiles - 1) / tiles;
    long rows = ((long)n + want - 1) / want;
    if (rows < GEMM_ROWS_MIN) rows = GEMM_ROWS_MIN;
    rows = (rows + GEMM_BK - 1) / GEMM_BK * GEMM_BK;
    long max_chunks = GEMM_SCRATCH / (long)P;
    if ((n + rows - 1) / rows > max_chunks) rows = ((long)n + max_chunks - 1) / max_chunks;
    return (int)rows;
}

// dW [out_dim, in_dim] += doutᵀ · inp and dbias (may be NULL) += Σ_i dout[i, :]
// over the n rows: chunk partials (gemm_kernel, A = dout transposed), then their
// fixed-order sum. Returns 0 (nothing done) where the scratch is too small.
static int dw_gemm(float *dW, float *dbias, const float *dout, int ld_dout, const float *inp, int ld_inp, int n,
                   int in_dim, int out_dim) {
    int M = out_dim, N = in_dim;
    size_t P = (size_t)M * N + (dbias ? M : 0);
    int rows = dw_chunk_rows(n, M, N, P);
    if (rows == 0) return 0;
    int n_chunk = (n + rows - 1) / rows;
    gemm_launch<true, false>(dim3(1, 1, n_chunk), NULL, 0, 0.0f, dout, ld_dout, inp, ld_inp, M, N, n, rows, 1,
                             dbias != NULL);
    gemm_sum_kernel<<<cu_blocks((long)P, 256), 256, 0, cu_stream()>>>(dW, dbias, M * N, (int)P, n_chunk);
    CUDA_LAUNCHED();
    return 1;
}
#endif

extern "C" void cuda_linear_forward(float *out, int ld_out, const float *inp, int ld_inp,
                                    const float *weight, const float *bias, int n, int in_dim,
                                    int out_dim) {
    if (n == 0) return;
    float beta = 0.0f;
    if (bias) {
        fill_bias_kernel<<<cu_blocks(n, 8), dim3(32, 8), 0, cu_stream()>>>(out, ld_out, bias, n, out_dim);
        CUDA_LAUNCHED();
        beta = 1.0f;
    }
#if HAX_GEMM >= 2
    gemm_launch<false, true>(dim3(1, 1, 1), out, ld_out, beta, inp, ld_inp, weight, in_dim, n, out_dim, in_dim, in_dim,
                             0, 0);
#else
    // outᵀ [out_dim, n] = Wᵀᵀ · inpᵀ: W as stored is Wᵀ [in_dim, out_dim] to cuBLAS.
    float one = 1.0f;
    CUBLAS_CHECK(cublasSgemm(cu_blas(), CUBLAS_OP_T, CUBLAS_OP_N, out_dim, n, in_dim, &one, weight,
                             in_dim, inp, ld_inp, &beta, out, ld_out));
#endif
}

extern "C" void cuda_linear_backward(float *dinp, int ld_dinp, float *dweight, float *dbias,
                                     const float *dout, int ld_dout, const float *inp, int ld_inp,
                                     const float *weight, int n, int in_dim, int out_dim) {
    if (n == 0) return;
    float one = 1.0f;
    // dinpᵀ [in_dim, n] += Wᵀ [in_dim, out_dim] · doutᵀ [out_dim, n]
#if HAX_GEMM >= 2
    if (dinp)
        gemm_launch<false, false>(dim3(1, 1, 1), dinp, ld_dinp, 1.0f, dout, ld_dout, weight, in_dim, n, in_dim,
                                  out_dim, out_dim, 0, 0);
#else
    if (dinp)
        CUBLAS_CHECK(cublasSgemm(cu_blas(), CUBLAS_OP_N, CUBLAS_OP_N, in_dim, n, out_dim, &one, weight,
                                 in_dim, dout, ld_dout, &one, dinp, ld_dinp));
#endif
#if HAX_GEMM >= 1
    if (dweight && dw_gemm(dweight, dbias, dout, ld_dout, inp, ld_inp, n, in_dim, out_dim)) return;
#endif
    // dWᵀ [in_dim, out_dim] += inpᵀ [in_dim, n] · dout [n, out_dim]
    if (dweight)
        CUBLAS_CHECK(cublasSgemm(cu_blas(), CUBLAS_OP_N, CUBLAS_OP_T, in_dim, out_dim, n, &one, inp,
                                 ld_inp, dout, ld_dout, &one, dweight, in_dim));
    if (dbias) bias_grad(dbias, dout, ld_dout, n, out_dim);
}
