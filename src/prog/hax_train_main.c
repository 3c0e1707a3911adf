// hax-train: trains one model of a YAML config on every MPI rank it is
// started with (mpirun, srun, or none), and leaves a resumable record in
// <root>/<arch>/lr_<lr>/seed_<seed>/ (src/train/train.h).
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "src/core/common.h"
#include "src/config/config.h"
#include "data-gen/datagen.h"
#include "src/io/dataset.h"
#include "mpi/dist.h"
#include "src/train/init.h"
#include "src/train/train.h"

static const char *usage =
    "usage: hax-train CONFIG.yaml [section.field=value ...] [--force] [--results DIR] [--save-init FILE]\n"
    "\n"
    "Trains the model of CONFIG (the reference's protocol; README \"Training\") on all ranks it is\n"
    "started with, and writes result.json, metrics.csv, best.safetensors and checkpoint.safetensors\n"
    "into RESULTS/<arch>/lr_<lr>/seed_<seed>/. A folder holding a checkpoint is resumed; one whose\n"
    "result.json is complete is skipped.\n"
    "\n"
    "  section.field=value   override a config field (train.lr=3e-4 train.seed=2 ...)\n"
    "  --force               start over: ignore a complete result and the checkpoint\n"
    "  --results DIR         the results root (output.root)\n"
    "  --save-init FILE      write the weights a fresh run's first step starts from (the seed's init, or\n"
    "                        train.init_from's) to FILE (safetensors, F32) and exit without training\n"
    "  --help                this text\n"
    "\n"
    "exit status: 0 done (or skipped), 1 error, 2 usage, 3 stopped by SIGTERM/SIGUSR1 after writing a\n"
    "checkpoint (run it again to resume)\n";

static hax_dist dist;

static void usage_error(const char *fmt, const char *arg) __attribute__((noreturn));
static void usage_error(const char *fmt, const char *arg) {
    if (dist.rank == 0) {
        fprintf(stderr, "hax: ");
        fprintf(stderr, fmt, arg);
        fprintf(stderr, " (see hax-train --help)\n");
    }
    dist_finalize();
    exit(HAX_EXIT_USAGE);
}

static double parse_num(const char *opt, const char *v) {
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    if (!v[0] || *end || errno || x < 0) usage_error("%s: expected a non-negative number", opt);
    return x;
}

// OpenMP threads, unless OMP_NUM_THREADS says otherwise: the node's cores
// shared among its ranks (one each when ranks fill it), and no more than one
// per 4096 tokens of a step's slice: below that the threads' synchronisation
// costs more than it saves (the tiny config runs 6x slower on 2 busy cores
// with 2 threads than with 1). Results do not depend on the thread count;
// BLAS stays on one thread (the engine sets that itself).
static void set_threads(const hax_config *cfg, const hax_dataset *ds) {
    if (getenv("OMP_NUM_THREADS")) return;
    int n = omp_get_num_procs() / (dist.local_size > 0 ? dist.local_size : 1);
    int64_t slice = (cfg->train.batch_size + dist.size - 1) / dist.size;
    int64_t by_work = slice * (dataset_pad_len(ds) - 1) / 4096;
    if (n > by_work) n = (int)by_work;
    omp_set_num_threads(n < 1 ? 1 : n);
}

// Every rank must resolve the same config. On a mismatch each rank compares
// its config with rank 0's, and the lowest differing rank names the first
// differing field: one error line on every rank, never a hang.
static void check_same_config(const hax_config *cfg, const char *text) {
    if (dist_all_equal(text, strlen(text))) return;
    int64_t len = (int64_t)strlen(text);
    dist_bcast(&len, sizeof len);
    char *root_text = xmalloc((size_t)len + 1);
    if (dist.rank == 0) memcpy(root_text, text, (size_t)len + 1);
    dist_bcast(root_text, (size_t)len + 1);
    int differs = strcmp(root_text, text) != 0;
    hax_config root;
    char err[2048], diff[1200] = "the printed configs differ", mine[32];
    snprintf(mine, sizeof mine, "rank %d", dist.rank);
    if (differs && config_load_text(&root, "rank 0's config", root_text, (size_t)len, NULL, 0, err, sizeof err) == 0)
        config_first_difference(&root, cfg, "rank 0", mine, diff, sizeof diff);
    snprintf(err, sizeof err,
             "config: expected every rank to resolve rank 0's config, found another on rank %d (%s); are the config "
             "file and the arguments the same on every node?",
             dist.rank, diff);
    free(root_text);
    train_check_all(&dist, differs, err, HAX_EXIT_ERROR);
}

// Opens (generating it first where the config allows) and checks the dataset.
static hax_dataset *open_dataset(const hax_config *cfg) {
    char manifest[HAX_PATH_MAX + 32], err[2048] = "";
    snprintf(manifest, sizeof manifest, "%s/manifest.yaml", cfg->data.path);
    // Runs of a sweep may start together on a missing dataset: rank 0 of each
    // holds a lock on the parent folder while it looks and generates, so one
    // generates and the others then find the dataset.
    int lock = -1;
    if (dist.rank == 0 && cfg->data.generate) {
        char parent[HAX_PATH_MAX];
        snprintf(parent, sizeof parent, "%s", cfg->data.path);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) *slash = 0;
        else snprintf(parent, sizeof parent, "%s", slash ? "/" : ".");
        hax_mkdir_p(parent);
        lock = open(parent, O_RDONLY | O_DIRECTORY);
        if (lock >= 0) flock(lock, LOCK_EX);
    }
    int missing = dist.rank == 0 ? access(manifest, F_OK) != 0 : 0;
    dist_bcast(&missing, sizeof missing);
    if (missing && !cfg->data.generate) {
        snprintf(err, sizeof err,
                 "data.path: expected a dataset (manifest.yaml) in %s, found none; generate it with hax-datagen or "
                 "set data.generate: true",
                 cfg->data.path);
        train_check_all(&dist, 1, err, HAX_EXIT_ERROR);
    }
    if (missing) {
        if (dist.rank == 0) printf("hax-train: no dataset in %s: generating it\n", cfg->data.path);
        datagen_opts o;
        memset(&o, 0, sizeof o);
        o.p = cfg->data.gen;
        o.out = cfg->data.path;
        o.shard_size = 32768;
        o.format = FORMAT_SHARDS;
        int rc = datagen_run(&o, dist.rank, dist.size);
        if (lock >= 0) close(lock);  // releases the lock
        lock = -1;
        if (rc) {
            dist_finalize();
            exit(rc);
        }
    }
    if (lock >= 0) close(lock);
    hax_dataset *ds = dataset_open(cfg->data.path, err, sizeof err);
    train_check_all(&dist, ds == NULL, err, HAX_EXIT_ERROR);
    int bad = train_check_dataset(ds, &cfg->data.gen, cfg->data.path, err, sizeof err);
    train_check_all(&dist, bad, err, HAX_EXIT_ERROR);
    bad = dataset_check_checksums(ds, dist.rank, dist.size, err, sizeof err) != 0;
    train_check_all(&dist, bad, err, HAX_EXIT_ERROR);
    return ds;
}

// --save-init FILE: rank 0 writes the initial weights; no dataset, no run folder.
static int write_init(const hax_config *cfg, const char *text, const char *path) {
    char err[2048] = "";
    int rc = 0;
    if (!path[0]) {
        snprintf(err, sizeof err, "--save-init: expected a file name, found an empty string");
        rc = -1;
    } else if (dist.rank == 0) {
        rc = train_save_init(cfg, text, path, err, sizeof err);
        if (!rc) printf("hax-train: wrote the initial weights (train.seed %llu%s%s) to %s\n",
                        (unsigned long long)cfg->train.seed, cfg->train.init_from[0] ? ", train.init_from " : "",
                        cfg->train.init_from, path);
        fflush(stdout);
    }
    train_check_all(&dist, rc != 0, err, HAX_EXIT_ERROR);
    dist_finalize();
    return HAX_EXIT_OK;
}

int main(int argc, char **argv) {
    // SIGTERM/SIGUSR1 from the very start: a job preempted while starting up
    // stops at the first step with a checkpoint and exit 3, not with 143
    // (installed again after MPI_Init, should the MPI library replace them)
    train_install_signals();
    dist_init(&dist, &argc, &argv);
    train_install_signals();
    train_opts o;
    memset(&o, 0, sizeof o);
    const char *config_path = NULL, *results = NULL, *save_init = NULL;
    const char **over = xcalloc((size_t)argc + 1, sizeof(char *));
    int n_over = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (dist.rank == 0) fputs(usage, stdout);
            dist_finalize();
            return HAX_EXIT_OK;
        } else if (!strcmp(a, "--force")) {
            o.force = 1;
        } else if (!strcmp(a, "--results") || !strcmp(a, "--save-init") || !strcmp(a, "--stop-after-step") ||
                   !strcmp(a, "--slow-step") || !strcmp(a, "--nan-at-step")) {
            if (i + 1 >= argc) usage_error("%s: expected a value, found none", a);
            const char *v = argv[++i];
            if (!strcmp(a, "--results")) results = v;
            else if (!strcmp(a, "--save-init")) save_init = v;
            else if (!strcmp(a, "--stop-after-step")) o.stop_after_step = (int64_t)parse_num(a, v);
            else if (!strcmp(a, "--nan-at-step")) o.nan_at_step = (int64_t)parse_num(a, v);
            else o.slow_step = parse_num(a, v);  // test hooks, not in --help
        } else if (a[0] == '-') {
            usage_error("unknown option '%s'", a);
        } else if (strchr(a, '=')) {
            over[n_over++] = a;
        } else if (!config_path) {
            config_path = a;
        } else {
            usage_error("expected one CONFIG.yaml, found a second one: '%s'", a);
        }
    }
    if (!config_path) usage_error("%sexpected a CONFIG.yaml argument, found none", "");
    char rev[64];
    train_env_git_revision(rev, sizeof rev);  // a bad HAX_GIT_REVISION stops here, before anything is written

    hax_config cfg;
    char err[2048] = "";
    int bad = config_load(&cfg, config_path, over, n_over, err, sizeof err) != 0;
    if (!bad && results) {
        if (!results[0]) {  // an empty root would put the run under / (as output.root, it needs a character)
            snprintf(err, sizeof err, "--results: expected a folder, found an empty string");
            bad = 1;
        } else if (strlen(results) >= sizeof cfg.output.root) {
            snprintf(err, sizeof err, "--results: expected a path shorter than %zu bytes, found %zu bytes",
                     sizeof cfg.output.root, strlen(results));
            bad = 1;
        } else {
            snprintf(cfg.output.root, sizeof cfg.output.root, "%s", results);
        }
    }
    train_check_all(&dist, bad, err, HAX_EXIT_ERROR);
    int use_cuda = train_pick_device(&cfg, err, sizeof err);
    train_check_all(&dist, use_cuda < 0, err, HAX_EXIT_ERROR);
    // every rank must take the same backend (auto could differ across nodes)
    train_check_all(&dist, dist_allreduce_max_int(use_cuda) != use_cuda,
                    "train.device: auto chose cuda on some ranks and cpu on others (set device: cpu or cuda)",
                    HAX_EXIT_ERROR);
    char *text = config_to_string(&cfg);
    check_same_config(&cfg, text);
    if (dist.rank == 0) {
        printf("hax-train: config %s%s (device %s -> %s)\n%s", config_path, n_over ? " with overrides" : "",
               config_device_name(cfg.train.device), use_cuda ? "cuda" : "cpu", text);
        fflush(stdout);
    }
    if (save_init) return write_init(&cfg, text, save_init);
    o.cfg = &cfg;
    o.use_cuda = use_cuda;
    o.config_text = text;
    o.config_path = config_path;
    o.dist = &dist;
    config_run_dir(&cfg, o.run_dir, sizeof o.run_dir);
    if (!o.force && train_result_complete(o.run_dir)) {
        if (dist.rank == 0) printf("hax-train: %s is complete (result.json); skipped (--force runs it again)\n", o.run_dir);
        dist_finalize();
        return HAX_EXIT_OK;
    }
    o.ds = open_dataset(&cfg);
    set_threads(&cfg, o.ds);
    int rc = train_run(&o);
    dataset_close(o.ds);
    free(text);
    free(over);
    dist_finalize();
    return rc;
}
