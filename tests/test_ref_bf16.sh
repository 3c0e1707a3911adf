#!/usr/bin/env bash
# test_ref_bf16.sh: hax-check --precision bf16-pure, the side of the bf16-pure
# golden cases (tests/ref/ref_golden_bf16.py, made on a GPU) that runs here.
# A case hax-check writes itself (--emit: the CPU engine's bf16-pure results
# in the golden format) must pass with every tensor equal; perturbed copies
# must fail where a bound is crossed and pass where it is not (one ulp
# everywhere, or differences within the reference's own spread given by
# --noise); LSH buckets that differ are counted and injected; a bf16-pure
# file is refused without --precision bf16-pure.
source "$(dirname "$0")/lib.sh"
G=$ROOT/tests/golden
CHECK=$BIN/hax-check
[ -x "$CHECK" ] || { fail "bin/hax-check not built"; finish; exit 1; }
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT

# perturb FILE TENSOR ULPS EVERY [FIRST]: adds ULPS bf16 ulps (2^16 in the
# float32 bits) to every EVERY-th element of F32 tensor TENSOR, from FIRST.
perturb() {
    perl -e '
        my ($f, $name, $ulps, $every, $first) = @ARGV;
        open(my $fh, "+<", $f) or die "$f: $!"; binmode $fh;
        read($fh, my $h8, 8); my $hl = unpack("Q<", $h8); read($fh, my $hdr, $hl);
        $hdr =~ /"\Q$name\E":\{[^}]*"data_offsets":\[(\d+),(\d+)\]/ or die "$f: no tensor $name\n";
        for (my $i = $1 + 4 * $first; $i < $2; $i += 4 * $every) {
            seek($fh, 8 + $hl + $i, 0); read($fh, my $x, 4);
            seek($fh, 8 + $hl + $i, 0); print $fh pack("L<", (unpack("L<", $x) + $ulps * 65536) & 0xffffffff);
        }' "$1" "$2" "$3" "$4" "${5:-0}"
}

# every tensor equal: "equal N/N" on each compared float tensor, 0 past tolerance
for c in mamba_base mamba2_base samba_base mamba_sign_bin_lsh__key_selection mamba2_sign_bin_lsh__key_selection; do
    "$CHECK" -q --precision bf16-pure --emit "$T/$c.safetensors" "$G/$c.safetensors" > "$T/$c.emit.log" 2>&1
    out=$("$CHECK" --precision bf16-pure "$T/$c.safetensors" 2>&1); rc=$?
    unequal=$(printf '%s\n' "$out" | grep -E ' equal ' | grep -Ev ' equal ([0-9]+)/\1,' | head -n 3)
    n=$(printf '%s\n' "$out" | grep -c ' equal ')
    if [ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q "^1 of 1 cases ok, [0-9]* tensors checked, 0 past" &&
        [ -z "$unequal" ] && [ "$n" -gt 20 ]; then ok "bf16-pure self case $c: $n tensors, all equal"
    else fail "bf16-pure self case $c (exit $rc)"; printf '%s\n' "$out" | grep -E "FAIL|hax:" | head -n 10; printf '%s\n' "$unequal"; fi
done
grep -qF 'precision\": \"bf16-pure' "$T/mamba_base.safetensors" && ok "emitted case records precision bf16-pure" ||
    fail "emitted case records precision bf16-pure"

# block inputs (dbg.layers.*.hidden_in, dbg.norm_f.hidden_in): one per block
# and norm_f in each emitted case, every one compared and equal; with numpy,
# what they hold (layer 0 the embedding rows, norm_f of the last one the
# last hidden state: tests/block_inputs_numpy.py)
PY=
for p in ${HAX_PYTHON:-} /usr/bin/python3 python3; do
    if "$p" -c 'import numpy' 2>/dev/null; then PY=$p; break; fi
done
for c in mamba2_base samba_base; do
    out=$("$CHECK" --precision bf16-pure "$T/$c.safetensors" 2>&1)
    layers=$(printf '%s\n' "$out" | sed -n '1s/.*, \([0-9]*\) layers,.*/\1/p')
    n=$(printf '%s\n' "$out" | grep -cE '^  dbg\.(layers\.[0-9]+|norm_f)\.hidden_in +rel .* ok  equal ([0-9]+)/\2,')
    if [ -n "$layers" ] && [ "$layers" -gt 0 ] && [ "$n" -eq $((layers + 1)) ]; then
        ok "$c: $n block inputs ($layers layers and norm_f) compared, all equal"
    else fail "$c: block inputs compared ($n of ${layers:-?} layers + 1)"; printf '%s\n' "$out" | grep hidden_in; fi
    if [ -z "$PY" ]; then fail "numpy not found (install python3-numpy): block inputs not checked"; continue; fi
    check "$c: block inputs hold the embedding rows and norm_f's input" \
        "$PY" "$ROOT/tests/block_inputs_numpy.py" "$T/$c.safetensors"
done
m2=$T/mamba2_base.safetensors
# one element of layer 1's input 2^10 times larger: that tensor fails, layer 0's stays equal
cp "$m2" "$T/hin.safetensors"; perturb "$T/hin.safetensors" dbg.layers.1.hidden_in 1280 1000000000
out=$("$CHECK" -q --precision bf16-pure "$T/hin.safetensors" 2>&1); rc=$?
if [ $rc -ne 0 ] && printf '%s\n' "$out" | grep -q "dbg.layers.1.hidden_in .*FAIL  equal [0-9]*/[0-9]*, 1 ulp 0, >1 ulp 1 (max 1280)" &&
    [ "$(printf '%s\n' "$out" | grep -c "^  .* FAIL")" -eq 1 ]; then ok "one element of a block input changed: that tensor alone fails"
else fail "one element of a block input changed: that tensor alone fails (exit $rc)"; printf '%s\n' "$out" | grep -E "FAIL|hax:" | head -n 5; fi
# a --noise file without one of the case's tensors: that line says its bound is the floors alone
cp "$m2" "$T/noise_lacks.safetensors"
perl -pi -e 's/"dbg\.layers\.1\.hidden_in"/"dbg.layers.1.hidden_xx"/' "$T/noise_lacks.safetensors"
out=$("$CHECK" --precision bf16-pure --noise "$T/noise_lacks.safetensors" "$m2" 2>&1)
if printf '%s\n' "$out" | grep -q "dbg.layers.1.hidden_in .*the --noise file lacks it: floors only" &&
    ! printf '%s\n' "$out" | grep -q "dbg.layers.0.hidden_in .*lacks it"; then
    ok "a tensor the --noise file lacks is compared with the floors, and the line says so"
else fail "a tensor the --noise file lacks: the line says so"; printf '%s\n' "$out" | grep hidden_in; fi
# a block input of a layer the model lacks is not skipped
perl -pi -e 's/"dbg\.layers\.1\.hidden_in"/"dbg.layers.9.hidden_in"/' "$T/hin.safetensors"
check_output_fails "a block input of a layer the model lacks fails" "dbg.layers.9.hidden_in .*unknown .*FAIL" \
    "$CHECK" -q --precision bf16-pure "$T/hin.safetensors"

# the same results against the float32 golden: bf16 rounding is far past the bounds
out=$(cat "$T/mamba2_sign_bin_lsh__key_selection.emit.log")
if printf '%s\n' "$out" | grep -q "out.logits .*FAIL"; then ok "bf16-pure against the fp32 golden fails (the bounds can fail)"
else fail "bf16-pure against the fp32 golden fails"; fi

ks=$T/mamba2_sign_bin_lsh__key_selection.safetensors
grad=grad.layers.0.mixer.in_proj.weight
# one ulp on every element: within the floors
cp "$ks" "$T/one.safetensors"; perturb "$T/one.safetensors" "$grad" 1 1
out=$("$CHECK" -q --precision bf16-pure "$T/one.safetensors" 2>&1); rc=$?
if [ $rc -eq 0 ]; then ok "one ulp on every element passes"
else fail "one ulp on every element passes (exit $rc)"; printf '%s\n' "$out" | grep FAIL | head -n 5; fi
# three ulps on 5% of the elements: past the 1% floor of elements beyond one ulp
cp "$ks" "$T/three.safetensors"; perturb "$T/three.safetensors" "$grad" 3 20
out=$("$CHECK" -q --precision bf16-pure "$T/three.safetensors" 2>&1); rc=$?
if [ $rc -ne 0 ] && printf '%s\n' "$out" | grep -q "$grad .*FAIL.*>1 ulp 68 (max 3)"; then ok "3 ulps on 5% of a gradient fails, counted"
else fail "3 ulps on 5% of a gradient fails, counted (exit $rc)"; printf '%s\n' "$out" | grep -E "FAIL|hax:" | head -n 5; fi
# AdamW's second moment, (1 - beta2) g^2: a gradient one ulp off is two ulps off there, so its
# floors count in units of two ulps (bf16_stats.unit, check_util.h); the first moment keeps one ulp
sq=adamw.exp_avg_sq.layers.0.mixer.in_proj.weight
cp "$ks" "$T/sq2.safetensors"; perturb "$T/sq2.safetensors" "$sq" 2 1
out=$("$CHECK" -q --precision bf16-pure "$T/sq2.safetensors" 2>&1); rc=$?
if [ $rc -eq 0 ]; then ok "two ulps on every element of a second moment pass"
else fail "two ulps on every element of a second moment pass (exit $rc)"; printf '%s\n' "$out" | grep FAIL | head -n 5; fi
m1=adamw.exp_avg.layers.0.mixer.in_proj.weight
cp "$ks" "$T/m2.safetensors"; perturb "$T/m2.safetensors" "$m1" 2 1
check_output_fails "two ulps on every element of a first moment fail" "$m1 .*FAIL.*>1 ulp" \
    "$CHECK" -q --precision bf16-pure "$T/m2.safetensors"
cp "$ks" "$T/sq3.safetensors"; perturb "$T/sq3.safetensors" "$sq" 3 20
check_output_fails "three ulps on 5% of a second moment fail, counted in two-ulp units" "$sq .*FAIL.*1..2 ulps 0, >2 ulps 68 (max 3)" \
    "$CHECK" -q --precision bf16-pure "$T/sq3.safetensors"
# a changed weight: the forward moves
cp "$ks" "$T/weight.safetensors"; perturb "$T/weight.safetensors" layers.0.mixer.in_proj.weight 40 7
check_output_fails "changed weights detected" "out.logits .*FAIL" "$CHECK" -q --precision bf16-pure "$T/weight.safetensors"
# LSH buckets of other rows than the engine's: counted (rows), injected, and past 1% of the rows
cp "$ks" "$T/bucket.safetensors"; perturb "$T/bucket.safetensors" dbg.layers.0.q_bucket 1 20
out=$("$CHECK" -q --precision bf16-pure "$T/bucket.safetensors" 2>&1); rc=$?
if [ $rc -ne 0 ] && printf '%s\n' "$out" | grep -Eq "dbg.layers.0.q_bucket +differ +1\.[0-9]+e\+01 .*FAIL.*golden buckets injected"; then
    ok "bucket differences counted and injected"
else fail "bucket differences counted and injected (exit $rc)"; printf '%s\n' "$out" | grep -E "bucket|hax:" | head -n 5; fi
# --noise: the reference's own spread (3 ulps on 10% of the same gradient,
# other elements) widens the bound for that tensor to 4 x its count
cp "$ks" "$T/noise.safetensors"; perturb "$T/noise.safetensors" "$grad" 3 10 5
out=$("$CHECK" -q --precision bf16-pure --noise "$T/noise.safetensors" "$T/three.safetensors" 2>&1); rc=$?
if [ $rc -eq 0 ]; then ok "--noise widens the bound to the reference's own spread"
else fail "--noise widens the bound (exit $rc)"; printf '%s\n' "$out" | grep -E "FAIL|hax:" | head -n 5; fi
out=$("$CHECK" -q --precision bf16-pure --noise-factor 1 --noise "$T/noise.safetensors" "$T/three.safetensors" 2>&1); rc=$?
if [ $rc -eq 0 ]; then ok "--noise-factor 1: 68 beyond one ulp against the reference's 135 passes"
else fail "--noise-factor 1 (exit $rc)"; fi
# a reference whose paths differ in one element: the floors hold
cp "$T/three.safetensors" "$T/tight.safetensors"; perturb "$T/tight.safetensors" "$grad" 3 100000 11
out=$("$CHECK" -q --precision bf16-pure --noise "$T/tight.safetensors" "$T/three.safetensors" 2>&1); rc=$?
if [ $rc -ne 0 ] && printf '%s\n' "$out" | grep -q "$grad .*FAIL.*>1 ulp 68 (max 3) bound 14; reference paths: .* >1 ulp 1 (max 3)"; then
    ok "--noise: a spread past 4 x the reference's fails"
else fail "--noise: a spread past 4 x the reference's fails (exit $rc)"; fi
# several --noise files (the reference's other path, another device): the largest spread of any
# of them sets the bound, whichever comes first
out=$("$CHECK" -q --precision bf16-pure --noise "$T/tight.safetensors" --noise "$T/noise.safetensors" "$T/three.safetensors" 2>&1); rc=$?
if [ $rc -eq 0 ]; then ok "--noise twice: the wider spread of the two sets the bound"
else fail "--noise twice: the wider spread sets the bound (exit $rc)"; printf '%s\n' "$out" | grep -E "FAIL|hax:" | head -n 5; fi
out=$("$CHECK" -q --precision bf16-pure --noise "$T/noise.safetensors" --noise "$T/tight.safetensors" "$T/three.safetensors" 2>&1); rc=$?
if [ $rc -eq 0 ]; then ok "--noise twice, in the other order: the same"
else fail "--noise twice, other order (exit $rc)"; fi
out=$("$CHECK" -q --precision bf16-pure --noise "$T/tight.safetensors" --noise "$T/tight.safetensors" "$T/three.safetensors" 2>&1); rc=$?
if [ $rc -ne 0 ] && printf '%s\n' "$out" | grep -q "$grad .*FAIL.*bound 14; reference paths: .* >1 ulp 1 (max 3)"; then
    ok "--noise twice, both tight: still fails"
else fail "--noise twice, both tight: fails (exit $rc)"; fi
# a --noise file lacking the tensor beside one that has it: the one that has it sets the bound
cp "$T/noise.safetensors" "$T/noise_lacks2.safetensors"
perl -pi -e 's/"\Q'"$grad"'\E"/"'"${grad%?}"'X"/' "$T/noise_lacks2.safetensors"
out=$("$CHECK" -q --precision bf16-pure --noise "$T/noise_lacks2.safetensors" "$T/three.safetensors" 2>&1); rc=$?
if [ $rc -ne 0 ] && printf '%s\n' "$out" | grep -q "$grad .*FAIL.*the --noise file lacks it: floors only"; then ok "--noise: the renamed tensor is missing from that file"
else fail "--noise: the renamed tensor is missing from that file (exit $rc)"; printf '%s\n' "$out" | grep -E "FAIL|hax:" | head -n 5; fi
out=$("$CHECK" -q --precision bf16-pure --noise "$T/noise_lacks2.safetensors" --noise "$T/noise.safetensors" "$T/three.safetensors" 2>&1); rc=$?
if [ $rc -eq 0 ] && ! printf '%s\n' "$out" | grep -q "floors only"; then ok "--noise: a file lacking a tensor beside one holding it"
else fail "--noise: a file lacking a tensor beside one holding it (exit $rc)"; printf '%s\n' "$out" | grep -E "FAIL|floors|hax:" | head -n 5; fi

# refusals
check_fails "bf16-pure case refused in fp32" "precision bf16-pure: expected hax-check --precision bf16-pure" "$CHECK" "$ks"
check_fails "--noise needs bf16-pure" "--noise: expected --precision bf16-pure" "$CHECK" --noise "$ks" "$ks"
check_fails "at most 4 --noise files" "--noise: expected at most 4 files, found more" "$CHECK" --precision bf16-pure --noise "$ks" --noise "$ks" --noise "$ks" --noise "$ks" --noise "$ks" "$ks"
check_fails "--emit takes one case" "expected one CASE, found 2" "$CHECK" --emit "$T/x.safetensors" "$ks" "$ks"
check_fails "unknown precision refused" "--precision: expected fp32 or bf16-pure, found 'bf16'" "$CHECK" --precision bf16 "$ks"

# fp32 --emit: the engine's own float32 results (with both AdamW moments) pass as a float32 case
"$CHECK" -q --emit "$T/fp32.safetensors" "$G/mamba_key_selection.safetensors" > /dev/null 2>&1
out=$("$CHECK" -q --tol 1e-6 "$T/fp32.safetensors" 2>&1); rc=$?
if [ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q "0 past tolerance"; then ok "fp32 --emit case passes at 1e-6"
else fail "fp32 --emit case passes (exit $rc)"; printf '%s\n' "$out" | grep -E "FAIL|hax:" | head -n 5; fi
# float32: norm_f's input with one element doubled fails at the default 1e-5
cp "$T/fp32.safetensors" "$T/fp32hin.safetensors"; perturb "$T/fp32hin.safetensors" dbg.norm_f.hidden_in 128 1000000000 5
check_output_fails "fp32: one element of norm_f's input doubled fails" "dbg.norm_f.hidden_in .*FAIL" \
    "$CHECK" -q "$T/fp32hin.safetensors"
finish
