// mixer.c: one layer's mixer for any backend (internal.h): Mamba or Mamba-2
// in two halves with the sparse branch on X between them (the Enhanced
// mixers, MODEL.md §5.7), or Samba's attention; and the branch's random
// inputs. The weight pointers are the backend's copies (eng_w / eng_g).
#include <string.h>

#include "src/core/common.h"
#include "src/core/rng.h"
#include "src/core/scalar.h"
#include "src/engine/internal.h"
#include "src/sparse/ks.h"

// ---------------------------------------------------------------- parameters

static mamba_params mamba_w(const eng_core *c, const hax_model *m, const hax_layer_params *l) {
    // GEMM weights through eng_wg (bf16 copies in mixed bf16)
    mamba_params p = {eng_w(c, m, l->A_log),      eng_w(c, m, l->D),         eng_w(c, m, l->conv_w),
                      eng_w(c, m, l->conv_b),     eng_wg(c, m, l->in_proj),  eng_wg(c, m, l->x_proj),
                      eng_wg(c, m, l->dt_proj_w), eng_w(c, m, l->dt_proj_b), eng_wg(c, m, l->out_proj),
                      eng_w(c, m, l->E)};
    return p;
}

static mamba_grads mamba_g(const eng_core *c, const hax_model *m, const hax_layer_params *l) {
    mamba_grads g = {eng_g(c, m, l->A_log),     eng_g(c, m, l->D),         eng_g(c, m, l->conv_w),
                     eng_g(c, m, l->conv_b),    eng_g(c, m, l->in_proj),   eng_g(c, m, l->x_proj),
                     eng_g(c, m, l->dt_proj_w), eng_g(c, m, l->dt_proj_b), eng_g(c, m, l->out_proj),
                     eng_g(c, m, l->E)};
    return g;
}

static mamba2_params mamba2_w(const eng_core *c, const hax_model *m, const hax_layer_params *l) {
    mamba2_params p = {eng_w(c, m, l->dt_bias), eng_w(c, m, l->A_log),    eng_w(c, m, l->D),
                       eng_w(c, m, l->conv_w),  eng_w(c, m, l->conv_b),   eng_wg(c, m, l->in_proj),
                       eng_w(c, m, l->gnorm),   eng_wg(c, m, l->out_proj), eng_w(c, m, l->E)};
    return p;
}

static mamba2_grads mamba2_g(const eng_core *c, const hax_model *m, const hax_layer_params *l) {
    mamba2_grads g = {eng_g(c, m, l->dt_bias), eng_g(c, m, l->A_log),   eng_g(c, m, l->D),
                      eng_g(c, m, l->conv_w),  eng_g(c, m, l->conv_b),  eng_g(c, m, l->in_proj),
                      eng_g(c, m, l->gnorm),   eng_g(c, m, l->out_proj), eng_g(c, m, l->E)};
    return g;
}

static attn_params attn_w(const eng_core *c, const hax_model *m, const hax_layer_params *l) {
    attn_params p = {eng_wg(c, m, l->q_proj), eng_wg(c, m, l->k_proj), eng_wg(c, m, l->v_proj),
                     eng_wg(c, m, l->o_proj)};
    return p;
}

static attn_grads attn_g(const eng_core *c, const hax_model *m, const hax_layer_params *l) {
    attn_grads g = {eng_g(c, m, l->q_proj), eng_g(c, m, l->k_proj), eng_g(c, m, l->v_proj), eng_g(c, m, l->o_proj)};
    return g;
}

static ks_params ks_w(const eng_core *c, const hax_model *m, const hax_layer_params *l) {
    ks_params p = {eng_wg(c, m, l->dx1_w), eng_w(c, m, l->dx1_b), eng_wg(c, m, l->dx2_w),
                   eng_w(c, m, l->dx2_b),  eng_wg(c, m, l->dx3_w), eng_w(c, m, l->dx3_b)};
    return p;
}

static ks_grads ks_g(const eng_core *c, const hax_model *m, const hax_layer_params *l) {
    ks_grads g = {eng_g(c, m, l->dx1_w), eng_g(c, m, l->dx1_b), eng_g(c, m, l->dx2_w),
                  eng_g(c, m, l->dx2_b), eng_g(c, m, l->dx3_w), eng_g(c, m, l->dx3_b)};
    return g;
}

// ---------------------------------------------------------------- activations

void mixer_acts_list(hax_act_table *t, eng_core *c, const hax_model *m, int l, int n, int n_seq) {
    const hax_model_config *cfg = &m->cfg;
    eng_layer *L = &c->L[l];
    size_t nd = (size_t)n * cfg->hidden_size;
    if (m->layers[l].is_attn) {
        acts_add(t, "attn.q", &L->att.q, nd);
        acts_add(t, "attn.k", &L->att.k, nd);
        acts_add(t, "attn.v", &L->att.v, nd);
        acts_add(t, "attn.o", &L->att.o, nd);
        acts_add(t, "attn.lse", &L->att.lse, (size_t)n * (cfg->attn_heads > 0 ? cfg->attn_heads : 1));
    } else if (arch_ssm_mixer(cfg) == MIXER_MAMBA2) {
        mamba2_acts_list(t, c->ops, &L->mam2, cfg, n, n_seq);
    } else {
        mamba_acts_list(t, c->ops, &L->mam, cfg, n, n_seq);
    }
    if (cfg->sparse_mask) acts_add(t, "sparse.attn", &L->attn, (size_t)n * cfg->intermediate_size);
}

// ---------------------------------------------------------------- random inputs

void mixer_inputs(eng_core *c, const hax_model *m, const hax_batch *b, const hax_batch *bd, const hax_fwd_opts *o) {
    const hax_model_config *cfg = &m->cfg;
    const hax_ops *ops = c->ops;
    if (!cfg->sparse_mask) return;
    const hax_inject *inj = o->inject;
    size_t nh = (size_t)cfg->state_size * cfg->num_hash;
    int kc = cfg->k_c;
    for (int l = 0; l < cfg->n_layers; l++) {
        eng_layer *L = &c->L[l];
        if (eng_has_lsh(cfg)) {
            if (inj && inj->hash[l]) {
                memcpy(L->hash, inj->hash[l], sizeof(float) * nh);
                ops->upload(L->hash_dev, L->hash, sizeof(float) * nh);
                L->have_hash = 1;
            } else {
                // drawn by the backend, the same bits on each; bf16-pure: the
                // reference draws H with torch.randn in bf16 (§5.4)
                ops->lsh_draw_hash(L->hash_dev, (int)nh, o->seed, o->train ? RNG_LSH : RNG_LSH_EVAL, o->step,
                                   (uint32_t)l, cfg->precision == PREC_BF16_PURE);
                L->have_hash = 2;  // the backend's copy only (engine_hash fetches it)
            }
            if (inj && inj->q_bucket[l] && inj->k_bucket[l]) {
                if (bd->n_tok != b->n_tok)
                    hax_die("engine %s: injected buckets: expected an unpadded batch, found %d padded positions",
                            ops->name, bd->n_tok - b->n_tok);
                ops->upload(L->qb, inj->q_bucket[l], sizeof(int32_t) * b->n_tok);
                ops->upload(L->kb, inj->k_bucket[l], sizeof(int32_t) * b->n_tok);
                ops->sparse_force_buckets(L->sp, L->qb, L->kb);
            } else {
                ops->sparse_force_buckets(L->sp, NULL, NULL);
            }
        }
        if (eng_has_ks(cfg) && o->train) {
            if (inj && inj->ks_cand[l]) {
                memcpy(L->cand, inj->ks_cand[l], sizeof(int) * (size_t)b->n_seq * kc);
                for (size_t i = (size_t)b->n_seq * kc; i < (size_t)bd->n_seq * kc; i++) L->cand[i] = -1;
                ops->upload(L->cand_dev, L->cand, sizeof(int) * (size_t)bd->n_seq * kc);
            } else {  // drawn by the backend (c->seq_off: bd's, whose first sequences are b's)
                ops->ks_draw_candidates(L->sp, L->cand_dev, b, c->seq_off, bd->n_seq, kc, o->seed, o->step, (uint32_t)l);
            }
        }
    }
}

// ---------------------------------------------------------------- the sparse branch

// The branch of layer l on X (ld ldX) into L->attn (mixer_inputs uploaded
// its hash matrix and candidates).
static void branch_forward(eng_core *c, const hax_model *m, int l, const float *X, int ldX) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    eng_layer *L = &c->L[l];
    ks_params kp = ks_w(c, m, lp);
    c->ops->sparse_forward(L->sp, cfg, c->run, c->seq_off, X, ldX, eng_wg(c, m, lp->xx_proj),
                           eng_has_ks(cfg) ? &kp : NULL, eng_has_lsh(cfg) ? L->hash_dev : NULL,
                           eng_has_ks(cfg) && c->train ? L->cand_dev : NULL, c->train, L->attn,
                           cfg->intermediate_size);
    // bf16-pure: the branch rounds its inside itself (cfg->precision,
    // src/sparse/sparse.h); its output is a bf16 tensor
    hax_bf16_pure(c->ops, cfg, L->attn, (long)c->run->n_tok * cfg->intermediate_size);
}

// Its backward from c->dattn: adds into dX (ld ld_dX) and the branch's gradients.
static void branch_backward(eng_core *c, const hax_model *m, int l, const float *X, int ldX, float *dX, int ld_dX) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    ks_params kp = ks_w(c, m, lp);
    ks_grads kg = ks_g(c, m, lp);
    // d loss / d (the layer's ranking-loss sum); bf16-pure: the weight is the
    // bf16 scalar the reference multiplies by (its gradient bf16(w))
    double w = cfg->gate_loss_weight;
    if (cfg->precision == PREC_BF16_PURE) w = hax_bf16_round((float)w);
    float gate_scale = (float)(w / c->run->global_n_seq);
    c->ops->sparse_backward(c->L[l].sp, cfg, c->run, c->seq_off, c->dattn, cfg->intermediate_size, gate_scale, X,
                            ldX, eng_wg(c, m, lp->xx_proj), eng_has_ks(cfg) ? &kp : NULL, dX, ld_dX,
                            eng_g(c, m, lp->xx_proj), eng_has_ks(cfg) ? &kg : NULL);
}

// ---------------------------------------------------------------- mixer

void mixer_forward(eng_core *c, const hax_model *m, int l, float *out) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    const hax_ops *ops = c->ops;
    eng_layer *L = &c->L[l];
    int n = c->run->n_tok, n_seq = c->run->n_seq, d = cfg->hidden_size;
    if (lp->is_attn) {
        attn_params p = attn_w(c, m, lp);
        // bf16-pure: the op rounds q, k, v, o where the reference stores them (src/ops/attn.h)
        ops->attn_forward(out, d, &L->att, L->a, d, &p, cfg, c->seq_off, n_seq, n);
    } else if (arch_ssm_mixer(cfg) == MIXER_MAMBA2) {
        mamba2_params p = mamba2_w(c, m, lp);
        mamba2_pre_forward(ops, &L->mam2, L->a, d, &p, cfg, c->seq_off, n_seq, n);
        if (cfg->sparse_mask) branch_forward(c, m, l, L->mam2.xbc, m->conv_dim);
        mamba2_post_forward(ops, out, d, &L->mam2, L->attn, &p, cfg, c->seq_off, n_seq, n);
    } else {
        mamba_params p = mamba_w(c, m, lp);
        mamba_pre_forward(ops, &L->mam, L->a, d, &p, cfg, c->seq_off, n_seq, n);
        if (cfg->sparse_mask) branch_forward(c, m, l, L->mam.X, cfg->intermediate_size);
        mamba_post_forward(ops, out, d, &L->mam, &c->mbwd, L->attn, &p, cfg, c->seq_off, n_seq, n);
    }
}

void mixer_backward(eng_core *c, const hax_model *m, int l, const float *dout, float *da) {
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    const hax_ops *ops = c->ops;
    eng_layer *L = &c->L[l];
    int n = c->run->n_tok, n_seq = c->run->n_seq, d = cfg->hidden_size, E = cfg->intermediate_size;
    if (lp->is_attn) {
        attn_params p = attn_w(c, m, lp);
        attn_grads g = attn_g(c, m, lp);
        ops->attn_backward(da, d, &g, dout, d, L->a, d, &L->att, &p, cfg, c->seq_off, n_seq, n, c->work);
        return;
    }
    if (cfg->sparse_mask) ops->zero(c->dattn, sizeof(float) * (size_t)n * E);
    if (arch_ssm_mixer(cfg) == MIXER_MAMBA2) {
        mamba2_params p = mamba2_w(c, m, lp);
        mamba2_grads g = mamba2_g(c, m, lp);
        int cd = m->conv_dim;
        mamba2_post_backward(ops, &c->m2bwd, c->dattn, dout, d, &L->mam2, L->attn, &p, &g, cfg, c->seq_off, n_seq, n,
                             c->work);
        if (cfg->sparse_mask) branch_backward(c, m, l, L->mam2.xbc, cd, c->m2bwd.dxbc, cd);
        mamba2_pre_backward(ops, da, d, &c->m2bwd, L->a, d, &L->mam2, &p, &g, cfg, c->seq_off, n_seq, n, c->work);
    } else {
        mamba_params p = mamba_w(c, m, lp);
        mamba_grads g = mamba_g(c, m, lp);
        mamba_post_backward(ops, &c->mbwd, c->dattn, dout, d, &L->mam, L->attn, &p, &g, cfg, c->seq_off, n_seq, n,
                            c->work);
        if (cfg->sparse_mask) branch_backward(c, m, l, L->mam.X, E, c->mbwd.dX, E);
        mamba_pre_backward(ops, da, d, &c->mbwd, L->a, d, &L->mam, &p, &g, cfg, c->seq_off, n_seq, n, c->work);
    }
}
