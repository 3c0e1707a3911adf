// cuda/sparse/ks.cu: key selection on the GPU, part 1: features, score MLP,
// cumulative top-k and the per-layer state (the ranking loss and the
// candidates are in cuda/sparse/ks_rank.cu). See cuda/sparse/ks.h.
#include "cuda/core/common.cuh"
#include "cuda/ops/gate.h"
#include "cuda/ops/linear.h"
#include "cuda/sparse/ks.h"
#include "cuda/sparse/ks_common.cuh"  // KS_MAX_N, KS_WARPS (warps per sequence, each a contiguous chunk of positions)
#include "cuda/sparse/long.cuh"
#define KS_STAGE 1024 // features: floats of Q staged in shared memory per warp
#define KS_TOPK_CHUNK 64  // cumulative top-k: positions per chunk (a multiple of 32)
#define KS_TOPK_WARPS 8   // cumulative top-k: warps per sequence

// ---------------------------------------------------------------- features

// What a warp does with its chunk of positions in ks_features_kernel.
enum { KS_SUM, KS_SUM_W2, KS_WRITE_REF, KS_WRITE_CAUSAL };

// One pass of a warp over positions t0..t1-1 of the sequence at row o: the
// running sums c (lane's columns lane, lane+32, ...) are advanced row by row,
// and per mode the squares are added to w2 or the normalised sums written to
// T's TQ half. Q rows are staged in the warp's shared buffer first, so the
// sequential chain reads no global memory. The loop bounds are the same for
// every lane of the warp (the causal norm is a warp sum).
__device__ static void ks_feature_pass(int mode, double *c, double *w2, float *T, const float *Q,
                                       int ldq, int o, int t0, int t1, int N, float *stage,
                                       int lane) {
    int D = 2 * N, rows_per = KS_STAGE / N;
    for (int tb = t0; tb < t1; tb += rows_per) {
        int rows = min(rows_per, t1 - tb);
        __syncwarp();
        for (int e = lane; e < rows * N; e += 32) stage[e] = Q[(size_t)(o + tb + e / N) * ldq + e % N];
        __syncwarp();
        for (int t = 0; t < rows; t++) {
            double nrm2 = 0.0;
            for (int r = 0; r < KS_MAX_N / 32 && lane + 32 * r < N; r++) {
                c[r] += stage[t * N + lane + 32 * r];
                if (mode == KS_SUM_W2) w2[r] += c[r] * c[r];
                nrm2 += c[r] * c[r];
            }
            float *tq = T + (size_t)(o + tb + t) * D + N;
            if (mode == KS_WRITE_REF) {
                for (int r = 0; r < KS_MAX_N / 32 && lane + 32 * r < N; r++)
                    tq[lane + 32 * r] = (float)(c[r] * w2[r]);
            } else if (mode == KS_WRITE_CAUSAL) {
                double inv = 1.0 / fmax(sqrt(cu_warp_sum(nrm2)), 1e-12);
                for (int r = 0; r < KS_MAX_N / 32 && lane + 32 * r < N; r++)
                    tq[lane + 32 * r] = (float)(c[r] * inv);
            }
        }
    }
}

// One block of KS_WARPS warps per sequence; warp w takes the w-th contiguous
// chunk of positions. The running sums C_t = sum_{p<=t} Q_p (double) start
// each chunk from the in-order sum of the earlier chunks' totals; in
// reference semantics the column norms w^2 = sum_t C_t^2 + n_pad C_{n-1}^2
// are chunk partials added in order too. Fixed order: deterministic, and
// equal to the CPU's sequential double sums up to a few double ulps.
__global__ static void ks_features_kernel(float *T, const float *K, int ldk, const float *Q, int ldq,
                                          const int *seq_off, int model_len, int N, int causal,
                                          int *err) {
    extern __shared__ double feat_sh[];  // part [KS_WARPS][N], w2p [KS_WARPS][N], stage
    double *part = feat_sh, *w2p = part + KS_WARPS * N;
    int s = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32, D = 2 * N;
    float *stage = (float *)(w2p + KS_WARPS * N) + warp * KS_STAGE;
    int o = seq_off[s], n = seq_off[s + 1] - o;
    int n_pad = model_len - n;
    if (!causal && n_pad < 0) {
        if (threadIdx.x == 0) atomicOr(err, CU_ERR_KS);
        return;
    }
    // TK = K (detached).
    for (int e = threadIdx.x; e < n * N; e += blockDim.x)
        T[(size_t)(o + e / N) * D + e % N] = K[(size_t)(o + e / N) * ldk + e % N];
    int len = (n + KS_WARPS - 1) / KS_WARPS;
    int t0 = min(n, warp * len), t1 = min(n, t0 + len);
    const int R = KS_MAX_N / 32;
    double c[R], w2[R];
    for (int r = 0; r < R; r++) c[r] = 0.0, w2[r] = 0.0;
    ks_feature_pass(KS_SUM, c, w2, T, Q, ldq, o, t0, t1, N, stage, lane);
    for (int r = 0; r < R && lane + 32 * r < N; r++) part[warp * N + lane + 32 * r] = c[r];
    __syncthreads();
    // c = this chunk's starting sum; total = C_{n-1}
    double total[R];
    for (int r = 0; r < R; r++) c[r] = 0.0, total[r] = 0.0;
    for (int r = 0; r < R; r++) {
        int i = lane + 32 * r;
        if (i >= N) break;
        for (int w = 0; w < KS_WARPS; w++) {
            if (w == warp) c[r] = total[r];
            total[r] += part[w * N + i];
        }
    }
    if (causal) {
        ks_feature_pass(KS_WRITE_CAUSAL, c, w2, T, Q, ldq, o, t0, t1, N, stage, lane);
        return;
    }
    double c0[R];
    for (int r = 0; r < R; r++) c0[r] = c[r];
    ks_feature_pass(KS_SUM_W2, c, w2, T, Q, ldq, o, t0, t1, N, stage, lane);
    for (int r = 0; r < R && lane + 32 * r < N; r++) w2p[warp * N + lane + 32 * r] = w2[r];
    __syncthreads();
    for (int r = 0; r < R; r++) {
        int i = lane + 32 * r;
        if (i >= N) break;
        double sum = 0.0;
        for (int w = 0; w < KS_WARPS; w++) sum += w2p[w * N + i];
        // the n_pad pad positions hold the total C_{n-1}
        w2[r] = 1.0 / fmax(sqrt(sum + (double)n_pad * total[r] * total[r]), 1e-12);
    }
    ks_feature_pass(KS_WRITE_REF, c0, w2, T, Q, ldq, o, t0, t1, N, stage, lane);
}

// ---------------------------------------------------------------- features, staged (new)
//
// ks_features_kernel stages a warp's rows anew in each of its (up to) three
// passes, one load per lane at a time (a load's latency for every 32
// floats, as is its copy of K): ~0.04 ms at the paper size for ~1 us of
// adds. ks_features_staged_kernel stages a warp's chunk once when it fits
// the warp's share of shared memory (8 loads per lane in flight) and reads
// it in all passes; the causal norms of 8 rows go through one warp sum (the
// 8 trees interleaved) instead of one row's at a time, the rows' running
// sums formed twice (the same adds, the same values). The chunks, their
// order and every operation are ks_features_kernel's, its multiply-adds
// written out as the fused ones nvcc made of them (w2 += c*c and nrm2 +=
// c*c are fused, sum + n_pad*C*C is a product then a fused multiply-add):
// the same bits.

#define KS_FEAT_SMEM (96 * 1024)  // shared memory of a block at most (opt-in above 48 KiB)
#define KS_GROUP 8                // causal: rows per interleaved warp sum

// Floats of a warp's stage: a chunk of a model_len sequence (ceil(model_len
// / KS_WARPS) rows), or what is left of KS_FEAT_SMEM after part and w2p;
// whole rows of N.
static int ks_stage_floats(int N, int model_len) {
    int f = (int)((KS_FEAT_SMEM - sizeof(double) * 2 * KS_WARPS * (size_t)N) / (sizeof(float) * KS_WARPS));
    int rows = (model_len > 0 ? model_len + KS_WARPS - 1 : KS_WARPS) / KS_WARPS;
    return rows * N < f ? rows * N : f - f % N;
}

// A warp's stage: rows [tb, tb + rows) of Q (tb = -1: none), cap rows at most.
typedef struct {
    float *buf;
    int cap, tb, rows;
} ks_stage;

// Stages rows [tb, tb + rows) of the sequence at o (a no-op if staged).
__device__ static void ks_stage_rows(ks_stage *sg, const float *Q, int ldq, int o, int tb, int rows, int N,
                                     int lane) {
    if (sg->tb == tb && sg->rows == rows) return;
    int total = rows * N;
    __syncwarp();
    for (int base = 0; base < total; base += 8 * 32) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int e = base + 32 * u + lane;
            v[u] = e < total ? Q[(size_t)(o + tb + e / N) * ldq + e % N] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int e = base + 32 * u + lane;
            if (e < total) sg->buf[e] = v[u];
        }
    }
    __syncwarp();
    sg->tb = tb, sg->rows = rows;
}

// Causal rows [t, t + g) of the staged tile (g <= KS_GROUP): their norms
// first (the running sums on a copy of c), the g warp sums interleaved, then
// the sums formed again and written times 1 / max(norm, 1e-12).
__device__ static void ks_causal_group(double *c, float *T, const float *stage, int o, int tb, int t, int g, int N,
                                       int lane) {
    const int R = KS_MAX_N / 32;
    int D = 2 * N;
    double cc[R], nrm2[KS_GROUP];
    for (int r = 0; r < R; r++) cc[r] = c[r];
#pragma unroll
    for (int q = 0; q < KS_GROUP; q++) {
        nrm2[q] = 0.0;
        if (q >= g) continue;
        for (int r = 0; r < R && lane + 32 * r < N; r++) {
            cc[r] = __dadd_rn(cc[r], (double)stage[(t + q) * N + lane + 32 * r]);
            nrm2[q] = __fma_rn(cc[r], cc[r], nrm2[q]);
        }
    }
    for (int off = 16; off > 0; off >>= 1)  // cu_warp_sum's tree, for each row
#pragma unroll
        for (int q = 0; q < KS_GROUP; q++) nrm2[q] = __dadd_rn(nrm2[q], __shfl_xor_sync(0xffffffffu, nrm2[q], off));
#pragma unroll
    for (int q = 0; q < KS_GROUP; q++) {
        if (q >= g) continue;
        double inv = 1.0 / fmax(sqrt(nrm2[q]), 1e-12);
        float *tq = T + (size_t)(o + tb + t + q) * D + N;
        for (int r = 0; r < R && lane + 32 * r < N; r++) {
            c[r] = __dadd_rn(c[r], (double)stage[(t + q) * N + lane + 32 * r]);
            tq[lane + 32 * r] = (float)__dmul_rn(c[r], inv);
        }
    }
}

// ks_feature_pass over the staged rows (see above).
__device__ static void ks_feature_pass_staged(int mode, double *c, double *w2, float *T, const float *Q, int ldq,
                                              int o, int t0, int t1, int N, ks_stage *sg, int lane) {
    int D = 2 * N;
    for (int tb = t0; tb < t1; tb += sg->cap) {
        int rows = min(sg->cap, t1 - tb);
        ks_stage_rows(sg, Q, ldq, o, tb, rows, N, lane);
        const float *stage = sg->buf;
        if (mode == KS_WRITE_CAUSAL) {
            for (int t = 0; t < rows; t += KS_GROUP)
                ks_causal_group(c, T, stage, o, tb, t, min(KS_GROUP, rows - t), N, lane);
            continue;
        }
        for (int t = 0; t < rows; t++) {
            float *tq = T + (size_t)(o + tb + t) * D + N;
            for (int r = 0; r < KS_MAX_N / 32 && lane + 32 * r < N; r++) {
                c[r] = __dadd_rn(c[r], (double)stage[t * N + lane + 32 * r]);
                if (mode == KS_SUM_W2) w2[r] = __fma_rn(c[r], c[r], w2[r]);
                if (mode == KS_WRITE_REF) tq[lane + 32 * r] = (float)__dmul_rn(c[r], w2[r]);
            }
        }
    }
}

// T[:, :N] = K for the n rows at o (all threads of the block, 8 loads each
// in flight).
__device__ static void ks_copy_k(float *T, const float *K, int ldk, int o, int n, int N) {
    int D = 2 * N, total = n * N;
    for (int base = 0; base < total; base += 8 * (int)blockDim.x) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int e = base + u * blockDim.x + threadIdx.x;
            v[u] = e < total ? K[(size_t)(o + e / N) * ldk + e % N] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int e = base + u * blockDim.x + threadIdx.x;
            if (e < total) T[(size_t)(o + e / N) * D + e % N] = v[u];
        }
    }
}

// ks_features_kernel with the staging above (stage: floats per warp).
__global__ static void ks_features_staged_kernel(float *T, const float *K, int ldk, const float *Q, int ldq,
                                                 const int *seq_off, int model_len, int N, int causal, int stage,
                                                 int *err) {
    extern __shared__ double feat_staged_sh[];  // part [KS_WARPS][N], w2p [KS_WARPS][N], stages
    double *part = feat_staged_sh, *w2p = part + KS_WARPS * N;
    int s = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    ks_stage sg = {(float *)(w2p + KS_WARPS * N) + (size_t)warp * stage, stage / N, -1, 0};
    int o = seq_off[s], n = seq_off[s + 1] - o;
    int n_pad = model_len - n;
    if (!causal && n_pad < 0) {
        if (threadIdx.x == 0) atomicOr(err, CU_ERR_KS);
        return;
    }
    ks_copy_k(T, K, ldk, o, n, N);
    int len = (n + KS_WARPS - 1) / KS_WARPS;
    int t0 = min(n, warp * len), t1 = min(n, t0 + len);
    const int R = KS_MAX_N / 32;
    double c[R], w2[R];
    for (int r = 0; r < R; r++) c[r] = 0.0, w2[r] = 0.0;
    ks_feature_pass_staged(KS_SUM, c, w2, T, Q, ldq, o, t0, t1, N, &sg, lane);
    for (int r = 0; r < R && lane + 32 * r < N; r++) part[warp * N + lane + 32 * r] = c[r];
    __syncthreads();
    // c = this chunk's starting sum; total = C_{n-1}
    double total[R];
    for (int r = 0; r < R; r++) c[r] = 0.0, total[r] = 0.0;
    for (int r = 0; r < R; r++) {
        int i = lane + 32 * r;
        if (i >= N) break;
        for (int w = 0; w < KS_WARPS; w++) {
            if (w == warp) c[r] = total[r];
            total[r] = __dadd_rn(total[r], part[w * N + i]);
        }
    }
    if (causal) {
        ks_feature_pass_staged(KS_WRITE_CAUSAL, c, w2, T, Q, ldq, o, t0, t1, N, &sg, lane);
        return;
    }
    double c0[R];
    for (int r = 0; r < R; r++) c0[r] = c[r];
    ks_feature_pass_staged(KS_SUM_W2, c, w2, T, Q, ldq, o, t0, t1, N, &sg, lane);
    for (int r = 0; r < R && lane + 32 * r < N; r++) w2p[warp * N + lane + 32 * r] = w2[r];
    __syncthreads();
    for (int r = 0; r < R; r++) {
        int i = lane + 32 * r;
        if (i >= N) break;
        double sum = 0.0;
        for (int w = 0; w < KS_WARPS; w++) sum = __dadd_rn(sum, w2p[w * N + i]);
        // the n_pad pad positions hold the total C_{n-1}
        w2[r] = 1.0 / fmax(sqrt(__fma_rn(__dmul_rn((double)n_pad, total[r]), total[r], sum)), 1e-12);
    }
    ks_feature_pass_staged(KS_WRITE_REF, c0, w2, T, Q, ldq, o, t0, t1, N, &sg, lane);
}

static void ks_features_staged(float *T, const float *K, int ldk, const float *Q, int ldq, const int *seq_off,
                               int n_seq, int model_len, int N, hax_semantics sem) {
    if (n_seq <= 0) return;
    int stage = ks_stage_floats(N, model_len);
    size_t smem = sizeof(double) * 2 * KS_WARPS * (size_t)N + sizeof(float) * KS_WARPS * (size_t)stage;
    ks_features_staged_kernel<<<n_seq, 32 * KS_WARPS, smem, cu_stream()>>>(
        T, K, ldk, Q, ldq, seq_off, model_len, N, sem == SEMANTICS_CAUSAL, stage, cu_error_flag());
    CUDA_LAUNCHED();
}

extern "C" void cuda_ks_features(float *T, const float *K, int ldk, const float *Q, int ldq,
                                 const int *seq_off, int n_seq, int n_tok, int model_len, int N,
                                 hax_semantics sem) {
    (void)n_tok;
    if (N < 1 || N > KS_MAX_N)
        hax_die("cu_sparse_ks: features: N: expected 1..%d, found %d", KS_MAX_N, N);
    if (n_seq <= 0) return;
    size_t smem = sizeof(double) * 2 * KS_WARPS * (size_t)N + sizeof(float) * KS_WARPS * KS_STAGE;
    ks_features_kernel<<<n_seq, 32 * KS_WARPS, smem, cu_stream()>>>(
        T, K, ldk, Q, ldq, seq_off, model_len, N, sem == SEMANTICS_CAUSAL, cu_error_flag());
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- bf16 features

// One thread per (sequence s, feature i), the CPU's features_seq_bf16
// (src/sparse/ks.c) line by line: the running sum over the positions in
// order (bf16 or fp32 accumulator), C_t kept in T's TQ half, the column
// norm's double sum in order (products of bf16 values are exact, so the
// device's fused multiply-adds change nothing), then TQ = R(C / den).
__global__ static void ks_features_bf16_kernel(float *T, const float *K, int ldk, const float *Q, int ldq,
                                               const int *seq_off, int n_seq, int model_len, int N, int bf16_acc,
                                               int *err) {
    int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= n_seq * N) return;
    int s = id / N, i = id % N, D = 2 * N, o = seq_off[s], n = seq_off[s + 1] - o, n_pad = model_len - n;
    if (n_pad < 0) {
        atomicOr(err, CU_ERR_KS);
        return;
    }
    float acc = 0.0f, c = 0.0f;
    double s2 = 0.0;
    for (int t = 0; t < n; t++) {
        size_t g = (size_t)(o + t);
        T[g * D + i] = K[g * ldk + i];  // TK = K
        float q = Q[g * ldq + i];
        acc = bf16_acc ? hax_bf16_round(acc + q) : acc + q;
        c = hax_bf16_round(acc);
        T[g * D + N + i] = c;
        s2 = __dadd_rn(s2, __dmul_rn((double)c, (double)c));
    }
    double v = __dadd_rn(s2, __dmul_rn(__dmul_rn((double)n_pad, (double)c), (double)c));  // pads hold C_{n-1}
    float den = hax_bf16_round(fmaxf(hax_bf16_round(sqrtf((float)v)), 1e-12f));
    for (int t = 0; t < n; t++) {
        float *tq = T + (size_t)(o + t) * D + N + i;
        *tq = hax_bf16_round(*tq / den);
    }
}

extern "C" void cuda_ks_features_bf16(float *T, const float *K, int ldk, const float *Q, int ldq,
                                      const int *seq_off, int n_seq, int model_len, int N, int bf16_acc) {
    if (N < 1 || N > KS_MAX_N) hax_die("cu_sparse_ks: features: N: expected 1..%d, found %d", KS_MAX_N, N);
    if (n_seq <= 0) return;
    ks_features_bf16_kernel<<<cu_blocks((long)n_seq * N, 128), 128, 0, cu_stream()>>>(
        T, K, ldk, Q, ldq, seq_off, n_seq, model_len, N, bf16_acc, cu_error_flag());
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- score MLP

__global__ static void relu_kernel(float *x, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && !(x[i] > 0.0f)) x[i] = 0.0f;
}

// dh *= relu'(pre), read from the post-ReLU h (PyTorch passes nothing at 0).
__global__ static void relu_backward_kernel(float *dh, const float *h, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && !(h[i] > 0.0f)) dh[i] = 0.0f;
}

static void relu(float *x, long n) {
    if (n <= 0) return;
    relu_kernel<<<cu_blocks(n, 256), 256, 0, cu_stream()>>>(x, n);
    CUDA_LAUNCHED();
}

static void relu_backward(float *dh, const float *h, long n) {
    if (n <= 0) return;
    relu_backward_kernel<<<cu_blocks(n, 256), 256, 0, cu_stream()>>>(dh, h, n);
    CUDA_LAUNCHED();
}

extern "C" void cuda_ks_mlp_forward(float *score, float *h1, float *h2, const float *T,
                                    const ks_params *p, int n_tok, int N) {
    int D = 2 * N;
    if (n_tok <= 0) return;
    cuda_linear_forward(h1, D, T, D, p->w1, p->b1, n_tok, D, D);
    relu(h1, (long)n_tok * D);
    cuda_linear_forward(h2, D, h1, D, p->w2, p->b2, n_tok, D, D);
    relu(h2, (long)n_tok * D);
    cuda_linear_forward(score, 1, h2, D, p->w3, p->b3, n_tok, D, 1);
}

extern "C" void cuda_ks_mlp_forward_bf16(float *score, float *h1, float *h2, const float *T,
                                         const ks_params *p, int n_tok, int N) {
    int D = 2 * N;
    long nd = (long)n_tok * D;
    if (n_tok <= 0) return;
    cuda_linear_forward(h1, D, T, D, p->w1, p->b1, n_tok, D, D);
    cuda_round_bf16(h1, h1, nd);
    relu(h1, nd);
    cuda_linear_forward(h2, D, h1, D, p->w2, p->b2, n_tok, D, D);
    cuda_round_bf16(h2, h2, nd);
    relu(h2, nd);
    cuda_linear_forward(score, 1, h2, D, p->w3, p->b3, n_tok, D, 1);
    cuda_round_bf16(score, score, n_tok);
}

extern "C" size_t cuda_ks_mlp_workspace_bytes(int n_rows, int N) {
    return sizeof(float) * (size_t)(n_rows > 0 ? n_rows : 1) * (5 * (size_t)(2 * N) + 1);
}

// Gathers the visited rows (a row < 0 gives zeros: it then adds nothing).
__global__ static void ks_gather_kernel(float *Tg, float *h1g, float *h2g, float *ds, const float *T,
                                       const float *h1, const float *h2, const float *dscore,
                                       const int *rows, int n_rows, int D) {
    long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long)n_rows * D) return;
    int r = (int)(e / D), k = (int)(e % D);
    int i = rows ? rows[r] : r;
    bool on = i >= 0;
    size_t src = (size_t)(on ? i : 0) * D + k;
    Tg[e] = on ? T[src] : 0.0f;
    h1g[e] = on ? h1[src] : 0.0f;
    h2g[e] = on ? h2[src] : 0.0f;
    if (k == 0) ds[r] = on ? dscore[i] : 0.0f;
}

// dbias[c] += sum_i dout[i, c] over n rows: one block per column, each
// thread a fixed strided set of rows (double), then a fixed tree over the
// block: deterministic, and parallel where cu_linear's bias gradient walks
// the n rows in one thread per column.
#define KS_BIAS_THREADS 256
__global__ static void ks_bias_grad_kernel(float *dbias, const float *dout, int ld, int n) {
    __shared__ double part[KS_BIAS_THREADS];
    int c = blockIdx.x, tid = threadIdx.x;
    double acc = 0.0;
    for (int i = tid; i < n; i += KS_BIAS_THREADS) acc += dout[(size_t)i * ld + c];
    part[tid] = acc;
    __syncthreads();
    for (int w = KS_BIAS_THREADS / 2; w > 0; w >>= 1) {
        if (tid < w) part[tid] += part[tid + w];
        __syncthreads();
    }
    if (tid == 0) dbias[c] += (float)part[0];
}

static void ks_bias_grad(float *dbias, const float *dout, int ld, int n, int cols) {
    ks_bias_grad_kernel<<<cols, KS_BIAS_THREADS, 0, cu_stream()>>>(dbias, dout, ld, n);
    CUDA_LAUNCHED();
}

// cuda_ks_mlp_backward, and with bf16 its bf16-pure form (dh2, dh1 rounded).
static void mlp_backward(const ks_grads *g, const ks_params *p, const float *T, const float *h1, const float *h2,
                         const float *dscore, const int *rows, int n_rows, int N, void *work, int bf16) {
    if (n_rows <= 0) return;
    int D = 2 * N;
    long nd = (long)n_rows * D;
    float *Tg = (float *)work, *h1g = Tg + nd, *h2g = h1g + nd, *dh1 = h2g + nd, *dh2 = dh1 + nd;
    float *ds = dh2 + nd;
    ks_gather_kernel<<<cu_blocks(nd, 256), 256, 0, cu_stream()>>>(Tg, h1g, h2g, ds, T, h1, h2,
                                                                  dscore, rows, n_rows, D);
    CUDA_LAUNCHED();
    cuda_zero(dh1, sizeof(float) * 2 * (size_t)nd);  // dh1 and dh2
    // the bias gradients by ks_bias_grad (cu_linear's is one thread per column)
    cuda_linear_backward(dh2, D, g->w3, NULL, ds, 1, h2g, D, p->w3, n_rows, D, 1);
    ks_bias_grad(g->b3, ds, 1, n_rows, 1);
    if (bf16) cuda_round_bf16(dh2, dh2, nd);
    relu_backward(dh2, h2g, nd);
    cuda_linear_backward(dh1, D, g->w2, NULL, dh2, D, h1g, D, p->w2, n_rows, D, D);
    ks_bias_grad(g->b2, dh2, D, n_rows, D);
    if (bf16) cuda_round_bf16(dh1, dh1, nd);
    relu_backward(dh1, h1g, nd);
    cuda_linear_backward(NULL, 0, g->w1, NULL, dh1, D, Tg, D, p->w1, n_rows, D, D);
    ks_bias_grad(g->b1, dh1, D, n_rows, D);
}

extern "C" void cuda_ks_mlp_backward(const ks_grads *g, const ks_params *p, const float *T,
                                     const float *h1, const float *h2, const float *dscore,
                                     const int *rows, int n_rows, int N, void *work) {
    mlp_backward(g, p, T, h1, h2, dscore, rows, n_rows, N, work, 0);
}

extern "C" void cuda_ks_mlp_backward_bf16(const ks_grads *g, const ks_params *p, const float *T,
                                          const float *h1, const float *h2, const float *dscore,
                                          const int *rows, int n_rows, int N, void *work) {
    mlp_backward(g, p, T, h1, h2, dscore, rows, n_rows, N, work, 1);
}

// ---------------------------------------------------------------- score MLP, fewer launches (new)
//
// cuda_ks_mlp_forward is 8 launches (each layer's bias fill, GEMM, ReLU) and
// mlp_backward 15 at the paper size, each a few microseconds of almost no
// work. The new forward fills the next layer's bias in the same kernel as
// this layer's ReLU (and bf16 rounding), then runs the same GEMMs
// (cuda_linear_forward_add: the call cuda_linear_forward makes with a bias);
// the new backward gathers the candidate rows in the loss backward's kernel
// (cuda_ks_loss_backward_gather) and applies each ReLU' in the kernel of the
// bias gradient that reads it (the same per-thread sums and tree as
// ks_bias_grad_kernel). Every value is the same.

// relu: h [n, D] = ReLU(h) (bf16: of R(h)), if h != NULL; fill: out[i, :out_dim] = bias (row stride ld_out).
__global__ static void ks_relu_fill_kernel(float *h, int D, int bf16, float *out, int ld_out, const float *bias,
                                           int out_dim, int n) {
    long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long)n * D) return;
    int i = (int)(e / D), k = (int)(e % D);
    if (h) {
        float v = bf16 ? hax_bf16_round(h[e]) : h[e];
        h[e] = v > 0.0f ? v : 0.0f;  // as relu_kernel: not (v > 0), NaN included, gives 0
    }
    if (k < out_dim) out[(size_t)i * ld_out + k] = bias[k];
}

static void ks_relu_fill(float *h, int D, int bf16, float *out, int ld_out, const float *bias, int out_dim, int n) {
    ks_relu_fill_kernel<<<cu_blocks((long)n * D, 256), 256, 0, cu_stream()>>>(h, D, bf16, out, ld_out, bias,
                                                                              out_dim, n);
    CUDA_LAUNCHED();
}

// cuda_ks_mlp_forward / cuda_ks_mlp_forward_bf16 in 6 launches (+ the score's rounding).
static void ks_mlp_forward_fused(float *score, float *h1, float *h2, const float *T, const ks_params *p, int n_tok,
                                 int N, int bf16) {
    int D = 2 * N;
    if (n_tok <= 0) return;
    ks_relu_fill(NULL, D, 0, h1, D, p->b1, D, n_tok);
    cuda_linear_forward_add(h1, D, T, D, p->w1, n_tok, D, D);
    ks_relu_fill(h1, D, bf16, h2, D, p->b2, D, n_tok);
    cuda_linear_forward_add(h2, D, h1, D, p->w2, n_tok, D, D);
    ks_relu_fill(h2, D, bf16, score, 1, p->b3, 1, n_tok);
    cuda_linear_forward_add(score, 1, h2, D, p->w3, n_tok, D, 1);
    if (bf16) cuda_round_bf16(score, score, n_tok);
}

// Block c < D: dh[:, c] *= relu'(h[:, c]) (read from the post-ReLU h, as
// relu_backward_kernel) and dbias[c] += the column's sum; block D (extra
// != NULL): dextra[0] += the sum of extra [n] (no ReLU'). The sums of
// ks_bias_grad_kernel: strided partials in double, then its tree.
__global__ static void ks_relu_bias_grad_kernel(float *dbias, float *dh, const float *h, int n, int D, float *dextra,
                                                const float *extra) {
    __shared__ double part[KS_BIAS_THREADS];
    int c = blockIdx.x, tid = threadIdx.x;
    double acc = 0.0;
    if (c < D) {
        for (int i = tid; i < n; i += KS_BIAS_THREADS) {
            size_t e = (size_t)i * D + c;
            float v = dh[e];
            if (!(h[e] > 0.0f)) v = 0.0f, dh[e] = 0.0f;
            acc += v;
        }
    } else {
        for (int i = tid; i < n; i += KS_BIAS_THREADS) acc += extra[i];
    }
    part[tid] = acc;
    __syncthreads();
    for (int w = KS_BIAS_THREADS / 2; w > 0; w >>= 1) {
        if (tid < w) part[tid] += part[tid + w];
        __syncthreads();
    }
    if (tid == 0) *(c < D ? dbias + c : dextra) += (float)part[0];
}

static void ks_relu_bias_grad(float *dbias, float *dh, const float *h, int n, int D, float *dextra,
                              const float *extra) {
    ks_relu_bias_grad_kernel<<<D + (extra ? 1 : 0), KS_BIAS_THREADS, 0, cu_stream()>>>(dbias, dh, h, n, D, dextra,
                                                                                       extra);
    CUDA_LAUNCHED();
}

// The new backward (see above): 8 launches in fp32.
static void ks_backward_fused(cuda_ks_state *st, const ks_params *p, const ks_grads *g, float scale) {
    int n_rows = st->n_seq * st->k_c, D = 2 * st->N, bf16 = st->bf16;
    long nd = (long)n_rows * D;
    float *Tg = (float *)st->work, *h1g = Tg + nd, *h2g = h1g + nd, *dh1 = h2g + nd, *dh2 = dh1 + nd;
    float *ds = dh2 + nd;
    cuda_ks_loss_backward_gather(st, scale, Tg, h1g, h2g, dh1, dh2, ds);
    cuda_linear_backward(dh2, D, g->w3, NULL, ds, 1, h2g, D, p->w3, n_rows, D, 1);
    if (bf16) cuda_round_bf16(dh2, dh2, nd);
    ks_relu_bias_grad(g->b2, dh2, h2g, n_rows, D, g->b3, ds);
    cuda_linear_backward(dh1, D, g->w2, NULL, dh2, D, h1g, D, p->w2, n_rows, D, D);
    if (bf16) cuda_round_bf16(dh1, dh1, nd);
    ks_relu_bias_grad(g->b1, dh1, h1g, n_rows, D, NULL, NULL);
    cuda_linear_backward(NULL, 0, g->w1, NULL, dh1, D, Tg, D, p->w1, n_rows, D, D);
}

// ---------------------------------------------------------------- cumulative top-k

// ks_worse, ks_count_better: cuda/sparse/ks_common.cuh.

// Phase A (one warp): the top-k_c set before each chunk, chunk by chunk. The
// set is kept best first (cur); a chunk's keys are ranked among themselves
// (each lane holds KS_TOPK_CHUNK / 32 of them) into a best-first run (ck);
// then every key's place in the merged order is its own rank plus the count
// of better keys in the other run (a binary search): the first k_c places
// are the new set. The set before chunk c >= 1 is written best first into
// sel's row c*C - 1 (phase B puts it in index order).
__device__ static void ks_topk_boundaries(int *sel, const float *score, int o, int n, int k_c, int *buf,
                                          int lane) {
    const int C = KS_TOPK_CHUNK, U = KS_TOPK_CHUNK / 32;
    int *cur_i = buf, *nxt_i = buf + k_c, *ck_i = buf + 2 * k_c;
    float *cur_s = (float *)(ck_i + C), *nxt_s = cur_s + k_c, *ck_s = nxt_s + k_c;
    int m = 0;
    for (int t0 = 0; t0 + C < n; t0 += C) {  // the last chunk's merge is never needed
        int cn = C;
        float sc[U];
        int rc[U];
#pragma unroll
        for (int u = 0; u < U; u++) sc[u] = score[o + t0 + lane + 32 * u], rc[u] = 0;
        for (int j = 0; j < cn; j++) {  // rank within the chunk
            float bs = 0.0f;
#pragma unroll
            for (int u = 0; u < U; u++) {
                float v = __shfl_sync(0xffffffffu, sc[u], j & 31);
                if (j / 32 == u) bs = v;
            }
#pragma unroll
            for (int u = 0; u < U; u++) rc[u] += ks_worse(sc[u], t0 + lane + 32 * u, bs, t0 + j);
        }
#pragma unroll
        for (int u = 0; u < U; u++) ck_i[rc[u]] = t0 + lane + 32 * u, ck_s[rc[u]] = sc[u];
        __syncwarp();
#pragma unroll
        for (int u = 0; u < U; u++) {
            int pos = rc[u] + ks_count_better(cur_s, cur_i, m, sc[u], t0 + lane + 32 * u);
            if (pos < k_c) nxt_i[pos] = t0 + lane + 32 * u, nxt_s[pos] = sc[u];
        }
        for (int i = lane; i < m; i += 32) {
            int pos = i + ks_count_better(ck_s, ck_i, cn, cur_s[i], cur_i[i]);
            if (pos < k_c) nxt_i[pos] = cur_i[i], nxt_s[pos] = cur_s[i];
        }
        __syncwarp();
        int *ti = cur_i;
        float *ts = cur_s;
        cur_i = nxt_i, cur_s = nxt_s, nxt_i = ti, nxt_s = ts;
        m = min(k_c, m + cn);
        int *row = sel + (size_t)(o + t0 + C - 1) * k_c;
        for (int j = lane; j < k_c; j += 32) row[j] = j < m ? cur_i[j] : -1;
        __syncwarp();
    }
}

// Phase B (one warp per chunk [t0, t1)): the set before the chunk from row
// t0 - 1 (best first) is put in ascending index order (a rank sort) and that
// row rewritten; then the chunk's steps run sequentially. The set changes by
// at most one key per step (key t enters and evicts the worst, or does not
// enter), so it is kept in shared memory in ascending index order with the
// scores beside (cur, cs), the worst found by a warp reduction, shifted out
// and t appended. Each row of sel is written by the whole warp. Row t1 - 1 of
// a chunk that is not the last is left to the next chunk's warp.
__device__ static void ks_topk_chunk(int *sel, const float *score, int o, int n, int k_c, int t0,
                                     int *buf, int lane) {
    int *cur = buf, *tmp_i = buf + 2 * k_c;
    float *cs = (float *)(buf + k_c), *tmp_s = (float *)(buf + 3 * k_c);
    int m = min(k_c, t0), t1 = min(n, t0 + KS_TOPK_CHUNK);
    if (t0 > 0) {
        int *row = sel + (size_t)(o + t0 - 1) * k_c;
        for (int i = lane; i < m; i += 32) tmp_i[i] = row[i], tmp_s[i] = score[o + row[i]];
        __syncwarp();
        for (int i = lane; i < m; i += 32) {
            int r = 0;
            for (int j = 0; j < m; j++) r += tmp_i[j] < tmp_i[i];
            cur[r] = tmp_i[i], cs[r] = tmp_s[i];
        }
        __syncwarp();
        for (int j = lane; j < k_c; j += 32) row[j] = j < m ? cur[j] : -1;
    }
    int t_end = t1 < n ? t1 - 1 : t1;
    float s_lane = 0.0f;  // scores of the next 32 positions, one per lane
    for (int t = t0; t < t_end; t++) {
        if (((t - t0) & 31) == 0) s_lane = t + lane < n ? score[o + t + lane] : 0.0f;
        float st = __shfl_sync(0xffffffffu, s_lane, (t - t0) & 31);
        __syncwarp();
        if (m < k_c) {
            if (lane == 0) cur[m] = t, cs[m] = st;
            m++;
        } else {
            int wj = -1, wi = 0;
            float ws = 0.0f;
            for (int j = lane; j < m; j += 32)
                if (wj < 0 || ks_worse(cs[j], cur[j], ws, wi)) wj = j, wi = cur[j], ws = cs[j];
            for (int off = 16; off > 0; off >>= 1) {
                int oj = __shfl_xor_sync(0xffffffffu, wj, off);
                int oi = __shfl_xor_sync(0xffffffffu, wi, off);
                float os = __shfl_xor_sync(0xffffffffu, ws, off);
                if (oj >= 0 && (wj < 0 || ks_worse(os, oi, ws, wi))) wj = oj, wi = oi, ws = os;
            }
            __syncwarp();  // the reads above before any write below
            if (ks_worse(ws, wi, st, t)) {
                // drop slot wj: shift the slots after it left, 32 at a time
                for (int base = wj; base < m - 1; base += 32) {
                    int j = base + lane;
                    int ci = 0;
                    float cv = 0.0f;
                    if (j < m - 1) ci = cur[j + 1], cv = cs[j + 1];
                    __syncwarp();
                    if (j < m - 1) cur[j] = ci, cs[j] = cv;
                    __syncwarp();
                }
                if (lane == 0) cur[m - 1] = t, cs[m - 1] = st;
            }
        }
        __syncwarp();
        int *row = sel + (size_t)(o + t) * k_c;
        for (int j = lane; j < k_c; j += 32) row[j] = j < m ? cur[j] : -1;
    }
}

// One block of KS_TOPK_WARPS warps per sequence: warp 0 finds the set before
// every chunk of KS_TOPK_CHUNK positions (phase A, ~n / 64 merges), then the
// warps take the chunks in parallel (phase B, 64 steps each), instead of one
// warp walking all n steps.
__global__ static void ks_cumtopk_kernel(int *sel, const float *score, const int *seq_off, int k_c) {
    extern __shared__ int topk_sh[];  // phase A: [4 k_c + 2 C]; phase B: [4 k_c] per warp
    int s = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int o = seq_off[s], n = seq_off[s + 1] - o;
    if (warp == 0) ks_topk_boundaries(sel, score, o, n, k_c, topk_sh, lane);
    __syncthreads();
    for (int t0 = warp * KS_TOPK_CHUNK; t0 < n; t0 += blockDim.x / 32 * KS_TOPK_CHUNK)
        ks_topk_chunk(sel, score, o, n, k_c, t0, topk_sh + 4 * k_c * warp, lane);
}

// Shared bytes of ks_cumtopk_kernel with w warps.
static size_t ks_topk_smem(int k_c, int w) {
    size_t a = sizeof(int) * (4 * (size_t)k_c + 2 * KS_TOPK_CHUNK), b = sizeof(int) * 4 * (size_t)k_c * w;
    return a > b ? a : b;
}

extern "C" void cuda_ks_cumtopk(int *sel, const float *score, const int *seq_off, int n_seq, int k_c) {
    if (k_c < 1) hax_die("cu_sparse_ks: k_c: expected at least 1 key per component, found %d", k_c);
    if (n_seq <= 0) return;
    int w = KS_TOPK_WARPS;
    while (w > 1 && ks_topk_smem(k_c, w) > 48 * 1024) w--;
    if (ks_topk_smem(k_c, w) > 48 * 1024)
        hax_die("cu_sparse_ks: cumtopk: k_c: expected at most %d, found %d",
                (int)((48 * 1024 / sizeof(int) - 2 * KS_TOPK_CHUNK) / 4), k_c);
    ks_cumtopk_kernel<<<n_seq, 32 * w, ks_topk_smem(k_c, w), cu_stream()>>>(sel, score, seq_off, k_c);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- cumulative top-k by exit positions (new)
//
// The kernel above spends its time in serial steps: one warp merging the
// chunk boundaries of a sequence (~n/64 merges), then 64 steps per chunk
// with a warp reduction and a shift each, 64 blocks in all. Here: under the
// total order of ks_worse, key j is among the k_c best of positions 0..t
// exactly when fewer than k_c keys i <= t are better than j. That count only
// grows with t, so j is selected at the steps j <= t < exit_j, exit_j the
// position at which the count of better keys (positions in order) reaches
// k_c, or n. Phase 1 finds exit_j, a thread per key scanning the sequence's
// scores in shared memory; phase 2 writes every row on its own: the keys of
// row t are those j <= t with exit_j > t, in index order, found among the
// chunk's candidates (a warp per row, a ballot per 32 candidates). The rows
// are the CPU's heap's selections exactly, as the kernel above's.

#define KS_EXIT_THREADS 256
#define KS_EXIT_TILE 4096   // scores staged at a time
#define KS_ROWS_CHUNK 64    // phase 2: rows per chunk
#define KS_ROWS_WARPS 8     // phase 2: warps per block
#define KS_MAX_KC 6000      // phase 2's shared memory (2 (k_c + chunk) ints within 48 KiB)

// Phase 1, block (s, y): keys j = y*256 + tid, + gridDim.y*256, ... of
// sequence s. A key never reached by k_c better ones exits at n; a key with
// k_c better ones before itself exits before it (never selected).
__global__ static void ks_exit_kernel(int *exit_at, const float *score, const int *seq_off, int k_c) {
    __shared__ float tile[KS_EXIT_TILE];
    int o = seq_off[blockIdx.x], n = seq_off[blockIdx.x + 1] - o;
    for (int jb = blockIdx.y * KS_EXIT_THREADS; jb < n; jb += gridDim.y * KS_EXIT_THREADS) {
        int j = jb + threadIdx.x, count = 0, ex = n;
        bool live = j < n;  // still counting
        float sj = live ? score[o + j] : 0.0f;
        for (int tb = 0; tb < n; tb += KS_EXIT_TILE) {
            int len = min(KS_EXIT_TILE, n - tb);
            if (!__syncthreads_or(live)) break;  // (a barrier: the last tile's readers are done)
            for (int i = threadIdx.x; i < len; i += KS_EXIT_THREADS) tile[i] = score[o + tb + i];
            __syncthreads();
            for (int i = 0; live && i < len; i++)
                if (ks_worse(sj, j, tile[i], tb + i) && ++count == k_c) ex = tb + i, live = false;
        }
        if (j < n) exit_at[o + j] = ex;
    }
}

// Phase 2, block (s, y): chunks y, y + gridDim.y, ... of KS_ROWS_CHUNK rows
// of sequence s. A chunk's candidates, in index order: the keys j < t0 with
// exit_j > t0 (row t0's keys from before the chunk, at most k_c) and the
// chunk's own keys that are ever selected (exit_j > j); kept in shared
// memory (cap entries at most: more only with NaN scores, which ks_worse
// does not order; the rows stay in bounds then).
__global__ static void ks_topk_rows_kernel(int *sel, const int *exit_at, const int *seq_off, int k_c) {
    extern __shared__ int rows_sh[];  // cand [cap], cexit [cap]
    __shared__ int warp_cnt[KS_ROWS_WARPS];
    int cap = k_c + KS_ROWS_CHUNK, *cand = rows_sh, *cexit = rows_sh + cap;
    int o = seq_off[blockIdx.x], n = seq_off[blockIdx.x + 1] - o;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int t0 = blockIdx.y * KS_ROWS_CHUNK; t0 < n; t0 += gridDim.y * KS_ROWS_CHUNK) {
        int t1 = min(n, t0 + KS_ROWS_CHUNK), nc = 0;
        for (int jb = 0; jb < t1; jb += 32 * KS_ROWS_WARPS) {  // the candidates, a block-wide compaction
            int j = jb + threadIdx.x, e = j < t1 ? exit_at[o + j] : 0;
            bool in = j < t1 && e > max(j, t0);
            unsigned ball = __ballot_sync(0xffffffffu, in);
            if (lane == 0) warp_cnt[warp] = __popc(ball);
            __syncthreads();
            int at = nc;
            for (int w = 0; w < warp; w++) at += warp_cnt[w];
            at += __popc(ball & ((1u << lane) - 1u));
            if (in && at < cap) cand[at] = j, cexit[at] = e;
            for (int w = 0; w < KS_ROWS_WARPS; w++) nc += warp_cnt[w];
            __syncthreads();  // warp_cnt is rewritten next
        }
        nc = min(nc, cap);
        for (int t = t0 + warp; t < t1; t += KS_ROWS_WARPS) {
            int *row = sel + (size_t)(o + t) * k_c, m = 0;
            for (int cb = 0; cb < nc && cand[cb] <= t; cb += 32) {
                int i = cb + lane;
                bool in = i < nc && cand[i] <= t && cexit[i] > t;
                unsigned ball = __ballot_sync(0xffffffffu, in);
                int at = m + __popc(ball & ((1u << lane) - 1u));
                if (in && at < k_c) row[at] = cand[i];
                m += __popc(ball);
            }
            for (int i = min(m, k_c) + lane; i < k_c; i += 32) row[i] = -1;
        }
        __syncthreads();  // cand is rewritten by the next chunk
    }
}

extern "C" void cuda_ks_cumtopk_exit(int *sel, int *exit_at, const float *score, const int *seq_off, int n_seq,
                                     int n_tok, int k_c) {
    if (k_c < 1 || k_c > KS_MAX_KC)
        hax_die("cu_sparse_ks: cumtopk: k_c: expected 1..%d, found %d", KS_MAX_KC, k_c);
    if (n_seq <= 0 || n_tok <= 0) return;
    // blocks per sequence: about the mean length's worth of keys / chunks (a
    // longer sequence's blocks take several)
    int mean = (n_tok + n_seq - 1) / n_seq;
    int y1 = min(cu_blocks(mean, KS_EXIT_THREADS), 64), y2 = min(cu_blocks(mean, KS_ROWS_CHUNK), 64);
    ks_exit_kernel<<<dim3(n_seq, y1), KS_EXIT_THREADS, 0, cu_stream()>>>(exit_at, score, seq_off, k_c);
    CUDA_LAUNCHED();
    size_t smem = sizeof(int) * 2 * ((size_t)k_c + KS_ROWS_CHUNK);
    ks_topk_rows_kernel<<<dim3(n_seq, y2), 32 * KS_ROWS_WARPS, smem, cu_stream()>>>(sel, exit_at, seq_off, k_c);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- per layer

static size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// The state's buffers in one block, in this order.
static size_t ks_carve(cuda_ks_state *st, char *mem, int max_tok, int max_seq, int N, int k_c) {
    size_t D = 2 * (size_t)N, nt = max_tok > 0 ? (size_t)max_tok : 1;
    size_t nc = (size_t)(max_seq > 0 ? max_seq : 1) * (size_t)k_c;
    size_t work = cuda_ks_mlp_workspace_bytes((int)nc, N);
    size_t lw = cuda_ks_loss_workspace_bytes(max_seq);
    if (lw > work) work = lw;
    size_t ns = (size_t)(max_seq > 0 ? max_seq : 1);
    size_t sizes[] = {sizeof(float) * nt * D, sizeof(float) * nt * D, sizeof(float) * nt * D,
                      sizeof(float) * nt, sizeof(int) * nt * k_c, sizeof(int) * nc,
                      sizeof(double) * nc, sizeof(double), sizeof(float) * nt, sizeof(int) * nc, work,
                      sizeof(int) * nt, sizeof(int) * ns, sizeof(double) * nc,
                      sizeof(double) * cuda_ks_features_long_doubles(max_seq, N),
                      k_c <= KS_LONG_MAX_KC ? sizeof(int) * cuda_ks_cumtopk_long_ints(max_tok, max_seq, k_c) : 0};
    void **ptrs[] = {(void **)&st->T, (void **)&st->h1, (void **)&st->h2, (void **)&st->score,
                     (void **)&st->sel, (void **)&st->cand, (void **)&st->y, (void **)&st->loss,
                     (void **)&st->dscore, (void **)&st->rows, &st->work, (void **)&st->exit_at,
                     (void **)&st->cand_m, (void **)&st->row_loss, (void **)&st->long_feat,
                     (void **)&st->long_topk};
    size_t off = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        if (mem) *ptrs[i] = sizes[i] ? mem + off : NULL;
        off += align256(sizes[i]);
    }
    return off;
}

extern "C" size_t cuda_ks_state_bytes(int max_tok, int max_seq, int N, int k_c) {
    cuda_ks_state tmp;
    return ks_carve(&tmp, NULL, max_tok, max_seq, N, k_c);
}

extern "C" int cuda_ks_old_kernels(void) {
    static int env = -1;
    // new (0) by default: on an H200 (2026-12-07) they gave the previous kernels' bits in
    // every GPU test and took the HAX phases from 0.611 to 0.430 ms (gpu_sparse)
    if (env < 0) env = hax_env_choice("HAX_SPARSE_KS", "new old", 0);
    return env;
}

extern "C" int cuda_ks_targets_warp(void) {
    static int env = -1;
    // warp (1) by default until the tiles have run on a GPU (stage ksv4 of tests/device/stages.sh)
    if (env < 0) env = hax_env_choice("HAX_KS_TARGETS", "tile warp", 1);
    return env;
}

extern "C" int cuda_sparse_long_env(void) {
    static int env = -1;
    // old 0, new 1, all 2; new by default: on an H100 (2026-12-07) they gave the previous
    // kernels' bits in every GPU test (gpu_sparse, gpu_sparse_ks) and at every length of
    // --lengths, and were faster at each (1.14x at 256 x 1,024 to 4.80x at 4 x 65,536)
    if (env < 0) env = hax_env_choice("HAX_SPARSE_LONG", "old new all", 1);
    return env;
}

extern "C" int cuda_sparse_long_use(int mode, int n_seq, int n_tok) {
    return mode == 2 || (mode == 1 && n_seq > 0 && n_tok / n_seq >= CU_SP_LONG_MIN_LEN);
}

extern "C" void cuda_ks_state_init(cuda_ks_state *st, void *mem, int max_tok, int max_seq, int N,
                                   int k_c) {
    memset(st, 0, sizeof(*st));
    if (k_c < 1 || N < 1 || N > KS_MAX_N)
        hax_die("cu_sparse_ks: cuda_ks_state_init: expected k_c >= 1 and N in 1..%d, found k_c %d, "
                "N %d", KS_MAX_N, k_c, N);
    st->max_tok = max_tok;
    st->max_seq = max_seq;
    st->N = N;
    st->k_c = k_c;
    st->old = cuda_ks_old_kernels();
    st->targets_warp = cuda_ks_targets_warp();
    st->long_mode = cuda_sparse_long_env();
    ks_carve(st, (char *)mem, max_tok, max_seq, N, k_c);
    // the staged features' shared memory (a limit, not a stream operation)
    CUDA_CHECK(cudaFuncSetAttribute(ks_features_staged_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    KS_FEAT_SMEM));
    cuda_zero(st->dscore, sizeof(float) * (size_t)(max_tok > 0 ? max_tok : 1));
    cuda_zero(st->loss, sizeof(double));
}

// The features of cuda_ks_forward: the long-sequence kernels (lng), else
// the new or the previous ones; bf16-pure reference semantics has its own
// op sequence (one bf16 chain per column), causal semantics rounds fp32's.
static void ks_forward_features(cuda_ks_state *st, const float *K, int ldk, const float *Q, int ldq,
                                const int *seq_off, int n_seq, int n_tok, int model_len, hax_semantics sem, int lng) {
    int bf16_ref = st->bf16 && sem == SEMANTICS_REFERENCE, N = st->N;
    if (lng)  // cuda/sparse/ks_long.cu, h1 as its scratch (the MLP writes h1 next)
        cuda_ks_features_long(st->T, (double *)st->h1, st->long_feat, K, ldk, Q, ldq, seq_off, n_seq, n_tok,
                              model_len, N, sem, bf16_ref, bf16_ref ? ks_cumsum_bf16_acc() : 0);
    else if (bf16_ref) cuda_ks_features_bf16(st->T, K, ldk, Q, ldq, seq_off, n_seq, model_len, N, ks_cumsum_bf16_acc());
    else if (st->old) cuda_ks_features(st->T, K, ldk, Q, ldq, seq_off, n_seq, n_tok, model_len, N, sem);
    else ks_features_staged(st->T, K, ldk, Q, ldq, seq_off, n_seq, model_len, N, sem);
    if (st->bf16 && !bf16_ref) cuda_round_bf16(st->T, st->T, (long)n_tok * 2 * N);  // causal semantics (ks_forward)
}

// The cumulative top-k of cuda_ks_forward (the same selections every way).
static void ks_forward_topk(cuda_ks_state *st, const int *seq_off, int n_seq, int n_tok, int model_len, int lng) {
    if (lng && st->long_topk)
        cuda_ks_cumtopk_long(st->sel, st->long_topk, st->score, seq_off, n_seq, n_tok,
                             cu_long_len_hint(n_tok, n_seq, model_len), st->k_c);
    else if (st->old) cuda_ks_cumtopk(st->sel, st->score, seq_off, n_seq, st->k_c);
    else cuda_ks_cumtopk_exit(st->sel, st->exit_at, st->score, seq_off, n_seq, n_tok, st->k_c);
}

extern "C" void cuda_ks_forward(cuda_ks_state *st, const ks_params *p, const float *K, int ldk,
                                const float *Q, int ldq, const int *seq_off, int n_seq, int n_tok,
                                int model_len, hax_semantics sem, const int *cand) {
    if (n_tok > st->max_tok || n_seq > st->max_seq || n_tok < 0 || n_seq < 0)
        hax_die("cu_sparse_ks: batch: expected at most %d tokens and %d sequences "
                "(cuda_ks_state_init), found %d and %d", st->max_tok, st->max_seq, n_tok, n_seq);
    st->n_tok = n_tok;
    st->n_seq = n_seq;
    st->seq_off = seq_off;
    int lng = cuda_sparse_long_use(st->long_mode, n_seq, n_tok);
    ks_forward_features(st, K, ldk, Q, ldq, seq_off, n_seq, n_tok, model_len, sem, lng);
    if (!st->old) ks_mlp_forward_fused(st->score, st->h1, st->h2, st->T, p, n_tok, st->N, st->bf16);
    else if (st->bf16) cuda_ks_mlp_forward_bf16(st->score, st->h1, st->h2, st->T, p, n_tok, st->N);
    else cuda_ks_mlp_forward(st->score, st->h1, st->h2, st->T, p, n_tok, st->N);
    ks_forward_topk(st, seq_off, n_seq, n_tok, model_len, lng);
    st->has_loss = cand != NULL;
    if (!cand) {
        cuda_zero(st->loss, sizeof(double));
        return;
    }
    if (!st->old) {
        cuda_ks_targets_loss(st, K, ldk, Q, ldq, cand, model_len, sem);
        return;
    }
    size_t nc = (size_t)n_seq * st->k_c;
    if (cand != st->cand && nc)
        CUDA_CHECK(cudaMemcpyAsync(st->cand, cand, sizeof(int) * nc, cudaMemcpyDeviceToDevice,
                                   cu_stream()));
    if (st->bf16) {
        cuda_ks_rank_targets_bf16(st->y, K, ldk, Q, ldq, st->cand, seq_off, n_seq, model_len, st->N, st->k_c,
                                  sem);
        cuda_ks_rank_loss_pairs_bf16(st->loss, st->score, st->y, st->cand, seq_off, n_seq, st->k_c, st->work);
        return;
    }
    cuda_ks_rank_targets(st->y, K, ldk, Q, ldq, st->cand, seq_off, n_seq, model_len, st->N,
                         st->k_c, sem);
    cuda_ks_rank_loss_pairs(st->loss, st->score, st->y, st->cand, seq_off, n_seq, st->k_c,
                            st->work);
}

// dscore[rows[r]] = 0 at the candidate rows (the rest of dscore is never read).
__global__ static void ks_zero_rows_kernel(float *dscore, const int *rows, int n_rows) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < n_rows && rows[r] >= 0) dscore[rows[r]] = 0.0f;
}

extern "C" void cuda_ks_backward(cuda_ks_state *st, const ks_params *p, const ks_grads *g,
                                 float scale) {
    if (!st->has_loss || st->n_seq == 0) return;
    if (!st->old) {
        ks_backward_fused(st, p, g, scale);
        return;
    }
    int n_rows = st->n_seq * st->k_c;
    cuda_ks_candidate_rows(st->rows, st->cand, st->seq_off, st->n_seq, st->k_c);
    ks_zero_rows_kernel<<<cu_blocks(n_rows, 256), 256, 0, cu_stream()>>>(st->dscore, st->rows, n_rows);
    CUDA_LAUNCHED();
    if (st->bf16) {
        cuda_ks_rank_loss_backward_bf16(st->dscore, st->score, st->y, st->cand, st->seq_off, st->n_seq, st->k_c,
                                        scale);
        cuda_ks_mlp_backward_bf16(g, p, st->T, st->h1, st->h2, st->dscore, st->rows, n_rows, st->N, st->work);
        return;
    }
    cuda_ks_rank_loss_backward(st->dscore, st->score, st->y, st->cand, st->seq_off, st->n_seq,
                               st->k_c, scale);
    cuda_ks_mlp_backward(g, p, st->T, st->h1, st->h2, st->dscore, st->rows, n_rows, st->N,
                         st->work);
}
