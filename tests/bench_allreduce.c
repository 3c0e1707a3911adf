// bench_allreduce.c: hax-train's gradient all-reduce alone, for the scaling
// table of tests/gpu_multi.sh (hax-train does not time it apart from the
// step). Every rank takes the device hax-train's engine takes (local rank
// modulo the device count), sums N floats in place on it through
// mpi/dist_nccl.h on the stream of cuda/core/common.h (the engine's), as
// train.c sums the gradients after the backward, WARMUP times untimed, then REPS times; rank 0 prints the path
// (nccl, mpi-host or single) and the mean wall ms per all-reduce (the
// slowest rank's). Built by make where CUDA is (build/gpu/bench_allreduce,
// outside run_gpu.sh's build/gpu/gpu_* glob).
// Usage: mpirun -np R build/gpu/bench_allreduce N [REPS]
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda/core/common.h"
#include "cuda/ops/adamw.h"
#include "mpi/dist.h"
#include "mpi/dist_nccl.h"

#define WARMUP 10

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
    int count = cuda_device_count();
    if (count < 1) {
        fprintf(stderr, "bench_allreduce: no CUDA device\n");
        return 1;
    }
    cuda_init(d.local_rank % count);
    float *buf = cuda_malloc(n * sizeof(float));
    cuda_zero(buf, n * sizeof(float));  // zeros: any number of sums stays finite (the time does not depend on them)
    hax_nccl *c = dist_nccl_create(&d, cuda_stream_handle());

    for (int i = 0; i < WARMUP; i++) dist_nccl_allreduce_sum_f32(c, buf, n);
    cuda_sync();
    dist_barrier();
    double t0 = MPI_Wtime();
    for (long i = 0; i < reps; i++) dist_nccl_allreduce_sum_f32(c, buf, n);
    cuda_sync();
    double ms = (MPI_Wtime() - t0) * 1e3 / (double)reps;
    double worst = ms;
    MPI_Reduce(&ms, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (d.rank == 0)
        printf("bench_allreduce: %d ranks, %zu floats through %s: %.4f ms per all-reduce (%ld reps)\n", d.size, n,
               dist_nccl_mode(c), worst, reps);
    dist_nccl_free(c);
    cuda_free(buf);
    dist_finalize();
    return 0;
}
