// datagen.h: hax-datagen's parts: one sample (generation, hash, structure
// check), the shard writer, the MPI generation run, and --verify.
#ifndef HAX_DATAGEN_H
#define HAX_DATAGEN_H

#include <stdint.h>

#include "src/io/dataset.h"

// ---- one sample (datagen_sample.c) ----

// Scratch space for generating or checking samples of one parameter set.
typedef struct {
    const hax_data_params *p;
    int base[HAX_MAX_LEVELS];   // first token id of each level
    int *perm[HAX_MAX_LEVELS];  // one permutation buffer per level
    uint16_t *table;            // the value table, P_w entries
    uint8_t *seen;              // structure check: entries of the table already met
    int64_t table_cap;
} sample_ctx;

void sample_ctx_init(sample_ctx *c, const hax_data_params *p);
void sample_ctx_free(sample_ctx *c);

// The default generator: sample `index` of `split` drawn from the stream
// (seed, RNG_DATAGEN, split, index, attempt). sizes = data_cell_of(index).
// tok/mask hold data_pad_len tokens. Returns the length.
int sample_generate(sample_ctx *c, const int *sizes, int split, int64_t index, int attempt, int32_t *tok,
                    uint8_t *mask);

// 128-bit hash of a token sequence (uniqueness checks; equal samples, equal hashes).
void sample_hash(const int32_t *tok, int len, uint64_t h[2]);

// Positions g (ascending) whose hash equals that of an earlier position;
// earlier (may be NULL) gets the first position with that hash. New arrays.
int64_t *hash_repeats(const uint64_t (*h)[2], int64_t n, int64_t *n_rep, int64_t **earlier);

// Checks one sample's structure: length, BOS/SEP, every block a permutation
// of its level's ids, values in range, every inquiry answer equal to the
// information table, mask 1 exactly at inquiry keys. Returns 0 or -1 with err.
int sample_check(sample_ctx *c, const int *sizes, const int32_t *tok, const uint8_t *mask, int len, char *err,
                 int errlen);

// ---- shard writer (datagen_shard.c) ----

typedef struct {
    uint32_t split, index, n_samples;
    uint64_t first_index, n_tokens, bytes;
    uint32_t crc;  // the header's CRC-32C (it holds each section's CRC-32C)
} shard_info;

typedef struct {
    const hax_data_params *p;
    int token_bytes, meta_stride;
    uint32_t pad_len, cap;
    shard_info info;
    uint64_t *off;
    uint8_t *tok, *mask, *meta;
} shard_writer;

void shard_writer_init(shard_writer *w, const hax_data_params *p, uint32_t cap_samples);
void shard_writer_free(shard_writer *w);
void shard_writer_reset(shard_writer *w, int split, int index, uint64_t first_index);
void shard_writer_add(shard_writer *w, const int32_t *tok, const uint8_t *mask, int len, const int *sizes,
                      int attempt);
// Writes the shard to path (synced); fills w->info. Returns 0 or -1 with err.
int shard_writer_write(shard_writer *w, const char *path, char *err, int errlen);
// The file name of a shard: "train-00003.bin".
void shard_file_name(char *buf, int buflen, int split, int index);

// ---- the run (datagen_run.c) ----

enum { FORMAT_SHARDS = 1, FORMAT_TEXT = 2 };

typedef struct {
    hax_data_params p;
    const char *out;
    int64_t shard_size;
    int format;    // FORMAT_* bits
    int force;
    int progress;  // draw progress (stderr is a terminal)
} datagen_opts;

// Generates the dataset (all ranks call it). Returns the exit status.
int datagen_run(const datagen_opts *o, int rank, int n_ranks);

// Writes manifest.yaml text for these shards (datagen_manifest.c). Returns a new string.
char *manifest_text(const hax_data_params *p, int64_t shard_size, const shard_info *shards, int n_shards);

// Prints "hax: <message>" on stderr (an error; the caller returns its status).
void datagen_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// ---- --verify (datagen_verify.c) ----

// Checks a dataset folder (all ranks call it; shards are shared out).
// Prints each problem (up to a limit) and returns the exit status.
int datagen_verify(const char *dir, int rank, int n_ranks);

#endif
