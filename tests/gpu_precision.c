// gpu_precision.c: the CUDA engine against the CPU engine in the bf16
// regimes (train.precision bf16-pure and bf16; README "Precision", issue 10).
// The ops are the same kernels in every regime: a regime only adds roundings
// between them (the op table's round_bf16 / round_bf16_rows, called by the
// shared engine, src/engine/ops.h), so the checks here are
//   - the round kernel (cuda_round_bf16, cuda_round_bf16_rows) against
//     hax_bf16_round bit for bit: ties, subnormals, the overflow edge, ±0,
//     ±Inf, NaNs, random values of every magnitude, strided rows;
//   - for Mamba, Mamba-2, Samba, Mamba+HAX and Mamba-2+HAX in each regime,
//     one forward + backward on a ragged batch: loss, gate loss, hidden
//     states, logits and every parameter's gradient against the CPU engine's
//     in the same regime, and in bf16-pure the elements that differ counted
//     in bf16 ulps;
//   - 20 training steps (device graph steps + device AdamW in the regime vs
//     the CPU engine + adamw_step, adamw_bf16_update in bf16-pure): the loss
//     curve and the final weights (ulps counted in bf16-pure).
//
// The bound. Both engines compute every fp32 value to about 1e-7 of each
// other (tests/gpu_engine.c); a rounding to bf16 (spacing 2^-8 relative)
// then gives the same bf16 value unless the fp32 value lies within that
// distance of a rounding midpoint, where the two sides may round apart by one
// ulp. Such a flip is an input of the next ops, where it moves values by up
// to 2^-8 relative and may flip them in turn (more so in the recurrences, and
// by more than one ulp where a value is small against the terms it sums), so
// later tensors differ in more elements. The test therefore bounds each
// comparison by the regime's own rounding noise: the distance between the
// CPU engine in the regime and the CPU engine in fp32 on the same (rounded)
// weights. The device must be at least as close to the CPU in the regime as
// fp32 is (normwise, per tensor; loss and gate loss relatively), with floors
// of the fp32 test's tolerances (1e-5 outputs, 1e-4 gradients). The ulp
// counts are printed, and in bf16-pure every compared tensor must hold bf16
// values only. As in gpu_engine.c, a discrete choice of the sparse branch
// (bucket, pick, ranking order, ReLU gate) that flips moves the key-score
// MLP's gradients: those (dx_proj_*) are then allowed 5e-2. Skips (exit 0)
// without a CUDA device.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/core/common.h"
#include "cuda/engine/engine.h"
#include "cuda/ops/gate.h"
#include "cuda/sparse/ks.h"
#include "cuda/sparse/sparse.h"
#include "src/core/common.h"
#include "src/core/scalar.h"
#include "src/engine/engine.h"
#include "src/model/model.h"
#include "src/ops/adamw.h"
#include "src/ops/basic.h"
#include "src/sparse/sparse.h"
#include "engine_batch.h"
#include "test.h"


// ---------------------------------------------------------------- the round kernel

static void test_round_kernel(void) {
    static const uint32_t special[] = {
        0x3f800000u, 0x3f808000u, 0x3f818000u, 0x3f808001u, 0x3f807fffu, 0xbf808000u, 0xbf818000u, // ties
        0x00008000u, 0x00018000u, 0x00010000u, 0x00007fffu, 0x80008000u, 0x007fffffu, 0x00000001u, // subnormals
        0x00000000u, 0x80000000u, 0x7f7f0000u, 0x7f7f7fffu, 0x7f7f8000u, 0x7f7fffffu, 0xff7fffffu, // ±0, edge
        0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7fc00001u, 0x7f800001u, 0xffffffffu, 0x7fffffffu, // Inf, NaN
        0xffc12345u, 0x4b800000u, 0x4b808000u, 0x4b818000u, 0x7e7fffffu, 0x0080ffffu, 0x00808000u};
    int ns = (int)(sizeof special / sizeof special[0]), n = 200000;
    float *x = xmalloc(sizeof(float) * n), *want = xmalloc(sizeof(float) * n);
    for (int i = 0; i < ns; i++) x[i] = f32_from_bits(special[i]);
    unsigned r = 99u;
    for (int i = ns; i < n; i++) {  // every bit pattern class: random exponents, low halves near the midpoint
        r = r * 1664525u + 1013904223u;
        uint32_t u = r;
        if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;          // exact ties
        if (i % 4 == 1) u = (u & 0xffff0000u) | (0x7ff0u + (r & 0x1f)); // a few ulps of fp32 around a tie
        x[i] = f32_from_bits(u);
    }
    for (int i = 0; i < n; i++) want[i] = hax_bf16_round(x[i]);
    float *dx = cuda_upload_new(x, sizeof(float) * n), *dy = cuda_malloc(sizeof(float) * n);
    cuda_round_bf16(dy, dx, n);
    float *got = cuda_download_new(dy, sizeof(float) * n);
    long bad = 0;
    for (int i = 0; i < n; i++)
        if (f32_bits(got[i]) != f32_bits(want[i])) {
            if (bad < 5) printf("    round: 0x%08x -> device 0x%08x, host 0x%08x\n", f32_bits(x[i]), f32_bits(got[i]), f32_bits(want[i]));
            bad++;
        }
    free(got);
    // in place, and the strided rows variant (the untouched columns stay)
    cuda_round_bf16(dx, dx, n);
    got = cuda_download_new(dx, sizeof(float) * n);
    for (int i = 0; i < n; i++) bad += f32_bits(got[i]) != f32_bits(want[i]);
    free(got);
    int ld = 37, width = 29, rows = n / ld;
    cuda_upload(dx, x, sizeof(float) * n);
    cuda_round_bf16_rows(dx, ld, width, rows);
    memcpy(want, x, sizeof(float) * n);
    round_bf16_rows(want, ld, width, rows);
    got = cuda_download_new(dx, sizeof(float) * n);
    long bad_rows = 0;
    for (int i = 0; i < n; i++) bad_rows += f32_bits(got[i]) != f32_bits(want[i]);
    printf("    round kernel: %d values (%d special): %ld differ from hax_bf16_round's bits; rows variant "
           "(ld %d, width %d): %ld differ\n", n, ns, bad, ld, width, bad_rows);
    CHECK(bad == 0 && bad_rows == 0, "round kernel: %ld / %ld values differ from the host's bits", bad, bad_rows);
    free(got), free(x), free(want);
    cuda_free(dx), cuda_free(dy);
}

// ---------------------------------------------------------------- helpers

static hax_batch make_batch(const int *lens, int n_seq, int V, unsigned seed) {
    return test_random_batch(lens, n_seq, V, seed);
}

static const char *cur_pattern = NULL;  // the sparse pattern of the models built (NULL: none)
static char label_buf[128];
static const char *label(hax_arch a, hax_precision p) {
    snprintf(label_buf, sizeof label_buf, "%s%s%s@%s", arch_name(a), cur_pattern ? "+" : "", cur_pattern ? "HAX" : "",
             p == PREC_BF16_PURE ? "bf16-pure" : p == PREC_BF16 ? "bf16" : "fp32");
    return label_buf;
}

// The reference config of arch (pattern cur_pattern) in regime prec, its
// init rounded to bf16 in bf16-pure (as hax-train does).
static void build_model(hax_model *m, hax_arch arch, hax_precision prec) {
    hax_model_config cfg;
    model_config_reference(&cfg, arch, 0, cur_pattern);
    cfg.precision = prec;
    char err[256];
    if (model_config_validate(&cfg, err, sizeof err)) hax_die("gpu_precision: reference config: %s", err);
    model_build(m, &cfg);
    model_init(m, 7);
    if (prec == PREC_BF16_PURE) round_bf16(m->data, m->data, (long)m->n_floats);
}

// Differences of two tensors in bf16 ulps (bf16-pure: both hold bf16 values).
typedef struct {
    long n, differ, beyond1, max_ulps, not_bf16;
} ulp_stats;

static int64_t ordered(float f) {  // monotone in f: -0 and +0 both 0
    int32_t i;
    memcpy(&i, &f, 4);
    return i < 0 ? -(int64_t)(i & 0x7fffffff) : (int64_t)i;
}

static void ulp_add(ulp_stats *s, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        s->n++;
        s->not_bf16 += (f32_bits(a[i]) & 0xffffu) != 0 && a[i] == a[i];
        if (f32_bits(a[i]) == f32_bits(b[i])) continue;
        int64_t d = ordered(a[i]) - ordered(b[i]);
        long u = (long)((d < 0 ? -d : d) >> 16);  // bf16 values: multiples of 2^16 apart
        s->differ++;
        s->beyond1 += u > 1;
        if (u > s->max_ulps) s->max_ulps = u;
    }
}

static void ulp_print(const char *what, const ulp_stats *s) {
    printf("      %s: %ld of %ld elements differ (%.3f%%), %ld by more than 1 bf16 ulp, at most %ld ulps\n", what,
           s->differ, s->n, 100.0 * s->differ / (s->n ? s->n : 1), s->beyond1, s->max_ulps);
}

// The sparse branch's discrete choices that differ between the engines after
// their last forwards (LSH buckets, key-selection picks, ReLU gates of the
// key-score MLP, ranking orders): gpu_engine.c's discrete_diffs.
static int ranking(double a, double b) { return a > b ? 2 : a == b ? 1 : 0; }
static long discrete_diffs(hax_engine *cpu, hax_engine *gpu, const hax_model *m, const hax_batch *b) {
    const hax_model_config *cfg = &m->cfg;
    if (!cfg->sparse_mask) return 0;
    int n = b->n_tok, kc = cfg->k_c;
    long diff = 0;
    size_t nh = (size_t)n * 2 * cfg->state_size;
    for (int l = 0; l < cfg->n_layers; l++) {
        const hax_sparse_state *cs = engine_cpu_sparse(cpu, l);
        const cu_sparse_state *gs = engine_cuda_sparse(gpu, l);
        if (cfg->sparse_mask & (SPARSE_SIGN_BIN_LSH | SPARSE_ARGMAX_LSH)) {
            int32_t *qb = cuda_download_new(gs->q_bucket, sizeof(int32_t) * n);
            int32_t *kb = cuda_download_new(gs->k_bucket, sizeof(int32_t) * n);
            for (int t = 0; t < n; t++) diff += (qb[t] != cs->q_bucket[t]) + (kb[t] != cs->k_bucket[t]);
            free(qb), free(kb);
        }
        if (cfg->sparse_mask & SPARSE_KEY_SELECTION) {
            const cuda_ks_state *gk = (const cuda_ks_state *)gs->ks;
            int *sel = cuda_download_new(gk->sel, sizeof(int) * (size_t)n * kc);
            for (size_t i = 0; i < (size_t)n * kc; i++) diff += sel[i] != cs->ks->sel[i];
            free(sel);
            for (int k = 0; k < 2; k++) {
                float *h = cuda_download_new(k ? gk->h2 : gk->h1, sizeof(float) * nh);
                const float *hc = k ? cs->ks->h2 : cs->ks->h1;
                for (size_t i = 0; i < nh; i++) diff += (h[i] > 0) != (hc[i] > 0);
                free(h);
            }
            if (cs->ks->has_loss) {
                double *y = cuda_download_new(gk->y, sizeof(double) * (size_t)b->n_seq * kc);
                for (int q = 0; q < b->n_seq; q++)
                    for (int a = 0; a < kc; a++)
                        for (int c = a + 1; c < kc; c++) {
                            const double *yc = cs->ks->y + (size_t)q * kc, *yg = y + (size_t)q * kc;
                            diff += ranking(yc[a], yc[c]) != ranking(yg[a], yg[c]);
                        }
                free(y);
            }
        }
    }
    return diff;
}

static void step(hax_engine *e, hax_model *m, const hax_batch *b, hax_fwd_result *r) {
    hax_fwd_opts o = {1, 1, 0, 0.0, NULL};
    model_zero_grad(m);
    engine_forward(e, b, &o, r);
    engine_backward(e);
}

static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1e-12 ? fabs(b) : 1.0); }

// A tensor of the device (dev) against the CPU's in the regime (cpu) and the
// CPU's in fp32 (f32): normwise within the regime's noise, floor `floor`.
static void check_tensor(const char *who, const char *what, const float *dev, const float *cpu, const float *f32,
                         size_t n, double floor) {
    double e = rel_err(dev, cpu, n), noise = rel_err(f32, cpu, n), tol = noise > floor ? noise : floor;
    printf("      %s: device vs cpu %.2e, regime vs fp32 (cpu) %.2e\n", what, e, noise);
    CHECK(e <= tol, "%s: %s: device vs cpu %.3e, above the regime's noise %.3e", who, what, e, noise);
}

// ---------------------------------------------------------------- one step

static void compare_regime(hax_arch arch, hax_precision prec) {
    hax_model m, mf;
    build_model(&m, arch, prec);
    build_model(&mf, arch, PREC_FP32);
    memcpy(mf.data, m.data, sizeof(float) * m.n_floats);  // fp32 on the regime's weights
    const char *who = label(arch, prec);
    static const int lens[] = {5, 1, 17, 3, 100, 4, 40, 1, 64, 33, 130};
    int n_seq = (int)(sizeof lens / sizeof lens[0]);
    hax_batch b = make_batch(lens, n_seq, m.cfg.vocab_size, 3);
    int n = b.n_tok, d = m.cfg.hidden_size, V = m.cfg.vocab_size;
    size_t nd = (size_t)n * d, nv = (size_t)n * V;
    hax_engine *cpu = engine_cpu_create(&m, n, n_seq, b.model_len);
    hax_engine *cf = engine_cpu_create(&mf, n, n_seq, b.model_len);
    hax_engine *gpu = engine_cuda_create(&m, 16, 2, b.model_len);
    hax_fwd_result rc, rf, rg;
    step(cf, &mf, &b, &rf);
    step(cpu, &m, &b, &rc);
    float *g_cpu = xmalloc(sizeof(float) * m.n_floats), *hid = xmalloc(sizeof(float) * nd);
    float *lg = xmalloc(sizeof(float) * nv);
    memcpy(g_cpu, m.grad, sizeof(float) * m.n_floats);
    memcpy(hid, engine_hidden(cpu), sizeof(float) * nd);
    memcpy(lg, engine_logits(cpu), sizeof(float) * nv);
    step(gpu, &m, &b, &rg);
    long flips = discrete_diffs(cpu, gpu, &m, &b);
    printf("    %s: loss cpu %.7f gpu %.7f fp32 %.7f, gate loss %.7f / %.7f / %.7f; %ld discrete choices differ\n",
           who, rc.loss, rg.loss, rf.loss, rc.gate_loss, rg.gate_loss, rf.gate_loss, flips);
    double el = rel(rg.loss, rc.loss), nl = rel(rf.loss, rc.loss);
    CHECK(el <= fmax(1e-5, nl), "%s: loss: device vs cpu %.3e, regime vs fp32 %.3e", who, el, nl);
    double eg = rel(rg.gate_loss, rc.gate_loss), ng = rel(rf.gate_loss, rc.gate_loss);
    CHECK(eg <= fmax(1e-5, ng) || (flips && eg <= 1e-2), "%s: gate loss: device vs cpu %.3e, regime vs fp32 %.3e",
          who, eg, ng);
    check_tensor(who, "hidden", engine_hidden(gpu), hid, engine_hidden(cf), nd, 1e-5);
    check_tensor(who, "logits", engine_logits(gpu), lg, engine_logits(cf), nv, 1e-5);
    ulp_stats sh = {0}, sl = {0}, sg = {0};
    double worst = 0;  // the largest ratio of a gradient's error to its regime noise
    const char *worst_name = "";
    for (int i = 0; i < m.n_params; i++) {
        const hax_param *p = &m.params[i];
        const float *gg = m.grad + p->offset, *gc = g_cpu + p->offset, *gf = mf.grad + p->offset;
        if (strstr(p->name, "dx_proj_3.bias")) {  // a zero-sum gradient (score differences only): absolute
            double e = fabs((double)gg[0] - gc[0]);
            CHECK(e <= 1e-6 + fabs((double)gf[0] - gc[0]), "%s: %s (zero-sum): absolute error %.3e", who, p->name, e);
            continue;
        }
        double e = rel_err(gg, gc, p->numel), noise = rel_err(gf, gc, p->numel);
        double tol = fmax(1e-4, noise);
        if (flips && strstr(p->name, "dx_proj_")) tol = fmax(tol, 5e-2);
        CHECK(e <= tol, "%s: gradient of %s: device vs cpu %.3e, regime vs fp32 %.3e (%ld discrete choices differ)",
              who, p->name, e, noise, flips);
        if (e / fmax(noise, 1e-12) > worst) worst = e / fmax(noise, 1e-12), worst_name = p->name;
        if (prec == PREC_BF16_PURE) ulp_add(&sg, gg, gc, p->numel);
    }
    printf("      %d gradients: largest device-vs-cpu error / regime noise %.3f (%s)\n", m.n_params, worst, worst_name);
    if (prec == PREC_BF16_PURE) {
        ulp_add(&sh, engine_hidden(gpu), hid, nd);
        ulp_add(&sl, engine_logits(gpu), lg, nv);
        ulp_print("hidden", &sh), ulp_print("logits", &sl), ulp_print("gradients", &sg);
        CHECK(sh.not_bf16 == 0 && sl.not_bf16 == 0 && sg.not_bf16 == 0,
              "%s: device values that are not bf16: hidden %ld, logits %ld, gradients %ld", who, sh.not_bf16,
              sl.not_bf16, sg.not_bf16);
    }
    engine_free(cpu), engine_free(cf), engine_free(gpu);
    free(g_cpu), free(hid), free(lg);
    hax_batch_free(&b);
    model_free(&m), model_free(&mf);
}

// ---------------------------------------------------------------- training

// 20 steps on three alternating ragged batches, three runs from the same
// (rounded) init: the CPU in the regime, the device in the regime (graph
// steps, weights and AdamW resident), the CPU in fp32 (the regime's noise).
static void train_regime(hax_arch arch, hax_precision prec) {
    static const int lens_a[] = {5, 1, 17, 3, 100, 4, 40, 1, 64, 33, 130};
    static const int lens_b[] = {70, 70, 9, 120, 2};
    static const int lens_c[] = {31, 300, 12, 12, 12, 12, 80};
    hax_model mc, mg, mf;
    build_model(&mc, arch, prec), build_model(&mg, arch, prec), build_model(&mf, arch, PREC_FP32);
    memcpy(mf.data, mc.data, sizeof(float) * mc.n_floats);
    const char *who = label(arch, prec);
    int V = mc.cfg.vocab_size;
    hax_batch tb[3] = {make_batch(lens_a, 11, V, 11), make_batch(lens_b, 5, V, 12), make_batch(lens_c, 7, V, 13)};
    hax_adamw oc, og, of;
    adamw_init(&oc, mc.n_floats, 0.9, 0.999, 1e-8, 0.01);
    adamw_init(&og, mg.n_floats, 0.9, 0.999, 1e-8, 0.01);
    adamw_init(&of, mf.n_floats, 0.9, 0.999, 1e-8, 0.01);
    oc.bf16_pure = og.bf16_pure = prec == PREC_BF16_PURE;
    hax_engine *cpu = engine_cpu_create(&mc, 700, 16, 300), *cf = engine_cpu_create(&mf, 700, 16, 300);
    hax_engine *gpu = engine_cuda_create(&mg, 700, 16, 300);
    gpu->be->dev->push(gpu, &og);
    int steps = 20, first_flip = 0;
    double worst = 0, worst_noise = 0;
    for (int s = 1; s <= steps; s++) {
        const hax_batch *b = &tb[s % 3];
        double lr = adamw_schedule_lr(3e-3, s, 5);
        hax_fwd_opts o = {1, 1, (uint32_t)s, 0.0, NULL};
        hax_fwd_result rc, rg, rf;
        model_zero_grad(&mc), model_zero_grad(&mf);
        engine_forward(cpu, b, &o, &rc), engine_backward(cpu), adamw_step(&oc, mc.data, mc.grad, lr);
        engine_forward(cf, b, &o, &rf), engine_backward(cf), adamw_step(&of, mf.data, mf.grad, lr);
        engine_cuda_train_step(gpu, b, &o, &og, lr, &rg);
        if (!first_flip && discrete_diffs(cpu, gpu, &mc, b)) first_flip = s;
        worst = fmax(worst, rel(rg.loss, rc.loss)), worst_noise = fmax(worst_noise, rel(rf.loss, rc.loss));
        CHECK(isfinite(rg.loss), "%s: step %d: device loss %g", who, s, rg.loss);
    }
    gpu->be->dev->pull(gpu, &og);
    double ew = rel_err(mg.data, mc.data, mc.n_floats), nw = rel_err(mf.data, mc.data, mc.n_floats);
    printf("    %s: %d steps: loss curve device vs cpu %.2e (regime vs fp32 %.2e); final weights %.2e (%.2e); first "
           "discrete flip at step %d (0 = none)\n",
           who, steps, worst, worst_noise, ew, nw, first_flip);
    CHECK(worst <= fmax(1e-4, worst_noise), "%s: loss curve: device vs cpu %.3e, regime vs fp32 %.3e", who, worst,
          worst_noise);
    CHECK(ew <= fmax(1e-4, nw), "%s: final weights: device vs cpu %.3e, regime vs fp32 %.3e", who, ew, nw);
    CHECK(og.step == steps, "%s: device AdamW steps %lld", who, (long long)og.step);
    if (prec == PREC_BF16_PURE) {
        ulp_stats sw = {0}, sm = {0};
        ulp_add(&sw, mg.data, mc.data, mc.n_floats);
        ulp_add(&sm, og.m, oc.m, mc.n_floats);
        ulp_print("final weights", &sw), ulp_print("first moments", &sm);
        CHECK(sw.not_bf16 == 0 && sm.not_bf16 == 0, "%s: device weights / moments not bf16: %ld / %ld", who,
              sw.not_bf16, sm.not_bf16);
    }
    engine_free(cpu), engine_free(cf), engine_free(gpu);
    adamw_free(&oc), adamw_free(&og), adamw_free(&of);
    for (int i = 0; i < 3; i++) hax_batch_free(&tb[i]);
    model_free(&mc), model_free(&mg), model_free(&mf);
}

// The five models of issue 10 in one regime: Mamba, Mamba-2, Samba, and the
// Enhanced Mamba / Mamba-2 with HAX.
static void each_model(void (*fn)(hax_arch, hax_precision), hax_precision prec) {
    fn(ARCH_MAMBA, prec), fn(ARCH_MAMBA2, prec), fn(ARCH_SAMBA, prec);
    cur_pattern = "sign_bin_lsh+key_selection";
    fn(ARCH_MAMBA, prec), fn(ARCH_MAMBA2, prec);
    cur_pattern = NULL;
}

static void test_step_bf16_pure(void) { each_model(compare_regime, PREC_BF16_PURE); }
static void test_step_bf16(void) { each_model(compare_regime, PREC_BF16); }
static void test_train_bf16_pure(void) { each_model(train_regime, PREC_BF16_PURE); }
static void test_train_bf16(void) { each_model(train_regime, PREC_BF16); }

int main(int argc, char **argv) {
    (void)argc, (void)argv;  // --quick (run_gpu.sh) changes nothing here
    if (cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    cuda_init(0);
    printf("device: %s\n", cuda_device_name());
    RUN(test_round_kernel);
    RUN(test_step_bf16_pure);
    RUN(test_step_bf16);
    RUN(test_train_bf16_pure);
    RUN(test_train_bf16);
    return test_summary();
}
