# lib.sh: the shell side of the test harness. Source it, call ok/fail (or
# check CMD...), and end with `finish`, which prints "N passed, N failed".
HAX_TEST_PASSED=0
HAX_TEST_FAILED=0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${HAX_BIN:-$ROOT/bin}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
MPIRUN="mpirun --oversubscribe --allow-run-as-root --bind-to none"
ok() { HAX_TEST_PASSED=$((HAX_TEST_PASSED + 1)); echo "ok   $*"; }
fail() { HAX_TEST_FAILED=$((HAX_TEST_FAILED + 1)); echo "FAIL $*"; }
# check NAME CMD...: passes when CMD exits 0.
check() { local name=$1; shift; if "$@"; then ok "$name"; else fail "$name"; fi; }
# check_fails NAME PATTERN CMD...: passes when CMD exits non-zero and its
# stderr (one line) matches PATTERN (grep -E).
check_fails() {
    local name=$1 pattern=$2; shift 2
    local err rc
    err=$("$@" 2>&1 >/dev/null); rc=$?
    if [ $rc -ne 0 ] && printf '%s' "$err" | grep -Eq -- "$pattern"; then ok "$name"
    else fail "$name (exit $rc, stderr: $(printf '%s' "$err" | tail -n 3))"; fi
}
# check_refused NAME PATTERN CMD...: check_fails, and stderr is exactly one line
# (runs CMD twice: two checks).
check_refused() {
    local name=$1 pattern=$2; shift 2
    check_fails "$name" "$pattern" "$@"
    local lines
    lines=$("$@" 2>&1 >/dev/null | wc -l)
    check "$name: one line on stderr ($lines)" test "$lines" -eq 1
}
# check_output_fails NAME PATTERN CMD...: passes when CMD exits non-zero and
# its output (stdout and stderr together) has a line matching PATTERN (grep).
check_output_fails() {
    local name=$1 pattern=$2; shift 2
    local out rc
    out=$("$@" 2>&1); rc=$?
    if [ $rc -ne 0 ] && printf '%s\n' "$out" | grep -q -- "$pattern"; then ok "$name"
    else fail "$name (exit $rc)"; fi
}
# ---- hax-train run folders (test_train.sh, gpu_multi.sh)
FILES=$ROOT/${HAX_BUILD:-build}/tests/test_train_files
# result.json without the lines that differ between equal runs (timing, ranks,
# the results root inside the stored config)
stable() { grep -Ev '"(wall_time|tokens_per_s|ranks|git_revision|output|heartbeat)"' "$1"; }
# json_num DIR KEY: a top-level number of DIR/result.json
json_num() { sed -n "s/^  \"$2\": \([0-9.e+-]*\),*\$/\1/p" "$1/result.json"; }
# near A B [TOL]: |A-B| <= TOL * max(|B|, 1e-3), TOL 1e-5 by default
near() { awk -v a="$1" -v b="$2" -v t="${3:-1e-5}" 'BEGIN { d = a - b; if (d < 0) d = -d; m = b < 0 ? -b : b;
    if (m < 1e-3) m = 1e-3; exit !(a != "" && b != "" && d <= t * m) }'; }
# same_run NAME DIR_A DIR_B: every tensor and record bit for bit
same_run() {
    local a=$2 b=$3
    check "$1: checkpoint bit for bit" "$FILES" cmp "$a/checkpoint.safetensors" "$b/checkpoint.safetensors" 0
    check "$1: best.safetensors bit for bit" "$FILES" cmp "$a/best.safetensors" "$b/best.safetensors" 0
    check "$1: metrics.csv equal" cmp -s "$a/metrics.csv" "$b/metrics.csv"
    check "$1: result.json equal apart from timing" diff <(stable "$a/result.json") <(stable "$b/result.json")
}
finish() { echo "$HAX_TEST_PASSED passed, $HAX_TEST_FAILED failed"; [ $HAX_TEST_FAILED -eq 0 ]; }
