// bench_cpu.c: forward+backward tokens/s of the CPU engine (make bench-cpu).
//
//   paper-size Mamba+HAX and Mamba2+HAX (mamba.json / mamba2.json, HAX
//   sign_bin_lsh+key_selection, k = 64, h = 8) on a batch of 64 joint-recall
//   shaped sequences (length 2 + 2 n_c (1 + 2 n_k), cells 5..16, mean ~464);
//   a tiny config (the golden small Mamba+HAX) on the same batch; and one
//   8,192-token sequence, whose tokens/s staying close to the batch's shows
//   that the sparse branch costs l.k, not l^2.
//
// Usage: build/tests/bench_cpu [min_seconds_per_config (default 3)]
// Prints one line per config; timings only, no assertions.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "src/core/common.h"
#include "src/engine/engine.h"
#include "src/model/model.h"
#include "src/core/rng.h"

// A batch shaped like joint recall: random cells, random ids, loss at n_c n_k
// positions of the second half.
static void make_batch(hax_batch *b, int n_seq, int fixed_len, int model_len, uint64_t seed) {
    hax_rng r;
    rng_init(&r, seed, RNG_DATAGEN, 99, 0, 0);
    int *len = xmalloc(sizeof(int) * n_seq);
    int n_tok = 0;
    for (int s = 0; s < n_seq; s++) {
        int nc = 5 + (int)rng_below(&r, 12), nk = 5 + (int)rng_below(&r, 12);
        len[s] = fixed_len ? fixed_len : 2 + 2 * nc * (1 + 2 * nk) - 1;  // model inputs: one less than the row
        n_tok += len[s];
    }
    hax_batch_alloc(b, n_seq, (size_t)n_tok);
    b->n_seq = n_seq;
    b->n_tok = n_tok;
    b->model_len = model_len;
    b->global_n_seq = n_seq;
    int k = 0;
    for (int s = 0; s < n_seq; s++) {
        b->seq_off[s] = k;
        b->sample_idx[s] = s;
        for (int t = 0; t < len[s]; t++, k++) {
            b->inputs[k] = 10 + (int32_t)rng_below(&r, 48);
            b->labels[k] = 10 + (int32_t)rng_below(&r, 16);
            b->loss_mask[k] = t > len[s] / 2 && (t % 2) == 0;
        }
    }
    b->seq_off[n_seq] = k;
    free(len);
}

static void bench(const char *label, const hax_model_config *cfg, int n_seq, int fixed_len, int model_len,
                  double min_s) {
    hax_model m;
    model_build(&m, cfg);
    model_init(&m, 1);
    hax_batch b;
    make_batch(&b, n_seq, fixed_len, model_len, 5);
    hax_engine *e = engine_cpu_create(&m, b.n_tok, b.n_seq, model_len);
    hax_fwd_opts o = {1, 1, 0, 0, NULL};
    hax_fwd_result r;
    // one warm-up step (allocates the workspace)
    model_zero_grad(&m);
    engine_forward(e, &b, &o, &r);
    engine_backward(e);
    double fwd = 0, bwd = 0;
    int iters = 0;
    double start = hax_now();
    while (iters < 1 || hax_now() - start < min_s) {
        o.step = (uint32_t)(iters + 1);
        model_zero_grad(&m);
        double t0 = hax_now();
        engine_forward(e, &b, &o, &r);
        double t1 = hax_now();
        engine_backward(e);
        double t2 = hax_now();
        fwd += t1 - t0;
        bwd += t2 - t1;
        iters++;
    }
    double per = (fwd + bwd) / iters;
    printf("%-34s %6d seq %8d tok  fwd %8.1f ms  bwd %8.1f ms  fwd+bwd %10.0f tok/s  (%zu params, loss %.3f)\n", label,
           b.n_seq, b.n_tok, 1e3 * fwd / iters, 1e3 * bwd / iters, b.n_tok / per, m.n_floats, r.total_loss);
    fflush(stdout);
    engine_free(e);
    hax_batch_free(&b);
    model_free(&m);
}

int main(int argc, char **argv) {
    double min_s = argc > 1 ? atof(argv[1]) : 3.0;
    printf("CPU engine benchmark: %d OpenMP threads, BLAS on 1 thread, %.0f s per config\n", omp_get_max_threads(), min_s);
    hax_model_config c;
    const char *hax = "sign_bin_lsh+key_selection";
    model_config_reference(&c, ARCH_MAMBA, 0, hax);
    bench("mamba+hax (d 64), batch 64", &c, 64, 0, 1057, min_s);
    model_config_reference(&c, ARCH_MAMBA2, 0, hax);
    bench("mamba2+hax (d 64), batch 64", &c, 64, 0, 1057, min_s);
    // the golden small config: d 16, E 32, N 8, k 8 (4 + 4), h 3
    model_config_reference(&c, ARCH_MAMBA, 0, NULL);
    c.hidden_size = 16;
    c.intermediate_size = 32;
    c.state_size = 8;
    c.sparse_keys = 8;
    c.num_hash = 3;
    char err[256];
    model_config_set_sparse(&c, hax, err, sizeof err);
    bench("tiny mamba+hax (d 16), batch 64", &c, 64, 0, 1057, min_s);
    // l.k scaling: one long sequence
    model_config_reference(&c, ARCH_MAMBA, 0, hax);
    bench("mamba+hax (d 64), 1 x 1024", &c, 1, 1024, 1024, min_s);
    bench("mamba+hax (d 64), 1 x 8192", &c, 1, 8192, 8192, min_s);
    model_config_reference(&c, ARCH_MAMBA2, 0, hax);
    bench("mamba2+hax (d 64), 1 x 8192", &c, 1, 8192, 8192, min_s);
    return 0;
}
