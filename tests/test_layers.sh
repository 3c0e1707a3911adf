#!/usr/bin/env bash
# test_layers.sh: the code is in layers (docs/ARCHITECTURE.md); a folder may
# include only the folders listed for it below (root-relative includes,
# '#include "src/core/common.h"'), so no layer reaches one above it: src never
# includes cuda/, mpi reaches the device only through src/engine/engine.h.
# One ok/FAIL line per folder, then "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
declare -A allow=(
    [src/core]="src/core"
    [src/io]="src/core src/io"
    [src/model]="src/core src/model"
    [src/config]="src/core src/io src/model src/config"
    [src/ops]="src/core src/model src/ops"
    [src/sparse]="src/core src/io src/model src/ops src/sparse"
    [src/engine]="src/core src/io src/model src/ops src/sparse src/engine"
    [src/train]="src/core src/io src/model src/config src/ops src/engine src/train mpi"
    [src/prog]="src/core src/io src/model src/config src/ops src/sparse src/engine src/train src/prog mpi data-gen analysis"
    [mpi]="src/core mpi src/engine"
    [data-gen]="src/core src/io data-gen"
    [analysis]="src/core src/model analysis"
    [cuda/core]="src/core cuda/core"
    [cuda/ops]="src/core src/model src/ops cuda/core cuda/ops"
    [cuda/sparse]="src/core src/io src/model src/ops src/sparse cuda/core cuda/ops cuda/sparse"
    [cuda/engine]="src/core src/io src/model src/ops src/sparse src/engine src/train cuda/core cuda/ops cuda/sparse cuda/engine"
)
pass=0 fail=0
check() {  # $1 = folder; prints the offending includes
    local dir=$1 bad=""
    for f in "$dir"/*.c "$dir"/*.h "$dir"/*.cu "$dir"/*.cuh; do
        [ -f "$f" ] || continue
        while IFS= read -r inc; do
            local to=${inc%/*} ok=0
            case "$inc" in */*) ;; *) bad+=" $f:'$inc'(not root-relative)"; continue ;; esac
            for a in ${allow[$dir]}; do [ "$to" = "$a" ] && ok=1; done
            [ -f "$inc" ] || { bad+=" $f:'$inc'(no such file)"; continue; }
            [ $ok = 1 ] || bad+=" $f:'$inc'"
        done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
    done
    if [ -z "$bad" ]; then echo "ok   $dir includes only its own and lower layers"; pass=$((pass + 1))
    else echo "FAIL $dir:$bad"; fail=$((fail + 1)); fi
}
for d in $(printf "%s\n" "${!allow[@]}" | sort); do check "$d"; done
# every folder with code is in the table
for d in $(find src cuda mpi data-gen analysis -name '*.[ch]' -o -name '*.cu' -o -name '*.cuh' | xargs -n1 dirname | sort -u); do
    if [ -z "${allow[$d]+x}" ]; then echo "FAIL $d: not in the layer table of tests/test_layers.sh"; fail=$((fail + 1)); fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
