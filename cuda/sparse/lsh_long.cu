// cuda/sparse/lsh_long.cu: the LSH steps of the sparse branch for long
// sequences (HAX_SPARSE_LONG, issue 14): the buckets and the keys sorted by
// bucket with parallelism that grows with the sequence length, giving the
// same bits as cuda/sparse/lsh.cu.
//
// lsh.cu's kernels take one block per sequence and kind (buckets: the
// statistics, the projections and the buckets of all the sequence's rows in
// that block) and rank every key of a sequence against all its keys (the
// sort: n^2 comparisons). Here:
//   - statistics: a warp per (sequence, kind), one lane per feature, the
//     CPU's double sums in the CPU's order (the buckets must be the CPU's bit
//     for bit, so these chains stay serial: n dependent adds, twice in
//     reference semantics), loads issued 32 rows ahead. Reference semantics
//     gives mu and 1 / nu (bf16-pure: mu and den) per sequence; causal
//     semantics the running sums of every row (queries in st->lsh_stat, keys
//     in st->dKQ, the backward's scratch, free during the forward);
//   - projections and buckets: a block per 64 rows of the batch, both kinds
//     (lsh.cu's per-tile code: normalised features, then a thread per (row,
//     hash column), then a thread per row), all tiles in parallel;
//   - the keys by (bucket, position): a counting sort per chunk of 256
//     positions (bucket counts per chunk, their prefix over the chunks and the
//     buckets, then each key's place: the keys of the chunk's earlier same-
//     bucket keys, found a warp of keys at a time by __match_any_sync). The
//     keys are distinct, so the sorted array is lsh.cu's exactly. Only for
//     computed buckets of at most CU_SP_LSH_CS_MAX_B values (forced buckets
//     may be anything: lsh.cu's rank sort then).
#include <math.h>

#include "cuda/sparse/internal.cuh"
#include "cuda/sparse/long.cuh"

#define HAS(m, bit) (((m) & (bit)) != 0)
#define LL_TILE_THREADS 256
#define LL_CS_CHUNK 256  // counting sort: positions per chunk at least (more for more buckets)

// ---------------------------------------------------------------- statistics

// Block (s, kind), one warp (kind 1: the queries KQ[:, N:], 0: the keys).
// Reference: stat[kind, s, 0:N] = mu, stat[kind, s, N:2N] = 1 / max(nu,
// 1e-12) (bf16: mu = R(sum * fl(1/L)), den), the operations of lsh.cu's
// lsh_seq_stats_reference. Causal: pre[g, f] = sum_{p <= t} x_pf (pre_q or
// pre_k), as lsh_stats_causal.
template <int R>
__global__ static void ll_stats_kernel(double *stat, double *pre_q, double *pre_k, const float *KQ, int N,
                                       const int *seq_off, int n_seq, int L, int ref, int bf16) {
    int s = blockIdx.x, kind = blockIdx.y, lane = threadIdx.x, o = seq_off[s], n = seq_off[s + 1] - o;
    const float *x = KQ + (size_t)o * 2 * N + (kind ? N : 0);
    size_t ld = 2 * (size_t)N;
    if (!ref) {
        double *pre = (kind ? pre_q : pre_k) + (size_t)o * N, sum[R];
#pragma unroll
        for (int u = 0; u < R; u++) sum[u] = 0.0;
        cu_long_walk<R>(x, ld, N, 0, n, lane, [&](int t, const float(&v)[R]) {
#pragma unroll
            for (int u = 0; u < R; u++) {
                sum[u] = __dadd_rn(sum[u], (double)v[u]);
                if (lane + 32 * u < N) pre[(size_t)t * N + lane + 32 * u] = sum[u];
            }
        });
        return;
    }
    double sum[R], mu[R], var[R];
    float m[R];
#pragma unroll
    for (int u = 0; u < R; u++) sum[u] = 0.0;
    cu_long_walk<R>(x, ld, N, 0, n, lane, [&](int, const float(&v)[R]) {
#pragma unroll
        for (int u = 0; u < R; u++) sum[u] = __dadd_rn(sum[u], (double)v[u]);
    });
#pragma unroll
    for (int u = 0; u < R; u++) {
        m[u] = hax_bf16_round((float)sum[u] * (1.0f / (float)L));
        mu[u] = __ddiv_rn(sum[u], (double)L);
        var[u] = bf16 ? __dmul_rn(__dmul_rn((double)(L - n), (double)m[u]), (double)m[u])  // the pads: c = -mu
                      : __dmul_rn(__dmul_rn((double)(L - n), mu[u]), mu[u]);
    }
    cu_long_walk<R>(x, ld, N, 0, n, lane, [&](int, const float(&v)[R]) {
#pragma unroll
        for (int u = 0; u < R; u++) {
            if (bf16) {
                float c = hax_bf16_round(v[u] - m[u]);
                var[u] = __dadd_rn(var[u], __dmul_rn((double)c, (double)c));
            } else {
                double d = __dsub_rn((double)v[u], mu[u]);
                var[u] = __dadd_rn(var[u], __dmul_rn(d, d));
            }
        }
    });
    double *st = stat + ((size_t)kind * n_seq + s) * 2 * N;
#pragma unroll
    for (int u = 0; u < R; u++) {
        int f = lane + 32 * u;
        if (f >= N) continue;
        if (bf16) {
            st[f] = m[u];
            st[N + f] = hax_bf16_round(fmaxf(hax_bf16_round(sqrtf((float)var[u])), 1e-12f));
        } else {
            st[f] = mu[u];
            st[N + f] = __ddiv_rn(1.0, fmax(__dsqrt_rn(var[u]), 1e-12));
        }
    }
}

// ---------------------------------------------------------------- projections and buckets

// Rows per tile of ll_tiles_kernel (its shared doubles within 40 KiB).
static int ll_tile_rows(int N, int h) {
    int rows = 64;
    while (rows > 8 && sizeof(double) * rows * ((size_t)N + h + 1) > 40 * 1024) rows /= 2;
    return rows;
}

static size_t ll_tile_bytes(int rows, int N, int h) {
    return sizeof(double) * rows * ((size_t)N + h + 1) + 2 * sizeof(int) * rows;
}

// Block (tile, kind): rows g0 .. g0 + rows - 1 of the batch (any
// sequences). The normalised features xt [rows, N] (reference: (x - mu) /
// nu, bf16: R(R(x - mu) / den); causal: c = x - pre / (t + 1), then c / max(
// ||c||, 1e-12), the norm a thread per row), the projections a thread per
// (row, hash column) in feature order (bf16 reference: rounded), then the
// bucket a thread per row: lsh.cu's lsh_seq_normalise and lsh_seq_project,
// the same operations in the same order.
__global__ static void ll_tiles_kernel(int32_t *q_bucket, int32_t *k_bucket, float *q_proj, float *k_proj,
                                       const float *KQ, int N, const float *H, int h, int argmax, int ref, int bf16,
                                       const int *seq_off, int n_seq, int n_tok, const double *stat,
                                       const double *pre_q, const double *pre_k, const int32_t *force_q,
                                       const int32_t *force_k, int tile) {
    extern __shared__ double ll_sh[];  // xt [tile, N], pr [tile, h], rinv [tile], then seq [tile], pos [tile]
    double *xt = ll_sh, *pr = xt + (size_t)tile * N, *rinv = pr + (size_t)tile * h;
    int *seq = (int *)(rinv + tile), *pos = seq + tile;
    int kind = blockIdx.y, g0 = blockIdx.x * tile, rows = min(tile, n_tok - g0), tid = threadIdx.x;
    const float *x = KQ + (kind ? N : 0);
    const double *pre = kind ? pre_q : pre_k;
    for (int q = tid; q < rows; q += LL_TILE_THREADS) {
        int s = cu_seq_of(seq_off, n_seq, g0 + q);
        seq[q] = s, pos[q] = g0 + q - seq_off[s];
    }
    __syncthreads();
    for (int e = tid; e < rows * N; e += LL_TILE_THREADS) {
        int q = e / N, f = e % N, g = g0 + q;
        float v = x[(size_t)g * 2 * N + f];
        if (!ref) {
            xt[e] = __dsub_rn((double)v, __ddiv_rn(pre[(size_t)g * N + f], (double)(pos[q] + 1)));
            continue;
        }
        const double *st = stat + ((size_t)kind * n_seq + seq[q]) * 2 * N;  // mu, then 1 / nu (bf16: den)
        if (bf16) {
            float c = hax_bf16_round(v - (float)st[f]);
            xt[e] = hax_bf16_round(c / (float)st[N + f]);
        } else {
            xt[e] = __dmul_rn(__dsub_rn((double)v, st[f]), st[N + f]);
        }
    }
    __syncthreads();
    if (!ref) {
        for (int q = tid; q < rows; q += LL_TILE_THREADS) rinv[q] = lsh_rinv(xt + q * N, N);
        __syncthreads();
        for (int e = tid; e < rows * N; e += LL_TILE_THREADS) xt[e] = __dmul_rn(xt[e], rinv[e / N]);
        __syncthreads();
    }
    float *proj_out = kind ? q_proj : k_proj;
    for (int e = tid; e < rows * h; e += LL_TILE_THREADS) {
        int q = e / h, i = e % h;
        double p = lsh_proj(xt + q * N, N, H, h, i);
        if (ref && bf16) p = hax_bf16_round((float)p);
        pr[e] = p;
        proj_out[(size_t)(g0 + q) * h + i] = (float)p;
    }
    __syncthreads();
    int32_t *bucket = kind ? q_bucket : k_bucket;
    const int32_t *force = kind ? force_q : force_k;
    for (int q = tid; q < rows; q += LL_TILE_THREADS) {
        const double *pq = pr + q * h;
        int32_t code = lsh_code(pq, h, argmax);
        int g = g0 + q;
        bucket[g] = force ? force[g] : code;
    }
}

template <int R>
static void ll_stats(cu_sparse_state *st, const int *seq_off, int n_seq, int L, int ref) {
    ll_stats_kernel<R><<<dim3(n_seq, 2), 32, 0, cu_stream()>>>(st->lsh_stat, st->lsh_stat, (double *)st->dKQ, st->KQ,
                                                               st->N, seq_off, n_seq, L, ref, st->bf16);
    CUDA_LAUNCHED();
}

void cu_sp_lsh_hash_long(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok, int L, const float *hash) {
    if (n_seq <= 0 || n_tok <= 0) return;
    int N = st->N, h = st->h, ref = st->sem == SEMANTICS_REFERENCE, R = (N + 31) / 32;
    // reference: both kinds' statistics [2, n_seq, 2N] in lsh_stat; causal: the
    // queries' running sums [n_tok, N] in lsh_stat, the keys' in dKQ (as doubles)
    if (R == 1) ll_stats<1>(st, seq_off, n_seq, L, ref);
    else if (R == 2) ll_stats<2>(st, seq_off, n_seq, L, ref);
    else if (R == 3) ll_stats<3>(st, seq_off, n_seq, L, ref);
    else ll_stats<4>(st, seq_off, n_seq, L, ref);
    int tile = ll_tile_rows(N, h);
    ll_tiles_kernel<<<dim3(cu_blocks(n_tok, tile), 2), LL_TILE_THREADS, ll_tile_bytes(tile, N, h), cu_stream()>>>(
        st->q_bucket, st->k_bucket, st->hq_proj, st->hk_proj, st->KQ, N, hash, h, HAS(st->mask, SPARSE_ARGMAX_LSH),
        ref, st->bf16, seq_off, n_seq, n_tok, st->lsh_stat, st->lsh_stat, (const double *)st->dKQ, st->force_q_bucket,
        st->force_k_bucket, tile);
    CUDA_LAUNCHED();
}

// ---------------------------------------------------------------- the keys by bucket: a counting sort

// Bucket values of the pattern's LSH (sign bins: 2^h, argmax: h), and the
// counting sort's chunk for B of them (at least LL_CS_CHUNK positions, at
// least B: the per-chunk counts stay within one int per position).
int cu_sp_lsh_n_buckets(unsigned mask, int h) { return HAS(mask, SPARSE_ARGMAX_LSH) ? h : 1 << h; }
static int ll_cs_chunk(int B) { return B > LL_CS_CHUNK ? (B + 31) / 32 * 32 : LL_CS_CHUNK; }

size_t cu_sp_lsh_hist_ints(int max_tok, int max_seq, int B) {
    if (B < 1 || B > CU_SP_LSH_CS_MAX_B) return 0;
    return (cu_long_slots(max_tok, max_seq, ll_cs_chunk(B)) + (size_t)(max_seq > 0 ? max_seq : 1)) * B;
}

int cu_sp_lsh_sort_long_fits(const cu_sparse_state *st) {
    return st->lsh_hist != NULL && !st->force_k_bucket && cu_sp_lsh_n_buckets(st->mask, st->h) <= CU_SP_LSH_CS_MAX_B;
}

// One warp walks the keys of chunk [t0, t1) of the sequence at o, 32 at a
// time in order; every lane calls f(on = its key j < t1, j, its bucket b,
// peers = the lanes of this step with the same bucket, leader = the lowest
// of them). The lanes past t1 take bucket -1, which no key has.
template <typename F>
__device__ __forceinline__ void ll_cs_walk(const int32_t *k_bucket, int o, int t0, int t1, int lane, F f) {
    for (int tb = t0; tb < t1; tb += 32) {
        int j = tb + lane;
        bool on = j < t1;
        int b = on ? k_bucket[o + j] : -1;
        unsigned peers = __match_any_sync(0xffffffffu, b);
        f(on, j, b, peers, on && lane == __ffs(peers) - 1);
        __syncwarp();
    }
}

// Block (s, y), one warp: the bucket counts of chunks y, y + gridDim.y, ...
// of sequence s into hist's slot of the chunk [B]. Counts are order-free.
__global__ static void ll_cs_count_kernel(int *hist, const int32_t *k_bucket, const int *seq_off, int B, int chunk) {
    extern __shared__ int ll_cnt[];  // [B]
    int s = blockIdx.x, lane = threadIdx.x, o = seq_off[s], n = seq_off[s + 1] - o;
    int nch = (n + chunk - 1) / chunk, slot = cu_long_slot(o, s, chunk);
    for (int c = blockIdx.y; c < nch; c += gridDim.y) {
        for (int b = lane; b < B; b += 32) ll_cnt[b] = 0;
        __syncwarp();
        ll_cs_walk(k_bucket, o, c * chunk, min(n, (c + 1) * chunk), lane,
                   [&](bool, int, int b, unsigned peers, bool leader) {
                       if (leader) ll_cnt[b] += __popc(peers);  // one leader per bucket: no race
                   });
        int *row = hist + (size_t)(slot + c) * B;
        for (int b = lane; b < B; b += 32) row[b] = ll_cnt[b];
        __syncwarp();
    }
}

// Block s, B threads or more (a multiple of 32, at most 1024): thread b
// turns the chunks' counts of bucket b into their exclusive prefix over the
// chunks (in place, 8 chunks' loads at a time), then the exclusive prefix of
// the buckets' totals gives base[s, b] = the keys of sequence s with a
// smaller bucket. Integer sums: any order gives the same.
__global__ static void ll_cs_scan_kernel(int *hist, int *base, const int *seq_off, int B, int chunk) {
    __shared__ int wsum[32];
    int s = blockIdx.x, b = threadIdx.x, lane = b % 32, warp = b / 32, o = seq_off[s], n = seq_off[s + 1] - o;
    int nch = (n + chunk - 1) / chunk, run = 0;
    int *col = hist + (size_t)cu_long_slot(o, s, chunk) * B + b;
    if (b < B)
        for (int c0 = 0; c0 < nch; c0 += 8) {
            int v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) v[u] = c0 + u < nch ? col[(size_t)(c0 + u) * B] : 0;
#pragma unroll
            for (int u = 0; u < 8; u++)
                if (c0 + u < nch) col[(size_t)(c0 + u) * B] = run, run += v[u];
        }
    int x = run;  // inclusive scan over the warp, then over the warps' totals
    for (int off = 1; off < 32; off <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, x, off);
        if (lane >= off) x += y;
    }
    if (lane == 31) wsum[warp] = x;
    __syncthreads();
    if (warp == 0) {
        int w = lane < (int)(blockDim.x / 32) ? wsum[lane] : 0, iw = w;
        for (int off = 1; off < 32; off <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, iw, off);
            if (lane >= off) iw += y;
        }
        wsum[lane] = iw - w;  // the warps before
    }
    __syncthreads();
    if (b < B) base[(size_t)s * B + b] = x - run + wsum[warp];
}

// Block (s, y), one warp: each key of chunks y, y + gridDim.y, ... of
// sequence s goes to its rank in (bucket, position) order: base[s, b] + the
// same-bucket keys of earlier chunks (hist, after ll_cs_scan_kernel) + those
// earlier in this chunk (the running counts of the walk, then the lower
// lanes of this step with the same bucket).
__global__ static void ll_cs_place_kernel(int64_t *srt, const int *hist, const int *base, const int32_t *k_bucket,
                                          const int *seq_off, int B, int chunk) {
    extern __shared__ int ll_cnt[];  // [B]
    int s = blockIdx.x, lane = threadIdx.x, o = seq_off[s], n = seq_off[s + 1] - o;
    int nch = (n + chunk - 1) / chunk, slot = cu_long_slot(o, s, chunk);
    for (int c = blockIdx.y; c < nch; c += gridDim.y) {
        const int *row = hist + (size_t)(slot + c) * B;
        for (int b = lane; b < B; b += 32) ll_cnt[b] = base[(size_t)s * B + b] + row[b];
        __syncwarp();
        ll_cs_walk(k_bucket, o, c * chunk, min(n, (c + 1) * chunk), lane,
                   [&](bool on, int j, int b, unsigned peers, bool leader) {
                       if (on) srt[o + ll_cnt[b] + __popc(peers & ((1u << lane) - 1u))] = lsh_pack(b, j);
                       __syncwarp();  // every lane has read ll_cnt[b] before its leader moves it on
                       if (leader) ll_cnt[b] += __popc(peers);
                   });
    }
}

void cu_sp_lsh_sort_long(cu_sparse_state *st, const int *seq_off, int n_seq, int n_tok) {
    if (n_seq <= 0 || n_tok <= 0) return;
    int B = cu_sp_lsh_n_buckets(st->mask, st->h), chunk = ll_cs_chunk(B);
    int *hist = st->lsh_hist, *base = hist + cu_long_slots(n_tok, n_seq, chunk) * (size_t)B;
    int len = cu_long_len_hint(n_tok, n_seq, st->model_len), nch = cu_blocks(len, chunk);
    dim3 chunks(n_seq, nch < 65535 ? nch : 65535);
    size_t smem = sizeof(int) * (size_t)B;
    cudaStream_t sm = cu_stream();
    ll_cs_count_kernel<<<chunks, 32, smem, sm>>>(hist, st->k_bucket, seq_off, B, chunk);
    CUDA_LAUNCHED();
    ll_cs_scan_kernel<<<n_seq, (B + 31) / 32 * 32, 0, sm>>>(hist, base, seq_off, B, chunk);
    CUDA_LAUNCHED();
    ll_cs_place_kernel<<<chunks, 32, smem, sm>>>(st->lsh_sorted, hist, base, st->k_bucket, seq_off, B, chunk);
    CUDA_LAUNCHED();
}
