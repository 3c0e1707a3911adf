#!/usr/bin/env bash
# test_train.sh: hax-train end to end on the tiny config (CPU): 1 rank vs 2
# ranks, stop (SIGTERM/SIGUSR1) and resume bit for bit, best.safetensors vs
# the golden parameters, every bad input, and the tiny run learning.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
T=$BIN/hax-train
GOLDEN=$ROOT/tests/golden/mamba_sign_bin_lsh__key_selection.safetensors
tmp=$(mktemp -d /tmp/hax_test_train.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1

# A short run: 40 steps, validation after 9, 19, 29, 39, a row per step.
SHORT=(configs/tiny.yaml data.path=$tmp/data train.steps=40 train.warmup=5 train.valid_every=10
       train.log_every=1 train.checkpoint_every=15)
RUN=lr_0.003/seed_1
run_dir() { echo "$tmp/$1/tiny/$RUN"; }
status_of() { sed -n 's/.*"status": "\([a-z]*\)".*/\1/p' "$1/result.json"; }
PY=/usr/bin/python3

# ---- an uninterrupted run (generates the dataset first)
out=$("$T" "${SHORT[@]}" --results "$tmp/A" 2>&1); rc=$?
A=$(run_dir A)
check "run A exits 0" test $rc -eq 0
check "run A generated the dataset" test -f "$tmp/data/manifest.yaml"
check "run A prints the resolved config" grep -q "valid_every: 10" <<<"$out"
check "run A prints a summary line" grep -q "hax-train: done: 40 steps" <<<"$out"
for f in result.json metrics.csv best.safetensors checkpoint.safetensors; do
    check "run A wrote $f" test -s "$A/$f"
done
check "run A complete" test "$(status_of "$A")" = complete
check "metrics.csv: header + 40 rows" test "$(wc -l <"$A/metrics.csv")" -eq 41
check "validation after steps 9,19,29,39 (the reference's (step+1) % 10)" \
    test "$(awk -F, 'NR > 1 && $6 != "" {printf "%s ", $1}' "$A/metrics.csv")" = "9 19 29 39 "
check "result.json has the test figures and cells" grep -q '"test_acc_reference": 0\.' "$A/result.json"
check "result.json per-cell accuracies" grep -q '"n_c": 6, "n_k": 6' "$A/result.json"
check "result.json readable by hax-aggregate" grep -q "| tiny " <("$BIN/hax-aggregate" "$tmp/A" 2>&1)
check "best.safetensors: names and shapes of the golden parameters + eval hash matrices" \
    "$FILES" golden "$A/best.safetensors" "$GOLDEN"
check "best.safetensors and the checkpoint obey the safetensors rules (independent Python reader)" \
    bash -c "$PY tests/test_train_safetensors.py '$A/best.safetensors' && $PY tests/test_train_safetensors.py '$A/checkpoint.safetensors'"
check "result.json: valid JSON with every field of the issue" "$PY" -c '
import json, sys
r = json.load(open(sys.argv[1]))
need = ["status", "config", "best_valid_acc", "best_step", "test_acc", "test_acc_reference", "valid_cells",
        "test_cells", "test_cells_reference", "steps", "wall_time", "tokens_per_s", "git_revision", "eval_batch"]
miss = [k for k in need if k not in r]
assert not miss, miss
assert r["eval_batch"] == 256 and r["config"]["train"]["eval_batch"] == 256, r["eval_batch"]
assert r["config"]["train"]["valid_every"] == 10 and r["config"]["data"]["path"].endswith("/data"), r["config"]
assert r["best_step"] in (9, 19, 29, 39, 40) and r["steps"] == 40 and r["tokens_per_s"] > 0
cells = {(c["n_c"], c["n_k"]) for c in r["test_cells"]}
assert cells == {(c, k) for c in range(2, 7) for k in range(2, 7)}, sorted(cells)
' "$A/result.json"
check "metrics.csv header" test "$(head -n 1 "$A/metrics.csv")" = "step,loss,gate_loss,train_acc,lr,valid_acc"
check "progress line: step, loss, accuracy, lr, tokens/s, ETA" \
    grep -Eq "^step 20/40 \| loss [0-9.]+ \| gate [0-9.]+ \| acc [0-9.]+ \| lr [0-9.e+-]+ \| [0-9]+ tok/s \| ETA " <<<"$out"

# ---- a complete run is skipped
sum=$(md5sum "$A"/*)
out=$("$T" "${SHORT[@]}" --results "$tmp/A" 2>&1); rc=$?
check "complete run skipped (exit 0)" test $rc -eq 0
check "skip message" grep -q "complete" <<<"$out"
check "skip leaves the files alone" test "$sum" = "$(md5sum "$A"/*)"

# ---- --force runs a complete run again from step 0 (the same files: runs are deterministic)
AF=$(run_dir AF)
mkdir -p "$(dirname "$AF")" && cp -r "$A" "$AF"
out=$(HAX_GIT_REVISION=0123456789ab-dirty "$T" "${SHORT[@]}" --results "$tmp/AF" --force 2>&1); rc=$?
check "--force on a complete run: exit 0" test $rc -eq 0
check "HAX_GIT_REVISION names the tree in result.json" grep -q '"git_revision": "0123456789ab-dirty"' "$AF/result.json"
check_refused "HAX_GIT_REVISION not a commit: refused" "HAX_GIT_REVISION: expected a commit .*found 'main'" \
    env HAX_GIT_REVISION=main "$T" "${SHORT[@]}" --results "$tmp/AG"
check "--force: not skipped, not resumed" bash -c "! grep -Eq 'skipped|resuming' <<<'$out'"
same_run "--force rerun" "$A" "$AF"

# ---- 2 ranks: the same curve and weights within 1e-5
$MPIRUN -np 2 "$T" "${SHORT[@]}" --results "$tmp/B" >"$tmp/B.log" 2>&1; rc=$?
B=$(run_dir B)
check "2 ranks exit 0" test $rc -eq 0
check "2 ranks: result.json says 2 ranks" grep -q '"ranks": 2' "$B/result.json"
# The bias of the last key-score layer (dx_proj_3.bias) is left out: the
# ranking loss depends on score differences only, so its gradient is zero up to
# rounding, and AdamW turns that rounding noise (~1e-11) into steps of size lr.
# Which noise depends on the summation order, so the two runs differ there
# (harmlessly: the top-k key choice is shift-invariant too).
NOISE=(--skip dx_proj_3.bias)
check "2 ranks: final weights within 1e-5" "$FILES" cmp "$A/checkpoint.safetensors" "$B/checkpoint.safetensors" 1e-5 --weights "${NOISE[@]}"
check "2 ranks: AdamW moments within 1e-5" "$FILES" cmp "$A/checkpoint.safetensors" "$B/checkpoint.safetensors" 1e-5 "${NOISE[@]}"
check "2 ranks: best weights within 1e-5" "$FILES" cmp "$A/best.safetensors" "$B/best.safetensors" 1e-5 "${NOISE[@]}"
curve_ok=$(paste -d, "$A/metrics.csv" "$B/metrics.csv" | awk -F, 'NR > 1 {
    for (c = 2; c <= 6; c++) { a = $c; b = $(c + 6); if ((a == "") != (b == "")) { bad++; continue }
        d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b;
        if (d > 1e-5 * (m > 1e-3 ? m : 1e-3)) bad++ } } END { print bad + 0 }')
check "2 ranks: loss, gate loss, accuracy, lr and validation accuracy curves within 1e-5 (${curve_ok} differ)" \
    test "$curve_ok" -eq 0
for k in best_valid_acc final_valid_acc test_acc test_acc_reference; do
    check "2 ranks: result.json $k within 1e-5 ($(json_num "$A" $k) vs $(json_num "$B" $k))" \
        near "$(json_num "$A" $k)" "$(json_num "$B" $k)"
done
check "2 ranks: same best step" test "$(json_num "$A" best_step)" = "$(json_num "$B" best_step)"

# ---- ranks that resolve different configs: one error line, no hang, nothing written
timeout 60 $MPIRUN -np 1 "$T" "${SHORT[@]}" --results "$tmp/Y" : -np 1 "$T" "${SHORT[@]}" train.lr=0.004 \
    --results "$tmp/Y" >"$tmp/Y.log" 2>"$tmp/Y.err"; rc=$?
check "ranks with different configs: exit 1, no hang (exit $rc)" test $rc -eq 1
check "ranks with different configs: one line naming the field" \
    grep -q "^hax: config: expected every rank to resolve rank 0's config, found another on rank 1 (train.lr: rank 0 has 0.003, rank 1 has 0.004)" "$tmp/Y.err"
check "ranks with different configs: one hax line" test "$(grep -c '^hax:' "$tmp/Y.err")" -eq 1
check "ranks with different configs: nothing written" test ! -e "$tmp/Y"

# ---- stopped by its own SIGTERM after step 17, resumed: bit for bit
"$T" "${SHORT[@]}" --results "$tmp/C" --stop-after-step 17 >"$tmp/C.log" 2>&1; rc=$?
C=$(run_dir C)
check "SIGTERM: exit 3" test $rc -eq 3
check "SIGTERM: result.json preempted" test "$(status_of "$C")" = preempted
check "SIGTERM: checkpoint at step 17" grep -q "after step 17" "$tmp/C.log"
cp -r "$C" "$tmp/C_stopped"
"$T" "${SHORT[@]}" --results "$tmp/C" >"$tmp/C2.log" 2>&1; rc=$?
check "resume exits 0" test $rc -eq 0
check "resume starts at step 17" grep -q "resuming .* at step 17" "$tmp/C2.log"
same_run "SIGTERM+resume" "$A" "$C"

# ---- bf16-pure (issue 10): its own folder, bf16 weights and moments, and a
# stop + resume bit for bit
PURE=(train.precision=bf16-pure)
"$T" "${SHORT[@]}" "${PURE[@]}" --results "$tmp/P" >"$tmp/P.log" 2>&1; rc=$?
P=$tmp/P/tiny@bf16-pure/$RUN
check "bf16-pure run exits 0" test $rc -eq 0
check "bf16-pure: the label carries the regime" test -s "$P/result.json"
check "bf16-pure: the resolved config names it" grep -q "precision: bf16-pure" "$tmp/P.log"
check "bf16-pure: result.json records it" grep -q '"precision": "bf16-pure"' "$P/result.json"
check "bf16-pure: best.safetensors weights are all bf16" "$FILES" bf16 "$P/best.safetensors"
check "bf16-pure: checkpoint weights and moments are all bf16" "$FILES" bf16 "$P/checkpoint.safetensors"
check "bf16-pure: best.safetensors metadata names it" grep -aq '"precision":"bf16-pure"' "$P/best.safetensors"
check "bf16-pure: the weights differ from fp32's" bash -c "! cmp -s '$A/best.safetensors' '$P/best.safetensors'"
check "fp32: result.json records it" grep -q '"precision": "fp32"' "$A/result.json"
"$T" "${SHORT[@]}" "${PURE[@]}" --results "$tmp/Q" --stop-after-step 17 >"$tmp/Q.log" 2>&1; rc=$?
check "bf16-pure SIGTERM: exit 3" test $rc -eq 3
"$T" "${SHORT[@]}" "${PURE[@]}" --results "$tmp/Q" >"$tmp/Q2.log" 2>&1; rc=$?
check "bf16-pure resume exits 0" test $rc -eq 0
check "bf16-pure resume starts at step 17" grep -q "resuming .* at step 17" "$tmp/Q2.log"
same_run "bf16-pure SIGTERM+resume" "$P" "$tmp/Q/tiny@bf16-pure/$RUN"
"$T" "${SHORT[@]}" train.precision=bf16 train.steps=5 --results "$tmp/M" >"$tmp/M.log" 2>&1; rc=$?
check "mixed bf16 run exits 0, in its own folder" test $rc -eq 0 -a -s "$tmp/M/tiny@bf16/$RUN/result.json"

# ---- a real kill -TERM from outside, mid-run, then resume
"$T" "${SHORT[@]}" --results "$tmp/D" --slow-step 0.1 >"$tmp/D.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "^step 3/" "$tmp/D.log" && break; sleep 0.1; done
kill -TERM $pid; wait $pid; rc=$?
D=$(run_dir D)
check "kill -TERM: exit 3" test $rc -eq 3
check "kill -TERM: stopped before the end" grep -q "stopped by a signal" "$tmp/D.log"
"$T" "${SHORT[@]}" --results "$tmp/D" >>"$tmp/D.log" 2>&1
same_run "kill -TERM+resume" "$A" "$D"

# ---- SIGUSR1 the same way
"$T" "${SHORT[@]}" --results "$tmp/E" --slow-step 0.1 >"$tmp/E.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "^step 22/" "$tmp/E.log" && break; sleep 0.1; done
kill -USR1 $pid; wait $pid; rc=$?
check "kill -USR1: exit 3" test $rc -eq 3
"$T" "${SHORT[@]}" --results "$tmp/E" >>"$tmp/E.log" 2>&1
same_run "SIGUSR1+resume" "$A" "$(run_dir E)"

# ---- 2 ranks stopped (rank 0 alone gets the signal) and resumed on 2 ranks
$MPIRUN -np 2 "$T" "${SHORT[@]}" --results "$tmp/F" --stop-after-step 25 >"$tmp/F.log" 2>&1; rc=$?
check "2 ranks, SIGTERM on rank 0: exit 3" test $rc -eq 3
$MPIRUN -np 2 "$T" "${SHORT[@]}" --results "$tmp/F" >>"$tmp/F.log" 2>&1
same_run "2 ranks stop+resume" "$B" "$(run_dir F)"

# ---- data.shuffle: a seeded permutation per epoch (a small train split of
# 250 samples: 40 steps of 16 cross two epoch boundaries); stopped and resumed
# across an epoch boundary it ends bit-identical; 2 ranks within 1e-5
SMALL=("${SHORT[@]}" data.path=$tmp/small data.train_per_cell=10)
# ---- train.eval_batch: evaluation forwards of 16 sequences (0: batch_size,
# the passes as before eval_batch) against run A's 256. On the CPU engine a
# sequence scores the same in any batch (tests/test_eval_batch.c), so the runs
# are the same bit for bit, the redraw counter in the checkpoint included;
# only the recorded eval_batch differs. A run stopped at step 20 resumes with
# another eval_batch (allowed, like another device) to the same end.
"$T" "${SHORT[@]}" train.eval_batch=0 --results "$tmp/EB" >"$tmp/EB.log" 2>&1; rc=$?
EB=$(run_dir EB)
check "eval_batch=0: exit 0" test $rc -eq 0
check "eval_batch=0: result.json records eval_batch 16" grep -q '^  "eval_batch": 16,$' "$EB/result.json"
check "eval_batch=0: checkpoint tensors bit for bit with eval_batch 256" "$FILES" cmp "$A/checkpoint.safetensors" \
    "$EB/checkpoint.safetensors" 0
check "eval_batch=0: best.safetensors bit for bit" "$FILES" cmp "$A/best.safetensors" "$EB/best.safetensors" 0
check "eval_batch=0: metrics.csv equal" cmp -s "$A/metrics.csv" "$EB/metrics.csv"
check "eval_batch=0: result.json equal apart from timing and eval_batch" \
    diff <(stable "$A/result.json" | grep -v eval_batch) <(stable "$EB/result.json" | grep -v eval_batch)
"$T" "${SHORT[@]}" --results "$tmp/EBR" --stop-after-step 20 >"$tmp/EBR.log" 2>&1; rc=$?
check "eval_batch: stopped after step 20: exit 3" test $rc -eq 3
"$T" "${SHORT[@]}" train.eval_batch=7 --results "$tmp/EBR" >>"$tmp/EBR.log" 2>&1; rc=$?
check "eval_batch: resumed with eval_batch 7: exit 0" test $rc -eq 0
check "eval_batch: resumed with eval_batch 7: metrics.csv equal to run A" cmp -s "$A/metrics.csv" "$(run_dir EBR)/metrics.csv"
check "eval_batch: resumed with eval_batch 7: best.safetensors bit for bit" "$FILES" cmp "$A/best.safetensors" \
    "$(run_dir EBR)/best.safetensors" 0

"$T" "${SMALL[@]}" --results "$tmp/U" >"$tmp/U.log" 2>&1
"$T" "${SMALL[@]}" data.shuffle=true --results "$tmp/S" >"$tmp/S.log" 2>&1; rc=$?
S=$(run_dir S)
check "shuffled run exits 0" test $rc -eq 0
check "shuffling changes the data order (another loss curve)" bash -c "! cmp -s '$(run_dir U)/metrics.csv' '$S/metrics.csv'"
"$T" "${SMALL[@]}" data.shuffle=true --results "$tmp/S2" --stop-after-step 20 >"$tmp/S2.log" 2>&1; rc=$?
check "shuffled run stopped after step 20: exit 3" test $rc -eq 3
"$T" "${SMALL[@]}" data.shuffle=true --results "$tmp/S2" >>"$tmp/S2.log" 2>&1
same_run "shuffled stop+resume" "$S" "$(run_dir S2)"
$MPIRUN -np 2 "$T" "${SMALL[@]}" data.shuffle=true --results "$tmp/S3" >"$tmp/S3.log" 2>&1
check "shuffled, 2 ranks: final weights within 1e-5" "$FILES" cmp "$S/checkpoint.safetensors" \
    "$(run_dir S3)/checkpoint.safetensors" 1e-5 --weights "${NOISE[@]}"

# ---- the reference's protocol switches: test with the final embedding, no
# final validation, hash matrices redrawn in evaluation
"$T" "${SHORT[@]}" train.test_output_layer=final train.validate_final=false train.eval_fixed_hash=false \
    --results "$tmp/R" >"$tmp/R.log" 2>&1; rc=$?
R=$(run_dir R)
check "reference switches: exit 0" test $rc -eq 0
t_ours=$(sed -n 's/.*"test_acc": \([0-9.e-]*\).*/\1/p' "$R/result.json")
t_ref=$(sed -n 's/.*"test_acc_reference": \([0-9.e-]*\).*/\1/p' "$R/result.json")
check "reference switches: test_acc ($t_ours) = test_acc_reference ($t_ref)" test -n "$t_ours" -a "$t_ours" = "$t_ref"
check "reference switches: no final validation" grep -q '"final_valid_acc": null' "$R/result.json"
check "reference switches: no fixed hash matrices in best.safetensors" \
    bash -c "! head -c 8192 '$R/best.safetensors' | grep -aq eval.rand"
check "fixed switches: final validation in A" grep -q '"final_valid_acc": 0\.' "$A/result.json"

# ---- a non-finite loss stops the run and keeps the last good checkpoint
"$T" "${SHORT[@]}" --results "$tmp/G" --nan-at-step 23 >"$tmp/G.log" 2>&1; rc=$?
G=$(run_dir G)
check "non-finite: exit 1" test $rc -eq 1
check "non-finite: one clear line" grep -q "^hax: step 23: non-finite" "$tmp/G.log"
check "non-finite: result.json failed" test "$(status_of "$G")" = failed
check "non-finite: checkpoint of step 15 kept" grep -q '"step":"15"' <(head -c 4096 "$G/checkpoint.safetensors")

# ---- bad inputs: one line, non-zero exit, nothing overwritten
printf 'model:\n  arch: mamba\n  hidden_size: [16\n' >"$tmp/bad_yaml.yaml"
printf 'model:\n  arch: mamba\n  hiden_size: 16\n' >"$tmp/bad_key.yaml"
check_refused "malformed YAML" "bad_yaml.yaml:[0-9]+: expected valid YAML" "$T" "$tmp/bad_yaml.yaml"
check_refused "unknown key" "bad_key.yaml:3: .*hiden_size" "$T" "$tmp/bad_key.yaml"
check_refused "bad override value" "train.lr" "$T" "${SHORT[@]}" train.lr=fast --results "$tmp/X"
check_refused "unknown override field" "train.speed" "$T" "${SHORT[@]}" train.speed=1 --results "$tmp/X"
check_refused "no config: usage" "expected a CONFIG.yaml" "$T"
"$T" --bogus >/dev/null 2>&1
check "unknown option exits 2" test $? -eq 2
check_refused "device cuda without CUDA" "train.device" "$T" "${SHORT[@]}" train.device=cuda --results "$tmp/X"
check_refused "missing dataset" "data.path: expected a dataset .*manifest.yaml" \
    "$T" "${SHORT[@]}" data.path=$tmp/nodata data.generate=false --results "$tmp/X"
check_refused "dataset made with other parameters" "n_value: the config expects 12, the dataset has 16" \
    "$T" "${SHORT[@]}" data.n_value=12 --results "$tmp/X"
cp -r "$tmp/data" "$tmp/corrupt"
shard=$(ls "$tmp/corrupt"/train-*.bin | head -n 1)
printf '\x55' | dd of="$shard" bs=1 seek=4000 conv=notrunc 2>/dev/null
check_refused "corrupt dataset (a flipped byte)" "corrupt.*train-00000" \
    "$T" "${SHORT[@]}" data.path=$tmp/corrupt --results "$tmp/X"
truncate -s 1000 "$shard"
check_refused "corrupt dataset (a truncated shard)" "corrupt.*train-00000" \
    "$T" "${SHORT[@]}" data.path=$tmp/corrupt --results "$tmp/X"
# (a missing dataset too, so that nothing is written under / should the check break)
check_refused "empty --results" "--results: expected a folder, found an empty string" \
    "$T" "${SHORT[@]}" data.path=$tmp/nodata data.generate=false --results ""
check "no results written by the bad inputs" test ! -e "$tmp/X"

# a stopped run whose checkpoint is corrupt, or of another config
H=$tmp/H/tiny/$RUN
mkdir -p "$(dirname "$H")" && cp -r "$tmp/C_stopped" "$H"
sum=$(md5sum "$H"/*)
check_refused "checkpoint of another config" "checkpoint.safetensors: .*gate_loss_weight: checkpoint has 0.1, config has 0.2" \
    "$T" "${SHORT[@]}" sparse.gate_loss_weight=0.2 --results "$tmp/H"
check "mismatched checkpoint left alone" test "$sum" = "$(md5sum "$H"/*)"
truncate -s 5000 "$H/checkpoint.safetensors"
sum=$(md5sum "$H"/*)
check_refused "corrupt checkpoint" "checkpoint.safetensors: .*truncated" "$T" "${SHORT[@]}" --results "$tmp/H"
check "corrupt checkpoint left alone" test "$sum" = "$(md5sum "$H"/*)"
out=$("$T" "${SHORT[@]}" --results "$tmp/H" --force 2>&1); rc=$?
check "--force starts over from a corrupt checkpoint (exit $rc)" test $rc -eq 0 -a "$(status_of "$H")" = complete
touch "$tmp/afile"
check_refused "unwritable results folder" "cannot create the results folder" \
    "$T" "${SHORT[@]}" --results "$tmp/afile/results"

# ---- the tiny config learns (the README's first command, 1500 steps)
out=$("$T" configs/tiny.yaml data.path=$tmp/data --results "$tmp/tiny" 2>&1); rc=$?
acc=$(sed -n 's/.*"best_valid_acc": \([0-9.e-]*\).*/\1/p' "$tmp/tiny/tiny/$RUN/result.json")
echo "  tiny: $(grep 'hax-train: done' <<<"$out")"
check "tiny run exits 0" test $rc -eq 0
check "tiny learns: best validation accuracy $acc > 0.15 (chance 1/16)" awk -v a="$acc" 'BEGIN { exit !(a > 0.15) }'

# result.json tells the truth: a heartbeat (unix seconds) in every write, and
# "failed" with the reason when a write fails (the checkpoint: a folder stands
# where it must go, as a full disk would refuse it; --force skips the resume
# that would refuse the folder first)
hb=$(sed -n 's/^  "heartbeat": \([0-9]*\),$/\1/p' "$tmp/A/tiny/$RUN/result.json")
check "result.json has a heartbeat ($hb) within a day of now" test -n "$hb" -a $(( $(date +%s) - ${hb:-0} )) -lt 86400
rm -rf "$tmp/F" && mkdir -p "$tmp/F/tiny/$RUN/checkpoint.safetensors"
err=$("$T" "${SHORT[@]}" train.checkpoint_every=10 --force --results "$tmp/F" 2>&1 >/dev/null); rc=$?
check "checkpoint write refused: exit 1 ($rc)" test $rc -eq 1
check "checkpoint write refused: one stderr line naming it" \
    test "$(grep -c . <<<"$err")" -eq 1 -a "$(grep -c 'checkpoint.safetensors: cannot write' <<<"$err")" -eq 1
check "checkpoint write refused: result.json says failed" grep -q '"status": "failed"' "$tmp/F/tiny/$RUN/result.json"
check "checkpoint write refused: result.json gives the reason" \
    grep -q '"message": ".*checkpoint.safetensors: cannot write' "$tmp/F/tiny/$RUN/result.json"

# a killed run's temporary files (NAME.tmp.PID of a process that is gone) are
# removed when the next run starts in the folder, with one line
rmdir "$tmp/F/tiny/$RUN/checkpoint.safetensors"
touch -d '10 minutes ago' "$tmp/F/tiny/$RUN/result.json.tmp.999999"
out=$("$T" "${SHORT[@]}" train.steps=2 train.warmup=1 --force --results "$tmp/F" 2>&1)
check "stale result.json.tmp.999999 removed at start-up" test ! -e "$tmp/F/tiny/$RUN/result.json.tmp.999999"
check "stale temporary: one line says so" test "$(grep -c 'removed .*result.json.tmp.999999' <<<"$out")" -eq 1

finish
