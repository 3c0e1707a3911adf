// mt19937.h: the Mersenne Twister MT19937 exactly as numpy's legacy
// RandomState drives it (np.random.seed(int), randint, permutation), so that
// `--compat reference` reproduces scripts/create_dataset.py word for word.
//
// numpy details reproduced here (numpy/random/src/mt19937, distributions.c,
// mtrand.pyx; checked against numpy 1.24 by tests/test_compat.sh):
//   - np.random.seed(s) for an integer s in [0, 2^32) is mt19937_seed(s), the
//     classic init_genrand(s) (not init_by_array).
//   - randint(0, n, ...) with the default int64 dtype draws one 32-bit word
//     per entry when n - 1 < 2^32: word & mask (mask = smallest 2^b - 1 >= n-1),
//     redrawn while > n - 1; n == 1 draws nothing.
//   - permutation(n) = arange(n) then Fisher-Yates for i = n-1 .. 1 with
//     j = random_interval(i) (the same masked rejection on 32-bit words).
#ifndef HAX_MT19937_H
#define HAX_MT19937_H

#include <stdint.h>

#define MT_N 624

typedef struct {
    uint32_t key[MT_N];  // the raw (untempered) state block
    int pos;             // next word of key[] to temper and return; MT_N: block used up
    uint64_t nblocks;    // number of blocks generated since seeding
} mt19937;

// np.random.seed(seed): init_genrand.
void mt_seed(mt19937 *m, uint32_t seed);
// Generates the next block of MT_N words (pos = 0).
void mt_reload(mt19937 *m);

static inline uint32_t mt_next(mt19937 *m) {
    if (m->pos >= MT_N) mt_reload(m);
    uint32_t y = m->key[m->pos++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

// Number of 32-bit words drawn since seeding (the stream position).
static inline uint64_t mt_offset(const mt19937 *m) {
    return m->nblocks * MT_N + (uint64_t)m->pos - MT_N;
}
// Moves forward to stream position `offset` (>= mt_offset(m)) without
// tempering the skipped words.
void mt_skip_to(mt19937 *m, uint64_t offset);

// Smallest 2^b - 1 >= x.
static inline uint32_t mt_mask(uint32_t x) {
    x |= x >> 1;
    x |= x >> 2;
    x |= x >> 4;
    x |= x >> 8;
    x |= x >> 16;
    return x;
}

// numpy's random_interval(max) for max < 2^32: uniform in [0, max].
static inline uint32_t mt_interval(mt19937 *m, uint32_t max) {
    if (max == 0) return 0;
    uint32_t mask = mt_mask(max), v;
    while ((v = mt_next(m) & mask) > max) {}
    return v;
}

// np.random.randint(0, n, size=count) (int64 dtype, n >= 1, n - 1 < 2^32):
// `count` values in [0, n) into out.
void mt_randint(mt19937 *m, uint32_t n, int64_t count, int32_t *out);
// np.random.permutation(n) into out[0..n).
void mt_permutation(mt19937 *m, int n, int32_t *out);

#endif
