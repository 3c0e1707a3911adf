// src/train/eval.c: evaluation passes (eval.h) and the training loop's use of
// them: one pass over a split with the engine's current weights, the
// reference's per-sample accuracy, overall and per (n_c, n_k) cell, summed
// over ranks.
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "mpi/dist.h"
#include "src/ops/basic.h"
#include "src/train/eval.h"
#include "src/train/internal.h"
#include "src/train/eval_set.h"

void train_eval_alloc(train_eval *ev, int nc, int nk) {
    memset(ev, 0, sizeof *ev);
    ev->nc = nc;
    ev->nk = nk;
    ev->sum = xcalloc((size_t)nc * nk, sizeof(double));
    ev->cnt = xcalloc((size_t)nc * nk, sizeof(double));
}

void train_eval_free(train_eval *ev) {
    free(ev->sum);
    free(ev->cnt);
    memset(ev, 0, sizeof *ev);
}

void train_eval_copy(train_eval *dst, const train_eval *src) {
    size_t n = (size_t)src->nc * src->nk;
    dst->acc = src->acc;
    dst->n = src->n;
    memcpy(dst->sum, src->sum, n * sizeof(double));
    memcpy(dst->cnt, src->cnt, n * sizeof(double));
}

static void eval_zero(train_eval *ev) {
    size_t n = (size_t)ev->nc * ev->nk;
    ev->acc = ev->n = 0;
    memset(ev->sum, 0, n * sizeof(double));
    memset(ev->cnt, 0, n * sizeof(double));
}

// Adds the sequences of the batch, with correct / scored positions per
// sequence, to ev: the reference's per-sample accuracy #correct / #scored in
// float32.
static void eval_add(const hax_batch *b, const int *correct, const int *count, train_eval *ev) {
    for (int s = 0; s < b->n_seq; s++) {
        double a = count[s] > 0 ? (double)((float)correct[s] / (float)count[s]) : 0.0;
        ev->acc += a;  // a sum until the reduction
        ev->n += 1;
        int c = b->n_context[s], k = b->n_key[s];
        if (c >= 0 && c < ev->nc && k >= 0 && k < ev->nk) {
            ev->sum[(size_t)c * ev->nk + k] += a;
            ev->cnt[(size_t)c * ev->nk + k] += 1;
        }
    }
}

// Sums an evaluation over ranks and turns the overall sum into a mean.
static void eval_reduce(const hax_dist *d, train_eval *ev) {
    size_t n = (size_t)ev->nc * ev->nk;
    double *buf = xmalloc((2 * n + 2) * sizeof(double));
    memcpy(buf, ev->sum, n * sizeof(double));
    memcpy(buf + n, ev->cnt, n * sizeof(double));
    buf[2 * n] = ev->acc;
    buf[2 * n + 1] = ev->n;
    if (d->size > 1) dist_allreduce_sum_f64(buf, 2 * n + 2);
    memcpy(ev->sum, buf, n * sizeof(double));
    memcpy(ev->cnt, buf + n, n * sizeof(double));
    ev->n = buf[2 * n + 1];
    ev->acc = ev->n > 0 ? buf[2 * n] / ev->n : 0.0;
    free(buf);
}

// The quirk-1 figure of the batch just run: logits hf · alt_embᵀ on the
// host (waits for the forward), scored into ev_alt.
static void eval_add_alt(eval_pass *p, const hax_batch *b, const float *alt_emb, train_eval *ev_alt) {
    float *logits = xmalloc((size_t)b->n_tok * p->vocab * sizeof(float));
    int *correct = xmalloc((size_t)b->n_seq * sizeof(int)), *count = xmalloc((size_t)b->n_seq * sizeof(int));
    logits_forward(logits, engine_hidden(p->eng), alt_emb, b->n_tok, p->hidden, p->vocab);
    ce_forward(logits, b->labels, b->loss_mask, b->seq_off, b->n_seq, p->vocab, correct, count);
    eval_add(b, correct, count, ev_alt);
    free(logits), free(correct), free(count);
}

// The reference's evaluation batches (of draw_batch sequences) that end in
// evaluation batch i of a split of n sequences: a pass advances the redraw
// counter by the reference's batch count, whatever its own batch (the sum
// over i telescopes to ceil(n / draw_batch)); 1 per batch when they are equal.
static int64_t draws_in(const eval_pass *p, int64_t n, int i) {
    int64_t B = p->batch_size, R = p->draw_batch > 0 ? p->draw_batch : B;
    int64_t g0 = (int64_t)i * B, g1 = g0 + B < n ? g0 + B : n;
    return (g1 + R - 1) / R - (g0 + R - 1) / R;
}

// The engine sized for the set's largest batch before any forward, so none
// of the enqueued forwards reallocates it.
static void reserve_for(hax_engine *e, const eval_set *set) {
    int max_tok, max_seq, max_len;
    eval_set_max(set, &max_tok, &max_seq, &max_len);
    engine_reserve(e, max_tok, max_seq, max_len);
}

void eval_run(eval_pass *p, int split, const float *alt_emb, train_eval *ev, train_eval *ev_alt) {
    eval_zero(ev);
    if (ev_alt) eval_zero(ev_alt);
    double t0 = hax_now();
    eval_set *own = NULL, *set = p->set;
    if (!set || eval_set_split(set) != split) set = own = eval_set_build(p, split);
    reserve_for(p->eng, set);
    int n = eval_set_batches(set);
    int64_t n_split = dataset_size(p->ds, split);
    // Every forward is enqueued without waiting (the counts land in the set);
    // the accuracies are summed after one wait, batch by batch in order.
    for (int i = 0; i < n; i++) {
        const hax_batch *b = eval_set_batch(set, i);
        // Fixed matrices (paper App. D.2): draw 0 for every batch; else a new
        // draw per evaluation batch, as the reference (quirk 6; then
        // config_eval_batch keeps the reference's batches for LSH patterns).
        uint32_t draw = p->fixed_hash ? 0 : (uint32_t)(*p->draws + 1);
        *p->draws += draws_in(p, n_split, i);
        if (b->n_seq == 0) continue;
        hax_fwd_opts fo = {.train = 0, .seed = p->seed, .step = draw, .ce_count = 0, .inject = p->inject};
        int *correct, *count;
        eval_set_counts(set, i, &correct, &count);
        engine_forward_counts(p->eng, b, &fo, correct, count);
        if (ev_alt) eval_add_alt(p, b, alt_emb, ev_alt);
        p->tokens += b->n_tok;
    }
    engine_sync(p->eng);
    for (int i = 0; i < n; i++) {
        int *correct, *count;
        eval_set_counts(set, i, &correct, &count);
        eval_add(eval_set_batch(set, i), correct, count, ev);
    }
    p->seconds += hax_now() - t0;
    eval_reduce(p->d, ev);
    if (ev_alt) eval_reduce(p->d, ev_alt);
    eval_set_free(own);
}

// The training loop's pass: its engine, dataset, batch and redraw counter;
// the validation split's batches are assembled once and kept (t->valid_set).
void train_evaluate(train_ctx *t, int split, const float *alt_emb, train_eval *ev, train_eval *ev_alt) {
    const hax_config *cfg = t->cfg;
    eval_pass p = {.eng = t->eng, .ds = t->o->ds, .d = t->d, .batch = &t->batch,
                   .batch_size = config_eval_batch(cfg), .draw_batch = cfg->train.batch_size,
                   .vocab = cfg->model.vocab_size, .hidden = cfg->model.hidden_size, .seed = cfg->train.seed,
                   .fixed_hash = cfg->train.eval_fixed_hash, .draws = &t->eval_draws};
    double t0 = hax_now();
    if (split == SPLIT_VALID) {
        if (!t->valid_set) {  // assembled, and the engine grown to its largest batch, once
            t->valid_set = eval_set_build(&p, SPLIT_VALID);
            reserve_for(t->eng, t->valid_set);
            t->valid_build_s += hax_now() - t0;
        }
        p.set = t->valid_set;
    }
    eval_run(&p, split, alt_emb, ev, ev_alt);
    if (split == SPLIT_VALID) t->valid_s += hax_now() - t0, t->n_valid++;
}
