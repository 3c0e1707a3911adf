// src/train/eval.c: the evaluation passes of the training loop (moved out of
// train.c unchanged): one pass over a split with the current weights, the
// reference's per-sample accuracy, overall and per (n_c, n_k) cell, summed
// over ranks.
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "mpi/dist.h"
#include "src/ops/basic.h"
#include "src/train/internal.h"

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

// Scratch of the evaluation passes.
typedef struct {
    int *correct, *count;  // [max_seq]
    float *logits;         // [max_tok, V] logits with another output matrix
} eval_scratch;
static eval_scratch scratch;

void train_eval_scratch_alloc(int max_seq, int max_len, int vocab) {
    scratch.correct = xcalloc((size_t)max_seq, sizeof(int));
    scratch.count = xcalloc((size_t)max_seq, sizeof(int));
    scratch.logits = xmalloc((size_t)max_seq * max_len * vocab * sizeof(float));
}

void train_eval_scratch_free(void) {
    free(scratch.correct);
    free(scratch.count);
    free(scratch.logits);
    memset(&scratch, 0, sizeof scratch);
}

// Adds the sequences of the current batch, scored by logits [n_tok, V], to
// ev: the reference's per-sample accuracy #correct / #scored in float32.
static void eval_add(train_ctx *t, train_eval *ev, const float *logits) {
    const hax_batch *b = &t->batch;
    ce_forward(logits, b->labels, b->loss_mask, b->seq_off, b->n_seq, t->cfg->model.vocab_size, scratch.correct,
               scratch.count);
    for (int s = 0; s < b->n_seq; s++) {
        double a = scratch.count[s] > 0 ? (double)((float)scratch.correct[s] / (float)scratch.count[s]) : 0.0;
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
static void eval_reduce(const train_ctx *t, train_eval *ev) {
    size_t n = (size_t)ev->nc * ev->nk;
    double *buf = xmalloc((2 * n + 2) * sizeof(double));
    memcpy(buf, ev->sum, n * sizeof(double));
    memcpy(buf + n, ev->cnt, n * sizeof(double));
    buf[2 * n] = ev->acc;
    buf[2 * n + 1] = ev->n;
    if (t->d->size > 1) dist_allreduce_sum_f64(buf, 2 * n + 2);
    memcpy(ev->sum, buf, n * sizeof(double));
    memcpy(ev->cnt, buf + n, n * sizeof(double));
    ev->n = buf[2 * n + 1];
    ev->acc = ev->n > 0 ? buf[2 * n] / ev->n : 0.0;
    free(buf);
}

// One pass over a split with the model's current weights (evaluation mode:
// no ranking loss, the evaluation hash matrices). With alt_emb, each batch is
// also scored with logits hf · alt_embᵀ into ev_alt (quirk 1's test figure).
void train_evaluate(train_ctx *t, int split, const float *alt_emb, train_eval *ev, train_eval *ev_alt) {
    const hax_config *cfg = t->cfg;
    eval_zero(ev);
    if (ev_alt) eval_zero(ev_alt);
    dataset_iter it;
    dataset_iter_begin(&it, t->o->ds, split, cfg->train.batch_size, t->d->rank, t->d->size);
    while (dataset_iter_next(&it, &t->batch)) {
        // Fixed matrices (paper App. D.2): draw 0 for every batch; else a new
        // draw per evaluation batch, as the reference (quirk 6).
        uint32_t draw = cfg->train.eval_fixed_hash ? 0 : (uint32_t)(t->eval_draws + 1);
        t->eval_draws++;
        if (t->batch.n_seq == 0) continue;
        hax_fwd_opts fo = {.train = 0, .seed = cfg->train.seed, .step = draw, .ce_count = 0, .inject = NULL};
        hax_fwd_result r;
        engine_forward(t->eng, &t->batch, &fo, &r);
        eval_add(t, ev, engine_logits(t->eng));
        if (ev_alt) {
            logits_forward(scratch.logits, engine_hidden(t->eng), alt_emb, t->batch.n_tok,
                           cfg->model.hidden_size, cfg->model.vocab_size);
            eval_add(t, ev_alt, scratch.logits);
        }
    }
    eval_reduce(t, ev);
    if (ev_alt) eval_reduce(t, ev_alt);
}

