// dataset_internal.h: the dataset reader's private state, shared by
// dataset.c (manifest, shards, samples) and dataset_batch.c (batches).
#ifndef HAX_DATASET_INTERNAL_H
#define HAX_DATASET_INTERNAL_H

#include "src/io/dataset.h"

struct hax_dataset {
    char *dir;
    hax_data_params p;
    int pad_len, token_bytes;
    int64_t shard_size;
    int64_t n[HAX_N_SPLITS], n_tokens[HAX_N_SPLITS];
    int n_shards[HAX_N_SPLITS];
    hax_shard *shards[HAX_N_SPLITS];
    // Shuffling of the train split: the permutation of the current epoch.
    int shuffle;
    uint64_t shuffle_seed;
    int64_t perm_epoch;  // -1: none computed
    int64_t *perm;
    int32_t *scratch_tok;  // [pad_len] one sample, for batches
    uint8_t *scratch_mask;
};


#endif
