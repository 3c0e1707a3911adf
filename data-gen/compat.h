// compat.h: `hax-datagen --compat reference`: the samples of the reference's
// scripts/create_dataset.py, byte for byte, from numpy's legacy MT19937 stream
// (see mt19937.h). Sequential by nature: every sample depends on how many
// words all earlier samples (and their duplicate redraws) consumed.
#ifndef HAX_COMPAT_H
#define HAX_COMPAT_H

#include <stdint.h>

typedef struct {
    int max_n_context, max_n_key, n_value;
    int64_t n_train_per_cell, n_test_per_cell;  // valid and test both get n_test_per_cell
    uint32_t seed;
} compat_params;

// tokens/mask are one unpadded sample (len tokens); return 0 to go on, -1 to abort.
typedef int (*compat_sink)(void *ctx, int split, int64_t index, int n_c, int n_k,
                           const int32_t *tokens, const uint8_t *mask, int len);

// Generates the reference's exact sequence: splits train, valid, test (0,1,2);
// within a split index-major with the (n_c, n_k) cell cycling fastest (n_c
// 5..max outer, n_k 5..max inner); a sample equal to any earlier one (any
// split) is redrawn, consuming the stream as create_dataset.py does. index
// counts samples within the split. Returns 0, or -1 with err (or the sink's abort).
int compat_generate(const compat_params *p, compat_sink sink, void *ctx, char *err, int errlen);

// Counters of one run.
typedef struct {
    int64_t samples;  // samples handed to the sink
    int64_t redraws;  // samples drawn again because they equalled an earlier one
    uint64_t words;   // 32-bit MT words consumed
} compat_stats;

// compat_generate with the smallest n_c and n_k as parameters (the reference
// fixes both at 5; smaller cells make duplicates likely, which the tests use
// to exercise the redraw path) and optional counters (stats may be NULL).
// Refuses up front a cell asked for more samples than it has distinct ones
// (the reference would loop forever).
int compat_generate_ex(const compat_params *p, int min_n_context, int min_n_key,
                       compat_stats *stats, compat_sink sink, void *ctx, char *err, int errlen);

// Test hook: keep only the low `hash_bits` bits of each sample hash (64 =
// normal) and copy the generator every `checkpoint_words` words (0 = the
// default 2^19), so tests can force hash collisions and long replays.
void compat_set_test_hooks(int hash_bits, uint32_t checkpoint_words);

// The reference's padded length (2 max_n_context)(2 max_n_key + 1) + 2.
int compat_pad_len(int max_n_context, int max_n_key);

// Token ids of the reference (create_dataset.py): bos 1, sep 4, pad 3,
// value v -> 10+v, key j -> 10+n_value+j, context i -> 10+n_value+max_n_key+i.
enum { COMPAT_BOS = 1, COMPAT_PAD = 3, COMPAT_SEP = 4, COMPAT_BIAS = 10 };

#endif
