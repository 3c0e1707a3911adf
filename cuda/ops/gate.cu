// cuda/ops/gate.cu: see gate.h.
#include "cuda/core/common.cuh"
#include "cuda/ops/gate.h"

// The row kernels: a warp per row t (GATE_ROWS rows a block), the lanes over
// the columns c (coalesced; no 64-bit index division per element).
#define GATE_ROWS 8

__global__ static void gate_fwd_kernel(float *o, const float *y, const float *xz, const float *attn,
                                       const float *Ev, int n, int E, int bf16) {
    int t = blockIdx.x * GATE_ROWS + threadIdx.y;
    if (t >= n) return;
    size_t r = (size_t)t * E;
    const float *zt = xz + (size_t)t * 2 * E + E;
    for (int c = threadIdx.x; c < E; c += 32) {
        float g = hax_silu(zt[c]);
        if (bf16) {  // src/ops/gate.c's bf16 merge, op by op
            float v = hax_bf16_round(y[r + c] * g);
            if (attn) v = hax_bf16_round(v + hax_bf16_round(hax_bf16_round(attn[r + c] * Ev[c]) * hax_bf16_round(g)));
            o[r + c] = v;
            continue;
        }
        // fp32: written with explicit roundings, the operations nvcc chose
        // for `v = y·g; if (attn) v += attn·Ev·g` before the bf16 branch
        // existed (y·g fused into the merge's FMA). With the branch in the
        // loop it fused attn·Ev·g instead: different bits (issue 10).
        float yv = y[r + c];
        o[r + c] = attn ? __fmaf_rn(yv, g, __fmul_rn(__fmul_rn(attn[r + c], Ev[c]), g)) : __fmul_rn(yv, g);
    }
}

// The bf16 backward of one element (src/ops/gate.c gate_bwd_bf16): dy, dz,
// the dattn share and the dEv product.
__device__ __forceinline__ void gate_bwd_bf16(float *dy, float *dz, float *dattn, float *prod, float d, float y,
                                              float z, const float *attn, float Ev) {
    float g = hax_silu(z), dg = hax_dsilu(z);
    *dy = d * g;
    float dz_scan = hax_bf16_round(d * hax_bf16_round(y) * dg);
    if (!attn) {
        *dz = dz_scan;
        return;
    }
    float t1 = hax_bf16_round(*attn * Ev), dt1 = hax_bf16_round(d * hax_bf16_round(g));
    float dsz = hax_bf16_round(d * t1);
    if (dattn) *dattn = hax_bf16_round(*dattn + hax_bf16_round(dt1 * Ev));
    if (prod) *prod = hax_bf16_round(dt1 * *attn);
    *dz = hax_bf16_round(dz_scan + hax_bf16_round(dsz * dg));
}

__global__ static void gate_bwd_kernel(float *dy, float *dxz, float *dattn, float *prod, const float *do_,
                                       const float *y, const float *xz, const float *attn, const float *Ev, int n,
                                       int E, int bf16) {
    int t = blockIdx.x * GATE_ROWS + threadIdx.y;
    if (t >= n) return;
    size_t r = (size_t)t * E, rz = (size_t)t * 2 * E + E;
    for (int c = threadIdx.x; c < E; c += 32) {
        size_t i = r + c;
        float z = xz[rz + c], d = do_[i];
        if (bf16) {
            gate_bwd_bf16(dy + i, dxz + rz + c, attn && dattn ? dattn + i : NULL, attn && prod ? prod + i : NULL, d,
                          y[i], z, attn ? attn + i : NULL, attn ? Ev[c] : 0.0f);
            continue;
        }
        float g = hax_silu(z), v = y[i];
        if (attn) {
            v += attn[i] * Ev[c];
            dattn[i] += d * Ev[c] * g;
            prod[i] = d * attn[i] * g;
        }
        dy[i] = d * g;
        dxz[rz + c] = d * v * hax_dsilu(z);
    }
}

__global__ static void add_attn_kernel(float *y, const float *attn, const float *Ev, int n, int E, int bf16) {
    int t = blockIdx.x * GATE_ROWS + threadIdx.y;
    if (t >= n) return;
    size_t r = (size_t)t * E;
    for (int c = threadIdx.x; c < E; c += 32) {
        if (bf16) y[r + c] = hax_bf16_round(y[r + c] + hax_bf16_round(attn[r + c] * Ev[c]));
        else y[r + c] += attn[r + c] * Ev[c];
    }
}

__global__ static void add_attn_bwd_kernel(float *dattn, float *prod, const float *dy, const float *attn,
                                           const float *Ev, int n, int E, int bf16) {
    int t = blockIdx.x * GATE_ROWS + threadIdx.y;
    if (t >= n) return;
    size_t r = (size_t)t * E;
    for (int c = threadIdx.x; c < E; c += 32) {
        if (bf16) {
            dattn[r + c] = hax_bf16_round(dattn[r + c] + hax_bf16_round(dy[r + c] * Ev[c]));
            prod[r + c] = hax_bf16_round(dy[r + c] * attn[r + c]);
            continue;
        }
        dattn[r + c] += dy[r + c] * Ev[c];
        prod[r + c] = dy[r + c] * attn[r + c];
    }
}

#define COLSUM_CHUNK 64
__global__ static void colsum_part_kernel(double *part, const float *x, int n, int E) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int n_chunk = (n + COLSUM_CHUNK - 1) / COLSUM_CHUNK;
    if (i >= (long)n_chunk * E) return;
    int ch = (int)(i / E), c = (int)(i % E);
    int t1 = (ch + 1) * COLSUM_CHUNK < n ? (ch + 1) * COLSUM_CHUNK : n;
    double acc = 0;
    for (int t = ch * COLSUM_CHUNK; t < t1; t++) acc += (double)x[(size_t)t * E + c];
    part[i] = acc;
}

__global__ static void add_kernel(float *out, const float *a, const float *b, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// bf16 emulation (src/core/scalar.h's rounding, the same bits as the CPU).
__global__ static void round_bf16_kernel(float *out, const float *x, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = hax_bf16_round(x[i]);
}

__global__ static void round_bf16_rows_kernel(float *x, int ld, int width, int rows) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)width * rows) return;
    size_t k = (size_t)(i / width) * ld + i % width;
    x[k] = hax_bf16_round(x[k]);
}

// dst = bf16(dst + bf16(src)) on rows (src/ops/basic.h's add_bf16_rows).
__global__ static void add_bf16_rows_kernel(float *dst, int ld_dst, const float *src, int ld_src, int width,
                                            int rows) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)width * rows) return;
    long t = i / width, j = i % width;
    float *d = dst + (size_t)t * ld_dst + j;
    *d = hax_bf16_round(*d + hax_bf16_round(src[(size_t)t * ld_src + j]));
}

// The CE normaliser of a graph step, which changes from step to step while
// the graph stays the same.
__global__ static void scale_kernel(float *x, long n, const float *s) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * *s;
}

extern "C" size_t cuda_gate_work_bytes(int n, int E) {
    return sizeof(double) * (size_t)((n + COLSUM_CHUNK - 1) / COLSUM_CHUNK) * E;
}

// out[c] += Σ_t x[t, c]; work holds cuda_gate_work_bytes(n, E).
static void colsum_add(float *out, const float *x, int n, int E, void *work) {
    int n_chunk = (n + COLSUM_CHUNK - 1) / COLSUM_CHUNK;
    if (n_chunk == 0) return;
    colsum_part_kernel<<<cu_blocks((long)n_chunk * E, 256), 256, 0, cu_stream()>>>((double *)work, x, n, E);
    CUDA_LAUNCHED();
    cu_add_chunk_partials(out, (const double *)work, n_chunk, E);
}

extern "C" void cuda_gate_forward(float *o, const float *y, const float *xz, const float *attn, const float *Ev,
                                  int n, int E, int bf16) {
    if (n <= 0) return;
    gate_fwd_kernel<<<cu_blocks(n, GATE_ROWS), dim3(32, GATE_ROWS), 0, cu_stream()>>>(o, y, xz, attn, Ev, n, E,
                                                                                      bf16);
    CUDA_LAUNCHED();
}

extern "C" void cuda_gate_backward(float *dy, float *dxz, float *dattn, float *dEv, float *prod, const float *do_,
                                   const float *y, const float *xz, const float *attn, const float *Ev, int n, int E,
                                   void *work, int bf16) {
    if (n <= 0) return;
    gate_bwd_kernel<<<cu_blocks(n, GATE_ROWS), dim3(32, GATE_ROWS), 0, cu_stream()>>>(dy, dxz, dattn, prod, do_, y,
                                                                                      xz, attn, Ev, n, E, bf16);
    CUDA_LAUNCHED();
    if (attn && dEv) colsum_add(dEv, prod, n, E, work);
}

extern "C" void cuda_add_attn_forward(float *y, const float *attn, const float *Ev, int n, int E, int bf16) {
    if (n <= 0) return;
    add_attn_kernel<<<cu_blocks(n, GATE_ROWS), dim3(32, GATE_ROWS), 0, cu_stream()>>>(y, attn, Ev, n, E, bf16);
    CUDA_LAUNCHED();
}

extern "C" void cuda_add_attn_backward(float *dattn, float *dEv, float *prod, const float *dy, const float *attn,
                                       const float *Ev, int n, int E, void *work, int bf16) {
    if (n <= 0) return;
    add_attn_bwd_kernel<<<cu_blocks(n, GATE_ROWS), dim3(32, GATE_ROWS), 0, cu_stream()>>>(dattn, prod, dy, attn, Ev,
                                                                                          n, E, bf16);
    CUDA_LAUNCHED();
    if (dEv) colsum_add(dEv, prod, n, E, work);
}

extern "C" void cuda_add(float *out, const float *a, const float *b, long n) {
    add_kernel<<<cu_blocks(n, 256), 256, 0, cu_stream()>>>(out, a, b, n);
    CUDA_LAUNCHED();
}

extern "C" void cuda_round_bf16(float *out, const float *x, long n) {
    if (n <= 0) return;
    round_bf16_kernel<<<cu_blocks(n, 256), 256, 0, cu_stream()>>>(out, x, n);
    CUDA_LAUNCHED();
}

extern "C" void cuda_add_bf16_rows(float *dst, int ld_dst, const float *src, int ld_src, int width, int rows) {
    if (rows <= 0 || width <= 0) return;
    add_bf16_rows_kernel<<<cu_blocks((long)width * rows, 256), 256, 0, cu_stream()>>>(dst, ld_dst, src, ld_src, width,
                                                                                     rows);
    CUDA_LAUNCHED();
}

extern "C" void cuda_round_bf16_rows(float *x, int ld, int width, int rows) {
    if (rows <= 0 || width <= 0) return;
    round_bf16_rows_kernel<<<cu_blocks((long)width * rows, 256), 256, 0, cu_stream()>>>(x, ld, width, rows);
    CUDA_LAUNCHED();
}

extern "C" void cuda_scale(float *x, long n, const float *s) {
    scale_kernel<<<cu_blocks(n, 256), 256, 0, cu_stream()>>>(x, n, s);
    CUDA_LAUNCHED();
}
