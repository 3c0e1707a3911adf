// test_adamw.c: one AdamW step against every golden file's adamw.* tensors,
// many steps against a double-precision AdamW, and the warm-up schedule.
#include <dirent.h>
#include <stdint.h>

#include "src/ops/adamw.h"
#include "src/core/common.h"
#include "src/io/safetensors.h"
#include "test.h"

static const char *golden_dir(void) {
    const char *d = getenv("HAX_GOLDEN");
    return d ? d : "tests/golden";
}

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
    DIR *d = opendir(golden_dir());
    CHECK(d != NULL, "cannot open %s", golden_dir());
    if (!d) return;
    int n_files = 0, n_tensors = 0;
    double worst = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 12 || strcmp(e->d_name + l - 12, ".safetensors") != 0) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", golden_dir(), e->d_name);
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

int main(void) {
    RUN(test_golden_step);
    RUN(test_multi_step);
    RUN(test_schedule);
    RUN(test_first_step_lr_zero);
    return test_summary();
}
