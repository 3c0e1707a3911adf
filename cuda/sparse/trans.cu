// cuda/sparse/trans.cu: the transposed allowed lists of the sparse branch on
// the GPU: for every key j, the (query, slot) pairs of the rows that hold it,
// queries ascending, so the backward's dK / dV gather reads only the queries
// that hold j instead of searching every later row.
//
// Deterministic without a sort: each key has a bitmap over the local query
// positions of its sequence (bit t: row t holds j), set by atomicOr (the
// result does not depend on the order). The rank of pair (t, j) among j's
// holders is then the popcount of the bits below t, so every pair lands at
// a fixed place: the list of key
// j is tr_ent[tr_off[j] .. tr_off[j] + tr_cnt[j]), queries ascending, whatever
// order the threads ran in. Memory: max_tok * max_len / 8 bytes of bitmaps.
#include "cuda/sparse/internal.cuh"

#define TR_THREADS 256
#define TR_SCAN 1024  // threads of the per-sequence offset scan

// Number of 32-bit bitmap words per key.
static int tr_words(const cu_sparse_state *st) { return (st->max_len + 31) / 32; }

// One thread per list slot (g, e) with e < allow_cnt[g]: bit t of key j's
// bitmap (g = o + t the query, j = allow_key[g, e] the key).
__global__ static void tr_mark_kernel(uint32_t *bits, const int *allow_cnt, const int *allow_key,
                                      const int *seq_off, int n_seq, int n_tok, int cap, int W) {
    long p = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long)n_tok * cap) return;
    int g = (int)(p / cap), e = (int)(p % cap);
    if (e >= allow_cnt[g]) return;
    int o = seq_off[cu_seq_of(seq_off, n_seq, g)], t = g - o, j = allow_key[p];
    atomicOr(&bits[(size_t)(o + j) * W + t / 32], 1u << (t % 32));
}

// One warp per key: cnt[j] = the set bits of its bitmap (words from the
// key's own, lanes in order, a fixed shuffle tree).
__global__ static void tr_count_kernel(int *cnt, const uint32_t *bits, const int *seq_off, int n_seq, int n_tok,
                                       int W) {
    int j = blockIdx.x * (TR_THREADS / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (j >= n_tok) return;
    int jl = j - seq_off[cu_seq_of(seq_off, n_seq, j)], c = 0;
    for (int w = jl / 32 + lane; w < W; w += 32) c += __popc(bits[(size_t)j * W + w]);
    for (int d = 16; d > 0; d >>= 1) c += __shfl_xor_sync(0xffffffffu, c, d);
    if (lane == 0) cnt[j] = c;
}

// One block per sequence: off[o + j] = o * cap + the counts of keys 0..j-1
// (the sequence's pairs fit in its rows' o*cap .. (o+n)*cap share of tr_ent).
__global__ static void tr_offsets_kernel(int *off, const int *cnt, const int *seq_off, int cap) {
    __shared__ int warp_tot[TR_SCAN / 32];
    int o = seq_off[blockIdx.x], n = seq_off[blockIdx.x + 1] - o, tid = threadIdx.x;
    int lane = tid % 32, warp = tid / 32, carry = o * cap;
    for (int b = 0; b < n; b += TR_SCAN) {  // the same trip count for every thread
        int j = b + tid, c = j < n ? cnt[o + j] : 0, x = c;
        for (int d = 1; d < 32; d <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, x, d);
            if (lane >= d) x += y;
        }
        if (lane == 31) warp_tot[warp] = x;
        __syncthreads();
        int before = 0, all = 0;
        for (int w = 0; w < TR_SCAN / 32; w++) {
            if (w < warp) before += warp_tot[w];
            all += warp_tot[w];
        }
        if (j < n) off[o + j] = carry + before + x - c;
        carry += all;
        __syncthreads();  // warp_tot is rewritten by the next tile
    }
}

// One thread per list slot: the pair's place in its key's list (the bits
// below t: whole words from the key's own, t >= j, then a masked one).
__global__ static void tr_fill_kernel(int *ent, const int *off, const uint32_t *bits, const int *allow_cnt,
                                      const int *allow_key, const int *seq_off, int n_seq, int n_tok, int cap,
                                      int W) {
    long p = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long)n_tok * cap) return;
    int g = (int)(p / cap), e = (int)(p % cap);
    if (e >= allow_cnt[g]) return;
    int o = seq_off[cu_seq_of(seq_off, n_seq, g)], t = g - o, j = allow_key[p];
    const uint32_t *row = bits + (size_t)(o + j) * W;
    int rank = __popc(row[t / 32] & ((1u << (t % 32)) - 1u));
    for (int w = j / 32; w < t / 32; w++) rank += __popc(row[w]);
    ent[off[o + j] + rank] = (int)p;
}

// ---------------------------------------------------------------- by tiles of 32 queries (new)
//
// The kernels above clear max_tok * W words, set ~1.9 M bits at the paper
// size by global atomics, search seq_off for every list slot (twice), and
// count each key's bits from a bitmap row laid out per key. Here
// (HAX_SPARSE_KS=new) block (s, w) takes the 32 queries t = 32w .. 32w + 31
// of sequence s: their bits all land in word w of each key's bitmap, so the
// block builds that word for every key in shared memory (shared atomics)
// and writes it out in one run; the bitmap is laid out word-major within a
// sequence, word (w, j) at bits[o W + w n + j], so a thread per key reads
// its words coalesced. Nothing is cleared: every word that is read is
// written (keys j <= t only). The counts, offsets and ranks are the ones
// above: the same lists.

// Block (s, w): word w of the bitmaps of keys 0 .. min(n, 32w + 32) - 1.
__global__ static void tr_mark_tile_kernel(uint32_t *bits, const int *allow_cnt, const int *allow_key,
                                           const int *seq_off, int cap, int W) {
    extern __shared__ uint32_t tr_words_sh[];  // [min(n, 32w + 32)]
    int o = seq_off[blockIdx.x], n = seq_off[blockIdx.x + 1] - o, w = blockIdx.y, t0 = 32 * w;
    if (t0 >= n) return;
    int rows = min(32, n - t0), nk = t0 + rows;  // the keys of rows t <= nk - 1
    for (int j = threadIdx.x; j < nk; j += blockDim.x) tr_words_sh[j] = 0;
    __syncthreads();
    const int *key = allow_key + (size_t)(o + t0) * cap;  // the tile's rows, contiguous
    for (int e = threadIdx.x; e < rows * cap; e += blockDim.x)
        if (e % cap < allow_cnt[o + t0 + e / cap]) atomicOr(&tr_words_sh[key[e]], 1u << (e / cap));
    __syncthreads();
    uint32_t *out = bits + (size_t)o * W + (size_t)w * n;
    for (int j = threadIdx.x; j < nk; j += blockDim.x) out[j] = tr_words_sh[j];
}

// One block per sequence: cnt[o + j] = key j's bits (words j/32 .. of its
// column), off[o + j] = o * cap + the counts of keys 0..j-1 (the scan of
// tr_offsets_kernel).
__global__ static void tr_count_offsets_kernel(int *cnt, int *off, const uint32_t *bits, const int *seq_off, int cap,
                                               int W) {
    __shared__ int warp_tot[TR_SCAN / 32];
    int o = seq_off[blockIdx.x], n = seq_off[blockIdx.x + 1] - o, tid = threadIdx.x;
    int lane = tid % 32, warp = tid / 32, carry = o * cap, nw = (n + 31) / 32;
    const uint32_t *b = bits + (size_t)o * W;
    for (int base = 0; base < n; base += TR_SCAN) {  // the same trip count for every thread
        int j = base + tid, c = 0;
        if (j < n) {
#pragma unroll 4
            for (int w = j / 32; w < nw; w++) c += __popc(b[(size_t)w * n + j]);
        }
        int x = c;
        for (int d = 1; d < 32; d <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, x, d);
            if (lane >= d) x += y;
        }
        if (lane == 31) warp_tot[warp] = x;
        __syncthreads();
        int before = 0, all = 0;
        for (int w = 0; w < TR_SCAN / 32; w++) {
            if (w < warp) before += warp_tot[w];
            all += warp_tot[w];
        }
        if (j < n) cnt[o + j] = c, off[o + j] = carry + before + x - c;
        carry += all;
        __syncthreads();  // warp_tot is rewritten by the next tile
    }
}

// Block (s, w): each list slot of rows 32w .. 32w + 31 at its rank among its
// key's holders (the bits below t: words j/32 .. w - 1, then a masked one).
__global__ static void tr_fill_tile_kernel(int *ent, const int *off, const uint32_t *bits, const int *allow_cnt,
                                           const int *allow_key, const int *seq_off, int cap, int W) {
    int o = seq_off[blockIdx.x], n = seq_off[blockIdx.x + 1] - o, w = blockIdx.y, t0 = 32 * w;
    if (t0 >= n) return;
    int rows = min(32, n - t0);
    const uint32_t *b = bits + (size_t)o * W;
    size_t p0 = (size_t)(o + t0) * cap;  // the tile's first list slot
    for (int e = threadIdx.x; e < rows * cap; e += blockDim.x) {
        int r = e / cap;
        if (e % cap >= allow_cnt[o + t0 + r]) continue;
        int j = allow_key[p0 + e];
        int rank = __popc(b[(size_t)w * n + j] & ((1u << r) - 1u));
        for (int v = j / 32; v < w; v++) rank += __popc(b[(size_t)v * n + j]);
        ent[off[o + j] + rank] = (int)(p0 + e);
    }
}

// The tile kernels' shared memory: a word per key of the longest sequence.
static size_t tr_tile_smem(const cu_sparse_state *st) { return sizeof(uint32_t) * (size_t)st->max_len; }

static void transpose_tiles(cu_sparse_state *st, const int *seq_off) {
    int n_seq = st->n_seq, cap = st->row_cap, W = tr_words(st);
    cudaStream_t sm = cu_stream();
    dim3 grid(n_seq, W);
    tr_mark_tile_kernel<<<grid, TR_THREADS, tr_tile_smem(st), sm>>>(st->tr_bits, st->allow_cnt, st->allow_key,
                                                                     seq_off, cap, W);
    CUDA_LAUNCHED();
    tr_count_offsets_kernel<<<n_seq, TR_SCAN, 0, sm>>>(st->tr_cnt, st->tr_off, st->tr_bits, seq_off, cap, W);
    CUDA_LAUNCHED();
    tr_fill_tile_kernel<<<grid, TR_THREADS, 0, sm>>>(st->tr_ent, st->tr_off, st->tr_bits, st->allow_cnt,
                                                      st->allow_key, seq_off, cap, W);
    CUDA_LAUNCHED();
}

void cu_sp_transpose(cu_sparse_state *st, const int *seq_off) {
    int n_tok = st->n_tok, n_seq = st->n_seq, cap = st->row_cap, W = tr_words(st);
    long slots = (long)n_tok * cap;
    if (n_tok == 0 || n_seq == 0) return;
    if (!st->tr_bits)
        hax_die("cuda: sparse backward: the per-key lists of %d positions of length up to %d: expected at most "
                "%.0f GiB of bitmaps, found %.1f GiB needed (a backward this long is not supported; evaluation is)",
                st->max_tok, st->max_len, CU_SP_TR_MAX_BYTES / 1073741824.0,
                4.0 * st->max_tok * ((st->max_len + 31) / 32) / 1073741824.0);
    if (!st->ks_old && tr_tile_smem(st) <= 48 * 1024) {
        transpose_tiles(st, seq_off);
        return;
    }
    cudaStream_t sm = cu_stream();
    CUDA_CHECK(cudaMemsetAsync(st->tr_bits, 0, sizeof(uint32_t) * (size_t)n_tok * W, sm));
    tr_mark_kernel<<<cu_blocks(slots, TR_THREADS), TR_THREADS, 0, sm>>>(st->tr_bits, st->allow_cnt, st->allow_key,
                                                                        seq_off, n_seq, n_tok, cap, W);
    CUDA_LAUNCHED();
    tr_count_kernel<<<cu_blocks(n_tok, TR_THREADS / 32), TR_THREADS, 0, sm>>>(st->tr_cnt, st->tr_bits, seq_off,
                                                                             n_seq, n_tok, W);
    CUDA_LAUNCHED();
    tr_offsets_kernel<<<n_seq, TR_SCAN, 0, sm>>>(st->tr_off, st->tr_cnt, seq_off, cap);
    CUDA_LAUNCHED();
    tr_fill_kernel<<<cu_blocks(slots, TR_THREADS), TR_THREADS, 0, sm>>>(st->tr_ent, st->tr_off, st->tr_bits,
                                                                        st->allow_cnt, st->allow_key, seq_off, n_seq,
                                                                        n_tok, cap, W);
    CUDA_LAUNCHED();
}
