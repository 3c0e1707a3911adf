// batch.c: see batch.h.
#include "src/io/batch.h"

#include <stdlib.h>
#include <string.h>

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
