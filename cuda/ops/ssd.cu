// cuda/ops/ssd.cu: Mamba-2's SSD scan on the GPU (see cuda/ops/ssd.h), on the
// recurrence of cuda/ops/scan_kernels.cuh (one head of P channels per block).
#include "cuda/ops/scan_kernels.cuh"

// SSD only: Δ [n_tok, H] = softplus(dt + dt_bias).
__global__ static void ssd_delta_kernel(float *delta, const float *dt, int ld_dt, const float *dt_bias,
                                        int n_tok, int H) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_tok * H) return;
    int t = (int)(i / H), h = (int)(i % H);
    delta[i] = hax_softplus(dt[(size_t)t * ld_dt + h] + dt_bias[h]);
}

// ---------------------------------------------------------------- SSD

extern "C" size_t cuda_ssd_ckpt_floats(int n_tok, int n_seq, int H, int P, int N) {
    return ckpt_slots(n_tok, n_seq) * H * P * N;
}

extern "C" size_t cuda_ssd_workspace_bytes(int n_tok, int n_seq, int H, int P, int N) {
    (void)P;
    return work_bytes(n_tok, n_seq, H, N, H, H);
}

static scan_args ssd_args(const float *x, int ld_x, const float *dt, int ld_dt, const float *delta,
                          const float *B, const float *C, int ld_bc, const float *dt_bias, const float *A_log,
                          const float *D, const int *seq_off, int n_seq, int n_tok, int H, int P, int N) {
    scan_args a = {};
    a.x = x, a.ld_x = ld_x, a.dt = dt, a.ld_dt = ld_dt, a.delta = delta, a.dt_bias = dt_bias;
    a.A_log = A_log, a.B = B, a.C = C, a.ld_bc = ld_bc, a.D = D, a.seq_off = seq_off;
    a.n_seq = n_seq, a.n_tok = n_tok, a.E = H * P, a.N = N, a.H = H, a.P = P;
    int NPL;
    split_state(N, &a.G, &NPL, "ssd");
    a.CPB = P;
    if (P * a.G > 1024)
        hax_die("cuda: ssd: head_dim P times min(N, 32): expected at most 1024, found %d", P * a.G);
    if (P * a.G < 32)
        hax_die("cuda: ssd: head_dim P times min(N, 32): expected at least 32 (whole warps), found %d", P * a.G);
    return a;
}

extern "C" void cuda_ssd_forward(float *y, int ld_y, float *delta, float *ckpt, const float *x, int ld_x,
                                 const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                                 const float *dt_bias, const float *A_log, const float *D, const int *seq_off,
                                 int n_seq, int n_tok, int H, int P, int N) {
    scan_args a = ssd_args(x, ld_x, dt, ld_dt, delta, B, C, ld_bc, dt_bias, A_log, D, seq_off, n_seq, n_tok, H, P, N);
    if (n_seq == 0 || n_tok == 0) return;
    ssd_delta_kernel<<<cu_blocks((long)n_tok * H, 256), 256, 0, cu_stream()>>>(delta, dt, ld_dt, dt_bias, n_tok, H);
    CUDA_LAUNCHED();
    a.y = y, a.ld_y = ld_y, a.ckpt = ckpt;
    launch_fwd<true>(a);
}

extern "C" void cuda_ssd_backward(float *dx, int ld_dx, float *ddt, int ld_ddt, float *dB, float *dC, int ld_dbc,
                                  float *ddt_bias, float *dA_log, float *dD, const float *dy, int ld_dy,
                                  const float *delta, const float *ckpt, const float *x, int ld_x,
                                  const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                                  const float *dt_bias, const float *A_log, const float *D, const int *seq_off,
                                  int n_seq, int n_tok, int H, int P, int N, void *work) {
    scan_args a = ssd_args(x, ld_x, dt, ld_dt, delta, B, C, ld_bc, dt_bias, A_log, D, seq_off, n_seq, n_tok, H, P, N);
    if (n_seq == 0 || n_tok == 0) return;
    a.ckpt = (float *)ckpt;
    a.dx = dx, a.ld_dx = ld_dx, a.ddt = ddt, a.ld_ddt = ld_ddt, a.dB = dB, a.dC = dC, a.ld_dbc = ld_dbc;
    a.dy = dy, a.ld_dy = ld_dy;
    set_work(&a, work, H);
    launch_bwd<true>(a, A_log, dA_log, dD, ddt_bias);
}
