// src/engine/cpu.c: the CPU backend of engine.h. It assembles the ops of
// src/ops_*.c, src/mixer_*.c and src/sparse*.c into the reference's models:
//
//   Mamba / Mamba2 block:  h <- h + mixer(rmsnorm(h))                  (MODEL.md §1.5)
//   Samba block:           s = h + mixer(rmsnorm(h)); h <- s + mlp(rmsnorm(s))   (§4.2, Q19)
//   mixer = pre half -> [sparse branch on X] -> post half (mixer_mamba*.h, sparse.h)
//   head:  hf = rmsnorm_f(h); logits = hf . W_emb^T; CE + accuracy at scored positions
//
// All activations live in one arena that grows to the largest batch seen.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/engine/engine.h"
#include "src/engine/mixer_mamba.h"
#include "src/engine/mixer_mamba2.h"
#include "src/ops/attn.h"
#include "src/ops/basic.h"
#include "src/ops/mlp.h"
#include "src/core/rng.h"
#include "src/sparse/sparse.h"

typedef struct {
    float *hin;        // [n_tok, d] block input (the residual stream)
    float *a;          // [n_tok, d] normed mixer input
    float *rstd;       // [n_tok]
    mamba_acts mam;    // Mamba mixer (Mamba, Samba even layers)
    mamba2_acts mam2;  // Mamba2 mixer
    attn_acts att;     // Samba attention layers
    float *attn;       // [n_tok, E] sparse branch output (Enhanced mixers)
    float *s;          // Samba: [n_tok, d] residual after the mixer
    float *rstd2;      // Samba: [n_tok]
    float *a2;         // Samba: [n_tok, d] normed MLP input
    mlp_acts mlp;      // Samba
    hax_sparse_state *sp;
    float *hash;       // [N, h] the hash matrix of the last forward
    int have_hash;
    int *cand;         // [max_seq, k_c] key-selection candidates
} layer_state;

typedef struct {
    const hax_model_config *cfg;
    int max_tok, max_seq, max_len;  // capacities of the sparse states and of cand
    layer_state *L;
    float *arena;
    size_t arena_cap;
    // global buffers, assigned from the arena
    float *hlast, *hf, *rstd_f, *logits, *dlogits, *dh, *dh2, *da, *dmix, *tmp, *dattn, *scratch;
    mamba_bwd mbwd;
    mamba2_bwd m2bwd;
    // the last forward
    const hax_batch *batch;
    int n_tok, train;
    double ce_count;
    int *correct, *count;  // [max_seq]
} cpu_impl;

static int is_sparse(const hax_model_config *c) { return c->sparse_mask != 0; }
static int has_ks(const hax_model_config *c) { return (c->sparse_mask & SPARSE_KEY_SELECTION) != 0; }
static int has_lsh(const hax_model_config *c) { return (c->sparse_mask & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) != 0; }

// ---------------------------------------------------------------- parameters

static mamba_params mamba_w(const hax_model *m, const hax_layer_params *l) {
    mamba_params p = {model_w(m, l->A_log),     model_w(m, l->D),         model_w(m, l->conv_w),
                      model_w(m, l->conv_b),    model_w(m, l->in_proj),   model_w(m, l->x_proj),
                      model_w(m, l->dt_proj_w), model_w(m, l->dt_proj_b), model_w(m, l->out_proj),
                      model_w(m, l->E)};
    return p;
}

static mamba_grads mamba_g(const hax_model *m, const hax_layer_params *l) {
    mamba_grads g = {model_g(m, l->A_log),     model_g(m, l->D),         model_g(m, l->conv_w),
                     model_g(m, l->conv_b),    model_g(m, l->in_proj),   model_g(m, l->x_proj),
                     model_g(m, l->dt_proj_w), model_g(m, l->dt_proj_b), model_g(m, l->out_proj),
                     model_g(m, l->E)};
    return g;
}

static mamba2_params mamba2_w(const hax_model *m, const hax_layer_params *l) {
    mamba2_params p = {model_w(m, l->dt_bias), model_w(m, l->A_log),   model_w(m, l->D),
                       model_w(m, l->conv_w),  model_w(m, l->conv_b),  model_w(m, l->in_proj),
                       model_w(m, l->gnorm),   model_w(m, l->out_proj), model_w(m, l->E)};
    return p;
}

static mamba2_grads mamba2_g(const hax_model *m, const hax_layer_params *l) {
    mamba2_grads g = {model_g(m, l->dt_bias), model_g(m, l->A_log),   model_g(m, l->D),
                      model_g(m, l->conv_w),  model_g(m, l->conv_b),  model_g(m, l->in_proj),
                      model_g(m, l->gnorm),   model_g(m, l->out_proj), model_g(m, l->E)};
    return g;
}

static ks_params ks_w(const hax_model *m, const hax_layer_params *l) {
    ks_params p = {model_w(m, l->dx1_w), model_w(m, l->dx1_b), model_w(m, l->dx2_w),
                   model_w(m, l->dx2_b), model_w(m, l->dx3_w), model_w(m, l->dx3_b)};
    return p;
}

static ks_grads ks_g(const hax_model *m, const hax_layer_params *l) {
    ks_grads g = {model_g(m, l->dx1_w), model_g(m, l->dx1_b), model_g(m, l->dx2_w),
                  model_g(m, l->dx2_b), model_g(m, l->dx3_w), model_g(m, l->dx3_b)};
    return g;
}

// ---------------------------------------------------------------- workspace

// Carves n floats off the arena cursor (or only counts them when base is NULL).
static float *take(float **cur, size_t n) {
    float *p = *cur;
    *cur += n;
    return p;
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

// Lays out (or, with arena NULL, sizes) every buffer for batch b.
static size_t layout(cpu_impl *c, const hax_model *m, const hax_batch *b, float *arena) {
    const hax_model_config *cfg = &m->cfg;
    int n = b->n_tok, d = cfg->hidden_size, E = cfg->intermediate_size, V = cfg->vocab_size;
    float *cur = arena;
    size_t used = 0;
#define TAKE(n_) (used += (size_t)(n_), arena ? take(&cur, (size_t)(n_)) : NULL)
    for (int i = 0; i < cfg->n_layers; i++) {
        layer_state *L = &c->L[i];
        const hax_layer_params *lp = &m->layers[i];
        L->hin = TAKE((size_t)n * d);
        L->a = TAKE((size_t)n * d);
        L->rstd = TAKE(n);
        if (lp->is_attn) {
            size_t k = attn_acts_floats(cfg, n);
            float *buf = TAKE(k);
            if (arena) attn_acts_assign(&L->att, buf, cfg, n);
        } else if (cfg->arch == ARCH_MAMBA2) {
            size_t k = mamba2_acts_floats(cfg, b->seq_off, b->n_seq);
            float *buf = TAKE(k);
            if (arena) mamba2_acts_assign(&L->mam2, buf, cfg, b->seq_off, b->n_seq);
        } else {
            size_t k = mamba_acts_floats(cfg, n, b->n_seq);
            float *buf = TAKE(k);
            if (arena) mamba_acts_assign(&L->mam, buf, cfg, n, b->n_seq);
        }
        L->attn = is_sparse(cfg) ? TAKE((size_t)n * E) : NULL;
        if (cfg->arch == ARCH_SAMBA) {
            L->s = TAKE((size_t)n * d);
            L->rstd2 = TAKE(n);
            L->a2 = TAKE((size_t)n * d);
            float *buf = TAKE(mlp_acts_floats(n, cfg->mlp_hidden));
            if (arena) mlp_acts_assign(&L->mlp, buf, n, cfg->mlp_hidden);
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
    c->dmix = TAKE((size_t)n * d);
    c->tmp = TAKE((size_t)n * d);
    c->dattn = is_sparse(cfg) ? TAKE((size_t)n * E) : NULL;
    // backward scratch shared by the layers (the Mamba one is also used in forward)
    size_t sc = 0;
    if (cfg->arch == ARCH_SAMBA) {
        sc = max_sz(attn_bwd_floats(cfg, n), mlp_bwd_floats(n, cfg->mlp_hidden));
    }
    c->scratch = TAKE(sc);
    if (cfg->arch == ARCH_MAMBA2) {
        float *buf = TAKE(mamba2_bwd_floats(cfg, n));
        if (arena) mamba2_bwd_assign(&c->m2bwd, buf, cfg, n);
    } else {
        float *buf = TAKE(mamba_bwd_floats(cfg, n));
        if (arena) mamba_bwd_assign(&c->mbwd, buf, cfg, n);
    }
#undef TAKE
    return used;
}

// Makes the sparse states and candidate buffers large enough for batch b.
static void ensure_capacity(cpu_impl *c, const hax_model *m, const hax_batch *b) {
    const hax_model_config *cfg = &m->cfg;
    int max_len = 0;
    for (int s = 0; s < b->n_seq; s++) {
        int len = b->seq_off[s + 1] - b->seq_off[s];
        if (len > max_len) max_len = len;
    }
    if (b->model_len > max_len) max_len = b->model_len;
    int grow = b->n_tok > c->max_tok || b->n_seq > c->max_seq || max_len > c->max_len;
    if (grow) {
        if (b->n_tok > c->max_tok) c->max_tok = b->n_tok;
        if (b->n_seq > c->max_seq) c->max_seq = b->n_seq;
        if (max_len > c->max_len) c->max_len = max_len;
    }
    for (int i = 0; i < cfg->n_layers; i++) {
        layer_state *L = &c->L[i];
        if (!is_sparse(cfg)) continue;
        if (grow || !L->sp) {
            if (L->sp) sparse_state_free(L->sp);
            L->sp = sparse_state_alloc(cfg, c->max_tok, c->max_seq, c->max_len);
            free(L->cand);
            L->cand = xmalloc(sizeof(int) * (size_t)c->max_seq * (cfg->k_c > 0 ? cfg->k_c : 1));
        }
    }
    if (grow || !c->correct) {
        free(c->correct);
        free(c->count);
        c->correct = xmalloc(sizeof(int) * c->max_seq);
        c->count = xmalloc(sizeof(int) * c->max_seq);
    }
    size_t need = layout(c, m, b, NULL);
    if (need > c->arena_cap) {
        free(c->arena);
        c->arena = xmalloc(sizeof(float) * need);
        c->arena_cap = need;
    }
    layout(c, m, b, c->arena);
}

// ---------------------------------------------------------------- forward

// The hash matrix of layer l: injected, or N(0,1) from the run's stream.
static const float *layer_hash(cpu_impl *c, int l, const hax_fwd_opts *o) {
    const hax_model_config *cfg = c->cfg;
    layer_state *L = &c->L[l];
    size_t n = (size_t)cfg->state_size * cfg->num_hash;
    if (!L->hash) L->hash = xmalloc(sizeof(float) * n);
    if (o->inject && o->inject->hash[l]) {
        memcpy(L->hash, o->inject->hash[l], sizeof(float) * n);
    } else {
        hax_rng r;
        rng_init(&r, o->seed, o->train ? RNG_LSH : RNG_LSH_EVAL, o->step, (uint32_t)l, 0);
        for (size_t i = 0; i < n; i++) L->hash[i] = (float)rng_normal(&r);
    }
    L->have_hash = 1;
    return L->hash;
}

// The sparse branch of layer l on X (ld ldX): fills L->attn; returns the
// layer's ranking-loss partial sum.
static double sparse_layer_forward(cpu_impl *c, const hax_model *m, int l, const hax_batch *b,
                                   const float *X, int ldX, const hax_fwd_opts *o) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    layer_state *L = &c->L[l];
    const float *hash = has_lsh(cfg) ? layer_hash(c, l, o) : NULL;
    const int *cand = NULL;
    ks_params kp;
    if (has_ks(cfg)) {
        kp = ks_w(m, lp);
        if (o->train) {
            if (o->inject && o->inject->ks_cand[l]) {
                cand = o->inject->ks_cand[l];
            } else {
                ks_sample_candidates(L->cand, b->seq_off, b->n_seq, b->sample_idx, cfg->k_c, o->seed, o->step,
                                     (uint32_t)l);
                cand = L->cand;
            }
        }
    }
    if (has_lsh(cfg)) {
        if (o->inject && o->inject->q_bucket[l] && o->inject->k_bucket[l])
            sparse_force_buckets(L->sp, o->inject->q_bucket[l], o->inject->k_bucket[l]);
        else
            sparse_force_buckets(L->sp, NULL, NULL);
    }
    return sparse_forward(L->sp, cfg, b, X, ldX, model_w(m, lp->xx_proj), has_ks(cfg) ? &kp : NULL, hash, cand,
                          o->train, L->attn, cfg->intermediate_size);
}

// Mixer of layer l: a = L->a -> out [n, d]; returns the ranking-loss partial sum.
static double mixer_forward(cpu_impl *c, const hax_model *m, int l, const hax_batch *b, float *out,
                            const hax_fwd_opts *o) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    layer_state *L = &c->L[l];
    int n = b->n_tok, d = cfg->hidden_size;
    double gl = 0;
    if (lp->is_attn) {
        attn_params p = {model_w(m, lp->q_proj), model_w(m, lp->k_proj), model_w(m, lp->v_proj),
                         model_w(m, lp->o_proj)};
        attn_forward(out, d, &L->att, L->a, d, &p, cfg, b->seq_off, b->n_seq);
    } else if (cfg->arch == ARCH_MAMBA2) {
        mamba2_params p = mamba2_w(m, lp);
        mamba2_pre_forward(&L->mam2, L->a, d, &p, cfg, b->seq_off, b->n_seq);
        if (is_sparse(cfg)) gl = sparse_layer_forward(c, m, l, b, L->mam2.xbc, m->conv_dim, o);
        mamba2_post_forward(out, d, &L->mam2, L->attn, &p, cfg, b->seq_off, b->n_seq);
    } else {
        mamba_params p = mamba_w(m, lp);
        mamba_pre_forward(&L->mam, L->a, d, &p, cfg, b->seq_off, b->n_seq, n);
        if (is_sparse(cfg)) gl = sparse_layer_forward(c, m, l, b, L->mam.X, cfg->intermediate_size, o);
        mamba_post_forward(out, d, &L->mam, &c->mbwd, L->attn, &p, cfg, b->seq_off, b->n_seq, n);
    }
    return gl;
}

static void cpu_forward(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_fwd_result *r) {
    cpu_impl *c = e->impl;
    // Every loop here and in the ops, the GEMMs of hax_sgemm included, runs on
    // the OpenMP threads over a split that does not depend on their number, so
    // results are bit-identical for any thread count (test_model).
    const hax_model *m = e->model;
    const hax_model_config *cfg = &m->cfg;
    int n = b->n_tok, d = cfg->hidden_size, V = cfg->vocab_size;
    ensure_capacity(c, m, b);
    c->batch = b;
    c->n_tok = n;
    c->train = o->train;
    memset(r, 0, sizeof *r);

    embedding_forward(c->L[0].hin, b->inputs, model_w(m, m->embeddings), n, d, V);
    double gate_sum = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        layer_state *L = &c->L[l];
        const hax_layer_params *lp = &m->layers[l];
        float *next = l + 1 < cfg->n_layers ? c->L[l + 1].hin : c->hlast;
        rmsnorm_forward(L->a, L->rstd, L->hin, model_w(m, lp->norm), n, d, cfg->norm_eps);
        double gl = mixer_forward(c, m, l, b, c->tmp, o);
        r->gate_layer[l] = gl / b->global_n_seq;
        gate_sum += gl;
        if (cfg->arch == ARCH_SAMBA) {
            add_rmsnorm_forward(L->a2, L->s, L->rstd2, c->tmp, L->hin, model_w(m, lp->mlp_norm), n, d, cfg->norm_eps);
            mlp_params mp = {model_w(m, lp->gate_proj), model_w(m, lp->up_proj), model_w(m, lp->down_proj)};
            mlp_forward(c->tmp, d, &L->mlp, L->a2, d, &mp, n, d, cfg->mlp_hidden);
            for (size_t i = 0; i < (size_t)n * d; i++) next[i] = L->s[i] + c->tmp[i];
        } else {
            for (size_t i = 0; i < (size_t)n * d; i++) next[i] = L->hin[i] + c->tmp[i];
        }
    }
    rmsnorm_forward(c->hf, c->rstd_f, c->hlast, model_w(m, m->norm_f), n, d, cfg->norm_eps);
    logits_forward(c->logits, c->hf, model_w(m, m->embeddings), n, d, V);
    r->ce_sum = ce_forward(c->logits, b->labels, b->loss_mask, b->seq_off, b->n_seq, V, c->correct, c->count);
    double acc_sum = 0;
    for (int s = 0; s < b->n_seq; s++) {
        r->n_scored += c->count[s];
        r->correct += c->correct[s];
        // float32 per-sample ratio, as the reference's .float() (Q20)
        if (c->count[s] > 0) acc_sum += (double)((float)c->correct[s] / (float)c->count[s]);
    }
    c->ce_count = o->ce_count > 0 ? o->ce_count : (double)r->n_scored;
    r->loss = c->ce_count > 0 ? r->ce_sum / c->ce_count : 0;
    r->acc = acc_sum / b->global_n_seq;
    r->gate_loss = gate_sum / b->global_n_seq;
    r->total_loss = r->loss + cfg->gate_loss_weight * r->gate_loss;
}

// ---------------------------------------------------------------- backward

// Mixer backward of layer l: from dout [n, d] to da (+=, [n, d]) and the grads.
static void mixer_backward(cpu_impl *c, hax_model *m, int l, const float *dout, float *da) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    const hax_batch *b = c->batch;
    layer_state *L = &c->L[l];
    int n = b->n_tok, d = cfg->hidden_size, E = cfg->intermediate_size;
    float gate_scale = (float)(cfg->gate_loss_weight / b->global_n_seq);
    if (is_sparse(cfg)) memset(c->dattn, 0, sizeof(float) * (size_t)n * E);
    ks_params kp;
    ks_grads kg;
    if (has_ks(cfg)) {
        kp = ks_w(m, lp);
        kg = ks_g(m, lp);
    }
    if (lp->is_attn) {
        attn_params p = {model_w(m, lp->q_proj), model_w(m, lp->k_proj), model_w(m, lp->v_proj),
                         model_w(m, lp->o_proj)};
        attn_grads g = {model_g(m, lp->q_proj), model_g(m, lp->k_proj), model_g(m, lp->v_proj),
                        model_g(m, lp->o_proj)};
        attn_backward(da, d, &g, c->scratch, dout, d, L->a, d, &L->att, &p, cfg, b->seq_off, b->n_seq);
    } else if (cfg->arch == ARCH_MAMBA2) {
        mamba2_params p = mamba2_w(m, lp);
        mamba2_grads g = mamba2_g(m, lp);
        mamba2_post_backward(&c->m2bwd, c->dattn, dout, d, &L->mam2, L->attn, &p, &g, cfg, b->seq_off, b->n_seq);
        if (is_sparse(cfg))
            sparse_backward(L->sp, cfg, b, c->dattn, E, gate_scale, L->mam2.xbc, m->conv_dim,
                            model_w(m, lp->xx_proj), has_ks(cfg) ? &kp : NULL, c->m2bwd.dxbc, m->conv_dim,
                            model_g(m, lp->xx_proj), has_ks(cfg) ? &kg : NULL);
        mamba2_pre_backward(da, d, &c->m2bwd, L->a, d, &L->mam2, &p, &g, cfg, b->seq_off, b->n_seq);
    } else {
        mamba_params p = mamba_w(m, lp);
        mamba_grads g = mamba_g(m, lp);
        mamba_post_backward(&c->mbwd, c->dattn, dout, d, &L->mam, L->attn, &p, &g, cfg, b->seq_off, b->n_seq, n);
        if (is_sparse(cfg))
            sparse_backward(L->sp, cfg, b, c->dattn, E, gate_scale, L->mam.X, E, model_w(m, lp->xx_proj),
                            has_ks(cfg) ? &kp : NULL, c->mbwd.dX, E, model_g(m, lp->xx_proj),
                            has_ks(cfg) ? &kg : NULL);
        mamba_pre_backward(da, d, &c->mbwd, L->a, d, &L->mam, &p, &g, cfg, b->seq_off, b->n_seq, n);
    }
}

static void cpu_backward(hax_engine *e) {
    cpu_impl *c = e->impl;
    hax_model *m = e->model;
    const hax_model_config *cfg = &m->cfg;
    const hax_batch *b = c->batch;
    if (!b) hax_die("engine_backward: called before engine_forward");
    int n = b->n_tok, d = cfg->hidden_size, V = cfg->vocab_size;
    size_t nd = (size_t)n * d;
    float *W_emb = model_w(m, m->embeddings), *dW_emb = model_g(m, m->embeddings);

    ce_backward(c->dlogits, c->logits, b->labels, b->loss_mask, n, V,
                c->ce_count > 0 ? (float)(1.0 / c->ce_count) : 0.0f);
    memset(c->dh2, 0, sizeof(float) * nd);  // d hf
    logits_backward(c->dh2, dW_emb, c->dlogits, c->hf, W_emb, n, d, V);
    memset(c->dh, 0, sizeof(float) * nd);  // d hlast
    rmsnorm_backward(c->dh, model_g(m, m->norm_f), c->dh2, c->hlast, c->rstd_f, model_w(m, m->norm_f), n, d);

    // c->dh: gradient of the current block's output
    for (int l = cfg->n_layers - 1; l >= 0; l--) {
        layer_state *L = &c->L[l];
        const hax_layer_params *lp = &m->layers[l];
        memset(c->da, 0, sizeof(float) * nd);
        if (cfg->arch == ARCH_SAMBA) {
            mlp_params mp = {model_w(m, lp->gate_proj), model_w(m, lp->up_proj), model_w(m, lp->down_proj)};
            mlp_grads mg = {model_g(m, lp->gate_proj), model_g(m, lp->up_proj), model_g(m, lp->down_proj)};
            memset(c->dh2, 0, sizeof(float) * nd);  // d a2
            mlp_backward(c->dh2, d, &mg, c->scratch, c->dh, d, L->a2, d, &L->mlp, &mp, n, d, cfg->mlp_hidden);
            // s = mixer_out + hin receives dh directly and through the norm
            memset(c->dmix, 0, sizeof(float) * nd);
            memset(c->tmp, 0, sizeof(float) * nd);  // d hin (residual path)
            add_rmsnorm_backward(c->dmix, c->tmp, model_g(m, lp->mlp_norm), c->dh2, c->dh, L->s, L->rstd2,
                                 model_w(m, lp->mlp_norm), n, d);
            mixer_backward(c, m, l, c->dmix, c->da);
            rmsnorm_backward(c->tmp, model_g(m, lp->norm), c->da, L->hin, L->rstd, model_w(m, lp->norm), n, d);
            float *t = c->dh;
            c->dh = c->tmp;
            c->tmp = t;
        } else {
            mixer_backward(c, m, l, c->dh, c->da);
            // the residual passes dh through unchanged; the norm adds its share
            rmsnorm_backward(c->dh, model_g(m, lp->norm), c->da, L->hin, L->rstd, model_w(m, lp->norm), n, d);
        }
    }
    embedding_backward(dW_emb, c->dh, b->inputs, n, d);
}

// ---------------------------------------------------------------- lifetime

static void cpu_destroy(hax_engine *e) {
    cpu_impl *c = e->impl;
    for (int l = 0; l < c->cfg->n_layers; l++) {
        if (c->L[l].sp) sparse_state_free(c->L[l].sp);
        free(c->L[l].hash);
        free(c->L[l].cand);
    }
    free(c->L);
    free(c->arena);
    free(c->correct);
    free(c->count);
    free(c);
}

static const float *cpu_hidden(hax_engine *e) { return engine_cpu_hidden(e); }
static const float *cpu_logits(hax_engine *e) { return engine_cpu_logits(e); }
static const float *cpu_hash(hax_engine *e, int layer) { return engine_cpu_hash(e, layer); }

static const hax_backend cpu_backend = {.name = "cpu", .forward = cpu_forward, .backward = cpu_backward,
                                        .destroy = cpu_destroy, .hidden = cpu_hidden, .logits = cpu_logits,
                                        .hash = cpu_hash};

hax_engine *engine_cpu_create(hax_model *m, int max_tok, int max_seq, int max_len) {
    if (m->cfg.n_layers > HAX_MAX_LAYERS) hax_die("model.n_layers: expected at most %d, found %d", HAX_MAX_LAYERS, m->cfg.n_layers);
    hax_engine *e = xcalloc(1, sizeof *e);
    cpu_impl *c = xcalloc(1, sizeof *c);
    c->cfg = &m->cfg;
    c->L = xcalloc(m->cfg.n_layers, sizeof(layer_state));
    c->max_tok = max_tok;
    c->max_seq = max_seq;
    c->max_len = max_len;
    e->be = &cpu_backend;
    e->model = m;
    e->impl = c;
    return e;
}

void engine_forward(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_fwd_result *r) {
    e->be->forward(e, b, o, r);
}
void engine_backward(hax_engine *e) { e->be->backward(e); }
void engine_free(hax_engine *e) {
    if (!e) return;
    e->be->destroy(e);
    free(e);
}

// A backend table without an output is a programming error, not bad input.
const float *engine_hidden(hax_engine *e) {
    if (!e->be->hidden) hax_die("engine %s: expected a hidden output in the backend table, found none", e->be->name);
    return e->be->hidden(e);
}
const float *engine_logits(hax_engine *e) {
    if (!e->be->logits) hax_die("engine %s: expected a logits output in the backend table, found none", e->be->name);
    return e->be->logits(e);
}
const float *engine_hash(hax_engine *e, int layer) {
    if (!e->be->hash) hax_die("engine %s: expected a hash output in the backend table, found none", e->be->name);
    return e->be->hash(e, layer);
}

const float *engine_cpu_hidden(const hax_engine *e) { return ((const cpu_impl *)e->impl)->hf; }
const float *engine_cpu_logits(const hax_engine *e) { return ((const cpu_impl *)e->impl)->logits; }
const struct hax_sparse_state *engine_cpu_sparse(const hax_engine *e, int layer) {
    return ((const cpu_impl *)e->impl)->L[layer].sp;
}
const float *engine_cpu_hash(const hax_engine *e, int layer) {
    const layer_state *L = &((const cpu_impl *)e->impl)->L[layer];
    return L->have_hash ? L->hash : NULL;
}
