#!/usr/bin/env bash
# gpu_train.sh: hax-train on the GPU (train.device: cuda) against the CPU on
# the tiny plain Mamba (configs/tiny_mamba.yaml): the loss curves of 300
# steps, graph steps vs plain device steps, 2 ranks sharing the GPU (NCCL
# refuses one device per two ranks: the host MPI all-reduce is taken then),
# stop + resume bit for bit on the GPU, steps in flight (the same weights,
# stop + resume, a non-finite step found late), with HAX_BASE_BIN=DIR the same
# runs as an earlier build bit for bit, train.init_from (seed 2 from seed
# 1's weights = seed 1), device: auto picks cuda; then the
# tiny Mamba+HAX (configs/tiny.yaml: the sparse branch with LSH and key
# selection) and the tiny Samba, GPU (graph steps) vs CPU curves. Prints
# "SKIP: no CUDA device" and exits 0 without one. Not run by tests/run.sh.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "SKIP: no CUDA device"; exit 0
fi
T=$BIN/hax-train
FILES=$ROOT/build/tests/test_train_files
tmp=$(mktemp -d /tmp/hax_gpu_train.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
STEPS=${GPU_TRAIN_STEPS:-300}
RUNARGS=(configs/tiny_mamba.yaml data.path=$tmp/data train.steps=$STEPS train.valid_every=100 train.log_every=1
         train.checkpoint_every=0)
run_dir() { echo "$tmp/$1/tiny_mamba/lr_0.003/seed_1"; }
# curve_diff A B COL: largest |a - b| / max(|b|, 1e-3) over the rows of a metrics.csv column
curve_diff() { paste -d, "$1/metrics.csv" "$2/metrics.csv" | awk -F, -v c="$3" 'NR > 1 {
    a = $c; b = $(c + 6); d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b; if (m < 1e-3) m = 1e-3;
    if (d / m > w) w = d / m } END { printf "%.2e", w + 0 }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

t0=$(date +%s.%N)
"$T" "${RUNARGS[@]}" train.device=cpu --results "$tmp/cpu" >"$tmp/cpu.log" 2>&1; rc=$?
t1=$(date +%s.%N)
check "cpu run exits 0" test $rc -eq 0
HAX_CUDA_GRAPH=1 "$T" "${RUNARGS[@]}" train.device=cuda --results "$tmp/gpu" >"$tmp/gpu.log" 2>&1; rc=$?
t2=$(date +%s.%N)
check "gpu run exits 0 ($(tail -n 1 "$tmp/gpu.log"))" test $rc -eq 0
check "gpu run says device cuda" grep -q "device cuda -> cuda" "$tmp/gpu.log"
echo "  wall: cpu $(awk -v a=$t0 -v b=$t1 'BEGIN{printf "%.1f", b-a}') s, gpu $(awk -v a=$t1 -v b=$t2 'BEGIN{printf "%.1f", b-a}') s ($STEPS steps + validation + test)"
grep "tok/s" "$tmp/cpu.log" | tail -n 1; grep "tok/s" "$tmp/gpu.log" | tail -n 1
C=$(run_dir cpu) G=$(run_dir gpu)
dl=$(curve_diff "$G" "$C" 2) da=$(curve_diff "$G" "$C" 4)
d100=$(head -n 101 "$G/metrics.csv" >"$tmp/g100.csv"; head -n 101 "$C/metrics.csv" >"$tmp/c100.csv"
       paste -d, "$tmp/g100.csv" "$tmp/c100.csv" | awk -F, 'NR > 1 { d = $2 - $8; if (d < 0) d = -d;
       m = $8 < 0 ? -$8 : $8; if (d / m > w) w = d / m } END { printf "%.2e", w + 0 }')
echo "  gpu vs cpu: loss curve max rel diff $dl (first 100 steps $d100), train acc $da"
check "gpu vs cpu: first 100 losses within 1e-4 ($d100)" le "$d100" 1e-4
check "gpu vs cpu: all $STEPS losses within 1e-3 ($dl)" le "$dl" 1e-3
check "gpu vs cpu: final weights within 1e-3" "$FILES" cmp "$C/checkpoint.safetensors" "$G/checkpoint.safetensors" 1e-3 --weights
for k in best_valid_acc test_acc; do
    echo "  $k: cpu $(sed -n "s/^  \"$k\": \([0-9.e+-]*\),*\$/\1/p" "$C/result.json") gpu $(sed -n "s/^  \"$k\": \([0-9.e+-]*\),*\$/\1/p" "$G/result.json")"
done

# plain device steps (no graph): same curve to rounding
HAX_CUDA_GRAPH=0 "$T" "${RUNARGS[@]}" train.device=cuda --results "$tmp/plain" >"$tmp/plain.log" 2>&1; rc=$?
check "gpu plain-step run exits 0" test $rc -eq 0
P=$(run_dir plain)
dp=$(curve_diff "$P" "$G" 2)
check "plain vs graph steps: losses within 1e-4 ($dp)" le "$dp" 1e-4

# 2 ranks on the one GPU
$MPIRUN -np 2 "$T" "${RUNARGS[@]}" train.device=cuda --results "$tmp/two" >"$tmp/two.log" 2>&1; rc=$?
check "2 ranks on the GPU exit 0 ($(tail -n 1 "$tmp/two.log"))" test $rc -eq 0
grep "gradients summed" "$tmp/two.log"
W=$(run_dir two)
d2=$(curve_diff "$W" "$P" 2)
check "2 ranks vs 1 rank on the GPU: losses within 1e-4 ($d2)" le "$d2" 1e-4
check "2 ranks: result.json says 2 ranks" grep -q '"ranks": 2' "$W/result.json"

# stop after step 150 and resume: bit for bit with the uninterrupted graph run
"$T" "${RUNARGS[@]}" train.device=cuda --results "$tmp/stop" --stop-after-step 150 >"$tmp/stop.log" 2>&1; rc=$?
check "stopped run exits 3" test $rc -eq 3
"$T" "${RUNARGS[@]}" train.device=cuda --results "$tmp/stop" >"$tmp/stop2.log" 2>&1; rc=$?
check "resumed run exits 0" test $rc -eq 0
S=$(run_dir stop)
check "resume on the GPU: checkpoint bit for bit" "$FILES" cmp "$G/checkpoint.safetensors" "$S/checkpoint.safetensors" 0
check "resume on the GPU: metrics.csv equal" cmp -s "$G/metrics.csv" "$S/metrics.csv"

# steps in flight: with rows every 50 steps up to 3 steps are begun before
# the oldest is ended (log_every=1 above ends each at once): the same weights
# bit for bit; stop + resume bit for bit with the uninterrupted run; the
# time split printed at the end
PIPE=("${RUNARGS[@]}" train.log_every=50)
"$T" "${PIPE[@]}" train.device=cuda --results "$tmp/pipe" >"$tmp/pipe.log" 2>&1; rc=$?
check "steps in flight: run exits 0" test $rc -eq 0
I=$(run_dir pipe)
check "steps in flight: final weights bit for bit with one step at a time" \
    "$FILES" cmp "$G/checkpoint.safetensors" "$I/checkpoint.safetensors" 0 --weights
check "steps in flight: best.safetensors bit for bit" "$FILES" cmp "$G/best.safetensors" "$I/best.safetensors" 0
check "steps in flight: same validation accuracies" \
    cmp -s <(awk -F, 'NR > 1 && $6 != "" && $6 != "nan"' "$G/metrics.csv" | cut -d, -f1,6) \
           <(awk -F, 'NR > 1 && $6 != "" && $6 != "nan"' "$I/metrics.csv" | cut -d, -f1,6)
grep "ms per step\|validation passes" "$tmp/pipe.log"
check "steps in flight: the time split is printed" grep -q "ms per step in the loop, .* in the engine (device)" \
    "$tmp/pipe.log"
"$T" "${PIPE[@]}" train.device=cuda --results "$tmp/pstop" --stop-after-step 170 >"$tmp/pstop.log" 2>&1; rc=$?
check "steps in flight: stopped run exits 3" test $rc -eq 3
"$T" "${PIPE[@]}" train.device=cuda --results "$tmp/pstop" >"$tmp/pstop2.log" 2>&1; rc=$?
check "steps in flight: resumed run exits 0" test $rc -eq 0
check "steps in flight: resume, checkpoint bit for bit" \
    "$FILES" cmp "$I/checkpoint.safetensors" "$(run_dir pstop)/checkpoint.safetensors" 0
check "steps in flight: resume, metrics.csv equal" cmp -s "$I/metrics.csv" "$(run_dir pstop)/metrics.csv"

# a non-finite step found late (steps 24, 25 begun after it) stops the run
# at that step; result.json names the step before it; the checkpoint of
# step 15 is kept
"$T" "${RUNARGS[@]}" train.log_every=10 train.checkpoint_every=15 train.device=cuda --results "$tmp/nan" \
    --nan-at-step 23 >"$tmp/nan.log" 2>&1; rc=$?
N=$(run_dir nan)
check "gpu non-finite: exit 1" test $rc -eq 1
check "gpu non-finite: one clear line" grep -q "^hax: step 23: non-finite" "$tmp/nan.log"
check "gpu non-finite: result.json failed at step 22" grep -q '"steps": 22,' "$N/result.json"
check "gpu non-finite: checkpoint of step 15 kept" grep -q '"step":"15"' <(head -c 4096 "$N/checkpoint.safetensors")

# HAX_BASE_BIN=DIR (the bin/ of an earlier build, e.g. of the commit before
# the steps in flight): the same GPU runs must match it bit for bit (metrics,
# validation and test figures, weights)
if [ -n "${HAX_BASE_BIN:-}" ]; then
    for cfg in tiny_mamba tiny; do
        A=(configs/$cfg.yaml data.path=$tmp/data train.steps=$STEPS train.valid_every=100 train.log_every=25
           train.checkpoint_every=0 train.device=cuda)
        "$HAX_BASE_BIN/hax-train" "${A[@]}" --results "$tmp/base_$cfg" >"$tmp/base_$cfg.log" 2>&1; rc=$?
        check "$cfg: base build's run exits 0" test $rc -eq 0
        # eval_batch 0: this build's passes at the base build's batch (its result.json gains the field,
        # and its config's train line: both left out of the comparison)
        "$T" "${A[@]}" train.eval_batch=0 --results "$tmp/new_$cfg" >"$tmp/new_$cfg.log" 2>&1; rc=$?
        check "$cfg: this build's run exits 0" test $rc -eq 0
        X=$tmp/base_$cfg/$cfg/lr_0.003/seed_1 Y=$tmp/new_$cfg/$cfg/lr_0.003/seed_1
        check "$cfg vs base build: metrics.csv equal" cmp -s "$X/metrics.csv" "$Y/metrics.csv"
        check "$cfg vs base build: checkpoint bit for bit" "$FILES" cmp "$X/checkpoint.safetensors" \
            "$Y/checkpoint.safetensors" 0
        check "$cfg vs base build: best.safetensors bit for bit" "$FILES" cmp "$X/best.safetensors" \
            "$Y/best.safetensors" 0
        check "$cfg vs base build: result.json equal apart from timing" \
            cmp -s <(grep -Ev '"(wall_time|tokens_per_s|git_revision|output|heartbeat|eval_batch|train)"' "$X/result.json") \
                   <(grep -Ev '"(wall_time|tokens_per_s|git_revision|output|heartbeat|eval_batch|train)"' "$Y/result.json")
    done
fi

# train.init_from on the GPU: seed 2 from seed 1's initial weights (hax-train
# --save-init) trains exactly as seed 1 (plain Mamba: the seed is only the
# init), in fp32 and bf16-pure
for prec in fp32 bf16-pure; do
    I=("${RUNARGS[@]}" train.steps=20 train.precision=$prec train.device=cuda output.arch=init)
    "$T" "${I[@]}" --save-init "$tmp/init_$prec.st" >/dev/null 2>&1
    "$T" "${I[@]}" --results "$tmp/i1_$prec" >/dev/null 2>&1
    "$T" "${I[@]}" train.seed=2 train.init_from="$tmp/init_$prec.st" --results "$tmp/i2_$prec" >"$tmp/i2_$prec.log" 2>&1
    rc=$?; check "gpu init_from $prec: exit 0" test $rc -eq 0
    lab=init; [ $prec = fp32 ] || lab=init@$prec
    X=$tmp/i1_$prec/$lab/lr_0.003/seed_1 Y=$tmp/i2_$prec/$lab/lr_0.003/seed_2
    check "gpu init_from $prec: loads the file" grep -q "initial weights from" "$tmp/i2_$prec.log"
    check "gpu init_from $prec: seed 2 from seed 1's weights: metrics.csv equals seed 1's" \
        cmp -s "$X/metrics.csv" "$Y/metrics.csv"
    check "gpu init_from $prec: checkpoint bit for bit" "$FILES" cmp "$X/checkpoint.safetensors" \
        "$Y/checkpoint.safetensors" 0
done

# device choice
out=$("$T" "${RUNARGS[@]}" train.steps=2 train.warmup=1 train.device=auto --results "$tmp/auto" 2>&1); rc=$?
check "device auto picks cuda for plain Mamba" grep -q "device auto -> cuda" <<<"$out"

# tiny HAX and tiny Samba: GPU graph steps vs CPU. Key selection picks keys by
# a top-k of float scores, so a last-bit difference can flip a pick late in
# training: the first 100 losses must agree closely, the whole curve loosely.
for cfg in tiny tiny_samba; do
    A=(configs/$cfg.yaml data.path=$tmp/data train.steps=$STEPS train.valid_every=100 train.log_every=1
       train.checkpoint_every=0)
    "$T" "${A[@]}" train.device=cpu --results "$tmp/c_$cfg" >"$tmp/c_$cfg.log" 2>&1; rc=$?
    check "$cfg: cpu run exits 0" test $rc -eq 0
    "$T" "${A[@]}" train.device=cuda --results "$tmp/g_$cfg" >"$tmp/g_$cfg.log" 2>&1; rc=$?
    check "$cfg: gpu run exits 0 ($(tail -n 1 "$tmp/g_$cfg.log"))" test $rc -eq 0
    check "$cfg: gpu run says device cuda" grep -q "device cuda -> cuda" "$tmp/g_$cfg.log"
    grep "tok/s" "$tmp/c_$cfg.log" | tail -n 1; grep "tok/s" "$tmp/g_$cfg.log" | tail -n 1
    C=$tmp/c_$cfg/$cfg/lr_0.003/seed_1 G=$tmp/g_$cfg/$cfg/lr_0.003/seed_1
    head -n 101 "$G/metrics.csv" >"$tmp/g100.csv"; head -n 101 "$C/metrics.csv" >"$tmp/c100.csv"
    d100=$(paste -d, "$tmp/g100.csv" "$tmp/c100.csv" | awk -F, 'NR > 1 { d = $2 - $8; if (d < 0) d = -d;
           m = $8 < 0 ? -$8 : $8; if (d / m > w) w = d / m } END { printf "%.2e", w + 0 }')
    dl=$(curve_diff "$G" "$C" 2)
    echo "  $cfg gpu vs cpu: loss curve max rel diff $dl (first 100 steps $d100)"
    for k in best_valid_acc test_acc; do
        echo "  $cfg $k: cpu $(sed -n "s/^  \"$k\": \([0-9.e+-]*\),*\$/\1/p" "$C/result.json") gpu $(sed -n "s/^  \"$k\": \([0-9.e+-]*\),*\$/\1/p" "$G/result.json")"
    done
    check "$cfg gpu vs cpu: first 100 losses within 1e-4 ($d100)" le "$d100" 1e-4
    check "$cfg gpu vs cpu: all $STEPS losses within 5e-2 ($dl)" le "$dl" 5e-2
done
finish
