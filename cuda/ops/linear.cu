// cuda/ops/linear.cu: see cuda/ops/linear.h. cuBLAS is column-major: a row-major matrix
// [rows, cols] with leading dimension ld is, to cuBLAS, its transpose
// [cols, rows] with the same ld. So out = inp·Wᵀ becomes outᵀ = W·inpᵀ etc.
#include "cuda/core/common.cuh"
#include "cuda/ops/linear.h"

// out[i, :] = bias for every row (before a beta = 1 GEMM).
__global__ static void fill_bias_kernel(float *out, int ld_out, const float *bias, int n, int out_dim) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * out_dim) return;
    int r = (int)(i / out_dim), o = (int)(i % out_dim);
    out[(size_t)r * ld_out + o] = bias[o];
}

// dbias[o] += Σ_i dout[i, o], rows in order (one thread per column).
__global__ static void bias_grad_kernel(float *dbias, const float *dout, int ld_dout, int n, int out_dim) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= out_dim) return;
    float acc = dbias[o];
    for (int i = 0; i < n; i++) acc += dout[(size_t)i * ld_dout + o];
    dbias[o] = acc;
}

extern "C" void cuda_linear_forward(float *out, int ld_out, const float *inp, int ld_inp,
                                    const float *weight, const float *bias, int n, int in_dim,
                                    int out_dim) {
    if (n == 0) return;
    float one = 1.0f, beta = 0.0f;
    if (bias) {
        fill_bias_kernel<<<cu_blocks((long)n * out_dim, 256), 256, 0, cu_stream()>>>(out, ld_out, bias, n, out_dim);
        CUDA_LAUNCHED();
        beta = 1.0f;
    }
    // outᵀ [out_dim, n] = Wᵀᵀ · inpᵀ: W as stored is Wᵀ [in_dim, out_dim] to cuBLAS.
    CUBLAS_CHECK(cublasSgemm(cu_blas(), CUBLAS_OP_T, CUBLAS_OP_N, out_dim, n, in_dim, &one, weight,
                             in_dim, inp, ld_inp, &beta, out, ld_out));
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
    if (dbias) {
        bias_grad_kernel<<<cu_blocks(out_dim, 128), 128, 0, cu_stream()>>>(dbias, dout, ld_dout, n, out_dim);
        CUDA_LAUNCHED();
    }
}
