// test_ops_mamba.c: depthwise causal conv + SiLU (src/ops/conv.h), the selective
// scan (src/ops/scan.h) and the Mamba mixer halves (mixer_mamba.h), against
// double-precision references written here: forward values, backward passes
// vs central finite differences of the references, the chunked scan backward
// vs a naive one that stores every state, packed batch == one sequence at a
// time, and 1 thread == 2 threads bit for bit. Ragged batches include a
// length-1 sequence, one shorter than the conv kernel and one longer than two
// scan chunks.
#include <omp.h>

#include "src/ops/linear.h"
#include "src/engine/mixer_mamba.h"
#include "src/ops/conv.h"
#include "src/ops/scan.h"
#include "test.h"

#define FD_H 1e-3f
#define FD_TOL 3e-3

static float *fmalloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }
static double *dmalloc(size_t n) { return calloc(n ? n : 1, sizeof(double)); }
static double dsilu_ref(double x) { return x / (1.0 + exp(-x)); }
static double dsoftplus_ref(double x) { return x > 20.0 ? x : log1p(exp(x)); }

// ---------------------------------------------------------------- double references

// out [n_tok, C] = silu(b + causal depthwise conv of inp (ld_inp)), per sequence.
static void ref_conv(double *out, const float *inp, int ld_inp, const float *w, const float *b,
                     const int *so, int n_seq, int C, int K) {
    for (int s = 0; s < n_seq; s++)
        for (int t = so[s]; t < so[s + 1]; t++)
            for (int c = 0; c < C; c++) {
                double acc = b ? b[c] : 0.0;
                for (int k = 0; k < K; k++) {
                    int src = t - (K - 1) + k;
                    if (src >= so[s]) acc += (double)w[c * K + k] * inp[(size_t)src * ld_inp + c];
                }
                out[(size_t)t * C + c] = dsilu_ref(acc);
            }
}

// The scan's inputs, as doubles (dense; B and C with leading dimension ldbc).
typedef struct {
    const double *x, *draw, *b, *A_log, *B, *C, *D;
    int ldx, ldbc;
} scan_in;

// y [n_tok, E] (ungated, incl. D·x); S (if non-NULL) [n_tok, E, N] keeps every state.
static void ref_scan(double *y, double *S, const scan_in *in, const int *so, int n_seq, int E, int N) {
    double *st = dmalloc(N);
    for (int s = 0; s < n_seq; s++)
        for (int c = 0; c < E; c++) {
            memset(st, 0, sizeof(double) * N);
            for (int t = so[s]; t < so[s + 1]; t++) {
                double xv = in->x[(size_t)t * in->ldx + c];
                double delta = dsoftplus_ref(in->draw[(size_t)t * E + c] + in->b[c]);
                double acc = 0;
                for (int n = 0; n < N; n++) {
                    double A = -exp(in->A_log[c * N + n]);
                    st[n] = exp(delta * A) * st[n] + delta * in->B[(size_t)t * in->ldbc + n] * xv;
                    acc += in->C[(size_t)t * in->ldbc + n] * st[n];
                    if (S) S[((size_t)t * E + c) * N + n] = st[n];
                }
                y[(size_t)t * E + c] = acc + in->D[c] * xv;
            }
        }
    free(st);
}

static double *to_d(const float *x, size_t n) {
    double *d = dmalloc(n);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

// ---------------------------------------------------------------- batches

typedef struct {
    int n_seq, n_tok;
    int so[8];
} ragged;

static ragged make_ragged(const int *len, int n_seq) {
    ragged r = {n_seq, 0, {0}};
    for (int s = 0; s < n_seq; s++) r.so[s + 1] = r.so[s] + len[s];
    r.n_tok = r.so[n_seq];
    return r;
}

// ---------------------------------------------------------------- conv

typedef struct {
    float *inp, *w, *b, *r;
    int ld, C, K;
    const ragged *rb;
} conv_ctx;

static double conv_loss(void *p) {
    conv_ctx *c = p;
    size_t n = (size_t)c->rb->n_tok * c->C;
    double *out = dmalloc(n), L = 0;
    ref_conv(out, c->inp, c->ld, c->w, c->b, c->rb->so, c->rb->n_seq, c->C, c->K);
    for (size_t i = 0; i < n; i++) L += out[i] * c->r[i];
    free(out);
    return L;
}

static void test_conv(void) {
    int lens[5] = {1, 3, 7, 20, 70};
    ragged rb = make_ragged(lens, 5);
    int C = 40, K = 4, ld = 45, n = rb.n_tok;  // 40 channels: two channel blocks, one partial
    float *inp = fmalloc((size_t)n * ld), *w = fmalloc(C * K), *b = fmalloc(C), *r = fmalloc((size_t)n * C);
    float *out = fmalloc((size_t)n * C), *pre = fmalloc((size_t)n * C);
    float *dinp = fmalloc((size_t)n * ld), *dw = fmalloc(C * K), *db = fmalloc(C);
    test_fill(inp, (size_t)n * ld, 31, 1.5f);
    test_fill(w, C * K, 32, 0.5f);
    test_fill(b, C, 33, 0.5f);
    test_fill(r, (size_t)n * C, 34, 1.0f);
    conv_silu_forward(out, pre, inp, ld, w, b, rb.so, rb.n_seq, C, K);
    double *ref = dmalloc((size_t)n * C);
    ref_conv(ref, inp, ld, w, b, rb.so, rb.n_seq, C, K);
    float *reff = fmalloc((size_t)n * C);
    for (size_t i = 0; i < (size_t)n * C; i++) reff[i] = (float)ref[i];
    CHECK(max_rel_err(out, reff, (size_t)n * C) < 1e-6, "conv forward vs reference: %g",
          max_rel_err(out, reff, (size_t)n * C));
    for (size_t i = 0; i < (size_t)n * ld; i++) dinp[i] = 0.25f;  // backward accumulates
    conv_silu_backward(dinp, ld, dw, db, r, pre, inp, ld, w, rb.so, rb.n_seq, C, K);
    int untouched = 1;
    for (int t = 0; t < n; t++)
        for (int c = C; c < ld; c++) untouched &= dinp[(size_t)t * ld + c] == 0.25f;
    CHECK(untouched, "conv backward wrote outside the C columns of dinp");
    for (size_t i = 0; i < (size_t)n * ld; i++) dinp[i] -= 0.25f;
    conv_ctx cc = {inp, w, b, r, ld, C, K, &rb};
    double ei = fd_check(inp, (size_t)n * ld, dinp, conv_loss, &cc, FD_H, 300, 1e-3);
    double ew = fd_check(w, C * K, dw, conv_loss, &cc, FD_H, 160, 1e-3);
    double eb = fd_check(b, C, db, conv_loss, &cc, FD_H, 40, 1e-3);
    CHECK(ei < FD_TOL, "conv dinp vs FD: %g", ei);
    CHECK(ew < FD_TOL, "conv dw vs FD: %g", ew);
    CHECK(eb < FD_TOL, "conv db vs FD: %g", eb);

    // packed == one sequence per call, bit for bit (outputs and gradients)
    float *out1 = fmalloc((size_t)n * C), *pre1 = fmalloc((size_t)n * C), *dinp1 = fmalloc((size_t)n * ld);
    float *dw1 = fmalloc(C * K), *db1 = fmalloc(C), *dinp2 = fmalloc((size_t)n * ld);
    float *dw2 = fmalloc(C * K), *db2 = fmalloc(C);
    conv_silu_backward(dinp2, ld, dw2, db2, r, pre, inp, ld, w, rb.so, rb.n_seq, C, K);
    for (int s = 0; s < rb.n_seq; s++) {
        int t0 = rb.so[s], so1[2] = {0, rb.so[s + 1] - t0};
        conv_silu_forward(out1 + (size_t)t0 * C, pre1 + (size_t)t0 * C, inp + (size_t)t0 * ld, ld, w, b, so1, 1, C, K);
        conv_silu_backward(dinp1 + (size_t)t0 * ld, ld, dw1, db1, r + (size_t)t0 * C, pre1 + (size_t)t0 * C,
                           inp + (size_t)t0 * ld, ld, w, so1, 1, C, K);
    }
    CHECK(memcmp(out, out1, sizeof(float) * n * C) == 0, "conv forward: packed != one at a time");
    CHECK(memcmp(dinp2, dinp1, sizeof(float) * n * ld) == 0, "conv dinp: packed != one at a time");
    CHECK(memcmp(dw2, dw1, sizeof(float) * C * K) == 0 && memcmp(db2, db1, sizeof(float) * C) == 0,
          "conv dw/db: packed != one at a time");

    // 1 thread == 2 threads
    float *o[2], *di[2], *dwt[2];
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        o[k] = fmalloc((size_t)n * C);
        di[k] = fmalloc((size_t)n * ld);
        dwt[k] = fmalloc(C * K + C);
        conv_silu_forward(o[k], pre1, inp, ld, w, b, rb.so, rb.n_seq, C, K);
        conv_silu_backward(di[k], ld, dwt[k], dwt[k] + C * K, r, pre1, inp, ld, w, rb.so, rb.n_seq, C, K);
    }
    omp_set_num_threads(2);
    CHECK(memcmp(o[0], o[1], sizeof(float) * n * C) == 0 && memcmp(di[0], di[1], sizeof(float) * n * ld) == 0 &&
              memcmp(dwt[0], dwt[1], sizeof(float) * (C * K + C)) == 0,
          "conv differs between 1 and 2 threads");
    for (int k = 0; k < 2; k++) { free(o[k]); free(di[k]); free(dwt[k]); }
    free(inp); free(w); free(b); free(r); free(out); free(pre); free(dinp); free(dw); free(db);
    free(ref); free(reff); free(out1); free(pre1); free(dinp1); free(dw1); free(db1); free(dinp2); free(dw2); free(db2);
}

// ---------------------------------------------------------------- scan

typedef struct {
    float *x, *draw, *b, *A_log, *xdbl, *D, *r;
    int ldx, R, N, E;
    const ragged *rb;
} scan_ctx;

static int scan_ldbc(const scan_ctx *c) { return c->R + 2 * c->N; }

// y of the double reference (n_tok·E) and, when S is non-NULL, every state.
static double *scan_ref_y(const scan_ctx *c, double *S) {
    size_t n = (size_t)c->rb->n_tok;
    int ldbc = scan_ldbc(c);
    double *x = to_d(c->x, n * c->ldx), *draw = to_d(c->draw, n * c->E), *b = to_d(c->b, c->E);
    double *Al = to_d(c->A_log, (size_t)c->E * c->N), *xd = to_d(c->xdbl, n * ldbc), *D = to_d(c->D, c->E);
    scan_in in = {x, draw, b, Al, xd + c->R, xd + c->R + c->N, D, c->ldx, ldbc};
    double *y = dmalloc(n * c->E);
    ref_scan(y, S, &in, c->rb->so, c->rb->n_seq, c->E, c->N);
    free(x); free(draw); free(b); free(Al); free(xd); free(D);
    return y;
}

static double scan_loss(void *p) {
    scan_ctx *c = p;
    double *y = scan_ref_y(c, NULL), L = 0;
    for (size_t i = 0; i < (size_t)c->rb->n_tok * c->E; i++) L += y[i] * c->r[i];
    free(y);
    return L;
}

// Gradients of the scan (float, as scan_backward lays them out).
typedef struct {
    float *dx, *ddraw, *dxdbl, *db, *dA_log, *dD;
} scan_grads;

static scan_grads scan_grads_new(const scan_ctx *c) {
    size_t n = (size_t)c->rb->n_tok;
    scan_grads g = {fmalloc(n * c->ldx), fmalloc(n * c->E), fmalloc(n * scan_ldbc(c)), fmalloc(c->E),
                    fmalloc((size_t)c->E * c->N), fmalloc(c->E)};
    return g;
}

static void scan_grads_free(scan_grads *g) {
    free(g->dx); free(g->ddraw); free(g->dxdbl); free(g->db); free(g->dA_log); free(g->dD);
}

// Naive backward in double from every stored state (no checkpoints).
static scan_grads scan_naive_backward(const scan_ctx *c) {
    size_t n = (size_t)c->rb->n_tok;
    int E = c->E, N = c->N, ldbc = scan_ldbc(c);
    double *S = dmalloc(n * E * N);
    free(scan_ref_y(c, S));
    double *gx = dmalloc(n * E), *gdraw = dmalloc(n * E), *gB = dmalloc(n * N), *gC = dmalloc(n * N);
    double *gb = dmalloc(E), *gA = dmalloc((size_t)E * N), *gD = dmalloc(E), *h = dmalloc(N);
    for (int s = 0; s < c->rb->n_seq; s++)
        for (int ch = 0; ch < E; ch++) {
            memset(h, 0, sizeof(double) * N);
            for (int t = c->rb->so[s + 1] - 1; t >= c->rb->so[s]; t--) {
                double g = c->r[(size_t)t * E + ch], xv = c->x[(size_t)t * c->ldx + ch];
                double raw = (double)c->draw[(size_t)t * E + ch] + c->b[ch], delta = dsoftplus_ref(raw);
                const float *B = c->xdbl + (size_t)t * ldbc + c->R, *C = B + N;
                double ddelta = 0;
                gD[ch] += g * xv;
                gx[(size_t)t * E + ch] += g * c->D[ch];
                for (int k = 0; k < N; k++) {
                    double A = -exp((double)c->A_log[ch * N + k]), a = exp(delta * A);
                    double sprev = t > c->rb->so[s] ? S[((size_t)(t - 1) * E + ch) * N + k] : 0.0;
                    double hn = h[k] + g * C[k];
                    gC[(size_t)t * N + k] += g * S[((size_t)t * E + ch) * N + k];
                    gB[(size_t)t * N + k] += hn * delta * xv;
                    gx[(size_t)t * E + ch] += hn * delta * B[k];
                    ddelta += hn * B[k] * xv + hn * sprev * a * A;
                    gA[ch * N + k] += hn * sprev * a * delta * A;
                    h[k] = hn * a;
                }
                double dr = ddelta * (raw > 20.0 ? 1.0 : 1.0 / (1.0 + exp(-raw)));
                gdraw[(size_t)t * E + ch] += dr;
                gb[ch] += dr;
            }
        }
    scan_grads out = scan_grads_new(c);
    for (size_t t = 0; t < n; t++) {
        for (int ch = 0; ch < E; ch++) {
            out.dx[t * c->ldx + ch] = (float)gx[t * E + ch];
            out.ddraw[t * E + ch] = (float)gdraw[t * E + ch];
        }
        for (int k = 0; k < N; k++) {
            out.dxdbl[t * ldbc + c->R + k] = (float)gB[t * N + k];
            out.dxdbl[t * ldbc + c->R + N + k] = (float)gC[t * N + k];
        }
    }
    for (int ch = 0; ch < E; ch++) {
        out.db[ch] = (float)gb[ch];
        out.dD[ch] = (float)gD[ch];
        for (int k = 0; k < N; k++) out.dA_log[ch * N + k] = (float)gA[ch * N + k];
    }
    free(S); free(gx); free(gdraw); free(gB); free(gC); free(gb); free(gA); free(gD); free(h);
    return out;
}

// Runs scan_forward + scan_backward (dy = r) on sequences [s0, s1) of the
// batch, accumulating into g; y receives the outputs.
static void scan_run(float *y, scan_grads *g, const scan_ctx *c, int s0, int s1) {
    const ragged *rb = c->rb;
    int t0 = rb->so[s0], ldbc = scan_ldbc(c), E = c->E, N = c->N;
    int so[8], ns = s1 - s0;
    for (int s = 0; s <= ns; s++) so[s] = rb->so[s0 + s] - t0;
    int n = so[ns];
    float *ck = fmalloc(scan_ckpt_floats(n, ns, E, N));
    const float *xd = c->xdbl + (size_t)t0 * ldbc;
    float *dxd = g->dxdbl + (size_t)t0 * ldbc;
    scan_forward(y + (size_t)t0 * E, ck, c->x + (size_t)t0 * c->ldx, c->ldx, c->draw + (size_t)t0 * E, c->b,
                 c->A_log, xd + c->R, xd + c->R + N, ldbc, c->D, so, ns, E, N);
    scan_backward(g->dx + (size_t)t0 * c->ldx, c->ldx, g->ddraw + (size_t)t0 * E, dxd + c->R, dxd + c->R + N,
                  ldbc, g->db, g->dA_log, g->dD, c->r + (size_t)t0 * E, ck, c->x + (size_t)t0 * c->ldx, c->ldx,
                  c->draw + (size_t)t0 * E, c->b, c->A_log, xd + c->R, xd + c->R + N, ldbc, c->D, so, ns, E, N);
    free(ck);
}

static int scan_grads_equal(const scan_grads *a, const scan_grads *b, const scan_ctx *c) {
    size_t n = (size_t)c->rb->n_tok;
    return !memcmp(a->dx, b->dx, sizeof(float) * n * c->ldx) && !memcmp(a->ddraw, b->ddraw, sizeof(float) * n * c->E) &&
           !memcmp(a->dxdbl, b->dxdbl, sizeof(float) * n * scan_ldbc(c)) && !memcmp(a->db, b->db, sizeof(float) * c->E) &&
           !memcmp(a->dA_log, b->dA_log, sizeof(float) * c->E * c->N) && !memcmp(a->dD, b->dD, sizeof(float) * c->E);
}

static void test_scan(void) {
    int lens[5] = {1, 3, 7, 20, 150};  // 150: three chunks of SCAN_CHUNK = 64, the last partial
    ragged rb = make_ragged(lens, 5);
    int E = 40, N = 5, R = 3, ldx = 43, n = rb.n_tok, ldbc = R + 2 * N;
    scan_ctx c = {fmalloc((size_t)n * ldx), fmalloc((size_t)n * E), fmalloc(E), fmalloc(E * N),
                  fmalloc((size_t)n * ldbc), fmalloc(E), fmalloc((size_t)n * E), ldx, R, N, E, &rb};
    test_fill(c.x, (size_t)n * ldx, 41, 1.0f);
    test_fill(c.draw, (size_t)n * E, 42, 1.0f);
    test_fill(c.b, E, 43, 1.0f);
    test_fill(c.A_log, E * N, 44, 0.2f);
    test_fill(c.xdbl, (size_t)n * ldbc, 45, 1.0f);
    test_fill(c.D, E, 46, 1.0f);
    test_fill(c.r, (size_t)n * E, 47, 1.0f);
    for (int ch = 0; ch < E; ch++) {
        c.b[ch] -= 2.0f;  // Δ around softplus(-2) ≈ 0.13, as the dt init gives
        for (int k = 0; k < N; k++) c.A_log[ch * N + k] += logf((float)k + 1.0f);
    }
    c.draw[5 * E + 3] = 25.0f;  // one position above the softplus threshold

    float *y = fmalloc((size_t)n * E);
    scan_grads g = scan_grads_new(&c);
    scan_run(y, &g, &c, 0, rb.n_seq);
    double *yr = scan_ref_y(&c, NULL);
    float *yrf = fmalloc((size_t)n * E);
    for (size_t i = 0; i < (size_t)n * E; i++) yrf[i] = (float)yr[i];
    double ey = max_rel_err(y, yrf, (size_t)n * E);
    CHECK(ey < 1e-5, "scan forward vs naive reference: %g", ey);

    // chunked (checkpointed) backward vs the naive one that stores every state
    scan_grads gn = scan_naive_backward(&c);
    double e[6] = {rel_err(g.dx, gn.dx, (size_t)n * ldx), rel_err(g.ddraw, gn.ddraw, (size_t)n * E),
                   rel_err(g.dxdbl, gn.dxdbl, (size_t)n * ldbc), rel_err(g.db, gn.db, E),
                   rel_err(g.dA_log, gn.dA_log, E * N), rel_err(g.dD, gn.dD, E)};
    const char *nm[6] = {"dx", "ddraw", "dB/dC", "ddt_bias", "dA_log", "dD"};
    for (int i = 0; i < 6; i++) CHECK(e[i] < 2e-5, "scan %s: chunked vs naive backward %g", nm[i], e[i]);

    // the analytic gradients vs finite differences of the reference
    double f[6] = {fd_check(c.x, (size_t)n * ldx, g.dx, scan_loss, &c, FD_H, 60, 1e-3),
                   fd_check(c.draw, (size_t)n * E, g.ddraw, scan_loss, &c, FD_H, 60, 1e-3),
                   fd_check(c.xdbl, (size_t)n * ldbc, g.dxdbl, scan_loss, &c, FD_H, 60, 1e-3),
                   fd_check(c.b, E, g.db, scan_loss, &c, FD_H, 20, 1e-3),
                   fd_check(c.A_log, E * N, g.dA_log, scan_loss, &c, FD_H, 40, 1e-3),
                   fd_check(c.D, E, g.dD, scan_loss, &c, FD_H, 20, 1e-3)};
    for (int i = 0; i < 6; i++) CHECK(f[i] < FD_TOL, "scan %s vs FD: %g", nm[i], f[i]);

    // packed == one sequence per call, bit for bit
    float *y1 = fmalloc((size_t)n * E);
    scan_grads g1 = scan_grads_new(&c);
    for (int s = 0; s < rb.n_seq; s++) scan_run(y1, &g1, &c, s, s + 1);
    CHECK(memcmp(y, y1, sizeof(float) * n * E) == 0, "scan forward: packed != one at a time");
    CHECK(scan_grads_equal(&g, &g1, &c), "scan backward: packed != one at a time");

    // 1 thread == 2 threads
    float *y2 = fmalloc((size_t)n * E);
    scan_grads g2 = scan_grads_new(&c), g3 = scan_grads_new(&c);
    omp_set_num_threads(1);
    scan_run(y1, &g2, &c, 0, rb.n_seq);
    omp_set_num_threads(2);
    scan_run(y2, &g3, &c, 0, rb.n_seq);
    CHECK(memcmp(y1, y2, sizeof(float) * n * E) == 0 && scan_grads_equal(&g2, &g3, &c),
          "scan differs between 1 and 2 threads");

    scan_grads_free(&g); scan_grads_free(&gn); scan_grads_free(&g1); scan_grads_free(&g2); scan_grads_free(&g3);
    free(y); free(y1); free(y2); free(yr); free(yrf);
    free(c.x); free(c.draw); free(c.b); free(c.A_log); free(c.xdbl); free(c.D); free(c.r);
}

// ---------------------------------------------------------------- the mixer

enum { P_A, P_IN, P_CW, P_CB, P_XP, P_DTW, P_DTB, P_ALOG, P_D, P_OUT, P_E, P_ATTN, P_COUNT };
static const char *p_name[P_COUNT] = {"a", "in_proj", "conv_w", "conv_b", "x_proj", "dt_proj_w",
                                      "dt_proj_b", "A_log", "D", "out_proj", "E", "attn"};

typedef struct {
    hax_model_config cfg;
    const ragged *rb;
    float *t[P_COUNT];    // inputs and parameters (t[P_ATTN] NULL: plain Mamba)
    size_t sz[P_COUNT];
    float *r;             // [n_tok, d] the loss weights (dout)
} mix_ctx;

static mix_ctx mix_new(const ragged *rb, int with_attn, unsigned seed) {
    mix_ctx c;
    memset(&c, 0, sizeof c);
    c.cfg.hidden_size = 8;
    c.cfg.intermediate_size = 16;
    c.cfg.state_size = 4;
    c.cfg.time_step_rank = 3;
    c.cfg.conv_kernel = 4;
    c.rb = rb;
    int d = 8, E = 16, N = 4, R = 3, K = 4, n = rb->n_tok;
    size_t sz[P_COUNT] = {(size_t)n * d, 2 * E * d, E * K, E, (R + 2 * N) * E, E * R, E, E * N, E, d * E, E,
                          (size_t)n * E};
    float scale[P_COUNT] = {1.0f, 0.4f, 0.5f, 0.5f, 0.4f, 0.5f, 0.5f, 0.2f, 1.0f, 0.3f, 0.5f, 1.0f};
    for (int i = 0; i < P_COUNT; i++) {
        c.sz[i] = sz[i];
        if (i == P_ATTN && !with_attn) continue;
        c.t[i] = fmalloc(sz[i]);
        test_fill(c.t[i], sz[i], seed + i, scale[i]);
    }
    for (int ch = 0; ch < E; ch++) {
        c.t[P_DTB][ch] -= 2.0f;
        c.t[P_D][ch] += 1.0f;
        c.t[P_E][ch] += 1.0f;
        for (int k = 0; k < N; k++) c.t[P_ALOG][ch * N + k] += logf((float)k + 1.0f);
    }
    c.r = fmalloc((size_t)n * d);
    test_fill(c.r, (size_t)n * d, seed + 100, 1.0f);
    return c;
}

static void mix_free(mix_ctx *c) {
    for (int i = 0; i < P_COUNT; i++) free(c->t[i]);
    free(c->r);
}

// out [n_tok, d] of the double-precision reference mixer.
static double *mixer_ref(const mix_ctx *c) {
    int d = 8, E = 16, N = 4, R = 3, K = 4, RN = R + 2 * N, n = c->rb->n_tok;
    float *const *p = c->t;
    double *xz = dmalloc((size_t)n * 2 * E), *X = dmalloc((size_t)n * E), *xd = dmalloc((size_t)n * RN);
    double *draw = dmalloc((size_t)n * E), *y = dmalloc((size_t)n * E), *out = dmalloc((size_t)n * d);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < 2 * E; j++)
            for (int k = 0; k < d; k++) xz[t * 2 * E + j] += (double)p[P_A][t * d + k] * p[P_IN][j * d + k];
    for (int s = 0; s < c->rb->n_seq; s++)
        for (int t = c->rb->so[s]; t < c->rb->so[s + 1]; t++)
            for (int ch = 0; ch < E; ch++) {
                double acc = p[P_CB][ch];
                for (int k = 0; k < K; k++) {
                    int src = t - (K - 1) + k;
                    if (src >= c->rb->so[s]) acc += (double)p[P_CW][ch * K + k] * xz[src * 2 * E + ch];
                }
                X[t * E + ch] = dsilu_ref(acc);
            }
    for (int t = 0; t < n; t++)
        for (int j = 0; j < RN; j++)
            for (int ch = 0; ch < E; ch++) xd[t * RN + j] += X[t * E + ch] * p[P_XP][j * E + ch];
    for (int t = 0; t < n; t++)
        for (int ch = 0; ch < E; ch++)
            for (int k = 0; k < R; k++) draw[t * E + ch] += xd[t * RN + k] * p[P_DTW][ch * R + k];
    double *b = to_d(p[P_DTB], E), *Al = to_d(p[P_ALOG], E * N), *D = to_d(p[P_D], E);
    scan_in in = {X, draw, b, Al, xd + R, xd + R + N, D, E, RN};
    ref_scan(y, NULL, &in, c->rb->so, c->rb->n_seq, E, N);
    for (int t = 0; t < n; t++)
        for (int ch = 0; ch < E; ch++) {
            double g = dsilu_ref(xz[t * 2 * E + E + ch]);
            double o = y[t * E + ch] * g;
            if (p[P_ATTN]) o += (double)p[P_ATTN][t * E + ch] * p[P_E][ch] * g;
            for (int i = 0; i < d; i++) out[t * d + i] += o * p[P_OUT][i * E + ch];
        }
    free(xz); free(X); free(xd); free(draw); free(y); free(b); free(Al); free(D);
    return out;
}

static double mixer_loss(void *pv) {
    mix_ctx *c = pv;
    double *out = mixer_ref(c), L = 0;
    for (size_t i = 0; i < (size_t)c->rb->n_tok * 8; i++) L += out[i] * c->r[i];
    free(out);
    return L;
}

// Forward + backward of the C mixer on sequences [s0, s1) of c's batch.
// Writes out rows and accumulates the gradients g[P_*] (same layout as c->t).
static void mixer_run(float *out, float **g, const mix_ctx *c, int s0, int s1) {
    int d = 8, E = 16, t0 = c->rb->so[s0], ns = s1 - s0, so[8];
    for (int s = 0; s <= ns; s++) so[s] = c->rb->so[s0 + s] - t0;
    int n = so[ns];
    float *const *p = c->t;
    mamba_params w = {p[P_ALOG], p[P_D], p[P_CW], p[P_CB], p[P_IN], p[P_XP], p[P_DTW], p[P_DTB], p[P_OUT],
                      p[P_ATTN] ? p[P_E] : NULL};
    mamba_grads gr = {g[P_ALOG], g[P_D], g[P_CW], g[P_CB], g[P_IN], g[P_XP], g[P_DTW], g[P_DTB], g[P_OUT],
                      p[P_ATTN] ? g[P_E] : NULL};
    const hax_ops *ops = hax_cpu_ops();  // the mixer on the CPU's kernels
    float *abuf = fmalloc(mamba_acts_floats(ops, &c->cfg, n, ns)), *sbuf = fmalloc(mamba_bwd_floats(ops, &c->cfg, n));
    mamba_acts acts;
    mamba_bwd s;
    mamba_acts_assign(ops, &acts, abuf, &c->cfg, n, ns);
    mamba_bwd_assign(ops, &s, sbuf, &c->cfg, n);
    const float *a = p[P_A] + (size_t)t0 * d;
    const float *attn = p[P_ATTN] ? p[P_ATTN] + (size_t)t0 * E : NULL;
    mamba_pre_forward(ops, &acts, a, d, &w, &c->cfg, so, ns, n);
    mamba_post_forward(ops, out + (size_t)t0 * d, d, &acts, &s, attn, &w, &c->cfg, so, ns, n);
    mamba_post_backward(ops, &s, attn ? g[P_ATTN] + (size_t)t0 * E : NULL, c->r + (size_t)t0 * d, d, &acts, attn, &w,
                        &gr, &c->cfg, so, ns, n, NULL);
    mamba_pre_backward(ops, g[P_A] + (size_t)t0 * d, d, &s, a, d, &acts, &w, &gr, &c->cfg, so, ns, n, NULL);
    free(abuf);
    free(sbuf);
}

static float **grads_new(const mix_ctx *c) {
    float **g = calloc(P_COUNT, sizeof(float *));
    for (int i = 0; i < P_COUNT; i++) g[i] = fmalloc(c->sz[i]);
    return g;
}

static void grads_free(float **g) {
    for (int i = 0; i < P_COUNT; i++) free(g[i]);
    free(g);
}

static void check_mixer(int with_attn) {
    int lens[5] = {1, 3, 7, 20, 70};
    ragged rb = make_ragged(lens, 5);
    mix_ctx c = mix_new(&rb, with_attn, with_attn ? 200 : 300);
    int n = rb.n_tok, d = 8;
    float *out = fmalloc((size_t)n * d);
    float **g = grads_new(&c);
    mixer_run(out, g, &c, 0, rb.n_seq);
    double *ref = mixer_ref(&c);
    float *reff = fmalloc((size_t)n * d);
    for (size_t i = 0; i < (size_t)n * d; i++) reff[i] = (float)ref[i];
    double eo = max_rel_err(out, reff, (size_t)n * d);
    CHECK(eo < 1e-5, "mixer forward vs reference (attn %d): %g", with_attn, eo);
    for (int i = 0; i < P_COUNT; i++) {
        if (!c.t[i] || (i == P_E && !with_attn)) continue;
        double e = fd_check(c.t[i], c.sz[i], g[i], mixer_loss, &c, FD_H, 30, 1e-3);
        CHECK(e < FD_TOL, "mixer d%s vs FD (attn %d): %g", p_name[i], with_attn, e);
    }
    if (!with_attn) {
        int zero = 1;
        for (int ch = 0; ch < 16; ch++) zero &= g[P_E][ch] == 0.0f;
        CHECK(zero, "plain mixer wrote a gradient into E");
    }

    // packed == one sequence per call (rows bit-identical where no GEMM sums
    // over rows; the weight gradients differ only by GEMM rounding)
    float *out1 = fmalloc((size_t)n * d);
    float **g1 = grads_new(&c);
    for (int s = 0; s < rb.n_seq; s++) mixer_run(out1, g1, &c, s, s + 1);
    CHECK(rel_err(out1, out, (size_t)n * d) < 1e-6, "mixer out: packed vs one at a time %g",
          rel_err(out1, out, (size_t)n * d));
    for (int i = 0; i < P_COUNT; i++) {
        if (!c.t[i]) continue;
        double e = rel_err(g1[i], g[i], c.sz[i]);
        CHECK(e < 1e-5, "mixer d%s: packed vs one at a time %g", p_name[i], e);
    }

    // 1 thread == 2 threads, bit for bit
    float **gt[2], *ot[2];
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        gt[k] = grads_new(&c);
        ot[k] = fmalloc((size_t)n * d);
        mixer_run(ot[k], gt[k], &c, 0, rb.n_seq);
    }
    omp_set_num_threads(2);
    int same = memcmp(ot[0], ot[1], sizeof(float) * n * d) == 0;
    for (int i = 0; i < P_COUNT; i++) same &= memcmp(gt[0][i], gt[1][i], sizeof(float) * c.sz[i]) == 0;
    CHECK(same, "mixer differs between 1 and 2 threads (attn %d)", with_attn);
    for (int k = 0; k < 2; k++) { grads_free(gt[k]); free(ot[k]); }

    grads_free(g); grads_free(g1);
    free(out); free(out1); free(ref); free(reff);
    mix_free(&c);
}

static void test_mixer_plain(void) { check_mixer(0); }
static void test_mixer_attn(void) { check_mixer(1); }

int main(void) {
    hax_blas_set_threads(1);  // the thread checks are about OpenMP; keep BLAS fixed
    RUN(test_conv);
    RUN(test_scan);
    RUN(test_mixer_plain);
    RUN(test_mixer_attn);
    return test_summary();
}
