// test_scan_chunk.c: a C model of the CUDA Mamba scan's two-level algorithm
// over time (cuda/ops/scan.cu), forward and backward, against the CPU op
// (src/ops/scan.c, the oracle) on ragged packed batches. The model follows the
// kernels' structure and indexing (chunk slots found by a search over
// seq_off, carries passed between chunks, checkpoints every T positions, one
// parameter partial per chunk summed per sequence then in sequence order);
// only the order of the sums over channels differs from the GPU's.
//
// The algebra: per (sequence, channel c, state n), s_t = a_t·s_{t−1} + b_t
// with a_t = exp(Δ_t·A), b_t = Δ_t·x_t·B_t[n]. Over a chunk of Q positions,
// from a zero state, it ends at S_j with decay product P_j = Π a_t =
// exp(A·ΣΔ_t); the state entering chunk j+1 is P_j·(state entering j) + S_j.
// Backward, the adjoint carried into position t−1 is a_t·(that into t + g_t·C_t):
// from zero at the chunk's end it leaves the chunk as L_j, and the adjoint
// entering chunk j from the right is R_j with R_{j−1} = L_j + P_j·R_j.
// Each chunk is then redone with its true input state / adjoint.
#include "cuda/ops/scan.h"
#include "src/core/common.h"
#include "src/ops/basic.h"
#include "src/ops/scan.h"
#include "test.h"

#define T CU_SCAN_T

// ---------------------------------------------------------------- chunk table

static size_t n_slots(int n_tok, int n_seq, int Q) { return (size_t)n_tok / Q + (size_t)n_seq; }
static size_t slot_base(const int *so, int s, int Q) { return (size_t)s + (size_t)so[s] / Q; }

// Sequence s and chunk j of chunk slot k (the device's search); 0 for a slot
// that holds no chunk.
static int chunk_of(const int *so, int n_seq, int Q, size_t k, int *s_out, int *j_out) {
    int lo = 0, hi = n_seq - 1;  // the last s with slot_base(s) <= k
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (slot_base(so, mid, Q) <= k) lo = mid;
        else hi = mid - 1;
    }
    int j = (int)(k - slot_base(so, lo, Q));
    if ((long)j * Q >= so[lo + 1] - so[lo]) return 0;
    *s_out = lo, *j_out = j;
    return 1;
}

// ---------------------------------------------------------------- the model

typedef struct {
    const float *x, *draw, *dtb, *A_log, *B, *C, *D, *dy;
    int ld_x, ld_bc;
    const int *so;
    int n_seq, n_tok, E, N, Q;
} model_in;

static float delta_at(const model_in *m, int t, int c) {
    return hax_softplus(m->draw[(size_t)t * m->E + c] + m->dtb[c]);
}
static float A_at(const model_in *m, int c, int n) { return -expf(m->A_log[(size_t)c * m->N + n]); }

// One chunk's positions [ta, ta + L) of channel c, state n, from state s:
// returns the end state; with y != NULL adds C·s into y and stores the state
// at every T-th position into ck16 (slot m16 onwards).
static float chunk_forward(const model_in *m, int ta, int L, int c, int n, float s, float *ys, float *ck16, size_t m16) {
    float A = A_at(m, c, n);
    for (int i = 0; i < L; i++) {
        int t = ta + i;
        if (ck16 && i % T == 0) ck16[(m16 + (size_t)i / T) * m->E * m->N + (size_t)c * m->N + n] = s;
        float dl = delta_at(m, t, c);
        s = expf(dl * A) * s + dl * m->x[(size_t)t * m->ld_x + c] * m->B[(size_t)t * m->ld_bc + n];
        if (ys) ys[(size_t)t * m->E + c] += m->C[(size_t)t * m->ld_bc + n] * s;
    }
    return s;
}

static void model_forward(float *y, float *ck16, const model_in *m) {
    int E = m->E, N = m->N, Q = m->Q;
    size_t ns = n_slots(m->n_tok, m->n_seq, Q), EN = (size_t)E * N;
    float *Send = xcalloc(ns * EN, sizeof(float)), *dsum = xcalloc(ns * E, sizeof(float));
    float *ys = xcalloc((size_t)m->n_tok * E, sizeof(float));
    // 1: every chunk from a zero state (parallel over chunks on the device)
    for (size_t k = 0; k < ns; k++) {
        int s, j;
        if (!chunk_of(m->so, m->n_seq, Q, k, &s, &j)) continue;
        int ta = m->so[s] + j * Q, L = m->so[s + 1] - ta < Q ? m->so[s + 1] - ta : Q;
        for (int c = 0; c < E; c++) {
            float ds = 0.0f;
            for (int i = 0; i < L; i++) ds += delta_at(m, ta + i, c);
            dsum[k * E + c] = ds;
            for (int n = 0; n < N; n++) Send[k * EN + (size_t)c * N + n] = chunk_forward(m, ta, L, c, n, 0.0f, NULL, NULL, 0);
        }
    }
    // 2: the carries, chunk after chunk (the state entering chunk j goes to
    // the checkpoint at the chunk's first position)
    for (int s = 0; s < m->n_seq; s++) {
        int len = m->so[s + 1] - m->so[s], nch = (len + Q - 1) / Q;
        for (size_t cn = 0; cn < EN; cn++) {
            int c = (int)(cn / N), n = (int)(cn % N);
            float st = 0.0f;
            for (int j = 0; j < nch; j++) {
                size_t k = slot_base(m->so, s, Q) + j, m16 = slot_base(m->so, s, T) + (size_t)j * (Q / T);
                ck16[m16 * EN + cn] = st;
                st = expf(A_at(m, c, n) * dsum[k * E + c]) * st + Send[k * EN + cn];
            }
        }
    }
    // 3: every chunk again from its true input state: y and the checkpoints
    for (size_t k = 0; k < ns; k++) {
        int s, j;
        if (!chunk_of(m->so, m->n_seq, Q, k, &s, &j)) continue;
        int ta = m->so[s] + j * Q, L = m->so[s + 1] - ta < Q ? m->so[s + 1] - ta : Q;
        size_t m16 = slot_base(m->so, s, T) + (size_t)j * (Q / T);
        for (int c = 0; c < E; c++)
            for (int n = 0; n < N; n++)
                chunk_forward(m, ta, L, c, n, ck16[m16 * EN + (size_t)c * N + n], ys, ck16, m16);
    }
    for (int t = 0; t < m->n_tok; t++)
        for (int c = 0; c < E; c++)
            y[(size_t)t * E + c] = ys[(size_t)t * E + c] + m->D[c] * m->x[(size_t)t * m->ld_x + c];
    free(Send), free(dsum), free(ys);
}

// Gradients of the model's backward (dense, written; the CPU op's increments
// are compared with them).
typedef struct {
    float *dx, *ddraw, *dB, *dC, *ddtb, *dA_log, *dD;  // dx [n_tok, E], dB/dC [n_tok, N]
} model_grads;

// Chunk [ta, ta + L) of channel c, state n, in reverse from the adjoint h
// entering at its end: returns the adjoint leaving at its start. With g !=
// NULL the gradients too (states recomputed T positions at a time from ck16).
static float chunk_backward(const model_in *m, int ta, int L, int c, int n, float h, const float *ck16, size_t m16,
                            model_grads *g, float *pA, float *dxs, float *dds) {
    int N = m->N;
    float A = A_at(m, c, n);
    float S[T + 1];
    for (int q = (L - 1) / T; q >= 0; q--) {
        int tq = ta + q * T, Lq = L - q * T < T ? L - q * T : T;
        if (g) {
            S[0] = ck16[(m16 + q) * m->E * N + (size_t)c * N + n];
            for (int i = 0; i < Lq; i++) {
                int t = tq + i;
                float dl = delta_at(m, t, c);
                S[i + 1] = expf(dl * A) * S[i] + dl * m->x[(size_t)t * m->ld_x + c] * m->B[(size_t)t * m->ld_bc + n];
            }
        }
        for (int i = Lq - 1; i >= 0; i--) {
            int t = tq + i;
            float dl = delta_at(m, t, c), e = expf(dl * A), gy = m->dy[(size_t)t * m->E + c];
            float Bt = m->B[(size_t)t * m->ld_bc + n], Ct = m->C[(size_t)t * m->ld_bc + n];
            float hn = h + gy * Ct;  // adjoint of the state after position t
            if (g) {
                float xv = m->x[(size_t)t * m->ld_x + c];
                g->dC[(size_t)t * N + n] += gy * S[i + 1];
                g->dB[(size_t)t * N + n] += hn * dl * xv;
                dxs[(size_t)t * m->E + c] += hn * dl * Bt;
                float da = hn * S[i];
                dds[(size_t)t * m->E + c] += hn * Bt * xv + da * e * A;
                *pA += da * e * dl;
            }
            h = hn * e;
        }
    }
    return h;
}

static void model_backward(model_grads *g, const float *ck16, const model_in *m) {
    int E = m->E, N = m->N, Q = m->Q, n_tok = m->n_tok;
    size_t ns = n_slots(n_tok, m->n_seq, Q), EN = (size_t)E * N, per = EN + 2 * (size_t)E;
    float *R = xcalloc(ns * EN, sizeof(float)), *par = xcalloc(ns * per, sizeof(float));
    float *dxs = xcalloc((size_t)n_tok * E, sizeof(float)), *dds = xcalloc((size_t)n_tok * E, sizeof(float));
    // 4: every chunk in reverse from a zero adjoint
    for (size_t k = 0; k < ns; k++) {
        int s, j;
        if (!chunk_of(m->so, m->n_seq, Q, k, &s, &j)) continue;
        int ta = m->so[s] + j * Q, L = m->so[s + 1] - ta < Q ? m->so[s + 1] - ta : Q;
        for (int c = 0; c < E; c++)
            for (int n = 0; n < N; n++)
                R[k * EN + (size_t)c * N + n] = chunk_backward(m, ta, L, c, n, 0.0f, NULL, 0, NULL, NULL, NULL, NULL);
    }
    // 5: the adjoint carries, last chunk first (in place: L_j becomes R_j)
    for (int s = 0; s < m->n_seq; s++) {
        int t0 = m->so[s], len = m->so[s + 1] - t0, nch = (len + Q - 1) / Q;
        for (size_t cn = 0; cn < EN; cn++) {
            int c = (int)(cn / N), n = (int)(cn % N);
            float r = 0.0f;
            for (int j = nch - 1; j >= 0; j--) {
                size_t k = slot_base(m->so, s, Q) + j;
                int ta = t0 + j * Q, L = len - j * Q < Q ? len - j * Q : Q;
                float ds = 0.0f;  // the forward's ΣΔ of the chunk
                for (int i = 0; i < L; i++) ds += delta_at(m, ta + i, c);
                float l = R[k * EN + cn];
                R[k * EN + cn] = r;
                r = l + expf(A_at(m, c, n) * ds) * r;
            }
        }
    }
    // 6: every chunk in reverse from its true adjoint: the gradients, one
    // parameter partial per chunk
    for (size_t k = 0; k < ns; k++) {
        int s, j;
        if (!chunk_of(m->so, m->n_seq, Q, k, &s, &j)) continue;
        int ta = m->so[s] + j * Q, L = m->so[s + 1] - ta < Q ? m->so[s + 1] - ta : Q;
        size_t m16 = slot_base(m->so, s, T) + (size_t)j * (Q / T);
        for (int c = 0; c < E; c++) {
            for (int n = 0; n < N; n++)
                chunk_backward(m, ta, L, c, n, R[k * EN + (size_t)c * N + n], ck16, m16, g, &par[k * per + (size_t)c * N + n],
                               dxs, dds);
            for (int t = ta; t < ta + L; t++) {
                float gy = m->dy[(size_t)t * E + c], xv = m->x[(size_t)t * m->ld_x + c];
                float dr = dds[(size_t)t * E + c] * hax_dsoftplus(m->draw[(size_t)t * E + c] + m->dtb[c]);
                g->dx[(size_t)t * E + c] = dxs[(size_t)t * E + c] + gy * m->D[c];
                g->ddraw[(size_t)t * E + c] = dr;
                par[k * per + EN + c] += gy * xv;
                par[k * per + EN + E + c] += dr;
            }
        }
    }
    // 7: per sequence the chunk partials (in double, chunk order), each
    // sequence's sum rounded to float and added in sequence order
    for (size_t i = 0; i < per; i++) {
        float acc = 0.0f;
        double Ai = i < EN ? (double)A_at(m, (int)(i / N), (int)(i % N)) : 1.0;
        for (int s = 0; s < m->n_seq; s++) {
            int nch = (m->so[s + 1] - m->so[s] + Q - 1) / Q;
            double ps = 0.0;
            for (int j = 0; j < nch; j++) ps += par[(slot_base(m->so, s, Q) + j) * per + i];
            acc += (float)(ps * Ai);
        }
        if (i < EN) g->dA_log[i] = acc;
        else if (i < EN + E) g->dD[i - EN] = acc;
        else g->ddtb[i - EN - E] = acc;
    }
    free(R), free(par), free(dxs), free(dds);
}

// ---------------------------------------------------------------- against the CPU op

static float *rnd(size_t n, unsigned seed, float lo, float hi) {
    float *p = xmalloc(sizeof(float) * (n ? n : 1));
    test_fill(p, n, seed, 1.0f);
    for (size_t i = 0; i < n; i++) p[i] = lo + (p[i] + 1.0f) * 0.5f * (hi - lo);
    return p;
}

static double worst_fwd, worst_bwd;

static void expect(const char *what, const float *got, const float *want, size_t n, double tol, int Q) {
    double err = rel_err(got, want, n);
    double *worst = tol < 1e-4 ? &worst_fwd : &worst_bwd;
    if (err > *worst) *worst = err;
    CHECK(err <= tol, "Q %d: %s: relative error %.3e above %.0e", Q, what, err, tol);
}

static void run_case(const int *lens, int n_seq, int E, int N, int Q) {
    int *so = xmalloc(sizeof(int) * (n_seq + 1));
    so[0] = 0;
    for (int s = 0; s < n_seq; s++) so[s + 1] = so[s] + lens[s];
    int n = so[n_seq], ld_x = E + 3, ld_bc = 2 * N + 5;
    size_t nE = (size_t)n * E, EN = (size_t)E * N;
    unsigned sd = 100u * (unsigned)Q + (unsigned)N;
    float *x = rnd((size_t)n * ld_x, sd + 1, -1, 1), *draw = rnd(nE, sd + 2, -2, 1), *dtb = rnd(E, sd + 3, -2, -0.5f);
    float *Alog = rnd(EN, sd + 4, 0, 2.7f), *bc = rnd((size_t)n * ld_bc, sd + 5, -1, 1), *D = rnd(E, sd + 6, 0.5f, 1.5f);
    float *dy = rnd(nE, sd + 7, -1, 1);
    model_in m = {x, draw, dtb, Alog, bc, bc + N, D, dy, ld_x, ld_bc, so, n_seq, n, E, N, Q};

    float *y_ref = xmalloc(sizeof(float) * nE), *ck_ref = xmalloc(sizeof(float) * scan_ckpt_floats(n, n_seq, E, N));
    scan_forward(y_ref, ck_ref, x, ld_x, draw, dtb, Alog, bc, bc + N, ld_bc, D, so, n_seq, E, N);
    float *y = xmalloc(sizeof(float) * nE), *ck16 = xcalloc(n_slots(n, n_seq, T) * EN, sizeof(float));
    model_forward(y, ck16, &m);
    expect("y", y, y_ref, nE, 1e-5, Q);

    // CPU op: gradients accumulate into zeros (dx dense here: ld E)
    float *dx = xcalloc(nE, sizeof(float)), *ddr = xcalloc(nE, sizeof(float));
    float *dbc = xcalloc((size_t)n * 2 * N, sizeof(float));
    float *ddtb = xcalloc(E, sizeof(float)), *dA = xcalloc(EN, sizeof(float)), *dD = xcalloc(E, sizeof(float));
    scan_backward(dx, E, ddr, dbc, dbc + N, 2 * N, ddtb, dA, dD, dy, ck_ref, x, ld_x, draw, dtb, Alog, bc, bc + N,
                  ld_bc, D, so, n_seq, E, N);
    float *dB_ref = xmalloc(sizeof(float) * (size_t)n * N), *dC_ref = xmalloc(sizeof(float) * (size_t)n * N);
    for (int t = 0; t < n; t++)
        for (int k = 0; k < N; k++)
            dB_ref[(size_t)t * N + k] = dbc[(size_t)t * 2 * N + k], dC_ref[(size_t)t * N + k] = dbc[(size_t)t * 2 * N + N + k];
    model_grads g = {xcalloc(nE, sizeof(float)), xcalloc(nE, sizeof(float)), xcalloc((size_t)n * N, sizeof(float)),
                     xcalloc((size_t)n * N, sizeof(float)), xcalloc(E, sizeof(float)), xcalloc(EN, sizeof(float)),
                     xcalloc(E, sizeof(float))};
    model_backward(&g, ck16, &m);
    expect("dx", g.dx, dx, nE, 1e-4, Q);
    expect("ddraw", g.ddraw, ddr, nE, 1e-4, Q);
    expect("dB", g.dB, dB_ref, (size_t)n * N, 1e-4, Q);
    expect("dC", g.dC, dC_ref, (size_t)n * N, 1e-4, Q);
    expect("ddt_bias", g.ddtb, ddtb, E, 1e-4, Q);
    expect("dA_log", g.dA_log, dA, EN, 1e-4, Q);
    expect("dD", g.dD, dD, E, 1e-4, Q);

    void *p[] = {so, x, draw, dtb, Alog, bc, D, dy, y_ref, ck_ref, y, ck16, dx, ddr, dbc, ddtb, dA, dD, dB_ref, dC_ref,
                 g.dx, g.ddraw, g.dB, g.dC, g.ddtb, g.dA_log, g.dD};
    for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++) free(p[i]);
}

// Lengths around the chunk sizes 16, 32 and 64 and a paper-size one.
static const int k_lens[] = {1, 3, 17, 31, 32, 33, 64, 65, 130, 464};
#define K_NSEQ ((int)(sizeof(k_lens) / sizeof(k_lens[0])))

// The chunk table: every position in exactly one chunk, slots within the bound.
static void test_chunk_table(void) {
    int so[K_NSEQ + 1] = {0};
    for (int s = 0; s < K_NSEQ; s++) so[s + 1] = so[s] + k_lens[s];
    int Qs[] = {16, 32, CU_SCAN_Q};
    for (int qi = 0; qi < 3; qi++) {
        int Q = Qs[qi], covered = 0, ok = 1;
        size_t ns = n_slots(so[K_NSEQ], K_NSEQ, Q);
        for (size_t k = 0; k < ns; k++) {
            int s, j;
            if (!chunk_of(so, K_NSEQ, Q, k, &s, &j)) continue;
            int ta = so[s] + j * Q, L = so[s + 1] - ta < Q ? so[s + 1] - ta : Q;
            ok &= ta == covered && L > 0;
            covered += L;
        }
        CHECK(ok && covered == so[K_NSEQ], "Q %d: chunks cover %d of %d positions in order", Q, covered, so[K_NSEQ]);
    }
}

static void test_model_vs_cpu(void) {
    int Qs[] = {16, 32, CU_SCAN_Q};
    for (int qi = 0; qi < 3; qi++) {
        run_case(k_lens, K_NSEQ, 12, 16, Qs[qi]);
        run_case(k_lens, K_NSEQ, 5, 4, Qs[qi]);
    }
    run_case(k_lens, K_NSEQ, 3, 64, CU_SCAN_Q);
    int one[] = {200};  // one sequence, the packed batch's edge cases aside
    run_case(one, 1, 7, 8, CU_SCAN_Q);
    printf("    worst relative error: outputs %.2e, gradients %.2e\n", worst_fwd, worst_bwd);
}

int main(void) {
    RUN(test_chunk_table);
    RUN(test_model_vs_cpu);
    return test_summary();
}
