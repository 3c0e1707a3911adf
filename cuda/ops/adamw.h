// cuda/ops/adamw.h: the whole-buffer ops of a training step on the device: AdamW
// (src/ops/adamw.h's float32 operation order, so the result equals the CPU's bit
// for bit), the finiteness check of the gradients, and the stream handle that
// NCCL (mpi/dist_nccl.h) enqueues its all-reduce on.
//
// The step's scalars (lr, bias corrections) live in a small DEVICE struct that
// the host fills before each step (cuda_adamw_set): a step captured in a CUDA
// graph then reads the new values at every replay.
#ifndef HAX_CU_ADAMW_H
#define HAX_CU_ADAMW_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "src/ops/adamw.h"  // adamw_scalars, adamw_scalars_of (C linkage)

// The float32 constants of one AdamW step (src/ops/adamw.h's adamw_scalars_of,
// the same values the CPU update uses) and the regime.
typedef struct {
    adamw_scalars k;
    int bf16_pure;  // 1: adamw_bf16_update's op order (set by the caller; make leaves 0)
} cuda_adamw_hp;

void cuda_adamw_hp_make(cuda_adamw_hp *hp, double lr, double beta1, double beta2, double eps, double weight_decay,
                        int64_t step);
// Copies hp (host) into hp_dev (device) on the stream.
void cuda_adamw_set(cuda_adamw_hp *hp_dev, const cuda_adamw_hp *hp);
// p, m, v updated in place from g, all [n] device floats (adamw_update's
// order, or adamw_bf16_update's when hp->bf16_pure: bit-identical to the CPU).
void cuda_adamw_step(float *p, const float *g, float *m, float *v, size_t n, const cuda_adamw_hp *hp_dev);

// flag (device int) is set to 1 when any of x[0..n) is not finite (it is not
// cleared: zero it first).
void cuda_check_finite(int *flag, const float *x, size_t n);

// The CUDA backend's stream, as a cudaStream_t (for NCCL).
void *cuda_stream_handle(void);

#ifdef __cplusplus
}
#endif

#endif
