// src/train/prefetch.h: hax-train's batch prefetcher. A host thread fills the
// training batches of the coming steps (dataset_batch, this rank's slice)
// while the loop runs the current one; the loop takes them in order. The
// batches are exactly those the loop would build itself: same index, same
// slice, same content (the thread only runs ahead).
#ifndef HAX_TRAIN_PREFETCH_H
#define HAX_TRAIN_PREFETCH_H

#include <stdint.h>

#include "src/io/batch.h"
#include "src/io/dataset.h"

typedef struct train_prefetch train_prefetch;

// Starts the thread on batches first .. end-1 of the train split (global
// batch size global_batch, this rank's slice). The dataset's train split is
// the thread's alone until prefetch_free.
train_prefetch *prefetch_start(hax_dataset *ds, int global_batch, int rank, int n_ranks, int64_t first,
                               int64_t end);
// Batch `index` (the next one not taken yet: indices come in order), waiting
// for it if needed; *n_scored: its scored positions (loss_mask ones). Valid
// until prefetch_release.
const hax_batch *prefetch_take(train_prefetch *pf, int64_t index, double *n_scored);
// Gives the batch taken last back to the thread.
void prefetch_release(train_prefetch *pf);
// Stops and joins the thread, frees the batches (NULL is a no-op).
void prefetch_free(train_prefetch *pf);

#endif
