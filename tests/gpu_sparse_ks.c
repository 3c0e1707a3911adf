// gpu_sparse_ks.c: GPU key selection (cuda/sparse/ks.h) against the CPU's
// (src/sparse/ks.h) on random ragged packed batches, both semantics: features
// and scores within 1e-5, the cumulative top-k (given the CPU's scores, also
// tie-heavy ones; the chunked top-k around its chunk boundaries) and the
// candidates EXACTLY equal, targets and loss within 1e-6, dscore and the MLP
// gradients within 1e-4 (normwise relative errors; gradients accumulate into
// random initial values and the increments are compared); then the per-layer
// state chained (forward + backward, also replayed from a CUDA graph:
// bit-identical), with the previous kernels and the new ones
// (cuda_ks_state.old, HAX_SPARSE_KS; the new top-k cuda_ks_cumtopk_exit on
// every top-k case): both as the CPU, and the same bits; the long-sequence
// kernels (HAX_SPARSE_LONG: cuda_ks_features_long, cuda_ks_cumtopk_long, and
// the state with long_mode 2) on every case above and on few long ragged
// sequences (test_topk_long): the previous kernels' bits and the CPU's
// selections; and one paper-size timing CPU vs GPU, all three kernel sets
// ("TIME ks ... old|new|long"). Skips (exit 0) without a CUDA device.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/scalar.h"
#include "cuda/core/common.h"
#include "cuda/sparse/ks.h"
#include "src/sparse/ks.h"
#include "test.h"

#define TOL_FWD 1e-5
#define TOL_BWD 1e-4
#define TOL_DBL 1e-6

// ---------------------------------------------------------------- helpers

static unsigned g_seed = 7;

static float *rnd(size_t n, float lo, float hi) {
    float *p = xmalloc(sizeof(float) * (n ? n : 1));
    test_fill(p, n, g_seed++, 1.0f);
    for (size_t i = 0; i < n; i++) p[i] = lo + (p[i] + 1.0f) * 0.5f * (hi - lo);
    return p;
}

// cuda_upload_new / cuda_download_new allocate at least one byte, so empty
// arrays need no special case here.
static void *up(const void *h, size_t bytes) { return cuda_upload_new(h, bytes); }
static void *down(const void *d, size_t bytes) { return cuda_download_new(d, bytes); }

// Normwise relative error of the GPU array (device) against the CPU's; with
// init != NULL both are increments over init.
static void expect(const char *what, const float *d_gpu, const float *cpu, const float *init, size_t n,
                   double tol) {
    float *g = down(d_gpu, sizeof(float) * n);
    float *c = xmalloc(sizeof(float) * (n ? n : 1));
    memcpy(c, cpu, sizeof(float) * n);
    if (init)
        for (size_t i = 0; i < n; i++) g[i] -= init[i], c[i] -= init[i];
    double err = rel_err(g, c, n);
    printf("    %-34s rel err %.2e\n", what, err);
    CHECK(err <= tol, "%s: relative error %.3e above %.0e", what, err, tol);
    free(g);
    free(c);
}

static double rel_err_d(const double *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

// Integer arrays must be equal; prints the first difference.
static void expect_ints(const char *what, const int *d_gpu, const int *cpu, size_t n) {
    int *g = down(d_gpu, sizeof(int) * n);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (g[i] != cpu[i] && bad++ == 0) first = i;
    printf("    %-34s %zu of %zu differ\n", what, bad, n);
    CHECK(bad == 0, "%s: %zu entries differ, first at %zu: gpu %d cpu %d", what, bad, first,
          g[first], cpu[first]);
    free(g);
}

typedef struct {
    int n_seq, n_tok, model_len;
    int *off, *d_off;
} tbatch;

static tbatch make_batch(const int *lens, int n_seq, int extra_pad) {
    tbatch b = {n_seq, 0, 0, xmalloc(sizeof(int) * (n_seq + 1)), NULL};
    b.off[0] = 0;
    for (int s = 0; s < n_seq; s++) {
        b.off[s + 1] = b.off[s] + lens[s];
        if (lens[s] > b.model_len) b.model_len = lens[s];
    }
    b.model_len += extra_pad;
    b.n_tok = b.off[n_seq];
    b.d_off = up(b.off, sizeof(int) * (n_seq + 1));
    return b;
}

static void free_batch(tbatch *b) {
    free(b->off);
    cuda_free(b->d_off);
}

// MLP parameters and gradients: one flat host buffer, its device copy, and
// the ks_params / ks_grads views of both.
typedef struct {
    size_t n;
    float *h, *d;
    ks_params hp, dp;
} tparams;

static void views(float *base, int D, const float **w1, const float **b1, const float **w2,
                  const float **b2, const float **w3, const float **b3) {
    *w1 = base;
    *b1 = *w1 + (size_t)D * D;
    *w2 = *b1 + D;
    *b2 = *w2 + (size_t)D * D;
    *w3 = *b2 + D;
    *b3 = *w3 + D;
}

static tparams make_params(int N, float scale) {
    int D = 2 * N;
    tparams p;
    p.n = 2 * ((size_t)D * D + D) + D + 1;
    p.h = rnd(p.n, -scale, scale);
    p.d = up(p.h, sizeof(float) * p.n);
    views(p.h, D, &p.hp.w1, &p.hp.b1, &p.hp.w2, &p.hp.b2, &p.hp.w3, &p.hp.b3);
    views(p.d, D, &p.dp.w1, &p.dp.b1, &p.dp.w2, &p.dp.b2, &p.dp.w3, &p.dp.b3);
    return p;
}

static ks_grads grads_of(float *base, int N) {
    ks_params v;
    views(base, 2 * N, &v.w1, &v.b1, &v.w2, &v.b2, &v.w3, &v.b3);
    ks_grads g = {(float *)v.w1, (float *)v.b1, (float *)v.w2, (float *)v.b2, (float *)v.w3,
                  (float *)v.b3};
    return g;
}

static const char *sem_name(hax_semantics sem) {
    return sem == SEMANTICS_CAUSAL ? "causal" : "reference";
}

// ---------------------------------------------------------------- the ops

// Two device float arrays of n elements byte for byte: prints and requires
// no differing element.
static void expect_same(const char *what, const float *d_a, const float *d_b, size_t n) {
    float *a = down(d_a, sizeof(float) * n), *b = down(d_b, sizeof(float) * n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    printf("    %-34s %zu of %zu differ (bits)\n", what, bad, n);
    CHECK(bad == 0, "%s: %zu elements differ", what, bad);
    free(a), free(b);
}

// The long-sequence features (cuda_ks_features_long, HAX_SPARSE_LONG) on the
// batch of d_T's features, made by `what`: the same bits. bf16_ref:
// bf16-pure reference semantics (as cuda_ks_features_bf16 with accumulator
// acc), else as cuda_ks_features.
static void expect_features_long(const char *what, const float *d_T, const tbatch *b, const float *d_K, int ldk,
                                 const float *d_Q, int ldq, int N, hax_semantics sem, int bf16_ref, int acc) {
    size_t nD = (size_t)b->n_tok * 2 * N;
    float *d_L = cuda_malloc(sizeof(float) * nD);
    double *cbuf = cuda_malloc(sizeof(double) * b->n_tok * N);
    double *work = cuda_malloc(sizeof(double) * cuda_ks_features_long_doubles(b->n_seq, N));
    cuda_ks_features_long(d_L, cbuf, work, d_K, ldk, d_Q, ldq, b->d_off, b->n_seq, b->n_tok, b->model_len, N, sem,
                          bf16_ref, acc);
    expect_same(what, d_L, d_T, nD);
    cuda_free(d_L), cuda_free(cbuf), cuda_free(work);
}

// The long-sequence top-k (cuda_ks_cumtopk_long) on the device scores d_s
// of batch b against the CPU's selections sel [n_tok, k_c]: equal. Every
// entry of d_sel is written.
static void expect_topk_long(const char *what, int *d_sel, const float *d_s, const tbatch *b, const int *sel,
                             int k_c) {
    int n = b->n_tok, *work = cuda_malloc(sizeof(int) * cuda_ks_cumtopk_long_ints(n, b->n_seq, k_c));
    cuda_zero(d_sel, sizeof(int) * (size_t)n * k_c);
    cuda_ks_cumtopk_long(d_sel, work, d_s, b->d_off, b->n_seq, n, b->model_len, k_c);
    expect_ints(what, d_sel, sel, (size_t)n * k_c);
    cuda_free(work);
}

// Every op once, on one batch, inputs shared with the CPU where exactness is
// asked (top-k on the CPU's scores, loss on the CPU's scores and targets).
static void run_ops(const tbatch *b, int N, int k_c, int ldk, int ldq, hax_semantics sem) {
    printf("  ops: %d sequences, %d tokens, N %d, k_c %d, %s\n", b->n_seq, b->n_tok, N, k_c,
           sem_name(sem));
    int n = b->n_tok, D = 2 * N, ns = b->n_seq;
    size_t nD = (size_t)n * D, nc = (size_t)ns * k_c;
    float *K = rnd((size_t)n * ldk, -0.6f, 0.6f), *Q = rnd((size_t)n * ldq, -0.6f, 0.6f);
    float *d_K = up(K, sizeof(float) * n * ldk), *d_Q = up(Q, sizeof(float) * n * ldq);
    tparams p = make_params(N, 1.0f / sqrtf((float)D));

    // features
    float *T = xmalloc(sizeof(float) * nD), *d_T = cuda_malloc(sizeof(float) * nD);
    ks_features(T, K, ldk, Q, ldq, b->off, ns, b->model_len, N, sem);
    cuda_ks_features(d_T, d_K, ldk, d_Q, ldq, b->d_off, ns, n, b->model_len, N, sem);
    expect("features T", d_T, T, NULL, nD, TOL_FWD);
    expect_features_long("features T (long kernels)", d_T, b, d_K, ldk, d_Q, ldq, N, sem, 0, 0);

    // MLP forward (from each side's own features)
    float *h1 = xmalloc(sizeof(float) * nD), *h2 = xmalloc(sizeof(float) * nD);
    float *score = xmalloc(sizeof(float) * n);
    float *d_h1 = cuda_malloc(sizeof(float) * nD), *d_h2 = cuda_malloc(sizeof(float) * nD);
    float *d_score = cuda_malloc(sizeof(float) * n);
    ks_mlp_forward(score, h1, h2, T, &p.hp, n, N);
    cuda_ks_mlp_forward(d_score, d_h1, d_h2, d_T, &p.dp, n, N);
    expect("mlp h1", d_h1, h1, NULL, nD, TOL_FWD);
    expect("mlp h2", d_h2, h2, NULL, nD, TOL_FWD);
    expect("key score", d_score, score, NULL, n, TOL_FWD);

    // cumulative top-k on the CPU's scores, then on tie-heavy scores
    float *d_cs = up(score, sizeof(float) * n);
    int *sel = xmalloc(sizeof(int) * n * k_c), *d_sel = cuda_malloc(sizeof(int) * n * k_c);
    int *d_exit = cuda_malloc(sizeof(int) * n);
    ks_cumtopk(sel, score, b->off, ns, k_c);
    cuda_ks_cumtopk(d_sel, d_cs, b->d_off, ns, k_c);
    expect_ints("cumtopk sel", d_sel, sel, (size_t)n * k_c);
    cuda_ks_cumtopk_exit(d_sel, d_exit, d_cs, b->d_off, ns, n, k_c);
    expect_ints("cumtopk sel (exit positions)", d_sel, sel, (size_t)n * k_c);
    expect_topk_long("cumtopk sel (long kernels)", d_sel, d_cs, b, sel, k_c);
    float *ties = xmalloc(sizeof(float) * n);
    for (int t = 0; t < n; t++) ties[t] = floorf(score[t] * 8.0f) / 8.0f;  // a few levels only
    float *d_ties = up(ties, sizeof(float) * n);
    ks_cumtopk(sel, ties, b->off, ns, k_c);
    cuda_ks_cumtopk(d_sel, d_ties, b->d_off, ns, k_c);
    expect_ints("cumtopk sel (ties)", d_sel, sel, (size_t)n * k_c);
    cuda_ks_cumtopk_exit(d_sel, d_exit, d_ties, b->d_off, ns, n, k_c);
    expect_ints("cumtopk sel (ties, exit positions)", d_sel, sel, (size_t)n * k_c);
    expect_topk_long("cumtopk sel (ties, long kernels)", d_sel, d_ties, b, sel, k_c);
    cuda_free(d_exit);

    // candidates: a 64-bit seed, sample ids past 2^32 (truncated like the CPU)
    int64_t *sid = xmalloc(sizeof(int64_t) * ns);
    for (int s = 0; s < ns; s++) sid[s] = (int64_t)s * 977 + ((s % 3 == 0) ? (1ll << 33) : 0);
    int64_t *d_sid = up(sid, sizeof(int64_t) * ns);
    int *cand = xmalloc(sizeof(int) * nc), *d_cand = cuda_malloc(sizeof(int) * nc);
    uint64_t seed = 0x123456789abcull;
    ks_sample_candidates(cand, b->off, ns, sid, k_c, seed, 17, 1);
    cuda_ks_sample_candidates(d_cand, b->d_off, ns, d_sid, k_c, seed, 17, 1);
    expect_ints("candidates", d_cand, cand, nc);

    // targets (from the same candidates)
    double *y = xmalloc(sizeof(double) * nc), *d_y = cuda_malloc(sizeof(double) * nc);
    ks_rank_targets(y, K, ldk, Q, ldq, cand, b->off, ns, b->model_len, N, k_c, sem);
    cuda_ks_rank_targets(d_y, d_K, ldk, d_Q, ldq, d_cand, b->d_off, ns, b->model_len, N, k_c, sem);
    double *gy = down(d_y, sizeof(double) * nc);
    double ey = rel_err_d(gy, y, nc);
    printf("    %-34s rel err %.2e\n", "targets y", ey);
    CHECK(ey <= TOL_DBL, "targets: relative error %.3e above %.0e", ey, TOL_DBL);

    // loss on the CPU's scores and targets
    double *d_yc = up(y, sizeof(double) * nc), *d_loss = cuda_malloc(sizeof(double));
    void *lw = cuda_malloc(cuda_ks_loss_workspace_bytes(ns));
    double loss = ks_rank_loss_pairs(score, y, cand, b->off, ns, k_c);
    cuda_ks_rank_loss_pairs(d_loss, d_cs, d_yc, d_cand, b->d_off, ns, k_c, lw);
    double *gl = down(d_loss, sizeof(double));
    double el = fabs(*gl - loss) / fmax(fabs(loss), 1e-30);
    printf("    %-34s %.9f vs %.9f rel err %.2e\n", "loss", *gl, loss, el);
    CHECK(el <= TOL_DBL, "loss: gpu %.12g cpu %.12g", *gl, loss);

    // backward into dscore, then the MLP
    float scale = 0.37f;
    float *ds0 = rnd(n, -1, 1), *ds = xmalloc(sizeof(float) * n);
    memcpy(ds, ds0, sizeof(float) * n);
    float *d_ds = up(ds0, sizeof(float) * n);
    ks_rank_loss_backward(ds, score, y, cand, b->off, ns, k_c, scale);
    cuda_ks_rank_loss_backward(d_ds, d_cs, d_yc, d_cand, b->d_off, ns, k_c, scale);
    expect("dscore", d_ds, ds, ds0, n, TOL_BWD);

    int *rows = xmalloc(sizeof(int) * nc), *d_rows = cuda_malloc(sizeof(int) * nc);
    int n_rows = ks_candidate_rows(rows, cand, b->off, ns, k_c);
    cuda_ks_candidate_rows(d_rows, d_cand, b->d_off, ns, k_c);
    int *grows = down(d_rows, sizeof(int) * nc), r = 0, rows_ok = 1;
    for (size_t i = 0; i < nc; i++)
        if (grows[i] >= 0) rows_ok &= r < n_rows && grows[i] == rows[r++];
    CHECK(rows_ok && r == n_rows, "candidate rows differ from the CPU's (%d of %d)", r, n_rows);

    // MLP backward from the CPU's dscore, both sides on the CPU's activations
    float *d_ds2 = up(ds, sizeof(float) * n), *d_Tc = up(T, sizeof(float) * nD);
    float *d_h1c = up(h1, sizeof(float) * nD), *d_h2c = up(h2, sizeof(float) * nD);
    float *g0 = rnd(p.n, -1, 1), *gc = xmalloc(sizeof(float) * p.n);
    memcpy(gc, g0, sizeof(float) * p.n);
    float *d_g = up(g0, sizeof(float) * p.n);
    ks_grads hg = grads_of(gc, N), dg = grads_of(d_g, N);
    float *scratch = xmalloc(sizeof(float) * ks_mlp_scratch_floats((int)nc, N));
    void *mw = cuda_malloc(cuda_ks_mlp_workspace_bytes((int)nc, N));
    ks_mlp_backward(&hg, &p.hp, T, h1, h2, ds, rows, n_rows, N, scratch);
    cuda_ks_mlp_backward(&dg, &p.dp, d_Tc, d_h1c, d_h2c, d_ds2, d_rows, (int)nc, N, mw);
    expect("mlp grads (all six)", d_g, gc, g0, p.n, TOL_BWD);
    size_t DD = (size_t)D * D;
    expect("mlp grad w1", d_g, gc, g0, DD, TOL_BWD);
    expect("mlp grad b3", d_g + p.n - 1, gc + p.n - 1, g0 + p.n - 1, 1, TOL_BWD);

    void *hp[] = {K, Q, T, h1, h2, score, sel, ties, sid, cand, y, gy, gl, ds0, ds, rows, grows, g0,
                  gc, scratch, p.h};
    for (size_t i = 0; i < sizeof(hp) / sizeof(hp[0]); i++) free(hp[i]);
    void *dp[] = {d_K, d_Q, d_T, d_h1, d_h2, d_score, d_cs, d_sel, d_ties, d_sid, d_cand, d_y,
                  d_yc, d_loss, lw, d_ds, d_rows, d_ds2, d_Tc, d_h1c, d_h2c, d_g, mw, p.d};
    for (size_t i = 0; i < sizeof(dp) / sizeof(dp[0]); i++) cuda_free(dp[i]);
}

// ---------------------------------------------------------------- the bf16-pure ops

static void round_host(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = hax_bf16_round(x[i]);
}

// The bf16-pure ops (src/sparse/ks.h *_bf16, cuda/sparse/ks.h) on bf16 inputs,
// each GPU op from the CPU's inputs. The features run the CPU's float and
// double operations in the CPU's order (sequential positions), so they must
// be equal, for both accumulators; the MLP's GEMMs (cuBLAS / the CPU's rows)
// and the targets' double sums (lanes + warp tree / in order) sum in other
// orders, and the loss terms' expf / log1pf may round a last fp32 bit apart,
// which moves a bf16 rounding only within ~2^-16 of a midpoint: at most 1%
// of the elements may differ, 0.2% by more than a step. The MLP's parameter
// gradients are fp32 sums of those bf16 values: within 2e-3 (one flipped
// dh element among the n_rows of a column moves the sum by 2^-8 of one term).
static void run_ops_bf16(const tbatch *b, int N, int k_c, int ldk, int ldq) {
    printf("  bf16-pure ops: %d sequences, %d tokens, N %d, k_c %d\n", b->n_seq, b->n_tok, N, k_c);
    int n = b->n_tok, D = 2 * N, ns = b->n_seq;
    size_t nD = (size_t)n * D, nc = (size_t)ns * k_c;
    float *K = rnd((size_t)n * ldk, -0.6f, 0.6f), *Q = rnd((size_t)n * ldq, -0.6f, 0.6f);
    round_host(K, (size_t)n * ldk), round_host(Q, (size_t)n * ldq);
    float *d_K = up(K, sizeof(float) * n * ldk), *d_Q = up(Q, sizeof(float) * n * ldq);
    tparams p = make_params(N, 1.0f / sqrtf((float)D));
    round_host(p.h, p.n);
    cuda_upload(p.d, p.h, sizeof(float) * p.n);

    float *T = xmalloc(sizeof(float) * nD), *d_T = cuda_malloc(sizeof(float) * nD);
    for (int acc = 0; acc < 2; acc++) {
        ks_features_bf16(T, K, ldk, Q, ldq, b->off, ns, b->model_len, N, acc);
        cuda_ks_features_bf16(d_T, d_K, ldk, d_Q, ldq, b->d_off, ns, b->model_len, N, acc);
        float *g = down(d_T, sizeof(float) * nD);
        check_bf16_close(acc ? "features T (bf16 accumulator)" : "features T (fp32 accumulator)", g, T, nD, 0, 0);
        expect_features_long(acc ? "features T (bf16 accumulator, long kernels)"
                                 : "features T (fp32 accumulator, long kernels)",
                             d_T, b, d_K, ldk, d_Q, ldq, N, SEMANTICS_REFERENCE, 1, acc);
        free(g);
    }
    float *h1 = xmalloc(sizeof(float) * nD), *h2 = xmalloc(sizeof(float) * nD), *score = xmalloc(sizeof(float) * n);
    float *d_h1 = cuda_malloc(sizeof(float) * nD), *d_h2 = cuda_malloc(sizeof(float) * nD);
    float *d_score = cuda_malloc(sizeof(float) * n);
    cuda_upload(d_T, T, sizeof(float) * nD);
    ks_mlp_forward_bf16(score, h1, h2, T, &p.hp, n, N);
    cuda_ks_mlp_forward_bf16(d_score, d_h1, d_h2, d_T, &p.dp, n, N);
    float *gh1 = down(d_h1, sizeof(float) * nD), *gh2 = down(d_h2, sizeof(float) * nD);
    float *gsc = down(d_score, sizeof(float) * n);
    check_bf16_close("mlp h1", gh1, h1, nD, 0.01, 0.002);
    check_bf16_close("mlp h2", gh2, h2, nD, 0.01, 0.002);
    check_bf16_close("key score", gsc, score, n, 0.01, 0.002);

    int64_t *sid = xmalloc(sizeof(int64_t) * ns);
    for (int s = 0; s < ns; s++) sid[s] = 31 * s + 5;
    int *cand = xmalloc(sizeof(int) * nc);
    ks_sample_candidates(cand, b->off, ns, sid, k_c, 99, 3, 0);
    int *d_cand = up(cand, sizeof(int) * nc);
    for (int sem = 0; sem < 2; sem++) {
        double *y = xmalloc(sizeof(double) * nc), *d_y = cuda_malloc(sizeof(double) * nc);
        ks_rank_targets_bf16(y, K, ldk, Q, ldq, cand, b->off, ns, b->model_len, N, k_c, (hax_semantics)sem);
        cuda_ks_rank_targets_bf16(d_y, d_K, ldk, d_Q, ldq, d_cand, b->d_off, ns, b->model_len, N, k_c,
                                  (hax_semantics)sem);
        double *gy = down(d_y, sizeof(double) * nc);
        float *fy = xmalloc(sizeof(float) * nc), *fgy = xmalloc(sizeof(float) * nc);
        for (size_t i = 0; i < nc; i++) fy[i] = (float)y[i], fgy[i] = (float)gy[i];
        check_bf16_close(sem ? "targets y (causal)" : "targets y (reference)", fgy, fy, nc, 0.02, 0.002);
        free(y), free(gy), free(fy), free(fgy), cuda_free(d_y);
    }
    // loss and its backward on the CPU's scores and (reference) targets
    double *y = xmalloc(sizeof(double) * nc);
    ks_rank_targets_bf16(y, K, ldk, Q, ldq, cand, b->off, ns, b->model_len, N, k_c, SEMANTICS_REFERENCE);
    double *d_y = up(y, sizeof(double) * nc), *d_loss = cuda_malloc(sizeof(double));
    float *d_cs = up(score, sizeof(float) * n);
    void *lw = cuda_malloc(cuda_ks_loss_workspace_bytes(ns));
    double loss = ks_rank_loss_pairs_bf16(score, y, cand, b->off, ns, k_c);
    cuda_ks_rank_loss_pairs_bf16(d_loss, d_cs, d_y, d_cand, b->d_off, ns, k_c, lw);
    double *gl = down(d_loss, sizeof(double));
    double el = fabs(*gl - loss) / fmax(fabs(loss), 1e-30);
    printf("    %-34s %.9f vs %.9f rel err %.2e\n", "loss (bf16 terms)", *gl, loss, el);
    CHECK(el <= 1e-4, "bf16 loss: gpu %.12g cpu %.12g", *gl, loss);
    float scale = hax_bf16_round(0.1f) / 8.0f;
    float *ds = xcalloc(n, sizeof(float)), *d_ds = cuda_malloc(sizeof(float) * n);
    cuda_zero(d_ds, sizeof(float) * n);
    ks_rank_loss_backward_bf16(ds, score, y, cand, b->off, ns, k_c, scale);
    cuda_ks_rank_loss_backward_bf16(d_ds, d_cs, d_y, d_cand, b->d_off, ns, k_c, scale);
    float *gds = down(d_ds, sizeof(float) * n);
    check_bf16_close("dscore", gds, ds, n, 0.01, 0.002);
    // the MLP's backward from the CPU's dscore and activations
    int *rows = xmalloc(sizeof(int) * nc), *d_rows = cuda_malloc(sizeof(int) * nc);
    int n_rows = ks_candidate_rows(rows, cand, b->off, ns, k_c);
    cuda_ks_candidate_rows(d_rows, d_cand, b->d_off, ns, k_c);
    float *d_ds2 = up(ds, sizeof(float) * n), *d_h1c = up(h1, sizeof(float) * nD), *d_h2c = up(h2, sizeof(float) * nD);
    float *g0 = xcalloc(p.n, sizeof(float)), *gc = xcalloc(p.n, sizeof(float)), *d_g = up(g0, sizeof(float) * p.n);
    ks_grads hg = grads_of(gc, N), dg = grads_of(d_g, N);
    float *scratch = xmalloc(sizeof(float) * ks_mlp_scratch_floats((int)nc, N));
    void *mw = cuda_malloc(cuda_ks_mlp_workspace_bytes((int)nc, N));
    ks_mlp_backward_bf16(&hg, &p.hp, T, h1, h2, ds, rows, n_rows, N, scratch);
    cuda_ks_mlp_backward_bf16(&dg, &p.dp, d_T, d_h1c, d_h2c, d_ds2, d_rows, (int)nc, N, mw);
    expect("mlp grads bf16 (all six)", d_g, gc, NULL, p.n, 2e-3);

    void *hp[] = {K, Q, T, h1, h2, score, gh1, gh2, gsc, sid, cand, y, gl, ds, gds, rows, g0, gc, scratch, p.h};
    for (size_t i = 0; i < sizeof(hp) / sizeof(hp[0]); i++) free(hp[i]);
    void *dp[] = {d_K, d_Q, d_T, d_h1, d_h2, d_score, d_cand, d_y, d_loss, d_cs, lw, d_ds, d_rows, d_ds2,
                  d_h1c, d_h2c, d_g, mw, p.d};
    for (size_t i = 0; i < sizeof(dp) / sizeof(dp[0]); i++) cuda_free(dp[i]);
}

static const int k_lens[] = {5, 1, 17, 3, 100, 4, 40, 1, 64, 33, 2, 130};
#define K_NSEQ ((int)(sizeof(k_lens) / sizeof(k_lens[0])))

static void test_ops_bf16(void) {
    tbatch b = make_batch(k_lens, K_NSEQ, 7);
    run_ops_bf16(&b, 16, 8, 16, 16);
    run_ops_bf16(&b, 32, 32, 96, 96);
    free_batch(&b);
}

static void test_ops(void) {
    tbatch b = make_batch(k_lens, K_NSEQ, 7);
    for (int sem = 0; sem < 2; sem++) {
        run_ops(&b, 16, 8, 16, 16, (hax_semantics)sem);    // dense K, Q; many n < k_c
        run_ops(&b, 40, 40, 56, 48, (hax_semantics)sem);   // 2 feature columns per lane, k_c > 32
        run_ops(&b, 32, 64, 96, 96, (hax_semantics)sem);   // strided, k_c > most lengths
    }
    free_batch(&b);
}

// The chunked top-k (chunks of 64 positions merged in order, then each chunk
// walked on its own) on lengths around the chunk boundaries and long ones,
// k_c below, equal to and above the chunk size: random, tie-heavy and
// constant scores, selections equal to the CPU's.
static void test_topk_chunks(void) {
    static const int lens[] = {1, 63, 64, 65, 127, 128, 129, 200, 300, 1000, 2, 700};
    static const int kcs[] = {1, 8, 33, 64, 100, 200};
    int ns = (int)(sizeof(lens) / sizeof(lens[0]));
    tbatch b = make_batch(lens, ns, 0);
    int n = b.n_tok, *d_exit = cuda_malloc(sizeof(int) * n);
    float *score = rnd((size_t)n, -1.0f, 1.0f), *ties = xmalloc(sizeof(float) * n);
    for (int kind = 0; kind < 3; kind++) {
        for (int t = 0; t < n; t++) ties[t] = kind == 0 ? score[t] : kind == 1 ? floorf(score[t] * 4.0f) : 0.5f;
        float *d_s = up(ties, sizeof(float) * n);
        for (size_t i = 0; i < sizeof(kcs) / sizeof(kcs[0]); i++) {
            int k_c = kcs[i];
            int *sel = xmalloc(sizeof(int) * (size_t)n * k_c), *d_sel = cuda_malloc(sizeof(int) * (size_t)n * k_c);
            ks_cumtopk(sel, ties, b.off, ns, k_c);
            cuda_ks_cumtopk(d_sel, d_s, b.d_off, ns, k_c);
            char what[80];
            const char *kn = kind == 0 ? "random" : kind == 1 ? "ties" : "constant";
            snprintf(what, sizeof what, "cumtopk %s, k_c %d", kn, k_c);
            expect_ints(what, d_sel, sel, (size_t)n * k_c);
            cuda_zero(d_sel, sizeof(int) * (size_t)n * k_c);  // every entry is written again
            cuda_ks_cumtopk_exit(d_sel, d_exit, d_s, b.d_off, ns, n, k_c);
            snprintf(what, sizeof what, "cumtopk (exit positions) %s, k_c %d", kn, k_c);
            expect_ints(what, d_sel, sel, (size_t)n * k_c);
            snprintf(what, sizeof what, "cumtopk (long kernels) %s, k_c %d", kn, k_c);
            expect_topk_long(what, d_sel, d_s, &b, sel, k_c);
            free(sel), cuda_free(d_sel);
        }
        cuda_free(d_s);
    }
    free(score), free(ties), cuda_free(d_exit);
    free_batch(&b);
}

// The long-sequence top-k (cuda_ks_cumtopk_long: chunks of 64, groups of
// ceil(sqrt(chunks)) chunks) on few long sequences, ragged (20000, 7000,
// 6500, 3, 1: one to 313 chunks, groups of 1 to 18), random, tie-heavy,
// constant, increasing (every key leaves k_c steps after it enters) and
// decreasing scores (the first k_c keys stay), k_c 1 to KS_LONG_MAX_KC:
// equal to the CPU's heap; the previous top-k (exit positions) too.
static void test_topk_long(void) {
    static const int lens[] = {20000, 7000, 6500, 3, 1};
    static const int kcs[] = {1, 32, 64, 100, KS_LONG_MAX_KC};
    int ns = (int)(sizeof(lens) / sizeof(lens[0]));
    tbatch b = make_batch(lens, ns, 0);
    int n = b.n_tok, *d_exit = cuda_malloc(sizeof(int) * n);
    float *score = rnd((size_t)n, -1.0f, 1.0f), *s = xmalloc(sizeof(float) * n);
    const char *names[5] = {"random", "ties", "constant", "increasing", "decreasing"};
    for (int kind = 0; kind < 5; kind++) {
        for (int q = 0; q < ns; q++)
            for (int t = 0; t < lens[q]; t++) {
                int g = b.off[q] + t;
                s[g] = kind == 0 ? score[g] : kind == 1 ? floorf(score[g] * 4.0f) : kind == 2 ? 0.5f
                       : kind == 3 ? (float)t : -(float)t;
            }
        float *d_s = up(s, sizeof(float) * n);
        for (size_t i = 0; i < sizeof(kcs) / sizeof(kcs[0]); i++) {
            int k_c = kcs[i];
            if (k_c > 100 && kind != 0) continue;  // the largest k_c once (its CPU heap is slow)
            int *sel = xmalloc(sizeof(int) * (size_t)n * k_c), *d_sel = cuda_malloc(sizeof(int) * (size_t)n * k_c);
            ks_cumtopk(sel, s, b.off, ns, k_c);
            char what[80];
            snprintf(what, sizeof what, "cumtopk (long kernels) %s, k_c %d", names[kind], k_c);
            expect_topk_long(what, d_sel, d_s, &b, sel, k_c);
            cuda_zero(d_sel, sizeof(int) * (size_t)n * k_c);
            cuda_ks_cumtopk_exit(d_sel, d_exit, d_s, b.d_off, ns, n, k_c);
            snprintf(what, sizeof what, "cumtopk (exit positions) %s, k_c %d", names[kind], k_c);
            expect_ints(what, d_sel, sel, (size_t)n * k_c);
            free(sel), cuda_free(d_sel);
        }
        cuda_free(d_s);
    }
    // the long features at these lengths: the previous kernels' bits (both semantics, fp32; bf16-pure reference)
    int N = 32, ldk = N + 3, ldq = N + 5;
    float *K = rnd((size_t)n * ldk, -0.6f, 0.6f), *Q = rnd((size_t)n * ldq, -0.6f, 0.6f);
    float *d_K = up(K, sizeof(float) * n * ldk), *d_Q = up(Q, sizeof(float) * n * ldq);
    float *d_T = cuda_malloc(sizeof(float) * (size_t)n * 2 * N);
    for (int sem = 0; sem < 2; sem++) {
        cuda_ks_features(d_T, d_K, ldk, d_Q, ldq, b.d_off, ns, n, b.model_len, N, (hax_semantics)sem);
        expect_features_long(sem ? "features T, long (causal)" : "features T, long (reference)", d_T, &b, d_K, ldk,
                             d_Q, ldq, N, (hax_semantics)sem, 0, 0);
    }
    round_host(Q, (size_t)n * ldq);
    cuda_upload(d_Q, Q, sizeof(float) * n * ldq);
    cuda_ks_features_bf16(d_T, d_K, ldk, d_Q, ldq, b.d_off, ns, b.model_len, N, 1);
    expect_features_long("features T, long (bf16-pure)", d_T, &b, d_K, ldk, d_Q, ldq, N, SEMANTICS_REFERENCE, 1, 1);
    free(score), free(s), free(K), free(Q);
    cuda_free(d_exit), cuda_free(d_K), cuda_free(d_Q), cuda_free(d_T);
    free_batch(&b);
}

// ---------------------------------------------------------------- per layer

typedef struct {
    float *T, *score;
    int *sel;
    double loss;
    float *grads;
} state_out;

// Forward (with GPU-drawn candidates) + backward of the GPU state; results
// downloaded. With graph != 0 the two calls are captured and replayed.
static state_out gpu_state_run(cuda_ks_state *st, const tparams *p, const tbatch *b, const float *d_K,
                               int ldk, const float *d_Q, int ldq, const int64_t *d_sid,
                               hax_semantics sem, float scale, float *d_g, const float *g0,
                               int graph) {
    int N = st->N;
    cuda_upload(d_g, g0, sizeof(float) * p->n);
    ks_grads dg = grads_of(d_g, N);
    void *gr = NULL;
    if (graph) cuda_graph_begin();
    cuda_ks_sample_candidates(st->cand, b->d_off, b->n_seq, d_sid, st->k_c, 99, 3, 0);
    cuda_ks_forward(st, &p->dp, d_K, ldk, d_Q, ldq, b->d_off, b->n_seq, b->n_tok, b->model_len, sem,
                    st->cand);
    cuda_ks_backward(st, &p->dp, &dg, scale);
    if (graph) {
        gr = cuda_graph_end();
        cuda_graph_launch(gr);
    }
    state_out o;
    size_t nD = (size_t)b->n_tok * 2 * N;
    o.T = down(st->T, sizeof(float) * nD);
    o.score = down(st->score, sizeof(float) * b->n_tok);
    o.sel = down(st->sel, sizeof(int) * (size_t)b->n_tok * st->k_c);
    double *l = down(st->loss, sizeof(double));
    o.loss = *l;
    free(l);
    o.grads = down(d_g, sizeof(float) * p->n);
    if (gr) cuda_graph_free(gr);
    return o;
}

static void free_out(state_out *o) {
    free(o->T);
    free(o->score);
    free(o->sel);
    free(o->grads);
}

static void run_state(const tbatch *b, int N, int k_c, hax_semantics sem) {
    printf("  state: %d sequences, %d tokens, N %d, k_c %d, %s\n", b->n_seq, b->n_tok, N, k_c,
           sem_name(sem));
    int n = b->n_tok, ldk = N + 3, ldq = 2 * N, ns = b->n_seq;
    float *K = rnd((size_t)n * ldk, -0.6f, 0.6f), *Q = rnd((size_t)n * ldq, -0.6f, 0.6f);
    float *d_K = up(K, sizeof(float) * n * ldk), *d_Q = up(Q, sizeof(float) * n * ldq);
    tparams p = make_params(N, 1.0f / sqrtf(2.0f * N));
    int64_t *sid = xmalloc(sizeof(int64_t) * ns);
    for (int s = 0; s < ns; s++) sid[s] = 1000 + 3 * s;
    int64_t *d_sid = up(sid, sizeof(int64_t) * ns);
    // scale and the initial gradients keep the increments well above the
    // rounding of g0 + increment (which the increment comparison would see)
    float scale = 1.0f;

    // CPU
    ks_state cs;
    ks_state_init(&cs, n, ns, N, k_c);
    int *cand = xmalloc(sizeof(int) * (size_t)ns * k_c);
    ks_sample_candidates(cand, b->off, ns, sid, k_c, 99, 3, 0);
    float *g0 = rnd(p.n, -0.01f, 0.01f), *gc = xmalloc(sizeof(float) * p.n);
    memcpy(gc, g0, sizeof(float) * p.n);
    ks_grads hg = grads_of(gc, N);
    double loss = ks_forward(&cs, &p.hp, K, ldk, Q, ldq, b->off, ns, b->model_len, sem, cand);
    ks_backward(&cs, &p.hp, &hg, scale);

    // GPU, plain and from a graph, with the previous kernels (old = 1) and the new ones
    cuda_ks_state st;
    void *mem = cuda_malloc(cuda_ks_state_bytes(n + 5, ns + 1, N, k_c));
    cuda_ks_state_init(&st, mem, n + 5, ns + 1, N, k_c);
    float *d_g = cuda_malloc(sizeof(float) * p.n);
    size_t nD = (size_t)n * 2 * N;
    // v 2: the previous kernels, 1: the new ones, 0: the new ones with the long-sequence kernels
    state_out o[3];
    const char *vname[3] = {"new + long-sequence", "new", "previous"};
    for (int v = 2; v >= 0; v--) {
        printf("    (%s kernels)\n", vname[v]);
        st.old = v == 2, st.long_mode = v == 0 ? 2 : 0;
        o[v] = gpu_state_run(&st, &p, b, d_K, ldk, d_Q, ldq, d_sid, sem, scale, d_g, g0, 0);
        state_out *oo = &o[v];
        float *d_tmp = up(oo->score, sizeof(float) * n);
        expect("state score", d_tmp, cs.score, NULL, n, TOL_FWD);
        cuda_free(d_tmp);
        size_t bad = 0;
        for (size_t i = 0; i < (size_t)n * k_c; i++) bad += oo->sel[i] != cs.sel[i];
        printf("    %-34s %zu of %zu differ\n", "state sel (own scores)", bad, (size_t)n * k_c);
        CHECK(bad == 0, "state sel: %zu entries differ", bad);
        double el = fabs(oo->loss - loss) / fmax(fabs(loss), 1e-30);
        printf("    %-34s %.9f vs %.9f rel err %.2e\n", "state loss", oo->loss, loss, el);
        CHECK(el <= TOL_DBL, "state loss: gpu %.12g cpu %.12g", oo->loss, loss);
        d_tmp = up(oo->grads, sizeof(float) * p.n);
        expect("state mlp grads", d_tmp, gc, g0, p.n, TOL_BWD);
        cuda_free(d_tmp);

        state_out o2 = gpu_state_run(&st, &p, b, d_K, ldk, d_Q, ldq, d_sid, sem, scale, d_g, g0, 1);
        int same = memcmp(oo->T, o2.T, sizeof(float) * nD) == 0 &&
                   memcmp(oo->score, o2.score, sizeof(float) * n) == 0 &&
                   memcmp(oo->sel, o2.sel, sizeof(int) * (size_t)n * k_c) == 0 && oo->loss == o2.loss &&
                   memcmp(oo->grads, o2.grads, sizeof(float) * p.n) == 0;
        printf("    %-34s %s\n", "graph replay bit-identical", same ? "yes" : "NO");
        CHECK(same, "the graph replay differs from the plain run");
        free_out(&o2);

        // without candidates: no loss, and backward is a no-op
        cuda_upload(d_g, g0, sizeof(float) * p.n);
        ks_grads dg = grads_of(d_g, N);
        cuda_ks_forward(&st, &p.dp, d_K, ldk, d_Q, ldq, b->d_off, ns, n, b->model_len, sem, NULL);
        cuda_ks_backward(&st, &p.dp, &dg, scale);
        double *l = down(st.loss, sizeof(double));
        float *g = down(d_g, sizeof(float) * p.n);
        CHECK(*l == 0.0 && memcmp(g, g0, sizeof(float) * p.n) == 0,
              "eval forward: expected loss 0 and untouched gradients, found loss %g", *l);
        free(l);
        free(g);
    }
    // the new kernels, and the long-sequence ones, against the previous ones: the same bits
    for (int v = 1; v >= 0; v--) {
        int same = memcmp(o[v].T, o[2].T, sizeof(float) * nD) == 0 &&
                   memcmp(o[v].score, o[2].score, sizeof(float) * n) == 0 &&
                   memcmp(o[v].sel, o[2].sel, sizeof(int) * (size_t)n * k_c) == 0 &&
                   memcmp(&o[v].loss, &o[2].loss, sizeof(double)) == 0 &&
                   memcmp(o[v].grads, o[2].grads, sizeof(float) * p.n) == 0;
        printf("    %-34s %s\n", v ? "new kernels = previous, bit for bit" : "long kernels = previous, bit for bit",
               same ? "yes" : "NO");
        CHECK(same, "the %s kernels' T, scores, picks, loss or gradients differ from the previous ones", vname[v]);
    }
    for (int v = 0; v < 3; v++) free_out(&o[v]);
    ks_state_free(&cs);
    void *hp[] = {K, Q, sid, cand, g0, gc, p.h};
    for (size_t i = 0; i < sizeof(hp) / sizeof(hp[0]); i++) free(hp[i]);
    void *dp[] = {d_K, d_Q, d_sid, mem, d_g, p.d};
    for (size_t i = 0; i < sizeof(dp) / sizeof(dp[0]); i++) cuda_free(dp[i]);
}

static void test_state(void) {
    tbatch b = make_batch(k_lens, K_NSEQ, 3);
    for (int sem = 0; sem < 2; sem++) {
        run_state(&b, 16, 32, (hax_semantics)sem);
        run_state(&b, 32, 8, (hax_semantics)sem);
    }
    free_batch(&b);
}

// ---------------------------------------------------------------- paper size

static void test_paper_size(void) {
    int ns = 64, lens[64];
    for (int s = 0; s < ns; s++) lens[s] = 400 + (s * 37) % 129;  // 400..528, mean ~464
    tbatch b = make_batch(lens, ns, 0);
    int n = b.n_tok;
    for (int sem = 0; sem < 2; sem++) {
        for (int N = 16; N <= 32; N += 16) {
            int k_c = 64, ldk = N, ldq = N;
            printf("  paper size: %d sequences, %d positions, N %d, k_c %d, %s\n", ns, n, N, k_c,
                   sem_name((hax_semantics)sem));
            float *K = rnd((size_t)n * ldk, -0.6f, 0.6f), *Q = rnd((size_t)n * ldq, -0.6f, 0.6f);
            float *d_K = up(K, sizeof(float) * n * ldk), *d_Q = up(Q, sizeof(float) * n * ldq);
            tparams p = make_params(N, 1.0f / sqrtf(2.0f * N));
            int64_t *sid = xmalloc(sizeof(int64_t) * ns);
            for (int s = 0; s < ns; s++) sid[s] = 5 * s;
            int64_t *d_sid = up(sid, sizeof(int64_t) * ns);
            int *cand = xmalloc(sizeof(int) * ns * k_c);
            float *gc = xcalloc(p.n, sizeof(float));
            ks_grads hg = grads_of(gc, N);
            ks_state cs;
            ks_state_init(&cs, n, ns, N, k_c);
            double t0 = hax_now();
            ks_sample_candidates(cand, b.off, ns, sid, k_c, 5, 1, 0);
            double loss = ks_forward(&cs, &p.hp, K, ldk, Q, ldq, b.off, ns, b.model_len,
                                     (hax_semantics)sem, cand);
            double t1 = hax_now();
            ks_backward(&cs, &p.hp, &hg, 1.0f / ns);
            double t2 = hax_now();

            cuda_ks_state st;
            void *mem = cuda_malloc(cuda_ks_state_bytes(n, ns, N, k_c));
            cuda_ks_state_init(&st, mem, n, ns, N, k_c);
            float *d_g = cuda_malloc(sizeof(float) * p.n);
            ks_grads dg = grads_of(d_g, N);
            for (int var = 2; var >= 0; var--) {  // the previous kernels, the new ones, the long-sequence ones
                const char *v = var == 2 ? "old" : var == 1 ? "new" : "long";
                int old = var == 2;
                st.old = old, st.long_mode = var == 0 ? 2 : 0;
                cuda_zero(d_g, sizeof(float) * p.n);
                float ms[6] = {0};
                for (int rep = 0; rep < 11; rep++) {  // the first is a warm-up
                    int e[7];
                    e[0] = cuda_event_record();
                    cuda_ks_features(st.T, d_K, ldk, d_Q, ldq, b.d_off, ns, n, b.model_len, N, (hax_semantics)sem);
                    e[1] = cuda_event_record();
                    cuda_ks_mlp_forward(st.score, st.h1, st.h2, st.T, &p.dp, n, N);
                    e[2] = cuda_event_record();
                    if (old) cuda_ks_cumtopk(st.sel, st.score, b.d_off, ns, k_c);
                    else if (var == 1) cuda_ks_cumtopk_exit(st.sel, st.exit_at, st.score, b.d_off, ns, n, k_c);
                    else cuda_ks_cumtopk_long(st.sel, st.long_topk, st.score, b.d_off, ns, n, b.model_len, k_c);
                    e[3] = cuda_event_record();
                    cuda_ks_sample_candidates(st.cand, b.d_off, ns, d_sid, k_c, 5, 1, 0);
                    e[4] = cuda_event_record();
                    cuda_ks_forward(&st, &p.dp, d_K, ldk, d_Q, ldq, b.d_off, ns, n, b.model_len, (hax_semantics)sem,
                                    st.cand);
                    e[5] = cuda_event_record();
                    cuda_ks_backward(&st, &p.dp, &dg, 1.0f / ns);
                    e[6] = cuda_event_record();
                    if (rep == 0) {
                        cuda_zero(d_g, sizeof(float) * p.n);
                        cuda_sync();
                        continue;
                    }
                    for (int i = 0; i < 6; i++) ms[i] += cuda_event_ms(e[i], e[i + 1]) / 10;
                }
                double *l = down(st.loss, sizeof(double));
                float *g = down(d_g, sizeof(float) * p.n);
                // the gradients accumulated 10 backwards (after the zeroing)
                for (size_t i = 0; i < p.n; i++) g[i] /= 10.0f;
                double el = fabs(*l - loss) / fmax(fabs(loss), 1e-30);
                double eg = rel_err(g, gc, p.n);
                int *sel = down(st.sel, sizeof(int) * (size_t)n * k_c);
                size_t bad = 0;
                for (size_t i = 0; i < (size_t)n * k_c; i++) bad += sel[i] != cs.sel[i];
                printf("    %s kernels: selections differing from the CPU's (own scores): %zu of %zu\n", v, bad,
                       (size_t)n * k_c);
                free(sel);
                printf("    %s kernels: loss %.9f vs CPU %.9f (rel err %.1e), grads rel err %.1e\n", v, *l, loss, el,
                       eg);
                CHECK(el <= TOL_DBL && eg <= TOL_BWD, "paper size: loss err %.2e grads err %.2e", el, eg);
                printf("TIME ks features (previous)         gpu %8.3f ms\n", ms[0]);
                printf("TIME ks mlp fwd (previous)          gpu %8.3f ms\n", ms[1]);
                printf("TIME ks cumtopk %s                 gpu %8.3f ms\n", v, ms[2]);
                printf("TIME ks candidates                  gpu %8.3f ms\n", ms[3]);
                printf("TIME ks forward %s (whole, +loss)  cpu %9.3f ms  gpu %8.3f ms  %6.0fx\n", v, (t1 - t0) * 1e3,
                       ms[4], (t1 - t0) * 1e3 / ms[4]);
                printf("TIME ks backward %s                cpu %9.3f ms  gpu %8.3f ms  %6.0fx\n", v, (t2 - t1) * 1e3,
                       ms[5], (t2 - t1) * 1e3 / ms[5]);
                free(l);
                free(g);
            }
            // the new kernels' targets (+ loss) alone: one warp per candidate against the
            // shared-memory tiles (HAX_KS_TARGETS), the same bits
            double tt[2];
            unsigned char *yv[2];
            size_t ybytes = sizeof(double) * (size_t)ns * k_c;
            for (int tw = 0; tw < 2; tw++) {
                st.old = 0, st.long_mode = 0, st.targets_warp = tw;
                cuda_ks_targets_loss(&st, d_K, ldk, d_Q, ldq, st.cand, b.model_len, (hax_semantics)sem);
                int e0 = cuda_event_record();
                for (int rep = 0; rep < 10; rep++)
                    cuda_ks_targets_loss(&st, d_K, ldk, d_Q, ldq, st.cand, b.model_len, (hax_semantics)sem);
                tt[tw] = cuda_event_ms(e0, cuda_event_record()) / 10;
                yv[tw] = down(st.y, ybytes);
            }
            long ybad = 0;
            for (size_t i = 0; i < ybytes; i += sizeof(double)) ybad += memcmp(yv[0] + i, yv[1] + i, sizeof(double)) != 0;
            printf("    targets, tiles vs one warp per candidate: %ld of %d differ\n", ybad, ns * k_c);
            CHECK(ybad == 0, "paper size: targets by tiles and by warps: %ld of %d differ", ybad, ns * k_c);
            printf("TIME ks targets+loss warp %.3f ms, tile %.3f ms\n", tt[1], tt[0]);
            free(yv[0]), free(yv[1]);
            ks_state_free(&cs);
            void *hp[] = {K, Q, sid, cand, gc, p.h};
            for (size_t i = 0; i < sizeof(hp) / sizeof(hp[0]); i++) free(hp[i]);
            void *dp[] = {d_K, d_Q, d_sid, mem, d_g, p.d};
            for (size_t i = 0; i < sizeof(dp) / sizeof(dp[0]); i++) cuda_free(dp[i]);
        }
    }
    free_batch(&b);
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;  // --quick: no paper-size timings
    if (cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    cuda_init(0);
    printf("device: %s\n", cuda_device_name());
    RUN(test_ops);
    RUN(test_ops_bf16);
    RUN(test_topk_chunks);
    RUN(test_topk_long);
    RUN(test_state);
    if (!quick) RUN(test_paper_size);
    return test_summary();
}
