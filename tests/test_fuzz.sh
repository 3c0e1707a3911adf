#!/usr/bin/env bash
# test_fuzz.sh: a short seeded fuzz run (tests/fuzz.sh, 12 inputs per reader,
# a new seed each day so CI covers more ground over time; the seed is printed)
# on the normal build, every reader. make fuzz runs longer.
source "$(dirname "$0")/lib.sh"
seed=${FUZZ_SEED:-$(date +%Y%m%d)}
TARGETS="config override safetensors resume manifest shard result"
out=$(HAX_BIN=$BIN "$ROOT/tests/fuzz.sh" 12 "$seed" "$TARGETS" 2>&1); rc=$?
printf '%s\n' "$out"
check "fuzz seed $seed: no crash, hang or modified file" test $rc -eq 0
finish
