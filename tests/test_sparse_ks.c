// test_sparse_ks.c: key selection (src/sparse/ks.h) against naive mirrors of
// the reference (sequences padded to L with zero Q/K rows, sequence-axis
// statistics), finite differences, and determinism checks.
//
// Most tests run on one small ragged batch (ks_case: the lengths LENS
// packed, KQ and the MLP's parameters); the naive mirrors work on one
// sequence at a time, in double.
#include <omp.h>
#include <stdint.h>

#include "src/core/common.h"
#include "src/io/safetensors.h"
#include "src/sparse/ks.h"
#include "ks_flat.h"
#include "test.h"

#define NN 4       // state size N of the tests (2N = 8 features)
#define DD (2 * NN)
#define L_PAD 24   // model_len
#define KC 4       // k_c of the ranking loss
// The flat KS parameter buffer: w1 [D,D], b1 [D], w2 [D,D], b2 [D], w3 [D], b3 [1].
#define NPARAM KS_FLAT_FLOATS(NN)
// KQ as the branch holds it: [n_tok, 2N] with K first; leading dimension 2N + 3
// to exercise the ld arguments.
#define LDKQ (2 * NN + 3)

// Finite-difference step: a power of two, so that x +- h is exact in float
// for |x| < 256, and small, so that no ReLU kink is crossed.
#define FD_H (1.0f / 65536.0f)

// A ragged batch: lengths 1, 7, 20, 2, 13 (1 and 2 are below k_c = 4).
static const int LENS[] = {1, 7, 20, 2, 13};
#define NSEQ 5

// ---------------------------------------------------------------- the case

typedef struct {
    int off[NSEQ + 1], n_tok;  // LENS packed
    float *kq;                 // [n_tok, LDKQ] (case_kq)
    float params[NPARAM];      // the MLP (case_params); the FD checks perturb it
} ks_case;

static void case_init(ks_case *c) {
    memset(c, 0, sizeof *c);
    for (int s = 0; s < NSEQ; s++) c->off[s + 1] = c->off[s] + LENS[s];
    c->n_tok = c->off[NSEQ];
}

static void case_kq(ks_case *c, unsigned seed) {
    c->kq = xmalloc(sizeof(float) * (size_t)c->n_tok * LDKQ);
    test_fill(c->kq, (size_t)c->n_tok * LDKQ, seed, 1.0f);
}

static void case_params(ks_case *c, unsigned seed) { test_fill(c->params, NPARAM, seed, 0.6f); }

static void case_free(ks_case *c) { free(c->kq); }

// Sequence s's K rows (its Q rows are K + NN).
static const float *seq_k(const ks_case *c, int s) { return c->kq + (size_t)c->off[s] * LDKQ; }

// The ranking loss of the whole batch, KC candidates per sequence.
static double case_rank_loss(const ks_case *c, double *y, const float *score, const int *cand,
                             hax_semantics sem) {
    return ks_rank_loss_forward(y, score, c->kq, LDKQ, c->kq + NN, LDKQ, cand, c->off, NSEQ, L_PAD, NN, KC,
                                sem);
}

// The layer's forward (ks_forward) on sequences off[0..ns] of kq, with the
// case's parameters.
static double layer_forward(ks_state *st, const ks_case *c, const float *kq, const int *off, int ns,
                            hax_semantics sem, const int *cand) {
    ks_params p = ks_flat_params(c->params, NN);
    return ks_forward(st, &p, kq, LDKQ, kq + NN, LDKQ, off, ns, L_PAD, sem, cand);
}

// ---------------------------------------------------------------- naive mirrors

// Features, reference semantics: pad to L, cumsum over L, F.normalize over
// the sequence axis.
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

// Features, causal semantics: the running sum normalised per vector.
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

static void naive_features(double *T, const float *K, const float *Q, int n, hax_semantics sem) {
    if (sem == SEMANTICS_REFERENCE) naive_features_ref(T, K, Q, n);
    else naive_features_causal(T, K, Q, n);
}

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

// Ranking loss of one sequence: pad Q, K to L with zeros, y over all L
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

// Candidates of sequence s that count (the slots before the first -1).
static int n_cand(int s) { return LENS[s] < KC ? LENS[s] : KC; }

// ---------------------------------------------------------------- features

static void test_features(void) {
    ks_case c;
    case_init(&c);
    case_kq(&c, 11);
    // One sequence with Q = 0 everywhere: the 1e-12 floor must give TQ = 0.
    for (int t = c.off[3]; t < c.off[4]; t++)
        for (int i = 0; i < NN; i++) c.kq[(size_t)t * LDKQ + NN + i] = 0.0f;
    size_t nT = (size_t)c.n_tok * DD;
    float *T = xmalloc(sizeof(float) * nT), *T2 = xmalloc(sizeof(float) * nT);
    double *Tn = xmalloc(sizeof(double) * L_PAD * DD);
    for (int sem = 0; sem < 2; sem++) {
        ks_features(T, c.kq, LDKQ, c.kq + NN, LDKQ, c.off, NSEQ, L_PAD, NN, (hax_semantics)sem);
        double worst = 0;
        for (int s = 0; s < NSEQ; s++) {
            const float *K = seq_k(&c, s);
            naive_features(Tn, K, K + NN, LENS[s], (hax_semantics)sem);
            for (int j = 0; j < LENS[s] * DD; j++) {
                double e = fabs(T[(size_t)c.off[s] * DD + j] - Tn[j]) / (fabs(Tn[j]) + 1e-6);
                if (e > worst) worst = e;
            }
        }
        CHECK(worst < 1e-6, "semantics %d: features vs naive rel err %.3g", sem, worst);
    }
    // The two semantics differ (the pad term and the per-vector norm).
    ks_features(T, c.kq, LDKQ, c.kq + NN, LDKQ, c.off, NSEQ, L_PAD, NN, SEMANTICS_REFERENCE);
    ks_features(T2, c.kq, LDKQ, c.kq + NN, LDKQ, c.off, NSEQ, L_PAD, NN, SEMANTICS_CAUSAL);
    CHECK(rel_err(T, T2, nT) > 1e-2, "semantics should differ");
    // Reference semantics depend on L (padding dependence), causal do not.
    ks_features(T2, c.kq, LDKQ, c.kq + NN, LDKQ, c.off, NSEQ, L_PAD + 5, NN, SEMANTICS_REFERENCE);
    CHECK(rel_err(T, T2, nT) > 1e-3, "reference features should depend on L");
    free(T);
    free(T2);
    free(Tn);
    case_free(&c);
}

// ---------------------------------------------------------------- MLP

typedef struct {
    const double *T;
    const float *dscore, *params;
    int n;
} mlp_ctx;

// sum_t dscore_t score_t of the naive MLP.
static double mlp_loss(void *vctx) {
    mlp_ctx *c = vctx;
    double *s = xmalloc(sizeof(double) * c->n), l = 0;
    naive_mlp(s, c->T, c->params, c->n);
    for (int t = 0; t < c->n; t++) l += c->dscore[t] * s[t];
    free(s);
    return l;
}

static void test_mlp(void) {
    ks_case c;
    case_init(&c);
    case_params(&c, 21);
    int n = c.n_tok;
    float *T = xmalloc(sizeof(float) * (size_t)n * DD);
    test_fill(T, (size_t)n * DD, 22, 1.0f);
    float *h1 = xmalloc(sizeof(float) * (size_t)n * DD), *h2 = xmalloc(sizeof(float) * (size_t)n * DD);
    float *score = xmalloc(sizeof(float) * n);
    double *sn = xmalloc(sizeof(double) * n);
    ks_params p = ks_flat_params(c.params, NN);
    ks_mlp_forward(score, h1, h2, T, &p, n, NN);
    double *Td = xmalloc(sizeof(double) * (size_t)n * DD);
    for (int j = 0; j < n * DD; j++) Td[j] = T[j];
    naive_mlp(sn, Td, c.params, n);
    double worst = 0, maxs = 0;
    int live = 0;
    for (int t = 0; t < n; t++) {
        worst = fmax(worst, fabs(score[t] - sn[t]));
        maxs = fmax(maxs, fabs(sn[t]));
    }
    for (int j = 0; j < n * DD; j++) live += h2[j] > 0;
    CHECK(worst <= 1e-6 * maxs, "MLP forward vs double: %.3g (max |s| %.3g)", worst, maxs);
    CHECK(live > n * DD / 5 && live < n * DD, "test inputs should keep ReLUs mixed (%d live)", live);

    // dscore non-zero only at every third row; backward over those rows only.
    float *dscore = xcalloc(n, sizeof(float));
    int *rows = xmalloc(sizeof(int) * n), n_rows = 0;
    for (int t = 0; t < n; t += 3) {
        rows[n_rows++] = t;
        dscore[t] = 0.5f + 0.1f * (float)(t % 7) - 0.4f * (float)(t % 2);
    }
    float *grad = xcalloc(NPARAM, sizeof(float)), *grad_all = xcalloc(NPARAM, sizeof(float));
    float *scratch = xmalloc(sizeof(float) * ks_mlp_scratch_floats(n, NN));
    ks_grads g = ks_flat_grads(grad, NN), ga = ks_flat_grads(grad_all, NN);
    ks_mlp_backward(&g, &p, T, h1, h2, dscore, rows, n_rows, NN, scratch);
    ks_mlp_backward(&ga, &p, T, h1, h2, dscore, NULL, n, NN, scratch);
    CHECK(rel_err(grad, grad_all, NPARAM) < 1e-6, "row subset vs all rows: %.3g", rel_err(grad, grad_all, NPARAM));
    mlp_ctx x = {Td, dscore, c.params, n};
    double fd = fd_check(c.params, NPARAM, grad, mlp_loss, &x, FD_H, NPARAM, 1e-4);
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

// Higher score first, then the lower position (qsort_r with the scores).
static int cmp_best_first(const void *a, const void *b, void *score) {
    const float *sc = score;
    int i = *(const int *)a, j = *(const int *)b;
    if (sc[i] != sc[j]) return sc[i] > sc[j] ? -1 : 1;
    return i - j;
}
static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

// Entries of ks_cumtopk's rows sel [t, k] that differ from a full sort of
// every prefix (its best min(t + 1, k) positions, ascending, then -1).
static int topk_vs_sort(const int *sel, const float *score, const int *off, const int *lens, int ns, int k,
                        int *idx) {
    int bad = 0;
    for (int s = 0; s < ns; s++)
        for (int t = 0; t < lens[s]; t++) {
            for (int j = 0; j <= t; j++) idx[j] = j;
            qsort_r(idx, t + 1, sizeof(int), cmp_best_first, (void *)(score + off[s]));
            int m = t + 1 < k ? t + 1 : k;
            qsort(idx, m, sizeof(int), cmp_int);
            const int *row = sel + (size_t)(off[s] + t) * k;
            for (int i = 0; i < k; i++)
                if (row[i] != (i < m ? idx[i] : -1)) bad++;
        }
    return bad;
}

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
            int bad = topk_vs_sort(sel, score, off, lens, ns, k, idx);
            CHECK(bad == 0, "variant %d k_c %d: %d entries differ from the naive sort", variant, k, bad);
            free(sel);
        }
    }
    free(score);
    free(idx);
}

// ---------------------------------------------------------------- candidates

// Uniformity: 4000 samples of length 20, k_c 5: each position ~1000 times,
// and the pair (0, 1) with the right law.
static void check_candidates_uniform(void) {
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
    check_candidates_uniform();
}

// ---------------------------------------------------------------- ranking loss

static void test_rank_loss_vs_naive(void) {
    ks_case c;
    case_init(&c);
    case_kq(&c, 41);
    float *score = xmalloc(sizeof(float) * c.n_tok);
    test_fill(score, c.n_tok, 42, 2.0f);
    double *sd = xmalloc(sizeof(double) * c.n_tok);
    for (int t = 0; t < c.n_tok; t++) sd[t] = score[t];
    int cand[NSEQ * KC];
    int64_t ids[NSEQ] = {3, 1, 4, 1000, 5};
    ks_sample_candidates(cand, c.off, NSEQ, ids, KC, 9, 2, 0);
    double y[NSEQ * KC], yn[KC];
    for (int sem = 0; sem < 2; sem++) {
        double loss = case_rank_loss(&c, y, score, cand, (hax_semantics)sem);
        double ln = 0, ye = 0;
        for (int s = 0; s < NSEQ; s++) {
            int m = n_cand(s);
            const float *K = seq_k(&c, s);
            ln += naive_rank(yn, sd + c.off[s], K, K + NN, LENS[s], cand + s * KC, m, sem == SEMANTICS_CAUSAL);
            for (int a = 0; a < m; a++) ye = fmax(ye, fabs(y[s * KC + a] - yn[a]) / fabs(yn[a]));
        }
        CHECK(fabs(loss - ln) < 1e-10 * fabs(ln), "semantics %d: loss %.12g vs naive %.12g", sem, loss, ln);
        CHECK(ye < 1e-12, "semantics %d: targets vs naive rel err %.3g", sem, ye);
    }
    // Candidate order does not matter (golden ks_selected_idx is in topk order).
    int rev[NSEQ * KC];
    for (int s = 0; s < NSEQ; s++) {
        int m = n_cand(s);
        for (int a = 0; a < KC; a++) rev[s * KC + a] = a < m ? cand[s * KC + m - 1 - a] : -1;
    }
    double l1 = case_rank_loss(&c, y, score, cand, SEMANTICS_REFERENCE);
    double l2 = case_rank_loss(&c, y, score, rev, SEMANTICS_REFERENCE);
    CHECK(fabs(l1 - l2) < 1e-12 * fabs(l1), "candidate order changed the loss: %.15g vs %.15g", l1, l2);
    // A one-candidate sequence: only the diagonal (target 0.5), loss log 2.
    double y1[KC];
    int c1[KC] = {0, -1, -1, -1}, off1[2] = {0, 1};
    double l1s = ks_rank_loss_forward(y1, score, c.kq, LDKQ, c.kq + NN, LDKQ, c1, off1, 1, L_PAD, NN, KC,
                                      SEMANTICS_REFERENCE);
    CHECK(fabs(l1s - log(2.0)) < 1e-15, "a single candidate gives log 2, found %.17g", l1s);
    free(score);
    free(sd);
    case_free(&c);
}

typedef struct {
    const ks_case *c;
    float *score;
    const int *cand;
    double *y;
    hax_semantics sem;
} rank_ctx;

static double rank_loss_fn(void *vc) {
    rank_ctx *x = vc;
    return case_rank_loss(x->c, x->y, x->score, x->cand, x->sem);
}

static void test_rank_loss_backward(void) {
    ks_case c;
    case_init(&c);
    case_kq(&c, 51);
    int n = c.n_tok;
    float *score = xmalloc(sizeof(float) * n), *dscore = xcalloc(n, sizeof(float));
    test_fill(score, n, 52, 2.0f);
    int cand[NSEQ * KC];
    int64_t ids[NSEQ] = {10, 11, 12, 13, 14};
    ks_sample_candidates(cand, c.off, NSEQ, ids, KC, 3, 0, 1);
    double y[NSEQ * KC];
    for (int sem = 0; sem < 2; sem++) {
        rank_ctx x = {&c, score, cand, y, (hax_semantics)sem};
        rank_loss_fn(&x);
        memset(dscore, 0, sizeof(float) * n);
        ks_rank_loss_backward(dscore, score, y, cand, c.off, NSEQ, KC, 1.0f);
        double fd = fd_check(score, n, dscore, rank_loss_fn, &x, 1e-3f, n, 1e-6);
        CHECK(fd < 1e-4, "semantics %d: ranking loss backward vs FD: %.3g", sem, fd);
        // The scale multiplies, and the call accumulates.
        float *d2 = xmalloc(sizeof(float) * n);
        memcpy(d2, dscore, sizeof(float) * n);
        ks_rank_loss_backward(dscore, score, y, cand, c.off, NSEQ, KC, 0.5f);
        for (int t = 0; t < n; t++) d2[t] *= 1.5f;
        CHECK(rel_err(dscore, d2, n) < 1e-6, "scale / accumulation");
        free(d2);
    }
    free(score);
    free(dscore);
    case_free(&c);
}

// ---------------------------------------------------------------- per layer

typedef struct {
    const ks_case *c;
    const int *cand;
    hax_semantics sem;
} layer_ctx;

// The whole layer loss in double, from the naive mirrors.
static double layer_loss_naive(void *vc) {
    layer_ctx *x = vc;
    double T[L_PAD * DD], sc[L_PAD], y[KC], l = 0;
    for (int s = 0; s < NSEQ; s++) {
        int n = LENS[s];
        const float *K = seq_k(x->c, s), *Q = K + NN;
        naive_features(T, K, Q, n, x->sem);
        naive_mlp(sc, T, x->c->params, n);
        l += naive_rank(y, sc, K, Q, n, x->cand + KC * s, n_cand(s), x->sem == SEMANTICS_CAUSAL);
    }
    return l;
}

// Full chain (features, MLP, loss; ks_forward/ks_backward) vs FD of the naive
// double-precision chain on the MLP parameters.
static void test_layer_fd(void) {
    ks_case c;
    case_init(&c);
    case_params(&c, 61);
    case_kq(&c, 62);
    int cand[NSEQ * KC];
    int64_t ids[NSEQ] = {0, 1, 2, 3, 4};
    ks_sample_candidates(cand, c.off, NSEQ, ids, KC, 1, 0, 0);
    ks_state st;
    ks_state_init(&st, c.n_tok, NSEQ, NN, KC);
    for (int sem = 0; sem < 2; sem++) {
        layer_ctx x = {&c, cand, (hax_semantics)sem};
        float *grad = xcalloc(NPARAM, sizeof(float));
        ks_grads g = ks_flat_grads(grad, NN);
        ks_params p = ks_flat_params(c.params, NN);
        double l = layer_forward(&st, &c, c.kq, c.off, NSEQ, (hax_semantics)sem, cand);
        double ln = layer_loss_naive(&x);
        CHECK(fabs(l - ln) < 1e-6 * fabs(ln), "semantics %d: layer loss %.10g vs naive %.10g", sem, l, ln);
        ks_backward(&st, &p, &g, 1.0f);
        double gn = 0;
        for (int i = 0; i < NPARAM; i++) gn += fabs(grad[i]);
        CHECK(gn > 1e-3, "gradient should not vanish (%.3g)", gn);
        // The ranking loss is invariant to a common shift of the scores: d/db3 = 0.
        CHECK(fabs(g.b3[0]) < 1e-6, "db3 should be ~0, found %.3g", g.b3[0]);
        double fd = fd_check(c.params, NPARAM, grad, layer_loss_naive, &x, FD_H, NPARAM, 1e-3);
        CHECK(fd < 1e-4, "semantics %d: layer backward vs FD: %.3g", sem, fd);
        free(grad);
    }
    ks_state_free(&st);
    case_free(&c);
}

// What one layer run leaves: scores, selections, targets, loss, gradients.
typedef struct {
    float score[256];
    int sel[256 * KC];
    double y[NSEQ * KC];
    double loss;
    float grad[NPARAM];
} layer_out;

// Forward and backward (scale 0.25) of sequences off[0..ns] of kq.
static void run_layer(layer_out *out, ks_state *st, const ks_case *c, const float *kq, const int *off, int ns,
                      const int *cand, hax_semantics sem) {
    ks_params p = ks_flat_params(c->params, NN);
    ks_grads g = ks_flat_grads(out->grad, NN);
    memset(out->grad, 0, sizeof(out->grad));
    out->loss = layer_forward(st, c, kq, off, ns, sem, cand);
    ks_backward(st, &p, &g, 0.25f);
    int nt = off[ns];
    memcpy(out->score, st->score, sizeof(float) * nt);
    memcpy(out->sel, st->sel, sizeof(int) * nt * KC);
    memcpy(out->y, st->y, sizeof(double) * ns * KC);
}

// The packed batch against its sequences run one at a time: the same scores,
// selections and targets, the loss and gradients their sums.
static void check_packed_vs_alone(ks_state *st, const ks_case *c, const int *cand, hax_semantics sem) {
    static layer_out a, one;
    run_layer(&a, st, c, c->kq, c->off, NSEQ, cand, sem);
    double loss = 0;
    float gsum[NPARAM] = {0};
    int bad = 0;
    for (int s = 0; s < NSEQ; s++) {
        int o = c->off[s], off1[2] = {0, LENS[s]};
        run_layer(&one, st, c, seq_k(c, s), off1, 1, cand + s * KC, sem);
        loss += one.loss;
        for (int i = 0; i < NPARAM; i++) gsum[i] += one.grad[i];
        bad += memcmp(one.score, a.score + o, sizeof(float) * LENS[s]) != 0;
        bad += memcmp(one.sel, a.sel + o * KC, sizeof(int) * LENS[s] * KC) != 0;
        bad += memcmp(one.y, a.y + s * KC, sizeof(double) * KC) != 0;
    }
    CHECK(bad == 0, "semantics %d: %d sequences differ packed vs alone (score/sel/y)", sem, bad);
    CHECK(fabs(loss - a.loss) <= 1e-12 * fabs(loss), "packed loss %.15g vs alone %.15g", a.loss, loss);
    CHECK(rel_err(a.grad, gsum, NPARAM) < 1e-5, "packed grads vs alone: %.3g", rel_err(a.grad, gsum, NPARAM));
}

// OpenMP's threads only: BLAS stays on the one thread src/ops/linear.c sets at
// load, as in every program (hax_sgemm splits the work itself). BLAS's own
// threads split it otherwise: OpenBLAS 0.3.21 on an AMD EPYC gave the key
// selection's weight gradients other last bits at 2 threads (2026-12-08).
static void set_threads(int n) { omp_set_num_threads(n); }

static void test_packed_and_threads(void) {
    ks_case c;
    case_init(&c);
    case_params(&c, 71);
    case_kq(&c, 72);
    int cand[NSEQ * KC];
    int64_t ids[NSEQ] = {5, 6, 7, 8, 9};
    ks_sample_candidates(cand, c.off, NSEQ, ids, KC, 2, 1, 1);
    ks_state st;
    ks_state_init(&st, c.n_tok, NSEQ, NN, KC);
    static layer_out a, b;
    for (int sem = 0; sem < 2; sem++) {
        check_packed_vs_alone(&st, &c, cand, (hax_semantics)sem);
        // 1 vs 2 threads (OpenMP and BLAS), bit-identical.
        set_threads(1);
        run_layer(&a, &st, &c, c.kq, c.off, NSEQ, cand, (hax_semantics)sem);
        set_threads(2);
        run_layer(&b, &st, &c, c.kq, c.off, NSEQ, cand, (hax_semantics)sem);
        CHECK(memcmp(&a, &b, sizeof(a)) == 0, "semantics %d: 1 vs 2 threads differ", sem);
    }
    // Eval (no candidates): no loss, backward is a no-op.
    ks_params p = ks_flat_params(c.params, NN);
    float grad[NPARAM] = {0};
    ks_grads g = ks_flat_grads(grad, NN);
    double l = layer_forward(&st, &c, c.kq, c.off, NSEQ, SEMANTICS_REFERENCE, NULL);
    ks_backward(&st, &p, &g, 1.0f);
    int nz = 0;
    for (int i = 0; i < NPARAM; i++) nz += grad[i] != 0.0f;
    CHECK(l == 0.0 && nz == 0, "eval must have no loss (%g) and no gradient (%d)", l, nz);
    ks_state_free(&st);
    case_free(&c);
}

// Paper-like sizes (N 16, k_c 32, a few thousand tokens), where OpenMP
// really splits the work (BLAS on one thread, as in the programs): 1 vs 2
// threads bit-identical.
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
        set_threads(r + 1);
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

// A golden batch: B rows of L inputs (input_ids [B, L + 1]), each real up to
// its first pad (3); off [B + 1] the packed offsets.
typedef struct {
    const char *name;
    const st_file *f;
    int B, L;
    int *off;
} golden_batch;

static void golden_offsets(golden_batch *g) {
    const st_tensor *ids = st_find(g->f, "input_ids");
    g->B = (int)ids->shape[0], g->L = (int)ids->shape[1] - 1;
    int64_t *tok = xmalloc(sizeof(int64_t) * (size_t)g->B * (g->L + 1));
    st_tensor_to_i64(ids, tok);
    g->off = xmalloc(sizeof(int) * (g->B + 1));
    g->off[0] = 0;
    for (int b = 0; b < g->B; b++) {
        int n = 0;
        while (n < g->L && tok[(size_t)b * (g->L + 1) + n] != 3) n++;  // inputs = ids[:, :-1], pad 3
        g->off[b + 1] = g->off[b] + n;
    }
    free(tok);
}

// Top-k entries of sel [n_tok, k] missing from the golden allowed keys
// al [B, L, W]; with ks_only, also every difference from them (the allowed
// list is then the top-k itself, -1 after).
static int topk_vs_allowed(const golden_batch *g, const int *sel, int k, const int64_t *al, int W, int ks_only) {
    int bad = 0;
    for (int b = 0; b < g->B; b++)
        for (int t = 0; t < g->off[b + 1] - g->off[b]; t++) {
            const int *row = sel + (size_t)(g->off[b] + t) * k;
            const int64_t *arow = al + ((size_t)b * g->L + t) * W;
            for (int i = 0; i < k && row[i] >= 0; i++) {
                int found = 0;
                for (int j = 0; j < W; j++) found |= arow[j] == row[i];
                bad += !found;
            }
            if (ks_only)
                for (int j = 0; j < W; j++) bad += arow[j] != (j < k ? row[j] : -1);
        }
    return bad;
}

// Layer li's gate loss from the packed golden scores and its golden targets
// (ks_selected_attn) at its candidates tsel [B, k], against out.gate_loss.
static void check_gate_loss(const golden_batch *g, int li, const float *score, const st_tensor *tsel, int k) {
    int B = g->B;
    char key[128];
    int64_t *idx = xmalloc(sizeof(int64_t) * (size_t)B * k);
    int *cand = xmalloc(sizeof(int) * (size_t)B * k);
    float *yf = xmalloc(sizeof(float) * (size_t)B * k);
    double *y = xmalloc(sizeof(double) * (size_t)B * k), gl;
    st_tensor_to_i64(tsel, idx);
    for (int i = 0; i < B * k; i++) cand[i] = (int)idx[i];
    snprintf(key, sizeof(key), "dbg.layers.%d.ks_selected_attn", li);
    st_get_f32(g->f, key, yf, ST_SHAPE(B, k));
    for (int i = 0; i < B * k; i++) y[i] = yf[i];
    snprintf(key, sizeof(key), "out.gate_loss.layers.%d", li);
    const st_tensor *tg = st_find(g->f, key);
    CHECK(tg != NULL, "%s: %s missing", g->name, key);
    if (tg) {
        st_tensor_to_f64(tg, &gl);
        double l = ks_rank_loss_pairs(score, y, cand, g->off, B, k) / B;
        CHECK(fabs(l - gl) <= 1e-6 * fabs(gl), "%s layer %d: gate loss %.10g vs golden %.10g", g->name, li, l, gl);
    }
    free(idx); free(cand); free(yf); free(y);
}

// Layer li of a golden file: 1 when it is there (its key scores), 0 after
// the last layer.
static int check_golden_layer(const golden_batch *g, int li, float *full, float *score, int ks_only) {
    int B = g->B, L = g->L;
    char key[128];
    snprintf(key, sizeof(key), "dbg.layers.%d.key_score", li);
    const st_tensor *ts = st_find(g->f, key);
    if (!ts) {
        CHECK(li > 0, "%s: no %s", g->name, key);
        return 0;
    }
    st_tensor_to_f32(ts, full);
    for (int b = 0; b < B; b++)
        memcpy(score + g->off[b], full + (size_t)b * L, sizeof(float) * (g->off[b + 1] - g->off[b]));
    snprintf(key, sizeof(key), "rand.layers.%d.ks_selected_idx", li);
    const st_tensor *tsel = st_find(g->f, key);
    snprintf(key, sizeof(key), "dbg.layers.%d.allowed_keys", li);
    const st_tensor *tal = st_find(g->f, key);
    CHECK(tsel && tal, "%s layer %d: selected idx / allowed keys missing", g->name, li);
    if (!tsel || !tal) return 0;
    int k = (int)tsel->shape[1], W = (int)tal->shape[2];
    int64_t *al = xmalloc(sizeof(int64_t) * (size_t)B * L * W);
    st_tensor_to_i64(tal, al);
    int *sel = xmalloc(sizeof(int) * (size_t)g->off[B] * k);
    ks_cumtopk(sel, score, g->off, B, k);
    int bad = topk_vs_allowed(g, sel, k, al, W, ks_only);
    CHECK(bad == 0, "%s layer %d: %d top-k entries differ from the golden allowed keys", g->name, li, bad);
    check_gate_loss(g, li, score, tsel, k);
    free(al);
    free(sel);
    return 1;
}

static void check_golden_case(const char *name, int ks_only) {
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.safetensors", test_golden_dir(), name);
    char err[512];
    st_file *f = st_load(path, err, sizeof(err));
    CHECK(f != NULL, "%s", err);
    if (!f) return;
    golden_batch g = {name, f, 0, 0, NULL};
    golden_offsets(&g);
    float *full = xmalloc(sizeof(float) * (size_t)g.B * g.L), *score = xmalloc(sizeof(float) * g.off[g.B]);
    int li = 0;
    while (check_golden_layer(&g, li, full, score, ks_only)) li++;
    free(g.off); free(full); free(score);
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
