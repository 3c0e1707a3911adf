// mixer_mamba.c: see mixer_mamba.h. The step order is the one both backends
// ran before the orchestration was shared (the CUDA kernels launch in it).
// bf16 emulation (ops.h's hax_bf16_pure / hax_bf16_act; no-ops in fp32):
// forward, each op's output where the reference stores bf16 (MODEL.md §2.2:
// xz, x' = silu(conv), x_dbl, Δraw, the gated scan output o; the Enhanced
// merge's steps inside the gate op, src/ops/gate.h); backward, each gradient
// tensor autograd passes between ops (do, dz, dattn, dX, dΔraw, dx_dbl, dx).
// dy = do·silu(z) is not one: it lives inside the selective scan's fused
// backward (fp32). dX receives several contributions (the scan, x_proj, the
// sparse branch). The plain mixer's fused mamba_inner_fn adds x_proj's share
// with one addmm into the scan's bf16 dX, so dX = bf16(dX + fp32 share); the
// Enhanced mixer runs them as separate autograd ops, so each share is a bf16
// tensor first and the sum is bf16(dX + bf16(share)) (the branch rounds its
// own shares the same way, src/sparse/sparse.h).
#include "src/engine/mixer_mamba.h"

#include "src/core/common.h"

typedef struct {
    int d, E, N, R, K, RN;  // RN = R + 2N, the width of x_dbl
} mamba_dims;

static mamba_dims dims_of(const hax_model_config *cfg) {
    mamba_dims m = {cfg->hidden_size, cfg->intermediate_size, cfg->state_size, cfg->time_step_rank,
                    cfg->conv_kernel, cfg->time_step_rank + 2 * cfg->state_size};
    return m;
}

void mamba_acts_list(hax_act_table *t, const hax_ops *ops, mamba_acts *acts, const hax_model_config *cfg, int n_tok,
                     int n_seq) {
    mamba_dims m = dims_of(cfg);
    size_t n = (size_t)n_tok;
    acts_add(t, "mamba.xz", &acts->xz, n * 2 * m.E);
    acts_add(t, "mamba.conv_pre", &acts->conv_pre, n * m.E);
    acts_add(t, "mamba.X", &acts->X, n * m.E);
    acts_add(t, "mamba.x_dbl", &acts->x_dbl, n * m.RN);
    acts_add(t, "mamba.draw", &acts->draw, n * m.E);
    acts_add(t, "mamba.y", &acts->y, n * m.E);
    acts_add(t, "mamba.ckpt", &acts->ckpt, ops->scan_ckpt_floats(n_tok, n_seq, m.E, m.N));
}

void mamba_bwd_list(hax_act_table *t, mamba_bwd *s, const hax_model_config *cfg, int n_tok) {
    mamba_dims m = dims_of(cfg);
    size_t n = (size_t)n_tok;
    acts_add(t, "mamba.o", &s->o, n * m.E);
    acts_add(t, "mamba.do", &s->do_, n * m.E);
    acts_add(t, "mamba.dy", &s->dy, n * m.E);
    acts_add(t, "mamba.ddraw", &s->ddraw, n * m.E);
    acts_add(t, "mamba.dx_dbl", &s->dx_dbl, n * m.RN);
    acts_add(t, "mamba.dxz", &s->dxz, n * 2 * m.E);
    acts_add(t, "mamba.dX", &s->dX, n * m.E);
}

size_t mamba_acts_floats(const hax_ops *ops, const hax_model_config *cfg, int n_tok, int n_seq) {
    mamba_acts a;
    hax_act_table t = {0};
    mamba_acts_list(&t, ops, &a, cfg, n_tok, n_seq);
    return acts_layout_clear(&t, NULL, ops->align);
}

void mamba_acts_assign(const hax_ops *ops, mamba_acts *acts, float *buf, const hax_model_config *cfg, int n_tok,
                       int n_seq) {
    hax_act_table t = {0};
    mamba_acts_list(&t, ops, acts, cfg, n_tok, n_seq);
    acts_layout_clear(&t, buf, ops->align);
}

size_t mamba_bwd_floats(const hax_ops *ops, const hax_model_config *cfg, int n_tok) {
    mamba_bwd s;
    hax_act_table t = {0};
    mamba_bwd_list(&t, &s, cfg, n_tok);
    return acts_layout_clear(&t, NULL, ops->align);
}

void mamba_bwd_assign(const hax_ops *ops, mamba_bwd *s, float *buf, const hax_model_config *cfg, int n_tok) {
    hax_act_table t = {0};
    mamba_bwd_list(&t, s, cfg, n_tok);
    acts_layout_clear(&t, buf, ops->align);
}

void mamba_pre_forward(const hax_ops *ops, mamba_acts *acts, const float *a, int ld_a, const mamba_params *w,
                       const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok) {
    mamba_dims m = dims_of(cfg);
    ops->linear_forward(acts->xz, 2 * m.E, a, ld_a, w->in_proj, NULL, n_tok, m.d, 2 * m.E);
    hax_bf16_pure(ops, cfg, acts->xz, (long)n_tok * 2 * m.E);
    ops->conv_silu_forward(acts->X, acts->conv_pre, acts->xz, 2 * m.E, w->conv_w, w->conv_b, seq_off, n_seq, n_tok,
                           m.E, m.K);
    hax_bf16_act(ops, cfg, acts->X, (long)n_tok * m.E);  // conv_pre stays fp32: the fused kernel's inside
}

void mamba_post_forward(const hax_ops *ops, float *out, int ld_out, mamba_acts *acts, mamba_bwd *s,
                        const float *attn, const mamba_params *w, const hax_model_config *cfg, const int *seq_off,
                        int n_seq, int n_tok) {
    mamba_dims m = dims_of(cfg);
    if (attn && !w->E) hax_die("mixer_mamba: an attention output was given but the mixer has no E parameter");
    float *xd = acts->x_dbl;
    ops->linear_forward(xd, m.RN, acts->X, m.E, w->x_proj, NULL, n_tok, m.E, m.RN);
    hax_bf16_act(ops, cfg, xd, (long)n_tok * m.RN);
    ops->linear_forward(acts->draw, m.E, xd, m.RN, w->dt_proj_w, NULL, n_tok, m.R, m.E);
    hax_bf16_pure(ops, cfg, acts->draw, (long)n_tok * m.E);
    // the scan: fp32 inside (A = -exp(A_log), the dt bias, y), its output is o
    ops->scan_forward(acts->y, acts->ckpt, acts->X, m.E, acts->draw, w->dt_proj_b, w->A_log, xd + m.R,
                      xd + m.R + m.N, m.RN, w->D, seq_off, n_seq, n_tok, m.E, m.N);
    // o = y·silu(z) is the scan kernel's bf16 output; in bf16-pure the gate
    // op rounds it and the Enhanced merge's steps (§5.7), src/ops/gate.h
    ops->gate_forward(s->o, acts->y, acts->xz, attn, w->E, n_tok, m.E, cfg->precision == PREC_BF16_PURE);
    hax_bf16_act(ops, cfg, s->o, (long)n_tok * m.E);
    ops->linear_forward(out, ld_out, s->o, m.E, w->out_proj, NULL, n_tok, m.E, m.d);
}

void mamba_post_backward(const hax_ops *ops, mamba_bwd *s, float *dattn, const float *dout, int ld_dout,
                         const mamba_acts *acts, const float *attn, const mamba_params *w, mamba_grads *gr,
                         const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok, void *work) {
    mamba_dims m = dims_of(cfg);
    size_t nE = (size_t)n_tok * m.E;
    const float *xd = acts->x_dbl;
    int pure = cfg->precision == PREC_BF16_PURE;
    // out_proj (its input o is recomputed rather than kept per layer)
    ops->gate_forward(s->o, acts->y, acts->xz, attn, w->E, n_tok, m.E, pure);
    hax_bf16_act(ops, cfg, s->o, (long)nE);  // as in the forward
    ops->zero(s->do_, sizeof(float) * nE);
    ops->linear_backward(s->do_, m.E, gr->out_proj, NULL, dout, ld_dout, s->o, m.E, w->out_proj, n_tok, m.E, m.d);
    hax_bf16_pure(ops, cfg, s->do_, (long)nE);
    // with the branch, s->ddraw (zeroed below) is the dE sum's scratch; dy
    // stays fp32 (the scan's inside), dz and dattn come out bf16 in bf16-pure
    ops->gate_backward(s->dy, s->dxz, dattn, gr->E, s->ddraw, s->do_, acts->y, acts->xz, attn, w->E, n_tok, m.E,
                       work, pure);
    hax_bf16_pure_rows(ops, cfg, s->dxz + m.E, 2 * m.E, m.E, n_tok);  // dz
    if (attn) hax_bf16_pure(ops, cfg, dattn, (long)nE);
    // scan → dX (=, from zero), dΔraw, dB, dC and the scan parameters
    ops->zero(s->dX, sizeof(float) * nE);
    ops->zero(s->ddraw, sizeof(float) * nE);
    ops->zero(s->dx_dbl, sizeof(float) * (size_t)n_tok * m.RN);
    ops->scan_backward(s->dX, m.E, s->ddraw, s->dx_dbl + m.R, s->dx_dbl + m.R + m.N, m.RN, gr->dt_proj_b, gr->A_log,
                       gr->D, s->dy, acts->ckpt, acts->X, m.E, acts->draw, w->dt_proj_b, w->A_log, xd + m.R,
                       xd + m.R + m.N, m.RN, w->D, seq_off, n_seq, n_tok, m.E, m.N, work);
    hax_bf16_pure(ops, cfg, s->dX, (long)nE);
    hax_bf16_pure(ops, cfg, s->ddraw, (long)nE);
    // dt_proj (its bias entered inside the scan) → dδ, then x_proj → dX
    ops->linear_backward(s->dx_dbl, m.RN, gr->dt_proj_w, NULL, s->ddraw, m.E, xd, m.RN, w->dt_proj_w, n_tok, m.R,
                         m.E);
    hax_bf16_pure(ops, cfg, s->dx_dbl, (long)n_tok * m.RN);  // dδ | dB | dC
    if (attn && pure) {  // Enhanced: x_proj's share is a bf16 tensor of its own (ddraw is free)
        ops->zero(s->ddraw, sizeof(float) * nE);
        ops->linear_backward(s->ddraw, m.E, gr->x_proj, NULL, s->dx_dbl, m.RN, acts->X, m.E, w->x_proj, n_tok, m.E,
                             m.RN);
        ops->add_bf16_rows(s->dX, m.E, s->ddraw, m.E, m.E, n_tok);
        return;
    }
    ops->linear_backward(s->dX, m.E, gr->x_proj, NULL, s->dx_dbl, m.RN, acts->X, m.E, w->x_proj, n_tok, m.E, m.RN);
    hax_bf16_pure(ops, cfg, s->dX, (long)nE);
}

void mamba_pre_backward(const hax_ops *ops, float *da, int ld_da, mamba_bwd *s, const float *a, int ld_a,
                        const mamba_acts *acts, const mamba_params *w, mamba_grads *gr, const hax_model_config *cfg,
                        const int *seq_off, int n_seq, int n_tok, void *work) {
    mamba_dims m = dims_of(cfg);
    hax_bf16_pure(ops, cfg, s->dX, (long)n_tok * m.E);  // after the sparse branch's share
    // the x half of dxz from zero (the z half was set by the gate)
    ops->zero_rows(s->dxz, 2 * m.E, m.E, n_tok);
    ops->conv_silu_backward(s->dxz, 2 * m.E, gr->conv_w, gr->conv_b, s->dX, acts->conv_pre, acts->xz, 2 * m.E,
                            w->conv_w, seq_off, n_seq, n_tok, m.E, m.K, work);
    hax_bf16_pure_rows(ops, cfg, s->dxz, 2 * m.E, m.E, n_tok);  // dx
    ops->linear_backward(da, ld_da, gr->in_proj, NULL, s->dxz, 2 * m.E, a, ld_a, w->in_proj, n_tok, m.d, 2 * m.E);
}
