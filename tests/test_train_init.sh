#!/usr/bin/env bash
# test_train_init.sh: hax-train's train.init_from and --save-init on the tiny
# config (CPU). A run of seed 2 started from seed 1's initial weights must
# train exactly as the run of seed 1 (fp32, bf16-pure, F32 and BF16 files, 1
# and 2 ranks); every bad file is refused with one line; a resume takes the
# checkpoint's weights, not the file's.
#
# The exact comparison needs runs whose only use of train.seed is the init:
# the pattern sliding_window draws nothing (LSH and key selection draw their
# matrices and candidates from the seed too, so a seed-2 run of the tiny
# config's LSH pattern differs from seed 1's even from the same weights).
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
T=$BIN/hax-train
FILES=$ROOT/${HAX_BUILD:-build}/tests/test_train_files
PY=/usr/bin/python3
tmp=$(mktemp -d /tmp/hax_test_train_init.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1

SW=(configs/tiny.yaml data.path=$tmp/data sparse.pattern=sliding_window train.steps=6 train.warmup=2
    train.valid_every=3 train.log_every=1 train.checkpoint_every=3 output.arch=sw)
PURE=(train.precision=bf16-pure)
run_dir() { echo "$tmp/$1/$2/lr_0.003/seed_$3"; }
first_loss() { sed -n 's/^1,\([^,]*\),.*/\1/p' "$1/metrics.csv"; }
# edit IN OUT OP [NAME]: a copy of a safetensors file with one change (standard library only):
# drop NAME, flatten NAME, extra NAME (adds a tensor), f16 NAME, nan NAME, bf16 (every F32 tensor as BF16,
# by dropping the low 16 bits: exact for bf16 values)
edit() {
    "$PY" - "$@" <<'EOF'
import json, struct, sys
src, dst, op = sys.argv[1:4]
name = sys.argv[4] if len(sys.argv) > 4 else None
b = open(src, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
data = b[8 + n:]
meta = h.pop("__metadata__", None)
out, blobs, at = {}, [], 0
if op == "extra":
    h[name] = {"dtype": "F32", "shape": [2], "data_offsets": [len(data), len(data) + 8]}
    data += struct.pack("<2f", 1.0, 2.0)
for k, t in h.items():
    x = data[t["data_offsets"][0]:t["data_offsets"][1]]
    if k == name and op == "drop":
        continue
    if k == name and op == "flatten":
        t["shape"] = [len(x) // 4]
    if k == name and op == "nan":
        x = struct.pack("<f", float("nan")) + x[4:]
    if (k == name and op == "f16") or (op == "bf16" and t["dtype"] == "F32"):
        v = struct.unpack("<%dI" % (len(x) // 4), x)
        if op == "bf16":
            x = struct.pack("<%dH" % len(v), *[u >> 16 for u in v])
        else:
            x = struct.pack("<%de" % len(v), *struct.unpack("<%df" % len(v), x))
        t["dtype"] = "BF16" if op == "bf16" else "F16"
    out[k] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [at, at + len(x)]}
    blobs.append(x)
    at += len(x)
if meta:
    out["__metadata__"] = meta
hdr = json.dumps(out).encode()
hdr += b" " * (-len(hdr) % 8)
open(dst, "wb").write(struct.pack("<Q", len(hdr)) + hdr + b"".join(blobs))
EOF
}

# ---- --save-init: the weights of seed 1 (fp32 and bf16-pure)
out=$("$T" "${SW[@]}" --save-init "$tmp/sw1.st" --results "$tmp/S" 2>&1); rc=$?
check "--save-init exits 0" test $rc -eq 0
check "--save-init says what it wrote" grep -q "wrote the initial weights (train.seed 1) to $tmp/sw1.st" <<<"$out"
check "--save-init trains nothing, writes no run folder and no dataset" test ! -e "$tmp/data" -a ! -e "$tmp/S"
check "--save-init file obeys the safetensors rules (independent Python reader)" "$PY" tests/test_train_safetensors.py "$tmp/sw1.st"
"$T" "${SW[@]}" "${PURE[@]}" --save-init "$tmp/sw1p.st" >/dev/null 2>&1
check "--save-init in bf16-pure: every value bf16 (the reference's cast)" "$FILES" bf16 "$tmp/sw1p.st"
check "--save-init in fp32: values that are not bf16" bash -c "! '$FILES' bf16 '$tmp/sw1.st' >/dev/null 2>&1"
"$T" "${SW[@]}" train.seed=2 --save-init "$tmp/sw2.st" >/dev/null 2>&1
check "--save-init of seed 2 differs from seed 1's" bash -c "! '$FILES' cmp '$tmp/sw1.st' '$tmp/sw2.st' 0 >/dev/null 2>&1"
check "--save-init with train.init_from writes the file's weights" bash -c \
    "'$T' ${SW[*]} train.seed=2 train.init_from='$tmp/sw1.st' --save-init '$tmp/sw1b.st' >/dev/null &&
     '$FILES' cmp '$tmp/sw1.st' '$tmp/sw1b.st' 0 >/dev/null"

# ---- fp32: seed 2 from seed 1's weights trains exactly as seed 1
"$T" "${SW[@]}" --results "$tmp/A" >"$tmp/A.log" 2>&1
A=$(run_dir A sw 1)
check "run A (seed 1) complete" grep -q '"status": "complete"' "$A/result.json"
out=$("$T" "${SW[@]}" train.seed=2 train.init_from="$tmp/sw1.st" --results "$tmp/B" 2>&1); rc=$?
B=$(run_dir B sw 2)
check "run B (seed 2, init_from seed 1's file) exits 0" test $rc -eq 0
check "run B says where its weights come from" grep -q "initial weights from $tmp/sw1.st (26 parameters)" <<<"$out"
check "run B echoes train.init_from in its config" grep -q "init_from: \"$tmp/sw1.st\"" <<<"$out"
check "run B's first loss is A's exactly ($(first_loss "$A") vs $(first_loss "$B"))" \
    test -n "$(first_loss "$A")" -a "$(first_loss "$A")" = "$(first_loss "$B")"
check "run B's metrics.csv equals A's (every step, validation)" cmp -s "$A/metrics.csv" "$B/metrics.csv"
check "run B's best weights equal A's bit for bit" "$FILES" cmp "$A/best.safetensors" "$B/best.safetensors" 0
check "run B's checkpoint (weights, moments) equals A's bit for bit" \
    "$FILES" cmp "$A/checkpoint.safetensors" "$B/checkpoint.safetensors" 0
check "run B's result.json records train.init_from" "$PY" -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["config"]["train"]["init_from"] == sys.argv[2], r["config"]["train"]
assert r["seed"] == 2, r["seed"]' "$B/result.json" "$tmp/sw1.st"
check "run A's result.json: init_from empty" grep -q '"init_from": ""' "$A/result.json"
"$T" "${SW[@]}" train.seed=2 --results "$tmp/C" >/dev/null 2>&1
C=$(run_dir C sw 2)
check "run C (seed 2, its own init) starts elsewhere: first loss $(first_loss "$C") != $(first_loss "$A")" \
    test -n "$(first_loss "$C")" -a "$(first_loss "$C")" != "$(first_loss "$A")"

# ---- bf16-pure, from an F32 file and from the same values as BF16
"$T" "${SW[@]}" "${PURE[@]}" --results "$tmp/P" >/dev/null 2>&1
P=$(run_dir P sw@bf16-pure 1)
"$T" "${SW[@]}" "${PURE[@]}" train.seed=2 train.init_from="$tmp/sw1p.st" --results "$tmp/Q" >/dev/null 2>&1
Q=$(run_dir Q sw@bf16-pure 2)
check "bf16-pure: seed 2 from seed 1's F32 file: metrics.csv equals seed 1's" cmp -s "$P/metrics.csv" "$Q/metrics.csv"
check "bf16-pure: checkpoint bit for bit" "$FILES" cmp "$P/checkpoint.safetensors" "$Q/checkpoint.safetensors" 0
edit "$tmp/sw1p.st" "$tmp/sw1p_bf16.st" bf16
check "the BF16 copy holds BF16 tensors" grep -q '"BF16"' "$tmp/sw1p_bf16.st"
"$T" "${SW[@]}" "${PURE[@]}" train.seed=2 train.init_from="$tmp/sw1p_bf16.st" --results "$tmp/R" >/dev/null 2>&1
check "bf16-pure: from the BF16 file: metrics.csv equals seed 1's" \
    cmp -s "$P/metrics.csv" "$(run_dir R sw@bf16-pure 2)/metrics.csv"
"$T" "${SW[@]}" train.init_from="$tmp/sw1p_bf16.st" --results "$tmp/R32" >/dev/null 2>&1
"$T" "${SW[@]}" train.init_from="$tmp/sw1p.st" --results "$tmp/S32" >/dev/null 2>&1
check "fp32 run from a BF16 file equals the run from its F32 copy" \
    "$FILES" cmp "$(run_dir R32 sw 1)/checkpoint.safetensors" "$(run_dir S32 sw 1)/checkpoint.safetensors" 0

# ---- 2 ranks: every rank loads the file; seed 2 from seed 1's weights = seed 1, on 2 ranks
$MPIRUN -np 2 "$T" "${SW[@]}" --results "$tmp/M1" >/dev/null 2>&1
$MPIRUN -np 2 "$T" "${SW[@]}" train.seed=2 train.init_from="$tmp/sw1.st" --results "$tmp/M2" >"$tmp/M2.log" 2>&1; rc=$?
check "2 ranks with init_from exit 0" test $rc -eq 0
check "2 ranks: seed 2 from seed 1's file: metrics.csv equals seed 1's on 2 ranks" \
    cmp -s "$(run_dir M1 sw 1)/metrics.csv" "$(run_dir M2 sw 2)/metrics.csv"
check "2 ranks: checkpoint bit for bit" \
    "$FILES" cmp "$(run_dir M1 sw 1)/checkpoint.safetensors" "$(run_dir M2 sw 2)/checkpoint.safetensors" 0

# ---- the tiny config's LSH pattern from a best.safetensors (its evaluation hash matrices ignored)
LSH=(configs/tiny.yaml data.path=$tmp/data train.steps=3 train.warmup=2 train.valid_every=2 train.log_every=1)
"$T" "${LSH[@]}" --results "$tmp/L" >/dev/null 2>&1
L=$(run_dir L tiny 1)
check "the LSH run's best.safetensors holds evaluation hash matrices" grep -q 'eval.rand.layers.1.hash_matrix' "$L/best.safetensors"
out=$("$T" "${LSH[@]}" train.init_from="$L/best.safetensors" --results "$tmp/L2" 2>&1); rc=$?
check "init_from a best.safetensors exits 0" test $rc -eq 0
check "init_from a best.safetensors: its 2 evaluation hash matrices ignored" \
    grep -q "(38 parameters; 2 evaluation hash matrices in it ignored)" <<<"$out"
"$T" "${LSH[@]}" --save-init "$tmp/lsh1.st" >/dev/null 2>&1
"$T" "${LSH[@]}" train.init_from="$tmp/lsh1.st" --results "$tmp/L3" >/dev/null 2>&1
check "LSH pattern, same seed, from --save-init: the run of its own init bit for bit" \
    "$FILES" cmp "$L/checkpoint.safetensors" "$(run_dir L3 tiny 1)/checkpoint.safetensors" 0

# ---- resume: the checkpoint's weights, the file is not read again
"$T" "${SW[@]}" train.seed=2 train.init_from="$tmp/sw1_copy.st" --results "$tmp/G" --stop-after-step 4 \
    >/dev/null 2>&1; rc=$?
check "init_from a missing file: refused before anything is written (exit $rc)" test $rc -eq 1 -a ! -e "$tmp/G"
cp "$tmp/sw1.st" "$tmp/sw1_copy.st"
"$T" "${SW[@]}" train.seed=2 train.init_from="$tmp/sw1_copy.st" --results "$tmp/G" --stop-after-step 4 \
    >/dev/null 2>&1; rc=$?
check "run G stopped after step 4 (exit 3)" test $rc -eq 3
check_refused "resume with another init_from: refused (the checkpoint's config)" \
    "found one of another config \(train.init_from: checkpoint has \".*sw1_copy.st\", config has \"\"\)" \
    "$T" "${SW[@]}" train.seed=2 --results "$tmp/G"
rm "$tmp/sw1_copy.st"
out=$("$T" "${SW[@]}" train.seed=2 train.init_from="$tmp/sw1_copy.st" --results "$tmp/G" 2>&1); rc=$?
G=$(run_dir G sw 2)
check "resume with the init file gone: exit 0, resumed at step 4" grep -q "resuming .* at step 4" <<<"$out"
check "resume does not load init_from" bash -c "! grep -q 'initial weights from' <<<'$out'"
check "stopped + resumed run equals the uninterrupted one bit for bit" \
    "$FILES" cmp "$B/checkpoint.safetensors" "$G/checkpoint.safetensors" 0

# ---- bad files: one line naming the file, the tensor, expected and found; nothing written
F=$tmp/sw1.st
bad() {  # bad NAME PATTERN FILE [overrides]: refused, no run folder
    local name=$1 pattern=$2 file=$3; shift 3
    check_refused "$name" "$pattern" "$T" "${SW[@]}" train.seed=2 train.init_from="$file" "$@" --results "$tmp/X"
    check "$name: nothing written" test ! -e "$tmp/X"
}
edit "$F" "$tmp/drop.st" drop layers.1.mixer.D
bad "a missing parameter" "^hax: train.init_from: $tmp/drop.st: tensor layers.1.mixer.D: expected it \(a parameter of this model, shape \[32\]\), found none$" "$tmp/drop.st"
edit "$F" "$tmp/flat.st" flatten layers.0.mixer.in_proj.weight
bad "a wrong shape" "tensor layers.0.mixer.in_proj.weight: expected shape \[64,16\] \(this model's\), found \[1024\]$" "$tmp/flat.st"
edit "$F" "$tmp/extra.st" extra layers.0.mixer.bogus
bad "a tensor that is no parameter" "tensor layers.0.mixer.bogus: expected only parameters of this model \(mamba sliding_window, n_layers 2\), found a tensor that is none of them$" "$tmp/extra.st"
edit "$F" "$tmp/f16.st" f16 norm_f.weight
bad "an F16 tensor" "tensor norm_f.weight: expected dtype F32 or BF16, found F16$" "$tmp/f16.st"
edit "$F" "$tmp/nan.st" nan embeddings.weight
bad "a NaN" "tensor embeddings.weight: expected finite values, found nan at index 0$" "$tmp/nan.st"
bad "fp32 weights in bf16-pure" \
    "^hax: train.init_from: $F: tensor embeddings.weight: expected bf16 values \(train.precision bf16-pure: .*\), found -?[0-9.e-]+ \(bits 0x[0-9a-f]{8}\) at index [0-9]+$" \
    "$F" "${PURE[@]}"
bad "another model's weights (n_layers 1)" "tensor layers.1.norm.weight: expected only parameters of this model" "$F" model.n_layers=1
bad "a hax-train checkpoint" "$A/checkpoint.safetensors: expected a file of model weights .*, found a hax-train checkpoint \(format hax-checkpoint-1\)" "$A/checkpoint.safetensors"
bad "a file that is not there" "^hax: train.init_from: $tmp/none.st: " "$tmp/none.st"
printf 'not safetensors' >"$tmp/junk.st"
bad "a file that is not safetensors" "^hax: train.init_from: $tmp/junk.st: " "$tmp/junk.st"
check_refused "--save-init with a bad init_from: refused" "tensor layers.1.mixer.D: expected it" \
    "$T" "${SW[@]}" train.init_from="$tmp/drop.st" --save-init "$tmp/never.st"
check "--save-init with a bad init_from: nothing written" test ! -e "$tmp/never.st"

finish
