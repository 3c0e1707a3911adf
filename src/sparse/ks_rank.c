// src/sparse/ks_rank.c: key selection of the sparse branch, part 2: the
// ranking-loss candidates (keyed Philox stream), targets, loss and its
// backward (the CPU twin of cuda/sparse/ks_rank.cu). See src/sparse/ks.h.
#include "src/sparse/ks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/rng.h"
#include "src/core/scalar.h"

// ---------------------------------------------------------------- candidates

// Floyd's algorithm: a uniform random m-subset of 0..n-1 with m draws and no
// n-sized scratch; then sorted ascending.
static void sample_subset(int *out, int n, int m, hax_rng *r) {
    int k = 0;
    for (int j = n - m; j < n; j++) {
        int t = (int)rng_below(r, (uint32_t)j + 1);
        int seen = 0;
        for (int i = 0; i < k; i++)
            if (out[i] == t) seen = 1;
        out[k++] = seen ? j : t;
    }
    for (int i = 1; i < m; i++) {
        int v = out[i], j = i - 1;
        while (j >= 0 && out[j] > v) {
            out[j + 1] = out[j];
            j--;
        }
        out[j + 1] = v;
    }
}

void ks_sample_candidates(int *cand, const int *seq_off, int n_seq, const int64_t *sample_id,
                          int k_c, uint64_t seed, uint32_t step, uint32_t layer) {
    for (int s = 0; s < n_seq; s++) {
        int n = seq_off[s + 1] - seq_off[s];
        int m = n < k_c ? n : k_c;
        int *row = cand + (size_t)s * k_c;
        hax_rng r;
        rng_init(&r, seed, RNG_KS, step, layer, (uint32_t)sample_id[s]);
        sample_subset(row, n, m, &r);
        for (int i = m; i < k_c; i++) row[i] = -1;
    }
}

// ---------------------------------------------------------------- ranking loss

// Number of candidates of one row (entries before the first -1); dies on a
// position outside 0..n-1 or a repeated one (the loss would not be the
// reference's then).
static int count_candidates(const int *row, int n, int k_c, int s) {
    int m = 0;
    while (m < k_c && row[m] >= 0) {
        if (row[m] >= n)
            hax_die("sparse_ks: candidates of sequence %d: expected positions below its length %d, "
                    "found %d", s, n, row[m]);
        for (int i = 0; i < m; i++)
            if (row[i] == row[m])
                hax_die("sparse_ks: candidates of sequence %d: expected distinct positions, found %d "
                        "twice", s, row[m]);
        m++;
    }
    for (int i = m; i < k_c; i++)
        if (row[i] >= 0)
            hax_die("sparse_ks: candidates of sequence %d: expected -1 after the first -1, found %d "
                    "in slot %d", s, row[i], i);
    return m;
}

// hax_sigmoid_d, hax_rank_target, hax_bce_logits: src/core/scalar.h (shared with
// cuda/sparse/ks_rank.cu).

// Candidates of every row, checked (dies on a bad one).
static void check_candidates(const int *cand, const int *seq_off, int n_seq, int k_c) {
    for (int s = 0; s < n_seq; s++)
        count_candidates(cand + (size_t)s * k_c, seq_off[s + 1] - seq_off[s], k_c, s);
}

static inline int n_candidates(const int *row, int k_c) {
    int m = 0;
    while (m < k_c && row[m] >= 0) m++;
    return m;
}

// The ranking loss over each sequence's candidate pairs: fp32's BCE terms in
// double, or (bf16) the reference's bf16 ops per term (hax_bce_term_bf16).
static double loss_pairs(const float *score, const double *y, const int *cand, const int *seq_off, int n_seq,
                         int k_c, int bf16) {
    check_candidates(cand, seq_off, n_seq, k_c);
    // Per-sequence losses, summed in sequence order afterwards (thread-count
    // independent).
    double *loss_s = xmalloc(sizeof(double) * (size_t)(n_seq > 0 ? n_seq : 1));
#pragma omp parallel for schedule(dynamic, 1)
    for (int s = 0; s < n_seq; s++) {
        const int *I = cand + (size_t)s * k_c;
        const double *ys = y + (size_t)s * k_c;
        const float *x = score + seq_off[s];
        int m = n_candidates(I, k_c);
        double l = 0.0;
        for (int a = 0; a < m; a++)
            for (int b = 0; b < m; b++)
                l += bf16 ? hax_bce_term_bf16(x[I[a]], x[I[b]], ys[a], ys[b])
                          : hax_bce_logits((double)x[I[a]] - (double)x[I[b]], hax_rank_target(ys[a], ys[b]));
        // Quirk 8: the mean runs over all m^2 pairs, the diagonal included.
        loss_s[s] = m > 0 ? l / ((double)m * m) : 0.0;
    }
    double total = 0.0;
    for (int s = 0; s < n_seq; s++) total += loss_s[s];
    free(loss_s);
    return total;
}

double ks_rank_loss_pairs(const float *score, const double *y, const int *cand, const int *seq_off,
                          int n_seq, int k_c) {
    return loss_pairs(score, y, cand, seq_off, n_seq, k_c, 0);
}

// The arguments of ks_rank_targets and ks_rank_targets_bf16: the candidates
// (dies on a bad one) and, in reference semantics, no sequence longer than
// model_len.
static void check_target_args(const int *cand, const int *seq_off, int n_seq, int model_len, int k_c,
                              hax_semantics sem) {
    check_candidates(cand, seq_off, n_seq, k_c);
    for (int s = 0; s < n_seq; s++) {
        int n = seq_off[s + 1] - seq_off[s];
        if (sem == SEMANTICS_REFERENCE && n > model_len)
            hax_die("sparse_ks: batch model_len: expected at least every sequence length, found "
                    "%d < length %d of sequence %d", model_len, n, s);
    }
}

// y_a for each candidate slot: how much the later queries (and the key's own
// position) attend to key I_a under a sigmoid "linear attention" (detached).
// bf16: the reference's bf16 ops per term (the dot rounded once: bf16
// products are exact in double; the sigmoid rounded) and on the sum.
static void targets(double *y, const float *K, int ldk, const float *Q, int ldq, const int *cand, const int *seq_off,
                    int n_seq, int model_len, int N, int k_c, hax_semantics sem, int bf16) {
    check_target_args(cand, seq_off, n_seq, model_len, k_c, sem);
    // One task per (sequence, candidate slot), so that a long single
    // sequence still spreads over the threads; each writes its own y.
#pragma omp parallel for schedule(dynamic, 8)
    for (long j = 0; j < (long)n_seq * k_c; j++) {
        int s = (int)(j / k_c);
        size_t o = (size_t)seq_off[s];
        int n = seq_off[s + 1] - seq_off[s];
        int Ia = cand[j];
        if (Ia < 0) {  // an unused slot
            y[j] = 0.0;
            continue;
        }
        const float *k = K + (o + (size_t)Ia) * ldk;
        double sum = 0.0;
        for (int t = Ia; t < n; t++) {
            const float *q = Q + (o + (size_t)t) * ldq;
            double dot = 0.0;
            for (int i = 0; i < N; i++) dot += (double)q[i] * (double)k[i];
            sum += bf16 ? hax_bf16_round(hax_sigmoid(hax_bf16_round((float)dot))) : hax_sigmoid_d(dot);
        }
        // Quirk 5: each pad query (Q = 0) adds sigmoid(0) = 0.5.
        if (sem == SEMANTICS_REFERENCE) sum += 0.5 * (double)(model_len - n);
        y[j] = bf16 ? hax_bf16_round((float)sum) : sum;
    }
}

void ks_rank_targets(double *y, const float *K, int ldk, const float *Q, int ldq, const int *cand,
                     const int *seq_off, int n_seq, int model_len, int N, int k_c,
                     hax_semantics sem) {
    targets(y, K, ldk, Q, ldq, cand, seq_off, n_seq, model_len, N, k_c, sem, 0);
}

double ks_rank_loss_forward(double *y, const float *score, const float *K, int ldk,
                            const float *Q, int ldq, const int *cand, const int *seq_off,
                            int n_seq, int model_len, int N, int k_c, hax_semantics sem) {
    ks_rank_targets(y, K, ldk, Q, ldq, cand, seq_off, n_seq, model_len, N, k_c, sem);
    return ks_rank_loss_pairs(score, y, cand, seq_off, n_seq, k_c);
}

void ks_rank_loss_backward(float *dscore, const float *score, const double *y, const int *cand,
                           const int *seq_off, int n_seq, int k_c, float scale) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int s = 0; s < n_seq; s++) {
        size_t o = (size_t)seq_off[s];
        const int *I = cand + (size_t)s * k_c;
        const double *ys = y + (size_t)s * k_c;
        const float *x = score + o;
        int m = n_candidates(I, k_c);
        if (m == 0) continue;
        // With P_ab = x_a - x_b, T_ba = 1 - T_ab: d/dx_a of the mean is
        // (2/m^2) sum_b (sigmoid(P_ab) - T_ab).
        double c = 2.0 * (double)scale / ((double)m * m);
        for (int a = 0; a < m; a++) {
            double g = 0.0;
            for (int b = 0; b < m; b++)
                g += hax_sigmoid_d((double)x[I[a]] - (double)x[I[b]]) - hax_rank_target(ys[a], ys[b]);
            dscore[o + (size_t)I[a]] += (float)(c * g);
        }
    }
}

int ks_candidate_rows(int *rows, const int *cand, const int *seq_off, int n_seq, int k_c) {
    int n_rows = 0;
    for (int s = 0; s < n_seq; s++) {
        const int *I = cand + (size_t)s * k_c;
        for (int a = 0; a < k_c && I[a] >= 0; a++) rows[n_rows++] = seq_off[s] + I[a];
    }
    return n_rows;
}

// ---------------------------------------------------------------- bf16-pure (ks.h)

#define R hax_bf16_round

void ks_rank_targets_bf16(double *y, const float *K, int ldk, const float *Q, int ldq, const int *cand,
                          const int *seq_off, int n_seq, int model_len, int N, int k_c,
                          hax_semantics sem) {
    targets(y, K, ldk, Q, ldq, cand, seq_off, n_seq, model_len, N, k_c, sem, 1);
}

double ks_rank_loss_pairs_bf16(const float *score, const double *y, const int *cand, const int *seq_off,
                               int n_seq, int k_c) {
    return loss_pairs(score, y, cand, seq_off, n_seq, k_c, 1);
}

void ks_rank_loss_backward_bf16(float *dscore, const float *score, const double *y, const int *cand,
                                const int *seq_off, int n_seq, int k_c, float scale) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int s = 0; s < n_seq; s++) {
        size_t o = (size_t)seq_off[s];
        const int *I = cand + (size_t)s * k_c;
        const double *ys = y + (size_t)s * k_c;
        const float *x = score + o;
        int m = n_candidates(I, k_c);
        if (m == 0) continue;
        float inv_m2 = 1.0f / (float)(m * m);
        for (int a = 0; a < m; a++) {
            // P = x.unsqueeze(-1) - x.unsqueeze(-2): x_a's gradient is the sum
            // over its row of dP plus minus the sum over its column, each a
            // bf16 reduction, added in bf16
            double row = 0.0, col = 0.0;
            for (int b = 0; b < m; b++) {
                row += hax_bce_dpair_bf16(x[I[a]], x[I[b]], ys[a], ys[b], scale, inv_m2);
                col += hax_bce_dpair_bf16(x[I[b]], x[I[a]], ys[b], ys[a], scale, inv_m2);
            }
            dscore[o + (size_t)I[a]] += R(R((float)row) + R((float)-col));
        }
    }
}
