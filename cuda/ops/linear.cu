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

// outᵀ [out_dim, n] = Wᵀᵀ · inpᵀ (+ outᵀ with beta 1): W as stored is Wᵀ [in_dim, out_dim] to cuBLAS.
static void linear_gemm(float *out, int ld_out, const float *inp, int ld_inp, const float *weight, int n,
                        int in_dim, int out_dim, float beta) {
    float one = 1.0f;
    CUBLAS_CHECK(cublasSgemm(cu_blas(), CUBLAS_OP_T, CUBLAS_OP_N, out_dim, n, in_dim, &one, weight,
                             in_dim, inp, ld_inp, &beta, out, ld_out));
}

extern "C" void cuda_linear_forward(float *out, int ld_out, const float *inp, int ld_inp,
                                    const float *weight, const float *bias, int n, int in_dim,
                                    int out_dim) {
    if (n == 0) return;
    if (bias) {
        fill_bias_kernel<<<cu_blocks(n, 8), dim3(32, 8), 0, cu_stream()>>>(out, ld_out, bias, n, out_dim);
        CUDA_LAUNCHED();
    }
    linear_gemm(out, ld_out, inp, ld_inp, weight, n, in_dim, out_dim, bias ? 1.0f : 0.0f);
}

extern "C" void cuda_linear_forward_add(float *out, int ld_out, const float *inp, int ld_inp, const float *weight,
                                        int n, int in_dim, int out_dim) {
    if (n == 0) return;
    linear_gemm(out, ld_out, inp, ld_inp, weight, n, in_dim, out_dim, 1.0f);
}

extern "C" void cuda_linear_backward(float *dinp, int ld_dinp, float *dweight, float *dbias,
                                     const float *dout, int ld_dout, const float *inp, int ld_inp,
                                     const float *weight, int n, int in_dim, int out_dim) {
    if (n == 0) return;
    float one = 1.0f;
    // dinpᵀ [in_dim, n] += Wᵀ [in_dim, out_dim] · doutᵀ [out_dim, n]
    if (dinp)
        CUBLAS_CHECK(cublasSgemm(cu_blas(), CUBLAS_OP_N, CUBLAS_OP_N, in_dim, n, out_dim, &one, weight,
                                 in_dim, dout, ld_dout, &one, dinp, ld_dinp));
    // dWᵀ [in_dim, out_dim] += inpᵀ [in_dim, n] · dout [n, out_dim]
    if (dweight)
        CUBLAS_CHECK(cublasSgemm(cu_blas(), CUBLAS_OP_N, CUBLAS_OP_T, in_dim, out_dim, n, &one, inp,
                                 ld_inp, dout, ld_dout, &one, dweight, in_dim));
    if (dbias) bias_grad(dbias, dout, ld_dout, n, out_dim);
}
