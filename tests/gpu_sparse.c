// gpu_sparse.c: the GPU sparse branch (cuda/sparse/sparse.h) against the CPU
// branch (src/sparse/sparse.h), for 10 patterns (the 7 components alone and three
// unions) in both semantics, on a ragged packed batch (lengths 1 to 100, with
// empty rows: dilated queries before the first dilated key, LSH queries
// alone in their bucket). X and W_xx are multiples of 1/16, so KQ is exact in
// float on both sides and the LSH buckets, the allowed lists and the key
// selection must be EXACTLY the CPU's; attn within 1e-5, dX / dW_xx / the KS
// MLP gradients within 1e-4 (normwise, increments over random initial values;
// the KS gradients are small, so their initial values are ~1e-5, not to lose
// the increment to float cancellation).
// Then the LSH buckets on unrounded data against the CPU's hash of the GPU's
// own KQ (exact), and a paper-size timing (64 x ~464 positions, E 128, N 16
// and 32: HAX = sign_bin_lsh+key_selection with 32+32 keys, window+sink,
// full, and sign_bin_lsh / dilated alone with 64 keys in both semantics),
// CPU vs GPU, with the GPU's time per phase (lines "PHASE new|old
// fwd|bwd <phase> <ms>"). Also the
// random inputs drawn on the device (hash matrices: 0 entries may differ
// from the host's; candidates identical), and the default attention gathers
// (cuda/sparse/attn_gather.cu) against the previous ones (cuda/sparse/attn.cu,
// cu_sparse_state.attn_old): every output bit for bit, on every pattern and
// at the paper size, whose timings ("PHASE new|old fwd|bwd <phase> <ms>",
// "GATHERS new ... old ...") cover both.
// Then the new kernels of the other phases (HAX_SPARSE_KS=new: LSH buckets,
// key selection, lists, transposed lists) against the previous ones
// (cu_sparse_state.ks_old): every output bit for bit on every pattern and at
// the paper size, timed both ways ("PHASE ks-new|ks-old fwd|bwd <phase>
// <ms>", "KS PHASES new ... old ...").
// Then the long-sequence kernels (HAX_SPARSE_LONG, cu_sparse_state.long_mode:
// LSH buckets, key selection's features and top-k, the LSH keys by bucket)
// against the previous ones on tiny, ragged and few long sequences (2 x
// 20000, 3 x 7000), fp32 and bf16-pure, both semantics: every output byte for
// byte ("long vs previous kernels ..., differing elements: ..."), and against
// the CPU (buckets, LSH keys and lists exact, selections exactly the CPU's
// top-k of the GPU's scores, attn within tolerance).
// Skips (exit 0) without a CUDA device. --quick: no paper-size timing.
// --lengths N_SEQxLEN,... [N]: only the eval forward's phases at those
// lengths, previous and long-sequence kernels ("LPHASE old|new ...", "LONG
// ..."; their outputs must be equal).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/rng.h"
#include "src/core/scalar.h"
#include "cuda/core/common.h"
#include "cuda/sparse/ks.h"
#include "cuda/sparse/sparse.h"
#include "src/sparse/sparse.h"
#include "src/sparse/internal.h"
#include "test.h"

#define TOL_FWD 1e-5
#define TOL_BWD 1e-4

static unsigned g_seed = 7;
// The long-sequence kernels in check_pattern / check_pattern_bf16:
// cu_sparse_state.long_mode (-1: as allocated, from HAX_SPARSE_LONG).
static int g_long_mode = -1;

static float *rnd(size_t n, float scale) {
    float *p = xmalloc(sizeof(float) * (n ? n : 1));
    test_fill(p, n, g_seed++, scale);
    return p;
}

// Random multiples of 1/16 in [-1, 1]: products and sums stay exact in float.
static float *rnd_q(size_t n) {
    float *p = rnd(n, 1.0f);
    for (size_t i = 0; i < n; i++) p[i] = roundf(p[i] * 16.0f) / 16.0f;
    return p;
}

// cuda_upload_new / cuda_download_new allocate at least one byte, so empty
// arrays need no special case here.
static void *up(const void *h, size_t bytes) { return cuda_upload_new(h, bytes); }
static void *down(const void *d, size_t bytes) { return cuda_download_new(d, bytes); }

static double cmp(const char *what, const float *d_gpu, const float *cpu, const float *init, size_t n,
                  double tol) {
    float *g = down(d_gpu, sizeof(float) * n), *c = xmalloc(sizeof(float) * (n ? n : 1));
    memcpy(c, cpu, sizeof(float) * n);
    if (init)
        for (size_t i = 0; i < n; i++) g[i] -= init[i], c[i] -= init[i];
    double err = rel_err(g, c, n);
    printf("      %-12s rel err %.2e\n", what, err);
    CHECK(err <= tol, "%s: relative error %.3e above %.0e", what, err, tol);
    free(g), free(c);
    return err;
}

static void set_cfg(hax_model_config *cfg, const char *pattern, int keys, int N, int E, int h,
                    int dml, hax_semantics sem) {
    char err[200];
    memset(cfg, 0, sizeof(*cfg));
    cfg->state_size = N, cfg->intermediate_size = E, cfg->sparse_keys = keys;
    cfg->num_hash = h, cfg->data_max_length = dml, cfg->semantics = sem;
    if (model_config_set_sparse(cfg, pattern, err, sizeof err) != 0) hax_die("gpu_sparse: %s", err);
}

// One problem: host inputs and their device copies.
typedef struct {
    hax_batch b;
    int ldX, N, E, h, k_c;
    float *X, *W, *H, *dattn, *dX0, *dW0;
    float *kp[6], *kg0[6];  // KS parameters and gradient initial values
    int *cand;
    int *d_off, *d_cand;
    float *d_X, *d_W, *d_H, *d_dattn, *d_dX, *d_dW, *d_kp[6], *d_kg[6];
} problem;

static size_t kp_size(int i, int N) {
    size_t w = 2 * (size_t)N;
    size_t sz[6] = {w * w, w, w * w, w, w, 1};
    return sz[i];
}

static void make_problem(problem *p, const int *lens, int n_seq, int model_len, int N, int E, int ldX,
                         int h, int k_c, int quantised) {
    memset(p, 0, sizeof(*p));
    p->b.n_seq = n_seq, p->b.model_len = model_len, p->b.global_n_seq = n_seq;
    p->b.seq_off = xmalloc(sizeof(int) * (n_seq + 1));
    p->b.sample_idx = xmalloc(sizeof(int64_t) * n_seq);
    p->b.seq_off[0] = 0;
    for (int s = 0; s < n_seq; s++) p->b.seq_off[s + 1] = p->b.seq_off[s] + lens[s], p->b.sample_idx[s] = 1000 + s;
    int n = p->b.n_tok = p->b.seq_off[n_seq];
    p->ldX = ldX, p->N = N, p->E = E, p->h = h, p->k_c = k_c;
    p->X = quantised ? rnd_q((size_t)n * ldX) : rnd((size_t)n * ldX, 1.0f);
    p->W = quantised ? rnd_q((size_t)2 * N * E) : rnd((size_t)2 * N * E, 0.3f);
    p->H = rnd((size_t)N * h, 1.0f);
    p->dattn = rnd((size_t)n * E, 1.0f), p->dX0 = rnd((size_t)n * ldX, 1.0f), p->dW0 = rnd((size_t)2 * N * E, 1.0f);
    for (int i = 0; i < 6; i++) p->kp[i] = rnd(kp_size(i, N), 0.4f), p->kg0[i] = rnd(kp_size(i, N), 1e-5f);
    p->cand = xmalloc(sizeof(int) * n_seq * k_c);
    ks_sample_candidates(p->cand, p->b.seq_off, n_seq, p->b.sample_idx, k_c, 11, 3, 1);
    p->d_off = up(p->b.seq_off, sizeof(int) * (n_seq + 1));
    p->d_cand = up(p->cand, sizeof(int) * n_seq * k_c);
    p->d_X = up(p->X, sizeof(float) * n * ldX), p->d_W = up(p->W, sizeof(float) * 2 * N * E);
    p->d_H = up(p->H, sizeof(float) * N * h), p->d_dattn = up(p->dattn, sizeof(float) * n * E);
    p->d_dX = up(p->dX0, sizeof(float) * n * ldX), p->d_dW = up(p->dW0, sizeof(float) * 2 * N * E);
    for (int i = 0; i < 6; i++)
        p->d_kp[i] = up(p->kp[i], sizeof(float) * kp_size(i, N)),
        p->d_kg[i] = up(p->kg0[i], sizeof(float) * kp_size(i, N));
}

static void free_problem(problem *p) {
    free(p->b.seq_off), free(p->b.sample_idx), free(p->X), free(p->W), free(p->H), free(p->dattn);
    free(p->dX0), free(p->dW0), free(p->cand);
    cuda_free(p->d_off), cuda_free(p->d_cand), cuda_free(p->d_X), cuda_free(p->d_W), cuda_free(p->d_H);
    cuda_free(p->d_dattn), cuda_free(p->d_dX), cuda_free(p->d_dW);
    for (int i = 0; i < 6; i++) free(p->kp[i]), free(p->kg0[i]), cuda_free(p->d_kp[i]), cuda_free(p->d_kg[i]);
}

static ks_params host_ks(float **w) { return (ks_params){w[0], w[1], w[2], w[3], w[4], w[5]}; }
static ks_grads host_kg(float **w) { return (ks_grads){w[0], w[1], w[2], w[3], w[4], w[5]}; }

// Counts rows whose allowed list differs between the CPU (CSR) and GPU (stride).
static int list_mismatches(const hax_sparse_state *cs, const cu_sparse_state *gs, int n_tok) {
    int *cnt = down(gs->allow_cnt, sizeof(int) * n_tok);
    int *key = down(gs->allow_key, sizeof(int) * (size_t)n_tok * gs->row_cap);
    int bad = 0;
    for (int g = 0; g < n_tok; g++) {
        int off = cs->allow_off[g], c = cs->allow_off[g + 1] - off;
        int same = c == cnt[g] && memcmp(cs->allow_key + off, key + (size_t)g * gs->row_cap, sizeof(int) * c) == 0;
        bad += !same;
    }
    free(cnt), free(key);
    return bad;
}

static int bucket_mismatches(const int32_t *cpu, const int32_t *d_gpu, int n) {
    int32_t *g = down(d_gpu, sizeof(int32_t) * n);
    int bad = 0;
    for (int i = 0; i < n; i++) bad += g[i] != cpu[i];
    free(g);
    return bad;
}

// CPU and GPU forward + backward of one pattern on problem p; checks
// everything. Returns the CPU state (freed by the caller).
static void check_pattern(problem *p, const hax_model_config *cfg, int max_len) {
    int n = p->b.n_tok, N = p->N, E = p->E, ldX = p->ldX, ks_on = (cfg->sparse_mask & SPARSE_KEY_SELECTION) != 0;
    printf("    %s / %s\n", cfg->sparse_arch, cfg->semantics == SEMANTICS_REFERENCE ? "reference" : "causal");
    hax_sparse_state *cs = sparse_state_alloc(cfg, n, p->b.n_seq, max_len);
    cu_sparse_state *gs = cuda_sparse_state_alloc(cfg, n, p->b.n_seq, max_len);
    if (g_long_mode >= 0) gs->long_mode = g_long_mode;
    ks_params hk = host_ks(p->kp), dk = host_ks(p->d_kp);
    float *attn = xcalloc((size_t)n * E, sizeof(float));
    float *d_attn = cuda_malloc(sizeof(float) * n * E);
    double gl = sparse_forward(cs, cfg, &p->b, p->X, ldX, p->W, &hk, p->H, p->cand, 1, attn, E);
    cuda_sparse_forward(gs, p->d_off, p->b.n_seq, n, p->b.model_len, p->d_X, ldX, p->d_W, &dk, p->d_H,
                        p->d_cand, 1, d_attn, E);
    cuda_sync();
    CHECK(g_long_mode != 2 || gs->long_on, "long_mode 2: the long-sequence kernels did not run");
    int bq = bucket_mismatches(cs->q_bucket, gs->q_bucket, n), bk = bucket_mismatches(cs->k_bucket, gs->k_bucket, n);
    CHECK(bq == 0 && bk == 0, "%s: buckets differ at %d query / %d key rows", cfg->sparse_arch, bq, bk);
    if (!(cfg->sparse_mask & SPARSE_FULL)) {
        int bad = list_mismatches(cs, gs, n), empty = 0;
        for (int g = 0; g < n; g++) empty += cs->allow_off[g + 1] == cs->allow_off[g];
        printf("      lists: %d rows, %d empty, %d differ\n", n, empty, bad);
        CHECK(bad == 0, "%s: %d allowed lists differ", cfg->sparse_arch, bad);
    }
    cmp("attn", d_attn, attn, NULL, (size_t)n * E, TOL_FWD);
    double ggl = 0;
    cuda_download(&ggl, gs->gate_loss, sizeof(double));
    cuda_sync();
    CHECK(fabs(ggl - gl) <= 1e-5 * (fabs(gl) + 1e-3), "gate loss %.9g vs CPU %.9g", ggl, gl);
    // backward
    float *dX = xmalloc(sizeof(float) * n * ldX), *dW = xmalloc(sizeof(float) * 2 * N * E), *kg[6];
    memcpy(dX, p->dX0, sizeof(float) * n * ldX), memcpy(dW, p->dW0, sizeof(float) * 2 * N * E);
    for (int i = 0; i < 6; i++) kg[i] = xmalloc(sizeof(float) * kp_size(i, N)), memcpy(kg[i], p->kg0[i], sizeof(float) * kp_size(i, N));
    ks_grads hg = host_kg(kg), dg = host_kg(p->d_kg);
    float gate_scale = 0.1f / p->b.n_seq;
    sparse_backward(cs, cfg, &p->b, p->dattn, E, gate_scale, p->X, ldX, p->W, &hk, dX, ldX, dW, &hg);
    cuda_sparse_backward(gs, p->d_off, p->b.n_seq, n, p->d_dattn, E, gate_scale, p->d_X, ldX, p->d_W, &dk,
                         p->d_dX, ldX, p->d_dW, &dg);
    cuda_sync();
    cmp("dX", p->d_dX, dX, p->dX0, (size_t)n * ldX, TOL_BWD);
    cmp("dW_xx", p->d_dW, dW, p->dW0, (size_t)2 * N * E, TOL_BWD);
    if (ks_on) {
        const char *names[6] = {"d w1", "d b1", "d w2", "d b2", "d w3", "d b3"};
        for (int i = 0; i < 5; i++) cmp(names[i], p->d_kg[i], kg[i], p->kg0[i], kp_size(i, N), TOL_BWD);
        // d b3 = sum of d score over the candidates: the pairwise loss makes
        // that sum 0 up to rounding, so compare it absolutely.
        float g3 = 0;
        cuda_download(&g3, p->d_kg[5], sizeof(float));
        cuda_sync();
        double diff = fabs((double)(g3 - p->kg0[5][0]) - (double)(kg[5][0] - p->kg0[5][0]));
        printf("      %-12s abs err %.2e (a zero-sum gradient)\n", names[5], diff);
        CHECK(diff <= 1e-6, "d b3: absolute error %.3e above 1e-6", diff);
    }
    // reset the device gradients for the next pattern
    cuda_upload(p->d_dX, p->dX0, sizeof(float) * n * ldX), cuda_upload(p->d_dW, p->dW0, sizeof(float) * 2 * N * E);
    for (int i = 0; i < 6; i++) cuda_upload(p->d_kg[i], p->kg0[i], sizeof(float) * kp_size(i, N));
    cuda_sync();
    for (int i = 0; i < 6; i++) free(kg[i]);
    free(dX), free(dW), free(attn);
    cuda_free(d_attn);
    sparse_state_free(cs);
    cuda_sparse_state_free(gs);
}

// ---------------------------------------------------------------- bf16-pure

// The problem's inputs as bf16 values (X and W_xx, multiples of 1/16, are
// already), host and device.
static void problem_to_bf16(problem *p) {
    int n = p->b.n_tok, N = p->N, E = p->E;
    float *h[] = {p->X, p->W, p->H, p->dattn, p->dX0, p->dW0};
    float *d[] = {p->d_X, p->d_W, p->d_H, p->d_dattn, p->d_dX, p->d_dW};
    size_t len[] = {(size_t)n * p->ldX, 2 * (size_t)N * E, (size_t)N * p->h, (size_t)n * E, (size_t)n * p->ldX,
                    2 * (size_t)N * E};
    for (int i = 0; i < 6; i++) {
        for (size_t j = 0; j < len[i]; j++) h[i][j] = hax_bf16_round(h[i][j]);
        cuda_upload(d[i], h[i], sizeof(float) * len[i]);
    }
    for (int i = 0; i < 6; i++) {
        for (size_t j = 0; j < kp_size(i, N); j++) p->kp[i][j] = hax_bf16_round(p->kp[i][j]);
        cuda_upload(p->d_kp[i], p->kp[i], sizeof(float) * kp_size(i, N));
    }
    cuda_sync();
}

// check_pattern in bf16-pure (cfg->precision on the CPU, the state's bf16 on
// the GPU). KQ is exact on both sides (1/16 multiples), so the LSH buckets
// (the same float / double operations in the same order) must be equal. The
// rest sums in other orders (cuBLAS, warp trees) or calls the device's expf:
// a bf16 rounding moves one step where a float result lies within ~2^-16 of a
// midpoint, so bf16 tensors may differ in a few elements (at most 3%, 2% by
// more than a step: a flipped key score can also swap one key-selection
// pick, which changes a whole row, counted in `lists`, at most 2% of the
// rows); the fp32 gradient sums of bf16 values within 5e-3 (one flipped
// element of dKQ moves a sum by 2^-8 of one term).
static void check_pattern_bf16(problem *p, const hax_model_config *cfg_in, int max_len) {
    hax_model_config c = *cfg_in, *cfg = &c;
    cfg->precision = PREC_BF16_PURE;
    int n = p->b.n_tok, N = p->N, E = p->E, ldX = p->ldX, ks_on = (cfg->sparse_mask & SPARSE_KEY_SELECTION) != 0;
    printf("    %s / %s, bf16-pure\n", cfg->sparse_arch,
           cfg->semantics == SEMANTICS_REFERENCE ? "reference" : "causal");
    hax_sparse_state *cs = sparse_state_alloc(cfg, n, p->b.n_seq, max_len);
    cu_sparse_state *gs = cuda_sparse_state_alloc(cfg, n, p->b.n_seq, max_len);
    gs->bf16 = 1;
    if (g_long_mode >= 0) gs->long_mode = g_long_mode;
    ks_params hk = host_ks(p->kp), dk = host_ks(p->d_kp);
    float *attn = xcalloc((size_t)n * E, sizeof(float)), *d_attn = cuda_malloc(sizeof(float) * n * E);
    double gl = sparse_forward(cs, cfg, &p->b, p->X, ldX, p->W, &hk, p->H, p->cand, 1, attn, E);
    cuda_sparse_forward(gs, p->d_off, p->b.n_seq, n, p->b.model_len, p->d_X, ldX, p->d_W, &dk, p->d_H,
                        p->d_cand, 1, d_attn, E);
    cuda_sync();
    CHECK(g_long_mode != 2 || gs->long_on, "long_mode 2: the long-sequence kernels did not run");
    CHECK(cs->bf16 == 1, "the CPU branch did not run in bf16-pure");
    float *gkq = down(gs->KQ, sizeof(float) * n * 2 * N);
    check_bf16_close("KQ", gkq, cs->KQ, (size_t)n * 2 * N, 0, 0);
    int bq = bucket_mismatches(cs->q_bucket, gs->q_bucket, n), bk = bucket_mismatches(cs->k_bucket, gs->k_bucket, n);
    CHECK(bq == 0 && bk == 0, "%s bf16: buckets differ at %d query / %d key rows", cfg->sparse_arch, bq, bk);
    if (cs->h && cfg->semantics == SEMANTICS_REFERENCE) {
        float *gp = down(gs->hq_proj, sizeof(float) * n * cs->h);
        check_bf16_close("LSH projections (queries)", gp, cs->hq_proj, (size_t)n * cs->h, 0, 0);
        free(gp);
    } else if (cs->h) {  // causal: no reference to round like, the projections stay fp32 (test_lsh_exact)
        cmp("LSH proj", gs->hq_proj, cs->hq_proj, NULL, (size_t)n * cs->h, 0);
    }
    if (!(cfg->sparse_mask & SPARSE_FULL)) {
        int bad = list_mismatches(cs, gs, n);
        printf("      lists: %d rows, %d differ\n", n, bad);
        CHECK(bad <= 0.02 * n, "%s bf16: %d allowed lists differ", cfg->sparse_arch, bad);
    }
    float *ga = down(d_attn, sizeof(float) * n * E);
    check_bf16_close("attn", ga, attn, (size_t)n * E, 0.03, 0.02);
    double ggl = 0;
    cuda_download(&ggl, gs->gate_loss, sizeof(double));
    cuda_sync();
    CHECK(fabs(ggl - gl) <= 1e-3 * (fabs(gl) + 1e-3), "bf16 gate loss %.9g vs CPU %.9g", ggl, gl);
    float *dX = xmalloc(sizeof(float) * n * ldX), *dW = xmalloc(sizeof(float) * 2 * N * E), *kg[6];
    memcpy(dX, p->dX0, sizeof(float) * n * ldX), memcpy(dW, p->dW0, sizeof(float) * 2 * N * E);
    for (int i = 0; i < 6; i++) {
        kg[i] = xmalloc(sizeof(float) * kp_size(i, N));
        memcpy(kg[i], p->kg0[i], sizeof(float) * kp_size(i, N));
    }
    ks_grads hg = host_kg(kg), dg = host_kg(p->d_kg);
    float gate_scale = hax_bf16_round(0.1f) / p->b.n_seq;
    sparse_backward(cs, cfg, &p->b, p->dattn, E, gate_scale, p->X, ldX, p->W, &hk, dX, ldX, dW, &hg);
    cuda_sparse_backward(gs, p->d_off, p->b.n_seq, n, p->d_dattn, E, gate_scale, p->d_X, ldX, p->d_W, &dk,
                         p->d_dX, ldX, p->d_dW, &dg);
    cuda_sync();
    float *gdx = down(p->d_dX, sizeof(float) * n * ldX), *gdX = xmalloc(sizeof(float) * n * E);
    float *cdX = xmalloc(sizeof(float) * n * E);
    for (int g = 0; g < n; g++)  // the first E columns: dX's bf16 sums (the rest is untouched)
        memcpy(gdX + (size_t)g * E, gdx + (size_t)g * ldX, sizeof(float) * E),
            memcpy(cdX + (size_t)g * E, dX + (size_t)g * ldX, sizeof(float) * E);
    check_bf16_close("dX", gdX, cdX, (size_t)n * E, 0.03, 0.02);
    cmp("dW_xx", p->d_dW, dW, p->dW0, (size_t)2 * N * E, 5e-3);
    if (ks_on) {
        const char *names[6] = {"d w1", "d b1", "d w2", "d b2", "d w3", "d b3"};
        for (int i = 0; i < 4; i++) cmp(names[i], p->d_kg[i], kg[i], p->kg0[i], kp_size(i, N), 5e-3);
        cmp(names[4], p->d_kg[4], kg[4], p->kg0[4], kp_size(4, N), 5e-3);
    }
    cuda_upload(p->d_dX, p->dX0, sizeof(float) * n * ldX), cuda_upload(p->d_dW, p->dW0, sizeof(float) * 2 * N * E);
    for (int i = 0; i < 6; i++) cuda_upload(p->d_kg[i], p->kg0[i], sizeof(float) * kp_size(i, N));
    cuda_sync();
    for (int i = 0; i < 6; i++) free(kg[i]);
    free(dX), free(dW), free(attn), free(gkq), free(ga), free(gdx), free(gdX), free(cdX);
    cuda_free(d_attn);
    sparse_state_free(cs);
    cuda_sparse_state_free(gs);
}

static const char *k_patterns[] = {"sliding_window", "sink", "dilated", "sign_bin_lsh", "argmax_lsh",
                                   "key_selection", "full", "sliding_window+sink",
                                   "sign_bin_lsh+key_selection", "sink+dilated+argmax_lsh"};
static const int k_lens[] = {5, 1, 17, 3, 100, 4, 40, 1, 64, 33};
#define K_NSEQ ((int)(sizeof(k_lens) / sizeof(k_lens[0])))

static void test_patterns(void) {
    int N = 16, E = 40, ldX = 45, h = 4, L = 128;
    for (int sem = 0; sem < 2; sem++)
        for (size_t i = 0; i < sizeof(k_patterns) / sizeof(k_patterns[0]); i++) {
            hax_model_config cfg;
            int parts = 1;
            for (const char *c = k_patterns[i]; *c; c++) parts += *c == '+';
            set_cfg(&cfg, k_patterns[i], 8 * parts, N, E, h, 32, (hax_semantics)sem);
            problem p;
            make_problem(&p, k_lens, K_NSEQ, L, N, E, ldX, h, cfg.k_c > 0 ? cfg.k_c : 1, 1);
            check_pattern(&p, &cfg, L);
            free_problem(&p);
        }
}

// Every pattern in bf16-pure, both semantics (causal semantics rounds the
// same tensors but keeps its double LSH statistics and key-selection
// features, rounded).
static void test_patterns_bf16(void) {
    int N = 16, E = 40, ldX = 45, h = 4, L = 128;
    for (int sem = 0; sem < 2; sem++)
        for (size_t i = 0; i < sizeof(k_patterns) / sizeof(k_patterns[0]); i++) {
            hax_model_config cfg;
            int parts = 1;
            for (const char *c = k_patterns[i]; *c; c++) parts += *c == '+';
            set_cfg(&cfg, k_patterns[i], 8 * parts, N, E, h, 32, (hax_semantics)sem);
            problem p;
            make_problem(&p, k_lens, K_NSEQ, L, N, E, ldX, h, cfg.k_c > 0 ? cfg.k_c : 1, 1);
            problem_to_bf16(&p);
            check_pattern_bf16(&p, &cfg, L);
            free_problem(&p);
        }
}

// ---------------------------------------------------------------- default vs previous gathers

// The GPU outputs of one forward + backward (host copies): attn, P and d
// score (allow_p, allow_ds: [n_tok, row_cap]), dKQ, dX, dW_xx and the KS
// MLP gradients.
#define N_OUT 12
typedef struct {
    float *t[N_OUT];
    size_t n[N_OUT];
} gpu_outputs;

static const char *k_out_names[N_OUT] = {"attn", "P", "d score", "dKQ", "dX", "dW_xx",
                                         "d w1", "d b1", "d w2", "d b2", "d w3", "d b3"};

// One GPU forward + backward of problem p with the previous attention
// kernels (old = 1, cu_sparse_state.attn_old) or the new ones, with the
// gathers of the mask `tiles` by tiles (cu_sparse_state.tiles); the
// outputs into r (free_outputs), the device gradients reset after.
static void run_gpu(gpu_outputs *r, problem *p, cu_sparse_state *gs, int old, int tiles, float *d_attn) {
    int n = p->b.n_tok, N = p->N, E = p->E, ldX = p->ldX, n_seq = p->b.n_seq;
    ks_params dk = host_ks(p->d_kp);
    ks_grads dg = host_kg(p->d_kg);
    int was = gs->attn_old, was_tiles = gs->tiles;
    gs->attn_old = old, gs->tiles = tiles;
    cuda_sparse_forward(gs, p->d_off, n_seq, n, p->b.model_len, p->d_X, ldX, p->d_W, &dk, p->d_H, p->d_cand, 1,
                        d_attn, E);
    cuda_sparse_backward(gs, p->d_off, n_seq, n, p->d_dattn, E, 0.1f / n_seq, p->d_X, ldX, p->d_W, &dk, p->d_dX,
                         ldX, p->d_dW, &dg);
    cuda_sync();
    const float *src[N_OUT] = {d_attn, gs->allow_p, gs->allow_ds, gs->dKQ, p->d_dX, p->d_dW};
    size_t cap = (size_t)n * gs->row_cap;
    size_t len[N_OUT] = {(size_t)n * E, cap, cap, (size_t)n * 2 * N, (size_t)n * ldX, (size_t)2 * N * E};
    for (int i = 0; i < 6; i++) src[6 + i] = p->d_kg[i], len[6 + i] = kp_size(i, N);
    for (int i = 0; i < N_OUT; i++) r->t[i] = down(src[i], sizeof(float) * len[i]), r->n[i] = len[i];
    cuda_upload(p->d_dX, p->dX0, sizeof(float) * n * ldX), cuda_upload(p->d_dW, p->dW0, sizeof(float) * 2 * N * E);
    for (int i = 0; i < 6; i++) cuda_upload(p->d_kg[i], p->kg0[i], sizeof(float) * kp_size(i, N));
    cuda_sync();
    gs->attn_old = was, gs->tiles = was_tiles;
}

static void free_outputs(gpu_outputs *r) {
    for (int i = 0; i < N_OUT; i++) free(r->t[i]);
}

// Two runs' outputs bit for bit: prints "<what>, differing elements: ..."
// and requires none.
static void same_outputs(const gpu_outputs *a, const gpu_outputs *b, const char *what) {
    long ks_bad = 0;
    printf("      %s, differing elements:", what);
    for (int i = 0; i < N_OUT; i++) {
        long bad = 0;
        for (size_t k = 0; k < a->n[i]; k++) bad += memcmp(&a->t[i][k], &b->t[i][k], sizeof(float)) != 0;
        if (i < 6) printf(" %s %ld,", k_out_names[i], bad);
        else ks_bad += bad;
        CHECK(bad == 0, "%s: %ld of %zu elements of %s differ", what, bad, a->n[i], k_out_names[i]);
    }
    printf(" KS gradients %ld\n", ks_bad);
}

// The new attention kernels (cuda/sparse/attn_gather.cu) against the
// previous ones (cuda/sparse/attn.cu) on one state, and dK/dV by dense tiles,
// dQ and the forward by staged key rounds (where they fit: N <= 32, E <= 128)
// against the lists: every output bit for bit (they add the same terms in the same
// order). Prints the counts of differing elements.
static void check_variants(problem *p, cu_sparse_state *gs) {
    float *d_attn = cuda_malloc(sizeof(float) * (size_t)p->b.n_tok * p->E);
    gpu_outputs a, b, c;
    run_gpu(&a, p, gs, 0, 0, d_attn);
    run_gpu(&b, p, gs, 1, 0, d_attn);
    same_outputs(&a, &b, "gathers vs previous kernels");
    if (cuda_sparse_tiles_fit(gs)) {
        const char *what[4] = {"dK dV tiles vs lists", "dQ tiles vs lists", "forward tiles vs lists",
                               "all tiles vs lists"};
        const int masks[4] = {1, 2, 4, 7};  // cu_sparse_state.tiles
        for (int t = 0; t < 4; t++) {
            run_gpu(&c, p, gs, 1, masks[t], d_attn);
            same_outputs(&c, &b, what[t]);
            free_outputs(&c);
        }
    }
    free_outputs(&a), free_outputs(&b);
    cuda_free(d_attn);
}

// Every pattern, both semantics, fp32 and bf16-pure, with X's rows padded to
// E + 5 floats (the element-per-lane loads of V) and E + 8 (float4 loads),
// at N 16 E 40, N 18 (scalar loads of the score rows) and N 40 E 136 (the
// kernels' large instances).
// One problem of cfg's sizes (N, E, h) on the batch lens (bf16-pure values when bf16),
// a fresh device state for it, and check(problem, state).
static void on_problem(const hax_model_config *cfg, const int *lens, int n_seq, int L, int ldX, int bf16,
                       void (*check)(problem *, cu_sparse_state *)) {
    problem p;
    make_problem(&p, lens, n_seq, L, cfg->state_size, cfg->intermediate_size, ldX, cfg->num_hash,
                 cfg->k_c > 0 ? cfg->k_c : 1, 1);
    if (bf16) problem_to_bf16(&p);
    cu_sparse_state *gs = cuda_sparse_state_alloc(cfg, p.b.n_tok, p.b.n_seq, L);
    gs->bf16 = bf16;
    check(&p, gs);
    cuda_sparse_state_free(gs);
    free_problem(&p);
}

static void test_gather_variants(void) {
    int h = 4, L = 128, sizes[3][2] = {{16, 40}, {18, 40}, {40, 136}};
    for (int z = 0; z < 3; z++)
        for (int bf16 = 0; bf16 < 2; bf16++)
            for (int sem = 0; sem < 2; sem++)
                for (int pad = 5; pad <= 8; pad += 3)
                    for (size_t i = 0; i < sizeof(k_patterns) / sizeof(k_patterns[0]); i++) {
                        int N = sizes[z][0], E = sizes[z][1], ldX = E + pad, parts = 1;
                        hax_model_config cfg;
                        for (const char *c = k_patterns[i]; *c; c++) parts += *c == '+';
                        set_cfg(&cfg, k_patterns[i], 8 * parts, N, E, h, 32, (hax_semantics)sem);
                        if (bf16) cfg.precision = PREC_BF16_PURE;
                        printf("    %s / %s%s, N %d, E %d, ldX %d\n", cfg.sparse_arch, sem ? "causal" : "reference",
                               bf16 ? " / bf16-pure" : "", N, E, ldX);
                        on_problem(&cfg, k_lens, K_NSEQ, L, ldX, bf16, check_variants);
                    }
}

// ---------------------------------------------------------------- new vs previous kernels of the other phases

// What one forward + backward leaves that the HAX_SPARSE_KS kernels make or
// feed (host copies, compared byte for byte): the buckets and projections,
// the lists (per row: count, keys), the LSH keys by bucket, the transposed
// lists (per key: count, offset, entries), the key selection's features,
// scores, picks, targets and loss, then attn, P, d score, dKQ, dX, dW_xx and
// the KS gradients. Empty where the pattern has no such thing.
#define N_KS_OUT 24
typedef struct {
    void *t[N_KS_OUT];
    size_t bytes[N_KS_OUT], elem[N_KS_OUT];
} ks_run;

static const char *k_ks_names[N_KS_OUT] = {
    "q bucket", "k bucket", "q proj", "k proj", "lists", "LSH keys", "transposed lists", "KS T", "KS score",
    "KS sel", "KS y", "gate loss", "attn", "P", "d score", "dKQ", "dX", "dW_xx", "d w1", "d b1", "d w2", "d b2",
    "d w3", "d b3"};

// A device array downloaded into r's slot i (n elements of size el).
static void ks_take(ks_run *r, int i, const void *d, size_t n, size_t el) {
    r->t[i] = down(d, n * el), r->bytes[i] = n * el, r->elem[i] = el;
}

// The lists as one host array: per row its count, then its keys.
static void ks_take_lists(ks_run *r, int i, const cu_sparse_state *gs, int n) {
    int *cnt = down(gs->allow_cnt, sizeof(int) * n), *key = down(gs->allow_key, sizeof(int) * (size_t)n * gs->row_cap);
    int *out = xmalloc(sizeof(int) * ((size_t)n * (gs->row_cap + 1) + 1));
    size_t k = 0;
    for (int g = 0; g < n; g++) {
        out[k++] = cnt[g];
        for (int e = 0; e < cnt[g] && e < gs->row_cap; e++) out[k++] = key[(size_t)g * gs->row_cap + e];
    }
    r->t[i] = out, r->bytes[i] = sizeof(int) * k, r->elem[i] = sizeof(int);
    free(cnt), free(key);
}

// The transposed lists as one host array: per key its count, offset, entries.
static void ks_take_trans(ks_run *r, int i, const cu_sparse_state *gs, int n) {
    int *cnt = down(gs->tr_cnt, sizeof(int) * n), *off = down(gs->tr_off, sizeof(int) * n);
    int *ent = down(gs->tr_ent, sizeof(int) * (size_t)n * gs->row_cap);
    int *out = xmalloc(sizeof(int) * ((size_t)n * (gs->row_cap + 2) + 1));
    size_t k = 0, total = (size_t)n * gs->row_cap;
    for (int j = 0; j < n; j++) {
        out[k++] = cnt[j], out[k++] = off[j];
        for (int e = 0; e < cnt[j] && (size_t)off[j] + e < total; e++) out[k++] = ent[off[j] + e];
    }
    r->t[i] = out, r->bytes[i] = sizeof(int) * k, r->elem[i] = sizeof(int);
    free(cnt), free(off), free(ent);
}

// One GPU forward + backward of problem p with the previous (ks_old = 1) or
// the new kernels of the non-attention phases, and the long-sequence kernels
// per long_mode (cu_sparse_state.long_mode); the outputs into r
// (free_ks_run), the device gradients reset after. training 0: an
// evaluation forward alone (no candidates, loss or backward; the backward's
// outputs left empty).
static void run_ks(ks_run *r, problem *p, cu_sparse_state *gs, int ks_old, int long_mode, int training,
                   float *d_attn) {
    int n = p->b.n_tok, N = p->N, E = p->E, ldX = p->ldX, n_seq = p->b.n_seq;
    unsigned m = gs->mask;
    ks_params dk = host_ks(p->d_kp);
    ks_grads dg = host_kg(p->d_kg);
    int was = gs->ks_old, was_long = gs->long_mode;
    memset(r, 0, sizeof(*r));
    gs->ks_old = ks_old, gs->long_mode = long_mode;
    cuda_sparse_forward(gs, p->d_off, n_seq, n, p->b.model_len, p->d_X, ldX, p->d_W, &dk, p->d_H,
                        training ? p->d_cand : NULL, training, d_attn, E);
    // the forward's outputs (the backward reuses some of the buffers)
    ks_take(r, 0, gs->q_bucket, n, sizeof(int32_t)), ks_take(r, 1, gs->k_bucket, n, sizeof(int32_t));
    ks_take(r, 2, gs->hq_proj, (size_t)n * gs->h, sizeof(float));
    ks_take(r, 3, gs->hk_proj, (size_t)n * gs->h, sizeof(float));
    if (!(m & SPARSE_FULL)) ks_take_lists(r, 4, gs, n);
    if (m & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) ks_take(r, 5, gs->lsh_sorted, n, sizeof(int64_t));
    const cuda_ks_state *ks = (const cuda_ks_state *)gs->ks;
    if (ks) {
        ks_take(r, 7, ks->T, (size_t)n * 2 * N, sizeof(float)), ks_take(r, 8, ks->score, n, sizeof(float));
        ks_take(r, 9, ks->sel, (size_t)n * ks->k_c, sizeof(int));
        ks_take(r, 10, ks->y, (size_t)n_seq * ks->k_c, sizeof(double));
    }
    ks_take(r, 11, gs->gate_loss, 1, sizeof(double));
    if (!training) {
        size_t cap = (size_t)n * gs->row_cap;
        ks_take(r, 12, d_attn, (size_t)n * E, sizeof(float)), ks_take(r, 13, gs->allow_p, cap, sizeof(float));
        gs->ks_old = was, gs->long_mode = was_long;
        return;
    }
    cuda_sparse_backward(gs, p->d_off, n_seq, n, p->d_dattn, E, 0.1f / n_seq, p->d_X, ldX, p->d_W, &dk, p->d_dX, ldX,
                         p->d_dW, &dg);
    cuda_sync();
    if (!(m & SPARSE_FULL)) ks_take_trans(r, 6, gs, n);
    size_t cap = (size_t)n * gs->row_cap;
    ks_take(r, 12, d_attn, (size_t)n * E, sizeof(float));
    ks_take(r, 13, gs->allow_p, cap, sizeof(float)), ks_take(r, 14, gs->allow_ds, cap, sizeof(float));
    ks_take(r, 15, gs->dKQ, (size_t)n * 2 * N, sizeof(float)), ks_take(r, 16, p->d_dX, (size_t)n * ldX, sizeof(float));
    ks_take(r, 17, p->d_dW, (size_t)2 * N * E, sizeof(float));
    for (int i = 0; i < 6; i++) ks_take(r, 18 + i, p->d_kg[i], kp_size(i, N), sizeof(float));
    cuda_upload(p->d_dX, p->dX0, sizeof(float) * n * ldX), cuda_upload(p->d_dW, p->dW0, sizeof(float) * 2 * N * E);
    for (int i = 0; i < 6; i++) cuda_upload(p->d_kg[i], p->kg0[i], sizeof(float) * kp_size(i, N));
    cuda_sync();
    gs->ks_old = was, gs->long_mode = was_long;
}

static void free_ks_run(ks_run *r) {
    for (int i = 0; i < N_KS_OUT; i++) free(r->t[i]);
}

// Two runs' outputs byte for byte: prints the count of differing elements
// of each output (-1: different lengths) and requires none.
static void compare_ks_runs(const char *what, const ks_run *a, const ks_run *b) {
    printf("      %s, differing elements:", what);
    long total = 0;
    for (int i = 0; i < N_KS_OUT; i++) {
        long bad = 0;
        if (a->bytes[i] != b->bytes[i]) {
            bad = -1;
        } else {
            const char *x = a->t[i], *y = b->t[i];
            for (size_t k = 0; k < a->bytes[i]; k += a->elem[i]) bad += memcmp(x + k, y + k, a->elem[i]) != 0;
        }
        if (a->bytes[i]) printf(" %s %ld,", k_ks_names[i], bad);
        total += bad != 0;
        CHECK(bad == 0, "%s: %s differs (%ld elements, -1: lengths %zu vs %zu bytes)", what, k_ks_names[i], bad,
              b->bytes[i], a->bytes[i]);
    }
    printf(" outputs differing %ld\n", total);
}

// The new kernels of the non-attention phases against the previous ones on
// one state: every output byte for byte. Prints the counts of differing
// elements.
static void check_ks_variants(problem *p, cu_sparse_state *gs) {
    float *d_attn = cuda_malloc(sizeof(float) * (size_t)p->b.n_tok * p->E);
    ks_run a, b;
    run_ks(&a, p, gs, 1, gs->long_mode, 1, d_attn);
    run_ks(&b, p, gs, 0, gs->long_mode, 1, d_attn);
    compare_ks_runs("new vs previous KS/LSH/list kernels", &a, &b);
    cuda_ks_state *ks = (cuda_ks_state *)gs->ks;
    if (ks) {  // the new kernels' other way to the targets (HAX_KS_TARGETS: warp / tile)
        ks_run c;
        int was = ks->targets_warp;
        ks->targets_warp = !was;
        run_ks(&c, p, gs, 0, gs->long_mode, 1, d_attn);
        ks->targets_warp = was;
        compare_ks_runs(was ? "targets by tiles vs previous kernels" : "targets by warps vs previous kernels", &a, &c);
        free_ks_run(&c);
    }
    free_ks_run(&a), free_ks_run(&b);
    cuda_free(d_attn);
}

// Every pattern, both semantics, fp32 and bf16-pure, at N 16 E 40, N 18
// and N 40 E 136 (the sizes of test_gather_variants): the new kernels of the
// non-attention phases equal the previous ones.
static void test_ks_variants(void) {
    int h = 4, L = 128, sizes[3][2] = {{16, 40}, {18, 40}, {40, 136}};
    for (int z = 0; z < 3; z++)
        for (int bf16 = 0; bf16 < 2; bf16++)
            for (int sem = 0; sem < 2; sem++)
                for (size_t i = 0; i < sizeof(k_patterns) / sizeof(k_patterns[0]); i++) {
                    int N = sizes[z][0], E = sizes[z][1], ldX = E + 5, parts = 1;
                    hax_model_config cfg;
                    for (const char *c = k_patterns[i]; *c; c++) parts += *c == '+';
                    set_cfg(&cfg, k_patterns[i], 8 * parts, N, E, h, 32, (hax_semantics)sem);
                    if (bf16) cfg.precision = PREC_BF16_PURE;
                    printf("    %s / %s%s, N %d, E %d\n", cfg.sparse_arch, sem ? "causal" : "reference",
                           bf16 ? " / bf16-pure" : "", N, E);
                    problem p;
                    make_problem(&p, k_lens, K_NSEQ, L, N, E, ldX, h, cfg.k_c > 0 ? cfg.k_c : 1, 1);
                    if (bf16) problem_to_bf16(&p);
                    cu_sparse_state *gs = cuda_sparse_state_alloc(&cfg, p.b.n_tok, p.b.n_seq, L);
                    gs->bf16 = bf16;
                    check_ks_variants(&p, gs);
                    cuda_sparse_state_free(gs);
                    free_problem(&p);
                }
}

// ---------------------------------------------------------------- long-sequence kernels (HAX_SPARSE_LONG)

// The long-sequence kernels (cu_sparse_state.long_mode 2) against the
// previous ones (long_mode 0) on one state, with both sets of the other
// phases' kernels (ks_old 0 and 1): a training forward + backward and an
// evaluation forward, every output byte for byte (compare_ks_runs: buckets,
// projections, lists, LSH keys by bucket, KS features, scores and
// selections, attn, P, and the backward's outputs); long_on must say which
// kernels ran.
static void check_long_variants(problem *p, cu_sparse_state *gs) {
    float *d_attn = cuda_malloc(sizeof(float) * (size_t)p->b.n_tok * p->E);
    for (int ks_old = 0; ks_old < 2; ks_old++)
        for (int training = 1; training >= 0; training--) {
            ks_run a, b;
            run_ks(&a, p, gs, ks_old, 0, training, d_attn);
            CHECK(gs->long_on == 0, "long_mode 0: the long-sequence kernels ran");
            run_ks(&b, p, gs, ks_old, 2, training, d_attn);
            CHECK(gs->long_on == 1, "long_mode 2: the long-sequence kernels did not run");
            char what[120];
            snprintf(what, sizeof what, "long vs previous kernels (%s, HAX_SPARSE_KS=%s)",
                     training ? "training fwd + bwd" : "evaluation fwd", ks_old ? "old" : "new");
            compare_ks_runs(what, &a, &b);
            free_ks_run(&a), free_ks_run(&b);
        }
    cuda_free(d_attn);
}

// The shapes of the long-kernel tests: tiny sequences (length 1, shorter than
// the top-k's 64-position chunk, around it, the counting sort's 256), the
// ragged batch of the other tests, then few long ones, ragged: 3 x 7000
// (7000, 6500, 3) and 2 x 20000 (20000, 19993).
static const int k_long_tiny[] = {1, 5, 63, 64, 65, 1, 130, 2, 257};
static const int k_long_3[] = {7000, 6500, 3};
static const int k_long_2[] = {20000, 19993};
typedef struct {
    const int *lens;
    int n_seq, longs;  // longs: the long shapes (fewer patterns and sizes)
} long_shape;
static const long_shape k_long_shapes[] = {
    {k_long_tiny, 9, 0}, {k_lens, K_NSEQ, 0}, {k_long_3, 3, 1}, {k_long_2, 2, 1}};
#define K_LONG_SHAPES ((int)(sizeof(k_long_shapes) / sizeof(k_long_shapes[0])))
// Patterns of the long shapes: those with LSH or key selection, the only
// users of the long kernels (`full` and the fixed patterns have neither).
static const char *k_long_patterns[] = {"sign_bin_lsh+key_selection", "sign_bin_lsh", "key_selection",
                                        "sink+dilated+argmax_lsh"};

static int max_len_of(const int *lens, int n_seq) {
    int L = 1;
    for (int s = 0; s < n_seq; s++) L = lens[s] > L ? lens[s] : L;
    return L;
}

// The config of a long-kernel case: keys per part 8 (tiny shapes) or 32
// (long ones: the paper's 32 + 32 of HAX), dilation from 32 or 2048.
static void long_cfg(hax_model_config *cfg, const char *pattern, int longs, int N, int E, int h, int sem,
                     int bf16) {
    int parts = 1;
    for (const char *c = pattern; *c; c++) parts += *c == '+';
    set_cfg(cfg, pattern, (longs ? 32 : 8) * parts, N, E, h, longs ? 2048 : 32, (hax_semantics)sem);
    if (bf16) cfg->precision = PREC_BF16_PURE;
}

// Every shape, both semantics, fp32 and bf16-pure: the long kernels equal
// the previous ones byte for byte (check_long_variants). Tiny shapes: every
// pattern at N 16 E 40 h 8, N 32 E 64 h 10 (1024 buckets: the counting
// sort's largest), N 40 E 136 h 4 (two feature columns per lane) and N 16
// h 11 (2048 buckets: the rank sort instead); long shapes: the LSH and KS
// patterns at N 16 h 8 and N 32 h 10.
static void test_long_variants(void) {
    int sizes[4][3] = {{16, 40, 8}, {32, 64, 10}, {40, 136, 4}, {16, 40, 11}};
    for (int sh = 0; sh < K_LONG_SHAPES; sh++) {
        const long_shape *ls = &k_long_shapes[sh];
        int L = max_len_of(ls->lens, ls->n_seq), n_pat = ls->longs ? 4 : (int)(sizeof(k_patterns) / sizeof(k_patterns[0]));
        for (int z = 0; z < (ls->longs ? 2 : 4); z++)
            for (int bf16 = 0; bf16 < 2; bf16++)
                for (int sem = 0; sem < 2; sem++)
                    for (int i = 0; i < n_pat; i++) {
                        const char *pat = ls->longs ? k_long_patterns[i] : k_patterns[i];
                        int N = sizes[z][0], E = sizes[z][1], h = sizes[z][2];
                        hax_model_config cfg;
                        long_cfg(&cfg, pat, ls->longs, N, E, h, sem, bf16);
                        printf("    %s / %s%s, N %d, E %d, h %d, %d sequences of at most %d\n", cfg.sparse_arch,
                               sem ? "causal" : "reference", bf16 ? " / bf16-pure" : "", N, E, h, ls->n_seq, L);
                        on_problem(&cfg, ls->lens, ls->n_seq, L, E + 5, bf16, check_long_variants);
                    }
    }
}

// Long sequences against the CPU (an evaluation forward, long_mode 2):
// buckets and the LSH keys by bucket equal the CPU's; the KS features within
// 1e-6 (fp32: the GPU's chunked double sums; bf16-pure: bf16 steps), and the
// selections EXACTLY the CPU's cumulative top-k of the GPU's own scores (the
// GPU's MLP sums in another order, so near-equal scores may order apart);
// the allowed lists exactly the CPU's union built from those selections,
// and attn within 1e-5 (bf16-pure: at most 3% of the elements a bf16 step
// apart, 2% more) of the CPU's attention over them.
static void check_long_cpu(problem *p, const hax_model_config *cfg, int max_len) {
    int n = p->b.n_tok, N = p->N, E = p->E, ldX = p->ldX, n_seq = p->b.n_seq, bf16 = cfg->precision == PREC_BF16_PURE;
    int ks_on = sparse_pattern_has(cfg->sparse_mask, SPF_KS_WEIGHTS), lsh = sparse_pattern_has(cfg->sparse_mask, SPF_LSH);
    printf("    %s / %s%s: %d sequences, %d positions\n", cfg->sparse_arch,
           cfg->semantics == SEMANTICS_REFERENCE ? "reference" : "causal", bf16 ? " / bf16-pure" : "", n_seq, n);
    hax_sparse_state *cs = sparse_state_alloc(cfg, n, n_seq, max_len);
    cu_sparse_state *gs = cuda_sparse_state_alloc(cfg, n, n_seq, max_len);
    gs->bf16 = bf16, gs->long_mode = 2;
    ks_params hk = host_ks(p->kp), dk = host_ks(p->d_kp);
    float *attn = xcalloc((size_t)n * E, sizeof(float)), *d_attn = cuda_malloc(sizeof(float) * n * E);
    sparse_forward(cs, cfg, &p->b, p->X, ldX, p->W, &hk, p->H, NULL, 0, attn, E);
    cuda_sparse_forward(gs, p->d_off, n_seq, n, p->b.model_len, p->d_X, ldX, p->d_W, &dk, p->d_H, NULL, 0, d_attn, E);
    cuda_sync();
    CHECK(gs->long_on, "long_mode 2: the long-sequence kernels did not run");
    int bq = bucket_mismatches(cs->q_bucket, gs->q_bucket, n), bk = bucket_mismatches(cs->k_bucket, gs->k_bucket, n);
    long srt_bad = 0;
    if (lsh) {
        int64_t *g = down(gs->lsh_sorted, sizeof(int64_t) * n);
        for (int i = 0; i < n; i++) srt_bad += g[i] != cs->lsh_sorted[i];
        free(g);
    }
    printf("      buckets differing: %d query, %d key; LSH keys by bucket differing: %ld\n", bq, bk, srt_bad);
    CHECK(bq == 0 && bk == 0 && srt_bad == 0, "long kernels: LSH differs from the CPU's");
    if (ks_on) {
        const cuda_ks_state *ks = (const cuda_ks_state *)gs->ks;
        int k = ks->k_c;
        float *score = down(ks->score, sizeof(float) * n), *T = down(ks->T, sizeof(float) * n * 2 * N);
        int *sel = down(ks->sel, sizeof(int) * (size_t)n * k), *want = xmalloc(sizeof(int) * (size_t)n * k);
        if (bf16) check_bf16_close("KS features", T, cs->ks->T, (size_t)n * 2 * N, 1e-3, 1e-3);
        else {
            double err = rel_err(T, cs->ks->T, (size_t)n * 2 * N);
            printf("      %-12s rel err %.2e\n", "KS features", err);
            CHECK(err <= 1e-6, "long kernels: KS features relative error %.3e above 1e-6", err);
        }
        ks_cumtopk(want, score, p->b.seq_off, n_seq, k);
        long bad = 0;
        for (size_t i = 0; i < (size_t)n * k; i++) bad += sel[i] != want[i];
        printf("      KS selections differing from the CPU's top-k of the GPU's scores: %ld of %zu\n", bad,
               (size_t)n * k);
        CHECK(bad == 0, "long kernels: %ld KS selections differ", bad);
        memcpy(cs->ks->sel, sel, sizeof(int) * (size_t)n * k);  // the CPU's lists and attention from them
        cs->has_empty = sparse_build_union(cs, cfg, p->b.seq_off, n_seq);
        sparse_attn_forward(cs, p->X, ldX, p->b.seq_off, n_seq, p->b.model_len, cfg->semantics, attn, E);
        free(score), free(T), free(sel), free(want);
    }
    int bad = list_mismatches(cs, gs, n);
    printf("      lists: %d rows, %d differ\n", n, bad);
    CHECK(bad == 0, "long kernels: %d allowed lists differ", bad);
    float *ga = down(d_attn, sizeof(float) * n * E);
    if (bf16) check_bf16_close("attn", ga, attn, (size_t)n * E, 0.03, 0.02);
    else cmp("attn", d_attn, attn, NULL, (size_t)n * E, TOL_FWD);
    free(ga), free(attn);
    cuda_free(d_attn);
    sparse_state_free(cs);
    cuda_sparse_state_free(gs);
}

static void lsh_exact_at(int bf16, const int *lens, int n_seq, int L, int long_mode);

// Against the CPU with the long kernels: test_patterns and
// test_patterns_bf16 again (every pattern, both semantics, forward and
// backward: check_pattern, check_pattern_bf16), then every shape through
// check_long_cpu (the LSH and KS patterns, both semantics, fp32 and
// bf16-pure, N 32 E 64 h 8), and the LSH on unrounded data (lsh_exact) at
// 3 x 7000.
static void test_long_cpu(void) {
    g_long_mode = 2;
    test_patterns();
    test_patterns_bf16();
    g_long_mode = -1;
    for (int sh = 0; sh < K_LONG_SHAPES; sh++)
        for (int bf16 = 0; bf16 < 2; bf16++)
            for (int sem = 0; sem < 2; sem++)
                for (int i = 0; i < 4; i++) {
                    const long_shape *ls = &k_long_shapes[sh];
                    int L = max_len_of(ls->lens, ls->n_seq);
                    hax_model_config cfg;
                    long_cfg(&cfg, k_long_patterns[i], ls->longs, 32, 64, 8, sem, bf16);
                    problem p;
                    make_problem(&p, ls->lens, ls->n_seq, L, 32, 64, 64, 8, cfg.k_c, 1);
                    if (bf16) problem_to_bf16(&p);
                    check_long_cpu(&p, &cfg, L);
                    free_problem(&p);
                }
    for (int bf16 = 0; bf16 < 2; bf16++) lsh_exact_at(bf16, k_long_3, 3, 7000, 2);
}

// Unrounded data: the GPU's buckets must equal the CPU hash of the GPU's KQ.
// bf16-pure (bf16 = 1): the same with the bf16 statistics and projections
// (reference semantics) on bf16 inputs. Sequences lens [n_seq] padded to L;
// long_mode the state's cu_sparse_state.long_mode (-1: as allocated, from
// HAX_SPARSE_LONG).
static void lsh_exact_at(int bf16, const int *lens, int n_seq, int L, int long_mode) {
    int N = 32, E = 64, h = 8;
    const char *pats[2] = {"sign_bin_lsh", "argmax_lsh"};
    for (int sem = 0; sem < 2; sem++)
        for (int a = 0; a < 2; a++) {
            hax_model_config cfg;
            set_cfg(&cfg, pats[a], 8, N, E, h, 64, (hax_semantics)sem);
            problem p;
            make_problem(&p, lens, n_seq, L, N, E, E, h, cfg.k_c, 0);
            if (bf16) problem_to_bf16(&p);
            int n = p.b.n_tok;
            cu_sparse_state *gs = cuda_sparse_state_alloc(&cfg, n, n_seq, L);
            gs->bf16 = bf16;
            if (long_mode >= 0) gs->long_mode = long_mode;
            float *d_attn = cuda_malloc(sizeof(float) * n * E);
            cuda_sparse_forward(gs, p.d_off, n_seq, n, L, p.d_X, E, p.d_W, NULL, p.d_H, NULL, 0, d_attn, E);
            float *KQ = down(gs->KQ, sizeof(float) * n * 2 * N);
            int32_t *qb = xmalloc(sizeof(int32_t) * n), *kb = xmalloc(sizeof(int32_t) * n);
            float *pq = xmalloc(sizeof(float) * n * h), *pk = xmalloc(sizeof(float) * n * h);
            sparse_lsh_hash(qb, pq, KQ + N, 2 * N, N, p.H, h, a, p.b.seq_off, n_seq, L, (hax_semantics)sem, bf16);
            sparse_lsh_hash(kb, pk, KQ, 2 * N, N, p.H, h, a, p.b.seq_off, n_seq, L, (hax_semantics)sem, bf16);
            int bad = bucket_mismatches(qb, gs->q_bucket, n) + bucket_mismatches(kb, gs->k_bucket, n);
            float *gq = down(gs->hq_proj, sizeof(float) * n * h);
            int pbad = memcmp(gq, pq, sizeof(float) * n * h) != 0;
            printf("    %s / %s%s%s: %d positions, %d bucket mismatches, projections %s\n", pats[a],
                   sem ? "causal" : "reference", bf16 ? " / bf16-pure" : "", gs->long_on ? " / long kernels" : "", n, bad,
                   pbad ? "DIFFER" : "bit-identical");
            CHECK(bad == 0 && !pbad, "%s: LSH on the GPU's KQ differs from the CPU's", pats[a]);
            free(KQ), free(qb), free(kb), free(pq), free(pk), free(gq);
            cuda_free(d_attn);
            cuda_sparse_state_free(gs);
            free_problem(&p);
        }
}

static void lsh_exact(int bf16) { lsh_exact_at(bf16, k_lens, K_NSEQ, 128, -1); }

static void test_lsh_exact(void) { lsh_exact(0); }
static void test_lsh_exact_bf16(void) { lsh_exact(1); }

// The branch's random inputs drawn on the device: the hash matrices equal
// the host's rng_normal_portable draws bit for bit (and libm's rng_normal
// after the float rounding, counted), plain and bf16-rounded; the candidates
// equal ks_sample_candidates, padding rows -1.
static void test_device_draws(void) {
    struct { uint64_t seed; uint32_t domain, a, b; int n; } cases[] = {
        {7, RNG_LSH, 3, 1, 16 * 8}, {0x123456789abcdefull, RNG_LSH, 4000000000u, 0, 128 * 30},
        {42, RNG_LSH_EVAL, 0, 5, 1 << 20}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
        for (int bf16 = 0; bf16 < 2; bf16++) {
            int n = cases[c].n;
            float *host = xmalloc(sizeof(float) * n), *d_H = cuda_malloc(sizeof(float) * n);
            hax_rng r, r2;
            rng_init(&r, cases[c].seed, cases[c].domain, cases[c].a, cases[c].b, 0);
            rng_init(&r2, cases[c].seed, cases[c].domain, cases[c].a, cases[c].b, 0);
            long libm_diff = 0;
            for (int i = 0; i < n; i++) {
                float h = (float)rng_normal_portable(&r), hl = (float)rng_normal(&r2);
                libm_diff += h != hl;
                host[i] = bf16 ? hax_bf16_round(h) : h;
            }
            cuda_lsh_draw_hash(d_H, n, cases[c].seed, cases[c].domain, cases[c].a, cases[c].b, bf16);
            float *g = down(d_H, sizeof(float) * n);
            long bad = 0;
            for (int i = 0; i < n; i++) bad += memcmp(&g[i], &host[i], sizeof(float)) != 0;
            printf("    hash draw %zu%s: %d entries, %ld differ from the host (%ld floats differ from libm's)\n", c,
                   bf16 ? " bf16" : "", n, bad, libm_diff);
            CHECK(bad == 0, "hash draw %zu: %ld of %d entries differ from the host's", c, bad, n);
            free(host), free(g), cuda_free(d_H);
        }
    // candidates of 10 sequences run as 12 (two padding rows)
    hax_model_config cfg;
    set_cfg(&cfg, "key_selection", 8, 16, 40, 4, 32, SEMANTICS_REFERENCE);
    problem p;
    make_problem(&p, k_lens, K_NSEQ, 128, 16, 40, 40, 4, cfg.k_c, 1);
    int pad = 2, kc = cfg.k_c, rows = K_NSEQ + pad;
    cu_sparse_state *gs = cuda_sparse_state_alloc(&cfg, p.b.n_tok + 4, rows, 128);
    int *cand = xmalloc(sizeof(int) * rows * kc), *d_cand = cuda_malloc(sizeof(int) * rows * kc);
    for (int i = 0; i < rows * kc; i++) cand[i] = -1;
    ks_sample_candidates(cand, p.b.seq_off, K_NSEQ, p.b.sample_idx, kc, 0xfeedull << 32, 9, 1);
    cuda_sparse_draw_candidates(gs, d_cand, p.d_off, K_NSEQ, rows, p.b.sample_idx, 0xfeedull << 32, 9, 1);
    int *g = down(d_cand, sizeof(int) * rows * kc), bad = 0;
    for (int i = 0; i < rows * kc; i++) bad += g[i] != cand[i];
    printf("    candidates: %d of %d entries differ\n", bad, rows * kc);
    CHECK(bad == 0, "device candidates: %d entries differ", bad);
    free(cand), free(g), cuda_free(d_cand);
    cuda_sparse_state_free(gs);
    free_problem(&p);
}

// The phases the HAX_SPARSE_KS kernels serve (pass 0: forward, 1: backward).
static int ks_phase(int pass, const char *nm) {
    if (pass == 0)
        return !strcmp(nm, "KQ projection") || !strcmp(nm, "LSH buckets") || !strcmp(nm, "key selection") ||
               !strcmp(nm, "allowed lists");
    return !strcmp(nm, "transposed lists") || !strcmp(nm, "KQ backward") || !strcmp(nm, "key selection");
}

// The GPU's forward and backward of problem p with the attention gathers
// attn_old and the other phases' kernels ks_old (1: the previous ones): the
// mean times of `reps` calls, then the phases (cu_sparse_state.timing),
// mean of `reps` forward + backward pairs, as lines "PHASE <label> fwd|bwd
// <phase> <ms>". Returns the times in t: forward, backward, the three
// attention gathers (phases attention, attention dQ, attention dK dV), and
// the phases of ks_phase.
static void time_gpu(double t[4], problem *p, cu_sparse_state *gs, float *d_attn, const char *label, int attn_old,
                     int tiles, int ks_old) {
    int reps = 10, n = p->b.n_tok, n_seq = p->b.n_seq, L = p->b.model_len, E = p->E;
    ks_params dk = host_ks(p->d_kp);
    ks_grads dg = host_kg(p->d_kg);
    int was = gs->attn_old, was_ks = gs->ks_old, was_tiles = gs->tiles;
    gs->attn_old = attn_old, gs->ks_old = ks_old, gs->tiles = tiles;
    int e0 = cuda_event_record();
    for (int r = 0; r < reps; r++)
        cuda_sparse_forward(gs, p->d_off, n_seq, n, L, p->d_X, E, p->d_W, &dk, p->d_H, p->d_cand, 1, d_attn, E);
    int e1 = cuda_event_record();
    for (int r = 0; r < reps; r++)
        cuda_sparse_backward(gs, p->d_off, n_seq, n, p->d_dattn, E, 0.1f / n_seq, p->d_X, E, p->d_W, &dk, p->d_dX, E,
                             p->d_dW, &dg);
    int e2 = cuda_event_record();
    t[0] = cuda_event_ms(e0, e1) / reps, t[1] = cuda_event_ms(e1, e2) / reps, t[2] = 0, t[3] = 0;
    double ph[2][CU_SP_MAX_EV] = {{0}};
    const char *names[2][CU_SP_MAX_EV] = {{0}};
    int n_ph[2] = {0, 0};
    gs->timing = 1;
    for (int r = 0; r < reps; r++)
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 0)
                cuda_sparse_forward(gs, p->d_off, n_seq, n, L, p->d_X, E, p->d_W, &dk, p->d_H, p->d_cand, 1, d_attn,
                                    E);
            else
                cuda_sparse_backward(gs, p->d_off, n_seq, n, p->d_dattn, E, 0.1f / n_seq, p->d_X, E, p->d_W, &dk,
                                     p->d_dX, E, p->d_dW, &dg);
            n_ph[pass] = gs->n_ev;
            for (int i = 1; i < gs->n_ev; i++)
                names[pass][i] = gs->ev_name[i], ph[pass][i] += cuda_event_ms(gs->ev[i - 1], gs->ev[i]) / reps;
        }
    gs->timing = 0, gs->attn_old = was, gs->ks_old = was_ks, gs->tiles = was_tiles;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 1; i < n_ph[pass]; i++) {
            printf("      PHASE %s %s %-18s %.3f ms\n", label, pass ? "bwd" : "fwd", names[pass][i], ph[pass][i]);
            const char *nm = names[pass][i];
            if (!strcmp(nm, pass ? "attention dQ" : "attention") || (pass && !strcmp(nm, "attention dK dV")))
                t[2] += ph[pass][i];
            if (ks_phase(pass, nm)) t[3] += ph[pass][i];
        }
}

// Paper size: CPU vs GPU time of forward + backward, results compared.
static void time_paper(int N, const char *pattern, hax_semantics sem) {
    int n_seq = 64, E = 128, h = 8, lens[64], L = 0;
    for (int s = 0; s < n_seq; s++) lens[s] = 400 + (int)((s * 37u) % 129), L = lens[s] > L ? lens[s] : L;
    hax_model_config cfg;
    set_cfg(&cfg, pattern, 64, N, E, h, 2048, sem);
    problem p;
    make_problem(&p, lens, n_seq, L, N, E, E, h, cfg.k_c, 1);
    int n = p.b.n_tok;
    printf("    %s / %s, N %d: %d sequences, %d positions, E %d, k %d\n", pattern,
           sem == SEMANTICS_REFERENCE ? "reference" : "causal", N, n_seq, n, E, cfg.sparse_keys);
    hax_sparse_state *cs = sparse_state_alloc(&cfg, n, n_seq, L);
    cu_sparse_state *gs = cuda_sparse_state_alloc(&cfg, n, n_seq, L);
    ks_params hk = host_ks(p.kp), dk = host_ks(p.d_kp);
    float *attn = xmalloc(sizeof(float) * n * E), *d_attn = cuda_malloc(sizeof(float) * n * E);
    float *dX = xmalloc(sizeof(float) * n * E), *dW = xmalloc(sizeof(float) * 2 * N * E), *kg[6];
    memcpy(dX, p.dX0, sizeof(float) * n * E), memcpy(dW, p.dW0, sizeof(float) * 2 * N * E);
    for (int i = 0; i < 6; i++) kg[i] = xmalloc(sizeof(float) * kp_size(i, N)), memcpy(kg[i], p.kg0[i], sizeof(float) * kp_size(i, N));
    ks_grads hg = host_kg(kg), dg = host_kg(p.d_kg);
    double t0 = hax_now();
    sparse_forward(cs, &cfg, &p.b, p.X, E, p.W, &hk, p.H, p.cand, 1, attn, E);
    double t1 = hax_now();
    sparse_backward(cs, &cfg, &p.b, p.dattn, E, 0.1f / n_seq, p.X, E, p.W, &hk, dX, E, dW, &hg);
    double t2 = hax_now();
    // GPU: once for the comparison, then timed repeats
    cuda_sparse_forward(gs, p.d_off, n_seq, n, L, p.d_X, E, p.d_W, &dk, p.d_H, p.d_cand, 1, d_attn, E);
    cuda_sparse_backward(gs, p.d_off, n_seq, n, p.d_dattn, E, 0.1f / n_seq, p.d_X, E, p.d_W, &dk, p.d_dX, E,
                         p.d_dW, &dg);
    cuda_sync();
    int bad = list_mismatches(cs, gs, n), empty = 0;
    for (int g = 0; g < n; g++) empty += cs->allow_off[g + 1] == cs->allow_off[g];
    printf("      lists differing: %d of %d rows (%d empty rows)\n", bad, n, empty);
    if (!(cfg.sparse_mask & SPARSE_KEY_SELECTION)) CHECK(bad == 0, "paper size: %d lists differ", bad);
    cmp("attn", d_attn, attn, NULL, (size_t)n * E, bad ? 1e-2 : TOL_FWD);
    cmp("dX", p.d_dX, dX, p.dX0, (size_t)n * E, bad ? 1e-2 : TOL_BWD);
    cmp("dW_xx", p.d_dW, dW, p.dW0, (size_t)2 * N * E, bad ? 1e-2 : TOL_BWD);
    cuda_upload(p.d_dX, p.dX0, sizeof(float) * n * E), cuda_upload(p.d_dW, p.dW0, sizeof(float) * 2 * N * E);
    for (int i = 0; i < 6; i++) cuda_upload(p.d_kg[i], p.kg0[i], sizeof(float) * kp_size(i, N));
    check_variants(&p, gs);
    check_ks_variants(&p, gs);
    double t[3][4], tk[2][4];  // [new, old, all tiles][fwd, bwd, gathers, KS phases]
    for (int old = 0; old < 2; old++) time_gpu(t[old], &p, gs, d_attn, old ? "old" : "new", old, 0, gs->ks_old);
    time_gpu(t[2], &p, gs, d_attn, "tile", gs->attn_old, 7, gs->ks_old);
    for (int old = 0; old < 2; old++)
        time_gpu(tk[old], &p, gs, d_attn, old ? "ks-old" : "ks-new", gs->attn_old, gs->tiles, old);
    printf("      CPU fwd %.1f ms, bwd %.1f ms | GPU fwd %.3f ms, bwd %.3f ms (bwd timed after a forward; previous "
           "gathers: fwd %.3f ms, bwd %.3f ms)\n", (t1 - t0) * 1e3, (t2 - t1) * 1e3, t[0][0], t[0][1], t[1][0], t[1][1]);
    printf("      GATHERS new %.3f ms, old %.3f ms (fwd attention + bwd attention dQ + attention dK dV): %.2fx\n",
           t[0][2], t[1][2], t[0][2] > 0 ? t[1][2] / t[0][2] : 0.0);
    printf("      GATHERS tile %.3f ms (HAX_SPARSE_ATTN's default with HAX_SPARSE_TILES=all), whole bwd %.3f ms\n",
           t[2][2], t[2][1]);
    printf("      KS PHASES new %.3f ms, old %.3f ms (fwd KQ projection + LSH buckets + key selection + allowed lists, "
           "bwd transposed lists + KQ backward + key selection): %.2fx; whole fwd + bwd new %.3f ms, old %.3f ms\n",
           tk[0][3], tk[1][3], tk[0][3] > 0 ? tk[1][3] / tk[0][3] : 0.0, tk[0][0] + tk[0][1], tk[1][0] + tk[1][1]);
    for (int i = 0; i < 6; i++) free(kg[i]);
    free(attn), free(dX), free(dW);
    cuda_free(d_attn);
    sparse_state_free(cs);
    cuda_sparse_state_free(gs);
    free_problem(&p);
}

// The eval forward of problem p on state gs with long_mode (0: the previous
// kernels, 2: the long-sequence ones), timed: the mean of reps calls, then
// per phase (cu_sparse_state.timing). Prints "LPHASE <label> <n_seq>x<len>
// <phase> <ms>" lines; returns the total and fills ph / names / *n_ph.
static double time_eval_forward(problem *p, cu_sparse_state *gs, float *d_attn, int long_mode, const char *label,
                                int len, double *ph, const char **names, int *n_ph) {
    int n = p->b.n_tok, n_seq = p->b.n_seq, E = p->E, reps = 5;
    ks_params dk = host_ks(p->d_kp);
    gs->long_mode = long_mode;
    cuda_sparse_forward(gs, p->d_off, n_seq, n, len, p->d_X, E, p->d_W, &dk, p->d_H, NULL, 0, d_attn, E);  // warm-up
    cuda_sync();
    int e0 = cuda_event_record();
    for (int r = 0; r < reps; r++)
        cuda_sparse_forward(gs, p->d_off, n_seq, n, len, p->d_X, E, p->d_W, &dk, p->d_H, NULL, 0, d_attn, E);
    int e1 = cuda_event_record();
    double total = cuda_event_ms(e0, e1) / reps;
    for (int i = 0; i < CU_SP_MAX_EV; i++) ph[i] = 0, names[i] = NULL;
    gs->timing = 1;
    for (int r = 0; r < reps; r++) {
        cuda_sparse_forward(gs, p->d_off, n_seq, n, len, p->d_X, E, p->d_W, &dk, p->d_H, NULL, 0, d_attn, E);
        *n_ph = gs->n_ev;
        for (int i = 1; i < gs->n_ev; i++)
            names[i] = gs->ev_name[i], ph[i] += cuda_event_ms(gs->ev[i - 1], gs->ev[i]) / reps;
    }
    gs->timing = 0;
    CHECK(gs->long_on == (long_mode == 2), "%s: long_on %d with long_mode %d", label, gs->long_on, long_mode);
    for (int i = 1; i < *n_ph; i++) printf("      LPHASE %s %dx%d %-18s %.3f ms\n", label, n_seq, len, names[i], ph[i]);
    return total;
}

// Long sequences (issue 14: hax-eval's cost per token at 1K..64K tokens per
// sample): the GPU forward of Mamba-2+HAX's branch (N 32, E 128, h 8, k 64,
// evaluation: training 0) at each "N_SEQxLEN" of spec, e.g.
// "256x1024,64x4096,16x16384,4x65536" (the same tokens per batch), timed per
// phase with the previous kernels (`old`) and the long-sequence ones (`new`,
// HAX_SPARSE_LONG=all), whose outputs must equal the previous ones byte for
// byte (buckets, lists, LSH keys, KS features, scores, selections, attn, P).
// No CPU comparison (a 64K CPU forward takes minutes).
static void time_lengths(const char *spec, int N) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int n_seq = 0, len = 0;
        if (sscanf(tok, "%dx%d", &n_seq, &len) != 2 || n_seq < 1 || len < 2)
            hax_die("gpu_sparse --lengths: expected N_SEQxLEN (for example 4x65536), found \"%s\"", tok);
        int E = 128, h = 8, *lens = xmalloc(sizeof(int) * n_seq);
        for (int s = 0; s < n_seq; s++) lens[s] = len;
        hax_model_config cfg;
        set_cfg(&cfg, "sign_bin_lsh+key_selection", 64, N, E, h, 2048, SEMANTICS_REFERENCE);
        problem p;
        make_problem(&p, lens, n_seq, len, N, E, E, h, cfg.k_c, 1);
        int n = p.b.n_tok;
        cu_sparse_state *gs = cuda_sparse_state_alloc(&cfg, n, n_seq, len);
        float *d_attn = cuda_malloc(sizeof(float) * n * E);
        double ph[2][CU_SP_MAX_EV], total[2];
        const char *names[2][CU_SP_MAX_EV];
        int n_ph[2] = {0, 0};
        for (int v = 0; v < 2; v++) {
            total[v] = time_eval_forward(&p, gs, d_attn, v ? 2 : 0, v ? "new" : "old", len, ph[v], names[v], &n_ph[v]);
            printf("    LENGTH %s %d x %d (%d tokens), N %d: eval forward %.3f ms, %.1f ns per token\n", v ? "new" : "old",
                   n_seq, len, n, N, total[v], total[v] * 1e6 / n);
        }
        printf("    LONG %dx%d old %.3f ms, new %.3f ms: %.2fx;", n_seq, len, total[0], total[1],
               total[1] > 0 ? total[0] / total[1] : 0.0);
        for (int i = 1; i < n_ph[0] && i < n_ph[1]; i++)
            if (names[0][i] && names[1][i] && !strcmp(names[0][i], names[1][i]))
                printf(" %s %.3f -> %.3f,", names[0][i], ph[0][i], ph[1][i]);
        printf("\n");
        ks_run a, b;  // the same outputs
        run_ks(&a, &p, gs, gs->ks_old, 0, 0, d_attn);
        run_ks(&b, &p, gs, gs->ks_old, 2, 0, d_attn);
        compare_ks_runs("long vs previous kernels (evaluation fwd)", &a, &b);
        free_ks_run(&a), free_ks_run(&b);
        cuda_free(d_attn);
        cuda_sparse_state_free(gs);
        free_problem(&p);
        free(lens);
    }
}

static const char *g_lengths;  // --lengths SPEC [N]
static int g_lengths_n;
static void test_lengths(void) { time_lengths(g_lengths, g_lengths_n); }

// HAX, window+sink and full; then the single patterns with empty rows (the
// Table 1 LSH-only and dilated-only models, issue 11) in both semantics, at
// Mamba's N 16 and Mamba-2's N 32.
static void test_paper(void) {
    time_paper(16, "sign_bin_lsh+key_selection", SEMANTICS_REFERENCE);
    time_paper(32, "sign_bin_lsh+key_selection", SEMANTICS_REFERENCE);
    time_paper(16, "sliding_window+sink", SEMANTICS_REFERENCE);
    time_paper(16, "full", SEMANTICS_REFERENCE);
    const char *single[] = {"sign_bin_lsh", "dilated"};
    for (int i = 0; i < 2; i++)
        for (int N = 16; N <= 32; N += 16)
            for (int sem = 0; sem < 2; sem++) time_paper(N, single[i], (hax_semantics)sem);
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    cuda_init(0);
    printf("device: %s\n", cuda_device_name());
    if (argc > 2 && strcmp(argv[1], "--lengths") == 0) {  // timings, old vs long kernels (issue 14)
        g_lengths = argv[2], g_lengths_n = argc > 3 ? atoi(argv[3]) : 32;
        RUN(test_lengths);
        return test_summary();
    }
    RUN(test_patterns);
    RUN(test_patterns_bf16);
    RUN(test_gather_variants);
    RUN(test_ks_variants);
    RUN(test_long_variants);
    RUN(test_long_cpu);
    RUN(test_lsh_exact);
    RUN(test_lsh_exact_bf16);
    RUN(test_device_draws);
    if (!quick) RUN(test_paper);
    return test_summary();
}
