// aggregate.h: result.json runs -> per-architecture statistics: group by
// architecture label and learning rate, average over seeds, pick the
// learning rate with the best mean validation accuracy, place the
// architecture in the paper's Table 1, and collect the footer (unreadable
// files, incomplete runs, missing seeds).
//
// Rules (the README's "Aggregating" section repeats them):
//   - only runs with status "complete" are averaged; others go to the footer,
//     with the steps they did and their best validation accuracy so far;
//   - the chosen learning rate has the highest mean best_valid_acc over its
//     seeds; means within 1e-9 of each other tie, and a tie goes to the
//     smaller learning rate;
//   - std is the sample standard deviation (divisor n-1); undefined (NaN)
//     for a single seed;
//   - a second complete run of the same (label, lr, seed) is a duplicate:
//     footer, not averaged;
//   - two precision regimes never meet in one average: a non-fp32 run's
//     label ends in "@<precision>", and each regime has its own Table 1
//     (or only the one asked for; the others are then listed below it).
#ifndef HAX_AGGREGATE_H
#define HAX_AGGREGATE_H

#include "analysis/results.h"

typedef enum { METRIC_TEST = 0, METRIC_TEST_REFERENCE = 1 } hax_metric;

#define TABLE1_ROWS 10
#define TABLE1_COLS 2

typedef struct {
    double lr;
    int n;                 // complete runs averaged (one per seed)
    uint64_t *seeds;       // ascending
    double valid_mean, valid_std;  // fractions
    double test_mean, test_std;    // the chosen metric, fractions
    hax_cells cells;       // per-cell test accuracy, mean over the runs that have the cell; sorted (n_c, n_k)
} hax_lr_stats;

typedef struct {
    char label[128], model[16], pattern[64];
    char precision[16];    // the regime of its runs (train.precision): fp32, bf16-pure or bf16
    int hidden_size, n_layers, sparse_keys;  // 0: unknown
    int row, col;          // Table 1 place in its regime's table; -1 outside it
    hax_lr_stats *lrs;     // ascending learning rate
    int n_lrs;
    int best;              // index of the chosen learning rate
} hax_arch_stats;

typedef struct {
    char *path;
    char *text;
    char *detail;  // NULL, or (incomplete runs) how far it got: "step 40000 of 400000, best
                   // validation accuracy 32.94% at step 39999"
} hax_note;

typedef struct {
    hax_metric metric;
    char precision[16];       // the one regime Table 1 holds (--precision); "": one Table 1 per regime
    int n_files;              // result.json files found
    int n_runs;               // complete runs averaged in
    hax_arch_stats *archs;    // Table 1 places first (row, column), then the others by label
    int n_archs;
    hax_note *unreadable;     // path + reason
    int n_unreadable;
    hax_note *incomplete;     // path + status
    int n_incomplete;
    hax_note *missing;        // label + what is missing (path: the label)
    int n_missing;
} hax_summary;

// Aggregates runs (read successfully; their paths and statuses as read).
// Notes already in s (unreadable files) are kept. s must start zeroed
// except for metric, n_files and those notes.
void aggregate_runs(const hax_run *runs, int n_runs, hax_summary *s);
void summary_note(hax_note **v, int *n, const char *path, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void summary_free(hax_summary *s);

// Table 1: the row names ("Base", "+D", ..., "Samba"), the column names
// ("Mamba", "Mamba2"), the paper's numbers in percent (NaN where the paper
// has none), and the canonical config label of each place ("mamba_hax"; NULL
// where empty).
const char *table1_row_name(int row);
const char *table1_col_name(int col);
double table1_paper(int row, int col);
const char *table1_label(int row, int col);
// The regimes in table order (fp32, bf16-pure, bf16), and a name's position
// in that order (-1 for another name; "" counts as fp32).
#define N_REGIMES 3
const char *regime_name(int i);
int regime_index(const char *precision);
// The regimes that have a Table 1 in this summary, in table order: the one
// asked for, else every regime with at least one placed architecture (fp32
// when none has). Returns the count; out[] gets regime indices.
int summary_regimes(const hax_summary *s, int out[N_REGIMES]);
// The Table 1 place of an architecture: by its config (model, pattern,
// hidden size, layers, keys; 0 or "" = unknown, which matches) when the
// model is known, else by its label. 1 and *row, *col set, or 0.
int table1_place(const char *label, const char *model, const char *pattern, int hidden_size, int n_layers,
                 int sparse_keys, int *row, int *col);

#endif
