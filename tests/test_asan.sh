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
out=$(HAX_BIN=$A bash tests/test_hardening.sh 2>&1); rc=$?
if [ $rc -eq 0 ] && ! grep -Eq 'Sanitizer|runtime error:' <<<"$out"; then ok "asan: test_hardening.sh ($(tail -n 1 <<<"$out"))"
else fail "asan: test_hardening.sh (exit $rc: $(grep -E 'FAIL|ERROR|runtime error' <<<"$out" | head -n 3))"; fi
seed=${FUZZ_SEED:-$(date +%Y%m%d)}
TARGETS="config override safetensors resume manifest shard result"
out=$(HAX_BIN=$A tests/fuzz.sh 4 "$seed" "$TARGETS" 2>&1); rc=$?
printf '%s\n' "$out" | tail -n 1
check "asan: fuzz seed $seed, 4 inputs per reader: no crash, hang or modified file" test $rc -eq 0
finish
