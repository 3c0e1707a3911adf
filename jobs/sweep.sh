#!/usr/bin/env bash
# sweep.sh [options] [GRID] [RESULTS]: the whole grid on a Slurm cluster.
#
#   sbatch jobs/sweep.sh                        Table 1: configs/grid_table1.yaml -> results/
#   bash jobs/sweep.sh configs/grid_tiny.yaml results/tiny   (the same, submitting from here)
#
# Checks everything first (the grid loads, every run's config loads and has
# its own folder, the programs are built, sbatch is there), then submits:
#   1. jobs/datagen.sh, when a dataset the configs need is missing;
#   2. jobs/train.sh as an array over the grid's runs (afterok: 1), at most
#      THROTTLE tasks at a time, requeued on preemption / near the time limit;
#   3. jobs/aggregate.sh (afterany: 2), writing RESULTS/table.md and friends.
# Running it again submits only what is left: complete runs are skipped by
# hax-train, interrupted ones resume from their checkpoints.
#
# Settings: an option, else its environment variable, else the default.
#   -p, --partition P     HAX_PARTITION      Slurm partition (default: the cluster's)
#   -A, --account A       HAX_ACCOUNT        Slurm account
#   -t, --time T          HAX_TIME           time limit of each training task (24:00:00)
#   --gpus-per-task G     HAX_GPUS_PER_TASK  GPUs of each array task (1; 0: CPU only)
#   --runs-per-task K     HAX_RUNS_PER_TASK  runs started side by side in one task, sharing
#                                            its GPUs: K runs per GPU with G = 1 (1)
#   --mps                 HAX_MPS=1          with --runs-per-task above 1: each task starts an
#                                            MPS control daemon for its runs (they then share
#                                            the GPU side by side: 4 runs ~1.2x one at a time)
#   --ranks-per-run R     HAX_RANKS_PER_RUN  MPI ranks of each run, started with srun (1)
#   --cpus-per-run C      HAX_CPUS_PER_RUN   CPUs (threads) of each rank (2)
#   --mem-per-cpu M       HAX_MEM_PER_CPU    memory per CPU, e.g. 4G (default: the cluster's)
#   --throttle N          HAX_THROTTLE       array tasks running at once (32)
#   --signal-time S       HAX_SIGNAL_TIME    seconds before the time limit at which USR1
#                                            asks runs to checkpoint and requeue (120)
#   --datagen-nodes N     HAX_DATAGEN_NODES  nodes of the data generation job (1)
#   --datagen-tasks N     HAX_DATAGEN_TASKS  MPI ranks of the data generation job (8)
#   --datagen-time T      HAX_DATAGEN_TIME   its time limit (2:00:00)
#   --sbatch-args "..."   HAX_SBATCH_ARGS    more sbatch options for every job (--qos=..)
#   --train-args "..."    HAX_TRAIN_ARGS     more hax-train options (--force: run again)
#   --dry-run                                print the sbatch commands, submit nothing
# HAX_ROOT: the hax checkout (default: this script's folder's parent, or the
# submit folder under sbatch, which copies the script away).
# Relative paths (GRID, RESULTS, the configs' data.path) are taken from the
# folder this is started in; every job runs there.
#SBATCH --job-name=hax-sweep
#SBATCH --ntasks=1
#SBATCH --time=00:15:00
#SBATCH --output=hax-sweep_%j.log
set -u

say() { echo "sweep.sh: $*"; }
fail() { echo "sweep.sh: error: $*" >&2; exit 1; }

partition=${HAX_PARTITION:-} account=${HAX_ACCOUNT:-} time_limit=${HAX_TIME:-24:00:00}
gpus=${HAX_GPUS_PER_TASK:-1} per_task=${HAX_RUNS_PER_TASK:-1} ranks=${HAX_RANKS_PER_RUN:-1}
cpus=${HAX_CPUS_PER_RUN:-2} mem_per_cpu=${HAX_MEM_PER_CPU:-} throttle=${HAX_THROTTLE:-32}
signal_time=${HAX_SIGNAL_TIME:-120} dg_nodes=${HAX_DATAGEN_NODES:-1} dg_tasks=${HAX_DATAGEN_TASKS:-8}
dg_time=${HAX_DATAGEN_TIME:-2:00:00} sbatch_args=${HAX_SBATCH_ARGS:-} train_args=${HAX_TRAIN_ARGS:-}
dry=0 mps=${HAX_MPS:-0}
pos=()
while [ $# -gt 0 ]; do
    opt=$1
    case $opt in
    -h | --help) sed -n '2,/^#SBATCH/p' "$0" | grep -v '^#SBATCH' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --dry-run) dry=1; shift; continue ;;
    --mps) mps=1; shift; continue ;;
    -*) [ $# -ge 2 ] || { echo "sweep.sh: $opt: expected a value, found none" >&2; exit 2; } ;;
    esac
    case $opt in
    -p | --partition) partition=$2 ;;
    -A | --account) account=$2 ;;
    -t | --time) time_limit=$2 ;;
    --gpus-per-task) gpus=$2 ;;
    --runs-per-task) per_task=$2 ;;
    --ranks-per-run) ranks=$2 ;;
    --cpus-per-run) cpus=$2 ;;
    --mem-per-cpu) mem_per_cpu=$2 ;;
    --throttle) throttle=$2 ;;
    --signal-time) signal_time=$2 ;;
    --datagen-nodes) dg_nodes=$2 ;;
    --datagen-tasks) dg_tasks=$2 ;;
    --datagen-time) dg_time=$2 ;;
    --sbatch-args) sbatch_args=$2 ;;
    --train-args) train_args=$2 ;;
    -*) echo "sweep.sh: unknown option '$opt' (see --help)" >&2; exit 2 ;;
    *) pos+=("$opt"); shift; continue ;;
    esac
    shift 2
done
[ ${#pos[@]} -le 2 ] || { echo "sweep.sh: expected at most GRID and RESULTS, found ${#pos[@]} arguments" >&2; exit 2; }
grid=${pos[0]:-configs/grid_table1.yaml}
results=${pos[1]:-results}

# ---- checks: nothing is queued unless all of them pass
for v in gpus:$gpus per_task:$per_task ranks:$ranks cpus:$cpus throttle:$throttle signal_time:$signal_time \
    dg_nodes:$dg_nodes dg_tasks:$dg_tasks; do
    case ${v#*:} in '' | *[!0-9]*) fail "${v%%:*}: expected a whole number, found '${v#*:}'" ;; esac
done
[ "$per_task" -ge 1 ] && [ "$ranks" -ge 1 ] && [ "$cpus" -ge 1 ] && [ "$throttle" -ge 1 ] ||
    fail "runs per task, ranks per run, cpus per run and throttle: expected at least 1, found $per_task, $ranks, $cpus, $throttle"
case $mps in 0 | 1) ;; *) fail "HAX_MPS: expected 0 or 1, found '$mps'" ;; esac
[ "$mps" -eq 0 ] || { [ "$per_task" -ge 2 ] && [ "$gpus" -ge 1 ]; } ||
    fail "--mps: expected --runs-per-task above 1 and --gpus-per-task at least 1 (MPS shares a task's GPU between its runs), found $per_task and $gpus"
if [ -z "${HAX_ROOT:-}" ]; then
    here=$(cd "$(dirname "$0")/.." 2>/dev/null && pwd)
    if [ -n "$here" ] && [ -x "$here/bin/hax-grid" ]; then HAX_ROOT=$here
    else HAX_ROOT=${SLURM_SUBMIT_DIR:-$PWD}; fi
fi
HAX_ROOT=$(cd "$HAX_ROOT" 2>/dev/null && pwd) || fail "HAX_ROOT: expected the hax checkout, found no folder '$HAX_ROOT'"
jobs=$HAX_ROOT/jobs
for f in "$jobs/train.sh" "$jobs/datagen.sh" "$jobs/aggregate.sh"; do
    [ -f "$f" ] || fail "$f: expected the job script, found none (set HAX_ROOT to the hax checkout)"
done
for b in hax-grid hax-train hax-datagen hax-aggregate; do
    [ -x "$HAX_ROOT/bin/$b" ] || fail "$HAX_ROOT/bin/$b: expected the built program, found none (run make there)"
done
[ "$dry" -eq 1 ] || command -v sbatch >/dev/null || fail "sbatch: expected Slurm's client on PATH, found none"
[ -f "$grid" ] || fail "$grid: expected a grid file (configs/grid_*.yaml), found none"
grid=$(cd "$(dirname "$grid")" && pwd)/$(basename "$grid")
# (made only once every check has passed: a refused sweep leaves nothing behind)
results=$(realpath -m -- "$results") || fail "$results: expected a folder path for the results, found none"
check=$("$HAX_ROOT/bin/hax-grid" "$grid" --results "$results" --check) || fail "$grid: the grid does not pass hax-grid --check (message above)"
say "$check"
n=$("$HAX_ROOT/bin/hax-grid" "$grid" --size) || exit 1
datasets=$("$HAX_ROOT/bin/hax-grid" "$grid" --datasets) || exit 1
missing=()
while IFS=$'\t' read -r dir _; do
    [ -n "$dir" ] || continue
    if [ -f "$dir/manifest.yaml" ]; then say "dataset $dir: present"
    else missing+=("$dir"); say "dataset $dir: missing, generated first by jobs/datagen.sh"; fi
done <<<"$datasets"

# ---- submission
# Under `sbatch jobs/sweep.sh` the sweep job's own SLURM_* settings (its
# task count, memory, ...) must not leak into the jobs it submits.
if [ -n "${SLURM_JOB_ID:-}" ]; then
    for v in $(compgen -e); do
        case $v in SLURM_CONF) ;; SLURM_*) unset "$v" ;; esac
    done
fi
common=(--chdir="$PWD" --parsable)
[ -n "$partition" ] && common+=(--partition="$partition")
[ -n "$account" ] && common+=(--account="$account")
read -r -a more <<<"$sbatch_args"
common+=("${more[@]}")
export HAX_ROOT HAX_RUNS_PER_TASK=$per_task HAX_RANKS_PER_RUN=$ranks HAX_CPUS_PER_RUN=$cpus HAX_TRAIN_ARGS=$train_args HAX_MPS=$mps

# submit NAME SBATCH-ARGS...: prints the job id (dry run: DRY-NAME).
submit() {
    local name=$1 id; shift
    if [ "$dry" -eq 1 ]; then
        echo "sweep.sh: would run: sbatch $*" >&2
        echo "DRY-$name"
        return 0
    fi
    id=$(sbatch "$@") || fail "sbatch of the $name job failed (message above)"
    echo "${id%%;*}"
}

n_tasks=$(((n + per_task - 1) / per_task))
if [ "$dry" -eq 0 ]; then  # the cluster's largest array index is MaxArraySize - 1
    max_array=$(scontrol show config 2>/dev/null | sed -n 's/^MaxArraySize *= *\([0-9]*\).*/\1/p')
    [ -z "$max_array" ] || [ "$n_tasks" -le "$max_array" ] ||
        fail "array: expected at most MaxArraySize = $max_array tasks, found $n_tasks (raise --runs-per-task)"
fi
[ "$dry" -eq 1 ] || mkdir -p "$results/logs" || fail "$results/logs: cannot create the results folder"
dep=()
if [ ${#missing[@]} -gt 0 ]; then
    dg=$(submit datagen "${common[@]}" --job-name=hax-datagen --nodes="$dg_nodes" --ntasks="$dg_tasks" \
        --cpus-per-task=1 --time="$dg_time" --output="$results/logs/datagen_%j.log" "$jobs/datagen.sh" "$grid") || exit 1
    say "datagen job $dg: ${missing[*]}"
    dep=(--dependency=afterok:"$dg")
fi

train=(--job-name=hax-train --array=0-$((n_tasks - 1))%"$throttle" --requeue --open-mode=append
    --signal=B:USR1@"$signal_time" --time="$time_limit" --ntasks=$((per_task * ranks)) --cpus-per-task="$cpus"
    --output="$results/logs/train_%A_%a.log")
[ "$gpus" -gt 0 ] && train+=(--gpus="$gpus")
[ -n "$mem_per_cpu" ] && train+=(--mem-per-cpu="$mem_per_cpu")
arr=$(submit train "${common[@]}" "${train[@]}" "${dep[@]}" "$jobs/train.sh" "$grid" "$results") || exit 1
say "training array $arr: $n runs in $n_tasks task(s) of $per_task run(s), at most $throttle at once, logs in $results/logs/"

agg=$(submit aggregate "${common[@]}" --job-name=hax-aggregate --dependency=afterany:"$arr" --ntasks=1 \
    --time=1:00:00 --output="$results/logs/aggregate_%j.log" "$jobs/aggregate.sh" "$results") || exit 1
say "aggregation job $agg: writes $results/table.md when the array has ended"
[ "$dry" -eq 1 ] && exit 0
printf 'datagen=%s\ntrain=%s\naggregate=%s\n' "${dg:-}" "$arr" "$agg" >"$results/logs/sweep_jobs.txt.tmp" &&
    mv "$results/logs/sweep_jobs.txt.tmp" "$results/logs/sweep_jobs.txt"
