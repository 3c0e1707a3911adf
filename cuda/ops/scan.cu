// cuda/ops/scan.cu: the Mamba selective scan on the GPU (see cuda/ops/scan.h),
// on the recurrence of cuda/ops/scan_kernels.cuh.
#include "cuda/ops/scan_kernels.cuh"

// ---------------------------------------------------------------- Mamba

static int mamba_cpb(int G) { return 256 / G; }

extern "C" size_t cuda_scan_ckpt_floats(int n_tok, int n_seq, int E, int N) {
    return ckpt_slots(n_tok, n_seq) * E * N;
}

extern "C" size_t cuda_scan_workspace_bytes(int n_tok, int n_seq, int E, int N) {
    int G, NPL;
    split_state(N, &G, &NPL, "scan");
    int cpb = mamba_cpb(G);
    return work_bytes(n_tok, n_seq, (E + cpb - 1) / cpb, N, E * N, E);
}

static scan_args mamba_args(const float *x, int ld_x, const float *draw, const float *dt_bias,
                            const float *A_log, const float *Bm, const float *Cm, int ld_bc, const float *D,
                            const int *seq_off, int n_seq, int n_tok, int E, int N) {
    scan_args a = {};
    a.x = x, a.ld_x = ld_x, a.dt = draw, a.ld_dt = E, a.dt_bias = dt_bias, a.A_log = A_log;
    a.B = Bm, a.C = Cm, a.ld_bc = ld_bc, a.D = D, a.seq_off = seq_off;
    a.n_seq = n_seq, a.n_tok = n_tok, a.E = E, a.N = N, a.H = E, a.P = 1;
    int NPL;
    split_state(N, &a.G, &NPL, "scan");
    a.CPB = mamba_cpb(a.G);
    return a;
}

extern "C" void cuda_scan_forward(float *y, float *ckpt, const float *x, int ld_x, const float *draw,
                                  const float *dt_bias, const float *A_log, const float *Bm, const float *Cm,
                                  int ld_bc, const float *D, const int *seq_off, int n_seq, int n_tok, int E,
                                  int N) {
    scan_args a = mamba_args(x, ld_x, draw, dt_bias, A_log, Bm, Cm, ld_bc, D, seq_off, n_seq, n_tok, E, N);
    if (n_seq == 0 || n_tok == 0) return;
    a.y = y, a.ld_y = E, a.ckpt = ckpt;
    launch_fwd<false>(a);
}

extern "C" void cuda_scan_backward(float *dx, int ld_dx, float *ddraw, float *dBm, float *dCm, int ld_dbc,
                                   float *ddt_bias, float *dA_log, float *dD, const float *dy,
                                   const float *ckpt, const float *x, int ld_x, const float *draw,
                                   const float *dt_bias, const float *A_log, const float *Bm,
                                   const float *Cm, int ld_bc, const float *D, const int *seq_off, int n_seq,
                                   int n_tok, int E, int N, void *work) {
    scan_args a = mamba_args(x, ld_x, draw, dt_bias, A_log, Bm, Cm, ld_bc, D, seq_off, n_seq, n_tok, E, N);
    if (n_seq == 0 || n_tok == 0) return;
    a.ckpt = (float *)ckpt;
    a.dx = dx, a.ld_dx = ld_dx, a.ddt = ddraw, a.ld_ddt = E, a.dB = dBm, a.dC = dCm, a.ld_dbc = ld_dbc;
    a.dy = dy, a.ld_dy = E;
    set_work(&a, work, (E + a.CPB - 1) / a.CPB);
    launch_bwd<false>(a, A_log, dA_log, dD, ddt_bias);
}
