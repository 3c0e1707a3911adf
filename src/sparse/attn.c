// src/sparse/attn.c: softmax attention of the sparse branch over each query's
// allowed keys (MODEL.md §5.6, §5.9; golden README Q3), forward and backward,
// and the dense causal `full` pattern.
//
// K = KQ[:, :N] (already / sqrt(N)), Q = KQ[:, N:], score_tj = Q_t . K_j.
// Row t with allowed keys A_t: P_tj = softmax_{j in A_t}(score_tj),
// attn_t = sum_j P_tj V_j. Backward: dP_j = dattn_t . V_j, D = sum P dP,
// dscore_j = P_j (dP_j - D); dQ_t = sum dscore_j K_j, dK_j = sum_t dscore_tj Q_t,
// dV_j = sum_t P_tj dattn_t. dK and dV are gathered per key through the
// transposed lists, queries ascending, so no sum depends on the threads.
//
// Empty rows, reference semantics: the additive-minimum mask makes the row
// uniform over all L padded positions, P_tj = 1/L (pads: V = K = 0), and
// autograd sends the softmax gradient to all L scores:
//   dscore_tj = (1/L) (dattn_t . V_j - (1/L) dattn_t . S_V),  S_V = sum_{j<n} V_j.
// Summed over j or t these factorise through per-sequence matrices,
//   dQ_t += (1/L) (dattn_t . M - (1/L)(dattn_t . S_V) S_K),   M = sum_j V_j^T K_j [E, N]
//   dK_j += (1/L) (V_j . G - (1/L) c),  G = sum_{t empty} dattn_t^T Q_t, c = sum_t (dattn_t . S_V) Q_t
//   dV_j += (1/L) sum_{t empty} dattn_t,
// so the cost is O(n E N) per sequence, not O(n L E). Causal semantics: an
// empty row outputs 0 and has no gradient.
//
// bf16-pure (st->bf16, src/sparse/sparse.h): scores, probabilities, the
// output, dP and d score are rounded per element as the reference's bf16
// tensors; dQ, dK, dV are summed here and rounded by the caller (sparse.c).
// Empty rows have P = R(1/L); their backward runs dense (every dP and d
// score of the row rounded), O(n (E + N)) per empty row instead of the
// factorised sums. The rounded dot products follow the CUDA engine's sums
// (dot_seq, dot_warp below), so that both engines round the same ties.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/scalar.h"
#include "src/sparse/internal.h"

#define R hax_bf16_round

// A dot product in float (vectorised: the lanes' order is fixed, so the result
// does not depend on threads or on how the batch is packed).
static inline float dot_f(const float *a, const float *b, int n) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// The bf16-pure dot products before their rounding, in the CUDA engine's
// orders. Products of bf16 values are exact in float, so only the order of
// the adds matters; dot_f's vector lanes add in another order, and where a
// sum falls on a bf16 rounding tie the two round one step apart (a 1-ulp
// different P in layer 0 of Mamba+HAX moved layer 1's input and, through its
// K, the ranking loss's dx_proj gradients).
//
// dot_seq: one float sum over i ascending, the CUDA engine's scores
// (cuda/sparse/attn_gather.cu score_dot, attn.cu attn_fwd_kernel and
// full_fwd_kernel): the sparse scores and `full`'s forward scores.
static inline float dot_seq(const float *a, const float *b, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// dot_warp: the CUDA engine's warp dot product, its dP = dattn . V (sparse
// dQ kernels, the empty rows' dense backward, `full`) and `full`'s backward
// scores (cuda/sparse/attn.cu dot_n, dot_e; empty.cu empty_dot): lane l of
// 32 sums the products of i = l, l + 32, ... in that order, then the
// butterfly (cu_warp_sumf, cuda/core/common.cuh) adds lane l + o into lane
// l for o = 16, 8, 4, 2, 1 (the pairs' sums are the same on both lanes of a
// pair: a + b == b + a). attn_gather.cu's warp_sums_group makes these adds.
static inline float dot_warp(const float *a, const float *b, int n) {
    float lane[32] = {0};
    for (int i0 = 0; i0 < n; i0 += 32) {
        int m = n - i0 < 32 ? n - i0 : 32;
        for (int l = 0; l < m; l++) lane[l] += a[i0 + l] * b[i0 + l];
    }
    for (int o = 16; o > 0; o >>= 1)
        for (int l = 0; l < o; l++) lane[l] += lane[l + o];
    return lane[0];
}

// A score Q_t . K_j (bf16-pure: dot_seq, rounded) and a dP = dattn_t . V_j
// (bf16-pure: dot_warp, rounded, a bf16 GEMM output); fp32: dot_f.
static inline float score_of(const float *q, const float *k, int N, int bf16) {
    return bf16 ? R(dot_seq(q, k, N)) : dot_f(q, k, N);
}
static inline float dp_of(const float *da, const float *v, int E, int bf16) {
    return bf16 ? R(dot_warp(da, v, E)) : dot_f(da, v, E);
}

// y += a x over n floats.
static inline void axpy_f(float *restrict y, float a, const float *restrict x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

// S_V = sum_{j<n} V_j per sequence, in double (reference empty rows).
static void sum_values(double *sv, const float *V, int ldv, const int *seq_off, int n_seq, int E) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int s = 0; s < n_seq; s++) {
        double *out = sv + (size_t)s * E;
        for (int e = 0; e < E; e++) out[e] = 0;
        for (int j = seq_off[s]; j < seq_off[s + 1]; j++)
            for (int e = 0; e < E; e++) out[e] += V[(size_t)j * ldv + e];
    }
}

void sparse_attn_forward(hax_sparse_state *st, const float *V, int ldv, const int *seq_off,
                         int n_seq, int L, hax_semantics sem, float *attn, int ld_attn) {
    int N = st->N, E = st->E, ldkq = 2 * N, n_tok = seq_off[n_seq], bf16 = st->bf16;
    const float *KQ = st->KQ;
    float pe = R(1.0f / (float)L);  // bf16-pure: an empty row's probability
    if (st->has_empty && sem == SEMANTICS_REFERENCE) sum_values(st->seq_sv, V, ldv, seq_off, n_seq, E);
#pragma omp parallel for schedule(static)
    for (int g = 0; g < n_tok; g++) {
        int off = st->allow_off[g], cnt = st->allow_off[g + 1] - off;
        float *out = attn + (size_t)g * ld_attn;
        int s = sparse_seq_of(seq_off, n_seq, g), o = seq_off[s];
        if (cnt == 0) {
            const double *sv = st->seq_sv + (size_t)s * E;
            for (int e = 0; e < E; e++) {
                if (sem != SEMANTICS_REFERENCE) out[e] = 0.0f;
                else out[e] = bf16 ? R((float)(sv[e] * pe)) : (float)(sv[e] / L);
            }
            continue;
        }
        const int *key = st->allow_key + off;
        float *p = st->allow_p + off;
        const float *q = KQ + (size_t)g * ldkq + N;
        float mx = -INFINITY;
        for (int i = 0; i < cnt; i++) {
            p[i] = score_of(q, KQ + (size_t)(o + key[i]) * ldkq, N, bf16);
            if (p[i] > mx) mx = p[i];
        }
        double sum = 0;
        for (int i = 0; i < cnt; i++) {
            p[i] = expf(p[i] - mx);
            sum += p[i];
        }
        float inv = (float)(1.0 / sum);
        for (int e = 0; e < E; e++) out[e] = 0;
        for (int i = 0; i < cnt; i++) {
            if (bf16) p[i] = R(p[i] / (float)sum);  // softmax's epilogue exp(s - max) / sum
            else p[i] *= inv;
            const float *v = V + (size_t)(o + key[i]) * ldv;
            axpy_f(out, p[i], v, E);
        }
        if (bf16)
            for (int e = 0; e < E; e++) out[e] = R(out[e]);
    }
}

// Transposes the CSR: for every packed key row j, the entries e whose key is
// j, in increasing e (hence increasing query); ent_row[e] = the query row.
static void transpose_lists(hax_sparse_state *st, const int *seq_off, int n_seq) {
    int n_tok = seq_off[n_seq];
    int *cnt = st->tr_off;
    memset(cnt, 0, sizeof(int) * (n_tok + 1));
    for (int s = 0; s < n_seq; s++)
        for (int g = seq_off[s]; g < seq_off[s + 1]; g++)
            for (int e = st->allow_off[g]; e < st->allow_off[g + 1]; e++) {
                st->ent_row[e] = g;
                cnt[seq_off[s] + st->allow_key[e] + 1]++;
            }
    for (int j = 0; j < n_tok; j++) cnt[j + 1] += cnt[j];
    // fill with a moving cursor per key (allocated per backward, not per row)
    int *cursor = xmalloc(sizeof(int) * (n_tok + 1));
    memcpy(cursor, cnt, sizeof(int) * (n_tok + 1));
    for (int g = 0; g < n_tok; g++) {
        int o = seq_off[sparse_seq_of(seq_off, n_seq, g)];
        for (int e = st->allow_off[g]; e < st->allow_off[g + 1]; e++)
            st->tr_ent[cursor[o + st->allow_key[e]]++] = e;
    }
    free(cursor);
}

// The reference's empty rows of one sequence (see the top of the file).
// w: 2 E N + E + 2 N doubles.
static void empty_rows_backward(hax_sparse_state *st, const float *V, int ldv, int o, int n, int L,
                                const double *sv, const float *dattn, int ld_dattn, float *dV,
                                int ld_dv, double *w) {
    int N = st->N, E = st->E, ldkq = 2 * N;
    const float *KQ = st->KQ;
    double *M = w, *G = w + (size_t)E * N, *dsum = G + (size_t)E * N, *sk = dsum + E, *c = sk + N;
    int any = 0;
    for (int t = 0; t < n && !any; t++) any = st->allow_off[o + t + 1] == st->allow_off[o + t];
    if (!any) return;
    memset(w, 0, sizeof(double) * (2 * (size_t)E * N + E + 2 * N));
    for (int j = 0; j < n; j++) {
        const float *v = V + (size_t)(o + j) * ldv, *k = KQ + (size_t)(o + j) * ldkq;
        for (int f = 0; f < N; f++) sk[f] += k[f];
        for (int e = 0; e < E; e++)
            for (int f = 0; f < N; f++) M[(size_t)e * N + f] += (double)v[e] * k[f];
    }
    for (int t = 0; t < n; t++) {
        if (st->allow_off[o + t + 1] != st->allow_off[o + t]) continue;
        const float *da = dattn + (size_t)(o + t) * ld_dattn, *q = KQ + (size_t)(o + t) * ldkq + N;
        double a = 0;
        for (int e = 0; e < E; e++) a += (double)da[e] * sv[e];
        for (int e = 0; e < E; e++) {
            dsum[e] += da[e];
            for (int f = 0; f < N; f++) G[(size_t)e * N + f] += (double)da[e] * q[f];
        }
        for (int f = 0; f < N; f++) c[f] += a * q[f];
        // dQ_t
        float *dq = st->dKQ + (size_t)(o + t) * ldkq + N;
        for (int f = 0; f < N; f++) {
            double m = 0;
            for (int e = 0; e < E; e++) m += (double)da[e] * M[(size_t)e * N + f];
            dq[f] += (float)((m - a * sk[f] / L) / L);
        }
    }
    for (int j = 0; j < n; j++) {
        const float *v = V + (size_t)(o + j) * ldv;
        float *dk = st->dKQ + (size_t)(o + j) * ldkq, *dv = dV + (size_t)(o + j) * ld_dv;
        for (int f = 0; f < N; f++) {
            double m = 0;
            for (int e = 0; e < E; e++) m += (double)v[e] * G[(size_t)e * N + f];
            dk[f] += (float)((m - c[f] / L) / L);
        }
        for (int e = 0; e < E; e++) dv[e] += (float)(dsum[e] / L);
    }
}

// The reference's empty rows of one sequence in bf16-pure, dense as autograd
// runs them (the factorised form above would skip the per-element roundings):
// with pe = R(1/L) on every one of the L keys, per empty row t:
//   dP_tj = R(dattn_t . V_j), D_t = sum_j pe dP_tj (pads: dP = 0),
//   ds_tj = R(pe (dP_tj - D_t)); dQ_t += sum_j ds_tj K_j (keys ascending),
//   then, rows ascending, dK_j += ds_tj Q_t and dV_j += pe dattn_t (pads' K
//   and V are 0, so they add nothing). dp: n floats.
static void empty_rows_backward_bf16(hax_sparse_state *st, const float *V, int ldv, int o, int n, int L,
                                     const float *dattn, int ld_dattn, float *dV, int ld_dv, float *dp) {
    int N = st->N, E = st->E, ldkq = 2 * N;
    const float *KQ = st->KQ;
    float pe = R(1.0f / (float)L);
    for (int t = 0; t < n; t++) {
        if (st->allow_off[o + t + 1] != st->allow_off[o + t]) continue;
        const float *da = dattn + (size_t)(o + t) * ld_dattn, *q = KQ + (size_t)(o + t) * ldkq + N;
        double D = 0;
        for (int j = 0; j < n; j++) {
            dp[j] = dp_of(da, V + (size_t)(o + j) * ldv, E, 1);
            D += (double)pe * dp[j];
        }
        float Df = (float)D, *dq = st->dKQ + (size_t)(o + t) * ldkq + N;
        for (int j = 0; j < n; j++) {
            float ds = R(pe * (dp[j] - Df));
            axpy_f(dq, ds, KQ + (size_t)(o + j) * ldkq, N);
            axpy_f(st->dKQ + (size_t)(o + j) * ldkq, ds, q, N);
            axpy_f(dV + (size_t)(o + j) * ld_dv, pe, da, E);
        }
    }
}

void sparse_attn_backward(hax_sparse_state *st, const float *V, int ldv, const int *seq_off,
                          int n_seq, int L, hax_semantics sem, const float *dattn, int ld_dattn,
                          float *dV, int ld_dv) {
    int N = st->N, E = st->E, ldkq = 2 * N, n_tok = seq_off[n_seq];
    const float *KQ = st->KQ;
    memset(st->dKQ, 0, sizeof(float) * (size_t)n_tok * ldkq);
    // per query: d score of each allowed key, and dQ
#pragma omp parallel for schedule(static)
    for (int g = 0; g < n_tok; g++) {
        int off = st->allow_off[g], cnt = st->allow_off[g + 1] - off;
        if (cnt == 0) continue;
        int o = seq_off[sparse_seq_of(seq_off, n_seq, g)];
        const int *key = st->allow_key + off;
        const float *p = st->allow_p + off, *da = dattn + (size_t)g * ld_dattn;
        float *ds = st->allow_ds + off, *dq = st->dKQ + (size_t)g * ldkq + N;
        double D = 0;
        for (int i = 0; i < cnt; i++) {
            ds[i] = dp_of(da, V + (size_t)(o + key[i]) * ldv, E, st->bf16);
            D += (double)p[i] * ds[i];
        }
        for (int i = 0; i < cnt; i++) {
            ds[i] = p[i] * (ds[i] - (float)D);
            if (st->bf16) ds[i] = R(ds[i]);  // softmax backward's bf16 output
            const float *k = KQ + (size_t)(o + key[i]) * ldkq;
            axpy_f(dq, ds[i], k, N);
        }
    }
    transpose_lists(st, seq_off, n_seq);
    // per key: dK and dV gathered over the queries that use it
#pragma omp parallel for schedule(static)
    for (int j = 0; j < n_tok; j++) {
        float *dk = st->dKQ + (size_t)j * ldkq, *dv = dV + (size_t)j * ld_dv;
        for (int x = st->tr_off[j]; x < st->tr_off[j + 1]; x++) {
            int e = st->tr_ent[x], g = st->ent_row[e];
            float ds = st->allow_ds[e], p = st->allow_p[e];
            const float *q = KQ + (size_t)g * ldkq + N, *da = dattn + (size_t)g * ld_dattn;
            axpy_f(dk, ds, q, N);
            axpy_f(dv, p, da, E);
        }
    }
    if (!(st->has_empty && sem == SEMANTICS_REFERENCE)) return;
    if (st->bf16) {
#pragma omp parallel
        {
            float *dp = xmalloc(sizeof(float) * (size_t)st->max_len);
#pragma omp for schedule(dynamic, 1)
            for (int s = 0; s < n_seq; s++)
                empty_rows_backward_bf16(st, V, ldv, seq_off[s], seq_off[s + 1] - seq_off[s], L, dattn, ld_dattn,
                                         dV, ld_dv, dp);
            free(dp);
        }
        return;
    }
#pragma omp parallel
    {
        double *w = xmalloc(sizeof(double) * (2 * (size_t)E * N + E + 2 * N));
#pragma omp for schedule(dynamic, 1)
        for (int s = 0; s < n_seq; s++)
            empty_rows_backward(st, V, ldv, seq_off[s], seq_off[s + 1] - seq_off[s], L,
                                st->seq_sv + (size_t)s * E, dattn, ld_dattn, dV, ld_dv, w);
        free(w);
    }
}

// ---------------------------------------------------------------- full

void sparse_full_forward(hax_sparse_state *st, const float *V, int ldv, const int *seq_off,
                         int n_seq, float *attn, int ld_attn) {
    int N = st->N, E = st->E, ldkq = 2 * N, n_tok = seq_off[n_seq];
    const float *KQ = st->KQ;
#pragma omp parallel
    {
        float *sc = xmalloc(sizeof(float) * (size_t)st->max_len);
#pragma omp for schedule(dynamic, 16)
        for (int g = 0; g < n_tok; g++) {
            int o = seq_off[sparse_seq_of(seq_off, n_seq, g)], t = g - o;
            const float *q = KQ + (size_t)g * ldkq + N;
            float mx = -INFINITY;
            for (int j = 0; j <= t; j++) {
                sc[j] = score_of(q, KQ + (size_t)(o + j) * ldkq, N, st->bf16);
                if (sc[j] > mx) mx = sc[j];
            }
            double sum = 0;
            for (int j = 0; j <= t; j++) sum += expf(sc[j] - mx);
            float inv = (float)(1.0 / sum), *out = attn + (size_t)g * ld_attn;
            st->lse[g] = mx + (float)log(sum);
            for (int e = 0; e < E; e++) out[e] = 0;
            for (int j = 0; j <= t; j++) {
                const float *v = V + (size_t)(o + j) * ldv;
                // bf16-pure: P = R(exp(s - lse)), as the backward recomputes it
                float p = st->bf16 ? R(expf(sc[j] - st->lse[g])) : expf(sc[j] - mx) * inv;
                axpy_f(out, p, v, E);
            }
            if (st->bf16)
                for (int e = 0; e < E; e++) out[e] = R(out[e]);
        }
        free(sc);
    }
}

// `full`: P_tj from the row's log-sum-exp (bf16-pure: the rounded score and
// a rounded P). The score in bf16-pure is the CUDA backward's warp dot
// (full_bwd_*_kernel's dot_n), not its forward's in-order sum: on a bf16
// tie the two give a different P, on both engines alike.
static inline float full_p(const float *q, const float *k, int N, float lse, int bf16) {
    return bf16 ? R(expf(R(dot_warp(q, k, N)) - lse)) : expf(dot_f(q, k, N) - lse);
}

void sparse_full_backward(hax_sparse_state *st, const float *V, int ldv, const int *seq_off,
                          int n_seq, const float *dattn, int ld_dattn, float *dV, int ld_dv) {
    int N = st->N, E = st->E, ldkq = 2 * N, n_tok = seq_off[n_seq];
    const float *KQ = st->KQ;
    memset(st->dKQ, 0, sizeof(float) * (size_t)n_tok * ldkq);
    // pass 1, per query: D_t = sum_j P_tj dP_tj, and dQ_t
#pragma omp parallel
    {
        float *pp = xmalloc(sizeof(float) * 2 * (size_t)st->max_len), *dp = pp + st->max_len;
#pragma omp for schedule(dynamic, 16)
        for (int g = 0; g < n_tok; g++) {
            int o = seq_off[sparse_seq_of(seq_off, n_seq, g)], t = g - o;
            const float *q = KQ + (size_t)g * ldkq + N, *da = dattn + (size_t)g * ld_dattn;
            double D = 0;
            for (int j = 0; j <= t; j++) {
                pp[j] = full_p(q, KQ + (size_t)(o + j) * ldkq, N, st->lse[g], st->bf16);
                dp[j] = dp_of(da, V + (size_t)(o + j) * ldv, E, st->bf16);
                D += (double)pp[j] * dp[j];
            }
            st->rowD[g] = (float)D;
            float *dq = st->dKQ + (size_t)g * ldkq + N;
            for (int j = 0; j <= t; j++) {
                float ds = pp[j] * (dp[j] - (float)D);
                if (st->bf16) ds = R(ds);
                const float *k = KQ + (size_t)(o + j) * ldkq;
                axpy_f(dq, ds, k, N);
            }
        }
        free(pp);
    }
    // pass 2, per key: dK_j and dV_j over the queries t >= j (P recomputed)
#pragma omp parallel for schedule(dynamic, 16)
    for (int j = 0; j < n_tok; j++) {
        int s = sparse_seq_of(seq_off, n_seq, j), end = seq_off[s + 1];
        const float *k = KQ + (size_t)j * ldkq, *v = V + (size_t)j * ldv;
        float *dk = st->dKQ + (size_t)j * ldkq, *dv = dV + (size_t)j * ld_dv;
        for (int g = j; g < end; g++) {
            const float *q = KQ + (size_t)g * ldkq + N, *da = dattn + (size_t)g * ld_dattn;
            float p = full_p(q, k, N, st->lse[g], st->bf16), dp = dp_of(da, v, E, st->bf16);
            float ds = p * (dp - st->rowD[g]);
            if (st->bf16) ds = R(ds);
            axpy_f(dk, ds, q, N);
            axpy_f(dv, p, da, E);
        }
    }
}
