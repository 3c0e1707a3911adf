// plot_svg.h: hand-written SVG figures of an aggregated summary, from the
// per-cell test accuracies at each architecture's chosen learning rate
// (mean over seeds):
//   acc_vs_n.svg          test accuracy against table size n = n_c * n_k,
//                         one line per architecture (cells with the same n
//                         averaged)
//   heatmap_<label>.svg   per architecture, accuracy over (n_c, n_k)
// and, from each run's metrics.csv (curves.h), validation accuracy against
// training step:
//   curves.svg            one line per run
//   curves_<label>.svg    per architecture with runs in several regimes
// Every file is written atomically. Architectures without per-cell
// accuracies are left out.
#ifndef HAX_PLOT_SVG_H
#define HAX_PLOT_SVG_H

#include "analysis/aggregate.h"
#include "analysis/curves.h"

// Writes the figures into dir (created when missing). Returns the number of
// files written, or -1 with a reason in err.
int plot_write_all(const char *dir, const hax_summary *s, char *err, int errlen);

// Writes the validation curves (metrics.csv) into dir: curves.svg, the
// selected curves (curves.h); curves_<label>.svg per architecture whose runs
// span several precision regimes, all its curves. Returns the number of
// files written (0 when there is no curve), or -1 with a reason in err.
int plot_write_curves(const char *dir, const hax_curves *c, char *err, int errlen);

// The accuracy-vs-n curve of one architecture: points sorted by n, each the
// mean over cells with that n. Returns the count; *n and *acc are new arrays.
int plot_curve(const hax_cells *cells, int **n, double **acc);

#endif
