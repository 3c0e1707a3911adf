// hax_pdiff_main.c: bin/hax-pdiff — which weights moved between two
// safetensors files of one model (an init from hax-train --save-init, a
// checkpoint.safetensors, a best.safetensors), and, where the second file is
// a checkpoint with its AdamW moments, which of them the next update would
// leave where they are in bf16.
//
// Per parameter tensor (matched by name; the checkpoint's adamw.m.* /
// adamw.v.* / best.* / best_valid.* / metrics / state and a best file's
// eval.rand.* are not parameters): elements, the fraction bit-identical in
// the two files, median |value| in each, and from B's moments m, v the update
// u that MODEL.md §8.5 makes of them at B's step (src/ops/adamw.h, the
// bf16-pure lines where B is bf16-pure, the fp32 ones otherwise). The update
// "vanishes" where bf16(bf16(p*decay) + u) == bf16(p), p B's weight: in
// bf16-pure the weight does not move. |u| is also given in units of half a
// bf16 ulp of p (below 1: vanishes, up to ties) and of lr (Adam's normalised
// step). Between two checkpoints, the moments table counts the elements of m
// and v that changed, and those of v that shrank or grew.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/config/config.h"
#include "src/core/common.h"
#include "src/core/scalar.h"
#include "src/io/safetensors.h"
#include "src/ops/adamw.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: hax-pdiff A.safetensors B.safetensors [--families] [--lr LR --step N] [--precision P]\n"
            "\n"
            "Compares the parameters of two safetensors files of one model (A earlier, B later: an init\n"
            "from hax-train --save-init, a checkpoint.safetensors, a best.safetensors). Per tensor:\n"
            "elements, the fraction bit-identical in A and B, median |value| in A and in B; where B holds\n"
            "AdamW moments (a checkpoint): the fraction of elements whose update at B's step (MODEL.md\n"
            "8.5, from B's m and v) vanishes in bf16 (bf16(p + u) == p), and the median |u| in units of\n"
            "half a bf16 ulp of p and in units of lr. Then the same per tensor family (layer indices\n"
            "replaced by *); between two checkpoints, how many of the moments changed.\n"
            "\n"
            "options:\n"
            "  --families     only the family table\n"
            "  --lr LR        the learning rate of B's step, after warm-up (default: B's config\n"
            "                 train.lr through the warm-up schedule)\n"
            "  --step N       B's AdamW step count (default: B's metadata step)\n"
            "  --precision P  fp32, bf16 or bf16-pure: which update lines (default: B's metadata)\n"
            "  --help         this text\n");
}

// ---------------------------------------------------------------- options

typedef struct {
    const char *a, *b;
    int families_only;
    double lr;          // < 0: from B's config
    int64_t step;       // < 0: from B's metadata
    const char *precision;
} pd_args;

static double parse_positive(const char *opt, const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= 0) || !isfinite(v))
        hax_die_code(HAX_EXIT_USAGE, "%s: expected a finite number >= 0, found '%s'", opt, s);
    return v;
}

static pd_args parse_args(int argc, char **argv) {
    pd_args a = {NULL, NULL, 0, -1, -1, NULL};
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(s, "--families") == 0) {
            a.families_only = 1;
        } else if ((strcmp(s, "--lr") == 0 || strcmp(s, "--step") == 0 || strcmp(s, "--precision") == 0)) {
            if (i + 1 >= argc) hax_die_code(HAX_EXIT_USAGE, "%s: expected a value after it, found none", s);
            const char *v = argv[++i];
            if (s[2] == 'l') a.lr = parse_positive(s, v);
            else if (s[2] == 's') {
                double d = parse_positive(s, v);
                if (d != floor(d) || d < 1 || d > 1e15)
                    hax_die_code(HAX_EXIT_USAGE, "--step: expected an integer >= 1, found '%s'", v);
                a.step = (int64_t)d;
            } else a.precision = v;
        } else if (s[0] == '-' && s[1]) {
            usage(stderr);
            hax_die_code(HAX_EXIT_USAGE, "expected A.safetensors B.safetensors and options, found '%s'", s);
        } else if (!a.a) a.a = s;
        else if (!a.b) a.b = s;
        else hax_die_code(HAX_EXIT_USAGE, "expected two files, found a third: '%s'", s);
    }
    if (!a.b) {
        usage(stderr);
        hax_die_code(HAX_EXIT_USAGE, "expected two safetensors files, found %d", a.a ? 1 : 0);
    }
    return a;
}

// ---------------------------------------------------------------- tensors

static int has_prefix(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

// Everything hax writes beside the weights (src/train/ckpt.c, best.safetensors).
static int is_param(const char *name) {
    static const char *const other[] = {"adamw.m.", "adamw.v.", "best.", "best_valid.", "eval.rand.", NULL};
    for (int i = 0; other[i]; i++)
        if (has_prefix(name, other[i])) return 0;
    return strcmp(name, "metrics") != 0 && strcmp(name, "state") != 0;
}

static void check_float(const st_file *f, const st_tensor *t) {
    if (t->dtype != ST_F32 && t->dtype != ST_BF16)
        hax_die("%s: tensor %s: expected dtype F32 or BF16, found %s", f->path, t->name, st_dtype_name(t->dtype));
}

static int same_shape(const st_tensor *x, const st_tensor *y) {
    if (x->ndim != y->ndim) return 0;
    for (int i = 0; i < x->ndim; i++)
        if (x->shape[i] != y->shape[i]) return 0;
    return 1;
}

// Every parameter of A is in B with A's shape, and B has no parameter A lacks.
static int match_params(const st_file *a, const st_file *b) {
    int n = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        const st_tensor *x = &a->tensors[i];
        if (!is_param(x->name)) continue;
        check_float(a, x);
        const st_tensor *y = st_find(b, x->name);
        char sa[128], sb[128];
        st_format_shape(sa, sizeof sa, x->ndim, x->shape);
        if (!y) hax_die("%s: tensor %s: expected it (a parameter of %s, shape %s), found none", b->path, x->name,
                        a->path, sa);
        check_float(b, y);
        st_format_shape(sb, sizeof sb, y->ndim, y->shape);
        if (!same_shape(x, y))
            hax_die("%s: tensor %s: expected shape %s (as in %s), found %s", b->path, x->name, sa, a->path, sb);
        n++;
    }
    for (int i = 0; i < b->n_tensors; i++) {
        const st_tensor *y = &b->tensors[i];
        if (is_param(y->name) && !st_find(a, y->name))
            hax_die("%s: tensor %s: expected only parameters of %s, found one it lacks", b->path, y->name, a->path);
    }
    if (n == 0) hax_die("%s: parameters: expected at least one F32 or BF16 parameter tensor, found none", a->path);
    return n;
}

// ---------------------------------------------------------------- the update

typedef struct {
    int have;               // B holds adamw.m.* and adamw.v.*
    int bf16_pure;
    int64_t step;
    double lr;              // of that step, after the schedule
    double peak_lr;         // train.lr (< 0: given by --lr)
    int64_t warmup;
    adamw_scalars k;
    double beta1, beta2, eps, wd;
} pd_opt;

static int64_t meta_step(const st_file *b) {
    const char *s = st_meta(b, "step");
    if (!s) hax_die("%s: __metadata__.step: expected the checkpoint's step (or --step N), found none", b->path);
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < 1)
        hax_die("%s: __metadata__.step: expected an integer >= 1, found '%s'", b->path, s);
    return v;
}

static int parse_precision(const char *where, const char *s) {
    if (strcmp(s, "bf16-pure") == 0) return 1;
    if (strcmp(s, "fp32") == 0 || strcmp(s, "bf16") == 0) return 0;
    hax_die("%s: expected fp32, bf16 or bf16-pure, found '%s'", where, s);
}

// The optimizer settings of B's last step: its config (train.lr, warm-up,
// betas, eps, weight decay, precision) and step, unless given.
static pd_opt opt_of(const st_file *b, const pd_args *args) {
    pd_opt o;
    memset(&o, 0, sizeof o);
    o.beta1 = 0.9, o.beta2 = 0.999, o.eps = 1e-8, o.wd = 0.01, o.peak_lr = -1;
    int nm = 0, nv = 0;
    for (int i = 0; i < b->n_tensors; i++) {
        nm += has_prefix(b->tensors[i].name, "adamw.m.");
        nv += has_prefix(b->tensors[i].name, "adamw.v.");
    }
    if (nm == 0 && nv == 0) return o;
    o.have = 1;
    const char *text = st_meta(b, "config");
    hax_config *c = NULL;
    if (text) {
        c = xmalloc(sizeof *c);
        char err[1024];
        if (config_load_text(c, b->path, text, strlen(text), NULL, 0, err, sizeof err))
            hax_die("%s: __metadata__.config: expected a valid config, found: %s", b->path, err);
        o.beta1 = c->train.beta1, o.beta2 = c->train.beta2, o.eps = c->train.eps, o.wd = c->train.weight_decay;
        o.peak_lr = c->train.lr, o.warmup = c->train.warmup;
        o.bf16_pure = c->train.precision == PREC_BF16_PURE;
    } else if (args->lr < 0) {
        hax_die("%s: __metadata__.config: expected the run's config (train.lr), found none; give --lr", b->path);
    }
    const char *prec = st_meta(b, "precision");
    if (args->precision) o.bf16_pure = parse_precision("--precision", args->precision);
    else if (!c && prec) o.bf16_pure = parse_precision("__metadata__.precision", prec);
    else if (!c) hax_die("%s: __metadata__.precision: expected fp32, bf16 or bf16-pure (or --precision), found none",
                         b->path);
    o.step = args->step > 0 ? args->step : meta_step(b);
    o.lr = args->lr >= 0 ? args->lr : adamw_schedule_lr(o.peak_lr, o.step, o.warmup);
    o.k = adamw_scalars_of(o.lr, o.beta1, o.beta2, o.eps, o.wd, o.step);
    free(c);
    return o;
}

// The update §8.5 adds to the decayed weight, from the moments after the step.
static float update_of(const pd_opt *o, float m, float v) {
    return o->bf16_pure ? adamw_bf16_step_term(&o->k, m, v) : adamw_step_term(&o->k, m, v);
}

// Half a bf16 ulp of p (bf16: 8 significant bits, fp32's exponents; the
// smallest subnormal step 2^-133).
static double half_ulp_bf16(float p) {
    int e;
    frexpf(p, &e);  // p = f * 2^e, f in [0.5, 1)
    int u = e - 8;
    if (p == 0.0f || u < -133) u = -133;
    return ldexp(1.0, u - 1);
}

// ---------------------------------------------------------------- statistics

typedef struct {
    char name[160];
    size_t n, same, vanish;
    float *abs_a, *abs_b, *ratio, *step;  // for the medians [n]: |A|, |B|, |u| / half ulp, |u| / lr
    // both files' moments (two checkpoints): elements of m, of v unchanged, v smaller in B, v larger
    size_t m_same, v_same, v_down, v_up;
} pd_stat;

static int cmp_float(const void *p, const void *q) {
    float a = *(const float *)p, b = *(const float *)q;
    return (a > b) - (a < b);
}

// The median of x[0..n) (sorts x).
static float median(float *x, size_t n) {
    if (n == 0) return NAN;
    qsort(x, n, sizeof *x, cmp_float);
    return n % 2 ? x[n / 2] : 0.5f * (x[n / 2 - 1] + x[n / 2]);
}

static void stat_grow(pd_stat *s, size_t extra, int with_ratio) {
    s->abs_a = xrealloc(s->abs_a, (s->n + extra) * sizeof(float));
    s->abs_b = xrealloc(s->abs_b, (s->n + extra) * sizeof(float));
    if (!with_ratio) return;
    s->ratio = xrealloc(s->ratio, (s->n + extra) * sizeof(float));
    s->step = xrealloc(s->step, (s->n + extra) * sizeof(float));
}

// Adds the moments of one tensor in A (ma, va) and in B (mb, vb).
static void stat_add_moments(pd_stat *s, const float *ma, const float *va, const float *mb, const float *vb,
                             size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t x, y;
        memcpy(&x, &ma[i], 4), memcpy(&y, &mb[i], 4);
        s->m_same += x == y;
        memcpy(&x, &va[i], 4), memcpy(&y, &vb[i], 4);
        s->v_same += x == y;
        s->v_down += vb[i] < va[i];
        s->v_up += vb[i] > va[i];
    }
}

// Adds one tensor's elements (a, b: the two files' values; m, v: B's moments or NULL).
static void stat_add(pd_stat *s, const pd_opt *o, const float *a, const float *b, const float *m, const float *v,
                     size_t n) {
    stat_grow(s, n, m != NULL);
    for (size_t i = 0; i < n; i++) {
        uint32_t ua, ub;
        memcpy(&ua, &a[i], 4);
        memcpy(&ub, &b[i], 4);
        s->same += ua == ub;
        s->abs_a[s->n + i] = fabsf(a[i]);
        s->abs_b[s->n + i] = fabsf(b[i]);
        if (!m) continue;
        float u = update_of(o, m[i], v[i]);
        float p = hax_bf16_round(b[i]);
        float moved = hax_bf16_round(hax_bf16_round(p * o->k.decay) + u);
        s->vanish += moved == p;
        s->ratio[s->n + i] = (float)(fabsf(u) / half_ulp_bf16(p));
        // Adam's step in units of lr: 1 for a steady gradient, small where v
        // remembers larger gradients than m holds now
        s->step[s->n + i] = o->lr > 0 ? (float)(fabsf(u) / o->lr) : NAN;
    }
    s->n += n;
}

static void pct(char *buf, size_t n, size_t k, size_t total) {
    snprintf(buf, n, "%.2f%%", total ? 100.0 * (double)k / (double)total : 0.0);
}

static void stat_print(pd_stat *s, int width, int with_update) {
    char same[32], van[32] = "-", ratio[32] = "-", step[32] = "-";
    pct(same, sizeof same, s->same, s->n);
    float ma = median(s->abs_a, s->n), mb = median(s->abs_b, s->n);
    if (with_update && s->ratio) {
        pct(van, sizeof van, s->vanish, s->n);
        snprintf(ratio, sizeof ratio, "%.3g", median(s->ratio, s->n));
        snprintf(step, sizeof step, "%.3g", median(s->step, s->n));
    }
    printf("%-*s %9zu %9s %11.4g %11.4g %8s %9s %8s\n", width, s->name, s->n, same, ma, mb, van, ratio, step);
}

// The moments line of a family: how AdamW's state itself moved from A to B.
static void stat_print_moments(const pd_stat *s, int width) {
    char m[32], v[32], down[32], up[32];
    pct(m, sizeof m, s->m_same, s->n);
    pct(v, sizeof v, s->v_same, s->n);
    pct(down, sizeof down, s->v_down, s->n);
    pct(up, sizeof up, s->v_up, s->n);
    printf("%-*s %9zu %9s %9s %9s %9s\n", width, s->name, s->n, m, v, down, up);
}

static void stat_free(pd_stat *s) {
    free(s->abs_a);
    free(s->abs_b);
    free(s->ratio);
    free(s->step);
}

// "layers.12.mixer.D" -> "layers.*.mixer.D"
static void family_of(const char *name, char *out, size_t n) {
    size_t j = 0;
    for (const char *p = name; *p && j + 2 < n;) {
        int at_start = p == name || p[-1] == '.';
        size_t d = strspn(p, "0123456789");
        if (at_start && d > 0 && (p[d] == '.' || p[d] == 0)) {
            out[j++] = '*';
            p += d;
        } else out[j++] = *p++;
    }
    out[j] = 0;
}

static void print_header(int width) {
    printf("%-*s %9s %9s %11s %11s %8s %9s %8s\n", width, "tensor", "elements", "identical", "median|A|", "median|B|",
           "vanish", "|u|/hulp", "|u|/lr");
}

// ---------------------------------------------------------------- main

static float *values_of(const st_tensor *t) {
    float *x = xmalloc((st_numel(t) ? st_numel(t) : 1) * sizeof(float));
    st_tensor_to_f32(t, x);
    return x;
}

// B's moment tensor of parameter `name` with its shape, or death.
static const st_tensor *moment_of(const st_file *b, const char *prefix, const st_tensor *p) {
    char name[200];
    snprintf(name, sizeof name, "%s%s", prefix, p->name);
    const st_tensor *t = st_find(b, name);
    char sp[128], st[128];
    st_format_shape(sp, sizeof sp, p->ndim, p->shape);
    if (!t) hax_die("%s: tensor %s: expected it (the AdamW moment of %s, shape %s), found none", b->path, name,
                    p->name, sp);
    check_float(b, t);
    st_format_shape(st, sizeof st, t->ndim, t->shape);
    if (!same_shape(t, p)) hax_die("%s: tensor %s: expected shape %s, found %s", b->path, name, sp, st);
    return t;
}

int main(int argc, char **argv) {
    pd_args args = parse_args(argc, argv);
    char err[1024];
    st_file *fa = st_load(args.a, err, sizeof err);
    if (!fa) hax_die("%s", err);
    st_file *fb = st_load(args.b, err, sizeof err);
    if (!fb) hax_die("%s", err);
    int n_params = match_params(fa, fb);
    pd_opt o = opt_of(fb, &args);
    int a_moments = 0;  // A holds moments too (two checkpoints): the moments table
    for (int i = 0; i < fa->n_tensors; i++) a_moments |= has_prefix(fa->tensors[i].name, "adamw.v.");

    printf("hax-pdiff: A = %s, B = %s: %d parameter tensors\n", fa->path, fb->path, n_params);
    if (o.have)
        printf("hax-pdiff: update from B's AdamW moments: step %lld, lr %.6g%s, betas %g %g, eps %g, weight decay %g, "
               "%s lines (MODEL.md 8.5)\n",
               (long long)o.step, o.lr, args.lr >= 0 ? " (--lr)" : " (train.lr through the warm-up)", o.beta1, o.beta2,
               o.eps, o.wd, o.bf16_pure ? "bf16-pure" : "fp32");
    else printf("hax-pdiff: B holds no AdamW moments: no update columns\n");

    pd_stat *tens = xcalloc((size_t)n_params, sizeof *tens), *fam = xcalloc((size_t)n_params, sizeof *fam);
    pd_stat all;
    memset(&all, 0, sizeof all);
    snprintf(all.name, sizeof all.name, "all parameters");
    int nt = 0, nf = 0, width = 16;
    for (int i = 0; i < fa->n_tensors; i++) {
        const st_tensor *x = &fa->tensors[i];
        if (!is_param(x->name)) continue;
        const st_tensor *y = st_find(fb, x->name);
        size_t n = st_numel(x);
        float *a = values_of(x), *b = values_of(y), *m = NULL, *v = NULL;
        if (o.have) m = values_of(moment_of(fb, "adamw.m.", y)), v = values_of(moment_of(fb, "adamw.v.", y));
        float *ma = NULL, *va = NULL;
        if (o.have && a_moments) ma = values_of(moment_of(fa, "adamw.m.", x)), va = values_of(moment_of(fa, "adamw.v.", x));
        char family[160];
        family_of(x->name, family, sizeof family);
        int f = 0;
        while (f < nf && strcmp(fam[f].name, family) != 0) f++;
        if (f == nf) snprintf(fam[nf++].name, sizeof fam[0].name, "%s", family);
        pd_stat *t = &tens[nt++];
        snprintf(t->name, sizeof t->name, "%s", x->name);
        stat_add(t, &o, a, b, m, v, n);
        stat_add(&fam[f], &o, a, b, m, v, n);
        stat_add(&all, &o, a, b, m, v, n);
        if (ma) {
            stat_add_moments(t, ma, va, m, v, n);
            stat_add_moments(&fam[f], ma, va, m, v, n);
            stat_add_moments(&all, ma, va, m, v, n);
        }
        int len = (int)strlen(x->name);
        if (len > width) width = len;
        free(a), free(b), free(m), free(v), free(ma), free(va);
    }
    if (!args.families_only) {
        print_header(width);
        for (int i = 0; i < nt; i++) stat_print(&tens[i], width, o.have);
        printf("\n");
    }
    print_header(width);
    for (int i = 0; i < nf; i++) stat_print(&fam[i], width, o.have);
    stat_print(&all, width, o.have);
    if (o.have && a_moments) {
        printf("\nAdamW moments, A -> B (fraction of elements)\n%-*s %9s %9s %9s %9s %9s\n", width, "tensor",
               "elements", "m same", "v same", "v down", "v up");
        for (int i = 0; !args.families_only && i < nt; i++) stat_print_moments(&tens[i], width);
        for (int i = 0; i < nf; i++) stat_print_moments(&fam[i], width);
        stat_print_moments(&all, width);
    }
    for (int i = 0; i < nt; i++) stat_free(&tens[i]);
    for (int i = 0; i < nf; i++) stat_free(&fam[i]);
    stat_free(&all);
    free(tens), free(fam);
    st_close(fa);
    st_close(fb);
    return 0;
}
