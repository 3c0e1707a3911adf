#!/usr/bin/env bash
# test_golden.sh: bin/hax-check on every golden case (tests/golden, see its
# README), then the refusals: a tolerance no float32 run can meet, a changed
# weight, and malformed files (truncated, no case metadata, a parameter of the
# wrong shape or dtype), each with one clear error line.
source "$(dirname "$0")/lib.sh"
G=$ROOT/tests/golden
CHECK=$BIN/hax-check
[ -x "$CHECK" ] || { fail "bin/hax-check not built"; finish; exit 1; }

# Tolerances near the golden README's float32 figures (forward 6e-7, gradients
# 4.1e-6 observed by a float32 port), not the looser defaults, so a regression
# in precision fails here.
for f in "$G"/*.safetensors; do
    name=$(basename "$f" .safetensors)
    out=$("$CHECK" -q --tol 2e-6 --grad-tol 1e-5 "$f" 2>&1); rc=$?
    if [ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q "^$name: ok"; then ok "golden $name"
    else fail "golden $name (exit $rc)"; printf '%s\n' "$out" | grep -E "FAIL|hax:" | head -n 20; fi
done

T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
base=$G/mamba_base.safetensors

# a tolerance below float32 rounding must fail (the checks can fail)
check_output_fails "tolerance 1e-12 fails, naming the tensor" "out.logits.*FAIL" "$CHECK" -q --tol 1e-12 "$base"

# one changed weight value: the outputs and gradients no longer match
cp "$base" "$T/changed.safetensors"
hl=$(od -An -t u8 -N8 "$base" | tr -d ' ')
beg=$(grep -ao '"layers.0.mixer.in_proj.weight":{[^}]*}' "$base" | sed -E 's/.*"data_offsets":\[([0-9]+),.*/\1/')
printf '\x00\x00\x80\x3f' | dd of="$T/changed.safetensors" bs=1 seek=$((8 + hl + beg + 40)) conv=notrunc status=none
check_output_fails "changed weight detected" "out.logits.*FAIL" "$CHECK" -q "$T/changed.safetensors"

# malformed files
head -c 5000 "$base" > "$T/truncated.safetensors"
check_fails "truncated file refused" "truncated.safetensors" "$CHECK" "$T/truncated.safetensors"
perl -0777 -pe 's/"hax_case"/"hax_casX"/' "$base" > "$T/nometa.safetensors"
check_fails "file without hax_case refused" "hax_case" "$CHECK" "$T/nometa.safetensors"
perl -0777 -pe 's/("embeddings.weight":\{"dtype":"F32","shape":)\[100,16\]/$1\[16,100\]/' "$base" > "$T/shape.safetensors"
check_fails "wrong parameter shape refused" "embeddings.weight.*shape" "$CHECK" "$T/shape.safetensors"
perl -0777 -pe 's/("norm_f.weight":\{"dtype":)"F32"/$1"I32"/' "$base" > "$T/dtype.safetensors"
check_fails "wrong parameter dtype refused" "norm_f.weight.*F32" "$CHECK" "$T/dtype.safetensors"
# golden tensors of the wrong shape or dtype kind are refused before use, even
# with the same number of values (a transposed hash matrix)
ks=$G/mamba_sign_bin_lsh__key_selection.safetensors
perl -0777 -pe 's/("rand.layers.0.hash_matrix":\{"dtype":"F32","shape":)\[8,3\]/$1\[3,8\]/' "$ks" > "$T/hash.safetensors"
check_fails "transposed hash matrix refused" "rand.layers.0.hash_matrix: expected shape \[8,3\], found \[3,8\]" "$CHECK" "$T/hash.safetensors"
perl -0777 -pe 's/("input_ids":\{"dtype":)"I64"/$1"F64"/' "$ks" > "$T/ids.safetensors"
check_fails "floating-point input_ids refused" "input_ids: expected an integer dtype.*found F64" "$CHECK" "$T/ids.safetensors"
perl -0777 -pe 's/("dbg.layers.1.q_bucket":\{"dtype":)"I64"/$1"F64"/' "$ks" > "$T/bucket.safetensors"
check_fails "floating-point buckets refused" "dbg.layers.1.q_bucket: expected an integer" "$CHECK" "$T/bucket.safetensors"
perl -0777 -pe 's/("dbg.layers.0.allowed_keys":\{"dtype":"I64","shape":)\[3,73,8\]/$1\[3,8,73\]/' "$ks" > "$T/allowed.safetensors"
check_fails "allowed_keys of another shape refused" "allowed_keys: expected shape \[3,73,8\]" "$CHECK" "$T/allowed.safetensors"
# a tensor hax-check does not know is a failure, not silently skipped
perl -0777 -pe 's/"grad.norm_f.weight"/"grad.norm_f.weighX"/' "$ks" > "$T/unknown.safetensors"
check_output_fails "unknown tensor name fails" "grad.norm_f.weighX .*FAIL.*not checked" "$CHECK" -q "$T/unknown.safetensors"
# model configs in the metadata that the engine cannot run
perl -0777 -pe 's/\\"sparse_keys\\": 8/\\"sparse_keys\\": 7/' "$ks" > "$T/keys.safetensors"
check_fails "sparse_keys not divisible refused" "sparse.keys: expected a multiple of the 2 parts.*found 7" "$CHECK" "$T/keys.safetensors"
perl -0777 -pe 's/\\"sparse_arch\\": \\"sign_bin_lsh\+key_selection\\"/\\"sparse_arch\\": \\"sign_bin_lsx+key_selection\\"/' "$ks" > "$T/pattern.safetensors"
check_fails "unknown pattern refused" "found 'sign_bin_lsx'" "$CHECK" "$T/pattern.safetensors"
check_fails "no file given" "usage" "$CHECK"
check_fails "bad --tol" "--tol" "$CHECK" --tol abc "$base"
finish
