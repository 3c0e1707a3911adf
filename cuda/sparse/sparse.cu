// cuda/sparse/sparse.cu: see cuda/sparse/sparse.h. The state, the Q/K projection, the LSH
// buckets, the allowed lists of every query, and forward/backward chaining
// them with key selection (cuda/sparse/ks.h) and the attention
// (cuda/sparse/attn.cu).
//
// LSH exactness: the CPU (src/sparse/lsh.c) computes the statistics and the
// projections in double, in a fixed order, without fused multiply-adds (plain
// x86-64). nvcc would contract a*b+c into an FMA, so every double operation
// here is an explicit round-to-nearest intrinsic (__dadd_rn, __dmul_rn, ...)
// in the CPU's order: given the same KQ, the projections are the CPU's bit for
// bit, hence the buckets.
#include <limits.h>
#include <math.h>

#include "cuda/ops/linear.h"
#include "cuda/sparse/internal.cuh"
#include "cuda/sparse/ks.h"

#define HAS(m, bit) (((m) & (bit)) != 0)
#define MAX_HASH 30  // sparse_pattern_check's limit of hash_bits

// ---------------------------------------------------------------- config, state

// The GPU's size limits, then the pattern's requirements
// (src/model/sparse_patterns.h), as the CPU branch (sparse.c check_config).
static void check_config(const hax_model_config *cfg) {
    char why[256];
    if (cfg->sparse_mask == 0) hax_die("cu_sparse: sparse_arch: expected a pattern, found none");
    if (cfg->state_size < 1 || cfg->state_size > 32 * CU_SP_FPL)
        hax_die("cu_sparse: state_size: expected 1..%d, found %d", 32 * CU_SP_FPL, cfg->state_size);
    if (cfg->intermediate_size < 1 || cfg->intermediate_size > 32 * CU_SP_EPL)
        hax_die("cu_sparse: intermediate_size: expected 1..%d, found %d", 32 * CU_SP_EPL,
                cfg->intermediate_size);
    if (sparse_pattern_check(cfg, why, sizeof why) != 0) hax_die("cu_sparse: %s", why);
}

// The state's device buffers, carved from one allocation (every piece
// aligned to 256 bytes). With base == NULL only the total is computed.
typedef struct {
    char *base;
    size_t used;
} carver;

static void *carve(carver *c, size_t bytes) {
    size_t at = c->used;
    c->used += (bytes + 255) / 256 * 256;
    return c->base ? c->base + at : NULL;
}

static void layout(cu_sparse_state *st, carver *c, const hax_model_config *cfg) {
    size_t T = st->max_tok, S = st->max_seq, N = st->N, E = st->E, cap = st->row_cap;
    size_t k = cfg->k_c > 0 ? cfg->k_c : 1, h = st->h > 0 ? st->h : 1;
    st->KQ = (float *)carve(c, sizeof(float) * T * 2 * N);
    st->dKQ = (float *)carve(c, sizeof(float) * T * 2 * N);
    st->q_bucket = (int32_t *)carve(c, sizeof(int32_t) * T);
    st->k_bucket = (int32_t *)carve(c, sizeof(int32_t) * T);
    st->hq_proj = (float *)carve(c, sizeof(float) * T * h);
    st->hk_proj = (float *)carve(c, sizeof(float) * T * h);
    st->lsh_stat = (double *)carve(c, sizeof(double) * (T + 2 * S) * N);
    st->lsh_keys = (int *)carve(c, sizeof(int) * T * k);
    st->allow_cnt = (int *)carve(c, sizeof(int) * T);
    st->allow_key = (int *)carve(c, sizeof(int) * T * cap);
    st->allow_p = (float *)carve(c, sizeof(float) * T * cap);
    st->allow_ds = (float *)carve(c, sizeof(float) * T * cap);
    st->lse = (float *)carve(c, sizeof(float) * T);
    st->rowD = (float *)carve(c, sizeof(float) * T);
    st->seq_sv = (double *)carve(c, sizeof(double) * S * E);
    st->empty_work = (double *)carve(c, sizeof(double) * S * cu_sp_empty_doubles((int)E, (int)N));
    st->has_empty = (int *)carve(c, sizeof(int));
    st->gate_loss = (double *)carve(c, sizeof(double));
}

static void fill_shape(cu_sparse_state *st, const hax_model_config *cfg, int max_tok, int max_seq,
                       int max_len) {
    st->max_tok = max_tok, st->max_seq = max_seq, st->max_len = max_len;
    st->row_cap = sparse_row_cap(cfg, max_len);
    st->N = cfg->state_size, st->E = cfg->intermediate_size;
    st->h = sparse_pattern_has(cfg->sparse_mask, SPF_LSH) ? cfg->num_hash : 0;
    st->k_c = cfg->k_c;
    st->delta = sparse_pattern_has(cfg->sparse_mask, SPF_DILATION) ? cfg->data_max_length / cfg->k_c : 0;
    st->mask = cfg->sparse_mask, st->sem = cfg->semantics;
}

static size_t ks_bytes(const hax_model_config *cfg, int max_tok, int max_seq) {
    if (!sparse_pattern_has(cfg->sparse_mask, SPF_KS_WEIGHTS)) return 0;
    return sizeof(cuda_ks_state) + cuda_ks_state_bytes(max_tok, max_seq, cfg->state_size, cfg->k_c);
}

extern "C" size_t cuda_sparse_state_bytes(const hax_model_config *cfg, int max_tok, int max_seq,
                                          int max_len) {
    cu_sparse_state st = {};
    carver c = {NULL, 0};
    fill_shape(&st, cfg, max_tok, max_seq, max_len);
    layout(&st, &c, cfg);
    return c.used + ks_bytes(cfg, max_tok, max_seq);
}

// The device memory block is stored right after the KS state (or alone).
typedef struct {
    cu_sparse_state st;
    void *mem, *ks_mem;
    cuda_ks_state ks;
} state_box;

extern "C" cu_sparse_state *cuda_sparse_state_alloc(const hax_model_config *cfg, int max_tok,
                                                    int max_seq, int max_len) {
    check_config(cfg);
    if (max_tok < 1 || max_seq < 1 || max_len < 1)
        hax_die("cu_sparse: state capacities: expected >= 1, found max_tok %d max_seq %d max_len %d",
                max_tok, max_seq, max_len);
    state_box *box = (state_box *)xcalloc(1, sizeof(state_box));
    cu_sparse_state *st = &box->st;
    fill_shape(st, cfg, max_tok, max_seq, max_len);
    carver c = {NULL, 0};
    layout(st, &c, cfg);
    box->mem = cuda_malloc(c.used);
    c.base = (char *)box->mem, c.used = 0;
    layout(st, &c, cfg);
    cuda_zero(box->mem, c.used);
    if (sparse_pattern_has(cfg->sparse_mask, SPF_KS_WEIGHTS)) {
        box->ks_mem = cuda_malloc(cuda_ks_state_bytes(max_tok, max_seq, st->N, st->k_c));
        cuda_ks_state_init(&box->ks, box->ks_mem, max_tok, max_seq, st->N, st->k_c);
        st->ks = &box->ks;
    }
    cuda_sync();
    return st;
}

extern "C" void cuda_sparse_state_free(cu_sparse_state *st) {
    if (!st) return;
    state_box *box = (state_box *)st;  // st is the box's first member
    cuda_free(box->mem);
    if (box->ks_mem) cuda_free(box->ks_mem);
    free(box);
}

extern "C" void cuda_sparse_force_buckets(cu_sparse_state *st, const int32_t *q_bucket,
                                          const int32_t *k_bucket) {
    st->force_q_bucket = q_bucket;
    st->force_k_bucket = k_bucket;
}

// ---------------------------------------------------------------- Q/K projection

// K = KQ[:, :N] / sqrt(N) in place (the CPU's float division).
__global__ static void scale_k_kernel(float *KQ, int n_tok, int N, float sqrt_n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_tok * N) return;
    int g = (int)(i / N), f = (int)(i % N);
    KQ[(size_t)g * 2 * N + f] /= sqrt_n;
}

// ---------------------------------------------------------------- LSH (see the top)

// Reference statistics, one thread per (sequence, feature): stat[s, 0:N] = mu,
// stat[s, N:2N] = 1 / max(nu, 1e-12), with n_pad = L - n pads holding 0.
__global__ static void lsh_stats_reference(double *stat, const float *x, int ldx, const int *seq_off,
                                           int n_seq, int N, int L) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_seq * N) return;
    int s = i / N, f = i % N, o = seq_off[s], n = seq_off[s + 1] - o;
    double mu = 0;
    for (int t = 0; t < n; t++) mu = __dadd_rn(mu, (double)x[(size_t)(o + t) * ldx + f]);
    mu = __ddiv_rn(mu, (double)L);
    double v = __dmul_rn(__dmul_rn((double)(L - n), mu), mu);
    for (int t = 0; t < n; t++) {
        double d = __dsub_rn((double)x[(size_t)(o + t) * ldx + f], mu);
        v = __dadd_rn(v, __dmul_rn(d, d));
    }
    stat[(size_t)s * 2 * N + f] = mu;
    stat[(size_t)s * 2 * N + N + f] = __ddiv_rn(1.0, fmax(__dsqrt_rn(v), 1e-12));
}

// Causal statistics: stat[g, f] = sum_{p <= t} x_pf within the sequence.
__global__ static void lsh_stats_causal(double *stat, const float *x, int ldx, const int *seq_off,
                                        int n_seq, int N) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_seq * N) return;
    int s = i / N, f = i % N;
    double sum = 0;
    for (int g = seq_off[s]; g < seq_off[s + 1]; g++) {
        sum = __dadd_rn(sum, (double)x[(size_t)g * ldx + f]);
        stat[(size_t)g * N + f] = sum;
    }
}

// The centred, normalised feature f of row g (reference: per-sequence mu and
// 1/nu; causal: prefix mean, times 1/||.|| given in inv).
__device__ __forceinline__ double lsh_centred(const float *x, int ldx, const double *stat, int N,
                                              int ref, int s, int g, int t, int f) {
    double v = (double)x[(size_t)g * ldx + f];
    if (ref) {
        const double *st = stat + (size_t)s * 2 * N;
        return __dmul_rn(__dsub_rn(v, st[f]), st[N + f]);
    }
    return __dsub_rn(v, __ddiv_rn(stat[(size_t)g * N + f], (double)(t + 1)));
}

// One thread per row: projection onto H [N, h], then the bucket (or the
// forced one). bucket = -1 rows never reach here.
__global__ static void lsh_project_kernel(int32_t *bucket, float *proj_out, const float *x, int ldx,
                                          const double *stat, const float *H, int h, int N,
                                          int argmax, int ref, const int *seq_off, int n_seq,
                                          int n_tok, const int32_t *force) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_tok) return;
    int s = cu_seq_of(seq_off, n_seq, g), t = g - seq_off[s];
    double inv = 1.0;
    if (!ref) {  // causal: the vector's own norm
        double nrm = 0;
        for (int f = 0; f < N; f++) {
            double c = lsh_centred(x, ldx, stat, N, 0, s, g, t, f);
            nrm = __dadd_rn(nrm, __dmul_rn(c, c));
        }
        inv = __ddiv_rn(1.0, fmax(__dsqrt_rn(nrm), 1e-12));
    }
    double proj[MAX_HASH];
    for (int i = 0; i < h; i++) proj[i] = 0;
    for (int f = 0; f < N; f++) {
        double c = lsh_centred(x, ldx, stat, N, ref, s, g, t, f);
        if (!ref) c = __dmul_rn(c, inv);
        const float *hrow = H + (size_t)f * h;
        for (int i = 0; i < h; i++) proj[i] = __dadd_rn(proj[i], __dmul_rn(c, (double)hrow[i]));
    }
    int32_t code = 0;
    if (argmax) {
        for (int i = 1; i < h; i++)
            if (proj[i] > proj[code]) code = i;
    } else {
        for (int i = 0; i < h; i++)
            if (proj[i] > 0) code |= (int32_t)1 << i;
    }
    for (int i = 0; i < h; i++) proj_out[(size_t)g * h + i] = (float)proj[i];
    bucket[g] = force ? force[g] : code;
}

__global__ static void fill_i32_kernel(int32_t *a, int32_t *b, int n, int32_t v) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g < n) a[g] = b[g] = v;
}

// Buckets of the queries (which = 1: Q = KQ[:, N:]) or keys (which = 0).
static void lsh_hash(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok, int L,
                     const float *hash, int which) {
    int N = st->N, ref = st->sem == SEMANTICS_REFERENCE;
    const float *x = st->KQ + (which ? N : 0);
    cudaStream_t sm = cu_stream();
    if (ref) lsh_stats_reference<<<cu_blocks((long)n_seq * N, 128), 128, 0, sm>>>(
        st->lsh_stat, x, 2 * N, seq_off, n_seq, N, L);
    else lsh_stats_causal<<<cu_blocks((long)n_seq * N, 128), 128, 0, sm>>>(
        st->lsh_stat, x, 2 * N, seq_off, n_seq, N);
    CUDA_LAUNCHED();
    lsh_project_kernel<<<cu_blocks(n_tok, 128), 128, 0, sm>>>(
        which ? st->q_bucket : st->k_bucket, which ? st->hq_proj : st->hk_proj, x, 2 * N,
        st->lsh_stat, hash, st->h, N, HAS(st->mask, SPARSE_ARGMAX_LSH), ref, seq_off, n_seq, n_tok,
        which ? st->force_q_bucket : st->force_k_bucket);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- allowed lists

// One thread per query: the sorted union of the components of mask m, by
// merging the components' ascending key streams (the CUDA rules of
// cuda/sparse/internal.cuh) one smallest head at a time. Same lists as
// src/sparse/masks.c build_row.
__global__ static void build_lists_kernel(int *allow_cnt, int *allow_key, int *lsh_keys,
                                          int *has_empty, const int32_t *q_bucket,
                                          const int32_t *k_bucket, const int *sel,
                                          const int *seq_off, int n_seq, int n_tok, unsigned m,
                                          unsigned lsh_bits, int k, int delta, int cap) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_tok) return;
    int s = cu_seq_of(seq_off, n_seq, g), o = seq_off[s], t = g - o;
    cu_rule_query q = {t, seq_off[s + 1] - o, k, delta, lsh_keys + (size_t)g * k, 0, NULL, 0};
    if (m & lsh_bits) {  // LSH: the k most recent j <= t in the query's bucket, newest first
        int32_t b = q_bucket[g];
        int *lk = lsh_keys + (size_t)g * k;
        for (int j = t; j >= 0 && q.ln < k; j--)
            if (k_bucket[o + j] == b) lk[q.ln++] = j;
    }
    if (sel) {
        q.sk = sel + (size_t)g * k;
        while (q.kn < k && q.sk[q.kn] >= 0) q.kn++;
    }
    int idx[SP_N_COMPONENTS], head[SP_N_COMPONENTS];
#pragma unroll
    for (int c = 0; c < SP_N_COMPONENTS; c++) {
        idx[c] = 0;
        head[c] = (m >> c) & 1 ? cu_rule_key(c, q, 0) : INT_MAX;
    }
    int *row = allow_key + (size_t)g * cap, cnt = 0;
    for (;;) {
        int nxt = INT_MAX;
#pragma unroll
        for (int c = 0; c < SP_N_COMPONENTS; c++) nxt = min(nxt, head[c]);
        if (nxt == INT_MAX) break;
        row[cnt++] = nxt;
#pragma unroll
        for (int c = 0; c < SP_N_COMPONENTS; c++)
            if (head[c] == nxt) head[c] = cu_rule_key(c, q, ++idx[c]);
    }
    allow_cnt[g] = cnt;
    if (cnt == 0) atomicOr(has_empty, 1);
}

// ---------------------------------------------------------------- forward / backward

static void check_shape(const cu_sparse_state *st, int n_seq, int n_tok, const char *who) {
    if (n_seq < 0 || n_seq > st->max_seq || n_tok < 0 || n_tok > st->max_tok)
        hax_die("%s: batch: expected 0..%d sequences and at most %d positions, found %d and %d",
                who, st->max_seq, st->max_tok, n_seq, n_tok);
}

extern "C" void cuda_sparse_forward(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok,
                                    int model_len, const float *X, int ldX, const float *W_xx,
                                    const ks_params *ks, const float *hash, const int *ks_cand,
                                    int training, float *attn, int ld_attn) {
    check_shape(st, n_seq, n_tok, "cuda_sparse_forward");
    unsigned m = st->mask;
    int N = st->N, E = st->E;
    cudaStream_t sm = cu_stream();
    st->n_tok = n_tok, st->n_seq = n_seq, st->model_len = model_len;
    if (sparse_pattern_has(m, SPF_KS_WEIGHTS) && !ks)
        hax_die("cuda_sparse_forward: pattern needs the dx_proj parameters, none given");
    if (sparse_pattern_has(m, SPF_KS_WEIGHTS) && training && !ks_cand)
        hax_die("cuda_sparse_forward: pattern in training needs KS candidates, none given");
    if (sparse_pattern_has(m, SPF_LSH) && !hash)
        hax_die("cuda_sparse_forward: pattern needs a hash matrix, none given");
    CUDA_CHECK(cudaMemsetAsync(st->has_empty, 0, sizeof(int), sm));
    CUDA_CHECK(cudaMemsetAsync(st->gate_loss, 0, sizeof(double), sm));
    if (n_tok == 0) return;
    cuda_linear_forward(st->KQ, 2 * N, X, ldX, W_xx, NULL, n_tok, E, 2 * N);
    scale_k_kernel<<<cu_blocks((long)n_tok * N, 256), 256, 0, sm>>>(st->KQ, n_tok, N,
                                                                    (float)sqrt((double)N));
    CUDA_LAUNCHED();
    if (sparse_pattern_has(m, SPF_LSH)) {
        lsh_hash(st, seq_off, n_seq, n_tok, model_len, hash, 1);
        lsh_hash(st, seq_off, n_seq, n_tok, model_len, hash, 0);
    } else {
        fill_i32_kernel<<<cu_blocks(n_tok, 256), 256, 0, sm>>>(st->q_bucket, st->k_bucket, n_tok, -1);
        CUDA_LAUNCHED();
    }
    if (!sparse_pattern_has(m, SPF_DENSE)) {
        const int *sel = NULL;
        if (sparse_pattern_has(m, SPF_KS_WEIGHTS)) {
            cuda_ks_state *kst = (cuda_ks_state *)st->ks;
            cuda_ks_forward(kst, ks, st->KQ, 2 * N, st->KQ + N, 2 * N, seq_off, n_seq, n_tok,
                            model_len, st->sem, training ? ks_cand : NULL);
            CUDA_CHECK(cudaMemcpyAsync(st->gate_loss, kst->loss, sizeof(double),
                                       cudaMemcpyDeviceToDevice, sm));
            sel = kst->sel;
        }
        build_lists_kernel<<<cu_blocks(n_tok, 128), 128, 0, sm>>>(
            st->allow_cnt, st->allow_key, st->lsh_keys, st->has_empty, st->q_bucket, st->k_bucket,
            sel, seq_off, n_seq, n_tok, m, sparse_pattern_bits(SPF_LSH), st->k_c, st->delta, st->row_cap);
        CUDA_LAUNCHED();
    } else {
        CUDA_CHECK(cudaMemsetAsync(st->allow_cnt, 0, sizeof(int) * n_tok, sm));
    }
    cu_sp_attn_forward(st, seq_off, X, ldX, attn, ld_attn);
}

extern "C" void cuda_sparse_backward(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok,
                                     const float *dattn, int ld_dattn, float gate_scale,
                                     const float *X, int ldX, const float *W_xx,
                                     const ks_params *ks, float *dX, int ld_dX, float *dW_xx,
                                     const ks_grads *dks) {
    if (n_seq != st->n_seq || n_tok != st->n_tok)
        hax_die("cuda_sparse_backward: batch: expected the last forward's %d sequences / %d "
                "positions, found %d / %d", st->n_seq, st->n_tok, n_seq, n_tok);
    if (n_tok == 0) return;
    int N = st->N, E = st->E;
    cu_sp_attn_backward(st, seq_off, X, ldX, dattn, ld_dattn, dX, ld_dX);
    // d KQ[:, :N] = dK / sqrt(N): the same kernel as the forward's scaling
    scale_k_kernel<<<cu_blocks((long)n_tok * N, 256), 256, 0, cu_stream()>>>(
        st->dKQ, n_tok, N, (float)sqrt((double)N));
    CUDA_LAUNCHED();
    cuda_linear_backward(dX, ld_dX, dW_xx, NULL, st->dKQ, 2 * N, X, ldX, W_xx, n_tok, E, 2 * N);
    if (sparse_pattern_has(st->mask, SPF_KS_WEIGHTS) && ks && dks)
        cuda_ks_backward((cuda_ks_state *)st->ks, ks, dks, gate_scale);
}
