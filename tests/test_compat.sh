#!/usr/bin/env bash
# test_compat.sh: `--compat reference` against numpy itself. For several
# parameter sets, tests/compat_numpy.py draws the reference's samples with
# numpy's legacy RandomState and writes its six text files; the C generator
# (build/tests/test_compat --dump) writes them through the text writer; the
# files must be byte-identical (cmp), and so must the redraw counts.
source "$(dirname "$0")/lib.sh"
T=$ROOT/${HAX_BUILD:-build}/tests/test_compat
work=$(mktemp -d /tmp/hax_test_compat_sh.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Debian's python3-numpy lives under /usr/bin/python3; a pyenv python3 may lack it.
PY=
for p in ${HAX_PYTHON:-} /usr/bin/python3 python3; do
    if "$p" -c 'import numpy' 2>/dev/null; then PY=$p; break; fi
done

# case NAME C K V NTRAIN NTEST SEED [MINC MINK]
case_() {
    local name=$1; shift
    local c=$1 k=$2 seed=$6
    rm -rf "$work/np" "$work/c"; mkdir -p "$work/np" "$work/c"
    local a=(--out "$work/np" --max_n_context "$1" --max_n_key "$2" --n_value "$3" --n_train "$4" --n_test "$5" --seed "$6")
    [ $# -ge 8 ] && a+=(--min_n_context "$7" --min_n_key "$8")
    local np_out c_out
    if ! np_out=$("$PY" "$ROOT/tests/compat_numpy.py" "${a[@]}" 2>&1); then fail "$name: numpy script: $np_out"; return; fi
    if ! c_out=$("$T" --dump "$work/c" "$@" 2>&1); then fail "$name: C dump: $c_out"; return; fi
    local bad=0 n=0
    for split in train valid test; do
        for kind in inputs mask; do
            f=max_n_context_${c}_max_n_key_${k}_seed_${seed}_${split}_${kind}.txt
            n=$((n + 1))
            if [ ! -f "$work/np/$f" ] || ! cmp -s "$work/np/$f" "$work/c/$f"; then
                bad=1; echo "  $name: $f differs: $(cmp "$work/np/$f" "$work/c/$f" 2>&1 | head -n 1)"
            fi
        done
    done
    local r_np r_c
    r_np=$(printf '%s\n' "$np_out" | grep '^redraws'); r_c=$(printf '%s\n' "$c_out" | grep '^redraws')
    [ "$r_np" = "$r_c" ] || { bad=1; echo "  $name: numpy '$r_np', C '$r_c'"; }
    if [ -n "${want_redraws:-}" ] && [ "${r_c#redraws }" -eq 0 ]; then bad=1; echo "  $name: no redraws"; fi
    local lines; lines=$(wc -l < "$work/c/max_n_context_${c}_max_n_key_${k}_seed_${seed}_train_inputs.txt")
    [ "$lines" -gt 0 ] || { bad=1; echo "  $name: empty train file"; }
    [ $bad -eq 0 ] && ok "$name ($n files, $lines train lines, $r_c)" || fail "$name"
}

if [ -z "$PY" ]; then
    fail "numpy not found (install python3-numpy): cannot compare with numpy"
    finish; exit
fi
if [ ! -x "$T" ]; then fail "$T not built"; finish; exit; fi

case_ "seed 1, 5x5, 16 values"               5 5 16 4 2 1
case_ "seed 3, 6x7, 10 values (rejection)"   6 7 10 3 2 3
case_ "seed 0, 7x5, 2 values"                7 5 2 2 1 0
case_ "seed 2^32-1, 5x6, 16 values"          5 6 16 2 1 4294967295
case_ "seed 12345, 6x6, 3 values"            6 6 3 2 1 12345
case_ "seed 1, reference maxima 16x16"       16 16 16 1 1 1
want_redraws=1
case_ "redraw path: 1..2 x 2..3, 2 values"   2 3 2 8 2 7 1 2
case_ "redraw path: all 16 samples of a 1x2 cell" 2 3 2 10 3 8 1 2
case_ "redraw path: 1x2, 1 value (no randint draws)" 1 2 1 2 1 6 1 2
case_ "redraw path: 1..3 x 1..2, 5 values"   3 2 5 1 1 42 1 1
unset want_redraws

# Errors: one line naming the file or the field; nothing left under final names.
check_fails "unwritable folder is refused" "nonexistent/hax/max_n_context_5.*cannot create" "$T" --dump /nonexistent/hax 5 5 16 1 1 1
mkdir -p "$work/full"
check_fails "a cell that cannot hold its samples is refused" "cell 1x1.*never finish" "$T" --dump "$work/full" 1 1 3 2 1 1 1 1
check "nothing written by a refused run" test -z "$(ls -A "$work/full")"

# A file whose bytes differ must be caught by the comparison itself.
mkdir -p "$work/x"; printf '1 2 3\n' > "$work/x/a"; printf '1 2 4\n' > "$work/x/b"
check "cmp catches a changed id" bash -c "! cmp -s '$work/x/a' '$work/x/b'"
finish
