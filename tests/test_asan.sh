#!/usr/bin/env bash
# test_asan.sh: a short run under AddressSanitizer and UBSan: builds
# build-asan/ (make asan, CPU only), then runs the hostile inputs of
# test_hardening.sh, two golden cases and a short fuzz run against those
# binaries. A sanitizer report fails the run. make test-asan runs the whole
# CPU suite so.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
if ! make --no-print-directory asan >/tmp/hax_asan_build.$$ 2>&1; then
    fail "make asan: $(tail -n 3 /tmp/hax_asan_build.$$)"; rm -f /tmp/hax_asan_build.$$; finish; exit 1
fi
rm -f /tmp/hax_asan_build.$$
ok "make asan"
A=$ROOT/build-asan/bin
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for g in mamba_sign_bin_lsh__key_selection mamba2_base; do
    out=$("$A/hax-check" -q "tests/golden/$g.safetensors" 2>&1); rc=$?
    if [ $rc -eq 0 ] && ! grep -Eq 'Sanitizer|runtime error:' <<<"$out"; then ok "asan: hax-check $g"
    else fail "asan: hax-check $g (exit $rc: $(grep -m2 -E 'ERROR|runtime error' <<<"$out"))"; fi
done
# NaN weights through the Mamba scan (its exp_poly builds the exponent with a
# shift): wrong numbers, a failed check, but no undefined behaviour
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
python3 - tests/golden/mamba_base.safetensors "$T/nan.safetensors" <<'PY'
import json, struct, sys
d = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", d[:8])[0]
t = json.loads(d[8:8 + n])["layers.0.mixer.A_log"]
o = 8 + n + t["data_offsets"][0]
d[o:o + 8] = struct.pack("<2f", float("nan"), float("inf"))
open(sys.argv[2], "wb").write(d)
PY
out=$("$A/hax-check" -q "$T/nan.safetensors" 2>&1)
check "ubsan: NaN and Inf weights through the scan: no runtime error" test "$(grep -c 'runtime error' <<<"$out")" -eq 0
# make OPT=-O1 builds (gcc's -Wformat-truncation sees more at -O1), CPU only
if make --no-print-directory -j"$(nproc)" OPT=-O1 BUILD=build-o1 BINDIR=build-o1/bin NVCC= all >"$T/o1.log" 2>&1; then ok "make OPT=-O1 builds"
else fail "make OPT=-O1 builds: $(grep -m2 'error' "$T/o1.log")"; fi
out=$(HAX_BIN=$A bash tests/test_hardening.sh 2>&1); rc=$?
if [ $rc -eq 0 ] && ! grep -Eq 'Sanitizer|runtime error:' <<<"$out"; then ok "asan: test_hardening.sh ($(tail -n 1 <<<"$out"))"
else fail "asan: test_hardening.sh (exit $rc: $(grep -E 'FAIL|ERROR|runtime error' <<<"$out" | head -n 3))"; fi
seed=${FUZZ_SEED:-$(date +%Y%m%d)}
TARGETS="config override safetensors resume manifest shard result"
out=$(HAX_BIN=$A tests/fuzz.sh 4 "$seed" "$TARGETS" 2>&1); rc=$?
printf '%s\n' "$out" | tail -n 1
check "asan: fuzz seed $seed, 4 inputs per reader: no crash, hang or modified file" test $rc -eq 0
finish
