#!/usr/bin/env bash
# datagen.sh GRID: generates every dataset the grid's configs need and that
# does not exist yet (a folder without manifest.yaml is not a dataset), with
# `srun hax-datagen` over all tasks of the allocation (the ranks share the
# samples), then checks it with `srun hax-datagen --verify`. Submitted by
# jobs/sweep.sh before the training array (which depends on it: afterok);
# runnable alone: sbatch -N 2 --ntasks-per-node 16 jobs/datagen.sh configs/grid_table1.yaml
# Environment: HAX_ROOT (the hax checkout; default: the submit folder).
#SBATCH --job-name=hax-datagen
set -u

say() { echo "datagen.sh $(date '+%F %T'): $*"; }
fail() { say "error: $*" >&2; exit 1; }

[ $# -eq 1 ] || fail "usage: datagen.sh GRID"
grid=$1
root=${HAX_ROOT:-${SLURM_SUBMIT_DIR:-.}}
for b in hax-grid hax-datagen; do
    [ -x "$root/bin/$b" ] || fail "$root/bin/$b: expected the hax program (run make in HAX_ROOT=$root), found none"
done
# Inside an allocation every step spans all of its tasks; outside one, one rank.
launch=()
[ -n "${SLURM_JOB_ID:-}" ] && launch=(srun --ntasks="${SLURM_NTASKS:-1}")
list=$("$root/bin/hax-grid" "$grid" --datasets) || fail "$grid: the grid does not load (message above)"
while IFS=$'\t' read -r dir opts; do
    [ -n "$dir" ] || continue
    if [ -f "$dir/manifest.yaml" ]; then
        say "$dir: exists (manifest.yaml); not generated again"
        continue
    fi
    read -r -a o <<<"$opts"
    # --force: a folder without manifest.yaml holds at most an interrupted attempt.
    say "$dir: generating with ${SLURM_NTASKS:-1} rank(s): hax-datagen --out $dir $opts"
    "${launch[@]}" "$root/bin/hax-datagen" --out "$dir" --force "${o[@]}" || fail "$dir: hax-datagen failed"
    "${launch[@]}" "$root/bin/hax-datagen" --verify "$dir" || fail "$dir: hax-datagen --verify found problems"
    say "$dir: generated and verified"
done <<<"$list"
say "every dataset of $grid is there"
