#!/usr/bin/env bash
# test_pdiff.sh: bin/hax-pdiff on the tiny config (CPU, about 20 s). fp32
# training moves nearly every element; a file against itself, and a tensor set
# back to its init, are 100% identical; in bf16-pure the update the tool
# computes from a checkpoint's moments (MODEL.md 8.5) vanishes exactly for the
# elements that the step left unchanged (the checkpoint before the step against
# the one after it); bf16-pure's second moment never shrinks (b2 = 0.999 is
# within half a bf16 ulp of 1), fp32's does; every bad file or command line is
# refused with one line.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
T=$BIN/hax-train
D=$BIN/hax-pdiff
PY=/usr/bin/python3
tmp=$(mktemp -d /tmp/hax_test_pdiff.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1

TINY=(configs/tiny.yaml data.path=$tmp/data train.steps=10 train.warmup=2 train.valid_every=5 train.log_every=5
      train.checkpoint_every=100)
PURE=(train.precision=bf16-pure)
# edit IN OUT OP [ARG...] (standard library only): copy NAME FROM (NAME's data from file FROM), weights FROM
# (every parameter FROM holds, from FROM: not its moments, best weights or records), nometa (no __metadata__), flatten NAME, f16 NAME
edit() {
    "$PY" - "$@" <<'EOF'
import json, struct, sys
def read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", None)
    return h, b[8 + n:], meta
src, dst, op = sys.argv[1:4]
args = sys.argv[4:]
h, data, meta = read(src)
other = {}
if op in ("copy", "weights"):
    fh, fd, _ = read(args[-1])
    for k, t in fh.items():
        records = k.startswith(("adamw.", "best.", "best_valid.")) or k in ("metrics", "state")
        if (op == "weights" and not records) or k == args[0]:
            other[k] = fd[t["data_offsets"][0]:t["data_offsets"][1]]
out, blobs, at = {}, [], 0
for k, t in h.items():
    x = data[t["data_offsets"][0]:t["data_offsets"][1]]
    if k in other:
        assert len(other[k]) == len(x), k
        x = other[k]
    if op == "flatten" and k == args[0]:
        t["shape"] = [len(x) // 4]
    if op == "f16" and k == args[0]:
        x = struct.pack("<%de" % (len(x) // 4), *struct.unpack("<%df" % (len(x) // 4), x))
        t["dtype"] = "F16"
    out[k] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [at, at + len(x)]}
    blobs.append(x)
    at += len(x)
if meta and op != "nometa":
    out["__metadata__"] = meta
hdr = json.dumps(out).encode()
hdr += b" " * (-len(hdr) % 8)
open(dst, "wb").write(struct.pack("<Q", len(hdr)) + hdr + b"".join(blobs))
EOF
}
# col FILE NAME K: column K of NAME's line in a hax-pdiff output (the first table: tensors and families)
col() { awk -v n="$2" -v k="$3" '$1 == n { print $k; exit }' "$1"; }
# all parameters' line: its columns shift by one ("all parameters" is two words)
all_col() { awk -v k="$2" '$1 == "all" && $2 == "parameters" { print $(k + 1); exit }' "$1"; }

# ---- fp32: init, 10 steps, checkpoints at steps 9 and 10
"$T" "${TINY[@]}" --save-init "$tmp/i32.st" >/dev/null 2>&1
R32=$tmp/R32/tiny/lr_0.003/seed_1
"$T" "${TINY[@]}" --results "$tmp/R32" --stop-after-step 9 >/dev/null 2>&1; rc=$?
check "fp32: stopped after step 9 (exit $rc)" test $rc -eq 3
cp "$R32/checkpoint.safetensors" "$tmp/c32_9.st"
"$T" "${TINY[@]}" --results "$tmp/R32" >/dev/null 2>&1
cp "$R32/checkpoint.safetensors" "$tmp/c32_10.st"
"$D" "$tmp/i32.st" "$tmp/c32_10.st" >"$tmp/a.txt" 2>&1; rc=$?
check "init against its 10-step checkpoint: exit 0" test $rc -eq 0
n=$(grep -c '^layers\.[0-9]' "$tmp/a.txt")
check "one line per layer tensor and per family ($n)" test "$n" -gt 20
same=$(all_col "$tmp/a.txt" 3)
check "fp32, 10 steps: nearly every element changed (identical $same)" \
    awk -v s="${same%\%}" 'BEGIN { exit !(s != "" && s < 1.0) }'
check "fp32: the update lines named" grep -q "step 10, lr 0.003 (train.lr through the warm-up).*fp32 lines" "$tmp/a.txt"
n=$(awk '$1 ~ /^layers\.[0-9]/ && $3 != "0.00%"' "$tmp/a.txt" | wc -l)
check "fp32: no layer tensor has an unchanged element ($n lines with some)" test "$n" -le 2

"$D" "$tmp/i32.st" "$tmp/i32.st" >"$tmp/b.txt" 2>&1; rc=$?
n=$(awk '$1 ~ /^(layers|embeddings|norm_f)/ && $3 != "100.00%"' "$tmp/b.txt" | wc -l)
check "a file against itself: every tensor 100.00% identical (exit $rc, $n lines not)" test $rc -eq 0 -a "$n" -eq 0
check "a file against itself: all parameters 100.00%" test "$(all_col "$tmp/b.txt" 3)" = "100.00%"
check "no moments in B: no update columns" grep -q "B holds no AdamW moments" "$tmp/b.txt"

edit "$tmp/c32_10.st" "$tmp/c32_D.st" copy layers.0.mixer.D "$tmp/i32.st"
"$D" "$tmp/i32.st" "$tmp/c32_D.st" >"$tmp/c.txt" 2>&1
check "a tensor set back to its init: 100.00% identical" test "$(col "$tmp/c.txt" layers.0.mixer.D 3)" = "100.00%"
check "... the other layer's D not ($(col "$tmp/c.txt" layers.1.mixer.D 3))" \
    test "$(col "$tmp/c.txt" layers.1.mixer.D 3)" = "$(col "$tmp/a.txt" layers.1.mixer.D 3)" -a \
    "$(col "$tmp/c.txt" layers.1.mixer.D 3)" != "100.00%"
check "... its family: half of it (16 of 32 elements)" test "$(col "$tmp/c.txt" 'layers.*.mixer.D' 3)" = "50.00%"

"$D" --families "$tmp/c32_9.st" "$tmp/c32_10.st" >"$tmp/d.txt" 2>&1
down=$(awk '$1 == "all" && $2 == "parameters" { v = $(6) } END { print v }' "$tmp/d.txt")
check "fp32: the second moment shrinks for some elements in a step (v down $down)" \
    awk -v s="${down%\%}" 'BEGIN { exit !(s != "" && s > 1.0) }'
check "--families: no per-tensor lines" bash -c "! grep -q '^layers\.0\.' '$tmp/d.txt'"

# ---- bf16-pure: the update vanishes exactly where the step left the weight
RP=$tmp/RP/tiny@bf16-pure/lr_0.003/seed_1
"$T" "${TINY[@]}" "${PURE[@]}" --results "$tmp/RP" --stop-after-step 9 >/dev/null 2>&1
cp "$RP/checkpoint.safetensors" "$tmp/p9.st"
"$T" "${TINY[@]}" "${PURE[@]}" --results "$tmp/RP" >/dev/null 2>&1
cp "$RP/checkpoint.safetensors" "$tmp/p10.st"
# step 10's moments on step 9's weights: the weights that update was added to
edit "$tmp/p10.st" "$tmp/p10w9.st" weights "$tmp/p9.st"
"$D" "$tmp/p9.st" "$tmp/p10.st" >"$tmp/e.txt" 2>&1
"$D" "$tmp/p9.st" "$tmp/p10w9.st" >"$tmp/f.txt" 2>&1
check "bf16-pure: the update lines named" grep -q "step 10, lr 0.003 .*bf16-pure lines" "$tmp/f.txt"
names=$(awk '$1 ~ /^(layers|embeddings|norm_f)/ { print $1 }' "$tmp/e.txt" | sort -u)
bad="" mixed=0
for t in $names; do
    a=$(col "$tmp/e.txt" "$t" 3) b=$(col "$tmp/f.txt" "$t" 6)
    [ "$a" = "$b" ] || bad+=" $t($a/$b)"
    [ "$a" != "0.00%" ] && [ "$a" != "100.00%" ] && mixed=$((mixed + 1))
done
check "bf16-pure: per tensor, identical after step 10 = vanishing update of step 10 ($(echo $names | wc -w) lines)" \
    test -n "$names" -a -z "$bad"
[ -n "$bad" ] && echo "     differ:$bad"
check "bf16-pure: some tensors partly moved ($mixed): the check is not all-or-nothing" test "$mixed" -ge 3
check "bf16-pure: the second moment never shrinks" \
    test "$(awk '$1 == "all" && $2 == "parameters" { v = $6 } END { print v }' "$tmp/e.txt")" = "0.00%"

# ---- --lr / --step / --precision where B has no config
edit "$tmp/p10w9.st" "$tmp/nometa.st" nometa
check_refused "moments without a config or --lr: refused" \
    "^hax: $tmp/nometa.st: __metadata__.config: expected the run's config \(train.lr\), found none; give --lr$" \
    "$D" "$tmp/p9.st" "$tmp/nometa.st"
check_refused "--lr without --step and no metadata step: refused" "__metadata__.step: expected" \
    "$D" "$tmp/p9.st" "$tmp/nometa.st" --lr 0.003 --precision bf16-pure
"$D" "$tmp/p9.st" "$tmp/nometa.st" --lr 0.003 --step 10 --precision bf16-pure >"$tmp/g.txt" 2>&1
check "--lr 0.003 --step 10 --precision bf16-pure: the config's figures" \
    grep -q "^all parameters" "$tmp/g.txt"
check "... the same lines as from the config" diff <(sed 1,2d "$tmp/f.txt") <(sed 1,2d "$tmp/g.txt")
"$D" "$tmp/p9.st" "$tmp/p10w9.st" --lr 0 >"$tmp/h.txt" 2>&1
check "--lr 0: every update vanishes" test "$(all_col "$tmp/h.txt" 6)" = "100.00%"

# ---- bad input: one line, non-zero exit
check_refused "a missing file" "^hax: $tmp/none.st: " "$D" "$tmp/i32.st" "$tmp/none.st"
printf 'not safetensors' >"$tmp/junk.st"
check_refused "a file that is not safetensors" "^hax: $tmp/junk.st: " "$D" "$tmp/junk.st" "$tmp/i32.st"
"$T" configs/tiny_mamba2_sw.yaml data.path=$tmp/data --save-init "$tmp/m2.st" >/dev/null 2>&1
check_refused "another model's file" "^hax: $tmp/m2.st: tensor .*: expected .*found" "$D" "$tmp/i32.st" "$tmp/m2.st"
edit "$tmp/i32.st" "$tmp/flat.st" flatten layers.0.mixer.in_proj.weight
check_refused "a misshapen tensor" \
    "^hax: $tmp/flat.st: tensor layers.0.mixer.in_proj.weight: expected shape \[64,16\] \(as in $tmp/i32.st\), found \[1024\]$" \
    "$D" "$tmp/i32.st" "$tmp/flat.st"
edit "$tmp/i32.st" "$tmp/f16.st" f16 norm_f.weight
check_refused "an F16 tensor" "^hax: $tmp/f16.st: tensor norm_f.weight: expected dtype F32 or BF16, found F16$" \
    "$D" "$tmp/f16.st" "$tmp/i32.st"
check_fails "one file: usage error" "expected two safetensors files, found 1" "$D" "$tmp/i32.st"
"$D" "$tmp/i32.st" >/dev/null 2>&1; rc=$?
check "a usage error exits 2 ($rc)" test $rc -eq 2
check_refused "a bad --lr" "^hax: --lr: expected a finite number >= 0, found 'x'$" "$D" "$tmp/i32.st" "$tmp/i32.st" --lr x

finish
