// compat.c: `--compat reference`: create_dataset.py's samples from numpy's
// legacy MT19937 stream, with its duplicate rejection (a sample equal to any
// earlier one is drawn again), fast.
//
// Duplicate detection: an open-addressing table of 64-bit token hashes. A
// hash match is confirmed by a full comparison against the earlier sample,
// which is regenerated from the stream: each accepted sample keeps the stream
// position where its draw began, and a copy of the generator is kept every
// CKPT_WORDS words, so regeneration replays at most CKPT_WORDS words. A true
// duplicate or a 64-bit collision is thus always told apart exactly, with
// 8 bytes per sample instead of the samples themselves.
#include "data-gen/compat.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "data-gen/mt19937.h"

#define REF_MIN_N 5                 // the reference's smallest n_c and n_k
#define CKPT_WORDS (1u << 19)       // generator copies every 512Ki words (2.5 KB each)
#define MAX_SAMPLES ((int64_t)1 << 31)
#define MAX_PAD_LEN (1 << 26)

static int hook_hash_bits = 64;
static uint32_t hook_ckpt_words = CKPT_WORDS;

void compat_set_test_hooks(int hash_bits, uint32_t checkpoint_words) {
    hook_hash_bits = hash_bits < 1 || hash_bits > 64 ? 64 : hash_bits;
    hook_ckpt_words = checkpoint_words ? checkpoint_words : CKPT_WORDS;
}

int compat_pad_len(int max_n_context, int max_n_key) {
    return (2 * max_n_context) * (2 * max_n_key + 1) + 2;
}

typedef struct {
    uint64_t hash;  // token hash of the sample (any value)
    uint32_t id;    // global sample id + 1; 0 = empty slot
} slot;

typedef struct {
    const compat_params *p;
    int min_c, min_k, n_kc;           // n_kc: number of n_k values per n_c
    int ncells;
    mt19937 mt;
    int32_t *matrix, *perm_c, *perm_k;
    int32_t *tokens, *again;          // current sample; a regenerated earlier one
    uint8_t *mask;
    slot *table;
    uint64_t table_mask;
    uint64_t *start;                  // stream position of each accepted sample
    int64_t naccepted;
    mt19937 *ckpt;                    // generator copies, increasing positions
    int nckpt, ckpt_cap;
} compat_state;

static void set_err(char *err, int errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, int errlen, const char *fmt, ...) {
    if (!err || errlen <= 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, (size_t)errlen, fmt, ap);
    va_end(ap);
}

// One call of generate_data_item(n_c, n_k): values, then for the information
// part and the inquiry part a context order and one key order per context.
// Writes the unpadded tokens (and, when mask is not NULL, the loss mask).
static int draw_item(mt19937 *mt, const compat_params *p, int n_c, int n_k, int32_t *matrix,
                     int32_t *perm_c, int32_t *perm_k, int32_t *tok, uint8_t *mask) {
    const int32_t value0 = COMPAT_BIAS, key0 = COMPAT_BIAS + p->n_value;
    const int32_t ctx0 = COMPAT_BIAS + p->n_value + p->max_n_key;
    mt_randint(mt, (uint32_t)p->n_value, (int64_t)n_c * n_k, matrix);
    int len = 0;
    tok[len++] = COMPAT_BOS;
    for (int part = 0; part < 2; part++) {  // 0: information, 1: inquiry
        if (part == 1) tok[len++] = COMPAT_SEP;
        mt_permutation(mt, n_c, perm_c);
        for (int a = 0; a < n_c; a++) {
            int i = perm_c[a];
            tok[len++] = ctx0 + i;
            mt_permutation(mt, n_k, perm_k);
            const int32_t *row = matrix + (size_t)i * n_k;
            for (int b = 0; b < n_k; b++) {
                int j = perm_k[b];
                tok[len++] = key0 + j;
                tok[len++] = value0 + row[j];
            }
        }
    }
    if (mask) {
        // mask 1 exactly at the inquiry keys: after SEP, each context is
        // followed by n_k (key, value) pairs.
        int sep = 1 + n_c * (1 + 2 * n_k);
        memset(mask, 0, (size_t)len);
        for (int a = 0; a < n_c; a++) {
            int at = sep + 1 + a * (1 + 2 * n_k) + 1;
            for (int b = 0; b < n_k; b++) mask[at + 2 * b] = 1;
        }
    }
    return len;
}

// 64-bit hash of the tokens, 8 bytes at a time (a multiply-xorshift chain).
static uint64_t hash_tokens(const int32_t *tok, int len) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)len;
    int i = 0;
    for (; i + 1 < len; i += 2) {
        uint64_t w;
        memcpy(&w, tok + i, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
    }
    if (i < len) h = ((h ^ (uint32_t)tok[i]) * 0xbf58476d1ce4e5b9ull) ^ (h >> 31);
    h ^= h >> 33;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 29;
    return h;
}

static void cell_of(const compat_state *s, int64_t global, int *n_c, int *n_k) {
    int cell = (int)(global % s->ncells);  // every split's size is a multiple of ncells
    *n_c = s->min_c + cell / s->n_kc;
    *n_k = s->min_k + cell % s->n_kc;
}

// Regenerates accepted sample `id` into s->again; returns its length.
static int regenerate(compat_state *s, int64_t id) {
    uint64_t at = s->start[id];
    int lo = 0, hi = s->nckpt - 1;  // last checkpoint at or before `at`
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (mt_offset(&s->ckpt[mid]) <= at) lo = mid;
        else hi = mid - 1;
    }
    mt19937 m = s->ckpt[lo];
    mt_skip_to(&m, at);
    int n_c, n_k;
    cell_of(s, id, &n_c, &n_k);
    return draw_item(&m, s->p, n_c, n_k, s->matrix, s->perm_c, s->perm_k, s->again, NULL);
}

// Adds the current sample (tokens[0..len), drawn from stream position `at`)
// unless an equal one was accepted before. Returns 1 when added, 0 when a duplicate.
static int accept(compat_state *s, int len, uint64_t at) {
    uint64_t h = hash_tokens(s->tokens, len);
    if (hook_hash_bits < 64) h &= ((uint64_t)1 << hook_hash_bits) - 1;
    uint64_t i = (h ^ (h >> 29)) & s->table_mask;
    // Regenerating reuses the scratch matrix/permutations: the current
    // sample's tokens are already final, so that is safe.
    for (;; i = (i + 1) & s->table_mask) {
        slot *e = &s->table[i];
        if (e->id == 0) break;
        if (e->hash != h) continue;
        int64_t id = (int64_t)e->id - 1;
        int n = regenerate(s, id);
        if (n == len && memcmp(s->again, s->tokens, (size_t)len * sizeof(int32_t)) == 0) return 0;
    }
    int64_t id = s->naccepted++;
    s->table[i].hash = h;
    s->table[i].id = (uint32_t)(id + 1);
    s->start[id] = at;
    return 1;
}

static void checkpoint(compat_state *s) {
    if (s->nckpt > 0 && mt_offset(&s->mt) - mt_offset(&s->ckpt[s->nckpt - 1]) < hook_ckpt_words) return;
    if (s->nckpt == s->ckpt_cap) {
        s->ckpt_cap = s->ckpt_cap ? 2 * s->ckpt_cap : 64;
        s->ckpt = xrealloc(s->ckpt, (size_t)s->ckpt_cap * sizeof(mt19937));
    }
    s->ckpt[s->nckpt++] = s->mt;
}

// log2 of the number of distinct samples of a cell:
// n_value^(n_c n_k) value tables times (n_c!)^2 (n_k!)^(2 n_c) orders.
static double log2_cell_space(int n_value, int n_c, int n_k) {
    double l = (double)n_c * n_k * log2((double)n_value);
    l += 2.0 * lgamma(n_c + 1.0) / log(2.0);
    l += 2.0 * n_c * lgamma(n_k + 1.0) / log(2.0);
    return l;
}

static int check_params(const compat_params *p, int min_c, int min_k, char *err, int errlen) {
    if (min_c < 1 || min_k < 1) {
        set_err(err, errlen, "compat: smallest n_c/n_k: expected >= 1, found %d/%d", min_c, min_k);
        return -1;
    }
    if (p->max_n_context < min_c || p->max_n_context > 65535) {
        set_err(err, errlen, "compat: max_n_context: expected %d..65535, found %d", min_c, p->max_n_context);
        return -1;
    }
    if (p->max_n_key < min_k || p->max_n_key > 65535) {
        set_err(err, errlen, "compat: max_n_key: expected %d..65535, found %d", min_k, p->max_n_key);
        return -1;
    }
    if (p->n_value < 1) {
        set_err(err, errlen, "compat: n_value: expected >= 1, found %d", p->n_value);
        return -1;
    }
    int64_t top = (int64_t)COMPAT_BIAS + p->n_value + p->max_n_key + p->max_n_context;
    if (top > INT32_MAX) {
        set_err(err, errlen, "compat: token ids: expected at most %d, found %lld (n_value too large)",
                (int)INT32_MAX, (long long)top);
        return -1;
    }
    if ((int64_t)(2 * p->max_n_context) * (2 * p->max_n_key + 1) + 2 > MAX_PAD_LEN) {
        set_err(err, errlen, "compat: padded length (2 max_n_context)(2 max_n_key + 1) + 2: expected <= %d, found %lld",
                MAX_PAD_LEN, (long long)(2 * (int64_t)p->max_n_context) * (2 * p->max_n_key + 1) + 2);
        return -1;
    }
    if (p->n_train_per_cell < 0 || p->n_test_per_cell < 0) {
        set_err(err, errlen, "compat: samples per cell: expected >= 0, found train %lld, test %lld",
                (long long)p->n_train_per_cell, (long long)p->n_test_per_cell);
        return -1;
    }
    int64_t ncells = (int64_t)(p->max_n_context - min_c + 1) * (p->max_n_key - min_k + 1);
    int64_t per_cell = p->n_train_per_cell + 2 * p->n_test_per_cell;
    if (per_cell > MAX_SAMPLES || (per_cell > 0 && ncells > MAX_SAMPLES / per_cell)) {
        set_err(err, errlen, "compat: total samples: expected at most %lld, found %lld cells x %lld",
                (long long)MAX_SAMPLES, (long long)ncells, (long long)per_cell);
        return -1;
    }
    // The reference loops forever when a cell has fewer distinct samples
    // than it must hold; refuse that up front. The smallest cell is the tightest.
    double space = log2_cell_space(p->n_value, min_c, min_k);
    if (space < 62 && (double)per_cell > floor(exp2(space) + 0.5)) {
        set_err(err, errlen, "compat: cell %dx%d: expected at most %.0f samples (all its distinct ones), found %lld asked "
                "(the reference would never finish)", min_c, min_k, floor(exp2(space) + 0.5), (long long)per_cell);
        return -1;
    }
    return 0;
}

static void state_free(compat_state *s) {
    free(s->matrix);
    free(s->perm_c);
    free(s->perm_k);
    free(s->tokens);
    free(s->again);
    free(s->mask);
    free(s->table);
    free(s->start);
    free(s->ckpt);
}

int compat_generate_ex(const compat_params *p, int min_c, int min_k, compat_stats *stats,
                       compat_sink sink, void *ctx, char *err, int errlen) {
    if (stats) memset(stats, 0, sizeof *stats);
    if (check_params(p, min_c, min_k, err, errlen)) return -1;
    compat_state s = {0};
    s.p = p;
    s.min_c = min_c;
    s.min_k = min_k;
    s.n_kc = p->max_n_key - min_k + 1;
    s.ncells = (p->max_n_context - min_c + 1) * s.n_kc;
    int pad_len = compat_pad_len(p->max_n_context, p->max_n_key);
    s.matrix = xmalloc((size_t)p->max_n_context * p->max_n_key * sizeof(int32_t));
    s.perm_c = xmalloc((size_t)p->max_n_context * sizeof(int32_t));
    s.perm_k = xmalloc((size_t)p->max_n_key * sizeof(int32_t));
    s.tokens = xmalloc((size_t)pad_len * sizeof(int32_t));
    s.again = xmalloc((size_t)pad_len * sizeof(int32_t));
    s.mask = xmalloc((size_t)pad_len);
    int64_t counts[3] = {p->n_train_per_cell, p->n_test_per_cell, p->n_test_per_cell};
    int64_t total = (counts[0] + counts[1] + counts[2]) * s.ncells;
    uint64_t cap = 1024;
    while (cap < 2 * (uint64_t)total) cap *= 2;  // load factor <= 1/2
    s.table = xcalloc(cap, sizeof(slot));
    s.table_mask = cap - 1;
    s.start = xmalloc((size_t)(total > 0 ? total : 1) * sizeof(uint64_t));
    mt_seed(&s.mt, p->seed);

    int rc = 0;
    int64_t redraws = 0;
    for (int split = 0; split < 3 && rc == 0; split++) {
        for (int64_t index = 0; index < counts[split] * s.ncells && rc == 0; index++) {
            int n_c = min_c + (int)(index % s.ncells) / s.n_kc;
            int n_k = min_k + (int)(index % s.ncells) % s.n_kc;
            int len;
            for (;;) {
                checkpoint(&s);
                uint64_t at = mt_offset(&s.mt);
                len = draw_item(&s.mt, p, n_c, n_k, s.matrix, s.perm_c, s.perm_k, s.tokens, s.mask);
                if (accept(&s, len, at)) break;
                redraws++;
            }
            if (sink && sink(ctx, split, index, n_c, n_k, s.tokens, s.mask, len) != 0) {
                set_err(err, errlen, "compat: stopped by the output at %s sample %lld",
                        split == 0 ? "train" : split == 1 ? "valid" : "test", (long long)index);
                rc = -1;
            }
        }
    }
    if (stats) {
        stats->samples = s.naccepted;
        stats->redraws = redraws;
        stats->words = mt_offset(&s.mt);
    }
    state_free(&s);
    return rc;
}

int compat_generate(const compat_params *p, compat_sink sink, void *ctx, char *err, int errlen) {
    return compat_generate_ex(p, REF_MIN_N, REF_MIN_N, NULL, sink, ctx, err, errlen);
}
