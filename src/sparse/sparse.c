// sparse.c: the sparse branch of one Enhanced Mamba / Mamba-2 layer (see
// sparse.h): the state, and forward/backward chaining the Q/K projection,
// the LSH buckets (src/sparse/lsh.c), key selection (src/sparse/ks.c), the union of
// the components (src/sparse/masks.c) and the attention (src/sparse/attn.c).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/ops/basic.h"
#include "src/ops/linear.h"
#include "src/sparse/internal.h"

#define HAS(cfg, bit) (((cfg)->sparse_mask & (bit)) != 0)

// Refuses what the branch cannot run, naming the field: its sizes, then the
// pattern's requirements (src/model/sparse_patterns.h).
static void check_config(const hax_model_config *cfg) {
    char why[256];
    if (cfg->sparse_mask == 0) hax_die("sparse: sparse_arch: expected a pattern, found none");
    if (cfg->state_size < 1 || cfg->intermediate_size < 1)
        hax_die("sparse: state_size %d / intermediate_size %d: expected >= 1", cfg->state_size,
                cfg->intermediate_size);
    if (sparse_pattern_check(cfg, why, sizeof why) != 0) hax_die("sparse: %s", why);
}

static int hash_bits(const hax_model_config *cfg) {
    return sparse_pattern_has(cfg->sparse_mask, SPF_LSH) ? cfg->num_hash : 0;
}

size_t sparse_state_bytes(const hax_model_config *cfg, int max_tok, int max_seq, int max_len) {
    size_t N = cfg->state_size, E = cfg->intermediate_size, T = max_tok, h = hash_bits(cfg);
    size_t bytes = sizeof(hax_sparse_state) + 2 * T * 2 * N * sizeof(float);  // KQ, dKQ
    if (cfg->precision == PREC_BF16_PURE) bytes += T * E * sizeof(float);     // dXs
    bytes += 2 * T * sizeof(int32_t) + 2 * T * h * sizeof(float) + T * sizeof(int64_t);
    bytes += 2 * (T + 1) * sizeof(int) + (size_t)max_seq * E * sizeof(double);
    if (sparse_pattern_has(cfg->sparse_mask, SPF_DENSE)) return bytes + 2 * T * sizeof(float);
    size_t nnz = T * (size_t)sparse_row_cap(cfg, max_len);
    bytes += nnz * (3 * sizeof(int) + 2 * sizeof(float));
    if (sparse_pattern_has(cfg->sparse_mask, SPF_KS_WEIGHTS)) {  // src/sparse/ks.h's ks_state, approximately
        size_t k = cfg->k_c, S = max_seq;
        bytes += T * (3 * 2 * N + 2) * sizeof(float) + T * k * sizeof(int);
        bytes += S * k * (2 * sizeof(int) + sizeof(double)) + S * k * 6 * N * sizeof(float);
    }
    return bytes;
}

hax_sparse_state *sparse_state_alloc(const hax_model_config *cfg, int max_tok, int max_seq,
                                     int max_len) {
    check_config(cfg);
    if (max_tok < 1 || max_seq < 1 || max_len < 1)
        hax_die("sparse: state capacities: expected >= 1, found max_tok %d max_seq %d max_len %d",
                max_tok, max_seq, max_len);
    hax_sparse_state *st = xcalloc(1, sizeof(*st));
    size_t T = max_tok, N = cfg->state_size, E = cfg->intermediate_size;
    st->max_tok = max_tok, st->max_seq = max_seq, st->max_len = max_len;
    st->N = (int)N, st->E = (int)E, st->h = hash_bits(cfg), st->k_c = cfg->k_c;
    st->KQ = xmalloc(sizeof(float) * T * 2 * N);
    st->dKQ = xmalloc(sizeof(float) * T * 2 * N);
    st->q_bucket = xmalloc(sizeof(int32_t) * T);
    st->k_bucket = xmalloc(sizeof(int32_t) * T);
    st->hq_proj = xcalloc(T * st->h + 1, sizeof(float));
    st->hk_proj = xcalloc(T * st->h + 1, sizeof(float));
    st->lsh_sorted = xmalloc(sizeof(int64_t) * T);
    st->allow_off = xcalloc(T + 1, sizeof(int));
    st->tr_off = xcalloc(T + 1, sizeof(int));
    st->seq_sv = xcalloc((size_t)max_seq * E, sizeof(double));
    if (sparse_pattern_has(cfg->sparse_mask, SPF_DENSE)) {
        st->lse = xmalloc(sizeof(float) * T);
        st->rowD = xmalloc(sizeof(float) * T);
        return st;
    }
    st->row_cap = sparse_row_cap(cfg, max_len);
    size_t nnz = T * st->row_cap;
    st->allow_key = xmalloc(sizeof(int) * nnz);
    st->allow_p = xmalloc(sizeof(float) * nnz);
    st->allow_ds = xmalloc(sizeof(float) * nnz);
    st->tr_ent = xmalloc(sizeof(int) * nnz);
    st->ent_row = xmalloc(sizeof(int) * nnz);
    if (sparse_pattern_has(cfg->sparse_mask, SPF_KS_WEIGHTS)) {
        st->ks = xcalloc(1, sizeof(ks_state));
        ks_state_init(st->ks, max_tok, max_seq, (int)N, cfg->k_c);
        st->key_score = st->ks->score;
    }
    return st;
}

void sparse_state_free(hax_sparse_state *st) {
    if (!st) return;
    if (st->ks) {
        ks_state_free(st->ks);
        free(st->ks);
    }
    free(st->KQ), free(st->dKQ), free(st->dXs), free(st->q_bucket), free(st->k_bucket);
    free(st->hq_proj), free(st->hk_proj), free(st->lsh_sorted), free(st->allow_off);
    free(st->tr_off), free(st->seq_sv), free(st->lse), free(st->rowD), free(st->allow_key);
    free(st->allow_p), free(st->allow_ds), free(st->tr_ent), free(st->ent_row);
    free(st);
}

void sparse_force_buckets(hax_sparse_state *st, const int32_t *q_bucket, const int32_t *k_bucket) {
    st->force_q_bucket = q_bucket;
    st->force_k_bucket = k_bucket;
}

// K = KQ[:, :N] / sqrt(N) in place (as the float division); bf16-pure: KQ is
// the bf16 GEMM output and K = R(KQ_k · (1/sqrt(N))), the float reciprocal
// (sparse.h). The backward scales dK the same way.
static void scale_keys(float *KQ, int n_tok, int N, int bf16) {
    float sqrt_n = (float)sqrt((double)N), inv = 1.0f / sqrt_n;
    if (bf16)
        for (size_t i = 0; i < (size_t)n_tok * 2 * N; i++) KQ[i] = hax_bf16_round(KQ[i]);
    for (int g = 0; g < n_tok; g++)
        for (int f = 0; f < N; f++) {
            float *k = KQ + (size_t)g * 2 * N + f;
            *k = bf16 ? hax_bf16_round(*k * inv) : *k / sqrt_n;
        }
}

static void check_batch(const hax_sparse_state *st, const hax_model_config *cfg,
                        const hax_batch *b) {
    int n_tok = b->n_seq > 0 ? b->seq_off[b->n_seq] : 0;
    if (b->n_seq < 0 || b->n_seq > st->max_seq || n_tok > st->max_tok)
        hax_die("sparse_forward: batch: expected 0..%d sequences and at most %d positions, "
                "found %d and %d", st->max_seq, st->max_tok, b->n_seq, n_tok);
    for (int s = 0; s < b->n_seq; s++) {
        int n = b->seq_off[s + 1] - b->seq_off[s];
        if (n < 1 || n > st->max_len)
            hax_die("sparse_forward: sequence %d: expected length 1..%d (the state's max_len), "
                    "found %d", s, st->max_len, n);
        if (cfg->semantics == SEMANTICS_REFERENCE && n > b->model_len)
            hax_die("sparse_forward: sequence %d: length %d exceeds model_len %d", s, n,
                    b->model_len);
    }
}

static void compute_buckets(hax_sparse_state *st, const hax_model_config *cfg, const hax_batch *b,
                            const float *hash) {
    int n_tok = b->seq_off[b->n_seq], N = st->N, argmax = HAS(cfg, SPARSE_ARGMAX_LSH);
    if (!sparse_pattern_has(cfg->sparse_mask, SPF_LSH)) {
        for (int g = 0; g < n_tok; g++) st->q_bucket[g] = st->k_bucket[g] = -1;
        return;
    }
    if (!hash) hax_die("sparse_forward: pattern '%s' needs a hash matrix, none given", cfg->sparse_arch);
    sparse_lsh_hash(st->q_bucket, st->hq_proj, st->KQ + N, 2 * N, N, hash, st->h, argmax,
                    b->seq_off, b->n_seq, b->model_len, cfg->semantics, st->bf16);
    sparse_lsh_hash(st->k_bucket, st->hk_proj, st->KQ, 2 * N, N, hash, st->h, argmax, b->seq_off,
                    b->n_seq, b->model_len, cfg->semantics, st->bf16);
    if (st->force_q_bucket) memcpy(st->q_bucket, st->force_q_bucket, sizeof(int32_t) * n_tok);
    if (st->force_k_bucket) memcpy(st->k_bucket, st->force_k_bucket, sizeof(int32_t) * n_tok);
}

double sparse_forward(hax_sparse_state *st, const hax_model_config *cfg, const hax_batch *b,
                      const float *X, int ldX, const float *W_xx, const hax_sparse_ks_params *ks,
                      const float *hash, const int *ks_cand, int training, float *attn,
                      int ld_attn) {
    check_batch(st, cfg, b);
    int N = st->N, E = st->E, n_seq = b->n_seq, n_tok = n_seq > 0 ? b->seq_off[n_seq] : 0;
    const int *seq_off = b->seq_off;
    st->n_tok = n_tok, st->n_seq = n_seq;
    st->gate_loss = 0;
    st->has_empty = 0;
    st->bf16 = cfg->precision == PREC_BF16_PURE;
    if (st->ks) st->ks->has_loss = 0, st->ks->bf16 = st->bf16;
    if (n_tok == 0) return 0;  // a rank holding no sequence of this batch
    // KQ = X W_xx^T; K = KQ[:, :N] / sqrt(N) in place (Q is not scaled)
    linear_forward(st->KQ, 2 * N, X, ldX, W_xx, NULL, n_tok, E, 2 * N);
    scale_keys(st->KQ, n_tok, N, st->bf16);
    if (sparse_pattern_has(cfg->sparse_mask, SPF_DENSE)) {
        for (int g = 0; g < n_tok; g++) st->q_bucket[g] = st->k_bucket[g] = -1;
        memset(st->allow_off, 0, sizeof(int) * (n_tok + 1));
        sparse_full_forward(st, X, ldX, seq_off, n_seq, attn, ld_attn);
        return 0;
    }
    compute_buckets(st, cfg, b, hash);
    if (sparse_pattern_has(cfg->sparse_mask, SPF_KS_WEIGHTS)) {
        if (!ks) hax_die("sparse_forward: pattern '%s' needs the dx_proj parameters, none given",
                         cfg->sparse_arch);
        if (training && !ks_cand)
            hax_die("sparse_forward: pattern '%s' in training needs KS candidates, none given",
                    cfg->sparse_arch);
        st->gate_loss = ks_forward(st->ks, ks, st->KQ, 2 * N, st->KQ + N, 2 * N, seq_off, n_seq,
                                   b->model_len, cfg->semantics, training ? ks_cand : NULL);
    }
    st->has_empty = sparse_build_union(st, cfg, seq_off, n_seq);
    sparse_attn_forward(st, X, ldX, seq_off, n_seq, b->model_len, cfg->semantics, attn, ld_attn);
    return st->gate_loss;
}

void sparse_backward(hax_sparse_state *st, const hax_model_config *cfg, const hax_batch *b,
                     const float *dattn, int ld_dattn, float gate_scale, const float *X, int ldX,
                     const float *W_xx, const hax_sparse_ks_params *ks, float *dX, int ld_dX,
                     float *dW_xx, hax_sparse_ks_grads *dks) {
    int N = st->N, E = st->E, n_seq = b->n_seq, n_tok = n_seq > 0 ? b->seq_off[n_seq] : 0;
    if (n_tok != st->n_tok || n_seq != st->n_seq)
        hax_die("sparse_backward: batch: expected the last forward's %d sequences / %d positions, "
                "found %d / %d", st->n_seq, st->n_tok, n_seq, n_tok);
    if (n_tok == 0) return;
    // bf16-pure: dV is a bf16 tensor of its own (dXs, made on first use: fp32
    // runs keep their memory), added into dX in bf16
    if (st->bf16 && !st->dXs) st->dXs = xmalloc(sizeof(float) * (size_t)st->max_tok * E);
    float *dV = st->bf16 ? st->dXs : dX;
    int ld_dV = st->bf16 ? E : ld_dX;
    if (st->bf16) memset(st->dXs, 0, sizeof(float) * (size_t)n_tok * E);
    if (sparse_pattern_has(cfg->sparse_mask, SPF_DENSE))
        sparse_full_backward(st, X, ldX, b->seq_off, n_seq, dattn, ld_dattn, dV, ld_dV);
    else
        sparse_attn_backward(st, X, ldX, b->seq_off, n_seq, b->model_len, cfg->semantics, dattn,
                             ld_dattn, dV, ld_dV);
    if (st->bf16) {  // dQ, dK, dV: the GEMMs' bf16 outputs, every share summed first
        round_bf16(st->dKQ, st->dKQ, (long)n_tok * 2 * N);
        add_bf16_rows(dX, ld_dX, st->dXs, E, E, n_tok);
    }
    // d KQ[:, :N] = dK / sqrt(N), as the forward's scaling (KQ is rounded already)
    scale_keys(st->dKQ, n_tok, N, st->bf16);
    if (st->bf16) {  // xx_proj's share of dX, a bf16 tensor, then added in bf16
        memset(st->dXs, 0, sizeof(float) * (size_t)n_tok * E);
        linear_backward(st->dXs, E, dW_xx, NULL, st->dKQ, 2 * N, X, ldX, W_xx, n_tok, E, 2 * N);
        add_bf16_rows(dX, ld_dX, st->dXs, E, E, n_tok);
    } else {
        linear_backward(dX, ld_dX, dW_xx, NULL, st->dKQ, 2 * N, X, ldX, W_xx, n_tok, E, 2 * N);
    }
    if (st->ks && st->ks->has_loss && ks && dks) ks_backward(st->ks, ks, dks, gate_scale);
}

void sparse_allowed_table(const hax_sparse_state *st, const hax_batch *b, int full, int width,
                          int64_t *out) {
    for (int s = 0; s < b->n_seq; s++)
        for (int g = b->seq_off[s]; g < b->seq_off[s + 1]; g++) {
            int t = g - b->seq_off[s], off = st->allow_off[g], cnt = st->allow_off[g + 1] - off;
            int64_t *row = out + (size_t)g * width;
            for (int i = 0; i < width; i++) {
                if (full) row[i] = i <= t ? i : -1;
                else row[i] = i < cnt ? st->allow_key[off + i] : -1;
            }
        }
}
