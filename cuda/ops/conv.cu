// cuda/ops/conv.cu: see cuda/ops/conv.h. The positions of each sequence are cut
// into chunks (CONV_FWD_T, CONV_T); one thread per (chunk, channel) walks its chunk in
// order with the last K inputs (and, backward, the last K gradients) in
// registers, so each element is loaded and its SiLU' computed once (channels
// fastest across the threads: coalesced). The backward fuses dinp with the
// dw/db chunk partials; the partials are then summed per sequence, and the
// sequence totals in sequence order as on the CPU. K is a template argument
// (1..KMAX) so the windows stay in registers. In the backward CONV_SUB threads
// share a chunk (CONV_T / CONV_SUB positions each, recomputing the K − 1
// gradients past their piece), their partials added in thread order: more
// threads for the same chunk partials.
#include "cuda/core/common.cuh"
#include "cuda/ops/conv.h"

#define KMAX 8
#define CONV_T 64       // positions per chunk of the backward (and its dw/db partials)
#ifndef CONV_SUB
#define CONV_SUB 4      // threads per (chunk, channel) in the backward; 1: the walk of the whole chunk
#endif
#define CONV_SUB_T (CONV_T / CONV_SUB)
static_assert(CONV_T % CONV_SUB == 0, "CONV_SUB must divide CONV_T");
#define CONV_FWD_T 16   // positions per chunk of the forward (no partials: more threads)
#define CONV_THREADS 64 // channels per block

// With chunks of T positions, sequence s owns the chunk slots base_s .. base_s
// + ceil(len_s / T) − 1, base_s = s + seq_off[s] / T (strictly increasing in s;
// n_tok / T + n_seq slots in all, some unused).
__device__ __forceinline__ int conv_base(const int *seq_off, int s, int T) { return s + seq_off[s] / T; }

// The chunk of slot `slot`: positions ta .. tb−1 of the sequence t0 .. t1−1;
// false for an unused slot (past its sequence's last chunk).
__device__ static bool conv_chunk(const int *seq_off, int n_seq, int T, int slot, int *t0, int *t1, int *ta,
                                  int *tb) {
    int lo = 0, hi = n_seq - 1;  // the last s with base_s <= slot
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (conv_base(seq_off, mid, T) <= slot) lo = mid;
        else hi = mid - 1;
    }
    *t0 = seq_off[lo];
    *t1 = seq_off[lo + 1];
    *ta = *t0 + (slot - conv_base(seq_off, lo, T)) * T;
    *tb = *ta + T < *t1 ? *ta + T : *t1;
    return *ta < *t1;
}

// out = silu(pre), pre[t, c] = b[c] + Σ_k w[c, k]·inp[t−(K−1)+k, c], k in
// order (inputs before the sequence start are zero: adding w·0 leaves the sum).
template <int K>
__global__ static void conv_fwd_kernel(float *out, float *pre, const float *inp, int ld_inp, const float *w,
                                       const float *b, const int *seq_off, int n_seq, int C) {
    int slot = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x, t0, t1, ta, tb;
    if (c >= C || !conv_chunk(seq_off, n_seq, CONV_FWD_T, slot, &t0, &t1, &ta, &tb)) return;
    float wk[K], x[K];  // x[k] = inp[t − (K−1) + k, c]
#pragma unroll
    for (int k = 0; k < K; k++) {
        wk[k] = w[c * K + k];
        int src = ta - (K - 1) + k;
        x[k] = k < K - 1 && src >= t0 ? inp[(size_t)src * ld_inp + c] : 0.0f;
    }
    float bias = b ? b[c] : 0.0f;
#pragma unroll 4
    for (int t = ta; t < tb; t++) {
        x[K - 1] = inp[(size_t)t * ld_inp + c];
        float acc = bias;
#pragma unroll
        for (int k = 0; k < K; k++) acc += wk[k] * x[k];
        if (pre) pre[(size_t)t * C + c] = acc;
        out[(size_t)t * C + c] = hax_silu(acc);
#pragma unroll
        for (int k = 0; k < K - 1; k++) x[k] = x[k + 1];
    }
}

// With g[t, c] = dout·silu'(pre): dinp[src, c] += Σ_t g[t, c]·w[c, K−1−(t−src)]
// over t = src .. src+K−1 of the sequence, in increasing t as the CPU adds them
// (src in this thread's piece of the chunk: g is computed up to K−1 positions
// past it; zero past the sequence end); part[slot][k·C + c] = Σ_t g[t, c]·
// inp[t−(K−1)+k, c] and part[slot][K·C + c] = Σ_t g[t, c] over the chunk's t
// (double; each piece in order, then the CONV_SUB pieces in order). Block:
// CONV_THREADS channels (x) × CONV_SUB pieces (y).
template <int K>
__global__ static void conv_bwd_kernel(double *part, float *dinp, int ld_dinp, const float *dout, const float *pre,
                                       const float *inp, int ld_inp, const float *w, const int *seq_off, int n_seq,
                                       int C) {
    __shared__ double red[CONV_SUB][K + 1][CONV_THREADS];
    int slot = blockIdx.x, x = threadIdx.x, y = threadIdx.y, c = blockIdx.y * blockDim.x + x, t0, t1, ta, tb;
    if (!conv_chunk(seq_off, n_seq, CONV_T, slot, &t0, &t1, &ta, &tb)) return;  // the whole block
    bool live = c < C;
    int sa = ta + y * CONV_SUB_T, sb = sa + CONV_SUB_T < tb ? sa + CONV_SUB_T : tb;  // this thread's piece
    float wk[K], xw[K], g[K];  // xw[k] = inp[t − (K−1) + k, c], g[k] = g[t − (K−1) + k, c]
    double q[K], qb = 0.0;
#pragma unroll
    for (int k = 0; k < K; k++) {
        wk[k] = live ? w[c * K + k] : 0.0f;
        int src = sa - (K - 1) + k;
        xw[k] = live && k < K - 1 && src >= t0 && src < t1 ? inp[(size_t)src * ld_inp + c] : 0.0f;
        g[k] = 0.0f;
        q[k] = 0.0;
    }
    if (live && sa < sb)
#pragma unroll 4
        for (int t = sa; t < sb + K - 1; t++) {
#pragma unroll
            for (int k = 0; k < K - 1; k++) g[k] = g[k + 1];
            g[K - 1] = t < t1 ? dout[(size_t)t * C + c] * hax_dsilu(pre[(size_t)t * C + c]) : 0.0f;
            if (t < sb) {
                xw[K - 1] = inp[(size_t)t * ld_inp + c];
                qb += g[K - 1];
#pragma unroll
                for (int k = 0; k < K; k++) q[k] += (double)g[K - 1] * xw[k];
#pragma unroll
                for (int k = 0; k < K - 1; k++) xw[k] = xw[k + 1];
            }
            int src = t - (K - 1);
            if (dinp && src >= sa) {
                float *d = dinp + (size_t)src * ld_dinp + c;
                float acc = *d;
#pragma unroll
                for (int k = 0; k < K; k++) acc += g[k] * wk[K - 1 - k];
                *d = acc;
            }
        }
#pragma unroll
    for (int k = 0; k < K; k++) red[y][k][x] = q[k];
    red[y][K][x] = qb;
    __syncthreads();
    if (!live) return;
    double *p = part + (size_t)slot * C * (K + 1);
    for (int k = y; k <= K; k += CONV_SUB) {  // the K + 1 sums spread over the pieces' threads
        double a = red[0][k][x];
#pragma unroll
        for (int j = 1; j < CONV_SUB; j++) a += red[j][k][x];
        p[(size_t)k * C + c] = a;
    }
}

// dw, db += the sequence totals (each the sum of its chunk partials in double,
// chunks in order), each rounded to float and added in sequence order as the
// CPU does. Block: 32 entries (x) × 32 lanes (y); per 32 sequences lane y
// totals sequence s0 + y into shared memory, then lane 0 adds the 32 in order.
__global__ static void conv_sum_kernel(float *dw, float *db, const double *part, const int *seq_off, int n_seq,
                                       int C, int K) {
    __shared__ float tot[32][33];
    int x = threadIdx.x, y = threadIdx.y, i = blockIdx.x * 32 + x, per = C * (K + 1);
    int k = i / C, c = i % C;
    float *dst = i >= per ? NULL : k < K ? dw + c * K + k : db ? db + c : NULL;
    float acc = dst && y == 0 ? *dst : 0.0f;
    for (int s0 = 0; s0 < n_seq; s0 += 32) {
        int s = s0 + y;
        double t = 0.0;
        if (i < per && s < n_seq) {
            int n_ch = (seq_off[s + 1] - seq_off[s] + CONV_T - 1) / CONV_T;
            const double *p0 = part + (size_t)conv_base(seq_off, s, CONV_T) * per + i;
            for (int j = 0; j < n_ch; j++) t += p0[(size_t)j * per];
        }
        tot[y][x] = (float)t;
        __syncthreads();
        if (y == 0)
            for (int j = 0; j < 32 && s0 + j < n_seq; j++) acc += tot[j][x];
        __syncthreads();
    }
    if (dst && y == 0) *dst = acc;
}

static void conv_check(int K) {
    if (K < 1 || K > KMAX) hax_die("cuda: conv: kernel width K: expected 1..%d, found %d", KMAX, K);
}

// Runs LAUNCH(k) with k the compile-time value of K (1..KMAX).
#define CONV_DISPATCH(K, LAUNCH)   \
    switch (K) {                   \
    case 1: LAUNCH(1); break;      \
    case 2: LAUNCH(2); break;      \
    case 3: LAUNCH(3); break;      \
    case 4: LAUNCH(4); break;      \
    case 5: LAUNCH(5); break;      \
    case 6: LAUNCH(6); break;      \
    case 7: LAUNCH(7); break;      \
    default: LAUNCH(8); break;     \
    }

static int conv_slots(int n_tok, int n_seq, int T) { return n_tok / T + n_seq; }

extern "C" void cuda_conv_silu_forward(float *out, float *pre, const float *inp, int ld_inp, const float *w,
                                       const float *b, const int *seq_off, int n_seq, int n_tok, int C, int K) {
    conv_check(K);
    if (n_tok == 0 || n_seq == 0) return;
    dim3 grid(conv_slots(n_tok, n_seq, CONV_FWD_T), cu_blocks(C, CONV_THREADS));
#define FWD(KK)                                                                                              \
    conv_fwd_kernel<KK><<<grid, CONV_THREADS, 0, cu_stream()>>>(out, pre, inp, ld_inp, w, b, seq_off, n_seq, C)
    CONV_DISPATCH(K, FWD);
#undef FWD
    CUDA_LAUNCHED();
}

// Chunk partials [slots][C·(K+1)].
extern "C" size_t cuda_conv_workspace_bytes(int n_tok, int n_seq, int C, int K) {
    return (size_t)conv_slots(n_tok, n_seq, CONV_T) * C * (K + 1) * sizeof(double);
}

extern "C" void cuda_conv_silu_backward(float *dinp, int ld_dinp, float *dw, float *db, const float *dout,
                                        const float *pre, const float *inp, int ld_inp, const float *w,
                                        const int *seq_off, int n_seq, int n_tok, int C, int K, void *work) {
    conv_check(K);
    if (n_tok == 0 || n_seq == 0) return;
    dim3 grid(conv_slots(n_tok, n_seq, CONV_T), cu_blocks(C, CONV_THREADS));
#define BWD(KK)                                                                                              \
    conv_bwd_kernel<KK><<<grid, dim3(CONV_THREADS, CONV_SUB), 0, cu_stream()>>>((double *)work, dinp, ld_dinp,    \
                                                                                 dout, pre, inp, ld_inp, w, seq_off, \
                                                                                 n_seq, C)
    CONV_DISPATCH(K, BWD);
#undef BWD
    CUDA_LAUNCHED();
    conv_sum_kernel<<<cu_blocks(C * (K + 1), 32), dim3(32, 32), 0, cu_stream()>>>(dw, db, (const double *)work,
                                                                                  seq_off, n_seq, C, K);
    CUDA_LAUNCHED();
}
