#!/usr/bin/env bash
# fuzz.sh [N] [SEED] [TARGETS]: seeded mutation runs over every reader. For
# each target, N mutations of a valid input (tests/fuzz_mutate.py) are given
# to the program that reads it, each under a 10 s limit, counting inputs,
# crashes (a signal, or a sanitizer report), hangs (past the limit), wrong
# exit codes (not 0..3), extra stderr lines (an exit 1 with more than one
# line; --verify lists its problems, so not counted there) and modified files
# (the mutated input, the golden files, the source dataset). Prints the counts
# per target and in total; exits 1 on any crash, hang or modified file.
# HAX_BIN picks the binaries (e.g. the sanitizer build); crashing inputs are
# kept under $FUZZ_KEEP (default /tmp/hax_fuzz_crashes).
# Targets: config override safetensors resume manifest shard result (all by default).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${HAX_BIN:-$ROOT/bin}
N=${1:-300}
SEED=${2:-1}
TARGETS=${3:-config override safetensors resume manifest shard result}
KEEP=${FUZZ_KEEP:-/tmp/hax_fuzz_crashes}
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W=$(mktemp -d /tmp/hax_fuzz.XXXXXX)
trap 'rm -rf "$W"' EXIT
cd "$ROOT"
TOTAL=(0 0 0 0 0 0)  # inputs crashes hangs wrong_exit extra_lines modified

# The valid inputs: a tiny dataset and a run with a checkpoint and a result.json.
TRAIN=(configs/tiny.yaml data.path=$W/data data.train_per_cell=8 data.valid_per_cell=4 data.test_per_cell=4
       train.steps=2 train.warmup=1 train.valid_every=2 train.log_every=1 train.checkpoint_every=0 train.batch_size=4)
"$BIN/hax-train" "${TRAIN[@]}" --results "$W/run" >/dev/null 2>&1 || { echo "fuzz: cannot make the tiny run"; exit 1; }
RUN=$W/run/tiny/lr_0.003/seed_1
cp "$RUN/checkpoint.safetensors" "$W/checkpoint.orig"
cp "$RUN/result.json" "$W/result.orig"
printf 'train.lr=0.001' > "$W/override.orig"
sums() { md5sum "$ROOT"/tests/golden/*.safetensors "$W"/data/* "$ROOT"/configs/tiny.yaml | md5sum; }
base_sum=$(sums)

# run_one TARGET FILE: runs the reader of TARGET on FILE; sets rc and err.
run_one() {
    local t=$1 f=$2
    case $t in
    config) err=$(timeout 10 "$BIN/hax-train" "$f" data.path="$W/nodata" data.generate=false --results "$W/x" 2>&1 >/dev/null) ;;
    override) err=$(timeout 10 "$BIN/hax-train" configs/tiny.yaml "$(tr -d '\0' <"$f" | head -c 100000)" data.path="$W/nodata" \
                    data.generate=false --results "$W/x" 2>&1 >/dev/null) ;;
    safetensors) err=$(timeout 10 "$BIN/hax-check" -q "$f" 2>&1 >/dev/null) ;;
    resume)
        cp "$f" "$RUN/checkpoint.safetensors"
        sed 's/"status": "complete"/"status": "preempted"/' "$W/result.orig" > "$RUN/result.json"
        err=$(timeout 10 "$BIN/hax-train" "${TRAIN[@]}" train.steps=3 --results "$W/run" 2>&1 >/dev/null) ;;
    manifest|shard)
        rm -rf "$W/ds" && mkdir "$W/ds" && ln "$W"/data/* "$W/ds/"
        if [ "$t" = manifest ]; then rm "$W/ds/manifest.yaml" && cp "$f" "$W/ds/manifest.yaml"
        else rm "$W/ds/train-00000.bin" && cp "$f" "$W/ds/train-00000.bin"; fi
        err=$(timeout 10 "$BIN/hax-datagen" --verify "$W/ds" 2>&1 >/dev/null) ;;
    result)
        rm -rf "$W/agg" && mkdir -p "$W/agg/tiny/lr_0.003/seed_1" && cp "$f" "$W/agg/tiny/lr_0.003/seed_1/result.json"
        err=$(timeout 10 "$BIN/hax-aggregate" "$W/agg" 2>&1 >/dev/null) ;;
    esac
    rc=$?
}

fuzz_target() {
    local t=$1 src=$2 n=$3
    local c=(0 0 0 0 0 0)
    python3 tests/fuzz_mutate.py "$SEED" "$n" "$src" "$W/in_$t" || { echo "fuzz: $t: mutator failed"; exit 1; }
    for f in "$W/in_$t"/*; do
        local before; before=$(md5sum <"$f")
        run_one "$t" "$f"
        c[0]=$((c[0] + 1))
        local lines; lines=$(printf '%s\n' "$err" | grep -c .)
        local bad=""
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then c[2]=$((c[2] + 1)); bad=hang
        elif [ $rc -ge 128 ] || printf '%s' "$err" | grep -Eq 'Sanitizer|runtime error:'; then c[1]=$((c[1] + 1)); bad=crash
        elif [ $rc -gt 3 ]; then c[3]=$((c[3] + 1)); bad=exit$rc
        elif [ $rc -eq 1 ] && [ "$lines" -ne 1 ] && [ "$t" != manifest ] && [ "$t" != shard ]; then c[4]=$((c[4] + 1))
        fi
        [ "$before" = "$(md5sum <"$f")" ] || { c[5]=$((c[5] + 1)); bad=${bad:-modified}; }
        if [ -n "$bad" ]; then
            mkdir -p "$KEEP" && cp "$f" "$KEEP/$t-$SEED-$(basename "$f")"
            echo "  $t: $bad on $KEEP/$t-$SEED-$(basename "$f") (exit $rc): $(printf '%s' "$err" | grep -m1 -E 'ERROR|runtime error|.' | cut -c1-200)"
        fi
    done
    [ "$(sums)" = "$base_sum" ] || { c[5]=$((c[5] + 1)); echo "  $t: a golden file, the dataset or the config changed"; }
    rm -rf "$W/in_$t"
    printf 'fuzz %-12s %5d inputs, %d crashes, %d hangs, %d wrong exit codes, %d extra stderr lines, %d modified files\n' \
        "$t:" "${c[@]}"
    for i in 0 1 2 3 4 5; do TOTAL[$i]=$((TOTAL[i] + c[i])); done
}

start=$(date +%s)
for t in $TARGETS; do
    case $t in
    config) fuzz_target config configs/tiny.yaml "$N" ;;
    override) fuzz_target override "$W/override.orig" "$N" ;;
    safetensors) fuzz_target safetensors tests/golden/mamba_base.safetensors "$N" ;;
    resume) fuzz_target resume "$W/checkpoint.orig" "$(( (N + 3) / 4 ))" ;;  # a resume trains a step: fewer
    manifest) fuzz_target manifest "$W/data/manifest.yaml" "$N" ;;
    shard) fuzz_target shard "$W/data/train-00000.bin" "$N" ;;
    result) fuzz_target result "$W/result.orig" "$N" ;;
    *) echo "fuzz: unknown target $t"; exit 2 ;;
    esac
done
printf 'fuzz total:        %5d inputs, %d crashes, %d hangs, %d wrong exit codes, %d extra stderr lines, %d modified files (seed %s, %d s)\n' \
    "${TOTAL[@]}" "$SEED" $(( $(date +%s) - start ))
[ "${TOTAL[1]}" -eq 0 ] && [ "${TOTAL[2]}" -eq 0 ] && [ "${TOTAL[5]}" -eq 0 ]
