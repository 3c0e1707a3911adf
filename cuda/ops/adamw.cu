// cuda/ops/adamw.cu: see cuda/ops/adamw.h. The arithmetic uses the _rn intrinsics so
// nvcc cannot fuse a multiply and an add (the CPU build has no FMA): every
// operation rounds once, in the order of src/ops/adamw.c.
#include "cuda/ops/adamw.h"
#include "cuda/core/common.cuh"

extern "C" void cuda_adamw_hp_make(cuda_adamw_hp *hp, double lr, double beta1, double beta2, double eps,
                                   double weight_decay, int64_t step) {
    hp->k = adamw_scalars_of(lr, beta1, beta2, eps, weight_decay, step);
    hp->bf16_pure = 0;
}

extern "C" void cuda_adamw_set(cuda_adamw_hp *hp_dev, const cuda_adamw_hp *hp) {
    cuda_upload(hp_dev, hp, sizeof *hp);
}

// src/ops/adamw.c's adamw_bf16_update, op for op (each line one bf16 rounding).
__device__ static void adamw_bf16_elem(float *p, const float *g, float *m, float *v, size_t i,
                                       const adamw_scalars &hp) {
    float gi = hax_bf16_round(g[i]), mo = m[i];
    float pi = hax_bf16_round(__fmul_rn(p[i], hp.decay));
    float diff = __fsub_rn(gi, mo);
    float mi = hax_bf16_round(hp.lerp_low ? __fadd_rn(mo, __fmul_rn(hp.w1, diff))
                                          : __fsub_rn(gi, __fmul_rn(diff, hp.one_minus_w1)));
    float vi = hax_bf16_round(__fmul_rn(v[i], hp.b2));
    vi = hax_bf16_round(__fadd_rn(vi, __fmul_rn(hp.w2, __fmul_rn(gi, gi))));
    float den = hax_bf16_round(__fsqrt_rn(vi));
    den = hax_bf16_round(__fdiv_rn(den, hp.bc2_sqrt));
    den = hax_bf16_round(__fadd_rn(den, hp.eps));
    p[i] = hax_bf16_round(__fadd_rn(pi, __fmul_rn(hp.neg_step_size, __fdiv_rn(mi, den))));
    m[i] = mi;
    v[i] = vi;
}

__global__ static void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n,
                                    const cuda_adamw_hp *hp_) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const adamw_scalars hp = hp_->k;
    if (hp_->bf16_pure) {  // read on the device: a captured graph replays either regime
        adamw_bf16_elem(p, g, m, v, i, hp_->k);
        return;
    }
    float pi = __fmul_rn(p[i], hp.decay);
    float gi = g[i], mo = m[i];
    float diff = __fsub_rn(gi, mo);
    float mi = hp.lerp_low ? __fadd_rn(mo, __fmul_rn(hp.w1, diff)) : __fsub_rn(gi, __fmul_rn(diff, hp.one_minus_w1));
    float vi = __fmul_rn(v[i], hp.b2);
    vi = __fadd_rn(vi, __fmul_rn(__fmul_rn(hp.w2, gi), gi));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), hp.bc2_sqrt), hp.eps);
    p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(hp.neg_step_size, mi), denom));
    m[i] = mi;
    v[i] = vi;
}

extern "C" void cuda_adamw_step(float *p, const float *g, float *m, float *v, size_t n, const cuda_adamw_hp *hp_dev) {
    if (n == 0) return;
    adamw_kernel<<<cu_blocks((long)n, 256), 256, 0, cu_stream()>>>(p, g, m, v, n, hp_dev);
    CUDA_LAUNCHED();
}

__global__ static void finite_kernel(int *flag, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int bad = 0;
    for (; i < n; i += (size_t)gridDim.x * blockDim.x) bad |= !isfinite(x[i]);
    if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

extern "C" void cuda_check_finite(int *flag, const float *x, size_t n) {
    if (n == 0) return;
    int blocks = cu_blocks((long)n, 256);
    if (blocks > 1024) blocks = 1024;
    finite_kernel<<<blocks, 256, 0, cu_stream()>>>(flag, x, n);
    CUDA_LAUNCHED();
}

extern "C" void *cuda_stream_handle(void) { return (void *)cu_stream(); }
