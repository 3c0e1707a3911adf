// datagen_sample.c: one multi-level joint-recall sample: the default
// generator (a pure function of seed, split, index, attempt), its hash, and
// the structure check used by --verify.
//
// Layout (w levels; w = 2: contexts then keys, as create_dataset.py):
//   BOS, information part, SEP, inquiry part
// A part is the level-1 blocks in a random order; a level-l block is its
// level-l token followed by the level-(l+1) blocks in a fresh random order;
// at the last level (the keys) a block is the key token then its value. The
// inquiry part repeats everything with fresh orders; its key positions carry
// mask 1 (the next token is the answer).
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "data-gen/datagen.h"
#include "src/core/rng.h"

void sample_ctx_init(sample_ctx *c, const hax_data_params *p) {
    memset(c, 0, sizeof *c);
    c->p = p;
    int64_t cap = 1;
    for (int l = 0; l < p->levels; l++) {
        c->base[l] = data_level_base(p, l);
        c->perm[l] = xmalloc((size_t)p->max_size[l] * sizeof(int));
        cap *= p->max_size[l];
    }
    c->table_cap = cap;
    c->table = xmalloc((size_t)cap * sizeof(uint16_t));
    c->seen = xmalloc((size_t)cap);
}

void sample_ctx_free(sample_ctx *c) {
    for (int l = 0; l < HAX_MAX_LEVELS; l++) free(c->perm[l]);
    free(c->table);
    free(c->seen);
    memset(c, 0, sizeof *c);
}

// ---------------------------------------------------------------- generation

typedef struct {
    sample_ctx *c;
    const int *sizes;
    hax_rng *r;
    int32_t *tok;
    uint8_t *mask;
    int len;
    uint8_t inquiry;
} emitter;

// A fresh uniform permutation of 0..n-1 (Fisher-Yates from the identity).
static void permutation(hax_rng *r, int *a, int n) {
    for (int i = 0; i < n; i++) a[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(r, (uint32_t)i + 1);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

// Emits the blocks of `level` under the table prefix `flat`.
static void emit_level(emitter *e, int level, int64_t flat) {
    int n = e->sizes[level], last = level == e->c->p->levels - 1;
    int *perm = e->c->perm[level];
    permutation(e->r, perm, n);
    for (int q = 0; q < n; q++) {
        int i = perm[q];
        int64_t f = flat * n + i;
        e->tok[e->len] = e->c->base[level] + i;
        e->mask[e->len++] = last ? e->inquiry : 0;
        if (last) {
            e->tok[e->len] = TOK_BIAS + e->c->table[f];
            e->mask[e->len++] = 0;
        } else {
            emit_level(e, level + 1, f);
        }
    }
}

// Fills the value table (row-major over the levels). A power-of-two |V|
// takes its values from consecutive bit fields of 32-bit words.
static void draw_table(hax_rng *r, uint16_t *table, int64_t n, int n_value) {
    if (n_value == 1) {
        memset(table, 0, (size_t)n * sizeof *table);
        return;
    }
    if ((n_value & (n_value - 1)) == 0) {
        int bits = __builtin_ctz((unsigned)n_value), per_word = 32 / bits;
        uint32_t mask = (uint32_t)n_value - 1;
        for (int64_t i = 0; i < n;) {
            uint32_t w = rng_u32(r);
            for (int k = 0; k < per_word && i < n; k++, i++, w >>= bits) table[i] = (uint16_t)(w & mask);
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) table[i] = (uint16_t)rng_below(r, (uint32_t)n_value);
}

int sample_generate(sample_ctx *c, const int *sizes, int split, int64_t index, int attempt, int32_t *tok,
                    uint8_t *mask) {
    const hax_data_params *p = c->p;
    hax_rng r;
    // rng.h's RNG_DATAGEN key: a = split, b = low 32 bits of the index,
    // c = the high bits of the index, and the attempt in the top 16 bits.
    rng_init(&r, p->seed, RNG_DATAGEN, (uint32_t)split, (uint32_t)index,
             (uint32_t)(index >> 32) | ((uint32_t)attempt << 16));
    int64_t n_entries = 1;
    for (int l = 0; l < p->levels; l++) n_entries *= sizes[l];
    draw_table(&r, c->table, n_entries, p->n_value);
    emitter e = {.c = c, .sizes = sizes, .r = &r, .tok = tok, .mask = mask};
    tok[e.len] = TOK_BOS;
    mask[e.len++] = 0;
    emit_level(&e, 0, 0);
    tok[e.len] = TOK_SEP;
    mask[e.len++] = 0;
    e.inquiry = 1;
    emit_level(&e, 0, 0);
    return e.len;
}

// ---------------------------------------------------------------- hash

static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

void sample_hash(const int32_t *tok, int len, uint64_t h[2]) {
    // Four 16-bit ids per 64-bit word, two independent lanes.
    uint64_t a = 0x9E3779B97F4A7C15ULL ^ (uint64_t)len, b = 0xC2B2AE3D27D4EB4FULL + (uint64_t)len;
    int i = 0;
    for (; i + 4 <= len; i += 4) {
        uint64_t w = (uint64_t)(uint16_t)tok[i] | (uint64_t)(uint16_t)tok[i + 1] << 16 |
                     (uint64_t)(uint16_t)tok[i + 2] << 32 | (uint64_t)(uint16_t)tok[i + 3] << 48;
        a = (a ^ w) * 0x87c37b91114253d5ULL;
        a = (a << 31) | (a >> 33);
        b = (b + w) * 0x4cf5ad432745937fULL;
        b ^= b >> 29;
    }
    uint64_t w = 0;
    for (int k = 0; i < len; i++, k++) w |= (uint64_t)(uint16_t)tok[i] << (16 * k);
    a = (a ^ w) * 0x87c37b91114253d5ULL;
    b = (b + w) * 0x4cf5ad432745937fULL;
    h[0] = fmix64(a ^ (b >> 7));
    h[1] = fmix64(b + a);
}

int64_t *hash_repeats(const uint64_t (*h)[2], int64_t n, int64_t *n_rep, int64_t **earlier) {
    uint64_t size = 16;
    while (size < 2 * (uint64_t)n) size <<= 1;
    int64_t *slot = xcalloc(size, sizeof(int64_t));  // position + 1; 0 = empty
    int64_t cap = 16, k = 0;
    int64_t *rep = xmalloc((size_t)cap * sizeof(int64_t)), *first = xmalloc((size_t)cap * sizeof(int64_t));
    for (int64_t g = 0; g < n; g++) {
        uint64_t s = h[g][0] & (size - 1);
        for (;;) {
            if (slot[s] == 0) {
                slot[s] = g + 1;
                break;
            }
            const uint64_t *o = h[slot[s] - 1];
            if (o[0] == h[g][0] && o[1] == h[g][1]) {
                if (k == cap) {
                    cap *= 2;
                    rep = xrealloc(rep, (size_t)cap * sizeof(int64_t));
                    first = xrealloc(first, (size_t)cap * sizeof(int64_t));
                }
                first[k] = slot[s] - 1;
                rep[k++] = g;
                break;
            }
            s = (s + 1) & (size - 1);
        }
    }
    free(slot);
    *n_rep = k;
    if (earlier) *earlier = first;
    else free(first);
    return rep;
}

// ---------------------------------------------------------------- check

typedef struct {
    sample_ctx *c;
    const int *sizes;
    const int32_t *tok;
    const uint8_t *mask;
    int len, pos;
    int inquiry;
    char *err;
    int errlen;
} checker;

static int bad(checker *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(checker *k, const char *fmt, ...) {
    int n = snprintf(k->err, (size_t)k->errlen, "position %d: ", k->pos);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && n < k->errlen) vsnprintf(k->err + n, (size_t)(k->errlen - n), fmt, ap);
    va_end(ap);
    return -1;
}

static int check_level(checker *k, int level, int64_t flat) {
    const hax_data_params *p = k->c->p;
    int n = k->sizes[level], last = level == p->levels - 1, base = k->c->base[level];
    int *met = k->c->perm[level];  // level ids met in this block (one buffer per level)
    for (int q = 0; q < n; q++) met[q] = 0;
    for (int q = 0; q < n; q++) {
        if (k->pos >= k->len) return bad(k, "sample ends inside a level-%d block", level + 1);
        int i = k->tok[k->pos] - base;
        if (i < 0 || i >= n)
            return bad(k, "expected a level-%d token %d..%d, found %d", level + 1, base, base + n - 1, k->tok[k->pos]);
        if (met[i]) return bad(k, "level-%d token %d repeated within its block", level + 1, k->tok[k->pos]);
        met[i] = 1;
        int want_mask = last && k->inquiry;
        if (k->mask[k->pos] != want_mask)
            return bad(k, "mask: expected %d at a %s, found %d", want_mask, last ? (k->inquiry ? "inquiry key" :
                       "information key") : "context token", k->mask[k->pos]);
        k->pos++;
        int64_t f = flat * n + i;
        if (last) {
            if (k->pos >= k->len) return bad(k, "sample ends before a value");
            int v = k->tok[k->pos] - TOK_BIAS;
            if (v < 0 || v >= p->n_value)
                return bad(k, "expected a value token %d..%d, found %d", TOK_BIAS, TOK_BIAS + p->n_value - 1,
                           k->tok[k->pos]);
            if (k->mask[k->pos] != 0) return bad(k, "mask: expected 0 at a value, found %d", k->mask[k->pos]);
            if (!k->inquiry) {
                k->c->table[f] = (uint16_t)v;
            } else if (k->c->table[f] != v) {
                return bad(k, "inquiry answer %d differs from the information table's value %d",
                           k->tok[k->pos], TOK_BIAS + k->c->table[f]);
            }
            if (k->c->seen[f] != k->inquiry) return bad(k, "table entry %" PRId64 " asked twice", f);
            k->c->seen[f] = (uint8_t)(k->inquiry + 1);
            k->pos++;
        } else {
            if (check_level(k, level + 1, f)) return -1;
        }
    }
    return 0;
}

int sample_check(sample_ctx *c, const int *sizes, const int32_t *tok, const uint8_t *mask, int len, char *err,
                 int errlen) {
    const hax_data_params *p = c->p;
    checker k = {.c = c, .sizes = sizes, .tok = tok, .mask = mask, .len = len, .err = err, .errlen = errlen};
    int64_t n_entries = 1;
    for (int l = 0; l < p->levels; l++) {
        if (sizes[l] < p->min_size[l] || sizes[l] > p->max_size[l])
            return bad(&k, "level-%d size %d outside %d..%d", l + 1, sizes[l], p->min_size[l], p->max_size[l]);
        n_entries *= sizes[l];
    }
    int64_t want = data_sample_len(p, sizes);
    if (len != want) return bad(&k, "length: expected %" PRId64 " for this cell, found %d", want, len);
    memset(c->seen, 0, (size_t)n_entries);
    if (tok[0] != TOK_BOS || mask[0]) return bad(&k, "expected BOS %d (mask 0), found %d", TOK_BOS, tok[0]);
    k.pos = 1;
    if (check_level(&k, 0, 0)) return -1;
    if (tok[k.pos] != TOK_SEP || mask[k.pos])
        return bad(&k, "expected SEP %d (mask 0), found %d", TOK_SEP, tok[k.pos]);
    k.pos++;
    k.inquiry = 1;
    if (check_level(&k, 0, 0)) return -1;
    if (k.pos != len) return bad(&k, "expected the end of the sample");
    return 0;
}
