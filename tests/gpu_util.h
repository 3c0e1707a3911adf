// gpu_util.h: the helpers of the GPU op tests (tests/gpu_ops.c,
// tests/gpu_scans.c): random host arrays, uploads and downloads, the normwise
// comparison of a GPU result with the CPU's, ragged packed batches.
#ifndef HAX_TESTS_GPU_UTIL_H
#define HAX_TESTS_GPU_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/core/common.h"
#include "src/core/common.h"
#include "src/core/scalar.h"
#include "test.h"

#define TOL_FWD 1e-5
#define TOL_BWD 1e-4

static unsigned g_seed = 1;

static inline float *rnd(size_t n, float lo, float hi) {
    float *p = xmalloc(sizeof(float) * (n ? n : 1));
    test_fill(p, n, g_seed++, 1.0f);
    for (size_t i = 0; i < n; i++) p[i] = lo + (p[i] + 1.0f) * 0.5f * (hi - lo);
    return p;
}

static inline float *copy(const float *h, size_t n) {
    float *p = xmalloc(sizeof(float) * (n ? n : 1));
    memcpy(p, h, sizeof(float) * n);
    return p;
}

static inline void *up(const void *h, size_t bytes) { return cuda_upload_new(h, bytes); }
static inline float *upf(const float *h, size_t n) { return up(h, sizeof(float) * n); }
static inline float *down(const float *d, size_t n) { return cuda_download_new(d, sizeof(float) * n); }

// Compares the GPU result (device) with the CPU's; with init != NULL both
// are increments over init (backward ops accumulate).
static inline void expect(const char *what, const float *d_gpu, const float *cpu, const float *init, size_t n,
                   double tol) {
    float *g = down(d_gpu, n);
    float *c = copy(cpu, n);
    if (init)
        for (size_t i = 0; i < n; i++) g[i] -= init[i], c[i] -= init[i];
    double err = rel_err(g, c, n);
    printf("    %-30s rel err %.2e\n", what, err);
    CHECK(err <= tol, "%s: relative error %.3e above %.0e", what, err, tol);
    free(g);
    free(c);
}

// bf16-pure results: the device tensor against the CPU's, element by element
// in bf16 steps (tests/test.h check_bf16_close).
static inline void expect_bf16(const char *what, const float *d_gpu, const float *cpu, size_t n, double max_diff,
                               double max_far) {
    float *g = down(d_gpu, n);
    check_bf16_close(what, g, cpu, n, max_diff, max_far);
    free(g);
}

typedef struct {
    int n_seq, n_tok;
    int *off;    // host seq_off
    int *d_off;  // device copy
} tbatch;

static inline tbatch make_batch(const int *lens, int n_seq) {
    tbatch b = {n_seq, 0, xmalloc(sizeof(int) * (n_seq + 1)), NULL};
    b.off[0] = 0;
    for (int s = 0; s < n_seq; s++) b.off[s + 1] = b.off[s] + lens[s];
    b.n_tok = b.off[n_seq];
    b.d_off = up(b.off, sizeof(int) * (n_seq + 1));
    return b;
}

static inline void free_batch(tbatch *b) {
    free(b->off);
    cuda_free(b->d_off);
}


// The ragged lengths of the op tests (1 to 100, around the conv width 4).
static const int k_lens[] = {5, 1, 17, 3, 100, 4, 40, 1, 64, 33};
#define K_NSEQ ((int)(sizeof(k_lens) / sizeof(k_lens[0])))

// One CPU call, then the GPU op once (warm-up) and the mean of 10 calls.
#define TIME_OP(label, cpu_stmt, gpu_stmt)                                                                   \
    do {                                                                                                     \
        double t0_ = hax_now();                                                                              \
        cpu_stmt;                                                                                            \
        double cpu_ = (hax_now() - t0_) * 1e3;                                                               \
        gpu_stmt;                                                                                            \
        int e0_ = cuda_event_record();                                                                       \
        for (int r_ = 0; r_ < 10; r_++) gpu_stmt;                                                            \
        float gpu_ = cuda_event_ms(e0_, cuda_event_record()) / 10;                                           \
        printf("TIME %-26s cpu %9.3f ms  gpu %8.3f ms  %6.0fx\n", label, cpu_, gpu_, cpu_ / gpu_);          \
    } while (0)

#endif
