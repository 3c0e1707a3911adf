// src/sparse/ks.c: key selection of the sparse branch, part 1: features, the
// score MLP, the cumulative top-k and the per-layer chaining; the ranking
// loss (candidates, targets, loss) is in src/sparse/ks_rank.c. See src/sparse/ks.h.
#include "src/sparse/ks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/scalar.h"
#include "src/ops/linear.h"

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

// ---------------------------------------------------------------- bf16 features

#define R hax_bf16_round

int ks_cumsum_bf16_acc(void) {
    const char *v = getenv("HAX_KS_CUMSUM_BF16_ACC");
    if (!v || !*v || !strcmp(v, "1")) return 1;
    if (!strcmp(v, "0")) return 0;
    hax_die("HAX_KS_CUMSUM_BF16_ACC: expected 0 or 1, found '%s'", v);
    return 1;
}

// One sequence (ks.h's ks_features_bf16): C_t is kept in T's TQ half until
// the column norms are known. w2: N doubles.
static void features_seq_bf16(float *T, const float *K, int ldk, const float *Q, int ldq, int n, int n_pad,
                              int N, int bf16_acc, double *w2) {
    int twoN = 2 * N;
    for (int t = 0; t < n; t++) memcpy(T + (size_t)t * twoN, K + (size_t)t * ldk, sizeof(float) * N);
    for (int i = 0; i < N; i++) {
        float acc = 0.0f, c = 0.0f;
        double s2 = 0.0;
        for (int t = 0; t < n; t++) {
            acc = bf16_acc ? R(acc + Q[(size_t)t * ldq + i]) : acc + Q[(size_t)t * ldq + i];
            c = R(acc);
            T[(size_t)t * twoN + N + i] = c;
            s2 += (double)c * c;
        }
        // the n_pad pad positions hold C_{n-1}
        w2[i] = R(fmaxf(R(sqrtf((float)(s2 + (double)n_pad * c * c))), 1e-12f));
    }
    for (int t = 0; t < n; t++)
        for (int i = 0; i < N; i++) {
            float *tq = T + (size_t)t * twoN + N + i;
            *tq = R(*tq / (float)w2[i]);
        }
}

void ks_features_bf16(float *T, const float *K, int ldk, const float *Q, int ldq, const int *seq_off,
                      int n_seq, int model_len, int N, int bf16_acc) {
    for (int s = 0; s < n_seq; s++) {
        int n = seq_off[s + 1] - seq_off[s];
        if (n > model_len)
            hax_die("sparse_ks: batch model_len: expected at least every sequence length, found %d < length %d "
                    "of sequence %d", model_len, n, s);
    }
#pragma omp parallel
    {
        double *w2 = xmalloc(sizeof(double) * N);
#pragma omp for schedule(dynamic, 1)
        for (int s = 0; s < n_seq; s++) {
            size_t o = (size_t)seq_off[s];
            int n = seq_off[s + 1] - seq_off[s];
            features_seq_bf16(T + o * 2 * N, K + o * ldk, ldk, Q + o * ldq, ldq, n, model_len - n, N, bf16_acc,
                              w2);
        }
        free(w2);
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

void ks_mlp_forward_bf16(float *score, float *h1, float *h2, const float *T, const ks_params *p,
                         int n_tok, int N) {
    int D = 2 * N;
    size_t nd = (size_t)n_tok * D;
    linear_forward_rows(h1, D, T, D, p->w1, p->b1, n_tok, D, D);
    for (size_t i = 0; i < nd; i++) h1[i] = R(h1[i]);
    relu_inplace(h1, nd);
    linear_forward_rows(h2, D, h1, D, p->w2, p->b2, n_tok, D, D);
    for (size_t i = 0; i < nd; i++) h2[i] = R(h2[i]);
    relu_inplace(h2, nd);
    linear_forward_rows(score, 1, h2, D, p->w3, p->b3, n_tok, D, 1);
    for (int i = 0; i < n_tok; i++) score[i] = R(score[i]);
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

// ks_mlp_backward, and with bf16 its bf16-pure form (dh2, dh1 rounded).
static void mlp_backward(const ks_grads *g, const ks_params *p, const float *T, const float *h1, const float *h2,
                         const float *dscore, const int *rows, int n_rows, int N, float *scratch, int bf16) {
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
    if (bf16)
        for (size_t i = 0; i < nd; i++) dh2[i] = R(dh2[i]);
    relu_backward(dh2, h2g, nd);
    linear_backward(dh1, D, g->w2, g->b2, dh2, D, h1g, D, p->w2, n_rows, D, D);
    if (bf16)
        for (size_t i = 0; i < nd; i++) dh1[i] = R(dh1[i]);
    relu_backward(dh1, h1g, nd);
    linear_backward(NULL, 0, g->w1, g->b1, dh1, D, Tg, D, p->w1, n_rows, D, D);
}

void ks_mlp_backward(const ks_grads *g, const ks_params *p, const float *T, const float *h1,
                     const float *h2, const float *dscore, const int *rows, int n_rows, int N,
                     float *scratch) {
    mlp_backward(g, p, T, h1, h2, dscore, rows, n_rows, N, scratch, 0);
}

void ks_mlp_backward_bf16(const ks_grads *g, const ks_params *p, const float *T, const float *h1,
                          const float *h2, const float *dscore, const int *rows, int n_rows, int N,
                          float *scratch) {
    mlp_backward(g, p, T, h1, h2, dscore, rows, n_rows, N, scratch, 1);
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
    if (st->bf16 && sem == SEMANTICS_REFERENCE) {
        ks_features_bf16(st->T, K, ldk, Q, ldq, seq_off, n_seq, model_len, st->N, ks_cumsum_bf16_acc());
    } else {
        ks_features(st->T, K, ldk, Q, ldq, seq_off, n_seq, model_len, st->N, sem);
        if (st->bf16)  // causal semantics: no reference op sequence; the features as bf16 values
            for (size_t i = 0; i < (size_t)n_tok * 2 * st->N; i++) st->T[i] = R(st->T[i]);
    }
    if (st->bf16) ks_mlp_forward_bf16(st->score, st->h1, st->h2, st->T, p, n_tok, st->N);
    else ks_mlp_forward(st->score, st->h1, st->h2, st->T, p, n_tok, st->N);
    ks_cumtopk(st->sel, st->score, seq_off, n_seq, st->k_c);
    st->has_loss = cand != NULL;
    st->gate_loss = 0.0;
    if (!cand) return 0.0;
    memcpy(st->cand, cand, sizeof(int) * (size_t)n_seq * st->k_c);
    if (st->bf16) {
        ks_rank_targets_bf16(st->y, K, ldk, Q, ldq, st->cand, seq_off, n_seq, model_len, st->N, st->k_c, sem);
        st->gate_loss = ks_rank_loss_pairs_bf16(st->score, st->y, st->cand, seq_off, n_seq, st->k_c);
        return st->gate_loss;
    }
    st->gate_loss = ks_rank_loss_forward(st->y, st->score, K, ldk, Q, ldq, st->cand, seq_off,
                                         n_seq, model_len, st->N, st->k_c, sem);
    return st->gate_loss;
}

void ks_backward(ks_state *st, const ks_params *p, const ks_grads *g, float scale) {
    if (!st->has_loss) return;
    int n_rows = ks_candidate_rows(st->rows, st->cand, st->seq_off, st->n_seq, st->k_c);
    for (int r = 0; r < n_rows; r++) st->dscore[st->rows[r]] = 0.0f;
    if (st->bf16) {
        ks_rank_loss_backward_bf16(st->dscore, st->score, st->y, st->cand, st->seq_off, st->n_seq, st->k_c, scale);
        ks_mlp_backward_bf16(g, p, st->T, st->h1, st->h2, st->dscore, st->rows, n_rows, st->N, st->scratch);
        return;
    }
    ks_rank_loss_backward(st->dscore, st->score, st->y, st->cand, st->seq_off, st->n_seq,
                          st->k_c, scale);
    ks_mlp_backward(g, p, st->T, st->h1, st->h2, st->dscore, st->rows, n_rows, st->N,
                    st->scratch);
}
