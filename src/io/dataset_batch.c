// dataset_batch.c: packed batches of a dataset split, the reference's order
// (PyTorch DataLoader, no shuffle, no drop_last) or a seeded shuffle per epoch.
//
// Threads: batches are filled with scratch of their own (the samples are
// read-only), so an evaluation pass may fill batches while another thread
// fills training batches (hax-train's prefetcher, src/train/prefetch.c). The
// train split's epoch permutation is cached in the dataset: its batches are
// taken from one thread at a time.
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/io/dataset_internal.h"
#include "src/core/rng.h"

void dataset_set_shuffle(hax_dataset *ds, int on, uint64_t seed) {
    ds->shuffle = on;
    ds->shuffle_seed = seed;
    ds->perm_epoch = -1;
}

int64_t dataset_batches_per_epoch(const hax_dataset *ds, int split, int global_batch) {
    return (ds->n[split] + global_batch - 1) / global_batch;
}

void dataset_batch_alloc(const hax_dataset *ds, int global_batch, hax_batch *b) {
    hax_batch_alloc(b, global_batch, (size_t)global_batch * (size_t)(ds->pad_len - 1));
    b->model_len = ds->pad_len - 1;
}

// The train split's order in this epoch: a Fisher-Yates shuffle of 0..n-1
// drawn from (seed, RNG_SHUFFLE, epoch), so any rank computes the same one.
static const int64_t *epoch_perm(hax_dataset *ds, int64_t epoch) {
    if (ds->perm_epoch == epoch) return ds->perm;
    int64_t n = ds->n[SPLIT_TRAIN];
    if (!ds->perm) ds->perm = xmalloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) ds->perm[i] = i;
    hax_rng r;
    rng_init(&r, ds->shuffle_seed, RNG_SHUFFLE, (uint32_t)epoch, (uint32_t)(epoch >> 32), 0);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (i + 1) <= UINT32_MAX ? (int64_t)rng_below(&r, (uint32_t)(i + 1))
                                          : (int64_t)(rng_u64(&r) % (uint64_t)(i + 1));
        int64_t t = ds->perm[i];
        ds->perm[i] = ds->perm[j];
        ds->perm[j] = t;
    }
    ds->perm_epoch = epoch;
    return ds->perm;
}

// Fills out with this rank's slice of the n samples at stored positions
// first .. first+n-1 (through perm when it is given).
static void fill(hax_dataset *ds, int split, int64_t first, int n, const int64_t *perm, int rank, int n_ranks,
                 hax_batch *out) {
    int32_t *tok = xmalloc((size_t)ds->pad_len * sizeof(int32_t));  // one sample (this call's own)
    uint8_t *mask = xmalloc((size_t)ds->pad_len);
    int lo = (int)((int64_t)n * rank / n_ranks), hi = (int)((int64_t)n * (rank + 1) / n_ranks);
    int model_len = ds->pad_len - 1;
    int at = 0;
    out->n_seq = hi - lo;
    out->global_n_seq = n;
    out->first_seq = lo;
    out->model_len = model_len;
    for (int q = lo; q < hi; q++) {
        int64_t idx = perm ? perm[first + q] : first + q;
        int sizes[HAX_MAX_LEVELS];
        int len = dataset_sample(ds, split, idx, tok, mask, sizes);
        // The reference feeds tok[:-1] of the padded row, so a full-length
        // sample loses its last token; a shorter one keeps all of them and
        // its last label is the pad after it.
        int n_in = len < model_len ? len : model_len;
        int k = q - lo;
        out->seq_off[k] = at;
        for (int t = 0; t < n_in; t++) {
            out->inputs[at + t] = tok[t];
            out->labels[at + t] = t + 1 < len ? tok[t + 1] : TOK_PAD;
            out->loss_mask[at + t] = mask[t];
        }
        at += n_in;
        out->sample_idx[k] = idx;
        // Joint recall: (n_c, n_k); one level: no contexts; w > 2: the
        // product of the outer levels counts as the contexts.
        int n_c = 1;
        for (int l = 0; l + 1 < ds->p.levels; l++) n_c *= sizes[l];
        out->n_context[k] = n_c;
        out->n_key[k] = sizes[ds->p.levels - 1];
    }
    out->seq_off[out->n_seq] = at;
    out->n_tok = at;
    free(tok);
    free(mask);
}

int64_t dataset_batch(hax_dataset *ds, int split, int64_t batch, int global_batch, int rank, int n_ranks,
                      hax_batch *out) {
    if (global_batch < 1 || n_ranks < 1 || rank < 0 || rank >= n_ranks)
        hax_die("dataset_batch: expected global_batch >= 1 and 0 <= rank < n_ranks, found %d, %d, %d", global_batch,
                rank, n_ranks);
    int64_t per_epoch = dataset_batches_per_epoch(ds, split, global_batch);
    if (per_epoch == 0) hax_die("dataset %s: the %s split is empty", ds->dir, hax_split_names[split]);
    int64_t epoch = batch / per_epoch, b = batch % per_epoch;
    int64_t first = b * global_batch;
    int n = (int)(ds->n[split] - first < global_batch ? ds->n[split] - first : global_batch);
    const int64_t *perm = ds->shuffle && split == SPLIT_TRAIN ? epoch_perm(ds, epoch) : NULL;
    fill(ds, split, first, n, perm, rank, n_ranks, out);
    return epoch;
}

void dataset_iter_begin(dataset_iter *it, hax_dataset *ds, int split, int global_batch, int rank, int n_ranks) {
    it->ds = ds;
    it->split = split;
    it->global_batch = global_batch;
    it->rank = rank;
    it->n_ranks = n_ranks;
    it->next = 0;
    it->n_batches = dataset_batches_per_epoch(ds, split, global_batch);
}

int dataset_iter_next(dataset_iter *it, hax_batch *out) {
    if (it->next >= it->n_batches) return 0;
    int64_t first = it->next * it->global_batch;
    int64_t left = it->ds->n[it->split] - first;
    int n = (int)(left < it->global_batch ? left : it->global_batch);
    fill(it->ds, it->split, first, n, NULL, it->rank, it->n_ranks, out);
    it->next++;
    return 1;
}
