// src/ops/attn.c: Samba's sliding-window attention with RoPE (see src/ops/attn.h).
//
// Forward keeps q, k (rotated), v, the output o and each query's log-sum-exp;
// backward recomputes the probabilities of a query's window from them
// (flash-attention style), so nothing of size n·W is stored.
#include "src/ops/attn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/ops/basic.h"
#include "src/ops/linear.h"

size_t attn_acts_floats(const hax_model_config *cfg, int n_tok) {
    return 4 * (size_t)n_tok * cfg->hidden_size + (size_t)n_tok * cfg->attn_heads;
}

void attn_acts_assign(attn_acts *acts, float *buf, const hax_model_config *cfg, int n_tok) {
    size_t nd = (size_t)n_tok * cfg->hidden_size;
    acts->q = buf;
    acts->k = buf + nd;
    acts->v = buf + 2 * nd;
    acts->o = buf + 3 * nd;
    acts->lse = buf + 4 * nd;
}

size_t attn_bwd_floats(const hax_model_config *cfg, int n_tok) {
    return 4 * (size_t)n_tok * cfg->hidden_size;
}

static void check_cfg(const hax_model_config *cfg) {
    int d = cfg->hidden_size, H = cfg->attn_heads;
    if (H <= 0 || d % H != 0 || (d / H) % 2 != 0)
        hax_die("ops_attn: attn_heads: expected a divisor of hidden_size %d with an even head size, found %d",
                d, H);
    if (cfg->attn_kv_heads != H)
        hax_die("ops_attn: attn_kv_heads: expected %d (= attn_heads), found %d", H, cfg->attn_kv_heads);
    if (cfg->window_size <= 0)
        hax_die("ops_attn: window_size: expected a positive number, found %d", cfg->window_size);
}

// inv_freq[i] = 1 / θ^(2i/hd) in float, as the reference computes it.
static void rope_inv_freq(float *inv, int hd, float theta) {
    for (int i = 0; i < hd / 2; i++) inv[i] = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
}

void rope_apply(float *x, int ld_x, const int *seq_off, int n_seq, int n_heads, int hd,
                float theta, int inverse, int bf16) {
    int half = hd / 2;
    float *inv = xmalloc((size_t)half * sizeof(float));
    rope_inv_freq(inv, hd, theta);
#pragma omp parallel for schedule(dynamic, 1)
    for (int s = 0; s < n_seq; s++)
        for (int t = seq_off[s]; t < seq_off[s + 1]; t++) {
            float pos = (float)(t - seq_off[s]);
            for (int i = 0; i < half; i++) {
                float ang = pos * inv[i], c = cosf(ang), sn = sinf(ang);
                if (bf16) c = hax_bf16_round(c), sn = hax_bf16_round(sn);  // the bf16 cos/sin cache
                if (inverse) sn = -sn;
                for (int h = 0; h < n_heads; h++) {
                    float *xh = x + (size_t)t * ld_x + h * hd;
                    float x1 = xh[i], x2 = xh[i + half];
                    xh[i] = x1 * c - x2 * sn;
                    xh[i + half] = x2 * c + x1 * sn;
                    if (bf16) xh[i] = hax_bf16_round(xh[i]), xh[i + half] = hax_bf16_round(xh[i + half]);
                }
            }
        }
    free(inv);
}

static inline float dot_(const float *a, const float *b, int n) {
    float acc = 0.0f;
    for (int i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

// Forward of one head of one sequence (rows t0..t1-1); sc holds W floats.
static void attn_head_forward(attn_acts *acts, int d, int H, int hd, int W, float scale, int t0,
                              int t1, int h, float *sc) {
    for (int t = t0; t < t1; t++) {
        int j0 = t - W + 1 > t0 ? t - W + 1 : t0;
        const float *qt = acts->q + (size_t)t * d + h * hd;
        float m = -INFINITY;
        for (int j = j0; j <= t; j++) {
            sc[j - j0] = scale * dot_(qt, acts->k + (size_t)j * d + h * hd, hd);
            if (sc[j - j0] > m) m = sc[j - j0];
        }
        double sum = 0.0;
        for (int j = j0; j <= t; j++) {
            sc[j - j0] = expf(sc[j - j0] - m);
            sum += sc[j - j0];
        }
        float *ot = acts->o + (size_t)t * d + h * hd;
        float rs = (float)(1.0 / sum);
        for (int i = 0; i < hd; i++) {
            float acc = 0.0f;
            for (int j = j0; j <= t; j++) acc += sc[j - j0] * acts->v[(size_t)j * d + h * hd + i];
            ot[i] = acc * rs;
        }
        acts->lse[(size_t)t * H + h] = m + (float)log(sum);
    }
}

void attn_forward(float *out, int ld_out, attn_acts *acts, const float *a, int ld_a,
                  const attn_params *w, const hax_model_config *cfg, const int *seq_off, int n_seq) {
    check_cfg(cfg);
    int n = seq_off[n_seq], d = cfg->hidden_size, H = cfg->attn_heads, hd = d / H;
    int W = cfg->window_size;
    float scale = 1.0f / sqrtf((float)hd);
    int bf16 = cfg->precision == PREC_BF16_PURE;
    size_t nd = (size_t)n * d;
    linear_forward(acts->q, d, a, ld_a, w->q_proj, NULL, n, d, d);
    linear_forward(acts->k, d, a, ld_a, w->k_proj, NULL, n, d, d);
    linear_forward(acts->v, d, a, ld_a, w->v_proj, NULL, n, d, d);
    if (bf16) {
        round_bf16(acts->q, acts->q, (long)nd);
        round_bf16(acts->k, acts->k, (long)nd);
        round_bf16(acts->v, acts->v, (long)nd);
    }
    rope_apply(acts->q, d, seq_off, n_seq, H, hd, cfg->rope_theta, 0, bf16);
    rope_apply(acts->k, d, seq_off, n_seq, H, hd, cfg->rope_theta, 0, bf16);
#pragma omp parallel
    {
        float *sc = xmalloc((size_t)W * sizeof(float));
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int s = 0; s < n_seq; s++)
            for (int h = 0; h < H; h++)
                attn_head_forward(acts, d, H, hd, W, scale, seq_off[s], seq_off[s + 1], h, sc);
        free(sc);
    }
    if (bf16) round_bf16(acts->o, acts->o, (long)nd);  // flash-attn's bf16 output
    linear_forward(out, ld_out, acts->o, d, w->o_proj, NULL, n, d, d);
}

// Backward of one head of one sequence. With P_tj = exp(s_tj − lse_t):
//   dv_j += Σ_t P_tj do_t;  dS_tj = P_tj (do_t·v_j − do_t·o_t);
//   dq_t += scale Σ_j dS_tj k_j;  dk_j += scale Σ_t dS_tj q_t.
// Every write goes to this head's columns of this sequence's rows.
static void attn_head_backward(float *dq, float *dk, float *dv, const float *dO,
                               const attn_acts *acts, int d, int H, int hd, int W, float scale,
                               int t0, int t1, int h) {
    for (int t = t0; t < t1; t++) {
        int j0 = t - W + 1 > t0 ? t - W + 1 : t0;
        size_t rt = (size_t)t * d + h * hd;
        const float *qt = acts->q + rt, *dot = dO + rt;
        float Dt = dot_(dot, acts->o + rt, hd), lse = acts->lse[(size_t)t * H + h];
        for (int j = j0; j <= t; j++) {
            size_t rj = (size_t)j * d + h * hd;
            const float *kj = acts->k + rj;
            float p = expf(scale * dot_(qt, kj, hd) - lse);
            float ds = p * (dot_(dot, acts->v + rj, hd) - Dt) * scale;
            for (int i = 0; i < hd; i++) {
                dq[rt + i] += ds * kj[i];
                dk[rj + i] += ds * qt[i];
                dv[rj + i] += p * dot[i];
            }
        }
    }
}

void attn_backward(float *da, int ld_da, attn_grads *gr, float *scratch, const float *dout,
                   int ld_dout, const float *a, int ld_a, const attn_acts *acts,
                   const attn_params *w, const hax_model_config *cfg, const int *seq_off,
                   int n_seq) {
    check_cfg(cfg);
    int n = seq_off[n_seq], d = cfg->hidden_size, H = cfg->attn_heads, hd = d / H;
    int W = cfg->window_size;
    float scale = 1.0f / sqrtf((float)hd);
    size_t nd = (size_t)n * d;
    float *dO = scratch, *dq = scratch + nd, *dk = scratch + 2 * nd, *dv = scratch + 3 * nd;
    int bf16 = cfg->precision == PREC_BF16_PURE;
    memset(scratch, 0, 4 * nd * sizeof(float));
    linear_backward(dO, d, gr->o_proj, NULL, dout, ld_dout, acts->o, d, w->o_proj, n, d, d);
    if (bf16) round_bf16(dO, dO, (long)nd);
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
    for (int s = 0; s < n_seq; s++)
        for (int h = 0; h < H; h++)
            attn_head_backward(dq, dk, dv, dO, acts, d, H, hd, W, scale, seq_off[s],
                               seq_off[s + 1], h);
    if (bf16) {  // flash-attn's bf16 dq, dk, dv
        round_bf16(dq, dq, (long)nd);
        round_bf16(dk, dk, (long)nd);
        round_bf16(dv, dv, (long)nd);
    }
    // The rotation is orthogonal: its backward is its inverse.
    rope_apply(dq, d, seq_off, n_seq, H, hd, cfg->rope_theta, 1, bf16);
    rope_apply(dk, d, seq_off, n_seq, H, hd, cfg->rope_theta, 1, bf16);
    if (!bf16) {
        linear_backward(da, ld_da, gr->q_proj, NULL, dq, d, a, ld_a, w->q_proj, n, d, d);
        linear_backward(da, ld_da, gr->k_proj, NULL, dk, d, a, ld_a, w->k_proj, n, d, d);
        linear_backward(da, ld_da, gr->v_proj, NULL, dv, d, a, ld_a, w->v_proj, n, d, d);
        return;
    }
    // bf16-pure: da receives three bf16 contributions, added in autograd's
    // order for fla's Attention (v, k, q: the later-created nodes run first);
    // dO's slot is free for each share
    const float *dsrc[3] = {dv, dk, dq}, *wsrc[3] = {w->v_proj, w->k_proj, w->q_proj};
    float *gdst[3] = {gr->v_proj, gr->k_proj, gr->q_proj};
    for (int i = 0; i < 3; i++) {
        memset(dO, 0, nd * sizeof(float));
        linear_backward(da ? dO : NULL, d, gdst[i], NULL, dsrc[i], d, a, ld_a, wsrc[i], n, d, d);
        if (da) add_bf16_rows(da, ld_da, dO, d, d, n);
    }
}
