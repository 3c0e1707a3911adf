// dist.h: the ranks of a run. Works under mpirun, under srun (PMIx), and
// with no launcher at all (one rank). The CPU backend sums gradients with
// MPI_Allreduce; the CUDA backend adds an NCCL communicator on top.
#ifndef HAX_DIST_H
#define HAX_DIST_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int rank, size;          // over all processes of the run
    int local_rank, local_size;  // within this node (device choice)
} hax_dist;

// MPI_Init (thread level FUNNELED) and the rank layout. Call once.
void dist_init(hax_dist *d, int *argc, char ***argv);
void dist_finalize(void);

// In-place sums over all ranks (every rank gets the result).
void dist_allreduce_sum_f32(float *buf, size_t n);
void dist_allreduce_sum_f64(double *buf, size_t n);
void dist_allreduce_sum_i64(int64_t *buf, size_t n);
// Largest value over ranks (e.g. "did any rank see a non-finite loss").
int dist_allreduce_max_int(int v);

// Broadcasts n bytes from rank 0.
void dist_bcast(void *buf, size_t n);
void dist_barrier(void);

// Every rank passes the same kind of value (a config's bytes, a dataset's
// checksum); returns 1 when all ranks hold equal bytes, 0 otherwise.
// Never hangs on a mismatch: the check is a reduction, not a wait.
int dist_all_equal(const void *buf, size_t n);

// Dies on every rank with the same message (rank 0 prints it).
void dist_die(const hax_dist *d, const char *msg) __attribute__((noreturn));

#endif
