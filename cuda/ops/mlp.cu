// cuda/ops/mlp.cu: see cuda/ops/mlp.h; the element-wise parts of src/ops/mlp.c as kernels
// around four cuBLAS products.
#include "cuda/core/common.cuh"
#include "cuda/ops/gate.h"
#include "cuda/ops/linear.h"
#include "cuda/ops/mlp.h"

__global__ static void swiglu_fwd_kernel(float *s, const float *g, const float *u, long n, int bf16) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = g[i] * hax_sigmoid(g[i]) * u[i];
    s[i] = bf16 ? hax_bf16_round(v) : v;
}

// s = silu(g) u:  dg = ds u silu'(g),  du = ds silu(g)  (the CPU's expressions;
// bf16: the CPU's bf16 forms, fla's swiglu_bwd on the bf16 ds)
__global__ static void swiglu_bwd_kernel(float *dg, float *du, const float *ds, const float *g, const float *u,
                                         long n, int bf16) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = g[i], sg = hax_sigmoid(x);
    if (bf16) {
        float d = hax_bf16_round(ds[i]);
        dg[i] = hax_bf16_round(sg * (1.0f + x * (1.0f - sg)) * d * u[i]);
        du[i] = hax_bf16_round(x * sg * d);
        return;
    }
    dg[i] = ds[i] * u[i] * sg * (1.0f + x * (1.0f - sg));
    du[i] = ds[i] * x * sg;
}

extern "C" size_t cuda_mlp_workspace_bytes(int n_tok, int d, int M) {
    return sizeof(float) * (size_t)n_tok * (2 * (size_t)M + (M > d ? M : d));
}

extern "C" void cuda_mlp_forward(float *out, int ld_out, const mlp_acts *acts, const float *a, int ld_a,
                                 const mlp_params *w, int n_tok, int d, int M, int bf16) {
    if (n_tok == 0) return;
    long nm = (long)n_tok * M;
    cuda_linear_forward(acts->g, M, a, ld_a, w->gate, NULL, n_tok, d, M);
    cuda_linear_forward(acts->u, M, a, ld_a, w->up, NULL, n_tok, d, M);
    if (bf16) {
        cuda_round_bf16(acts->g, acts->g, nm);
        cuda_round_bf16(acts->u, acts->u, nm);
    }
    swiglu_fwd_kernel<<<cu_blocks(nm, 256), 256, 0, cu_stream()>>>(acts->s, acts->g, acts->u, nm, bf16);
    CUDA_LAUNCHED();
    cuda_linear_forward(out, ld_out, acts->s, M, w->down, NULL, n_tok, M, d);
}

extern "C" void cuda_mlp_backward(float *da, int ld_da, const mlp_grads *gr, const float *dout, int ld_dout,
                                  const float *a, int ld_a, const mlp_acts *acts, const mlp_params *w, int n_tok,
                                  int d, int M, void *work, int bf16) {
    if (n_tok == 0) return;
    long nm = (long)n_tok * M;
    float *ds = (float *)work, *dg = ds + (size_t)n_tok * (M > d ? M : d), *du = dg + nm;
    cuda_zero(ds, sizeof(float) * nm);
    cuda_linear_backward(ds, M, gr->down, NULL, dout, ld_dout, acts->s, M, w->down, n_tok, M, d);
    swiglu_bwd_kernel<<<cu_blocks(nm, 256), 256, 0, cu_stream()>>>(dg, du, ds, acts->g, acts->u, nm, bf16);
    CUDA_LAUNCHED();
    if (!bf16) {
        cuda_linear_backward(da, ld_da, gr->gate, NULL, dg, M, a, ld_a, w->gate, n_tok, d, M);
        cuda_linear_backward(da, ld_da, gr->up, NULL, du, M, a, ld_a, w->up, n_tok, d, M);
        return;
    }
    // two bf16 contributions to da (ds's slot is free: n·max(M, d) floats)
    float *share = ds;
    cuda_zero(share, sizeof(float) * (size_t)n_tok * d);
    cuda_linear_backward(da ? share : NULL, d, gr->gate, NULL, dg, M, a, ld_a, w->gate, n_tok, d, M);
    if (da) cuda_add_bf16_rows(da, ld_da, share, d, d, n_tok);
    cuda_zero(share, sizeof(float) * (size_t)n_tok * d);
    cuda_linear_backward(da ? share : NULL, d, gr->up, NULL, du, M, a, ld_a, w->up, n_tok, d, M);
    if (da) cuda_add_bf16_rows(da, ld_da, share, d, d, n_tok);
}
