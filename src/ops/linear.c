// linear.c: see linear.h.
#include "src/ops/linear.h"

#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"

#ifndef HAX_NO_BLAS
#include <cblas.h>
void openblas_set_num_threads(int num_threads);
#endif

// OpenBLAS's own threading splits work differently for different thread
// counts, and its results then differ in the last bits. So BLAS runs on one
// thread per call and the parallelism is ours: C is cut into blocks of a
// fixed number of rows, whatever the thread count, each block one
// single-threaded call. Every element's sum over k then happens inside one
// call on the same block shape, so the result does not depend on the threads.
#define SGEMM_ROW_BLOCK 256

#ifndef HAX_NO_BLAS
static void sgemm_rows(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                       int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
#else
// BLAS=none (make BLAS=none): a plain C sgemm for machines without a BLAS
// library (the GPU nodes, where the CPU ops only check small test inputs).
// k is cut into blocks of SGEMM_K_BLOCK so that the rows of B in use stay in
// cache; each element's sum still runs over k in increasing order.
#define SGEMM_K_BLOCK 128

static void sgemm_rows(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                       int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    for (int i = 0; i < m; i++) {
        float *ci = c + (size_t)i * ldc;
        for (int j = 0; j < n; j++) ci[j] = beta == 0.0f ? 0.0f : beta * ci[j];
    }
    if (!trans_a && trans_b) {
        // C[i, j] += alpha · (row i of A) · (row j of B): contiguous dot products.
        for (int i = 0; i < m; i++) {
            const float *ai = a + (size_t)i * lda;
            for (int j = 0; j < n; j++) {
                const float *bj = b + (size_t)j * ldb;
                float acc = 0.0f;
                for (int p = 0; p < k; p++) acc += ai[p] * bj[p];
                c[(size_t)i * ldc + j] += alpha * acc;
            }
        }
        return;
    }
    for (int p0 = 0; p0 < k; p0 += SGEMM_K_BLOCK) {
        int p1 = p0 + SGEMM_K_BLOCK < k ? p0 + SGEMM_K_BLOCK : k;
        for (int i = 0; i < m; i++) {
            float *ci = c + (size_t)i * ldc;
            for (int p = p0; p < p1; p++) {
                float av = alpha * (trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]);
                if (!trans_b) {
                    const float *bp = b + (size_t)p * ldb;
                    for (int j = 0; j < n; j++) ci[j] += av * bp[j];
                } else {
                    for (int j = 0; j < n; j++) ci[j] += av * b[(size_t)j * ldb + p];
                }
            }
        }
    }
}
#endif

void hax_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
               const float *b, int ldb, float beta, float *c, int ldc) {
    if (m == 0 || n == 0) return;
    int n_blocks = (m + SGEMM_ROW_BLOCK - 1) / SGEMM_ROW_BLOCK;
    if (n_blocks == 1) {
        sgemm_rows(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < n_blocks; blk++) {
        int row = blk * SGEMM_ROW_BLOCK;
        int rows = m - row < SGEMM_ROW_BLOCK ? m - row : SGEMM_ROW_BLOCK;
        // Row `row` of op(A): row of A when not transposed, column otherwise.
        const float *a_blk = trans_a ? a + row : a + (size_t)row * lda;
        sgemm_rows(trans_a, trans_b, rows, n, k, alpha, a_blk, lda, b, ldb, beta, c + (size_t)row * ldc, ldc);
    }
}

void linear_forward(float *out, int ld_out, const float *inp, int ld_inp, const float *weight,
                    const float *bias, int n, int in_dim, int out_dim) {
    if (n == 0) return;
    float beta = 0.0f;
    if (bias) {
        for (int i = 0; i < n; i++) memcpy(out + (size_t)i * ld_out, bias, sizeof(float) * out_dim);
        beta = 1.0f;
    }
    hax_sgemm(0, 1, n, out_dim, in_dim, 1.0f, inp, ld_inp, weight, in_dim, beta, out, ld_out);
}

// Each row on its own: out[t, o] = (sum over i ascending of inp[t, i] *
// weight[o, i]) + bias[o]. A BLAS kernel computes a row differently
// depending on its place in the register tile, so the same row packed among
// others and alone can differ in the last bit (OpenBLAS 0.3.21's Prescott,
// Haswell and SkylakeX kernels all do, measured); here it cannot, for any
// batch and thread count. For small layers (the key-selection MLP).
void linear_forward_rows(float *out, int ld_out, const float *inp, int ld_inp, const float *weight,
                         const float *bias, int n, int in_dim, int out_dim) {
    if (n == 0) return;
    float *wt = xmalloc(sizeof(float) * (size_t)in_dim * out_dim);  // weight^T, so o runs contiguously
    for (int o = 0; o < out_dim; o++)
        for (int i = 0; i < in_dim; i++) wt[(size_t)i * out_dim + o] = weight[(size_t)o * in_dim + i];
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        float *y = out + (size_t)t * ld_out;
        const float *x = inp + (size_t)t * ld_inp;
        for (int o = 0; o < out_dim; o++) y[o] = 0.0f;
        for (int i = 0; i < in_dim; i++) {
            const float xi = x[i], *w = wt + (size_t)i * out_dim;
            for (int o = 0; o < out_dim; o++) y[o] += xi * w[o];
        }
        if (bias)
            for (int o = 0; o < out_dim; o++) y[o] += bias[o];
    }
    free(wt);
}

void linear_backward(float *dinp, int ld_dinp, float *dweight, float *dbias, const float *dout,
                     int ld_dout, const float *inp, int ld_inp, const float *weight, int n,
                     int in_dim, int out_dim) {
    if (n == 0) return;
    if (dinp) hax_sgemm(0, 0, n, in_dim, out_dim, 1.0f, dout, ld_dout, weight, in_dim, 1.0f, dinp, ld_dinp);
    if (dweight) hax_sgemm(1, 0, out_dim, in_dim, n, 1.0f, dout, ld_dout, inp, ld_inp, 1.0f, dweight, in_dim);
    if (dbias) {
        for (int i = 0; i < n; i++) {
            const float *row = dout + (size_t)i * ld_dout;
            for (int o = 0; o < out_dim; o++) dbias[o] += row[o];
        }
    }
}

#ifndef HAX_NO_BLAS
void hax_blas_set_threads(int n) { openblas_set_num_threads(n); }

__attribute__((constructor)) static void blas_one_thread(void) {
    // See hax_sgemm: our threads, not OpenBLAS's.
    openblas_set_num_threads(1);
}
#else
void hax_blas_set_threads(int n) { (void)n; }  // no BLAS threads to set
#endif
