// src/sparse/lsh.c: LSH buckets of the sparse branch (MODEL.md §5.4, §5.8;
// quirks 2, 6, 10; golden README Q1, Q2, Q7).
//
// Reference semantics: per sequence and feature f, with the n real positions
// of a row padded to L (pads hold 0):
//   mu_f  = (1/L) sum_{t<n} x_tf
//   nu_f^2 = sum_{t<n} (x_tf - mu_f)^2 + (L - n) mu_f^2
//   x~_tf = (x_tf - mu_f) / max(nu_f, 1e-12)
// (F.normalize's default dim=1 is the sequence axis.) Causal semantics (the
// paper, Eq. 5): x~_t = (x_t - m_t) / max(||x_t - m_t||, 1e-12), m_t the mean
// of positions 0..t of the sequence. Then proj_t = x~_t . H and
//   sign-bin: bucket = sum_i 2^i [proj_ti > 0]   (strict >, bit i = column i)
//   argmax:   bucket = the first i with the largest proj_ti.
// Everything here is in double: a sign that float rounding could flip is then
// decided as the float64 golden decides it whenever x itself agrees.
//
// bf16-pure, reference semantics (src/sparse/sparse.h): the reference's bf16
// ops instead, each rounded once (sums in double, then to float):
//   mu = R(sum_t x · fl(1/L)), c = R(x - mu), nu = R(sqrt(sum_t c^2 + n_pad mu^2)),
//   den = R(max(nu, 1e-12)), x~ = R(c / den), proj = R(x~ . H).
#include <math.h>
#include <stdlib.h>

#include "src/core/common.h"
#include "src/core/scalar.h"
#include "src/sparse/internal.h"

static int32_t bucket_of(const double *proj, int h, int argmax) {
    if (argmax) {
        int best = 0;
        for (int i = 1; i < h; i++)
            if (proj[i] > proj[best]) best = i;
        return best;
    }
    int32_t code = 0;
    for (int i = 0; i < h; i++)
        if (proj[i] > 0) code |= (int32_t)1 << i;
    return code;
}

// Projects one normalised vector c [N] and stores its bucket and projection.
static void project(int32_t *bucket, float *proj_out, const double *c, int N, const float *H,
                    int h, int argmax, double *proj) {
    for (int i = 0; i < h; i++) proj[i] = 0;
    for (int f = 0; f < N; f++) {
        const float *hrow = H + (size_t)f * h;
        for (int i = 0; i < h; i++) proj[i] += c[f] * (double)hrow[i];
    }
    for (int i = 0; i < h; i++) proj_out[i] = (float)proj[i];
    *bucket = bucket_of(proj, h, argmax);
}

// One sequence, reference semantics. w: 3N + h doubles of scratch.
static void hash_seq_reference(int32_t *bucket, float *proj, const float *x, int ldx, int N,
                               const float *H, int h, int argmax, int n, int L, double *w) {
    double *mu = w, *inv = w + N, *c = w + 2 * N, *pr = w + 3 * N;
    for (int f = 0; f < N; f++) mu[f] = 0;
    for (int t = 0; t < n; t++)
        for (int f = 0; f < N; f++) mu[f] += x[(size_t)t * ldx + f];
    for (int f = 0; f < N; f++) mu[f] /= L;
    for (int f = 0; f < N; f++) inv[f] = (double)(L - n) * mu[f] * mu[f];
    for (int t = 0; t < n; t++)
        for (int f = 0; f < N; f++) {
            double d = x[(size_t)t * ldx + f] - mu[f];
            inv[f] += d * d;
        }
    for (int f = 0; f < N; f++) inv[f] = 1.0 / fmax(sqrt(inv[f]), 1e-12);
    for (int t = 0; t < n; t++) {
        for (int f = 0; f < N; f++) c[f] = (x[(size_t)t * ldx + f] - mu[f]) * inv[f];
        project(bucket + t, proj + (size_t)t * h, c, N, H, h, argmax, pr);
    }
}

// One sequence, reference semantics in bf16-pure. w: 3N + h doubles.
static void hash_seq_reference_bf16(int32_t *bucket, float *proj, const float *x, int ldx, int N,
                                    const float *H, int h, int argmax, int n, int L, double *w) {
    double *mu = w, *den = w + N, *pr = w + 3 * N;
    float inv_L = 1.0f / (float)L;
    for (int f = 0; f < N; f++) {
        double s = 0;
        for (int t = 0; t < n; t++) s += x[(size_t)t * ldx + f];
        float m = hax_bf16_round((float)s * inv_L);
        double v = (double)(L - n) * m * m;  // the pads: c = R(0 - mu) = -mu
        for (int t = 0; t < n; t++) {
            float c = hax_bf16_round(x[(size_t)t * ldx + f] - m);
            v += (double)c * c;
        }
        mu[f] = m;
        den[f] = hax_bf16_round(fmaxf(hax_bf16_round(sqrtf((float)v)), 1e-12f));
    }
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < h; i++) pr[i] = 0;
        for (int f = 0; f < N; f++) {
            float c = hax_bf16_round(x[(size_t)t * ldx + f] - (float)mu[f]);
            double xt = hax_bf16_round(c / (float)den[f]);
            const float *hrow = H + (size_t)f * h;
            for (int i = 0; i < h; i++) pr[i] += xt * (double)hrow[i];  // bf16 products: exact
        }
        for (int i = 0; i < h; i++) pr[i] = hax_bf16_round((float)pr[i]);
        for (int i = 0; i < h; i++) proj[(size_t)t * h + i] = (float)pr[i];
        bucket[t] = bucket_of(pr, h, argmax);
    }
}

// One sequence, causal semantics (prefix mean, per-vector norm).
static void hash_seq_causal(int32_t *bucket, float *proj, const float *x, int ldx, int N,
                            const float *H, int h, int argmax, int n, double *w) {
    double *sum = w, *c = w + 2 * N, *pr = w + 3 * N;
    for (int f = 0; f < N; f++) sum[f] = 0;
    for (int t = 0; t < n; t++) {
        double nrm = 0;
        for (int f = 0; f < N; f++) {
            double v = x[(size_t)t * ldx + f];
            sum[f] += v;
            c[f] = v - sum[f] / (t + 1);
            nrm += c[f] * c[f];
        }
        double inv = 1.0 / fmax(sqrt(nrm), 1e-12);
        for (int f = 0; f < N; f++) c[f] *= inv;
        project(bucket + t, proj + (size_t)t * h, c, N, H, h, argmax, pr);
    }
}

void sparse_lsh_hash(int32_t *bucket, float *proj, const float *x, int ldx, int N,
                     const float *H, int h, int argmax, const int *seq_off, int n_seq, int L,
                     hax_semantics sem, int bf16) {
#pragma omp parallel
    {
        double *w = xmalloc(sizeof(double) * (3 * (size_t)N + h));
#pragma omp for schedule(dynamic, 1)
        for (int s = 0; s < n_seq; s++) {
            int o = seq_off[s], n = seq_off[s + 1] - o;
            if (sem == SEMANTICS_REFERENCE && bf16)
                hash_seq_reference_bf16(bucket + o, proj + (size_t)o * h, x + (size_t)o * ldx, ldx, N,
                                        H, h, argmax, n, L, w);
            else if (sem == SEMANTICS_REFERENCE)
                hash_seq_reference(bucket + o, proj + (size_t)o * h, x + (size_t)o * ldx, ldx, N,
                                   H, h, argmax, n, L, w);
            else
                hash_seq_causal(bucket + o, proj + (size_t)o * h, x + (size_t)o * ldx, ldx, N, H,
                                h, argmax, n, w);
        }
        free(w);
    }
}
