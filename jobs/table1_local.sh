#!/usr/bin/env bash
# table1_local.sh: the Table 1 grid (configs x precision regimes x lrs x
# seeds) on one machine, without Slurm: K hax-train processes at a time,
# resumable across calls, with a progress file and a collect step.
#
#   jobs/table1_local.sh --steps 30000 results/table1              run or resume, in the foreground
#   jobs/table1_local.sh --steps 30000 --background results/table1 the same, detached (log: RESULTS/table1_local.log)
#   jobs/table1_local.sh --status results/table1                   where each run stands
#   jobs/table1_local.sh --stop results/table1                     a background driver's runs checkpoint and stop
#   jobs/table1_local.sh --collect analysis/results/table1/runs results/table1
#   jobs/table1_local.sh --steps 30000 --dry-run results/table1    the run list, nothing started
#
# Runs go in order config, regime, lr, seed. Each run is `hax-train CONFIG
# train.precision=P train.steps=S [OVERRIDES] train.lr=LR train.seed=SEED
# --results RESULTS` (hax-grid makes the arguments and the run folder,
# RESULTS/<arch>[@P]/lr_<lr>/seed_<seed>/). Running the same command again
# continues: a complete run is skipped, a run with a checkpoint resumes from
# it (hax-train's own rules: its config must match apart from train.steps and
# a few others; a complete run is not extended by a larger --steps).
#
# Options (run mode):
#   --steps S          train.steps of every run (required)
#   --configs LIST     config files, comma-separated (default: the 19 of configs/grid_table1.yaml)
#   --regimes LIST     train.precision values (default: fp32,bf16-pure)
#   --lrs LIST         learning rates (default: 1e-3)
#   --seeds LIST       seeds (default: 1)
#   --jobs K           runs at a time (default 1: on one GPU, time-slicing gains little)
#   --mps              with --jobs > 1: the runs share the GPU through an MPS control daemon
#                      the driver starts (and quits at its end), its pipe and log folders
#                      under /tmp/hax-mps.<pid>; 4 runs under MPS gave ~1.2x the throughput
#                      of one at a time on an H100 (README "Several runs on one GPU")
#   --train-args "..." more hax-train arguments: section.field=value overrides (they also
#                      decide the run folder) and options, e.g. "data.path=/data/jr"
#   --time-limit SEC   after SEC seconds, ask the active runs to checkpoint and stop, then
#                      exit 3 (0: no limit; the default)
#   --background       start detached; the driver's pid is in RESULTS/.table1_local/driver.pid
#   --dry-run          print the run list (and each run's state), start nothing, write nothing
# Other modes (RESULTS is the folder a run mode used):
#   --status           print the progress table (RESULTS/progress.txt, recomputed)
#   --stop             SIGTERM to the background driver: its runs write a checkpoint and stop
#                      (exit 3); waits for it (at most --wait SEC, default 600)
#   --collect DIR      copy each run's result.json and metrics.csv under RESULTS into DIR,
#                      keeping the <arch>/lr_<lr>/seed_<seed>/ folders; --with-best adds
#                      best.safetensors, --with-checkpoint checkpoint.safetensors of the
#                      runs not complete (DIR is then a results folder they resume in),
#                      --with-logs the run logs (DIR/logs/)
# Exit status: 0 every run complete (or done: collect, status, stop); 1 an error or a
# failed run (the others still run); 2 a bad command line; 3 stopped (time limit, signal
# or a run that stopped itself) with checkpoints: run the same command again.
# Environment: HAX_ROOT (the hax checkout; default this script's folder's parent).
set -u
# The whole script is one brace group, read before it runs: a background
# driver is not disturbed when the checkout (this file) changes under it.
{

say() { echo "table1_local.sh $(date '+%F %T'): $*"; }
fail() { echo "table1_local.sh: error: $*" >&2; exit 1; }
usage_fail() { echo "table1_local.sh: $*" >&2; exit 2; }

root=${HAX_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
grid_bin=$root/bin/hax-grid train_bin=$root/bin/hax-train
me=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

# ---------------------------------------------------------------- options
mode=run steps="" configs="" regimes=fp32,bf16-pure lrs=1e-3 seeds=1 jobs=1 train_args="" time_limit=0 mps=0
background=0 dry=0 collect_dir="" with_best=0 with_ckpt=0 with_logs=0 wait_s=600
pos=()
all_args=("$@")
while [ $# -gt 0 ]; do
    opt=$1
    case $opt in
    -h | --help) sed -n '2,/^set -u/p' "$0" | grep -v '^set -u' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --dry-run) dry=1; shift; continue ;;
    --background) background=1; shift; continue ;;
    --mps) mps=1; shift; continue ;;
    --status) mode=status; shift; continue ;;
    --stop) mode=stop; shift; continue ;;
    --with-best) with_best=1; shift; continue ;;
    --with-checkpoint) with_ckpt=1; shift; continue ;;
    --with-logs) with_logs=1; shift; continue ;;
    -*) [ $# -ge 2 ] || usage_fail "$opt: expected a value after it, found none (see --help)" ;;
    esac
    case $opt in
    --steps) steps=$2 ;;
    --configs) configs=$2 ;;
    --regimes) regimes=$2 ;;
    --lrs) lrs=$2 ;;
    --seeds) seeds=$2 ;;
    --jobs) jobs=$2 ;;
    --train-args) train_args=$2 ;;
    --time-limit) time_limit=$2 ;;
    --wait) wait_s=$2 ;;
    --collect) mode=collect collect_dir=$2 ;;
    -*) usage_fail "unknown option '$opt' (see --help)" ;;
    *) pos+=("$opt"); shift; continue ;;
    esac
    shift 2
done
[ ${#pos[@]} -eq 1 ] || usage_fail "expected one RESULTS folder, found ${#pos[@]} arguments (${pos[*]:-none}; see --help)"
results=${pos[0]%/}
state=$results/.table1_local
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$wait_s" || usage_fail "--wait: expected seconds (an integer >= 0), found '$wait_s'"

# The list of a comma-separated option, checked: "name" "pattern" "what".
split_list() {
    local name=$1 value=$2 pattern=$3 what=$4 item
    [ -n "$value" ] || usage_fail "$name: expected $what, comma-separated, found nothing"
    [[ $value == ,* || $value == *, || $value == *,,* ]] &&
        usage_fail "$name: expected $what, comma-separated, found '$value'"
    IFS=, read -r -a LIST <<<"$value"
    for item in "${LIST[@]}"; do
        [[ $item =~ $pattern ]] || usage_fail "$name: expected $what, found '$item'"
    done
}

# ---------------------------------------------------------------- run states
# A run's state from its result.json: pending (none yet), complete, running,
# preempted (a checkpoint to resume from), failed; "steps" and best
# validation accuracy beside it.
run_state() {
    local f=$1/result.json status st planned best
    if [ ! -f "$f" ]; then
        [ -f "$1/checkpoint.safetensors" ] && echo "preempted - -" || echo "pending - -"
        return
    fi
    status=$(sed -n 's/^  "status": "\(.*\)",$/\1/p' "$f")
    st=$(sed -n 's/^  "steps": \(.*\),$/\1/p' "$f")
    planned=$(sed -n 's/^  "steps_planned": \(.*\),$/\1/p' "$f")
    best=$(sed -n 's/^  "best_valid_acc": \(.*\),$/\1/p' "$f")
    [[ $best =~ ^[0-9.eE+-]+$ ]] && best=$(printf '%.4f' "$best")
    echo "${status:-unreadable} ${st:-?}/${planned:-?} ${best:--}"
}

driver_pid() {  # the live driver of RESULTS, or nothing
    local pid
    [ -f "$state/driver.pid" ] || return 0
    pid=$(cat "$state/driver.pid" 2>/dev/null)
    is_uint "$pid" && kill -0 "$pid" 2>/dev/null && grep -q table1_local "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

# progress_table [ACTIVE_INDICES...]: the progress table on stdout, from
# $state/runs.tsv (index, regime, lr, seed, folder, config).
progress_table() {
    local active=" $* " n=0 n_complete=0 n_active=0 n_pending=0 n_stopped=0 n_failed=0 body="" idx reg lr seed dir cfg
    local st steps best alive
    alive=$(driver_pid)
    while IFS=$'\t' read -r idx reg lr seed dir cfg; do
        read -r st steps best <<<"$(run_state "$dir")"
        if [[ $active == *" $idx "* ]]; then st=active
        elif [ "$st" = running ] && [ -z "$alive" ]; then st=stale  # no driver: killed without a checkpoint write
        fi
        case $st in
        complete) n_complete=$((n_complete + 1)) ;;
        active | running) n_active=$((n_active + 1)) ;;
        pending) n_pending=$((n_pending + 1)) ;;
        failed | unreadable) n_failed=$((n_failed + 1)) ;;
        *) n_stopped=$((n_stopped + 1)) ;;
        esac
        n=$((n + 1))
        body+=$(printf '%-5s %-10s %-8s %-5s %-10s %-15s %-8s %s' "$idx" "$reg" "$lr" "$seed" "$st" "$steps" "$best" \
            "${dir#"$results"/}")$'\n'
    done <"$state/runs.tsv"
    echo "# table1_local.sh progress of $results, $(date '+%F %T'); driver: ${alive:-not running}"
    echo "# $n runs: $n_complete complete, $n_active active, $n_stopped stopped (resumable), $n_failed failed, $n_pending pending"
    printf '%-5s %-10s %-8s %-5s %-10s %-15s %-8s %s\n' index regime lr seed state steps best folder
    printf '%s' "$body"
}

write_progress() {
    progress_table "$@" >"$results/progress.txt.tmp.$$" && mv "$results/progress.txt.tmp.$$" "$results/progress.txt"
}

# ---------------------------------------------------------------- status, stop, collect
if [ "$mode" = status ]; then
    [ -f "$state/runs.tsv" ] || fail "$results: expected a folder table1_local.sh ran in ($state/runs.tsv), found none"
    progress_table
    exit 0
fi

if [ "$mode" = stop ]; then
    [ -d "$state" ] || fail "$results: expected a folder table1_local.sh ran in ($state), found none"
    pid=$(driver_pid)
    if [ -z "$pid" ]; then say "no driver is running in $results"; exit 0; fi
    say "asking the driver (pid $pid) to stop: its runs write a checkpoint"
    kill -TERM "$pid"
    for ((t = 0; t <= wait_s; t++)); do
        kill -0 "$pid" 2>/dev/null || { say "stopped"; progress_table; exit 0; }
        sleep 1
    done
    fail "the driver (pid $pid) is still running after $wait_s s"
fi

if [ "$mode" = collect ]; then
    [ -d "$results" ] || fail "$results: expected a results folder, found none"
    mkdir -p "$collect_dir" || fail "$collect_dir: cannot create the folder"
    src=$(cd "$results" && pwd) dst=$(cd "$collect_dir" && pwd)
    case $dst/ in "$src"/*) fail "$collect_dir: expected a folder outside $results, found one inside it" ;; esac
    n=0
    while IFS= read -r -d '' f; do
        rel=${f#"$src"/} rel=${rel%/result.json}
        mkdir -p "$dst/$rel" || fail "$dst/$rel: cannot create the folder"
        files=(result.json metrics.csv)
        [ $with_best = 1 ] && files+=(best.safetensors)
        # a complete run is skipped by hax-train: only the others need their checkpoint
        [ $with_ckpt = 1 ] && ! grep -q '^  "status": "complete",$' "$f" && files+=(checkpoint.safetensors)
        for name in "${files[@]}"; do
            [ -f "$src/$rel/$name" ] || continue
            cp "$src/$rel/$name" "$dst/$rel/$name.tmp.$$" && mv "$dst/$rel/$name.tmp.$$" "$dst/$rel/$name" ||
                fail "$dst/$rel/$name: cannot copy"
        done
        n=$((n + 1))
    done < <(find "$src" -name .table1_local -prune -o -name result.json -type f -print0 | sort -z)
    if [ $with_logs = 1 ] && [ -d "$src/logs" ]; then
        mkdir -p "$dst/logs" && cp "$src"/logs/*.log "$dst/logs/" 2>/dev/null
    fi
    [ -f "$src/progress.txt" ] && cp "$src/progress.txt" "$dst/progress.txt"
    say "collected $n run(s) from $results into $collect_dir"
    [ $n -gt 0 ] || fail "$results: expected result.json files, found none"
    exit 0
fi

# ---------------------------------------------------------------- run mode: checks
[ -n "$steps" ] || usage_fail "--steps: expected the number of training steps of every run, found none"
[[ $steps =~ ^[1-9][0-9]*$ ]] || usage_fail "--steps: expected a positive integer, found '$steps'"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || usage_fail "--jobs: expected a positive integer, found '$jobs'"
is_uint "$time_limit" || usage_fail "--time-limit: expected seconds (an integer >= 0), found '$time_limit'"
if [ $mps = 1 ] && [ $dry = 0 ] && ! command -v nvidia-cuda-mps-control >/dev/null; then
    usage_fail "--mps: expected nvidia-cuda-mps-control (NVIDIA's driver utilities) on the PATH, found none"
fi
split_list --regimes "$regimes" '^(fp32|bf16|bf16-pure)$' "fp32, bf16 or bf16-pure"; regime_list=("${LIST[@]}")
split_list --lrs "$lrs" '^[0-9.]+([eE][-+]?[0-9]+)?$' "learning rates (numbers)"; lr_list=("${LIST[@]}")
split_list --seeds "$seeds" '^[0-9]+$' "seeds (integers >= 0)"; seed_list=("${LIST[@]}")
for b in "$grid_bin" "$train_bin"; do
    [ -x "$b" ] || fail "$b: expected the hax program (run make in HAX_ROOT=$root), found none"
done
if [ -z "$configs" ]; then
    configs=$(sed -n 's/^  - \([a-z0-9_]*\.yaml\).*/\1/p' "$root/configs/grid_table1.yaml" | sed "s|^|$root/configs/|" | paste -sd,)
fi
split_list --configs "$configs" '^[^ ]+$' "config files"; config_list=()
for c in "${LIST[@]}"; do
    [ -f "$c" ] || fail "$c: expected a config file, found none"
    config_list+=("$(cd "$(dirname "$c")" && pwd)/$(basename "$c")")
done
# --train-args: overrides go into the grid (they may change the run folder), the rest to hax-train.
read -r -a words <<<"$train_args"
overrides=() options=()
for w in "${words[@]+"${words[@]}"}"; do
    if [[ $w == *=* && $w != -* ]]; then overrides+=("$w"); else options+=("$w"); fi
done
for w in "${options[@]+"${options[@]}"}"; do
    [ "$w" = --force ] && usage_fail "--train-args: --force would start every run over at each call; remove the run folders instead"
    [ "$w" = --results ] && usage_fail "--train-args: --results is RESULTS itself"
done

# One grid file per regime (hax-grid: arguments, run folders, checks),
# made in a temporary folder and moved to $state once everything checks
# (--dry-run and a refused command line write nothing).
gdir=$(mktemp -d) || fail "cannot create a temporary folder"
trap 'rm -rf "$gdir"' EXIT
yaml_list() { local out="" x; for x in "$@"; do out+="${out:+, }\"$x\""; done; echo "[$out]"; }
for reg in "${regime_list[@]}"; do
    {
        echo "# written by table1_local.sh $(printf '%q ' "${all_args[@]}")"
        echo "configs: $(yaml_list "${config_list[@]}")"
        echo "lrs: [$(IFS=,; echo "${lr_list[*]}")]"
        echo "seeds: [$(IFS=,; echo "${seed_list[*]}")]"
        echo "overrides: $(yaml_list "train.precision=$reg" "train.steps=$steps" "${overrides[@]+"${overrides[@]}"}")"
    } >"$gdir/grid_$reg.yaml.tmp" && mv "$gdir/grid_$reg.yaml.tmp" "$gdir/grid_$reg.yaml" || fail "$gdir: cannot write"
    "$grid_bin" "$gdir/grid_$reg.yaml" --results "$results" --check >/dev/null ||
        fail "the $reg grid does not check (message above)"
done

# The run list: config, then regime, lr, seed; run k of the list is entry
# (config * n_lrs + lr) * n_seeds + seed of its regime's grid.
n_l=${#lr_list[@]} n_s=${#seed_list[@]}
run_grid=() run_entry=() run_dir=()
tsv=""
k=0
for ((c = 0; c < ${#config_list[@]}; c++)); do
    for reg in "${regime_list[@]}"; do
        for ((l = 0; l < n_l; l++)); do
            for ((s = 0; s < n_s; s++)); do
                e=$(((c * n_l + l) * n_s + s))
                d=$("$grid_bin" "$gdir/grid_$reg.yaml" --results "$results" --dir "$e") || fail "hax-grid --dir $e failed"
                run_grid+=("$gdir/grid_$reg.yaml") run_entry+=("$e") run_dir+=("$d")
                tsv+="$k"$'\t'"$reg"$'\t'"${lr_list[l]}"$'\t'"${seed_list[s]}"$'\t'"$d"$'\t'"${config_list[c]}"$'\n'
                k=$((k + 1))
            done
        done
    done
done
n_runs=$k

if [ $dry = 1 ]; then
    printf '%s' "$tsv" >"$gdir/runs.tsv"
    state=$gdir
    progress_table
    echo "# dry run: nothing started; each run: $train_bin CONFIG train.precision=P train.steps=$steps" \
        "${overrides[*]+"${overrides[*]}"} train.lr=LR train.seed=SEED --results $results ${options[*]+"${options[*]}"}"
    exit 0
fi

other=$(driver_pid)
[ -z "$other" ] || [ "$other" = $$ ] ||
    fail "$results: another table1_local.sh (pid $other) is running it; wait for it or run --stop $results"
mkdir -p "$state" "$results/logs" || fail "$results: cannot create the folder"
for reg in "${regime_list[@]}"; do
    mv "$gdir/grid_$reg.yaml" "$state/grid_$reg.yaml" || fail "$state: cannot write"
done
run_grid=("${run_grid[@]//"$gdir"/$state}")
printf '%s' "$tsv" >"$state/runs.tsv.tmp" && mv "$state/runs.tsv.tmp" "$state/runs.tsv" || fail "$state: cannot write"

if [ $background = 1 ]; then
    args=()
    for a in "${all_args[@]}"; do [ "$a" = --background ] || args+=("$a"); done
    setsid nohup bash "$me" "${args[@]}" >>"$results/table1_local.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$state/driver.pid"
    say "started in the background (pid $pid): log $results/table1_local.log, progress $results/progress.txt"
    exit 0
fi

# ---------------------------------------------------------------- run mode: the loop
echo $$ >"$state/driver.pid"
start=$(date +%s)
stop="" pids=() idxs=()
ask_stop() {  # the runs write a checkpoint at the end of their step and exit 3
    [ -n "$stop" ] && return
    stop=$1
    say "$1: asking the ${#pids[@]} active run(s) to checkpoint and stop"
    local p
    for p in "${pids[@]+"${pids[@]}"}"; do kill -TERM "$p" 2>/dev/null; done
}
trap 'ask_stop SIGTERM' TERM
trap 'ask_stop SIGINT' INT
# MPS: kernels of the runs' processes run side by side instead of in time
# slices. The daemon serves only processes that see its pipe folder.
mps_quit() { :; }
if [ $mps = 1 ]; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/hax-mps.$$ CUDA_MPS_LOG_DIRECTORY=/tmp/hax-mps.$$/log
    mkdir -p "$CUDA_MPS_LOG_DIRECTORY" || fail "--mps: cannot create $CUDA_MPS_LOG_DIRECTORY"
    nvidia-cuda-mps-control -d || fail "--mps: nvidia-cuda-mps-control -d failed (exit $?)"
    mps_quit() { echo quit | nvidia-cuda-mps-control; rm -rf "$CUDA_MPS_PIPE_DIRECTORY"; }
    say "MPS control daemon started ($CUDA_MPS_PIPE_DIRECTORY)"
fi
say "$n_runs runs (${#config_list[@]} configs x ${regime_list[*]} x lr ${lr_list[*]} x seed ${seed_list[*]}), $steps steps each, $jobs at a time"

n_done=0 n_stopped=0 n_failed=0 next=0 last_progress=0
while :; do
    # start runs while there is room
    while [ -z "$stop" ] && [ ${#pids[@]} -lt "$jobs" ] && [ $next -lt $n_runs ]; do
        i=$next
        next=$((next + 1))
        read -r st _ <<<"$(run_state "${run_dir[i]}")"
        if [ "$st" = complete ]; then n_done=$((n_done + 1)); continue; fi
        mapfile -t args < <("$grid_bin" "${run_grid[i]}" --args "${run_entry[i]}")
        rel=${run_dir[i]#"$results"/}
        log=$results/logs/${rel//\//__}.log
        echo "=== $(date '+%F %T') hax-train ${args[*]} --results $results ${options[*]+"${options[*]}"}" >>"$log"
        "$train_bin" "${args[@]}" --results "$results" "${options[@]+"${options[@]}"}" >>"$log" 2>&1 &
        pids+=($!) idxs+=("$i")
        say "run $i ($st): started (pid $!): $rel -> $log"
    done
    [ ${#pids[@]} -eq 0 ] && break
    now=$(date +%s)
    if [ "$time_limit" -gt 0 ] && [ $((now - start)) -ge "$time_limit" ]; then ask_stop "time limit ($time_limit s)"; fi
    if [ $((now - last_progress)) -ge 10 ]; then write_progress "${idxs[@]}"; last_progress=$now; fi
    sleep 1
    # reap the runs that ended
    keep_p=() keep_i=()
    for k in "${!pids[@]}"; do
        p=${pids[k]} i=${idxs[k]}
        if kill -0 "$p" 2>/dev/null; then keep_p+=("$p") keep_i+=("$i"); continue; fi
        wait "$p"
        rc=$?
        rel=${run_dir[i]#"$results"/}
        case $rc in
        0) n_done=$((n_done + 1)); say "run $i: done: $rel" ;;
        3) n_stopped=$((n_stopped + 1)); say "run $i: stopped with a checkpoint (exit 3): $rel" ;;
        143)  # our SIGTERM reached it before hax-train had set its handler (a slow start): nothing lost
            if [ -n "$stop" ]; then
                n_stopped=$((n_stopped + 1)); say "run $i: stopped while starting (SIGTERM, exit 143): $rel; it resumes from its last checkpoint, if any"
            else
                n_failed=$((n_failed + 1)); say "run $i: FAILED (killed by SIGTERM, not the driver's): $rel"
            fi ;;
        *)
            n_failed=$((n_failed + 1))
            say "run $i: FAILED (exit $rc): $rel; the end of its log:"
            tail -n 3 "$results/logs/${rel//\//__}.log" | sed 's/^/    /'
            ;;
        esac
        last_progress=0
    done
    pids=("${keep_p[@]+"${keep_p[@]}"}") idxs=("${keep_i[@]+"${keep_i[@]}"}")
done
rm -f "$state/driver.pid"
mps_quit
write_progress
left=$((n_runs - n_done - n_stopped - n_failed))
say "$n_done complete, $n_stopped stopped with a checkpoint, $n_failed failed, $left not started"
[ $n_failed -gt 0 ] && exit 1
[ $n_stopped -gt 0 ] || [ $left -gt 0 ] && exit 3
exit 0
}
