// src/train/eval_set.c: see eval_set.h. Assembled in growing plain arrays,
// then moved into the engine's host memory at their final sizes.
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/train/eval_set.h"

struct eval_set {
    hax_engine *eng;   // whose host memory the arrays are
    int split, n_batches;
    hax_batch *b;      // [n_batches] views into the arrays below
    size_t *tok_base;  // [n_batches] first position of batch i
    size_t *seq_base;  // [n_batches] first sequence of batch i (its seq_off at seq_base + i)
    int32_t *inputs, *labels;  // [n_tok]
    uint8_t *mask;             // [n_tok]
    int *seq_off;              // [n_seq + n_batches]
    int64_t *sample_idx;       // [n_seq]
    int *n_context, *n_key;    // [n_seq]
    int *correct, *count;      // [n_seq] the last pass's counts
    size_t n_tok, n_seq;
    int max_tok, max_seq, max_len;  // the largest batch (eval_set_max)
};

// Appends n elements of elem bytes to the growing array *buf of *len (capacity *cap).
static void append(void **buf, size_t *len, size_t *cap, const void *src, size_t n, size_t elem) {
    if (*len + n > *cap) {
        *cap = *len + n > 2 * *cap ? *len + n : 2 * *cap;
        *buf = xrealloc(*buf, *cap * elem);
    }
    if (n) memcpy((char *)*buf + *len * elem, src, n * elem);
    *len += n;
}

// The array of len elements in the engine's host memory (frees src).
static void *to_host(hax_engine *e, void *src, size_t len, size_t elem) {
    void *dst = engine_host_alloc(e, len * elem);
    if (len) memcpy(dst, src, len * elem);
    free(src);
    return dst;
}

// Dataset ids -> model ids in place (inputs and labels; pads and the
// special tokens map to themselves).
static void map_ids(const eval_pass *p, hax_batch *b) {
    for (int i = 0; i < b->n_tok; i++) {
        if (b->inputs[i] >= 0 && b->inputs[i] < p->n_ids) b->inputs[i] = p->id_map[b->inputs[i]];
        if (b->labels[i] >= 0 && b->labels[i] < p->n_ids) b->labels[i] = p->id_map[b->labels[i]];
    }
}

// Widens the set's largest-batch sizes to hold b.
static void note_max(eval_set *s, const hax_batch *b) {
    if (b->n_tok > s->max_tok) s->max_tok = b->n_tok;
    if (b->n_seq > s->max_seq) s->max_seq = b->n_seq;
    if (b->model_len > s->max_len) s->max_len = b->model_len;
    for (int i = 0; i < b->n_seq; i++)
        if (b->seq_off[i + 1] - b->seq_off[i] > s->max_len) s->max_len = b->seq_off[i + 1] - b->seq_off[i];
}

eval_set *eval_set_build(const eval_pass *p, int split) {
    eval_set *s = xcalloc(1, sizeof *s);
    s->eng = p->eng;
    s->split = split;
    void *in = NULL, *lab = NULL, *mask = NULL, *off = NULL, *idx = NULL, *nc = NULL, *nk = NULL;
    size_t n_in = 0, c_in = 0, n_lab = 0, c_lab = 0, n_mask = 0, c_mask = 0, n_off = 0, c_off = 0;
    size_t n_idx = 0, c_idx = 0, n_nc = 0, c_nc = 0, n_nk = 0, c_nk = 0;
    hax_batch *b = p->batch;
    dataset_iter it;
    dataset_iter_begin(&it, p->ds, split, p->batch_size, p->d->rank, p->d->size);
    int cap_b = 0;
    while (dataset_iter_next(&it, b)) {
        if (p->id_map) map_ids(p, b);
        if (s->n_batches == cap_b) {
            cap_b = cap_b ? 2 * cap_b : 64;
            s->b = xrealloc(s->b, (size_t)cap_b * sizeof *s->b);
            s->tok_base = xrealloc(s->tok_base, (size_t)cap_b * sizeof *s->tok_base);
            s->seq_base = xrealloc(s->seq_base, (size_t)cap_b * sizeof *s->seq_base);
        }
        note_max(s, b);
        s->b[s->n_batches] = *b;  // sizes now, pointers below
        s->tok_base[s->n_batches] = n_in;
        s->seq_base[s->n_batches] = n_idx;
        s->n_batches++;
        append(&in, &n_in, &c_in, b->inputs, (size_t)b->n_tok, sizeof(int32_t));
        append(&lab, &n_lab, &c_lab, b->labels, (size_t)b->n_tok, sizeof(int32_t));
        append(&mask, &n_mask, &c_mask, b->loss_mask, (size_t)b->n_tok, 1);
        append(&off, &n_off, &c_off, b->seq_off, (size_t)b->n_seq + 1, sizeof(int));
        append(&idx, &n_idx, &c_idx, b->sample_idx, (size_t)b->n_seq, sizeof(int64_t));
        append(&nc, &n_nc, &c_nc, b->n_context, (size_t)b->n_seq, sizeof(int));
        append(&nk, &n_nk, &c_nk, b->n_key, (size_t)b->n_seq, sizeof(int));
    }
    s->n_tok = n_in, s->n_seq = n_idx;
    s->inputs = to_host(s->eng, in, n_in, sizeof(int32_t));
    s->labels = to_host(s->eng, lab, n_lab, sizeof(int32_t));
    s->mask = to_host(s->eng, mask, n_mask, 1);
    s->seq_off = to_host(s->eng, off, n_off, sizeof(int));
    s->sample_idx = to_host(s->eng, idx, n_idx, sizeof(int64_t));
    s->n_context = to_host(s->eng, nc, n_nc, sizeof(int));
    s->n_key = to_host(s->eng, nk, n_nk, sizeof(int));
    s->correct = engine_host_alloc(s->eng, s->n_seq * sizeof(int));
    s->count = engine_host_alloc(s->eng, s->n_seq * sizeof(int));
    for (int i = 0; i < s->n_batches; i++) {
        hax_batch *v = &s->b[i];
        size_t t0 = s->tok_base[i], q0 = s->seq_base[i];
        v->inputs = s->inputs + t0, v->labels = s->labels + t0, v->loss_mask = s->mask + t0;
        v->seq_off = s->seq_off + q0 + i;
        v->sample_idx = s->sample_idx + q0, v->n_context = s->n_context + q0, v->n_key = s->n_key + q0;
    }
    return s;
}

void eval_set_free(eval_set *s) {
    if (!s) return;
    engine_host_free(s->eng, s->inputs), engine_host_free(s->eng, s->labels), engine_host_free(s->eng, s->mask);
    engine_host_free(s->eng, s->seq_off), engine_host_free(s->eng, s->sample_idx);
    engine_host_free(s->eng, s->n_context), engine_host_free(s->eng, s->n_key);
    engine_host_free(s->eng, s->correct), engine_host_free(s->eng, s->count);
    free(s->b), free(s->tok_base), free(s->seq_base);
    free(s);
}

int eval_set_split(const eval_set *s) { return s->split; }
int eval_set_batches(const eval_set *s) { return s->n_batches; }
const hax_batch *eval_set_batch(const eval_set *s, int i) { return &s->b[i]; }

void eval_set_counts(eval_set *s, int i, int **correct, int **count) {
    *correct = s->correct + s->seq_base[i];
    *count = s->count + s->seq_base[i];
}

void eval_set_max(const eval_set *s, int *max_tok, int *max_seq, int *max_len) {
    *max_tok = s->max_tok, *max_seq = s->max_seq, *max_len = s->max_len;
}
