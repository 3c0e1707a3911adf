// batch.c: see batch.h.
#include "src/io/batch.h"

#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"

void hax_batch_alloc(hax_batch *b, int max_seq, size_t max_tok) {
    memset(b, 0, sizeof *b);
    size_t ns = (size_t)max_seq;
    b->seq_off = xcalloc(ns + 1, sizeof(int));
    b->inputs = xmalloc(max_tok * sizeof(int32_t));
    b->labels = xmalloc(max_tok * sizeof(int32_t));
    b->loss_mask = xmalloc(max_tok);
    b->sample_idx = xcalloc(ns, sizeof(int64_t));
    b->n_context = xcalloc(ns, sizeof(int));
    b->n_key = xcalloc(ns, sizeof(int));
}

void hax_batch_free(hax_batch *b) {
    free(b->seq_off);
    free(b->inputs);
    free(b->labels);
    free(b->loss_mask);
    free(b->sample_idx);
    free(b->n_context);
    free(b->n_key);
    memset(b, 0, sizeof *b);
}
