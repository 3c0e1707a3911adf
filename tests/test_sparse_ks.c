// test_sparse_ks.c: key selection (src/sparse/ks.h) against naive mirrors of
// the reference (sequences padded to L with zero Q/K rows, sequence-axis
// statistics), finite differences, and determinism checks.
#include <omp.h>
#include <stdint.h>

#include "src/core/common.h"
#include "src/ops/linear.h"
#include "src/io/safetensors.h"
#include "src/sparse/ks.h"
#include "ks_flat.h"
#include "test.h"

#define NN 4       // state size N of the tests (2N = 8 features)
#define DD (2 * NN)
#define L_PAD 24   // model_len

// A ragged batch: lengths 1, 7, 20, 2, 13 (1 and 2 are below k_c = 4).
static const int LENS[] = {1, 7, 20, 2, 13};
#define NSEQ 5

static int seq_off[NSEQ + 1];
static int n_tok;

static void make_batch(void) {
    seq_off[0] = 0;
    for (int s = 0; s < NSEQ; s++) seq_off[s + 1] = seq_off[s] + LENS[s];
    n_tok = seq_off[NSEQ];
}

// The flat KS parameter buffer: w1 [D,D], b1 [D], w2 [D,D], b2 [D], w3 [D], b3 [1].
#define NPARAM KS_FLAT_FLOATS(NN)
static float params[NPARAM];

static void make_params(unsigned seed) {
    test_fill(params, NPARAM, seed, 0.6f);
}

// KQ as the branch holds it: [n_tok, 2N] with K first; leading dimension 2N + 3
// to exercise the ld arguments.
#define LDKQ (2 * NN + 3)
static float *make_kq(unsigned seed) {
    float *kq = xmalloc(sizeof(float) * (size_t)n_tok * LDKQ);
    test_fill(kq, (size_t)n_tok * LDKQ, seed, 1.0f);
    return kq;
}

// ---------------------------------------------------------------- features

// Reference mirror: pad to L, cumsum over L, F.normalize over the sequence axis.
static void naive_features_ref(double *T, const float *K, const float *Q, int n) {
    double Cpad[L_PAD][NN], w2[NN] = {0};
    double c[NN] = {0};
    for (int t = 0; t < L_PAD; t++)
        for (int i = 0; i < NN; i++) {
            double q = t < n ? Q[(size_t)t * LDKQ + i] : 0.0;  // pad Q = 0
            c[i] += q;
            Cpad[t][i] = c[i];
        }
    for (int t = 0; t < L_PAD; t++)
        for (int i = 0; i < NN; i++) w2[i] += Cpad[t][i] * Cpad[t][i];
    for (int t = 0; t < n; t++)
        for (int i = 0; i < NN; i++) {
            T[t * DD + i] = K[(size_t)t * LDKQ + i];
            T[t * DD + NN + i] = Cpad[t][i] / fmax(sqrt(w2[i]), 1e-12);
        }
}

static void naive_features_causal(double *T, const float *K, const float *Q, int n) {
    double c[NN] = {0};
    for (int t = 0; t < n; t++) {
        double nrm = 0;
        for (int i = 0; i < NN; i++) {
            c[i] += Q[(size_t)t * LDKQ + i];
            nrm += c[i] * c[i];
        }
        for (int i = 0; i < NN; i++) {
            T[t * DD + i] = K[(size_t)t * LDKQ + i];
            T[t * DD + NN + i] = c[i] / fmax(sqrt(nrm), 1e-12);
        }
    }
}

static void test_features(void) {
    make_batch();
    float *kq = make_kq(11);
    // One sequence with Q = 0 everywhere: the 1e-12 floor must give TQ = 0.
    for (int t = seq_off[3]; t < seq_off[4]; t++)
        for (int i = 0; i < NN; i++) kq[(size_t)t * LDKQ + NN + i] = 0.0f;
    float *T = xmalloc(sizeof(float) * (size_t)n_tok * DD);
    double *Tn = xmalloc(sizeof(double) * L_PAD * DD);
    for (int sem = 0; sem < 2; sem++) {
        ks_features(T, kq, LDKQ, kq + NN, LDKQ, seq_off, NSEQ, L_PAD, NN, (hax_semantics)sem);
        double worst = 0;
        for (int s = 0; s < NSEQ; s++) {
            int o = seq_off[s], n = LENS[s];
            const float *K = kq + (size_t)o * LDKQ, *Q = K + NN;
            if (sem == SEMANTICS_REFERENCE) naive_features_ref(Tn, K, Q, n);
            else naive_features_causal(Tn, K, Q, n);
            for (int j = 0; j < n * DD; j++) {
                double e = fabs(T[(size_t)o * DD + j] - Tn[j]) / (fabs(Tn[j]) + 1e-6);
                if (e > worst) worst = e;
            }
        }
        CHECK(worst < 1e-6, "semantics %d: features vs naive rel err %.3g", sem, worst);
    }
    // The two semantics differ (the pad term and the per-vector norm).
    float *T2 = xmalloc(sizeof(float) * (size_t)n_tok * DD);
    ks_features(T, kq, LDKQ, kq + NN, LDKQ, seq_off, NSEQ, L_PAD, NN, SEMANTICS_REFERENCE);
    ks_features(T2, kq, LDKQ, kq + NN, LDKQ, seq_off, NSEQ, L_PAD, NN, SEMANTICS_CAUSAL);
    CHECK(rel_err(T, T2, (size_t)n_tok * DD) > 1e-2, "semantics should differ");
    // Reference semantics depend on L (padding dependence), causal do not.
    ks_features(T2, kq, LDKQ, kq + NN, LDKQ, seq_off, NSEQ, L_PAD + 5, NN, SEMANTICS_REFERENCE);
    CHECK(rel_err(T, T2, (size_t)n_tok * DD) > 1e-3, "reference features should depend on L");
    free(T);
    free(T2);
    free(Tn);
    free(kq);
}

// ---------------------------------------------------------------- MLP

static double relu_d(double x) { return x > 0 ? x : 0; }

// Double-precision MLP on rows 0..n-1 of T.
static void naive_mlp(double *score, const double *T, const float *buf, int n) {
    ks_params p = ks_flat_params(buf, NN);
    for (int t = 0; t < n; t++) {
        double h1[DD], h2[DD];
        for (int o = 0; o < DD; o++) {
            double a = p.b1[o];
            for (int i = 0; i < DD; i++) a += (double)p.w1[o * DD + i] * T[(size_t)t * DD + i];
            h1[o] = relu_d(a);
        }
        for (int o = 0; o < DD; o++) {
            double a = p.b2[o];
            for (int i = 0; i < DD; i++) a += (double)p.w2[o * DD + i] * h1[i];
            h2[o] = relu_d(a);
        }
        double a = p.b3[0];
        for (int i = 0; i < DD; i++) a += (double)p.w3[i] * h2[i];
        score[t] = a;
    }
}

// Finite-difference step: a power of two, so that x +- h is exact in float
// for |x| < 256, and small, so that no ReLU kink is crossed.
#define FD_H (1.0f / 65536.0f)

typedef struct {
    const double *T;
    const float *dscore;
    int n;
} mlp_ctx;

static double mlp_loss(void *vctx) {
    mlp_ctx *c = vctx;
    double *s = xmalloc(sizeof(double) * c->n), l = 0;
    naive_mlp(s, c->T, params, c->n);
    for (int t = 0; t < c->n; t++) l += c->dscore[t] * s[t];
    free(s);
    return l;
}

static void test_mlp(void) {
    make_batch();
    make_params(21);
    float *T = xmalloc(sizeof(float) * (size_t)n_tok * DD);
    test_fill(T, (size_t)n_tok * DD, 22, 1.0f);
    float *h1 = xmalloc(sizeof(float) * (size_t)n_tok * DD), *h2 = xmalloc(sizeof(float) * (size_t)n_tok * DD);
    float *score = xmalloc(sizeof(float) * n_tok);
    double *sn = xmalloc(sizeof(double) * n_tok);
    ks_params p = ks_flat_params(params, NN);
    ks_mlp_forward(score, h1, h2, T, &p, n_tok, NN);
    double *Td = xmalloc(sizeof(double) * (size_t)n_tok * DD);
    for (int j = 0; j < n_tok * DD; j++) Td[j] = T[j];
    naive_mlp(sn, Td, params, n_tok);
    double worst = 0, maxs = 0;
    int live = 0;
    for (int t = 0; t < n_tok; t++) {
        worst = fmax(worst, fabs(score[t] - sn[t]));
        maxs = fmax(maxs, fabs(sn[t]));
    }
    for (int j = 0; j < n_tok * DD; j++) live += h2[j] > 0;
    CHECK(worst <= 1e-6 * maxs, "MLP forward vs double: %.3g (max |s| %.3g)", worst, maxs);
    CHECK(live > n_tok * DD / 5 && live < n_tok * DD, "test inputs should keep ReLUs mixed (%d live)", live);

    // dscore non-zero only at every third row; backward over those rows only.
    float *dscore = xcalloc(n_tok, sizeof(float));
    int *rows = xmalloc(sizeof(int) * n_tok), n_rows = 0;
    for (int t = 0; t < n_tok; t += 3) {
        rows[n_rows++] = t;
        dscore[t] = 0.5f + 0.1f * (float)(t % 7) - 0.4f * (float)(t % 2);
    }
    float *grad = xcalloc(NPARAM, sizeof(float)), *grad_all = xcalloc(NPARAM, sizeof(float));
    float *scratch = xmalloc(sizeof(float) * ks_mlp_scratch_floats(n_tok, NN));
    ks_grads g = ks_flat_grads(grad, NN), ga = ks_flat_grads(grad_all, NN);
    ks_mlp_backward(&g, &p, T, h1, h2, dscore, rows, n_rows, NN, scratch);
    ks_mlp_backward(&ga, &p, T, h1, h2, dscore, NULL, n_tok, NN, scratch);
    CHECK(rel_err(grad, grad_all, NPARAM) < 1e-6, "row subset vs all rows: %.3g", rel_err(grad, grad_all, NPARAM));
    mlp_ctx c = {Td, dscore, n_tok};
    double fd = fd_check(params, NPARAM, grad, mlp_loss, &c, FD_H, NPARAM, 1e-4);
    CHECK(fd < 1e-5, "MLP backward vs finite differences: %.3g", fd);
    // Accumulation: a second backward doubles the gradients.
    float *grad2 = xmalloc(sizeof(float) * NPARAM);
    memcpy(grad2, grad, sizeof(float) * NPARAM);
    ks_mlp_backward(&g, &p, T, h1, h2, dscore, rows, n_rows, NN, scratch);
    for (int i = 0; i < NPARAM; i++) grad2[i] *= 2.0f;
    CHECK(rel_err(grad, grad2, NPARAM) < 1e-6, "backward must accumulate");
    free(T); free(Td); free(h1); free(h2); free(score); free(sn); free(dscore); free(rows);
    free(grad); free(grad_all); free(grad2); free(scratch);
}

// ---------------------------------------------------------------- cumulative top-k

static const float *cmp_score;
static int cmp_best_first(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (cmp_score[i] != cmp_score[j]) return cmp_score[i] > cmp_score[j] ? -1 : 1;
    return i - j;
}
static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static void test_cumtopk(void) {
    static const int lens[] = {1, 2, 7, 20, 50, 3};
    int ns = 6, off[7] = {0};
    for (int s = 0; s < ns; s++) off[s + 1] = off[s] + lens[s];
    int nt = off[ns];
    float *score = xmalloc(sizeof(float) * nt);
    int *idx = xmalloc(sizeof(int) * nt);
    for (int variant = 0; variant < 2; variant++) {
        // variant 0: few distinct values (many ties); 1: continuous values.
        test_fill(score, nt, 31 + variant, 1.0f);
        if (variant == 0)
            for (int t = 0; t < nt; t++) score[t] = floorf(score[t] * 2.5f);
        static const int kcs[] = {1, 3, 4, 8, 64};
        for (int ki = 0; ki < 5; ki++) {
            int k = kcs[ki];
            int *sel = xmalloc(sizeof(int) * (size_t)nt * k);
            ks_cumtopk(sel, score, off, ns, k);
            int bad = 0;
            for (int s = 0; s < ns; s++) {
                cmp_score = score + off[s];
                for (int t = 0; t < lens[s]; t++) {
                    for (int j = 0; j <= t; j++) idx[j] = j;
                    qsort(idx, t + 1, sizeof(int), cmp_best_first);
                    int m = t + 1 < k ? t + 1 : k;
                    qsort(idx, m, sizeof(int), cmp_int);
                    const int *row = sel + (size_t)(off[s] + t) * k;
                    for (int i = 0; i < k; i++)
                        if (row[i] != (i < m ? idx[i] : -1)) bad++;
                }
            }
            CHECK(bad == 0, "variant %d k_c %d: %d entries differ from the naive sort", variant, k, bad);
            free(sel);
        }
    }
    free(score);
    free(idx);
}

// ---------------------------------------------------------------- candidates

static void test_candidates(void) {
    enum { NS = 6, K = 4 };
    static const int lens[NS] = {1, 3, 4, 9, 20, 57};
    int off[NS + 1] = {0};
    int64_t ids[NS];
    for (int s = 0; s < NS; s++) {
        off[s + 1] = off[s] + lens[s];
        ids[s] = 1000 + 7 * s;
    }
    int a[NS * K], b[NS * K];
    ks_sample_candidates(a, off, NS, ids, K, 42, 5, 1);
    ks_sample_candidates(b, off, NS, ids, K, 42, 5, 1);
    CHECK(memcmp(a, b, sizeof(a)) == 0, "same key must give the same candidates");
    // Rank-count independence: the last three sequences alone (another rank).
    int off2[4] = {0, lens[3], lens[3] + lens[4], lens[3] + lens[4] + lens[5]};
    ks_sample_candidates(b, off2, 3, ids + 3, K, 42, 5, 1);
    CHECK(memcmp(a + 3 * K, b, sizeof(int) * 3 * K) == 0, "candidates must not depend on the batch split");
    int bad = 0;
    for (int s = 0; s < NS; s++) {
        int m = lens[s] < K ? lens[s] : K;
        for (int i = 0; i < K; i++) {
            int v = a[s * K + i];
            if (i < m && (v < 0 || v >= lens[s] || (i > 0 && v <= a[s * K + i - 1]))) bad++;
            if (i >= m && v != -1) bad++;
        }
        if (lens[s] <= K)
            for (int i = 0; i < m; i++) bad += a[s * K + i] != i;
    }
    CHECK(bad == 0, "%d candidates out of range, repeated, unsorted or badly padded", bad);
    // Another step or layer draws other candidates (for the long sequences).
    ks_sample_candidates(b, off, NS, ids, K, 42, 6, 1);
    CHECK(memcmp(a + 4 * K, b + 4 * K, sizeof(int) * 2 * K) != 0, "step must change the draw");
    ks_sample_candidates(b, off, NS, ids, K, 42, 5, 0);
    CHECK(memcmp(a + 4 * K, b + 4 * K, sizeof(int) * 2 * K) != 0, "layer must change the draw");
    // Uniformity: 4000 samples of length 20, k_c 5: each position ~1000 times,
    // and each of the 20 positions as the smallest pick with the right law.
    enum { NU = 4000, LU = 20, KU = 5 };
    int *offu = xmalloc(sizeof(int) * (NU + 1));
    int64_t *idu = xmalloc(sizeof(int64_t) * NU);
    int *cu = xmalloc(sizeof(int) * NU * KU);
    for (int s = 0; s <= NU; s++) offu[s] = s * LU;
    for (int s = 0; s < NU; s++) idu[s] = s;
    ks_sample_candidates(cu, offu, NU, idu, KU, 7, 0, 0);
    int count[LU] = {0};
    for (int i = 0; i < NU * KU; i++) count[cu[i]]++;
    double chi2 = 0, expect = (double)NU * KU / LU;
    for (int j = 0; j < LU; j++) chi2 += (count[j] - expect) * (count[j] - expect) / expect;
    // 19 degrees of freedom: P(chi2 > 45) < 1e-3.
    CHECK(chi2 < 45, "position frequencies not uniform: chi2 %.1f", chi2);
    // Pairs: P(0 and 1 both chosen) = (5*4)/(20*19).
    int both = 0;
    for (int s = 0; s < NU; s++) both += cu[s * KU] == 0 && cu[s * KU + 1] == 1;
    double pe = NU * 20.0 / 380.0;
    CHECK(fabs(both - pe) < 4 * sqrt(pe), "pair frequency %d, expected %.0f", both, pe);
    free(offu); free(idu); free(cu);
}

// ---------------------------------------------------------------- ranking loss

// Reference mirror of one sequence: pad Q, K to L with zeros, y over all L
// queries t >= I (where(sid >= idx, sigmoid, 0).sum), BCE written as the
// log-likelihood, mean over m^2 pairs. Causal: the sum stops at n.
static double naive_rank(double *y, const double *score, const float *K, const float *Q, int n,
                         const int *I, int m, int causal) {
    int Lq = causal ? n : L_PAD;
    for (int a = 0; a < m; a++) {
        double sum = 0;
        for (int t = 0; t < Lq; t++) {
            double dot = 0;
            for (int i = 0; i < NN; i++) {
                double q = t < n ? Q[(size_t)t * LDKQ + i] : 0.0;
                dot += q * K[(size_t)I[a] * LDKQ + i];
            }
            if (t >= I[a]) sum += 1.0 / (1.0 + exp(-dot));
        }
        y[a] = sum;
    }
    double l = 0;
    for (int a = 0; a < m; a++)
        for (int b = 0; b < m; b++) {
            double T = ((y[a] > y[b]) + (y[a] >= y[b])) / 2.0;
            double P = (double)score[I[a]] - score[I[b]];
            double sp = 1.0 / (1.0 + exp(-P));
            l -= T * log(sp) + (1 - T) * log(1 - sp);
        }
    return l / ((double)m * m);
}

static void test_rank_loss_vs_naive(void) {
    make_batch();
    enum { K = 4 };
    float *kq = make_kq(41);
    float *score = xmalloc(sizeof(float) * n_tok);
    test_fill(score, n_tok, 42, 2.0f);
    double *sd = xmalloc(sizeof(double) * n_tok);
    for (int t = 0; t < n_tok; t++) sd[t] = score[t];
    int cand[NSEQ * K];
    int64_t ids[NSEQ] = {3, 1, 4, 1000, 5};
    ks_sample_candidates(cand, seq_off, NSEQ, ids, K, 9, 2, 0);
    double y[NSEQ * K], yn[K];
    for (int sem = 0; sem < 2; sem++) {
        double loss = ks_rank_loss_forward(y, score, kq, LDKQ, kq + NN, LDKQ, cand, seq_off, NSEQ,
                                           L_PAD, NN, K, (hax_semantics)sem);
        double ln = 0, ye = 0;
        for (int s = 0; s < NSEQ; s++) {
            int o = seq_off[s], n = LENS[s], m = n < K ? n : K;
            ln += naive_rank(yn, sd + o, kq + (size_t)o * LDKQ, kq + (size_t)o * LDKQ + NN, n,
                             cand + s * K, m, sem == SEMANTICS_CAUSAL);
            for (int a = 0; a < m; a++) ye = fmax(ye, fabs(y[s * K + a] - yn[a]) / fabs(yn[a]));
        }
        CHECK(fabs(loss - ln) < 1e-10 * fabs(ln), "semantics %d: loss %.12g vs naive %.12g", sem, loss, ln);
        CHECK(ye < 1e-12, "semantics %d: targets vs naive rel err %.3g", sem, ye);
    }
    // Candidate order does not matter (golden ks_selected_idx is in topk order).
    int rev[NSEQ * K];
    for (int s = 0; s < NSEQ; s++) {
        int m = LENS[s] < K ? LENS[s] : K;
        for (int a = 0; a < K; a++) rev[s * K + a] = a < m ? cand[s * K + m - 1 - a] : -1;
    }
    double l1 = ks_rank_loss_forward(y, score, kq, LDKQ, kq + NN, LDKQ, cand, seq_off, NSEQ, L_PAD,
                                     NN, K, SEMANTICS_REFERENCE);
    double l2 = ks_rank_loss_forward(y, score, kq, LDKQ, kq + NN, LDKQ, rev, seq_off, NSEQ, L_PAD,
                                     NN, K, SEMANTICS_REFERENCE);
    CHECK(fabs(l1 - l2) < 1e-12 * fabs(l1), "candidate order changed the loss: %.15g vs %.15g", l1, l2);
    // A one-candidate sequence: only the diagonal (target 0.5), loss log 2.
    double y1[K];
    int c1[K] = {0, -1, -1, -1}, off1[2] = {0, 1};
    double l1s = ks_rank_loss_forward(y1, score, kq, LDKQ, kq + NN, LDKQ, c1, off1, 1, L_PAD, NN, K,
                                      SEMANTICS_REFERENCE);
    CHECK(fabs(l1s - log(2.0)) < 1e-15, "a single candidate gives log 2, found %.17g", l1s);
    free(kq);
    free(score);
    free(sd);
}

typedef struct {
    const float *kq;
    float *score;
    const int *cand;
    double *y;
    hax_semantics sem;
} rank_ctx;

static double rank_loss_fn(void *vc) {
    rank_ctx *c = vc;
    return ks_rank_loss_forward(c->y, c->score, c->kq, LDKQ, c->kq + NN, LDKQ, c->cand, seq_off,
                                NSEQ, L_PAD, NN, 4, c->sem);
}

static void test_rank_loss_backward(void) {
    make_batch();
    enum { K = 4 };
    float *kq = make_kq(51);
    float *score = xmalloc(sizeof(float) * n_tok), *dscore = xcalloc(n_tok, sizeof(float));
    test_fill(score, n_tok, 52, 2.0f);
    int cand[NSEQ * K];
    int64_t ids[NSEQ] = {10, 11, 12, 13, 14};
    ks_sample_candidates(cand, seq_off, NSEQ, ids, K, 3, 0, 1);
    double y[NSEQ * K];
    for (int sem = 0; sem < 2; sem++) {
        rank_ctx c = {kq, score, cand, y, (hax_semantics)sem};
        rank_loss_fn(&c);
        memset(dscore, 0, sizeof(float) * n_tok);
        ks_rank_loss_backward(dscore, score, y, cand, seq_off, NSEQ, K, 1.0f);
        double fd = fd_check(score, n_tok, dscore, rank_loss_fn, &c, 1e-3f, n_tok, 1e-6);
        CHECK(fd < 1e-4, "semantics %d: ranking loss backward vs FD: %.3g", sem, fd);
        // The scale multiplies, and the call accumulates.
        float *d2 = xmalloc(sizeof(float) * n_tok);
        memcpy(d2, dscore, sizeof(float) * n_tok);
        ks_rank_loss_backward(dscore, score, y, cand, seq_off, NSEQ, K, 0.5f);
        for (int t = 0; t < n_tok; t++) d2[t] *= 1.5f;
        CHECK(rel_err(dscore, d2, n_tok) < 1e-6, "scale / accumulation");
        free(d2);
    }
    free(kq);
    free(score);
    free(dscore);
}

// ---------------------------------------------------------------- per layer

typedef struct {
    const float *kq;
    const int *cand;
    hax_semantics sem;
} layer_ctx;

// The whole layer loss in double, from the naive mirrors.
static double layer_loss_naive(void *vc) {
    layer_ctx *c = vc;
    double T[L_PAD * DD], sc[L_PAD], y[4], l = 0;
    for (int s = 0; s < NSEQ; s++) {
        int o = seq_off[s], n = LENS[s], m = n < 4 ? n : 4;
        const float *K = c->kq + (size_t)o * LDKQ, *Q = K + NN;
        if (c->sem == SEMANTICS_REFERENCE) naive_features_ref(T, K, Q, n);
        else naive_features_causal(T, K, Q, n);
        naive_mlp(sc, T, params, n);
        l += naive_rank(y, sc, K, Q, n, c->cand + 4 * s, m, c->sem == SEMANTICS_CAUSAL);
    }
    return l;
}

// Full chain (features, MLP, loss; ks_forward/ks_backward) vs FD of the naive
// double-precision chain on the MLP parameters.
static void test_layer_fd(void) {
    make_batch();
    make_params(61);
    float *kq = make_kq(62);
    int cand[NSEQ * 4];
    int64_t ids[NSEQ] = {0, 1, 2, 3, 4};
    ks_sample_candidates(cand, seq_off, NSEQ, ids, 4, 1, 0, 0);
    ks_state st;
    ks_state_init(&st, n_tok, NSEQ, NN, 4);
    for (int sem = 0; sem < 2; sem++) {
        layer_ctx c = {kq, cand, (hax_semantics)sem};
        float *grad = xcalloc(NPARAM, sizeof(float));
        ks_grads g = ks_flat_grads(grad, NN);
        ks_params p = ks_flat_params(params, NN);
        double l = ks_forward(&st, &p, kq, LDKQ, kq + NN, LDKQ, seq_off, NSEQ, L_PAD,
                              (hax_semantics)sem, cand);
        double ln = layer_loss_naive(&c);
        CHECK(fabs(l - ln) < 1e-6 * fabs(ln), "semantics %d: layer loss %.10g vs naive %.10g", sem, l, ln);
        ks_backward(&st, &p, &g, 1.0f);
        double gn = 0;
        for (int i = 0; i < NPARAM; i++) gn += fabs(grad[i]);
        CHECK(gn > 1e-3, "gradient should not vanish (%.3g)", gn);
        // The ranking loss is invariant to a common shift of the scores: d/db3 = 0.
        CHECK(fabs(g.b3[0]) < 1e-6, "db3 should be ~0, found %.3g", g.b3[0]);
        double fd = fd_check(params, NPARAM, grad, layer_loss_naive, &c, FD_H, NPARAM, 1e-3);
        CHECK(fd < 1e-4, "semantics %d: layer backward vs FD: %.3g", sem, fd);
        free(grad);
    }
    ks_state_free(&st);
    free(kq);
}

typedef struct {
    float score[256];
    int sel[256 * 4];
    double y[NSEQ * 4];
    double loss;
    float grad[NPARAM];
} layer_out;

static void run_layer(layer_out *out, ks_state *st, const float *kq, const int *off, int ns,
                      const int *cand, hax_semantics sem) {
    ks_params p = ks_flat_params(params, NN);
    ks_grads g = ks_flat_grads(out->grad, NN);
    memset(out->grad, 0, sizeof(out->grad));
    out->loss = ks_forward(st, &p, kq, LDKQ, kq + NN, LDKQ, off, ns, L_PAD, sem, cand);
    ks_backward(st, &p, &g, 0.25f);
    int nt = off[ns];
    memcpy(out->score, st->score, sizeof(float) * nt);
    memcpy(out->sel, st->sel, sizeof(int) * nt * 4);
    memcpy(out->y, st->y, sizeof(double) * ns * 4);
}

static void test_packed_and_threads(void) {
    make_batch();
    make_params(71);
    float *kq = make_kq(72);
    int cand[NSEQ * 4];
    int64_t ids[NSEQ] = {5, 6, 7, 8, 9};
    ks_sample_candidates(cand, seq_off, NSEQ, ids, 4, 2, 1, 1);
    ks_state st;
    ks_state_init(&st, n_tok, NSEQ, NN, 4);
    static layer_out a, b, one;
    for (int sem = 0; sem < 2; sem++) {
        run_layer(&a, &st, kq, seq_off, NSEQ, cand, (hax_semantics)sem);
        // One sequence at a time.
        double loss = 0;
        float gsum[NPARAM] = {0};
        int bad = 0;
        for (int s = 0; s < NSEQ; s++) {
            int o = seq_off[s], off1[2] = {0, LENS[s]};
            run_layer(&one, &st, kq + (size_t)o * LDKQ, off1, 1, cand + s * 4, (hax_semantics)sem);
            loss += one.loss;
            for (int i = 0; i < NPARAM; i++) gsum[i] += one.grad[i];
            bad += memcmp(one.score, a.score + o, sizeof(float) * LENS[s]) != 0;
            bad += memcmp(one.sel, a.sel + o * 4, sizeof(int) * LENS[s] * 4) != 0;
            bad += memcmp(one.y, a.y + s * 4, sizeof(double) * 4) != 0;
        }
        CHECK(bad == 0, "semantics %d: %d sequences differ packed vs alone (score/sel/y)", sem, bad);
        CHECK(fabs(loss - a.loss) <= 1e-12 * fabs(loss), "packed loss %.15g vs alone %.15g", a.loss, loss);
        CHECK(rel_err(a.grad, gsum, NPARAM) < 1e-5, "packed grads vs alone: %.3g", rel_err(a.grad, gsum, NPARAM));
        // 1 vs 2 threads (OpenMP and BLAS), bit-identical.
        omp_set_num_threads(1);
        hax_blas_set_threads(1);
        run_layer(&a, &st, kq, seq_off, NSEQ, cand, (hax_semantics)sem);
        omp_set_num_threads(2);
        hax_blas_set_threads(2);
        run_layer(&b, &st, kq, seq_off, NSEQ, cand, (hax_semantics)sem);
        CHECK(memcmp(&a, &b, sizeof(a)) == 0, "semantics %d: 1 vs 2 threads differ", sem);
    }
    // Eval (no candidates): no loss, backward is a no-op.
    ks_params p = ks_flat_params(params, NN);
    float grad[NPARAM] = {0};
    ks_grads g = ks_flat_grads(grad, NN);
    double l = ks_forward(&st, &p, kq, LDKQ, kq + NN, LDKQ, seq_off, NSEQ, L_PAD, SEMANTICS_REFERENCE, NULL);
    ks_backward(&st, &p, &g, 1.0f);
    int nz = 0;
    for (int i = 0; i < NPARAM; i++) nz += grad[i] != 0.0f;
    CHECK(l == 0.0 && nz == 0, "eval must have no loss (%g) and no gradient (%d)", l, nz);
    ks_state_free(&st);
    free(kq);
}

// Paper-like sizes (N 16, k_c 32, a few thousand tokens), where OpenMP and
// BLAS really split the work: 1 vs 2 threads bit-identical.
static void run_big(float *score, int *sel, double *y, double *loss, float *grad, ks_state *st,
                    const float *par, const float *kq, const int *off, int ns, const int *cand) {
    enum { N = 16, D = 32 };
    ks_params p = ks_flat_params(par, N);
    ks_grads g = ks_flat_grads(grad, N);
    *loss = ks_forward(st, &p, kq, D, kq + N, D, off, ns, 1057, SEMANTICS_REFERENCE, cand);
    ks_backward(st, &p, &g, 0.01f);
    memcpy(score, st->score, sizeof(float) * off[ns]);
    memcpy(sel, st->sel, sizeof(int) * off[ns] * 32);
    memcpy(y, st->y, sizeof(double) * ns * 32);
}

static void test_threads_large(void) {
    enum { NS = 12, N = 16, D = 32, K = 32, NP = KS_FLAT_FLOATS(N) };
    int off[NS + 1] = {0};
    int64_t ids[NS];
    for (int s = 0; s < NS; s++) {
        off[s + 1] = off[s] + 111 + (s * 157) % 700;
        ids[s] = 5000 + s;
    }
    int nt = off[NS];
    float *kq = xmalloc(sizeof(float) * nt * D), par[NP];
    test_fill(kq, (size_t)nt * D, 81, 1.0f);
    test_fill(par, NP, 82, 0.25f);
    int cand[NS * K];
    ks_sample_candidates(cand, off, NS, ids, K, 3, 7, 1);
    ks_state st;
    ks_state_init(&st, nt, NS, N, K);
    float *sc[2], *gr[2];
    int *sel[2];
    double y[2][NS * K], loss[2];
    for (int r = 0; r < 2; r++) {
        sc[r] = xmalloc(sizeof(float) * nt);
        sel[r] = xmalloc(sizeof(int) * nt * K);
        gr[r] = xcalloc(NP, sizeof(float));
        omp_set_num_threads(r + 1);
        hax_blas_set_threads(r + 1);
        run_big(sc[r], sel[r], y[r], &loss[r], gr[r], &st, par, kq, off, NS, cand);
    }
    CHECK(memcmp(sc[0], sc[1], sizeof(float) * nt) == 0, "scores differ between 1 and 2 threads");
    CHECK(memcmp(sel[0], sel[1], sizeof(int) * nt * K) == 0, "selections differ");
    CHECK(memcmp(y[0], y[1], sizeof(y[0])) == 0 && loss[0] == loss[1], "targets / loss differ");
    CHECK(memcmp(gr[0], gr[1], sizeof(float) * NP) == 0, "gradients differ");
    for (int r = 0; r < 2; r++) {
        free(sc[r]);
        free(sel[r]);
        free(gr[r]);
    }
    ks_state_free(&st);
    free(kq);
}

// ---------------------------------------------------------------- goldens

// The golden files' own key scores through ks_cumtopk must give the golden
// allowed keys on real rows (equal for key_selection, a subset for HAX), and
// the golden scores and targets through ks_rank_loss_pairs the golden
// per-layer gate loss (the reference's mean over B k^2 pairs).
static void check_golden_case(const char *name, int ks_only) {
    char path[512], key[128];
    snprintf(path, sizeof(path), "%s/%s.safetensors", test_golden_dir(), name);
    char err[512];
    st_file *f = st_load(path, err, sizeof(err));
    CHECK(f != NULL, "%s", err);
    if (!f) return;
    const st_tensor *ids = st_find(f, "input_ids");
    int B = (int)ids->shape[0], L = (int)ids->shape[1] - 1;
    int64_t *tok = xmalloc(sizeof(int64_t) * (size_t)B * (L + 1));
    st_tensor_to_i64(ids, tok);
    int *off = xmalloc(sizeof(int) * (B + 1));
    off[0] = 0;
    for (int b = 0; b < B; b++) {
        int n = 0;
        while (n < L && tok[(size_t)b * (L + 1) + n] != 3) n++;  // inputs = ids[:, :-1], pad 3
        off[b + 1] = off[b] + n;
    }
    float *full = xmalloc(sizeof(float) * (size_t)B * L), *score = xmalloc(sizeof(float) * off[B]);
    for (int li = 0;; li++) {
        snprintf(key, sizeof(key), "dbg.layers.%d.key_score", li);
        const st_tensor *ts = st_find(f, key);
        if (!ts) {
            CHECK(li > 0, "%s: no %s", name, key);
            break;
        }
        st_tensor_to_f32(ts, full);
        for (int b = 0; b < B; b++)
            memcpy(score + off[b], full + (size_t)b * L, sizeof(float) * (off[b + 1] - off[b]));
        snprintf(key, sizeof(key), "rand.layers.%d.ks_selected_idx", li);
        const st_tensor *tsel = st_find(f, key);
        snprintf(key, sizeof(key), "dbg.layers.%d.allowed_keys", li);
        const st_tensor *tal = st_find(f, key);
        CHECK(tsel && tal, "%s layer %d: selected idx / allowed keys missing", name, li);
        if (!tsel || !tal) break;
        int k = (int)tsel->shape[1], W = (int)tal->shape[2];
        int64_t *al = xmalloc(sizeof(int64_t) * (size_t)B * L * W);
        st_tensor_to_i64(tal, al);
        int *sel = xmalloc(sizeof(int) * (size_t)off[B] * k);
        ks_cumtopk(sel, score, off, B, k);
        int bad = 0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < off[b + 1] - off[b]; t++) {
                const int *row = sel + (size_t)(off[b] + t) * k;
                const int64_t *arow = al + ((size_t)b * L + t) * W;
                for (int i = 0; i < k && row[i] >= 0; i++) {
                    int found = 0;
                    for (int j = 0; j < W; j++) found |= arow[j] == row[i];
                    bad += !found;
                }
                if (ks_only)
                    for (int j = 0; j < W; j++) bad += arow[j] != (j < k ? row[j] : -1);
            }
        CHECK(bad == 0, "%s layer %d: %d top-k entries differ from the golden allowed keys", name, li, bad);
        // Gate loss from the golden scores and targets.
        int64_t *idx = xmalloc(sizeof(int64_t) * (size_t)B * k);
        int *cand = xmalloc(sizeof(int) * (size_t)B * k);
        float *yf = xmalloc(sizeof(float) * (size_t)B * k);
        double *y = xmalloc(sizeof(double) * (size_t)B * k), gl;
        st_tensor_to_i64(tsel, idx);
        for (int i = 0; i < B * k; i++) cand[i] = (int)idx[i];
        snprintf(key, sizeof(key), "dbg.layers.%d.ks_selected_attn", li);
        st_get_f32(f, key, yf, ST_SHAPE(B, k));
        for (int i = 0; i < B * k; i++) y[i] = yf[i];
        snprintf(key, sizeof(key), "out.gate_loss.layers.%d", li);
        const st_tensor *tg = st_find(f, key);
        CHECK(tg != NULL, "%s: %s missing", name, key);
        if (tg) {
            st_tensor_to_f64(tg, &gl);
            double l = ks_rank_loss_pairs(score, y, cand, off, B, k) / B;
            CHECK(fabs(l - gl) <= 1e-6 * fabs(gl), "%s layer %d: gate loss %.10g vs golden %.10g", name, li, l, gl);
        }
        free(al); free(sel); free(idx); free(cand); free(yf); free(y);
    }
    free(tok); free(off); free(full); free(score);
    st_close(f);
}

static void test_golden(void) {
    check_golden_case("mamba_key_selection", 1);
    check_golden_case("mamba2_key_selection", 1);
    check_golden_case("mamba_sign_bin_lsh__key_selection", 0);
    check_golden_case("mamba2_sign_bin_lsh__key_selection", 0);
    check_golden_case("paper_mamba_hax", 0);
    check_golden_case("paper_mamba2_hax", 0);
}

int main(void) {
    RUN(test_features);
    RUN(test_mlp);
    RUN(test_cumtopk);
    RUN(test_candidates);
    RUN(test_rank_loss_vs_naive);
    RUN(test_rank_loss_backward);
    RUN(test_layer_fd);
    RUN(test_packed_and_threads);
    RUN(test_threads_large);
    RUN(test_golden);
    return test_summary();
}
