// cuda/ops/attn.cu: see cuda/ops/attn.h. The maths follows src/ops/attn.c line by line;
// the kernels are one thread per (position, head), the head's hd floats in
// registers: each kernel is instantiated for a bound HDM of 8, 16, 32, 64 or
// 128 (fully unrolled loops over HDM lanes, lanes >= hd skipped), so the
// arrays stay in registers (hd <= CU_ATTN_MAX_HD).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/ops/attn.h"
#include "cuda/core/common.cuh"
#include "cuda/ops/gate.h"
#include "cuda/ops/linear.h"

#define CU_ATTN_MAX_HD 128

static void check_cfg(const hax_model_config *cfg) {
    int d = cfg->hidden_size, H = cfg->attn_heads;
    if (H <= 0 || d % H != 0 || (d / H) % 2 != 0 || d / H > CU_ATTN_MAX_HD)
        hax_die("cu_attn: attn_heads: expected a divisor of hidden_size %d with an even head size <= %d, found %d",
                d, CU_ATTN_MAX_HD, H);
    if (cfg->attn_kv_heads != H)
        hax_die("cu_attn: attn_kv_heads: expected %d (= attn_heads), found %d", H, cfg->attn_kv_heads);
    if (cfg->window_size <= 0)
        hax_die("cu_attn: window_size: expected a positive number, found %d", cfg->window_size);
}

// ---------------------------------------------------------------- RoPE

// One thread per (position, frequency i): rotates the pair (i, i + hd/2) of
// every head, with the CPU's float angle pos·inv_freq_i.
__global__ static void rope_kernel(float *x, int ld_x, const int *seq_off, int n_seq, int n_tok, int H, int hd,
                                   float theta, int inverse, int bf16) {
    int half = hd / 2;
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n_tok * half) return;
    int t = (int)(idx / half), i = (int)(idx % half);
    float pos = (float)(t - seq_off[cu_seq_of(seq_off, n_seq, t)]);
    float inv = 1.0f / powf(theta, (float)(2 * i) / (float)hd);
    float ang = pos * inv, c = cosf(ang), sn = sinf(ang);
    if (bf16) c = hax_bf16_round(c), sn = hax_bf16_round(sn);  // the bf16 cos/sin cache
    if (inverse) sn = -sn;
    for (int h = 0; h < H; h++) {
        float *xh = x + (size_t)t * ld_x + h * hd;
        float x1 = xh[i], x2 = xh[i + half];
        xh[i] = x1 * c - x2 * sn;
        xh[i + half] = x2 * c + x1 * sn;
        if (bf16) xh[i] = hax_bf16_round(xh[i]), xh[i + half] = hax_bf16_round(xh[i + half]);
    }
}

extern "C" void cuda_rope_apply(float *x, int ld_x, const int *seq_off, int n_seq, int n_tok, int n_heads, int hd,
                                float theta, int inverse, int bf16) {
    long n = (long)n_tok * (hd / 2);
    if (n == 0) return;
    rope_kernel<<<cu_blocks(n, 256), 256, 0, cu_stream()>>>(x, ld_x, seq_off, n_seq, n_tok, n_heads, hd, theta,
                                                             inverse, bf16);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- forward

// a·b over the first hd of HDM lanes (a in registers, b in memory), in lane order.
template <int HDM>
__device__ __forceinline__ float dot_reg(const float (&a)[HDM], const float *b, int hd) {
    float acc = 0.0f;
#pragma unroll
    for (int i = 0; i < HDM; i++)
        if (i < hd) acc += a[i] * b[i];
    return acc;
}

__device__ __forceinline__ float dot_hd(const float *a, const float *b, int hd) {
    float acc = 0.0f;
    for (int i = 0; i < hd; i++) acc += a[i] * b[i];
    return acc;
}

// Launches KERNEL<HDM> for the smallest HDM >= hd (check_cfg bounds hd).
#define ATTN_DISPATCH_SMEM(hd, KERNEL, grid, block, smem, ...)                                \
    do {                                                                                      \
        if ((hd) <= 8) KERNEL<8><<<grid, block, smem, cu_stream()>>>(__VA_ARGS__);            \
        else if ((hd) <= 16) KERNEL<16><<<grid, block, smem, cu_stream()>>>(__VA_ARGS__);     \
        else if ((hd) <= 32) KERNEL<32><<<grid, block, smem, cu_stream()>>>(__VA_ARGS__);     \
        else if ((hd) <= 64) KERNEL<64><<<grid, block, smem, cu_stream()>>>(__VA_ARGS__);     \
        else KERNEL<128><<<grid, block, smem, cu_stream()>>>(__VA_ARGS__);                    \
        CUDA_LAUNCHED();                                                                      \
    } while (0)
#define ATTN_DISPATCH(hd, KERNEL, grid, block, ...) ATTN_DISPATCH_SMEM(hd, KERNEL, grid, block, 0, __VA_ARGS__)

// Where a window kernel reads the rows of a [n_tok, d] tensor: row r at
// base + (r - r0) * ld (global memory: r0 0, ld d; a tile's rows staged in
// shared memory: r0 its first staged row, ld d + 1). The old and the tiled
// kernels run the same per-thread functions below on their own rows, so
// their outputs are the same bits by construction.
struct attn_rows {
    const float *base;
    int r0, ld;
    __device__ const float *at(int r, int col) const { return base + (size_t)(r - r0) * ld + col; }
};

// One thread per (query t, head h): scores of keys max(t0, t-W+1) .. t, the
// max, then exp, their double sum and the weighted sum of v (as the CPU).
template <int HDM>
__device__ __forceinline__ void attn_fwd_thread(float *o, float *lse, const float *q, attn_rows k, attn_rows v,
                                                const int *seq_off, int n_seq, int t, int h, int d, int H, int hd,
                                                int W, float scale) {
    int t0 = seq_off[cu_seq_of(seq_off, n_seq, t)];
    int j0 = t - W + 1 > t0 ? t - W + 1 : t0;
    float qt[HDM], acc[HDM];
    const float *qp = q + (size_t)t * d + h * hd;
#pragma unroll
    for (int i = 0; i < HDM; i++) qt[i] = i < hd ? qp[i] : 0.0f, acc[i] = 0.0f;
    float m = -INFINITY;
    for (int j = j0; j <= t; j++) m = fmaxf(m, scale * dot_reg<HDM>(qt, k.at(j, h * hd), hd));
    double sum = 0.0;
    for (int j = j0; j <= t; j++) {
        const float *vj = v.at(j, h * hd);
        float p = expf(scale * dot_reg<HDM>(qt, k.at(j, h * hd), hd) - m);
        sum += p;
#pragma unroll
        for (int i = 0; i < HDM; i++)
            if (i < hd) acc[i] += p * vj[i];
    }
    float rs = (float)(1.0 / sum);
    float *ot = o + (size_t)t * d + h * hd;
#pragma unroll
    for (int i = 0; i < HDM; i++)
        if (i < hd) ot[i] = acc[i] * rs;
    lse[(size_t)t * H + h] = m + (float)log(sum);
}

// The forward reading its keys and values from global memory/L2.
template <int HDM>
__global__ static void attn_fwd_kernel(float *o, float *lse, const float *q, const float *k, const float *v,
                                       const int *seq_off, int n_seq, int n_tok, int d, int H, int hd, int W,
                                       float scale) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n_tok * H) return;
    attn_fwd_thread<HDM>(o, lse, q, attn_rows{k, 0, d}, attn_rows{v, 0, d}, seq_off, n_seq, (int)(idx / H),
                         (int)(idx % H), d, H, hd, W, scale);
}

extern "C" void cuda_attn_forward(float *out, int ld_out, const attn_acts *acts, const float *a, int ld_a,
                                  const attn_params *w, const hax_model_config *cfg, const int *seq_off, int n_seq,
                                  int n_tok) {
    check_cfg(cfg);
    int d = cfg->hidden_size, H = cfg->attn_heads, hd = d / H, W = cfg->window_size;
    int bf16 = cfg->precision == PREC_BF16_PURE;  // src/ops/attn.h's bf16-pure roundings
    long nd = (long)n_tok * d;
    if (n_tok == 0) return;
    cuda_linear_forward(acts->q, d, a, ld_a, w->q_proj, NULL, n_tok, d, d);
    cuda_linear_forward(acts->k, d, a, ld_a, w->k_proj, NULL, n_tok, d, d);
    cuda_linear_forward(acts->v, d, a, ld_a, w->v_proj, NULL, n_tok, d, d);
    if (bf16) {
        cuda_round_bf16(acts->q, acts->q, nd);
        cuda_round_bf16(acts->k, acts->k, nd);
        cuda_round_bf16(acts->v, acts->v, nd);
    }
    cuda_rope_apply(acts->q, d, seq_off, n_seq, n_tok, H, hd, cfg->rope_theta, 0, bf16);
    cuda_rope_apply(acts->k, d, seq_off, n_seq, n_tok, H, hd, cfg->rope_theta, 0, bf16);
    cuda_attn_window_forward(acts->o, acts->lse, acts->q, acts->k, acts->v, seq_off, n_seq, n_tok, d, H, W);
    if (bf16) cuda_round_bf16(acts->o, acts->o, nd);
    cuda_linear_forward(out, ld_out, acts->o, d, w->o_proj, NULL, n_tok, d, d);
}

// ---------------------------------------------------------------- backward
//
// With P_tj = exp(scale q_t·k_j − lse_t) and D_t = dO_t·o_t:
//   dS_tj = P_tj (dO_t·v_j − D_t) scale
//   dq_t = Σ_j dS_tj k_j          (j = max(t0, t−W+1) .. t)
//   dk_j = Σ_t dS_tj q_t,  dv_j = Σ_t P_tj dO_t   (t = j .. min(t1−1, j+W−1))

__global__ static void attn_rowdot_kernel(float *D, const float *dO, const float *o, int n_tok, int d, int H,
                                          int hd) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n_tok * H) return;
    int t = (int)(idx / H), h = (int)(idx % H);
    size_t r = (size_t)t * d + h * hd;
    D[idx] = dot_hd(dO + r, o + r, hd);
}

template <int HDM>
__device__ __forceinline__ void attn_dq_thread(float *dq, const float *dO, const float *D, const float *lse,
                                               const float *q, attn_rows k, attn_rows v, const int *seq_off,
                                               int n_seq, int t, int h, int d, int H, int hd, int W, float scale) {
    int t0 = seq_off[cu_seq_of(seq_off, n_seq, t)];
    int j0 = t - W + 1 > t0 ? t - W + 1 : t0;
    size_t rt = (size_t)t * d + h * hd, it = (size_t)t * H + h;
    float qt[HDM], dot[HDM], acc[HDM];
#pragma unroll
    for (int i = 0; i < HDM; i++) {
        qt[i] = i < hd ? q[rt + i] : 0.0f;
        dot[i] = i < hd ? dO[rt + i] : 0.0f;
        acc[i] = 0.0f;
    }
    float Dt = D[it], l = lse[it];
    for (int j = j0; j <= t; j++) {
        const float *kj = k.at(j, h * hd);
        // the CPU's order: q·k, then dO·v
        float p = expf(scale * dot_reg<HDM>(qt, kj, hd) - l);
        float ds = p * (dot_reg<HDM>(dot, v.at(j, h * hd), hd) - Dt) * scale;
#pragma unroll
        for (int i = 0; i < HDM; i++)
            if (i < hd) acc[i] += ds * kj[i];
    }
#pragma unroll
    for (int i = 0; i < HDM; i++)
        if (i < hd) dq[rt + i] = acc[i];
}

template <int HDM>
__global__ static void attn_dq_kernel(float *dq, const float *dO, const float *D, const float *lse, const float *q,
                                      const float *k, const float *v, const int *seq_off, int n_seq, int n_tok, int d,
                                      int H, int hd, int W, float scale) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n_tok * H) return;
    attn_dq_thread<HDM>(dq, dO, D, lse, q, attn_rows{k, 0, d}, attn_rows{v, 0, d}, seq_off, n_seq, (int)(idx / H),
                        (int)(idx % H), d, H, hd, W, scale);
}

// One thread per (key j, head h) over the queries j .. min(t1-1, j+W-1): the
// rows of q and dO where qr, dor say, lse and D at lr, dr + (t - r0) * H + h.
template <int HDM>
__device__ __forceinline__ void attn_dkv_thread(float *dk, float *dv, attn_rows qr, attn_rows dor, const float *lr,
                                                const float *dr, int r0, const float *k, const float *v,
                                                const int *seq_off, int n_seq, int j, int h, int d, int H, int hd,
                                                int W, float scale) {
    int t1 = seq_off[cu_seq_of(seq_off, n_seq, j) + 1];
    int tl = j + W - 1 < t1 - 1 ? j + W - 1 : t1 - 1;
    size_t rj = (size_t)j * d + h * hd;
    float kj[HDM], vj[HDM], ak[HDM], av[HDM];
#pragma unroll
    for (int i = 0; i < HDM; i++) {
        kj[i] = i < hd ? k[rj + i] : 0.0f;
        vj[i] = i < hd ? v[rj + i] : 0.0f;
        ak[i] = 0.0f, av[i] = 0.0f;
    }
    for (int t = j; t <= tl; t++) {
        const float *qt = qr.at(t, h * hd), *dot = dor.at(t, h * hd);
        size_t it = (size_t)(t - r0) * H + h;
        // the CPU's q_t·k_j in q order (a·b = b·a lane by lane, same sum order)
        float p = expf(scale * dot_reg<HDM>(kj, qt, hd) - lr[it]);
        float ds = p * (dot_reg<HDM>(vj, dot, hd) - dr[it]) * scale;
#pragma unroll
        for (int i = 0; i < HDM; i++)
            if (i < hd) ak[i] += ds * qt[i], av[i] += p * dot[i];
    }
#pragma unroll
    for (int i = 0; i < HDM; i++)
        if (i < hd) dk[rj + i] = ak[i], dv[rj + i] = av[i];
}

template <int HDM>
__global__ static void attn_dkv_kernel(float *dk, float *dv, const float *dO, const float *D, const float *lse,
                                       const float *q, const float *k, const float *v, const int *seq_off, int n_seq,
                                       int n_tok, int d, int H, int hd, int W, float scale) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n_tok * H) return;
    attn_dkv_thread<HDM>(dk, dv, attn_rows{q, 0, d}, attn_rows{dO, 0, d}, lse, D, 0, k, v, seq_off, n_seq,
                         (int)(idx / H), (int)(idx % H), d, H, hd, W, scale);
}

// ---------------------------------------------------------------- tiled window kernels
//
// HAX_WINDOW_ATTN=tiled, the default since 2026-12-07 (4.7x faster per kernel
// at Samba's paper size, README "Window attention kernels"; =old runs the old
// kernels above): the same three kernels with a block per tile of TP
// consecutive positions (all heads: thread idx = t·H + h as in the old ones,
// so the grid, the thread of each (position, head) and its loops are the
// same), which first stages the rows its tile's windows read in shared
// memory: for the forward and dQ the keys and values of positions
// lo .. p0+TP-1 (lo = max(p0-W+1, the start of p0's sequence)), for dK/dV the
// queries, dO, lse and D of positions p0 .. hi-1 (hi = min(p0+TP+W-1, the end
// of the tile's last sequence)). Every thread then runs the old kernels'
// per-thread function (attn_fwd_thread, attn_dq_thread, attn_dkv_thread) on
// the staged rows: the same keys (queries) in the same order with the same
// expressions, only the operands read from shared memory instead of global
// memory/L2, so every output has the old kernels' bits (tests/gpu_ops.c
// compares them). The tiles
// run over the packed positions, not per sequence: a thread's window lies
// inside [lo, hi) whatever sequence it is in, and a tile crossing a sequence
// start stages only rows that its positions read (no idle threads at
// sequence ends). All heads in a block: a row's d floats are one contiguous
// run (coalesced staging), and rows are padded to d+1 floats (d is even): at
// Samba's shape (d 32, 4 heads of 8) a warp's 8 positions × 4 heads read 32
// distinct banks (bank t + 8h + i at lane i), where the old kernels' threads
// read 32 scattered floats from 32 sectors per load. Shapes whose rows do not
// fit a block's shared memory run the old kernels (cuda_attn_tile_positions).

// HAX_WINDOW_ATTN, read once (cuda/ops/attn.h); -1: not read yet.
static int g_window_tiled = -1;

extern "C" int cuda_attn_window_tiled(void) {
    if (g_window_tiled < 0) g_window_tiled = hax_env_choice("HAX_WINDOW_ATTN", "old tiled", 1);
    return g_window_tiled;
}

extern "C" void cuda_attn_set_window_tiled(int tiled) { g_window_tiled = tiled; }

// Threads per block the tiles aim at (TP = this / H positions), the shared
// memory a block may use (the default limit: no opt-in attribute), the
// fewest threads a block may shrink to before the old kernels run instead,
// and the most (H >= CU_ATTN_TILE_THREADS heads: one position a block; the
// HDM 128 kernels use 255 registers a thread, 256 threads fill an SM's 64K).
#ifndef CU_ATTN_TILE_THREADS
#define CU_ATTN_TILE_THREADS 128
#endif
#define CU_ATTN_TILE_SMEM 49152
#define CU_ATTN_TILE_MIN_THREADS 32
#define CU_ATTN_TILE_MAX_THREADS 256

// Shared bytes of a tile of tp positions: two arrays of tp+W-1 rows of d+1
// floats (K and V, or Q and dO), for dK/dV also lse and D of those rows.
static size_t tile_smem(int tp, int d, int H, int W, int dkv) {
    size_t rows = (size_t)tp + W - 1;
    return sizeof(float) * (2 * rows * (d + 1) + (dkv ? 2 * rows * H : 0));
}

// Positions per block of the tiled kernels for this shape: CU_ATTN_TILE_THREADS / H
// (at least 1), halved while the rows do not fit CU_ATTN_TILE_SMEM and the
// block keeps CU_ATTN_TILE_MIN_THREADS threads; 0 where they never fit (or
// a block would exceed CU_ATTN_TILE_MAX_THREADS threads): the old kernels run.
extern "C" int cuda_attn_tile_positions(int d, int H, int W, int dkv) {
    int tp = H >= CU_ATTN_TILE_THREADS ? 1 : CU_ATTN_TILE_THREADS / H;
    if ((long)tp * H > CU_ATTN_TILE_MAX_THREADS) return 0;
    while (tile_smem(tp, d, H, W, dkv) > CU_ATTN_TILE_SMEM && tp > 1 && (tp / 2) * H >= CU_ATTN_TILE_MIN_THREADS)
        tp /= 2;
    return tile_smem(tp, d, H, W, dkv) <= CU_ATTN_TILE_SMEM ? tp : 0;
}

// Copies rows lo .. hi-1 of x (rows of d floats) into s (rows of d+1), all
// threads of the block.
__device__ __forceinline__ void stage_rows(float *s, const float *x, int lo, int hi, int d) {
    int n = (hi - lo) * d;
    const float *src = x + (size_t)lo * d;
    for (int e = threadIdx.x; e < n; e += blockDim.x) s[(e / d) * (d + 1) + e % d] = src[e];
}

// The forward's and dQ's tile (tp positions from blockIdx.x·tp): the keys and
// values of rows lo .. the tile's end staged in smem, lo = max(p0-W+1, the
// start of p0's sequence), their views into *sk, *sv; all threads, then a
// barrier.
__device__ __forceinline__ void stage_kv_tile(float *smem, const float *k, const float *v, const int *seq_off,
                                              int n_seq, int n_tok, int d, int W, int tp, attn_rows *sk,
                                              attn_rows *sv) {
    int p0 = blockIdx.x * tp, pe = p0 + tp < n_tok ? p0 + tp : n_tok;
    int s0 = seq_off[cu_seq_of(seq_off, n_seq, p0)];
    int lo = p0 - W + 1 > s0 ? p0 - W + 1 : s0, S = d + 1;
    float *kk = smem, *vv = smem + (size_t)(tp + W - 1) * S;
    stage_rows(kk, k, lo, pe, d);
    stage_rows(vv, v, lo, pe, d);
    __syncthreads();
    *sk = attn_rows{kk, lo, S}, *sv = attn_rows{vv, lo, S};
}

// attn_fwd_kernel with its keys and values in shared memory (tp positions a block).
template <int HDM>
__global__ static void attn_fwd_tiled_kernel(float *o, float *lse, const float *q, const float *k, const float *v,
                                             const int *seq_off, int n_seq, int n_tok, int d, int H, int hd, int W,
                                             float scale, int tp) {
    extern __shared__ float smem[];
    attn_rows sk, sv;
    stage_kv_tile(smem, k, v, seq_off, n_seq, n_tok, d, W, tp, &sk, &sv);
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n_tok * H) return;
    attn_fwd_thread<HDM>(o, lse, q, sk, sv, seq_off, n_seq, (int)(idx / H),
                         (int)(idx % H), d, H, hd, W, scale);
}

// attn_dq_kernel with its keys and values in shared memory.
template <int HDM>
__global__ static void attn_dq_tiled_kernel(float *dq, const float *dO, const float *D, const float *lse,
                                            const float *q, const float *k, const float *v, const int *seq_off,
                                            int n_seq, int n_tok, int d, int H, int hd, int W, float scale, int tp) {
    extern __shared__ float smem[];
    attn_rows sk, sv;
    stage_kv_tile(smem, k, v, seq_off, n_seq, n_tok, d, W, tp, &sk, &sv);
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n_tok * H) return;
    attn_dq_thread<HDM>(dq, dO, D, lse, q, sk, sv, seq_off, n_seq,
                        (int)(idx / H), (int)(idx % H), d, H, hd, W, scale);
}

// attn_dkv_kernel with the queries, dO, lse and D of its tile's windows in
// shared memory.
template <int HDM>
__global__ static void attn_dkv_tiled_kernel(float *dk, float *dv, const float *dO, const float *D, const float *lse,
                                             const float *q, const float *k, const float *v, const int *seq_off,
                                             int n_seq, int n_tok, int d, int H, int hd, int W, float scale, int tp) {
    extern __shared__ float smem[];
    int p0 = blockIdx.x * tp, pl = (p0 + tp < n_tok ? p0 + tp : n_tok) - 1;  // the tile's last position
    int s1 = seq_off[cu_seq_of(seq_off, n_seq, pl) + 1];
    int hi = pl + W < s1 ? pl + W : s1, S = d + 1, rows = tp + W - 1;
    float *sq = smem, *sdo = sq + (size_t)rows * S, *sl = sdo + (size_t)rows * S, *sd = sl + (size_t)rows * H;
    stage_rows(sq, q, p0, hi, d);
    stage_rows(sdo, dO, p0, hi, d);
    for (int e = threadIdx.x; e < (hi - p0) * H; e += blockDim.x)
        sl[e] = lse[(size_t)p0 * H + e], sd[e] = D[(size_t)p0 * H + e];
    __syncthreads();
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n_tok * H) return;
    attn_dkv_thread<HDM>(dk, dv, attn_rows{sq, p0, S}, attn_rows{sdo, p0, S}, sl, sd, p0, k, v, seq_off, n_seq,
                         (int)(idx / H), (int)(idx % H), d, H, hd, W, scale);
}

// The window kernels alone, old or tiled (cuda_attn_window_tiled and the
// tile fitting); the ops below and the tests call these.
static void check_window(int d, int H) {
    if (H <= 0 || d % H != 0 || d / H > CU_ATTN_MAX_HD)
        hax_die("cu_attn: heads: expected a divisor of %d with a head size <= %d, found %d", d, CU_ATTN_MAX_HD, H);
}

extern "C" void cuda_attn_window_forward(float *o, float *lse, const float *q, const float *k, const float *v,
                                         const int *seq_off, int n_seq, int n_tok, int d, int H, int W) {
    check_window(d, H);
    int hd = d / H, tp = cuda_attn_window_tiled() ? cuda_attn_tile_positions(d, H, W, 0) : 0;
    float scale = 1.0f / sqrtf((float)hd);
    long n = (long)n_tok * H;
    if (n == 0) return;
    if (tp > 0)
        ATTN_DISPATCH_SMEM(hd, attn_fwd_tiled_kernel, cu_blocks(n_tok, tp), tp * H, tile_smem(tp, d, H, W, 0), o, lse,
                           q, k, v, seq_off, n_seq, n_tok, d, H, hd, W, scale, tp);
    else
        ATTN_DISPATCH(hd, attn_fwd_kernel, cu_blocks(n, 128), 128, o, lse, q, k, v, seq_off, n_seq, n_tok, d, H, hd,
                      W, scale);
}

extern "C" void cuda_attn_window_dq(float *dq, const float *dO, const float *D, const float *lse, const float *q,
                                    const float *k, const float *v, const int *seq_off, int n_seq, int n_tok, int d,
                                    int H, int W) {
    check_window(d, H);
    int hd = d / H, tp = cuda_attn_window_tiled() ? cuda_attn_tile_positions(d, H, W, 0) : 0;
    float scale = 1.0f / sqrtf((float)hd);
    long n = (long)n_tok * H;
    if (n == 0) return;
    if (tp > 0)
        ATTN_DISPATCH_SMEM(hd, attn_dq_tiled_kernel, cu_blocks(n_tok, tp), tp * H, tile_smem(tp, d, H, W, 0), dq, dO,
                           D, lse, q, k, v, seq_off, n_seq, n_tok, d, H, hd, W, scale, tp);
    else
        ATTN_DISPATCH(hd, attn_dq_kernel, cu_blocks(n, 128), 128, dq, dO, D, lse, q, k, v, seq_off, n_seq, n_tok, d,
                      H, hd, W, scale);
}

extern "C" void cuda_attn_window_dkv(float *dk, float *dv, const float *dO, const float *D, const float *lse,
                                     const float *q, const float *k, const float *v, const int *seq_off, int n_seq,
                                     int n_tok, int d, int H, int W) {
    check_window(d, H);
    int hd = d / H, tp = cuda_attn_window_tiled() ? cuda_attn_tile_positions(d, H, W, 1) : 0;
    float scale = 1.0f / sqrtf((float)hd);
    long n = (long)n_tok * H;
    if (n == 0) return;
    if (tp > 0)
        ATTN_DISPATCH_SMEM(hd, attn_dkv_tiled_kernel, cu_blocks(n_tok, tp), tp * H, tile_smem(tp, d, H, W, 1), dk, dv,
                           dO, D, lse, q, k, v, seq_off, n_seq, n_tok, d, H, hd, W, scale, tp);
    else
        ATTN_DISPATCH(hd, attn_dkv_kernel, cu_blocks(n, 128), 128, dk, dv, dO, D, lse, q, k, v, seq_off, n_seq, n_tok,
                      d, H, hd, W, scale);
}

extern "C" size_t cuda_attn_workspace_bytes(const hax_model_config *cfg, int n_tok) {
    size_t nd = (size_t)n_tok * cfg->hidden_size;
    return sizeof(float) * (4 * nd + (size_t)n_tok * (cfg->attn_heads > 0 ? cfg->attn_heads : 1)) + 256;
}

extern "C" void cuda_attn_backward(float *da, int ld_da, const attn_grads *gr, const float *dout, int ld_dout,
                                   const float *a, int ld_a, const attn_acts *acts, const attn_params *w,
                                   const hax_model_config *cfg, const int *seq_off, int n_seq, int n_tok,
                                   void *work) {
    check_cfg(cfg);
    int d = cfg->hidden_size, H = cfg->attn_heads, hd = d / H, W = cfg->window_size;
    if (n_tok == 0) return;
    size_t nd = (size_t)n_tok * d;
    float *dO = (float *)work, *dq = dO + nd, *dk = dq + nd, *dv = dk + nd, *D = dv + nd;
    int bf16 = cfg->precision == PREC_BF16_PURE;
    cuda_zero(dO, sizeof(float) * nd);
    cuda_linear_backward(dO, d, gr->o_proj, NULL, dout, ld_dout, acts->o, d, w->o_proj, n_tok, d, d);
    if (bf16) cuda_round_bf16(dO, dO, (long)nd);
    long n = (long)n_tok * H;
    attn_rowdot_kernel<<<cu_blocks(n, 256), 256, 0, cu_stream()>>>(D, dO, acts->o, n_tok, d, H, hd);
    CUDA_LAUNCHED();
    cuda_attn_window_dq(dq, dO, D, acts->lse, acts->q, acts->k, acts->v, seq_off, n_seq, n_tok, d, H, W);
    cuda_attn_window_dkv(dk, dv, dO, D, acts->lse, acts->q, acts->k, acts->v, seq_off, n_seq, n_tok, d, H, W);
    if (bf16) {  // flash-attn's bf16 dq, dk, dv
        cuda_round_bf16(dq, dq, (long)nd);
        cuda_round_bf16(dk, dk, (long)nd);
        cuda_round_bf16(dv, dv, (long)nd);
    }
    // The rotation is orthogonal: its backward is its inverse.
    cuda_rope_apply(dq, d, seq_off, n_seq, n_tok, H, hd, cfg->rope_theta, 1, bf16);
    cuda_rope_apply(dk, d, seq_off, n_seq, n_tok, H, hd, cfg->rope_theta, 1, bf16);
    if (!bf16) {
        cuda_linear_backward(da, ld_da, gr->q_proj, NULL, dq, d, a, ld_a, w->q_proj, n_tok, d, d);
        cuda_linear_backward(da, ld_da, gr->k_proj, NULL, dk, d, a, ld_a, w->k_proj, n_tok, d, d);
        cuda_linear_backward(da, ld_da, gr->v_proj, NULL, dv, d, a, ld_a, w->v_proj, n_tok, d, d);
        return;
    }
    // bf16-pure: three bf16 contributions to da in the CPU's order (v, k, q),
    // each through dO's free slot
    const float *dsrc[3] = {dv, dk, dq}, *wsrc[3] = {w->v_proj, w->k_proj, w->q_proj};
    float *gdst[3] = {gr->v_proj, gr->k_proj, gr->q_proj};
    for (int i = 0; i < 3; i++) {
        cuda_zero(dO, sizeof(float) * nd);
        cuda_linear_backward(da ? dO : NULL, d, gdst[i], NULL, dsrc[i], d, a, ld_a, wsrc[i], n_tok, d, d);
        if (da) cuda_add_bf16_rows(da, ld_da, dO, d, d, n_tok);
    }
}
