// cuda/ops/mlp.cu: see cuda/ops/mlp.h; the element-wise parts of src/ops/mlp.c as kernels
// around four cuBLAS products.
#include "cuda/core/common.cuh"
#include "cuda/ops/linear.h"
#include "cuda/ops/mlp.h"

__global__ static void swiglu_fwd_kernel(float *s, const float *g, const float *u, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) s[i] = g[i] * hax_sigmoid(g[i]) * u[i];
}

// s = silu(g) u:  dg = ds u silu'(g),  du = ds silu(g)  (the CPU's expressions)
__global__ static void swiglu_bwd_kernel(float *dg, float *du, const float *ds, const float *g, const float *u,
                                         long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = g[i], sg = hax_sigmoid(x);
    dg[i] = ds[i] * u[i] * sg * (1.0f + x * (1.0f - sg));
    du[i] = ds[i] * x * sg;
}

extern "C" size_t cuda_mlp_workspace_bytes(int n_tok, int M) { return sizeof(float) * 3 * (size_t)n_tok * M; }

extern "C" void cuda_mlp_forward(float *out, int ld_out, const mlp_acts *acts, const float *a, int ld_a,
                                 const mlp_params *w, int n_tok, int d, int M) {
    if (n_tok == 0) return;
    long nm = (long)n_tok * M;
    cuda_linear_forward(acts->g, M, a, ld_a, w->gate, NULL, n_tok, d, M);
    cuda_linear_forward(acts->u, M, a, ld_a, w->up, NULL, n_tok, d, M);
    swiglu_fwd_kernel<<<cu_blocks(nm, 256), 256, 0, cu_stream()>>>(acts->s, acts->g, acts->u, nm);
    CUDA_LAUNCHED();
    cuda_linear_forward(out, ld_out, acts->s, M, w->down, NULL, n_tok, M, d);
}

extern "C" void cuda_mlp_backward(float *da, int ld_da, const mlp_grads *gr, const float *dout, int ld_dout,
                                  const float *a, int ld_a, const mlp_acts *acts, const mlp_params *w, int n_tok,
                                  int d, int M, void *work) {
    if (n_tok == 0) return;
    long nm = (long)n_tok * M;
    float *ds = (float *)work, *dg = ds + nm, *du = dg + nm;
    cuda_zero(ds, sizeof(float) * nm);
    cuda_linear_backward(ds, M, gr->down, NULL, dout, ld_dout, acts->s, M, w->down, n_tok, M, d);
    swiglu_bwd_kernel<<<cu_blocks(nm, 256), 256, 0, cu_stream()>>>(dg, du, ds, acts->g, acts->u, nm);
    CUDA_LAUNCHED();
    cuda_linear_backward(da, ld_da, gr->gate, NULL, dg, M, a, ld_a, w->gate, n_tok, d, M);
    cuda_linear_backward(da, ld_da, gr->up, NULL, du, M, a, ld_a, w->up, n_tok, d, M);
}
