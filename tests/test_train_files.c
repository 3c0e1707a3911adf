// test_train_files: checks of hax-train's safetensors outputs, used by
// tests/test_train.sh, plus self-tests of those checks (run without
// arguments, as tests/run.sh does).
//
//   test_train_files cmp A B RTOL [--weights] [--skip SUFFIX]
//       the same tensor names, dtypes and shapes; every tensor within RTOL
//       (largest |a-b| / largest |b|; RTOL 0: bit for bit). --weights: only
//       the model's weights (names without a checkpoint prefix). --skip: no
//       value check of tensors whose name ends with SUFFIX.
//   test_train_files golden FILE GOLDEN
//       FILE's parameters have exactly the names and shapes of the golden
//       case's parameters (the tensors X with a grad.X), and its
//       eval.rand.layers.* tensors those of the golden's.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/io/safetensors.h"
#include "test.h"

static char msg[1024];
static const char *skip_suffix;

static int skipped(const char *name) {
    size_t n = strlen(name), k = skip_suffix ? strlen(skip_suffix) : 0;
    return k > 0 && n >= k && strcmp(name + n - k, skip_suffix) == 0;
}

// Checkpoint tensors that are not weights of the current model.
static int is_state(const char *name) {
    static const char *const pre[] = {"adamw.", "best.", "best_valid.", "metrics", "state", "eval.", NULL};
    for (int i = 0; pre[i]; i++)
        if (strncmp(name, pre[i], strlen(pre[i])) == 0) return 1;
    return 0;
}

static int same_shape(const st_tensor *a, const st_tensor *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

// Largest |a-b| / largest |b| of one tensor pair, in double.
static double tensor_err(const st_tensor *a, const st_tensor *b) {
    size_t n = st_numel(a);
    double *x = malloc(n * sizeof(double) + 1), *y = malloc(n * sizeof(double) + 1);
    st_tensor_to_f64(a, x);
    st_tensor_to_f64(b, y);
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = x[i] - y[i];
        if (d != d) d = x[i] == x[i] || y[i] == y[i] ? INFINITY : 0;  // NaN on one side only
        if (fabs(d) > num) num = fabs(d);
        if (fabs(y[i]) > den) den = fabs(y[i]);
    }
    free(x);
    free(y);
    return den > 0 ? num / den : num;
}

// 0 when the files agree; else -1 with msg. *worst: largest error seen.
static int compare(const char *pa, const char *pb, double rtol, int weights_only, double *worst) {
    char err[512];
    st_file *a = st_load(pa, err, sizeof err), *b = a ? st_load(pb, err, sizeof err) : NULL;
    *worst = 0;
    int rc = 0;
    if (!a || !b) {
        snprintf(msg, sizeof msg, "%s", err);
        rc = -1;
    }
    for (int pass = 0; !rc && pass < 2; pass++) {  // every tensor of a in b, then of b in a
        const st_file *x = pass ? b : a, *y = pass ? a : b;
        for (int i = 0; !rc && i < x->n_tensors; i++) {
            const st_tensor *t = &x->tensors[i];
            if (weights_only && is_state(t->name)) continue;
            const st_tensor *u = st_find(y, t->name);
            if (!u) {
                snprintf(msg, sizeof msg, "tensor %s: in %s, not in %s", t->name, x->path, y->path);
                rc = -1;
            } else if (!same_shape(t, u)) {
                snprintf(msg, sizeof msg, "tensor %s: dtype or shape differs", t->name);
                rc = -1;
            } else if (pass == 0 && !skipped(t->name)) {
                const void *da = t->data, *db = u->data;
                size_t bytes = t->end - t->begin;
                double e = rtol > 0 ? tensor_err(t, u) : (memcmp(da, db, bytes) != 0 ? INFINITY : 0.0);
                if (e > *worst) *worst = e;
                if (e > rtol) {
                    snprintf(msg, sizeof msg, "tensor %s: relative difference %.3g above %.3g", t->name, e, rtol);
                    rc = -1;
                }
            }
        }
    }
    if (a) st_close(a);
    if (b) st_close(b);
    return rc;
}

static int is_golden_param(const st_file *g, const char *name) {
    char buf[256];
    snprintf(buf, sizeof buf, "grad.%s", name);
    return strncmp(name, "grad.", 5) != 0 && st_find(g, buf) != NULL;
}

// 0 when FILE's parameters and evaluation hash matrices match the golden's.
static int golden_check(const char *path, const char *golden) {
    char err[512];
    st_file *f = st_load(path, err, sizeof err), *g = f ? st_load(golden, err, sizeof err) : NULL;
    int rc = 0, n_param = 0, n_hash = 0;
    if (!f || !g) {
        snprintf(msg, sizeof msg, "%s", err);
        rc = -1;
    }
    for (int i = 0; !rc && i < f->n_tensors; i++) {  // each of FILE's tensors is a golden parameter or hash
        const st_tensor *t = &f->tensors[i];
        int hash = strncmp(t->name, "eval.rand.layers.", 17) == 0;
        const st_tensor *u = st_find(g, t->name);
        if (!u || (!hash && !is_golden_param(g, t->name))) {
            snprintf(msg, sizeof msg, "%s: tensor %s: not a parameter of %s", path, t->name, golden);
            rc = -1;
        } else if (!same_shape(t, u)) {
            snprintf(msg, sizeof msg, "%s: tensor %s: dtype or shape differs from %s", path, t->name, golden);
            rc = -1;
        }
        n_param += !hash;
        n_hash += hash;
    }
    for (int i = 0; !rc && i < g->n_tensors; i++) {  // and every golden parameter and hash is there
        const st_tensor *u = &g->tensors[i];
        int want = is_golden_param(g, u->name) || strncmp(u->name, "eval.rand.layers.", 17) == 0;
        if (want && !st_find(f, u->name)) {
            snprintf(msg, sizeof msg, "%s: tensor %s of %s is missing", path, u->name, golden);
            rc = -1;
        }
    }
    if (!rc) printf("  %s: %d parameters and %d evaluation hash matrices as in %s\n", path, n_param, n_hash, golden);
    if (f) st_close(f);
    if (g) st_close(g);
    return rc;
}

// ---------------------------------------------------------------- self-tests

static const char *golden_file = "tests/golden/mamba_sign_bin_lsh__key_selection.safetensors";

// Writes the golden's parameters (+ hash matrices) to path, leaving out
// tensor `drop` and giving tensor `reshape` another shape.
static void write_from_golden(const char *path, const char *drop, const char *reshape) {
    st_file *g = st_open(golden_file);
    st_writer *w = st_writer_new();
    for (int i = 0; i < g->n_tensors; i++) {
        const st_tensor *t = &g->tensors[i];
        int hash = strncmp(t->name, "eval.rand.layers.", 17) == 0;
        if (!(hash || is_golden_param(g, t->name)) || (drop && !strcmp(drop, t->name))) continue;
        int64_t shape[ST_MAX_DIM];
        memcpy(shape, t->shape, sizeof shape);
        int ndim = t->ndim;
        if (reshape && !strcmp(reshape, t->name)) {  // the same numel, flattened
            shape[0] = (int64_t)st_numel(t);
            ndim = 1;
        }
        st_writer_put(w, t->name, t->dtype, ndim, shape, t->data);
    }
    char err[256];
    CHECK(st_writer_write(w, path, err, sizeof err) == 0, "%s", err);
    st_writer_free(w);
    st_close(g);
}

static void test_golden_check(void) {
    char path[] = "/tmp/hax_test_train_files_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    close(fd);
    write_from_golden(path, NULL, NULL);
    CHECK(golden_check(path, golden_file) == 0, "%s", msg);
    write_from_golden(path, "layers.1.mixer.E", NULL);
    CHECK(golden_check(path, golden_file) != 0, "a missing parameter passed");
    write_from_golden(path, NULL, "layers.0.mixer.x_proj.weight");
    CHECK(golden_check(path, golden_file) != 0, "a wrong shape passed");
    write_from_golden(path, "eval.rand.layers.0.hash_matrix", NULL);
    CHECK(golden_check(path, golden_file) != 0, "a missing hash matrix passed");
    unlink(path);
}

static void write_pair(const char *path, float scale, const char *name) {
    float x[4] = {1.0f, -2.0f, 3.0f, 0.5f};
    for (int i = 0; i < 4; i++) x[i] *= scale;
    double s[2] = {7, 8};
    st_writer *w = st_writer_new();
    st_writer_put(w, name, ST_F32, ST_SHAPE(2, 2), x);
    st_writer_put(w, "adamw.m.w", ST_F64, ST_SHAPE(2), s);
    char err[256];
    CHECK(st_writer_write(w, path, err, sizeof err) == 0, "%s", err);
    st_writer_free(w);
}

static void test_compare(void) {
    char a[] = "/tmp/hax_test_train_a_XXXXXX", b[] = "/tmp/hax_test_train_b_XXXXXX";
    int fa = mkstemp(a), fb = mkstemp(b);
    CHECK(fa >= 0 && fb >= 0, "mkstemp");
    close(fa);
    close(fb);
    double worst;
    write_pair(a, 1.0f, "w");
    write_pair(b, 1.0f, "w");
    CHECK(compare(a, b, 0, 0, &worst) == 0 && worst == 0, "equal files: %s", msg);
    write_pair(b, 1.000001f, "w");
    CHECK(compare(a, b, 0, 0, &worst) != 0, "bit-exact compare missed a difference");
    CHECK(compare(a, b, 1e-5, 0, &worst) == 0, "1e-6 change refused at 1e-5: %s", msg);
    write_pair(b, 1.001f, "w");
    CHECK(compare(a, b, 1e-5, 0, &worst) != 0, "1e-3 change passed at 1e-5");
    write_pair(b, 1.0f, "v");
    CHECK(compare(a, b, 1e-5, 0, &worst) != 0, "a renamed tensor passed");
    CHECK(compare(a, b, 1e-5, 1, &worst) != 0, "a renamed weight passed with --weights");
    unlink(a);
    unlink(b);
}

// bf16 FILE [PREFIX]: every F32 tensor (whose name starts with PREFIX) holds
// bf16 values: the low 16 bits of each float are zero. 0, or 1 with the first
// offender in msg.
static int bf16_check(const char *path, const char *prefix) {
    char err[512];
    st_file *f = st_load(path, err, sizeof err);
    if (!f) return snprintf(msg, sizeof msg, "%s", err), 1;
    int rc = 0, n_checked = 0;
    for (int i = 0; i < f->n_tensors && !rc; i++) {
        const st_tensor *t = &f->tensors[i];
        if (t->dtype != ST_F32 || (prefix && strncmp(t->name, prefix, strlen(prefix)) != 0)) continue;
        n_checked++;
        const unsigned char *p = t->data;
        for (size_t k = 0; k < st_numel(t); k++) {
            uint32_t u;
            memcpy(&u, p + 4 * k, 4);
            if (u & 0xffffu) {
                float x;
                memcpy(&x, &u, 4);
                snprintf(msg, sizeof msg, "%s: %s[%zu] = %.9g (0x%08x) is not a bf16 value", path, t->name, k,
                         (double)x, u);
                rc = 1;
                break;
            }
        }
    }
    if (!rc && n_checked == 0) snprintf(msg, sizeof msg, "%s: no F32 tensor to check", path), rc = 1;
    if (!rc) printf("  %d F32 tensors, every value bf16\n", n_checked);
    st_close(f);
    return rc;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "cmp")) {
        double worst;
        int weights = 0;
        for (int i = 5; i < argc; i++) {
            if (!strcmp(argv[i], "--weights")) weights = 1;
            else if (!strcmp(argv[i], "--skip") && i + 1 < argc) skip_suffix = argv[++i];
            else return fprintf(stderr, "cmp: unknown argument '%s'\n", argv[i]), 2;
        }
        int rc = compare(argv[2], argv[3], atof(argv[4]), weights, &worst);
        if (rc) fprintf(stderr, "%s\n", msg);
        else printf("  largest relative difference %.3g\n", worst);
        return rc ? 1 : 0;
    }
    if (argc == 4 && !strcmp(argv[1], "golden")) {
        int rc = golden_check(argv[2], argv[3]);
        if (rc) fprintf(stderr, "%s\n", msg);
        return rc ? 1 : 0;
    }
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "bf16")) {
        int rc = bf16_check(argv[2], argc == 4 ? argv[3] : NULL);
        if (rc) fprintf(stderr, "%s\n", msg);
        return rc ? 1 : 0;
    }
    if (argc > 1) {
        fprintf(stderr, "usage: test_train_files [cmp A B RTOL [--weights] | golden FILE GOLDEN | bf16 FILE [PREFIX]]\n");
        return 2;
    }
    RUN(test_compare);
    RUN(test_golden_check);
    return test_summary();
}
