// test_eval_batch.c: evaluation forwards of several global batches
// (train.eval_batch) score every sequence as forwards of one batch do, on
// the CPU engine. For the tiny configs of every architecture and sparse
// pattern (Mamba, Mamba2, Samba; HAX, LSH sign-bin and argmax, KS, dilated,
// sliding window + dilated, sliding window + sink, sliding window, full;
// reference and causal semantics; fp32, bf16-pure, mixed bf16), a
// randomly initialised model is scored over a validation split by
// hax-train's own pass (eval_run) at eval batch = batch_size (16) and at
// 4 x batch_size (64): every sequence's correct / scored counts must be the
// same, hence the same accuracy and per-cell figures, and the redraw counter
// must advance by the reference's batch count either way. Every sequence is
// also compared position by position (each forward of 64 against its four
// of 16): the same argmax of the logits at every position, scored or not
// (random models score few positions right, so this is the sharp check),
// and final hidden states within 1e-6 normwise (1e-3 in the bf16 regimes,
// where a rounding can move a value by a bf16 step). Not bit for bit: the
// GEMMs (OpenBLAS, src/ops/linear.c) may round a row differently with the
// rows around it (README "Evaluation batch", under "Configs"), so the
// sequences that are bit for bit the same are counted and printed; built
// with BLAS=none (a plain C sgemm, one row at a time) all of them must be.
#include <mpi.h>
#include <stdint.h>

#include "src/config/config.h"
#include "src/core/common.h"
#include "data-gen/datagen.h"
#include "src/engine/engine.h"
#include "src/io/dataset.h"
#include "src/model/model.h"
#include "src/ops/basic.h"
#include "src/train/eval.h"
#include "src/train/eval_set.h"
#include "dataset_tmp.h"
#include "test.h"

#define BATCH 16  // tiny.yaml's train.batch_size

static hax_dataset *ds;

// tiny.yaml's dataset shape (contexts and keys 2..6, 25 cells) with 12
// validation samples per cell: 300 sequences, batches of 16 and of 64 (the
// last ones partial), rows padded to 158 tokens as hax-train's.
static void make_data(void) {
    hax_data_params p;
    memset(&p, 0, sizeof p);
    p.levels = 2;
    p.min_size[0] = p.min_size[1] = 2;
    p.max_size[0] = p.max_size[1] = 6;
    p.n_value = 16;
    p.n_per_cell[SPLIT_TRAIN] = 1;
    p.n_per_cell[SPLIT_VALID] = 12;
    p.n_per_cell[SPLIT_TEST] = 1;
    p.seed = 1;
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/data", root);
    datagen_opts o = {.p = p, .out = path, .shard_size = 100, .format = FORMAT_SHARDS, .force = 1};
    if (datagen_run(&o, 0, 1) != 0) hax_die("test_eval_batch: datagen_run failed");
    ds = dataset_open(path, err, sizeof err);
    if (!ds) hax_die("test_eval_batch: %s", err);
}

// One evaluation pass's results: the figures, every sequence's counts (in
// stored order), the redraw counter after it, and the set (its batches).
typedef struct {
    train_eval ev;
    int *correct, *count;
    int n_seq;
    int64_t draws;
    eval_set *set;
    hax_batch scratch;
} pass_out;

static void run_pass(hax_engine *e, const hax_config *c, int batch, pass_out *out) {
    static const hax_dist one = {0, 1, 0, 1};
    const hax_data_params *dp = dataset_params(ds);
    memset(out, 0, sizeof *out);
    dataset_batch_alloc(ds, batch, &out->scratch);
    eval_pass p = {.eng = e, .ds = ds, .d = &one, .batch = &out->scratch, .batch_size = batch,
                   .draw_batch = c->train.batch_size, .vocab = c->model.vocab_size,
                   .hidden = c->model.hidden_size, .seed = c->train.seed, .fixed_hash = 1, .draws = &out->draws};
    train_eval_alloc(&out->ev, dp->max_size[0] + 1, dp->max_size[1] + 1);
    out->set = p.set = eval_set_build(&p, SPLIT_VALID);
    eval_run(&p, SPLIT_VALID, NULL, &out->ev, NULL);
    int n_b = eval_set_batches(out->set);
    for (int i = 0; i < n_b; i++) out->n_seq += eval_set_batch(out->set, i)->n_seq;
    out->correct = xmalloc(sizeof(int) * out->n_seq);
    out->count = xmalloc(sizeof(int) * out->n_seq);
    for (int i = 0, k = 0; i < n_b; i++) {
        int *cr, *ct, n = eval_set_batch(out->set, i)->n_seq;
        eval_set_counts(out->set, i, &cr, &ct);
        memcpy(out->correct + k, cr, sizeof(int) * n);
        memcpy(out->count + k, ct, sizeof(int) * n);
        k += n;
    }
}

static void pass_free(pass_out *o) {
    train_eval_free(&o->ev);
    free(o->correct), free(o->count);
    eval_set_free(o->set);
    hax_batch_free(&o->scratch);
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

// Position by position, forward by forward: each batch of 64 (set b)
// against its 4 batches of 16 (set a): positions whose logits' argmax
// differs, the largest hidden-state difference against the largest hidden
// value, and the sequences that are bit for bit the same.
typedef struct {
    int argmax_diff, same, n_seq;
    double hid_diff, hid_scale;  // largest |difference|, largest |value|
    double sq_diff, sq;          // sums of squares (the normwise relative difference)
} fwd_cmp;

static void compare_batch(hax_engine *e, const hax_config *c, const eval_set *a, int first_a, const hax_batch *big,
                          fwd_cmp *r) {
    int d = c->model.hidden_size, V = c->model.vocab_size;
    hax_fwd_opts o = {.train = 0, .seed = c->train.seed, .step = 0, .ce_count = 0, .inject = NULL};
    hax_fwd_result res;
    engine_forward(e, big, &o, &res);
    size_t n = (size_t)big->n_tok;
    float *h64 = xmalloc(sizeof(float) * n * d), *l64 = xmalloc(sizeof(float) * n * V);
    memcpy(h64, engine_hidden(e), sizeof(float) * n * d);
    memcpy(l64, engine_logits(e), sizeof(float) * n * V);
    for (int j = first_a, s0 = 0; s0 < big->n_seq; j++) {
        const hax_batch *sm = eval_set_batch(a, j);
        engine_forward(e, sm, &o, &res);
        const float *h = engine_hidden(e), *l = engine_logits(e);
        for (int s = 0; s < sm->n_seq; s++) {
            int off = big->seq_off[s0 + s], len = sm->seq_off[s + 1] - sm->seq_off[s], bits = 1;
            for (int t = 0; t < len; t++) {
                const float *x = h + (size_t)(sm->seq_off[s] + t) * d, *y = h64 + (size_t)(off + t) * d;
                for (int k = 0; k < d; k++) {
                    double diff = fabs((double)x[k] - y[k]);
                    if (diff > r->hid_diff) r->hid_diff = diff;
                    if (fabs((double)y[k]) > r->hid_scale) r->hid_scale = fabs((double)y[k]);
                    r->sq_diff += diff * diff, r->sq += (double)y[k] * y[k];
                    bits &= f32_bits(x[k]) == f32_bits(y[k]);
                }
                r->argmax_diff += argmax(l + (size_t)(sm->seq_off[s] + t) * V, V) != argmax(l64 + (size_t)(off + t) * V, V);
            }
            r->same += bits;
            r->n_seq++;
        }
        s0 += sm->n_seq;
    }
    free(h64), free(l64);
}

static void compare_forwards(hax_engine *e, const hax_config *c, const eval_set *a, const eval_set *b, fwd_cmp *r) {
    memset(r, 0, sizeof *r);
    for (int i = 0; i < eval_set_batches(b); i++) compare_batch(e, c, a, 4 * i, eval_set_batch(b, i), r);
}

// One tiny config (a configs/ file and overrides): passes at 16 and 64.
static void check_case(const char *file, const char *ov1, const char *ov2) {
    const char *ovs[2] = {ov1, ov2};
    int n_ov = ov2 ? 2 : ov1 ? 1 : 0;
    hax_config c;
    char err[1024], what[256];
    if (config_load(&c, file, ovs, n_ov, err, sizeof err)) hax_die("test_eval_batch: %s", err);
    snprintf(what, sizeof what, "%s%s%s%s%s (%s, %s)", file, ov1 ? " " : "", ov1 ? ov1 : "", ov2 ? " " : "",
             ov2 ? ov2 : "", config_arch_name(c.model.arch), c.model.sparse_arch[0] ? c.model.sparse_arch : "none");
    CHECK(c.train.batch_size == BATCH, "%s: batch_size %d", what, c.train.batch_size);
    hax_model m;
    model_build(&m, &c.model);
    model_init(&m, c.train.seed);
    if (c.train.precision == PREC_BF16_PURE) round_bf16(m.data, m.data, (long)m.n_floats);  // as hax-train
    hax_engine *e = engine_cpu_create(&m, 1, 1, 1);  // eval_run grows it
    pass_out a, b;
    run_pass(e, &c, BATCH, &a);
    run_pass(e, &c, 4 * BATCH, &b);
    int n = a.n_seq, differ = 0, scored = 0, correct = 0;
    CHECK(n == 300 && b.n_seq == n, "%s: %d and %d sequences", what, n, b.n_seq);
    for (int s = 0; s < n && s < b.n_seq; s++) {
        differ += a.correct[s] != b.correct[s] || a.count[s] != b.count[s];
        scored += a.count[s], correct += a.correct[s];
    }
    fwd_cmp f;
    compare_forwards(e, &c, a.set, b.set, &f);
    double rel = f.sq > 0 ? sqrt(f.sq_diff / f.sq) : 0;
    printf("    %s: %d sequences, %d scored, %d correct; counts differ in %d; argmax differs at %d positions, "
           "hidden states rel diff %.2e (max %.2e at scale %.2e), %d of %d sequences bit for bit\n",
           what, n, scored, correct, differ, f.argmax_diff, rel, f.hid_diff, f.hid_scale, f.same, f.n_seq);
    CHECK(differ == 0, "%s: %d sequences have other counts at eval batch 64 than at 16", what, differ);
    CHECK(scored > 0, "%s: nothing scored", what);
    CHECK(a.ev.acc == b.ev.acc && a.ev.n == b.ev.n, "%s: accuracy %.17g over %.0f vs %.17g over %.0f", what, a.ev.acc,
          a.ev.n, b.ev.acc, b.ev.n);
    size_t cells = (size_t)a.ev.nc * a.ev.nk;
    CHECK(!memcmp(a.ev.sum, b.ev.sum, cells * sizeof(double)) && !memcmp(a.ev.cnt, b.ev.cnt, cells * sizeof(double)),
          "%s: per-cell figures differ", what);
    // ceil(300 / 16) = 19 of the reference's batches either way
    CHECK(a.draws == 19 && b.draws == 19, "%s: redraw counter %lld and %lld, expected 19", what, (long long)a.draws,
          (long long)b.draws);
    CHECK(f.n_seq == n, "%s: %d sequences compared", what, f.n_seq);
    CHECK(f.argmax_diff == 0, "%s: %d positions predict another token in a forward of 64", what, f.argmax_diff);
    // a rounding in another place is 1e-7 of a value in fp32; in the bf16
    // regimes it can move a rounded value by a whole bf16 step (2^-8)
    double tol = c.train.precision == PREC_FP32 ? 1e-6 : 1e-3;
    CHECK(rel <= tol, "%s: hidden states differ by %.3e normwise (more than %.0e)", what, rel, tol);
#ifdef HAX_NO_BLAS
    // the plain C sgemm (make BLAS=none) computes each row alone: then every
    // sequence must come out bit for bit the same
    CHECK(f.same == f.n_seq, "%s: %d of %d sequences bit for bit with BLAS=none", what, f.same, f.n_seq);
#endif
    pass_free(&a);
    pass_free(&b);
    engine_free(e);
    model_free(&m);
}

static void test_mamba(void) {
    check_case("configs/tiny.yaml", NULL, NULL);  // HAX, reference semantics
    check_case("configs/tiny.yaml", "sparse.semantics=causal", NULL);
    check_case("configs/tiny.yaml", "sparse.pattern=sign_bin_lsh", NULL);
    check_case("configs/tiny.yaml", "sparse.pattern=argmax_lsh", NULL);
    check_case("configs/tiny.yaml", "sparse.pattern=key_selection", NULL);
    check_case("configs/tiny.yaml", "sparse.pattern=key_selection", "sparse.semantics=causal");
    check_case("configs/tiny.yaml", "sparse.pattern=dilated", NULL);  // delta = 160 / 16 = 10: empty rows
    check_case("configs/tiny.yaml", "sparse.pattern=dilated", "sparse.semantics=causal");
    check_case("configs/tiny.yaml", "sparse.pattern=sliding_window+dilated", NULL);
    check_case("configs/tiny.yaml", "sparse.pattern=sliding_window+sink", NULL);
    check_case("configs/tiny.yaml", "sparse.pattern=full", NULL);
    check_case("configs/tiny.yaml", "train.precision=bf16-pure", NULL);
    check_case("configs/tiny_mamba.yaml", NULL, NULL);
}

static void test_mamba2(void) {
    check_case("configs/tiny_mamba2_sw.yaml", NULL, NULL);  // sliding window
    check_case("configs/tiny_mamba2_sw.yaml", "sparse.pattern=none", NULL);
    check_case("configs/tiny_mamba2_sw.yaml", "sparse.pattern=sign_bin_lsh+key_selection", NULL);
    check_case("configs/tiny_mamba2_sw.yaml", "sparse.pattern=sign_bin_lsh+key_selection", "train.precision=bf16");
    check_case("configs/tiny_mamba2_sw.yaml", "sparse.pattern=dilated", NULL);
    check_case("configs/tiny_mamba2_sw.yaml", "sparse.pattern=sliding_window+sink", "sparse.semantics=causal");
}

static void test_samba(void) {
    check_case("configs/tiny_samba.yaml", NULL, NULL);
    check_case("configs/tiny_samba.yaml", "train.precision=bf16-pure", NULL);
}

int main(int argc, char **argv) {
    tmp_root_begin(&argc, &argv, "hax_test_eval_batch");
    make_data();
    RUN(test_mamba);
    RUN(test_mamba2);
    RUN(test_samba);
    dataset_close(ds);
    return tmp_root_end();
}
