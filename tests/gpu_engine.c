// gpu_engine.c: the CUDA engine (cuda/engine/engine.h) against the CPU engine on
// the Table 1 models (reference sizes, random initialisation): Mamba,
// Mamba-2, Samba, and the Enhanced Mamba / Mamba-2 with the sparse branch
// (HAX = sign_bin_lsh + key_selection, dilated, sliding_window + sink):
// loss, gate loss, accuracy counts, hidden states and logits within 1e-5,
// every parameter's gradient within 1e-4 (normwise, per tensor), on a ragged
// batch; then a training step at the paper's batch size (64 sequences of
// ~464 positions), CPU vs GPU, with the loss and every gradient compared
// there too; evaluation forwards of 64 and of 256 sequences (train.eval_batch)
// scoring the same sequences alike; device training (plain and CUDA-graph
// steps) against the CPU engine + AdamW; and the benchmark of a whole
// training step. Skips (exit 0) without a CUDA device.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/ops/adamw.h"
#include "src/core/common.h"
#include "cuda/ops/adamw.h"
#include "cuda/core/common.h"
#include "cuda/engine/engine.h"
#include "cuda/sparse/sparse.h"
#include "cuda/sparse/ks.h"
#include "src/engine/engine.h"
#include "src/model/model.h"
#include "src/sparse/sparse.h"
#include "src/core/scalar.h"
#include "engine_batch.h"
#include "test.h"

typedef struct {
    hax_batch b;
    int max_len;
} tbatch;

static tbatch make_batch(const int *lens, int n_seq, int V, unsigned seed) {
    tbatch t = {test_random_batch(lens, n_seq, V, seed), 0};
    t.max_len = t.b.model_len;
    return t;
}

static void free_batch(tbatch *t) { hax_batch_free(&t->b); }

// The model's name in the printouts: arch, then the sparse pattern if any.
static const char *cur_pattern = NULL;
static char name_buf[96];
static const char *model_label(hax_arch a) {
    const char *base = arch_name(a);
    if (!cur_pattern) return base;
    snprintf(name_buf, sizeof name_buf, "%s+%s", base, cur_pattern);
    return name_buf;
}

// The reference config of arch with the sparse pattern cur_pattern (NULL: none).
static void build_model(hax_model *m, hax_arch arch) {
    hax_model_config cfg;
    model_config_reference(&cfg, arch, 0, cur_pattern);
    char err[256];
    if (model_config_validate(&cfg, err, sizeof err)) hax_die("gpu_engine: reference config: %s", err);
    model_build(m, &cfg);
    model_init(m, 7);
}

// The discrete choices of the sparse branch that differ between the CPU and
// the GPU engine after their last forwards on batch b (the GPU's may have run
// on b padded at the end): LSH buckets of queries and keys, key-selection
// picks, the ordering of the ranking targets of candidate pairs, and the
// ReLU gates of the key-score MLP (a pre-activation near 0 on one side and
// the other switches that unit's dx_proj_1 gradient row). Each is
// a comparison of floats (a sign, a top-k, ya > yb) that the last-bit
// differences of the two engines' activations can flip where two values
// nearly tie; where none flipped the engines compute the same function.
static int ranking(double a, double b) { return a > b ? 2 : a == b ? 1 : 0; }
static long discrete_diffs(hax_engine *cpu, hax_engine *gpu, const hax_model *m, const hax_batch *b) {
    const hax_model_config *cfg = &m->cfg;
    if (!cfg->sparse_mask) return 0;
    int n = b->n_tok, kc = cfg->k_c;
    long diff = 0;
    int32_t *qb = xmalloc(sizeof(int32_t) * n), *kb = xmalloc(sizeof(int32_t) * n);
    int *sel = xmalloc(sizeof(int) * (size_t)n * kc);
    double *y = xmalloc(sizeof(double) * (size_t)b->n_seq * kc);
    size_t nh = (size_t)n * 2 * cfg->state_size;
    float *h = xmalloc(sizeof(float) * nh);
    for (int l = 0; l < cfg->n_layers; l++) {
        const hax_sparse_state *cs = engine_cpu_sparse(cpu, l);
        const cu_sparse_state *gs = engine_cuda_sparse(gpu, l);
        if (cfg->sparse_mask & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) {
            cuda_download(qb, gs->q_bucket, sizeof(int32_t) * n);
            cuda_download(kb, gs->k_bucket, sizeof(int32_t) * n);
            cuda_sync();
            for (int t = 0; t < n; t++) diff += (qb[t] != cs->q_bucket[t]) + (kb[t] != cs->k_bucket[t]);
        }
        if (cfg->sparse_mask & SPARSE_KEY_SELECTION) {
            const cuda_ks_state *gk = (const cuda_ks_state *)gs->ks;
            cuda_download(sel, gk->sel, sizeof(int) * (size_t)n * kc);
            cuda_download(y, gk->y, sizeof(double) * (size_t)b->n_seq * kc);
            cuda_sync();
            for (size_t i = 0; i < (size_t)n * kc; i++) diff += sel[i] != cs->ks->sel[i];
            for (int k = 0; k < 2; k++) {  // post-ReLU h1, h2: zero exactly where the gate is shut
                cuda_download(h, k ? gk->h2 : gk->h1, sizeof(float) * nh);
                cuda_sync();
                const float *hc = k ? cs->ks->h2 : cs->ks->h1;
                for (size_t i = 0; i < nh; i++) diff += (h[i] > 0) != (hc[i] > 0);
            }
            if (cs->ks->has_loss)
                for (int q = 0; q < b->n_seq; q++)
                    for (int a = 0; a < kc; a++)
                        for (int c = a + 1; c < kc; c++) {
                            const double *yc = cs->ks->y + (size_t)q * kc, *yg = y + (size_t)q * kc;
                            diff += ranking(yc[a], yc[c]) != ranking(yg[a], yg[c]);
                        }
        }
    }
    free(qb), free(kb), free(sel), free(y), free(h);
    return diff;
}

// Every parameter's gradient against the CPU's (normwise, per tensor): 1e-4;
// the key-score MLP's (dx_proj_*) 1e-2 when some discrete choice flipped
// (n_flips > 0; each flip moves a ranking-loss term of a candidate pair).
// dx_proj_3.bias is a zero-sum gradient (the pairwise loss depends on score
// differences only): compared absolutely, 1e-6. Returns the worst figure.
static double check_grads(const hax_model *m, const float *g_cpu, const char *what, long n_flips,
                          const char **worst_name) {
    double worst = 0;
    *worst_name = "";
    for (int i = 0; i < m->n_params; i++) {
        const hax_param *p = &m->params[i];
        if (strstr(p->name, "dx_proj_3.bias")) {
            double e = fabs((double)m->grad[p->offset] - (double)g_cpu[p->offset]);
            CHECK(e <= 1e-6, "%s: gradient of %s (zero-sum): absolute error %.3e", what, p->name, e);
            continue;
        }
        double e = rel_err(m->grad + p->offset, g_cpu + p->offset, p->numel);
        double tol = n_flips > 0 && strstr(p->name, "dx_proj_") ? 1e-2 : 1e-4;
        CHECK(e <= tol, "%s: gradient of %s: relative error %.3e (%ld discrete choices differ)", what, p->name, e,
              n_flips);
        if (e > worst) worst = e, *worst_name = p->name;
    }
    return worst;
}

// One forward + backward on engine e; the gradients are left in m->grad.
static void step(hax_engine *e, hax_model *m, const hax_batch *b, hax_fwd_result *r) {
    hax_fwd_opts o = {1, 1, 0, 0.0, NULL};
    model_zero_grad(m);
    engine_forward(e, b, &o, r);
    engine_backward(e);
}

static void compare_engines(hax_arch arch) {
    hax_model m;
    build_model(&m, arch);
    static const int lens[] = {5, 1, 17, 3, 100, 4, 40, 1, 64, 33, 130};
    int n_seq = (int)(sizeof lens / sizeof lens[0]);
    tbatch t = make_batch(lens, n_seq, m.cfg.vocab_size, 3);
    hax_batch *b = &t.b;
    int n = b->n_tok, d = m.cfg.hidden_size, V = m.cfg.vocab_size;
    hax_engine *cpu = engine_cpu_create(&m, n, n_seq, t.max_len);
    hax_engine *gpu = engine_cuda_create(&m, 16, 2, t.max_len);  // small: the buffers grow
    hax_fwd_result rc, rg;
    step(cpu, &m, b, &rc);
    float *g_cpu = xmalloc(sizeof(float) * m.n_floats);
    memcpy(g_cpu, m.grad, sizeof(float) * m.n_floats);
    float *hid = xmalloc(sizeof(float) * (size_t)n * d), *lg = xmalloc(sizeof(float) * (size_t)n * V);
    memcpy(hid, engine_hidden(cpu), sizeof(float) * (size_t)n * d);
    memcpy(lg, engine_logits(cpu), sizeof(float) * (size_t)n * V);
    step(gpu, &m, b, &rg);
    double el = fabs(rg.loss - rc.loss) / fabs(rc.loss);
    double eg_loss = fabs(rg.gate_loss - rc.gate_loss) / (fabs(rc.gate_loss) > 1e-12 ? fabs(rc.gate_loss) : 1.0);
    printf("    %s: loss cpu %.7f gpu %.7f (rel err %.2e), gate loss %.7f / %.7f (rel err %.2e), acc %.5f / %.5f, "
           "scored %d / %d, correct %d / %d\n",
           model_label(arch), rc.loss, rg.loss, el, rc.gate_loss, rg.gate_loss, eg_loss, rc.acc, rg.acc, rc.n_scored,
           rg.n_scored, rc.correct, rg.correct);
    CHECK(el <= 1e-5, "%s: loss relative error %.3e", model_label(arch), el);
    CHECK(eg_loss <= 1e-5, "%s: gate loss relative error %.3e", model_label(arch), eg_loss);
    for (int l = 0; l < m.cfg.n_layers; l++) {
        const float *hc = engine_hash(cpu, l), *hg = engine_hash(gpu, l);
        CHECK((hc == NULL) == (hg == NULL), "%s: layer %d: hash matrix on one engine only", model_label(arch), l);
        if (hc && hg)
            CHECK(memcmp(hc, hg, sizeof(float) * m.cfg.state_size * m.cfg.num_hash) == 0,
                  "%s: layer %d: hash matrices differ", model_label(arch), l);
    }
    CHECK(rc.n_scored == rg.n_scored && rc.correct == rg.correct && rc.acc == rg.acc,
          "%s: accuracy counts differ", model_label(arch));
    double eh = rel_err(engine_hidden(gpu), hid, (size_t)n * d), eg = rel_err(engine_logits(gpu), lg, (size_t)n * V);
    printf("    %s: hidden rel err %.2e, logits rel err %.2e\n", model_label(arch), eh, eg);
    CHECK(eh <= 1e-5 && eg <= 1e-5, "%s: hidden %.3e logits %.3e", model_label(arch), eh, eg);
    long flips = discrete_diffs(cpu, gpu, &m, b);
    const char *worst_name;
    double worst = check_grads(&m, g_cpu, model_label(arch), flips, &worst_name);
    printf("    %s: %d parameter gradients, worst rel err %.2e (%s); %ld discrete choices differ\n", model_label(arch),
           m.n_params, worst, worst_name, flips);
    // A second step on the same engine (buffers reused) gives the same loss.
    hax_fwd_result r2;
    step(gpu, &m, b, &r2);
    CHECK(r2.loss == rg.loss, "%s: a second step differs: %.9f vs %.9f", model_label(arch), r2.loss, rg.loss);
    // An evaluation forward (fixed evaluation hash matrix, no ranking loss).
    hax_fwd_opts oe = {0, 1, 0, 0.0, NULL};
    engine_forward(cpu, b, &oe, &rc);
    engine_forward(gpu, b, &oe, &rg);
    el = fabs(rg.loss - rc.loss) / fabs(rc.loss);
    double ee = rel_err(engine_logits(gpu), engine_logits(cpu), (size_t)n * V);
    printf("    %s: evaluation forward: loss rel err %.2e, logits rel err %.2e, gate loss %g / %g\n", model_label(arch),
           el, ee, rc.gate_loss, rg.gate_loss);
    CHECK(el <= 1e-5 && ee <= 1e-5 && rg.gate_loss == 0 && rc.correct == rg.correct,
          "%s: evaluation forward differs: loss %.3e logits %.3e", model_label(arch), el, ee);
    engine_free(cpu);
    engine_free(gpu);
    free(g_cpu), free(hid), free(lg);
    free_batch(&t);
    model_free(&m);
}

static void test_engine_mamba(void) { compare_engines(ARCH_MAMBA); }
static void test_engine_mamba2(void) { compare_engines(ARCH_MAMBA2); }
static void test_engine_samba(void) { compare_engines(ARCH_SAMBA); }

// The sparse branch in both mixers: HAX, and patterns with empty rows
// (dilated) and a sink.
static void test_engine_sparse(void) {
    static const char *patterns[] = {"sign_bin_lsh+key_selection", "dilated", "sliding_window+sink", "key_selection"};
    for (int i = 0; i < 4; i++) {
        cur_pattern = patterns[i];
        compare_engines(ARCH_MAMBA);
        compare_engines(ARCH_MAMBA2);
    }
    cur_pattern = NULL;
}

// ---------------------------------------------------------------- evaluation batch

#define EB_SEQ 512  // sequences scored: 8 forwards of 64, 2 of 256

// Sequences s0 .. s0+n-1 of b as a batch of their own (own arrays).
static hax_batch sub_batch(const hax_batch *b, int s0, int n) {
    int t0 = b->seq_off[s0], nt = b->seq_off[s0 + n] - t0;
    hax_batch o;
    memset(&o, 0, sizeof o);
    o.n_seq = o.global_n_seq = n, o.n_tok = nt, o.model_len = b->model_len;
    o.seq_off = xmalloc(sizeof(int) * (n + 1));
    for (int s = 0; s <= n; s++) o.seq_off[s] = b->seq_off[s0 + s] - t0;
    o.inputs = xmalloc(sizeof(int32_t) * nt), o.labels = xmalloc(sizeof(int32_t) * nt), o.loss_mask = xmalloc(nt);
    memcpy(o.inputs, b->inputs + t0, sizeof(int32_t) * nt);
    memcpy(o.labels, b->labels + t0, sizeof(int32_t) * nt);
    memcpy(o.loss_mask, b->loss_mask + t0, nt);
    o.sample_idx = xmalloc(sizeof(int64_t) * n), o.n_context = xcalloc(n, sizeof(int)), o.n_key = xcalloc(n, sizeof(int));
    memcpy(o.sample_idx, b->sample_idx + s0, sizeof(int64_t) * n);
    return o;
}

// Every sequence's correct / scored counts from evaluation forwards of
// `batch` sequences, enqueued without waiting as eval_run does (fixed hash
// draw 0), into correct, count (engine_host_alloc memory, [EB_SEQ]).
static void eval_counts(hax_engine *e, const hax_batch *all, int batch, int *correct, int *count) {
    hax_fwd_opts o = {0, 1, 0, 0.0, NULL};
    int n_b = EB_SEQ / batch;
    hax_batch *sb = xmalloc(sizeof(hax_batch) * n_b);
    for (int i = 0; i < n_b; i++) {
        sb[i] = sub_batch(all, i * batch, batch);
        engine_forward_counts(e, &sb[i], &o, correct + i * batch, count + i * batch);
    }
    engine_sync(e);
    for (int i = 0; i < n_b; i++) hax_batch_free(&sb[i]);
    free(sb);
}

static int argmax_of(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

// The same sequences scored by evaluation forwards of 64 and of 256
// (train.eval_batch): EB_SEQ sequences of the joint-recall lengths (cells
// 5..16 x 5..16 cycling as the generator stores them; model_len 1057), every
// position scored, each label the argmax of the 64-sequence forwards' logits,
// so that at 64 every position is correct and a prediction that another
// batch flips shows in the counts. A sequence's figures do not depend on its
// batch (MODEL.md §5.8; bit for bit on the CPU engine with a row-wise GEMM,
// tests/test_eval_batch.c), but cuBLAS may pick another algorithm for another
// number of rows: at most 5 sequences may differ, counted and printed.
static void eval_batch_counts(hax_arch arch) {
    hax_model m;
    build_model(&m, arch);
    int V = m.cfg.vocab_size, lens[EB_SEQ];
    for (int s = 0; s < EB_SEQ; s++) {
        int C = 5 + s % 12, K = 5 + (s / 12) % 12;
        lens[s] = 2 * C * (2 * K + 1) + 1;  // the sample's tokens - 1: model positions
    }
    hax_batch all = test_random_batch(lens, EB_SEQ, V, 11);
    all.model_len = 1057;
    memset(all.loss_mask, 1, all.n_tok);
    hax_engine *e = engine_cuda_create(&m, 1057, 1, 1057);
    e->be->dev->push(e, NULL);  // weights resident, as hax-eval
    int half = all.seq_off[EB_SEQ / 2], max_tok = half > all.n_tok - half ? half : all.n_tok - half;
    engine_reserve(e, max_tok, 256, 1057);  // as eval_run: sized for the largest forward first
    hax_fwd_opts o = {0, 1, 0, 0.0, NULL};
    for (int b0 = 0; b0 < EB_SEQ; b0 += 64) {  // the labels: what the forwards of 64 predict
        hax_batch sb = sub_batch(&all, b0, 64);
        hax_fwd_result r;
        engine_forward(e, &sb, &o, &r);
        const float *lg = engine_logits(e);
        for (int t = 0; t < sb.n_tok; t++) all.labels[all.seq_off[b0] + t] = argmax_of(lg + (size_t)t * V, V);
        hax_batch_free(&sb);
    }
    int *c64 = engine_host_alloc(e, sizeof(int) * 2 * EB_SEQ), *c256 = engine_host_alloc(e, sizeof(int) * 2 * EB_SEQ);
    eval_counts(e, &all, 64, c64, c64 + EB_SEQ);
    eval_counts(e, &all, 256, c256, c256 + EB_SEQ);
    int wrong64 = 0, differ = 0;
    long flipped = 0;
    for (int s = 0; s < EB_SEQ; s++) {
        wrong64 += c64[s] != c64[EB_SEQ + s] || c64[EB_SEQ + s] != lens[s];
        if (c256[s] != c64[s] || c256[EB_SEQ + s] != c64[EB_SEQ + s]) {
            if (differ < 8)
                printf("    %s: sequence %d (%d positions): %d correct at 64, %d at 256\n", model_label(arch), s, lens[s],
                       c64[s], c256[s]);
            differ++;
            flipped += labs((long)c64[s] - c256[s]);
        }
    }
    printf("    %s: %d sequences, %d positions: counts differ between forwards of 64 and 256 in %d sequences (%ld "
           "predictions)\n", model_label(arch), EB_SEQ, all.n_tok, differ, flipped);
    CHECK(wrong64 == 0, "%s: %d sequences miss their own predictions at 64", model_label(arch), wrong64);
    CHECK(differ <= 5, "%s: %d sequences score differently at 256 than at 64", model_label(arch), differ);
    engine_host_free(e, c64), engine_host_free(e, c256);
    engine_free(e);
    hax_batch_free(&all);
    model_free(&m);
}

static void test_eval_batch(void) {
    eval_batch_counts(ARCH_MAMBA);
    eval_batch_counts(ARCH_MAMBA2);
    eval_batch_counts(ARCH_SAMBA);
    static const char *patterns[] = {"sign_bin_lsh+key_selection", "sign_bin_lsh", "key_selection", "dilated",
                                     "sliding_window+sink"};
    for (int i = 0; i < 5; i++) {
        cur_pattern = patterns[i];
        eval_batch_counts(ARCH_MAMBA);
        eval_batch_counts(ARCH_MAMBA2);
    }
    cur_pattern = NULL;
}

// A training step at the paper's batch size: CPU once, GPU mean of 5 after a
// warm-up; the losses are compared too.
static void time_step(hax_arch arch) {
    hax_model m;
    build_model(&m, arch);
    int n_seq = 64, lens[64];
    for (int s = 0; s < n_seq; s++) lens[s] = 400 + (s * 37) % 129;
    tbatch t = make_batch(lens, n_seq, m.cfg.vocab_size, 5);
    hax_engine *cpu = engine_cpu_create(&m, t.b.n_tok, n_seq, t.max_len);
    hax_engine *gpu = engine_cuda_create(&m, t.b.n_tok, n_seq, t.max_len);
    hax_fwd_result rc, rg;
    double t0 = hax_now();
    step(cpu, &m, &t.b, &rc);
    double cpu_s = hax_now() - t0;
    float *g_cpu = xmalloc(sizeof(float) * m.n_floats);
    memcpy(g_cpu, m.grad, sizeof(float) * m.n_floats);
    step(gpu, &m, &t.b, &rg);
    long flips = discrete_diffs(cpu, gpu, &m, &t.b);
    const char *worst_name;
    double worst = check_grads(&m, g_cpu, model_label(arch), flips, &worst_name);
    printf("    %s paper size: worst gradient rel err %.2e (%s); %ld discrete choices differ\n", model_label(arch), worst,
           worst_name, flips);
    free(g_cpu);
    int reps = 5;
    t0 = hax_now();
    for (int r = 0; r < reps; r++) step(gpu, &m, &t.b, &rg);
    double gpu_s = (hax_now() - t0) / reps;
    hax_fwd_opts o = {1, 1, 0, 0.0, NULL};
    t0 = hax_now();
    for (int r = 0; r < reps; r++) engine_forward(gpu, &t.b, &o, &rg);
    double fwd_s = (hax_now() - t0) / reps;
    double el = fabs(rg.loss - rc.loss) / fabs(rc.loss);
    printf("TIME %s step (%d positions): cpu %8.1f ms  gpu %7.2f ms (forward %.2f ms)  %5.0fx  (%.2f M tokens/s on "
           "the GPU; loss rel err %.1e)\n",
           model_label(arch), t.b.n_tok, cpu_s * 1e3, gpu_s * 1e3, fwd_s * 1e3, cpu_s / gpu_s, t.b.n_tok / gpu_s / 1e6, el);
    CHECK(el <= 1e-5, "%s: paper-size loss relative error %.3e", model_label(arch), el);
    engine_free(cpu);
    engine_free(gpu);
    free_batch(&t);
    model_free(&m);
}

static void test_step_time(void) {
    time_step(ARCH_MAMBA);
    time_step(ARCH_MAMBA2);
    time_step(ARCH_SAMBA);
    cur_pattern = "sign_bin_lsh+key_selection";
    time_step(ARCH_MAMBA);
    time_step(ARCH_MAMBA2);
    cur_pattern = NULL;
}

// ---------------------------------------------------------------- device training

// cuda_adamw_step against src/ops/adamw.c's adamw_update (pure = 0) or
// adamw_bf16_update (pure = 1, bf16 weights, fp32 gradients rounded on the
// way in): bit for bit over several steps (warm-up lr, weight decay,
// gradients of mixed scales).
static void adamw_bitexact(int pure) {
    size_t n = 100003;
    float *p = xmalloc(n * sizeof(float)), *g = xmalloc(n * sizeof(float));
    float *m = xcalloc(n, sizeof(float)), *v = xcalloc(n, sizeof(float));
    float *back = xmalloc(n * sizeof(float));
    unsigned r = 12345u;
    for (size_t i = 0; i < n; i++) {
        r = r * 1664525u + 1013904223u;
        p[i] = ((float)(r >> 8) / 16777216.0f - 0.5f);
        if (pure) p[i] = hax_bf16_round(p[i]);
    }
    float *dp = cuda_upload_new(p, n * sizeof(float)), *dg = cuda_malloc(n * sizeof(float));
    float *dm = cuda_malloc(n * sizeof(float)), *dv = cuda_malloc(n * sizeof(float));
    cuda_zero(dm, n * sizeof(float)), cuda_zero(dv, n * sizeof(float));
    cuda_adamw_hp *hp_dev = cuda_malloc(sizeof(cuda_adamw_hp));
    cuda_adamw_hp hp;
    long bad = 0;
    for (int step = 1; step <= 6; step++) {
        for (size_t i = 0; i < n; i++) {
            r = r * 1664525u + 1013904223u;
            float scale = (i % 7 == 0) ? 1e-6f : (i % 5 == 0 ? 30.0f : 1.0f);
            g[i] = ((float)(r >> 8) / 16777216.0f - 0.5f) * scale;
        }
        double lr = adamw_schedule_lr(3e-3, step, 3);
        if (pure) adamw_bf16_update(p, g, m, v, n, lr, 0.9, 0.999, 1e-8, 0.01, step);
        else adamw_update(p, g, m, v, n, lr, 0.9, 0.999, 1e-8, 0.01, step);
        cuda_upload(dg, g, n * sizeof(float));
        cuda_adamw_hp_make(&hp, lr, 0.9, 0.999, 1e-8, 0.01, step);
        hp.bf16_pure = pure;
        cuda_adamw_set(hp_dev, &hp);
        cuda_adamw_step(dp, dg, dm, dv, n, hp_dev);
        cuda_sync();
    }
    cuda_download(back, dp, n * sizeof(float));
    cuda_sync();
    for (size_t i = 0; i < n; i++) bad += memcmp(&back[i], &p[i], sizeof(float)) != 0;
    cuda_download(back, dv, n * sizeof(float));
    cuda_sync();
    for (size_t i = 0; i < n; i++) bad += memcmp(&back[i], &v[i], sizeof(float)) != 0;
    cuda_download(back, dm, n * sizeof(float));
    cuda_sync();
    for (size_t i = 0; i < n; i++) bad += memcmp(&back[i], &m[i], sizeof(float)) != 0;
    printf("    adamw%s: %zu parameters, 6 steps: %ld values differ from the CPU's bits\n", pure ? " (bf16-pure)" : "", n, bad);
    CHECK(bad == 0, "adamw: %ld weights/moments differ from the CPU op", bad);
    cuda_free(dp), cuda_free(dg), cuda_free(dm), cuda_free(dv), cuda_free(hp_dev);
    free(p), free(g), free(m), free(v), free(back);
}

static void test_adamw_bitexact(void) { adamw_bitexact(0); }
static void test_adamw_bf16_bitexact(void) { adamw_bitexact(1); }

// Training on the device (weights, gradients, AdamW resident; plain steps
// and graph steps) against the CPU engine + CPU AdamW over 40 steps of three
// alternating ragged batches: the loss of every step and the final weights.
static void train_compare(hax_arch arch) {
    static const int lens_a[] = {5, 1, 17, 3, 100, 4, 40, 1, 64, 33, 130};
    static const int lens_b[] = {70, 70, 9, 120, 2};
    static const int lens_c[] = {31, 300, 12, 12, 12, 12, 80};
    hax_model mc, mg, mh;
    build_model(&mc, arch), build_model(&mg, arch), build_model(&mh, arch);
    tbatch tb[3] = {make_batch(lens_a, 11, mc.cfg.vocab_size, 11), make_batch(lens_b, 5, mc.cfg.vocab_size, 12),
                    make_batch(lens_c, 7, mc.cfg.vocab_size, 13)};
    hax_adamw oc, og, oh;
    adamw_init(&oc, mc.n_floats, 0.9, 0.999, 1e-8, 0.01);
    adamw_init(&og, mg.n_floats, 0.9, 0.999, 1e-8, 0.01);
    adamw_init(&oh, mh.n_floats, 0.9, 0.999, 1e-8, 0.01);
    hax_engine *cpu = engine_cpu_create(&mc, 700, 16, 300);
    hax_engine *gpu = engine_cuda_create(&mg, 700, 16, 300), *gra = engine_cuda_create(&mh, 700, 16, 300);
    gpu->be->dev->push(gpu, &og);
    gra->be->dev->push(gra, &oh);
    double worst_plain = 0, worst_graph = 0;
    int steps = 40, finite = 1, first_flip_plain = 0, first_flip_graph = 0;
    for (int s = 1; s <= steps; s++) {
        const hax_batch *b = &tb[s % 3].b;
        double lr = adamw_schedule_lr(3e-3, s, 5);
        hax_fwd_opts o = {1, 1, (uint32_t)s, 0.0, NULL};
        hax_fwd_result rc, rg, rh;
        model_zero_grad(&mc);
        engine_forward(cpu, b, &o, &rc);
        engine_backward(cpu);
        adamw_step(&oc, mc.data, mc.grad, lr);
        engine_forward(gpu, b, &o, &rg);
        engine_backward(gpu);
        finite &= gpu->be->dev->grad_finite(gpu, 0);
        gpu->be->dev->adamw_step(gpu, &og, lr);
        engine_cuda_train_step(gra, b, &o, &oh, lr, &rh);
        double e1 = fabs(rg.loss - rc.loss) / fabs(rc.loss), e2 = fabs(rh.loss - rc.loss) / fabs(rc.loss);
        // Until a discrete choice of the branch first flips (see
        // discrete_diffs) the curves must agree closely; after it, loosely.
        if (!first_flip_plain && discrete_diffs(cpu, gpu, &mc, b)) first_flip_plain = s;
        if (!first_flip_graph && discrete_diffs(cpu, gra, &mc, b)) first_flip_graph = s;
        if (!first_flip_plain && e1 > worst_plain) worst_plain = e1;
        if (!first_flip_graph && e2 > worst_graph) worst_graph = e2;
        CHECK(e1 <= 1e-2 && e2 <= 1e-2, "%s: step %d: loss differs by %.3e / %.3e", model_label(arch), s, e1, e2);
    }
    gpu->be->dev->pull(gpu, &og);
    gra->be->dev->pull(gra, &oh);
    double ew = rel_err(mg.data, mc.data, mc.n_floats), eh = rel_err(mh.data, mc.data, mc.n_floats);
    double em = rel_err(og.m, oc.m, mc.n_floats);
    int launches = engine_cuda_graph_launches(gra);
    printf("    %s: %d steps: loss rel err plain %.2e graph %.2e (before a first discrete flip: plain at step %d, "
           "graph at step %d, 0 = none); final weights rel err plain %.2e graph %.2e; moments %.2e; %d graph "
           "replays\n",
           model_label(arch), steps, worst_plain, worst_graph, first_flip_plain, first_flip_graph, ew, eh, em, launches);
    double wtol = first_flip_plain || first_flip_graph ? 1e-2 : 1e-4;
    CHECK(finite, "%s: device gradients reported non-finite", model_label(arch));
    CHECK(worst_plain <= 1e-4 && worst_graph <= 1e-4, "%s: loss curve differs: %.3e / %.3e", model_label(arch),
          worst_plain, worst_graph);
    CHECK(ew <= wtol && eh <= wtol && em <= wtol, "%s: final weights differ: %.3e / %.3e (moments %.3e)",
          model_label(arch), ew, eh, em);
    CHECK(og.step == steps && oh.step == steps, "%s: AdamW step counts %lld / %lld", model_label(arch),
          (long long)og.step, (long long)oh.step);
    CHECK(launches >= steps - 6, "%s: only %d of %d steps replayed a graph", model_label(arch), launches, steps);
    // The poison hook makes the check fail.
    engine_cuda_train_step(gra, &tb[0].b, &(hax_fwd_opts){1, 1, 99, 0.0, NULL}, &oh, 0.0, &(hax_fwd_result){0});
    CHECK(!gra->be->dev->grad_finite(gra, 1), "%s: a NaN gradient passed the finiteness check", model_label(arch));
    engine_free(cpu), engine_free(gpu), engine_free(gra);
    adamw_free(&oc), adamw_free(&og), adamw_free(&oh);
    for (int i = 0; i < 3; i++) free_batch(&tb[i]);
    model_free(&mc), model_free(&mg), model_free(&mh);
}

static void test_train_mamba(void) { train_compare(ARCH_MAMBA); }
static void test_train_mamba2(void) { train_compare(ARCH_MAMBA2); }
static void test_train_samba(void) { train_compare(ARCH_SAMBA); }
static void test_train_hax(void) {
    cur_pattern = "sign_bin_lsh+key_selection";
    train_compare(ARCH_MAMBA);
    train_compare(ARCH_MAMBA2);
    cur_pattern = NULL;
}

// A whole training step at the paper's batch (64 sequences of 400-528
// positions): device-resident plain steps (forward, backward, AdamW; one
// host wait for the loss) vs graph steps, over 20 steps after a warm-up.
static void time_train(hax_arch arch) {
    hax_model m;
    build_model(&m, arch);
    int n_seq = 64, lens[64];
    for (int s = 0; s < n_seq; s++) lens[s] = 400 + (s * 37) % 129;
    tbatch t = make_batch(lens, n_seq, m.cfg.vocab_size, 5);
    hax_adamw opt;
    adamw_init(&opt, m.n_floats, 0.9, 0.999, 1e-8, 0.01);
    hax_engine *e = engine_cuda_create(&m, t.b.n_tok + 256, n_seq + 1, t.max_len);
    e->be->dev->push(e, &opt);
    hax_fwd_opts o = {1, 1, 1, 0.0, NULL};
    hax_fwd_result r;
    int reps = 20;
    for (int i = 0; i < 2; i++) {
        engine_forward(e, &t.b, &o, &r), engine_backward(e), e->be->dev->adamw_step(e, &opt, 1e-3);
    }
    cuda_sync();
    double t0 = hax_now();
    for (int i = 0; i < reps; i++) {  // a new step each time: new hash matrices and candidates
        o.step++;
        engine_forward(e, &t.b, &o, &r), engine_backward(e), e->be->dev->adamw_step(e, &opt, 1e-3);
    }
    cuda_sync();
    double plain = (hax_now() - t0) / reps;
    for (int i = 0; i < 2; i++) engine_cuda_train_step(e, &t.b, &o, &opt, 1e-3, &r);
    cuda_sync();
    t0 = hax_now();
    for (int i = 0; i < reps; i++) o.step++, engine_cuda_train_step(e, &t.b, &o, &opt, 1e-3, &r);
    cuda_sync();
    double graph = (hax_now() - t0) / reps;
    printf("TIME %s train step, batch 64 (%d positions): resident %.2f ms, CUDA graph %.2f ms (%.2f M tokens/s); "
           "the reference's Mamba2+HAX step: ~50 ms\n",
           model_label(arch), t.b.n_tok, plain * 1e3, graph * 1e3, t.b.n_tok / graph / 1e6);
    printf("BENCH | %s | %.2f | %.2f | %.2f M |\n", model_label(arch), plain * 1e3, graph * 1e3,
           t.b.n_tok / graph / 1e6);
    CHECK(isfinite(r.loss), "%s: timed steps gave a non-finite loss", model_label(arch));
    engine_free(e);
    adamw_free(&opt);
    free_batch(&t);
    model_free(&m);
}

static void test_train_time(void) {
    time_train(ARCH_MAMBA);
    time_train(ARCH_MAMBA2);
    time_train(ARCH_SAMBA);
    cur_pattern = "sign_bin_lsh+key_selection";
    time_train(ARCH_MAMBA);
    time_train(ARCH_MAMBA2);
    cur_pattern = NULL;
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;  // --quick: no paper-size timings
    if (cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    cuda_init(0);
    printf("device: %s\n", cuda_device_name());
    RUN(test_engine_mamba);
    RUN(test_engine_mamba2);
    RUN(test_engine_samba);
    RUN(test_engine_sparse);
    RUN(test_eval_batch);
    RUN(test_adamw_bitexact);
    RUN(test_adamw_bf16_bitexact);
    RUN(test_train_mamba);
    RUN(test_train_mamba2);
    RUN(test_train_samba);
    RUN(test_train_hax);
    if (!quick) RUN(test_step_time);
    if (!quick) RUN(test_train_time);
    return test_summary();
}
