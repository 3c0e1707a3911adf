// dist_nccl.c: see dist_nccl.h.
#include "mpi/dist_nccl.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"

#ifdef HAX_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

enum { MODE_SINGLE, MODE_NCCL, MODE_HOST };

struct hax_nccl {
    int mode;
    ncclComm_t comm;
    cudaStream_t stream;  // the engine's (hax_device_ops.stream)
    float *host;  // staging buffer (MODE_HOST)
    size_t host_n;
};

#define NCCL_OK(call)                                                                                   \
    do {                                                                                                \
        ncclResult_t r_ = (call);                                                                       \
        if (r_ != ncclSuccess) hax_die("nccl: %s: %s", #call, ncclGetErrorString(r_));                  \
    } while (0)

// 1 when two ranks of the run use the same device (by PCI bus id).
static int devices_shared(const hax_dist *d) {
    int dev = 0;
    char id[32] = "";
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetPCIBusId(id, sizeof id, dev) != cudaSuccess)
        hax_die("nccl: cannot read the PCI bus id of the current device");
    char *all = xcalloc((size_t)d->size, sizeof id);
    MPI_Allgather(id, sizeof id, MPI_CHAR, all, sizeof id, MPI_CHAR, MPI_COMM_WORLD);
    int shared = 0;
    for (int i = 0; i < d->size && !shared; i++)
        for (int j = i + 1; j < d->size && !shared; j++) shared = !strcmp(all + i * sizeof id, all + j * sizeof id);
    free(all);
    return shared;
}

#define CUDA_OK(call)                                                                                   \
    do {                                                                                                \
        cudaError_t e_ = (call);                                                                        \
        if (e_ != cudaSuccess) hax_die("cuda: %s: %s", #call, cudaGetErrorString(e_));                  \
    } while (0)

hax_nccl *dist_nccl_create(const hax_dist *d, void *stream) {
    hax_nccl *c = xcalloc(1, sizeof *c);
    c->stream = (cudaStream_t)stream;
    if (d->size == 1) {
        c->mode = MODE_SINGLE;
        return c;
    }
    const char *env = getenv("HAX_NCCL");
    int want_host = env && !strcmp(env, "0");
    if (devices_shared(d)) want_host = 1;  // every rank sees the same answer
    if (want_host) {
        c->mode = MODE_HOST;
        return c;
    }
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    ncclUniqueId id;
    if (d->rank == 0) NCCL_OK(ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    NCCL_OK(ncclCommInitRank(&c->comm, d->size, id, d->rank));
    c->mode = MODE_NCCL;
    return c;
}

void dist_nccl_allreduce_sum_f32(hax_nccl *c, float *dev, size_t n) {
    if (c->mode == MODE_SINGLE || n == 0) return;
    if (c->mode == MODE_NCCL) {
        NCCL_OK(ncclAllReduce(dev, dev, n, ncclFloat32, ncclSum, c->comm, c->stream));
        return;
    }
    if (c->host_n < n) {
        free(c->host);
        c->host = xmalloc(n * sizeof(float));
        c->host_n = n;
    }
    CUDA_OK(cudaMemcpyAsync(c->host, dev, n * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    CUDA_OK(cudaStreamSynchronize(c->stream));
    dist_allreduce_sum_f32(c->host, n);
    CUDA_OK(cudaMemcpyAsync(dev, c->host, n * sizeof(float), cudaMemcpyHostToDevice, c->stream));
    CUDA_OK(cudaStreamSynchronize(c->stream));  // the staging buffer may be reused by the next call
}

const char *dist_nccl_mode(const hax_nccl *c) {
    return c->mode == MODE_NCCL ? "nccl" : c->mode == MODE_HOST ? "mpi-host" : "single";
}

void dist_nccl_free(hax_nccl *c) {
    if (!c) return;
    if (c->mode == MODE_NCCL) ncclCommDestroy(c->comm);
    free(c->host);
    free(c);
}

#else  // no CUDA in this build

struct hax_nccl {
    int unused;
};

hax_nccl *dist_nccl_create(const hax_dist *d, void *stream) {
    (void)d, (void)stream;
    hax_die("nccl: this build has no CUDA (nvcc was not found when it was compiled)");
}
void dist_nccl_allreduce_sum_f32(hax_nccl *c, float *dev, size_t n) { (void)c, (void)dev, (void)n; }
const char *dist_nccl_mode(const hax_nccl *c) {
    (void)c;
    return "none";
}
void dist_nccl_free(hax_nccl *c) { (void)c; }

#endif
