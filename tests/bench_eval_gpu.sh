#!/usr/bin/env bash
# bench_eval_gpu.sh: hax-eval throughput and GPU memory against the sample
# length (issue 14's GPU figures; make bench-eval-gpu, and the last part of
# make bench-gpu). Printed, never asserted.
#
# 1. Trains each config of BENCH_EVAL_CONFIGS (Table 1's mamba2_hax and
#    mamba2 by default) for 50 steps on the GPU, on joint-recall data of the
#    paper's sizes (5..16 contexts x 5..16 keys) whose token ids are laid out
#    for 128 x 128 tables (data.id_layout=[128,128], so the model has ids for
#    every table below; model.vocab_size=288 covers the largest id, 281; the
#    rest is the config's). hax-train generates that small dataset itself.
# 2. Generates one test split per length, every sample one n x n table laid
#    out the same way: n = 16, 32, 64, 128 give 1,058, 4,162, 16,514 and
#    65,794 tokens per sample (1K, 4K, 16K, 64K; 2 + 2n(2n + 1)).
# 3. Runs bin/hax-eval BEST --data DIR --device cuda on each and prints its
#    tokens/s (hax-eval's "eval:" line: tokens over the pass time) and the
#    device memory in use after the pass (cudaMemGetInfo: the engine's
#    buffers grow to the largest batch and stay, so this is the peak; it
#    includes the CUDA context), with the wall time of the whole command.
#
# Settings (environment): BENCH_EVAL_CONFIGS ("mamba2_hax mamba2"), BENCH_EVAL_STEPS (50),
# BENCH_EVAL_SIZES ("16 32 64 128"), BENCH_EVAL_SAMPLES (samples per length,
# "1024 512 256 256"), BENCH_EVAL_BATCH (the global batch of hax-eval; default
# hax-eval's: the run's evaluation batch, 256 sequences of 1,058 tokens, and
# on longer rows as many as hold that many positions: 65, 16 and 4 at 4K, 16K
# and 64K), BENCH_EVAL_DEVICE (cuda;
# cpu runs the same steps on the CPU, to check the script where there is no
# GPU). Without a CUDA device (and BENCH_EVAL_DEVICE=cuda) it prints
# "SKIP: no CUDA device" and exits 0.
# Usage: tests/bench_eval_gpu.sh [WORK-FOLDER] (default: a temporary folder, removed at the end)
set -u
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
DEV=${BENCH_EVAL_DEVICE:-cuda}
if [ "$DEV" = cuda ] && { ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; }; then
    echo "SKIP: no CUDA device"; exit 0
fi
CONFIGS=${BENCH_EVAL_CONFIGS:-mamba2_hax mamba2}
STEPS=${BENCH_EVAL_STEPS:-50}
read -r -a SIZES <<<"${BENCH_EVAL_SIZES:-16 32 64 128}"
read -r -a SAMPLES <<<"${BENCH_EVAL_SAMPLES:-1024 512 256 256}"
W=${1:-$(mktemp -d /tmp/hax_bench_eval.XXXXXX)}
[ -n "${1:-}" ] || trap 'rm -rf "$W"' EXIT
mkdir -p "$W"
LAYOUT=128
for n in "${SIZES[@]}"; do [ "$n" -gt "$LAYOUT" ] && LAYOUT=$n; done
VOCAB=$(( (10 + 16 + 2 * LAYOUT + 7) / 8 * 8 ))  # above the largest id 10 + 16 + 2*LAYOUT - 1
rc=0
echo "== hax-eval vs sample length ($DEV; ids laid out for ${LAYOUT}x$LAYOUT, model.vocab_size=$VOCAB)"

# 1. the models: 50 steps each on the small dataset hax-train generates
declare -A BEST
for cfg in $CONFIGS; do
    log=$W/train_$cfg.log
    "$BIN/hax-train" "configs/$cfg.yaml" "data.path=$W/train" data.generate=true \
        "data.id_layout=[$LAYOUT,$LAYOUT]" data.train_per_cell=25 data.valid_per_cell=1 data.test_per_cell=1 \
        "model.vocab_size=$VOCAB" "train.steps=$STEPS" train.warmup=10 "train.valid_every=$STEPS" train.checkpoint_every=0 \
        "train.log_every=$STEPS" "train.device=$DEV" --results "$W/res" >"$log" 2>&1
    code=$?
    # the run folder hax-train names on its last line (its label may carry a
    # precision suffix: mamba2_hax@bf16-pure)
    run=$(sed -n 's/^hax-train: done: .* -> //p' "$log" | tail -n 1)
    best=; [ -n "$run" ] && [ -f "$run/best.safetensors" ] && best=$run/best.safetensors
    if [ $code -ne 0 ] || [ -z "$best" ]; then
        echo "bench_eval_gpu.sh: $cfg: hax-train failed (exit $code): $(tail -n 1 "$log")" >&2; rc=1; continue
    fi
    BEST[$cfg]=$best
    echo "  $cfg: $(grep '^hax-train: done' "$log" | sed 's/ -> .*//')"
done

# 2. one test split per length
for i in "${!SIZES[@]}"; do
    n=${SIZES[$i]} s=${SAMPLES[$i]:-256}
    "$BIN/hax-datagen" --out "$W/len$n" --min-n-context "$n" --max-n-context "$n" --min-n-key "$n" --max-n-key "$n" \
        --id-layout "$LAYOUT:$LAYOUT" --n-train-per-cell 0 --n-valid-per-cell 0 --n-test-per-cell "$s" --shard-size 4096 \
        >"$W/datagen_$n.log" 2>&1 || { echo "bench_eval_gpu.sh: hax-datagen n=$n failed: $(tail -n 1 "$W/datagen_$n.log")" >&2; exit 1; }
done

# 3. hax-eval on each
echo
echo "| model | n_c x n_k | tokens/sample | samples | tokens/s | device MiB in use | peak host MiB | accuracy | wall s |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for cfg in $CONFIGS; do
    [ -n "${BEST[$cfg]:-}" ] || continue
    for i in "${!SIZES[@]}"; do
        n=${SIZES[$i]}
        args=("${BEST[$cfg]}" --data "$W/len$n" --device "$DEV")
        [ -n "${BENCH_EVAL_BATCH:-}" ] && args+=(--batch "$BENCH_EVAL_BATCH")
        t0=$(date +%s.%N)
        "$BIN/hax-eval" "${args[@]}" >"$W/eval_${cfg}_$n.out" 2>"$W/eval_${cfg}_$n.err"
        code=$?
        t1=$(date +%s.%N)
        out=$W/eval_${cfg}_$n.out
        if [ $code -ne 0 ]; then
            echo "| $cfg | ${n}x$n | failed (exit $code): $(tail -n 1 "$W/eval_${cfg}_$n.err") |"; rc=1; continue
        fi
        perf=$(grep '^eval:' "$out" | tail -n 1)
        tps=$(sed -n 's/^eval: \([0-9]*\) tokens\/s.*/\1/p' <<<"$perf")
        host=$(sed -n 's/.*peak host memory \([0-9]*\) MiB.*/\1/p' <<<"$perf")
        dev=$(sed -n 's/.*device memory in use \([0-9]*\) MiB.*/\1/p' <<<"$perf")
        acc=$(sed -n 's/^accuracy \([0-9.e+-]*\) over \([0-9]*\) samples.*/\1/p' "$out" | head -n 1)
        ns=$(sed -n 's/^accuracy [0-9.e+-]* over \([0-9]*\) samples.*/\1/p' "$out" | head -n 1)
        printf '| %s | %sx%s | %d | %s | %s | %s | %s | %.6s | %s |\n' "$cfg" "$n" "$n" $((2 + 2 * n * (2 * n + 1))) \
            "${ns:-?}" "${tps:-?}" "${dev:--}" "${host:-?}" "${acc:-?}" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
    done
done
exit $rc
