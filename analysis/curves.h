// curves.h: validation curves, read from the metrics.csv that hax-train
// writes beside each result.json (columns step,loss,gate_loss,train_acc,lr,
// valid_acc; valid_acc empty on rows without a validation), one curve per
// run: (step, validation accuracy) at every validation.
//
// Rules (the README's "Aggregating" section repeats them):
//   - every readable run is drawn, whatever its status (a preempted 400,000-
//     step run shows how far it got); a second run of the same (label, lr,
//     seed) is a duplicate and left out, as in the tables;
//   - a malformed metrics.csv is skipped with one warning line naming the
//     file, the line and what was expected; runs without a metrics.csv are
//     counted in one warning; the rest are still drawn (as unreadable
//     result.json files are listed in the footer and the rest aggregate).
#ifndef HAX_CURVES_H
#define HAX_CURVES_H

#include <stdint.h>

#include "analysis/results.h"

typedef struct {
    int64_t step;
    double acc;  // a fraction in [0, 1]
} hax_point;

typedef struct {
    char label[128];      // the architecture label (non-fp32: ends in "@<precision>")
    char base[128];       // the label without its "@<precision>"
    char precision[16];   // fp32, bf16-pure or bf16
    char status[32];      // the run's status (complete, preempted, ...)
    double lr;
    uint64_t seed;
    int64_t steps;        // steps done (result.json); -1 unknown
    int selected;         // drawn in curves.svg (--curves)
    hax_point *v;         // ascending step
    int n;
} hax_curve;

typedef struct {
    hax_curve *v;         // sorted by base label, regime (fp32, bf16-pure, bf16), lr, seed
    int n;
} hax_curves;

// The validation points of one metrics.csv. Returns the count (0: no
// validation yet), or -1 with "line 7: valid_acc: expected ..." in err
// (err starts with "missing" when the file does not exist). *v: free it.
int metrics_read_file(const char *path, hax_point **v, char *err, int errlen);
// The same from text in memory.
int metrics_read_text(const char *text, size_t len, hax_point **v, char *err, int errlen);

// The curves of runs (read successfully), from the metrics.csv beside each
// result.json. select marks the curves of curves.svg: NULL for every run,
// else a comma-separated list of labels; a label without "@" selects that
// architecture in every regime ("mamba2_hax" also takes
// "mamba2_hax@bf16-pure"). Warnings go to stderr.
void curves_load(const hax_run *runs, int n_runs, const char *select, hax_curves *out);
void curves_free(hax_curves *c);

// The legend text of a curve: "mamba2_hax@fp32, lr 0.001, seed 1" plus the
// status when not complete (", preempted at step 12000").
void curve_name(const hax_curve *c, char *buf, int len);

#endif
