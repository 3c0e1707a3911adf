#!/usr/bin/env bash
# run.sh: runs every test program (build/tests/test_*) and every shell test
# (tests/test_*.sh), each under a time limit, and prints the total
# "N passed, N failed". Usage: tests/run.sh [NAME-FILTER]
set -u
cd "$(dirname "$0")/.."
filter=${1:-}
passed=0 failed=0 broken=()
shopt -s nullglob
for t in "${HAX_BUILD:-build}"/tests/test_* tests/test_*.sh; do
    [ -x "$t" ] || [ "${t%.sh}" != "$t" ] || continue
    case "$t" in *"$filter"*) ;; *) continue ;; esac
    echo "== $t"
    start=$(date +%s)
    if [ "${t%.sh}" != "$t" ]; then out=$(timeout 1500 bash "$t" 2>&1); rc=$?
    else out=$(timeout 900 "$t" 2>&1); rc=$?; fi
    printf '%s\n' "$out"
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    if [ -z "$line" ]; then
        failed=$((failed + 1)); broken+=("$t (exit $rc, no summary)")
    else
        p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
        passed=$((passed + p)); failed=$((failed + f))
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then failed=$((failed + 1)); broken+=("$t (exit $rc)"); fi
        [ "$f" -gt 0 ] && broken+=("$t ($f failed)")
    fi
    echo "   ($(( $(date +%s) - start )) s)"
done
for b in "${broken[@]+"${broken[@]}"}"; do echo "broken: $b"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
