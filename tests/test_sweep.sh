#!/usr/bin/env bash
# test_sweep.sh: the sweep end to end on a real one-node Slurm cluster that
# the test starts itself (tests/slurm_cluster.sh: munged, slurmctld, slurmd
# as root, state in a temporary folder, stopped at the end):
#   1. sbatch jobs/sweep.sh configs/grid_tiny.yaml (4 tiny architectures x
#      2 lrs x 2 seeds, CPU): datagen over 2 MPI ranks, the array, the table;
#      every architecture in the table, the chosen lr recomputed from the
#      result.json files, clean task logs;
#   2. the same sweep again: no datagen, every run skipped as complete;
#   3. array tasks stopped mid-run, by SIGTERM (then `scontrol requeue`) and
#      by USR1 (the time-limit signal: the task requeues itself), resume from
#      their checkpoints and end with the very figures of uninterrupted runs;
#   4. srun -n 2 starts 2 MPI ranks of hax-train that train one model together;
#   5. sweep.sh refuses a bad grid before queueing anything.
# Needs root and Debian's slurm-wlm and munge (.ci/install-deps.sh installs
# them); without them it prints SKIP and counts one failure.
source "$(dirname "$0")/lib.sh"
T0=$(date +%s)

for p in munged slurmctld slurmd sbatch srun scontrol squeue python3; do
    if ! command -v $p >/dev/null; then
        echo "SKIP: $p not found (install slurm-wlm, munge and python3: .ci/install-deps.sh); the sweep is untested"
        fail "slurm packages missing"
        finish
        exit 1
    fi
done
if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: the test cluster's daemons must run as root"
    fail "not root"
    finish
    exit 1
fi
for b in hax-grid hax-train hax-datagen hax-aggregate; do
    [ -x "$BIN/$b" ] || { fail "$BIN/$b not built"; finish; exit 1; }
done

tmp=$(mktemp -d /tmp/hax_sweep.XXXXXX)
cleanup() { "$ROOT/tests/slurm_cluster.sh" stop "$tmp/cluster"; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 1' INT TERM  # (run.sh's timeout) still stops the daemons
if ! conf=$("$ROOT/tests/slurm_cluster.sh" start "$tmp/cluster"); then
    fail "the one-node cluster did not start (logs above)"
    finish
    exit 1
fi
eval "$conf"
ok "one-node cluster up ($SLURM_CONF)"
unset SLURM_JOB_ID SLURM_ARRAY_TASK_ID  # in case the test itself runs inside a job

GRID=$ROOT/configs/grid_tiny.yaml
export HAX_ROOT=$ROOT HAX_GPUS_PER_TASK=0 HAX_CPUS_PER_RUN=1 HAX_THROTTLE=2 HAX_TIME=0:15:00 HAX_DATAGEN_TASKS=2
work=$tmp/work
res=$work/results
mkdir -p "$work"
cd "$work" || exit 1

# job_states ID: the distinct states of a job (or of every task of an array).
job_states() { scontrol -o show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | sort -u | tr '\n' ' '; }
# wait_gone ID SECONDS: until the job has no pending, running or completing task.
wait_gone() {
    local i
    for ((i = 0; i < $2; i += 2)); do
        [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0
        sleep 2
    done
    echo "  job $1 still queued after $2 s: $(squeue -h -j "$1" | head -n 3)"
    return 1
}
# wait_log FILE PATTERN SECONDS: until FILE has a line matching PATTERN.
wait_log() {
    local i
    for ((i = 0; i < $3 * 5; i++)); do
        grep -Eq -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "  no '$2' in $1 after $3 s"
    return 1
}
jobs_id() { sed -n "s/^$1=//p" "$res/logs/sweep_jobs.txt"; }

# ---- 1. the sweep, submitted with sbatch
sweep=$(sbatch --parsable "$ROOT/jobs/sweep.sh" "$GRID" "$res")
check "sbatch jobs/sweep.sh accepted" test -n "$sweep"
wait_gone "$sweep" 60
check "sweep job completed" test "$(job_states "$sweep")" = "COMPLETED "
[ -f "$res/logs/sweep_jobs.txt" ] || { cat hax-sweep_*.log; fail "sweep wrote no job list"; finish; exit 1; }
dg=$(jobs_id datagen) arr=$(jobs_id train) agg=$(jobs_id aggregate)
check "datagen job submitted (data/tiny missing)" test -n "$dg"
wait_gone "$agg" 300
check "datagen job completed" test "$(job_states "$dg")" = "COMPLETED "
check "all 16 array tasks completed" test "$(job_states "$arr")" = "COMPLETED "
check "aggregation job completed" test "$(job_states "$agg")" = "COMPLETED "
check "datagen ran as 2 MPI ranks under srun" grep -q "(.*2 ranks) -> data/tiny" "$res"/logs/datagen_*.log
check "dataset verified" grep -q "verify data/tiny: OK" "$res"/logs/datagen_*.log
n_complete=$(grep -l '"status": "complete"' "$res"/*/lr_*/seed_*/result.json 2>/dev/null | wc -l)
check "16 complete result.json" test "$n_complete" = 16
check "16 task logs" test "$(ls "$res"/logs/train_"$arr"_*.log | wc -l)" = 16
clean=1
for f in "$res"/logs/train_"$arr"_*.log; do
    tail -n 1 "$f" | grep -q "all runs done" || { clean=0; echo "  $f does not end with 'all runs done'"; }
    grep -Eiq "error|FAILED|warning" "$f" && { clean=0; echo "  $f: $(grep -Ei 'error|FAILED|warning' "$f" | head -n 2)"; }
done
for f in "$res"/logs/run_*.log; do
    grep -Eq "^hax: " "$f" && { clean=0; echo "  $f: $(grep -E '^hax: ' "$f" | head -n 2)"; }
    tail -n 1 "$f" | grep -q "^hax-train: done: 120 steps" || { clean=0; echo "  $f: last line: $(tail -n 1 "$f")"; }
done
check "task and run logs clean (no error, every run done at step 120)" test $clean = 1
for f in table.md table.csv table.json plots/acc_vs_n.svg; do check "aggregation wrote $f" test -s "$res/$f"; done
for a in tiny tiny_mamba tiny_mamba2_sw tiny_samba; do
    check "table.md has a row for $a" grep -q "^| $a | " "$res/table.md"
done

# The chosen lr per architecture: the best mean best_valid_acc over seeds
# (ties: the smaller lr), recomputed from the result.json files.
recompute() {
    python3 - "$res" <<'EOF'
import glob, json, sys
runs = {}
for f in glob.glob(sys.argv[1] + "/*/lr_*/seed_*/result.json"):
    r = json.load(open(f))
    runs.setdefault(r["label"], {}).setdefault(r["lr"], []).append(r["best_valid_acc"])
for label in sorted(runs):
    means = {lr: sum(v) / len(v) for lr, v in runs[label].items()}
    best = max(means.values())
    print(label, "%g" % min(lr for lr, m in means.items() if m == best))
EOF
}
want=$(recompute)
got=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $col["chosen"] == 1 { print $col["label"], $col["lr"] + 0 }' "$res/table.csv" | sort)
echo "  chosen lr (recomputed): $(echo $want)"
check "table.csv's chosen lr per architecture equals the recomputation" test "$want" = "$got"
[ "$want" = "$got" ] || echo "  table.csv chose: $(echo $got)"
check "4 architectures recomputed" test "$(printf '%s\n' "$want" | wc -l)" = 4

# ---- 2. again, submitted from this shell: nothing is retrained
sums=$(md5sum "$res"/*/lr_*/seed_*/result.json)
mv "$res/logs/sweep_jobs.txt" "$res/logs/sweep_jobs.1.txt"
out=$(bash "$ROOT/jobs/sweep.sh" --runs-per-task 2 "$GRID" "$res" 2>&1)
check "second sweep: dataset present, no datagen" grep -q "dataset data/tiny: present" <<<"$out"
check "second sweep: no datagen job" test -z "$(jobs_id datagen)"
arr2=$(jobs_id train) agg2=$(jobs_id aggregate)
wait_gone "$agg2" 200
check "second sweep: array and aggregation completed" test "$(job_states "$arr2")$(job_states "$agg2")" = "COMPLETED COMPLETED "
skipped=$(cat "$res"/logs/run_*.log | grep -c "is complete (result.json); skipped")
check "second sweep: all 16 runs skipped as complete" test "$skipped" = 16
check "second sweep: 8 tasks of 2 runs each" test "$(cat "$res"/logs/train_"$arr2"_*.log | grep -c ': runs [0-9]*\.\.[0-9]* of 16')$(ls "$res"/logs/train_"$arr2"_*.log | wc -l)" = 88
check "second sweep: result.json files untouched" test "$sums" = "$(md5sum "$res"/*/lr_*/seed_*/result.json)"

# ---- 3. stopped mid-run, resumed: SIGTERM + scontrol requeue (run 5), USR1 (run 6)
res3=$work/resume
mkdir -p "$res3/logs"
stop=$(HAX_TRAIN_ARGS="--slow-step 0.1" sbatch --parsable --array=5,6 --requeue --open-mode=append \
    --signal=B:USR1@30 --time=0:15:00 --ntasks=1 --cpus-per-task=1 --output="$res3/logs/train_%A_%a.log" \
    "$ROOT/jobs/train.sh" "$GRID" "$res3")
check "array of runs 5 and 6 submitted" test -n "$stop"
wait_log "$res3/logs/run_5.log" "^step 40/120" 120 && scancel --full --signal=TERM "${stop}_5"
wait_log "$res3/logs/run_6.log" "^step 40/120" 120 && scancel --batch --signal=USR1 "${stop}_6"
wait_gone "${stop}_5" 120
check "SIGTERM: the task failed with exit 3, not requeued by itself" test \
    "$(job_states "${stop}_5")$(scontrol -o show job "${stop}_5" | grep -o 'ExitCode=[0-9:]*')" = "FAILED ExitCode=3:0"
check "SIGTERM: the run wrote a checkpoint and stopped" grep -q "run 5: stopped after writing a checkpoint" \
    "$res3"/logs/train_"$stop"_5.log
check "SIGTERM: hax-train stopped before the end" grep -q "^hax-train: stopped by a signal after step" "$res3/logs/run_5.log"
dir5=$("$BIN/hax-grid" "$GRID" --results "$res3" --dir 5)
check "SIGTERM: result.json says preempted" grep -q '"status": "preempted"' "$dir5/result.json"
scontrol requeue "${stop}_5"
wait_gone "$stop" 180
check "SIGTERM: requeued task completed" grep -q "JobState=COMPLETED .*Restarts=1" <<<"$(scontrol -o show job "${stop}_5" | sed 's/Reason=[^ ]* //; s/Dependency=[^ ]* //')"
check "USR1: the task requeued itself and completed" grep -q "requeueing job" "$res3"/logs/train_"$stop"_6.log
check "USR1: restarted once, completed" grep -q "JobState=COMPLETED .*Restarts=1" <<<"$(scontrol -o show job "${stop}_6" | sed 's/Reason=[^ ]* //; s/Dependency=[^ ]* //')"
for i in 5 6; do
    dir=$("$BIN/hax-grid" "$GRID" --results "$res3" --dir $i)
    ref=$("$BIN/hax-grid" "$GRID" --results "$res" --dir $i)
    check "run $i: resumed from its checkpoint" grep -Eq "^hax-train: resuming .* at step ([4-9][0-9]|1[01][0-9])$" "$res3/logs/run_$i.log"
    check "run $i: two attempts in its log" test "$(grep -c '^=== ' "$res3/logs/run_$i.log")" = 2
    same=$(python3 - "$dir/result.json" "$ref/result.json" <<'EOF'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:])
keys = ["status", "steps", "best_valid_acc", "best_step", "final_valid_acc", "test_acc", "test_acc_reference"]
print("same" if all(a[k] == b[k] for k in keys) else "differ: " + str([(k, a[k], b[k]) for k in keys if a[k] != b[k]]))
EOF
    )
    check "run $i: resumed run ends with the uninterrupted run's figures ($same)" test "$same" = same
done

# ---- 4. srun -n 2: two MPI ranks of hax-train train one model together
out=$(srun -n 2 --cpus-per-task=1 "$BIN/hax-train" "$ROOT/configs/tiny.yaml" train.steps=20 train.warmup=2 \
    train.valid_every=10 --results "$work/two" 2>&1)
check "srun -n 2 hax-train: exit 0" test $? = 0
check "srun -n 2 hax-train: 2 ranks in one run" grep -q "parameters, 2 ranks" <<<"$out"
check "srun -n 2 hax-train: result.json says 2 ranks" grep -q '"ranks": 2' "$work/two/tiny/lr_0.003/seed_1/result.json"

two=$(HAX_RANKS_PER_RUN=2 sbatch --parsable --array=0 --ntasks=2 --cpus-per-task=1 --time=0:15:00 \
    --output="$work/two2_%A_%a.log" "$ROOT/jobs/train.sh" "$GRID" "$work/two2")
wait_gone "$two" 120
check "train.sh with 2 ranks per run (srun inside the task): completed" test "$(job_states "$two")" = "COMPLETED "
check "train.sh with 2 ranks per run: result.json says 2 ranks" grep -q '"ranks": 2' "$work"/two2/*/lr_*/seed_*/result.json

# ---- 5. a bad grid is refused before anything is queued
bad=$work/bad.yaml
printf 'configs: [%s]\nlrs: [3e-3, 0.003]\nseeds: [1]\n' "$ROOT/configs/tiny.yaml" >"$bad"
before=$(squeue -h | wc -l)
check_fails "sweep refuses a bad grid" "lrs: expected each value once" bash "$ROOT/jobs/sweep.sh" "$bad" "$work/badres"
check "nothing queued by the refused sweep" test "$(squeue -h | wc -l)" = "$before"
echo "  ($(($(date +%s) - T0)) s)"
finish
