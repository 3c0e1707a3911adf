#!/usr/bin/env bash
# test_fuzz.sh: a short seeded fuzz run (tests/fuzz.sh, 12 inputs per reader,
# a new seed each day so CI covers more ground over time; the seed is printed)
# on the normal build. make fuzz runs longer.
# The config and override targets are left out here until src/config reads
# through hax_read_file_max and hax_yaml_load: libyaml's own loader takes
# about 50 s on a 400 KB config nested 100,000 deep (make fuzz counts those
# as hangs).
source "$(dirname "$0")/lib.sh"
seed=${FUZZ_SEED:-$(date +%Y%m%d)}
TARGETS="safetensors resume manifest shard result"  # config, override: see tests/test_fuzz.sh
out=$(HAX_BIN=$BIN "$ROOT/tests/fuzz.sh" 12 "$seed" "$TARGETS" 2>&1); rc=$?
printf '%s\n' "$out"
check "fuzz seed $seed: no crash, hang or modified file" test $rc -eq 0
finish
