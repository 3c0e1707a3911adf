// src/ops/ssd.c: Mamba-2 SSD scan, forward and backward (see src/ops/ssd.h).
#include "src/ops/ssd.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/scalar.h"

static int n_chunks_of(int len) { return (len + SSD_CHUNK - 1) / SSD_CHUNK; }

// First chunk index of every sequence: chunk_off[0..n_seq].
static int *chunk_offsets(const int *seq_off, int n_seq) {
    int *off = xmalloc((size_t)(n_seq + 1) * sizeof(int));
    off[0] = 0;
    for (int s = 0; s < n_seq; s++) off[s + 1] = off[s] + n_chunks_of(seq_off[s + 1] - seq_off[s]);
    return off;
}

size_t ssd_ckpt_floats(const int *seq_off, int n_seq, int H, int P, int N) {
    size_t chunks = 0;
    for (int s = 0; s < n_seq; s++) chunks += (size_t)n_chunks_of(seq_off[s + 1] - seq_off[s]);
    return chunks * (size_t)H * P * N;
}

size_t ssd_ckpt_floats_max(int n_tok, int n_seq, int H, int P, int N) {
    return ((size_t)n_seq + (size_t)n_tok / SSD_CHUNK) * (size_t)H * P * N;
}

// ---------------------------------------------------------------------------
// SSD forward

// One head of one sequence: positions t0..t1-1. S [P*N] is the running state.
static void ssd_forward_head(float *y, int ld_y, float *ckpt_h, size_t ckpt_stride, float *S,
                             const float *x, int ld_x, const float *delta, int H, const float *B,
                             const float *C, int ld_bc, float A, float Dh, int t0, int t1, int h,
                             int P, int N) {
    memset(S, 0, (size_t)P * N * sizeof(float));
    for (int t = t0; t < t1; t++) {
        if ((t - t0) % SSD_CHUNK == 0 && ckpt_h)
            memcpy(ckpt_h + (size_t)((t - t0) / SSD_CHUNK) * ckpt_stride, S,
                   (size_t)P * N * sizeof(float));
        float dl = delta[(size_t)t * H + h];
        float a = expf(dl * A);
        const float *xt = x + (size_t)t * ld_x + h * P;
        const float *Bt = B + (size_t)t * ld_bc;
        const float *Ct = C + (size_t)t * ld_bc;
        float *yt = y + (size_t)t * ld_y + h * P;
        for (int p = 0; p < P; p++) {
            float *Sp = S + (size_t)p * N;
            float dx = dl * xt[p];
            float acc = 0.0f;
            // omp simd: a vectorised (fixed-order for a given build) reduction.
#pragma omp simd reduction(+ : acc)
            for (int n = 0; n < N; n++) {
                Sp[n] = a * Sp[n] + dx * Bt[n];
                acc += Ct[n] * Sp[n];
            }
            yt[p] = acc + Dh * xt[p];
        }
    }
}

void ssd_forward(float *y, int ld_y, float *delta, float *ckpt, const float *x, int ld_x,
                 const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                 const float *dt_bias, const float *A_log, const float *D, const int *seq_off,
                 int n_seq, int H, int P, int N) {
    int n_tok = seq_off[n_seq];
    // Δ for every position and head.
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n_tok; t++)
        for (int h = 0; h < H; h++)
            delta[(size_t)t * H + h] = hax_softplus(dt[(size_t)t * ld_dt + h] + dt_bias[h]);

    int *coff = chunk_offsets(seq_off, n_seq);
    size_t state = (size_t)P * N;
#pragma omp parallel
    {
        float *S = xmalloc(state * sizeof(float));
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int s = 0; s < n_seq; s++)
            for (int h = 0; h < H; h++) {
                float *ck = ckpt ? ckpt + ((size_t)coff[s] * H + h) * state : NULL;
                ssd_forward_head(y, ld_y, ck, (size_t)H * state, S, x, ld_x, delta, H, B, C, ld_bc,
                                 -expf(A_log[h]), D[h], seq_off[s], seq_off[s + 1], h, P, N);
            }
        free(S);
    }
    free(coff);
}

// ---------------------------------------------------------------------------
// SSD backward
//
// With a_t = exp(Δ_t A) and G_t = dL/dS_t (from y_t and from S_{t+1}):
//   G_t = dy_t ⊗ C_t + a_{t+1} G_{t+1}
//   dC_t[n] = Σ_p dy_t[p] S_t[p,n]         dB_t[n] = Δ_t Σ_p x_t[p] G_t[p,n]
//   dx_t[p] = D dy_t[p] + Δ_t Σ_n G_t[p,n] B_t[n]
//   dΔ_t    = Σ_{p,n} G_t[p,n] x_t[p] B_t[n] + A a_t Σ_{p,n} G_t[p,n] S_{t-1}[p,n]
//   dA     += a_t Δ_t Σ_{p,n} G_t[p,n] S_{t-1}[p,n]
// States are recomputed chunk by chunk (in reverse) from the checkpoints.

typedef struct {
    float *dx, *ddt, *dB, *dC;
    int ld_dx, ld_ddt, ld_dbc;
    const float *dy, *delta, *ckpt, *x, *dt, *B, *C, *dt_bias;
    int ld_dy, ld_x, ld_dt, ld_bc;
    int H, P, N;
} ssd_bwd_args;

// Backward of head h of the sequence at rows t0..t1-1 whose first checkpoint
// is ck (stride between chunks ck_stride). Ss holds (SSD_CHUNK+1)·P·N floats,
// G P·N floats, loc 2·N floats. part[0..2] accumulate dD, dA (w.r.t. A), Σ ddt.
// This head's share of dB_t and dC_t (summed over p first) is added to row t
// of dBh and dCh (leading dimension ld_h; NULL: not wanted).
static void ssd_backward_head(const ssd_bwd_args *g, float *dBh, float *dCh, size_t ld_h,
                              const float *ck, size_t ck_stride, float *Ss, float *G, float *loc,
                              float A, float Dh, int t0, int t1, int h, double *part) {
    int H = g->H, P = g->P, N = g->N;
    size_t state = (size_t)P * N;
    memset(G, 0, state * sizeof(float));
    // G holds dL/dS_{t} only after the scaling by a_{t+1} (a_next), which is
    // folded into the next position's update to save one pass over G.
    float a_next = 0.0f;
    int nc = n_chunks_of(t1 - t0);
    for (int c = nc - 1; c >= 0; c--) {
        int c0 = t0 + c * SSD_CHUNK, c1 = c0 + SSD_CHUNK < t1 ? c0 + SSD_CHUNK : t1;
        // Ss slot i holds the state after position c0+i-1 (slot 0: the checkpoint).
        memcpy(Ss, ck + (size_t)c * ck_stride, state * sizeof(float));
        for (int t = c0; t < c1; t++) {
            float dl = g->delta[(size_t)t * H + h], a = expf(dl * A);
            const float *xt = g->x + (size_t)t * g->ld_x + h * P, *Bt = g->B + (size_t)t * g->ld_bc;
            const float *prev = Ss + (size_t)(t - c0) * state;
            float *cur = Ss + (size_t)(t - c0 + 1) * state;
            for (int p = 0; p < P; p++) {
                float dx = dl * xt[p];
                for (int n = 0; n < N; n++) cur[p * N + n] = a * prev[p * N + n] + dx * Bt[n];
            }
        }
        for (int t = c1 - 1; t >= c0; t--) {
            float dl = g->delta[(size_t)t * H + h], a = expf(dl * A);
            const float *xt = g->x + (size_t)t * g->ld_x + h * P;
            const float *Bt = g->B + (size_t)t * g->ld_bc, *Ct = g->C + (size_t)t * g->ld_bc;
            const float *dyt = g->dy + (size_t)t * g->ld_dy + h * P;
            const float *St = Ss + (size_t)(t - c0 + 1) * state, *Sprev = St - state;
            double d_delta = 0.0, d_a = 0.0, dD = 0.0;
            float *lB = loc, *lC = loc + N;
            memset(loc, 0, 2 * (size_t)N * sizeof(float));
            for (int p = 0; p < P; p++) {
                float *Gp = G + (size_t)p * N;
                const float *Sp = St + (size_t)p * N, *Spp = Sprev + (size_t)p * N;
                float gb = 0.0f, gs = 0.0f;
#pragma omp simd reduction(+ : gb, gs)
                for (int n = 0; n < N; n++) {
                    Gp[n] = a_next * Gp[n] + dyt[p] * Ct[n];
                    gb += Gp[n] * Bt[n];
                    gs += Gp[n] * Spp[n];
                }
                float dxp = dl * xt[p];
                for (int n = 0; n < N; n++) {
                    lC[n] += dyt[p] * Sp[n];
                    lB[n] += dxp * Gp[n];
                }
                if (g->dx) g->dx[(size_t)t * g->ld_dx + h * P + p] += Dh * dyt[p] + dl * gb;
                d_delta += (double)xt[p] * gb;
                d_a += gs;
                dD += (double)dyt[p] * xt[p];
            }
            if (dBh)
                for (int n = 0; n < N; n++) dBh[(size_t)t * ld_h + n] += lB[n];
            if (dCh)
                for (int n = 0; n < N; n++) dCh[(size_t)t * ld_h + n] += lC[n];
            d_delta += (double)A * a * d_a;
            part[0] += dD;
            part[1] += (double)a * dl * d_a;
            // Δ = softplus(u), u = dt + dt_bias: dΔ/du = σ(u) (1 above the threshold).
            float u = g->dt[(size_t)t * g->ld_dt + h] + g->dt_bias[h];
            double d_u = d_delta * (u > 20.0f ? 1.0 : (double)hax_sigmoid(u));
            part[2] += d_u;
            if (g->ddt) g->ddt[(size_t)t * g->ld_ddt + h] += (float)d_u;
            a_next = a;
        }
    }
}

void ssd_backward(float *dx, int ld_dx, float *ddt, int ld_ddt, float *dB, float *dC, int ld_dbc,
                  float *ddt_bias, float *dA_log, float *dD, const float *dy, int ld_dy,
                  const float *delta, const float *ckpt, const float *x, int ld_x,
                  const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                  const float *dt_bias, const float *A_log, const float *D, const int *seq_off,
                  int n_seq, int H, int P, int N) {
    ssd_bwd_args g = {dx, ddt, dB, dC, ld_dx, ld_ddt, ld_dbc, dy, delta, ckpt, x, dt, B, C,
                      dt_bias, ld_dy, ld_x, ld_dt, ld_bc, H, P, N};
    int *coff = chunk_offsets(seq_off, n_seq);
    size_t state = (size_t)P * N;
    // Per-sequence partials [n_seq][H][3] so the sum order never depends on threads.
    double *part = xcalloc((size_t)n_seq * H * 3, sizeof(double));
    // dB and dC of a position receive every head's share, added in head order.
    // With many sequences one thread takes a whole sequence (all heads, in
    // order). With fewer sequences than threads each (sequence, head) is a task
    // that writes its share to a scratch slice; the slices are then added in
    // head order, which gives the same float results as the first way.
    int n_tok = seq_off[n_seq];
    int per_head = n_seq < omp_get_max_threads() && H > 1 && (dB || dC);
    size_t ld_h = 2 * (size_t)N;
    float *scr = per_head ? xcalloc((size_t)H * n_tok * ld_h, sizeof(float)) : NULL;
#pragma omp parallel
    {
        float *Ss = xmalloc((size_t)(SSD_CHUNK + 1) * state * sizeof(float));
        float *G = xmalloc(state * sizeof(float)), *loc = xmalloc(ld_h * sizeof(float));
        if (per_head) {
#pragma omp for schedule(dynamic, 1) collapse(2)
            for (int s = 0; s < n_seq; s++)
                for (int h = 0; h < H; h++) {
                    const float *ck = ckpt + ((size_t)coff[s] * H + h) * state;
                    float *sh = scr + (size_t)h * n_tok * ld_h;
                    ssd_backward_head(&g, sh, sh + N, ld_h, ck, (size_t)H * state, Ss, G, loc,
                                      -expf(A_log[h]), D[h], seq_off[s], seq_off[s + 1], h,
                                      part + ((size_t)s * H + h) * 3);
                }
#pragma omp for schedule(static)
            for (int t = 0; t < n_tok; t++)
                for (int h = 0; h < H; h++) {
                    const float *st = scr + ((size_t)h * n_tok + t) * ld_h;
                    for (int n = 0; n < N; n++) {
                        if (dB) dB[(size_t)t * ld_dbc + n] += st[n];
                        if (dC) dC[(size_t)t * ld_dbc + n] += st[N + n];
                    }
                }
        } else {
#pragma omp for schedule(dynamic, 1)
            for (int s = 0; s < n_seq; s++)
                for (int h = 0; h < H; h++) {
                    const float *ck = ckpt + ((size_t)coff[s] * H + h) * state;
                    ssd_backward_head(&g, dB, dC, (size_t)ld_dbc, ck, (size_t)H * state, Ss, G,
                                      loc, -expf(A_log[h]), D[h], seq_off[s], seq_off[s + 1], h,
                                      part + ((size_t)s * H + h) * 3);
                }
        }
        free(Ss);
        free(G);
        free(loc);
    }
    free(scr);
    // Added one sequence at a time (in float) so that a packed batch gives the
    // same parameter gradients as its sequences passed one call at a time.
    for (int s = 0; s < n_seq; s++)
        for (int h = 0; h < H; h++) {
            const double *q = part + ((size_t)s * H + h) * 3;
            if (dD) dD[h] += (float)q[0];
            // A = -exp(A_log): dA/dA_log = A.
            if (dA_log) dA_log[h] += (float)(q[1] * -exp((double)A_log[h]));
            if (ddt_bias) ddt_bias[h] += (float)q[2];
        }
    free(part);
    free(coff);
}
