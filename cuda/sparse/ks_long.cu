// cuda/sparse/ks_long.cu: key selection's sequence-walking steps for long
// sequences (HAX_SPARSE_LONG, issue 14): the features and the cumulative
// top-k with parallelism that grows with the sequence length, giving the
// same bits as the kernels of cuda/sparse/ks.cu. See cuda/sparse/ks.h.
//
// The kernels of ks.cu take one block per sequence (features: 8 warps, each
// walking an eighth of the positions three times; top-k: per key a scan of
// the sequence, per 64-row chunk a scan of all earlier positions), so a
// batch of 4 sequences of 65,536 positions runs on 4 blocks, and the top-k's
// work grows as n^2 / 64 per sequence.
//
// Features: the same sums in the same order (the ks.cu chunks: KS_WARPS
// contiguous chunks per sequence, each chunk's running sum started from the
// in-order sum of the earlier chunks' totals), but each pass is its own
// kernel: the chunk totals, then the chunk chains (a warp per (sequence,
// chunk), loads issued 32 rows ahead, the running sums C_t kept in double in
// a scratch array), then every row written on its own (a warp per row). The
// chains are the only serial part (n / 8 dependent adds); the rest runs
// over all positions.
//
// Top-k: key j is among the k best of positions 0..t exactly when fewer
// than k keys i <= t are better (ks_worse, a total order). For a chunk of 64
// positions starting at t0, let P be the k best of positions 0..t0-1: a key
// before t0 outside P has k better keys before t0 and is never selected
// again; for a key in P or in the chunk, the count of better keys i <= t
// equals its count among P and the chunk's keys <= t whenever either is
// below k (a key before t0 better than a member of P is in P). So the chunk's
// rows follow from P and the chunk alone: each candidate's exit (the row where
// its count reaches k) by a scan of the chunk's 64 scores, then each row the
// candidates j <= t that have not exited, in index order. P of every chunk
// comes from merges of best-first k-sets (the k best of A u B: each element's
// place is its own rank plus a binary search in the other set), along
// chunks and groups of G = ceil(sqrt(chunks)) chunks: each group's k best
// (G merges, groups in parallel), the set before each group (a serial walk
// over the groups), the set before each chunk (G merges from its group's
// start, groups in parallel), then the rows (a block per chunk). Serial
// steps: about 3 sqrt(n / 64) merges of k-sets instead of n or n^2 / 64 work;
// total work about n (k + 64) per sequence. The selections are the unique k
// best, so they equal ks.cu's and the CPU heap's exactly, ties included.
#include <math.h>

#include "cuda/core/common.cuh"
#include "cuda/sparse/ks.h"
#include "cuda/sparse/ks_common.cuh"
#include "cuda/sparse/long.cuh"

#define KL_CHUNK 64           // top-k: positions per chunk
#define KL_ROWS_THREADS 256   // top-k rows: threads per block (a warp per row)
#define KL_WRITE_WARPS 8      // features: rows (a warp each) per block of the write kernels

// ---------------------------------------------------------------- features, fp32 (both semantics)

// Rows [t0, t1) of chunk w of a sequence of n positions (ks.cu's chunks).
__device__ __forceinline__ void kl_chunk(int n, int w, int *t0, int *t1) {
    int len = (n + KS_WARPS - 1) / KS_WARPS;
    *t0 = min(n, w * len);
    *t1 = min(n, *t0 + len);
}

// Block (s, w), one warp: part[s, w, :] = the running sum of chunk w's Q
// rows from 0 (ks.cu's KS_SUM pass). Reference semantics with a sequence
// longer than model_len: the error flag, nothing written (as ks.cu).
template <int R>
__global__ static void kl_part_kernel(double *part, const float *Q, int ldq, const int *seq_off, int model_len, int N,
                                      int causal, int *err) {
    int s = blockIdx.x, w = blockIdx.y, lane = threadIdx.x, o = seq_off[s], n = seq_off[s + 1] - o, t0, t1;
    if (!causal && model_len - n < 0) {
        if (w == 0 && lane == 0) atomicOr(err, CU_ERR_KS);
        return;
    }
    kl_chunk(n, w, &t0, &t1);
    double c[R];
#pragma unroll
    for (int u = 0; u < R; u++) c[u] = 0.0;
    cu_long_walk<R>(Q + (size_t)o * ldq, ldq, N, t0, t1, lane, [&](int, const float(&v)[R]) {
#pragma unroll
        for (int u = 0; u < R; u++) c[u] = __dadd_rn(c[u], (double)v[u]);
    });
#pragma unroll
    for (int u = 0; u < R; u++)
        if (lane + 32 * u < N) part[((size_t)s * KS_WARPS + w) * N + lane + 32 * u] = c[u];
}

// Block (s, w), one warp: chunk w's running sums C_t from its start (the
// in-order sum of the earlier chunks' totals, as ks.cu) into cbuf [n_tok, N]
// (double), and in reference semantics its partial column norm w2p[s, w, :]
// = sum_t C_t^2 (fused multiply-adds, as ks.cu's KS_SUM_W2 pass).
template <int R>
__global__ static void kl_chain_kernel(double *cbuf, double *w2p, const double *part, const float *Q, int ldq,
                                       const int *seq_off, int model_len, int N, int causal) {
    int s = blockIdx.x, w = blockIdx.y, lane = threadIdx.x, o = seq_off[s], n = seq_off[s + 1] - o, t0, t1;
    if (!causal && model_len - n < 0) return;
    kl_chunk(n, w, &t0, &t1);
    double c[R], w2[R];
#pragma unroll
    for (int u = 0; u < R; u++) {
        int i = lane + 32 * u;
        double total = 0.0;
        c[u] = 0.0, w2[u] = 0.0;
        if (i < N)
            for (int v = 0; v < KS_WARPS; v++) {
                if (v == w) c[u] = total;
                total = __dadd_rn(total, part[((size_t)s * KS_WARPS + v) * N + i]);
            }
    }
    cu_long_walk<R>(Q + (size_t)o * ldq, ldq, N, t0, t1, lane, [&](int t, const float(&v)[R]) {
#pragma unroll
        for (int u = 0; u < R; u++) {
            c[u] = __dadd_rn(c[u], (double)v[u]);
            if (!causal) w2[u] = __fma_rn(c[u], c[u], w2[u]);
            if (lane + 32 * u < N) cbuf[(size_t)(o + t) * N + lane + 32 * u] = c[u];
        }
    });
    if (!causal)
#pragma unroll
        for (int u = 0; u < R; u++)
            if (lane + 32 * u < N) w2p[((size_t)s * KS_WARPS + w) * N + lane + 32 * u] = w2[u];
}

// Reference semantics, a thread per (s, feature i): winv[s, i] = 1 /
// max(||C||, 1e-12), the column norm over all model_len positions (the pads
// hold the total C_{n-1}), its sums as ks.cu's.
__global__ static void kl_norm_kernel(double *winv, const double *part, const double *w2p, const int *seq_off,
                                      int n_seq, int model_len, int N) {
    int id = blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= n_seq * N) return;
    int s = id / N, i = id % N, n_pad = model_len - (seq_off[s + 1] - seq_off[s]);
    if (n_pad < 0) return;
    double total = 0.0, sum = 0.0;
    for (int w = 0; w < KS_WARPS; w++) total = __dadd_rn(total, part[((size_t)s * KS_WARPS + w) * N + i]);
    for (int w = 0; w < KS_WARPS; w++) sum = __dadd_rn(sum, w2p[((size_t)s * KS_WARPS + w) * N + i]);
    winv[(size_t)s * N + i] = 1.0 / fmax(sqrt(__fma_rn(__dmul_rn((double)n_pad, total), total, sum)), 1e-12);
}

// A warp per row g: T[g, :N] = K[g], T[g, N:] = C_g normalised: reference by
// winv of its sequence, causal by its own norm (per lane the fused squares
// of its columns in order, then cu_warp_sum's tree: ks.cu's ks_causal_group).
template <int R>
__global__ static void kl_write_kernel(float *T, const float *K, int ldk, const double *cbuf, const double *winv,
                                       const int *seq_off, int n_seq, int n_tok, int model_len, int N, int causal) {
    int lane = threadIdx.x % 32, D = 2 * N;
    for (int g = blockIdx.x * KL_WRITE_WARPS + threadIdx.x / 32; g < n_tok; g += gridDim.x * KL_WRITE_WARPS) {
        int s = cu_seq_of(seq_off, n_seq, g);
        if (!causal && model_len - (seq_off[s + 1] - seq_off[s]) < 0) continue;  // warp-uniform
        float *tr = T + (size_t)g * D;
        double c[R], nrm2 = 0.0;
#pragma unroll
        for (int u = 0; u < R; u++) {
            int i = lane + 32 * u;
            c[u] = i < N ? cbuf[(size_t)g * N + i] : 0.0;
            if (i < N) tr[i] = K[(size_t)g * ldk + i], nrm2 = __fma_rn(c[u], c[u], nrm2);
        }
        if (causal) {
            for (int off = 16; off > 0; off >>= 1) nrm2 = __dadd_rn(nrm2, __shfl_xor_sync(0xffffffffu, nrm2, off));
            double inv = 1.0 / fmax(sqrt(nrm2), 1e-12);
#pragma unroll
            for (int u = 0; u < R; u++)
                if (lane + 32 * u < N) tr[N + lane + 32 * u] = (float)__dmul_rn(c[u], inv);
        } else {
#pragma unroll
            for (int u = 0; u < R; u++)
                if (lane + 32 * u < N)
                    tr[N + lane + 32 * u] = (float)__dmul_rn(c[u], winv[(size_t)s * N + lane + 32 * u]);
        }
    }
}

// ---------------------------------------------------------------- features, bf16-pure reference

// Block (s, y), one warp, lane = feature i = 32y + lane: ks.cu's
// ks_features_bf16_kernel (the CPU's features_seq_bf16) with its loads
// issued ahead: the bf16 (or fp32) running sum over the positions in order,
// C_t = R(acc) kept in T's TQ half, the column norm's double sum in order,
// then den[s, i] = R(max(R(sqrt(sum + n_pad C_{n-1}^2)), 1e-12)). This chain
// is serial by definition (each step rounds); the division is kl_div_kernel.
__global__ static void kl_bf16_chain_kernel(float *T, float *den, const float *Q, int ldq, const int *seq_off,
                                            int model_len, int N, int bf16_acc, int *err) {
    int s = blockIdx.x, lane = threadIdx.x, i = 32 * blockIdx.y + lane, D = 2 * N;
    int o = seq_off[s], n = seq_off[s + 1] - o, n_pad = model_len - n;
    if (n_pad < 0) {
        if (blockIdx.y == 0 && lane == 0) atomicOr(err, CU_ERR_KS);
        return;
    }
    float acc = 0.0f, c = 0.0f;
    double s2 = 0.0;
    cu_long_walk<1>(Q + (size_t)o * ldq + 32 * blockIdx.y, ldq, N - 32 * blockIdx.y, 0, n, lane,
                    [&](int t, const float(&v)[1]) {
                        acc = bf16_acc ? hax_bf16_round(acc + v[0]) : acc + v[0];
                        c = hax_bf16_round(acc);
                        if (i < N) T[(size_t)(o + t) * D + N + i] = c;
                        s2 = __dadd_rn(s2, __dmul_rn((double)c, (double)c));
                    });
    if (i >= N) return;
    double v = __dadd_rn(s2, __dmul_rn(__dmul_rn((double)n_pad, (double)c), (double)c));  // pads hold C_{n-1}
    den[(size_t)s * N + i] = hax_bf16_round(fmaxf(hax_bf16_round(sqrtf((float)v)), 1e-12f));
}

// A warp per row g: T[g, :N] = K[g], T[g, N:] = R(C_g / den) (ks.cu's second
// loop, each element on its own).
__global__ static void kl_div_kernel(float *T, const float *K, int ldk, const float *den, const int *seq_off,
                                     int n_seq, int n_tok, int model_len, int N) {
    int lane = threadIdx.x % 32, D = 2 * N;
    for (int g = blockIdx.x * KL_WRITE_WARPS + threadIdx.x / 32; g < n_tok; g += gridDim.x * KL_WRITE_WARPS) {
        int s = cu_seq_of(seq_off, n_seq, g);
        if (model_len - (seq_off[s + 1] - seq_off[s]) < 0) continue;
        float *tr = T + (size_t)g * D;
        for (int i = lane; i < N; i += 32) {
            tr[i] = K[(size_t)g * ldk + i];
            tr[N + i] = hax_bf16_round(tr[N + i] / den[(size_t)s * N + i]);
        }
    }
}

extern "C" size_t cuda_ks_features_long_doubles(int max_seq, int N) {
    return (2 * KS_WARPS + 1) * (size_t)(max_seq > 0 ? max_seq : 1) * N;
}

template <int R>
static void kl_features_fp32(float *T, double *cbuf, double *work, const float *K, int ldk, const float *Q, int ldq,
                             const int *seq_off, int n_seq, int n_tok, int model_len, int N, int causal) {
    cudaStream_t sm = cu_stream();
    double *part = work, *w2p = part + (size_t)KS_WARPS * n_seq * N, *winv = w2p + (size_t)KS_WARPS * n_seq * N;
    dim3 chunks(n_seq, KS_WARPS);
    kl_part_kernel<R><<<chunks, 32, 0, sm>>>(part, Q, ldq, seq_off, model_len, N, causal, cu_error_flag());
    CUDA_LAUNCHED();
    kl_chain_kernel<R><<<chunks, 32, 0, sm>>>(cbuf, w2p, part, Q, ldq, seq_off, model_len, N, causal);
    CUDA_LAUNCHED();
    if (!causal) {
        kl_norm_kernel<<<cu_blocks((long)n_seq * N, 128), 128, 0, sm>>>(winv, part, w2p, seq_off, n_seq, model_len, N);
        CUDA_LAUNCHED();
    }
    kl_write_kernel<R><<<cu_blocks(n_tok, KL_WRITE_WARPS), 32 * KL_WRITE_WARPS, 0, sm>>>(
        T, K, ldk, cbuf, winv, seq_off, n_seq, n_tok, model_len, N, causal);
    CUDA_LAUNCHED();
}

extern "C" void cuda_ks_features_long(float *T, double *cbuf, double *work, const float *K, int ldk, const float *Q,
                                      int ldq, const int *seq_off, int n_seq, int n_tok, int model_len, int N,
                                      hax_semantics sem, int bf16_ref, int bf16_acc) {
    if (N < 1 || N > KS_MAX_N) hax_die("cu_sparse_ks: features: N: expected 1..%d, found %d", KS_MAX_N, N);
    if (n_seq <= 0 || n_tok <= 0) return;
    cudaStream_t sm = cu_stream();
    if (bf16_ref) {  // bf16-pure, reference semantics: ks.cu's cuda_ks_features_bf16
        float *den = (float *)work;
        kl_bf16_chain_kernel<<<dim3(n_seq, (N + 31) / 32), 32, 0, sm>>>(T, den, Q, ldq, seq_off, model_len, N,
                                                                        bf16_acc, cu_error_flag());
        CUDA_LAUNCHED();
        kl_div_kernel<<<cu_blocks(n_tok, KL_WRITE_WARPS), 32 * KL_WRITE_WARPS, 0, sm>>>(T, K, ldk, den, seq_off, n_seq,
                                                                                      n_tok, model_len, N);
        CUDA_LAUNCHED();
        return;
    }
    int causal = sem == SEMANTICS_CAUSAL, R = (N + 31) / 32;
    if (R == 1) kl_features_fp32<1>(T, cbuf, work, K, ldk, Q, ldq, seq_off, n_seq, n_tok, model_len, N, causal);
    else if (R == 2) kl_features_fp32<2>(T, cbuf, work, K, ldk, Q, ldq, seq_off, n_seq, n_tok, model_len, N, causal);
    else if (R == 3) kl_features_fp32<3>(T, cbuf, work, K, ldk, Q, ldq, seq_off, n_seq, n_tok, model_len, N, causal);
    else kl_features_fp32<4>(T, cbuf, work, K, ldk, Q, ldq, seq_off, n_seq, n_tok, model_len, N, causal);
}

// ---------------------------------------------------------------- cumulative top-k

// Chunks per group of a sequence of nch chunks: the least g with g^2 >= nch.
__device__ __forceinline__ int kl_group(int nch) {
    int g = max(1, (int)sqrtf((float)nch));
    while (g * g < nch) g++;
    while (g > 1 && (g - 1) * (g - 1) >= nch) g--;
    return g;
}

// A best-first k-set in shared memory: indices and their scores.
typedef struct {
    int *i;
    float *s;
} kl_set;

// The score of position j of the sequence at o, -inf for j outside [0, lim)
// (only NaN scores, which ks_worse does not order, can put a bad index into
// a set; nothing is then read or written out of bounds).
__device__ __forceinline__ float kl_score(const float *score, int o, int j, int lim) {
    return j >= 0 && j < lim ? score[o + j] : -INFINITY;
}

// Loads m indices of a global set (best first) with their scores (lanes).
__device__ static void kl_load(kl_set d, const int *src, int m, const float *score, int o, int lim, int lane) {
    for (int x = lane; x < m; x += 32) {
        int j = src[x];
        bool ok = j >= 0 && j < lim;
        d.i[x] = ok ? j : -1, d.s[x] = ok ? score[o + j] : -INFINITY;
    }
    __syncwarp();
}

// The k best of A (a entries) and B (b entries), best first, into O (one
// warp): an element's place is its rank in its own set plus the count of
// better elements of the other set. Returns min(k, a + b).
__device__ static int kl_merge(kl_set O, kl_set A, int a, kl_set B, int b, int k, int lane) {
    for (int x = lane; x < a; x += 32) {
        int p = x + ks_count_better(B.s, B.i, b, A.s[x], A.i[x]);
        if (p < k) O.i[p] = A.i[x], O.s[p] = A.s[x];
    }
    for (int x = lane; x < b; x += 32) {
        int p = x + ks_count_better(A.s, A.i, a, B.s[x], B.i[x]);
        if (p < k) O.i[p] = B.i[x], O.s[p] = B.s[x];
    }
    __syncwarp();
    return min(k, a + b);
}

// The cn <= 64 keys t0 .. t0 + cn - 1 best first into ck (one warp, two per
// lane, each ranked against all of them).
__device__ static void kl_sort_chunk(kl_set ck, const float *score, int o, int t0, int cn, int lane) {
    float sc[2];
    int rc[2] = {0, 0};
#pragma unroll
    for (int u = 0; u < 2; u++) sc[u] = lane + 32 * u < cn ? score[o + t0 + lane + 32 * u] : 0.0f;
    for (int j = 0; j < cn; j++) {
        float b0 = __shfl_sync(0xffffffffu, sc[0], j & 31), b1 = __shfl_sync(0xffffffffu, sc[1], j & 31);
        float bs = j < 32 ? b0 : b1;
#pragma unroll
        for (int u = 0; u < 2; u++) rc[u] += ks_worse(sc[u], t0 + lane + 32 * u, bs, t0 + j);
    }
#pragma unroll
    for (int u = 0; u < 2; u++)
        if (lane + 32 * u < cn) ck.i[rc[u]] = t0 + lane + 32 * u, ck.s[rc[u]] = sc[u];
    __syncwarp();
}

// The shape of sequence s: start o, length n, chunks, chunks per group,
// groups, first workspace slot.
typedef struct {
    int o, n, nch, G, ng, slot;
} kl_seq;

__device__ __forceinline__ kl_seq kl_seq_of(const int *seq_off, int s) {
    kl_seq q;
    q.o = seq_off[s], q.n = seq_off[s + 1] - q.o;
    q.nch = (q.n + KL_CHUNK - 1) / KL_CHUNK, q.G = kl_group(q.nch), q.ng = (q.nch + q.G - 1) / q.G;
    q.slot = cu_long_slot(q.o, s, KL_CHUNK);
    return q;
}

enum { KL_REDUCE, KL_SCAN };

// Block (s, y), one warp, groups y, y + gridDim.y, ... of sequence s, its
// chunks merged in order into a running k-set. KL_REDUCE: from the empty
// set, the group's k best into grp's slot. KL_SCAN: from the set before the
// group (grp's slot, kl_group_scan_kernel), the set before each chunk into
// pre's slot of the chunk.
__global__ static void kl_groups_kernel(int *grp, int *pre, const float *score, const int *seq_off, int k, int mode) {
    extern __shared__ int kl_sh[];  // cur, nxt [k] (indices, scores), ck [KL_CHUNK]
    kl_set cur = {kl_sh, (float *)(kl_sh + k)}, nxt = {kl_sh + 2 * k, (float *)(kl_sh + 3 * k)};
    kl_set ck = {kl_sh + 4 * k, (float *)(kl_sh + 4 * k + KL_CHUNK)};
    kl_seq q = kl_seq_of(seq_off, blockIdx.x);
    int lane = threadIdx.x;
    for (int g = blockIdx.y; g < q.ng; g += gridDim.y) {
        int c0 = g * q.G, c1 = min(q.nch, c0 + q.G), m = 0;
        if (mode == KL_SCAN) {
            m = min(k, c0 * KL_CHUNK);
            kl_load(cur, grp + (size_t)(q.slot + g) * k, m, score, q.o, c0 * KL_CHUNK, lane);
        }
        for (int c = c0; c < c1; c++) {
            if (mode == KL_SCAN) {
                int *dst = pre + (size_t)(q.slot + c) * k;
                for (int x = lane; x < m; x += 32) dst[x] = cur.i[x];
                if (c + 1 == c1) break;  // the set after the group's last chunk is not needed
            }
            int t0 = c * KL_CHUNK, cn = min(KL_CHUNK, q.n - t0);
            kl_sort_chunk(ck, score, q.o, t0, cn, lane);
            m = kl_merge(nxt, cur, m, ck, cn, k, lane);
            kl_set tmp = cur;
            cur = nxt, nxt = tmp;
        }
        if (mode == KL_REDUCE) {
            int *dst = grp + (size_t)(q.slot + g) * k;
            for (int x = lane; x < m; x += 32) dst[x] = cur.i[x];
        }
        __syncwarp();
    }
}

// Block s, one warp: the groups' k-sets of sequence s (kl_groups_kernel's
// KL_REDUCE) walked in order, each slot rewritten with the set before its
// group (the k best of all earlier positions).
__global__ static void kl_group_scan_kernel(int *grp, const float *score, const int *seq_off, int k) {
    extern __shared__ int kl_sh[];  // cur, nxt, gb [k] (indices, scores)
    kl_set cur = {kl_sh, (float *)(kl_sh + k)}, nxt = {kl_sh + 2 * k, (float *)(kl_sh + 3 * k)};
    kl_set gb = {kl_sh + 4 * k, (float *)(kl_sh + 5 * k)};
    kl_seq q = kl_seq_of(seq_off, blockIdx.x);
    int lane = threadIdx.x, m = 0;
    for (int g = 0; g < q.ng; g++) {
        int *slot = grp + (size_t)(q.slot + g) * k, start = g * q.G * KL_CHUNK;
        int b = min(k, min(q.G * KL_CHUNK, q.n - start));
        kl_load(gb, slot, b, score, q.o, q.n, lane);
        for (int x = lane; x < m; x += 32) slot[x] = cur.i[x];
        if (g + 1 == q.ng) break;
        m = kl_merge(nxt, cur, m, gb, b, k, lane);
        kl_set tmp = cur;
        cur = nxt, nxt = tmp;
    }
}

// Block (s, y): chunks y, y + gridDim.y, ... of sequence s. Candidates: P,
// the k best before the chunk (pre's slot, best first), and the chunk's own
// keys. A candidate's count of better keys starts at its rank in P (a member
// of P) or its count of better members of P (a chunk key), and grows with
// each better chunk key; its exit e is the row where the count reaches k (t1
// if it does not within the chunk; t0 for a chunk key with k better members
// of P). Row t: the candidates j <= t with e > t, in index order (P put in
// index order by a rank sort; the chunk's keys come after it), written by a
// warp per row as ks.cu's ks_topk_rows_kernel, -1 after the min(k, t + 1)
// keys.
__global__ static void kl_rows_kernel(int *sel, const int *pre, const float *score, const int *seq_off, int k) {
    extern __shared__ int kl_sh[];  // p [k] (indices, scores), cand [k + C], cexit [k + C], chunk scores [C]
    int cap = k + KL_CHUNK;
    kl_set p = {kl_sh, (float *)(kl_sh + k)};
    int *cand = kl_sh + 2 * k, *cexit = cand + cap;
    float *cs = (float *)(cexit + cap);
    kl_seq q = kl_seq_of(seq_off, blockIdx.x);
    int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, nw = KL_ROWS_THREADS / 32;
    for (int c = blockIdx.y; c < q.nch; c += gridDim.y) {
        int t0 = c * KL_CHUNK, cn = min(KL_CHUNK, q.n - t0), t1 = t0 + cn, m = min(k, t0), nc = m + cn;
        const int *src = pre + (size_t)(q.slot + c) * k;
        for (int x = tid; x < m; x += KL_ROWS_THREADS) {
            int j = src[x];
            p.i[x] = j >= 0 && j < t0 ? j : -1, p.s[x] = kl_score(score, q.o, j, t0);
        }
        for (int x = tid; x < cn; x += KL_ROWS_THREADS) cs[x] = score[q.o + t0 + x];
        for (int x = tid; x < nc; x += KL_ROWS_THREADS) cand[x] = -1, cexit[x] = t0;  // (NaN scores: unfilled slots)
        __syncthreads();
        for (int x = tid; x < nc; x += KL_ROWS_THREADS) {
            int j, at, cnt, e = t1;
            float sj;
            if (x < m) {  // a member of P: x better members
                j = p.i[x], sj = p.s[x], cnt = x, at = 0;
                for (int y = 0; y < m; y++) at += p.i[y] < j;
            } else {
                j = t0 + x - m, sj = cs[x - m], at = x;
                cnt = ks_count_better(p.s, p.i, m, sj, j);
            }
            if (cnt >= k) e = t0;
            for (int u = 0; u < cn && e == t1; u++)
                if (ks_worse(sj, j, cs[u], t0 + u) && ++cnt == k) e = t0 + u;
            cand[at] = j, cexit[at] = e;
        }
        __syncthreads();
        for (int t = t0 + warp; t < t1; t += nw) {
            int *row = sel + (size_t)(q.o + t) * k, cnt = 0;
            for (int cb = 0; cb < nc; cb += 32) {
                int i = cb + lane;
                bool in = i < nc && cand[i] >= 0 && cand[i] <= t && cexit[i] > t;
                unsigned ball = __ballot_sync(0xffffffffu, in);
                int at = cnt + __popc(ball & ((1u << lane) - 1u));
                if (in && at < k) row[at] = cand[i];
                cnt += __popc(ball);
            }
            for (int x = min(cnt, k) + lane; x < k; x += 32) row[x] = -1;
        }
        __syncthreads();  // p, cand, cs are rewritten for the next chunk
    }
}

extern "C" size_t cuda_ks_cumtopk_long_ints(int max_tok, int max_seq, int k_c) {
    return 2 * cu_long_slots(max_tok, max_seq, KL_CHUNK) * (size_t)(k_c > 0 ? k_c : 1);
}

extern "C" void cuda_ks_cumtopk_long(int *sel, int *work, const float *score, const int *seq_off, int n_seq, int n_tok,
                                     int len_hint, int k_c) {
    if (k_c < 1 || k_c > KS_LONG_MAX_KC)
        hax_die("cu_sparse_ks: cumtopk (long): k_c: expected 1..%d, found %d", KS_LONG_MAX_KC, k_c);
    if (n_seq <= 0 || n_tok <= 0) return;
    cudaStream_t sm = cu_stream();
    int *grp = work, *pre = grp + cu_long_slots(n_tok, n_seq, KL_CHUNK) * (size_t)k_c;
    // blocks per sequence from the length guess (any number gives the same result)
    int len = len_hint > 0 ? len_hint : 1, nch = (len + KL_CHUNK - 1) / KL_CHUNK, G = 1;
    while (G * G < nch) G++;
    dim3 groups(n_seq, (nch + G - 1) / G), chunks(n_seq, nch < 65535 ? nch : 65535);
    size_t walk = sizeof(int) * (4 * (size_t)k_c + 2 * KL_CHUNK), scan = sizeof(int) * 6 * (size_t)k_c;
    size_t rows = sizeof(int) * (2 * (size_t)k_c + 2 * ((size_t)k_c + KL_CHUNK) + KL_CHUNK);
    kl_groups_kernel<<<groups, 32, walk, sm>>>(grp, pre, score, seq_off, k_c, KL_REDUCE);
    CUDA_LAUNCHED();
    kl_group_scan_kernel<<<n_seq, 32, scan, sm>>>(grp, score, seq_off, k_c);
    CUDA_LAUNCHED();
    kl_groups_kernel<<<groups, 32, walk, sm>>>(grp, pre, score, seq_off, k_c, KL_SCAN);
    CUDA_LAUNCHED();
    kl_rows_kernel<<<chunks, KL_ROWS_THREADS, rows, sm>>>(sel, pre, score, seq_off, k_c);
    CUDA_LAUNCHED();
}
