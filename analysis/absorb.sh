#!/usr/bin/env bash
# absorb.sh [--stopped-in-runs] COLLECTED DEST: takes what `jobs/table1_local.sh --collect
# COLLECTED --with-checkpoint --with-logs RESULTS` brought back from a GPU machine into a
# published results folder (analysis/results/table1, analysis/results/headline), so that
# the next call can resume from it and analysis/publish.sh can make the tables:
#
#   COLLECTED/<arch>[@<precision>]/lr_<lr>/seed_<seed>/  result.json, metrics.csv,
#             [checkpoint.safetensors, best.safetensors]  one folder per run
#   COLLECTED/logs/*.log, COLLECTED/progress.txt          the runs' logs, the driver's table
#
#   - a complete run: result.json, metrics.csv (and best.safetensors, if collected) into
#     DEST/runs/<run>/; its folder in DEST/resume/ (and a checkpoint in DEST/runs/<run>/)
#     goes, since nothing is left to resume;
#   - a stopped run with its checkpoint: result.json, metrics.csv, checkpoint.safetensors
#     (and best.safetensors) into DEST/resume/<run>/, or into DEST/runs/<run>/ with
#     --stopped-in-runs (the headline folder publishes runs on the way);
#   - each log: appended to DEST/logs/ (from the collected log's first `===` header on,
#     so a log collected again from a still-warm machine is not doubled); progress.txt
#     replaces DEST/logs/progress.txt.
#
# Everything is checked before anything is written: a run that DEST holds complete with
# other contents, a stopped run without its checkpoint or with fewer metrics rows than
# DEST already holds, or a folder that is not a run, is an error (one line each, exit 1,
# DEST unchanged). A complete run that DEST already holds with the same files is left
# as it is. Each file is written beside its target and then renamed over it.
set -u

fail() { echo "absorb.sh: $*" >&2; exit 1; }
stopped_in_runs=0
[ "${1:-}" = --stopped-in-runs ] && { stopped_in_runs=1; shift; }
[ $# = 2 ] || { echo "usage: absorb.sh [--stopped-in-runs] COLLECTED DEST" >&2; exit 2; }
src=$1 dest=$2
[ -d "$src" ] || fail "$src: expected the folder of table1_local.sh --collect, found no folder"
[ -d "$dest" ] || fail "$dest: expected a results folder (with runs/), found no folder"

is_complete() { grep -q '^  "status": "complete",$' "$1/result.json"; }
rows() { wc -l < "$1/metrics.csv"; }
same() { cmp -s "$1/result.json" "$2/result.json" && cmp -s "$1/metrics.csv" "$2/metrics.csv"; }

# put FILE DIR: FILE into DIR, written beside its target first
put() { mkdir -p "$2" && cp "$1" "$2/.absorb.tmp" && mv "$2/.absorb.tmp" "$2/$(basename "$1")"; }

# pass 1: what each run is, and every error
runs=() errors=0
err() { echo "absorb.sh: $*" >&2; errors=$((errors + 1)); }
for f in "$src"/*/*/*/result.json; do
  [ -e "$f" ] || continue
  d=${f%/result.json}; run=${d#"$src"/}
  [ -f "$d/metrics.csv" ] || { err "$d: metrics.csv: expected beside result.json, found none"; continue; }
  if is_complete "$d"; then
    if [ -d "$dest/runs/$run" ] && [ -f "$dest/runs/$run/result.json" ] && is_complete "$dest/runs/$run"; then
      same "$d" "$dest/runs/$run" || err "$run: complete in $dest/runs with other result.json or metrics.csv: expected the same run, found another (nothing replaced)"
    fi
  else
    [ -f "$d/checkpoint.safetensors" ] || { err "$run: stopped at $(($(rows "$d") - 1)) rows: expected its checkpoint.safetensors (--with-checkpoint), found none"; continue; }
    to=$dest/resume/$run; [ $stopped_in_runs = 1 ] && to=$dest/runs/$run
    [ -f "$dest/runs/$run/result.json" ] && is_complete "$dest/runs/$run" &&
      { err "$run: $dest/runs holds it complete: expected a run on the way, found a stopped copy (nothing replaced)"; continue; }
    [ -f "$to/metrics.csv" ] && [ "$(rows "$d")" -lt "$(rows "$to")" ] &&
      err "$run: $(($(rows "$d") - 1)) metrics rows: expected at least the $(($(rows "$to") - 1)) of $to, found fewer (an older copy)"
  fi
  runs+=("$run")
done
for d in "$src"/*/; do
  case $(basename "$d") in logs) continue ;; esac
  ls "$d"*/*/result.json > /dev/null 2>&1 || err "$d: expected run folders <arch>/lr_<lr>/seed_<seed>/ with result.json, found none"
done
[ $errors = 0 ] || fail "$errors error(s): $dest unchanged"
[ ${#runs[@]} -gt 0 ] || fail "$src: expected at least one run, found none"

# pass 2: write
n_done=0 n_same=0 n_stopped=0 n_logs=0
for run in "${runs[@]}"; do
  d=$src/$run
  if is_complete "$d"; then
    if [ -f "$dest/runs/$run/result.json" ] && same "$d" "$dest/runs/$run"; then n_same=$((n_same + 1)); continue; fi
    for x in result.json metrics.csv best.safetensors; do [ -f "$d/$x" ] && put "$d/$x" "$dest/runs/$run"; done
    rm -f "$dest/runs/$run/checkpoint.safetensors"
    rm -rf "$dest/resume/$run"
    rmdir -p "$dest/resume/${run%/*}" 2> /dev/null
    n_done=$((n_done + 1))
  else
    to=$dest/resume/$run; [ $stopped_in_runs = 1 ] && to=$dest/runs/$run
    for x in result.json metrics.csv checkpoint.safetensors best.safetensors; do [ -f "$d/$x" ] && put "$d/$x" "$to"; done
    n_stopped=$((n_stopped + 1))
  fi
done
for f in "$src"/logs/*.log; do
  [ -e "$f" ] || continue
  t=$dest/logs/$(basename "$f"); mkdir -p "$dest/logs"
  head1=$(head -n 1 "$f")
  {
    # the existing log up to the collected one's first header (where it holds it), then the collected log
    if [ -f "$t" ]; then awk -v h="$head1" '$0 == h { exit } { print }' "$t"; fi
    cat "$f"
  } > "$t.absorb.tmp" && mv "$t.absorb.tmp" "$t"
  n_logs=$((n_logs + 1))
done
[ -f "$src/progress.txt" ] && put "$src/progress.txt" "$dest/logs"
echo "absorb.sh: $dest: $n_done complete run(s) added, $n_same already there, $n_stopped stopped run(s) to $([ $stopped_in_runs = 1 ] && echo runs || echo resume)/, $n_logs log(s)"
