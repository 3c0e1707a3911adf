#!/usr/bin/env bash
# run_gpu.sh: runs every GPU test program (build/gpu/gpu_*, built by make from
# tests/gpu_*.c where nvcc is found) and prints the total "N passed, N failed".
# Without a CUDA device (or without a CUDA build) it prints
# "SKIP: no CUDA device" and exits 0. Then tests/gpu_multi.sh (several GPUs
# through NCCL; it prints "SKIP: fewer than 2 GPUs" with one), its counts
# added. Usage: tests/run_gpu.sh [--quick] (--quick: no paper-size timings;
# gpu_multi.sh: the equality checks only).
set -u
cd "$(dirname "$0")/.."
shopt -s nullglob
progs=(build/gpu/gpu_*)
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "SKIP: no CUDA device"
    exit 0
fi
if [ ${#progs[@]} -eq 0 ]; then
    echo "run_gpu.sh: no GPU test programs in build/gpu (was make run where nvcc is found?)" >&2
    exit 1
fi
passed=0 failed=0
# counted SKIP_LINE CMD...: runs CMD, prints its output and adds its "N passed,
# N failed" to the totals (nothing where it printed SKIP_LINE; a failure where it
# printed no summary or exited non-zero with none failed)
counted() {
    local skip=$1 out rc line p f
    shift
    echo "== $*"
    out=$("$@" 2>&1); rc=$?
    printf '%s\n' "$out"
    if printf '%s\n' "$out" | grep -q "^$skip"; then return; fi
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    if [ -z "$line" ]; then failed=$((failed + 1)); echo "broken: $1 (exit $rc, no summary)"; return; fi
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then failed=$((failed + 1)); echo "broken: $1 (exit $rc)"; fi
}
for t in "${progs[@]}"; do
    [ -x "$t" ] || continue
    counted 'SKIP: no CUDA device' "$t" "$@"
done
counted 'SKIP: fewer than 2 GPUs' tests/gpu_multi.sh "$@"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
