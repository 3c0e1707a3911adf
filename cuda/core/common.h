// cuda/core/common.h: the CUDA backend's context, seen from C: one device per
// process, one stream on which every op is enqueued in order, one cuBLAS
// handle, device buffers and copies. Every function dies (hax_die, one line
// naming the file, the line, the call and CUDA's error string) on a CUDA error.
//
// Conventions of every cuda_* op (cu_*.h): all array arguments are DEVICE
// pointers, laid out exactly as for the CPU op of the same name (src/ops_*.h:
// packed batches, seq_off [n_seq + 1] (here on the device), leading
// dimensions, backward ACCUMULATES += like the CPU op); sizes (n_tok, n_seq,
// ...) are host ints. Ops only enqueue work on the stream: they never
// allocate and never wait for the device, so a whole training step can be
// captured in a CUDA graph. Scratch memory is passed in as a workspace whose
// size a *_workspace_bytes function gives.
#ifndef HAX_CU_COMMON_H
#define HAX_CU_COMMON_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Number of CUDA devices visible (0 when there is no driver or no device;
// never dies).
int cuda_device_count(void);

// Selects the device, creates the stream and the cuBLAS handle (FP32 maths,
// no TF32). Idempotent. Every other function calls it for device 0 if the
// program has not.
void cuda_init(int device);
// The GEMMs' maths from here on: 0 plain FP32 (the default), 1 TF32 tensor
// cores. TF32 is exact for bf16-pure's GEMMs: their inputs are bf16 values
// (8 significant bits, TF32 keeps 11), the products are exact in FP32 and
// the sums stay FP32, as the reference's bf16 GEMMs. HAX_BF16_TF32=0 keeps
// plain FP32 for them too (to compare).
void cuda_gemm_tf32(int on);
// The device's name (after cuda_init).
const char *cuda_device_name(void);

// Waits for all work on the stream and dies on any error it raised,
// including an error flag set by a kernel (an out-of-range token id, say).
void cuda_sync(void);

// Device memory (never NULL; dies naming the size on failure).
void *cuda_malloc(size_t bytes);
void cuda_free(void *p);
// Device memory accounting (benchmarks): the bytes held by cuda_malloc now
// and at most since the last cuda_mem_reset_peak (buffers only; cuBLAS's
// workspace, CUDA graphs and the context are not counted), and the device's
// memory in use by every user of the GPU (cudaMemGetInfo: total - free).
size_t cuda_mem_live(void);
size_t cuda_mem_peak(void);
void cuda_mem_reset_peak(void);
size_t cuda_mem_device_used(void);
// Copies on the stream. The host side must stay valid until the next
// cuda_sync (upload) / is valid after the next cuda_sync (download).
void cuda_upload(void *dst_dev, const void *src_host, size_t bytes);
void cuda_download(void *dst_host, const void *src_dev, size_t bytes);
void cuda_zero(void *p_dev, size_t bytes);
// Allocates and uploads in one call (then synchronises: setup code only).
void *cuda_upload_new(const void *src_host, size_t bytes);
// The reverse: a new host buffer (malloc'd, at least 1 byte) holding bytes
// downloaded from the device (synchronises: setup and test code only).
void *cuda_download_new(const void *src_dev, size_t bytes);

// Pinned (page-locked) host memory, which copies on the stream read and
// write asynchronously (never NULL; dies naming the size on failure). The
// buffer must then stay unchanged (upload) / unread (download) until the
// copy has run.
void *cuda_host_alloc(size_t bytes);
void cuda_host_free(void *p);

// Timing on the stream: returns an opaque event index (0..63).
int cuda_event_record(void);
// Milliseconds between two recorded events (synchronises on the second).
float cuda_event_ms(int start, int stop);

// CUDA graphs: cuda_graph_begin starts capturing the stream (ops called
// until cuda_graph_end are recorded, not run); cuda_graph_end returns the
// instantiated graph, which cuda_graph_launch replays on the stream.
void cuda_graph_begin(void);
void *cuda_graph_end(void);
void cuda_graph_launch(void *graph);
void cuda_graph_free(void *graph);

#ifdef __cplusplus
}
#endif

#endif
