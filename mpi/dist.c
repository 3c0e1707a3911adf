// dist.c: see dist.h.
#include "mpi/dist.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/checksum.h"
#include "src/core/common.h"

void dist_init(hax_dist *d, int *argc, char ***argv) {
    int provided = 0, inited = 0;
    MPI_Initialized(&inited);
    if (!inited) MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &d->local_rank);
    MPI_Comm_size(node, &d->local_size);
    MPI_Comm_free(&node);
}

void dist_finalize(void) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

// MPI counts are int: reduce large buffers in pieces.
#define CHUNK ((size_t)1 << 28)

void dist_allreduce_sum_f32(float *buf, size_t n) {
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t m = n - off < CHUNK ? n - off : CHUNK;
        MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)m, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
}

void dist_allreduce_sum_f64(double *buf, size_t n) {
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t m = n - off < CHUNK ? n - off : CHUNK;
        MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)m, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    }
}

void dist_allreduce_sum_i64(int64_t *buf, size_t n) {
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t m = n - off < CHUNK ? n - off : CHUNK;
        MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)m, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    }
}

int dist_allreduce_max_int(int v) {
    int out = v;
    MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return out;
}

void dist_bcast(void *buf, size_t n) {
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t m = n - off < CHUNK ? n - off : CHUNK;
        MPI_Bcast((char *)buf + off, (int)m, MPI_BYTE, 0, MPI_COMM_WORLD);
    }
}

void dist_barrier(void) { MPI_Barrier(MPI_COMM_WORLD); }

int dist_all_equal(const void *buf, size_t n) {
    // Compare (length, crc) pairs: min and max over ranks agree iff all equal.
    int64_t mine[2] = {(int64_t)n, (int64_t)hax_crc32c(0, buf, n)};
    int64_t lo[2], hi[2];
    MPI_Allreduce(mine, lo, 2, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(mine, hi, 2, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    return lo[0] == hi[0] && lo[1] == hi[1];
}

void dist_die(const hax_dist *d, const char *msg) {
    if (d->rank == 0) {
        fprintf(stderr, "hax: %s\n", msg);
        fflush(stderr);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Finalize();
    exit(HAX_EXIT_ERROR);
}
