// test_ops_basic.c: embedding, RMSNorm, fused add + RMSNorm, logits,
// cross-entropy + accuracy (src/ops/basic.h) against double-precision
// references written here, and their backward passes against central finite
// differences of those references.
#include <omp.h>
#include <stdint.h>

#include "src/ops/basic.h"
#include "test.h"

#define FD_H 1e-3f
#define FD_TOL 2e-3

static float *fmalloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

// ---------------------------------------------------------------- references (double)

static double ref_rms(const float *x, int d, double eps) {
    double ss = 0;
    for (int j = 0; j < d; j++) ss += (double)x[j] * x[j];
    return 1.0 / sqrt(ss / d + eps);
}

// Σ_rows Σ_j rmsnorm(x)_j · r_j
static double ref_rmsnorm_loss(const float *x, const float *w, const float *r, int n, int d) {
    double L = 0;
    for (int i = 0; i < n; i++) {
        double rs = ref_rms(x + (size_t)i * d, d, 1e-5);
        for (int j = 0; j < d; j++) L += (double)x[(size_t)i * d + j] * rs * w[j] * r[(size_t)i * d + j];
    }
    return L;
}

typedef struct {
    float *x, *res, *w, *r, *q;
    int n, d;
} norm_ctx;

static double rmsnorm_loss_fn(void *p) {
    norm_ctx *c = p;
    return ref_rmsnorm_loss(c->x, c->w, c->r, c->n, c->d);
}

// Σ rmsnorm(x + res)·r + Σ (x + res)·q
static double add_rmsnorm_loss_fn(void *p) {
    norm_ctx *c = p;
    size_t nd = (size_t)c->n * c->d;
    float *s = fmalloc(nd);
    for (size_t i = 0; i < nd; i++) s[i] = c->x[i] + c->res[i];
    double L = ref_rmsnorm_loss(s, c->w, c->r, c->n, c->d);
    for (size_t i = 0; i < nd; i++) L += (double)s[i] * c->q[i];
    free(s);
    return L;
}

// ---------------------------------------------------------------- embedding

static void test_embedding(void) {
    int V = 11, d = 6, n = 9;
    int32_t ids[9] = {3, 0, 10, 3, 7, 3, 1, 10, 5};
    float *W = fmalloc((size_t)V * d), *out = fmalloc((size_t)n * d), *dout = fmalloc((size_t)n * d);
    float *dW = fmalloc((size_t)V * d);
    test_fill(W, (size_t)V * d, 1, 1.0f);
    test_fill(dout, (size_t)n * d, 2, 1.0f);
    embedding_forward(out, ids, W, n, d, V);
    int same = 1;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < d; j++) same &= out[t * d + j] == W[ids[t] * d + j];
    CHECK(same, "embedding rows differ from W_emb[ids]");
    for (size_t i = 0; i < (size_t)V * d; i++) dW[i] = 0.5f;  // accumulates onto existing values
    embedding_backward(dW, dout, ids, n, d);
    double worst = 0;
    for (int v = 0; v < V; v++)
        for (int j = 0; j < d; j++) {
            double e = 0.5;
            for (int t = 0; t < n; t++)
                if (ids[t] == v) e += dout[t * d + j];
            worst = fmax(worst, fabs(e - dW[v * d + j]));
        }
    CHECK(worst < 1e-6, "embedding backward off by %g", worst);
    free(W); free(out); free(dout); free(dW);
}

// ---------------------------------------------------------------- RMSNorm

static void test_rmsnorm(void) {
    int n = 70, d = 24;  // 70 rows: two row chunks, the second partial
    size_t nd = (size_t)n * d;
    float *x = fmalloc(nd), *w = fmalloc(d), *r = fmalloc(nd), *out = fmalloc(nd), *rstd = fmalloc(n);
    float *dx = fmalloc(nd), *dw = fmalloc(d);
    test_fill(x, nd, 3, 2.0f);
    test_fill(w, d, 4, 1.0f);
    test_fill(r, nd, 5, 1.0f);
    for (int j = 0; j < d; j++) w[j] += 1.0f;
    rmsnorm_forward(out, rstd, x, w, n, d, 1e-5f);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double rs = ref_rms(x + (size_t)i * d, d, 1e-5);
        worst = fmax(worst, fabs(rs - rstd[i]) / rs);
        for (int j = 0; j < d; j++) {
            double e = x[i * d + j] * rs * w[j];
            worst = fmax(worst, fabs(e - out[i * d + j]) / (fabs(e) + 1e-3));
        }
    }
    CHECK(worst < 1e-5, "rmsnorm forward rel err %g", worst);
    rmsnorm_backward(dx, dw, r, x, rstd, w, n, d);
    norm_ctx c = {x, NULL, w, r, NULL, n, d};
    double ex = fd_check(x, nd, dx, rmsnorm_loss_fn, &c, FD_H, 200, 1e-3);
    double ew = fd_check(w, d, dw, rmsnorm_loss_fn, &c, FD_H, 200, 1e-3);
    CHECK(ex < FD_TOL, "rmsnorm dx vs FD: %g", ex);
    CHECK(ew < FD_TOL, "rmsnorm dw vs FD: %g", ew);
    free(x); free(w); free(r); free(out); free(rstd); free(dx); free(dw);
}

static void test_add_rmsnorm(void) {
    int n = 37, d = 16;
    size_t nd = (size_t)n * d;
    float *x = fmalloc(nd), *res = fmalloc(nd), *w = fmalloc(d), *r = fmalloc(nd), *q = fmalloc(nd);
    float *out = fmalloc(nd), *s = fmalloc(nd), *rstd = fmalloc(n), *out2 = fmalloc(nd);
    float *dx = fmalloc(nd), *dres = fmalloc(nd), *dw = fmalloc(d), *dboth = fmalloc(nd);
    test_fill(x, nd, 6, 1.0f);
    test_fill(res, nd, 7, 1.0f);
    test_fill(w, d, 8, 0.5f);
    test_fill(r, nd, 9, 1.0f);
    test_fill(q, nd, 10, 1.0f);
    for (int j = 0; j < d; j++) w[j] += 1.0f;
    add_rmsnorm_forward(out, s, rstd, x, res, w, n, d, 1e-5f);
    double worst = 0;
    for (size_t i = 0; i < nd; i++) worst = fmax(worst, fabs(s[i] - (x[i] + res[i])));
    CHECK(worst == 0, "new residual is not x + residual (%g)", worst);
    rmsnorm_forward(out2, NULL, s, w, n, d, 1e-5f);
    CHECK(memcmp(out, out2, sizeof(float) * nd) == 0, "fused norm output differs from rmsnorm(x + residual)");
    add_rmsnorm_backward(dx, dres, dw, r, q, s, rstd, w, n, d);
    norm_ctx c = {x, res, w, r, q, n, d};
    double ex = fd_check(x, nd, dx, add_rmsnorm_loss_fn, &c, FD_H, 150, 1e-3);
    double er = fd_check(res, nd, dres, add_rmsnorm_loss_fn, &c, FD_H, 150, 1e-3);
    double ew = fd_check(w, d, dw, add_rmsnorm_loss_fn, &c, FD_H, 150, 1e-3);
    CHECK(ex < FD_TOL, "add_rmsnorm dx vs FD: %g", ex);
    CHECK(er < FD_TOL, "add_rmsnorm dresidual vs FD: %g", er);
    CHECK(ew < FD_TOL, "add_rmsnorm dw vs FD: %g", ew);
    // dx and dresidual as one buffer: 2g
    add_rmsnorm_backward(dboth, dboth, NULL, r, q, s, rstd, w, n, d);
    worst = 0;
    for (size_t i = 0; i < nd; i++) worst = fmax(worst, fabs(dboth[i] - 2 * dx[i]));
    CHECK(worst < 1e-5, "aliased dx/dresidual off by %g", worst);
    free(x); free(res); free(w); free(r); free(q); free(out); free(s); free(rstd); free(out2);
    free(dx); free(dres); free(dw); free(dboth);
}

// ---------------------------------------------------------------- logits

typedef struct {
    float *h, *W, *r;
    int n, d, V;
} logits_ctx;

static double logits_loss_fn(void *p) {
    logits_ctx *c = p;
    double L = 0;
    for (int t = 0; t < c->n; t++)
        for (int v = 0; v < c->V; v++) {
            double z = 0;
            for (int j = 0; j < c->d; j++) z += (double)c->h[t * c->d + j] * c->W[v * c->d + j];
            L += z * c->r[t * c->V + v];
        }
    return L;
}

static void test_logits(void) {
    int n = 13, d = 8, V = 10;
    float *h = fmalloc((size_t)n * d), *W = fmalloc((size_t)V * d), *r = fmalloc((size_t)n * V);
    float *lg = fmalloc((size_t)n * V), *dh = fmalloc((size_t)n * d), *dW = fmalloc((size_t)V * d);
    test_fill(h, (size_t)n * d, 11, 1.0f);
    test_fill(W, (size_t)V * d, 12, 1.0f);
    test_fill(r, (size_t)n * V, 13, 1.0f);
    logits_forward(lg, h, W, n, d, V);
    double worst = 0;
    for (int t = 0; t < n; t++)
        for (int v = 0; v < V; v++) {
            double z = 0;
            for (int j = 0; j < d; j++) z += (double)h[t * d + j] * W[v * d + j];
            worst = fmax(worst, fabs(z - lg[t * V + v]));
        }
    CHECK(worst < 1e-5, "logits forward off by %g", worst);
    logits_backward(dh, dW, r, h, W, n, d, V);
    logits_ctx c = {h, W, r, n, d, V};
    double eh = fd_check(h, (size_t)n * d, dh, logits_loss_fn, &c, FD_H, 100, 1e-3);
    double ew = fd_check(W, (size_t)V * d, dW, logits_loss_fn, &c, FD_H, 100, 1e-3);
    CHECK(eh < FD_TOL, "logits dh vs FD: %g", eh);
    CHECK(ew < FD_TOL, "logits dW vs FD: %g", ew);
    free(h); free(W); free(r); free(lg); free(dh); free(dW);
}

// ---------------------------------------------------------------- cross-entropy

typedef struct {
    float *lg;
    const int32_t *lab;
    const uint8_t *mask;
    int n, V;
} ce_ctx;

static double ref_ce_sum(void *p) {
    ce_ctx *c = p;
    double L = 0;
    for (int t = 0; t < c->n; t++) {
        if (!c->mask[t]) continue;
        double m = -INFINITY, s = 0;
        for (int v = 0; v < c->V; v++) m = fmax(m, c->lg[t * c->V + v]);
        for (int v = 0; v < c->V; v++) s += exp(c->lg[t * c->V + v] - m);
        L += m + log(s) - c->lg[t * c->V + c->lab[t]];
    }
    return L;
}

static void test_cross_entropy(void) {
    // 3 sequences of lengths 1, 7, 20
    int seq_off[4] = {0, 1, 8, 28}, n = 28, V = 12;
    float *lg = fmalloc((size_t)n * V), *dl = fmalloc((size_t)n * V);
    int32_t lab[28];
    uint8_t mask[28];
    test_fill(lg, (size_t)n * V, 14, 3.0f);
    for (int t = 0; t < n; t++) {
        lab[t] = (t * 7 + 3) % V;
        mask[t] = (t % 3 == 1) || t == 0;
    }
    // Position 4: a tie between ids 2 and 5 (first maximum = 2 = its label).
    for (int v = 0; v < V; v++) lg[4 * V + v] = -1.0f;
    lg[4 * V + 2] = lg[4 * V + 5] = 2.0f;
    lab[4] = 2;
    mask[4] = 1;
    // Position 10: the label is the argmax.
    lg[10 * V + lab[10]] = 50.0f;
    mask[10] = 1;
    int correct[3], count[3];
    double L = ce_forward(lg, lab, mask, seq_off, 3, V, correct, count);
    ce_ctx c = {lg, lab, mask, n, V};
    double Lr = ref_ce_sum(&c);
    CHECK(fabs(L - Lr) < 1e-9 * fmax(1.0, fabs(Lr)), "CE sum %.12g vs reference %.12g", L, Lr);
    int ok = 1;
    for (int s = 0; s < 3; s++) {
        int cc = 0, nn = 0;
        for (int t = seq_off[s]; t < seq_off[s + 1]; t++) {
            if (!mask[t]) continue;
            int am = 0;
            for (int v = 1; v < V; v++)
                if (lg[t * V + v] > lg[t * V + am]) am = v;
            cc += am == lab[t];
            nn++;
        }
        ok &= cc == correct[s] && nn == count[s];
    }
    CHECK(ok, "per-sequence correct/count differ from the reference");
    CHECK(correct[1] >= 1 && correct[2] >= 1, "tie or argmax position not counted correct (%d, %d)",
          correct[1], correct[2]);
    // backward with scale = 1: dlogits = gradient of the CE sum
    ce_backward(dl, lg, lab, mask, n, V, 1.0f);
    double e = fd_check(lg, (size_t)n * V, dl, ref_ce_sum, &c, FD_H, 400, 1e-3);
    CHECK(e < FD_TOL, "CE backward vs FD: %g", e);
    int zero = 1;
    for (int t = 0; t < n; t++)
        for (int v = 0; v < V; v++)
            if (!mask[t]) zero &= dl[t * V + v] == 0.0f;
    CHECK(zero, "dlogits not zero at unscored positions");
    // mask NULL scores everything
    uint8_t all[28];
    memset(all, 1, sizeof all);
    double La = ce_forward(lg, lab, NULL, seq_off, 3, V, NULL, count);
    double Lb = ce_forward(lg, lab, all, seq_off, 3, V, NULL, NULL);
    CHECK(La == Lb && count[0] == 1 && count[1] == 7 && count[2] == 20, "mask NULL is not 'all scored'");
    free(lg); free(dl);
}

// ---------------------------------------------------------------- threads

static void test_threads_bit_identical(void) {
    int n = 300, d = 32, V = 20;
    int seq_off[4] = {0, 1, 100, 300};
    size_t nd = (size_t)n * d;
    float *x = fmalloc(nd), *res = fmalloc(nd), *w = fmalloc(d), *dy = fmalloc(nd), *lg = fmalloc((size_t)n * V);
    float *o = fmalloc(nd), *s = fmalloc(nd), *rstd = fmalloc(n);
    float *dx[2], *dw[2], *dl[2];
    double L[2];
    int32_t *lab = calloc(n, sizeof(int32_t));
    for (int t = 0; t < n; t++) lab[t] = (t * 13) % V;
    test_fill(x, nd, 20, 1.0f);
    test_fill(res, nd, 21, 1.0f);
    test_fill(w, d, 22, 1.0f);
    test_fill(dy, nd, 23, 1.0f);
    test_fill(lg, (size_t)n * V, 24, 2.0f);
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        dx[k] = fmalloc(nd);
        dw[k] = fmalloc(d);
        dl[k] = fmalloc((size_t)n * V);
        add_rmsnorm_forward(o, s, rstd, x, res, w, n, d, 1e-5f);
        add_rmsnorm_backward(dx[k], NULL, dw[k], dy, dy, s, rstd, w, n, d);
        rmsnorm_backward(dx[k], dw[k], dy, x, rstd, w, n, d);
        L[k] = ce_forward(lg, lab, NULL, seq_off, 3, V, NULL, NULL);
        ce_backward(dl[k], lg, lab, NULL, n, V, 0.01f);
    }
    omp_set_num_threads(2);
    CHECK(memcmp(dx[0], dx[1], sizeof(float) * nd) == 0, "dx differs between 1 and 2 threads");
    CHECK(memcmp(dw[0], dw[1], sizeof(float) * d) == 0, "dw differs between 1 and 2 threads");
    CHECK(memcmp(dl[0], dl[1], sizeof(float) * n * V) == 0, "dlogits differ between 1 and 2 threads");
    CHECK(L[0] == L[1], "CE sum differs between 1 and 2 threads");
    for (int k = 0; k < 2; k++) { free(dx[k]); free(dw[k]); free(dl[k]); }
    free(x); free(res); free(w); free(dy); free(lg); free(o); free(s); free(rstd); free(lab);
}

static void test_helpers(void) {
    CHECK(hax_softplus(25.0f) == 25.0f, "softplus above the threshold is not the identity");
    CHECK(fabsf(hax_softplus(0.0f) - logf(2.0f)) < 1e-7f, "softplus(0) != log 2");
    CHECK(hax_dsoftplus(30.0f) == 1.0f, "softplus derivative above the threshold is not 1");
    double worst = 0;
    for (float x = -8.0f; x <= 8.0f; x += 0.37f) {
        double fd = (hax_silu(x + 1e-3f) - hax_silu(x - 1e-3f)) / 2e-3;
        worst = fmax(worst, fabs(fd - hax_dsilu(x)));
    }
    CHECK(worst < 1e-3, "dsilu vs FD off by %g", worst);
}

int main(void) {
    RUN(test_helpers);
    RUN(test_embedding);
    RUN(test_rmsnorm);
    RUN(test_add_rmsnorm);
    RUN(test_logits);
    RUN(test_cross_entropy);
    RUN(test_threads_bit_identical);
    return test_summary();
}
