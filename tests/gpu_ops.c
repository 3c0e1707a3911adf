// gpu_ops.c: every CUDA op (cuda/cu_*.h) against its CPU op (src/ops_*.h) on
// random ragged packed batches (lengths 1, 3, 4, 5 around the conv width K = 4,
// 17 and 40 across the SSD's 16-position chunks, 100 across the CPU's
// 64-position chunks; the Mamba scan's own batch, below): outputs within 1e-5 and every gradient within 1e-4
// (normwise relative error; gradients accumulate into random initial values
// and the increments are compared). Then one timing per op at the paper's
// size (64 sequences of ~464 positions, d 64, E 128), CPU vs GPU, with the
// scans' results compared there too. The Mamba scan is also captured in a CUDA
// graph and replayed (bit-identical). Skips (exit 0) without a CUDA device.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "cuda/ops/basic.h"
#include "cuda/core/common.h"
#include "cuda/ops/conv.h"
#include "cuda/ops/linear.h"
#include "cuda/ops/scan.h"
#include "cuda/ops/ssd.h"
#include "src/ops/linear.h"
#include "src/ops/basic.h"
#include "src/ops/conv.h"
#include "src/ops/scan.h"
#include "src/ops/ssd.h"
#include "test.h"

#include <sys/wait.h>

#define TOL_FWD 1e-5
#define TOL_BWD 1e-4

// ---------------------------------------------------------------- helpers

static unsigned g_seed = 1;

static float *rnd(size_t n, float lo, float hi) {
    float *p = xmalloc(sizeof(float) * (n ? n : 1));
    test_fill(p, n, g_seed++, 1.0f);
    for (size_t i = 0; i < n; i++) p[i] = lo + (p[i] + 1.0f) * 0.5f * (hi - lo);
    return p;
}

static float *copy(const float *h, size_t n) {
    float *p = xmalloc(sizeof(float) * (n ? n : 1));
    memcpy(p, h, sizeof(float) * n);
    return p;
}

static void *up(const void *h, size_t bytes) { return cuda_upload_new(h, bytes); }
static float *upf(const float *h, size_t n) { return up(h, sizeof(float) * n); }
static float *down(const float *d, size_t n) { return cuda_download_new(d, sizeof(float) * n); }

// Compares the GPU result (device) with the CPU's; with init != NULL both
// are increments over init (backward ops accumulate).
static void expect(const char *what, const float *d_gpu, const float *cpu, const float *init, size_t n,
                   double tol) {
    float *g = down(d_gpu, n);
    float *c = copy(cpu, n);
    if (init)
        for (size_t i = 0; i < n; i++) g[i] -= init[i], c[i] -= init[i];
    double err = rel_err(g, c, n);
    printf("    %-30s rel err %.2e\n", what, err);
    CHECK(err <= tol, "%s: relative error %.3e above %.0e", what, err, tol);
    free(g);
    free(c);
}

typedef struct {
    int n_seq, n_tok;
    int *off;    // host seq_off
    int *d_off;  // device copy
} tbatch;

static tbatch make_batch(const int *lens, int n_seq) {
    tbatch b = {n_seq, 0, xmalloc(sizeof(int) * (n_seq + 1)), NULL};
    b.off[0] = 0;
    for (int s = 0; s < n_seq; s++) b.off[s + 1] = b.off[s] + lens[s];
    b.n_tok = b.off[n_seq];
    b.d_off = up(b.off, sizeof(int) * (n_seq + 1));
    return b;
}

static void free_batch(tbatch *b) {
    free(b->off);
    cuda_free(b->d_off);
}

static const int k_lens[] = {5, 1, 17, 3, 100, 4, 40, 1, 64, 33};
#define K_NSEQ ((int)(sizeof(k_lens) / sizeof(k_lens[0])))

// ---------------------------------------------------------------- linear

static void test_linear(void) {
    int n = 300, in = 48, out = 80, ld_in = 53, ld_out = 85;  // n > the CPU's 256-row blocks
    float *x = rnd((size_t)n * ld_in, -1, 1), *W = rnd((size_t)out * in, -0.3f, 0.3f), *b = rnd(out, -1, 1);
    float *y = rnd((size_t)n * ld_out, -1, 1), *dy = rnd((size_t)n * ld_out, -1, 1);
    float *dx0 = rnd((size_t)n * ld_in, -1, 1), *dW0 = rnd((size_t)out * in, -1, 1), *db0 = rnd(out, -1, 1);
    float *d_x = upf(x, (size_t)n * ld_in), *d_W = upf(W, (size_t)out * in), *d_b = upf(b, out);
    float *d_y = upf(y, (size_t)n * ld_out), *d_dy = upf(dy, (size_t)n * ld_out);
    float *d_dx = upf(dx0, (size_t)n * ld_in), *d_dW = upf(dW0, (size_t)out * in), *d_db = upf(db0, out);
    linear_forward(y, ld_out, x, ld_in, W, b, n, in, out);
    cuda_linear_forward(d_y, ld_out, d_x, ld_in, d_W, d_b, n, in, out);
    expect("linear out", d_y, y, NULL, (size_t)n * ld_out, TOL_FWD);
    float *dx = copy(dx0, (size_t)n * ld_in), *dW = copy(dW0, (size_t)out * in), *db = copy(db0, out);
    linear_backward(dx, ld_in, dW, db, dy, ld_out, x, ld_in, W, n, in, out);
    cuda_linear_backward(d_dx, ld_in, d_dW, d_db, d_dy, ld_out, d_x, ld_in, d_W, n, in, out);
    expect("linear dinp", d_dx, dx, dx0, (size_t)n * ld_in, TOL_BWD);
    expect("linear dweight", d_dW, dW, dW0, (size_t)out * in, TOL_BWD);
    expect("linear dbias", d_db, db, db0, out, TOL_BWD);
    void *ptrs[] = {x, W, b, y, dy, dx0, dW0, db0, dx, dW, db};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {d_x, d_W, d_b, d_y, d_dy, d_dx, d_dW, d_db};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
}

// ---------------------------------------------------------------- embedding, norms, logits, CE

static void test_embedding(void) {
    int n = 2500, d = 64, V = 100;  // three chunks of the GPU's 1024 tokens
    int32_t *ids = xmalloc(sizeof(int32_t) * n);
    for (int t = 0; t < n; t++) ids[t] = (int32_t)((t * 37 + t / 7) % V);
    float *W = rnd((size_t)V * d, -1, 1), *out = rnd((size_t)n * d, 0, 1), *dout = rnd((size_t)n * d, -1, 1);
    float *dW0 = rnd((size_t)V * d, -1, 1), *dW = copy(dW0, (size_t)V * d);
    int32_t *d_ids = up(ids, sizeof(int32_t) * n);
    float *d_W = upf(W, (size_t)V * d), *d_out = upf(out, (size_t)n * d), *d_dout = upf(dout, (size_t)n * d);
    float *d_dW = upf(dW0, (size_t)V * d);
    void *work = cuda_malloc(cuda_embedding_workspace_bytes(n, d, V));
    embedding_forward(out, ids, W, n, d, V);
    cuda_embedding_forward(d_out, d_ids, d_W, n, d, V);
    expect("embedding out", d_out, out, NULL, (size_t)n * d, 0.0);
    embedding_backward(dW, dout, ids, n, d);
    cuda_embedding_backward(d_dW, d_dout, d_ids, n, d, V, work);
    expect("embedding dW", d_dW, dW, dW0, (size_t)V * d, TOL_BWD);
    free(ids), free(W), free(out), free(dout), free(dW0), free(dW);
    cuda_free(d_ids), cuda_free(d_W), cuda_free(d_out), cuda_free(d_dout), cuda_free(d_dW), cuda_free(work);
}

static void test_rmsnorm(int fused) {
    int n = 333, d = 64;
    size_t nd = (size_t)n * d;
    float *x = rnd(nd, -2, 2), *res = rnd(nd, -2, 2), *w = rnd(d, 0.5f, 1.5f), *dout = rnd(nd, -1, 1);
    float *ds = rnd(nd, -1, 1), *out = xmalloc(sizeof(float) * nd), *s = xmalloc(sizeof(float) * nd);
    float *rstd = xmalloc(sizeof(float) * n);
    float *dx0 = rnd(nd, -1, 1), *dr0 = rnd(nd, -1, 1), *dw0 = rnd(d, -1, 1);
    float *dx = copy(dx0, nd), *dr = copy(dr0, nd), *dw = copy(dw0, d);
    float *d_x = upf(x, nd), *d_res = upf(res, nd), *d_w = upf(w, d), *d_dout = upf(dout, nd), *d_ds = upf(ds, nd);
    float *d_out = cuda_malloc(sizeof(float) * nd), *d_s = cuda_malloc(sizeof(float) * nd);
    float *d_rstd = cuda_malloc(sizeof(float) * n);
    float *d_dx = upf(dx0, nd), *d_dr = upf(dr0, nd), *d_dw = upf(dw0, d);
    void *work = cuda_malloc(cuda_norm_workspace_bytes(n, d));
    if (!fused) {
        rmsnorm_forward(out, rstd, x, w, n, d, 1e-5f);
        cuda_rmsnorm_forward(d_out, d_rstd, d_x, d_w, n, d, 1e-5f);
        expect("rmsnorm out", d_out, out, NULL, nd, TOL_FWD);
        expect("rmsnorm rstd", d_rstd, rstd, NULL, n, TOL_FWD);
        rmsnorm_backward(dx, dw, dout, x, rstd, w, n, d);
        cuda_rmsnorm_backward(d_dx, d_dw, d_dout, d_x, d_rstd, d_w, n, d, work);
        expect("rmsnorm dx", d_dx, dx, dx0, nd, TOL_BWD);
        expect("rmsnorm dw", d_dw, dw, dw0, d, TOL_BWD);
    } else {
        add_rmsnorm_forward(out, s, rstd, x, res, w, n, d, 1e-5f);
        cuda_add_rmsnorm_forward(d_out, d_s, d_rstd, d_x, d_res, d_w, n, d, 1e-5f);
        expect("add_rmsnorm out", d_out, out, NULL, nd, TOL_FWD);
        expect("add_rmsnorm s", d_s, s, NULL, nd, TOL_FWD);
        add_rmsnorm_backward(dx, dr, dw, dout, ds, s, rstd, w, n, d);
        cuda_add_rmsnorm_backward(d_dx, d_dr, d_dw, d_dout, d_ds, d_s, d_rstd, d_w, n, d, work);
        expect("add_rmsnorm dx", d_dx, dx, dx0, nd, TOL_BWD);
        expect("add_rmsnorm dresidual", d_dr, dr, dr0, nd, TOL_BWD);
        expect("add_rmsnorm dw", d_dw, dw, dw0, d, TOL_BWD);
        // dx and dresidual as one buffer (it gets 2g), no ds.
        float *dxx = copy(dx0, nd);
        add_rmsnorm_backward(dxx, dxx, NULL, dout, NULL, s, rstd, w, n, d);
        cuda_upload(d_dx, dx0, sizeof(float) * nd);
        cuda_add_rmsnorm_backward(d_dx, d_dx, NULL, d_dout, NULL, d_s, d_rstd, d_w, n, d, work);
        expect("add_rmsnorm dx=dresidual", d_dx, dxx, dx0, nd, TOL_BWD);
        free(dxx);
    }
    void *ptrs[] = {x, res, w, dout, ds, out, s, rstd, dx0, dr0, dw0, dx, dr, dw};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {d_x, d_res, d_w, d_dout, d_ds, d_out, d_s, d_rstd, d_dx, d_dr, d_dw, work};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
}

static void test_rmsnorm_plain(void) { test_rmsnorm(0); }
static void test_add_rmsnorm(void) { test_rmsnorm(1); }

// Tied logits, then cross-entropy + accuracy over a ragged batch.
static void test_logits_ce(void) {
    tbatch b = make_batch(k_lens, K_NSEQ);
    int n = b.n_tok, d = 64, V = 100;
    float *h = rnd((size_t)n * d, -1, 1), *W = rnd((size_t)V * d, -0.5f, 0.5f);
    float *logits = xmalloc(sizeof(float) * n * V), *dl = xmalloc(sizeof(float) * n * V);
    int32_t *lab = xmalloc(sizeof(int32_t) * n);
    uint8_t *mask = xmalloc(n);
    for (int t = 0; t < n; t++) lab[t] = (int32_t)((t * 7919) % V), mask[t] = (uint8_t)(t % 3 == 0 || t == 1);
    float *d_h = upf(h, (size_t)n * d), *d_W = upf(W, (size_t)V * d), *d_logits = cuda_malloc(sizeof(float) * n * V);
    logits_forward(logits, h, W, n, d, V);
    cuda_logits_forward(d_logits, d_h, d_W, n, d, V);
    expect("logits", d_logits, logits, NULL, (size_t)n * V, TOL_FWD);
    // Use the CPU's logits on both sides from here, with two tied rows (all
    // equal: the first maximum, id 0, is the prediction).
    for (int v = 0; v < V; v++) logits[(size_t)3 * V + v] = 0.5f, logits[(size_t)6 * V + v] = 0.25f;
    lab[3] = 0, lab[6] = 1, mask[3] = mask[6] = 1;
    cuda_upload(d_logits, logits, sizeof(float) * n * V);
    int32_t *d_lab = up(lab, sizeof(int32_t) * n);
    uint8_t *d_mask = up(mask, n);
    int *correct = xmalloc(sizeof(int) * b.n_seq), *count = xmalloc(sizeof(int) * b.n_seq);
    int *g_correct = xmalloc(sizeof(int) * b.n_seq), *g_count = xmalloc(sizeof(int) * b.n_seq);
    int *d_correct = cuda_malloc(sizeof(int) * b.n_seq), *d_count = cuda_malloc(sizeof(int) * b.n_seq);
    double *d_loss = cuda_malloc(sizeof(double)), g_loss;
    void *work = cuda_malloc(cuda_ce_workspace_bytes(n, b.n_seq));
    for (int with_mask = 0; with_mask < 2; with_mask++) {
        const uint8_t *m = with_mask ? mask : NULL, *dm = with_mask ? d_mask : NULL;
        double loss = ce_forward(logits, lab, m, b.off, b.n_seq, V, correct, count);
        cuda_ce_forward(d_loss, d_correct, d_count, d_logits, d_lab, dm, b.d_off, b.n_seq, n, V, work);
        cuda_download(&g_loss, d_loss, sizeof(double));
        cuda_download(g_correct, d_correct, sizeof(int) * b.n_seq);
        cuda_download(g_count, d_count, sizeof(int) * b.n_seq);
        cuda_sync();
        double err = fabs(g_loss - loss) / fabs(loss);
        printf("    ce loss (mask %d)               rel err %.2e (%.6f)\n", with_mask, err, loss);
        CHECK(err <= 1e-9, "ce loss: gpu %.12f cpu %.12f", g_loss, loss);
        int same = 1, total = 0;
        for (int s = 0; s < b.n_seq; s++) {
            same &= g_correct[s] == correct[s] && g_count[s] == count[s];
            total += correct[s];
        }
        CHECK(same, "ce correct/count differ from the CPU's (mask %d)", with_mask);
        CHECK(total >= 1, "no correct prediction at all: the tie rows should count (mask %d)", with_mask);
        float scale = 1.0f / 37.0f;
        float *d_dl = cuda_malloc(sizeof(float) * n * V);
        ce_backward(dl, logits, lab, m, n, V, scale);
        cuda_ce_backward(d_dl, d_logits, d_lab, dm, n, V, scale);
        expect(with_mask ? "ce dlogits (mask)" : "ce dlogits", d_dl, dl, NULL, (size_t)n * V, TOL_BWD);
        cuda_free(d_dl);
    }
    // Logits backward from those dlogits.
    float *dh0 = rnd((size_t)n * d, -1, 1), *dW0 = rnd((size_t)V * d, -1, 1);
    float *dh = copy(dh0, (size_t)n * d), *dW = copy(dW0, (size_t)V * d);
    float *d_dl = upf(dl, (size_t)n * V), *d_dh = upf(dh0, (size_t)n * d), *d_dW = upf(dW0, (size_t)V * d);
    logits_backward(dh, dW, dl, h, W, n, d, V);
    cuda_logits_backward(d_dh, d_dW, d_dl, d_h, d_W, n, d, V);
    expect("logits dh", d_dh, dh, dh0, (size_t)n * d, TOL_BWD);
    expect("logits dW", d_dW, dW, dW0, (size_t)V * d, TOL_BWD);
    void *ptrs[] = {h, W, logits, dl, lab, mask, correct, count, g_correct, g_count, dh0, dW0, dh, dW};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {d_h, d_W, d_logits, d_lab, d_mask, d_correct, d_count, d_loss, work, d_dl, d_dh, d_dW};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
    free_batch(&b);
}

// ---------------------------------------------------------------- conv + SiLU

static void test_conv(void) {
    tbatch b = make_batch(k_lens, K_NSEQ);
    int n = b.n_tok, C = 72, K = 4, ld = C + 9;
    float *inp = rnd((size_t)n * ld, -1, 1), *w = rnd((size_t)C * K, -0.5f, 0.5f), *bias = rnd(C, -0.5f, 0.5f);
    float *out = xmalloc(sizeof(float) * n * C), *pre = xmalloc(sizeof(float) * n * C);
    float *dout = rnd((size_t)n * C, -1, 1);
    float *di0 = rnd((size_t)n * ld, -1, 1), *dw0 = rnd((size_t)C * K, -1, 1), *db0 = rnd(C, -1, 1);
    float *di = copy(di0, (size_t)n * ld), *dw = copy(dw0, (size_t)C * K), *db = copy(db0, C);
    float *d_inp = upf(inp, (size_t)n * ld), *d_w = upf(w, (size_t)C * K), *d_b = upf(bias, C);
    float *d_out = cuda_malloc(sizeof(float) * n * C), *d_pre = cuda_malloc(sizeof(float) * n * C);
    float *d_dout = upf(dout, (size_t)n * C), *d_di = upf(di0, (size_t)n * ld), *d_dw = upf(dw0, (size_t)C * K);
    float *d_db = upf(db0, C);
    void *work = cuda_malloc(cuda_conv_workspace_bytes(b.n_tok, b.n_seq, C, K));
    conv_silu_forward(out, pre, inp, ld, w, bias, b.off, b.n_seq, C, K);
    cuda_conv_silu_forward(d_out, d_pre, d_inp, ld, d_w, d_b, b.d_off, b.n_seq, n, C, K);
    expect("conv out", d_out, out, NULL, (size_t)n * C, TOL_FWD);
    expect("conv pre", d_pre, pre, NULL, (size_t)n * C, TOL_FWD);
    conv_silu_backward(di, ld, dw, db, dout, pre, inp, ld, w, b.off, b.n_seq, C, K);
    cuda_conv_silu_backward(d_di, ld, d_dw, d_db, d_dout, d_pre, d_inp, ld, d_w, b.d_off, b.n_seq, n, C, K, work);
    expect("conv dinp", d_di, di, di0, (size_t)n * ld, TOL_BWD);
    expect("conv dw", d_dw, dw, dw0, (size_t)C * K, TOL_BWD);
    expect("conv db", d_db, db, db0, C, TOL_BWD);
    void *ptrs[] = {inp, w, bias, out, pre, dout, di0, dw0, db0, di, dw, db};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {d_inp, d_w, d_b, d_out, d_pre, d_dout, d_di, d_dw, d_db, work};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
    free_batch(&b);
}

// ---------------------------------------------------------------- Mamba scan

// Inputs of one scan case: x and B|C are slices of one wide buffer as in the
// mixer (x_proj's output), every gradient starts from random values.
typedef struct {
    int E, N, ld_x, ld_bc;
    float *x, *draw, *dtb, *Alog, *bc, *D, *dy;
    float *dx0, *ddr0, *dbc0, *ddtb0, *dA0, *dD0;
} scan_case;

static scan_case scan_case_new(int n, int E, int N) {
    scan_case c = {E, N, E + 3, 2 * N + 5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    c.x = rnd((size_t)n * c.ld_x, -1, 1), c.draw = rnd((size_t)n * E, -2, 1), c.dtb = rnd(E, -2, -0.5f);
    c.Alog = rnd((size_t)E * N, 0, 2.7f), c.bc = rnd((size_t)n * c.ld_bc, -1, 1), c.D = rnd(E, 0.5f, 1.5f);
    c.dy = rnd((size_t)n * E, -1, 1);
    c.dx0 = rnd((size_t)n * c.ld_x, -1, 1), c.ddr0 = rnd((size_t)n * E, -1, 1), c.dbc0 = rnd((size_t)n * c.ld_bc, -1, 1);
    c.ddtb0 = rnd(E, -1, 1), c.dA0 = rnd((size_t)E * N, -1, 1), c.dD0 = rnd(E, -1, 1);
    return c;
}

static void scan_case_free(scan_case *c) {
    float *p[] = {c->x, c->draw, c->dtb, c->Alog, c->bc, c->D, c->dy, c->dx0, c->ddr0, c->dbc0, c->ddtb0, c->dA0, c->dD0};
    for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++) free(p[i]);
}

// Runs the CPU and GPU scans forward and backward and compares; with
// timing, prints both times (GPU: mean of reps after a warm-up).
static void run_scan(const tbatch *b, int E, int N, int timing) {
    int n = b->n_tok;
    scan_case c = scan_case_new(n, E, N);
    size_t nE = (size_t)n * E, nx = (size_t)n * c.ld_x, nbc = (size_t)n * c.ld_bc;
    float *y = xmalloc(sizeof(float) * nE), *ck = xmalloc(sizeof(float) * scan_ckpt_floats(n, b->n_seq, E, N));
    float *dx = copy(c.dx0, nx), *ddr = copy(c.ddr0, nE), *dbc = copy(c.dbc0, nbc);
    float *ddtb = copy(c.ddtb0, E), *dA = copy(c.dA0, (size_t)E * N), *dD = copy(c.dD0, E);
    float *g_x = upf(c.x, nx), *g_draw = upf(c.draw, nE), *g_dtb = upf(c.dtb, E), *g_A = upf(c.Alog, (size_t)E * N);
    float *g_bc = upf(c.bc, nbc), *g_D = upf(c.D, E), *g_dy = upf(c.dy, nE);
    float *g_y = cuda_malloc(sizeof(float) * nE), *g_ck = cuda_malloc(sizeof(float) * cuda_scan_ckpt_floats(n, b->n_seq, E, N));
    float *g_dx = upf(c.dx0, nx), *g_ddr = upf(c.ddr0, nE), *g_dbc = upf(c.dbc0, nbc);
    float *g_ddtb = upf(c.ddtb0, E), *g_dA = upf(c.dA0, (size_t)E * N), *g_dD = upf(c.dD0, E);
    void *work = cuda_malloc(cuda_scan_workspace_bytes(n, b->n_seq, E, N));
    char name[64];

    double t0 = hax_now();
    scan_forward(y, ck, c.x, c.ld_x, c.draw, c.dtb, c.Alog, c.bc, c.bc + N, c.ld_bc, c.D, b->off, b->n_seq, E, N);
    double cpu_f = hax_now() - t0;
    cuda_scan_forward(g_y, g_ck, g_x, c.ld_x, g_draw, g_dtb, g_A, g_bc, g_bc + N, c.ld_bc, g_D, b->d_off, b->n_seq, n, E, N);
    snprintf(name, sizeof name, "scan y (E=%d N=%d)", E, N);
    expect(name, g_y, y, NULL, nE, TOL_FWD);
    // without checkpoints (no backward follows): the sequential forward (into dy's copy, restored below)
    cuda_scan_forward(g_dy, NULL, g_x, c.ld_x, g_draw, g_dtb, g_A, g_bc, g_bc + N, c.ld_bc, g_D, b->d_off, b->n_seq, n, E, N);
    expect("scan y (no checkpoints)", g_dy, y, NULL, nE, TOL_FWD);
    cuda_upload(g_dy, c.dy, sizeof(float) * nE);
    t0 = hax_now();
    scan_backward(dx, c.ld_x, ddr, dbc, dbc + N, c.ld_bc, ddtb, dA, dD, c.dy, ck, c.x, c.ld_x, c.draw, c.dtb, c.Alog,
                  c.bc, c.bc + N, c.ld_bc, c.D, b->off, b->n_seq, E, N);
    double cpu_b = hax_now() - t0;
#define GPU_SCAN_BWD()                                                                                       \
    cuda_scan_backward(g_dx, c.ld_x, g_ddr, g_dbc, g_dbc + N, c.ld_bc, g_ddtb, g_dA, g_dD, g_dy, g_ck, g_x, \
                       c.ld_x, g_draw, g_dtb, g_A, g_bc, g_bc + N, c.ld_bc, g_D, b->d_off, b->n_seq, n, E, N, work)
    GPU_SCAN_BWD();
    expect("scan dx", g_dx, dx, c.dx0, nx, TOL_BWD);
    expect("scan ddraw", g_ddr, ddr, c.ddr0, nE, TOL_BWD);
    expect("scan dB|dC", g_dbc, dbc, c.dbc0, nbc, TOL_BWD);
    expect("scan ddt_bias", g_ddtb, ddtb, c.ddtb0, E, TOL_BWD);
    expect("scan dA_log", g_dA, dA, c.dA0, (size_t)E * N, TOL_BWD);
    expect("scan dD", g_dD, dD, c.dD0, E, TOL_BWD);
    {
        // The same forward + backward captured in a CUDA graph (no op allocates
        // or waits for the host) and replayed gives bit-identical results.
        float *y1 = down(g_y, nE), *dx1 = down(g_dx, nx), *dbc1 = down(g_dbc, nbc), *dA1 = down(g_dA, (size_t)E * N);
        cuda_upload(g_dx, c.dx0, sizeof(float) * nx);
        cuda_upload(g_ddr, c.ddr0, sizeof(float) * nE);
        cuda_upload(g_dbc, c.dbc0, sizeof(float) * nbc);
        cuda_upload(g_ddtb, c.ddtb0, sizeof(float) * E);
        cuda_upload(g_dA, c.dA0, sizeof(float) * E * N);
        cuda_upload(g_dD, c.dD0, sizeof(float) * E);
        cuda_zero(g_y, sizeof(float) * nE);
        cuda_graph_begin();
        cuda_scan_forward(g_y, g_ck, g_x, c.ld_x, g_draw, g_dtb, g_A, g_bc, g_bc + N, c.ld_bc, g_D, b->d_off,
                          b->n_seq, n, E, N);
        GPU_SCAN_BWD();
        void *graph = cuda_graph_end();
        cuda_graph_launch(graph);
        float *y2 = down(g_y, nE), *dx2 = down(g_dx, nx), *dbc2 = down(g_dbc, nbc), *dA2 = down(g_dA, (size_t)E * N);
        int same = !memcmp(y1, y2, sizeof(float) * nE) && !memcmp(dx1, dx2, sizeof(float) * nx) &&
                   !memcmp(dbc1, dbc2, sizeof(float) * nbc) && !memcmp(dA1, dA2, sizeof(float) * E * N);
        printf("    scan in a CUDA graph            %s\n", same ? "bit-identical" : "DIFFERENT");
        CHECK(same, "scan replayed from a CUDA graph differs from the direct launches");
        cuda_graph_free(graph);
        free(y1), free(dx1), free(dbc1), free(dA1), free(y2), free(dx2), free(dbc2), free(dA2);
    }
    if (timing) {
        int reps = 10;
        int e0 = cuda_event_record();
        for (int r = 0; r < reps; r++)
            cuda_scan_forward(g_y, g_ck, g_x, c.ld_x, g_draw, g_dtb, g_A, g_bc, g_bc + N, c.ld_bc, g_D, b->d_off,
                              b->n_seq, n, E, N);
        int e1 = cuda_event_record();
        for (int r = 0; r < reps; r++) GPU_SCAN_BWD();
        int e2 = cuda_event_record();
        float gf = cuda_event_ms(e0, e1) / reps, gb = cuda_event_ms(e1, e2) / reps;
        printf("TIME scan fwd (E=%d N=%d)   cpu %9.3f ms  gpu %8.3f ms  %6.0fx\n", E, N, cpu_f * 1e3, gf, cpu_f * 1e3 / gf);
        printf("TIME scan bwd (E=%d N=%d)   cpu %9.3f ms  gpu %8.3f ms  %6.0fx\n", E, N, cpu_b * 1e3, gb, cpu_b * 1e3 / gb);
        printf("TIME scan fwd+bwd per layer       gpu %8.3f ms (issue 11's target: 0.35 ms)\n", gf + gb);
    }
#undef GPU_SCAN_BWD
    void *ptrs[] = {y, ck, dx, ddr, dbc, ddtb, dA, dD};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {g_x, g_draw, g_dtb, g_A, g_bc, g_D, g_dy, g_y, g_ck, g_dx, g_ddr, g_dbc, g_ddtb, g_dA, g_dD, work};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
    scan_case_free(&c);
}

// Lengths around the scan's checkpoints and chunks (CU_SCAN_T 16, CU_SCAN_Q 64), up to the paper's ~464.
static const int k_scan_lens[] = {5, 1, 17, 3, 31, 32, 33, 64, 63, 65, 130, 464, 128, 100};
#define K_SCAN_NSEQ ((int)(sizeof(k_scan_lens) / sizeof(k_scan_lens[0])))

static void test_scan(void) {
    tbatch b = make_batch(k_scan_lens, K_SCAN_NSEQ);
    run_scan(&b, 40, 16, 0);   // one channel block of 64, partly empty
    run_scan(&b, 130, 16, 0);  // three channel blocks: dB|dC through the block rows
    run_scan(&b, 24, 8, 0);
    run_scan(&b, 20, 64, 0);
    run_scan(&b, 5, 256, 0);   // 8 state entries per lane, one channel per warp
    run_scan(&b, 33, 1, 0);    // one lane per channel, 32 channels per warp
    free_batch(&b);
}

// ---------------------------------------------------------------- Mamba-2 SSD

static void run_ssd(const tbatch *b, int H, int P, int N, int timing) {
    int n = b->n_tok, E = H * P;
    int ld_xbc = E + 2 * N + 3, ld_dt = H + 2, ld_y = E + 1;  // x | B | C as one conv output, as in the mixer
    size_t nx = (size_t)n * ld_xbc, ndt = (size_t)n * ld_dt, ny = (size_t)n * ld_y;
    float *xbc = rnd(nx, -1, 1), *dt = rnd(ndt, -3, 1), *dtb = rnd(H, -2, 0), *Alog = rnd(H, 0, 2.7f);
    float *D = rnd(H, 0.5f, 1.5f), *dy = rnd(ny, -1, 1);
    float *y = xmalloc(sizeof(float) * ny), *delta = xmalloc(sizeof(float) * n * H);
    float *ck = xmalloc(sizeof(float) * ssd_ckpt_floats(b->off, b->n_seq, H, P, N));
    float *dx0 = rnd(nx, -1, 1), *ddt0 = rnd(ndt, -1, 1), *dp0 = rnd(3 * H, -1, 1);
    float *dx = copy(dx0, nx), *ddt = copy(ddt0, ndt), *dp = copy(dp0, 3 * H);  // dp: ddt_bias | dA_log | dD
    float *g_xbc = upf(xbc, nx), *g_dt = upf(dt, ndt), *g_dtb = upf(dtb, H), *g_A = upf(Alog, H), *g_D = upf(D, H);
    float *g_dy = upf(dy, ny), *g_y = cuda_malloc(sizeof(float) * ny), *g_delta = cuda_malloc(sizeof(float) * n * H);
    float *g_ck = cuda_malloc(sizeof(float) * cuda_ssd_ckpt_floats(n, b->n_seq, H, P, N));
    float *g_dx = upf(dx0, nx), *g_ddt = upf(ddt0, ndt), *g_dp = upf(dp0, 3 * H);
    void *work = cuda_malloc(cuda_ssd_workspace_bytes(n, b->n_seq, H, P, N));
    cuda_zero(g_y, sizeof(float) * ny);
    memset(y, 0, sizeof(float) * ny);
    char name[64];

    double t0 = hax_now();
    ssd_forward(y, ld_y, delta, ck, xbc, ld_xbc, dt, ld_dt, xbc + E, xbc + E + N, ld_xbc, dtb, Alog, D, b->off,
                b->n_seq, H, P, N);
    double cpu_f = hax_now() - t0;
#define GPU_SSD_FWD()                                                                                      \
    cuda_ssd_forward(g_y, ld_y, g_delta, g_ck, g_xbc, ld_xbc, g_dt, ld_dt, g_xbc + E, g_xbc + E + N, ld_xbc, \
                     g_dtb, g_A, g_D, b->d_off, b->n_seq, n, H, P, N)
    GPU_SSD_FWD();
    snprintf(name, sizeof name, "ssd y (H=%d P=%d N=%d)", H, P, N);
    expect(name, g_y, y, NULL, ny, TOL_FWD);
    expect("ssd delta", g_delta, delta, NULL, (size_t)n * H, TOL_FWD);
    t0 = hax_now();
    // dB and dC land in the x|B|C gradient buffer, beside dx.
    ssd_backward(dx, ld_xbc, ddt, ld_dt, dx + E, dx + E + N, ld_xbc, dp, dp + H, dp + 2 * H, dy, ld_y, delta, ck,
                 xbc, ld_xbc, dt, ld_dt, xbc + E, xbc + E + N, ld_xbc, dtb, Alog, D, b->off, b->n_seq, H, P, N);
    double cpu_b = hax_now() - t0;
#define GPU_SSD_BWD()                                                                                        \
    cuda_ssd_backward(g_dx, ld_xbc, g_ddt, ld_dt, g_dx + E, g_dx + E + N, ld_xbc, g_dp, g_dp + H, g_dp + 2 * H, \
                      g_dy, ld_y, g_delta, g_ck, g_xbc, ld_xbc, g_dt, ld_dt, g_xbc + E, g_xbc + E + N, ld_xbc,  \
                      g_dtb, g_A, g_D, b->d_off, b->n_seq, n, H, P, N, work)
    GPU_SSD_BWD();
    expect("ssd dx|dB|dC", g_dx, dx, dx0, nx, TOL_BWD);
    expect("ssd ddt", g_ddt, ddt, ddt0, ndt, TOL_BWD);
    expect("ssd ddt_bias|dA_log|dD", g_dp, dp, dp0, 3 * H, TOL_BWD);
    {
        // Forward + backward captured in a CUDA graph and replayed: bit-identical.
        float *y1 = down(g_y, ny), *dx1 = down(g_dx, nx), *ddt1 = down(g_ddt, ndt), *dp1 = down(g_dp, 3 * H);
        cuda_upload(g_dx, dx0, sizeof(float) * nx);
        cuda_upload(g_ddt, ddt0, sizeof(float) * ndt);
        cuda_upload(g_dp, dp0, sizeof(float) * 3 * H);
        cuda_zero(g_y, sizeof(float) * ny);
        cuda_graph_begin();
        GPU_SSD_FWD();
        GPU_SSD_BWD();
        void *graph = cuda_graph_end();
        cuda_graph_launch(graph);
        float *y2 = down(g_y, ny), *dx2 = down(g_dx, nx), *ddt2 = down(g_ddt, ndt), *dp2 = down(g_dp, 3 * H);
        int same = !memcmp(y1, y2, sizeof(float) * ny) && !memcmp(dx1, dx2, sizeof(float) * nx) &&
                   !memcmp(ddt1, ddt2, sizeof(float) * ndt) && !memcmp(dp1, dp2, sizeof(float) * 3 * H);
        printf("    ssd in a CUDA graph             %s\n", same ? "bit-identical" : "DIFFERENT");
        CHECK(same, "ssd replayed from a CUDA graph differs from the direct launches");
        cuda_graph_free(graph);
        free(y1), free(dx1), free(ddt1), free(dp1), free(y2), free(dx2), free(ddt2), free(dp2);
    }
    if (timing) {
        int reps = 10;
        int e0 = cuda_event_record();
        for (int r = 0; r < reps; r++) GPU_SSD_FWD();
        int e1 = cuda_event_record();
        for (int r = 0; r < reps; r++) GPU_SSD_BWD();
        int e2 = cuda_event_record();
        float gf = cuda_event_ms(e0, e1) / reps, gb = cuda_event_ms(e1, e2) / reps;
        printf("TIME ssd fwd (H=%d P=%d N=%d) cpu %9.3f ms  gpu %8.3f ms  %6.0fx\n", H, P, N, cpu_f * 1e3, gf, cpu_f * 1e3 / gf);
        printf("TIME ssd bwd (H=%d P=%d N=%d) cpu %9.3f ms  gpu %8.3f ms  %6.0fx\n", H, P, N, cpu_b * 1e3, gb, cpu_b * 1e3 / gb);
    }
#undef GPU_SSD_FWD
#undef GPU_SSD_BWD
    void *ptrs[] = {xbc, dt, dtb, Alog, D, dy, y, delta, ck, dx0, ddt0, dp0, dx, ddt, dp};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {g_xbc, g_dt, g_dtb, g_A, g_D, g_dy, g_y, g_delta, g_ck, g_dx, g_ddt, g_dp, work};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
}

// Lengths across the GPU's 64-position chunks too (63, 64, 65, 130).
static const int k_ssd_lens[] = {63, 1, 64, 17, 65, 3, 130, 100};

static void test_ssd(void) {
    tbatch b = make_batch(k_lens, K_NSEQ);
    run_ssd(&b, 3, 16, 32, 0);  // the paper's P and N, 3 heads
    run_ssd(&b, 2, 8, 16, 0);
    run_ssd(&b, 2, 4, 64, 0);   // four 16-row tiles of N
    free_batch(&b);
    b = make_batch(k_ssd_lens, (int)(sizeof k_ssd_lens / sizeof k_ssd_lens[0]));
    run_ssd(&b, 3, 16, 32, 0);
    run_ssd(&b, 2, 40, 20, 0);  // P, N not multiples of 16 (zero-padded tiles)
    free_batch(&b);
}

// ---------------------------------------------------------------- gated RMSNorm

static void test_gated_norm(void) {
    int n = 290, E = 96, ld_y = E + 4, ld_z = 2 * E + 1, ld_o = E + 2;
    float *y = rnd((size_t)n * ld_y, -2, 2), *z = rnd((size_t)n * ld_z, -3, 3), *w = rnd(E, 0.5f, 1.5f);
    float *out = rnd((size_t)n * ld_o, -1, 1), *rstd = xmalloc(sizeof(float) * n), *dout = rnd((size_t)n * ld_o, -1, 1);
    float *dy0 = rnd((size_t)n * ld_y, -1, 1), *dz0 = rnd((size_t)n * ld_z, -1, 1), *dw0 = rnd(E, -1, 1);
    float *dy = copy(dy0, (size_t)n * ld_y), *dz = copy(dz0, (size_t)n * ld_z), *dw = copy(dw0, E);
    float *g_y = upf(y, (size_t)n * ld_y), *g_z = upf(z, (size_t)n * ld_z), *g_w = upf(w, E);
    float *g_out = upf(out, (size_t)n * ld_o), *g_rstd = cuda_malloc(sizeof(float) * n), *g_dout = upf(dout, (size_t)n * ld_o);
    float *g_dy = upf(dy0, (size_t)n * ld_y), *g_dz = upf(dz0, (size_t)n * ld_z), *g_dw = upf(dw0, E);
    void *work = cuda_malloc(cuda_norm_workspace_bytes(n, E));
    gated_norm_forward(out, ld_o, rstd, y, ld_y, z, ld_z, w, n, E, 1e-5f);
    cuda_gated_norm_forward(g_out, ld_o, g_rstd, g_y, ld_y, g_z, ld_z, g_w, n, E, 1e-5f);
    expect("gated norm out", g_out, out, NULL, (size_t)n * ld_o, TOL_FWD);
    expect("gated norm rstd", g_rstd, rstd, NULL, n, TOL_FWD);
    gated_norm_backward(dy, ld_y, dz, ld_z, dw, dout, ld_o, rstd, y, ld_y, z, ld_z, w, n, E);
    cuda_gated_norm_backward(g_dy, ld_y, g_dz, ld_z, g_dw, g_dout, ld_o, g_rstd, g_y, ld_y, g_z, ld_z, g_w, n, E, work);
    expect("gated norm dy", g_dy, dy, dy0, (size_t)n * ld_y, TOL_BWD);
    expect("gated norm dz", g_dz, dz, dz0, (size_t)n * ld_z, TOL_BWD);
    expect("gated norm dw", g_dw, dw, dw0, E, TOL_BWD);
    void *ptrs[] = {y, z, w, out, rstd, dout, dy0, dz0, dw0, dy, dz, dw};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {g_y, g_z, g_w, g_out, g_rstd, g_dout, g_dy, g_dz, g_dw, work};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
}

// ---------------------------------------------------------------- paper size

// One CPU call, then the GPU op once (warm-up) and the mean of 10 calls.
#define TIME_OP(label, cpu_stmt, gpu_stmt)                                                                   \
    do {                                                                                                     \
        double t0_ = hax_now();                                                                              \
        cpu_stmt;                                                                                            \
        double cpu_ = (hax_now() - t0_) * 1e3;                                                               \
        gpu_stmt;                                                                                            \
        int e0_ = cuda_event_record();                                                                       \
        for (int r_ = 0; r_ < 10; r_++) gpu_stmt;                                                            \
        float gpu_ = cuda_event_ms(e0_, cuda_event_record()) / 10;                                           \
        printf("TIME %-26s cpu %9.3f ms  gpu %8.3f ms  %6.0fx\n", label, cpu_, gpu_, cpu_ / gpu_);          \
    } while (0)

static void test_paper_size(void) {
    int n_seq = 64, lens[64];
    for (int s = 0; s < n_seq; s++) lens[s] = 400 + (s * 37) % 129;  // 400..528, mean ~464
    tbatch b = make_batch(lens, n_seq);
    int n = b.n_tok, d = 64, E = 128, V = 100, K = 4;
    printf("    paper size: %d sequences, %d positions, d %d, E %d\n", n_seq, n, d, E);
    size_t nd = (size_t)n * d, nE = (size_t)n * E, n2E = 2 * nE, nV = (size_t)n * V;
    int32_t *ids = xmalloc(sizeof(int32_t) * n);
    uint8_t *mask = xmalloc(n);
    for (int t = 0; t < n; t++) ids[t] = (int32_t)((t * 7919) % V), mask[t] = (uint8_t)(t % 5 == 0);
    float *h = rnd(nd, -1, 1), *h2 = rnd(nd, -1, 1), *Wemb = rnd((size_t)V * d, -1, 1), *wd = rnd(d, 0.5f, 1.5f);
    float *Win = rnd((size_t)2 * E * d, -0.2f, 0.2f), *xz = rnd(n2E, -1, 1), *big = rnd(n2E, -1, 1);
    float *wc = rnd((size_t)E * K, -0.5f, 0.5f), *bc = rnd(E, -0.5f, 0.5f), *wE = rnd(E, 0.5f, 1.5f);
    float *rstd = xmalloc(sizeof(float) * n), *outE = xmalloc(sizeof(float) * nE), *pre = xmalloc(sizeof(float) * nE);
    float *logits = xmalloc(sizeof(float) * nV), *dl = xmalloc(sizeof(float) * nV);
    float *g_h = upf(h, nd), *g_h2 = upf(h2, nd), *g_Wemb = upf(Wemb, (size_t)V * d), *g_wd = upf(wd, d);
    float *g_Win = upf(Win, (size_t)2 * E * d), *g_xz = upf(xz, n2E), *g_big = upf(big, n2E);
    float *g_wc = upf(wc, (size_t)E * K), *g_bc = upf(bc, E), *g_wE = upf(wE, E);
    float *g_rstd = cuda_malloc(sizeof(float) * n), *g_outE = cuda_malloc(sizeof(float) * nE);
    float *g_pre = cuda_malloc(sizeof(float) * nE), *g_logits = cuda_malloc(sizeof(float) * nV);
    float *g_dl = cuda_malloc(sizeof(float) * nV), *g_dW = cuda_malloc(sizeof(float) * (size_t)2 * E * d);
    float *dW = xcalloc((size_t)2 * E * d, sizeof(float));
    int32_t *g_ids = up(ids, sizeof(int32_t) * n);
    uint8_t *g_mask = up(mask, n);
    double *g_loss = cuda_malloc(sizeof(double));
    size_t wb = cuda_norm_workspace_bytes(n, E);
    if (cuda_conv_workspace_bytes(n, n_seq, E, K) > wb) wb = cuda_conv_workspace_bytes(n, n_seq, E, K);
    if (cuda_embedding_workspace_bytes(n, d, V) > wb) wb = cuda_embedding_workspace_bytes(n, d, V);
    if (cuda_ce_workspace_bytes(n, n_seq) > wb) wb = cuda_ce_workspace_bytes(n, n_seq);
    void *work = cuda_malloc(wb);

    TIME_OP("embedding fwd", embedding_forward(h, ids, Wemb, n, d, V), cuda_embedding_forward(g_h, g_ids, g_Wemb, n, d, V));
    TIME_OP("embedding bwd", embedding_backward(Wemb, h2, ids, n, d), cuda_embedding_backward(g_Wemb, g_h2, g_ids, n, d, V, work));
    TIME_OP("rmsnorm fwd (d 64)", rmsnorm_forward(h2, rstd, h, wd, n, d, 1e-5f),
            cuda_rmsnorm_forward(g_h2, g_rstd, g_h, g_wd, n, d, 1e-5f));
    TIME_OP("rmsnorm bwd (d 64)", rmsnorm_backward(h, wd, h2, h, rstd, wd, n, d),
            cuda_rmsnorm_backward(g_h, g_wd, g_h2, g_h, g_rstd, g_wd, n, d, work));
    TIME_OP("in_proj fwd (64->256)", linear_forward(xz, 2 * E, h, d, Win, NULL, n, d, 2 * E),
            cuda_linear_forward(g_xz, 2 * E, g_h, d, g_Win, NULL, n, d, 2 * E));
    TIME_OP("in_proj bwd (64->256)", linear_backward(h2, d, dW, NULL, xz, 2 * E, h, d, Win, n, d, 2 * E),
            cuda_linear_backward(g_h2, d, g_dW, NULL, g_xz, 2 * E, g_h, d, g_Win, n, d, 2 * E));
    TIME_OP("conv+silu fwd (C 128)", conv_silu_forward(outE, pre, xz, 2 * E, wc, bc, b.off, n_seq, E, K),
            cuda_conv_silu_forward(g_outE, g_pre, g_xz, 2 * E, g_wc, g_bc, b.d_off, n_seq, n, E, K));
    TIME_OP("conv+silu bwd (C 128)", conv_silu_backward(big, 2 * E, wc, bc, outE, pre, xz, 2 * E, wc, b.off, n_seq, E, K),
            cuda_conv_silu_backward(g_big, 2 * E, g_wc, g_bc, g_outE, g_pre, g_xz, 2 * E, g_wc, b.d_off, n_seq, n, E, K, work));
    TIME_OP("gated norm fwd (E 128)", gated_norm_forward(outE, E, rstd, xz, 2 * E, xz + E, 2 * E, wE, n, E, 1e-5f),
            cuda_gated_norm_forward(g_outE, E, g_rstd, g_xz, 2 * E, g_xz + E, 2 * E, g_wE, n, E, 1e-5f));
    TIME_OP("gated norm bwd (E 128)",
            gated_norm_backward(big, 2 * E, big + E, 2 * E, wE, outE, E, rstd, xz, 2 * E, xz + E, 2 * E, wE, n, E),
            cuda_gated_norm_backward(g_big, 2 * E, g_big + E, 2 * E, g_wE, g_outE, E, g_rstd, g_xz, 2 * E, g_xz + E, 2 * E,
                                     g_wE, n, E, work));
    TIME_OP("logits fwd (V 100)", logits_forward(logits, h, Wemb, n, d, V), cuda_logits_forward(g_logits, g_h, g_Wemb, n, d, V));
    TIME_OP("ce fwd", ce_forward(logits, ids, mask, b.off, n_seq, V, NULL, NULL),
            cuda_ce_forward(g_loss, NULL, NULL, g_logits, g_ids, g_mask, b.d_off, n_seq, n, V, work));
    TIME_OP("ce bwd", ce_backward(dl, logits, ids, mask, n, V, 1e-3f),
            cuda_ce_backward(g_dl, g_logits, g_ids, g_mask, n, V, 1e-3f));
    TIME_OP("logits bwd (V 100)", logits_backward(h, Wemb, dl, h2, Wemb, n, d, V),
            cuda_logits_backward(g_h, g_Wemb, g_dl, g_h2, g_Wemb, n, d, V));
    cuda_sync();
    // The scans at this size, compared as well as timed.
    run_scan(&b, E, 16, 1);
    run_ssd(&b, 8, 16, 32, 1);
    void *ptrs[] = {ids, mask, h, h2, Wemb, wd, Win, xz, big, wc, bc, wE, rstd, outE, pre, logits, dl, dW};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {g_h, g_h2, g_Wemb, g_wd, g_Win, g_xz, g_big, g_wc, g_bc, g_wE, g_rstd, g_outE, g_pre,
                     g_logits, g_dl, g_dW, g_ids, g_mask, g_loss, work};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
    free_batch(&b);
}

// A token id outside [0, V) sets the device error flag: the next cuda_sync
// dies with one line naming it. Run in a fresh process (this program with
// --bad-token-child; a CUDA context does not survive fork).
static const char *g_self;

static int bad_token_child(void) {
    int32_t ids[3] = {1, 100, 2};  // 100 with V = 100
    float W[100 * 4] = {0};
    int32_t *d_ids = up(ids, sizeof ids);
    float *d_W = upf(W, 400), *d_out = cuda_malloc(sizeof(float) * 12);
    cuda_embedding_forward(d_out, d_ids, d_W, 3, 4, 100);
    cuda_sync();
    return 0;  // not reached when the flag works
}

static void test_bad_token_id(void) {
    char cmd[1200], out[1024] = "";
    snprintf(cmd, sizeof cmd, "'%s' --bad-token-child 2>&1", g_self);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL, "popen failed");
    if (!p) return;
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = 0;
    int status = pclose(p);
    printf("    bad token id: %s", out);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "expected exit status 1, found %d", status);
    CHECK(strstr(out, "hax: cuda: embedding: token ids") != NULL, "expected the token-id message, found: %s", out);
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;  // --quick: no paper-size timings
    g_self = argv[0];
    if (cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    cuda_init(0);
    if (argc > 1 && strcmp(argv[1], "--bad-token-child") == 0) return bad_token_child();
    printf("device: %s\n", cuda_device_name());
    if (argc > 1 && strcmp(argv[1], "--paper-only") == 0) {  // for profilers: the paper-size part alone
        RUN(test_paper_size);
        return test_summary();
    }
    RUN(test_linear);
    RUN(test_embedding);
    RUN(test_rmsnorm_plain);
    RUN(test_add_rmsnorm);
    RUN(test_logits_ce);
    RUN(test_conv);
    RUN(test_scan);
    RUN(test_ssd);
    RUN(test_gated_norm);
    RUN(test_bad_token_id);
    if (!quick) RUN(test_paper_size);
    return test_summary();
}
