// test_ops_samba.c: Samba's sliding-window attention with RoPE (src/ops/attn.h)
// and GatedMLP (src/ops/mlp.h): forward against naive double-precision
// versions written here (full score matrix with an explicit window mask),
// backward against central finite differences of those, packed batch against
// one sequence at a time, 1 thread against 2 (bit-identical).
#include <omp.h>

#include "src/core/common.h"
#include "src/ops/attn.h"
#include "src/ops/mlp.h"
#include "test.h"
#include "test_ops_fd.h"

// Sequences shorter than the window (1, 3), equal to it (5) and longer (12, 40).
static const int LENS[] = {1, 3, 5, 12, 40};
#define NSEQ 5
enum { D = 8, HEADS = 2, HD = D / HEADS, WIN = 5, M = 16 };

// OpenMP's threads only: BLAS stays on the one thread src/ops/linear.c sets at
// load, as in every program (hax_sgemm splits the work itself).
static void set_threads(int n) { omp_set_num_threads(n); }

typedef struct {
    hax_model_config cfg;
    int seq_off[NSEQ + 1], n;
    float *a, *R;           // input [n, D] and loss weights [n, D]
    float *wbuf, *gbuf;     // 4 attention weights (or 3 MLP weights), and their gradients
    float *out, *da;
} case_t;

static void case_init(case_t *c, size_t n_weights, unsigned seed) {
    memset(c, 0, sizeof *c);
    c->cfg.arch = ARCH_SAMBA;
    c->cfg.hidden_size = D;
    c->cfg.attn_heads = c->cfg.attn_kv_heads = HEADS;
    c->cfg.window_size = WIN;
    c->cfg.rope_theta = 10000.0f;
    c->cfg.mlp_hidden = M;
    c->seq_off[0] = 0;
    for (int s = 0; s < NSEQ; s++) c->seq_off[s + 1] = c->seq_off[s] + LENS[s];
    c->n = c->seq_off[NSEQ];
    size_t nd = (size_t)c->n * D;
    c->a = xmalloc(nd * sizeof(float));
    c->R = xmalloc(nd * sizeof(float));
    c->out = xmalloc(nd * sizeof(float));
    c->da = xcalloc(nd, sizeof(float));
    c->wbuf = xmalloc(n_weights * sizeof(float));
    c->gbuf = xcalloc(n_weights, sizeof(float));
    test_fill(c->a, nd, seed, 1.0f);
    test_fill(c->R, nd, seed + 1, 1.0f);
    test_fill(c->wbuf, n_weights, seed + 2, 0.6f);
}

static void case_free(case_t *c) {
    free(c->a);
    free(c->R);
    free(c->out);
    free(c->da);
    free(c->wbuf);
    free(c->gbuf);
}

static double weighted_sum(const double *out, const float *R, int n) {
    double L = 0;
    for (int i = 0; i < n; i++) L += out[i] * R[i];
    return L;
}

// A naive double-precision version of the op under test: out [n, D].
typedef void (*naive_fn)(double *out, const case_t *c);

typedef struct {
    case_t *c;
    naive_fn naive;
} naive_ctx;

// The test loss sum(R . out) of the naive version.
static double naive_loss(void *ctx) {
    naive_ctx *x = ctx;
    double *out = xmalloc((size_t)x->c->n * D * sizeof(double));
    x->naive(out, x->c);
    double L = weighted_sum(out, x->c->R, x->c->n * D);
    free(out);
    return L;
}

// The forward (c->out) against the naive version, and the gradients (c->da,
// then each of the n_w weight blocks of w_size floats) against central
// finite differences of its loss.
static void check_vs_naive(case_t *c, naive_fn naive, const char *const *names, int n_w, int w_size) {
    naive_ctx x = {c, naive};
    size_t nd = (size_t)c->n * D;
    double *ref = xmalloc(nd * sizeof(double));
    float *reff = xmalloc(nd * sizeof(float));
    naive(ref, c);
    for (size_t i = 0; i < nd; i++) reff[i] = (float)ref[i];
    double e = max_rel_err(c->out, reff, nd);
    CHECK(e < 1e-5, "forward vs naive double: max rel err %.3g", e);
    e = fd_exact(c->a, nd, c->da, naive_loss, &x, 1e-3f, 200, 1e-4);
    CHECK(e < 1e-3, "d a: worst FD rel err %.3g", e);
    for (int i = 0; i < n_w; i++) {
        e = fd_exact(c->wbuf + i * w_size, w_size, c->gbuf + i * w_size, naive_loss, &x, 1e-3f, 64, 1e-4);
        CHECK(e < 1e-3, "d %s: worst FD rel err %.3g", names[i], e);
    }
    free(ref);
    free(reff);
}

// ---------------------------------------------------------------------------
// Attention

// MODEL.md §4.3 in double, over the full [len, len] score matrix per sequence.
static void attn_naive(double *out, const case_t *c) {
    const float *Wq = c->wbuf, *Wk = Wq + D * D, *Wv = Wk + D * D, *Wo = Wv + D * D;
    int n = c->n;
    double *q = xmalloc((size_t)n * D * sizeof(double)), *k = xmalloc((size_t)n * D * sizeof(double));
    double *v = xmalloc((size_t)n * D * sizeof(double)), *o = xmalloc((size_t)n * D * sizeof(double));
    for (int t = 0; t < n; t++)
        for (int j = 0; j < D; j++) {
            double aq = 0, ak = 0, av = 0;
            for (int i = 0; i < D; i++) {
                double x = c->a[t * D + i];
                aq += x * Wq[j * D + i];
                ak += x * Wk[j * D + i];
                av += x * Wv[j * D + i];
            }
            q[t * D + j] = aq;
            k[t * D + j] = ak;
            v[t * D + j] = av;
        }
    for (int s = 0; s < NSEQ; s++)
        for (int t = c->seq_off[s]; t < c->seq_off[s + 1]; t++) {
            // The angle in float, as the reference computes its cos/sin table.
            float pos = (float)(t - c->seq_off[s]);
            for (int h = 0; h < HEADS; h++)
                for (int i = 0; i < HD / 2; i++) {
                    float f = 1.0f / powf(10000.0f, (float)(2 * i) / (float)HD);
                    double cs = cos((double)(pos * f)), sn = sin((double)(pos * f));
                    for (double *x = q; x; x = (x == q ? k : NULL)) {
                        double *xh = x + t * D + h * HD, x1 = xh[i], x2 = xh[i + HD / 2];
                        xh[i] = x1 * cs - x2 * sn;
                        xh[i + HD / 2] = x2 * cs + x1 * sn;
                    }
                }
        }
    for (int s = 0; s < NSEQ; s++) {
        int t0 = c->seq_off[s], t1 = c->seq_off[s + 1];
        for (int h = 0; h < HEADS; h++)
            for (int t = t0; t < t1; t++) {
                double sc[64], m = -INFINITY, sum = 0;
                for (int j = t0; j < t1; j++) {
                    int allowed = j <= t && t - j <= WIN - 1;
                    double dot = 0;
                    for (int i = 0; i < HD; i++) dot += q[t * D + h * HD + i] * k[j * D + h * HD + i];
                    sc[j - t0] = allowed ? dot / sqrt((double)HD) : -INFINITY;
                    if (sc[j - t0] > m) m = sc[j - t0];
                }
                for (int j = t0; j < t1; j++) sum += (sc[j - t0] = exp(sc[j - t0] - m));
                for (int i = 0; i < HD; i++) {
                    double acc = 0;
                    for (int j = t0; j < t1; j++) acc += sc[j - t0] * v[j * D + h * HD + i];
                    o[t * D + h * HD + i] = acc / sum;
                }
            }
    }
    for (int t = 0; t < n; t++)
        for (int j = 0; j < D; j++) {
            double acc = 0;
            for (int i = 0; i < D; i++) acc += o[t * D + i] * Wo[j * D + i];
            out[t * D + j] = acc;
        }
    free(q);
    free(k);
    free(v);
    free(o);
}

static attn_params attn_w(const case_t *c) {
    return (attn_params){c->wbuf, c->wbuf + D * D, c->wbuf + 2 * D * D, c->wbuf + 3 * D * D};
}

static attn_grads attn_g(case_t *c) {
    return (attn_grads){c->gbuf, c->gbuf + D * D, c->gbuf + 2 * D * D, c->gbuf + 3 * D * D};
}

// Forward and backward (dout = R) of sequences [s0, s1), written at their rows.
static void attn_run(case_t *c, int s0, int s1) {
    int off[NSEQ + 1], ns = s1 - s0, r0 = c->seq_off[s0];
    for (int s = 0; s <= ns; s++) off[s] = c->seq_off[s0 + s] - r0;
    int n = off[ns];
    float *acts_buf = xmalloc(attn_acts_floats(&c->cfg, n) * sizeof(float));
    float *scratch = xmalloc(attn_bwd_floats(&c->cfg, n) * sizeof(float));
    attn_acts acts;
    attn_acts_assign(&acts, acts_buf, &c->cfg, n);
    attn_params w = attn_w(c);
    attn_grads g = attn_g(c);
    attn_forward(c->out + (size_t)r0 * D, D, &acts, c->a + (size_t)r0 * D, D, &w, &c->cfg, off, ns);
    attn_backward(c->da + (size_t)r0 * D, D, &g, scratch, c->R + (size_t)r0 * D, D,
                  c->a + (size_t)r0 * D, D, &acts, &w, &c->cfg, off, ns);
    free(acts_buf);
    free(scratch);
}

static void test_attn_forward_and_fd(void) {
    case_t c;
    case_init(&c, 4 * D * D, 1);
    attn_run(&c, 0, NSEQ);
    static const char *const names[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    check_vs_naive(&c, attn_naive, names, 4, D * D);
    case_free(&c);
}

static void test_rope_inverse(void) {
    int off[3] = {0, 7, 40};
    float x[40 * D], y[40 * D];
    test_fill(x, 40 * D, 5, 1.0f);
    memcpy(y, x, sizeof x);
    rope_apply(y, D, off, 2, HEADS, HD, 10000.0f, 0, 0);
    CHECK(rel_err(y, x, 40 * D) > 1e-2, "the rotation changed nothing");
    CHECK(!memcmp(y, x, D * sizeof(float)) && !memcmp(y + 7 * D, x + 7 * D, D * sizeof(float)),
          "position 0 of each sequence must be unrotated");
    rope_apply(y, D, off, 2, HEADS, HD, 10000.0f, 1, 0);
    double e = rel_err(y, x, 40 * D);
    CHECK(e < 1e-6, "inverse rotation: rel err %.3g", e);
}

static void test_attn_packed_and_threads(void) {
    case_t c, one, two;
    case_init(&c, 4 * D * D, 2);
    case_init(&one, 4 * D * D, 2);
    case_init(&two, 4 * D * D, 2);
    set_threads(1);
    attn_run(&c, 0, NSEQ);
    for (int s = 0; s < NSEQ; s++) attn_run(&one, s, s + 1);
    set_threads(2);
    attn_run(&two, 0, NSEQ);
    size_t nd = (size_t)c.n * D;
    CHECK(!memcmp(c.out, two.out, nd * sizeof(float)) && !memcmp(c.da, two.da, nd * sizeof(float)) &&
              !memcmp(c.gbuf, two.gbuf, 4 * D * D * sizeof(float)),
          "1 thread differs from 2 threads");
    double e1 = rel_err(one.out, c.out, nd), e2 = rel_err(one.da, c.da, nd);
    double e3 = rel_err(one.gbuf, c.gbuf, 4 * D * D);
    CHECK(e1 < 1e-6 && e2 < 1e-6 && e3 < 1e-5, "packed vs one at a time: out %.3g, da %.3g, grads %.3g",
          e1, e2, e3);
    case_free(&c);
    case_free(&one);
    case_free(&two);
}

// ---------------------------------------------------------------------------
// GatedMLP

static void mlp_naive(double *out, const case_t *c) {
    const float *Wg = c->wbuf, *Wu = Wg + M * D, *Wd = Wu + M * D;
    for (int t = 0; t < c->n; t++) {
        double s[M];
        for (int j = 0; j < M; j++) {
            double g = 0, u = 0;
            for (int i = 0; i < D; i++) {
                g += (double)c->a[t * D + i] * Wg[j * D + i];
                u += (double)c->a[t * D + i] * Wu[j * D + i];
            }
            s[j] = g / (1 + exp(-g)) * u;
        }
        for (int o = 0; o < D; o++) {
            double acc = 0;
            for (int j = 0; j < M; j++) acc += s[j] * Wd[o * M + j];
            out[t * D + o] = acc;
        }
    }
}

static void mlp_run(case_t *c) {
    float *acts_buf = xmalloc(mlp_acts_floats(c->n, M) * sizeof(float));
    float *scratch = xmalloc(mlp_bwd_floats(c->n, D, M) * sizeof(float));
    mlp_acts acts;
    mlp_acts_assign(&acts, acts_buf, c->n, M);
    mlp_params w = {c->wbuf, c->wbuf + M * D, c->wbuf + 2 * M * D};
    mlp_grads g = {c->gbuf, c->gbuf + M * D, c->gbuf + 2 * M * D};
    mlp_forward(c->out, D, &acts, c->a, D, &w, c->n, D, M, 0);
    mlp_backward(c->da, D, &g, scratch, c->R, D, c->a, D, &acts, &w, c->n, D, M, 0);
    free(acts_buf);
    free(scratch);
}

static void test_mlp(void) {
    case_t c, two;
    case_init(&c, 3 * M * D, 3);
    case_init(&two, 3 * M * D, 3);
    set_threads(1);
    mlp_run(&c);
    set_threads(2);
    mlp_run(&two);
    size_t nd = (size_t)c.n * D;
    CHECK(!memcmp(c.out, two.out, nd * sizeof(float)) && !memcmp(c.da, two.da, nd * sizeof(float)) &&
              !memcmp(c.gbuf, two.gbuf, 3 * M * D * sizeof(float)),
          "1 thread differs from 2 threads");
    static const char *const names[3] = {"gate_proj", "up_proj", "down_proj"};
    check_vs_naive(&c, mlp_naive, names, 3, M * D);
    case_free(&c);
    case_free(&two);
}

int main(void) {
    RUN(test_rope_inverse);
    RUN(test_attn_forward_and_fd);
    RUN(test_attn_packed_and_threads);
    RUN(test_mlp);
    return test_summary();
}
