#!/usr/bin/env bash
# test_table1_local.sh: jobs/table1_local.sh on the CPU with the tiny
# configs: its command line, the dry run, a grid stopped by its runs and
# resumed, a time limit with 2 runs at a time, a background driver that a
# second driver may not join and that --stop stops with checkpoints, and
# --collect (whose folder hax-aggregate and analysis/publish.sh then read).
source "$(dirname "$0")/lib.sh"
DRV=$ROOT/jobs/table1_local.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for b in hax-train hax-grid hax-aggregate; do [ -x "$BIN/$b" ] || { fail "bin/$b is built"; finish; exit 1; }; done
export HAX_ROOT=$ROOT OMP_NUM_THREADS=1
CFG=$ROOT/configs/tiny.yaml,$ROOT/configs/tiny_mamba2_sw.yaml
TA="data.path=$tmp/data train.valid_every=20 train.log_every=10 train.checkpoint_every=1000"

# --- The command line ---------------------------------------------------------
"$DRV" --help | grep -q "resumable across calls" && ok "--help" || fail "--help"
check_fails "no RESULTS: exit 2" "expected one RESULTS folder, found 0" "$DRV" --steps 10
check_fails "two RESULTS: exit 2" "expected one RESULTS folder, found 2" "$DRV" --steps 10 a b
check_fails "unknown option: exit 2" "unknown option '--step'" "$DRV" --step 10 "$tmp/r"
check_fails "option without its value: exit 2" "--lrs: expected a value after it" "$DRV" "$tmp/r" --lrs
check_fails "no --steps: exit 2" "--steps: expected the number of training steps" "$DRV" "$tmp/r"
check_fails "--steps 0: exit 2" "--steps: expected a positive integer, found '0'" "$DRV" --steps 0 "$tmp/r"
check_fails "--jobs x: exit 2" "--jobs: expected a positive integer, found 'x'" "$DRV" --steps 5 --jobs x "$tmp/r"
if ! command -v nvidia-cuda-mps-control >/dev/null; then  # a machine without NVIDIA's driver utilities
    check_fails "--mps without MPS: exit 2" "--mps: expected nvidia-cuda-mps-control" "$DRV" --steps 5 --mps "$tmp/r"
fi
check_fails "--regimes fp16: exit 2" "--regimes: expected fp32, bf16 or bf16-pure, found 'fp16'" "$DRV" --steps 5 --regimes fp32,fp16 "$tmp/r"
check_fails "--lrs with an empty item: exit 2" "--lrs: expected learning rates \(numbers\), comma-separated, found '1e-3,,3e-3'" \
    "$DRV" --steps 5 --lrs 1e-3,,3e-3 "$tmp/r"
check_fails "--seeds x: exit 2" "--seeds: expected seeds \(integers >= 0\), found 'x'" "$DRV" --steps 5 --seeds 1,x "$tmp/r"
check_fails "--time-limit -1: exit 2" "--time-limit: expected seconds" "$DRV" --steps 5 --time-limit -1 "$tmp/r"
check_fails "--train-args --force: exit 2" "--force would start every run over" "$DRV" --steps 5 --train-args "--force" "$tmp/r"
check_fails "a missing config: exit 1" "nope.yaml: expected a config file, found none" "$DRV" --steps 5 --configs nope.yaml "$tmp/r"
check_fails "a bad override: exit 1, hax-grid's message" "the fp32 grid does not check" \
    "$DRV" --steps 5 --configs "$CFG" --train-args "train.lr=abc" "$tmp/r"
check_fails "--status of a folder it never ran in: exit 1" "expected a folder table1_local.sh ran in" "$DRV" --status "$tmp"
check_fails "--collect from a missing folder: exit 1" "nope: expected a results folder" "$DRV" --collect "$tmp/c" "$tmp/nope"
[ ! -e "$tmp/r" ] && ok "refused command lines write nothing" || fail "refused command lines write nothing"

# --- Dry run: the run list in order config, regime, lr, seed --------------------
R=$tmp/results
out=$("$DRV" --steps 40 --configs "$CFG" --lrs 3e-3,1e-3 --train-args "$TA" --dry-run "$R"); rc=$?
want="tiny/lr_0.003/seed_1 tiny/lr_0.001/seed_1 tiny@bf16-pure/lr_0.003/seed_1 tiny@bf16-pure/lr_0.001/seed_1 tiny_mamba2_sw/lr_0.003/seed_1 tiny_mamba2_sw/lr_0.001/seed_1 tiny_mamba2_sw@bf16-pure/lr_0.003/seed_1 tiny_mamba2_sw@bf16-pure/lr_0.001/seed_1"
got=$(printf '%s\n' "$out" | awk '$1 ~ /^[0-9]+$/ {print $8}' | paste -sd' ')
if [ $rc -eq 0 ] && [ "$got" = "$want" ] && printf '%s\n' "$out" | grep -q "# 8 runs: 0 complete, 0 active, 0 stopped (resumable), 0 failed, 8 pending" &&
    printf '%s\n' "$out" | grep -q "train.precision=P train.steps=40 data.path=$tmp/data train.valid_every=20"
then ok "--dry-run: 8 runs in order config, regime, lr, seed, with the hax-train command"; else fail "--dry-run ($got)"; printf '%s\n' "$out"; fi
[ ! -e "$R" ] && ok "--dry-run writes nothing" || fail "--dry-run writes nothing"

# --- Runs that stop themselves, then resume ------------------------------------
"$DRV" --steps 40 --configs "$CFG" --lrs 3e-3 --train-args "$TA --stop-after-step 20" "$R" >"$tmp/run1.log" 2>&1; rc=$?
if [ $rc -eq 3 ] && grep -q "# 4 runs: 0 complete, 0 active, 4 stopped (resumable), 0 failed, 0 pending" "$R/progress.txt" &&
    [ "$(grep -c 'stopped with a checkpoint (exit 3)' "$tmp/run1.log")" = 4 ] && [ -f "$R/tiny@bf16-pure/lr_0.003/seed_1/checkpoint.safetensors" ]
then ok "runs stopped at step 20: exit 3, 4 resumable in progress.txt, checkpoints"; else fail "runs stopped at step 20 (exit $rc)"; cat "$tmp/run1.log" "$R/progress.txt"; fi
"$DRV" --steps 40 --configs "$CFG" --lrs 3e-3 --train-args "$TA" "$R" >"$tmp/run2.log" 2>&1; rc=$?
n_res=$(cat "$R"/logs/*.log | grep -c "hax-train: resuming .* at step 20")
if [ $rc -eq 0 ] && [ "$n_res" = 4 ] && grep -q "# 4 runs: 4 complete, 0 active" "$R/progress.txt" &&
    grep -q '^  "steps": 40,$' "$R/tiny_mamba2_sw@bf16-pure/lr_0.003/seed_1/result.json"
then ok "the same command again: every run resumes at step 20 and completes (exit 0)"; else fail "resume (exit $rc, $n_res resumed)"; cat "$tmp/run2.log"; fi
"$DRV" --steps 40 --configs "$CFG" --lrs 3e-3 --train-args "$TA" "$R" >"$tmp/run3.log" 2>&1; rc=$?
[ $rc -eq 0 ] && ! grep -q "started (pid" "$tmp/run3.log" && grep -q "4 complete" "$tmp/run3.log" &&
    ok "a third time: nothing to start, exit 0" || fail "a third time: nothing to start (exit $rc)"
"$DRV" --status "$R" | grep -q "^3     bf16-pure  3e-3     1     complete   40/40 " && ok "--status: each run's state and steps" ||
    fail "--status: each run's state and steps ($("$DRV" --status "$R" | tail -n 1))"

# --- A time limit with two runs at a time ---------------------------------------
T=$tmp/limit
"$DRV" --steps 100000 --jobs 2 --time-limit 2 --configs "$CFG" --lrs 3e-3 --train-args "$TA" "$T" >"$tmp/limit.log" 2>&1; rc=$?
if [ $rc -eq 3 ] && grep -q "time limit (2 s): asking the 2 active run(s) to checkpoint and stop" "$tmp/limit.log" &&
    grep -q "# 4 runs: 0 complete, 0 active, 2 stopped (resumable), 0 failed, 2 pending" "$T/progress.txt" &&
    grep -q '"status": "preempted"' "$T/tiny/lr_0.003/seed_1/result.json"
then ok "--time-limit 2 --jobs 2: both active runs checkpoint and stop, 2 not started, exit 3"; else fail "--time-limit (exit $rc)"; cat "$tmp/limit.log"; fi

# --- Background, one driver per folder, --stop ----------------------------------
# (a copy of the driver, edited while it runs: a checkout updated under a
# background driver must not break it)
B=$tmp/bg
mkdir -p "$tmp/jobs" && cp "$DRV" "$tmp/jobs/table1_local.sh"
DRV=$tmp/jobs/table1_local.sh
"$DRV" --steps 100000 --configs "$ROOT/configs/tiny.yaml" --regimes bf16-pure --lrs 3e-3 --train-args "$TA" --background "$B" >"$tmp/bg.log" 2>&1
rc=$?
for _ in $(seq 1 60); do grep -q '"status": "running"' "$B/tiny@bf16-pure/lr_0.003/seed_1/result.json" 2>/dev/null && break; sleep 0.5; done
pid=$(cat "$B/.table1_local/driver.pid" 2>/dev/null)
[ $rc -eq 0 ] && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && ok "--background: the driver runs detached (pid file)" ||
    fail "--background (exit $rc: $(cat "$tmp/bg.log"))"
sed -i '2i # an edit while the driver runs, which moves every line' "$DRV" && printf '\n# and one more\n' >>"$DRV"
check_fails "a second driver on the same folder is refused" "another table1_local.sh \(pid $pid\) is running it" \
    "$DRV" --steps 100000 --configs "$ROOT/configs/tiny.yaml" --regimes bf16-pure --lrs 3e-3 --train-args "$TA" "$B"
"$DRV" --status "$B" | grep -q "driver: $pid" && ok "--status names the live driver" || fail "--status names the live driver"
"$DRV" --stop "$B" >"$tmp/stop.log" 2>&1; rc=$?
if [ $rc -eq 0 ] && ! kill -0 "$pid" 2>/dev/null && grep -q '"status": "preempted"' "$B/tiny@bf16-pure/lr_0.003/seed_1/result.json" &&
    [ -f "$B/tiny@bf16-pure/lr_0.003/seed_1/checkpoint.safetensors" ] && grep -q "1 stopped (resumable)" "$B/progress.txt" &&
    grep -q "0 complete, 1 stopped with a checkpoint, 0 failed, 0 not started" "$B/table1_local.log" &&
    ! grep -q "syntax error" "$B/table1_local.log"
then ok "--stop: the driver's run writes a checkpoint, the driver (edited meanwhile) ends cleanly"; else fail "--stop (exit $rc)"; cat "$tmp/stop.log" "$B/table1_local.log"; kill "$pid" 2>/dev/null; fi
"$DRV" --stop "$B" | grep -q "no driver is running" && ok "--stop with no driver: says so, exit 0" || fail "--stop with no driver"
DRV=$ROOT/jobs/table1_local.sh

# --- Collect, then the published tables -------------------------------------------
P=$tmp/pub
"$DRV" --collect "$P/runs" "$R" >/dev/null; rc=$?
files=$(cd "$P/runs" && find . -type f | sort | paste -sd' ')
want="./progress.txt ./tiny/lr_0.003/seed_1/metrics.csv ./tiny/lr_0.003/seed_1/result.json ./tiny@bf16-pure/lr_0.003/seed_1/metrics.csv ./tiny@bf16-pure/lr_0.003/seed_1/result.json ./tiny_mamba2_sw/lr_0.003/seed_1/metrics.csv ./tiny_mamba2_sw/lr_0.003/seed_1/result.json ./tiny_mamba2_sw@bf16-pure/lr_0.003/seed_1/metrics.csv ./tiny_mamba2_sw@bf16-pure/lr_0.003/seed_1/result.json"
[ $rc -eq 0 ] && [ "$files" = "$want" ] && cmp -s "$P/runs/tiny/lr_0.003/seed_1/metrics.csv" "$R/tiny/lr_0.003/seed_1/metrics.csv" &&
    ok "--collect: result.json and metrics.csv of every run, folders kept" || fail "--collect (exit $rc: $files)"
"$DRV" --collect "$P/runs" --with-best --with-checkpoint --with-logs "$R" >/dev/null
[ -f "$P/runs/tiny/lr_0.003/seed_1/best.safetensors" ] && [ ! -f "$P/runs/tiny/lr_0.003/seed_1/checkpoint.safetensors" ] &&
    [ -f "$P/runs/logs/tiny__lr_0.003__seed_1.log" ] && ok "--collect --with-best --with-logs; no checkpoint of a complete run" ||
    fail "--collect --with-best --with-checkpoint --with-logs"
# the time-limited folder's stopped runs, carried elsewhere, resume there
K=$tmp/carry
"$DRV" --collect "$K" --with-checkpoint "$T" >/dev/null
n_ck=$(find "$K" -name checkpoint.safetensors | wc -l)
"$DRV" --steps 100000 --jobs 2 --time-limit 4 --configs "$CFG" --lrs 3e-3 --train-args "$TA" "$K" >"$tmp/carry.log" 2>&1; rc=$?
n_res=$(cat "$K"/logs/*.log 2>/dev/null | grep -c "hax-train: resuming ")
[ "$n_ck" = 2 ] && [ $rc -eq 3 ] && [ "$n_res" = 2 ] && ok "--collect --with-checkpoint: the 2 stopped runs resume in the collected folder" ||
    fail "--collect --with-checkpoint: resume in the collected folder ($n_ck checkpoints, exit $rc, $n_res resumed)"
check_fails "--collect into the results folder itself is refused" "expected a folder outside" "$DRV" --collect "$R/pub" "$R"
rm -f "$P"/runs/*/lr_*/seed_*/*.safetensors && rm -rf "$P/runs/logs" "$P/runs/progress.txt"
if bash "$ROOT/analysis/publish.sh" "$P" >/dev/null && grep -q "tiny_mamba2_sw@bf16-pure" "$P/tables/table.md" &&
    [ -f "$P/plots/curves_tiny.svg" ] && bash "$ROOT/analysis/publish.sh" --check "$P" >/dev/null
then ok "publish.sh on the collected runs: tables and curves, and --check agrees"; else fail "publish.sh on the collected runs"; fi

finish
