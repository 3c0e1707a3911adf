// dist_nccl.h: the gradient all-reduce of the CUDA backend. One NCCL
// communicator over all MPI ranks (the unique id is broadcast with MPI), each
// rank on its own device; the sum runs on the device, on the CUDA backend's
// stream (hax_device_ops.stream, given at creation), in place.
//
// NCCL refuses two ranks on one device. When ranks share a device (a test on
// a one-GPU machine), or HAX_NCCL=0 is set, the sum goes through the host
// instead: download, MPI_Allreduce, upload (same result layout, slower).
// NVLink multicast (NVLS) is switched off (NCCL_NVLS_ENABLE=0) unless the
// environment sets it.
#ifndef HAX_DIST_NCCL_H
#define HAX_DIST_NCCL_H

#include <stddef.h>

#include "mpi/dist.h"

typedef struct hax_nccl hax_nccl;

// Collective over all ranks (call once the engine has chosen the device on
// every rank). stream: the engine's (hax_device_ops.stream, a cudaStream_t),
// on which the all-reduces are enqueued. Dies with one line when NCCL fails
// or this build has no CUDA.
hax_nccl *dist_nccl_create(const hax_dist *d, void *stream);
// In-place sum over ranks of n device floats (enqueued on the stream; with a
// single rank nothing is done).
void dist_nccl_allreduce_sum_f32(hax_nccl *c, float *dev, size_t n);
// "nccl", "mpi-host" (ranks share a device, or HAX_NCCL=0) or "single".
const char *dist_nccl_mode(const hax_nccl *c);
void dist_nccl_free(hax_nccl *c);

#endif
