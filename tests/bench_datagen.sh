#!/usr/bin/env bash
# bench_datagen.sh: hax-datagen speed on the full default dataset (1.44M +
# 14.4K + 14.4K samples), printed, never asserted: the default generator on
# 1 and 2 ranks, each verified afterwards, and --compat reference (one core)
# to shards, then its text layout on its own (about 6.5 GB: skipped when the
# disk has less than 12 GB free, or with HAX_BENCH_TEXT=0).
# Usage: tests/bench_datagen.sh [OUT-FOLDER] (default: a temporary folder,
# removed at the end; about 0.8 GB per shard dataset).
source "$(dirname "$0")/lib.sh"
G=$BIN/hax-datagen
work=${1:-$(mktemp -d /tmp/hax_bench_datagen.XXXXXX)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
wall() { local t0 t1; t0=$(date +%s.%N); "$@"; local rc=$?; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "  wall %.2f s\n", b - a }'; return $rc; }
for np in 1 2; do
    echo "== default generator, $np rank(s): $MPIRUN -np $np $G --out DIR --force"
    wall $MPIRUN -np $np $G --out "$work/default" --force || { fail "generate ($np ranks)"; continue; }
    echo "== verify, $np rank(s)"
    wall $MPIRUN -np $np $G --verify "$work/default" && ok "default, $np rank(s), verified" || fail "verify ($np ranks)"
done
echo "== --compat reference (sequential) to shards: $G --out DIR --compat reference --force"
wall $G --out "$work/compat" --compat reference --force && \
    wall $G --verify "$work/compat" && ok "compat reference, verified" || fail "compat reference"
du -sh "$work/default" "$work/compat" 2>/dev/null
free_kb=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
if [ "${HAX_BENCH_TEXT:-1}" != 0 ] && [ "$free_kb" -gt 12000000 ]; then
    echo "== --compat reference, the reference's text layout only: $G --out DIR --compat reference --format text --force"
    wall $G --out "$work/text" --compat reference --format text --force && ok "compat reference, text layout" ||
        fail "compat reference, text layout"
    du -sh "$work/text"
    rm -rf "$work/text"
else
    echo "== text layout skipped (HAX_BENCH_TEXT=0 or less than 12 GB free)"
fi
finish
