// test_sparse.c: the sparse attention branch (src/sparse/sparse.h) against a naive
// dense mirror of the reference written here in double (each sequence padded
// to L with zero X rows, L x L masks, additive-minimum softmax over all L, the
// reference's sequence-axis LSH statistics, autograd-literal backward),
// finite differences of that mirror, the pattern arithmetic, packed ==
// one-at-a-time, and 1 thread == 2 threads. Ends with a printed (not
// asserted) scaling check of HAX at n = 1,024 and 8,192.
#include <float.h>
#include <omp.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "src/core/common.h"
#include "src/model/model_config.h"
#include "src/sparse/sparse.h"
#include "test.h"

#define NN 4          // state size N
#define EE 6          // values E
#define LDX (EE + 2)  // X's leading dimension (Mamba-2 style slice)
#define HB 3          // hash bits h
#define L_PAD 24      // model_len
#define KEYS 8        // sparse_keys
#define DML 40        // data_max_length: dilation 5 (k_c 8) or 10 (k_c 4)
#define NPARAM (2 * 4 * NN * NN + 3 * 2 * NN + 1)

// A ragged batch: lengths 1, 7, 20, 3 (1 and 3 shorter than k_c).
static const int LENS[] = {1, 7, 20, 3};
#define NSEQ 4

typedef struct {
    hax_model_config cfg;
    hax_batch b;
    int seq_off[NSEQ + 1];
    int n_tok;
    float *X, *W, *Hm, *ksp, *R;  // R: weights of the test loss sum(R . attn)
    int *cand;
} tcase;

static void make_case(tcase *c, const char *pattern, hax_semantics sem, unsigned seed,
                      const int *lens, int n_seq) {
    memset(c, 0, sizeof(*c));
    c->cfg.state_size = NN, c->cfg.intermediate_size = EE;
    c->cfg.sparse_keys = KEYS, c->cfg.num_hash = HB, c->cfg.data_max_length = DML;
    c->cfg.semantics = sem;
    char err[200];
    if (model_config_set_sparse(&c->cfg, pattern, err, sizeof err)) hax_die("%s", err);
    c->seq_off[0] = 0;
    for (int s = 0; s < n_seq; s++) c->seq_off[s + 1] = c->seq_off[s] + lens[s];
    c->n_tok = c->seq_off[n_seq];
    c->b.n_seq = n_seq, c->b.n_tok = c->n_tok, c->b.seq_off = c->seq_off;
    c->b.model_len = L_PAD, c->b.global_n_seq = n_seq;
    c->X = xmalloc(sizeof(float) * c->n_tok * LDX);
    c->W = xmalloc(sizeof(float) * 2 * NN * EE);
    c->Hm = xmalloc(sizeof(float) * NN * HB);
    c->ksp = xmalloc(sizeof(float) * NPARAM);
    c->R = xmalloc(sizeof(float) * c->n_tok * EE);
    test_fill(c->X, (size_t)c->n_tok * LDX, seed, 1.0f);
    test_fill(c->W, 2 * NN * EE, seed + 1, 0.8f);
    test_fill(c->Hm, NN * HB, seed + 2, 1.5f);
    test_fill(c->ksp, NPARAM, seed + 3, 0.6f);
    test_fill(c->R, (size_t)c->n_tok * EE, seed + 4, 1.0f);
    int k = c->cfg.k_c > 0 ? c->cfg.k_c : 1;
    c->cand = xmalloc(sizeof(int) * n_seq * k);
    for (int s = 0; s < n_seq; s++) {  // a deterministic distinct subset, ascending
        int n = lens[s], m = 0;
        for (int j = 0; j < n && m < k; j++)
            if (n - j <= k - m || (j * 7 + s) % 3 != 0) c->cand[s * k + m++] = j;
        for (; m < k; m++) c->cand[s * k + m] = -1;
    }
}

static void free_case(tcase *c) {
    free(c->X), free(c->W), free(c->Hm), free(c->ksp), free(c->R), free(c->cand);
}

static ks_params ks_view(const float *p) {
    int D = 2 * NN;
    ks_params v = {p, p + D * D, p + D * D + D, p + 2 * D * D + D, p + 2 * D * D + 2 * D,
                   p + 2 * D * D + 3 * D};
    return v;
}

static ks_grads ks_gview(float *p) {
    int D = 2 * NN;
    ks_grads v = {p, p + D * D, p + D * D + D, p + 2 * D * D + D, p + 2 * D * D + 2 * D,
                  p + 2 * D * D + 3 * D};
    return v;
}

// The implementation: forward (training), then backward with dattn = R.
typedef struct {
    float *attn, *dX, *dW, *dks;
    double gate;
} tresult;

static hax_sparse_state *run_impl(tcase *c, tresult *r, float gate_scale, int backward) {
    hax_sparse_state *st = sparse_state_alloc(&c->cfg, c->n_tok, c->b.n_seq, L_PAD);
    ks_params kp = ks_view(c->ksp);
    r->attn = xcalloc((size_t)c->n_tok * EE, sizeof(float));
    r->dX = xcalloc((size_t)c->n_tok * LDX, sizeof(float));
    r->dW = xcalloc(2 * NN * EE, sizeof(float));
    r->dks = xcalloc(NPARAM, sizeof(float));
    r->gate = sparse_forward(st, &c->cfg, &c->b, c->X, LDX, c->W, &kp, c->Hm, c->cand, 1, r->attn, EE);
    if (backward) {
        ks_grads g = ks_gview(r->dks);
        sparse_backward(st, &c->cfg, &c->b, c->R, EE, gate_scale, c->X, LDX, c->W, &kp, r->dX, LDX,
                        r->dW, &g);
    }
    return st;
}

static void free_result(tresult *r) { free(r->attn), free(r->dX), free(r->dW), free(r->dks); }

// ---------------------------------------------------------------- the mirror

// One sequence of length n, padded to L_PAD, in double. x [n, LDX], W [2N, E].
// Fills attn [n, E]; with dattn != NULL also dX [n, E] and adds into dW.
// kscore: the implementation's key scores (key selection), the mirror takes
// the cumulative top-k from them. qb/kb out: buckets; allow out: [n][L] mask.
typedef struct {
    int qb[L_PAD], kb[L_PAD];
    char allow[L_PAD][L_PAD];
    int empty[L_PAD];
} mirror_dbg;

static void mirror_seq(const hax_model_config *cfg, const double *x, const double *W,
                       const float *Hm, const float *kscore, int n, double *attn,
                       const float *dattn, double *dX, double *dW, mirror_dbg *dbg) {
    enum { L = L_PAD };
    double X[L][EE] = {{0}}, K[L][NN], Q[L][NN], P[L][L];
    unsigned m = cfg->sparse_mask;
    int k = cfg->k_c, sem = cfg->semantics;
    for (int t = 0; t < n; t++)
        for (int e = 0; e < EE; e++) X[t][e] = x[t * LDX + e];
    for (int t = 0; t < L; t++)
        for (int f = 0; f < NN; f++) {
            double kk = 0, qq = 0;
            for (int e = 0; e < EE; e++) {
                kk += X[t][e] * W[f * EE + e];
                qq += X[t][e] * W[(NN + f) * EE + e];
            }
            K[t][f] = kk / sqrt((double)NN), Q[t][f] = qq;
        }
    // LSH buckets: reference = literal over all L rows; causal = prefix mean, own norm
    int lsh = (m & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) != 0;
    for (int which = 0; which < 2 && lsh; which++) {
        double (*A)[NN] = which ? K : Q, C[L][NN];
        if (sem == SEMANTICS_REFERENCE) {
            for (int f = 0; f < NN; f++) {
                double mu = 0, nu = 0;
                for (int t = 0; t < L; t++) mu += A[t][f];
                mu /= L;
                for (int t = 0; t < L; t++) nu += (A[t][f] - mu) * (A[t][f] - mu);
                for (int t = 0; t < L; t++) C[t][f] = (A[t][f] - mu) / fmax(sqrt(nu), 1e-12);
            }
        } else {
            for (int t = 0; t < L; t++) {
                double nrm = 0;
                for (int f = 0; f < NN; f++) {
                    double mu = 0;
                    for (int p = 0; p <= t; p++) mu += A[p][f];
                    C[t][f] = A[t][f] - mu / (t + 1);
                    nrm += C[t][f] * C[t][f];
                }
                for (int f = 0; f < NN; f++) C[t][f] /= fmax(sqrt(nrm), 1e-12);
            }
        }
        for (int t = 0; t < L; t++) {
            double pr[HB];
            int code = 0, best = 0;
            for (int i = 0; i < HB; i++) {
                pr[i] = 0;
                for (int f = 0; f < NN; f++) pr[i] += C[t][f] * Hm[f * HB + i];
                if (pr[i] > 0) code += 1 << i;
                if (pr[i] > pr[best]) best = i;
            }
            int bucket = (m & SPARSE_ARGMAX_LSH) ? best : code;
            if (which) dbg->kb[t] = bucket;
            else dbg->qb[t] = bucket;
        }
    }
    // masks, literally
    int delta = (m & SPARSE_DILATED) ? cfg->data_max_length / k : 1;
    for (int t = 0; t < L; t++) {
        char lshm[L] = {0}, ksm[L] = {0};
        if (lsh) {  // causal same-bucket, then the k most recent (reverse cumsum <= k)
            int cnt = 0;
            for (int j = L - 1; j >= 0; j--) {
                int cand = dbg->qb[t] == dbg->kb[j] && j <= t;
                cnt += cand;
                lshm[j] = cand && cnt <= k;
            }
        }
        if ((m & SPARSE_KEY_SELECTION) && t < n) {  // top-k of s_j over j <= t, lower index first
            for (int r = 0; r < k && r <= t; r++) {
                int best = -1;
                for (int j = 0; j <= t; j++)
                    if (!ksm[j] && (best < 0 || kscore[j] > kscore[best])) best = j;
                ksm[best] = 1;
            }
        }
        int cnt = 0;
        for (int j = 0; j < L; j++) {
            int causal = j <= t, a = 0;
            if (m & SPARSE_FULL) a = causal;
            if ((m & SPARSE_SLIDING_WINDOW) && t - j >= 0 && t - j < k) a = 1;
            if ((m & SPARSE_SINK) && j < k && causal) a = 1;
            if ((m & SPARSE_DILATED) && j % delta == delta - 1 && causal) a = 1;
            if (lshm[j] || ksm[j]) a = 1;
            dbg->allow[t][j] = (char)a;
            cnt += a;
        }
        dbg->empty[t] = cnt == 0;
        // additive-minimum softmax over all L
        double sc[L], mx = -DBL_MAX, sum = 0;
        for (int j = 0; j < L; j++) {
            double d = 0;
            for (int f = 0; f < NN; f++) d += Q[t][f] * K[j][f];
            sc[j] = d + (dbg->allow[t][j] ? 0.0 : -DBL_MAX);
            if (sc[j] > mx) mx = sc[j];
        }
        for (int j = 0; j < L; j++) sum += exp(sc[j] - mx);
        for (int j = 0; j < L; j++)
            P[t][j] = (cnt == 0 && sem == SEMANTICS_CAUSAL) ? 0.0 : exp(sc[j] - mx) / sum;
    }
    for (int t = 0; t < n; t++)
        for (int e = 0; e < EE; e++) {
            double a = 0;
            for (int j = 0; j < L; j++) a += P[t][j] * X[j][e];
            attn[t * EE + e] = a;
        }
    if (!dattn) return;
    // autograd, literally (dattn = 0 at pad rows: nothing downstream reads them)
    double dA[L][EE] = {{0}}, dK[L][NN] = {{0}}, dQ[L][NN] = {{0}}, dV[L][EE] = {{0}};
    for (int t = 0; t < n; t++)
        for (int e = 0; e < EE; e++) dA[t][e] = dattn[t * EE + e];
    for (int t = 0; t < L; t++) {
        double dP[L], D = 0;
        for (int j = 0; j < L; j++) {
            dP[j] = 0;
            for (int e = 0; e < EE; e++) dP[j] += dA[t][e] * X[j][e];
            D += P[t][j] * dP[j];
        }
        for (int j = 0; j < L; j++) {
            double ds = P[t][j] * (dP[j] - D);
            for (int f = 0; f < NN; f++) dQ[t][f] += ds * K[j][f], dK[j][f] += ds * Q[t][f];
            for (int e = 0; e < EE; e++) dV[j][e] += P[t][j] * dA[t][e];
        }
    }
    for (int t = 0; t < n; t++) {
        double dkq[2 * NN];
        for (int f = 0; f < NN; f++) dkq[f] = dK[t][f] / sqrt((double)NN), dkq[NN + f] = dQ[t][f];
        for (int e = 0; e < EE; e++) {
            double d = dV[t][e];
            for (int o = 0; o < 2 * NN; o++) d += dkq[o] * W[o * EE + e];
            dX[t * EE + e] = d;
        }
        for (int o = 0; o < 2 * NN; o++)
            for (int e = 0; e < EE; e++) dW[o * EE + e] += dkq[o] * X[t][e];
    }
}

// The mirror over a whole case. xd [n_tok, LDX], Wd [2N, E] in double.
static void mirror_case(const tcase *c, const double *xd, const double *Wd, const float *kscore,
                        double *attn, int backward, double *dX, double *dW, mirror_dbg *dbgs) {
    if (backward) memset(dW, 0, sizeof(double) * 2 * NN * EE);
    for (int s = 0; s < c->b.n_seq; s++) {
        int o = c->seq_off[s];
        mirror_seq(&c->cfg, xd + (size_t)o * LDX, Wd, c->Hm, kscore ? kscore + o : NULL,
                   c->seq_off[s + 1] - o, attn + (size_t)o * EE, backward ? c->R + (size_t)o * EE : NULL,
                   backward ? dX + (size_t)o * EE : NULL, dW, &dbgs[s]);
    }
}

static double rel_err_d(const float *a, const double *b, size_t n, size_t lda, size_t ldb,
                        size_t w) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < w; j++) {
            double d = a[i * lda + j] - b[i * ldb + j];
            num += d * d, den += b[i * ldb + j] * b[i * ldb + j];
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

// Mirror loss sum(R . attn) as a function of (xd, Wd), for finite differences.
static double mirror_loss(const tcase *c, const double *xd, const double *Wd, const float *kscore) {
    double *attn = xmalloc(sizeof(double) * c->n_tok * EE);
    mirror_dbg *dbg = xmalloc(sizeof(mirror_dbg) * c->b.n_seq);
    mirror_case(c, xd, Wd, kscore, attn, 0, NULL, NULL, dbg);
    double l = 0;
    for (int i = 0; i < c->n_tok * EE; i++) l += attn[i] * c->R[i];
    free(attn), free(dbg);
    return l;
}

static const char *PATTERNS[] = {
    "sliding_window", "sink", "sliding_window+sink", "dilated", "sliding_window+dilated",
    "sign_bin_lsh", "argmax_lsh", "key_selection", "sign_bin_lsh+key_selection", "full",
};
#define NPAT (int)(sizeof PATTERNS / sizeof PATTERNS[0])

// Forward (buckets, allowed lists, attn) and backward (dX, dW) vs the mirror;
// the mirror's own backward vs its finite differences where it is smooth.
static void check_pattern(const char *pattern, hax_semantics sem) {
    tcase c;
    make_case(&c, pattern, sem, 101, LENS, NSEQ);
    tresult r;
    hax_sparse_state *st = run_impl(&c, &r, 0.0f, 1);
    double *xd = xmalloc(sizeof(double) * c.n_tok * LDX), Wd[2 * NN * EE];
    for (int i = 0; i < c.n_tok * LDX; i++) xd[i] = c.X[i];
    for (int i = 0; i < 2 * NN * EE; i++) Wd[i] = c.W[i];
    double *attn = xmalloc(sizeof(double) * c.n_tok * EE), *dX = xmalloc(sizeof(double) * c.n_tok * EE);
    double dW[2 * NN * EE];
    mirror_dbg dbg[NSEQ];
    mirror_case(&c, xd, Wd, st->key_score, attn, 1, dX, dW, dbg);

    int lsh = (c.cfg.sparse_mask & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) != 0;
    int full = (c.cfg.sparse_mask & SPARSE_FULL) != 0;
    int bad_bucket = 0, bad_list = 0, too_many = 0, n_empty = 0;
    for (int s = 0; s < NSEQ; s++)
        for (int t = 0; t < LENS[s]; t++) {
            int g = c.seq_off[s] + t, cnt = 0;
            if (lsh && (st->q_bucket[g] != dbg[s].qb[t] || st->k_bucket[g] != dbg[s].kb[t])) bad_bucket++;
            n_empty += dbg[s].empty[t];
            for (int j = 0; j < L_PAD; j++) cnt += dbg[s].allow[t][j];
            if (!full && cnt > KEYS) too_many++;
            if (full) continue;
            int off = st->allow_off[g], nl = st->allow_off[g + 1] - off, ok = nl == cnt;
            for (int i = 0; ok && i < nl; i++) ok = dbg[s].allow[t][st->allow_key[off + i]];
            for (int i = 1; ok && i < nl; i++) ok = st->allow_key[off + i - 1] < st->allow_key[off + i];
            bad_list += !ok;
        }
    CHECK(bad_bucket == 0, "%s sem %d: %d rows with buckets unlike the mirror", pattern, sem, bad_bucket);
    CHECK(bad_list == 0, "%s sem %d: %d allowed lists unlike the mirror", pattern, sem, bad_list);
    CHECK(too_many == 0, "%s sem %d: %d rows above sparse_keys", pattern, sem, too_many);
    CHECK((st->has_empty != 0) == (n_empty > 0), "%s: has_empty %d, mirror empty rows %d", pattern,
          st->has_empty, n_empty);
    double ea = rel_err_d(r.attn, attn, c.n_tok, EE, EE, EE);
    double ex = rel_err_d(r.dX, dX, c.n_tok, LDX, EE, EE);
    double ew = rel_err_d(r.dW, dW, 2 * NN, EE, EE, EE);
    CHECK(ea < 1e-5, "%s sem %d: attn rel err %.3g", pattern, sem, ea);
    CHECK(ex < 1e-4 && ew < 1e-4, "%s sem %d: dX rel err %.3g, dW rel err %.3g", pattern, sem, ex, ew);
    // columns of X beyond E are not V: they get no gradient
    double extra = 0;
    for (int g = 0; g < c.n_tok; g++) extra += fabs(r.dX[g * LDX + EE]) + fabs(r.dX[g * LDX + EE + 1]);
    CHECK(extra == 0, "%s: gradient written beyond E", pattern);

    // The mirror's backward vs its finite differences, where the forward is
    // smooth: no empty rows, or causal semantics (the reference's empty rows
    // have an autograd gradient that is not the derivative: golden README Q3).
    if (n_empty == 0 || sem == SEMANTICS_CAUSAL) {
        double worst = 0, hstep = 1e-6;
        for (int i = 0; i < c.n_tok * LDX; i += 3) {
            if (i % LDX >= EE) continue;
            double sv = xd[i];
            xd[i] = sv + hstep;
            double lp = mirror_loss(&c, xd, Wd, st->key_score);
            xd[i] = sv - hstep;
            double lm = mirror_loss(&c, xd, Wd, st->key_score);
            xd[i] = sv;
            double fd = (lp - lm) / (2 * hstep), an = dX[(i / LDX) * EE + i % LDX];
            worst = fmax(worst, fabs(fd - an) / (fabs(fd) + fabs(an) + 1e-6));
        }
        for (int i = 0; i < 2 * NN * EE; i += 2) {
            double sv = Wd[i];
            Wd[i] = sv + hstep;
            double lp = mirror_loss(&c, xd, Wd, st->key_score);
            Wd[i] = sv - hstep;
            double lm = mirror_loss(&c, xd, Wd, st->key_score);
            Wd[i] = sv;
            double fd = (lp - lm) / (2 * hstep);
            worst = fmax(worst, fabs(fd - dW[i]) / (fabs(fd) + fabs(dW[i]) + 1e-6));
        }
        CHECK(worst < 1e-5, "%s sem %d: mirror gradient vs FD: worst rel %.3g", pattern, sem, worst);
    }
    free(xd), free(attn), free(dX);
    free_result(&r);
    sparse_state_free(st);
    free_case(&c);
}

static void test_patterns_reference(void) {
    for (int p = 0; p < NPAT; p++) check_pattern(PATTERNS[p], SEMANTICS_REFERENCE);
}

static void test_patterns_causal(void) {
    for (int p = 0; p < NPAT; p++) check_pattern(PATTERNS[p], SEMANTICS_CAUSAL);
}

// ---------------------------------------------------------------- FD on the implementation

typedef struct {
    tcase *c;
    hax_sparse_state *st;
    float *attn;
    int gate;  // 1: the loss is the returned ranking-loss sum
} fd_ctx;

static double impl_loss(void *p) {
    fd_ctx *x = p;
    ks_params kp = ks_view(x->c->ksp);
    double g = sparse_forward(x->st, &x->c->cfg, &x->c->b, x->c->X, LDX, x->c->W, &kp, x->c->Hm,
                              x->c->cand, 1, x->attn, EE);
    if (x->gate) return g;
    double l = 0;
    for (int i = 0; i < x->c->n_tok * EE; i++) l += (double)x->attn[i] * x->c->R[i];
    return l;
}

// The float implementation against its own central differences (smooth cases).
static void check_fd_impl(const char *pattern, hax_semantics sem) {
    tcase c;
    make_case(&c, pattern, sem, 202, LENS, NSEQ);
    tresult r;
    hax_sparse_state *st = run_impl(&c, &r, 0.0f, 1);
    // LSH: hold the buckets of the unperturbed point (FD away from bucket
    // boundaries; a step of W_xx moves every projection)
    int32_t *qb = xmalloc(sizeof(int32_t) * c.n_tok), *kb = xmalloc(sizeof(int32_t) * c.n_tok);
    memcpy(qb, st->q_bucket, sizeof(int32_t) * c.n_tok);
    memcpy(kb, st->k_bucket, sizeof(int32_t) * c.n_tok);
    if (c.cfg.sparse_mask & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) sparse_force_buckets(st, qb, kb);
    fd_ctx x = {&c, st, r.attn, 0};
    double ex = fd_check(c.X, (size_t)c.n_tok * LDX, r.dX, impl_loss, &x, 1e-2f, 60, 1e-3);
    double ew = fd_check(c.W, 2 * NN * EE, r.dW, impl_loss, &x, 1e-2f, 24, 1e-3);
    CHECK(ex < 1e-2 && ew < 1e-2, "%s sem %d: FD on X %.3g, on W_xx %.3g", pattern, sem, ex, ew);
    free(qb), free(kb);
    free_result(&r);
    sparse_state_free(st);
    free_case(&c);
}

static void test_fd_impl(void) {
    check_fd_impl("sliding_window+sink", SEMANTICS_REFERENCE);
    check_fd_impl("key_selection", SEMANTICS_REFERENCE);
    check_fd_impl("full", SEMANTICS_REFERENCE);
    check_fd_impl("dilated", SEMANTICS_CAUSAL);
    check_fd_impl("sign_bin_lsh", SEMANTICS_CAUSAL);
}

// The ranking loss reaches the dx_proj parameters (and nothing else).
static void test_gate_gradient(void) {
    for (int sem = 0; sem < 2; sem++) {
        tcase c;
        make_case(&c, "sign_bin_lsh+key_selection", (hax_semantics)sem, 303, LENS, NSEQ);
        tresult r0, r1;
        hax_sparse_state *st0 = run_impl(&c, &r0, 0.0f, 1);
        hax_sparse_state *st1 = run_impl(&c, &r1, 1.0f, 1);
        CHECK(r1.gate > 0, "sem %d: gate loss sum %g", sem, r1.gate);
        CHECK(memcmp(r0.dX, r1.dX, sizeof(float) * c.n_tok * LDX) == 0 &&
                  memcmp(r0.dW, r1.dW, sizeof(float) * 2 * NN * EE) == 0,
              "sem %d: the gate loss changed dX or dW_xx", sem);
        double z = 0;
        for (int i = 0; i < NPARAM; i++) z += fabs(r0.dks[i]);
        CHECK(z == 0, "sem %d: dx_proj gradient with gate_scale 0", sem);
        fd_ctx x = {&c, st1, r1.attn, 1};
        // h small enough not to cross the ReLU kinks of the MLP
        double e = fd_check(c.ksp, NPARAM, r1.dks, impl_loss, &x, 1e-3f, 80, 1e-3);
        CHECK(e < 1e-2, "sem %d: dx_proj gradient vs FD %.3g", sem, e);
        free_result(&r0), free_result(&r1);
        sparse_state_free(st0), sparse_state_free(st1);
        free_case(&c);
    }
}

// ---------------------------------------------------------------- pattern arithmetic

// Allowed list of packed row g as a string-free check against keys[0..n).
static int list_is(const hax_sparse_state *st, int g, const int *keys, int n) {
    int off = st->allow_off[g];
    if (st->allow_off[g + 1] - off != n) return 0;
    for (int i = 0; i < n; i++)
        if (st->allow_key[off + i] != keys[i]) return 0;
    return 1;
}

static void test_lsh_cap(void) {
    tcase c;
    make_case(&c, "sign_bin_lsh", SEMANTICS_REFERENCE, 404, LENS, NSEQ);
    int32_t *qb = xmalloc(sizeof(int32_t) * c.n_tok), *kb = xmalloc(sizeof(int32_t) * c.n_tok);
    hax_sparse_state *st = sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
    float *attn = xmalloc(sizeof(float) * c.n_tok * EE);
    for (int mode = 0; mode < 2; mode++) {
        // mode 0: one bucket for all (the k_c most recent = a sliding window);
        // mode 1: bucket = position parity for keys and queries
        for (int s = 0; s < NSEQ; s++)
            for (int t = 0; t < LENS[s]; t++) qb[c.seq_off[s] + t] = kb[c.seq_off[s] + t] = mode ? t % 2 : 5;
        sparse_force_buckets(st, qb, kb);
        sparse_forward(st, &c.cfg, &c.b, c.X, LDX, c.W, NULL, c.Hm, NULL, 0, attn, EE);
        int bad = 0;
        for (int s = 0; s < NSEQ; s++)
            for (int t = 0; t < LENS[s]; t++) {
                int keys[L_PAD], n = 0;
                for (int j = 0; j <= t; j++)
                    if (!mode || j % 2 == t % 2) keys[n++] = j;
                int drop = n > KEYS ? n - KEYS : 0;
                bad += !list_is(st, c.seq_off[s] + t, keys + drop, n - drop);
                bad += st->q_bucket[c.seq_off[s] + t] != qb[c.seq_off[s] + t];
            }
        CHECK(bad == 0, "mode %d: %d rows differ from the k_c most recent same-bucket keys", mode, bad);
    }
    // forced buckets off again: computed buckets come back
    sparse_force_buckets(st, NULL, NULL);
    sparse_forward(st, &c.cfg, &c.b, c.X, LDX, c.W, NULL, c.Hm, NULL, 0, attn, EE);
    int same = 1;
    for (int g = 0; g < c.n_tok; g++) same &= st->q_bucket[g] == qb[g];
    CHECK(!same, "buckets still forced after sparse_force_buckets(NULL, NULL)");
    free(qb), free(kb), free(attn);
    sparse_state_free(st);
    free_case(&c);
}

static void check_fixed_pattern(const char *pattern, int kind) {
    tcase c;
    make_case(&c, pattern, SEMANTICS_REFERENCE, 505, LENS, NSEQ);
    hax_sparse_state *st = sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
    float *attn = xmalloc(sizeof(float) * c.n_tok * EE);
    sparse_forward(st, &c.cfg, &c.b, c.X, LDX, c.W, NULL, NULL, NULL, 0, attn, EE);
    int k = c.cfg.k_c, delta = DML / k, bad = 0;
    for (int s = 0; s < NSEQ; s++)
        for (int t = 0; t < LENS[s]; t++) {
            int keys[L_PAD], n = 0;
            for (int j = 0; j <= t; j++) {
                int a = kind == 0 ? j < k                                      // sink
                      : kind == 1 ? j % delta == delta - 1                     // dilated
                                  : (j % delta == delta - 1 || t - j < k);     // sliding+dilated
                if (a) keys[n++] = j;
            }
            bad += !list_is(st, c.seq_off[s] + t, keys, n);
        }
    CHECK(bad == 0, "%s (k_c %d, delta %d): %d rows wrong", pattern, k, delta, bad);
    free(attn);
    sparse_state_free(st);
    free_case(&c);
}

static void test_sink_dilation(void) {
    check_fixed_pattern("sink", 0);
    check_fixed_pattern("dilated", 1);                 // delta = 40 / 8 = 5: keys 4, 9, 14, 19
    check_fixed_pattern("sliding_window+dilated", 2);  // k_c 4, delta 10: keys 9, 19 + window
}

// Empty rows: the reference averages all real V over L; causal gives 0.
static void test_empty_rows(void) {
    for (int sem = 0; sem < 2; sem++) {
        tcase c;
        make_case(&c, "dilated", (hax_semantics)sem, 606, LENS, NSEQ);
        tresult r;
        hax_sparse_state *st = run_impl(&c, &r, 0, 0);
        int s = 2, o = c.seq_off[s];  // length 20, rows 0..3 empty
        double worst = 0;
        for (int e = 0; e < EE; e++) {
            double mean = 0;
            for (int j = 0; j < LENS[s]; j++) mean += c.X[(o + j) * LDX + e];
            mean = sem == SEMANTICS_REFERENCE ? mean / L_PAD : 0.0;
            for (int t = 0; t < 4; t++) worst = fmax(worst, fabs(r.attn[(o + t) * EE + e] - mean));
        }
        CHECK(worst < 1e-6, "sem %d: empty-row output off by %.3g", sem, worst);
        free_result(&r);
        sparse_state_free(st);
        free_case(&c);
    }
}

// ---------------------------------------------------------------- packing and threads

static void test_packed_vs_alone(void) {
    const char *pats[] = {"sign_bin_lsh+key_selection", "sliding_window+dilated", "full", "argmax_lsh"};
    for (int p = 0; p < 4; p++)
        for (int sem = 0; sem < 2; sem++) {
            tcase c;
            make_case(&c, pats[p], (hax_semantics)sem, 707, LENS, NSEQ);
            tresult r;
            hax_sparse_state *st = run_impl(&c, &r, 0.5f, 1);
            int k = c.cfg.k_c > 0 ? c.cfg.k_c : 1, bad = 0;
            double gate = 0, *dW = xcalloc(2 * NN * EE, sizeof(double));
            double edx = 0, ea = 0;
            for (int s = 0; s < NSEQ; s++) {
                tcase one;
                make_case(&one, pats[p], (hax_semantics)sem, 707, LENS + s, 1);
                int o = c.seq_off[s], n = LENS[s];
                memcpy(one.X, c.X + (size_t)o * LDX, sizeof(float) * n * LDX);
                memcpy(one.R, c.R + (size_t)o * EE, sizeof(float) * n * EE);
                memcpy(one.cand, c.cand + s * k, sizeof(int) * k);
                tresult r1;
                hax_sparse_state *st1 = run_impl(&one, &r1, 0.5f, 1);
                gate += r1.gate;
                ea = fmax(ea, rel_err(r1.attn, r.attn + (size_t)o * EE, (size_t)n * EE));
                edx = fmax(edx, rel_err(r1.dX, r.dX + (size_t)o * LDX, (size_t)n * LDX));
                for (int i = 0; i < 2 * NN * EE; i++) dW[i] += r1.dW[i];
                for (int t = 0; t < n; t++) {
                    bad += st1->q_bucket[t] != st->q_bucket[o + t];
                    bad += st1->allow_off[t + 1] - st1->allow_off[t] !=
                           st->allow_off[o + t + 1] - st->allow_off[o + t];
                }
                free_result(&r1);
                sparse_state_free(st1);
                free_case(&one);
            }
            CHECK(bad == 0, "%s sem %d: %d rows with other buckets or list sizes alone", pats[p], sem, bad);
            // (bit-identical here; a tolerance in case a BLAS blocks rows differently)
            CHECK(ea < 1e-6 && edx < 1e-6, "%s sem %d: attn %.3g, dX %.3g packed vs alone", pats[p],
                  sem, ea, edx);
            CHECK(fabs(gate - r.gate) <= 1e-9 * fabs(gate) + 1e-12, "%s: gate %g vs %g", pats[p], gate, r.gate);
            CHECK(rel_err_d(r.dW, dW, 2 * NN, EE, EE, EE) < 1e-6, "%s sem %d: dW_xx packed vs alone",
                  pats[p], sem);
            free(dW);
            free_result(&r);
            sparse_state_free(st);
            free_case(&c);
        }
}

static void test_threads(void) {
    const char *pats[] = {"sign_bin_lsh+key_selection", "dilated", "full", "sliding_window+sink"};
    for (int p = 0; p < 4; p++) {
        tcase c;
        make_case(&c, pats[p], SEMANTICS_REFERENCE, 808, LENS, NSEQ);
        tresult r[2];
        for (int th = 0; th < 2; th++) {
            omp_set_num_threads(th + 1);
            sparse_state_free(run_impl(&c, &r[th], 0.5f, 1));
        }
        omp_set_num_threads(2);
        int same = memcmp(r[0].attn, r[1].attn, sizeof(float) * c.n_tok * EE) == 0 &&
                   memcmp(r[0].dX, r[1].dX, sizeof(float) * c.n_tok * LDX) == 0 &&
                   memcmp(r[0].dW, r[1].dW, sizeof(float) * 2 * NN * EE) == 0 &&
                   memcmp(r[0].dks, r[1].dks, sizeof(float) * NPARAM) == 0 && r[0].gate == r[1].gate;
        CHECK(same, "%s: 1 thread and 2 threads differ", pats[p]);
        free_result(&r[0]), free_result(&r[1]);
        free_case(&c);
    }
}

// A rank may hold no sequence of a batch: nothing to do, no error.
static void test_empty_batch(void) {
    tcase c;
    make_case(&c, "sign_bin_lsh+key_selection", SEMANTICS_REFERENCE, 909, LENS, NSEQ);
    hax_sparse_state *st = sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
    hax_batch b0 = c.b;
    b0.n_seq = 0, b0.n_tok = 0;
    ks_params kp = ks_view(c.ksp);
    float attn[1] = {7}, dX[1] = {0}, dW[1] = {0};
    double gl = sparse_forward(st, &c.cfg, &b0, c.X, LDX, c.W, &kp, c.Hm, c.cand, 1, attn, EE);
    sparse_backward(st, &c.cfg, &b0, attn, EE, 1.0f, c.X, LDX, c.W, &kp, dX, LDX, dW, NULL);
    CHECK(gl == 0 && attn[0] == 7 && dX[0] == 0 && dW[0] == 0, "empty batch touched outputs");
    sparse_state_free(st);
    free_case(&c);
}

// Runs the named refusal case in a fresh process (fork + exec of this
// program: a forked child must not touch OpenMP); returns its exit status
// (hax_die exits 1).
static int exit_status_of(const char *name) {
    fflush(stdout), fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(99);
        execl("/proc/self/exe", "test_sparse", "--case", name, (char *)NULL);
        _exit(98);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void die_too_long(void) {  // a sequence longer than model_len (reference semantics)
    tcase c;
    make_case(&c, "sliding_window", SEMANTICS_REFERENCE, 1, LENS, NSEQ);
    c.b.model_len = 10;
    tresult r;
    run_impl(&c, &r, 0, 0);
}

static void die_no_hash(void) {  // LSH without a hash matrix
    tcase c;
    make_case(&c, "sign_bin_lsh", SEMANTICS_REFERENCE, 1, LENS, NSEQ);
    hax_sparse_state *st = sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
    float *attn = xmalloc(sizeof(float) * c.n_tok * EE);
    sparse_forward(st, &c.cfg, &c.b, c.X, LDX, c.W, NULL, NULL, NULL, 0, attn, EE);
}

static void die_no_cand(void) {  // key selection in training without candidates
    tcase c;
    make_case(&c, "key_selection", SEMANTICS_REFERENCE, 1, LENS, NSEQ);
    hax_sparse_state *st = sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
    float *attn = xmalloc(sizeof(float) * c.n_tok * EE);
    ks_params kp = ks_view(c.ksp);
    sparse_forward(st, &c.cfg, &c.b, c.X, LDX, c.W, &kp, NULL, NULL, 1, attn, EE);
}

static void die_two_lsh(void) {  // sign_bin_lsh + argmax_lsh (one bucket set per layer)
    tcase c;
    make_case(&c, "sign_bin_lsh+argmax_lsh", SEMANTICS_REFERENCE, 1, LENS, NSEQ);
    sparse_state_alloc(&c.cfg, c.n_tok, NSEQ, L_PAD);
}

static void ok_run(void) {  // the control: a good call exits 0
    tcase c;
    make_case(&c, "sliding_window", SEMANTICS_REFERENCE, 1, LENS, NSEQ);
    tresult r;
    run_impl(&c, &r, 0, 1);
}

static const struct {
    const char *name;
    void (*fn)(void);
} CASES[] = {{"ok", ok_run}, {"too_long", die_too_long}, {"no_hash", die_no_hash},
             {"no_cand", die_no_cand}, {"two_lsh", die_two_lsh}};

static void test_refusals(void) {
    CHECK(exit_status_of("ok") == 0, "a good call failed");
    CHECK(exit_status_of("too_long") == 1, "a sequence longer than model_len was accepted");
    CHECK(exit_status_of("no_hash") == 1, "LSH without a hash matrix was accepted");
    CHECK(exit_status_of("no_cand") == 1, "KS training without candidates was accepted");
    CHECK(exit_status_of("two_lsh") == 1, "sign_bin_lsh+argmax_lsh was accepted");
}

// ---------------------------------------------------------------- scaling (printed)

static void bench_hax(int n, double *us_per_tok, double *keys_per_row, int *max_row) {
    hax_model_config cfg = {0};
    cfg.state_size = 16, cfg.intermediate_size = 128, cfg.sparse_keys = 64, cfg.num_hash = 8;
    cfg.data_max_length = 2048, cfg.semantics = SEMANTICS_REFERENCE;
    char err[200];
    if (model_config_set_sparse(&cfg, "sign_bin_lsh+key_selection", err, sizeof err)) hax_die("%s", err);
    int N = 16, E = 128, D = 2 * N, k = cfg.k_c, off[2] = {0, n};
    hax_batch b = {0};
    b.n_seq = 1, b.n_tok = n, b.seq_off = off, b.model_len = n, b.global_n_seq = 1;
    float *X = xmalloc(sizeof(float) * n * E), *W = xmalloc(sizeof(float) * D * E);
    float *Hm = xmalloc(sizeof(float) * N * 8), *attn = xmalloc(sizeof(float) * n * E);
    float *dX = xcalloc((size_t)n * E, sizeof(float)), *dW = xcalloc(D * E, sizeof(float));
    int np = 2 * D * D + 3 * D + 1;
    float *kp = xmalloc(sizeof(float) * np), *dk = xcalloc(np, sizeof(float));
    int *cand = xmalloc(sizeof(int) * k);
    test_fill(X, (size_t)n * E, 1, 1.0f), test_fill(W, D * E, 2, 0.1f), test_fill(Hm, N * 8, 3, 1.0f);
    test_fill(kp, np, 4, 0.1f);
    for (int i = 0; i < k; i++) cand[i] = (int)((long)i * n / k);
    ks_params p = {kp, kp + D * D, kp + D * D + D, kp + 2 * D * D + D, kp + 2 * D * D + 2 * D,
                   kp + 2 * D * D + 3 * D};
    ks_grads g = {dk, dk + D * D, dk + D * D + D, dk + 2 * D * D + D, dk + 2 * D * D + 2 * D,
                  dk + 2 * D * D + 3 * D};
    hax_sparse_state *st = sparse_state_alloc(&cfg, n, 1, n);
    double t0 = hax_now();
    int reps = n <= 1024 ? 4 : 1;
    for (int rep = 0; rep < reps; rep++) {
        sparse_forward(st, &cfg, &b, X, E, W, &p, Hm, cand, 1, attn, E);
        sparse_backward(st, &cfg, &b, attn, E, 0.1f, X, E, W, &p, dX, E, dW, &g);
    }
    *us_per_tok = (hax_now() - t0) / reps / n * 1e6;
    *keys_per_row = (double)st->allow_off[n] / n;
    *max_row = 0;
    for (int t = 0; t < n; t++)
        if (st->allow_off[t + 1] - st->allow_off[t] > *max_row) *max_row = st->allow_off[t + 1] - st->allow_off[t];
    sparse_state_free(st);
    free(X), free(W), free(Hm), free(attn), free(dX), free(dW), free(kp), free(dk), free(cand);
}

static void test_scaling_printed(void) {
    double a, b, ka, kb;
    int ma, mb;
    bench_hax(1024, &a, &ka, &ma);
    bench_hax(8192, &b, &kb, &mb);
    // Rows grow as the LSH buckets fill (up to k_c same-bucket keys), so the
    // cost per token may rise; per gathered key it should stay about flat.
    printf("     HAX branch (N 16, E 128, k 32+32) fwd+bwd: %.2f us/token at n = 1024 (%.1f keys/row), "
           "%.2f us/token at n = 8192 (%.1f keys/row); per key %.3f vs %.3f us\n", a, ka, b, kb, a / ka, b / kb);
    CHECK(a > 0 && b > 0, "timing");
    CHECK(ma <= 64 && mb <= 64, "every row holds at most k = 64 keys: longest %d and %d", ma, mb);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--case") == 0) {  // a refusal case, run alone
        for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
            if (strcmp(argv[2], CASES[i].name) == 0) CASES[i].fn();
        return 0;
    }
    RUN(test_patterns_reference);
    RUN(test_patterns_causal);
    RUN(test_fd_impl);
    RUN(test_gate_gradient);
    RUN(test_lsh_cap);
    RUN(test_sink_dilation);
    RUN(test_empty_rows);
    RUN(test_packed_vs_alone);
    RUN(test_threads);
    RUN(test_empty_batch);
    RUN(test_refusals);
    RUN(test_scaling_printed);
    return test_summary();
}
