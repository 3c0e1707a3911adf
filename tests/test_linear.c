// test_linear.c: the GEMM wrapper: correct in every transpose, bit-identical
// for 1 and 2 threads (row blocks of a fixed size), linear layers vs naive.
#include <omp.h>

#include "src/core/common.h"
#include "src/ops/linear.h"
#include "test.h"

static void naive_gemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                       const float *b, int ldb, float beta, double *c, int ldc) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++) {
                double x = ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                double y = tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                s += x * y;
            }
            c[(size_t)i * ldc + j] = alpha * s + beta * c[(size_t)i * ldc + j];
        }
}

static void test_sgemm_all_transposes(void) {
    int m = 700, n = 37, k = 129;  // m spans several row blocks, with a ragged last one
    float *a = xmalloc(sizeof(float) * m * k), *b = xmalloc(sizeof(float) * k * n);
    float *c = xmalloc(sizeof(float) * m * n);
    double *ref = xmalloc(sizeof(double) * m * n);
    float *cf = xmalloc(sizeof(float) * m * n);
    test_fill(a, (size_t)m * k, 1, 1.0f);
    test_fill(b, (size_t)k * n, 2, 1.0f);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            test_fill(c, (size_t)m * n, 3, 1.0f);
            for (int i = 0; i < m * n; i++) ref[i] = c[i];
            int lda = ta ? m : k, ldb = tb ? k : n;
            hax_sgemm(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 1.0f, c, n);
            naive_gemm(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 1.0f, ref, n);
            for (int i = 0; i < m * n; i++) cf[i] = (float)ref[i];
            double err = rel_err(c, cf, (size_t)m * n);
            CHECK(err < 1e-6, "ta=%d tb=%d: rel err %g", ta, tb, err);
        }
    free(a); free(b); free(c); free(ref); free(cf);
}

static void test_sgemm_thread_independent(void) {
    // The shapes that differed under OpenBLAS threading: a weight gradient
    // whose reduction runs over all tokens, and a tall projection.
    int shapes[2][3] = {{1325, 64, 328}, {328, 64, 3000}};
    for (int s = 0; s < 2; s++) {
        int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        float *a = xmalloc(sizeof(float) * m * k), *b = xmalloc(sizeof(float) * k * n);
        float *c1 = xcalloc((size_t)m * n, sizeof(float)), *c2 = xcalloc((size_t)m * n, sizeof(float));
        test_fill(a, (size_t)m * k, 4, 1.0f);
        test_fill(b, (size_t)k * n, 5, 1.0f);
        // every transpose: op(A) rows come from A's rows or, transposed, its
        // columns, so the row blocks take another path through A
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int lda = ta ? m : k, ldb = tb ? k : n;
                omp_set_num_threads(1);
                hax_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c1, n);
                omp_set_num_threads(2);
                hax_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c2, n);
                CHECK(memcmp(c1, c2, sizeof(float) * m * n) == 0,
                      "shape %dx%dx%d (ta=%d tb=%d) differs between 1 and 2 threads", m, n, k, ta, tb);
            }
        free(a); free(b); free(c1); free(c2);
    }
}

static void test_linear_layer(void) {
    int n = 300, in = 24, out = 10;
    float *x = xmalloc(sizeof(float) * n * in), *w = xmalloc(sizeof(float) * out * in), *bias = xmalloc(sizeof(float) * out);
    float *y = xmalloc(sizeof(float) * n * out);
    test_fill(x, (size_t)n * in, 6, 1.0f);
    test_fill(w, (size_t)out * in, 7, 1.0f);
    test_fill(bias, out, 8, 1.0f);
    linear_forward(y, out, x, in, w, bias, n, in, out);
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            double s = bias[o];
            for (int p = 0; p < in; p++) s += (double)x[i * in + p] * w[o * in + p];
            double e = fabs(s - y[i * out + o]);
            if (e > worst) worst = e;
        }
    CHECK(worst < 1e-5, "forward max abs err %g", worst);
    // backward: dbias = column sums of dout, dweight = dout^T x
    float *dw = xcalloc((size_t)out * in, sizeof(float)), *db = xcalloc(out, sizeof(float));
    float *dx = xcalloc((size_t)n * in, sizeof(float));
    linear_backward(dx, in, dw, db, y, out, x, in, w, n, in, out);
    double e_db = 0, e_dw = 0;
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int i = 0; i < n; i++) s += y[i * out + o];
        e_db = fmax(e_db, fabs(s - db[o]) / (fabs(s) + 1));
        double t = 0;
        for (int i = 0; i < n; i++) t += (double)y[i * out + o] * x[i * in + 3];
        e_dw = fmax(e_dw, fabs(t - dw[o * in + 3]) / (fabs(t) + 1));
    }
    CHECK(e_db < 1e-5 && e_dw < 1e-5, "dbias err %g, dweight err %g", e_db, e_dw);
    free(x); free(w); free(bias); free(y); free(dw); free(db); free(dx);
}

int main(void) {
    RUN(test_sgemm_all_transposes);
    RUN(test_sgemm_thread_independent);
    RUN(test_linear_layer);
    return test_summary();
}
