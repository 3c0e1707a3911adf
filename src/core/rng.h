// rng.h: the suite's counter-based random generator (Philox4x32-10).
//
// Every random draw in hax is keyed, not sequential: a stream is named by
// (seed, domain, a, b, c), e.g. (run seed, RNG_LSH, step, layer, 0) or
// (dataset seed, RNG_DATAGEN, split, global sample index, attempt). Two
// processes that name the same stream draw the same numbers, whatever the
// number of ranks or threads, and no state has to be saved to resume.
#ifndef HAX_RNG_H
#define HAX_RNG_H

#include <stdint.h>

// Domains keep streams of different purposes apart.
enum {
    RNG_DATAGEN = 1,   // a = split, b = sample index (low 32), c = (index >> 32) | attempt << 16
    RNG_INIT = 2,      // a = parameter index, b = 0, c = 0
    RNG_LSH = 3,       // a = step, b = layer, c = 0: the training hash matrix
    RNG_LSH_EVAL = 4,  // a = 0, b = layer, c = 0: the fixed evaluation hash matrix
    RNG_KS = 5,        // a = step, b = layer, c = global sample index: key-selection candidates
    RNG_SHUFFLE = 6,   // a = epoch: the data order when shuffling is on
};

typedef struct {
    uint32_t key[2];
    uint32_t ctr[4];  // ctr[0] counts blocks; ctr[1..3] = a, b, c
    uint32_t buf[4];
    int used;         // how many words of buf were handed out
} hax_rng;

// One Philox4x32-10 block: out = philox(key, ctr).
void philox4x32(const uint32_t key[2], const uint32_t ctr[4], uint32_t out[4]);

void rng_init(hax_rng *r, uint64_t seed, uint32_t domain, uint32_t a, uint32_t b, uint32_t c);
uint32_t rng_u32(hax_rng *r);
uint64_t rng_u64(hax_rng *r);
// Uniform integer in [0, n), unbiased (rejection). n >= 1.
uint32_t rng_below(hax_rng *r, uint32_t n);
// Uniform double in [0, 1) with 53 random bits; float in [0, 1) with 24 bits.
double rng_uniform(hax_rng *r);
float rng_uniform_f(hax_rng *r);
// Standard normal (Box-Muller on two uniforms; one value per call).
double rng_normal(hax_rng *r);
// The same draw through hax_box_muller (src/core/scalar.h): the same bits as
// the device's (cuda_lsh_draw_hash), for the LSH hash matrices. Each call
// takes one Philox block, so value i of a fresh stream is block i's.
double rng_normal_portable(hax_rng *r);

#endif
