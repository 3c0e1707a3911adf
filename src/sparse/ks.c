// src/sparse/ks.c: key selection of the sparse branch; see src/sparse/ks.h.
#include "src/sparse/ks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/scalar.h"
#include "src/ops/linear.h"
#include "src/core/rng.h"

// ---------------------------------------------------------------- features

// One sequence of n rows: T rows get [K_t, TQ_t]. c, w2 are N doubles each.
static void features_seq(float *T, const float *K, int ldk, const float *Q, int ldq, int n,
                         int n_pad, int N, hax_semantics sem, double *c, double *w2) {
    int twoN = 2 * N;
    for (int t = 0; t < n; t++) memcpy(T + (size_t)t * twoN, K + (size_t)t * ldk, sizeof(float) * N);
    for (int i = 0; i < N; i++) c[i] = 0.0;
    if (sem == SEMANTICS_CAUSAL) {
        // Paper Eq. 14: each running-sum vector normalised on its own.
        for (int t = 0; t < n; t++) {
            const float *q = Q + (size_t)t * ldq;
            double nrm2 = 0.0;
            for (int i = 0; i < N; i++) {
                c[i] += q[i];
                nrm2 += c[i] * c[i];
            }
            double inv = 1.0 / fmax(sqrt(nrm2), 1e-12);
            float *tq = T + (size_t)t * twoN + N;
            for (int i = 0; i < N; i++) tq[i] = (float)(c[i] * inv);
        }
        return;
    }
    // Reference (F.normalize over the sequence axis): each feature column of
    // the running sum is divided by its norm over all L positions; the n_pad
    // pad positions hold the full-sequence sum C_{n-1}.
    for (int i = 0; i < N; i++) w2[i] = 0.0;
    for (int t = 0; t < n; t++) {
        const float *q = Q + (size_t)t * ldq;
        for (int i = 0; i < N; i++) {
            c[i] += q[i];
            w2[i] += c[i] * c[i];
        }
    }
    for (int i = 0; i < N; i++) w2[i] = 1.0 / fmax(sqrt(w2[i] + (double)n_pad * c[i] * c[i]), 1e-12);
    for (int i = 0; i < N; i++) c[i] = 0.0;
    for (int t = 0; t < n; t++) {
        const float *q = Q + (size_t)t * ldq;
        float *tq = T + (size_t)t * twoN + N;
        for (int i = 0; i < N; i++) {
            c[i] += q[i];
            tq[i] = (float)(c[i] * w2[i]);
        }
    }
}

void ks_features(float *T, const float *K, int ldk, const float *Q, int ldq, const int *seq_off,
                 int n_seq, int model_len, int N, hax_semantics sem) {
    if (sem == SEMANTICS_REFERENCE) {
        for (int s = 0; s < n_seq; s++) {
            int n = seq_off[s + 1] - seq_off[s];
            if (n > model_len)
                hax_die("sparse_ks: batch model_len: expected at least every sequence length, "
                        "found %d < length %d of sequence %d",
                        model_len, n, s);
        }
    }
#pragma omp parallel
    {
        double *c = xmalloc(sizeof(double) * 2 * N);
#pragma omp for schedule(dynamic, 1)
        for (int s = 0; s < n_seq; s++) {
            size_t o = (size_t)seq_off[s];
            int n = seq_off[s + 1] - seq_off[s];
            features_seq(T + o * 2 * N, K + o * ldk, ldk, Q + o * ldq, ldq, n, model_len - n, N,
                         sem, c, c + N);
        }
        free(c);
    }
}

// ---------------------------------------------------------------- score MLP

static void relu_inplace(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(x[i] > 0.0f)) x[i] = 0.0f;
}

void ks_mlp_forward(float *score, float *h1, float *h2, const float *T, const ks_params *p,
                    int n_tok, int N) {
    int D = 2 * N;
    // row by row (linear_forward_rows): a key's score must not depend on the
    // sequences packed beside it, or the top-k could pick differently
    linear_forward_rows(h1, D, T, D, p->w1, p->b1, n_tok, D, D);
    relu_inplace(h1, (size_t)n_tok * D);
    linear_forward_rows(h2, D, h1, D, p->w2, p->b2, n_tok, D, D);
    relu_inplace(h2, (size_t)n_tok * D);
    linear_forward_rows(score, 1, h2, D, p->w3, p->b3, n_tok, D, 1);
}

size_t ks_mlp_scratch_floats(int n_rows, int N) {
    return (size_t)n_rows * (5 * (size_t)(2 * N) + 1);
}

// dh *= relu'(pre), read from the post-ReLU value h (h > 0 iff pre > 0;
// PyTorch's ReLU passes no gradient at 0).
static void relu_backward(float *dh, const float *h, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(h[i] > 0.0f)) dh[i] = 0.0f;
}

void ks_mlp_backward(const ks_grads *g, const ks_params *p, const float *T, const float *h1,
                     const float *h2, const float *dscore, const int *rows, int n_rows, int N,
                     float *scratch) {
    if (n_rows <= 0) return;
    int D = 2 * N;
    size_t nd = (size_t)n_rows * D;
    float *Tg = scratch, *h1g = Tg + nd, *h2g = h1g + nd, *dh1 = h2g + nd, *dh2 = dh1 + nd;
    float *ds = dh2 + nd;
    // Gather the visited rows so the GEMMs run on n_rows rows, not n_tok.
    for (int r = 0; r < n_rows; r++) {
        size_t i = rows ? (size_t)rows[r] : (size_t)r;
        memcpy(Tg + (size_t)r * D, T + i * D, sizeof(float) * D);
        memcpy(h1g + (size_t)r * D, h1 + i * D, sizeof(float) * D);
        memcpy(h2g + (size_t)r * D, h2 + i * D, sizeof(float) * D);
        ds[r] = dscore[i];
    }
    memset(dh1, 0, sizeof(float) * nd);
    memset(dh2, 0, sizeof(float) * nd);
    linear_backward(dh2, D, g->w3, g->b3, ds, 1, h2g, D, p->w3, n_rows, D, 1);
    relu_backward(dh2, h2g, nd);
    linear_backward(dh1, D, g->w2, g->b2, dh2, D, h1g, D, p->w2, n_rows, D, D);
    relu_backward(dh1, h1g, nd);
    linear_backward(NULL, 0, g->w1, g->b1, dh1, D, Tg, D, p->w1, n_rows, D, D);
}

// ---------------------------------------------------------------- cumulative top-k

// a is a worse key than b: lower score, or an equal score and a higher index
// (ties keep the lower index).
static inline int ks_worse(const float *s, int a, int b) {
    return s[a] < s[b] || (s[a] == s[b] && a > b);
}

// Min-heap on "worse": heap[0] is the worst selected key.
static void heap_sift_down(int *heap, int m, int i, const float *s) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < m && ks_worse(s, heap[l], heap[w])) w = l;
        if (r < m && ks_worse(s, heap[r], heap[w])) w = r;
        if (w == i) return;
        int tmp = heap[i];
        heap[i] = heap[w];
        heap[w] = tmp;
        i = w;
    }
}

static void heap_sift_up(int *heap, int i, const float *s) {
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!ks_worse(s, heap[i], heap[parent])) return;
        int tmp = heap[i];
        heap[i] = heap[parent];
        heap[parent] = tmp;
        i = parent;
    }
}

// One sequence: the prefix top-k changes by at most one key per step (the new
// key t enters and evicts the worst, or does not enter), so a heap of the
// selected keys and an index-sorted copy suffice. heap, cur: k_c ints.
static void cumtopk_seq(int *sel, const float *s, int n, int k_c, int *heap, int *cur) {
    int m = 0;
    for (int t = 0; t < n; t++) {
        if (m < k_c) {
            heap[m] = t;
            heap_sift_up(heap, m, s);
            cur[m++] = t;
        } else if (ks_worse(s, heap[0], t)) {
            int out = heap[0];
            heap[0] = t;
            heap_sift_down(heap, m, 0, s);
            // cur is ascending; drop `out`, append t (the largest index so far).
            int lo = 0, hi = m - 1;
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (cur[mid] < out) lo = mid + 1;
                else hi = mid;
            }
            memmove(cur + lo, cur + lo + 1, sizeof(int) * (size_t)(m - 1 - lo));
            cur[m - 1] = t;
        }
        int *row = sel + (size_t)t * k_c;
        memcpy(row, cur, sizeof(int) * (size_t)m);
        for (int i = m; i < k_c; i++) row[i] = -1;
    }
}

void ks_cumtopk(int *sel, const float *score, const int *seq_off, int n_seq, int k_c) {
    if (k_c < 1) hax_die("sparse_ks: k_c: expected at least 1 key per component, found %d", k_c);
#pragma omp parallel
    {
        int *heap = xmalloc(sizeof(int) * 2 * (size_t)k_c);
#pragma omp for schedule(dynamic, 1)
        for (int s = 0; s < n_seq; s++) {
            size_t o = (size_t)seq_off[s];
            cumtopk_seq(sel + o * k_c, score + o, seq_off[s + 1] - seq_off[s], k_c, heap,
                        heap + k_c);
        }
        free(heap);
    }
}

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

double ks_rank_loss_pairs(const float *score, const double *y, const int *cand, const int *seq_off,
                          int n_seq, int k_c) {
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
                l += hax_bce_logits((double)x[I[a]] - (double)x[I[b]], hax_rank_target(ys[a], ys[b]));
        // Quirk 8: the mean runs over all m^2 pairs, the diagonal included.
        loss_s[s] = m > 0 ? l / ((double)m * m) : 0.0;
    }
    double total = 0.0;
    for (int s = 0; s < n_seq; s++) total += loss_s[s];
    free(loss_s);
    return total;
}

void ks_rank_targets(double *y, const float *K, int ldk, const float *Q, int ldq, const int *cand,
                     const int *seq_off, int n_seq, int model_len, int N, int k_c,
                     hax_semantics sem) {
    check_candidates(cand, seq_off, n_seq, k_c);
    for (int s = 0; s < n_seq; s++) {
        int n = seq_off[s + 1] - seq_off[s];
        if (sem == SEMANTICS_REFERENCE && n > model_len)
            hax_die("sparse_ks: batch model_len: expected at least every sequence length, found "
                    "%d < length %d of sequence %d", model_len, n, s);
    }
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
        // y_a: how much the later queries (and the key's own position) attend
        // to key I_a under a sigmoid "linear attention" (detached).
        const float *k = K + (o + (size_t)Ia) * ldk;
        double sum = 0.0;
        for (int t = Ia; t < n; t++) {
            const float *q = Q + (o + (size_t)t) * ldq;
            double dot = 0.0;
            for (int i = 0; i < N; i++) dot += (double)q[i] * (double)k[i];
            sum += hax_sigmoid_d(dot);
        }
        // Quirk 5: each pad query (Q = 0) adds sigmoid(0) = 0.5.
        if (sem == SEMANTICS_REFERENCE) sum += 0.5 * (double)(model_len - n);
        y[j] = sum;
    }
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

// ---------------------------------------------------------------- per layer

void ks_state_init(ks_state *st, int max_tok, int max_seq, int N, int k_c) {
    memset(st, 0, sizeof(*st));
    if (k_c < 1 || N < 1)
        hax_die("sparse_ks: ks_state_init: expected k_c >= 1 and N >= 1, found k_c %d, N %d", k_c, N);
    st->max_tok = max_tok;
    st->max_seq = max_seq;
    st->N = N;
    st->k_c = k_c;
    size_t D = 2 * (size_t)N, nt = max_tok > 0 ? (size_t)max_tok : 1;
    size_t nc = (size_t)(max_seq > 0 ? max_seq : 1) * (size_t)k_c;
    st->T = xmalloc(sizeof(float) * nt * D);
    st->h1 = xmalloc(sizeof(float) * nt * D);
    st->h2 = xmalloc(sizeof(float) * nt * D);
    st->score = xmalloc(sizeof(float) * nt);
    st->sel = xmalloc(sizeof(int) * nt * (size_t)k_c);
    st->cand = xmalloc(sizeof(int) * nc);
    st->y = xcalloc(nc, sizeof(double));
    st->dscore = xcalloc(nt, sizeof(float));
    st->rows = xmalloc(sizeof(int) * nc);
    st->scratch = xmalloc(sizeof(float) * ks_mlp_scratch_floats((int)nc, N));
}

void ks_state_free(ks_state *st) {
    free(st->T);
    free(st->h1);
    free(st->h2);
    free(st->score);
    free(st->sel);
    free(st->cand);
    free(st->y);
    free(st->dscore);
    free(st->rows);
    free(st->scratch);
    memset(st, 0, sizeof(*st));
}

double ks_forward(ks_state *st, const ks_params *p, const float *K, int ldk, const float *Q,
                  int ldq, const int *seq_off, int n_seq, int model_len, hax_semantics sem,
                  const int *cand) {
    int n_tok = seq_off[n_seq] - seq_off[0];
    if (seq_off[0] != 0)
        hax_die("sparse_ks: seq_off[0]: expected 0, found %d", seq_off[0]);
    if (n_tok > st->max_tok || n_seq > st->max_seq)
        hax_die("sparse_ks: batch: expected at most %d tokens and %d sequences (ks_state_init), "
                "found %d and %d", st->max_tok, st->max_seq, n_tok, n_seq);
    st->n_tok = n_tok;
    st->n_seq = n_seq;
    st->seq_off = seq_off;
    ks_features(st->T, K, ldk, Q, ldq, seq_off, n_seq, model_len, st->N, sem);
    ks_mlp_forward(st->score, st->h1, st->h2, st->T, p, n_tok, st->N);
    ks_cumtopk(st->sel, st->score, seq_off, n_seq, st->k_c);
    st->has_loss = cand != NULL;
    st->gate_loss = 0.0;
    if (!cand) return 0.0;
    memcpy(st->cand, cand, sizeof(int) * (size_t)n_seq * st->k_c);
    st->gate_loss = ks_rank_loss_forward(st->y, st->score, K, ldk, Q, ldq, st->cand, seq_off,
                                         n_seq, model_len, st->N, st->k_c, sem);
    return st->gate_loss;
}

void ks_backward(ks_state *st, const ks_params *p, const ks_grads *g, float scale) {
    if (!st->has_loss) return;
    int n_rows = ks_candidate_rows(st->rows, st->cand, st->seq_off, st->n_seq, st->k_c);
    for (int r = 0; r < n_rows; r++) st->dscore[st->rows[r]] = 0.0f;
    ks_rank_loss_backward(st->dscore, st->score, st->y, st->cand, st->seq_off, st->n_seq,
                          st->k_c, scale);
    ks_mlp_backward(g, p, st->T, st->h1, st->h2, st->dscore, st->rows, n_rows, st->N,
                    st->scratch);
}
