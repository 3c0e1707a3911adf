#!/usr/bin/env bash
# bench_gpu.sh: the GPU benchmark (make bench-gpu); figures printed, never
# asserted. Parts, all by default, or those named:
#   table  build/gpu/bench_gpu (tests/bench_gpu.c): every config of
#          configs/grid_table1.yaml in fp32, bf16-pure and bf16: ms per
#          training step (batch 64, CUDA graph), tokens/s, one validation pass
#          over the real valid split of data/joint_recall at 64 sequences per
#          forward and at the config's train.eval_batch, peak GPU memory
#   train  hax-train end to end, 2,000 steps (BENCH_TRAIN_STEPS) of
#          configs/mamba2_hax.yaml and configs/mamba2.yaml on data/joint_recall
#          (train.device=cuda, warm-up 100, validation every 1,000 steps, as
#          README "CUDA backend" measured it), in fp32 and bf16-pure
#          (BENCH_TRAIN_PRECISIONS): wall time, tokens/s and hax-train's own
#          validation pass time (at the config's train.eval_batch)
#   eval   tests/bench_eval_gpu.sh: hax-eval tokens/s and GPU memory at
#          1K-64K tokens per sample
# data/joint_recall (the default dataset) is generated first when missing.
# Extra arguments of bench_gpu go in BENCH_GPU_ARGS (e.g. "--precision fp32",
# "--only mamba2_hax,samba", "--reps 50"). Without a CUDA device it prints
# "SKIP: no CUDA device" and exits 0.
# Usage: tests/bench_gpu.sh [table] [train] [eval]
set -u
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "SKIP: no CUDA device"; exit 0
fi
parts=${*:-table train eval}
want() { [[ " $parts " == *" $1 "* ]]; }
DATA=data/joint_recall
STEPS=${BENCH_TRAIN_STEPS:-2000}
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
echo "git: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo -dirty)"
if (want table || want train) && [ ! -f "$DATA/manifest.yaml" ]; then
    echo "== generating $DATA: $BIN/hax-datagen --out $DATA"
    "$BIN/hax-datagen" --out "$DATA" || { echo "bench_gpu.sh: hax-datagen failed" >&2; exit 1; }
fi
rc=0
if want table; then
    echo "== build/gpu/bench_gpu --data $DATA ${BENCH_GPU_ARGS:-}"
    # shellcheck disable=SC2086
    build/gpu/bench_gpu --data "$DATA" ${BENCH_GPU_ARGS:-} || rc=1
fi
if want train; then
    tmp=$(mktemp -d /tmp/hax_bench_gpu.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    echo
    echo "== hax-train, $STEPS steps on $DATA (train.device=cuda train.warmup=100 train.valid_every=1000)"
    echo "| config | precision | wall s | training tokens/s (hax-train) | validation pass s | done line |"
    echo "|---|---|---:|---:|---:|---|"
    for run in $(for c in mamba2_hax mamba2; do for p in ${BENCH_TRAIN_PRECISIONS:-fp32 bf16-pure}; do echo "$c:$p"; done; done); do
        cfg=${run%%:*} prec=${run#*:}
        t0=$(date +%s.%N)
        "$BIN/hax-train" "configs/$cfg.yaml" "data.path=$DATA" train.device=cuda "train.steps=$STEPS" \
            "train.precision=$prec" train.warmup=100 train.valid_every=1000 --results "$tmp/r" >"$tmp/$cfg.$prec.log" 2>&1
        code=$?
        t1=$(date +%s.%N)
        done_line=$(grep "^hax-train: done" "$tmp/$cfg.$prec.log" | tail -n 1)
        tps=$(sed -n 's/.*(\([0-9]*\) tok\/s).*/\1/p' <<<"$done_line")
        vps=$(sed -n 's/^hax-train: [0-9]* validation passes, \([0-9.]*\) s each.*/\1/p' "$tmp/$cfg.$prec.log")
        if [ $code -ne 0 ]; then
            echo "| $cfg | $prec | failed (exit $code): $(tail -n 1 "$tmp/$cfg.$prec.log") | | | |"; rc=1; continue
        fi
        echo "| $cfg | $prec | $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') | ${tps:-?} | ${vps:-?} | $(sed "s/^hax-train: //; s/ -> .*//" <<<"$done_line") |"
    done
fi
if want eval; then
    echo
    tests/bench_eval_gpu.sh || rc=1
fi
exit $rc
