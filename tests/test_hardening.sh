#!/usr/bin/env bash
# test_hardening.sh: hostile inputs to every reader (issue 13). Each is
# refused quickly with one line on stderr and exit 1, never a crash or a hang:
# non-numeric golden metadata, duplicate tensors, deep nesting, /dev/zero, a
# FIFO, oversize files, a relabelled checkpoint dtype, manifests and shards
# that --verify and hax-train must refuse, stale result.json files, leftovers.
source "$(dirname "$0")/lib.sh"
G=$ROOT/tests/golden
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
base=$G/mamba_base.safetensors

# refused NAME PATTERN CMD...: exit 1, exactly one stderr line matching PATTERN, within 20 s
refused() {
    local name=$1 pattern=$2; shift 2
    local err rc lines
    err=$(timeout 20 "$@" 2>&1 >/dev/null); rc=$?
    lines=$(printf '%s\n' "$err" | grep -c .)
    if [ $rc -eq 1 ] && [ "$lines" -eq 1 ] && printf '%s' "$err" | grep -Eq -- "$pattern"; then ok "$name"
    else fail "$name (exit $rc, $lines lines: $(printf '%s' "$err" | head -n 3))"; fi
}

# ---- hax-check: golden metadata and safetensors
perl -0777 -pe 's/betas\\": \[0.9, 0.999\]/betas\\": [0.9, {}   ]/' "$base" > "$T/obj.safetensors"
refused "hax-check: an object for adamw.betas[1]" "adamw.betas\[1\]: expected a number, found an object" \
    "$BIN/hax-check" -q "$T/obj.safetensors"
perl -0777 -pe 's/betas\\": \[0.9, 0.999\]/betas\\": [0.9, \\"a\\"]/' "$base" > "$T/str.safetensors"
refused "hax-check: a string for adamw.betas[1]" "adamw.betas\[1\]: expected a number, found 'a'" \
    "$BIN/hax-check" -q "$T/str.safetensors"
# ---- hax-train: the config reader (bounded like every other reader)
python3 -c 'import sys; open(sys.argv[1], "w").write("model:\n  arch: " + "[" * 100000 + "\n")' "$T/deep.yaml"
start=$(date +%s)
refused "hax-train: a config nested 100000 deep" "deep.yaml:2: expected nesting at most 64 levels deep" "$BIN/hax-train" "$T/deep.yaml"
check "hax-train: the deep config refused within 5 s" test $(( $(date +%s) - start )) -le 5
mkfifo "$T/fifo.yaml"
refused "hax-train: a FIFO config" "fifo.yaml: expected a regular file, found a FIFO" "$BIN/hax-train" "$T/fifo.yaml"
ln -s /dev/zero "$T/zero.yaml"
refused "hax-train: /dev/zero as config" "expected a regular file, found a character device" "$BIN/hax-train" "$T/zero.yaml"
refused "hax-train: an override with a line break" "expected one line, found a line break" \
    "$BIN/hax-train" "$ROOT/configs/tiny.yaml" "train.lr=0.001
x: 1"
printf 'base: zero.yaml\n' > "$T/based.yaml"
refused "hax-train: a base that is /dev/zero" "base: cannot read 'zero.yaml': expected a regular file" "$BIN/hax-train" "$T/based.yaml"

# st_file FILE META_JSON|deep:N TENSORS_JSON_ENTRIES: a small safetensors file (data of 4 zero bytes per tensor)
st_file() {
    python3 - "$@" <<'PY'
import json, struct, sys
path, meta, names = sys.argv[1], sys.argv[2], sys.argv[3:]
if meta.startswith("deep:"): meta = "[" * int(meta[5:]) + "]" * int(meta[5:])
ents = ['"%s":{"dtype":"F32","shape":[1],"data_offsets":[%d,%d]}' % (n, 4 * i, 4 * i + 4) for i, n in enumerate(names)]
hdr = '{"__metadata__":{"hax_case":%s},' % json.dumps(meta) + ",".join(ents) + "}"
hdr += " " * (-len(hdr) % 8)
open(path, "wb").write(struct.pack("<Q", len(hdr)) + hdr.encode() + b"\0" * (4 * len(names)))
PY
}
st_file "$T/dup.safetensors" '{}' a b a
refused "hax-check: duplicate tensor names" "tensor a: expected unique tensor names" "$BIN/hax-check" -q "$T/dup.safetensors"
st_file "$T/deep.safetensors" deep:100000 a
refused "hax-check: metadata nested 100000 deep" "nesting at most 64 levels" "$BIN/hax-check" -q "$T/deep.safetensors"
ln -s /dev/zero "$T/zero.safetensors"
refused "hax-check: /dev/zero" "expected a regular file, found a character device" "$BIN/hax-check" -q "$T/zero.safetensors"
mkfifo "$T/fifo.safetensors"
refused "hax-check: a FIFO" "expected a regular file, found a FIFO" "$BIN/hax-check" -q "$T/fifo.safetensors"
python3 -c 'import struct,sys; open(sys.argv[1],"wb").write(struct.pack("<Q", 65<<20) + b" " * (65<<20))' "$T/big.safetensors"
refused "hax-check: a 65 MiB header" "header length: expected at most" "$BIN/hax-check" -q "$T/big.safetensors"

# ---- datasets: manifest, shards; hax-train refuses before writing anything
TRAIN=(configs/tiny.yaml data.path=$T/data data.train_per_cell=8 data.valid_per_cell=4 data.test_per_cell=4
       train.steps=3 train.warmup=1 train.valid_every=2 train.log_every=1 train.checkpoint_every=0 train.batch_size=4)
export OMP_NUM_THREADS=1
cd "$ROOT"
"$BIN/hax-train" "${TRAIN[@]}" --results "$T/r" >/dev/null 2>&1
check "hax-train: a tiny run (its dataset generated)" grep -q '"status": "complete"' "$T/r/tiny/lr_0.003/seed_1/result.json"
damage() { python3 "$ROOT/tests/datagen_shards.py" damage "$@"; }
# bad_data NAME PATTERN EDIT...: a copy of the dataset, EDIT run in it; --verify and hax-train refuse it
bad_data() {
    local name=$1 pattern=$2; shift 2
    rm -rf "$T/bad" "$T/rb"; cp -r "$T/data" "$T/bad"
    (cd "$T/bad" && "$@") || { fail "$name: edit"; return; }
    # --verify lists each problem, then its total: exit 1, and the problem named
    local err rc
    err=$(timeout 20 "$BIN/hax-datagen" --verify "$T/bad" 2>&1 >/dev/null); rc=$?
    if [ $rc -eq 1 ] && printf '%s' "$err" | grep -Eq -- "${VPAT:-$pattern}"; then ok "--verify: $name"
    else fail "--verify: $name (exit $rc: $(printf '%s' "$err" | head -n 2))"; fi
    refused "hax-train: $name" "$pattern" "$BIN/hax-train" "${TRAIN[@]}" data.path="$T/bad" --results "$T/rb"
    check "hax-train: $name: nothing written" test ! -e "$T/rb"
}
bad_data "manifest first (with its line)" "manifest.yaml:[1-9][0-9]*: shard train-00000.bin: first: expected 0" sed -i '0,/first: 0,/s//first: 1,/' manifest.yaml
bad_data "manifest level_bases" "level_bases\[0\]: expected" sed -i 's/^level_bases: \[/level_bases: [1/' manifest.yaml
bad_data "header reserved bytes" "reserved bytes 148..155: expected zero" damage . train-00000.bin reserved 0
VPAT="found 250" bad_data "a token id above the dataset's largest" "expected token ids up to [0-9]+, found 250" \
    damage . valid-00000.bin token 1
bad_data "deep manifest" "nesting at most 64 levels" bash -c 'python3 -c "print(\"x: \" + \"[\" * 100000 + \"]\" * 100000)" > manifest.yaml'
bad_data "manifest /dev/zero" "expected a regular file, found a character device" ln -sf /dev/zero manifest.yaml
bad_data "manifest FIFO" "expected a regular file, found a FIFO" bash -c 'rm manifest.yaml && mkfifo manifest.yaml'
bad_data "shard FIFO" "train-00000.bin: expected a regular file, found a FIFO" bash -c 'rm train-00000.bin && mkfifo train-00000.bin'

# ---- resume: a checkpoint tensor relabelled F32 -> I32 (same size) is refused
R=$T/r/tiny/lr_0.003/seed_1
perl -0777 -pe 's/("norm_f.weight":\{"dtype":)"F32"/$1"I32"/' "$R/checkpoint.safetensors" > "$T/ck" && mv "$T/ck" "$R/checkpoint.safetensors"
sed -i 's/"status": "complete"/"status": "preempted"/' "$R/result.json"
refused "resume: checkpoint tensor relabelled I32" "norm_f.weight: expected dtype F32, found I32" \
    "$BIN/hax-train" "${TRAIN[@]}" train.steps=5 --results "$T/r"

# ---- hax-aggregate: stale vs live "running", one line when nothing aggregates, bounded reads
A=$T/agg
mkdir -p "$A/x/lr_0.001/seed_1" "$A/x/lr_0.001/seed_2" "$A/x/lr_0.001/seed_3"
now=$(date +%s)
printf '{"status": "complete", "label": "x", "lr": 0.001, "seed": 1, "best_valid_acc": 0.5, "test_acc": 0.5}\n' \
    > "$A/x/lr_0.001/seed_1/result.json"
printf '{"status": "running", "label": "x", "lr": 0.001, "seed": 2, "heartbeat": %d}\n' $((now - 5)) \
    > "$A/x/lr_0.001/seed_2/result.json"
printf '{"status": "running", "label": "x", "lr": 0.001, "seed": 3, "heartbeat": %d}\n' $((now - 7200)) \
    > "$A/x/lr_0.001/seed_3/result.json"
out=$("$BIN/hax-aggregate" --format json "$A" 2>/dev/null)
check "hax-aggregate: a fresh heartbeat stays running" grep -q "seed_2/result.json\", \"status\": \"running\"" <<<"$out"
check "hax-aggregate: an old heartbeat is stale" grep -q "seed_3/result.json\", \"status\": \"stale\"" <<<"$out"
out=$("$BIN/hax-aggregate" --format json --stale-after 0 "$A" 2>/dev/null)
check "hax-aggregate: --stale-after 0 never marks stale" grep -q "seed_3/result.json\", \"status\": \"running\"" <<<"$out"
err=$("$BIN/hax-aggregate" --stale-after abc "$A" 2>&1 >/dev/null); rc=$?
check "hax-aggregate: --stale-after abc is a usage error (exit $rc)" test $rc -eq 2
rm "$A/x/lr_0.001/seed_1/result.json"
refused "hax-aggregate: nothing complete: one line" "found none \(2 files: 2 incomplete, 0 unreadable; first: .*seed_2/result.json: running\)" \
    "$BIN/hax-aggregate" "$A"
rm -rf "$A"; mkdir -p "$A/x/lr_0.001/seed_1"
python3 -c 'print("[" * 1000000 + "]" * 1000000)' > "$A/x/lr_0.001/seed_1/result.json"
start=$(date +%s)
refused "hax-aggregate: 1,000,000 nested '[' (one line)" "seed_1/result.json: result.json: line 1: expected nesting at most 64 levels" \
    "$BIN/hax-aggregate" "$A"
check "hax-aggregate: deep nesting refused within 5 s" test $(( $(date +%s) - start )) -le 5
rm "$A/x/lr_0.001/seed_1/result.json"; ln -s /dev/zero "$A/x/lr_0.001/seed_1/result.json"
refused "hax-aggregate: result.json is /dev/zero" "expected a regular file, found a character device" "$BIN/hax-aggregate" "$A"
rm "$A/x/lr_0.001/seed_1/result.json"; mkfifo "$A/x/lr_0.001/seed_1/result.json"
refused "hax-aggregate: result.json is a FIFO" "expected a regular file, found a FIFO" "$BIN/hax-aggregate" "$A"

# ---- leftovers: hax-datagen's temporary folders
SMALL=(--max-n-context 3 --min-n-context 2 --max-n-key 3 --min-n-key 2 --n-value 8 --n-train-per-cell 4
       --n-test-per-cell 2 --shard-size 8)
D=$T/gen
err=$(bash -c 'ulimit -f 1; trap "" XFSZ; exec "$0" "$@"' "$BIN/hax-datagen" --out "$D" "${SMALL[@]}" 2>&1 >/dev/null); rc=$?
check "hax-datagen: a failed write exits 1 (exit $rc)" test $rc -eq 1
check "hax-datagen: a failed run removes its temporary folder" test -z "$(ls -A "$D" 2>/dev/null)"
mkdir -p "$D/.hax-datagen-tmp-999999" && head -c 1000 /dev/urandom > "$D/.hax-datagen-tmp-999999/train-00000.bin"
touch -d '1 hour ago' "$D/.hax-datagen-tmp-999999"
mkdir -p "$D/.hax-datagen-tmp-$$"  # this shell: alive, kept
err=$("$BIN/hax-datagen" --out "$D" "${SMALL[@]}" 2>&1 >/dev/null); rc=$?
check "hax-datagen: a stale temporary folder of a dead process is removed" test $rc -eq 0 -a ! -e "$D/.hax-datagen-tmp-999999"
check "hax-datagen: ... with one line saying so" test "$(grep -c 'removed .*hax-datagen-tmp-999999.*process 999999, which is gone' <<<"$err")" -eq 1
check "hax-datagen: a live process's temporary folder is kept" test -d "$D/.hax-datagen-tmp-$$"

# ---- SIGTERM during start-up (MPI initialisation, config, dataset): the
# handler is installed first, so the run stops at step 1 with a checkpoint
# and exit 3 instead of dying with 143. The signal is sent once the process
# catches SIGTERM (its SigCgt mask in /proc: before that the dynamic loader
# is still mapping the libraries, a window no program can close), then 0 and
# 0.1 s later.
caught_term() {  # waits (up to 60 s) until process $1 catches SIGTERM (bit 14 of SigCgt)
    # 60 s, not 10: twice under a heavily loaded 2-core machine the run died with 143, which only a
    # signal before the handler gives, and the old wait sent the signal after 10 s whether or not
    # the handler was there. A slow start (a CUDA build maps cuBLAS and the CUDA runtime first) is
    # the suspected cause, not reproduced. Now a missing handler fails in its own words.
    local m
    for _ in $(seq 6000); do
        m=$(awk '/^SigCgt/ {print $2}' "/proc/$1/status" 2>/dev/null)
        [ -n "$m" ] && [ $(( (16#$m >> 14) & 1 )) -eq 1 ] && return 0
        sleep 0.01
    done
    return 1
}
cd "$ROOT"
for d in 0 0.1; do
    rm -rf "$T/sig"
    "$BIN/hax-train" "${TRAIN[@]}" --results "$T/sig" >"$T/sig.out" 2>&1 & p=$!
    if caught_term $p; then sleep $d; kill -TERM $p; wait $p; rc=$?
    else kill -KILL $p; wait $p; rc="none: no SIGTERM handler within 60 s"; fi
    check "SIGTERM ${d} s after the handler is installed: exit 3 (exit $rc)" test "$rc" = 3
done
finish
