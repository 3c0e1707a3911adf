// engine.c: the backend-neutral engine (internal.h): the activation table,
// the block stack forward and backward, the loss bookkeeping, the outputs.
// Every kernel and buffer is the backend's (ops.h):
//
//   Mamba / Mamba2 block:  h <- h + mixer(rmsnorm(h))                  (MODEL.md §1.5)
//   Samba block:           s = h + mixer(rmsnorm(h)); h <- s + mlp(rmsnorm(s))   (§4.2, golden README Q19)
//   mixer = pre half -> [sparse branch on X] -> post half (mixer.c)
//   head:  hf = rmsnorm_f(h); logits = hf . W_emb^T; CE + accuracy at scored positions
//
// bf16 emulation (train.precision; ops.h's hax_bf16_pure / hax_bf16_act, no
// ops at all in fp32). bf16-pure rounds, forward: each norm output, each
// mixer / MLP output, the residual sum, hf, the logits (MODEL.md §1.2-§1.6,
// §4.2); backward: dlogits, dhf, each block's gradient (the residual's sum
// bf16(dh + bf16(dnorm)) as autograd adds them), da, and every parameter's
// gradient at the end (fp32 sums inside the kernels, one rounding each, and
// W_emb's two uses added in bf16). Mixed bf16: the GEMMs read the bf16 copy
// wq of the weights and bf16-rounded inputs.
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/engine/internal.h"
#include "src/core/scalar.h"

// ---------------------------------------------------------------- buffers

// The activation table for n positions in n_seq sequences.
static void acts_table(hax_act_table *t, eng_core *c, const hax_model *m, int n, int n_seq) {
    const hax_model_config *cfg = &m->cfg;
    size_t nd = (size_t)n * cfg->hidden_size, nV = (size_t)n * cfg->vocab_size;
    int samba = arch_has_mlp(cfg);  // Samba's MLP sublayer
    for (int l = 0; l < cfg->n_layers; l++) {
        eng_layer *L = &c->L[l];
        acts_add(t, "hin", &L->hin, nd);
        acts_add(t, "a", &L->a, nd);
        acts_add(t, "rstd", &L->rstd, n);
        mixer_acts_list(t, c, m, l, n, n_seq);
        if (samba) {
            size_t nm = (size_t)n * cfg->mlp_hidden;
            acts_add(t, "s", &L->s, nd);
            acts_add(t, "rstd2", &L->rstd2, n);
            acts_add(t, "a2", &L->a2, nd);
            acts_add(t, "mlp.g", &L->mlp.g, nm);
            acts_add(t, "mlp.u", &L->mlp.u, nm);
            acts_add(t, "mlp.s", &L->mlp.s, nm);
        }
    }
    acts_add(t, "hlast", &c->hlast, nd);
    acts_add(t, "hf", &c->hf, nd);
    acts_add(t, "rstd_f", &c->rstd_f, n);
    acts_add(t, "logits", &c->logits, nV);
    acts_add(t, "dlogits", &c->dlogits, nV);
    acts_add(t, "dh", &c->dh, nd);
    acts_add(t, "dh2", &c->dh2, nd);
    acts_add(t, "da", &c->da, nd);
    acts_add(t, "tmp", &c->tmp, nd);
    if (samba) acts_add(t, "dmix", &c->dmix, nd);
    if (cfg->sparse_mask) acts_add(t, "dattn", &c->dattn, (size_t)n * cfg->intermediate_size);
    if (arch_ssm_mixer(cfg) == MIXER_MAMBA2) mamba2_bwd_list(t, &c->m2bwd, cfg, n);
    else mamba_bwd_list(t, &c->mbwd, cfg, n);
}

static void batch_free(eng_core *c, const hax_model *m) {
    const hax_ops *ops = c->ops;
    ops->free(c->arena), ops->free(c->work), ops->free(c->ids), ops->free(c->labels), ops->free(c->mask);
    ops->free(c->seq_off), ops->free(c->correct), ops->free(c->count);
    free(c->h_correct), free(c->h_count), free(c->h_hidden), free(c->h_logits);
    c->h_hidden = c->h_logits = NULL;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        eng_layer *L = &c->L[l];
        if (L->sp) ops->sparse_free(L->sp);
        ops->free(L->cand_dev), ops->free(L->qb), ops->free(L->kb);
        free(L->cand);
        L->sp = NULL, L->cand_dev = NULL, L->qb = L->kb = NULL, L->cand = NULL;
    }
}

// The sparse branch's per-layer states and buffers for the capacities.
static void sparse_reserve(eng_core *c, const hax_model *m) {
    const hax_model_config *cfg = &m->cfg;
    const hax_ops *ops = c->ops;
    int kc = cfg->k_c > 0 ? cfg->k_c : 1;
    size_t nh = (size_t)cfg->state_size * (cfg->num_hash > 0 ? cfg->num_hash : 1);
    for (int l = 0; l < cfg->n_layers; l++) {
        eng_layer *L = &c->L[l];
        L->sp = ops->sparse_alloc(cfg, c->cap_tok, c->cap_seq, c->cap_len);
        L->cand_dev = ops->alloc(sizeof(int) * (size_t)c->cap_seq * kc);
        L->cand = xmalloc(sizeof(int) * (size_t)c->cap_seq * kc);
        L->qb = ops->alloc(sizeof(int32_t) * c->cap_tok);
        L->kb = ops->alloc(sizeof(int32_t) * c->cap_tok);
        if (!L->hash) {
            L->hash_dev = ops->alloc(sizeof(float) * nh);
            L->hash = xmalloc(sizeof(float) * nh);
        }
    }
}

// (Re)allocates every batch-sized buffer when a batch exceeds the capacities.
static void reserve(hax_engine *e, int n_tok, int n_seq, int max_len) {
    eng_core *c = e->core;
    const hax_model *m = e->model;
    const hax_ops *ops = c->ops;
    if (n_tok <= c->cap_tok && n_seq <= c->cap_seq && max_len <= c->cap_len && c->arena) return;
    if (n_tok > c->cap_tok) c->cap_tok = n_tok;
    if (n_seq > c->cap_seq) c->cap_seq = n_seq;
    if (max_len > c->cap_len) c->cap_len = max_len;
    if (c->arena && e->be->before_realloc) e->be->before_realloc(e);  // nothing may use the old buffers
    batch_free(c, m);
    // Sized for the worst split of cap_tok positions into cap_seq sequences
    // (the checkpoints grow with n_seq); laid out once: a batch uses the first rows.
    hax_act_table t = {0};
    acts_table(&t, c, m, c->cap_tok, c->cap_seq);
    c->arena_floats = acts_layout(&t, NULL, ops->align);
    c->arena = ops->alloc(sizeof(float) * c->arena_floats);
    acts_layout_clear(&t, c->arena, ops->align);
    c->work = ops->alloc(ops->work_bytes(m, c->cap_tok, c->cap_seq));
    c->ids = ops->alloc(sizeof(int32_t) * c->cap_tok);
    c->labels = ops->alloc(sizeof(int32_t) * c->cap_tok);
    c->mask = ops->alloc(c->cap_tok);
    c->seq_off = ops->alloc(sizeof(int) * (c->cap_seq + 1));
    c->correct = ops->alloc(sizeof(int) * c->cap_seq);
    c->count = ops->alloc(sizeof(int) * c->cap_seq);
    c->h_correct = xmalloc(sizeof(int) * c->cap_seq);
    c->h_count = xmalloc(sizeof(int) * c->cap_seq);
    if (!ops->host) {
        c->h_hidden = xmalloc(sizeof(float) * (size_t)c->cap_tok * m->cfg.hidden_size);
        c->h_logits = xmalloc(sizeof(float) * (size_t)c->cap_tok * m->cfg.vocab_size);
    }
    if (m->cfg.sparse_mask) sparse_reserve(c, m);
}

void engine_reserve(hax_engine *e, int max_tok, int max_seq, int max_len) {
    reserve(e, max_tok > 0 ? max_tok : 1, max_seq > 0 ? max_seq : 1, max_len > 0 ? max_len : 1);
}

hax_engine *engine_new(const hax_backend *be, hax_model *m, float *w, float *g, void *impl, int max_tok,
                       int max_seq, int max_len) {
    if (m->cfg.n_layers > HAX_MAX_LAYERS)
        hax_die("model.n_layers: expected at most %d, found %d", HAX_MAX_LAYERS, m->cfg.n_layers);
    hax_engine *e = xcalloc(1, sizeof *e);
    eng_core *c = xcalloc(1, sizeof *c);
    e->be = be, e->model = m, e->impl = impl, e->core = c;
    c->ops = be->ops, c->w = w, c->g = g;
    if (m->cfg.precision == PREC_BF16) c->wq = c->ops->alloc(sizeof(float) * m->n_floats);
    // small ([V, d]); the precision may be set after the engine is made (tests)
    c->gemb = c->ops->alloc(sizeof(float) * (size_t)m->cfg.vocab_size * m->cfg.hidden_size);
    c->L = xcalloc(m->cfg.n_layers, sizeof(eng_layer));
    c->loss = c->ops->alloc(sizeof(double));
    c->h_gate = xcalloc(m->cfg.n_layers, sizeof(double));
    reserve(e, max_tok > 0 ? max_tok : 1, max_seq > 0 ? max_seq : 1, max_len > 0 ? max_len : 1);
    return e;
}

void engine_free(hax_engine *e) {
    if (!e) return;
    eng_core *c = e->core;
    c->ops->sync();
    batch_free(c, e->model);
    for (int l = 0; l < e->model->cfg.n_layers; l++) c->ops->free(c->L[l].hash_dev), free(c->L[l].hash);
    c->ops->free(c->loss);
    c->ops->free(c->wq);
    c->ops->free(c->gemb);
    if (e->be->destroy) e->be->destroy(e);
    free(c->h_gate), free(c->L), free(c);
    free(e);
}

// ---------------------------------------------------------------- forward

void engine_run_prepare(hax_engine *e, const hax_batch *bd, const hax_batch *b, const hax_fwd_opts *o) {
    eng_core *c = e->core;
    const hax_ops *ops = c->ops;
    int n = bd->n_tok, n_seq = bd->n_seq;
    if (n_seq > 0 && (bd->seq_off[0] != 0 || bd->seq_off[n_seq] != n))
        hax_die("engine %s: batch seq_off: expected 0 .. n_tok = %d, found %d .. %d", ops->name, n, bd->seq_off[0],
                bd->seq_off[n_seq]);
    int max_len = bd->model_len;
    for (int s = 0; s < n_seq; s++)
        if (bd->seq_off[s + 1] - bd->seq_off[s] > max_len) max_len = bd->seq_off[s + 1] - bd->seq_off[s];
    reserve(e, n, n_seq, max_len > 0 ? max_len : 1);
    c->run = bd, c->train = o->train, c->hidden_ok = c->logits_ok = 0;
    if (e->be->before_forward) e->be->before_forward(e);
    ops->upload(c->ids, bd->inputs, sizeof(int32_t) * n);
    ops->upload(c->labels, bd->labels, sizeof(int32_t) * n);
    if (bd->loss_mask) ops->upload(c->mask, bd->loss_mask, n);
    ops->upload(c->seq_off, bd->seq_off, sizeof(int) * (n_seq + 1));
    mixer_inputs(c, e->model, b, bd, o);
}

void engine_run_forward(hax_engine *e) {
    eng_core *c = e->core;
    const hax_ops *ops = c->ops;
    const hax_model *m = e->model;
    const hax_model_config *cfg = &m->cfg;
    const hax_batch *b = c->run;
    int n = b->n_tok, d = cfg->hidden_size, V = cfg->vocab_size;
    long nd = (long)n * d;
    float *W_emb = eng_w(c, m, m->embeddings);
    if (c->wq) ops->round_bf16(c->wq, c->w, (long)m->n_floats);  // mixed bf16: the GEMMs' weights
    // bf16-pure: the weights are bf16 values, so the embedding rows are too
    ops->embedding_forward(c->L[0].hin, c->ids, W_emb, n, d, V);
    for (int l = 0; l < cfg->n_layers; l++) {
        eng_layer *L = &c->L[l];
        const hax_layer_params *lp = &m->layers[l];
        float *next = l + 1 < cfg->n_layers ? c->L[l + 1].hin : c->hlast;
        ops->rmsnorm_forward(L->a, L->rstd, L->hin, eng_w(c, m, lp->norm), n, d, cfg->norm_eps);
        hax_bf16_act(ops, cfg, L->a, nd);
        mixer_forward(c, m, l, c->tmp);
        hax_bf16_pure(ops, cfg, c->tmp, nd);
        if (arch_has_mlp(cfg)) {
            // §1.2: s = bf16(o + res); a2 from the unrounded fp32 sum, then rounded
            ops->add_rmsnorm_forward(L->a2, L->s, L->rstd2, c->tmp, L->hin, eng_w(c, m, lp->mlp_norm), n, d,
                                     cfg->norm_eps);
            hax_bf16_pure(ops, cfg, L->s, nd);
            hax_bf16_act(ops, cfg, L->a2, nd);
            mlp_params mp = {eng_wg(c, m, lp->gate_proj), eng_wg(c, m, lp->up_proj), eng_wg(c, m, lp->down_proj)};
            // bf16-pure: the op rounds g, u and s where the reference stores them (§4.2)
            ops->mlp_forward(c->tmp, d, &L->mlp, L->a2, d, &mp, n, d, cfg->mlp_hidden,
                             cfg->precision == PREC_BF16_PURE);
            hax_bf16_pure(ops, cfg, c->tmp, nd);
            ops->add(next, L->s, c->tmp, nd);
        } else {
            ops->add(next, L->hin, c->tmp, nd);  // Mamba-2's fp32 residual sum, then bf16: the same value
        }
        hax_bf16_pure(ops, cfg, next, nd);
    }
    ops->rmsnorm_forward(c->hf, c->rstd_f, c->hlast, eng_w(c, m, m->norm_f), n, d, cfg->norm_eps);
    hax_bf16_act(ops, cfg, c->hf, nd);
    ops->logits_forward(c->logits, c->hf, eng_wg(c, m, m->embeddings), n, d, V);
    hax_bf16_pure(ops, cfg, c->logits, (long)n * V);  // the CE reads bf16 logits in fp32
    ops->ce_forward(c->loss, c->correct, c->count, c->logits, c->labels, b->loss_mask ? c->mask : NULL, c->seq_off,
                    b->n_seq, n, V, c->work);
}

double engine_result(const hax_model_config *cfg, int n_seq, int global_n_seq, double ce_sum, const int *correct,
                     const int *count, const double *gate, double ce_count, hax_fwd_result *r) {
    memset(r, 0, sizeof *r);
    r->ce_sum = ce_sum;
    double gate_sum = 0;
    if (cfg->sparse_mask)
        for (int l = 0; l < cfg->n_layers; l++) {
            r->gate_layer[l] = gate[l] / global_n_seq;
            gate_sum += gate[l];
        }
    double acc_sum = 0;
    for (int s = 0; s < n_seq; s++) {
        r->n_scored += count[s];
        r->correct += correct[s];
        // float32 per-sample ratio, as the reference's .float() (golden README Q20)
        if (count[s] > 0) acc_sum += (double)((float)correct[s] / (float)count[s]);
    }
    if (ce_count <= 0) ce_count = (double)r->n_scored;
    r->loss = ce_count > 0 ? r->ce_sum / ce_count : 0;
    r->acc = acc_sum / global_n_seq;
    r->gate_loss = gate_sum / global_n_seq;
    r->total_loss = r->loss + cfg->gate_loss_weight * r->gate_loss;
    return ce_count;
}

void engine_run_collect(hax_engine *e, const hax_fwd_opts *o, hax_fwd_result *r) {
    eng_core *c = e->core;
    const hax_ops *ops = c->ops;
    const hax_model_config *cfg = &e->model->cfg;
    const hax_batch *b = c->run;
    int n_seq = b->n_seq, n_layers = cfg->n_layers;
    double ce_sum = 0;
    ops->download(&ce_sum, c->loss, sizeof(double));
    ops->download(c->h_correct, c->correct, sizeof(int) * n_seq);
    ops->download(c->h_count, c->count, sizeof(int) * n_seq);
    if (cfg->sparse_mask)
        for (int l = 0; l < n_layers; l++) ops->download(&c->h_gate[l], ops->sparse_gate_loss(c->L[l].sp), sizeof(double));
    ops->sync();
    c->ce_count = engine_result(cfg, n_seq, b->global_n_seq, ce_sum, c->h_correct, c->h_count, c->h_gate, o->ce_count, r);
}

void engine_forward(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, hax_fwd_result *r) {
    // Every CPU loop, the GEMMs of hax_sgemm included, runs on the OpenMP
    // threads over a split that does not depend on their number, so results
    // are bit-identical for any thread count (test_model).
    engine_run_prepare(e, b, b, o);
    engine_run_forward(e);
    engine_run_collect(e, o, r);
}

void engine_forward_counts(hax_engine *e, const hax_batch *b, const hax_fwd_opts *o, int *correct, int *count) {
    eng_core *c = e->core;
    engine_run_prepare(e, b, b, o);
    engine_run_forward(e);
    c->ops->download(correct, c->correct, sizeof(int) * b->n_seq);
    c->ops->download(count, c->count, sizeof(int) * b->n_seq);
}

void engine_sync(hax_engine *e) { e->core->ops->sync(); }

void *engine_host_alloc(hax_engine *e, size_t bytes) {
    const hax_device_ops *dev = e->be->dev;
    return dev && dev->host_alloc ? dev->host_alloc(bytes) : xmalloc(bytes ? bytes : 1);
}

void engine_host_free(hax_engine *e, void *p) {
    const hax_device_ops *dev = e->be->dev;
    if (dev && dev->host_free) dev->host_free(p);
    else free(p);
}

// ---------------------------------------------------------------- backward

// The block norm's backward from c->da: its share of the input gradient added
// into dres (the residual's gradient, which passes through unchanged). In
// bf16-pure the share is a bf16 tensor first (c->dh2 is free here), then the
// sum is rounded, as autograd adds the two bf16 gradients.
static void block_norm_backward(eng_core *c, const hax_model *m, int l, float *dres) {
    const hax_ops *ops = c->ops;
    const hax_model_config *cfg = &m->cfg;
    const hax_layer_params *lp = &m->layers[l];
    eng_layer *L = &c->L[l];
    int n = c->run->n_tok, d = cfg->hidden_size;
    long nd = (long)n * d;
    hax_bf16_pure(ops, cfg, c->da, nd);
    if (cfg->precision != PREC_BF16_PURE) {
        ops->rmsnorm_backward(dres, eng_g(c, m, lp->norm), c->da, L->hin, L->rstd, eng_w(c, m, lp->norm), n, d,
                              c->work);
        return;
    }
    ops->zero(c->dh2, sizeof(float) * nd);
    ops->rmsnorm_backward(c->dh2, eng_g(c, m, lp->norm), c->da, L->hin, L->rstd, eng_w(c, m, lp->norm), n, d,
                          c->work);
    hax_bf16_pure(ops, cfg, c->dh2, nd);
    ops->add(dres, dres, c->dh2, nd);
    hax_bf16_pure(ops, cfg, dres, nd);
}

void engine_run_backward(hax_engine *e, const float *ce_scale) {
    eng_core *c = e->core;
    const hax_ops *ops = c->ops;
    hax_model *m = e->model;
    const hax_model_config *cfg = &m->cfg;
    const hax_batch *b = c->run;
    int n = b->n_tok, d = cfg->hidden_size, V = cfg->vocab_size;
    size_t nd = (size_t)n * d;
    const uint8_t *mask = b->loss_mask ? c->mask : NULL;
    float *dW_emb = eng_g(c, m, m->embeddings);
    if (e->be->backward_sets_grads) ops->zero(c->g, sizeof(float) * m->n_floats);
    if (cfg->precision == PREC_BF16_PURE) {  // the reference's rounded ops and its bf16 normaliser
        ops->ce_backward_bf16(c->dlogits, c->logits, c->labels, mask, n, V, hax_ce_grad_scale(1, c->ce_count),
                              ce_scale);
    } else if (ce_scale) {  // the normaliser from backend memory: a graph replays with each step's
        ops->ce_backward(c->dlogits, c->logits, c->labels, mask, n, V, 1.0f);
        ops->scale(c->dlogits, (long)n * V, ce_scale);
    } else {
        ops->ce_backward(c->dlogits, c->logits, c->labels, mask, n, V, hax_ce_grad_scale(0, c->ce_count));
    }
    ops->zero(c->dh2, sizeof(float) * nd);  // d hf
    ops->logits_backward(c->dh2, dW_emb, c->dlogits, c->hf, eng_wg(c, m, m->embeddings), n, d, V);
    hax_bf16_pure(ops, cfg, c->dh2, (long)nd);
    hax_bf16_pure(ops, cfg, dW_emb, (long)V * d);  // its first use; the embedding's share is added below
    // dh: gradient of the current block's output; tmp: the other buffer (Samba swaps them)
    float *dh = c->dh, *tmp = c->tmp;
    ops->zero(dh, sizeof(float) * nd);  // d hlast
    ops->rmsnorm_backward(dh, eng_g(c, m, m->norm_f), c->dh2, c->hlast, c->rstd_f, eng_w(c, m, m->norm_f), n, d,
                          c->work);
    hax_bf16_pure(ops, cfg, dh, (long)nd);
    for (int l = cfg->n_layers - 1; l >= 0; l--) {
        eng_layer *L = &c->L[l];
        const hax_layer_params *lp = &m->layers[l];
        ops->zero(c->da, sizeof(float) * nd);
        if (arch_has_mlp(cfg)) {
            mlp_params mp = {eng_wg(c, m, lp->gate_proj), eng_wg(c, m, lp->up_proj), eng_wg(c, m, lp->down_proj)};
            mlp_grads mg = {eng_g(c, m, lp->gate_proj), eng_g(c, m, lp->up_proj), eng_g(c, m, lp->down_proj)};
            ops->zero(c->dh2, sizeof(float) * nd);  // d a2
            ops->mlp_backward(c->dh2, d, &mg, dh, d, L->a2, d, &L->mlp, &mp, n, d, cfg->mlp_hidden, c->work,
                              cfg->precision == PREC_BF16_PURE);
            hax_bf16_pure(ops, cfg, c->dh2, (long)nd);
            // s = mixer_out + hin receives dh directly and through the norm
            ops->zero(c->dmix, sizeof(float) * nd);
            ops->zero(tmp, sizeof(float) * nd);  // d hin (residual path)
            ops->add_rmsnorm_backward(c->dmix, tmp, eng_g(c, m, lp->mlp_norm), c->dh2, dh, L->s, L->rstd2,
                                      eng_w(c, m, lp->mlp_norm), n, d, c->work);
            hax_bf16_pure(ops, cfg, c->dmix, (long)nd);
            hax_bf16_pure(ops, cfg, tmp, (long)nd);
            mixer_backward(c, m, l, c->dmix, c->da);
            block_norm_backward(c, m, l, tmp);
            float *t = dh;
            dh = tmp, tmp = t;
        } else {
            mixer_backward(c, m, l, dh, c->da);
            block_norm_backward(c, m, l, dh);
        }
    }
    if (cfg->precision == PREC_BF16_PURE) {
        // the lookup's share is a bf16 tensor of its own: W_emb's .grad is
        // bf16(bf16(logits' share) + bf16(lookup's share)), as autograd adds them
        ops->zero(c->gemb, sizeof(float) * (size_t)V * d);
        ops->embedding_backward(c->gemb, dh, c->ids, n, d, V, c->work);
        ops->add_bf16_rows(dW_emb, d, c->gemb, d, d, V);
    } else {
        ops->embedding_backward(dW_emb, dh, c->ids, n, d, V, c->work);
    }
    // bf16-pure: each parameter's .grad is a bf16 tensor
    hax_bf16_pure(ops, cfg, c->g, (long)m->n_floats);
}

void engine_backward(hax_engine *e) {
    if (!e->core->run) hax_die("engine_backward: called before engine_forward");
    engine_run_backward(e, NULL);
    if (e->be->after_backward) e->be->after_backward(e);
}

// ---------------------------------------------------------------- outputs

// A forward's output [n_tok, width] on the host: the backend's own buffer
// where its memory is the host's, else its host copy, downloaded once per
// forward (*ok says it is done).
static const float *host_output(eng_core *c, float *host, const float *dev, int width, int *ok) {
    if (c->ops->host) return dev;
    if (!*ok) {
        c->ops->download(host, dev, sizeof(float) * (size_t)c->run->n_tok * width);
        c->ops->sync();
        *ok = 1;
    }
    return host;
}

const float *engine_hidden(hax_engine *e) {
    eng_core *c = e->core;
    return host_output(c, c->h_hidden, c->hf, e->model->cfg.hidden_size, &c->hidden_ok);
}

const float *engine_logits(hax_engine *e) {
    eng_core *c = e->core;
    return host_output(c, c->h_logits, c->logits, e->model->cfg.vocab_size, &c->logits_ok);
}

const float *engine_hash(hax_engine *e, int layer) {
    eng_core *c = e->core;
    eng_layer *L = &c->L[layer];
    if (!L->have_hash) return NULL;
    if (c->ops->host) return L->hash_dev;  // backend memory is host memory
    if (L->have_hash == 2) {               // drawn by the backend (mixer_inputs): fetched once
        c->ops->download(L->hash, L->hash_dev, sizeof(float) * (size_t)e->model->cfg.state_size * e->model->cfg.num_hash);
        c->ops->sync();
        L->have_hash = 1;
    }
    return L->hash;
}
