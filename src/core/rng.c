// rng.c: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC'11) and the draws built on it. See rng.h.
#include "src/core/rng.h"

#include <math.h>

#include "src/core/scalar.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

void philox4x32(const uint32_t key[2], const uint32_t ctr[4], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo(PHILOX_M1, c2, &hi1, &lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

void rng_init(hax_rng *r, uint64_t seed, uint32_t domain, uint32_t a, uint32_t b, uint32_t c) {
    // The domain is folded into the key so that streams of different domains
    // with equal (a, b, c) are unrelated.
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32) ^ (domain * 0x85EBCA6Bu);
    r->ctr[0] = 0;
    r->ctr[1] = a;
    r->ctr[2] = b;
    r->ctr[3] = c;
    r->used = 4;
}

uint32_t rng_u32(hax_rng *r) {
    if (r->used == 4) {
        philox4x32(r->key, r->ctr, r->buf);
        r->ctr[0]++;
        r->used = 0;
    }
    return r->buf[r->used++];
}

uint64_t rng_u64(hax_rng *r) {
    uint64_t hi = rng_u32(r);
    return (hi << 32) | rng_u32(r);
}

uint32_t rng_below(hax_rng *r, uint32_t n) {
    if (n <= 1) return 0;
    // Lemire's multiply-shift with rejection of the biased low range.
    uint64_t m = (uint64_t)rng_u32(r) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (low < threshold) {
            m = (uint64_t)rng_u32(r) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

double rng_uniform(hax_rng *r) { return (double)(rng_u64(r) >> 11) * 0x1.0p-53; }

float rng_uniform_f(hax_rng *r) { return (float)(rng_u32(r) >> 8) * 0x1.0p-24f; }

double rng_normal_portable(hax_rng *r) {
    double u1 = 1.0 - rng_uniform(r);  // (0, 1], exact
    double u2 = rng_uniform(r);
    return hax_box_muller(u1, u2);
}

double rng_normal(hax_rng *r) {
    double u1 = 1.0 - rng_uniform(r);  // (0, 1]
    double u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
