// mixer_mamba2.c: the (Enhanced) Mamba-2 mixer in two halves (see mixer_mamba2.h).
// bf16 emulation (ops.h; no-ops in fp32): forward, p, xBC' = silu(conv), the
// SSD output y (fp32 inside: A = -exp(A_log), the dt bias, Δ), y' =
// bf16(y + bf16(attn·E)) (§5.7's two bf16 ops, inside add_attn) and g;
// backward, dg, dy, dattn, dE's bf16 products (inside add_attn's backward),
// dxBC' (after the SSD and after the branch, which adds its shares as bf16
// tensors) and dp (z, xBC, dt parts) before in_proj's backward.
#include "src/engine/mixer_mamba2.h"

#include "src/core/common.h"

int mamba2_conv_dim(const hax_model_config *cfg) {
    return cfg->intermediate_size + 2 * cfg->state_size;
}

int mamba2_proj_dim(const hax_model_config *cfg) {
    return cfg->intermediate_size + mamba2_conv_dim(cfg) + cfg->n_heads;
}

void mamba2_acts_list(hax_act_table *t, const hax_ops *ops, mamba2_acts *acts, const hax_model_config *cfg,
                      int n_tok, int n_seq) {
    size_t n = (size_t)n_tok, E = (size_t)cfg->intermediate_size;
    size_t cd = (size_t)mamba2_conv_dim(cfg), W = (size_t)mamba2_proj_dim(cfg);
    acts_add(t, "mamba2.p", &acts->p, n * W);
    acts_add(t, "mamba2.xbc_pre", &acts->xbc_pre, n * cd);
    acts_add(t, "mamba2.xbc", &acts->xbc, n * cd);
    acts_add(t, "mamba2.delta", &acts->delta, n * (size_t)cfg->n_heads);
    acts_add(t, "mamba2.y", &acts->y, n * E);
    acts_add(t, "mamba2.g", &acts->g, n * E);
    acts_add(t, "mamba2.rstd", &acts->rstd, n);
    acts_add(t, "mamba2.ckpt", &acts->ckpt,
             ops->ssd_ckpt_floats(n_tok, n_seq, cfg->n_heads, cfg->head_dim, cfg->state_size));
}

void mamba2_bwd_list(hax_act_table *t, mamba2_bwd *s, const hax_model_config *cfg, int n_tok) {
    size_t n = (size_t)n_tok, E = (size_t)cfg->intermediate_size;
    acts_add(t, "mamba2.dp", &s->dp, n * (size_t)mamba2_proj_dim(cfg));
    acts_add(t, "mamba2.dxbc", &s->dxbc, n * (size_t)mamba2_conv_dim(cfg));
    acts_add(t, "mamba2.dy", &s->dy, n * E);
    acts_add(t, "mamba2.dg", &s->dg, n * E);
}

size_t mamba2_acts_floats(const hax_ops *ops, const hax_model_config *cfg, int n_tok, int n_seq) {
    mamba2_acts a;
    hax_act_table t = {0};
    mamba2_acts_list(&t, ops, &a, cfg, n_tok, n_seq);
    return acts_layout_clear(&t, NULL, ops->align);
}

void mamba2_acts_assign(const hax_ops *ops, mamba2_acts *acts, float *buf, const hax_model_config *cfg, int n_tok,
                        int n_seq) {
    hax_act_table t = {0};
    mamba2_acts_list(&t, ops, acts, cfg, n_tok, n_seq);
    acts_layout_clear(&t, buf, ops->align);
}

size_t mamba2_bwd_floats(const hax_ops *ops, const hax_model_config *cfg, int n_tok) {
    mamba2_bwd s;
    hax_act_table t = {0};
    mamba2_bwd_list(&t, &s, cfg, n_tok);
    return acts_layout_clear(&t, NULL, ops->align);
}

void mamba2_bwd_assign(const hax_ops *ops, mamba2_bwd *s, float *buf, const hax_model_config *cfg, int n_tok) {
    hax_act_table t = {0};
    mamba2_bwd_list(&t, s, cfg, n_tok);
    acts_layout_clear(&t, buf, ops->align);
}

void mamba2_pre_forward(const hax_ops *ops, mamba2_acts *acts, const float *a, int ld_a, const mamba2_params *w,
                        const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok) {
    int E = cfg->intermediate_size, d = cfg->hidden_size;
    int cd = mamba2_conv_dim(cfg), W = mamba2_proj_dim(cfg);
    ops->linear_forward(acts->p, W, a, ld_a, w->in_proj, NULL, n_tok, d, W);
    hax_bf16_pure(ops, cfg, acts->p, (long)n_tok * W);
    ops->conv_silu_forward(acts->xbc, acts->xbc_pre, acts->p + E, W, w->conv_w, w->conv_b, seq_off, n_seq, n_tok, cd,
                           cfg->conv_kernel);
    hax_bf16_act(ops, cfg, acts->xbc, (long)n_tok * cd);  // X is the branch's GEMM input
}

void mamba2_post_forward(const hax_ops *ops, float *out, int ld_out, mamba2_acts *acts, const float *attn,
                         const mamba2_params *w, const hax_model_config *cfg, const int *seq_off, int n_seq,
                         int n_tok) {
    int n = n_tok, E = cfg->intermediate_size, N = cfg->state_size;
    int cd = mamba2_conv_dim(cfg), W = mamba2_proj_dim(cfg);
    const float *X = acts->xbc, *dt = acts->p + E + cd;
    ops->ssd_forward(acts->y, E, acts->delta, acts->ckpt, X, cd, dt, W, X + E, X + E + N, cd, w->dt_bias, w->A_log,
                     w->D, seq_off, n_seq, n, cfg->n_heads, cfg->head_dim, N);
    hax_bf16_pure(ops, cfg, acts->y, (long)n * E);
    if (attn) {
        if (!w->E) hax_die("mixer_mamba2: an attention output was given but the parameter E is NULL");
        // Enhanced Mamba-2 (MODEL.md §5.7): y' = y + attn ⊙ E before the gated norm.
        ops->add_attn_forward(acts->y, attn, w->E, n, E, cfg->precision == PREC_BF16_PURE);
        hax_bf16_pure(ops, cfg, acts->y, (long)n * E);
    }
    ops->gated_norm_forward(acts->g, E, acts->rstd, acts->y, E, acts->p, W, w->norm_w, n, E, cfg->norm_eps);
    hax_bf16_act(ops, cfg, acts->g, (long)n * E);
    ops->linear_forward(out, ld_out, acts->g, E, w->out_proj, NULL, n, E, cfg->hidden_size);
}

void mamba2_post_backward(const hax_ops *ops, mamba2_bwd *s, float *dattn, const float *dout, int ld_dout,
                          const mamba2_acts *acts, const float *attn, const mamba2_params *w, mamba2_grads *gr,
                          const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok, void *work) {
    int n = n_tok, E = cfg->intermediate_size, N = cfg->state_size;
    int cd = mamba2_conv_dim(cfg), W = mamba2_proj_dim(cfg);
    size_t nE = (size_t)n * E;
    ops->zero(s->dg, nE * sizeof(float));
    ops->zero(s->dy, nE * sizeof(float));
    ops->zero(s->dp, (size_t)n * W * sizeof(float));
    ops->zero(s->dxbc, (size_t)n * cd * sizeof(float));

    ops->linear_backward(s->dg, E, gr->out_proj, NULL, dout, ld_dout, acts->g, E, w->out_proj, n, E,
                         cfg->hidden_size);
    hax_bf16_pure(ops, cfg, s->dg, (long)nE);
    ops->gated_norm_backward(s->dy, E, s->dp, W, gr->norm_w, s->dg, E, acts->rstd, acts->y, E, acts->p, W, w->norm_w,
                             n, E, work);
    hax_bf16_pure(ops, cfg, s->dy, (long)nE);
    // y' = y + attn·E: dattn += dy·E, dE += Σ_t dy·attn (dg is free again: the sum's scratch)
    if (attn)
        ops->add_attn_backward(dattn, gr->E, s->dg, s->dy, attn, w->E, n, E, work, cfg->precision == PREC_BF16_PURE);
    if (attn) hax_bf16_pure(ops, cfg, dattn, (long)nE);
    const float *X = acts->xbc, *dt = acts->p + E + cd;
    ops->ssd_backward(s->dxbc, cd, s->dp + E + cd, W, s->dxbc + E, s->dxbc + E + N, cd, gr->dt_bias, gr->A_log,
                      gr->D, s->dy, E, acts->delta, acts->ckpt, X, cd, dt, W, X + E, X + E + N, cd, w->dt_bias,
                      w->A_log, w->D, seq_off, n_seq, n, cfg->n_heads, cfg->head_dim, N, work);
    hax_bf16_pure(ops, cfg, s->dxbc, (long)n * cd);
}

void mamba2_pre_backward(const hax_ops *ops, float *da, int ld_da, mamba2_bwd *s, const float *a, int ld_a,
                         const mamba2_acts *acts, const mamba2_params *w, mamba2_grads *gr,
                         const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok, void *work) {
    int E = cfg->intermediate_size, d = cfg->hidden_size;
    int cd = mamba2_conv_dim(cfg), W = mamba2_proj_dim(cfg);
    hax_bf16_pure(ops, cfg, s->dxbc, (long)n_tok * cd);  // after the sparse branch's share
    ops->conv_silu_backward(s->dp + E, W, gr->conv_w, gr->conv_b, s->dxbc, acts->xbc_pre, acts->p + E, W, w->conv_w,
                            seq_off, n_seq, n_tok, cd, cfg->conv_kernel, work);
    hax_bf16_pure(ops, cfg, s->dp, (long)n_tok * W);  // dz | dxBC | ddt
    ops->linear_backward(da, ld_da, gr->in_proj, NULL, s->dp, W, a, ld_a, w->in_proj, n_tok, d, W);
}
