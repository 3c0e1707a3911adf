// cuda/core/common.cu: see cuda/core/common.h.
#include "cuda/core/common.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_ready = 0;
static int g_device = -1;
static cudaStream_t g_stream;
static cublasHandle_t g_blas;
static int *g_flag;                 // device error flag
static cudaDeviceProp g_prop;
#define N_EVENTS 64
static cudaEvent_t g_events[N_EVENTS];
static int g_next_event = 0;

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

extern "C" void cuda_init(int device) {
    if (g_ready) {
        if (device != g_device)
            hax_die("cuda: cuda_init: expected the device already in use (%d), found a request for %d",
                    g_device, device);
        return;
    }
    int n = cuda_device_count();
    if (device < 0 || device >= n)
        hax_die("cuda: cuda_init: device index: expected 0..%d, found %d", n - 1, device);
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaGetDeviceProperties(&g_prop, device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&g_blas));
    CUBLAS_CHECK(cublasSetStream(g_blas, g_stream));
    // Plain FP32 GEMMs (no TF32), so results match the CPU's to ~1e-6.
    CUBLAS_CHECK(cublasSetMathMode(g_blas, CUBLAS_PEDANTIC_MATH));
    CUDA_CHECK(cudaMalloc(&g_flag, sizeof(int)));
    CUDA_CHECK(cudaMemset(g_flag, 0, sizeof(int)));
    for (int i = 0; i < N_EVENTS; i++) CUDA_CHECK(cudaEventCreate(&g_events[i]));
    g_device = device;
    g_ready = 1;
}

static void ensure_init(void) {
    if (!g_ready) cuda_init(0);
}

extern "C" void cuda_gemm_tf32(int on) {
    static int current = 0, env = -1;
    if (env < 0) env = hax_env_choice("HAX_BF16_TF32", "0 1", 1);
    on = on && env;
    ensure_init();
    if (on == current) return;
    CUBLAS_CHECK(cublasSetMathMode(g_blas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH));
    current = on;
}

cudaStream_t cu_stream(void) {
    ensure_init();
    return g_stream;
}

cublasHandle_t cu_blas(void) {
    ensure_init();
    return g_blas;
}

int *cu_error_flag(void) {
    ensure_init();
    return g_flag;
}

extern "C" const char *cuda_device_name(void) {
    ensure_init();
    return g_prop.name;
}

extern "C" void cuda_sync(void) {
    ensure_init();
    CUDA_CHECK(cudaStreamSynchronize(g_stream));
    CUDA_CHECK(cudaGetLastError());
    int flag = 0;
    CUDA_CHECK(cudaMemcpy(&flag, g_flag, sizeof(int), cudaMemcpyDeviceToHost));
    if (flag & CU_ERR_TOKEN_ID)
        hax_die("cuda: embedding: token ids: expected 0..V-1, found one outside (checked on the device)");
    if (flag & CU_ERR_LABEL)
        hax_die("cuda: cross-entropy: labels at scored positions: expected 0..V-1, found one outside");
    if (flag & CU_ERR_KS)
        hax_die("cuda: key selection: candidates: expected distinct positions inside each sequence (and sequences "
                "no longer than model_len), found one outside (checked on the device)");
}

// The live allocations of cuda_malloc (pointer, size), for the accounting of
// cuda_mem_live / cuda_mem_peak. Unordered: a free searches from the end
// (buffers are few, a few hundred, and freed rarely: only when they grow).
typedef struct {
    void *p;
    size_t bytes;
} mem_rec;
static mem_rec *g_recs;
static size_t g_n_recs, g_cap_recs, g_live, g_peak;

static void mem_add(void *p, size_t bytes) {
    if (g_n_recs == g_cap_recs) {
        g_cap_recs = g_cap_recs ? 2 * g_cap_recs : 256;
        g_recs = (mem_rec *)xrealloc(g_recs, g_cap_recs * sizeof(mem_rec));
    }
    g_recs[g_n_recs++] = {p, bytes};
    g_live += bytes;
    if (g_live > g_peak) g_peak = g_live;
}

static void mem_remove(void *p) {
    for (size_t i = g_n_recs; i-- > 0;)
        if (g_recs[i].p == p) {
            g_live -= g_recs[i].bytes;
            g_recs[i] = g_recs[--g_n_recs];
            return;
        }
}

extern "C" void *cuda_malloc(size_t bytes) {
    ensure_init();
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err != cudaSuccess)
        hax_die("cuda: cuda_malloc: could not allocate %zu bytes: %s", bytes, cudaGetErrorString(err));
    mem_add(p, bytes ? bytes : 1);
    return p;
}

extern "C" void cuda_free(void *p) {
    if (!p) return;
    CUDA_CHECK(cudaFree(p));
    mem_remove(p);
}

extern "C" size_t cuda_mem_live(void) { return g_live; }
extern "C" size_t cuda_mem_peak(void) { return g_peak; }
extern "C" void cuda_mem_reset_peak(void) { g_peak = g_live; }

extern "C" size_t cuda_mem_device_used(void) {
    ensure_init();
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    return total_b - free_b;
}

extern "C" void cuda_upload(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cu_stream()));
}

extern "C" void cuda_download(void *dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cu_stream()));
}

extern "C" void cuda_zero(void *p, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cu_stream()));
}

extern "C" void *cuda_upload_new(const void *src, size_t bytes) {
    void *p = cuda_malloc(bytes);
    cuda_upload(p, src, bytes);
    cuda_sync();
    return p;
}

extern "C" void *cuda_download_new(const void *src, size_t bytes) {
    void *h = xmalloc(bytes ? bytes : 1);
    cuda_download(h, src, bytes);
    cuda_sync();
    return h;
}

extern "C" void *cuda_host_alloc(size_t bytes) {
    ensure_init();
    void *p = NULL;
    cudaError_t err = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault);
    if (err != cudaSuccess)
        hax_die("cuda: cuda_host_alloc: could not allocate %zu bytes of pinned memory: %s", bytes,
                cudaGetErrorString(err));
    return p;
}

extern "C" void cuda_host_free(void *p) {
    if (p) CUDA_CHECK(cudaFreeHost(p));
}

extern "C" int cuda_event_record(void) {
    int i = g_next_event;
    g_next_event = (g_next_event + 1) % N_EVENTS;
    CUDA_CHECK(cudaEventRecord(g_events[i], cu_stream()));
    return i;
}

extern "C" float cuda_event_ms(int start, int stop) {
    float ms = 0.0f;
    CUDA_CHECK(cudaEventSynchronize(g_events[stop]));
    CUDA_CHECK(cudaEventElapsedTime(&ms, g_events[start], g_events[stop]));
    return ms;
}

extern "C" void cuda_graph_begin(void) {
    CUDA_CHECK(cudaStreamBeginCapture(cu_stream(), cudaStreamCaptureModeThreadLocal));
}

extern "C" void *cuda_graph_end(void) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaStreamEndCapture(cu_stream(), &graph));
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_CHECK(cudaGraphDestroy(graph));
    return (void *)exec;
}

extern "C" void cuda_graph_launch(void *graph) {
    CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)graph, cu_stream()));
}

extern "C" void cuda_graph_free(void *graph) {
    if (graph) CUDA_CHECK(cudaGraphExecDestroy((cudaGraphExec_t)graph));
}

// out[j] += Σ_ch part[ch, j] in a fixed order: a block takes 16 columns (x;
// 128 bytes of a chunk's row) and 64 lanes over the chunks (y); lane y sums the
// chunks y, y+64, ... in order, then the 64 lane sums meet in a fixed pairwise
// tree. The same inputs give the same bits on every run (no atomics).
#define PART_COLS 16
#define PART_LANES 64

__global__ static void add_chunk_partials_kernel(float *out, const double *part, int n_chunk, int n) {
    __shared__ double acc[PART_LANES][PART_COLS + 1];
    int x = threadIdx.x, y = threadIdx.y, j = blockIdx.x * PART_COLS + x;
    double a = 0.0;
    if (j < n)
#pragma unroll 4
        for (int ch = y; ch < n_chunk; ch += PART_LANES) a += part[(size_t)ch * n + j];
    acc[y][x] = a;
    __syncthreads();
    for (int h = PART_LANES / 2; h > 0; h /= 2) {
        if (y < h) acc[y][x] += acc[y + h][x];
        __syncthreads();
    }
    if (y == 0 && j < n) out[j] += (float)acc[0][x];
}

void cu_add_chunk_partials(float *out, const double *part, int n_chunk, int n) {
    if (n <= 0) return;
    dim3 block(PART_COLS, PART_LANES);
    add_chunk_partials_kernel<<<cu_blocks(n, PART_COLS), block, 0, cu_stream()>>>(out, part, n_chunk, n);
    CUDA_LAUNCHED();
}
