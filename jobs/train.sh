#!/usr/bin/env bash
# train.sh GRID RESULTS: one task of the sweep's training array (submitted by
# jobs/sweep.sh; see the README section "The sweep").
#
# Array task t runs the grid's runs t*K .. t*K+K-1 (K = HAX_RUNS_PER_TASK,
# default 1) side by side, sharing the task's CPUs and GPUs. hax-grid maps a
# run index to hax-train's arguments (config, overrides, lr, seed). Each run
# appends its output to RESULTS/logs/run_<index>.log; this task's own log
# (RESULTS/logs/train_<array>_<task>.log) says what ran and how it ended.
#
# Idempotent: hax-train skips a run whose result.json is complete and resumes
# one that has a checkpoint. Stopping: Slurm's --signal=B:USR1@T reaches this
# shell before the time limit; it is passed on to the runs (USR1: srun
# forwards it where plain TERM would make srun kill its step), they write a
# checkpoint and exit 3, and the task requeues itself. A SIGTERM (scancel
# --full --signal=TERM, preemption, cancel) also stops the runs with a
# checkpoint, but the task then exits 3 without requeueing: Slurm's
# preemption requeues it, or `scontrol requeue <job>` does.
#
# Environment (set by sweep.sh): HAX_ROOT (the hax checkout), HAX_RUNS_PER_TASK,
# HAX_RANKS_PER_RUN (MPI ranks per run; > 1 starts each run with srun),
# HAX_CPUS_PER_RUN (threads per rank), HAX_TRAIN_ARGS (extra hax-train options),
# HAX_MPS (1: start an MPS control daemon for this task's runs, pipe folder
# under ${TMPDIR:-/tmp}, and quit it when they have ended).
#SBATCH --job-name=hax-train
set -u

say() { echo "train.sh[${SLURM_ARRAY_TASK_ID:-?}] $(date '+%F %T'): $*"; }
fail() { say "error: $*" >&2; exit 1; }

[ $# -eq 2 ] || fail "usage: train.sh GRID RESULTS (from sbatch --array, as jobs/sweep.sh submits it)"
grid=$1 results=$2
root=${HAX_ROOT:-${SLURM_SUBMIT_DIR:-.}}
grid_bin=$root/bin/hax-grid train_bin=$root/bin/hax-train
for b in "$grid_bin" "$train_bin"; do
    [ -x "$b" ] || fail "$b: expected the hax program (run make in HAX_ROOT=$root), found none"
done
task=${SLURM_ARRAY_TASK_ID:-}
[ -n "$task" ] || fail "SLURM_ARRAY_TASK_ID: expected an array task index (submit with sbatch --array), found none"
per_task=${HAX_RUNS_PER_TASK:-1} ranks=${HAX_RANKS_PER_RUN:-1} cpus=${HAX_CPUS_PER_RUN:-1}
n=$("$grid_bin" "$grid" --size) || fail "$grid: the grid file does not load (message above)"
first=$((task * per_task))
last=$((first + per_task < n ? first + per_task : n))
[ "$first" -lt "$n" ] || fail "array task $task: expected runs below $n (grid $grid), found first run $first"
if [ "${HAX_MPS:-0}" = 1 ] && ! command -v nvidia-cuda-mps-control >/dev/null; then
    fail "HAX_MPS=1: expected nvidia-cuda-mps-control (NVIDIA's driver utilities) on this node, found none"
fi
logs=$results/logs
mkdir -p "$logs" || fail "$logs: cannot create the log folder"
read -r -a extra <<<"${HAX_TRAIN_ARGS:-}"
export OMP_NUM_THREADS=$cpus

attempt=$((${SLURM_RESTART_COUNT:-0} + 1))
say "job ${SLURM_JOB_ID:-?} (array ${SLURM_ARRAY_JOB_ID:-?}), attempt $attempt on $(hostname -s): runs $first..$((last - 1)) of $n, $ranks rank(s) x $cpus thread(s) each"

# Stop signals: remembered, and passed on to every run as USR1.
stop_signal=""
pids=()
on_signal() {
    stop_signal=$1
    say "got SIG$1: asking runs ${first}..$((last - 1)) to checkpoint and stop"
    local p
    for p in "${pids[@]}"; do kill -USR1 "$p" 2>/dev/null; done
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# MPS: the runs' kernels share the GPU side by side instead of in time slices.
if [ "${HAX_MPS:-0}" = 1 ]; then
    export CUDA_MPS_PIPE_DIRECTORY=${TMPDIR:-/tmp}/hax-mps.${SLURM_JOB_ID:-$$}.$task
    export CUDA_MPS_LOG_DIRECTORY=$CUDA_MPS_PIPE_DIRECTORY/log
    mkdir -p "$CUDA_MPS_LOG_DIRECTORY" || fail "$CUDA_MPS_LOG_DIRECTORY: cannot create the MPS folders"
    nvidia-cuda-mps-control -d || fail "nvidia-cuda-mps-control -d failed"
    trap 'echo quit | nvidia-cuda-mps-control; rm -rf "$CUDA_MPS_PIPE_DIRECTORY"' EXIT
    say "MPS control daemon started ($CUDA_MPS_PIPE_DIRECTORY)"
fi

idx=()
for ((i = first; i < last; i++)); do
    out=$("$grid_bin" "$grid" --args "$i") || fail "$grid: run $i: hax-grid gave no arguments (message above)"
    mapfile -t args <<<"$out"
    log=$logs/run_$i.log
    {
        echo "=== $(date '+%F %T') job ${SLURM_JOB_ID:-?} task $task attempt $attempt: hax-train ${args[*]} --results $results ${extra[*]}"
    } >>"$log"
    if [ "$ranks" -gt 1 ]; then
        srun --exact --ntasks="$ranks" --cpus-per-task="$cpus" "$train_bin" "${args[@]}" --results "$results" \
            "${extra[@]}" >>"$log" 2>&1 &
    else
        "$train_bin" "${args[@]}" --results "$results" "${extra[@]}" >>"$log" 2>&1 &
    fi
    pids+=($!)
    idx+=("$i")
    say "run $i: started (pid $!): ${args[*]} -> $log"
done

# Waits for every run; a signal interrupts `wait`, so wait again while alive.
n_pre=0 n_fail=0
for k in "${!pids[@]}"; do
    pid=${pids[$k]} i=${idx[$k]}
    wait "$pid"
    rc=$?
    while [ $rc -gt 128 ] && kill -0 "$pid" 2>/dev/null; do
        wait "$pid"
        rc=$?
    done
    case $rc in
    0) say "run $i: done (complete or skipped as complete)" ;;
    3) n_pre=$((n_pre + 1)); say "run $i: stopped after writing a checkpoint (exit 3)" ;;
    *)
        n_fail=$((n_fail + 1))
        say "run $i: FAILED (exit $rc); the end of $logs/run_$i.log:"
        tail -n 5 "$logs/run_$i.log" | sed 's/^/    /'
        ;;
    esac
done

if [ "$n_fail" -gt 0 ]; then
    say "$n_fail run(s) failed: not requeued (fix the cause, then run the sweep again: complete runs are skipped)"
    exit 1
fi
if [ "$n_pre" -gt 0 ]; then
    # This task only: an array task's SLURM_JOB_ID may be the array's own id,
    # and `scontrol requeue <array id>` would requeue every task of the array.
    me=${SLURM_JOB_ID:-JOB}
    [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && me=${SLURM_ARRAY_JOB_ID}_$task
    if [ "$stop_signal" = USR1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
        say "requeueing job $me: the runs resume from their checkpoints"
        scontrol requeue "$me" || fail "scontrol requeue $me failed"
        exit 0
    fi
    say "$n_pre run(s) stopped with a checkpoint: exit 3 (scontrol requeue $me resumes them)"
    exit 3
fi
say "all runs done"
exit 0
