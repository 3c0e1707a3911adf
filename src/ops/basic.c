// src/ops/basic.c: see src/ops/basic.h.
#include "src/ops/basic.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/ops/linear.h"

// Reductions over rows (the weight gradients of the norms) go through chunks
// of this many rows: each chunk's partial is computed by one thread, and the
// partials are added in chunk order, so the result never depends on the
// thread count.
#define ROW_CHUNK 64

static int min_int(int a, int b) { return a < b ? a : b; }

// ---------------------------------------------------------------- bf16 emulation

void round_bf16(float *out, const float *x, long n) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (long i = 0; i < n; i++) out[i] = hax_bf16_round(x[i]);
}

void round_bf16_rows(float *x, int ld, int width, int rows) {
    for (int t = 0; t < rows; t++) round_bf16(x + (size_t)t * ld, x + (size_t)t * ld, width);
}

void add_bf16_rows(float *dst, int ld_dst, const float *src, int ld_src, int width, int rows) {
#pragma omp parallel for schedule(static) if ((long)rows * width > (1 << 16))
    for (int t = 0; t < rows; t++)
        for (int j = 0; j < width; j++) {
            float *d = dst + (size_t)t * ld_dst + j;
            *d = hax_bf16_round(*d + hax_bf16_round(src[(size_t)t * ld_src + j]));
        }
}

// ---------------------------------------------------------------- embedding

void embedding_forward(float *out, const int32_t *ids, const float *W_emb, int n_tok, int d, int V) {
    for (int t = 0; t < n_tok; t++)
        if (ids[t] < 0 || ids[t] >= V)
            hax_die("embedding: token id at position %d: expected 0..%d, found %d", t, V - 1, (int)ids[t]);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n_tok; t++)
        memcpy(out + (size_t)t * d, W_emb + (size_t)ids[t] * d, sizeof(float) * d);
}

void embedding_backward(float *dW_emb, const float *dout, const int32_t *ids, int n_tok, int d) {
    // Rows are added in token order (several tokens share an id): sequential on
    // purpose, it is a few adds per token.
    for (int t = 0; t < n_tok; t++) {
        float *dst = dW_emb + (size_t)ids[t] * d;
        const float *src = dout + (size_t)t * d;
        for (int j = 0; j < d; j++) dst[j] += src[j];
    }
}

// ---------------------------------------------------------------- RMSNorm

static float row_rstd(const float *x, int d, float eps) {
    double ss = 0;
    for (int j = 0; j < d; j++) ss += (double)x[j] * x[j];
    return (float)(1.0 / sqrt(ss / d + eps));
}

void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int n, int d, float eps) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *oi = out + (size_t)i * d;
        float r = row_rstd(xi, d, eps);
        if (rstd) rstd[i] = r;
        for (int j = 0; j < d; j++) oi[j] = xi[j] * r * w[j];
    }
}

// Gradient of one row of y = x·r·w with r = 1/sqrt(mean(x²)+eps), written to g
// (=): g = r·(dy·w − x·r²·mean(dy·w·x)). Adds dy·x·r into the chunk's dw partial.
static void rmsnorm_row_backward(float *g, double *dw_part, const float *dy, const float *x, float r,
                                 const float *w, int d) {
    double dot = 0;
    for (int j = 0; j < d; j++) dot += (double)dy[j] * w[j] * x[j];
    float c = (float)(dot / d) * r * r;
    for (int j = 0; j < d; j++) g[j] = r * (dy[j] * w[j] - x[j] * c);
    if (dw_part)
        for (int j = 0; j < d; j++) dw_part[j] += (double)dy[j] * x[j] * r;
}

// See basic.h.
void add_partials(float *dw, const double *part, int n_chunk, int d) {
    for (int j = 0; j < d; j++) {
        double acc = 0;
        for (int ch = 0; ch < n_chunk; ch++) acc += part[(size_t)ch * d + j];
        dw[j] += (float)acc;
    }
}

// The plain RMSNorm's backward is the fused one's with no residual (s = x):
// the same per-row gradients, added to dx alone.
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *rstd,
                      const float *w, int n, int d) {
    add_rmsnorm_backward(dx, NULL, dw, dout, NULL, x, rstd, w, n, d);
}

// ---------------------------------------------------------------- fused add + RMSNorm

void add_rmsnorm_forward(float *out, float *s, float *rstd, const float *x, const float *residual,
                         const float *w, int n, int d, float eps) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        size_t o = (size_t)i * d;
        for (int j = 0; j < d; j++) s[o + j] = x[o + j] + residual[o + j];
        float r = row_rstd(s + o, d, eps);
        if (rstd) rstd[i] = r;
        for (int j = 0; j < d; j++) out[o + j] = s[o + j] * r * w[j];
    }
}

void add_rmsnorm_backward(float *dx, float *dresidual, float *dw, const float *dout, const float *ds,
                          const float *s, const float *rstd, const float *w, int n, int d) {
    int n_chunk = (n + ROW_CHUNK - 1) / ROW_CHUNK;
    double *part = dw ? xcalloc((size_t)n_chunk * d, sizeof(double)) : NULL;
#pragma omp parallel
    {
        float *g = xmalloc(sizeof(float) * d);
#pragma omp for schedule(static)
        for (int ch = 0; ch < n_chunk; ch++) {
            for (int i = ch * ROW_CHUNK; i < min_int(n, (ch + 1) * ROW_CHUNK); i++) {
                size_t o = (size_t)i * d;
                rmsnorm_row_backward(g, part ? part + (size_t)ch * d : NULL, dout + o, s + o, rstd[i], w, d);
                if (ds)
                    for (int j = 0; j < d; j++) g[j] += ds[o + j];
                // dx and dresidual may be one buffer (then it gets 2g, as it should).
                if (dx)
                    for (int j = 0; j < d; j++) dx[o + j] += g[j];
                if (dresidual)
                    for (int j = 0; j < d; j++) dresidual[o + j] += g[j];
            }
        }
        free(g);
    }
    if (dw) add_partials(dw, part, n_chunk, d);
    free(part);
}

// ---------------------------------------------------------------- logits

void logits_forward(float *logits, const float *h, const float *W_emb, int n, int d, int V) {
    linear_forward(logits, V, h, d, W_emb, NULL, n, d, V);
}

void logits_backward(float *dh, float *dW_emb, const float *dlogits, const float *h,
                     const float *W_emb, int n, int d, int V) {
    linear_backward(dh, d, dW_emb, NULL, dlogits, V, h, d, W_emb, n, d, V);
}

// ---------------------------------------------------------------- cross-entropy

// log Σ_v exp(l_v), with the maximum taken out; also the first argmax.
static double row_logsumexp(const float *l, int V, int *argmax) {
    int am = 0;
    for (int v = 1; v < V; v++)
        if (l[v] > l[am]) am = v;
    double m = l[am], sum = 0;
    for (int v = 0; v < V; v++) sum += exp((double)l[v] - m);
    if (argmax) *argmax = am;
    return m + log(sum);
}

static void check_labels(const int32_t *labels, const uint8_t *mask, int t0, int t1, int V) {
    for (int t = t0; t < t1; t++)
        if ((!mask || mask[t]) && (labels[t] < 0 || labels[t] >= V))
            hax_die("cross-entropy: label at scored position %d: expected 0..%d, found %d", t, V - 1,
                    (int)labels[t]);
}

double ce_forward(const float *logits, const int32_t *labels, const uint8_t *mask,
                  const int *seq_off, int n_seq, int V, int *correct, int *count) {
    check_labels(labels, mask, seq_off[0], seq_off[n_seq], V);
    double *loss = xcalloc((size_t)(n_seq > 0 ? n_seq : 1), sizeof(double));
#pragma omp parallel for schedule(dynamic, 1)
    for (int s = 0; s < n_seq; s++) {
        int n_correct = 0, n_scored = 0;
        double acc = 0;
        for (int t = seq_off[s]; t < seq_off[s + 1]; t++) {
            if (mask && !mask[t]) continue;
            const float *l = logits + (size_t)t * V;
            int am;
            double lse = row_logsumexp(l, V, &am);
            acc += lse - (double)l[labels[t]];
            n_correct += am == labels[t];
            n_scored++;
        }
        loss[s] = acc;
        if (correct) correct[s] = n_correct;
        if (count) count[s] = n_scored;
    }
    double total = 0;
    for (int s = 0; s < n_seq; s++) total += loss[s];
    free(loss);
    return total;
}

// One scored row of the fp32 backward: (softmax − onehot) · scale.
static void ce_row(float *dl, const float *l, int label, int V, float scale) {
    double lse = row_logsumexp(l, V, NULL);
    for (int v = 0; v < V; v++) dl[v] = (float)exp((double)l[v] - lse) * scale;
    dl[label] -= scale;
}

// bf16-pure: torch's cross_entropy on bf16 logits, op by op. log_softmax stores
// bf16(x − max − log Σ exp(x − max)) (fp32 inside); nll_loss's backward writes
// −G at the label, G = scale (bf16(1 / bf16(N)), hax_ce_grad_scale); the
// log_softmax backward gives g − exp(logp) · Σg in fp32 (one FMA on the GPU),
// stored bf16: exp(logp) · G off the label, exp(logp) · G − G on it.
static void ce_row_bf16(float *dl, const float *l, int label, int V, float scale) {
    float mx = l[0];
    for (int v = 1; v < V; v++) mx = fmaxf(mx, l[v]);
    double sum = 0.0;
    for (int v = 0; v < V; v++) sum += exp((double)(l[v] - mx));
    float log_sum = (float)log(sum);
    for (int v = 0; v < V; v++) {
        float p = expf(hax_bf16_round((l[v] - mx) - log_sum));
        dl[v] = hax_bf16_round(v == label ? fmaf(p, scale, -scale) : p * scale);
    }
}

static void ce_rows(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask, int n_tok,
                    int V, float scale, int bf16) {
    check_labels(labels, mask, 0, n_tok, V);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n_tok; t++) {
        float *dl = dlogits + (size_t)t * V;
        if (mask && !mask[t])
            memset(dl, 0, sizeof(float) * V);
        else if (bf16)
            ce_row_bf16(dl, logits + (size_t)t * V, labels[t], V, scale);
        else
            ce_row(dl, logits + (size_t)t * V, labels[t], V, scale);
    }
}

void ce_backward(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask,
                 int n_tok, int V, float scale) {
    ce_rows(dlogits, logits, labels, mask, n_tok, V, scale, 0);
}

void ce_backward_bf16(float *dlogits, const float *logits, const int32_t *labels, const uint8_t *mask,
                      int n_tok, int V, float scale) {
    ce_rows(dlogits, logits, labels, mask, n_tok, V, scale, 1);
}

// ---------------------------------------------------------------------------
// Gated RMSNorm

void gated_norm_forward(float *out, int ld_out, float *rstd, const float *y, int ld_y,
                        const float *z, int ld_z, const float *w, int n, int E, float eps) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        const float *yt = y + (size_t)t * ld_y, *zt = z + (size_t)t * ld_z;
        float *ot = out + (size_t)t * ld_out;
        double ss = 0.0;
        for (int c = 0; c < E; c++) {
            float v = yt[c] * (zt[c] * hax_sigmoid(zt[c]));
            ot[c] = v;
            ss += (double)v * v;
        }
        float r = (float)(1.0 / sqrt(ss / E + (double)eps));
        if (rstd) rstd[t] = r;
        for (int c = 0; c < E; c++) ot[c] = ot[c] * r * w[c];
    }
}

#define GN_BLOCK 256  // rows per partial sum of dw (fixed, so dw does not depend on threads)

void gated_norm_backward(float *dy, int ld_dy, float *dz, int ld_dz, float *dw, const float *dout,
                         int ld_dout, const float *rstd, const float *y, int ld_y, const float *z,
                         int ld_z, const float *w, int n, int E) {
    int nb = (n + GN_BLOCK - 1) / GN_BLOCK;
    double *part = dw ? xcalloc((size_t)nb * E, sizeof(double)) : NULL;
#pragma omp parallel for schedule(dynamic, 1)
    for (int b = 0; b < nb; b++) {
        int t1 = (b + 1) * GN_BLOCK < n ? (b + 1) * GN_BLOCK : n;
        for (int t = b * GN_BLOCK; t < t1; t++) {
            const float *yt = y + (size_t)t * ld_y, *zt = z + (size_t)t * ld_z;
            const float *dot = dout + (size_t)t * ld_dout;
            float r = rstd[t];
            // v = y silu(z); out = v r w;  dv = r w do − v r³/E Σ_j w_j do_j v_j
            double s = 0.0;
            for (int c = 0; c < E; c++) {
                float v = yt[c] * (zt[c] * hax_sigmoid(zt[c]));
                s += (double)w[c] * dot[c] * v;
                if (part) part[(size_t)b * E + c] += (double)dot[c] * v * r;
            }
            float k = (float)(s * (double)r * r * r / E);
            for (int c = 0; c < E; c++) {
                float sg = hax_sigmoid(zt[c]), sl = zt[c] * sg;
                float v = yt[c] * sl;
                float dv = r * w[c] * dot[c] - v * k;
                if (dy) dy[(size_t)t * ld_dy + c] += dv * sl;
                if (dz) dz[(size_t)t * ld_dz + c] += dv * yt[c] * sg * (1.0f + zt[c] * (1.0f - sg));
            }
        }
    }
    if (dw) add_partials(dw, part, nb, E);
    free(part);
}
