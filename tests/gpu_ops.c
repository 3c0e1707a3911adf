// gpu_ops.c: every CUDA op but the scans (cuda/ops/*.h) against its CPU op
// (src/ops/*.h) on random ragged packed batches (lengths 1, 3, 4, 5 around the
// conv width K = 4, up to 140): outputs within 1e-5 and every gradient within
// 1e-4 (normwise relative error; gradients accumulate into random initial
// values and the increments are compared). The gate, add_attn, the MLP and
// the attention also in bf16-pure (their bf16 tensors element by element, in
// bf16 steps; gpu_util.h expect_bf16). Then one timing per op at the
// paper's size (64 sequences of ~464 positions, d 64, E 128), CPU vs GPU. The
// attention's window kernels old vs tiled (HAX_WINDOW_ATTN) bit for bit on
// small odd cases and the whole op, then at the paper's size with a TIME
// attn line per kernel and version. The scans are in tests/gpu_scans.c.
// Skips (exit 0) without a CUDA device.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "cuda/ops/basic.h"
#include "cuda/core/common.h"
#include "cuda/ops/conv.h"
#include "cuda/ops/attn.h"
#include "cuda/ops/gate.h"
#include "cuda/ops/linear.h"
#include "cuda/ops/mlp.h"
#include "src/ops/linear.h"
#include "src/ops/basic.h"
#include "src/ops/attn.h"
#include "src/ops/conv.h"
#include "src/ops/gate.h"
#include "src/ops/mlp.h"
#include "gpu_util.h"

#include <sys/wait.h>


// ---------------------------------------------------------------- linear

// One shape (ld_in, ld_out: padded rows), with or without the bias. The
// backward twice from the same start must give the same bits.
static void test_linear_case(int n, int in, int out, int ld_in, int ld_out, int with_bias) {
    printf("    n %d, %d -> %d%s\n", n, in, out, with_bias ? ", bias" : "");
    float *x = rnd((size_t)n * ld_in, -1, 1), *W = rnd((size_t)out * in, -0.3f, 0.3f), *b = rnd(out, -1, 1);
    float *y = rnd((size_t)n * ld_out, -1, 1), *dy = rnd((size_t)n * ld_out, -1, 1);
    float *dx0 = rnd((size_t)n * ld_in, -1, 1), *dW0 = rnd((size_t)out * in, -1, 1), *db0 = rnd(out, -1, 1);
    float *d_x = upf(x, (size_t)n * ld_in), *d_W = upf(W, (size_t)out * in), *d_b = upf(b, out);
    float *d_y = upf(y, (size_t)n * ld_out), *d_dy = upf(dy, (size_t)n * ld_out);
    float *d_dx = upf(dx0, (size_t)n * ld_in), *d_dW = upf(dW0, (size_t)out * in), *d_db = upf(db0, out);
    const float *bb = with_bias ? b : NULL, *d_bb = with_bias ? d_b : NULL;
    float *db_ = with_bias ? d_db : NULL;
    linear_forward(y, ld_out, x, ld_in, W, bb, n, in, out);
    cuda_linear_forward(d_y, ld_out, d_x, ld_in, d_W, d_bb, n, in, out);
    expect("linear out", d_y, y, NULL, (size_t)n * ld_out, TOL_FWD);
    float *dx = copy(dx0, (size_t)n * ld_in), *dW = copy(dW0, (size_t)out * in), *db = copy(db0, out);
    linear_backward(dx, ld_in, dW, with_bias ? db : NULL, dy, ld_out, x, ld_in, W, n, in, out);
    cuda_linear_backward(d_dx, ld_in, d_dW, db_, d_dy, ld_out, d_x, ld_in, d_W, n, in, out);
    expect("linear dinp", d_dx, dx, dx0, (size_t)n * ld_in, TOL_BWD);
    expect("linear dweight", d_dW, dW, dW0, (size_t)out * in, TOL_BWD);
    if (with_bias) expect("linear dbias", d_db, db, db0, out, TOL_BWD);
    float *w1 = down(d_dW, (size_t)out * in), *b1 = down(d_db, out);
    cuda_upload(d_dW, dW0, sizeof(float) * out * in);
    cuda_upload(d_db, db0, sizeof(float) * out);
    cuda_linear_backward(NULL, 0, d_dW, db_, d_dy, ld_out, d_x, ld_in, d_W, n, in, out);
    float *w2 = down(d_dW, (size_t)out * in), *b2 = down(d_db, out);
    CHECK(memcmp(w1, w2, sizeof(float) * out * in) == 0 && memcmp(b1, b2, sizeof(float) * out) == 0,
          "linear dweight/dbias: expected the same bits on a rerun, found a difference");
    void *ptrs[] = {x, W, b, y, dy, dx0, dW0, db0, dx, dW, db, w1, b1, w2, b2};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {d_x, d_W, d_b, d_y, d_dy, d_dx, d_dW, d_db};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
}

// n > the CPU's 256-row blocks; the shapes of the mixers (dt_proj's 8 inputs
// of a 40-wide row, x_proj's 40 outputs, Mamba-2's 328-wide in_proj: many
// K chunks of the dW GEMM, 16-wide tiles); the key scorer's one output; fewer
// rows than a chunk; a weight too big for the dW scratch (the cuBLAS path).
static void test_linear(void) {
    test_linear_case(300, 48, 80, 53, 85, 1);
    test_linear_case(5000, 8, 128, 40, 128, 1);
    test_linear_case(5000, 128, 40, 128, 40, 1);
    test_linear_case(4099, 64, 328, 64, 328, 0);
    test_linear_case(3000, 16, 1, 16, 1, 1);
    test_linear_case(7, 5, 3, 6, 3, 1);
    test_linear_case(40, 2048, 2049, 2048, 2049, 1);
}

// ---------------------------------------------------------------- embedding, norms, logits, CE

// V 100: the shared-memory path (d 40: a partial 32-column tile; 60,000
// tokens: several 32-token groups a warp); V 500: the per-id scan. The
// backward twice from the same start must give the same bits.
static void test_embedding_case(int n, int d, int V) {
    printf("    n %d, d %d, V %d\n", n, d, V);
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
    float *first = down(d_dW, (size_t)V * d);
    cuda_upload(d_dW, dW0, sizeof(float) * V * d);
    cuda_embedding_backward(d_dW, d_dout, d_ids, n, d, V, work);
    float *again = down(d_dW, (size_t)V * d);
    CHECK(memcmp(first, again, sizeof(float) * V * d) == 0,
          "embedding dW: expected the same bits on a rerun, found a difference");
    free(ids), free(W), free(out), free(dout), free(dW0), free(dW), free(first), free(again);
    cuda_free(d_ids), cuda_free(d_W), cuda_free(d_out), cuda_free(d_dout), cuda_free(d_dW), cuda_free(work);
}

static void test_embedding(void) {
    test_embedding_case(2500, 64, 100);
    test_embedding_case(2500, 40, 100);
    test_embedding_case(2500, 40, 500);
    test_embedding_case(60000, 40, 100);  // more than 32 tokens a warp (the chunk count is capped)
}

// The engine sizes one workspace for its largest batch and runs every smaller
// batch in it, so each op's workspace must not shrink as n grows. (The
// embedding's chunk count peaks where its tokens per warp leave 32: a size
// taken from the count at n overflowed for a smaller batch, found by
// compute-sanitizer in a V 288 run.)
static void test_workspace_monotone(void) {
    const int Vs[] = {100, 288, 384, 500};
    int bad = 0;
    for (int k = 0; k < 4; k++) {
        size_t prev = 0;
        for (int n = 1; n <= 120000; n += 13) {
            size_t w = cuda_embedding_workspace_bytes(n, 64, Vs[k]);
            if (w < prev && bad++ < 3) printf("    embedding V %d: %zu bytes at n %d, %zu before\n", Vs[k], w, n, prev);
            prev = w;
        }
    }
    size_t pn = 0, pc = 0, pe = 0;
    for (int n = 1; n <= 120000; n += 13) {
        size_t wn = cuda_norm_workspace_bytes(n, 128), wc = cuda_conv_workspace_bytes(n, 64, 256, 4);
        size_t we = cuda_ce_workspace_bytes(n, 64);
        if ((wn < pn || wc < pc || we < pe) && bad++ < 6) printf("    norm/conv/ce workspace shrinks at n %d\n", n);
        pn = wn, pc = wc, pe = we;
    }
    CHECK(bad == 0, "%d workspace sizes shrink as the batch grows", bad);
}

// d 64: the fused backward with its dw partials; d 800: the separate dw kernels.
static void test_rmsnorm(int fused, int d) {
    int n = 333;
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

static void test_rmsnorm_plain(void) { test_rmsnorm(0, 64); }
static void test_add_rmsnorm(void) { test_rmsnorm(1, 64); }
static void test_add_rmsnorm_wide(void) { test_rmsnorm(1, 800); }

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
        // bf16-pure: torch's op sequence on bf16 logits (src/ops/basic.h), the scale as a
        // value and from device memory (a graph step's normaliser)
        float *lg16 = copy(logits, (size_t)n * V), G = hax_ce_grad_scale(1, 37.0);
        round_bf16(lg16, lg16, (long)n * V);
        float *d_lg16 = upf(lg16, (size_t)n * V), *d_G = upf(&G, 1);
        ce_backward_bf16(dl, lg16, lab, m, n, V, G);
        cuda_ce_backward_bf16(d_dl, d_lg16, d_lab, dm, n, V, G, NULL);
        expect_bf16(with_mask ? "ce dlogits bf16 (mask)" : "ce dlogits bf16", d_dl, dl, (size_t)n * V, 0.001, 0);
        cuda_ce_backward_bf16(d_dl, d_lg16, d_lab, dm, n, V, 0.0f, d_G);
        expect_bf16("ce dlogits bf16, device scale", d_dl, dl, (size_t)n * V, 0.001, 0);
        free(lg16), cuda_free(d_lg16), cuda_free(d_G);
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

// K 4 and 2 on the ragged lengths; 40 sequences up to 140 long (several chunks
// of 64 positions, more than 32 sequence totals). The backward twice from the
// same start must give the same bits.
static void test_conv_case(const int *lens, int n_seq, int K) {
    printf("    %d sequences, K %d\n", n_seq, K);
    tbatch b = make_batch(lens, n_seq);
    int n = b.n_tok, C = 72, ld = C + 9;
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
    float *di1 = down(d_di, (size_t)n * ld), *dw1 = down(d_dw, (size_t)C * K);
    cuda_upload(d_di, di0, sizeof(float) * n * ld);
    cuda_upload(d_dw, dw0, sizeof(float) * C * K);
    cuda_conv_silu_backward(d_di, ld, d_dw, d_db, d_dout, d_pre, d_inp, ld, d_w, b.d_off, b.n_seq, n, C, K, work);
    float *di2 = down(d_di, (size_t)n * ld), *dw2 = down(d_dw, (size_t)C * K);
    CHECK(memcmp(di1, di2, sizeof(float) * n * ld) == 0 && memcmp(dw1, dw2, sizeof(float) * C * K) == 0,
          "conv backward: expected the same bits on a rerun, found a difference");
    free(di1), free(dw1), free(di2), free(dw2);
    void *ptrs[] = {inp, w, bias, out, pre, dout, di0, dw0, db0, di, dw, db};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {d_inp, d_w, d_b, d_out, d_pre, d_dout, d_di, d_dw, d_db, work};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
    free_batch(&b);
}

static void test_conv(void) {
    test_conv_case(k_lens, K_NSEQ, 4);
    test_conv_case(k_lens, K_NSEQ, 2);
    int lens[40];
    for (int s = 0; s < 40; s++) lens[s] = 1 + (s * 37) % 140;
    test_conv_case(lens, 40, 4);
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

// ---------------------------------------------------------------- gate, add_attn

// The Mamba gate with and without the sparse branch's attn, and add_attn,
// in fp32 (bf16 = 0: normwise tolerances) and in bf16-pure (bf16 = 1: the
// inputs the engine gives them are bf16 values, y excepted, which is the
// scan's fp32 inside; every element compared in bf16 steps). The CPU and GPU
// formulas are the same, only silu's expf and the device's fused
// multiply-adds may round a last fp32 bit apart, which moves a bf16 rounding
// only within ~2^-16 of a midpoint: at most 1% of the elements may differ, 0.2%
// by more than one step (a flipped share inside dz's bf16 sum). The dEv sums
// (bf16 products, summed in double in the same order) within 2e-3: one
// flipped product of ~nE moves the sum by 2^-8 of a term.
static void test_gate_regime(int bf16) {
    int n = 333, E = 96;
    size_t nE = (size_t)n * E, n2E = 2 * nE;
    float *y = rnd(nE, -2, 2), *xz = rnd(n2E, -3, 3), *attn = rnd(nE, -1, 1), *Ev = rnd(E, -1, 1);
    float *dout = rnd(nE, -1, 1), *o = xmalloc(sizeof(float) * nE), *dy = xmalloc(sizeof(float) * nE);
    float *dxz = rnd(n2E, -1, 1), *da0 = rnd(nE, -1, 1), *dE0 = rnd(E, -1, 1);
    if (bf16) {
        float *in[] = {xz, attn, Ev, dout, da0};
        size_t len[] = {n2E, nE, E, nE, nE};
        for (int i = 0; i < 5; i++) round_bf16(in[i], in[i], (long)len[i]);
    }
    float *d_y = upf(y, nE), *d_xz = upf(xz, n2E), *d_attn = upf(attn, nE), *d_Ev = upf(Ev, E);
    float *d_dout = upf(dout, nE), *d_o = cuda_malloc(sizeof(float) * nE), *d_dy = cuda_malloc(sizeof(float) * nE);
    float *d_dxz = upf(dxz, n2E), *d_prod = cuda_malloc(sizeof(float) * nE);
    void *work = cuda_malloc(cuda_gate_work_bytes(n, E));
    double tol_sum = bf16 ? 2e-3 : TOL_BWD;
    for (int with_attn = 0; with_attn < 2; with_attn++) {
        const float *a = with_attn ? attn : NULL, *g_a = with_attn ? d_attn : NULL;
        float *da = copy(da0, nE), *dE = copy(dE0, E), *d_da = upf(da0, nE), *d_dE = upf(dE0, E);
        mamba_gate_forward(o, y, xz, a, Ev, n, E, bf16);
        cuda_gate_forward(d_o, d_y, d_xz, g_a, d_Ev, n, E, bf16);
        if (bf16) expect_bf16("gate out", d_o, o, nE, 0.01, 0.002);
        else expect("gate out", d_o, o, NULL, nE, TOL_FWD);
        mamba_gate_backward(dy, dxz, with_attn ? da : NULL, with_attn ? dE : NULL, dout, y, xz, a, Ev, n, E, bf16);
        cuda_gate_backward(d_dy, d_dxz, with_attn ? d_da : NULL, with_attn ? d_dE : NULL, d_prod, d_dout, d_y, d_xz,
                           g_a, d_Ev, n, E, work, bf16);
        expect("gate dy", d_dy, dy, NULL, nE, TOL_BWD);  // fp32 in both regimes (the scan's inside)
        if (bf16) {  // the z half holds bf16 values; the x half is untouched
            float *gz = down(d_dxz, n2E), *cz = xmalloc(sizeof(float) * nE), *hz = xmalloc(sizeof(float) * nE);
            float *cx = xmalloc(sizeof(float) * nE), *hx = xmalloc(sizeof(float) * nE);
            for (int t = 0; t < n; t++)
                for (int c = 0; c < E; c++) {
                    cz[(size_t)t * E + c] = dxz[(size_t)t * 2 * E + E + c];
                    hz[(size_t)t * E + c] = gz[(size_t)t * 2 * E + E + c];
                    cx[(size_t)t * E + c] = dxz[(size_t)t * 2 * E + c];
                    hx[(size_t)t * E + c] = gz[(size_t)t * 2 * E + c];
                }
            float *d_hz = upf(hz, nE), *d_hx = upf(hx, nE);
            expect_bf16("gate dz", d_hz, cz, nE, 0.01, 0.002);
            // only the x half: the z half may differ by a step (above)
            expect("gate dx (x half kept)", d_hx, cx, NULL, nE, 0);
            cuda_free(d_hz), cuda_free(d_hx), free(gz), free(cz), free(hz), free(cx), free(hx);
        } else {
            expect("gate dxz", d_dxz, dxz, NULL, n2E, TOL_BWD);
        }
        if (with_attn) {
            if (bf16) expect_bf16("gate dattn", d_da, da, nE, 0.01, 0.002);
            else expect("gate dattn", d_da, da, da0, nE, TOL_BWD);
            expect("gate dEv", d_dE, dE, dE0, E, tol_sum);
            float *yy = copy(y, nE);
            if (bf16) round_bf16(yy, yy, (long)nE), cuda_upload(d_y, yy, sizeof(float) * nE);  // the SSD's bf16 y
            add_attn_forward(yy, attn, Ev, n, E, bf16);
            cuda_add_attn_forward(d_y, d_attn, d_Ev, n, E, bf16);
            if (bf16) expect_bf16("add_attn y", d_y, yy, nE, 0.01, 0.002);
            else expect("add_attn y", d_y, yy, NULL, nE, TOL_FWD);
            add_attn_backward(da, dE, dout, attn, Ev, n, E, bf16);
            cuda_add_attn_backward(d_da, d_dE, d_prod, d_dout, d_attn, d_Ev, n, E, work, bf16);
            if (bf16) expect_bf16("add_attn dattn", d_da, da, nE, 0.01, 0.002);
            else expect("add_attn dattn", d_da, da, da0, nE, TOL_BWD);
            expect("add_attn dEv", d_dE, dE, dE0, E, tol_sum);
            free(yy);
            cuda_upload(d_y, y, sizeof(float) * nE);
        }
        free(da), free(dE);
        cuda_free(d_da), cuda_free(d_dE);
    }
    void *ptrs[] = {y, xz, attn, Ev, dout, o, dy, dxz, da0, dE0};
    for (size_t i = 0; i < sizeof(ptrs) / sizeof(ptrs[0]); i++) free(ptrs[i]);
    void *dptrs[] = {d_y, d_xz, d_attn, d_Ev, d_dout, d_o, d_dy, d_dxz, d_prod, work};
    for (size_t i = 0; i < sizeof(dptrs) / sizeof(dptrs[0]); i++) cuda_free(dptrs[i]);
}

static void test_gate(void) { test_gate_regime(0); }
static void test_gate_bf16(void) { test_gate_regime(1); }

// bf16-pure's accumulation of a bf16 contribution (add_bf16_rows): strided
// rows, the same formula on both sides, so bit for bit.
static void test_add_bf16_rows(void) {
    int rows = 301, width = 70, ld_d = 75, ld_s = 71;
    float *dst = rnd((size_t)rows * ld_d, -4, 4), *src = rnd((size_t)rows * ld_s, -1, 1);
    round_bf16(dst, dst, (long)rows * ld_d);
    float *d_dst = upf(dst, (size_t)rows * ld_d), *d_src = upf(src, (size_t)rows * ld_s);
    add_bf16_rows(dst, ld_d, src, ld_s, width, rows);
    cuda_add_bf16_rows(d_dst, ld_d, d_src, ld_s, width, rows);
    expect_bf16("add_bf16_rows", d_dst, dst, (size_t)rows * ld_d, 0, 0);
    free(dst), free(src);
    cuda_free(d_dst), cuda_free(d_src);
}

// ---------------------------------------------------------------- Samba's GatedMLP and attention

// The MLP on a batch, CPU vs GPU, fp32 (bf16 = 0: normwise) or bf16-pure
// (bf16 inputs; g, u, s, da in bf16 steps: the GEMMs sum in other orders,
// so a rounding may move one step, at most 1% of the elements, 0.5% by more
// (da's two shares summed in bf16); out and the weight gradients are fp32
// sums of bf16 values, within 2e-3 normwise).
static void test_mlp_regime(int bf16) {
    int n = 301, d = 32, M = 256;
    size_t nd = (size_t)n * d, nw = 3 * (size_t)M * d;
    float *a = rnd(nd, -1, 1), *w = rnd(nw, -0.2f, 0.2f), *dout = rnd(nd, -1, 1), *da0 = rnd(nd, -1, 1);
    float *g0 = rnd(nw, -1, 1);
    if (bf16) round_bf16(a, a, (long)nd), round_bf16(w, w, (long)nw), round_bf16(dout, dout, (long)nd),
        round_bf16(da0, da0, (long)nd);
    float *buf = xmalloc(sizeof(float) * mlp_acts_floats(n, M)), *out = xmalloc(sizeof(float) * nd);
    float *scratch = xmalloc(sizeof(float) * mlp_bwd_floats(n, d, M)), *da = copy(da0, nd), *g = copy(g0, nw);
    mlp_acts acts;
    mlp_acts_assign(&acts, buf, n, M);
    mlp_params p = {w, w + M * d, w + 2 * M * d};
    mlp_grads gr = {g, g + M * d, g + 2 * M * d};
    float *d_a = upf(a, nd), *d_w = upf(w, nw), *d_dout = upf(dout, nd), *d_da = upf(da0, nd), *d_g = upf(g0, nw);
    float *d_buf = cuda_malloc(sizeof(float) * mlp_acts_floats(n, M)), *d_out = cuda_malloc(sizeof(float) * nd);
    void *work = cuda_malloc(cuda_mlp_workspace_bytes(n, d, M));
    mlp_acts dacts;
    mlp_acts_assign(&dacts, d_buf, n, M);
    mlp_params dp = {d_w, d_w + M * d, d_w + 2 * M * d};
    mlp_grads dgr = {d_g, d_g + M * d, d_g + 2 * M * d};
    mlp_forward(out, d, &acts, a, d, &p, n, d, M, bf16);
    mlp_backward(da, d, &gr, scratch, dout, d, a, d, &acts, &p, n, d, M, bf16);
    cuda_mlp_forward(d_out, d, &dacts, d_a, d, &dp, n, d, M, bf16);
    cuda_mlp_backward(d_da, d, &dgr, d_dout, d, d_a, d, &dacts, &dp, n, d, M, work, bf16);
    size_t nm = (size_t)n * M;
    if (bf16) {
        expect_bf16("mlp g", dacts.g, acts.g, nm, 0.01, 0.005);
        expect_bf16("mlp u", dacts.u, acts.u, nm, 0.01, 0.005);
        expect_bf16("mlp s", dacts.s, acts.s, nm, 0.01, 0.005);
        expect_bf16("mlp da", d_da, da, nd, 0.01, 0.005);
    } else {
        expect("mlp s", dacts.s, acts.s, NULL, nm, TOL_FWD);
        expect("mlp da", d_da, da, da0, nd, TOL_BWD);
    }
    expect("mlp out", d_out, out, NULL, nd, bf16 ? 2e-3 : TOL_FWD);
    expect("mlp weight grads", d_g, g, g0, nw, bf16 ? 2e-3 : TOL_BWD);
    void *h[] = {a, w, dout, da0, g0, buf, out, scratch, da, g};
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) free(h[i]);
    void *dv[] = {d_a, d_w, d_dout, d_da, d_g, d_buf, d_out, work};
    for (size_t i = 0; i < sizeof dv / sizeof dv[0]; i++) cuda_free(dv[i]);
}

// The sliding-window attention on a ragged batch (Samba's sizes: d 32, 4
// heads, window 64), CPU vs GPU, in fp32 and in bf16-pure (cfg->precision):
// q, k, v, o, da in bf16 steps (as the MLP; the softmax's expf and sums run
// in other orders too), out and the weight gradients within 2e-3.
static void test_attn_regime(int bf16) {
    hax_model_config cfg = {0};
    cfg.hidden_size = 32, cfg.attn_heads = 4, cfg.attn_kv_heads = 4, cfg.window_size = 64, cfg.rope_theta = 10000.0f;
    cfg.precision = bf16 ? PREC_BF16_PURE : PREC_FP32;
    int d = 32, lens[] = {70, 1, 130, 5, 64}, n_seq = 5;
    tbatch b = make_batch(lens, n_seq);
    int n = b.n_tok;
    size_t nd = (size_t)n * d, nw = 4 * (size_t)d * d;
    float *a = rnd(nd, -1, 1), *w = rnd(nw, -0.3f, 0.3f), *dout = rnd(nd, -1, 1), *da0 = rnd(nd, -1, 1);
    float *g0 = rnd(nw, -1, 1);
    if (bf16) round_bf16(a, a, (long)nd), round_bf16(w, w, (long)nw), round_bf16(dout, dout, (long)nd),
        round_bf16(da0, da0, (long)nd);
    float *buf = xmalloc(sizeof(float) * attn_acts_floats(&cfg, n)), *out = xmalloc(sizeof(float) * nd);
    float *scratch = xmalloc(sizeof(float) * attn_bwd_floats(&cfg, n)), *da = copy(da0, nd), *g = copy(g0, nw);
    attn_acts acts;
    attn_acts_assign(&acts, buf, &cfg, n);
    attn_params p = {w, w + d * d, w + 2 * d * d, w + 3 * d * d};
    attn_grads gr = {g, g + d * d, g + 2 * d * d, g + 3 * d * d};
    float *d_a = upf(a, nd), *d_w = upf(w, nw), *d_dout = upf(dout, nd), *d_da = upf(da0, nd), *d_g = upf(g0, nw);
    float *d_buf = cuda_malloc(sizeof(float) * attn_acts_floats(&cfg, n)), *d_out = cuda_malloc(sizeof(float) * nd);
    void *work = cuda_malloc(cuda_attn_workspace_bytes(&cfg, n));
    attn_acts dacts;
    attn_acts_assign(&dacts, d_buf, &cfg, n);
    attn_params dp = {d_w, d_w + d * d, d_w + 2 * d * d, d_w + 3 * d * d};
    attn_grads dgr = {d_g, d_g + d * d, d_g + 2 * d * d, d_g + 3 * d * d};
    attn_forward(out, d, &acts, a, d, &p, &cfg, b.off, n_seq);
    attn_backward(da, d, &gr, scratch, dout, d, a, d, &acts, &p, &cfg, b.off, n_seq);
    cuda_attn_forward(d_out, d, &dacts, d_a, d, &dp, &cfg, b.d_off, n_seq, n);
    cuda_attn_backward(d_da, d, &dgr, d_dout, d, d_a, d, &dacts, &dp, &cfg, b.d_off, n_seq, n, work);
    if (bf16) {
        expect_bf16("attn q", dacts.q, acts.q, nd, 0.01, 0.005);
        expect_bf16("attn k", dacts.k, acts.k, nd, 0.01, 0.005);
        expect_bf16("attn v", dacts.v, acts.v, nd, 0.01, 0.005);
        expect_bf16("attn o", dacts.o, acts.o, nd, 0.01, 0.005);
        expect_bf16("attn da", d_da, da, nd, 0.02, 0.01);
    } else {
        expect("attn o", dacts.o, acts.o, NULL, nd, TOL_FWD);
        expect("attn da", d_da, da, da0, nd, TOL_BWD);
    }
    expect("attn out", d_out, out, NULL, nd, bf16 ? 2e-3 : TOL_FWD);
    expect("attn weight grads", d_g, g, g0, nw, bf16 ? 2e-3 : TOL_BWD);
    void *h[] = {a, w, dout, da0, g0, buf, out, scratch, da, g};
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) free(h[i]);
    void *dv[] = {d_a, d_w, d_dout, d_da, d_g, d_buf, d_out, work};
    for (size_t i = 0; i < sizeof dv / sizeof dv[0]; i++) cuda_free(dv[i]);
    free_batch(&b);
}

// ---------------------------------------------------------------- window attention: old vs tiled

// The window kernels' two versions (cuda/ops/attn.h, HAX_WINDOW_ATTN: today's
// and the tiled ones staging their rows in shared memory) perform the same
// operations in the same order: the same bits. Counts the elements whose
// bits differ and fails on any.
static void bits_check(const char *what, const float *d_old, const float *d_tiled, size_t n) {
    float *a = down(d_old, n), *b = down(d_tiled, n);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) differ++;
    printf("    %-30s old vs tiled: %zu of %zu differ\n", what, differ, n);
    CHECK(differ == 0, "%s: the tiled window kernel differs from the old one in %zu of %zu values", what, differ, n);
    free(a), free(b);
}

// Inputs and outputs of the window kernels alone on one batch: q, k, v, dO
// [n, d] (bf16: rounded to bf16, as bf16-pure's), D = dO·o per (position,
// head) from the old forward, as attn_rowdot_kernel.
typedef struct {
    int n, d, H, W;
    float *q, *k, *v, *dO, *D;          // device inputs
    float *o[2], *lse[2], *dq[2], *dk[2], *dv[2];  // device outputs: [0] old, [1] tiled
} window_case;

static window_case window_case_new(const tbatch *b, int d, int H, int W, int bf16) {
    window_case c = {b->n_tok, d, H, W, NULL, NULL, NULL, NULL, NULL, {NULL}, {NULL}, {NULL}, {NULL}, {NULL}};
    size_t nd = (size_t)c.n * d, nh = (size_t)c.n * H;
    float *in[4];
    for (int i = 0; i < 4; i++) {
        in[i] = rnd(nd, -2, 2);
        if (bf16) round_bf16(in[i], in[i], (long)nd);
    }
    c.q = upf(in[0], nd), c.k = upf(in[1], nd), c.v = upf(in[2], nd), c.dO = upf(in[3], nd);
    for (int i = 0; i < 4; i++) free(in[i]);
    c.D = cuda_malloc(sizeof(float) * (nh ? nh : 1));
    for (int v = 0; v < 2; v++) {
        c.o[v] = cuda_malloc(sizeof(float) * (nd ? nd : 1)), c.lse[v] = cuda_malloc(sizeof(float) * (nh ? nh : 1));
        c.dq[v] = cuda_malloc(sizeof(float) * (nd ? nd : 1)), c.dk[v] = cuda_malloc(sizeof(float) * (nd ? nd : 1));
        c.dv[v] = cuda_malloc(sizeof(float) * (nd ? nd : 1));
    }
    return c;
}

static void window_case_free(window_case *c) {
    float *p[] = {c->q, c->k, c->v, c->dO, c->D};
    for (int i = 0; i < 5; i++) cuda_free(p[i]);
    for (int v = 0; v < 2; v++)
        cuda_free(c->o[v]), cuda_free(c->lse[v]), cuda_free(c->dq[v]), cuda_free(c->dk[v]), cuda_free(c->dv[v]);
}

// D from the old forward's o (the float sum in lane order of attn_rowdot_kernel).
static void window_case_D(window_case *c) {
    size_t nd = (size_t)c->n * c->d;
    int hd = c->d / c->H;
    float *o = down(c->o[0], nd), *dO = down(c->dO, nd), *D = xmalloc(sizeof(float) * ((size_t)c->n * c->H + 1));
    for (size_t r = 0; r < (size_t)c->n * c->H; r++) {
        float acc = 0.0f;
        for (int i = 0; i < hd; i++) acc += dO[r * hd + i] * o[r * hd + i];
        D[r] = acc;
    }
    cuda_upload(c->D, D, sizeof(float) * (size_t)c->n * c->H);
    free(o), free(dO), free(D);
}

// The three window kernels in version v (0 old, 1 tiled); the backward from
// the old forward's lse (the same inputs for both versions).
static void window_run(window_case *c, const tbatch *b, int v, int which) {
    cuda_attn_set_window_tiled(v);
    if (which & 1)
        cuda_attn_window_forward(c->o[v], c->lse[v], c->q, c->k, c->v, b->d_off, b->n_seq, c->n, c->d, c->H, c->W);
    if (which & 2)
        cuda_attn_window_dq(c->dq[v], c->dO, c->D, c->lse[0], c->q, c->k, c->v, b->d_off, b->n_seq, c->n, c->d, c->H,
                            c->W);
    if (which & 4)
        cuda_attn_window_dkv(c->dk[v], c->dv[v], c->dO, c->D, c->lse[0], c->q, c->k, c->v, b->d_off, b->n_seq, c->n,
                             c->d, c->H, c->W);
}

// Old vs tiled on one case: o, lse, dq, dk, dv bit for bit.
static void window_ab(const window_case *c) {
    size_t nd = (size_t)c->n * c->d, nh = (size_t)c->n * c->H;
    bits_check("window o", c->o[0], c->o[1], nd);
    bits_check("window lse", c->lse[0], c->lse[1], nh);
    bits_check("window dq", c->dq[0], c->dq[1], nd);
    bits_check("window dk", c->dk[0], c->dk[1], nd);
    bits_check("window dv", c->dv[0], c->dv[1], nd);
}

// One batch and shape, old vs tiled. tiled_runs: whether the tiled kernels
// are expected to fit this shape (else both runs are the old kernels); the
// case fails where the fitting is not as expected.
static void window_ab_case(const int *lens, int n_seq, int d, int H, int W, int bf16, int tiled_runs) {
    int tp = cuda_attn_tile_positions(d, H, W, 0), tp_kv = cuda_attn_tile_positions(d, H, W, 1);
    printf("    %d sequences, d %d, %d heads (hd %d), window %d, %s: tiles of %d (dK/dV %d) positions\n", n_seq, d, H,
           d / H, W, bf16 ? "bf16" : "fp32", tp, tp_kv);
    CHECK((tp > 0 && tp_kv > 0) == tiled_runs, "d %d, H %d, W %d: expected the tiled kernels to %s, found tiles %d, %d",
          d, H, W, tiled_runs ? "fit" : "fall back", tp, tp_kv);
    tbatch b = make_batch(lens, n_seq);
    window_case c = window_case_new(&b, d, H, W, bf16);
    int keep = cuda_attn_window_tiled();
    window_run(&c, &b, 0, 1);
    window_case_D(&c);
    window_run(&c, &b, 0, 6);
    window_run(&c, &b, 1, 7);
    cuda_attn_set_window_tiled(keep);
    window_ab(&c);
    window_case_free(&c);
    free_batch(&b);
}

// Sequences shorter than the window and than a tile (1, 2, 5), empty ones,
// lengths off the tile sizes; every head-size bound HDM (hd 2, 6, 8: 8; 12,
// 16: 16; 32; 64; 96, 128: 128; hd 8 is Samba's), 3 heads (126-thread blocks),
// windows of 1, shorter than a tile and longer than most sequences; fp32 and
// bf16 inputs; and shapes whose rows do not fit a block (the old kernels run).
static void test_window_tiled(void) {
    static const int lens[] = {70, 1, 130, 5, 0, 64, 200, 2, 33, 97};
    int n_seq = (int)(sizeof lens / sizeof lens[0]);
    for (int bf16 = 0; bf16 < 2; bf16++) {
        window_ab_case(lens, n_seq, 32, 4, 64, bf16, 1);  // Samba's shape
        window_ab_case(lens, n_seq, 32, 4, 7, bf16, 1);
        window_ab_case(lens, n_seq, 32, 4, 1, bf16, 1);
        window_ab_case(lens, n_seq, 12, 2, 64, bf16, 1);
        window_ab_case(lens, n_seq, 4, 2, 3, bf16, 1);
        window_ab_case(lens, n_seq, 48, 3, 20, bf16, 1);
        window_ab_case(lens, n_seq, 48, 4, 40, bf16, 1);
        window_ab_case(lens, n_seq, 64, 2, 64, bf16, 1);  // tiles halved to fit
        window_ab_case(lens, n_seq, 64, 1, 33, bf16, 1);
        window_ab_case(lens, n_seq, 96, 1, 16, bf16, 1);
        window_ab_case(lens, n_seq, 256, 2, 5, bf16, 1);
        window_ab_case(lens, n_seq, 32, 4, 1000, bf16, 0);  // falls back
        window_ab_case(lens, n_seq, 256, 2, 64, bf16, 0);   // falls back
    }
}

// The whole op old vs tiled (Samba's config, fp32 and bf16-pure): the
// activations (q, k, v, o, lse), out, da and the weight gradients bit for bit.
static void attn_op_ab(int bf16) {
    hax_model_config cfg = {0};
    cfg.hidden_size = 32, cfg.attn_heads = 4, cfg.attn_kv_heads = 4, cfg.window_size = 64, cfg.rope_theta = 10000.0f;
    cfg.precision = bf16 ? PREC_BF16_PURE : PREC_FP32;
    int d = 32, lens[] = {70, 1, 130, 5, 64, 300}, n_seq = 6;
    tbatch b = make_batch(lens, n_seq);
    int n = b.n_tok;
    size_t nd = (size_t)n * d, nw = 4 * (size_t)d * d, na = attn_acts_floats(&cfg, n);
    float *a = rnd(nd, -1, 1), *w = rnd(nw, -0.3f, 0.3f), *dout = rnd(nd, -1, 1), *da0 = rnd(nd, -1, 1);
    float *g0 = rnd(nw, -1, 1);
    if (bf16) round_bf16(a, a, (long)nd), round_bf16(w, w, (long)nw), round_bf16(dout, dout, (long)nd),
        round_bf16(da0, da0, (long)nd);
    float *d_a = upf(a, nd), *d_w = upf(w, nw), *d_dout = upf(dout, nd);
    void *work = cuda_malloc(cuda_attn_workspace_bytes(&cfg, n));
    attn_params dp = {d_w, d_w + d * d, d_w + 2 * d * d, d_w + 3 * d * d};
    float *buf[2], *out[2], *da[2], *g[2];
    int keep = cuda_attn_window_tiled();
    for (int v = 0; v < 2; v++) {
        buf[v] = cuda_malloc(sizeof(float) * na), out[v] = cuda_malloc(sizeof(float) * nd);
        da[v] = upf(da0, nd), g[v] = upf(g0, nw);
        attn_acts acts;
        attn_acts_assign(&acts, buf[v], &cfg, n);
        attn_grads gr = {g[v], g[v] + d * d, g[v] + 2 * d * d, g[v] + 3 * d * d};
        cuda_attn_set_window_tiled(v);
        cuda_attn_forward(out[v], d, &acts, d_a, d, &dp, &cfg, b.d_off, n_seq, n);
        cuda_attn_backward(da[v], d, &gr, d_dout, d, d_a, d, &acts, &dp, &cfg, b.d_off, n_seq, n, work);
    }
    cuda_attn_set_window_tiled(keep);
    printf("    the op, %s:\n", bf16 ? "bf16-pure" : "fp32");
    bits_check("attn acts (q k v o lse)", buf[0], buf[1], na);
    bits_check("attn out", out[0], out[1], nd);
    bits_check("attn da", da[0], da[1], nd);
    bits_check("attn weight grads", g[0], g[1], nw);
    free(a), free(w), free(dout), free(da0), free(g0);
    for (int v = 0; v < 2; v++) cuda_free(buf[v]), cuda_free(out[v]), cuda_free(da[v]), cuda_free(g[v]);
    cuda_free(d_a), cuda_free(d_w), cuda_free(d_dout), cuda_free(work);
    free_batch(&b);
}

static void test_attn_op_tiled(void) {
    attn_op_ab(0);
    attn_op_ab(1);
}

// The window kernels at the paper's size (64 sequences of 400..528
// positions, Samba's d 32, 4 heads, window 64), old vs tiled: the same bits,
// and a TIME line per kernel and version (mean of 20 calls after one).
static void test_window_paper(void) {
    int n_seq = 64, lens[64];
    for (int s = 0; s < n_seq; s++) lens[s] = 400 + (s * 37) % 129;  // 400..528, mean ~464
    tbatch b = make_batch(lens, n_seq);
    printf("    paper size: %d sequences, %d positions, d 32, 4 heads, window 64; tiles of %d (dK/dV %d)\n", n_seq,
           b.n_tok, cuda_attn_tile_positions(32, 4, 64, 0), cuda_attn_tile_positions(32, 4, 64, 1));
    window_case c = window_case_new(&b, 32, 4, 64, 0);
    int keep = cuda_attn_window_tiled();
    window_run(&c, &b, 0, 1);
    window_case_D(&c);
    window_run(&c, &b, 0, 6);
    window_run(&c, &b, 1, 7);
    window_ab(&c);
    static const char *kname[3] = {"fwd", "dq", "dkv"}, *vname[2] = {"old", "tiled"};
    for (int kk = 0; kk < 3; kk++)
        for (int v = 0; v < 2; v++) {
            window_run(&c, &b, v, 1 << kk);
            int e0 = cuda_event_record();
            for (int r = 0; r < 20; r++) window_run(&c, &b, v, 1 << kk);
            printf("TIME attn %-3s %-5s %8.4f ms\n", kname[kk], vname[v], cuda_event_ms(e0, cuda_event_record()) / 20);
        }
    cuda_attn_set_window_tiled(keep);
    window_case_free(&c);
    free_batch(&b);
}

static void test_mlp(void) { test_mlp_regime(0); }
static void test_mlp_bf16(void) { test_mlp_regime(1); }
static void test_attn(void) { test_attn_regime(0); }
static void test_attn_bf16(void) { test_attn_regime(1); }

// ---------------------------------------------------------------- paper size

// One linear layer at n rows: forward, backward (dinp and dweight) and the
// dweight GEMM alone; inputs of row width ld_in, outputs ld_out (the mixers'
// shared rows: dt_proj reads 8 of x_dbl's 40 columns).
static void time_linear(const char *name, int n, int in, int out, int ld_in, int ld_out) {
    size_t ni = (size_t)n * ld_in, no = (size_t)n * ld_out, w = (size_t)out * in;
    float *x = rnd(ni, -1, 1), *y = rnd(no, -1, 1), *W = rnd(w, -0.2f, 0.2f), *dx = rnd(ni, -1, 1);
    float *dW = xcalloc(w, sizeof(float));
    float *g_x = upf(x, ni), *g_y = upf(y, no), *g_W = upf(W, w), *g_dx = upf(dx, ni), *g_dW = upf(dW, w);
    char label[3][64];
    snprintf(label[0], 64, "%s fwd (%d->%d)", name, in, out);
    snprintf(label[1], 64, "%s bwd (%d->%d)", name, in, out);
    snprintf(label[2], 64, "%s dW (%d->%d)", name, in, out);
    TIME_OP(label[0], linear_forward(y, ld_out, x, ld_in, W, NULL, n, in, out),
            cuda_linear_forward(g_y, ld_out, g_x, ld_in, g_W, NULL, n, in, out));
    TIME_OP(label[1], linear_backward(dx, ld_in, dW, NULL, y, ld_out, x, ld_in, W, n, in, out),
            cuda_linear_backward(g_dx, ld_in, g_dW, NULL, g_y, ld_out, g_x, ld_in, g_W, n, in, out));
    TIME_OP(label[2], linear_backward(NULL, 0, dW, NULL, y, ld_out, x, ld_in, W, n, in, out),
            cuda_linear_backward(NULL, 0, g_dW, NULL, g_y, ld_out, g_x, ld_in, g_W, n, in, out));
    free(x), free(y), free(W), free(dx), free(dW);
    cuda_free(g_x), cuda_free(g_y), cuda_free(g_W), cuda_free(g_dx), cuda_free(g_dW);
}

// Every GEMM shape of the paper's Mamba and Mamba-2 layers (d 64, E 128;
// Mamba: N 16, dt_rank 8, x_dbl 40 wide; Mamba-2: N 32, 8 heads, in_proj
// E + (E + 2N) + H = 328 wide) and the tied logits (V 100).
static void time_gemms(int n) {
    time_linear("in_proj", n, 64, 256, 64, 256);
    time_linear("x_proj", n, 128, 40, 128, 40);
    time_linear("dt_proj", n, 8, 128, 40, 128);
    time_linear("out_proj", n, 128, 64, 128, 64);
    time_linear("m2 in_proj", n, 64, 328, 64, 328);
    time_linear("logits", n, 64, 100, 64, 100);
}

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
    TIME_OP("gate fwd (E 128)", mamba_gate_forward(outE, pre, xz, NULL, NULL, n, E, 0),
            cuda_gate_forward(g_outE, g_pre, g_xz, NULL, NULL, n, E, 0));
    TIME_OP("gate bwd (E 128)", mamba_gate_backward(outE, big, NULL, NULL, pre, pre, xz, NULL, NULL, n, E, 0),
            cuda_gate_backward(g_outE, g_big, NULL, NULL, NULL, g_pre, g_pre, g_xz, NULL, NULL, n, E, work, 0));
    TIME_OP("logits fwd (V 100)", logits_forward(logits, h, Wemb, n, d, V), cuda_logits_forward(g_logits, g_h, g_Wemb, n, d, V));
    TIME_OP("ce fwd", ce_forward(logits, ids, mask, b.off, n_seq, V, NULL, NULL),
            cuda_ce_forward(g_loss, NULL, NULL, g_logits, g_ids, g_mask, b.d_off, n_seq, n, V, work));
    TIME_OP("ce bwd", ce_backward(dl, logits, ids, mask, n, V, 1e-3f),
            cuda_ce_backward(g_dl, g_logits, g_ids, g_mask, n, V, 1e-3f));
    TIME_OP("logits bwd (V 100)", logits_backward(h, Wemb, dl, h2, Wemb, n, d, V),
            cuda_logits_backward(g_h, g_Wemb, g_dl, g_h2, g_Wemb, n, d, V));
    time_gemms(n);
    cuda_sync();
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
        RUN(test_window_paper);
        return test_summary();
    }
    RUN(test_linear);
    RUN(test_embedding);
    RUN(test_workspace_monotone);
    RUN(test_rmsnorm_plain);
    RUN(test_add_rmsnorm);
    RUN(test_add_rmsnorm_wide);
    RUN(test_logits_ce);
    RUN(test_conv);
    RUN(test_gated_norm);
    RUN(test_gate);
    RUN(test_gate_bf16);
    RUN(test_add_bf16_rows);
    RUN(test_mlp);
    RUN(test_mlp_bf16);
    RUN(test_attn);
    RUN(test_attn_bf16);
    RUN(test_window_tiled);
    RUN(test_attn_op_tiled);
    RUN(test_bad_token_id);
    if (!quick) RUN(test_paper_size);
    if (!quick) RUN(test_window_paper);
    return test_summary();
}
