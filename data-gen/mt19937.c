// mt19937.c: MT19937 block generation and numpy's legacy randint/permutation.
// Written from the MT19937 definition (Matsumoto & Nishimura 1998) and
// numpy's documented draw order; see mt19937.h.
#include "data-gen/mt19937.h"

#define MT_M 397
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu
#define MT_MATRIX_A 0x9908b0dfu

void mt_seed(mt19937 *m, uint32_t seed) {
    m->key[0] = seed;
    for (int i = 1; i < MT_N; i++) {
        uint32_t prev = m->key[i - 1];
        m->key[i] = 1812433253u * (prev ^ (prev >> 30)) + (uint32_t)i;
    }
    m->pos = MT_N;  // the first draw generates block 1
    m->nblocks = 0;
}

// One twist step: the new key[i] from key[i], key[i+1] and key[i+M].
static inline uint32_t mt_twist(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t y = (a & MT_UPPER) | (b & MT_LOWER);
    return c ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
}

void mt_reload(mt19937 *m) {
    uint32_t *k = m->key;
    int i = 0;
    for (; i < MT_N - MT_M; i++) k[i] = mt_twist(k[i], k[i + 1], k[i + MT_M]);
    for (; i < MT_N - 1; i++) k[i] = mt_twist(k[i], k[i + 1], k[i + MT_M - MT_N]);
    k[MT_N - 1] = mt_twist(k[MT_N - 1], k[0], k[MT_M - 1]);
    m->pos = 0;
    m->nblocks++;
}

void mt_skip_to(mt19937 *m, uint64_t offset) {
    while (mt_offset(m) < offset) {
        if (m->pos >= MT_N) mt_reload(m);
        uint64_t left = offset - mt_offset(m);
        uint64_t room = (uint64_t)(MT_N - m->pos);
        m->pos += (int)(left < room ? left : room);
    }
}

void mt_randint(mt19937 *m, uint32_t n, int64_t count, int32_t *out) {
    uint32_t rng = n - 1;  // numpy's inclusive range
    if (rng == 0) {        // a single value: numpy draws nothing
        for (int64_t i = 0; i < count; i++) out[i] = 0;
        return;
    }
    uint32_t mask = mt_mask(rng);
    for (int64_t i = 0; i < count; i++) {
        uint32_t v;
        while ((v = mt_next(m) & mask) > rng) {}
        out[i] = (int32_t)v;
    }
}

void mt_permutation(mt19937 *m, int n, int32_t *out) {
    for (int i = 0; i < n; i++) out[i] = i;
    for (int i = n - 1; i >= 1; i--) {
        int j = (int)mt_interval(m, (uint32_t)i);
        int32_t t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}
