// bench_gpu.c: the CUDA engine's speed and memory on every Table 1
// architecture (make bench-gpu, tests/bench_gpu.sh). The configs are those of
// a grid file (configs/grid_table1.yaml), loaded through the config loader
// with train.precision set to each regime (fp32, bf16-pure, bf16), so the
// bench follows the configs. For each (config, regime), at the paper's size:
//   - a training step as hax-train runs it on one GPU: 64 sequences of the
//     joint-recall lengths 400-528 (tests/gpu_engine.c time_train's batch,
//     model_len 1057 as the dataset's; --batch N: N such sequences, to see
//     how the step grows with the batch, the bound on what training several
//     runs as one batched model could gain, issue 11), weights and AdamW resident on the
//     device, engine_cuda_train_step (CUDA-graph steps), a new step number
//     each time (new hash matrices and candidates), mean of N after 3 warm-up
//     steps: ms per step and tokens/s;
//   - one validation pass at 64 sequences per forward (the paper's batch,
//     the passes before train.eval_batch) and one at the config's evaluation
//     batch (config_eval_batch: 256 by default): the valid split (--data DIR:
//     the real one, through hax-train's own eval_run on the split assembled
//     once, as hax-train keeps it) or, without a dataset, the same number of
//     synthetic sequences of the split's lengths (cell cycling fastest, as
//     the generator stores them; 14,400: 225 batches of 64, 57 of 256), run
//     as eval_run runs them (evaluation forwards enqueued without waiting,
//     each copying its per-sequence counts to pinned host memory, one wait);
//     the engine is grown to the largest batch before the timing, as
//     hax-train grows it once at its first validation;
//   - peak GPU memory: the most bytes the engine's buffers held (cuda_malloc,
//     cuda/core/common.h) after the training steps and after the passes (the
//     engine grown for the evaluation batch), and the device's memory in use
//     at the end (cudaMemGetInfo: with the context, cuBLAS's workspace and
//     the graphs).
// Figures are printed, never asserted; a non-finite loss or accuracy makes
// the exit status 1. Without a CUDA device: "SKIP: no CUDA device", exit 0.
//
// usage: bench_gpu [--grid FILE] [--data DIR] [--reps N] [--only NAME,NAME...] [--precision P] [--eval 0|1] [--batch N]
//   --only: configs by file name without .yaml (mamba2_hax,samba); --precision: one regime;
//   --eval 0: training steps only, no validation passes (their columns print 0), so that a
//   profiler (nsys, ncu) run over the bench sees the training step's kernels alone
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/core/common.h"
#include "cuda/engine/engine.h"
#include "mpi/dist.h"
#include "src/config/config.h"
#include "src/core/common.h"
#include "src/engine/engine.h"
#include "src/io/dataset.h"
#include "src/model/model.h"
#include "src/ops/basic.h"
#include "src/train/eval.h"
#include "src/train/eval_set.h"
#include "src/train/grid.h"
#include "engine_batch.h"

typedef struct {
    const char *grid, *data, *only, *precision;
    int reps, eval;  // eval: 0 skips the validation passes (profiling the step alone)
    int batch;       // training sequences per step (64: the paper's)
} bench_opts;

static const char *const regimes[] = {"fp32", "bf16-pure", "bf16"};
static int n_bad;  // non-finite figures seen

// A packed batch owning its arrays: random tokens and labels (ids below V),
// about a quarter of the positions scored, model_len as the dataset's.
static hax_batch make_batch(const int *lens, int n_seq, int V, int model_len, unsigned seed) {
    hax_batch b = test_random_batch(lens, n_seq, V, seed);
    b.model_len = model_len;
    return b;
}

// The synthetic valid split: batches of `batch` sequences whose lengths are
// the split's samples' in stored order (sample s has the cell of s; its
// model positions are its tokens, at most model_len), the last one partial
// as the split's. The lengths repeat every lcm(cells, batch) samples, so
// only that many distinct full batches are built.
typedef struct {
    hax_batch *b;  // [n_distinct] full batches, then the partial last one (if any)
    int n_distinct, n_batches, batch, partial;
} synth_valid;

static hax_batch synth_batch(const hax_data_params *p, int V, int64_t first, int n_seq, unsigned seed) {
    int model_len = (int)data_pad_len(p) - 1, *lens = xmalloc(sizeof(int) * n_seq), sizes[HAX_MAX_LEVELS];
    for (int j = 0; j < n_seq; j++) {
        data_cell_of(p, first + j, sizes);
        int64_t len = data_sample_len(p, sizes);
        lens[j] = (int)(len < model_len ? len : model_len);
    }
    hax_batch b = make_batch(lens, n_seq, V, model_len, seed);
    free(lens);
    return b;
}

static synth_valid synth_valid_make(const hax_data_params *p, int V, int batch) {
    synth_valid sv = {.batch = batch};
    int64_t n = data_split_size(p, 1), cells = data_n_cells(p);
    int64_t period = cells;
    while (period % batch) period += cells;
    sv.n_batches = (int)((n + batch - 1) / batch);
    int n_full = (int)(n / batch);
    sv.n_distinct = (int)(period / batch) < n_full ? (int)(period / batch) : n_full;
    sv.partial = (int)(n % batch);
    sv.b = xmalloc(sizeof(hax_batch) * (sv.n_distinct + 1));
    for (int k = 0; k < sv.n_distinct; k++) sv.b[k] = synth_batch(p, V, (int64_t)k * batch, batch, 100u + (unsigned)k);
    if (sv.partial) sv.b[sv.n_distinct] = synth_batch(p, V, n - sv.partial, sv.partial, 99u);
    return sv;
}

// Batch i of the pass.
static const hax_batch *synth_valid_batch(const synth_valid *sv, int i) {
    if (sv->partial && i == sv->n_batches - 1) return &sv->b[sv->n_distinct];
    return &sv->b[i % sv->n_distinct];
}

static void synth_valid_free(synth_valid *sv) {
    for (int k = 0; k < sv->n_distinct + (sv->partial > 0); k++) hax_batch_free(&sv->b[k]);
    free(sv->b);
}

// One synthetic validation pass, each batch as eval_run runs it: every
// evaluation forward enqueued without waiting (the per-sequence correct /
// scored counts copied into pinned host memory), one wait, then the sums.
// Returns the mean accuracy (its finiteness is all that matters here); adds
// positions and the pass's seconds.
static double synth_valid_pass(hax_engine *e, const synth_valid *sv, const hax_config *c, double *tokens,
                               double *seconds) {
    int bs = sv->batch, max_tok = 0;
    for (int k = 0; k < sv->n_distinct + (sv->partial > 0); k++)
        if (sv->b[k].n_tok > max_tok) max_tok = sv->b[k].n_tok;
    engine_reserve(e, max_tok, bs, sv->b[0].model_len);  // as eval_run, before the timing
    int *cnt = engine_host_alloc(e, sizeof(int) * 2 * (size_t)bs * sv->n_batches);
    double t0 = hax_now(), acc = 0, n_seq = 0;
    for (int i = 0; i < sv->n_batches; i++) {
        const hax_batch *b = synth_valid_batch(sv, i);
        hax_fwd_opts fo = {.train = 0, .seed = c->train.seed, .step = 0, .ce_count = 0, .inject = NULL};
        engine_forward_counts(e, b, &fo, cnt + (size_t)2 * bs * i, cnt + (size_t)2 * bs * i + bs);
        *tokens += b->n_tok;
    }
    engine_sync(e);
    for (int i = 0; i < sv->n_batches; i++) {
        const int *correct = cnt + (size_t)2 * bs * i, *count = correct + bs;
        for (int s = 0; s < synth_valid_batch(sv, i)->n_seq; s++, n_seq++)
            acc += count[s] ? (double)correct[s] / count[s] : 0.0;
    }
    *seconds = hax_now() - t0;
    engine_host_free(e, cnt);
    return acc / n_seq;
}

// The real valid split through hax-train's pass (one rank, fixed hash draw
// 0) at `batch` sequences per forward, its batches assembled and the engine
// grown for them beforehand, as hax-train does once (not timed).
static double real_valid_pass(hax_engine *e, hax_dataset *ds, const hax_config *c, int batch, double *tokens,
                              double *seconds) {
    hax_dist d = {0, 1, 0, 1};
    hax_batch b;
    dataset_batch_alloc(ds, batch, &b);
    const hax_data_params *p = dataset_params(ds);
    int64_t draws = 0;
    eval_pass ep = {.eng = e, .ds = ds, .d = &d, .batch = &b, .batch_size = batch,
                    .draw_batch = c->train.batch_size, .vocab = c->model.vocab_size, .hidden = c->model.hidden_size,
                    .seed = c->train.seed, .fixed_hash = 1, .draws = &draws};
    int nc = 1;
    for (int l = 0; l + 1 < p->levels; l++) nc *= p->max_size[l];
    train_eval ev;
    train_eval_alloc(&ev, nc + 1, p->max_size[p->levels - 1] + 1);
    ep.set = eval_set_build(&ep, SPLIT_VALID);
    int max_tok, max_seq, max_len;
    eval_set_max(ep.set, &max_tok, &max_seq, &max_len);
    engine_reserve(e, max_tok, max_seq, max_len);
    double t0 = hax_now();
    eval_run(&ep, SPLIT_VALID, NULL, &ev, NULL);
    *seconds = hax_now() - t0;
    double acc = ev.acc;
    *tokens += ep.tokens;
    eval_set_free(ep.set);
    train_eval_free(&ev);
    hax_batch_free(&b);
    return acc;
}


// The training batch of tests/gpu_engine.c time_train: 64 sequences of 400-528
// (n of them: the same lengths repeating).
static hax_batch train_batch(const hax_config *c, int model_len, int n) {
    int *lens = xmalloc(sizeof(int) * n);
    for (int s = 0; s < n; s++) lens[s] = 400 + (s % 64 * 37) % 129;
    hax_batch b = make_batch(lens, n, c->model.vocab_size, model_len, 5);
    free(lens);
    return b;
}

// The config's name: its file name without the folder and ".yaml".
static void config_name(const char *path, char *out, int n) {
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    snprintf(out, n, "%.*s", (int)strcspn(base, "."), base);
}

// 1 when name is one of the comma-separated list (NULL: every name).
static int selected(const char *list, const char *name) {
    if (!list) return 1;
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        size_t k = strcspn(p, ",");
        if (k == n && !strncmp(p, name, n)) return 1;
        p += k + (p[k] == ',');
    }
    return 0;
}

static void bench_case(const char *path, const char *regime, const bench_opts *bo, hax_dataset *ds) {
    char name[128];
    config_name(path, name, sizeof name);
    if (!selected(bo->only, name)) return;
    hax_config c;
    char ov[64], err[768];
    snprintf(ov, sizeof ov, "train.precision=%s", regime);
    const char *ovs[] = {ov};
    if (config_load(&c, path, ovs, 1, err, sizeof err)) hax_die("bench_gpu: %s", err);
    if (!engine_cuda_supports(&c.model, err, sizeof err)) {
        printf("| %s | %s | not run: %s |\n", name, regime, err);
        return;
    }
    hax_model m;
    model_build(&m, &c.model);
    model_init(&m, c.train.seed);
    if (c.train.precision == PREC_BF16_PURE) round_bf16(m.data, m.data, (long)m.n_floats);  // as hax-train
    hax_adamw opt;
    adamw_init(&opt, m.n_floats, c.train.beta1, c.train.beta2, c.train.eps, c.train.weight_decay);
    opt.bf16_pure = c.train.precision == PREC_BF16_PURE;
    const hax_data_params *dp = ds ? dataset_params(ds) : &c.data.gen;
    int model_len = (int)data_pad_len(dp) - 1;
    hax_batch tb = train_batch(&c, model_len, bo->batch);

    cuda_sync();
    size_t live0 = cuda_mem_live();
    cuda_mem_reset_peak();
    // sized as hax-train sizes it: the batch of sequences of the model length
    int bs = c.train.batch_size > bo->batch ? c.train.batch_size : bo->batch;
    hax_engine *e = engine_cuda_create(&m, bs * model_len, bs, model_len);
    e->be->dev->push(e, &opt);
    hax_fwd_opts o = {1, c.train.seed, 0, 0.0, NULL};
    hax_fwd_result r;
    for (int i = 0; i < 3; i++) o.step++, engine_cuda_train_step(e, &tb, &o, &opt, c.train.lr, &r);
    cuda_sync();
    double t0 = hax_now();
    for (int i = 0; i < bo->reps; i++) o.step++, engine_cuda_train_step(e, &tb, &o, &opt, c.train.lr, &r);
    cuda_sync();
    double step_s = (hax_now() - t0) / bo->reps;
    int finite = isfinite(r.loss) && e->be->dev->grad_finite(e, 0);
    size_t peak_train = cuda_mem_peak() - live0;

    // the validation pass at 64 sequences per forward, then at the config's
    // evaluation batch (the engine grows there, before the timing)
    int eb = config_eval_batch(&c), batches[2] = {64, eb};
    double valid_s[2] = {0, 0}, vtok[2] = {0, 0};
    for (int k = 0; k < 2 && bo->eval; k++) {
        double acc;
        if (ds) {
            acc = real_valid_pass(e, ds, &c, batches[k], &vtok[k], &valid_s[k]);
        } else {
            synth_valid sv = synth_valid_make(dp, c.model.vocab_size, batches[k]);
            acc = synth_valid_pass(e, &sv, &c, &vtok[k], &valid_s[k]);
            synth_valid_free(&sv);
        }
        finite &= isfinite(acc);
    }
    size_t peak = cuda_mem_peak() - live0, used = cuda_mem_device_used();
    printf("| %s | %s | %.2f | %.2f M | %.3f | %d | %.3f | %.2f M | %.0f | %.0f | %.0f |%s\n", name, regime,
           step_s * 1e3, tb.n_tok / step_s / 1e6, valid_s[0], eb, valid_s[1],
           valid_s[1] > 0 ? vtok[1] / valid_s[1] / 1e6 : 0.0,
           peak_train / 1048576.0, peak / 1048576.0, used / 1048576.0, finite ? "" : " NON-FINITE");
    fflush(stdout);
    if (!finite) n_bad++;
    engine_free(e);
    hax_batch_free(&tb);
    adamw_free(&opt);
    model_free(&m);
}

static void parse_args(int argc, char **argv, bench_opts *bo) {
    *bo = (bench_opts){.grid = "configs/grid_table1.yaml", .reps = 20, .eval = 1, .batch = 64};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) hax_die("bench_gpu: %s: expected a value after it, found the end of the arguments", a);
        if (!strcmp(a, "--grid")) bo->grid = v;
        else if (!strcmp(a, "--data")) bo->data = v;
        else if (!strcmp(a, "--only")) bo->only = v;
        else if (!strcmp(a, "--precision")) bo->precision = v;
        else if (!strcmp(a, "--reps")) bo->reps = atoi(v);
        else if (!strcmp(a, "--eval")) bo->eval = !strcmp(v, "1") ? 1 : !strcmp(v, "0") ? 0 : -1;
        else if (!strcmp(a, "--batch")) bo->batch = atoi(v);
        else hax_die("bench_gpu: expected --grid, --data, --reps, --only, --precision, --eval or --batch, found '%s'", a);
        i++;
    }
    if (bo->eval < 0) hax_die("bench_gpu: --eval: expected 0 or 1");
    if (bo->batch < 1) hax_die("bench_gpu: --batch: expected a count of at least 1, found %d", bo->batch);
    if (bo->reps < 1) hax_die("bench_gpu: --reps: expected a count of at least 1, found %d", bo->reps);
}

// The kernel selections this run takes from the environment (unset: each
// family's default), so that an A/B table says which side it is.
static void print_kernel_env(void) {
    static const char *vars[] = {"HAX_SCAN_KERNELS", "HAX_SPARSE_ATTN", "HAX_SPARSE_KS",  "HAX_SPARSE_TILES",
                                 "HAX_KS_TARGETS",   "HAX_WINDOW_ATTN", "HAX_SPARSE_LONG", "HAX_BF16_TF32",
                                 "HAX_SSD_MMA"};
    printf("kernels:");
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        printf(" %s=%s", vars[i], v ? v : "(default)");
    }
    printf("\n");
}

int main(int argc, char **argv) {
    bench_opts bo;
    parse_args(argc, argv, &bo);
    if (cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    cuda_init(0);
    printf("device: %s\n", cuda_device_name());
    print_kernel_env();
    char err[768];
    hax_grid g;
    if (grid_load(&g, bo.grid, err, sizeof err)) hax_die("bench_gpu: %s", err);
    hax_dataset *ds = NULL;
    if (bo.data && !(ds = dataset_open(bo.data, err, sizeof err))) hax_die("bench_gpu: --data: %s", err);
    printf("train step: %d sequences of 400-528 positions, CUDA-graph steps, mean of %d after 3; validation: %s\n",
           bo.batch, bo.reps, ds ? "the dataset's valid split (eval_run)" : "synthetic sequences of the valid split's lengths");
    printf("\n| config | precision | ms/step | tokens/s | valid pass s (64) | eval batch | valid pass s (eval batch) | "
           "valid tokens/s (eval batch) | engine peak MiB (training) | engine peak MiB (with eval) | device MiB in use "
           "|\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int k = 0; k < g.n_configs; k++)
        for (int r = 0; r < 3; r++)
            if (!bo.precision || !strcmp(bo.precision, regimes[r])) bench_case(g.configs[k], regimes[r], &bo, ds);
    if (ds) dataset_close(ds);
    grid_free(&g);
    if (n_bad) fprintf(stderr, "bench_gpu: %d cases gave a non-finite loss or accuracy\n", n_bad);
    return n_bad ? 1 : 0;
}
