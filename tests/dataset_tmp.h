// dataset_tmp.h: the frame of the tests that generate datasets
// (test_dataset.c, test_train_prefetch.c, test_eval_batch.c): MPI and a
// temporary folder `root` around the tests, and a small dataset generated
// into it.
#ifndef HAX_TESTS_DATASET_TMP_H
#define HAX_TESTS_DATASET_TMP_H

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "data-gen/datagen.h"
#include "src/core/common.h"
#include "test.h"

static char root[256];

// MPI_Init, then a fresh /tmp/NAME.XXXXXX as root.
static inline void tmp_root_begin(int *argc, char ***argv, const char *name) {
    MPI_Init(argc, argv);
    snprintf(root, sizeof root, "/tmp/%s.XXXXXX", name);
    if (!mkdtemp(root)) hax_die("mkdtemp failed");
}

// Removes root, prints "N passed, N failed", MPI_Finalize; returns main's status.
static inline int tmp_root_end(void) {
    if (!test_remove_dir(root)) hax_warn("could not remove %s", root);
    int rc = test_summary();
    MPI_Finalize();
    return rc;
}

// 6 cells (n_c 2..4, n_k 3..4) of n_value values; per cell 30 train, 5
// valid and 4 test samples: 180 train samples, 2 full batches of 64 and one of 52.
static inline void params_small(hax_data_params *p, int n_value) {
    memset(p, 0, sizeof *p);
    p->levels = 2;
    p->min_size[0] = 2, p->max_size[0] = 4;  // 3 x 2 = 6 cells
    p->min_size[1] = 3, p->max_size[1] = 4;
    p->n_value = n_value;
    p->n_per_cell[SPLIT_TRAIN] = 30;
    p->n_per_cell[SPLIT_VALID] = 5;
    p->n_per_cell[SPLIT_TEST] = 4;
    p->seed = 11;
}

// Generates a dataset into root/name (one rank) and returns its path.
static inline const char *make_dataset(const char *name, const hax_data_params *p, int64_t shard_size) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", root, name);
    datagen_opts o = {.p = *p, .out = path, .shard_size = shard_size, .format = FORMAT_SHARDS, .force = 1};
    int rc = datagen_run(&o, 0, 1);  // prints its final line
    CHECK(rc == 0, "datagen_run %s: %d", name, rc);
    return path;
}

#endif
