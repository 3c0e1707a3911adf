// src/engine/cpu.c: the CPU backend: host memory and the src/ops and
// src/sparse kernels in the op table of ops.h (thin wrappers where the
// table's signature, the CUDA ops', differs). The model itself runs in the
// shared engine (engine.c, mixer*.c); weights and gradients are model->data
// and model->grad (backward adds into it).
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/core/rng.h"
#include "src/core/scalar.h"
#include "src/engine/internal.h"
#include "src/ops/basic.h"
#include "src/ops/conv.h"
#include "src/ops/gate.h"
#include "src/ops/linear.h"
#include "src/ops/scan.h"
#include "src/ops/ssd.h"
#include "src/sparse/sparse.h"

// ---------------------------------------------------------------- memory

static void *cpu_alloc(size_t bytes) { return xmalloc(bytes ? bytes : 1); }
static void cpu_free(void *p) { free(p); }
static void cpu_zero(void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}
static void cpu_zero_rows(float *p, int ld, int width, int rows) {
    for (int t = 0; t < rows; t++) memset(p + (size_t)t * ld, 0, sizeof(float) * width);
}
static void cpu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
}
static void cpu_sync(void) {}

static size_t cpu_work_bytes(const hax_model *m, int n_tok, int n_seq) {
    (void)n_seq;
    const hax_model_config *cfg = &m->cfg;
    if (!arch_has_mlp(cfg) && !arch_info(cfg->arch)->attn_every) return 0;
    size_t a = attn_bwd_floats(cfg, n_tok), b = mlp_bwd_floats(n_tok, cfg->hidden_size, cfg->mlp_hidden);
    return sizeof(float) * (a > b ? a : b);  // the attention / MLP backward scratch
}

static size_t cpu_scan_ckpt_floats(int n_tok, int n_seq, int E, int N) { return scan_ckpt_floats(n_tok, n_seq, E, N); }

// ---------------------------------------------------------------- wrappers

static void cpu_embedding_backward(float *dW_emb, const float *dout, const int32_t *ids, int n_tok, int d, int V,
                                   void *work) {
    (void)V, (void)work;
    embedding_backward(dW_emb, dout, ids, n_tok, d);
}

static void cpu_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *rstd,
                                 const float *w, int n, int d, void *work) {
    (void)work;
    rmsnorm_backward(dx, dw, dout, x, rstd, w, n, d);
}

static void cpu_add_rmsnorm_backward(float *dx, float *dresidual, float *dw, const float *dout, const float *ds,
                                     const float *s, const float *rstd, const float *w, int n, int d, void *work) {
    (void)work;
    add_rmsnorm_backward(dx, dresidual, dw, dout, ds, s, rstd, w, n, d);
}

static void cpu_add(float *out, const float *a, const float *b, long n) {
    for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void cpu_ce_forward(double *loss, int *correct, int *count, const float *logits, const int32_t *labels,
                           const uint8_t *mask, const int *seq_off, int n_seq, int n_tok, int V, void *work) {
    (void)n_tok, (void)work;
    *loss = ce_forward(logits, labels, mask, seq_off, n_seq, V, correct, count);
}

static void cpu_ce_backward_bf16(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask,
                                 int n_tok, int V, float scale, const float *scale_dev) {
    ce_backward_bf16(dlogits, logits, labels, mask, n_tok, V, scale_dev ? *scale_dev : scale);
}

static void cpu_conv_silu_forward(float *out, float *pre, const float *inp, int ld_inp, const float *w,
                                  const float *b, const int *seq_off, int n_seq, int n_tok, int C, int K) {
    (void)n_tok;
    conv_silu_forward(out, pre, inp, ld_inp, w, b, seq_off, n_seq, C, K);
}

static void cpu_conv_silu_backward(float *dinp, int ld_dinp, float *dw, float *db, const float *dout,
                                   const float *pre, const float *inp, int ld_inp, const float *w,
                                   const int *seq_off, int n_seq, int n_tok, int C, int K, void *work) {
    (void)n_tok, (void)work;
    conv_silu_backward(dinp, ld_dinp, dw, db, dout, pre, inp, ld_inp, w, seq_off, n_seq, C, K);
}

static void cpu_scan_forward(float *y, float *ckpt, const float *x, int ld_x, const float *draw,
                             const float *dt_bias, const float *A_log, const float *Bm, const float *Cm, int ld_bc,
                             const float *D, const int *seq_off, int n_seq, int n_tok, int E, int N) {
    (void)n_tok;
    scan_forward(y, ckpt, x, ld_x, draw, dt_bias, A_log, Bm, Cm, ld_bc, D, seq_off, n_seq, E, N);
}

static void cpu_scan_backward(float *dx, int ld_dx, float *ddraw, float *dBm, float *dCm, int ld_dbc,
                              float *ddt_bias, float *dA_log, float *dD, const float *dy, const float *ckpt,
                              const float *x, int ld_x, const float *draw, const float *dt_bias, const float *A_log,
                              const float *Bm, const float *Cm, int ld_bc, const float *D, const int *seq_off,
                              int n_seq, int n_tok, int E, int N, void *work) {
    (void)n_tok, (void)work;
    scan_backward(dx, ld_dx, ddraw, dBm, dCm, ld_dbc, ddt_bias, dA_log, dD, dy, ckpt, x, ld_x, draw, dt_bias, A_log,
                  Bm, Cm, ld_bc, D, seq_off, n_seq, E, N);
}

static void cpu_ssd_forward(float *y, int ld_y, float *delta, float *ckpt, const float *x, int ld_x,
                            const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                            const float *dt_bias, const float *A_log, const float *D, const int *seq_off, int n_seq,
                            int n_tok, int H, int P, int N) {
    (void)n_tok;
    ssd_forward(y, ld_y, delta, ckpt, x, ld_x, dt, ld_dt, B, C, ld_bc, dt_bias, A_log, D, seq_off, n_seq, H, P, N);
}

static void cpu_ssd_backward(float *dx, int ld_dx, float *ddt, int ld_ddt, float *dB, float *dC, int ld_dbc,
                             float *ddt_bias, float *dA_log, float *dD, const float *dy, int ld_dy,
                             const float *delta, const float *ckpt, const float *x, int ld_x, const float *dt,
                             int ld_dt, const float *B, const float *C, int ld_bc, const float *dt_bias,
                             const float *A_log, const float *D, const int *seq_off, int n_seq, int n_tok, int H,
                             int P, int N, void *work) {
    (void)n_tok, (void)work;
    ssd_backward(dx, ld_dx, ddt, ld_ddt, dB, dC, ld_dbc, ddt_bias, dA_log, dD, dy, ld_dy, delta, ckpt, x, ld_x, dt,
                 ld_dt, B, C, ld_bc, dt_bias, A_log, D, seq_off, n_seq, H, P, N);
}

static void cpu_gated_norm_backward(float *dy, int ld_dy, float *dz, int ld_dz, float *dw, const float *dout,
                                    int ld_dout, const float *rstd, const float *y, int ld_y, const float *z,
                                    int ld_z, const float *w, int n, int E, void *work) {
    (void)work;
    gated_norm_backward(dy, ld_dy, dz, ld_dz, dw, dout, ld_dout, rstd, y, ld_y, z, ld_z, w, n, E);
}

// The gate's dEv sum runs in double inside the CPU kernel (prod unused).
static void cpu_gate_backward(float *dy, float *dxz, float *dattn, float *dEv, float *prod, const float *do_,
                              const float *y, const float *xz, const float *attn, const float *Ev, int n, int E,
                              void *work, int bf16) {
    (void)prod, (void)work;
    mamba_gate_backward(dy, dxz, dattn, dEv, do_, y, xz, attn, Ev, n, E, bf16);
}

static void cpu_add_attn_backward(float *dattn, float *dEv, float *prod, const float *dy, const float *attn,
                                  const float *Ev, int n, int E, void *work, int bf16) {
    (void)prod, (void)work;
    add_attn_backward(dattn, dEv, dy, attn, Ev, n, E, bf16);
}

static void cpu_attn_forward(float *out, int ld_out, const attn_acts *acts, const float *a, int ld_a,
                             const attn_params *w, const hax_model_config *cfg, const int *seq_off, int n_seq,
                             int n_tok) {
    (void)n_tok;
    attn_acts x = *acts;  // the struct is the table's const; its buffers are written
    attn_forward(out, ld_out, &x, a, ld_a, w, cfg, seq_off, n_seq);
}

static void cpu_attn_backward(float *da, int ld_da, const attn_grads *gr, const float *dout, int ld_dout,
                              const float *a, int ld_a, const attn_acts *acts, const attn_params *w,
                              const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok, void *work) {
    (void)n_tok;
    attn_grads g = *gr;
    attn_backward(da, ld_da, &g, work, dout, ld_dout, a, ld_a, acts, w, cfg, seq_off, n_seq);
}

static void cpu_mlp_forward(float *out, int ld_out, const mlp_acts *acts, const float *a, int ld_a,
                            const mlp_params *w, int n_tok, int d, int M, int bf16) {
    mlp_acts x = *acts;
    mlp_forward(out, ld_out, &x, a, ld_a, w, n_tok, d, M, bf16);
}

static void cpu_mlp_backward(float *da, int ld_da, const mlp_grads *gr, const float *dout, int ld_dout,
                             const float *a, int ld_a, const mlp_acts *acts, const mlp_params *w, int n_tok, int d,
                             int M, void *work, int bf16) {
    mlp_grads g = *gr;
    mlp_backward(da, ld_da, &g, work, dout, ld_dout, a, ld_a, acts, w, n_tok, d, M, bf16);
}

// ---------------------------------------------------------------- sparse branch

static void *cpu_sparse_alloc(const hax_model_config *cfg, int max_tok, int max_seq, int max_len) {
    return sparse_state_alloc(cfg, max_tok, max_seq, max_len);
}
static void cpu_sparse_free(void *st) { sparse_state_free(st); }
static void cpu_sparse_force_buckets(void *st, const int32_t *q, const int32_t *k) { sparse_force_buckets(st, q, k); }

static void cpu_sparse_forward(void *st, const hax_model_config *cfg, const hax_batch *b, const int *seq_off,
                               const float *X, int ldX, const float *W_xx, const ks_params *ks, const float *hash,
                               const int *cand, int train, float *attn, int ld_attn) {
    (void)seq_off;  // the host batch's own
    sparse_forward(st, cfg, b, X, ldX, W_xx, ks, hash, cand, train, attn, ld_attn);
}

static void cpu_lsh_draw_hash(float *H, int n, uint64_t seed, uint32_t domain, uint32_t a, uint32_t b, int bf16) {
    hax_rng r;
    rng_init(&r, seed, domain, a, b, 0);
    for (int i = 0; i < n; i++) {
        float h = (float)rng_normal_portable(&r);
        H[i] = bf16 ? hax_bf16_round(h) : h;
    }
}

static void cpu_ks_draw_candidates(void *st, int *cand, const hax_batch *b, const int *seq_off, int n_seq_pad,
                                   int k_c, uint64_t seed, uint32_t step, uint32_t layer) {
    (void)st, (void)seq_off;
    ks_sample_candidates(cand, b->seq_off, b->n_seq, b->sample_idx, k_c, seed, step, layer);
    for (size_t i = (size_t)b->n_seq * k_c; i < (size_t)n_seq_pad * k_c; i++) cand[i] = -1;
}

static const double *cpu_sparse_gate_loss(const void *st) { return &((const hax_sparse_state *)st)->gate_loss; }

static void cpu_sparse_backward(void *st, const hax_model_config *cfg, const hax_batch *b, const int *seq_off,
                                const float *dattn, int ld_dattn, float gate_scale, const float *X, int ldX,
                                const float *W_xx, const ks_params *ks, float *dX, int ld_dX, float *dW_xx,
                                ks_grads *dks) {
    (void)seq_off;
    sparse_backward(st, cfg, b, dattn, ld_dattn, gate_scale, X, ldX, W_xx, ks, dX, ld_dX, dW_xx, dks);
}

// ---------------------------------------------------------------- the table

static const hax_ops cpu_ops = {
    .name = "cpu", .host = 1, .align = 16,
    .alloc = cpu_alloc, .free = cpu_free, .zero = cpu_zero, .zero_rows = cpu_zero_rows, .upload = cpu_copy,
    .download = cpu_copy, .sync = cpu_sync,
    .work_bytes = cpu_work_bytes, .scan_ckpt_floats = cpu_scan_ckpt_floats, .ssd_ckpt_floats = ssd_ckpt_floats_max,
    .embedding_forward = embedding_forward, .embedding_backward = cpu_embedding_backward,
    .rmsnorm_forward = rmsnorm_forward, .rmsnorm_backward = cpu_rmsnorm_backward,
    .add_rmsnorm_forward = add_rmsnorm_forward, .add_rmsnorm_backward = cpu_add_rmsnorm_backward, .add = cpu_add,
    .logits_forward = logits_forward, .logits_backward = logits_backward, .ce_forward = cpu_ce_forward,
    .ce_backward = ce_backward, .ce_backward_bf16 = cpu_ce_backward_bf16, .scale = NULL,
    .round_bf16 = round_bf16, .round_bf16_rows = round_bf16_rows, .add_bf16_rows = add_bf16_rows,
    .linear_forward = linear_forward, .linear_backward = linear_backward,
    .conv_silu_forward = cpu_conv_silu_forward, .conv_silu_backward = cpu_conv_silu_backward,
    .scan_forward = cpu_scan_forward, .scan_backward = cpu_scan_backward,
    .ssd_forward = cpu_ssd_forward, .ssd_backward = cpu_ssd_backward,
    .gated_norm_forward = gated_norm_forward, .gated_norm_backward = cpu_gated_norm_backward,
    .gate_forward = mamba_gate_forward, .gate_backward = cpu_gate_backward,
    .add_attn_forward = add_attn_forward, .add_attn_backward = cpu_add_attn_backward,
    .attn_forward = cpu_attn_forward, .attn_backward = cpu_attn_backward,
    .mlp_forward = cpu_mlp_forward, .mlp_backward = cpu_mlp_backward,
    .sparse_alloc = cpu_sparse_alloc, .sparse_free = cpu_sparse_free,
    .sparse_force_buckets = cpu_sparse_force_buckets, .sparse_forward = cpu_sparse_forward,
    .sparse_gate_loss = cpu_sparse_gate_loss, .sparse_backward = cpu_sparse_backward,
    .lsh_draw_hash = cpu_lsh_draw_hash, .ks_draw_candidates = cpu_ks_draw_candidates,
};

const hax_ops *hax_cpu_ops(void) { return &cpu_ops; }

// ---------------------------------------------------------------- the backend

// model->data / grad may be replaced between forwards (a reload): read them each time.
static void cpu_before_forward(hax_engine *e) {
    e->core->w = e->model->data;
    e->core->g = e->model->grad;
}

static const hax_backend cpu_backend = {.name = "cpu", .ops = &cpu_ops, .dev = NULL, .backward_sets_grads = 0,
                                        .before_forward = cpu_before_forward};

hax_engine *engine_cpu_create(hax_model *m, int max_tok, int max_seq, int max_len) {
    return engine_new(&cpu_backend, m, m->data, m->grad, NULL, max_tok, max_seq, max_len);
}

const float *engine_cpu_hidden(const hax_engine *e) { return e->core->hf; }
const float *engine_cpu_logits(const hax_engine *e) { return e->core->logits; }
const struct hax_sparse_state *engine_cpu_sparse(const hax_engine *e, int layer) { return e->core->L[layer].sp; }
const float *engine_cpu_hash(const hax_engine *e, int layer) {
    const eng_layer *L = &e->core->L[layer];
    return L->have_hash ? L->hash_dev : NULL;  // backend memory is host memory here
}
