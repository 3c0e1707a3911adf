// cuda/ops/conv.cu: see cuda/ops/conv.h. One thread per (position, channel) for the
// forward and dinp (channels fastest: coalesced), one per (channel, chunk of
// CONV_T positions of a sequence) for the dw/db partials.
#include "cuda/core/common.cuh"
#include "cuda/ops/conv.h"

#define KMAX 8

__global__ static void conv_fwd_kernel(float *out, float *pre, const float *inp, int ld_inp, const float *w,
                                       const float *b, const int *seq_off, int n_seq, int n_tok, int C, int K) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_tok * C) return;
    int t = (int)(i / C), c = (int)(i % C);
    int t0 = seq_off[cu_seq_of(seq_off, n_seq, t)];
    float acc = b ? b[c] : 0.0f;
    for (int k = 0; k < K; k++) {
        int src = t - (K - 1) + k;
        if (src >= t0) acc += w[c * K + k] * inp[(size_t)src * ld_inp + c];
    }
    if (pre) pre[i] = acc;
    out[i] = hax_silu(acc);
}

// dinp[src, c] += Σ_t g[t, c]·w[c, k] over the outputs t = src .. src+K−1 of
// the same sequence (k = K−1−(t−src)), in increasing t as the CPU adds them.
__global__ static void conv_dinp_kernel(float *dinp, int ld_dinp, const float *dout, const float *pre,
                                        const float *w, const int *seq_off, int n_seq, int n_tok, int C, int K) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)n_tok * C) return;
    int src = (int)(i / C), c = (int)(i % C);
    int t1 = seq_off[cu_seq_of(seq_off, n_seq, src) + 1];
    float *d = dinp + (size_t)src * ld_dinp + c;
    float acc = *d;
    for (int t = src; t < src + K && t < t1; t++) {
        float g = dout[(size_t)t * C + c] * hax_dsilu(pre[(size_t)t * C + c]);
        acc += g * w[c * K + (K - 1 - (t - src))];
    }
    *d = acc;
}

// The dw/db partials are per chunk of CONV_T positions of a sequence (more
// parallel work than one per sequence): sequence s owns the chunk slots
// base_s .. base_s + ceil(len_s / CONV_T) − 1, base_s = s + seq_off[s] / CONV_T
// (strictly increasing in s; n_tok / CONV_T + n_seq slots in all).
#define CONV_T 64

__device__ __forceinline__ int conv_base(const int *seq_off, int s) { return s + seq_off[s] / CONV_T; }

// part[slot][k·C + c] = Σ_t g[t, c]·inp[t−(K−1)+k, c], part[slot][K·C + c] = Σ_t g[t, c]
// over the positions t of the slot's chunk.
__global__ static void conv_part_kernel(double *part, const float *dout, const float *pre, const float *inp,
                                        int ld_inp, const int *seq_off, int n_seq, int C, int K) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, slot = blockIdx.y;
    // The sequence holding this slot: the last s with base_s <= slot.
    int lo = 0, hi = n_seq - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (conv_base(seq_off, mid) <= slot) lo = mid;
        else hi = mid - 1;
    }
    int s = lo, t0 = seq_off[s], t1 = seq_off[s + 1];
    int ta = t0 + (slot - conv_base(seq_off, s)) * CONV_T, tb = ta + CONV_T < t1 ? ta + CONV_T : t1;
    if (c >= C || ta >= t1) return;  // past the sequence's last chunk: an unused slot
    double pw[KMAX], pb = 0.0;
#pragma unroll
    for (int k = 0; k < KMAX; k++) pw[k] = 0.0;
    for (int t = ta; t < tb; t++) {
        float g = dout[(size_t)t * C + c] * hax_dsilu(pre[(size_t)t * C + c]);
        pb += g;
#pragma unroll
        for (int k = 0; k < KMAX; k++) {
            int src = t - (K - 1) + k;
            if (k < K && src >= t0) pw[k] += (double)g * inp[(size_t)src * ld_inp + c];
        }
    }
    double *p = part + (size_t)slot * C * (K + 1);
#pragma unroll
    for (int k = 0; k < KMAX; k++)
        if (k < K) p[(size_t)k * C + c] = pw[k];
    p[(size_t)K * C + c] = pb;
}

// Each sequence's total of its chunk partials (in double, chunks in order):
// seq_part[s][k·C + c], one thread per (sequence, entry).
__global__ static void conv_seq_kernel(double *seq_part, const double *part, const int *seq_off, int n_seq,
                                       int per) {
    int i = blockIdx.x * blockDim.x + threadIdx.x, s = blockIdx.y;
    if (i >= per || s >= n_seq) return;
    int n_ch = (seq_off[s + 1] - seq_off[s] + CONV_T - 1) / CONV_T;
    const double *p0 = part + (size_t)conv_base(seq_off, s) * per + i;
    double acc = 0.0;
    for (int j = 0; j < n_ch; j++) acc += p0[(size_t)j * per];
    seq_part[(size_t)s * per + i] = acc;
}

// dw, db += the sequence totals, each rounded to float and added in sequence
// order as the CPU does; one thread per entry.
__global__ static void conv_sum_kernel(float *dw, float *db, const double *seq_part, int n_seq, int C, int K) {
    int i = blockIdx.x * blockDim.x + threadIdx.x, per = C * (K + 1);
    if (i >= per) return;
    int k = i / C, c = i % C;
    float *dst = k < K ? dw + c * K + k : db ? db + c : NULL;
    if (!dst) return;
    float acc = *dst;
#pragma unroll 8
    for (int s = 0; s < n_seq; s++) acc += (float)seq_part[(size_t)s * per + i];
    *dst = acc;
}

extern "C" void cuda_conv_silu_forward(float *out, float *pre, const float *inp, int ld_inp, const float *w,
                                       const float *b, const int *seq_off, int n_seq, int n_tok, int C, int K) {
    if (K > KMAX) hax_die("cuda: conv: kernel width K: expected at most %d, found %d", KMAX, K);
    if (n_tok == 0) return;
    conv_fwd_kernel<<<cu_blocks((long)n_tok * C, 256), 256, 0, cu_stream()>>>(out, pre, inp, ld_inp, w, b,
                                                                            seq_off, n_seq, n_tok, C, K);
    CUDA_LAUNCHED();
}

static int conv_slots(int n_tok, int n_seq) { return n_tok / CONV_T + n_seq; }

// Chunk partials [slots][C·(K+1)], then sequence totals [n_seq][C·(K+1)].
extern "C" size_t cuda_conv_workspace_bytes(int n_tok, int n_seq, int C, int K) {
    return ((size_t)conv_slots(n_tok, n_seq) + n_seq) * C * (K + 1) * sizeof(double);
}

extern "C" void cuda_conv_silu_backward(float *dinp, int ld_dinp, float *dw, float *db, const float *dout,
                                        const float *pre, const float *inp, int ld_inp, const float *w,
                                        const int *seq_off, int n_seq, int n_tok, int C, int K, void *work) {
    if (K > KMAX) hax_die("cuda: conv: kernel width K: expected at most %d, found %d", KMAX, K);
    if (n_tok == 0 || n_seq == 0) return;
    if (dinp) {
        conv_dinp_kernel<<<cu_blocks((long)n_tok * C, 256), 256, 0, cu_stream()>>>(dinp, ld_dinp, dout, pre, w,
                                                                                 seq_off, n_seq, n_tok, C, K);
        CUDA_LAUNCHED();
    }
    dim3 grid(cu_blocks(C, 64), conv_slots(n_tok, n_seq));
    conv_part_kernel<<<grid, 64, 0, cu_stream()>>>((double *)work, dout, pre, inp, ld_inp, seq_off, n_seq, C, K);
    CUDA_LAUNCHED();
    int per = C * (K + 1);
    double *seq_part = (double *)work + (size_t)conv_slots(n_tok, n_seq) * per;
    conv_seq_kernel<<<dim3(cu_blocks(per, 128), n_seq), 128, 0, cu_stream()>>>(seq_part, (const double *)work, seq_off,
                                                                              n_seq, per);
    CUDA_LAUNCHED();
    conv_sum_kernel<<<cu_blocks(per, 128), 128, 0, cu_stream()>>>(dw, db, seq_part, n_seq, C, K);
    CUDA_LAUNCHED();
}
