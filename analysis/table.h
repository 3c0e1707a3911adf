// table.h: printing an aggregated summary as Markdown (Table 1 layout, the
// other architectures, every learning rate, the footer), CSV (one row per
// architecture and learning rate) or JSON (everything). Accuracies are
// printed in percent.
#ifndef HAX_TABLE_H
#define HAX_TABLE_H

#include <stdio.h>

#include "analysis/aggregate.h"

// paper: add the paper's Table 1 numbers beside ours.
void table_markdown(FILE *out, const hax_summary *s, int paper);
void table_csv(FILE *out, const hax_summary *s, int paper);
void table_json(FILE *out, const hax_summary *s, int paper);
// The footer as plain lines (the CSV format prints it on stderr).
void table_footer_lines(FILE *out, const hax_summary *s, const char *prefix);

#endif
