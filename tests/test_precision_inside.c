// test_precision_inside.c: bf16-pure inside the ops (issue 10, README
// "Precision"): the roundings the reference's PyTorch code makes between its
// ops (every op on bf16 tensors stores a bf16 tensor) inside hax's fused ops.
//
//  - The sparse branch (src/sparse) against a dense mirror written here op by
//    op as the reference runs it (MODEL.md §5.2-§5.6, on sequences padded to
//    L): KQ, K / sqrt(N), the LSH mean / normalize / projection, the key
//    selection's cumsum / normalize / MLP / top-k, the masked softmax over all
//    L keys (an empty row is uniform over L), the ranking targets and loss,
//    and the autograd backward of all of it (dP, d score, dQ, dK, dV, the two
//    shares of dX, the ranking loss's explicit backward and the MLP's). Each
//    mirror tensor is summed in double and rounded once, hax sums in float
//    (BLAS, lane orders): the bf16 results may then round one step apart
//    where a sum lies within a float ulp of a midpoint, rarely; the tests
//    count the elements that differ and bound them (one step; a few elements
//    more where a flipped share is summed with cancellation).
//  - The Enhanced merges (src/ops/gate.h) against the reference's tensor
//    sequence, elementwise: bit for bit.
//  - Samba's GatedMLP and attention (src/ops/mlp.h, attn.h) against dense
//    mirrors (flash-attention and the fused swiglu: fp32 inside, bf16 out).
//  - Tiny golden models (Mamba + HAX, Mamba-2 + HAX, Samba) through the CPU
//    engine in bf16-pure, forward and backward: every intermediate that the
//    ops now round is a bf16 value.
//  - The switch HAX_KS_CUMSUM_BF16_ACC (the key selection's running sum).
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "src/core/common.h"
#include "src/core/scalar.h"
#include "src/engine/case.h"
#include "src/engine/engine.h"
#include "src/engine/internal.h"
#include "src/io/safetensors.h"
#include "src/model/model.h"
#include "src/ops/attn.h"
#include "src/ops/basic.h"
#include "src/ops/gate.h"
#include "src/ops/mlp.h"
#include "src/sparse/ks.h"
#include "src/sparse/sparse.h"
#include "golden_engine.h"
#include "sparse_case.h"
#include "test.h"

static inline float R(float x) { return hax_bf16_round(x); }

static float Rd(double x) { return R((float)x); }

static void round_all(float *x, size_t n) { round_bf16(x, x, (long)n); }

// Elements of x[0..n) that are not bf16 values.
static long not_bf16(const float *x, size_t n) {
    long bad = 0;
    for (size_t i = 0; i < n; i++) bad += R(x[i]) != x[i] && x[i] == x[i];
    return bad;
}

// hax's bf16 tensor against the mirror's (both bf16 values, rows of width w
// at leading dimensions lda / ldb): elements that differ and those more than
// one bf16 step apart, bounded by the fractions max_diff / max_far.
static void cmp_bf16(const char *what, const float *a, int lda, const float *b, int ldb, int rows, int w,
                     double max_diff, double max_far) {
    size_t n = (size_t)rows * w, diff = 0, far = 0, bad = 0;
    long worst = 0;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < w; j++) {
            float x = a[(size_t)r * lda + j], y = b[(size_t)r * ldb + j];
            bad += R(x) != x || R(y) != y;
            long u = bf16_ulps(x, y);
            diff += u != 0, far += u > 1;
            if (u > worst) worst = u;
        }
    printf("    %-34s %zu of %zu differ, %zu by > 1 step (worst %ld)\n", what, diff, n, far, worst);
    CHECK(bad == 0, "%s: %zu values are not bf16 values", what, bad);
    CHECK(diff <= max_diff * n, "%s: %zu of %zu differ, expected at most %.3g of them", what, diff, n, max_diff);
    CHECK(far <= max_far * n, "%s: %zu of %zu beyond one step, expected at most %.3g", what, far, n, max_far);
}

// ---------------------------------------------------------------- the sparse branch's mirror

// What the mirror computes for the whole packed batch (rows packed as the
// batch; every tensor a bf16 value).
typedef struct {
    float *KQ;        // [n_tok, 2N] K scaled | Q
    int *qb, *kb;     // [n_tok] LSH buckets (-1 without LSH)
    float *score;     // [n_tok] key score (KS)
    unsigned char *allow;  // [n_tok, L] allowed keys (local positions)
    float *P;         // [n_tok, L] softmax probabilities
    float *attn;      // [n_tok, E]
    double *y;        // [n_seq, k_c] ranking targets
    double gate;      // the ranking-loss partial sum (sum over sequences of the means)
    float *dX;        // [n_tok, E] (from zero)
    double *dW;       // [2N, E]
    double *dks;      // [NPARAM]
} mirror;

static void mirror_free(mirror *m) {
    free(m->KQ), free(m->qb), free(m->kb), free(m->score), free(m->allow), free(m->P), free(m->attn);
    free(m->y), free(m->dX), free(m->dW), free(m->dks);
}

// LSH buckets of one padded sequence of x (n real rows, ld ldx, L - n pad
// rows of 0): the reference's mean, centring, F.normalize over the sequence
// axis and projection, each a bf16 op (MODEL.md §5.4).
static void mirror_lsh(int *bucket, const float *x, int ldx, int n, const float *H) {
    int L = L_PAD;
    float xt[L_PAD][NN];
    for (int f = 0; f < NN; f++) {
        double sum = 0;
        for (int t = 0; t < L; t++) sum += t < n ? x[(size_t)t * ldx + f] : 0.0;
        float mu = R((float)sum * (1.0f / (float)L));
        double v = 0;
        for (int t = 0; t < L; t++) {
            float c = R((t < n ? x[(size_t)t * ldx + f] : 0.0f) - mu);
            v += (double)c * c;
        }
        float den = R(fmaxf(R(sqrtf((float)v)), 1e-12f));
        for (int t = 0; t < n; t++) xt[t][f] = R(R(x[(size_t)t * ldx + f] - mu) / den);
    }
    for (int t = 0; t < n; t++) {
        int code = 0;
        for (int i = 0; i < HB; i++) {
            double p = 0;
            for (int f = 0; f < NN; f++) p += (double)xt[t][f] * H[f * HB + i];
            if (Rd(p) > 0) code |= 1 << i;
        }
        bucket[t] = code;
    }
}

// The key-score MLP of one row T [2N] (each layer's output a bf16 tensor).
static float mirror_mlp(const float *T, const float *p, float *h1, float *h2) {
    int D = 2 * NN;
    const float *w1 = p, *b1 = p + D * D, *w2 = b1 + D, *b2 = w2 + D * D, *w3 = b2 + D, *b3 = w3 + D;
    for (int o = 0; o < D; o++) {
        double s = b1[o];
        for (int i = 0; i < D; i++) s += (double)w1[o * D + i] * T[i];
        h1[o] = fmaxf(Rd(s), 0.0f);
    }
    for (int o = 0; o < D; o++) {
        double s = b2[o];
        for (int i = 0; i < D; i++) s += (double)w2[o * D + i] * h1[i];
        h2[o] = fmaxf(Rd(s), 0.0f);
    }
    double s = b3[0];
    for (int i = 0; i < D; i++) s += (double)w3[i] * h2[i];
    return Rd(s);
}

// The mirror of the whole branch for tcase c in bf16 (reference semantics,
// training), backward with dattn = c->R and gate_scale.
static void mirror_run(const tcase *c, mirror *m, float gate_scale, int bf16_acc) {
    const hax_model_config *cfg = &c->cfg;
    int N = NN, E = EE, L = L_PAD, D = 2 * N, kc = cfg->k_c, n_tok = c->n_tok, n_seq = c->b.n_seq;
    unsigned mask = cfg->sparse_mask;
    int lsh = sparse_pattern_has(mask, SPF_LSH), ks = sparse_pattern_has(mask, SPF_KS_WEIGHTS);
    int full = sparse_pattern_has(mask, SPF_DENSE);
    float inv = 1.0f / (float)sqrt((double)N);
    memset(m, 0, sizeof *m);
    m->KQ = xcalloc((size_t)n_tok * D, sizeof(float));
    m->qb = xmalloc(sizeof(int) * n_tok), m->kb = xmalloc(sizeof(int) * n_tok);
    m->score = xcalloc(n_tok, sizeof(float));
    m->allow = xcalloc((size_t)n_tok * L, 1);
    m->P = xcalloc((size_t)n_tok * L, sizeof(float));
    m->attn = xcalloc((size_t)n_tok * E, sizeof(float));
    m->y = xcalloc((size_t)n_seq * (kc > 0 ? kc : 1), sizeof(double));
    m->dX = xcalloc((size_t)n_tok * E, sizeof(float));
    m->dW = xcalloc((size_t)D * E, sizeof(double));
    m->dks = xcalloc(NPARAM, sizeof(double));
    const float *X = c->X, *W = c->W;
    for (int s = 0; s < n_seq; s++) {
        int o = c->seq_off[s], n = c->seq_off[s + 1] - o;
        float *KQ = m->KQ + (size_t)o * D;
        // KQ = X W_xx^T (a bf16 GEMM); K = KQ_k / sqrt(N), torch's reciprocal multiplication
        for (int t = 0; t < n; t++)
            for (int f = 0; f < D; f++) {
                double a = 0;
                for (int e = 0; e < E; e++) a += (double)X[(size_t)(o + t) * LDX + e] * W[f * E + e];
                KQ[t * D + f] = Rd(a);
                if (f < N) KQ[t * D + f] = R(KQ[t * D + f] * inv);
            }
        for (int t = 0; t < n; t++) m->qb[o + t] = m->kb[o + t] = -1;
        if (lsh) {
            mirror_lsh(m->qb + o, KQ + N, D, n, c->Hm);
            mirror_lsh(m->kb + o, KQ, D, n, c->Hm);
        }
        // key selection: features on the padded sequence, MLP, cumulative top-k
        float T[L_PAD][2 * NN], H1[L_PAD][2 * NN], H2[L_PAD][2 * NN];
        if (ks) {
            float acc[NN] = {0}, C[L_PAD][NN];
            double w2[NN] = {0};
            for (int t = 0; t < L; t++)
                for (int f = 0; f < N; f++) {
                    float q = t < n ? KQ[t * D + N + f] : 0.0f;
                    acc[f] = bf16_acc ? R(acc[f] + q) : acc[f] + q;
                    C[t][f] = R(acc[f]);
                    w2[f] += (double)C[t][f] * C[t][f];
                }
            for (int t = 0; t < n; t++) {
                for (int f = 0; f < N; f++) {
                    T[t][f] = KQ[t * D + f];
                    T[t][N + f] = R(C[t][f] / R(fmaxf(R(sqrtf((float)w2[f])), 1e-12f)));
                }
                m->score[o + t] = mirror_mlp(T[t], c->ksp, H1[t], H2[t]);
            }
        }
        // the union of the components
        for (int t = 0; t < n; t++) {
            unsigned char *al = m->allow + (size_t)(o + t) * L;
            if (full)
                for (int j = 0; j <= t; j++) al[j] = 1;
            if ((mask & SPARSE_SLIDING_WINDOW))
                for (int j = t - kc + 1 < 0 ? 0 : t - kc + 1; j <= t; j++) al[j] = 1;
            if ((mask & SPARSE_SINK))
                for (int j = 0; j <= t && j < kc; j++) al[j] = 1;
            if (mask & SPARSE_DILATED)  // every delta-th key, delta = data_max_length / k_c
                for (int j = 0; j <= t; j++) al[j] |= j % (cfg->data_max_length / kc) == cfg->data_max_length / kc - 1;
            if (lsh) {  // the k_c most recent earlier keys of the query's bucket
                int got = 0;
                for (int j = t; j >= 0 && got < kc; j--)
                    if (m->kb[o + j] == m->qb[o + t]) al[j] = 1, got++;
            }
            if (ks) {  // the k_c best scores among j <= t (ties: the lower index)
                unsigned char taken[L_PAD] = {0};
                for (int r = 0; r < kc && r <= t; r++) {
                    int best = -1;
                    for (int j = 0; j <= t; j++)
                        if (!taken[j] && (best < 0 || m->score[o + j] > m->score[o + best])) best = j;
                    taken[best] = 1, al[best] = 1;
                }
            }
        }
        // the masked softmax over all L keys, attn = P V
        for (int t = 0; t < n; t++) {
            const unsigned char *al = m->allow + (size_t)(o + t) * L;
            float *P = m->P + (size_t)(o + t) * L, sc[L_PAD], mx = -INFINITY;
            int any = 0;
            for (int j = 0; j < L; j++) {
                if (!al[j]) continue;
                double a = 0;
                for (int f = 0; f < N; f++) a += (double)KQ[t * D + N + f] * KQ[j * D + f];
                sc[j] = Rd(a), any = 1;
                if (sc[j] > mx) mx = sc[j];
            }
            double sum = 0;
            for (int j = 0; j < L; j++)
                if (al[j]) sum += expf(sc[j] - mx);
            for (int j = 0; j < L; j++)  // a row with no allowed key: all scores finfo.min, uniform
                P[j] = !any ? R(1.0f / (float)L) : al[j] ? R(expf(sc[j] - mx) / (float)sum) : 0.0f;
            for (int e = 0; e < E; e++) {
                double a = 0;
                for (int j = 0; j < n; j++) a += (double)P[j] * X[(size_t)(o + j) * LDX + e];
                m->attn[(size_t)(o + t) * E + e] = Rd(a);
            }
        }
        // ranking targets and loss (candidates as the test gives them)
        const int *I = c->cand + (size_t)s * (kc > 0 ? kc : 1);
        int mc = 0;
        while (ks && mc < kc && I[mc] >= 0) mc++;
        double *y = m->y + (size_t)s * (kc > 0 ? kc : 1);
        for (int a = 0; a < mc; a++) {
            double sum = 0;
            for (int t = I[a]; t < n; t++) {
                double dot = 0;
                for (int f = 0; f < N; f++) dot += (double)KQ[t * D + N + f] * KQ[I[a] * D + f];
                sum += R(hax_sigmoid(Rd(dot)));
            }
            y[a] = Rd(sum + 0.5 * (L - n));  // each pad query: sigmoid(0)
        }
        double lsum = 0;
        for (int a = 0; a < mc; a++)
            for (int b = 0; b < mc; b++) {
                float P = R(m->score[o + I[a]] - m->score[o + I[b]]);
                float Tt = y[a] > y[b] ? 1.0f : y[a] == y[b] ? 0.5f : 0.0f;
                float logsig = R(fminf(P, 0.0f) - log1pf(expf(-fabsf(P))));
                lsum += R(R((1.0f - Tt) * P) - logsig);
            }
        if (mc) m->gate += lsum / ((double)mc * mc);
        // ---- backward: dP = dattn V^T, softmax backward, the score GEMM's dQ / dK, dV = P^T dattn
        const float *dat = c->R + (size_t)o * E;
        float ds[L_PAD][L_PAD] = {{0}}, dKQ[L_PAD][2 * NN];
        for (int t = 0; t < n; t++) {
            const float *P = m->P + (size_t)(o + t) * L;
            float dP[L_PAD];
            double Dt = 0;
            for (int j = 0; j < L; j++) {
                double a = 0;
                for (int e = 0; e < E && j < n; e++) a += (double)dat[t * E + e] * X[(size_t)(o + j) * LDX + e];
                dP[j] = Rd(a);
                Dt += (double)P[j] * dP[j];
            }
            for (int j = 0; j < L; j++) ds[t][j] = R(P[j] * (dP[j] - (float)Dt));
        }
        for (int t = 0; t < n; t++)
            for (int f = 0; f < N; f++) {
                double q = 0, k = 0;
                for (int j = 0; j < n; j++) q += (double)ds[t][j] * KQ[j * D + f];
                for (int u = 0; u < n; u++) k += (double)ds[u][t] * KQ[u * D + N + f];
                dKQ[t][N + f] = Rd(q);
                dKQ[t][f] = R(Rd(k) * inv);  // through K = KQ_k / sqrt(N)
            }
        for (int j = 0; j < n; j++)
            for (int e = 0; e < E; e++) {
                double v = 0, x = 0;
                for (int t = 0; t < n; t++) v += (double)m->P[(size_t)(o + t) * L + j] * dat[t * E + e];
                for (int f = 0; f < D; f++) x += (double)dKQ[j][f] * W[f * E + e];
                // dX's two shares, each a bf16 tensor, summed in bf16 (from zero)
                m->dX[(size_t)(o + j) * E + e] = R(Rd(v) + Rd(x));
            }
        for (int f = 0; f < D; f++)
            for (int e = 0; e < E; e++)
                for (int t = 0; t < n; t++) m->dW[f * E + e] += (double)dKQ[t][f] * X[(size_t)(o + t) * LDX + e];
        // the ranking loss's backward (the explicit BCE-with-logits backward,
        // the mean, the broadcast subtraction's two sums) and the MLP's
        if (!mc) continue;
        float inv_m2 = 1.0f / (float)(mc * mc), dPm[L_PAD][L_PAD];
        for (int a = 0; a < mc; a++)
            for (int b = 0; b < mc; b++) {
                float P = R(m->score[o + I[a]] - m->score[o + I[b]]);
                float Tt = y[a] > y[b] ? 1.0f : y[a] == y[b] ? 0.5f : 0.0f;
                dPm[a][b] = R(R(R(R(hax_sigmoid(P)) - Tt) * gate_scale) * inv_m2);
            }
        const float *w2p = c->ksp + D * D + D, *w3p = w2p + D * D + D;
        double *gw1 = m->dks, *gb1 = gw1 + D * D, *gw2 = gb1 + D, *gb2 = gw2 + D * D, *gw3 = gb2 + D, *gb3 = gw3 + D;
        for (int a = 0; a < mc; a++) {
            double row = 0, col = 0;
            for (int b = 0; b < mc; b++) row += dPm[a][b], col += dPm[b][a];
            float dx = R(Rd(row) + Rd(-col));
            int t = I[a];
            float dh2[2 * NN], dh1[2 * NN];
            for (int i = 0; i < D; i++) {
                dh2[i] = H2[t][i] > 0 ? R(dx * w3p[i]) : 0.0f;
                gw3[i] += (double)dx * H2[t][i];
            }
            gb3[0] += dx;
            for (int i = 0; i < D; i++) {
                double a2 = 0;
                for (int o2 = 0; o2 < D; o2++) a2 += (double)dh2[o2] * w2p[o2 * D + i];
                dh1[i] = H1[t][i] > 0 ? Rd(a2) : 0.0f;
            }
            for (int o2 = 0; o2 < D; o2++) {
                gb2[o2] += dh2[o2], gb1[o2] += dh1[o2];
                for (int i = 0; i < D; i++) {
                    gw2[o2 * D + i] += (double)dh2[o2] * H1[t][i];
                    gw1[o2 * D + i] += (double)dh1[o2] * T[t][i];
                }
            }
        }
    }
}

// Rounded copies of double gradients (a parameter's .grad is bf16).
static float *rounded(const double *g, size_t n) {
    float *r = xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) r[i] = Rd(g[i]);
    return r;
}

// One pattern: hax's branch in bf16-pure against the mirror. Found: every
// tensor equal on this case; the bounds leave room for a float sum (hax's)
// that rounds a bf16 step apart from the mirror's double one.
static void check_branch(const char *pattern) {
    tcase c;
    make_case(&c, pattern, SEMANTICS_REFERENCE, 5, LENS, NSEQ);
    c.cfg.precision = PREC_BF16_PURE;
    float *ins[] = {c.X, c.W, c.Hm, c.ksp, c.R};
    size_t lens[] = {(size_t)c.n_tok * LDX, 2 * NN * EE, NN * HB, NPARAM, (size_t)c.n_tok * EE};
    for (int i = 0; i < 5; i++) round_all(ins[i], lens[i]);
    float gate_scale = R(0.1f) / (float)NSEQ;
    tresult r;
    hax_sparse_state *st = run_impl(&c, &r, gate_scale, 1);
    mirror m;
    mirror_run(&c, &m, gate_scale, 1);
    int n = c.n_tok, D = 2 * NN;
    printf("  %s\n", pattern);
    cmp_bf16("KQ", st->KQ, D, m.KQ, D, n, D, 0.02, 0);
    int bmis = 0, lmis = 0;
    for (int g = 0; g < n; g++) bmis += st->q_bucket[g] != m.qb[g] || st->k_bucket[g] != m.kb[g];
    CHECK(bmis == 0, "%s: %d rows' LSH buckets differ from the mirror's", pattern, bmis);
    // the allowed lists, and P on them
    float *hp = xcalloc((size_t)n * L_PAD, sizeof(float));
    int full = sparse_pattern_has(c.cfg.sparse_mask, SPF_DENSE);
    for (int s = 0; s < NSEQ; s++)
        for (int g = c.seq_off[s]; g < c.seq_off[s + 1]; g++) {
            int cnt = full ? g - c.seq_off[s] + 1 : st->allow_off[g + 1] - st->allow_off[g], same = 1;
            for (int i = 0; i < cnt && !full; i++) {
                int j = st->allow_key[st->allow_off[g] + i];
                same &= m.allow[(size_t)g * L_PAD + j];
                hp[(size_t)g * L_PAD + j] = st->allow_p[st->allow_off[g] + i];
            }
            int mc = 0;
            for (int j = 0; j < L_PAD; j++) mc += m.allow[(size_t)g * L_PAD + j];
            lmis += !same || mc != cnt;
            if (cnt == 0)  // an empty row: uniform over L
                for (int j = 0; j < L_PAD; j++) hp[(size_t)g * L_PAD + j] = R(1.0f / L_PAD);
        }
    CHECK(lmis == 0, "%s: %d rows' allowed keys differ from the mirror's", pattern, lmis);
    if (!full) cmp_bf16("P", hp, L_PAD, m.P, L_PAD, n, L_PAD, 0.02, 0);
    if (st->ks) {
        cmp_bf16("key score", st->ks->score, 1, m.score, 1, n, 1, 0.02, 0);
        CHECK(not_bf16(st->ks->T, (size_t)n * D) == 0 && not_bf16(st->ks->h1, (size_t)n * D) == 0 &&
                  not_bf16(st->ks->h2, (size_t)n * D) == 0,
              "%s: key-selection features or activations not bf16", pattern);
        size_t ny = (size_t)NSEQ * c.cfg.k_c, ydiff = 0;
        for (size_t i = 0; i < ny; i++) ydiff += st->ks->y[i] != m.y[i];
        printf("    %-34s %zu of %zu differ\n", "ranking targets", ydiff, ny);
        CHECK(ydiff == 0, "%s: %zu ranking targets differ from the mirror's", pattern, ydiff);
        CHECK(fabs(r.gate - m.gate) <= 1e-6 * fabs(m.gate), "%s: gate loss %.9g vs the mirror's %.9g", pattern,
              r.gate, m.gate);
        float *dks = rounded(m.dks, NPARAM), *hks = xmalloc(sizeof(float) * NPARAM);
        for (int i = 0; i < NPARAM; i++) hks[i] = R(r.dks[i]);
        cmp_bf16("d dx_proj_* (rounded)", hks, 1, dks, 1, NPARAM, 1, 0.05, 0.02);
        free(dks), free(hks);
    }
    cmp_bf16("attn", r.attn, EE, m.attn, EE, n, EE, 0.02, 0);
    cmp_bf16("dX", r.dX, LDX, m.dX, EE, n, EE, 0.05, 0.01);
    float *dW = rounded(m.dW, 2 * NN * EE), *hW = xmalloc(sizeof(float) * 2 * NN * EE);
    for (int i = 0; i < 2 * NN * EE; i++) hW[i] = R(r.dW[i]);
    cmp_bf16("dW_xx (rounded)", hW, EE, dW, EE, 2 * NN, EE, 0.05, 0.01);
    free(dW), free(hW), free(hp);
    mirror_free(&m);
    free_result(&r);
    sparse_state_free(st);
    free_case(&c);
}

static void test_branch_hax(void) { check_branch("sign_bin_lsh+key_selection"); }
static void test_branch_key_selection(void) { check_branch("key_selection"); }
static void test_branch_window_sink(void) { check_branch("sliding_window+sink"); }
static void test_branch_full(void) { check_branch("full"); }
// Empty rows (LSH queries without an earlier key of their bucket, dilated
// queries before the first dilated key): uniform over all L, dense backward.
static void test_branch_empty_rows(void) {
    check_branch("sign_bin_lsh");
    check_branch("dilated");
}

// The bf16-pure score Q_t . K_j is one float sum over the features in order
// (the CUDA engine's expression; src/sparse/attn.c dot_seq). N = 16; query 1
// against key 0 has the products a_0 = a_1 = 2^-24, a_4 = 1.0625^2 =
// 1 + 2^-3 + 2^-8 (a bf16 rounding tie), the rest 0: in order 2^-24 + 2^-24
// is exact and lifts the tie to 1.1328125; a 4-lane vector sum (lane 0: a_0
// + a_4, the tie kept, then the lanes added: gcc's omp simd dot_f) rounds it
// to even, 1.125. In the Mamba+HAX golden such a score moved one P of layer
// 0 and, through layer 1's K, the ranking loss's dx_proj gradients. The same
// case in `full`'s forward (its row log-sum-exp).
static void test_score_order(void) {
    enum { N = 16, E = EE, n = 2 };
    hax_model_config cfg = {0};
    cfg.state_size = N, cfg.intermediate_size = E, cfg.sparse_keys = KEYS, cfg.num_hash = HB;
    cfg.data_max_length = DML, cfg.semantics = SEMANTICS_REFERENCE, cfg.precision = PREC_BF16_PURE;
    char err[200];
    if (model_config_set_sparse(&cfg, "sliding_window", err, sizeof err)) hax_die("%s", err);
    int seq_off[2] = {0, n};
    hax_batch b = {0};
    b.n_seq = 1, b.n_tok = n, b.seq_off = seq_off, b.model_len = L_PAD, b.global_n_seq = 1;
    // KQ_t = X_t W^T with X_t the unit row t: KQ_t[col] = W[col][t]; K = KQ_k / 4
    float X[n * LDX] = {0}, W[2 * N * E] = {0}, attn[n * E];
    X[0] = 1.0f, X[LDX + 1] = 1.0f;
    float v[N] = {0};
    v[0] = v[1] = 0x1p-12f, v[4] = 1.0625f;
    for (int f = 0; f < N; f++) W[f * E + 0] = 4.0f * v[f], W[(N + f) * E + 1] = v[f];
    hax_sparse_state *st = sparse_state_alloc(&cfg, n, 1, L_PAD);
    sparse_forward(st, &cfg, &b, X, LDX, W, NULL, NULL, NULL, 0, attn, E);
    float s_in = 0, lane[4] = {0}, s_lane = 0;
    for (int f = 0; f < N; f++) s_in += v[f] * v[f], lane[f % 4] += v[f] * v[f];
    for (int l = 0; l < 4; l++) s_lane += lane[l];
    s_in = R(s_in), s_lane = R(s_lane);
    CHECK(s_in == 1.1328125f && s_lane == 1.125f, "score_order: the case lost its tie (%g, %g)", s_in, s_lane);
    // row 1: keys 0 and 1 (score 0: K_1 = 0), P = R(exp(s - max) / sum)
    int off = st->allow_off[1];
    CHECK(st->allow_off[2] - off == 2 && st->allow_key[off] == 0 && st->allow_key[off + 1] == 1,
          "score_order: expected keys 0 and 1 for query 1");
    float e1 = expf(0.0f - s_in), e1l = expf(0.0f - s_lane);
    double sum = 1.0 + e1, suml = 1.0 + e1l;
    float p0 = R(1.0f / (float)sum), p1 = R(e1 / (float)sum);
    CHECK(R(1.0f / (float)suml) != p0, "score_order: the two orders give the same P");
    CHECK(st->allow_p[off] == p0 && st->allow_p[off + 1] == p1,
          "score_order: P of query 1: expected %g %g (in-order score %g), found %g %g", p0, p1, s_in,
          st->allow_p[off], st->allow_p[off + 1]);
    printf("  score in order %g (4 lanes: %g), P %g %g\n", s_in, s_lane, p0, p1);
    sparse_state_free(st);
    // `full`'s forward scores too (its log-sum-exp: max + log of the double sum)
    if (model_config_set_sparse(&cfg, "full", err, sizeof err)) hax_die("%s", err);
    st = sparse_state_alloc(&cfg, n, 1, L_PAD);
    sparse_forward(st, &cfg, &b, X, LDX, W, NULL, NULL, NULL, 0, attn, E);
    float lse = s_in + (float)log(sum), lsel = s_lane + (float)log(suml);
    CHECK(lse != lsel, "score_order: the two orders give the same log-sum-exp");
    CHECK(st->lse[1] == lse, "score_order: full: log-sum-exp of query 1: expected %.9g, found %.9g", lse, st->lse[1]);
    sparse_state_free(st);
}

// The bf16-pure dP_tj = dattn_t . V_j is the CUDA engine's warp dot product
// (src/sparse/attn.c dot_warp; cuda/sparse/attn.cu, attn_gather.cu): lane l
// of 32 sums the products of elements l, l + 32, ..., then the butterfly
// adds lane l ^ o for o = 16, 8, 4, 2, 1. E = 24; dattn_1 = V_0 = v with
// products a_0 = a_16 = 2^-24 and a_8 = 1.0625^2 (a bf16 rounding tie), the
// rest 0. The warp adds lanes 0 and 16 first (2^-23, exact) and lifts the tie
// to 1.1328125; in order (a_0 + a_8 keeps the tie, then a_16 is lost too) and
// in 4 lanes (lane 0 adds a_0, a_8, a_16 in that order: gcc's omp simd dot_f)
// the sum rounds to even, 1.125. W = 0, so every score is 0 and query 1 has
// P = 0.5 on keys 0 and 1; V_1 = 0, so dP_1 = 0 and D = dP_0 / 2. Seen in
// d score (sparse patterns: ds_0 = R(0.5 (dP_0 - D)) = dP_0 / 4) and in
// `full`'s row sum D (rowD). Mamba+HAX's bf16 golden has 3 such dP in layer 0.
static void dp_order_case(const char *pattern, float dp_warp) {
    enum { N = NN, E = 24, n = 2 };
    hax_model_config cfg = {0};
    cfg.state_size = N, cfg.intermediate_size = E, cfg.sparse_keys = KEYS, cfg.num_hash = HB;
    cfg.data_max_length = DML, cfg.semantics = SEMANTICS_REFERENCE, cfg.precision = PREC_BF16_PURE;
    char err[200];
    if (model_config_set_sparse(&cfg, pattern, err, sizeof err)) hax_die("%s", err);
    int seq_off[2] = {0, n};
    hax_batch b = {0};
    b.n_seq = 1, b.n_tok = n, b.seq_off = seq_off, b.model_len = L_PAD, b.global_n_seq = 1;
    float X[n * E] = {0}, dattn[n * E] = {0}, W[2 * N * E] = {0}, attn[n * E], dX[n * E] = {0}, dW[2 * N * E] = {0};
    X[0] = X[16] = 0x1p-12f, X[8] = 1.0625f;  // V_0 = v
    memcpy(dattn + E, X, sizeof(float) * E);  // dattn_1 = v
    hax_sparse_state *st = sparse_state_alloc(&cfg, n, 1, L_PAD);
    sparse_forward(st, &cfg, &b, X, E, W, NULL, NULL, NULL, 0, attn, E);
    sparse_backward(st, &cfg, &b, dattn, E, 0.0f, X, E, W, NULL, dX, E, dW, NULL);
    if (sparse_pattern_has(cfg.sparse_mask, SPF_DENSE)) {
        CHECK(R(expf(0.0f - st->lse[1])) == 0.5f, "dp_order %s: expected P = 0.5 on query 1", pattern);
        CHECK(st->rowD[1] == 0.5f * dp_warp, "dp_order %s: D of query 1: expected %g (dP %g), found %g", pattern,
              0.5f * dp_warp, dp_warp, st->rowD[1]);
        printf("  %s: D %g\n", pattern, st->rowD[1]);
    } else {
        int off = st->allow_off[1];
        CHECK(st->allow_off[2] - off == 2 && st->allow_key[off] == 0 && st->allow_key[off + 1] == 1,
              "dp_order %s: expected keys 0 and 1 for query 1", pattern);
        CHECK(st->allow_p[off] == 0.5f && st->allow_p[off + 1] == 0.5f, "dp_order %s: expected P = 0.5", pattern);
        CHECK(st->allow_ds[off] == 0.25f * dp_warp && st->allow_ds[off + 1] == -0.25f * dp_warp,
              "dp_order %s: d score of query 1: expected %g %g (dP %g), found %g %g", pattern, 0.25f * dp_warp,
              -0.25f * dp_warp, dp_warp, st->allow_ds[off], st->allow_ds[off + 1]);
        printf("  %s: d score %g %g\n", pattern, st->allow_ds[off], st->allow_ds[off + 1]);
    }
    sparse_state_free(st);
}

static void test_dp_order(void) {
    enum { E = 24 };
    float v[E] = {0};
    v[0] = v[16] = 0x1p-12f, v[8] = 1.0625f;
    // the three orders, written out here: in order, 4 lanes, the warp's butterfly
    float s_in = 0, lane4[4] = {0}, s_lane = 0, warp[32] = {0};
    for (int e = 0; e < E; e++) s_in += v[e] * v[e], lane4[e % 4] += v[e] * v[e], warp[e % 32] += v[e] * v[e];
    s_lane = (lane4[0] + lane4[1]) + (lane4[2] + lane4[3]);
    for (int o = 16; o > 0; o >>= 1) {
        float next[32];
        for (int l = 0; l < 32; l++) next[l] = warp[l] + warp[l ^ o];  // __shfl_xor_sync
        memcpy(warp, next, sizeof warp);
    }
    float dp_in = R(s_in), dp_lane = R(s_lane), dp_warp = R(warp[0]);
    CHECK(dp_warp == 1.1328125f && dp_in == 1.125f && dp_lane == 1.125f,
          "dp_order: the case lost its tie (warp %g, in order %g, 4 lanes %g)", dp_warp, dp_in, dp_lane);
    printf("  dP warp %g (in order %g, 4 lanes %g)\n", dp_warp, dp_in, dp_lane);
    dp_order_case("sliding_window", dp_warp);
    dp_order_case("full", dp_warp);
}

// The running sum's accumulator: bf16 by default, fp32 with
// HAX_KS_CUMSUM_BF16_ACC=0 (each against the mirror in that mode); another
// value stops the program with one line.
static void test_cumsum_switch(void) {
    CHECK(ks_cumsum_bf16_acc() == 1, "default: expected the bf16 accumulator");
    setenv("HAX_KS_CUMSUM_BF16_ACC", "0", 1);
    CHECK(ks_cumsum_bf16_acc() == 0, "HAX_KS_CUMSUM_BF16_ACC=0: expected the fp32 accumulator");
    tcase c;
    make_case(&c, "key_selection", SEMANTICS_REFERENCE, 9, LENS, NSEQ);
    c.cfg.precision = PREC_BF16_PURE;
    round_all(c.X, (size_t)c.n_tok * LDX), round_all(c.W, 2 * NN * EE), round_all(c.ksp, NPARAM);
    float *T[2];
    for (int acc = 0; acc < 2; acc++) {
        int D = 2 * NN;
        T[acc] = xmalloc(sizeof(float) * c.n_tok * D);
        float *KQ = xmalloc(sizeof(float) * c.n_tok * D);
        for (int g = 0; g < c.n_tok; g++)  // any bf16 K and Q
            for (int f = 0; f < D; f++) KQ[g * D + f] = R(c.X[g * LDX + f % EE] * (f < NN ? 3.0f : 7.0f));
        ks_features_bf16(T[acc], KQ, D, KQ + NN, D, c.seq_off, NSEQ, L_PAD, NN, acc);
        // the mirror's features for this accumulator
        for (int s = 0; s < NSEQ; s++) {
            int o = c.seq_off[s], n = c.seq_off[s + 1] - o;
            for (int f = 0; f < NN; f++) {
                float a = 0, C[L_PAD];
                double w2 = 0;
                for (int t = 0; t < L_PAD; t++) {
                    float q = t < n ? KQ[(o + t) * D + NN + f] : 0.0f;
                    a = acc ? R(a + q) : a + q;
                    C[t] = R(a), w2 += (double)C[t] * C[t];
                }
                float den = R(fmaxf(R(sqrtf((float)w2)), 1e-12f));
                for (int t = 0; t < n; t++) {
                    float want = R(C[t] / den), got = T[acc][(o + t) * D + NN + f];
                    CHECK(got == want, "accumulator %d: TQ[%d][%d] %.9g, mirror %.9g", acc, o + t, f, got, want);
                }
            }
        }
        free(KQ);
    }
    int differ = 0;
    for (int i = 0; i < c.n_tok * 2 * NN; i++) differ += T[0][i] != T[1][i];
    printf("    features that differ between the bf16 and fp32 accumulators: %d of %d\n", differ, c.n_tok * 2 * NN);
    CHECK(differ > 0, "the two accumulators gave the same features (the case does not tell them apart)");
    free(T[0]), free(T[1]);
    // the sparse forward picks the mode up from the environment
    tresult r;
    hax_sparse_state *st = run_impl(&c, &r, 0.01f, 0);
    unsetenv("HAX_KS_CUMSUM_BF16_ACC");
    tresult r2;
    hax_sparse_state *st2 = run_impl(&c, &r2, 0.01f, 0);
    int tq_differ = 0;
    for (int i = 0; i < c.n_tok * 2 * NN; i++) tq_differ += st->ks->T[i] != st2->ks->T[i];
    CHECK(tq_differ > 0, "sparse_forward ignored HAX_KS_CUMSUM_BF16_ACC=0");
    free_result(&r), free_result(&r2);
    sparse_state_free(st), sparse_state_free(st2);
    free_case(&c);
    // a bad value: one line, non-zero exit
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("HAX_KS_CUMSUM_BF16_ACC", "2", 1);
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        ks_cumsum_bf16_acc();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 0, "HAX_KS_CUMSUM_BF16_ACC=2 was accepted");
}

// ---------------------------------------------------------------- the Enhanced merges

// The reference's tensors one after the other (EM1:559-561, EM2:541-548, and
// autograd's backward of them), against the fused ops: bit for bit.
static void test_merges(void) {
    int n = 37, E = 24;
    size_t nE = (size_t)n * E;
    float *y = xmalloc(sizeof(float) * nE), *xz = xmalloc(sizeof(float) * 2 * nE), *at = xmalloc(sizeof(float) * nE);
    float *Ev = xmalloc(sizeof(float) * E), *dout = xmalloc(sizeof(float) * nE);
    test_fill(y, nE, 1, 2.0f), test_fill(xz, 2 * nE, 2, 3.0f), test_fill(at, nE, 3, 1.0f);
    test_fill(Ev, E, 4, 1.5f), test_fill(dout, nE, 5, 1.0f);
    round_all(xz, 2 * nE), round_all(at, nE), round_all(Ev, E), round_all(dout, nE);  // y: the scan's fp32
    float *o = xmalloc(sizeof(float) * nE), *dy = xmalloc(sizeof(float) * nE), *dxz = xcalloc(2 * nE, sizeof(float));
    float *da = xcalloc(nE, sizeof(float)), *dE = xcalloc(E, sizeof(float));
    mamba_gate_forward(o, y, xz, at, Ev, n, E, 1);
    mamba_gate_backward(dy, dxz, da, dE, dout, y, xz, at, Ev, n, E, 1);
    long bad = 0;
    double dE_ref[64] = {0};
    for (int t = 0; t < n; t++)
        for (int c = 0; c < E; c++) {
            size_t i = (size_t)t * E + c;
            float z = xz[(size_t)t * 2 * E + E + c], g = hax_silu(z);
            float scan_out = R(y[i] * g);                   // selective_scan_fn's output
            float t1 = R(at[i] * Ev[c]), sz = R(g);          // attn_states * E, act(gate)
            float t2 = R(t1 * sz), want_o = R(scan_out + t2);
            float dt1 = R(dout[i] * sz), dsz = R(dout[i] * t1);
            float dz_merge = R(dsz * hax_dsilu(z));          // silu's backward
            float dz_scan = R(dout[i] * R(y[i]) * hax_dsilu(z));  // the scan's, from its saved bf16 output
            bad += o[i] != want_o || da[i] != R(dt1 * Ev[c]) || dy[i] != dout[i] * g;
            bad += dxz[(size_t)t * 2 * E + E + c] != R(dz_scan + dz_merge) || dxz[(size_t)t * 2 * E + c] != 0;
            dE_ref[c] += R(dt1 * at[i]);
        }
    for (int c = 0; c < E; c++) bad += fabsf(dE[c] - (float)dE_ref[c]) > 1e-6f * fabsf((float)dE_ref[c]);
    CHECK(bad == 0, "Mamba merge: %ld values differ from the reference's sequence", bad);
    // Mamba-2: y' = y + attn E; dattn = dy' E, dE = sum dy' attn
    float *y2 = xmalloc(sizeof(float) * nE), *da2 = xcalloc(nE, sizeof(float)), *dE2 = xcalloc(E, sizeof(float));
    for (size_t i = 0; i < nE; i++) y2[i] = R(y[i]);
    add_attn_forward(y2, at, Ev, n, E, 1);
    add_attn_backward(da2, dE2, dout, at, Ev, n, E, 1);
    bad = 0;
    double dE2_ref[64] = {0};
    for (int t = 0; t < n; t++)
        for (int c = 0; c < E; c++) {
            size_t i = (size_t)t * E + c;
            bad += y2[i] != R(R(y[i]) + R(at[i] * Ev[c])) || da2[i] != R(dout[i] * Ev[c]);
            dE2_ref[c] += R(dout[i] * at[i]);
        }
    for (int c = 0; c < E; c++) bad += dE2[c] != (float)dE2_ref[c];
    CHECK(bad == 0, "Mamba-2 merge: %ld values differ from the reference's sequence", bad);
    void *p[] = {y, xz, at, Ev, dout, o, dy, dxz, da, dE, y2, da2, dE2};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
}

// ---------------------------------------------------------------- Samba's GatedMLP and attention

// out = x W^T in double, rounded once (a bf16 GEMM); rows of x at ld ldx.
static void gemm_bf16(float *out, const float *x, int ldx, const float *W, int n, int in, int outd) {
    for (int t = 0; t < n; t++)
        for (int o = 0; o < outd; o++) {
            double a = 0;
            for (int i = 0; i < in; i++) a += (double)x[(size_t)t * ldx + i] * W[(size_t)o * in + i];
            out[(size_t)t * outd + o] = Rd(a);
        }
}
// dx = dy W in double, rounded once.
static void gemm_bf16_t(float *dx, const float *dy, const float *W, int n, int in, int outd) {
    for (int t = 0; t < n; t++)
        for (int i = 0; i < in; i++) {
            double a = 0;
            for (int o = 0; o < outd; o++) a += (double)dy[(size_t)t * outd + o] * W[(size_t)o * in + i];
            dx[(size_t)t * in + i] = Rd(a);
        }
}

static void test_mlp_bf16(void) {
    int n = 29, d = 8, M = 20;
    size_t nd = (size_t)n * d, nm = (size_t)n * M;
    float *a = xmalloc(sizeof(float) * nd), *w = xmalloc(sizeof(float) * 3 * M * d);
    float *dout = xmalloc(sizeof(float) * nd);
    test_fill(a, nd, 11, 1.0f), test_fill(w, 3 * M * d, 12, 0.5f), test_fill(dout, nd, 13, 1.0f);
    round_all(a, nd), round_all(w, 3 * (size_t)M * d), round_all(dout, nd);
    mlp_params p = {w, w + M * d, w + 2 * M * d};
    float *g = xcalloc(3 * (size_t)M * d, sizeof(float)), *buf = xmalloc(sizeof(float) * mlp_acts_floats(n, M));
    float *scratch = xmalloc(sizeof(float) * mlp_bwd_floats(n, d, M));
    float *out = xmalloc(sizeof(float) * nd), *da = xcalloc(nd, sizeof(float));
    mlp_grads gr = {g, g + M * d, g + 2 * M * d};
    mlp_acts acts;
    mlp_acts_assign(&acts, buf, n, M);
    mlp_forward(out, d, &acts, a, d, &p, n, d, M, 1);
    mlp_backward(da, d, &gr, scratch, dout, d, a, d, &acts, &p, n, d, M, 1);
    // the mirror: gate/up projections, fla's swiglu (fp32 inside), its backward, two shares of da
    float *mg = xmalloc(sizeof(float) * nm), *mu = xmalloc(sizeof(float) * nm), *ms = xmalloc(sizeof(float) * nm);
    float *ds = xmalloc(sizeof(float) * nm), *dg = xmalloc(sizeof(float) * nm), *du = xmalloc(sizeof(float) * nm);
    float *c1 = xmalloc(sizeof(float) * nd), *c2 = xmalloc(sizeof(float) * nd), *mda = xmalloc(sizeof(float) * nd);
    gemm_bf16(mg, a, d, p.gate, n, d, M);
    gemm_bf16(mu, a, d, p.up, n, d, M);
    for (size_t i = 0; i < nm; i++) ms[i] = R(hax_silu(mg[i]) * mu[i]);
    gemm_bf16_t(ds, dout, p.down, n, M, d);
    for (size_t i = 0; i < nm; i++) {
        float sg = hax_sigmoid(mg[i]);
        dg[i] = R(sg * (1.0f + mg[i] * (1.0f - sg)) * ds[i] * mu[i]);
        du[i] = R(mg[i] * sg * ds[i]);
    }
    gemm_bf16_t(c1, dg, p.gate, n, d, M);
    gemm_bf16_t(c2, du, p.up, n, d, M);
    for (size_t i = 0; i < nd; i++) mda[i] = R(c1[i] + c2[i]);
    cmp_bf16("mlp g", acts.g, M, mg, M, n, M, 0.02, 0);
    cmp_bf16("mlp u", acts.u, M, mu, M, n, M, 0.02, 0);
    cmp_bf16("mlp s", acts.s, M, ms, M, n, M, 0.02, 0.005);
    cmp_bf16("mlp da", da, d, mda, d, n, d, 0.05, 0.01);
    void *f[] = {a, w, dout, g, buf, scratch, out, da, mg, mu, ms, ds, dg, du, c1, c2, mda};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
}

// The CE backward against torch's op sequence on bf16 logits: log_softmax
// (fp32 inside, bf16 out), nll_loss's mean backward (−G at the label, G =
// bf16(1 / bf16(N)) from its bf16 total_weight), log_softmax's backward
// g − exp(logp)·Σg (fp32, contracted to one FMA by nvcc), bf16 out.
static void test_ce_bf16(void) {
    // G·N as torch 2.11 computes it (1 / bf16(N) rounded to bf16), for N = 256, 300, 319, 531, 1000
    const double n_tok[] = {256, 300, 319, 531, 1000};
    const double g_times_n[] = {1.0, 0.9979248046875, 0.9978485107421875, 0.9965972900390625, 0.99945068359375};
    for (int i = 0; i < 5; i++)
        CHECK((double)hax_ce_grad_scale(1, n_tok[i]) * n_tok[i] == g_times_n[i], "bf16 CE scale at N = %g: %.17g",
              n_tok[i], (double)hax_ce_grad_scale(1, n_tok[i]) * n_tok[i]);
    CHECK(hax_ce_grad_scale(0, 319) == (float)(1.0 / 319), "fp32 CE scale changed");
    CHECK(hax_ce_grad_scale(1, 0) == 0.0f, "CE scale of no scored position: expected 0");
    int n = 41, V = 100, N = 0;
    float *lg = xmalloc(sizeof(float) * n * V), *dl = xmalloc(sizeof(float) * n * V);
    float *ref = xcalloc((size_t)n * V, sizeof(float)), *dl32 = xmalloc(sizeof(float) * n * V);
    int32_t *lab = xmalloc(sizeof(int32_t) * n);
    uint8_t *mask = xmalloc((size_t)n);
    test_fill(lg, (size_t)n * V, 31, 6.0f), round_all(lg, (size_t)n * V);
    for (int t = 0; t < n; t++) lab[t] = (t * 37 + 11) % V, mask[t] = t % 5 != 2, N += mask[t];
    float G = hax_ce_grad_scale(1, N);
    ce_backward_bf16(dl, lg, lab, mask, n, V, G);
    ce_backward(dl32, lg, lab, mask, n, V, (float)(1.0 / N));
    float *lp = xmalloc(sizeof(float) * V), *g = xmalloc(sizeof(float) * V);
    int differ = 0, far = 0;
    for (int t = 0; t < n; t++) {
        const float *l = lg + (size_t)t * V;
        float *r = ref + (size_t)t * V;
        if (!mask[t]) continue;  // torch sees only the selected rows; the others stay 0
        float mx = -INFINITY;
        for (int v = 0; v < V; v++) mx = fmaxf(mx, l[v]);
        double sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)l[v] - mx);
        for (int v = 0; v < V; v++) lp[v] = R(l[v] - mx - (float)log(sum));
        float gsum = 0;
        for (int v = 0; v < V; v++) g[v] = v == lab[t] ? -G : 0.0f, gsum += g[v];
        for (int v = 0; v < V; v++) r[v] = R(fmaf(-expf(lp[v]), gsum, g[v]));
    }
    for (int i = 0; i < n * V; i++) {
        differ += dl[i] != ref[i];
        // against the exact fp32 gradient: bf16 steps (the log-probabilities' ulp is 2^-5 near -5), the scale
        far += fabsf(dl[i] - dl32[i]) > 0.03f * fabsf(dl32[i]) + 1e-7f;
    }
    printf("    ce bf16 (N %d, G·N %.6f): %d of %d elements differ from the op-by-op mirror, %d beyond 3%% of fp32\n",
           N, (double)G * N, differ, n * V, far);
    CHECK(differ == 0, "ce bf16: %d elements differ from torch's op sequence", differ);
    CHECK(far == 0, "ce bf16: %d elements beyond 3%% of the fp32 gradient", far);
    int masked_zero = 1;
    for (int t = 0; t < n; t++)
        for (int v = 0; v < V && !mask[t]; v++) masked_zero &= dl[(size_t)t * V + v] == 0.0f;
    CHECK(masked_zero, "ce bf16: an unscored row is not 0");
    void *f[] = {lg, dl, ref, dl32, lab, mask, lp, g};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
}

// Rotary of one (position, pair) with bf16 cos / sin (fla's cache), bf16 out.
static void rope_pair(float *x1, float *x2, int pos, int i, int hd, float theta, int inverse) {
    float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd), ang = (float)pos * inv;
    float c = R(cosf(ang)), s = R(sinf(ang));
    if (inverse) s = -s;
    float a = *x1, b = *x2;
    *x1 = R(a * c - b * s), *x2 = R(b * c + a * s);
}

static void test_attn_bf16(void) {
    hax_model_config cfg = {0};
    cfg.hidden_size = 16, cfg.attn_heads = 2, cfg.attn_kv_heads = 2, cfg.window_size = 5, cfg.rope_theta = 10000.0f;
    cfg.precision = PREC_BF16_PURE;
    int d = 16, H = 2, hd = 8, W = 5, off[] = {0, 9, 21}, n_seq = 2, n = 21;
    size_t nd = (size_t)n * d;
    float *a = xmalloc(sizeof(float) * nd), *w = xmalloc(sizeof(float) * 4 * d * d);
    float *dout = xmalloc(sizeof(float) * nd);
    test_fill(a, nd, 21, 1.0f), test_fill(w, 4 * (size_t)d * d, 22, 0.4f), test_fill(dout, nd, 23, 1.0f);
    round_all(a, nd), round_all(w, 4 * (size_t)d * d), round_all(dout, nd);
    attn_params p = {w, w + d * d, w + 2 * d * d, w + 3 * d * d};
    float *g = xcalloc(4 * (size_t)d * d, sizeof(float)), *buf = xmalloc(sizeof(float) * attn_acts_floats(&cfg, n));
    float *scratch = xmalloc(sizeof(float) * attn_bwd_floats(&cfg, n));
    float *out = xmalloc(sizeof(float) * nd), *da = xcalloc(nd, sizeof(float));
    attn_grads gr = {g, g + d * d, g + 2 * d * d, g + 3 * d * d};
    attn_acts acts;
    attn_acts_assign(&acts, buf, &cfg, n);
    attn_forward(out, d, &acts, a, d, &p, &cfg, off, n_seq);
    attn_backward(da, d, &gr, scratch, dout, d, a, d, &acts, &p, &cfg, off, n_seq);
    // the mirror: projections, rotary, softmax attention in double (bf16 out)
    float *q = xmalloc(sizeof(float) * nd), *k = xmalloc(sizeof(float) * nd), *v = xmalloc(sizeof(float) * nd);
    float *o = xmalloc(sizeof(float) * nd), *dO = xmalloc(sizeof(float) * nd);
    float *dq = xcalloc(nd, sizeof(float)), *dk = xcalloc(nd, sizeof(float)), *dv = xcalloc(nd, sizeof(float));
    double *aq = xcalloc(nd, sizeof(double)), *ak = xcalloc(nd, sizeof(double)), *av = xcalloc(nd, sizeof(double));
    gemm_bf16(q, a, d, p.q_proj, n, d, d), gemm_bf16(k, a, d, p.k_proj, n, d, d), gemm_bf16(v, a, d, p.v_proj, n, d, d);
    for (int s = 0; s < n_seq; s++)
        for (int t = off[s]; t < off[s + 1]; t++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < hd / 2; i++) {
                    rope_pair(q + t * d + h * hd + i, q + t * d + h * hd + i + hd / 2, t - off[s], i, hd, 10000.0f, 0);
                    rope_pair(k + t * d + h * hd + i, k + t * d + h * hd + i + hd / 2, t - off[s], i, hd, 10000.0f, 0);
                }
    double scale = 1.0 / sqrt((double)hd);
    gemm_bf16_t(dO, dout, p.o_proj, n, d, d);
    for (int s = 0; s < n_seq; s++)
        for (int t = off[s]; t < off[s + 1]; t++)
            for (int h = 0; h < H; h++) {
                int j0 = t - W + 1 > off[s] ? t - W + 1 : off[s];
                double sc[8], mx = -INFINITY, sum = 0, Dt = 0;
                for (int j = j0; j <= t; j++) {
                    double x = 0;
                    for (int i = 0; i < hd; i++) x += (double)q[t * d + h * hd + i] * k[j * d + h * hd + i];
                    sc[j - j0] = x * scale;
                    if (sc[j - j0] > mx) mx = sc[j - j0];
                }
                for (int j = j0; j <= t; j++) sum += exp(sc[j - j0] - mx);
                for (int i = 0; i < hd; i++) {
                    double x = 0;
                    for (int j = j0; j <= t; j++) x += exp(sc[j - j0] - mx) / sum * v[j * d + h * hd + i];
                    o[t * d + h * hd + i] = Rd(x);
                }
                for (int i = 0; i < hd; i++) Dt += (double)dO[t * d + h * hd + i] * o[t * d + h * hd + i];
                for (int j = j0; j <= t; j++) {
                    double pj = exp(sc[j - j0] - mx) / sum, dp = 0;
                    for (int i = 0; i < hd; i++) dp += (double)dO[t * d + h * hd + i] * v[j * d + h * hd + i];
                    double dsj = pj * (dp - Dt) * scale;
                    for (int i = 0; i < hd; i++) {
                        aq[t * d + h * hd + i] += dsj * k[j * d + h * hd + i];
                        ak[j * d + h * hd + i] += dsj * q[t * d + h * hd + i];
                        av[j * d + h * hd + i] += pj * dO[t * d + h * hd + i];
                    }
                }
            }
    for (size_t i = 0; i < nd; i++) dq[i] = Rd(aq[i]), dk[i] = Rd(ak[i]), dv[i] = Rd(av[i]);
    for (int s = 0; s < n_seq; s++)
        for (int t = off[s]; t < off[s + 1]; t++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < hd / 2; i++) {
                    float *x = dq + t * d + h * hd + i, *y = dk + t * d + h * hd + i;
                    rope_pair(x, x + hd / 2, t - off[s], i, hd, 10000.0f, 1);
                    rope_pair(y, y + hd / 2, t - off[s], i, hd, 10000.0f, 1);
                }
    // da: three bf16 shares in autograd's order (v, k, q)
    float *cv = xmalloc(sizeof(float) * nd), *ck = xmalloc(sizeof(float) * nd), *cq = xmalloc(sizeof(float) * nd);
    float *mda = xmalloc(sizeof(float) * nd);
    gemm_bf16_t(cv, dv, p.v_proj, n, d, d);
    gemm_bf16_t(ck, dk, p.k_proj, n, d, d);
    gemm_bf16_t(cq, dq, p.q_proj, n, d, d);
    for (size_t i = 0; i < nd; i++) mda[i] = R(R(cv[i] + ck[i]) + cq[i]);
    cmp_bf16("attn q (rotated)", acts.q, d, q, d, n, d, 0.02, 0.005);
    cmp_bf16("attn k (rotated)", acts.k, d, k, d, n, d, 0.02, 0.005);
    cmp_bf16("attn v", acts.v, d, v, d, n, d, 0.02, 0);
    cmp_bf16("attn o", acts.o, d, o, d, n, d, 0.05, 0.01);
    cmp_bf16("attn da", da, d, mda, d, n, d, 0.08, 0.03);
    void *f[] = {a, w, dout, g, buf, scratch, out, da, q, k, v, o, dO, dq, dk, dv, aq, ak, av, cv, ck, cq, mda};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
}

// ---------------------------------------------------------------- tiny models through the engine

#define EXPECT_BF16(what, p, n) \
    CHECK(not_bf16((p), (n)) == 0, "%s: %s: %ld values not bf16", file, what, not_bf16((p), (n)))

// One forward and backward in bf16-pure: the tensors the ops now round inside
// hold bf16 values (each layer's; the sparse branch's inside; Samba's q, k,
// v, o, g, u, s), and so do the gradients.
static void engine_once(const char *file) {
    golden_engine x;
    golden_engine_load(&x, file, 0, 16, 1, 16);
    hax_model *m = &x.m;
    const hax_model_config *cfg = &m->cfg;
    round_bf16(m->data, m->data, (long)m->n_floats);
    m->cfg.precision = PREC_BF16_PURE;
    hax_fwd_opts o = {1, 11, 5, 0, NULL};
    hax_fwd_result r;
    model_zero_grad(m);
    engine_forward(x.e, &x.b, &o, &r);
    int n = x.b.n_tok, d = cfg->hidden_size, E = cfg->intermediate_size, N = cfg->state_size;
    size_t nd = (size_t)n * d;
    for (int l = 0; l < cfg->n_layers; l++) {
        eng_layer *L = &x.e->core->L[l];
        if (m->layers[l].is_attn) {
            EXPECT_BF16("attn q", L->att.q, nd);
            EXPECT_BF16("attn k", L->att.k, nd);
            EXPECT_BF16("attn v", L->att.v, nd);
            EXPECT_BF16("attn o", L->att.o, nd);
        }
        if (arch_has_mlp(cfg)) {
            size_t nm = (size_t)n * cfg->mlp_hidden;
            EXPECT_BF16("mlp g", L->mlp.g, nm);
            EXPECT_BF16("mlp u", L->mlp.u, nm);
            EXPECT_BF16("mlp s", L->mlp.s, nm);
        }
        if (!cfg->sparse_mask) continue;
        const hax_sparse_state *st = L->sp;
        CHECK(st->bf16 == 1, "%s: layer %d: the branch did not run in bf16-pure", file, l);
        EXPECT_BF16("KQ", st->KQ, (size_t)n * 2 * N);
        EXPECT_BF16("attn", L->attn, (size_t)n * E);
        EXPECT_BF16("P", st->allow_p, (size_t)st->allow_off[n]);
        if (st->h) EXPECT_BF16("LSH projections", st->hq_proj, (size_t)n * st->h);
        if (st->h) EXPECT_BF16("LSH projections", st->hk_proj, (size_t)n * st->h);
        if (st->ks) {
            EXPECT_BF16("KS features", st->ks->T, (size_t)n * 2 * N);
            EXPECT_BF16("KS h1", st->ks->h1, (size_t)n * 2 * N);
            EXPECT_BF16("KS h2", st->ks->h2, (size_t)n * 2 * N);
            EXPECT_BF16("KS score", st->ks->score, (size_t)n);
            long ybad = 0;
            for (int i = 0; i < st->n_seq * st->k_c; i++) ybad += R((float)st->ks->y[i]) != st->ks->y[i];
            CHECK(ybad == 0, "%s: %ld ranking targets not bf16", file, ybad);
        }
    }
    if (arch_ssm_mixer(cfg) == MIXER_MAMBA && cfg->sparse_mask) EXPECT_BF16("gate o", x.e->core->mbwd.o, (size_t)n * E);
    engine_backward(x.e);
    EXPECT_BF16("gradients", m->grad, m->n_floats);
    for (int l = 0; l < cfg->n_layers && cfg->sparse_mask; l++) {
        const hax_sparse_state *st = x.e->core->L[l].sp;
        EXPECT_BF16("d score", st->allow_ds, (size_t)st->allow_off[n]);
        EXPECT_BF16("dKQ", st->dKQ, (size_t)n * 2 * N);
        if (st->ks && st->ks->has_loss) {  // the ranking loss's gradient at the candidates
            long bad = 0;
            for (int s = 0; s < st->n_seq; s++)
                for (int a = 0; a < st->k_c && st->ks->cand[s * st->k_c + a] >= 0; a++) {
                    float v = st->ks->dscore[x.b.seq_off[s] + st->ks->cand[s * st->k_c + a]];
                    bad += R(v) != v;
                }
            CHECK(bad == 0, "%s: %ld key-score gradients not bf16", file, bad);
        }
    }
    if (cfg->sparse_mask && arch_ssm_mixer(cfg) == MIXER_MAMBA)  // the last layer's backward scratch
        EXPECT_BF16("dX", x.e->core->mbwd.dX, (size_t)n * E);
    long nz = 0;
    for (size_t i = 0; i < m->n_floats; i++) nz += m->grad[i] != 0;
    CHECK(nz > (long)m->n_floats / 4, "%s: only %ld nonzero gradients", file, nz);
    printf("  %s: loss %.6f gate %.6f, all checked tensors bf16\n", file, r.loss, r.gate_loss);
    golden_engine_free(&x);
}

static void test_engine_mamba_hax(void) { engine_once("mamba_sign_bin_lsh__key_selection"); }
static void test_engine_mamba2_hax(void) { engine_once("mamba2_sign_bin_lsh__key_selection"); }
static void test_engine_samba(void) { engine_once("samba_base"); }

int main(void) {
    RUN(test_branch_hax);
    RUN(test_branch_key_selection);
    RUN(test_branch_window_sink);
    RUN(test_branch_full);
    RUN(test_branch_empty_rows);
    RUN(test_score_order);
    RUN(test_dp_order);
    RUN(test_cumsum_switch);
    RUN(test_merges);
    RUN(test_ce_bf16);
    RUN(test_mlp_bf16);
    RUN(test_attn_bf16);
    RUN(test_engine_mamba_hax);
    RUN(test_engine_mamba2_hax);
    RUN(test_engine_samba);
    return test_summary();
}
