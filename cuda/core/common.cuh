// cuda/core/common.cuh: what the .cu files share: error checks, the context (stream,
// cuBLAS handle), launch helpers and small device functions. C callers use
// cuda/core/common.h.
#ifndef HAX_CU_COMMON_CUH
#define HAX_CU_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "cuda/core/common.h"
#include "src/core/scalar.h"

extern "C" {
#include "src/core/common.h"
}

// One clear line and exit on any CUDA error.
#define CUDA_CHECK(call)                                                                   \
    do {                                                                                   \
        cudaError_t err_ = (call);                                                         \
        if (err_ != cudaSuccess)                                                           \
            hax_die("cuda: %s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
    } while (0)

#define CUBLAS_CHECK(call)                                                                 \
    do {                                                                                   \
        cublasStatus_t st_ = (call);                                                       \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                  \
            hax_die("cuda: %s:%d: %s: cuBLAS status %d (%s)", __FILE__, __LINE__, #call,   \
                    (int)st_, cublasGetStatusString(st_));                                 \
    } while (0)

// After a kernel launch: catches launch-configuration errors at once (no
// synchronisation; errors inside the kernel surface at the next cuda_sync).
#define CUDA_LAUNCHED() CUDA_CHECK(cudaGetLastError())

cudaStream_t cu_stream(void);
cublasHandle_t cu_blas(void);
// Device address of the error flag (0 = fine). Kernels set bits with
// atomicOr; cuda_sync reports them.
int *cu_error_flag(void);
#define CU_ERR_TOKEN_ID 1  // embedding: a token id outside [0, V)
#define CU_ERR_LABEL 2     // cross-entropy: a scored label outside [0, V)
#ifndef CU_ERR_KS
#define CU_ERR_KS 4        // key selection: bad candidate rows, or a sequence longer than model_len
#endif

static inline int cu_blocks(long n, int threads) { return (int)((n + threads - 1) / threads); }

// out[j] += (float)Σ_ch part[ch·n + j] for j < n, the chunk partials added in
// chunk order in double (the column sums of the norm, gate and gated-norm
// backwards: one fixed order, so the result repeats bit for bit).
void cu_add_chunk_partials(float *out, const double *part, int n_chunk, int n);

// ---- the scalar helpers: hax_sigmoid, hax_silu, ... of src/core/scalar.h (host
// and device, one copy).

// The start of the sequence holding row t (binary search of seq_off).
__device__ __forceinline__ int cu_seq_of(const int *seq_off, int n_seq, int t) {
    int lo = 0, hi = n_seq - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (seq_off[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// Sum over the lanes of a warp (every lane gets it), in double.
__device__ __forceinline__ double cu_warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float cu_warp_sumf(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

#endif
