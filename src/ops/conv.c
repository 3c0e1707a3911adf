// src/ops/conv.c: see src/ops/conv.h.
#include "src/ops/conv.h"

#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/ops/basic.h"

// Channels per work item of the backward (sequence × channel block items; each
// item owns its channels' slots of the per-sequence dw/db partials).
#define CONV_CBLOCK 32

// The start of the sequence holding row t: seq_off[s] <= t < seq_off[s+1].
static int seq_start(const int *seq_off, int n_seq, int t) {
    int lo = 0, hi = n_seq - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (seq_off[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return seq_off[lo];
}

// w [C, K] → wt [K, C], so that the inner loops run over contiguous channels.
static float *transpose_w(const float *w, int C, int K) {
    float *wt = xmalloc(sizeof(float) * (size_t)C * K);
    for (int c = 0; c < C; c++)
        for (int k = 0; k < K; k++) wt[(size_t)k * C + c] = w[(size_t)c * K + k];
    return wt;
}

void conv_silu_forward(float *out, float *pre, const float *inp, int ld_inp, const float *w,
                       const float *b, const int *seq_off, int n_seq, int C, int K) {
    if (n_seq <= 0) return;
    float *wt = transpose_w(w, C, K);
#pragma omp parallel for schedule(static)
    for (int t = seq_off[0]; t < seq_off[n_seq]; t++) {
        int t0 = seq_start(seq_off, n_seq, t);
        float *o = out + (size_t)t * C;
        for (int c = 0; c < C; c++) o[c] = b ? b[c] : 0.0f;
        for (int k = 0; k < K; k++) {
            int src = t - (K - 1) + k;
            if (src < t0) continue;  // before the sequence start: zero input
            const float *xi = inp + (size_t)src * ld_inp;
            const float *wk = wt + (size_t)k * C;
            for (int c = 0; c < C; c++) o[c] += wk[c] * xi[c];
        }
        if (pre) memcpy(pre + (size_t)t * C, o, sizeof(float) * C);
        for (int c = 0; c < C; c++) o[c] = hax_silu(o[c]);
    }
    free(wt);
}

void conv_silu_backward(float *dinp, int ld_dinp, float *dw, float *db, const float *dout,
                        const float *pre, const float *inp, int ld_inp, const float *w,
                        const int *seq_off, int n_seq, int C, int K) {
    if (n_seq <= 0) return;
    float *wt = transpose_w(w, C, K);
    // Per sequence: dw partial [K, C] then db partial [C], in double.
    size_t per = (size_t)C * (K + 1);
    double *part = xcalloc((size_t)n_seq * per, sizeof(double));
    int n_blk = (C + CONV_CBLOCK - 1) / CONV_CBLOCK;
#pragma omp parallel
    {
        float *g = xmalloc(sizeof(float) * CONV_CBLOCK);
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int s = 0; s < n_seq; s++) {
            for (int blk = 0; blk < n_blk; blk++) {
                int c0 = blk * CONV_CBLOCK, nc = C - c0 < CONV_CBLOCK ? C - c0 : CONV_CBLOCK;
                int t0 = seq_off[s], t1 = seq_off[s + 1];
                double *pw = part + (size_t)s * per, *pb = pw + (size_t)C * K;
                for (int t = t0; t < t1; t++) {
                    const float *dt = dout + (size_t)t * C + c0, *pt = pre + (size_t)t * C + c0;
                    for (int c = 0; c < nc; c++) g[c] = dt[c] * hax_dsilu(pt[c]);
                    for (int c = 0; c < nc; c++) pb[c0 + c] += g[c];
                    for (int k = 0; k < K; k++) {
                        int src = t - (K - 1) + k;
                        if (src < t0) continue;
                        const float *xi = inp + (size_t)src * ld_inp + c0;
                        const float *wk = wt + (size_t)k * C + c0;
                        double *pwk = pw + (size_t)k * C + c0;
                        for (int c = 0; c < nc; c++) pwk[c] += (double)g[c] * xi[c];
                        if (dinp) {
                            float *di = dinp + (size_t)src * ld_dinp + c0;
                            for (int c = 0; c < nc; c++) di[c] += g[c] * wk[c];
                        }
                    }
                }
            }
        }
        free(g);
    }
    // Sequence partials added in sequence order (as separate calls would).
    for (int s = 0; s < n_seq; s++) {
        const double *pw = part + (size_t)s * per, *pb = pw + (size_t)C * K;
        for (int c = 0; c < C; c++) {
            for (int k = 0; k < K; k++) dw[(size_t)c * K + k] += (float)pw[(size_t)k * C + c];
            if (db) db[c] += (float)pb[c];
        }
    }
    free(part);
    free(wt);
}
