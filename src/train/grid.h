// grid.h: a sweep's grid file (configs/grid_*.yaml) and the one mapping from
// a Slurm array index to a run: (architecture config, learning rate, seed).
//
// A grid file is YAML:
//   configs: [mamba.yaml, mamba_hax.yaml, ...]   # architectures, relative to the grid file's folder
//   lrs: [3e-3, 1e-3, 3e-4]                      # train.lr of each run
//   seeds: [1, 2, 3]                             # train.seed of each run
//   overrides: [train.steps=1000]                # optional: applied to every run
// Entry i of the N = configs x lrs x seeds runs has the seed cycling fastest,
// then the learning rate, then the config:
//   seed = i % n_seeds, lr = (i / n_seeds) % n_lrs, config = i / (n_seeds * n_lrs).
// hax-train's arguments for entry i are the config path, then the grid's
// overrides, then train.lr=<as written> and train.seed=<as written>.
#ifndef HAX_GRID_H
#define HAX_GRID_H

#include <stdint.h>

#include "src/config/config.h"

typedef struct {
    char path[HAX_PATH_MAX];  // the grid file
    int n_configs, n_lrs, n_seeds, n_overrides;
    char **configs;           // paths, resolved against the grid file's folder
    char **lrs;               // as written in the file (checked to be numbers in (0, 1])
    char **seeds;             // as written (checked to be integers >= 0)
    char **overrides;         // "section.field=value"
} hax_grid;

// Reads and checks the grid file (shape, types, no empty list, no value
// twice). Configs are not loaded here (grid_check does). Returns 0, or -1
// with one line "FILE:LINE: key: expected ..., found ..." in err.
int grid_load(hax_grid *g, const char *path, char *err, int errlen);
void grid_free(hax_grid *g);

// Number of runs: n_configs * n_lrs * n_seeds.
int64_t grid_size(const hax_grid *g);
// Entry index -> (config, lr, seed) positions. index must be in [0, grid_size).
void grid_entry(const hax_grid *g, int64_t index, int *config, int *lr, int *seed);

// hax-train's arguments (after the program name) for entry `index`: the
// config path then the overrides. Fills argv (pointers into g and buf);
// returns the count, or -1 when they do not fit max / buflen.
int grid_train_args(const hax_grid *g, int64_t index, const char **argv, int max, char *buf, int buflen);

// Loads the resolved config of entry `index` (its file with the grid's
// overrides, lr and seed), output.root replaced by `results` when non-NULL.
// 0, or -1 with the config's message in err.
int grid_load_entry(const hax_grid *g, int64_t index, const char *results, hax_config *c, char *err, int errlen);

// Loads every entry's config and checks the grid as a whole: every entry has
// its own run folder, configs that share a dataset folder ask for the same
// dataset, and a dataset already there (manifest.yaml) opens and was made with
// the config's generator options. 0, or -1 with one line in err.
int grid_check(const hax_grid *g, const char *results, char *err, int errlen);

// hax-datagen's options that make the dataset a config expects (without
// --out), as one line: "--levels 2 --level-sizes 2:6,2:6 --n-value 16 ...".
void grid_datagen_options(const hax_data_params *p, char *buf, int buflen);

#endif
