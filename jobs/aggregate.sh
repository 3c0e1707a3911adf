#!/usr/bin/env bash
# aggregate.sh RESULTS: the sweep's last job (afterany: the training array):
# hax-aggregate reads every RESULTS/**/result.json and writes, next to the
# results, table.md (the Table 1 layout with the paper's numbers beside ours),
# table.csv, table.json and the plots in RESULTS/plots/. Runnable by hand at
# any time, also while the array runs (incomplete runs are listed in the
# table's footer). Environment: HAX_ROOT (default: the submit folder).
#SBATCH --job-name=hax-aggregate
set -u

say() { echo "aggregate.sh $(date '+%F %T'): $*"; }
fail() { say "error: $*" >&2; exit 1; }

[ $# -eq 1 ] || fail "usage: aggregate.sh RESULTS"
results=$1
root=${HAX_ROOT:-${SLURM_SUBMIT_DIR:-.}}
agg=$root/bin/hax-aggregate
[ -x "$agg" ] || fail "$agg: expected the hax program (run make in HAX_ROOT=$root), found none"
[ -d "$results" ] || fail "$results: expected the sweep's results folder, found none"

# --output writes each table atomically (a reader never sees half a file) and
# keeps an existing one when nothing can be aggregated.
"$agg" --paper --plot "$results/plots" --output "$results/table.md" "$results" ||
    fail "hax-aggregate --paper --plot failed (message above)"
"$agg" --format csv --output "$results/table.csv" "$results" || fail "hax-aggregate --format csv failed (message above)"
"$agg" --format json --output "$results/table.json" "$results" || fail "hax-aggregate --format json failed (message above)"
say "wrote $results/table.md, table.csv, table.json and plots/"
cat "$results/table.md"
