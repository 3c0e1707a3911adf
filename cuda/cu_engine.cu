// cu_engine.cu: see cu_engine.h. The structure follows engine_cpu.c and
// src/mixer_mamba*.c step by step, with device buffers and the cuda_* ops.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cu_adamw.h"
#include "cu_basic.h"
#include "cu_common.cuh"
#include "cu_conv.h"
#include "cu_engine.h"
#include "cu_linear.h"
#include "cu_scan.h"

// ---------------------------------------------------------------- small kernels

// out = a + b (n floats): the residual stream.
__global__ static void add_kernel(float *out, const float *a, const float *b, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// Mamba gate: o = y·silu(z), z = xz[:, E:2E].
__global__ static void gate_fwd_kernel(float *o, const float *y, const float *xz, int n, int E) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * E) return;
    int t = (int)(i / E), c = (int)(i % E);
    o[i] = y[i] * cu_silu(xz[(size_t)t * 2 * E + E + c]);
}

// Its backward: dy = do·silu(z) (=), dz = do·y·silu'(z) into xz's z half (=).
__global__ static void gate_bwd_kernel(float *dy, float *dxz, const float *do_, const float *y, const float *xz,
                                       int n, int E) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n * E) return;
    int t = (int)(i / E), c = (int)(i % E);
    float z = xz[(size_t)t * 2 * E + E + c];
    dy[i] = do_[i] * cu_silu(z);
    dxz[(size_t)t * 2 * E + E + c] = do_[i] * y[i] * cu_dsilu(z);
}

// ---------------------------------------------------------------- state

#define CU_MAX_GRAPHS 64  // graphs kept (one per padded batch shape)
#define CU_BUCKET 256     // graph steps pad the packed positions to a multiple of this

typedef struct {
    float *hin, *a, *rstd;                                  // block input, normed input, its 1/rms
    float *xz, *conv_pre, *X, *x_dbl, *draw, *y, *ckpt;     // Mamba (mixer_mamba.h names)
    float *p, *xbc_pre, *xbc, *delta, *grstd, *g;           // Mamba-2 (mixer_mamba2.h names; y, ckpt shared)
} cu_layer;

typedef struct {
    const hax_model_config *cfg;
    float *w, *gr;            // device parameters and gradients [n_floats]
    int resident;             // 1 after push: the device weights are the master copy
    float *am, *av;           // device AdamW moments [n_floats] (resident mode)
    cuda_adamw_hp *hp;        // device AdamW scalars of the current step
    int *flag;                // device finiteness flag
    // graph steps (engine_cuda_train_step): the batch padded to a bucket, the
    // CE scale on the device, and the graphs captured per padded shape
    hax_batch pad;
    int pad_cap_tok, pad_cap_seq;
    float *ce_scale;
    cuda_adamw_hp hp_host;
    float ce_scale_host;
    struct { int n, n_seq; void *exec; } graphs[CU_MAX_GRAPHS];
    int n_graphs, graph_launches;
    float *host_g;            // host staging of the gradients
    int cap_tok, cap_seq;     // the batch capacity of the buffers below
    float *arena;             // activations
    void *work;               // op workspaces (used one op at a time)
    int32_t *ids, *labels;
    uint8_t *mask;
    int *seq_off;
    double *loss;
    int *correct, *count;     // device [cap_seq]
    int *h_correct, *h_count; // host [cap_seq]
    cu_layer *L;
    float *hlast, *hf, *rstd_f, *logits, *dlogits, *dh, *dh2, *da, *tmp;
    float *o, *do_, *dy, *ddraw, *dx_dbl, *dxz, *dX;  // Mamba backward scratch (o also in forward)
    float *dp, *dxbc, *dg;                            // Mamba-2 backward scratch (dy shared)
    float *h_hidden, *h_logits;                       // host copies, made on request
    int hidden_ok, logits_ok;
    const hax_batch *batch;
    int n_tok;
    double ce_count;
} cu_impl;

static float *dev_w(const cu_impl *c, const hax_model *m, int idx) {
    return idx < 0 ? NULL : c->w + m->params[idx].offset;
}
static float *dev_g(const cu_impl *c, const hax_model *m, int idx) {
    return idx < 0 ? NULL : c->gr + m->params[idx].offset;
}

static float *take(float **cur, size_t n) {
    float *p = *cur;
    *cur += (n + 63) / 64 * 64;  // 256-byte alignment for every buffer
    return p;
}

// Lays out (arena != NULL) or sizes (arena == NULL) the activations for n
// positions in n_seq sequences; returns the floats needed.
static size_t layout(cu_impl *c, const hax_model *m, int n, int n_seq, float *arena) {
    const hax_model_config *cfg = &m->cfg;
    int d = cfg->hidden_size, E = cfg->intermediate_size, N = cfg->state_size, V = cfg->vocab_size;
    int RN = cfg->time_step_rank + 2 * N, cd = m->conv_dim, W = m->in_proj_dim, H = cfg->n_heads;
    int mamba2 = cfg->arch == ARCH_MAMBA2;
    float *cur = arena;
    size_t used = 0;
#define TAKE(n_) (used += ((size_t)(n_) + 63) / 64 * 64, arena ? take(&cur, (size_t)(n_)) : NULL)
    for (int l = 0; l < cfg->n_layers; l++) {
        cu_layer *L = &c->L[l];
        L->hin = TAKE((size_t)n * d);
        L->a = TAKE((size_t)n * d);
        L->rstd = TAKE(n);
        L->y = TAKE((size_t)n * E);
        if (mamba2) {
            L->p = TAKE((size_t)n * W);
            L->xbc_pre = TAKE((size_t)n * cd);
            L->xbc = TAKE((size_t)n * cd);
            L->delta = TAKE((size_t)n * H);
            L->grstd = TAKE(n);
            L->g = TAKE((size_t)n * E);
            L->ckpt = TAKE(cuda_ssd_ckpt_floats(n, n_seq, H, cfg->head_dim, N));
        } else {
            L->xz = TAKE((size_t)n * 2 * E);
            L->conv_pre = TAKE((size_t)n * E);
            L->X = TAKE((size_t)n * E);
            L->x_dbl = TAKE((size_t)n * RN);
            L->draw = TAKE((size_t)n * E);
            L->ckpt = TAKE(cuda_scan_ckpt_floats(n, n_seq, E, N));
        }
    }
    c->hlast = TAKE((size_t)n * d);
    c->hf = TAKE((size_t)n * d);
    c->rstd_f = TAKE(n);
    c->logits = TAKE((size_t)n * V);
    c->dlogits = TAKE((size_t)n * V);
    c->dh = TAKE((size_t)n * d);
    c->dh2 = TAKE((size_t)n * d);
    c->da = TAKE((size_t)n * d);
    c->tmp = TAKE((size_t)n * d);
    c->dy = TAKE((size_t)n * E);
    if (mamba2) {
        c->dp = TAKE((size_t)n * W);
        c->dxbc = TAKE((size_t)n * cd);
        c->dg = TAKE((size_t)n * E);
    } else {
        c->o = TAKE((size_t)n * E);
        c->do_ = TAKE((size_t)n * E);
        c->ddraw = TAKE((size_t)n * E);
        c->dx_dbl = TAKE((size_t)n * RN);
        c->dxz = TAKE((size_t)n * 2 * E);
        c->dX = TAKE((size_t)n * E);
    }
#undef TAKE
    return used;
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

// Bytes of the largest op workspace for n positions in n_seq sequences.
static size_t work_bytes(const hax_model *m, int n, int n_seq) {
    const hax_model_config *cfg = &m->cfg;
    int d = cfg->hidden_size, E = cfg->intermediate_size, N = cfg->state_size, V = cfg->vocab_size;
    size_t w = cuda_norm_workspace_bytes(n, d > E ? d : E);
    w = max_sz(w, cuda_conv_workspace_bytes(n, n_seq, m->conv_dim, cfg->conv_kernel));
    w = max_sz(w, cuda_ce_workspace_bytes(n, n_seq));
    w = max_sz(w, cuda_embedding_workspace_bytes(n, d, V));
    if (cfg->arch == ARCH_MAMBA2) w = max_sz(w, cuda_ssd_workspace_bytes(n, n_seq, cfg->n_heads, cfg->head_dim, N));
    else w = max_sz(w, cuda_scan_workspace_bytes(n, n_seq, E, N));
    return w;
}

static void graphs_free(cu_impl *c);

// (Re)allocates every batch-sized buffer for n_tok positions, n_seq sequences.
static void reserve(cu_impl *c, const hax_model *m, int n_tok, int n_seq) {
    if (n_tok <= c->cap_tok && n_seq <= c->cap_seq && c->arena) return;
    if (n_tok > c->cap_tok) c->cap_tok = n_tok;
    if (n_seq > c->cap_seq) c->cap_seq = n_seq;
    cuda_sync();  // nothing may still use the old buffers
    graphs_free(c);  // captured steps point into the old buffers
    cuda_free(c->arena), cuda_free(c->work), cuda_free(c->ids), cuda_free(c->labels), cuda_free(c->mask);
    cuda_free(c->seq_off), cuda_free(c->correct), cuda_free(c->count);
    free(c->h_correct), free(c->h_count), free(c->h_hidden), free(c->h_logits);
    // Sized for the worst split of cap_tok positions (checkpoints grow with n_seq).
    c->arena = (float *)cuda_malloc(sizeof(float) * layout(c, m, c->cap_tok, c->cap_seq, NULL));
    c->work = cuda_malloc(work_bytes(m, c->cap_tok, c->cap_seq));
    c->ids = (int32_t *)cuda_malloc(sizeof(int32_t) * c->cap_tok);
    c->labels = (int32_t *)cuda_malloc(sizeof(int32_t) * c->cap_tok);
    c->mask = (uint8_t *)cuda_malloc(c->cap_tok);
    c->seq_off = (int *)cuda_malloc(sizeof(int) * (c->cap_seq + 1));
    c->correct = (int *)cuda_malloc(sizeof(int) * c->cap_seq);
    c->count = (int *)cuda_malloc(sizeof(int) * c->cap_seq);
    c->h_correct = (int *)xmalloc(sizeof(int) * c->cap_seq);
    c->h_count = (int *)xmalloc(sizeof(int) * c->cap_seq);
    c->h_hidden = (float *)xmalloc(sizeof(float) * (size_t)c->cap_tok * m->cfg.hidden_size);
    c->h_logits = (float *)xmalloc(sizeof(float) * (size_t)c->cap_tok * m->cfg.vocab_size);
}

// ---------------------------------------------------------------- forward

static void launch_add(float *out, const float *a, const float *b, long n) {
    add_kernel<<<cu_blocks(n, 256), 256, 0, cu_stream()>>>(out, a, b, n);
    CUDA_LAUNCHED();
}

static void mixer_forward(cu_impl *c, const hax_model *m, int l, int n, int n_seq, float *out) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    cu_layer *L = &c->L[l];
    int d = cfg->hidden_size, E = cfg->intermediate_size, N = cfg->state_size, K = cfg->conv_kernel;
    if (cfg->arch == ARCH_MAMBA2) {
        int cd = m->conv_dim, W = m->in_proj_dim;
        cuda_linear_forward(L->p, W, L->a, d, dev_w(c, m, lp->in_proj), NULL, n, d, W);
        cuda_conv_silu_forward(L->xbc, L->xbc_pre, L->p + E, W, dev_w(c, m, lp->conv_w), dev_w(c, m, lp->conv_b),
                               c->seq_off, n_seq, n, cd, K);
        cuda_ssd_forward(L->y, E, L->delta, L->ckpt, L->xbc, cd, L->p + E + cd, W, L->xbc + E, L->xbc + E + N, cd,
                         dev_w(c, m, lp->dt_bias), dev_w(c, m, lp->A_log), dev_w(c, m, lp->D), c->seq_off, n_seq, n,
                         cfg->n_heads, cfg->head_dim, N);
        cuda_gated_norm_forward(L->g, E, L->grstd, L->y, E, L->p, W, dev_w(c, m, lp->gnorm), n, E, cfg->norm_eps);
        cuda_linear_forward(out, d, L->g, E, dev_w(c, m, lp->out_proj), NULL, n, E, d);
        return;
    }
    int R = cfg->time_step_rank, RN = R + 2 * N;
    cuda_linear_forward(L->xz, 2 * E, L->a, d, dev_w(c, m, lp->in_proj), NULL, n, d, 2 * E);
    cuda_conv_silu_forward(L->X, L->conv_pre, L->xz, 2 * E, dev_w(c, m, lp->conv_w), dev_w(c, m, lp->conv_b),
                           c->seq_off, n_seq, n, E, K);
    cuda_linear_forward(L->x_dbl, RN, L->X, E, dev_w(c, m, lp->x_proj), NULL, n, E, RN);
    cuda_linear_forward(L->draw, E, L->x_dbl, RN, dev_w(c, m, lp->dt_proj_w), NULL, n, R, E);
    cuda_scan_forward(L->y, L->ckpt, L->X, E, L->draw, dev_w(c, m, lp->dt_proj_b), dev_w(c, m, lp->A_log),
                      L->x_dbl + R, L->x_dbl + R + N, RN, dev_w(c, m, lp->D), c->seq_off, n_seq, n, E, N);
    gate_fwd_kernel<<<cu_blocks((long)n * E, 256), 256, 0, cu_stream()>>>(c->o, L->y, L->xz, n, E);
    CUDA_LAUNCHED();
    cuda_linear_forward(out, d, c->o, E, dev_w(c, m, lp->out_proj), NULL, n, E, d);
}

// Checks the batch, sizes the buffers and uploads its arrays (and the weights
// when they are not resident).
static void fwd_prepare(cu_impl *c, const hax_model *m, const hax_batch *b) {
    int n = b->n_tok, n_seq = b->n_seq;
    if (n_seq > 0 && (b->seq_off[0] != 0 || b->seq_off[n_seq] != n))
        hax_die("engine cuda: batch seq_off: expected 0 .. n_tok = %d, found %d .. %d", n, b->seq_off[0],
                b->seq_off[n_seq]);
    reserve(c, m, n, n_seq);
    layout(c, m, n, n_seq, c->arena);
    c->batch = b, c->n_tok = n, c->hidden_ok = c->logits_ok = 0;
    if (!c->resident) cuda_upload(c->w, m->data, sizeof(float) * m->n_floats);
    cuda_upload(c->ids, b->inputs, sizeof(int32_t) * n);
    cuda_upload(c->labels, b->labels, sizeof(int32_t) * n);
    if (b->loss_mask) cuda_upload(c->mask, b->loss_mask, n);
    cuda_upload(c->seq_off, b->seq_off, sizeof(int) * (n_seq + 1));
}

// The forward's kernels, embedding to cross-entropy (no host wait).
static void fwd_enqueue(cu_impl *c, const hax_model *m, const hax_batch *b) {
    const hax_model_config *cfg = &m->cfg;
    int n = b->n_tok, n_seq = b->n_seq, d = cfg->hidden_size, V = cfg->vocab_size;
    float *W_emb = dev_w(c, m, m->embeddings);
    cuda_embedding_forward(c->L[0].hin, c->ids, W_emb, n, d, V);
    for (int l = 0; l < cfg->n_layers; l++) {
        cu_layer *L = &c->L[l];
        float *next = l + 1 < cfg->n_layers ? c->L[l + 1].hin : c->hlast;
        cuda_rmsnorm_forward(L->a, L->rstd, L->hin, dev_w(c, m, m->layers[l].norm), n, d, cfg->norm_eps);
        mixer_forward(c, m, l, n, n_seq, c->tmp);
        launch_add(next, L->hin, c->tmp, (long)n * d);
    }
    cuda_rmsnorm_forward(c->hf, c->rstd_f, c->hlast, dev_w(c, m, m->norm_f), n, d, cfg->norm_eps);
    cuda_logits_forward(c->logits, c->hf, W_emb, n, d, V);
    cuda_ce_forward(c->loss, c->correct, c->count, c->logits, c->labels, b->loss_mask ? c->mask : NULL, c->seq_off,
                    n_seq, n, V, c->work);
}

// Waits for the forward and fills r from its device figures.
static void fwd_collect(cu_impl *c, const hax_batch *b, const hax_fwd_opts *o, hax_fwd_result *r) {
    int n_seq = b->n_seq;
    memset(r, 0, sizeof *r);
    cuda_download(&r->ce_sum, c->loss, sizeof(double));
    cuda_download(c->h_correct, c->correct, sizeof(int) * n_seq);
    cuda_download(c->h_count, c->count, sizeof(int) * n_seq);
    cuda_sync();
    // The rest exactly as engine_cpu.c (no sparse branch: no gate loss).
    double acc_sum = 0;
    for (int s = 0; s < n_seq; s++) {
        r->n_scored += c->h_count[s];
        r->correct += c->h_correct[s];
        if (c->h_count[s] > 0) acc_sum += (double)((float)c->h_correct[s] / (float)c->h_count[s]);
    }
    c->ce_count = o->ce_count > 0 ? o->ce_count : (double)r->n_scored;
    r->loss = c->ce_count > 0 ? r->ce_sum / c->ce_count : 0;
    r->acc = acc_sum / b->global_n_seq;
    r->gate_loss = 0;
    r->total_loss = r->loss;
}

static void cu_forward(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_fwd_result *r) {
    cu_impl *c = (cu_impl *)e->impl;
    fwd_prepare(c, e->model, b);
    fwd_enqueue(c, e->model, b);
    fwd_collect(c, b, o, r);
}

// ---------------------------------------------------------------- backward

// Mixer backward of layer l: dout [n, d] -> da (+=) and the layer's gradients.
static void mixer_backward(cu_impl *c, const hax_model *m, int l, int n, int n_seq, const float *dout, float *da) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    cu_layer *L = &c->L[l];
    int d = cfg->hidden_size, E = cfg->intermediate_size, N = cfg->state_size, K = cfg->conv_kernel;
    size_t nE = (size_t)n * E;
    if (cfg->arch == ARCH_MAMBA2) {
        int cd = m->conv_dim, W = m->in_proj_dim;
        cuda_zero(c->dg, sizeof(float) * nE);
        cuda_zero(c->dy, sizeof(float) * nE);
        cuda_zero(c->dp, sizeof(float) * (size_t)n * W);
        cuda_zero(c->dxbc, sizeof(float) * (size_t)n * cd);
        cuda_linear_backward(c->dg, E, dev_g(c, m, lp->out_proj), NULL, dout, d, L->g, E, dev_w(c, m, lp->out_proj),
                             n, E, d);
        cuda_gated_norm_backward(c->dy, E, c->dp, W, dev_g(c, m, lp->gnorm), c->dg, E, L->grstd, L->y, E, L->p, W,
                                 dev_w(c, m, lp->gnorm), n, E, c->work);
        cuda_ssd_backward(c->dxbc, cd, c->dp + E + cd, W, c->dxbc + E, c->dxbc + E + N, cd, dev_g(c, m, lp->dt_bias),
                          dev_g(c, m, lp->A_log), dev_g(c, m, lp->D), c->dy, E, L->delta, L->ckpt, L->xbc, cd,
                          L->p + E + cd, W, L->xbc + E, L->xbc + E + N, cd, dev_w(c, m, lp->dt_bias),
                          dev_w(c, m, lp->A_log), dev_w(c, m, lp->D), c->seq_off, n_seq, n, cfg->n_heads,
                          cfg->head_dim, N, c->work);
        cuda_conv_silu_backward(c->dp + E, W, dev_g(c, m, lp->conv_w), dev_g(c, m, lp->conv_b), c->dxbc, L->xbc_pre,
                                L->p + E, W, dev_w(c, m, lp->conv_w), c->seq_off, n_seq, n, cd, K, c->work);
        cuda_linear_backward(da, d, dev_g(c, m, lp->in_proj), NULL, c->dp, W, L->a, d, dev_w(c, m, lp->in_proj), n,
                             d, W);
        return;
    }
    int R = cfg->time_step_rank, RN = R + 2 * N;
    // out_proj (its input o is recomputed, as on the CPU)
    gate_fwd_kernel<<<cu_blocks((long)nE, 256), 256, 0, cu_stream()>>>(c->o, L->y, L->xz, n, E);
    CUDA_LAUNCHED();
    cuda_zero(c->do_, sizeof(float) * nE);
    cuda_linear_backward(c->do_, E, dev_g(c, m, lp->out_proj), NULL, dout, d, c->o, E, dev_w(c, m, lp->out_proj), n,
                         E, d);
    gate_bwd_kernel<<<cu_blocks((long)nE, 256), 256, 0, cu_stream()>>>(c->dy, c->dxz, c->do_, L->y, L->xz, n, E);
    CUDA_LAUNCHED();
    cuda_zero(c->dX, sizeof(float) * nE);
    cuda_zero(c->ddraw, sizeof(float) * nE);
    cuda_zero(c->dx_dbl, sizeof(float) * (size_t)n * RN);
    cuda_scan_backward(c->dX, E, c->ddraw, c->dx_dbl + R, c->dx_dbl + R + N, RN, dev_g(c, m, lp->dt_proj_b),
                       dev_g(c, m, lp->A_log), dev_g(c, m, lp->D), c->dy, L->ckpt, L->X, E, L->draw,
                       dev_w(c, m, lp->dt_proj_b), dev_w(c, m, lp->A_log), L->x_dbl + R, L->x_dbl + R + N, RN,
                       dev_w(c, m, lp->D), c->seq_off, n_seq, n, E, N, c->work);
    cuda_linear_backward(c->dx_dbl, RN, dev_g(c, m, lp->dt_proj_w), NULL, c->ddraw, E, L->x_dbl, RN,
                         dev_w(c, m, lp->dt_proj_w), n, R, E);
    cuda_linear_backward(c->dX, E, dev_g(c, m, lp->x_proj), NULL, c->dx_dbl, RN, L->X, E, dev_w(c, m, lp->x_proj), n,
                         E, RN);
    // the x half of dxz from zero (the z half was set by the gate)
    CUDA_CHECK(cudaMemset2DAsync(c->dxz, sizeof(float) * 2 * E, 0, sizeof(float) * E, n, cu_stream()));
    cuda_conv_silu_backward(c->dxz, 2 * E, dev_g(c, m, lp->conv_w), dev_g(c, m, lp->conv_b), c->dX, L->conv_pre,
                            L->xz, 2 * E, dev_w(c, m, lp->conv_w), c->seq_off, n_seq, n, E, K, c->work);
    cuda_linear_backward(da, d, dev_g(c, m, lp->in_proj), NULL, c->dxz, 2 * E, L->a, d, dev_w(c, m, lp->in_proj), n,
                         d, 2 * E);
}

// Multiplies x[0..n) by the device scalar *s (the CE normaliser of a graph
// step, which changes from step to step while the graph stays the same).
__global__ static void scale_kernel(float *x, long n, const float *s) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * *s;
}

// The backward's kernels. ce_scale_dev: NULL for the host scale 1/ce_count,
// else a device float that scales the CE gradient (graph steps).
static void bwd_enqueue(cu_impl *c, hax_model *m, const hax_batch *b, const float *ce_scale_dev) {
    const hax_model_config *cfg = &m->cfg;
    int n = b->n_tok, n_seq = b->n_seq, d = cfg->hidden_size, V = cfg->vocab_size;
    size_t nd = (size_t)n * d;
    float *W_emb = dev_w(c, m, m->embeddings), *dW_emb = dev_g(c, m, m->embeddings);
    cuda_zero(c->gr, sizeof(float) * m->n_floats);
    if (ce_scale_dev) {
        cuda_ce_backward(c->dlogits, c->logits, c->labels, b->loss_mask ? c->mask : NULL, n, V, 1.0f);
        scale_kernel<<<cu_blocks((long)n * V, 256), 256, 0, cu_stream()>>>(c->dlogits, (long)n * V, ce_scale_dev);
        CUDA_LAUNCHED();
    } else {
        cuda_ce_backward(c->dlogits, c->logits, c->labels, b->loss_mask ? c->mask : NULL, n, V,
                         c->ce_count > 0 ? (float)(1.0 / c->ce_count) : 0.0f);
    }
    cuda_zero(c->dh2, sizeof(float) * nd);
    cuda_logits_backward(c->dh2, dW_emb, c->dlogits, c->hf, W_emb, n, d, V);
    cuda_zero(c->dh, sizeof(float) * nd);
    cuda_rmsnorm_backward(c->dh, dev_g(c, m, m->norm_f), c->dh2, c->hlast, c->rstd_f, dev_w(c, m, m->norm_f), n, d,
                          c->work);
    for (int l = cfg->n_layers - 1; l >= 0; l--) {
        cu_layer *L = &c->L[l];
        int norm = m->layers[l].norm;
        cuda_zero(c->da, sizeof(float) * nd);
        mixer_backward(c, m, l, n, n_seq, c->dh, c->da);
        // the residual passes dh through unchanged; the norm adds its share
        cuda_rmsnorm_backward(c->dh, dev_g(c, m, norm), c->da, L->hin, L->rstd, dev_w(c, m, norm), n, d, c->work);
    }
    cuda_embedding_backward(dW_emb, c->dh, c->ids, n, d, V, c->work);
}

static void cu_backward(hax_engine *e) {
    cu_impl *c = (cu_impl *)e->impl;
    hax_model *m = e->model;
    if (!c->batch) hax_die("engine_backward: called before engine_forward");
    bwd_enqueue(c, m, c->batch, NULL);
    if (c->resident) return;  // the gradients stay on the device
    cuda_download(c->host_g, c->gr, sizeof(float) * m->n_floats);
    cuda_sync();
    for (size_t i = 0; i < m->n_floats; i++) m->grad[i] += c->host_g[i];
}

// ---------------------------------------------------------------- outputs, lifetime

static const float *cu_hidden(hax_engine *e) {
    cu_impl *c = (cu_impl *)e->impl;
    if (!c->hidden_ok) {
        cuda_download(c->h_hidden, c->hf, sizeof(float) * (size_t)c->n_tok * e->model->cfg.hidden_size);
        cuda_sync();
        c->hidden_ok = 1;
    }
    return c->h_hidden;
}

static const float *cu_logits(hax_engine *e) {
    cu_impl *c = (cu_impl *)e->impl;
    if (!c->logits_ok) {
        cuda_download(c->h_logits, c->logits, sizeof(float) * (size_t)c->n_tok * e->model->cfg.vocab_size);
        cuda_sync();
        c->logits_ok = 1;
    }
    return c->h_logits;
}

static const float *cu_hash(hax_engine *e, int layer) {
    (void)e, (void)layer;
    return NULL;  // no sparse branch: no hash matrix
}

static void cu_destroy(hax_engine *e) {
    cu_impl *c = (cu_impl *)e->impl;
    cuda_sync();
    cuda_free(c->w), cuda_free(c->gr), cuda_free(c->arena), cuda_free(c->work), cuda_free(c->ids);
    cuda_free(c->labels), cuda_free(c->mask), cuda_free(c->seq_off), cuda_free(c->loss), cuda_free(c->correct);
    graphs_free(c);
    cuda_free(c->ce_scale);
    free(c->pad.inputs), free(c->pad.labels), free(c->pad.loss_mask), free(c->pad.seq_off);
    cuda_free(c->count), cuda_free(c->am), cuda_free(c->av), cuda_free(c->hp), cuda_free(c->flag);
    free(c->host_g), free(c->h_correct), free(c->h_count), free(c->h_hidden), free(c->h_logits), free(c->L);
    free(c);
}

// ---------------------------------------------------------------- graph steps

// c->pad = b plus one sequence of padding (token 0, label 0, unscored) that
// brings the positions to a multiple of CU_BUCKET. The padding adds exact
// zeros to every gradient (its CE gradient rows are zero) and its sequence
// scores nothing, so only summation orders change.
static void pad_batch(cu_impl *c, const hax_batch *b) {
    int n = b->n_tok, np = (n + CU_BUCKET - 1) / CU_BUCKET * CU_BUCKET;
    if (np == 0) np = CU_BUCKET;
    int ns = b->n_seq + (np > n);
    hax_batch *p = &c->pad;
    if (np > c->pad_cap_tok || ns + 1 > c->pad_cap_seq) {
        free(p->inputs), free(p->labels), free(p->loss_mask), free(p->seq_off);
        c->pad_cap_tok = np > c->pad_cap_tok ? np : c->pad_cap_tok;
        c->pad_cap_seq = ns + 1 > c->pad_cap_seq ? ns + 1 : c->pad_cap_seq;
        p->inputs = (int32_t *)xmalloc(sizeof(int32_t) * c->pad_cap_tok);
        p->labels = (int32_t *)xmalloc(sizeof(int32_t) * c->pad_cap_tok);
        p->loss_mask = (uint8_t *)xmalloc(c->pad_cap_tok);
        p->seq_off = (int *)xmalloc(sizeof(int) * (c->pad_cap_seq + 1));
    }
    memcpy(p->inputs, b->inputs, sizeof(int32_t) * n);
    memcpy(p->labels, b->labels, sizeof(int32_t) * n);
    if (b->loss_mask) memcpy(p->loss_mask, b->loss_mask, n);
    else memset(p->loss_mask, 1, n);
    memset(p->inputs + n, 0, sizeof(int32_t) * (np - n));
    memset(p->labels + n, 0, sizeof(int32_t) * (np - n));
    memset(p->loss_mask + n, 0, np - n);
    memcpy(p->seq_off, b->seq_off, sizeof(int) * (b->n_seq + 1));
    p->seq_off[ns] = np;
    p->n_tok = np, p->n_seq = ns;
    p->global_n_seq = b->global_n_seq;
    p->model_len = b->model_len;
}

static void graphs_free(cu_impl *c) {
    for (int i = 0; i < c->n_graphs; i++) cuda_graph_free(c->graphs[i].exec);
    c->n_graphs = 0;
}

// The kernels of one whole step: forward, backward, AdamW.
static void step_enqueue(cu_impl *c, hax_model *m) {
    fwd_enqueue(c, m, &c->pad);
    bwd_enqueue(c, m, &c->pad, c->ce_scale);
    cuda_adamw_step(c->w, c->gr, c->am, c->av, m->n_floats, c->hp);
}

extern "C" void engine_cuda_train_step(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_adamw *opt,
                                       double lr, hax_fwd_result *r) {
    cu_impl *c = (cu_impl *)e->impl;
    hax_model *m = e->model;
    if (!c->resident) hax_die("engine_cuda_train_step: expected resident weights (push first), found none");
    pad_batch(c, b);
    fwd_prepare(c, m, &c->pad);  // sizes (a reallocation drops every graph), uploads the padded batch
    double ce_count = o->ce_count;
    if (ce_count <= 0) {
        ce_count = 0;
        for (int i = 0; i < b->n_tok; i++) ce_count += b->loss_mask ? b->loss_mask[i] != 0 : 1;
    }
    c->ce_scale_host = ce_count > 0 ? (float)(1.0 / ce_count) : 0.0f;
    cuda_upload(c->ce_scale, &c->ce_scale_host, sizeof(float));
    opt->step++;
    cuda_adamw_hp_make(&c->hp_host, lr, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, opt->step);
    cuda_adamw_set(c->hp, &c->hp_host);
    int g = 0;
    while (g < c->n_graphs && (c->graphs[g].n != c->pad.n_tok || c->graphs[g].n_seq != c->pad.n_seq)) g++;
    if (g < c->n_graphs) {
        cuda_graph_launch(c->graphs[g].exec);
        c->graph_launches++;
    } else {
        // First time at this shape: run it as is, then record it for next time.
        step_enqueue(c, m);
        if (c->n_graphs == CU_MAX_GRAPHS) graphs_free(c);
        cuda_graph_begin();
        step_enqueue(c, m);
        c->graphs[c->n_graphs].n = c->pad.n_tok;
        c->graphs[c->n_graphs].n_seq = c->pad.n_seq;
        c->graphs[c->n_graphs].exec = cuda_graph_end();
        c->n_graphs++;
    }
    fwd_collect(c, &c->pad, o, r);
    c->ce_count = ce_count;
    r->loss = ce_count > 0 ? r->ce_sum / ce_count : 0;
    r->total_loss = r->loss;
}

extern "C" int engine_cuda_graph_launches(const hax_engine *e) { return ((const cu_impl *)e->impl)->graph_launches; }

// ---------------------------------------------------------------- device-resident training

static void cu_push(hax_engine *e, const hax_adamw *opt) {
    cu_impl *c = (cu_impl *)e->impl;
    size_t bytes = sizeof(float) * e->model->n_floats;
    cuda_upload(c->w, e->model->data, bytes);
    if (opt) {
        cuda_upload(c->am, opt->m, bytes);
        cuda_upload(c->av, opt->v, bytes);
    }
    cuda_sync();
    c->resident = 1;
}

static void cu_pull(hax_engine *e, hax_adamw *opt) {
    cu_impl *c = (cu_impl *)e->impl;
    size_t bytes = sizeof(float) * e->model->n_floats;
    cuda_download(e->model->data, c->w, bytes);
    if (opt) {
        cuda_download(opt->m, c->am, bytes);
        cuda_download(opt->v, c->av, bytes);
    }
    cuda_sync();
}

static float *cu_grad_buffer(hax_engine *e) { return ((cu_impl *)e->impl)->gr; }

static int cu_grad_finite(hax_engine *e, int poison) {
    cu_impl *c = (cu_impl *)e->impl;
    static const float nan_value = NAN;
    if (poison) cuda_upload(c->gr, &nan_value, sizeof(float));
    cuda_zero(c->flag, sizeof(int));
    cuda_check_finite(c->flag, c->gr, e->model->n_floats);
    int bad = 0;
    cuda_download(&bad, c->flag, sizeof(int));
    cuda_sync();
    return !bad;
}

static void cu_adamw(hax_engine *e, hax_adamw *opt, double lr) {
    cu_impl *c = (cu_impl *)e->impl;
    opt->step++;
    cuda_adamw_hp_make(&c->hp_host, lr, opt->beta1, opt->beta2, opt->eps, opt->weight_decay, opt->step);
    cuda_adamw_set(c->hp, &c->hp_host);
    cuda_adamw_step(c->w, c->gr, c->am, c->av, e->model->n_floats, c->hp);
}

static const hax_device_ops cuda_dev_ops = {cu_push, cu_pull, cu_grad_buffer, cu_grad_finite, cu_adamw};

static const hax_backend cuda_backend = {"cuda", cu_forward, cu_backward, cu_destroy, cu_hidden,
                                         cu_logits, cu_hash, &cuda_dev_ops};

extern "C" int engine_cuda_supports(const hax_model_config *cfg, char *why, int why_len) {
    const char *no = NULL;
    if (cfg->arch != ARCH_MAMBA && cfg->arch != ARCH_MAMBA2) no = "arch: expected mamba or mamba2 (Samba is not ported yet)";
    else if (cfg->sparse_mask) no = "sparse pattern: expected none (the sparse branch is not ported yet)";
    if (no && why) snprintf(why, why_len, "%s", no);
    return no == NULL;
}

extern "C" hax_engine *engine_cuda_create(hax_model *m, int max_tok, int max_seq, int max_len) {
    (void)max_len;
    char why[160];
    if (!engine_cuda_supports(&m->cfg, why, sizeof why)) hax_die("engine cuda: %s", why);
    if (m->cfg.n_layers > HAX_MAX_LAYERS)
        hax_die("model.n_layers: expected at most %d, found %d", HAX_MAX_LAYERS, m->cfg.n_layers);
    hax_engine *e = (hax_engine *)xcalloc(1, sizeof *e);
    cu_impl *c = (cu_impl *)xcalloc(1, sizeof *c);
    c->cfg = &m->cfg;
    c->L = (cu_layer *)xcalloc(m->cfg.n_layers, sizeof(cu_layer));
    c->w = (float *)cuda_malloc(sizeof(float) * m->n_floats);
    c->gr = (float *)cuda_malloc(sizeof(float) * m->n_floats);
    c->host_g = (float *)xmalloc(sizeof(float) * m->n_floats);
    c->am = (float *)cuda_malloc(sizeof(float) * m->n_floats);
    c->av = (float *)cuda_malloc(sizeof(float) * m->n_floats);
    cuda_zero(c->am, sizeof(float) * m->n_floats);
    cuda_zero(c->av, sizeof(float) * m->n_floats);
    c->hp = (cuda_adamw_hp *)cuda_malloc(sizeof(cuda_adamw_hp));
    c->flag = (int *)cuda_malloc(sizeof(int));
    c->ce_scale = (float *)cuda_malloc(sizeof(float));
    c->loss = (double *)cuda_malloc(sizeof(double));
    reserve(c, m, max_tok > 0 ? max_tok : 1, max_seq > 0 ? max_seq : 1);
    e->be = &cuda_backend;
    e->model = m;
    e->impl = c;
    return e;
}
