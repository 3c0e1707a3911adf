// src/ops/scan.c: see src/ops/scan.h.
//
// Checkpoint layout: sequence s owns the slots base_s .. base_s + n_chunks_s - 1
// with base_s = s + (seq_off[s] - seq_off[0]) / SCAN_CHUNK; slot base_s + j holds
// the state [E, N] just before position j·SCAN_CHUNK of the sequence (slot
// base_s, the zero state, is stored too: it keeps the indexing plain). That
// always fits in scan_ckpt_floats, since ceil(len/T) <= floor(end/T) - floor(start/T) + 1.
#include "src/ops/scan.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/ops/basic.h"

// Channels per forward work item (sequence × channel block).
#define SCAN_CBLOCK 32

size_t scan_ckpt_floats(int n_tok, int n_seq, int E, int N) {
    return ((size_t)n_tok / SCAN_CHUNK + (size_t)n_seq) * (size_t)E * N;
}

static size_t ckpt_base(const int *seq_off, int s) {
    return (size_t)s + (size_t)(seq_off[s] - seq_off[0]) / SCAN_CHUNK;
}

// exp(x) for the N-wide inner loops, written so that the compiler vectorizes
// it (libm's expf is a scalar call, and floorf and float compares do not
// vectorize under the default -ftrapping-math): x = k·ln2 + r with |r| <= ln2/2
// (k rounded by the 1.5·2^23 trick), 2^k built from the exponent bits, exp(r)
// by the Cephes minimax polynomial; relative error below 1e-7. Inputs below
// −87 (−inf included) give 0, through integer masks. Meant for x <= 0 (Δ·A);
// x > 88 would overflow the exponent. Every lane does the same IEEE operations
// (C11 mode does not contract them into FMAs), so the result does not depend on
// vectorization.
typedef union {
    float f;
    int32_t i;
    uint32_t u;
} fbits;

static inline float exp_poly(float x) {
    fbits bx = {x};
    int32_t keep = -(int32_t)(bx.u <= 0xC2AE0000u);  // all ones unless x < −87 (0xC2AE0000 = −87.0f)
    fbits bxc = {.u = (bx.u & (uint32_t)keep) | (0xC2AE0000u & ~(uint32_t)keep)};
    float xc = bxc.f;
    float k = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - k * 0.693359375f - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    // shifted as unsigned: with a NaN or Inf weight k is garbage, and a signed
    // left shift of a negative value would be undefined (UBSan)
    fbits scale = {.u = (uint32_t)((int32_t)k + 127) << 23};
    fbits res = {p * scale.f};
    res.i &= keep;
    return res.f;
}

// A[c, n] = −exp(A_log[c, n]), once per call.
static float *make_A(const float *A_log, int E, int N) {
    float *A = xmalloc(sizeof(float) * (size_t)E * N);
    for (size_t i = 0; i < (size_t)E * N; i++) A[i] = -expf(A_log[i]);
    return A;
}

void scan_forward(float *y, float *ckpt, const float *x, int ld_x, const float *draw,
                  const float *dt_bias, const float *A_log, const float *Bm, const float *Cm,
                  int ld_bc, const float *D, const int *seq_off, int n_seq, int E, int N) {
    if (n_seq <= 0) return;
    float *A = make_A(A_log, E, N);
    int n_blk = (E + SCAN_CBLOCK - 1) / SCAN_CBLOCK;
#pragma omp parallel
    {
        float *st = xmalloc(sizeof(float) * SCAN_CBLOCK * N);  // states of the block's channels
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int s = 0; s < n_seq; s++) {
            for (int blk = 0; blk < n_blk; blk++) {
                int c0 = blk * SCAN_CBLOCK, nc = E - c0 < SCAN_CBLOCK ? E - c0 : SCAN_CBLOCK;
                int t0 = seq_off[s], t1 = seq_off[s + 1];
                size_t base = ckpt_base(seq_off, s);
                memset(st, 0, sizeof(float) * (size_t)nc * N);
                for (int t = t0; t < t1; t++) {
                    if (ckpt && (t - t0) % SCAN_CHUNK == 0) {
                        float *ck = ckpt + (base + (size_t)(t - t0) / SCAN_CHUNK) * E * N + (size_t)c0 * N;
                        memcpy(ck, st, sizeof(float) * (size_t)nc * N);
                    }
                    const float *B = Bm + (size_t)t * ld_bc, *C = Cm + (size_t)t * ld_bc;
                    for (int ci = 0; ci < nc; ci++) {
                        int c = c0 + ci;
                        float xv = x[(size_t)t * ld_x + c];
                        float delta = hax_softplus(draw[(size_t)t * E + c] + dt_bias[c]);
                        float dx = delta * xv;
                        const float *Ac = A + (size_t)c * N;
                        float *sc = st + (size_t)ci * N;
                        float acc = 0.0f;
#pragma omp simd
                        for (int n = 0; n < N; n++) sc[n] = exp_poly(delta * Ac[n]) * sc[n] + dx * B[n];
#pragma omp simd reduction(+ : acc)
                        for (int n = 0; n < N; n++) acc += C[n] * sc[n];
                        y[(size_t)t * E + c] = acc + D[c] * xv;
                    }
                }
            }
        }
        free(st);
    }
    free(A);
}

// Per-thread buffers of the backward sweep over one chunk of one channel.
typedef struct {
    float *S;       // [(T+1), N] states: row 0 = the chunk's start state, row i+1 = after position i
    float *a;       // [T, N] exp(Δ·A) of each position
    float *delta;   // [T] Δ
    float *raw;     // [T] Δraw + b_dt (for the softplus derivative)
    float *h;       // [E, N] adjoint state carried from the next chunk to this one
    double *dB;     // [T, N] the chunk's dB rows, summed over channels in channel order
    double *dC;     // [T, N]
} scan_work;

// Recomputes the states of channel c over positions ta..ta+L-1 from the chunk
// start state s0 (NULL: zero), then sweeps them in reverse.
static void scan_chunk_backward(scan_work *wk, double *pA, double *pD, double *pb, float *dx,
                                int ld_dx, float *ddraw, const float *dy, const float *s0,
                                const float *x, int ld_x, const float *draw, const float *dt_bias,
                                const float *A, const float *Bm, const float *Cm, int ld_bc,
                                const float *D, int ta, int L, int c, int E, int N) {
    const float *Ac = A + (size_t)c * N;
    float *S = wk->S, *a = wk->a;
    if (s0) memcpy(S, s0, sizeof(float) * N);
    else memset(S, 0, sizeof(float) * N);
    for (int i = 0; i < L; i++) {
        int t = ta + i;
        float xv = x[(size_t)t * ld_x + c];
        float r = draw[(size_t)t * E + c] + dt_bias[c];
        float delta = hax_softplus(r);
        float dxv = delta * xv;
        const float *B = Bm + (size_t)t * ld_bc;
        wk->raw[i] = r;
        wk->delta[i] = delta;
        float *ai = a + (size_t)i * N;
#pragma omp simd
        for (int n = 0; n < N; n++) ai[n] = exp_poly(delta * Ac[n]);
        for (int n = 0; n < N; n++) S[(size_t)(i + 1) * N + n] = ai[n] * S[(size_t)i * N + n] + dxv * B[n];
    }
    float *h = wk->h + (size_t)c * N;
    for (int i = L - 1; i >= 0; i--) {
        int t = ta + i;
        float g = dy[(size_t)t * E + c];
        float xv = x[(size_t)t * ld_x + c];
        float delta = wk->delta[i];
        const float *B = Bm + (size_t)t * ld_bc, *C = Cm + (size_t)t * ld_bc;
        const float *Si = S + (size_t)i * N, *Sn = S + (size_t)(i + 1) * N, *ai = a + (size_t)i * N;
        double *dBi = wk->dB + (size_t)i * N, *dCi = wk->dC + (size_t)i * N;
        *pD += (double)g * xv;
        float dxt = g * D[c], ddelta = 0.0f;
        // (products in float, long sums in double; the simd reduction order is
        // fixed by the code, not by the thread count)
#pragma omp simd reduction(+ : dxt, ddelta)
        for (int n = 0; n < N; n++) {
            float hn = h[n] + g * C[n];  // adjoint of the state after position t
            dCi[n] += (double)(g * Sn[n]);
            dBi[n] += (double)(hn * delta * xv);
            dxt += hn * delta * B[n];
            float da = hn * Si[n];       // adjoint of exp(Δ·A)
            ddelta += hn * B[n] * xv + da * ai[n] * Ac[n];
            pA[n] += (double)(da * ai[n] * delta);  // dA; times A at the end gives dA_log
            h[n] = hn * ai[n];           // carried to position t − 1
        }
        float dr = ddelta * hax_dsoftplus(wk->raw[i]);
        ddraw[(size_t)t * E + c] += dr;
        *pb += dr;
        dx[(size_t)t * ld_dx + c] += dxt;
    }
}

void scan_backward(float *dx, int ld_dx, float *ddraw, float *dBm, float *dCm, int ld_dbc,
                   float *ddt_bias, float *dA_log, float *dD, const float *dy, const float *ckpt,
                   const float *x, int ld_x, const float *draw, const float *dt_bias,
                   const float *A_log, const float *Bm, const float *Cm, int ld_bc,
                   const float *D, const int *seq_off, int n_seq, int E, int N) {
    if (n_seq <= 0) return;
    const int T = SCAN_CHUNK;
    float *A = make_A(A_log, E, N);
    // Per-sequence parameter partials: dA [E, N], dD [E], db [E].
    size_t per = (size_t)E * N + 2 * (size_t)E;
    double *part = xcalloc((size_t)n_seq * per, sizeof(double));
#pragma omp parallel
    {
        scan_work wk;
        wk.S = xmalloc(sizeof(float) * (size_t)(T + 1) * N);
        wk.a = xmalloc(sizeof(float) * (size_t)T * N);
        wk.delta = xmalloc(sizeof(float) * T);
        wk.raw = xmalloc(sizeof(float) * T);
        wk.h = xmalloc(sizeof(float) * (size_t)E * N);
        wk.dB = xmalloc(sizeof(double) * (size_t)T * N);
        wk.dC = xmalloc(sizeof(double) * (size_t)T * N);
#pragma omp for schedule(dynamic, 1)
        for (int s = 0; s < n_seq; s++) {
            int t0 = seq_off[s], len = seq_off[s + 1] - t0;
            int n_chunk = (len + T - 1) / T;
            size_t base = ckpt_base(seq_off, s);
            double *pA = part + (size_t)s * per, *pD = pA + (size_t)E * N, *pb = pD + E;
            memset(wk.h, 0, sizeof(float) * (size_t)E * N);
            for (int j = n_chunk - 1; j >= 0; j--) {
                int ta = t0 + j * T, L = len - j * T < T ? len - j * T : T;
                memset(wk.dB, 0, sizeof(double) * (size_t)L * N);
                memset(wk.dC, 0, sizeof(double) * (size_t)L * N);
                const float *ck = ckpt + (base + (size_t)j) * E * N;
                for (int c = 0; c < E; c++)
                    scan_chunk_backward(&wk, pA + (size_t)c * N, pD + c, pb + c, dx, ld_dx, ddraw, dy,
                                        j ? ck + (size_t)c * N : NULL, x, ld_x, draw, dt_bias, A, Bm,
                                        Cm, ld_bc, D, ta, L, c, E, N);
                for (int i = 0; i < L; i++) {
                    float *dBt = dBm + (size_t)(ta + i) * ld_dbc, *dCt = dCm + (size_t)(ta + i) * ld_dbc;
                    for (int n = 0; n < N; n++) {
                        dBt[n] += (float)wk.dB[(size_t)i * N + n];
                        dCt[n] += (float)wk.dC[(size_t)i * N + n];
                    }
                }
            }
        }
        free(wk.S); free(wk.a); free(wk.delta); free(wk.raw); free(wk.h); free(wk.dB); free(wk.dC);
    }
    // Sequence partials added in sequence order (as separate calls would).
    for (int s = 0; s < n_seq; s++) {
        const double *pA = part + (size_t)s * per, *pD = pA + (size_t)E * N, *pb = pD + E;
        for (int c = 0; c < E; c++) {
            if (dA_log)
                for (int n = 0; n < N; n++)
                    dA_log[(size_t)c * N + n] += (float)(pA[(size_t)c * N + n] * A[(size_t)c * N + n]);
            if (dD) dD[c] += (float)pD[c];
            if (ddt_bias) ddt_bias[c] += (float)pb[c];
        }
    }
    free(part);
    free(A);
}
