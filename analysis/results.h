// results.h: reading the result.json files that hax-train writes into
// results/<arch>/lr_<lr>/seed_<seed>/, and finding them under a folder.
// JSON is read with libyaml (JSON is YAML flow syntax). Extra fields are
// ignored; a missing or mistyped required field makes the file unreadable
// (a reason string), never a crash.
#ifndef HAX_RESULTS_H
#define HAX_RESULTS_H

#include <stdint.h>

// Accuracy of one (n_c, n_k) cell of the dataset, a fraction in [0, 1].
typedef struct {
    int n_c, n_k;
    double acc;
} hax_cell_acc;

typedef struct {
    hax_cell_acc *v;
    int n;
} hax_cells;

// RUN_STALE: "running" in the file, but its heartbeat is older than the
// limit (results_mark_stale): no live process writes it any more.
typedef enum { RUN_COMPLETE = 0, RUN_RUNNING, RUN_FAILED, RUN_PREEMPTED, RUN_STALE } hax_run_status;

typedef struct {
    char path[1024];         // the result.json file
    hax_run_status status;
    char status_name[32];
    // The architecture: its label groups runs (config.output.arch, else the
    // top-level "label", else the folder name results/<label>/lr_*/seed_*);
    // the rest places it in Table 1.
    char label[128];
    char model[16];          // mamba | mamba2 | samba ("" when the config lacks it)
    char pattern[64];        // sparse pattern, "none" for no sparse branch ("" unknown)
    char precision[16];      // train.precision (fp32 when absent); a non-fp32 label ends in "@<precision>"
    int hidden_size;         // 0: unknown
    int n_layers;            // 0: unknown
    int sparse_keys;         // 0: unknown
    double lr;
    uint64_t seed;
    // Metrics (fractions in [0, 1]); NaN when absent. Required for a
    // complete run: best_valid_acc and test_acc.
    double best_valid_acc, test_acc, test_acc_reference;
    int64_t best_step, steps;  // -1 when absent
    int64_t steps_planned;     // train.steps of the run (result.json "steps_planned"); -1 when absent
    double heartbeat;          // unix seconds of the writer's last sign of life; NaN when absent
    hax_cells valid_cells, test_cells;  // per-cell accuracies (may be empty)
    hax_cells test_ref_cells;           // per-cell test accuracies, reference style (may be empty)
} hax_run;

// Reads one result.json into run. Returns 0, or -1 with the reason in err
// ("test_acc: expected a number in [0, 1], found 'abc'"). run needs
// results_run_free either way.
int results_read_file(const char *path, hax_run *run, char *err, int errlen);
// The same from JSON text in memory (path is used for the folder-name
// fallbacks of label, lr and seed).
int results_read_text(const char *path, const char *text, size_t len, hax_run *run, char *err, int errlen);
void results_run_free(hax_run *run);
// Marks a "running" run whose heartbeat is more than max_age seconds before
// now as RUN_STALE (status_name "stale"); max_age <= 0 or no heartbeat: no
// change. Returns 1 when it marked the run.
int results_mark_stale(hax_run *run, double now, double max_age);

// Every file named result.json under dir (recursively; symbolic links to
// folders are not followed), sorted by path. Returns the count, or -1 with a
// reason in err when dir is not a readable folder. *paths: free each and the
// array. progress: draw a count on stderr while walking (a tty).
int results_find(const char *dir, char ***paths, int progress, char *err, int errlen);

#endif
