// cuda/ops/ssd.cu: Mamba-2's SSD scan on the GPU (see cuda/ops/ssd.h) in its
// chunked form (cuda/ops/ssd_chunk.cuh): chunk-local matrix products, and a
// short pass over each sequence's chunks for the states between them.
//   forward:  Δ; S_loc per chunk; pass (S_in per chunk, the checkpoint); y
//   backward: dS_loc per chunk; reverse pass (dS_out); the chunk gradients;
//             parameter gradients, one partial per sequence in sequence order.
#include "cuda/ops/scan.h"
#include "cuda/ops/ssd.h"
#include "cuda/ops/ssd_chunk_bwd.cuh"

// HAX_SSD_MMA, read once (cuda/ops/ssd.h); -1: not read yet.
static int g_ssd_mma = -1;

extern "C" int cuda_ssd_mma(void) {
    if (g_ssd_mma < 0) g_ssd_mma = hax_env_choice("HAX_SSD_MMA", "fma tc", 0);
    return g_ssd_mma;
}

extern "C" void cuda_ssd_set_mma(int tc) { g_ssd_mma = tc; }

// Δ [n_tok, H] = softplus(dt + dt_bias).
__global__ static void ssd_delta_kernel(float *delta, const float *dt, int ld_dt, const float *dt_bias,
                                        int n_tok, int H) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_tok * H) return;
    int t = (int)(i / H), h = (int)(i % H);
    delta[i] = hax_softplus(dt[(size_t)t * ld_dt + h] + dt_bias[h]);
}

// The pass over one sequence's chunks (blockIdx.x) for head blockIdx.y, one
// thread per state entry q: buf holds each chunk's own part (S_loc or
// dS_loc) and receives what flows into it (S_in, or in reverse dS_out):
// run' = e^{a_last}·run + own. The loads of SSD_PASS_B chunks are issued
// before their stores (only run carries a dependence), so a thread waits on
// memory once per SSD_PASS_B chunks instead of once per chunk.
#define SSD_PASS_B 8
#define SSD_PASS_THREADS 128
__global__ static void __launch_bounds__(SSD_PASS_THREADS) ssd_pass_kernel(float *buf, const float *dec,
                                                                            const int *seq_off, int H, int PN,
                                                                            bool reverse) {
    int s = blockIdx.x, h = blockIdx.y, q = blockIdx.z * blockDim.x + threadIdx.x;
    if (q >= PN) return;
    int base = ssd_slot_base(seq_off, s), nc = (seq_off[s + 1] - seq_off[s] + SSD_Q - 1) / SSD_Q;
    float run = 0.0f;
    for (int i0 = 0; i0 < nc; i0 += SSD_PASS_B) {
        float own[SSD_PASS_B], d[SSD_PASS_B];
#pragma unroll
        for (int b = 0; b < SSD_PASS_B; b++) {
            size_t k = (size_t)base + (reverse ? nc - 1 - (i0 + b) : i0 + b);
            own[b] = i0 + b < nc ? buf[(k * H + h) * PN + q] : 0.0f;
            d[b] = i0 + b < nc ? dec[k * H + h] : 0.0f;
        }
#pragma unroll
        for (int b = 0; b < SSD_PASS_B; b++) {
            if (i0 + b >= nc) break;
            size_t k = (size_t)base + (reverse ? nc - 1 - (i0 + b) : i0 + b);
            buf[(k * H + h) * PN + q] = run;
            run = d[b] * run + own[b];
        }
    }
}

static void ssd_pass(const ssd_args &g, float *buf, bool reverse) {
    int PN = g.P * g.N;
    dim3 grid(g.n_seq, g.H, cu_blocks(PN, SSD_PASS_THREADS));
    ssd_pass_kernel<<<grid, SSD_PASS_THREADS, 0, cu_stream()>>>(buf, g.dec, g.seq_off, g.H, PN, reverse);
    CUDA_LAUNCHED();
    CUDA_SCAN_MARK(reverse ? "ssd_pass_kernel (reverse)" : "ssd_pass_kernel");
}

// Parameter gradients += the sequence partials (each the sum of its chunks in
// order, rounded to float as the CPU op does), one sequence at a time. Block
// h; 256 sequences at a time are summed in parallel, then added in order.
__global__ static void ssd_par_kernel(float *dA_log, float *dD, float *ddt_bias, const double *par,
                                      const float *A_log, const int *seq_off, int n_seq, int H) {
    __shared__ double part[SSD_THREADS][3];
    int h = blockIdx.x;
    float acc[3] = {dA_log ? dA_log[h] : 0.0f, dD ? dD[h] : 0.0f, ddt_bias ? ddt_bias[h] : 0.0f};
    double Ah = -exp((double)A_log[h]);
    for (int s0 = 0; s0 < n_seq; s0 += SSD_THREADS) {
        int s = s0 + threadIdx.x;
        if (s < n_seq) {
            int base = ssd_slot_base(seq_off, s), nc = (seq_off[s + 1] - seq_off[s] + SSD_Q - 1) / SSD_Q;
            double q[3] = {0.0, 0.0, 0.0};
            for (int i = 0; i < nc; i++)
                for (int k = 0; k < 3; k++) q[k] += par[((size_t)(base + i) * H + h) * 3 + k];
            for (int k = 0; k < 3; k++) part[threadIdx.x][k] = q[k];
        }
        __syncthreads();
        if (threadIdx.x < 3) {
            int k = threadIdx.x;
            for (int i = 0; i < SSD_THREADS && s0 + i < n_seq; i++)
                acc[k] += (float)(k == 0 ? part[i][0] * Ah : part[i][k]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0 && dA_log) dA_log[h] = acc[0];
    if (threadIdx.x == 1 && dD) dD[h] = acc[1];
    if (threadIdx.x == 2 && ddt_bias) ddt_bias[h] = acc[2];
}

// ---------------------------------------------------------------- launches

static int ssd_slots(int n_tok, int n_seq) { return n_tok / SSD_Q + n_seq; }
static int ssd_tiles(int d) { return d <= 16 ? 1 : d <= 32 ? 2 : 4; }

// Raises a kernel's dynamic shared-memory limit when needed (a host-side
// attribute, set once per size; no synchronisation).
#define SSD_LAUNCH(kernel, g, smem, name)                                                                    \
    do {                                                                                                 \
        static size_t raised_ = 48 * 1024;                                                               \
        if ((smem) > raised_) {                                                                          \
            CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(smem))); \
            raised_ = (smem);                                                                            \
        }                                                                                                \
        kernel<<<(g).n_slots, SSD_THREADS, (smem), cu_stream()>>>(g);                                    \
        CUDA_LAUNCHED();                                                                                 \
        CUDA_SCAN_MARK(name);                                                                            \
    } while (0)

// TC: the chunk products on tensor cores (HAX_SSD_MMA=tc, cuda/ops/ssd.h); the
// same shared memory and grid as the FMA kernels.
template <int RP, int RN, bool TC>
static void ssd_fwd_launch(const ssd_args &g) {
    SSD_LAUNCH((ssd_state_kernel<RP, RN, false, TC>), g, ssd_state_smem(RP, RN),
               TC ? "ssd_state_kernel (S_loc, tc)" : "ssd_state_kernel (S_loc)");
    ssd_pass(g, g.S, false);
    SSD_LAUNCH((ssd_out_kernel<RP, RN, TC>), g, ssd_out_smem(RP, RN), TC ? "ssd_out_kernel (tc)" : "ssd_out_kernel");
}

// The fast backward (HAX_SCAN_KERNELS=new) has no tensor-core version: it
// stays on FMAs under HAX_SSD_MMA=tc (its state kernel does not).
template <int RP, int RN, bool TC>
static void ssd_bwd_launch(const ssd_args &g) {
    SSD_LAUNCH((ssd_state_kernel<RP, RN, true, TC>), g, ssd_state_smem(RP, RN),
               TC ? "ssd_state_kernel (dS_loc, tc)" : "ssd_state_kernel (dS_loc)");
    ssd_pass(g, g.dS, true);
    if (cuda_scan_old_kernels() != 0)  // 2, the default: the old one is the faster (cuda/ops/scan.h)
        SSD_LAUNCH((ssd_bwd_kernel<RP, RN, TC>), g, ssd_bwd_smem(RP, RN),
                   TC ? "ssd_bwd_kernel (old, tc)" : "ssd_bwd_kernel (old)");
    else
        SSD_LAUNCH((ssd_bwd_fast_kernel<RP, RN>), g, ssd_bwd_fast_smem(RP, RN), "ssd_bwd_fast_kernel");
}

template <int RP, int RN>
static void ssd_fwd_chunks(const ssd_args &g) {
    if (cuda_ssd_mma() == 1) ssd_fwd_launch<RP, RN, true>(g);
    else ssd_fwd_launch<RP, RN, false>(g);
}

template <int RP, int RN>
static void ssd_bwd_chunks(const ssd_args &g) {
    if (cuda_ssd_mma() == 1) ssd_bwd_launch<RP, RN, true>(g);
    else ssd_bwd_launch<RP, RN, false>(g);
}

// Calls F<RP, RN> for the tile counts of P and N (16, 32 or 64 rows each).
#define SSD_DISPATCH(F, g)                                                  \
    switch (ssd_tiles((g).P) * 10 + ssd_tiles((g).N)) {                     \
    case 11: F<1, 1>(g); break;                                             \
    case 12: F<1, 2>(g); break;                                             \
    case 14: F<1, 4>(g); break;                                             \
    case 21: F<2, 1>(g); break;                                             \
    case 22: F<2, 2>(g); break;                                             \
    case 24: F<2, 4>(g); break;                                             \
    case 41: F<4, 1>(g); break;                                             \
    case 42: F<4, 2>(g); break;                                             \
    default: F<4, 4>(g); break;                                             \
    }

static ssd_args ssd_args_of(const float *x, int ld_x, const float *dt, int ld_dt, const float *delta, const float *B,
                            const float *C, int ld_bc, const float *dt_bias, const float *A_log, const float *D,
                            const int *seq_off, int n_seq, int n_tok, int H, int P, int N) {
    if (P < 1 || P > 64) hax_die("cuda: ssd: head_dim P: expected 1 to 64, found %d", P);
    if (N < 1 || N > 64) hax_die("cuda: ssd: state size N: expected 1 to 64, found %d", N);
    ssd_args g = {};
    g.x = x, g.ld_x = ld_x, g.dt = dt, g.ld_dt = ld_dt, g.delta = delta, g.B = B, g.C = C, g.ld_bc = ld_bc;
    g.dt_bias = dt_bias, g.A_log = A_log, g.D = D, g.seq_off = seq_off;
    g.n_seq = n_seq, g.n_tok = n_tok, g.n_slots = ssd_slots(n_tok, n_seq), g.H = H, g.P = P, g.N = N;
    return g;
}

// Checkpoint: S_in [slot][H][P·N] floats, then e^{a_last} [slot][H].
static void ssd_set_ckpt(ssd_args *g, float *ckpt) {
    g->S = ckpt;
    g->dec = ckpt + (size_t)g->n_slots * g->H * g->P * g->N;
}

extern "C" size_t cuda_ssd_ckpt_floats(int n_tok, int n_seq, int H, int P, int N) {
    return (size_t)ssd_slots(n_tok, n_seq) * H * ((size_t)P * N + 1);
}

static size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// Workspace: dS [slot][H][P·N] floats, then the partials [slot][H][3] doubles.
extern "C" size_t cuda_ssd_workspace_bytes(int n_tok, int n_seq, int H, int P, int N) {
    size_t slots = (size_t)ssd_slots(n_tok, n_seq);
    return align256(slots * H * P * N * sizeof(float)) + slots * H * 3 * sizeof(double);
}

extern "C" void cuda_ssd_forward(float *y, int ld_y, float *delta, float *ckpt, const float *x, int ld_x,
                                 const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                                 const float *dt_bias, const float *A_log, const float *D, const int *seq_off,
                                 int n_seq, int n_tok, int H, int P, int N) {
    ssd_args g = ssd_args_of(x, ld_x, dt, ld_dt, delta, B, C, ld_bc, dt_bias, A_log, D, seq_off, n_seq, n_tok, H, P, N);
    if (n_seq == 0 || n_tok == 0) return;
    ssd_delta_kernel<<<cu_blocks((long)n_tok * H, 256), 256, 0, cu_stream()>>>(delta, dt, ld_dt, dt_bias, n_tok, H);
    CUDA_LAUNCHED();
    CUDA_SCAN_MARK("ssd_delta_kernel");
    if (!ckpt) hax_die("cuda: ssd: forward: expected a checkpoint buffer (cuda_ssd_ckpt_floats), found NULL");
    g.y = y, g.ld_y = ld_y;
    ssd_set_ckpt(&g, ckpt);
    SSD_DISPATCH(ssd_fwd_chunks, g);
}

extern "C" void cuda_ssd_backward(float *dx, int ld_dx, float *ddt, int ld_ddt, float *dB, float *dC, int ld_dbc,
                                  float *ddt_bias, float *dA_log, float *dD, const float *dy, int ld_dy,
                                  const float *delta, const float *ckpt, const float *x, int ld_x,
                                  const float *dt, int ld_dt, const float *B, const float *C, int ld_bc,
                                  const float *dt_bias, const float *A_log, const float *D, const int *seq_off,
                                  int n_seq, int n_tok, int H, int P, int N, void *work) {
    ssd_args g = ssd_args_of(x, ld_x, dt, ld_dt, delta, B, C, ld_bc, dt_bias, A_log, D, seq_off, n_seq, n_tok, H, P, N);
    if (n_seq == 0 || n_tok == 0) return;
    ssd_set_ckpt(&g, (float *)ckpt);
    g.dx = dx, g.ld_dx = ld_dx, g.ddt = ddt, g.ld_ddt = ld_ddt, g.dB = dB, g.dC = dC, g.ld_dbc = ld_dbc;
    g.dy = dy, g.ld_dy = ld_dy;
    g.dS = (float *)work;
    g.par = (double *)((char *)work + align256((size_t)g.n_slots * H * P * N * sizeof(float)));
    SSD_DISPATCH(ssd_bwd_chunks, g);
    ssd_par_kernel<<<H, SSD_THREADS, 0, cu_stream()>>>(dA_log, dD, ddt_bias, g.par, A_log, seq_off, n_seq, H);
    CUDA_LAUNCHED();
    CUDA_SCAN_MARK("ssd_par_kernel");
}
