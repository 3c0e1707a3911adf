// cuda/sparse/lsh.cu: the LSH buckets of the sparse branch on the GPU (the
// CUDA twin of src/sparse/lsh.c): per-sequence statistics of Q or K, the
// projections on the hash matrix, and the bucket of every position.
//
// LSH exactness: the CPU (src/sparse/lsh.c) computes the statistics and the
// projections in double, in a fixed order, without fused multiply-adds (plain
// x86-64). nvcc would contract a*b+c into an FMA, so every double operation
// here is an explicit round-to-nearest intrinsic (__dadd_rn, __dmul_rn, ...)
// in the CPU's order: given the same KQ, the projections are the CPU's bit for
// bit, hence the buckets.
#include <math.h>

#include "cuda/sparse/internal.cuh"
#include "cuda/sparse/rng.cuh"
#include "src/core/scalar.h"

#define HAS(m, bit) (((m) & (bit)) != 0)


// Reference statistics, one thread per (sequence, feature): stat[s, 0:N] = mu,
// stat[s, N:2N] = 1 / max(nu, 1e-12), with n_pad = L - n pads holding 0.
__global__ static void lsh_stats_reference(double *stat, const float *x, int ldx, const int *seq_off,
                                           int n_seq, int N, int L) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_seq * N) return;
    int s = i / N, f = i % N, o = seq_off[s], n = seq_off[s + 1] - o;
    double mu = 0;
    for (int t = 0; t < n; t++) mu = __dadd_rn(mu, (double)x[(size_t)(o + t) * ldx + f]);
    mu = __ddiv_rn(mu, (double)L);
    double v = __dmul_rn(__dmul_rn((double)(L - n), mu), mu);
    for (int t = 0; t < n; t++) {
        double d = __dsub_rn((double)x[(size_t)(o + t) * ldx + f], mu);
        v = __dadd_rn(v, __dmul_rn(d, d));
    }
    stat[(size_t)s * 2 * N + f] = mu;
    stat[(size_t)s * 2 * N + N + f] = __ddiv_rn(1.0, fmax(__dsqrt_rn(v), 1e-12));
}

// bf16-pure reference statistics (src/sparse/lsh.c hash_seq_reference_bf16,
// the same double sums in the same order): stat[s, 0:N] = mu = R(sum x ·
// fl(1/L)), stat[s, N:2N] = den = R(max(R(sqrt(sum c^2 + n_pad mu^2)), 1e-12)).
__global__ static void lsh_stats_reference_bf16(double *stat, const float *x, int ldx, const int *seq_off,
                                                int n_seq, int N, int L) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_seq * N) return;
    int s = i / N, f = i % N, o = seq_off[s], n = seq_off[s + 1] - o;
    double sum = 0;
    for (int t = 0; t < n; t++) sum = __dadd_rn(sum, (double)x[(size_t)(o + t) * ldx + f]);
    float m = hax_bf16_round((float)sum * (1.0f / (float)L));
    double v = __dmul_rn(__dmul_rn((double)(L - n), (double)m), (double)m);  // the pads: c = -mu
    for (int t = 0; t < n; t++) {
        float c = hax_bf16_round(x[(size_t)(o + t) * ldx + f] - m);
        v = __dadd_rn(v, __dmul_rn((double)c, (double)c));
    }
    stat[(size_t)s * 2 * N + f] = m;
    stat[(size_t)s * 2 * N + N + f] = hax_bf16_round(fmaxf(hax_bf16_round(sqrtf((float)v)), 1e-12f));
}

// Causal statistics: stat[g, f] = sum_{p <= t} x_pf within the sequence.
__global__ static void lsh_stats_causal(double *stat, const float *x, int ldx, const int *seq_off,
                                        int n_seq, int N) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_seq * N) return;
    int s = i / N, f = i % N;
    double sum = 0;
    for (int g = seq_off[s]; g < seq_off[s + 1]; g++) {
        sum = __dadd_rn(sum, (double)x[(size_t)g * ldx + f]);
        stat[(size_t)g * N + f] = sum;
    }
}

// The centred, normalised feature f of row g (reference: per-sequence mu and
// 1/nu; causal: prefix mean, times 1/||.|| given in inv).
__device__ __forceinline__ double lsh_centred(const float *x, int ldx, const double *stat, int N,
                                              int ref, int s, int g, int t, int f) {
    double v = (double)x[(size_t)g * ldx + f];
    if (ref) {
        const double *st = stat + (size_t)s * 2 * N;
        return __dmul_rn(__dsub_rn(v, st[f]), st[N + f]);
    }
    return __dsub_rn(v, __ddiv_rn(stat[(size_t)g * N + f], (double)(t + 1)));
}

// One thread per row: projection onto H [N, h], then the bucket (or the
// forced one). bucket = -1 rows never reach here.
__global__ static void lsh_project_kernel(int32_t *bucket, float *proj_out, const float *x, int ldx,
                                          const double *stat, const float *H, int h, int N,
                                          int argmax, int ref, int bf16, const int *seq_off, int n_seq,
                                          int n_tok, const int32_t *force) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_tok) return;
    int s = cu_seq_of(seq_off, n_seq, g), t = g - seq_off[s];
    double proj[MAX_HASH];
    for (int i = 0; i < h; i++) proj[i] = 0;
    if (ref && bf16) {  // x~ = R(R(x - mu) / den), proj = R(x~ . H) (the CPU's order)
        const double *st = stat + (size_t)s * 2 * N;
        for (int f = 0; f < N; f++) {
            float c = hax_bf16_round(x[(size_t)g * ldx + f] - (float)st[f]);
            double xt = hax_bf16_round(c / (float)st[N + f]);
            const float *hrow = H + (size_t)f * h;
            for (int i = 0; i < h; i++) proj[i] = __dadd_rn(proj[i], __dmul_rn(xt, (double)hrow[i]));
        }
        for (int i = 0; i < h; i++) proj[i] = hax_bf16_round((float)proj[i]);
    }
    double inv = 1.0;
    if (!ref) {  // causal: the vector's own norm
        double nrm = 0;
        for (int f = 0; f < N; f++) {
            double c = lsh_centred(x, ldx, stat, N, 0, s, g, t, f);
            nrm = __dadd_rn(nrm, __dmul_rn(c, c));
        }
        inv = __ddiv_rn(1.0, fmax(__dsqrt_rn(nrm), 1e-12));
    }
    for (int f = 0; f < N && !(ref && bf16); f++) {
        double c = lsh_centred(x, ldx, stat, N, ref, s, g, t, f);
        if (!ref) c = __dmul_rn(c, inv);
        const float *hrow = H + (size_t)f * h;
        for (int i = 0; i < h; i++) proj[i] = __dadd_rn(proj[i], __dmul_rn(c, (double)hrow[i]));
    }
    int32_t code = 0;
    if (argmax) {
        for (int i = 1; i < h; i++)
            if (proj[i] > proj[code]) code = i;
    } else {
        for (int i = 0; i < h; i++)
            if (proj[i] > 0) code |= (int32_t)1 << i;
    }
    for (int i = 0; i < h; i++) proj_out[(size_t)g * h + i] = (float)proj[i];
    bucket[g] = force ? force[g] : code;
}

// Buckets of the queries (which = 1: Q = KQ[:, N:]) or keys (which = 0).
void cu_sp_lsh_hash(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok, int L,
                     const float *hash, int which) {
    int N = st->N, ref = st->sem == SEMANTICS_REFERENCE;
    const float *x = st->KQ + (which ? N : 0);
    cudaStream_t sm = cu_stream();
    if (ref && st->bf16) lsh_stats_reference_bf16<<<cu_blocks((long)n_seq * N, 128), 128, 0, sm>>>(
        st->lsh_stat, x, 2 * N, seq_off, n_seq, N, L);
    else if (ref) lsh_stats_reference<<<cu_blocks((long)n_seq * N, 128), 128, 0, sm>>>(
        st->lsh_stat, x, 2 * N, seq_off, n_seq, N, L);
    else lsh_stats_causal<<<cu_blocks((long)n_seq * N, 128), 128, 0, sm>>>(
        st->lsh_stat, x, 2 * N, seq_off, n_seq, N);
    CUDA_LAUNCHED();
    lsh_project_kernel<<<cu_blocks(n_tok, 128), 128, 0, sm>>>(
        which ? st->q_bucket : st->k_bucket, which ? st->hq_proj : st->hk_proj, x, 2 * N,
        st->lsh_stat, hash, st->h, N, HAS(st->mask, SPARSE_ARGMAX_LSH), ref, st->bf16, seq_off, n_seq, n_tok,
        which ? st->force_q_bucket : st->force_k_bucket);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- keys by bucket

#define LSH_SORT_THREADS 256
#define LSH_SORT_TILE 2048  // packed keys staged in shared memory at a time

// The CPU's packing (src/sparse/masks.c): bucket in the high word, position low.
__device__ __forceinline__ int64_t lsh_pack(int32_t b, int j) {
    return (int64_t)((uint64_t)(int64_t)b << 32) | j;
}

// One block per sequence: srt[o + r] = the key of rank r in (bucket,
// position) order. A rank sort (the packed values are distinct): each
// thread counts, for its keys, the smaller ones, read from shared tiles.
__global__ static void lsh_sort_kernel(int64_t *srt, const int32_t *k_bucket, const int *seq_off) {
    __shared__ int64_t tile[LSH_SORT_TILE];
    int o = seq_off[blockIdx.x], n = seq_off[blockIdx.x + 1] - o, tid = threadIdx.x;
    for (int base = 0; base < n; base += LSH_SORT_THREADS) {  // the same trip count for every thread
        int j = base + tid, r = 0;
        int64_t mine = j < n ? lsh_pack(k_bucket[o + j], j) : 0;
        for (int tb = 0; tb < n; tb += LSH_SORT_TILE) {
            int len = min(LSH_SORT_TILE, n - tb);
            __syncthreads();
            for (int i = tid; i < len; i += LSH_SORT_THREADS) tile[i] = lsh_pack(k_bucket[o + tb + i], tb + i);
            __syncthreads();
            if (j < n)
                for (int i = 0; i < len; i++) r += tile[i] < mine;
        }
        if (j < n) srt[o + r] = mine;
    }
}

void cu_sp_lsh_sort(cu_sparse_state *st, const int *seq_off, int n_seq) {
    if (n_seq <= 0) return;
    lsh_sort_kernel<<<n_seq, LSH_SORT_THREADS, 0, cu_stream()>>>(st->lsh_sorted, st->k_bucket, seq_off);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- the hash matrix

// One thread per entry: entry i of the stream (seed, domain, a, b, 0) is
// rng_normal_portable's i-th value, made of Philox block i (four words: two
// uniforms), through the host's own Box-Muller (src/core/scalar.h).
__global__ static void lsh_draw_kernel(float *H, int n, uint64_t seed, uint32_t domain, uint32_t a,
                                       uint32_t b, int bf16) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    cu_rng r;
    cu_rng_init(&r, seed, domain, a, b, 0);
    r.ctr[0] = (uint32_t)i;
    double u1 = __dsub_rn(1.0, cu_rng_uniform(&r));
    double u2 = cu_rng_uniform(&r);
    float h = (float)hax_box_muller(u1, u2);
    H[i] = bf16 ? hax_bf16_round(h) : h;
}

extern "C" void cuda_lsh_draw_hash(float *H, int n, uint64_t seed, uint32_t domain, uint32_t a, uint32_t b,
                                   int bf16) {
    if (n <= 0) return;
    lsh_draw_kernel<<<cu_blocks(n, 128), 128, 0, cu_stream()>>>(H, n, seed, domain, a, b, bf16);
    CUDA_LAUNCHED();
}
