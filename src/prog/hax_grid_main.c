// hax_grid_main.c: bin/hax-grid — reads a sweep's grid file (grid.h) for the
// job scripts: the grid's size, its list, hax-train's arguments of one array
// index, the datasets the grid needs, and a check of the whole grid.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/core/common.h"
#include "src/train/grid.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: hax-grid GRID [--results DIR] COMMAND\n"
            "\n"
            "Reads a sweep's grid file (configs x lrs x seeds, see configs/grid_table1.yaml). Run i of the\n"
            "N runs takes seed i %% n_seeds, lr (i / n_seeds) %% n_lrs, config i / (n_seeds n_lrs).\n"
            "\n"
            "commands:\n"
            "  --size        the number of runs N (Slurm array indices 0..N-1)\n"
            "  --list        one line per run: index, config, lr, seed, run folder\n"
            "  --args I      hax-train's arguments of run I, one per line (config, overrides, lr, seed)\n"
            "  --dir I       the run folder of run I\n"
            "  --check       load every run's config; check that each run has its own folder, that\n"
            "                configs sharing a dataset folder ask for the same dataset, and that a\n"
            "                dataset already there opens and was made with the configs' options\n"
            "  --datasets    one line per dataset folder: FOLDER, a tab, hax-datagen's options for it\n"
            "  --help        this text\n"
            "options:\n"
            "  --results DIR results root of the sweep (output.root of every run; default: the configs')\n");
}

// Parses a run index in [0, n) or exits with status 2.
static int64_t parse_index(const char *s, int64_t n, const char *grid) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < 0 || v >= n)
        hax_die_code(HAX_EXIT_USAGE, "%s: run index: expected an integer in 0..%lld, found '%s'", grid, (long long)n - 1,
                     s);
    return v;
}

static void load_or_die(const hax_grid *g, int64_t i, const char *results, hax_config *c) {
    char err[1024];
    if (grid_load_entry(g, i, results, c, err, sizeof err) != 0) hax_die("%s (run %lld of %s)", err, (long long)i, g->path);
}

int main(int argc, char **argv) {
    const char *grid_path = NULL, *results = NULL, *cmd = NULL, *arg = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--results") == 0 && i + 1 < argc) {
            results = argv[++i];
        } else if (strcmp(argv[i], "--args") == 0 || strcmp(argv[i], "--dir") == 0) {
            if (i + 1 >= argc) hax_die_code(HAX_EXIT_USAGE, "%s: expected a run index after it", argv[i]);
            if (cmd) hax_die_code(HAX_EXIT_USAGE, "expected one command, found %s and %s", cmd, argv[i]);
            cmd = argv[i];
            arg = argv[++i];
        } else if (strcmp(argv[i], "--size") == 0 || strcmp(argv[i], "--list") == 0 ||
                   strcmp(argv[i], "--check") == 0 || strcmp(argv[i], "--datasets") == 0) {
            if (cmd) hax_die_code(HAX_EXIT_USAGE, "expected one command, found %s and %s", cmd, argv[i]);
            cmd = argv[i];
        } else if (argv[i][0] == '-' || grid_path) {
            usage(stderr);
            hax_die_code(HAX_EXIT_USAGE, "expected GRID and one command, found '%s'", argv[i]);
        } else {
            grid_path = argv[i];
        }
    }
    if (!grid_path || !cmd) {
        usage(stderr);
        hax_die_code(HAX_EXIT_USAGE, "expected a grid file and a command");
    }
    hax_grid g;
    char err[1024];
    if (grid_load(&g, grid_path, err, sizeof err) != 0) hax_die("%s", err);
    int64_t n = grid_size(&g);
    hax_config *c = xmalloc(sizeof *c);
    char dir[HAX_PATH_MAX + 256];

    if (strcmp(cmd, "--size") == 0) {
        printf("%lld\n", (long long)n);
    } else if (strcmp(cmd, "--args") == 0) {
        int64_t i = parse_index(arg, n, grid_path);
        const char *args[64];
        char buf[1024];
        int k = grid_train_args(&g, i, args, 64, buf, sizeof buf);
        if (k < 0) hax_die("%s: expected at most 60 overrides and short lr/seed values", grid_path);
        for (int j = 0; j < k; j++) printf("%s\n", args[j]);
    } else if (strcmp(cmd, "--dir") == 0) {
        int64_t i = parse_index(arg, n, grid_path);
        load_or_die(&g, i, results, c);
        config_run_dir(c, dir, sizeof dir);
        printf("%s\n", dir);
    } else if (strcmp(cmd, "--list") == 0) {
        printf("%-5s %-28s %-8s %-6s %s\n", "index", "config", "lr", "seed", "run folder");
        for (int64_t i = 0; i < n; i++) {
            int ci, li, si;
            grid_entry(&g, i, &ci, &li, &si);
            load_or_die(&g, i, results, c);
            config_run_dir(c, dir, sizeof dir);
            printf("%-5lld %-28s %-8s %-6s %s\n", (long long)i, g.configs[ci], g.lrs[li], g.seeds[si], dir);
        }
    } else if (strcmp(cmd, "--check") == 0) {
        if (grid_check(&g, results, err, sizeof err) != 0) hax_die("%s", err);
        printf("%s: %lld runs (%d configs x %d lrs x %d seeds), every config loads\n", grid_path, (long long)n,
               g.n_configs, g.n_lrs, g.n_seeds);
    } else {  // --datasets: distinct dataset folders, in grid order
        char (*seen)[HAX_PATH_MAX] = xcalloc((size_t)g.n_configs, sizeof *seen);
        int n_seen = 0;
        for (int ci = 0; ci < g.n_configs; ci++) {
            load_or_die(&g, (int64_t)ci * g.n_lrs * g.n_seeds, results, c);
            int dup = 0;
            for (int j = 0; j < n_seen; j++) dup |= strcmp(seen[j], c->data.path) == 0;
            if (dup) continue;
            snprintf(seen[n_seen++], HAX_PATH_MAX, "%s", c->data.path);
            char opts[512];
            grid_datagen_options(&c->data.gen, opts, sizeof opts);
            printf("%s\t%s\n", c->data.path, opts);
        }
        free(seen);
    }
    free(c);
    grid_free(&g);
    return 0;
}
