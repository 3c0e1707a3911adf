// datagen_verify.c: hax-datagen --verify DIR. Re-reads a dataset and checks
// the manifest and headers (dataset_open), every section checksum, every
// sample's cell (the reference's order) and structure (sample_check), for
// the default generator that the sample is the one its stream gives, and
// that no two samples of the three splits are equal. Ranks share the shards.
#include <inttypes.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "data-gen/datagen.h"

#define MAX_REPORTS 10  // problems printed per rank (all are counted)

typedef struct {
    int rank;
    int64_t problems;
} report;

static void problem(report *rp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(report *rp, const char *fmt, ...) {
    if (rp->problems++ >= MAX_REPORTS) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "hax: verify: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

// The stored sample at global position g (train, valid, test concatenated).
static int sample_at(const hax_dataset *ds, int64_t g, int32_t *tok, uint8_t *mask, int *split, int64_t *index) {
    int s = 0;
    while (s < HAX_N_SPLITS - 1 && g >= dataset_size(ds, s)) g -= dataset_size(ds, s++);
    *split = s;
    *index = g;
    return dataset_sample(ds, s, g, tok, mask, NULL);
}

static void check_shard(const hax_dataset *ds, const hax_shard *sh, sample_ctx *c, report *rp, uint64_t (*hashes)[2],
                        int32_t *tok, uint8_t *mask, int32_t *regen, uint8_t *regen_mask) {
    const hax_data_params *p = dataset_params(ds);
    char err[512];
    if (shard_check_crc(sh, err, sizeof err)) problem(rp, "%s", err);
    const char *split = hax_split_names[sh->split];
    for (uint32_t i = 0; i < sh->h.n_samples; i++) {
        int64_t idx = (int64_t)sh->h.first_index + i;
        int sizes[HAX_MAX_LEVELS], want[HAX_MAX_LEVELS], attempt;
        int len = shard_sample(sh, i, tok, mask, sizes, &attempt);
        sample_hash(tok, len, hashes[i]);
        data_cell_of(p, idx, want);
        if (memcmp(sizes, want, (size_t)p->levels * sizeof(int)) != 0) {
            problem(rp, "%s: %s sample %" PRId64 ": cell %dx%d, expected %dx%d (the reference's order)", sh->path,
                    split, idx, sizes[0], p->levels > 1 ? sizes[1] : 0, want[0], p->levels > 1 ? want[1] : 0);
            continue;
        }
        if (sample_check(c, sizes, tok, mask, len, err, sizeof err)) {
            problem(rp, "%s: %s sample %" PRId64 ": %s", sh->path, split, idx, err);
            continue;
        }
        if (!p->compat) {
            int n = sample_generate(c, sizes, (int)sh->split, idx, attempt, regen, regen_mask);
            if (n != len || memcmp(regen, tok, (size_t)len * sizeof(int32_t)) != 0)
                problem(rp, "%s: %s sample %" PRId64 ": differs from the generator's sample for (seed %" PRIu64
                        ", attempt %d)", sh->path, split, idx, p->seed, attempt);
        }
    }
}

int datagen_verify(const char *dir, int rank, int n_ranks) {
    double t0 = hax_now();
    char err[1024] = "";
    hax_dataset *ds = dataset_open(dir, err, sizeof err);
    int bad_open = ds == NULL;
    MPI_Allreduce(MPI_IN_PLACE, &bad_open, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (bad_open) {
        if (rank == 0) datagen_error("verify: %s", err[0] ? err : "another rank could not open the dataset");
        dataset_close(ds);
        return HAX_EXIT_ERROR;
    }
    const hax_data_params *p = dataset_params(ds);
    // Shards in global order; rank k takes those starting in [N k / R, N (k+1) / R).
    int64_t n_total = 0;
    for (int s = 0; s < HAX_N_SPLITS; s++) n_total += dataset_size(ds, s);
    int *counts = xcalloc((size_t)n_ranks, sizeof(int)), *displs = xcalloc((size_t)n_ranks, sizeof(int));
    int64_t my_first = 0, my_n = 0;
    for (int k = 0; k < n_ranks; k++) {
        int64_t lo = n_total * k / n_ranks, hi = n_total * (k + 1) / n_ranks, g = 0, a = -1, b = 0;
        for (int s = 0; s < HAX_N_SPLITS; s++)
            for (int i = 0; i < dataset_n_shards(ds, s); i++) {
                const hax_shard *sh = dataset_shard(ds, s, i);
                if (g >= lo && g < hi) {
                    if (a < 0) a = g;
                    b = g + sh->h.n_samples;
                }
                g += sh->h.n_samples;
            }
        if (a < 0) a = b = 0;
        if (n_total > INT32_MAX) hax_die("verify: more than 2^31 samples: not supported");
        counts[k] = (int)(b - a);
        displs[k] = (int)a;
        if (k == rank) my_first = a, my_n = b - a;
    }
    uint64_t(*hashes)[2] = xmalloc((size_t)(my_n + 1) * sizeof *hashes);
    int pad = dataset_pad_len(ds);
    int32_t *tok = xmalloc((size_t)pad * 2 * sizeof(int32_t));
    uint8_t *mask = xmalloc((size_t)pad * 2);
    sample_ctx c;
    sample_ctx_init(&c, p);
    report rp = {.rank = rank};
    int64_t g = 0;
    for (int s = 0; s < HAX_N_SPLITS; s++)
        for (int i = 0; i < dataset_n_shards(ds, s); i++) {
            const hax_shard *sh = dataset_shard(ds, s, i);
            if (g >= my_first && g < my_first + my_n)
                check_shard(ds, sh, &c, &rp, hashes + (g - my_first), tok, mask, tok + pad, mask + pad);
            g += sh->h.n_samples;
        }
    // Uniqueness: rank 0 looks for equal hashes, then compares those samples in full.
    MPI_Datatype h128;
    MPI_Type_contiguous(2, MPI_UINT64_T, &h128);
    MPI_Type_commit(&h128);
    uint64_t(*all)[2] = rank == 0 ? xmalloc((size_t)(n_total + 1) * sizeof *all) : NULL;
    MPI_Gatherv(hashes, (int)my_n, h128, all, counts, displs, h128, 0, MPI_COMM_WORLD);
    MPI_Type_free(&h128);
    if (rank == 0) {
        int64_t n_rep, *first, *rep = hash_repeats((const uint64_t(*)[2])all, n_total, &n_rep, &first);
        for (int64_t q = 0; q < n_rep; q++) {
            int sa, sb;
            int64_t ia, ib;
            int la = sample_at(ds, first[q], tok, mask, &sa, &ia);
            int lb = sample_at(ds, rep[q], tok + pad, mask + pad, &sb, &ib);
            if (la == lb && memcmp(tok, tok + pad, (size_t)la * sizeof(int32_t)) == 0)
                problem(&rp, "%s: %s sample %" PRId64 " equals %s sample %" PRId64 " (samples must be unique)", dir,
                        hax_split_names[sb], ib, hax_split_names[sa], ia);
        }
        free(rep);
        free(first);
        free(all);
    }
    int64_t total = rp.problems;
    MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        if (total)
            datagen_error("verify: %s: %" PRId64 " problem%s found", dir, total, total == 1 ? "" : "s");
        else
            printf("hax-datagen: verify %s: OK: %" PRId64 " samples (%" PRId64 "/%" PRId64 "/%" PRId64 "), checksums, "
                   "cells, structure, %sunique; %.2f s\n", dir, n_total, dataset_size(ds, 0), dataset_size(ds, 1),
                   dataset_size(ds, 2), p->compat ? "" : "generator streams, ", hax_now() - t0);
        fflush(stdout);
    }
    sample_ctx_free(&c);
    free(hashes);
    free(tok);
    free(mask);
    free(counts);
    free(displs);
    dataset_close(ds);
    return total ? HAX_EXIT_ERROR : HAX_EXIT_OK;
}
