// mixer_mamba.c: see mixer_mamba.h.
#include "src/engine/mixer_mamba.h"

#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/ops/linear.h"
#include "src/ops/basic.h"
#include "src/ops/conv.h"
#include "src/ops/scan.h"

// Rows per partial of the E-vector gradient (fixed, so the sum never depends
// on the thread count).
#define ROW_CHUNK 64

typedef struct {
    int d, E, N, R, K, RN;  // RN = R + 2N, the width of x_dbl
} mamba_dims;

static mamba_dims dims_of(const hax_model_config *cfg) {
    mamba_dims m = {cfg->hidden_size, cfg->intermediate_size, cfg->state_size, cfg->time_step_rank,
                    cfg->conv_kernel, cfg->time_step_rank + 2 * cfg->state_size};
    return m;
}

static void check_batch(const int *seq_off, int n_seq, int n_tok) {
    if (n_seq < 0 || seq_off[0] != 0 || seq_off[n_seq] != n_tok)
        hax_die("mixer_mamba: seq_off: expected 0 .. n_tok = %d over %d sequences, found %d .. %d", n_tok,
                n_seq, seq_off[0], n_seq >= 0 ? seq_off[n_seq] : -1);
}

size_t mamba_acts_floats(const hax_model_config *cfg, int n_tok, int n_seq) {
    mamba_dims m = dims_of(cfg);
    return (size_t)n_tok * (6 * (size_t)m.E + m.RN) + scan_ckpt_floats(n_tok, n_seq, m.E, m.N);
}

void mamba_acts_assign(mamba_acts *acts, float *buf, const hax_model_config *cfg, int n_tok, int n_seq) {
    (void)n_seq;
    mamba_dims m = dims_of(cfg);
    size_t n = (size_t)n_tok;
    acts->xz = buf;
    acts->conv_pre = acts->xz + n * 2 * m.E;
    acts->X = acts->conv_pre + n * m.E;
    acts->x_dbl = acts->X + n * m.E;
    acts->draw = acts->x_dbl + n * m.RN;
    acts->y = acts->draw + n * m.E;
    acts->ckpt = acts->y + n * m.E;
}

size_t mamba_bwd_floats(const hax_model_config *cfg, int n_tok) {
    mamba_dims m = dims_of(cfg);
    return (size_t)n_tok * (7 * (size_t)m.E + m.RN);
}

void mamba_bwd_assign(mamba_bwd *s, float *buf, const hax_model_config *cfg, int n_tok) {
    mamba_dims m = dims_of(cfg);
    size_t n = (size_t)n_tok;
    s->o = buf;
    s->do_ = s->o + n * m.E;
    s->dy = s->do_ + n * m.E;
    s->ddraw = s->dy + n * m.E;
    s->dx_dbl = s->ddraw + n * m.E;
    s->dxz = s->dx_dbl + n * m.RN;
    s->dX = s->dxz + n * 2 * m.E;
}

void mamba_pre_forward(mamba_acts *acts, const float *a, int ld_a, const mamba_params *w,
                       const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok) {
    mamba_dims m = dims_of(cfg);
    check_batch(seq_off, n_seq, n_tok);
    linear_forward(acts->xz, 2 * m.E, a, ld_a, w->in_proj, NULL, n_tok, m.d, 2 * m.E);
    conv_silu_forward(acts->X, acts->conv_pre, acts->xz, 2 * m.E, w->conv_w, w->conv_b, seq_off, n_seq,
                      m.E, m.K);
}

// o = y·silu(z) (+ (attn·E)·silu(z)), the reference's order of operations.
static void gate_forward(float *o, const float *y, const float *xz, const float *attn, const float *Ev,
                         int n_tok, int E) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n_tok; t++) {
        const float *z = xz + (size_t)t * 2 * E + E;
        for (int c = 0; c < E; c++) {
            size_t i = (size_t)t * E + c;
            float g = hax_silu(z[c]);
            o[i] = y[i] * g;
            if (attn) o[i] += attn[i] * Ev[c] * g;
        }
    }
}

void mamba_post_forward(float *out, int ld_out, mamba_acts *acts, mamba_bwd *s, const float *attn,
                        const mamba_params *w, const hax_model_config *cfg, const int *seq_off,
                        int n_seq, int n_tok) {
    mamba_dims m = dims_of(cfg);
    check_batch(seq_off, n_seq, n_tok);
    if (attn && !w->E) hax_die("mixer_mamba: an attention output was given but the mixer has no E parameter");
    float *xd = acts->x_dbl;
    linear_forward(xd, m.RN, acts->X, m.E, w->x_proj, NULL, n_tok, m.E, m.RN);
    linear_forward(acts->draw, m.E, xd, m.RN, w->dt_proj_w, NULL, n_tok, m.R, m.E);
    scan_forward(acts->y, acts->ckpt, acts->X, m.E, acts->draw, w->dt_proj_b, w->A_log, xd + m.R,
                 xd + m.R + m.N, m.RN, w->D, seq_off, n_seq, m.E, m.N);
    gate_forward(s->o, acts->y, acts->xz, attn, w->E, n_tok, m.E);
    linear_forward(out, ld_out, s->o, m.E, w->out_proj, NULL, n_tok, m.E, m.d);
}

// Backward of the gate: dy = do·silu(z); dz = do·(y + attn·E)·silu'(z) into the
// z half of dxz (=); dattn += do·E·silu(z); dE += Σ_t do·attn·silu(z).
static void gate_backward(float *dy, float *dxz, float *dattn, float *dE, const float *do_,
                          const float *y, const float *xz, const float *attn, const float *Ev,
                          int n_tok, int E) {
    int n_chunk = (n_tok + ROW_CHUNK - 1) / ROW_CHUNK;
    double *part = attn && dE ? xcalloc((size_t)n_chunk * E, sizeof(double)) : NULL;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < n_chunk; ch++) {
        int t1 = (ch + 1) * ROW_CHUNK < n_tok ? (ch + 1) * ROW_CHUNK : n_tok;
        for (int t = ch * ROW_CHUNK; t < t1; t++) {
            const float *z = xz + (size_t)t * 2 * E + E;
            float *dz = dxz + (size_t)t * 2 * E + E;
            for (int c = 0; c < E; c++) {
                size_t i = (size_t)t * E + c;
                float g = hax_silu(z[c]), dg = hax_dsilu(z[c]);
                float v = y[i];
                if (attn) {
                    v += attn[i] * Ev[c];
                    if (dattn) dattn[i] += do_[i] * Ev[c] * g;
                    if (part) part[(size_t)ch * E + c] += (double)do_[i] * attn[i] * g;
                }
                dy[i] = do_[i] * g;
                dz[c] = do_[i] * v * dg;
            }
        }
    }
    if (part) {
        for (int c = 0; c < E; c++) {
            double acc = 0;
            for (int ch = 0; ch < n_chunk; ch++) acc += part[(size_t)ch * E + c];
            dE[c] += (float)acc;
        }
        free(part);
    }
}

void mamba_post_backward(mamba_bwd *s, float *dattn, const float *dout, int ld_dout,
                         const mamba_acts *acts, const float *attn, const mamba_params *w,
                         mamba_grads *gr, const hax_model_config *cfg, const int *seq_off,
                         int n_seq, int n_tok) {
    mamba_dims m = dims_of(cfg);
    check_batch(seq_off, n_seq, n_tok);
    size_t nE = (size_t)n_tok * m.E;
    const float *xd = acts->x_dbl;
    // out_proj (its input o is recomputed rather than kept per layer)
    gate_forward(s->o, acts->y, acts->xz, attn, w->E, n_tok, m.E);
    memset(s->do_, 0, sizeof(float) * nE);
    linear_backward(s->do_, m.E, gr->out_proj, NULL, dout, ld_dout, s->o, m.E, w->out_proj, n_tok, m.E, m.d);
    gate_backward(s->dy, s->dxz, dattn, gr->E, s->do_, acts->y, acts->xz, attn, w->E, n_tok, m.E);
    // scan → dX (=, from zero), dΔraw, dB, dC and the scan parameters
    memset(s->dX, 0, sizeof(float) * nE);
    memset(s->ddraw, 0, sizeof(float) * nE);
    memset(s->dx_dbl, 0, sizeof(float) * (size_t)n_tok * m.RN);
    scan_backward(s->dX, m.E, s->ddraw, s->dx_dbl + m.R, s->dx_dbl + m.R + m.N, m.RN, gr->dt_proj_b,
                  gr->A_log, gr->D, s->dy, acts->ckpt, acts->X, m.E, acts->draw, w->dt_proj_b, w->A_log,
                  xd + m.R, xd + m.R + m.N, m.RN, w->D, seq_off, n_seq, m.E, m.N);
    // dt_proj (its bias entered inside the scan) → dδ, then x_proj → dX
    linear_backward(s->dx_dbl, m.RN, gr->dt_proj_w, NULL, s->ddraw, m.E, xd, m.RN, w->dt_proj_w, n_tok,
                    m.R, m.E);
    linear_backward(s->dX, m.E, gr->x_proj, NULL, s->dx_dbl, m.RN, acts->X, m.E, w->x_proj, n_tok, m.E,
                    m.RN);
}

void mamba_pre_backward(float *da, int ld_da, mamba_bwd *s, const float *a, int ld_a,
                        const mamba_acts *acts, const mamba_params *w, mamba_grads *gr,
                        const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok) {
    mamba_dims m = dims_of(cfg);
    check_batch(seq_off, n_seq, n_tok);
    for (int t = 0; t < n_tok; t++) memset(s->dxz + (size_t)t * 2 * m.E, 0, sizeof(float) * m.E);
    conv_silu_backward(s->dxz, 2 * m.E, gr->conv_w, gr->conv_b, s->dX, acts->conv_pre, acts->xz, 2 * m.E,
                       w->conv_w, seq_off, n_seq, m.E, m.K);
    linear_backward(da, ld_da, gr->in_proj, NULL, s->dxz, 2 * m.E, a, ld_a, w->in_proj, n_tok, m.d, 2 * m.E);
}
