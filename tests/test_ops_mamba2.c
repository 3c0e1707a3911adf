// test_ops_mamba2.c: the Mamba-2 SSD scan, gated RMSNorm and the mixer halves
// (src/ops/ssd.h, src/engine/mixer_mamba2.h): forward against naive double-precision
// versions written here, backward against central finite differences, packed
// batch against one sequence at a time, 1 thread against 2 (bit-identical).
#include <omp.h>
#include <stdint.h>

#include "src/core/common.h"
#include "src/engine/mixer_mamba2.h"
#include "src/ops/basic.h"
#include "src/ops/ssd.h"
#include "test.h"
#include "test_ops_fd.h"

// Ragged batch: length 1, shorter than the conv kernel, one chunk, several chunks.
static const int LENS[] = {1, 3, 20, 150};
#define NSEQ 4

static void make_offsets(int *seq_off, const int *lens, int n_seq) {
    seq_off[0] = 0;
    for (int s = 0; s < n_seq; s++) seq_off[s + 1] = seq_off[s] + lens[s];
}

// OpenMP's threads only: BLAS stays on the one thread src/ops/linear.c sets at
// load, as in every program (hax_sgemm splits the work itself).
static void set_threads(int n) { omp_set_num_threads(n); }

// ---------------------------------------------------------------------------
// SSD

enum { SH = 3, SP = 3, SN = 4, SE = SH * SP, SLD = SE + 2 * SN, SLDT = SH + 1 };

typedef struct {
    int seq_off[NSEQ + 1], n;
    float *xbc;  // [n, SLD]: x | B | C, as in the mixer
    float *dt;   // [n, SLDT] (last column unused)
    float dt_bias[SH], A_log[SH], D[SH];
    float *R;    // [n, SE] loss weights: L = Σ R ⊙ y
} ssd_case;

static void ssd_case_init(ssd_case *c, unsigned seed) {
    make_offsets(c->seq_off, LENS, NSEQ);
    c->n = c->seq_off[NSEQ];
    c->xbc = xmalloc((size_t)c->n * SLD * sizeof(float));
    c->dt = xmalloc((size_t)c->n * SLDT * sizeof(float));
    c->R = xmalloc((size_t)c->n * SE * sizeof(float));
    test_fill(c->xbc, (size_t)c->n * SLD, seed, 1.0f);
    test_fill(c->dt, (size_t)c->n * SLDT, seed + 1, 1.5f);
    test_fill(c->R, (size_t)c->n * SE, seed + 2, 1.0f);
    float r[3 * SH];
    test_fill(r, 3 * SH, seed + 3, 1.0f);
    for (int h = 0; h < SH; h++) {
        c->dt_bias[h] = -1.5f + r[h];
        c->A_log[h] = 0.5f * r[SH + h];
        c->D[h] = r[2 * SH + h];
    }
    // dt + dt_bias above softplus's threshold of 20 (Δ = u there) at one position.
    c->dt[(size_t)(c->n - 3) * SLDT + 1] = 22.0f;
}

static void ssd_case_free(ssd_case *c) {
    free(c->xbc);
    free(c->dt);
    free(c->R);
}

// The recurrence of MODEL.md §3.2 step 6, in double.
static void ssd_naive(double *y, const ssd_case *c) {
    for (int s = 0; s < NSEQ; s++)
        for (int h = 0; h < SH; h++) {
            double S[SP][SN] = {{0}};
            double A = -exp((double)c->A_log[h]);
            for (int t = c->seq_off[s]; t < c->seq_off[s + 1]; t++) {
                double u = (double)c->dt[t * SLDT + h] + c->dt_bias[h];
                double dl = u > 20 ? u : log1p(exp(u)), a = exp(dl * A);
                const float *x = c->xbc + t * SLD + h * SP, *B = c->xbc + t * SLD + SE,
                            *C = B + SN;
                for (int p = 0; p < SP; p++) {
                    double acc = 0;
                    for (int n = 0; n < SN; n++) {
                        S[p][n] = a * S[p][n] + dl * x[p] * B[n];
                        acc += C[n] * S[p][n];
                    }
                    y[t * SE + h * SP + p] = acc + (double)c->D[h] * x[p];
                }
            }
        }
}

static double ssd_naive_loss(void *ctx) {
    ssd_case *c = ctx;
    double *y = xmalloc((size_t)c->n * SE * sizeof(double)), L = 0;
    ssd_naive(y, c);
    for (int i = 0; i < c->n * SE; i++) L += y[i] * c->R[i];
    free(y);
    return L;
}

typedef struct {
    float *y, *delta, *ckpt, *dxbc, *ddt;
    float ddt_bias[SH], dA_log[SH], dD[SH];
} ssd_out;

// Forward and backward (dy = R) of the sequences [s0, s1) of case c, written
// at their rows of o (whose buffers cover the whole batch).
static void ssd_run(ssd_out *o, const ssd_case *c, int s0, int s1) {
    int off[NSEQ + 1], ns = s1 - s0, r0 = c->seq_off[s0];
    for (int s = 0; s <= ns; s++) off[s] = c->seq_off[s0 + s] - r0;
    size_t nck = ssd_ckpt_floats(off, ns, SH, SP, SN);
    float *ck = xmalloc((nck + 1) * sizeof(float));
    const float *x = c->xbc + (size_t)r0 * SLD, *dt = c->dt + (size_t)r0 * SLDT;
    ssd_forward(o->y + (size_t)r0 * SE, SE, o->delta + (size_t)r0 * SH, ck, x, SLD, dt, SLDT,
                x + SE, x + SE + SN, SLD, c->dt_bias, c->A_log, c->D, off, ns, SH, SP, SN);
    float *dx = o->dxbc + (size_t)r0 * SLD;
    ssd_backward(dx, SLD, o->ddt + (size_t)r0 * SLDT, SLDT, dx + SE, dx + SE + SN, SLD,
                 o->ddt_bias, o->dA_log, o->dD, c->R + (size_t)r0 * SE, SE,
                 o->delta + (size_t)r0 * SH, ck, x, SLD, dt, SLDT, x + SE, x + SE + SN, SLD,
                 c->dt_bias, c->A_log, c->D, off, ns, SH, SP, SN);
    free(ck);
}

static void ssd_out_init(ssd_out *o, int n) {
    memset(o, 0, sizeof *o);
    o->y = xcalloc((size_t)n * SE, sizeof(float));
    o->delta = xcalloc((size_t)n * SH, sizeof(float));
    o->dxbc = xcalloc((size_t)n * SLD, sizeof(float));
    o->ddt = xcalloc((size_t)n * SLDT, sizeof(float));
}

static void ssd_out_free(ssd_out *o) {
    free(o->y);
    free(o->delta);
    free(o->dxbc);
    free(o->ddt);
}

static int ssd_out_equal(const ssd_out *a, const ssd_out *b, int n) {
    return !memcmp(a->y, b->y, (size_t)n * SE * sizeof(float)) &&
           !memcmp(a->dxbc, b->dxbc, (size_t)n * SLD * sizeof(float)) &&
           !memcmp(a->ddt, b->ddt, (size_t)n * SLDT * sizeof(float)) &&
           !memcmp(a->ddt_bias, b->ddt_bias, sizeof a->ddt_bias) &&
           !memcmp(a->dA_log, b->dA_log, sizeof a->dA_log) && !memcmp(a->dD, b->dD, sizeof a->dD);
}

static void test_ssd_forward_vs_naive(void) {
    ssd_case c;
    ssd_case_init(&c, 11);
    ssd_out o;
    ssd_out_init(&o, c.n);
    ssd_run(&o, &c, 0, NSEQ);
    double *y = xmalloc((size_t)c.n * SE * sizeof(double));
    ssd_naive(y, &c);
    float *yf = xmalloc((size_t)c.n * SE * sizeof(float));
    for (int i = 0; i < c.n * SE; i++) yf[i] = (float)y[i];
    double e = max_rel_err(o.y, yf, (size_t)c.n * SE);
    CHECK(e < 2e-6, "SSD forward vs naive double: max rel err %.3g", e);
    free(y);
    free(yf);
    ssd_out_free(&o);
    ssd_case_free(&c);
}

static void test_ssd_backward_fd(void) {
    ssd_case c;
    ssd_case_init(&c, 12);
    ssd_out o;
    ssd_out_init(&o, c.n);
    ssd_run(&o, &c, 0, NSEQ);
    const float h = 2e-3f, tol = 2e-3;
    double e;
    e = fd_exact(c.xbc, (size_t)c.n * SLD, o.dxbc, ssd_naive_loss, &c, h, 400, 1e-4);
    CHECK(e < tol, "d(x|B|C): worst FD rel err %.3g", e);
    e = fd_exact(c.dt, (size_t)c.n * SLDT, o.ddt, ssd_naive_loss, &c, h, 200, 1e-4);
    CHECK(e < tol, "d dt: worst FD rel err %.3g", e);
    e = fd_exact(c.dt_bias, SH, o.ddt_bias, ssd_naive_loss, &c, h, SH, 1e-4);
    CHECK(e < tol, "d dt_bias: worst FD rel err %.3g", e);
    e = fd_exact(c.A_log, SH, o.dA_log, ssd_naive_loss, &c, h, SH, 1e-4);
    CHECK(e < tol, "d A_log: worst FD rel err %.3g", e);
    e = fd_exact(c.D, SH, o.dD, ssd_naive_loss, &c, h, SH, 1e-4);
    CHECK(e < tol, "d D: worst FD rel err %.3g", e);
    ssd_out_free(&o);
    ssd_case_free(&c);
}

static void test_ssd_packed_vs_single_and_threads(void) {
    ssd_case c;
    ssd_case_init(&c, 13);
    ssd_out packed, single, two;
    ssd_out_init(&packed, c.n);
    ssd_out_init(&single, c.n);
    ssd_out_init(&two, c.n);
    set_threads(1);
    ssd_run(&packed, &c, 0, NSEQ);
    // One sequence on 2 threads: the backward splits the heads (its other path).
    set_threads(2);
    for (int s = 0; s < NSEQ; s++) ssd_run(&single, &c, s, s + 1);
    ssd_run(&two, &c, 0, NSEQ);
    CHECK(ssd_out_equal(&packed, &single, c.n), "packed batch differs from one sequence at a time");
    CHECK(ssd_out_equal(&packed, &two, c.n), "1 thread differs from 2 threads");
    ssd_out_free(&packed);
    ssd_out_free(&single);
    ssd_out_free(&two);
    ssd_case_free(&c);
}

// The state checkpoints cover n·E·N / SSD_CHUNK floats, not n·E·N.
static void test_ssd_ckpt_size(void) {
    int off[3] = {0, 64, 64 + 65};
    CHECK(ssd_ckpt_floats(off, 2, 2, 3, 4) == 3 * 24, "checkpoints of lengths 64, 65: %zu floats",
          ssd_ckpt_floats(off, 2, 2, 3, 4));
}

// ---------------------------------------------------------------------------
// Gated RMSNorm

enum { GN = 37, GE = 12, GLD = 2 * GE + 3 };

typedef struct {
    float *yz;  // [GN, GLD]: y = columns 0..GE-1, z = columns GE+3..
    float w[GE], R[GN * GE];
} gn_case;

static double gn_naive_loss(void *ctx) {
    gn_case *c = ctx;
    double L = 0;
    for (int t = 0; t < GN; t++) {
        const float *y = c->yz + t * GLD, *z = y + GE + 3;
        double v[GE], ss = 0;
        for (int i = 0; i < GE; i++) {
            v[i] = (double)y[i] * z[i] / (1 + exp(-(double)z[i]));
            ss += v[i] * v[i];
        }
        double r = 1 / sqrt(ss / GE + 1e-5);
        for (int i = 0; i < GE; i++) L += v[i] * r * c->w[i] * c->R[t * GE + i];
    }
    return L;
}

static void gn_run(float *out, float *dyz, float *dw, gn_case *c) {
    float rstd[GN];
    gated_norm_forward(out, GE, rstd, c->yz, GLD, c->yz + GE + 3, GLD, c->w, GN, GE, 1e-5f);
    gated_norm_backward(dyz, GLD, dyz + GE + 3, GLD, dw, c->R, GE, rstd, c->yz, GLD, c->yz + GE + 3,
                        GLD, c->w, GN, GE);
}

static void test_gated_norm(void) {
    gn_case c;
    c.yz = xmalloc(GN * GLD * sizeof(float));
    test_fill(c.yz, GN * GLD, 21, 2.0f);
    test_fill(c.w, GE, 22, 0.5f);
    for (int i = 0; i < GE; i++) c.w[i] += 1.0f;
    test_fill(c.R, GN * GE, 23, 1.0f);
    float out[GN * GE], dw[GE] = {0}, out2[GN * GE], dw2[GE] = {0};
    float *dyz = xcalloc(GN * GLD, sizeof(float)), *dyz2 = xcalloc(GN * GLD, sizeof(float));
    set_threads(1);
    gn_run(out, dyz, dw, &c);
    set_threads(2);
    gn_run(out2, dyz2, dw2, &c);
    CHECK(!memcmp(out, out2, sizeof out) && !memcmp(dw, dw2, sizeof dw) &&
              !memcmp(dyz, dyz2, GN * GLD * sizeof(float)),
          "1 thread differs from 2 threads");
    // Forward: the loss from the op's output equals the naive double loss.
    double L = 0;
    for (int i = 0; i < GN * GE; i++) L += (double)out[i] * c.R[i];
    double Ln = gn_naive_loss(&c);
    CHECK(fabs(L - Ln) <= 1e-5 * fabs(Ln) + 1e-6, "forward: %.9g vs naive %.9g", L, Ln);
    double e = fd_exact(c.yz, GN * GLD, dyz, gn_naive_loss, &c, 2e-3f, 300, 1e-4);
    CHECK(e < 2e-3, "d(y|z): worst FD rel err %.3g", e);
    e = fd_exact(c.w, GE, dw, gn_naive_loss, &c, 2e-3f, GE, 1e-4);
    CHECK(e < 2e-3, "d w: worst FD rel err %.3g", e);
    free(c.yz);
    free(dyz);
    free(dyz2);
}

// ---------------------------------------------------------------------------
// The mixer halves (pre + post), as the model chains them

enum { MODE_PLAIN = 0, MODE_ATTN_INPUT = 1, MODE_ATTN_OF_X = 2 };

typedef struct {
    hax_model_config cfg;
    int seq_off[NSEQ + 1], n, mode, d, E, cd, W;
    float *par, *grad;  // flat parameter / gradient buffers
    size_t n_par;
    mamba2_params w;
    mamba2_grads g;
    float *a, *da, *attn, *dattn, *R, *out;
    float *acts_buf, *bwd_buf;
    mamba2_acts acts;
    mamba2_bwd bwd;
} mx_case;

static void mx_init(mx_case *c, int mode, unsigned seed) {
    memset(c, 0, sizeof *c);
    hax_model_config *cfg = &c->cfg;
    cfg->arch = ARCH_MAMBA2;
    cfg->hidden_size = c->d = 8;
    cfg->intermediate_size = c->E = 8;
    cfg->n_heads = 2;
    cfg->head_dim = 4;
    cfg->state_size = 4;
    cfg->conv_kernel = 4;
    cfg->norm_eps = 1e-5f;
    c->mode = mode;
    make_offsets(c->seq_off, LENS, NSEQ);
    c->n = c->seq_off[NSEQ];
    c->cd = mamba2_conv_dim(cfg);
    c->W = mamba2_proj_dim(cfg);
    int H = cfg->n_heads, K = cfg->conv_kernel, d = c->d, E = c->E, cd = c->cd, W = c->W;
    size_t sizes[9] = {H, H, H, (size_t)cd * K, cd, (size_t)W * d, E, (size_t)d * E, E};
    for (int i = 0; i < 9; i++) c->n_par += sizes[i];
    c->par = xmalloc(c->n_par * sizeof(float));
    c->grad = xcalloc(c->n_par, sizeof(float));
    float *p = c->par, *q = c->grad;
    float *pp[9], *qq[9];
    for (int i = 0; i < 9; i++) {
        pp[i] = p;
        qq[i] = q;
        p += sizes[i];
        q += sizes[i];
    }
    test_fill(c->par, c->n_par, seed, 0.4f);
    for (int h = 0; h < H; h++) {
        pp[0][h] -= 1.5f;  // dt_bias: Δ around softplus(-1.5)
        pp[1][h] += 0.5f;  // A_log
        pp[2][h] += 1.0f;  // D
    }
    for (int i = 0; i < E; i++) {
        pp[6][i] += 1.0f;  // norm.weight
        pp[8][i] += 1.0f;  // E
    }
    c->w = (mamba2_params){pp[0], pp[1], pp[2], pp[3], pp[4], pp[5], pp[6], pp[7],
                           mode == MODE_PLAIN ? NULL : pp[8]};
    c->g = (mamba2_grads){qq[0], qq[1], qq[2], qq[3], qq[4], qq[5], qq[6], qq[7],
                          mode == MODE_PLAIN ? NULL : qq[8]};
    size_t n = (size_t)c->n;
    c->a = xmalloc(n * d * sizeof(float));
    c->da = xcalloc(n * d, sizeof(float));
    c->attn = xmalloc(n * E * sizeof(float));
    c->dattn = xcalloc(n * E, sizeof(float));
    c->R = xmalloc(n * d * sizeof(float));
    c->out = xmalloc(n * d * sizeof(float));
    test_fill(c->a, n * d, seed + 1, 1.0f);
    test_fill(c->attn, n * E, seed + 2, 1.0f);
    test_fill(c->R, n * d, seed + 3, 1.0f);
    c->acts_buf = xmalloc(mamba2_acts_floats(hax_cpu_ops(), cfg, c->n, NSEQ) * sizeof(float));
    mamba2_acts_assign(hax_cpu_ops(), &c->acts, c->acts_buf, cfg, c->n, NSEQ);
    c->bwd_buf = xmalloc(mamba2_bwd_floats(hax_cpu_ops(), cfg, c->n) * sizeof(float));
    mamba2_bwd_assign(hax_cpu_ops(), &c->bwd, c->bwd_buf, cfg, c->n);
}

static void mx_free(mx_case *c) {
    free(c->par);
    free(c->grad);
    free(c->a);
    free(c->da);
    free(c->attn);
    free(c->dattn);
    free(c->R);
    free(c->out);
    free(c->acts_buf);
    free(c->bwd_buf);
}

static void mx_forward(mx_case *c) {
    mamba2_pre_forward(hax_cpu_ops(), &c->acts, c->a, c->d, &c->w, &c->cfg, c->seq_off, NSEQ, c->n);
    if (c->mode == MODE_ATTN_OF_X)  // a stand-in sparse branch: attn = X²/2, V = X
        for (int t = 0; t < c->n; t++)
            for (int i = 0; i < c->E; i++) {
                float x = c->acts.xbc[(size_t)t * c->cd + i];
                c->attn[(size_t)t * c->E + i] = 0.5f * x * x;
            }
    mamba2_post_forward(hax_cpu_ops(), c->out, c->d, &c->acts, c->mode == MODE_PLAIN ? NULL : c->attn, &c->w,
                        &c->cfg, c->seq_off, NSEQ, c->n);
}

static void mx_backward(mx_case *c) {
    memset(c->grad, 0, c->n_par * sizeof(float));
    memset(c->da, 0, (size_t)c->n * c->d * sizeof(float));
    memset(c->dattn, 0, (size_t)c->n * c->E * sizeof(float));
    mamba2_post_backward(hax_cpu_ops(), &c->bwd, c->dattn, c->R, c->d, &c->acts,
                         c->mode == MODE_PLAIN ? NULL : c->attn, &c->w, &c->g, &c->cfg, c->seq_off,
                         NSEQ, c->n, NULL);
    if (c->mode == MODE_ATTN_OF_X)  // the stand-in branch adds its share of dX
        for (int t = 0; t < c->n; t++)
            for (int i = 0; i < c->E; i++)
                c->bwd.dxbc[(size_t)t * c->cd + i] +=
                    c->dattn[(size_t)t * c->E + i] * c->acts.xbc[(size_t)t * c->cd + i];
    mamba2_pre_backward(hax_cpu_ops(), c->da, c->d, &c->bwd, c->a, c->d, &c->acts, &c->w, &c->g, &c->cfg,
                        c->seq_off, NSEQ, c->n, NULL);
}


// The whole mixer in double, written from MODEL.md §3.2 / §5.7 (the loss of
// the finite differences and the forward reference).
static void mx_naive(double *out, const mx_case *c) {
    const hax_model_config *cfg = &c->cfg;
    int n = c->n, d = c->d, E = c->E, cd = c->cd, W = c->W, H = cfg->n_heads, P = cfg->head_dim;
    int N = cfg->state_size, K = cfg->conv_kernel;
    double *p = xmalloc((size_t)n * W * sizeof(double)), *xb = xmalloc((size_t)n * cd * sizeof(double));
    double *y = xmalloc((size_t)n * E * sizeof(double)), *S = xmalloc((size_t)P * N * sizeof(double));
    for (int t = 0; t < n; t++)
        for (int o = 0; o < W; o++) {
            double acc = 0;
            for (int i = 0; i < d; i++) acc += (double)c->a[t * d + i] * c->w.in_proj[o * d + i];
            p[t * W + o] = acc;
        }
    for (int s = 0; s < NSEQ; s++)
        for (int t = c->seq_off[s]; t < c->seq_off[s + 1]; t++)
            for (int ch = 0; ch < cd; ch++) {
                double pre = c->w.conv_b[ch];
                for (int k = 0; k < K; k++) {
                    int j = t - (K - 1) + k;
                    if (j >= c->seq_off[s]) pre += (double)c->w.conv_w[ch * K + k] * p[j * W + E + ch];
                }
                xb[t * cd + ch] = pre / (1 + exp(-pre));
            }
    for (int s = 0; s < NSEQ; s++)
        for (int h = 0; h < H; h++) {
            memset(S, 0, (size_t)P * N * sizeof(double));
            double A = -exp((double)c->w.A_log[h]);
            for (int t = c->seq_off[s]; t < c->seq_off[s + 1]; t++) {
                double u = p[t * W + E + cd + h] + c->w.dt_bias[h];
                double dl = u > 20 ? u : log1p(exp(u)), a = exp(dl * A);
                const double *x = xb + t * cd + h * P, *B = xb + t * cd + E, *C = B + N;
                for (int q = 0; q < P; q++) {
                    double acc = 0;
                    for (int m = 0; m < N; m++) {
                        S[q * N + m] = a * S[q * N + m] + dl * x[q] * B[m];
                        acc += C[m] * S[q * N + m];
                    }
                    y[t * E + h * P + q] = acc + (double)c->w.D[h] * x[q];
                }
            }
        }
    for (int t = 0; t < n; t++) {
        double ss = 0;
        for (int i = 0; i < E; i++) {
            double at = c->mode == MODE_ATTN_OF_X   ? 0.5 * xb[t * cd + i] * xb[t * cd + i]
                        : c->mode == MODE_ATTN_INPUT ? (double)c->attn[t * E + i]
                                                     : 0.0;
            double z = p[t * W + i];
            y[t * E + i] = (y[t * E + i] + (c->w.E ? at * c->w.E[i] : 0.0)) * z / (1 + exp(-z));
            ss += y[t * E + i] * y[t * E + i];
        }
        double r = 1 / sqrt(ss / E + (double)cfg->norm_eps);
        for (int i = 0; i < E; i++) y[t * E + i] *= r * c->w.norm_w[i];
        for (int o = 0; o < d; o++) {
            double acc = 0;
            for (int i = 0; i < E; i++) acc += y[t * E + i] * c->w.out_proj[o * E + i];
            out[t * d + o] = acc;
        }
    }
    free(p);
    free(xb);
    free(y);
    free(S);
}

static double mx_naive_loss(void *ctx) {
    mx_case *c = ctx;
    double *out = xmalloc((size_t)c->n * c->d * sizeof(double)), L = 0;
    mx_naive(out, c);
    for (int i = 0; i < c->n * c->d; i++) L += out[i] * c->R[i];
    free(out);
    return L;
}

static void mx_fd(int mode) {
    mx_case c;
    mx_init(&c, mode, 31 + mode);
    mx_forward(&c);
    mx_backward(&c);
    // Forward against the double-precision mixer.
    double *ref = xmalloc((size_t)c.n * c.d * sizeof(double));
    float *reff = xmalloc((size_t)c.n * c.d * sizeof(float));
    mx_naive(ref, &c);
    for (int i = 0; i < c.n * c.d; i++) reff[i] = (float)ref[i];
    double ef = max_rel_err(c.out, reff, (size_t)c.n * c.d);
    CHECK(ef < 1e-5, "mode %d: forward vs naive double: max rel err %.3g", mode, ef);
    free(ref);
    free(reff);
    const float h = 2e-4f;  // small: some entries have a large third derivative
    const double tol = 1e-3;
    double e = fd_exact(c.a, (size_t)c.n * c.d, c.da, mx_naive_loss, &c, h, 150, 1e-4);
    CHECK(e < tol, "mode %d: d a: worst FD rel err %.3g", mode, e);
    const char *names[9] = {"dt_bias", "A_log", "D", "conv1d.weight", "conv1d.bias", "in_proj",
                            "norm.weight", "out_proj", "E"};
    float *pw[9] = {(float *)c.w.dt_bias, (float *)c.w.A_log, (float *)c.w.D, (float *)c.w.conv_w,
                    (float *)c.w.conv_b, (float *)c.w.in_proj, (float *)c.w.norm_w,
                    (float *)c.w.out_proj, (float *)c.w.E};
    float *pg[9] = {c.g.dt_bias, c.g.A_log, c.g.D, c.g.conv_w, c.g.conv_b, c.g.in_proj, c.g.norm_w,
                    c.g.out_proj, c.g.E};
    for (int i = 0; i < 9; i++) {
        if (!pw[i]) continue;
        size_t len = (size_t)((i < 8 ? pw[i + 1] : c.par + c.n_par) - pw[i]);
        if (i == 7 && !pw[8]) len = (size_t)(c.par + c.n_par - c.E - pw[i]);
        e = fd_exact(pw[i], len, pg[i], mx_naive_loss, &c, h, 60, 1e-4);
        CHECK(e < tol, "mode %d: d %s: worst FD rel err %.3g", mode, names[i], e);
    }
    if (mode == MODE_ATTN_INPUT) {
        e = fd_exact(c.attn, (size_t)c.n * c.E, c.dattn, mx_naive_loss, &c, h, 100, 1e-4);
        CHECK(e < tol, "d attn: worst FD rel err %.3g", e);
    }
    mx_free(&c);
}

static void test_mixer_fd_plain(void) { mx_fd(MODE_PLAIN); }

static void test_mixer_fd_enhanced(void) {
    mx_fd(MODE_ATTN_INPUT);
    mx_fd(MODE_ATTN_OF_X);
}

// One sequence at a time (own offsets and activations) against the packed
// batch, and 2 threads against 1 (bit-identical).
static void test_mixer_packed_and_threads(void) {
    mx_case c, c2;
    mx_init(&c, MODE_ATTN_INPUT, 41);
    mx_init(&c2, MODE_ATTN_INPUT, 41);
    set_threads(1);
    mx_forward(&c);
    mx_backward(&c);
    set_threads(2);
    mx_forward(&c2);
    mx_backward(&c2);
    CHECK(!memcmp(c.out, c2.out, (size_t)c.n * c.d * sizeof(float)), "out: 1 vs 2 threads differ");
    CHECK(!memcmp(c.da, c2.da, (size_t)c.n * c.d * sizeof(float)), "da: 1 vs 2 threads differ");
    CHECK(!memcmp(c.dattn, c2.dattn, (size_t)c.n * c.E * sizeof(float)),
          "dattn: 1 vs 2 threads differ");
    CHECK(!memcmp(c.grad, c2.grad, c.n_par * sizeof(float)), "grads: 1 vs 2 threads differ");

    // Sequences one at a time, their parameter gradients summed.
    float *gsum = xcalloc(c.n_par, sizeof(float));
    float *out1 = xmalloc((size_t)c.n * c.d * sizeof(float));
    float *da1 = xmalloc((size_t)c.n * c.d * sizeof(float));
    float *dattn1 = xmalloc((size_t)c.n * c.E * sizeof(float));
    for (int s = 0; s < NSEQ; s++) {
        mx_case one;
        mx_init(&one, MODE_ATTN_INPUT, 41);
        int r0 = c.seq_off[s], len = LENS[s];
        one.seq_off[0] = 0;
        for (int k = 1; k <= NSEQ; k++) one.seq_off[k] = len;  // sequence s, then empty ones
        one.n = len;
        memcpy(one.a, c.a + (size_t)r0 * c.d, (size_t)len * c.d * sizeof(float));
        memcpy(one.attn, c.attn + (size_t)r0 * c.E, (size_t)len * c.E * sizeof(float));
        memcpy(one.R, c.R + (size_t)r0 * c.d, (size_t)len * c.d * sizeof(float));
        mamba2_acts_assign(hax_cpu_ops(), &one.acts, one.acts_buf, &one.cfg, one.n, NSEQ);
        mamba2_bwd_assign(hax_cpu_ops(), &one.bwd, one.bwd_buf, &one.cfg, one.n);
        mx_forward(&one);
        mx_backward(&one);
        memcpy(out1 + (size_t)r0 * c.d, one.out, (size_t)len * c.d * sizeof(float));
        memcpy(da1 + (size_t)r0 * c.d, one.da, (size_t)len * c.d * sizeof(float));
        memcpy(dattn1 + (size_t)r0 * c.E, one.dattn, (size_t)len * c.E * sizeof(float));
        for (size_t i = 0; i < c.n_par; i++) gsum[i] += one.grad[i];
        mx_free(&one);
    }
    double e1 = rel_err(out1, c.out, (size_t)c.n * c.d), e2 = rel_err(da1, c.da, (size_t)c.n * c.d);
    double e3 = rel_err(dattn1, c.dattn, (size_t)c.n * c.E), e4 = rel_err(gsum, c.grad, c.n_par);
    CHECK(e1 < 1e-6 && e2 < 1e-6 && e3 < 1e-6 && e4 < 1e-5,
          "packed vs one at a time: out %.3g, da %.3g, dattn %.3g, grads %.3g", e1, e2, e3, e4);
    free(gsum);
    free(out1);
    free(da1);
    free(dattn1);
    mx_free(&c);
    mx_free(&c2);
}

int main(void) {
    RUN(test_ssd_ckpt_size);
    RUN(test_ssd_forward_vs_naive);
    RUN(test_ssd_backward_fd);
    RUN(test_ssd_packed_vs_single_and_threads);
    RUN(test_gated_norm);
    RUN(test_mixer_fd_plain);
    RUN(test_mixer_fd_enhanced);
    RUN(test_mixer_packed_and_threads);
    return test_summary();
}
