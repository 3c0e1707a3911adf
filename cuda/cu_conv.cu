// cu_conv.cu: see cu_conv.h. One thread per (position, channel) for the
// forward and dinp (channels fastest: coalesced), one per (sequence, channel)
// for the dw/db partials.
#include "cu_common.cuh"
#include "cu_conv.h"

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
    out[i] = cu_silu(acc);
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
        float g = dout[(size_t)t * C + c] * cu_dsilu(pre[(size_t)t * C + c]);
        acc += g * w[c * K + (K - 1 - (t - src))];
    }
    *d = acc;
}

// part[s][k·C + c] = Σ_t g[t, c]·inp[t−(K−1)+k, c], part[s][K·C + c] = Σ_t g[t, c].
__global__ static void conv_part_kernel(double *part, const float *dout, const float *pre, const float *inp,
                                        int ld_inp, const int *seq_off, int n_seq, int C, int K) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, s = blockIdx.y;
    if (c >= C || s >= n_seq) return;
    int t0 = seq_off[s], t1 = seq_off[s + 1];
    double pw[KMAX], pb = 0.0;
#pragma unroll
    for (int k = 0; k < KMAX; k++) pw[k] = 0.0;
    for (int t = t0; t < t1; t++) {
        float g = dout[(size_t)t * C + c] * cu_dsilu(pre[(size_t)t * C + c]);
        pb += g;
#pragma unroll
        for (int k = 0; k < KMAX; k++) {
            int src = t - (K - 1) + k;
            if (k < K && src >= t0) pw[k] += (double)g * inp[(size_t)src * ld_inp + c];
        }
    }
    double *p = part + (size_t)s * C * (K + 1);
#pragma unroll
    for (int k = 0; k < KMAX; k++)
        if (k < K) p[(size_t)k * C + c] = pw[k];
    p[(size_t)K * C + c] = pb;
}

// dw, db += the sequence partials, in sequence order (each rounded to float
// first, as the CPU adds them).
__global__ static void conv_sum_kernel(float *dw, float *db, const double *part, int n_seq, int C, int K) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    for (int s = 0; s < n_seq; s++) {
        const double *p = part + (size_t)s * C * (K + 1);
        for (int k = 0; k < K; k++) dw[c * K + k] += (float)p[(size_t)k * C + c];
        if (db) db[c] += (float)p[(size_t)K * C + c];
    }
}

extern "C" void cuda_conv_silu_forward(float *out, float *pre, const float *inp, int ld_inp, const float *w,
                                       const float *b, const int *seq_off, int n_seq, int n_tok, int C, int K) {
    if (K > KMAX) hax_die("cuda: conv: kernel width K: expected at most %d, found %d", KMAX, K);
    if (n_tok == 0) return;
    conv_fwd_kernel<<<cu_blocks((long)n_tok * C, 256), 256, 0, cu_stream()>>>(out, pre, inp, ld_inp, w, b,
                                                                            seq_off, n_seq, n_tok, C, K);
    CUDA_LAUNCHED();
}

extern "C" size_t cuda_conv_workspace_bytes(int n_seq, int C, int K) {
    return (size_t)n_seq * C * (K + 1) * sizeof(double);
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
    dim3 grid(cu_blocks(C, 64), n_seq);
    conv_part_kernel<<<grid, 64, 0, cu_stream()>>>((double *)work, dout, pre, inp, ld_inp, seq_off, n_seq, C, K);
    CUDA_LAUNCHED();
    conv_sum_kernel<<<cu_blocks(C, 64), 64, 0, cu_stream()>>>(dw, db, (const double *)work, n_seq, C, K);
    CUDA_LAUNCHED();
}
