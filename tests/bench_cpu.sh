#!/usr/bin/env bash
# bench_cpu.sh: forward+backward tokens/s of the CPU engine (see tests/bench_cpu.c).
# Usage: tests/bench_cpu.sh [seconds per config]   (make bench-cpu)
set -eu
cd "$(dirname "$0")/.."
make --no-print-directory build/tests/bench_cpu >/dev/null
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores"
exec build/tests/bench_cpu "${1:-3}"
