// cuda/ops/scan_kernels.cuh: the sequential recurrence of Mamba-2's SSD
// (cuda/ops/ssd.cu): kernels templated on SSD, their launch helpers and the
// workspace layout. cuda/ops/scan.cu includes it too: its Mamba scan is
// chunked over time (its own kernels) but uses the sequential forward
// (launch_fwd<false>) when no checkpoints are asked for, and bc_sum_kernel.
//
// Block layout: a block is CPB channels × G lanes of one sequence
// (blockIdx.y); blockIdx.x is the channel block. Lane l of a channel holds
// the state entries n = k·G + l, k < NPL. Mamba (P = 1): CPB = 256/G
// channels; SSD: CPB = P, the block is one head, so sums over a head's
// channels (dΔ, dD, dA) stay inside the block.
//
// The efficient design for SSD, for later: a chunked scan (the "state
// passing" form: within a chunk of 64..256 positions the outputs are small
// matrix products (C·Bᵀ masked by the decay) on tensor cores, between chunks
// only the [P, N] states are passed), parallel over time as cuda/ops/scan.cu
// is for Mamba.
#ifndef HAX_CU_SCAN_KERNELS_CUH
#define HAX_CU_SCAN_KERNELS_CUH

#include "cuda/core/common.cuh"
#include "cuda/ops/scan.h"
#include "cuda/ops/ssd.h"

#define T CU_SCAN_T

struct scan_args {
    // forward
    float *y;
    int ld_y;
    float *ckpt;
    const float *x, *dt, *delta, *dt_bias, *A_log, *B, *C, *D;
    int ld_x, ld_dt, ld_bc;  // dt: Mamba's Δraw or SSD's dt; delta: SSD's Δ [n_tok, H] (Mamba: NULL)
    const int *seq_off;
    int n_seq, n_tok, E, N, H, P, G, CPB;
    // backward
    float *dx, *ddt, *dB, *dC;
    int ld_dx, ld_ddt, ld_dbc;
    const float *dy;
    int ld_dy;
    float *bc_part;  // [n_cb][n_tok][2N] per-block dB|dC sums
    double *par;     // [n_seq][nA + 2H]: dA (w.r.t. A), dD, dΔbias partials
};

__device__ __forceinline__ float group_sum(float v, int G) {
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, G);
    return v;
}
__device__ __forceinline__ double group_sumd(double v, int G) {
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, G);
    return v;
}

static inline size_t ckpt_slots(int n_tok, int n_seq) { return (size_t)n_tok / T + (size_t)n_seq; }

// Slot of sequence s's first checkpoint (seq_off[0] = 0): s + start/T.
__device__ __forceinline__ size_t ckpt_base(const int *seq_off, int s) { return (size_t)s + seq_off[s] / T; }

// A chunk of T positions staged in shared memory by the whole block (loads
// coalesced and all in flight at once, B and C read once for all channels):
// x, Δ, Δ's pre-activation and dy as [T][CPB], B and C as [T][N].
struct chunk_stage {
    float *x, *dl, *raw, *g, *B, *C;
};

static inline size_t stage_floats(int CPB, int N, bool bwd) { return (size_t)T * ((bwd ? 4 : 2) * CPB + 2 * N); }

__device__ __forceinline__ chunk_stage stage_at(float *p, int CPB, int N, bool bwd) {
    chunk_stage st;
    st.x = p, st.dl = p + T * CPB;
    st.raw = bwd ? p + 2 * T * CPB : NULL, st.g = bwd ? p + 3 * T * CPB : NULL;
    st.B = p + (bwd ? 4 : 2) * T * CPB, st.C = st.B + T * N;
    return st;
}

// Loads positions ta .. ta+L-1 of channel block cb (callers synchronise
// before and after).
template <bool SSD>
__device__ static void load_chunk(const scan_args &a, const chunk_stage &st, int ta, int L, int cb, bool bwd) {
    int CPB = a.CPB, N = a.N;
    for (int q = threadIdx.x; q < L * CPB; q += blockDim.x) {
        int i = q / CPB, c = min(cb * CPB + q % CPB, a.E - 1), t = ta + i, h = c / a.P;
        st.x[q] = a.x[(size_t)t * a.ld_x + c];
        float r = a.dt[(size_t)t * a.ld_dt + h] + a.dt_bias[h];
        st.dl[q] = SSD ? a.delta[(size_t)t * a.H + h] : hax_softplus(r);
        if (bwd) {
            st.raw[q] = r;
            st.g[q] = a.dy[(size_t)t * a.ld_dy + c];
        }
    }
    for (int q = threadIdx.x; q < L * N; q += blockDim.x) {
        int i = q / N, n = q % N;
        st.B[q] = a.B[(size_t)(ta + i) * a.ld_bc + n];
        st.C[q] = a.C[(size_t)(ta + i) * a.ld_bc + n];
    }
}

template <int NPL, bool SSD>
__global__ static void __launch_bounds__(SSD ? 1024 : 256) scan_fwd_kernel(scan_args a) {
    extern __shared__ float smem_f[];
    int G = a.G, CPB = a.CPB, ch = threadIdx.x / G, lane = threadIdx.x % G, s = blockIdx.y;
    int c = blockIdx.x * CPB + ch;
    bool active = c < a.E;
    if (!active) c = a.E - 1;  // reads stay in bounds; nothing is written
    int h = c / a.P, N = a.N;
    chunk_stage sg = stage_at(smem_f, CPB, N, false);
    float A[NPL], st[NPL];
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        A[k] = -expf(SSD ? a.A_log[h] : a.A_log[(size_t)c * N + k * G + lane]);
        st[k] = 0.0f;
    }
    float Dc = a.D[h];
    int t0 = a.seq_off[s], len = a.seq_off[s + 1] - t0;
    size_t base = ckpt_base(a.seq_off, s);
    for (int j = 0; j * T < len; j++) {
        int ta = t0 + j * T, L = len - j * T < T ? len - j * T : T;
        if (a.ckpt && active) {
            float *ck = a.ckpt + (base + j) * a.E * N + (size_t)c * N;
#pragma unroll
            for (int k = 0; k < NPL; k++) ck[k * G + lane] = st[k];
        }
        __syncthreads();
        load_chunk<SSD>(a, sg, ta, L, blockIdx.x, false);
        __syncthreads();
        for (int i = 0; i < L; i++) {
            float xv = sg.x[i * CPB + ch], dl = sg.dl[i * CPB + ch], dxv = dl * xv;
            const float *Bt = sg.B + i * N, *Ct = sg.C + i * N;
            float acc = 0.0f;
#pragma unroll
            for (int k = 0; k < NPL; k++) {
                int n = k * G + lane;
                st[k] = expf(dl * A[k]) * st[k] + dxv * Bt[n];
                acc += Ct[n] * st[k];
            }
            acc = group_sum(acc, G);
            if (active && lane == 0) a.y[(size_t)(ta + i) * a.ld_y + c] = acc + Dc * xv;
        }
    }
}

// Shared memory of the backward: dB|dC shares [T][CPB][2N] floats, dΔ
// shares (SSD) or dΔraw (Mamba) [T][CPB] floats, dx [T][CPB] floats, dΔraw
// of each position [T] doubles, [2·CPB] doubles for the final parameter sums,
// then the staged chunk. dx and dΔraw go through shared memory so that their
// global read-modify-writes happen once per chunk, coalesced and all in
// flight, instead of stalling the sequential sweep at every position.
static inline size_t bwd_smem_bytes(int CPB, int N) {
    return (size_t)T * CPB * 2 * N * sizeof(float) + 2 * (size_t)T * CPB * sizeof(float) +
           (size_t)T * sizeof(double) + 2 * (size_t)CPB * sizeof(double) +
           stage_floats(CPB, N, true) * sizeof(float);
}

template <int NPL, bool SSD>
__global__ static void __launch_bounds__(SSD ? 1024 : 256, SSD ? 1 : 2) scan_bwd_kernel(scan_args a) {
    extern __shared__ double smem_d[];
    int G = a.G, CPB = a.CPB, N = a.N, ch = threadIdx.x / G, lane = threadIdx.x % G, s = blockIdx.y;
    int cb = blockIdx.x, c = cb * CPB + ch;
    int n_act = a.E - cb * CPB < CPB ? a.E - cb * CPB : CPB;  // channels of this block that exist
    bool active = c < a.E;
    if (!active) c = a.E - 1;
    int h = c / a.P;
    float *sm_bc = (float *)smem_d;                      // [T][CPB][2N]
    float *sm_dd = sm_bc + (size_t)T * CPB * 2 * N;      // [T][CPB] dΔ (SSD) or dΔraw (Mamba)
    float *sm_dx = sm_dd + (size_t)T * CPB;              // [T][CPB]
    double *sm_du = (double *)(sm_dx + (size_t)T * CPB); // [T] (8-byte aligned: T·CPB is even)
    double *sm_red = sm_du + T;                          // [2·CPB]
    chunk_stage sg = stage_at((float *)(sm_red + 2 * CPB), CPB, N, true);

    float A[NPL], hadj[NPL];
    double pA[NPL];
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        A[k] = -expf(SSD ? a.A_log[h] : a.A_log[(size_t)c * N + k * G + lane]);
        hadj[k] = 0.0f;
        pA[k] = 0.0;
    }
    float Dc = a.D[h];
    double pD = 0.0, pb = 0.0;
    int t0 = a.seq_off[s], len = a.seq_off[s + 1] - t0, n_chunk = (len + T - 1) / T;
    size_t base = ckpt_base(a.seq_off, s);
    for (int j = n_chunk - 1; j >= 0; j--) {
        int ta = t0 + j * T, L = len - j * T < T ? len - j * T : T;
        load_chunk<SSD>(a, sg, ta, L, cb, true);  // (the previous chunk ended with a barrier)
        __syncthreads();
        // Recompute the chunk's states: S[i] is the state before position ta+i.
        float S[T + 1][NPL];
        const float *ck = a.ckpt + (base + j) * a.E * N + (size_t)c * N;
#pragma unroll
        for (int k = 0; k < NPL; k++) S[0][k] = ck[k * G + lane];
#pragma unroll
        for (int i = 0; i < T; i++) {
            if (i < L) {
                float xv = sg.x[i * CPB + ch], dl = sg.dl[i * CPB + ch], dxv = dl * xv;
                const float *Bt = sg.B + i * N;
#pragma unroll
                for (int k = 0; k < NPL; k++) S[i + 1][k] = expf(dl * A[k]) * S[i][k] + dxv * Bt[k * G + lane];
            }
        }
        // Reverse sweep.
#pragma unroll
        for (int i = T - 1; i >= 0; i--) {
            if (i < L) {
                float g = sg.g[i * CPB + ch], xv = sg.x[i * CPB + ch], dl = sg.dl[i * CPB + ch];
                const float *Bt = sg.B + i * N, *Ct = sg.C + i * N;
                float dxt = 0.0f, ddl = 0.0f;
                float *bc = sm_bc + ((size_t)i * CPB + ch) * 2 * N;
#pragma unroll
                for (int k = 0; k < NPL; k++) {
                    int n = k * G + lane;
                    float e = expf(dl * A[k]);
                    float hn = hadj[k] + g * Ct[n];  // adjoint of the state after position t
                    bc[N + n] = g * S[i + 1][k];     // dC share
                    bc[n] = hn * dl * xv;            // dB share
                    dxt += hn * dl * Bt[n];
                    float da = hn * S[i][k];         // adjoint of exp(Δ·A)
                    ddl += hn * Bt[n] * xv + da * e * A[k];
                    pA[k] += (double)(da * e * dl);
                    hadj[k] = hn * e;
                }
                dxt = group_sum(dxt, G);
                ddl = group_sum(ddl, G);
                if (lane == 0) {
                    sm_dx[i * CPB + ch] = dxt + g * Dc;
                    pD += (double)g * xv;
                    if (a.P == 1) {
                        float dr = ddl * hax_dsoftplus(sg.raw[i * CPB + ch]);
                        pb += dr;
                        sm_dd[i * CPB + ch] = dr;
                    } else {
                        sm_dd[i * CPB + ch] = ddl;
                    }
                }
            }
        }
        __syncthreads();
        // dx (and Mamba's dΔraw) of the chunk, one coalesced pass.
        for (int q = threadIdx.x; q < L * CPB; q += blockDim.x) {
            int i = q / CPB, cc = cb * CPB + q % CPB;
            if (cc >= a.E) continue;
            size_t t = (size_t)(ta + i);
            if (a.dx) a.dx[t * a.ld_dx + cc] += sm_dx[q];
            if (a.P == 1 && a.ddt) a.ddt[t * a.ld_ddt + cc] += sm_dd[q];
        }
        // dB|dC of each position: this block's channels summed in order.
        for (int q = threadIdx.x; q < L * 2 * N; q += blockDim.x) {
            int i = q / (2 * N), jn = q % (2 * N);
            float acc = 0.0f;
            for (int cc = 0; cc < n_act; cc++) acc += sm_bc[((size_t)i * CPB + cc) * 2 * N + jn];
            a.bc_part[((size_t)cb * a.n_tok + ta + i) * 2 * N + jn] = acc;
        }
        // SSD: dΔ of the head = Σ over its P channels; then through the softplus.
        if (a.P > 1 && (int)threadIdx.x < L) {
            int i = threadIdx.x, t = ta + i;
            double dd = 0.0;
            for (int cc = 0; cc < CPB; cc++) dd += (double)sm_dd[i * CPB + cc];
            float u = sg.raw[i * CPB];
            double du = dd * (u > 20.0f ? 1.0 : (double)hax_sigmoid(u));
            if (a.ddt) a.ddt[(size_t)t * a.ld_ddt + h] += (float)du;
            sm_du[i] = du;
        }
        __syncthreads();
        if (a.P > 1 && threadIdx.x == 0)
            for (int i = L - 1; i >= 0; i--) pb += sm_du[i];
    }
    // Parameter partials of this sequence.
    int nA = SSD ? a.H : a.E * N;
    double *par = a.par + (size_t)s * (nA + 2 * a.H);
    if (!SSD) {
        if (active) {
#pragma unroll
            for (int k = 0; k < NPL; k++) par[(size_t)c * N + k * G + lane] = pA[k];
            if (lane == 0) par[nA + h] = pD, par[nA + a.H + h] = pb;
        }
        return;
    }
    double gA = 0.0;
#pragma unroll
    for (int k = 0; k < NPL; k++) gA += pA[k];
    gA = group_sumd(gA, G);
    if (lane == 0) sm_red[ch] = gA, sm_red[CPB + ch] = pD;
    __syncthreads();
    if (threadIdx.x == 0) {
        double sA = 0.0, sD = 0.0;
        for (int cc = 0; cc < CPB; cc++) sA += sm_red[cc], sD += sm_red[CPB + cc];
        par[h] = sA;
        par[nA + h] = sD;
        par[nA + a.H + h] = pb;
    }
}

// dB, dC += Σ over channel blocks (in order) of the block sums.
__global__ static void bc_sum_kernel(float *dB, float *dC, int ld, const float *part, int n_cb, int n_tok, int N) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_tok * 2 * N) return;
    int t = (int)(i / (2 * N)), jn = (int)(i % (2 * N));
    float acc = 0.0f;
    for (int cb = 0; cb < n_cb; cb++) acc += part[((size_t)cb * n_tok + t) * 2 * N + jn];
    float *dst = jn < N ? dB : dC;
    if (dst) dst[(size_t)t * ld + (jn % N)] += acc;
}

// Parameter gradients += the sequence partials, one sequence at a time (each
// rounded to float, as the CPU adds them). dA_log = dA · A.
template <bool SSD>
__global__ static void par_sum_kernel(float *dA_log, float *dD, float *ddt_bias, const double *par,
                                      const float *A_log, int n_seq, int nA, int H) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int per = nA + 2 * H;
    if (i >= per) return;
    float *dst = i < nA ? dA_log : i < nA + H ? dD : ddt_bias;
    if (!dst) return;
    int idx = i < nA ? i : i < nA + H ? i - nA : i - nA - H;
    double Ai = 1.0;
    if (i < nA) Ai = SSD ? -exp((double)A_log[i]) : (double)-expf(A_log[i]);
    float acc = dst[idx];
    for (int s = 0; s < n_seq; s++) acc += (float)(par[(size_t)s * per + i] * Ai);
    dst[idx] = acc;
}

// ---------------------------------------------------------------- launch helpers

// NPL (state entries per lane) and G (lanes per channel) for N.
static inline void split_state(int N, int *G, int *NPL, const char *who) {
    if (N < 1 || N > 256 || (N & (N - 1)))
        hax_die("cuda: %s: state size N: expected a power of two up to 256, found %d", who, N);
    *G = N < 32 ? N : 32;
    *NPL = N / *G;
}

template <bool SSD>
static void launch_fwd(const scan_args &args) {
    // The forward gives each lane 4 state entries (fewer lanes per channel:
    // fewer shuffles per entry in the sum over n; it is bound by instruction
    // issue), at least 32 threads a block. The backward keeps N/min(N,32), as
    // its registers hold a chunk of states.
    scan_args a = args;
    a.G = a.N / 4 < 1 ? 1 : a.N / 4 > 32 ? 32 : a.N / 4;
    if (a.P == 1) a.CPB = 128 / a.G;
    while (a.CPB * a.G < 32 && a.G < (a.N < 32 ? a.N : 32)) a.G *= 2;
    dim3 grid((a.E + a.CPB - 1) / a.CPB, a.n_seq);
    int threads = a.CPB * a.G, npl = a.N / a.G;
    size_t smem = stage_floats(a.CPB, a.N, false) * sizeof(float);  // under 48 KB for N <= 256
    switch (npl) {
    case 1: scan_fwd_kernel<1, SSD><<<grid, threads, smem, cu_stream()>>>(a); break;
    case 2: scan_fwd_kernel<2, SSD><<<grid, threads, smem, cu_stream()>>>(a); break;
    case 4: scan_fwd_kernel<4, SSD><<<grid, threads, smem, cu_stream()>>>(a); break;
    default: scan_fwd_kernel<8, SSD><<<grid, threads, smem, cu_stream()>>>(a); break;
    }
    CUDA_LAUNCHED();
}

template <int NPL, bool SSD>
static void launch_bwd_npl(const scan_args &a, dim3 grid, int threads, size_t smem) {
    // Raise the dynamic shared-memory limit once per instance (a host-side
    // attribute, no synchronisation).
    static size_t raised = 0;
    if (smem > raised) {
        CUDA_CHECK(cudaFuncSetAttribute(scan_bwd_kernel<NPL, SSD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        raised = smem;
    }
    scan_bwd_kernel<NPL, SSD><<<grid, threads, smem, cu_stream()>>>(a);
}

template <bool SSD>
static void launch_bwd(const scan_args &a, const float *A_log, float *dA_log, float *dD, float *ddt_bias) {
    int n_cb = (a.E + a.CPB - 1) / a.CPB;
    dim3 grid(n_cb, a.n_seq);
    int threads = a.CPB * a.G, npl = a.N / a.G;
    size_t smem = bwd_smem_bytes(a.CPB, a.N);
    switch (npl) {
    case 1: launch_bwd_npl<1, SSD>(a, grid, threads, smem); break;
    case 2: launch_bwd_npl<2, SSD>(a, grid, threads, smem); break;
    case 4: launch_bwd_npl<4, SSD>(a, grid, threads, smem); break;
    default: launch_bwd_npl<8, SSD>(a, grid, threads, smem); break;
    }
    CUDA_LAUNCHED();
    if (a.dB || a.dC) {
        bc_sum_kernel<<<cu_blocks((long)a.n_tok * 2 * a.N, 256), 256, 0, cu_stream()>>>(a.dB, a.dC, a.ld_dbc, a.bc_part,
                                                                                     n_cb, a.n_tok, a.N);
        CUDA_LAUNCHED();
    }
    int nA = SSD ? a.H : a.E * a.N, per = nA + 2 * a.H;
    par_sum_kernel<SSD><<<cu_blocks(per, 128), 128, 0, cu_stream()>>>(dA_log, dD, ddt_bias, a.par, A_log,
                                                                       a.n_seq, nA, a.H);
    CUDA_LAUNCHED();
}

static inline size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// Workspace: [n_cb][n_tok][2N] floats then [n_seq][nA + 2H] doubles.
static inline size_t work_bytes(int n_tok, int n_seq, int n_cb, int N, int nA, int H) {
    return align256((size_t)n_cb * n_tok * 2 * N * sizeof(float)) + (size_t)n_seq * (nA + 2 * H) * sizeof(double);
}

static inline void set_work(scan_args *a, void *work, int n_cb) {
    a->bc_part = (float *)work;
    a->par = (double *)((char *)work + align256((size_t)n_cb * a->n_tok * 2 * a->N * sizeof(float)));
}

// ---------------------------------------------------------------- Mamba chunked scan
// Lane geometry and the warp sums of dB|dC of cuda/ops/scan.cu.

__host__ __device__ constexpr int geo_G(int N) { return N / 4 < 1 ? 1 : N / 4 > 32 ? 32 : N / 4; }
// Steps 1, 3 and 4: CPB_F channels a block (at most 256 threads).
__host__ __device__ constexpr int geo_cpb_f(int N) { return 256 / geo_G(N) < 128 ? 256 / geo_G(N) : 128; }
// Step 6: W warps a block, so that the dB|dC rows of T positions ([T][W][2N]
// floats) stay within 32 KB and a block has at most 64 channels.
__host__ __device__ constexpr int cmin(int a, int b) { return a < b ? a : b; }
__host__ __device__ constexpr int geo_w_b(int N) { return cmin(8, cmin(2 * geo_G(N), 256 / N < 1 ? 1 : 256 / N)); }
__host__ __device__ constexpr int geo_cpb_b(int N) { return 32 * geo_w_b(N) / geo_G(N); }

// dB|dC shares of a warp's channels (lanes ch·G + l), v[k] the dB share and
// v[NPL + k] the dC share of n = k·G + l, summed over the channels by
// recursive halving: at each channel bit o a lane keeps half of its values and
// adds its partner's copy of them (the lanes whose bit o is set keep the upper
// half: base counts where the kept values start); once one value is left,
// plain pairwise sums. Fixed order: deterministic.
template <int M, int O>
__device__ __forceinline__ void halve(float *v, int wl, int &base) {
    if constexpr (O < 32) {
        if constexpr (M > 1) {
            bool up = wl & O;
#pragma unroll
            for (int i = 0; i < M / 2; i++) {
                float send = up ? v[i] : v[i + M / 2], keep = up ? v[i + M / 2] : v[i];
                v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
            }
            if (up) base += M / 2;
            halve<M / 2, O * 2>(v, wl, base);
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
            halve<1, O * 2>(v, wl, base);
        }
    }
}

// Sums the warp's shares and writes its row of 2N (dB then dC) to row.
template <int N>
__device__ __forceinline__ void warp_bc(float *v, int wl, float *row) {
    constexpr int G = geo_G(N), NPL = N / G, M = 2 * NPL, CW = 32 / G, MF = M >= CW ? M / CW : 1;
    int base = 0;
    halve<M, G>(v, wl, base);
    if (M < CW && wl / G >= M) return;  // a copy of a sum another lane writes
#pragma unroll
    for (int i = 0; i < MF; i++) {
        int m = base + i, k = m % NPL;
        row[(m >= NPL ? N : 0) + k * G + wl % G] = v[i];
    }
}

#endif
