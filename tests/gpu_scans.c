// gpu_scans.c: the CUDA scans against their CPU ops: Mamba's selective scan
// (cuda/ops/scan.h, two-level over time) and Mamba-2's SSD (cuda/ops/ssd.h,
// chunked state passing), forward and backward, on ragged packed batches with
// lengths across the GPU's 64-position chunks and the CPU's checkpoints:
// outputs within 1e-5, gradients within 1e-4 (normwise; gradients accumulate
// into random initial values and the increments are compared); each replayed
// from a CUDA graph (bit-identical). The SSD also with its chunk products on
// tensor cores (HAX_SSD_MMA=tc, cuda/ops/ssd.h) against the CPU op and against
// the FMA path (within the same tolerances; not the same bits). Then both at
// the paper's size (64 sequences of ~464 positions), compared and timed, with a
// TIME line per kernel (events around each launch, via cuda_scan_mark), and
// TIME ssd fwd|bwd fma|tc. Skips without a device.
#include <math.h>
#include <stdint.h>

#include "cuda/ops/scan.h"
#include "cuda/ops/ssd.h"
#include "src/ops/scan.h"
#include "src/ops/ssd.h"
#include "gpu_util.h"

// ---------------------------------------------------------------- per-kernel timing

// The ops call mark_kernel right after each launch (cuda_scan_mark), which
// records an event there: consecutive events bound one kernel's time (launch
// gaps included; the events themselves add a little).
#define MAX_MARKS 16
static int g_n_marks, g_mark_ev[MAX_MARKS + 1];
static const char *g_mark_name[MAX_MARKS];

static void mark_kernel(const char *kernel) {
    if (g_n_marks < MAX_MARKS) g_mark_name[g_n_marks] = kernel, g_mark_ev[++g_n_marks] = cuda_event_record();
}

typedef struct {
    int n;
    const char *name[MAX_MARKS];
    double ms[MAX_MARKS];
} ktimes;

static void ktimes_begin(void) {
    g_n_marks = 0;
    g_mark_ev[0] = cuda_event_record();
    cuda_scan_mark = mark_kernel;
}

// Adds this call's kernel times to kt (the same kernels every call).
static void ktimes_end(ktimes *kt) {
    cuda_scan_mark = NULL;
    for (int i = 0; i < g_n_marks; i++) {
        kt->name[i] = g_mark_name[i];
        kt->ms[i] += cuda_event_ms(g_mark_ev[i], g_mark_ev[i + 1]);
    }
    kt->n = g_n_marks;
}

static void ktimes_print(const char *op, const ktimes *kt, int reps) {
    double total = 0.0;
    for (int i = 0; i < kt->n; i++) total += kt->ms[i];
    for (int i = 0; i < kt->n; i++)
        printf("TIME   %-13s %-30s %8.4f ms  %5.1f%%\n", op, kt->name[i], kt->ms[i] / reps,
               total > 0 ? 100.0 * kt->ms[i] / total : 0.0);
}

// Each kernel of `reps` calls of stmt, timed; prints the mean per call.
#define TIME_KERNELS(op, reps, stmt)                    \
    do {                                                \
        ktimes kt_ = {0, {NULL}, {0.0}};                \
        for (int r_ = 0; r_ < (reps); r_++) {           \
            ktimes_begin();                             \
            stmt;                                       \
            ktimes_end(&kt_);                           \
        }                                               \
        ktimes_print(op, &kt_, reps);                   \
    } while (0)

// ---------------------------------------------------------------- old vs fast

// The backward chunk kernels' two versions (cuda/ops/scan.h: the fast ones by
// default, the previous ones with HAX_SCAN_KERNELS=old) form every output by
// the same operations in the same order: the same bits. Counts the elements
// whose bits differ (and the normwise difference) and fails on any.
static void ab_check(const char *what, const float *old, const float *fast, size_t n) {
    size_t differ = 0;
    double d2 = 0.0, r2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&old[i], &fast[i], sizeof(float)) != 0) differ++;
        double d = (double)fast[i] - old[i];
        d2 += d * d, r2 += (double)old[i] * old[i];
    }
    printf("    %-30s old vs fast: %zu of %zu differ (normwise %.1e)\n", what, differ, n,
           r2 > 0 ? sqrt(d2 / r2) : sqrt(d2));
    CHECK(differ == 0, "%s: the fast backward kernel differs from the old one in %zu of %zu values", what, differ, n);
}

// Runs the statements with the old backward kernels (v = 0), then with the
// fast ones (v = 1), and leaves the version chosen as it was.
#define FOR_BOTH_VERSIONS(v, ...)                           \
    do {                                                    \
        int keep_ = cuda_scan_old_kernels();                \
        for (int v = 0; v < 2; v++) {                       \
            cuda_scan_set_old_kernels(v == 0);              \
            __VA_ARGS__;                                    \
        }                                                   \
        cuda_scan_set_old_kernels(keep_);                   \
    } while (0)

// Runs the statements with the SSD's chunk products on FMAs (m = 0), then on
// tensor cores (m = 1), and leaves the choice as it was (HAX_SSD_MMA).
#define FOR_BOTH_MMA(m, ...)                                \
    do {                                                    \
        int keep_ = cuda_ssd_mma();                         \
        for (int m = 0; m < 2; m++) {                       \
            cuda_ssd_set_mma(m);                            \
            __VA_ARGS__;                                    \
        }                                                   \
        cuda_ssd_set_mma(keep_);                            \
    } while (0)

// tc against fma: printed (normwise and largest relative error) and held to
// the CPU comparison's tolerance; the two paths need not agree bit for bit.
static void mma_check(const char *what, const float *fma, const float *tc, size_t n, double tol) {
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += memcmp(&fma[i], &tc[i], sizeof(float)) != 0;
    double e = rel_err(tc, fma, n);
    printf("    %-30s tc vs fma: rel err %.2e, max rel err %.2e (%zu of %zu differ)\n", what, e,
           max_rel_err(tc, fma, n), differ, n);
    CHECK(e <= tol, "%s: tensor-core path vs FMA path: relative error %.3e above %.0e", what, e, tol);
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
    {
        // The old backward (HAX_SCAN_KERNELS=old) against the fast one, from the same gradients: bit for bit.
        float *o[2][6];
        FOR_BOTH_VERSIONS(v, {
            cuda_upload(g_dx, c.dx0, sizeof(float) * nx);
            cuda_upload(g_ddr, c.ddr0, sizeof(float) * nE);
            cuda_upload(g_dbc, c.dbc0, sizeof(float) * nbc);
            cuda_upload(g_ddtb, c.ddtb0, sizeof(float) * E);
            cuda_upload(g_dA, c.dA0, sizeof(float) * E * N);
            cuda_upload(g_dD, c.dD0, sizeof(float) * E);
            GPU_SCAN_BWD();
            o[v][0] = down(g_dx, nx), o[v][1] = down(g_ddr, nE), o[v][2] = down(g_dbc, nbc);
            o[v][3] = down(g_ddtb, E), o[v][4] = down(g_dA, (size_t)E * N), o[v][5] = down(g_dD, E);
        });
        const char *what[6] = {"scan dx", "scan ddraw", "scan dB|dC", "scan ddt_bias", "scan dA_log", "scan dD"};
        size_t len[6] = {nx, nE, nbc, (size_t)E, (size_t)E * N, (size_t)E};
        for (int k = 0; k < 6; k++) ab_check(what[k], o[0][k], o[1][k], len[k]), free(o[0][k]), free(o[1][k]);
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
        TIME_KERNELS("scan fwd", reps,
                     cuda_scan_forward(g_y, g_ck, g_x, c.ld_x, g_draw, g_dtb, g_A, g_bc, g_bc + N, c.ld_bc, g_D,
                                       b->d_off, b->n_seq, n, E, N));
        TIME_KERNELS("scan bwd", reps, GPU_SCAN_BWD());
        // Both versions of the backward, one after the other on the same buffers (printed, not asserted).
        FOR_BOTH_VERSIONS(v, {
            GPU_SCAN_BWD();  // warm-up
            int b0 = cuda_event_record();
            for (int r = 0; r < reps; r++) GPU_SCAN_BWD();
            int b1 = cuda_event_record();
            printf("TIME scan bwd %-4s (E=%d N=%d)        gpu %8.3f ms\n", v ? "fast" : "old", E, N,
                   cuda_event_ms(b0, b1) / reps);
            TIME_KERNELS(v ? "scan bwd fast" : "scan bwd old", reps, GPU_SCAN_BWD());
        });
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
    {
        // The old backward (HAX_SCAN_KERNELS=old) against the fast one, from the same gradients: bit for bit
        // (both on FMAs: the fast one has no tensor-core version).
        float *o[2][3];
        int keep_mma = cuda_ssd_mma();
        cuda_ssd_set_mma(0);
        FOR_BOTH_VERSIONS(v, {
            cuda_upload(g_dx, dx0, sizeof(float) * nx);
            cuda_upload(g_ddt, ddt0, sizeof(float) * ndt);
            cuda_upload(g_dp, dp0, sizeof(float) * 3 * H);
            GPU_SSD_BWD();
            o[v][0] = down(g_dx, nx), o[v][1] = down(g_ddt, ndt), o[v][2] = down(g_dp, 3 * H);
        });
        cuda_ssd_set_mma(keep_mma);
        const char *what[3] = {"ssd dx|dB|dC", "ssd ddt", "ssd ddt_bias|dA_log|dD"};
        size_t len[3] = {nx, ndt, (size_t)3 * H};
        for (int k = 0; k < 3; k++) ab_check(what[k], o[0][k], o[1][k], len[k]), free(o[0][k]), free(o[1][k]);
    }
    {
        // The chunk products on FMAs and on tensor cores (HAX_SSD_MMA=fma|tc): each against the CPU op,
        // then tc against fma. The forward's checkpoint is the mode's own.
        float *o[2][4];
        FOR_BOTH_MMA(m, {
            const char *mode = m ? "tc" : "fma";
            cuda_zero(g_y, sizeof(float) * ny);
            GPU_SSD_FWD();
            snprintf(name, sizeof name, "ssd y %s (H=%d P=%d N=%d)", mode, H, P, N);
            expect(name, g_y, y, NULL, ny, TOL_FWD);
            cuda_upload(g_dx, dx0, sizeof(float) * nx);
            cuda_upload(g_ddt, ddt0, sizeof(float) * ndt);
            cuda_upload(g_dp, dp0, sizeof(float) * 3 * H);
            GPU_SSD_BWD();
            snprintf(name, sizeof name, "ssd dx|dB|dC %s", mode);
            expect(name, g_dx, dx, dx0, nx, TOL_BWD);
            snprintf(name, sizeof name, "ssd ddt %s", mode);
            expect(name, g_ddt, ddt, ddt0, ndt, TOL_BWD);
            snprintf(name, sizeof name, "ssd ddt_bias|dA_log|dD %s", mode);
            expect(name, g_dp, dp, dp0, 3 * H, TOL_BWD);
            o[m][0] = down(g_y, ny), o[m][1] = down(g_dx, nx), o[m][2] = down(g_ddt, ndt), o[m][3] = down(g_dp, 3 * H);
        });
        const char *what[4] = {"ssd y", "ssd dx|dB|dC", "ssd ddt", "ssd ddt_bias|dA_log|dD"};
        size_t len[4] = {ny, nx, ndt, (size_t)3 * H};
        for (int k = 0; k < 4; k++)
            mma_check(what[k], o[0][k], o[1][k], len[k], k ? TOL_BWD : TOL_FWD), free(o[0][k]), free(o[1][k]);
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
        printf("TIME ssd fwd+bwd per layer        gpu %8.3f ms (issue 11's target: 0.25 ms)\n", gf + gb);
        TIME_KERNELS("ssd fwd", reps, GPU_SSD_FWD());
        TIME_KERNELS("ssd bwd", reps, GPU_SSD_BWD());
        // Both versions of the backward, one after the other on the same buffers (printed, not asserted).
        FOR_BOTH_VERSIONS(v, {
            GPU_SSD_BWD();  // warm-up
            int b0 = cuda_event_record();
            for (int r = 0; r < reps; r++) GPU_SSD_BWD();
            int b1 = cuda_event_record();
            printf("TIME ssd bwd %-4s (H=%d P=%d N=%d)    gpu %8.3f ms\n", v ? "fast" : "old", H, P, N,
                   cuda_event_ms(b0, b1) / reps);
            TIME_KERNELS(v ? "ssd bwd fast" : "ssd bwd old", reps, GPU_SSD_BWD());
        });
        // The chunk products on FMAs and on tensor cores (HAX_SSD_MMA), one after the other on the same
        // buffers, with the backward kernels chosen as the environment says (printed, not asserted).
        FOR_BOTH_MMA(m, {
            const char *mode = m ? "tc" : "fma";
            char op[32];
            GPU_SSD_FWD();  // warm-up
            int f0 = cuda_event_record();
            for (int r = 0; r < reps; r++) GPU_SSD_FWD();
            int f1 = cuda_event_record();
            GPU_SSD_BWD();  // warm-up
            int b0 = cuda_event_record();
            for (int r = 0; r < reps; r++) GPU_SSD_BWD();
            int b1 = cuda_event_record();
            printf("TIME ssd fwd %-4s (H=%d P=%d N=%d)    gpu %8.3f ms\n", mode, H, P, N, cuda_event_ms(f0, f1) / reps);
            printf("TIME ssd bwd %-4s (H=%d P=%d N=%d)    gpu %8.3f ms\n", mode, H, P, N, cuda_event_ms(b0, b1) / reps);
            snprintf(op, sizeof op, "ssd fwd %s", mode);
            TIME_KERNELS(op, reps, GPU_SSD_FWD());
            snprintf(op, sizeof op, "ssd bwd %s", mode);
            TIME_KERNELS(op, reps, GPU_SSD_BWD());
        });
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
    run_ssd(&b, 9, 8, 16, 0);   // more heads than the paper's 8
    run_ssd(&b, 8, 16, 32, 0);  // the paper's heads and sizes
    free_batch(&b);
}

// ---------------------------------------------------------------- paper size

static void test_paper_size(void) {
    int n_seq = 64, lens[64];
    for (int s = 0; s < n_seq; s++) lens[s] = 400 + (s * 37) % 129;  // 400..528, mean ~464
    tbatch b = make_batch(lens, n_seq);
    printf("    paper size: %d sequences, %d positions\n", n_seq, b.n_tok);
    run_scan(&b, 128, 16, 1);
    run_ssd(&b, 8, 16, 32, 1);
    free_batch(&b);
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;  // --quick: no paper-size timings
    if (cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 0;
    }
    cuda_init(0);
    printf("device: %s\n", cuda_device_name());
    if (argc > 1 && strcmp(argv[1], "--paper-only") == 0) {  // for profilers: the paper-size part alone
        RUN(test_paper_size);
        return test_summary();
    }
    RUN(test_scan);
    RUN(test_ssd);
    if (!quick) RUN(test_paper_size);
    return test_summary();
}
