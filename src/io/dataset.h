// dataset.h: the joint-recall dataset on disk (manifest + shards) and the
// reader the trainer uses. The README section "Dataset generation" documents
// the format byte by byte; data-gen/ writes it, this file defines and reads it.
//
// A dataset is a folder: manifest.yaml (written last; a folder without it is
// not a dataset) and fixed-size shards train-00000.bin, valid-00000.bin, ...
// A sample of a w-level dataset has level sizes (n_1, ..., n_w); for w = 2
// these are (n_c, n_k): contexts and keys. Level w is always the keys.
#ifndef HAX_DATASET_H
#define HAX_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "src/io/batch.h"

enum { SPLIT_TRAIN = 0, SPLIT_VALID = 1, SPLIT_TEST = 2, HAX_N_SPLITS = 3 };
// The reference's special tokens; value v is TOK_BIAS + v.
enum { TOK_BOS = 1, TOK_PAD = 3, TOK_SEP = 4, TOK_BIAS = 10 };
#define HAX_MAX_LEVELS 8
#define HAX_MAX_ATTEMPT 65535  // redraws of one sample (16 bits of the rng counter)

extern const char *const hax_split_names[HAX_N_SPLITS];  // "train", "valid", "test"

// Generator parameters: they decide every sample's layout.
typedef struct {
    int levels;                     // w: 1 = associative recall, 2 = joint recall
    int min_size[HAX_MAX_LEVELS];   // per level, outermost context first, keys last
    int max_size[HAX_MAX_LEVELS];
    // Token-id layout maxima per level (hax-datagen --id-layout): ids are laid
    // out as if the level maxima were these. All 0: the max sizes themselves.
    int id_max[HAX_MAX_LEVELS];
    int n_value;                    // |V|
    int64_t n_per_cell[HAX_N_SPLITS];  // samples per cell: train, valid, test
    uint64_t seed;
    int compat;                     // 1: drawn by --compat reference (numpy's stream)
} hax_data_params;

// Checks ranges (min >= 1, max >= min, token ids fit 16 bits, lengths fit).
// Returns 0, or -1 with "field: expected ..., found ..." in err.
int data_params_check(const hax_data_params *p, char *err, int errlen);
int64_t data_n_cells(const hax_data_params *p);
int64_t data_split_size(const hax_data_params *p, int split);
// Level sizes of the cell of sample `index` (the cell cycles fastest, the
// last level fastest within it, as create_dataset.py's nested loops).
void data_cell_of(const hax_data_params *p, int64_t index, int *sizes);
// Tokens of a sample with these level sizes: 2 + 2 * (sum_l P_l + P_w), P_l = n_1 ... n_l.
int64_t data_sample_len(const hax_data_params *p, const int *sizes);
// The reference's padded length: the sample length at the maximum sizes (1058).
int64_t data_pad_len(const hax_data_params *p);
// The maximum a level's ids are laid out for: id_max[level], else max_size[level].
int data_layout_max(const hax_data_params *p, int level);
// 1 when the id layout differs from the one of the max sizes (the manifest
// then records it as id_layout).
int data_has_id_layout(const hax_data_params *p);
// First token id of a level: keys start at 10 + n_value, each outer level
// after the layout maxima of the levels inside it (contexts at 10 + n_value + max_n_key).
int data_level_base(const hax_data_params *p, int level);
int data_max_token(const hax_data_params *p);
// 1 when every id fits a byte, else 2.
int data_token_bytes(const hax_data_params *p);

// ---- shard file (little-endian; sections 8-byte aligned) ----
#define HAX_SHARD_MAGIC "HAXSHARD"
#define HAX_SHARD_VERSION 1
enum { SEC_OFFSETS = 0, SEC_TOKENS = 1, SEC_MASK = 2, SEC_META = 3, HAX_N_SECTIONS = 4 };

typedef struct {
    char magic[8];            // "HAXSHARD"
    uint32_t version;         // HAX_SHARD_VERSION
    uint32_t header_bytes;    // sizeof(hax_shard_header) = 160
    uint32_t split;           // 0 train, 1 valid, 2 test
    uint32_t shard_index;     // position in the split's shard list
    uint64_t first_index;     // split index of the first sample
    uint32_t n_samples;
    uint32_t token_bytes;     // 1: uint8 ids, 2: uint16 ids
    uint32_t levels;          // w
    uint32_t pad_len;         // the reference's padded length
    uint64_t n_tokens;        // tokens in the shard
    uint64_t seed;
    uint64_t sec_offset[HAX_N_SECTIONS];  // byte offset of each section in the file
    uint64_t sec_bytes[HAX_N_SECTIONS];   // its length (alignment padding excluded)
    uint32_t sec_crc[HAX_N_SECTIONS];     // CRC-32C of each section
    uint32_t meta_stride;     // bytes of metadata per sample: 2 * (levels + 1)
    uint32_t reserved[2];     // zero
    uint32_t header_crc;      // CRC-32C of the 156 bytes before this field
} hax_shard_header;
// Sections: offsets uint64[n+1] (token offset of each sample, then n_tokens);
// tokens; mask: one bit per token, bit (p & 7) of byte p >> 3; meta: per sample
// uint16 level sizes[w] then uint16 attempt (redraws made for uniqueness).

// A memory-mapped shard.
typedef struct {
    char *path;
    int split, index;
    hax_shard_header h;
    const uint8_t *map;
    size_t map_bytes;
    const uint64_t *off;
    const uint8_t *tok, *mask, *meta;
} hax_shard;

// Maps a shard and checks its header (magic, version, header CRC, section
// bounds, offsets monotone). expect_bytes > 0: the file must have that size.
int shard_open(hax_shard *s, const char *path, uint64_t expect_bytes, char *err, int errlen);
void shard_close(hax_shard *s);
// Checks the section CRCs against the header (the header's own CRC is
// checked by shard_open, and against the manifest by dataset_open).
int shard_check_crc(const hax_shard *s, char *err, int errlen);
// One cheap pass over the samples: each has its cell in the reference's
// order, the length of that cell and token ids up to data_max_token (what
// --verify would reject first, checked before a run writes anything).
int shard_check_samples(const hax_shard *s, const hax_data_params *p, char *err, int errlen);

// Copies sample i of a shard out (any pointer may be NULL); returns its length.
int shard_sample(const hax_shard *sh, uint32_t i, int32_t *tokens, uint8_t *mask, int *sizes, int *attempt);

// ---- the dataset ----
typedef struct hax_dataset hax_dataset;

// Opens a folder: parses and checks manifest.yaml, maps every shard, checks
// sizes and headers against the manifest (not the section checksums: see
// dataset_check_checksums). Returns NULL with one line in err.
hax_dataset *dataset_open(const char *dir, char *err, int errlen);
void dataset_close(hax_dataset *ds);
const hax_data_params *dataset_params(const hax_dataset *ds);
int64_t dataset_size(const hax_dataset *ds, int split);
int dataset_pad_len(const hax_dataset *ds);
int dataset_n_shards(const hax_dataset *ds, int split);
const hax_shard *dataset_shard(const hax_dataset *ds, int split, int i);
// Checks every shard's checksums and shard_check_samples; shards i with
// i % n_ranks == rank only.
int dataset_check_checksums(const hax_dataset *ds, int rank, int n_ranks, char *err, int errlen);

// One stored sample: tokens and mask (each at least the sample's length),
// sizes[levels] may be NULL. Returns the length.
int dataset_sample(const hax_dataset *ds, int split, int64_t index, int32_t *tokens, uint8_t *mask,
                   int *sizes);
int dataset_sample_attempt(const hax_dataset *ds, int split, int64_t index);

// ---- batches ----
// Shuffling (off by default, the reference's order): each epoch of the train
// split is permuted by a Fisher-Yates shuffle drawn from (seed, RNG_SHUFFLE, epoch).
void dataset_set_shuffle(hax_dataset *ds, int on, uint64_t seed);
// Global batches per epoch: ceil(n / global_batch), the last one partial
// (PyTorch's DataLoader without drop_last).
int64_t dataset_batches_per_epoch(const hax_dataset *ds, int split, int global_batch);
// Allocates a batch able to hold global_batch sequences of the model length.
void dataset_batch_alloc(const hax_dataset *ds, int global_batch, hax_batch *b);
// Fills this rank's slice of global batch `batch` (counted across epochs:
// epoch = batch / batches_per_epoch) of a split: sequences
// [n * rank / n_ranks, n * (rank + 1) / n_ranks) of the n in that batch.
// The same global batch whatever n_ranks. Returns the epoch.
int64_t dataset_batch(hax_dataset *ds, int split, int64_t batch, int global_batch, int rank, int n_ranks,
                      hax_batch *out);

// Evaluation: the whole split in batches of global_batch, each rank taking
// its slice (the same slices as dataset_batch in the stored order).
typedef struct {
    hax_dataset *ds;
    int split, global_batch, rank, n_ranks;
    int64_t next, n_batches;
} dataset_iter;
void dataset_iter_begin(dataset_iter *it, hax_dataset *ds, int split, int global_batch, int rank, int n_ranks);
// Returns 1 and fills out while batches remain, else 0.
int dataset_iter_next(dataset_iter *it, hax_batch *out);

#endif
