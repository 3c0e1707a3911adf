// mixer_mamba2.c: the (Enhanced) Mamba-2 mixer in two halves (see mixer_mamba2.h).
#include "src/engine/mixer_mamba2.h"

#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/ops/linear.h"
#include "src/ops/conv.h"
#include "src/ops/basic.h"
#include "src/ops/ssd.h"

int mamba2_conv_dim(const hax_model_config *cfg) {
    return cfg->intermediate_size + 2 * cfg->state_size;
}

int mamba2_proj_dim(const hax_model_config *cfg) {
    return cfg->intermediate_size + mamba2_conv_dim(cfg) + cfg->n_heads;
}

size_t mamba2_acts_floats(const hax_model_config *cfg, const int *seq_off, int n_seq) {
    size_t n = (size_t)seq_off[n_seq], E = (size_t)cfg->intermediate_size;
    size_t cd = (size_t)mamba2_conv_dim(cfg), W = (size_t)mamba2_proj_dim(cfg);
    return n * W + 2 * n * cd + n * (size_t)cfg->n_heads + 2 * n * E + n +
           ssd_ckpt_floats(seq_off, n_seq, cfg->n_heads, cfg->head_dim, cfg->state_size);
}

void mamba2_acts_assign(mamba2_acts *acts, float *buf, const hax_model_config *cfg,
                        const int *seq_off, int n_seq) {
    size_t n = (size_t)seq_off[n_seq], E = (size_t)cfg->intermediate_size;
    size_t cd = (size_t)mamba2_conv_dim(cfg), W = (size_t)mamba2_proj_dim(cfg);
    acts->p = buf;
    buf += n * W;
    acts->xbc_pre = buf;
    buf += n * cd;
    acts->xbc = buf;
    buf += n * cd;
    acts->delta = buf;
    buf += n * (size_t)cfg->n_heads;
    acts->y = buf;
    buf += n * E;
    acts->g = buf;
    buf += n * E;
    acts->rstd = buf;
    buf += n;
    acts->ckpt = buf;
}

size_t mamba2_bwd_floats(const hax_model_config *cfg, int n_tok) {
    size_t n = (size_t)n_tok, E = (size_t)cfg->intermediate_size;
    return n * (size_t)mamba2_proj_dim(cfg) + n * (size_t)mamba2_conv_dim(cfg) + 2 * n * E;
}

void mamba2_bwd_assign(mamba2_bwd *s, float *buf, const hax_model_config *cfg, int n_tok) {
    size_t n = (size_t)n_tok, E = (size_t)cfg->intermediate_size;
    s->dp = buf;
    buf += n * (size_t)mamba2_proj_dim(cfg);
    s->dxbc = buf;
    buf += n * (size_t)mamba2_conv_dim(cfg);
    s->dy = buf;
    buf += n * E;
    s->dg = buf;
}

void mamba2_pre_forward(mamba2_acts *acts, const float *a, int ld_a, const mamba2_params *w,
                        const hax_model_config *cfg, const int *seq_off, int n_seq) {
    int n = seq_off[n_seq], E = cfg->intermediate_size, d = cfg->hidden_size;
    int cd = mamba2_conv_dim(cfg), W = mamba2_proj_dim(cfg);
    linear_forward(acts->p, W, a, ld_a, w->in_proj, NULL, n, d, W);
    conv_silu_forward(acts->xbc, acts->xbc_pre, acts->p + E, W, w->conv_w, w->conv_b, seq_off,
                      n_seq, cd, cfg->conv_kernel);
}

void mamba2_post_forward(float *out, int ld_out, mamba2_acts *acts, const float *attn,
                         const mamba2_params *w, const hax_model_config *cfg, const int *seq_off,
                         int n_seq) {
    int n = seq_off[n_seq], E = cfg->intermediate_size, N = cfg->state_size;
    int cd = mamba2_conv_dim(cfg), W = mamba2_proj_dim(cfg);
    const float *X = acts->xbc, *dt = acts->p + E + cd;
    ssd_forward(acts->y, E, acts->delta, acts->ckpt, X, cd, dt, W, X + E, X + E + N, cd,
                w->dt_bias, w->A_log, w->D, seq_off, n_seq, cfg->n_heads, cfg->head_dim, N);
    if (attn) {
        if (!w->E) hax_die("mixer_mamba2: an attention output was given but the parameter E is NULL");
        // Enhanced Mamba-2 (MODEL.md §5.7): y' = y + attn ⊙ E before the gated norm.
#pragma omp parallel for schedule(static)
        for (int t = 0; t < n; t++)
            for (int c = 0; c < E; c++)
                acts->y[(size_t)t * E + c] += attn[(size_t)t * E + c] * w->E[c];
    }
    gated_norm_forward(acts->g, E, acts->rstd, acts->y, E, acts->p, W, w->norm_w, n, E,
                       cfg->norm_eps);
    linear_forward(out, ld_out, acts->g, E, w->out_proj, NULL, n, E, cfg->hidden_size);
}

void mamba2_post_backward(mamba2_bwd *s, float *dattn, const float *dout, int ld_dout,
                          const mamba2_acts *acts, const float *attn, const mamba2_params *w,
                          mamba2_grads *gr, const hax_model_config *cfg, const int *seq_off,
                          int n_seq) {
    int n = seq_off[n_seq], E = cfg->intermediate_size, N = cfg->state_size;
    int cd = mamba2_conv_dim(cfg), W = mamba2_proj_dim(cfg);
    size_t nE = (size_t)n * E;
    memset(s->dg, 0, nE * sizeof(float));
    memset(s->dy, 0, nE * sizeof(float));
    memset(s->dp, 0, (size_t)n * W * sizeof(float));
    memset(s->dxbc, 0, (size_t)n * cd * sizeof(float));

    linear_backward(s->dg, E, gr->out_proj, NULL, dout, ld_dout, acts->g, E, w->out_proj, n, E,
                    cfg->hidden_size);
    gated_norm_backward(s->dy, E, s->dp, W, gr->norm_w, s->dg, E, acts->rstd, acts->y, E, acts->p,
                        W, w->norm_w, n, E);
    if (attn) {
        if (dattn) {
#pragma omp parallel for schedule(static)
            for (int t = 0; t < n; t++)
                for (int c = 0; c < E; c++)
                    dattn[(size_t)t * E + c] += s->dy[(size_t)t * E + c] * w->E[c];
        }
        if (gr->E) {
            // Serial sum over positions: cheap, and independent of the thread count.
            double *acc = xcalloc((size_t)E, sizeof(double));
            for (int t = 0; t < n; t++)
                for (int c = 0; c < E; c++)
                    acc[c] += (double)s->dy[(size_t)t * E + c] * attn[(size_t)t * E + c];
            for (int c = 0; c < E; c++) gr->E[c] += (float)acc[c];
            free(acc);
        }
    }
    const float *X = acts->xbc, *dt = acts->p + E + cd;
    ssd_backward(s->dxbc, cd, s->dp + E + cd, W, s->dxbc + E, s->dxbc + E + N, cd, gr->dt_bias,
                 gr->A_log, gr->D, s->dy, E, acts->delta, acts->ckpt, X, cd, dt, W, X + E,
                 X + E + N, cd, w->dt_bias, w->A_log, w->D, seq_off, n_seq, cfg->n_heads,
                 cfg->head_dim, N);
}

void mamba2_pre_backward(float *da, int ld_da, mamba2_bwd *s, const float *a, int ld_a,
                         const mamba2_acts *acts, const mamba2_params *w, mamba2_grads *gr,
                         const hax_model_config *cfg, const int *seq_off, int n_seq) {
    int n = seq_off[n_seq], E = cfg->intermediate_size, d = cfg->hidden_size;
    int cd = mamba2_conv_dim(cfg), W = mamba2_proj_dim(cfg);
    conv_silu_backward(s->dp + E, W, gr->conv_w, gr->conv_b, s->dxbc, acts->xbc_pre, acts->p + E, W,
                       w->conv_w, seq_off, n_seq, cd, cfg->conv_kernel);
    linear_backward(da, ld_da, gr->in_proj, NULL, s->dp, W, a, ld_a, w->in_proj, n, d, W);
}
