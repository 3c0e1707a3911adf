// engine_batch.h: random packed batches for the engine tests and the GPU
// benchmark (tests/gpu_engine.c, tests/gpu_precision.c, tests/bench_gpu.c):
// sequence s has lens[s] positions, tokens and labels below V drawn from a
// small LCG keyed by seed, about a quarter of the positions scored, model_len
// the longest sequence. Free with hax_batch_free (src/io/batch.h).
#ifndef HAX_TESTS_ENGINE_BATCH_H
#define HAX_TESTS_ENGINE_BATCH_H

#include <stdint.h>
#include <string.h>

#include "src/core/common.h"
#include "src/io/batch.h"

static inline hax_batch test_random_batch(const int *lens, int n_seq, int V, unsigned seed) {
    hax_batch b;
    memset(&b, 0, sizeof b);
    b.n_seq = b.global_n_seq = n_seq;
    b.seq_off = xmalloc(sizeof(int) * (n_seq + 1));
    b.seq_off[0] = 0;
    for (int s = 0; s < n_seq; s++) {
        b.seq_off[s + 1] = b.seq_off[s] + lens[s];
        if (lens[s] > b.model_len) b.model_len = lens[s];
    }
    int n = b.n_tok = b.seq_off[n_seq];
    b.inputs = xmalloc(sizeof(int32_t) * (n ? n : 1));
    b.labels = xmalloc(sizeof(int32_t) * (n ? n : 1));
    b.loss_mask = xmalloc(n ? n : 1);
    unsigned r = seed * 2654435761u + 7u;
    for (int i = 0; i < n; i++) {
        r = r * 1664525u + 1013904223u;
        b.inputs[i] = (int32_t)((r >> 8) % (unsigned)V);
        r = r * 1664525u + 1013904223u;
        b.labels[i] = (int32_t)((r >> 8) % (unsigned)V);
        b.loss_mask[i] = (uint8_t)(((r >> 4) & 3) == 0);  // about a quarter scored
    }
    b.sample_idx = xcalloc(n_seq, sizeof(int64_t));
    b.n_context = xcalloc(n_seq, sizeof(int));
    b.n_key = xcalloc(n_seq, sizeof(int));
    for (int s = 0; s < n_seq; s++) b.sample_idx[s] = s;
    return b;
}

#endif
