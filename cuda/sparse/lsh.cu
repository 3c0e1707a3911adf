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
    int32_t code = lsh_code(proj, h, argmax);
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

// ---------------------------------------------------------------- the buckets, a block per sequence
//
// The kernels above run one thread per (sequence, feature) for the
// statistics: 64 sequences x 16 features at the paper size are 1024 threads
// (8 blocks on 132 SMs), each walking ~460 rows of global memory, one
// dependent load after another. Here (HAX_SPARSE_KS=new) one block takes one
// sequence's queries or keys (grid n_seq x 2, one launch for both): its rows
// are staged in shared memory by all threads at once (tiles of rows_x rows
// when the sequence is longer), the statistics' chains run one thread per
// feature over the staged rows, then the projections one thread per (row,
// hash column) and the buckets one thread per row, proj_rows rows at a time.
// Every value is formed by the same operations in the same order as above
// (the same bits): the chains still add the rows in order.

#define LSH_THREADS 256
#define LSH_SMEM_MAX (96 * 1024)  // dynamic shared memory of a block at most (opt-in above 48 KiB)

// The shared-memory plan of lsh_seq_kernel: stat [2N] doubles, then per
// projection tile of proj_rows rows: xt [proj_rows, N], pr [proj_rows, h] and
// rinv [proj_rows] doubles, then the staged rows xs [rows_x, N] floats.
// rows_x (the longest sequence, or what fits) is a multiple of proj_rows, so
// a projection tile never straddles two staged tiles.
typedef struct {
    int proj_rows, rows_x;
    size_t bytes;
} lsh_plan;

static lsh_plan lsh_plan_of(int N, int h, int max_len) {
    lsh_plan p;
    p.proj_rows = 64;
    while (p.proj_rows > 8 && sizeof(double) * p.proj_rows * (N + h + 1) > 32 * 1024) p.proj_rows /= 2;
    size_t fixed = sizeof(double) * (2 * (size_t)N + (size_t)p.proj_rows * (N + h + 1));
    int fit = (int)((LSH_SMEM_MAX - fixed) / (sizeof(float) * N)), whole = max_len > 1 ? max_len : 1;
    whole += (p.proj_rows - whole % p.proj_rows) % p.proj_rows;
    p.rows_x = whole <= fit ? whole : fit - fit % p.proj_rows;
    p.bytes = fixed + sizeof(float) * (size_t)p.rows_x * N;
    return p;
}

// The block's view of its rows: x (rows of the sequence, ld ldx), n rows,
// and the tile of rows [t0, t0 + rows) staged in xs.
typedef struct {
    const float *x;
    int ldx, N, n;
    float *xs;
    int t0, rows, cap;  // staged tile (t0 = -1: none), its row count, capacity in rows
} lsh_rows;

// Stages the tile of rows starting at t0 (all threads; a no-op if it is the
// staged one). Loads go out 8 per thread before any store (latency, not a
// chain of dependent loads).
__device__ static void lsh_stage(lsh_rows *r, int t0) {
    if (r->t0 == t0) return;
    int rows = min(r->cap, r->n - t0), total = rows * r->N;
    __syncthreads();  // the previous tile's readers are done
    for (int base = 0; base < total; base += 8 * LSH_THREADS) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int e = base + u * LSH_THREADS + threadIdx.x;
            v[u] = e < total ? r->x[(size_t)(t0 + e / r->N) * r->ldx + e % r->N] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int e = base + u * LSH_THREADS + threadIdx.x;
            if (e < total) r->xs[e] = v[u];
        }
    }
    r->t0 = t0, r->rows = rows;
    __syncthreads();
}

// Reference statistics of feature f = threadIdx.x < N (the others pass the
// barriers only) into stat[f] = mu, stat[N + f] = 1 / max(nu, 1e-12); bf16:
// mu = R(sum * fl(1/L)), stat[N + f] = den. The operations of
// lsh_stats_reference / lsh_stats_reference_bf16, rows in order.
__device__ static void lsh_seq_stats_reference(lsh_rows *r, double *stat, int L, int bf16) {
    int f = threadIdx.x, N = r->N, n = r->n;
    bool chain = f < N;
    double sum = 0;
    for (int t0 = 0; t0 < n; t0 += r->cap) {
        lsh_stage(r, t0);
        if (chain)
            for (int t = 0; t < r->rows; t++) sum = __dadd_rn(sum, (double)r->xs[t * N + f]);
    }
    double mu = 0, v = 0;
    float m = 0;
    if (bf16) {
        m = hax_bf16_round((float)sum * (1.0f / (float)L));
        v = __dmul_rn(__dmul_rn((double)(L - n), (double)m), (double)m);  // the pads: c = -mu
    } else {
        mu = __ddiv_rn(sum, (double)L);
        v = __dmul_rn(__dmul_rn((double)(L - n), mu), mu);
    }
    for (int t0 = 0; t0 < n; t0 += r->cap) {
        lsh_stage(r, t0);
        if (!chain) continue;
        for (int t = 0; t < r->rows; t++) {
            if (bf16) {
                float c = hax_bf16_round(r->xs[t * N + f] - m);
                v = __dadd_rn(v, __dmul_rn((double)c, (double)c));
            } else {
                double d = __dsub_rn((double)r->xs[t * N + f], mu);
                v = __dadd_rn(v, __dmul_rn(d, d));
            }
        }
    }
    if (chain && bf16) {
        stat[f] = m;
        stat[N + f] = hax_bf16_round(fmaxf(hax_bf16_round(sqrtf((float)v)), 1e-12f));
    } else if (chain) {
        stat[f] = mu;
        stat[N + f] = __ddiv_rn(1.0, fmax(__dsqrt_rn(v), 1e-12));
    }
}

// One projection tile: rows [t0, t0 + rows) of the sequence, all within the
// staged tile; xt [rows, N] already holds their normalised features. The
// projections one thread per (row, column), f in order (as
// lsh_project_kernel), then the buckets one thread per row.
__device__ static void lsh_seq_project(const lsh_rows *r, const double *xt, double *pr, int t0, int rows,
                                       const float *H, int h, int argmax, int bf16, int o, int32_t *bucket,
                                       float *proj_out, const int32_t *force) {
    int N = r->N;
    for (int e = threadIdx.x; e < rows * h; e += LSH_THREADS) {
        int q = e / h, i = e % h;
        double p = lsh_proj(xt + q * N, N, H, h, i);
        if (bf16) p = hax_bf16_round((float)p);
        pr[e] = p;
        proj_out[(size_t)(o + t0 + q) * h + i] = (float)p;
    }
    __syncthreads();
    for (int q = threadIdx.x; q < rows; q += LSH_THREADS) {
        const double *pq = pr + q * h;
        int32_t code = lsh_code(pq, h, argmax);
        int g = o + t0 + q;
        bucket[g] = force ? force[g] : code;
    }
    __syncthreads();  // pr and xt are rewritten by the next tile
}

// The normalised features xt [rows, N] of rows [t0, t0 + rows) (staged at
// xs row `at`). Reference: (x - mu) / nu from stat (bf16: R(R(x - mu) / den)).
// Causal: thread f < N carries its running sum (*sum) over the rows, then c =
// x - sum / (t + 1) and c / max(||c||, 1e-12), the norm one thread per row.
// The operations of lsh_project_kernel / lsh_centred, in their order.
__device__ static void lsh_seq_normalise(const lsh_rows *r, const double *stat, double *xt, double *rinv, int t0,
                                         int at, int rows, int ref, int bf16, double *sum) {
    int N = r->N, f0 = threadIdx.x;
    const float *xs = r->xs + (size_t)at * N;
    if (ref) {
        const double *mu = stat, *scale = stat + N;  // scale: 1 / nu, or den (bf16)
        for (int e = threadIdx.x; e < rows * N; e += LSH_THREADS) {
            int f = e % N;
            if (bf16) {
                float c = hax_bf16_round(xs[e] - (float)mu[f]);
                xt[e] = hax_bf16_round(c / (float)scale[f]);
            } else {
                xt[e] = __dmul_rn(__dsub_rn((double)xs[e], mu[f]), scale[f]);
            }
        }
        __syncthreads();
        return;
    }
    if (f0 < N)
        for (int q = 0; q < rows; q++) {
            *sum = __dadd_rn(*sum, (double)xs[q * N + f0]);
            xt[q * N + f0] = *sum;
        }
    __syncthreads();
    for (int e = threadIdx.x; e < rows * N; e += LSH_THREADS)
        xt[e] = __dsub_rn((double)xs[e], __ddiv_rn(xt[e], (double)(t0 + e / N + 1)));
    __syncthreads();
    for (int q = threadIdx.x; q < rows; q += LSH_THREADS) rinv[q] = lsh_rinv(xt + q * N, N);
    __syncthreads();
    for (int e = threadIdx.x; e < rows * N; e += LSH_THREADS) xt[e] = __dmul_rn(xt[e], rinv[e / N]);
    __syncthreads();
}

// Block (s, which): sequence s's queries (which = 1: Q = KQ[:, N:]) or keys
// (which = 0).
__global__ static void lsh_seq_kernel(int32_t *q_bucket, int32_t *k_bucket, float *q_proj, float *k_proj,
                                      const float *KQ, int N, const float *H, int h, int argmax, int ref, int bf16,
                                      const int *seq_off, int L, const int32_t *force_q, const int32_t *force_k,
                                      int proj_rows, int rows_x) {
    extern __shared__ double lsh_sh[];
    int which = blockIdx.y, o = seq_off[blockIdx.x], n = seq_off[blockIdx.x + 1] - o;
    double *stat = lsh_sh, *xt = stat + 2 * N, *pr = xt + (size_t)proj_rows * N, *rinv = pr + (size_t)proj_rows * h;
    lsh_rows r = {KQ + (size_t)o * 2 * N + (which ? N : 0), 2 * N, N, n, (float *)(rinv + proj_rows), -1, 0, rows_x};
    if (ref) {
        lsh_seq_stats_reference(&r, stat, L, bf16);
        __syncthreads();  // stat is read by every thread
    }
    double sum = 0;  // causal: thread f's running sum
    for (int t0 = 0; t0 < n; t0 += proj_rows) {
        int rows = min(proj_rows, n - t0);
        lsh_stage(&r, t0 - t0 % rows_x);
        lsh_seq_normalise(&r, stat, xt, rinv, t0, t0 - r.t0, rows, ref, bf16, &sum);
        lsh_seq_project(&r, xt, pr, t0, rows, H, h, argmax, ref && bf16, o, which ? q_bucket : k_bucket,
                        which ? q_proj : k_proj, which ? force_q : force_k);
    }
}

void cu_sp_lsh_setup(void) {
    CUDA_CHECK(cudaFuncSetAttribute(lsh_seq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, LSH_SMEM_MAX));
}

// Buckets of the queries and the keys (one launch).
void cu_sp_lsh_hash_seq(cu_sparse_state *st, const int *seq_off, int n_seq, int L, const float *hash) {
    if (n_seq <= 0) return;
    lsh_plan p = lsh_plan_of(st->N, st->h, st->max_len);
    lsh_seq_kernel<<<dim3(n_seq, 2), LSH_THREADS, p.bytes, cu_stream()>>>(
        st->q_bucket, st->k_bucket, st->hq_proj, st->hk_proj, st->KQ, st->N, hash, st->h,
        HAS(st->mask, SPARSE_ARGMAX_LSH), st->sem == SEMANTICS_REFERENCE, st->bf16, seq_off, L, st->force_q_bucket,
        st->force_k_bucket, p.proj_rows, p.rows_x);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- keys by bucket

#define LSH_SORT_THREADS 256
#define LSH_SORT_TILE 2048  // packed keys staged in shared memory at a time

// lsh_pack: cuda/sparse/internal.cuh.

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

// lsh_sort_kernel spread over more blocks (HAX_SPARSE_KS=new): block (s, y)
// ranks keys y*128 .. y*128 + 127 of sequence s (the one block per sequence
// above ranks ~460 keys in two rounds of 256 threads on 64 SMs). The same
// ranks, the same array.
#define LSH_RANK_THREADS 128

__global__ static void lsh_rank_kernel(int64_t *srt, const int32_t *k_bucket, const int *seq_off) {
    __shared__ int64_t tile[LSH_SORT_TILE];
    int o = seq_off[blockIdx.x], n = seq_off[blockIdx.x + 1] - o, tid = threadIdx.x;
    for (int jb = blockIdx.y * LSH_RANK_THREADS; jb < n; jb += gridDim.y * LSH_RANK_THREADS) {  // block-uniform
        int j = jb + tid, r = 0;
        int64_t mine = j < n ? lsh_pack(k_bucket[o + j], j) : 0;
        for (int tb = 0; tb < n; tb += LSH_SORT_TILE) {
            int len = min(LSH_SORT_TILE, n - tb);
            __syncthreads();
#pragma unroll 4
            for (int i = tid; i < len; i += LSH_RANK_THREADS) tile[i] = lsh_pack(k_bucket[o + tb + i], tb + i);
            __syncthreads();
            if (j < n)
                for (int i = 0; i < len; i++) r += tile[i] < mine;
        }
        if (j < n) srt[o + r] = mine;
    }
}

void cu_sp_lsh_sort(cu_sparse_state *st, const int *seq_off, int n_seq) {
    if (n_seq <= 0) return;
    if (st->ks_old) {
        lsh_sort_kernel<<<n_seq, LSH_SORT_THREADS, 0, cu_stream()>>>(st->lsh_sorted, st->k_bucket, seq_off);
    } else {
        dim3 grid(n_seq, cu_blocks(st->max_len, LSH_RANK_THREADS));
        lsh_rank_kernel<<<grid, LSH_RANK_THREADS, 0, cu_stream()>>>(st->lsh_sorted, st->k_bucket, seq_off);
    }
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
