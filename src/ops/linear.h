// linear.h: dense layers in PyTorch's layout, on the CPU (cblas sgemm).
//
// Every activation is a packed row-major matrix [n, dim] with a leading
// dimension (ld_*) so that a slice of a wider tensor (x and z of xz, say) is
// used in place. Weights are [out_dim, in_dim] as in the state_dict.
#ifndef HAX_LINEAR_H
#define HAX_LINEAR_H

// out[n, out_dim] = inp[n, in_dim] . weight^T (+ bias, may be NULL).
void linear_forward(float *out, int ld_out, const float *inp, int ld_inp, const float *weight,
                    const float *bias, int n, int in_dim, int out_dim);

// The same product computed row by row in a fixed order: a row's result does
// not depend on the other rows of the batch (bitwise), unlike a BLAS call.
void linear_forward_rows(float *out, int ld_out, const float *inp, int ld_inp, const float *weight,
                         const float *bias, int n, int in_dim, int out_dim);

// Accumulates (+=): dinp += dout . weight; dweight += dout^T . inp;
// dbias += column sums of dout. Any of dinp, dweight, dbias may be NULL.
void linear_backward(float *dinp, int ld_dinp, float *dweight, float *dbias, const float *dout,
                     int ld_dout, const float *inp, int ld_inp, const float *weight, int n,
                     int in_dim, int out_dim);

// C[m, n] (+)= alpha . op(A) . op(B) + beta . C, row-major; a thin wrapper of
// cblas_sgemm so that no other file includes cblas.h.
void hax_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
               const float *b, int ldb, float beta, float *c, int ldc);

// Sets the BLAS thread count (1 under several MPI ranks on one node).
void hax_blas_set_threads(int n);

#endif
