#!/usr/bin/env bash
# test_datagen.sh: hax-datagen end to end on small parameters: byte-identical
# output for 1, 2 and 3 ranks, structure and counts of every cell (also by an
# independent Python reader of the format), the collision path, levels 1 and
# 3, the text layout, --compat reference against numpy, --verify catching a
# flipped byte, a truncated shard and (checksums resealed) a repeated sample,
# a wrong answer, a misplaced cell and swapped samples, progress on a
# terminal, every bad input (one line, exit status) and runs killed midway.
source "$(dirname "$0")/lib.sh"
G=$BIN/hax-datagen
work=$(mktemp -d /tmp/hax_test_datagen.XXXXXX)
trap 'rm -rf "$work"' EXIT
PY=$(command -v python3 || true)
NP=
for p in /usr/bin/python3 python3; do
    if "$p" -c 'import numpy' 2>/dev/null; then NP=$p; break; fi
done
q() { "$@" >/dev/null; }  # quiet: only the verdict lines
pycheck() { "$PY" "$ROOT/tests/datagen_shards.py" check "$1" >/dev/null; }
# refuses NAME STATUS PATTERN CMD...: CMD exits with STATUS, prints nothing on
# stdout and exactly one line on stderr, which matches PATTERN (grep -E).
refuses() {
    local name=$1 want=$2 pattern=$3; shift 3
    local out err rc
    out=$("$@" 2>"$work/stderr"); rc=$?; err=$(cat "$work/stderr")
    if [ $rc -eq "$want" ] && [ -z "$out" ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] &&
        printf '%s' "$err" | grep -Eq -- "$pattern"; then ok "$name"
    else fail "$name (exit $rc, expected $want; stdout: $(printf '%s' "$out" | head -c 200); stderr: $(printf '%s' "$err" | tail -n 3))"; fi
}
# damage DIR FILE KIND I [J]: changes stored samples and reseals every checksum.
damage() { "$PY" "$ROOT/tests/datagen_shards.py" damage "$@"; }
fingerprint() { (cd "$1" && find . -type f | sort | xargs md5sum); }

SMALL=(--max-n-context 7 --max-n-key 6 --n-train-per-cell 30 --n-test-per-cell 4 --shard-size 40 --seed 5)

# ---- determinism over rank counts
check "generate, 1 rank" q $G --out "$work/r1" "${SMALL[@]}"
check "generate, 2 ranks" q $MPIRUN -np 2 $G --out "$work/r2" "${SMALL[@]}"
check "generate, 3 ranks" q $MPIRUN -np 3 $G --out "$work/r3" "${SMALL[@]}"
check "1 and 2 ranks byte-identical" diff -r "$work/r1" "$work/r2"
check "1 and 3 ranks byte-identical" diff -r "$work/r1" "$work/r3"
ONE=(--max-n-context 5 --max-n-key 5 --n-train-per-cell 1 --n-test-per-cell 1)  # 3 shards of 1 sample
check "more ranks than shards: 4 ranks, 3 shards, byte-identical" bash -c \
    "$G --out '$work/one1' ${ONE[*]} >/dev/null && $MPIRUN -np 4 $G --out '$work/one4' ${ONE[*]} >/dev/null && diff -r '$work/one1' '$work/one4'"
check "no temporary folder left" test -z "$(ls -A "$work/r1" | grep tmp)"
n_shards=$(ls "$work/r1"/*.bin | wc -l)
check "shard count (3x2 cells: 180 train in 5 shards, 24 valid in 1, 24 test in 1)" test "$n_shards" -eq 7
check "--verify passes" q $G --verify "$work/r1"
check "--verify passes on 3 ranks" q $MPIRUN -np 3 $G --verify "$work/r1"
if [ -n "$PY" ]; then
    check "independent reader: structure, cells, counts, uniqueness" pycheck "$work/r1"
fi
out=$($G --out "$work/seed6" "${SMALL[@]}" --seed 6)
check "final line: samples, tokens, bytes, seconds, samples/s" \
    grep -Eq '^hax-datagen: 228 samples, [0-9]+ tokens, [0-9]+ bytes in [0-9.]+ s \([0-9]+ samples/s' <<<"$out"
check "no progress when stderr is not a terminal" test -z "$($G --out "$work/quiet" "${SMALL[@]}" 2>&1 >/dev/null)"
if command -v script >/dev/null; then
    # script(1) gives the program a terminal; progress is drawn on it.
    tty_out=$(script -qec "$G --out '$work/tty' ${SMALL[*]}" /dev/null | tr '\r' '\n')
    check "progress on a terminal" grep -Eq '^generating: 100.0% \(228 / 228 samples' <<<"$tty_out"
    check "progress on a terminal, then the final line" grep -q '^hax-datagen: 228 samples' <<<"$tty_out"
fi
check "another seed gives other samples" bash -c "! cmp -s '$work/r1/train-00000.bin' '$work/seed6/train-00000.bin'"
# Default sizes: the reference's token layout (contexts at 42, keys at 26).
check "default token layout in the manifest" grep -q 'level_bases: \[42, 26\]' \
    <($G --out "$work/layout" --n-train-per-cell 1 --n-test-per-cell 1 >/dev/null && cat "$work/layout/manifest.yaml")
check "default pad_len 1058" grep -q '^pad_len: 1058$' "$work/layout/manifest.yaml"
# The default counts of validation and test: 100 per cell of the 12 x 12 cells.
q $G --out "$work/defcounts" --n-train-per-cell 1
check "default valid/test counts: 100 per cell, 144 cells" bash -c "grep -q '^n_valid_per_cell: 100$' '$work/defcounts/manifest.yaml' &&
    grep -q '^n_test_per_cell: 100$' '$work/defcounts/manifest.yaml' &&
    test \"\$(grep -c '^    n_samples: 14400$' '$work/defcounts/manifest.yaml')\" -eq 2 &&
    grep -q '^    n_samples: 144$' '$work/defcounts/manifest.yaml'"
rm -rf "$work/defcounts"

check "the reference's option spellings (--data_dir, --max_n_context, ...)" bash -c \
    "$G --data_dir '$work/us' --max_n_context 7 --max_n_key 6 --n_train_per_context_key 30 --n_test_per_context_key 4 --shard-size 40 --seed 5 >/dev/null && diff -r '$work/r1' '$work/us'"

# ---- collisions: cells of 1 context x 2..3 keys with 2 values have 16 and
# 288 distinct samples; 12 per cell must be unique, so redraws are certain.
COLL=(--min-n-context 1 --max-n-context 1 --min-n-key 2 --max-n-key 3 --n-value 2 --n-train-per-cell 8 --n-test-per-cell 2 --shard-size 3)
out1=$($G --out "$work/c1" "${COLL[@]}")
check "collisions are redrawn" grep -q 'redraws for uniqueness' <<<"$out1"
check "collisions: 3 ranks byte-identical" bash -c "$MPIRUN -np 3 $G --out '$work/c3' ${COLL[*]} >/dev/null && diff -r '$work/c1' '$work/c3'"
check "collisions: --verify passes (unique)" q $G --verify "$work/c1"
[ -n "$PY" ] && check "collisions: independent uniqueness check" pycheck "$work/c1"

# ---- levels
check "levels 1 (associative recall)" q $G --out "$work/w1" --levels 1 --max-n-key 9 --n-train-per-cell 10 --n-test-per-cell 2
check "levels 1 verify" q $G --verify "$work/w1"
check "levels 3 (nested contexts)" q $MPIRUN -np 2 $G --out "$work/w3" --levels 3 --level-sizes 2:3,1:3,2:4 --n-train-per-cell 4 --n-test-per-cell 2 --shard-size 50
check "levels 3 verify" q $G --verify "$work/w3"
check "levels 2 via --level-sizes equals the default options" bash -c \
    "$G --out '$work/w2' --levels 2 --level-sizes 5:7,5:6 ${SMALL[*]:4} --n-train-per-cell 30 --n-test-per-cell 4 >/dev/null && diff -r '$work/r1' '$work/w2'"
if [ -n "$PY" ]; then
    check "levels 1: independent reader" pycheck "$work/w1"
    check "levels 3: independent reader" pycheck "$work/w3"
fi

# ---- --id-layout: ids laid out for larger tables than the samples hold
LAY=(--min-n-context 2 --max-n-context 4 --min-n-key 2 --max-n-key 4 --n-train-per-cell 5 --n-test-per-cell 3)
q $G --out "$work/lay0" "${LAY[@]}"
check "--id-layout equal to the max sizes: byte-identical to no option" bash -c \
    "$G --out '$work/lay4' ${LAY[*]} --id-layout 4:4 >/dev/null && diff -r '$work/lay0' '$work/lay4'"
check "--id-layout 32:32: generate, 2 ranks" q $MPIRUN -np 2 $G --out "$work/lay32" "${LAY[@]}" --id-layout 32:32
check "--id-layout 32:32: id_layout and level_bases in the manifest" bash -c \
    "grep -q '^id_layout: \[32, 32\]$' '$work/lay32/manifest.yaml' && grep -q '^level_bases: \[58, 26\]$' '$work/lay32/manifest.yaml'"
check "--id-layout 32:32: --verify passes" q $G --verify "$work/lay32"
if [ -n "$PY" ]; then
    check "--id-layout 32:32: keys at 26..29, contexts at 58..61 (independent reader)" test \
        "$("$PY" "$ROOT/tests/datagen_shards.py" ids "$work/lay32" | tr '\n' ' ')" = \
        "ok: 99 samples, 2 levels level 0: ids 58..61 level 1: ids 26..29 values: 10..25 "
    check "--id-layout 64 with --levels 1: keys at 26..33" bash -c "$G --out '$work/lay1' --levels 1 --min-n-key 2 \
        --max-n-key 8 --n-train-per-cell 3 --n-test-per-cell 2 --id-layout 64 >/dev/null &&
        grep -q '^id_layout: \[64\]$' '$work/lay1/manifest.yaml' &&
        '$PY' '$ROOT/tests/datagen_shards.py' ids '$work/lay1' | grep -qx 'level 0: ids 26..33'"
fi
refuses "--id-layout below the max sizes" 2 "id_layout\[0\]: expected 16\.\.65535 \(at least the level's maximum size\), found 8" \
    $G --out "$work/x" --id-layout 8:8
refuses "--id-layout count" 2 "--id-layout: expected 2 maxima \(--levels\), found 1" $G --out "$work/x" --id-layout 32
refuses "--id-layout malformed" 2 "--id-layout: expected MAX:MAX" $G --out "$work/x" --id-layout 32,32
refuses "--id-layout with --compat reference" 2 "--id-layout: expected no --compat reference" \
    $G --out "$work/x" --id-layout 32:32 --compat reference
cp -r "$work/lay32" "$work/laybad"
sed -i 's/^id_layout: \[32, 32\]$/id_layout: [3, 32]/' "$work/laybad/manifest.yaml"
check_fails "--verify: an id_layout below the max sizes" "manifest.yaml: id_layout\[0\]: expected 4\.\.65535" $G --verify "$work/laybad"

# ---- text layout
check "--format both" q $G --out "$work/both" "${SMALL[@]}" --format both
txt="$work/both/max_n_context_7_max_n_key_6_seed_5_train_inputs.txt"
check "text: one line per sample" test "$(wc -l < "$txt")" -eq 180
check "text: every line padded to 184 ids" test "$(awk '{print NF}' "$txt" | sort -u)" = 184
check "text: shards identical to --format shards" bash -c "for f in '$work/r1'/*; do cmp -s \"\$f\" '$work/both'/\$(basename \"\$f\") || exit 1; done"
if [ -n "$PY" ]; then
    mkdir -p "$work/pytext"
    "$PY" "$ROOT/tests/datagen_shards.py" text "$work/r1" "$work/pytext"
    check "text: equals the shards read independently" bash -c \
        "for f in '$work/pytext'/*; do cmp -s \"\$f\" '$work/both'/\$(basename \"\$f\") || exit 1; done"
fi
check "--format text alone: text files, no manifest" bash -c \
    "$G --out '$work/textonly' ${SMALL[*]} --format text >/dev/null && test -f '$work/textonly/max_n_context_7_max_n_key_6_seed_5_valid_mask.txt' && ! test -e '$work/textonly/manifest.yaml' && test -z \"\$(ls -A '$work/textonly' | grep -v '\.txt$')\""
check_fails "--format text refuses existing text files" "already holds a text dataset" $G --out "$work/textonly" "${SMALL[@]}" --format text

# ---- --compat reference
CP=(--max-n-context 6 --max-n-key 7 --n-value 16 --n-train-per-cell 6 --n-test-per-cell 2 --seed 3)
check "--compat reference, 2 ranks (rank 0 works)" q $MPIRUN -np 2 $G --out "$work/cp" --compat reference --format both "${CP[@]}" --shard-size 50
check "--compat reference verify" q $G --verify "$work/cp"
check "--compat manifest says so" grep -q '^generator: compat-reference$' "$work/cp/manifest.yaml"
if [ -n "$NP" ]; then
    compat_vs_numpy() {  # NAME, then the shared parameters as create_dataset.py spells them
        local name=$1; shift
        rm -rf "$work/np" "$work/npt" "$work/cpx"; mkdir -p "$work/np" "$work/npt"
        "$NP" "$ROOT/tests/compat_numpy.py" --out "$work/np" "$@" >/dev/null || { fail "$name: numpy script"; return; }
        local a=("$@"); a=("${a[@]//--max_n_context/--max-n-context}"); a=("${a[@]//--max_n_key/--max-n-key}")
        a=("${a[@]//--min_n_context/--min-n-context}"); a=("${a[@]//--min_n_key/--min-n-key}")
        a=("${a[@]//--n_value/--n-value}"); a=("${a[@]//--n_train/--n-train-per-cell}"); a=("${a[@]//--n_test/--n-test-per-cell}")
        $G --out "$work/cpx" --compat reference --shard-size 7 "${a[@]}" >/dev/null || { fail "$name: hax-datagen"; return; }
        "$PY" "$ROOT/tests/datagen_shards.py" text "$work/cpx" "$work/npt"
        local bad=0
        for f in "$work/np"/*.txt; do cmp -s "$f" "$work/npt/$(basename "$f")" || bad=1; done
        [ "$(ls "$work/np"/*.txt | wc -l)" -eq 6 ] || bad=1
        [ $bad -eq 0 ] && ok "$name" || fail "$name"
    }
    compat_vs_numpy "--compat shards equal numpy's samples" --max_n_context 6 --max_n_key 7 --n_value 16 --n_train 6 --n_test 2 --seed 3
    compat_vs_numpy "--compat shards equal numpy's samples (redraws)" --max_n_context 2 --max_n_key 3 --min_n_context 1 --min_n_key 2 --n_value 2 --n_train 5 --n_test 1 --seed 7
else
    fail "numpy not found (install python3-numpy): --compat not compared with numpy"
fi

# ---- --verify catches damage
cp -r "$work/r1" "$work/flip"
printf '\x07' | dd of="$work/flip/train-00003.bin" bs=1 seek=2000 conv=notrunc status=none
check_fails "--verify: flipped byte" "train-00003.bin.*(checksum|corrupted)" $G --verify "$work/flip"
cp -r "$work/r1" "$work/trunc"
truncate -s -100 "$work/trunc/valid-00000.bin"
check_fails "--verify: truncated shard" "valid-00000.bin: expected [0-9]+ bytes \(manifest\), found [0-9]+: truncated" $G --verify "$work/trunc"
cp -r "$work/r1" "$work/hdr"
printf 'X' | dd of="$work/hdr/test-00000.bin" bs=1 seek=30 conv=notrunc status=none
check_fails "--verify: corrupted header" "test-00000.bin: header checksum" $G --verify "$work/hdr"
cp -r "$work/r1" "$work/man"
sed -i 's/^n_value: 16$/n_value: abc/' "$work/man/manifest.yaml"
check_fails "--verify: malformed manifest" "manifest.yaml:[0-9]+: field n_value: expected an integer" $G --verify "$work/man"
cp -r "$work/r1" "$work/swap"
cp "$work/seed6/train-00000.bin" "$work/swap/train-00000.bin"
check_fails "--verify: a shard of another dataset" "train-00000.bin" $G --verify "$work/swap"
check_fails "--verify: not a dataset" "manifest.yaml: cannot read" $G --verify "$work/nothing"
# Damage behind intact checksums (the checksums resealed): only the deeper checks see it.
# train-00001.bin holds samples 40..79; samples 40 and 46 share the cell 5x5.
if [ -n "$PY" ]; then
    deep() {  # NAME DATASET PATTERN KIND I [J]
        local name=$1 src=$2 pattern=$3; shift 3
        rm -rf "$work/deep"; cp -r "$src" "$work/deep"
        damage "$work/deep" train-00001.bin "$@" || { fail "$name: damage tool"; return; }
        check_fails "$name" "$pattern" $G --verify "$work/deep"
    }
    q $G --out "$work/cpsmall" --compat reference "${SMALL[@]}"
    deep "--verify: a repeated sample (uniqueness)" "$work/cpsmall" "train sample 46 equals train sample 40 \(samples must be unique\)" copy 0 6
    check_fails "--verify: a repeated sample, 3 ranks" "train sample 46 equals train sample 40" $MPIRUN -np 3 $G --verify "$work/deep"
    deep "--verify: a wrong inquiry answer (structure)" "$work/r1" "train sample 43: position [0-9]+: inquiry answer [0-9]+ differs from the information table" answer 3
    deep "--verify: a sample out of the reference's order (cell)" "$work/r1" "train sample 42: cell 6x5, expected 5x5" cell 2
    deep "--verify: two samples swapped (generator stream)" "$work/r1" "train sample 40: differs from the generator's sample" swap 0 6
fi

# ---- bad input: one line on stderr, status 2 for the command line, 1 for files
refuses "unknown option" 2 "unknown option '--bogus'" $G --out "$work/x" --bogus 1
refuses "malformed integer" 2 "--seed: expected an integer in 0\.\.[0-9]+, found '12abc'" $G --out "$work/x" --seed 12abc
refuses "negative integer" 2 "--n-value: expected an integer in 1\.\.65535, found '-3'" $G --out "$work/x" --n-value -3
refuses "missing value" 2 "--seed: expected a value" $G --out "$work/x" --seed
refuses "a value given to --force" 2 "--force: expected no value, found 'yes'" $G --out "$work/x" --force=yes
refuses "unexpected argument" 2 "unexpected argument 'extra'" $G --out "$work/x" extra
refuses "max below min" 2 "maximum: expected >= its minimum 5, found 4" $G --out "$work/x" --max-n-key 4
refuses "ids beyond the 16-bit token type" 2 "does not fit the 16-bit token type" $G --out "$work/x" --n-value 65530
refuses "more samples than a cell holds" 2 "distinct samples" $G --out "$work/x" --min-n-context 1 --max-n-context 1 --min-n-key 1 --max-n-key 1 --n-value 2 --n-train-per-cell 3
refuses "a shard too large for memory" 2 "--shard-size: .* exceed 2 GiB per shard; expected at most [0-9]+" $G --out "$work/x" --max-n-context 200 --max-n-key 200
refuses "more samples than one gather can count" 2 "samples: expected at most 2147483647 in the three splits together, found 2880288000" $G --out "$work/x" --n-train-per-cell 20000000 --n-test-per-cell 1000
refuses "bad --format" 2 "--format: expected shards, text or both, found 'csv'" $G --out "$work/x" --format csv
refuses "bad --compat" 2 "--compat: expected 'reference', found 'numpy'" $G --out "$work/x" --compat numpy
refuses "--compat needs 2 levels" 2 "expected --levels 2" $G --out "$work/x" --compat reference --levels 3
refuses "--compat: a seed numpy cannot take" 2 "--seed: expected 0\.\.4294967295 \(numpy\), found 4294967296" $G --out "$work/x" --compat reference --seed 4294967296
refuses "--level-sizes count" 2 "expected 2 levels" $G --out "$work/x" --level-sizes 5:6
refuses "--level-sizes malformed" 2 "--level-sizes: expected MIN:MAX" $G --out "$work/x" --level-sizes 5-6,5:6
refuses "--level-sizes trailing comma" 2 "--level-sizes: expected MIN:MAX after the last ','" $G --out "$work/x" --levels 1 --level-sizes 5:6,
refuses "no --out" 2 "--out: expected an output folder, found none" $G --seed 1
refuses "--out and --verify together" 2 "--verify and --out: expected one of them, found both" $G --out "$work/x" --verify "$work/r1"
check "refused runs created nothing" test ! -e "$work/x"
before=$(fingerprint "$work/r1")
refuses "existing dataset without --force" 1 "--out $work/r1: already holds a dataset \(manifest.yaml\); use --force to replace it" $G --out "$work/r1" "${SMALL[@]}" --seed 6
refuses "existing dataset, 2 ranks: one line (mpirun -q hides its own banner)" 1 "already holds a dataset" $MPIRUN -q -np 2 $G --out "$work/r1" "${SMALL[@]}" --seed 6
check "a refused run leaves the existing dataset as it was" test "$before" = "$(fingerprint "$work/r1")"
check "existing dataset with --force" q $G --out "$work/r1" "${SMALL[@]}" --seed 6 --force
check "--force replaced it" bash -c "diff -r '$work/r1' '$work/seed6' && $G --verify '$work/r1' >/dev/null"
touch "$work/afile"
refuses "unwritable folder" 1 "--out $work/afile/sub: cannot create the folder: Not a directory" $G --out "$work/afile/sub" "${SMALL[@]}"
refuses "output is a file" 1 "--out $work/afile: expected a folder, found a file" $G --out "$work/afile" "${SMALL[@]}"
check "a failed run leaves no dataset behind" bash -c "! test -e '$work/afile/sub' && test -f '$work/afile' && ! test -s '$work/afile'"

# ---- a run killed at any moment never leaves a folder that looks complete:
# either no manifest.yaml (not a dataset) or a dataset that verifies.
KILL=(--max-n-context 12 --max-n-key 12 --n-train-per-cell 1500 --n-test-per-cell 10 --shard-size 2000)
# With --force over an existing dataset the old one stays until the new one
# is complete (its manifest goes first in the swap).
for delay in 0.05 0.2 0.5 force0.1 force0.4; do
    rm -rf "$work/killed"
    force=()
    if [ "${delay#force}" != "$delay" ]; then
        delay=${delay#force}; force=(--force)
        q $G --out "$work/killed" "${SMALL[@]}"
    fi
    $G --out "$work/killed" "${KILL[@]}" "${force[@]}" >/dev/null 2>&1 &
    pid=$!
    sleep $delay
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    if [ -e "$work/killed/manifest.yaml" ]; then
        check "killed after ${delay} s ${force[*]}: complete and verified" q $G --verify "$work/killed"
    else
        check "killed after ${delay} s ${force[*]}: no manifest, so not a dataset" bash -c "! $G --verify '$work/killed' 2>/dev/null"
    fi
done
check "a killed run's leftovers do not block the next run" q $G --out "$work/killed" "${SMALL[@]}" --force
check "... which verifies" q $G --verify "$work/killed"
finish
