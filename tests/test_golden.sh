#!/usr/bin/env bash
# test_golden.sh: bin/hax-check on every golden case (tests/golden, see its
# README), then the refusals: a tolerance no float32 run can meet, a changed
# weight, and malformed files (truncated, no case metadata, a parameter of the
# wrong shape or dtype), each with one clear error line.
source "$(dirname "$0")/lib.sh"
G=$ROOT/tests/golden
CHECK=$BIN/hax-check
[ -x "$CHECK" ] || { fail "bin/hax-check not built"; finish; exit 1; }

for f in "$G"/*.safetensors; do
    name=$(basename "$f" .safetensors)
    out=$("$CHECK" -q "$f" 2>&1); rc=$?
    if [ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q "^$name: ok"; then ok "golden $name"
    else fail "golden $name (exit $rc)"; printf '%s\n' "$out" | grep -E "FAIL|hax:" | head -n 20; fi
done

T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
base=$G/mamba_base.safetensors

# a tolerance below float32 rounding must fail (the checks can fail)
out=$("$CHECK" -q --tol 1e-12 "$base" 2>&1); rc=$?
if [ $rc -ne 0 ] && printf '%s\n' "$out" | grep -q "out.logits.*FAIL"; then ok "tolerance 1e-12 fails, naming the tensor"
else fail "tolerance 1e-12 fails, naming the tensor (exit $rc)"; fi

# one changed weight value: the outputs and gradients no longer match
cp "$base" "$T/changed.safetensors"
hl=$(od -An -t u8 -N8 "$base" | tr -d ' ')
beg=$(grep -ao '"layers.0.mixer.in_proj.weight":{[^}]*}' "$base" | sed -E 's/.*"data_offsets":\[([0-9]+),.*/\1/')
printf '\x00\x00\x80\x3f' | dd of="$T/changed.safetensors" bs=1 seek=$((8 + hl + beg + 40)) conv=notrunc status=none
out=$("$CHECK" -q "$T/changed.safetensors" 2>&1); rc=$?
if [ $rc -ne 0 ] && printf '%s\n' "$out" | grep -q "out.logits.*FAIL"; then ok "changed weight detected"
else fail "changed weight detected (exit $rc)"; fi

# malformed files
head -c 5000 "$base" > "$T/truncated.safetensors"
check_fails "truncated file refused" "truncated.safetensors" "$CHECK" "$T/truncated.safetensors"
perl -0777 -pe 's/"hax_case"/"hax_casX"/' "$base" > "$T/nometa.safetensors"
check_fails "file without hax_case refused" "hax_case" "$CHECK" "$T/nometa.safetensors"
perl -0777 -pe 's/("embeddings.weight":\{"dtype":"F32","shape":)\[100,16\]/$1\[16,100\]/' "$base" > "$T/shape.safetensors"
check_fails "wrong parameter shape refused" "embeddings.weight.*shape" "$CHECK" "$T/shape.safetensors"
perl -0777 -pe 's/("norm_f.weight":\{"dtype":)"F32"/$1"I32"/' "$base" > "$T/dtype.safetensors"
check_fails "wrong parameter dtype refused" "norm_f.weight.*F32" "$CHECK" "$T/dtype.safetensors"
check_fails "no file given" "usage" "$CHECK"
check_fails "bad --tol" "--tol" "$CHECK" --tol abc "$base"
finish
