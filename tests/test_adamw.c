// test_adamw.c: one AdamW step against every golden file's adamw.* tensors,
// many steps against a double-precision AdamW, and the warm-up schedule.
#include <dirent.h>
#include <stdint.h>

#include "src/ops/adamw.h"
#include "src/core/common.h"
#include "src/core/rng.h"
#include "src/core/scalar.h"
#include "src/ops/basic.h"
#include "src/io/safetensors.h"
#include "test.h"

// One step from zero state with the golden gradients (lr 1e-3); tolerance of
// the golden README: |a - b| <= 0.05*lr + 1e-6*|b|. Mathematically zero
// gradients (|g| < 1e-8 everywhere) are compared as |a - p(1 - lr*wd)| <= lr.
static void check_golden_file(const char *path, int *n_tensors, double *worst) {
    char err[512];
    st_file *f = st_load(path, err, sizeof err);
    CHECK(f != NULL, "%s", err);
    if (!f) return;
    const double lr = 1e-3, wd = 0.01;
    const char *meta = st_meta(f, "hax_case");
    CHECK(meta && strstr(meta, "\"lr\": 0.001"), "%s: AdamW lr in metadata", path);
    int found = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *ta = &f->tensors[i];
        if (strncmp(ta->name, "adamw.", 6) != 0) continue;
        const char *pname = ta->name + 6;
        char gname[300];
        snprintf(gname, sizeof gname, "grad.%s", pname);
        const st_tensor *tp = st_find(f, pname), *tg = st_find(f, gname);
        CHECK(tp && tg, "%s: %s or %s missing", path, pname, gname);
        if (!tp || !tg) continue;
        size_t n = st_numel(ta);
        CHECK(st_numel(tp) == n && st_numel(tg) == n, "%s: sizes of %s", path, pname);
        float *p = xmalloc(n * 4), *g = xmalloc(n * 4), *want = xmalloc(n * 4), *p0 = xmalloc(n * 4);
        st_tensor_to_f32(tp, p);
        st_tensor_to_f32(tg, g);
        st_tensor_to_f32(ta, want);
        memcpy(p0, p, n * 4);
        hax_adamw opt;
        adamw_init(&opt, n, 0.9, 0.999, 1e-8, wd);
        adamw_step(&opt, p, g, lr);
        int degenerate = 1;
        for (size_t k = 0; k < n; k++)
            if (fabsf(g[k]) >= 1e-8f) degenerate = 0;
        int bad = 0;
        for (size_t k = 0; k < n && bad < 3; k++) {
            double a = p[k], b = want[k];
            double e = fabs(a - b);
            if (degenerate) {
                double ok = fabs(b - (double)p0[k] * (1 - lr * wd)) <= lr && fabs(a - (double)p0[k] * (1 - lr * wd)) <= lr;
                CHECK(ok, "%s: %s[%zu] (zero gradient): ours %.9g, golden %.9g", path, pname, k, a, b);
                bad += !ok;
            } else {
                if (e / lr > *worst) *worst = e / lr;
                CHECK(e <= 0.05 * lr + 1e-6 * fabs(b), "%s: %s[%zu]: ours %.9g, golden %.9g (|diff|/lr %.3g)", path,
                      pname, k, a, b, e / lr);
                bad += e > 0.05 * lr + 1e-6 * fabs(b);
            }
        }
        adamw_free(&opt);
        free(p), free(g), free(want), free(p0);
        found++;
    }
    CHECK(found > 5, "%s: only %d adamw tensors", path, found);
    *n_tensors += found;
    st_close(f);
}

static void test_golden_step(void) {
    DIR *d = opendir(test_golden_dir());
    CHECK(d != NULL, "cannot open %s", test_golden_dir());
    if (!d) return;
    int n_files = 0, n_tensors = 0;
    double worst = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!test_ends_with(e->d_name, ".safetensors")) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", test_golden_dir(), e->d_name);
        check_golden_file(path, &n_tensors, &worst);
        n_files++;
    }
    closedir(d);
    CHECK(n_files == 23, "%d golden files", n_files);
    printf("  adamw: %d tensors in %d files, max |ours - golden| / lr = %.3g\n", n_tensors, n_files, worst);
}

// A plain double-precision AdamW (the textbook formulas).
static void adamw_ref(double *p, const double *g, double *m, double *v, size_t n, double lr, int64_t step) {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
    double bc1 = 1 - pow(b1, (double)step), bc2 = 1 - pow(b2, (double)step);
    for (size_t i = 0; i < n; i++) {
        p[i] *= 1 - lr * wd;
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        p[i] -= lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + eps);
    }
}

static void test_multi_step(void) {
    enum { N = 1000, STEPS = 300 };
    const double lr = 2e-3;
    float *p = xmalloc(N * 4), *g = xmalloc(N * 4);
    double *pd = xmalloc(N * 8), *gd = xmalloc(N * 8), *md = xcalloc(N, 8), *vd = xcalloc(N, 8);
    test_fill(p, N, 1, 1.0f);
    for (int i = 0; i < N; i++) pd[i] = p[i];
    hax_adamw opt;
    adamw_init(&opt, N, 0.9, 0.999, 1e-8, 0.01);
    double worst = 0;
    for (int s = 1; s <= STEPS; s++) {
        test_fill(g, N, 100 + s, 1.0f);
        // gradients over several magnitudes, and some exact zeros
        for (int i = 0; i < N; i++) {
            g[i] *= powf(10.0f, (float)(i % 7) - 4.0f);
            if (i % 97 == 0) g[i] = 0;
            gd[i] = g[i];
        }
        double lr_s = adamw_schedule_lr(lr, s, 50);
        adamw_step(&opt, p, g, lr_s);
        adamw_ref(pd, gd, md, vd, N, lr_s, s);
    }
    for (int i = 0; i < N; i++) {
        double e = fabs(p[i] - pd[i]);
        if (e / lr > worst) worst = e / lr;
    }
    CHECK(opt.step == STEPS, "step count %lld", (long long)opt.step);
    // float32 rounding of p (|p| ~ 1, ulp 1.2e-7) over 300 steps can reach
    // ~0.01*lr in the worst case; a wrong formula errs by ~lr.
    CHECK(worst < 1e-2, "max |float - double| / lr = %.3g after %d steps", worst, STEPS);
    printf("  %d steps: max |float32 - float64| / lr = %.3g\n", STEPS, worst);
    // The moments match too.
    // The moments match too (error relative to the tensor's largest moment).
    double wm = 0, mmax = 0, wv = 0, vmax = 0;
    for (int i = 0; i < N; i++) {
        wm = fmax(wm, fabs(opt.m[i] - md[i])), mmax = fmax(mmax, fabs(md[i]));
        wv = fmax(wv, fabs(opt.v[i] - vd[i])), vmax = fmax(vmax, fabs(vd[i]));
    }
    CHECK(wm < 1e-5 * mmax && wv < 1e-5 * vmax, "moment errors %.3g / %.3g, %.3g / %.3g", wm, mmax, wv, vmax);
    adamw_free(&opt);
    free(p), free(g), free(pd), free(gd), free(md), free(vd);
}

static void test_schedule(void) {
    const double lr = 0.002;
    CHECK(adamw_schedule_lr(lr, 1, 5000) == 0.0, "step 1 uses lr 0");
    CHECK(adamw_schedule_lr(lr, 2, 5000) == lr * (1.0 / 5000), "step 2: %g", adamw_schedule_lr(lr, 2, 5000));
    CHECK(adamw_schedule_lr(lr, 2501, 5000) == lr * 0.5, "step 2501");
    CHECK(adamw_schedule_lr(lr, 5000, 5000) == lr * (4999.0 / 5000), "step 5000");
    CHECK(adamw_schedule_lr(lr, 5001, 5000) == lr, "step 5001 full lr");
    CHECK(adamw_schedule_lr(lr, 400000, 5000) == lr, "last step full lr");
    CHECK(adamw_schedule_lr(lr, 1, 0) == lr, "no warm-up");
}

// Step 1 of the reference has lr 0: parameters stay, moments move (quirk 16).
static void test_first_step_lr_zero(void) {
    float p[3] = {1, -2, 3}, g[3] = {0.5f, -0.25f, 1};
    hax_adamw opt;
    adamw_init(&opt, 3, 0.9, 0.999, 1e-8, 0.01);
    adamw_step(&opt, p, g, adamw_schedule_lr(1e-3, 1, 5000));
    CHECK(p[0] == 1 && p[1] == -2 && p[2] == 3, "parameters changed with lr 0");
    CHECK(opt.m[0] == 0.05f && opt.v[2] > 0, "moments not updated: m %g v %g", opt.m[0], opt.v[2]);
    // Then a real step moves every parameter against its gradient.
    adamw_step(&opt, p, g, 1e-3);
    CHECK(p[0] < 1 && p[1] > -2 && p[2] < 3, "second step direction");
    adamw_free(&opt);
}

// ---------------------------------------------------------------- bf16


// hax_bf16_round: nearest, ties to even, on normals, subnormals, the
// overflow edge, ±0, ±Inf and NaN; round_bf16 (the CPU op) agrees.
static void test_bf16_round(void) {
    static const uint32_t cases[][2] = {
        {0x3f800000u, 0x3f800000u},  // 1
        {0x3f808000u, 0x3f800000u},  // 1 + 2^-8: tie, to even (down)
        {0x3f818000u, 0x3f820000u},  // 1 + 3*2^-8: tie, to even (up)
        {0x3f808001u, 0x3f810000u},  // just above the tie
        {0x3f807fffu, 0x3f800000u},  // just below
        {0xbf808000u, 0xbf800000u},  // negative tie
        {0xbf818000u, 0xbf820000u},
        {0x00008000u, 0x00000000u},  // subnormal tie to even (zero)
        {0x00018000u, 0x00020000u},  // subnormal tie to even (up)
        {0x00010000u, 0x00010000u},  // smallest bf16 subnormal
        {0x00007fffu, 0x00000000u},
        {0x80008000u, 0x80000000u},  // to -0
        {0x007fffffu, 0x00800000u},  // largest float subnormal -> smallest normal
        {0x80000000u, 0x80000000u},  // -0
        {0x7f7f0000u, 0x7f7f0000u},  // largest bf16
        {0x7f7f7fffu, 0x7f7f0000u},
        {0x7f7f8000u, 0x7f800000u},  // tie past the largest: Inf
        {0x7f7fffffu, 0x7f800000u},  // FLT_MAX -> Inf
        {0xff7fffffu, 0xff800000u},
        {0x7f800000u, 0x7f800000u},  // Inf
        {0xff800000u, 0xff800000u},  // -Inf
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        uint32_t got = f32_bits(hax_bf16_round(f32_from_bits(cases[k][0])));
        CHECK(got == cases[k][1], "bf16(0x%08x) = 0x%08x, expected 0x%08x", cases[k][0], got, cases[k][1]);
    }
    static const uint32_t nans[] = {0x7fc00000u, 0x7fc00001u, 0x7f800001u, 0xffffffffu, 0x7fffffffu};
    for (size_t k = 0; k < sizeof nans / sizeof nans[0]; k++) {
        float r = hax_bf16_round(f32_from_bits(nans[k]));
        CHECK(r != r && (f32_bits(r) & 0xffffu) == 0, "bf16(NaN 0x%08x) = 0x%08x", nans[k], f32_bits(r));
    }
    // random values: the op equals the scalar, results are bf16, idempotent,
    // and the nearest (|x - r| <= half the spacing of bf16 around x)
    enum { N = 100000 };
    float *x = xmalloc(sizeof(float) * N), *y = xmalloc(sizeof(float) * N);
    hax_rng r;
    rng_init(&r, 7, 0, 0, 0, 0);
    for (int i = 0; i < N; i++) x[i] = (float)(rng_normal(&r) * pow(10.0, (double)(i % 13) - 6));
    round_bf16(y, x, N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        float s = hax_bf16_round(x[i]);
        double ulp = ldexp(1.0, ilogb(x[i]) - 7);
        if (f32_bits(s) != f32_bits(y[i]) || (f32_bits(s) & 0xffffu) || hax_bf16_round(s) != s ||
            fabs((double)s - x[i]) > 0.5 * ulp)
            bad++;
    }
    CHECK(bad == 0, "%d of %d random values rounded wrongly", bad, N);
    free(x), free(y);
}

// §8.5 written out line by line, one bf16 rounding per torch op.
static void bf16_adamw_ref(float *p, const float *g_in, float *m, float *v, size_t n, double lr, double b1,
                           double b2, double eps, double wd, int64_t step) {
    for (size_t i = 0; i < n; i++) {
        float g = hax_bf16_round(g_in[i]);
        p[i] = hax_bf16_round(p[i] * (float)(1.0 - lr * wd));                  // p.mul_(1 - lr*wd)
        float w = (float)(1.0 - b1);                                           // m.lerp_(g, 1 - b1)
        float lerp = fabsf(w) < 0.5f ? m[i] + w * (g - m[i]) : g - (g - m[i]) * (1.0f - w);
        m[i] = hax_bf16_round(lerp);
        v[i] = hax_bf16_round(v[i] * (float)b2);                               // v.mul_(b2)
        v[i] = hax_bf16_round(v[i] + (float)(1.0 - b2) * (g * g));             // v.addcmul_(g, g, 1 - b2)
        double bc1 = 1.0 - pow(b1, (double)step), bc2 = 1.0 - pow(b2, (double)step);
        float den = hax_bf16_round(sqrtf(v[i]));                               // v.sqrt()
        den = hax_bf16_round(den / (float)sqrt(bc2));                          // .div_(sqrt(bc2))
        den = hax_bf16_round(den + (float)eps);                                // .add_(eps)
        p[i] = hax_bf16_round(p[i] + (float)(-(lr / bc1)) * (m[i] / den));     // p.addcdiv_(m, den, -lr/bc1)
    }
}

static void test_bf16_adamw(void) {
    enum { N = 4096, STEPS = 30 };
    const double betas1[] = {0.9, 0.3};  // both branches of torch's lerp
    const double lrs[] = {1e-3, 0.5};
    for (int c = 0; c < 4; c++) {
        double b1 = betas1[c & 1], lr = lrs[c >> 1];
        float *p = xmalloc(sizeof(float) * N), *g = xmalloc(sizeof(float) * N);
        float *pr = xmalloc(sizeof(float) * N), *mr = xcalloc(N, sizeof(float)), *vr = xcalloc(N, sizeof(float));
        hax_rng r;
        rng_init(&r, 3, 0, 0, 0, (uint32_t)c);
        for (int i = 0; i < N; i++) p[i] = pr[i] = hax_bf16_round((float)rng_normal(&r));
        hax_adamw opt;
        adamw_init(&opt, N, b1, 0.999, 1e-8, 0.01);
        opt.bf16_pure = 1;
        int bad = 0, moved = 0;
        for (int s = 1; s <= STEPS; s++) {
            for (int i = 0; i < N; i++) g[i] = (float)(rng_normal(&r) * 1e-2);  // fp32: rounded on the way in
            adamw_step(&opt, p, g, lr);
            bf16_adamw_ref(pr, g, mr, vr, N, lr, b1, 0.999, 1e-8, 0.01, s);
            for (int i = 0; i < N; i++)
                bad += f32_bits(p[i]) != f32_bits(pr[i]) || f32_bits(opt.m[i]) != f32_bits(mr[i]) || f32_bits(opt.v[i]) != f32_bits(vr[i]);
        }
        for (int i = 0; i < N; i++) moved += (f32_bits(p[i]) & 0xffffu) == 0 && (f32_bits(opt.m[i]) & 0xffffu) == 0;
        CHECK(bad == 0, "b1 %g lr %g: %d elements differ from the line-by-line reference", b1, lr, bad);
        CHECK(moved == N, "b1 %g lr %g: %d of %d parameters / moments not bf16", b1, lr, N - moved, N);
        adamw_free(&opt);
        free(p), free(g), free(pr), free(mr), free(vr);
    }
    // quirk 17: a zero gradient leaves bf16 weights unchanged (the decay rounds away)
    float p[3] = {hax_bf16_round(0.3f), hax_bf16_round(-1.7f), hax_bf16_round(3.0f)}, g[3] = {0, 0, 0};
    float p0[3] = {p[0], p[1], p[2]};
    hax_adamw opt;
    adamw_init(&opt, 3, 0.9, 0.999, 1e-8, 0.01);
    opt.bf16_pure = 1;
    for (int s = 0; s < 10; s++) adamw_step(&opt, p, g, 2e-3);
    CHECK(p[0] == p0[0] && p[1] == p0[1] && p[2] == p0[2], "weight decay moved bf16 weights: %g %g %g", p[0], p[1],
          p[2]);
    adamw_free(&opt);
}

int main(void) {
    RUN(test_golden_step);
    RUN(test_multi_step);
    RUN(test_schedule);
    RUN(test_first_step_lr_zero);
    RUN(test_bf16_round);
    RUN(test_bf16_adamw);
    return test_summary();
}
