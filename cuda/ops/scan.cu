// cuda/ops/scan.cu: the Mamba selective scan on the GPU (see cuda/ops/scan.h),
// parallel over time as well as over sequences, channels and state entries:
// a two-level scan (the algebra is modelled on the CPU in tests/test_scan_chunk.c).
//
// Each sequence is cut into chunks of Q = CU_SCAN_Q positions (never across a
// sequence boundary). Chunk slots: sequence s owns the slots from s + seq_off[s]/Q,
// n_tok/Q + n_seq in all; a block finds its (sequence, chunk) by a binary
// search of seq_off (the chunk table, on the device; the host knows only
// n_tok and n_seq). Per (sequence, channel c, state n) the recurrence
// s <- a_t·s + b_t, a_t = exp(Δ_t·A), is linear, so over chunk j
// (from a zero state it ends at S_j, and Π a_t = exp(A·ΣΔ_t)):
//   forward:  1. every chunk from a zero state: S_j and ΣΔ (chunk_fwd_kernel<N, false>)
//             2. state entering j+1 = exp(A·ΣΔ_j)·(state entering j) + S_j, a short
//                sequential pass per (sequence, c, n) (carry_fwd_kernel)
//             3. every chunk again from its true input state: y, and the
//                checkpoints every T positions (chunk_fwd_kernel<N, true>)
//   backward: 4. every chunk in reverse from a zero adjoint: the adjoint L_j
//                leaving its start (chunk_adj_kernel)
//             5. adjoint entering j from the right: R_{j−1} = L_j + exp(A·ΣΔ_j)·R_j
//                (carry_bwd_kernel, in place)
//             6. every chunk in reverse from R_j, T positions at a time
//                recomputed from the checkpoints: the gradients (chunk_bwd_kernel)
// dB|dC (sums over channels) are summed in a warp by recursive halving and
// over a block's warps in shared memory, in a fixed order; with more than one
// channel block, per-block rows are added in block order (bc_sum_kernel).
// The parameter gradients get one partial per chunk, summed per sequence in
// chunk order and added sequence after sequence (par_sum_mamba_kernel).
//
// Lane layout (per N, compile-time): G lanes per channel, lane l holding the
// state entries n = k·G + l, k < N/G (G = N/4 within 1..32).
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "cuda/ops/scan_kernels.cuh"

void (*cuda_scan_mark)(const char *kernel) = NULL;

// HAX_SCAN_KERNELS, read once (cuda/ops/scan.h); -1: not read yet.
static int g_old_kernels = -1;

extern "C" int cuda_scan_old_kernels(void) {
    // new 0, old 1; unset (2): the fast Mamba scan backward and the old SSD backward,
    // as measured (H200, 2026-12-07, tests/gpu_scans.c: chunk_bwd 0.250 -> 0.221 ms, the
    // fast SSD backward 0.304 -> 0.360 ms, slower); both versions give the same bits.
    if (g_old_kernels < 0) g_old_kernels = hax_env_choice("HAX_SCAN_KERNELS", "new old", 2);
    return g_old_kernels;
}

extern "C" void cuda_scan_set_old_kernels(int old) { g_old_kernels = old; }
// After a launch: its errors, then the timing mark (cuda/ops/scan.h).
#define LAUNCHED(name) do { CUDA_LAUNCHED(); CUDA_SCAN_MARK(name); } while (0)

#define Q CU_SCAN_Q
#define QT (CU_SCAN_Q / CU_SCAN_T)  // checkpoints per chunk

static_assert(Q % T == 0, "CU_SCAN_Q must be a multiple of CU_SCAN_T");

// exp(Δ·A) per (t, c, n), the chunk kernels' most frequent operation, and the
// carries' exp(A·ΣΔ). CU_SCAN_EXP2 1: exp2(Δ·A₂), A₂ = A·log2 e formed once per
// (c, n): a multiply and one MUFU.EX2 instead of expf's ~9 instructions; a
// few ulp from expf (A₂'s rounding adds |Δ·A|·2⁻²⁴ relative), far inside the
// CPU op tolerances (1e-5, 1e-4). CU_SCAN_EXP2 0: expf, as the CPU op.
#ifndef CU_SCAN_EXP2
#define CU_SCAN_EXP2 1
#endif
__device__ __forceinline__ float decay_rate(float A) { return CU_SCAN_EXP2 ? A * 1.44269504088896341f : A; }
__device__ __forceinline__ float decay(float dl, float Ar) { return CU_SCAN_EXP2 ? exp2f(dl * Ar) : expf(dl * Ar); }

// (the lane geometry geo_*: cuda/ops/scan_kernels.cuh)

static size_t slots_of(int n_tok, int n_seq, int q) { return (size_t)n_tok / q + (size_t)n_seq; }

// First chunk slot of sequence s for chunks of q positions (seq_off[0] = 0).
__device__ __forceinline__ size_t slot_base(const int *seq_off, int s, int q) { return (size_t)s + seq_off[s] / q; }

// Sequence s, chunk j, first position ta and length L of chunk slot k; false
// for a slot that holds no chunk.
__device__ static bool chunk_at(const int *seq_off, int n_seq, int k, int *s, int *j, int *ta, int *L) {
    int lo = 0, hi = n_seq - 1;  // the last sequence whose first slot is <= k
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (mid + seq_off[mid] / Q <= k) lo = mid;
        else hi = mid - 1;
    }
    int jj = k - (lo + seq_off[lo] / Q), len = seq_off[lo + 1] - seq_off[lo];
    if (jj * Q >= len) return false;
    *s = lo, *j = jj, *ta = seq_off[lo] + jj * Q;
    *L = len - jj * Q < Q ? len - jj * Q : Q;
    return true;
}

struct mamba_args {
    const float *x, *draw, *dt_bias, *A_log, *B, *C, *D, *dy;
    int ld_x, ld_bc;
    const int *seq_off;
    int n_seq, n_tok, E, N;
    float *y, *ck16, *send, *dsum;  // forward: y, checkpoints [slots16][E][N], S_j [slots][E][N], ΣΔ [slots][E]
    float *carry;                   // backward: L_j, then R_j [slots][E][N]
    float *dx, *ddraw, *dB, *dC, *bc_part, *par;
    int ld_dx, ld_dbc, n_cb;        // n_cb: channel blocks of step 6
};

// T positions of CPB channels staged in shared memory by the whole block
// (coalesced loads, Δ computed once per (position, channel)): x, Δ, Δ's
// pre-activation and dy as [T][CPB], B and C as [T][N]; NULL members are not
// loaded. Channels past E load zeros (their lanes keep zero states, adjoints
// and shares).
struct mstage {
    float *x, *dl, *raw, *g, *B, *C;
    float *dsp;  // softplus'(Δ's pre-activation), the factor of dΔraw (the fast backward; NULL elsewhere)
};

template <int CPB>
__device__ static void stage_load(const mamba_args &a, const mstage &st, int ta, int L, int c0) {
    int N = a.N;
    for (int q = threadIdx.x; q < L * CPB; q += blockDim.x) {
        int t = ta + q / CPB, c = c0 + q % CPB;
        bool in = c < a.E;
        float r = in ? a.draw[(size_t)t * a.E + c] + a.dt_bias[c] : 0.0f;
        if (st.x) st.x[q] = in ? a.x[(size_t)t * a.ld_x + c] : 0.0f;
        if (st.dl) st.dl[q] = hax_softplus(r);
        if (st.raw) st.raw[q] = r;
        if (st.dsp) st.dsp[q] = hax_dsoftplus(r);
        if (st.g) st.g[q] = in ? a.dy[(size_t)t * a.E + c] : 0.0f;
    }
    for (int q = threadIdx.x; q < L * N; q += blockDim.x) {
        size_t at = (size_t)(ta + q / N) * a.ld_bc + q % N;
        if (st.B) st.B[q] = a.B[at];
        if (st.C) st.C[q] = a.C[at];
    }
}

// ---------------------------------------------------------------- steps 1 and 3

static size_t fwd_smem_floats(int N) { return (size_t)T * (3 * geo_cpb_f(N) + 2 * N); }

// OUT = false: step 1 (S_j, ΣΔ from a zero state); OUT = true: step 3 (from
// the checkpoint at the chunk's start: y and the other checkpoints).
template <int N, bool OUT>
__global__ static void __launch_bounds__(geo_cpb_f(N) * geo_G(N)) chunk_fwd_kernel(mamba_args a) {
    constexpr int G = geo_G(N), NPL = N / G, CPB = geo_cpb_f(N);
    extern __shared__ float smf[];
    int s, j, ta, L, slot = blockIdx.x;
    if (!chunk_at(a.seq_off, a.n_seq, slot, &s, &j, &ta, &L)) return;
    int ch = threadIdx.x / G, lane = threadIdx.x % G, c0 = blockIdx.y * CPB, c = c0 + ch;
    bool active = c < a.E;
    int cl = active ? c : a.E - 1;
    mstage st = {smf, smf + T * CPB, NULL, NULL, smf + 2 * T * CPB, OUT ? smf + 2 * T * CPB + T * N : NULL};
    float *sm_y = smf + 2 * T * CPB + 2 * T * N;  // [T][CPB]
    size_t EN = (size_t)a.E * N, m16 = slot_base(a.seq_off, s, T) + (size_t)j * QT;
    float A[NPL], h[NPL];
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        A[k] = decay_rate(-expf(a.A_log[(size_t)cl * N + k * G + lane]));
        h[k] = OUT && active ? a.ck16[m16 * EN + (size_t)c * N + k * G + lane] : 0.0f;
    }
    float Dc = a.D[cl], ds = 0.0f;
    for (int q = 0; q * T < L; q++) {
        int tq = ta + q * T, Lq = L - q * T < T ? L - q * T : T;
        if (OUT && q > 0 && active) {
#pragma unroll
            for (int k = 0; k < NPL; k++) a.ck16[(m16 + q) * EN + (size_t)c * N + k * G + lane] = h[k];
        }
        __syncthreads();  // the previous T positions are consumed
        stage_load<CPB>(a, st, tq, Lq, c0);
        __syncthreads();
        for (int i = 0; i < Lq; i++) {
            float xv = st.x[i * CPB + ch], dl = st.dl[i * CPB + ch], dxv = dl * xv, acc = 0.0f;
#pragma unroll
            for (int k = 0; k < NPL; k++) {
                int n = k * G + lane;
                h[k] = decay(dl, A[k]) * h[k] + dxv * st.B[i * N + n];
                if (OUT) acc += st.C[i * N + n] * h[k];
            }
            if (OUT) {
                acc = group_sum(acc, G);
                if (lane == 0) sm_y[i * CPB + ch] = acc + Dc * xv;
            } else {
                ds += dl;
            }
        }
        if (OUT) {
            __syncthreads();
            for (int p = threadIdx.x; p < Lq * CPB; p += blockDim.x) {
                int cc = c0 + p % CPB;
                if (cc < a.E) a.y[(size_t)(tq + p / CPB) * a.E + cc] = sm_y[p];
            }
        }
    }
    if (!OUT && active) {
#pragma unroll
        for (int k = 0; k < NPL; k++) a.send[(size_t)slot * EN + (size_t)c * N + k * G + lane] = h[k];
        if (lane == 0) a.dsum[(size_t)slot * a.E + c] = ds;
    }
}

// ---------------------------------------------------------------- steps 2 and 5

// One thread per (sequence, c·N + n), chunk after chunk. The loads of
// CARRY_B chunks are issued before their stores (only the carry is a
// dependence), so a thread waits on memory once per CARRY_B chunks.
#define CARRY_B 8
__global__ static void carry_fwd_kernel(mamba_args a) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int s = blockIdx.y;
    size_t EN = (size_t)a.E * a.N;
    if (i >= (long)EN) return;
    int c = (int)(i / a.N), nc = (a.seq_off[s + 1] - a.seq_off[s] + Q - 1) / Q;
    float A = decay_rate(-expf(a.A_log[i])), st = 0.0f;
    size_t k0 = slot_base(a.seq_off, s, Q), m0 = slot_base(a.seq_off, s, T);
    for (int j0 = 0; j0 < nc; j0 += CARRY_B) {
        float ds[CARRY_B], se[CARRY_B];
#pragma unroll
        for (int b = 0; b < CARRY_B; b++) {
            size_t k = k0 + j0 + b;
            ds[b] = j0 + b < nc ? a.dsum[k * a.E + c] : 0.0f, se[b] = j0 + b < nc ? a.send[k * EN + i] : 0.0f;
        }
#pragma unroll
        for (int b = 0; b < CARRY_B; b++) {
            if (j0 + b >= nc) break;
            a.ck16[(m0 + (size_t)(j0 + b) * QT) * EN + i] = st;
            st = decay(ds[b], A) * st + se[b];
        }
    }
}

__global__ static void carry_bwd_kernel(mamba_args a) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int s = blockIdx.y;
    size_t EN = (size_t)a.E * a.N;
    if (i >= (long)EN) return;
    int c = (int)(i / a.N), nc = (a.seq_off[s + 1] - a.seq_off[s] + Q - 1) / Q;
    float A = decay_rate(-expf(a.A_log[i])), r = 0.0f;
    size_t k0 = slot_base(a.seq_off, s, Q);
    for (int j0 = nc - 1; j0 >= 0; j0 -= CARRY_B) {
        float l[CARRY_B], ds[CARRY_B];
#pragma unroll
        for (int b = 0; b < CARRY_B; b++) {
            size_t k = k0 + j0 - b;  // (read only from the first chunk on)
            l[b] = j0 - b >= 0 ? a.carry[k * EN + i] : 0.0f, ds[b] = j0 - b >= 0 ? a.dsum[k * a.E + c] : 0.0f;
        }
#pragma unroll
        for (int b = 0; b < CARRY_B; b++) {
            if (j0 - b < 0) break;
            a.carry[(k0 + j0 - b) * EN + i] = r;
            r = l[b] + decay(ds[b], A) * r;
        }
    }
}

// ---------------------------------------------------------------- step 4

template <int N>
__global__ static void __launch_bounds__(geo_cpb_f(N) * geo_G(N)) chunk_adj_kernel(mamba_args a) {
    constexpr int G = geo_G(N), NPL = N / G, CPB = geo_cpb_f(N);
    extern __shared__ float smf[];
    int s, j, ta, L, slot = blockIdx.x;
    if (!chunk_at(a.seq_off, a.n_seq, slot, &s, &j, &ta, &L)) return;
    int ch = threadIdx.x / G, lane = threadIdx.x % G, c0 = blockIdx.y * CPB, c = c0 + ch;
    bool active = c < a.E;
    int cl = active ? c : a.E - 1;
    mstage st = {NULL, smf, NULL, smf + T * CPB, NULL, smf + 2 * T * CPB};
    float A[NPL], h[NPL];
#pragma unroll
    for (int k = 0; k < NPL; k++) A[k] = decay_rate(-expf(a.A_log[(size_t)cl * N + k * G + lane])), h[k] = 0.0f;
    for (int q = (L - 1) / T; q >= 0; q--) {
        int tq = ta + q * T, Lq = L - q * T < T ? L - q * T : T;
        __syncthreads();
        stage_load<CPB>(a, st, tq, Lq, c0);
        __syncthreads();
        for (int i = Lq - 1; i >= 0; i--) {
            float g = st.g[i * CPB + ch], dl = st.dl[i * CPB + ch];
#pragma unroll
            for (int k = 0; k < NPL; k++) h[k] = (h[k] + g * st.C[i * N + k * G + lane]) * decay(dl, A[k]);
        }
    }
    if (active) {
#pragma unroll
        for (int k = 0; k < NPL; k++) a.carry[(size_t)slot * a.E * N + (size_t)c * N + k * G + lane] = h[k];
    }
}

// ---------------------------------------------------------------- step 6

template <int N>
static size_t bwd_smem_floats_n() {
    return (size_t)T * (geo_w_b(N) * 2 * N + 6 * geo_cpb_b(N) + 2 * N);
}

// Step 6 holds the states of TS positions at a time (recomputed from the
// checkpoint for each part of TS): CU_SCAN_BWD_TS 8 halves the state
// registers (S[9][N/G] instead of S[17][N/G]) for 3 blocks an SM, at the cost
// of stepping through the first 8 positions twice; 16: the whole T at once,
// 2 blocks an SM.
#ifndef CU_SCAN_BWD_TS
#define CU_SCAN_BWD_TS 8
#endif
#define TS CU_SCAN_BWD_TS
static_assert(T % TS == 0, "CU_SCAN_BWD_TS must divide CU_SCAN_T");

template <int N>
__global__ static void __launch_bounds__(32 * geo_w_b(N), TS < T ? 3 : 2) chunk_bwd_kernel(mamba_args a) {
    constexpr int G = geo_G(N), NPL = N / G, W = geo_w_b(N), CPB = geo_cpb_b(N);
    extern __shared__ float smf[];
    int s, j, ta, L, slot = blockIdx.x;
    if (!chunk_at(a.seq_off, a.n_seq, slot, &s, &j, &ta, &L)) return;
    int ch = threadIdx.x / G, lane = threadIdx.x % G, warp = threadIdx.x / 32, wl = threadIdx.x % 32;
    int cb = blockIdx.y, c0 = cb * CPB, c = c0 + ch;
    bool active = c < a.E;
    int cl = active ? c : a.E - 1;
    float *wsum = smf;                        // [T][W][2N] the warps' dB|dC rows
    float *sm_dx = wsum + T * W * 2 * N;      // [T][CPB]
    float *sm_dr = sm_dx + T * CPB;           // [T][CPB] dΔraw
    float *p = sm_dr + T * CPB;
    mstage st = {p, p + T * CPB, p + 2 * T * CPB, p + 3 * T * CPB, p + 4 * T * CPB, p + 4 * T * CPB + T * N};
    size_t EN = (size_t)a.E * N, m16 = slot_base(a.seq_off, s, T) + (size_t)j * QT;
    float A[NPL], Ar[NPL], hadj[NPL], pA[NPL];
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        A[k] = -expf(a.A_log[(size_t)cl * N + k * G + lane]);
        Ar[k] = decay_rate(A[k]);
        hadj[k] = active ? a.carry[(size_t)slot * EN + (size_t)c * N + k * G + lane] : 0.0f;
        pA[k] = 0.0f;
    }
    float Dc = a.D[cl], pD = 0.0f, pb = 0.0f;
    for (int q = (L - 1) / T; q >= 0; q--) {
        int tq = ta + q * T, Lq = L - q * T < T ? L - q * T : T;
        __syncthreads();  // the previous T positions are flushed
        stage_load<CPB>(a, st, tq, Lq, c0);
        // With the stage, in one wait on memory: the old dx, dΔraw (the sweep adds) and the checkpoint.
        for (int r = threadIdx.x; r < Lq * CPB; r += blockDim.x) {
            int cc = c0 + r % CPB;
            size_t t = (size_t)(tq + r / CPB);
            sm_dx[r] = a.dx && cc < a.E ? a.dx[t * a.ld_dx + cc] : 0.0f;
            sm_dr[r] = a.ddraw && cc < a.E ? a.ddraw[t * a.E + cc] : 0.0f;
        }
        float ck[NPL];  // the state before position tq
#pragma unroll
        for (int k = 0; k < NPL; k++) ck[k] = active ? a.ck16[(m16 + q) * EN + (size_t)c * N + k * G + lane] : 0.0f;
        __syncthreads();
        // The T positions in parts of TS, the last first: S[i] is the state
        // before position tq+i0+i, recomputed from ck (the first i0 positions
        // stepped through again for each part).
#pragma unroll
        for (int part = T / TS - 1; part >= 0; part--) {
            const int i0 = part * TS;
            float S[TS + 1][NPL];
#pragma unroll
            for (int k = 0; k < NPL; k++) S[0][k] = ck[k];
#pragma unroll
            for (int i = 0; i < i0; i++) {
                if (i < Lq) {
                    float dxv = st.dl[i * CPB + ch] * st.x[i * CPB + ch];
#pragma unroll
                    for (int k = 0; k < NPL; k++)
                        S[0][k] = decay(st.dl[i * CPB + ch], Ar[k]) * S[0][k] + dxv * st.B[i * N + k * G + lane];
                }
            }
#pragma unroll
            for (int i = 0; i < TS; i++) {
                if (i0 + i < Lq) {
                    float dxv = st.dl[(i0 + i) * CPB + ch] * st.x[(i0 + i) * CPB + ch];
#pragma unroll
                    for (int k = 0; k < NPL; k++)
                        S[i + 1][k] = decay(st.dl[(i0 + i) * CPB + ch], Ar[k]) * S[i][k] +
                                      dxv * st.B[(i0 + i) * N + k * G + lane];
                }
            }
#pragma unroll
            for (int si = TS - 1; si >= 0; si--) {
                const int i = i0 + si;
                if (i < Lq) {
                    float g = st.g[i * CPB + ch], xv = st.x[i * CPB + ch], dl = st.dl[i * CPB + ch];
                    const float *Bt = st.B + i * N, *Ct = st.C + i * N;
                    float v[2 * NPL], dxt = 0.0f, ddl = 0.0f;
#pragma unroll
                    for (int k = 0; k < NPL; k++) {
                        int n = k * G + lane;
                        float e = decay(dl, Ar[k]);
                        float hn = hadj[k] + g * Ct[n];  // adjoint of the state after position t
                        v[NPL + k] = g * S[si + 1][k];   // dC share
                        v[k] = hn * dl * xv;             // dB share
                        dxt += hn * dl * Bt[n];
                        float da = hn * S[si][k];        // adjoint of exp(Δ·A)
                        ddl += hn * Bt[n] * xv + da * e * A[k];
                        pA[k] += da * e * dl;
                        hadj[k] = hn * e;
                    }
                    dxt = group_sum(dxt, G);
                    ddl = group_sum(ddl, G);
                    warp_bc<N>(v, wl, wsum + ((size_t)i * W + warp) * 2 * N);
                    if (lane == 0) {
                        float dr = ddl * hax_dsoftplus(st.raw[i * CPB + ch]);
                        sm_dx[i * CPB + ch] += dxt + g * Dc;
                        sm_dr[i * CPB + ch] += dr;
                        pD += g * xv;
                        pb += dr;
                    }
                }
            }
        }
        __syncthreads();
        // dx and dΔraw of these positions, one coalesced pass (each (t, c) has one owner).
        for (int r = threadIdx.x; r < Lq * CPB; r += blockDim.x) {
            int cc = c0 + r % CPB;
            if (cc >= a.E) continue;
            size_t t = (size_t)(tq + r / CPB);
            if (a.dx) a.dx[t * a.ld_dx + cc] = sm_dx[r];
            if (a.ddraw) a.ddraw[t * a.E + cc] = sm_dr[r];
        }
        // dB|dC: the warps' rows added in warp order; one channel block adds
        // them in place, several leave block rows for bc_sum_kernel.
        for (int r = threadIdx.x; r < Lq * 2 * N; r += blockDim.x) {
            int i = r / (2 * N), jn = r % (2 * N);
            float acc = 0.0f;
#pragma unroll
            for (int w = 0; w < W; w++) acc += wsum[((size_t)i * W + w) * 2 * N + jn];
            size_t t = (size_t)(tq + i);
            if (a.n_cb > 1) {
                a.bc_part[((size_t)cb * a.n_tok + t) * 2 * N + jn] = acc;
            } else {
                float *dst = jn < N ? a.dB : a.dC;
                if (dst) dst[t * a.ld_dbc + jn % N] += acc;
            }
        }
    }
    // This chunk's parameter partials: dA (w.r.t. A), dD, dΔbias.
    if (active) {
        float *par = a.par + (size_t)slot * (EN + 2 * (size_t)a.E);
#pragma unroll
        for (int k = 0; k < NPL; k++) par[(size_t)c * N + k * G + lane] = pA[k];
        if (lane == 0) par[EN + c] = pD, par[EN + a.E + c] = pb;
    }
}

// The fast step 6 (default; chunk_bwd_kernel: HAX_SCAN_KERNELS=old): the
// same operations in the same order (the same bits), with softplus'(Δraw)
// formed while staging (by all threads, 4 a thread, instead of by lane 0 of
// each channel inside the sweep: an expf and a division on the serial path of
// every position) and the sweep of a full T-position part compiled without
// per-position guards.
template <int N>
__global__ static void __launch_bounds__(32 * geo_w_b(N), TS < T ? 3 : 2) chunk_bwd_fast_kernel(mamba_args a) {
    constexpr int G = geo_G(N), NPL = N / G, W = geo_w_b(N), CPB = geo_cpb_b(N);
    extern __shared__ float smf[];
    int s, j, ta, L, slot = blockIdx.x;
    if (!chunk_at(a.seq_off, a.n_seq, slot, &s, &j, &ta, &L)) return;
    int ch = threadIdx.x / G, lane = threadIdx.x % G, warp = threadIdx.x / 32, wl = threadIdx.x % 32;
    int cb = blockIdx.y, c0 = cb * CPB, c = c0 + ch;
    bool active = c < a.E;
    int cl = active ? c : a.E - 1;
    float *wsum = smf;                        // [T][W][2N] the warps' dB|dC rows
    float *sm_dx = wsum + T * W * 2 * N;      // [T][CPB]
    float *sm_dr = sm_dx + T * CPB;           // [T][CPB] dΔraw
    float *p = sm_dr + T * CPB;
    // (the raw slot holds softplus'(raw) instead: dsp)
    mstage st = {p, p + T * CPB, NULL, p + 3 * T * CPB, p + 4 * T * CPB, p + 4 * T * CPB + T * N, p + 2 * T * CPB};
    size_t EN = (size_t)a.E * N, m16 = slot_base(a.seq_off, s, T) + (size_t)j * QT;
    float A[NPL], Ar[NPL], hadj[NPL], pA[NPL];
#pragma unroll
    for (int k = 0; k < NPL; k++) {
        A[k] = -expf(a.A_log[(size_t)cl * N + k * G + lane]);
        Ar[k] = decay_rate(A[k]);
        hadj[k] = active ? a.carry[(size_t)slot * EN + (size_t)c * N + k * G + lane] : 0.0f;
        pA[k] = 0.0f;
    }
    float Dc = a.D[cl], pD = 0.0f, pb = 0.0f;
    for (int q = (L - 1) / T; q >= 0; q--) {
        int tq = ta + q * T, Lq = L - q * T < T ? L - q * T : T;
        __syncthreads();  // the previous T positions are flushed
        stage_load<CPB>(a, st, tq, Lq, c0);
        // With the stage, in one wait on memory: the old dx, dΔraw (the sweep adds) and the checkpoint.
        for (int r = threadIdx.x; r < Lq * CPB; r += blockDim.x) {
            int cc = c0 + r % CPB;
            size_t t = (size_t)(tq + r / CPB);
            sm_dx[r] = a.dx && cc < a.E ? a.dx[t * a.ld_dx + cc] : 0.0f;
            sm_dr[r] = a.ddraw && cc < a.E ? a.ddraw[t * a.E + cc] : 0.0f;
        }
        float ck[NPL];  // the state before position tq
#pragma unroll
        for (int k = 0; k < NPL; k++) ck[k] = active ? a.ck16[(m16 + q) * EN + (size_t)c * N + k * G + lane] : 0.0f;
        __syncthreads();
        // The T positions in parts of TS, the last first: S[i] is the state
        // before position tq+i0+i, recomputed from ck (the first i0 positions
        // stepped through again for each part). sweep(full) with full a
        // compile-time true (all T positions there, the common case) has no
        // per-position guards: one straight run of code, so the compiler
        // overlaps a position's sums (shuffles) with the next one's products.
        auto sweep = [&](auto full) {
            constexpr bool FULL = decltype(full)::value;
            const int Lc = FULL ? T : Lq;
#pragma unroll
            for (int part = T / TS - 1; part >= 0; part--) {
                const int i0 = part * TS;
                float S[TS + 1][NPL];
#pragma unroll
                for (int k = 0; k < NPL; k++) S[0][k] = ck[k];
#pragma unroll
                for (int i = 0; i < i0; i++) {
                    if (i < Lc) {
                        float dxv = st.dl[i * CPB + ch] * st.x[i * CPB + ch];
#pragma unroll
                        for (int k = 0; k < NPL; k++)
                            S[0][k] = decay(st.dl[i * CPB + ch], Ar[k]) * S[0][k] + dxv * st.B[i * N + k * G + lane];
                    }
                }
#pragma unroll
                for (int i = 0; i < TS; i++) {
                    if (i0 + i < Lc) {
                        float dxv = st.dl[(i0 + i) * CPB + ch] * st.x[(i0 + i) * CPB + ch];
#pragma unroll
                        for (int k = 0; k < NPL; k++)
                            S[i + 1][k] = decay(st.dl[(i0 + i) * CPB + ch], Ar[k]) * S[i][k] +
                                          dxv * st.B[(i0 + i) * N + k * G + lane];
                    }
                }
#pragma unroll
                for (int si = TS - 1; si >= 0; si--) {
                    const int i = i0 + si;
                    if (i < Lc) {
                        float g = st.g[i * CPB + ch], xv = st.x[i * CPB + ch], dl = st.dl[i * CPB + ch];
                        const float *Bt = st.B + i * N, *Ct = st.C + i * N;
                        float v[2 * NPL], dxt = 0.0f, ddl = 0.0f;
#pragma unroll
                        for (int k = 0; k < NPL; k++) {
                            int n = k * G + lane;
                            float e = decay(dl, Ar[k]);
                            float hn = hadj[k] + g * Ct[n];  // adjoint of the state after position t
                            v[NPL + k] = g * S[si + 1][k];   // dC share
                            v[k] = hn * dl * xv;             // dB share
                            dxt += hn * dl * Bt[n];
                            float da = hn * S[si][k];        // adjoint of exp(Δ·A)
                            ddl += hn * Bt[n] * xv + da * e * A[k];
                            pA[k] += da * e * dl;
                            hadj[k] = hn * e;
                        }
                        dxt = group_sum(dxt, G);
                        ddl = group_sum(ddl, G);
                        warp_bc<N>(v, wl, wsum + ((size_t)i * W + warp) * 2 * N);
                        if (lane == 0) {
                            float dr = ddl * st.dsp[i * CPB + ch];
                            sm_dx[i * CPB + ch] += dxt + g * Dc;
                            sm_dr[i * CPB + ch] += dr;
                            pD += g * xv;
                            pb += dr;
                        }
                    }
                }
            }
        };
        if (Lq == T) sweep(std::true_type());
        else sweep(std::false_type());
        __syncthreads();
        // dx and dΔraw of these positions, one coalesced pass (each (t, c) has one owner).
        for (int r = threadIdx.x; r < Lq * CPB; r += blockDim.x) {
            int cc = c0 + r % CPB;
            if (cc >= a.E) continue;
            size_t t = (size_t)(tq + r / CPB);
            if (a.dx) a.dx[t * a.ld_dx + cc] = sm_dx[r];
            if (a.ddraw) a.ddraw[t * a.E + cc] = sm_dr[r];
        }
        // dB|dC: the warps' rows added in warp order; one channel block adds
        // them in place, several leave block rows for bc_sum_kernel.
        for (int r = threadIdx.x; r < Lq * 2 * N; r += blockDim.x) {
            int i = r / (2 * N), jn = r % (2 * N);
            float acc = 0.0f;
#pragma unroll
            for (int w = 0; w < W; w++) acc += wsum[((size_t)i * W + w) * 2 * N + jn];
            size_t t = (size_t)(tq + i);
            if (a.n_cb > 1) {
                a.bc_part[((size_t)cb * a.n_tok + t) * 2 * N + jn] = acc;
            } else {
                float *dst = jn < N ? a.dB : a.dC;
                if (dst) dst[t * a.ld_dbc + jn % N] += acc;
            }
        }
    }
    // This chunk's parameter partials: dA (w.r.t. A), dD, dΔbias.
    if (active) {
        float *par = a.par + (size_t)slot * (EN + 2 * (size_t)a.E);
#pragma unroll
        for (int k = 0; k < NPL; k++) par[(size_t)c * N + k * G + lane] = pA[k];
        if (lane == 0) par[EN + c] = pD, par[EN + a.E + c] = pb;
    }
}

// Parameter gradients += the partials: one warp per entry i; lane l sums the
// chunk partials of sequence s0 + l in chunk order (double), then the
// sequences' sums, each rounded to float as the CPU adds them, are added in
// sequence order. dA_log = dA · A.
__global__ static void par_sum_mamba_kernel(float *dA_log, float *dD, float *ddt_bias, const float *par,
                                            const float *A_log, const int *seq_off, int n_seq, int E, int N) {
    long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    long EN = (long)E * N, per = EN + 2 * (long)E;
    if (i >= per) return;  // whole warps
    float *dst = i < EN ? dA_log : i < EN + E ? dD : ddt_bias;
    if (!dst) return;
    long idx = i < EN ? i : i < EN + E ? i - EN : i - EN - E;
    double Ai = i < EN ? (double)-expf(A_log[i]) : 1.0;
    float acc = dst[idx];
    for (int s0 = 0; s0 < n_seq; s0 += 32) {
        int s = s0 + lane;
        double ps = 0.0;
        if (s < n_seq) {
            size_t k0 = slot_base(seq_off, s, Q);
            int len = seq_off[s + 1] - seq_off[s];
            for (int j = 0; j * Q < len; j++) ps += (double)par[(k0 + j) * per + i];
        }
        int cnt = n_seq - s0 < 32 ? n_seq - s0 : 32;
        for (int l = 0; l < cnt; l++) acc += (float)(__shfl_sync(0xffffffffu, ps, l) * Ai);
    }
    if (lane == 0) dst[idx] = acc;
}

// ---------------------------------------------------------------- host side

// Buffers: checkpoints [slots16][E][N], S_j [slots][E][N], ΣΔ [slots][E]
// (kept for the backward's carries).
extern "C" size_t cuda_scan_ckpt_floats(int n_tok, int n_seq, int E, int N) {
    size_t EN = (size_t)E * N, ns = slots_of(n_tok, n_seq, Q);
    return slots_of(n_tok, n_seq, T) * EN + ns * EN + ns * E;
}

static int n_cb_bwd(int E, int N) { return (E + geo_cpb_b(N) - 1) / geo_cpb_b(N); }

// Workspace: carries [slots][E][N], parameter partials [slots][E·N + 2E],
// then (several channel blocks only) dB|dC block rows [n_cb][n_tok][2N].
extern "C" size_t cuda_scan_workspace_bytes(int n_tok, int n_seq, int E, int N) {
    int G, NPL;
    split_state(N, &G, &NPL, "scan");
    size_t ns = slots_of(n_tok, n_seq, Q), EN = (size_t)E * N;
    int n_cb = n_cb_bwd(E, N);
    return align256(ns * EN * sizeof(float)) + align256(ns * (EN + 2 * (size_t)E) * sizeof(float)) +
           (n_cb > 1 ? (size_t)n_cb * n_tok * 2 * N * sizeof(float) : 0);
}

static mamba_args margs_of(const float *x, int ld_x, const float *draw, const float *dt_bias, const float *A_log,
                           const float *Bm, const float *Cm, int ld_bc, const float *D, const int *seq_off, int n_seq,
                           int n_tok, int E, int N) {
    mamba_args a = {};
    a.x = x, a.ld_x = ld_x, a.draw = draw, a.dt_bias = dt_bias, a.A_log = A_log, a.B = Bm, a.C = Cm;
    a.ld_bc = ld_bc, a.D = D, a.seq_off = seq_off, a.n_seq = n_seq, a.n_tok = n_tok, a.E = E, a.N = N;
    return a;
}

// Raises a kernel's dynamic shared-memory limit once when it needs more than
// the default 48 KB (a host-side attribute, no synchronisation).
template <typename K>
static void allow_smem(K kernel, size_t bytes, size_t *raised) {
    if (bytes > 48 * 1024 && bytes > *raised) {
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        *raised = bytes;
    }
}

static void carry_launch(void (*kernel)(mamba_args), const mamba_args &a, const char *name) {
    dim3 grid(cu_blocks((long)a.E * a.N, 256), a.n_seq);
    kernel<<<grid, 256, 0, cu_stream()>>>(a);
    LAUNCHED(name);
}

template <int N>
static void forward_n(const mamba_args &a) {
    dim3 grid((unsigned)slots_of(a.n_tok, a.n_seq, Q), (a.E + geo_cpb_f(N) - 1) / geo_cpb_f(N));
    int threads = geo_cpb_f(N) * geo_G(N);
    size_t smem = fwd_smem_floats(N) * sizeof(float);  // under 48 KB for N <= 256
    chunk_fwd_kernel<N, false><<<grid, threads, smem, cu_stream()>>>(a);
    LAUNCHED("chunk_fwd_kernel (from zero)");
    carry_launch(carry_fwd_kernel, a, "carry_fwd_kernel");
    chunk_fwd_kernel<N, true><<<grid, threads, smem, cu_stream()>>>(a);
    LAUNCHED("chunk_fwd_kernel (y)");
}

template <int N>
static void backward_n(const mamba_args &a) {
    dim3 grid_f((unsigned)slots_of(a.n_tok, a.n_seq, Q), (a.E + geo_cpb_f(N) - 1) / geo_cpb_f(N));
    chunk_adj_kernel<N><<<grid_f, geo_cpb_f(N) * geo_G(N), fwd_smem_floats(N) * sizeof(float), cu_stream()>>>(a);
    LAUNCHED("chunk_adj_kernel");
    carry_launch(carry_bwd_kernel, a, "carry_bwd_kernel");
    static size_t raised = 0, raised_fast = 0;
    size_t smem = bwd_smem_floats_n<N>() * sizeof(float);
    dim3 grid_b(grid_f.x, a.n_cb);
    if (cuda_scan_old_kernels() == 1) {
        allow_smem(chunk_bwd_kernel<N>, smem, &raised);
        chunk_bwd_kernel<N><<<grid_b, 32 * geo_w_b(N), smem, cu_stream()>>>(a);
        LAUNCHED("chunk_bwd_kernel (old)");
    } else {
        allow_smem(chunk_bwd_fast_kernel<N>, smem, &raised_fast);
        chunk_bwd_fast_kernel<N><<<grid_b, 32 * geo_w_b(N), smem, cu_stream()>>>(a);
        LAUNCHED("chunk_bwd_fast_kernel");
    }
}

#define SCAN_SWITCH_N(fn, a)                                                                   \
    switch ((a).N) {                                                                           \
    case 1: fn<1>(a); break;     case 2: fn<2>(a); break;   case 4: fn<4>(a); break;           \
    case 8: fn<8>(a); break;     case 16: fn<16>(a); break; case 32: fn<32>(a); break;         \
    case 64: fn<64>(a); break;   case 128: fn<128>(a); break; default: fn<256>(a); break;      \
    }

extern "C" void cuda_scan_forward(float *y, float *ckpt, const float *x, int ld_x, const float *draw,
                                  const float *dt_bias, const float *A_log, const float *Bm, const float *Cm,
                                  int ld_bc, const float *D, const int *seq_off, int n_seq, int n_tok, int E,
                                  int N) {
    int G, NPL;
    split_state(N, &G, &NPL, "scan");
    if (n_seq == 0 || n_tok == 0) return;
    if (!ckpt) {
        // No backward follows and no buffer for the carries: the sequential
        // forward of scan_kernels.cuh (one pass over each sequence).
        scan_args s = {};
        s.x = x, s.ld_x = ld_x, s.dt = draw, s.ld_dt = E, s.dt_bias = dt_bias, s.A_log = A_log;
        s.B = Bm, s.C = Cm, s.ld_bc = ld_bc, s.D = D, s.seq_off = seq_off;
        s.n_seq = n_seq, s.n_tok = n_tok, s.E = E, s.N = N, s.H = E, s.P = 1, s.G = G, s.CPB = 256 / G;
        s.y = y, s.ld_y = E;
        launch_fwd<false>(s);
        CUDA_SCAN_MARK("scan_fwd_kernel (sequential)");
        return;
    }
    mamba_args a = margs_of(x, ld_x, draw, dt_bias, A_log, Bm, Cm, ld_bc, D, seq_off, n_seq, n_tok, E, N);
    size_t EN = (size_t)E * N, ns = slots_of(n_tok, n_seq, Q);
    a.y = y, a.ck16 = ckpt, a.send = ckpt + slots_of(n_tok, n_seq, T) * EN, a.dsum = a.send + ns * EN;
    SCAN_SWITCH_N(forward_n, a);
}

extern "C" void cuda_scan_backward(float *dx, int ld_dx, float *ddraw, float *dBm, float *dCm, int ld_dbc,
                                   float *ddt_bias, float *dA_log, float *dD, const float *dy,
                                   const float *ckpt, const float *x, int ld_x, const float *draw,
                                   const float *dt_bias, const float *A_log, const float *Bm,
                                   const float *Cm, int ld_bc, const float *D, const int *seq_off, int n_seq,
                                   int n_tok, int E, int N, void *work) {
    int G, NPL;
    split_state(N, &G, &NPL, "scan");
    if (n_seq == 0 || n_tok == 0) return;
    mamba_args a = margs_of(x, ld_x, draw, dt_bias, A_log, Bm, Cm, ld_bc, D, seq_off, n_seq, n_tok, E, N);
    size_t EN = (size_t)E * N, ns = slots_of(n_tok, n_seq, Q);
    a.dy = dy, a.ck16 = (float *)ckpt, a.dsum = (float *)ckpt + slots_of(n_tok, n_seq, T) * EN + ns * EN;
    a.dx = dx, a.ld_dx = ld_dx, a.ddraw = ddraw, a.dB = dBm, a.dC = dCm, a.ld_dbc = ld_dbc;
    a.carry = (float *)work;
    a.par = (float *)((char *)work + align256(ns * EN * sizeof(float)));
    a.bc_part = (float *)((char *)a.par + align256(ns * (EN + 2 * (size_t)E) * sizeof(float)));
    a.n_cb = n_cb_bwd(E, N);
    SCAN_SWITCH_N(backward_n, a);
    if (a.n_cb > 1 && (dBm || dCm)) {
        bc_sum_kernel<<<cu_blocks((long)n_tok * 2 * N, 256), 256, 0, cu_stream()>>>(dBm, dCm, ld_dbc, a.bc_part, a.n_cb,
                                                                                   n_tok, N);
        LAUNCHED("bc_sum_kernel");
    }
    long per = (long)EN + 2 * (long)E;
    par_sum_mamba_kernel<<<cu_blocks(per * 32, 256), 256, 0, cu_stream()>>>(dA_log, dD, ddt_bias, a.par, A_log,
                                                                             seq_off, n_seq, E, N);
    LAUNCHED("par_sum_mamba_kernel");
}
