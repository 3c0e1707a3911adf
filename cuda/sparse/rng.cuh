// cuda/sparse/rng.cuh: the suite's counter-based generator (src/core/rng.c,
// Philox4x32-10) on the device, for the branch's random inputs drawn there
// (key-selection candidates, LSH hash matrices): the same streams, the same
// numbers as the host's.
#ifndef HAX_CU_SPARSE_RNG_CUH
#define HAX_CU_SPARSE_RNG_CUH

#include <stdint.h>

extern "C" {
#include "src/core/rng.h"
}

// The generator of src/core/rng.c, word for word in behaviour: Philox4x32-10 on
// the counter (block, a, b, c), the domain folded into the key.
struct cu_rng {
    uint32_t key[2], ctr[4], buf[4];
    int used;
};

__device__ static inline void cu_philox4x32(const uint32_t key[2], const uint32_t ctr[4], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

__device__ static inline void cu_rng_init(cu_rng *r, uint64_t seed, uint32_t domain, uint32_t a,
                                          uint32_t b, uint32_t c) {
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32) ^ (domain * 0x85EBCA6Bu);
    r->ctr[0] = 0, r->ctr[1] = a, r->ctr[2] = b, r->ctr[3] = c;
    r->used = 4;
}

__device__ static inline uint32_t cu_rng_u32(cu_rng *r) {
    if (r->used == 4) {
        cu_philox4x32(r->key, r->ctr, r->buf);
        r->ctr[0]++;
        r->used = 0;
    }
    return r->buf[r->used++];
}

// rng_below: Lemire's multiply-shift with rejection of the biased low range.
__device__ static inline uint32_t cu_rng_below(cu_rng *r, uint32_t n) {
    if (n <= 1) return 0;
    uint64_t m = (uint64_t)cu_rng_u32(r) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (low < threshold) {
            m = (uint64_t)cu_rng_u32(r) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

// rng_uniform: 53 random bits of the next two words (high word first).
__device__ static inline double cu_rng_uniform(cu_rng *r) {
    uint64_t hi = cu_rng_u32(r);
    uint64_t x = (hi << 32) | cu_rng_u32(r);
    return (double)(x >> 11) * 0x1.0p-53;
}

#endif
