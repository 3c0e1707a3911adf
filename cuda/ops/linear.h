// cuda/ops/linear.h: dense layers on the GPU (cuBLAS, FP32; TF32 in bf16-pure: cuda_gemm_tf32), with the
// CPU's linear_forward/linear_backward arguments (src/ops/linear.h): row-major
// activations with leading dimensions, weights [out_dim, in_dim].
#ifndef HAX_CU_LINEAR_H
#define HAX_CU_LINEAR_H

#ifdef __cplusplus
extern "C" {
#endif

// out[n, out_dim] = inp[n, in_dim] . weight^T (+ bias, may be NULL).
void cuda_linear_forward(float *out, int ld_out, const float *inp, int ld_inp, const float *weight,
                         const float *bias, int n, int in_dim, int out_dim);

// out[n, out_dim] += inp . weight^T: cuda_linear_forward's GEMM with the
// output preset by the caller (to the bias, it is cuda_linear_forward with
// that bias: the same call, the same bits).
void cuda_linear_forward_add(float *out, int ld_out, const float *inp, int ld_inp, const float *weight, int n,
                             int in_dim, int out_dim);

// Accumulates (+=): dinp += dout . weight; dweight += dout^T . inp;
// dbias += column sums of dout (fixed order: deterministic). Any of dinp,
// dweight, dbias may be NULL.
void cuda_linear_backward(float *dinp, int ld_dinp, float *dweight, float *dbias, const float *dout,
                          int ld_dout, const float *inp, int ld_inp, const float *weight, int n,
                          int in_dim, int out_dim);

#ifdef __cplusplus
}
#endif

#endif
