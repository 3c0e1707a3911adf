// bench_allreduce.c: hax-train's gradient all-reduce alone, for the scaling
// table of tests/gpu_multi.sh (hax-train does not time it apart from the
// step). Every rank takes the device hax-train's engine takes (local rank
// modulo the device count), sums N floats in place on it through
// mpi/dist_nccl.h on its own stream, as train.c sums the gradients after the
// backward, WARMUP times untimed, then REPS times; rank 0 prints the path
// (nccl, mpi-host or single) and the mean wall ms per all-reduce (the
// slowest rank's). Built by make where CUDA is (build/gpu/bench_allreduce,
// outside run_gpu.sh's build/gpu/gpu_* glob).
// Usage: mpirun -np R build/gpu/bench_allreduce N [REPS]
#include <cuda_runtime.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "mpi/dist.h"
#include "mpi/dist_nccl.h"

#define WARMUP 10

static void cuda_ok(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return;
    fprintf(stderr, "bench_allreduce: %s: %s\n", what, cudaGetErrorString(e));
    exit(1);
}

// A positive whole number argument, or one line and exit 2.
static long parse_count(const char *name, const char *s) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < 1) {
        fprintf(stderr, "bench_allreduce: %s: expected a positive whole number, found '%s'\n", name, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    hax_dist d;
    dist_init(&d, &argc, &argv);
    if (argc < 2 || argc > 3) {
        if (d.rank == 0) fprintf(stderr, "usage: mpirun -np R bench_allreduce N [REPS]\n");
        return 2;
    }
    size_t n = (size_t)parse_count("N", argv[1]);
    long reps = argc > 2 ? parse_count("REPS", argv[2]) : 100;
    int count = 0;
    cuda_ok(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    if (count < 1) {
        fprintf(stderr, "bench_allreduce: no CUDA device\n");
        return 1;
    }
    cuda_ok(cudaSetDevice(d.local_rank % count), "cudaSetDevice");
    cudaStream_t stream;
    cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
    float *buf = NULL;
    cuda_ok(cudaMalloc((void **)&buf, n * sizeof(float)), "cudaMalloc");
    // Zeros: any number of sums stays finite (the time does not depend on the values).
    cuda_ok(cudaMemset(buf, 0, n * sizeof(float)), "cudaMemset");
    hax_nccl *c = dist_nccl_create(&d, stream);

    for (int i = 0; i < WARMUP; i++) dist_nccl_allreduce_sum_f32(c, buf, n);
    cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    dist_barrier();
    double t0 = MPI_Wtime();
    for (long i = 0; i < reps; i++) dist_nccl_allreduce_sum_f32(c, buf, n);
    cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    double ms = (MPI_Wtime() - t0) * 1e3 / (double)reps;
    double worst = ms;
    MPI_Reduce(&ms, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (d.rank == 0)
        printf("bench_allreduce: %d ranks, %zu floats through %s: %.4f ms per all-reduce (%ld reps)\n", d.size, n,
               dist_nccl_mode(c), worst, reps);
    dist_nccl_free(c);
    cudaFree(buf);
    cudaStreamDestroy(stream);
    dist_finalize();
    return 0;
}
