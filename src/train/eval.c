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

// Scratch of one pass, grown to the largest batch seen.
typedef struct {
    int *correct, *count;  // [seq_cap]
    float *logits;         // [tok_cap, V] logits with another output matrix
    int seq_cap;
    size_t tok_cap;
} eval_scratch;

static void scratch_reserve(eval_scratch *sc, const hax_batch *b, int vocab, int need_logits) {
    if (b->n_seq > sc->seq_cap) {
        sc->seq_cap = b->n_seq;
        sc->correct = xrealloc(sc->correct, (size_t)sc->seq_cap * sizeof(int));
        sc->count = xrealloc(sc->count, (size_t)sc->seq_cap * sizeof(int));
    }
    if (need_logits && (size_t)b->n_tok > sc->tok_cap) {
        sc->tok_cap = (size_t)b->n_tok;
        free(sc->logits);
        sc->logits = xmalloc(sc->tok_cap * (size_t)vocab * sizeof(float));
    }
}

// Adds the sequences of the batch, scored by logits [n_tok, V], to ev: the
// reference's per-sample accuracy #correct / #scored in float32.
static void eval_add(const hax_batch *b, int vocab, eval_scratch *sc, train_eval *ev, const float *logits) {
    ce_forward(logits, b->labels, b->loss_mask, b->seq_off, b->n_seq, vocab, sc->correct, sc->count);
    for (int s = 0; s < b->n_seq; s++) {
        double a = sc->count[s] > 0 ? (double)((float)sc->correct[s] / (float)sc->count[s]) : 0.0;
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

// Dataset ids -> model ids in place (inputs and labels; pads and the
// special tokens map to themselves).
static void map_ids(const eval_pass *p, hax_batch *b) {
    for (int i = 0; i < b->n_tok; i++) {
        if (b->inputs[i] >= 0 && b->inputs[i] < p->n_ids) b->inputs[i] = p->id_map[b->inputs[i]];
        if (b->labels[i] >= 0 && b->labels[i] < p->n_ids) b->labels[i] = p->id_map[b->labels[i]];
    }
}

void eval_run(eval_pass *p, int split, const float *alt_emb, train_eval *ev, train_eval *ev_alt) {
    eval_scratch sc;
    memset(&sc, 0, sizeof sc);
    eval_zero(ev);
    if (ev_alt) eval_zero(ev_alt);
    double t0 = hax_now();
    hax_batch *b = p->batch;
    dataset_iter it;
    dataset_iter_begin(&it, p->ds, split, p->batch_size, p->d->rank, p->d->size);
    while (dataset_iter_next(&it, b)) {
        // Fixed matrices (paper App. D.2): draw 0 for every batch; else a new
        // draw per evaluation batch, as the reference (quirk 6).
        uint32_t draw = p->fixed_hash ? 0 : (uint32_t)(*p->draws + 1);
        (*p->draws)++;
        if (b->n_seq == 0) continue;
        if (p->id_map) map_ids(p, b);
        scratch_reserve(&sc, b, p->vocab, ev_alt != NULL);
        hax_fwd_opts fo = {.train = 0, .seed = p->seed, .step = draw, .ce_count = 0, .inject = p->inject};
        hax_fwd_result r;
        engine_forward(p->eng, b, &fo, &r);
        eval_add(b, p->vocab, &sc, ev, engine_logits(p->eng));
        if (ev_alt) {
            logits_forward(sc.logits, engine_hidden(p->eng), alt_emb, b->n_tok, p->hidden, p->vocab);
            eval_add(b, p->vocab, &sc, ev_alt, sc.logits);
        }
        p->tokens += b->n_tok;
    }
    p->seconds += hax_now() - t0;
    eval_reduce(p->d, ev);
    if (ev_alt) eval_reduce(p->d, ev_alt);
    free(sc.correct);
    free(sc.count);
    free(sc.logits);
}

// The training loop's pass: its engine, dataset, batch and redraw counter.
void train_evaluate(train_ctx *t, int split, const float *alt_emb, train_eval *ev, train_eval *ev_alt) {
    const hax_config *cfg = t->cfg;
    eval_pass p = {.eng = t->eng, .ds = t->o->ds, .d = t->d, .batch = &t->batch,
                   .batch_size = cfg->train.batch_size, .vocab = cfg->model.vocab_size,
                   .hidden = cfg->model.hidden_size, .seed = cfg->train.seed,
                   .fixed_hash = cfg->train.eval_fixed_hash, .draws = &t->eval_draws};
    eval_run(&p, split, alt_emb, ev, ev_alt);
}
