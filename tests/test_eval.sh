#!/usr/bin/env bash
# test_eval.sh: hax-eval against hax-train's own figures. Short tiny runs
# (1 rank and mpirun -np 2) whose last step is a validation step (so the
# reference's best is the stored best); hax-eval on best.safetensors must
# print result.json's test_acc, on checkpoint.safetensors with
# --output-layer final its test_acc_reference, on the valid split its
# best_valid_acc, all to the last digit (the shortest form that reads back,
# as result.json writes them); then the formats, the figures, other
# datasets (smaller: ids mapped; larger: refused) and every bad input.
set -u
source "$(dirname "$0")/lib.sh"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$ROOT"
CFG=configs/tiny.yaml
SET="data.path=$T/data output.root=$T/res train.steps=299 train.valid_every=100 train.checkpoint_every=0"

# field NAME FILE: the raw JSON number of a top-level field of result.json
field() { sed -n "s/^  \"$1\": \([^,]*\),\?$/\1/p" "$2"; }
# acc OUTPUT: the accuracy hax-eval printed (markdown)
acc() { sed -n 's/^accuracy \([^ ]*\) over.*/\1/p' <<<"$1"; }

same() {  # NAME GOT WANT
    if [ -n "$2" ] && [ "$2" = "$3" ]; then ok "$1 ($2)"; else fail "$1: hax-eval printed '$2', result.json has '$3'"; fi
}

# ---- one rank
if $BIN/hax-train $CFG $SET >"$T/train1.log" 2>&1; then ok "tiny run, 299 steps"; else fail "tiny run: $(tail -n 2 "$T/train1.log")"; fi
R=$T/res/tiny/lr_0.003/seed_1
out=$($BIN/hax-eval $R/best.safetensors --data $T/data 2>"$T/err")
same "best.safetensors gives test_acc" "$(acc "$out")" "$(field test_acc $R/result.json)"
out=$($BIN/hax-eval $R/checkpoint.safetensors --data $T/data)
same "checkpoint.safetensors gives test_acc" "$(acc "$out")" "$(field test_acc $R/result.json)"
out=$($BIN/hax-eval $R/checkpoint.safetensors --data $T/data --output-layer final)
same "checkpoint --output-layer final gives test_acc_reference" "$(acc "$out")" "$(field test_acc_reference $R/result.json)"
out=$($BIN/hax-eval $R/best.safetensors --data $T/data --split valid)
same "--split valid gives best_valid_acc" "$(acc "$out")" "$(field best_valid_acc $R/result.json)"
check "25 cells with samples and tokens per sample" test "$(grep -c '^| [0-9]' <<<"$out")" = 25
check "tokens/s and peak memory printed" grep -q "^eval: [0-9]* tokens/s, peak host memory" <<<"$out"
check "the header names the run's evaluation batch (train.eval_batch 256)" grep -q ", 1 rank, batch 256$" <<<"$out"
out=$($BIN/hax-eval $R/best.safetensors --data $T/data --batch 7)
check "--batch 7 scores every sample" grep -q "over 500 samples" <<<"$out"
# a sequence scores the same in any batch on the CPU (tests/test_eval_batch.c):
# the run's batch_size gives result.json's figure too
out=$($BIN/hax-eval $R/best.safetensors --data $T/data --batch 16)
same "--batch 16 (the run's batch_size) gives test_acc" "$(acc "$out")" "$(field test_acc $R/result.json)"

# ---- formats, -o, figures
$BIN/hax-eval $R/best.safetensors --data $T/data --format json -o "$T/e.json" >/dev/null 2>&1
check "--format json -o FILE is JSON with 25 cells" python3 -c "
import json,sys; d=json.load(open('$T/e.json')); sys.exit(0 if len(d['cells'])==25 and d['n']==500 else 1)"
csv=$($BIN/hax-eval $R/best.safetensors --data $T/data --format csv 2>/dev/null)
check "--format csv: header and 25 rows" test "$(head -n 1 <<<"$csv"),$(wc -l <<<"$csv")" = "n_c,n_k,samples,tokens_per_sample,acc,26"
$BIN/hax-eval $R/best.safetensors --data $T/data --plot "$T/fig" --label tiny_hax >/dev/null
check "--plot writes acc_vs_n.svg and heatmap_tiny_hax.svg" test -s "$T/fig/acc_vs_n.svg" -a -s "$T/fig/heatmap_tiny_hax.svg"

# ---- two ranks: the same sums as hax-train on two ranks
if $MPIRUN -np 2 $BIN/hax-train $CFG $SET output.root=$T/res2 >"$T/train2.log" 2>&1; then ok "tiny run on 2 ranks"
else fail "tiny run on 2 ranks: $(tail -n 2 "$T/train2.log")"; fi
R2=$T/res2/tiny/lr_0.003/seed_1
out=$($MPIRUN -np 2 $BIN/hax-eval $R2/best.safetensors --data $T/data 2>/dev/null)
same "2 ranks: best.safetensors gives test_acc" "$(acc "$out")" "$(field test_acc $R2/result.json)"
out=$($MPIRUN -np 2 $BIN/hax-eval $R2/checkpoint.safetensors --data $T/data --output-layer final 2>/dev/null)
same "2 ranks: --output-layer final gives test_acc_reference" "$(acc "$out")" "$(field test_acc_reference $R2/result.json)"

# ---- other datasets
$BIN/hax-datagen --out $T/small --min-n-context 2 --min-n-key 2 --max-n-context 4 --max-n-key 4 \
    --n-train-per-cell 1 --n-test-per-cell 5 >/dev/null 2>&1
out=$($BIN/hax-eval $R/best.safetensors --data $T/small 2>&1)
check "a smaller table (other id layout) is read through the id map" grep -q "over 45 samples" <<<"$out"
$BIN/hax-datagen --out $T/big --min-n-context 6 --min-n-key 6 --max-n-context 8 --max-n-key 8 \
    --n-train-per-cell 1 --n-test-per-cell 2 >/dev/null 2>&1
check_fails "a larger table: one line, no trained embedding" "max_sizes\[0\] \(contexts\): expected at most 6.*found 8" \
    $BIN/hax-eval $R/best.safetensors --data $T/big
$BIN/hax-datagen --out $T/ar --levels 1 --min-n-key 2 --max-n-key 4 --n-train-per-cell 1 --n-test-per-cell 2 \
    >/dev/null 2>&1
check_fails "associative-recall data for a joint-recall model" "levels: expected 2.*found 1" \
    $BIN/hax-eval $R/best.safetensors --data $T/ar

# ---- length generalisation: a model trained on 5..8 tables with ids laid out
# for 32 x 32 (hax-datagen --id-layout 32:32, data.id_layout) scored on 16..32
LSET="data.path=$T/l8 output.root=$T/resl data.min_sizes=[5,5] data.max_sizes=[8,8] data.id_layout=[32,32]
      data.train_per_cell=50 train.steps=40 train.warmup=10 train.valid_every=20 train.checkpoint_every=0"
if $BIN/hax-train $CFG $LSET >"$T/trainl.log" 2>&1; then ok "tiny run on 5..8 tables, id layout 32:32"
else fail "tiny run, id layout 32:32: $(tail -n 2 "$T/trainl.log")"; fi
check "its dataset records the layout" grep -q '^id_layout: \[32, 32\]$' "$T/l8/manifest.yaml"
RL=$T/resl/tiny/lr_0.003/seed_1
$BIN/hax-datagen --out $T/l32 --min-n-context 16 --max-n-context 32 --min-n-key 16 --max-n-key 32 --id-layout 32:32 \
    --n-train-per-cell 0 --n-valid-per-cell 0 --n-test-per-cell 1 >/dev/null 2>&1
out=$($BIN/hax-eval $RL/best.safetensors --data $T/l32 2>"$T/errl")
check "16..32 tables in the model's layout: scored, 289 cells" test "$(grep -c '^| [0-9]' <<<"$out")" = 289
check "... the 32 x 32 cell: 4162 tokens per sample" grep -q '^| 32 | 32 | 1 | 4162 | ' <<<"$out"
check "... in batches of 16: 256 rows of 274 tokens (the run's) hold as many positions as 16 of 4162" \
    grep -q ", 1 rank, batch 16$" <<<"$out"
check "... a note naming both levels and their untrained ids" \
    grep -q "contexts up to 32 (training maxima 8: ids 66..89), keys up to 32 (training maxima 8: ids 34..57)" "$T/errl"
$BIN/hax-datagen --out $T/l64 --min-n-context 2 --max-n-context 3 --min-n-key 2 --max-n-key 3 --id-layout 64:64 \
    --n-train-per-cell 1 --n-test-per-cell 1 >/dev/null 2>&1
$BIN/hax-datagen --out $T/l8b --min-n-context 5 --max-n-context 8 --min-n-key 5 --max-n-key 8 \
    --n-train-per-cell 1 --n-test-per-cell 1 >/dev/null 2>&1
check_fails "a wider layout than the model's: one line" "id_layout\[0\] \(contexts\): expected at most 32.*found 64" \
    $BIN/hax-eval $RL/best.safetensors --data $T/l64
check_fails "a 32 x 32 layout for a model trained without one: one line" \
    "max_sizes\[0\] \(contexts\): expected at most 6.*found 32" $BIN/hax-eval $R/best.safetensors --data $T/l32
check_fails "hax-train: config and dataset layouts differ" "id_layout \(by level\): the config expects 32, the dataset has 8" \
    $BIN/hax-train $CFG $LSET data.path=$T/l8b output.root=$T/resl2
check_fails "hax-train: the vocabulary must hold the layout's ids" \
    "model.vocab_size: expected more than the dataset's largest token id 153 \(of data.id_layout\), found 100" \
    $BIN/hax-train $CFG $LSET data.id_layout=[64,64]

# ---- bad input: one line, exit 1 (2 for the command line)
head -c 100 /dev/urandom >"$T/junk.safetensors"
check_fails "not a safetensors file" "junk.safetensors" $BIN/hax-eval $T/junk.safetensors --data $T/data
check_fails "a safetensors file of someone else" "__metadata__" \
    $BIN/hax-eval tests/golden/mamba_sign_bin_lsh__key_selection.safetensors --data $T/data
check_fails "--output-layer final needs the checkpoint" "expected a checkpoint.safetensors" \
    $BIN/hax-eval $R/best.safetensors --data $T/data --output-layer final
check_fails "no dataset" "manifest" $BIN/hax-eval $R/best.safetensors --data $T/nothing
check_fails "a missing model file" "nope.safetensors" $BIN/hax-eval $T/nope.safetensors --data $T/data
$BIN/hax-eval $R/best.safetensors --data $T/data --split dev >/dev/null 2>&1
check "a bad --split is a usage error (exit 2)" test $? -eq 2
$BIN/hax-eval $R/best.safetensors >/dev/null 2>&1
check "no --data is a usage error (exit 2)" test $? -eq 2
for c in "$T/junk.safetensors --data $T/data" "$R/best.safetensors --data $T/big" "$RL/best.safetensors --data $T/l64"; do
    n=$($BIN/hax-eval $c 2>&1 >/dev/null | wc -l)
    check "exactly one line on stderr ($(basename ${c%% *}))" test "$n" -eq 1
done
finish
