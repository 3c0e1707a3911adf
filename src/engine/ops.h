// ops.h: the per-backend op table. The backend-neutral engine (engine.c,
// mixer*.c) orchestrates the model once and reaches memory and kernels only
// through this table; the CPU backend (cpu.c) fills it with the src/ops and
// src/sparse kernels, the CUDA backend (cuda/engine/ops.cu) with the cuda_*
// ops. One signature per op for both: the CUDA ops' (they take the batch size
// n_tok and a workspace `work` of work_bytes, which the CPU wrappers ignore
// or use as scratch).
//
// Pointers passed to the ops are backend memory (alloc), except where marked
// host. The CUDA ops only enqueue work on one stream; sync waits for it, and
// download's result is valid after sync. Nothing here may read backend data
// on the host inside forward/backward (a CUDA graph captures them).
#ifndef HAX_ENGINE_OPS_H
#define HAX_ENGINE_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "src/io/batch.h"
#include "src/model/model.h"
#include "src/ops/attn.h"
#include "src/ops/mlp.h"
#include "src/sparse/ks.h"

typedef struct hax_ops {
    const char *name;
    int host;   // 1: backend memory is host memory (outputs are read in place)
    int align;  // every activation tensor starts at a multiple of this many floats

    // ---- memory
    void *(*alloc)(size_t bytes);  // dies when out of memory
    void (*free)(void *p);         // NULL is a no-op
    void (*zero)(void *p, size_t bytes);
    void (*zero_rows)(float *p, int ld, int width, int rows);  // p[t*ld + 0..width) = 0 for t < rows
    void (*upload)(void *dst, const void *src_host, size_t bytes);
    void (*download)(void *dst_host, const void *src, size_t bytes);
    void (*sync)(void);

    // ---- sizes: op workspace for n_tok positions in n_seq sequences, and the
    // scan / SSD checkpoints (upper bounds for any split of n_tok into n_seq)
    size_t (*work_bytes)(const hax_model *m, int n_tok, int n_seq);
    size_t (*scan_ckpt_floats)(int n_tok, int n_seq, int E, int N);
    size_t (*ssd_ckpt_floats)(int n_tok, int n_seq, int H, int P, int N);

    // ---- embedding, norms, residual, head (src/ops/basic.h)
    void (*embedding_forward)(float *out, const int32_t *ids, const float *W_emb, int n_tok, int d, int V);
    void (*embedding_backward)(float *dW_emb, const float *dout, const int32_t *ids, int n_tok, int d, int V,
                               void *work);
    void (*rmsnorm_forward)(float *out, float *rstd, const float *x, const float *w, int n, int d, float eps);
    void (*rmsnorm_backward)(float *dx, float *dw, const float *dout, const float *x, const float *rstd,
                             const float *w, int n, int d, void *work);
    void (*add_rmsnorm_forward)(float *out, float *s, float *rstd, const float *x, const float *residual,
                                const float *w, int n, int d, float eps);
    void (*add_rmsnorm_backward)(float *dx, float *dresidual, float *dw, const float *dout, const float *ds,
                                 const float *s, const float *rstd, const float *w, int n, int d, void *work);
    void (*add)(float *out, const float *a, const float *b, long n);  // out = a + b
    void (*logits_forward)(float *logits, const float *h, const float *W_emb, int n, int d, int V);
    void (*logits_backward)(float *dh, float *dW_emb, const float *dlogits, const float *h, const float *W_emb,
                            int n, int d, int V);
    // *loss = Σ CE over the scored positions; correct/count per sequence
    void (*ce_forward)(double *loss, int *correct, int *count, const float *logits, const int32_t *labels,
                       const uint8_t *mask, const int *seq_off, int n_seq, int n_tok, int V, void *work);
    void (*ce_backward)(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask, int n_tok,
                        int V, float scale);
    // bf16-pure: the reference's torch ops (ce_backward_bf16, src/ops/basic.h); scale_dev (backend memory,
    // a graph step's normaliser) replaces scale when not NULL
    void (*ce_backward_bf16)(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask,
                             int n_tok, int V, float scale, const float *scale_dev);
    // bf16 emulation (train.precision): out[0..n) = bf16(x) (out may be x),
    // and in place on rows x[t*ld + 0..width), t < rows.
    void (*round_bf16)(float *out, const float *x, long n);
    void (*round_bf16_rows)(float *x, int ld, int width, int rows);
    // x[0..n) *= *s (s backend memory; graph steps' CE normaliser). May be NULL.
    void (*scale)(float *x, long n, const float *s);

    // ---- mixer kernels (src/ops/linear.h, conv.h, scan.h, ssd.h, gate.h)
    void (*linear_forward)(float *out, int ld_out, const float *inp, int ld_inp, const float *weight,
                           const float *bias, int n, int in_dim, int out_dim);
    void (*linear_backward)(float *dinp, int ld_dinp, float *dweight, float *dbias, const float *dout, int ld_dout,
                            const float *inp, int ld_inp, const float *weight, int n, int in_dim, int out_dim);
    void (*conv_silu_forward)(float *out, float *pre, const float *inp, int ld_inp, const float *w, const float *b,
                              const int *seq_off, int n_seq, int n_tok, int C, int K);
    void (*conv_silu_backward)(float *dinp, int ld_dinp, float *dw, float *db, const float *dout, const float *pre,
                               const float *inp, int ld_inp, const float *w, const int *seq_off, int n_seq,
                               int n_tok, int C, int K, void *work);
    void (*scan_forward)(float *y, float *ckpt, const float *x, int ld_x, const float *draw, const float *dt_bias,
                         const float *A_log, const float *Bm, const float *Cm, int ld_bc, const float *D,
                         const int *seq_off, int n_seq, int n_tok, int E, int N);
    void (*scan_backward)(float *dx, int ld_dx, float *ddraw, float *dBm, float *dCm, int ld_dbc, float *ddt_bias,
                          float *dA_log, float *dD, const float *dy, const float *ckpt, const float *x, int ld_x,
                          const float *draw, const float *dt_bias, const float *A_log, const float *Bm,
                          const float *Cm, int ld_bc, const float *D, const int *seq_off, int n_seq, int n_tok,
                          int E, int N, void *work);
    void (*ssd_forward)(float *y, int ld_y, float *delta, float *ckpt, const float *x, int ld_x, const float *dt,
                        int ld_dt, const float *B, const float *C, int ld_bc, const float *dt_bias,
                        const float *A_log, const float *D, const int *seq_off, int n_seq, int n_tok, int H, int P,
                        int N);
    void (*ssd_backward)(float *dx, int ld_dx, float *ddt, int ld_ddt, float *dB, float *dC, int ld_dbc,
                         float *ddt_bias, float *dA_log, float *dD, const float *dy, int ld_dy, const float *delta,
                         const float *ckpt, const float *x, int ld_x, const float *dt, int ld_dt, const float *B,
                         const float *C, int ld_bc, const float *dt_bias, const float *A_log, const float *D,
                         const int *seq_off, int n_seq, int n_tok, int H, int P, int N, void *work);
    void (*gated_norm_forward)(float *out, int ld_out, float *rstd, const float *y, int ld_y, const float *z,
                               int ld_z, const float *w, int n, int E, float eps);
    void (*gated_norm_backward)(float *dy, int ld_dy, float *dz, int ld_dz, float *dw, const float *dout,
                                int ld_dout, const float *rstd, const float *y, int ld_y, const float *z, int ld_z,
                                const float *w, int n, int E, void *work);
    // Mamba gate o = y·silu(z) (+ attn·Ev·silu(z)), z = xz[:, E:2E], and its
    // backward (dy, the z half of dxz =; dattn +=; dEv += Σ_t do·attn·silu(z),
    // prod [n, E] is scratch for it); attn may be NULL (plain Mamba). bf16:
    // the bf16-pure merge, each intermediate rounded (src/ops/gate.h).
    void (*gate_forward)(float *o, const float *y, const float *xz, const float *attn, const float *Ev, int n,
                         int E, int bf16);
    void (*gate_backward)(float *dy, float *dxz, float *dattn, float *dEv, float *prod, const float *do_,
                          const float *y, const float *xz, const float *attn, const float *Ev, int n, int E,
                          void *work, int bf16);
    // Enhanced Mamba-2: y += attn·Ev, and its backward (dattn += dy·Ev,
    // dEv += Σ_t dy·attn; prod [n, E] scratch). bf16: as gate_forward.
    void (*add_attn_forward)(float *y, const float *attn, const float *Ev, int n, int E, int bf16);
    void (*add_attn_backward)(float *dattn, float *dEv, float *prod, const float *dy, const float *attn,
                              const float *Ev, int n, int E, void *work, int bf16);
    // A gradient accumulated from several bf16 contributions (bf16-pure):
    // dst = bf16(dst + bf16(src)) on rows t < rows, columns j < width.
    void (*add_bf16_rows)(float *dst, int ld_dst, const float *src, int ld_src, int width, int rows);

    // ---- Samba (src/ops/attn.h, mlp.h)
    void (*attn_forward)(float *out, int ld_out, const attn_acts *acts, const float *a, int ld_a,
                         const attn_params *w, const hax_model_config *cfg, const int *seq_off, int n_seq,
                         int n_tok);
    void (*attn_backward)(float *da, int ld_da, const attn_grads *gr, const float *dout, int ld_dout,
                          const float *a, int ld_a, const attn_acts *acts, const attn_params *w,
                          const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok, void *work);
    // bf16: g, u, s, ds, dg, du rounded where the reference stores them and
    // da's two shares added in bf16 (src/ops/mlp.h); attn_forward/backward
    // read cfg->precision (src/ops/attn.h).
    void (*mlp_forward)(float *out, int ld_out, const mlp_acts *acts, const float *a, int ld_a,
                        const mlp_params *w, int n_tok, int d, int M, int bf16);
    void (*mlp_backward)(float *da, int ld_da, const mlp_grads *gr, const float *dout, int ld_dout, const float *a,
                         int ld_a, const mlp_acts *acts, const mlp_params *w, int n_tok, int d, int M, void *work,
                         int bf16);

    // ---- the sparse branch (src/sparse/sparse.h). b is the batch as run
    // (host arrays), seq_off its backend copy. forward leaves the layer's
    // ranking-loss partial sum at sparse_gate_loss(st) (backend memory).
    void *(*sparse_alloc)(const hax_model_config *cfg, int max_tok, int max_seq, int max_len);
    void (*sparse_free)(void *st);
    void (*sparse_force_buckets)(void *st, const int32_t *q_bucket, const int32_t *k_bucket);
    void (*sparse_forward)(void *st, const hax_model_config *cfg, const hax_batch *b, const int *seq_off,
                           const float *X, int ldX, const float *W_xx, const ks_params *ks, const float *hash,
                           const int *cand, int train, float *attn, int ld_attn);
    const double *(*sparse_gate_loss)(const void *st);
    void (*sparse_backward)(void *st, const hax_model_config *cfg, const hax_batch *b, const int *seq_off,
                            const float *dattn, int ld_dattn, float gate_scale, const float *X, int ldX,
                            const float *W_xx, const ks_params *ks, float *dX, int ld_dX, float *dW_xx,
                            ks_grads *dks);
    // The branch's random inputs, drawn by the backend into backend memory,
    // the same bits on every backend. lsh_draw_hash: H [n] = the
    // rng_normal_portable values of the stream (seed, domain, a, b, 0) as
    // floats, rounded to bf16 if bf16. ks_draw_candidates: cand [n_seq_pad, k_c]
    // = ks_sample_candidates of b's sequences (host b, its backend seq_off
    // copy; the run's first b->n_seq sequences), rows after them -1.
    void (*lsh_draw_hash)(float *H, int n, uint64_t seed, uint32_t domain, uint32_t a, uint32_t b, int bf16);
    void (*ks_draw_candidates)(void *st, int *cand, const hax_batch *b, const int *seq_off, int n_seq_pad, int k_c,
                               uint64_t seed, uint32_t step, uint32_t layer);
} hax_ops;

// bf16 emulation in the neutral engine (train.precision, README "Precision").
// pure: a tensor the reference materialises in bf16 (MODEL.md §0), rounded in
// bf16-pure only. act: the same, and also a GEMM input, rounded in mixed bf16
// too (there every GEMM reads bf16 inputs and accumulates in fp32). Both are
// no-ops in fp32, so an fp32 run issues exactly the ops it did before.
static inline void hax_bf16_pure(const hax_ops *ops, const hax_model_config *cfg, float *x, long n) {
    if (cfg->precision == PREC_BF16_PURE && x && n > 0) ops->round_bf16(x, x, n);
}
static inline void hax_bf16_pure_rows(const hax_ops *ops, const hax_model_config *cfg, float *x, int ld, int width,
                                      int rows) {
    if (cfg->precision == PREC_BF16_PURE && x && rows > 0) ops->round_bf16_rows(x, ld, width, rows);
}
static inline void hax_bf16_act(const hax_ops *ops, const hax_model_config *cfg, float *x, long n) {
    if (cfg->precision != PREC_FP32 && x && n > 0) ops->round_bf16(x, x, n);
}

// The CPU backend's table (src/engine/cpu.c): host memory, src/ops kernels.
const hax_ops *hax_cpu_ops(void);

#endif
