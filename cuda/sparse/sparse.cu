// cuda/sparse/sparse.cu: see cuda/sparse/sparse.h. The state, the Q/K
// projection, and forward/backward chaining the LSH buckets
// (cuda/sparse/lsh.cu), key selection (cuda/sparse/ks.h), the allowed lists
// (cuda/sparse/masks.cu) and the attention (cuda/sparse/attn.cu).
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/ops/gate.h"
#include "cuda/ops/linear.h"
#include "cuda/sparse/internal.cuh"
#include "cuda/sparse/ks.h"

#define HAS(m, bit) (((m) & (bit)) != 0)

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

static void layout(cu_sparse_state *st, carver *c) {
    size_t T = st->max_tok, S = st->max_seq, N = st->N, E = st->E, cap = st->row_cap;
    size_t h = st->h > 0 ? st->h : 1;
    st->KQ = (float *)carve(c, sizeof(float) * T * 2 * N);
    st->dKQ = (float *)carve(c, sizeof(float) * T * 2 * N);
    st->dXs = st->bf16_made ? (float *)carve(c, sizeof(float) * T * E) : NULL;
    st->q_bucket = (int32_t *)carve(c, sizeof(int32_t) * T);
    st->k_bucket = (int32_t *)carve(c, sizeof(int32_t) * T);
    st->hq_proj = (float *)carve(c, sizeof(float) * T * h);
    st->hk_proj = (float *)carve(c, sizeof(float) * T * h);
    st->lsh_stat = (double *)carve(c, sizeof(double) * (T + 4 * S) * N);
    st->lsh_sorted = (int64_t *)carve(c, sizeof(int64_t) * T);
    size_t hist = st->h > 0 ? cu_sp_lsh_hist_ints(st->max_tok, st->max_seq, cu_sp_lsh_n_buckets(st->mask, st->h)) : 0;
    st->lsh_hist = hist ? (int *)carve(c, sizeof(int) * hist) : NULL;
    st->allow_cnt = (int *)carve(c, sizeof(int) * T);
    st->allow_key = (int *)carve(c, sizeof(int) * T * cap);
    st->allow_p = (float *)carve(c, sizeof(float) * T * cap);
    st->allow_ds = (float *)carve(c, sizeof(float) * T * cap);
    // the transposed lists of the dK/dV gather
    // (not for `full`, which has no lists). The bitmaps take T·max_len/8
    // bytes: beyond CU_SP_TR_MAX_BYTES (long evaluation batches, which run no
    // backward) they are left out and a backward there stops with one line.
    size_t W = sparse_pattern_has(st->mask, SPF_DENSE) ? 0 : ((size_t)st->max_len + 31) / 32;
    if (sizeof(uint32_t) * T * W > CU_SP_TR_MAX_BYTES) W = 0;
    size_t TL = W ? T : 0;
    st->tr_bits = TL ? (uint32_t *)carve(c, sizeof(uint32_t) * TL * W) : NULL;
    st->tr_cnt = TL ? (int *)carve(c, sizeof(int) * TL) : NULL;
    st->tr_off = TL ? (int *)carve(c, sizeof(int) * TL) : NULL;
    st->tr_ent = TL ? (int *)carve(c, sizeof(int) * TL * cap) : NULL;
    st->lse = (float *)carve(c, sizeof(float) * T);
    st->rowD = (float *)carve(c, sizeof(float) * T);
    st->seq_sv = (double *)carve(c, sizeof(double) * S * E);
    st->empty_work = (double *)carve(c, sizeof(double) * S * cu_sp_empty_doubles((int)E, (int)N));
    st->empty_a = (double *)carve(c, sizeof(double) * T);
    st->has_empty = (int *)carve(c, sizeof(int));
    st->seq_empty = (int *)carve(c, sizeof(int) * S);
    st->gate_loss = (double *)carve(c, sizeof(double));
    st->sample_id = (int64_t *)carve(c, sizeof(int64_t) * S);
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
    st->bf16_made = cfg->precision == PREC_BF16_PURE;
}

static size_t ks_bytes(const hax_model_config *cfg, int max_tok, int max_seq) {
    if (!sparse_pattern_has(cfg->sparse_mask, SPF_KS_WEIGHTS)) return 0;
    return sizeof(cuda_ks_state) + cuda_ks_state_bytes(max_tok, max_seq, cfg->state_size, cfg->k_c);
}

extern "C" int cuda_sparse_tiles_fit(const cu_sparse_state *st) { return cu_sp_tile_fits(st); }

extern "C" size_t cuda_sparse_state_bytes(const hax_model_config *cfg, int max_tok, int max_seq,
                                          int max_len) {
    cu_sparse_state st = {};
    carver c = {NULL, 0};
    fill_shape(&st, cfg, max_tok, max_seq, max_len);
    layout(&st, &c);
    return c.used + ks_bytes(cfg, max_tok, max_seq);
}

// HAX_SPARSE_ATTN: `old` (1) runs the previous attention gathers
// (cuda/sparse/attn.cu), `new` (0) the new ones (cuda/sparse/attn_gather.cu),
// unset (2) the new forward and the previous backward; read once, for A/B
// timing in one binary.
static int attn_old_env(void) {
    static int env = -1;
    // Unset (2): the new forward gather with the previous dQ and dK/dV ones, the
    // fastest mix measured (H200, 2026-12-07, gpu_sparse at the paper size: the
    // new forward 2.1x faster for HAX; the new dQ and dK/dV slower for LSH alone,
    // equal for HAX). All of them give the same bits.
    if (env < 0) env = hax_env_choice("HAX_SPARSE_ATTN", "new old", 2);
    return env;
}

// HAX_SPARSE_TILES: which of the attention's gathers run by tiles (the same
// bits): `kv` dK/dV by dense tiles (cu_sp_tile_backward_kv: the work
// independent of how many queries hold a key), `q` dQ and `fwd` the forward
// by staged key rounds (cu_sp_tile_backward_q, cu_sp_tile_forward), joined
// by `+` in this order, `all` the three, `none` (the default until the tiles
// have run on a GPU: stage kvtile of tests/device/stages.sh) neither, the
// lists' kernels as HAX_SPARSE_ATTN says; read once. The index of the choice
// is the bit mask of cu_sparse_state.tiles (SP_TILES_*).
static int tiles_env(void) {
    static int env = -1;
    if (env < 0) env = hax_env_choice("HAX_SPARSE_TILES", "none kv q kv+q fwd kv+fwd q+fwd all", 0);
    return env;
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
    if ((size_t)max_tok * sparse_row_cap(cfg, max_len) > INT_MAX)
        hax_die("cu_sparse: capacity: expected max_tok * row_cap below 2^31 list slots, found %d * %d", max_tok,
                sparse_row_cap(cfg, max_len));
    state_box *box = (state_box *)xcalloc(1, sizeof(state_box));
    cu_sparse_state *st = &box->st;
    fill_shape(st, cfg, max_tok, max_seq, max_len);
    st->attn_old = attn_old_env();
    st->tiles = tiles_env();
    st->ks_old = cuda_ks_old_kernels();
    st->long_mode = cuda_sparse_long_env();
    carver c = {NULL, 0};
    layout(st, &c);
    box->mem = cuda_malloc(c.used);
    cu_sp_gather_setup();  // (after cuda_malloc: the device is chosen)
    cu_sp_lsh_setup();
    c.base = (char *)box->mem, c.used = 0;
    layout(st, &c);
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

extern "C" void cuda_sparse_draw_candidates(cu_sparse_state *st, int *cand, const int *seq_off, int n_seq,
                                            int n_seq_pad, const int64_t *sample_idx, uint64_t seed,
                                            uint32_t step, uint32_t layer) {
    if (n_seq_pad > st->max_seq || n_seq > n_seq_pad)
        hax_die("cuda_sparse_draw_candidates: batch: expected n_seq <= n_seq_pad <= %d, found %d and %d",
                st->max_seq, n_seq, n_seq_pad);
    cudaStream_t sm = cu_stream();
    if (n_seq > 0) {
        cuda_upload(st->sample_id, sample_idx, sizeof(int64_t) * n_seq);
        cuda_ks_sample_candidates(cand, seq_off, n_seq, st->sample_id, st->k_c, seed, step, layer);
    }
    if (n_seq_pad > n_seq)  // -1 is all bytes 0xff
        CUDA_CHECK(cudaMemsetAsync(cand + (size_t)n_seq * st->k_c, 0xff,
                                   sizeof(int) * (size_t)(n_seq_pad - n_seq) * st->k_c, sm));
}

extern "C" void cuda_sparse_force_buckets(cu_sparse_state *st, const int32_t *q_bucket,
                                          const int32_t *k_bucket) {
    st->force_q_bucket = q_bucket;
    st->force_k_bucket = k_bucket;
}

// ---------------------------------------------------------------- Q/K projection

// K = KQ[:, :N] / sqrt(N) in place (the CPU's float division); bf16-pure:
// R(K · inv), inv = 1 / sqrt(N) in float (sparse.c scale_keys).
__global__ static void scale_k_kernel(float *KQ, int n_tok, int N, float sqrt_n, float inv, int bf16) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_tok * N) return;
    int g = (int)(i / N), f = (int)(i % N);
    float *k = KQ + (size_t)g * 2 * N + f;
    *k = bf16 ? hax_bf16_round(*k * inv) : *k / sqrt_n;
}

// The keys' scaling (forward on K, backward on dK), as sparse.c scale_keys:
// bf16-pure first rounds all of KQ (the GEMM's bf16 output / dQ, dK sums).
static void scale_keys(float *KQ, int n_tok, int N, int bf16) {
    float sqrt_n = (float)sqrt((double)N), inv = 1.0f / sqrt_n;
    if (bf16) cuda_round_bf16(KQ, KQ, (long)n_tok * 2 * N);
    scale_k_kernel<<<cu_blocks((long)n_tok * N, 256), 256, 0, cu_stream()>>>(KQ, n_tok, N, sqrt_n, inv, bf16);
    CUDA_LAUNCHED();
}

__global__ static void fill_i32_kernel(int32_t *a, int32_t *b, int n, int32_t v) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g < n) a[g] = b[g] = v;
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
    st->long_on = cuda_sparse_long_use(st->long_mode, n_seq, n_tok);
    if (sparse_pattern_has(m, SPF_KS_WEIGHTS) && !ks)
        hax_die("cuda_sparse_forward: pattern needs the dx_proj parameters, none given");
    if (sparse_pattern_has(m, SPF_KS_WEIGHTS) && training && !ks_cand)
        hax_die("cuda_sparse_forward: pattern in training needs KS candidates, none given");
    if (sparse_pattern_has(m, SPF_LSH) && !hash)
        hax_die("cuda_sparse_forward: pattern needs a hash matrix, none given");
    CUDA_CHECK(cudaMemsetAsync(st->has_empty, 0, sizeof(int), sm));
    if (n_seq > 0) CUDA_CHECK(cudaMemsetAsync(st->seq_empty, 0, sizeof(int) * n_seq, sm));
    CUDA_CHECK(cudaMemsetAsync(st->gate_loss, 0, sizeof(double), sm));
    if (n_tok == 0) return;
    st->n_ev = 0;
    cu_sp_phase(st, "start");
    cuda_linear_forward(st->KQ, 2 * N, X, ldX, W_xx, NULL, n_tok, E, 2 * N);
    scale_keys(st->KQ, n_tok, N, st->bf16);
    cu_sp_phase(st, "KQ projection");
    if (sparse_pattern_has(m, SPF_LSH) && st->long_on) {
        cu_sp_lsh_hash_long(st, seq_off, n_seq, n_tok, model_len, hash);  // cuda/sparse/lsh_long.cu
    } else if (sparse_pattern_has(m, SPF_LSH) && !st->ks_old) {
        cu_sp_lsh_hash_seq(st, seq_off, n_seq, model_len, hash);
    } else if (sparse_pattern_has(m, SPF_LSH)) {
        cu_sp_lsh_hash(st, seq_off, n_seq, n_tok, model_len, hash, 1);
        cu_sp_lsh_hash(st, seq_off, n_seq, n_tok, model_len, hash, 0);
    } else {
        fill_i32_kernel<<<cu_blocks(n_tok, 256), 256, 0, sm>>>(st->q_bucket, st->k_bucket, n_tok, -1);
        CUDA_LAUNCHED();
    }
    cu_sp_phase(st, "LSH buckets");
    if (!sparse_pattern_has(m, SPF_DENSE)) {
        const int *sel = NULL;
        if (sparse_pattern_has(m, SPF_KS_WEIGHTS)) {
            cuda_ks_state *kst = (cuda_ks_state *)st->ks;
            kst->bf16 = st->bf16;
            kst->old = st->ks_old;
            kst->long_mode = st->long_mode;
            cuda_ks_forward(kst, ks, st->KQ, 2 * N, st->KQ + N, 2 * N, seq_off, n_seq, n_tok,
                            model_len, st->sem, training ? ks_cand : NULL);
            CUDA_CHECK(cudaMemcpyAsync(st->gate_loss, kst->loss, sizeof(double),
                                       cudaMemcpyDeviceToDevice, sm));
            sel = kst->sel;
            cu_sp_phase(st, "key selection");
        }
        cu_sp_build_lists(st, sel, seq_off, n_seq, n_tok);
    } else {
        CUDA_CHECK(cudaMemsetAsync(st->allow_cnt, 0, sizeof(int) * n_tok, sm));
    }
    cu_sp_phase(st, "allowed lists");
    cu_sp_attn_forward(st, seq_off, X, ldX, attn, ld_attn);
    cu_sp_phase(st, "attention");
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
    st->n_ev = 0;
    cu_sp_phase(st, "start");
    // bf16-pure: dV is a bf16 tensor of its own (dXs), added into dX in bf16
    if (st->bf16 && !st->bf16_made)
        hax_die("cuda_sparse_backward: bf16-pure: expected a state made for train.precision bf16-pure, found one "
                "made for another precision");
    if (st->bf16) cuda_zero(st->dXs, sizeof(float) * (size_t)n_tok * E);
    cu_sp_attn_backward(st, seq_off, X, ldX, dattn, ld_dattn, st->bf16 ? st->dXs : dX, st->bf16 ? E : ld_dX);
    if (st->bf16) cuda_add_bf16_rows(dX, ld_dX, st->dXs, E, E, n_tok);
    // d KQ[:, :N] = dK / sqrt(N), as the forward's scaling (bf16: dQ, dK rounded first)
    scale_keys(st->dKQ, n_tok, N, st->bf16);
    if (st->bf16) {  // xx_proj's share of dX, a bf16 tensor, then added in bf16
        cuda_zero(st->dXs, sizeof(float) * (size_t)n_tok * E);
        cuda_linear_backward(st->dXs, E, dW_xx, NULL, st->dKQ, 2 * N, X, ldX, W_xx, n_tok, E, 2 * N);
        cuda_add_bf16_rows(dX, ld_dX, st->dXs, E, E, n_tok);
    } else {
        cuda_linear_backward(dX, ld_dX, dW_xx, NULL, st->dKQ, 2 * N, X, ldX, W_xx, n_tok, E, 2 * N);
    }
    cu_sp_phase(st, "KQ backward");
    if (sparse_pattern_has(st->mask, SPF_KS_WEIGHTS) && ks && dks) {
        ((cuda_ks_state *)st->ks)->old = st->ks_old;
        cuda_ks_backward((cuda_ks_state *)st->ks, ks, dks, gate_scale);
        cu_sp_phase(st, "key selection");
    }
}
