// test_ssd_chunk.c: the chunked ("state passing") form of Mamba-2's SSD that
// cuda/ops/ssd.cu runs, written here in plain C and compared with the
// sequential CPU op (src/ops/ssd.c, the oracle) on ragged packed batches, for
// y and every gradient. It proves the algebra the GPU kernels use.
//
// Per sequence, chunk of Q positions (never crossing a sequence end), head h
// (A = -exp(A_log[h]), u_j = Δ_j·x_j, a_i = Σ_{j<=i} Δ_j·A within the chunk):
//   G_ij      = C_i·B_j                                       (shared by heads)
//   y_i[p]    = Σ_{j<=i} G_ij e^{a_i-a_j} u_j[p] + e^{a_i} Σ_n C_i[n] S_in[p,n] + D x_i[p]
//   S_loc     = Σ_j e^{a_last-a_j} u_j B_jᵀ,   S_in[c+1] = e^{a_last} S_in[c] + S_loc[c]
// Backward, with dS_out the adjoint of the chunk's end state:
//   dS_loc    = Σ_i e^{a_i} dy_i C_iᵀ,         dS_out[c-1] = e^{a_last} dS_out[c] + dS_loc[c]
//   Ŵ_ij      = (dy_i·u_j) e^{a_i-a_j} (j <= i)
//   du_j[p]   = Σ_{i>=j} G_ij e^{a_i-a_j} dy_i[p] + e^{a_last-a_j} Σ_n dS_out[p,n] B_j[n]
//   dC_i[n]  += Σ_h (Σ_j Ŵ_ij B_j[n] + Z_i[n]),  Z_i[n] = e^{a_i} Σ_p dy_i[p] S_in[p,n]
//   dB_j[n]  += Σ_h (Σ_i Ŵ_ij C_i[n] + e^{a_last-a_j} Σ_p u_j[p] dS_out[p,n])
//   da_k      = Σ_j G_kj Ŵ_kj - Σ_i G_ik Ŵ_ik + C_k·Z_k - V_k (+ at k = last:
//               e^{a_last} ⟨dS_out, S_in⟩ + Σ_j V_j),  V_j = e^{a_last-a_j} Σ_p u_j[p] Σ_n dS_out[p,n] B_j[n]
//   dΔ_j      = Σ_p x_j[p] du_j[p] + A Σ_{k>=j} da_k,    dA += Σ_j Δ_j Σ_{k>=j} da_k
// The GPU chunk backward (ssd_bwd_kernel: a block per chunk, heads in turn)
// computes exactly these terms.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/scalar.h"
#include "src/ops/ssd.h"
#include "test.h"

#define Q 64

typedef struct {
    int H, P, N, n_seq, n_tok;
    const int *off;
    const float *x, *dt, *B, *C, *dtb, *Alog, *D, *dy;  // dense: x, dy [n_tok][H·P]; B, C [n_tok][N]
} prob;

// Δ of a position and head, and the chunk's cumulative a_i (sequential sum).
static void chunk_a(const prob *g, const float *delta, int t0, int L, int h, float *a) {
    float A = -expf(g->Alog[h]), s = 0.0f;
    for (int i = 0; i < L; i++) a[i] = s += delta[(size_t)(t0 + i) * g->H + h] * A;
}

// Forward: y [n_tok][H·P]; S_in of every chunk [chunk][H][P·N] (chunk index
// counted over the batch) is returned for the backward.
static float *chunk_forward(const prob *g, const float *delta, float *y) {
    int H = g->H, P = g->P, N = g->N, E = H * P, PN = P * N;
    int n_chunks = 0;
    for (int s = 0; s < g->n_seq; s++) n_chunks += (g->off[s + 1] - g->off[s] + Q - 1) / Q;
    float *Sin = xcalloc((size_t)n_chunks * H * PN, sizeof(float));
    float a[Q], *S = xmalloc((size_t)PN * sizeof(float));
    int c = 0;
    for (int s = 0; s < g->n_seq; s++) {
        for (int t0 = g->off[s]; t0 < g->off[s + 1]; t0 += Q, c++) {
            int L = g->off[s + 1] - t0 < Q ? g->off[s + 1] - t0 : Q;
            for (int h = 0; h < H; h++) {
                chunk_a(g, delta, t0, L, h, a);
                float *in = Sin + ((size_t)c * H + h) * PN;
                // y of the chunk from its input state.
                for (int i = 0; i < L; i++)
                    for (int p = 0; p < P; p++) {
                        float intra = 0.0f, off = 0.0f;
                        for (int j = 0; j <= i; j++) {
                            float G = 0.0f;
                            for (int n = 0; n < N; n++) G += g->C[(size_t)(t0 + i) * N + n] * g->B[(size_t)(t0 + j) * N + n];
                            float u = delta[(size_t)(t0 + j) * H + h] * g->x[(size_t)(t0 + j) * E + h * P + p];
                            intra += G * expf(a[i] - a[j]) * u;
                        }
                        for (int n = 0; n < N; n++) off += g->C[(size_t)(t0 + i) * N + n] * in[p * N + n];
                        y[(size_t)(t0 + i) * E + h * P + p] =
                            intra + expf(a[i]) * off + g->D[h] * g->x[(size_t)(t0 + i) * E + h * P + p];
                    }
                // The next chunk's input state.
                if (t0 + Q >= g->off[s + 1]) continue;
                for (int q = 0; q < PN; q++) {
                    int p = q / N, n = q % N;
                    float loc = 0.0f;
                    for (int j = 0; j < L; j++)
                        loc += expf(a[L - 1] - a[j]) * delta[(size_t)(t0 + j) * H + h] *
                               g->x[(size_t)(t0 + j) * E + h * P + p] * g->B[(size_t)(t0 + j) * N + n];
                    S[q] = expf(a[L - 1]) * in[q] + loc;
                }
                memcpy(in + (size_t)H * PN, S, (size_t)PN * sizeof(float));
            }
        }
    }
    free(S);
    return Sin;
}

// Backward of one chunk (rows t0..t0+L-1), all heads: accumulates dx, dB, dC
// (dense), ddt [n_tok][H] and the parameter sums par[h][3] (dA w.r.t. A, dD,
// Σ d(dt)). Sin, dSo: [H][P·N] of this chunk.
static void chunk_backward(const prob *g, const float *delta, const float *Sin, const float *dSo, int t0, int L,
                           float *dx, float *ddt, float *dB, float *dC, double *par) {
    int H = g->H, P = g->P, N = g->N, E = H * P, PN = P * N;
    double da[Q];  // da and its reverse sum in double, as the GPU does: they cancel a lot
    float a[Q], G[Q][Q], Wsum[Q][Q] = {{0}}, xdu[Q], du[Q][64], elR[Q][64], dBz[Q][64];
    memset(dBz, 0, sizeof dBz);
    for (int i = 0; i < L; i++)
        for (int j = 0; j < L; j++) {
            G[i][j] = 0.0f;
            for (int n = 0; n < N; n++) G[i][j] += g->C[(size_t)(t0 + i) * N + n] * g->B[(size_t)(t0 + j) * N + n];
        }
    float Zsum[Q][64];
    memset(Zsum, 0, sizeof Zsum);
    for (int h = 0; h < H; h++) {
        const float *in = Sin + (size_t)h * PN, *dso = dSo + (size_t)h * PN;
        float A = -expf(g->Alog[h]);
        chunk_a(g, delta, t0, L, h, a);
        float al = a[L - 1];
#define XV(j, p) g->x[(size_t)(t0 + (j)) * E + h * P + (p)]
#define DY(i, p) g->dy[(size_t)(t0 + (i)) * E + h * P + (p)]
#define DL(j) delta[(size_t)(t0 + (j)) * H + h]
        for (int i = 0; i < L; i++) da[i] = 0.0f;
        // Ŵ, its sum over heads, and the G·Ŵ terms of da.
        for (int i = 0; i < L; i++)
            for (int j = 0; j <= i; j++) {
                float w = 0.0f;
                for (int p = 0; p < P; p++) w += DY(i, p) * DL(j) * XV(j, p);
                w *= expf(a[i] - a[j]);
                Wsum[i][j] += w;
                da[i] += G[i][j] * w;
                da[j] -= G[i][j] * w;
            }
        // du, and V_j.
        float V[Q], Vsum = 0.0f;
        for (int j = 0; j < L; j++) {
            float v = 0.0f, dd = 0.0f;
            for (int p = 0; p < P; p++) {
                float acc = 0.0f, r = 0.0f;
                for (int i = j; i < L; i++) acc += G[i][j] * expf(a[i] - a[j]) * DY(i, p);
                for (int n = 0; n < N; n++) r += dso[p * N + n] * g->B[(size_t)(t0 + j) * N + n];
                elR[j][p] = expf(al - a[j]) * r;
                du[j][p] = acc + elR[j][p];
                v += DL(j) * XV(j, p) * elR[j][p];
                dd += XV(j, p) * du[j][p];
                dx[(size_t)(t0 + j) * E + h * P + p] += DL(j) * du[j][p] + g->D[h] * DY(j, p);
            }
            V[j] = v, Vsum += v;
            da[j] -= v;
            xdu[j] = dd;
        }
        // Z (the e^{a_i} dy_i·S_in part of dC) and its da term; dB's dS_out part.
        for (int i = 0; i < L; i++) {
            float cz = 0.0f;
            for (int n = 0; n < N; n++) {
                float z = 0.0f, k = 0.0f;
                for (int p = 0; p < P; p++) z += DY(i, p) * in[p * N + n];
                for (int p = 0; p < P; p++) k += DL(i) * XV(i, p) * dso[p * N + n];
                z *= expf(a[i]);
                Zsum[i][n] += z;
                dBz[i][n] += expf(al - a[i]) * k;
                cz += g->C[(size_t)(t0 + i) * N + n] * z;
            }
            da[i] += cz;
        }
        float ss = 0.0f;
        for (int q = 0; q < PN; q++) ss += dso[q] * in[q];
        da[L - 1] += expf(al) * ss + Vsum;
        (void)V;
        // Reverse cumulative sum of da: dΔ and dA.
        double rev = 0.0;
        double pA = 0.0, pD = 0.0, pb = 0.0;
        for (int j = L - 1; j >= 0; j--) {
            rev += da[j];
            double dd = (double)xdu[j] + (double)A * rev;
            pA += (double)DL(j) * rev;
            float u = g->dt[(size_t)(t0 + j) * H + h] + g->dtb[h];
            double d_u = dd * (u > 20.0f ? 1.0 : (double)hax_sigmoid(u));
            ddt[(size_t)(t0 + j) * H + h] += (float)d_u;
            pb += d_u;
            for (int p = 0; p < P; p++) pD += (double)DY(j, p) * XV(j, p);
        }
        par[h * 3 + 0] += pA, par[h * 3 + 1] += pD, par[h * 3 + 2] += pb;
#undef XV
#undef DY
#undef DL
    }
    for (int i = 0; i < L; i++)
        for (int n = 0; n < N; n++) {
            float c = Zsum[i][n], b = dBz[i][n];
            for (int j = 0; j <= i; j++) c += Wsum[i][j] * g->B[(size_t)(t0 + j) * N + n];
            for (int j = i; j < L; j++) b += Wsum[j][i] * g->C[(size_t)(t0 + j) * N + n];
            dC[(size_t)(t0 + i) * N + n] += c;
            dB[(size_t)(t0 + i) * N + n] += b;
        }
}

// Adjoints of the chunk end states [chunk][H][P·N]: the reverse pass.
static float *chunk_dstates(const prob *g, const float *delta) {
    int H = g->H, P = g->P, N = g->N, E = H * P, PN = P * N;
    int n_chunks = 0;
    for (int s = 0; s < g->n_seq; s++) n_chunks += (g->off[s + 1] - g->off[s] + Q - 1) / Q;
    float *dSo = xcalloc((size_t)n_chunks * H * PN, sizeof(float));
    float a[Q];
    int c_end = 0;
    for (int s = 0; s < g->n_seq; s++) {
        int len = g->off[s + 1] - g->off[s], nc = (len + Q - 1) / Q;
        c_end += nc;
        for (int k = nc - 1; k >= 1; k--) {  // chunk k's dS_in = chunk k-1's dS_out
            int t0 = g->off[s] + k * Q, L = len - k * Q < Q ? len - k * Q : Q, c = c_end - nc + k;
            for (int h = 0; h < H; h++) {
                chunk_a(g, delta, t0, L, h, a);
                const float *out = dSo + ((size_t)c * H + h) * PN;
                float *prev = dSo + ((size_t)(c - 1) * H + h) * PN;
                for (int q = 0; q < PN; q++) {
                    int p = q / N, n = q % N;
                    float loc = 0.0f;
                    for (int i = 0; i < L; i++)
                        loc += expf(a[i]) * g->dy[(size_t)(t0 + i) * E + h * P + p] * g->C[(size_t)(t0 + i) * N + n];
                    prev[q] = expf(a[L - 1]) * out[q] + loc;
                }
            }
        }
    }
    return dSo;
}

// One batch: oracle vs chunked form, y and every gradient.
// tol_par: the parameter gradients' bound (sums of a few values with much
// cancellation: the oracle's float rounding shows there first).
static void check_batch(const int *lens, int n_seq, int H, int P, int N, float dt_lo, float dt_hi, double tol_par) {
    int *off = xmalloc(sizeof(int) * (n_seq + 1));
    off[0] = 0;
    for (int s = 0; s < n_seq; s++) off[s + 1] = off[s] + lens[s];
    int n = off[n_seq], E = H * P;
    size_t nE = (size_t)n * E, nN = (size_t)n * N, nH = (size_t)n * H;
    float *x = xmalloc(sizeof(float) * nE), *dy = xmalloc(sizeof(float) * nE), *dt = xmalloc(sizeof(float) * nH);
    float *B = xmalloc(sizeof(float) * nN), *C = xmalloc(sizeof(float) * nN);
    float dtb[8], Alog[8], D[8];
    test_fill(x, nE, 1, 1.0f), test_fill(dy, nE, 2, 1.0f), test_fill(B, nN, 3, 1.0f), test_fill(C, nN, 4, 1.0f);
    test_fill(dt, nH, 5, 1.0f);
    for (size_t i = 0; i < nH; i++) dt[i] = dt_lo + (dt[i] + 1.0f) * 0.5f * (dt_hi - dt_lo);
    test_fill(dtb, H, 6, 1.0f), test_fill(Alog, H, 7, 1.3f), test_fill(D, H, 8, 1.0f);
    for (int h = 0; h < H; h++) Alog[h] += 1.3f;
    prob g = {H, P, N, n_seq, n, off, x, dt, B, C, dtb, Alog, D, dy};

    float *y0 = xmalloc(sizeof(float) * nE), *y1 = xmalloc(sizeof(float) * nE), *delta = xmalloc(sizeof(float) * nH);
    float *ck = xmalloc(sizeof(float) * ssd_ckpt_floats(off, n_seq, H, P, N));
    ssd_forward(y0, E, delta, ck, x, E, dt, H, B, C, N, dtb, Alog, D, off, n_seq, H, P, N);
    float *dx0 = xcalloc(nE, sizeof(float)), *ddt0 = xcalloc(nH, sizeof(float));
    float *dB0 = xcalloc(nN, sizeof(float)), *dC0 = xcalloc(nN, sizeof(float)), dp0[3 * 8] = {0};
    ssd_backward(dx0, E, ddt0, H, dB0, dC0, N, dp0, dp0 + H, dp0 + 2 * H, dy, E, delta, ck, x, E, dt, H, B, C, N,
                 dtb, Alog, D, off, n_seq, H, P, N);

    float *Sin = chunk_forward(&g, delta, y1), *dSo = chunk_dstates(&g, delta);
    float *dx1 = xcalloc(nE, sizeof(float)), *ddt1 = xcalloc(nH, sizeof(float));
    float *dB1 = xcalloc(nN, sizeof(float)), *dC1 = xcalloc(nN, sizeof(float)), dp1[3 * 8] = {0};
    int c = 0;
    for (int s = 0; s < n_seq; s++) {
        double par[8 * 3] = {0};
        for (int t0 = off[s]; t0 < off[s + 1]; t0 += Q, c++) {
            int L = off[s + 1] - t0 < Q ? off[s + 1] - t0 : Q;
            chunk_backward(&g, delta, Sin + (size_t)c * H * P * N, dSo + (size_t)c * H * P * N, t0, L, dx1, ddt1,
                           dB1, dC1, par);
        }
        for (int h = 0; h < H; h++) {
            dp1[h] += (float)par[h * 3 + 2];
            dp1[H + h] += (float)(par[h * 3 + 0] * -exp((double)Alog[h]));
            dp1[2 * H + h] += (float)par[h * 3 + 1];
        }
    }
    int finite = 1;
    for (size_t i = 0; i < nE; i++) finite &= isfinite(y1[i]) && isfinite(dx1[i]);
    for (size_t i = 0; i < nN; i++) finite &= isfinite(dB1[i]) && isfinite(dC1[i]);
    for (size_t i = 0; i < nH; i++) finite &= isfinite(ddt1[i]);
    CHECK(finite, "chunked SSD (H=%d P=%d N=%d): expected finite outputs, found a NaN or Inf", H, P, N);
    struct { const char *name; const float *got, *want; size_t n; } cmp[] = {
        {"y", y1, y0, nE}, {"dx", dx1, dx0, nE}, {"ddt", ddt1, ddt0, nH}, {"dB", dB1, dB0, nN},
        {"dC", dC1, dC0, nN}, {"ddt_bias", dp1, dp0, H}, {"dA_log", dp1 + H, dp0 + H, H}, {"dD", dp1 + 2 * H, dp0 + 2 * H, H},
    };
    printf("    H=%d P=%d N=%d dt in [%g, %g]:", H, P, N, dt_lo, dt_hi);
    for (size_t k = 0; k < sizeof cmp / sizeof cmp[0]; k++) {
        double e = rel_err(cmp[k].got, cmp[k].want, cmp[k].n);
        printf(" %s %.1e", cmp[k].name, e);
        double tol = k >= 5 ? tol_par : 1e-5;
        CHECK(e <= tol, "chunked SSD %s (H=%d P=%d N=%d): relative error %.3e above %.0e", cmp[k].name, H, P, N, e, tol);
    }
    printf("\n");
    void *ptrs[] = {off, x, dy, dt, B, C, y0, y1, delta, ck, dx0, ddt0, dB0, dC0, Sin, dSo, dx1, ddt1, dB1, dC1};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
}

static const int k_lens[] = {1, 3, 17, 63, 64, 65, 130, 464};

static void test_chunked_matches_sequential(void) {
    int n = (int)(sizeof k_lens / sizeof k_lens[0]);
    check_batch(k_lens, n, 3, 16, 32, -3.0f, 1.0f, 1e-5);  // the paper's P and N
    check_batch(k_lens, n, 2, 8, 16, -3.0f, 1.0f, 1e-5);
    check_batch(k_lens, n, 2, 4, 64, -3.0f, 1.0f, 1e-5);
}

// Large Δ·A: e^{a_i} underflows to 0 inside long chunks; the chunked form
// only ever takes e^{a_i - a_j} with j <= i, so it stays finite.
static void test_chunk_boundaries_finite(void) {
    int lens[] = {64, 65, 128, 129, 1};
    check_batch(lens, 5, 2, 16, 32, 2.0f, 25.0f, 1e-4);  // past softplus's threshold of 20 too
}

int main(void) {
    RUN(test_chunked_matches_sequential);
    RUN(test_chunk_boundaries_finite);
    return test_summary();
}
