#!/usr/bin/env bash
# test_absorb.sh: analysis/absorb.sh on folders shaped as table1_local.sh --collect
# makes them: complete runs to runs/ (their resume/ folders gone), stopped ones with
# their checkpoints to resume/ (or runs/ with --stopped-in-runs), logs appended without
# doubling, and every refusal (a complete run replaced by another, a stopped run without
# its checkpoint or older than DEST's, a stray folder) leaving DEST byte for byte as it was.
source "$(dirname "$0")/lib.sh"
A=$ROOT/analysis/absorb.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# run DIR STATUS ROWS [ckpt]: a run folder with result.json, ROWS metrics rows and, with ckpt, a checkpoint
run() {
    mkdir -p "$1"
    printf '{\n  "status": "%s",\n  "steps": %d\n}\n' "$2" "$3" > "$1/result.json"
    { echo "step,loss,gate_loss,train_acc,lr,valid_acc"; seq "$3" | sed 's/$/,1,0,0,0.001,/'; } > "$1/metrics.csv"
    [ "${4:-}" = ckpt ] && echo "weights at $3" > "$1/checkpoint.safetensors"
    return 0
}
tree_sum() { (cd "$1" && find . -type f | sort | xargs sha256sum); }

# --- the first collection: one complete run, one stopped run ----------------------
D=$tmp/dest; mkdir -p "$D/runs"
run "$D/runs/old@bf16-pure/lr_0.001/seed_1" complete 30
C1=$tmp/c1
run "$C1/old@bf16-pure/lr_0.001/seed_1" complete 30                  # already there, same files
run "$C1/a@bf16-pure/lr_0.001/seed_1" complete 300 ckpt
run "$C1/b@bf16-pure/lr_0.001/seed_1" preempted 120 ckpt
mkdir -p "$C1/logs"
printf '=== 1 hax-train a\nstep 1\n' > "$C1/logs/b@bf16-pure__lr_0.001__seed_1.log"
echo "progress 1" > "$C1/progress.txt"
out=$(bash "$A" "$C1" "$D" 2>&1); rc=$?
[ $rc = 0 ] && ok "first collection absorbed: $out" || fail "first collection absorbed: rc $rc: $out"
[ -f "$D/runs/a@bf16-pure/lr_0.001/seed_1/result.json" ] && [ ! -e "$D/runs/a@bf16-pure/lr_0.001/seed_1/checkpoint.safetensors" ] &&
    ok "a complete run into runs/, without its checkpoint" || fail "a complete run into runs/, without its checkpoint"
cmp -s "$C1/b@bf16-pure/lr_0.001/seed_1/checkpoint.safetensors" "$D/resume/b@bf16-pure/lr_0.001/seed_1/checkpoint.safetensors" &&
    [ ! -e "$D/runs/b@bf16-pure" ] && ok "a stopped run into resume/ with its checkpoint" || fail "a stopped run into resume/ with its checkpoint"
[[ $out == *"1 complete run(s) added, 1 already there, 1 stopped"* ]] && ok "counted: 1 added, 1 already there, 1 stopped" ||
    fail "counted: 1 added, 1 already there, 1 stopped: $out"
cmp -s "$C1/progress.txt" "$D/logs/progress.txt" && ok "progress.txt into logs/" || fail "progress.txt into logs/"

# --- the same machine, still warm, collected again: the stopped run went on --------
C2=$tmp/c2
run "$C2/b@bf16-pure/lr_0.001/seed_1" preempted 200 ckpt
mkdir -p "$C2/logs"
printf '=== 1 hax-train a\nstep 1\nstep 2\n' > "$C2/logs/b@bf16-pure__lr_0.001__seed_1.log"
bash "$A" "$C2" "$D" > /dev/null 2>&1 && ok "a later collection from the same machine" || fail "a later collection from the same machine"
[ "$(wc -l < "$D/resume/b@bf16-pure/lr_0.001/seed_1/metrics.csv")" = 201 ] && ok "resume/ holds the newer stopped run" ||
    fail "resume/ holds the newer stopped run"
[ "$(cat "$D/logs/b@bf16-pure__lr_0.001__seed_1.log")" = "$(printf '=== 1 hax-train a\nstep 1\nstep 2')" ] &&
    ok "the log collected again replaces its earlier copy (not doubled)" || fail "the log collected again replaces its earlier copy: $(cat "$D/logs/b@bf16-pure__lr_0.001__seed_1.log")"

# --- refusals: DEST unchanged -----------------------------------------------------
before=$(tree_sum "$D")
refuse() {  # refuse NAME COLLECTED PATTERN
    local out rc
    out=$(bash "$A" "$2" "$D" 2>&1); rc=$?
    [ $rc = 1 ] && [[ $out == *$3* ]] && [ "$(tree_sum "$D")" = "$before" ] && ok "refused, DEST unchanged: $1" ||
        fail "refused, DEST unchanged: $1 (rc $rc: $out)"
}
R1=$tmp/r1; run "$R1/a@bf16-pure/lr_0.001/seed_1" complete 299
refuse "a complete run DEST holds with other files" "$R1" "complete in $D/runs with other"
R2=$tmp/r2; run "$R2/c@bf16-pure/lr_0.001/seed_1" preempted 50
refuse "a stopped run without its checkpoint" "$R2" "expected its checkpoint.safetensors"
R3=$tmp/r3; run "$R3/b@bf16-pure/lr_0.001/seed_1" preempted 150 ckpt
refuse "a stopped run older than resume/'s" "$R3" "found fewer (an older copy)"
R4=$tmp/r4; run "$R4/a@bf16-pure/lr_0.001/seed_1" preempted 400 ckpt
refuse "a stopped copy of a run DEST holds complete" "$R4" "found a stopped copy"
R5=$tmp/r5; run "$R5/d/lr_0.001/seed_1" complete 30; mkdir -p "$R5/stray/x"
refuse "a folder that is not a run" "$R5" "stray/: expected run folders"
refuse "a missing collection" "$tmp/none" "found no folder"

# --- a new machine resumed the stopped run and finished it -------------------------
C3=$tmp/c3
run "$C3/b@bf16-pure/lr_0.001/seed_1" complete 300 ckpt
mkdir -p "$C3/logs"
printf '=== 2 hax-train a\nresuming at 200\n' > "$C3/logs/b@bf16-pure__lr_0.001__seed_1.log"
bash "$A" "$C3" "$D" > /dev/null 2>&1 && ok "a collection from a fresh machine" || fail "a collection from a fresh machine"
[ -f "$D/runs/b@bf16-pure/lr_0.001/seed_1/result.json" ] && [ ! -e "$D/resume/b@bf16-pure" ] &&
    ok "the finished run in runs/, its resume/ folder gone" || fail "the finished run in runs/, its resume/ folder gone"
[ "$(grep -c '^===' "$D/logs/b@bf16-pure__lr_0.001__seed_1.log")" = 2 ] && ok "its log: the earlier calls', then the new one" ||
    fail "its log: the earlier calls', then the new one"

# --- --stopped-in-runs (the headline folder) ---------------------------------------
H=$tmp/h; mkdir -p "$H/runs"
C4=$tmp/c4
run "$C4/m/lr_0.001/seed_1" preempted 40 ckpt
echo best > "$C4/m/lr_0.001/seed_1/best.safetensors"
bash "$A" --stopped-in-runs "$C4" "$H" > /dev/null 2>&1 && [ -f "$H/runs/m/lr_0.001/seed_1/checkpoint.safetensors" ] &&
    [ -f "$H/runs/m/lr_0.001/seed_1/best.safetensors" ] && [ ! -e "$H/resume" ] &&
    ok "--stopped-in-runs: a stopped run into runs/ with checkpoint and best weights" || fail "--stopped-in-runs: a stopped run into runs/"
C5=$tmp/c5; run "$C5/m/lr_0.001/seed_1" complete 80; echo best2 > "$C5/m/lr_0.001/seed_1/best.safetensors"
bash "$A" --stopped-in-runs "$C5" "$H" > /dev/null 2>&1 && [ ! -e "$H/runs/m/lr_0.001/seed_1/checkpoint.safetensors" ] &&
    [ "$(cat "$H/runs/m/lr_0.001/seed_1/best.safetensors")" = best2 ] &&
    ok "--stopped-in-runs: finished, its checkpoint gone, the new best weights" || fail "--stopped-in-runs: finished"
finish
