// test_sparse.c: the sparse attention branch (src/sparse/sparse.h) against a naive
// dense mirror of the reference written here in double (each sequence padded
// to L with zero X rows, L x L masks, additive-minimum softmax over all L, the
// reference's sequence-axis LSH statistics, autograd-literal backward),
// finite differences of that mirror and the gate's gradient. The list rules,
// packing, threads and refusals are in test_sparse_rules.c (the shared case:
// sparse_case.h).
#include "sparse_case.h"
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

// Central difference of the mirror's loss in one of its inputs, *v (an
// element of xd or Wd), with step h.
static double mirror_fd(const tcase *c, double *xd, double *Wd, const float *kscore, double *v, double h) {
    double sv = *v;
    *v = sv + h;
    double lp = mirror_loss(c, xd, Wd, kscore);
    *v = sv - h;
    double lm = mirror_loss(c, xd, Wd, kscore);
    *v = sv;
    return (lp - lm) / (2 * h);
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
            double fd = mirror_fd(&c, xd, Wd, st->key_score, xd + i, hstep), an = dX[(i / LDX) * EE + i % LDX];
            worst = fmax(worst, fabs(fd - an) / (fabs(fd) + fabs(an) + 1e-6));
        }
        for (int i = 0; i < 2 * NN * EE; i += 2) {
            double fd = mirror_fd(&c, xd, Wd, st->key_score, Wd + i, hstep);
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
    ks_params kp = ks_flat_params(x->c->ksp, NN);
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


int main(void) {
    RUN(test_patterns_reference);
    RUN(test_patterns_causal);
    RUN(test_fd_impl);
    RUN(test_gate_gradient);
    return test_summary();
}
