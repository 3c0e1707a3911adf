// cuda/engine/engine.cu: see cuda/engine/engine.h. The structure follows src/engine/cpu.c and
// src/mixer_mamba*.c step by step, with device buffers and the cuda_* ops.
// The mixer of a layer is in cuda/engine/mixer.cu; the shared state in
// cuda/engine/internal.cuh.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/ops/adamw.h"
#include "cuda/ops/basic.h"
#include "cuda/ops/conv.h"
#include "cuda/engine/internal.cuh"
#include "cuda/ops/scan.h"
#include "cuda/ops/ssd.h"

// ---------------------------------------------------------------- small kernels

// out = a + b (n floats): the residual stream.
__global__ static void add_kernel(float *out, const float *a, const float *b, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// ---------------------------------------------------------------- state

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
    int mamba2 = cfg->arch == ARCH_MAMBA2, H_att = cfg->attn_heads > 0 ? cfg->attn_heads : 1;
    float *cur = arena;
    size_t used = 0;
#define TAKE(n_) (used += ((size_t)(n_) + 63) / 64 * 64, arena ? take(&cur, (size_t)(n_)) : NULL)
    for (int l = 0; l < cfg->n_layers; l++) {
        cu_layer *L = &c->L[l];
        L->hin = TAKE((size_t)n * d);
        L->a = TAKE((size_t)n * d);
        L->rstd = TAKE(n);
        if (cfg->arch == ARCH_SAMBA) {
            L->s = TAKE((size_t)n * d);
            L->rstd2 = TAKE(n);
            L->a2 = TAKE((size_t)n * d);
            L->mlp.g = TAKE((size_t)n * cfg->mlp_hidden);
            L->mlp.u = TAKE((size_t)n * cfg->mlp_hidden);
            L->mlp.s = TAKE((size_t)n * cfg->mlp_hidden);
        }
        L->attn = cfg->sparse_mask ? TAKE((size_t)n * E) : NULL;
        if (m->layers[l].is_attn) {
            L->att.q = TAKE((size_t)n * d);
            L->att.k = TAKE((size_t)n * d);
            L->att.v = TAKE((size_t)n * d);
            L->att.o = TAKE((size_t)n * d);
            L->att.lse = TAKE((size_t)n * H_att);
            continue;
        }
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
    c->dmix = cfg->arch == ARCH_SAMBA ? TAKE((size_t)n * d) : NULL;
    c->dattn = cfg->sparse_mask ? TAKE((size_t)n * E) : NULL;
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
    if (cfg->arch == ARCH_SAMBA) {
        w = max_sz(w, cuda_attn_workspace_bytes(cfg, n));
        w = max_sz(w, cuda_mlp_workspace_bytes(n, cfg->mlp_hidden));
    }
    if (cfg->sparse_mask) w = max_sz(w, cu_eng_colsum_work_bytes(n, E));
    return w;
}

static void graphs_free(cu_impl *c);

// The sparse branch's per-layer states and buffers for the capacities in c.
static void sparse_free(cu_impl *c, const hax_model *m) {
    for (int l = 0; l < m->cfg.n_layers; l++) {
        cu_layer *L = &c->L[l];
        if (L->sp) cuda_sparse_state_free(L->sp);
        cuda_free(L->cand_dev), cuda_free(L->qb_dev), cuda_free(L->kb_dev);
        free(L->cand);
        L->sp = NULL, L->cand_dev = NULL, L->qb_dev = L->kb_dev = NULL, L->cand = NULL;
    }
}

static void sparse_reserve(cu_impl *c, const hax_model *m) {
    const hax_model_config *cfg = &m->cfg;
    int kc = cfg->k_c > 0 ? cfg->k_c : 1;
    sparse_free(c, m);
    for (int l = 0; l < cfg->n_layers; l++) {
        cu_layer *L = &c->L[l];
        L->sp = cuda_sparse_state_alloc(cfg, c->cap_tok, c->cap_seq, c->cap_len);
        L->cand_dev = (int *)cuda_malloc(sizeof(int) * (size_t)c->cap_seq * kc);
        L->cand = (int *)xmalloc(sizeof(int) * (size_t)c->cap_seq * kc);
        L->qb_dev = (int32_t *)cuda_malloc(sizeof(int32_t) * c->cap_tok);
        L->kb_dev = (int32_t *)cuda_malloc(sizeof(int32_t) * c->cap_tok);
        if (!L->hash_dev) {
            size_t nh = (size_t)cfg->state_size * (cfg->num_hash > 0 ? cfg->num_hash : 1);
            L->hash_dev = (float *)cuda_malloc(sizeof(float) * nh);
            L->hash = (float *)xmalloc(sizeof(float) * nh);
        }
    }
}

// (Re)allocates every batch-sized buffer for n_tok positions, n_seq sequences.
static void reserve(cu_impl *c, const hax_model *m, int n_tok, int n_seq, int max_len) {
    if (n_tok <= c->cap_tok && n_seq <= c->cap_seq && max_len <= c->cap_len && c->arena) return;
    if (n_tok > c->cap_tok) c->cap_tok = n_tok;
    if (n_seq > c->cap_seq) c->cap_seq = n_seq;
    if (max_len > c->cap_len) c->cap_len = max_len;
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
    if (m->cfg.sparse_mask) sparse_reserve(c, m);
}

// ---------------------------------------------------------------- forward

static void launch_add(float *out, const float *a, const float *b, long n) {
    add_kernel<<<cu_blocks(n, 256), 256, 0, cu_stream()>>>(out, a, b, n);
    CUDA_LAUNCHED();
}

// Checks the batch, sizes the buffers and uploads its arrays (and the weights
// when they are not resident).
static void fwd_prepare(cu_impl *c, const hax_model *m, const hax_batch *b) {
    int n = b->n_tok, n_seq = b->n_seq;
    if (n_seq > 0 && (b->seq_off[0] != 0 || b->seq_off[n_seq] != n))
        hax_die("engine cuda: batch seq_off: expected 0 .. n_tok = %d, found %d .. %d", n, b->seq_off[0],
                b->seq_off[n_seq]);
    int max_len = b->model_len;
    for (int s = 0; s < n_seq; s++)
        if (b->seq_off[s + 1] - b->seq_off[s] > max_len) max_len = b->seq_off[s + 1] - b->seq_off[s];
    reserve(c, m, n, n_seq, max_len > 0 ? max_len : 1);
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
        const hax_layer_params *lp = &m->layers[l];
        cuda_rmsnorm_forward(L->a, L->rstd, L->hin, dev_w(c, m, lp->norm), n, d, cfg->norm_eps);
        cu_eng_mixer_forward(c, m, l, n, n_seq, c->tmp);
        if (cfg->arch == ARCH_SAMBA) {
            cuda_add_rmsnorm_forward(L->a2, L->s, L->rstd2, c->tmp, L->hin, dev_w(c, m, lp->mlp_norm), n, d,
                                     cfg->norm_eps);
            mlp_params mp = {dev_w(c, m, lp->gate_proj), dev_w(c, m, lp->up_proj), dev_w(c, m, lp->down_proj)};
            cuda_mlp_forward(c->tmp, d, &L->mlp, L->a2, d, &mp, n, d, cfg->mlp_hidden);
            launch_add(next, L->s, c->tmp, (long)n * d);
        } else {
            launch_add(next, L->hin, c->tmp, (long)n * d);
        }
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
    int n_layers = c->cfg->n_layers;
    if (c->cfg->sparse_mask)
        for (int l = 0; l < n_layers; l++) cuda_download(&c->h_gate[l], c->L[l].sp->gate_loss, sizeof(double));
    cuda_sync();
    // The rest exactly as src/engine/cpu.c.
    double gate_sum = 0;
    if (c->cfg->sparse_mask)
        for (int l = 0; l < n_layers; l++) {
            r->gate_layer[l] = c->h_gate[l] / b->global_n_seq;
            gate_sum += c->h_gate[l];
        }
    double acc_sum = 0;
    for (int s = 0; s < n_seq; s++) {
        r->n_scored += c->h_count[s];
        r->correct += c->h_correct[s];
        if (c->h_count[s] > 0) acc_sum += (double)((float)c->h_correct[s] / (float)c->h_count[s]);
    }
    c->ce_count = o->ce_count > 0 ? o->ce_count : (double)r->n_scored;
    r->loss = c->ce_count > 0 ? r->ce_sum / c->ce_count : 0;
    r->acc = acc_sum / b->global_n_seq;
    r->gate_loss = gate_sum / b->global_n_seq;
    r->total_loss = r->loss + c->cfg->gate_loss_weight * r->gate_loss;
}

static void cu_forward(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_fwd_result *r) {
    cu_impl *c = (cu_impl *)e->impl;
    fwd_prepare(c, e->model, b);
    cu_eng_sparse_prepare(c, e->model, b, b, o);
    fwd_enqueue(c, e->model, b);
    fwd_collect(c, b, o, r);
}

// ---------------------------------------------------------------- backward

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
    // dh: gradient of the current block's output; tmp: the other buffer (Samba swaps them)
    float *dh = c->dh, *tmp = c->tmp;
    cuda_zero(dh, sizeof(float) * nd);
    cuda_rmsnorm_backward(dh, dev_g(c, m, m->norm_f), c->dh2, c->hlast, c->rstd_f, dev_w(c, m, m->norm_f), n, d,
                          c->work);
    for (int l = cfg->n_layers - 1; l >= 0; l--) {
        cu_layer *L = &c->L[l];
        const hax_layer_params *lp = &m->layers[l];
        cuda_zero(c->da, sizeof(float) * nd);
        if (cfg->arch == ARCH_SAMBA) {
            // h_out = s + mlp(norm2(s)), s = hin + mixer(norm(hin)) (src/engine/cpu.c)
            mlp_params mp = {dev_w(c, m, lp->gate_proj), dev_w(c, m, lp->up_proj), dev_w(c, m, lp->down_proj)};
            mlp_grads mg = {dev_g(c, m, lp->gate_proj), dev_g(c, m, lp->up_proj), dev_g(c, m, lp->down_proj)};
            cuda_zero(c->dh2, sizeof(float) * nd);  // d a2
            cuda_mlp_backward(c->dh2, d, &mg, dh, d, L->a2, d, &L->mlp, &mp, n, d, cfg->mlp_hidden, c->work);
            cuda_zero(c->dmix, sizeof(float) * nd);
            cuda_zero(tmp, sizeof(float) * nd);  // d hin (residual path)
            cuda_add_rmsnorm_backward(c->dmix, tmp, dev_g(c, m, lp->mlp_norm), c->dh2, dh, L->s, L->rstd2,
                                      dev_w(c, m, lp->mlp_norm), n, d, c->work);
            cu_eng_mixer_backward(c, m, l, n, n_seq, c->dmix, c->da);
            cuda_rmsnorm_backward(tmp, dev_g(c, m, lp->norm), c->da, L->hin, L->rstd, dev_w(c, m, lp->norm), n, d,
                                  c->work);
            float *t = dh;
            dh = tmp, tmp = t;
        } else {
            cu_eng_mixer_backward(c, m, l, n, n_seq, dh, c->da);
            // the residual passes dh through unchanged; the norm adds its share
            cuda_rmsnorm_backward(dh, dev_g(c, m, lp->norm), c->da, L->hin, L->rstd, dev_w(c, m, lp->norm), n, d,
                                  c->work);
        }
    }
    cuda_embedding_backward(dW_emb, dh, c->ids, n, d, V, c->work);
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
    const cu_layer *L = &((cu_impl *)e->impl)->L[layer];
    return L->have_hash ? L->hash : NULL;
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
    sparse_free(c, e->model);
    for (int l = 0; l < e->model->cfg.n_layers; l++) cuda_free(c->L[l].hash_dev), free(c->L[l].hash);
    free(c->h_gate);
    free(c->host_g), free(c->h_correct), free(c->h_count), free(c->h_hidden), free(c->h_logits), free(c->L);
    free(c);
}

// ---------------------------------------------------------------- graph steps

// c->pad = b plus one sequence of padding (token 0, label 0, unscored) that
// brings the positions to a multiple of CU_BUCKET. The padding adds exact
// zeros to every gradient (its CE gradient rows are zero) and its sequence
// scores nothing, so only summation orders change. With the sparse branch
// the padding is cut into sequences of at most model_len positions (the
// branch's statistics assume no longer one) and gets no ranking candidates
// (cu_eng_sparse_prepare), so it adds nothing to the ranking loss either.
static void pad_batch(cu_impl *c, const hax_batch *b) {
    int n = b->n_tok, np = (n + CU_BUCKET - 1) / CU_BUCKET * CU_BUCKET;
    if (np == 0) np = CU_BUCKET;
    int piece = c->cfg->sparse_mask && b->model_len > 0 ? b->model_len : CU_BUCKET;
    int n_pad_seq = (np - n + piece - 1) / piece;
    int ns = b->n_seq + n_pad_seq;
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
    for (int s = b->n_seq + 1; s <= ns; s++) p->seq_off[s] = p->seq_off[s - 1] + piece < np ? p->seq_off[s - 1] + piece : np;
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
    cu_eng_sparse_prepare(c, m, b, &c->pad, o);  // this step's hash matrices and candidates
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
    // the key: every host value a capture bakes in (sizes, the gate scale's
    // global_n_seq, the branch's model_len)
    while (g < c->n_graphs && (c->graphs[g].n != c->pad.n_tok || c->graphs[g].n_seq != c->pad.n_seq ||
                               c->graphs[g].global_n_seq != c->pad.global_n_seq ||
                               c->graphs[g].model_len != c->pad.model_len))
        g++;
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
        c->graphs[c->n_graphs].global_n_seq = c->pad.global_n_seq;
        c->graphs[c->n_graphs].model_len = c->pad.model_len;
        c->graphs[c->n_graphs].exec = cuda_graph_end();
        c->n_graphs++;
    }
    fwd_collect(c, &c->pad, o, r);
    c->ce_count = ce_count;
    r->loss = ce_count > 0 ? r->ce_sum / ce_count : 0;
    r->total_loss = r->loss + m->cfg.gate_loss_weight * r->gate_loss;
}

extern "C" int engine_cuda_graph_launches(const hax_engine *e) { return ((const cu_impl *)e->impl)->graph_launches; }

extern "C" const struct cu_sparse_state *engine_cuda_sparse(const hax_engine *e, int layer) {
    return ((const cu_impl *)e->impl)->L[layer].sp;
}

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
    int d = cfg->hidden_size, H = cfg->attn_heads;
    if (cfg->arch != ARCH_MAMBA && cfg->arch != ARCH_MAMBA2 && cfg->arch != ARCH_SAMBA)
        no = "arch: expected mamba, mamba2 or samba";
    else if (cfg->arch == ARCH_SAMBA && (H <= 0 || d % H != 0 || d / H > 128 || (d / H) % 2 != 0))
        no = "attn_heads: expected a head size hidden_size / attn_heads that is even and at most 128";
    else if ((cfg->sparse_mask & SPARSE_KEY_SELECTION) && cfg->state_size > 128)
        no = "state_size: expected at most 128 with key_selection";
    if (no && why) snprintf(why, why_len, "%s", no);
    return no == NULL;
}

extern "C" hax_engine *engine_cuda_create(hax_model *m, int max_tok, int max_seq, int max_len) {
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
    c->h_gate = (double *)xcalloc(m->cfg.n_layers, sizeof(double));
    reserve(c, m, max_tok > 0 ? max_tok : 1, max_seq > 0 ? max_seq : 1, max_len > 0 ? max_len : 1);
    e->be = &cuda_backend;
    e->model = m;
    e->impl = c;
    return e;
}
