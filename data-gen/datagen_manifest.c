// datagen_manifest.c: the text of manifest.yaml (read back by src/io/dataset.c).
// Plain block YAML with one flow mapping per shard, so it diffs well.
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "data-gen/datagen.h"

typedef struct {
    char *buf;
    size_t len, cap;
} strbuf;

static void put(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(strbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = b->cap * 2 + (size_t)(n > 0 ? n : 0) + 256;
        b->buf = xrealloc(b->buf, b->cap);
    }
}

static void put_list(strbuf *b, const char *key, const int *v, int n) {
    put(b, "%s: [", key);
    for (int i = 0; i < n; i++) put(b, "%s%d", i ? ", " : "", v[i]);
    put(b, "]\n");
}

char *manifest_text(const hax_data_params *p, int64_t shard_size, const shard_info *shards, int n_shards) {
    strbuf b = {xmalloc(4096), 0, 4096};
    b.buf[0] = 0;
    put(&b, "# hax dataset manifest, written last: a folder without it is not a dataset.\n");
    put(&b, "format: hax-dataset\nversion: %d\n", HAX_SHARD_VERSION);
    put(&b, "generator: %s\n", p->compat ? "compat-reference" : "default");
    put(&b, "levels: %d\n", p->levels);
    put_list(&b, "min_sizes", p->min_size, p->levels);
    put_list(&b, "max_sizes", p->max_size, p->levels);
    if (data_has_id_layout(p)) {  // absent: the layout of max_sizes (every dataset before the option)
        int lay[HAX_MAX_LEVELS];
        for (int l = 0; l < p->levels; l++) lay[l] = data_layout_max(p, l);
        put_list(&b, "id_layout", lay, p->levels);
    }
    put(&b, "n_value: %d\n", p->n_value);
    put(&b, "n_train_per_cell: %" PRId64 "\nn_valid_per_cell: %" PRId64 "\nn_test_per_cell: %" PRId64 "\n",
        p->n_per_cell[SPLIT_TRAIN], p->n_per_cell[SPLIT_VALID], p->n_per_cell[SPLIT_TEST]);
    put(&b, "seed: %" PRIu64 "\n", p->seed);
    put(&b, "pad_len: %" PRId64 "\n", data_pad_len(p));
    put(&b, "token_bytes: %d\n", data_token_bytes(p));
    put(&b, "shard_size: %" PRId64 "\n", shard_size);
    int bases[HAX_MAX_LEVELS];
    for (int l = 0; l < p->levels; l++) bases[l] = data_level_base(p, l);
    put(&b, "tokens: {bos: %d, sep: %d, pad: %d, value_base: %d}\n", TOK_BOS, TOK_SEP, TOK_PAD, TOK_BIAS);
    put_list(&b, "level_bases", bases, p->levels);
    put(&b, "splits:\n");
    for (int s = 0; s < HAX_N_SPLITS; s++) {
        uint64_t n = 0, n_tok = 0;
        for (int i = 0; i < n_shards; i++)
            if (shards[i].split == (uint32_t)s) {
                n += shards[i].n_samples;
                n_tok += shards[i].n_tokens;
            }
        put(&b, "  %s:\n    n_samples: %" PRIu64 "\n    n_tokens: %" PRIu64 "\n    shards:%s\n", hax_split_names[s],
            n, n_tok, n ? "" : " []");
        for (int i = 0; i < n_shards; i++) {
            const shard_info *sh = &shards[i];
            if (sh->split != (uint32_t)s) continue;
            char name[64];
            shard_file_name(name, sizeof name, s, (int)sh->index);
            put(&b, "      - {file: %s, first: %" PRIu64 ", n_samples: %u, n_tokens: %" PRIu64 ", bytes: %" PRIu64
                ", crc32c: 0x%08x}\n", name, sh->first_index, sh->n_samples, sh->n_tokens, sh->bytes, sh->crc);
        }
    }
    return b.buf;
}
